// Scheduling decisions of the engine loop, as pure functions over a snapshot of the request list:
// no clocks, no threads, no backend. The engine calls PlanStep once per iteration and carries the
// plan out; tests simulate iterations by applying plans to the same structs.
//
// Policy (continuous batching at iteration level):
//   1. Decode first: every running request that has finished its prompt gets one token.
//   2. Then prompt prefill of running requests, FCFS, in chunks, under the step's token budget
//      (chunks that leave prompt behind are multiples of the request's prefill_align).
//   3. Then admission of waiting requests, FCFS, while the running set has room and the KV pool can
//      reserve the request's worst case (prompt + max_tokens): admitted requests never need
//      preemption. A request that cannot be admitted blocks those behind it (no overtaking, so
//      large requests do not starve).
//   4. Last, registration (ingestion) prefill at low priority: what budget remains, but at least
//      `ingest_floor_tokens` per step so registration always progresses.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/options.h"

namespace sqz {

// What the scheduler needs to know of one request.
struct SchedRequest {
  int64_t id = 0;
  int64_t prompt_remaining = 0;   // prompt tokens not yet prefilled
  int64_t reserved_tokens = 0;    // worst case KV tokens: prompt + max_tokens (own tokens only)
  bool cancelled = false;         // finish at this step boundary, freeing its KV
  // > 1: every prefill chunk but the last is a multiple of this many tokens, so the prompt offsets
  // where chunks start stay aligned to it. SQUEEZED requests set their selection block size: a
  // block is then never split across two chunks, and the selections (hence the tokens) do not
  // depend on how the batch chunked the prompt. Ignored when a step could never hold one aligned
  // chunk (min(prefill_chunk_tokens, max_batch_tokens) < prefill_align). A request whose aligned
  // chunk does not fit the budget left in a step waits for the next step.
  int64_t prefill_align = 1;
};

struct IngestJob {
  int64_t id = 0;
  int64_t remaining = 0;  // context tokens not yet prefilled
};

struct StepWork {
  int64_t request_id = 0;
  int64_t tokens = 0;  // 1 for decode, the chunk length for prefill
  bool decode = false;
};

struct StepPlan {
  std::vector<int64_t> finished_cancelled;  // running or waiting requests to drop now
  std::vector<int64_t> admitted;            // waiting -> running this step (in order)
  std::vector<StepWork> work;               // decode entries first, then prefill chunks
  int64_t ingest_id = -1;                   // ingestion job advanced this step, or -1
  int64_t ingest_tokens = 0;
  int64_t total_tokens() const;
};

struct SchedulerLimits {
  int64_t max_batch_tokens = 512;
  int64_t max_running = 64;
  int64_t prefill_chunk_tokens = 512;  // one request's prompt tokens per step at most
  int64_t ingest_chunk_tokens = 256;
  int64_t ingest_floor_tokens = 32;
  int64_t kv_capacity_tokens = 0;  // tokens the KV pool holds in all
};

SchedulerLimits LimitsFromOptions(const SchedulerOptions& options, int64_t kv_capacity_tokens);

// running: admitted requests (their reservations are held); waiting: FCFS queue;
// ingest: pending registrations, oldest first.
StepPlan PlanStep(const SchedulerLimits& limits, const std::vector<SchedRequest>& running,
                  const std::vector<SchedRequest>& waiting, const std::vector<IngestJob>& ingest);

}  // namespace sqz
