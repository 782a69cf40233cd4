// Gemm: the linear layers' matrix product through cuBLASLt, bf16 inputs, fp32 accumulation, bf16 or
// fp32 output:
//   out[m][n] = sum_k a[m][k] * w[n][k] (+ bias[n])
// a: [m][k] activations, w: [n][k] a Hugging Face Linear weight ([out_features][in_features]),
// bias: [n] of the output type or nullptr, out: [m][n]. All row-major, device memory, caller-owned.
//
// Ownership: Gemm owns its cuBLASLt handle and the descriptors and algorithm it chose per shape
// (cached on first use of a shape: allocation-free afterwards). It owns no device memory: the
// workspace is passed in (kRecommendedWorkspaceBytes is what Hopper kernels want; less, even 0,
// is allowed and may pick slower algorithms).
// Thread safety: not thread-safe (the shape cache); use one Gemm per thread or stream.
// Numerics: cuBLASLt may pick a different algorithm for another m, so a row's result can differ by
// rounding between batch sizes (unlike cpu::MatMulTransB, which is batch invariant).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/status.h"

namespace sqz::cuda {

class Gemm {
 public:
  static constexpr size_t kRecommendedWorkspaceBytes = 32u << 20;

  // Creates the cuBLASLt handle; INTERNAL if that fails (no device, no driver).
  static StatusOr<std::unique_ptr<Gemm>> Create();

  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Enqueues out = a * w^T (+ bias) on stream. TOut is float or __nv_bfloat16. m, n, k >= 1
  // (m == 0 is a no-op). INVALID_ARGUMENT for bad shapes or pointers, UNIMPLEMENTED when cuBLASLt
  // offers no algorithm for the shape and alignment, INTERNAL when it fails.
  // workspace: [workspace_bytes] device bytes, 16-byte aligned, or nullptr with 0.
  template <typename TOut>
  Status MatMulTransB(const __nv_bfloat16* a, const __nv_bfloat16* w, const TOut* bias, int64_t m,
                      int64_t n, int64_t k, TOut* out, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);

  // Number of distinct shapes whose plan is cached (for tests).
  size_t cached_plans() const;

 private:
  struct Impl;
  explicit Gemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sqz::cuda
