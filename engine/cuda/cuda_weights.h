// CudaWeights<T>: a Llama-family decoder's weights on the GPU in T (float for the fp32 exactness
// mode, __nv_bfloat16 for serving), in one device allocation, laid out for the CUDA backend:
//   * q, k and v projections fused row-wise into wqkv [q_dim + 2 kv_dim][hidden] (q rows, then k,
//     then v), their biases into bqkv [q_dim + 2 kv_dim] (qkv_bias only);
//   * gate and up projections fused into w_gate_up [2 intermediate][hidden] (gate rows first, so
//     a product's row is [gate | up], what cuda::SwiGlu reads);
//   * everything else as in ModelWeights ([out_features][in_features]).
// Upload converts a host Model (fp32) with round-to-nearest-even; Random fills every tensor on the
// device from Philox (no host copy, no files), for benchmarks of any shape.
// Ownership: owns its device memory; the pointers stay valid for its lifetime. Immutable after
// creation. Thread safety: read-only after creation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"
#include "engine/cuda/device_memory.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace sqz {

template <typename T>
struct CudaLayerWeights {
  const T* attn_norm = nullptr;  // [hidden]
  const T* wqkv = nullptr;       // [q_dim + 2 kv_dim][hidden]
  const T* bqkv = nullptr;       // [q_dim + 2 kv_dim] or null
  const T* wo = nullptr;         // [hidden][q_dim]
  const T* ffn_norm = nullptr;   // [hidden]
  const T* w_gate_up = nullptr;  // [2 intermediate][hidden]
  const T* w_down = nullptr;     // [hidden][intermediate]
};

template <typename T>
class CudaWeights {
 public:
  // Copies model (validated by the caller) to the device. RESOURCE_EXHAUSTED when it does not fit,
  // INTERNAL on a CUDA failure.
  static StatusOr<std::unique_ptr<CudaWeights>> Upload(const Model& model);
  // Random weights for `config` (validated by the caller): linear weights uniform with variance
  // 1 / in_features, embedding uniform in [-1, 1], norms 1, biases uniform in [-0.02, 0.02];
  // reproducible for a seed. Enqueued on `stream`, which is synchronised before returning.
  static StatusOr<std::unique_ptr<CudaWeights>> Random(const ModelConfig& config, uint64_t seed,
                                                       cudaStream_t stream);

  CudaWeights(const CudaWeights&) = delete;
  CudaWeights& operator=(const CudaWeights&) = delete;

  const T* embedding() const { return embedding_; }    // [vocab][hidden]
  const T* final_norm() const { return final_norm_; }  // [hidden]
  const T* lm_head() const { return lm_head_; }        // [vocab][hidden] (== embedding if tied)
  const CudaLayerWeights<T>& layer(int64_t i) const { return layers_[i]; }
  size_t bytes() const { return memory_.bytes(); }

 private:
  CudaWeights() = default;
  // Lays out every tensor of `config` in one allocation (256-byte aligned offsets) and sets the
  // pointers. separate_lm_head: whether an LM head matrix of its own is stored.
  Status Allocate(const ModelConfig& config, bool separate_lm_head);

  DeviceMemory memory_;
  const T* embedding_ = nullptr;
  const T* final_norm_ = nullptr;
  const T* lm_head_ = nullptr;
  std::vector<CudaLayerWeights<T>> layers_;
};

extern template class CudaWeights<float>;
extern template class CudaWeights<__nv_bfloat16>;

}  // namespace sqz
