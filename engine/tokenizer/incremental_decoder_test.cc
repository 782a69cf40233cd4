#include <catch2/catch.hpp>
#include <filesystem>
#include <random>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = SQZ_SHARED_DIR;

// SentencePiece-style vocabulary: specials, 256 byte-fallback pieces, "▁", letters and "▁a".
TokenizerModel ByteFallbackModel() {
  TokenizerModel m;
  m.kind = TokenizerKind::kSentencePieceBpe;
  m.tokens = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    m.tokens.push_back(buf);
  }
  for (const char* p : {"\xE2\x96\x81", "a", "b",
                        "\xE2\x96\x81"
                        "a"})
    m.tokens.push_back(p);
  m.merges = {"\xE2\x96\x81 a"};
  m.bos_id = 1;
  m.eos_ids = {2};
  m.unk_id = 0;
  m.special_ids = {0, 1, 2};
  return m;
}

std::string Stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special,
                   std::vector<std::string>* chunks) {
  IncrementalDecoder dec(tok, skip_special);
  std::string all;
  for (int32_t id : ids) {
    chunks->push_back(dec.Push(id));
    all += chunks->back();
  }
  chunks->push_back(dec.Flush());
  return all + chunks->back();
}

TEST_CASE("Multi-byte characters split over byte-fallback tokens come out whole") {
  auto tok = Tokenizer::Create(ByteFallbackModel());
  REQUIRE(tok.ok());
  const Tokenizer& t = **tok;
  // "a😀b€": 😀 (4 bytes) and € (3 bytes) need byte fallback.
  const std::string text =
      "a\xF0\x9F\x98\x80"
      "b\xE2\x82\xAC";
  const std::vector<int32_t> ids = t.Encode(text, /*add_bos=*/true);
  REQUIRE(ids.size() == 1 + 1 + 4 + 1 + 3);  // <s> ▁a <4 bytes> b <3 bytes>
  std::vector<std::string> chunks;
  CHECK(Stream(t, ids, true, &chunks) == t.Decode(ids, true));
  CHECK(t.Decode(ids, true) == text);
  // Nothing is emitted until the emoji's last byte arrives, then the whole emoji at once.
  CHECK(chunks[1] == "a");
  CHECK(chunks[2].empty());
  CHECK(chunks[3].empty());
  CHECK(chunks[4].empty());
  CHECK(chunks[5] == "\xF0\x9F\x98\x80");
  CHECK(chunks[6] == "b");
  CHECK(chunks[9] == "\xE2\x82\xAC");
  for (const std::string& c : chunks) CHECK(IsValidUtf8(c));
}

TEST_CASE("Streaming equals Decode on random byte-fallback text, every chunk valid UTF-8") {
  auto tok = Tokenizer::Create(ByteFallbackModel());
  REQUIRE(tok.ok());
  std::mt19937 rng(77);
  for (int len : {1, 3, 127, 129}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::string text;
      for (int i = 0; i < len; ++i) {
        switch (rng() % 4) {
          case 0:
            text += "a";
            break;
          case 1:
            text += " ";
            break;
          default: {
            uint32_t cp = 0x80 + rng() % 0x10FF80;
            if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0x20AC;
            AppendUtf8(cp, &text);
          }
        }
      }
      for (bool skip : {true, false}) {
        const std::vector<int32_t> ids = (*tok)->Encode(text, true);
        std::vector<std::string> chunks;
        REQUIRE(Stream(**tok, ids, skip, &chunks) == (*tok)->Decode(ids, skip));
        for (const std::string& c : chunks) REQUIRE(IsValidUtf8(c));
      }
    }
  }
}

TEST_CASE("Bytes that can never form a character come out as U+FFFD") {
  auto tok = Tokenizer::Create(ByteFallbackModel());
  REQUIRE(tok.ok());
  IncrementalDecoder dec(**tok);
  CHECK(dec.Push(3 + 0xE2).empty());            // lead byte of a 3-byte character
  CHECK(dec.Push(3 + 'x') == "\xEF\xBF\xBDx");  // interrupted: replaced, then 'x'
  CHECK(dec.Push(3 + 0xFF) == "\xEF\xBF\xBD");  // never valid
  CHECK(dec.Push(3 + 0xF0).empty());
  CHECK(dec.Push(3 + 0x9F).empty());
  CHECK(dec.Flush() == "\xEF\xBF\xBD");  // truncated at the end
  CHECK(dec.Flush().empty());
}

TEST_CASE("Leading space: stripped at the start of text, kept when continuing a prompt") {
  auto tok = Tokenizer::Create(ByteFallbackModel());
  REQUIRE(tok.ok());
  const int32_t meta_a = (*tok)->PieceToId(
      "\xE2\x96\x81"
      "a");
  IncrementalDecoder fresh(**tok);
  CHECK(fresh.Push(meta_a) == "a");
  CHECK(fresh.Push(meta_a) == " a");
  IncrementalDecoder after_bos(**tok);
  CHECK(after_bos.Push(1).empty());  // <s> skipped
  CHECK(after_bos.Push(meta_a) == "a");
  IncrementalDecoder continuing(**tok, /*skip_special=*/true, /*continues_text=*/true);
  CHECK(continuing.Push(meta_a) == " a");
  IncrementalDecoder specials_kept(**tok, /*skip_special=*/false);
  CHECK(specials_kept.Push(2) == "</s>");
}

TEST_CASE("Llama-3 byte-level tokens split inside characters stream whole characters") {
  if (!fs::exists(kShared / "tokenizers/llama3/tokenizer.json")) {
    WARN("skipped: " << (kShared / "tokenizers/llama3/tokenizer.json").string() << " not found");
    return;
  }
  auto tok = Tokenizer::FromHfDirectory((kShared / "tokenizers/llama3").string());
  REQUIRE(tok.ok());
  // Rare CJK and emoji sequences are split into byte-level tokens that cut characters.
  const std::string text =
      "\xF0\x9F\xA6\x99\xE2\x80\x8D\xF0\x9F\x94\xA5 \xE9\xBE\x98\xE9\xBD\x89 \xF0\xA0\x80\x80 ok";
  const std::vector<int32_t> ids = (*tok)->Encode(text, true);
  int partial = 0;  // tokens that do not end on a character boundary
  for (int32_t id : ids) {
    const std::string d = (*tok)->Decode(std::vector<int32_t>{id});
    partial += !IsValidUtf8(d);
  }
  CHECK(partial > 0);
  std::vector<std::string> chunks;
  CHECK(Stream(**tok, ids, true, &chunks) == text);
  for (const std::string& c : chunks) CHECK(IsValidUtf8(c));
}

}  // namespace
}  // namespace sqz
