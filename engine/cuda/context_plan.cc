#include "engine/cuda/context_plan.h"

#include <algorithm>
#include <string>

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

}  // namespace sqz
