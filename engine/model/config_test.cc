#include "engine/model/config.h"

#include <catch2/catch.hpp>
#include <string>

namespace sqz {
namespace {

const char* kLlama2 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
  "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05, "hidden_act": "silu", "rope_scaling": null, "tie_word_embeddings": false,
  "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"})";

const char* kLlama31 = R"({
  "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
  "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": true, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
  "torch_dtype": "bfloat16"})";

const char* kQwen2 = R"({
  "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
  "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
  "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645})";

const char* kMistral = R"({
  "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 32000, "max_position_embeddings": 32768, "rope_theta": 10000.0,
  "sliding_window": null, "bos_token_id": 1, "eos_token_id": 2})";

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  auto pos = s.find(from);
  REQUIRE(pos != std::string::npos);
  return s.replace(pos, from.size(), to);
}

TEST_CASE("ParseHfConfig reads Llama-2") {
  auto c = ParseHfConfig(kLlama2);
  REQUIRE(c.ok());
  CHECK(c->architecture == "llama");
  CHECK(c->hidden == 4096);
  CHECK(c->q_heads == 32);
  CHECK(c->kv_heads == 32);
  CHECK(c->head_dim == 128);
  CHECK(c->rope.theta == 10000.0f);
  CHECK(c->rope.llama3_factor == 0.0f);
  CHECK_FALSE(c->tie_embeddings);
  CHECK_FALSE(c->qkv_bias);
  CHECK(c->bos_id == 1);
  CHECK(c->eos_ids == std::vector<int32_t>{2});
  CHECK(c->torch_dtype == "float16");
  CHECK(c->rms_eps == 1e-5f);
}

TEST_CASE("ParseHfConfig reads Llama-3.1 with llama3 RoPE scaling and an eos list") {
  auto c = ParseHfConfig(kLlama31);
  REQUIRE(c.ok());
  CHECK(c->kv_heads == 8);
  CHECK(c->group_size() == 4);
  CHECK(c->head_dim == 64);
  CHECK(c->rope.theta == 500000.0f);
  CHECK(c->rope.llama3_factor == 32.0f);
  CHECK(c->rope.llama3_low_freq_factor == 1.0f);
  CHECK(c->rope.llama3_high_freq_factor == 4.0f);
  CHECK(c->rope.llama3_original_max_positions == 8192);
  CHECK(c->tie_embeddings);
  CHECK(c->eos_ids == std::vector<int32_t>{128001, 128008, 128009});
}

TEST_CASE("ParseHfConfig reads linear RoPE scaling (old 'type' key)") {
  auto c = ParseHfConfig(Replace(kLlama2, "\"rope_scaling\": null",
                                 R"("rope_scaling": {"type": "linear", "factor": 4})"));
  REQUIRE(c.ok());
  CHECK(c->rope.linear_factor == 4.0f);
}

TEST_CASE("ParseHfConfig: Qwen2 has q/k/v bias, Mistral defaults") {
  auto q = ParseHfConfig(kQwen2);
  REQUIRE(q.ok());
  CHECK(q->qkv_bias);
  CHECK(q->head_dim == 64);
  auto m = ParseHfConfig(kMistral);
  REQUIRE(m.ok());
  CHECK(m->architecture == "mistral");
  CHECK(m->rms_eps == 1e-6f);
  CHECK_FALSE(m->qkv_bias);
  CHECK(m->kv_heads == 8);
}

TEST_CASE("ParseHfConfig: explicit head_dim differs from hidden / heads") {
  auto c = ParseHfConfig(Replace(kLlama2, "\"num_key_value_heads\": 32",
                                 "\"num_key_value_heads\": 8, \"head_dim\": 256"));
  REQUIRE(c.ok());
  CHECK(c->head_dim == 256);
  CHECK(c->q_dim() == 32 * 256);
  CHECK(c->kv_dim() == 8 * 256);
}

TEST_CASE("ParseHfConfig reads the shared stories260K config") {
  // Mirrors /work/shared/models/stories260K/config.json.
  auto c = ParseHfConfig(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
    "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8,
    "vocab_size": 512, "max_position_embeddings": 512, "rms_norm_eps": 1e-05,
    "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": true})");
  REQUIRE(c.ok());
  CHECK(c->ParameterCount() ==
        512 * 64 + 5 * (2 * 64 + 64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 172) + 64);
}

void ExpectError(const std::string& text, StatusCode code, const std::string& fragment) {
  auto c = ParseHfConfig(text);
  REQUIRE_FALSE(c.ok());
  INFO(c.status().ToString());
  CHECK(c.status().code() == code);
  CHECK(c.status().message().find(fragment) != std::string::npos);
}

TEST_CASE("ParseHfConfig errors name the problem") {
  ExpectError("{not json", StatusCode::kInvalidArgument, "not valid JSON");
  ExpectError("[1, 2]", StatusCode::kInvalidArgument, "top level must be an object");
  ExpectError(Replace(kLlama2, "\"model_type\": \"llama\"", "\"model_type\": \"gpt2\""),
              StatusCode::kUnimplemented, "model_type \"gpt2\" is not supported");
  ExpectError(Replace(kLlama2, "\"model_type\": \"llama\",", ""), StatusCode::kInvalidArgument,
              "model_type");
  ExpectError(Replace(kLlama2, "\"hidden_size\": 4096,", ""), StatusCode::kInvalidArgument,
              "missing field \"hidden_size\"");
  ExpectError(Replace(kLlama2, "\"hidden_size\": 4096", "\"hidden_size\": \"big\""),
              StatusCode::kInvalidArgument, "\"hidden_size\" must be an integer");
  ExpectError(Replace(kLlama2, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""),
              StatusCode::kUnimplemented, "hidden_act");
  ExpectError(Replace(kLlama2, "\"rope_scaling\": null",
                      R"("rope_scaling": {"rope_type": "yarn", "factor": 4})"),
              StatusCode::kUnimplemented, "rope_scaling type \"yarn\"");
  ExpectError(Replace(kLlama2, "\"rope_scaling\": null", R"("rope_scaling": {"factor": 4})"),
              StatusCode::kInvalidArgument, "no \"rope_type\"");
  ExpectError(Replace(kLlama2, "\"rope_scaling\": null",
                      R"("rope_scaling": {"rope_type": "linear", "factor": 0})"),
              StatusCode::kInvalidArgument, "factor must be > 0");
  ExpectError(Replace(kLlama2, "\"rope_scaling\": null",
                      R"("rope_scaling": {"rope_type": "llama3", "factor": 8,
                          "low_freq_factor": 4, "high_freq_factor": 1})"),
              StatusCode::kInvalidArgument, "low_freq_factor < high_freq_factor");
  ExpectError(Replace(kLlama2, "\"num_key_value_heads\": 32", "\"num_key_value_heads\": 5"),
              StatusCode::kInvalidArgument, "must be a multiple of num_key_value_heads (5)");
  ExpectError(Replace(kLlama2, "\"num_key_value_heads\": 32",
                      "\"num_key_value_heads\": 32, \"head_dim\": 7"),
              StatusCode::kInvalidArgument, "head_dim must be even");
  ExpectError(Replace(kLlama2, "\"num_hidden_layers\": 32", "\"num_hidden_layers\": 0"),
              StatusCode::kInvalidArgument, "num_hidden_layers must be > 0, got 0");
  ExpectError(Replace(kLlama2, "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0"),
              StatusCode::kInvalidArgument, "rms_norm_eps must be > 0");
  ExpectError(Replace(kLlama2, "\"eos_token_id\": 2", "\"eos_token_id\": 32000"),
              StatusCode::kInvalidArgument, "eos_token_id 32000 is outside the vocabulary");
  ExpectError(Replace(kLlama2, "\"eos_token_id\": 2", "\"eos_token_id\": [2, \"x\"]"),
              StatusCode::kInvalidArgument, "non-integer");
  ExpectError(Replace(kLlama2, "\"tie_word_embeddings\": false", "\"tie_word_embeddings\": 3"),
              StatusCode::kInvalidArgument, "must be true or false");
  ExpectError(Replace(kLlama2, "\"hidden_act\": \"silu\"", "\"mlp_bias\": true"),
              StatusCode::kUnimplemented, "mlp_bias");
}

}  // namespace
}  // namespace sqz
