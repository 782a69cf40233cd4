// The committed longctx model (models/longctx) in our runtime: it loads (config, bf16 safetensors,
// tokenizer.json), tokenizes the golden prompt as SentencePiece did, gives the logits Hugging Face
// transformers gave (tests/longctx/testdata/golden.json, from make_golden.py), and answers the
// golden question correctly, dense and through Squeezed Attention at KV budget 1.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/model/cpu_backend.h"
#include "engine/runtime/loaded_model.h"
#include "tools/needle/needle.h"

namespace sqz {
namespace {

const std::string kModelDir = std::string(SQZ_SOURCE_DIR) + "/models/longctx";
const std::string kGolden = std::string(SQZ_SOURCE_DIR) + "/tests/longctx/testdata/golden.json";

nlohmann::json ReadGolden() {
  std::ifstream in(kGolden);
  REQUIRE(in);
  return nlohmann::json::parse(in);
}

TEST_CASE("models/longctx: config, tokenizer and logits match transformers") {
  if (!std::filesystem::exists(kModelDir + "/model.safetensors")) {
    WARN("skipped: " << kModelDir << " has no model.safetensors");
    return;
  }
  const nlohmann::json g = ReadGolden();
  auto lm = LoadModel(kModelDir);
  REQUIRE(lm.ok());
  const ModelConfig& c = lm->model->config;
  CHECK(c.vocab == 2048);
  CHECK(c.head_dim == 64);
  CHECK(c.q_heads == 4);
  CHECK(c.kv_heads == 2);
  CHECK(c.max_positions == 16384);
  CHECK(c.tie_embeddings);

  const auto context = g["context_ids"].get<std::vector<int32_t>>();
  const auto query = g["query_ids"].get<std::vector<int32_t>>();
  CHECK(lm->tokenizer->Encode(g["document"].get<std::string>(), /*add_bos=*/true) == context);
  CHECK(lm->tokenizer->Encode("Question: " + g["question"].get<std::string>() + " Answer:",
                              /*add_bos=*/false) == query);

  std::vector<int32_t> ids = context;
  ids.insert(ids.end(), query.begin(), query.end());
  CpuBackendOptions bo;
  bo.kv_blocks = static_cast<int64_t>(ids.size()) / kKvBlockTokens + 2;
  auto backend = CpuBackend::Create(*lm->model, bo);
  REQUIRE(backend.ok());
  auto seq = (*backend)->AddSequence();
  REQUIRE(seq.ok());
  const int64_t vocab = c.vocab;
  std::vector<float> logits(ids.size() * vocab);
  StepInput in{*seq, ids, nullptr, /*all_logits=*/true};
  REQUIRE((*backend)->Forward({&in, 1}, logits.data()).ok());
  for (const auto& row : g["rows"]) {
    const int64_t r = row.get<int64_t>();
    const auto want = g["logits"][std::to_string(r)].get<std::vector<double>>();
    REQUIRE(static_cast<int64_t>(want.size()) == vocab);
    double max_abs = 0, max_diff = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const double got = logits[r * vocab + i];
      REQUIRE(std::isfinite(got));
      max_abs = std::max(max_abs, std::fabs(want[i]));
      max_diff = std::max(max_diff, std::fabs(got - want[i]));
    }
    INFO("row " << r << ": max |diff| " << max_diff << ", max |logit| " << max_abs);
    REQUIRE(max_abs > 1.0);
    CHECK(max_diff <= 1e-4 * max_abs);
  }
}

TEST_CASE("models/longctx answers the golden question, dense and squeezed at budget 1") {
  if (!std::filesystem::exists(kModelDir + "/model.safetensors")) {
    WARN("skipped: " << kModelDir << " has no model.safetensors");
    return;
  }
  const nlohmann::json g = ReadGolden();
  auto lm = LoadModel(kModelDir);
  REQUIRE(lm.ok());
  CpuBackendOptions bo;
  bo.kv_blocks = 64;
  auto backend = CpuBackend::Create(*lm->model, bo);
  REQUIRE(backend.ok());
  const auto context = g["context_ids"].get<std::vector<int32_t>>();
  const auto query = g["query_ids"].get<std::vector<int32_t>>();
  SqueezeOptions squeeze;
  auto prepared = needle::PrepareContext(**backend, context, squeeze);
  REQUIRE(prepared.ok());
  AttentionOptions dense;
  dense.mode = AttentionMode::kDense;
  AttentionOptions all_keys;
  all_keys.kv_budget = 1.0;
  const std::string want_text = lm->tokenizer->Decode(g["greedy_ids"].get<std::vector<int32_t>>());
  for (const AttentionOptions& o : {dense, all_keys}) {
    auto a = needle::AskGreedy(**backend, *lm->tokenizer, prepared->snapshot, o, query,
                               g.value("max_tokens", 8));
    REQUIRE(a.ok());
    INFO("answer '" << a->text << "', expected '" << g["answer"].get<std::string>() << "'");
    // The answer continues the query, so its first piece keeps its leading space.
    std::string trimmed = a->text;
    while (!trimmed.empty() && trimmed.front() == ' ') trimmed.erase(trimmed.begin());
    CHECK(trimmed == want_text);
    CHECK(trimmed == g["answer"].get<std::string>());
  }
}

}  // namespace
}  // namespace sqz
