// Registry: the lifecycle of registered contexts, between the gRPC services, the engine and the
// RocksDB store. It owns the in-memory view of every context (its record, whether it is resident,
// its requests in flight, its watchers) and keeps resident snapshots within a memory budget.
//
// Lifecycle: Create persists the record and tokens (synced) before it returns, then hands the
// tokens to the engine; the engine reports PREFILLING / CLUSTERING / CALIBRATING progress and the
// built snapshot; the registry's thread ("registry-persist") writes the blobs and commits READY,
// then keeps the snapshot resident. On start, contexts caught mid-ingestion are re-ingested from
// their tokens, and so are contexts built for another model (fingerprint) or FAILED with another
// model (a record names the model of its latest ingestion): they show QUEUED, not READY, until
// rebuilt for the serving model.
//
// Residency: READY snapshots stay in memory while they fit resident_budget_bytes; least recently
// used, unpinned, idle contexts are evicted and loaded again from the store on use. A blob that
// fails verification never reaches a query: the context is rebuilt from its tokens.
//
// Acquiring a context for a request (AcquireAsync) never blocks the caller: a resident context is
// leased at once; otherwise the caller's callback runs later, when a loader thread has read the
// snapshot from the store. Requests for a context being loaded share its load. Before a load
// starts, its bytes are reserved in the budget (the size seen when it was last resident, else the
// record's resident_bytes, else -- records from before it -- its stored_bytes); a load that does
// not fit even after evicting every idle
// context waits in a FIFO queue until released leases make room, for at most max_load_wait and
// the request's deadline. The head of the queue is served first (no overtaking by smaller loads).
// A context that cannot fit even in an empty budget (or beside the pinned contexts) is refused at
// once. Dropping a waiting request (cancel, deadline, wait limit, deletion) changes nothing stored.
//
// Ownership and threads: borrows the store, the engine and the metrics (they outlive it). Public
// methods are thread-safe; per-context operations are serialised by mu_. Threads: one
// "registry-persist" (persistence and deletions), loader_threads "registry-load" (snapshot loads),
// one "registry-timer" (ends acquires whose deadline or wait limit passed). Delete runs on the
// registry thread once the context's requests in flight are done and completes through a
// callback, so neither a gRPC handler nor the registry thread blocks on it. Acquire callbacks
// never run with mu_ held (Delete's `done` does). Internals: registry_internal.h; the lifecycle is
// in registry.cc, residency and acquires in registry_residency.cc.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "engine/options.h"
#include "engine/runtime/engine.h"
#include "server/metrics.h"
#include "storage/context_store.h"
#include "storage/fingerprint.h"

namespace sqz {

struct RegistryOptions {
  int64_t resident_budget_bytes = int64_t{2} << 30;
  int64_t max_context_tokens = 0;  // > 0
  // The serving model; contexts stored with another identity are stale and re-ingested on use.
  ModelIdentity model;
  // Threads that load snapshots from the store (server.limits.context_loader_threads, >= 1).
  // More overlap more loads of different contexts; each load holds its reservation until done.
  int loader_threads = 2;
  // How long an acquire may wait for room in the budget before RESOURCE_EXHAUSTED
  // (server.limits.context_load_wait_s); zero refuses at once when the budget is held by contexts
  // in use. The request's own deadline also bounds the wait.
  std::chrono::milliseconds max_load_wait{30000};
};

struct RegistryMetrics {
  metrics::Counter* residency_hits = nullptr;
  metrics::Counter* residency_loads = nullptr;
  metrics::Counter* evictions = nullptr;
  metrics::Counter* reingestions = nullptr;
  metrics::Gauge* resident_bytes = nullptr;
  metrics::Gauge* resident_contexts = nullptr;
  metrics::Histogram* ingest_seconds = nullptr;
  // Acquires waiting for their context to be loaded (room in the budget, then the load itself).
  metrics::Gauge* load_waiting = nullptr;
  // Seconds from an acquire that missed to its outcome (lease or error), per acquire.
  metrics::Histogram* load_wait_seconds = nullptr;
};

struct CreateContextArgs {
  std::string id;
  std::vector<int32_t> tokens;
  SqueezeOptions options;
  std::map<std::string, std::string> labels;
  bool pin = false;
  std::string owner;
};

// A context held for one request: the snapshot stays alive and the context cannot be deleted
// while a lease exists.
struct ContextLease {
  std::shared_ptr<const ContextSnapshot> snapshot;
  std::shared_ptr<void> hold;  // releases the in-flight count when destroyed
};

// How an acquire may wait for its context to be loaded.
struct AcquireOptions {
  // The request's deadline: a pending acquire ends with DEADLINE_EXCEEDED when it passes.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // false: a load that does not fit the budget now is refused at once with RESOURCE_EXHAUSTED
  // (pinned loads at start) instead of waiting for room.
  bool wait_for_room = true;
};

// The public view of a context.
struct ContextView {
  ContextRecord record;
  bool resident = false;
};

class Registry {
 public:
  Registry(ContextStore* store, Engine* engine, RegistryOptions options, RegistryMetrics metrics);
  ~Registry();  // stops the registry thread (after the engine has stopped reporting)
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Loads every record, finishes interrupted deletions, re-submits unfinished ingestions and those
  // of contexts built or failed with another model (pinned first), and loads pinned READY
  // contexts. Call once, before serving.
  Status Start();

  // Idempotent for the same id, owner and tokens (returns the existing context); ALREADY_EXISTS
  // for the same id with other content, or owned by another key (ids are global: the message then
  // says only that the id is taken); INVALID_ARGUMENT for an empty or too long context.
  StatusOr<ContextView> Create(CreateContextArgs args);
  // NOT_FOUND when absent or owned by another key (`owner` "" with auth off sees everything).
  StatusOr<ContextView> Get(const std::string& id, const std::string& owner) const;
  struct Page {
    std::vector<ContextView> contexts;
    std::string next_page_token;
  };
  StatusOr<Page> List(int64_t page_size, const std::string& page_token,
                      std::optional<ContextState> state, const std::string& owner) const;
  // Stops new requests; once those in flight are done (their last lease released), removes
  // everything on the registry thread, which never waits for them. `done` runs on the registry
  // thread (or inline for an immediate error).
  void Delete(const std::string& id, const std::string& owner, std::function<void(Status)> done);

  // For Generate. `done` gets the lease, or: NOT_FOUND as for Get (also when the context is
  // deleted while the acquire waits); FAILED_PRECONDITION unless READY (naming the state and
  // progress, or the failure; a READY or FAILED context whose record names another model -- Start()
  // re-ingests those -- starts re-ingesting and says what changed; a snapshot that fails
  // verification starts its rebuild from the tokens); RESOURCE_EXHAUSTED at once when the context
  // is larger than the whole budget, or than what the pinned contexts leave of it, naming
  // engine.memory.resident_contexts_mb; RESOURCE_EXHAUSTED when no room was made within
  // max_load_wait (or at once with wait_for_room false or a zero wait); DEADLINE_EXCEEDED when
  // options.deadline passes first; the status given to CancelAcquire or StopAcquiring.
  // `done` runs exactly once: inline (resident context, or an immediate error), on a
  // "registry-load" thread, on the "registry-timer" thread, or inside CancelAcquire, Delete or
  // StopAcquiring. It must not block for long. Returns a ticket for CancelAcquire (never reused;
  // it may already be finished).
  using AcquireDone = std::function<void(StatusOr<ContextLease> lease)>;
  int64_t AcquireAsync(const std::string& id, const std::string& owner, AcquireOptions options,
                       AcquireDone done);
  // Ends a pending acquire now, on this thread, with `why` (e.g. CANCELLED); the shared load, if
  // one runs, goes on (its context becomes resident). No-op when the ticket has finished.
  void CancelAcquire(int64_t ticket, const Status& why);
  // Ends every pending acquire with `why`, refuses later ones with it, and waits for loads in
  // progress to finish. For shutdown, before the engine stops; idempotent.
  void StopAcquiring(const Status& why);
  // Blocks until AcquireAsync's outcome: for Start (pinned contexts) and tests, never for a gRPC
  // callback thread.
  StatusOr<ContextLease> Acquire(const std::string& id, const std::string& owner,
                                 AcquireOptions options = {});

  // Calls `on_update` with the current view now and after every change, until it returns false or
  // the context is gone. Returns a handle for Unwatch, or NOT_FOUND.
  using Watcher = std::function<bool(const ContextView& view, bool deleted)>;
  StatusOr<int64_t> Watch(const std::string& id, const std::string& owner, Watcher on_update);
  void Unwatch(const std::string& id, int64_t handle);

  int64_t resident_bytes() const;
  // Acquires pending now (waiting for room or for their load).
  int64_t acquires_waiting() const;

 private:
  struct Entry;
  struct Ticket;
  class Workers;
  void SubmitIngestion(const std::shared_ptr<Entry>& e, std::vector<int32_t> tokens);
  // Re-ingests a READY or FAILED context whose record names another model: QUEUED now (watchers
  // told), tokens reloaded and submitted. Called with mu_ held through `lock`; returns with it
  // released. Returns what happened ("was built for another model (...)"), for messages.
  std::string ReingestForModelLocked(const std::shared_ptr<Entry>& e,
                                     std::unique_lock<std::mutex>& lock);
  void OnProgress(const std::shared_ptr<Entry>& e, IngestStage stage, double fraction);
  void OnIngested(const std::shared_ptr<Entry>& e, StatusOr<ContextSnapshot> snapshot);
  void Persist(const std::shared_ptr<Entry>& e, ContextSnapshot snapshot);
  void Fail(const std::shared_ptr<Entry>& e, const std::string& why);
  // Makes room for `bytes` (beside the resident and reserved bytes) by evicting LRU idle unpinned
  // contexts other than `keep`; false, evicting nothing, when even evicting all of them would not.
  bool MakeRoomLocked(int64_t bytes, const Entry* keep);
  // Bytes to reserve for loading `e`: its size when last resident, else the record's
  // resident_bytes, else its stored_bytes.
  int64_t LoadBytesLocked(const Entry& e) const;
  int64_t PinnedBytesLocked() const;
  // A lease on the resident `e`: counts a request in flight until released.
  ContextLease LeaseLocked(const std::shared_ptr<Entry>& e);
  // Reserves the load's bytes and posts it to the loaders.
  void StartLoadLocked(const std::shared_ptr<Entry>& e, int64_t bytes);
  // Runs on a loader thread: reads and verifies the snapshot, then completes every waiter.
  void RunLoad(const std::shared_ptr<Entry>& e, const ContextRecord& record);
  // Starts the loads at the head of the room queue that fit now (FIFO).
  void AdmitWaitingLocked();
  int64_t AddTicketLocked(const std::shared_ptr<Entry>& e, const AcquireOptions& options,
                          AcquireDone done);
  // Removes a pending ticket (and its entry from the room queue when it was the last waiter);
  // returns its callback, to be run with `result` once mu_ is released.
  std::function<void()> TakeTicketLocked(int64_t ticket, StatusOr<ContextLease> result);
  void PublishWaitingLocked();
  void TimerLoop();
  void SetResidentLocked(const std::shared_ptr<Entry>& e, std::shared_ptr<const ContextSnapshot> s);
  // Sets the resident bytes and resident contexts gauges after any change of lru_.
  void PublishResidencyLocked();
  // Posts the pending deletion of `e` once it has no requests in flight and no load running;
  // acquires waiting for room for it end with NOT_FOUND through `later` (run after unlocking).
  void StartDeleteIfIdleLocked(const std::shared_ptr<Entry>& e,
                               std::vector<std::function<void()>>* later = nullptr);
  void NotifyLocked(const std::shared_ptr<Entry>& e, bool deleted);
  ContextView ViewLocked(const Entry& e) const;
  void Post(std::function<void()> task);  // to the registry-persist thread

  ContextStore* const store_;
  Engine* const engine_;
  const RegistryOptions options_;
  const RegistryMetrics metrics_;

  mutable std::mutex mu_;
  std::condition_variable loads_cv_;  // loads_running_ reaching zero
  std::condition_variable timer_cv_;  // a new ticket, or stopping
  std::map<std::string, std::shared_ptr<Entry>> entries_;  // GUARDED_BY(mu_)
  std::list<std::string> lru_;       // GUARDED_BY(mu_): resident ids, most recent first
  int64_t resident_bytes_ = 0;       // GUARDED_BY(mu_)
  int64_t reserved_bytes_ = 0;       // GUARDED_BY(mu_): loads in progress
  int64_t loads_running_ = 0;        // GUARDED_BY(mu_)
  int64_t next_watch_ = 1;           // GUARDED_BY(mu_)
  int64_t next_ticket_ = 1;          // GUARDED_BY(mu_)
  std::map<int64_t, Ticket> tickets_;  // GUARDED_BY(mu_): pending acquires
  std::deque<std::shared_ptr<Entry>> room_queue_;  // GUARDED_BY(mu_): loads waiting for room
  std::optional<Status> stop_acquiring_;           // GUARDED_BY(mu_)
  bool timer_stopping_ = false;                    // GUARDED_BY(mu_)

  std::unique_ptr<Workers> persist_;  // "registry-persist": one thread
  std::unique_ptr<Workers> loaders_;  // "registry-load": loader_threads threads
  std::thread timer_;                 // "registry-timer"
};

}  // namespace sqz
