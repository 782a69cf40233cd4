#include "engine/squeeze/squeezed_attention.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <thread>

#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/test_util.h"

namespace sqz {
namespace {

using testing::RandomCaptured;
using testing::ReferenceAttend;

struct Run {
  std::vector<float> out;
  std::vector<cpu::AttentionPartial> stats;
};

Run AttendAll(const ContextAttention& a, int layer, const std::vector<float>& q, int64_t n,
              int q_heads, int d, int64_t first_pos = 0) {
  Run r;
  r.out.assign(size_t(n) * q_heads * d, std::nanf(""));
  r.stats.resize(size_t(n) * q_heads);
  a.Attend(layer, q.data(), n, first_pos, r.out.data(), r.stats.data());
  return r;
}

std::vector<float> RandomQ(int64_t n, int q_heads, int d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> q(size_t(n) * q_heads * d);
  for (float& x : q) x = g(rng);
  return q;
}

TEST_CASE(
    "DENSE equals attention over the context in position order; SQUEEZED at budget 1 equals "
    "DENSE exactly") {
  SqueezeOptions o;
  for (int64_t n : {1, 3, 127, 129, 700}) {
    for (bool hier : {false, true}) {
      INFO("n=" << n << " hierarchical=" << hier);
      const int layers = 2, kvh = 2, qh = 6, d = 16;
      o.coarse_fraction = 0.02;
      const CapturedContext c = RandomCaptured(layers, kvh, qh, d, n, o, 100 + n);
      auto snap = BuildSnapshot(c, o);
      REQUIRE(snap.ok());
      AttentionOptions dense_opts;
      dense_opts.mode = AttentionMode::kDense;
      auto dense = MakeContextAttention(*snap, dense_opts);
      AttentionOptions sq_opts;
      sq_opts.kv_budget = 1.0;
      sq_opts.hierarchical = hier;
      sq_opts.block_size = 3;
      auto squeezed = MakeContextAttention(*snap, sq_opts);
      REQUIRE(dense.ok());
      REQUIRE(squeezed.ok());
      REQUIRE((*dense)->length() == n);
      const int64_t nq = 5;
      for (int layer = 0; layer < layers; ++layer) {
        const auto q = RandomQ(nq, qh, d, layer + 3 * n);
        const Run rd = AttendAll(**dense, layer, q, nq, qh, d);
        const Run rs = AttendAll(**squeezed, layer, q, nq, qh, d, 7);
        REQUIRE(rd.out == rs.out);
        for (size_t i = 0; i < rd.stats.size(); ++i) {
          REQUIRE(rd.stats[i].m == rs.stats[i].m);
          REQUIRE(rd.stats[i].l == rs.stats[i].l);
        }
        std::vector<float> ref(d);
        cpu::AttentionPartial st;
        for (int64_t t = 0; t < nq; ++t) {
          for (int j = 0; j < qh; ++j) {
            const size_t row = size_t(t) * qh + j;
            ReferenceAttend(c, layer, j / (qh / kvh), &q[row * d], ref.data(), &st);
            for (int i = 0; i < d; ++i) {
              REQUIRE(rd.out[row * d + i] == Approx(ref[i]).epsilon(1e-5).margin(1e-6));
            }
            // Same partial: m identical (a max), l relative to it.
            REQUIRE(rd.stats[row].m == Approx(st.m).epsilon(1e-6));
            REQUIRE(rd.stats[row].l == Approx(st.l).epsilon(1e-5));
          }
        }
      }
      REQUIRE((*dense)->usage().share() == 1.0);
    }
  }
}

TEST_CASE("the budget policy reads the fewest most probable clusters that reach the budget") {
  SqueezeOptions o;
  const int kvh = 2, qh = 4, d = 16;
  const CapturedContext c = RandomCaptured(1, kvh, qh, d, 3000, o, 1);
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  const int64_t body = snap->dims.body_len;
  for (double budget : {0.0, 0.05, 0.125, 0.5}) {
    INFO("budget " << budget);
    AttentionOptions ao;
    ao.kv_budget = budget;
    ao.block_size = 4;
    SqueezedContextAttention a(*snap, ao);
    const auto q = RandomQ(10, qh, d, 9);
    std::vector<std::pair<int64_t, int64_t>> blocks;
    std::vector<SelectionResult> sel;
    a.Select(0, q.data(), 10, /*first_pos=*/2, &blocks, &sel);
    // Positions 2..11 in blocks of 4: [2,4) [4,8) [8,12).
    REQUIRE(blocks == std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {2, 6}, {6, 10}});
    REQUIRE(sel.size() == 3 * kvh);
    for (size_t i = 0; i < sel.size(); ++i) {
      const SelectionResult& r = sel[i];
      const HeadIndex& head = snap->head(0, static_cast<int>(i % kvh));
      REQUIRE(r.selected_keys >= budget * body);
      int64_t keys = 0;
      for (int32_t cl : r.clusters) keys += head.counts[cl];
      REQUIRE(keys == r.selected_keys);
      REQUIRE(r.fine_scored == int64_t(snap->head(0, 0).counts.size()));
      REQUIRE(std::is_sorted(r.clusters.begin(), r.clusters.end()));
      if (budget == 0.0) REQUIRE(r.clusters.empty());
    }
    // Minimality, head 0 of the first block: dropping the least probable selected cluster would
    // fall below the budget.
    const HeadIndex& x = snap->head(0, 0);
    std::vector<float> p(x.counts.size());
    SelectionScratch scratch;
    ClusterProbabilities(x, d, q.data(), 2, qh * d, qh / kvh, GqaReduce::kMax, p.data(), &scratch);
    if (!sel[0].clusters.empty()) {
      int32_t weakest = sel[0].clusters[0];
      for (int32_t cl : sel[0].clusters) {
        if (p[cl] < p[weakest]) weakest = cl;
      }
      REQUIRE(sel[0].selected_keys - x.counts[weakest] < budget * body);
      for (size_t cl = 0; cl < p.size(); ++cl) {
        if (!std::binary_search(sel[0].clusters.begin(), sel[0].clusters.end(), int32_t(cl))) {
          REQUIRE(p[cl] <= p[weakest]);
        }
      }
    }
    // Usage: sink + window + selected + half the centroids, over the context length.
    const auto qd = RandomQ(1, qh, d, 10);
    SqueezedContextAttention one(*snap, ao);
    AttendAll(one, 0, qd, 1, qh, d, 0);
    std::vector<std::pair<int64_t, int64_t>> b1;
    std::vector<SelectionResult> s1;
    one.Select(0, qd.data(), 1, 0, &b1, &s1);
    double expect = 0;
    for (const auto& r : s1) {
      expect += snap->dims.sink_len + snap->dims.window_len + r.selected_keys + 0.5 * r.fine_scored;
    }
    expect /= kvh * double(snap->dims.n_tokens);
    REQUIRE(one.usage().share() == Approx(expect));
  }
}

TEST_CASE("tokens of one block share a selection; a decode token selects alone") {
  SqueezeOptions o;
  const int qh = 2, d = 8;
  const CapturedContext c = RandomCaptured(1, 1, qh, d, 900, o, 4);
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  AttentionOptions ao;
  ao.kv_budget = 0.1;
  ao.block_size = 64;
  SqueezedContextAttention a(*snap, ao);
  const auto q = RandomQ(64, qh, d, 5);
  const Run whole = AttendAll(a, 0, q, 64, qh, d, 0);
  // Token 5 alone uses its own selection: generally a different result than inside the block.
  std::vector<float> q5(q.begin() + 5 * qh * d, q.begin() + 6 * qh * d);
  const Run alone = AttendAll(a, 0, q5, 1, qh, d, 5);
  bool differs = false;
  for (int i = 0; i < qh * d; ++i) differs |= alone.out[i] != whole.out[5 * qh * d + i];
  REQUIRE(differs);
  for (float x : whole.out) REQUIRE(std::isfinite(x));
}

TEST_CASE("Attend may run concurrently for different layers") {
  SqueezeOptions o;
  const int layers = 4, qh = 4, kvh = 2, d = 16;
  const CapturedContext c = RandomCaptured(layers, kvh, qh, d, 600, o, 8);
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  AttentionOptions ao;
  ao.policy = SelectionPolicy::kThreshold;
  ao.sparsity = 0.8;
  SqueezedContextAttention a(*snap, ao);
  const auto q = RandomQ(33, qh, d, 6);
  std::vector<Run> serial(layers), parallel(layers);
  for (int l = 0; l < layers; ++l) serial[l] = AttendAll(a, l, q, 33, qh, d);
  std::vector<std::thread> threads;
  for (int l = 0; l < layers; ++l) {
    threads.emplace_back([&, l] { parallel[l] = AttendAll(a, l, q, 33, qh, d); });
  }
  for (auto& t : threads) t.join();
  for (int l = 0; l < layers; ++l) REQUIRE(serial[l].out == parallel[l].out);
  REQUIRE(a.usage().share() < 1.0);
  REQUIRE(a.usage().keys_total == 2.0 * layers * 33 * kvh * 600);
}

TEST_CASE("thresholds interpolate between grid points") {
  SqueezeOptions o;
  const CapturedContext c = RandomCaptured(2, 1, 1, 8, 500, o, 2);
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  const float a = snap->threshold_layer(GqaReduce::kMax, 1, 2);
  const float b = snap->threshold_layer(GqaReduce::kMax, 1, 3);
  REQUIRE(ThresholdForSparsity(*snap, GqaReduce::kMax, 1, 0.6) == Approx(a));
  REQUIRE(ThresholdForSparsity(*snap, GqaReduce::kMax, 1, 0.625) == Approx(0.5 * (a + b)));
  REQUIRE(ThresholdForSparsity(*snap, GqaReduce::kMean, -1, 0.95) ==
          snap->threshold_global(GqaReduce::kMean, 9));
}

TEST_CASE("attention options are validated with clear messages") {
  SqueezeOptions o;
  const CapturedContext c = RandomCaptured(1, 1, 1, 8, 50, o, 2);
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  auto msg = [&](auto edit) {
    AttentionOptions ao;
    edit(ao);
    auto r = MakeContextAttention(*snap, ao);
    REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
    return r.status().message();
  };
  REQUIRE_THAT(msg([](AttentionOptions& a) { a.kv_budget = 1.5; }), Catch::Contains("kv_budget"));
  REQUIRE_THAT(msg([](AttentionOptions& a) { a.kv_budget = -0.1; }), Catch::Contains("kv_budget"));
  REQUIRE_THAT(msg([](AttentionOptions& a) {
                 a.policy = SelectionPolicy::kThreshold;
                 a.sparsity = 0.3;
               }),
               Catch::Contains("sparsity must be in [0.5, 0.95]"));
  REQUIRE_THAT(msg([](AttentionOptions& a) { a.block_size = 0; }), Catch::Contains("block_size"));
  REQUIRE_THAT(msg([](AttentionOptions& a) { a.coarse_expansion = 0.5; }),
               Catch::Contains("coarse_expansion"));
  REQUIRE_THAT(msg([](AttentionOptions& a) { a.mode = static_cast<AttentionMode>(7); }),
               Catch::Contains("mode"));
  REQUIRE_THAT(msg([](AttentionOptions& a) { a.gqa_reduce = static_cast<GqaReduce>(7); }),
               Catch::Contains("GQA"));
}

}  // namespace
}  // namespace sqz
