// DeviceSampler against the CPU Sampler (engine/model/sampler.h): greedy picks with penalties must
// be identical; seeded draws must follow the same distribution and be reproducible. Needs a CUDA
// device: without one every case WARNs "skipped: ..." and passes.
#include "engine/cuda/device_sampler.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "engine/model/sampler.h"
#include "kernels/cuda/test_util.h"

namespace sqz {
namespace {

// Device copy of host rows [rows][stride].
struct DeviceRows {
  explicit DeviceRows(const std::vector<float>& host) {
    mem = DeviceMemory::Allocate(host.size() * 4, "test logits").value();
    REQUIRE(cudaMemcpy(mem.get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice) ==
            cudaSuccess);
  }
  float* get() const { return mem.get<float>(); }
  DeviceMemory mem;
};

SamplingParams ToParams(const TokenSampling& t) {
  SamplingParams p;
  p.temperature = t.temperature;
  p.top_k = t.top_k;
  p.top_p = t.top_p;
  p.min_p = t.min_p;
  p.repetition_penalty = t.repetition_penalty;
  p.presence_penalty = t.presence_penalty;
  p.frequency_penalty = t.frequency_penalty;
  p.seed = t.seed;
  return p;
}

int32_t CpuPick(const TokenSampling& t, const float* logits, int64_t vocab) {
  Sampler s(ToParams(t), t.prompt);
  for (int32_t g : t.generated) s.Accept(g);
  return s.Sample(logits, vocab).token;
}

TEST_CASE("DeviceSampler greedy picks equal Sampler's, penalties included") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  std::mt19937 gen(7);
  for (int64_t vocab : {1, 3, 127, 1000, 32000}) {
    for (int64_t rows : {1, 3, 17}) {
      const int64_t stride = vocab + 5;  // rows padded: row_stride > vocab
      std::vector<float> logits(rows * stride, NAN);
      std::normal_distribution<float> normal(0.0f, 3.0f);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < vocab; ++i) logits[r * stride + i] = normal(gen);
      }
      std::vector<std::vector<int32_t>> prompts(rows), gens(rows);
      std::vector<TokenSampling> sampling(rows);
      std::uniform_int_distribution<int32_t> tok(-2, static_cast<int32_t>(vocab) + 1);
      std::uniform_real_distribution<float> pen(-2.0f, 2.0f);
      for (int64_t r = 0; r < rows; ++r) {
        // Penalised tokens include the current argmax often enough to move it.
        const int32_t top = static_cast<int32_t>(
            std::max_element(&logits[r * stride], &logits[r * stride] + vocab) -
            &logits[r * stride]);
        for (int i = 0; i < 20; ++i) prompts[r].push_back(i % 4 == 0 ? top : tok(gen));
        for (int i = 0; i < 30; ++i) gens[r].push_back(i % 5 == 0 ? top : tok(gen));
        TokenSampling& t = sampling[r];
        t.repetition_penalty = r % 3 == 0 ? 1.0f : 0.5f + std::abs(pen(gen));
        t.presence_penalty = r % 2 == 0 ? pen(gen) : 0.0f;
        t.frequency_penalty = r % 3 == 2 ? 0.0f : pen(gen);
        t.prompt = prompts[r];
        t.generated = gens[r];
      }
      auto sampler = DeviceSampler::Create(rows, vocab, 4096);
      REQUIRE(sampler.ok());
      DeviceRows dev(logits);
      std::vector<int32_t> tokens(rows, -1);
      const Status st = (*sampler)->Sample(dev.get(), rows, stride, sampling, tokens.data(), 0);
      INFO(st.ToString());
      REQUIRE(st.ok());
      for (int64_t r = 0; r < rows; ++r) {
        INFO("vocab " << vocab << " row " << r);
        CHECK(tokens[r] == CpuPick(sampling[r], &logits[r * stride], vocab));
      }
    }
  }
}

TEST_CASE("DeviceSampler draws follow Sampler's distribution and are reproducible") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const int64_t vocab = 129, rows = 32768;
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> row(vocab);
  for (float& x : row) x = normal(gen);
  struct Case {
    float temperature;
    int32_t top_k;
    float top_p, min_p;
  };
  for (const Case& c : {Case{1.0f, 0, 1.0f, 0.0f}, Case{0.7f, 20, 1.0f, 0.0f},
                        Case{1.3f, 0, 0.8f, 0.0f}, Case{1.0f, 0, 1.0f, 0.05f}}) {
    std::vector<float> logits;
    for (int64_t r = 0; r < rows; ++r) logits.insert(logits.end(), row.begin(), row.end());
    std::vector<TokenSampling> sampling(rows);
    for (int64_t r = 0; r < rows; ++r) {
      sampling[r].temperature = c.temperature;
      sampling[r].top_k = c.top_k;
      sampling[r].top_p = c.top_p;
      sampling[r].min_p = c.min_p;
      sampling[r].seed = 1000 + r;
      sampling[r].counter = r % 7;
    }
    auto sampler = DeviceSampler::Create(rows, vocab, 0);
    REQUIRE(sampler.ok());
    std::vector<int32_t> a(rows), b(rows);
    for (std::vector<int32_t>* out : {&a, &b}) {
      DeviceRows dev(logits);
      REQUIRE((*sampler)->Sample(dev.get(), rows, vocab, sampling, out->data(), 0).ok());
    }
    CHECK(a == b);  // same (seed, counter), same tokens
    std::vector<double> dev_hist(vocab, 0), cpu_hist(vocab, 0);
    for (int32_t t : a) {
      REQUIRE(t >= 0);
      REQUIRE(t < vocab);
      dev_hist[t] += 1.0 / rows;
    }
    for (int64_t r = 0; r < rows; ++r)
      cpu_hist[CpuPick(sampling[r], row.data(), vocab)] += 1.0 / rows;
    double tv = 0;
    for (int64_t i = 0; i < vocab; ++i) tv += 0.5 * std::abs(dev_hist[i] - cpu_hist[i]);
    INFO("temperature " << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p
                        << " min_p " << c.min_p << ": total variation " << tv);
    // Two samples of 32768 draws from one distribution over <= 129 tokens: TV <= ~0.03 by chance.
    CHECK(tv < 0.06);
    if (c.top_k > 0) {
      // Nothing outside the top k: the k-th largest logit bounds every drawn token's logit.
      std::vector<float> sorted = row;
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      for (int32_t t : a) REQUIRE(row[t] >= sorted[c.top_k - 1]);
    }
  }
}

TEST_CASE("DeviceSampler refuses bad arguments with clear messages") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  CHECK(DeviceSampler::Create(0, 10, 0).status().code() == StatusCode::kInvalidArgument);
  CHECK(DeviceSampler::Create(1, 0, 0).status().code() == StatusCode::kInvalidArgument);
  CHECK(DeviceSampler::Create(1, 10, -1).status().code() == StatusCode::kInvalidArgument);
  auto sampler = DeviceSampler::Create(4, 10, 3);
  REQUIRE(sampler.ok());
  std::vector<float> logits(4 * 10, 0.5f);
  DeviceRows dev(logits);
  std::vector<int32_t> tokens(4);
  std::vector<TokenSampling> two(2);
  // Rows and sampling entries disagree; too many rows; short stride.
  CHECK((*sampler)->Sample(dev.get(), 3, 10, two, tokens.data(), 0).code() ==
        StatusCode::kInvalidArgument);
  std::vector<TokenSampling> five(5);
  CHECK((*sampler)->Sample(dev.get(), 5, 10, five, tokens.data(), 0).code() ==
        StatusCode::kInvalidArgument);
  CHECK((*sampler)->Sample(dev.get(), 2, 9, two, tokens.data(), 0).code() ==
        StatusCode::kInvalidArgument);
  struct Bad {
    const char* field;
    TokenSampling s;
  };
  std::vector<Bad> bad(7);
  bad[0] = {"temperature", {}};
  bad[0].s.temperature = -1.0f;
  bad[1] = {"top_k", {}};
  bad[1].s.top_k = -3;
  bad[2] = {"top_p", {}};
  bad[2].s.top_p = 0.0f;
  bad[3] = {"min_p", {}};
  bad[3].s.min_p = 1.5f;
  bad[4] = {"repetition_penalty", {}};
  bad[4].s.repetition_penalty = 0.0f;
  bad[5] = {"presence_penalty", {}};
  bad[5].s.presence_penalty = 2.5f;
  bad[6] = {"frequency_penalty", {}};
  bad[6].s.frequency_penalty = NAN;
  for (const Bad& b : bad) {
    std::vector<TokenSampling> rows = {TokenSampling{}, b.s};
    const Status st = (*sampler)->Sample(dev.get(), 2, 10, rows, tokens.data(), 0);
    INFO(st.ToString());
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK(st.message().find(std::string("sampling[1].") + b.field) != std::string::npos);
  }
  // Four distinct penalised tokens against a capacity of 3.
  const std::vector<int32_t> prompt = {1, 2, 3, 4};
  std::vector<TokenSampling> pen(1);
  pen[0].repetition_penalty = 1.2f;
  pen[0].prompt = prompt;
  const Status st = (*sampler)->Sample(dev.get(), 1, 10, pen, tokens.data(), 0);
  CHECK(st.code() == StatusCode::kResourceExhausted);
  CHECK(st.message().find("max_penalty_tokens 3") != std::string::npos);
  CHECK(DeviceSampler::PenaltyTokensBound(pen) == 4);
  // The refusal left the sampler usable: repeated prompt tokens count once.
  const std::vector<int32_t> repeated = {1, 1, 2, 2, 3};
  pen[0].prompt = repeated;
  CHECK((*sampler)->Sample(dev.get(), 1, 10, pen, tokens.data(), 0).ok());
}

}  // namespace
}  // namespace sqz
