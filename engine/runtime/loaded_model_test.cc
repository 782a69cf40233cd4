#include "engine/runtime/loaded_model.h"

#include <catch2/catch.hpp>
#include <filesystem>

#include "engine/gguf/model_cache.h"

namespace sqz {
namespace {

const std::string kStories = std::string(SQZ_SHARED_DIR) + "/models/stories260K";

TEST_CASE("a Hugging Face directory loads with tokenizer and a stable fingerprint") {
  if (!std::filesystem::exists(kStories)) {
    WARN("skipped: " << kStories << " not found");
    return;
  }
  auto a = LoadModel(kStories);
  REQUIRE(a.ok());
  CHECK(a->format == "hf");
  CHECK(a->name == "stories260K");
  CHECK(a->tokenizer->vocab_size() == 512);
  auto b = LoadModel(kStories);
  REQUIRE(b.ok());
  CHECK(a->fingerprint == b->fingerprint);
  CHECK(FingerprintHex(a->fingerprint).size() == 16);
  // One changed weight changes the fingerprint.
  b->model->weights.final_norm[3] += 1e-3f;
  CHECK(ModelFingerprint(*b->model) != a->fingerprint);
}

TEST_CASE("a missing model path says how to get the default model") {
  auto r = LoadModel("/nonexistent/model.gguf");
  CHECK(r.status().code() == StatusCode::kNotFound);
  CHECK(r.status().message().find("scripts/fetch_model.sh") != std::string::npos);
}

TEST_CASE("the default GGUF loads with its ChatML template") {
  const std::string path = gguf::DefaultModelPath();
  if (!std::filesystem::exists(path)) {
    WARN("skipped: default model not fetched (" << path << ")");
    return;
  }
  auto m = LoadModel(path);
  REQUIRE(m.ok());
  CHECK(m->format == "gguf");
  REQUIRE(m->chat_template.has_value());
  CHECK(m->chat_template->kind == ChatTemplateKind::kChatMl);
  CHECK(m->model->config.layers == 30);
}

}  // namespace
}  // namespace sqz
