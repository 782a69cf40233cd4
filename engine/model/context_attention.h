// ContextAttention: attention of a request's query tokens over a registered fixed context, as one
// exact partial result per (token, query head) that the forward pass merges with the attention over
// the request's own tokens (log-sum-exp rule, kernels/cpu/attention.h).
//
// The model runtime calls it; engine/squeeze implements it (dense over the whole context, or
// Squeezed Attention over selected clusters + sink + window). An instance is per request and
// per step: it borrows the context's read-only KV and index, which must outlive it.
// Thread safety: Attend is const and may be called from several threads for different layers.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace sqz {

class ContextAttention {
 public:
  virtual ~ContextAttention() = default;

  // Number of fixed-context tokens. The request's own tokens take positions length(), length()+1...
  virtual int64_t length() const = 0;

  // q: [n_tokens][n_q_heads][head_dim], post-RoPE, at absolute positions length() + first_pos + t.
  // out: [n_tokens][n_q_heads][head_dim] receives the normalised partial output over the context;
  // stats: [n_tokens][n_q_heads] receives its (m, l). Every context key precedes every query token,
  // so no causal mask applies here.
  virtual void Attend(int layer, const float* q, int64_t n_tokens, int64_t first_pos, float* out,
                      cpu::AttentionPartial* stats) const = 0;
};

}  // namespace sqz
