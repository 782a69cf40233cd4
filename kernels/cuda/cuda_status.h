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

}  // namespace sqz::cuda

// Returns from the enclosing function with an INTERNAL Status if `expr` (a cudaError_t) fails.
#define SQZ_CUDA_RETURN_IF_ERROR(expr, op)                                  \
  do {                                                                      \
    ::sqz::Status sqz_cuda_status_ = ::sqz::cuda::CudaStatus((expr), (op)); \
    if (!sqz_cuda_status_.ok()) return sqz_cuda_status_;                    \
  } while (0)
