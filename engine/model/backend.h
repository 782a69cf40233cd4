// Backend: runs the decoder forward pass for a batch of sequences whose own tokens live in a paged
// KV pool. Implemented by the CPU backend (cpu_backend.h, fp32, the oracle) and the CUDA backend.
//
// A sequence is [optional fixed context (ContextAttention)] + [its own tokens]. Its own tokens'
// keys and values are cached in blocks of kKvBlockTokens tokens taken from the pool's free list
// only when a token needs a slot in a new block; FreeSequence returns them.
//
// Guarantees every implementation keeps (the server relies on them):
//   * batch invariance: a sequence's logits are bit-identical whether it runs alone or batched
//     with others;
//   * chunk invariance: bit-identical whether its tokens are fed in one Forward call or many;
//   * with a context C, own token t sits at absolute position C.length() + t and each layer's
//     attention for it is C's partial merged (log-sum-exp rule) with the causal partial over the
//     sequence's own cached tokens.
// Thread safety: not thread-safe; one thread (the engine loop) owns a Backend.
#pragma once

#include <cstdint>
#include <span>

#include "common/status.h"
#include "engine/model/config.h"
#include "engine/model/context_attention.h"

namespace sqz {

using SeqId = int64_t;

// Tokens per KV block of the paged pool.
inline constexpr int64_t kKvBlockTokens = 16;

// One sequence's part of a Forward step.
struct StepInput {
  SeqId seq = -1;                   // from AddSequence
  std::span<const int32_t> tokens;  // new tokens, appended after the sequence's cached ones
  // Fixed context before the sequence (may be null). Borrowed for the call. A sequence must use a
  // context of the same length in every step (checked) and the same one (the caller's contract).
  const ContextAttention* context = nullptr;
  bool all_logits = false;  // logits for every new token, else only for the last one
  // Optional capture of the post-RoPE queries of the new tokens (ingestion uses the window's
  // queries for calibration): [layers][tokens.size()][q_heads][head_dim]. Null: not captured.
  float* q_out = nullptr;
};

// How ForwardSample picks one sequence's next token (the meaning of each field is that of
// SamplingParams in sampler.h). Greedy (temperature 0) picks exactly the token Sampler picks from
// the same logits, penalties included; a draw (temperature > 0) is seeded by (seed, counter) and
// reproducible, but its random stream is the backend's own, not Sampler's.
struct TokenSampling {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // over prompt and generated tokens
  float presence_penalty = 0.0f;    // over generated tokens
  float frequency_penalty = 0.0f;   // over generated tokens
  uint64_t seed = 0;
  uint64_t counter = 0;                // draw number within the request (e.g. tokens so far)
  std::span<const int32_t> prompt;     // borrowed for the call
  std::span<const int32_t> generated;  // borrowed for the call
};

struct KvPoolStats {
  int64_t block_tokens = kKvBlockTokens;
  int64_t total_blocks = 0;
  int64_t used_blocks = 0;
  int64_t free_blocks = 0;
  int64_t sequences = 0;  // live sequences
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const ModelConfig& config() const = 0;

  // A new empty sequence. Ids are never reused.
  virtual StatusOr<SeqId> AddSequence() = 0;
  // Releases the sequence and its KV blocks. NOT_FOUND for an unknown id.
  virtual Status FreeSequence(SeqId seq) = 0;
  // Number of own tokens cached for `seq` (context excluded); -1 for an unknown id.
  virtual int64_t SequenceLength(SeqId seq) const = 0;

  // Runs one step. logits: [rows][vocab], rows = sum over the batch, in order, of tokens.size()
  // (all_logits) or 1; may be null when no logits are wanted (prefill of a context).
  // Errors leave every sequence unchanged: INVALID_ARGUMENT (empty token list, token id outside
  // the vocabulary, unknown or repeated sequence, a context whose length changed),
  // OUT_OF_RANGE (position beyond max_positions), RESOURCE_EXHAUSTED (not enough free KV blocks
  // for the step).
  virtual Status Forward(std::span<const StepInput> batch, float* logits) = 0;

  // Whether ForwardSample is implemented (the token is chosen where the logits are, so they never
  // travel to the caller).
  virtual bool SamplesInBackend() const { return false; }
  // Runs Forward and picks the next token of every batch entry from its last row's logits:
  // tokens[i] for batch[i] (sampling[i] says how). all_logits must be false. Errors as Forward,
  // plus INVALID_ARGUMENT for sampling parameters outside SamplingParams' ranges or a sampling
  // list of another size than the batch; UNIMPLEMENTED where SamplesInBackend() is false.
  virtual Status ForwardSample(std::span<const StepInput> batch,
                               std::span<const TokenSampling> sampling, int32_t* tokens) {
    return UnimplementedError("this backend does not sample; use Forward and a Sampler");
  }

  // Copies the post-RoPE keys and the values of own tokens [begin, begin + n) of `seq` at `layer`.
  // k, v: [n][kv_heads][head_dim] each. NOT_FOUND (unknown seq), INVALID_ARGUMENT (layer),
  // OUT_OF_RANGE (range beyond the cached tokens).
  virtual Status ReadKv(SeqId seq, int layer, int64_t begin, int64_t n, float* k, float* v) = 0;

  virtual KvPoolStats Stats() const = 0;
};

}  // namespace sqz
