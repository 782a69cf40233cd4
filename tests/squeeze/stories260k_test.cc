// On the trained stories260K model (shared assets): DENSE and SQUEEZED at KV budget 1 reproduce
// plain generation over [context + query]; real squeezing stays close to it.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "engine/squeeze/model_test_util.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz {
namespace {

const std::string kModelDir = std::string(SQZ_SHARED_DIR) + "/models/stories260K";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST_CASE("stories260K: DENSE and SQUEEZED(budget 1) give the logits of plain generation") {
  if (!std::filesystem::exists(kModelDir + "/model.safetensors")) {
    WARN("skipped: " << kModelDir << " is absent");
    return;
  }
  auto model = LoadHfModel(kModelDir);
  REQUIRE(model.ok());
  auto tok = Tokenizer::FromHfDirectory(kModelDir);
  REQUIRE(tok.ok());
  const std::string text =
      ReadFile(std::string(SQZ_SOURCE_DIR) + "/tests/squeeze/story_context.txt");
  const std::vector<int32_t> context = (*tok)->Encode(text, /*add_bos=*/true);
  const std::vector<int32_t> query = (*tok)->Encode("One day, Lily and Max", false);
  REQUIRE(context.size() == 421);
  auto backend = CpuBackend::Create(**model, CpuBackendOptions{64});
  REQUIRE(backend.ok());
  SqueezeOptions so;
  so.prefill_chunk_tokens = 96;
  AttentionOptions dense;
  dense.mode = AttentionMode::kDense;
  AttentionOptions full;
  full.kv_budget = 1.0;
  AttentionOptions full_hier = full;
  full_hier.hierarchical = true;
  full_hier.block_size = 7;
  AttentionOptions full_mean = full;
  full_mean.gqa_reduce = GqaReduce::kMean;
  int i = 0;
  for (const AttentionOptions& ao : {dense, full, full_hier, full_mean}) {
    INFO("variant " << i++);
    auto diff = testing::CompareWithPlain(**backend, context, query, so, ao, 32);
    REQUIRE(diff.ok());
    REQUIRE(*diff <= 1e-5);
  }
  // Squeezed to a quarter of the body: close but not equal.
  AttentionOptions quarter;
  quarter.kv_budget = 0.25;
  auto diff = testing::CompareWithPlain(**backend, context, query, so, quarter, 32);
  REQUIRE(diff.ok());
  INFO("budget 0.25 max relative logit difference " << *diff);
  REQUIRE(*diff > 1e-5);
  REQUIRE(*diff < 0.5);
}

}  // namespace
}  // namespace sqz
