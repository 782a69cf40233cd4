// GPT-2's byte-to-unicode map used by byte-level BPE: every byte is shown as one printable
// character. Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68
// map, in byte order, to U+0100, U+0101, ... (so ' ' -> 'Ġ' U+0120, '\n' -> 'Ċ' U+010A).
// Thread safety: pure functions over constant tables.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sqz {

// The code point that byte b is shown as.
uint32_t ByteLevelCodePoint(uint8_t b);

// The byte shown as code point cp, or -1 if cp is not in the byte-level alphabet.
int ByteLevelByte(uint32_t cp);

// Appends the byte-level form (UTF-8) of every byte of `bytes`.
void AppendByteLevel(std::string_view bytes, std::string* out);

// Inverse of AppendByteLevel: appends the bytes a byte-level string stands for. Returns false (and
// appends nothing) if `text` holds a character outside the alphabet or invalid UTF-8.
bool AppendFromByteLevel(std::string_view text, std::string* out);

}  // namespace sqz
