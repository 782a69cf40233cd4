// Differential test: our SentencePiece-style BPE against Debian's C++ SentencePiece with the
// Llama-2 tokenizer.model, on seeded random strings. Two of our tokenizers are compared: one
// from tokenizer.json (merges) and one built the way the GGUF loader builds it (pieces, scores
// and types only, merges derived from scores).
#include <sentencepiece_processor.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <random>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
const fs::path kLlama2 = fs::path(SQZ_SHARED_DIR) / "tokenizers/llama2";

// Seeded random text: runs of mixed scripts, whitespace (spaces, tabs, newlines, CR), digits,
// punctuation, emoji (with ZWJ and variation selectors) and rare characters that need byte
// fallback.
class TextGenerator {
 public:
  explicit TextGenerator(uint32_t seed) : rng_(seed) {}

  std::string Next() {
    std::string s;
    const int runs = Uniform(0, 12);
    for (int r = 0; r < runs; ++r) AppendRun(&s);
    return s;
  }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  void Code(uint32_t lo, uint32_t hi, std::string* s) {
    uint32_t cp = static_cast<uint32_t>(Uniform(static_cast<int>(lo), static_cast<int>(hi)));
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
    AppendUtf8(cp, s);
  }

  void AppendRun(std::string* s) {
    static const char* kWords[] = {"the",   "Hello", "world", "ing", "tion", "I'm", "don't",
                                   "Apple", "apfel", "x",     "QQ",  "a",    "<s>", "</s>"};
    static const char* kPunct[] = {".", ",", "!", "?", "...", "--", "(", ")", "\"", "'",
                                   "#", "@", "{", "}", "\\",  "/",  ":", ";", "``", "=="};
    const int n = Uniform(1, 6);
    switch (Uniform(0, 11)) {
      case 0:
      case 1:
        for (int i = 0; i < n; ++i) *s += kWords[Uniform(0, 13)];
        break;
      case 2:
        for (int i = 0; i < n; ++i) Code('a', 'z', s);
        break;
      case 3: {  // whitespace runs
        static const char* kSpace[] = {" ", " ", "  ", "\t", "\n", "\r\n", "\n\n", "   "};
        for (int i = 0; i < n; ++i) *s += kSpace[Uniform(0, 7)];
        break;
      }
      case 4:
        for (int i = 0; i < n; ++i) Code('0', '9', s);
        break;
      case 5:
        for (int i = 0; i < n; ++i) *s += kPunct[Uniform(0, 19)];
        break;
      case 6:  // Cyrillic, Greek, Latin-1 with accents
        for (int i = 0; i < n; ++i) {
          const int k = Uniform(0, 2);
          Code(k == 0 ? 0x430 : k == 1 ? 0x3B1 : 0xC0, k == 0 ? 0x44F : k == 1 ? 0x3C9 : 0xFF, s);
        }
        break;
      case 7:  // CJK, kana, Hangul
        for (int i = 0; i < n; ++i) {
          const int k = Uniform(0, 2);
          Code(k == 0   ? 0x4E00
               : k == 1 ? 0x3040
                        : 0xAC00,
               k == 0   ? 0x9FFF
               : k == 1 ? 0x30FF
                        : 0xD7A3,
               s);
        }
        break;
      case 8:  // Arabic, Devanagari, Thai, Khmer
        for (int i = 0; i < n; ++i) {
          const int k = Uniform(0, 3);
          const uint32_t lo[] = {0x600, 0x900, 0xE00, 0x1780};
          Code(lo[k], lo[k] + 0x7F, s);
        }
        break;
      case 9:  // emoji, sometimes joined or with a variation selector
        for (int i = 0; i < n; ++i) {
          Code(0x1F300, 0x1FAFF, s);
          if (Uniform(0, 3) == 0) *s += "\xE2\x80\x8D";  // ZWJ
          if (Uniform(0, 3) == 0) *s += "\xEF\xB8\x8F";  // VS16
        }
        break;
      case 10:  // anything in the BMP or beyond (mostly byte fallback)
        for (int i = 0; i < n; ++i) Code(0xA0, Uniform(0, 1) ? 0xFFFF : 0x10FFFF, s);
        break;
      default:  // control characters other than NUL
        for (int i = 0; i < n; ++i) Code(1, 0x1F, s);
        break;
    }
  }

  std::mt19937 rng_;
};

// The model as the GGUF loader fills it: pieces, scores, types; no merges.
TokenizerModel FromSentencePiece(const sentencepiece::SentencePieceProcessor& sp) {
  TokenizerModel m;
  m.kind = TokenizerKind::kSentencePieceBpe;
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    m.tokens.push_back(sp.IdToPiece(i));
    m.scores.push_back(sp.GetScore(i));
    TokenType t = TokenType::kNormal;
    if (sp.IsUnknown(i)) t = TokenType::kUnknown;
    if (sp.IsControl(i)) t = TokenType::kControl;
    if (sp.IsUnused(i)) t = TokenType::kUnused;
    if (sp.IsByte(i)) t = TokenType::kByte;
    m.types.push_back(t);
  }
  m.bos_id = sp.bos_id();
  m.eos_ids = {sp.eos_id()};
  m.unk_id = sp.unk_id();
  m.add_bos = true;
  return m;
}

TEST_CASE("Llama-2: zero mismatches against SentencePiece on 3000 random strings") {
  if (!fs::exists(kLlama2 / "tokenizer.model") || !fs::exists(kLlama2 / "tokenizer.json")) {
    WARN("skipped: " << kLlama2.string() << " has no tokenizer.model / tokenizer.json");
    return;
  }
  sentencepiece::SentencePieceProcessor sp;
  REQUIRE(sp.Load((kLlama2 / "tokenizer.model").string()).ok());
  auto from_json = Tokenizer::FromHfDirectory(kLlama2.string());
  REQUIRE(from_json.ok());
  auto from_scores = Tokenizer::Create(FromSentencePiece(sp));
  REQUIRE(from_scores.ok());

  TextGenerator gen(20240607);
  int json_mismatches = 0, score_mismatches = 0, roundtrip_failures = 0, sp_decode_diffs = 0;
  size_t total_tokens = 0, byte_tokens = 0, total_bytes = 0;
  const int kStrings = 3000;
  for (int i = 0; i < kStrings; ++i) {
    const std::string text = gen.Next();
    std::vector<int> expected;
    REQUIRE(sp.Encode(text, &expected).ok());
    const std::vector<int32_t> want(expected.begin(), expected.end());
    const std::vector<int32_t> got = (*from_json)->Encode(text, false, /*parse_special=*/false);
    const std::vector<int32_t> got2 = (*from_scores)->Encode(text, false, false);
    total_bytes += text.size();
    total_tokens += want.size();
    for (int id : want) byte_tokens += sp.IsByte(id);
    if (got != want && ++json_mismatches <= 5) UNSCOPED_INFO("tokenizer.json mismatch: " << text);
    if (got2 != want && ++score_mismatches <= 5) UNSCOPED_INFO("scores mismatch: " << text);
    if ((*from_json)->Decode(got) != text && ++roundtrip_failures <= 5) {
      UNSCOPED_INFO("round trip failed: " << text);
    }
    std::string sp_text;
    REQUIRE(sp.Decode(expected, &sp_text).ok());
    if ((*from_scores)->Decode(got2) != sp_text) ++sp_decode_diffs;
  }
  // The strings exercise what they should: many tokens, byte fallback among them.
  WARN("compared " << kStrings << " strings, " << total_bytes << " bytes, " << total_tokens
                   << " tokens (" << byte_tokens << " byte-fallback)");
  CHECK(total_tokens > 50000);
  CHECK(byte_tokens > 1000);
  CHECK(json_mismatches == 0);
  CHECK(score_mismatches == 0);
  CHECK(roundtrip_failures == 0);
  CHECK(sp_decode_diffs == 0);
}

}  // namespace
}  // namespace sqz
