// Prompt layout, question files, modes and greedy answering over a snapshot (needle.h).
#include "tools/needle/needle.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <utility>

#include "engine/model/generate.h"
#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/ingest.h"

namespace sqz::needle {

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\t') c = ' ';
  }
  return text;
}

namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool IsPySpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Python's str.strip() for ASCII whitespace (what demo.py applies to the document).
std::string_view Strip(std::string_view s) {
  while (!s.empty() && IsPySpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsPySpace(s.back())) s.remove_suffix(1);
  return s;
}

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

std::string ContextText(std::string_view system, std::string_view document) {
  std::string out = "<|im_start|>system\n";
  out += system;
  out += "<|im_end|>\n<|im_start|>user\nDocument:\n";
  out += Strip(document);
  out += "\n";
  return out;
}

std::string QueryText(std::string_view question) {
  std::string out = "\nQuestion: ";
  out += question;
  out += "<|im_end|>\n<|im_start|>assistant\n";
  return out;
}

StatusOr<std::vector<QaItem>> ParseQuestions(std::string_view json) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(std::string("questions: malformed JSON: ") + e.what());
  }
  if (!doc.is_array()) {
    return InvalidArgumentError("questions: expected a JSON array of {\"question\", \"answer\"}");
  }
  if (doc.empty()) return InvalidArgumentError("questions: the array is empty");
  std::vector<QaItem> out;
  for (size_t i = 0; i < doc.size(); ++i) {
    const auto& e = doc[i];
    const std::string where = "questions[" + std::to_string(i) + "]";
    if (!e.is_object()) return InvalidArgumentError(where + " is not an object");
    QaItem item;
    for (auto [key, field] :
         {std::pair{"question", &item.question}, std::pair{"answer", &item.answer}}) {
      auto it = e.find(key);
      if (it == e.end()) return InvalidArgumentError(where + " has no \"" + key + "\"");
      if (!it->is_string()) return InvalidArgumentError(where + "." + key + " is not a string");
      *field = it->get<std::string>();
      if (field->empty()) return InvalidArgumentError(where + "." + key + " is empty");
    }
    out.push_back(std::move(item));
  }
  return out;
}

bool ContainsIgnoreCase(std::string_view answer, std::string_view expected) {
  if (expected.empty()) return true;
  if (expected.size() > answer.size()) return false;
  for (size_t i = 0; i + expected.size() <= answer.size(); ++i) {
    size_t j = 0;
    while (j < expected.size() && Lower(answer[i + j]) == Lower(expected[j])) ++j;
    if (j == expected.size()) return true;
  }
  return false;
}

std::vector<Mode> DemoModes() {
  Mode dense{"dense", {}};
  dense.options.mode = AttentionMode::kDense;
  Mode squeezed{"squeezed-0.125", {}};  // AttentionOptions defaults: budget 0.125, flat
  return {dense, squeezed};
}

std::vector<Mode> BenchmarkModes() {
  std::vector<Mode> modes;
  Mode dense{"dense", {}};
  dense.options.mode = AttentionMode::kDense;
  modes.push_back(dense);
  for (bool hierarchical : {false, true}) {
    for (double budget : {0.5, 0.25, 0.125}) {
      Mode m;
      m.options.mode = AttentionMode::kSqueezed;
      m.options.policy = SelectionPolicy::kBudget;
      m.options.kv_budget = budget;
      m.options.hierarchical = hierarchical;
      char name[48];
      std::snprintf(name, sizeof(name), "%s %.3g", hierarchical ? "hier" : "flat", budget);
      m.name = name;
      modes.push_back(m);
    }
  }
  return modes;
}

StatusOr<PreparedContext> PrepareContext(Backend& backend, std::span<const int32_t> tokens,
                                         const SqueezeOptions& options) {
  PreparedContext out;
  auto t0 = std::chrono::steady_clock::now();
  SQZ_ASSIGN_OR_RETURN(CapturedContext captured, CaptureContext(backend, tokens, options));
  out.prefill_s = SecondsSince(t0);
  t0 = std::chrono::steady_clock::now();
  SQZ_ASSIGN_OR_RETURN(out.snapshot, BuildSnapshot(captured, options));
  out.build_s = SecondsSince(t0);
  return out;
}

StatusOr<Answer> AskGreedy(Backend& backend, const Tokenizer& tokenizer,
                           const ContextSnapshot& snapshot, const AttentionOptions& options,
                           std::span<const int32_t> query, int32_t max_tokens) {
  SQZ_ASSIGN_OR_RETURN(auto attention, MakeContextAttention(snapshot, options));
  GenerationRequest req;
  req.prompt.assign(query.begin(), query.end());
  req.sampling.temperature = 0.0f;
  req.sampling.max_tokens = max_tokens;
  req.context = attention.get();
  GenerateOptions gen;
  gen.tokenizer = &tokenizer;
  gen.eos_ids = tokenizer.model().eos_ids;
  // The whole query in one Forward call, as the server's scheduler feeds a short prompt (squeezed
  // selections are per Attend call, so chunking would change them).
  gen.prefill_chunk = std::max<int64_t>(1, static_cast<int64_t>(query.size()));
  SQZ_ASSIGN_OR_RETURN(auto results, Generate(backend, std::span(&req, 1), gen));
  Answer a;
  a.text = std::move(results[0].text);
  a.generated = static_cast<int64_t>(results[0].tokens.size());
  a.ttft_s = results[0].time_to_first_token_s;
  a.total_s = results[0].total_s;
  a.context_keys_read = attention->usage().share();
  return a;
}

StatusOr<std::vector<QaOutcome>> RunDocumentQa(Backend& backend, const Tokenizer& tokenizer,
                                               std::string_view system, std::string_view document,
                                               std::span<const QaItem> questions,
                                               std::span<const Mode> modes,
                                               const SqueezeOptions& squeeze, int32_t max_tokens) {
  if (questions.empty()) return InvalidArgumentError("document QA: no questions");
  if (modes.empty()) return InvalidArgumentError("document QA: no modes");
  const auto context = tokenizer.Encode(ContextText(system, document), tokenizer.add_bos());
  SQZ_ASSIGN_OR_RETURN(PreparedContext prepared, PrepareContext(backend, context, squeeze));
  std::vector<QaOutcome> out;
  for (size_t q = 0; q < questions.size(); ++q) {
    const auto query = tokenizer.Encode(QueryText(questions[q].question), /*add_bos=*/false);
    for (const Mode& mode : modes) {
      QaOutcome o;
      o.question = q;
      o.mode = mode.name;
      SQZ_ASSIGN_OR_RETURN(o.answer, AskGreedy(backend, tokenizer, prepared.snapshot, mode.options,
                                               query, max_tokens));
      o.correct = ContainsIgnoreCase(o.answer.text, questions[q].answer);
      out.push_back(std::move(o));
    }
  }
  return out;
}

}  // namespace sqz::needle
