// tokenizer_bench: encode / decode throughput on long documents, against Debian's C++
// SentencePiece as the baseline measured in the same process (Llama-2 tokenizer.model), and
// the growth of encode time with document length (it must stay linear).
//
//   tokenizer_bench [SHARED_DIR]     (default: the build's SQZ_SHARED_DIR)
//
// Prints one line per measurement; best of 5 runs each.
#include <sentencepiece_processor.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;

double BestSeconds(const std::function<void()>& fn, int runs = 5) {
  double best = 1e30;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

// English-like prose with some code, numbers, other scripts and emoji, about `bytes` long.
std::string Document(size_t bytes, uint32_t seed) {
  static const char* kWords[] = {"the",
                                 "of",
                                 "and",
                                 "to",
                                 "in",
                                 "a",
                                 "contract",
                                 "shall",
                                 "party",
                                 "which",
                                 "Section",
                                 "data",
                                 "model",
                                 "attention",
                                 "query",
                                 "context",
                                 "1,024",
                                 "2025",
                                 "(b)",
                                 "e.g.,",
                                 "\xC3\xBC"
                                 "ber",
                                 "\xD0\xBC\xD0\xB8\xD1\x80",
                                 "\xE4\xB8\xAD\xE6\x96\x87",
                                 "\xF0\x9F\x98\x80",
                                 "x = f(y);",
                                 "return;",
                                 "it's"};
  std::mt19937 rng(seed);
  std::string doc;
  while (doc.size() < bytes) {
    doc += kWords[rng() % (sizeof(kWords) / sizeof(kWords[0]))];
    const uint32_t r = rng() % 20;
    doc += r == 0 ? ".\n\n" : r == 1 ? ", " : r == 2 ? "\n    " : " ";
  }
  return doc;
}

int Main(int argc, char** argv) {
  const fs::path shared = argc > 1 ? fs::path(argv[1]) : fs::path(SQZ_SHARED_DIR);
  const fs::path llama2 = shared / "tokenizers/llama2", llama3 = shared / "tokenizers/llama3";
  if (!fs::exists(llama2 / "tokenizer.model") || !fs::exists(llama3 / "tokenizer.json")) {
    std::printf("skipped: tokenizers not found under %s\n", shared.c_str());
    return 0;
  }
  std::unique_ptr<Tokenizer> t2, t3;
  const double load2 =
      BestSeconds([&] { t2 = std::move(Tokenizer::FromHfDirectory(llama2.string())).value(); }, 1);
  const double load3 =
      BestSeconds([&] { t3 = std::move(Tokenizer::FromHfDirectory(llama3.string())).value(); }, 1);
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.Load((llama2 / "tokenizer.model").string()).ok()) return 1;
  std::printf("load: llama2 tokenizer.json %.3f s, llama3 tokenizer.json %.3f s\n", load2, load3);

  const std::string doc = Document(150000, 1);
  std::vector<int32_t> ids2, ids3;
  std::vector<int> sp_ids;
  const double ours2 = BestSeconds([&] { ids2 = t2->Encode(doc, false, false); });
  const double base2 = BestSeconds([&] { (void)sp.Encode(doc, &sp_ids); });
  const double ours3 = BestSeconds([&] { ids3 = t3->Encode(doc, false); });
  const bool same = std::vector<int32_t>(sp_ids.begin(), sp_ids.end()) == ids2;
  const double mb = doc.size() / 1e6;
  std::printf("encode %.0f KB document:\n", doc.size() / 1e3);
  std::printf("  llama2 ours        %6zu tokens  %7.2f ms  %6.2f MB/s  %5.2fx SentencePiece%s\n",
              ids2.size(), ours2 * 1e3, mb / ours2, base2 / ours2, same ? "" : "  IDS DIFFER");
  std::printf("  llama2 sentencepiece %4zu tokens  %7.2f ms  %6.2f MB/s  (baseline)\n",
              sp_ids.size(), base2 * 1e3, mb / base2);
  std::printf("  llama3 ours        %6zu tokens  %7.2f ms  %6.2f MB/s\n", ids3.size(), ours3 * 1e3,
              mb / ours3);

  std::string text;
  const double dec3 = BestSeconds([&] { text = t3->Decode(ids3); });
  double stream3 = BestSeconds([&] {
    IncrementalDecoder dec(*t3);
    text.clear();
    for (int32_t id : ids3) text += dec.Push(id);
    text += dec.Flush();
  });
  std::printf(
      "decode llama3: Decode %.2f ms (%.0f ns/token), IncrementalDecoder %.2f ms "
      "(%.0f ns/token)\n",
      dec3 * 1e3, dec3 * 1e9 / ids3.size(), stream3 * 1e3, stream3 * 1e9 / ids3.size());

  std::printf("scaling (time per token should stay flat):\n");
  for (size_t kb : {19, 38, 75, 150, 300}) {
    const std::string d = Document(kb * 1000, 2);
    std::vector<int32_t> a, b;
    const double s2 = BestSeconds([&] { a = t2->Encode(d, false, false); }, 3);
    const double s3 = BestSeconds([&] { b = t3->Encode(d, false); }, 3);
    std::printf(
        "  %4zu KB: llama2 %6zu tokens %6.0f ns/token | llama3 %6zu tokens %6.0f ns/token\n", kb,
        a.size(), s2 * 1e9 / a.size(), b.size(), s3 * 1e9 / b.size());
  }
  return 0;
}

}  // namespace
}  // namespace sqz

int main(int argc, char** argv) { return sqz::Main(argc, argv); }
