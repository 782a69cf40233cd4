#include "kernels/cuda/prefill_attention.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::RandomFloats;
using testing::RelativeL2;

// Tolerance (relative L2 of o over all rows against cpu::AttendAccumulate on the same bf16 inputs):
// the tensor-core path rounds the probabilities to bf16 before P V (~2^-9 relative), a bf16 output
// adds one more rounding. (m, l): m within 1e-3 absolute (+1e-4 relative), l within 1e-3 relative.
constexpr double kTolO = 1e-2;

struct Case {
  int64_t n_q, n_kv, q_offset;
  bool causal;
  int hq, hkv, d;
  bool head_major;  // K/V as [hkv][n_kv][d] instead of token-major [n_kv][hkv * d + 8]
  bool misaligned;  // q one element off 16-byte alignment (forces the simple path)
};

template <typename TOut>
void RunCase(const Case& c, uint32_t seed) {
  INFO("n_q=" << c.n_q << " n_kv=" << c.n_kv << " q_offset=" << c.q_offset << " causal=" << c.causal
              << " hq=" << c.hq << " hkv=" << c.hkv << " d=" << c.d
              << " head_major=" << c.head_major << " misaligned=" << c.misaligned
              << " out=" << (std::is_same_v<TOut, float> ? "f32" : "bf16"));
  const int64_t q_stride = c.hq * c.d + 8;
  const int64_t kv_row = c.head_major ? c.d : c.hkv * c.d + 8;
  const int64_t kv_size = c.head_major ? c.hkv * c.n_kv * c.d : c.n_kv * kv_row;
  const auto q = testing::RoundBf16(RandomFloats(c.n_q * q_stride + 1, seed, 1.0f));
  const auto k = testing::RoundBf16(RandomFloats(kv_size, seed + 1, 1.0f));
  const auto v = testing::RoundBf16(RandomFloats(kv_size, seed + 2, 1.0f));
  const int64_t q_shift = c.misaligned ? 1 : 0;
  auto k_at = [&](int64_t j, int h) {
    return c.head_major ? (h * c.n_kv + j) * c.d : j * kv_row + h * c.d;
  };

  PrefillAttentionParams p;
  DeviceBuffer<bf16> dq(testing::ToBf16(q)), dk(testing::ToBf16(k)), dv(testing::ToBf16(v));
  p.q = dq.get() + q_shift;
  p.q_token_stride = q_stride;
  p.k = dk.get();
  p.v = dv.get();
  p.kv_token_stride = c.head_major ? c.d : kv_row;
  p.kv_head_stride = c.head_major ? c.n_kv * c.d : c.d;
  p.n_q = c.n_q;
  p.n_kv = c.n_kv;
  p.n_q_heads = c.hq;
  p.n_kv_heads = c.hkv;
  p.head_dim = c.d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  p.causal = c.causal;
  p.q_offset = c.q_offset;
  const int64_t out_stride = c.hq * c.d;
  DeviceBuffer<TOut> out(c.n_q * out_stride);
  DeviceBuffer<cpu::AttentionPartial> stats(c.n_q * c.hq);
  const Status st = PrefillAttention<TOut>(p, out.get(), out_stride, stats.get(), nullptr);
  INFO(st.ToString());
  REQUIRE(st.ok());

  // Reference.
  std::vector<float> want(c.n_q * out_stride, 0.0f);
  std::vector<cpu::AttentionPartial> want_stats(c.n_q * c.hq);
  std::vector<float> kh(std::max<int64_t>(c.n_kv, 1) * c.d), vh(kh.size());
  for (int h = 0; h < c.hq; ++h) {
    const int g = h / (c.hq / c.hkv);
    for (int64_t j = 0; j < c.n_kv; ++j) {
      std::copy_n(k.begin() + k_at(j, g), c.d, kh.begin() + j * c.d);
      std::copy_n(v.begin() + k_at(j, g), c.d, vh.begin() + j * c.d);
    }
    for (int64_t t = 0; t < c.n_q; ++t) {
      const int64_t allowed = c.causal ? std::min(c.n_kv, c.q_offset + t + 1) : c.n_kv;
      cpu::AttendAccumulate(q.data() + q_shift + t * q_stride + h * c.d, kh.data(), c.d, vh.data(),
                            c.d, allowed, c.d, p.scale, want.data() + t * out_stride + h * c.d,
                            &want_stats[t * c.hq + h]);
    }
  }
  const auto got = testing::ToFloat(out.Download());
  if (c.n_kv == 0) {
    for (float x : got) REQUIRE(x == 0.0f);
  } else {
    REQUIRE(RelativeL2(got, want) < kTolO);
  }
  const auto got_stats = stats.Download();
  for (size_t i = 0; i < got_stats.size(); ++i) {
    const auto& a = got_stats[i];
    const auto& b = want_stats[i];
    if (b.l == 0.0f) {
      REQUIRE(a.l == 0.0f);
      REQUIRE(a.m == -INFINITY);
      continue;
    }
    REQUIRE(std::fabs(a.m - b.m) <= 1e-3 + 1e-4 * std::fabs(b.m));
    REQUIRE(std::fabs(a.l - b.l) <= 1e-3 * b.l);
  }
}

TEST_CASE("PrefillAttention matches cpu::AttendAccumulate over shapes, layouts and head dims",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 1;
  for (int d : {8, 48, 64, 128}) {
    for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{3, 3}, std::pair{4, 1}}) {
      const std::vector<Case> cases = {
          {1, 1, 0, true, hq, hkv, d, false, false},
          {3, 3, 0, true, hq, hkv, d, true, false},
          {127, 127, 0, true, hq, hkv, d, false, false},
          {129, 129, 0, true, hq, hkv, d, true, false},
          {129, 1000, 871, true, hq, hkv, d, false, false},  // a later chunk of a long prefill
          {65, 300, 0, false, hq, hkv, d, true, false},      // no mask (attention to a context)
          {3, 0, 0, false, hq, hkv, d, false, false},        // no keys: empty partials
          {70, 70, 0, true, hq, hkv, d, false, true},        // unaligned view: simple path
      };
      for (const Case& c : cases) RunCase<float>(c, seed += 3);
    }
    RunCase<bf16>({129, 129, 0, true, 8, 2, d, false, false}, seed += 3);
    RunCase<bf16>({200, 1000, 800, true, 8, 2, d, true, false}, seed += 3);
  }
  // Longer sequences on the fast path.
  for (int d : {64, 128}) {
    RunCase<bf16>({1000, 1000, 0, true, 8, 2, d, false, false}, seed += 3);
    RunCase<float>({64, 4096, 4032, true, 4, 1, d, true, false}, seed += 3);
  }
}

TEST_CASE("MergeAttentionPartials of two key ranges equals attention over their union", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  // Keys [0, 300) split at 113: two non-causal prefills, merged, against one over all keys.
  const int hq = 4, hkv = 2, d = 64;
  const int64_t n_q = 37, n_kv = 300, split = 113;
  const auto q = testing::ToBf16(RandomFloats(n_q * hq * d, 7));
  const auto k = testing::ToBf16(RandomFloats(n_kv * hkv * d, 8));
  const auto v = testing::ToBf16(RandomFloats(n_kv * hkv * d, 9));
  DeviceBuffer<bf16> dq(q), dk(k), dv(v);
  PrefillAttentionParams p;
  p.q = dq.get();
  p.q_token_stride = hq * d;
  p.kv_token_stride = hkv * d;
  p.kv_head_stride = d;
  p.n_q = n_q;
  p.n_q_heads = hq;
  p.n_kv_heads = hkv;
  p.head_dim = d;
  p.scale = 0.125f;
  p.causal = false;
  DeviceBuffer<float> whole(n_q * hq * d), a(n_q * hq * d), b(n_q * hq * d);
  DeviceBuffer<cpu::AttentionPartial> sw(n_q * hq), sa(n_q * hq), sb(n_q * hq);
  p.k = dk.get();
  p.v = dv.get();
  p.n_kv = n_kv;
  REQUIRE(PrefillAttention<float>(p, whole.get(), hq * d, sw.get(), nullptr).ok());
  p.n_kv = split;
  REQUIRE(PrefillAttention<float>(p, a.get(), hq * d, sa.get(), nullptr).ok());
  p.k = dk.get() + split * hkv * d;
  p.v = dv.get() + split * hkv * d;
  p.n_kv = n_kv - split;
  REQUIRE(PrefillAttention<float>(p, b.get(), hq * d, sb.get(), nullptr).ok());
  REQUIRE(MergeAttentionPartials<float>(a.get(), sa.get(), b.get(), sb.get(), n_q * hq, d, nullptr)
              .ok());
  REQUIRE(RelativeL2(a.Download(), whole.Download()) < 1e-2);
  const auto merged = sa.Download();
  const auto direct = sw.Download();
  for (size_t i = 0; i < merged.size(); ++i) {
    const double direct_log = direct[i].m + std::log(direct[i].l);
    const double merged_log = merged[i].m + std::log(merged[i].l);
    REQUIRE(std::fabs(direct_log - merged_log) < 1e-3);
  }
  // Merging an empty partial changes nothing; merging into an empty one copies.
  DeviceBuffer<float> empty_o(n_q * hq * d);
  std::vector<cpu::AttentionPartial> empty(n_q * hq);
  DeviceBuffer<cpu::AttentionPartial> se(empty);
  const auto before = a.Download();
  REQUIRE(MergeAttentionPartials<float>(a.get(), sa.get(), empty_o.get(), se.get(), n_q * hq, d,
                                        nullptr)
              .ok());
  REQUIRE(a.Download() == before);
  REQUIRE(MergeAttentionPartials<float>(empty_o.get(), se.get(), a.get(), sa.get(), n_q * hq, d,
                                        nullptr)
              .ok());
  REQUIRE(empty_o.Download() == before);
}

TEST_CASE("PrefillAttention rejects unsupported or inconsistent shapes", "[cuda]") {
  PrefillAttentionParams p;
  p.q = p.k = p.v = reinterpret_cast<const bf16*>(0x1000);
  p.n_q = 4;
  p.n_kv = 4;
  p.n_q_heads = 6;
  p.n_kv_heads = 4;
  p.head_dim = 64;
  p.q_token_stride = 6 * 64;
  p.kv_token_stride = 4 * 64;
  p.kv_head_stride = 64;
  p.scale = 0.125f;
  float* out = reinterpret_cast<float*>(0x1000);
  Status s = PrefillAttention<float>(p, out, 6 * 64, nullptr, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("divide") != std::string::npos);
  p.n_kv_heads = 3;
  p.head_dim = 512;
  p.q_token_stride = 6 * 512;
  s = PrefillAttention<float>(p, out, 6 * 512, nullptr, nullptr);
  REQUIRE(s.code() == StatusCode::kUnimplemented);
  REQUIRE(s.message().find("head_dim 512") != std::string::npos);
  p.head_dim = 64;
  s = PrefillAttention<float>(p, out, 64, nullptr, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("stride") != std::string::npos);
  p.q_token_stride = 6 * 64;
  p.scale = 0.0f;
  REQUIRE(PrefillAttention<float>(p, out, 6 * 64, nullptr, nullptr).code() ==
          StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqz::cuda
