// Generate: a small generation loop over a Backend for tools, tests and benchmarks (the server has
// its own scheduler). Several requests run together: each step feeds every live request either
// its next prompt chunk (chunked prefill) or its last sampled token (decode), in one Forward call;
// requests drop out as they finish. Results are the same as running each request alone (the
// backend is batch and chunk invariant, and each request has its own seeded Sampler).
//
// Stops, checked in this order after each sampled token: an EOS id (unless ignore_eos) or a
// stop_token_id (the token is not part of the output); a stop string (the output text ends before
// it); max_tokens or max_positions (finish "length").
// Thread safety: runs on the caller's thread and uses the backend exclusively until it returns.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/model/backend.h"
#include "engine/model/sampler.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, non-empty (include BOS if the model wants it)
  SamplingParams sampling;      // validated by Generate
  const ContextAttention* context = nullptr;  // fixed context before the prompt; borrowed
};

struct GenerationResult {
  std::vector<int32_t> tokens;        // generated ids (a final EOS / stop token excluded)
  std::vector<SampleResult> samples;  // per generated token: logprob and top alternatives
  std::string text;                   // completion text (needs GenerateOptions::tokenizer)
  std::string finish_reason;          // "stop" or "length"
  int64_t prompt_tokens = 0;
  double time_to_first_token_s = 0;  // from the start of Generate to the first sampled token
  double total_s = 0;                // from the start of Generate to the finish
};

struct GenerateOptions {
  // Most prompt tokens of one request fed per step. Larger chunks prefill faster; smaller ones
  // interleave requests more finely.
  int64_t prefill_chunk = 512;
  // EOS ids that end generation (unless a request sets ignore_eos). Typically the tokenizer's.
  std::vector<int32_t> eos_ids;
  // When set, results carry text, stop strings apply, and on_text receives streamed text.
  const Tokenizer* tokenizer = nullptr;  // borrowed
  // Called after each generated token: request index, token id, newly complete text ("" when no
  // tokenizer or when text is held back); token -1 carries text flushed when a request ends.
  // May be empty.
  std::function<void(size_t request, int32_t token, std::string_view text)> on_token;
};

// Runs all requests to completion. INVALID_ARGUMENT for an empty prompt, invalid sampling
// parameters, or stop strings without a tokenizer; backend errors (e.g. RESOURCE_EXHAUSTED when
// the KV pool is too small, OUT_OF_RANGE for a prompt beyond max_positions) pass through. The
// backend's sequences are freed before returning, on success or error.
StatusOr<std::vector<GenerationResult>> Generate(Backend& backend,
                                                 std::span<const GenerationRequest> requests,
                                                 const GenerateOptions& options);

}  // namespace sqz
