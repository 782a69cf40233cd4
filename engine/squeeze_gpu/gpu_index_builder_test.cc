// BuildSnapshotOnDevice against the CPU BuildSnapshot on the same captured contexts: valid
// snapshots, rows moved exactly, clustering objective within 1%, coarse level valid, thresholds
// equal to the CPU's Calibrate run on the GPU-built index (up to a histogram bin), errors.
#include "engine/squeeze_gpu/gpu_index_builder.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "engine/squeeze/synthetic.h"
#include "engine/squeeze/test_util.h"
#include "kernels/cuda/test_util.h"

namespace sqz {
namespace {

// Mean over body keys of 1 - cos(key, centroid of its cluster), for one head of a snapshot.
double HeadObjective(const ContextSnapshot& s, const HeadIndex& x) {
  const int64_t d = s.dims.head_dim;
  double total = 0.0;
  const int64_t k = static_cast<int64_t>(x.counts.size());
  for (int64_t c = 0; c < k; ++c) {
    const float* cen = x.centroids.data() + c * d;
    for (int32_t r = x.offsets[c]; r < x.offsets[c + 1]; ++r) {
      const float* key = x.body_k.data() + r * d;
      double dot = 0, kk = 0, cc = 0;
      for (int64_t j = 0; j < d; ++j) {
        dot += double(key[j]) * cen[j], kk += double(key[j]) * key[j],
            cc += double(cen[j]) * cen[j];
      }
      total += kk > 0 && cc > 0 ? 1.0 - dot / std::sqrt(kk * cc) : 1.0;
    }
  }
  return s.dims.body_len > 0 ? total / s.dims.body_len : 0.0;
}

// Body rows are the captured rows at body_positions; sink and window are copied in order.
void CheckRows(const CapturedContext& c, const ContextSnapshot& s) {
  const int64_t d = c.head_dim, n = c.n_tokens;
  auto captured = [&](const std::vector<float>& src, int l, int h, int64_t t) {
    return src.data() + ((static_cast<int64_t>(l) * n + t) * c.kv_heads + h) * d;
  };
  for (int l = 0; l < c.layers; ++l) {
    for (int h = 0; h < c.kv_heads; ++h) {
      const HeadIndex& x = s.head(l, h);
      for (int64_t r = 0; r < s.dims.body_len; ++r) {
        const int64_t t = x.body_positions[r];
        REQUIRE(std::equal(x.body_k.begin() + r * d, x.body_k.begin() + (r + 1) * d,
                           captured(c.k, l, h, t)));
        REQUIRE(std::equal(x.body_v.begin() + r * d, x.body_v.begin() + (r + 1) * d,
                           captured(c.v, l, h, t)));
      }
      for (int64_t r = 0; r < s.dims.sink_len; ++r) {
        REQUIRE(std::equal(x.sink_k.begin() + r * d, x.sink_k.begin() + (r + 1) * d,
                           captured(c.k, l, h, r)));
      }
      for (int64_t r = 0; r < s.dims.window_len; ++r) {
        const int64_t t = n - s.dims.window_len + r;
        REQUIRE(std::equal(x.window_v.begin() + r * d, x.window_v.begin() + (r + 1) * d,
                           captured(c.v, l, h, t)));
      }
      // Stable: original order within each cluster.
      for (size_t c2 = 0; c2 < x.counts.size(); ++c2) {
        for (int32_t r = x.offsets[c2] + 1; r < x.offsets[c2 + 1]; ++r) {
          REQUIRE(x.body_positions[r - 1] < x.body_positions[r]);
        }
      }
    }
  }
}

// Thresholds agree when they are equal or one histogram bin apart (2^(1/64)).
void CheckThresholdsClose(const std::vector<float>& gpu, const std::vector<float>& cpu) {
  REQUIRE(gpu.size() == cpu.size());
  int off_by_one = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    INFO("threshold " << i << " gpu " << gpu[i] << " cpu " << cpu[i]);
    if (gpu[i] == cpu[i]) continue;
    REQUIRE(gpu[i] > 0.0f);
    REQUIRE(cpu[i] > 0.0f);
    CHECK(std::abs(std::log2(gpu[i] / cpu[i])) <= 1.01 / 64);
    ++off_by_one;
  }
  CHECK(off_by_one <= static_cast<int>(gpu.size() / 4));
}

void CompareWithCpu(const CapturedContext& c, const SqueezeOptions& o) {
  GpuIngestReport report;
  auto gpu = BuildSnapshotOnDevice(c, o, &report);
  REQUIRE(gpu.ok());
  REQUIRE(ValidateSnapshot(*gpu).ok());
  CheckRows(c, *gpu);
  auto cpu = BuildSnapshot(c, o);
  REQUIRE(cpu.ok());
  REQUIRE(gpu->dims == cpu->dims);
  REQUIRE(gpu->options == cpu->options);
  for (size_t i = 0; i < gpu->heads.size(); ++i) {
    const HeadIndex& g = gpu->heads[i];
    const HeadIndex& r = cpu->heads[i];
    REQUIRE(g.counts.size() == r.counts.size());
    REQUIRE(g.coarse_offsets.size() == r.coarse_offsets.size());
    CHECK(g.sink_k == r.sink_k);
    CHECK(g.window_k == r.window_k);
    const double go = HeadObjective(*gpu, g), co = HeadObjective(*cpu, r);
    INFO("head " << i << " gpu objective " << go << " cpu " << co << " iterations "
                 << report.iterations[i]);
    CHECK(go <= co * 1.01 + 1e-6);
    // Coarse centroid = count-weighted mean of its fine centroids.
    const int64_t d = c.head_dim;
    for (size_t j = 0; j + 1 < g.coarse_offsets.size(); ++j) {
      std::vector<double> sum(d, 0.0);
      double w = 0;
      for (int32_t m = g.coarse_offsets[j]; m < g.coarse_offsets[j + 1]; ++m) {
        const int32_t f = g.coarse_members[m];
        w += g.counts[f];
        for (int64_t t = 0; t < d; ++t) sum[t] += double(g.counts[f]) * g.centroids[f * d + t];
      }
      for (int64_t t = 0; t < d; ++t) {
        REQUIRE(std::abs(g.coarse_centroids[j * d + t] - sum[t] / w) <=
                1e-4 * (1.0 + std::abs(sum[t] / w)));
      }
    }
  }
  // Calibration: the CPU's Calibrate over the GPU-built index gives the same thresholds.
  ContextSnapshot recal = *gpu;
  Calibrate(c.window_q, gpu->dims.window_len, &recal);
  CheckThresholdsClose(gpu->thresholds_global, recal.thresholds_global);
  CheckThresholdsClose(gpu->thresholds_layer, recal.thresholds_layer);
}

TEST_CASE("BuildSnapshotOnDevice matches BuildSnapshot on synthetic contexts", "[squeeze][cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  SqueezeOptions o;
  SECTION("GQA, d=128, coarse level on") {
    SyntheticSpec spec;
    spec.layers = 2;
    spec.kv_heads = 2;
    spec.q_heads = 8;
    spec.head_dim = 128;
    spec.n_tokens = 6000;
    spec.mixture_components = 128;
    spec.window_len = WindowLength(spec.n_tokens, o);
    CompareWithCpu(SyntheticContext(spec), o);
  }
  SECTION("MHA, d=64, awkward length") {
    SyntheticSpec spec;
    spec.layers = 3;
    spec.kv_heads = 1;
    spec.q_heads = 1;
    spec.head_dim = 64;
    spec.n_tokens = 1129;
    spec.mixture_components = 40;
    spec.window_len = WindowLength(spec.n_tokens, o);
    CompareWithCpu(SyntheticContext(spec), o);
  }
  SECTION("Gaussian clusters, no coarse level") {
    o.coarse_fraction = 0.0;
    o.observation_window = 37;
    CompareWithCpu(testing::RandomCaptured(2, 3, 6, 64, 1000, o, 5), o);
  }
}

TEST_CASE("BuildSnapshotOnDevice handles contexts without a body or a window", "[squeeze][cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  SqueezeOptions o;
  const CapturedContext short_ctx = testing::RandomCaptured(2, 2, 4, 128, 60, o, 3);
  auto s = BuildSnapshotOnDevice(short_ctx, o);
  REQUIRE(s.ok());
  REQUIRE(ValidateSnapshot(*s).ok());
  CHECK(s->dims.body_len == 0);
  auto cpu = BuildSnapshot(short_ctx, o);
  REQUIRE(cpu.ok());
  CHECK(*s == *cpu);  // nothing to cluster: identical, thresholds included

  o.observation_window = 0;
  o.sink_tokens = 0;
  const CapturedContext no_window = testing::RandomCaptured(1, 2, 2, 64, 300, o, 4);
  auto w = BuildSnapshotOnDevice(no_window, o);
  REQUIRE(w.ok());
  REQUIRE(ValidateSnapshot(*w).ok());
  for (float t : w->thresholds_global) CHECK(t == -1.0f);
}

TEST_CASE("BuildSnapshotOnDevice rejects bad input with clear errors", "[squeeze][cuda]") {
  SqueezeOptions o;
  CapturedContext c = testing::RandomCaptured(1, 1, 1, 64, 300, o, 9);
  SECTION("bad options") {
    o.centroid_fraction = 0.0;
    auto s = BuildSnapshotOnDevice(c, o);
    REQUIRE(!s.ok());
    CHECK(s.status().code() == StatusCode::kInvalidArgument);
  }
  SECTION("wrong K size") {
    c.k.pop_back();
    auto s = BuildSnapshotOnDevice(c, o);
    REQUIRE(!s.ok());
    CHECK(s.status().message().find("captured K/V") != std::string::npos);
  }
  SECTION("non-finite values") {
    c.v[17] = std::nanf("");
    auto s = BuildSnapshotOnDevice(c, o);
    REQUIRE(!s.ok());
    CHECK(s.status().message().find("non-finite") != std::string::npos);
  }
  SECTION("window queries of the wrong size") {
    c.window_q.resize(5);
    auto s = BuildSnapshotOnDevice(c, o);
    REQUIRE(!s.ok());
    CHECK(s.status().message().find("window queries") != std::string::npos);
  }
  SECTION("uncompiled head_dim") {
    std::string why;
    if (!cuda::testing::CudaAvailable(&why)) {
      auto s = BuildSnapshotOnDevice(c, o);
      REQUIRE(!s.ok());
      CHECK(s.status().code() == StatusCode::kFailedPrecondition);
      WARN("skipped the head_dim check: " << why);
      return;
    }
    const CapturedContext odd = testing::RandomCaptured(1, 1, 1, 96, 300, o, 9);
    auto s = BuildSnapshotOnDevice(odd, o);
    REQUIRE(!s.ok());
    CHECK(s.status().code() == StatusCode::kUnimplemented);
    CHECK(s.status().message().find("head_dim 96") != std::string::npos);
  }
}

}  // namespace
}  // namespace sqz
