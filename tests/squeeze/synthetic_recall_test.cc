// The synthetic benchmark of the brief: N = 32K keys, d = 128, from a Gaussian mixture; queries
// near some mixture means. At KV budget 0.125 with 5% centroids, attention-mass recall >= 0.9, flat
// and hierarchical.
#include <catch2/catch.hpp>

#include "engine/squeeze/fidelity_metrics.h"
#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/synthetic.h"

namespace sqz {
namespace {

TEST_CASE("synthetic 32K x 128: recall >= 0.9 at budget 0.125 with 5% centroids") {
  SyntheticSpec spec;  // defaults: 32768 x 128, 256 components
  std::vector<float> queries;
  const CapturedContext c = SyntheticContext(spec, 32, &queries);
  SqueezeOptions o;  // 5% centroids, 1% coarse
  auto snap = BuildSnapshot(c, o);
  REQUIRE(snap.ok());
  REQUIRE(snap->heads[0].counts.size() == 1633);
  for (bool hier : {false, true}) {
    AttentionOptions ao;
    ao.kv_budget = 0.125;
    ao.block_size = 1;
    ao.hierarchical = hier;
    auto f = MeasureAttentionFidelity(*snap, 0, queries.data(), 32, 0, ao);
    REQUIRE(f.ok());
    INFO("hierarchical " << hier << " recall " << f->mass_recall << " share "
                         << f->keys_read_share);
    REQUIRE(f->mass_recall >= 0.9);
    REQUIRE(f->keys_read_share < 0.16);
  }
  // Same with every key: recall 1.
  AttentionOptions all;
  all.kv_budget = 1.0;
  auto f = MeasureAttentionFidelity(*snap, 0, queries.data(), 4, 0, all);
  REQUIRE(f.ok());
  REQUIRE(f->mass_recall == Approx(1.0));
  REQUIRE(f->rel_l2_error == 0.0);
}

}  // namespace
}  // namespace sqz
