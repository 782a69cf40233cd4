// CudaBackend::Impl: the dtype-specific half of the CUDA backend (device buffers and the forward
// pass), shared by the backend's source files (cuda_backend.cc: the implementations;
// cuda_backend_contexts.cc: the fixed-context entry points). Internal to engine/cuda.
// Thread safety: that of CudaBackend (one thread).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "engine/cuda/context_step.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/paged_sequences.h"

namespace sqz {

// The dtype-specific half of the backend: device buffers and the forward pass.
class CudaBackend::Impl {
 public:
  virtual ~Impl() = default;
  // Runs the step described by `layout` (made by PagedSequences::Prepare for `batch`). Writes the
  // logit rows to `logits` (host) if not null, or, if `tokens` is not null, one token per logit row
  // chosen on the device as sampling[row] says (sampling.size() == layout.out_rows). contexts:
  // empty when no item has a fixed context, else one entry per layout item.
  virtual Status Run(const StepLayout& layout, std::span<const StepInput> batch,
                     std::span<const StepContext> contexts, float* logits,
                     std::span<const TokenSampling> sampling, int32_t* tokens) = 0;
  // Tokens [begin, begin + n) of the sequence whose block table is `blocks`, at `layer`.
  virtual Status ReadKv(const std::vector<int32_t>& blocks, int layer, int64_t begin, int64_t n,
                        float* k, float* v) = 0;
  // Device-to-device: tokens [begin, begin + n) (begin a multiple of 16) into k, v.
  virtual Status GatherKv(const std::vector<int32_t>& blocks, int layer, int64_t begin, int64_t n,
                          void* k, void* v) = 0;
  virtual size_t weight_bytes() const = 0;
  virtual size_t kv_pool_bytes() const = 0;
  virtual cudaStream_t stream() const = 0;
  virtual CudaBackend::GraphStats graph_stats() const = 0;
  virtual void set_cuda_graphs(bool on) = 0;
  virtual void set_sparse_prefill(bool on) = 0;
  virtual void set_context_prefill_kv_splits(int splits) = 0;
  virtual void set_group_context_lookups(bool on) = 0;
  virtual void set_streaming_gemv(bool on) = 0;
  virtual void set_programmatic_launch(bool on) = 0;
  virtual void set_programmatic_attention(bool on) = 0;
  virtual void set_streaming_o_proj(bool on) = 0;
};

}  // namespace sqz
