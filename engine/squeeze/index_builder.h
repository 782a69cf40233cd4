// Builds a ContextSnapshot from a context's captured post-RoPE K/V and its window queries
// (ALGORITHM.md, offline steps 2-6): split into sink / body / window, spherical k-means of the body
// keys per (layer, kv head), re-layout of the body KV in cluster order with CSR offsets, the coarse
// level, and threshold calibration. Thread safety: pure functions (OpenMP inside k-means).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "common/status.h"
#include "engine/squeeze/snapshot.h"

namespace sqz {

// What ingestion captures from the dense prefill of a context.
struct CapturedContext {
  int32_t layers = 0;
  int32_t kv_heads = 0;
  int32_t q_heads = 0;
  int32_t head_dim = 0;
  int64_t n_tokens = 0;
  std::vector<float> k;  // [layers][n_tokens][kv_heads][head_dim] post-RoPE keys
  std::vector<float> v;  // [layers][n_tokens][kv_heads][head_dim] values
  // Post-RoPE queries of the last window_len tokens (WindowLength below), the calibration queries.
  std::vector<float> window_q;  // [layers][window_len][q_heads][head_dim]
};

// Stages reported by ingestion (in time order), with the fraction done within the stage.
enum class IngestStage : int32_t { kPrefilling = 0, kClustering = 1, kCalibrating = 2 };
using IngestProgress = std::function<void(IngestStage stage, double fraction)>;

// Split of a context of n tokens: sink_len = min(sink_tokens, n), window_len =
// min(observation_window, n - sink_len), body = the rest.
int64_t SinkLength(int64_t n_tokens, const SqueezeOptions& options);
int64_t WindowLength(int64_t n_tokens, const SqueezeOptions& options);

// Fine clusters per head for a body of body_len keys: clamp(round(centroid_fraction * body_len), 1,
// body_len) (0 for an empty body); coarse clusters: round(coarse_fraction * body_len) when that is
// in [2, fine), else 0 (off).
int64_t FineClusters(int64_t body_len, const SqueezeOptions& options);
int64_t CoarseClusters(int64_t body_len, const SqueezeOptions& options);

// Checks a capture against the split `options` implies: positive dims with q_heads a multiple of
// kv_heads, n_tokens >= 1, K/V and window-query sizes, finite values. INVALID_ARGUMENT naming what
// is wrong. (BuildSnapshot and the GPU index builder both start with it.)
Status ValidateCaptured(const CapturedContext& captured, const SqueezeOptions& options);

// INVALID_ARGUMENT for inconsistent shapes, non-finite values or bad options. progress (may be
// empty) is called with kClustering and kCalibrating fractions.
StatusOr<ContextSnapshot> BuildSnapshot(const CapturedContext& captured,
                                        const SqueezeOptions& options,
                                        const IngestProgress& progress = {});

// Calibration of snapshot.thresholds_* from the window queries (called by BuildSnapshot; exposed
// for tests and tools). window_q as in CapturedContext. For each (layer, kv head), GQA reduction
// and window query, the per-key probability estimates of all clusters (weighted by cluster size)
// are pooled per layer and globally -- the distributions of the window queries are averaged -- and
// the threshold for sparsity s is the value that drops the share of body keys closest to s
// (keeping p > T). So per-token selection with T keeps 1 - s of the body keys on average over the
// calibration queries. (Averaging the estimates over the queries first, then taking quantiles,
// smooths away the peaks that single queries have: on the synthetic 32K benchmark such thresholds
// kept about 1% of the keys per token at s = 0.7.) A threshold of -1 keeps everything.
void Calibrate(const std::vector<float>& window_q, int64_t window_len, ContextSnapshot* snapshot);

}  // namespace sqz
