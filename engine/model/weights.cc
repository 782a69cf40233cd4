#include "engine/model/weights.h"

#include <string>

namespace sqz {
namespace {

Status CheckSize(const std::vector<float>& t, const std::string& name, int64_t rows, int64_t cols) {
  const int64_t want = rows * cols;
  if (static_cast<int64_t>(t.size()) == want) return OkStatus();
  std::string shape = cols == 1 ? "[" + std::to_string(rows) + "]"
                                : "[" + std::to_string(rows) + "][" + std::to_string(cols) + "]";
  return InvalidArgumentError("model weights: " + name + " has " + std::to_string(t.size()) +
                              " floats, expected " + shape + " = " + std::to_string(want));
}

}  // namespace

Status ModelWeights::Validate(const ModelConfig& c) const {
  SQZ_RETURN_IF_ERROR(CheckSize(embedding, "embedding", c.vocab, c.hidden));
  SQZ_RETURN_IF_ERROR(CheckSize(final_norm, "final_norm", c.hidden, 1));
  if (lm_head.empty()) {
    if (!c.tie_embeddings) {
      return InvalidArgumentError("model weights: lm_head is missing and embeddings are not tied");
    }
  } else {
    SQZ_RETURN_IF_ERROR(CheckSize(lm_head, "lm_head", c.vocab, c.hidden));
  }
  if (static_cast<int64_t>(layers.size()) != c.layers) {
    return InvalidArgumentError("model weights: " + std::to_string(layers.size()) +
                                " layers, config says " + std::to_string(c.layers));
  }
  for (int64_t i = 0; i < c.layers; ++i) {
    const LayerWeights& l = layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    SQZ_RETURN_IF_ERROR(CheckSize(l.attn_norm, p + "attn_norm", c.hidden, 1));
    SQZ_RETURN_IF_ERROR(CheckSize(l.wq, p + "wq", c.q_dim(), c.hidden));
    SQZ_RETURN_IF_ERROR(CheckSize(l.wk, p + "wk", c.kv_dim(), c.hidden));
    SQZ_RETURN_IF_ERROR(CheckSize(l.wv, p + "wv", c.kv_dim(), c.hidden));
    if (c.qkv_bias) {
      SQZ_RETURN_IF_ERROR(CheckSize(l.bq, p + "bq", c.q_dim(), 1));
      SQZ_RETURN_IF_ERROR(CheckSize(l.bk, p + "bk", c.kv_dim(), 1));
      SQZ_RETURN_IF_ERROR(CheckSize(l.bv, p + "bv", c.kv_dim(), 1));
    } else if (!l.bq.empty() || !l.bk.empty() || !l.bv.empty()) {
      return InvalidArgumentError("model weights: " + p +
                                  "q/k/v bias present but the config has no qkv_bias");
    }
    SQZ_RETURN_IF_ERROR(CheckSize(l.wo, p + "wo", c.hidden, c.q_dim()));
    SQZ_RETURN_IF_ERROR(CheckSize(l.ffn_norm, p + "ffn_norm", c.hidden, 1));
    SQZ_RETURN_IF_ERROR(CheckSize(l.w_gate, p + "w_gate", c.intermediate, c.hidden));
    SQZ_RETURN_IF_ERROR(CheckSize(l.w_up, p + "w_up", c.intermediate, c.hidden));
    SQZ_RETURN_IF_ERROR(CheckSize(l.w_down, p + "w_down", c.hidden, c.intermediate));
  }
  return OkStatus();
}

}  // namespace sqz
