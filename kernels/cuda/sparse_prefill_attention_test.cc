// SparsePrefillAttention (sparse_prefill_attention.h): hand-made segment lists against
// cpu::AttendAccumulate over the same rows, over shapes, GQA groups and head dims; and the whole
// squeezed prefill (SqueezeSelect per block with kv_budget 1, SparsePrefillAttention, causal
// PrefillAttention over the own tokens, MergeAttentionPartials) against dense PrefillAttention over
// context + own tokens.
#include "kernels/cuda/sparse_prefill_attention.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/sparse_decode_test_util.h"
#include "kernels/cuda/squeeze_select.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::RandomFloats;
using testing::RelativeL2;

// A random segment list over rows [0, n_ctx): kind 0 empty, 1 one row, 2 a single full range,
// else random ranges (1..60 rows, gaps 0..90, in ascending or shuffled order).
void MakeSegments(int kind, int32_t n_ctx, std::mt19937* rng, std::vector<int2>* segs,
                  std::vector<int32_t>* rows) {
  segs->clear();
  rows->clear();
  std::vector<std::pair<int32_t, int32_t>> ranges;  // [begin, end) rows
  if (kind == 1) {
    const int32_t r = (*rng)() % n_ctx;
    ranges.push_back({r, r + 1});
  } else if (kind == 2) {
    ranges.push_back({0, n_ctx});
  } else if (kind >= 3) {
    int32_t at = (*rng)() % 50;
    while (at < n_ctx) {
      const int32_t len = 1 + (*rng)() % 60;
      ranges.push_back({at, std::min(n_ctx, at + len)});
      at += len + (*rng)() % 91;
    }
    if (kind == 4) std::shuffle(ranges.begin(), ranges.end(), *rng);
  }
  int32_t keys = 0;
  for (auto [b, e] : ranges) {
    segs->push_back(make_int2(keys + (e - b), b - keys));
    for (int32_t r = b; r < e; ++r) rows->push_back(r);
    keys += e - b;
  }
}

struct Shape {
  int hq, hkv, d;
  std::vector<int32_t> lengths;  // tokens per block
  int32_t n_ctx;
  int splits = 0;  // SparsePrefillParams::num_splits (0: the plan's choice for one SM: 1)
};

// Blocks over one context [hkv][n_ctx][d]; per (block, kv head) a random segment list.
template <typename TOut>
void RunHandMade(const Shape& sh, uint32_t seed) {
  const int g = sh.hq / sh.hkv, d = sh.d;
  const int nb = static_cast<int>(sh.lengths.size());
  INFO("hq=" << sh.hq << " hkv=" << sh.hkv << " d=" << d << " blocks=" << nb
             << " n_ctx=" << sh.n_ctx << " splits=" << sh.splits
             << " out=" << (sizeof(TOut) == 4 ? "fp32" : "bf16"));
  std::mt19937 rng(seed);
  std::vector<int32_t> starts(nb + 1, 0);
  for (int b = 0; b < nb; ++b) starts[b + 1] = starts[b] + sh.lengths[b];
  const int32_t tokens = starts[nb];
  const int32_t max_len = *std::max_element(sh.lengths.begin(), sh.lengths.end());
  const int64_t stride = int64_t{sh.hq} * d;
  const std::vector<float> q = testing::RoundBf16(RandomFloats(size_t(tokens) * stride, seed + 1));
  const size_t kv_n = size_t(sh.hkv) * sh.n_ctx * d;
  const std::vector<float> k = testing::RoundBf16(RandomFloats(kv_n, seed + 2));
  const std::vector<float> v = testing::RoundBf16(RandomFloats(kv_n, seed + 3));

  // Segment lists; max_segments = the longest list (at least 1).
  std::vector<std::vector<int2>> lists(size_t(nb) * sh.hkv);
  std::vector<std::vector<int32_t>> rows(lists.size());
  int32_t max_segs = 1;
  int64_t max_sel = 0;
  for (size_t u = 0; u < lists.size(); ++u) {
    MakeSegments(static_cast<int>((u + seed) % 6), sh.n_ctx, &rng, &lists[u], &rows[u]);
    max_segs = std::max<int32_t>(max_segs, static_cast<int32_t>(lists[u].size()));
    max_sel = std::max<int64_t>(max_sel, static_cast<int64_t>(rows[u].size()));
  }
  std::vector<int2> flat(lists.size() * max_segs, make_int2(0, 0));
  std::vector<int32_t> nseg(lists.size()), sel(lists.size());
  for (size_t u = 0; u < lists.size(); ++u) {
    std::copy(lists[u].begin(), lists[u].end(), flat.begin() + u * max_segs);
    nseg[u] = static_cast<int32_t>(lists[u].size());
    sel[u] = static_cast<int32_t>(rows[u].size());
  }
  DeviceBuffer<bf16> dq(testing::ToBf16(q)), dk(testing::ToBf16(k)), dv(testing::ToBf16(v));
  DeviceBuffer<int32_t> dstarts(starts), dctx(std::vector<int32_t>(nb, sh.n_ctx));
  DeviceBuffer<const bf16*> dkp(std::vector<const bf16*>(nb, dk.get()));
  DeviceBuffer<const bf16*> dvp(std::vector<const bf16*>(nb, dv.get()));
  DeviceBuffer<int2> dsegs(flat);
  DeviceBuffer<int32_t> dnseg(nseg), dsel(sel);

  SparsePrefillParams p;
  p.num_blocks = nb;
  p.n_q_heads = sh.hq;
  p.n_kv_heads = sh.hkv;
  p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.q = dq.get();
  p.q_stride = stride;
  p.block_starts = dstarts.get();
  p.max_block_tokens = max_len;
  p.ctx_len = dctx.get();
  p.ctx_k = dkp.get();
  p.ctx_v = dvp.get();
  p.segments = ContextSegments{dsegs.get(), dnseg.get(), dsel.get(), max_segs};
  p.max_selected = std::max<int64_t>(max_sel, 1);
  p.num_splits = sh.splits;
  const SparsePrefillPlan plan = PlanSparsePrefill(p);
  REQUIRE(plan.splits == std::max(sh.splits, 1));
  DeviceBuffer<char> ws(std::max<size_t>(plan.workspace_bytes, 16));
  DeviceBuffer<TOut> out(size_t(tokens) * stride);
  DeviceBuffer<cpu::AttentionPartial> stats(size_t(tokens) * sh.hq);
  const Status s = SparsePrefillAttention<TOut>(p, plan, out.get(), stride, stats.get(), ws.get(),
                                                ws.size(), nullptr);
  INFO(s.ToString());
  REQUIRE(s.ok());
  const std::vector<float> got = testing::ToFloat(out.Download());
  const auto got_st = stats.Download();
  {
    // The other CTA order (a kv head's blocks launched together, or a block's heads) must give
    // the same bits.
    SparsePrefillPlan other = plan;
    other.blocks_inner = !plan.blocks_inner;
    DeviceBuffer<TOut> out2(size_t(tokens) * stride);
    DeviceBuffer<cpu::AttentionPartial> stats2(size_t(tokens) * sh.hq);
    REQUIRE(SparsePrefillAttention<TOut>(p, other, out2.get(), stride, stats2.get(), ws.get(),
                                         ws.size(), nullptr)
                .ok());
    INFO("blocks_inner " << other.blocks_inner << " against " << plan.blocks_inner);
    REQUIRE(testing::ToFloat(out2.Download()) == got);
    const auto st2 = stats2.Download();
    for (size_t i = 0; i < st2.size(); ++i) {
      REQUIRE(((st2[i].m == got_st[i].m || (std::isinf(st2[i].m) && std::isinf(got_st[i].m))) &&
               st2[i].l == got_st[i].l));
    }
  }

  // CPU oracle over the gathered rows of each (block, kv head).
  std::vector<float> want(got.size(), 0.0f), kr, vr;
  std::vector<cpu::AttentionPartial> want_st(got_st.size());
  for (int b = 0; b < nb; ++b) {
    for (int h = 0; h < sh.hkv; ++h) {
      const auto& rr = rows[size_t(b) * sh.hkv + h];
      kr.resize(rr.size() * d);
      vr.resize(rr.size() * d);
      for (size_t i = 0; i < rr.size(); ++i) {
        std::copy_n(k.begin() + (size_t(h) * sh.n_ctx + rr[i]) * d, d, kr.begin() + i * d);
        std::copy_n(v.begin() + (size_t(h) * sh.n_ctx + rr[i]) * d, d, vr.begin() + i * d);
      }
      for (int32_t t = starts[b]; t < starts[b + 1]; ++t) {
        for (int j = 0; j < g; ++j) {
          const int hq = h * g + j;
          cpu::AttentionPartial st;
          cpu::AttendAccumulate(q.data() + t * stride + hq * d, kr.data(), d, vr.data(), d,
                                static_cast<int64_t>(rr.size()), d, p.scale,
                                want.data() + t * stride + hq * d, &st);
          want_st[size_t(t) * sh.hq + hq] = st;
        }
      }
    }
  }
  CHECK(RelativeL2(got, want) <= 1e-2);
  int bad = 0;
  for (size_t i = 0; i < got_st.size(); ++i) {
    const cpu::AttentionPartial a = got_st[i], w = want_st[i];
    const bool ok = w.l == 0.0f ? (a.l == 0.0f && std::isinf(a.m) && a.m < 0 && got[i * d] == 0.0f)
                                : (std::fabs(a.m - w.m) <= 1e-3f * std::max(1.0f, std::fabs(w.m)) &&
                                   std::fabs(a.l - w.l) <= 1e-2f * w.l);
    if (!ok && bad++ < 5) {
      UNSCOPED_INFO("stats " << i << ": got (" << a.m << ", " << a.l << ") want (" << w.m << ", "
                             << w.l << ")");
    }
  }
  CHECK(bad == 0);
}

TEST_CASE("SparsePrefillAttention matches cpu::AttendAccumulate over hand-made segment lists",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 9100;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{8, 1}, std::pair{12, 4}}) {
      // Every other shape with its keys split in 3 (partials merged by the merge kernel).
      RunHandMade<float>({hq, hkv, d, {1, 3, 64, 127, 129, 2, 65}, 1500, seed % 2 ? 3 : 0}, seed);
      ++seed;
    }
  }
  RunHandMade<float>({8, 1, 128, {1000}, 2100}, 9111);  // one list: kind (0 + 9111) % 6 = 3
  RunHandMade<float>({8, 1, 128, {1000}, 2100, 16}, 9111);
  RunHandMade<bf16>({32, 8, 128, {64, 3, 1000}, 600}, seed++);
  RunHandMade<bf16>({32, 8, 128, {64, 3, 1000}, 600, 2}, seed++);
  RunHandMade<bf16>({4, 4, 64, {129, 1}, 300}, seed++);
}

// One request of n_q tokens over a context with an index, cut into blocks of block_size: squeezed
// prefill with kv_budget 1 (every row selected) merged with the causal own-token part equals dense
// PrefillAttention over context + own tokens.
void RunBudgetOne(int hq, int hkv, int d, int n_q, int block_size, uint32_t seed, int splits = 0) {
  const int g = hq / hkv;
  INFO("hq=" << hq << " hkv=" << hkv << " d=" << d << " n_q=" << n_q << " block=" << block_size);
  const testing::HostContext c = testing::MakeContext(hkv, d, 150, 0, 4, 100, seed, 30);
  const testing::DeviceContext dc(c);
  const int32_t n_ctx = c.n_tokens();
  const int64_t stride = int64_t{hq} * d;
  const std::vector<float> q = testing::RoundBf16(RandomFloats(size_t(n_q) * stride, seed + 1));
  const std::vector<float> own_k =
      testing::RoundBf16(RandomFloats(size_t(n_q) * hkv * d, seed + 2));  // [n_q][hkv][d]
  const std::vector<float> own_v =
      testing::RoundBf16(RandomFloats(size_t(n_q) * hkv * d, seed + 3));
  std::vector<int32_t> starts;
  for (int t = 0; t < n_q; t += block_size) starts.push_back(t);
  starts.push_back(n_q);
  const int nb = static_cast<int>(starts.size()) - 1;

  DeviceBuffer<bf16> dq(testing::ToBf16(q)), dok(testing::ToBf16(own_k)),
      dov(testing::ToBf16(own_v));
  DeviceBuffer<int32_t> dstarts(starts);
  DeviceBuffer<SqueezeLayerView> dviews(std::vector<SqueezeLayerView>(nb, dc.view));
  SqueezeSelectParams sp;
  sp.batch = nb;
  sp.n_q_heads = hq;
  sp.n_kv_heads = hkv;
  sp.head_dim = d;
  sp.scale = 1.0f / std::sqrt(static_cast<float>(d));
  sp.q = dq.get();
  sp.q_stride = stride;
  sp.views = dviews.get();
  sp.kv_budget = 1.0f;
  sp.max_clusters = c.k;
  sp.block_starts = dstarts.get();
  sp.max_block_tokens = block_size;
  const SqueezeSelectPlan splan = PlanSqueezeSelect(sp);
  DeviceBuffer<char> sws(splan.workspace_bytes);
  const size_t units = size_t(nb) * hkv;
  DeviceBuffer<int2> segs(units * splan.max_segments);
  DeviceBuffer<int32_t> nseg(units), sel_len(units);
  const SqueezeSelection sel{segs.get(), nseg.get(), sel_len.get(), nullptr};
  REQUIRE(SqueezeSelect(sp, splan, sel, sws.get(), sws.size(), nullptr).ok());

  DeviceBuffer<int32_t> dctx(std::vector<int32_t>(nb, n_ctx));
  DeviceBuffer<const bf16*> dkp(std::vector<const bf16*>(nb, dc.keys->get()));
  DeviceBuffer<const bf16*> dvp(std::vector<const bf16*>(nb, dc.values->get()));
  SparsePrefillParams p;
  p.num_blocks = nb;
  p.n_q_heads = hq;
  p.n_kv_heads = hkv;
  p.head_dim = d;
  p.scale = sp.scale;
  p.q = dq.get();
  p.q_stride = stride;
  p.block_starts = dstarts.get();
  p.max_block_tokens = block_size;
  p.ctx_len = dctx.get();
  p.ctx_k = dkp.get();
  p.ctx_v = dvp.get();
  p.segments = AsContextSegments(sel, splan);
  p.max_selected =
      SqueezeMaxSelectedKeys(SqueezePolicy::kBudget, 1.0, c.sink, c.body, c.window, c.largest);
  REQUIRE(p.max_selected == n_ctx);
  p.num_splits = splits;
  const SparsePrefillPlan plan = PlanSparsePrefill(p);
  INFO("splits " << plan.splits);
  DeviceBuffer<char> ws(plan.workspace_bytes);
  const size_t rows = size_t(n_q) * hq;
  DeviceBuffer<float> o_ctx(rows * d), o_own(rows * d);
  DeviceBuffer<cpu::AttentionPartial> st_ctx(rows), st_own(rows);
  REQUIRE(SparsePrefillAttention<float>(p, plan, o_ctx.get(), stride, st_ctx.get(), ws.get(),
                                        ws.size(), nullptr)
              .ok());
  PrefillAttentionParams own;
  own.q = dq.get();
  own.q_token_stride = stride;
  own.k = dok.get();
  own.v = dov.get();
  own.kv_token_stride = int64_t{hkv} * d;
  own.kv_head_stride = d;
  own.n_q = n_q;
  own.n_kv = n_q;
  own.n_q_heads = hq;
  own.n_kv_heads = hkv;
  own.head_dim = d;
  own.scale = sp.scale;
  own.causal = true;
  REQUIRE(PrefillAttention<float>(own, o_own.get(), stride, st_own.get(), nullptr).ok());
  REQUIRE(MergeAttentionPartials<float>(o_ctx.get(), st_ctx.get(), o_own.get(), st_own.get(),
                                        int64_t(rows), d, nullptr)
              .ok());

  // Dense: [hkv][n_ctx + n_q][d], the context rows then the own tokens, causal from n_ctx.
  const int64_t n_all = int64_t{n_ctx} + n_q;
  std::vector<float> all_k(size_t(hkv) * n_all * d), all_v(all_k.size());
  for (int h = 0; h < hkv; ++h) {
    std::copy_n(c.keys.begin() + size_t(h) * n_ctx * d, size_t(n_ctx) * d,
                all_k.begin() + size_t(h) * n_all * d);
    std::copy_n(c.values.begin() + size_t(h) * n_ctx * d, size_t(n_ctx) * d,
                all_v.begin() + size_t(h) * n_all * d);
    for (int t = 0; t < n_q; ++t) {
      std::copy_n(own_k.begin() + (size_t(t) * hkv + h) * d, d,
                  all_k.begin() + (size_t(h) * n_all + n_ctx + t) * d);
      std::copy_n(own_v.begin() + (size_t(t) * hkv + h) * d, d,
                  all_v.begin() + (size_t(h) * n_all + n_ctx + t) * d);
    }
  }
  DeviceBuffer<bf16> dak(testing::ToBf16(all_k)), dav(testing::ToBf16(all_v));
  PrefillAttentionParams dense = own;
  dense.k = dak.get();
  dense.v = dav.get();
  dense.kv_token_stride = d;
  dense.kv_head_stride = n_all * d;
  dense.n_kv = n_all;
  dense.q_offset = n_ctx;
  DeviceBuffer<float> o_dense(rows * d);
  REQUIRE(PrefillAttention<float>(dense, o_dense.get(), stride, nullptr, nullptr).ok());
  const std::vector<float> got = o_ctx.Download(), want = o_dense.Download();
  const double rel = RelativeL2(got, want);
  INFO("rel L2 " << rel << " max abs " << testing::MaxAbsDiff(got, want));
  CHECK(rel <= 5e-3);
  CHECK(testing::MaxAbsDiff(got, want) <= 2e-2);
  (void)g;
}

TEST_CASE("Squeezed prefill with kv_budget 1 equals dense PrefillAttention", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  RunBudgetOne(32, 8, 128, 200, 64, 9300);
  RunBudgetOne(32, 8, 128, 200, 64, 9300, 3);
  RunBudgetOne(8, 8, 64, 129, 64, 9301);
  RunBudgetOne(8, 8, 64, 129, 64, 9301, 2);
  RunBudgetOne(16, 2, 128, 127, 32, 9302);
  RunBudgetOne(4, 1, 64, 1, 64, 9303);
}

// Argument checks run on the host before any launch: no GPU needed.
TEST_CASE("SparsePrefillAttention rejects what it cannot run", "[sparse_prefill]") {
  alignas(16) static char fake[64];
  auto* any = reinterpret_cast<void*>(fake);
  SparsePrefillParams p;
  p.num_blocks = 2;
  p.n_q_heads = 32;
  p.n_kv_heads = 8;
  p.head_dim = 128;
  p.scale = 0.088f;
  p.q = static_cast<const bf16*>(any);
  p.q_stride = 32 * 128;
  p.block_starts = static_cast<const int32_t*>(any);
  p.max_block_tokens = 64;
  p.ctx_len = static_cast<const int32_t*>(any);
  p.ctx_k = static_cast<const bf16* const*>(any);
  p.ctx_v = static_cast<const bf16* const*>(any);
  p.segments = ContextSegments{static_cast<const int2*>(any), static_cast<const int32_t*>(any),
                               static_cast<const int32_t*>(any), 10};
  p.max_selected = 1000;
  const SparsePrefillPlan plan = PlanSparsePrefill(p);
  CHECK(plan.row_tiles == 2);  // 64 tokens * 4 heads / 128 rows (the wide kernel)
  CHECK(plan.splits == 1);
  CHECK(plan.workspace_bytes == size_t{2} * 8 * 1000 * 4);
  {
    // 4 blocks of 64 tokens, 16,552 keys, 132 SMs: 2 * 4 * 8 = 64 CTAs of 128 rows, so 4 splits
    // of 4,160 keys (a multiple of 64) make one wave of two CTAs per SM (5 would start a second);
    // partials after the row map.
    SparsePrefillParams q = p;
    q.num_blocks = 4;
    q.max_selected = 16552;
    const SparsePrefillPlan split = PlanSparsePrefill(q, 132);
    CHECK(split.splits == 4);
    CHECK(split.split_len == 4160);
    CHECK(split.partials_offset >= size_t{4} * 8 * 16552 * 4);
    CHECK(split.workspace_bytes == split.partials_offset + size_t{4} * 8 * 4 * 256 * (128 * 4 + 8));
    CHECK(PlanSparsePrefill(q, 4).splits == 1);  // 64 CTAs already fill 4 SMs
    SparsePrefillParams narrow = q;              // g = 1: 64 rows per block, 64-row CTAs
    narrow.n_q_heads = 8;
    CHECK(PlanSparsePrefill(narrow).row_tiles == 1);
    narrow.n_q_heads = narrow.n_kv_heads = 32;  // Llama-2 shape: 128 CTAs, 2 splits
    narrow.q_stride = 32 * 128;
    CHECK(PlanSparsePrefill(narrow, 132).splits == 2);
    narrow.num_blocks = 5;  // 160 CTAs: more than one per SM already
    CHECK(PlanSparsePrefill(narrow, 132).splits == 1);
    q.max_selected = 1500;  // too few keys to split
    CHECK(PlanSparsePrefill(q, 132).splits == 1);
    q.num_splits = 5;
    CHECK(PlanSparsePrefill(q, 132).splits == 5);
  }
  auto* out = static_cast<bf16*>(any);
  auto expect = [&](const SparsePrefillParams& q, StatusCode code, const std::string& words) {
    const SparsePrefillPlan pl = PlanSparsePrefill(q);
    const Status s = SparsePrefillAttention<bf16>(q, pl, out, 32 * 128, nullptr, any,
                                                  pl.workspace_bytes, nullptr);
    INFO(s.ToString());
    CHECK(s.code() == code);
    CHECK(s.message().find("SparsePrefillAttention") != std::string::npos);
    CHECK(s.message().find(words) != std::string::npos);
  };
  SparsePrefillParams q = p;
  q.head_dim = 96;
  q.q_stride = 32 * 96;
  expect(q, StatusCode::kUnimplemented, "head_dim 96");
  q = p;
  q.n_kv_heads = 2;  // group of 16
  expect(q, StatusCode::kUnimplemented, "exceeds");
  q = p;
  q.n_kv_heads = 5;
  expect(q, StatusCode::kInvalidArgument, "divide");
  q = p;
  q.num_blocks = -1;
  expect(q, StatusCode::kInvalidArgument, "num_blocks");
  q = p;
  q.scale = 0.0f;
  expect(q, StatusCode::kInvalidArgument, "scale");
  q = p;
  q.q_stride = 100;
  expect(q, StatusCode::kInvalidArgument, "q_stride");
  q = p;
  q.max_block_tokens = 0;
  expect(q, StatusCode::kInvalidArgument, "max_block_tokens");
  q = p;
  q.max_selected = -1;
  expect(q, StatusCode::kInvalidArgument, "max_selected");
  q = p;
  q.ctx_k = nullptr;
  expect(q, StatusCode::kInvalidArgument, "null pointer");
  q = p;
  q.num_splits = kSparsePrefillMaxSplits + 1;
  expect(q, StatusCode::kInvalidArgument, "splits");
  q = p;
  q.segments.max_segments = 0;
  expect(q, StatusCode::kInvalidArgument, "max_segments");
  q = p;
  q.q_stride = 32 * 128 + 4;
  expect(q, StatusCode::kInvalidArgument, "multiple of 8");
  // Too small a workspace; a plan for other params.
  Status s = SparsePrefillAttention<bf16>(p, plan, out, 32 * 128, nullptr, any,
                                          plan.workspace_bytes - 1, nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("workspace") != std::string::npos);
  SparsePrefillParams other = p;
  other.max_selected = 2000;
  s = SparsePrefillAttention<bf16>(p, PlanSparsePrefill(other), out, 32 * 128, nullptr, any,
                                   size_t{1} << 40, nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("plan") != std::string::npos);
  // No blocks: nothing to do.
  q = p;
  q.num_blocks = 0;
  CHECK(
      SparsePrefillAttention<bf16>(q, PlanSparsePrefill(q), out, 32 * 128, nullptr, any, 0, nullptr)
          .ok());
}

}  // namespace
}  // namespace sqz::cuda
