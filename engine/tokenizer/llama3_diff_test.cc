// Differential test: our byte-level BPE with the Llama-3 tokenizer.json against Hugging Face
// `tokenizers` 0.21.1 (the reference implementation of the format), on the 2000 seeded random
// strings of testdata/llama3_hf_fixture.jsonl (made by testdata/make_llama3_fixture.py): mixed
// scripts, Unicode whitespace (NBSP, U+3000, U+2028, NEL), CR/LF runs, digits, contractions,
// emoji with ZWJ, special tokens in the text.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/tokenizer/tokenizer.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;

TEST_CASE("Llama-3: zero mismatches against Hugging Face tokenizers on 2000 random strings") {
  const fs::path dir = fs::path(SQZ_SHARED_DIR) / "tokenizers/llama3";
  if (!fs::exists(dir / "tokenizer.json")) {
    WARN("skipped: " << (dir / "tokenizer.json").string() << " not found");
    return;
  }
  auto tok = Tokenizer::FromHfDirectory(dir.string());
  REQUIRE(tok.ok());
  std::ifstream in(fs::path(SQZ_SOURCE_DIR) / "engine/tokenizer/testdata/llama3_hf_fixture.jsonl");
  REQUIRE(in.good());
  std::string line;
  int cases = 0, mismatches = 0, roundtrip_failures = 0, specials = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = j.at("text").get<std::string>();
    const std::vector<int32_t> want = j.at("ids").get<std::vector<int32_t>>();
    const std::vector<int32_t> got = (*tok)->Encode(text, /*add_bos=*/false);
    ++cases;
    for (int32_t id : got) specials += (*tok)->IsSpecial(id);
    if (got != want && ++mismatches <= 5) UNSCOPED_INFO("mismatch: " << j.at("text").dump());
    if ((*tok)->Decode(got) != text && ++roundtrip_failures <= 5) {
      UNSCOPED_INFO("round trip failed: " << j.at("text").dump());
    }
  }
  CHECK(cases == 2000);
  CHECK(specials > 50);  // the fixture exercises special-token splitting
  CHECK(mismatches == 0);
  CHECK(roundtrip_failures == 0);
}

}  // namespace
}  // namespace sqz
