// ContextSnapshot: everything about a registered fixed context that does not depend on the user's
// input (ALGORITHM.md, "Offline, per registered context"): its post-RoPE KV split into sink, window
// and a cluster-ordered body, the centroid index over the body keys, and calibrated thresholds.
//
// This is the unit that storage/ persists (one blob per (layer, kv head) plus a small meta part),
// that the GPU backend uploads, and that ContextAttention implementations read. Plain data: flat
// contiguous vectors with documented shapes, no pointers, equality comparable, copyable. A snapshot
// is immutable once built; many requests may read one snapshot concurrently (const access only).
//
// Notation used in the shapes below, per snapshot:
//   d  = dims.head_dim
//   S  = dims.sink_len,   W = dims.window_len,   B = dims.body_len   (S + B + W = dims.n_tokens)
//   k  = number of fine clusters of a head (HeadIndex::counts.size(), the same for every head)
//   k1 = number of coarse clusters (0 when the coarse level is off)
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace sqz {

// How the probabilities of the g = q_heads / kv_heads query heads of one KV head are combined into
// one estimate per cluster (ALGORITHM.md, online step 3).
enum class GqaReduce : int32_t {
  kMax = 0,   // a cluster matters if it matters to any query head of the group (default)
  kMean = 1,  // average over the group
};
inline constexpr int kNumGqaReduce = 2;

// Ingestion-time options of Squeezed Attention (defaults: ALGORITHM.md and engine/options.h).
struct SqueezeOptions {
  // First positions of the context, always attended (attention sinks).
  int64_t sink_tokens = 4;
  // Last positions of the context, always attended; their queries calibrate the thresholds.
  int64_t observation_window = 100;
  // Fine clusters per (layer, kv head) = max(1, round(centroid_fraction * body_len)). More
  // centroids predict importance better but cost more lookup work (each costs half a key read).
  double centroid_fraction = 0.05;
  // Coarse clusters = round(coarse_fraction * body_len); <= 0 (or fewer than 2 fine clusters)
  // disables the coarse level.
  double coarse_fraction = 0.01;
  // Lloyd iterations at most, and the early stop: stop when fewer than kmeans_tolerance * body_len
  // keys change cluster in an iteration.
  int32_t kmeans_iterations = 20;
  double kmeans_tolerance = 1e-3;
  uint64_t kmeans_seed = 1234;
  // Dense prefill chunk during ingestion (tokens per backend Forward call).
  int64_t prefill_chunk_tokens = 256;

  Status Validate() const;
  bool operator==(const SqueezeOptions&) const = default;
};

// Index and KV of one (layer, kv head).
struct HeadIndex {
  std::vector<float> sink_k;            // [S][d]  positions 0 .. S-1
  std::vector<float> sink_v;            // [S][d]
  std::vector<float> window_k;          // [W][d]  positions n_tokens-W .. n_tokens-1
  std::vector<float> window_v;          // [W][d]
  std::vector<float> body_k;            // [B][d]  in cluster order: rows of cluster c are
  std::vector<float> body_v;            // [B][d]    offsets[c] .. offsets[c+1]-1
  std::vector<int32_t> body_positions;  // [B] original context position of each body row
  std::vector<float> centroids;         // [k][d]  mean of the raw (un-normalised) member keys
  std::vector<int32_t> counts;          // [k]     members per cluster, all >= 1
  std::vector<int32_t> offsets;         // [k+1]   CSR: offsets[0] = 0, offsets[k] = B
  // Coarse level (empty when off): coarse centroids cluster the fine centroids.
  std::vector<float> coarse_centroids;  // [k1][d] mean of the raw keys under the group
  std::vector<int32_t> coarse_offsets;  // [k1+1]  CSR into coarse_members
  std::vector<int32_t> coarse_members;  // [k]     fine cluster ids grouped by coarse parent

  bool operator==(const HeadIndex&) const = default;
};

struct SnapshotDims {
  int32_t layers = 0;
  int32_t kv_heads = 0;
  int32_t q_heads = 0;  // a multiple of kv_heads (GQA group g = q_heads / kv_heads)
  int32_t head_dim = 0;
  int64_t n_tokens = 0;  // context length
  int64_t sink_len = 0;
  int64_t window_len = 0;
  int64_t body_len = 0;

  bool operator==(const SnapshotDims&) const = default;
};

// The sparsity grid of calibrated thresholds: 0.50, 0.55, ..., 0.95.
inline constexpr int kNumSparsities = 10;
inline constexpr double SparsityAt(int i) { return 0.5 + 0.05 * i; }

struct ContextSnapshot {
  // Bumped when the meaning or layout of any field changes; storage refuses other versions.
  static constexpr int32_t kFormatVersion = 1;

  int32_t format_version = kFormatVersion;
  SnapshotDims dims;
  SqueezeOptions options;  // the options the snapshot was built with
  // [layers * kv_heads], index layer * kv_heads + kv_head.
  std::vector<HeadIndex> heads;
  // Thresholds on the per-key probability estimate p[c]: keeping clusters with p[c] > T keeps
  // (about) a share 1 - s of body keys on the calibration queries, for sparsity s = SparsityAt(i).
  std::vector<float> thresholds_global;  // [kNumGqaReduce][kNumSparsities]
  std::vector<float> thresholds_layer;   // [kNumGqaReduce][layers][kNumSparsities]

  const HeadIndex& head(int layer, int kv_head) const {
    return heads[static_cast<size_t>(layer) * dims.kv_heads + kv_head];
  }
  float threshold_global(GqaReduce r, int s) const {
    return thresholds_global[static_cast<size_t>(r) * kNumSparsities + s];
  }
  float threshold_layer(GqaReduce r, int layer, int s) const {
    return thresholds_layer[(static_cast<size_t>(r) * dims.layers + layer) * kNumSparsities + s];
  }

  bool operator==(const ContextSnapshot&) const = default;
};

// Checks every size and invariant of the snapshot (shapes, CSR offsets monotone and consistent with
// counts, positions a permutation of the body range, every value finite). Storage calls it after a
// load; INVALID_ARGUMENT (or DATA_LOSS from the caller) with a message naming the (layer, head).
Status ValidateSnapshot(const ContextSnapshot& snapshot);

// Bytes of the snapshot's payload (all vectors), for memory budgets.
int64_t SnapshotBytes(const ContextSnapshot& snapshot);

}  // namespace sqz
