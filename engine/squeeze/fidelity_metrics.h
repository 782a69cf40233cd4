// Fidelity of Squeezed Attention against dense attention on given queries (ALGORITHM.md, "What we
// measure"): attention-mass recall, relative L2 error of the attention output, share of keys read.
// Labels-free: dense attention over the same snapshot is the reference.
#pragma once

#include <cstdint>

#include "engine/squeeze/squeezed_attention.h"

namespace sqz {

struct AttentionFidelity {
  double mass_recall = 0.0;      // mean over (token, q head) of the softmax mass on keys read
  double min_mass_recall = 0.0;  // worst (token, q head)
  double rel_l2_error = 0.0;     // mean over (token, q head) of |o - o_dense| / |o_dense|
  double keys_read_share = 0.0;  // KeyUsage::share() of the squeezed attention
  double body_share = 0.0;       // selected body keys / body keys, mean over (token, kv head)
};

// q: [n_tokens][q_heads][head_dim] queries of `layer`, at request positions first_pos + t.
// options.mode must be kSqueezed (INVALID_ARGUMENT otherwise, or for bad options).
StatusOr<AttentionFidelity> MeasureAttentionFidelity(const ContextSnapshot& snapshot, int layer,
                                                     const float* q, int64_t n_tokens,
                                                     int64_t first_pos,
                                                     const AttentionOptions& options);

}  // namespace sqz
