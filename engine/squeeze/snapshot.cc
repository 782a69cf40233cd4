#include "engine/squeeze/snapshot.h"

#include <cmath>
#include <string>

namespace sqz {
namespace {

std::string HeadName(int layer, int head) {
  return "layer " + std::to_string(layer) + " kv head " + std::to_string(head);
}

template <typename T>
bool SizeIs(const std::vector<T>& v, int64_t n) {
  return static_cast<int64_t>(v.size()) == n;
}

bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

Status CheckCsr(const std::vector<int32_t>& offsets, int64_t total, const std::string& what) {
  if (offsets.empty() || offsets.front() != 0 || offsets.back() != total) {
    return InvalidArgumentError(what + ": offsets must start at 0 and end at " +
                                std::to_string(total));
  }
  for (size_t i = 1; i < offsets.size(); ++i) {
    if (offsets[i] <= offsets[i - 1]) {
      return InvalidArgumentError(what + ": offsets must increase strictly (empty group " +
                                  std::to_string(i - 1) + ")");
    }
  }
  return OkStatus();
}

Status ValidateHead(const ContextSnapshot& s, int layer, int h, int64_t k) {
  const HeadIndex& x = s.head(layer, h);
  const SnapshotDims& dm = s.dims;
  const int64_t d = dm.head_dim;
  const std::string name = HeadName(layer, h);
  if (!SizeIs(x.sink_k, dm.sink_len * d) || !SizeIs(x.sink_v, dm.sink_len * d)) {
    return InvalidArgumentError(name + ": sink K/V must be [sink_len][head_dim]");
  }
  if (!SizeIs(x.window_k, dm.window_len * d) || !SizeIs(x.window_v, dm.window_len * d)) {
    return InvalidArgumentError(name + ": window K/V must be [window_len][head_dim]");
  }
  if (!SizeIs(x.body_k, dm.body_len * d) || !SizeIs(x.body_v, dm.body_len * d) ||
      !SizeIs(x.body_positions, dm.body_len)) {
    return InvalidArgumentError(name +
                                ": body K/V must be [body_len][head_dim] with body_len "
                                "positions");
  }
  if (!SizeIs(x.counts, k) || !SizeIs(x.offsets, k + 1) || !SizeIs(x.centroids, k * d)) {
    return InvalidArgumentError(name +
                                ": centroids/counts/offsets must be [k][d], [k], [k+1] with "
                                "the same k in every head");
  }
  if (dm.body_len > 0 || k > 0) {
    SQZ_RETURN_IF_ERROR(CheckCsr(x.offsets, dm.body_len, name + " clusters"));
  }
  for (int64_t c = 0; c < k; ++c) {
    if (x.counts[c] != x.offsets[c + 1] - x.offsets[c]) {
      return InvalidArgumentError(name + ": counts[" + std::to_string(c) +
                                  "] disagrees with the offsets");
    }
  }
  std::vector<char> seen(dm.body_len, 0);
  for (int32_t p : x.body_positions) {
    const int64_t i = static_cast<int64_t>(p) - dm.sink_len;
    if (i < 0 || i >= dm.body_len || seen[i]) {
      return InvalidArgumentError(name +
                                  ": body positions must be a permutation of [sink_len, "
                                  "sink_len + body_len)");
    }
    seen[i] = 1;
  }
  const int64_t k1 =
      static_cast<int64_t>(x.coarse_offsets.empty() ? 0 : x.coarse_offsets.size() - 1);
  if (k1 > 0 || !x.coarse_centroids.empty() || !x.coarse_members.empty()) {
    if (!SizeIs(x.coarse_centroids, k1 * d) || !SizeIs(x.coarse_members, k)) {
      return InvalidArgumentError(name +
                                  ": coarse level must be centroids [k1][d], offsets [k1+1] "
                                  "and members [k]");
    }
    SQZ_RETURN_IF_ERROR(CheckCsr(x.coarse_offsets, k, name + " coarse level"));
    std::vector<char> fine_seen(k, 0);
    for (int32_t f : x.coarse_members) {
      if (f < 0 || f >= k || fine_seen[f]) {
        return InvalidArgumentError(name +
                                    ": coarse members must be a permutation of the fine "
                                    "cluster ids");
      }
      fine_seen[f] = 1;
    }
  }
  for (const auto* v : {&x.sink_k, &x.sink_v, &x.window_k, &x.window_v, &x.body_k, &x.body_v,
                        &x.centroids, &x.coarse_centroids}) {
    if (!AllFinite(*v)) return InvalidArgumentError(name + ": non-finite value");
  }
  return OkStatus();
}

}  // namespace

Status SqueezeOptions::Validate() const {
  if (sink_tokens < 0) return InvalidArgumentError("sink_tokens must be >= 0");
  if (observation_window < 0) return InvalidArgumentError("observation_window must be >= 0");
  if (!(centroid_fraction > 0.0 && centroid_fraction <= 1.0)) {
    return InvalidArgumentError("centroid_fraction must be in (0, 1], got " +
                                std::to_string(centroid_fraction));
  }
  if (!(coarse_fraction <= centroid_fraction)) {
    return InvalidArgumentError(
        "coarse_fraction must be <= centroid_fraction (or <= 0 to disable)");
  }
  if (kmeans_iterations < 1) return InvalidArgumentError("kmeans_iterations must be >= 1");
  if (!(kmeans_tolerance >= 0.0)) return InvalidArgumentError("kmeans_tolerance must be >= 0");
  if (prefill_chunk_tokens < 1) return InvalidArgumentError("prefill_chunk_tokens must be >= 1");
  return OkStatus();
}

Status ValidateSnapshot(const ContextSnapshot& s) {
  if (s.format_version != ContextSnapshot::kFormatVersion) {
    return InvalidArgumentError("snapshot format version " + std::to_string(s.format_version) +
                                " is not the supported version " +
                                std::to_string(ContextSnapshot::kFormatVersion));
  }
  const SnapshotDims& dm = s.dims;
  if (dm.layers < 1 || dm.kv_heads < 1 || dm.head_dim < 1 || dm.q_heads < dm.kv_heads ||
      dm.q_heads % dm.kv_heads != 0) {
    return InvalidArgumentError(
        "snapshot dims: need layers, kv_heads, head_dim >= 1 and q_heads a "
        "multiple of kv_heads");
  }
  if (dm.n_tokens < 1 || dm.sink_len < 0 || dm.window_len < 0 || dm.body_len < 0 ||
      dm.sink_len + dm.window_len + dm.body_len != dm.n_tokens) {
    return InvalidArgumentError(
        "snapshot dims: sink_len + body_len + window_len must equal "
        "n_tokens >= 1");
  }
  SQZ_RETURN_IF_ERROR(s.options.Validate().WithContext("snapshot options"));
  if (!SizeIs(s.heads, static_cast<int64_t>(dm.layers) * dm.kv_heads)) {
    return InvalidArgumentError("snapshot must have layers * kv_heads head indexes");
  }
  if (!SizeIs(s.thresholds_global, kNumGqaReduce * kNumSparsities) ||
      !SizeIs(s.thresholds_layer,
              static_cast<int64_t>(kNumGqaReduce) * dm.layers * kNumSparsities)) {
    return InvalidArgumentError(
        "snapshot thresholds must be [2][10] global and [2][layers][10] per "
        "layer");
  }
  if (!AllFinite(s.thresholds_global) || !AllFinite(s.thresholds_layer)) {
    return InvalidArgumentError("snapshot thresholds must be finite");
  }
  const int64_t k = static_cast<int64_t>(s.heads[0].counts.size());
  for (int l = 0; l < dm.layers; ++l) {
    for (int h = 0; h < dm.kv_heads; ++h) SQZ_RETURN_IF_ERROR(ValidateHead(s, l, h, k));
  }
  return OkStatus();
}

int64_t SnapshotBytes(const ContextSnapshot& s) {
  int64_t bytes = sizeof(ContextSnapshot);
  auto add = [&bytes](const auto& v) { bytes += static_cast<int64_t>(v.size() * sizeof(v[0])); };
  for (const HeadIndex& x : s.heads) {
    add(x.sink_k), add(x.sink_v), add(x.window_k), add(x.window_v), add(x.body_k), add(x.body_v);
    add(x.body_positions), add(x.centroids), add(x.counts), add(x.offsets);
    add(x.coarse_centroids), add(x.coarse_offsets), add(x.coarse_members);
  }
  add(s.thresholds_global), add(s.thresholds_layer);
  return bytes;
}

}  // namespace sqz
