// The per-tile steps of the FlashAttention-2 style kernels (prefill_attention.cu,
// sparse_prefill_attention.cu): one warp owns 16 query rows (the wide variants below: 16 * kMt); a
// K/V tile of kBc keys sits in shared memory, rows of kRow bf16 (head_dim D plus padding). Register
// layouts are those of the bf16 mma.m16n8k16 (ptx.cuh): a thread holds rows g = lane / 4 and g + 8
// of the warp's 16, and in each 8-key fragment nt the keys 2 * (lane % 4) and 2 * (lane % 4) + 1.
// Internal to kernels/cuda.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/ptx.cuh"

namespace sqz::cuda::internal {

// The shared memory of the flash kernels: a Q tile of kRows rows, then two stages of K, then two
// of V, kBc rows each; every row kRow bf16 (head_dim plus padding).
template <int kRows, int kBc, int kRow>
struct FlashSmem {
  __nv_bfloat16* q;
  __device__ explicit FlashSmem(unsigned char* raw) : q(reinterpret_cast<__nv_bfloat16*>(raw)) {}
  __device__ __nv_bfloat16* k(int stage) const { return q + (kRows + stage * kBc) * kRow; }
  __device__ __nv_bfloat16* v(int stage) const { return q + (kRows + (2 + stage) * kBc) * kRow; }
};

// Bytes of that layout for `rows` query rows, tiles of `bc` keys and rows of `row` bf16.
__host__ __device__ constexpr size_t FlashTileSmemBytes(int rows, int bc, int row) {
  return static_cast<size_t>(rows + 4 * bc) * row * sizeof(__nv_bfloat16);
}

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
      LdMatrixX4Trans(b, v_tile + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRow + dt * 8 +
                             (lane >> 4) * 8);
      MmaBf16(o[dt], pf, b[0], b[1]);
      MmaBf16(o[dt + 1], pf, b[2], b[3]);
    }
  }
}

// ---- Wide tiles (prefill_attention.cu, PrefillKernel::kWide) ------------------------------------
// One warp owns kMt m16 tiles (16 * kMt query rows), so every K or V fragment that ldmatrix brings
// from shared memory feeds kMt mma instead of one. Scores stay raw (q . k, no scale): the online
// softmax folds scale * log2(e) into the one FMA before each exponential. Arrays indexed [mt] are
// per m16 tile; within one, the thread's rows are g (index 0) and g + 8 (index 1).

// 2^x on the special-function unit; subnormal results flush to 0, 2^-inf = 0.
__device__ __forceinline__ float Exp2Ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The A fragments of Q for k-steps kc and kc + 1 (dims 16 * kc .. 16 * kc + 31) of the warp's kMt
// m16 tiles. q_warp: the warp's rows in shared memory, [16 * kMt][kRow].
template <int kMt, int kRow>
__device__ __forceinline__ void LoadQPair(const __nv_bfloat16* q_warp, int kc, int lane,
                                          uint32_t (&a)[kMt][2][4]) {
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      LdMatrixX4(a[mt][h], q_warp + r * kRow + (kc + h) * 16 + (lane >> 4) * 8);
    }
  }
}

// All of Q's A fragments of the warp's kMt m16 tiles, into registers (qf[mt][kc]; q_warp as above).
template <int D, int kRow, int kMt>
__device__ __forceinline__ void LoadQFragmentsWide(const __nv_bfloat16* q_warp, int lane,
                                                   uint32_t (&qf)[kMt][D / 16][4]) {
#pragma unroll
  for (int kc = 0; kc < D / 16; kc += 2) {
    uint32_t a[kMt][2][4];
    LoadQPair<kMt, kRow>(q_warp, kc, lane, a);
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        qf[mt][kc][i] = a[mt][0][i];
        qf[mt][kc + 1][i] = a[mt][1][i];
      }
    }
  }
}

// s[mt] += Q K^T over k-steps kc and kc + 1 (a: their A fragments, LoadQPair) for the tile's kBc
// keys (k_tile: [kBc][kRow] in shared memory): one ldmatrix.x4 of K per 2 * kMt mma.
template <int kBc, int kRow, int kMt>
__device__ __forceinline__ void ScoreStepPair(const uint32_t (&a)[kMt][2][4],
                                              const __nv_bfloat16* k_tile, int kc, int lane,
                                              float (&s)[kMt][kBc / 8][4]) {
#pragma unroll
  for (int nt = 0; nt < kBc / 8; ++nt) {
    uint32_t b[4];
    LdMatrixX4(b, k_tile + (nt * 8 + (lane & 7)) * kRow + kc * 16 + (lane >> 3) * 8);
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      MmaBf16(s[mt][nt], a[mt][0], b[0], b[1]);
      MmaBf16(s[mt][nt], a[mt][1], b[2], b[3]);
    }
  }
}

// s = Q K^T (raw) for the warp's kMt m16 tiles and the tile's kBc keys (k_tile: [kBc][kRow] in
// shared memory), with Q read from shared memory (q_warp: [16 * kMt][kRow]) one k-step at a time,
// for when the whole Q does not fit in registers beside the accumulators. One ldmatrix.x4 of K
// covers one k-step of two 8-key fragments and feeds 2 * kMt mma.
template <int D, int kBc, int kRow, int kMt>
__device__ __forceinline__ void ScoreTileWideSmemQ(const __nv_bfloat16* q_warp,
                                                   const __nv_bfloat16* k_tile, int lane,
                                                   float (&s)[kMt][kBc / 8][4]) {
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) {
      s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
    }
  }
  // Lane l addresses row l % 8 of matrix l / 8: fragment nt + (l / 16), dims + 8 * ((l / 8) % 2).
  const int k_row = ((lane >> 4) * 8 + (lane & 7)) * kRow + ((lane >> 3) & 1) * 8;
  const int q_row = ((lane & 7) + ((lane >> 3) & 1) * 8) * kRow + (lane >> 4) * 8;
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    uint32_t a[kMt][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) LdMatrixX4(a[mt], q_warp + mt * 16 * kRow + q_row + kc * 16);
#pragma unroll
    for (int nt = 0; nt < kBc / 8; nt += 2) {
      uint32_t b[4];
      LdMatrixX4(b, k_tile + nt * 8 * kRow + k_row + kc * 16);
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
        MmaBf16(s[mt][nt], a[mt], b[0], b[1]);
        MmaBf16(s[mt][nt + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// As ScoreTileWideSmemQ, with all of Q's A fragments held in registers (qf[mt][kc]).
template <int D, int kBc, int kRow, int kMt>
__device__ __forceinline__ void ScoreTileWideRegQ(const uint32_t (&qf)[kMt][D / 16][4],
                                                  const __nv_bfloat16* k_tile, int lane,
                                                  float (&s)[kMt][kBc / 8][4]) {
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt)
      s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
  }
#pragma unroll
  for (int kc = 0; kc < D / 16; kc += 2) {
    uint32_t a[kMt][2][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[mt][0][i] = qf[mt][kc][i];
        a[mt][1][i] = qf[mt][kc + 1][i];
      }
    }
    ScoreStepPair<kBc, kRow, kMt>(a, k_tile, kc, lane, s);
  }
}

// One online-softmax step over raw scores s (q . k; -inf for masked keys). m: the running max of
// each row in log2 units (max of scale_log2 * s), l: the thread's share of the running sum (the
// four threads of a row are summed by the caller at the end), o: rescaled. Leaves
// exp2(scale_log2 * s - m) in s. A row whose keys are all masked so far keeps m = -inf, l = 0 and
// o = 0 (its exponentials are taken against 0). scale_log2 > 0.
template <int kMt, int kNt, int kDt>
__device__ __forceinline__ void OnlineSoftmaxWide(float (&s)[kMt][kNt][4], float scale_log2,
                                                  float (&m)[kMt][2], float (&l)[kMt][2],
                                                  float (&o)[kMt][kDt][4]) {
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[mt][nt][0], s[mt][nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[mt][nt][2], s[mt][nt][3]));
    }
    float base[2], alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // The four threads of a row hold its other keys.
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[mt][r], mx[r] * scale_log2);
      base[r] = mn == -INFINITY ? 0.0f : mn;
      alpha[r] = Exp2Ftz(m[mt][r] - base[r]);
      m[mt][r] = mn;
    }
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[mt][nt][e] = Exp2Ftz(fmaf(s[mt][nt][e], scale_log2, -base[e >> 1]));
        sum[e >> 1] += s[mt][nt][e];
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l[mt][r] = l[mt][r] * alpha[r] + sum[r];
#pragma unroll
    for (int dt = 0; dt < kDt; ++dt) {
      o[mt][dt][0] *= alpha[0];
      o[mt][dt][1] *= alpha[0];
      o[mt][dt][2] *= alpha[1];
      o[mt][dt][3] *= alpha[1];
    }
  }
}

// o[mt] += P V for the tile: P = s (OnlineSoftmaxWide's exponentials, rounded to bf16 as the A
// operand), v_tile: [kBc][kRow] in shared memory; one ldmatrix.x4.trans of V per 2 * kMt mma.
template <int D, int kBc, int kRow, int kMt>
__device__ __forceinline__ void AccumulatePVWide(const float (&s)[kMt][kBc / 8][4],
                                                 const __nv_bfloat16* v_tile, int lane,
                                                 float (&o)[kMt][D / 8][4]) {
  const int v_row = ((lane & 7) + ((lane >> 3) & 1) * 8) * kRow + (lane >> 4) * 8;
#pragma unroll
  for (int kk = 0; kk < kBc / 16; ++kk) {
    uint32_t pf[kMt][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      pf[mt][0] = PackBf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      pf[mt][1] = PackBf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      pf[mt][2] = PackBf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      pf[mt][3] = PackBf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      uint32_t b[4];
      LdMatrixX4Trans(b, v_tile + kk * 16 * kRow + v_row + dt * 8);
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
        MmaBf16(o[mt][dt], pf[mt], b[0], b[1]);
        MmaBf16(o[mt][dt + 1], pf[mt], b[2], b[3]);
      }
    }
  }
}

}  // namespace sqz::cuda::internal
