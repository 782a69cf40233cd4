// Decode attention (FlashDecoding): one query token per request, a batch of requests of different
// lengths, each attending to
//   1. its fixed context: contiguous K and V, [n_kv_heads][ctx_len][head_dim] bf16 (post-RoPE), and
//   2. its own tokens in the paged pool: blocks of kPageSize tokens, found through a block table,
// as one key sequence (context keys first, then own tokens; no mask: every key precedes the query).
// The keys are split into chunks (split-K) so that long sequences fill the GPU; each chunk leaves
// an exact partial (o, m, l) in the workspace, and the partials are merged by the log-sum-exp rule
// (cpu::MergePartial): by default in the same launch, by the chunk block of each (request, kv head)
// that finishes last (a counter per (request, kv head) in the workspace tells it so), or, with
// DecodePlanOptions::fused_merge off, by a second kernel (the earlier path, kept as a fallback).
// The result and its (m, l) can be merged further by the caller (MergeAttentionPartials,
// prefill_attention.h), e.g. with a Squeezed-Attention partial.
//
// Semantics (oracle: cpu::AttendAccumulate over the concatenated keys): for request r and query
// head h (kv head h / (n_q_heads / n_kv_heads)), s_j = scale * q . k_j, m = max s_j,
// l = sum exp(s_j - m), o = sum exp(s_j - m) v_j / l; a request with no keys gets o = 0,
// m = -inf, l = 0.
//
// Paged pool layout: block b, kv head h, slot i (token u of a request sits in its block table's
// entry u / kPageSize at slot u % kPageSize) at pool + ((b * n_kv_heads + h) * kPageSize + i) *
// head_dim.
//
// Usage: plan on the host, size the workspace, zero it once, launch:
//   DecodePlan plan = PlanDecodeAttention(params, num_sms);
//   ... workspace of plan.workspace_bytes, zeroed once after allocation (cudaMemset) ...
//   DecodeAttention(params, plan, out, stats, workspace, plan.workspace_bytes, stream);
// Workspace contract: its first DecodeCounterBytes(params) bytes hold the fused merge's counters.
// They must be zero before the first call on the workspace, and every completed call leaves them
// zero (the last block of each (request, kv head) resets its counter), so later calls with any
// plan, and replays of a captured CUDA graph, find them zero. Calls that share a workspace must
// not run concurrently. The unfused path never writes the counters.
// head_dim must be one of kDecodeHeadDims (compiled instances); others are UNIMPLEMENTED. Head
// dims 32, 64, 96 and 128 run on tensor cores (bf16 probabilities in P V, as in prefill); 8, 16
// and 48 on a CUDA-core kernel with fp32 probabilities. A sparse context (params.sparse) needs a
// tensor-core head dim: each chunk walks the segment list one 64-key tile ahead of its loads, so a
// gathered row is still one contiguous 2 * head_dim byte read.
// Memory: every pointer is device memory owned by the caller; K/V base pointers (ctx_k[r],
// ctx_v[r], pool_k, pool_v) must be 16-byte aligned. Thread safety: stateless.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/cpu/attention.h"

namespace sqz::cuda {

inline constexpr int kPageSize = 16;
inline constexpr std::array<int, 7> kDecodeHeadDims = {8, 16, 32, 48, 64, 96, 128};
inline constexpr int kDecodeMaxGroup = 8;  // n_q_heads / n_kv_heads at most this
inline constexpr int kDecodeTile = 64;     // chunk lengths are multiples of this

// A per-(request, kv head) list of context row ranges, all in device memory. For request r and
// kv head h (i = r * n_kv_heads + h) the selected keys are numbered 0 .. selected_len[i] - 1;
// segment s of that list (s < num_segments[i]) holds keys [end_{s-1}, end_s) (end_{-1} = 0) at
// context rows key + row_delta_s, where (end_s, row_delta_s) = segments[i * max_segments + s].
// Rows index the context of r as laid out in DecodeAttentionParams (rows of kv head h start at
// (h * ctx_len[r]) * head_dim). Keys past the last segment's end are not attended; rows outside
// [0, ctx_len[r]) are clamped into it (never read out of bounds).
struct ContextSegments {
  const int2* segments = nullptr;         // [batch][n_kv_heads][max_segments] (end, row_delta)
  const int32_t* num_segments = nullptr;  // [batch][n_kv_heads]
  const int32_t* selected_len = nullptr;  // [batch][n_kv_heads] == end of the last segment
  int32_t max_segments = 0;
};

struct DecodeAttentionParams {
  int batch = 0;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 0.0f;
  // q: request r, head h at q + r * q_stride + h * head_dim; [batch][>= n_q_heads * head_dim].
  const __nv_bfloat16* q = nullptr;
  int64_t q_stride = 0;
  // Fixed contexts: ctx_len [batch] int32 (0 for a request without one); ctx_k, ctx_v [batch]
  // device arrays of device pointers to [n_kv_heads][ctx_len[r]][head_dim] (null where ctx_len is
  // 0). ctx_len may itself be nullptr when no request has a context.
  const int32_t* ctx_len = nullptr;
  const __nv_bfloat16* const* ctx_k = nullptr;
  const __nv_bfloat16* const* ctx_v = nullptr;
  // Paged own tokens: own_len [batch] int32 (nullptr: none); block_indptr [batch + 1] int32 CSR
  // offsets into block_ids [block_indptr[batch]] int32; pool_k, pool_v as in the layout above.
  // own_len[r] <= kPageSize * (block_indptr[r + 1] - block_indptr[r]).
  const int32_t* own_len = nullptr;
  const int32_t* block_indptr = nullptr;
  const int32_t* block_ids = nullptr;
  const __nv_bfloat16* pool_k = nullptr;
  const __nv_bfloat16* pool_v = nullptr;
  // Host-side upper bound of ctx_len[r] + own_len[r] over all r (sparse: of
  // sparse.selected_len[r][h] + own_len[r]): sizes the split. Keys beyond it are not read (a wrong
  // bound gives wrong results, never out-of-bounds reads of K/V).
  int64_t max_kv_len = 0;
  // Sparse fixed context (Squeezed Attention; squeeze_select.h fills it on the device): when
  // sparse.segments is set, request r, kv head h attends to only the context rows its segment list
  // names, in list order, instead of all ctx_len[r] rows. See ContextSegments.
  ContextSegments sparse;
  // Launch as a programmatic dependent (PDL) of the previous kernel on the stream, e.g. the
  // SqueezeSelect that writes `sparse`: the chunk kernel's blocks are scheduled during that
  // kernel's tail and read q, the lengths, the K/V pointers and block tables before waiting for
  // it, so that kernel may write nothing but `sparse` (and the lengths must be final when it
  // starts). The results are the same bits either way; graph capture records a programmatic edge.
  bool programmatic = false;
  // With programmatic: the kernel before is instead the one that writes q and each request's
  // newest key and value (RoPE + the paged KV write) and nothing else this kernel reads. The dense
  // chunk kernel then issues its first tile's loads before waiting when every key of that tile is
  // older than the request's newest (context keys, or own tokens of earlier steps: decode rows add
  // one token each), and reads q after waiting. Sparse lists keep the selection's contract above
  // and are not meant for this. The same bits either way.
  bool programmatic_after_qkv = false;
  // Optional device counters [batch], accumulated (not reset) by the launch: request r adds, for
  // each of its kv heads, the fixed-context keys it attends (its segment lists' selected_len, or
  // ctx_len), so that a caller can report the share of a context a request read.
  unsigned long long* context_keys = nullptr;
};

// How the keys are split; made on the host, no device access.
struct DecodePlan {
  int64_t chunk_len = 0;  // keys per chunk, a multiple of kDecodeTile
  int num_chunks = 0;     // chunks per (request, kv head): ceil(max_kv_len / chunk_len), >= 1
  // num_chunks > 1 only: true merges the partials inside the chunk kernel (its last block per
  // (request, kv head)), false in a second kernel.
  bool fused_merge = false;
  size_t workspace_bytes = 0;  // counters, then partial outputs and stats (0 for one chunk)
  // Tiles in flight per block of the tensor-core kernel (head dims 32-128): 3, or 2 (a third less
  // shared memory, so three blocks per SM instead of two at head_dim 128). Same results for the
  // same chunks. The planner takes 2 for sparse contexts split into long chunks.
  int stages = 3;
};

// Choices of PlanDecodeAttention that tests, benchmarks and fallbacks override.
struct DecodePlanOptions {
  // > 0: keys per chunk instead of the modelled choice, rounded up to a multiple of kDecodeTile.
  int64_t force_chunk_len = 0;
  // Merge in the chunk kernel's last block (one launch, no merge-kernel latency; needs the zeroed
  // counters of the workspace contract). false: the separate merge kernel (previous path).
  bool fused_merge = true;
  // 2 or 3: DecodePlan::stages; 0: the planner's choice (3, or 2 for sparse contexts of at least
  // num_sms / 2 units where three blocks per SM make more chunks, of >= 2048 keys, in one wave).
  int mma_stages = 0;
};

// Bytes at the start of a workspace that hold the fused merge's counters (one uint32 per
// (request, kv head), padded to 256 bytes).
size_t DecodeCounterBytes(const DecodeAttentionParams& params);

// Chooses the split with the smallest modelled time: blocks run in waves over 2 x num_sms slots
// (num_sms from cudaDevAttrMultiProcessorCount), each costing its keys plus a fixed overhead, plus
// the merge (a kernel of its own, or, fused, a pass over the chunks' partials from L2).
DecodePlan PlanDecodeAttention(const DecodeAttentionParams& params, int num_sms,
                               const DecodePlanOptions& options);
// The same with default options and force_chunk_len (tests use it to exercise the merge).
DecodePlan PlanDecodeAttention(const DecodeAttentionParams& params, int num_sms,
                               int64_t force_chunk_len = 0);
// The planner's split, or, when its workspace exceeds workspace_bytes, the most chunks whose
// workspace fits (longer ones; a single chunk needs no workspace).
DecodePlan PlanDecodeAttentionWithin(const DecodeAttentionParams& params, int num_sms,
                                     size_t workspace_bytes, const DecodePlanOptions& options = {});

// out: [batch][n_q_heads][head_dim]; stats: [batch][n_q_heads] (m, l) or nullptr.
// workspace: >= plan.workspace_bytes device bytes, 16-byte aligned, counters zero (see the
// workspace contract above). TOut: float or __nv_bfloat16.
template <typename TOut>
Status DecodeAttention(const DecodeAttentionParams& params, const DecodePlan& plan, TOut* out,
                       cpu::AttentionPartial* stats, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream);

}  // namespace sqz::cuda
