// ContextAttention over a ContextSnapshot, in two modes (ALGORITHM.md, online steps):
//   DENSE:    every context key (sink, whole body, window) — the exact reference;
//   SQUEEZED: sink + window + the body clusters that the centroid lookup selects, per KV head and
//             per block of query tokens: the tokens of one Attend call whose request positions
//             fall in the same block_size-aligned block share one selection (probability estimates
//             averaged over them). A block split across two calls (prefill chunks) gets one
//             selection per part, so squeezed results are not chunk invariant; dense ones are.
// Both produce exact partial results (o, m, l) over the keys they read, for the forward pass to
// merge. With kv_budget = 1 (or a threshold below every estimate) SQUEEZED reads every key, in the
// same order as DENSE, and equals it.
//
// Ownership: an instance borrows the snapshot, which must outlive it; instances are cheap (one per
// request). Thread safety: Attend is const and may run concurrently (for different layers or
// requests); the usage counters are atomics.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/model/context_attention.h"
#include "engine/squeeze/selection.h"
#include "engine/squeeze/snapshot.h"

namespace sqz {

enum class AttentionMode : int32_t { kDense = 0, kSqueezed = 1 };

// Per-request attention options (engine/options.h SqueezeDefaults holds the server defaults).
struct AttentionOptions {
  AttentionMode mode = AttentionMode::kSqueezed;
  SelectionPolicy policy = SelectionPolicy::kBudget;
  // Budget policy: share of body keys read, in [0, 1]. 1 reads everything (== DENSE).
  double kv_budget = 0.125;
  // Threshold policy: target sparsity in [0.5, 0.95]; thresholds between the calibrated grid points
  // are interpolated linearly.
  double sparsity = 0.7;
  // Threshold policy: per-layer thresholds (true) or the global ones.
  bool per_layer_thresholds = true;
  GqaReduce gqa_reduce = GqaReduce::kMax;
  // Query tokens per selection block in prefill (>= 1). Larger blocks amortise the lookup but fit
  // each token's needs less closely. Decode steps (one token) select per token.
  int64_t block_size = 64;
  // Two-level lookup (needs a coarse level in the snapshot; ignored without one).
  bool hierarchical = false;
  // Hierarchical: coarse groups kept cover coarse_expansion times the share of keys the fine step
  // is expected to keep (kv_budget, or 1 - sparsity). Larger is closer to flat, slower.
  double coarse_expansion = 2.0;

  Status Validate() const;
};

// Fixed-context keys read by a request so far. Centroids scored count as half a key each (values
// have none); DENSE reads every key once per (token, layer, kv head).
struct KeyUsage {
  double keys_read = 0.0;   // summed over (token, layer, kv head)
  double keys_total = 0.0;  // context keys summed likewise
  double share() const { return keys_total > 0.0 ? keys_read / keys_total : 0.0; }
};

class SnapshotAttention : public ContextAttention {
 public:
  explicit SnapshotAttention(const ContextSnapshot& snapshot) : snapshot_(snapshot) {}
  SnapshotAttention(const SnapshotAttention&) = delete;
  SnapshotAttention& operator=(const SnapshotAttention&) = delete;

  int64_t length() const override { return snapshot_.dims.n_tokens; }
  KeyUsage usage() const;
  const ContextSnapshot& snapshot() const { return snapshot_; }
  // Adds half-keys read and keys total of a set of (token, layer, kv head) events. Attend counts
  // its own; a backend that attends to the snapshot elsewhere (the GPU) counts what it read here.
  void CountUsage(int64_t half_keys_read, int64_t keys_total) const;

 protected:
  const ContextSnapshot& snapshot_;

 private:
  mutable std::atomic<int64_t> half_keys_read_{0};
  mutable std::atomic<int64_t> keys_total_{0};
};

class DenseContextAttention : public SnapshotAttention {
 public:
  explicit DenseContextAttention(const ContextSnapshot& snapshot) : SnapshotAttention(snapshot) {}
  void Attend(int layer, const float* q, int64_t n_tokens, int64_t first_pos, float* out,
              cpu::AttentionPartial* stats) const override;
};

class SqueezedContextAttention : public SnapshotAttention {
 public:
  // Use MakeContextAttention (it validates the options against the snapshot).
  SqueezedContextAttention(const ContextSnapshot& snapshot, const AttentionOptions& options);
  void Attend(int layer, const float* q, int64_t n_tokens, int64_t first_pos, float* out,
              cpu::AttentionPartial* stats) const override;

  // The selection parameters used for one layer (threshold resolved), for tools and tests.
  SelectionParams ParamsForLayer(int layer) const;
  const AttentionOptions& options() const { return options_; }

  // The selections Attend makes for these arguments: blocks receives the [t0, t1) token ranges of
  // the call that share a selection; selections one result per (block, kv head), block-major.
  void Select(int layer, const float* q, int64_t n_tokens, int64_t first_pos,
              std::vector<std::pair<int64_t, int64_t>>* blocks,
              std::vector<SelectionResult>* selections) const;

 private:
  AttentionOptions options_;
};

// DENSE or SQUEEZED per options.mode. INVALID_ARGUMENT for bad options.
StatusOr<std::unique_ptr<SnapshotAttention>> MakeContextAttention(const ContextSnapshot& snapshot,
                                                                  const AttentionOptions& options);

// Threshold for a sparsity in [0.5, 0.95] (linear interpolation on the grid); layer < 0 = global.
float ThresholdForSparsity(const ContextSnapshot& snapshot, GqaReduce reduce, int layer,
                           double sparsity);

}  // namespace sqz
