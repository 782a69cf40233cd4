// Helpers for the storage tests (storage/*_test.cc, tests/storage/): a temporary directory, real
// snapshots built by the squeeze index builder from seeded random K/V, and records.
#pragma once

#include <filesystem>
#include <random>
#include <span>
#include <string>

#include "engine/squeeze/index_builder.h"
#include "storage/context_store.h"

namespace sqz::testing {

// A fresh directory under the system temp dir, removed with everything in it on destruction.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("sqz-store-test-" + std::to_string(std::random_device{}()) + "-" +
            std::to_string(reinterpret_cast<uintptr_t>(this)));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

inline StoreOptions Options(const std::filesystem::path& p) {
  StoreOptions o;
  o.path = p.string();
  o.blob_min_bytes = 64;  // every kv/index blob goes to BlobDB files
  return o;
}

inline std::unique_ptr<ContextStore> OpenOrDie(const std::filesystem::path& p) {
  auto s = ContextStore::Open(Options(p));
  SQZ_CHECK(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

// A snapshot of a context of n tokens with random post-RoPE K/V (normal, seeded), built by the
// real index builder (sink, window, k-means body, coarse level, thresholds).
inline ContextSnapshot MakeSnapshot(uint32_t seed, int64_t n = 300, int32_t layers = 2,
                                    int32_t kv_heads = 2, int32_t head_dim = 8) {
  CapturedContext c;
  c.layers = layers;
  c.kv_heads = kv_heads;
  c.q_heads = 2 * kv_heads;
  c.head_dim = head_dim;
  c.n_tokens = n;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  SqueezeOptions o;
  o.observation_window = 16;
  c.k.resize(static_cast<size_t>(c.layers) * n * c.kv_heads * c.head_dim);
  c.v.resize(c.k.size());
  c.window_q.resize(static_cast<size_t>(c.layers) * WindowLength(n, o) * c.q_heads * c.head_dim);
  for (auto* v : {&c.k, &c.v, &c.window_q}) {
    for (auto& x : *v) x = dist(rng);
  }
  auto snap = BuildSnapshot(c, o);
  SQZ_CHECK(snap.ok()) << snap.status().ToString();
  return std::move(snap).value();
}

inline ContextRecord Record(const std::string& id, std::span<const int32_t> tokens) {
  ContextRecord r;
  r.id = id;
  r.token_count = static_cast<int64_t>(tokens.size());
  r.content_digest = TokenDigest(tokens);
  r.model_fingerprint = 42;
  r.owner = "alice";
  r.labels = {{"team", "docs"}};
  return r;
}

// Registers `id`, writes `snap` and commits it READY. Returns the committed record.
inline ContextRecord StoreReady(ContextStore* store, const std::string& id,
                                const ContextSnapshot& snap, std::span<const int32_t> tokens) {
  ContextRecord r = Record(id, tokens);
  Status s = store->CreateRecord(r, tokens);
  if (s.ok()) s = store->PutSnapshot(snap, &r);
  if (s.ok()) s = store->CommitReady(r);
  SQZ_CHECK(s.ok()) << s.ToString();
  auto got = store->GetRecord(id);
  SQZ_CHECK(got.ok()) << got.status().ToString();
  return std::move(got).value();
}

}  // namespace sqz::testing
