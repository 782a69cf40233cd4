#include "deploy/probe/health_wire.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>

namespace sqz::probe {
namespace {

std::string Bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

TEST_CASE("the whole-server request is the empty message") {
  CHECK(EncodeHealthCheckRequest("").empty());
}

TEST_CASE("a service name is field 1, length-delimited, with a varint length") {
  for (size_t n : {1, 3, 127, 128, 129, 300, 20000}) {
    const std::string name(n, 'x');
    const std::string got = EncodeHealthCheckRequest(name);
    std::string want = Bytes({0x0a});
    AppendVarint(n, &want);
    want += name;
    CHECK(got == want);
  }
  CHECK(EncodeHealthCheckRequest("squeeze.v1.GenerationService") ==
        Bytes({0x0a, 28}) + "squeeze.v1.GenerationService");
}

TEST_CASE("every serving status decodes, and the empty reply is UNKNOWN") {
  CHECK(*DecodeHealthCheckResponse("") == 0);
  for (int s : {0, 1, 2, 3, 7, 300}) {
    std::string bytes = Bytes({0x08});
    AppendVarint(s, &bytes);
    const auto got = DecodeHealthCheckResponse(bytes);
    REQUIRE(got.ok());
    CHECK(*got == s);
  }
  CHECK(ServingStatusName(1) == "SERVING");
  CHECK(ServingStatusName(2) == "NOT_SERVING");
  CHECK(ServingStatusName(0) == "UNKNOWN");
  CHECK(ServingStatusName(3) == "SERVICE_UNKNOWN");
  CHECK(ServingStatusName(7) == "STATUS_7");
}

TEST_CASE("a negative enum (10-byte varint) decodes to its int32 value") {
  std::string bytes = Bytes({0x08});
  AppendVarint(static_cast<uint64_t>(int64_t{-1}), &bytes);
  REQUIRE(bytes.size() == 11);
  CHECK(*DecodeHealthCheckResponse(bytes) == -1);
}

TEST_CASE("unknown fields of every wire type are skipped; the last status wins") {
  std::string bytes;
  bytes += Bytes({0x12, 3}) + "abc";               // field 2, length-delimited
  bytes += Bytes({0x08, 2});                       // status NOT_SERVING
  bytes += Bytes({0x1d, 1, 2, 3, 4});              // field 3, fixed32
  bytes += Bytes({0x21, 1, 2, 3, 4, 5, 6, 7, 8});  // field 4, fixed64
  bytes += Bytes({0x28, 0x96, 0x01});              // field 5, varint 150
  bytes += Bytes({0x08, 1});                       // status SERVING (last one wins)
  const auto got = DecodeHealthCheckResponse(bytes);
  REQUIRE(got.ok());
  CHECK(*got == 1);
}

TEST_CASE("malformed replies are DATA_LOSS with a message that says what is wrong") {
  struct Case {
    std::string bytes;
    std::string message;
  };
  const Case cases[] = {
      {Bytes({0x80}), "truncated tag at byte 0"},
      {Bytes({0x08}), "truncated varint of field 1"},
      {Bytes({0x08, 0x81}), "truncated varint of field 1"},
      {Bytes({0x08, 1, 0x12, 5}) + "ab", "truncated length-delimited field 2"},
      {Bytes({0x12}), "truncated length-delimited field 2"},
      {Bytes({0x1d, 1, 2}), "truncated fixed-width field 3"},
      {Bytes({0x21, 1, 2, 3, 4, 5, 6, 7}), "truncated fixed-width field 4"},
      {Bytes({0x0a, 1, 1}), "field 1 (status) has wire type 2, want 0 (varint)"},
      {Bytes({0x13}), "unsupported wire type 3 of field 2"},
      {Bytes({0x16}), "unsupported wire type 6 of field 2"},
      {Bytes({0x00, 1}), "field number 0 at byte 0"},
      {std::string(11, static_cast<char>(0xff)), "truncated tag at byte 0"},
  };
  for (const auto& c : cases) {
    INFO("bytes of size " << c.bytes.size() << ", want: " << c.message);
    const auto got = DecodeHealthCheckResponse(c.bytes);
    REQUIRE_FALSE(got.ok());
    CHECK(got.status().code() == StatusCode::kDataLoss);
    CHECK_THAT(got.status().message(), Catch::Contains(c.message));
  }
}

TEST_CASE("seeded random messages with random unknown fields decode to their status") {
  std::mt19937 rng(20240611);
  for (int round = 0; round < 2000; ++round) {
    std::string bytes;
    int want = 0;
    const int fields = static_cast<int>(rng() % 6);
    for (int f = 0; f < fields; ++f) {
      const uint64_t number = 2 + rng() % 1000;
      switch (rng() % 4) {
        case 0:
          AppendVarint(number << 3 | 0, &bytes);
          AppendVarint(rng(), &bytes);
          break;
        case 1: {
          AppendVarint(number << 3 | 2, &bytes);
          const size_t n = rng() % 200;
          AppendVarint(n, &bytes);
          for (size_t i = 0; i < n; ++i) bytes.push_back(static_cast<char>(rng()));
          break;
        }
        case 2:
          AppendVarint(number << 3 | 5, &bytes);
          for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>(rng()));
          break;
        default:
          AppendVarint(number << 3 | 1, &bytes);
          for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(rng()));
      }
      if (rng() % 2) {
        want = static_cast<int>(rng() % 4);
        bytes.push_back(0x08);
        AppendVarint(want, &bytes);
      }
    }
    const auto got = DecodeHealthCheckResponse(bytes);
    REQUIRE(got.ok());
    CHECK(*got == want);
  }
}

TEST_CASE("seeded random garbage never crashes: it decodes or is DATA_LOSS") {
  std::mt19937 rng(7);
  for (int round = 0; round < 5000; ++round) {
    std::string bytes(rng() % 40, '\0');
    for (auto& b : bytes) b = static_cast<char>(rng());
    const auto got = DecodeHealthCheckResponse(bytes);
    if (!got.ok()) CHECK(got.status().code() == StatusCode::kDataLoss);
  }
}

}  // namespace
}  // namespace sqz::probe
