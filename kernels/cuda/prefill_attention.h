// Prefill attention: many query tokens of one sequence against its keys, causal or not, with GQA,
// FlashAttention-2 style (one pass over K/V with an online softmax; never materialises the scores).
//
// Semantics (the oracle is cpu::AttendAccumulate, kernels/cpu/attention.h): for query token t and
// query head h (kv head h / (n_q_heads / n_kv_heads), Hugging Face repeat_kv), over the allowed
// keys j (all j < n_kv; with causal, only j <= q_offset + t):
//   s_j = scale * q . k_j,  m = max_j s_j,  l = sum_j exp(s_j - m),  o = sum_j exp(s_j - m) v_j /
//   l.
// With no allowed key: o = 0, m = -inf, l = 0 (an empty partial).
// The optional (m, l) output lets callers merge this partial with others (MergeAttentionPartials).
//
// Dispatch: head_dim 64 and 128 with 16-byte aligned pointers and strides that are multiples of 8
// run on tensor cores (bf16 mma, fp32 softmax and accumulators), in the kernel that params.kernel
// selects; any other head_dim up to 256 (8, 48, 96, ...) or unaligned views run a simple correct
// kernel (one warp per query and head). head_dim > 256 is UNIMPLEMENTED.
// Memory: all pointers are device memory owned by the caller; nothing is allocated.
// Thread safety: stateless.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"
#include "kernels/cpu/attention.h"

namespace sqz::cuda {

// The tensor-core kernel for head_dim 64 / 128. Both compute the same function (outputs within
// bf16 rounding of each other, the same (m, l)); kNarrow, the first one, stays selectable as the
// fallback and as a cross-check in tests and benchmarks.
enum class PrefillKernel {
  // 128 query rows per block, 32 per warp (two m16 tiles): each K / V fragment read from shared
  // memory feeds two mma; causal tiles past a warp's last row are skipped per warp.
  kWide,
  // 64 query rows per block, 16 per warp (one m16 tile): each fragment feeds one mma.
  kNarrow,
};

struct PrefillAttentionParams {
  // Query token t, head h at q + t * q_token_stride + h * head_dim: [n_q][>= n_q_heads * head_dim].
  const __nv_bfloat16* q = nullptr;
  int64_t q_token_stride = 0;
  // Key j of kv head h at k + j * kv_token_stride + h * kv_head_stride (v likewise). Token-major
  // (a packed QKV buffer: kv_token_stride = row width, kv_head_stride = head_dim) and head-major
  // ([n_kv_heads][n_kv][head_dim]: kv_token_stride = head_dim, kv_head_stride = n_kv * head_dim)
  // are both views of this form.
  const __nv_bfloat16* k = nullptr;
  const __nv_bfloat16* v = nullptr;
  int64_t kv_token_stride = 0;
  int64_t kv_head_stride = 0;
  int64_t n_q = 0;   // query tokens (>= 0)
  int64_t n_kv = 0;  // keys (>= 0)
  int n_q_heads = 0;
  int n_kv_heads = 0;  // divides n_q_heads
  int head_dim = 0;
  float scale = 0.0f;  // usually 1 / sqrt(head_dim)
  bool causal = true;
  int64_t q_offset = 0;  // with causal: query t sits at key position q_offset + t (>= 0)
  PrefillKernel kernel = PrefillKernel::kWide;  // head_dim 64 / 128 only; see PrefillKernel
};

// Keys per tile of every PrefillAttention kernel: key splits are multiples of it.
constexpr int kPrefillKeyTile = 64;

// How a PrefillAttention call runs. One split: a single launch writes out and stats directly (no
// workspace). kv_splits > 1 (non-causal calls only): split s attends to keys
// [s * split_keys, min(n_kv, (s + 1) * split_keys)) in blocks with blockIdx.z = s and writes its
// partial (o, m, l) to the workspace; a second kernel merges the splits' partials in split order by
// cpu::MergePartial's rule into out and stats. Splits past n_kv are empty partials, which the merge
// skips. Workspace layout: fp32 o [kv_splits][n_q][n_q_heads][head_dim], then (256-byte aligned)
// cpu::AttentionPartial [kv_splits][n_q][n_q_heads].
struct PrefillAttentionPlan {
  int kv_splits = 1;       // in [1, 65535]
  int64_t split_keys = 0;  // keys per split, a multiple of kPrefillKeyTile; unused with one split
  size_t workspace_bytes = 0;  // 0 with one split
};

// Picks the splits from the shape (n_q, n_kv, n_q_heads, head_dim, causal, kernel; pointers are not
// read). One split for causal calls, for head dims other than 64 / 128 (the simple kernel), and
// when the query tiles x heads already fill the device (blocks >= slots = kPrefillResidentBlocks *
// num_sms). Otherwise, among splits giving at most ~2 waves (blocks * splits <= 2 * slots, rounded
// up) with at least kPrefillMinSplitKeys keys each, the one that minimises the time in waves,
// ceil(blocks * splits / slots) / splits (fewest splits on ties). E.g. the wide kernel with 32
// heads on 132 SMs and 128K keys: 8 splits for 1-128 query tokens, 4 for 129-256, 1 from 641 on.
constexpr int kPrefillResidentBlocks = 2;  // tensor-core blocks resident per SM (shared memory)
constexpr int64_t kPrefillMinSplitKeys = 2048;
PrefillAttentionPlan PlanPrefillAttention(const PrefillAttentionParams& params, int num_sms);
// kv_splits splits of equal length (rounded up to the key tile: trailing splits may be empty) for
// non-causal calls with kv_splits > 1; otherwise one split. For tests and forced configurations.
PrefillAttentionPlan PlanPrefillAttentionSplits(const PrefillAttentionParams& params,
                                                int kv_splits);

// out: query t, head h at out + t * out_token_stride + h * head_dim ([n_q][>= n_q_heads*head_dim]);
// stats: [n_q][n_q_heads] (m, l) per query and head, or nullptr. TOut is float or __nv_bfloat16.
// Runs as one split (the unsplit path).
template <typename TOut>
Status PrefillAttention(const PrefillAttentionParams& params, TOut* out, int64_t out_token_stride,
                        cpu::AttentionPartial* stats, cudaStream_t stream);
// The same as planned: workspace (16-byte aligned device memory, >= plan.workspace_bytes bytes;
// may be null with one split) holds the splits' partials until the merge. The plan must be one of
// the planners' for params' shape (INVALID_ARGUMENT for causal calls with splits, a split length
// that is not a tile multiple or does not cover n_kv, or a short workspace).
template <typename TOut>
Status PrefillAttention(const PrefillAttentionParams& params, const PrefillAttentionPlan& plan,
                        TOut* out, int64_t out_token_stride, cpu::AttentionPartial* stats,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Merges partial b into partial a, in place (cpu::MergePartial, row by row):
// o_a, o_b: [n][d]; stats_a, stats_b: [n]. T is float or __nv_bfloat16 (fp32 math).
template <typename T>
Status MergeAttentionPartials(T* o_a, cpu::AttentionPartial* stats_a, const T* o_b,
                              const cpu::AttentionPartial* stats_b, int64_t n, int64_t d,
                              cudaStream_t stream);

}  // namespace sqz::cuda
