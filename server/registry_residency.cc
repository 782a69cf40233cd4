// Registry: residency within the memory budget, acquires, loads from the store and the room
// queue (registry.h, "Acquiring a context"). The context lifecycle is in registry.cc.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <utility>

#include "server/registry.h"
#include "server/registry_internal.h"

namespace sqz {

using registry_internal::LoadState;
using registry_internal::MiB;
using registry_internal::NotFound;
using registry_internal::RunAll;
using registry_internal::SecondsSince;
using registry_internal::SteadyClock;
using registry_internal::Visible;
using registry_internal::WallMs;

bool Registry::MakeRoomLocked(int64_t bytes, const Entry* keep) {
  const int64_t budget = options_.resident_budget_bytes;
  auto evictable = [&](const Entry& v) {
    return &v != keep && v.in_flight == 0 && !v.record.pinned && v.resident;
  };
  int64_t held = resident_bytes_ + reserved_bytes_ + bytes;
  if (held <= budget) return true;
  // Evict nothing unless evicting enough is possible: an idle context may be wanted again soon.
  int64_t freeable = 0;
  for (const auto& id : lru_) {
    auto v = entries_.find(id);
    if (v != entries_.end() && evictable(*v->second)) freeable += v->second->resident_bytes;
  }
  if (held - freeable > budget) return false;
  for (auto it = lru_.rbegin();
       resident_bytes_ + reserved_bytes_ + bytes > budget && it != lru_.rend();) {
    auto victim = entries_.find(*it);
    ++it;
    if (victim == entries_.end()) continue;
    Entry& v = *victim->second;
    if (!evictable(v)) continue;
    resident_bytes_ -= v.resident_bytes;
    v.resident.reset();
    v.resident_bytes = 0;
    lru_.remove(victim->first);
    if (metrics_.evictions) metrics_.evictions->Inc();
    spdlog::info("evicted context {} from memory", victim->first);
    it = lru_.rbegin();  // the list changed: restart from the least recent
  }
  PublishResidencyLocked();
  return resident_bytes_ + reserved_bytes_ + bytes <= budget;
}

int64_t Registry::LoadBytesLocked(const Entry& e) const {
  // The size in memory when known (loaded before, or recorded at persist time); records written
  // before resident_bytes existed fall back to the stored size (an upper bound for fp32 K/V).
  if (e.known_bytes > 0) return e.known_bytes;
  return e.record.resident_bytes > 0 ? e.record.resident_bytes : e.record.stored_bytes;
}

int64_t Registry::PinnedBytesLocked() const {
  int64_t pinned = 0;
  for (const auto& [id, e] : entries_) {
    if (e->record.pinned) pinned += e->resident ? e->resident_bytes : e->reserved_bytes;
  }
  return pinned;
}

void Registry::SetResidentLocked(const std::shared_ptr<Entry>& e,
                                 std::shared_ptr<const ContextSnapshot> s) {
  e->resident_bytes = SnapshotBytes(*s);
  e->resident = std::move(s);
  resident_bytes_ += e->resident_bytes;
  lru_.remove(e->record.id);
  lru_.push_front(e->record.id);
  PublishResidencyLocked();
}

void Registry::PublishResidencyLocked() {
  if (metrics_.resident_bytes) metrics_.resident_bytes->Set(static_cast<double>(resident_bytes_));
  if (metrics_.resident_contexts) metrics_.resident_contexts->Set(static_cast<double>(lru_.size()));
}

ContextLease Registry::LeaseLocked(const std::shared_ptr<Entry>& e) {
  ++e->in_flight;
  lru_.remove(e->record.id);
  lru_.push_front(e->record.id);
  ContextLease lease;
  lease.snapshot = e->resident;
  lease.hold = std::shared_ptr<void>(nullptr, [this, e](void*) {
    std::lock_guard<std::mutex> lock(mu_);
    --e->in_flight;
    StartDeleteIfIdleLocked(e);
    if (e->in_flight == 0) AdmitWaitingLocked();  // now evictable: a waiting load may fit
  });
  return lease;
}

int64_t Registry::AddTicketLocked(const std::shared_ptr<Entry>& e, const AcquireOptions& options,
                                  AcquireDone done) {
  const int64_t id = next_ticket_++;
  Ticket& t = tickets_[id];
  t.entry = e;
  t.done = std::move(done);
  t.start = SteadyClock::now();
  t.deadline = options.deadline;
  e->tickets.push_back(id);
  PublishWaitingLocked();
  timer_cv_.notify_all();
  return id;
}

std::function<void()> Registry::TakeTicketLocked(int64_t ticket, StatusOr<ContextLease> result) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return [] {};
  Ticket t = std::move(it->second);
  tickets_.erase(it);
  auto& waiting = t.entry->tickets;
  waiting.erase(std::remove(waiting.begin(), waiting.end(), ticket), waiting.end());
  if (waiting.empty() && t.entry->load == LoadState::kWaitingForRoom) {
    // Nobody wants this load any more: it leaves the queue, and whoever was behind it may fit.
    t.entry->load = LoadState::kIdle;
    room_queue_.erase(std::remove(room_queue_.begin(), room_queue_.end(), t.entry),
                      room_queue_.end());
    AdmitWaitingLocked();
  }
  if (metrics_.load_wait_seconds) metrics_.load_wait_seconds->Observe(SecondsSince(t.start));
  PublishWaitingLocked();
  return [done = std::move(t.done), r = std::move(result)]() mutable { done(std::move(r)); };
}

void Registry::PublishWaitingLocked() {
  if (metrics_.load_waiting) metrics_.load_waiting->Set(static_cast<double>(tickets_.size()));
}

void Registry::StartLoadLocked(const std::shared_ptr<Entry>& e, int64_t bytes) {
  e->load = LoadState::kLoading;
  e->reserved_bytes = bytes;
  reserved_bytes_ += bytes;
  ++loads_running_;
  loaders_->Post([this, e, record = e->record] { RunLoad(e, record); });
}

void Registry::AdmitWaitingLocked() {
  while (!room_queue_.empty()) {
    const std::shared_ptr<Entry> e = room_queue_.front();
    const int64_t bytes = LoadBytesLocked(*e);
    if (!MakeRoomLocked(bytes, e.get())) return;  // FIFO: nobody overtakes the head
    room_queue_.pop_front();
    StartLoadLocked(e, bytes);
  }
}

void Registry::RunLoad(const std::shared_ptr<Entry>& e, const ContextRecord& record) {
  const std::string& id = record.id;
  StatusOr<ContextSnapshot> snap = store_->LoadSnapshot(record);
  std::vector<std::function<void()>> later;
  bool rebuild = false;
  std::string why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_bytes_ -= e->reserved_bytes;
    e->reserved_bytes = 0;
    e->load = LoadState::kIdle;
    const std::vector<int64_t> waiting = e->tickets;
    if (e->deleting) {
      for (int64_t t : waiting) {
        later.push_back(TakeTicketLocked(
            t, NotFoundError("context " + id + " was deleted while it was being loaded")));
      }
      StartDeleteIfIdleLocked(e);
    } else if (!snap.ok()) {
      // Never serve what failed verification: rebuild from the tokens.
      why = snap.status().ToString();
      rebuild = !stop_acquiring_.has_value();  // at shutdown the engine may be gone
      e->record.state = ContextState::kQueued;
      e->record.update_time_ms = WallMs();
      e->record.error = "stored KV failed verification and is being rebuilt: " + why;
      NotifyLocked(e, false);
      for (int64_t t : waiting) {
        later.push_back(TakeTicketLocked(
            t, FailedPreconditionError("context " + id +
                                       ": stored KV failed verification and is being rebuilt (" +
                                       why + ")")));
      }
    } else {
      auto shared = std::make_shared<const ContextSnapshot>(std::move(snap).value());
      const int64_t bytes = SnapshotBytes(*shared);
      e->known_bytes = bytes;
      if (MakeRoomLocked(bytes, e.get())) {
        SetResidentLocked(e, std::move(shared));
        if (metrics_.residency_loads) metrics_.residency_loads->Inc();
        for (int64_t t : waiting) later.push_back(TakeTicketLocked(t, LeaseLocked(e)));
      } else {
        // Only when the reservation (stored_bytes) underestimated the snapshot and the rest of
        // the budget is in use; the next acquire reserves the true size.
        for (int64_t t : waiting) {
          later.push_back(TakeTicketLocked(
              t, ResourceExhaustedError("context " + id + " needs " + MiB(bytes) +
                                        " of resident memory; the budget "
                                        "(engine.memory.resident_contexts_mb) is " +
                                        MiB(options_.resident_budget_bytes) +
                                        " and the rest is held by contexts in use; retry later")));
        }
      }
    }
    --loads_running_;
    loads_cv_.notify_all();
    AdmitWaitingLocked();
  }
  RunAll(later);
  if (!rebuild) return;
  spdlog::error("context {}: stored KV failed verification ({}); re-ingesting", id, why);
  if (metrics_.reingestions) metrics_.reingestions->Inc();
  auto tokens = store_->LoadTokens(id);
  if (tokens.ok()) {
    SubmitIngestion(e, std::move(tokens).value());
  } else {
    Fail(e, why + "; tokens unreadable: " + tokens.status().message());
  }
}

int64_t Registry::AcquireAsync(const std::string& id, const std::string& owner,
                               AcquireOptions options, AcquireDone done) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t none = next_ticket_++;  // the ticket of an acquire that finished at once
  auto finish = [&](StatusOr<ContextLease> result) {
    lock.unlock();
    done(std::move(result));
    return none;
  };
  if (stop_acquiring_) return finish(*stop_acquiring_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second->deleting || !Visible(it->second->record, owner)) {
    return finish(NotFound(id));
  }
  std::shared_ptr<Entry> e = it->second;
  if (e->load != LoadState::kIdle) return AddTicketLocked(e, options, std::move(done));
  const ContextRecord& r = e->record;
  const bool other_model = r.model_fingerprint != options_.model.Hash();
  if (r.state == ContextState::kFailed && !other_model) {
    return finish(FailedPreconditionError("context " + id + " FAILED: " + r.error));
  }
  if (r.state != ContextState::kReady && r.state != ContextState::kFailed) {
    return finish(FailedPreconditionError(
        "context " + id + " is not ready yet (state " + std::string(ContextStateName(r.state)) +
        ", " + std::to_string(static_cast<int>(r.progress * 100)) + "%)"));
  }
  if (other_model) {
    // Built for another model, or failed with one (e.g. one too short for it; this one may hold
    // it). Start() already re-ingests such contexts; this covers a record that changed since.
    const std::string what = ReingestForModelLocked(e, lock);  // returns unlocked
    lock.lock();
    return finish(FailedPreconditionError("context " + id + " " + what +
                                          " and is being re-ingested; retry when it is READY "
                                          "again"));
  }
  if (e->resident) {
    if (metrics_.residency_hits) metrics_.residency_hits->Inc();
    return finish(LeaseLocked(e));
  }
  const int64_t bytes = LoadBytesLocked(*e);
  const int64_t budget = options_.resident_budget_bytes;
  if (bytes > budget) {
    return finish(ResourceExhaustedError("context " + id + " needs " + MiB(bytes) +
                                         " of resident memory, more than the whole "
                                         "budget of " +
                                         MiB(budget) +
                                         "; raise engine.memory.resident_contexts_mb to serve it"));
  }
  const int64_t pinned = PinnedBytesLocked();
  if (bytes > budget - pinned) {
    return finish(ResourceExhaustedError(
        "context " + id + " needs " + MiB(bytes) + " of resident memory; pinned contexts hold " +
        MiB(pinned) + " of the " + MiB(budget) +
        " budget; raise engine.memory.resident_contexts_mb or delete a pinned context"));
  }
  if (room_queue_.empty() && MakeRoomLocked(bytes, e.get())) {
    const int64_t ticket = AddTicketLocked(e, options, std::move(done));
    StartLoadLocked(e, bytes);
    return ticket;
  }
  if (!options.wait_for_room || options_.max_load_wait.count() <= 0) {
    return finish(ResourceExhaustedError("context " + id + " needs " + MiB(bytes) +
                                         " of resident memory; the budget "
                                         "(engine.memory.resident_contexts_mb) is " +
                                         MiB(budget) +
                                         " and the rest is held by contexts in use; retry later"));
  }
  e->load = LoadState::kWaitingForRoom;
  room_queue_.push_back(e);
  return AddTicketLocked(e, options, std::move(done));
}

void Registry::CancelAcquire(int64_t ticket, const Status& why) {
  std::function<void()> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (tickets_.count(ticket) == 0) return;
    done = TakeTicketLocked(ticket, why);
  }
  done();
}

void Registry::StopAcquiring(const Status& why) {
  std::vector<std::function<void()>> later;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!stop_acquiring_) stop_acquiring_ = why;
    while (!tickets_.empty()) later.push_back(TakeTicketLocked(tickets_.begin()->first, why));
    lock.unlock();
    RunAll(later);
    lock.lock();
    loads_cv_.wait(lock, [&] { return loads_running_ == 0; });
  }
}

StatusOr<ContextLease> Registry::Acquire(const std::string& id, const std::string& owner,
                                         AcquireOptions options) {
  std::promise<StatusOr<ContextLease>> result;
  auto future = result.get_future();
  AcquireAsync(id, owner, options,
               [&result](StatusOr<ContextLease> lease) { result.set_value(std::move(lease)); });
  return future.get();
}

void Registry::TimerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<std::function<void()>> later;
  while (!timer_stopping_) {
    const auto now = SteadyClock::now();
    auto next = SteadyClock::time_point::max();
    std::vector<std::pair<int64_t, Status>> expired;
    for (const auto& [id, t] : tickets_) {
      const auto room_deadline = t.start + options_.max_load_wait;
      const bool waiting_room = t.entry->load == LoadState::kWaitingForRoom;
      const std::string& cid = t.entry->record.id;
      if (t.deadline && now >= *t.deadline) {
        char waited[32];
        std::snprintf(waited, sizeof(waited), "%.2f", SecondsSince(t.start));
        expired.emplace_back(
            id,
            DeadlineExceededError("the request's deadline passed while context " + cid + " was " +
                                  (waiting_room ? "waiting for room in memory" : "being loaded") +
                                  " (waited " + waited + " s)"));
      } else if (waiting_room && now >= room_deadline) {
        char limit[32];
        std::snprintf(limit, sizeof(limit), "%.1f",
                      std::chrono::duration<double>(options_.max_load_wait).count());
        expired.emplace_back(
            id, ResourceExhaustedError("context " + cid + " waited " + limit +
                                       " s (server.limits.context_load_wait_s) for " +
                                       MiB(LoadBytesLocked(*t.entry)) +
                                       " of resident memory; the budget "
                                       "(engine.memory.resident_contexts_mb, " +
                                       MiB(options_.resident_budget_bytes) +
                                       ") stayed held by contexts in use; retry later"));
      } else {
        if (t.deadline) next = std::min(next, *t.deadline);
        if (waiting_room) next = std::min(next, room_deadline);
      }
    }
    for (auto& [id, why] : expired) later.push_back(TakeTicketLocked(id, why));
    if (!later.empty()) {
      lock.unlock();
      RunAll(later);
      lock.lock();
      continue;
    }
    if (next == SteadyClock::time_point::max()) {
      timer_cv_.wait(lock);
    } else {
      timer_cv_.wait_until(lock, next);
    }
  }
}

int64_t Registry::resident_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return resident_bytes_;
}

int64_t Registry::acquires_waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(tickets_.size());
}

}  // namespace sqz
