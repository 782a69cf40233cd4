#include "storage/context_store.h"

#include <rocksdb/db.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <thread>

#include "storage/test_util.h"

namespace sqz {
namespace {

using testing::MakeSnapshot;
using testing::OpenOrDie;
using testing::Options;
using testing::Record;
using testing::StoreReady;
using testing::TempDir;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// The database opened with plain RocksDB, to write what the store never would.
struct RawDb {
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> cf;  // default, records, tokens, kv, index
  explicit RawDb(const std::filesystem::path& p) {
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const char* n : {"default", "records", "tokens", "kv", "index"}) {
      rocksdb::ColumnFamilyOptions o;
      if (std::string(n) == "kv" || std::string(n) == "index") o.enable_blob_files = true;
      cfs.push_back({n, o});
    }
    SQZ_CHECK(rocksdb::DB::Open(rocksdb::Options(), p.string(), cfs, &cf, &db).ok());
  }
  ~RawDb() {
    for (auto* h : cf) (void)db->DestroyColumnFamilyHandle(h);
    delete db;
  }
  std::string BlobKey(const std::string& id, uint32_t layer, uint32_t head, char kind) {
    std::string k = id + std::string(1, '\0');
    for (uint32_t v : {layer, head}) {
      for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
    k.push_back(kind);
    return k;
  }
};

TEST_CASE("records, tokens and snapshots round-trip across reopen") {
  TempDir dir;
  const std::vector<int32_t> tokens = {1, 5, 9, 300, 7};
  const ContextSnapshot snap = MakeSnapshot(1);
  ModelIdentity model;
  model.config_summary = "llama L=2";
  model.tensors_digest = 7;
  model.weights_digest = 9;
  {
    auto store = OpenOrDie(dir.path);
    ContextRecord r = Record("manual", tokens);
    r.model = model;
    r.model_fingerprint = model.Hash();
    r.state = ContextState::kReady;  // ignored: a new record is QUEUED
    REQUIRE(store->CreateRecord(r, tokens).ok());
    CHECK(store->GetRecord("manual")->state == ContextState::kQueued);
    CHECK(store->CreateRecord(r, tokens).code() == StatusCode::kAlreadyExists);
    REQUIRE(store->PutSnapshot(snap, &r).ok());
    CHECK(r.manifest.size() == 1 + 2 * 2 * 2);
    CHECK(r.stored_bytes > SnapshotBytes(snap));  // payloads carry array lengths too
    CHECK(r.stored_bytes < SnapshotBytes(snap) + 4096);
    CHECK(r.resident_bytes == SnapshotBytes(snap));
    CHECK(r.thresholds == snap.thresholds_global);
    REQUIRE(store->CommitReady(r).ok());
  }
  auto store = OpenOrDie(dir.path);
  auto r = store->GetRecord("manual");
  REQUIRE(r.ok());
  CHECK(r->state == ContextState::kReady);
  CHECK(r->progress == 1.0);
  CHECK(r->labels.at("team") == "docs");
  CHECK(r->model == model);
  CHECK(r->thresholds == snap.thresholds_global);
  CHECK(r->content_digest == TokenDigest(tokens));
  CHECK(r->create_time_ms > 0);
  CHECK(r->update_time_ms >= r->create_time_ms);
  CHECK(*store->LoadTokens("manual") == tokens);
  auto loaded = store->LoadSnapshot(*r);
  REQUIRE(loaded.ok());
  CHECK(*loaded == snap);
  CHECK(*store->LoadSnapshot("manual") == snap);
  CHECK(store->DiskBytes() > SnapshotBytes(snap));
}

TEST_CASE("both blob durability modes and any number of load threads round-trip") {
  for (const bool bypass_wal : {true, false}) {
    for (const int32_t threads : {1, 3, 64}) {
      INFO("blobs_bypass_wal " << bypass_wal << ", load_threads " << threads);
      TempDir dir;
      StoreOptions o = Options(dir.path);
      o.blobs_bypass_wal = bypass_wal;
      o.load_threads = threads;
      const ContextSnapshot snap = MakeSnapshot(20 + threads, 129, 3, 3, 4);
      {
        auto store = std::move(ContextStore::Open(o)).value();
        StoreReady(store.get(), "ctx", snap, std::vector<int32_t>(129, 1));
        CHECK(*store->LoadSnapshot("ctx") == snap);
      }
      auto store = std::move(ContextStore::Open(o)).value();
      CHECK(*store->LoadSnapshot("ctx") == snap);
      // With several heads damaged, the first one in (layer, head) order is reported.
      for (const auto& [l, h] : {std::pair{2, 0}, std::pair{0, 2}, std::pair{1, 1}}) {
        REQUIRE(store->PutBlob("ctx", l, h, blob::Kind::kKv, "other bytes").ok());
      }
      const Status s = store->LoadSnapshot("ctx").status();
      CHECK(s.code() == StatusCode::kDataLoss);
      CHECK(Contains(s.message(), "context ctx layer 0 kv head 2 kv blob does not match"));
    }
  }
}

TEST_CASE("snapshots of awkward shapes round-trip exactly") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  struct Shape {
    int64_t n;
    int32_t layers, heads, d;
  };
  int i = 0;
  for (const Shape s :
       {Shape{21, 1, 1, 2}, Shape{127, 3, 1, 4}, Shape{129, 1, 3, 6}, Shape{300, 2, 3, 16}}) {
    INFO("n=" << s.n << " layers=" << s.layers << " heads=" << s.heads << " d=" << s.d);
    const ContextSnapshot snap = MakeSnapshot(100 + i, s.n, s.layers, s.heads, s.d);
    const std::vector<int32_t> tokens(static_cast<size_t>(s.n), i);
    const std::string id = "shape-" + std::to_string(i++);
    const ContextRecord r = StoreReady(store.get(), id, snap, tokens);
    CHECK(r.manifest.size() == 1 + 2 * static_cast<size_t>(s.layers) * s.heads);
    auto loaded = store->LoadSnapshot(id);
    REQUIRE(loaded.ok());
    CHECK(*loaded == snap);
  }
}

TEST_CASE("a context is READY only after CommitReady; unfinished ones are reported on recovery") {
  for (const CrashPoint point : {CrashPoint::kBlobsWritten, CrashPoint::kBlobsSynced}) {
    INFO("crash point " << static_cast<int>(point));
    TempDir dir;
    const std::vector<int32_t> tokens = {1, 2, 3};
    {
      auto store = OpenOrDie(dir.path);
      ContextRecord r = Record("half", tokens);
      REQUIRE(store->CreateRecord(r, tokens).ok());
      REQUIRE(store->UpdateState("half", ContextState::kPersisting, 0.5, "", false).ok());
      store->SetCrashHookForTesting([&](CrashPoint p, const std::string&) { return p == point; });
      Status s = store->PutSnapshot(MakeSnapshot(2), &r);
      if (s.ok()) s = store->CommitReady(r);
      CHECK(s.code() == StatusCode::kAborted);
    }
    auto store = OpenOrDie(dir.path);
    auto r = store->GetRecord("half");
    REQUIRE(r.ok());
    CHECK(r->state == ContextState::kPersisting);
    CHECK(store->LoadSnapshot(*r).status().code() == StatusCode::kFailedPrecondition);
    CHECK(store->List(10, "", ContextState::kReady)->records.empty());
    auto rec = store->Recover();
    REQUIRE(rec.ok());
    CHECK(rec->unfinished == std::vector<std::string>{"half"});
    CHECK(rec->finished_deletes.empty());
    CHECK(*store->LoadTokens("half") == tokens);  // re-ingestion has what it needs
    // Re-ingestion writes over the leftovers and commits.
    ContextRecord again = *r;
    const ContextSnapshot snap = MakeSnapshot(3);
    REQUIRE(store->PutSnapshot(snap, &again).ok());
    REQUIRE(store->CommitReady(again).ok());
    CHECK(*store->LoadSnapshot("half") == snap);
  }
}

TEST_CASE("deletion removes everything; a crash at any step never resurrects the context") {
  for (const CrashPoint point : {CrashPoint::kDeleteMarked, CrashPoint::kDeleteRangesDone}) {
    INFO("crash point " << static_cast<int>(point));
    TempDir dir;
    const std::vector<int32_t> tokens = {4, 5};
    const ContextSnapshot snap = MakeSnapshot(3);
    {
      auto store = OpenOrDie(dir.path);
      for (const char* id : {"a", "ab", "a b", "b"}) StoreReady(store.get(), id, snap, tokens);
      REQUIRE(store->Delete("a").ok());
      CHECK(store->GetRecord("a").status().code() == StatusCode::kNotFound);
      CHECK(store->LoadTokens("a").status().code() == StatusCode::kNotFound);
      CHECK(store->GetBlob("a", 0, 0, blob::Kind::kKv).status().code() == StatusCode::kDataLoss);
      CHECK(store->Delete("a").code() == StatusCode::kNotFound);
      // Ids sharing a prefix are untouched.
      CHECK(*store->LoadSnapshot("ab") == snap);
      CHECK(*store->LoadSnapshot("a b") == snap);
      store->SetCrashHookForTesting([&](CrashPoint p, const std::string&) { return p == point; });
      CHECK(store->Delete("b").code() == StatusCode::kAborted);
      store->SetCrashHookForTesting(nullptr);
      CHECK(store->GetRecord("b")->state == ContextState::kDeleting);
      // A DELETING context is never listed, loaded or written.
      CHECK(store->List(10, "")->records.size() == 2);
      ContextRecord b = Record("b", tokens);
      CHECK(store->UpdateRecord(b, true).code() == StatusCode::kFailedPrecondition);
      CHECK(store->UpdateState("b", ContextState::kFailed, 0, "x", true).code() ==
            StatusCode::kFailedPrecondition);
      CHECK(store->PutSnapshot(snap, &b).code() == StatusCode::kFailedPrecondition);
      b.manifest = {{"meta", 1, 1}};
      CHECK(store->CommitReady(b).code() == StatusCode::kFailedPrecondition);
    }
    auto store = OpenOrDie(dir.path);
    auto rec = store->Recover();
    REQUIRE(rec.ok());
    CHECK(rec->finished_deletes == std::vector<std::string>{"b"});
    CHECK(rec->unfinished.empty());
    CHECK(store->GetRecord("b").status().code() == StatusCode::kNotFound);
    CHECK(store->LoadTokens("b").status().code() == StatusCode::kNotFound);
    CHECK(store->GetBlob("b", 1, 1, blob::Kind::kIndex).status().code() == StatusCode::kDataLoss);
    // And it stays gone across another reopen.
    store.reset();
    store = OpenOrDie(dir.path);
    CHECK(store->Recover()->finished_deletes.empty());
    CHECK(store->GetRecord("b").status().code() == StatusCode::kNotFound);
    CHECK(store->List(10, "")->records.size() == 2);
  }
}

TEST_CASE("deleting or re-queueing a context frees its disk space") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens(1000, 1);
  const ContextSnapshot snap = MakeSnapshot(30, 1000, 2, 2, 64);
  const int64_t one = SnapshotBytes(snap);
  for (const char* id : {"a", "b", "c"}) StoreReady(store.get(), id, snap, tokens);
  const int64_t full = store->DiskBytes();
  CHECK(full >= 3 * one);
  REQUIRE(store->Delete("b").ok());
  CHECK(store->DiskBytes() <= full - one);
  REQUIRE(store->MarkStale("c", 7).ok());
  CHECK(store->DiskBytes() <= full - 2 * one);
  REQUIRE(store->Delete("a").ok());
  REQUIRE(store->Delete("c").ok());
  CHECK(store->DiskBytes() < one / 10);
}

TEST_CASE("writes to a deleted context fail instead of resurrecting it") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens = {1, 2};
  ContextRecord r = Record("gone", tokens);
  REQUIRE(store->CreateRecord(r, tokens).ok());
  REQUIRE(store->Delete("gone").ok());
  r.state = ContextState::kPrefilling;
  CHECK(store->UpdateRecord(r, false).code() == StatusCode::kNotFound);
  CHECK(store->UpdateState("gone", ContextState::kFailed, 0, "late", true).code() ==
        StatusCode::kNotFound);
  CHECK(store->PutSnapshot(MakeSnapshot(5), &r).code() == StatusCode::kNotFound);
  CHECK(store->PutBlob("gone", 0, 0, blob::Kind::kKv, "x").status().code() ==
        StatusCode::kNotFound);
  r.manifest = {{"meta", 1, 1}};
  CHECK(store->CommitReady(r).code() == StatusCode::kNotFound);
  CHECK(store->GetRecord("gone").status().code() == StatusCode::kNotFound);
}

TEST_CASE("a Delete racing with PutSnapshot wins and leaves no blobs behind") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens = {9};
  ContextRecord r = Record("race", tokens);
  REQUIRE(store->CreateRecord(r, tokens).ok());
  store->SetCrashHookForTesting([&](CrashPoint p, const std::string& id) {
    if (p == CrashPoint::kBlobsWritten) REQUIRE(store->Delete(id).ok());
    return false;
  });
  CHECK(store->PutSnapshot(MakeSnapshot(6), &r).code() == StatusCode::kNotFound);
  CHECK(store->GetBlob("race", 0, 0, blob::Kind::kMeta).status().code() == StatusCode::kDataLoss);
  CHECK(store->GetBlob("race", 1, 1, blob::Kind::kKv).status().code() == StatusCode::kDataLoss);
}

TEST_CASE("a Delete between the blob flush and the READY write wins") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens = {9};
  ContextRecord r = Record("race", tokens);
  REQUIRE(store->CreateRecord(r, tokens).ok());
  REQUIRE(store->PutSnapshot(MakeSnapshot(6), &r).ok());
  store->SetCrashHookForTesting([&](CrashPoint p, const std::string& id) {
    if (p == CrashPoint::kBlobsSynced) REQUIRE(store->Delete(id).ok());
    return false;
  });
  CHECK(store->CommitReady(r).code() == StatusCode::kNotFound);
  CHECK(store->GetRecord("race").status().code() == StatusCode::kNotFound);
}

TEST_CASE("state updates follow the protocol") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens = {3, 1, 4};
  REQUIRE(store->CreateRecord(Record("c", tokens), tokens).ok());
  const int64_t created = store->GetRecord("c")->create_time_ms;
  REQUIRE(store->UpdateState("c", ContextState::kClustering, 0.25, "", false).ok());
  auto r = *store->GetRecord("c");
  CHECK(r.state == ContextState::kClustering);
  CHECK(r.progress == 0.25);
  CHECK(r.create_time_ms == created);
  r.create_time_ms = 1;  // not writable
  r.pinned = true;
  REQUIRE(store->UpdateRecord(r, true).ok());
  CHECK(store->GetRecord("c")->create_time_ms == created);
  CHECK(store->GetRecord("c")->pinned);

  auto code = [&](ContextState s, double progress) {
    return store->UpdateState("c", s, progress, "", false).code();
  };
  CHECK(code(ContextState::kReady, 1.0) == StatusCode::kFailedPrecondition);
  CHECK(code(ContextState::kDeleting, 0.0) == StatusCode::kFailedPrecondition);
  CHECK(code(static_cast<ContextState>(42), 0.0) == StatusCode::kInvalidArgument);
  CHECK(code(ContextState::kPrefilling, std::nan("")) == StatusCode::kInvalidArgument);
  CHECK(code(ContextState::kPrefilling, 1.5) == StatusCode::kInvalidArgument);
  const auto msg = store->UpdateState("c", ContextState::kReady, 1, "", false).message();
  CHECK(Contains(msg, "only CommitReady makes a context READY"));
  REQUIRE(store->UpdateState("c", ContextState::kFailed, 0.5, "out of memory", true).ok());
  CHECK(store->GetRecord("c")->error == "out of memory");
  CHECK(store->GetRecord("c")->state == ContextState::kFailed);
  // A model identity that does not hash to the fingerprint is refused.
  r = *store->GetRecord("c");
  r.model.config_summary = "llama";
  CHECK(store->UpdateRecord(r, false).code() == StatusCode::kInvalidArgument);
  r.model_fingerprint = r.model.Hash();
  CHECK(store->UpdateRecord(r, false).ok());
}

TEST_CASE("listing pages in id order, stably, with state and owner filters") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens = {1};
  for (int i = 0; i < 7; ++i) {
    ContextRecord r = Record("c" + std::to_string(i), tokens);
    r.owner = i % 2 ? "bob" : "alice";
    REQUIRE(store->CreateRecord(r, tokens).ok());
    if (i < 3) REQUIRE(store->UpdateState(r.id, ContextState::kFailed, 0, "e", false).ok());
  }
  for (int64_t page_size : {1, 3, 6, 7, 100}) {
    INFO("page size " << page_size);
    std::vector<std::string> seen;
    std::string token;
    int pages = 0;
    do {
      auto page = store->List(page_size, token);
      REQUIRE(page.ok());
      CHECK(static_cast<int64_t>(page->records.size()) <= page_size);
      CHECK_FALSE(page->records.empty());  // no empty trailing page
      for (auto& r : page->records) seen.push_back(r.id);
      token = page->next_page_token;
      ++pages;
    } while (!token.empty());
    CHECK(seen == std::vector<std::string>{"c0", "c1", "c2", "c3", "c4", "c5", "c6"});
    CHECK(pages == (7 + page_size - 1) / page_size);
  }
  CHECK(store->List(100, "", ContextState::kFailed)->records.size() == 3);
  CHECK(store->List(100, "", ContextState::kQueued, std::string("bob"))->records.size() == 2);
  CHECK(store->List(100, "", std::nullopt, std::string("bob"))->records.size() == 3);
  CHECK(store->List(100, "", ContextState::kReady)->records.empty());
  auto filtered = store->List(1, "", std::nullopt, std::string("bob"));
  CHECK(filtered->records[0].id == "c1");
  CHECK(filtered->next_page_token == "c1");

  // Stable under changes between pages: ids before the token are not repeated, deleted ones are
  // skipped, new ones after the token appear.
  auto first = store->List(3, "");
  REQUIRE(first->next_page_token == "c2");
  REQUIRE(store->CreateRecord(Record("a-new", tokens), tokens).ok());
  REQUIRE(store->CreateRecord(Record("c35", tokens), tokens).ok());
  REQUIRE(store->Delete("c4").ok());
  std::vector<std::string> rest;
  const auto after = store->List(100, first->next_page_token);
  for (auto& r : after->records) rest.push_back(r.id);
  CHECK(rest == std::vector<std::string>{"c3", "c35", "c5", "c6"});
  // A token need not name an existing record.
  CHECK(store->List(100, "c45")->records.size() == 2);

  CHECK(store->List(0, "").status().code() == StatusCode::kInvalidArgument);
  CHECK(store->List(-3, "").status().code() == StatusCode::kInvalidArgument);
  CHECK(Contains(store->List(0, "").status().message(), "page size"));
  CHECK(store->List(10, std::string("c\0x", 3)).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a store or record written by a newer format version is refused") {
  TempDir dir;
  { OpenOrDie(dir.path); }
  {
    RawDb raw(dir.path);
    REQUIRE(raw.db->Put(rocksdb::WriteOptions(), raw.cf[0], "__format_version__", "99").ok());
  }
  auto s = ContextStore::Open(Options(dir.path));
  CHECK(s.status().code() == StatusCode::kFailedPrecondition);
  CHECK(Contains(s.status().message(), "format version 99"));
  {
    RawDb raw(dir.path);
    REQUIRE(raw.db->Put(rocksdb::WriteOptions(), raw.cf[0], "__format_version__", "1").ok());
    // A record from the future, and one that is not JSON.
    REQUIRE(raw.db
                ->Put(rocksdb::WriteOptions(), raw.cf[1], "future",
                      R"({"format_version": 2, "id": "future"})")
                .ok());
    REQUIRE(raw.db->Put(rocksdb::WriteOptions(), raw.cf[1], "garbled", "{\"format_vers").ok());
    REQUIRE(raw.db
                ->Put(rocksdb::WriteOptions(), raw.cf[1], "moved",
                      EncodeRecord(Record("elsewhere", std::vector<int32_t>{})))
                .ok());
  }
  auto store = OpenOrDie(dir.path);
  CHECK(store->GetRecord("future").status().code() == StatusCode::kFailedPrecondition);
  CHECK(Contains(store->GetRecord("future").status().message(), "format version 2"));
  CHECK(store->GetRecord("garbled").status().code() == StatusCode::kDataLoss);
  CHECK(Contains(store->GetRecord("garbled").status().message(), "context garbled is corrupt"));
  CHECK(store->GetRecord("moved").status().code() == StatusCode::kDataLoss);
  CHECK(store->List(10, "").status().code() != StatusCode::kOk);
}

TEST_CASE("an open store cannot be opened twice; bad options are refused") {
  TempDir dir;
  auto a = ContextStore::Open(Options(dir.path));
  REQUIRE(a.ok());
  CHECK(ContextStore::Open(Options(dir.path)).status().code() == StatusCode::kUnavailable);
  StoreOptions o = Options(dir.path / "other");
  o.path = "";
  CHECK(ContextStore::Open(o).status().code() == StatusCode::kInvalidArgument);
  o = Options(dir.path / "other");
  o.blob_min_bytes = -1;
  CHECK(ContextStore::Open(o).status().code() == StatusCode::kInvalidArgument);
  o = Options(dir.path / "other");
  o.block_cache_mb = 0;
  CHECK(ContextStore::Open(o).status().code() == StatusCode::kInvalidArgument);
  o = Options(dir.path / "other");
  o.kv_dtype = "fp16";
  const Status dtype = ContextStore::Open(o).status();
  CHECK(dtype.code() == StatusCode::kInvalidArgument);
  CHECK(Contains(dtype.message(), "storage.kv_dtype must be fp32 or bf16, got 'fp16'"));
  o = Options(dir.path / "file" / "db");
  { std::ofstream(dir.path / "file") << "x"; }
  CHECK(ContextStore::Open(o).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("bf16 K/V storage: half the KV bytes, loads the rounded snapshot, reads fp32 contexts") {
  TempDir dir;
  const ContextSnapshot snap = MakeSnapshot(31, 257, 2, 2, 16);
  ContextSnapshot rounded = snap;
  blob::RoundKvToBf16(&rounded);
  REQUIRE(!(rounded == snap));  // random K/V are not all bf16 values
  const std::vector<int32_t> tokens(257, 3);
  int64_t f32_bytes = 0, bf16_bytes = 0;
  {
    auto store = OpenOrDie(dir.path);  // fp32 (the default)
    StoreReady(store.get(), "old", snap, tokens);
    f32_bytes = store->GetRecord("old")->stored_bytes;
    ContextSnapshot same = snap;
    store->RoundForStorage(&same);
    CHECK(same == snap);  // fp32 storage changes nothing
  }
  StoreOptions o = Options(dir.path);
  o.kv_dtype = "bf16";
  {
    auto store = std::move(ContextStore::Open(o)).value();
    StoreReady(store.get(), "new", snap, tokens);
    bf16_bytes = store->GetRecord("new")->stored_bytes;
    // What the snapshot takes in memory once loaded does not change with the stored type.
    CHECK(store->GetRecord("new")->resident_bytes == SnapshotBytes(snap));
    CHECK(store->GetRecord("old")->resident_bytes == SnapshotBytes(snap));
    CHECK(*store->LoadSnapshot("new") == rounded);
    CHECK(*store->LoadSnapshot("old") == snap);  // written as fp32, read as fp32
    ContextSnapshot r = snap;
    store->RoundForStorage(&r);
    CHECK(r == rounded);
  }
  // KV elements are 2 of the 4 bytes; the index and meta blobs are unchanged.
  int64_t kv_floats = 0;
  for (const HeadIndex& h : snap.heads) {
    kv_floats += static_cast<int64_t>(h.sink_k.size() + h.sink_v.size() + h.window_k.size() +
                                      h.window_v.size() + h.body_k.size() + h.body_v.size());
  }
  CHECK(f32_bytes - bf16_bytes == 2 * kv_floats);
  // Reopened as fp32, the bf16 context still loads (the encoding is in each blob's header).
  auto store = OpenOrDie(dir.path);
  CHECK(*store->LoadSnapshot("new") == rounded);
  // A kv blob whose encoding field was altered fails its checksum.
  auto r = store->GetRecord("new");
  REQUIRE(r.ok());
  store.reset();
  {
    RawDb raw(dir.path);
    std::string value;
    const std::string key = raw.BlobKey("new", 1, 0, static_cast<char>(blob::Kind::kKv));
    REQUIRE(raw.db->Get(rocksdb::ReadOptions(), raw.cf[3], key, &value).ok());
    value[12] = 0;  // bf16 -> fp32
    REQUIRE(raw.db->Put(rocksdb::WriteOptions(), raw.cf[3], key, value).ok());
  }
  store = OpenOrDie(dir.path);
  const Status s = store->LoadSnapshot(*r).status();
  CHECK(s.code() == StatusCode::kDataLoss);
  CHECK(Contains(s.message(), "context new layer 1 kv head 0 kv blob: blob checksum mismatch"));
}

TEST_CASE("bad ids and missing contexts get clear errors") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens = {1, 2};
  for (const std::string& bad : {std::string(), std::string("a\0b", 3), std::string("tab\there"),
                                 std::string(257, 'x'), std::string("del\x7f")}) {
    INFO("id of " << bad.size() << " bytes");
    ContextRecord r = Record(bad, tokens);
    CHECK(store->CreateRecord(r, tokens).code() == StatusCode::kInvalidArgument);
    CHECK(store->GetRecord(bad).status().code() == StatusCode::kInvalidArgument);
    CHECK(store->UpdateRecord(r, false).code() == StatusCode::kInvalidArgument);
    CHECK(store->LoadTokens(bad).status().code() == StatusCode::kInvalidArgument);
    CHECK(store->Delete(bad).code() == StatusCode::kInvalidArgument);
    CHECK(store->GetBlob(bad, 0, 0, blob::Kind::kKv).status().code() ==
          StatusCode::kInvalidArgument);
    CHECK(store->LoadSnapshot(bad).status().code() == StatusCode::kInvalidArgument);
  }
  CHECK(ValidateContextId(std::string(256, 'x')).ok());
  CHECK(Contains(ValidateContextId("").message(), "empty"));
  CHECK(Contains(ValidateContextId(std::string(300, 'x')).message(), "300 bytes"));
  CHECK(Contains(ValidateContextId(std::string("a\0b", 3)).message(), "offset 1"));

  CHECK(store->GetRecord("nope").status().code() == StatusCode::kNotFound);
  CHECK(Contains(store->GetRecord("nope").status().message(), "context nope not found"));
  CHECK(store->LoadTokens("nope").status().code() == StatusCode::kNotFound);
  CHECK(store->LoadSnapshot("nope").status().code() == StatusCode::kNotFound);
  CHECK(store->Delete("nope").code() == StatusCode::kNotFound);
  CHECK(store->UpdateState("nope", ContextState::kFailed, 0, "", false).code() ==
        StatusCode::kNotFound);
  CHECK(store->MarkStale("nope", 1).code() == StatusCode::kNotFound);

  ContextRecord r = Record("c", tokens);
  r.token_count = 3;
  CHECK(store->CreateRecord(r, tokens).code() == StatusCode::kInvalidArgument);
  r.token_count = 2;
  r.content_digest = TokenDigest(std::vector<int32_t>{2, 1});
  CHECK(Contains(store->CreateRecord(r, tokens).message(), "is not the digest of the tokens"));
  r.content_digest.clear();  // filled in by CreateRecord
  REQUIRE(store->CreateRecord(r, tokens).ok());
  CHECK(store->GetRecord("c")->content_digest == TokenDigest(tokens));
  CHECK(store->LoadSnapshot("c").status().code() == StatusCode::kFailedPrecondition);
  CHECK(Contains(store->LoadSnapshot("c").status().message(), "QUEUED, not READY"));
  CHECK(store->CommitReady(r).code() == StatusCode::kInvalidArgument);  // no manifest
  ContextSnapshot bad = MakeSnapshot(7);
  bad.heads[1].offsets.back() += 1;
  CHECK(store->PutSnapshot(bad, &r).code() == StatusCode::kInvalidArgument);
  CHECK(store->PutBlob("c", -1, 0, blob::Kind::kKv, "x").status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(store->PutBlob("c", 0, 1, blob::Kind::kMeta, "x").status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(store->GetBlob("c", 0, -2, blob::Kind::kKv).status().code() ==
        StatusCode::kInvalidArgument);
  StoreReady(store.get(), "ready", MakeSnapshot(8), tokens);
  ContextRecord ready = *store->GetRecord("ready");
  CHECK(store->PutSnapshot(MakeSnapshot(9), &ready).code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("blobs round-trip and any corruption of a stored value is DATA_LOSS naming it") {
  TempDir dir;
  const std::vector<int32_t> tokens = {1};
  std::mt19937 rng(11);
  std::vector<std::string> payloads;
  {
    auto store = OpenOrDie(dir.path);
    REQUIRE(store->CreateRecord(Record("ctx", tokens), tokens).ok());
    for (size_t n : {0, 1, 3, 127, 129, 100000}) {
      std::string p(n, '\0');
      for (auto& c : p) c = static_cast<char>(rng());
      auto e = store->PutBlob("ctx", static_cast<int32_t>(payloads.size()), 2, blob::Kind::kKv, p);
      REQUIRE(e.ok());
      CHECK(e->bytes == n);
      CHECK(e->checksum == blob::Checksum(p));
      CHECK(e->key == std::to_string(payloads.size()) + "/2/kv");
      payloads.push_back(p);
    }
    for (size_t i = 0; i < payloads.size(); ++i) {
      CHECK(*store->GetBlob("ctx", static_cast<int32_t>(i), 2, blob::Kind::kKv) == payloads[i]);
    }
    CHECK(Contains(store->GetBlob("ctx", 0, 3, blob::Kind::kKv).status().message(),
                   "context ctx layer 0 kv head 3 kv blob is missing"));
  }
  // Rewrite stored values behind the store's back: flipped payload byte, flipped header byte,
  // truncation, another kind's value.
  RawDb* raw = new RawDb(dir.path);
  std::string v;
  const std::string key = raw->BlobKey("ctx", 5, 2, static_cast<char>(blob::Kind::kKv));
  REQUIRE(raw->db->Get(rocksdb::ReadOptions(), raw->cf[3], key, &v).ok());
  delete raw;
  struct Case {
    std::string name, value, expect;
  };
  std::vector<Case> cases;
  for (int i = 0; i < 20; ++i) {
    std::string flipped = v;
    const size_t at = blob::kHeaderBytes + rng() % (v.size() - blob::kHeaderBytes);
    flipped[at] ^= static_cast<char>(1 << (rng() % 8));
    cases.push_back({"payload flip at " + std::to_string(at), flipped, "checksum mismatch"});
  }
  for (size_t at = 0; at < blob::kHeaderBytes; ++at) {
    if (at >= 12 && at < 16) continue;  // reserved bytes
    std::string flipped = v;
    flipped[at] ^= 0x10;
    cases.push_back({"header flip at " + std::to_string(at), flipped, ""});
  }
  cases.push_back({"truncated header", v.substr(0, 20), "truncated"});
  cases.push_back({"truncated payload", v.substr(0, v.size() - 1), "length"});
  cases.push_back({"empty", "", "truncated"});
  cases.push_back({"index value", blob::Seal(blob::Kind::kIndex, v.substr(40)), "kind"});
  for (const Case& c : cases) {
    INFO(c.name);
    {
      RawDb raw2(dir.path);
      REQUIRE(raw2.db->Put(rocksdb::WriteOptions(), raw2.cf[3], key, c.value).ok());
    }
    auto store = OpenOrDie(dir.path);
    auto got = store->GetBlob("ctx", 5, 2, blob::Kind::kKv);
    CHECK(got.status().code() == StatusCode::kDataLoss);
    CHECK(Contains(got.status().message(), "context ctx layer 5 kv head 2 kv blob"));
    CHECK(Contains(got.status().message(), c.expect));
  }
}

TEST_CASE("stored tokens that do not match their record are DATA_LOSS") {
  TempDir dir;
  const std::vector<int32_t> tokens = {5, 6, 7};
  { REQUIRE(OpenOrDie(dir.path)->CreateRecord(Record("t", tokens), tokens).ok()); }
  for (const std::vector<int32_t>& other :
       {std::vector<int32_t>{5, 6, 8}, std::vector<int32_t>{5, 6}, std::vector<int32_t>{}}) {
    {
      RawDb raw(dir.path);
      REQUIRE(raw.db
                  ->Put(rocksdb::WriteOptions(), raw.cf[2], "t",
                        rocksdb::Slice(reinterpret_cast<const char*>(other.data()),
                                       other.size() * sizeof(int32_t)))
                  .ok());
    }
    auto got = OpenOrDie(dir.path)->LoadTokens("t");
    CHECK(got.status().code() == StatusCode::kDataLoss);
    CHECK(Contains(got.status().message(), "tokens of context t do not match its record"));
  }
  {
    RawDb raw(dir.path);
    REQUIRE(raw.db->Put(rocksdb::WriteOptions(), raw.cf[2], "t", "12345").ok());
  }
  CHECK(Contains(OpenOrDie(dir.path)->LoadTokens("t").status().message(), "truncated (5 bytes)"));
}

TEST_CASE("a blob that no longer matches the manifest is DATA_LOSS on load") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const std::vector<int32_t> tokens = {1};
  const ContextSnapshot snap = MakeSnapshot(12);
  StoreReady(store.get(), "ctx", snap, tokens);
  // A well-formed, correctly sealed blob with other contents (e.g. from another ingestion).
  REQUIRE(
      store
          ->PutBlob("ctx", 1, 0, blob::Kind::kIndex, blob::EncodeIndex(MakeSnapshot(13).head(1, 0)))
          .ok());
  auto loaded = store->LoadSnapshot("ctx");
  CHECK(loaded.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(loaded.status().message(),
                 "context ctx layer 1 kv head 0 index blob does not match the context's manifest"));
  // A manifest entry that went missing.
  ContextRecord r = *store->GetRecord("ctx");
  r.manifest.pop_back();
  CHECK(store->LoadSnapshot(r).status().code() == StatusCode::kDataLoss);
}

TEST_CASE("stale contexts go back to QUEUED without their blobs, keeping their tokens") {
  TempDir dir;
  const std::vector<int32_t> tokens = {8, 6, 7};
  ModelIdentity old_model{"llama L=2", 1, 2};
  ModelIdentity new_model{"llama L=2", 1, 3};
  {
    auto store = OpenOrDie(dir.path);
    ContextRecord r = Record("s", tokens);
    r.model = old_model;
    r.model_fingerprint = old_model.Hash();
    REQUIRE(store->CreateRecord(r, tokens).ok());
    REQUIRE(store->PutSnapshot(MakeSnapshot(14), &r).ok());
    REQUIRE(store->CommitReady(r).ok());
    StoreReady(store.get(), "other", MakeSnapshot(15), tokens);  // fingerprint 42
    REQUIRE(store->MarkStale("s", old_model).ok());              // same model: nothing changes
    CHECK(store->GetRecord("s")->state == ContextState::kReady);
    REQUIRE(store->MarkStale("s", new_model).ok());
    auto s = *store->GetRecord("s");
    CHECK(s.state == ContextState::kQueued);
    CHECK(s.manifest.empty());
    CHECK(s.stored_bytes == 0);
    CHECK(s.model == new_model);
    CHECK(s.model_fingerprint == new_model.Hash());
    CHECK(Contains(s.error, "weights differ"));
    CHECK(store->GetBlob("s", 0, 0, blob::Kind::kMeta).status().code() == StatusCode::kDataLoss);
    CHECK(*store->LoadTokens("s") == tokens);
  }
  auto store = OpenOrDie(dir.path);
  auto rec = store->Recover(new_model.Hash());
  REQUIRE(rec.ok());
  CHECK(rec->stale == std::vector<std::string>{"other"});
  CHECK(rec->unfinished == std::vector<std::string>{"s", "other"});
  auto other = *store->GetRecord("other");
  CHECK(other.state == ContextState::kQueued);
  CHECK(Contains(other.error, "model fingerprint 000000000000002a differs"));
  CHECK(store->Recover(new_model.Hash())->stale.empty());
}

TEST_CASE("concurrent registrations, updates and deletions of different contexts") {
  TempDir dir;
  auto store = OpenOrDie(dir.path);
  const ContextSnapshot snap = MakeSnapshot(16, 64, 1, 1, 4);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        const std::string id = "t" + std::to_string(t) + "-" + std::to_string(i);
        const std::vector<int32_t> tokens(static_cast<size_t>(i + 1), t);
        ContextRecord r = Record(id, tokens);
        Status s = store->CreateRecord(r, tokens);
        if (s.ok()) s = store->UpdateState(id, ContextState::kPersisting, 0.5, "", false);
        if (s.ok()) s = store->PutSnapshot(snap, &r);
        if (s.ok()) s = store->CommitReady(r);
        if (s.ok() && i % 2 == 1) s = store->Delete(id);
        if (!s.ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  auto all = store->List(1000, "");
  REQUIRE(all.ok());
  CHECK(all->records.size() == 20);
  for (const auto& r : all->records) {
    CHECK(r.state == ContextState::kReady);
    CHECK(*store->LoadSnapshot(r) == snap);
  }
}

}  // namespace
}  // namespace sqz
