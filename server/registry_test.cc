// Registry acquires over a real RocksDB store in a temporary directory: shared loads, waiting for
// room in the resident budget, the wait limit and deadlines, cancellation, deletion and shutdown
// while waiting. The contexts are stored READY for the registry's model before it starts, so the
// registry never needs the engine (it gets none: a call into it would crash the test), except in
// the corruption case, which rebuilds a context on a real engine over stories260K.
#include "server/registry.h"

#include <pthread.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "server/metrics.h"
#include "storage/test_util.h"

namespace sqz {
namespace {

using namespace std::chrono_literals;
using testing::MakeSnapshot;
using testing::OpenOrDie;
using testing::TempDir;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

ModelIdentity TestModel() {
  ModelIdentity m;
  m.config_summary = "llama L=2 kv=2 d=8";
  m.tensors_digest = 11;
  m.weights_digest = 13;
  return m;
}

// Stores `snap` as context `id`, READY for TestModel(). Returns the stored record.
ContextRecord StoreContext(ContextStore* store, const std::string& id, const ContextSnapshot& snap,
                           bool pinned = false) {
  const std::vector<int32_t> tokens(static_cast<size_t>(snap.dims.n_tokens), 7);
  ContextRecord r = testing::Record(id, tokens);
  r.owner = "";
  r.model = TestModel();
  r.model_fingerprint = r.model.Hash();
  r.pinned = pinned;
  Status s = store->CreateRecord(r, tokens);
  if (s.ok()) s = store->PutSnapshot(snap, &r);
  if (s.ok()) s = store->CommitReady(r);
  SQZ_CHECK(s.ok()) << s.ToString();
  return store->GetRecord(id).value();
}

// The outcome of one AcquireAsync, with the name of the thread its callback ran on.
struct Outcome {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::optional<StatusOr<ContextLease>> result;
  std::string thread;
  std::chrono::steady_clock::time_point at;

  Registry::AcquireDone Callback() {
    return [this](StatusOr<ContextLease> lease) {
      char name[32] = {};
      pthread_getname_np(pthread_self(), name, sizeof(name));
      std::lock_guard<std::mutex> lock(mu);
      result = std::move(lease);
      thread = name;
      at = std::chrono::steady_clock::now();
      done = true;
      cv.notify_all();
    };
  }
  bool Wait(std::chrono::milliseconds timeout = 10s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return done; });
  }
  bool finished() {
    std::lock_guard<std::mutex> lock(mu);
    return done;
  }
  StatusOr<ContextLease>& get() { return *result; }
  StatusCode code() { return result->status().code(); }
  std::string message() { return result->status().message(); }
};

struct Fixture {
  TempDir dir;
  std::unique_ptr<ContextStore> store = OpenOrDie(dir.path);
  metrics::Registry metrics;
  RegistryMetrics m;
  std::map<std::string, ContextSnapshot> snaps;
  int64_t one = 0;  // stored bytes of one context (all are the same shape)
  std::unique_ptr<Registry> registry;

  // Contexts "a", "b", "c" (seeded random K/V of 129 tokens) stored READY.
  Fixture() {
    m.residency_hits = metrics.AddCounter("hits", "");
    m.residency_loads = metrics.AddCounter("loads", "");
    m.evictions = metrics.AddCounter("evictions", "");
    m.resident_bytes = metrics.AddGauge("resident_bytes", "");
    m.resident_contexts = metrics.AddGauge("resident", "");
    m.load_waiting = metrics.AddGauge("waiting", "");
    m.load_wait_seconds = metrics.AddHistogram("wait_seconds", "", {0.1, 1, 10});
    uint32_t seed = 17;
    for (const char* id : {"a", "b", "c"}) {
      snaps[id] = MakeSnapshot(seed++, 129, 2, 2, 8);
      one = StoreContext(store.get(), id, snaps[id]).stored_bytes;
    }
    REQUIRE(one > SnapshotBytes(snaps["a"]));  // the reservation is an upper bound
  }

  // Starts the registry with a budget of `contexts` x one context's stored bytes.
  void Start(double contexts, std::chrono::milliseconds wait = 30s, int loaders = 2,
             Engine* engine = nullptr) {
    RegistryOptions o;
    o.resident_budget_bytes = static_cast<int64_t>(contexts * static_cast<double>(one));
    o.max_context_tokens = 4096;
    o.model = TestModel();
    o.loader_threads = loaders;
    o.max_load_wait = wait;
    registry = std::make_unique<Registry>(store.get(), engine, o, m);
    REQUIRE(registry->Start().ok());
  }

  ContextLease Lease(const std::string& id) {
    auto lease = registry->Acquire(id, "");
    REQUIRE(lease.ok());
    return *lease;
  }

  // The store still holds `id` READY with its original snapshot.
  void CheckStored(const std::string& id) {
    auto record = store->GetRecord(id);
    REQUIRE(record.ok());
    CHECK(record->state == ContextState::kReady);
    auto snap = store->LoadSnapshot(*record);
    REQUIRE(snap.ok());
    CHECK(*snap == snaps[id]);
  }
};

TEST_CASE("concurrent acquires of a stored context share one load on a loader thread") {
  Fixture f;
  f.Start(3);
  CHECK(f.registry->resident_bytes() == 0);  // nothing pinned: nothing loaded at start
  constexpr int kRequests = 7;
  std::vector<std::unique_ptr<Outcome>> outs;
  for (int i = 0; i < kRequests; ++i) {
    outs.push_back(std::make_unique<Outcome>());
    f.registry->AcquireAsync("b", "", {}, outs.back()->Callback());
  }
  const void* shared = nullptr;
  for (auto& o : outs) {
    REQUIRE(o->Wait());
    REQUIRE(o->get().ok());
    CHECK(*o->get()->snapshot == f.snaps["b"]);
    if (!shared) shared = o->get()->snapshot.get();
    CHECK(o->get()->snapshot.get() == shared);  // one snapshot in memory for all of them
  }
  CHECK(outs[0]->thread == "registry-load");  // never the caller's thread
  CHECK(f.m.residency_loads->value() == 1);
  CHECK(f.m.residency_hits->value() + 1 <= kRequests);
  CHECK(f.registry->resident_bytes() == SnapshotBytes(f.snaps["b"]));
  CHECK(f.registry->acquires_waiting() == 0);
  CHECK(f.m.load_waiting->value() == 0);

  // Resident now: the callback runs inline, before AcquireAsync returns.
  Outcome hit;
  f.registry->AcquireAsync("b", "", {}, hit.Callback());
  CHECK(hit.finished());
  CHECK(hit.get().ok());
  // Unknown and invisible contexts: NOT_FOUND at once.
  Outcome missing;
  f.registry->AcquireAsync("nope", "", {}, missing.Callback());
  REQUIRE(missing.finished());
  CHECK(missing.code() == StatusCode::kNotFound);
  Outcome other_owner;
  f.registry->AcquireAsync("b", "mallory", {}, other_owner.Callback());
  REQUIRE(other_owner.finished());
  CHECK(other_owner.code() == StatusCode::kNotFound);
}

TEST_CASE("a load over the budget waits in FIFO order until released leases make room") {
  Fixture f;
  f.Start(1.5);  // one context fits, two do not
  std::optional<ContextLease> a = f.Lease("a");
  Outcome b, c;
  f.registry->AcquireAsync("b", "", {}, b.Callback());
  f.registry->AcquireAsync("c", "", {}, c.Callback());
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(b.finished());
  CHECK_FALSE(c.finished());
  CHECK(f.registry->acquires_waiting() == 2);
  CHECK(f.m.load_waiting->value() == 2);
  CHECK(f.registry->resident_bytes() == SnapshotBytes(f.snaps["a"]));

  a.reset();  // the request on "a" ends: b (the head) is loaded, c still waits for b's lease
  REQUIRE(b.Wait());
  REQUIRE(b.get().ok());
  CHECK(*b.get()->snapshot == f.snaps["b"]);
  std::this_thread::sleep_for(200ms);
  CHECK_FALSE(c.finished());
  CHECK(f.m.evictions->value() == 1);
  CHECK(f.registry->resident_bytes() <= static_cast<int64_t>(1.5 * f.one));

  b.get() = InternalError("released");  // drops b's lease
  REQUIRE(c.Wait());
  REQUIRE(c.get().ok());
  CHECK(*c.get()->snapshot == f.snaps["c"]);
  CHECK(f.m.residency_loads->value() == 3);
  CHECK(f.registry->acquires_waiting() == 0);
  // Every acquire that missed is timed: a's, b's and c's.
  CHECK(f.m.load_wait_seconds->CumulativeCounts().back() == 3);
}

TEST_CASE(
    "the wait limit ends a waiting acquire with RESOURCE_EXHAUSTED, a deadline with "
    "DEADLINE_EXCEEDED, and nothing stored changes") {
  Fixture f;
  f.Start(1.5, /*wait=*/300ms);
  ContextLease a = f.Lease("a");
  const auto t0 = std::chrono::steady_clock::now();
  Outcome limited;
  f.registry->AcquireAsync("b", "", {}, limited.Callback());
  REQUIRE(limited.Wait());
  CHECK(limited.at - t0 >= 300ms);
  CHECK(limited.thread == "registry-timer");
  CHECK(limited.code() == StatusCode::kResourceExhausted);
  CHECK(Contains(limited.message(), "server.limits.context_load_wait_s"));
  CHECK(Contains(limited.message(), "engine.memory.resident_contexts_mb"));
  CHECK(Contains(limited.message(), "retry later"));

  // The request's deadline, earlier than the wait limit.
  a = ContextLease{};  // released before its registry goes
  f.registry.reset();
  f.Start(1.5, /*wait=*/30s);
  a = f.Lease("a");
  const auto t1 = std::chrono::steady_clock::now();
  AcquireOptions o;
  o.deadline = t1 + 200ms;
  Outcome late;
  f.registry->AcquireAsync("c", "", o, late.Callback());
  REQUIRE(late.Wait());
  CHECK(late.at - t1 >= 200ms);
  CHECK(late.at - t1 < 5s);
  CHECK(late.code() == StatusCode::kDeadlineExceeded);
  CHECK(Contains(late.message(), "deadline"));
  CHECK(Contains(late.message(), "context c"));
  CHECK(f.registry->acquires_waiting() == 0);
  for (const char* id : {"a", "b", "c"}) f.CheckStored(id);

  // The queue is not stuck: once "a" is released, "c" loads.
  a = ContextLease{};
  auto c = f.registry->Acquire("c", "");
  REQUIRE(c.ok());
  CHECK(*c->snapshot == f.snaps["c"]);
}

TEST_CASE(
    "with bf16 storage a cold load reserves the snapshot's size in memory, not its smaller "
    "stored size") {
  TempDir dir;
  StoreOptions so = testing::Options(dir.path);
  so.kv_dtype = "bf16";
  auto store = std::move(ContextStore::Open(so)).value();
  const ContextSnapshot a = MakeSnapshot(41, 129, 2, 2, 8), b = MakeSnapshot(42, 129, 2, 2, 8);
  const int64_t a_mem = SnapshotBytes(a), b_mem = SnapshotBytes(b);
  StoreContext(store.get(), "a", a);
  const int64_t b_stored = StoreContext(store.get(), "b", b).stored_bytes;
  // A budget where "b" fits beside a leased "a" by its stored size but not by its size in memory.
  const int64_t budget = a_mem + (b_stored + b_mem) / 2;
  REQUIRE(a_mem + b_stored <= budget);
  REQUIRE(budget < a_mem + b_mem);
  metrics::Registry metrics;
  RegistryMetrics m;
  RegistryOptions o;
  o.resident_budget_bytes = budget;
  o.max_context_tokens = 4096;
  o.model = TestModel();
  Registry registry(store.get(), nullptr, o, m);
  REQUIRE(registry.Start().ok());
  std::optional<ContextLease> lease_a = *registry.Acquire("a", "");
  Outcome got_b;
  registry.AcquireAsync("b", "", {}, got_b.Callback());
  // Reserving only the stored bytes would start the load now and then find no room for it
  // (RESOURCE_EXHAUSTED); reserving the size in memory makes it wait for "a" instead.
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(got_b.finished());
  CHECK(registry.acquires_waiting() == 1);
  lease_a.reset();
  REQUIRE(got_b.Wait());
  REQUIRE(got_b.get().ok());
  ContextSnapshot b_rounded = b;
  store->RoundForStorage(&b_rounded);
  CHECK(*got_b.get()->snapshot == b_rounded);
  CHECK(registry.resident_bytes() == b_mem);
  got_b.get() = InternalError("released");
}

TEST_CASE("a zero wait limit refuses at once when the budget is held") {
  Fixture f;
  f.Start(1.5, /*wait=*/0ms);
  ContextLease a = f.Lease("a");
  Outcome b;
  f.registry->AcquireAsync("b", "", {}, b.Callback());
  REQUIRE(b.finished());
  CHECK(b.code() == StatusCode::kResourceExhausted);
  CHECK(Contains(b.message(), "engine.memory.resident_contexts_mb"));
  CHECK(Contains(b.message(), "held by contexts in use"));
}

TEST_CASE(
    "a context larger than the whole budget, or than what pinned contexts leave, is "
    "refused at once") {
  Fixture f;
  f.Start(0.5, /*wait=*/30s);
  Outcome big;
  f.registry->AcquireAsync("a", "", {}, big.Callback());
  REQUIRE(big.finished());  // inline: no waiting
  CHECK(big.code() == StatusCode::kResourceExhausted);
  CHECK(Contains(big.message(), "whole budget"));
  CHECK(Contains(big.message(), "raise engine.memory.resident_contexts_mb"));
  CHECK(f.registry->acquires_waiting() == 0);
  f.CheckStored("a");

  // A pinned context (loaded at start) holds most of a 1.5-context budget for good.
  f.registry.reset();
  f.snaps["p"] = MakeSnapshot(99, 129, 2, 2, 8);
  StoreContext(f.store.get(), "p", f.snaps["p"], /*pinned=*/true);
  f.Start(1.5, /*wait=*/30s);
  CHECK(f.registry->resident_bytes() == SnapshotBytes(f.snaps["p"]));
  Outcome beside;
  f.registry->AcquireAsync("b", "", {}, beside.Callback());
  REQUIRE(beside.finished());
  CHECK(beside.code() == StatusCode::kResourceExhausted);
  CHECK(Contains(beside.message(), "pinned contexts hold"));
  auto p = f.registry->Acquire("p", "");  // the pinned one itself is a hit
  REQUIRE(p.ok());
  CHECK(f.m.residency_hits->value() == 1);
}

TEST_CASE("cancelling a waiting acquire ends it on the caller's thread and frees its place") {
  Fixture f;
  f.Start(1.5);
  std::optional<ContextLease> a = f.Lease("a");
  Outcome b, c;
  const int64_t tb = f.registry->AcquireAsync("b", "", {}, b.Callback());
  f.registry->AcquireAsync("c", "", {}, c.Callback());
  f.registry->CancelAcquire(tb, CancelledError("the client cancelled the call"));
  REQUIRE(b.finished());
  CHECK(b.code() == StatusCode::kCancelled);
  CHECK(b.message() == "the client cancelled the call");
  f.registry->CancelAcquire(tb, CancelledError("again"));  // finished: nothing happens
  CHECK(f.registry->acquires_waiting() == 1);
  a.reset();  // c was behind b; with b gone it is the head and loads
  REQUIRE(c.Wait());
  REQUIRE(c.get().ok());
  CHECK(*c.get()->snapshot == f.snaps["c"]);
  f.CheckStored("b");
}

TEST_CASE("deleting a context while acquires wait for it ends them with NOT_FOUND") {
  Fixture f;
  f.Start(1.5);
  std::optional<ContextLease> a = f.Lease("a");
  Outcome b1, b2;
  f.registry->AcquireAsync("b", "", {}, b1.Callback());
  f.registry->AcquireAsync("b", "", {}, b2.Callback());
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Status> deleted;
  f.registry->Delete("b", "", [&](Status s) {
    std::lock_guard<std::mutex> lock(mu);
    deleted = s;
    cv.notify_all();
  });
  for (Outcome* o : {&b1, &b2}) {
    REQUIRE(o->Wait());
    CHECK(o->code() == StatusCode::kNotFound);
    CHECK(Contains(o->message(), "deleted"));
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return deleted.has_value(); }));
  }
  CHECK(deleted->ok());
  CHECK(f.store->GetRecord("b").status().code() == StatusCode::kNotFound);
  CHECK(f.registry->acquires_waiting() == 0);
  // "a" is untouched and still leased; "c" waits for it as before.
  f.CheckStored("a");
  Outcome c;
  f.registry->AcquireAsync("c", "", {}, c.Callback());
  std::this_thread::sleep_for(100ms);
  CHECK_FALSE(c.finished());
  a.reset();
  REQUIRE(c.Wait());
  CHECK(c.get().ok());
}

TEST_CASE("StopAcquiring ends waiting acquires and refuses new ones") {
  Fixture f;
  f.Start(1.5);
  ContextLease a = f.Lease("a");
  Outcome b;
  f.registry->AcquireAsync("b", "", {}, b.Callback());
  f.registry->StopAcquiring(UnavailableError("the server is shutting down"));
  REQUIRE(b.finished());
  CHECK(b.code() == StatusCode::kUnavailable);
  Outcome later;
  f.registry->AcquireAsync("a", "", {}, later.Callback());
  REQUIRE(later.finished());
  CHECK(later.code() == StatusCode::kUnavailable);
  f.CheckStored("b");
}

TEST_CASE("many acquires over three contexts and a budget of two never exceed it") {
  Fixture f;
  f.Start(2.2, 30s, /*loaders=*/3);
  const int64_t budget = static_cast<int64_t>(2.2 * static_cast<double>(f.one));
  std::atomic<int> ok{0};
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const std::string id(1, static_cast<char>('a' + (t + i) % 3));
        auto lease = f.registry->Acquire(id, "");
        if (!lease.ok()) continue;
        if (*lease->snapshot == f.snaps.at(id)) ++ok;
        if (f.registry->resident_bytes() > budget) over = true;
        std::this_thread::sleep_for(1ms);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok == 120);  // every acquire got its own context's snapshot, none was refused
  CHECK_FALSE(over);
  CHECK(f.registry->acquires_waiting() == 0);
}

TEST_CASE(
    "a stored snapshot that fails verification is never served: every waiter gets "
    "FAILED_PRECONDITION and the context is rebuilt from its tokens") {
  const std::string model_dir = std::string(SQZ_SHARED_DIR) + "/models/stories260K";
  if (!std::filesystem::exists(model_dir + "/model.safetensors")) {
    WARN("skipped: " << model_dir << " not found (the shared test models)");
    return;
  }
  Fixture f;  // declared first: destroyed after the engine, whose callbacks reach the registry
  auto model = LoadHfModel(model_dir);
  REQUIRE(model.ok());
  auto tokenizer = Tokenizer::FromHfDirectory(model_dir);
  REQUIRE(tokenizer.ok());
  auto backend = CpuBackend::Create(**model, CpuBackendOptions{});
  REQUIRE(backend.ok());
  auto engine = Engine::Start(backend->get(), tokenizer->get(), EngineLimits{});
  REQUIRE(engine.ok());
  // A blob rewritten behind the registry's back: its checksum no longer matches the manifest.
  REQUIRE(f.store->PutBlob("b", 1, 0, ContextStore::BlobKind::kKv, std::string(96, 'x')).ok());
  f.Start(100, 30s, 2, engine->get());  // room for the rebuilt snapshot (5 layers, 4 KV heads)
  Outcome b1, b2;
  f.registry->AcquireAsync("b", "", {}, b1.Callback());
  f.registry->AcquireAsync("b", "", {}, b2.Callback());
  for (Outcome* o : {&b1, &b2}) {
    REQUIRE(o->Wait());
    CHECK(o->code() == StatusCode::kFailedPrecondition);
    CHECK(Contains(o->message(), "failed verification and is being rebuilt"));
  }
  CHECK(f.m.residency_loads->value() == 0);
  CHECK(f.registry->resident_bytes() == 0);
  // Rebuilt by the engine from the stored tokens, then served.
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (f.registry->Get("b", "")->record.state != ContextState::kReady &&
         std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(f.registry->Get("b", "")->record.state == ContextState::kReady);
  auto rebuilt = f.registry->Acquire("b", "");
  INFO(rebuilt.status().ToString());
  REQUIRE(rebuilt.ok());
  CHECK(rebuilt->snapshot->dims.layers == (*model)->config.layers);  // the engine's, not the blob's
  CHECK(rebuilt->snapshot->dims.n_tokens == 129);
  rebuilt = InternalError("released");
  (*engine).reset();  // before the registry (its ingestion callbacks reach it)
}

}  // namespace
}  // namespace sqz
