#include "tools/longctx_eval/longctx_eval.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

#include "engine/model/cpu_backend.h"
#include "engine/runtime/loaded_model.h"

namespace sqz::longctx {
namespace {

const std::string kModelDir = std::string(SQZ_SOURCE_DIR) + "/models/longctx";

TEST_CASE("ParseEvalSet reads train/eval_set.py lines and skips blank lines") {
  const std::string jsonl =
      R"({"length": 1024, "seed": 7, "kind": "needle", "context_tokens": 9, "document": "A b.",)"
      R"( "questions": [{"question": "Q1?", "answer": "12", "kind": "needle", "depth": 0.5}]})"
      "\n\n"
      R"({"length": 3, "document": "D.", "questions": [{"question": "Q?", "answer": "x"},)"
      R"( {"question": "R?", "answer": "y", "kind": "twohop"}]})"
      "\n";
  auto docs = ParseEvalSet(jsonl);
  REQUIRE(docs.ok());
  REQUIRE(docs->size() == 2);
  CHECK((*docs)[0].length == 1024);
  CHECK((*docs)[0].seed == 7);
  CHECK((*docs)[0].kind == "needle");
  CHECK((*docs)[0].questions[0].depth == 0.5);
  CHECK((*docs)[1].kind == "facts");
  CHECK((*docs)[1].questions.size() == 2);
  CHECK((*docs)[1].questions[0].kind == "single");
  CHECK((*docs)[1].questions[1].kind == "twohop");
}

TEST_CASE("ParseEvalSet rejects malformed lines with the line number") {
  const auto err = [](const std::string& s) {
    auto r = ParseEvalSet(s);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    return r.status().message();
  };
  CHECK(err("").find("no documents") != std::string::npos);
  CHECK(err(R"({"length": 1, "document": "d", "questions": [{"question": "q", "answer": "a"}]})"
            "\n{oops")
            .find("line 2: malformed JSON") != std::string::npos);
  CHECK(err("[1]").find("line 1 is not a JSON object") != std::string::npos);
  CHECK(err(R"({"length": 0, "document": "d", "questions": [{"question": "q", "answer": "a"}]})")
            .find("length must be an integer >= 1") != std::string::npos);
  CHECK(err(R"({"length": 1, "questions": [{"question": "q", "answer": "a"}]})")
            .find("has no \"document\"") != std::string::npos);
  CHECK(err(R"({"length": 1, "document": "", "questions": [{"question": "q", "answer": "a"}]})")
            .find("document is empty") != std::string::npos);
  CHECK(err(R"({"length": 1, "document": "d", "questions": []})")
            .find("questions must be a non-empty array") != std::string::npos);
  CHECK(err(R"({"length": 1, "document": "d", "questions": [{"question": "q", "answer": 3}]})")
            .find("questions[0].answer is not a string") != std::string::npos);
  CHECK(err(R"({"length": 1, "seed": -2, "document": "d", "questions": [{"question": "q"}]})")
            .find("seed must be a non-negative integer") != std::string::npos);
}

TEST_CASE("ExactMatch trims whitespace and nothing else") {
  CHECK(ExactMatch("4821", "4821"));
  CHECK(ExactMatch(" 4821\n", "4821"));
  CHECK_FALSE(ExactMatch("48210", "4821"));
  CHECK_FALSE(ExactMatch("482", "4821"));
  CHECK_FALSE(ExactMatch("4821.", "4821"));
  CHECK_FALSE(ExactMatch("helena", "Helena"));
  CHECK_FALSE(ExactMatch("", "4821"));
  CHECK(QueryText("Who?") == "Question: Who? Answer:");
}

TEST_CASE("LongctxModes: dense, then flat and hierarchical at four budgets, all valid") {
  const auto modes = LongctxModes();
  REQUIRE(modes.size() == 9);
  CHECK(modes[0].name == "dense");
  CHECK(modes[0].options.mode == AttentionMode::kDense);
  CHECK(modes[4].name == "flat 0.0625");
  CHECK_FALSE(modes[4].options.hierarchical);
  CHECK(modes[8].name == "hier 0.0625");
  CHECK(modes[8].options.hierarchical);
  for (const auto& m : modes) CHECK(m.options.Validate().ok());
}

TEST_CASE("LongctxModes(ModeSet): chosen budgets, flat only, block size and GQA in the names") {
  ModeSet set;
  set.budgets = {0.125};
  set.hierarchical = false;
  set.block_size = 1;
  set.gqa_reduce = GqaReduce::kMean;
  auto modes = LongctxModes(set);
  REQUIRE(modes.ok());
  REQUIRE(modes->size() == 2);
  CHECK((*modes)[0].name == "dense");
  CHECK((*modes)[1].name == "flat 0.125 b1 mean");
  CHECK((*modes)[1].options.block_size == 1);
  CHECK((*modes)[1].options.gqa_reduce == GqaReduce::kMean);
  CHECK((*modes)[1].options.kv_budget == 0.125);

  set.budgets.clear();
  CHECK(LongctxModes(set).status().code() == StatusCode::kInvalidArgument);
  set.budgets = {1.5};
  CHECK(LongctxModes(set).status().code() == StatusCode::kInvalidArgument);
  set.budgets = {0.0};
  CHECK(LongctxModes(set).status().message().find("(0, 1]") != std::string::npos);
  set.budgets = {0.25};
  set.block_size = 0;
  CHECK(LongctxModes(set).status().message().find("block_size") != std::string::npos);
}

TEST_CASE("FormatReport tallies retrieval and two-hop questions per length and mode") {
  std::vector<EvalDocument> docs(2);
  docs[0].length = 1024;
  docs[0].questions = {{"a?", "1", "single", 0}, {"b?", "2", "twohop", 0}};
  docs[1].length = 1024;
  docs[1].questions = {{"c?", "3", "needle", 0}};
  std::vector<DocumentResult> results(2);
  for (size_t i = 0; i < 2; ++i) {
    results[i].length = 1024;
    results[i].context_tokens = 1000;
    results[i].prefill_s = 1;
    for (size_t q = 0; q < docs[i].questions.size(); ++q) {
      QuestionResult qr;
      qr.question = q;
      qr.answers.resize(2);
      qr.answers[0].context_keys_read = 1.0;
      qr.answers[1].context_keys_read = 0.25;
      qr.correct = {true, i == 0};
      results[i].questions.push_back(qr);
    }
  }
  const std::vector<needle::Mode> modes = {{"dense", {}}, {"flat 0.5", {}}};
  const std::string report = FormatReport(docs, results, modes);
  // Retrieval: 2 questions (a, c): dense 2/2, flat 1/2. Two-hop: b, right in both.
  CHECK(report.find("| 1024 (1000) | 2/2 (100.0%) | 1/2 (50.0%) |") != std::string::npos);
  CHECK(report.find("| 1024 (1000) | 1/1 (100.0%) | 1/1 (100.0%) |") != std::string::npos);
  CHECK(report.find("| 1024 | 1.000 | 0.250 |") != std::string::npos);
  CHECK(report.find("| 1024 | 2 | 1000 |") != std::string::npos);
  CHECK(report.find("### Speed (CPU backend)") != std::string::npos);
  CHECK(FormatReport(docs, results, modes, "CUDA backend, bf16").find(
            "### Speed (CUDA backend, bf16)") != std::string::npos);
  CHECK(report.find("Not counted") == std::string::npos);
  // A backend that counts no keys (the CUDA one) gets a line, not a table of zeros.
  for (DocumentResult& r : results) {
    for (QuestionResult& q : r.questions) {
      for (needle::Answer& a : q.answers) a.context_keys_read = 0.0;
    }
  }
  const std::string uncounted = FormatReport(docs, results, modes, "CUDA backend, bf16");
  CHECK(uncounted.find("Not counted by this backend.") != std::string::npos);
  CHECK(uncounted.find("| 1024 | 0.000") == std::string::npos);
  CHECK(uncounted.find("| 1024 | 2 | 1000 |") != std::string::npos);
}

// The committed model: a held-out style document it answers, dense and squeezed at budget 1 with
// block selection and with one selection per question token (both must read every key and equal
// dense), and the error for a document too long.
TEST_CASE("EvaluateDocument answers from one snapshot in every mode (models/longctx)") {
  if (!std::filesystem::exists(kModelDir + "/model.safetensors")) {
    WARN("skipped: " << kModelDir << " has no model.safetensors");
    return;
  }
  auto lm = LoadModel(kModelDir);
  REQUIRE(lm.ok());
  CpuBackendOptions bo;
  bo.kv_blocks = 64;
  auto backend = CpuBackend::Create(*lm->model, bo);
  REQUIRE(backend.ok());

  EvalDocument doc;
  doc.length = 256;
  doc.document =
      "The quiet market is usually full of farmers at dusk. The passcode of the blue lighthouse "
      "is 4821. Nobody remembers when the pond became so narrow. The red castle opens with the "
      "passcode 7390. The amber mill is kept by Helena. People say the honey from the inn is "
      "the best in the region.";
  // Answers restate the fact from its entity on (the model's training format, train/README.md).
  doc.questions = {
      {"What is the passcode of the blue lighthouse?", "blue lighthouse is 4821.", "single", 0.2},
      {"Who is the keeper of the amber mill?", "amber mill is kept by Helena.", "single", 0.6}};
  EvalOptions opts;
  needle::Mode budget_one{"flat 1", {}};
  budget_one.options.kv_budget = 1.0;
  needle::Mode per_token = budget_one;  // one selection per question token in prefill
  per_token.name = "flat 1 b1";
  per_token.options.block_size = 1;
  opts.modes = {LongctxModes()[0], budget_one, per_token};
  opts.squeeze.observation_window = 8;  // keep the facts in the clustered body
  auto r = EvaluateDocument(**backend, *lm->tokenizer, doc, opts);
  REQUIRE(r.ok());
  REQUIRE(r->questions.size() == 2);
  CHECK(r->context_tokens > 50);
  for (const QuestionResult& q : r->questions) {
    REQUIRE(q.answers.size() == 3);
    INFO(doc.questions[q.question].question << " -> dense '" << q.answers[0].text << "', budget 1 '"
                                            << q.answers[1].text << "', per token '"
                                            << q.answers[2].text << "'");
    CHECK(q.answers[0].text == q.answers[1].text);
    CHECK(q.answers[0].text == q.answers[2].text);
    CHECK(q.answers[1].context_keys_read >= 1.0);
    CHECK(q.answers[2].context_keys_read >= 1.0);
  }
  // The model answers the short-context questions (it was trained on this format).
  CHECK(r->questions[0].correct[0]);
  CHECK(r->questions[1].correct[0]);

  EvalDocument too_long = doc;
  std::string text;
  while (text.size() < 20 * 16384) text += "Nobody remembers when the pond became so narrow. ";
  too_long.document = text;
  auto e = EvaluateDocument(**backend, *lm->tokenizer, too_long, opts);
  REQUIRE_FALSE(e.ok());
  CHECK(e.status().code() == StatusCode::kInvalidArgument);
  CHECK(e.status().message().find("positions") != std::string::npos);

  EvalOptions none = opts;
  none.modes.clear();
  CHECK(EvaluateDocument(**backend, *lm->tokenizer, doc, none).status().code() ==
        StatusCode::kInvalidArgument);
  // Answer budgets: at least max_tokens, and always the expected answer's tokens + 2.
  CHECK(AnswerBudget(*lm->tokenizer, "4821", 8) == 8);
  const std::string restated = "ochre rotunda, use the passcode 6295.";
  const int32_t restated_tokens =
      static_cast<int32_t>(lm->tokenizer->Encode(restated, /*add_bos=*/false).size());
  REQUIRE(restated_tokens > 8);
  CHECK(AnswerBudget(*lm->tokenizer, restated, 8) == restated_tokens + 2);
  CHECK(AnswerBudget(*lm->tokenizer, restated, 64) == 64);

  EvalOptions zero = opts;
  zero.max_tokens = 0;
  CHECK(EvaluateDocument(**backend, *lm->tokenizer, doc, zero)
            .status()
            .message()
            .find("max_tokens") != std::string::npos);
}

}  // namespace
}  // namespace sqz::longctx
