// Sparse prefill attention of Squeezed Attention (ALGORITHM.md, online step 5, prefill): the
// fixed-context part of the attention of a request's user input, per block of query tokens. Each
// (block, kv head) attends to the context rows of its own segment list (sink + selected clusters +
// window, from SqueezeSelect in block mode), with no mask (every context row precedes the user
// input), and leaves an exact partial (o, m, l) per (token, query head). The caller merges it with
// the causal attention over the request's own tokens (PrefillAttention with stats, then
// MergeAttentionPartials; prefill_attention.h).
//
// Semantics (oracle: cpu::AttendAccumulate over the same rows, in list order): for token t of
// block b and query head hq (kv head h = hq / g, g = n_q_heads / n_kv_heads), over the keys
// j < selected_len[b][h] of the list (row of key j: ContextSegments, decode_attention.h):
//   s_j = scale * q . K[h][row_j],  m = max s_j,  l = sum exp(s_j - m),  o = sum exp(s_j - m)
//   V[h][row_j] / l;   no key: o = 0, m = -inf, l = 0.
//
// Implementation: (1) an expand kernel writes each (block, kv head)'s rows in key order into the
// workspace (so every K/V tile is a gather of 64 known rows); (2) a FlashAttention-2 style kernel,
// one CTA per (128 rows of (token, head) pairs of a block, key split, kv head, block), or 64 rows
// for blocks of fewer than 128: the group's query heads of the block's tokens share each K/V tile
// read, S = Q K^T and O += P V on bf16 mma.m16n8k16 with fp32 softmax state (two m16 tiles per
// warp at 128 rows, so each K/V fragment feeds two mma), K/V tiles double-buffered by cp.async;
// (3) with key splits, a merge of the splits' partials.
// head_dim 64 and 128 (tensor cores) only; others are UNIMPLEMENTED.
//
// Usage: SparsePrefillPlan plan = PlanSparsePrefill(params); workspace of plan.workspace_bytes;
//   SparsePrefillAttention(params, plan, out, out_stride, stats, ws, plan.workspace_bytes, s).
// Memory: all pointers are device memory owned by the caller (16-byte aligned: q, K/V bases, out;
// q_stride a multiple of 8, out_token_stride even); nothing is allocated. Every launch is
// asynchronous on the given stream (CUDA-graph capturable). Thread safety: stateless.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/decode_attention.h"

namespace sqz::cuda {

inline constexpr int kSparsePrefillMaxGroup = 8;  // n_q_heads / n_kv_heads at most this
inline constexpr int kSparsePrefillMaxSplits = 16;

struct SparsePrefillParams {
  int num_blocks = 0;  // query blocks (0 .. 65535)
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;    // 64 or 128
  float scale = 0.0f;  // usually 1 / sqrt(head_dim)
  // Query token t, head hq at q + t * q_stride + hq * head_dim ([tokens][>= n_q_heads * head_dim]).
  const __nv_bfloat16* q = nullptr;
  int64_t q_stride = 0;
  // block_starts: device [num_blocks + 1], non-decreasing token indices: block b holds tokens
  // [block_starts[b], block_starts[b + 1]). max_block_tokens: host bound of every block's length
  // (sizes the grid; tokens past it are not computed).
  const int32_t* block_starts = nullptr;
  int32_t max_block_tokens = 0;
  // The context of each block: ctx_len [num_blocks] rows per kv head; ctx_k, ctx_v [num_blocks]
  // device arrays of device pointers to [n_kv_heads][ctx_len[b]][head_dim] bf16 (blocks of one
  // request, or of requests over one context, may share them).
  const int32_t* ctx_len = nullptr;
  const __nv_bfloat16* const* ctx_k = nullptr;
  const __nv_bfloat16* const* ctx_v = nullptr;
  // The selection, [num_blocks][n_kv_heads] lists (SqueezeSelect in block mode: AsContextSegments).
  ContextSegments segments;
  // Host bound of every selected_len (SqueezeMaxSelectedKeys): sizes the workspace; keys past it
  // are not attended.
  int64_t max_selected = 0;
  // Key splits per (block, kv head, row tile): 0 lets PlanSparsePrefill choose (more CTAs when the
  // blocks alone leave SMs idle, e.g. 256 query tokens); 1..kSparsePrefillMaxSplits forces it.
  // With more than one split each CTA leaves an fp32 partial in the workspace and a merge kernel
  // combines them (log-sum-exp rule).
  int num_splits = 0;
  // Optional device counter, accumulated (not reset) by the launch: each (block, kv head) adds
  // the context keys its tokens attend (its selected keys x the block's tokens), so that a caller
  // can report the share of a context a request read.
  unsigned long long* context_keys = nullptr;
};

struct SparsePrefillPlan {
  int row_tiles = 0;           // CTAs per (block, kv head, split) along the (token, head) rows
  int splits = 1;              // key splits
  int64_t split_len = 0;       // keys per split (a multiple of 64 when splits > 1)
  size_t partials_offset = 0;  // workspace: the row map first, then the splits' partials
  size_t workspace_bytes = 0;
  // CTA order: true launches a kv head's query blocks next to each other (their selections,
  // which overlap, are then read close together in time and share L2); false a block's kv heads.
  // Either gives the same outputs, bit for bit; the plan takes true.
  bool blocks_inner = true;
};

// num_sms (the device's multiprocessor count) guides the split choice when params.num_splits is
// 0; with num_sms 0 the plan uses one split.
SparsePrefillPlan PlanSparsePrefill(const SparsePrefillParams& params, int num_sms = 0);

// out: token t, head hq at out + t * out_token_stride + hq * head_dim (TOut float or bf16);
// stats: [tokens][n_q_heads] (m, l) (natural-log m), or nullptr. Only the tokens of the blocks are
// written. workspace: >= plan.workspace_bytes, 16-byte aligned.
template <typename TOut>
Status SparsePrefillAttention(const SparsePrefillParams& params, const SparsePrefillPlan& plan,
                              TOut* out, int64_t out_token_stride, cpu::AttentionPartial* stats,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace sqz::cuda
