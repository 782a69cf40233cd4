// SqueezeSelect in block mode (squeeze_select.h, "Blocks of query tokens"): one selection per
// (block of query tokens, kv head), against SelectClusters with n_tokens = the block's length.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <set>
#include <string>
#include <utility>

#include "engine/squeeze/selection.h"
#include "kernels/cuda/sparse_decode_test_util.h"
#include "kernels/cuda/squeeze_select.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using testing::DeviceBuffer;
using testing::DeviceContext;
using testing::HostContext;
using testing::MakeContext;

struct BlockCase {
  int hq = 4, hkv = 1, d = 128;
  SqueezePolicy policy = SqueezePolicy::kBudget;
  SqueezeReduce reduce = SqueezeReduce::kMax;
  float value = 0.125f;  // budget (threshold cases compute theirs from the CPU's p)
};

// Block b has lengths[b] tokens (consecutive in q) and reads contexts[ctx_of[b]]. Runs
// SqueezeSelect in block mode (eagerly, or replaying a CUDA graph of the call) and compares every
// (block, kv head) with SelectClusters over the block's tokens; the cluster selection must match
// the single-block kernel exactly.
void RunBlocksAndCompare(const BlockCase& cs, const std::vector<HostContext>& contexts,
                         const std::vector<int>& ctx_of, const std::vector<int32_t>& lengths,
                         uint32_t seed, bool graph = false) {
  const int batch = static_cast<int>(ctx_of.size());
  const int g = cs.hq / cs.hkv;
  const int d = cs.d;
  INFO("hq=" << cs.hq << " hkv=" << cs.hkv << " d=" << d << " policy=" << int(cs.policy)
             << " reduce=" << int(cs.reduce) << " value=" << cs.value << " graph=" << graph);
  std::vector<int32_t> starts(batch + 1, 0);
  for (int b = 0; b < batch; ++b) starts[b + 1] = starts[b] + lengths[b];
  const int32_t max_len = std::max(1, *std::max_element(lengths.begin(), lengths.end()));
  std::vector<std::unique_ptr<DeviceContext>> dev;
  for (const HostContext& c : contexts) dev.push_back(std::make_unique<DeviceContext>(c));
  std::vector<SqueezeLayerView> views;
  int32_t max_k = 1;
  for (int b = 0; b < batch; ++b) {
    views.push_back(dev[ctx_of[b]]->view);
    max_k = std::max(max_k, contexts[ctx_of[b]].k);
  }
  const size_t tokens = std::max<size_t>(starts[batch], 1);
  const int64_t stride = int64_t{cs.hq} * d;
  const std::vector<float> q =
      testing::RoundBf16(testing::RandomFloats(tokens * stride, seed, 1.0f));
  auto q_of = [&](int b, int h) { return q.data() + starts[b] * stride + int64_t{h} * g * d; };

  SelectionParams cpu;
  cpu.policy =
      cs.policy == SqueezePolicy::kBudget ? SelectionPolicy::kBudget : SelectionPolicy::kThreshold;
  cpu.reduce = cs.reduce == SqueezeReduce::kMax ? GqaReduce::kMax : GqaReduce::kMean;
  SelectionScratch scratch;
  std::vector<float> values(batch, cs.value);
  if (cs.policy == SqueezePolicy::kThreshold) {
    for (int b = 0; b < batch; ++b) {
      const HeadIndex& idx = contexts[ctx_of[b]].heads[0];
      std::vector<float> pr(idx.counts.size());
      ClusterProbabilities(idx, d, q_of(b, 0), lengths[b], stride, g, cpu.reduce, pr.data(),
                           &scratch);
      values[b] = testing::ThresholdAQuarterDown(std::move(pr));
    }
  }

  SqueezeSelectParams p;
  p.batch = batch;
  p.n_q_heads = cs.hq;
  p.n_kv_heads = cs.hkv;
  p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  DeviceBuffer<__nv_bfloat16> dq(testing::ToBf16(q));
  DeviceBuffer<SqueezeLayerView> dviews(views);
  DeviceBuffer<float> dvalues(values);
  DeviceBuffer<int32_t> dstarts(starts);
  p.q = dq.get();
  p.q_stride = stride;
  p.views = dviews.get();
  p.policy = cs.policy;
  p.reduce = cs.reduce;
  p.kv_budget = cs.value;
  p.per_request_value = dvalues.get();
  p.max_clusters = max_k;
  p.block_starts = dstarts.get();
  p.max_block_tokens = max_len;
  const SqueezeSelectPlan plan = PlanSqueezeSelect(p);
  REQUIRE(plan.block_rows >= max_len * g);
  DeviceBuffer<char> ws(plan.workspace_bytes);
  const testing::SelectionOutputs single = testing::RunSqueezeSelect(p, plan, 1, ws, graph);
  // The cluster selection (every size the shapes fit) must give the same outputs exactly.
  for (int ctas : testing::ClusterSizesFor(p)) {
    INFO("cluster selection of " << ctas << " CTAs against the single-block kernel");
    testing::RequireSameSelection(single, testing::RunSqueezeSelect(p, plan, ctas, ws, graph),
                                  plan.max_segments);
  }
  // Scoring CTAs that each take a run of query blocks (reloading the centroids where the run
  // crosses into another context) must give the same outputs bit for bit.
  for (int span : {2, 3, batch}) {
    if (span <= 1) continue;
    INFO("block_span " << span << " against 1");
    SqueezeSelectPlan spanned = plan;
    spanned.block_span = span;
    testing::RequireSameSelection(single, testing::RunSqueezeSelect(p, spanned, 1, ws, graph),
                                  plan.max_segments);
  }
  const std::vector<int2>& h_segs = single.segments;
  const std::vector<int32_t>& h_nseg = single.num_segments;
  const std::vector<int32_t>& h_len = single.selected_len;
  const std::vector<int32_t>& h_body = single.body_selected;

  int total_diff = 0;
  for (int b = 0; b < batch; ++b) {
    const HostContext& c = contexts[ctx_of[b]];
    cpu.kv_budget = values[b];
    cpu.threshold = values[b];
    for (int h = 0; h < cs.hkv; ++h) {
      INFO("block " << b << " (" << lengths[b] << " tokens, context " << ctx_of[b] << ", k=" << c.k
                    << ") kv head " << h);
      const HeadIndex& idx = c.heads[h];
      const size_t u = size_t(b) * cs.hkv + h;
      int64_t got_keys = 0;
      const std::set<int32_t> got =
          testing::CheckedSelection(c, h, h_segs.data() + u * plan.max_segments, h_nseg[u],
                                    plan.max_segments, h_len[u], h_body[u], &got_keys);
      SelectionResult want;
      SelectClusters(idx, d, q_of(b, h), lengths[b], stride, g, cpu, &scratch, &want);
      // Ties aside: only clusters whose block p is within rounding of the cut may differ.
      total_diff += testing::DifferingAtTiesOnly(got, got_keys, want, cs.policy, values[b], [&] {
        std::vector<float> pr(c.k);
        ClusterProbabilities(idx, d, q_of(b, h), lengths[b], stride, g, cpu.reduce, pr.data(),
                             &scratch);
        return pr;
      });
    }
  }
  REQUIRE(total_diff <= std::max<int>(2, batch * cs.hkv / 4));
}

TEST_CASE("SqueezeSelect per query block matches SelectClusters over blocks of 1..127 tokens",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 7000;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{2, 2}, std::pair{8, 2}, std::pair{12, 4}, std::pair{16, 2}}) {
      for (auto policy : {SqueezePolicy::kBudget, SqueezePolicy::kThreshold}) {
        for (auto reduce : {SqueezeReduce::kMax, SqueezeReduce::kMean}) {
          std::vector<HostContext> ctx;
          ctx.push_back(MakeContext(hkv, d, 1000, 0, 4, 7, seed++, 40, 2.0f, false));
          ctx.push_back(MakeContext(hkv, d, 127, 0, 0, 3, seed++, 40, 2.0f, false));
          ctx.push_back(MakeContext(hkv, d, 3, 0, 4, 0, seed++, 40, 2.0f, false));
          BlockCase cs;
          cs.hq = hq;
          cs.hkv = hkv;
          cs.d = d;
          cs.policy = policy;
          cs.reduce = reduce;
          // Blocks of 1, 3, 64, 127 and 2 tokens; blocks 0 and 2 share a context.
          RunBlocksAndCompare(cs, ctx, {0, 1, 0, 1, 2}, {1, 3, 64, 127, 2}, seed++);
        }
      }
    }
  }
}

TEST_CASE("SqueezeSelect per query block: budgets 0 to 1, empty blocks, a captured graph",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 7500;
  for (float budget : {0.0f, 0.125f, 1.0f}) {
    std::vector<HostContext> ctx;
    ctx.push_back(MakeContext(8, 128, 1300, 0, 4, 100, seed++, 40, 2.0f, false));
    ctx.push_back(MakeContext(8, 128, 129, 0, 4, 100, seed++, 40, 2.0f, false));
    BlockCase cs;
    cs.hq = 32;
    cs.hkv = 8;
    cs.value = budget;
    // A block of 0 tokens selects sink and window only (as SelectClusters with n_tokens = 0).
    RunBlocksAndCompare(cs, ctx, {0, 1, 0, 1}, {64, 0, 64, 33}, seed++);
  }
  BlockCase cs;
  cs.hq = 32;
  cs.hkv = 32;  // Llama-2 shape: one query head per kv head
  std::vector<HostContext> ctx;
  ctx.push_back(MakeContext(32, 128, 700, 0, 4, 100, seed++, 40, 2.0f, false));
  RunBlocksAndCompare(cs, ctx, {0, 0, 0}, {64, 64, 17}, seed++, /*graph=*/true);
}

TEST_CASE("SqueezeSelect per query block: 6554 clusters, where the cluster selection pays",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 7900;
  for (auto policy : {SqueezePolicy::kBudget, SqueezePolicy::kThreshold}) {
    std::vector<HostContext> ctx;
    ctx.push_back(MakeContext(8, 128, 6554, 0, 4, 100, seed++, 40, 2.0f, false));
    BlockCase cs;
    cs.hq = 32;
    cs.hkv = 8;
    cs.policy = policy;
    RunBlocksAndCompare(cs, ctx, {0, 0}, {16, 5}, seed++);
  }
}

// Host-side checks of block mode: no GPU needed.
TEST_CASE("SqueezeSelect block mode: plan and argument checks", "[squeeze_select]") {
  alignas(16) static char fake[64];
  auto* any = reinterpret_cast<void*>(fake);
  SqueezeSelectParams p;
  p.batch = 4;
  p.n_q_heads = 24;
  p.n_kv_heads = 8;  // g = 3: rows padded to 4 per token
  p.head_dim = 128;
  p.scale = 0.088f;
  p.q = static_cast<const __nv_bfloat16*>(any);
  p.q_stride = 24 * 128;
  p.views = static_cast<const SqueezeLayerView*>(any);
  p.max_clusters = 1000;
  const SqueezeSelectPlan token_plan = PlanSqueezeSelect(p);
  CHECK(token_plan.block_rows == 0);
  p.block_starts = static_cast<const int32_t*>(any);
  p.max_block_tokens = 64;
  const SqueezeSelectPlan plan = PlanSqueezeSelect(p);
  CHECK(plan.block_rows == 64 * 4);
  CHECK(plan.fine_chunks == token_plan.fine_chunks);
  CHECK(plan.max_segments == token_plan.max_segments);
  // Row statistics per chunk at least: 4 blocks * 8 heads * 256 rows * 4 chunks * 8 bytes.
  CHECK(plan.workspace_bytes >= size_t{4} * 8 * 256 * 4 * 8);
  // Without an SM count one query block per scoring CTA; with one, runs of blocks that keep four
  // waves of CTAs (a 1,024-token prompt of a Llama-2 shape over 6554 centroids: 8 blocks per CTA).
  CHECK(plan.block_span == 1);
  {
    SqueezeSelectParams big = p;
    big.batch = 16;
    big.n_q_heads = big.n_kv_heads = 32;
    big.q_stride = 32 * 128;
    big.max_clusters = 6554;
    CHECK(PlanSqueezeSelect(big, 132).block_span == 8);
    big.batch = 1;
    CHECK(PlanSqueezeSelect(big, 132).block_span == 1);
  }
  SqueezeSelection out{static_cast<int2*>(any), static_cast<int32_t*>(any),
                       static_cast<int32_t*>(any), nullptr};
  auto expect = [&](const SqueezeSelectParams& q, StatusCode code, const std::string& words) {
    const SqueezeSelectPlan pl = PlanSqueezeSelect(q);
    const Status s = SqueezeSelect(q, pl, out, any, pl.workspace_bytes, nullptr);
    INFO(s.ToString());
    CHECK(s.code() == code);
    CHECK(s.message().find("SqueezeSelect") != std::string::npos);
    CHECK(s.message().find(words) != std::string::npos);
  };
  SqueezeSelectParams q = p;
  q.max_block_tokens = 0;
  expect(q, StatusCode::kInvalidArgument, "max_block_tokens");
  q = p;
  q.hierarchical = true;
  q.max_coarse = 10;
  expect(q, StatusCode::kUnimplemented, "hierarchical");
  q = p;
  {
    SqueezeSelectPlan zero_span = PlanSqueezeSelect(q);
    zero_span.block_span = 0;
    const Status s = SqueezeSelect(q, zero_span, out, any, zero_span.workspace_bytes, nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("block_span") != std::string::npos);
  }
  // A plan made for another block bound.
  q = p;
  q.max_block_tokens = 65;
  const Status s = SqueezeSelect(p, PlanSqueezeSelect(q), out, any, size_t{1} << 40, nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("plan") != std::string::npos);
}

}  // namespace
}  // namespace sqz::cuda
