#include "engine/squeeze/index_builder.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "engine/squeeze/kmeans.h"
#include "engine/squeeze/selection.h"

namespace sqz {
namespace {

// Threshold that keeps everything (p >= 0 always).
constexpr float kKeepAll = -1.0f;


// Copies rows [begin, begin + n) of head h of layer l into out ([n][d]).
void CopyRows(const std::vector<float>& src, const CapturedContext& c, int l, int h, int64_t begin,
              int64_t n, std::vector<float>* out) {
  const int64_t d = c.head_dim;
  out->resize(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i) {
    const float* row = src.data() + ((int64_t{l} * c.n_tokens + begin + i) * c.kv_heads + h) * d;
    std::copy_n(row, d, out->data() + i * d);
  }
}

// Fills the body, centroids and coarse level of one head from its token-order body rows.
Status BuildHeadIndex(const std::vector<float>& body_k, const std::vector<float>& body_v,
                      int64_t sink_len, int64_t d, int64_t k, int64_t k1,
                      const SqueezeOptions& options, HeadIndex* x) {
  const int64_t body = static_cast<int64_t>(body_k.size()) / d;
  x->offsets.assign(1, 0);
  if (body == 0) return OkStatus();
  KMeansOptions ko;
  ko.k = k;
  ko.max_iterations = options.kmeans_iterations;
  ko.tolerance = options.kmeans_tolerance;
  ko.seed = options.kmeans_seed;
  SQZ_ASSIGN_OR_RETURN(KMeansResult fine, SphericalKMeans(body_k.data(), body, d, ko));
  x->centroids = std::move(fine.centroids);
  x->counts = fine.counts;
  x->offsets.resize(k + 1);
  for (int64_t c = 0; c < k; ++c) x->offsets[c + 1] = x->offsets[c] + fine.counts[c];
  // Cluster order, original order within a cluster (a counting sort).
  std::vector<int32_t> cursor(x->offsets.begin(), x->offsets.end() - 1);
  x->body_k.resize(body_k.size());
  x->body_v.resize(body_v.size());
  x->body_positions.resize(body);
  for (int64_t i = 0; i < body; ++i) {
    const int64_t row = cursor[fine.assignment[i]]++;
    std::copy_n(body_k.data() + i * d, d, x->body_k.data() + row * d);
    std::copy_n(body_v.data() + i * d, d, x->body_v.data() + row * d);
    x->body_positions[row] = static_cast<int32_t>(sink_len + i);
  }
  if (k1 < 2) return OkStatus();
  ko.k = k1;
  SQZ_ASSIGN_OR_RETURN(KMeansResult coarse, SphericalKMeans(x->centroids.data(), k, d, ko));
  // Coarse centroid: mean of all raw keys under the group = count-weighted mean of its centroids.
  x->coarse_centroids.assign(static_cast<size_t>(k1 * d), 0.0f);
  std::vector<double> sum(static_cast<size_t>(k1 * d), 0.0);
  std::vector<int64_t> keys(k1, 0);
  x->coarse_offsets.assign(k1 + 1, 0);
  for (int64_t c = 0; c < k; ++c) {
    const int32_t j = coarse.assignment[c];
    keys[j] += x->counts[c];
    ++x->coarse_offsets[j + 1];
    for (int64_t t = 0; t < d; ++t)
      sum[j * d + t] += static_cast<double>(x->counts[c]) * x->centroids[c * d + t];
  }
  for (int64_t j = 0; j < k1; ++j) {
    for (int64_t t = 0; t < d; ++t) {
      x->coarse_centroids[j * d + t] = static_cast<float>(sum[j * d + t] / keys[j]);
    }
    x->coarse_offsets[j + 1] += x->coarse_offsets[j];
  }
  std::vector<int32_t> at(x->coarse_offsets.begin(), x->coarse_offsets.end() - 1);
  x->coarse_members.resize(k);
  for (int64_t c = 0; c < k; ++c) x->coarse_members[at[coarse.assignment[c]]++] = c;
  return OkStatus();
}

// Weighted histogram of per-key probability estimates over log2(p), 64 bins per octave from
// 2^-126 to 1; bin 0 holds p < 2^-126 (including underflow to 0). Bounded memory whatever the
// number of queries, heads and layers pooled; the quantile error is at most one bin's mass.
class LogHistogram {
 public:
  LogHistogram() : weight_(kBins, 0.0) {}

  void Add(float p, double weight) {
    int64_t bin = 0;
    if (p >= kMin) {
      bin = 1 + static_cast<int64_t>((std::log2(p) + kOctaves) * kBinsPerOctave);
      bin = std::min<int64_t>(bin, kBins - 1);
    }
    weight_[bin] += weight;
  }
  void Merge(const LogHistogram& other) {
    for (int64_t i = 0; i < kBins; ++i) weight_[i] += other.weight_[i];
  }
  // T such that keeping p > T drops the share of the weight closest to `sparsity`.
  float Threshold(double sparsity) const {
    double total = 0.0;
    for (double w : weight_) total += w;
    if (total <= 0.0) return kKeepAll;
    const double target = sparsity * total;
    float best_t = kKeepAll;
    double best_err = target, dropped = 0.0;
    for (int64_t i = 0; i + 1 < kBins; ++i) {  // dropping every bin is never closest for s < 1
      dropped += weight_[i];
      const double err = std::abs(dropped - target);
      if (weight_[i] > 0.0 && err < best_err) best_err = err, best_t = UpperEdge(i);
    }
    return best_t;
  }

 private:
  static constexpr int64_t kBinsPerOctave = 64;
  static constexpr int64_t kOctaves = 126;
  static constexpr int64_t kBins = kBinsPerOctave * kOctaves + 2;
  static constexpr float kMin = 0x1.0p-126f;
  static float UpperEdge(int64_t bin) {
    return std::exp2(static_cast<float>(bin) / kBinsPerOctave - kOctaves);
  }
  std::vector<double> weight_;
};

}  // namespace

int64_t SinkLength(int64_t n, const SqueezeOptions& o) { return std::min(o.sink_tokens, n); }

int64_t WindowLength(int64_t n, const SqueezeOptions& o) {
  return std::min(o.observation_window, n - SinkLength(n, o));
}

int64_t FineClusters(int64_t body, const SqueezeOptions& o) {
  if (body <= 0) return 0;
  const int64_t k = std::llround(o.centroid_fraction * static_cast<double>(body));
  return std::clamp<int64_t>(k, 1, body);
}

int64_t CoarseClusters(int64_t body, const SqueezeOptions& o) {
  if (o.coarse_fraction <= 0.0 || body <= 0) return 0;
  const int64_t k1 = std::llround(o.coarse_fraction * static_cast<double>(body));
  return k1 >= 2 && k1 < FineClusters(body, o) ? k1 : 0;
}

void Calibrate(const std::vector<float>& window_q, int64_t window_len, ContextSnapshot* s) {
  const SnapshotDims& dm = s->dims;
  const int64_t d = dm.head_dim;
  const int g = dm.q_heads / dm.kv_heads;
  s->thresholds_global.assign(kNumGqaReduce * kNumSparsities, kKeepAll);
  s->thresholds_layer.assign(static_cast<size_t>(kNumGqaReduce) * dm.layers * kNumSparsities,
                             kKeepAll);
  if (window_len == 0) return;  // no calibration queries: thresholds keep everything
  for (int r = 0; r < kNumGqaReduce; ++r) {
    std::vector<LogHistogram> layer_hist(dm.layers);
#pragma omp parallel for schedule(dynamic)
    for (int l = 0; l < dm.layers; ++l) {
      SelectionScratch scratch;
      std::vector<float> p;
      for (int h = 0; h < dm.kv_heads; ++h) {
        const HeadIndex& x = s->head(l, h);
        p.resize(x.counts.size());
        for (int64_t t = 0; t < window_len; ++t) {
          const float* q =
              window_q.data() + ((int64_t{l} * window_len + t) * dm.q_heads + h * g) * d;
          ClusterProbabilities(x, d, q, 1, int64_t{dm.q_heads} * d, g, static_cast<GqaReduce>(r),
                               p.data(), &scratch);
          for (size_t c = 0; c < p.size(); ++c) layer_hist[l].Add(p[c], x.counts[c]);
        }
      }
    }
    LogHistogram global;
    for (int l = 0; l < dm.layers; ++l) {
      global.Merge(layer_hist[l]);
      for (int i = 0; i < kNumSparsities; ++i) {
        s->thresholds_layer[(static_cast<size_t>(r) * dm.layers + l) * kNumSparsities + i] =
            layer_hist[l].Threshold(SparsityAt(i));
      }
    }
    for (int i = 0; i < kNumSparsities; ++i) {
      s->thresholds_global[r * kNumSparsities + i] = global.Threshold(SparsityAt(i));
    }
  }
}

Status ValidateCaptured(const CapturedContext& c, const SqueezeOptions& options) {
  const int64_t window_len = WindowLength(std::max<int64_t>(c.n_tokens, 0), options);
  if (c.layers < 1 || c.kv_heads < 1 || c.head_dim < 1 || c.q_heads < c.kv_heads ||
      c.q_heads % c.kv_heads != 0) {
    return InvalidArgumentError(
        "captured context: need layers, kv_heads, head_dim >= 1 and "
        "q_heads a multiple of kv_heads");
  }
  if (c.n_tokens < 1) return InvalidArgumentError("captured context is empty (n_tokens < 1)");
  const int64_t kv = int64_t{c.layers} * c.n_tokens * c.kv_heads * c.head_dim;
  if (static_cast<int64_t>(c.k.size()) != kv || static_cast<int64_t>(c.v.size()) != kv) {
    return InvalidArgumentError("captured K/V must be [layers][n_tokens][kv_heads][head_dim] (" +
                                std::to_string(kv) + " floats), got " + std::to_string(c.k.size()) +
                                " and " + std::to_string(c.v.size()));
  }
  const int64_t nq = int64_t{c.layers} * window_len * c.q_heads * c.head_dim;
  if (static_cast<int64_t>(c.window_q.size()) != nq) {
    return InvalidArgumentError("captured window queries must be [layers][" +
                                std::to_string(window_len) + "][q_heads][head_dim] (" +
                                std::to_string(nq) + " floats), got " +
                                std::to_string(c.window_q.size()));
  }
  for (const auto* vec : {&c.k, &c.v, &c.window_q}) {
    for (float x : *vec) {
      if (!std::isfinite(x)) return InvalidArgumentError("captured context has non-finite values");
    }
  }
  return OkStatus();
}

StatusOr<ContextSnapshot> BuildSnapshot(const CapturedContext& c, const SqueezeOptions& options,
                                        const IngestProgress& progress) {
  SQZ_RETURN_IF_ERROR(options.Validate());
  const int64_t n = c.n_tokens;
  const int64_t sink = SinkLength(n, options);
  const int64_t window = WindowLength(std::max<int64_t>(n, 0), options);
  SQZ_RETURN_IF_ERROR(ValidateCaptured(c, options));
  ContextSnapshot s;
  s.options = options;
  s.dims = {.layers = c.layers,
            .kv_heads = c.kv_heads,
            .q_heads = c.q_heads,
            .head_dim = c.head_dim,
            .n_tokens = n,
            .sink_len = sink,
            .window_len = window,
            .body_len = n - sink - window};
  const int64_t body = s.dims.body_len;
  const int64_t k = FineClusters(body, options);
  const int64_t k1 = CoarseClusters(body, options);
  s.heads.resize(static_cast<size_t>(c.layers) * c.kv_heads);
  std::vector<float> body_k, body_v;
  for (int l = 0; l < c.layers; ++l) {
    for (int h = 0; h < c.kv_heads; ++h) {
      HeadIndex& x = s.heads[static_cast<size_t>(l) * c.kv_heads + h];
      CopyRows(c.k, c, l, h, 0, sink, &x.sink_k);
      CopyRows(c.v, c, l, h, 0, sink, &x.sink_v);
      CopyRows(c.k, c, l, h, n - window, window, &x.window_k);
      CopyRows(c.v, c, l, h, n - window, window, &x.window_v);
      CopyRows(c.k, c, l, h, sink, body, &body_k);
      CopyRows(c.v, c, l, h, sink, body, &body_v);
      SQZ_RETURN_IF_ERROR(
          BuildHeadIndex(body_k, body_v, sink, c.head_dim, k, k1, options, &x)
              .WithContext("layer " + std::to_string(l) + " kv head " + std::to_string(h)));
      if (progress) {
        progress(IngestStage::kClustering,
                 static_cast<double>(l * c.kv_heads + h + 1) / (c.layers * c.kv_heads));
      }
    }
  }
  if (progress) progress(IngestStage::kCalibrating, 0.0);
  Calibrate(c.window_q, window, &s);
  if (progress) progress(IngestStage::kCalibrating, 1.0);
  return s;
}

}  // namespace sqz
