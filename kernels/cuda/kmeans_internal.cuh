// Device helpers shared by kmeans.cu and squeeze_ingest.cu (internal to kernels/cuda).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/kmeans.h"

namespace sqz::cuda::internal {

// First element of point i of head h in a PointsView (see kmeans.h for the address rule).
template <typename T>
__device__ __forceinline__ const T* PointRow(const PointsView& v, int64_t h, int64_t i) {
  return static_cast<const T*>(v.data) + (h / v.heads_inner) * v.outer_stride +
         (h % v.heads_inner) * v.inner_stride + (v.row0 + i) * v.row_stride;
}

}  // namespace sqz::cuda::internal
