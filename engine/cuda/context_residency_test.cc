// ContextResidency: budget accounting, LRU eviction of unused contexts, references of live
// sequences, and the RESOURCE_EXHAUSTED messages. Host only.
#include "engine/cuda/context_residency.h"

#include <catch2/catch.hpp>
#include <random>

namespace sqz {
namespace {

const void* K(int i) { return reinterpret_cast<const void*>(static_cast<uintptr_t>(0x1000 + i)); }

TEST_CASE("ContextResidency: admits within the budget and evicts unused ones, LRU first") {
  ContextResidency r(100);
  auto plan = r.PlanAdmission(K(1), 40, "a");
  REQUIRE(plan.ok());
  CHECK(plan->empty());
  r.Insert(K(1), 40);
  r.Insert(K(2), 30);
  r.Insert(K(3), 30);
  CHECK(r.used_bytes() == 100);
  r.Touch(K(1));  // order now 2, 3, 1
  CHECK(r.LruOrder() == std::vector<const void*>{K(2), K(3), K(1)});
  plan = r.PlanAdmission(K(4), 50, "d");
  REQUIRE(plan.ok());
  CHECK(*plan == std::vector<const void*>{K(2), K(3)});
  // A referenced context is skipped.
  r.Acquire(K(2));
  plan = r.PlanAdmission(K(4), 50, "d");
  REQUIRE(plan.ok());
  CHECK(*plan == std::vector<const void*>{K(3), K(1)});
  for (const void* k : *plan) r.Erase(k);
  r.Insert(K(4), 50);
  CHECK(r.used_bytes() == 80);
  CHECK(r.evictions() == 2);
  CHECK(r.size() == 2);
  r.Release(K(2));
  CHECK(r.refs(K(2)) == 0);
}

TEST_CASE("ContextResidency: refusals name the bytes, the budget and what holds it") {
  ContextResidency r(1000);
  auto too_big = r.PlanAdmission(K(1), 1001, "the fixed context (77 tokens)");
  REQUIRE(too_big.status().code() == StatusCode::kResourceExhausted);
  CHECK(too_big.status().message().find("the fixed context (77 tokens) needs 1001 bytes") !=
        std::string::npos);
  CHECK(too_big.status().message().find("whole GPU context budget of 1000 bytes") !=
        std::string::npos);
  r.Insert(K(1), 600);
  r.Acquire(K(1));
  r.Insert(K(2), 300);
  auto busy = r.PlanAdmission(K(3), 500, "c");
  REQUIRE(busy.status().code() == StatusCode::kResourceExhausted);
  CHECK(busy.status().message().find("running requests hold 600 of the 1000-byte") !=
        std::string::npos);
  // Nothing changed.
  CHECK(r.used_bytes() == 900);
  CHECK(r.size() == 2);
  auto again = r.PlanAdmission(K(2), 1, "b");
  CHECK(again.status().code() == StatusCode::kInvalidArgument);
  // After the sequence ends, the same request fits by evicting both.
  r.Release(K(1));
  auto ok = r.PlanAdmission(K(3), 1000, "c");
  REQUIRE(ok.ok());
  CHECK(ok->size() == 2);
}

TEST_CASE("ContextResidency: random admissions never exceed the budget nor evict in-use ones") {
  std::mt19937 rng(7);
  ContextResidency r(1 << 20);
  std::vector<int> refs(64, 0);
  for (int step = 0; step < 3000; ++step) {
    const int k = static_cast<int>(rng() % 64);
    if (!r.Contains(K(k))) {
      const int64_t bytes = 1 + rng() % (1 << 18);
      auto plan = r.PlanAdmission(K(k), bytes, "x");
      if (!plan.ok()) {
        REQUIRE(plan.status().code() == StatusCode::kResourceExhausted);
        continue;
      }
      for (const void* e : *plan) {
        REQUIRE(r.refs(e) == 0);
        r.Erase(e);
      }
      r.Insert(K(k), bytes);
    } else if (rng() % 2 == 0) {
      r.Acquire(K(k));
      ++refs[k];
    } else if (refs[k] > 0) {
      r.Release(K(k));
      --refs[k];
    } else {
      r.Touch(K(k));
    }
    REQUIRE(r.used_bytes() <= r.budget_bytes());
    for (int i = 0; i < 64; ++i) {
      if (refs[i] > 0) REQUIRE(r.Contains(K(i)));
      REQUIRE(r.refs(K(i)) == (r.Contains(K(i)) ? refs[i] : 0));
    }
  }
}

}  // namespace
}  // namespace sqz
