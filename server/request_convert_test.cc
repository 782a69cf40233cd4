#include "server/request_convert.h"

#include <catch2/catch.hpp>

namespace sqz {
namespace {

namespace v1 = squeeze::v1;

TEST_CASE("context ids and names") {
  CHECK(ValidateApiContextId("manual-v2.1_a").ok());
  CHECK(ValidateApiContextId("0abc").ok());
  CHECK(ValidateApiContextId("").code() == StatusCode::kInvalidArgument);
  CHECK(ValidateApiContextId(std::string(129, 'a')).code() == StatusCode::kInvalidArgument);
  auto bad = ValidateApiContextId("Bad/Id");
  CHECK(bad.code() == StatusCode::kInvalidArgument);
  CHECK(bad.message().find("offset 0") != std::string::npos);
  CHECK(ValidateApiContextId("-lead").code() == StatusCode::kInvalidArgument);
  CHECK(*ParseContextName("contexts/abc") == "abc");
  CHECK(ParseContextName("abc").status().message().find("contexts/{id}") != std::string::npos);
  CHECK(ParseContextName("contexts/a b").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("UTF-8 validation names the field and the offset") {
  CHECK(ValidateUtf8("héllo wörld ✓ 🎉", "text").ok());
  auto s = ValidateUtf8(std::string("ok\xff", 3), "prompt text");
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() == "prompt text is not valid UTF-8 (first bad byte at offset 2)");
  CHECK(!ValidateUtf8("\xc0\x80", "t").ok());          // overlong
  CHECK(!ValidateUtf8("\xed\xa0\x80", "t").ok());      // surrogate
  CHECK(!ValidateUtf8("\xe2\x82", "t").ok());          // truncated
}

TEST_CASE("sampling: defaults and every range error") {
  LimitsOptions limits;
  limits.max_new_tokens = 100;
  limits.default_max_tokens = 50;
  v1::SamplingParams p;
  auto s = SamplingFromProto(p, limits, 7);
  REQUIRE(s.ok());
  CHECK(s->max_tokens == 50);
  CHECK(s->temperature == 0.0f);
  CHECK(s->top_p == 1.0f);
  CHECK(s->seed == 7);
  auto err = [&](auto mutate, const std::string& want) {
    v1::SamplingParams q;
    mutate(q);
    auto r = SamplingFromProto(q, limits, 1);
    INFO(want);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find(want) != std::string::npos);
  };
  err([](auto& q) { q.set_max_tokens(0); }, "max_tokens must be in [1, 100], got 0");
  err([](auto& q) { q.set_max_tokens(101); }, "max_tokens must be in [1, 100], got 101");
  err([](auto& q) { q.set_temperature(-1); }, "temperature must be in [0, 100]");
  err([](auto& q) { q.set_top_p(0); }, "top_p must be in (0, 1]");
  err([](auto& q) { q.set_top_p(1.5); }, "top_p must be in (0, 1]");
  err([](auto& q) { q.set_top_k(-1); }, "top_k must be >= 0, got -1");
  err([](auto& q) { q.set_min_p(2); }, "min_p must be in [0, 1]");
  err([](auto& q) { q.add_stop(""); }, "stop strings must have 1..256 bytes");
  err([](auto& q) { q.set_top_logprobs(50); }, "top_logprobs");
}

TEST_CASE("attention and squeeze options: defaults from config, range errors") {
  SqueezeDefaults d;
  v1::AttentionOptions p;
  auto a = AttentionOptionsFromProto(p, d);
  REQUIRE(a.ok());
  CHECK(a->mode == AttentionMode::kSqueezed);
  CHECK(a->kv_budget == Approx(0.125));
  p.set_mode(v1::AttentionOptions::DENSE);
  CHECK(AttentionOptionsFromProto(p, d)->mode == AttentionMode::kDense);
  p.set_kv_budget(1.5);
  CHECK(AttentionOptionsFromProto(p, d).status().message().find("attention.kv_budget must be in "
                                                                "(0, 1], got 1.5") !=
        std::string::npos);
  v1::AttentionOptions t;
  t.set_target_sparsity(0.3f);
  CHECK(AttentionOptionsFromProto(t, d).status().code() == StatusCode::kInvalidArgument);

  v1::SqueezeOptions so;
  auto o = SqueezeOptionsFromProto(so, d);
  REQUIRE(o.ok());
  CHECK(o->observation_window == 100);
  CHECK(o->centroid_fraction == Approx(0.05));
  so.set_centroid_fraction(0.9f);
  CHECK(SqueezeOptionsFromProto(so, d).status().message().find("centroid_fraction") !=
        std::string::npos);
}

}  // namespace
}  // namespace sqz
