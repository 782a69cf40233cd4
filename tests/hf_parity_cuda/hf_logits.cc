// sqz-hf-logits: loads a Hugging Face model directory with engine/model's hf_loader, runs the given
// token ids through one of our backends and writes the logits of every position as raw fp32, for
// hf_parity_cuda.py to compare with transformers.
//
// Usage: sqz-hf-logits --model DIR --ids FILE --out PREFIX [--backend cuda|cpu] [--dtype bf16,fp32]
//                      [--prefill N]
//   --ids      raw little-endian int32 token ids (n of them)
//   --prefill  the first N ids go through one prefill step with logits for every position; the rest
//              are fed one per step (decode, teacher-forced), so both paths are compared
//              (default: n - 64, at least 1)
//   --dtype    comma-separated CudaBackend dtypes to run (cuda only); each writes
//   PREFIX.<dtype>.f32
//              ([n][vocab] fp32); the cpu backend writes PREFIX.cpu.f32
// Prints one line per run: load and step times. Exit status 1 with a message on any error.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/model/backend.h"
#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#if SQZ_HF_LOGITS_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace sqz {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

StatusOr<std::vector<int32_t>> ReadIds(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return NotFoundError("cannot open --ids file " + path);
  const std::streamsize bytes = in.tellg();
  if (bytes <= 0 || bytes % 4 != 0) {
    return InvalidArgumentError("--ids file " + path + " must hold a positive number of int32");
  }
  std::vector<int32_t> ids(bytes / 4);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(ids.data()), bytes);
  if (!in) return DataLossError("short read of " + path);
  return ids;
}

Status WriteFloats(const std::string& path, const std::vector<float>& v) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return InternalError("cannot create " + path);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  if (!out) return InternalError("short write of " + path);
  return OkStatus();
}

// Runs ids through `backend`: one prefill step of `prefill` tokens (all logits), then one step per
// remaining token. Returns [ids.size()][vocab] logits.
StatusOr<std::vector<float>> RunIds(Backend& backend, const std::vector<int32_t>& ids,
                                    int64_t prefill) {
  const int64_t vocab = backend.config().vocab;
  std::vector<float> logits(ids.size() * vocab);
  SQZ_ASSIGN_OR_RETURN(SeqId seq, backend.AddSequence());
  StepInput in;
  in.seq = seq;
  in.tokens = std::span<const int32_t>(ids.data(), prefill);
  in.all_logits = true;
  SQZ_RETURN_IF_ERROR(backend.Forward(std::span<const StepInput>(&in, 1), logits.data()));
  for (size_t t = prefill; t < ids.size(); ++t) {
    in.tokens = std::span<const int32_t>(ids.data() + t, 1);
    in.all_logits = false;
    SQZ_RETURN_IF_ERROR(
        backend.Forward(std::span<const StepInput>(&in, 1), logits.data() + t * vocab));
  }
  SQZ_RETURN_IF_ERROR(backend.FreeSequence(seq));
  return logits;
}

int64_t BlocksFor(size_t tokens) {
  return static_cast<int64_t>((tokens + kKvBlockTokens - 1) / kKvBlockTokens) + 1;
}

Status Main(int argc, char** argv) {
  std::string model_dir, ids_path, out, backend_name = "cuda", dtypes = "bf16";
  int64_t prefill = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return InvalidArgumentError("flag " + a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--model") {
      model_dir = v;
    } else if (a == "--ids") {
      ids_path = v;
    } else if (a == "--out") {
      out = v;
    } else if (a == "--backend") {
      backend_name = v;
    } else if (a == "--dtype") {
      dtypes = v;
    } else if (a == "--prefill") {
      prefill = std::stoll(v);
    } else {
      return InvalidArgumentError("unknown flag " + a);
    }
  }
  if (model_dir.empty() || ids_path.empty() || out.empty()) {
    return InvalidArgumentError("--model, --ids and --out are required");
  }
  SQZ_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ReadIds(ids_path));
  const int64_t n = static_cast<int64_t>(ids.size());
  if (prefill < 0) prefill = std::max<int64_t>(1, n - 64);
  if (prefill < 1 || prefill > n) {
    return InvalidArgumentError("--prefill must be in [1, " + std::to_string(n) + "]");
  }
  auto t0 = Clock::now();
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadHfModel(model_dir));
  std::printf("loaded %s in %.2f s (vocab %lld, hidden %lld, layers %lld)\n", model_dir.c_str(),
              Seconds(t0), static_cast<long long>(model->config.vocab),
              static_cast<long long>(model->config.hidden),
              static_cast<long long>(model->config.layers));
  if (backend_name == "cpu") {
    CpuBackendOptions o;
    o.kv_blocks = BlocksFor(ids.size());
    SQZ_ASSIGN_OR_RETURN(auto backend, CpuBackend::Create(*model, o));
    t0 = Clock::now();
    SQZ_ASSIGN_OR_RETURN(std::vector<float> logits, RunIds(*backend, ids, prefill));
    std::printf("cpu: %lld positions in %.2f s\n", static_cast<long long>(n), Seconds(t0));
    return WriteFloats(out + ".cpu.f32", logits);
  }
  if (backend_name != "cuda") {
    return InvalidArgumentError("--backend must be cuda or cpu, got " + backend_name);
  }
#if SQZ_HF_LOGITS_CUDA
  std::stringstream list(dtypes);
  for (std::string dtype; std::getline(list, dtype, ',');) {
    CudaBackendOptions o;
    if (dtype == "bf16") {
      o.dtype = CudaDType::kBf16;
    } else if (dtype == "fp32") {
      o.dtype = CudaDType::kF32;
    } else {
      return InvalidArgumentError("--dtype entries must be bf16 or fp32, got " + dtype);
    }
    o.kv_blocks = BlocksFor(ids.size());
    o.max_step_tokens = std::max<int64_t>(prefill, 16);
    t0 = Clock::now();
    SQZ_ASSIGN_OR_RETURN(auto backend, CudaBackend::Create(*model, o));
    const double upload = Seconds(t0);
    t0 = Clock::now();
    SQZ_ASSIGN_OR_RETURN(std::vector<float> logits, RunIds(*backend, ids, prefill));
    std::printf("cuda %s: upload %.2f s, %lld positions in %.2f s\n", dtype.c_str(), upload,
                static_cast<long long>(n), Seconds(t0));
    SQZ_RETURN_IF_ERROR(WriteFloats(out + "." + dtype + ".f32", logits));
  }
  return OkStatus();
#else
  return UnimplementedError("this build has no CUDA backend (use --backend cpu)");
#endif
}

}  // namespace
}  // namespace sqz

int main(int argc, char** argv) {
  const sqz::Status s = sqz::Main(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "sqz-hf-logits: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
