#include "kernels/cuda/gemm.h"

#include <cublasLt.h>

#include <map>
#include <string>
#include <tuple>
#include <type_traits>

#include "kernels/cuda/cuda_status.h"

namespace sqz::cuda {
namespace {

constexpr const char* kOp = "Gemm::MatMulTransB";

Status LtStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return OkStatus();
  return InternalError(std::string(kOp) + ": " + what + ": " + cublasLtGetStatusName(s) + ": " +
                       cublasLtGetStatusString(s));
}

#define SQZ_LT_RETURN_IF_ERROR(expr, what) SQZ_RETURN_IF_ERROR(LtStatus((expr), (what)))

// Largest power of two <= 256 dividing the address (cuBLASLt's alignment preference unit).
uint32_t AlignmentOf(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && addr % a != 0) a /= 2;
  return a;
}

// One cached plan: descriptors and the chosen algorithm for a shape.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a_layout = nullptr;  // w: k x n column-major (ld k), used transposed
  cublasLtMatrixLayout_t b_layout = nullptr;  // a: k x m column-major (ld k)
  cublasLtMatrixLayout_t c_layout = nullptr;  // out: n x m column-major (ld n)
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c_layout) cublasLtMatrixLayoutDestroy(c_layout);
    if (b_layout) cublasLtMatrixLayoutDestroy(b_layout);
    if (a_layout) cublasLtMatrixLayoutDestroy(a_layout);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// m, n, k, output type, bias present, workspace bytes, alignments of a, w, out, bias.
using PlanKey = std::tuple<int64_t, int64_t, int64_t, int, bool, size_t, uint32_t, uint32_t,
                           uint32_t, uint32_t>;

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  ~Impl() {
    plans.clear();
    if (handle) cublasLtDestroy(handle);
  }
};

Gemm::Gemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gemm::~Gemm() = default;

StatusOr<std::unique_ptr<Gemm>> Gemm::Create() {
  auto impl = std::make_unique<Impl>();
  int devices = 0;
  SQZ_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&devices), "Gemm::Create");
  SQZ_RETURN_IF_ERROR(LtStatus(cublasLtCreate(&impl->handle), "cublasLtCreate"));
  return std::unique_ptr<Gemm>(new Gemm(std::move(impl)));
}

size_t Gemm::cached_plans() const { return impl_->plans.size(); }

template <typename TOut>
Status Gemm::MatMulTransB(const __nv_bfloat16* a, const __nv_bfloat16* w, const TOut* bias,
                          int64_t m, int64_t n, int64_t k, TOut* out, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream) {
  static_assert(std::is_same_v<TOut, float> || std::is_same_v<TOut, __nv_bfloat16>);
  if (m < 0 || n <= 0 || k <= 0) {
    return ArgError(kOp, "need m >= 0, n > 0, k > 0; got m=" + std::to_string(m) +
                             " n=" + std::to_string(n) + " k=" + std::to_string(k));
  }
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) {
    return ArgError(kOp, "dimensions must be below 2^31");
  }
  if (m == 0) return OkStatus();
  if (!a || !w || !out) return ArgError(kOp, "null a, w or out");
  if (workspace_bytes > 0 && (workspace == nullptr || AlignmentOf(workspace) < 16)) {
    return ArgError(kOp, "workspace must be non-null and 16-byte aligned when workspace_bytes > 0");
  }
  constexpr cudaDataType_t kOutType = std::is_same_v<TOut, float> ? CUDA_R_32F : CUDA_R_16BF;
  const PlanKey key{m,
                    n,
                    k,
                    static_cast<int>(kOutType),
                    bias != nullptr,
                    workspace_bytes,
                    AlignmentOf(a),
                    AlignmentOf(w),
                    AlignmentOf(out),
                    bias ? AlignmentOf(bias) : 256u};
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    auto plan = std::make_unique<Plan>();
    SQZ_LT_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                           "cublasLtMatmulDescCreate");
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    SQZ_LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                          &trans_a, sizeof(trans_a)),
                           "set TRANSA");
    SQZ_LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                          &trans_b, sizeof(trans_b)),
                           "set TRANSB");
    if (bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      SQZ_LT_RETURN_IF_ERROR(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                         sizeof(epilogue)),
          "set EPILOGUE");
      const cudaDataType_t bias_type = kOutType;
      SQZ_LT_RETURN_IF_ERROR(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                         &bias_type, sizeof(bias_type)),
          "set BIAS_DATA_TYPE");
    }
    SQZ_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a_layout, CUDA_R_16BF, k, n, k),
                           "layout of w");
    SQZ_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b_layout, CUDA_R_16BF, k, m, k),
                           "layout of a");
    SQZ_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->c_layout, kOutType, n, m, n),
                           "layout of out");

    cublasLtMatmulPreference_t pref = nullptr;
    SQZ_LT_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref), "preference");
    auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const auto& value) {
      return cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
    };
    const uint64_t ws = workspace_bytes;
    cublasStatus_t s = set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ws);
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, std::get<7>(key));
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, std::get<6>(key));
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, std::get<8>(key));
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, std::get<8>(key));
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = cublasLtMatmulAlgoGetHeuristic(impl_->handle, plan->desc, plan->a_layout, plan->b_layout,
                                         plan->c_layout, plan->c_layout, pref, 1, &result, &found);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && found == 0)) {
      return UnsupportedError(kOp, "cuBLASLt has no algorithm for m=" + std::to_string(m) +
                                       " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                                       " at these alignments");
    }
    SQZ_LT_RETURN_IF_ERROR(s, "cublasLtMatmulAlgoGetHeuristic");
    plan->algo = result.algo;
    it = impl_->plans.emplace(key, std::move(plan)).first;
  }
  Plan& plan = *it->second;
  if (bias) {
    const void* bias_ptr = bias;
    SQZ_LT_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                       sizeof(bias_ptr)),
        "set BIAS_POINTER");
  }
  const float alpha = 1.0f, beta = 0.0f;
  SQZ_LT_RETURN_IF_ERROR(
      cublasLtMatmul(impl_->handle, plan.desc, &alpha, w, plan.a_layout, a, plan.b_layout, &beta,
                     out, plan.c_layout, out, plan.c_layout, &plan.algo, workspace, workspace_bytes,
                     stream),
      "cublasLtMatmul");
  return OkStatus();
}

template Status Gemm::MatMulTransB<float>(const __nv_bfloat16*, const __nv_bfloat16*, const float*,
                                          int64_t, int64_t, int64_t, float*, void*, size_t,
                                          cudaStream_t);
template Status Gemm::MatMulTransB<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*,
                                                  const __nv_bfloat16*, int64_t, int64_t, int64_t,
                                                  __nv_bfloat16*, void*, size_t, cudaStream_t);

}  // namespace sqz::cuda
