// Ingestion of a fixed context on the GPU (ALGORITHM.md, offline steps 2-6) for all layers and KV
// heads at once: split into sink / body / window, batched spherical k-means of the body keys
// (kmeans.h), the cluster-ordered re-layout of K and V, the coarse level (k-means of the fine
// centroids, coarse centroid = count-weighted mean of its fine centroids, as BuildSnapshot does)
// and the calibration histograms. The host turns the histograms into thresholds
// (engine/squeeze_gpu/gpu_index_builder.h): quantiles of a few kilobytes, after all device work.
//
// Heads are numbered h = layer * kv_heads + kv_head everywhere below; with
//   N = n_tokens, S = sink_len, W = window_len, B = N - S - W, d = head_dim, k, k1 as in the shape.
// Kernels own no memory: outputs and the workspace (IngestWorkspaceBytes) belong to the caller.
// Thread safety: stateless; one call at a time per workspace. Synchronises the stream once per
// Lloyd iteration of each k-means run and at the end when timings are asked for.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/kmeans.h"

namespace sqz::cuda {

// Bins of the calibration histogram over log2(p): 64 per octave from 2^-126 to 1, bin 0 for
// p < 2^-126 (the same bins as the CPU's Calibrate): bin = 1 + floor((log2(p) + 126) * 64).
inline constexpr int kCalibrationBinsPerOctave = 64;
inline constexpr int kCalibrationOctaves = 126;
inline constexpr int kCalibrationBins = kCalibrationBinsPerOctave * kCalibrationOctaves + 2;
// Largest GQA group (q_heads / kv_heads) the calibration kernel takes.
inline constexpr int kCalibrationMaxGroup = 32;

struct IngestShape {
  int32_t layers = 1;
  int32_t kv_heads = 1;
  int32_t q_heads = 1;     // a multiple of kv_heads, group <= kCalibrationMaxGroup
  int32_t head_dim = 128;  // 64 or 128
  int64_t n_tokens = 1;
  int64_t sink_len = 0;
  int64_t window_len = 0;
  int64_t k = 0;   // fine clusters per head (>= 1 when the body is not empty, else 0)
  int64_t k1 = 0;  // coarse clusters per head (0 = no coarse level, else 2 <= k1 < k)
};

// Device outputs, owned by the caller; k1-sized ones only when shape.k1 > 0.
struct IngestOutputs {
  void* k_out = nullptr;         // [heads][N][d] input type: sink | body in cluster order | window
  void* v_out = nullptr;         // [heads][N][d] the same row order as k_out
  int32_t* positions = nullptr;  // [heads][B] context position of body row j (row S + j)
  float* centroids = nullptr;    // [heads][k][d] mean of the raw member keys
  int32_t* counts = nullptr;     // [heads][k]
  int32_t* offsets = nullptr;    // [heads][k+1] CSR over body rows
  float* coarse_centroids = nullptr;  // [heads][k1][d]
  int32_t* coarse_offsets = nullptr;  // [heads][k1+1] CSR into coarse_members
  int32_t* coarse_members = nullptr;  // [heads][k] fine ids grouped by coarse parent (id order)
  // Optional bf16 copies (round to nearest) of the centroids, the form the query-time kernels read
  // (squeeze_select.h, SqueezeLayerView): [heads][k][d] and [heads][k1][d].
  __nv_bfloat16* centroids_bf16 = nullptr;
  __nv_bfloat16* coarse_centroids_bf16 = nullptr;
  // [kNumGqaReduce = 2][layers][kCalibrationBins] summed cluster sizes per bin of the per-key
  // probability estimate of every (window query, cluster); reduce 0 = max over the group, 1 = mean.
  uint64_t* histogram = nullptr;
  int32_t* iterations = nullptr;  // optional [heads] Lloyd iterations of the fine level
};

// Milliseconds per stage (device events) when asked for.
struct IngestTimings {
  float normalize_seed_cluster_ms = 0.0f;  // fine k-means (normalisation, seeding, Lloyd, means)
  float relayout_ms = 0.0f;
  float coarse_ms = 0.0f;
  float calibrate_ms = 0.0f;
  float total_ms = 0.0f;
  KMeansStats fine;  // breakdown of the fine k-means
};

// INVALID_ARGUMENT / UNIMPLEMENTED for a shape IngestContext rejects.
StatusOr<size_t> IngestWorkspaceBytes(const IngestShape& shape);

// keys, values: [layers][N][kv_heads][d] of `type`; window_q: [layers][W][q_heads][d] fp32 (the
// post-RoPE queries of the window). workspace: >= IngestWorkspaceBytes, 256-byte aligned.
Status IngestContext(const IngestShape& shape, const KMeansParams& params, const void* keys,
                     const void* values, PointType type, const float* window_q,
                     const IngestOutputs& out, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream, IngestTimings* timings = nullptr);

}  // namespace sqz::cuda
