// Internal to kernels/cuda: the grouped scoring kernel of SqueezeSelect (squeeze_select.h, "Shared
// contexts"): decode requests over one context are scored together, the chunk's centroids loaded
// into shared memory once per (sub-group of requests, chunk, kv head). It leaves exactly what the
// per-request scoring kernel leaves on the flat level: the scores and the per-chunk stats of every
// (request, kv head, query head), bit for bit. Not a public API: SqueezeSelect validates the
// params (group_starts set, flat, decode) and carves the workspace.
// Thread safety: stateless; launches on `stream` only (graph-capturable).
#pragma once

#include <cuda_runtime_api.h>
#include <vector_types.h>

#include "common/status.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz::cuda::internal {

// (request, query head) rows per grouped scoring block: four m16 tiles; groups whose rows fit one
// tile (max_group_size * g <= kGroupedScoreSmallRows, e.g. every decode at batch 1) run a variant
// with room for one tile only, whose smaller shared memory holds three blocks per SM instead of
// two (the same bits).
inline constexpr int kGroupedScoreRows = 64;
inline constexpr int kGroupedScoreSmallRows = 16;

// Requests per grouped scoring block for groups of g query heads (1 <= g <= kSqueezeMaxGroup),
// in blocks of `rows` rows.
inline constexpr int GroupedScoreRequests(int g, int rows = kGroupedScoreRows) { return rows / g; }

// Writes, for every request r of the groups of p and kv head h, with g = n_q_heads / n_kv_heads:
//   scores: [batch][n_kv_heads][g][max_clusters] s = scale * q . c, -inf past the view's clusters
//           (entries at or past max_clusters are not written)
//   stats:  [batch][n_kv_heads][g][chunks] (max, sum counts * exp(s - max)) per chunk of
//           kSelectChunk clusters
// chunks = SqueezeSelectPlan::fine_chunks. p.group_starts, num_groups and max_group_size are set.
Status LaunchGroupedScore(const SqueezeSelectParams& p, int chunks, float* scores, float2* stats,
                          cudaStream_t stream);

}  // namespace sqz::cuda::internal
