// Tokenizer::ParseHfFiles / FromHfDirectory on small tokenizer.json files written by the test.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fresh directory under the system temp dir, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("sqz_tok_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  void Write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

const std::string kMeta = "\xE2\x96\x81";  // ▁

json SpmJson() {
  json vocab = json::object();
  int id = 0;
  for (const char* p : {"<unk>", "<s>", "</s>"}) vocab[p] = id++;
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    vocab[buf] = id++;
  }
  for (const std::string& p :
       {kMeta, std::string("a"), std::string("b"), kMeta + "a", std::string("ab"), kMeta + "ab"}) {
    vocab[p] = id++;
  }
  json added = json::array();
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", i},
                     {"content", std::vector<std::string>{"<unk>", "<s>", "</s>"}[i]},
                     {"special", true}});
  }
  return {
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", kMeta}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMeta}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", {"a b", kMeta + " a", kMeta + " ab"}}}},
  };
}

json ByteLevelJson(const json& pre_tokenizer) {
  json vocab = json::object();
  int id = 0;
  for (int b = 0; b < 256; ++b) {
    std::string piece;
    AppendByteLevel(std::string(1, static_cast<char>(b)), &piece);
    vocab[piece] = id++;
  }
  const std::string g = "\xC4\xA0";  // Ġ
  for (const std::string& p : {g + "t", std::string("he"), g + "the"}) vocab[p] = id++;
  return {
      {"added_tokens", {{{"id", id}, {"content", "<|end|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tokenizer},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({json::array({g, "t"}), json::array({"h", "e"}),
                                json::array({g + "t", "he"})})}}},
  };
}

json Llama3PreTokenizer() {
  const PreTokenizerSpec* spec = FindPreTokenizer("llama3");
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"},
             {"pattern", {{"Regex", std::string(spec->regexes[0])}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
}

Status ParseStatus(const TempDir& dir) { return Tokenizer::ParseHfFiles(dir.str()).status(); }

TEST_CASE("Legacy SentencePiece-style tokenizer.json: settings, BOS, encode and decode") {
  TempDir dir;
  dir.Write("tokenizer.json", SpmJson().dump());
  auto tok = Tokenizer::FromHfDirectory(dir.str());
  REQUIRE(tok.ok());
  const Tokenizer& t = **tok;
  CHECK(t.kind() == TokenizerKind::kSentencePieceBpe);
  CHECK(t.model().add_space_prefix);
  CHECK(t.model().space_prefix_after_special);
  CHECK(t.bos_id() == 1);
  CHECK(t.add_bos());
  CHECK(t.unk_id() == 0);
  CHECK(t.type(3) == TokenType::kByte);
  CHECK(t.type(1) == TokenType::kControl);
  CHECK(t.type(0) == TokenType::kUnknown);
  const int32_t meta_ab = t.PieceToId(kMeta + "ab");
  CHECK(t.Encode("ab", true) == std::vector<int32_t>{1, meta_ab});
  CHECK(t.Decode(t.Encode(" ab ab</s>ab", true)) == "<s> ab ab</s>ab");
}

TEST_CASE("Metaspace prepend_scheme 'first' prepends only at the start of the input") {
  TempDir dir;
  json j = SpmJson();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", "first"}, {"split", false}};
  dir.Write("tokenizer.json", j.dump());
  auto tok = Tokenizer::FromHfDirectory(dir.str());
  REQUIRE(tok.ok());
  const Tokenizer& t = **tok;
  CHECK_FALSE(t.model().space_prefix_after_special);
  const int32_t ab = t.PieceToId("ab"), meta_ab = t.PieceToId(kMeta + "ab");
  CHECK(t.Encode("ab</s>ab", false) == std::vector<int32_t>{meta_ab, 2, ab});
  CHECK(t.Decode(t.Encode("ab</s>ab", true)) == "<s>ab</s>ab");
}

TEST_CASE("Byte-level tokenizer.json: the Llama-3 split is recognised by name") {
  TempDir dir;
  dir.Write("tokenizer.json", ByteLevelJson(Llama3PreTokenizer()).dump());
  auto model = Tokenizer::ParseHfFiles(dir.str());
  REQUIRE(model.ok());
  CHECK(model->kind == TokenizerKind::kByteLevelBpe);
  CHECK(model->pre_tokenizer == "llama3");
  CHECK(model->pre_tokenizer_regexes.empty());
  CHECK(model->merges[0] == "\xC4\xA0 t");  // pair form joined with a space
  auto tok = Tokenizer::Create(*model);
  REQUIRE(tok.ok());
  const Tokenizer& t = **tok;
  CHECK(t.Encode(" the<|end|>", false) == std::vector<int32_t>{258, 259});
  CHECK(t.Decode(t.Encode("x the\n<|end|>", false)) == "x the\n<|end|>");
}

TEST_CASE("Byte-level pre-tokenizers: Digits + ByteLevel is smollm, custom Split keeps regexes") {
  TempDir dir;
  dir.Write("tokenizer.json",
            ByteLevelJson({{"type", "Sequence"},
                           {"pretokenizers",
                            {{{"type", "Digits"}, {"individual_digits", true}},
                             {{"type", "ByteLevel"}, {"add_prefix_space", false}}}}})
                .dump());
  auto model = Tokenizer::ParseHfFiles(dir.str());
  REQUIRE(model.ok());
  CHECK(model->pre_tokenizer == "smollm");

  dir.Write(
      "tokenizer.json",
      ByteLevelJson({{"type", "Split"}, {"pattern", {{"String", "."}}}, {"behavior", "Isolated"}})
          .dump());
  model = Tokenizer::ParseHfFiles(dir.str());
  REQUIRE(model.ok());
  CHECK(model->pre_tokenizer_regexes == std::vector<std::string>{"\\."});
  auto tok = Tokenizer::Create(*model);
  REQUIRE(tok.ok());
  CHECK((*tok)->Encode("a.b", false) == std::vector<int32_t>{'a', '.', 'b'});
}

TEST_CASE("tokenizer_config.json and generation_config.json set flags and special ids") {
  TempDir dir;
  dir.Write("tokenizer.json", SpmJson().dump());
  dir.Write("tokenizer_config.json",
            R"({"add_bos_token": false, "bos_token": {"content": "<s>", "lstrip": false},
                "eos_token": "</s>", "pad_token": null, "unk_token": "<unk>"})");
  dir.Write("generation_config.json", R"({"eos_token_id": [7, 2, 9], "pad_token_id": 0})");
  auto tok = Tokenizer::FromHfDirectory(dir.str());
  REQUIRE(tok.ok());
  CHECK_FALSE((*tok)->add_bos());
  CHECK((*tok)->bos_id() == 1);
  CHECK((*tok)->model().eos_ids == std::vector<int32_t>{2, 7, 9});
  CHECK((*tok)->eos_id() == 2);
  CHECK((*tok)->IsEos(9));
  CHECK_FALSE((*tok)->IsEos(1));
  CHECK((*tok)->pad_id() == 0);

  dir.Write("generation_config.json", R"({"eos_token_id": 4})");
  auto model = Tokenizer::ParseHfFiles(dir.str());
  REQUIRE(model.ok());
  CHECK(model->eos_ids == std::vector<int32_t>{2, 4});
}

TEST_CASE("Errors: missing files") {
  auto missing = Tokenizer::FromHfDirectory("/nonexistent/sqz/model");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message() == "/nonexistent/sqz/model/tokenizer.json not found");
  TempDir dir;
  dir.Write("tokenizer_config.json", "{}");
  CHECK(ParseStatus(dir).code() == StatusCode::kNotFound);
}

TEST_CASE("Errors: bad JSON names the file") {
  TempDir dir;
  dir.Write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {)");
  Status s = ParseStatus(dir);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().rfind("tokenizer.json: bad JSON", 0) == 0);
  dir.Write("tokenizer.json", SpmJson().dump());
  dir.Write("generation_config.json", "{eos: 1}");
  s = ParseStatus(dir);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().rfind("generation_config.json: bad JSON", 0) == 0);
}

TEST_CASE("Errors: unsupported model types, normalizers and pre-tokenizers are UNIMPLEMENTED") {
  TempDir dir;
  json j = SpmJson();
  j["model"]["type"] = "Unigram";
  dir.Write("tokenizer.json", j.dump());
  Status s = ParseStatus(dir);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(s.message() == "tokenizer.json: model type 'Unigram' is not supported (only BPE)");

  j = SpmJson();
  j["normalizer"] = {{"type", "NFKC"}};
  dir.Write("tokenizer.json", j.dump());
  s = ParseStatus(dir);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(s.message().find("normalizer 'NFKC'") != std::string::npos);

  j = ByteLevelJson(Llama3PreTokenizer());
  j["normalizer"] = {{"type", "NFC"}};
  dir.Write("tokenizer.json", j.dump());
  CHECK(ParseStatus(dir).code() == StatusCode::kUnimplemented);

  j = ByteLevelJson({{"type", "Whitespace"}});
  dir.Write("tokenizer.json", j.dump());
  s = ParseStatus(dir);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(s.message().find("pre-tokenizer 'Whitespace'") != std::string::npos);

  j = SpmJson();
  j["normalizer"] = nullptr;  // no metaspace handling at all
  dir.Write("tokenizer.json", j.dump());
  CHECK(ParseStatus(dir).code() == StatusCode::kUnimplemented);
}

TEST_CASE("Errors: contents that are JSON but not a tokenizer are INVALID_ARGUMENT") {
  TempDir dir;
  dir.Write("tokenizer.json", "[1, 2]");
  CHECK(ParseStatus(dir).message() == "tokenizer.json: no \"model\" object");

  json j = SpmJson();
  j["model"]["vocab"]["zzz"] = "seven";
  dir.Write("tokenizer.json", j.dump());
  Status s = ParseStatus(dir);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("vocab entry 'zzz' has a bad id") != std::string::npos);

  j = SpmJson();
  j["model"]["vocab"]["zzz"] = 400;  // leaves ids 265..399 empty
  dir.Write("tokenizer.json", j.dump());
  CHECK(ParseStatus(dir).message() == "tokenizer.json: no token has id 265");

  j = SpmJson();
  j["model"]["merges"] = {42};
  dir.Write("tokenizer.json", j.dump());
  CHECK(ParseStatus(dir).message() == "tokenizer.json: bad merge 42");

  j = SpmJson();
  j["added_tokens"] = {{{"id", "one"}, {"content", "<x>"}}};  // nlohmann throws; we return
  dir.Write("tokenizer.json", j.dump());
  s = ParseStatus(dir);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("unexpected JSON content") != std::string::npos);

  dir.Write("tokenizer.json", SpmJson().dump());
  dir.Write("tokenizer_config.json", R"({"eos_token": "<|im_end|>"})");
  CHECK(ParseStatus(dir).message() ==
        "tokenizer_config.json: eos_token '<|im_end|>' is not in the vocabulary");
  dir.Write("tokenizer_config.json", "{}");
  dir.Write("generation_config.json", R"({"eos_token_id": [2, 100000]})");
  CHECK(ParseStatus(dir).message() ==
        "generation_config.json: eos_token_id 100000 is not a token id");
}

TEST_CASE("Errors from Create name the directory") {
  TempDir dir;
  json j = SpmJson();
  j["model"]["merges"].push_back("b b");  // "bb" is not a piece
  dir.Write("tokenizer.json", j.dump());
  auto tok = Tokenizer::FromHfDirectory(dir.str());
  REQUIRE_FALSE(tok.ok());
  CHECK(tok.status().code() == StatusCode::kInvalidArgument);
  CHECK(tok.status().message() == dir.str() +
                                      "/tokenizer.json: tokenizer: merge #3 'b b' makes a piece "
                                      "that is not in the vocabulary");
}

}  // namespace
}  // namespace sqz
