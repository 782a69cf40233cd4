// Pre-tokenizers of byte-level BPE: lists of regexes that cut text into pieces before BPE, and the
// table that maps the names llama.cpp's GGUF files carry in tokenizer.ggml.pre to those lists.
//
// A regex list is applied in sequence: each regex splits every piece of the previous step; matches
// and the gaps between them both become pieces ("Isolated" in Hugging Face terms), so the pieces
// always cover the text exactly, in order. Regexes run under PCRE2 with UTF and UCP, so \s, \p{L},
// \p{N} are Unicode classes and lookahead such as Llama-3's `\s+(?!\S)` backtracks as intended.
// Bytes that are not valid UTF-8 are never matched: each invalid subpart is a piece of its own.
//
// Thread safety: RegexSplitter is immutable after Create; Split may run concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace sqz {

struct PreTokenizerSpec {
  std::string_view name;                  // canonical name ("llama3", "gpt2", ...)
  std::vector<std::string_view> aliases;  // other tokenizer.ggml.pre values meaning the same
  std::vector<std::string_view> regexes;  // applied in sequence
  bool ignore_merges;                     // default for TokenizerModel::ignore_merges
};

// The table. Names: "llama3" (aliases "llama-bpe", "llama-v3"), "gpt2" ("default", "gpt-2",
// "phi-2"), "smollm", "starcoder" ("refact"), "qwen2".
std::span<const PreTokenizerSpec> PreTokenizerTable();

// The entry whose name or alias is `name`, or nullptr.
const PreTokenizerSpec* FindPreTokenizer(std::string_view name);

// The entry whose regex list equals `regexes` exactly, or nullptr (to name tokenizer.json splits).
const PreTokenizerSpec* MatchPreTokenizer(std::span<const std::string> regexes);

// The GPT-2 regex (Hugging Face ByteLevel pre-tokenizer with use_regex=true).
inline constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class RegexSplitter {
 public:
  // Compiles each regex (UTF, UCP; JIT when available). INVALID_ARGUMENT naming the regex and
  // PCRE2's message and offset when one does not compile. An empty list splits nothing.
  static StatusOr<std::unique_ptr<RegexSplitter>> Create(std::span<const std::string> regexes);

  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;
  ~RegexSplitter();

  // Appends the pieces of `text` (views into it, non-empty, covering it in order) to *pieces.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  struct Compiled;
  RegexSplitter() = default;

  // One regex over one valid-UTF-8 run.
  void SplitRun(const Compiled& re, std::string_view run, std::vector<std::string_view>* out) const;

  std::vector<std::unique_ptr<Compiled>> regexes_;
};

}  // namespace sqz
