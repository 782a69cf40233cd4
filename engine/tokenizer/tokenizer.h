// Tokenizer: text <-> token ids for Llama-family models, with both BPE flavours they use.
//
//   * kSentencePieceBpe (Llama-2, Mistral, stories260K): text is escaped with the metaspace "▁"
//     (spaces -> "▁", one "▁" prepended to each text fragment), split into UTF-8 characters and
//     merged pairwise by rank; characters not in the vocabulary fall back to their UTF-8 bytes as
//     "<0xXX>" tokens (when the vocabulary has all 256 of them) or to unk_id.
//   * kByteLevelBpe (Llama-3, GPT-2, SmolLM2, Qwen2): text is split by the pre-tokenizer regexes
//     (PCRE2, UTF + UCP), each piece's bytes are mapped to GPT-2's printable byte alphabet and
//     merged by rank.
// In both, added/special tokens (special_ids) are split out of the text first, verbatim.
//
// The data (TokenizerModel, a plain struct) is separate from the algorithm (Tokenizer), so that a
// Hugging Face directory (ParseHfFiles) and a GGUF file (engine/gguf) can both fill it.
//
// Ownership: a Tokenizer owns its TokenizerModel and lookup tables; it is immutable after Create.
// Thread safety: all const methods of Tokenizer may be called concurrently from any thread.
// IncrementalDecoder borrows a Tokenizer (which must outlive it) and is not thread-safe: one per
// stream.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace sqz {

enum class TokenizerKind { kSentencePieceBpe, kByteLevelBpe };

// Token types, numbered exactly as GGUF's tokenizer.ggml.token_type (llama.cpp's llama_token_type),
// so a GGUF value v converts with TokenTypeFromGguf(v). GGUF's 0 ("undefined") reads as kNormal.
enum class TokenType : int32_t {
  kNormal = 1,       // ordinary piece, produced by BPE
  kUnknown = 2,      // the unk token
  kControl = 3,      // <s>, </s>, <|eot_id|>, ...: matched verbatim when parse_special
  kUserDefined = 4,  // added token matched verbatim even when !parse_special
  kUnused = 5,       // reserved; never produced by Encode unless listed in special_ids
  kByte = 6,         // "<0xXX>" byte-fallback piece (SentencePiece-style only)
};

// GGUF token_type value -> TokenType. 0 -> kNormal; values outside 0..6 are INVALID_ARGUMENT.
StatusOr<TokenType> TokenTypeFromGguf(int32_t value);
std::string_view TokenTypeName(TokenType type);

// Plain data, filled from tokenizer.json (Tokenizer::ParseHfFiles) or from GGUF metadata.
// Tokenizer::Create validates it; every field's meaning is stated here so another loader can fill
// it without reading the algorithm.
struct TokenizerModel {
  TokenizerKind kind = TokenizerKind::kSentencePieceBpe;
  // id -> piece as stored: metaspace form ("▁the", "<0x0A>") for kSentencePieceBpe, GPT-2 byte
  // alphabet form ("Ġthe") for kByteLevelBpe. Control / user-defined tokens hold their raw text
  // ("<|eot_id|>"). If a piece appears twice, lookups find the lower id. size() = vocabulary size.
  std::vector<std::string> tokens;
  // id -> score (SentencePiece log-probabilities). May be empty. Used to rank merges only when
  // `merges` is empty (GGUF Llama-2 files carry scores, not merges): a pair may merge when its
  // concatenation is a kNormal piece, and higher score merges first.
  std::vector<float> scores;
  // id -> type. May be empty: then derived (special_ids -> kControl, unk_id -> kUnknown,
  // "<0xXX>" in kSentencePieceBpe -> kByte, the rest kNormal).
  std::vector<TokenType> types;
  // "left right" (pieces separated by one space), rank = index: lower ranks merge first.
  std::vector<std::string> merges;
  // kByteLevelBpe: name in the pre-tokenizer table (FindPreTokenizer in pre_tokenizer.h:
  // "llama3"/"llama-bpe", "gpt2"/"default", "smollm", "qwen2", "starcoder", ...); "" means "gpt2".
  // Ignored when pre_tokenizer_regexes is non-empty.
  std::string pre_tokenizer = "";
  // kByteLevelBpe: explicit regex list (tokenizer.json's Split patterns), applied in sequence,
  // each splitting the pieces of the previous one, matches kept isolated. Overrides the name.
  std::vector<std::string> pre_tokenizer_regexes;
  // kByteLevelBpe: a pre-token that is itself in the vocabulary becomes that one token without
  // merging (HF "ignore_merges", tiktoken behaviour; Llama-3 needs it). Unset: the default of the
  // named pre-tokenizer (true for "llama3" and its aliases, false otherwise).
  std::optional<bool> ignore_merges;
  int32_t bos_id = -1, unk_id = -1, pad_id = -1;  // -1: none
  std::vector<int32_t> eos_ids;  // generation stops on any of them; eos_ids[0] is "the" EOS
  bool add_bos = false;          // whether callers should pass add_bos=true to Encode by default
  // kSentencePieceBpe only: prepend "▁" to text (legacy Llama-2 / SentencePiece add_dummy_prefix).
  bool add_space_prefix = true;
  // kSentencePieceBpe only: the "▁" is also prepended to each text fragment that follows a special
  // token (legacy Llama-2, HF prepend_scheme "always", llama.cpp). false: only at the very start
  // of the input (HF prepend_scheme "first").
  bool space_prefix_after_special = true;
  // Added tokens matched verbatim in the text before BPE (leftmost, then longest match wins).
  // Empty: derived from types (kControl, kUserDefined, kUnknown). With parse_special=false only
  // kUserDefined ones are matched.
  std::vector<int32_t> special_ids;
};

class Tokenizer {
 public:
  // Validates `model` (sizes of scores/types, ids in range, merges whose pieces exist, known
  // pre-tokenizer name, regexes that compile) and builds the lookup tables.
  // INVALID_ARGUMENT / NOT_FOUND with a message naming the offending field otherwise.
  static StatusOr<std::unique_ptr<Tokenizer>> Create(TokenizerModel model);
  // ParseHfFiles + Create.
  static StatusOr<std::unique_ptr<Tokenizer>> FromHfDirectory(const std::string& dir);
  // Reads dir/tokenizer.json (required), dir/tokenizer_config.json (add_bos_token, bos_token,
  // eos_token, unk_token, pad_token) and dir/generation_config.json (bos_token_id, eos_token_id
  // as an int or a list, pad_token_id), each optional. EOS ids: tokenizer_config's eos_token
  // first, then generation_config's. Errors: NOT_FOUND (no tokenizer.json), INVALID_ARGUMENT
  // (bad JSON or contents), UNIMPLEMENTED (model type other than BPE, unsupported normalizer or
  // pre-tokenizer).
  static StatusOr<TokenizerModel> ParseHfFiles(const std::string& dir);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // Text -> ids. add_bos prepends bos_id (when there is one); pass model().add_bos for the
  // model's default. parse_special: also match control tokens in the text (user-defined added
  // tokens are always matched). Any byte string is accepted; invalid UTF-8 bytes are encoded as
  // byte tokens (kByteLevelBpe, or byte fallback) so Decode(Encode(s)) == s.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special = true) const;

  // Ids -> bytes (exactly the bytes that were encoded; may be invalid UTF-8 if the ids split a
  // character: use SanitizeUtf8 or IncrementalDecoder for display). skip_special drops control
  // and unknown tokens. kSentencePieceBpe with add_space_prefix: the leading space of a token
  // that starts a text fragment (the first token, or one right after a control / user-defined
  // token when space_prefix_after_special) is dropped, since the encoder added it.
  // Precondition: ValidateIds(ids) is OK (checked).
  std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The stored piece of `id` ("▁the", "Ġthe", "<0x0A>", "<s>"). Precondition: id is valid.
  std::string_view Piece(int32_t id) const;
  // INVALID_ARGUMENT "token id 40000 at position 3 is out of range [0, 32000)" for the first bad
  // one.
  Status ValidateIds(std::span<const int32_t> ids) const;

  bool IsEos(int32_t id) const;
  bool IsSpecial(int32_t id) const;  // kControl, kUserDefined or kUnknown
  TokenType type(int32_t id) const;
  int32_t vocab_size() const { return static_cast<int32_t>(model_.tokens.size()); }
  int32_t bos_id() const { return model_.bos_id; }
  int32_t eos_id() const { return model_.eos_ids.empty() ? -1 : model_.eos_ids[0]; }
  int32_t unk_id() const { return model_.unk_id; }
  int32_t pad_id() const { return model_.pad_id; }
  bool add_bos() const { return model_.add_bos; }
  TokenizerKind kind() const { return model_.kind; }
  const TokenizerModel& model() const { return model_; }

  // Piece id by its stored string, or -1.
  int32_t PieceToId(std::string_view piece) const;

 private:
  friend class IncrementalDecoder;
  struct Tables;  // lookup tables built by Create (tokenizer.cc)

  Tokenizer(TokenizerModel model, std::unique_ptr<Tables> tables);

  // Bytes of one token for decoding; strip_space drops a leading "▁"-space (SentencePiece rule).
  void AppendTokenBytes(int32_t id, bool skip_special, bool strip_space, std::string* out) const;
  // Whether the encoder added the "▁" that starts the token at `index`, which follows `prev_id`
  // (-1: nothing, start of text; -2: text shown before, see IncrementalDecoder).
  bool StripsLeadingSpace(int32_t prev_id, size_t index) const;

  TokenizerModel model_;
  std::unique_ptr<Tables> tables_;
};

// Streaming detokenizer: Push each generated id, send what it returns. Only whole UTF-8 characters
// are ever returned; bytes that can never form a valid character come out as U+FFFD. For ids whose
// Decode is valid UTF-8, the concatenation of all Push results and Flush equals Decode(ids).
class IncrementalDecoder {
 public:
  // `tok` must outlive this decoder. continues_text: the ids continue text that was already shown
  // (e.g. a completion after its prompt), so the first token's leading "▁" is a real space and is
  // kept; false decodes as Decode would (the first token starts a text fragment).
  explicit IncrementalDecoder(const Tokenizer& tok, bool skip_special = true,
                              bool continues_text = false);

  IncrementalDecoder(const IncrementalDecoder&) = delete;
  IncrementalDecoder& operator=(const IncrementalDecoder&) = delete;

  // Text now complete (whole UTF-8 characters only; may be empty). Precondition: id is valid.
  std::string Push(int32_t id);
  // Whatever is left (an incomplete character as U+FFFD), and resets the pending bytes.
  std::string Flush();

 private:
  const Tokenizer& tok_;  // borrowed
  bool skip_special_;
  int32_t prev_id_;      // last pushed id; -1 at start of text, -2 when continuing text
  size_t count_ = 0;     // ids pushed so far
  std::string pending_;  // bytes of an incomplete UTF-8 character (at most 3)
};

}  // namespace sqz
