// Kernels that glue the Llama forward pass of the CUDA backend (engine/cuda) together: an fp32
// residual stream with fused residual-add + RMSNorm, the paged KV pool's writes and gathers, a
// reference-grade paged causal attention (any head_dim up to 256, fp32 math, keys visited in
// order), a deterministic fp32 matrix product (the fp32 exactness mode), and fills for random
// benchmark weights.
//
// Conventions: row-major; every pointer is device memory owned by the caller, its shape stated
// next to it; T is float or __nv_bfloat16 (other types do not link). Work is enqueued on `stream`;
// each launcher returns INVALID_ARGUMENT for bad shapes before launching anything and INTERNAL if
// the launch fails. Nothing here allocates or synchronises.
//
// Paged pool layout (the same as decode_attention.h): block b, kv head h, slot i at
// pool + ((b * kv_heads + h) * kPageSize + i) * head_dim; token u of a sequence sits in the
// sequence's block-table entry u / kPageSize at slot u % kPageSize.
// Thread safety: stateless; safe from any thread.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"

namespace sqz::cuda {

// x[i][:] = float(table[ids[i]][:]). ids: [n] int32, table: [vocab][d], x: [n][d] fp32.
// An id outside [0, vocab) yields a row of NaN (never an out-of-bounds read).
template <typename T>
Status EmbedToFloat(const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t d,
                    float* x, cudaStream_t stream);

// Residual add then RMSNorm, per row r < n: if delta is not null, x[r] += float(delta[r]) (one fp32
// rounding); then y[r][j] = T(x[r][j] / sqrt(mean_j x[r][j]^2 + eps) * w[j]) with fp32 sums.
// x: [n][d] fp32 (in/out), delta: [n][d] or nullptr, w: [d], y: [n][d]. programmatic: launched as
// a programmatic dependent (PDL) of the kernel before on the stream, which may write x, delta and
// y but not w (loaded before the wait); the same bits either way.
template <typename T>
Status AddRmsNorm(float* x, const T* delta, const T* w, int64_t n, int64_t d, float eps, T* y,
                  cudaStream_t stream, bool programmatic = false);

// RMSNorm of selected rows: y[i] = rmsnorm(x[rows[i]]) * w (as AddRmsNorm without delta).
// x: [>= max(rows) + 1][d] fp32, rows: [n] int32 (>= 0), w: [d], y: [n][d].
template <typename T>
Status GatherRmsNorm(const float* x, const int32_t* rows, const T* w, int64_t n, int64_t d,
                     float eps, T* y, cudaStream_t stream);

// x[i] += float(delta[i]). x: [n] fp32, delta: [n].
template <typename T>
Status AddToFloat(float* x, const T* delta, int64_t n, cudaStream_t stream);

// Writes the keys and values of n tokens into the paged pool: token t's key of kv head h is
// src[t * src_row_stride + k_offset + h * head_dim + :head_dim] (value at v_offset likewise), and
// goes to block slots[t] / kPageSize, slot slots[t] % kPageSize. src: [n][>= src_row_stride],
// slots: [n] int32 (distinct; slots[t] / kPageSize < pool blocks), pool_k, pool_v: the layout
// above.
template <typename T>
Status WritePagedKv(const T* src, int64_t src_row_stride, int64_t k_offset, int64_t v_offset,
                    const int32_t* slots, int64_t n, int kv_heads, int head_dim, T* pool_k,
                    T* pool_v, cudaStream_t stream);

// RoPE of a packed QKV buffer and the paged KV write in one launch: the same bits as ApplyRope
// (elementwise.h) over the q_heads + kv_heads heads of each row, then WritePagedKv of the rotated
// keys and of the values. Row t of qkv holds q_heads query heads, kv_heads key heads and kv_heads
// value heads of head_dim each, in that order, at qkv + t * row_stride (row_stride >= (q_heads +
// 2 * kv_heads) * head_dim); q and k are rotated in place. positions, slots: [n] int32 (slots as
// WritePagedKv's), inv_freq: [head_dim / 2] fp32; head_dim even.
template <typename T>
Status RopeWritePagedKv(T* qkv, int64_t row_stride, const int32_t* positions, const int32_t* slots,
                        int64_t n, int q_heads, int kv_heads, int head_dim, const float* inv_freq,
                        T* pool_k, T* pool_v, cudaStream_t stream);

// Copies tokens [0, n) of one sequence out of the paged pool, token-major:
// k_out[t][h * head_dim + e] = key of token t, kv head h (v_out likewise).
// block_table: [ceil(n / kPageSize)] int32; k_out, v_out: [n][kv_heads * head_dim].
template <typename T>
Status GatherPagedKv(const T* pool_k, const T* pool_v, const int32_t* block_table, int64_t n,
                     int kv_heads, int head_dim, T* k_out, T* v_out, cudaStream_t stream);

// Causal attention of rows (query tokens of several sequences) over their sequences' paged keys.
// Row r attends to the first row_keys[r] tokens of its sequence (its own token included), whose
// block table starts at block_ids + row_table[r]. Query head h uses kv head h / (q_heads /
// kv_heads). Per (row, head): s_j = scale * q . k_j, o = sum_j softmax(s)_j v_j, fp32 math with an
// online softmax over j in increasing order, so a row's result does not depend on the other rows
// (batch and chunk invariant). One warp per (row, head): a reference-grade kernel for the fp32
// mode and for shapes the fast kernels do not compile.
template <typename T>
struct PagedAttentionParams {
  const T* q = nullptr;  // row r, head h at q + r * q_stride + h * head_dim
  int64_t q_stride = 0;
  const int32_t* row_keys = nullptr;   // [rows] >= 1
  const int32_t* row_table = nullptr;  // [rows] offsets into block_ids
  const int32_t* block_ids = nullptr;
  const T* pool_k = nullptr;
  const T* pool_v = nullptr;
  int64_t rows = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;  // even, <= 256
  float scale = 0.0f;
};

// out: row r, head h at out + r * out_stride + h * head_dim.
template <typename T>
Status PagedAttentionSimple(const PagedAttentionParams<T>& params, T* out, int64_t out_stride,
                            cudaStream_t stream);

// out[m][n] = sum_k a[m][k] * w[n][k] (+ bias[n]) in fp32, each element summed with fmaf in
// increasing k: deterministic, and a row's result does not depend on m (batch invariant).
// a: [m][k], w: [n][k], bias: [n] or nullptr, out: [m][n]. Reference speed, for the fp32 mode.
Status MatMulTransBF32(const float* a, const float* w, const float* bias, int64_t m, int64_t n,
                       int64_t k, float* out, cudaStream_t stream);

// x[i] = T(scale * (2 u_i - 1)), u_i uniform in [0, 1) from Philox (seed, i): reproducible.
template <typename T>
Status FillUniform(T* x, int64_t n, float scale, uint64_t seed, cudaStream_t stream);

// x[i] = T(value).
template <typename T>
Status FillConstant(T* x, int64_t n, float value, cudaStream_t stream);

}  // namespace sqz::cuda
