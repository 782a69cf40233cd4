// The needle-in-a-haystack benchmark loop and its report (needle.h).
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

#include "tools/needle/needle.h"

namespace sqz::needle {
namespace {

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

}  // namespace

StatusOr<std::vector<int64_t>> ParseLengths(std::string_view csv) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= csv.size()) {
    size_t end = csv.find(',', start);
    if (end == std::string_view::npos) end = csv.size();
    const std::string item(csv.substr(start, end - start));
    int64_t scale = 1;
    std::string digits = item;
    if (!digits.empty() && (digits.back() == 'k' || digits.back() == 'K')) {
      scale = 1024;
      digits.pop_back();
    }
    const bool numeric =
        !digits.empty() && digits.size() <= 9 &&
        std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!numeric || std::stoll(digits) < 1) {
      return InvalidArgumentError("lengths: '" + item +
                                  "' is not a positive token count (e.g. 1024 or 1k)");
    }
    out.push_back(std::stoll(digits) * scale);
    start = end + 1;
  }
  return out;
}

StatusOr<std::vector<NeedleTrial>> RunNeedleBenchmark(Backend& backend, const Tokenizer& tokenizer,
                                                      const NeedleOptions& options) {
  if (options.lengths.empty()) return InvalidArgumentError("needle: no lengths");
  if (options.modes.empty()) return InvalidArgumentError("needle: no modes");
  if (options.depths < 1) {
    return InvalidArgumentError("needle: depths must be >= 1, got " +
                                std::to_string(options.depths));
  }
  if (options.first_depth < 0 || options.first_depth >= options.depths) {
    return InvalidArgumentError("needle: first_depth must be in [0, depths), got " +
                                std::to_string(options.first_depth));
  }
  if (options.max_tokens < 1) {
    return InvalidArgumentError("needle: max_tokens must be >= 1, got " +
                                std::to_string(options.max_tokens));
  }
  for (const Mode& m : options.modes) {
    if (Status s = m.options.Validate(); !s.ok()) {
      return InvalidArgumentError("needle: mode '" + m.name + "': " + s.message());
    }
  }
  const int64_t max_positions = backend.config().max_positions;
  std::vector<NeedleTrial> trials;
  for (int64_t length : options.lengths) {
    for (int64_t d = options.first_depth; d < options.depths; ++d) {
      NeedleTrial t;
      t.length = length;
      const uint64_t trial_seed =
          Mix(Mix(options.seed, static_cast<uint64_t>(length)), static_cast<uint64_t>(d));
      t.needle = MakeNeedle(trial_seed);
      const auto query = tokenizer.Encode(QueryText(t.needle.question), /*add_bos=*/false);
      t.query_tokens = static_cast<int64_t>(query.size());
      const int64_t target = std::min(length, max_positions - t.query_tokens - options.max_tokens);
      SQZ_ASSIGN_OR_RETURN(
          Haystack h, BuildHaystack(tokenizer, options.system, target, DepthAt(d, options.depths),
                                    t.needle, Mix(trial_seed, 7)));
      t.context_tokens = static_cast<int64_t>(h.tokens.size());
      t.depth = h.depth;
      SQZ_ASSIGN_OR_RETURN(PreparedContext prepared,
                           PrepareContext(backend, h.tokens, options.squeeze));
      t.prefill_s = prepared.prefill_s;
      t.build_s = prepared.build_s;
      for (const Mode& m : options.modes) {
        SQZ_ASSIGN_OR_RETURN(Answer a, AskGreedy(backend, tokenizer, prepared.snapshot, m.options,
                                                 query, options.max_tokens));
        t.correct.push_back(ExactMatch(a.text, t.needle.code));
        t.answers.push_back(std::move(a));
      }
      if (options.on_trial) options.on_trial(t);
      trials.push_back(std::move(t));
    }
  }
  return trials;
}

std::string FormatNeedleReport(std::span<const NeedleTrial> trials, std::span<const Mode> modes) {
  std::map<int64_t, std::vector<const NeedleTrial*>> by_length;
  for (const NeedleTrial& t : trials) by_length[t.length].push_back(&t);
  const size_t nm = modes.size();
  std::string out = "### Accuracy (exact match of the passcode; correct / trials)\n\n| length |";
  for (const Mode& m : modes) out += " " + m.name + " |";
  out += "\n| --- |";
  for (size_t i = 0; i < nm; ++i) out += " --- |";
  out += "\n";
  std::vector<int64_t> all_ok(nm, 0);
  int64_t all_n = 0;
  for (const auto& [length, ts] : by_length) {
    int64_t tokens = 0;
    for (const NeedleTrial* t : ts) tokens += t->context_tokens;
    out += "| " + std::to_string(length) + " (" + std::to_string(tokens / (int64_t)ts.size()) +
           " tok) |";
    for (size_t m = 0; m < nm; ++m) {
      int64_t ok = 0;
      for (const NeedleTrial* t : ts) ok += (m < t->correct.size() && t->correct[m]) ? 1 : 0;
      all_ok[m] += ok;
      out += " " + std::to_string(ok) + "/" + std::to_string(ts.size()) + " (" +
             Fmt("%.0f", 100.0 * ok / ts.size()) + "%) |";
    }
    all_n += static_cast<int64_t>(ts.size());
    out += "\n";
  }
  out += "| all |";
  for (size_t m = 0; m < nm; ++m) {
    out += " " + std::to_string(all_ok[m]) + "/" + std::to_string(all_n) + " (" +
           Fmt("%.0f", all_n ? 100.0 * all_ok[m] / all_n : 0.0) + "%) |";
  }

  out += "\n\n### Share of the context's keys read (centroids count half a key)\n\n| length |";
  for (const Mode& m : modes) out += " " + m.name + " |";
  out += "\n| --- |";
  for (size_t i = 0; i < nm; ++i) out += " --- |";
  out += "\n";
  for (const auto& [length, ts] : by_length) {
    out += "| " + std::to_string(length) + " |";
    for (size_t m = 0; m < nm; ++m) {
      double s = 0;
      for (const NeedleTrial* t : ts)
        s += m < t->answers.size() ? t->answers[m].context_keys_read : 0;
      out += " " + Fmt("%.3f", s / ts.size()) + " |";
    }
    out += "\n";
  }

  out +=
      "\n### Speed\n\n| length | context tokens (mean) | prefill tok/s | clustering + "
      "calibration s (mean) | query TTFT s, dense / squeezed (mean) | decode tok/s, dense / "
      "squeezed |\n| --- | --- | --- | --- | --- | --- |\n";
  for (const auto& [length, ts] : by_length) {
    double tokens = 0, prefill = 0, build = 0;
    double ttft[2] = {0, 0}, dec_tok[2] = {0, 0}, dec_s[2] = {0, 0};
    int64_t ttft_n[2] = {0, 0};
    for (const NeedleTrial* t : ts) {
      tokens += t->context_tokens;
      prefill += t->prefill_s;
      build += t->build_s;
      for (size_t m = 0; m < t->answers.size() && m < nm; ++m) {
        const int k = modes[m].options.mode == AttentionMode::kDense ? 0 : 1;
        const Answer& a = t->answers[m];
        ttft[k] += a.ttft_s;
        ++ttft_n[k];
        if (a.generated > 1) {
          dec_tok[k] += static_cast<double>(a.generated - 1);
          dec_s[k] += a.total_s - a.ttft_s;
        }
      }
    }
    const double n = static_cast<double>(ts.size());
    out += "| " + std::to_string(length) + " | " + Fmt("%.0f", tokens / n) + " | " +
           Fmt("%.1f", prefill > 0 ? tokens / prefill : 0.0) + " | " + Fmt("%.2f", build / n) +
           " | " + Fmt("%.2f", ttft_n[0] ? ttft[0] / ttft_n[0] : 0.0) + " / " +
           Fmt("%.2f", ttft_n[1] ? ttft[1] / ttft_n[1] : 0.0) + " | " +
           Fmt("%.1f", dec_s[0] > 0 ? dec_tok[0] / dec_s[0] : 0.0) + " / " +
           Fmt("%.1f", dec_s[1] > 0 ? dec_tok[1] / dec_s[1] : 0.0) + " |\n";
  }

  std::string misses;
  int64_t n_miss = 0;
  for (const NeedleTrial& t : trials) {
    for (size_t m = 0; m < t.correct.size() && m < nm; ++m) {
      if (t.correct[m]) continue;
      ++n_miss;
      std::string answer = t.answers[m].text;
      std::replace(answer.begin(), answer.end(), '\n', ' ');
      std::replace(answer.begin(), answer.end(), '|', '/');
      misses += "| " + std::to_string(t.length) + " | " + Fmt("%.2f", t.depth) + " | " +
                modes[m].name + " | " + t.needle.code + " | " + answer + " |\n";
    }
  }
  out += "\n### Misses (" + std::to_string(n_miss) + ")\n\n";
  if (n_miss > 0) {
    out +=
        "| length | depth | mode | passcode | answer |\n| --- | --- | --- | --- | --- |\n" + misses;
  } else {
    out += "None.\n";
  }
  return out;
}

}  // namespace sqz::needle
