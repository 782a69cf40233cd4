// sqz-generate: generates text from a Hugging Face model directory on the CPU backend, streaming
// tokens as they come (like llama.cpp's CLI), then prints prompt and generation speed to stderr.
//
//   sqz-generate --model DIR --prompt TEXT [-n|--max-tokens 128] [--temperature 0.8] [--top-k 40]
//       [--top-p 0.95] [--min-p 0] [--repetition-penalty 1] [--presence-penalty 0]
//       [--frequency-penalty 0] [--seed 0] [--stop STR] [--ignore-eos] [--no-bos]
//       [--kv-blocks N] [--prefill-chunk 512]
#include <cstdio>
#include <string>

#include "engine/model/cpu_backend.h"
#include "engine/model/generate.h"
#include "engine/model/hf_loader.h"
#include "tools/generate/flags.h"

namespace sqz::tools {
namespace {

Status Run(int argc, char** argv) {
  // Accept the llama.cpp spelling "-n N".
  std::vector<char*> args(argv, argv + argc);
  std::string n_flag = "--max-tokens";
  for (char*& a : args) {
    if (std::string(a) == "-n") a = n_flag.data();
  }
  Flags flags({"ignore-eos", "no-bos"});
  SQZ_RETURN_IF_ERROR(flags.Parse(static_cast<int>(args.size()), args.data()));
  const std::string dir = flags.Get("model");
  if (dir.empty()) return InvalidArgumentError("--model DIR is required");
  const std::string prompt = flags.Get("prompt");
  SamplingParams p;
  SQZ_ASSIGN_OR_RETURN(int64_t max_tokens, flags.Int("max-tokens", 128));
  p.max_tokens = static_cast<int32_t>(max_tokens);
  SQZ_ASSIGN_OR_RETURN(double temperature, flags.Double("temperature", 0.8));
  p.temperature = static_cast<float>(temperature);
  SQZ_ASSIGN_OR_RETURN(int64_t top_k, flags.Int("top-k", 40));
  p.top_k = static_cast<int32_t>(top_k);
  SQZ_ASSIGN_OR_RETURN(double top_p, flags.Double("top-p", 0.95));
  p.top_p = static_cast<float>(top_p);
  SQZ_ASSIGN_OR_RETURN(double min_p, flags.Double("min-p", 0.0));
  p.min_p = static_cast<float>(min_p);
  SQZ_ASSIGN_OR_RETURN(double rep, flags.Double("repetition-penalty", 1.0));
  p.repetition_penalty = static_cast<float>(rep);
  SQZ_ASSIGN_OR_RETURN(double presence, flags.Double("presence-penalty", 0.0));
  p.presence_penalty = static_cast<float>(presence);
  SQZ_ASSIGN_OR_RETURN(double frequency, flags.Double("frequency-penalty", 0.0));
  p.frequency_penalty = static_cast<float>(frequency);
  SQZ_ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 0));
  p.seed = static_cast<uint64_t>(seed);
  if (flags.Has("stop")) p.stop = {flags.Get("stop")};
  p.ignore_eos = flags.Bool("ignore-eos");
  const bool no_bos = flags.Bool("no-bos");
  SQZ_ASSIGN_OR_RETURN(int64_t kv_blocks, flags.Int("kv-blocks", 0));
  SQZ_ASSIGN_OR_RETURN(int64_t chunk, flags.Int("prefill-chunk", 512));
  SQZ_RETURN_IF_ERROR(flags.CheckAllUsed());
  SQZ_RETURN_IF_ERROR(p.Validate());

  SQZ_ASSIGN_OR_RETURN(auto model, LoadHfModel(dir));
  SQZ_ASSIGN_OR_RETURN(auto tok, Tokenizer::FromHfDirectory(dir));
  GenerationRequest req;
  req.prompt = tok->Encode(prompt, !no_bos && tok->bos_id() >= 0);
  if (req.prompt.empty()) return InvalidArgumentError("the prompt encodes to no tokens");
  req.sampling = p;
  CpuBackendOptions opts;
  // Default: room for the prompt and the completion, capped by max_positions.
  const int64_t need =
      std::min<int64_t>(req.prompt.size() + p.max_tokens, model->config.max_positions);
  opts.kv_blocks = kv_blocks > 0 ? kv_blocks : (need + kKvBlockTokens - 1) / kKvBlockTokens;
  SQZ_ASSIGN_OR_RETURN(auto backend, CpuBackend::Create(*model, opts));

  GenerateOptions gen;
  gen.tokenizer = tok.get();
  gen.eos_ids = tok->model().eos_ids;
  gen.prefill_chunk = chunk;
  gen.on_token = [](size_t, int32_t, std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  SQZ_ASSIGN_OR_RETURN(auto results, Generate(*backend, {&req, 1}, gen));
  const GenerationResult& r = results[0];
  std::printf("\n");
  const double decode_s = r.total_s - r.time_to_first_token_s;
  const int64_t decoded = std::max<int64_t>(static_cast<int64_t>(r.tokens.size()) - 1, 0);
  std::fprintf(stderr,
               "\nprompt: %lld tokens in %.3f s (%.1f tokens/s)\n"
               "generation: %zu tokens, finish %s; %.1f tokens/s after the first\n",
               static_cast<long long>(r.prompt_tokens), r.time_to_first_token_s,
               r.prompt_tokens / std::max(r.time_to_first_token_s, 1e-9), r.tokens.size(),
               r.finish_reason.c_str(), decoded / std::max(decode_s, 1e-9));
  return OkStatus();
}

}  // namespace
}  // namespace sqz::tools

int main(int argc, char** argv) {
  sqz::Status s = sqz::tools::Run(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "sqz-generate: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
