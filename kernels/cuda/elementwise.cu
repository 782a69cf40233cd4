#include <cmath>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/elementwise.h"

namespace sqz::cuda {
namespace {

using internal::FromFloat;
using internal::GridFor;
using internal::ToFloat;

constexpr int kThreads = 256;

template <typename T>
__global__ void EmbeddingKernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                int64_t n, int64_t vocab, int64_t d, T* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  T* dst = out + row * d;
  if (id < 0 || id >= vocab) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = FromFloat<T>(NAN);
    return;
  }
  const T* src = table + static_cast<int64_t>(id) * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = src[j];
}

template <typename T>
__global__ void RmsNormKernel(const T* __restrict__ x, const T* __restrict__ w, int64_t d,
                              float eps, T* y) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * d;
  T* yr = y + blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = ToFloat(xr[j]);
    ss = fmaf(v, v, ss);
  }
  ss = internal::BlockSum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  // y may alias x: each element is read before it is written, by the same thread.
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    yr[j] = FromFloat<T>(ToFloat(xr[j]) * inv * ToFloat(w[j]));
  }
}

template <typename T>
__global__ void RopeKernel(T* x, const int32_t* __restrict__ positions, int64_t n, int64_t heads,
                           int64_t d, int64_t row_stride, const float* __restrict__ inv_freq) {
  const int64_t half = d / 2;
  const int64_t total = n * heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t h = (idx / half) % heads;
    const int64_t t = idx / (half * heads);
    T r0, r1;
    internal::RotatePair(x + t * row_stride + h * d, i, half, static_cast<float>(positions[t]),
                         inv_freq[i], &r0, &r1);
  }
}

template <typename T>
__global__ void SiluMulKernel(const T* gate, const T* up, int64_t n, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = FromFloat<T>(internal::Silu(ToFloat(gate[i])) * ToFloat(up[i]));
  }
}

template <typename T>
__global__ void SwiGluKernel(const T* __restrict__ gate_up, int64_t rows, int64_t cols,
                             T* __restrict__ out) {
  internal::AllowDependentLaunch();  // a PDL-launched Gemv after it may start its weight loads
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, j = i % cols;
    const T* row = gate_up + r * 2 * cols;
    out[i] = FromFloat<T>(internal::Silu(ToFloat(row[j])) * ToFloat(row[cols + j]));
  }
}

template <typename T>
__global__ void AddKernel(T* x, const T* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = FromFloat<T>(ToFloat(x[i]) + ToFloat(y[i]));
  }
}

template <typename Src, typename Dst>
__global__ void ConvertKernel(const Src* __restrict__ src, int64_t n, Dst* __restrict__ dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = FromFloat<Dst>(ToFloat(src[i]));
  }
}

Status CheckCount(const char* op, int64_t n) {
  if (n < 0) return ArgError(op, "negative element count " + std::to_string(n));
  return OkStatus();
}

}  // namespace

template <typename T>
Status EmbeddingLookup(const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t d,
                       T* out, cudaStream_t stream) {
  constexpr const char* kOp = "EmbeddingLookup";
  if (n < 0 || vocab <= 0 || d <= 0) {
    return ArgError(kOp, "need n >= 0, vocab > 0, d > 0; got n=" + std::to_string(n) +
                             " vocab=" + std::to_string(vocab) + " d=" + std::to_string(d));
  }
  if (n > INT32_MAX) return ArgError(kOp, "n exceeds 2^31 - 1");
  if (n == 0) return OkStatus();
  if (!ids || !table || !out) return ArgError(kOp, "null pointer");
  EmbeddingKernel<T><<<static_cast<unsigned>(n), 128, 0, stream>>>(ids, table, n, vocab, d, out);
  return LaunchStatus(kOp);
}

template <typename T>
Status RmsNorm(const T* x, const T* w, int64_t n, int64_t d, float eps, T* y, cudaStream_t stream) {
  constexpr const char* kOp = "RmsNorm";
  if (n < 0 || d <= 0) {
    return ArgError(
        kOp, "need n >= 0 and d > 0; got n=" + std::to_string(n) + " d=" + std::to_string(d));
  }
  if (!(eps >= 0.0f)) return ArgError(kOp, "eps must be >= 0");
  if (n > INT32_MAX) return ArgError(kOp, "n exceeds 2^31 - 1");
  if (n == 0) return OkStatus();
  if (!x || !w || !y) return ArgError(kOp, "null pointer");
  const int threads = d >= 1024 ? 1024 : (d >= 256 ? 256 : 64);
  RmsNormKernel<T><<<static_cast<unsigned>(n), threads, 0, stream>>>(x, w, d, eps, y);
  return LaunchStatus(kOp);
}

template <typename T>
Status ApplyRope(T* x, const int32_t* positions, int64_t n, int64_t heads, int64_t d,
                 int64_t row_stride, const float* inv_freq, cudaStream_t stream) {
  constexpr const char* kOp = "ApplyRope";
  if (n < 0 || heads <= 0 || d <= 0 || d % 2 != 0) {
    return ArgError(kOp, "need n >= 0, heads > 0 and an even d > 0; got n=" + std::to_string(n) +
                             " heads=" + std::to_string(heads) + " d=" + std::to_string(d));
  }
  if (row_stride < heads * d) {
    return ArgError(kOp, "row_stride " + std::to_string(row_stride) +
                             " < heads * d = " + std::to_string(heads * d));
  }
  if (n == 0) return OkStatus();
  if (!x || !positions || !inv_freq) return ArgError(kOp, "null pointer");
  RopeKernel<T><<<GridFor(n * heads * d / 2, kThreads), kThreads, 0, stream>>>(
      x, positions, n, heads, d, row_stride, inv_freq);
  return LaunchStatus(kOp);
}

template <typename T>
Status SiluMul(const T* gate, const T* up, int64_t n, T* out, cudaStream_t stream) {
  constexpr const char* kOp = "SiluMul";
  SQZ_RETURN_IF_ERROR(CheckCount(kOp, n));
  if (n == 0) return OkStatus();
  if (!gate || !up || !out) return ArgError(kOp, "null pointer");
  SiluMulKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(gate, up, n, out);
  return LaunchStatus(kOp);
}

template <typename T>
Status SwiGlu(const T* gate_up, int64_t rows, int64_t cols, T* out, cudaStream_t stream) {
  constexpr const char* kOp = "SwiGlu";
  if (rows < 0 || cols <= 0) {
    return ArgError(kOp, "need rows >= 0 and cols > 0; got rows=" + std::to_string(rows) +
                             " cols=" + std::to_string(cols));
  }
  if (rows == 0) return OkStatus();
  if (!gate_up || !out) return ArgError(kOp, "null pointer");
  SwiGluKernel<T>
      <<<GridFor(rows * cols, kThreads), kThreads, 0, stream>>>(gate_up, rows, cols, out);
  return LaunchStatus(kOp);
}

template <typename T>
Status AddInPlace(T* x, const T* y, int64_t n, cudaStream_t stream) {
  constexpr const char* kOp = "AddInPlace";
  SQZ_RETURN_IF_ERROR(CheckCount(kOp, n));
  if (n == 0) return OkStatus();
  if (!x || !y) return ArgError(kOp, "null pointer");
  AddKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(x, y, n);
  return LaunchStatus(kOp);
}

template <typename Src, typename Dst>
Status Convert(const Src* src, int64_t n, Dst* dst, cudaStream_t stream) {
  constexpr const char* kOp = "Convert";
  SQZ_RETURN_IF_ERROR(CheckCount(kOp, n));
  if (n == 0) return OkStatus();
  if (!src || !dst) return ArgError(kOp, "null pointer");
  ConvertKernel<Src, Dst><<<GridFor(n, kThreads), kThreads, 0, stream>>>(src, n, dst);
  return LaunchStatus(kOp);
}

#define SQZ_INSTANTIATE_ELEMENTWISE(T)                                                        \
  template Status EmbeddingLookup<T>(const int32_t*, const T*, int64_t, int64_t, int64_t, T*, \
                                     cudaStream_t);                                           \
  template Status RmsNorm<T>(const T*, const T*, int64_t, int64_t, float, T*, cudaStream_t);  \
  template Status ApplyRope<T>(T*, const int32_t*, int64_t, int64_t, int64_t, int64_t,        \
                               const float*, cudaStream_t);                                   \
  template Status SiluMul<T>(const T*, const T*, int64_t, T*, cudaStream_t);                  \
  template Status SwiGlu<T>(const T*, int64_t, int64_t, T*, cudaStream_t);                    \
  template Status AddInPlace<T>(T*, const T*, int64_t, cudaStream_t);

SQZ_INSTANTIATE_ELEMENTWISE(float)
SQZ_INSTANTIATE_ELEMENTWISE(bf16)
template Status Convert<float, bf16>(const float*, int64_t, bf16*, cudaStream_t);
template Status Convert<bf16, float>(const bf16*, int64_t, float*, cudaStream_t);
template Status Convert<float, float>(const float*, int64_t, float*, cudaStream_t);
template Status Convert<bf16, bf16>(const bf16*, int64_t, bf16*, cudaStream_t);

}  // namespace sqz::cuda
