#include "engine/squeeze/defaults.h"

#include <string>

namespace sqz {

StatusOr<AttentionMode> ParseAttentionMode(std::string_view s) {
  if (s == "squeezed") return AttentionMode::kSqueezed;
  if (s == "dense") return AttentionMode::kDense;
  return InvalidArgumentError("attention mode must be \"squeezed\" or \"dense\", got \"" +
                              std::string(s) + "\"");
}

StatusOr<SelectionPolicy> ParseSelectionPolicy(std::string_view s) {
  if (s == "budget") return SelectionPolicy::kBudget;
  if (s == "threshold") return SelectionPolicy::kThreshold;
  return InvalidArgumentError("selection policy must be \"budget\" or \"threshold\", got \"" +
                              std::string(s) + "\"");
}

StatusOr<GqaReduce> ParseGqaReduce(std::string_view s) {
  if (s == "max") return GqaReduce::kMax;
  if (s == "mean") return GqaReduce::kMean;
  return InvalidArgumentError("gqa_reduce must be \"max\" or \"mean\", got \"" + std::string(s) +
                              "\"");
}

StatusOr<SqueezeOptions> IngestOptionsFrom(const SqueezeDefaults& d, int64_t prefill_chunk_tokens) {
  SqueezeOptions o;
  o.sink_tokens = d.sink_tokens;
  o.observation_window = d.observation_window;
  o.centroid_fraction = d.centroid_fraction;
  o.coarse_fraction = d.coarse_fraction;
  if (d.kmeans_iterations < 1 || d.kmeans_iterations > (1 << 20)) {
    return InvalidArgumentError("kmeans_iterations must be in [1, 2^20]");
  }
  o.kmeans_iterations = static_cast<int32_t>(d.kmeans_iterations);
  o.kmeans_seed = d.kmeans_seed;
  o.prefill_chunk_tokens = prefill_chunk_tokens;
  SQZ_RETURN_IF_ERROR(o.Validate());
  return o;
}

StatusOr<AttentionOptions> AttentionOptionsFrom(const SqueezeDefaults& d) {
  AttentionOptions a;
  SQZ_ASSIGN_OR_RETURN(a.mode, ParseAttentionMode(d.default_mode));
  SQZ_ASSIGN_OR_RETURN(a.policy, ParseSelectionPolicy(d.default_policy));
  SQZ_ASSIGN_OR_RETURN(a.gqa_reduce, ParseGqaReduce(d.gqa_reduce));
  a.kv_budget = d.default_kv_budget;
  a.sparsity = d.default_sparsity;
  a.block_size = d.prefill_block_size;
  a.hierarchical = d.hierarchical;
  SQZ_RETURN_IF_ERROR(a.Validate());
  return a;
}

}  // namespace sqz
