// CpuBackend: the fp32 CPU implementation of Backend (backend.h), the oracle for the CUDA one.
// Forward pass: embedding -> layers of [RMSNorm, q/k/v projections (+bias), RoPE (with llama3 or
// linear scaling), GQA attention (context partial merged with the causal partial over the paged
// own KV), o projection, residual, RMSNorm, SwiGLU MLP, residual] -> final RMSNorm -> LM head.
// All rows of a step are stacked into one matrix per projection; every output element is
// computed in one fixed order (kernels/cpu), which makes results batch and chunk invariant.
// Parallelism: OpenMP inside the ops (over output features) and over (token, head) in attention.
//
// Ownership: borrows the Model (which must outlive the backend); owns the KV pool (allocated once
// at construction: total_blocks * 16 tokens * layers * kv_dim * 2 floats) and scratch buffers.
// Thread safety: not thread-safe (see Backend).
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "engine/model/backend.h"
#include "engine/model/weights.h"

namespace sqz {

struct CpuBackendOptions {
  // Capacity of the paged KV pool in blocks of kKvBlockTokens tokens, shared by all sequences.
  // Memory: kv_blocks * 16 * layers * kv_heads * head_dim * 8 bytes. Default 256 blocks = 4096
  // tokens. More blocks admit more or longer sequences at the cost of memory.
  int64_t kv_blocks = 256;
};

class CpuBackend : public Backend {
 public:
  // INVALID_ARGUMENT when the model's weights do not match its config or kv_blocks < 1.
  static StatusOr<std::unique_ptr<CpuBackend>> Create(const Model& model,
                                                      const CpuBackendOptions& options);

  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;
  ~CpuBackend() override;

  const ModelConfig& config() const override { return model_.config; }
  StatusOr<SeqId> AddSequence() override;
  Status FreeSequence(SeqId seq) override;
  int64_t SequenceLength(SeqId seq) const override;
  Status Forward(std::span<const StepInput> batch, float* logits) override;
  Status ReadKv(SeqId seq, int layer, int64_t begin, int64_t n, float* k, float* v) override;
  KvPoolStats Stats() const override;

 private:
  struct Sequence {
    int64_t length = 0;           // own tokens cached
    int64_t context_length = -1;  // -1 until the first step
    std::vector<int32_t> blocks;  // block table: pool block of own tokens [16 b, 16 b + 16)
  };
  struct Scratch;  // per-step buffers, grown as needed (cpu_backend.cc)

  CpuBackend(const Model& model, const CpuBackendOptions& options);

  // Address of the key (or value) row of block `block`, slot `slot` at `layer`: [kv_dim].
  float* KeyRow(int layer, int32_t block, int64_t slot);
  float* ValueRow(int layer, int32_t block, int64_t slot);
  void RunLayer(int layer, std::span<const StepInput> batch);

  const Model& model_;  // borrowed
  const CpuBackendOptions options_;
  const int64_t kv_dim_;
  std::vector<float> inv_freq_;       // [head_dim / 2]
  std::vector<float> k_pool_;         // [layers][kv_blocks][16][kv_dim]
  std::vector<float> v_pool_;         // same
  std::vector<int32_t> free_blocks_;  // stack of free block ids
  std::unordered_map<SeqId, Sequence> sequences_;
  SeqId next_id_ = 0;
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace sqz
