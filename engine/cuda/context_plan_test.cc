// DescribeContext: how a request's ContextAttention maps to the device lookup, and its refusals.
// Host only (no GPU): the snapshots are small synthetic ones built by the CPU BuildSnapshot.
#include "engine/cuda/context_plan.h"

#include <catch2/catch.hpp>

#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/synthetic.h"

namespace sqz {
namespace {

ModelConfig ConfigFor(const SnapshotDims& d) {
  ModelConfig c;
  c.layers = d.layers;
  c.kv_heads = d.kv_heads;
  c.q_heads = d.q_heads;
  c.head_dim = d.head_dim;
  c.hidden = d.q_heads * d.head_dim;
  return c;
}

const ContextSnapshot& Snapshot() {
  static const ContextSnapshot snap = [] {
    SyntheticSpec spec;
    spec.layers = 3;
    spec.kv_heads = 2;
    spec.q_heads = 8;
    spec.head_dim = 64;
    spec.n_tokens = 1000;
    spec.window_len = 100;
    spec.mixture_components = 16;
    SqueezeOptions o;
    o.kmeans_iterations = 3;
    return BuildSnapshot(SyntheticContext(spec), o).value();
  }();
  return snap;
}

class NoSnapshot : public ContextAttention {
 public:
  int64_t length() const override { return 5; }
  void Attend(int, const float*, int64_t, int64_t, float*, cpu::AttentionPartial*) const override {}
};

TEST_CASE("DescribeContext: DENSE keeps every row, no lookup") {
  const ContextSnapshot& s = Snapshot();
  AttentionOptions o;
  o.mode = AttentionMode::kDense;
  auto attn = MakeContextAttention(s, o).value();
  auto q = DescribeContext(*attn, ConfigFor(s.dims));
  REQUIRE(q.ok());
  CHECK(q->snapshot == &s);
  CHECK(q->squeezed == nullptr);
  CHECK(LookupValue(*q, 0) == 1.0f);
}

TEST_CASE("DescribeContext: SQUEEZED budget, threshold, reduce and hierarchy map one to one") {
  const ContextSnapshot& s = Snapshot();
  AttentionOptions o;
  o.kv_budget = 0.3;
  auto budget = MakeContextAttention(s, o).value();
  auto q = DescribeContext(*budget, ConfigFor(s.dims));
  REQUIRE(q.ok());
  CHECK(q->squeezed != nullptr);
  CHECK(q->lookup.policy == cuda::SqueezePolicy::kBudget);
  CHECK(q->lookup.reduce == cuda::SqueezeReduce::kMax);
  CHECK_FALSE(q->lookup.hierarchical);
  for (int layer = 0; layer < 3; ++layer) CHECK(LookupValue(*q, layer) == Approx(0.3f));

  o.policy = SelectionPolicy::kThreshold;
  o.sparsity = 0.8;
  o.gqa_reduce = GqaReduce::kMean;
  o.per_layer_thresholds = true;
  auto thr = MakeContextAttention(s, o).value();
  auto t = DescribeContext(*thr, ConfigFor(s.dims));
  REQUIRE(t.ok());
  CHECK(t->lookup.policy == cuda::SqueezePolicy::kThreshold);
  CHECK(t->lookup.reduce == cuda::SqueezeReduce::kMean);
  for (int layer = 0; layer < 3; ++layer) {
    CHECK(LookupValue(*t, layer) == ThresholdForSparsity(s, GqaReduce::kMean, layer, 0.8));
  }
  CHECK_FALSE(t->lookup == q->lookup);

  o = AttentionOptions{};
  o.kv_budget = 0.2;
  o.hierarchical = true;
  o.coarse_expansion = 2.0;
  auto hier = MakeContextAttention(s, o).value();
  auto h = DescribeContext(*hier, ConfigFor(s.dims));
  REQUIRE(h.ok());
  REQUIRE_FALSE(s.heads[0].coarse_offsets.empty());
  CHECK(h->lookup.hierarchical);
  CHECK(h->lookup.coarse_coverage == Approx(0.4f));
  // Budgets alone do not split a lookup class.
  o.hierarchical = false;
  o.kv_budget = 0.9;
  auto other = MakeContextAttention(s, o).value();
  CHECK(DescribeContext(*other, ConfigFor(s.dims))->lookup == q->lookup);
}

TEST_CASE("DescribeContext: refusals say why") {
  const ContextSnapshot& s = Snapshot();
  NoSnapshot none;
  auto a = DescribeContext(none, ConfigFor(s.dims));
  CHECK(a.status().code() == StatusCode::kUnimplemented);
  CHECK(a.status().message().find("has no snapshot") != std::string::npos);

  AttentionOptions o;
  auto sq = MakeContextAttention(s, o).value();
  ModelConfig wrong = ConfigFor(s.dims);
  wrong.layers = 4;
  auto b = DescribeContext(*sq, wrong);
  CHECK(b.status().code() == StatusCode::kInvalidArgument);
  CHECK(b.status().message().find("does not match the model's (4, 2, 8, 64)") != std::string::npos);

  // A head_dim the lookup lacks: SQUEEZED is refused, DENSE is served.
  SyntheticSpec spec;
  spec.layers = 1;
  spec.kv_heads = 1;
  spec.q_heads = 2;
  spec.head_dim = 8;
  spec.n_tokens = 300;
  spec.mixture_components = 4;
  const ContextSnapshot small = BuildSnapshot(SyntheticContext(spec), SqueezeOptions{}).value();
  auto sq8 = MakeContextAttention(small, o).value();
  auto c = DescribeContext(*sq8, ConfigFor(small.dims));
  CHECK(c.status().code() == StatusCode::kUnimplemented);
  CHECK(c.status().message().find("ask for attention mode DENSE") != std::string::npos);
  o.mode = AttentionMode::kDense;
  auto dense8 = MakeContextAttention(small, o).value();
  CHECK(DescribeContext(*dense8, ConfigFor(small.dims)).ok());
  CHECK_FALSE(SqueezedLookupFits(ConfigFor(small.dims)));
  CHECK(SqueezedLookupFits(ConfigFor(s.dims)));
}

}  // namespace
}  // namespace sqz

namespace sqz {
namespace {

ContextItemFacts Facts(bool squeezed, cuda::SqueezePolicy policy, float budget, int64_t body,
                       int32_t k, int64_t largest) {
  ContextItemFacts f;
  f.has_context = true;
  f.squeezed = squeezed;
  f.lookup.policy = policy;
  f.kv_budget = budget;
  f.sink_len = 4;
  f.window_len = 100;
  f.body_len = body;
  f.n_tokens = 4 + 100 + body;
  f.k = k;
  f.largest_cluster = largest;
  return f;
}

StepLayout::Item Item(int64_t row0, int64_t n, int64_t cached) {
  StepLayout::Item it;
  it.row0 = row0;
  it.n = n;
  it.cached = cached;
  return it;
}

TEST_CASE("PlanContextStep: lookup classes, the decode key bound, segment and prefill sizes") {
  StepLayout L;
  L.decode_items = 5;
  L.items = {Item(0, 1, 10), Item(1, 1, 0), Item(2, 1, 5),   Item(3, 1, 20),
             Item(4, 1, 2),  Item(5, 7, 0), Item(12, 129, 3)};
  std::vector<ContextItemFacts> f(L.items.size());
  f[0] = Facts(true, cuda::SqueezePolicy::kBudget, 0.25f, 1000, 50, 9);
  // f[1]: no context.
  f[2] = Facts(true, cuda::SqueezePolicy::kThreshold, 0.0f, 400, 20, 40);
  f[3] = Facts(false, cuda::SqueezePolicy::kBudget, 1.0f, 196, 10, 30);   // DENSE, 300 tokens
  f[4] = Facts(true, cuda::SqueezePolicy::kBudget, 0.5f, 3000, 151, 60);  // same class as f[0]
  f[5] = Facts(false, cuda::SqueezePolicy::kBudget, 1.0f, 10, 1, 10);     // prefill, 7 rows
  // f[6]: prefill of 129 rows without a context.
  const ContextStepPlan p = PlanContextStep(L, f, 8, 2, 64);
  REQUIRE(p.classes.size() == 2);
  CHECK(p.classes[0].lookup.policy == cuda::SqueezePolicy::kBudget);
  CHECK(p.classes[0].items == std::vector<int32_t>{0, 4});
  CHECK(p.classes[0].max_clusters == 151);
  CHECK(p.classes[1].lookup.policy == cuda::SqueezePolicy::kThreshold);
  CHECK(p.classes[1].items == std::vector<int32_t>{2});
  // Segments: runs among k + 2 rows ranges (sink, clusters, window): (151 + 3) / 2.
  CHECK(p.classes[0].select.max_segments == 77);
  CHECK(p.full_max_segments == 77);
  CHECK(p.max_class == 2);
  CHECK(p.select_workspace_bytes ==
        std::max(p.classes[0].select.workspace_bytes, p.classes[1].select.workspace_bytes));
  // Keys: item 0 reads at most 4 + 100 + min(1000, 250 + 9 - 1) = 362 context keys + 11 own;
  // item 2 (threshold) up to every row, 504 + 6; item 3 (DENSE) 300 + 21; item 4 4 + 100 +
  // min(3000, 1500 + 59) + 3 = 1666.
  CHECK(p.decode_max_kv == 1666);
  CHECK(p.decode_kv_bucket == 1792);  // steps of 1024 / 8 = 128 between 1024 and 2048
  CHECK(p.max_prefill_rows == 7);
  CHECK(p.any_squeezed());

  // Without SQUEEZED items there is no lookup; a context without a body counts densely.
  std::vector<ContextItemFacts> g(L.items.size());
  g[1] = Facts(false, cuda::SqueezePolicy::kBudget, 1.0f, 0, 0, 0);
  const ContextStepPlan q = PlanContextStep(L, g, 8, 2, 64);
  CHECK_FALSE(q.any_squeezed());
  CHECK(q.full_max_segments == 1);
  CHECK(q.decode_max_kv == 104 + 1);
  CHECK(q.decode_kv_bucket == 128);
  CHECK(q.max_prefill_rows == 0);
}

TEST_CASE("OrderClassesByContext: one context's items adjacent, first-seen order, stable") {
  StepLayout L;
  L.decode_items = 8;
  for (int i = 0; i < 8; ++i) L.items.push_back(Item(i, 1, 4));
  std::vector<ContextItemFacts> f(L.items.size());
  for (int i = 0; i < 7; ++i) f[i] = Facts(true, cuda::SqueezePolicy::kBudget, 0.25f, 500, 20, 9);
  f[6].lookup.hierarchical = true;  // its own class, never reordered
  f[7] = Facts(true, cuda::SqueezePolicy::kThreshold, 0.0f, 500, 20, 9);
  int a = 0, b = 0, c = 0;
  // Items 0-5 (the flat budget class): contexts c a c b a c; item 6 hierarchical; 7 alone.
  const std::vector<const void*> ctx = {&c, &a, &c, &b, &a, &c, &a, &b};
  ContextStepPlan p = PlanContextStep(L, f, 8, 2, 64);
  REQUIRE(p.classes.size() == 3);
  const auto flat = [&](const ContextStepPlan& q) -> const ContextStepPlan::Class& {
    for (const auto& k : q.classes) {
      if (!k.lookup.hierarchical && k.items.size() == 6) return k;
    }
    FAIL("no flat class of 6 items");
    return q.classes[0];
  };
  CHECK(flat(p).items == std::vector<int32_t>{0, 1, 2, 3, 4, 5});
  CHECK(OrderClassesByContext(ctx, &p));
  CHECK(flat(p).items == std::vector<int32_t>{0, 2, 5, 1, 4, 3});  // c c c, a a, b
  for (const auto& k : p.classes) {
    if (k.items.size() == 1) CHECK((k.items[0] == 6 || k.items[0] == 7));
  }
  // Already grouped: nothing changes (the class keeps reading its rows in place).
  CHECK_FALSE(OrderClassesByContext(ctx, &p));
  const std::vector<const void*> same(8, &a);
  ContextStepPlan q = PlanContextStep(L, f, 8, 2, 64);
  CHECK_FALSE(OrderClassesByContext(same, &q));
  CHECK(flat(q).items == std::vector<int32_t>{0, 1, 2, 3, 4, 5});
}

TEST_CASE("DecodeKeysBucket rounds up to one of 8 steps per power of two, at least 64") {
  CHECK(DecodeKeysBucket(0) == 64);
  CHECK(DecodeKeysBucket(1) == 64);
  CHECK(DecodeKeysBucket(64) == 64);
  CHECK(DecodeKeysBucket(65) == 128);  // pow2 64: step 64
  CHECK(DecodeKeysBucket(127) == 128);
  CHECK(DecodeKeysBucket(129) == 192);    // pow2 128: step 64
  CHECK(DecodeKeysBucket(1025) == 1152);  // pow2 1024: step 128
  CHECK(DecodeKeysBucket(131072 + 17) == 131072 + 16384);
  // Never below the count, and constant within a bucket (graphs serve the whole bucket).
  for (int64_t k = 1; k < 5000; k += 7) {
    const int64_t b = DecodeKeysBucket(k);
    CHECK(b >= k);
    CHECK(DecodeKeysBucket(b) == b);
    CHECK(b % 64 == 0);
  }
}

}  // namespace
}  // namespace sqz
