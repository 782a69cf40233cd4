// sqz-bench-model: CPU model runtime benchmark (a program, not a test).
//
//   sqz-bench-model [--stories DIR] [--big-layers 12] [--decode 256] [--prompt 256]
//
// Measures, in one process: (1) baselines of this machine: streaming read bandwidth and the fp32
// GEMM rate of kernels/cpu MatMulTransB; (2) stories260K greedy decode tokens/s on one stream and
// on 8 streams, and prompt (prefill) tokens/s; (3) a ~100M-parameter random Llama (hidden 768,
// 12 layers, 12/4 heads, vocabulary 32000): decode tokens/s against the bound that the weight
// bytes and the measured bandwidth allow, and prefill GFLOP/s against the GEMM baseline.
#include <omp.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>
#include <vector>

#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "engine/model/hf_writer.h"
#include "kernels/cpu/ops.h"
#include "tools/generate/flags.h"

namespace sqz::tools {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string CpuName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

// GB/s of a parallel streaming read over 512 MiB (best of 3).
double ReadBandwidth() {
  const int64_t n = 128ll << 20;
  std::vector<float> a(n, 1.0f);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t = Clock::now();
    // Dot against a small reused vector: vectorised, so memory is the bottleneck.
    constexpr int64_t kChunk = 4096;
    static const std::vector<float> ones(kChunk, 1.0f);
    double sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (int64_t i = 0; i < n; i += kChunk) sum += cpu::Dot(a.data() + i, ones.data(), kChunk);
    const double s = Since(t);
    if (sum < 0) std::printf("%f", sum);
    best = std::max(best, n * 4.0 / s / 1e9);
  }
  return best;
}

// GFLOP/s of MatMulTransB on [m][k] x [n][k] (best of 3).
double GemmRate(int64_t m, int64_t n, int64_t k) {
  std::vector<float> a(m * k, 0.5f), w(n * k, 0.25f), out(m * n);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t = Clock::now();
    cpu::MatMulTransB(a.data(), w.data(), nullptr, m, n, k, out.data());
    best = std::max(best, 2.0 * m * n * k / Since(t) / 1e9);
  }
  return best;
}

int32_t Argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

struct Speeds {
  double prompt_tps = 0;  // prefill tokens/s
  double decode_tps = 0;  // single-stream decode tokens/s
};

// Prefill of `prompt` tokens in one chunk (best of reps), then greedy decode of `decode` tokens.
Speeds Measure(const Model& model, int64_t prompt, int64_t decode, int reps) {
  const int64_t vocab = model.config.vocab;
  CpuBackendOptions o;
  o.kv_blocks = (prompt + decode) / kKvBlockTokens + 2;
  auto backend = CpuBackend::Create(model, o).value();
  std::vector<int32_t> tokens(prompt);
  for (int64_t i = 0; i < prompt; ++i) tokens[i] = static_cast<int32_t>((i * 7919 + 1) % vocab);
  std::vector<float> logits(vocab);
  Speeds s;
  for (int rep = 0; rep < reps; ++rep) {
    SeqId seq = backend->AddSequence().value();
    StepInput in{seq, tokens};
    const auto t = Clock::now();
    SQZ_CHECK(backend->Forward({&in, 1}, logits.data()).ok());
    s.prompt_tps = std::max(s.prompt_tps, prompt / Since(t));
    SQZ_CHECK(backend->FreeSequence(seq).ok());
  }
  SeqId seq = backend->AddSequence().value();
  int32_t next = 1;
  StepInput first{seq, {&next, 1}};
  SQZ_CHECK(backend->Forward({&first, 1}, logits.data()).ok());
  const auto t = Clock::now();
  for (int64_t i = 0; i < decode; ++i) {
    next = Argmax(logits.data(), vocab);
    StepInput in{seq, {&next, 1}};
    SQZ_CHECK(backend->Forward({&in, 1}, logits.data()).ok());
  }
  s.decode_tps = decode / Since(t);
  return s;
}

// Aggregate greedy decode tokens/s of `streams` sequences decoded together.
double MeasureBatched(const Model& model, int streams, int64_t decode) {
  const int64_t vocab = model.config.vocab;
  CpuBackendOptions o;
  o.kv_blocks = streams * (decode / kKvBlockTokens + 2);
  auto backend = CpuBackend::Create(model, o).value();
  std::vector<int32_t> next(streams);
  std::vector<StepInput> batch;
  for (int i = 0; i < streams; ++i) {
    next[i] = 1 + i;
    batch.push_back(StepInput{backend->AddSequence().value(), {&next[i], 1}});
  }
  std::vector<float> logits(streams * vocab);
  const auto t = Clock::now();
  for (int64_t step = 0; step < decode; ++step) {
    SQZ_CHECK(backend->Forward(batch, logits.data()).ok());
    for (int i = 0; i < streams; ++i) next[i] = Argmax(logits.data() + i * vocab, vocab);
  }
  return streams * decode / Since(t);
}

Status Run(int argc, char** argv) {
  Flags flags({});
  SQZ_RETURN_IF_ERROR(flags.Parse(argc, argv));
  const std::string stories = flags.Get("stories", "/work/shared/models/stories260K");
  SQZ_ASSIGN_OR_RETURN(int64_t big_layers, flags.Int("big-layers", 12));
  SQZ_ASSIGN_OR_RETURN(int64_t decode, flags.Int("decode", 256));
  SQZ_ASSIGN_OR_RETURN(int64_t prompt, flags.Int("prompt", 256));
  SQZ_RETURN_IF_ERROR(flags.CheckAllUsed());

  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  utsname u;
  uname(&u);
  std::string load = "?";
  std::ifstream("/proc/loadavg") >> load;  // other work on the machine skews every number below
  std::printf("sqz-bench-model  %s  %s %s  %s, %d OpenMP threads, load average %s\n\n", date,
              u.sysname, u.machine, CpuName().c_str(), omp_get_max_threads(), load.c_str());

  const double bw = ReadBandwidth();
  const double gemm = GemmRate(128, 2048, 768);
  std::printf(
      "baselines: streaming read %.1f GB/s; MatMulTransB [128x768]x[768x2048] %.1f GFLOP/s\n\n", bw,
      gemm);

  auto small = LoadHfModel(stories);
  if (small.ok()) {
    const Speeds s = Measure(**small, std::min<int64_t>(prompt, 255), decode - 1, 5);
    const double b8 = MeasureBatched(**small, 8, std::min<int64_t>(decode, 500));
    std::printf("stories260K (%lld parameters)\n", (long long)(*small)->config.ParameterCount());
    std::printf("  decode, 1 stream:   %8.0f tokens/s   (goal >= 2000)\n", s.decode_tps);
    std::printf("  decode, 8 streams:  %8.0f tokens/s   (%.2fx one stream)\n", b8,
                b8 / s.decode_tps);
    std::printf("  prompt (%lld):      %8.0f tokens/s\n\n",
                (long long)std::min<int64_t>(prompt, 255), s.prompt_tps);
  } else {
    std::printf("stories260K: skipped (%s)\n\n", small.status().ToString().c_str());
  }

  ModelConfig c;
  c.hidden = 768;
  c.intermediate = 2048;
  c.layers = big_layers;
  c.q_heads = 12;
  c.kv_heads = 4;
  c.head_dim = 64;
  c.vocab = 32000;
  c.max_positions = 4096;
  c.tie_embeddings = true;
  c.rope.theta = 500000.0f;
  Model big(c, RandomWeights(c, 1));
  const double params = static_cast<double>(c.ParameterCount());
  // Prefill multiplies every weight but the embedding lookup once per token (the LM head only for
  // the last token).
  const double flops_per_token = 2.0 * (params - static_cast<double>(c.vocab * c.hidden));
  const int64_t big_prompt = std::min<int64_t>(prompt, 128);
  const Speeds s = Measure(big, big_prompt, std::min<int64_t>(decode, 32), 2);
  // Decode reads every weight once per token (the embedding row aside, the tied matrix once).
  const double bytes_per_token = params * 4.0;
  const double bound = bw * 1e9 / bytes_per_token;
  const double prefill_gflops = flops_per_token * s.prompt_tps / 1e9;
  std::printf("random Llama, %.1fM parameters (hidden 768, %lld layers, 12/4 heads, vocab 32000)\n",
              params / 1e6, (long long)c.layers);
  std::printf("  decode, 1 stream:   %8.1f tokens/s   (bandwidth bound %.1f: %.0f%%)\n",
              s.decode_tps, bound, 100.0 * s.decode_tps / bound);
  std::printf(
      "  prompt (%lld):      %8.1f tokens/s   (%.1f GFLOP/s, %.0f%% of the GEMM baseline)\n",
      (long long)big_prompt, s.prompt_tps, prefill_gflops, 100.0 * prefill_gflops / gemm);
  return OkStatus();
}

}  // namespace
}  // namespace sqz::tools

int main(int argc, char** argv) {
  sqz::Status s = sqz::tools::Run(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "sqz-bench-model: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
