// A small valid SentencePiece-style BPE tokenizer for generated test models, written as a Hugging
// Face tokenizer.json in the layout of Llama-2 / stories260K: <unk>, <s>, </s>, the 256 byte
// tokens <0x00>..<0xFF> (byte fallback, so any text encodes), the characters of a built-in
// English corpus, then BPE merges learned on that corpus until the vocabulary is full; leftover
// ids (if the corpus runs out of pairs) are unused "<extra_N>" pieces. Deterministic.
// Thread safety: reentrant.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace sqz::tools {

// tokenizer.json text for a vocabulary of `vocab` ids. INVALID_ARGUMENT if vocab < 300 (the byte
// fallback alone takes 259 ids).
StatusOr<std::string> TinyTokenizerJson(int64_t vocab);

// tokenizer_config.json text (add_bos_token, <s>, </s>, <unk>).
std::string TinyTokenizerConfigJson();

}  // namespace sqz::tools
