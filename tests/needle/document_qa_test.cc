// The demo's promise at the engine level (issue 5, item 3): the default model answers the three
// questions of tools/demo/questions.json about tools/demo/sample_document.md correctly with greedy
// decoding, DENSE and SQUEEZED at the server's default budget, with the context/query split the
// demo uses (context = ChatML system turn + the document in the user turn, query = the question,
// end of turn and assistant start; positions continue after the context). Ingestion and attention
// options come from the server's defaults (engine/options.h via engine/squeeze/defaults.h).
// Skips with a message when the GGUF has not been fetched (scripts/fetch_model.sh).
#include <omp.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/gguf/model_cache.h"
#include "engine/model/cpu_backend.h"
#include "engine/options.h"
#include "engine/runtime/loaded_model.h"
#include "engine/squeeze/defaults.h"
#include "tools/needle/needle.h"

namespace sqz::needle {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_CASE("the default model answers the demo's questions, dense and squeezed") {
  const std::string path = gguf::DefaultModelPath();
  if (!std::filesystem::exists(path)) {
    WARN("skipped: " << path << " is absent (run scripts/fetch_model.sh)");
    return;
  }
  // One thread unless the caller chose: the build machines are shared and oversubscribed, where
  // OpenMP's spinning threads are many times slower than one.
  if (std::getenv("OMP_NUM_THREADS") == nullptr) omp_set_num_threads(1);
  auto lm = LoadModel(path);
  REQUIRE(lm.ok());
  const std::string src = SQZ_SOURCE_DIR;
  const std::string document = Slurp(src + "/tools/demo/sample_document.md");
  auto questions = ParseQuestions(Slurp(src + "/tools/demo/questions.json"));
  REQUIRE(questions.ok());
  REQUIRE(questions->size() == 3);

  // The document is 2K-4K tokens of the model's tokenizer once wrapped as the context.
  const auto context = lm->tokenizer->Encode(ContextText(kDefaultSystem, document), false);
  CHECK(context.size() >= 2000);
  CHECK(context.size() <= 4000);

  const SqueezeDefaults defaults;  // what squeezed runs with unless configured otherwise
  auto ingest = IngestOptionsFrom(defaults, SchedulerOptions{}.ingest_chunk_tokens);
  REQUIRE(ingest.ok());
  auto squeezed = AttentionOptionsFrom(defaults);
  REQUIRE(squeezed.ok());
  REQUIRE(squeezed->mode == AttentionMode::kSqueezed);
  REQUIRE(squeezed->kv_budget == 0.125);
  REQUIRE(ingest->centroid_fraction == 0.05);
  AttentionOptions dense = *squeezed;
  dense.mode = AttentionMode::kDense;
  const std::vector<Mode> modes = {{"dense", dense}, {"squeezed", *squeezed}};

  CpuBackendOptions bo;
  bo.kv_blocks = static_cast<int64_t>(context.size()) / kKvBlockTokens + 16;
  auto backend = CpuBackend::Create(*lm->model, bo);
  REQUIRE(backend.ok());
  auto outcomes = RunDocumentQa(**backend, *lm->tokenizer, kDefaultSystem, document, *questions,
                                modes, *ingest, /*max_tokens=*/48);  // the demo's max_tokens
  REQUIRE(outcomes.ok());
  REQUIRE(outcomes->size() == 6);
  for (const QaOutcome& o : *outcomes) {
    const QaItem& q = (*questions)[o.question];
    INFO("[" << o.mode << "] " << q.question << " -> " << o.answer.text << " (expected \""
             << q.answer << "\")");
    CHECK(o.correct);
    if (o.mode == "squeezed") {
      // Sink + window + an eighth of the body + centroids: well under a third of the keys.
      CHECK(o.answer.context_keys_read < 0.3);
    } else {
      CHECK(o.answer.context_keys_read == Approx(1.0));
    }
    std::printf("[%s] %s -> %s\n", o.mode.c_str(), q.question.c_str(), o.answer.text.c_str());
  }
}

}  // namespace
}  // namespace sqz::needle
