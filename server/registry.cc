#include "server/registry.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "server/registry_internal.h"

namespace sqz {

using registry_internal::LoadState;
using registry_internal::NotFound;
using registry_internal::RunAll;
using registry_internal::Visible;
using registry_internal::WallMs;

namespace {

ContextState StageState(IngestStage s) {
  switch (s) {
    case IngestStage::kPrefilling: return ContextState::kPrefilling;
    case IngestStage::kClustering: return ContextState::kClustering;
    case IngestStage::kCalibrating: return ContextState::kCalibrating;
  }
  return ContextState::kPrefilling;
}

}  // namespace

Registry::Registry(ContextStore* store, Engine* engine, RegistryOptions options,
                   RegistryMetrics metrics)
    : store_(store), engine_(engine), options_(options), metrics_(metrics) {
  persist_ = std::make_unique<Workers>("registry-persist", 1);
  loaders_ = std::make_unique<Workers>("registry-load", std::max(1, options_.loader_threads));
  timer_ = std::thread([this] { TimerLoop(); });
  pthread_setname_np(timer_.native_handle(), "registry-timer");
}

Registry::~Registry() {
  StopAcquiring(UnavailableError("the server is shutting down"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    timer_stopping_ = true;
  }
  timer_cv_.notify_all();
  timer_.join();
  loaders_->Stop();
  persist_->Stop();
}

void Registry::Post(std::function<void()> task) { persist_->Post(std::move(task)); }

ContextView Registry::ViewLocked(const Entry& e) const {
  return ContextView{e.record, e.resident != nullptr};
}

void Registry::NotifyLocked(const std::shared_ptr<Entry>& e, bool deleted) {
  const ContextView view = ViewLocked(*e);
  for (auto it = e->watchers.begin(); it != e->watchers.end();) {
    if (!it->second(view, deleted) || deleted) {
      it = e->watchers.erase(it);
    } else {
      ++it;
    }
  }
}

Status Registry::Start() {
  SQZ_ASSIGN_OR_RETURN(ContextStore::Recovery rec, store_->Recover());
  for (const auto& id : rec.finished_deletes) spdlog::info("finished the deletion of context {}", id);
  std::string token;
  std::vector<std::shared_ptr<Entry>> resume, pinned, stale;
  {
    std::lock_guard<std::mutex> lock(mu_);
    do {
      SQZ_ASSIGN_OR_RETURN(ContextStore::Page page,
                           store_->List(1000, token, std::nullopt, std::nullopt));
      for (auto& r : page.records) {
        auto e = std::make_shared<Entry>();
        e->record = std::move(r);
        const bool unfinished = e->record.state != ContextState::kReady &&
                                e->record.state != ContextState::kFailed;
        const bool other_model = e->record.model_fingerprint != options_.model.Hash();
        if (unfinished) {
          resume.push_back(e);
        } else if (other_model) {
          // Pinned ones first: they are expected to be resident.
          stale.insert(e->record.pinned ? stale.begin() : stale.end(), e);
        } else if (e->record.state == ContextState::kReady && e->record.pinned) {
          pinned.push_back(e);
        }
        entries_[e->record.id] = e;
      }
      token = page.next_page_token;
    } while (!token.empty());
  }
  for (auto& e : resume) {
    auto tokens = store_->LoadTokens(e->record.id);
    if (!tokens.ok()) {
      Fail(e, "cannot resume ingestion: " + tokens.status().message());
      continue;
    }
    spdlog::info("resuming the ingestion of context {} ({} tokens)", e->record.id, tokens->size());
    SubmitIngestion(e, std::move(tokens).value());
  }
  // Contexts built (or failed) with another model: their KV means nothing to this one, so they are
  // rebuilt from their stored tokens now, in the background, rather than on first use: Get and
  // List show them QUEUED (then PREFILLING ...) instead of a READY that could not be served, and
  // they are READY again without a request having to fail first.
  for (auto& e : stale) {
    std::unique_lock<std::mutex> lock(mu_);
    ReingestForModelLocked(e, lock);
  }
  for (auto& e : pinned) {
    AcquireOptions now;
    now.wait_for_room = false;  // nothing is in use yet: waiting could not make room
    auto lease = Acquire(e->record.id, "", now);
    if (!lease.ok()) spdlog::warn("pinned context {}: {}", e->record.id, lease.status().ToString());
  }
  spdlog::info("registry: {} contexts, {} resumed, {} re-ingested for this model, {} pinned loaded",
               entries_.size(), resume.size(), stale.size(), pinned.size());
  return OkStatus();
}

std::string Registry::ReingestForModelLocked(const std::shared_ptr<Entry>& e,
                                             std::unique_lock<std::mutex>& lock) {
  const ContextRecord& r = e->record;
  const bool failed = r.state == ContextState::kFailed;
  const std::string change = DescribeIdentityChange(r.model, options_.model);
  const std::string what = failed ? "failed with another model (" + change + "; " + r.error + ")"
                                  : "was built for another model (" + change + ")";
  const std::string id = r.id;
  e->record.state = ContextState::kQueued;
  e->record.progress = 0.0;
  e->record.update_time_ms = WallMs();
  e->record.error.clear();
  e->record.model = options_.model;
  e->record.model_fingerprint = options_.model.Hash();
  const ContextRecord queued = e->record;
  NotifyLocked(e, false);
  lock.unlock();
  if (metrics_.reingestions) metrics_.reingestions->Inc();
  spdlog::info("context {} {}; re-ingesting it", id, what);
  auto tokens = store_->LoadTokens(id);
  if (!tokens.ok()) {
    Fail(e, "cannot re-ingest for the current model: " + tokens.status().message());
  } else {
    (void)store_->UpdateRecord(queued, /*sync=*/true);
    SubmitIngestion(e, std::move(tokens).value());
  }
  return what;
}

void Registry::SubmitIngestion(const std::shared_ptr<Entry>& e, std::vector<int32_t> tokens) {
  IngestRequest req;
  {
    std::lock_guard<std::mutex> lock(mu_);
    e->abandon = std::make_shared<std::atomic<bool>>(false);
    e->ingest_start = std::chrono::steady_clock::now();
    // The record names the model of its latest ingestion, finished or not: a FAILED record then
    // says which model it failed with, and Acquire retries it when the serving model changes.
    e->record.model = options_.model;
    e->record.model_fingerprint = options_.model.Hash();
    req.context_id = e->record.id;
    req.options = e->record.options;
    req.abandoned = e->abandon;
  }
  req.tokens = std::move(tokens);
  std::weak_ptr<Entry> weak = e;
  req.on_progress = [this, weak](IngestStage stage, double fraction) {
    if (auto e = weak.lock()) OnProgress(e, stage, fraction);
  };
  req.on_done = [this, weak](StatusOr<ContextSnapshot> snap) {
    if (auto e = weak.lock()) OnIngested(e, std::move(snap));
  };
  const Status s = engine_->SubmitIngest(std::move(req));
  if (!s.ok()) Fail(e, "ingestion could not start: " + s.message());
}

void Registry::OnProgress(const std::shared_ptr<Entry>& e, IngestStage stage, double fraction) {
  std::lock_guard<std::mutex> lock(mu_);
  if (e->deleting) return;
  const ContextState state = StageState(stage);
  const bool changed = e->record.state != state;
  // Watchers hear of every state change and of progress in steps of at least 2%.
  if (!changed && fraction < 1.0 && fraction - e->record.progress < 0.02) return;
  e->record.state = state;
  e->record.progress = fraction;
  if (changed) {
    e->record.update_time_ms = WallMs();
    // State changes are persisted (not synced: a crash re-ingests from the tokens anyway).
    ContextRecord copy = e->record;
    Post([this, copy] { (void)store_->UpdateRecord(copy, /*sync=*/false); });
  }
  NotifyLocked(e, false);
}

void Registry::OnIngested(const std::shared_ptr<Entry>& e, StatusOr<ContextSnapshot> snapshot) {
  if (!snapshot.ok()) {
    // Deleted meanwhile, or the server is stopping: the stored state stays as it is (a restart
    // resumes the ingestion from the tokens).
    const StatusCode code = snapshot.status().code();
    if (code == StatusCode::kCancelled || code == StatusCode::kUnavailable) return;
    Fail(e, "ingestion failed: " + snapshot.status().message());
    return;
  }
  auto snap = std::make_shared<ContextSnapshot>(std::move(snapshot).value());
  Post([this, e, snap] { Persist(e, std::move(*snap)); });
}

void Registry::Persist(const std::shared_ptr<Entry>& e, ContextSnapshot snapshot) {
  ContextRecord record;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (e->deleting) return;
    e->record.state = ContextState::kPersisting;
    e->record.progress = 0.0;
    e->record.update_time_ms = WallMs();
    NotifyLocked(e, false);
    record = e->record;
  }
  record.model = options_.model;
  record.model_fingerprint = options_.model.Hash();
  // Serve from now on exactly what a later load returns (bf16 storage rounds the K/V).
  store_->RoundForStorage(&snapshot);
  Status s = store_->UpdateRecord(record, /*sync=*/false);
  if (s.ok()) s = store_->PutSnapshot(snapshot, &record);
  if (s.ok()) s = store_->CommitReady(record);
  if (!s.ok()) {
    Fail(e, "persisting failed: " + s.message());
    return;
  }
  record.state = ContextState::kReady;
  record.progress = 1.0;
  record.update_time_ms = WallMs();
  record.error.clear();
  auto shared = std::make_shared<const ContextSnapshot>(std::move(snapshot));
  std::lock_guard<std::mutex> lock(mu_);
  if (metrics_.ingest_seconds) {
    metrics_.ingest_seconds->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - e->ingest_start).count());
  }
  e->record = record;
  e->abandon.reset();
  const int64_t bytes = SnapshotBytes(*shared);
  e->known_bytes = bytes;
  if (!e->deleting && MakeRoomLocked(bytes, e.get())) SetResidentLocked(e, shared);
  NotifyLocked(e, false);
  spdlog::info("context {} READY: {} tokens, {:.1f} MiB stored", record.id, record.token_count,
               record.stored_bytes / 1048576.0);
}

void Registry::Fail(const std::shared_ptr<Entry>& e, const std::string& why) {
  ContextRecord copy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (e->deleting) return;
    e->record.state = ContextState::kFailed;
    e->record.update_time_ms = WallMs();
    e->record.error = why;
    e->abandon.reset();
    copy = e->record;
    NotifyLocked(e, false);
  }
  spdlog::warn("context {} FAILED: {}", copy.id, why);
  Post([this, copy] { (void)store_->UpdateRecord(copy, /*sync=*/true); });
}

StatusOr<ContextView> Registry::Create(CreateContextArgs args) {
  if (args.tokens.empty()) return InvalidArgumentError("the context is empty (0 tokens)");
  if (options_.max_context_tokens > 0 &&
      static_cast<int64_t>(args.tokens.size()) > options_.max_context_tokens) {
    return InvalidArgumentError("the context has " + std::to_string(args.tokens.size()) +
                                " tokens; at most " + std::to_string(options_.max_context_tokens) +
                                " are allowed (server.limits.max_context_tokens, model length)");
  }
  const std::string digest = TokenDigest(args.tokens);
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(args.id);
    if (it != entries_.end()) {
      const ContextRecord& r = it->second->record;
      if (!it->second->deleting && r.content_digest == digest && r.owner == args.owner &&
          r.options == args.options) {
        return ViewLocked(*it->second);  // the same registration again
      }
      if (r.owner != args.owner) {
        // Ids are one namespace for all API keys (as the storage key): say only that the id is
        // taken, nothing of the context, and not "delete it", which this key cannot.
        return AlreadyExistsError("context id " + args.id +
                                  " is already in use (ids are shared by all API keys); choose "
                                  "another id");
      }
      return AlreadyExistsError("context " + args.id +
                                " already exists with other content or options; delete it first "
                                "or choose another id");
    }
    e = std::make_shared<Entry>();
    ContextRecord& r = e->record;
    r.id = args.id;
    r.state = ContextState::kQueued;
    r.model = options_.model;
    r.model_fingerprint = options_.model.Hash();
    r.token_count = static_cast<int64_t>(args.tokens.size());
    r.content_digest = digest;
    r.options = args.options;
    r.owner = args.owner;
    r.labels = args.labels;
    r.pinned = args.pin;
    // Durable before acknowledged.
    SQZ_RETURN_IF_ERROR(store_->CreateRecord(r, args.tokens));
    auto stored = store_->GetRecord(r.id);
    if (stored.ok()) r = *stored;  // timestamps as stored
    entries_[r.id] = e;
  }
  SubmitIngestion(e, std::move(args.tokens));
  std::lock_guard<std::mutex> lock(mu_);
  return ViewLocked(*e);
}

StatusOr<ContextView> Registry::Get(const std::string& id, const std::string& owner) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second->deleting || !Visible(it->second->record, owner)) {
    return NotFound(id);
  }
  return ViewLocked(*it->second);
}

StatusOr<Registry::Page> Registry::List(int64_t page_size, const std::string& page_token,
                                        std::optional<ContextState> state,
                                        const std::string& owner) const {
  Page page;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = entries_.upper_bound(page_token); it != entries_.end(); ++it) {
    const Entry& e = *it->second;
    if (e.deleting || !Visible(e.record, owner)) continue;
    if (state && e.record.state != *state) continue;
    if (static_cast<int64_t>(page.contexts.size()) == page_size) {
      page.next_page_token = page.contexts.back().record.id;
      break;
    }
    page.contexts.push_back(ViewLocked(e));
  }
  return page;
}

void Registry::Delete(const std::string& id, const std::string& owner,
                      std::function<void(Status)> done) {
  std::vector<std::function<void()>> later;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second->deleting || !Visible(it->second->record, owner)) {
      done(NotFound(id));
      return;
    }
    std::shared_ptr<Entry> e = it->second;
    e->deleting = true;  // no new leases; progress and persistence stop
    if (e->abandon) e->abandon->store(true);
    e->delete_done = std::move(done);
    StartDeleteIfIdleLocked(e, &later);
  }
  RunAll(later);
}

void Registry::StartDeleteIfIdleLocked(const std::shared_ptr<Entry>& e,
                                       std::vector<std::function<void()>>* later) {
  if (!e->deleting) return;
  if (later && e->load == LoadState::kWaitingForRoom) {
    // Nothing was read for them yet: they end now (a load in progress completes its waiters).
    const std::vector<int64_t> waiting = e->tickets;
    for (int64_t t : waiting) {
      later->push_back(TakeTicketLocked(
          t, NotFoundError("context " + e->record.id +
                           " was deleted while this request waited for it to be loaded")));
    }
  }
  if (!e->delete_done || e->in_flight > 0 || e->load == LoadState::kLoading) return;
  // The registry thread never waits for requests in flight: the deletion is posted when the last
  // lease goes, so persistence and other deletions go on meanwhile.
  Post([this, e, done = std::exchange(e->delete_done, nullptr)] {
    const std::string id = e->record.id;  // never changes
    const Status s = store_->Delete(id);
    std::lock_guard<std::mutex> lock(mu_);
    if (e->resident) {
      resident_bytes_ -= e->resident_bytes;
      lru_.remove(id);
      e->resident.reset();
      e->resident_bytes = 0;
    }
    PublishResidencyLocked();
    if (s.ok() || s.code() == StatusCode::kNotFound) {
      entries_.erase(id);
      NotifyLocked(e, /*deleted=*/true);
      done(OkStatus());
    } else {
      e->deleting = false;
      done(s.WithContext("deleting context " + id));
    }
    AdmitWaitingLocked();  // the bytes it held may make room
  });
}

StatusOr<int64_t> Registry::Watch(const std::string& id, const std::string& owner,
                                  Watcher on_update) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second->deleting || !Visible(it->second->record, owner)) {
    return NotFound(id);
  }
  const int64_t handle = next_watch_++;
  if (on_update(ViewLocked(*it->second), false)) it->second->watchers[handle] = std::move(on_update);
  return handle;
}

void Registry::Unwatch(const std::string& id, int64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it != entries_.end()) it->second->watchers.erase(handle);
}

}  // namespace sqz
