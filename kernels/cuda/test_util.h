// Helpers for the CUDA kernel tests (not part of sqz_kernels_cuda): skipping without a device,
// RAII device buffers, seeded random data, bf16 rounding on the host and error norms.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "common/check.h"

namespace sqz::cuda::testing {

// True when a CUDA device can be used; otherwise *why says why (no driver, no device).
bool CudaAvailable(std::string* why);

// Aborts the test with the CUDA error string when `expr` fails (test code only).
#define SQZ_TEST_CUDA(expr)                                                              \
  do {                                                                                   \
    const cudaError_t sqz_err_ = (expr);                                                 \
    SQZ_CHECK(sqz_err_ == cudaSuccess) << #expr << ": " << cudaGetErrorString(sqz_err_); \
  } while (0)

// Owns n elements of device memory; filled with 0xFF bytes (NaN for float and bf16) at creation
// so unwritten outputs show up.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0) {
      SQZ_TEST_CUDA(cudaMalloc(reinterpret_cast<void**>(&ptr_), n_ * sizeof(T)));
      Poison();
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void Poison() {
    if (n_ > 0) SQZ_TEST_CUDA(cudaMemset(ptr_, 0xFF, n_ * sizeof(T)));
  }
  void Upload(const std::vector<T>& host) {
    SQZ_CHECK_EQ(host.size(), n_);
    if (n_ > 0)
      SQZ_TEST_CUDA(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    SQZ_TEST_CUDA(cudaDeviceSynchronize());
    if (n_ > 0)
      SQZ_TEST_CUDA(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  size_t n_ = 0;
  T* ptr_ = nullptr;
};

// n normal(0, stddev) floats from a generator seeded with `seed`.
std::vector<float> RandomFloats(size_t n, uint32_t seed, float stddev = 1.0f);

// Host conversions; RoundBf16 rounds a float to the nearest bf16 value (ties to even).
std::vector<__nv_bfloat16> ToBf16(const std::vector<float>& x);
std::vector<float> ToFloat(const std::vector<__nv_bfloat16>& x);
std::vector<float> RoundBf16(const std::vector<float>& x);
inline std::vector<float> ToFloat(const std::vector<float>& x) { return x; }

// The values a T buffer (float or bf16) holds for the given floats: x itself, or rounded to bf16.
template <typename T>
std::vector<T> Make(const std::vector<float>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return ToBf16(x);
  }
}
// What a T buffer made from x reads back as (x, or x rounded to bf16), for the CPU reference.
template <typename T>
std::vector<float> Seen(const std::vector<float>& x) {
  return ToFloat(Make<T>(x));
}

// Captures what `record` enqueues on `stream` into a CUDA graph, runs `prepare` (e.g. resets the
// outputs; the device is synchronised after it), replays the graph once and waits for it.
void CaptureAndReplay(cudaStream_t stream, const std::function<void()>& record,
                      const std::function<void()>& prepare = {});

// ||a - b|| / max(||b||, tiny); +inf if any value of a is NaN or a and b differ in size.
double RelativeL2(const std::vector<float>& a, const std::vector<float>& b);
// Largest |a_i - b_i|; +inf on NaN.
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace sqz::cuda::testing

// Use at the top of every TEST_CASE that needs a GPU.
#define SQZ_REQUIRE_CUDA_OR_SKIP()                         \
  do {                                                     \
    std::string sqz_why_;                                  \
    if (!::sqz::cuda::testing::CudaAvailable(&sqz_why_)) { \
      WARN("skipped: " << sqz_why_);                       \
      return;                                              \
    }                                                      \
  } while (0)
