// sqz-gguf-bench: load-time and dequantization speed of engine/gguf on a GGUF file (default: the
// fetched SmolLM2 model). A benchmark program, not a test: each number is printed next to a
// baseline measured in the same run (copying the same bytes with memcpy).
//
//   sqz-gguf-bench [MODEL.gguf] [--reps N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "engine/gguf/dequantize.h"
#include "engine/gguf/gguf_model.h"
#include "engine/gguf/gguf_tokenizer.h"
#include "engine/gguf/model_cache.h"

namespace sqz::gguf {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Best of `reps` runs of fn, in seconds.
template <typename Fn>
double Best(int reps, Fn fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, Since(t0));
  }
  return best;
}

int Main(int argc, char** argv) {
  std::string path = DefaultModelPath();
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      path = a;
    }
  }
  std::unique_ptr<File> file;
  const double open_s = Best(reps, [&] {
    auto f = File::Open(path);
    if (!f.ok()) {
      std::fprintf(stderr, "%s\n", f.status().ToString().c_str());
      std::exit(1);
    }
    file = std::move(f).value();
  });
  std::printf("file %s: %.1f MB, %zu tensors, %zu metadata keys\n", path.c_str(),
              file->file_size() / 1e6, file->tensors().size(), file->metadata().size());
  std::printf("File::Open (parse + validate, incl. %zu-token vocabulary): %.1f ms\n",
              file->FindValue("tokenizer.ggml.tokens")
                  ? static_cast<size_t>(file->FindValue("tokenizer.ggml.tokens")->array_size())
                  : 0,
              open_s * 1e3);
  const double tok_s = Best(reps, [&] { (void)TokenizerModelFromGguf(*file); });
  std::printf("TokenizerModelFromGguf: %.1f ms\n", tok_s * 1e3);

  // Dequantization of the whole model into one pre-faulted fp32 buffer (cold caches: the buffer
  // is far larger than the caches), per type, against memcpy of the same source bytes into a
  // pre-faulted buffer, both timed tensor by tensor within full passes; best pass of `reps`.
  struct Acc {
    int64_t bytes = 0, elements = 0;
    double deq_s = 1e30, copy_s = 1e30;
  };
  std::map<std::string, Acc> by_type;
  int64_t total_elements = 0, total_bytes = 0;
  for (const TensorInfo& t : file->tensors()) {
    Acc& a = by_type[TensorTypeName(t.type)];
    a.bytes += t.n_bytes;
    a.elements += t.n_elements;
    total_elements += t.n_elements;
    total_bytes += t.n_bytes;
  }
  std::vector<float> out(total_elements, 1.0f);
  std::vector<uint8_t> copy(total_bytes, 1);
  for (int r = 0; r < reps; ++r) {
    std::map<std::string, double> deq, cpy;
    int64_t eo = 0, bo = 0;
    for (const TensorInfo& t : file->tensors()) {
      auto t0 = Clock::now();
      (void)DequantizeTensorTo(t, out.data() + eo);
      deq[TensorTypeName(t.type)] += Since(t0);
      t0 = Clock::now();
      std::memcpy(copy.data() + bo, t.data, t.n_bytes);
      cpy[TensorTypeName(t.type)] += Since(t0);
      eo += t.n_elements;
      bo += t.n_bytes;
    }
    for (auto& [name, a] : by_type) {
      a.deq_s = std::min(a.deq_s, deq[name]);
      a.copy_s = std::min(a.copy_s, cpy[name]);
    }
  }
  for (const auto& [name, a] : by_type) {
    std::printf(
        "dequantize %-5s %6.1f M elements: %6.1f ms = %5.0f M elements/s, %5.2f GB/s fp32 out "
        "(memcpy of its %5.1f MB: %5.1f ms; dequantize / memcpy = %.1fx)\n",
        name.c_str(), a.elements / 1e6, a.deq_s * 1e3, a.elements / a.deq_s / 1e6,
        a.elements * 4 / a.deq_s / 1e9, a.bytes / 1e6, a.copy_s * 1e3, a.deq_s / a.copy_s);
  }
  out = {};
  copy = {};

  double load_s = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    auto g = LoadGgufModel(path);
    const double s = Since(t0);
    if (!g.ok()) {
      std::fprintf(stderr, "%s\n", g.status().ToString().c_str());
      return 1;
    }
    load_s = std::min(load_s, s);
  }
  std::printf(
      "LoadGgufModel (open, config, tokenizer, dequantize + un-permute all weights): "
      "%.0f ms (best of %d)\n",
      load_s * 1e3, reps);
  return 0;
}

}  // namespace
}  // namespace sqz::gguf

int main(int argc, char** argv) { return sqz::gguf::Main(argc, argv); }
