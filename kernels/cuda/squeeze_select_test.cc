#include "kernels/cuda/squeeze_select.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/squeeze/selection.h"
#include "kernels/cuda/sparse_decode_test_util.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using testing::DeviceBuffer;
using testing::DeviceContext;
using testing::HostContext;
using testing::MakeContext;

struct Case {
  int hq = 4, hkv = 1, d = 128;
  SqueezePolicy policy = SqueezePolicy::kBudget;
  SqueezeReduce reduce = SqueezeReduce::kMax;
  bool hierarchical = false;
  float value = 0.125f;        // budget (threshold cases compute theirs from the CPU's p)
  std::vector<float> budgets;  // budget policy: request r gets budgets[r % size] when not empty
  bool ties = false;           // many exactly tied p: any number may differ from the CPU at the cut
  bool grouped_graph = false;  // run the grouped scoring through a captured CUDA graph
};

// Groups for params.group_starts: runs of adjacent requests over the same context.
std::vector<int32_t> GroupStarts(const std::vector<int>& ctx_of) {
  std::vector<int32_t> starts = {0};
  for (size_t r = 1; r < ctx_of.size(); ++r) {
    if (ctx_of[r] != ctx_of[r - 1]) starts.push_back(static_cast<int32_t>(r));
  }
  starts.push_back(static_cast<int32_t>(ctx_of.size()));
  return starts;
}

// Scores p per request and grouped by context (GroupStarts(ctx_of)), each into a poisoned
// workspace, and requires the same workspace bytes (scores and per-chunk stats bit for bit) and the
// same selection as `want` (the per-request run of the caller).
void RequireGroupedScoringSame(const SqueezeSelectParams& p, const SqueezeSelectPlan& plan,
                               const std::vector<int>& ctx_of, DeviceBuffer<char>& ws,
                               const testing::SelectionOutputs& want, bool graph) {
  const std::vector<int32_t> starts = GroupStarts(ctx_of);
  int32_t largest = 0;
  for (size_t i = 0; i + 1 < starts.size(); ++i) {
    largest = std::max(largest, starts[i + 1] - starts[i]);
  }
  INFO("grouped scoring: " << starts.size() - 1 << " groups, largest " << largest
                           << (graph ? " (graph)" : ""));
  ws.Poison();
  const testing::SelectionOutputs alone = testing::RunSqueezeSelect(p, plan, 1, ws);
  const std::vector<char> ws_alone = ws.Download();
  SqueezeSelectParams grouped = p;
  DeviceBuffer<int32_t> dstarts(starts);
  grouped.group_starts = dstarts.get();
  grouped.num_groups = static_cast<int32_t>(starts.size()) - 1;
  grouped.max_group_size = largest;
  ws.Poison();
  const testing::SelectionOutputs together = testing::RunSqueezeSelect(grouped, plan, 1, ws, graph);
  const std::vector<char> ws_together = ws.Download();
  REQUIRE(ws_alone.size() == ws_together.size());
  const auto diff = std::mismatch(ws_alone.begin(), ws_alone.end(), ws_together.begin());
  INFO("first differing workspace byte " << (diff.first - ws_alone.begin()) << " of "
                                         << ws_alone.size());
  REQUIRE(diff.first == ws_alone.end());
  testing::RequireSameSelection(want, alone, plan.max_segments);
  testing::RequireSameSelection(want, together, plan.max_segments);
}

// Runs SqueezeSelect over `ctx` (request r uses contexts[ctx_of[r]]) and compares every
// (request, kv head) with SelectClusters on the same data, then runs the cluster selection with
// every cluster size the shapes fit and requires the single-block kernel's outputs exactly.
void RunAndCompare(const Case& cs, const std::vector<HostContext>& contexts,
                   const std::vector<int>& ctx_of, uint32_t seed) {
  const int batch = static_cast<int>(ctx_of.size());
  const int g = cs.hq / cs.hkv;
  const int d = cs.d;
  INFO("hq=" << cs.hq << " hkv=" << cs.hkv << " d=" << d << " policy=" << int(cs.policy)
             << " reduce=" << int(cs.reduce) << " hier=" << cs.hierarchical
             << " value=" << cs.value);
  std::vector<std::unique_ptr<DeviceContext>> dev;
  for (const HostContext& c : contexts) dev.push_back(std::make_unique<DeviceContext>(c));
  std::vector<SqueezeLayerView> views;
  int32_t max_k = 1, max_k1 = 1;
  for (int r = 0; r < batch; ++r) {
    views.push_back(dev[ctx_of[r]]->view);
    max_k = std::max(max_k, contexts[ctx_of[r]].k);
    max_k1 = std::max(max_k1, contexts[ctx_of[r]].k1);
  }
  const std::vector<float> q =
      testing::RoundBf16(testing::RandomFloats(size_t(batch) * cs.hq * d, seed, 1.0f));

  SelectionParams cpu;
  cpu.policy =
      cs.policy == SqueezePolicy::kBudget ? SelectionPolicy::kBudget : SelectionPolicy::kThreshold;
  cpu.reduce = cs.reduce == SqueezeReduce::kMax ? GqaReduce::kMax : GqaReduce::kMean;
  cpu.hierarchical = cs.hierarchical;
  cpu.coarse_expansion = 2.0;
  cpu.coarse_keep = 0.125;  // coverage 0.25
  SelectionScratch scratch;

  // Per-request values: budgets as given; thresholds between two adjacent p of head 0 (flat p),
  // a quarter of the way down.
  std::vector<float> values(batch, cs.value);
  for (int r = 0; r < batch && !cs.budgets.empty(); ++r) {
    values[r] = cs.budgets[r % cs.budgets.size()];
  }
  if (cs.policy == SqueezePolicy::kThreshold) {
    for (int r = 0; r < batch; ++r) {
      const HeadIndex& idx = contexts[ctx_of[r]].heads[0];
      std::vector<float> pr(idx.counts.size());
      ClusterProbabilities(idx, d, q.data() + size_t(r) * cs.hq * d, 1, 0, g, cpu.reduce, pr.data(),
                           &scratch);
      values[r] = testing::ThresholdAQuarterDown(std::move(pr));
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
  p.q = dq.get();
  p.q_stride = cs.hq * d;
  p.views = dviews.get();
  p.policy = cs.policy;
  p.reduce = cs.reduce;
  p.kv_budget = cs.value;
  p.per_request_value = dvalues.get();
  p.hierarchical = cs.hierarchical;
  p.coarse_coverage = 0.25f;
  p.max_clusters = max_k;
  p.max_coarse = max_k1;
  const SqueezeSelectPlan plan = PlanSqueezeSelect(p);
  REQUIRE(plan.select_ctas == 1);  // no SM count: the single-block kernel
  DeviceBuffer<char> ws(plan.workspace_bytes);
  const testing::SelectionOutputs single = testing::RunSqueezeSelect(p, plan, 1, ws);
  for (int ctas : testing::ClusterSizesFor(p)) {
    INFO("cluster selection of " << ctas << " CTAs against the single-block kernel");
    testing::RequireSameSelection(single, testing::RunSqueezeSelect(p, plan, ctas, ws),
                                  plan.max_segments);
  }
  if (cs.hierarchical) REQUIRE(testing::ClusterSizesFor(p).empty());
  if (!cs.hierarchical) RequireGroupedScoringSame(p, plan, ctx_of, ws, single, cs.grouped_graph);
  const std::vector<int2>& h_segs = single.segments;
  const std::vector<int32_t>& h_nseg = single.num_segments;
  const std::vector<int32_t>& h_len = single.selected_len;
  const std::vector<int32_t>& h_body = single.body_selected;

  int total_diff = 0;
  for (int r = 0; r < batch; ++r) {
    const HostContext& c = contexts[ctx_of[r]];
    cpu.kv_budget = values[r];
    cpu.threshold = values[r];
    for (int h = 0; h < cs.hkv; ++h) {
      INFO("request " << r << " (context " << ctx_of[r] << ", k=" << c.k << ", k1=" << c.k1
                      << ") kv head " << h);
      const HeadIndex& idx = c.heads[h];
      const size_t u = size_t(r) * cs.hkv + h;
      int64_t got_keys = 0;
      const std::set<int32_t> got =
          testing::CheckedSelection(c, h, h_segs.data() + u * plan.max_segments, h_nseg[u],
                                    plan.max_segments, h_len[u], h_body[u], &got_keys);
      // Segments coalesce: no two consecutive segments are adjacent in rows.
      const int2* sg = h_segs.data() + u * plan.max_segments;
      for (int32_t i = 1; i < h_nseg[u]; ++i) {
        const int32_t prev_last_row = sg[i - 1].x - 1 + sg[i - 1].y;
        const int32_t first_row = sg[i - 1].x + sg[i].y;
        REQUIRE(first_row > prev_last_row + 1);
      }

      const float* qh = q.data() + (size_t(r) * cs.hq + size_t(h) * g) * d;
      SelectionResult want;
      SelectClusters(idx, d, qh, 1, 0, g, cpu, &scratch, &want);
      if (cs.hierarchical) {
        // A hierarchical lookup may also differ where a coarse group is near its cut.
        std::set<int32_t> diff;
        for (int32_t cl : got) diff.insert(cl);
        for (int32_t cl : want.clusters) {
          if (!diff.erase(cl)) diff.insert(cl);
        }
        if (diff.empty()) REQUIRE(got_keys == want.selected_keys);
        INFO("clusters differing from the CPU: " << diff.size());
        REQUIRE(diff.size() <= 2);
        total_diff += static_cast<int>(diff.size());
        continue;
      }
      total_diff += testing::DifferingAtTiesOnly(got, got_keys, want, cs.policy, values[r], [&] {
        std::vector<float> pr(c.k);
        ClusterProbabilities(idx, d, qh, 1, 0, g, cpu.reduce, pr.data(), &scratch);
        return pr;
      });
    }
  }
  // Near-ties are rare on random data: most heads must match exactly.
  if (!cs.ties) REQUIRE(total_diff <= std::max<int>(2, batch * cs.hkv / 4));
}

TEST_CASE("SqueezeSelect matches SelectClusters over shapes, policies and GQA", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 100;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{2, 2}, std::pair{8, 2}, std::pair{16, 2}}) {
      for (auto policy : {SqueezePolicy::kBudget, SqueezePolicy::kThreshold}) {
        for (auto reduce : {SqueezeReduce::kMax, SqueezeReduce::kMean}) {
          // A batch over contexts of k = 1000, 127, 3 and 1 clusters; request 4 shares context 0.
          std::vector<HostContext> ctx;
          ctx.push_back(MakeContext(hkv, d, 1000, 0, 4, 7, seed++, 40, 2.0f, false));
          ctx.push_back(MakeContext(hkv, d, 127, 0, 0, 3, seed++, 40, 2.0f, false));
          ctx.push_back(MakeContext(hkv, d, 3, 0, 4, 0, seed++, 40, 2.0f, false));
          ctx.push_back(MakeContext(hkv, d, 1, 0, 1, 1, seed++, 40, 2.0f, false));
          Case cs;
          cs.hq = hq;
          cs.hkv = hkv;
          cs.d = d;
          cs.policy = policy;
          cs.reduce = reduce;
          RunAndCompare(cs, ctx, {0, 1, 2, 3, 0}, seed++);
        }
      }
    }
  }
}

TEST_CASE("SqueezeSelect scores requests over one context together, as each alone", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 2500;
  for (int d : {64, 128}) {
    for (auto [hq, hkv] : {std::pair{2, 2}, std::pair{8, 2}, std::pair{16, 2}}) {
      for (auto policy : {SqueezePolicy::kBudget, SqueezePolicy::kThreshold}) {
        const SqueezeReduce reduce = hq == 16 ? SqueezeReduce::kMean : SqueezeReduce::kMax;
        // Contexts of k = 1, 3, 129, 1000 and 6554 clusters; groups of 1, 2, 3, 5, 16 and 17
        // requests (17: two sub-groups at GQA 4, three at GQA 8), in an order that puts
        // different contexts and cluster counts side by side.
        std::vector<HostContext> ctx;
        for (int32_t k : {1, 3, 129, 1000, 6554}) {
          ctx.push_back(MakeContext(hkv, d, k, 0, 4, 7, seed++, 40, 2.0f, false));
        }
        std::vector<int> ctx_of;
        for (auto [c, n] : {std::pair{2, 3}, std::pair{0, 1}, std::pair{4, 16}, std::pair{1, 2},
                            std::pair{3, 5}, std::pair{2, 17}, std::pair{4, 1}}) {
          ctx_of.insert(ctx_of.end(), n, c);
        }
        Case cs;
        cs.hq = hq;
        cs.hkv = hkv;
        cs.d = d;
        cs.policy = policy;
        cs.reduce = reduce;
        cs.budgets = {0.125f, 0.0f, 0.03125f, 0.5f, 1.0f};
        cs.grouped_graph = policy == SqueezePolicy::kThreshold;
        RunAndCompare(cs, ctx, ctx_of, seed++);
      }
    }
  }
  // Groups whose rows all fit one m16 tile (largest group x g <= 16) run the small-block variant,
  // which stages the scores over the centroids: groups of 4, 3 and 1 at GQA 4, of 16 and 5 at
  // GQA 1.
  for (auto [hq, hkv, sizes] :
       {std::tuple{8, 2, std::vector<int>{4, 3, 1}}, std::tuple{4, 4, std::vector<int>{16, 5}}}) {
    for (int d : {64, 128}) {
      std::vector<HostContext> ctx;
      for (int32_t k : {129, 6554}) {
        ctx.push_back(MakeContext(hkv, d, k, 0, 4, 7, seed++, 40, 2.0f, false));
      }
      std::vector<int> ctx_of;
      for (size_t i = 0; i < sizes.size(); ++i) {
        ctx_of.insert(ctx_of.end(), sizes[i], static_cast<int>(i % 2));
      }
      Case cs;
      cs.hq = hq;
      cs.hkv = hkv;
      cs.d = d;
      cs.budgets = {0.125f, 0.5f};
      cs.grouped_graph = d == 64;
      RunAndCompare(cs, ctx, ctx_of, seed++);
    }
  }
  // GQA 1 puts 64 requests on a block: a group of 67 is cut into two sub-groups.
  std::vector<HostContext> ctx;
  ctx.push_back(MakeContext(4, 128, 129, 0, 4, 7, seed++, 40, 2.0f, false));
  ctx.push_back(MakeContext(4, 128, 1000, 0, 4, 7, seed++, 40, 2.0f, false));
  std::vector<int> ctx_of(67, 1);
  ctx_of.push_back(0);
  Case cs;
  cs.hq = 4;
  cs.hkv = 4;
  cs.budgets = {0.125f, 0.25f};
  RunAndCompare(cs, ctx, ctx_of, seed++);
}

TEST_CASE("SqueezeSelect budgets 0, 1 and in between, and budgets per request", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 300;
  for (float budget : {0.0f, 0.03125f, 0.5f, 1.0f}) {
    std::vector<HostContext> ctx;
    ctx.push_back(MakeContext(8, 128, 1000, 0, 4, 100, seed++, 40, 2.0f, false));
    ctx.push_back(MakeContext(8, 128, 129, 0, 4, 100, seed++, 40, 2.0f, false));
    Case cs;
    cs.hq = 32;
    cs.hkv = 8;
    cs.value = budget;
    RunAndCompare(cs, ctx, {0, 1}, seed++);
  }
}

TEST_CASE("SqueezeSelect hierarchical lookup matches SelectClusters", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 500;
  for (int d : {64, 128}) {
    for (auto policy : {SqueezePolicy::kBudget, SqueezePolicy::kThreshold}) {
      for (auto reduce : {SqueezeReduce::kMax, SqueezeReduce::kMean}) {
        std::vector<HostContext> ctx;
        ctx.push_back(MakeContext(2, d, 1000, 20, 4, 7, seed++, 40, 2.0f, false));
        ctx.push_back(MakeContext(2, d, 127, 5, 4, 7, seed++, 40, 2.0f, false));
        ctx.push_back(MakeContext(2, d, 3, 1, 4, 7, seed++, 40, 2.0f, false));
        ctx.push_back(MakeContext(2, d, 300, 0, 4, 7, seed++, 40, 2.0f, false));  // runs flat
        Case cs;
        cs.hq = 8;
        cs.hkv = 2;
        cs.d = d;
        cs.policy = policy;
        cs.reduce = reduce;
        cs.hierarchical = true;
        RunAndCompare(cs, ctx, {0, 1, 2, 3}, seed++);
      }
    }
  }
}

TEST_CASE("SqueezeSelect cluster selection over awkward sizes, budgets and ties", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 900;
  struct Shape {
    int32_t k;
    int hkv, batch, g;
  };
  // Budgets 0, tiny, 0.125 and 1 across the requests of a batch (one each at batch 1).
  const std::vector<float> budgets = {0.0f, 0.001f, 0.125f, 1.0f};
  for (const Shape& sh : {Shape{1, 1, 1, 4}, Shape{3, 2, 3, 1}, Shape{127, 1, 1, 8},
                          Shape{129, 2, 3, 4}, Shape{1000, 8, 1, 4}, Shape{6554, 8, 1, 4},
                          Shape{6554, 2, 16, 4}, Shape{26000, 8, 1, 4}, Shape{26000, 1, 3, 2}}) {
    INFO("k=" << sh.k << " hkv=" << sh.hkv << " batch=" << sh.batch << " g=" << sh.g);
    const bool big = int64_t{sh.k} * sh.hkv * sh.batch > 60000;
    for (auto policy : {SqueezePolicy::kBudget, SqueezePolicy::kThreshold}) {
      for (auto reduce : {SqueezeReduce::kMax, SqueezeReduce::kMean}) {
        if (big && reduce == SqueezeReduce::kMean && policy == SqueezePolicy::kThreshold) continue;
        std::vector<HostContext> ctx;
        ctx.push_back(MakeContext(sh.hkv, 128, sh.k, 0, 4, 100, seed++, 40, 2.0f, false));
        std::vector<int> ctx_of(sh.batch, 0);
        Case cs;
        cs.hq = sh.hkv * sh.g;
        cs.hkv = sh.hkv;
        cs.policy = policy;
        cs.reduce = reduce;
        if (policy == SqueezePolicy::kThreshold || sh.batch > 1) {
          cs.budgets = budgets;
          RunAndCompare(cs, ctx, ctx_of, seed++);
          continue;
        }
        for (float budget : budgets) {
          cs.value = budget;
          RunAndCompare(cs, ctx, ctx_of, seed++);
        }
      }
    }
  }
}

TEST_CASE("SqueezeSelect cluster selection breaks ties by position as the single-block kernel",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 1900;
  // Every cluster tied (the cut is by position alone), or every third one tied with cluster 0.
  for (int every : {1, 3}) {
    for (auto [k, batch] : {std::pair{1000, 1}, std::pair{6554, 3}, std::pair{26000, 1}}) {
      for (auto reduce : {SqueezeReduce::kMax, SqueezeReduce::kMean}) {
        std::vector<HostContext> ctx;
        ctx.push_back(MakeContext(8, 128, k, 0, 4, 100, seed++, 40, 2.0f, false));
        testing::TieCentroids(&ctx[0], every);
        Case cs;
        cs.hq = 32;
        cs.hkv = 8;
        cs.reduce = reduce;
        cs.budgets = {0.125f, 0.001f, 0.5f};
        cs.ties = true;
        RunAndCompare(cs, ctx, std::vector<int>(batch, 0), seed++);
      }
    }
  }
}

TEST_CASE("SqueezeMaxSelectedKeys bounds the selection", "[squeeze_select]") {
  // S + W + min(B, ceil(budget * B) + largest - 1).
  CHECK(SqueezeMaxSelectedKeys(SqueezePolicy::kBudget, 0.125, 4, 1000, 100, 40) ==
        4 + 100 + 125 + 39);
  CHECK(SqueezeMaxSelectedKeys(SqueezePolicy::kBudget, 1.0, 4, 1000, 100, 40) == 1104);
  CHECK(SqueezeMaxSelectedKeys(SqueezePolicy::kBudget, 0.0, 4, 1000, 100, 40) == 4 + 100 + 39);
  CHECK(SqueezeMaxSelectedKeys(SqueezePolicy::kThreshold, 0.1, 4, 1000, 100, 40) == 1104);
}

// Argument checks run on the host before any launch: they need no GPU.
TEST_CASE("SqueezeSelect rejects bad shapes and out-of-range settings", "[squeeze_select]") {
  alignas(16) static char fake[64];
  auto* any = reinterpret_cast<void*>(fake);
  SqueezeSelectParams p;
  p.batch = 2;
  p.n_q_heads = 32;
  p.n_kv_heads = 8;
  p.head_dim = 128;
  p.scale = 0.088f;
  p.q = static_cast<const __nv_bfloat16*>(any);
  p.q_stride = 32 * 128;
  p.views = static_cast<const SqueezeLayerView*>(any);
  p.max_clusters = 100;
  p.max_coarse = 10;
  SqueezeSelection out{static_cast<int2*>(any), static_cast<int32_t*>(any),
                       static_cast<int32_t*>(any), nullptr};
  auto run = [&](const SqueezeSelectParams& q, size_t ws_bytes = size_t{1} << 40) {
    const SqueezeSelectPlan plan = PlanSqueezeSelect(q);
    return SqueezeSelect(q, plan, out, any, std::min(ws_bytes, plan.workspace_bytes), nullptr);
  };
  auto expect = [&](const SqueezeSelectParams& q, StatusCode code, const std::string& words) {
    const Status s = run(q);
    INFO(s.ToString());
    CHECK(s.code() == code);
    CHECK(s.message().find("SqueezeSelect") != std::string::npos);
    CHECK(s.message().find(words) != std::string::npos);
  };
  SqueezeSelectParams q = p;
  q.kv_budget = 1.5f;
  expect(q, StatusCode::kInvalidArgument, "kv_budget");
  q.kv_budget = -0.1f;
  expect(q, StatusCode::kInvalidArgument, "kv_budget");
  q.kv_budget = NAN;
  expect(q, StatusCode::kInvalidArgument, "kv_budget");
  q = p;
  q.policy = SqueezePolicy::kThreshold;
  q.threshold = INFINITY;
  expect(q, StatusCode::kInvalidArgument, "threshold");
  q = p;
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
  q.batch = -1;
  expect(q, StatusCode::kInvalidArgument, "batch");
  q = p;
  q.scale = 0.0f;
  expect(q, StatusCode::kInvalidArgument, "scale");
  q = p;
  q.q_stride = 10;
  expect(q, StatusCode::kInvalidArgument, "q_stride");
  q = p;
  q.max_clusters = 0;
  expect(q, StatusCode::kInvalidArgument, "max_clusters");
  q = p;
  q.hierarchical = true;
  q.max_coarse = 0;
  expect(q, StatusCode::kInvalidArgument, "max_coarse");
  q = p;
  q.hierarchical = true;
  q.coarse_coverage = 0.0f;
  expect(q, StatusCode::kInvalidArgument, "coarse_coverage");
  q = p;
  q.q = nullptr;
  expect(q, StatusCode::kInvalidArgument, "null q");
  q = p;
  q.group_starts = static_cast<const int32_t*>(any);
  q.num_groups = 3;  // more groups than requests
  q.max_group_size = 1;
  expect(q, StatusCode::kInvalidArgument, "num_groups");
  q.num_groups = 1;
  q.max_group_size = 0;
  expect(q, StatusCode::kInvalidArgument, "max_group_size");
  q = p;
  q.q_stride = 32 * 128 + 4;
  expect(q, StatusCode::kInvalidArgument, "multiple of 8");
  {
    const SqueezeSelectPlan plan = PlanSqueezeSelect(p);
    // Too small a workspace.
    Status s = SqueezeSelect(p, plan, out, any, plan.workspace_bytes - 1, nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("workspace") != std::string::npos);
    // A plan made for other params.
    SqueezeSelectParams other = p;
    other.max_clusters = 1000;
    s = SqueezeSelect(p, PlanSqueezeSelect(other), out, any, size_t{1} << 40, nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("plan") != std::string::npos);
    // A cluster size the params do not fit, or none at all.
    for (int ctas : {0, 3, 32}) {
      SqueezeSelectPlan bad = plan;
      bad.select_ctas = ctas;
      s = SqueezeSelect(p, bad, out, any, plan.workspace_bytes, nullptr);
      CHECK(s.code() == StatusCode::kInvalidArgument);
      CHECK(s.message().find("select_ctas") != std::string::npos);
    }
    // Missing outputs.
    SqueezeSelection none = out;
    none.selected_len = nullptr;
    s = SqueezeSelect(p, plan, none, any, plan.workspace_bytes, nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("null output") != std::string::npos);
  }
  // An empty batch is fine and launches nothing.
  q = p;
  q.batch = 0;
  CHECK(run(q).ok());
}

TEST_CASE("PlanSqueezeSelect sizes chunks, segments and the workspace", "[squeeze_select]") {
  SqueezeSelectParams p;
  p.batch = 3;
  p.n_q_heads = 32;
  p.n_kv_heads = 8;
  p.head_dim = 128;
  p.max_clusters = 1000;
  SqueezeSelectPlan plan = PlanSqueezeSelect(p);
  CHECK(plan.fine_chunks == 4);
  CHECK(plan.coarse_chunks == 0);
  CHECK(plan.max_segments == 501);
  // Scores alone: 3 * 8 * 4 * 1000 floats.
  CHECK(plan.workspace_bytes >= size_t{3} * 8 * 4 * 1000 * 4);
  p.hierarchical = true;
  p.max_coarse = 257;
  SqueezeSelectPlan hier = PlanSqueezeSelect(p);
  CHECK(hier.coarse_chunks == 2);
  CHECK(hier.workspace_bytes > plan.workspace_bytes);
  p.max_clusters = 1;
  CHECK(PlanSqueezeSelect(p).max_segments == 2);  // sink | cluster 0 | window: two runs at most
}

TEST_CASE("PlanSqueezeSelect picks the cluster selection for small batches", "[squeeze_select]") {
  SqueezeSelectParams p;
  p.batch = 1;
  p.n_q_heads = 32;
  p.n_kv_heads = 8;
  p.head_dim = 128;
  p.max_clusters = 6554;
  CHECK(PlanSqueezeSelect(p).select_ctas == 1);       // no SM count
  CHECK(PlanSqueezeSelect(p, 132).select_ctas == 8);  // 64 CTAs on 132 SMs
  p.batch = 3;
  CHECK(PlanSqueezeSelect(p, 132).select_ctas == 4);  // 96 CTAs
  p.batch = 16;
  CHECK(PlanSqueezeSelect(p, 132).select_ctas == 1);  // 128 blocks already fill the device
  p.batch = 1;
  p.max_clusters = 1000;  // too few clusters per CTA for 8 or 4
  CHECK(PlanSqueezeSelect(p, 132).select_ctas == 1);
  p.max_clusters = 26000;
  CHECK(PlanSqueezeSelect(p, 132).select_ctas == 8);
  CHECK(SqueezeClusterSelectFits(p, 16));
  CHECK_FALSE(SqueezeClusterSelectFits(p, 3));
  CHECK_FALSE(SqueezeClusterSelectFits(p, 32));
  p.max_clusters = 1 << 30;  // slices too large for shared memory
  CHECK(PlanSqueezeSelect(p, 132).select_ctas == 1);
  CHECK_FALSE(SqueezeClusterSelectFits(p, 16));
  p.max_clusters = 26000;
  p.hierarchical = true;  // the coarse level and the fine one under it stay single-block
  p.max_coarse = 100;
  CHECK(PlanSqueezeSelect(p, 132).select_ctas == 1);
  CHECK_FALSE(SqueezeClusterSelectFits(p, 8));
}

}  // namespace
}  // namespace sqz::cuda
