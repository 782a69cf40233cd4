// One warp's attention of one query row, keys visited one at a time with an online softmax in fp32:
// the reference-grade path of the CUDA backend (head dims and context steps the tensor-core kernels
// do not take), shared by PagedAttentionSimple (kernels/cuda/model_ops.cu) and
// ContextAttentionSimple (engine/cuda/context_kernels.cu). Lane l holds dims l, l + 32, ...
// (kPer of them, head_dim <= 32 * kPer). Every lane uses the same score (lane 0's warp total,
// broadcast), so the lanes' running (m, l) stay bit-identical.
// Usage (all 32 lanes of the warp):
//   WarpRowAttention<kPer> a(q_row, head_dim, scale);
//   for each key j: a.Attend(k_j, v_j);      // k_j, v_j: [head_dim]
//   a.Write(out_row);                          // out_row: [head_dim]; zeros when no key was seen
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/device_utils.cuh"

namespace sqz::cuda::internal {

template <int kPer>
struct WarpRowAttention {
  template <typename T>
  __device__ __forceinline__ WarpRowAttention(const T* q_row, int head_dim, float scale)
      : d(head_dim), scale(scale), lane(static_cast<int>(threadIdx.x & 31)) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = lane + 32 * i;
      q[i] = e < d ? ToFloat(q_row[e]) : 0.0f;
      o[i] = 0.0f;
    }
  }

  template <typename T>
  __device__ __forceinline__ void Attend(const T* k, const T* v) {
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = lane + 32 * i;
      if (e < d) dot = fmaf(q[i], ToFloat(k[e]), dot);
    }
    const float s = __shfl_sync(0xffffffffu, WarpSum(dot), 0) * scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new);
    const float p = expf(s - m_new);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = lane + 32 * i;
      if (e < d) o[i] = fmaf(p, ToFloat(v[e]), o[i] * corr);
    }
    m = m_new;
  }

  template <typename T>
  __device__ __forceinline__ void Write(T* out_row) const {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = lane + 32 * i;
      if (e < d) out_row[e] = FromFloat<T>(o[i] * inv);
    }
  }

  int d;
  float scale;
  int lane;
  float q[kPer], o[kPer];
  float m = -INFINITY, l = 0.0f;
};

}  // namespace sqz::cuda::internal
