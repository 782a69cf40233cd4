#include "engine/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace sqz {
namespace {

std::string Num(double v) {
  std::string s = std::to_string(v);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// log-softmax normaliser of x: [n] (max + log sum exp(x - max)), in double.
double LogSumExp(const float* x, int64_t n) {
  const float m = *std::max_element(x, x + n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(sum);
}

}  // namespace

Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return InvalidArgumentError("temperature must be >= 0, got " + Num(temperature));
  }
  if (top_k < 0) return InvalidArgumentError("top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return InvalidArgumentError("top_p must be in (0, 1], got " + Num(top_p));
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return InvalidArgumentError("min_p must be in [0, 1], got " + Num(min_p));
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return InvalidArgumentError("repetition_penalty must be > 0, got " + Num(repetition_penalty));
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return InvalidArgumentError("presence_penalty must be in [-2, 2], got " +
                                Num(presence_penalty));
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return InvalidArgumentError("frequency_penalty must be in [-2, 2], got " +
                                Num(frequency_penalty));
  }
  if (max_tokens <= 0) {
    return InvalidArgumentError("max_tokens must be > 0, got " + std::to_string(max_tokens));
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty()) return InvalidArgumentError("stop[" + std::to_string(i) + "] is empty");
  }
  for (int32_t id : stop_token_ids) {
    if (id < 0) {
      return InvalidArgumentError("stop_token_ids must be >= 0, got " + std::to_string(id));
    }
  }
  if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs) {
    return InvalidArgumentError("top_logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) +
                                "], got " + std::to_string(top_logprobs));
  }
  return OkStatus();
}

Sampler::Sampler(const SamplingParams& params, std::span<const int32_t> prompt)
    : params_(params), rng_state_(params.seed), seen_prompt_(prompt.begin(), prompt.end()) {
  SQZ_CHECK(params_.Validate().ok()) << params_.Validate().ToString();
  std::sort(seen_prompt_.begin(), seen_prompt_.end());
  seen_prompt_.erase(std::unique(seen_prompt_.begin(), seen_prompt_.end()), seen_prompt_.end());
}

double Sampler::NextUniform() {
  uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1p-53;
}

void Sampler::Accept(int32_t token) { generated_.push_back(token); }

SampleResult Sampler::Sample(const float* logits, int64_t vocab) {
  SQZ_CHECK(vocab > 0) << "empty logits";
  SampleResult result;
  const double lse = LogSumExp(logits, vocab);
  work_.assign(logits, logits + vocab);

  // Penalties.
  const SamplingParams& p = params_;
  if (p.repetition_penalty != 1.0f) {
    auto penalise = [&](int32_t t) {
      if (t < 0 || t >= vocab) return;
      float& x = work_[t];
      x = x > 0.0f ? x / p.repetition_penalty : x * p.repetition_penalty;
    };
    std::vector<int32_t> all = seen_prompt_;
    all.insert(all.end(), generated_.begin(), generated_.end());
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    for (int32_t t : all) penalise(t);
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::vector<int32_t> gen = generated_;
    std::sort(gen.begin(), gen.end());
    for (size_t i = 0; i < gen.size();) {
      size_t j = i;
      while (j < gen.size() && gen[j] == gen[i]) ++j;
      if (gen[i] >= 0 && gen[i] < vocab) {
        work_[gen[i]] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(j - i);
      }
      i = j;
    }
  }

  int32_t chosen = -1;
  if (p.temperature == 0.0f) {
    chosen = static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  } else {
    // Probabilities at this temperature, candidates sorted by descending probability (ties: id).
    const float m = *std::max_element(work_.begin(), work_.end());
    for (int64_t i = 0; i < vocab; ++i) {
      work_[i] = static_cast<float>(std::exp((static_cast<double>(work_[i]) - m) / p.temperature));
    }
    order_.resize(vocab);
    for (int64_t i = 0; i < vocab; ++i) order_[i] = static_cast<int32_t>(i);
    auto better = [&](int32_t a, int32_t b) {
      return work_[a] > work_[b] || (work_[a] == work_[b] && a < b);
    };
    int64_t keep = vocab;
    if (p.top_k > 0 && p.top_k < keep) {
      keep = p.top_k;
      std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), better);
    } else {
      std::sort(order_.begin(), order_.end(), better);
    }
    double kept = 0.0;
    for (int64_t i = 0; i < keep; ++i) kept += work_[order_[i]];
    if (p.top_p < 1.0f) {
      double cum = 0.0;
      int64_t n = 0;
      while (n < keep) {
        cum += work_[order_[n++]];
        if (cum >= p.top_p * kept) break;
      }
      keep = std::max<int64_t>(n, 1);
    }
    if (p.min_p > 0.0f) {
      const float floor = p.min_p * work_[order_[0]];
      int64_t n = 1;
      while (n < keep && work_[order_[n]] >= floor) ++n;
      keep = n;
    }
    double mass = 0.0;
    for (int64_t i = 0; i < keep; ++i) mass += work_[order_[i]];
    const double target = NextUniform() * mass;
    double cum = 0.0;
    chosen = order_[keep - 1];
    for (int64_t i = 0; i < keep; ++i) {
      cum += work_[order_[i]];
      if (target < cum) {
        chosen = order_[i];
        break;
      }
    }
  }

  result.token = chosen;
  result.logprob = static_cast<float>(logits[chosen] - lse);
  if (p.top_logprobs > 0) {
    const int64_t n = std::min<int64_t>(p.top_logprobs, vocab);
    std::vector<int32_t> ids(vocab);
    for (int64_t i = 0; i < vocab; ++i) ids[i] = static_cast<int32_t>(i);
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int64_t i = 0; i < n; ++i) {
      result.top.push_back({ids[i], static_cast<float>(logits[ids[i]] - lse)});
    }
  }
  generated_.push_back(chosen);
  return result;
}

StopChecker::StopChecker(std::vector<std::string> stops) : stops_(std::move(stops)) {}

std::string StopChecker::Push(std::string_view text) {
  if (stopped_) return "";
  held_.append(text);
  // Earliest complete stop string (longest on a tie).
  size_t best = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t pos = held_.find(s);
    if (pos != std::string::npos &&
        (best == std::string::npos || pos < best || (pos == best && s.size() > matched_.size()))) {
      best = pos;
      matched_ = s;
    }
  }
  if (best != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, best);
    held_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, held_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopChecker::Flush() {
  if (stopped_) return "";
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace sqz
