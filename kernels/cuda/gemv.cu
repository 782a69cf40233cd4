#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_status.h"
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

// A block of kWarps warps computes kWarps / kSplit output features; the kSplit warps of a feature
// take interleaved slices of its 16-byte vectors (kSplit > 1 gives short-n shapes enough warps to
// fill the GPU) and their partial sums are added in warp order: a fixed order whatever m.
template <int M, int kSplit, typename TOut>
__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const bf16* __restrict__ a, const bf16* __restrict__ w,
               const TOut* __restrict__ bias, int64_t n, int64_t k, TOut* __restrict__ out) {
  __shared__ float partial[kWarps][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kWarps / kSplit) + warp / kSplit;
  const int slice = warp % kSplit;
  const int64_t kv = k / 8;  // 16-byte vectors per row
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  if (row < n) {
    const uint4* wr = reinterpret_cast<const uint4*>(w + row * k);
    const uint4* av = reinterpret_cast<const uint4*>(a);
    constexpr int kStep = 32 * kSplit;
    for (int64_t base = slice * 32 + lane; base < kv; base += kStep * kUnroll) {
      uint4 wv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t idx = base + u * kStep;
        if (idx < kv) wv[u] = LoadStream(wr + idx);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t idx = base + u * kStep;
        if (idx < kv) {
#pragma unroll
          for (int m = 0; m < M; ++m) Dot8(wv[u], __ldg(av + m * kv + idx), acc[m]);
        }
      }
    }
  }
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

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool GemvSupported(const bf16* a, const bf16* w, int64_t m, int64_t k) {
  return m >= 1 && m <= kGemvMaxRows && k > 0 && k % 8 == 0 && Aligned16(a) && Aligned16(w);
}

template <typename TOut>
Status Gemv(const bf16* a, const bf16* w, const TOut* bias, int64_t m, int64_t n, int64_t k,
            TOut* out, cudaStream_t stream) {
  constexpr const char* kOp = "Gemv";
  static_assert(std::is_same_v<TOut, float> || std::is_same_v<TOut, bf16>);
  if (!GemvSupported(a, w, m, k)) {
    return ArgError(kOp, "needs 1 <= m <= " + std::to_string(kGemvMaxRows) +
                             ", k % 8 == 0 and 16-byte aligned a and w; got m=" +
                             std::to_string(m) + " k=" + std::to_string(k));
  }
  if (n < 1) return ArgError(kOp, "n must be >= 1");
  if (!out) return ArgError(kOp, "null out");
  // Short n (fewer than ~4 waves of one-row-per-warp blocks): 4 warps per output feature.
  const bool split = n < kSplitBelowN;
  const int64_t per_block = split ? kWarps / 4 : kWarps;
  const int64_t blocks = (n + per_block - 1) / per_block;
  if (blocks > INT32_MAX) return ArgError(kOp, "n too large");
  const unsigned grid = static_cast<unsigned>(blocks);
  const int threads = kWarps * 32;
  switch (m) {
#define SQZ_GEMV_CASE(M)                                                           \
  case M:                                                                          \
    if (split) {                                                                   \
      GemvKernel<M, 4, TOut><<<grid, threads, 0, stream>>>(a, w, bias, n, k, out); \
    } else {                                                                       \
      GemvKernel<M, 1, TOut><<<grid, threads, 0, stream>>>(a, w, bias, n, k, out); \
    }                                                                              \
    break;
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
  return LaunchStatus(kOp);
}

template Status Gemv<float>(const bf16*, const bf16*, const float*, int64_t, int64_t, int64_t,
                            float*, cudaStream_t);
template Status Gemv<bf16>(const bf16*, const bf16*, const bf16*, int64_t, int64_t, int64_t, bf16*,
                           cudaStream_t);

}  // namespace sqz::cuda
