// ModelConfig: the shape and hyper-parameters of a Llama-family decoder (Llama-2, Llama-3.x,
// Mistral, Qwen2, SmolLM2), filled from a Hugging Face config.json (ParseHfConfig) or from GGUF
// metadata (engine/gguf). Plain data: copyable, no thread-safety concerns.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "kernels/cpu/ops.h"

namespace sqz {

struct ModelConfig {
  // Lower-case model_type: "llama" (also Llama-3.x, SmolLM2), "mistral" or "qwen2".
  std::string architecture = "llama";
  int64_t hidden = 0;           // hidden_size: width of the residual stream
  int64_t intermediate = 0;     // intermediate_size: width of the SwiGLU MLP
  int64_t layers = 0;           // num_hidden_layers
  int64_t q_heads = 0;          // num_attention_heads
  int64_t kv_heads = 0;         // num_key_value_heads (== q_heads for MHA); q_heads % kv_heads == 0
  int64_t head_dim = 0;         // explicit head_dim, else hidden / q_heads; must be even (RoPE)
  int64_t vocab = 0;            // vocab_size: rows of the embedding and the LM head
  int64_t max_positions = 0;    // max_position_embeddings: positions must stay below it
  float rms_eps = 1e-5f;        // rms_norm_eps
  cpu::RopeParams rope;         // rope_theta and rope_scaling (llama3 or linear)
  bool qkv_bias = false;        // q/k/v projections carry a bias (Qwen2, attention_bias)
  bool tie_embeddings = false;  // lm_head shares the token embedding matrix
  int32_t bos_id = -1;          // -1: none
  std::vector<int32_t> eos_ids;         // eos_token_id (an int or a list); may be empty
  std::string torch_dtype = "float32";  // dtype the checkpoint was saved in (informational)

  int64_t q_dim() const { return q_heads * head_dim; }       // width of the q projection
  int64_t kv_dim() const { return kv_heads * head_dim; }     // width of the k and v projections
  int64_t group_size() const { return q_heads / kv_heads; }  // query heads per KV head

  // Number of parameters implied by the shapes (embedding counted once when tied).
  int64_t ParameterCount() const;

  // INVALID_ARGUMENT naming the field when a size is not positive, q_heads is not a multiple of
  // kv_heads, head_dim is odd, rms_eps or rope theta is not positive, a token id is outside the
  // vocabulary, or the RoPE scaling parameters are inconsistent.
  Status Validate() const;
};

// Parses the text of a Hugging Face config.json. Supported model_type: llama, mistral, qwen2
// (architectures LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM). rope_scaling: null,
// {"rope_type"|"type": "llama3", ...} or {"...": "linear", "factor": f}; other types are
// UNIMPLEMENTED. hidden_act must be silu. Errors: INVALID_ARGUMENT (bad JSON, missing or mistyped
// field, failed Validate), UNIMPLEMENTED (unsupported architecture, activation or scaling).
// The result is validated.
StatusOr<ModelConfig> ParseHfConfig(std::string_view json_text);

}  // namespace sqz
