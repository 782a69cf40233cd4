// Accuracy checks of Squeezed Attention with a real model: question answering over a fixed
// document (the demo's document and questions) and a needle-in-a-haystack benchmark.
//
// Prompt layout (ChatML, as tools/demo/demo.py sends it to the server): the fixed context is the
// token prefix [system turn + start of the user turn + "Document:\n" + document], the query the
// rest of the user turn [question + end of turn + assistant start]. The query's positions continue
// after the context's; the concatenation equals the ChatML rendering of
// [system, user("Document:\n" + document + "\n\nQuestion: " + question)] with generation prompt.
// Context and query are tokenized separately (as the server does), so the split falls on a token
// boundary.
//
// Everything here is engine-only (no gRPC, protobuf, YAML or RocksDB). Thread safety: free
// functions are pure except those taking a Backend, which use it exclusively until they return
// (call them on the backend's thread).
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
#include "engine/squeeze/squeezed_attention.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz::needle {

// `text` with newlines and tabs as spaces, for one-line logs and tables.
std::string OneLine(std::string text);

// The demo's system message.
inline constexpr std::string_view kDefaultSystem =
    "You are a helpful assistant. Answer the question using only the document.";

// "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nDocument:\n{document stripped}\n".
std::string ContextText(std::string_view system, std::string_view document);
// "\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n".
std::string QueryText(std::string_view question);

// ---- Document question answering ---------------------------------------------------------------

struct QaItem {
  std::string question;
  std::string answer;  // the answer is correct when it contains this, ignoring ASCII case
};

// Parses [{"question": "...", "answer": "..."}, ...] (other keys ignored). INVALID_ARGUMENT naming
// the entry for malformed JSON, a non-array, an empty array, or a missing / empty / non-string
// field.
StatusOr<std::vector<QaItem>> ParseQuestions(std::string_view json);

// Whether `answer` contains `expected`, ignoring ASCII case (what the demo prints as "correct").
bool ContainsIgnoreCase(std::string_view answer, std::string_view expected);

// A named attention configuration to query a snapshot with.
struct Mode {
  std::string name;
  AttentionOptions options;
};
// DENSE and SQUEEZED at the server defaults (budget 0.125, flat): what the demo compares.
std::vector<Mode> DemoModes();
// dense; squeezed flat at KV budgets 0.5 / 0.25 / 0.125; the same hierarchical.
std::vector<Mode> BenchmarkModes();

// The fixed context prefilled and indexed once.
struct PreparedContext {
  ContextSnapshot snapshot;
  double prefill_s = 0;  // dense prefill with K/V capture (CaptureContext)
  double build_s = 0;    // BuildSnapshot: k-means, re-layout, coarse level, calibration
};
// Errors of CaptureContext / BuildSnapshot pass through.
StatusOr<PreparedContext> PrepareContext(Backend& backend, std::span<const int32_t> tokens,
                                         const SqueezeOptions& options);

struct Answer {
  std::string text;              // greedy completion, EOS excluded
  int64_t generated = 0;         // tokens generated
  double ttft_s = 0;             // query prefill + first token
  double total_s = 0;            // whole generation
  double context_keys_read = 0;  // share of the context's keys read (KeyUsage::share)
};
// Greedy answer to `query` (token ids, non-empty) after the snapshot's context, with at most
// max_tokens tokens; stops at the tokenizer's EOS ids. Errors of MakeContextAttention / Generate.
StatusOr<Answer> AskGreedy(Backend& backend, const Tokenizer& tokenizer,
                           const ContextSnapshot& snapshot, const AttentionOptions& options,
                           std::span<const int32_t> query, int32_t max_tokens);

struct QaOutcome {
  size_t question = 0;  // index into the questions
  std::string mode;
  Answer answer;
  bool correct = false;
};
// Prefills ContextText(system, document) once, then asks every question in every mode, greedily
// (max_tokens each). Outcomes are question-major. INVALID_ARGUMENT for no questions or modes.
StatusOr<std::vector<QaOutcome>> RunDocumentQa(Backend& backend, const Tokenizer& tokenizer,
                                               std::string_view system, std::string_view document,
                                               std::span<const QaItem> questions,
                                               std::span<const Mode> modes,
                                               const SqueezeOptions& squeeze, int32_t max_tokens);

// ---- Needle in a haystack ----------------------------------------------------------------------

struct Needle {
  std::string sentence;  // "The secret passcode of the blue lighthouse is 4821."
  std::string question;  // "What is the secret passcode of the blue lighthouse?"
  std::string code;      // "4821" (1000 .. 9999)
};
// A needle drawn from `seed` (colour x landmark x code): the same seed gives the same needle.
Needle MakeNeedle(uint64_t seed);

// Exact match: the first maximal run of ASCII digits in `answer` equals `code` ("4821", "4821.",
// "The passcode is 4821" match; "48210", "482", "1234 or 4821" and "" do not).
bool ExactMatch(std::string_view answer, std::string_view code);

// Filler sentences written by this project from word lists (no digits, no needle colours or
// landmarks), drawn from `seed`. The same seed gives the same sentences.
std::vector<std::string> FillerSentences(uint64_t seed, size_t count);

struct Haystack {
  std::string document;         // filler paragraphs with the needle sentence inside
  std::vector<int32_t> tokens;  // ContextText(system, document) encoded
  double depth = 0;             // share of the document's filler before the needle, in [0, 1]
};
// A context of at most target_tokens tokens (and within 64 of it) once encoded as
// ContextText(system, document): filler from `seed` with the needle placed at the sentence boundary
// nearest `depth` (0: first sentence, 1: last). INVALID_ARGUMENT for depth outside [0, 1] or a
// target too small to hold the prompt, the needle and some filler (< 64 tokens beyond them).
StatusOr<Haystack> BuildHaystack(const Tokenizer& tokenizer, std::string_view system,
                                 int64_t target_tokens, double depth, const Needle& needle,
                                 uint64_t seed);

// Depth of trial i of n, evenly from 0 to 1 (n = 1: 0.5).
double DepthAt(int64_t i, int64_t n);

struct NeedleTrial;

struct NeedleOptions {
  std::vector<int64_t> lengths = {1024, 2048, 4096, 8192};  // target context tokens
  int64_t depths = 10;                                      // needle depths per length
  // Runs only depth indices >= first_depth (resuming an interrupted run: trials are seeded by
  // (seed, length, depth index), so the skipped ones need not be recomputed).
  int64_t first_depth = 0;
  uint64_t seed = 1;
  int32_t max_tokens = 12;  // answer tokens
  std::string system = std::string(kDefaultSystem);
  std::vector<Mode> modes = BenchmarkModes();
  SqueezeOptions squeeze;  // ingestion options (defaults: 5% centroids, 1% coarse)
  // Called after each trial (progress, logs). May be empty.
  std::function<void(const NeedleTrial&)> on_trial;
};

struct NeedleTrial {
  int64_t length = 0;          // target
  int64_t context_tokens = 0;  // actual, <= min(target, max_positions - query - max_tokens)
  int64_t query_tokens = 0;
  double depth = 0;  // actual (Haystack::depth)
  Needle needle;
  double prefill_s = 0, build_s = 0;
  std::vector<Answer> answers;  // per mode, in NeedleOptions::modes order
  std::vector<bool> correct;    // per mode
};

// For each length and depth: one haystack with a fresh needle (seeded by seed, length, depth),
// one prefill + BuildSnapshot, then every mode answers from the same snapshot. A length beyond
// the model's positions is clamped so context + query + answer fit. INVALID_ARGUMENT for empty
// lengths or modes, depths < 1, max_tokens < 1; other errors pass through.
StatusOr<std::vector<NeedleTrial>> RunNeedleBenchmark(Backend& backend, const Tokenizer& tokenizer,
                                                      const NeedleOptions& options);

// "1024,2k,8K" -> {1024, 2048, 8192} (k = 1024). INVALID_ARGUMENT naming the bad item for
// anything else, a value < 1, or an empty list.
StatusOr<std::vector<int64_t>> ParseLengths(std::string_view csv);

// Markdown tables: accuracy per length x mode (correct/total and %), context keys read per mode,
// and speed per length (prefill tokens/s, clustering time, decode tokens/s).
std::string FormatNeedleReport(std::span<const NeedleTrial> trials, std::span<const Mode> modes);

}  // namespace sqz::needle
