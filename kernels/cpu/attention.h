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
// normalised output of the partial so far; zero when st is empty). Keys are visited in order with
// an online softmax, so results do not depend on how a key set is split into calls only up to
// rounding.
void AttendAccumulate(const float* q, const float* k, int64_t k_stride, const float* v,
                      int64_t v_stride, int64_t n, int64_t d, float scale, float* o,
                      AttentionPartial* st);

// Merges partial b into a: (o_a, st_a) becomes the partial over the union. o_a, o_b: [d].
void MergePartial(float* o_a, AttentionPartial* st_a, const float* o_b,
                  const AttentionPartial& st_b, int64_t d);

// Partial attention of one query head over n keys held in fixed-size pages (a paged KV cache):
// key i is the row at k_pages[i / page_tokens] + (i % page_tokens) * row_stride, value i likewise
// in v_pages. Scores, their max and the weighted sums are accumulated over keys 0..n-1 in order, so
// the result depends only on the keys and their order, never on when or in how many steps they
// were written (the CPU backend's chunk invariance rests on this).
// q: [d]; k_pages, v_pages: [ceil(n / page_tokens)] page pointers; scores: scratch [n];
// o: [d] receives the normalised output; st its (m, l). n == 0 gives the empty partial (o = 0).
void PagedAttention(const float* q, const float* const* k_pages, const float* const* v_pages,
                    int64_t page_tokens, int64_t row_stride, int64_t n, int64_t d, float scale,
                    float* scores, float* o, AttentionPartial* st);

}  // namespace sqz::cpu
