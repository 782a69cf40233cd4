#include "engine/model/dense_kv_context.h"

#include <cmath>

#include "common/check.h"

namespace sqz {

DenseKvContext::DenseKvContext(int64_t layers, int64_t length, int64_t q_heads, int64_t kv_heads,
                               int64_t head_dim, std::vector<float> k, std::vector<float> v)
    : layers_(layers),
      length_(length),
      q_heads_(q_heads),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      k_(std::move(k)),
      v_(std::move(v)) {
  SQZ_CHECK(kv_heads_ > 0 && q_heads_ % kv_heads_ == 0) << "q_heads must be a multiple of kv_heads";
  const int64_t size = layers_ * length_ * kv_heads_ * head_dim_;
  SQZ_CHECK_EQ(static_cast<int64_t>(k_.size()), size);
  SQZ_CHECK_EQ(static_cast<int64_t>(v_.size()), size);
}

StatusOr<std::unique_ptr<DenseKvContext>> DenseKvContext::FromSequence(Backend& backend, SeqId seq,
                                                                       int64_t length) {
  const ModelConfig& c = backend.config();
  const int64_t per_layer = length * c.kv_dim();
  std::vector<float> k(c.layers * per_layer), v(c.layers * per_layer);
  for (int layer = 0; layer < c.layers; ++layer) {
    SQZ_RETURN_IF_ERROR(backend.ReadKv(seq, layer, 0, length, k.data() + layer * per_layer,
                                       v.data() + layer * per_layer));
  }
  return std::make_unique<DenseKvContext>(c.layers, length, c.q_heads, c.kv_heads, c.head_dim,
                                          std::move(k), std::move(v));
}

void DenseKvContext::Attend(int layer, const float* q, int64_t n_tokens, int64_t first_pos,
                            float* out, cpu::AttentionPartial* stats) const {
  SQZ_CHECK(layer >= 0 && layer < layers_) << "layer " << layer;
  const int64_t d = head_dim_, kv_dim = kv_heads_ * head_dim_, group = q_heads_ / kv_heads_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float* k_layer = k_.data() + layer * length_ * kv_dim;
  const float* v_layer = v_.data() + layer * length_ * kv_dim;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t h = 0; h < q_heads_; ++h) {
      const int64_t kvh = h / group;
      float* o = out + (t * q_heads_ + h) * d;
      cpu::AttentionPartial* st = stats + t * q_heads_ + h;
      for (int64_t j = 0; j < d; ++j) o[j] = 0.0f;
      *st = cpu::AttentionPartial{};
      cpu::AttendAccumulate(q + (t * q_heads_ + h) * d, k_layer + kvh * d, kv_dim,
                            v_layer + kvh * d, kv_dim, length_, d, scale, o, st);
    }
  }
}

}  // namespace sqz
