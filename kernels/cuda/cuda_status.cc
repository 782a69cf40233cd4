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

Status CheckHeadGroups(std::string_view op, int n_q_heads, int n_kv_heads, int max_group) {
  if (n_q_heads <= 0 || n_kv_heads <= 0 || n_kv_heads > 65535 || n_q_heads % n_kv_heads != 0) {
    return ArgError(op, "n_kv_heads (" + std::to_string(n_kv_heads) +
                            ") must be positive and divide n_q_heads (" +
                            std::to_string(n_q_heads) + ")");
  }
  if (n_q_heads / n_kv_heads > max_group) {
    return UnsupportedError(op,
                            "n_q_heads / n_kv_heads = " + std::to_string(n_q_heads / n_kv_heads) +
                                " exceeds the compiled maximum " + std::to_string(max_group));
  }
  return OkStatus();
}

}  // namespace sqz::cuda
