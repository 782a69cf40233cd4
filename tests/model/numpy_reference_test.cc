// Logits of the CPU backend against tests/model/reference_llama.py (an independent numpy float64
// reference) on random models written by sqz-make-tiny-model: MHA, GQA, MQA, q/k/v bias, tied and
// untied, llama3 and linear RoPE scaling, explicit head_dim, F32/BF16/F16, sharded files. At every
// one of 64 positions: max |diff| <= 1e-4 * max |logit|.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "engine/model/testing/temp_dir.h"

namespace sqz {
namespace {

const std::string kPython = std::string(SQZ_SOURCE_DIR) + "/.venv/bin/python";
const std::string kReference = std::string(SQZ_SOURCE_DIR) + "/tests/model/reference_llama.py";
const std::string kMakeTiny =
    std::string(SQZ_BINARY_DIR) + "/tools/make_tiny_model/sqz-make-tiny-model";

struct Case {
  const char* name;
  const char* flags;
};

const Case kCases[] = {
    {"mha_tied_f32", "--hidden 48 --layers 2 --heads 4 --kv-heads 4 --vocab 300 --dtype f32"},
    {"gqa_bias_untied_f32",
     "--hidden 64 --layers 3 --heads 8 --kv-heads 2 --vocab 333 --qkv-bias --untied --dtype f32"},
    {"gqa_llama3_headdim_bf16",
     "--hidden 64 --layers 2 --heads 6 --kv-heads 3 --head-dim 16 --vocab 301 "
     "--rope-scaling llama3 --rope-factor 8 --rope-theta 500000 --dtype bf16 --seed 7"},
    {"qwen2_linear_f16_sharded",
     "--arch qwen2 --hidden 40 --layers 3 --heads 5 --kv-heads 1 --vocab 310 "
     "--rope-scaling linear --rope-factor 4 --dtype f16 --shards 2 --untied --seed 3"},
    {"mqa_untied_bf16",
     "--hidden 32 --layers 2 --heads 4 --kv-heads 1 --intermediate 96 --vocab 300 --untied "
     "--dtype bf16 --seed 11"},
};

std::vector<double> ReadDoubles(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  REQUIRE(in);
  const auto bytes = in.tellg();
  std::vector<double> v(bytes / sizeof(double));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), bytes);
  return v;
}

TEST_CASE("CPU backend logits match the numpy reference on random models") {
  if (!std::filesystem::exists(kPython)) {
    WARN("skipped: " << kPython << " not found (run scripts/install_deps.sh)");
    return;
  }
  REQUIRE(std::filesystem::exists(kMakeTiny));
  const int64_t positions = 64;
  for (const Case& c : kCases) {
    INFO("model " << c.name << ": " << c.flags);
    testing::TempDir dir;
    const std::string model_dir = dir.File("model");
    const std::string make =
        kMakeTiny + " --out " + model_dir + " " + c.flags + " > " + dir.File("make.log") + " 2>&1";
    REQUIRE(std::system(make.c_str()) == 0);
    auto model = LoadHfModel(model_dir);
    REQUIRE(model.ok());
    const int64_t vocab = (*model)->config.vocab;

    std::mt19937 gen(static_cast<uint32_t>(std::hash<std::string>()(c.name)));
    std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab) - 1);
    std::vector<int32_t> tokens(positions);
    std::string csv;
    for (int32_t& t : tokens) {
      t = u(gen);
      csv += (csv.empty() ? "" : ",") + std::to_string(t);
    }
    const std::string ref_path = dir.File("ref.f64");
    const std::string run = kPython + " " + kReference + " --model " + model_dir + " --tokens " +
                            csv + " --out " + ref_path + " > " + dir.File("ref.log") + " 2>&1";
    const int rc = std::system(run.c_str());
    if (rc != 0) {
      std::ifstream log(dir.File("ref.log"));
      std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
      FAIL("reference_llama.py failed: " << text);
    }
    const std::vector<double> ref = ReadDoubles(ref_path);
    REQUIRE(static_cast<int64_t>(ref.size()) == positions * vocab);

    // Ours, prefilled in uneven chunks (chunk invariance makes this the same as one chunk).
    auto backend = CpuBackend::Create(**model, CpuBackendOptions{8}).value();
    SeqId seq = backend->AddSequence().value();
    std::vector<float> ours(positions * vocab);
    for (int64_t done = 0, chunk = 1; done < positions; done += chunk, chunk = chunk * 2 + 1) {
      chunk = std::min(chunk, positions - done);
      StepInput in{seq, {tokens.data() + done, static_cast<size_t>(chunk)}, nullptr, true};
      REQUIRE(backend->Forward({&in, 1}, ours.data() + done * vocab).ok());
    }
    double worst_ratio = 0.0;
    for (int64_t p = 0; p < positions; ++p) {
      double max_abs = 0.0, max_diff = 0.0;
      for (int64_t i = 0; i < vocab; ++i) {
        const double want = ref[p * vocab + i];
        max_abs = std::max(max_abs, std::fabs(want));
        max_diff = std::max(max_diff, std::fabs(ours[p * vocab + i] - want));
        REQUIRE(std::isfinite(ours[p * vocab + i]));
      }
      INFO("position " << p << ": max |diff| " << max_diff << ", max |logit| " << max_abs);
      REQUIRE(max_abs > 0.1);  // a degenerate model would prove nothing
      CHECK(max_diff <= 1e-4 * max_abs);
      worst_ratio = std::max(worst_ratio, max_diff / max_abs);
    }
    WARN(c.name << ": worst max|diff| / max|logit| over " << positions
                << " positions = " << worst_ratio);
  }
}

}  // namespace
}  // namespace sqz
