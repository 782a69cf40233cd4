#include "engine/squeeze/squeezed_attention.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace sqz {
namespace {

// Below this many multiply-adds per call, Attend runs on the calling thread (a parallel region
// costs more than it saves, e.g. for decode steps over short contexts).
constexpr int64_t kParallelMinWork = int64_t{1} << 18;

// Multiply-adds of dense attention for one query token over the context.
int64_t Work(const SnapshotDims& dm) { return dm.n_tokens * dm.q_heads * dm.head_dim; }

// Work item of one Attend call: tokens [t0, t1) of the call, one KV head.
struct Item {
  int64_t t0, t1;
  int h;
};

// Splits tokens [0, n) of a call whose first token sits at request position first_pos into runs
// that share a block_size-aligned block of positions.
std::vector<std::pair<int64_t, int64_t>> Blocks(int64_t n, int64_t first_pos, int64_t block) {
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t t = 0;
  while (t < n) {
    const int64_t pos = first_pos + t;
    const int64_t end = std::min(n, t + (block - pos % block));
    out.emplace_back(t, end);
    t = end;
  }
  return out;
}

// Resets and accumulates the partial of every query head of kv head h for tokens [t0, t1) over
// sink, the given body row segments [begin, end), and window.
void AttendSegments(const HeadIndex& x, const SnapshotDims& dm, const float* q, int64_t t0,
                    int64_t t1, int h, const std::vector<std::pair<int64_t, int64_t>>& segments,
                    float* out, cpu::AttentionPartial* stats) {
  const int64_t d = dm.head_dim;
  const int g = dm.q_heads / dm.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t t = t0; t < t1; ++t) {
    for (int j = 0; j < g; ++j) {
      const int64_t row = t * dm.q_heads + int64_t{h} * g + j;
      const float* qr = q + row * d;
      float* o = out + row * d;
      cpu::AttentionPartial* st = stats + row;
      std::fill(o, o + d, 0.0f);
      *st = cpu::AttentionPartial{};
      cpu::AttendAccumulate(qr, x.sink_k.data(), d, x.sink_v.data(), d, dm.sink_len, d, scale, o,
                            st);
      for (const auto& [b, e] : segments) {
        cpu::AttendAccumulate(qr, x.body_k.data() + b * d, d, x.body_v.data() + b * d, d, e - b, d,
                              scale, o, st);
      }
      cpu::AttendAccumulate(qr, x.window_k.data(), d, x.window_v.data(), d, dm.window_len, d, scale,
                            o, st);
    }
  }
}

}  // namespace

Status AttentionOptions::Validate() const {
  if (!(kv_budget >= 0.0 && kv_budget <= 1.0)) {
    return InvalidArgumentError("kv_budget must be in [0, 1], got " + std::to_string(kv_budget));
  }
  if (policy == SelectionPolicy::kThreshold &&
      !(sparsity >= SparsityAt(0) - 1e-9 && sparsity <= SparsityAt(kNumSparsities - 1) + 1e-9)) {
    return InvalidArgumentError("sparsity must be in [0.5, 0.95] (the calibrated range), got " +
                                std::to_string(sparsity));
  }
  if (block_size < 1) {
    return InvalidArgumentError("block_size must be >= 1, got " + std::to_string(block_size));
  }
  if (!(coarse_expansion >= 1.0)) {
    return InvalidArgumentError("coarse_expansion must be >= 1, got " +
                                std::to_string(coarse_expansion));
  }
  if (mode != AttentionMode::kDense && mode != AttentionMode::kSqueezed) {
    return InvalidArgumentError("unknown attention mode");
  }
  if (policy != SelectionPolicy::kBudget && policy != SelectionPolicy::kThreshold) {
    return InvalidArgumentError("unknown selection policy");
  }
  if (gqa_reduce != GqaReduce::kMax && gqa_reduce != GqaReduce::kMean) {
    return InvalidArgumentError("unknown GQA reduction");
  }
  return OkStatus();
}

float ThresholdForSparsity(const ContextSnapshot& s, GqaReduce reduce, int layer, double sparsity) {
  const double pos = std::clamp((sparsity - SparsityAt(0)) / 0.05, 0.0, kNumSparsities - 1.0);
  const int lo = std::min(static_cast<int>(std::floor(pos + 1e-9)), kNumSparsities - 1);
  const int hi = std::min(lo + 1, kNumSparsities - 1);
  const double w = std::max(0.0, pos - lo);
  auto at = [&](int i) {
    return layer < 0 ? s.threshold_global(reduce, i) : s.threshold_layer(reduce, layer, i);
  };
  return static_cast<float>((1.0 - w) * at(lo) + w * at(hi));
}

KeyUsage SnapshotAttention::usage() const {
  KeyUsage u;
  u.keys_read = 0.5 * static_cast<double>(half_keys_read_.load(std::memory_order_relaxed));
  u.keys_total = static_cast<double>(keys_total_.load(std::memory_order_relaxed));
  return u;
}

void SnapshotAttention::CountUsage(int64_t half_keys_read, int64_t keys_total) const {
  half_keys_read_.fetch_add(half_keys_read, std::memory_order_relaxed);
  keys_total_.fetch_add(keys_total, std::memory_order_relaxed);
}

void DenseContextAttention::Attend(int layer, const float* q, int64_t n_tokens, int64_t first_pos,
                                   float* out, cpu::AttentionPartial* stats) const {
  const SnapshotDims& dm = snapshot_.dims;
  SQZ_CHECK(layer >= 0 && layer < dm.layers) << "layer " << layer;
  const std::vector<std::pair<int64_t, int64_t>> all_body = {{0, dm.body_len}};
#pragma omp parallel for schedule(static) collapse(2) if (n_tokens * Work(dm) >= kParallelMinWork)
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int h = 0; h < dm.kv_heads; ++h) {
      AttendSegments(snapshot_.head(layer, h), dm, q, t, t + 1, h, all_body, out, stats);
    }
  }
  const int64_t events = n_tokens * dm.kv_heads;
  CountUsage(2 * events * dm.n_tokens, events * dm.n_tokens);
}

SqueezedContextAttention::SqueezedContextAttention(const ContextSnapshot& snapshot,
                                                   const AttentionOptions& options)
    : SnapshotAttention(snapshot), options_(options) {}

SelectionParams SqueezedContextAttention::ParamsForLayer(int layer) const {
  SelectionParams p;
  p.policy = options_.policy;
  p.kv_budget = options_.kv_budget;
  p.reduce = options_.gqa_reduce;
  p.hierarchical = options_.hierarchical;
  p.coarse_expansion = options_.coarse_expansion;
  if (options_.policy == SelectionPolicy::kThreshold) {
    p.threshold =
        ThresholdForSparsity(snapshot_, options_.gqa_reduce,
                             options_.per_layer_thresholds ? layer : -1, options_.sparsity);
    p.coarse_keep = 1.0 - options_.sparsity;
  } else {
    p.coarse_keep = options_.kv_budget;
  }
  return p;
}

void SqueezedContextAttention::Attend(int layer, const float* q, int64_t n_tokens,
                                      int64_t first_pos, float* out,
                                      cpu::AttentionPartial* stats) const {
  const SnapshotDims& dm = snapshot_.dims;
  SQZ_CHECK(layer >= 0 && layer < dm.layers) << "layer " << layer;
  const SelectionParams params = ParamsForLayer(layer);
  const int g = dm.q_heads / dm.kv_heads;
  const int64_t d = dm.head_dim;
  std::vector<Item> items;
  for (const auto& [t0, t1] : Blocks(n_tokens, first_pos, options_.block_size)) {
    for (int h = 0; h < dm.kv_heads; ++h) items.push_back({t0, t1, h});
  }
  int64_t half_keys = 0;
#pragma omp parallel reduction(+ : half_keys) if (n_tokens * Work(dm) >= kParallelMinWork)
  {
    SelectionScratch scratch;
    SelectionResult sel;
    std::vector<std::pair<int64_t, int64_t>> segments;
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < items.size(); ++i) {
      const Item& it = items[i];
      const HeadIndex& x = snapshot_.head(layer, it.h);
      SelectClusters(x, d, q + (it.t0 * dm.q_heads + int64_t{it.h} * g) * d, it.t1 - it.t0,
                     int64_t{dm.q_heads} * d, g, params, &scratch, &sel);
      // Adjacent selected clusters are contiguous rows: one segment each run.
      segments.clear();
      for (int32_t c : sel.clusters) {
        const int64_t b = x.offsets[c], e = x.offsets[c + 1];
        if (!segments.empty() && segments.back().second == b) {
          segments.back().second = e;
        } else {
          segments.emplace_back(b, e);
        }
      }
      AttendSegments(x, dm, q, it.t0, it.t1, it.h, segments, out, stats);
      half_keys += (it.t1 - it.t0) * (2 * (dm.sink_len + dm.window_len + sel.selected_keys) +
                                      sel.fine_scored + sel.coarse_scored);
    }
  }
  CountUsage(half_keys, n_tokens * dm.kv_heads * dm.n_tokens);
}

void SqueezedContextAttention::Select(int layer, const float* q, int64_t n_tokens,
                                      int64_t first_pos,
                                      std::vector<std::pair<int64_t, int64_t>>* blocks,
                                      std::vector<SelectionResult>* selections) const {
  const SnapshotDims& dm = snapshot_.dims;
  const SelectionParams params = ParamsForLayer(layer);
  const int g = dm.q_heads / dm.kv_heads;
  const int64_t d = dm.head_dim;
  *blocks = Blocks(n_tokens, first_pos, options_.block_size);
  selections->resize(blocks->size() * dm.kv_heads);
  SelectionScratch scratch;
  for (size_t b = 0; b < blocks->size(); ++b) {
    const auto [t0, t1] = (*blocks)[b];
    for (int h = 0; h < dm.kv_heads; ++h) {
      SelectClusters(snapshot_.head(layer, h), d, q + (t0 * dm.q_heads + int64_t{h} * g) * d,
                     t1 - t0, int64_t{dm.q_heads} * d, g, params, &scratch,
                     &(*selections)[b * dm.kv_heads + h]);
    }
  }
}

StatusOr<std::unique_ptr<SnapshotAttention>> MakeContextAttention(const ContextSnapshot& snapshot,
                                                                  const AttentionOptions& options) {
  SQZ_RETURN_IF_ERROR(options.Validate());
  if (options.mode == AttentionMode::kDense) {
    return std::unique_ptr<SnapshotAttention>(new DenseContextAttention(snapshot));
  }
  return std::unique_ptr<SnapshotAttention>(new SqueezedContextAttention(snapshot, options));
}

}  // namespace sqz
