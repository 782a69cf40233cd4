#include "engine/squeeze/selection.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "engine/squeeze/fidelity_metrics.h"
#include "engine/squeeze/synthetic.h"

namespace sqz {
namespace {

// One head with given centroids and counts.
HeadIndex MakeHead(const std::vector<float>& centroids, const std::vector<int32_t>& counts) {
  HeadIndex x;
  x.centroids = centroids;
  x.counts = counts;
  x.offsets = {0};
  for (int32_t c : counts) x.offsets.push_back(x.offsets.back() + c);
  return x;
}

TEST_CASE("probability estimates are a size-weighted softmax, stable for huge scores") {
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  const int d = 4, k = 7;
  std::vector<float> cent(k * d);
  for (float& x : cent) x = g(rng);
  std::vector<int32_t> counts = {1, 3, 5, 2, 9, 1, 4};
  for (float scale : {1.0f, 100.0f, 1e4f}) {
    INFO("scale " << scale);
    std::vector<float> cs = cent;
    for (float& x : cs) x *= scale;
    const HeadIndex x = MakeHead(cs, counts);
    std::vector<float> q(3 * d);  // 3 query heads of one group
    for (float& v : q) v = scale * g(rng);
    SelectionScratch s;
    std::vector<float> p(k), pmax(k, 0), pmean(k, 0);
    for (int j = 0; j < 3; ++j) {
      ClusterProbabilities(x, d, q.data() + j * d, 1, d, 1, GqaReduce::kMax, p.data(), &s);
      double mass = 0;
      for (int c = 0; c < k; ++c) {
        REQUIRE(std::isfinite(p[c]));
        mass += counts[c] * p[c];
        pmax[c] = std::max(pmax[c], p[c]);
        pmean[c] += p[c] / 3;
      }
      REQUIRE(mass == Approx(1.0).epsilon(1e-5));
    }
    ClusterProbabilities(x, d, q.data(), 1, 3 * d, 3, GqaReduce::kMax, p.data(), &s);
    for (int c = 0; c < k; ++c) REQUIRE(p[c] == Approx(pmax[c]));
    ClusterProbabilities(x, d, q.data(), 1, 3 * d, 3, GqaReduce::kMean, p.data(), &s);
    for (int c = 0; c < k; ++c) REQUIRE(p[c] == Approx(pmean[c]).margin(1e-7));
    // Two tokens: the average of the two.
    std::vector<float> p0(k), p1(k);
    ClusterProbabilities(x, d, q.data(), 1, d, 1, GqaReduce::kMax, p0.data(), &s);
    ClusterProbabilities(x, d, q.data() + d, 1, d, 1, GqaReduce::kMax, p1.data(), &s);
    ClusterProbabilities(x, d, q.data(), 2, d, 1, GqaReduce::kMax, p.data(), &s);
    for (int c = 0; c < k; ++c) REQUIRE(p[c] == Approx(0.5f * (p0[c] + p1[c])).margin(1e-7));
  }
}

TEST_CASE("the threshold policy keeps exactly the clusters above the threshold") {
  const HeadIndex x = MakeHead({1, 0, 0, 1, -1, 0, 0.5f, 0.5f}, {2, 3, 4, 5});
  const float q[2] = {3.0f, 1.0f};
  std::vector<float> p(4);
  SelectionScratch s;
  ClusterProbabilities(x, 2, q, 1, 2, 1, GqaReduce::kMax, p.data(), &s);
  SelectionParams params;
  params.policy = SelectionPolicy::kThreshold;
  params.threshold = (p[0] + p[3]) / 2;  // between the best (0) and the next (3)
  SelectionResult r;
  SelectClusters(x, 2, q, 1, 2, 1, params, &s, &r);
  REQUIRE(p[0] > p[3]);
  REQUIRE(p[3] > p[1]);
  REQUIRE(r.clusters == std::vector<int32_t>{0});
  REQUIRE(r.selected_keys == 2);
  params.threshold = -1.0f;
  SelectClusters(x, 2, q, 1, 2, 1, params, &s, &r);
  REQUIRE(r.clusters == std::vector<int32_t>{0, 1, 2, 3});
  REQUIRE(r.selected_keys == 14);
}

TEST_CASE(
    "the hierarchical lookup scores only the fine centroids under the selected coarse ones, "
    "with recall within 0.02 of flat") {
  SyntheticSpec spec;
  spec.n_tokens = 8192;
  spec.head_dim = 64;
  spec.kv_heads = 2;
  spec.q_heads = 4;
  spec.mixture_components = 128;
  SqueezeOptions o;
  o.coarse_fraction = 0.01;
  std::vector<float> queries;
  const CapturedContext c = SyntheticContext(spec, 64, &queries);
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  const HeadIndex& x = snap->head(0, 1);
  const int64_t k = x.counts.size();
  const int64_t k1 = x.coarse_offsets.size() - 1;
  REQUIRE(k1 == 81);  // round(0.01 * 8088)
  SelectionParams params;
  params.kv_budget = 0.125;
  params.coarse_keep = 0.125;
  params.hierarchical = true;
  SelectionScratch s;
  SelectionResult r;
  const int64_t d = spec.head_dim;
  const float* q = queries.data() + 2 * d;  // token 0, kv head 1
  SelectClusters(x, d, q, 1, 4 * d, 2, params, &s, &r);
  REQUIRE(r.coarse_scored == k1);
  // Count the fine centroids under the coarse groups the lookup kept: the same coarse step again.
  std::vector<int32_t> scored;
  for (int64_t j = 0; j < k1; ++j) {
    if (s.coarse_kept[j]) {
      for (int32_t i = x.coarse_offsets[j]; i < x.coarse_offsets[j + 1]; ++i) {
        scored.push_back(x.coarse_members[i]);
      }
    }
  }
  REQUIRE(r.fine_scored == int64_t(scored.size()));
  REQUIRE(r.fine_scored < k / 2);
  std::sort(scored.begin(), scored.end());
  for (int32_t cl : r.clusters) REQUIRE(std::binary_search(scored.begin(), scored.end(), cl));
  // Recall against flat, over 64 queries, per token.
  AttentionOptions flat;
  flat.kv_budget = 0.125;
  flat.block_size = 1;
  AttentionOptions hier = flat;
  hier.hierarchical = true;
  auto ff = MeasureAttentionFidelity(*snap, 0, queries.data(), 64, 0, flat);
  auto fh = MeasureAttentionFidelity(*snap, 0, queries.data(), 64, 0, hier);
  REQUIRE(ff.ok());
  REQUIRE(fh.ok());
  INFO("flat recall " << ff->mass_recall << " hierarchical " << fh->mass_recall << " shares "
                      << ff->keys_read_share << " " << fh->keys_read_share);
  REQUIRE(fh->mass_recall >= ff->mass_recall - 0.02);
  REQUIRE(fh->keys_read_share < ff->keys_read_share);
}

}  // namespace
}  // namespace sqz
