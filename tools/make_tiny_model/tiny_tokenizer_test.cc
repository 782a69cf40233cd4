#include "tools/make_tiny_model/tiny_tokenizer.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "engine/model/testing/temp_dir.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz::tools {
namespace {

TEST_CASE("The tiny tokenizer loads, has the requested size and round-trips any text") {
  for (int64_t vocab : {300, 512, 4099}) {
    testing::TempDir dir;
    auto text = TinyTokenizerJson(vocab);
    REQUIRE(text.ok());
    CHECK(nlohmann::json::parse(*text)["model"]["vocab"].size() == static_cast<size_t>(vocab));
    dir.Write("tokenizer.json", *text);
    dir.Write("tokenizer_config.json", TinyTokenizerConfigJson());
    auto tok = Tokenizer::FromHfDirectory(dir.path());
    INFO(tok.status().ToString());
    REQUIRE(tok.ok());
    CHECK((*tok)->vocab_size() == vocab);
    CHECK((*tok)->bos_id() == 1);
    CHECK((*tok)->eos_id() == 2);
    for (std::string s : {"Once upon a time, there was a little girl named Lily.",
                          "zebra \xF0\x9F\x98\x80 caf\xC3\xA9\n\ttabs", "", " leading"}) {
      auto ids = (*tok)->Encode(s, true);
      CHECK(ids[0] == 1);
      CHECK((*tok)->Decode(ids, true) == s);
    }
    // Merges make common words shorter than their characters.
    CHECK((*tok)->Encode("the little girl", false).size() < 15);
  }
  // Deterministic.
  CHECK(TinyTokenizerJson(700).value() == TinyTokenizerJson(700).value());
  CHECK(TinyTokenizerJson(299).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqz::tools
