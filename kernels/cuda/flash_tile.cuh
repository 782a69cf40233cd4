// The per-tile steps of the FlashAttention-2 style kernels (prefill_attention.cu,
// sparse_prefill_attention.cu): one warp owns 16 query rows; a K/V tile of kBc keys sits in shared
// memory, rows of kRow bf16 (head_dim D plus padding). Register layouts are those of the bf16
// mma.m16n8k16 (ptx.cuh): a thread holds rows g = lane / 4 and g + 8 of the warp's 16, and in
// each 8-key fragment nt the keys 2 * (lane % 4) and 2 * (lane % 4) + 1.
// Internal to kernels/cuda.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/ptx.cuh"

namespace sqz::cuda::internal {

// s = Q K^T for the warp's 16 rows (qf: the A fragments of Q, D / 16 of them) and the tile's kBc
// keys (k_tile: [kBc][kRow] in shared memory).
template <int D, int kBc, int kRow>
__device__ __forceinline__ void ScoreTile(const uint32_t (&qf)[D / 16][4],
                                          const __nv_bfloat16* k_tile, int lane,
                                          float (&s)[kBc / 8][4]) {
#pragma unroll
  for (int nt = 0; nt < kBc / 8; ++nt) {
    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc += 2) {
      uint32_t b[4];
      LdMatrixX4(b, k_tile + (nt * 8 + (lane & 7)) * kRow + kc * 16 + (lane >> 3) * 8);
      MmaBf16(s[nt], qf[kc], b[0], b[1]);
      MmaBf16(s[nt], qf[kc + 1], b[2], b[3]);
    }
  }
}

// One online-softmax step: s holds the tile's scores in log2 units (scale * log2(e) * q.k), -inf
// for masked keys. Updates the running max (m0, m1) and sum (l0, l1) of the thread's two rows,
// rescales the output accumulators o, and leaves exp2(s - m) in s. A row whose keys are all
// masked so far keeps m = -inf, l = 0 and o = 0 (its exponentials are taken against 0).
template <int kNt, int kDt>
__device__ __forceinline__ void OnlineSoftmaxTile(float (&s)[kNt][4], float& m0, float& m1,
                                                  float& l0, float& l1, float (&o)[kDt][4]) {
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
    mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
    mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
  }
  // The four threads of a row hold its other keys.
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
  }
  const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
  const float base0 = mn0 == -INFINITY ? 0.0f : mn0;
  const float base1 = mn1 == -INFINITY ? 0.0f : mn1;
  const float alpha0 = exp2f(m0 - base0), alpha1 = exp2f(m1 - base1);
  m0 = mn0;
  m1 = mn1;
  float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
    s[nt][0] = exp2f(s[nt][0] - base0);
    s[nt][1] = exp2f(s[nt][1] - base0);
    s[nt][2] = exp2f(s[nt][2] - base1);
    s[nt][3] = exp2f(s[nt][3] - base1);
    sum0 += s[nt][0] + s[nt][1];
    sum1 += s[nt][2] + s[nt][3];
  }
  l0 = l0 * alpha0 + sum0;
  l1 = l1 * alpha1 + sum1;
#pragma unroll
  for (int dt = 0; dt < kDt; ++dt) {
    o[dt][0] *= alpha0;
    o[dt][1] *= alpha0;
    o[dt][2] *= alpha1;
    o[dt][3] *= alpha1;
  }
}

// o += P V for the tile: P = s (the exponentials of OnlineSoftmaxTile; its accumulator layout is
// the A-operand layout of the next mma, rounded to bf16), v_tile: [kBc][kRow] in shared memory.
template <int D, int kBc, int kRow>
__device__ __forceinline__ void AccumulatePV(const float (&s)[kBc / 8][4],
                                             const __nv_bfloat16* v_tile, int lane,
                                             float (&o)[D / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < kBc / 16; ++kk) {
    uint32_t pf[4];
    pf[0] = PackBf16(s[2 * kk][0], s[2 * kk][1]);
    pf[1] = PackBf16(s[2 * kk][2], s[2 * kk][3]);
    pf[2] = PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pf[3] = PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      uint32_t b[4];
      LdMatrixX4Trans(
          b, v_tile + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRow + dt * 8 +
                 (lane >> 4) * 8);
      MmaBf16(o[dt], pf, b[0], b[1]);
      MmaBf16(o[dt + 1], pf, b[2], b[3]);
    }
  }
}

}  // namespace sqz::cuda::internal
