#include "common/status.h"

#include <catch2/catch.hpp>

namespace sqz {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd: " + std::to_string(x));
  return x / 2;
}

Status Chain(int x, int* out) {
  SQZ_ASSIGN_OR_RETURN(int h, Half(x));
  SQZ_ASSIGN_OR_RETURN(*out, Half(h));
  return OkStatus();
}

TEST_CASE("Status carries code and message") {
  Status s = NotFoundError("contexts/abc not found");
  CHECK_FALSE(s.ok());
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.ToString() == "NOT_FOUND: contexts/abc not found");
  CHECK(s.WithContext("GetContext").message() == "GetContext: contexts/abc not found");
  CHECK(OkStatus().ok());
  CHECK(OkStatus().ToString() == "OK");
}

TEST_CASE("StatusOr propagates values and errors") {
  int out = 0;
  CHECK(Chain(8, &out).ok());
  CHECK(out == 2);
  Status s = Chain(6, &out);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() == "odd: 3");
  StatusOr<std::string> v = std::string("x");
  CHECK(*v == "x");
}

TEST_CASE("code names follow gRPC") {
  CHECK(StatusCodeName(StatusCode::kResourceExhausted) == "RESOURCE_EXHAUSTED");
  CHECK(StatusCodeName(StatusCode::kUnauthenticated) == "UNAUTHENTICATED");
  CHECK(static_cast<int>(StatusCode::kUnauthenticated) == 16);
}

}  // namespace
}  // namespace sqz
