#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_tile.cuh"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/ptx.cuh"

namespace sqz::cuda {
namespace {

using internal::FromFloat;
using internal::ToFloat;

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The key range of a launch's blockIdx.z (PrefillAttentionPlan): the block attends to keys
// [z * keys, min(n_kv, (z + 1) * keys)) and writes its output at out + z * out_elems and its
// stats at stats + z * stats_elems. One split: keys = n_kv, out_elems = stats_elems = 0.
struct KvSplit {
  int64_t keys = 0;
  int64_t out_elems = 0;
  int64_t stats_elems = 0;
};

// The number of keys of split blockIdx.z (0 for a split past n_kv); causal callers clamp it further
// (causal calls run as one split).
__device__ __forceinline__ int64_t SplitKeys(const PrefillAttentionParams& p,
                                             const KvSplit& split) {
  const int64_t left = p.n_kv - static_cast<int64_t>(blockIdx.z) * split.keys;
  return left < 0 ? 0 : Min64(left, split.keys);
}

// ---- Tensor-core path (head_dim 64 / 128) -------------------------------------------------------
// A block of 4 warps owns 64 query rows of one query head (16 rows per warp) and walks the keys
// in tiles of 64, double-buffered in shared memory by cp.async. S = Q K^T and O += P V run on
// mma.m16n8k16; the softmax state (m, l) of a row lives in the 4 lanes that hold that row.
constexpr int kBr = 64;
constexpr int kBc = 64;
constexpr int kFlashThreads = 128;
constexpr int kPad = 8;  // bf16 per row of padding: 16 bytes, so ldmatrix rows hit distinct banks

template <int D>
constexpr size_t FlashSmemBytes() {
  return internal::FlashTileSmemBytes(kBr, kBc, D + kPad);
}

template <typename TOut>
__device__ __forceinline__ void StorePair(TOut* p, float a, float b) {
  if constexpr (std::is_same_v<TOut, float>) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  }
}

template <int D, typename TOut>
__global__ void __launch_bounds__(kFlashThreads)
    FlashPrefillKernel(PrefillAttentionParams p, TOut* __restrict__ out, int64_t out_stride,
                       cpu::AttentionPartial* __restrict__ stats, KvSplit split) {
  constexpr int kRow = D + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const internal::FlashSmem<kBr, kBc, kRow> sm(smem_raw);
  __nv_bfloat16* q_s = sm.q;  // [kBr][kRow]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  // Causal blocks late in the sequence have the most work: start them first.
  const int64_t q_tile = p.causal ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x;
  const int64_t q0 = q_tile * kBr;
  const int head = blockIdx.y;
  const int kv_head = head / (p.n_q_heads / p.n_kv_heads);
  const int64_t kv_first = static_cast<int64_t>(blockIdx.z) * split.keys;
  const __nv_bfloat16* k_base = p.k + kv_head * p.kv_head_stride + kv_first * p.kv_token_stride;
  const __nv_bfloat16* v_base = p.v + kv_head * p.kv_head_stride + kv_first * p.kv_token_stride;
  out += blockIdx.z * split.out_elems;
  if (stats) stats += blockIdx.z * split.stats_elems;

  // Keys [0, kv_end) from k_base on.
  int64_t kv_end = SplitKeys(p, split);
  if (p.causal) kv_end = Min64(kv_end, p.q_offset + Min64(q0 + kBr, p.n_q));
  const int n_tiles = kv_end > 0 ? static_cast<int>((kv_end + kBc - 1) / kBc) : 0;

  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  // Q tile.
  for (int c = tid; c < kBr * kChunks; c += kFlashThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const int64_t row = q0 + r;
    const bool valid = row < p.n_q;
    const __nv_bfloat16* src = valid ? p.q + row * p.q_token_stride + head * D + col : p.q;
    internal::CpAsync16(q_s + r * kRow + col, src, valid);
  }
  auto load_kv = [&](int tile, int stage) {
    const int64_t j0 = static_cast<int64_t>(tile) * kBc;
    for (int c = tid; c < kBc * kChunks; c += kFlashThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const int64_t j = j0 + r;
      const bool valid = j < kv_end;
      const int64_t off = j * p.kv_token_stride + col;
      internal::CpAsync16(sm.k(stage) + r * kRow + col, valid ? k_base + off : p.k, valid);
      internal::CpAsync16(sm.v(stage) + r * kRow + col, valid ? v_base + off : p.v, valid);
    }
  };
  if (n_tiles > 0) load_kv(0, 0);
  internal::CpAsyncCommit();

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  const float scale_log2 = p.scale * kLog2e;
  const int64_t row0 = q0 + warp * 16 + g, row1 = row0 + 8;

  for (int jt = 0; jt < n_tiles; ++jt) {
    const int stage = jt & 1;
    if (jt + 1 < n_tiles) load_kv(jt + 1, stage ^ 1);
    internal::CpAsyncCommit();
    internal::CpAsyncWait<1>();
    __syncthreads();
    if (jt == 0) {
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        internal::LdMatrixX4(qf[kc], q_s + r * kRow + kc * 16 + (lane >> 4) * 8);
      }
    }
    // S = Q K^T for this warp's 16 rows and the tile's 64 keys.
    float s[kBc / 8][4];
    internal::ScoreTile<D, kBc, kRow>(qf, sm.k(stage), lane, s);
    // Scale into the log2 domain, mask, and update the online softmax.
    const int64_t j0 = static_cast<int64_t>(jt) * kBc;
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = j0 + nt * 8 + 2 * t4 + (e & 1);
        const int64_t row = e < 2 ? row0 : row1;
        float v = s[nt][e] * scale_log2;
        if (j >= kv_end || (p.causal && j > p.q_offset + row)) v = -INFINITY;
        s[nt][e] = v;
      }
    }
    internal::OnlineSoftmaxTile(s, m0, m1, l0, l1, o);
    // O += P V.
    internal::AccumulatePV<D, kBc, kRow>(s, sm.v(stage), lane, o);
    __syncthreads();  // the next iteration's loads overwrite the other stage only after this
  }
  internal::CpAsyncWait<0>();

#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
  const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  if (row0 < p.n_q) {
    TOut* dst = out + row0 * out_stride + head * D + 2 * t4;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) StorePair(dst + dt * 8, o[dt][0] * inv0, o[dt][1] * inv0);
    if (stats && t4 == 0) stats[row0 * p.n_q_heads + head] = {m0 * kLn2, l0};
  }
  if (row1 < p.n_q) {
    TOut* dst = out + row1 * out_stride + head * D + 2 * t4;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) StorePair(dst + dt * 8, o[dt][2] * inv1, o[dt][3] * inv1);
    if (stats && t4 == 0) stats[row1 * p.n_q_heads + head] = {m1 * kLn2, l1};
  }
}

// ---- Wide tensor-core path (PrefillKernel::kWide) -----------------------------------------------
// A block of 4 warps owns 128 query rows of one query head, 32 per warp as two m16 tiles, so each
// K and V fragment read by ldmatrix feeds two mma (flash_tile.cuh, "Wide tiles"). Keys come in
// tiles of 64, double-buffered by cp.async as in the narrow kernel, and are consumed in softmax
// steps of kStep keys. head_dim 64 keeps Q's A fragments in registers and takes a tile in one step;
// head_dim 128 takes it in two steps of 32 keys and re-reads Q from shared memory in each (the
// accumulators, 128 registers, leave room for neither Q's 64 nor 64 scores). Only steps that cross
// a warp's causal diagonal or the end of the keys are masked; steps entirely past a warp's last row
// are skipped by that warp. ptxas (CUDA 13.0, sm_90) gives 244 registers for head_dim 128 and 255
// for 64, no spills; shared memory is 102 KiB / 54 KiB per block: two blocks per SM.
constexpr int kWideMt = 2;  // m16 query tiles per warp
constexpr int kWideWarps = 4;
constexpr int kWideThreads = kWideWarps * 32;
constexpr int kWideBr = kWideWarps * kWideMt * 16;  // 128 query rows per block
constexpr int kWideBc = 64;                         // keys per tile

template <int D>
constexpr size_t WideSmemBytes() {
  return internal::FlashTileSmemBytes(kWideBr, kWideBc, D + kPad);
}

template <int D, typename TOut>
__global__ void __launch_bounds__(kWideThreads, 2)
    FlashPrefillWideKernel(PrefillAttentionParams p, TOut* __restrict__ out, int64_t out_stride,
                           cpu::AttentionPartial* __restrict__ stats, KvSplit split) {
  constexpr int kRow = D + kPad;
  constexpr int kMt = kWideMt;
  constexpr bool kQInRegs = D <= 64;
  // Keys per softmax step: head_dim 128 takes a tile in two halves so that the scores (kMt * kStep
  // / 2 registers) fit beside the accumulators (kMt * D / 2) without spilling.
  constexpr int kStep = D <= 64 ? kWideBc : kWideBc / 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const internal::FlashSmem<kWideBr, kWideBc, kRow> sm(smem_raw);
  __nv_bfloat16* q_s = sm.q;  // [kWideBr][kRow]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  // Causal blocks late in the sequence have the most work: start them first.
  const int64_t q_tile = p.causal ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x;
  const int64_t q0 = q_tile * kWideBr;
  const int head = blockIdx.y;
  const int kv_head = head / (p.n_q_heads / p.n_kv_heads);
  const int64_t kv_first = static_cast<int64_t>(blockIdx.z) * split.keys;
  const __nv_bfloat16* k_base = p.k + kv_head * p.kv_head_stride + kv_first * p.kv_token_stride;
  const __nv_bfloat16* v_base = p.v + kv_head * p.kv_head_stride + kv_first * p.kv_token_stride;
  out += blockIdx.z * split.out_elems;
  if (stats) stats += blockIdx.z * split.stats_elems;

  // Keys the block needs: [0, kv_end) from k_base on, in n_tiles tiles. The warp's rows are
  // [w0, w0 + 32).
  int64_t kv_end = SplitKeys(p, split);
  if (p.causal) kv_end = Min64(kv_end, p.q_offset + Min64(q0 + kWideBr, p.n_q));
  const int n_tiles = kv_end > 0 ? static_cast<int>((kv_end + kWideBc - 1) / kWideBc) : 0;
  const int64_t w0 = q0 + warp * (kMt * 16);
  // In steps of kStep keys (a tile is kWideBc / kStep steps): the warp computes steps
  // [0, warp_steps) (none when all its rows lie past n_q), and steps from mask_step on may hold
  // keys that some row of the warp must not see (past kv_end, or past its causal diagonal).
  int warp_steps = 0;
  if (w0 < p.n_q) {
    const int64_t warp_kv_end =
        p.causal ? Min64(kv_end, p.q_offset + Min64(w0 + kMt * 16, p.n_q)) : kv_end;
    warp_steps = static_cast<int>((warp_kv_end + kStep - 1) / kStep);
  }
  const int mask_step =
      static_cast<int>((p.causal ? Min64(kv_end, p.q_offset + w0 + 1) : kv_end) / kStep);

  // Loads: thread tid copies 16-byte chunk tid % kChunks of rows tid / kChunks + i * kLdRows.
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kLdRows = kWideThreads / kChunks;
  static_assert(kWideThreads % kChunks == 0 && kWideBc % kLdRows == 0 && kWideBr % kLdRows == 0);
  const int ld_row = tid / kChunks, ld_col = (tid % kChunks) * 8;
#pragma unroll 1
  for (int r = ld_row; r < kWideBr; r += kLdRows) {
    const int64_t row = q0 + r;
    const bool valid = row < p.n_q;
    const __nv_bfloat16* src = valid ? p.q + row * p.q_token_stride + head * D + ld_col : p.q;
    internal::CpAsync16(q_s + r * kRow + ld_col, src, valid);
  }
  auto load_kv = [&](int tile, int stage) {
    const int64_t j0 = static_cast<int64_t>(tile) * kWideBc;
    const int64_t rows = kv_end - j0;  // keys of this tile that exist: the rest are zero-filled
    __nv_bfloat16* k_dst = sm.k(stage) + ld_col;
    __nv_bfloat16* v_dst = sm.v(stage) + ld_col;
#pragma unroll 1
    for (int r = ld_row; r < kWideBc; r += kLdRows) {
      const bool valid = r < rows;
      const int64_t off = (j0 + r) * p.kv_token_stride + ld_col;
      internal::CpAsync16(k_dst + r * kRow, valid ? k_base + off : p.k, valid);
      internal::CpAsync16(v_dst + r * kRow, valid ? v_base + off : p.v, valid);
    }
  };
  if (n_tiles > 0) load_kv(0, 0);
  internal::CpAsyncCommit();

  const __nv_bfloat16* q_warp = q_s + warp * (kMt * 16) * kRow;
  uint32_t qf[kQInRegs ? kMt : 1][kQInRegs ? D / 16 : 1][4];
  float o[kMt][D / 8][4];
  float m[kMt][2], l[kMt][2];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  const float scale_log2 = p.scale * kLog2e;

  for (int jt = 0; jt < n_tiles; ++jt) {
    const int stage = jt & 1;
    if (jt + 1 < n_tiles) load_kv(jt + 1, stage ^ 1);
    internal::CpAsyncCommit();
    internal::CpAsyncWait<1>();
    __syncthreads();
    if constexpr (kQInRegs) {
      if (jt == 0) internal::LoadQFragmentsWide<D, kRow, kMt>(q_warp, lane, qf);
    }
#pragma unroll
    for (int sub = 0; sub < kWideBc / kStep; ++sub) {
      const int step = jt * (kWideBc / kStep) + sub;
      if (step >= warp_steps) break;  // warp-uniform: the other warps may still need this tile
      const __nv_bfloat16* k_step = sm.k(stage) + sub * kStep * kRow;
      float s[kMt][kStep / 8][4];
      if constexpr (kQInRegs) {
        internal::ScoreTileWideRegQ<D, kStep, kRow, kMt>(qf, k_step, lane, s);
      } else {
        internal::ScoreTileWideSmemQ<D, kStep, kRow, kMt>(q_warp, k_step, lane, s);
      }
      if (step >= mask_step) {
        // Key j0 + jj is visible to row w0 + rr when jj < end and (not causal or jj <= diag + rr).
        const int64_t j0 = static_cast<int64_t>(step) * kStep;
        const int64_t end = kv_end - j0, diag = p.q_offset + w0 - j0;
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
          for (int nt = 0; nt < kStep / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int jj = nt * 8 + 2 * t4 + (e & 1);
              const int rr = mt * 16 + g + (e >> 1) * 8;
              if (jj >= end || (p.causal && jj > diag + rr)) s[mt][nt][e] = -INFINITY;
            }
          }
        }
      }
      internal::OnlineSoftmaxWide(s, scale_log2, m, l, o);
      internal::AccumulatePVWide<D, kStep, kRow, kMt>(s, sm.v(stage) + sub * kStep * kRow, lane, o);
    }
    __syncthreads();  // the next iteration's loads overwrite the other stage only after this
  }
  internal::CpAsyncWait<0>();

#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[mt][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int64_t row = w0 + mt * 16 + g + r * 8;
      if (row < p.n_q) {
        TOut* dst = out + row * out_stride + head * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          StorePair(dst + dt * 8, o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
        }
        if (stats && t4 == 0) stats[row * p.n_q_heads + head] = {m[mt][r] * kLn2, sum};
      }
    }
  }
}

// ---- Simple path (any head_dim <= 256) ----------------------------------------------------------
// One warp per (query token, query head); lane i holds dims i, i + 32, ...; one key at a time.
constexpr int kSimpleMaxDim = 256;
constexpr int kSimpleWarps = 4;

template <typename TOut>
__global__ void __launch_bounds__(kSimpleWarps * 32)
    SimplePrefillKernel(PrefillAttentionParams p, TOut* __restrict__ out, int64_t out_stride,
                        cpu::AttentionPartial* __restrict__ stats, KvSplit split) {
  constexpr int kPer = kSimpleMaxDim / 32;
  const int lane = threadIdx.x & 31;
  const int64_t wid = static_cast<int64_t>(blockIdx.x) * kSimpleWarps + (threadIdx.x >> 5);
  if (wid >= p.n_q * p.n_q_heads) return;
  const int64_t t = wid / p.n_q_heads;
  const int head = static_cast<int>(wid % p.n_q_heads);
  const int kv_head = head / (p.n_q_heads / p.n_kv_heads);
  const int d = p.head_dim;
  const float scale_log2 = p.scale * kLog2e;
  float q[kPer], acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int dim = lane + 32 * i;
    q[i] = dim < d ? ToFloat(p.q[t * p.q_token_stride + head * d + dim]) * scale_log2 : 0.0f;
    acc[i] = 0.0f;
  }
  const int64_t kv_first = static_cast<int64_t>(blockIdx.z) * split.keys;
  out += blockIdx.z * split.out_elems;
  if (stats) stats += blockIdx.z * split.stats_elems;
  int64_t kv_end = SplitKeys(p, split);  // keys kv_first + [0, kv_end)
  if (p.causal) kv_end = Min64(kv_end, p.q_offset + t + 1);
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j < kv_end; ++j) {
    const int64_t key = kv_first + j;
    const __nv_bfloat16* kj = p.k + key * p.kv_token_stride + kv_head * p.kv_head_stride;
    const __nv_bfloat16* vj = p.v + key * p.kv_token_stride + kv_head * p.kv_head_stride;
    float partial = 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int dim = lane + 32 * i;
      if (dim < d) partial = fmaf(q[i], ToFloat(kj[dim]), partial);
    }
    const float s = internal::WarpSum(partial);
    const float mn = fmaxf(m, s);
    const float alpha = exp2f(m - mn), w = exp2f(s - mn);
    l = l * alpha + w;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int dim = lane + 32 * i;
      if (dim < d) acc[i] = acc[i] * alpha + w * ToFloat(vj[dim]);
    }
    m = mn;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int dim = lane + 32 * i;
    if (dim < d) out[t * out_stride + head * d + dim] = FromFloat<TOut>(acc[i] * inv);
  }
  if (stats && lane == 0) stats[t * p.n_q_heads + head] = {m * kLn2, l};
}

template <int D, typename TOut>
Status LaunchFlash(const PrefillAttentionParams& p, TOut* out, int64_t out_stride,
                   cpu::AttentionPartial* stats, const KvSplit& split, int splits,
                   cudaStream_t stream) {
  constexpr size_t kSmem = FlashSmemBytes<D>();
  // Per device and cheap; set on every call so that any current device is covered.
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(FlashPrefillKernel<D, TOut>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmem)),
      "PrefillAttention: cudaFuncSetAttribute");
  const dim3 grid(static_cast<unsigned>((p.n_q + kBr - 1) / kBr), p.n_q_heads, splits);
  FlashPrefillKernel<D, TOut>
      <<<grid, kFlashThreads, kSmem, stream>>>(p, out, out_stride, stats, split);
  return LaunchStatus("PrefillAttention");
}

template <int D, typename TOut>
Status LaunchWide(const PrefillAttentionParams& p, TOut* out, int64_t out_stride,
                  cpu::AttentionPartial* stats, const KvSplit& split, int splits,
                  cudaStream_t stream) {
  constexpr size_t kSmem = WideSmemBytes<D>();
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(FlashPrefillWideKernel<D, TOut>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)),
      "PrefillAttention: cudaFuncSetAttribute (wide)");
  const dim3 grid(static_cast<unsigned>((p.n_q + kWideBr - 1) / kWideBr), p.n_q_heads, splits);
  FlashPrefillWideKernel<D, TOut>
      <<<grid, kWideThreads, kSmem, stream>>>(p, out, out_stride, stats, split);
  return LaunchStatus("PrefillAttention (wide)");
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// ---- Merge
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void MergeKernel(T* o_a, cpu::AttentionPartial* stats_a, const T* o_b,
                            const cpu::AttentionPartial* stats_b, int64_t n, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= n) return;
  const cpu::AttentionPartial a = stats_a[row], b = stats_b[row];
  if (b.l == 0.0f) return;
  T* oa = o_a + row * d;
  const T* ob = o_b + row * d;
  if (a.l == 0.0f) {
    for (int64_t j = lane; j < d; j += 32) oa[j] = ob[j];
    __syncwarp();
    if (lane == 0) stats_a[row] = b;
    return;
  }
  const float m = fmaxf(a.m, b.m);
  const float wa = expf(a.m - m) * a.l, wb = expf(b.m - m) * b.l;
  const float inv = 1.0f / (wa + wb);
  for (int64_t j = lane; j < d; j += 32) {
    oa[j] = FromFloat<T>((wa * ToFloat(oa[j]) + wb * ToFloat(ob[j])) * inv);
  }
  __syncwarp();
  if (lane == 0) stats_a[row] = {m, wa + wb};
}

// ---- Merge of key splits
// ------------------------------------------------------------------------- One warp per (query t,
// head h) row r = t * n_q_heads + h; lane i holds dims i, i + 32, ... The splits' partials are
// folded in split order by cpu::MergePartial's rule (fp32), so the result is what merging them
// pairwise with MergeAttentionPartials would give.
constexpr int kMergeWarps = 8;

template <typename TOut>
__global__ void __launch_bounds__(kMergeWarps * 32)
    MergeSplitsKernel(const float* __restrict__ ws_o,  // [splits][n_q * n_q_heads][d]
                      const cpu::AttentionPartial* __restrict__ ws_stats,  // [splits][n_q * hq]
                      int splits, int64_t n_q, int n_q_heads, int d, TOut* __restrict__ out,
                      int64_t out_stride, cpu::AttentionPartial* __restrict__ stats) {
  constexpr int kPer = kSimpleMaxDim / 32;
  const int lane = threadIdx.x & 31;
  const int64_t rows = n_q * n_q_heads;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  float acc[kPer];
  const float* o0 = ws_o + r * d;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int dim = lane + 32 * i;
    acc[i] = dim < d ? o0[dim] : 0.0f;
  }
  cpu::AttentionPartial a = ws_stats[r];
  for (int s = 1; s < splits; ++s) {
    const cpu::AttentionPartial b = ws_stats[s * rows + r];
    if (b.l == 0.0f) continue;
    const float* ob = ws_o + (s * rows + r) * d;
    if (a.l == 0.0f) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int dim = lane + 32 * i;
        if (dim < d) acc[i] = ob[dim];
      }
      a = b;
      continue;
    }
    const float m = fmaxf(a.m, b.m);
    const float wa = expf(a.m - m) * a.l, wb = expf(b.m - m) * b.l;
    const float inv = 1.0f / (wa + wb);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int dim = lane + 32 * i;
      if (dim < d) acc[i] = (wa * acc[i] + wb * ob[dim]) * inv;
    }
    a = {m, wa + wb};
  }
  const int64_t t = r / n_q_heads;
  const int h = static_cast<int>(r % n_q_heads);
  TOut* dst = out + t * out_stride + static_cast<int64_t>(h) * d;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int dim = lane + 32 * i;
    if (dim < d) dst[dim] = FromFloat<TOut>(acc[i]);
  }
  if (stats && lane == 0) stats[r] = a;
}

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Workspace of kv_splits partials (PrefillAttentionPlan): fp32 o, then the stats.
size_t SplitOutputBytes(const PrefillAttentionParams& p, int kv_splits) {
  return Align256(static_cast<size_t>(kv_splits) * p.n_q * p.n_q_heads * p.head_dim *
                  sizeof(float));
}
size_t SplitWorkspaceBytes(const PrefillAttentionParams& p, int kv_splits) {
  return SplitOutputBytes(p, kv_splits) +
         static_cast<size_t>(kv_splits) * p.n_q * p.n_q_heads * sizeof(cpu::AttentionPartial);
}

PrefillAttentionPlan SplitPlan(const PrefillAttentionParams& p, int kv_splits) {
  PrefillAttentionPlan plan;
  if (kv_splits <= 1 || p.causal) return plan;
  const int64_t per = (p.n_kv + kv_splits - 1) / kv_splits;
  plan.kv_splits = kv_splits;
  plan.split_keys =
      std::max<int64_t>(1, (per + kPrefillKeyTile - 1) / kPrefillKeyTile) * kPrefillKeyTile;
  plan.workspace_bytes = SplitWorkspaceBytes(p, kv_splits);
  return plan;
}

}  // namespace

PrefillAttentionPlan PlanPrefillAttention(const PrefillAttentionParams& p, int num_sms) {
  if (p.causal || (p.head_dim != 64 && p.head_dim != 128) || p.n_q <= 0 || p.n_q_heads <= 0 ||
      num_sms <= 0) {
    return PrefillAttentionPlan{};
  }
  const int64_t rows = p.kernel == PrefillKernel::kWide ? kWideBr : kBr;
  const int64_t blocks = (p.n_q + rows - 1) / rows * p.n_q_heads;
  const int64_t slots = int64_t{kPrefillResidentBlocks} * num_sms;
  if (blocks >= slots) return PrefillAttentionPlan{};
  const int64_t by_waves = (2 * slots + blocks - 1) / blocks;
  const int64_t by_keys = p.n_kv / kPrefillMinSplitKeys;
  const int64_t max_splits = std::min<int64_t>({by_waves, by_keys, 65535});
  // Time in waves per split: ceil(blocks * s / slots) / s; best = b_waves / b (cross-multiplied).
  int64_t best = 1, best_waves = 1;
  for (int64_t s = 2; s <= max_splits; ++s) {
    const int64_t waves = (blocks * s + slots - 1) / slots;
    if (waves * best < best_waves * s) best = s, best_waves = waves;
  }
  return SplitPlan(p, static_cast<int>(best));
}

PrefillAttentionPlan PlanPrefillAttentionSplits(const PrefillAttentionParams& p, int kv_splits) {
  return SplitPlan(p, kv_splits);
}

template <typename TOut>
Status PrefillAttention(const PrefillAttentionParams& p, TOut* out, int64_t out_token_stride,
                        cpu::AttentionPartial* stats, cudaStream_t stream) {
  return PrefillAttention<TOut>(p, PrefillAttentionPlan{}, out, out_token_stride, stats, nullptr, 0,
                                stream);
}

template <typename TOut>
Status PrefillAttention(const PrefillAttentionParams& p, const PrefillAttentionPlan& plan,
                        TOut* out, int64_t out_token_stride, cpu::AttentionPartial* stats,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  constexpr const char* kOp = "PrefillAttention";
  if (p.n_q < 0 || p.n_kv < 0) return ArgError(kOp, "n_q and n_kv must be >= 0");
  if (p.n_q_heads <= 0 || p.n_kv_heads <= 0 || p.n_q_heads % p.n_kv_heads != 0) {
    return ArgError(kOp, "n_kv_heads (" + std::to_string(p.n_kv_heads) +
                             ") must be positive and divide n_q_heads (" +
                             std::to_string(p.n_q_heads) + ")");
  }
  if (p.head_dim <= 0) return ArgError(kOp, "head_dim must be positive");
  if (p.head_dim > kSimpleMaxDim) {
    return UnsupportedError(
        kOp, "head_dim " + std::to_string(p.head_dim) + " is not compiled (at most 256)");
  }
  if (p.causal && p.q_offset < 0) return ArgError(kOp, "q_offset must be >= 0");
  const int64_t row = static_cast<int64_t>(p.n_q_heads) * p.head_dim;
  if (p.q_token_stride < row || out_token_stride < row) {
    return ArgError(
        kOp, "q and out token strides must be >= n_q_heads * head_dim = " + std::to_string(row));
  }
  if (p.n_kv > 0 && (p.kv_token_stride <= 0 || p.kv_head_stride < 0)) {
    return ArgError(kOp, "kv strides must be positive");
  }
  if (!(p.scale > 0.0f)) return ArgError(kOp, "scale must be > 0");
  const int splits = plan.kv_splits;
  if (splits < 1 || splits > 65535) {
    return ArgError(kOp, "kv_splits must be in [1, 65535], got " + std::to_string(splits));
  }
  if (splits > 1) {
    if (p.causal) return ArgError(kOp, "key splits need a non-causal call");
    if (plan.split_keys <= 0 || plan.split_keys % kPrefillKeyTile != 0 ||
        plan.split_keys * splits < p.n_kv) {
      return ArgError(kOp, "split_keys " + std::to_string(plan.split_keys) +
                               " must be a positive multiple of " +
                               std::to_string(kPrefillKeyTile) + " whose " +
                               std::to_string(splits) + " splits cover n_kv " +
                               std::to_string(p.n_kv));
    }
    const size_t need = SplitWorkspaceBytes(p, splits);
    if (workspace_bytes < need || (p.n_q > 0 && !Aligned16(workspace))) {
      return ArgError(kOp, "the workspace of " + std::to_string(splits) + " key splits needs " +
                               std::to_string(need) + " bytes, 16-byte aligned; got " +
                               std::to_string(workspace_bytes));
    }
  }
  if (p.n_q == 0) return OkStatus();
  if (!p.q || !out || (p.n_kv > 0 && (!p.k || !p.v))) return ArgError(kOp, "null pointer");
  if ((p.n_q + kBr - 1) / kBr > INT32_MAX || p.n_q_heads > 65535) {
    return ArgError(kOp, "too many query tokens or heads for one launch");
  }

  // One split writes out directly; several write fp32 partials into the workspace.
  const bool qkv_vec_ok = Aligned16(p.q) && Aligned16(p.k) && Aligned16(p.v) &&
                          p.q_token_stride % 8 == 0 && p.kv_token_stride % 8 == 0 &&
                          p.kv_head_stride % 8 == 0;
  auto launch = [&](auto* dst, int64_t dst_stride, cpu::AttentionPartial* dst_stats,
                    const KvSplit& split) -> Status {
    using TDst = std::remove_pointer_t<decltype(dst)>;
    const bool vec_ok = qkv_vec_ok && Aligned16(dst) && dst_stride % 2 == 0;
    if (vec_ok && (p.head_dim == 64 || p.head_dim == 128)) {
      switch (p.kernel) {
        case PrefillKernel::kWide:
          return p.head_dim == 64
                     ? LaunchWide<64, TDst>(p, dst, dst_stride, dst_stats, split, splits, stream)
                     : LaunchWide<128, TDst>(p, dst, dst_stride, dst_stats, split, splits, stream);
        case PrefillKernel::kNarrow:
          return p.head_dim == 64
                     ? LaunchFlash<64, TDst>(p, dst, dst_stride, dst_stats, split, splits, stream)
                     : LaunchFlash<128, TDst>(p, dst, dst_stride, dst_stats, split, splits, stream);
      }
      return ArgError(kOp, "unknown PrefillKernel " + std::to_string(static_cast<int>(p.kernel)));
    }
    const int64_t warps = p.n_q * p.n_q_heads;
    const int64_t blocks = (warps + kSimpleWarps - 1) / kSimpleWarps;
    if (blocks > INT32_MAX) return ArgError(kOp, "too many query tokens for one launch");
    const dim3 grid(static_cast<unsigned>(blocks), 1, splits);
    SimplePrefillKernel<TDst>
        <<<grid, kSimpleWarps * 32, 0, stream>>>(p, dst, dst_stride, dst_stats, split);
    return LaunchStatus(kOp);
  };
  if (splits == 1) return launch(out, out_token_stride, stats, KvSplit{p.n_kv, 0, 0});

  auto* ws_o = static_cast<float*>(workspace);
  auto* ws_stats = reinterpret_cast<cpu::AttentionPartial*>(static_cast<char*>(workspace) +
                                                            SplitOutputBytes(p, splits));
  const int64_t rows = p.n_q * p.n_q_heads;
  SQZ_RETURN_IF_ERROR(
      launch(ws_o, row, ws_stats, KvSplit{plan.split_keys, rows * p.head_dim, rows}));
  const int64_t blocks = (rows + kMergeWarps - 1) / kMergeWarps;
  if (blocks > INT32_MAX) return ArgError(kOp, "too many query tokens for one launch");
  MergeSplitsKernel<TOut><<<static_cast<unsigned>(blocks), kMergeWarps * 32, 0, stream>>>(
      ws_o, ws_stats, splits, p.n_q, p.n_q_heads, p.head_dim, out, out_token_stride, stats);
  return LaunchStatus("PrefillAttention (merge of key splits)");
}

template <typename T>
Status MergeAttentionPartials(T* o_a, cpu::AttentionPartial* stats_a, const T* o_b,
                              const cpu::AttentionPartial* stats_b, int64_t n, int64_t d,
                              cudaStream_t stream) {
  constexpr const char* kOp = "MergeAttentionPartials";
  if (n < 0 || d <= 0) return ArgError(kOp, "need n >= 0 and d > 0");
  if (n == 0) return OkStatus();
  if (!o_a || !stats_a || !o_b || !stats_b) return ArgError(kOp, "null pointer");
  constexpr int kWarps = 8;
  const int64_t blocks = (n + kWarps - 1) / kWarps;
  if (blocks > INT32_MAX) return ArgError(kOp, "n too large");
  MergeKernel<T>
      <<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(o_a, stats_a, o_b, stats_b, n, d);
  return LaunchStatus(kOp);
}

template Status PrefillAttention<float>(const PrefillAttentionParams&, float*, int64_t,
                                        cpu::AttentionPartial*, cudaStream_t);
template Status PrefillAttention<__nv_bfloat16>(const PrefillAttentionParams&, __nv_bfloat16*,
                                                int64_t, cpu::AttentionPartial*, cudaStream_t);
template Status PrefillAttention<float>(const PrefillAttentionParams&, const PrefillAttentionPlan&,
                                        float*, int64_t, cpu::AttentionPartial*, void*, size_t,
                                        cudaStream_t);
template Status PrefillAttention<__nv_bfloat16>(const PrefillAttentionParams&,
                                                const PrefillAttentionPlan&, __nv_bfloat16*,
                                                int64_t, cpu::AttentionPartial*, void*, size_t,
                                                cudaStream_t);
template Status MergeAttentionPartials<float>(float*, cpu::AttentionPartial*, const float*,
                                              const cpu::AttentionPartial*, int64_t, int64_t,
                                              cudaStream_t);
template Status MergeAttentionPartials<__nv_bfloat16>(__nv_bfloat16*, cpu::AttentionPartial*,
                                                      const __nv_bfloat16*,
                                                      const cpu::AttentionPartial*, int64_t,
                                                      int64_t, cudaStream_t);

}  // namespace sqz::cuda
