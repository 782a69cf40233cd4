#include "engine/model/hf_writer.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

namespace sqz {
namespace {

using json = nlohmann::json;

// splitmix64: a tiny portable generator, so random models are the same everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float Symmetric() { return static_cast<float>((Next() >> 40) * 0x1p-24 * 2.0 - 1.0); }

 private:
  uint64_t state_;
};

void Fill(Rng& rng, int64_t n, float center, float scale, std::vector<float>* out) {
  out->resize(n);
  for (float& v : *out) v = center + scale * rng.Symmetric();
}

void FillLinear(Rng& rng, int64_t out_features, int64_t in_features, std::vector<float>* w) {
  Fill(rng, out_features * in_features, 0.0f, std::sqrt(3.0f / in_features), w);
}

const char* TorchDtype(TensorDType dtype) {
  switch (dtype) {
    case TensorDType::kBF16:
      return "bfloat16";
    case TensorDType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

}  // namespace

std::string HfConfigJson(const ModelConfig& c) {
  static const std::map<std::string, std::string> kArch = {{"llama", "LlamaForCausalLM"},
                                                           {"mistral", "MistralForCausalLM"},
                                                           {"qwen2", "Qwen2ForCausalLM"}};
  json j;
  auto arch = kArch.find(c.architecture);
  j["architectures"] = {arch == kArch.end() ? c.architecture : arch->second};
  j["model_type"] = c.architecture;
  j["hidden_size"] = c.hidden;
  j["intermediate_size"] = c.intermediate;
  j["num_hidden_layers"] = c.layers;
  j["num_attention_heads"] = c.q_heads;
  j["num_key_value_heads"] = c.kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab;
  j["max_position_embeddings"] = c.max_positions;
  j["rms_norm_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope.theta;
  if (c.rope.llama3_factor > 0.0f) {
    j["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", c.rope.llama3_factor},
        {"low_freq_factor", c.rope.llama3_low_freq_factor},
        {"high_freq_factor", c.rope.llama3_high_freq_factor},
        {"original_max_position_embeddings", c.rope.llama3_original_max_positions}};
  } else if (c.rope.linear_factor > 0.0f) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope.linear_factor}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["hidden_act"] = "silu";
  j["attention_bias"] = c.qkv_bias;
  j["mlp_bias"] = false;
  j["tie_word_embeddings"] = c.tie_embeddings;
  if (c.bos_id >= 0) j["bos_token_id"] = c.bos_id;
  if (c.eos_ids.size() == 1) {
    j["eos_token_id"] = c.eos_ids[0];
  } else if (!c.eos_ids.empty()) {
    j["eos_token_id"] = c.eos_ids;
  }
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(2) + "\n";
}

Status SaveHfModel(const Model& model, const std::string& dir, TensorDType dtype, int shards) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  SQZ_RETURN_IF_ERROR(w.Validate(c));
  if (shards < 1) return InvalidArgumentError("SaveHfModel: shards must be >= 1");
  ModelConfig written = c;
  written.torch_dtype = TorchDtype(dtype);
  {
    std::ofstream out(std::filesystem::path(dir) / "config.json");
    out << HfConfigJson(written);
    if (!out) return InternalError("SaveHfModel: cannot write " + dir + "/config.json");
  }
  // Shard s holds layers [s * L / shards, (s + 1) * L / shards); the embedding goes to the first
  // shard, the final norm and lm_head to the last.
  std::vector<std::vector<TensorToWrite>> per_shard(shards);
  auto add = [&](int shard, std::string name, std::vector<int64_t> shape,
                 const std::vector<float>& data) {
    per_shard[shard].push_back(TensorToWrite{std::move(name), std::move(shape), data, dtype});
  };
  add(0, "model.embed_tokens.weight", {c.vocab, c.hidden}, w.embedding);
  for (int64_t i = 0; i < c.layers; ++i) {
    const int s = static_cast<int>(i * shards / c.layers);
    const LayerWeights& l = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(s, p + "input_layernorm.weight", {c.hidden}, l.attn_norm);
    add(s, p + "self_attn.q_proj.weight", {c.q_dim(), c.hidden}, l.wq);
    add(s, p + "self_attn.k_proj.weight", {c.kv_dim(), c.hidden}, l.wk);
    add(s, p + "self_attn.v_proj.weight", {c.kv_dim(), c.hidden}, l.wv);
    if (c.qkv_bias) {
      add(s, p + "self_attn.q_proj.bias", {c.q_dim()}, l.bq);
      add(s, p + "self_attn.k_proj.bias", {c.kv_dim()}, l.bk);
      add(s, p + "self_attn.v_proj.bias", {c.kv_dim()}, l.bv);
    }
    add(s, p + "self_attn.o_proj.weight", {c.hidden, c.q_dim()}, l.wo);
    add(s, p + "post_attention_layernorm.weight", {c.hidden}, l.ffn_norm);
    add(s, p + "mlp.gate_proj.weight", {c.intermediate, c.hidden}, l.w_gate);
    add(s, p + "mlp.up_proj.weight", {c.intermediate, c.hidden}, l.w_up);
    add(s, p + "mlp.down_proj.weight", {c.hidden, c.intermediate}, l.w_down);
  }
  add(shards - 1, "model.norm.weight", {c.hidden}, w.final_norm);
  if (!w.lm_head.empty()) add(shards - 1, "lm_head.weight", {c.vocab, c.hidden}, w.lm_head);

  if (shards == 1) {
    return WriteSafetensors((std::filesystem::path(dir) / "model.safetensors").string(),
                            per_shard[0]);
  }
  json index;
  index["metadata"] = json::object();
  index["weight_map"] = json::object();
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, shards);
    SQZ_RETURN_IF_ERROR(
        WriteSafetensors((std::filesystem::path(dir) / name).string(), per_shard[s]));
    for (const TensorToWrite& t : per_shard[s]) index["weight_map"][t.name] = name;
  }
  std::ofstream out(std::filesystem::path(dir) / "model.safetensors.index.json");
  out << index.dump(2) << "\n";
  if (!out) return InternalError("SaveHfModel: cannot write the index in " + dir);
  return OkStatus();
}

ModelWeights RandomWeights(const ModelConfig& c, uint64_t seed) {
  Rng rng(seed);
  ModelWeights w;
  Fill(rng, c.vocab * c.hidden, 0.0f, 1.0f, &w.embedding);
  w.layers.resize(c.layers);
  for (LayerWeights& l : w.layers) {
    Fill(rng, c.hidden, 1.0f, 0.1f, &l.attn_norm);
    FillLinear(rng, c.q_dim(), c.hidden, &l.wq);
    FillLinear(rng, c.kv_dim(), c.hidden, &l.wk);
    FillLinear(rng, c.kv_dim(), c.hidden, &l.wv);
    if (c.qkv_bias) {
      Fill(rng, c.q_dim(), 0.0f, 0.5f, &l.bq);
      Fill(rng, c.kv_dim(), 0.0f, 0.5f, &l.bk);
      Fill(rng, c.kv_dim(), 0.0f, 0.5f, &l.bv);
    }
    FillLinear(rng, c.hidden, c.q_dim(), &l.wo);
    Fill(rng, c.hidden, 1.0f, 0.1f, &l.ffn_norm);
    FillLinear(rng, c.intermediate, c.hidden, &l.w_gate);
    FillLinear(rng, c.intermediate, c.hidden, &l.w_up);
    FillLinear(rng, c.hidden, c.intermediate, &l.w_down);
  }
  Fill(rng, c.hidden, 1.0f, 0.1f, &w.final_norm);
  if (!c.tie_embeddings) FillLinear(rng, c.vocab, c.hidden, &w.lm_head);
  return w;
}

}  // namespace sqz
