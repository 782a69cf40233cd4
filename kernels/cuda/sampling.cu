#include <climits>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/philox.h"
#include "kernels/cuda/sampling.h"

namespace sqz::cuda {

using bf16 = __nv_bfloat16;
namespace {

using internal::ToFloat;

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ void Better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

// Block argmax of row x[0, vocab); every thread gets (value, index); index INT_MAX if all NaN.
template <typename T>
__device__ void BlockArgMax(const T* x, int64_t vocab, float* out_v, int* out_i) {
  __shared__ float sv[kWarps];
  __shared__ int si[kWarps];
  float v = -INFINITY;
  int idx = INT_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    Better(v, idx, ToFloat(x[i]), static_cast<int>(i));
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Better(v, idx, __shfl_xor_sync(0xffffffffu, v, off), __shfl_xor_sync(0xffffffffu, idx, off));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = idx;
  }
  __syncthreads();
  v = lane < warps ? sv[lane] : -INFINITY;
  idx = lane < warps ? si[lane] : INT_MAX;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Better(v, idx, __shfl_xor_sync(0xffffffffu, v, off), __shfl_xor_sync(0xffffffffu, idx, off));
  }
  *out_v = v;
  *out_i = idx;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    ArgMaxKernel(const T* __restrict__ logits, int64_t vocab, int64_t row_stride,
                 int32_t* __restrict__ ids) {
  float v;
  int idx;
  BlockArgMax(logits + blockIdx.x * row_stride, vocab, &v, &idx);
  if (threadIdx.x == 0) ids[blockIdx.x] = idx == INT_MAX ? 0 : idx;
}

__device__ __forceinline__ uint64_t WeightOf(float p) {
  return static_cast<uint64_t>(__float2ull_rz(p * 4294967296.0f));
}

__device__ uint64_t BlockSumU64(uint64_t v, uint64_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kWarps ? scratch[lane] : 0;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Exclusive prefix sum over the block in thread order.
__device__ uint64_t BlockExclusiveScanU64(uint64_t v, uint64_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t incl = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint64_t o = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += o;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    uint64_t t = scratch[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const uint64_t o = __shfl_up_sync(0xffffffffu, t, off);
      if (lane >= off) t += o;
    }
    scratch[lane] = t;  // inclusive totals per warp
  }
  __syncthreads();
  const uint64_t warp_base = warp > 0 ? scratch[warp - 1] : 0;
  return warp_base + incl - v;
}

// Shared scratch of the radix selections.
struct RadixShared {
  uint64_t hist[256];
  uint32_t choice_digit;
  uint64_t choice_rem;
};

// Given bins hist[0..255] (by digit), finds from the top the digit d where the running sum
// (digits > d, then d) first reaches rem; stores d and rem minus the sum of digits above d.
// Runs on warp 0; the caller syncs.
__device__ void PickDigitFromTop(RadixShared& sh, uint64_t rem) {
  const int lane = threadIdx.x & 31;
  // Lane l owns digits 255 - 8l down to 248 - 8l.
  uint64_t local = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) local += sh.hist[255 - 8 * lane - k];
  uint64_t incl = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint64_t o = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += o;
  }
  const uint64_t excl = incl - local;
  const unsigned hit = __ballot_sync(0xffffffffu, incl >= rem);
  const int first = hit ? __ffs(hit) - 1 : 31;
  if (lane == first) {
    uint64_t cum = excl;
    int d = 248 - 8 * lane;
    for (int k = 0; k < 8; ++k) {
      const int digit = 255 - 8 * lane - k;
      if (cum + sh.hist[digit] >= rem) {
        d = digit;
        break;
      }
      cum += sh.hist[digit];
    }
    sh.choice_digit = static_cast<uint32_t>(d);
    sh.choice_rem = rem - cum;
  }
}

// The largest key t with  sum over {i : key_i >= t, key_i >= floor_key} of (kMass ? w_i : 1)
// >= need (need >= 1 and reachable). keys are the bit patterns of p (p >= 0 orders like uint).
template <bool kMass>
__device__ uint32_t RadixSelect(const float* p, int64_t vocab, uint32_t floor_key, uint64_t need,
                                RadixShared& sh) {
  uint32_t prefix = 0, mask = 0;
  uint64_t rem = need;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float pi = p[i];
      const uint32_t key = __float_as_uint(pi);
      if ((key & mask) == prefix && key >= floor_key) {
        const uint32_t digit = (key >> shift) & 255u;
        if (kMass) {
          atomicAdd(reinterpret_cast<unsigned long long*>(&sh.hist[digit]),
                    static_cast<unsigned long long>(WeightOf(pi)));
        } else {
          atomicAdd(reinterpret_cast<unsigned long long*>(&sh.hist[digit]), 1ull);
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) PickDigitFromTop(sh, rem);
    __syncthreads();
    prefix |= sh.choice_digit << shift;
    mask |= 255u << shift;
    rem = sh.choice_rem;
    __syncthreads();
  }
  return prefix;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    SampleKernel(const T* __restrict__ logits, int64_t vocab, int64_t row_stride, SamplingParams sp,
                 int32_t* __restrict__ ids, float* __restrict__ ws) {
  __shared__ RadixShared sh;
  __shared__ uint64_t scratch[kWarps];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * row_stride;
  float* p = ws + row * vocab;

  float top;
  int top_idx;
  BlockArgMax(x, vocab, &top, &top_idx);
  const float temperature = sp.temperature[row];
  if (!(temperature > 0.0f) || !isfinite(top)) {
    if (threadIdx.x == 0) ids[row] = top_idx == INT_MAX ? 0 : top_idx;
    return;
  }
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float e = expf((ToFloat(x[i]) - top) / temperature);
    p[i] = e >= 0.0f ? e : 0.0f;  // NaN logits weigh nothing
  }
  __syncthreads();

  uint32_t threshold = 0;
  const int32_t top_k = sp.top_k ? sp.top_k[row] : 0;
  if (top_k > 0 && top_k < vocab) {
    threshold = RadixSelect<false>(p, vocab, 0u, static_cast<uint64_t>(top_k), sh);
  }
  const float top_p = sp.top_p ? sp.top_p[row] : 1.0f;
  if (top_p > 0.0f && top_p < 1.0f) {
    uint64_t mass = 0;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (__float_as_uint(p[i]) >= threshold) mass += WeightOf(p[i]);
    }
    mass = BlockSumU64(mass, scratch);
    const uint64_t need = static_cast<uint64_t>(ceil(static_cast<double>(top_p) * mass));
    if (need >= 1) threshold = max(threshold, RadixSelect<true>(p, vocab, threshold, need, sh));
  }
  const float min_p = sp.min_p ? sp.min_p[row] : 0.0f;
  if (min_p > 0.0f) threshold = max(threshold, __float_as_uint(fminf(min_p, 1.0f)));

  // Draw: the smallest index whose running kept mass exceeds target.
  const int64_t seg = (vocab + blockDim.x - 1) / blockDim.x;
  const int64_t lo = min(static_cast<long long>(threadIdx.x * seg), static_cast<long long>(vocab));
  const int64_t hi = min(static_cast<long long>(lo + seg), static_cast<long long>(vocab));
  uint64_t mine = 0;
  for (int64_t i = lo; i < hi; ++i) {
    if (__float_as_uint(p[i]) >= threshold) mine += WeightOf(p[i]);
  }
  const uint64_t total = BlockSumU64(mine, scratch);
  const uint64_t before = BlockExclusiveScanU64(mine, scratch);
  const double u = PhiloxUniform(sp.seed[row], sp.counter[row]);
  uint64_t target = static_cast<uint64_t>(u * static_cast<double>(total));
  if (target >= total) target = total - 1;  // total >= 2^32: the top token (p = 1) is kept
  if (before <= target && target < before + mine) {
    uint64_t cum = before;
    for (int64_t i = lo; i < hi; ++i) {
      if (__float_as_uint(p[i]) < threshold) continue;
      cum += WeightOf(p[i]);
      if (cum > target) {
        ids[row] = static_cast<int32_t>(i);
        break;
      }
    }
  }
}

Status CheckRows(const char* op, const void* logits, int64_t batch, int64_t vocab,
                 int64_t row_stride, const int32_t* ids) {
  if (batch < 0 || batch > INT32_MAX) return ArgError(op, "batch must be in [0, 2^31)");
  if (vocab <= 0 || vocab > INT32_MAX) return ArgError(op, "vocab must be in [1, 2^31)");
  if (row_stride < vocab) return ArgError(op, "row_stride must be >= vocab");
  if (batch > 0 && (!logits || !ids)) return ArgError(op, "null logits or ids");
  return OkStatus();
}

}  // namespace

size_t SamplingWorkspaceBytes(int64_t batch, int64_t vocab) {
  return static_cast<size_t>(batch) * static_cast<size_t>(vocab) * sizeof(float);
}

template <typename T>
Status ArgMax(const T* logits, int64_t batch, int64_t vocab, int64_t row_stride, int32_t* ids,
              cudaStream_t stream) {
  SQZ_RETURN_IF_ERROR(CheckRows("ArgMax", logits, batch, vocab, row_stride, ids));
  if (batch == 0) return OkStatus();
  ArgMaxKernel<T>
      <<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(logits, vocab, row_stride, ids);
  return LaunchStatus("ArgMax");
}

template <typename T>
Status Sample(const T* logits, int64_t batch, int64_t vocab, int64_t row_stride,
              const SamplingParams& params, int32_t* ids, void* workspace, size_t workspace_bytes,
              cudaStream_t stream) {
  constexpr const char* kOp = "Sample";
  SQZ_RETURN_IF_ERROR(CheckRows(kOp, logits, batch, vocab, row_stride, ids));
  if (batch == 0) return OkStatus();
  if (!params.temperature || !params.seed || !params.counter) {
    return ArgError(kOp, "temperature, seed and counter arrays are required");
  }
  if (workspace_bytes < SamplingWorkspaceBytes(batch, vocab) || !workspace ||
      reinterpret_cast<uintptr_t>(workspace) % 4 != 0) {
    return ArgError(kOp, "workspace needs " + std::to_string(SamplingWorkspaceBytes(batch, vocab)) +
                             " bytes, 4-byte aligned; got " + std::to_string(workspace_bytes));
  }
  SampleKernel<T><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
      logits, vocab, row_stride, params, ids, static_cast<float*>(workspace));
  return LaunchStatus(kOp);
}

template Status ArgMax<float>(const float*, int64_t, int64_t, int64_t, int32_t*, cudaStream_t);
template Status ArgMax<bf16>(const bf16*, int64_t, int64_t, int64_t, int32_t*, cudaStream_t);
template Status Sample<float>(const float*, int64_t, int64_t, int64_t, const SamplingParams&,
                              int32_t*, void*, size_t, cudaStream_t);
template Status Sample<bf16>(const bf16*, int64_t, int64_t, int64_t, const SamplingParams&,
                             int32_t*, void*, size_t, cudaStream_t);

}  // namespace sqz::cuda
