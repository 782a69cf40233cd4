#include "kernels/cuda/test_util.h"

#include <cmath>
#include <limits>

namespace sqz::cuda::testing {

bool CudaAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    *why = std::string("no usable CUDA device (") + cudaGetErrorName(err) + ": " +
           cudaGetErrorString(err) + ")";
    cudaGetLastError();  // clear it
    return false;
  }
  if (count == 0) {
    *why = "no CUDA device";
    return false;
  }
  return true;
}

std::vector<float> RandomFloats(size_t n, uint32_t seed, float stddev) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(n);
  for (float& v : x) v = dist(gen);
  return x;
}

std::vector<__nv_bfloat16> ToBf16(const std::vector<float>& x) {
  std::vector<__nv_bfloat16> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = __float2bfloat16_rn(x[i]);
  return y;
}

std::vector<float> ToFloat(const std::vector<__nv_bfloat16>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = __bfloat162float(x[i]);
  return y;
}

std::vector<float> RoundBf16(const std::vector<float>& x) { return ToFloat(ToBf16(x)); }

double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return std::numeric_limits<double>::infinity();
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    if (!std::isnan(a[i])) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return m;
}

void CaptureAndReplay(cudaStream_t stream, const std::function<void()>& record,
                      const std::function<void()>& prepare) {
  SQZ_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  record();
  cudaGraph_t graph = nullptr;
  SQZ_TEST_CUDA(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  SQZ_TEST_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  if (prepare) prepare();
  SQZ_TEST_CUDA(cudaDeviceSynchronize());
  SQZ_TEST_CUDA(cudaGraphLaunch(exec, stream));
  SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
  SQZ_TEST_CUDA(cudaGraphExecDestroy(exec));
  SQZ_TEST_CUDA(cudaGraphDestroy(graph));
}

}  // namespace sqz::cuda::testing
