#include "engine/tokenizer/byte_level.h"

#include <catch2/catch.hpp>
#include <random>
#include <set>

namespace sqz {
namespace {

TEST_CASE("Byte-level map matches GPT-2's well-known characters") {
  CHECK(ByteLevelCodePoint(' ') == 0x120);   // Ġ
  CHECK(ByteLevelCodePoint('\n') == 0x10A);  // Ċ
  CHECK(ByteLevelCodePoint('\t') == 0x109);  // ĉ
  CHECK(ByteLevelCodePoint('A') == 'A');
  CHECK(ByteLevelCodePoint(0xAD) == 0x143);  // the last one
  CHECK(ByteLevelCodePoint(0xFF) == 0xFF);
  std::string s;
  AppendByteLevel(" the\n", &s);
  CHECK(s == "\xC4\xA0the\xC4\x8A");  // "Ġtheĉ"
}

TEST_CASE("Byte-level map is a bijection on all 256 bytes") {
  std::set<uint32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = ByteLevelCodePoint(static_cast<uint8_t>(b));
    CHECK(seen.insert(cp).second);
    CHECK(ByteLevelByte(cp) == b);
  }
  CHECK(ByteLevelByte(0x20) == -1);  // space itself is not in the alphabet
  CHECK(ByteLevelByte(0x144) == -1);
  CHECK(ByteLevelByte(0x2581) == -1);
}

TEST_CASE("AppendFromByteLevel inverts AppendByteLevel on random bytes") {
  std::mt19937 rng(7);
  for (int len : {0, 1, 3, 127, 129}) {
    std::string bytes;
    for (int i = 0; i < len; ++i) bytes.push_back(static_cast<char>(rng() & 0xFF));
    std::string shown, back;
    AppendByteLevel(bytes, &shown);
    REQUIRE(AppendFromByteLevel(shown, &back));
    CHECK(back == bytes);
  }
}

TEST_CASE("AppendFromByteLevel refuses text outside the alphabet") {
  std::string out = "keep";
  CHECK_FALSE(AppendFromByteLevel("a b", &out));           // a raw space
  CHECK_FALSE(AppendFromByteLevel("\xE2\x96\x81", &out));  // ▁
  CHECK_FALSE(AppendFromByteLevel("\xC4", &out));          // truncated
  CHECK(out == "keep");
}

}  // namespace
}  // namespace sqz
