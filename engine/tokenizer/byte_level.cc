#include "engine/tokenizer/byte_level.h"

#include <array>

#include "engine/tokenizer/utf8.h"

namespace sqz {
namespace {

struct Tables {
  std::array<uint32_t, 256> to_cp;
  std::array<int16_t, 324> to_byte;  // indexed by code point; the alphabet ends below U+0144

  Tables() {
    to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const Tables& GetTables() {
  static const Tables tables;  // constant data, built once
  return tables;
}

}  // namespace

uint32_t ByteLevelCodePoint(uint8_t b) { return GetTables().to_cp[b]; }

int ByteLevelByte(uint32_t cp) {
  const Tables& t = GetTables();
  return cp < t.to_byte.size() ? t.to_byte[cp] : -1;
}

void AppendByteLevel(std::string_view bytes, std::string* out) {
  for (char c : bytes) AppendUtf8(ByteLevelCodePoint(static_cast<uint8_t>(c)), out);
}

bool AppendFromByteLevel(std::string_view text, std::string* out) {
  std::string bytes;
  bytes.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len = 0;
    if (NextUtf8Char(text, pos, &len) != Utf8Status::kValid) return false;
    const int b = ByteLevelByte(DecodeUtf8Char(text, pos, len));
    if (b < 0) return false;
    bytes.push_back(static_cast<char>(b));
    pos += len;
  }
  out->append(bytes);
  return true;
}

}  // namespace sqz
