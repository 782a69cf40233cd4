// Tokenizer data from GGUF metadata (llama.cpp's tokenizer.ggml.* keys) -> TokenizerModel, ready
// for Tokenizer::Create (engine/tokenizer/tokenizer.h).
//
// Keys read:
//   tokenizer.ggml.model        "gpt2" -> byte-level BPE, "llama" -> SentencePiece-style BPE
//   tokenizer.ggml.tokens       id -> piece (required)
//   tokenizer.ggml.scores       id -> score (optional; SentencePiece merges rank by it)
//   tokenizer.ggml.token_type   id -> llama_token_type (optional)
//   tokenizer.ggml.merges       "left right" by rank (required for "gpt2")
//   tokenizer.ggml.pre          pre-tokenizer name (FindPreTokenizer in pre_tokenizer.h; absent:
//                               "default", as llama.cpp)
//   tokenizer.ggml.{bos,eos,unknown,padding}_token_id, and eot / eom ids (also stop generation)
//   tokenizer.ggml.add_bos_token (absent: true for "llama" and the llama3 pre-tokenizer family,
//                               else false, as llama.cpp), tokenizer.ggml.add_space_prefix
//
// Thread safety: pure functions of an immutable File.
#pragma once

#include <string>

#include "common/status.h"
#include "engine/gguf/gguf_file.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz::gguf {

// Errors name the key: UNIMPLEMENTED for a tokenizer model or pre-tokenizer we do not support
// ("bert", "t5", ...), NOT_FOUND when tokens (or gpt2 merges) are missing, INVALID_ARGUMENT for
// wrong types, array sizes that disagree with the vocabulary, ids out of range, bad token types.
StatusOr<TokenizerModel> TokenizerModelFromGguf(const File& file);

// tokenizer.chat_template (a Jinja string), or "" when the file has none.
StatusOr<std::string> ChatTemplateFromGguf(const File& file);

}  // namespace sqz::gguf
