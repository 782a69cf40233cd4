#include "engine/model/config.h"

#include <nlohmann/json.hpp>
#include <string>

namespace sqz {
namespace {

using json = nlohmann::json;

// Reads an integer field. Missing: `fallback` if given, else INVALID_ARGUMENT.
StatusOr<int64_t> GetInt(const json& j, const char* key, std::optional<int64_t> fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return InvalidArgumentError(std::string("config.json: missing field \"") + key + "\"");
  }
  if (!it->is_number_integer()) {
    return InvalidArgumentError(std::string("config.json: field \"") + key +
                                "\" must be an integer, got " + it->dump());
  }
  return it->get<int64_t>();
}

StatusOr<double> GetNumber(const json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) {
    return InvalidArgumentError(std::string("config.json: field \"") + key +
                                "\" must be a number, got " + it->dump());
  }
  return it->get<double>();
}

StatusOr<bool> GetBool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return InvalidArgumentError(std::string("config.json: field \"") + key +
                                "\" must be true or false, got " + it->dump());
  }
  return it->get<bool>();
}

Status ParseRopeScaling(const json& j, cpu::RopeParams* rope) {
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return OkStatus();
  if (!it->is_object()) {
    return InvalidArgumentError("config.json: rope_scaling must be an object or null, got " +
                                it->dump());
  }
  const json& rs = *it;
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto t = rs.find(key);
    if (t != rs.end() && t->is_string()) {
      type = t->get<std::string>();
      break;
    }
  }
  if (type.empty()) {
    return InvalidArgumentError("config.json: rope_scaling has no \"rope_type\" (or \"type\")");
  }
  if (type == "default") return OkStatus();
  SQZ_ASSIGN_OR_RETURN(double factor, GetNumber(rs, "factor", 0.0));
  if (!(factor > 0.0)) {
    return InvalidArgumentError("config.json: rope_scaling.factor must be > 0 for type \"" + type +
                                "\"");
  }
  if (type == "linear") {
    rope->linear_factor = static_cast<float>(factor);
    return OkStatus();
  }
  if (type == "llama3") {
    rope->llama3_factor = static_cast<float>(factor);
    SQZ_ASSIGN_OR_RETURN(double low, GetNumber(rs, "low_freq_factor", 1.0));
    SQZ_ASSIGN_OR_RETURN(double high, GetNumber(rs, "high_freq_factor", 4.0));
    SQZ_ASSIGN_OR_RETURN(int64_t orig,
                         GetInt(rs, "original_max_position_embeddings", int64_t{8192}));
    rope->llama3_low_freq_factor = static_cast<float>(low);
    rope->llama3_high_freq_factor = static_cast<float>(high);
    rope->llama3_original_max_positions = orig;
    return OkStatus();
  }
  return UnimplementedError("config.json: rope_scaling type \"" + type +
                            "\" is not supported (supported: llama3, linear)");
}

// eos_token_id may be an int, a list of ints, or absent.
Status ParseEos(const json& j, std::vector<int32_t>* eos) {
  auto it = j.find("eos_token_id");
  if (it == j.end() || it->is_null()) return OkStatus();
  if (it->is_number_integer()) {
    eos->push_back(it->get<int32_t>());
    return OkStatus();
  }
  if (it->is_array()) {
    for (const json& e : *it) {
      if (!e.is_number_integer()) {
        return InvalidArgumentError("config.json: eos_token_id list holds a non-integer " +
                                    e.dump());
      }
      eos->push_back(e.get<int32_t>());
    }
    return OkStatus();
  }
  return InvalidArgumentError("config.json: eos_token_id must be an integer or a list, got " +
                              it->dump());
}

StatusOr<ModelConfig> ParseJson(const json& j) {
  if (!j.is_object()) return InvalidArgumentError("config.json: top level must be an object");
  ModelConfig c;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) {
    return InvalidArgumentError("config.json: missing string field \"model_type\"");
  }
  c.architecture = mt->get<std::string>();
  if (c.architecture != "llama" && c.architecture != "mistral" && c.architecture != "qwen2") {
    return UnimplementedError("config.json: model_type \"" + c.architecture +
                              "\" is not supported (supported: llama, mistral, qwen2)");
  }
  auto act = j.find("hidden_act");
  if (act != j.end() && !(act->is_string() && act->get<std::string>() == "silu")) {
    return UnimplementedError("config.json: hidden_act " + act->dump() +
                              " is not supported (only \"silu\")");
  }
  SQZ_ASSIGN_OR_RETURN(c.hidden, GetInt(j, "hidden_size", std::nullopt));
  SQZ_ASSIGN_OR_RETURN(c.intermediate, GetInt(j, "intermediate_size", std::nullopt));
  SQZ_ASSIGN_OR_RETURN(c.layers, GetInt(j, "num_hidden_layers", std::nullopt));
  SQZ_ASSIGN_OR_RETURN(c.q_heads, GetInt(j, "num_attention_heads", std::nullopt));
  SQZ_ASSIGN_OR_RETURN(c.kv_heads, GetInt(j, "num_key_value_heads", c.q_heads));
  SQZ_ASSIGN_OR_RETURN(c.vocab, GetInt(j, "vocab_size", std::nullopt));
  SQZ_ASSIGN_OR_RETURN(c.max_positions, GetInt(j, "max_position_embeddings", int64_t{2048}));
  const int64_t default_head_dim = c.q_heads > 0 ? c.hidden / c.q_heads : 0;
  SQZ_ASSIGN_OR_RETURN(c.head_dim, GetInt(j, "head_dim", default_head_dim));
  SQZ_ASSIGN_OR_RETURN(double eps, GetNumber(j, "rms_norm_eps", 1e-6));
  c.rms_eps = static_cast<float>(eps);
  SQZ_ASSIGN_OR_RETURN(double theta, GetNumber(j, "rope_theta", 10000.0));
  c.rope.theta = static_cast<float>(theta);
  SQZ_RETURN_IF_ERROR(ParseRopeScaling(j, &c.rope));
  // Qwen2 always has q/k/v biases; Llama and Mistral when attention_bias is set.
  SQZ_ASSIGN_OR_RETURN(bool attention_bias, GetBool(j, "attention_bias", false));
  c.qkv_bias = attention_bias || c.architecture == "qwen2";
  SQZ_ASSIGN_OR_RETURN(bool mlp_bias, GetBool(j, "mlp_bias", false));
  if (mlp_bias) return UnimplementedError("config.json: mlp_bias=true is not supported");
  SQZ_ASSIGN_OR_RETURN(c.tie_embeddings, GetBool(j, "tie_word_embeddings", false));
  SQZ_ASSIGN_OR_RETURN(int64_t bos, GetInt(j, "bos_token_id", int64_t{-1}));
  c.bos_id = static_cast<int32_t>(bos);
  SQZ_RETURN_IF_ERROR(ParseEos(j, &c.eos_ids));
  auto dt = j.find("torch_dtype");
  if (dt != j.end() && dt->is_string()) c.torch_dtype = dt->get<std::string>();
  SQZ_RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace

int64_t ModelConfig::ParameterCount() const {
  const int64_t per_layer = 2 * hidden + hidden * q_dim() + 2 * hidden * kv_dim() +
                            q_dim() * hidden + 3 * hidden * intermediate +
                            (qkv_bias ? q_dim() + 2 * kv_dim() : 0);
  return vocab * hidden * (tie_embeddings ? 1 : 2) + layers * per_layer + hidden;
}

Status ModelConfig::Validate() const {
  auto positive = [](int64_t v, const char* name) -> Status {
    if (v <= 0) {
      return InvalidArgumentError(std::string("model config: ") + name + " must be > 0, got " +
                                  std::to_string(v));
    }
    return OkStatus();
  };
  SQZ_RETURN_IF_ERROR(positive(hidden, "hidden_size"));
  SQZ_RETURN_IF_ERROR(positive(intermediate, "intermediate_size"));
  SQZ_RETURN_IF_ERROR(positive(layers, "num_hidden_layers"));
  SQZ_RETURN_IF_ERROR(positive(q_heads, "num_attention_heads"));
  SQZ_RETURN_IF_ERROR(positive(kv_heads, "num_key_value_heads"));
  SQZ_RETURN_IF_ERROR(positive(head_dim, "head_dim"));
  SQZ_RETURN_IF_ERROR(positive(vocab, "vocab_size"));
  SQZ_RETURN_IF_ERROR(positive(max_positions, "max_position_embeddings"));
  if (q_heads % kv_heads != 0) {
    return InvalidArgumentError("model config: num_attention_heads (" + std::to_string(q_heads) +
                                ") must be a multiple of num_key_value_heads (" +
                                std::to_string(kv_heads) + ")");
  }
  if (head_dim % 2 != 0) {
    return InvalidArgumentError("model config: head_dim must be even for RoPE, got " +
                                std::to_string(head_dim));
  }
  if (!(rms_eps > 0.0f)) {
    return InvalidArgumentError("model config: rms_norm_eps must be > 0, got " +
                                std::to_string(rms_eps));
  }
  if (!(rope.theta > 0.0f)) {
    return InvalidArgumentError("model config: rope_theta must be > 0, got " +
                                std::to_string(rope.theta));
  }
  if (rope.llama3_factor > 0.0f && rope.linear_factor > 0.0f) {
    return InvalidArgumentError("model config: both llama3 and linear RoPE scaling are set");
  }
  if (rope.llama3_factor > 0.0f &&
      !(rope.llama3_high_freq_factor > rope.llama3_low_freq_factor &&
        rope.llama3_low_freq_factor > 0.0f && rope.llama3_original_max_positions > 0)) {
    return InvalidArgumentError(
        "model config: llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and "
        "original_max_position_embeddings > 0");
  }
  if (bos_id >= vocab || bos_id < -1) {
    return InvalidArgumentError("model config: bos_token_id " + std::to_string(bos_id) +
                                " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  for (int32_t e : eos_ids) {
    if (e < 0 || e >= vocab) {
      return InvalidArgumentError("model config: eos_token_id " + std::to_string(e) +
                                  " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
  return OkStatus();
}

StatusOr<ModelConfig> ParseHfConfig(std::string_view json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("config.json: not valid JSON");
  try {
    return ParseJson(j);
  } catch (const json::exception& e) {  // e.g. an integer out of int64 range
    return InvalidArgumentError(std::string("config.json: ") + e.what());
  }
}

}  // namespace sqz
