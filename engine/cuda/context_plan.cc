#include "engine/cuda/context_plan.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace sqz {

bool SqueezedLookupFits(const ModelConfig& config) {
  return (config.head_dim == 64 || config.head_dim == 128) && config.kv_heads > 0 &&
         config.group_size() <= cuda::kSqueezeMaxGroup &&
         config.group_size() <= cuda::kDecodeMaxGroup;
}

StatusOr<DeviceContextQuery> DescribeContext(const ContextAttention& context,
                                             const ModelConfig& config) {
  const auto* snap_attn = dynamic_cast<const SnapshotAttention*>(&context);
  if (snap_attn == nullptr) {
    return UnimplementedError(
        "the CUDA backend serves fixed contexts built by engine/squeeze (a ContextSnapshot behind "
        "MakeContextAttention); this ContextAttention has no snapshot");
  }
  DeviceContextQuery q;
  q.snapshot = &snap_attn->snapshot();
  q.attention = snap_attn;
  const SnapshotDims& d = q.snapshot->dims;
  if (d.layers != config.layers || d.kv_heads != config.kv_heads || d.q_heads != config.q_heads ||
      d.head_dim != config.head_dim) {
    return InvalidArgumentError(
        "the context snapshot's shape (layers " + std::to_string(d.layers) + ", kv heads " +
        std::to_string(d.kv_heads) + ", q heads " + std::to_string(d.q_heads) + ", head_dim " +
        std::to_string(d.head_dim) + ") does not match the model's (" +
        std::to_string(config.layers) + ", " + std::to_string(config.kv_heads) + ", " +
        std::to_string(config.q_heads) + ", " + std::to_string(config.head_dim) + ")");
  }
  if (d.n_tokens < 1 || d.n_tokens > INT32_MAX) {
    return InvalidArgumentError("the context has " + std::to_string(d.n_tokens) +
                                " tokens; the CUDA backend takes 1 to 2^31 - 1");
  }
  q.squeezed = dynamic_cast<const SqueezedContextAttention*>(&context);
  if (q.squeezed == nullptr) return q;
  if (!SqueezedLookupFits(config)) {
    return UnimplementedError(
        "SQUEEZED attention on the GPU needs head_dim 64 or 128 and at most " +
        std::to_string(cuda::kSqueezeMaxGroup) + " query heads per KV head (this model: head_dim " +
        std::to_string(config.head_dim) + ", group " + std::to_string(config.group_size()) +
        "); ask for attention mode DENSE or use the CPU backend");
  }
  const SelectionParams p = q.squeezed->ParamsForLayer(0);
  q.lookup.policy = p.policy == SelectionPolicy::kThreshold ? cuda::SqueezePolicy::kThreshold
                                                            : cuda::SqueezePolicy::kBudget;
  q.lookup.reduce =
      p.reduce == GqaReduce::kMean ? cuda::SqueezeReduce::kMean : cuda::SqueezeReduce::kMax;
  // Without a coarse level the CPU runs flat; so does the device (a view without one runs flat),
  // but the class should not split requests over nothing.
  const bool has_coarse =
      !q.snapshot->heads.empty() && !q.snapshot->heads[0].coarse_offsets.empty();
  q.lookup.hierarchical = p.hierarchical && has_coarse;
  if (q.lookup.hierarchical) {
    q.lookup.coarse_coverage =
        static_cast<float>(std::clamp(p.coarse_expansion * p.coarse_keep, 1e-6, 1.0));
  }
  q.kv_budget = static_cast<float>(std::clamp(p.kv_budget, 0.0, 1.0));
  return q;
}

float LookupValue(const DeviceContextQuery& query, int layer) {
  if (query.squeezed == nullptr) return 1.0f;
  if (query.lookup.policy == cuda::SqueezePolicy::kBudget) return query.kv_budget;
  return query.squeezed->ParamsForLayer(layer).threshold;
}

int64_t DecodeKeysBucket(int64_t keys) {
  if (keys <= 64) return 64;
  int64_t pow2 = 1;
  while (pow2 * 2 <= keys) pow2 *= 2;
  const int64_t step = std::max<int64_t>(64, pow2 / 8);
  return (keys + step - 1) / step * step;
}

ContextStepPlan PlanContextStep(const StepLayout& L, std::span<const ContextItemFacts> facts,
                                int q_heads, int kv_heads, int head_dim) {
  ContextStepPlan plan;
  const int64_t D = L.decode_items;
  std::map<LookupClass, std::vector<int32_t>> by_class;
  for (int64_t i = 0; i < static_cast<int64_t>(L.items.size()); ++i) {
    const ContextItemFacts& f = facts[i];
    const StepLayout::Item& item = L.items[i];
    if (i >= D) {
      if (f.has_context) plan.max_prefill_rows = std::max(plan.max_prefill_rows, item.n);
      continue;
    }
    int64_t ctx_keys = 0;
    if (f.has_context && f.squeezed) {
      by_class[f.lookup].push_back(static_cast<int32_t>(i));
      ctx_keys = cuda::SqueezeMaxSelectedKeys(f.lookup.policy, f.kv_budget, f.sink_len, f.body_len,
                                              f.window_len, f.largest_cluster);
    } else if (f.has_context) {
      ctx_keys = f.n_tokens;
    }
    plan.decode_max_kv = std::max(plan.decode_max_kv, ctx_keys + item.cached + 1);
  }
  plan.decode_kv_bucket = DecodeKeysBucket(plan.decode_max_kv);
  for (auto& [lookup, members] : by_class) {
    ContextStepPlan::Class c;
    c.lookup = lookup;
    c.items = std::move(members);
    for (int32_t d : c.items) {
      c.max_clusters = std::max(c.max_clusters, facts[d].k);
      c.max_coarse = std::max(c.max_coarse, facts[d].k1);
    }
    cuda::SqueezeSelectParams p;
    p.batch = static_cast<int>(c.items.size());
    p.n_q_heads = q_heads;
    p.n_kv_heads = kv_heads;
    p.head_dim = head_dim;
    p.policy = c.lookup.policy;
    p.reduce = c.lookup.reduce;
    p.hierarchical = c.lookup.hierarchical;
    p.coarse_coverage = c.lookup.coarse_coverage;
    p.max_clusters = c.max_clusters;
    p.max_coarse = c.lookup.hierarchical ? c.max_coarse : 0;
    c.select = cuda::PlanSqueezeSelect(p);
    plan.full_max_segments = std::max(plan.full_max_segments, c.select.max_segments);
    plan.max_class = std::max(plan.max_class, static_cast<int32_t>(c.items.size()));
    plan.select_workspace_bytes = std::max(plan.select_workspace_bytes, c.select.workspace_bytes);
    plan.classes.push_back(std::move(c));
  }
  return plan;
}

bool OrderClassesByContext(std::span<const void* const> context_of, ContextStepPlan* plan) {
  bool changed = false;
  for (ContextStepPlan::Class& c : plan->classes) {
    if (c.lookup.hierarchical || c.items.size() < 3) continue;  // 1 or 2 items: nothing to join
    // Rank of each item's context by first appearance; a stable sort by rank keeps the order of
    // one context's items.
    std::vector<const void*> first_seen;
    std::vector<std::pair<size_t, int32_t>> ranked;  // (rank, item)
    ranked.reserve(c.items.size());
    for (int32_t d : c.items) {
      const void* ctx = context_of[static_cast<size_t>(d)];
      auto at = std::find(first_seen.begin(), first_seen.end(), ctx);
      if (at == first_seen.end()) at = first_seen.insert(first_seen.end(), ctx);
      ranked.emplace_back(static_cast<size_t>(at - first_seen.begin()), d);
    }
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t j = 0; j < ranked.size(); ++j) {
      changed |= c.items[j] != ranked[j].second;
      c.items[j] = ranked[j].second;
    }
  }
  return changed;
}

}  // namespace sqz
