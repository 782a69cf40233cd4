#include "engine/tokenizer/utf8.h"

#include <catch2/catch.hpp>
#include <random>

namespace sqz {
namespace {

Utf8Status Scan(std::string_view s, size_t* len) { return NextUtf8Char(s, 0, len); }

TEST_CASE("NextUtf8Char accepts each valid length") {
  size_t len = 0;
  CHECK(Scan("a", &len) == Utf8Status::kValid);
  CHECK(len == 1);
  CHECK(Scan("\xC3\xA4x", &len) == Utf8Status::kValid);  // ä
  CHECK(len == 2);
  CHECK(Scan("\xE2\x96\x81", &len) == Utf8Status::kValid);  // ▁
  CHECK(len == 3);
  CHECK(Scan("\xF0\x9F\x98\x81", &len) == Utf8Status::kValid);  // 😁
  CHECK(len == 4);
}

TEST_CASE("NextUtf8Char reports a valid but unfinished character as truncated") {
  size_t len = 0;
  CHECK(Scan("\xF0\x9F\x98", &len) == Utf8Status::kTruncated);
  CHECK(len == 3);
  CHECK(Scan("\xE2", &len) == Utf8Status::kTruncated);
  CHECK(len == 1);
}

TEST_CASE("NextUtf8Char rejects overlongs, surrogates, out-of-range and stray bytes") {
  size_t len = 0;
  CHECK(Scan("\xC0\x80", &len) == Utf8Status::kInvalid);  // overlong NUL
  CHECK(len == 1);
  CHECK(Scan("\xE0\x80\x80", &len) == Utf8Status::kInvalid);  // overlong
  CHECK(len == 1);
  CHECK(Scan("\xED\xA0\x80", &len) == Utf8Status::kInvalid);  // surrogate D800
  CHECK(len == 1);
  CHECK(Scan("\xF4\x90\x80\x80", &len) == Utf8Status::kInvalid);  // > U+10FFFF
  CHECK(Scan("\xF5", &len) == Utf8Status::kInvalid);
  CHECK(Scan("\x80", &len) == Utf8Status::kInvalid);
  CHECK(Scan("\xF0\x9F\x98"
             "a",
             &len) == Utf8Status::kInvalid);  // interrupted
  CHECK(len == 3);                            // the maximal subpart
}

TEST_CASE("SanitizeUtf8 replaces each maximal invalid subpart with one U+FFFD") {
  CHECK(SanitizeUtf8("ok") == "ok");
  CHECK(SanitizeUtf8("a\xF0\x9F\x98"
                     "b") ==
        "a\xEF\xBF\xBD"
        "b");
  CHECK(SanitizeUtf8("\x80\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(SanitizeUtf8("end\xE2\x96") == "end\xEF\xBF\xBD");
  CHECK(SanitizeUtf8("") == "");
}

TEST_CASE("AppendUtf8 and DecodeUtf8Char round-trip random scalar values") {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> dist(0, 0x10FFFF);
  for (int i = 0; i < 20000; ++i) {
    uint32_t cp = dist(rng);
    if (i % 4 == 0) cp &= 0x7FF;  // more short ones
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string s;
    AppendUtf8(cp, &s);
    REQUIRE(IsValidUtf8(s));
    size_t len = 0;
    REQUIRE(NextUtf8Char(s, 0, &len) == Utf8Status::kValid);
    REQUIRE(len == s.size());
    REQUIRE(DecodeUtf8Char(s, 0, len) == cp);
  }
}

}  // namespace
}  // namespace sqz
