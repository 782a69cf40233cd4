#include "engine/model/sampler.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <random>

namespace sqz {
namespace {

std::vector<float> LogitsOf(std::vector<double> probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)) + 3.0f);  // any shift
  return l;
}

// Token frequencies over `draws` samples (fresh sampler per draw would reuse one seed: use one).
std::map<int32_t, double> Frequencies(const SamplingParams& p, const std::vector<float>& logits,
                                      int draws = 20000) {
  Sampler s(p, {});
  std::map<int32_t, double> f;
  for (int i = 0; i < draws; ++i) f[s.Sample(logits.data(), logits.size()).token] += 1.0 / draws;
  return f;
}

TEST_CASE("SamplingParams::Validate names each bad field") {
  CHECK(SamplingParams{}.Validate().ok());
  auto expect = [](SamplingParams p, const std::string& msg) {
    Status s = p.Validate();
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message() == msg);
  };
  SamplingParams p;
  p.temperature = -1;
  expect(p, "temperature must be >= 0, got -1");
  p = {};
  p.temperature = NAN;
  CHECK_FALSE(p.Validate().ok());
  p = {};
  p.top_k = -2;
  expect(p, "top_k must be >= 0, got -2");
  p = {};
  p.top_p = 0;
  expect(p, "top_p must be in (0, 1], got 0");
  p = {};
  p.top_p = 1.5;
  expect(p, "top_p must be in (0, 1], got 1.5");
  p = {};
  p.min_p = -0.5;
  expect(p, "min_p must be in [0, 1], got -0.5");
  p = {};
  p.repetition_penalty = 0;
  expect(p, "repetition_penalty must be > 0, got 0");
  p = {};
  p.presence_penalty = 2.5;
  expect(p, "presence_penalty must be in [-2, 2], got 2.5");
  p = {};
  p.frequency_penalty = -3;
  expect(p, "frequency_penalty must be in [-2, 2], got -3");
  p = {};
  p.max_tokens = 0;
  expect(p, "max_tokens must be > 0, got 0");
  p = {};
  p.stop = {"ok", ""};
  expect(p, "stop[1] is empty");
  p = {};
  p.stop_token_ids = {3, -1};
  expect(p, "stop_token_ids must be >= 0, got -1");
  p = {};
  p.top_logprobs = 21;
  expect(p, "top_logprobs must be in [0, 20], got 21");
}

TEST_CASE("Greedy picks the argmax, lowest id on ties, whatever the seed") {
  SamplingParams p;
  p.temperature = 0;
  std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
  for (uint64_t seed : {0u, 1u, 99u}) {
    p.seed = seed;
    Sampler s(p, {});
    for (int i = 0; i < 5; ++i) CHECK(s.Sample(l.data(), l.size()).token == 1);
  }
}

TEST_CASE("Same seed, same tokens; another seed, other tokens") {
  std::mt19937 gen(5);
  std::normal_distribution<float> n(0, 2);
  std::vector<float> l(129);
  for (float& x : l) x = n(gen);
  SamplingParams p;
  p.seed = 1234;
  p.top_k = 50;
  p.top_p = 0.9f;
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p, {});
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.Sample(l.data(), l.size()).token);
    return out;
  };
  CHECK(run(1234) == run(1234));
  CHECK(run(1234) != run(1235));
}

TEST_CASE("Temperature 1 samples the softmax distribution") {
  const auto l = LogitsOf({0.1, 0.2, 0.3, 0.4});
  auto f = Frequencies(SamplingParams{}, l);
  for (int t = 0; t < 4; ++t) CHECK(f[t] == Approx(0.1 * (t + 1)).margin(0.015));
}

TEST_CASE("Temperature sharpens or flattens") {
  const auto l = LogitsOf({0.1, 0.2, 0.3, 0.4});
  SamplingParams cold;
  cold.temperature = 0.05f;
  CHECK(Frequencies(cold, l, 2000)[3] > 0.99);
  SamplingParams hot;
  hot.temperature = 100.0f;
  auto f = Frequencies(hot, l);
  for (int t = 0; t < 4; ++t) CHECK(f[t] == Approx(0.25).margin(0.02));
}

TEST_CASE("top_k keeps the k most likely tokens, renormalised") {
  const auto l = LogitsOf({0.1, 0.2, 0.3, 0.4});
  SamplingParams p;
  p.top_k = 1;
  CHECK(Frequencies(p, l, 500)[3] == Approx(1.0));
  p.top_k = 2;
  auto f = Frequencies(p, l);
  CHECK(f[0] + f[1] == 0.0);
  CHECK(f[3] == Approx(0.4 / 0.7).margin(0.015));
  p.top_k = 1000;  // larger than the vocabulary: no truncation
  CHECK(Frequencies(p, l)[0] == Approx(0.1).margin(0.015));
}

TEST_CASE("top_p keeps the smallest prefix reaching p") {
  const auto l = LogitsOf({0.05, 0.15, 0.3, 0.5});
  SamplingParams p;
  p.top_p = 0.5f;
  CHECK(Frequencies(p, l, 500)[3] == Approx(1.0));
  p.top_p = 0.7f;
  auto f = Frequencies(p, l);
  CHECK(f[0] + f[1] == 0.0);
  CHECK(f[2] == Approx(0.3 / 0.8).margin(0.015));
}

TEST_CASE("min_p drops tokens below min_p * p_max") {
  const auto l = LogitsOf({0.05, 0.15, 0.3, 0.5});
  SamplingParams p;
  p.min_p = 0.5f;  // floor 0.25: keeps tokens 2 and 3
  auto f = Frequencies(p, l);
  CHECK(f[0] + f[1] == 0.0);
  CHECK(f[3] == Approx(0.5 / 0.8).margin(0.015));
}

TEST_CASE("Repetition penalty divides positive and multiplies negative logits of seen tokens") {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  std::vector<float> l = {2.0f, 1.5f, -0.1f, -0.15f};
  std::vector<int32_t> prompt = {0};
  Sampler s(p, prompt);
  CHECK(s.Sample(l.data(), l.size()).token == 1);  // 2.0 / 2 = 1.0 < 1.5
  // Now 0 and 1 are penalised (1.0, 0.75); make the negatives the contest.
  std::vector<float> neg = {-1.0f, -1.0f, -0.1f, -0.15f};
  Sampler s2(p, std::vector<int32_t>{2});
  CHECK(s2.Sample(neg.data(), neg.size()).token == 3);  // -0.1 * 2 = -0.2 < -0.15
  p.repetition_penalty = 1.0f;
  Sampler s3(p, prompt);
  CHECK(s3.Sample(l.data(), l.size()).token == 0);
}

TEST_CASE("Presence and frequency penalties count generated tokens only") {
  SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 0.3f;
  std::vector<float> l = {1.0f, 0.8f, 0.0f};
  std::vector<int32_t> prompt = {0, 0, 0};  // the prompt does not count
  Sampler s(p, prompt);
  CHECK(s.Sample(l.data(), l.size()).token == 0);  // generated once -> 0.7 < 0.8
  CHECK(s.Sample(l.data(), l.size()).token == 1);  // now 1 is penalised too: 0.7 vs 0.5
  CHECK(s.Sample(l.data(), l.size()).token == 0);

  SamplingParams f;
  f.temperature = 0;
  f.frequency_penalty = 0.15f;
  Sampler sf(f, {});
  sf.Accept(0);
  CHECK(sf.Sample(l.data(), l.size()).token == 0);  // 1.0 - 0.15 = 0.85 > 0.8
  CHECK(sf.Sample(l.data(), l.size()).token == 1);  // 1.0 - 0.30 = 0.70 < 0.8
}

TEST_CASE("Log-probabilities of the chosen token and the top-n") {
  std::vector<float> l = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  double z = 0;
  for (float x : l) z += std::exp(x);
  SamplingParams p;
  p.temperature = 0;
  p.top_logprobs = 3;
  p.repetition_penalty = 1.5f;  // penalties do not change the reported logprobs
  Sampler s(p, std::vector<int32_t>{1});
  SampleResult r = s.Sample(l.data(), l.size());
  CHECK(r.token == 3);
  CHECK(r.logprob == Approx(3.0 - std::log(z)).margin(1e-6));
  REQUIRE(r.top.size() == 3);
  CHECK(r.top[0].token == 1);
  CHECK(r.top[1].token == 3);
  CHECK(r.top[2].token == 2);
  CHECK(r.top[2].logprob == Approx(2.0 - std::log(z)).margin(1e-6));
  p.top_logprobs = 20;  // more than the vocabulary
  Sampler s2(p, {});
  CHECK(s2.Sample(l.data(), l.size()).top.size() == 5);
}

TEST_CASE("StopChecker holds back possible stop prefixes across pushes") {
  StopChecker c({"END", "\n\n"});
  CHECK(c.Push("abc E") == "abc ");
  CHECK(c.Push("N") == "");
  CHECK_FALSE(c.stopped());
  CHECK(c.Push("D and more") == "");
  CHECK(c.stopped());
  CHECK(c.matched() == "END");
  CHECK(c.Push("x") == "");
  CHECK(c.Flush() == "");

  StopChecker d({"END"});
  CHECK(d.Push("E") == "");
  CHECK(d.Push("x") == "Ex");
  CHECK(d.Push("EN") == "");
  CHECK(d.Flush() == "EN");
  CHECK_FALSE(d.stopped());

  StopChecker e({"world", "lo w"});  // the earliest match wins
  CHECK(e.Push("hel") == "he");      // "l" could start "lo w": held
  CHECK(e.Push("lo world") == "l");
  CHECK(e.matched() == "lo w");

  StopChecker u({"\xC3\xA9t\xC3\xA9"});  // "été" across tokens
  CHECK(u.Push("un \xC3\xA9") == "un ");
  CHECK(u.Push("t\xC3\xA9 chaud") == "");
  CHECK(u.stopped());

  StopChecker none({});
  CHECK(none.Push("anything") == "anything");
}

}  // namespace
}  // namespace sqz
