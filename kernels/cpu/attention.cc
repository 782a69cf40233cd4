#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace sqz::cpu {

void AttendAccumulate(const float* q, const float* k, int64_t k_stride, const float* v,
                      int64_t v_stride, int64_t n, int64_t d, float scale, float* o,
                      AttentionPartial* st) {
  if (n <= 0) return;
  thread_local std::vector<float> scores;
  thread_local std::vector<float> ob;
  scores.resize(n);
  ob.assign(d, 0.0f);
  float mb = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    scores[i] = scale * Dot(q, k + i * k_stride, d);
    mb = std::max(mb, scores[i]);
  }
  float lb = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float w = std::exp(scores[i] - mb);
    lb += w;
    const float* vi = v + i * v_stride;
    for (int64_t j = 0; j < d; ++j) ob[j] += w * vi[j];
  }
  const float inv = 1.0f / lb;
  for (int64_t j = 0; j < d; ++j) ob[j] *= inv;
  MergePartial(o, st, ob.data(), AttentionPartial{mb, lb}, d);
}

void MergePartial(float* o_a, AttentionPartial* st_a, const float* o_b,
                  const AttentionPartial& st_b, int64_t d) {
  if (st_b.l == 0.0f) return;
  if (st_a->l == 0.0f) {
    for (int64_t j = 0; j < d; ++j) o_a[j] = o_b[j];
    *st_a = st_b;
    return;
  }
  const float m = std::max(st_a->m, st_b.m);
  const float wa = std::exp(st_a->m - m) * st_a->l;
  const float wb = std::exp(st_b.m - m) * st_b.l;
  const float inv = 1.0f / (wa + wb);
  for (int64_t j = 0; j < d; ++j) o_a[j] = (wa * o_a[j] + wb * o_b[j]) * inv;
  st_a->m = m;
  st_a->l = wa + wb;  // relative to the new max m
}

void PagedAttention(const float* q, const float* const* k_pages, const float* const* v_pages,
                    int64_t page_tokens, int64_t row_stride, int64_t n, int64_t d, float scale,
                    float* scores, float* o, AttentionPartial* st) {
  for (int64_t j = 0; j < d; ++j) o[j] = 0.0f;
  *st = AttentionPartial{};
  if (n <= 0) return;
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    const float* ki = k_pages[i / page_tokens] + (i % page_tokens) * row_stride;
    scores[i] = scale * Dot(q, ki, d);
    m = std::max(m, scores[i]);
  }
  float l = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float w = std::exp(scores[i] - m);
    l += w;
    const float* vi = v_pages[i / page_tokens] + (i % page_tokens) * row_stride;
    for (int64_t j = 0; j < d; ++j) o[j] += w * vi[j];
  }
  const float inv = 1.0f / l;
  for (int64_t j = 0; j < d; ++j) o[j] *= inv;
  st->m = m;
  st->l = l;
}

}  // namespace sqz::cpu
