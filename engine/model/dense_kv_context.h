// DenseKvContext: a ContextAttention over a plain copy of a fixed context's post-RoPE keys and
// values, attended densely (every key). It is the reference that squeezed attention is compared
// against, and lets tests check that "context + own tokens" equals one sequence holding both.
// Ownership: owns its K/V copy. Thread safety: immutable after construction; Attend is const and
// safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"
#include "engine/model/backend.h"
#include "engine/model/context_attention.h"

namespace sqz {

class DenseKvContext : public ContextAttention {
 public:
  // k, v: [layers][length][kv_heads][head_dim]; q_heads must be a multiple of kv_heads.
  DenseKvContext(int64_t layers, int64_t length, int64_t q_heads, int64_t kv_heads,
                 int64_t head_dim, std::vector<float> k, std::vector<float> v);

  // Copies the first `length` cached tokens of `seq` from `backend` (ReadKv, every layer).
  static StatusOr<std::unique_ptr<DenseKvContext>> FromSequence(Backend& backend, SeqId seq,
                                                                int64_t length);

  int64_t length() const override { return length_; }
  void Attend(int layer, const float* q, int64_t n_tokens, int64_t first_pos, float* out,
              cpu::AttentionPartial* stats) const override;

 private:
  const int64_t layers_, length_, q_heads_, kv_heads_, head_dim_;
  const std::vector<float> k_;  // [layers][length][kv_heads][head_dim]
  const std::vector<float> v_;  // same
};

}  // namespace sqz
