#include "tests/durability/snapshot_digest.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace sqz::durability {
namespace {

// A snapshot with seeded random contents; shapes need not satisfy ValidateSnapshot (the digest
// covers whatever the struct holds). `n` sets the per-head vector lengths.
ContextSnapshot RandomSnapshot(uint32_t seed, int layers, int kv_heads, int n) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> f(0.f, 1.f);
  std::uniform_int_distribution<int32_t> i(0, 1000);
  auto floats = [&](int count) {
    std::vector<float> v(count);
    for (auto& x : v) x = f(rng);
    return v;
  };
  auto ints = [&](int count) {
    std::vector<int32_t> v(count);
    for (auto& x : v) x = i(rng);
    return v;
  };
  ContextSnapshot s;
  s.dims = {layers, kv_heads, 2 * kv_heads, 3, 3 * n + 7, n, n, n};
  s.options.kmeans_seed = seed;
  for (int h = 0; h < layers * kv_heads; ++h) {
    HeadIndex x;
    x.sink_k = floats(n), x.sink_v = floats(n), x.window_k = floats(n), x.window_v = floats(n);
    x.body_k = floats(n), x.body_v = floats(n), x.body_positions = ints(n);
    x.centroids = floats(n), x.counts = ints(n), x.offsets = ints(n + 1);
    x.coarse_centroids = floats(n), x.coarse_offsets = ints(n), x.coarse_members = ints(n);
    s.heads.push_back(std::move(x));
  }
  s.thresholds_global = floats(kNumGqaReduce * kNumSparsities);
  s.thresholds_layer = floats(kNumGqaReduce * layers * kNumSparsities);
  return s;
}

TEST_CASE("equal snapshots have equal digests, across copies and seeds reused") {
  for (int n : {1, 3, 127, 129}) {
    const ContextSnapshot a = RandomSnapshot(7 + n, 2, 3, n);
    const ContextSnapshot b = RandomSnapshot(7 + n, 2, 3, n);
    REQUIRE(a == b);
    CHECK(SnapshotDigest(a) == SnapshotDigest(b));
    const ContextSnapshot copy = a;
    CHECK(SnapshotDigestHex(copy) == SnapshotDigestHex(a));
    CHECK(SnapshotDigestHex(a).size() == 16);
  }
}

TEST_CASE("different snapshots have different digests") {
  std::set<uint64_t> seen;
  for (uint32_t seed = 1; seed <= 200; ++seed) {
    seen.insert(SnapshotDigest(RandomSnapshot(seed, 1, 1, 3)));
  }
  CHECK(seen.size() == 200);
  // The empty snapshot is not the digest of nothing at all either.
  CHECK(SnapshotDigest(ContextSnapshot{}) != SnapshotDigest(RandomSnapshot(1, 1, 1, 1)));
}

TEST_CASE("every field and every element reaches the digest") {
  const ContextSnapshot base = RandomSnapshot(42, 3, 2, 5);
  const uint64_t d0 = SnapshotDigest(base);
  // One mutation per field; each must change the digest.
  std::vector<std::pair<std::string, std::function<void(ContextSnapshot&)>>> mutations = {
      {"format_version", [](ContextSnapshot& s) { s.format_version += 1; }},
      {"dims.layers", [](ContextSnapshot& s) { s.dims.layers += 1; }},
      {"dims.kv_heads", [](ContextSnapshot& s) { s.dims.kv_heads += 1; }},
      {"dims.q_heads", [](ContextSnapshot& s) { s.dims.q_heads += 1; }},
      {"dims.head_dim", [](ContextSnapshot& s) { s.dims.head_dim += 1; }},
      {"dims.n_tokens", [](ContextSnapshot& s) { s.dims.n_tokens += 1; }},
      {"dims.sink_len", [](ContextSnapshot& s) { s.dims.sink_len += 1; }},
      {"dims.window_len", [](ContextSnapshot& s) { s.dims.window_len += 1; }},
      {"dims.body_len", [](ContextSnapshot& s) { s.dims.body_len += 1; }},
      {"options.sink_tokens", [](ContextSnapshot& s) { s.options.sink_tokens += 1; }},
      {"options.observation_window", [](ContextSnapshot& s) { s.options.observation_window += 1; }},
      {"options.centroid_fraction",
       [](ContextSnapshot& s) { s.options.centroid_fraction += 1e-9; }},
      {"options.coarse_fraction", [](ContextSnapshot& s) { s.options.coarse_fraction = -1; }},
      {"options.kmeans_iterations", [](ContextSnapshot& s) { s.options.kmeans_iterations += 1; }},
      {"options.kmeans_tolerance", [](ContextSnapshot& s) { s.options.kmeans_tolerance *= 2; }},
      {"options.kmeans_seed", [](ContextSnapshot& s) { s.options.kmeans_seed += 1; }},
      {"options.prefill_chunk_tokens",
       [](ContextSnapshot& s) { s.options.prefill_chunk_tokens += 1; }},
      {"heads dropped", [](ContextSnapshot& s) { s.heads.pop_back(); }},
      {"heads swapped", [](ContextSnapshot& s) { std::swap(s.heads[0], s.heads[1]); }},
      {"thresholds_global", [](ContextSnapshot& s) { s.thresholds_global[19] += 1e-6f; }},
      {"thresholds_layer", [](ContextSnapshot& s) { s.thresholds_layer[0] = -0.0f; }},
      // Framing: the same values split differently between two vectors.
      {"value moved between vectors",
       [](ContextSnapshot& s) {
         auto& x = s.heads[2];
         x.sink_v.insert(x.sink_v.begin(), x.sink_k.back());
         x.sink_k.pop_back();
       }},
  };
  using Floats = std::vector<float> HeadIndex::*;
  using Ints = std::vector<int32_t> HeadIndex::*;
  const std::vector<std::pair<std::string, Floats>> float_fields = {
      {"sink_k", &HeadIndex::sink_k},       {"sink_v", &HeadIndex::sink_v},
      {"window_k", &HeadIndex::window_k},   {"window_v", &HeadIndex::window_v},
      {"body_k", &HeadIndex::body_k},       {"body_v", &HeadIndex::body_v},
      {"centroids", &HeadIndex::centroids}, {"coarse_centroids", &HeadIndex::coarse_centroids}};
  const std::vector<std::pair<std::string, Ints>> int_fields = {
      {"body_positions", &HeadIndex::body_positions},
      {"counts", &HeadIndex::counts},
      {"offsets", &HeadIndex::offsets},
      {"coarse_offsets", &HeadIndex::coarse_offsets},
      {"coarse_members", &HeadIndex::coarse_members}};
  // Every element of every per-head vector, in the first, a middle and the last head.
  for (size_t head : {size_t{0}, size_t{3}, base.heads.size() - 1}) {
    for (const auto& [name, field] : float_fields) {
      for (size_t k = 0; k < (base.heads[head].*field).size(); ++k) {
        mutations.push_back({name + "[" + std::to_string(k) + "] of head " + std::to_string(head),
                             [head, field, k](ContextSnapshot& s) {
                               float& v = (s.heads[head].*field)[k];
                               v = std::nextafter(v, 1e30f);  // one ulp
                             }});
      }
    }
    for (const auto& [name, field] : int_fields) {
      for (size_t k = 0; k < (base.heads[head].*field).size(); ++k) {
        mutations.push_back(
            {name + "[" + std::to_string(k) + "] of head " + std::to_string(head),
             [head, field, k](ContextSnapshot& s) { (s.heads[head].*field)[k] ^= 1 << 20; }});
      }
    }
  }
  std::set<uint64_t> digests = {d0};
  for (const auto& [name, mutate] : mutations) {
    ContextSnapshot s = base;
    mutate(s);
    INFO(name);
    REQUIRE_FALSE(s == base);
    const uint64_t d = SnapshotDigest(s);
    CHECK(d != d0);
    digests.insert(d);
  }
  CHECK(digests.size() == mutations.size() + 1);  // no two mutations collide either
}

TEST_CASE("floats are compared by their bits") {
  ContextSnapshot a = RandomSnapshot(3, 1, 1, 1);
  ContextSnapshot b = a;
  a.heads[0].body_k[0] = 0.0f;
  b.heads[0].body_k[0] = -0.0f;
  CHECK(SnapshotDigest(a) != SnapshotDigest(b));
  a.heads[0].body_k[0] = std::nanf("1");
  b.heads[0].body_k[0] = std::nanf("2");
  CHECK(SnapshotDigest(a) != SnapshotDigest(b));
}

}  // namespace
}  // namespace sqz::durability
