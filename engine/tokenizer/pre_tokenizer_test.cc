#include "engine/tokenizer/pre_tokenizer.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <random>

namespace sqz {
namespace {

std::vector<std::string> SplitWith(std::string_view name, std::string_view text) {
  const PreTokenizerSpec* spec = FindPreTokenizer(name);
  REQUIRE(spec != nullptr);
  std::vector<std::string> regexes(spec->regexes.begin(), spec->regexes.end());
  auto splitter = RegexSplitter::Create(regexes);
  REQUIRE(splitter.ok());
  std::vector<std::string_view> pieces;
  (*splitter)->Split(text, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

using V = std::vector<std::string>;

TEST_CASE("Llama-3 regex: whitespace before a word leaves one space to the word (lookahead)") {
  CHECK(SplitWith("llama3", "   Hello") == V{"  ", " Hello"});
  CHECK(SplitWith("llama3", "Hello   world") == V{"Hello", "  ", " world"});
  CHECK(SplitWith("llama3", "a   ") == V{"a", "   "});              // trailing run stays whole
  CHECK(SplitWith("llama3", "\t\tx") == V{"\t", "\tx"});            // \s+(?!\S) backtracks one
  CHECK(SplitWith("llama3", "x \n\n y") == V{"x", " \n\n", " y"});  // \s*[\r\n]+
  CHECK(SplitWith("llama3", " (") == V{" ("});
  CHECK(SplitWith("llama3", "  (") == V{" ", " ("});
}

TEST_CASE("Llama-3 regex: contractions, digits in threes, punctuation with newlines") {
  CHECK(SplitWith("llama3", "I've") == V{"I", "'ve"});
  CHECK(SplitWith("llama3", "YOU'LL") == V{"YOU", "'LL"});  // case-insensitive group
  CHECK(SplitWith("llama3", "1234567") == V{"123", "456", "7"});
  CHECK(SplitWith("llama3", "end.\n\nNext") == V{"end", ".\n\n", "Next"});
  CHECK(SplitWith("llama3", "Hello, y'all!") == V{"Hello", ",", " y", "'all", "!"});
}

TEST_CASE("Unicode classes: letters, numbers and spaces of other scripts") {
  // Ideographic space U+3000 is \s; Cyrillic is \p{L}; Arabic-Indic digits are \p{N}.
  CHECK(SplitWith("llama3", "\xD0\xBF\xD1\x80\xD0\xB8\xE3\x80\x80\xD0\xBC") ==
        V{"\xD0\xBF\xD1\x80\xD0\xB8", "\xE3\x80\x80\xD0\xBC"});
  CHECK(SplitWith("llama3", "\xD9\xA1\xD9\xA2\xD9\xA3\xD9\xA4") ==
        V{"\xD9\xA1\xD9\xA2\xD9\xA3", "\xD9\xA4"});
}

TEST_CASE("GPT-2, SmolLM and Qwen2 regexes") {
  CHECK(SplitWith("gpt2", "Hello world") == V{"Hello", " world"});
  CHECK(SplitWith("default", "  x 12345") == V{" ", " x", " 12345"});
  CHECK(SplitWith("smollm", "abc 123") == V{"abc", " ", "1", "2", "3"});
  CHECK(SplitWith("starcoder", "x42") == V{"x", "4", "2"});
  CHECK(SplitWith("qwen2", "x 123") == V{"x", " ", "1", "2", "3"});
}

TEST_CASE("Pieces cover the input exactly, including invalid UTF-8") {
  CHECK(SplitWith("llama3",
                  "a\xFF"
                  "b") == V{"a", "\xFF", "b"});
  CHECK(SplitWith("gpt2", "ok\xE2\x96") == V{"ok", "\xE2\x96"});
  std::mt19937 rng(99);
  const std::vector<std::string> atoms = {"a",
                                          "Z",
                                          " ",
                                          "  ",
                                          "\t",
                                          "\n",
                                          "\r\n",
                                          "7",
                                          "'s",
                                          "\xC3\xA4",
                                          "\xE4\xB8\xAD",
                                          "\xF0\x9F\x98\x81",
                                          ".",
                                          "!?",
                                          "\xE3\x80\x80",
                                          "\xCC\x81",
                                          "\x80"};
  for (std::string_view name : {"llama3", "gpt2", "smollm", "qwen2"}) {
    for (int trial = 0; trial < 300; ++trial) {
      std::string text;
      const int n = static_cast<int>(rng() % 40);
      for (int i = 0; i < n; ++i) text += atoms[rng() % atoms.size()];
      std::string joined;
      for (const std::string& p : SplitWith(name, text)) {
        REQUIRE_FALSE(p.empty());
        joined += p;
      }
      REQUIRE(joined == text);
    }
  }
}

TEST_CASE("Long runs split in linear time") {
  const auto start = std::chrono::steady_clock::now();
  std::string text(200000, ' ');
  text += "x";
  text += std::string(200000, 'y');
  for (int i = 0; i < 20000; ++i) text += " word";
  const V pieces = SplitWith("llama3", text);
  REQUIRE(pieces.size() == 2 + 20000);
  CHECK(pieces[0].size() == 199999);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 2.0);
}

TEST_CASE("Table lookups by name, alias and regex list") {
  REQUIRE(FindPreTokenizer("llama-bpe") != nullptr);
  CHECK(FindPreTokenizer("llama-bpe")->name == "llama3");
  CHECK(FindPreTokenizer("llama3")->ignore_merges);
  CHECK_FALSE(FindPreTokenizer("gpt2")->ignore_merges);
  CHECK(FindPreTokenizer("default")->name == "gpt2");
  CHECK(FindPreTokenizer("no-such-thing") == nullptr);
  const std::vector<std::string> smollm = {R"(\p{N})", std::string(kGpt2Regex)};
  REQUIRE(MatchPreTokenizer(smollm) != nullptr);
  CHECK(MatchPreTokenizer(smollm)->name == "smollm");
  CHECK(MatchPreTokenizer(std::vector<std::string>{"x+"}) == nullptr);
}

TEST_CASE("A regex that does not compile is INVALID_ARGUMENT naming it") {
  auto splitter = RegexSplitter::Create(std::vector<std::string>{"(unclosed"});
  REQUIRE_FALSE(splitter.ok());
  CHECK(splitter.status().code() == StatusCode::kInvalidArgument);
  CHECK(splitter.status().message().find("(unclosed") != std::string::npos);
}

}  // namespace
}  // namespace sqz
