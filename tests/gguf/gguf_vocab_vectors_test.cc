// llama.cpp's tokenizer conformance vectors (46 Llama-2 and 46 Llama-3 cases, the ones llama.cpp
// checks on its ggml-vocab-llama-{spm,bpe}.gguf files) through vocabulary-only GGUF files written
// as llama.cpp's converter writes them (tests/gguf/make_vocab_ggufs.py): TokenizerModelFromGguf
// -> Tokenizer::Create must reproduce every id list.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf/gguf_tokenizer.h"
#include "tests/gguf/test_util.h"

namespace sqz::gguf {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Each case of .inp is followed by "\n__ggml_vocab_test__\n"; .out has one line of ids per case.
std::vector<std::pair<std::string, std::vector<int32_t>>> ReadVectors(const fs::path& stem) {
  const std::string inp = ReadFile(stem.string() + ".inp");
  const std::string out = ReadFile(stem.string() + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::pair<std::string, std::vector<int32_t>>> v;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(sep, pos);
    REQUIRE(end != std::string::npos);
    v.emplace_back(inp.substr(pos, end - pos), std::vector<int32_t>{});
    pos = end + sep.size();
  }
  std::istringstream lines(out);
  std::string line;
  size_t i = 0;
  for (; std::getline(lines, line); ++i) {
    REQUIRE(i < v.size());
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) v[i].second.push_back(id);
  }
  REQUIRE(i == v.size());
  return v;
}

TEST_CASE("GGUF vocabularies reproduce llama.cpp's tokenizer vectors", "[gguf]") {
  const fs::path shared = fs::path(SQZ_SHARED_DIR) / "tokenizers";
  if (!fs::exists(shared / "llama2/tokenizer.model") ||
      !fs::exists(shared / "llama3/tokenizer.json")) {
    WARN("skipped: " << shared.string() << " lacks the Llama-2 / Llama-3 tokenizers");
    return;
  }
  const std::string py = testing::VenvPython();
  if (py.empty()) {
    WARN("skipped: no .venv/bin/python");
    return;
  }
  const std::string out = std::string(SQZ_BINARY_DIR) + "/vocab_ggufs";
  REQUIRE(testing::Run(py + " " + SQZ_SOURCE_DIR + "/tests/gguf/make_vocab_ggufs.py " +
                       shared.string() + " " + out) == 0);
  struct Case {
    const char* file;
    const char* vectors;
    TokenizerKind kind;
    int32_t vocab, bos;
  };
  for (const Case& c : {Case{"llama-spm.gguf", "ggml-vocab-llama-spm.gguf",
                             TokenizerKind::kSentencePieceBpe, 32000, 1},
                        Case{"llama-bpe.gguf", "ggml-vocab-llama-bpe.gguf",
                             TokenizerKind::kByteLevelBpe, 128256, 128000}}) {
    SECTION(c.file) {
      auto f = File::Open(out + "/" + c.file);
      REQUIRE(f.ok());
      auto model = TokenizerModelFromGguf(**f);
      REQUIRE(model.ok());
      auto tok = Tokenizer::Create(*model);
      REQUIRE(tok.ok());
      CHECK((*tok)->kind() == c.kind);
      CHECK((*tok)->vocab_size() == c.vocab);
      CHECK((*tok)->bos_id() == c.bos);
      CHECK((*tok)->add_bos());
      const auto vectors = ReadVectors(shared / "vectors" / c.vectors);
      REQUIRE(vectors.size() == 46);
      int mismatches = 0;
      for (const auto& [text, ids] : vectors) {
        const std::vector<int32_t> got = (*tok)->Encode(text, false);
        if (got != ids) {
          ++mismatches;
          UNSCOPED_INFO("mismatch on '" << text << "'");
        }
        CHECK((*tok)->Decode(got) == text);
      }
      CHECK(mismatches == 0);
    }
  }
}

}  // namespace
}  // namespace sqz::gguf
