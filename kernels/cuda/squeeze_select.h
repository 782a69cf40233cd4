// Squeezed Attention on the GPU, query time: centroid lookup and cluster selection for a batch of
// decode requests (one query token each), batched over requests and KV heads, with no host
// synchronisation (every launch is asynchronous on one stream, so the whole call can be captured
// in a CUDA graph). Requests may use different contexts. The result is, per (request, kv head), a
// list of context row segments (decode_attention.h, ContextSegments) that DecodeAttention then
// attends to in place of the full context.
//
// Semantics (oracle: engine/squeeze/selection.h, SelectClusters, on the same data): for request r,
// kv head h with the g = n_q_heads / n_kv_heads query heads j of its group,
//   s_j[c] = scale * q_j . C[c],  p_j[c] = exp(s_j[c] - m_j) / sum_c' N[c'] exp(s_j[c'] - m_j),
//   p[c] = max_j p_j[c] (kMax) or mean_j p_j[c] (kMean);
// budget policy: clusters in order of p descending (ties: lower position first, as the CPU's
// stable sort) are taken while the keys taken so far are < ceil(kv_budget * B); threshold policy:
// clusters with p[c] > T. Hierarchical: the same over the coarse centroids (weights = keys under
// each group, budget = coarse_coverage) first, then over the fine clusters of the kept groups only
// (in coarse-group order), whose normaliser also holds the mass of the groups not kept.
//
// Context layout on the device (per layer; the caller owns every buffer):
//   K, V: [n_kv_heads][n_tokens][head_dim] bf16 with rows sink (S) | body in cluster order (B) |
//   window (W). Dense attention over these rows equals dense attention over the original order
//   (keys carry their RoPE), so DecodeAttention without segments is the dense baseline.
//   SqueezeLayerView below: the index. Centroids are bf16: they are read once per lookup, so at
//   5% centroids they cost 2.5% of a dense KV read instead of 5% in fp32; the scores are fp32.
//
// The selection always includes the sink and the window. Segments are in row order (sink, selected
// clusters by ascending id, window) with adjacent ranges coalesced; selected_len counts the keys.
//
// Implementation: (1) a scoring kernel, one block per (request, chunk of 256 centroids, kv head),
// requests fastest so that requests sharing a context read its centroids once from L2 (tensor
// cores: the group's query heads are the rows of an m16 tile; see "Shared contexts" for the
// grouped kernel), leaves scores and per-chunk (max, sum N exp(s - max)) in the workspace;
// (2) a select kernel, one block per (request, kv head), combines the chunks into the exact
// normaliser, forms p, finds the budget cut by a range search over the 32-bit keys (float bits of
// p; 256 bins per pass, weights = cluster sizes; keys in shared memory when they fit) with ties
// broken by position through a block scan, and writes the segment list with a second block scan. At
// small batches, where one block per (request, kv head) leaves most SMs idle, (2) instead runs as a
// thread-block cluster of plan.select_ctas CTAs per (request, kv head), each over a slice of the
// clusters, combining its sums and histograms with the others through distributed shared memory;
// its outputs are identical (squeeze_select_cluster.h). Flat lookups only (token or block mode).
// Hierarchical lookups run (1) and (2) on the coarse level first, then score only the fine
// centroids under kept groups.
//
// Shared contexts: with params.group_starts set, decode requests over the same context are scored
// together, one block per (sub-group of up to 64 / g requests, chunk, kv head): the chunk's
// centroids are loaded into shared memory once and the sub-group's (request, query head) pairs are
// the rows of up to four m16 tiles, so a batch over one context reads its centroids about once
// instead of once per request. Every row's scores and per-chunk stats are computed in the same
// order as the per-request kernel's, so the workspace, and with it the selection, is bit-identical
// (the select kernels do not change). Flat lookups only: hierarchical lookups keep the per-request
// kernel on both levels.
//
// Blocks of query tokens (prefill; ALGORITHM.md online step 4): with params.block_starts set, entry
// r of the batch is a block of query tokens instead of one token, and
//   p[c] = (1 / n_r) sum_t reduce_j p_tj[c]   (SelectClusters with n_tokens = n_r),
// each (token, head) with its own exact normaliser. Two scoring passes over the centroids (a block
// kernel puts the block's (token, head) rows on the m16 tiles): the first leaves each row's
// per-chunk (max, sum N exp(s - max)), the second recomputes the scores and sums the reduced p
// over the rows; the select kernel then cuts on p as above. The scores are never stored. A block
// of 0 tokens selects no cluster (sink and window only). Flat index only (hierarchical lookups
// of blocks are UNIMPLEMENTED).
//
// Usage: plan on the host (sizes only), provide the workspace and outputs, launch:
//   SqueezeSelectPlan plan = PlanSqueezeSelect(params, num_sms);
//   SqueezeSelect(params, plan, out, workspace, plan.workspace_bytes, stream);
//   DecodeAttention(... with .sparse = out.segments view, .max_kv_len = SqueezeMaxSelectedKeys +
//   own tokens ...).
// Thread safety: stateless; kernels own no memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/decode_attention.h"

namespace sqz::cuda {

inline constexpr int kSqueezeMaxGroup = 8;  // n_q_heads / n_kv_heads at most this

enum class SqueezePolicy : int32_t {
  kBudget = 0,     // highest-p clusters until kv_budget * B keys
  kThreshold = 1,  // p > threshold
};
enum class SqueezeReduce : int32_t {
  kMax = 0,   // max of p over the query heads of a group
  kMean = 1,  // mean over the group
};

// One context's index for one layer, as the device reads it. A plain struct of device pointers
// and sizes; arrays of it live in device memory (one entry per request; requests over the same
// context may point at the same buffers). Rows and offsets are per kv head h:
struct SqueezeLayerView {
  int32_t n_tokens = 0;                             // rows per kv head of K/V: S + B + W
  int32_t sink_len = 0;                             // S
  int32_t window_len = 0;                           // W
  int32_t num_clusters = 0;                         // k >= 1
  int32_t num_coarse = 0;                           // k1 (0: no coarse level)
  const __nv_bfloat16* centroids = nullptr;         // [n_kv_heads][k][head_dim]
  const int32_t* counts = nullptr;                  // [n_kv_heads][k] members, >= 1
  const int32_t* offsets = nullptr;                 // [n_kv_heads][k + 1] body rows, CSR, [k] = B
  const __nv_bfloat16* coarse_centroids = nullptr;  // [n_kv_heads][k1][head_dim]
  const int32_t* coarse_offsets = nullptr;          // [n_kv_heads][k1 + 1] CSR into members
  const int32_t* coarse_members = nullptr;          // [n_kv_heads][k] fine ids by coarse group
};

struct SqueezeSelectParams {
  int batch = 0;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;    // 64 or 128 (compiled instances); others are UNIMPLEMENTED
  float scale = 0.0f;  // usually 1 / sqrt(head_dim)
  // q: request r, head h at q + r * q_stride + h * head_dim ([batch][>= n_q_heads * head_dim]);
  // 16-byte aligned, q_stride a multiple of 8. The views' centroid arrays are 16-byte aligned.
  const __nv_bfloat16* q = nullptr;
  int64_t q_stride = 0;
  const SqueezeLayerView* views = nullptr;  // [batch], device memory
  SqueezePolicy policy = SqueezePolicy::kBudget;
  SqueezeReduce reduce = SqueezeReduce::kMax;
  // Budget policy: kv_budget in [0, 1]; threshold policy: threshold (finite). per_request_value
  // (device [batch], optional) overrides it per request (budgets there are clamped to [0, 1]).
  float kv_budget = 0.125f;
  float threshold = 0.0f;
  const float* per_request_value = nullptr;
  // Hierarchical lookup (views need a coarse level; a request whose view has none runs flat):
  // coarse groups are kept by the budget rule until they cover coarse_coverage * B keys (the CPU's
  // min(1, coarse_expansion * coarse_keep)), in (0, 1].
  bool hierarchical = false;
  float coarse_coverage = 0.25f;
  // Host-side bounds over all requests: num_clusters <= max_clusters, num_coarse <= max_coarse.
  // Larger device values are read only up to the bound (wrong results, never out-of-bounds reads).
  int32_t max_clusters = 0;
  int32_t max_coarse = 0;
  // Blocks of query tokens (see the top of this file). block_starts: device [batch + 1],
  // non-decreasing token indices into q (token t at q + t * q_stride), entry r = tokens
  // [block_starts[r], block_starts[r + 1]); nullptr: one token per entry (decode; q_stride between
  // entries). max_block_tokens: host bound of every block's length, >= 1 with block_starts (longer
  // blocks are read only up to it). views, per_request_value and the outputs are per block.
  const int32_t* block_starts = nullptr;
  int32_t max_block_tokens = 0;
  // Requests over one context, scored together (decode, flat lookups; see "Shared contexts" at the
  // top of this file). group_starts: device [num_groups + 1], 0 = group_starts[0] <= ... <=
  // group_starts[num_groups] = batch; group i is requests [group_starts[i], group_starts[i + 1]),
  // whose views must agree on num_clusters, centroids and counts (one context, one layer).
  // max_group_size: host bound of every group's size, >= 1 (longer groups are scored only up to
  // it: wrong results, never out-of-bounds accesses). nullptr: every request is scored on its own
  // (the per-request kernel; also what hierarchical lookups and blocks of query tokens always do,
  // whatever these fields say). The outputs do not depend on the grouping, bit for bit.
  const int32_t* group_starts = nullptr;
  int32_t num_groups = 0;
  int32_t max_group_size = 0;
};

// Sizes made on the host from the params and the device's SM count (no device access).
struct SqueezeSelectPlan {
  int fine_chunks = 0;       // scoring blocks per (request, kv head) on the fine level
  int32_t block_rows = 0;    // block mode: (token, head) rows per (block, kv head) bound, else 0
  int coarse_chunks = 0;     // ... on the coarse level (0 when flat)
  int32_t max_segments = 0;  // segment capacity per (request, kv head) the outputs must have
  size_t workspace_bytes = 0;
  // CTAs of the selection step per (request, kv head): 1 runs the single-block kernel; 2, 4, 8 or
  // 16 a thread-block cluster of that many (same outputs; 16 is a non-portable cluster size that
  // Hopper allows; SqueezeSelect returns UNIMPLEMENTED where the device cannot schedule it).
  // The plan picks the largest of 2, 4, 8 with batch * n_kv_heads * ctas <=
  // num_sms and at least kSqueezeClusterMinItems clusters per CTA, for flat lookups whose slices
  // fit in shared memory (SqueezeClusterSelectFits); else 1. Callers may override it with any
  // value that SqueezeClusterSelectFits accepts (1 always): the workspace does not depend on it.
  int select_ctas = 1;
  // Block mode: consecutive query blocks per scoring CTA, which loads each centroid chunk once for
  // all of them (blocks over another context reload it). The plan takes the most that keeps four
  // waves of scoring CTAs on num_sms SMs (1 when num_sms is 0); any value >= 1 gives the same
  // outputs, bit for bit.
  int block_span = 1;
  // The selection kernel launched as a programmatic dependent (PDL) of the scoring kernel on sm_90:
  // its CTAs are scheduled during the scoring's tail and wait for it before reading anything. The
  // selection kernel in turn lets a programmatic dependent of its own (the sparse DecodeAttention,
  // DecodeAttentionParams::programmatic) be scheduled early. The same outputs either way. Off by
  // default: measured mixed on the H200 (docs/benchmarks/squeeze_gpu.md, run 12).
  bool chained = false;
};

inline constexpr int kSqueezeClusterMinItems = 512;

// num_sms: the device's SM count (cudaDevAttrMultiProcessorCount); 0 keeps select_ctas = 1.
SqueezeSelectPlan PlanSqueezeSelect(const SqueezeSelectParams& params, int num_sms = 0);

// Whether the selection of params can run as clusters of ctas CTAs (2, 4, 8 or 16): flat lookups
// whose per-CTA slice of max_clusters fits in shared memory.
bool SqueezeClusterSelectFits(const SqueezeSelectParams& params, int ctas);

// Outputs, device memory owned by the caller ([batch][n_kv_heads] each; segments
// [batch][n_kv_heads][plan.max_segments]); body_selected (optional) receives the selected body
// keys (selected_len - S - W).
struct SqueezeSelection {
  int2* segments = nullptr;
  int32_t* num_segments = nullptr;
  int32_t* selected_len = nullptr;
  int32_t* body_selected = nullptr;
};

// The selection as DecodeAttentionParams::sparse reads it.
inline ContextSegments AsContextSegments(const SqueezeSelection& sel,
                                         const SqueezeSelectPlan& plan) {
  return ContextSegments{sel.segments, sel.num_segments, sel.selected_len, plan.max_segments};
}

// Runs the lookup. workspace: >= plan.workspace_bytes device bytes, 16-byte aligned.
Status SqueezeSelect(const SqueezeSelectParams& params, const SqueezeSelectPlan& plan,
                     const SqueezeSelection& out, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

// Host-side bound of selected_len for a context of body_len keys (sizes DecodeAttention's split):
// budget policy S + W + min(B, ceil(kv_budget * B) + largest_cluster - 1); threshold S + W + B.
int64_t SqueezeMaxSelectedKeys(SqueezePolicy policy, double kv_budget, int64_t sink_len,
                               int64_t body_len, int64_t window_len, int64_t largest_cluster);

}  // namespace sqz::cuda
