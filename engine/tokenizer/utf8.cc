#include "engine/tokenizer/utf8.h"

#include "common/check.h"

namespace sqz {
namespace {

// Allowed range of the second byte after lead byte b (Unicode Table 3-7); the third and fourth
// bytes are always 80..BF.
bool SecondByteOk(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return b >= 0x80 && b <= 0xBF;
  }
}

// Expected length of a character with this lead byte, or 0 if it cannot lead one.
size_t LeadLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

}  // namespace

Utf8Status NextUtf8Char(std::string_view s, size_t pos, size_t* len) {
  SQZ_CHECK_LT(pos, s.size());
  const uint8_t lead = static_cast<uint8_t>(s[pos]);
  const size_t need = LeadLength(lead);
  if (need == 0) {
    *len = 1;
    return Utf8Status::kInvalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (pos + i >= s.size()) {
      *len = i;
      return Utf8Status::kTruncated;
    }
    const uint8_t b = static_cast<uint8_t>(s[pos + i]);
    const bool ok = (i == 1) ? SecondByteOk(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *len = i;
      return Utf8Status::kInvalid;
    }
  }
  *len = need;
  return Utf8Status::kValid;
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    // ASCII fast path.
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t len = 0;
    if (NextUtf8Char(s, pos, &len) != Utf8Status::kValid) return false;
    pos += len;
  }
  return true;
}

std::string SanitizeUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len = 0;
    if (NextUtf8Char(s, pos, &len) == Utf8Status::kValid) {
      out.append(s.substr(pos, len));
    } else {
      out.append(kReplacementChar);
    }
    pos += len;
  }
  return out;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  SQZ_CHECK(cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF)) << "not a scalar value: " << cp;
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t DecodeUtf8Char(std::string_view s, size_t pos, size_t len) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[pos + i])); };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

}  // namespace sqz
