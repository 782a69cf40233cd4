#include <cmath>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/model_ops.h"
#include "kernels/cuda/philox.h"
#include "kernels/cuda/warp_row_attention.cuh"

namespace sqz::cuda {
namespace {

using internal::FromFloat;
using internal::GridFor;
using internal::ToFloat;

constexpr int kThreads = 256;

int NormThreads(int64_t d) { return d <= 512 ? 128 : 256; }

template <typename T>
__global__ void EmbedKernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                            int64_t vocab, int64_t d, float* __restrict__ x) {
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  float* dst = x + row * d;
  if (id < 0 || id >= vocab) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = NAN;
    return;
  }
  const T* src = table + static_cast<int64_t>(id) * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = ToFloat(src[j]);
}

// One block per output row. kGather: the source row is rows[blockIdx.x] and there is no delta.
// The general path (any d, any alignment): each thread walks the row at a stride of blockDim.x.
template <typename T, bool kGather>
__global__ void AddRmsNormKernel(float* x, const T* __restrict__ delta,
                                 const int32_t* __restrict__ rows, const T* __restrict__ w,
                                 int64_t d, float eps, T* __restrict__ y) {
  // A PDL-launched Gemv after it may start its weight loads once this kernel runs: not before the
  // kernel before it is done (when launched programmatically), lest blocks of three kernels
  // contend for the SMs.
  internal::WaitForPriorGrid();  // a no-op unless launched as a programmatic dependent
  internal::AllowDependentLaunch();
  __shared__ float scratch[32];
  const int64_t src_row = kGather ? rows[blockIdx.x] : blockIdx.x;
  float* xr = x + src_row * d;
  T* yr = y + static_cast<int64_t>(blockIdx.x) * d;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float v = xr[j];
    if (!kGather && delta != nullptr) {
      v += ToFloat(delta[static_cast<int64_t>(blockIdx.x) * d + j]);
      xr[j] = v;  // read and written by this thread only
    }
    ss = fmaf(v, v, ss);
  }
  ss = internal::BlockSum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    yr[j] = FromFloat<T>(xr[j] * inv * ToFloat(w[j]));
  }
}

// Four consecutive elements as floats, and back (16-byte fp32 or 8-byte bf16 accesses).
__device__ __forceinline__ float4 Load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 Load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ void Store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void Store4(__nv_bfloat16* p, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}

// The fast path for d % 4 == 0 and d <= 4 * kVecs * blockDim.x (aligned rows): thread t owns the
// 4-element vectors t, t + blockDim.x, ... (at most kVecs), loads all of them (x, delta and w) at
// once and keeps them in registers, so a row costs one round trip to memory and one block sum
// instead of a dependent load per d / blockDim.x elements (the decode step at batch 1 runs this
// twice per layer over one 4,096-wide row). The same fp32 math as the general path per element;
// the sum of squares is added in another order.
template <typename T, bool kGather, int kVecs>
__global__ void AddRmsNormVecKernel(float* x, const T* __restrict__ delta,
                                    const int32_t* __restrict__ rows, const T* __restrict__ w,
                                    int64_t d, float eps, T* __restrict__ y) {
  __shared__ float scratch[32];
  const int64_t vecs = d / 4;
  float4 v[kVecs], wv[kVecs], dv[kVecs];
  // The weights first: nothing before this kernel writes them (a programmatic launch loads them
  // while the kernel before finishes), then the rows after the wait.
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < vecs) wv[i] = Load4(w + 4 * j);
  }
  internal::WaitForPriorGrid();      // a no-op unless launched as a programmatic dependent
  internal::AllowDependentLaunch();  // as in AddRmsNormKernel
  const int64_t src_row = kGather ? rows[blockIdx.x] : blockIdx.x;
  float* xr = x + src_row * d;
  T* yr = y + static_cast<int64_t>(blockIdx.x) * d;
  const bool add = !kGather && delta != nullptr;
  const T* dr = add ? delta + static_cast<int64_t>(blockIdx.x) * d : nullptr;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < vecs) {
      v[i] = Load4(xr + 4 * j);
      if (add) dv[i] = Load4(dr + 4 * j);
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < vecs) {
      if (add) {
        v[i] = make_float4(v[i].x + dv[i].x, v[i].y + dv[i].y, v[i].z + dv[i].z, v[i].w + dv[i].w);
        Store4(xr + 4 * j, v[i]);
      }
      ss = fmaf(v[i].x, v[i].x, ss);
      ss = fmaf(v[i].y, v[i].y, ss);
      ss = fmaf(v[i].z, v[i].z, ss);
      ss = fmaf(v[i].w, v[i].w, ss);
    }
  }
  ss = internal::BlockSum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < vecs) {
      Store4(yr + 4 * j, make_float4(v[i].x * inv * wv[i].x, v[i].y * inv * wv[i].y,
                                     v[i].z * inv * wv[i].z, v[i].w * inv * wv[i].w));
    }
  }
}

// Launches the fast path when the shape and alignment allow it, else the general kernel;
// programmatic: as a programmatic dependent (PDL) of the kernel before.
template <typename T, bool kGather>
cudaError_t LaunchAddRmsNorm(float* x, const T* delta, const int32_t* rows, const T* w, int64_t n,
                             int64_t d, float eps, T* y, cudaStream_t stream, bool programmatic) {
  const int threads = NormThreads(d);
  const dim3 grid(static_cast<unsigned>(n));
  auto aligned = [](const void* p, uintptr_t a) {
    return p == nullptr || (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0;
  };
  const int64_t per_thread = (d / 4 + threads - 1) / threads;
  const bool vec = d % 4 == 0 && per_thread <= 8 && aligned(x, 16) &&
                   aligned(delta, 4 * sizeof(T)) && aligned(w, 4 * sizeof(T)) &&
                   aligned(y, 4 * sizeof(T));
  auto* kernel = !vec              ? AddRmsNormKernel<T, kGather>
                 : per_thread <= 1 ? AddRmsNormVecKernel<T, kGather, 1>
                 : per_thread <= 2 ? AddRmsNormVecKernel<T, kGather, 2>
                 : per_thread <= 4 ? AddRmsNormVecKernel<T, kGather, 4>
                                   : AddRmsNormVecKernel<T, kGather, 8>;
  return internal::Launch(kernel, grid, dim3(threads), 0, stream, programmatic, x, delta, rows, w,
                          d, eps, y);
}

template <typename T>
__global__ void AddToFloatKernel(float* __restrict__ x, const T* __restrict__ delta, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += ToFloat(delta[i]);
  }
}

template <typename T>
__global__ void WritePagedKvKernel(const T* __restrict__ src, int64_t src_row_stride,
                                   int64_t k_offset, int64_t v_offset,
                                   const int32_t* __restrict__ slots, int64_t n, int kv_heads,
                                   int head_dim, T* __restrict__ pool_k, T* __restrict__ pool_v) {
  const int64_t row_width = static_cast<int64_t>(kv_heads) * head_dim;
  const int64_t total = n * row_width;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / row_width;
    const int64_t within = idx - t * row_width;  // h * head_dim + e
    const int64_t h = within / head_dim, e = within - h * head_dim;
    const int64_t slot = slots[t];
    const int64_t block = slot / kPageSize, i = slot - block * kPageSize;
    const int64_t dst = ((block * kv_heads + h) * kPageSize + i) * head_dim + e;
    const T* s = src + t * src_row_stride;
    pool_k[dst] = s[k_offset + within];
    pool_v[dst] = s[v_offset + within];
  }
}

// One thread per (token, head, rotation pair i < d / 2) over the q and k heads: ApplyRope's
// arithmetic; a key head's thread also writes its two rotated elements and the value's two
// elements at the same offsets to the pool.
template <typename T>
__global__ void RopeWritePagedKvKernel(T* qkv, int64_t row_stride,
                                       const int32_t* __restrict__ positions,
                                       const int32_t* __restrict__ slots, int64_t n, int q_heads,
                                       int kv_heads, int d, const float* __restrict__ inv_freq,
                                       T* __restrict__ pool_k, T* __restrict__ pool_v) {
  const int64_t half = d / 2, heads = q_heads + kv_heads;
  const int64_t total = n * heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t h = (idx / half) % heads;
    const int64_t t = idx / (half * heads);
    T* row = qkv + t * row_stride;
    T r0, r1;
    internal::RotatePair(row + h * d, i, half, static_cast<float>(positions[t]), inv_freq[i], &r0,
                         &r1);
    if (h >= q_heads) {
      const int64_t kvh = h - q_heads;
      const int64_t slot = slots[t];
      const int64_t block = slot / kPageSize, within = slot - block * kPageSize;
      const int64_t dst = ((block * kv_heads + kvh) * kPageSize + within) * d;
      const T* vh = row + (heads + kvh) * d;
      pool_k[dst + i] = r0;
      pool_k[dst + i + half] = r1;
      pool_v[dst + i] = vh[i];
      pool_v[dst + i + half] = vh[i + half];
    }
  }
}

template <typename T>
__global__ void GatherPagedKvKernel(const T* __restrict__ pool_k, const T* __restrict__ pool_v,
                                    const int32_t* __restrict__ block_table, int64_t n,
                                    int kv_heads, int head_dim, T* __restrict__ k_out,
                                    T* __restrict__ v_out) {
  const int64_t row_width = static_cast<int64_t>(kv_heads) * head_dim;
  const int64_t total = n * row_width;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / row_width;
    const int64_t within = idx - t * row_width;
    const int64_t h = within / head_dim, e = within - h * head_dim;
    const int64_t block = block_table[t / kPageSize], i = t % kPageSize;
    const int64_t src = ((block * kv_heads + h) * kPageSize + i) * head_dim + e;
    k_out[idx] = pool_k[src];
    v_out[idx] = pool_v[src];
  }
}

constexpr int kAttnWarps = 4;

// One warp per (row, query head) (WarpRowAttention).
template <typename T, int kPer>
__global__ void __launch_bounds__(kAttnWarps * 32)
    PagedAttentionKernel(PagedAttentionParams<T> p, T* __restrict__ out, int64_t out_stride) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kAttnWarps + (threadIdx.x >> 5);
  if (warp >= p.rows * p.q_heads) return;
  const int64_t r = warp / p.q_heads;
  const int h = static_cast<int>(warp - r * p.q_heads);
  const int kvh = h / (p.q_heads / p.kv_heads);
  const int d = p.head_dim;
  internal::WarpRowAttention<kPer> a(p.q + r * p.q_stride + static_cast<int64_t>(h) * d, d,
                                     p.scale);
  const int64_t n = p.row_keys[r];
  const int32_t* table = p.block_ids + p.row_table[r];
  for (int64_t j = 0; j < n; ++j) {
    const int64_t block = table[j / kPageSize];
    const int64_t base = ((block * p.kv_heads + kvh) * kPageSize + j % kPageSize) * d;
    a.Attend(p.pool_k + base, p.pool_v + base);
  }
  a.Write(out + r * out_stride + static_cast<int64_t>(h) * d);
}

constexpr int kTile = 64, kTileK = 16;

// 64 x 64 output tile per block of 256 threads, 4 x 4 per thread; k ascends in steps of 16 with
// zero padding past k, so every element's fmaf chain is k = 0, 1, ..., k - 1 whatever m is.
__global__ void __launch_bounds__(256)
    MatMulF32Kernel(const float* __restrict__ a, const float* __restrict__ w,
                    const float* __restrict__ bias, int64_t m, int64_t n, int64_t k,
                    float* __restrict__ out) {
  __shared__ float as[kTileK][kTile + 4];
  __shared__ float ws[kTileK][kTile + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = tid + i * 256;
      const int row = e / kTileK, kk = e % kTileK;
      const int64_t gk = k0 + kk;
      as[kk][row] = (m0 + row < m && gk < k) ? a[(m0 + row) * k + gk] : 0.0f;
      ws[kk][row] = (n0 + row < n && gk < k) ? w[(n0 + row) * k + gk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float af[4], wf[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        af[i] = as[kk][ty * 4 + i];
        wf[i] = ws[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(af[i], wf[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = m0 + ty * 4 + i;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = n0 + tx * 4 + j;
      if (col < n) out[row * n + col] = acc[i][j] + (bias ? bias[col] : 0.0f);
    }
  }
}

template <typename T>
__global__ void FillUniformKernel(T* __restrict__ x, int64_t n, float scale, uint64_t seed) {
  const int64_t groups = (n + 3) / 4;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Philox4 r =
        Philox4x32(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 0x5eedu, 0u,
                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t idx = g * 4 + i;
      if (idx < n) {
        const float u = static_cast<float>(r.v[i] >> 8) * (1.0f / 16777216.0f);
        x[idx] = FromFloat<T>(scale * (2.0f * u - 1.0f));
      }
    }
  }
}

template <typename T>
__global__ void FillConstantKernel(T* __restrict__ x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = FromFloat<T>(value);
  }
}

}  // namespace

template <typename T>
Status EmbedToFloat(const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t d,
                    float* x, cudaStream_t stream) {
  constexpr const char* kOp = "EmbedToFloat";
  if (n < 0 || vocab <= 0 || d <= 0) return ArgError(kOp, "need n >= 0, vocab > 0, d > 0");
  if (n > INT32_MAX) return ArgError(kOp, "n must be below 2^31");
  if (n == 0) return OkStatus();
  if (!ids || !table || !x) return ArgError(kOp, "null pointer");
  EmbedKernel<T><<<static_cast<unsigned>(n), NormThreads(d), 0, stream>>>(ids, table, vocab, d, x);
  return LaunchStatus(kOp);
}

template <typename T>
Status AddRmsNorm(float* x, const T* delta, const T* w, int64_t n, int64_t d, float eps, T* y,
                  cudaStream_t stream, bool programmatic) {
  constexpr const char* kOp = "AddRmsNorm";
  if (n < 0 || d <= 0) return ArgError(kOp, "need n >= 0 and d > 0");
  if (n > INT32_MAX) return ArgError(kOp, "n must be below 2^31");
  if (!(eps >= 0.0f)) return ArgError(kOp, "eps must be >= 0");
  if (n == 0) return OkStatus();
  if (!x || !w || !y) return ArgError(kOp, "null x, w or y");
  return CudaStatus(
      LaunchAddRmsNorm<T, false>(x, delta, nullptr, w, n, d, eps, y, stream, programmatic), kOp);
}

template <typename T>
Status GatherRmsNorm(const float* x, const int32_t* rows, const T* w, int64_t n, int64_t d,
                     float eps, T* y, cudaStream_t stream) {
  constexpr const char* kOp = "GatherRmsNorm";
  if (n < 0 || d <= 0) return ArgError(kOp, "need n >= 0 and d > 0");
  if (n > INT32_MAX) return ArgError(kOp, "n must be below 2^31");
  if (!(eps >= 0.0f)) return ArgError(kOp, "eps must be >= 0");
  if (n == 0) return OkStatus();
  if (!x || !rows || !w || !y) return ArgError(kOp, "null x, rows, w or y");
  // The kernel does not write x when gathering.
  return CudaStatus(LaunchAddRmsNorm<T, true>(const_cast<float*>(x), nullptr, rows, w, n, d, eps, y,
                                              stream, /*programmatic=*/false),
                    kOp);
}

template <typename T>
Status AddToFloat(float* x, const T* delta, int64_t n, cudaStream_t stream) {
  constexpr const char* kOp = "AddToFloat";
  if (n < 0) return ArgError(kOp, "n must be >= 0");
  if (n == 0) return OkStatus();
  if (!x || !delta) return ArgError(kOp, "null x or delta");
  AddToFloatKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(x, delta, n);
  return LaunchStatus(kOp);
}

template <typename T>
Status WritePagedKv(const T* src, int64_t src_row_stride, int64_t k_offset, int64_t v_offset,
                    const int32_t* slots, int64_t n, int kv_heads, int head_dim, T* pool_k,
                    T* pool_v, cudaStream_t stream) {
  constexpr const char* kOp = "WritePagedKv";
  if (n < 0 || kv_heads <= 0 || head_dim <= 0) {
    return ArgError(kOp, "need n >= 0, kv_heads > 0, head_dim > 0");
  }
  const int64_t width = static_cast<int64_t>(kv_heads) * head_dim;
  if (k_offset < 0 || v_offset < 0 || k_offset + width > src_row_stride ||
      v_offset + width > src_row_stride) {
    return ArgError(kOp,
                    "k or v columns [offset, offset + kv_heads * head_dim) exceed the row of " +
                        std::to_string(src_row_stride));
  }
  if (n == 0) return OkStatus();
  if (!src || !slots || !pool_k || !pool_v) return ArgError(kOp, "null pointer");
  WritePagedKvKernel<T><<<GridFor(n * width, kThreads), kThreads, 0, stream>>>(
      src, src_row_stride, k_offset, v_offset, slots, n, kv_heads, head_dim, pool_k, pool_v);
  return LaunchStatus(kOp);
}

template <typename T>
Status RopeWritePagedKv(T* qkv, int64_t row_stride, const int32_t* positions, const int32_t* slots,
                        int64_t n, int q_heads, int kv_heads, int head_dim, const float* inv_freq,
                        T* pool_k, T* pool_v, cudaStream_t stream) {
  constexpr const char* kOp = "RopeWritePagedKv";
  if (n < 0 || q_heads < 0 || kv_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0) {
    return ArgError(
        kOp, "need n >= 0, q_heads >= 0, kv_heads > 0 and an even head_dim > 0; got n=" +
                 std::to_string(n) + " q_heads=" + std::to_string(q_heads) +
                 " kv_heads=" + std::to_string(kv_heads) + " head_dim=" + std::to_string(head_dim));
  }
  const int64_t width = (static_cast<int64_t>(q_heads) + 2 * kv_heads) * head_dim;
  if (row_stride < width) {
    return ArgError(kOp, "row_stride " + std::to_string(row_stride) +
                             " < (q_heads + 2 * kv_heads) * head_dim = " + std::to_string(width));
  }
  if (n == 0) return OkStatus();
  if (!qkv || !positions || !slots || !inv_freq || !pool_k || !pool_v) {
    return ArgError(kOp, "null pointer");
  }
  const int64_t threads = n * (q_heads + kv_heads) * (head_dim / 2);
  RopeWritePagedKvKernel<T><<<GridFor(threads, kThreads), kThreads, 0, stream>>>(
      qkv, row_stride, positions, slots, n, q_heads, kv_heads, head_dim, inv_freq, pool_k, pool_v);
  return LaunchStatus(kOp);
}

template <typename T>
Status GatherPagedKv(const T* pool_k, const T* pool_v, const int32_t* block_table, int64_t n,
                     int kv_heads, int head_dim, T* k_out, T* v_out, cudaStream_t stream) {
  constexpr const char* kOp = "GatherPagedKv";
  if (n < 0 || kv_heads <= 0 || head_dim <= 0) {
    return ArgError(kOp, "need n >= 0, kv_heads > 0, head_dim > 0");
  }
  if (n == 0) return OkStatus();
  if (!pool_k || !pool_v || !block_table || !k_out || !v_out) return ArgError(kOp, "null pointer");
  const int64_t width = static_cast<int64_t>(kv_heads) * head_dim;
  GatherPagedKvKernel<T><<<GridFor(n * width, kThreads), kThreads, 0, stream>>>(
      pool_k, pool_v, block_table, n, kv_heads, head_dim, k_out, v_out);
  return LaunchStatus(kOp);
}

template <typename T>
Status PagedAttentionSimple(const PagedAttentionParams<T>& p, T* out, int64_t out_stride,
                            cudaStream_t stream) {
  constexpr const char* kOp = "PagedAttentionSimple";
  if (p.rows < 0) return ArgError(kOp, "rows must be >= 0");
  if (p.q_heads <= 0 || p.kv_heads <= 0 || p.q_heads % p.kv_heads != 0) {
    return ArgError(kOp, "kv_heads (" + std::to_string(p.kv_heads) +
                             ") must be positive and divide q_heads (" + std::to_string(p.q_heads) +
                             ")");
  }
  if (p.head_dim <= 0 || p.head_dim > 256) return ArgError(kOp, "head_dim must be in [1, 256]");
  if (!(p.scale > 0.0f)) return ArgError(kOp, "scale must be > 0");
  const int64_t width = static_cast<int64_t>(p.q_heads) * p.head_dim;
  if (p.q_stride < width || out_stride < width) {
    return ArgError(kOp, "q_stride and out_stride must be >= q_heads * head_dim");
  }
  if (p.rows == 0) return OkStatus();
  if (!p.q || !p.row_keys || !p.row_table || !p.block_ids || !p.pool_k || !p.pool_v || !out) {
    return ArgError(kOp, "null pointer");
  }
  const int64_t warps = p.rows * p.q_heads;
  const int64_t blocks = (warps + kAttnWarps - 1) / kAttnWarps;
  if (blocks > INT32_MAX) return ArgError(kOp, "too many rows");
  const unsigned grid = static_cast<unsigned>(blocks);
  const int threads = kAttnWarps * 32;
  if (p.head_dim <= 32) {
    PagedAttentionKernel<T, 1><<<grid, threads, 0, stream>>>(p, out, out_stride);
  } else if (p.head_dim <= 64) {
    PagedAttentionKernel<T, 2><<<grid, threads, 0, stream>>>(p, out, out_stride);
  } else if (p.head_dim <= 128) {
    PagedAttentionKernel<T, 4><<<grid, threads, 0, stream>>>(p, out, out_stride);
  } else {
    PagedAttentionKernel<T, 8><<<grid, threads, 0, stream>>>(p, out, out_stride);
  }
  return LaunchStatus(kOp);
}

Status MatMulTransBF32(const float* a, const float* w, const float* bias, int64_t m, int64_t n,
                       int64_t k, float* out, cudaStream_t stream) {
  constexpr const char* kOp = "MatMulTransBF32";
  if (m < 0 || n <= 0 || k <= 0) {
    return ArgError(kOp, "need m >= 0, n > 0, k > 0; got m=" + std::to_string(m) +
                             " n=" + std::to_string(n) + " k=" + std::to_string(k));
  }
  const int64_t grid_y = (m + kTile - 1) / kTile, grid_x = (n + kTile - 1) / kTile;
  if (grid_y > 65535 || grid_x > INT32_MAX) return ArgError(kOp, "m or n too large");
  if (m == 0) return OkStatus();
  if (!a || !w || !out) return ArgError(kOp, "null a, w or out");
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  MatMulF32Kernel<<<grid, 256, 0, stream>>>(a, w, bias, m, n, k, out);
  return LaunchStatus(kOp);
}

template <typename T>
Status FillUniform(T* x, int64_t n, float scale, uint64_t seed, cudaStream_t stream) {
  constexpr const char* kOp = "FillUniform";
  if (n < 0) return ArgError(kOp, "n must be >= 0");
  if (n == 0) return OkStatus();
  if (!x) return ArgError(kOp, "null x");
  FillUniformKernel<T><<<GridFor((n + 3) / 4, kThreads), kThreads, 0, stream>>>(x, n, scale, seed);
  return LaunchStatus(kOp);
}

template <typename T>
Status FillConstant(T* x, int64_t n, float value, cudaStream_t stream) {
  constexpr const char* kOp = "FillConstant";
  if (n < 0) return ArgError(kOp, "n must be >= 0");
  if (n == 0) return OkStatus();
  if (!x) return ArgError(kOp, "null x");
  FillConstantKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(x, n, value);
  return LaunchStatus(kOp);
}

#define SQZ_INSTANTIATE_MODEL_OPS(T)                                                              \
  template Status EmbedToFloat<T>(const int32_t*, const T*, int64_t, int64_t, int64_t, float*,    \
                                  cudaStream_t);                                                  \
  template Status AddRmsNorm<T>(float*, const T*, const T*, int64_t, int64_t, float, T*,          \
                                cudaStream_t, bool);                                              \
  template Status RopeWritePagedKv<T>(T*, int64_t, const int32_t*, const int32_t*, int64_t, int,  \
                                      int, int, const float*, T*, T*, cudaStream_t);              \
  template Status GatherRmsNorm<T>(const float*, const int32_t*, const T*, int64_t, int64_t,      \
                                   float, T*, cudaStream_t);                                      \
  template Status AddToFloat<T>(float*, const T*, int64_t, cudaStream_t);                         \
  template Status WritePagedKv<T>(const T*, int64_t, int64_t, int64_t, const int32_t*, int64_t,   \
                                  int, int, T*, T*, cudaStream_t);                                \
  template Status GatherPagedKv<T>(const T*, const T*, const int32_t*, int64_t, int, int, T*, T*, \
                                   cudaStream_t);                                                 \
  template Status PagedAttentionSimple<T>(const PagedAttentionParams<T>&, T*, int64_t,            \
                                          cudaStream_t);                                          \
  template Status FillUniform<T>(T*, int64_t, float, uint64_t, cudaStream_t);                     \
  template Status FillConstant<T>(T*, int64_t, float, cudaStream_t);

SQZ_INSTANTIATE_MODEL_OPS(float)
SQZ_INSTANTIATE_MODEL_OPS(__nv_bfloat16)
#undef SQZ_INSTANTIATE_MODEL_OPS

}  // namespace sqz::cuda
