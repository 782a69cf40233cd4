#include "tools/longctx_eval/longctx_eval.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace sqz::longctx {
namespace {

using nlohmann::json;

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

// Reads a string field; INVALID_ARGUMENT naming `where` when missing, not a string, or empty.
StatusOr<std::string> StringField(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return InvalidArgumentError(where + " has no \"" + key + "\"");
  if (!it->is_string()) return InvalidArgumentError(where + "." + key + " is not a string");
  std::string s = it->get<std::string>();
  if (s.empty()) return InvalidArgumentError(where + "." + key + " is empty");
  return s;
}

StatusOr<EvalDocument> ParseLine(const std::string& line, const std::string& where) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    return InvalidArgumentError(where + ": malformed JSON: " + e.what());
  }
  if (!j.is_object()) return InvalidArgumentError(where + " is not a JSON object");
  EvalDocument d;
  auto len = j.find("length");
  if (len == j.end() || !len->is_number_integer() || len->get<int64_t>() < 1) {
    return InvalidArgumentError(where + ".length must be an integer >= 1");
  }
  d.length = len->get<int64_t>();
  auto seed = j.find("seed");
  if (seed != j.end()) {
    if (!seed->is_number_unsigned()) {
      return InvalidArgumentError(where + ".seed must be a non-negative integer");
    }
    d.seed = seed->get<uint64_t>();
  }
  d.kind = j.value("kind", std::string("facts"));
  SQZ_ASSIGN_OR_RETURN(d.document, StringField(j, "document", where));
  auto qs = j.find("questions");
  if (qs == j.end() || !qs->is_array() || qs->empty()) {
    return InvalidArgumentError(where + ".questions must be a non-empty array");
  }
  for (size_t i = 0; i < qs->size(); ++i) {
    const json& q = (*qs)[i];
    const std::string qwhere = where + ".questions[" + std::to_string(i) + "]";
    if (!q.is_object()) return InvalidArgumentError(qwhere + " is not an object");
    EvalQuestion e;
    SQZ_ASSIGN_OR_RETURN(e.question, StringField(q, "question", qwhere));
    SQZ_ASSIGN_OR_RETURN(e.answer, StringField(q, "answer", qwhere));
    e.kind = q.value("kind", std::string("single"));
    e.depth = q.value("depth", 0.0);
    d.questions.push_back(std::move(e));
  }
  return d;
}

}  // namespace

StatusOr<std::vector<EvalDocument>> ParseEvalSet(std::string_view jsonl) {
  std::vector<EvalDocument> out;
  size_t start = 0, line_no = 0;
  while (start < jsonl.size()) {
    size_t end = jsonl.find('\n', start);
    if (end == std::string_view::npos) end = jsonl.size();
    ++line_no;
    const std::string line(jsonl.substr(start, end - start));
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    SQZ_ASSIGN_OR_RETURN(EvalDocument d, ParseLine(line, "line " + std::to_string(line_no)));
    out.push_back(std::move(d));
  }
  if (out.empty()) return InvalidArgumentError("eval set: no documents");
  return out;
}

std::string QueryText(std::string_view question) {
  return "Question: " + std::string(question) + " Answer:";
}

bool ExactMatch(std::string_view answer, std::string_view expected) {
  const auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  while (!answer.empty() && is_space(answer.front())) answer.remove_prefix(1);
  while (!answer.empty() && is_space(answer.back())) answer.remove_suffix(1);
  return answer == expected;
}

StatusOr<std::vector<needle::Mode>> LongctxModes(const ModeSet& set) {
  if (set.budgets.empty()) return InvalidArgumentError("no KV budgets to compare with dense");
  std::vector<needle::Mode> modes;
  needle::Mode dense{"dense", {}};
  dense.options.mode = AttentionMode::kDense;
  modes.push_back(dense);
  const AttentionOptions defaults;
  std::string suffix;
  if (set.block_size != defaults.block_size) suffix += " b" + std::to_string(set.block_size);
  if (set.gqa_reduce != defaults.gqa_reduce) {
    suffix += set.gqa_reduce == GqaReduce::kMean ? " mean" : " max";
  }
  for (bool hierarchical : {false, true}) {
    if (hierarchical && !set.hierarchical) break;
    for (double budget : set.budgets) {
      needle::Mode m;
      m.options.mode = AttentionMode::kSqueezed;
      m.options.policy = SelectionPolicy::kBudget;
      m.options.kv_budget = budget;
      m.options.hierarchical = hierarchical;
      m.options.block_size = set.block_size;
      m.options.gqa_reduce = set.gqa_reduce;
      if (!(budget > 0.0)) {
        return InvalidArgumentError("KV budget " + std::to_string(budget) +
                                    ": want a share in (0, 1]");
      }
      SQZ_RETURN_IF_ERROR(m.options.Validate());
      char name[48];
      std::snprintf(name, sizeof(name), "%s %.4g", hierarchical ? "hier" : "flat", budget);
      m.name = name + suffix;
      modes.push_back(m);
    }
  }
  return modes;
}

std::vector<needle::Mode> LongctxModes() { return *LongctxModes(ModeSet{}); }

int32_t AnswerBudget(const Tokenizer& tokenizer, const std::string& expected, int32_t max_tokens) {
  const auto ids = tokenizer.Encode(expected, /*add_bos=*/false);
  return std::max(max_tokens, static_cast<int32_t>(ids.size()) + 2);
}

StatusOr<DocumentResult> EvaluateDocument(Backend& backend, const Tokenizer& tokenizer,
                                          const EvalDocument& doc, const EvalOptions& options) {
  if (options.modes.empty()) return InvalidArgumentError("longctx eval: no modes");
  if (options.max_tokens < 1) {
    return InvalidArgumentError("longctx eval: max_tokens must be >= 1, got " +
                                std::to_string(options.max_tokens));
  }
  for (const needle::Mode& m : options.modes) {
    if (Status s = m.options.Validate(); !s.ok()) {
      return InvalidArgumentError("longctx eval: mode '" + m.name + "': " + s.message());
    }
  }
  const auto context = tokenizer.Encode(doc.document, /*add_bos=*/true);
  std::vector<std::vector<int32_t>> queries;
  std::vector<int32_t> budgets;
  int64_t longest = 0;  // query + answer budget
  for (const EvalQuestion& q : doc.questions) {
    queries.push_back(tokenizer.Encode(QueryText(q.question), /*add_bos=*/false));
    budgets.push_back(AnswerBudget(tokenizer, q.answer, options.max_tokens));
    longest = std::max(longest, static_cast<int64_t>(queries.back().size()) + budgets.back());
  }
  const int64_t need = static_cast<int64_t>(context.size()) + longest;
  if (need > backend.config().max_positions) {
    return InvalidArgumentError("longctx eval: document (length " + std::to_string(doc.length) +
                                ", seed " + std::to_string(doc.seed) + ") needs " +
                                std::to_string(need) +
                                " positions (context + query + answer) but the model has " +
                                std::to_string(backend.config().max_positions));
  }
  DocumentResult r;
  r.length = doc.length;
  r.context_tokens = static_cast<int64_t>(context.size());
  SQZ_ASSIGN_OR_RETURN(needle::PreparedContext prepared,
                       needle::PrepareContext(backend, context, options.squeeze));
  r.prefill_s = prepared.prefill_s;
  r.build_s = prepared.build_s;
  for (size_t q = 0; q < doc.questions.size(); ++q) {
    QuestionResult qr;
    qr.question = q;
    for (const needle::Mode& m : options.modes) {
      SQZ_ASSIGN_OR_RETURN(needle::Answer a,
                           needle::AskGreedy(backend, tokenizer, prepared.snapshot, m.options,
                                             queries[q], budgets[q]));
      qr.correct.push_back(ExactMatch(a.text, doc.questions[q].answer));
      qr.answers.push_back(std::move(a));
    }
    r.questions.push_back(std::move(qr));
  }
  return r;
}

StatusOr<std::vector<DocumentResult>> EvaluateAll(Backend& backend, const Tokenizer& tokenizer,
                                                  std::span<const EvalDocument> docs,
                                                  const EvalOptions& options) {
  std::vector<DocumentResult> out;
  for (const EvalDocument& d : docs) {
    SQZ_ASSIGN_OR_RETURN(DocumentResult r, EvaluateDocument(backend, tokenizer, d, options));
    if (options.on_document) options.on_document(d, r);
    out.push_back(std::move(r));
  }
  return out;
}

std::string FormatReport(std::span<const EvalDocument> docs,
                         std::span<const DocumentResult> results,
                         std::span<const needle::Mode> modes, const std::string& backend) {
  const size_t nm = modes.size();
  struct Tally {
    std::vector<int64_t> ok;
    int64_t n = 0;
  };
  // length -> tallies for retrieval (single + needle) and two-hop questions.
  std::map<int64_t, Tally> retrieval, twohop;
  std::map<int64_t, std::vector<double>> keys;  // length -> summed share per mode
  std::map<int64_t, int64_t> answers, docs_at, tokens;
  std::map<int64_t, double> prefill, build;
  const size_t n = std::min(docs.size(), results.size());
  for (size_t i = 0; i < n; ++i) {
    const DocumentResult& r = results[i];
    docs_at[r.length] += 1;
    tokens[r.length] += r.context_tokens;
    prefill[r.length] += r.prefill_s;
    build[r.length] += r.build_s;
    auto& k = keys[r.length];
    k.resize(nm, 0.0);
    for (const QuestionResult& q : r.questions) {
      Tally& t =
          docs[i].questions[q.question].kind == "twohop" ? twohop[r.length] : retrieval[r.length];
      t.ok.resize(nm, 0);
      t.n += 1;
      answers[r.length] += 1;
      for (size_t m = 0; m < nm && m < q.correct.size(); ++m) {
        t.ok[m] += q.correct[m] ? 1 : 0;
        k[m] += q.answers[m].context_keys_read;
      }
    }
  }
  const auto header = [&](const std::string& first) {
    std::string h = "| " + first + " |";
    for (const needle::Mode& m : modes) h += " " + m.name + " |";
    h += "\n| --- |";
    for (size_t m = 0; m < nm; ++m) h += " --- |";
    return h + "\n";
  };
  const auto table = [&](const std::map<int64_t, Tally>& tallies) {
    std::string out = header("length (mean context tokens)");
    Tally all;
    all.ok.assign(nm, 0);
    for (const auto& [length, t] : tallies) {
      out += "| " + std::to_string(length) + " (" +
             std::to_string(tokens[length] / std::max<int64_t>(1, docs_at[length])) + ") |";
      for (size_t m = 0; m < nm; ++m) {
        const int64_t ok = m < t.ok.size() ? t.ok[m] : 0;
        out += " " + std::to_string(ok) + "/" + std::to_string(t.n) + " (" +
               Fmt("%.1f", 100.0 * ok / std::max<int64_t>(1, t.n)) + "%) |";
        all.ok[m] += ok;
      }
      all.n += t.n;
      out += "\n";
    }
    out += "| all |";
    for (size_t m = 0; m < nm; ++m) {
      out += " " + std::to_string(all.ok[m]) + "/" + std::to_string(all.n) + " (" +
             Fmt("%.1f", 100.0 * all.ok[m] / std::max<int64_t>(1, all.n)) + "%) |";
    }
    return out + "\n";
  };
  std::string out = "### Accuracy, retrieval questions (single fact + needle; exact match)\n\n";
  out += table(retrieval);
  if (!twohop.empty()) {
    out += "\n### Accuracy, two-hop questions (exact match)\n\n" + table(twohop);
  }
  out += "\n### Share of the context's keys read (mean over answers)\n\n";
  // Every answer reads at least the sink and window keys, so all zeros means not counted (the
  // CUDA backend does not count them).
  bool counted = false;
  for (const auto& [length, k] : keys) {
    for (double x : k) counted = counted || x > 0.0;
  }
  if (!counted) {
    out += "Not counted by this backend.\n";
  } else {
    out += header("length");
    for (const auto& [length, k] : keys) {
      out += "| " + std::to_string(length) + " |";
      for (size_t m = 0; m < nm; ++m) {
        out += " " + Fmt("%.3f", k[m] / std::max<int64_t>(1, answers[length])) + " |";
      }
      out += "\n";
    }
  }
  out += "\n### Speed (" + backend +
         ")\n\n| length | documents | prefill tokens/s | snapshot s |\n";
  out += "| --- | --- | --- | --- |\n";
  for (const auto& [length, count] : docs_at) {
    out += "| " + std::to_string(length) + " | " + std::to_string(count) + " | " +
           Fmt("%.0f", tokens[length] / std::max(1e-9, prefill[length])) + " | " +
           Fmt("%.2f", build[length] / std::max<int64_t>(1, count)) + " |\n";
  }
  return out;
}

}  // namespace sqz::longctx
