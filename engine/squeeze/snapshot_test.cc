#include "engine/squeeze/snapshot.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

namespace sqz {
namespace {

// A hand-made valid snapshot: 1 layer, 2 kv heads, 4 q heads, d = 3, 10 tokens (2 sink, 3 window,
// 5 body in 2 clusters, one coarse group).
ContextSnapshot MakeTiny() {
  ContextSnapshot s;
  s.dims = {.layers = 1,
            .kv_heads = 2,
            .q_heads = 4,
            .head_dim = 3,
            .n_tokens = 10,
            .sink_len = 2,
            .window_len = 3,
            .body_len = 5};
  s.options.sink_tokens = 2;
  s.options.observation_window = 3;
  for (int h = 0; h < 2; ++h) {
    HeadIndex x;
    x.sink_k.assign(6, 0.5f + h);
    x.sink_v.assign(6, 1.0f);
    x.window_k.assign(9, 0.25f);
    x.window_v.assign(9, -1.0f);
    x.body_k.assign(15, 2.0f);
    x.body_v.assign(15, 3.0f);
    x.body_positions = {4, 2, 6, 3, 5};
    x.centroids.assign(6, 2.0f);
    x.counts = {2, 3};
    x.offsets = {0, 2, 5};
    x.coarse_centroids.assign(3, 2.0f);
    x.coarse_offsets = {0, 2};
    x.coarse_members = {1, 0};
    s.heads.push_back(x);
  }
  s.thresholds_global.assign(kNumGqaReduce * kNumSparsities, 0.1f);
  s.thresholds_layer.assign(kNumGqaReduce * kNumSparsities, 0.2f);
  return s;
}

TEST_CASE("a consistent snapshot validates and compares equal to its copy") {
  ContextSnapshot s = MakeTiny();
  REQUIRE(ValidateSnapshot(s).ok());
  ContextSnapshot t = s;
  REQUIRE(t == s);
  t.heads[1].body_v[7] = 3.5f;
  REQUIRE_FALSE(t == s);
  REQUIRE(s.threshold_layer(GqaReduce::kMean, 0, 9) == 0.2f);
  REQUIRE(SnapshotBytes(s) > 2 * 15 * 4 * 2);
  REQUIRE(SparsityAt(0) == Approx(0.5));
  REQUIRE(SparsityAt(kNumSparsities - 1) == Approx(0.95));
}

TEST_CASE("every broken invariant is reported with the head it is in") {
  struct Case {
    const char* what;
    void (*breakit)(ContextSnapshot&);
    const char* message_part;
  };
  const Case cases[] = {
      {"version", [](ContextSnapshot& s) { s.format_version = 99; }, "format version"},
      {"dims", [](ContextSnapshot& s) { s.dims.q_heads = 3; }, "multiple of kv_heads"},
      {"sum", [](ContextSnapshot& s) { s.dims.n_tokens = 11; }, "must equal"},
      {"options", [](ContextSnapshot& s) { s.options.centroid_fraction = 0; }, "centroid_fraction"},
      {"head count", [](ContextSnapshot& s) { s.heads.pop_back(); }, "layers * kv_heads"},
      {"thresholds", [](ContextSnapshot& s) { s.thresholds_layer.pop_back(); }, "thresholds"},
      {"nan threshold", [](ContextSnapshot& s) { s.thresholds_global[3] = std::nanf(""); },
       "finite"},
      {"sink", [](ContextSnapshot& s) { s.heads[1].sink_v.pop_back(); }, "kv head 1: sink"},
      {"window", [](ContextSnapshot& s) { s.heads[0].window_k.push_back(0); }, "window"},
      {"body", [](ContextSnapshot& s) { s.heads[0].body_positions.pop_back(); }, "body"},
      {"counts",
       [](ContextSnapshot& s) {
         s.heads[1].counts = {3, 2};
       },
       "counts[0]"},
      {"offsets",
       [](ContextSnapshot& s) {
         s.heads[1].offsets = {0, 5, 5};
       },
       "strictly"},
      {"offsets end",
       [](ContextSnapshot& s) {
         s.heads[1].offsets = {0, 2, 4};
       },
       "end at 5"},
      {"positions", [](ContextSnapshot& s) { s.heads[0].body_positions[0] = 2; }, "permutation"},
      {"position range", [](ContextSnapshot& s) { s.heads[0].body_positions[0] = 7; },
       "permutation"},
      {"coarse",
       [](ContextSnapshot& s) {
         s.heads[0].coarse_members = {0, 0};
       },
       "fine cluster"},
      {"coarse shape", [](ContextSnapshot& s) { s.heads[0].coarse_centroids.clear(); }, "coarse"},
      {"inf key",
       [](ContextSnapshot& s) { s.heads[1].body_k[4] = std::numeric_limits<float>::infinity(); },
       "non-finite"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    ContextSnapshot s = MakeTiny();
    c.breakit(s);
    Status st = ValidateSnapshot(s);
    REQUIRE(st.code() == StatusCode::kInvalidArgument);
    REQUIRE_THAT(st.message(), Catch::Contains(c.message_part));
  }
}

TEST_CASE("squeeze options reject bad values") {
  SqueezeOptions o;
  REQUIRE(o.Validate().ok());
  o.kmeans_iterations = 0;
  REQUIRE_THAT(o.Validate().message(), Catch::Contains("kmeans_iterations"));
  o = {};
  o.sink_tokens = -1;
  REQUIRE_THAT(o.Validate().message(), Catch::Contains("sink_tokens"));
  o = {};
  o.observation_window = -2;
  REQUIRE_THAT(o.Validate().message(), Catch::Contains("observation_window"));
  o = {};
  o.coarse_fraction = 0.5;
  REQUIRE_THAT(o.Validate().message(), Catch::Contains("coarse_fraction"));
  o = {};
  o.kmeans_tolerance = -1;
  REQUIRE_THAT(o.Validate().message(), Catch::Contains("kmeans_tolerance"));
  o = {};
  o.prefill_chunk_tokens = 0;
  REQUIRE_THAT(o.Validate().message(), Catch::Contains("prefill_chunk_tokens"));
}

}  // namespace
}  // namespace sqz
