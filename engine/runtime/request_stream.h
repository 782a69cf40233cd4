// RequestStream: the outbox of one generation request, shared by the engine loop (producer) and
// the server's stream reactor (consumer). The only state they share for a request.
//
// Thread safety: every method is thread-safe. The waker is called on the producer's thread, outside
// the stream's lock, whenever an event arrives; it must not block (the reactor starts a write or
// notes that one is pending). ClearWaker() returns only when no call of the waker is running, so the
// consumer may destroy what the waker captures right after it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"

namespace sqz {

enum class FinishReason { kNone, kStop, kLength, kCancelled };

struct TopLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
};

struct GenerateUsage {
  int64_t context_tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double context_keys_read = 1.0;  // share of fixed-context keys read (centroids at half)
};

struct GenerateTimings {
  double queued_s = 0;
  double time_to_first_token_s = 0;
  double total_s = 0;
};

struct GenerateEvent {
  // A chunk carries tokens and the text they completed; the final event carries the outcome.
  bool final = false;
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;              // one per token when asked
  std::vector<TopLogprob> top_logprobs;     // top_n per token when asked
  // Final only.
  Status status;                            // not OK: the stream ends with this error
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_string;
  GenerateUsage usage;
  GenerateTimings timings;
};

class RequestStream {
 public:
  RequestStream() = default;
  RequestStream(const RequestStream&) = delete;
  RequestStream& operator=(const RequestStream&) = delete;

  // Producer. Pushing after the final event is a bug (CHECK).
  void Push(GenerateEvent event);

  // Consumer: pops the next event; consecutive chunks are merged into one. False when empty.
  bool Pop(GenerateEvent* out);
  // Blocks until an event is available (or the timeout passes); for in-process clients and tests.
  bool WaitPop(GenerateEvent* out, int64_t timeout_ms);

  void SetWaker(std::function<void()> waker);
  void ClearWaker();

  // Consumer -> producer: the client went away or the deadline passed. The engine frees the
  // request at its next step and pushes a final event with CANCELLED / DEADLINE_EXCEEDED.
  void Cancel(Status why);
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  Status cancel_status() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerateEvent> events_;  // GUARDED_BY(mu_)
  bool finished_ = false;             // GUARDED_BY(mu_): final event pushed
  std::function<void()> waker_;       // GUARDED_BY(mu_)
  int waker_calls_ = 0;               // GUARDED_BY(mu_): wakers running now
  std::condition_variable waker_idle_;
  std::atomic<bool> cancelled_{false};
  Status cancel_status_;              // GUARDED_BY(mu_)
};

}  // namespace sqz
