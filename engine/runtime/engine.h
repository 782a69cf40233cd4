// Engine: the facade of the inference engine. Requests and registrations go in through Submit and
// SubmitIngest; one loop thread ("engine-loop") owns the backend, the running requests and all
// scheduling state, and runs steps: continuous batching at iteration level (scheduler.h), with
// registration prefill interleaved at low priority. A second thread ("ingest-worker") builds the
// squeeze index of a context once its prefill is done, so clustering never stalls decoding.
//
// Shared state: the inbox (guarded by mu_), each request's RequestStream, and the stats atomics.
// Ownership: borrows the Backend and Tokenizer (they must outlive the Engine). Requests hold their
// context snapshot through a shared_ptr, so a context evicted or deleted while a request runs stays
// alive until the request ends.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "engine/model/backend.h"
#include "engine/model/sampler.h"
#include "engine/options.h"
#include "engine/runtime/request_stream.h"
#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/squeezed_attention.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz {

using Clock = std::chrono::steady_clock;

struct GenerateJob {
  std::string request_id;
  std::vector<int32_t> prompt;                     // non-empty, ids < vocab (validated by caller)
  std::shared_ptr<const ContextSnapshot> context;  // null: no fixed context
  AttentionOptions attention;                      // used when context is set
  SamplingParams sampling;                         // validated by the caller
  bool logprobs = false;                           // return each token's log-probability
  Clock::time_point arrival = Clock::now();
  std::optional<Clock::time_point> deadline;
  // Released when the request leaves the engine (e.g. the registry's in-flight count for a context).
  std::shared_ptr<void> lease;
};

struct IngestRequest {
  std::string context_id;
  std::vector<int32_t> tokens;
  SqueezeOptions options;
  // Both called from engine threads; they must not block for long.
  std::function<void(IngestStage stage, double fraction)> on_progress;
  std::function<void(StatusOr<ContextSnapshot> snapshot)> on_done;
  // Set to abandon the ingestion (the context was deleted); on_done then gets CANCELLED.
  std::shared_ptr<std::atomic<bool>> abandoned;
};

struct EngineStats {
  int64_t queued = 0;
  int64_t running = 0;
  int64_t ingesting = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t steps = 0;
  int64_t last_batch_tokens = 0;
};

// Builds a registered context's snapshot from its captured K/V (runs on the ingest-worker thread).
using SnapshotBuilder = std::function<StatusOr<ContextSnapshot>(const CapturedContext& captured,
                                                                const SqueezeOptions& options,
                                                                const IngestProgress& progress)>;

struct EngineLimits {
  SchedulerOptions scheduler;
  int64_t max_new_tokens = 4096;
  // Index building of registrations; empty: BuildSnapshot on the CPU. The daemon passes the GPU
  // builder (BuildSnapshotOnDevice, falling back to the CPU for shapes it lacks) with the cuda
  // backend. It must be callable from the ingest-worker thread while the loop runs steps.
  SnapshotBuilder build_snapshot;
};

class Engine {
 public:
  // Starts the loop and worker threads.
  static StatusOr<std::unique_ptr<Engine>> Start(Backend* backend, const Tokenizer* tokenizer,
                                                 const EngineLimits& limits);
  // Stops the threads; requests still queued or running end with UNAVAILABLE.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. RESOURCE_EXHAUSTED when the queue is full, or when the request alone needs
  // more KV than the pool has; UNAVAILABLE after StopAccepting.
  StatusOr<std::shared_ptr<RequestStream>> Submit(GenerateJob job);
  // Queues a registration's prefill and indexing. RESOURCE_EXHAUSTED when the context cannot fit
  // the KV pool; UNAVAILABLE after StopAccepting.
  Status SubmitIngest(IngestRequest request);

  // New submissions are refused with UNAVAILABLE; work in flight continues.
  void StopAccepting();
  // Ends every queued and running request at the next step with `why` (e.g. UNAVAILABLE at the
  // end of a drain). Ingestions continue.
  void CancelAll(Status why);
  EngineStats stats() const;
  const ModelConfig& model_config() const { return backend_->config(); }

 private:
  struct Active;
  struct Ingesting;
  Engine(Backend* backend, const Tokenizer* tokenizer, const EngineLimits& limits);
  void Loop();
  void WorkerLoop();
  bool RunStep();  // false when there was nothing to do
  void FinishRequest(Active& a, Status status, FinishReason reason, const std::string& stop);
  void EmitToken(Active& a, const SampleResult& sample);
  void CompleteIngestPrefill(Ingesting& ing);

  Backend* const backend_;
  const Tokenizer* const tokenizer_;
  const EngineLimits limits_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Active>> inbox_;         // GUARDED_BY(mu_)
  std::deque<std::unique_ptr<Ingesting>> ingest_inbox_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                             // GUARDED_BY(mu_)
  bool accepting_ = true;                             // GUARDED_BY(mu_)
  int64_t queued_ = 0;                                // GUARDED_BY(mu_)
  std::optional<Status> cancel_all_;                  // GUARDED_BY(mu_)

  // Loop-thread state.
  std::vector<std::unique_ptr<Active>> waiting_;
  std::vector<std::unique_ptr<Active>> running_;
  std::deque<std::unique_ptr<Ingesting>> ingesting_;
  std::vector<float> logits_;
  std::vector<TokenSampling> sampling_;  // ForwardSample's per-item parameters
  std::vector<int32_t> sampled_;         // ForwardSample's tokens
  int64_t next_internal_id_ = 1;

  // Worker: contexts whose prefill is done, waiting for BuildSnapshot.
  std::mutex worker_mu_;
  std::condition_variable worker_cv_;
  std::deque<std::unique_ptr<Ingesting>> worker_queue_;  // GUARDED_BY(worker_mu_)
  bool worker_stopping_ = false;                         // GUARDED_BY(worker_mu_)

  std::atomic<int64_t> stat_running_{0}, stat_ingesting_{0}, stat_steps_{0}, stat_batch_{0};

  std::thread loop_thread_;
  std::thread worker_thread_;
};

}  // namespace sqz
