// ModelWeights: the fp32 tensors of a Llama-family decoder, filled by the safetensors loader
// (engine/model/hf_loader.h) or the GGUF loader (engine/gguf). Every tensor is a row-major
// std::vector<float>; Linear weights are stored as Hugging Face does, [out_features][in_features].
// Ownership: a ModelWeights owns all its tensors. Plain data, movable; immutable once loaded, so
// concurrent reads are safe.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/model/config.h"

namespace sqz {

// One decoder layer. Shapes use the ModelConfig names (q_dim = q_heads * head_dim,
// kv_dim = kv_heads * head_dim). The q and k rows are in Hugging Face order (rotate_half RoPE:
// within a head, element i pairs with element i + head_dim/2).
struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]               input_layernorm.weight
  std::vector<float> wq;         // [q_dim][hidden]        self_attn.q_proj.weight
  std::vector<float> wk;         // [kv_dim][hidden]       self_attn.k_proj.weight
  std::vector<float> wv;         // [kv_dim][hidden]       self_attn.v_proj.weight
  std::vector<float> bq;         // [q_dim]  or empty      self_attn.q_proj.bias (qkv_bias only)
  std::vector<float> bk;         // [kv_dim] or empty      self_attn.k_proj.bias
  std::vector<float> bv;         // [kv_dim] or empty      self_attn.v_proj.bias
  std::vector<float> wo;         // [hidden][q_dim]        self_attn.o_proj.weight
  std::vector<float> ffn_norm;   // [hidden]               post_attention_layernorm.weight
  std::vector<float> w_gate;     // [intermediate][hidden] mlp.gate_proj.weight
  std::vector<float> w_up;       // [intermediate][hidden] mlp.up_proj.weight
  std::vector<float> w_down;     // [hidden][intermediate] mlp.down_proj.weight
};

struct ModelWeights {
  std::vector<float> embedding;      // [vocab][hidden]  model.embed_tokens.weight
  std::vector<LayerWeights> layers;  // [layers]
  std::vector<float> final_norm;     // [hidden]         model.norm.weight
  // [vocab][hidden] lm_head.weight; empty when the config ties embeddings (then the LM head is
  // `embedding`, see LmHead()).
  std::vector<float> lm_head;

  // The LM head matrix, [vocab][hidden]: lm_head, or embedding when lm_head is empty (tied).
  const float* LmHead() const { return lm_head.empty() ? embedding.data() : lm_head.data(); }

  // INVALID_ARGUMENT naming the first tensor whose size does not match `config` (e.g.
  // "layers.3.wk has 1024 floats, expected [256][64] = 16384"): wrong layer count, a bias missing
  // with qkv_bias or present without it, lm_head missing in an untied model. A tied model may
  // still carry an lm_head copy (then it is used).
  Status Validate(const ModelConfig& config) const;
};

// A loaded model: configuration plus weights. Owns both; immutable after loading and shared
// read-only by backends (which borrow it: the Model must outlive them).
struct Model {
  ModelConfig config;
  ModelWeights weights;

  Model() = default;
  Model(ModelConfig c, ModelWeights w) : config(std::move(c)), weights(std::move(w)) {}
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;
};

}  // namespace sqz
