// IngestContext on its own (the device layout the query-time kernels read): rows moved exactly into
// sink | body by cluster | window, CSR and counts, raw-mean and bf16 centroids, the coarse level,
// calibration histogram mass, timings, and every error path. The comparison with the CPU's
// BuildSnapshot is engine/squeeze_gpu/gpu_index_builder_test.cc.
#include "kernels/cuda/squeeze_ingest.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using testing::DeviceBuffer;

struct Context {
  IngestShape shape;
  std::vector<float> k, v, q;  // k, v: [layers][N][kv_heads][d] (bf16-exact values); q: window
};

// Keys around a few directions per head (so the clusters have structure), bf16-exact values.
Context MakeContext(int layers, int kv_heads, int q_heads, int d, int64_t n, int64_t sink,
                    int64_t window, int64_t k, int64_t k1, uint32_t seed) {
  Context c;
  c.shape = {layers, kv_heads, q_heads, d, n, sink, window, k, k1};
  const size_t kv = static_cast<size_t>(layers) * n * kv_heads * d;
  const std::vector<float> dirs = testing::RandomFloats(16 * d, seed);
  const std::vector<float> noise = testing::RandomFloats(kv, seed + 1, 0.3f);
  c.k.resize(kv);
  for (size_t i = 0; i < kv; ++i) c.k[i] = dirs[((i / d) % 16) * d + i % d] + noise[i];
  c.k = testing::RoundBf16(c.k);
  c.v = testing::RoundBf16(testing::RandomFloats(kv, seed + 2));
  c.q = testing::RandomFloats(static_cast<size_t>(layers) * window * q_heads * d, seed + 3);
  return c;
}

template <typename T>
void CheckIngest(const Context& c, PointType type) {
  const IngestShape& s = c.shape;
  const int heads = s.layers * s.kv_heads;
  const int64_t n = s.n_tokens, d = s.head_dim, body = n - s.sink_len - s.window_len;
  const int64_t k = s.k, k1 = s.k1;
  std::vector<T> kin, vin;
  if constexpr (sizeof(T) == 2) {
    kin = testing::ToBf16(c.k);
    vin = testing::ToBf16(c.v);
  } else {
    kin = c.k;
    vin = c.v;
  }
  DeviceBuffer<T> keys(kin), values(vin), k_out(kin.size()), v_out(vin.size());
  DeviceBuffer<float> q(c.q), cen(heads * k * d), ccen(heads * k1 * d);
  DeviceBuffer<int32_t> pos(heads * body), counts(heads * k), offsets(heads * (k + 1)),
      coff(heads * (k1 + 1)), cmem(heads * k);
  DeviceBuffer<__nv_bfloat16> cen16(heads * k * d), ccen16(heads * k1 * d);
  DeviceBuffer<uint64_t> hist(2 * s.layers * kCalibrationBins);
  auto ws_bytes = IngestWorkspaceBytes(s);
  REQUIRE(ws_bytes.ok());
  DeviceBuffer<char> ws(*ws_bytes);
  IngestOutputs out;
  out.k_out = k_out.get();
  out.v_out = v_out.get();
  out.positions = pos.get();
  out.centroids = cen.get();
  out.counts = counts.get();
  out.offsets = offsets.get();
  out.coarse_centroids = ccen.get();
  out.coarse_offsets = coff.get();
  out.coarse_members = cmem.get();
  out.centroids_bf16 = cen16.get();
  out.coarse_centroids_bf16 = ccen16.get();
  out.histogram = hist.get();
  IngestTimings timings;
  REQUIRE(IngestContext(s, KMeansParams{}, keys.get(), values.get(), type, q.get(), out, ws.get(),
                        *ws_bytes, nullptr, &timings)
              .ok());
  CHECK(timings.total_ms > 0.0f);
  CHECK(timings.fine.loop_iterations >= 1);
  const std::vector<T> ko = k_out.Download(), vo = v_out.Download();
  const std::vector<int32_t> p = pos.Download(), cnt = counts.Download(), off = offsets.Download(),
                             co = coff.Download(), cm = cmem.Download();
  const std::vector<float> ce = cen.Download(), cc = ccen.Download();
  const std::vector<float> ce16 = testing::ToFloat(cen16.Download()),
                           cc16 = testing::ToFloat(ccen16.Download());
  const std::vector<uint64_t> hi = hist.Download();
  auto in_index = [&](int h, int64_t t) {
    return ((static_cast<int64_t>(h / s.kv_heads) * n + t) * s.kv_heads + h % s.kv_heads) * d;
  };
  auto in_row = [&](const std::vector<T>& src, int h, int64_t t) {
    return src.data() + in_index(h, t);
  };
  for (int h = 0; h < heads; ++h) {
    INFO("head " << h);
    std::vector<char> seen(body, 0);
    for (int64_t r = 0; r < n; ++r) {
      int64_t t = r;
      if (r >= s.sink_len && r < s.sink_len + body) {
        t = p[h * body + r - s.sink_len];
        REQUIRE(t >= s.sink_len);
        REQUIRE(t < s.sink_len + body);
        REQUIRE(!seen[t - s.sink_len]);
        seen[t - s.sink_len] = 1;
      }
      const T* o = ko.data() + (h * n + r) * d;
      REQUIRE(std::equal(o, o + d, in_row(kin, h, t)));
      const T* ov = vo.data() + (h * n + r) * d;
      REQUIRE(std::equal(ov, ov + d, in_row(vin, h, t)));
    }
    const int32_t* of = off.data() + h * (k + 1);
    REQUIRE(of[0] == 0);
    REQUIRE(of[k] == body);
    for (int64_t cl = 0; cl < k; ++cl) {
      REQUIRE(cnt[h * k + cl] >= 1);
      REQUIRE(of[cl + 1] - of[cl] == cnt[h * k + cl]);
      for (int64_t e = 0; e < d; ++e) {
        double m = 0;
        for (int32_t r = of[cl]; r < of[cl + 1]; ++r) m += c.k[in_index(h, p[h * body + r]) + e];
        m /= cnt[h * k + cl];
        const float g = ce[(h * k + cl) * d + e];
        REQUIRE(std::abs(g - m) <= 1e-5 * (1.0 + std::abs(m)));
        REQUIRE(ce16[(h * k + cl) * d + e] == testing::RoundBf16({g})[0]);
      }
    }
    if (k1 == 0) continue;
    const int32_t* cof = co.data() + h * (k1 + 1);
    REQUIRE(cof[0] == 0);
    REQUIRE(cof[k1] == k);
    std::vector<char> fine_seen(k, 0);
    for (int64_t j = 0; j < k1; ++j) {
      REQUIRE(cof[j + 1] > cof[j]);
      std::vector<double> sum(d, 0.0);
      double w = 0;
      for (int32_t m = cof[j]; m < cof[j + 1]; ++m) {
        const int32_t f = cm[h * k + m];
        REQUIRE(f >= 0);
        REQUIRE(f < k);
        REQUIRE(!fine_seen[f]);
        fine_seen[f] = 1;
        if (m > cof[j]) REQUIRE(cm[h * k + m - 1] < f);
        w += cnt[h * k + f];
        for (int64_t e = 0; e < d; ++e) sum[e] += double(cnt[h * k + f]) * ce[(h * k + f) * d + e];
      }
      for (int64_t e = 0; e < d; ++e) {
        const float g = cc[(h * k1 + j) * d + e];
        REQUIRE(std::abs(g - sum[e] / w) <= 1e-4 * (1.0 + std::abs(sum[e] / w)));
        REQUIRE(cc16[(h * k1 + j) * d + e] == testing::RoundBf16({g})[0]);
      }
    }
  }
  // Every (window query, kv head, cluster) adds its cluster's size: W * kv_heads * B per layer.
  for (int r = 0; r < 2; ++r) {
    for (int l = 0; l < s.layers; ++l) {
      uint64_t mass = 0;
      for (int b = 0; b < kCalibrationBins; ++b)
        mass += hi[(r * s.layers + l) * kCalibrationBins + b];
      CHECK(mass == static_cast<uint64_t>(s.window_len * s.kv_heads * body));
    }
  }
}

TEST_CASE("IngestContext lays out K/V by cluster with a consistent index", "[ingest][cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  SECTION("bf16, d=128, GQA, coarse level") {
    CheckIngest<__nv_bfloat16>(MakeContext(2, 2, 8, 128, 1000, 4, 37, 48, 10, 5), PointType::kBf16);
  }
  SECTION("fp32, d=64, MHA, no coarse level, no sink") {
    CheckIngest<float>(MakeContext(3, 1, 1, 64, 333, 0, 100, 23, 0, 9), PointType::kF32);
  }
  SECTION("one body key") {
    CheckIngest<float>(MakeContext(1, 2, 2, 64, 10, 4, 5, 1, 0, 13), PointType::kF32);
  }
}

TEST_CASE("IngestContext rejects bad shapes and buffers", "[ingest][cuda]") {
  auto code = [](const IngestShape& s) { return IngestWorkspaceBytes(s).status().code(); };
  IngestShape ok{1, 2, 4, 128, 1000, 4, 100, 45, 9};
  IngestShape bad = ok;
  bad.k = 1000;
  CHECK(code(bad) == StatusCode::kInvalidArgument);  // k > body
  bad = ok;
  bad.k1 = 45;
  CHECK(code(bad) == StatusCode::kInvalidArgument);  // k1 >= k
  bad = ok;
  bad.head_dim = 96;
  CHECK(code(bad) == StatusCode::kUnimplemented);
  bad = ok;
  bad.q_heads = 5;
  CHECK(code(bad) == StatusCode::kInvalidArgument);  // not a multiple of kv_heads
  bad = ok;
  bad.kv_heads = 1;
  bad.q_heads = 64;
  CHECK(code(bad) == StatusCode::kUnimplemented);  // group of 64
  bad = ok;
  bad.window_len = 997;
  CHECK(code(bad) == StatusCode::kInvalidArgument);  // no room for sink + window
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const size_t bytes = *IngestWorkspaceBytes(ok);
  DeviceBuffer<char> ws(bytes), kv(1000 * 2 * 128 * 4);
  DeviceBuffer<float> q(100 * 4 * 128);
  IngestOutputs out;
  auto run = [&](const IngestOutputs& o, size_t b) {
    return IngestContext(ok, KMeansParams{}, kv.get(), kv.get(), PointType::kF32, q.get(), o,
                         ws.get(), b, nullptr);
  };
  const Status no_out = run(out, bytes);
  CHECK(no_out.code() == StatusCode::kInvalidArgument);
  CHECK(no_out.message().find("null output") != std::string::npos);
  out.k_out = out.v_out = kv.get();
  out.histogram = reinterpret_cast<uint64_t*>(q.get());
  const Status no_index = run(out, bytes);
  CHECK(no_index.code() == StatusCode::kInvalidArgument);
  CHECK(no_index.message().find("positions") != std::string::npos);
  int32_t* any_i = reinterpret_cast<int32_t*>(kv.get());
  float* any_f = reinterpret_cast<float*>(kv.get());
  out.positions = out.counts = out.offsets = out.coarse_offsets = out.coarse_members = any_i;
  out.centroids = out.coarse_centroids = any_f;
  const Status small = run(out, bytes - 1);
  CHECK(small.message().find("workspace") != std::string::npos);
}

}  // namespace
}  // namespace sqz::cuda
