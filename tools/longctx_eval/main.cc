// sqz-longctx-eval: exact-match accuracy of the longctx model, dense against Squeezed Attention
// (KV budgets 0.5 / 0.25 / 0.125 / 0.0625, flat and hierarchical) on the CPU backend or, in a
// build with the CUDA backend, on the GPU.
//
//   sqz-longctx-eval --eval-set FILE.jsonl [--model models/longctx] [--lengths 1k,16k]
//                    [--docs N] [--max-tokens 8] [--threads N] [--log FILE]
//                    [--backend cpu|cuda] [--cuda-dtype bf16|fp32]
//                    [--budgets 0.5,0.25,0.125,0.0625] [--flat-only] [--block-size 64]
//                    [--gqa-reduce max|mean] [--sink-tokens 4] [--observation-window 100]
//                    [--kmeans-iterations 20]
//
// FILE.jsonl comes from train/eval_set.py. --lengths keeps only documents of those nominal
// lengths, --docs the first N documents of each length, --max-tokens the answer tokens at most (a
// question whose expected answer needs more gets that: longctx::AnswerBudget, so eval sets with
// restated answers, train/eval_set.py --answer-format restate, need no flag). Progress goes to
// stderr, one line per document; --log appends one tab-separated line per (question, mode) as
// documents finish. The markdown report goes to stdout. Exit status 0 on success (any accuracy),
// 1 on an error. --budgets, --flat-only, --block-size and --gqa-reduce pick the squeezed modes
// (longctx::ModeSet); --sink-tokens, --observation-window and --kmeans-iterations the snapshot
// (SqueezeOptions); all default to the server's defaults.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>

#include "engine/model/cpu_backend.h"
#if SQZ_WITH_CUDA_BACKEND
#include "engine/cuda/cuda_backend.h"
#endif
#include "engine/model/hf_loader.h"
#include "engine/runtime/loaded_model.h"
#include "tools/generate/flags.h"
#include "tools/longctx_eval/longctx_eval.h"

namespace sqz::longctx {
namespace {

// --backend and --cuda-dtype, checked before any file is read.
Status CheckBackendFlags(const std::string& name, const std::string& cuda_dtype) {
  if (name != "cpu" && name != "cuda") {
    return InvalidArgumentError("--backend must be cpu or cuda, got '" + name + "'");
  }
  if (name == "cpu" && !cuda_dtype.empty()) {
    return InvalidArgumentError("--cuda-dtype needs --backend cuda");
  }
  if (!cuda_dtype.empty() && cuda_dtype != "bf16" && cuda_dtype != "fp32") {
    return InvalidArgumentError("--cuda-dtype must be bf16 or fp32, got '" + cuda_dtype + "'");
  }
#if !SQZ_WITH_CUDA_BACKEND
  if (name == "cuda") {
    return UnimplementedError("--backend cuda: this build has no CUDA backend (configure with "
                              "nvcc present, or -DSQZ_CUDA=ON)");
  }
#endif
  return OkStatus();
}

// The backend of checked flags, with a KV pool for one longest sequence of the model (the
// context's prefill, then one question at a time).
StatusOr<std::unique_ptr<Backend>> MakeBackend(const Model& model, const std::string& name,
                                               const std::string& cuda_dtype) {
  const int64_t blocks = (model.config.max_positions + kKvBlockTokens - 1) / kKvBlockTokens + 1;
#if SQZ_WITH_CUDA_BACKEND
  if (name == "cuda") {
    CudaBackendOptions bo;
    bo.dtype = cuda_dtype == "fp32" ? CudaDType::kF32 : CudaDType::kBf16;
    bo.kv_blocks = blocks;
    SQZ_ASSIGN_OR_RETURN(auto backend, CudaBackend::Create(model, bo));
    return std::unique_ptr<Backend>(std::move(backend));
  }
#endif
  (void)name;
  (void)cuda_dtype;
  CpuBackendOptions bo;
  bo.kv_blocks = blocks;
  SQZ_ASSIGN_OR_RETURN(auto backend, CpuBackend::Create(model, bo));
  return std::unique_ptr<Backend>(std::move(backend));
}

// --budgets, --flat-only, --block-size, --gqa-reduce.
StatusOr<ModeSet> ModeSetFlags(tools::Flags& flags) {
  ModeSet set;
  if (const std::string b = flags.Get("budgets"); !b.empty()) {
    set.budgets.clear();
    size_t start = 0;
    while (start <= b.size()) {
      const size_t comma = std::min(b.find(',', start), b.size());
      const std::string item = b.substr(start, comma - start);
      char* end = nullptr;
      const double x = std::strtod(item.c_str(), &end);
      if (item.empty() || *end != '\0' || !(x > 0.0 && x <= 1.0)) {
        return InvalidArgumentError("--budgets: want KV budgets in (0, 1] separated by commas "
                                    "(0.5,0.125), got '" + item + "'");
      }
      set.budgets.push_back(x);
      start = comma + 1;
    }
  }
  set.hierarchical = !flags.Bool("flat-only");
  SQZ_ASSIGN_OR_RETURN(set.block_size, flags.Int("block-size", set.block_size));
  const std::string gqa = flags.Get("gqa-reduce", "max");
  if (gqa != "max" && gqa != "mean") {
    return InvalidArgumentError("--gqa-reduce must be max or mean, got '" + gqa + "'");
  }
  set.gqa_reduce = gqa == "mean" ? GqaReduce::kMean : GqaReduce::kMax;
  return set;
}

Status Run(tools::Flags& flags) {
  SQZ_ASSIGN_OR_RETURN(int64_t threads, flags.Int("threads", 0));
  if (threads < 0) return InvalidArgumentError("--threads must be >= 0");
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  const std::string model_path =
      flags.Get("model", std::string(SQZ_SOURCE_DIR) + "/models/longctx");
  const std::string set_path = flags.Get("eval-set");
  if (set_path.empty()) return InvalidArgumentError("--eval-set FILE.jsonl is required");
  std::set<int64_t> lengths;
  if (const std::string l = flags.Get("lengths"); !l.empty()) {
    SQZ_ASSIGN_OR_RETURN(auto parsed, needle::ParseLengths(l));
    lengths.insert(parsed.begin(), parsed.end());
  }
  SQZ_ASSIGN_OR_RETURN(int64_t max_docs, flags.Int("docs", 0));
  SQZ_ASSIGN_OR_RETURN(int64_t max_tokens, flags.Int("max-tokens", 8));
  const std::string log_path = flags.Get("log");
  const std::string backend_name = flags.Get("backend", "cpu");
  const std::string cuda_dtype = flags.Get("cuda-dtype");
  EvalOptions opts;
  SQZ_ASSIGN_OR_RETURN(ModeSet mode_set, ModeSetFlags(flags));
  SQZ_ASSIGN_OR_RETURN(opts.modes, LongctxModes(mode_set));
  SQZ_ASSIGN_OR_RETURN(opts.squeeze.sink_tokens,
                       flags.Int("sink-tokens", opts.squeeze.sink_tokens));
  SQZ_ASSIGN_OR_RETURN(opts.squeeze.observation_window,
                       flags.Int("observation-window", opts.squeeze.observation_window));
  SQZ_ASSIGN_OR_RETURN(int64_t kmeans_iterations,
                       flags.Int("kmeans-iterations", opts.squeeze.kmeans_iterations));
  opts.squeeze.kmeans_iterations = static_cast<int32_t>(kmeans_iterations);
  SQZ_RETURN_IF_ERROR(opts.squeeze.Validate());
  SQZ_RETURN_IF_ERROR(flags.CheckAllUsed());
  SQZ_RETURN_IF_ERROR(CheckBackendFlags(backend_name, cuda_dtype));

  SQZ_ASSIGN_OR_RETURN(std::string text, ReadTextFile(set_path));
  SQZ_ASSIGN_OR_RETURN(auto all, ParseEvalSet(text));
  std::vector<EvalDocument> docs;
  std::map<int64_t, int64_t> taken;
  for (EvalDocument& d : all) {
    if (!lengths.empty() && !lengths.count(d.length)) continue;
    if (max_docs > 0 && taken[d.length] >= max_docs) continue;
    taken[d.length] += 1;
    docs.push_back(std::move(d));
  }
  if (docs.empty()) return InvalidArgumentError("no documents of the requested lengths");

  SQZ_ASSIGN_OR_RETURN(LoadedModel lm, LoadModel(model_path));
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                       MakeBackend(*lm.model, backend_name, cuda_dtype));
  const std::string backend_label =
      backend_name == "cuda" ? "CUDA backend, " + (cuda_dtype.empty() ? "bf16" : cuda_dtype)
                             : "CPU backend";
  std::fprintf(stderr, "model %s, %zu documents, %s, %d OpenMP threads\n", model_path.c_str(),
               docs.size(), backend_label.c_str(), omp_get_max_threads());

  std::FILE* log = nullptr;
  if (!log_path.empty()) {
    log = std::fopen(log_path.c_str(), "a");
    if (log == nullptr) return InvalidArgumentError("cannot open --log " + log_path);
  }
  opts.max_tokens = static_cast<int32_t>(max_tokens);
  opts.on_document = [&](const EvalDocument& d, const DocumentResult& r) {
    std::vector<int64_t> ok(opts.modes.size(), 0);
    for (const QuestionResult& q : r.questions) {
      for (size_t m = 0; m < q.correct.size(); ++m) ok[m] += q.correct[m] ? 1 : 0;
    }
    std::string per_mode;
    for (size_t m = 0; m < ok.size(); ++m) {
      per_mode += " " + opts.modes[m].name + "=" + std::to_string(ok[m]);
    }
    std::fprintf(stderr,
                 "length %lld seed %llu (%lld tokens): prefill %.1f s, snapshot %.2f s,"
                 " %zu questions, correct:%s\n",
                 static_cast<long long>(d.length), static_cast<unsigned long long>(d.seed),
                 static_cast<long long>(r.context_tokens), r.prefill_s, r.build_s,
                 r.questions.size(), per_mode.c_str());
    if (log == nullptr) return;
    for (const QuestionResult& q : r.questions) {
      const EvalQuestion& eq = d.questions[q.question];
      for (size_t m = 0; m < q.answers.size(); ++m) {
        std::fprintf(log, "%lld\t%llu\t%lld\t%s\t%.3f\t%s\t%s\t%s\t%d\t%.3f\t%s\n",
                     static_cast<long long>(d.length), static_cast<unsigned long long>(d.seed),
                     static_cast<long long>(r.context_tokens), eq.kind.c_str(), eq.depth,
                     opts.modes[m].name.c_str(), needle::OneLine(eq.question).c_str(), eq.answer.c_str(),
                     q.correct[m] ? 1 : 0, q.answers[m].context_keys_read,
                     needle::OneLine(q.answers[m].text).c_str());
      }
    }
    std::fflush(log);
  };
  auto results = EvaluateAll(*backend, *lm.tokenizer, docs, opts);
  if (log != nullptr) std::fclose(log);
  if (!results.ok()) return results.status();
  std::printf("%s", FormatReport(docs, *results, opts.modes, backend_label).c_str());
  return OkStatus();
}

}  // namespace
}  // namespace sqz::longctx

int main(int argc, char** argv) {
  sqz::tools::Flags flags({"flat-only"});
  sqz::Status s = flags.Parse(argc, argv);
  if (s.ok()) s = sqz::longctx::Run(flags);
  if (!s.ok()) {
    std::fprintf(stderr, "sqz-longctx-eval: %s\n", s.message().c_str());
    return 1;
  }
  return 0;
}
