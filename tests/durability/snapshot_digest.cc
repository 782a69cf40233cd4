#include "tests/durability/snapshot_digest.h"

#include <cstdio>
#include <cstring>
#include <vector>

namespace sqz::durability {
namespace {

// FNV-1a over bytes, with a final avalanche (splitmix64) so that nearby inputs spread.
class Digest {
 public:
  void Bytes(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ p[i]) * 0x100000001b3ULL;
  }
  template <typename T>
  void Value(const T& v) {
    Bytes(&v, sizeof(v));
  }
  template <typename T>
  void Vector(const std::vector<T>& v) {
    Value(static_cast<uint64_t>(v.size()));
    Bytes(v.data(), v.size() * sizeof(T));
  }
  uint64_t Final() const {
    uint64_t z = h_ + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

}  // namespace

uint64_t SnapshotDigest(const ContextSnapshot& s) {
  Digest d;
  d.Value(s.format_version);
  const SnapshotDims& m = s.dims;
  for (int64_t v : {int64_t{m.layers}, int64_t{m.kv_heads}, int64_t{m.q_heads}, int64_t{m.head_dim},
                    m.n_tokens, m.sink_len, m.window_len, m.body_len}) {
    d.Value(v);
  }
  const SqueezeOptions& o = s.options;
  d.Value(o.sink_tokens), d.Value(o.observation_window), d.Value(o.centroid_fraction);
  d.Value(o.coarse_fraction), d.Value(o.kmeans_iterations), d.Value(o.kmeans_tolerance);
  d.Value(o.kmeans_seed), d.Value(o.prefill_chunk_tokens);
  d.Value(static_cast<uint64_t>(s.heads.size()));
  for (const HeadIndex& x : s.heads) {
    d.Vector(x.sink_k), d.Vector(x.sink_v), d.Vector(x.window_k), d.Vector(x.window_v);
    d.Vector(x.body_k), d.Vector(x.body_v), d.Vector(x.body_positions), d.Vector(x.centroids);
    d.Vector(x.counts), d.Vector(x.offsets), d.Vector(x.coarse_centroids);
    d.Vector(x.coarse_offsets), d.Vector(x.coarse_members);
  }
  d.Vector(s.thresholds_global);
  d.Vector(s.thresholds_layer);
  return d.Final();
}

std::string SnapshotDigestHex(const ContextSnapshot& snapshot) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx",
                static_cast<unsigned long long>(SnapshotDigest(snapshot)));
  return buf;
}

}  // namespace sqz::durability
