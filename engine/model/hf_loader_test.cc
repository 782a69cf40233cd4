#include "engine/model/hf_loader.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "engine/model/hf_writer.h"
#include "engine/model/testing/temp_dir.h"

namespace sqz {
namespace {

using testing::TempDir;

ModelConfig TinyConfig(bool qkv_bias, bool tied) {
  ModelConfig c;
  c.hidden = 12;
  c.intermediate = 20;
  c.layers = 3;
  c.q_heads = 3;
  c.kv_heads = 1;
  c.head_dim = 4;
  c.vocab = 17;
  c.max_positions = 64;
  c.qkv_bias = qkv_bias;
  c.tie_embeddings = tied;
  c.bos_id = 1;
  c.eos_ids = {2};
  c.rope.llama3_factor = 8.0f;
  c.rope.llama3_original_max_positions = 32;
  return c;
}

bool SameWeights(const ModelWeights& a, const ModelWeights& b) {
  if (a.embedding != b.embedding || a.final_norm != b.final_norm || a.lm_head != b.lm_head ||
      a.layers.size() != b.layers.size()) {
    return false;
  }
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const LayerWeights& x = a.layers[i];
    const LayerWeights& y = b.layers[i];
    if (x.attn_norm != y.attn_norm || x.wq != y.wq || x.wk != y.wk || x.wv != y.wv ||
        x.bq != y.bq || x.bk != y.bk || x.bv != y.bv || x.wo != y.wo || x.ffn_norm != y.ffn_norm ||
        x.w_gate != y.w_gate || x.w_up != y.w_up || x.w_down != y.w_down) {
      return false;
    }
  }
  return true;
}

// Rounds every weight as the dtype would store it.
ModelWeights Rounded(ModelWeights w, TensorDType dtype) {
  auto r = [&](std::vector<float>& v) {
    for (float& x : v) {
      x = dtype == TensorDType::kBF16  ? Bf16ToFloat(FloatToBf16(x))
          : dtype == TensorDType::kF16 ? F16ToFloat(FloatToF16(x))
                                       : x;
    }
  };
  r(w.embedding);
  r(w.final_norm);
  r(w.lm_head);
  for (LayerWeights& l : w.layers) {
    for (auto* v : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo, &l.ffn_norm,
                    &l.w_gate, &l.w_up, &l.w_down}) {
      r(*v);
    }
  }
  return w;
}

TEST_CASE("LoadHfModel round-trips single and sharded files in F32, BF16 and F16") {
  for (bool bias : {false, true}) {
    for (bool tied : {false, true}) {
      for (TensorDType dtype : {TensorDType::kF32, TensorDType::kBF16, TensorDType::kF16}) {
        for (int shards : {1, 3}) {
          TempDir dir;
          Model m(TinyConfig(bias, tied), RandomWeights(TinyConfig(bias, tied), 42));
          REQUIRE(SaveHfModel(m, dir.path(), dtype, shards).ok());
          auto loaded = LoadHfModel(dir.path());
          INFO("bias " << bias << " tied " << tied << " dtype " << TensorDTypeName(dtype)
                       << " shards " << shards);
          REQUIRE(loaded.ok());
          const ModelConfig& c = (*loaded)->config;
          CHECK(c.qkv_bias == bias);
          CHECK(c.tie_embeddings == tied);
          CHECK(c.rope.llama3_factor == 8.0f);
          CHECK(c.rope.llama3_original_max_positions == 32);
          CHECK(c.eos_ids == std::vector<int32_t>{2});
          CHECK(SameWeights((*loaded)->weights, Rounded(m.weights, dtype)));
        }
      }
    }
  }
}

TEST_CASE("RandomWeights is deterministic per seed") {
  ModelConfig c = TinyConfig(true, false);
  CHECK(SameWeights(RandomWeights(c, 5), RandomWeights(c, 5)));
  CHECK_FALSE(SameWeights(RandomWeights(c, 5), RandomWeights(c, 6)));
  CHECK(RandomWeights(c, 5).Validate(c).ok());
}

TEST_CASE("HfConfigJson round-trips through ParseHfConfig") {
  ModelConfig c = TinyConfig(true, true);
  c.architecture = "qwen2";
  c.eos_ids = {2, 3};
  c.rope = cpu::RopeParams{};
  c.rope.linear_factor = 2.0f;
  auto back = ParseHfConfig(HfConfigJson(c));
  REQUIRE(back.ok());
  CHECK(back->architecture == "qwen2");
  CHECK(back->eos_ids == c.eos_ids);
  CHECK(back->rope.linear_factor == 2.0f);
  CHECK(back->rms_eps == c.rms_eps);
  CHECK(back->head_dim == 4);
}

// A valid model in a fresh dir, then `mutate` breaks it; LoadHfModel must fail as stated.
template <typename F>
void ExpectLoadError(int shards, F mutate, StatusCode code, const std::string& fragment) {
  TempDir dir;
  Model m(TinyConfig(true, false), RandomWeights(TinyConfig(true, false), 1));
  REQUIRE(SaveHfModel(m, dir.path(), TensorDType::kF32, shards).ok());
  mutate(dir, m);
  auto loaded = LoadHfModel(dir.path());
  REQUIRE_FALSE(loaded.ok());
  INFO(loaded.status().ToString());
  CHECK(loaded.status().code() == code);
  CHECK(loaded.status().message().find(fragment) != std::string::npos);
}

std::string ReadAll(const std::string& path) { return ReadTextFile(path).value(); }

std::string ReplaceOnce(std::string s, const std::string& from, const std::string& to) {
  auto pos = s.find(from);
  REQUIRE(pos != std::string::npos);
  return s.replace(pos, from.size(), to);
}

TEST_CASE("LoadHfModel errors: files") {
  auto missing = LoadHfModel("/nonexistent/model/dir");
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find("config.json") != std::string::npos);
  ExpectLoadError(
      1, [](const TempDir& d, Model&) { std::filesystem::remove(d.File("model.safetensors")); },
      StatusCode::kNotFound, "no model.safetensors or model.safetensors.index.json");
  ExpectLoadError(
      1, [](const TempDir& d, Model&) { d.Write("config.json", "{\"model_type\": "); },
      StatusCode::kInvalidArgument, "not valid JSON");
  ExpectLoadError(
      1,
      [](const TempDir& d, Model&) {
        d.Write("config.json",
                ReplaceOnce(ReadAll(d.File("config.json")), "\"llama\"", "\"falcon\""));
      },
      StatusCode::kUnimplemented, "model_type \"falcon\" is not supported");
  ExpectLoadError(
      1,
      [](const TempDir& d, Model&) {
        std::string bytes = ReadAll(d.File("model.safetensors"));
        d.Write("model.safetensors", bytes.substr(0, bytes.size() - 3));
      },
      StatusCode::kDataLoss, "truncated");
}

TEST_CASE("LoadHfModel errors: sharded index") {
  ExpectLoadError(
      2, [](const TempDir& d, Model&) { d.Write("model.safetensors.index.json", "{oops"); },
      StatusCode::kInvalidArgument, "model.safetensors.index.json: not a valid JSON object");
  ExpectLoadError(
      2, [](const TempDir& d, Model&) { d.Write("model.safetensors.index.json", "{}"); },
      StatusCode::kInvalidArgument, "no \"weight_map\"");
  ExpectLoadError(
      2,
      [](const TempDir& d, Model&) {
        std::filesystem::remove(d.File("model-00002-of-00002.safetensors"));
      },
      StatusCode::kNotFound, "model-00002-of-00002.safetensors");
  ExpectLoadError(
      2,
      [](const TempDir& d, Model&) {
        // The index claims a tensor lives in shard 1 while it is in shard 2.
        d.Write("model.safetensors.index.json",
                ReplaceOnce(ReadAll(d.File("model.safetensors.index.json")),
                            "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"",
                            "\"model.norm.weight\": \"model-00001-of-00002.safetensors\""));
      },
      StatusCode::kNotFound, "model.norm.weight is listed in the index but not found");
  ExpectLoadError(
      2,
      [](const TempDir& d, Model&) {
        d.Write("model.safetensors.index.json",
                ReplaceOnce(ReadAll(d.File("model.safetensors.index.json")),
                            "\"model.norm.weight\"", "\"model.norm.weight.renamed\""));
      },
      StatusCode::kNotFound, "tensor model.norm.weight not found");
}

TEST_CASE("LoadHfModel errors: tensors") {
  ExpectLoadError(
      1,
      [](const TempDir& d, Model& m) {
        m.weights.layers[2].bk.clear();  // written without the k bias
        ModelConfig no_bias = m.config;
        no_bias.qkv_bias = false;
        for (LayerWeights& l : m.weights.layers) l.bq.clear(), l.bk.clear(), l.bv.clear();
        Model stripped(no_bias, std::move(m.weights));
        REQUIRE(SaveHfModel(stripped, d.path(), TensorDType::kF32).ok());
        // Restore the config that asks for biases.
        d.Write("config.json", HfConfigJson(m.config));
      },
      StatusCode::kNotFound, "model.layers.0.self_attn.q_proj.bias not found");
  ExpectLoadError(
      1,
      [](const TempDir& d, Model& m) {
        ModelConfig wider = m.config;
        wider.kv_heads = 3;  // config says MHA, file holds GQA k/v
        d.Write("config.json", HfConfigJson(wider));
      },
      StatusCode::kInvalidArgument,
      "tensor model.layers.0.self_attn.k_proj.weight has shape [4, 12], expected [12, 12]");
  ExpectLoadError(
      1,
      [](const TempDir& d, Model& m) {
        ModelConfig untied = m.config;
        m.config.tie_embeddings = true;
        m.weights.lm_head.clear();
        REQUIRE(SaveHfModel(m, d.path(), TensorDType::kF32).ok());
        d.Write("config.json", HfConfigJson(untied));
      },
      StatusCode::kNotFound, "tensor lm_head.weight not found");
}

TEST_CASE("LoadHfModel reads the shared stories260K model") {
  const std::string dir = std::string(SQZ_SHARED_DIR) + "/models/stories260K";
  if (!std::filesystem::exists(dir + "/model.safetensors")) {
    WARN("skipped: " << dir << " is absent");
    return;
  }
  auto m = LoadHfModel(dir);
  REQUIRE(m.ok());
  CHECK((*m)->config.layers == 5);
  CHECK((*m)->config.kv_heads == 4);
  CHECK((*m)->config.tie_embeddings);
  CHECK((*m)->weights.lm_head.empty());
  CHECK((*m)->weights.LmHead() == (*m)->weights.embedding.data());
}

}  // namespace
}  // namespace sqz
