// Sampling: per-request parameters (SamplingParams), a seeded Sampler that turns one row of
// logits into a token (with log-probabilities), and a StopChecker for stop strings over streamed
// text.
//
// Sampler pipeline per step, in this order: repetition penalty (prompt + generated tokens),
// presence and frequency penalties (generated tokens) -> temperature == 0: argmax (lowest id on
// ties) -> else logits / temperature, softmax, top_k, top_p, min_p, renormalise, one draw from the
// request's own generator (splitmix64 seeded with `seed`, so the same seed and logits give the same
// tokens on every platform and regardless of batching).
// Log-probabilities are those of the raw model distribution (log-softmax of the logits before any
// penalty, temperature or truncation), as vLLM reports them by default.
//
// Ownership and threads: a Sampler and a StopChecker belong to one request and are not
// thread-safe; distinct instances are independent.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace sqz {

struct SamplingParams {
  float temperature = 1.0f;             // >= 0; 0 means greedy (argmax)
  int32_t top_k = 0;                    // >= 0; keep the k most likely tokens; 0 = off
  float top_p = 1.0f;                   // (0, 1]; smallest set with cumulative probability >= top_p
  float min_p = 0.0f;                   // [0, 1]; drop tokens with p < min_p * p_max
  float repetition_penalty = 1.0f;      // > 0; 1 = off; logit / rp if > 0 else logit * rp (HF/vLLM)
  float presence_penalty = 0.0f;        // [-2, 2]; minus this once for every generated token seen
  float frequency_penalty = 0.0f;       // [-2, 2]; minus this times the token's generated count
  uint64_t seed = 0;                    // generator seed; same seed + logits -> same tokens
  int32_t max_tokens = 256;             // > 0; most tokens to generate
  std::vector<std::string> stop;        // stop strings (non-empty); the output ends before them
  std::vector<int32_t> stop_token_ids;  // >= 0; generation stops after emitting one (excluded)
  bool ignore_eos = false;              // keep generating past EOS
  int32_t top_logprobs = 0;             // [0, 20]; alternatives returned per token

  static constexpr int32_t kMaxTopLogprobs = 20;

  // INVALID_ARGUMENT naming the field: "temperature must be >= 0, got -1", "top_p must be in
  // (0, 1], got 0", ...
  Status Validate() const;
};

struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;           // raw log-probability of `token`
  std::vector<TokenLogprob> top;  // top_logprobs most likely tokens, descending (ties: lower id)
};

class Sampler {
 public:
  // params must be valid (checked). prompt: the request's prompt tokens (for the repetition
  // penalty); copied.
  Sampler(const SamplingParams& params, std::span<const int32_t> prompt);

  // Picks the next token from logits: [vocab] and records it for the penalties.
  SampleResult Sample(const float* logits, int64_t vocab);

  // Records a token chosen elsewhere (e.g. forced) as generated, for the penalties.
  void Accept(int32_t token);

  const SamplingParams& params() const { return params_; }

 private:
  double NextUniform();  // [0, 1)

  SamplingParams params_;
  uint64_t rng_state_;
  std::vector<int32_t> seen_prompt_;  // sorted unique prompt tokens
  std::vector<int32_t> generated_;    // in order
  std::vector<float> work_;           // [vocab] processed logits
  std::vector<int32_t> order_;        // candidate ids
};

// Finds stop strings in streamed text. Push returns the text that is safe to show: it holds back a
// tail that could be the start of a stop string until the next Push proves otherwise. When a stop
// string completes, Push returns the text before it and stopped() turns true; later Push calls
// return "". Flush returns what is held back once the stream ends without a stop.
class StopChecker {
 public:
  explicit StopChecker(std::vector<std::string> stops);

  std::string Push(std::string_view text);
  std::string Flush();

  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }  // the stop string found, or ""

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace sqz
