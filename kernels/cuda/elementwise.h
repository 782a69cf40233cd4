// Elementwise and row-wise kernels of a Llama forward pass, in bf16 (storage) with fp32 math, and
// the same in fp32. Each is the GPU twin of a kernels/cpu/ops.h function and is tested against it.
//
// Conventions: row-major; every pointer is device memory owned by the caller, and its shape is
// stated next to it; T is float or __nv_bfloat16 (other types do not link). Work is enqueued on
// `stream`; each launcher returns INVALID_ARGUMENT for bad shapes before launching anything, and
// INTERNAL if the launch fails. Nothing here allocates or synchronises.
// Thread safety: stateless; safe from any thread.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"

namespace sqz::cuda {

using bf16 = __nv_bfloat16;

// out[i][:] = table[ids[i]][:]. ids: [n] int32, table: [vocab][d], out: [n][d].
// An id outside [0, vocab) yields a row of NaN (visible downstream, never an out-of-bounds read).
template <typename T>
Status EmbeddingLookup(const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t d,
                       T* out, cudaStream_t stream);

// y[r][j] = x[r][j] / sqrt(mean_j(x[r][j]^2) + eps) * w[j]; sums in fp32.
// x: [n][d], w: [d], y: [n][d]; y may alias x.
template <typename T>
Status RmsNorm(const T* x, const T* w, int64_t n, int64_t d, float eps, T* y, cudaStream_t stream);

// In-place RoPE, Hugging Face rotate_half layout: within each head element i pairs with i + d/2,
// angle = float(positions[t]) * inv_freq[i] (llama3/linear scaling is inside inv_freq, made on the
// host by cpu::RopeInvFreq). Head h of token t starts at x + t * row_stride + h * d, so q and k
// can be rotated inside a packed QKV buffer. x: [n][row_stride] with row_stride >= heads * d,
// positions: [n] int32, inv_freq: [d/2] fp32 (device). d must be even.
template <typename T>
Status ApplyRope(T* x, const int32_t* positions, int64_t n, int64_t heads, int64_t d,
                 int64_t row_stride, const float* inv_freq, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i]. gate, up, out: [n]; out may alias gate or up.
template <typename T>
Status SiluMul(const T* gate, const T* up, int64_t n, T* out, cudaStream_t stream);

// SwiGLU over a fused gate_up projection: out[r][j] = silu(gate_up[r][j]) * gate_up[r][cols + j].
// gate_up: [rows][2 * cols], out: [rows][cols] (must not alias gate_up).
template <typename T>
Status SwiGlu(const T* gate_up, int64_t rows, int64_t cols, T* out, cudaStream_t stream);

// x[i] += y[i] (fp32 math, one rounding). x, y: [n].
template <typename T>
Status AddInPlace(T* x, const T* y, int64_t n, cudaStream_t stream);

// dst[i] = Dst(src[i]) (round to nearest even for float -> bf16). src, dst: [n]; no aliasing.
template <typename Src, typename Dst>
Status Convert(const Src* src, int64_t n, Dst* dst, cudaStream_t stream);

}  // namespace sqz::cuda
