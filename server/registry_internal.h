// Internals of the Registry shared by registry.cc (context lifecycle) and registry_residency.cc
// (residency, acquires and loads): the per-context entry, pending acquires, the worker threads.
// Not part of the server's API; include only from those two files.
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "server/registry.h"

namespace sqz {
namespace registry_internal {

using SteadyClock = std::chrono::steady_clock;

// Where a context stands with respect to being loaded into memory.
enum class LoadState {
  kIdle,            // resident, or nobody asked for it
  kWaitingForRoom,  // in room_queue_: acquires wait until leases released make room
  kLoading,         // its bytes reserved; a loader thread reads it from the store
};

// Wall-clock milliseconds, for the update time that Get and List show after each state change
// (the store stamps its own copy when it writes).
inline int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline bool Visible(const ContextRecord& r, const std::string& owner) {
  return owner.empty() || r.owner == owner;
}

inline Status NotFound(const std::string& id) {
  return NotFoundError("context " + id + " not found");
}

inline std::string MiB(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MiB", static_cast<double>(bytes) / 1048576.0);
  return buf;
}

inline double SecondsSince(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

inline void RunAll(std::vector<std::function<void()>>& callbacks) {
  for (auto& c : callbacks) c();
  callbacks.clear();
}

}  // namespace registry_internal

struct Registry::Entry {
  ContextRecord record;
  std::shared_ptr<const ContextSnapshot> resident;  // null when not in memory
  int64_t resident_bytes = 0;
  int64_t known_bytes = 0;     // resident size when last resident in this process; 0 unknown
  int64_t reserved_bytes = 0;  // kLoading: bytes reserved in the budget
  int64_t in_flight = 0;
  registry_internal::LoadState load = registry_internal::LoadState::kIdle;
  std::vector<int64_t> tickets;  // acquires waiting for this context's load, oldest first
  bool deleting = false;
  std::function<void(Status)> delete_done;     // a Delete waiting for in_flight == 0, no load
  std::shared_ptr<std::atomic<bool>> abandon;  // set to stop an ingestion in progress
  std::chrono::steady_clock::time_point ingest_start;
  std::map<int64_t, Watcher> watchers;
};

struct Registry::Ticket {
  std::shared_ptr<Entry> entry;
  AcquireDone done;
  registry_internal::SteadyClock::time_point start;
  std::optional<registry_internal::SteadyClock::time_point> deadline;  // the request's
};

// A few named threads running posted tasks in order of posting. Stop() runs what is queued, then
// joins; tasks posted meanwhile (by running tasks) still run.
class Registry::Workers {
 public:
  Workers(const char* name, int threads) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] { Loop(); });
      pthread_setname_np(threads_.back().native_handle(), name);
    }
  }
  ~Workers() { Stop(); }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stopping, all done
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                    // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace sqz
