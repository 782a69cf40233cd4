#include "engine/gguf/gguf_tokenizer.h"

#include <algorithm>

#include "engine/tokenizer/pre_tokenizer.h"

namespace sqz::gguf {
namespace {

// The optional token id under `key`: -1 when absent, else checked against the vocabulary.
StatusOr<int32_t> OptionalId(const File& f, const std::string& key, size_t vocab) {
  if (!f.Has(key)) return -1;
  SQZ_ASSIGN_OR_RETURN(int64_t id, f.GetInt(key));
  // Some converters write -1 (as an int32 or as uint32 0xFFFFFFFF) for "none".
  if (id == -1 || id == 0xFFFFFFFFll) return -1;
  if (id < 0 || static_cast<uint64_t>(id) >= vocab) {
    return InvalidArgumentError("GGUF " + f.path() + ": " + key + " " + std::to_string(id) +
                                " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  return static_cast<int32_t>(id);
}

StatusOr<bool> OptionalBool(const File& f, const std::string& key, bool fallback) {
  if (!f.Has(key)) return fallback;
  return f.GetBool(key);
}

}  // namespace

StatusOr<TokenizerModel> TokenizerModelFromGguf(const File& f) {
  const std::string p = "GGUF " + f.path() + ": ";
  SQZ_ASSIGN_OR_RETURN(std::string kind, f.GetString("tokenizer.ggml.model"));
  TokenizerModel m;
  if (kind == "gpt2") {
    m.kind = TokenizerKind::kByteLevelBpe;
  } else if (kind == "llama") {
    m.kind = TokenizerKind::kSentencePieceBpe;
  } else {
    return UnimplementedError(p + "tokenizer.ggml.model '" + kind +
                              "' is not supported (supported: gpt2, llama)");
  }
  const bool byte_level = m.kind == TokenizerKind::kByteLevelBpe;

  SQZ_ASSIGN_OR_RETURN(m.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = m.tokens.size();
  if (n == 0) return InvalidArgumentError(p + "tokenizer.ggml.tokens is empty");

  if (f.Has("tokenizer.ggml.scores")) {
    SQZ_ASSIGN_OR_RETURN(m.scores, f.GetFloatArray("tokenizer.ggml.scores"));
    if (m.scores.size() != n) {
      return InvalidArgumentError(p + "tokenizer.ggml.scores has " +
                                  std::to_string(m.scores.size()) + " entries for " +
                                  std::to_string(n) + " tokens");
    }
  }
  if (f.Has("tokenizer.ggml.token_type")) {
    SQZ_ASSIGN_OR_RETURN(std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return InvalidArgumentError(p + "tokenizer.ggml.token_type has " +
                                  std::to_string(types.size()) + " entries for " +
                                  std::to_string(n) + " tokens");
    }
    m.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t v = types[i];
      auto t = (v >= 0 && v <= 6) ? TokenTypeFromGguf(static_cast<int32_t>(v))
                                  : StatusOr<TokenType>(InvalidArgumentError(""));
      if (!t.ok()) {
        return InvalidArgumentError(p + "tokenizer.ggml.token_type of token " + std::to_string(i) +
                                    " is " + std::to_string(v) + ", not a GGUF token type (0..6)");
      }
      m.types.push_back(*t);
    }
  }
  if (f.Has("tokenizer.ggml.merges")) {
    SQZ_ASSIGN_OR_RETURN(m.merges, f.GetStringArray("tokenizer.ggml.merges"));
  } else if (byte_level) {
    return NotFoundError(p + "tokenizer.ggml.merges is missing (required for a gpt2 tokenizer)");
  }

  if (byte_level) {
    std::string pre = "default";
    if (f.Has("tokenizer.ggml.pre")) {
      SQZ_ASSIGN_OR_RETURN(pre, f.GetString("tokenizer.ggml.pre"));
    }
    const PreTokenizerSpec* spec = FindPreTokenizer(pre);
    if (spec == nullptr) {
      std::string known;
      for (const PreTokenizerSpec& s : PreTokenizerTable()) {
        known += (known.empty() ? "" : ", ") + std::string(s.name);
      }
      return UnimplementedError(p + "tokenizer.ggml.pre '" + pre +
                                "' is not a supported pre-tokenizer (supported: " + known + ")");
    }
    m.pre_tokenizer = pre;
  }

  SQZ_ASSIGN_OR_RETURN(m.bos_id, OptionalId(f, "tokenizer.ggml.bos_token_id", n));
  SQZ_ASSIGN_OR_RETURN(m.unk_id, OptionalId(f, "tokenizer.ggml.unknown_token_id", n));
  SQZ_ASSIGN_OR_RETURN(m.pad_id, OptionalId(f, "tokenizer.ggml.padding_token_id", n));
  // EOS first, then end-of-turn / end-of-message tokens: generation stops on any of them.
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"}) {
    SQZ_ASSIGN_OR_RETURN(int32_t id, OptionalId(f, key, n));
    if (id >= 0 && std::find(m.eos_ids.begin(), m.eos_ids.end(), id) == m.eos_ids.end()) {
      m.eos_ids.push_back(id);
    }
  }

  bool default_add_bos = !byte_level;
  if (byte_level) {
    const PreTokenizerSpec* llama3 = FindPreTokenizer("llama3");
    default_add_bos = llama3 != nullptr && FindPreTokenizer(m.pre_tokenizer) == llama3;
  }
  SQZ_ASSIGN_OR_RETURN(m.add_bos, OptionalBool(f, "tokenizer.ggml.add_bos_token", default_add_bos));
  SQZ_ASSIGN_OR_RETURN(m.add_space_prefix,
                       OptionalBool(f, "tokenizer.ggml.add_space_prefix", !byte_level));
  return m;
}

StatusOr<std::string> ChatTemplateFromGguf(const File& f) {
  if (!f.Has("tokenizer.chat_template")) return std::string();
  return f.GetString("tokenizer.chat_template");
}

}  // namespace sqz::gguf
