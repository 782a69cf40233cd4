// Gemv: the linear layers' product for a few rows (decode steps at small batch), bf16 inputs,
// fp32 accumulation, bf16 or fp32 output:
//   out[m][n] = sum_k a[m][k] * w[n][k] (+ bias[n]),   1 <= m <= kGemvMaxRows.
// a: [m][k] activations, w: [n][k] a Hugging Face Linear weight, bias: [n] of the output type or
// nullptr, out: [m][n]; row-major device memory owned by the caller.
// Memory-bound: one warp per output feature (four for n < 16384, so that short shapes fill the
// GPU) streams its weight row once with 16-byte loads (kept out of L1) while the few activation
// rows stay in L1/L2; each output element is summed in a fixed order, independent of m (batch
// invariant). Needs k % 8 == 0 and 16-byte aligned a and w
// (GemvSupported); other shapes are the caller's to send to cuBLASLt (gemm.h).
// Thread safety: stateless. Nothing allocated.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"

namespace sqz::cuda {

inline constexpr int kGemvMaxRows = 8;

// Whether Gemv takes these arguments (m in [1, kGemvMaxRows], k % 8 == 0, a and w 16-byte aligned).
bool GemvSupported(const __nv_bfloat16* a, const __nv_bfloat16* w, int64_t m, int64_t k);

// INVALID_ARGUMENT when !GemvSupported or n < 1; INTERNAL if the launch fails.
template <typename TOut>
Status Gemv(const __nv_bfloat16* a, const __nv_bfloat16* w, const TOut* bias, int64_t m, int64_t n,
            int64_t k, TOut* out, cudaStream_t stream);

}  // namespace sqz::cuda
