// Exact-match accuracy of the longctx model (models/longctx, trained by train/) on held-out
// documents, dense against Squeezed Attention at several KV budgets, flat and hierarchical.
//
// Prompt format (train/tasks.py; the model was trained on exactly this): the fixed context is
// <s> + document, the query "Question: {question} Answer:", each tokenized on its own; the query's
// positions continue after the context's. The model answers with the value and </s>.
//
// Per document: one dense prefill capturing K/V and one BuildSnapshot (engine/squeeze), then every
// question is answered greedily in every mode from that snapshot through MakeContextAttention
// (tools/needle's PrepareContext / AskGreedy).
//
// Engine-only (no gRPC, protobuf, YAML or RocksDB). Thread safety: free functions are pure except
// those taking a Backend, which use it exclusively until they return.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/model/backend.h"
#include "engine/squeeze/snapshot.h"
#include "engine/tokenizer/tokenizer.h"
#include "tools/needle/needle.h"

namespace sqz::longctx {

struct EvalQuestion {
  std::string question;  // without the "Question: " prefix
  std::string answer;    // exact expected answer ("4821", "Helena")
  std::string kind;      // "single", "needle" or "twohop"
  double depth = 0;      // position of the fact needed, share of the document's sentences
};

struct EvalDocument {
  int64_t length = 0;  // nominal context length (1024, ..., 16384)
  uint64_t seed = 0;
  std::string kind;  // "facts" or "needle"
  std::string document;
  std::vector<EvalQuestion> questions;  // at least one
};

// One JSON object per non-empty line (train/eval_set.py's format; unknown keys ignored).
// INVALID_ARGUMENT naming the line for bad JSON, a missing / mistyped field, a length < 1, an
// empty document or question list, or an empty question / answer.
StatusOr<std::vector<EvalDocument>> ParseEvalSet(std::string_view jsonl);

// "Question: {question} Answer:" (train/tasks.py query_text).
std::string QueryText(std::string_view question);

// The answer with ASCII whitespace trimmed at both ends equals `expected` exactly.
bool ExactMatch(std::string_view answer, std::string_view expected);

// Which squeezed modes a run compares with dense, and the attention options they share
// (sqz-longctx-eval --budgets, --flat-only, --block-size, --gqa-reduce).
struct ModeSet {
  std::vector<double> budgets = {0.5, 0.25, 0.125, 0.0625};  // KV budgets, budget policy
  bool hierarchical = true;                                  // also each budget hierarchical
  int64_t block_size = AttentionOptions{}.block_size;        // query tokens per selection
  GqaReduce gqa_reduce = AttentionOptions{}.gqa_reduce;
};
// dense, then squeezed flat at each budget, then (hierarchical) the same hierarchical. Squeezed
// modes not at the default block size or GQA reduction say so in their names ("flat 0.125 b1
// mean"). INVALID_ARGUMENT for no budgets or options that do not validate (a budget outside
// (0, 1], block_size < 1).
StatusOr<std::vector<needle::Mode>> LongctxModes(const ModeSet& set);
// LongctxModes(ModeSet{}): dense; flat at KV budgets 0.5 / 0.25 / 0.125 / 0.0625; the same
// hierarchical.
std::vector<needle::Mode> LongctxModes();

struct QuestionResult {
  size_t question = 0;                  // index into EvalDocument::questions
  std::vector<needle::Answer> answers;  // per mode
  std::vector<bool> correct;            // per mode
};

struct DocumentResult {
  int64_t length = 0;
  int64_t context_tokens = 0;
  double prefill_s = 0, build_s = 0;
  std::vector<QuestionResult> questions;
};

struct EvalOptions {
  std::vector<needle::Mode> modes = LongctxModes();
  SqueezeOptions squeeze;  // defaults: 4 sink, 100 window, 5% centroids, 1% coarse
  // Answer tokens at most, raised per question to what its expected answer needs (AnswerBudget):
  // values are 1-5 tokens + </s>; answers that restate a fact (train/ --answer-format restate)
  // are longer.
  int32_t max_tokens = 8;
  // Called after each document (progress, logs). May be empty.
  std::function<void(const EvalDocument&, const DocumentResult&)> on_document;
};

// The answer tokens greedy decoding may take for a question: max_tokens, or the expected
// answer's tokens + 2 (its </s> and one more) when that is more, so that a longer expected answer
// is never cut short into a miss.
int32_t AnswerBudget(const Tokenizer& tokenizer, const std::string& expected, int32_t max_tokens);

// Evaluates one document. INVALID_ARGUMENT when context + the longest query + answer budget exceed
// the model's positions, for no modes or max_tokens < 1, or a mode whose options do not validate;
// errors of prefill, BuildSnapshot and generation pass through.
StatusOr<DocumentResult> EvaluateDocument(Backend& backend, const Tokenizer& tokenizer,
                                          const EvalDocument& doc, const EvalOptions& options);

// All documents in order (on_document after each). Errors stop the run and pass through.
StatusOr<std::vector<DocumentResult>> EvaluateAll(Backend& backend, const Tokenizer& tokenizer,
                                                  std::span<const EvalDocument> docs,
                                                  const EvalOptions& options);

// Markdown: accuracy per length x mode for retrieval questions (single + needle: correct / total
// and %), the same for two-hop questions when there are any, mean share of context keys read per
// mode, and speed per length (prefill tokens/s, snapshot seconds) on `backend` (a label).
std::string FormatReport(std::span<const EvalDocument> docs,
                         std::span<const DocumentResult> results,
                         std::span<const needle::Mode> modes,
                         const std::string& backend = "CPU backend");

}  // namespace sqz::longctx
