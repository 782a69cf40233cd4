#include "engine/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "engine/tokenizer/utf8.h"

namespace sqz {
namespace {

// Llama-3 (tiktoken cl100k-style) and Qwen2 differ only in \p{N}{1,3} versus \p{N}.
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Each digit alone (Hugging Face Digits(individual_digits=true)), then GPT-2.
constexpr std::string_view kSingleDigitRegex = R"(\p{N})";

const std::vector<PreTokenizerSpec>& Table() {
  static const std::vector<PreTokenizerSpec> table = {
      {"llama3", {"llama-bpe", "llama-v3"}, {kLlama3Regex}, true},
      {"gpt2", {"default", "gpt-2", "phi-2"}, {kGpt2Regex}, false},
      {"smollm", {}, {kSingleDigitRegex, kGpt2Regex}, false},
      {"starcoder", {"refact"}, {kSingleDigitRegex, kGpt2Regex}, false},
      {"qwen2", {}, {kQwen2Regex}, false},
  };
  return table;
}

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  const int n = pcre2_get_error_message(code, buf, sizeof(buf));
  return n < 0 ? "PCRE2 error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf));
}

}  // namespace

std::span<const PreTokenizerSpec> PreTokenizerTable() { return Table(); }

const PreTokenizerSpec* FindPreTokenizer(std::string_view name) {
  for (const PreTokenizerSpec& spec : Table()) {
    if (spec.name == name) return &spec;
    for (std::string_view alias : spec.aliases) {
      if (alias == name) return &spec;
    }
  }
  return nullptr;
}

const PreTokenizerSpec* MatchPreTokenizer(std::span<const std::string> regexes) {
  for (const PreTokenizerSpec& spec : Table()) {
    if (std::equal(spec.regexes.begin(), spec.regexes.end(), regexes.begin(), regexes.end())) {
      return &spec;
    }
  }
  return nullptr;
}

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  std::string pattern;
  ~Compiled() { pcre2_code_free(code); }
};

RegexSplitter::~RegexSplitter() = default;

StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(
    std::span<const std::string> regexes) {
  std::unique_ptr<RegexSplitter> splitter(new RegexSplitter());
  for (const std::string& pattern : regexes) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    auto compiled = std::make_unique<Compiled>();
    compiled->pattern = pattern;
    compiled->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (compiled->code == nullptr) {
      return InvalidArgumentError("pre-tokenizer regex '" + pattern + "' does not compile: " +
                                  Pcre2Message(error) + " at offset " + std::to_string(offset));
    }
    // JIT is an optimisation only: without it pcre2_match interprets the pattern.
    (void)pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE);
    splitter->regexes_.push_back(std::move(compiled));
  }
  return splitter;
}

void RegexSplitter::SplitRun(const Compiled& re, std::string_view run,
                             std::vector<std::string_view>* out) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re.code, nullptr);
  SQZ_CHECK(md != nullptr) << "out of memory";
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(run.data());
  const size_t n = run.size();
  size_t gap = 0;   // start of text not yet emitted
  size_t from = 0;  // where the next search starts
  while (from < n) {
    // The subject was validated by Split, so PCRE2 need not re-check it (that would make each
    // call O(n) and a document O(n^2)).
    int rc = pcre2_match(re.code, subject, n, from, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // Pathological backtracking depth: retry with the interpreter, which uses the heap.
      rc = pcre2_match(re.code, subject, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    }
    if (rc < 0) break;  // no match (or a resource limit): the rest is one piece
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0], end = ov[1];
    if (end == start) {  // empty match: skip one character, it stays in the gap
      size_t len = 1;
      if (start < n) NextUtf8Char(run, start, &len);
      from = start + len;
      continue;
    }
    if (start > gap) out->push_back(run.substr(gap, start - gap));
    out->push_back(run.substr(start, end - start));
    gap = from = end;
  }
  if (gap < n) out->push_back(run.substr(gap));
  pcre2_match_data_free(md);
}

void RegexSplitter::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  // Applies regexes_[level..] to a valid-UTF-8 piece.
  auto split_valid = [&](auto&& self, std::string_view piece, size_t level) -> void {
    if (piece.empty()) return;
    if (level == regexes_.size()) {
      pieces->push_back(piece);
      return;
    }
    std::vector<std::string_view> parts;
    SplitRun(*regexes_[level], piece, &parts);
    for (std::string_view part : parts) self(self, part, level + 1);
  };
  size_t run_start = 0, pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t len = 0;
    if (NextUtf8Char(text, pos, &len) == Utf8Status::kValid) {
      pos += len;
      continue;
    }
    split_valid(split_valid, text.substr(run_start, pos - run_start), 0);
    pieces->push_back(text.substr(pos, len));  // invalid bytes: a piece of their own
    pos += len;
    run_start = pos;
  }
  split_valid(split_valid, text.substr(run_start), 0);
}

}  // namespace sqz
