// Batched spherical k-means on the GPU (ALGORITHM.md, offline step 3): `heads` independent problems
// of n points of d dims each (one per (layer, kv head)), all clustered by the same launches.
//
// The same algorithm as the CPU reference (engine/squeeze/kmeans.h), except for bf16 scores and,
// for k > 256, the seeding:
// - points are L2-normalised to bf16 once; assignment is cosine similarity against the unit
//   centroid directions, computed as a bf16 tensor-core GEMM (mma.sync, fp32 accumulation) fused
//   with the argmax: the n x k score matrix never reaches memory (FlashAttention's structure with a
//   running best per point instead of a running softmax). Ties go to the lower cluster id.
// - seeding: for k <= 256, greedy k-means++ as the CPU does (one seed per round, the best of
//   2 + ln k candidates drawn in proportion to D(x) = 1 - cos(x, nearest seed), by the total
//   distance it leaves). For larger k, batched D^2 sampling, a scalable form of k-means++:
//   R = min(k, seed_rounds) rounds;
//   round r draws its share of the k seeds as distinct points, weighted-without-replacement with
//   weight D(x) = 1 - cos(x, nearest seed so far) (exponential keys -log(u) / D(x), the smallest
//   win; round 0 is uniform). With R = k this is plain k-means++, which the CPU also uses at such
//   k; 32 rounds gave the same objective as R = k in docs/benchmarks/kmeans_gpu.md. Distances are
//   updated by the fused assignment kernel (kmeans_assign.cu) against each round's new seeds
//   only, so seeding costs about one Lloyd iteration plus R radix sorts.
// - Lloyd iterations: assign, re-seed empty clusters (the point with the lowest cosine to its own
//   centroid among clusters of two or more members, lowest index on ties, one cluster after the
//   other in id order, as the CPU does), count changed assignments, stable radix sort of the
//   points by (head, cluster), CSR offsets, new directions = normalised sum of the unit members.
//   A head stops when fewer than tolerance * n points changed (its assignment is then frozen and
//   its later launches return at once); the host loop reads one flag per iteration (all heads
//   done?), never per head.
// - result: assignment, counts, CSR offsets, the stable cluster order of the points (original
//   order within a cluster) and centroids = mean of the RAW member points (optionally weighted).
//
// Deterministic for a seed: no floating-point atomics; every sum has a fixed order.
// Kernels own no memory: the caller passes the outputs and a workspace sized by
// KMeansWorkspaceBytes. Thread safety: stateless; one call per stream at a time per workspace.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace sqz::cuda {

enum class PointType : int32_t { kF32 = 0, kBf16 = 1 };

// A non-owning view of heads x n points of d contiguous elements in device memory. Point i of head
// h starts at element
//   (h / heads_inner) * outer_stride + (h % heads_inner) * inner_stride + (row0 + i) * row_stride
// so both [heads][n][d] (heads_inner = 1, outer_stride = n * d, row_stride = d) and a KV capture
// [layers][tokens][kv_heads][d] (heads_inner = kv_heads, outer_stride = tokens * kv_heads * d,
// inner_stride = d, row_stride = kv_heads * d, row0 = first body token) can be read in place.
struct PointsView {
  const void* data = nullptr;
  PointType type = PointType::kF32;
  int32_t heads_inner = 1;
  int64_t outer_stride = 0;  // elements
  int64_t inner_stride = 0;  // elements
  int64_t row_stride = 0;    // elements
  int64_t row0 = 0;
};

struct KMeansShape {
  int32_t heads = 1;  // independent problems
  int64_t n = 1;      // points per problem
  int64_t k = 1;      // clusters per problem, 1 <= k <= n
  int32_t d = 128;    // compiled: 64 and 128
};

struct KMeansParams {
  int32_t max_iterations = 20;  // Lloyd iterations at most (>= 1)
  double tolerance = 1e-3;      // a head stops when changed assignments < tolerance * n
  uint64_t seed = 1234;
  int32_t seed_rounds = 32;  // rounds of batched D^2 sampling (>= 1; min(k, this) are run)
};

// Device outputs, owned by the caller. Required unless marked optional.
struct KMeansOutputs {
  int32_t* assignment = nullptr;  // [heads][n] cluster of each point
  int32_t* order = nullptr;       // [heads][n] point ids by cluster; original order within one
  int32_t* offsets = nullptr;  // [heads][k+1] CSR into order: cluster c = order[off[c]..off[c+1])
  int32_t* counts = nullptr;   // [heads][k] members per cluster, all >= 1
  float* centroids = nullptr;  // [heads][k][d] mean of the raw members (weighted if weights)
  int32_t* iterations = nullptr;  // optional [heads] Lloyd iterations run by each head
  int64_t* reseeded = nullptr;    // optional [heads] empty clusters re-seeded over all iterations
};

// Host-side counters of one run, filled when the pointer given to BatchedSphericalKMeans is not
// null (the times come from device events; asking for them adds one synchronisation at the end).
struct KMeansStats {
  int32_t loop_iterations = 0;  // Lloyd iterations launched (max over heads)
  float normalize_ms = 0.0f;    // unit bf16 copies of the points
  float seed_ms = 0.0f;         // batched D^2 seeding
  float assign_ms = 0.0f;       // fused GEMM + argmax, summed over iterations
  float update_ms = 0.0f;       // re-seeding, sort, CSR, new directions, summed over iterations
  float final_ms = 0.0f;        // counts and raw means
};

// Bytes of device workspace BatchedSphericalKMeans needs for this shape; INVALID_ARGUMENT for a
// shape it rejects (n < 1, k outside [1, n], d not 64 or 128, heads < 1, heads * n >= 2^31).
StatusOr<size_t> KMeansWorkspaceBytes(const KMeansShape& shape);

// Clusters every head. weights: optional [heads][n] non-negative weights of the final raw means
// (centroid = sum w x / sum w; plain mean when null; a cluster whose weights sum to 0 gets the
// plain mean). workspace: >= KMeansWorkspaceBytes(shape) bytes, 256-byte aligned. Errors:
// INVALID_ARGUMENT for bad shapes, options or null pointers; INTERNAL for CUDA failures. Launches
// on `stream` and synchronises it once per Lloyd iteration (the all-done check).
Status BatchedSphericalKMeans(const KMeansShape& shape, const KMeansParams& params,
                              const PointsView& points, const float* weights,
                              const KMeansOutputs& out, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream, KMeansStats* stats = nullptr);

// The fused assignment on its own: for every point of every head, the centroid of highest cosine
// (lowest id on ties; bf16 products, fp32 accumulation). points: [heads][n][d] and centroids:
// [heads][k][d] unit rows in bf16, 16-byte aligned; assignment, similarity: [heads][n].
// INVALID_ARGUMENT for bad sizes or pointers, UNIMPLEMENTED for d other than 64 or 128.
Status NearestCentroids(const __nv_bfloat16* points, const __nv_bfloat16* centroids, int32_t heads,
                        int64_t n, int64_t k, int32_t d, int32_t* assignment, float* similarity,
                        cudaStream_t stream);

}  // namespace sqz::cuda
