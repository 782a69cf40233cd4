// sqz-needle: accuracy of Squeezed Attention with a real model (default: SmolLM2-135M-Instruct
// from the model cache) on the CPU backend.
//
//   sqz-needle [--model PATH] [--lengths 1k,2k,4k,8k] [--depths 10] [--seed 1] [--max-tokens 12]
//              [--first-depth I] [--threads N] [--log FILE]
//       Needle in a haystack: per length and depth one prefill + BuildSnapshot, then dense and
//       squeezed (KV budgets 0.5 / 0.25 / 0.125, flat and hierarchical) answer from the same
//       snapshot; prints markdown tables (accuracy, keys read, speed, misses). --log appends one
//       tab-separated line per trial and mode as they finish; --first-depth I
//       skips depth indices below I (resuming a run: the same trials, seeded by depth index).
//   sqz-needle --qa [--document tools/demo/sample_document.md] [--questions
//   tools/demo/questions.json]
//              [--max-tokens 48] [--threads N]
//       The demo's document questions, dense and squeezed at the default budget.
//
// --threads sets OpenMP threads (0: OpenMP's default). Exit status 0 on success (any accuracy),
// 1 on an error, 2 when --qa gets a wrong answer.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "engine/gguf/model_cache.h"
#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "engine/runtime/loaded_model.h"
#include "tools/generate/flags.h"
#include "tools/needle/needle.h"

namespace sqz::needle {
namespace {

Status RunQa(tools::Flags& flags, const LoadedModel& lm, Backend& backend) {
  const std::string src = SQZ_SOURCE_DIR;
  SQZ_ASSIGN_OR_RETURN(std::string document,
                       ReadTextFile(flags.Get("document", src + "/tools/demo/sample_document.md")));
  SQZ_ASSIGN_OR_RETURN(std::string json,
                       ReadTextFile(flags.Get("questions", src + "/tools/demo/questions.json")));
  SQZ_ASSIGN_OR_RETURN(int64_t max_tokens, flags.Int("max-tokens", 48));
  SQZ_RETURN_IF_ERROR(flags.CheckAllUsed());
  SQZ_ASSIGN_OR_RETURN(auto questions, ParseQuestions(json));
  const auto modes = DemoModes();
  const SqueezeOptions squeeze;
  const auto t0 = std::chrono::steady_clock::now();
  SQZ_ASSIGN_OR_RETURN(auto outcomes,
                       RunDocumentQa(backend, *lm.tokenizer, kDefaultSystem, document, questions,
                                     modes, squeeze, static_cast<int32_t>(max_tokens)));
  const auto context = lm.tokenizer->Encode(ContextText(kDefaultSystem, document), false);
  int wrong = 0;
  for (const QaOutcome& o : outcomes) {
    wrong += o.correct ? 0 : 1;
    std::printf("Q%zu [%s] %s (expected \"%s\"): %s | keys read %.3f\n", o.question + 1,
                o.mode.c_str(), o.correct ? "correct" : "WRONG",
                questions[o.question].answer.c_str(), OneLine(o.answer.text).c_str(),
                o.answer.context_keys_read);
  }
  std::printf("context %zu tokens; %zu of %zu answers correct; %.1f s\n", context.size(),
              outcomes.size() - wrong, outcomes.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return wrong == 0 ? OkStatus() : FailedPreconditionError("wrong answers");
}

Status RunBench(tools::Flags& flags, const LoadedModel& lm, Backend& backend) {
  NeedleOptions opts;
  SQZ_ASSIGN_OR_RETURN(opts.lengths, ParseLengths(flags.Get("lengths", "1k,2k,4k,8k")));
  SQZ_ASSIGN_OR_RETURN(opts.depths, flags.Int("depths", 10));
  SQZ_ASSIGN_OR_RETURN(opts.first_depth, flags.Int("first-depth", 0));
  SQZ_ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 1));
  opts.seed = static_cast<uint64_t>(seed);
  SQZ_ASSIGN_OR_RETURN(int64_t max_tokens, flags.Int("max-tokens", 12));
  opts.max_tokens = static_cast<int32_t>(max_tokens);
  const std::string log_path = flags.Get("log");
  SQZ_RETURN_IF_ERROR(flags.CheckAllUsed());
  std::FILE* log = nullptr;
  if (!log_path.empty()) {
    log = std::fopen(log_path.c_str(), "a");
    if (log == nullptr) return InvalidArgumentError("cannot open --log " + log_path);
  }
  opts.on_trial = [&](const NeedleTrial& t) {
    int ok = 0;
    for (bool c : t.correct) ok += c ? 1 : 0;
    std::fprintf(stderr,
                 "length %lld (%lld tokens) depth %.2f code %s: prefill %.1f s (%.1f tok/s), "
                 "snapshot %.2f s, %d/%zu modes correct\n",
                 static_cast<long long>(t.length), static_cast<long long>(t.context_tokens),
                 t.depth, t.needle.code.c_str(), t.prefill_s, t.context_tokens / t.prefill_s,
                 t.build_s, ok, t.correct.size());
    if (log == nullptr) return;
    for (size_t m = 0; m < t.answers.size(); ++m) {
      const Answer& a = t.answers[m];
      std::fprintf(log, "%lld\t%lld\t%.3f\t%s\t%s\t%d\t%.3f\t%.3f\t%.3f\t%lld\t%.3f\t%.3f\t%s\n",
                   static_cast<long long>(t.length), static_cast<long long>(t.context_tokens),
                   t.depth, opts.modes[m].name.c_str(), t.needle.code.c_str(), t.correct[m] ? 1 : 0,
                   a.context_keys_read, t.prefill_s, t.build_s, static_cast<long long>(a.generated),
                   a.ttft_s, a.total_s, OneLine(a.text).c_str());
    }
    std::fflush(log);
  };
  auto trials = RunNeedleBenchmark(backend, *lm.tokenizer, opts);
  if (log != nullptr) std::fclose(log);
  if (!trials.ok()) return trials.status();
  std::printf("%s", FormatNeedleReport(*trials, opts.modes).c_str());
  return OkStatus();
}

int Main(int argc, char** argv) {
  tools::Flags flags({"qa"});
  if (Status s = flags.Parse(argc, argv); !s.ok()) {
    std::fprintf(stderr, "sqz-needle: %s\n", s.message().c_str());
    return 1;
  }
  auto threads = flags.Int("threads", 0);
  if (!threads.ok() || *threads < 0) {
    std::fprintf(stderr, "sqz-needle: --threads must be an integer >= 0\n");
    return 1;
  }
  if (*threads > 0) omp_set_num_threads(static_cast<int>(*threads));
  const std::string path = flags.Get("model", gguf::DefaultModelPath());
  auto lm = LoadModel(path);
  if (!lm.ok()) {
    std::fprintf(stderr, "sqz-needle: %s\n", lm.status().message().c_str());
    return 1;
  }
  CpuBackendOptions bo;
  bo.kv_blocks = (lm->model->config.max_positions + kKvBlockTokens - 1) / kKvBlockTokens + 1;
  auto backend = CpuBackend::Create(*lm->model, bo);
  if (!backend.ok()) {
    std::fprintf(stderr, "sqz-needle: %s\n", backend.status().message().c_str());
    return 1;
  }
  std::fprintf(stderr, "model %s (%s), %d OpenMP threads\n", lm->name.c_str(), path.c_str(),
               omp_get_max_threads());
  const bool qa = flags.Bool("qa");
  Status s = qa ? RunQa(flags, *lm, **backend) : RunBench(flags, *lm, **backend);
  if (!s.ok()) {
    std::fprintf(stderr, "sqz-needle: %s\n", s.message().c_str());
    return qa && s.code() == StatusCode::kFailedPrecondition ? 2 : 1;
  }
  return 0;
}

}  // namespace
}  // namespace sqz::needle

int main(int argc, char** argv) { return sqz::needle::Main(argc, argv); }
