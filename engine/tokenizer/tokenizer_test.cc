#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "engine/tokenizer/byte_level.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = SQZ_SHARED_DIR;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// llama.cpp's vector files: every case is followed by "\n__ggml_vocab_test__\n" (so a case may
// itself be "" or "\n"); .out has one line of ids per case.
struct Vector {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Vector> ReadVectors(const std::string& stem) {
  const std::string inp = ReadFile(kShared / "tokenizers/vectors" / (stem + ".inp"));
  const std::string out = ReadFile(kShared / "tokenizers/vectors" / (stem + ".out"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<Vector> vectors;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(sep, pos);
    REQUIRE(end != std::string::npos);
    vectors.push_back({inp.substr(pos, end - pos), {}});
    pos = end + sep.size();
  }
  std::istringstream lines(out);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line)) {
    REQUIRE(i < vectors.size());
    std::istringstream ids(line);
    int32_t id;
    while (ids >> id) vectors[i].ids.push_back(id);
    ++i;
  }
  REQUIRE(i == vectors.size());
  return vectors;
}

std::unique_ptr<Tokenizer> LoadOrSkip(const fs::path& dir) {
  if (!fs::exists(dir / "tokenizer.json")) {
    WARN("skipped: " << (dir / "tokenizer.json").string() << " not found");
    return nullptr;
  }
  auto tok = Tokenizer::FromHfDirectory(dir.string());
  REQUIRE(tok.ok());
  return std::move(tok).value();
}

void CheckVectors(const Tokenizer& tok, const std::string& stem) {
  const std::vector<Vector> vectors = ReadVectors(stem);
  REQUIRE(vectors.size() == 46);
  int mismatches = 0;
  for (const Vector& v : vectors) {
    const std::vector<int32_t> ids = tok.Encode(v.text, /*add_bos=*/false);
    if (ids != v.ids) {
      ++mismatches;
      UNSCOPED_INFO("mismatch on '" << v.text << "'");
    }
    CHECK(tok.Decode(ids) == v.text);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("Llama-2 tokenizer.json matches all 46 llama.cpp vectors") {
  auto tok = LoadOrSkip(kShared / "tokenizers/llama2");
  if (!tok) return;
  CHECK(tok->kind() == TokenizerKind::kSentencePieceBpe);
  CHECK(tok->vocab_size() == 32000);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->add_bos());
  CheckVectors(*tok, "ggml-vocab-llama-spm.gguf");
}

TEST_CASE("Llama-3 tokenizer.json matches all 46 llama.cpp vectors") {
  auto tok = LoadOrSkip(kShared / "tokenizers/llama3");
  if (!tok) return;
  CHECK(tok->kind() == TokenizerKind::kByteLevelBpe);
  CHECK(tok->model().pre_tokenizer == "llama3");
  CHECK(tok->vocab_size() == 128256);
  CHECK(tok->bos_id() == 128000);
  CheckVectors(*tok, "ggml-vocab-llama-bpe.gguf");
}

TEST_CASE("Llama-3 as the GGUF loader fills it: name, types, no explicit flags") {
  const fs::path dir = kShared / "tokenizers/llama3";
  if (!fs::exists(dir / "tokenizer.json")) {
    WARN("skipped: " << (dir / "tokenizer.json").string() << " not found");
    return;
  }
  auto model = Tokenizer::ParseHfFiles(dir.string());
  REQUIRE(model.ok());
  model->pre_tokenizer = "llama-bpe";  // tokenizer.ggml.pre
  model->pre_tokenizer_regexes.clear();
  model->ignore_merges.reset();  // GGUF has no such key: the table's default applies
  model->special_ids.clear();    // derived from the control types
  auto tok = Tokenizer::Create(*std::move(model));
  REQUIRE(tok.ok());
  CheckVectors(**tok, "ggml-vocab-llama-bpe.gguf");
  CHECK((*tok)->Encode("<|eot_id|>", false) == std::vector<int32_t>{128009});
}

TEST_CASE("Llama-3 special tokens are split out only with parse_special") {
  auto tok = LoadOrSkip(kShared / "tokenizers/llama3");
  if (!tok) return;
  const std::string text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  const std::vector<int32_t> ids = tok->Encode(text, /*add_bos=*/true);
  REQUIRE(ids.size() >= 5);
  CHECK(ids[0] == 128000);
  CHECK(ids[1] == tok->PieceToId("<|start_header_id|>"));
  CHECK(ids.back() == tok->PieceToId("<|eot_id|>"));
  CHECK(tok->Decode(ids) == "<|begin_of_text|>" + text);
  CHECK(tok->Decode(ids, /*skip_special=*/true) == "user\n\nHi");

  const std::vector<int32_t> plain = tok->Encode(text, /*add_bos=*/false, /*parse_special=*/false);
  for (int32_t id : plain) CHECK_FALSE(tok->IsSpecial(id));
  CHECK(tok->Decode(plain) == text);
}

TEST_CASE("Llama-2: special tokens, and the leading space rule on decode") {
  auto tok = LoadOrSkip(kShared / "tokenizers/llama2");
  if (!tok) return;
  // "▁Hello" is 15043; " Hello" is "▁" + "▁Hello".
  CHECK(tok->Encode("Hello", true) == std::vector<int32_t>{1, 15043});
  CHECK(tok->Decode(std::vector<int32_t>{1, 15043}) == "<s>Hello");
  CHECK(tok->Decode(std::vector<int32_t>{1, 15043}, true) == "Hello");
  CHECK(tok->Decode(std::vector<int32_t>{29871, 15043}) == " Hello");
  // After a special token the encoder prepends "▁" again (legacy), and decode removes it.
  const std::vector<int32_t> ids = tok->Encode("Hi</s>there", false);
  REQUIRE(std::count(ids.begin(), ids.end(), 2) == 1);
  CHECK(tok->Decode(ids) == "Hi</s>there");
  const std::vector<int32_t> plain = tok->Encode("Hi</s>there", false, /*parse_special=*/false);
  CHECK(std::count(plain.begin(), plain.end(), 2) == 0);
  CHECK(tok->Decode(plain) == "Hi</s>there");
}

TEST_CASE("stories260K encodes the golden prompts to their prompt ids") {
  const fs::path dir = kShared / "models/stories260K";
  auto tok = LoadOrSkip(dir);
  if (!tok) return;
  const auto golden = nlohmann::json::parse(ReadFile(dir / "golden_greedy_outputs.json"));
  int checked = 0;
  for (const auto& [name, item] : golden.items()) {
    if (!item.is_object() || !item.contains("prompt")) continue;
    const std::string prompt = item.at("prompt").get<std::string>();
    const std::vector<int32_t> ids = tok->Encode(prompt, tok->add_bos());
    if (item.contains("prompt_ids")) {
      CHECK(ids == item.at("prompt_ids").get<std::vector<int32_t>>());
      ++checked;
    }
    if (item.contains("ids") && item.contains("text")) {
      // The whole greedy output decodes to the listed text.
      const std::vector<int32_t> all = item.at("ids").get<std::vector<int32_t>>();
      CHECK(tok->Decode(all, /*skip_special=*/true) == item.at("text").get<std::string>());
      CHECK(std::vector<int32_t>(all.begin(), all.begin() + ids.size()) == ids);
      ++checked;
    }
  }
  CHECK(checked == 3);
  CHECK(tok->IsEos(2));
  CHECK_FALSE(tok->IsEos(1));
}

// A small SentencePiece-style vocabulary built by hand: byte fallback, merges ranked by score.
TokenizerModel TinySpm() {
  TokenizerModel m;
  m.kind = TokenizerKind::kSentencePieceBpe;
  m.tokens = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    m.tokens.push_back(buf);
  }
  for (const char* p : {"\xE2\x96\x81", "a", "b", "c",
                        "\xE2\x96\x81"
                        "a",
                        "ab",
                        "\xE2\x96\x81"
                        "ab",
                        "bc", "\xC3\xA4"}) {
    m.tokens.push_back(p);
  }
  m.scores.assign(m.tokens.size(), 0.0f);
  const size_t base = 259;
  // Scores: "ab" best, then "▁ab", then "▁a", then "bc".
  m.scores[base + 5] = -1;
  m.scores[base + 6] = -2;
  m.scores[base + 4] = -3;
  m.scores[base + 7] = -4;
  for (size_t i = base; i < base + 4; ++i) m.scores[i] = -10;
  m.scores[base + 8] = -10;
  m.bos_id = 1;
  m.eos_ids = {2};
  m.unk_id = 0;
  m.special_ids = {0, 1, 2};
  return m;
}

TEST_CASE("Score-ranked SentencePiece BPE with byte fallback (the GGUF Llama-2 path)") {
  auto tok = Tokenizer::Create(TinySpm());
  REQUIRE(tok.ok());
  const Tokenizer& t = **tok;
  const int32_t base = 259;
  // "ab c": ▁ a b ▁ c -> "ab" first, then "▁ab"; "▁c" is not a piece.
  CHECK(t.Encode("ab c", false) == std::vector<int32_t>{base + 6, base + 0, base + 3});
  // "bc" ranks below "ab": "abc" -> ▁ab c.
  CHECK(t.Encode("abc", false) == std::vector<int32_t>{base + 6, base + 3});
  // Characters not in the vocabulary fall back to their UTF-8 bytes.
  const std::vector<int32_t> snow = t.Encode("\xE2\x98\x83", false);  // ☃
  CHECK(snow == std::vector<int32_t>{base + 0, 3 + 0xE2, 3 + 0x98, 3 + 0x83});
  CHECK(t.Decode(snow) == "\xE2\x98\x83");
  CHECK(t.type(0) == TokenType::kUnknown);
  CHECK(t.type(3) == TokenType::kByte);
  CHECK(t.type(1) == TokenType::kControl);
}

TEST_CASE("Without byte fallback, unknown characters become one fused unk") {
  TokenizerModel m = TinySpm();
  // Drop the byte pieces by renaming them.
  for (int b = 0; b < 256; ++b) m.tokens[3 + b] = "[unused" + std::to_string(b) + "]";
  m.types.clear();
  auto tok = Tokenizer::Create(m);
  REQUIRE(tok.ok());
  const int32_t base = 259;
  CHECK((*tok)->Encode("a\xE2\x98\x83\xE2\x98\x83"
                       "b",
                       false) == std::vector<int32_t>{base + 4, 0, base + 2});
}

TEST_CASE("Encode and Decode round-trip arbitrary bytes, including invalid UTF-8") {
  auto tok = Tokenizer::Create(TinySpm());
  REQUIRE(tok.ok());
  std::mt19937 rng(5);
  for (int len : {0, 1, 3, 127, 129}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::string s;
      for (int i = 0; i < len; ++i) {
        const uint32_t r = rng() % 8;
        s += r < 3   ? std::string(1, "abc"[r])
             : r < 5 ? std::string(" ")
                     : std::string(1, static_cast<char>(rng() & 0xFF));
      }
      const std::vector<int32_t> ids = (*tok)->Encode(s, true, false);
      REQUIRE((*tok)->Decode(ids, /*skip_special=*/true) == s);
    }
  }
}

TEST_CASE("ValidateIds names the first bad id and its position") {
  auto tok = Tokenizer::Create(TinySpm());
  REQUIRE(tok.ok());
  CHECK((*tok)->ValidateIds(std::vector<int32_t>{1, 2, 3}).ok());
  const Status s = (*tok)->ValidateIds(std::vector<int32_t>{1, 268, -4, 9999});
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() == "token id 268 at position 1 is out of range [0, 268)");
}

TEST_CASE("Create rejects inconsistent models with a message naming the field") {
  auto expect_error = [](TokenizerModel m, const std::string& fragment) {
    auto tok = Tokenizer::Create(std::move(m));
    REQUIRE_FALSE(tok.ok());
    CHECK(tok.status().code() == StatusCode::kInvalidArgument);
    INFO(tok.status().message());
    CHECK(tok.status().message().find(fragment) != std::string::npos);
  };
  expect_error(TokenizerModel{}, "empty vocabulary");
  TokenizerModel m = TinySpm();
  m.scores.pop_back();
  expect_error(m, "scores for");
  m = TinySpm();
  m.eos_ids = {5000};
  expect_error(m, "eos id 5000");
  m = TinySpm();
  m.bos_id = -7;
  expect_error(m, "bos_id -7");
  m = TinySpm();
  m.merges = {"a q"};
  expect_error(m, "right piece");
  m = TinySpm();
  m.merges = {"ab"};
  expect_error(m, "is not 'left right'");
  m = TinySpm();
  m.merges = {"c c"};
  expect_error(m, "makes a piece");
  m = TinySpm();
  m.scores.clear();
  expect_error(m, "needs merges or scores");
  m = TinySpm();
  m.kind = TokenizerKind::kByteLevelBpe;
  m.merges = {"a b"};
  m.pre_tokenizer = "no-such";
  expect_error(m, "unknown pre-tokenizer 'no-such'");
  m.pre_tokenizer = "";
  m.pre_tokenizer_regexes = {"[a-"};
  expect_error(m, "does not compile");
}

TEST_CASE("TokenTypeFromGguf uses GGUF's numbering") {
  CHECK(*TokenTypeFromGguf(0) == TokenType::kNormal);
  CHECK(*TokenTypeFromGguf(1) == TokenType::kNormal);
  CHECK(*TokenTypeFromGguf(3) == TokenType::kControl);
  CHECK(*TokenTypeFromGguf(6) == TokenType::kByte);
  CHECK(TokenTypeFromGguf(7).status().code() == StatusCode::kInvalidArgument);
  CHECK(TokenTypeFromGguf(-1).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("Encoding a 32K-token document is fast") {
  auto tok = LoadOrSkip(kShared / "tokenizers/llama3");
  if (!tok) return;
  std::mt19937 rng(11);
  const std::vector<std::string> words = {
      "the", " quick", " brown",      " fox", "\n", " 1234", " \xD0\xBC\xD0\xB8\xD1\x80",
      ",",   "  ",     "\xE4\xB8\xAD"};
  std::string doc;
  while (doc.size() < 150000) doc += words[rng() % words.size()];
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok->Encode(doc, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(ids.size() > 30000);
  CHECK(s < 2.0);
  CHECK(tok->Decode(ids) == doc);
}

}  // namespace
}  // namespace sqz
