#include "tools/tokenize/tokenize_cli.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

namespace sqz {
namespace {

namespace fs = std::filesystem;
const std::string kStories = (fs::path(SQZ_SHARED_DIR) / "models/stories260K").string();

struct Result {
  int code;
  std::string out, err;
};

Result Run(std::vector<const char*> args, const std::string& stdin_text = "") {
  args.insert(args.begin(), "sqz-tokenize");
  std::istringstream in(stdin_text);
  std::ostringstream out, err;
  const int code = RunTokenizeCli(static_cast<int>(args.size()), args.data(), in, out, err);
  return {code, out.str(), err.str()};
}

bool HaveStories() {
  if (fs::exists(fs::path(kStories) / "tokenizer.json")) return true;
  WARN("skipped: " << kStories << "/tokenizer.json not found");
  return false;
}

TEST_CASE("Encode prints ids and pieces as JSON, with BOS unless --no-bos") {
  if (!HaveStories()) return;
  Result r = Run({"--model", kStories.c_str(), "Once upon a time"});
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("ids") == nlohmann::json({1, 403, 407, 261, 378}));
  CHECK(j.at("tokens").at(0) == "<s>");
  CHECK(j.at("tokens").size() == 5);
  r = Run({"--model", kStories.c_str(), "--no-bos", "-"}, "Once upon a time");
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out).at("ids") == nlohmann::json({403, 407, 261, 378}));
  r = Run({"--model", kStories.c_str(), "--no-bos", "--no-special", "</s>"});
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out).at("tokens").size() > 1);  // not the single </s> token
}

TEST_CASE("Decode accepts ids separated by spaces, commas or as a JSON array") {
  if (!HaveStories()) return;
  Result r = Run({"--model", kStories.c_str(), "--decode", "1 403,407 261 378"});
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out).at("text") == "<s>Once upon a time");
  r = Run({"--model", kStories.c_str(), "--decode", "--skip-special", "-"}, "[1, 403, 407]\n");
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out).at("text") == "Once upon");
}

TEST_CASE("Errors: bad ids, unknown ids, missing model, usage") {
  if (!HaveStories()) return;
  Result r = Run({"--model", kStories.c_str(), "--decode", "1 x"});
  CHECK(r.code == 1);
  CHECK(r.err.find("not a token id at offset 2") != std::string::npos);
  r = Run({"--model", kStories.c_str(), "--decode", "1 512"});
  CHECK(r.code == 1);
  CHECK(r.err.find("token id 512 at position 1 is out of range [0, 512)") != std::string::npos);
  r = Run({"--model", "/nonexistent", "hi"});
  CHECK(r.code == 1);
  CHECK(r.err.find("NOT_FOUND") != std::string::npos);
  CHECK(Run({"hi"}).code == 2);
  CHECK(Run({"--model", kStories.c_str()}).code == 2);
  CHECK(Run({"--model", kStories.c_str(), "--bogus", "hi"}).code == 2);
  CHECK(Run({"--model", kStories.c_str(), "a", "b"}).code == 2);
}

}  // namespace
}  // namespace sqz
