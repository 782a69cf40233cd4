// Ingestion of a fixed context (ALGORITHM.md, offline steps 1-6; DESIGN.md states PREFILLING ->
// CLUSTERING -> CALIBRATING): chunked dense prefill of the tokens on a Backend, capturing the
// post-RoPE K/V of every layer (Backend::ReadKv) and the post-RoPE queries of the observation
// window (StepInput::q_out), then BuildSnapshot.
//
// The result is a plain ContextSnapshot: many requests share one snapshot read-only, each through
// its own ContextAttention (squeezed_attention.h). Thread safety: uses the backend, which is not
// thread-safe: call on the thread that owns it. The backend needs free KV blocks for all the
// tokens at once (the sequence is freed before returning, also on error).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/status.h"
#include "engine/model/backend.h"
#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/snapshot.h"

namespace sqz {

// Step-wise ingestion for an engine loop that interleaves context prefill chunks with queries in
// one batched Forward (DESIGN.md: low-priority ingestion):
//
//   auto ing = ContextIngestion::Start(backend, tokens, options);   // adds a sequence
//   while (!ing->prefilled()) {
//     StepInput step = ing->NextStep(budget);   // include in the batch of the next Forward
//     if (backend.Forward(batch, logits).ok()) ing->StepDone();   // else retry later
//   }
//   auto captured = ing->Capture();   // K/V via ReadKv; then BuildSnapshot (or IngestContext)
//
// Ownership: borrows the backend (which must outlive it) and owns the sequence it adds, freed by
// the destructor. Chunks never straddle the window start, so window chunks capture their queries
// whole (StepInput::q_out points into a buffer the object owns until StepDone). Thread safety:
// like the backend, one thread.
class ContextIngestion {
 public:
  // INVALID_ARGUMENT for an empty token list or bad options; backend errors of AddSequence.
  static StatusOr<std::unique_ptr<ContextIngestion>> Start(Backend& backend,
                                                           std::vector<int32_t> tokens,
                                                           const SqueezeOptions& options);
  ContextIngestion(const ContextIngestion&) = delete;
  ContextIngestion& operator=(const ContextIngestion&) = delete;
  ~ContextIngestion();

  // The next chunk: at most min(max_tokens, options.prefill_chunk_tokens) tokens (>= 1),
  // all_logits off (when the batch's Forward writes logits, this entry still takes one row).
  // Calling it again before StepDone returns the same chunk. CHECK-fails once prefilled().
  StepInput NextStep(int64_t max_tokens);
  // Records that the last NextStep ran successfully in a Forward call.
  void StepDone();

  bool prefilled() const { return pos_ == static_cast<int64_t>(tokens_.size()); }
  double fraction_prefilled() const { return static_cast<double>(pos_) / tokens_.size(); }
  int64_t tokens_done() const { return pos_; }

  // After prefilled(): the captured K/V and window queries (moves the queries out; call once).
  StatusOr<CapturedContext> Capture();

 private:
  ContextIngestion(Backend& backend, SeqId seq, std::vector<int32_t> tokens,
                   const SqueezeOptions& options);

  Backend& backend_;  // borrowed
  const SeqId seq_;
  const std::vector<int32_t> tokens_;
  const SqueezeOptions options_;
  const int64_t window_len_;
  int64_t pos_ = 0;              // tokens prefilled
  int64_t pending_ = 0;          // length of the chunk handed out by NextStep, 0 if none
  std::vector<float> q_chunk_;   // [layers][pending_][q_heads][head_dim] while a window chunk runs
  std::vector<float> window_q_;  // [layers][window_len][q_heads][head_dim]
};

// Dense prefill and capture only (ContextIngestion run to completion, one chunk per Forward).
// INVALID_ARGUMENT for an empty token list or bad options; errors of the backend
// (RESOURCE_EXHAUSTED when the KV pool is too small, OUT_OF_RANGE beyond the model's positions,
// ...) pass through with "ingestion prefill" prepended.
StatusOr<CapturedContext> CaptureContext(Backend& backend, std::span<const int32_t> tokens,
                                         const SqueezeOptions& options,
                                         const IngestProgress& progress = {});

// CaptureContext followed by BuildSnapshot.
StatusOr<ContextSnapshot> IngestContext(Backend& backend, std::span<const int32_t> tokens,
                                        const SqueezeOptions& options,
                                        const IngestProgress& progress = {});

}  // namespace sqz
