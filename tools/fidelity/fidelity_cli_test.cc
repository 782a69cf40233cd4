#include "tools/fidelity/fidelity_cli.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <sstream>

namespace sqz::tools {
namespace {

int Run(const std::vector<std::string>& args, std::string* out, std::string* err) {
  std::ostringstream o, e;
  const int rc = RunFidelity(args, o, e);
  *out = o.str();
  *err = e.str();
  return rc;
}

TEST_CASE("synthetic mode prints one row per budget and lookup") {
  std::string out, err;
  const int rc = Run({"synthetic", "--n", "3001", "--d", "32", "--queries", "5", "--budgets",
                      "0.1,1", "--components", "40", "--kv-heads", "2", "--q-heads", "4"},
                     &out, &err);
  INFO(err);
  REQUIRE(rc == 0);
  REQUIRE_THAT(out, Catch::Contains("N = 3001, d = 32"));
  REQUIRE_THAT(out, Catch::Contains("| 0.050 | flat | 0.100 |"));
  REQUIRE_THAT(out, Catch::Contains("| 0.050 | hierarchical | 0.100 |"));
  // Budget 1 reads every body key: recall 1, no error.
  REQUIRE_THAT(out, Catch::Contains("| 0.050 | flat | 1.000 |"));
  REQUIRE_THAT(out, Catch::Contains("| 1.0000 | 1.0000 | 1.0000 | 0.0000 |"));
  REQUIRE_THAT(out, Catch::Contains("threshold s=0.70"));
}

TEST_CASE("bad arguments exit with 2 and a message") {
  std::string out, err;
  REQUIRE(Run({}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("usage"));
  REQUIRE(Run({"synthetic", "--bogus", "1"}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("unknown flag --bogus"));
  REQUIRE(Run({"synthetic", "--n"}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("needs a value"));
  REQUIRE(Run({"synthetic", "--n", "abc"}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("not a number"));
  REQUIRE(Run({"synthetic", "--n", "0"}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("integer >= 1"));
  REQUIRE(Run({"synthetic", "--kv-heads", "2", "--q-heads", "3"}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("multiple"));
  REQUIRE(Run({"model", "--generate", "4"}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("needs --model"));
  REQUIRE(Run({"model", "--model", "/nonexistent", "--context-file", "/nonexistent"}, &out, &err) ==
          1);
  REQUIRE_THAT(err, Catch::Contains("cannot read --context-file"));
}

TEST_CASE("model mode on stories260K") {
  const std::string dir = std::string(SQZ_SHARED_DIR) + "/models/stories260K";
  if (!std::filesystem::exists(dir + "/model.safetensors")) {
    WARN("skipped: " << dir << " is absent");
    return;
  }
  std::string out, err;
  const int rc =
      Run({"model", "--model", dir, "--context-file",
           std::string(SQZ_SOURCE_DIR) + "/tests/squeeze/story_context.txt", "--generate", "8",
           "--budgets", "1", "--centroid-fractions", "0.05", "--query", "Lily said"},
          &out, &err);
  INFO(err);
  REQUIRE(rc == 0);
  // Budget 1 == dense: full agreement, full prefix, zero KL.
  REQUIRE_THAT(out, Catch::Contains("| 1.0000 | 8.0 / 8 | 0.00000 |"));
  REQUIRE(
      Run({"model", "--model", dir, "--context-file",
           std::string(SQZ_SOURCE_DIR) + "/tests/squeeze/story_context.txt", "--generate", "500"},
          &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("exceed the model's 512 positions"));
}

}  // namespace
}  // namespace sqz::tools
