// Host-side checks of the sparse prefill's planning (no GPU needed): its query blocks are the
// CPU's (SqueezedContextAttention::Select), and which prefill items run sparse.
#include "engine/cuda/context_prefill.h"

#include <catch2/catch.hpp>
#include <utility>
#include <vector>

#include "engine/squeeze/squeezed_attention.h"
#include "engine/squeeze/test_util.h"

namespace sqz {
namespace {

TEST_CASE("SqueezedPrefill blocks are the CPU's blocks of request positions") {
  SqueezeOptions so;
  so.centroid_fraction = 0.1;
  const CapturedContext cap = testing::RandomCaptured(1, 1, 2, 8, 300, so, 5);
  auto snap = BuildSnapshot(cap, so);
  REQUIRE(snap.ok());
  for (int64_t block : {1, 3, 16, 64}) {
    AttentionOptions ao;
    ao.block_size = block;
    auto attn = MakeContextAttention(*snap, ao);
    REQUIRE(attn.ok());
    const auto* sq = dynamic_cast<const SqueezedContextAttention*>(attn->get());
    REQUIRE(sq != nullptr);
    for (int64_t n : {1, 2, 63, 64, 65, 130, 200}) {
      for (int64_t first_pos : {0, 1, 5, 63, 64, 100}) {
        INFO("block " << block << " n " << n << " first_pos " << first_pos);
        std::vector<float> q(n * 2 * 8, 0.5f);
        std::vector<std::pair<int64_t, int64_t>> blocks;
        std::vector<SelectionResult> selections;
        sq->Select(0, q.data(), n, first_pos, &blocks, &selections);
        std::vector<int32_t> want = {0};
        for (const auto& [t0, t1] : blocks) {
          REQUIRE(t0 == want.back());
          want.push_back(static_cast<int32_t>(t1));
        }
        CHECK(SqueezedPrefill::BlockStarts(n, first_pos, block) == want);
      }
    }
  }
}

}  // namespace
}  // namespace sqz
