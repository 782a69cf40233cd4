#include "engine/squeeze/defaults.h"

#include <catch2/catch.hpp>

namespace sqz {
namespace {

TEST_CASE("the documented defaults map onto the squeeze options") {
  SqueezeDefaults d;
  auto ingest = IngestOptionsFrom(d, 256);
  REQUIRE(ingest.ok());
  REQUIRE(*ingest == SqueezeOptions{});  // the same defaults on both sides
  auto att = AttentionOptionsFrom(d);
  REQUIRE(att.ok());
  REQUIRE(att->mode == AttentionMode::kSqueezed);
  REQUIRE(att->policy == SelectionPolicy::kBudget);
  REQUIRE(att->kv_budget == 0.125);
  REQUIRE(att->sparsity == 0.7);
  REQUIRE(att->gqa_reduce == GqaReduce::kMax);
  REQUIRE(att->block_size == 64);
  REQUIRE_FALSE(att->hierarchical);
  d.default_mode = "dense";
  d.default_policy = "threshold";
  d.gqa_reduce = "mean";
  att = AttentionOptionsFrom(d);
  REQUIRE(att.ok());
  REQUIRE(att->mode == AttentionMode::kDense);
  REQUIRE(att->policy == SelectionPolicy::kThreshold);
  REQUIRE(att->gqa_reduce == GqaReduce::kMean);
}

TEST_CASE("bad defaults are rejected with the accepted values") {
  SqueezeDefaults d;
  d.default_mode = "sparse";
  REQUIRE_THAT(AttentionOptionsFrom(d).status().message(), Catch::Contains("\"squeezed\" or"));
  d = {};
  d.default_policy = "topk";
  REQUIRE_THAT(AttentionOptionsFrom(d).status().message(), Catch::Contains("\"budget\" or"));
  d = {};
  d.gqa_reduce = "min";
  REQUIRE_THAT(AttentionOptionsFrom(d).status().message(), Catch::Contains("\"max\" or"));
  d = {};
  d.default_kv_budget = 2;
  REQUIRE_THAT(AttentionOptionsFrom(d).status().message(), Catch::Contains("kv_budget"));
  d = {};
  d.kmeans_iterations = 0;
  REQUIRE_THAT(IngestOptionsFrom(d, 256).status().message(), Catch::Contains("kmeans_iterations"));
  d = {};
  d.centroid_fraction = 0;
  REQUIRE_THAT(IngestOptionsFrom(d, 256).status().message(), Catch::Contains("centroid_fraction"));
  REQUIRE_THAT(IngestOptionsFrom(SqueezeDefaults{}, 0).status().message(),
               Catch::Contains("prefill_chunk_tokens"));
}

}  // namespace
}  // namespace sqz
