#include "engine/runtime/request_stream.h"

#include <chrono>

namespace sqz {

void RequestStream::Push(GenerateEvent event) {
  std::function<void()> waker;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SQZ_CHECK(!finished_) << "event pushed after the final event";
    finished_ = event.final;
    events_.push_back(std::move(event));
    waker = waker_;
    if (waker) ++waker_calls_;
  }
  cv_.notify_all();
  if (waker) {
    waker();
    std::lock_guard<std::mutex> lock(mu_);
    if (--waker_calls_ == 0) waker_idle_.notify_all();
  }
}

bool RequestStream::Pop(GenerateEvent* out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.empty()) return false;
  *out = std::move(events_.front());
  events_.pop_front();
  // Merge following chunks so that a slow consumer sends fewer, larger messages.
  while (!out->final && !events_.empty() && !events_.front().final) {
    GenerateEvent& next = events_.front();
    out->text += next.text;
    out->token_ids.insert(out->token_ids.end(), next.token_ids.begin(), next.token_ids.end());
    out->logprobs.insert(out->logprobs.end(), next.logprobs.begin(), next.logprobs.end());
    out->top_logprobs.insert(out->top_logprobs.end(), next.top_logprobs.begin(),
                             next.top_logprobs.end());
    events_.pop_front();
  }
  return true;
}

bool RequestStream::WaitPop(GenerateEvent* out, int64_t timeout_ms) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [&] { return !events_.empty(); })) {
      return false;
    }
  }
  return Pop(out);
}

void RequestStream::SetWaker(std::function<void()> waker) {
  std::function<void()> call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    waker_ = std::move(waker);
    // Events that arrived before the waker was set are announced now.
    if (waker_ && !events_.empty()) {
      call = waker_;
      ++waker_calls_;
    }
  }
  if (call) {
    call();
    std::lock_guard<std::mutex> lock(mu_);
    if (--waker_calls_ == 0) waker_idle_.notify_all();
  }
}

void RequestStream::ClearWaker() {
  std::unique_lock<std::mutex> lock(mu_);
  waker_ = nullptr;
  waker_idle_.wait(lock, [&] { return waker_calls_ == 0; });
}

void RequestStream::Cancel(Status why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_.load()) return;
  cancel_status_ = std::move(why);
  cancelled_.store(true, std::memory_order_release);
}

Status RequestStream::cancel_status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancel_status_;
}

}  // namespace sqz
