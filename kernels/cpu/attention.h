// CPU reference attention with partial results that merge exactly (the log-sum-exp rule).
//
// A partial result over a subset S of keys for one query head is (o, m, l):
//   m = max_{i in S} s_i, l = sum_{i in S} exp(s_i - m), o = sum_{i in S} exp(s_i - m) v_i / l,
// with s_i = scale * q . k_i. An empty subset has m = -inf, l = 0, o = 0. Merging partials over
// disjoint subsets gives exactly the attention over their union (ALGORITHM.md, online step 5).
#pragma once

#include <cstdint>
#include <limits>

namespace sqz::cpu {

struct AttentionPartial {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0.0f;
};

// Accumulates keys [0, n) into the running partial (o, st) of one query head.
// q: [d]; k: n rows of d floats, row i at k + i * k_stride; v likewise with v_stride; o: [d] (the
// normalised output of the partial so far; zero when st is empty). Keys are visited in order with an
// online softmax, so results do not depend on how a key set is split into calls only up to rounding.
void AttendAccumulate(const float* q, const float* k, int64_t k_stride, const float* v,
                      int64_t v_stride, int64_t n, int64_t d, float scale, float* o,
                      AttentionPartial* st);

// Merges partial b into a: (o_a, st_a) becomes the partial over the union. o_a, o_b: [d].
void MergePartial(float* o_a, AttentionPartial* st_a, const float* o_b, const AttentionPartial& st_b,
                  int64_t d);

}  // namespace sqz::cpu
