#include "kernels/cuda/cuda_status.h"

#include <string>

namespace sqz::cuda {

Status CudaStatus(cudaError_t err, std::string_view op) {
  if (err == cudaSuccess) return OkStatus();
  std::string message(op);
  message += ": ";
  message += cudaGetErrorName(err);
  message += ": ";
  message += cudaGetErrorString(err);
  return InternalError(std::move(message));
}

Status LaunchStatus(std::string_view op) { return CudaStatus(cudaGetLastError(), op); }

Status ArgError(std::string_view op, std::string_view message) {
  return InvalidArgumentError(std::string(op) + ": " + std::string(message));
}

Status UnsupportedError(std::string_view op, std::string_view message) {
  return UnimplementedError(std::string(op) + ": " + std::string(message));
}

}  // namespace sqz::cuda
