// Tokenizer: validation of a TokenizerModel, encoding and decoding. Loading from tokenizer.json
// lives in hf_loader.cc, IncrementalDecoder in incremental_decoder.cc.
#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <unordered_map>

#include "engine/tokenizer/bpe.h"
#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace sqz {
namespace {

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // "▁" U+2581

std::string ByteFallbackPiece(int b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
  return buf;
}

// 0..255 if piece is "<0xXX>" (upper-case hex, as SentencePiece writes it), else -1.
int ParseByteFallbackPiece(std::string_view piece) {
  if (piece.size() != 6 || !piece.starts_with("<0x") || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

bool IsMatchedVerbatim(TokenType t) {
  return t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown;
}

}  // namespace

StatusOr<TokenType> TokenTypeFromGguf(int32_t value) {
  if (value == 0) return TokenType::kNormal;
  if (value < 1 || value > 6) {
    return InvalidArgumentError("token type " + std::to_string(value) +
                                " is not a GGUF token type (0..6)");
  }
  return static_cast<TokenType>(value);
}

std::string_view TokenTypeName(TokenType type) {
  switch (type) {
    case TokenType::kNormal:
      return "normal";
    case TokenType::kUnknown:
      return "unknown";
    case TokenType::kControl:
      return "control";
    case TokenType::kUserDefined:
      return "user-defined";
    case TokenType::kUnused:
      return "unused";
    case TokenType::kByte:
      return "byte";
  }
  return "invalid";
}

struct Tokenizer::Tables {
  std::unordered_map<std::string_view, int32_t> piece_to_id;  // views into model_.tokens
  std::vector<std::string> token_bytes;  // id -> bytes it decodes to (before space stripping)
  std::vector<uint8_t> is_eos;           // id -> 1 if it stops generation
  std::vector<uint8_t> is_special;       // id -> 1 if matched verbatim in text
  // Special ids by the first byte of their piece, longest piece first.
  std::array<std::vector<int32_t>, 256> specials_by_first_byte;
  BpeMerger merger;
  std::unique_ptr<RegexSplitter> splitter;  // kByteLevelBpe only
  // kSentencePieceBpe: ids of "<0xXX>" (byte fallback); kByteLevelBpe: ids of the byte-level
  // characters. -1 where missing.
  std::array<int32_t, 256> byte_ids;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

Tokenizer::Tokenizer(TokenizerModel model, std::unique_ptr<Tables> tables)
    : model_(std::move(model)), tables_(std::move(tables)) {}

Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(TokenizerModel model) {
  const size_t n = model.tokens.size();
  if (n == 0) return InvalidArgumentError("tokenizer: empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX))
    return InvalidArgumentError("tokenizer: vocabulary too large");
  if (!model.scores.empty() && model.scores.size() != n) {
    return InvalidArgumentError("tokenizer: " + std::to_string(model.scores.size()) +
                                " scores for " + std::to_string(n) + " tokens");
  }
  if (!model.types.empty() && model.types.size() != n) {
    return InvalidArgumentError("tokenizer: " + std::to_string(model.types.size()) +
                                " token types for " + std::to_string(n) + " tokens");
  }
  auto check_id = [n](int32_t id, const char* what, bool optional) -> Status {
    if ((optional && id == -1) || (id >= 0 && static_cast<size_t>(id) < n)) return OkStatus();
    return InvalidArgumentError(std::string("tokenizer: ") + what + " " + std::to_string(id) +
                                " is out of range [0, " + std::to_string(n) + ")");
  };
  SQZ_RETURN_IF_ERROR(check_id(model.bos_id, "bos_id", true));
  SQZ_RETURN_IF_ERROR(check_id(model.unk_id, "unk_id", true));
  SQZ_RETURN_IF_ERROR(check_id(model.pad_id, "pad_id", true));
  for (int32_t id : model.eos_ids) SQZ_RETURN_IF_ERROR(check_id(id, "eos id", false));
  for (int32_t id : model.special_ids) {
    SQZ_RETURN_IF_ERROR(check_id(id, "special id", false));
    if (model.tokens[id].empty()) {
      return InvalidArgumentError("tokenizer: special id " + std::to_string(id) +
                                  " has an empty piece");
    }
  }
  const bool spm = model.kind == TokenizerKind::kSentencePieceBpe;

  // Token types: given, or derived.
  if (model.types.empty()) {
    model.types.assign(n, TokenType::kNormal);
    for (size_t i = 0; i < n; ++i) {
      if (spm && ParseByteFallbackPiece(model.tokens[i]) >= 0) model.types[i] = TokenType::kByte;
    }
    for (int32_t id : model.special_ids) model.types[id] = TokenType::kControl;
    if (model.unk_id >= 0) model.types[model.unk_id] = TokenType::kUnknown;
  }
  if (model.special_ids.empty()) {
    for (size_t i = 0; i < n; ++i) {
      if (IsMatchedVerbatim(model.types[i]) && !model.tokens[i].empty()) {
        model.special_ids.push_back(static_cast<int32_t>(i));
      }
    }
  }

  auto tables = std::make_unique<Tables>();
  Tables& t = *tables;
  t.piece_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    t.piece_to_id.try_emplace(model.tokens[i], static_cast<int32_t>(i));  // lower id wins
  }
  auto find = [&t](std::string_view piece) {
    auto it = t.piece_to_id.find(piece);
    return it == t.piece_to_id.end() ? -1 : it->second;
  };

  // Specials, longest first within each first byte (so the leftmost match is the longest).
  t.is_special.assign(n, 0);
  for (int32_t id : model.special_ids) {
    if (t.is_special[id]) continue;
    t.is_special[id] = 1;
    t.specials_by_first_byte[static_cast<uint8_t>(model.tokens[id][0])].push_back(id);
  }
  for (auto& bucket : t.specials_by_first_byte) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](int32_t a, int32_t b) {
      return model.tokens[a].size() > model.tokens[b].size();
    });
  }
  t.is_eos.assign(n, 0);
  for (int32_t id : model.eos_ids) t.is_eos[id] = 1;

  // Bytes: fallback pieces or byte-level characters.
  t.byte_ids.fill(-1);
  int bytes_found = 0;
  for (int b = 0; b < 256; ++b) {
    std::string piece;
    if (spm) {
      piece = ByteFallbackPiece(b);
    } else {
      AppendByteLevel(std::string(1, static_cast<char>(b)), &piece);
    }
    t.byte_ids[b] = find(piece);
    bytes_found += t.byte_ids[b] >= 0;
  }
  t.byte_fallback = spm && bytes_found == 256;
  if (spm && !t.byte_fallback && model.unk_id < 0) {
    return InvalidArgumentError(
        "tokenizer: SentencePiece-style BPE needs the 256 byte-fallback pieces <0x00>..<0xFF> or "
        "an unk_id");
  }

  // Merge ranks: explicit merges, or derived from scores (SentencePiece: best score first).
  if (!model.merges.empty()) {
    for (size_t r = 0; r < model.merges.size(); ++r) {
      const std::string& m = model.merges[r];
      const size_t space = m.find(' ', 1);
      auto bad = [&](const std::string& why) {
        return InvalidArgumentError("tokenizer: merge #" + std::to_string(r) + " '" + m + "' " +
                                    why);
      };
      if (space == std::string::npos || space + 1 >= m.size()) return bad("is not 'left right'");
      const std::string_view left = std::string_view(m).substr(0, space);
      const std::string_view right = std::string_view(m).substr(space + 1);
      const int32_t l = find(left), rt = find(right),
                    merged = find(std::string(left) + std::string(right));
      if (l < 0) return bad("has a left piece that is not in the vocabulary");
      if (rt < 0) return bad("has a right piece that is not in the vocabulary");
      if (merged < 0) return bad("makes a piece that is not in the vocabulary");
      t.merger.AddMerge(l, rt, merged, static_cast<int32_t>(r));
    }
  } else if (spm && !model.scores.empty()) {
    // Dense rank of scores, best first: equal scores tie and then the leftmost pair merges first,
    // as in SentencePiece.
    std::vector<float> distinct = model.scores;
    std::sort(distinct.begin(), distinct.end(), std::greater<float>());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (size_t i = 0; i < n; ++i) {
      if (model.types[i] != TokenType::kNormal) continue;
      const std::string& piece = model.tokens[i];
      const int32_t rank =
          static_cast<int32_t>(std::lower_bound(distinct.begin(), distinct.end(), model.scores[i],
                                                std::greater<float>()) -
                               distinct.begin());
      size_t pos = 0, len = 0;
      while (pos < piece.size() && NextUtf8Char(piece, pos, &len) == Utf8Status::kValid) {
        pos += len;
        if (pos >= piece.size()) break;
        const int32_t l = find(std::string_view(piece).substr(0, pos));
        const int32_t rt = find(std::string_view(piece).substr(pos));
        if (l >= 0 && rt >= 0 && model.types[l] == TokenType::kNormal &&
            model.types[rt] == TokenType::kNormal) {
          t.merger.AddMerge(l, rt, static_cast<int32_t>(i), rank);
        }
      }
    }
  } else {
    return InvalidArgumentError(spm ? "tokenizer: SentencePiece-style BPE needs merges or scores"
                                    : "tokenizer: byte-level BPE needs merges");
  }

  // Pre-tokenizer (byte-level only).
  if (!spm) {
    std::vector<std::string> regexes = model.pre_tokenizer_regexes;
    bool ignore_merges_default = false;
    if (regexes.empty()) {
      const std::string name = model.pre_tokenizer.empty() ? "gpt2" : model.pre_tokenizer;
      const PreTokenizerSpec* spec = FindPreTokenizer(name);
      if (spec == nullptr) {
        std::string known;
        for (const PreTokenizerSpec& s : PreTokenizerTable()) {
          known += (known.empty() ? "" : ", ") + std::string(s.name);
          for (std::string_view a : s.aliases) known += ", " + std::string(a);
        }
        return InvalidArgumentError("tokenizer: unknown pre-tokenizer '" + name +
                                    "' (known: " + known + ")");
      }
      regexes.assign(spec->regexes.begin(), spec->regexes.end());
      ignore_merges_default = spec->ignore_merges;
    } else if (const PreTokenizerSpec* spec = MatchPreTokenizer(regexes)) {
      ignore_merges_default = spec->ignore_merges;
    }
    SQZ_ASSIGN_OR_RETURN(t.splitter, RegexSplitter::Create(regexes));
    t.ignore_merges = model.ignore_merges.value_or(ignore_merges_default);
  }

  // What each token decodes to.
  t.token_bytes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& piece = model.tokens[i];
    std::string& bytes = t.token_bytes[i];
    const TokenType type = model.types[i];
    if (type == TokenType::kByte && ParseByteFallbackPiece(piece) >= 0) {
      bytes.push_back(static_cast<char>(ParseByteFallbackPiece(piece)));
    } else if (type != TokenType::kNormal) {
      bytes = piece;  // control, user-defined, unknown, unused: their text as it is
    } else if (spm) {
      for (size_t pos = 0; pos < piece.size();) {
        if (std::string_view(piece).substr(pos).starts_with(kMetaspace)) {
          bytes.push_back(' ');
          pos += kMetaspace.size();
        } else {
          bytes.push_back(piece[pos++]);
        }
      }
    } else if (!AppendFromByteLevel(piece, &bytes)) {
      bytes = piece;  // not in the byte-level alphabet: shown as stored
    }
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(model), std::move(tables)));
}

int32_t Tokenizer::PieceToId(std::string_view piece) const {
  auto it = tables_->piece_to_id.find(piece);
  return it == tables_->piece_to_id.end() ? -1 : it->second;
}

namespace {

// A stretch of input: either text to run BPE on or one special token.
struct Fragment {
  int32_t special_id;  // -1 for text
  size_t offset;       // byte offset in the input
  std::string_view text;
};

}  // namespace

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  const Tables& t = *tables_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && model_.bos_id >= 0) out.push_back(model_.bos_id);

  // 1. Split out special tokens: leftmost match, longest first.
  std::vector<Fragment> fragments;
  size_t text_start = 0;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    const auto& bucket = t.specials_by_first_byte[static_cast<uint8_t>(text[pos])];
    for (int32_t id : bucket) {
      if (!parse_special && model_.types[id] != TokenType::kUserDefined) continue;
      const std::string& piece = model_.tokens[id];
      if (text.substr(pos).starts_with(piece)) {
        if (pos > text_start) {
          fragments.push_back({-1, text_start, text.substr(text_start, pos - text_start)});
        }
        fragments.push_back({id, pos, {}});
        text_start = pos + piece.size();
        pos = text_start - 1;
        break;
      }
    }
  }
  if (text_start < text.size()) fragments.push_back({-1, text_start, text.substr(text_start)});

  // 2. BPE over each text fragment.
  std::vector<BpeSymbol> symbols;
  std::vector<std::string_view> pieces;
  std::string buffer;
  auto emit_unknown = [&](std::string_view bytes, bool* prev_unk) {
    if (t.byte_fallback) {
      for (char c : bytes) out.push_back(t.byte_ids[static_cast<uint8_t>(c)]);
    } else if (model_.unk_id >= 0 && !*prev_unk) {
      out.push_back(model_.unk_id);  // consecutive unknowns fuse into one
      *prev_unk = true;
    }
  };
  for (const Fragment& f : fragments) {
    if (f.special_id >= 0) {
      out.push_back(f.special_id);
      continue;
    }
    if (model_.kind == TokenizerKind::kSentencePieceBpe) {
      // Metaspace escaping; the "▁" prefix where the encoder adds it (see StripsLeadingSpace).
      buffer.clear();
      if (model_.add_space_prefix && (f.offset == 0 || model_.space_prefix_after_special)) {
        buffer.append(kMetaspace);
      }
      for (char c : f.text) {
        if (c == ' ') {
          buffer.append(kMetaspace);
        } else {
          buffer.push_back(c);
        }
      }
      symbols.clear();
      for (size_t pos = 0; pos < buffer.size();) {
        size_t len = 0;
        if (NextUtf8Char(buffer, pos, &len) != Utf8Status::kValid) len = 1;  // a lone bad byte
        int32_t id = PieceToId(std::string_view(buffer).substr(pos, len));
        if (id >= 0 && model_.types[id] != TokenType::kNormal &&
            model_.types[id] != TokenType::kUserDefined) {
          id = -1;
        }
        symbols.push_back({id, static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + len)});
        pos += len;
      }
      t.merger.Merge(&symbols);
      bool prev_unk = false;
      for (const BpeSymbol& s : symbols) {
        if (s.id >= 0) {
          out.push_back(s.id);
          prev_unk = false;
        } else {
          emit_unknown(std::string_view(buffer).substr(s.begin, s.end - s.begin), &prev_unk);
        }
      }
    } else {
      pieces.clear();
      t.splitter->Split(f.text, &pieces);
      for (std::string_view piece : pieces) {
        if (t.ignore_merges) {
          buffer.clear();
          AppendByteLevel(piece, &buffer);
          const int32_t id = PieceToId(buffer);
          if (id >= 0 && model_.types[id] == TokenType::kNormal) {
            out.push_back(id);
            continue;
          }
        }
        symbols.clear();
        for (size_t i = 0; i < piece.size(); ++i) {
          symbols.push_back({t.byte_ids[static_cast<uint8_t>(piece[i])], static_cast<uint32_t>(i),
                             static_cast<uint32_t>(i + 1)});
        }
        t.merger.Merge(&symbols);
        bool prev_unk = false;
        for (const BpeSymbol& s : symbols) {
          if (s.id >= 0) {
            out.push_back(s.id);
            prev_unk = false;
          } else {
            emit_unknown(piece.substr(s.begin, s.end - s.begin), &prev_unk);
          }
        }
      }
    }
  }
  return out;
}

bool Tokenizer::StripsLeadingSpace(int32_t prev_id, size_t index) const {
  if (model_.kind != TokenizerKind::kSentencePieceBpe || !model_.add_space_prefix) return false;
  if (prev_id == -1) return true;                           // start of text
  if (prev_id < 0) return false;                            // continuing text shown before
  if (index == 1 && prev_id == model_.bos_id) return true;  // right after the BOS Encode added
  const TokenType prev_type = model_.types[prev_id];
  return model_.space_prefix_after_special && tables_->is_special[prev_id] &&
         (prev_type == TokenType::kControl || prev_type == TokenType::kUserDefined);
}

void Tokenizer::AppendTokenBytes(int32_t id, bool skip_special, bool strip_space,
                                 std::string* out) const {
  const TokenType type = model_.types[id];
  if (skip_special && (type == TokenType::kControl || type == TokenType::kUnknown)) return;
  std::string_view bytes = tables_->token_bytes[id];
  if (strip_space && type == TokenType::kNormal && bytes.starts_with(' ')) bytes.remove_prefix(1);
  out->append(bytes);
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  int32_t prev = -1;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    SQZ_CHECK(id >= 0 && id < vocab_size())
        << "token id " << id << " at position " << i << " out of range; call ValidateIds first";
    AppendTokenBytes(id, skip_special, StripsLeadingSpace(prev, i), &out);
    prev = id;
  }
  return out;
}

std::string_view Tokenizer::Piece(int32_t id) const {
  SQZ_CHECK(id >= 0 && id < vocab_size()) << "token id " << id << " out of range";
  return model_.tokens[id];
}

Status Tokenizer::ValidateIds(std::span<const int32_t> ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size()) {
      return InvalidArgumentError("token id " + std::to_string(ids[i]) + " at position " +
                                  std::to_string(i) + " is out of range [0, " +
                                  std::to_string(vocab_size()) + ")");
    }
  }
  return OkStatus();
}

bool Tokenizer::IsEos(int32_t id) const {
  return id >= 0 && id < vocab_size() && tables_->is_eos[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && IsMatchedVerbatim(model_.types[id]);
}

TokenType Tokenizer::type(int32_t id) const {
  SQZ_CHECK(id >= 0 && id < vocab_size()) << "token id " << id << " out of range";
  return model_.types[id];
}

}  // namespace sqz
