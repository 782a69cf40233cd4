#include "engine/gguf/gguf_model.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "engine/gguf/gguf_tokenizer.h"
#include "engine/gguf/testing/gguf_builder.h"

namespace sqz::gguf {
namespace {

using testing::BuilderTensor;
using testing::GgufBuilder;

bool Contains(const Status& s, const std::string& needle) {
  return s.message().find(needle) != std::string::npos;
}

constexpr int64_t kHidden = 32, kInter = 48, kLayers = 2, kHeads = 4, kKvHeads = 2, kVocab = 7;
constexpr int64_t kHeadDim = kHidden / kHeads;

// A valid tiny llama GGUF (f32, tied embeddings, GQA) with a 7-token SentencePiece vocabulary.
// Rows of attn_q / attn_k hold their GGUF row index, so the un-permutation can be read back.
GgufBuilder TinyLlama(const std::string& arch = "llama") {
  GgufBuilder b;
  const std::string k = arch + ".";
  b.SetString("general.architecture", arch);
  b.SetString("general.name", "tiny");
  b.SetU32(k + "embedding_length", kHidden);
  b.SetU32(k + "feed_forward_length", kInter);
  b.SetU32(k + "block_count", kLayers);
  b.SetU32(k + "context_length", 128);
  b.SetU32(k + "attention.head_count", kHeads);
  b.SetU32(k + "attention.head_count_kv", kKvHeads);
  b.SetU32(k + "rope.dimension_count", kHeadDim);
  b.SetF32(k + "attention.layer_norm_rms_epsilon", 1e-5f);
  b.SetF32(k + "rope.freq_base", 10000.0f);
  b.SetString("tokenizer.ggml.model", "llama");
  b.Set("tokenizer.ggml.tokens",
        Value::StringArray({"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b",
                            "\xE2\x96\x81"
                            "a"}));
  b.Set("tokenizer.ggml.scores", Value::FloatArray(ValueType::kFloat32, {0, 0, 0, -1, -2, -3, -4}));
  b.SetU32("tokenizer.ggml.bos_token_id", 1);
  b.SetU32("tokenizer.ggml.eos_token_id", 2);
  b.SetU32("tokenizer.ggml.unknown_token_id", 0);
  b.SetF32Tensor("token_embd.weight", {kHidden, kVocab});
  b.SetF32Tensor("output_norm.weight", {kHidden});
  auto row_index = [](int64_t rows) {
    std::vector<float> v(rows * kHidden);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < kHidden; ++c) v[r * kHidden + c] = static_cast<float>(r);
    }
    return v;
  };
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    b.SetF32Tensor(p + "attn_norm.weight", {kHidden});
    b.SetF32Tensor(p + "attn_q.weight", {kHidden, kHeads * kHeadDim}, row_index(kHeads * kHeadDim));
    b.SetF32Tensor(p + "attn_k.weight", {kHidden, kKvHeads * kHeadDim},
                   row_index(kKvHeads * kHeadDim));
    b.SetF32Tensor(p + "attn_v.weight", {kHidden, kKvHeads * kHeadDim});
    b.SetF32Tensor(p + "attn_output.weight", {kHeads * kHeadDim, kHidden});
    b.SetF32Tensor(p + "ffn_norm.weight", {kHidden});
    b.SetF32Tensor(p + "ffn_gate.weight", {kHidden, kInter});
    b.SetF32Tensor(p + "ffn_up.weight", {kHidden, kInter});
    b.SetF32Tensor(p + "ffn_down.weight", {kInter, kHidden});
  }
  return b;
}

StatusOr<ModelConfig> Config(const GgufBuilder& b) {
  return ModelConfigFromGguf(*b.Open("m.gguf"));
}

Status LoadError(const GgufBuilder& b) {
  auto f = b.Open("m.gguf");
  auto c = ModelConfigFromGguf(*f);
  if (!c.ok()) return c.status();
  return ModelWeightsFromGguf(*f, *c).status();
}

TEST_CASE("llama metadata maps onto ModelConfig", "[gguf]") {
  auto c = Config(TinyLlama());
  REQUIRE(c.ok());
  CHECK(c->architecture == "llama");
  CHECK(c->hidden == kHidden);
  CHECK(c->intermediate == kInter);
  CHECK(c->layers == kLayers);
  CHECK(c->q_heads == kHeads);
  CHECK(c->kv_heads == kKvHeads);
  CHECK(c->head_dim == kHeadDim);
  CHECK(c->vocab == kVocab);  // from the token list (no llama.vocab_size)
  CHECK(c->max_positions == 128);
  CHECK(c->rms_eps == 1e-5f);
  CHECK(c->rope.theta == 10000.0f);
  CHECK(c->rope.llama3_factor == 0.0f);
  CHECK(c->rope.linear_factor == 0.0f);
  CHECK_FALSE(c->qkv_bias);
  CHECK(c->tie_embeddings);
  CHECK(c->bos_id == 1);
  CHECK(c->eos_ids == std::vector<int32_t>{2});
  CHECK(c->torch_dtype == "gguf F32");
}

TEST_CASE("end-of-turn ids join the config's EOS ids, as the tokenizer's", "[gguf]") {
  GgufBuilder b = TinyLlama();
  b.SetU32("tokenizer.ggml.eot_token_id", 5);
  b.SetU32("tokenizer.ggml.eom_token_id", 2);
  auto c = Config(b);
  REQUIRE(c.ok());
  CHECK(c->eos_ids == std::vector<int32_t>{2, 5});
  auto t = TokenizerModelFromGguf(*b.Open());
  REQUIRE(t.ok());
  CHECK(t->eos_ids == c->eos_ids);
}

TEST_CASE("defaults: kv heads, head size, theta and vocabulary size", "[gguf]") {
  GgufBuilder b = TinyLlama();
  b.Erase("llama.attention.head_count_kv");
  b.Erase("llama.rope.dimension_count");
  b.Erase("llama.rope.freq_base");
  b.Erase("tokenizer.ggml.tokens");
  auto c = Config(b);
  REQUIRE(c.ok());
  CHECK(c->kv_heads == kHeads);
  CHECK(c->head_dim == kHeadDim);
  CHECK(c->rope.theta == 10000.0f);
  CHECK(c->vocab == kVocab);  // from token_embd.weight
  b.SetU32("llama.vocab_size", 9);
  CHECK(Config(b)->vocab == 9);
  b.SetU32("llama.attention.key_length", 16);
  b.SetU32("llama.attention.value_length", 16);
  CHECK(Config(b)->head_dim == 16);
}

TEST_CASE("linear RoPE scaling is read from either key", "[gguf]") {
  GgufBuilder b = TinyLlama();
  b.SetString("llama.rope.scaling.type", "linear");
  b.SetF32("llama.rope.scaling.factor", 4.0f);
  CHECK(Config(b)->rope.linear_factor == 4.0f);
  b.Erase("llama.rope.scaling.factor");
  CHECK(Config(b).status().code() == StatusCode::kNotFound);
  b = TinyLlama();
  b.SetF32("llama.rope.scale_linear", 2.0f);
  CHECK(Config(b)->rope.linear_factor == 2.0f);
  b.SetString("llama.rope.scaling.type", "none");
  b.SetF32("llama.rope.scale_linear", 1.0f);
  CHECK(Config(b)->rope.linear_factor == 0.0f);
}

TEST_CASE("llama q/k rows are un-permuted to the Hugging Face layout", "[gguf]") {
  auto f = TinyLlama().Open();
  auto c = ModelConfigFromGguf(*f);
  REQUIRE(c.ok());
  auto w = ModelWeightsFromGguf(*f, *c);
  REQUIRE(w.ok());
  const int64_t half = kHeadDim / 2;
  for (const LayerWeights& L : w->layers) {
    for (int64_t h = 0; h < kHeads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        for (int64_t j = 0; j < 2; ++j) {
          // HF row h*d + j*d/2 + i comes from GGUF row h*d + 2i + j.
          const int64_t hf = h * kHeadDim + j * half + i, gg = h * kHeadDim + 2 * i + j;
          REQUIRE(L.wq[hf * kHidden] == static_cast<float>(gg));
          REQUIRE(L.wq[hf * kHidden + kHidden - 1] == static_cast<float>(gg));
          if (h < kKvHeads) REQUIRE(L.wk[hf * kHidden] == static_cast<float>(gg));
        }
      }
    }
  }
  CHECK(w->lm_head.empty());  // tied
  CHECK(w->Validate(*c).ok());
}

TEST_CASE("qwen2 files are not permuted and carry q/k/v biases", "[gguf]") {
  GgufBuilder b = TinyLlama("qwen2");
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    b.SetF32Tensor(p + "attn_q.bias", {kHeads * kHeadDim});
    b.SetF32Tensor(p + "attn_k.bias", {kKvHeads * kHeadDim});
    b.SetF32Tensor(p + "attn_v.bias", {kKvHeads * kHeadDim});
  }
  b.SetF32Tensor("output.weight", {kHidden, kVocab});
  auto f = b.Open();
  auto c = ModelConfigFromGguf(*f);
  REQUIRE(c.ok());
  CHECK(c->architecture == "qwen2");
  CHECK(c->qkv_bias);
  CHECK_FALSE(c->tie_embeddings);
  auto w = ModelWeightsFromGguf(*f, *c);
  REQUIRE(w.ok());
  for (int64_t r = 0; r < kHeads * kHeadDim; ++r) {
    REQUIRE(w->layers[1].wq[r * kHidden] == static_cast<float>(r));
  }
  CHECK(w->layers[0].bq.size() == static_cast<size_t>(kHeads * kHeadDim));
  CHECK(w->lm_head.size() == static_cast<size_t>(kHidden * kVocab));

  b.EraseTensor("blk.1.attn_v.bias");
  Status s = LoadError(b);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(Contains(s, "tensor 'blk.1.attn_v.bias' not found"));
}

TEST_CASE("a rope_freqs tensor is fitted as llama3 scaling or rejected", "[gguf]") {
  // Divisors as llama.cpp's converter computes them for factor 8, low 1, high 4, original 32.
  GgufBuilder b = TinyLlama();
  b.SetF32("llama.rope.freq_base", 500000.0f);
  std::vector<float> divisors;
  for (int64_t i = 0; i < kHeadDim / 2; ++i) {
    const double freq = 1.0 / std::pow(500000.0, 2.0 * i / kHeadDim);
    const double wavelen = 2 * 3.141592653589793 / freq;
    if (wavelen < 32.0 / 4) {
      divisors.push_back(1.0f);
    } else if (wavelen > 32.0) {
      divisors.push_back(8.0f);
    } else {
      const double smooth = (32.0 / wavelen - 1) / 3;
      divisors.push_back(static_cast<float>(1 / ((1 - smooth) / 8 + smooth)));
    }
  }
  b.SetF32Tensor("rope_freqs.weight", {kHeadDim / 2}, divisors);
  b.SetU32("llama.rope.scaling.original_context_length", 32);
  auto c = Config(b);
  REQUIRE(c.ok());
  CHECK(c->rope.llama3_factor == 8.0f);
  CHECK(c->rope.llama3_original_max_positions == 32);
  // Without the key: no divisor lies in the smooth band here, so any original length in
  // (4 * 6.28, 167.4) reproduces them; the loader picks one that does.
  b.Erase("llama.rope.scaling.original_context_length");
  c = Config(b);
  REQUIRE(c.ok());
  CHECK(c->rope.llama3_factor == 8.0f);
  CHECK(c->rope.llama3_original_max_positions > 4 * 6.28);
  CHECK(c->rope.llama3_original_max_positions < 167.4);

  divisors[0] = 3.0f;
  b.SetF32Tensor("rope_freqs.weight", {kHeadDim / 2}, divisors);
  Status s = Config(b).status();
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(Contains(s, "rope_freqs.weight does not match llama3 RoPE scaling"));
  b.SetF32Tensor("rope_freqs.weight", {3}, {1, 1, 1});
  CHECK(
      Contains(Config(b).status(), "rope_freqs.weight has 3 elements, expected head_dim / 2 = 4"));
  b.SetF32Tensor("rope_freqs.weight", {kHeadDim / 2}, {1, 1, 1, 1});
  CHECK(Config(b)->rope.llama3_factor == 0.0f);  // all ones: no scaling
}

TEST_CASE("unsupported metadata is rejected with clear messages", "[gguf]") {
  GgufBuilder b = TinyLlama();
  b.SetString("general.architecture", "gpt2");
  Status s = Config(b).status();
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(s.message() ==
        "GGUF m.gguf: architecture 'gpt2' is not supported (supported: llama, qwen2)");
  b.Erase("general.architecture");
  CHECK(Config(b).status().code() == StatusCode::kNotFound);

  b = TinyLlama();
  b.Erase("llama.embedding_length");
  s = Config(b).status();
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(Contains(s, "missing key 'llama.embedding_length'"));
  b = TinyLlama();
  b.SetString("llama.block_count", "2");
  CHECK(Contains(Config(b).status(), "'llama.block_count' is string, expected an integer"));
  b = TinyLlama();
  b.SetU32("llama.attention.head_count", 0);
  CHECK(Contains(Config(b).status(), "attention.head_count must be positive, got 0"));
  b = TinyLlama();
  b.SetU32("llama.attention.head_count_kv", 3);  // 4 % 3 != 0: ModelConfig::Validate
  s = Config(b).status();
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(Contains(s, "GGUF m.gguf: "));
  b = TinyLlama();
  b.SetU32("llama.rope.dimension_count", 4);
  s = Config(b).status();
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(Contains(s, "partial rotary embeddings are not supported"));
  b = TinyLlama();
  b.SetU32("llama.attention.value_length", 4);
  CHECK(Contains(Config(b).status(), "attention.value_length 4 differs from key_length 8"));
  b = TinyLlama();
  b.SetString("llama.rope.scaling.type", "yarn");
  s = Config(b).status();
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(Contains(s, "RoPE scaling type 'yarn' is not supported"));
  b = TinyLlama();
  b.Erase("llama.attention.layer_norm_rms_epsilon");
  CHECK(Config(b).status().code() == StatusCode::kNotFound);
}

TEST_CASE("missing, misshapen and undequantizable tensors are rejected", "[gguf]") {
  GgufBuilder b = TinyLlama();
  b.EraseTensor("blk.1.ffn_down.weight");
  Status s = LoadError(b);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.message() == "GGUF m.gguf: tensor 'blk.1.ffn_down.weight' not found");

  b = TinyLlama();
  b.SetF32Tensor("blk.0.attn_k.weight", {kHidden, kHeads * kHeadDim});
  s = LoadError(b);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() ==
        "GGUF m.gguf: tensor 'blk.0.attn_k.weight' has dims [32, 32], expected [32, 16] (ggml "
        "order)");
  b = TinyLlama();
  b.SetF32Tensor("token_embd.weight", {kVocab, kHidden});  // transposed
  CHECK(Contains(LoadError(b), "'token_embd.weight' has dims [7, 32], expected [32, 7]"));
  b = TinyLlama();
  b.EraseTensor("output_norm.weight");
  CHECK(Contains(LoadError(b), "tensor 'output_norm.weight' not found"));

  // IQ4_NL: a real ggml type (32-element blocks of 18 bytes) that we do not dequantize.
  b = TinyLlama();
  b.SetTensor(
      BuilderTensor{"blk.0.ffn_up.weight", {kHidden, kInter}, 20, std::string(kInter * 18, '\0')});
  s = LoadError(b);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(Contains(s, "tensor 'blk.0.ffn_up.weight' has type IQ4_NL, which we cannot dequantize"));
}

TEST_CASE("LoadGgufModel returns model, tokenizer and template, or the first error", "[gguf]") {
  const std::string dir = SQZ_BINARY_DIR;
  GgufBuilder b = TinyLlama();
  b.SetString("tokenizer.chat_template", "{{ '<|im_start|>' }}");
  auto g = LoadGgufModel(b.WriteTo(dir, "gguf_model_test.gguf"));
  REQUIRE(g.ok());
  CHECK(g->model != nullptr);
  CHECK(g->model->config.layers == kLayers);
  CHECK(g->tokenizer.tokens.size() == static_cast<size_t>(kVocab));
  CHECK(g->chat_template == "{{ '<|im_start|>' }}");
  CHECK(g->name == "tiny");
  auto tok = Tokenizer::Create(g->tokenizer);
  INFO(tok.status().ToString());
  CHECK(tok.ok());

  auto missing = LoadGgufModel(dir + "/no-such-model.gguf");
  CHECK(missing.status().code() == StatusCode::kNotFound);
  b.SetU32("llama.vocab_size", 5);  // fewer rows than tokens
  b.SetF32Tensor("token_embd.weight", {kHidden, 5});
  Status s = LoadGgufModel(b.WriteTo(dir, "gguf_model_test.gguf")).status();
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(Contains(s, "the tokenizer has 7 tokens, more than the model's vocabulary of 5"));
  b = TinyLlama();
  b.Erase("tokenizer.ggml.model");
  s = LoadGgufModel(b.WriteTo(dir, "gguf_model_test.gguf")).status();
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(Contains(s, "missing key 'tokenizer.ggml.model'"));
  std::remove((dir + "/gguf_model_test.gguf").c_str());
}

}  // namespace
}  // namespace sqz::gguf
