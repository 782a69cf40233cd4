#include "engine/squeeze/fidelity_metrics.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace sqz {

StatusOr<AttentionFidelity> MeasureAttentionFidelity(const ContextSnapshot& s, int layer,
                                                     const float* q, int64_t n_tokens,
                                                     int64_t first_pos,
                                                     const AttentionOptions& options) {
  SQZ_RETURN_IF_ERROR(options.Validate());
  if (options.mode != AttentionMode::kSqueezed) {
    return InvalidArgumentError("fidelity is measured for SQUEEZED attention");
  }
  const SnapshotDims& dm = s.dims;
  if (layer < 0 || layer >= dm.layers) return InvalidArgumentError("layer out of range");
  if (n_tokens < 1) return InvalidArgumentError("need at least one query token");
  const int64_t d = dm.head_dim;
  const int g = dm.q_heads / dm.kv_heads;
  SqueezedContextAttention squeezed(s, options);
  DenseContextAttention dense(s);
  const size_t rows = static_cast<size_t>(n_tokens) * dm.q_heads;
  std::vector<float> o_sq(rows * d), o_dn(rows * d);
  std::vector<cpu::AttentionPartial> st_sq(rows), st_dn(rows);
  squeezed.Attend(layer, q, n_tokens, first_pos, o_sq.data(), st_sq.data());
  dense.Attend(layer, q, n_tokens, first_pos, o_dn.data(), st_dn.data());

  std::vector<std::pair<int64_t, int64_t>> blocks;
  std::vector<SelectionResult> sel;
  squeezed.Select(layer, q, n_tokens, first_pos, &blocks, &sel);
  AttentionFidelity f;
  f.min_mass_recall = 1.0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<char> attended;
  std::vector<float> scores;
  for (size_t b = 0; b < blocks.size(); ++b) {
    for (int h = 0; h < dm.kv_heads; ++h) {
      const HeadIndex& x = s.head(layer, h);
      const SelectionResult& r = sel[b * dm.kv_heads + h];
      attended.assign(dm.body_len, 0);
      for (int32_t c : r.clusters) {
        std::fill(attended.begin() + x.offsets[c], attended.begin() + x.offsets[c + 1], 1);
      }
      for (int64_t t = blocks[b].first; t < blocks[b].second; ++t) {
        if (dm.body_len > 0) {
          f.body_share += static_cast<double>(r.selected_keys) / static_cast<double>(dm.body_len);
        }
        for (int j = 0; j < g; ++j) {
          const int64_t row = t * dm.q_heads + int64_t{h} * g + j;
          const float* qr = q + row * d;
          // Exact softmax mass over all context keys, split into read / not read.
          scores.clear();
          for (int64_t i = 0; i < dm.sink_len; ++i)
            scores.push_back(cpu::Dot(qr, &x.sink_k[i * d], d));
          for (int64_t i = 0; i < dm.window_len; ++i)
            scores.push_back(cpu::Dot(qr, &x.window_k[i * d], d));
          const size_t fixed = scores.size();
          for (int64_t i = 0; i < dm.body_len; ++i)
            scores.push_back(cpu::Dot(qr, &x.body_k[i * d], d));
          float m = -INFINITY;
          for (float& v : scores) m = std::max(m, v *= scale);
          double total = 0.0, read = 0.0;
          for (size_t i = 0; i < scores.size(); ++i) {
            const double e = std::exp(static_cast<double>(scores[i] - m));
            total += e;
            if (i < fixed || attended[i - fixed]) read += e;
          }
          const double recall = read / total;
          f.mass_recall += recall;
          f.min_mass_recall = std::min(f.min_mass_recall, recall);
          double num = 0.0, den = 0.0;
          for (int64_t i = 0; i < d; ++i) {
            const double diff = o_sq[row * d + i] - o_dn[row * d + i];
            num += diff * diff;
            den += static_cast<double>(o_dn[row * d + i]) * o_dn[row * d + i];
          }
          f.rel_l2_error += den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
        }
      }
    }
  }
  f.mass_recall /= static_cast<double>(rows);
  f.rel_l2_error /= static_cast<double>(rows);
  f.body_share /= static_cast<double>(n_tokens * dm.kv_heads);
  f.keys_read_share = squeezed.usage().share();
  return f;
}

}  // namespace sqz
