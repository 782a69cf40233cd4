#include "kernels/cuda/prefill_attention.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <initializer_list>
#include <string>
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
  // Rows compared with the reference: all when 1; else the first and last 160 and every
  // check_every-th (long cases, to bound the CPU reference's time). Every row must be finite.
  int64_t check_every = 1;
};

bool Checked(const Case& c, int64_t t) {
  return c.check_every <= 1 || t < 160 || t >= c.n_q - 160 || t % c.check_every == 0;
}

const char* KernelName(PrefillKernel k) { return k == PrefillKernel::kWide ? "wide" : "narrow"; }

int SmCount() {
  int sms = 0;
  SQZ_TEST_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  return sms;
}

// Key splits a case runs with (RunCase): kUnsplit is the call without a plan, kPlanned the
// planner's choice for this device, n > 1 forces n splits (non-causal cases).
constexpr int kUnsplit = 1;
constexpr int kPlanned = 0;

// Runs case c on each tensor-core kernel (both by default; head_dim 64 / 128 with aligned views,
// the others take the simple path whatever is selected) and each key split choice (splits; when
// it starts with kUnsplit, the others must also match that output) against one CPU reference.
template <typename TOut>
void RunCase(const Case& c, uint32_t seed,
             std::initializer_list<PrefillKernel> kernels = {PrefillKernel::kWide,
                                                             PrefillKernel::kNarrow},
             std::initializer_list<int> splits = {kUnsplit}) {
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
      if (!Checked(c, t)) continue;
      const int64_t allowed = c.causal ? std::min(c.n_kv, c.q_offset + t + 1) : c.n_kv;
      cpu::AttendAccumulate(q.data() + q_shift + t * q_stride + h * c.d, kh.data(), c.d, vh.data(),
                            c.d, allowed, c.d, p.scale, want.data() + t * out_stride + h * c.d,
                            &want_stats[t * c.hq + h]);
    }
  }
  std::vector<float> want_rows;
  for (int64_t t = 0; t < c.n_q; ++t) {
    if (Checked(c, t)) {
      want_rows.insert(want_rows.end(), want.begin() + t * out_stride,
                       want.begin() + (t + 1) * out_stride);
    }
  }

  std::vector<float> unsplit;  // this kernel's output without splits, when run first
  for (PrefillKernel kernel : kernels) {
    for (int split : splits) {
      INFO("kernel=" << KernelName(kernel));
      p.kernel = kernel;
      const PrefillAttentionPlan plan = split == kPlanned ? PlanPrefillAttention(p, SmCount())
                                                          : PlanPrefillAttentionSplits(p, split);
      INFO("splits=" << (split == kPlanned ? std::string("planned") : std::to_string(split))
                     << " -> kv_splits=" << plan.kv_splits << " split_keys=" << plan.split_keys);
      DeviceBuffer<TOut> out(c.n_q * out_stride);
      DeviceBuffer<cpu::AttentionPartial> stats(c.n_q * c.hq);
      DeviceBuffer<char> workspace(plan.workspace_bytes);  // poisoned: unwritten partials are NaN
      const Status st = split == kUnsplit
                            ? PrefillAttention<TOut>(p, out.get(), out_stride, stats.get(), nullptr)
                            : PrefillAttention<TOut>(p, plan, out.get(), out_stride, stats.get(),
                                                     workspace.get(), workspace.size(), nullptr);
      INFO(st.ToString());
      REQUIRE(st.ok());
      const auto got = testing::ToFloat(out.Download());
      REQUIRE(std::all_of(got.begin(), got.end(), [](float x) { return std::isfinite(x); }));
      if (split == kUnsplit) {
        unsplit = got;
      } else if (!unsplit.empty() && c.n_kv > 0) {
        REQUIRE(RelativeL2(got, unsplit) < kTolO);
      }
      if (c.n_kv == 0) {
        REQUIRE(std::all_of(got.begin(), got.end(), [](float x) { return x == 0.0f; }));
      } else {
        std::vector<float> got_rows;
        for (int64_t t = 0; t < c.n_q; ++t) {
          if (Checked(c, t)) {
            got_rows.insert(got_rows.end(), got.begin() + t * out_stride,
                            got.begin() + (t + 1) * out_stride);
          }
        }
        REQUIRE(RelativeL2(got_rows, want_rows) < kTolO);
      }
      const auto got_stats = stats.Download();
      for (size_t i = 0; i < got_stats.size(); ++i) {
        if (!Checked(c, static_cast<int64_t>(i) / c.hq)) continue;
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
    unsplit.clear();
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

// The wide and narrow tensor-core kernels over the sizes where their tiles (128 and 64 query rows,
// 32 / 64-key steps) begin and end, GQA groups 1, 4 and 8, queries after a prefix of context keys
// (q_offset > 0, with and without keys past the last query), and long sequences.
TEST_CASE("PrefillAttention wide and narrow kernels match the CPU over tile-edge shapes",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 1000;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{2, 2}, std::pair{4, 1}, std::pair{8, 1}}) {
      for (int64_t n : {1, 3, 63, 64, 65, 127, 129}) {
        RunCase<float>({n, n, 0, true, hq, hkv, d, false, false}, seed += 3);
        // After a prefix of context keys: n_kv = prefix + n, query t at key prefix + t.
        for (int64_t prefix : {37, 192}) {
          RunCase<float>({n, prefix + n, prefix, true, hq, hkv, d, (n & 1) != 0, false}, seed += 3);
        }
      }
      // A chunk in the middle of a longer sequence: keys past the chunk's last query exist but
      // must not be seen.
      RunCase<float>({129, 1000, 600, true, hq, hkv, d, false, false}, seed += 3);
      // Not causal (attention to a context).
      RunCase<float>({65, 300, 0, false, hq, hkv, d, true, false}, seed += 3);
      RunCase<float>({130, 97, 0, false, hq, hkv, d, false, false}, seed += 3);
    }
    RunCase<bf16>({1000, 1000, 0, true, 4, 1, d, false, false}, seed += 3);
    RunCase<float>({1000, 1300, 300, true, 8, 2, d, true, false}, seed += 3);
    RunCase<bf16>({4100, 4100, 0, true, 4, 1, d, false, false, 17}, seed += 3);
    RunCase<float>({257, 4100, 3843, true, 4, 1, d, false, false}, seed += 3);
  }
}

// Non-causal calls (a prompt's attention to a context) with key splits: forced 2, 3 and 7 splits
// (with 64-key tiles, 7 splits of 63-65 keys or of 1 leave trailing splits empty, which the merge
// must skip) and the planner's, against the unsplit call and the CPU, over query counts around the
// 128 / 64-row tiles, key counts around the 64-key tile and long ones, GQA groups 1, 4 and 8.
TEST_CASE("PrefillAttention with key splits matches the unsplit call and the CPU", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const std::initializer_list<int> splits = {kUnsplit, 2, 3, 7, kPlanned};
  const std::pair<int, int> groups[] = {{2, 2}, {8, 2}, {8, 1}};
  uint32_t seed = 5000;
  int shape = 0;
  auto run = [&](int64_t n_q, int64_t n_kv, int d) {
    const auto [hq, hkv] = groups[shape++ % 3];
    RunCase<float>({n_q, n_kv, 0, false, hq, hkv, d, (n_q & 1) != 0, false}, seed += 3,
                   {PrefillKernel::kWide, PrefillKernel::kNarrow}, splits);
  };
  for (int d : {64, 128}) {
    for (int64_t n_q : {1, 3, 16, 127, 129, 256}) {
      for (int64_t n_kv : {1, 63, 64, 65}) run(n_q, n_kv, d);
    }
    for (int64_t n_q : {3, 127, 256}) run(n_q, 4097, d);
    for (int64_t n_q : {1, 16, 129}) run(n_q, 20000, d);
    // bf16 output; no keys at all (every split empty).
    RunCase<bf16>({16, 20000, 0, false, 8, 1, d, false, false}, seed += 3,
                  {PrefillKernel::kWide, PrefillKernel::kNarrow}, splits);
    RunCase<float>({3, 0, 0, false, 4, 1, d, false, false}, seed += 3,
                   {PrefillKernel::kWide, PrefillKernel::kNarrow}, {kUnsplit, 3});
  }
  // The simple kernel (head_dim 48; an unaligned q) splits too.
  RunCase<float>({5, 300, 0, false, 4, 2, 48, false, false}, seed += 3, {PrefillKernel::kWide},
                 {kUnsplit, 2, 7});
  RunCase<bf16>({70, 200, 0, false, 8, 2, 64, false, true}, seed += 3, {PrefillKernel::kWide},
                {kUnsplit, 3});
  // The planner splits few query tiles over many keys on this device.
  PrefillAttentionParams p;
  p.n_q = 16;
  p.n_kv = 20000;
  p.n_q_heads = 8;
  p.n_kv_heads = 1;
  p.head_dim = 128;
  p.causal = false;
  CHECK(PlanPrefillAttention(p, SmCount()).kv_splits > 1);
}

// The planner's choices for the shape it was made for (Llama-3-8B attention, 128K context keys, an
// H200's 132 SMs) and where it must keep one split.
TEST_CASE("PlanPrefillAttention splits few query tiles over long keys and nothing else") {
  PrefillAttentionParams p;
  p.n_kv = 131072;
  p.n_q_heads = 32;
  p.n_kv_heads = 8;
  p.head_dim = 128;
  p.causal = false;
  auto splits = [&](int64_t n_q) {
    p.n_q = n_q;
    return PlanPrefillAttention(p, 132).kv_splits;
  };
  CHECK(splits(1) == 8);
  CHECK(splits(16) == 8);
  CHECK(splits(128) == 8);
  CHECK(splits(129) == 4);
  CHECK(splits(256) == 4);
  CHECK(splits(640) == 3);
  CHECK(splits(641) == 1);
  CHECK(splits(1024) == 1);
  p.n_q = 256;
  const PrefillAttentionPlan plan = PlanPrefillAttention(p, 132);
  CHECK(plan.split_keys == 32768);
  CHECK(plan.workspace_bytes == 4u * 256 * 32 * 128 * 4 + 4u * 256 * 32 * 8);
  p.kernel = PrefillKernel::kNarrow;  // 64-row tiles: 4 x 32 blocks
  CHECK(PlanPrefillAttention(p, 132).kv_splits == 2);
  p.kernel = PrefillKernel::kWide;
  // At least kPrefillMinSplitKeys keys per split.
  p.n_kv = 3 * kPrefillMinSplitKeys - 1;
  CHECK(PlanPrefillAttention(p, 132).kv_splits == 2);
  p.n_kv = kPrefillMinSplitKeys * 2 - 1;
  CHECK(PlanPrefillAttention(p, 132).kv_splits == 1);
  p.n_kv = 131072;
  // Causal, the simple kernel's head dims and full grids keep one split, with no workspace.
  p.causal = true;
  CHECK(PlanPrefillAttention(p, 132).kv_splits == 1);
  CHECK(PlanPrefillAttention(p, 132).workspace_bytes == 0);
  CHECK(PlanPrefillAttentionSplits(p, 4).kv_splits == 1);
  p.causal = false;
  p.head_dim = 96;
  CHECK(PlanPrefillAttention(p, 132).kv_splits == 1);
  p.head_dim = 128;
  CHECK(PlanPrefillAttention(p, 8).kv_splits == 1);  // 64 blocks fill 16 slots
  // Forced: equal tile-multiple lengths covering the keys.
  p.n_kv = 65;
  const PrefillAttentionPlan seven = PlanPrefillAttentionSplits(p, 7);
  CHECK(seven.kv_splits == 7);
  CHECK(seven.split_keys == 64);
  p.n_kv = 20000;
  CHECK(PlanPrefillAttentionSplits(p, 3).split_keys == 6720);
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
  // Key splits: only non-causal, tile-multiple lengths that cover the keys, a large workspace.
  p.scale = 0.125f;
  p.causal = false;
  PrefillAttentionPlan plan = PlanPrefillAttentionSplits(p, 2);
  REQUIRE(plan.kv_splits == 2);
  void* ws = reinterpret_cast<void*>(0x2000);
  s = PrefillAttention<float>(p, plan, out, 6 * 64, nullptr, ws, plan.workspace_bytes - 1, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("workspace") != std::string::npos);
  plan.split_keys = 32;
  s = PrefillAttention<float>(p, plan, out, 6 * 64, nullptr, ws, plan.workspace_bytes, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("split_keys") != std::string::npos);
  plan.split_keys = 64;
  p.causal = true;
  s = PrefillAttention<float>(p, plan, out, 6 * 64, nullptr, ws, plan.workspace_bytes, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("non-causal") != std::string::npos);
}

}  // namespace
}  // namespace sqz::cuda
