#include "server/request_convert.h"

#include <cmath>
#include <sstream>

namespace sqz {
namespace {

namespace v1 = squeeze::v1;

std::string Num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

Status OutOfRange(const std::string& field, const std::string& range, double got) {
  return InvalidArgumentError(field + " must be in " + range + ", got " + Num(got));
}

}  // namespace

Status ValidateApiContextId(std::string_view id) {
  if (id.empty() || id.size() > 128) {
    return InvalidArgumentError("context id must have 1..128 characters, got " +
                                std::to_string(id.size()));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (alnum || (i > 0 && (c == '-' || c == '_' || c == '.'))) continue;
    return InvalidArgumentError(
        "context id may only contain a-z, 0-9, '-', '_' and '.', and must start with a letter or "
        "digit; bad character at offset " + std::to_string(i));
  }
  return OkStatus();
}

StatusOr<std::string> ParseContextName(std::string_view name) {
  constexpr std::string_view kPrefix = "contexts/";
  if (name.substr(0, kPrefix.size()) != kPrefix) {
    return InvalidArgumentError("context name must look like \"contexts/{id}\", got \"" +
                                std::string(name.substr(0, 140)) + "\"");
  }
  std::string id(name.substr(kPrefix.size()));
  SQZ_RETURN_IF_ERROR(ValidateApiContextId(id));
  return id;
}

std::string ContextName(std::string_view id) { return "contexts/" + std::string(id); }

Status ValidateUtf8(std::string_view s, std::string_view field) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c >> 5) == 0x6) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c >> 4) == 0xe) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c >> 3) == 0x1e) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      ok = (cc >> 6) == 0x2;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Reject overlong forms, surrogates and code points past U+10FFFF.
    if (ok) {
      ok = !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) && !(len == 4 && cp < 0x10000) &&
           !(cp >= 0xd800 && cp <= 0xdfff) && cp <= 0x10ffff;
    }
    if (!ok) {
      return InvalidArgumentError(std::string(field) +
                                  " is not valid UTF-8 (first bad byte at offset " +
                                  std::to_string(i) + ")");
    }
    i += len;
  }
  return OkStatus();
}

StatusOr<SqueezeOptions> SqueezeOptionsFromProto(const v1::SqueezeOptions& p,
                                                 const SqueezeDefaults& d) {
  SqueezeOptions o;
  o.sink_tokens = p.sink_tokens() ? p.sink_tokens() : d.sink_tokens;
  o.observation_window = p.observation_window() ? p.observation_window() : d.observation_window;
  o.centroid_fraction = p.centroid_fraction() != 0 ? p.centroid_fraction() : d.centroid_fraction;
  o.coarse_fraction = p.coarse_fraction() != 0 ? p.coarse_fraction() : d.coarse_fraction;
  o.kmeans_iterations = p.kmeans_iterations() ? p.kmeans_iterations()
                                              : static_cast<int32_t>(d.kmeans_iterations);
  o.kmeans_seed = p.kmeans_seed() ? p.kmeans_seed() : d.kmeans_seed;
  if (o.sink_tokens > 1024) {
    return OutOfRange("squeeze_options.sink_tokens", "[0, 1024]", o.sink_tokens);
  }
  if (o.observation_window < 1 || o.observation_window > 4096) {
    return OutOfRange("squeeze_options.observation_window", "[1, 4096]", o.observation_window);
  }
  if (!(o.centroid_fraction > 0 && o.centroid_fraction <= 0.5)) {
    return OutOfRange("squeeze_options.centroid_fraction", "(0, 0.5]", o.centroid_fraction);
  }
  if (o.coarse_fraction >= o.centroid_fraction || o.coarse_fraction < -1) {
    return OutOfRange("squeeze_options.coarse_fraction", "[-1, centroid_fraction)",
                      o.coarse_fraction);
  }
  if (o.kmeans_iterations < 1 || o.kmeans_iterations > 300) {
    return OutOfRange("squeeze_options.kmeans_iterations", "[1, 300]", o.kmeans_iterations);
  }
  SQZ_RETURN_IF_ERROR(o.Validate().WithContext("squeeze_options"));
  return o;
}

StatusOr<AttentionOptions> AttentionOptionsFromProto(const v1::AttentionOptions& p,
                                                     const SqueezeDefaults& d) {
  AttentionOptions o;
  switch (p.mode()) {
    case v1::AttentionOptions::MODE_UNSPECIFIED:
      o.mode = d.default_mode == "dense" ? AttentionMode::kDense : AttentionMode::kSqueezed;
      break;
    case v1::AttentionOptions::SQUEEZED: o.mode = AttentionMode::kSqueezed; break;
    case v1::AttentionOptions::DENSE: o.mode = AttentionMode::kDense; break;
    default: return InvalidArgumentError("attention.mode: unknown value " + Num(p.mode()));
  }
  switch (p.policy()) {
    case v1::AttentionOptions::POLICY_UNSPECIFIED:
      o.policy = d.default_policy == "threshold" ? SelectionPolicy::kThreshold
                                                 : SelectionPolicy::kBudget;
      break;
    case v1::AttentionOptions::BUDGET: o.policy = SelectionPolicy::kBudget; break;
    case v1::AttentionOptions::THRESHOLD: o.policy = SelectionPolicy::kThreshold; break;
    default: return InvalidArgumentError("attention.policy: unknown value " + Num(p.policy()));
  }
  switch (p.gqa_reduce()) {
    case v1::AttentionOptions::GQA_REDUCE_UNSPECIFIED:
      o.gqa_reduce = d.gqa_reduce == "mean" ? GqaReduce::kMean : GqaReduce::kMax;
      break;
    case v1::AttentionOptions::MAX: o.gqa_reduce = GqaReduce::kMax; break;
    case v1::AttentionOptions::MEAN: o.gqa_reduce = GqaReduce::kMean; break;
    default: return InvalidArgumentError("attention.gqa_reduce: unknown value " + Num(p.gqa_reduce()));
  }
  o.kv_budget = p.kv_budget() != 0 ? p.kv_budget() : d.default_kv_budget;
  if (!(o.kv_budget > 0 && o.kv_budget <= 1)) {
    return OutOfRange("attention.kv_budget", "(0, 1]", p.kv_budget());
  }
  o.sparsity = p.target_sparsity() != 0 ? p.target_sparsity() : d.default_sparsity;
  if (!(o.sparsity >= 0.5 - 1e-6 && o.sparsity <= 0.95 + 1e-6)) {
    return OutOfRange("attention.target_sparsity", "[0.5, 0.95]", p.target_sparsity());
  }
  o.block_size = p.prefill_block_size() ? p.prefill_block_size() : d.prefill_block_size;
  if (o.block_size > 4096) {
    return OutOfRange("attention.prefill_block_size", "[1, 4096]", o.block_size);
  }
  o.hierarchical = p.hierarchical() || d.hierarchical;
  SQZ_RETURN_IF_ERROR(o.Validate().WithContext("attention"));
  return o;
}

}  // namespace sqz

namespace sqz {

StatusOr<SamplingParams> SamplingFromProto(const squeeze::v1::SamplingParams& p,
                                           const LimitsOptions& limits, uint64_t request_seed) {
  SamplingParams s;
  if (p.has_max_tokens()) {
    if (p.max_tokens() < 1 || p.max_tokens() > limits.max_new_tokens) {
      return InvalidArgumentError("sampling.max_tokens must be in [1, " +
                                  std::to_string(limits.max_new_tokens) + "], got " +
                                  std::to_string(p.max_tokens()));
    }
    s.max_tokens = static_cast<int32_t>(p.max_tokens());
  } else {
    s.max_tokens = static_cast<int32_t>(limits.default_max_tokens);
  }
  if (!(p.temperature() >= 0 && p.temperature() <= 100)) {
    return InvalidArgumentError("sampling.temperature must be in [0, 100], got " +
                                std::to_string(p.temperature()));
  }
  s.temperature = p.temperature();
  if (p.top_k() < 0) {
    return InvalidArgumentError("sampling.top_k must be >= 0, got " + std::to_string(p.top_k()));
  }
  s.top_k = p.top_k();
  if (p.has_top_p() && !(p.top_p() > 0 && p.top_p() <= 1)) {
    return InvalidArgumentError("sampling.top_p must be in (0, 1], got " +
                                std::to_string(p.top_p()));
  }
  s.top_p = p.has_top_p() ? p.top_p() : 1.0f;
  if (!(p.min_p() >= 0 && p.min_p() <= 1)) {
    return InvalidArgumentError("sampling.min_p must be in [0, 1], got " +
                                std::to_string(p.min_p()));
  }
  s.min_p = p.min_p();
  s.repetition_penalty = p.repetition_penalty() == 0 ? 1.0f : p.repetition_penalty();
  if (!(s.repetition_penalty > 0 && s.repetition_penalty <= 10)) {
    return InvalidArgumentError("sampling.repetition_penalty must be in (0, 10], got " +
                                std::to_string(p.repetition_penalty()));
  }
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  s.seed = p.has_seed() ? p.seed() : request_seed;
  if (p.stop_size() > 16) {
    return InvalidArgumentError("sampling.stop allows at most 16 strings, got " +
                                std::to_string(p.stop_size()));
  }
  for (const auto& stop : p.stop()) {
    if (stop.empty() || stop.size() > 256) {
      return InvalidArgumentError("sampling.stop strings must have 1..256 bytes, got " +
                                  std::to_string(stop.size()));
    }
    s.stop.push_back(stop);
  }
  for (uint32_t id : p.stop_token_ids()) s.stop_token_ids.push_back(static_cast<int32_t>(id));
  s.ignore_eos = p.ignore_eos();
  s.top_logprobs = static_cast<int32_t>(p.top_logprobs());
  SQZ_RETURN_IF_ERROR(s.Validate().WithContext("sampling"));
  return s;
}

}  // namespace sqz
