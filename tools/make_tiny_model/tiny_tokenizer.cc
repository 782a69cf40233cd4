#include "tools/make_tiny_model/tiny_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

namespace sqz::tools {
namespace {

using json = nlohmann::json;

constexpr const char* kSpace = "\xE2\x96\x81";  // "▁"

constexpr const char* kCorpus =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her friends. One day, she saw a big red ball under a tree. She wanted to play "
    "with it, but it was too high. Her mom said, \"Let's go home and have some lunch.\" Lily "
    "was happy and said, \"Thank you, mom!\" The sun was shining and the birds were singing. "
    "A small dog came running and barked at the cat. The cat jumped on the table and knocked "
    "over a cup of milk. Tom laughed and helped his sister clean the floor. They were best "
    "friends and they played together every day. The quick brown fox jumps over the lazy dog. "
    "What is your name? How old are you? I am 3 years old and I like to read books about "
    "animals, trains and the stars in the night sky. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100.";

// Splits text into metaspace-escaped UTF-8 characters per word ("▁word" units).
std::vector<std::vector<std::string>> Words(const std::string& text) {
  std::vector<std::vector<std::string>> words;
  std::vector<std::string> cur = {kSpace};
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = text[i];
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    const std::string ch = text.substr(i, len);
    i += len;
    if (ch == " ") {
      words.push_back(cur);
      cur = {kSpace};
    } else {
      cur.push_back(ch);
    }
  }
  words.push_back(cur);
  return words;
}

}  // namespace

StatusOr<std::string> TinyTokenizerJson(int64_t vocab) {
  if (vocab < 300) {
    return InvalidArgumentError("the tiny tokenizer needs a vocabulary of at least 300, got " +
                                std::to_string(vocab));
  }
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    pieces.push_back(buf);
  }
  std::set<std::string> known(pieces.begin(), pieces.end());
  // Characters by corpus frequency (ties: byte order), at most half the remaining ids, so that
  // merges get the other half. Characters left out are spelled by byte fallback and never merge.
  auto words = Words(kCorpus);
  std::map<std::string, int> char_counts;
  for (const auto& w : words) {
    for (const std::string& ch : w) ++char_counts[ch];
  }
  std::vector<std::pair<int, std::string>> by_count;
  for (const auto& [ch, n] : char_counts) by_count.emplace_back(-n, ch);
  std::sort(by_count.begin(), by_count.end());
  const size_t char_budget = static_cast<size_t>(vocab - 259) / 2;
  for (size_t i = 0; i < by_count.size() && i < char_budget; ++i) {
    pieces.push_back(by_count[i].second);
    known.insert(by_count[i].second);
  }
  for (auto& w : words) {
    for (std::string& ch : w) {
      if (!known.count(ch)) ch.clear();  // "" never pairs
    }
  }
  // BPE training: merge the most frequent adjacent pair (ties: smallest pair) until full.
  json merges = json::array();
  while (static_cast<int64_t>(pieces.size()) < vocab) {
    std::map<std::pair<std::string, std::string>, int> counts;
    for (const auto& w : words) {
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        if (!w[i].empty() && !w[i + 1].empty()) ++counts[{w[i], w[i + 1]}];
      }
    }
    if (counts.empty()) break;
    auto best = counts.begin();
    for (auto it = counts.begin(); it != counts.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    const std::string merged = best->first.first + best->first.second;
    merges.push_back({best->first.first, best->first.second});
    if (known.insert(merged).second) pieces.push_back(merged);
    for (auto& w : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == best->first.first && w[i + 1] == best->first.second) {
          out.push_back(merged);
          ++i;
        } else {
          out.push_back(w[i]);
        }
      }
      w = std::move(out);
    }
  }
  for (int64_t n = 0; static_cast<int64_t>(pieces.size()) < vocab; ++n) {
    pieces.push_back("<extra_" + std::to_string(n) + ">");
  }
  json vocab_map = json::object();
  for (size_t i = 0; i < pieces.size(); ++i) vocab_map[pieces[i]] = i;
  json added = json::array();
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", i},
                     {"content", pieces[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", kSpace}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}}}}};
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = nullptr;
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders",
                   {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}},
                    {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", "<unk>"},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", true},
                {"byte_fallback", true},
                {"ignore_merges", false},
                {"vocab", vocab_map},
                {"merges", merges}};
  return j.dump(1) + "\n";
}

std::string TinyTokenizerConfigJson() {
  json j = {{"tokenizer_class", "LlamaTokenizer"},
            {"add_bos_token", true},
            {"add_eos_token", false},
            {"bos_token", "<s>"},
            {"eos_token", "</s>"},
            {"unk_token", "<unk>"},
            {"legacy", true},
            {"clean_up_tokenization_spaces", false}};
  return j.dump(2) + "\n";
}

}  // namespace sqz::tools
