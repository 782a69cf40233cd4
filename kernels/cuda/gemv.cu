#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gemv.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using internal::FromFloat;
using internal::ToFloat;

constexpr int kWarps = 8;   // warps per block, one output feature each
constexpr int kUnroll = 4;  // 16-byte weight loads in flight per lane
// n below which 4 warps share an output feature (132 SMs x 8 blocks x 8 warps ~ 8K rows per wave).
constexpr int64_t kSplitBelowN = 16384;

// Streaming 16-byte load that does not allocate in L1 (weights are read once per step).
__device__ __forceinline__ uint4 LoadStream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void Dot8(const uint4& w, const uint4& a, float& acc) {
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(w2[i]);
    const float2 af = __bfloat1622float2(a2[i]);
    acc = fmaf(wf.x, af.x, acc);
    acc = fmaf(wf.y, af.y, acc);
  }
}

// The dot products of one weight row with the M activation rows, by one warp: the kSplit warps of
// a feature take interleaved slices of its 16-byte vectors (slice in [0, kSplit)), a lane adds its
// vectors in increasing k into acc[m] (this lane's partial sums; the caller reduces the warp).
// Launched as a programmatic dependent (PDL), the first weight loads are issued before
// WaitForPriorGrid (*waited false on entry: the caller waits itself if no lane got here); a is read
// with plain coherent loads for that reason. row_valid false: no loads, acc stays zero.
template <int M, int kSplit>
__device__ __forceinline__ void WarpRowDot(const bf16* a, const bf16* __restrict__ w_row,
                                           bool row_valid, int64_t k, int slice, int lane,
                                           float (&acc)[M], bool* waited) {
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  if (!row_valid) return;
  const int64_t kv = k / 8;  // 16-byte vectors per row
  const uint4* wr = reinterpret_cast<const uint4*>(w_row);
  const uint4* av = reinterpret_cast<const uint4*>(a);
  constexpr int kStep = 32 * kSplit;
  for (int64_t base = slice * 32 + lane; base < kv; base += kStep * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t idx = base + u * kStep;
      if (idx < kv) wv[u] = LoadStream(wr + idx);
    }
    if (!*waited) {  // the first weights are in flight; a only after the kernel before is done
      internal::WaitForPriorGrid();
      *waited = true;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t idx = base + u * kStep;
      if (idx < kv) {
#pragma unroll
        for (int m = 0; m < M; ++m) Dot8(wv[u], av[m * kv + idx], acc[m]);
      }
    }
  }
}

// A block of kWarps warps computes kWarps / kSplit output features; the kSplit partial sums of a
// feature are added in warp order: a fixed order whatever m.
template <int M, int kSplit, typename TOut>
__global__ void __launch_bounds__(kWarps * 32)
    WarpPerRowGemvKernel(const bf16* a, const bf16* __restrict__ w, const TOut* bias, int64_t n,
                         int64_t k, TOut* out) {
  internal::AllowDependentLaunch();
  __shared__ float partial[kWarps][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kWarps / kSplit) + warp / kSplit;
  const int slice = warp % kSplit;
  float acc[M];
  bool waited = false;
  WarpRowDot<M, kSplit>(a, w + row * k, row < n, k, slice, lane, acc, &waited);
  if (!waited) internal::WaitForPriorGrid();  // lanes without weights still write nothing early
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = internal::WarpSum(acc[m]);
    if (lane == 0) partial[warp][m] = s;
  }
  __syncthreads();  // partial[] is read by other lanes (and warps, with kSplit > 1)
  if (row < n && slice == 0 && lane < M) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < kSplit; ++j) s += partial[warp + j][lane];
    const float b = bias ? ToFloat(bias[row]) : 0.0f;
    out[lane * n + row] = FromFloat<TOut>(s + b);
  }
}

// The fused kernels' layout: a block's warps form kWarps / (2 kSplit) pairs of output features,
// each a group of kSplit warps on the pair's first row followed by a group on its second
// (row_of(j, 0) and row_of(j, 1) for pair j < pairs), summed as WarpPerRowGemvKernel<M, kSplit>
// sums a row. Returns true on the threads that hold a valid pair's sums (lane m < M of the pair's
// first warp: activation row m's sums of the two rows in *s0 and *s1, the pair in *j), which then
// write the epilogue; called by every thread of the block (it synchronises).
template <int M, int kSplit, typename RowOf>
__device__ __forceinline__ bool PairedRowSums(const bf16* a, const bf16* __restrict__ w, int64_t k,
                                              int64_t pairs, RowOf row_of, int64_t* j, float* s0,
                                              float* s1) {
  constexpr int kPairs = kWarps / (2 * kSplit);
  static_assert(kPairs >= 1);
  __shared__ float partial[kWarps][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int pair = warp / (2 * kSplit), second = (warp / kSplit) & 1, slice = warp % kSplit;
  *j = static_cast<int64_t>(blockIdx.x) * kPairs + pair;
  const bool valid = *j < pairs;
  const int64_t row = valid ? row_of(*j, second) : 0;
  float acc[M];
  bool waited = false;
  WarpRowDot<M, kSplit>(a, w + row * k, valid, k, slice, lane, acc, &waited);
  if (!waited) internal::WaitForPriorGrid();
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = internal::WarpSum(acc[m]);
    if (lane == 0) partial[warp][m] = s;
  }
  __syncthreads();
  if (!valid || second != 0 || slice != 0 || lane >= M) return false;
  *s0 = 0.0f;
  *s1 = 0.0f;
#pragma unroll
  for (int t = 0; t < kSplit; ++t) {
    *s0 += partial[warp + t][lane];
    *s1 += partial[warp + kSplit + t][lane];
  }
  return true;
}

// The gate/up product and SwiGLU in one kernel: w holds the gate rows [0, cols) then the up rows
// [cols, 2 cols) (a fused gate_up weight), out[m][j] = bf16(silu(g) * u) with g and u the bf16
// outputs WarpPerRowGemvKernel<M, kSplit> gives rows j and cols + j (kSplit chosen for n = 2 cols,
// as there), so the result has the bits of Gemv then SwiGlu.
template <int M, int kSplit>
__global__ void __launch_bounds__(kWarps * 32)
    WarpPerRowSwiGluKernel(const bf16* a, const bf16* __restrict__ w, int64_t cols, int64_t k,
                           bf16* out) {
  internal::AllowDependentLaunch();
  int64_t j;
  float g, u;
  auto row_of = [cols](int64_t pair, int second) { return second ? cols + pair : pair; };
  if (!PairedRowSums<M, kSplit>(a, w, k, cols, row_of, &j, &g, &u)) return;
  // Rounded to bf16 as the separate Gemv stores them (+ 0.0f: its absent bias), then SwiGlu.
  const float gb = ToFloat(FromFloat<bf16>(g + 0.0f)), ub = ToFloat(FromFloat<bf16>(u + 0.0f));
  const int m = threadIdx.x & 31;
  out[m * cols + j] = FromFloat<bf16>(internal::Silu(gb) * ub);
}

// The QKV projection with RoPE and the paged KV write in its epilogue: w is the fused [n][k] qkv
// weight, n = (q_heads + 2 kv_heads) * d (query heads, key heads, value heads). Feature pairs
// (i, i + d / 2) of one head are computed side by side (PairedRowSums, kSplit chosen for n as Gemv
// does), rounded to bf16 as Gemv stores them, rotated if they belong to a query or key head
// (RotateValues, as RopeWritePagedKv), and written to qkv; key and value pairs also go to the paged
// pool at the row's slot. The bits of Gemv then RopeWritePagedKv.
template <int M, int kSplit>
__global__ void __launch_bounds__(kWarps * 32)
    WarpPerRowQkvRopeKernel(const bf16* a, const bf16* __restrict__ w, const bf16* bias, int64_t k,
                            QkvRopeArgs r, bf16* qkv) {
  internal::AllowDependentLaunch();
  const int64_t half = r.head_dim / 2, heads = r.q_heads + 2 * r.kv_heads;
  const int64_t d = r.head_dim;
  auto row_of = [half, d](int64_t pair, int second) {
    return (pair / half) * d + pair % half + (second ? half : 0);
  };
  int64_t j;
  float s0, s1;
  if (!PairedRowSums<M, kSplit>(a, w, k, heads * half, row_of, &j, &s0, &s1)) return;
  const int lane = threadIdx.x & 31;  // the activation row
  const int64_t h = j / half, i = j % half, row0 = h * d + i, n = heads * d;
  // As Gemv stores them: bf16(sum + bias).
  const float x0 = ToFloat(FromFloat<bf16>(s0 + (bias ? ToFloat(bias[row0]) : 0.0f)));
  const float x1 = ToFloat(FromFloat<bf16>(s1 + (bias ? ToFloat(bias[row0 + half]) : 0.0f)));
  bf16 y0, y1;
  if (h < r.q_heads + r.kv_heads) {
    internal::RotateValues(x0, x1, static_cast<float>(r.positions[lane]), r.inv_freq[i], &y0, &y1);
  } else {
    y0 = FromFloat<bf16>(x0);
    y1 = FromFloat<bf16>(x1);
  }
  bf16* out = qkv + lane * n + row0;
  out[0] = y0;
  out[half] = y1;
  if (h >= r.q_heads) {  // a key or value head: also into the pool
    const bool is_v = h >= r.q_heads + r.kv_heads;
    const int64_t kvh = h - r.q_heads - (is_v ? r.kv_heads : 0);
    const int64_t slot = r.slots[lane];
    const int64_t block = slot / kPageSize, within = slot - block * kPageSize;
    bf16* dst =
        (is_v ? r.pool_v : r.pool_k) + ((block * r.kv_heads + kvh) * kPageSize + within) * d + i;
    dst[0] = y0;
    dst[half] = y1;
  }
}

// ---- kStreaming.
constexpr int kStreamWarps = 8;  // warps per block
constexpr int kStreamLoads = 8;  // 16-byte weight loads in flight per lane
// Output features a warp reads at once: from 3 rows on, two features share each activation load
// (halving the L1 traffic and unpacking per weight byte, which otherwise bound m = 8).
template <int M>
constexpr int kStreamFeatures = M >= 3 ? 2 : 1;
// Blocks per SM the register budget must allow: 4 (64 registers) for m = 1, 3 (80; m = 2 spills at
// 64) up to m = 3, else 2 (128; m >= 4 spills at 80). Two blocks still keep 16 warps x 32 lanes x
// 8 x 16 B = 64 KB of weight loads in flight per SM.
template <int M>
constexpr int kStreamMinBlocks = M >= 4 ? 2 : (M >= 2 ? 3 : 4);

// The 8 bf16 of a 16-byte vector as floats (exact: a bf16 is the high half of its fp32), from the
// 32-bit words so that the vector is loaded whole.
__device__ __forceinline__ void Unpack8(const uint4 v, float f[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(words[i] << 16);              // element 2i: the low half
    f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);  // element 2i + 1
  }
}

// One warp: output features [row, row + T) for all M activation rows. Activations are read with
// plain (coherent, L1-cached) loads after WaitForPriorGrid: the kernel before may still be writing
// them while this one starts (PDL), so neither __ldg nor __restrict__ on a. w_row: [T][kv] 16-byte
// vectors (the features' weight rows, consecutive), av: [M][kv], bias: [n] or null, out: [M][n].
// Lane l adds vectors l, l + 32, l + 64, ... in that order (as WarpPerRowGemvKernel with kSplit 1),
// 8 loads in flight. The first batch of weight loads is issued before WaitForPriorGrid (*waited
// false).
template <int M, int T, typename TOut>
__device__ __forceinline__ void StreamFeatures(const uint4* __restrict__ w_row, const uint4* av,
                                               const TOut* bias, int64_t n, int64_t kv, int64_t row,
                                               int lane, TOut* out, bool* waited) {
  constexpr int U = kStreamLoads / T;
  float acc[T][M];
#pragma unroll
  for (int t = 0; t < T; ++t) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[t][m] = 0.0f;
  }
  // Warp-uniform trip count (every lane waits at the same point, even where kv < 32 * U).
  for (int64_t start = 0; start < kv; start += 32 * U) {
    const int64_t base = start + lane;
    uint4 wv[T][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t idx = base + 32 * u;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        wv[t][u] = idx < kv ? LoadStream(w_row + t * kv + idx) : make_uint4(0, 0, 0, 0);
      }
    }
    if (!*waited) {  // weights in flight; a, bias and out only after the previous kernel is done
      internal::WaitForPriorGrid();
      *waited = true;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t idx = base + 32 * u;
      if (idx < kv) {
        float wf[T][8];
#pragma unroll
        for (int t = 0; t < T; ++t) Unpack8(wv[t][u], wf[t]);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float af[8];
          Unpack8(av[m * kv + idx], af);
#pragma unroll
          for (int t = 0; t < T; ++t) {
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[t][m] = fmaf(wf[t][i], af[i], acc[t][m]);
          }
        }
      }
    }
  }
  // Every lane ends with every sum (xor butterfly); lane t * M + m writes out[m][row + t].
#pragma unroll
  for (int t = 0; t < T; ++t) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float s = internal::WarpSum(acc[t][m]);
      if (lane == t * M + m) {
        const float b = bias ? ToFloat(bias[row + t]) : 0.0f;
        out[m * n + row + t] = FromFloat<TOut>(s + b);
      }
    }
  }
}

// A single wave of gridDim.x blocks; global warp g of W takes output features
// [g * n / W, (g + 1) * n / W) (contiguous, balanced to within one feature), kStreamFeatures<M>
// at a time. a: [M][k], w: [n][k], bias: [n] or null, out: [M][n].
template <int M, typename TOut>
__global__ void __launch_bounds__(kStreamWarps * 32, kStreamMinBlocks<M>)
    StreamingGemvKernel(const bf16* a, const bf16* __restrict__ w, const TOut* bias, int64_t n,
                        int64_t k, TOut* out) {
  internal::AllowDependentLaunch();
  constexpr int T = kStreamFeatures<M>;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kStreamWarps;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kStreamWarps + (threadIdx.x >> 5);
  const int64_t end = (warp + 1) * n / warps;
  const int64_t kv = k / 8;
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  const uint4* av = reinterpret_cast<const uint4*>(a);
  bool waited = false;
  int64_t row = warp * n / warps;
  for (; row + T <= end; row += T) {
    StreamFeatures<M, T, TOut>(wv + row * kv, av, bias, n, kv, row, lane, out, &waited);
  }
  if constexpr (T > 1) {
    if (row < end)
      StreamFeatures<M, 1, TOut>(wv + row * kv, av, bias, n, kv, row, lane, out, &waited);
  }
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

Status CheckArgs(const char* op, const bf16* a, const bf16* w, int64_t m, int64_t n, int64_t k,
                 const void* out) {
  if (!GemvSupported(a, w, m, k)) {
    return ArgError(op, "needs 1 <= m <= " + std::to_string(kGemvMaxRows) +
                            ", k % 8 == 0 and 16-byte aligned a and w; got m=" + std::to_string(m) +
                            " k=" + std::to_string(k));
  }
  if (n < 1) return ArgError(op, "n must be >= 1");
  if (!out) return ArgError(op, "null out");
  return OkStatus();
}

// Resident StreamingGemvKernel<M, TOut> blocks per SM.
template <int M, typename TOut>
Status StreamingOccupancy(int* blocks) {
  return CudaStatus(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                        blocks, StreamingGemvKernel<M, TOut>, kStreamWarps * 32, 0),
                    "PlanGemv: occupancy");
}

template <int M>
Status StreamingBlocksPerSm(int* blocks) {
  int b32 = 0, b16 = 0;
  SQZ_RETURN_IF_ERROR((StreamingOccupancy<M, float>(&b32)));
  SQZ_RETURN_IF_ERROR((StreamingOccupancy<M, bf16>(&b16)));
  *blocks = std::min(b32, b16);
  if (*blocks < 1) return ArgError("PlanGemv", "the streaming kernel does not fit on an SM");
  return OkStatus();
}

template <int M, typename TOut>
Status LaunchStreaming(const GemvPlan& plan, const bf16* a, const bf16* w, const TOut* bias,
                       int64_t n, int64_t k, TOut* out, cudaStream_t stream) {
  // One wave; no more blocks than give every warp a feature (tiny n).
  const int64_t wave = static_cast<int64_t>(plan.sm_count) * plan.blocks_per_sm[M - 1];
  const int64_t blocks = std::min(wave, (n + kStreamWarps - 1) / kStreamWarps);
  return CudaStatus(internal::Launch(StreamingGemvKernel<M, TOut>,
                                     dim3(static_cast<unsigned>(blocks)), dim3(kStreamWarps * 32),
                                     0, stream, plan.programmatic_launch, a, w, bias, n, k, out),
                    "Gemv");
}

// The kWarpPerRow kernel; programmatic: launched as a PDL dependent of the kernel before.
template <typename TOut>
Status LaunchWarpPerRow(const bf16* a, const bf16* w, const TOut* bias, int64_t m, int64_t n,
                        int64_t k, TOut* out, cudaStream_t stream, bool programmatic) {
  constexpr const char* kOp = "Gemv";
  static_assert(std::is_same_v<TOut, float> || std::is_same_v<TOut, bf16>);
  SQZ_RETURN_IF_ERROR(CheckArgs(kOp, a, w, m, n, k, out));
  // Short n (fewer than ~4 waves of one-row-per-warp blocks): 4 warps per output feature.
  const bool split = n < kSplitBelowN;
  const int64_t per_block = split ? kWarps / 4 : kWarps;
  const int64_t blocks = (n + per_block - 1) / per_block;
  if (blocks > INT32_MAX) return ArgError(kOp, "n too large");
  const unsigned grid = static_cast<unsigned>(blocks);
  const int threads = kWarps * 32;
  switch (m) {
#define SQZ_GEMV_CASE(M)                                                                 \
  case M:                                                                                \
    return CudaStatus(                                                                   \
        internal::Launch(                                                                \
            split ? WarpPerRowGemvKernel<M, 4, TOut> : WarpPerRowGemvKernel<M, 1, TOut>, \
            dim3(grid), dim3(threads), 0, stream, programmatic, a, w, bias, n, k, out),  \
        kOp);
    SQZ_GEMV_CASE(1)
    SQZ_GEMV_CASE(2)
    SQZ_GEMV_CASE(3)
    SQZ_GEMV_CASE(4)
    SQZ_GEMV_CASE(5)
    SQZ_GEMV_CASE(6)
    SQZ_GEMV_CASE(7)
    SQZ_GEMV_CASE(8)
#undef SQZ_GEMV_CASE
    default:
      return ArgError(kOp, "m outside the compiled range");
  }
}

// WarpPerRowSwiGluKernel over cols features; the split that Gemv takes for n = 2 cols.
Status LaunchWarpPerRowSwiGlu(const bf16* a, const bf16* w, int64_t m, int64_t cols, int64_t k,
                              bf16* out, cudaStream_t stream, bool programmatic) {
  constexpr const char* kOp = "GemvSwiGlu";
  if (cols < 1) return ArgError(kOp, "cols must be >= 1");
  SQZ_RETURN_IF_ERROR(CheckArgs(kOp, a, w, m, 2 * cols, k, out));
  const bool split = 2 * cols < kSplitBelowN;
  const int64_t pairs = split ? kWarps / 8 : kWarps / 2;
  const int64_t blocks = (cols + pairs - 1) / pairs;
  if (blocks > INT32_MAX) return ArgError(kOp, "cols too large");
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  switch (m) {
#define SQZ_SWIGLU_CASE(M)                                                                    \
  case M:                                                                                     \
    return CudaStatus(                                                                        \
        internal::Launch(split ? WarpPerRowSwiGluKernel<M, 4> : WarpPerRowSwiGluKernel<M, 1>, \
                         grid, block, 0, stream, programmatic, a, w, cols, k, out),           \
        kOp);
    SQZ_SWIGLU_CASE(1)
    SQZ_SWIGLU_CASE(2)
    SQZ_SWIGLU_CASE(3)
    SQZ_SWIGLU_CASE(4)
    SQZ_SWIGLU_CASE(5)
    SQZ_SWIGLU_CASE(6)
    SQZ_SWIGLU_CASE(7)
    SQZ_SWIGLU_CASE(8)
#undef SQZ_SWIGLU_CASE
    default:
      return ArgError(kOp, "m outside the compiled range");
  }
}

// WarpPerRowQkvRopeKernel; the split that Gemv takes for n.
Status LaunchWarpPerRowQkvRope(const bf16* a, const bf16* w, const bf16* bias, int64_t m, int64_t k,
                               const QkvRopeArgs& r, bf16* qkv, cudaStream_t stream,
                               bool programmatic) {
  constexpr const char* kOp = "GemvQkvRope";
  if (r.q_heads < 1 || r.kv_heads < 1 || r.head_dim < 2 || r.head_dim % 2 != 0) {
    return ArgError(kOp, "need q_heads >= 1, kv_heads >= 1 and an even head_dim >= 2");
  }
  if (!r.positions || !r.slots || !r.inv_freq || !r.pool_k || !r.pool_v) {
    return ArgError(kOp, "null positions, slots, inv_freq or pool");
  }
  const int64_t n = static_cast<int64_t>(r.q_heads + 2 * r.kv_heads) * r.head_dim;
  SQZ_RETURN_IF_ERROR(CheckArgs(kOp, a, w, m, n, k, qkv));
  const bool split = n < kSplitBelowN;
  const int64_t pairs_per_block = split ? kWarps / 8 : kWarps / 2;
  const int64_t blocks = (n / 2 + pairs_per_block - 1) / pairs_per_block;
  if (blocks > INT32_MAX) return ArgError(kOp, "n too large");
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  switch (m) {
#define SQZ_QKV_ROPE_CASE(M)                                                                    \
  case M:                                                                                       \
    return CudaStatus(                                                                          \
        internal::Launch(split ? WarpPerRowQkvRopeKernel<M, 4> : WarpPerRowQkvRopeKernel<M, 1>, \
                         grid, block, 0, stream, programmatic, a, w, bias, k, r, qkv),          \
        kOp);
    SQZ_QKV_ROPE_CASE(1)
    SQZ_QKV_ROPE_CASE(2)
    SQZ_QKV_ROPE_CASE(3)
    SQZ_QKV_ROPE_CASE(4)
    SQZ_QKV_ROPE_CASE(5)
    SQZ_QKV_ROPE_CASE(6)
    SQZ_QKV_ROPE_CASE(7)
    SQZ_QKV_ROPE_CASE(8)
#undef SQZ_QKV_ROPE_CASE
    default:
      return ArgError(kOp, "m outside the compiled range");
  }
}

}  // namespace

StatusOr<GemvPlan> PlanGemv(GemvKernel kernel, bool programmatic_launch) {
  GemvPlan plan;
  plan.kernel = kernel;
  plan.programmatic_launch = programmatic_launch;
  int device = 0;
  SQZ_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "PlanGemv: device"));
  SQZ_RETURN_IF_ERROR(
      CudaStatus(cudaDeviceGetAttribute(&plan.sm_count, cudaDevAttrMultiProcessorCount, device),
                 "PlanGemv: SM count"));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<1>(&plan.blocks_per_sm[0]));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<2>(&plan.blocks_per_sm[1]));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<3>(&plan.blocks_per_sm[2]));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<4>(&plan.blocks_per_sm[3]));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<5>(&plan.blocks_per_sm[4]));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<6>(&plan.blocks_per_sm[5]));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<7>(&plan.blocks_per_sm[6]));
  SQZ_RETURN_IF_ERROR(StreamingBlocksPerSm<8>(&plan.blocks_per_sm[7]));
  static_assert(kGemvMaxRows == 8);
  return plan;
}

bool GemvSupported(const bf16* a, const bf16* w, int64_t m, int64_t k) {
  return m >= 1 && m <= kGemvMaxRows && k > 0 && k % 8 == 0 && Aligned16(a) && Aligned16(w);
}

template <typename TOut>
Status Gemv(const GemvPlan& plan, const bf16* a, const bf16* w, const TOut* bias, int64_t m,
            int64_t n, int64_t k, TOut* out, cudaStream_t stream) {
  constexpr const char* kOp = "Gemv";
  static_assert(std::is_same_v<TOut, float> || std::is_same_v<TOut, bf16>);
  if (plan.kernel == GemvKernel::kWarpPerRow) {
    return LaunchWarpPerRow<TOut>(a, w, bias, m, n, k, out, stream, plan.programmatic_launch);
  }
  SQZ_RETURN_IF_ERROR(CheckArgs(kOp, a, w, m, n, k, out));
  if (plan.sm_count < 1 || m > kGemvMaxRows || plan.blocks_per_sm[m - 1] < 1) {
    return ArgError(kOp, "a kStreaming plan must come from PlanGemv");
  }
  switch (m) {
#define SQZ_STREAMING_CASE(M) \
  case M:                     \
    return LaunchStreaming<M, TOut>(plan, a, w, bias, n, k, out, stream);
    SQZ_STREAMING_CASE(1)
    SQZ_STREAMING_CASE(2)
    SQZ_STREAMING_CASE(3)
    SQZ_STREAMING_CASE(4)
    SQZ_STREAMING_CASE(5)
    SQZ_STREAMING_CASE(6)
    SQZ_STREAMING_CASE(7)
    SQZ_STREAMING_CASE(8)
#undef SQZ_STREAMING_CASE
    default:
      return ArgError(kOp, "m outside the compiled range");
  }
}

template <typename TOut>
Status Gemv(const bf16* a, const bf16* w, const TOut* bias, int64_t m, int64_t n, int64_t k,
            TOut* out, cudaStream_t stream) {
  return LaunchWarpPerRow<TOut>(a, w, bias, m, n, k, out, stream, /*programmatic=*/false);
}

Status GemvSwiGlu(const GemvPlan& plan, const bf16* a, const bf16* w_gate_up, int64_t m,
                  int64_t cols, int64_t k, bf16* out, cudaStream_t stream) {
  return LaunchWarpPerRowSwiGlu(a, w_gate_up, m, cols, k, out, stream, plan.programmatic_launch);
}

Status GemvQkvRope(const GemvPlan& plan, const bf16* a, const bf16* w_qkv, const bf16* bias,
                   int64_t m, int64_t k, const QkvRopeArgs& rope, bf16* qkv, cudaStream_t stream) {
  return LaunchWarpPerRowQkvRope(a, w_qkv, bias, m, k, rope, qkv, stream, plan.programmatic_launch);
}

template Status Gemv<float>(const GemvPlan&, const bf16*, const bf16*, const float*, int64_t,
                            int64_t, int64_t, float*, cudaStream_t);
template Status Gemv<bf16>(const GemvPlan&, const bf16*, const bf16*, const bf16*, int64_t, int64_t,
                           int64_t, bf16*, cudaStream_t);
template Status Gemv<float>(const bf16*, const bf16*, const float*, int64_t, int64_t, int64_t,
                            float*, cudaStream_t);
template Status Gemv<bf16>(const bf16*, const bf16*, const bf16*, int64_t, int64_t, int64_t, bf16*,
                           cudaStream_t);

}  // namespace sqz::cuda
