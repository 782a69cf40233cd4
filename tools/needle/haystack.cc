// Needles, filler text and haystacks (needle.h).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "tools/needle/needle.h"

namespace sqz::needle {
namespace {

// splitmix64: a portable generator (the same sequence on every platform and standard library).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (n >= 1; the modulo bias is negligible for our small n).
  size_t Below(size_t n) { return static_cast<size_t>(Next() % n); }
  template <size_t N>
  const char* Pick(const std::array<const char*, N>& words) {
    return words[Below(N)];
  }

 private:
  uint64_t state_;
};

constexpr std::array<const char*, 10> kColours = {"blue",   "red",   "green", "yellow", "silver",
                                                  "golden", "white", "black", "orange", "purple"};
constexpr std::array<const char*, 10> kLandmarks = {
    "lighthouse", "windmill", "clock tower", "stone bridge", "castle",
    "watermill",  "chapel",   "harbour",     "library",      "observatory"};

// Filler vocabulary: no digits, no needle colours, no landmark words.
constexpr std::array<const char*, 16> kAdjectives = {
    "quiet", "narrow", "old",  "busy",   "gentle",   "distant", "crowded", "peaceful",
    "windy", "shady",  "wide", "simple", "pleasant", "sleepy",  "steep",   "modest"};
constexpr std::array<const char*, 16> kNouns = {
    "market",    "garden",   "orchard", "meadow",  "footpath", "village square",
    "bakery",    "fountain", "ferry",   "school",  "forest",   "valley",
    "farmhouse", "inn",      "pond",    "workshop"};
constexpr std::array<const char*, 12> kPeople = {
    "farmers",  "travellers", "children", "fishermen", "teachers",  "merchants",
    "students", "neighbours", "walkers",  "painters",  "gardeners", "musicians"};
constexpr std::array<const char*, 12> kActivities = {
    "trade stories",   "sell fresh bread",  "walk their dogs", "mend old fences",
    "sing folk songs", "plant young trees", "repair boats",    "watch the birds",
    "sweep the paths", "share long meals",  "gather herbs",    "paint the walls"};
constexpr std::array<const char*, 4> kSeasons = {"spring", "summer", "autumn", "winter"};
constexpr std::array<const char*, 8> kWeather = {"rain",     "fog",   "wind", "snow",
                                                 "sunshine", "frost", "mist", "heat"};
constexpr std::array<const char*, 10> kFoods = {"soup",  "apples", "cheese",   "honey", "bread",
                                                "pears", "fish",   "porridge", "plums", "tea"};
constexpr std::array<const char*, 8> kTimes = {"in the morning", "at dusk",       "after noon",
                                               "before dawn",    "every evening", "at night",
                                               "on market days", "most weekends"};

std::string Capitalise(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

std::string FillerSentence(Rng& r) {
  const std::string a = r.Pick(kAdjectives), n = r.Pick(kNouns), n2 = r.Pick(kNouns);
  const std::string p = r.Pick(kPeople), v = r.Pick(kActivities), s = r.Pick(kSeasons);
  const std::string w = r.Pick(kWeather), f = r.Pick(kFoods), f2 = r.Pick(kFoods);
  const std::string t = r.Pick(kTimes), a2 = r.Pick(kAdjectives);
  switch (r.Below(12)) {
    case 0:
      return "The " + a + " " + n + " is usually full of " + p + " " + t + ".";
    case 1:
      return "In " + s + ", the " + p + " of the valley " + v + " near the " + n + ".";
    case 2:
      return "Many " + p + " prefer " + f + " to " + f2 + " when the " + w + " arrives.";
    case 3:
      return Capitalise("a " + a + " path leads from the " + n + " to the " + n2 + ", where " + p +
                        " often " + v + ".");
    case 4:
      return "Nobody remembers why the " + n + " was moved, but the " + p + " still " + v +
             " there " + t + ".";
    case 5:
      return "The " + w + " made the " + n + " feel " + a + " and " + a2 + " for most of " + s +
             ".";
    case 6:
      return Capitalise(t + ", the " + p + " " + v + " and talk about the " + a + " " + n + ".");
    case 7:
      return "Visitors say the " + n2 + " smells of " + f + " and " + w + " " + t + ".";
    case 8:
      return "When " + s + " ends, the " + p + " leave the " + n + " and " + v + " at home.";
    case 9:
      return "The " + p + " built a " + a + " shelter beside the " + n + " to keep out the " + w +
             ".";
    case 10:
      return "Some " + p + " believe that " + f + " tastes better near the " + a + " " + n + ".";
    default:
      return "The road past the " + n + " is " + a + " " + t + ", and the " + p + " " + v + ".";
  }
}

constexpr int kSentencesPerParagraph = 6;

// Joins sentences into paragraphs of kSentencesPerParagraph.
std::string Assemble(const std::vector<std::string>& sentences) {
  std::string out;
  for (size_t i = 0; i < sentences.size(); ++i) {
    if (i > 0) out += (i % kSentencesPerParagraph == 0) ? "\n\n" : " ";
    out += sentences[i];
  }
  return out;
}

}  // namespace

Needle MakeNeedle(uint64_t seed) {
  Rng r(seed ^ 0x6E6565646C65ull);  // "needle"
  const std::string object = std::string(r.Pick(kColours)) + " " + r.Pick(kLandmarks);
  const std::string code = std::to_string(1000 + r.Below(9000));
  Needle n;
  n.sentence = "The secret passcode of the " + object + " is " + code + ".";
  n.question = "What is the secret passcode of the " + object + "?";
  n.code = code;
  return n;
}

bool ExactMatch(std::string_view answer, std::string_view code) {
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  size_t i = 0;
  while (i < answer.size() && !is_digit(answer[i])) ++i;
  size_t j = i;
  while (j < answer.size() && is_digit(answer[j])) ++j;
  return j > i && answer.substr(i, j - i) == code;
}

std::vector<std::string> FillerSentences(uint64_t seed, size_t count) {
  Rng r(seed);
  std::vector<std::string> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(FillerSentence(r));
  return out;
}

double DepthAt(int64_t i, int64_t n) {
  return n <= 1 ? 0.5 : static_cast<double>(i) / static_cast<double>(n - 1);
}

StatusOr<Haystack> BuildHaystack(const Tokenizer& tokenizer, std::string_view system,
                                 int64_t target_tokens, double depth, const Needle& needle,
                                 uint64_t seed) {
  if (!(depth >= 0.0 && depth <= 1.0)) {
    return InvalidArgumentError("needle depth must be in [0, 1], got " + std::to_string(depth));
  }
  auto count = [&](const std::string& text) {
    return static_cast<int64_t>(tokenizer.Encode(text, /*add_bos=*/false).size());
  };
  const int64_t overhead =
      static_cast<int64_t>(tokenizer.Encode(ContextText(system, "x"), tokenizer.add_bos()).size());
  const int64_t needle_tokens = count(" " + needle.sentence);
  constexpr int64_t kMinFiller = 64;
  const int64_t budget = target_tokens - overhead - needle_tokens;
  if (budget < kMinFiller) {
    return InvalidArgumentError("haystack target of " + std::to_string(target_tokens) +
                                " tokens is too small: the prompt "
                                "and the needle take " +
                                std::to_string(overhead + needle_tokens) + ", and at least " +
                                std::to_string(kMinFiller) + " filler tokens are needed");
  }
  // Draw filler until its estimated size (sentences encoded one by one, plus paragraph breaks)
  // reaches the budget; then fix the exact size by encoding the whole context.
  Rng r(seed);
  std::vector<std::string> filler;
  std::vector<int64_t> cost;  // estimated tokens per filler sentence
  int64_t estimate = 0;
  while (estimate < budget) {
    filler.push_back(FillerSentence(r));
    cost.push_back(count(" " + filler.back()) +
                   (filler.size() % kSentencesPerParagraph == 0 ? 1 : 0));
    estimate += cost.back();
  }
  Haystack h;
  while (true) {
    const size_t n = filler.size();
    const size_t at = static_cast<size_t>(std::lround(depth * static_cast<double>(n)));
    std::vector<std::string> sentences(filler.begin(), filler.begin() + at);
    sentences.push_back(needle.sentence);
    sentences.insert(sentences.end(), filler.begin() + at, filler.end());
    h.document = Assemble(sentences);
    h.tokens = tokenizer.Encode(ContextText(system, h.document), tokenizer.add_bos());
    if (static_cast<int64_t>(h.tokens.size()) <= target_tokens) {
      int64_t before = 0, total = 0;
      for (size_t i = 0; i < n; ++i) {
        total += cost[i];
        if (i < at) before += cost[i];
      }
      h.depth = total > 0 ? static_cast<double>(before) / static_cast<double>(total) : 0.0;
      break;
    }
    // Too long: drop filler sentences, about as many as the excess needs.
    int64_t excess = static_cast<int64_t>(h.tokens.size()) - target_tokens;
    while (excess > 0 && filler.size() > 1) {
      excess -= cost.back();
      filler.pop_back();
      cost.pop_back();
    }
  }
  if (static_cast<int64_t>(h.tokens.size()) < target_tokens - kMinFiller) {
    // Cannot happen with tokenizers whose sentence costs add up (byte-level BPE after a space);
    // report rather than return a haystack of the wrong size.
    return InternalError("haystack came out at " + std::to_string(h.tokens.size()) +
                         " tokens for a target of " + std::to_string(target_tokens));
  }
  return h;
}

}  // namespace sqz::needle
