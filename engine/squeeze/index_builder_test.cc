#include "engine/squeeze/index_builder.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "engine/squeeze/selection.h"
#include "engine/squeeze/test_util.h"

namespace sqz {
namespace {

using testing::RandomCaptured;

TEST_CASE("split lengths and cluster counts") {
  SqueezeOptions o;
  REQUIRE(SinkLength(1, o) == 1);
  REQUIRE(WindowLength(1, o) == 0);
  REQUIRE(WindowLength(3, o) == 0);
  REQUIRE(SinkLength(3, o) == 3);
  REQUIRE(WindowLength(50, o) == 46);
  REQUIRE(WindowLength(1000, o) == 100);
  REQUIRE(FineClusters(0, o) == 0);
  REQUIRE(FineClusters(3, o) == 1);
  REQUIRE(FineClusters(896, o) == 45);
  REQUIRE(CoarseClusters(896, o) == 9);
  REQUIRE(CoarseClusters(100, o) == 0);  // round(1) < 2: off
  o.coarse_fraction = 0;
  REQUIRE(CoarseClusters(896, o) == 0);
}

TEST_CASE("the snapshot re-lays the body in cluster order without losing a row") {
  SqueezeOptions o;
  for (int64_t n : {1, 3, 105, 127, 129, 1000}) {
    INFO("n=" << n);
    const CapturedContext c = RandomCaptured(2, 2, 6, 16, n, o, 7 + n);
    double last_progress = -1;
    auto snap = BuildSnapshot(c, o, [&](IngestStage stage, double f) {
      if (stage == IngestStage::kClustering) {
        REQUIRE(f > last_progress);
        last_progress = f;
      }
    });
    REQUIRE(snap.ok());
    REQUIRE(ValidateSnapshot(*snap).ok());
    REQUIRE(last_progress == 1.0);
    const SnapshotDims& dm = snap->dims;
    REQUIRE(dm.sink_len + dm.body_len + dm.window_len == n);
    const int64_t d = 16;
    for (int l = 0; l < 2; ++l) {
      for (int h = 0; h < 2; ++h) {
        const HeadIndex& x = snap->head(l, h);
        auto row = [&](const std::vector<float>& src, int64_t pos) {
          return &src[((size_t(l) * n + pos) * 2 + h) * d];
        };
        for (int64_t i = 0; i < dm.sink_len; ++i) {
          REQUIRE(
              std::equal(x.sink_k.begin() + i * d, x.sink_k.begin() + (i + 1) * d, row(c.k, i)));
        }
        for (int64_t i = 0; i < dm.window_len; ++i) {
          const int64_t pos = n - dm.window_len + i;
          REQUIRE(std::equal(x.window_v.begin() + i * d, x.window_v.begin() + (i + 1) * d,
                             row(c.v, pos)));
        }
        for (int64_t i = 0; i < dm.body_len; ++i) {
          const int64_t pos = x.body_positions[i];
          REQUIRE(
              std::equal(x.body_k.begin() + i * d, x.body_k.begin() + (i + 1) * d, row(c.k, pos)));
          REQUIRE(
              std::equal(x.body_v.begin() + i * d, x.body_v.begin() + (i + 1) * d, row(c.v, pos)));
        }
        // Centroid = mean of the raw member keys; positions ascend within a cluster.
        for (size_t cl = 0; cl < x.counts.size(); ++cl) {
          for (int64_t j = 0; j < d; ++j) {
            double sum = 0;
            for (int32_t i = x.offsets[cl]; i < x.offsets[cl + 1]; ++i) sum += x.body_k[i * d + j];
            REQUIRE(x.centroids[cl * d + j] == Approx(sum / x.counts[cl]).margin(1e-4));
          }
          for (int32_t i = x.offsets[cl] + 1; i < x.offsets[cl + 1]; ++i) {
            REQUIRE(x.body_positions[i] > x.body_positions[i - 1]);
          }
        }
      }
    }
    auto again = BuildSnapshot(c, o);
    REQUIRE(again.ok());
    REQUIRE(*again == *snap);
  }
}

TEST_CASE("the coarse level groups every fine centroid once") {
  SqueezeOptions o;
  o.centroid_fraction = 0.1;
  o.coarse_fraction = 0.02;
  const CapturedContext c = RandomCaptured(1, 1, 2, 8, 1500, o, 3);
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  const HeadIndex& x = snap->head(0, 0);
  REQUIRE(x.counts.size() == 140);
  REQUIRE(x.coarse_offsets.size() == 29);  // round(0.02 * 1396) = 28 groups
  REQUIRE(ValidateSnapshot(*snap).ok());
  // Coarse centroid = mean of the keys under the group.
  for (size_t j = 0; j + 1 < x.coarse_offsets.size(); ++j) {
    double sum = 0;
    int64_t keys = 0;
    for (int32_t i = x.coarse_offsets[j]; i < x.coarse_offsets[j + 1]; ++i) {
      const int32_t f = x.coarse_members[i];
      keys += x.counts[f];
      for (int32_t r = x.offsets[f]; r < x.offsets[f + 1]; ++r) sum += x.body_k[r * 8 + 3];
    }
    REQUIRE(x.coarse_centroids[j * 8 + 3] == Approx(sum / keys).margin(1e-4));
  }
}

// Share of body keys (over the heads of `layer`, or all layers when layer < 0) that per-token
// selection with threshold T keeps, averaged over the window queries.
double KeptShare(const ContextSnapshot& s, const std::vector<float>& window_q, GqaReduce r,
                 int layer, float t) {
  const SnapshotDims& dm = s.dims;
  const int g = dm.q_heads / dm.kv_heads;
  const int64_t d = dm.head_dim;
  SelectionScratch scratch;
  int64_t kept = 0, total = 0;
  for (int l = 0; l < dm.layers; ++l) {
    if (layer >= 0 && l != layer) continue;
    for (int h = 0; h < dm.kv_heads; ++h) {
      const HeadIndex& x = s.head(l, h);
      std::vector<float> p(x.counts.size());
      for (int64_t w = 0; w < dm.window_len; ++w) {
        ClusterProbabilities(
            x, d, window_q.data() + ((size_t(l) * dm.window_len + w) * dm.q_heads + h * g) * d, 1,
            int64_t{dm.q_heads} * d, g, r, p.data(), &scratch);
        for (size_t c = 0; c < p.size(); ++c) {
          REQUIRE(std::isfinite(p[c]));
          total += x.counts[c];
          if (p[c] > t) kept += x.counts[c];
        }
      }
    }
  }
  return double(kept) / double(total);
}

TEST_CASE("calibrated thresholds keep 1 - s of the body keys on the calibration queries") {
  SqueezeOptions o;
  o.centroid_fraction = 0.1;
  for (float scale : {1.0f, 100.0f}) {
    INFO("key and query scale " << scale);
    const CapturedContext c = RandomCaptured(3, 2, 4, 32, 2000, o, 11, scale);
    auto snap = BuildSnapshot(c, o);
    REQUIRE(snap.ok());
    REQUIRE(ValidateSnapshot(*snap).ok());  // includes: every threshold finite
    for (int r = 0; r < kNumGqaReduce; ++r) {
      for (int i = 0; i < kNumSparsities; ++i) {
        const double s = SparsityAt(i);
        INFO("reduce " << r << " sparsity " << s);
        const auto red = static_cast<GqaReduce>(r);
        // Keys x100 make every single-query estimate but the top one underflow to 0: no threshold
        // can split such ties, so only finiteness (checked in ValidateSnapshot and KeptShare) and
        // monotonicity are required there.
        const double kept = KeptShare(*snap, c.window_q, red, -1, snap->threshold_global(red, i));
        if (scale == 1.0f) REQUIRE(kept == Approx(1.0 - s).margin(0.05));
        for (int l = 0; l < 3; ++l) {
          const double kl = KeptShare(*snap, c.window_q, red, l, snap->threshold_layer(red, l, i));
          if (scale == 1.0f) REQUIRE(kl == Approx(1.0 - s).margin(0.05));
        }
        if (i > 0) {
          REQUIRE(snap->threshold_global(red, i) >= snap->threshold_global(red, i - 1));
        }
      }
    }
  }
}

TEST_CASE("BuildSnapshot rejects inconsistent captures with a clear message") {
  SqueezeOptions o;
  const CapturedContext good = RandomCaptured(1, 2, 4, 8, 300, o, 5);
  REQUIRE(BuildSnapshot(good, o).ok());
  auto message = [&](auto breakit, SqueezeOptions opts = {}) {
    CapturedContext c = good;
    breakit(c);
    auto r = BuildSnapshot(c, opts);
    REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
    return r.status().message();
  };
  REQUIRE_THAT(message([](CapturedContext& c) { c.k.pop_back(); }),
               Catch::Contains("captured K/V"));
  REQUIRE_THAT(message([](CapturedContext& c) { c.window_q.resize(10); }),
               Catch::Contains("window queries must be [layers][100]"));
  REQUIRE_THAT(message([](CapturedContext& c) { c.q_heads = 3; }), Catch::Contains("multiple"));
  REQUIRE_THAT(message([](CapturedContext& c) { c.n_tokens = 0; }), Catch::Contains("empty"));
  REQUIRE_THAT(message([](CapturedContext& c) { c.v[17] = std::nanf(""); }),
               Catch::Contains("non-finite"));
  SqueezeOptions bad;
  bad.centroid_fraction = 2.0;
  REQUIRE_THAT(message([](CapturedContext&) {}, bad), Catch::Contains("centroid_fraction"));
}

}  // namespace
}  // namespace sqz
