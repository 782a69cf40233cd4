#include "server/logging.h"

#include <catch2/catch.hpp>

namespace sqz {
namespace {

TEST_CASE("JsonEscape escapes quotes, backslashes and control characters") {
  CHECK(JsonEscape("plain") == "plain");
  CHECK(JsonEscape("a\"b\\c\nd\t") == "a\\\"b\\\\c\\nd\\t");
  CHECK(JsonEscape(std::string("\x01", 1)) == "\\u0001");
  CHECK(JsonEscape("héllo") == "héllo");  // UTF-8 passes through
}

TEST_CASE("SetUpLogging rejects a file it cannot open") {
  LoggingOptions o;
  o.file = "/dev/null/squeezed.log";  // a path under a file: cannot be created, even as root
  Status s = SetUpLogging(o);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("server.logging.file") != std::string::npos);
  CHECK(SetUpLogging(LoggingOptions{}).ok());
}

}  // namespace
}  // namespace sqz
