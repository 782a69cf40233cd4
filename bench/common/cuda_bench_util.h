// Small helpers shared by the CUDA benchmark programs (bench/*): fail-fast checks, an owning
// device allocation, the median and `--name value` integer flags. Benchmarks are programs, not
// tests: on any error they print where and exit(1). Header-only; host code (no kernels).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/status.h"

// Exits with file:line and the CUDA error when `expr` (a cudaError_t) fails.
#define BENCH_CHECK_CUDA(expr)                                                                   \
  do {                                                                                           \
    const cudaError_t e_ = (expr);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// Exits with file:line and the status when `expr` (a sqz::Status) is not OK.
#define BENCH_CHECK_OK(expr)                                                         \
  do {                                                                               \
    const ::sqz::Status s_ = (expr);                                                 \
    if (!s_.ok()) {                                                                  \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

namespace sqz::bench {

// `bytes` of device memory (at least 256, so that empty cases still get a valid, aligned pointer),
// freed at scope exit.
struct DeviceMem {
  explicit DeviceMem(size_t n) : bytes(n) {
    BENCH_CHECK_CUDA(cudaMalloc(&ptr, std::max<size_t>(n, 256)));
  }
  ~DeviceMem() { cudaFree(ptr); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
  void* ptr = nullptr;
  size_t bytes = 0;
};

// The upper median of v (0 for an empty v).
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// The integer after `name` on the command line (e.g. --layers 32), or `def`.
inline int64_t IntArg(int argc, char** argv, const char* name, int64_t def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
  }
  return def;
}

}  // namespace sqz::bench
