// Sparse decode attention: DecodeAttention with a ContextSegments list (decode_attention.h), fed by
// hand-made lists and by SqueezeSelect, against cpu::AttendAccumulate over the same rows followed
// by the request's paged own tokens; and kv_budget 1 against the dense kernel.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>
#include <random>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/sparse_decode_test_util.h"
#include "kernels/cuda/squeeze_select.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::DeviceContext;
using testing::HostContext;
using testing::MakeContext;
using testing::RandomFloats;
using testing::RelativeL2;

int NumSms() {
  int sms = 0;
  SQZ_TEST_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  return sms;
}

// Requests over contexts, each with paged own tokens; `rows` holds, per (request, kv head), the
// context rows to attend (in order) for the CPU oracle.
struct Problem {
  int hq = 0, hkv = 0, d = 0;
  std::vector<int> ctx_of;
  std::vector<int32_t> own_len;
  std::vector<float> q;  // [batch][hq][d]
  std::vector<float> pool_k, pool_v;
  std::vector<int32_t> indptr, block_ids;
};

Problem MakeProblem(int hq, int hkv, int d, const std::vector<int>& ctx_of,
                    const std::vector<int32_t>& own_len, uint32_t seed) {
  Problem pb;
  pb.hq = hq;
  pb.hkv = hkv;
  pb.d = d;
  pb.ctx_of = ctx_of;
  pb.own_len = own_len;
  const size_t n = ctx_of.size();
  pb.q = testing::RoundBf16(RandomFloats(n * hq * d, seed++, 1.0f));
  pb.indptr.push_back(0);
  int32_t blocks = 0;
  for (size_t r = 0; r < n; ++r) {
    blocks += (own_len[r] + kPageSize - 1) / kPageSize;
    pb.indptr.push_back(blocks);
  }
  const int32_t pool_blocks = blocks + 3;
  std::vector<int32_t> perm(pool_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed++));
  pb.block_ids.assign(perm.begin(), perm.begin() + blocks);
  if (pb.block_ids.empty()) pb.block_ids.push_back(0);
  pb.pool_k = testing::RoundBf16(RandomFloats(size_t(pool_blocks) * hkv * kPageSize * d, seed++));
  pb.pool_v = testing::RoundBf16(RandomFloats(size_t(pool_blocks) * hkv * kPageSize * d, seed++));
  return pb;
}

// The oracle over the given rows of each (request, kv head), then the own tokens.
std::vector<float> Reference(const Problem& pb, const std::vector<HostContext>& ctx,
                             const std::vector<std::vector<int32_t>>& rows) {
  const size_t n = pb.ctx_of.size();
  const int g = pb.hq / pb.hkv, d = pb.d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> o(n * pb.hq * d, 0.0f), k_rows, v_rows;
  for (size_t r = 0; r < n; ++r) {
    const HostContext& c = ctx[pb.ctx_of[r]];
    for (int h = 0; h < pb.hq; ++h) {
      const int kvh = h / g;
      const std::vector<int32_t>& sel = rows[r * pb.hkv + kvh];
      k_rows.clear();
      v_rows.clear();
      for (int32_t row : sel) {
        const size_t off = (size_t(kvh) * c.n_tokens() + row) * d;
        k_rows.insert(k_rows.end(), c.keys.begin() + off, c.keys.begin() + off + d);
        v_rows.insert(v_rows.end(), c.values.begin() + off, c.values.begin() + off + d);
      }
      for (int32_t u = 0; u < pb.own_len[r]; ++u) {
        const int32_t blk = pb.block_ids[pb.indptr[r] + u / kPageSize];
        const size_t src = ((size_t(blk) * pb.hkv + kvh) * kPageSize + u % kPageSize) * d;
        k_rows.insert(k_rows.end(), pb.pool_k.begin() + src, pb.pool_k.begin() + src + d);
        v_rows.insert(v_rows.end(), pb.pool_v.begin() + src, pb.pool_v.begin() + src + d);
      }
      cpu::AttentionPartial st;
      const int64_t keys = static_cast<int64_t>(k_rows.size() / d);
      cpu::AttendAccumulate(pb.q.data() + (r * pb.hq + h) * d, k_rows.data(), d, v_rows.data(), d,
                            keys, d, scale, o.data() + (r * pb.hq + h) * d, &st);
    }
  }
  return o;
}

// Device side of a Problem plus its contexts; Params() is the dense decode over full contexts.
struct DeviceProblem {
  DeviceProblem(const Problem& pb, const std::vector<HostContext>& ctx)
      : q(testing::ToBf16(pb.q)),
        pool_k(testing::ToBf16(pb.pool_k)),
        pool_v(testing::ToBf16(pb.pool_v)),
        own_len(pb.own_len),
        indptr(pb.indptr),
        block_ids(pb.block_ids),
        ctx_len(pb.ctx_of.size()),
        ctx_k(pb.ctx_of.size()),
        ctx_v(pb.ctx_of.size()) {
    for (const HostContext& c : ctx) dev.push_back(std::make_unique<DeviceContext>(c));
    std::vector<int32_t> lens;
    std::vector<const bf16*> kp, vp;
    for (int i : pb.ctx_of) {
      lens.push_back(ctx[i].n_tokens());
      kp.push_back(dev[i]->keys->get());
      vp.push_back(dev[i]->values->get());
      max_ctx = std::max<int64_t>(max_ctx, ctx[i].n_tokens());
    }
    ctx_len.Upload(lens);
    ctx_k.Upload(kp);
    ctx_v.Upload(vp);
    for (int32_t u : pb.own_len) max_own = std::max<int64_t>(max_own, u);
  }
  DecodeAttentionParams Params(const Problem& pb) const {
    DecodeAttentionParams p;
    p.batch = static_cast<int>(pb.ctx_of.size());
    p.n_q_heads = pb.hq;
    p.n_kv_heads = pb.hkv;
    p.head_dim = pb.d;
    p.scale = 1.0f / std::sqrt(static_cast<float>(pb.d));
    p.q = q.get();
    p.q_stride = pb.hq * pb.d;
    p.ctx_len = ctx_len.get();
    p.ctx_k = ctx_k.get();
    p.ctx_v = ctx_v.get();
    p.own_len = own_len.get();
    p.block_indptr = indptr.get();
    p.block_ids = block_ids.get();
    p.pool_k = pool_k.get();
    p.pool_v = pool_v.get();
    p.max_kv_len = max_ctx + max_own;
    return p;
  }
  std::vector<std::unique_ptr<DeviceContext>> dev;
  DeviceBuffer<bf16> q, pool_k, pool_v;
  DeviceBuffer<int32_t> own_len, indptr, block_ids, ctx_len;
  DeviceBuffer<const bf16*> ctx_k, ctx_v;
  int64_t max_ctx = 0, max_own = 0;
};

// Runs DecodeAttention (fp32 out) and returns the output; stats into *st when given.
// fused: the merge in the chunk kernel (default) or in its own kernel.
std::vector<float> RunDecode(const DecodeAttentionParams& p, int64_t force_chunk,
                             std::vector<cpu::AttentionPartial>* st = nullptr, bool fused = true,
                             int stages = 0) {
  DecodePlanOptions options;
  options.force_chunk_len = force_chunk;
  options.fused_merge = fused;
  options.mma_stages = stages;
  const DecodePlan plan = PlanDecodeAttention(p, NumSms(), options);
  DeviceBuffer<char> ws(plan.workspace_bytes);
  if (ws.size() > 0) SQZ_TEST_CUDA(cudaMemset(ws.get(), 0, ws.size()));  // counters zero once
  DeviceBuffer<float> out(size_t(p.batch) * p.n_q_heads * p.head_dim);
  DeviceBuffer<cpu::AttentionPartial> stats(size_t(p.batch) * p.n_q_heads);
  const Status s =
      DecodeAttention<float>(p, plan, out.get(), stats.get(), ws.get(), ws.size(), nullptr);
  INFO(s.ToString() << " chunks=" << plan.num_chunks << " chunk_len=" << plan.chunk_len);
  REQUIRE(s.ok());
  if (st) *st = stats.Download();
  return out.Download();
}

// Per-request relative L2 of got against want.
void CheckPerRequest(const std::vector<float>& got, const std::vector<float>& want, int batch,
                     size_t row, double tol) {
  for (int r = 0; r < batch; ++r) {
    INFO("request " << r);
    std::vector<float> g(got.begin() + r * row, got.begin() + (r + 1) * row);
    std::vector<float> w(want.begin() + r * row, want.begin() + (r + 1) * row);
    REQUIRE(RelativeL2(g, w) < tol);
  }
}

TEST_CASE("Sparse DecodeAttention over hand-made segment lists matches the CPU oracle", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 700;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{3, 3}, std::pair{8, 2}, std::pair{32, 4}}) {
      for (auto [force_chunk, max_run] :
           {std::pair<int64_t, int>{0, 9}, {64, 9}, {192, 9}, {0, 1}, {320, 1}, {128, 200}}) {
        // max_run 1: one-row segments, so a 64-key tile spans 64 segments (the widest search);
        // max_run 200: segments of up to 200 rows straddling several 128-key chunks.
        INFO("d=" << d << " hq=" << hq << " hkv=" << hkv << " force_chunk=" << force_chunk
                  << " max_run=" << max_run);
        std::vector<HostContext> ctx;
        ctx.push_back(MakeContext(hkv, d, 1, 0, 0, 0, seed++, 1));
        ctx.back().body = 1000;  // a plain context of 1000 rows (only K/V are used here)
        ctx.back().keys = testing::RoundBf16(RandomFloats(size_t(hkv) * 1000 * d, seed++));
        ctx.back().values = testing::RoundBf16(RandomFloats(size_t(hkv) * 1000 * d, seed++));
        ctx.push_back(MakeContext(hkv, d, 1, 0, 0, 0, seed++, 1));
        ctx.back().body = 129;
        ctx.back().keys = testing::RoundBf16(RandomFloats(size_t(hkv) * 129 * d, seed++));
        ctx.back().values = testing::RoundBf16(RandomFloats(size_t(hkv) * 129 * d, seed++));
        const std::vector<int> ctx_of = {0, 1, 0};
        const Problem pb = MakeProblem(hq, hkv, d, ctx_of, {0, 17, 33}, seed++);
        // Segment lists: random runs of 1 .. max_run rows with gaps, in random order (the kernel
        // takes them in list order); head 0 of request 1 selects nothing.
        const int32_t max_segments = 600;
        std::vector<int2> segs(ctx_of.size() * hkv * max_segments, int2{0, 0});
        std::vector<int32_t> nseg(ctx_of.size() * hkv), sel_len(ctx_of.size() * hkv);
        std::vector<std::vector<int32_t>> rows(ctx_of.size() * hkv);
        std::mt19937 rng(seed++);
        for (size_t r = 0; r < ctx_of.size(); ++r) {
          const int32_t n_rows = ctx[ctx_of[r]].n_tokens();
          for (int h = 0; h < hkv; ++h) {
            const size_t u = r * hkv + h;
            std::vector<std::pair<int32_t, int32_t>> runs;  // (first row, length)
            for (int32_t at = int32_t(rng() % 4); at < n_rows;) {
              const int32_t len = std::min<int32_t>(1 + rng() % max_run, n_rows - at);
              if (max_run == 1 || rng() % 3 != 0) runs.push_back({at, len});
              at += len + 1 + (max_run == 1 ? 0 : int32_t(rng() % 6));
            }
            std::shuffle(runs.begin(), runs.end(), rng);
            if (runs.size() > size_t(max_segments)) runs.resize(max_segments);
            if (r == 1 && h == 0) runs.clear();
            int32_t key = 0;
            for (size_t s = 0; s < runs.size(); ++s) {
              segs[u * max_segments + s] = int2{key + runs[s].second, runs[s].first - key};
              for (int32_t i = 0; i < runs[s].second; ++i) rows[u].push_back(runs[s].first + i);
              key += runs[s].second;
            }
            nseg[u] = static_cast<int32_t>(runs.size());
            sel_len[u] = key;
          }
        }
        DeviceProblem dp(pb, ctx);
        DeviceBuffer<int2> dsegs(segs);
        DeviceBuffer<int32_t> dnseg(nseg), dlen(sel_len);
        DecodeAttentionParams p = dp.Params(pb);
        p.sparse = ContextSegments{dsegs.get(), dnseg.get(), dlen.get(), max_segments};
        p.max_kv_len = *std::max_element(sel_len.begin(), sel_len.end()) + dp.max_own;
        const std::vector<float> want = Reference(pb, ctx, rows);
        for (bool fused : {true, false}) {
          for (int stages : {3, 2}) {
            INFO("fused=" << fused << " stages=" << stages);
            const std::vector<float> got = RunDecode(p, force_chunk, nullptr, fused, stages);
            CheckPerRequest(got, want, int(ctx_of.size()), size_t(hq) * d, 1e-2);
          }
        }
      }
    }
  }
}

// SqueezeSelect then sparse DecodeAttention, as the engine runs them.
struct Pipeline {
  std::vector<float> out;
  std::vector<std::vector<int32_t>> rows;  // per (request, kv head)
};

Pipeline RunPipeline(const Problem& pb, const std::vector<HostContext>& ctx, float budget,
                     SqueezeReduce reduce, bool hierarchical, int64_t force_chunk) {
  DeviceProblem dp(pb, ctx);
  std::vector<SqueezeLayerView> views;
  int32_t max_k = 1, max_k1 = 1;
  int64_t bound = 0;
  for (int i : pb.ctx_of) {
    views.push_back(dp.dev[i]->view);
    max_k = std::max(max_k, ctx[i].k);
    max_k1 = std::max(max_k1, ctx[i].k1);
    bound = std::max(bound, SqueezeMaxSelectedKeys(SqueezePolicy::kBudget, budget, ctx[i].sink,
                                                   ctx[i].body, ctx[i].window, ctx[i].largest));
  }
  DeviceBuffer<SqueezeLayerView> dviews(views);
  SqueezeSelectParams sp;
  sp.batch = static_cast<int>(pb.ctx_of.size());
  sp.n_q_heads = pb.hq;
  sp.n_kv_heads = pb.hkv;
  sp.head_dim = pb.d;
  sp.scale = 1.0f / std::sqrt(static_cast<float>(pb.d));
  sp.q = dp.q.get();
  sp.q_stride = pb.hq * pb.d;
  sp.views = dviews.get();
  sp.kv_budget = budget;
  sp.reduce = reduce;
  sp.hierarchical = hierarchical;
  sp.max_clusters = max_k;
  sp.max_coarse = max_k1;
  const SqueezeSelectPlan plan = PlanSqueezeSelect(sp);
  DeviceBuffer<char> ws(plan.workspace_bytes);
  const size_t units = sp.batch * size_t(pb.hkv);
  DeviceBuffer<int2> segs(units * plan.max_segments);
  DeviceBuffer<int32_t> nseg(units), len(units);
  const SqueezeSelection sel{segs.get(), nseg.get(), len.get(), nullptr};
  REQUIRE(SqueezeSelect(sp, plan, sel, ws.get(), ws.size(), nullptr).ok());
  DecodeAttentionParams p = dp.Params(pb);
  p.sparse = AsContextSegments(sel, plan);
  p.max_kv_len = bound + dp.max_own;
  Pipeline res;
  res.out = RunDecode(p, force_chunk);
  {
    // Again with programmatic launches: the lookup's selection kernel behind its scoring kernel,
    // the attention right behind the lookup (each scheduled during the tail of the kernel before):
    // the same bits.
    DecodePlanOptions options;
    options.force_chunk_len = force_chunk;
    const DecodePlan dplan = PlanDecodeAttention(p, NumSms(), options);
    DeviceBuffer<char> dws(std::max<size_t>(dplan.workspace_bytes, 16));
    SQZ_TEST_CUDA(cudaMemset(dws.get(), 0, dws.size()));
    DeviceBuffer<float> out(size_t(p.batch) * p.n_q_heads * p.head_dim);
    SqueezeSelectPlan chained_plan = plan;  // the selection kernel chained to its scoring too
    chained_plan.chained = true;
    REQUIRE(SqueezeSelect(sp, chained_plan, sel, ws.get(), ws.size(), nullptr).ok());
    DecodeAttentionParams chained = p;
    chained.programmatic = true;
    REQUIRE(
        DecodeAttention<float>(chained, dplan, out.get(), nullptr, dws.get(), dws.size(), nullptr)
            .ok());
    REQUIRE(out.Download() == res.out);
    // The same through the cluster selection, where the shapes allow one.
    for (int ctas : testing::ClusterSizesFor(sp)) {
      if (ctas > 8 || sp.hierarchical) continue;
      INFO("chained cluster selection of " << ctas << " CTAs");
      chained_plan.select_ctas = ctas;
      SQZ_TEST_CUDA(cudaMemset(dws.get(), 0, dws.size()));
      REQUIRE(SqueezeSelect(sp, chained_plan, sel, ws.get(), ws.size(), nullptr).ok());
      REQUIRE(
          DecodeAttention<float>(chained, dplan, out.get(), nullptr, dws.get(), dws.size(), nullptr)
              .ok());
      REQUIRE(out.Download() == res.out);
    }
  }
  const auto h_segs = segs.Download();
  const auto h_nseg = nseg.Download();
  const auto h_len = len.Download();
  res.rows.resize(units);
  for (size_t u = 0; u < units; ++u) {
    REQUIRE(h_len[u] <= bound);
    REQUIRE(testing::ExpandSegments(h_segs.data() + u * plan.max_segments, h_nseg[u], h_len[u],
                                    ctx[pb.ctx_of[u / pb.hkv]].n_tokens(), &res.rows[u]));
  }
  return res;
}

TEST_CASE("SqueezeSelect + sparse DecodeAttention match the CPU oracle on the selected rows",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 900;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{4, 4}, std::pair{32, 8}}) {
      for (bool hier : {false, true}) {
        INFO("d=" << d << " hq=" << hq << " hkv=" << hkv << " hierarchical=" << hier);
        std::vector<HostContext> ctx;
        ctx.push_back(MakeContext(hkv, d, 127, hier ? 9 : 0, 4, 100, seed++, 30));
        ctx.push_back(MakeContext(hkv, d, 300, hier ? 17 : 0, 4, 37, seed++, 12));
        const Problem pb = MakeProblem(hq, hkv, d, {0, 1, 1}, {5, 0, 64}, seed++);
        for (int64_t force_chunk : {int64_t{0}, int64_t{128}}) {
          const Pipeline res = RunPipeline(pb, ctx, 0.125f, SqueezeReduce::kMax, hier, force_chunk);
          const std::vector<float> want = Reference(pb, ctx, res.rows);
          CheckPerRequest(res.out, want, 3, size_t(hq) * d, 1e-2);
        }
      }
    }
  }
}

TEST_CASE("Sparse DecodeAttention with kv_budget 1 equals the dense kernel", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 1100;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{32, 8}, std::pair{8, 1}}) {
      INFO("d=" << d << " hq=" << hq << " hkv=" << hkv);
      std::vector<HostContext> ctx;
      ctx.push_back(MakeContext(hkv, d, 500, 0, 4, 100, seed++, 20));
      ctx.push_back(MakeContext(hkv, d, 3, 0, 1, 3, seed++, 5));
      const Problem pb = MakeProblem(hq, hkv, d, {0, 1, 0}, {0, 9, 40}, seed++);
      const Pipeline res = RunPipeline(pb, ctx, 1.0f, SqueezeReduce::kMean, false, 0);
      for (size_t u = 0; u < res.rows.size(); ++u) {
        const int32_t n = ctx[pb.ctx_of[u / hkv]].n_tokens();
        REQUIRE(res.rows[u].size() == size_t(n));  // every row, in order
        for (int32_t i = 0; i < n; ++i) REQUIRE(res.rows[u][i] == i);
      }
      DeviceProblem dp(pb, ctx);
      // The dense run over the same key count gets the same split as the sparse one.
      const std::vector<float> dense = RunDecode(dp.Params(pb), 0);
      size_t exact = 0;
      for (size_t i = 0; i < dense.size(); ++i) exact += dense[i] == res.out[i];
      INFO("bit-identical values: " << exact << " of " << dense.size());
      CheckPerRequest(res.out, dense, 3, size_t(hq) * d, 1.0 / 256);
    }
  }
}

TEST_CASE("Sparse DecodeAttention rejects what it cannot run", "[sparse_decode]") {
  alignas(16) static char fake[64];
  const auto* any = reinterpret_cast<const bf16*>(fake);
  DecodeAttentionParams p;
  p.batch = 1;
  p.n_q_heads = 8;
  p.n_kv_heads = 2;
  p.head_dim = 128;
  p.scale = 0.1f;
  p.q = any;
  p.q_stride = 8 * 128;
  p.ctx_len = reinterpret_cast<const int32_t*>(fake);
  p.ctx_k = reinterpret_cast<const bf16* const*>(fake);
  p.ctx_v = reinterpret_cast<const bf16* const*>(fake);
  p.max_kv_len = 100;
  p.sparse.segments = reinterpret_cast<const int2*>(fake);
  const DecodePlan plan = PlanDecodeAttention(p, 132);
  std::vector<float> ws(1 << 16);
  float* out = reinterpret_cast<float*>(fake);
  // Segments without counts and lengths.
  Status s = DecodeAttention<float>(p, plan, out, nullptr, ws.data(), ws.size() * 4, nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("sparse context") != std::string::npos);
  p.sparse.num_segments = reinterpret_cast<const int32_t*>(fake);
  p.sparse.selected_len = reinterpret_cast<const int32_t*>(fake);
  p.sparse.max_segments = 0;
  s = DecodeAttention<float>(p, plan, out, nullptr, ws.data(), ws.size() * 4, nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("max_segments") != std::string::npos);
  // A CUDA-core head dim has no sparse instance.
  p.sparse.max_segments = 4;
  p.head_dim = 48;
  p.q_stride = 8 * 48;
  s = DecodeAttention<float>(p, PlanDecodeAttention(p, 132), out, nullptr, ws.data(), ws.size() * 4,
                             nullptr);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(s.message().find("head_dim 32, 64, 96 or 128") != std::string::npos);
}

}  // namespace
}  // namespace sqz::cuda
