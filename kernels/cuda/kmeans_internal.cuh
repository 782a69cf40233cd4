// Device helpers shared by kmeans.cu and squeeze_ingest.cu (internal to kernels/cuda).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "kernels/cuda/kmeans.h"

namespace sqz::cuda::internal {

// First element of point i of head h in a PointsView (see kmeans.h for the address rule).
template <typename T>
__device__ __forceinline__ const T* PointRow(const PointsView& v, int64_t h, int64_t i) {
  return static_cast<const T*>(v.data) + (h / v.heads_inner) * v.outer_stride +
         (h % v.heads_inner) * v.inner_stride + (v.row0 + i) * v.row_stride;
}

// What the fused assignment kernel (kmeans_assign.cu) writes per point: kAssign: the Lloyd step
// (prev <- assign, assign, sim, counts += 1); kSeedDistance: dist = min(dist, 1 - best cosine);
// kNearest: assign and sim only.
enum class AssignMode { kAssign, kSeedDistance, kNearest };

struct AssignArgs {
  const __nv_bfloat16* xn;    // [heads][n][D] unit points
  int64_t n;                  // points per head
  const __nv_bfloat16* cent;  // centroid c of head h at cent + h * cent_head_stride + c * D
  int64_t cent_head_stride;   // elements
  int64_t kc;                 // centroids scored in this launch
  const int32_t* active;      // [heads] 0 = skip the head; null = all heads
  // kAssign:
  int32_t* assign;  // [heads][n] in: previous assignment; out: new one
  int32_t* prev;    // [heads][n] out: previous assignment
  float* sim;       // [heads][n] out: cosine to the chosen centroid
  int32_t* counts;  // [heads][kc] incremented per assigned point
  // kSeedDistance:
  float* dist;  // [heads][n] in/out: min(dist, 1 - best cosine)
};

// Launches the fused bf16 GEMM + argmax over every head (grid: points x heads). d: 64 or 128
// (UNIMPLEMENTED otherwise); errors are named after op.
Status LaunchAssignment(AssignMode mode, int d, const AssignArgs& args, int heads,
                        cudaStream_t stream, std::string_view op);

// N device events recorded at the stage boundaries of a host function, for the optional timing
// outputs of KMeans (KMeansStats) and SqueezeIngest (their timings); inert when off (no events
// made, Mark and Ms do nothing, Ms returns 0).
template <int N>
class StageEvents {
 public:
  StageEvents(bool on, cudaStream_t stream) : on_(on), stream_(stream) {
    if (!on_) return;
    for (cudaEvent_t& e : events_) cudaEventCreate(&e);
  }
  ~StageEvents() {
    if (!on_) return;
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  StageEvents(const StageEvents&) = delete;
  StageEvents& operator=(const StageEvents&) = delete;
  void Mark(int i) {
    if (on_) cudaEventRecord(events_[i], stream_);
  }
  // Milliseconds between two marks (both recorded and complete).
  float Ms(int from, int to) const {
    float ms = 0.0f;
    if (on_) cudaEventElapsedTime(&ms, events_[from], events_[to]);
    return ms;
  }

 private:
  bool on_;
  cudaStream_t stream_;
  cudaEvent_t events_[N] = {};
};

}  // namespace sqz::cuda::internal
