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
// Ownership and threads: borrows the store, the engine and the metrics (they outlive it). Public
// methods are thread-safe; per-context operations are serialised by mu_. Delete runs on the
// registry thread once the context's requests in flight are done and completes through a
// callback, so neither a gRPC handler nor the registry thread blocks on it.
#pragma once

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
};

struct RegistryMetrics {
  metrics::Counter* residency_hits = nullptr;
  metrics::Counter* residency_loads = nullptr;
  metrics::Counter* evictions = nullptr;
  metrics::Counter* reingestions = nullptr;
  metrics::Gauge* resident_bytes = nullptr;
  metrics::Gauge* resident_contexts = nullptr;
  metrics::Histogram* ingest_seconds = nullptr;
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

  // For Generate: FAILED_PRECONDITION unless READY (naming the state and progress, or the
  // failure), NOT_FOUND as for Get, RESOURCE_EXHAUSTED when it cannot be made resident within the
  // budget. (A READY or FAILED context whose record names another model -- Start() re-ingests
  // those -- starts re-ingesting and answers FAILED_PRECONDITION saying what changed.)
  StatusOr<ContextLease> Acquire(const std::string& id, const std::string& owner);

  // Calls `on_update` with the current view now and after every change, until it returns false or
  // the context is gone. Returns a handle for Unwatch, or NOT_FOUND.
  using Watcher = std::function<bool(const ContextView& view, bool deleted)>;
  StatusOr<int64_t> Watch(const std::string& id, const std::string& owner, Watcher on_update);
  void Unwatch(const std::string& id, int64_t handle);

  int64_t resident_bytes() const;

 private:
  struct Entry;
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
  // Makes room for `bytes` by evicting LRU idle unpinned contexts; false when impossible.
  bool MakeRoomLocked(int64_t bytes, const Entry* keep);
  void SetResidentLocked(const std::shared_ptr<Entry>& e, std::shared_ptr<const ContextSnapshot> s);
  // Sets the resident bytes and resident contexts gauges after any change of lru_.
  void PublishResidencyLocked();
  // Posts the pending deletion of `e` once it has no requests in flight and no load running.
  void StartDeleteIfIdleLocked(const std::shared_ptr<Entry>& e);
  void NotifyLocked(const std::shared_ptr<Entry>& e, bool deleted);
  ContextView ViewLocked(const Entry& e) const;
  void Post(std::function<void()> task);
  void ThreadLoop();

  ContextStore* const store_;
  Engine* const engine_;
  const RegistryOptions options_;
  const RegistryMetrics metrics_;

  mutable std::mutex mu_;
  std::condition_variable idle_cv_;  // in-flight counts reaching zero, loads finishing
  std::map<std::string, std::shared_ptr<Entry>> entries_;  // GUARDED_BY(mu_)
  std::list<std::string> lru_;       // GUARDED_BY(mu_): resident ids, most recent first
  int64_t resident_bytes_ = 0;       // GUARDED_BY(mu_)
  int64_t next_watch_ = 1;           // GUARDED_BY(mu_)

  std::mutex task_mu_;
  std::condition_variable task_cv_;
  std::deque<std::function<void()>> tasks_;  // GUARDED_BY(task_mu_)
  bool stopping_ = false;                    // GUARDED_BY(task_mu_)
  std::thread thread_;
};

}  // namespace sqz
