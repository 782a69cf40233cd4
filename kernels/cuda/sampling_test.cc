#include "kernels/cuda/sampling.h"

#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <map>

#include "kernels/cuda/philox.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::RandomFloats;

int32_t RefArgMax(const float* x, int64_t vocab) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t idx = -1;
  for (int64_t i = 0; i < vocab; ++i) {
    if (x[i] > best || (x[i] == best && idx < 0)) {
      best = x[i];
      idx = i;
    }
  }
  return idx < 0 ? 0 : static_cast<int32_t>(idx);
}

uint64_t Weight(float p) { return static_cast<uint64_t>(p * 4294967296.0f); }

struct RefResult {
  int32_t id;
  std::vector<float> p;  // per token
  uint32_t threshold;    // kept: bits(p) >= threshold
};

// The sampling definition of sampling.h, on the host.
RefResult RefSample(const float* x, int64_t vocab, float temp, int32_t top_k, float top_p,
                    float min_p, uint64_t seed, uint64_t counter) {
  RefResult res{RefArgMax(x, vocab), {}, 0};
  const float top = x[res.id];
  if (!(temp > 0.0f) || !std::isfinite(top)) return res;
  res.p.resize(vocab);
  std::vector<uint32_t> keys(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    const float e = std::exp((x[i] - top) / temp);
    res.p[i] = e >= 0.0f ? e : 0.0f;
    keys[i] = std::bit_cast<uint32_t>(res.p[i]);
  }
  std::vector<uint32_t> sorted = keys;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  uint32_t thr = 0;
  if (top_k > 0 && top_k < vocab) thr = sorted[top_k - 1];
  if (top_p > 0.0f && top_p < 1.0f) {
    std::map<uint32_t, uint64_t, std::greater<>> mass_by_key;
    uint64_t mass = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (keys[i] >= thr) {
        mass_by_key[keys[i]] += Weight(res.p[i]);
        mass += Weight(res.p[i]);
      }
    }
    const uint64_t need = static_cast<uint64_t>(std::ceil(static_cast<double>(top_p) * mass));
    uint64_t cum = 0;
    for (const auto& [key, m] : mass_by_key) {
      cum += m;
      if (cum >= need) {
        thr = std::max(thr, key);
        break;
      }
    }
  }
  if (min_p > 0.0f) thr = std::max(thr, std::bit_cast<uint32_t>(std::min(min_p, 1.0f)));
  res.threshold = thr;
  uint64_t total = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (keys[i] >= thr) total += Weight(res.p[i]);
  }
  const double u = PhiloxUniform(seed, counter);
  uint64_t target = static_cast<uint64_t>(u * static_cast<double>(total));
  if (target >= total) target = total - 1;
  uint64_t cum = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (keys[i] < thr) continue;
    cum += Weight(res.p[i]);
    if (cum > target) {
      res.id = static_cast<int32_t>(i);
      break;
    }
  }
  return res;
}

struct Rows {
  std::vector<float> temp, top_p, min_p;
  std::vector<int32_t> top_k;
  std::vector<uint64_t> seed, counter;
};

template <typename T>
std::vector<int32_t> RunSample(const std::vector<float>& logits, int64_t batch, int64_t vocab,
                               const Rows& rows) {
  std::vector<T> host(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) host[i] = static_cast<T>(logits[i]);
  DeviceBuffer<T> dl(host);
  DeviceBuffer<float> temp(rows.temp), top_p(rows.top_p), min_p(rows.min_p);
  DeviceBuffer<int32_t> top_k(rows.top_k), ids(batch);
  DeviceBuffer<uint64_t> seed(rows.seed), counter(rows.counter);
  DeviceBuffer<char> ws(SamplingWorkspaceBytes(batch, vocab));
  SamplingParams sp;
  sp.temperature = temp.get();
  sp.top_k = top_k.get();
  sp.top_p = top_p.get();
  sp.min_p = min_p.get();
  sp.seed = seed.get();
  sp.counter = counter.get();
  const Status s =
      Sample<T>(dl.get(), batch, vocab, vocab, sp, ids.get(), ws.get(), ws.size(), nullptr);
  INFO(s.ToString());
  REQUIRE(s.ok());
  return ids.Download();
}

TEMPLATE_TEST_CASE("ArgMax picks the first maximum and ignores NaN", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 1;
  for (int64_t vocab : {1, 3, 1000, 128256}) {
    for (int64_t batch : {1, 3, 129}) {
      const int64_t stride = vocab + 3;
      auto x = testing::ToFloat(std::vector<TestType>([&] {
        auto f = RandomFloats(batch * stride, seed++, 2.0f);
        std::vector<TestType> t(f.size());
        for (size_t i = 0; i < f.size(); ++i) t[i] = static_cast<TestType>(f[i]);
        return t;
      }()));
      if (vocab >= 3) {
        x[0 * stride + 2] = 100.0f;  // a tie in row 0: the lower index wins
        x[0 * stride + 1] = 100.0f;
        x[0 * stride + 0] = std::numeric_limits<float>::quiet_NaN();
      }
      if (batch >= 3) {
        for (int64_t i = 0; i < vocab; ++i)
          x[2 * stride + i] = std::numeric_limits<float>::quiet_NaN();
      }
      std::vector<TestType> host(x.size());
      for (size_t i = 0; i < x.size(); ++i) host[i] = static_cast<TestType>(x[i]);
      DeviceBuffer<TestType> dx(host);
      DeviceBuffer<int32_t> ids(batch);
      REQUIRE(ArgMax<TestType>(dx.get(), batch, vocab, stride, ids.get(), nullptr).ok());
      const auto got = ids.Download();
      for (int64_t r = 0; r < batch; ++r) {
        INFO("vocab=" << vocab << " row=" << r);
        REQUIRE(got[r] == RefArgMax(x.data() + r * stride, vocab));
      }
      if (vocab >= 3) REQUIRE(got[0] == 1);
      if (batch >= 3) REQUIRE(got[2] == 0);
    }
  }
}

TEMPLATE_TEST_CASE("Sample follows the host definition of temperature/top-k/top-p/min-p", "[cuda]",
                   float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 10;
  for (int64_t vocab : {1, 3, 1000, 32000, 128256}) {
    const int64_t batch = vocab > 100000 ? 16 : 96;
    auto logits = RandomFloats(batch * vocab, seed++, 3.0f);
    // What the kernel will see (bf16-rounded for bf16).
    for (float& v : logits) v = static_cast<float>(static_cast<TestType>(v));
    std::mt19937 gen(seed++);
    const float temps[] = {0.0f, 0.5f, 1.0f, 1.7f};
    const int32_t ks[] = {0, 1, 5, 50, static_cast<int32_t>(vocab)};
    const float ps[] = {1.0f, 0.9f, 0.5f, 0.05f};
    const float mins[] = {0.0f, 0.05f, 0.3f};
    Rows rows;
    for (int64_t r = 0; r < batch; ++r) {
      rows.temp.push_back(temps[gen() % 4]);
      rows.top_k.push_back(ks[gen() % 5]);
      rows.top_p.push_back(ps[gen() % 4]);
      rows.min_p.push_back(mins[gen() % 3]);
      rows.seed.push_back((uint64_t{gen()} << 32) | gen());
      rows.counter.push_back(gen() % 1000);
    }
    const auto got = RunSample<TestType>(logits, batch, vocab, rows);
    int mismatches = 0;
    for (int64_t r = 0; r < batch; ++r) {
      INFO("vocab=" << vocab << " row=" << r << " T=" << rows.temp[r] << " k=" << rows.top_k[r]
                    << " p=" << rows.top_p[r] << " min_p=" << rows.min_p[r]);
      const RefResult want =
          RefSample(logits.data() + r * vocab, vocab, rows.temp[r], rows.top_k[r], rows.top_p[r],
                    rows.min_p[r], rows.seed[r], rows.counter[r]);
      REQUIRE(got[r] >= 0);
      REQUIRE(got[r] < vocab);
      if (got[r] != want.id) {
        // Only a last-bit difference of expf between host and device may move a draw, and then
        // only to a token that is (to rounding) in the kept set.
        ++mismatches;
        REQUIRE(!want.p.empty());
        REQUIRE(want.p[got[r]] >= std::bit_cast<float>(want.threshold) * (1.0f - 1e-5f));
      }
    }
    REQUIRE(mismatches <= batch / 50);
  }
}

TEST_CASE("Sample is reproducible, batch invariant and seed/counter sensitive", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const int64_t vocab = 5000, batch = 64;
  auto logits = RandomFloats(vocab, 5, 1.0f);  // flat-ish: many candidates
  std::vector<float> all;
  for (int r = 0; r < batch; ++r) all.insert(all.end(), logits.begin(), logits.end());
  Rows rows;
  for (int r = 0; r < batch; ++r) {
    rows.temp.push_back(1.0f);
    rows.top_k.push_back(0);
    rows.top_p.push_back(0.95f);
    rows.min_p.push_back(0.0f);
    rows.seed.push_back(1234);
    rows.counter.push_back(r);
  }
  const auto a = RunSample<float>(all, batch, vocab, rows);
  const auto b = RunSample<float>(all, batch, vocab, rows);
  REQUIRE(a == b);
  std::map<int32_t, int> distinct;
  for (int32_t id : a) ++distinct[id];
  REQUIRE(distinct.size() > batch / 4);  // different counters draw differently
  // Row 17 alone gives the same token as in the batch.
  Rows one;
  one.temp = {1.0f};
  one.top_k = {0};
  one.top_p = {0.95f};
  one.min_p = {0.0f};
  one.seed = {1234};
  one.counter = {17};
  REQUIRE(RunSample<float>(logits, 1, vocab, one)[0] == a[17]);
  one.seed = {1235};
  int same = 0;
  for (uint64_t c = 0; c < 32; ++c) {
    one.counter = {c};
    same += RunSample<float>(logits, 1, vocab, one)[0] == a[c];
  }
  REQUIRE(same < 8);  // another seed is another stream
}

TEST_CASE("Sample frequencies follow the filtered distribution", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const std::vector<double> probs = {0.05, 0.1, 0.25, 0.6, 0.0};
  const int64_t vocab = 5, n = 40000;
  std::vector<float> row(vocab);
  for (int i = 0; i < vocab; ++i) row[i] = probs[i] > 0 ? std::log(probs[i]) : -30.0f;
  std::vector<float> all;
  for (int64_t r = 0; r < n; ++r) all.insert(all.end(), row.begin(), row.end());
  struct Setting {
    int32_t top_k;
    float top_p, min_p;
    std::vector<double> expect;
  };
  const std::vector<Setting> settings = {
      {0, 1.0f, 0.0f, {0.05, 0.1, 0.25, 0.6, 0.0}},
      {2, 1.0f, 0.0f, {0, 0, 0.25 / 0.85, 0.6 / 0.85, 0}},  // top-2
      {0, 0.8f, 0.0f, {0, 0, 0.25 / 0.85, 0.6 / 0.85, 0}},  // smallest set with mass >= 0.8
      {0, 1.0f, 0.3f, {0, 0, 0.25 / 0.85, 0.6 / 0.85, 0}},  // p >= 0.3 * 0.6 = 0.18
      {0, 1.0f, 0.1f, {0, 0.1 / 0.95, 0.25 / 0.95, 0.6 / 0.95, 0}},
  };
  for (const Setting& s : settings) {
    Rows rows;
    for (int64_t r = 0; r < n; ++r) {
      rows.temp.push_back(1.0f);
      rows.top_k.push_back(s.top_k);
      rows.top_p.push_back(s.top_p);
      rows.min_p.push_back(s.min_p);
      rows.seed.push_back(99);
      rows.counter.push_back(r);
    }
    const auto ids = RunSample<float>(all, n, vocab, rows);
    std::vector<int> count(vocab, 0);
    for (int32_t id : ids) ++count[id];
    for (int i = 0; i < vocab; ++i) {
      INFO("top_k=" << s.top_k << " top_p=" << s.top_p << " min_p=" << s.min_p << " token " << i);
      const double e = s.expect[i];
      const double sigma = std::sqrt(n * e * (1 - e)) + 1e-9;
      if (e == 0.0) {
        REQUIRE(count[i] == 0);
      } else {
        REQUIRE(std::fabs(count[i] - n * e) < 5 * sigma);
      }
    }
  }
  // Temperature 0 and top_k 1 are greedy.
  Rows greedy;
  for (int r = 0; r < 8; ++r) {
    greedy.temp.push_back(r % 2 ? 0.0f : 1.0f);
    greedy.top_k.push_back(r % 2 ? 0 : 1);
    greedy.top_p.push_back(1.0f);
    greedy.min_p.push_back(0.0f);
    greedy.seed.push_back(r);
    greedy.counter.push_back(r);
  }
  std::vector<float> eight(all.begin(), all.begin() + 8 * vocab);
  for (int32_t id : RunSample<float>(eight, 8, vocab, greedy)) REQUIRE(id == 3);
}

TEST_CASE("Sample and ArgMax reject bad arguments", "[cuda]") {
  const float* logits = reinterpret_cast<const float*>(0x1000);
  int32_t* ids = reinterpret_cast<int32_t*>(0x1000);
  REQUIRE(ArgMax<float>(logits, 2, 10, 5, ids, nullptr).code() == StatusCode::kInvalidArgument);
  REQUIRE(ArgMax<float>(logits, 2, 0, 5, ids, nullptr).code() == StatusCode::kInvalidArgument);
  SamplingParams sp;
  Status s = Sample<float>(logits, 2, 10, 10, sp, ids, nullptr, 0, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("seed") != std::string::npos);
  sp.temperature = reinterpret_cast<const float*>(0x1000);
  sp.seed = reinterpret_cast<const uint64_t*>(0x1000);
  sp.counter = reinterpret_cast<const uint64_t*>(0x1000);
  s = Sample<float>(logits, 2, 10, 10, sp, ids, reinterpret_cast<void*>(0x1000), 79, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("workspace needs 80 bytes") != std::string::npos);
}

}  // namespace
}  // namespace sqz::cuda
