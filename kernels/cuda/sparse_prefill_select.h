// Internal to kernels/cuda: the block-of-tokens half of SqueezeSelect (squeeze_select.h, "Blocks of
// query tokens"): per (block, kv head), the cluster probabilities p[c] averaged over the block's
// tokens after the GQA reduce, which SqueezeSelect's select kernel then cuts by budget or
// threshold. Not a public API: SqueezeSelect validates the params and carves the workspace.
//
// Rows: (token t, head j of the group) of a block is row t * gp + j, gp = the group size rounded up
// to a power of two (1, 2, 4, 8), so no token's heads straddle an m16 tile; rows with j >= g are
// padding (zero queries, never counted).
// Thread safety: stateless; launches on `stream` only (graph-capturable).
#pragma once

#include <cuda_runtime_api.h>
#include <vector_types.h>

#include "common/status.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz::cuda::internal {

// Centroids per scoring block, shared with SqueezeSelect's plan (fine_chunks).
inline constexpr int kSelectChunk = 256;

// gp for a group of g query heads (1 <= g <= kSqueezeMaxGroup).
int BlockRowsPerToken(int g);

// Query blocks per scoring CTA (SqueezeSelectPlan::block_span) for num_sms SMs: each CTA holds a
// centroid chunk in shared memory for that many consecutive blocks; 1 when num_sms is 0.
int BlockScoreSpan(int batch, int chunks, int n_kv_heads, int num_sms);

// Computes probs[r][h][c] (c < max_clusters; -1 marks "no candidate": items past the view's
// cluster count and every item of an empty block) for params p in block mode.
//   row_stats: [batch][n_kv_heads][block_rows][chunks] (max, sum N exp2(s' - max)) per chunk,
//              s' = s * log2 e (so the sums equal sum N exp(s - max / log2 e))
//   row_norm:  [batch][n_kv_heads][block_rows] (max of s', 1 / normaliser)
//   probs:     [batch][n_kv_heads][max_clusters]
// chunks = SqueezeSelectPlan::fine_chunks, block_rows = SqueezeSelectPlan::block_rows,
// span = SqueezeSelectPlan::block_span (>= 1; the outputs do not depend on it).
Status LaunchBlockProbabilities(const SqueezeSelectParams& p, int chunks, int block_rows, int span,
                                float2* row_stats, float2* row_norm, float* probs,
                                cudaStream_t stream);

}  // namespace sqz::cuda::internal
