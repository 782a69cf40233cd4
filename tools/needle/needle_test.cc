// Tests of the needle library: prompt layout against the ChatML template, question files,
// scoring, needles and filler, haystack sizes and depths (with a real tokenizer), and the
// benchmark and document-QA loops on the tiny trained model (stories260K): squeezed at KV budget
// 1 must answer exactly as dense.
#include "tools/needle/needle.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <memory>
#include <set>

#include "engine/chat/chat_template.h"
#include "engine/model/cpu_backend.h"
#include "engine/runtime/loaded_model.h"

namespace sqz::needle {
namespace {

const std::string kTinyModel = std::string(SQZ_SHARED_DIR) + "/models/stories260K";

// The tiny model, loaded once; null (with a warning) when the shared assets are absent.
const LoadedModel* Tiny() {
  static const auto* lm = [] {
    auto r = LoadModel(kTinyModel);
    if (!r.ok()) {
      WARN("skipped: cannot load " << kTinyModel << ": " << r.status().message());
      return static_cast<LoadedModel*>(nullptr);
    }
    return new LoadedModel(std::move(*r));
  }();
  if (lm == nullptr) WARN("skipped: no stories260K at " << kTinyModel);
  return lm;
}

std::unique_ptr<CpuBackend> TinyBackend(const LoadedModel& lm) {
  CpuBackendOptions o;
  o.kv_blocks = 40;  // 640 tokens: more than max_positions (512)
  auto b = CpuBackend::Create(*lm.model, o);
  REQUIRE(b.ok());
  return std::move(*b);
}

Mode DenseMode() {
  Mode m{"dense", {}};
  m.options.mode = AttentionMode::kDense;
  return m;
}

Mode FullBudgetMode(bool hierarchical) {
  Mode m{hierarchical ? "hier 1" : "flat 1", {}};
  m.options.kv_budget = 1.0;
  m.options.hierarchical = hierarchical;
  return m;
}

TEST_CASE("context + query is the ChatML rendering of system + user turn") {
  for (std::string doc :
       {std::string("Line one.\nLine two."), std::string("  \n padded \n\n"), std::string("x")}) {
    const std::string question = "What is it?";
    std::string stripped = doc;
    while (!stripped.empty() && std::isspace(static_cast<unsigned char>(stripped.front()))) {
      stripped.erase(0, 1);
    }
    while (!stripped.empty() && std::isspace(static_cast<unsigned char>(stripped.back()))) {
      stripped.pop_back();
    }
    const std::vector<ChatMessage> messages = {
        {"system", std::string(kDefaultSystem)},
        {"user", "Document:\n" + stripped + "\n\nQuestion: " + question}};
    auto rendered = ApplyChatTemplate(ChatTemplateKind::kChatMl, messages, true);
    REQUIRE(rendered.ok());
    CHECK(ContextText(kDefaultSystem, doc) + QueryText(question) == *rendered);
  }
}

TEST_CASE("ParseQuestions reads the demo file and names what is wrong") {
  auto ok = ParseQuestions(R"([{"question": "Q1?", "answer": "A1", "note": 3},
                               {"question": "Q2?", "answer": "A2"}])");
  REQUIRE(ok.ok());
  REQUIRE(ok->size() == 2);
  CHECK((*ok)[1].question == "Q2?");
  CHECK((*ok)[1].answer == "A2");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"[{", "malformed JSON"},
      {R"({"question": "Q"})", "expected a JSON array"},
      {"[]", "the array is empty"},
      {R"([{"question": "Q", "answer": "A"}, 3])", "questions[1] is not an object"},
      {R"([{"answer": "A"}])", "questions[0] has no \"question\""},
      {R"([{"question": "Q", "answer": 7}])", "questions[0].answer is not a string"},
      {R"([{"question": "", "answer": "A"}])", "questions[0].question is empty"},
  };
  for (const auto& [json, message] : bad) {
    auto r = ParseQuestions(json);
    INFO(json);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains(message));
  }
}

TEST_CASE("the demo's questions file parses") {
  auto text = std::string(SQZ_SOURCE_DIR) + "/tools/demo/questions.json";
  std::FILE* f = std::fopen(text.c_str(), "rb");
  REQUIRE(f != nullptr);
  std::string json;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) json.append(buf, n);
  std::fclose(f);
  auto q = ParseQuestions(json);
  REQUIRE(q.ok());
  CHECK(q->size() == 3);
}

TEST_CASE("ContainsIgnoreCase") {
  CHECK(ContainsIgnoreCase("The engineer is TOMAS Varga.", "tomas varga"));
  CHECK(ContainsIgnoreCase("x", ""));
  CHECK(ContainsIgnoreCase("1987", "1987"));
  CHECK_FALSE(ContainsIgnoreCase("Tomas", "Tomas Varga"));
  CHECK_FALSE(ContainsIgnoreCase("", "a"));
  CHECK_FALSE(ContainsIgnoreCase("Tomas  Varga", "tomas varga"));
}

TEST_CASE("ExactMatch takes the first number of the answer") {
  CHECK(ExactMatch("4821", "4821"));
  CHECK(ExactMatch("4821.", "4821"));
  CHECK(ExactMatch("The secret passcode of the blue lighthouse is 4821.", "4821"));
  CHECK_FALSE(ExactMatch("48210", "4821"));
  CHECK_FALSE(ExactMatch("482", "4821"));
  CHECK_FALSE(ExactMatch("1234 or 4821", "4821"));
  CHECK_FALSE(ExactMatch("", "4821"));
  CHECK_FALSE(ExactMatch("no number here", "4821"));
  CHECK(ExactMatch("code: 7 then", "7"));
}

TEST_CASE("needles are seeded, varied and well formed") {
  std::set<std::string> codes, objects;
  for (uint64_t seed : {0ull, 1ull, 2ull, 3ull, 127ull, 129ull, ~0ull}) {
    const Needle a = MakeNeedle(seed), b = MakeNeedle(seed);
    CHECK(a.sentence == b.sentence);
    CHECK(a.question == b.question);
    const int code = std::stoi(a.code);
    CHECK(code >= 1000);
    CHECK(code <= 9999);
    CHECK(a.sentence.find(" is " + a.code + ".") != std::string::npos);
    CHECK(a.question.find_first_of("0123456789") == std::string::npos);
    CHECK(a.question.rfind("What is the secret passcode of the ", 0) == 0);
    codes.insert(a.code);
    objects.insert(a.question);
  }
  CHECK(codes.size() >= 6);
  CHECK(objects.size() >= 4);
}

TEST_CASE("filler is seeded and free of digits and needle words") {
  const auto a = FillerSentences(42, 300), b = FillerSentences(42, 300), c = FillerSentences(43, 3);
  CHECK(a == b);
  CHECK(a.size() == 300);
  CHECK(c != std::vector<std::string>(a.begin(), a.begin() + 3));
  CHECK(FillerSentences(1, 0).empty());
  for (const std::string& s : a) {
    INFO(s);
    CHECK(s.find_first_of("0123456789") == std::string::npos);
    for (const char* w : {"passcode", "secret", "blue", "lighthouse", "silver", "castle"}) {
      CHECK(s.find(w) == std::string::npos);
    }
    CHECK(s.back() == '.');
    CHECK(std::isupper(static_cast<unsigned char>(s.front())));
  }
}

TEST_CASE("DepthAt spreads depths from 0 to 1") {
  CHECK(DepthAt(0, 1) == 0.5);
  CHECK(DepthAt(0, 10) == 0.0);
  CHECK(DepthAt(9, 10) == 1.0);
  CHECK(DepthAt(1, 3) == 0.5);
}

TEST_CASE("ParseLengths") {
  auto ok = ParseLengths("1024,2k,8K,3");
  REQUIRE(ok.ok());
  CHECK(*ok == std::vector<int64_t>{1024, 2048, 8192, 3});
  for (const char* bad : {"", "1k,", "0", "-5", "2m", "k", "1,,2", "12345678901"}) {
    INFO(bad);
    auto r = ParseLengths(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains("not a positive token count"));
  }
}

TEST_CASE("haystacks hit their size and put the needle at its depth") {
  const LoadedModel* lm = Tiny();
  if (lm == nullptr) return;
  const Tokenizer& tok = *lm->tokenizer;
  const Needle needle = MakeNeedle(5);
  for (int64_t target : {300, 333, 511, 1024, 2049}) {
    for (double depth : {0.0, 0.25, 0.5, 1.0}) {
      INFO("target " << target << " depth " << depth);
      auto h = BuildHaystack(tok, kDefaultSystem, target, depth, needle, 11);
      REQUIRE(h.ok());
      CHECK(static_cast<int64_t>(h->tokens.size()) <= target);
      CHECK(static_cast<int64_t>(h->tokens.size()) >= target - 64);
      CHECK(h->tokens == tok.Encode(ContextText(kDefaultSystem, h->document), tok.add_bos()));
      const size_t at = h->document.find(needle.sentence);
      REQUIRE(at != std::string::npos);
      CHECK(h->document.find(needle.sentence, at + 1) == std::string::npos);
      const double char_depth = static_cast<double>(at) /
                                static_cast<double>(h->document.size() - needle.sentence.size());
      // The needle sits on a sentence boundary: within about one sentence of the depth.
      const auto sentences = std::count(h->document.begin(), h->document.end(), '.');
      const double tolerance = 0.05 + 1.0 / static_cast<double>(sentences);
      CHECK(std::abs(char_depth - depth) < tolerance);
      CHECK(std::abs(h->depth - depth) < tolerance);
    }
  }
  // Same seed, same haystack; another filler seed, another one.
  auto a = BuildHaystack(tok, kDefaultSystem, 400, 0.5, needle, 1);
  auto b = BuildHaystack(tok, kDefaultSystem, 400, 0.5, needle, 1);
  auto c = BuildHaystack(tok, kDefaultSystem, 400, 0.5, needle, 2);
  REQUIRE((a.ok() && b.ok() && c.ok()));
  CHECK(a->document == b->document);
  CHECK(a->document != c->document);
}

TEST_CASE("BuildHaystack refuses bad depths and too small targets") {
  const LoadedModel* lm = Tiny();
  if (lm == nullptr) return;
  const Needle needle = MakeNeedle(1);
  for (double depth : {-0.01, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    auto r = BuildHaystack(*lm->tokenizer, kDefaultSystem, 1000, depth, needle, 1);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains("depth must be in [0, 1]"));
  }
  for (int64_t target : {0, 1, 127}) {
    auto r = BuildHaystack(*lm->tokenizer, kDefaultSystem, target, 0.5, needle, 1);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains("is too small"));
  }
}

TEST_CASE("benchmark on the tiny model: squeezed at budget 1 answers as dense") {
  const LoadedModel* lm = Tiny();
  if (lm == nullptr) return;
  auto backend = TinyBackend(*lm);
  NeedleOptions o;
  o.lengths = {300, 100000};  // the second is clamped to the model's 512 positions
  o.depths = 3;
  o.max_tokens = 5;
  o.modes = {DenseMode(), FullBudgetMode(false), FullBudgetMode(true), BenchmarkModes()[3]};
  int calls = 0;
  o.on_trial = [&](const NeedleTrial&) { ++calls; };
  auto trials = RunNeedleBenchmark(*backend, *lm->tokenizer, o);
  REQUIRE(trials.ok());
  REQUIRE(trials->size() == 6);
  CHECK(calls == 6);
  std::set<std::string> codes;
  for (const NeedleTrial& t : *trials) {
    INFO("length " << t.length << " depth " << t.depth);
    REQUIRE(t.answers.size() == 4);
    REQUIRE(t.correct.size() == 4);
    CHECK(t.context_tokens <= std::min<int64_t>(t.length, 512 - t.query_tokens - 5));
    CHECK(t.context_tokens >= std::min<int64_t>(t.length, 512 - t.query_tokens - 5) - 64);
    CHECK(t.prefill_s > 0);
    CHECK(t.build_s > 0);
    for (size_t m = 1; m < 3; ++m) {
      CHECK(t.answers[m].text == t.answers[0].text);
      CHECK(t.correct[m] == t.correct[0]);
    }
    CHECK(t.correct[0] == ExactMatch(t.answers[0].text, t.needle.code));
    CHECK(t.answers[0].context_keys_read == Approx(1.0));
    CHECK(t.answers[3].context_keys_read < 0.9);  // flat 0.125 skips most of the body
    CHECK(t.answers[0].generated >= 1);
    CHECK(t.answers[0].generated <= 5);
    codes.insert(t.needle.code);
  }
  CHECK(codes.size() >= 4);  // fresh needles per trial
  CHECK((*trials)[0].depth == Approx(0.0).margin(0.05));
  CHECK((*trials)[2].depth == Approx(1.0).margin(0.05));
  CHECK(backend->Stats().sequences == 0);  // everything freed

  const std::string report = FormatNeedleReport(*trials, o.modes);
  CHECK_THAT(report, Catch::Contains("| dense | flat 1 | hier 1 | flat 0.125 |"));
  CHECK_THAT(report, Catch::Contains("| 300 ("));
  CHECK_THAT(report, Catch::Contains("| 100000 ("));
  CHECK_THAT(report, Catch::Contains("### Misses ("));
}

TEST_CASE("benchmark refuses bad options") {
  const LoadedModel* lm = Tiny();
  if (lm == nullptr) return;
  auto backend = TinyBackend(*lm);
  auto expect = [&](NeedleOptions o, const std::string& message) {
    auto r = RunNeedleBenchmark(*backend, *lm->tokenizer, o);
    INFO(message);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains(message));
  };
  NeedleOptions o;
  o.lengths = {};
  expect(o, "no lengths");
  o = {};
  o.modes = {};
  expect(o, "no modes");
  o = {};
  o.depths = 0;
  expect(o, "depths must be >= 1");
  o = {};
  o.first_depth = 10;
  expect(o, "first_depth must be in [0, depths)");
  o = {};
  o.first_depth = -1;
  expect(o, "first_depth must be in [0, depths)");
  o = {};
  o.max_tokens = 0;
  expect(o, "max_tokens must be >= 1");
  o = {};
  o.modes = {FullBudgetMode(false)};
  o.modes[0].options.kv_budget = 2.0;
  expect(o, "mode 'flat 1'");
  o = {};
  o.lengths = {100};
  expect(o, "is too small");
}

TEST_CASE("document QA on the tiny model: squeezed at budget 1 answers as dense") {
  const LoadedModel* lm = Tiny();
  if (lm == nullptr) return;
  auto backend = TinyBackend(*lm);
  const std::string doc =
      "Lily had a red ball. She played with it in the park every day. One day the ball rolled "
      "into the pond, and a duck brought it back to her. Lily said thank you to the duck.";
  const std::vector<QaItem> qs = {{"What did Lily have?", "ball"},
                                  {"Who brought it back?", "duck"}};
  const std::vector<Mode> modes = {DenseMode(), FullBudgetMode(false), FullBudgetMode(true)};
  auto r = RunDocumentQa(*backend, *lm->tokenizer, kDefaultSystem, doc, qs, modes, {}, 6);
  REQUIRE(r.ok());
  REQUIRE(r->size() == 6);
  for (size_t i = 0; i < r->size(); ++i) {
    const QaOutcome& o = (*r)[i];
    CHECK(o.question == i / 3);
    CHECK(o.mode == modes[i % 3].name);
    CHECK(o.answer.text == (*r)[i - i % 3].answer.text);
    CHECK(o.correct == ContainsIgnoreCase(o.answer.text, qs[o.question].answer));
  }
  CHECK(backend->Stats().sequences == 0);

  auto none = RunDocumentQa(*backend, *lm->tokenizer, kDefaultSystem, doc, {}, modes, {}, 6);
  REQUIRE_FALSE(none.ok());
  CHECK_THAT(none.status().message(), Catch::Contains("no questions"));
  auto no_modes = RunDocumentQa(*backend, *lm->tokenizer, kDefaultSystem, doc, qs, {}, {}, 6);
  REQUIRE_FALSE(no_modes.ok());
  CHECK_THAT(no_modes.status().message(), Catch::Contains("no modes"));
}

}  // namespace
}  // namespace sqz::needle
