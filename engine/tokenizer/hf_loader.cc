// Tokenizer::ParseHfFiles: Hugging Face tokenizer.json (+ tokenizer_config.json,
// generation_config.json) -> TokenizerModel. Only what Llama-family BPE tokenizers use is
// accepted; anything else is UNIMPLEMENTED with the name of the unsupported part, never ignored.
// nlohmann::json throws; every exception is caught here and returned as INVALID_ARGUMENT.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // "▁"

// Parsed file, or nullopt when it is absent and optional.
StatusOr<std::optional<json>> ReadJson(const fs::path& path, bool required) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    if (!required) return std::optional<json>();
    return NotFoundError(path.string() + " not found");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open " + path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return std::optional<json>(json::parse(buffer.str()));
  } catch (const json::exception& e) {
    return InvalidArgumentError(path.filename().string() + ": bad JSON: " + e.what());
  }
}

std::string TypeOf(const json& j) { return j.is_object() ? j.value("type", std::string()) : ""; }

// Escapes a literal for PCRE2.
std::string EscapeRegex(std::string_view s) {
  std::string out;
  for (char c : s) {
    const bool plain = static_cast<uint8_t>(c) >= 0x80 || std::isalnum(static_cast<uint8_t>(c));
    if (!plain) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Byte-level pre-tokenizer -> regex list (applied in sequence).
Status ByteLevelRegexes(const json& pt, std::vector<std::string>* regexes) {
  if (pt.is_null()) return OkStatus();
  const std::string type = TypeOf(pt);
  if (type == "Sequence") {
    for (const json& p : pt.at("pretokenizers")) SQZ_RETURN_IF_ERROR(ByteLevelRegexes(p, regexes));
    return OkStatus();
  }
  if (type == "ByteLevel") {
    if (pt.value("add_prefix_space", false)) {
      return UnimplementedError("tokenizer.json: ByteLevel add_prefix_space=true is not supported");
    }
    if (pt.value("use_regex", true)) regexes->emplace_back(kGpt2Regex);
    return OkStatus();
  }
  if (type == "Split") {
    const std::string behavior = pt.value("behavior", std::string());
    if (behavior != "Isolated" || pt.value("invert", false)) {
      return UnimplementedError("tokenizer.json: Split with behavior '" + behavior +
                                "' (or invert) is not supported, only Isolated");
    }
    const json& pattern = pt.at("pattern");
    if (pattern.contains("Regex")) {
      regexes->push_back(pattern.at("Regex").get<std::string>());
    } else {
      regexes->push_back(EscapeRegex(pattern.at("String").get<std::string>()));
    }
    return OkStatus();
  }
  if (type == "Digits") {
    regexes->push_back(pt.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    return OkStatus();
  }
  return UnimplementedError("tokenizer.json: pre-tokenizer '" + type +
                            "' is not supported for byte-level BPE");
}

// SentencePiece-style escaping: normalizer Prepend/Replace (legacy Llama-2) or pre-tokenizer
// Metaspace (newer files).
Status SentencePieceSettings(const json& tj, TokenizerModel* m) {
  bool prepend = false, replace = false;
  const json normalizer = tj.value("normalizer", json());
  std::vector<json> steps;
  if (TypeOf(normalizer) == "Sequence") {
    for (const json& n : normalizer.at("normalizers")) steps.push_back(n);
  } else if (!normalizer.is_null()) {
    steps.push_back(normalizer);
  }
  for (const json& n : steps) {
    const std::string type = TypeOf(n);
    if (type == "Prepend" && n.at("prepend").get<std::string>() == kMetaspace) {
      prepend = true;
    } else if (type == "Replace" && n.at("pattern").value("String", std::string()) == " " &&
               n.at("content").get<std::string>() == kMetaspace) {
      replace = true;
    } else {
      return UnimplementedError("tokenizer.json: normalizer '" + type + "' (" + n.dump() +
                                ") is not supported");
    }
  }
  const json pt = tj.value("pre_tokenizer", json());
  if (TypeOf(pt) == "Metaspace") {
    if (pt.value("replacement", std::string(kMetaspace)) != kMetaspace ||
        pt.value("split", false)) {
      return UnimplementedError(
          "tokenizer.json: Metaspace with split=true or another "
          "replacement is not supported");
    }
    replace = true;
    std::string scheme = pt.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = pt.value("add_prefix_space", true) ? "always" : "never";
    if (scheme == "first") {
      prepend = true;
      m->space_prefix_after_special = false;
    } else if (scheme == "always") {
      prepend = true;
    } else if (scheme != "never") {
      return UnimplementedError("tokenizer.json: Metaspace prepend_scheme '" + scheme + "'");
    }
  } else if (!pt.is_null()) {
    return UnimplementedError("tokenizer.json: pre-tokenizer '" + TypeOf(pt) +
                              "' is not supported for SentencePiece-style BPE");
  }
  if (!replace) {
    return UnimplementedError(
        "tokenizer.json: BPE without byte-level or metaspace (\"▁\") handling is not supported");
  }
  m->add_space_prefix = prepend;
  return OkStatus();
}

bool MentionsByteLevel(const json& j) {
  if (TypeOf(j) == "ByteLevel") return true;
  if (j.is_object()) {
    for (const char* key : {"pretokenizers", "decoders"}) {
      if (j.contains(key)) {
        for (const json& child : j.at(key)) {
          if (MentionsByteLevel(child)) return true;
        }
      }
    }
  }
  return false;
}

// "<s>" or {"content": "<s>", ...} or null -> the piece, or "" for null / absent.
std::string TokenContent(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null()) return "";
  const json& v = j.at(key);
  return v.is_string() ? v.get<std::string>() : v.at("content").get<std::string>();
}

StatusOr<TokenizerModel> ParseImpl(const std::string& dir) {
  const fs::path root(dir);
  SQZ_ASSIGN_OR_RETURN(std::optional<json> tokenizer_json,
                       ReadJson(root / "tokenizer.json", /*required=*/true));
  const json& tj = *tokenizer_json;
  if (!tj.is_object() || !tj.contains("model") || !tj.at("model").is_object()) {
    return InvalidArgumentError("tokenizer.json: no \"model\" object");
  }
  const json& mj = tj.at("model");
  const std::string type = mj.value("type", std::string("BPE"));
  if (type != "BPE") {
    return UnimplementedError("tokenizer.json: model type '" + type +
                              "' is not supported (only BPE)");
  }

  TokenizerModel m;
  // Vocabulary and added tokens -> tokens[id].
  std::unordered_map<std::string, int32_t> ids;
  std::vector<std::pair<std::string, int32_t>> entries;
  for (const auto& [piece, id] : mj.at("vocab").items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return InvalidArgumentError("tokenizer.json: vocab entry '" + piece + "' has a bad id " +
                                  id.dump());
    }
    entries.emplace_back(piece, id.get<int32_t>());
  }
  struct Added {
    int32_t id;
    std::string content;
    bool special;
  };
  std::vector<Added> added;
  for (const json& a : tj.value("added_tokens", json::array())) {
    const int64_t id = a.at("id").get<int64_t>();
    if (id < 0 || id > INT32_MAX) {
      return InvalidArgumentError("tokenizer.json: added token with bad id " + std::to_string(id));
    }
    added.push_back(
        {static_cast<int32_t>(id), a.at("content").get<std::string>(), a.value("special", false)});
    entries.emplace_back(added.back().content, added.back().id);
  }
  int32_t max_id = -1;
  for (const auto& e : entries) max_id = std::max(max_id, e.second);
  if (max_id < 0) return InvalidArgumentError("tokenizer.json: empty vocabulary");
  m.tokens.assign(static_cast<size_t>(max_id) + 1, "");
  std::vector<uint8_t> filled(m.tokens.size(), 0);
  for (const auto& [piece, id] : entries) {  // added tokens come last and win
    m.tokens[id] = piece;
    filled[id] = 1;
    ids[piece] = id;
  }
  for (size_t i = 0; i < filled.size(); ++i) {
    if (!filled[i])
      return InvalidArgumentError("tokenizer.json: no token has id " + std::to_string(i));
  }
  auto lookup = [&](const std::string& piece, const std::string& where) -> StatusOr<int32_t> {
    auto it = ids.find(piece);
    if (it == ids.end())
      return InvalidArgumentError(where + " '" + piece + "' is not in the vocabulary");
    return it->second;
  };

  for (const json& merge : mj.value("merges", json::array())) {
    if (merge.is_string()) {
      m.merges.push_back(merge.get<std::string>());
    } else if (merge.is_array() && merge.size() == 2) {
      m.merges.push_back(merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>());
    } else {
      return InvalidArgumentError("tokenizer.json: bad merge " + merge.dump());
    }
  }
  if (mj.contains("ignore_merges") && mj.at("ignore_merges").is_boolean()) {
    m.ignore_merges = mj.at("ignore_merges").get<bool>();
  }
  const std::string unk = TokenContent(mj, "unk_token");
  if (!unk.empty()) {
    SQZ_ASSIGN_OR_RETURN(m.unk_id, lookup(unk, "tokenizer.json: unk_token"));
  }

  // Kind and its text handling.
  const bool byte_level = MentionsByteLevel(tj.value("pre_tokenizer", json())) ||
                          MentionsByteLevel(tj.value("decoder", json()));
  if (byte_level) {
    m.kind = TokenizerKind::kByteLevelBpe;
    const json normalizer = tj.value("normalizer", json());
    if (!normalizer.is_null()) {
      return UnimplementedError("tokenizer.json: normalizer '" + TypeOf(normalizer) +
                                "' is not supported for byte-level BPE");
    }
    std::vector<std::string> regexes;
    SQZ_RETURN_IF_ERROR(ByteLevelRegexes(tj.value("pre_tokenizer", json()), &regexes));
    if (regexes.empty()) {
      return UnimplementedError("tokenizer.json: byte-level BPE without a pre-tokenizer regex");
    }
    if (const PreTokenizerSpec* spec = MatchPreTokenizer(regexes)) {
      m.pre_tokenizer = std::string(spec->name);
    } else {
      m.pre_tokenizer_regexes = std::move(regexes);
    }
  } else {
    m.kind = TokenizerKind::kSentencePieceBpe;
    SQZ_RETURN_IF_ERROR(SentencePieceSettings(tj, &m));
  }

  // Types and specials.
  m.types.assign(m.tokens.size(), TokenType::kNormal);
  if (m.kind == TokenizerKind::kSentencePieceBpe && mj.value("byte_fallback", false)) {
    for (size_t i = 0; i < m.tokens.size(); ++i) {
      const std::string& p = m.tokens[i];
      if (p.size() == 6 && p.starts_with("<0x") && p.back() == '>') m.types[i] = TokenType::kByte;
    }
  }
  for (const Added& a : added) {
    m.types[a.id] = a.special ? TokenType::kControl : TokenType::kUserDefined;
    m.special_ids.push_back(a.id);
  }
  if (m.unk_id >= 0) m.types[m.unk_id] = TokenType::kUnknown;

  // BOS from the post-processor template ("single": [<s>, $A]).
  const json post = tj.value("post_processor", json());
  std::vector<json> processors;
  if (TypeOf(post) == "Sequence") {
    for (const json& p : post.at("processors")) processors.push_back(p);
  } else if (!post.is_null()) {
    processors.push_back(post);
  }
  for (const json& p : processors) {
    if (TypeOf(p) != "TemplateProcessing") continue;
    const json& single = p.at("single");
    if (!single.empty() && single.at(0).contains("SpecialToken")) {
      const std::string bos = single.at(0).at("SpecialToken").at("id").get<std::string>();
      SQZ_ASSIGN_OR_RETURN(m.bos_id, lookup(bos, "tokenizer.json: post_processor token"));
      m.add_bos = true;
    }
  }

  // tokenizer_config.json: flags and the special tokens by name.
  SQZ_ASSIGN_OR_RETURN(std::optional<json> config,
                       ReadJson(root / "tokenizer_config.json", /*required=*/false));
  if (config.has_value()) {
    const json& c = *config;
    if (c.contains("add_bos_token") && c.at("add_bos_token").is_boolean()) {
      m.add_bos = c.at("add_bos_token").get<bool>();
    }
    const std::string where = "tokenizer_config.json: ";
    if (std::string s = TokenContent(c, "bos_token"); !s.empty()) {
      SQZ_ASSIGN_OR_RETURN(m.bos_id, lookup(s, where + "bos_token"));
    }
    if (std::string s = TokenContent(c, "eos_token"); !s.empty()) {
      SQZ_ASSIGN_OR_RETURN(int32_t eos, lookup(s, where + "eos_token"));
      m.eos_ids.push_back(eos);
    }
    if (std::string s = TokenContent(c, "unk_token"); !s.empty()) {
      SQZ_ASSIGN_OR_RETURN(m.unk_id, lookup(s, where + "unk_token"));
    }
    if (std::string s = TokenContent(c, "pad_token"); !s.empty()) {
      SQZ_ASSIGN_OR_RETURN(m.pad_id, lookup(s, where + "pad_token"));
    }
  }

  // generation_config.json: ids; eos_token_id may be a list.
  SQZ_ASSIGN_OR_RETURN(std::optional<json> gen,
                       ReadJson(root / "generation_config.json", /*required=*/false));
  if (gen.has_value()) {
    const json& g = *gen;
    auto id_of = [&](const json& v, const char* key) -> StatusOr<int32_t> {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
          v.get<int64_t>() >= static_cast<int64_t>(m.tokens.size())) {
        return InvalidArgumentError(std::string("generation_config.json: ") + key + " " + v.dump() +
                                    " is not a token id");
      }
      return v.get<int32_t>();
    };
    if (g.contains("bos_token_id") && !g.at("bos_token_id").is_null() && m.bos_id < 0) {
      SQZ_ASSIGN_OR_RETURN(m.bos_id, id_of(g.at("bos_token_id"), "bos_token_id"));
    }
    if (g.contains("pad_token_id") && !g.at("pad_token_id").is_null() && m.pad_id < 0) {
      SQZ_ASSIGN_OR_RETURN(m.pad_id, id_of(g.at("pad_token_id"), "pad_token_id"));
    }
    if (g.contains("eos_token_id") && !g.at("eos_token_id").is_null()) {
      const json& e = g.at("eos_token_id");
      const json list = e.is_array() ? e : json::array({e});
      for (const json& v : list) {
        SQZ_ASSIGN_OR_RETURN(int32_t id, id_of(v, "eos_token_id"));
        if (std::find(m.eos_ids.begin(), m.eos_ids.end(), id) == m.eos_ids.end()) {
          m.eos_ids.push_back(id);
        }
      }
    }
  }
  return m;
}

}  // namespace

StatusOr<TokenizerModel> Tokenizer::ParseHfFiles(const std::string& dir) {
  try {
    return ParseImpl(dir);
  } catch (const json::exception& e) {
    return InvalidArgumentError("tokenizer files in " + dir +
                                ": unexpected JSON content: " + e.what());
  } catch (const std::exception& e) {
    return InternalError("tokenizer files in " + dir + ": " + e.what());
  }
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfDirectory(const std::string& dir) {
  SQZ_ASSIGN_OR_RETURN(TokenizerModel model, ParseHfFiles(dir));
  auto tokenizer = Create(std::move(model));
  if (!tokenizer.ok()) return tokenizer.status().WithContext(dir + "/tokenizer.json");
  return tokenizer;
}

}  // namespace sqz
