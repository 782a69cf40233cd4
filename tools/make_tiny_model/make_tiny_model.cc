// sqz-make-tiny-model: writes a random Llama-family model directory in the Hugging Face layout
// (config.json, model.safetensors or shards, tokenizer.json, tokenizer_config.json,
// generation_config.json), deterministic for a seed. Used by tests and benchmarks.
//
//   sqz-make-tiny-model --out DIR [--arch llama|mistral|qwen2] [--hidden 64] [--intermediate N]
//       [--layers 2] [--heads 4] [--kv-heads 4] [--head-dim hidden/heads] [--vocab 512]
//       [--max-positions 2048] [--rope-theta 10000] [--rope-scaling none|llama3|linear]
//       [--rope-factor 8] [--qkv-bias] [--untied] [--dtype f32|bf16|f16] [--shards 1] [--seed 1]
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/model/hf_writer.h"
#include "tools/generate/flags.h"
#include "tools/make_tiny_model/tiny_tokenizer.h"

namespace sqz::tools {
namespace {

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return InternalError("cannot write " + path);
  return OkStatus();
}

Status Run(int argc, char** argv) {
  Flags flags({"qkv-bias", "untied"});
  SQZ_RETURN_IF_ERROR(flags.Parse(argc, argv));
  const std::string out = flags.Get("out");
  if (out.empty()) return InvalidArgumentError("--out DIR is required");
  ModelConfig c;
  c.architecture = flags.Get("arch", "llama");
  SQZ_ASSIGN_OR_RETURN(c.hidden, flags.Int("hidden", 64));
  SQZ_ASSIGN_OR_RETURN(c.layers, flags.Int("layers", 2));
  SQZ_ASSIGN_OR_RETURN(c.q_heads, flags.Int("heads", 4));
  SQZ_ASSIGN_OR_RETURN(c.kv_heads, flags.Int("kv-heads", c.q_heads));
  SQZ_ASSIGN_OR_RETURN(c.head_dim, flags.Int("head-dim", c.q_heads > 0 ? c.hidden / c.q_heads : 0));
  SQZ_ASSIGN_OR_RETURN(c.intermediate, flags.Int("intermediate", (c.hidden * 8 / 3 + 7) / 8 * 8));
  SQZ_ASSIGN_OR_RETURN(c.vocab, flags.Int("vocab", 512));
  SQZ_ASSIGN_OR_RETURN(c.max_positions, flags.Int("max-positions", 2048));
  SQZ_ASSIGN_OR_RETURN(double theta, flags.Double("rope-theta", 10000.0));
  c.rope.theta = static_cast<float>(theta);
  const std::string scaling = flags.Get("rope-scaling", "none");
  SQZ_ASSIGN_OR_RETURN(double factor, flags.Double("rope-factor", 8.0));
  if (scaling == "llama3") {
    c.rope.llama3_factor = static_cast<float>(factor);
    // Small original context so that tiny models exercise all three llama3 bands.
    SQZ_ASSIGN_OR_RETURN(c.rope.llama3_original_max_positions,
                         flags.Int("rope-original-max-positions", 64));
  } else if (scaling == "linear") {
    c.rope.linear_factor = static_cast<float>(factor);
  } else if (scaling != "none") {
    return InvalidArgumentError("--rope-scaling must be none, llama3 or linear, got " + scaling);
  }
  c.qkv_bias = flags.Bool("qkv-bias") || c.architecture == "qwen2";
  c.tie_embeddings = !flags.Bool("untied");
  c.bos_id = 1;
  c.eos_ids = {2};
  c.rms_eps = 1e-5f;
  const std::string dtype_name = flags.Get("dtype", "f32");
  TensorDType dtype;
  if (dtype_name == "f32") {
    dtype = TensorDType::kF32;
  } else if (dtype_name == "bf16") {
    dtype = TensorDType::kBF16;
  } else if (dtype_name == "f16") {
    dtype = TensorDType::kF16;
  } else {
    return InvalidArgumentError("--dtype must be f32, bf16 or f16, got " + dtype_name);
  }
  SQZ_ASSIGN_OR_RETURN(int64_t shards, flags.Int("shards", 1));
  SQZ_ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 1));
  SQZ_RETURN_IF_ERROR(flags.CheckAllUsed());
  SQZ_RETURN_IF_ERROR(c.Validate());
  SQZ_ASSIGN_OR_RETURN(std::string tokenizer, TinyTokenizerJson(c.vocab));

  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) return InternalError("cannot create " + out + ": " + ec.message());
  Model model(c, RandomWeights(c, static_cast<uint64_t>(seed)));
  SQZ_RETURN_IF_ERROR(SaveHfModel(model, out, dtype, static_cast<int>(shards)));
  SQZ_RETURN_IF_ERROR(WriteText(out + "/tokenizer.json", tokenizer));
  SQZ_RETURN_IF_ERROR(WriteText(out + "/tokenizer_config.json", TinyTokenizerConfigJson()));
  SQZ_RETURN_IF_ERROR(WriteText(out + "/generation_config.json",
                                "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2\n}\n"));
  std::printf("wrote %s: %s, %lld parameters, %s\n", out.c_str(), c.architecture.c_str(),
              static_cast<long long>(c.ParameterCount()), dtype_name.c_str());
  return OkStatus();
}

}  // namespace
}  // namespace sqz::tools

int main(int argc, char** argv) {
  sqz::Status s = sqz::tools::Run(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "sqz-make-tiny-model: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
