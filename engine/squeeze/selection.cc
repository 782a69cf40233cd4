#include "engine/squeeze/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/ops.h"

namespace sqz {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// For each query head j < g of each token, scores s = q . C[id] / sqrt(d) of the candidate
// centroids `ids` (n_ids rows of `centroids`, all rows when ids == nullptr) plus the log-masses of
// extra groups (log_mass[e] + score of extra centroid e, weight extra_counts[e]) that enter the
// normaliser only. Accumulates into acc[n_ids] the group-reduced per-key probability, summed over
// tokens. extra: rows of extra_centroids, n_extra of them.
void AccumulateProbabilities(const float* centroids, const int32_t* counts, const int32_t* ids,
                             int64_t n_ids, const float* extra_centroids,
                             const int32_t* extra_counts, const int32_t* extra_ids, int64_t n_extra,
                             int64_t d, const float* q, int64_t n_tokens, int64_t q_stride, int g,
                             GqaReduce reduce, float* acc, SelectionScratch* s) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  s->scores.resize(static_cast<size_t>(n_ids + n_extra));
  s->probs.resize(static_cast<size_t>(n_ids));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int j = 0; j < g; ++j) {
      const float* qj = q + t * q_stride + j * d;
      float m = kNegInf;
      for (int64_t i = 0; i < n_ids; ++i) {
        const int64_t c = ids ? ids[i] : i;
        s->scores[i] = scale * cpu::Dot(qj, centroids + c * d, d);
        m = std::max(m, s->scores[i]);
      }
      for (int64_t e = 0; e < n_extra; ++e) {
        const float v = scale * cpu::Dot(qj, extra_centroids + int64_t{extra_ids[e]} * d, d);
        s->scores[n_ids + e] = v;
        m = std::max(m, v);
      }
      double z = 0.0;
      for (int64_t i = 0; i < n_ids; ++i) {
        const int64_t c = ids ? ids[i] : i;
        s->scores[i] = std::exp(s->scores[i] - m);
        z += static_cast<double>(counts[c]) * s->scores[i];
      }
      for (int64_t e = 0; e < n_extra; ++e) {
        z += static_cast<double>(extra_counts[extra_ids[e]]) * std::exp(s->scores[n_ids + e] - m);
      }
      const float inv = static_cast<float>(1.0 / z);  // z >= 1: the max term contributes N >= 1
      for (int64_t i = 0; i < n_ids; ++i) {
        const float p = s->scores[i] * inv;
        if (reduce == GqaReduce::kMax) {
          s->probs[i] = j == 0 ? p : std::max(s->probs[i], p);
        } else {
          s->probs[i] = j == 0 ? p : s->probs[i] + p;
        }
      }
    }
    const float group_scale = reduce == GqaReduce::kMean ? 1.0f / g : 1.0f;
    for (int64_t i = 0; i < n_ids; ++i) acc[i] += s->probs[i] * group_scale;
  }
}

// Picks from candidates (ids into p/counts) by policy; appends to out (unsorted).
void PickByPolicy(const std::vector<int32_t>& cands, const float* p, const int32_t* counts,
                  SelectionPolicy policy, double budget_keys, float threshold,
                  std::vector<int32_t>* order, std::vector<int32_t>* out, int64_t* keys) {
  if (policy == SelectionPolicy::kThreshold) {
    for (size_t i = 0; i < cands.size(); ++i) {
      if (p[i] > threshold) {
        out->push_back(cands[i]);
        *keys += counts[cands[i]];
      }
    }
    return;
  }
  order->resize(cands.size());
  for (size_t i = 0; i < cands.size(); ++i) (*order)[i] = static_cast<int32_t>(i);
  std::stable_sort(order->begin(), order->end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  for (int32_t i : *order) {
    if (static_cast<double>(*keys) >= budget_keys) break;
    out->push_back(cands[i]);
    *keys += counts[cands[i]];
  }
}

}  // namespace

void ClusterProbabilities(const HeadIndex& index, int64_t d, const float* q, int64_t n_tokens,
                          int64_t q_stride, int g, GqaReduce reduce, float* p,
                          SelectionScratch* scratch) {
  const int64_t k = static_cast<int64_t>(index.counts.size());
  std::fill(p, p + k, 0.0f);
  if (k == 0 || n_tokens == 0) return;
  AccumulateProbabilities(index.centroids.data(), index.counts.data(), nullptr, k, nullptr, nullptr,
                          nullptr, 0, d, q, n_tokens, q_stride, g, reduce, p, scratch);
  const float inv = 1.0f / static_cast<float>(n_tokens);
  for (int64_t c = 0; c < k; ++c) p[c] *= inv;
}

void SelectClusters(const HeadIndex& index, int64_t d, const float* q, int64_t n_tokens,
                    int64_t q_stride, int g, const SelectionParams& params, SelectionScratch* s,
                    SelectionResult* result) {
  result->clusters.clear();
  result->selected_keys = 0;
  result->fine_scored = 0;
  result->coarse_scored = 0;
  const int64_t k = static_cast<int64_t>(index.counts.size());
  if (k == 0 || n_tokens == 0) return;
  const int64_t body = index.offsets.back();
  const double budget_keys = params.kv_budget * static_cast<double>(body);
  const bool hierarchical = params.hierarchical && !index.coarse_offsets.empty();

  s->candidates.clear();
  if (!hierarchical) {
    s->candidates.resize(k);
    for (int64_t c = 0; c < k; ++c) s->candidates[c] = static_cast<int32_t>(c);
    s->acc.resize(k);
    ClusterProbabilities(index, d, q, n_tokens, q_stride, g, params.reduce, s->acc.data(), s);
    result->fine_scored = k;
  } else {
    // Coarse step: every coarse centroid, weighted by the keys under it.
    const int64_t k1 = static_cast<int64_t>(index.coarse_offsets.size()) - 1;
    std::vector<int32_t>& coarse_counts = s->coarse_counts;  // keys under each coarse group
    coarse_counts.assign(k1, 0);
    for (int64_t j = 0; j < k1; ++j) {
      for (int32_t i = index.coarse_offsets[j]; i < index.coarse_offsets[j + 1]; ++i) {
        coarse_counts[j] += index.counts[index.coarse_members[i]];
      }
    }
    s->coarse_acc.assign(k1, 0.0f);
    AccumulateProbabilities(index.coarse_centroids.data(), coarse_counts.data(), nullptr, k1,
                            nullptr, nullptr, nullptr, 0, d, q, n_tokens, q_stride, g,
                            params.reduce, s->coarse_acc.data(), s);
    result->coarse_scored = k1;
    std::vector<int32_t>& all_coarse = s->coarse_ids;
    std::vector<int32_t>& kept = s->coarse_selected;
    all_coarse.resize(k1);
    kept.clear();
    for (int64_t j = 0; j < k1; ++j) all_coarse[j] = static_cast<int32_t>(j);
    int64_t covered = 0;
    const double coverage =
        std::min(1.0, params.coarse_expansion * params.coarse_keep) * static_cast<double>(body);
    PickByPolicy(all_coarse, s->coarse_acc.data(), coarse_counts.data(), SelectionPolicy::kBudget,
                 coverage, 0.0f, &s->order, &kept, &covered);
    s->coarse_kept.assign(k1, 0);
    for (int32_t j : kept) s->coarse_kept[j] = 1;
    std::vector<int32_t>& rest = s->coarse_rest;  // groups not kept: normaliser mass only
    rest.clear();
    for (int64_t j = 0; j < k1; ++j) {
      if (s->coarse_kept[j]) {
        for (int32_t i = index.coarse_offsets[j]; i < index.coarse_offsets[j + 1]; ++i) {
          s->candidates.push_back(index.coarse_members[i]);
        }
      } else {
        rest.push_back(static_cast<int32_t>(j));
      }
    }
    const int64_t nc = static_cast<int64_t>(s->candidates.size());
    s->acc.assign(nc, 0.0f);
    AccumulateProbabilities(index.centroids.data(), index.counts.data(), s->candidates.data(), nc,
                            index.coarse_centroids.data(), coarse_counts.data(), rest.data(),
                            static_cast<int64_t>(rest.size()), d, q, n_tokens, q_stride, g,
                            params.reduce, s->acc.data(), s);
    const float inv = 1.0f / static_cast<float>(n_tokens);
    for (float& x : s->acc) x *= inv;
    result->fine_scored = nc;
  }
  PickByPolicy(s->candidates, s->acc.data(), index.counts.data(), params.policy, budget_keys,
               params.threshold, &s->order, &result->clusters, &result->selected_keys);
  std::sort(result->clusters.begin(), result->clusters.end());
}

}  // namespace sqz
