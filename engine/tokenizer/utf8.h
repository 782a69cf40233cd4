// UTF-8 helpers for the tokenizer: strict validation per Unicode Table 3-7 (no overlongs, no
// surrogates, nothing above U+10FFFF) and replacement of bad bytes with U+FFFD.
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sqz {

enum class Utf8Status {
  kValid,      // a whole valid character
  kTruncated,  // the text ends inside a character whose bytes so far are a valid prefix
  kInvalid,    // bytes that can never start a valid character
};

// Examines the character starting at s[pos] (pos < s.size()). Sets *len to the character's length
// (kValid), to the bytes present (kTruncated), or to the length of the maximal invalid subpart,
// at least 1 (kInvalid: one U+FFFD replaces those bytes, as WHATWG and ICU do).
Utf8Status NextUtf8Char(std::string_view s, size_t pos, size_t* len);

bool IsValidUtf8(std::string_view s);

// Copy of s with each invalid subpart and a truncated tail replaced by U+FFFD.
std::string SanitizeUtf8(std::string_view s);

// Appends the UTF-8 encoding of code point cp (cp <= 0x10FFFF, not a surrogate).
void AppendUtf8(uint32_t cp, std::string* out);

// Code point of the valid character of length len at s[pos] (as found by NextUtf8Char).
uint32_t DecodeUtf8Char(std::string_view s, size_t pos, size_t len);

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace sqz
