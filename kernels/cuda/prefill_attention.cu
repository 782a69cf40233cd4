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
  return static_cast<size_t>(kBr + 4 * kBc) * (D + kPad) * sizeof(__nv_bfloat16);
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
                       cpu::AttentionPartial* __restrict__ stats) {
  constexpr int kRow = D + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* q_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kBr][kRow]
  // Stage s of K at q_s + (kBr + s * kBc) * kRow, of V at q_s + (kBr + (2 + s) * kBc) * kRow.
  auto k_s = [&](int stage) { return q_s + (kBr + stage * kBc) * kRow; };
  auto v_s = [&](int stage) { return q_s + (kBr + (2 + stage) * kBc) * kRow; };

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  // Causal blocks late in the sequence have the most work: start them first.
  const int64_t q_tile = p.causal ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x;
  const int64_t q0 = q_tile * kBr;
  const int head = blockIdx.y;
  const int kv_head = head / (p.n_q_heads / p.n_kv_heads);
  const __nv_bfloat16* k_base = p.k + kv_head * p.kv_head_stride;
  const __nv_bfloat16* v_base = p.v + kv_head * p.kv_head_stride;

  int64_t kv_end = p.n_kv;
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
      internal::CpAsync16(k_s(stage) + r * kRow + col, valid ? k_base + off : p.k, valid);
      internal::CpAsync16(v_s(stage) + r * kRow + col, valid ? v_base + off : p.v, valid);
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
    internal::ScoreTile<D, kBc, kRow>(qf, k_s(stage), lane, s);
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
    internal::AccumulatePV<D, kBc, kRow>(s, v_s(stage), lane, o);
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

// ---- Simple path (any head_dim <= 256) ----------------------------------------------------------
// One warp per (query token, query head); lane i holds dims i, i + 32, ...; one key at a time.
constexpr int kSimpleMaxDim = 256;
constexpr int kSimpleWarps = 4;

template <typename TOut>
__global__ void __launch_bounds__(kSimpleWarps * 32)
    SimplePrefillKernel(PrefillAttentionParams p, TOut* __restrict__ out, int64_t out_stride,
                        cpu::AttentionPartial* __restrict__ stats) {
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
  int64_t kv_end = p.n_kv;
  if (p.causal) kv_end = Min64(kv_end, p.q_offset + t + 1);
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j < kv_end; ++j) {
    const __nv_bfloat16* kj = p.k + j * p.kv_token_stride + kv_head * p.kv_head_stride;
    const __nv_bfloat16* vj = p.v + j * p.kv_token_stride + kv_head * p.kv_head_stride;
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
                   cpu::AttentionPartial* stats, cudaStream_t stream) {
  constexpr size_t kSmem = FlashSmemBytes<D>();
  // Per device and cheap; set on every call so that any current device is covered.
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(FlashPrefillKernel<D, TOut>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmem)),
      "PrefillAttention: cudaFuncSetAttribute");
  const dim3 grid(static_cast<unsigned>((p.n_q + kBr - 1) / kBr), p.n_q_heads);
  FlashPrefillKernel<D, TOut><<<grid, kFlashThreads, kSmem, stream>>>(p, out, out_stride, stats);
  return LaunchStatus("PrefillAttention");
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

}  // namespace

template <typename TOut>
Status PrefillAttention(const PrefillAttentionParams& p, TOut* out, int64_t out_token_stride,
                        cpu::AttentionPartial* stats, cudaStream_t stream) {
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
  if (p.n_q == 0) return OkStatus();
  if (!p.q || !out || (p.n_kv > 0 && (!p.k || !p.v))) return ArgError(kOp, "null pointer");
  if ((p.n_q + kBr - 1) / kBr > INT32_MAX || p.n_q_heads > 65535) {
    return ArgError(kOp, "too many query tokens or heads for one launch");
  }

  const bool vec_ok = Aligned16(p.q) && Aligned16(p.k) && Aligned16(p.v) && Aligned16(out) &&
                      p.q_token_stride % 8 == 0 && p.kv_token_stride % 8 == 0 &&
                      p.kv_head_stride % 8 == 0 && out_token_stride % 2 == 0;
  if (vec_ok && p.head_dim == 64) return LaunchFlash<64>(p, out, out_token_stride, stats, stream);
  if (vec_ok && p.head_dim == 128) return LaunchFlash<128>(p, out, out_token_stride, stats, stream);
  const int64_t warps = p.n_q * p.n_q_heads;
  const int64_t blocks = (warps + kSimpleWarps - 1) / kSimpleWarps;
  if (blocks > INT32_MAX) return ArgError(kOp, "too many query tokens for one launch");
  SimplePrefillKernel<TOut><<<static_cast<unsigned>(blocks), kSimpleWarps * 32, 0, stream>>>(
      p, out, out_token_stride, stats);
  return LaunchStatus(kOp);
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
template Status MergeAttentionPartials<float>(float*, cpu::AttentionPartial*, const float*,
                                              const cpu::AttentionPartial*, int64_t, int64_t,
                                              cudaStream_t);
template Status MergeAttentionPartials<__nv_bfloat16>(__nv_bfloat16*, cpu::AttentionPartial*,
                                                      const __nv_bfloat16*,
                                                      const cpu::AttentionPartial*, int64_t,
                                                      int64_t, cudaStream_t);

}  // namespace sqz::cuda
