// Small kernels of the CUDA backend's fixed-context path (the heavy lifting is in kernels/cuda:
// squeeze_select, decode_attention, prefill_attention).
//   GatherQueryRows      gathers the query rows of the requests of one lookup class into a dense
//                        bf16 buffer (SqueezeSelect reads [batch][q_stride] rows).
//   ScatterSelection     writes a class's selections (compact request order) into the step's
//                        per-decode-item arrays that DecodeAttention's `.sparse` view reads.
//   InitDenseSelection   the segment lists of dense (one segment) and absent (none) contexts.
//   ContextAttentionSimple  reference-grade attention of any row over [its context] + [its own
//                        paged tokens], one warp per (row, query head), fp32 math, online softmax
//                        over context keys first (all rows, or the row's segment list) then own
//                        keys: the fp32 mode's attention when contexts are present.
// Memory: every pointer is device memory owned by the caller. Thread safety: stateless.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz::cuda_ctx {

// dst[j][c] = bf16(src[rows[j] * src_stride + c]) for j < n, c < width. rows: [n] device.
template <typename T>
Status GatherQueryRows(const T* src, int64_t src_stride, const int32_t* rows, int n, int width,
                       __nv_bfloat16* dst, cudaStream_t stream);

// For j < n, kv head h: full[rows[j]][h] = compact[j][h] (segments: the first num_segments
// entries, from a list of compact_max_segments to one of full_max_segments; the caller guarantees
// compact_max_segments <= full_max_segments). body_selected is not copied.
Status ScatterSelection(const cuda::SqueezeSelection& compact, int compact_max_segments,
                        const int32_t* rows, int n, int kv_heads,
                        const cuda::SqueezeSelection& full, int full_max_segments,
                        cudaStream_t stream);

// For r < n, kv head h: the list of a dense (or absent) context: one segment (ctx_len[r], 0) when
// ctx_len[r] > 0, none otherwise; selected_len = ctx_len[r]. Squeezed entries are then overwritten
// by ScatterSelection.
Status InitDenseSelection(const int32_t* ctx_len, int n, int kv_heads,
                          const cuda::SqueezeSelection& full, int full_max_segments,
                          cudaStream_t stream);

template <typename T>
struct ContextAttentionParams {
  const T* q = nullptr;  // row r, head h at q + r * q_stride + h * head_dim
  int64_t q_stride = 0;
  int64_t rows = 0;
  int q_heads = 0, kv_heads = 0, head_dim = 0;  // head_dim <= 256
  float scale = 0.0f;
  // Own tokens (paged, as PagedAttentionSimple): row r attends to its sequence's first
  // row_keys[r] own tokens through the block table at block_ids + row_table[r].
  const int32_t* row_keys = nullptr;
  const int32_t* row_table = nullptr;
  const int32_t* block_ids = nullptr;
  const T* pool_k = nullptr;
  const T* pool_v = nullptr;
  // Context: row_slot [rows] (-1: none) indexes ctx_len / ctx_k / ctx_v (device arrays; K/V
  // [kv_heads][ctx_len][head_dim]). row_sel [rows] (nullable; -1: dense) indexes the segment lists
  // (ContextSegments numbering i = row_sel[r] * kv_heads + kvh) that replace the dense rows.
  const int32_t* row_slot = nullptr;
  const int32_t* ctx_len = nullptr;
  const T* const* ctx_k = nullptr;
  const T* const* ctx_v = nullptr;
  const int32_t* row_sel = nullptr;
  cuda::ContextSegments sparse;
  // Optional device counters [rows], accumulated: row r adds, for each of its kv heads, the
  // context keys it attends (reported as the share of a context a request read).
  unsigned long long* context_keys = nullptr;
};

// out: row r, head h at out + r * out_stride + h * head_dim.
template <typename T>
Status ContextAttentionSimple(const ContextAttentionParams<T>& p, T* out, int64_t out_stride,
                              cudaStream_t stream);

}  // namespace sqz::cuda_ctx
