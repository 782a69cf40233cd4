// Turning CUDA and cuBLASLt error codes into sqz::Status, and the argument checks every launcher
// shares. Kernels return a Status naming the op; the engine adds its own context on top.
//
// Thread safety: free functions without state.
#pragma once

#include <cuda_runtime_api.h>

#include <string_view>

#include "common/status.h"

namespace sqz::cuda {

// OK when err == cudaSuccess, else INTERNAL "op: cudaErrorName: description".
Status CudaStatus(cudaError_t err, std::string_view op);

// The status of the last kernel launch on this thread (cudaGetLastError), named after op.
Status LaunchStatus(std::string_view op);

// INVALID_ARGUMENT "op: message".
Status ArgError(std::string_view op, std::string_view message);

// UNIMPLEMENTED "op: message": a valid shape for which no kernel instance is compiled.
Status UnsupportedError(std::string_view op, std::string_view message);

// The GQA head check of the launchers that put kv heads on a grid dimension: INVALID_ARGUMENT
// unless 0 < n_kv_heads <= 65535 divides n_q_heads > 0; UNIMPLEMENTED when the group
// n_q_heads / n_kv_heads exceeds max_group (the largest compiled).
Status CheckHeadGroups(std::string_view op, int n_q_heads, int n_kv_heads, int max_group);

}  // namespace sqz::cuda

// Returns from the enclosing function with an INTERNAL Status if `expr` (a cudaError_t) fails.
#define SQZ_CUDA_RETURN_IF_ERROR(expr, op)                                  \
  do {                                                                      \
    ::sqz::Status sqz_cuda_status_ = ::sqz::cuda::CudaStatus((expr), (op)); \
    if (!sqz_cuda_status_.ok()) return sqz_cuda_status_;                    \
  } while (0)
