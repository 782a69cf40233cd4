#include "storage/context_store.h"

#include <rocksdb/db.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/squeeze/index_builder.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("sqz-store-test-" + std::to_string(std::random_device{}()) + "-" +
            std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

StoreOptions Options(const fs::path& p) {
  StoreOptions o;
  o.path = p.string();
  o.blob_min_bytes = 64;
  return o;
}

ContextSnapshot MakeSnapshot(uint32_t seed, int64_t n = 300) {
  CapturedContext c;
  c.layers = 2;
  c.kv_heads = 2;
  c.q_heads = 4;
  c.head_dim = 8;
  c.n_tokens = n;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  SqueezeOptions o;
  o.observation_window = 16;
  c.k.resize(c.layers * n * c.kv_heads * c.head_dim);
  c.v.resize(c.k.size());
  c.window_q.resize(c.layers * WindowLength(n, o) * c.q_heads * c.head_dim);
  for (auto* v : {&c.k, &c.v, &c.window_q}) {
    for (auto& x : *v) x = dist(rng);
  }
  return std::move(BuildSnapshot(c, o)).value();
}

ContextRecord Record(const std::string& id, std::span<const int32_t> tokens) {
  ContextRecord r;
  r.id = id;
  r.token_count = static_cast<int64_t>(tokens.size());
  r.content_digest = TokenDigest(tokens);
  r.model_fingerprint = 42;
  r.owner = "alice";
  r.labels = {{"team", "docs"}};
  return r;
}

TEST_CASE("records, tokens and snapshots round-trip across reopen") {
  TempDir dir;
  const std::vector<int32_t> tokens = {1, 5, 9, 300, 7};
  const ContextSnapshot snap = MakeSnapshot(1);
  {
    auto store = std::move(ContextStore::Open(Options(dir.path))).value();
    ContextRecord r = Record("manual", tokens);
    REQUIRE(store->CreateRecord(r, tokens).ok());
    CHECK(store->CreateRecord(r, tokens).code() == StatusCode::kAlreadyExists);
    REQUIRE(store->PutSnapshot(snap, &r).ok());
    CHECK(r.manifest.size() == 1 + 2 * 2 * 2);
    CHECK(r.stored_bytes > SnapshotBytes(snap) / 2);
    REQUIRE(store->CommitReady(r).ok());
  }
  auto store = std::move(ContextStore::Open(Options(dir.path))).value();
  auto r = store->GetRecord("manual");
  REQUIRE(r.ok());
  CHECK(r->state == ContextState::kReady);
  CHECK(r->labels.at("team") == "docs");
  CHECK(r->content_digest == TokenDigest(tokens));
  CHECK(*store->LoadTokens("manual") == tokens);
  auto loaded = store->LoadSnapshot(*r);
  REQUIRE(loaded.ok());
  CHECK(*loaded == snap);
  CHECK(store->GetRecord("nope").status().code() == StatusCode::kNotFound);
  CHECK(store->DiskBytes() > 0);
}

TEST_CASE("a context is READY only after CommitReady; unfinished ones are reported on recovery") {
  TempDir dir;
  const std::vector<int32_t> tokens = {1, 2, 3};
  {
    auto store = std::move(ContextStore::Open(Options(dir.path))).value();
    ContextRecord r = Record("half", tokens);
    REQUIRE(store->CreateRecord(r, tokens).ok());
    r.state = ContextState::kPersisting;
    REQUIRE(store->UpdateRecord(r, true).ok());
    REQUIRE(store->PutSnapshot(MakeSnapshot(2), &r).ok());
    // "crash" before CommitReady
  }
  auto store = std::move(ContextStore::Open(Options(dir.path))).value();
  auto r = store->GetRecord("half");
  REQUIRE(r.ok());
  CHECK(r->state == ContextState::kPersisting);
  CHECK(store->LoadSnapshot(*r).status().code() == StatusCode::kFailedPrecondition);
  auto rec = store->Recover();
  REQUIRE(rec.ok());
  CHECK(rec->unfinished == std::vector<std::string>{"half"});
  CHECK(*store->LoadTokens("half") == tokens);  // re-ingestion has what it needs
}

TEST_CASE("deletion removes everything and a crash mid-deletion never resurrects the context") {
  TempDir dir;
  const std::vector<int32_t> tokens = {4, 5};
  {
    auto store = std::move(ContextStore::Open(Options(dir.path))).value();
    for (const char* id : {"a", "b"}) {
      ContextRecord r = Record(id, tokens);
      REQUIRE(store->CreateRecord(r, tokens).ok());
      REQUIRE(store->PutSnapshot(MakeSnapshot(3), &r).ok());
      REQUIRE(store->CommitReady(r).ok());
    }
    REQUIRE(store->Delete("a").ok());
    CHECK(store->GetRecord("a").status().code() == StatusCode::kNotFound);
    CHECK(store->LoadTokens("a").status().code() == StatusCode::kNotFound);
    CHECK(store->Delete("a").code() == StatusCode::kNotFound);
    // Simulate a crash right after the DELETING mark of "b".
    auto b = *store->GetRecord("b");
    b.state = ContextState::kDeleting;
    REQUIRE(store->UpdateRecord(b, true).ok());
    auto listed = store->List(10, "", std::nullopt, std::nullopt);
    CHECK(listed->records.empty());  // DELETING is never listed
  }
  auto store = std::move(ContextStore::Open(Options(dir.path))).value();
  auto rec = store->Recover();
  REQUIRE(rec.ok());
  CHECK(rec->finished_deletes == std::vector<std::string>{"b"});
  CHECK(store->GetRecord("b").status().code() == StatusCode::kNotFound);
  CHECK(store->LoadTokens("b").status().code() == StatusCode::kNotFound);
}

TEST_CASE("listing pages in id order with state and owner filters") {
  TempDir dir;
  auto store = std::move(ContextStore::Open(Options(dir.path))).value();
  const std::vector<int32_t> tokens = {1};
  for (int i = 0; i < 7; ++i) {
    ContextRecord r = Record("c" + std::to_string(i), tokens);
    r.owner = i % 2 ? "bob" : "alice";
    r.state = i < 3 ? ContextState::kReady : ContextState::kQueued;
    REQUIRE(store->CreateRecord(r, tokens).ok());
  }
  std::vector<std::string> seen;
  std::string token;
  do {
    auto page = store->List(3, token, std::nullopt, std::nullopt);
    REQUIRE(page.ok());
    CHECK(page->records.size() <= 3);
    for (auto& r : page->records) seen.push_back(r.id);
    token = page->next_page_token;
  } while (!token.empty());
  CHECK(seen == std::vector<std::string>{"c0", "c1", "c2", "c3", "c4", "c5", "c6"});
  CHECK(store->List(100, "", ContextState::kReady, std::nullopt)->records.size() == 3);
  CHECK(store->List(100, "", std::nullopt, std::string("bob"))->records.size() == 3);
}

TEST_CASE("a store written by a newer format version is refused") {
  TempDir dir;
  { REQUIRE(ContextStore::Open(Options(dir.path)).ok()); }
  {
    rocksdb::DB* db = nullptr;
    rocksdb::Options o;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const char* n : {"default", "records", "tokens", "kv", "index"}) {
      cfs.push_back({n, rocksdb::ColumnFamilyOptions()});
    }
    std::vector<rocksdb::ColumnFamilyHandle*> hs;
    REQUIRE(rocksdb::DB::Open(o, dir.path.string(), cfs, &hs, &db).ok());
    REQUIRE(db->Put(rocksdb::WriteOptions(), hs[0], "__format_version__", "99").ok());
    for (auto* h : hs) (void)db->DestroyColumnFamilyHandle(h);
    delete db;
  }
  auto s = ContextStore::Open(Options(dir.path));
  CHECK(s.status().code() == StatusCode::kFailedPrecondition);
  CHECK(s.status().message().find("format version 99") != std::string::npos);
}

TEST_CASE("an open store cannot be opened twice") {
  TempDir dir;
  auto a = ContextStore::Open(Options(dir.path));
  REQUIRE(a.ok());
  CHECK(ContextStore::Open(Options(dir.path)).status().code() == StatusCode::kUnavailable);
}

// Flips one byte at `offset` of `file` in a copy of the database and tries to load the snapshot.
Status LoadWithFlip(const fs::path& golden, const fs::path& file, uint64_t offset) {
  TempDir copy;
  fs::copy(golden, copy.path, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const fs::path target = copy.path / file.filename();
  {
    std::fstream f(target, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(offset);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(offset);
    f.write(&c, 1);
  }
  auto store = ContextStore::Open(Options(copy.path));
  if (!store.ok()) return store.status();
  auto r = (*store)->GetRecord("ctx");
  if (!r.ok()) return r.status();
  return (*store)->LoadSnapshot(*r).status();
}

TEST_CASE("flipping bytes in the blob files is detected on load, every time") {
  TempDir dir;
  const ContextSnapshot snap = MakeSnapshot(4, 600);
  {
    auto store = std::move(ContextStore::Open(Options(dir.path))).value();
    const std::vector<int32_t> tokens(600, 3);
    ContextRecord r = Record("ctx", tokens);
    REQUIRE(store->CreateRecord(r, tokens).ok());
    REQUIRE(store->PutSnapshot(snap, &r).ok());
    REQUIRE(store->CommitReady(r).ok());
  }
  std::vector<fs::path> blobs;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    if (e.path().extension() == ".blob") blobs.push_back(e.path());
  }
  // A clean reopen loads; the blobs live in BlobDB files (the values are large).
  {
    auto store = std::move(ContextStore::Open(Options(dir.path))).value();
    REQUIRE(store->LoadSnapshot(*store->GetRecord("ctx")).ok());
  }
  REQUIRE_FALSE(blobs.empty());  // CommitReady flushed the values into BlobDB files
  std::mt19937_64 rng(5);
  int trials = 0;
  for (const auto& b : blobs) {
    const uint64_t size = fs::file_size(b);
    for (int i = 0; i < 40; ++i, ++trials) {
      const uint64_t off = rng() % size;
      const Status s = LoadWithFlip(dir.path, b, off);
      INFO("flip at " << off << " of " << b.filename() << " (" << size << " bytes)");
      CHECK_FALSE(s.ok());
    }
  }
  CHECK(trials >= 40);
}

}  // namespace
}  // namespace sqz
