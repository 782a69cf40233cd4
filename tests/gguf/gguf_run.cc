// sqz-gguf-run: loads a GGUF model with engine/gguf and runs it on the CPU backend. Used by the
// tests in tests/gguf, by tests/gguf/hf_parity.py (logits and token ids as .npy, tokenization of
// many strings) and to measure load time and CPU speed (docs/benchmarks/gguf.md).
//
//   sqz-gguf-run [--model PATH] --chat TEXT [--system TEXT] [-n N]   chat template + greedy
//   sqz-gguf-run [--model PATH] --prompt TEXT [-n N] [--ignore-eos]   raw prompt + greedy
//   sqz-gguf-run [--model PATH] (--prompt TEXT | --prompt-ids 1,2,3) --dump-logits OUT.npy
//                [--dump-ids IDS.npy]        logits of every prompt position, [n][vocab] float32
//   sqz-gguf-run [--model PATH] --tokenize-jsonl IN OUT
//       IN: one JSON string per line; OUT: one JSON array of ids per line (no BOS, specials
//       parsed, as Hugging Face's encode(text, add_special_tokens=False)).
// The default model is scripts/fetch_model.sh's. Generated text goes to stdout, measurements to
// stderr. Exit status 1 with a message on any error.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/chat/chat_template.h"
#include "engine/gguf/gguf_model.h"
#include "engine/gguf/model_cache.h"
#include "engine/model/cpu_backend.h"
#include "engine/model/generate.h"

namespace sqz {
namespace {

struct Args {
  std::string model = gguf::DefaultModelPath();
  std::string chat, system, prompt, prompt_ids, dump_logits, dump_ids, tok_in, tok_out;
  bool has_system = false;
  bool ignore_eos = false;
  int n = 64;
};

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Writes a little-endian .npy file of `shape` with dtype descr ("<f4", "<i4").
Status WriteNpy(const std::string& path, const std::string& descr, std::vector<int64_t> shape,
                const void* data, size_t bytes) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&len), 2);
  f << header;
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  f.close();
  return f ? OkStatus() : InvalidArgumentError("cannot write " + path);
}

StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> StatusOr<std::string> {
      if (i + 1 >= argc) return InvalidArgumentError(flag + " needs a value");
      return std::string(argv[++i]);
    };
    std::string* target = flag == "--model"         ? &a.model
                          : flag == "--chat"        ? &a.chat
                          : flag == "--system"      ? &a.system
                          : flag == "--prompt"      ? &a.prompt
                          : flag == "--prompt-ids"  ? &a.prompt_ids
                          : flag == "--dump-logits" ? &a.dump_logits
                          : flag == "--dump-ids"    ? &a.dump_ids
                                                    : nullptr;
    if (target) {
      SQZ_ASSIGN_OR_RETURN(*target, value());
      a.has_system |= flag == "--system";
    } else if (flag == "-n") {
      SQZ_ASSIGN_OR_RETURN(std::string n, value());
      a.n = std::atoi(n.c_str());
    } else if (flag == "--ignore-eos") {
      a.ignore_eos = true;
    } else if (flag == "--tokenize-jsonl") {
      SQZ_ASSIGN_OR_RETURN(a.tok_in, value());
      SQZ_ASSIGN_OR_RETURN(a.tok_out, value());
    } else {
      return InvalidArgumentError("unknown argument '" + flag +
                                  "' (see the header of gguf_run.cc)");
    }
  }
  return a;
}

Status TokenizeJsonl(const Tokenizer& tok, const std::string& in, const std::string& out) {
  std::ifstream f(in);
  if (!f) return NotFoundError("cannot read " + in);
  std::ofstream o(out);
  std::string line;
  int64_t n = 0;
  while (std::getline(f, line)) {
    nlohmann::json text;
    try {
      text = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      return InvalidArgumentError(in + " line " + std::to_string(n + 1) + ": " + e.what());
    }
    if (!text.is_string()) return InvalidArgumentError(in + ": line is not a JSON string");
    o << nlohmann::json(tok.Encode(text.get<std::string>(), false, true)).dump() << "\n";
    ++n;
  }
  o.close();
  if (!o) return InvalidArgumentError("cannot write " + out);
  std::cerr << "tokenized " << n << " strings\n";
  return OkStatus();
}

Status Run(int argc, char** argv) {
  SQZ_ASSIGN_OR_RETURN(Args a, ParseArgs(argc, argv));
  auto t0 = std::chrono::steady_clock::now();
  SQZ_ASSIGN_OR_RETURN(gguf::GgufModel g, gguf::LoadGgufModel(a.model));
  const double load_s = Seconds(t0);
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::Create(g.tokenizer));
  const ModelConfig& c = g.model->config;
  std::cerr << "loaded " << a.model << " (" << g.name << ", " << c.architecture << ", " << c.layers
            << " layers, hidden " << c.hidden << ", " << c.ParameterCount() / 1e6
            << "M parameters, " << c.torch_dtype << ") in " << load_s << " s\n";
  if (!a.tok_in.empty()) return TokenizeJsonl(*tok, a.tok_in, a.tok_out);

  std::vector<int32_t> prompt;
  if (!a.chat.empty()) {
    SQZ_ASSIGN_OR_RETURN(ChatTemplate tmpl, DetectChatTemplate(g.chat_template));
    std::vector<ChatMessage> messages;
    if (a.has_system) messages.push_back({"system", a.system});
    messages.push_back({"user", a.chat});
    SQZ_ASSIGN_OR_RETURN(std::string text, ApplyChatTemplate(tmpl, messages, true));
    prompt = tok->Encode(text, false, true);
  } else if (!a.prompt_ids.empty()) {
    std::stringstream ss(a.prompt_ids);
    for (std::string id; std::getline(ss, id, ',');) prompt.push_back(std::atoi(id.c_str()));
    SQZ_RETURN_IF_ERROR(tok->ValidateIds(prompt));
  } else if (!a.prompt.empty()) {
    prompt = tok->Encode(a.prompt, tok->add_bos(), true);
  }
  if (prompt.empty()) return InvalidArgumentError("give --chat, --prompt or --prompt-ids");

  CpuBackendOptions options;
  options.kv_blocks = (static_cast<int64_t>(prompt.size()) + a.n) / kKvBlockTokens + 2;
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> backend, CpuBackend::Create(*g.model, options));

  if (!a.dump_logits.empty()) {
    SQZ_ASSIGN_OR_RETURN(SeqId seq, backend->AddSequence());
    std::vector<float> logits(prompt.size() * c.vocab);
    StepInput in;
    in.seq = seq;
    in.tokens = prompt;
    in.all_logits = true;
    t0 = std::chrono::steady_clock::now();
    SQZ_RETURN_IF_ERROR(backend->Forward({&in, 1}, logits.data()));
    std::cerr << "prefill of " << prompt.size() << " tokens in " << Seconds(t0) << " s\n";
    SQZ_RETURN_IF_ERROR(WriteNpy(a.dump_logits, "<f4",
                                 {static_cast<int64_t>(prompt.size()), c.vocab}, logits.data(),
                                 logits.size() * 4));
    if (!a.dump_ids.empty()) {
      SQZ_RETURN_IF_ERROR(WriteNpy(a.dump_ids, "<i4", {static_cast<int64_t>(prompt.size())},
                                   prompt.data(), prompt.size() * 4));
    }
    return OkStatus();
  }

  GenerationRequest req;
  req.prompt = prompt;
  req.sampling.temperature = 0;
  req.sampling.max_tokens = a.n;
  req.sampling.ignore_eos = a.ignore_eos;
  GenerateOptions go;
  go.tokenizer = tok.get();
  go.eos_ids = g.tokenizer.eos_ids;
  go.on_token = [](size_t, int32_t, std::string_view text) { std::cout << text << std::flush; };
  SQZ_ASSIGN_OR_RETURN(std::vector<GenerationResult> results, Generate(*backend, {&req, 1}, go));
  const GenerationResult& r = results[0];
  std::cout << "\n";
  const double decode_s = r.total_s - r.time_to_first_token_s;
  std::fprintf(stderr,
               "prompt %lld tokens, time to first token %.3f s (%.1f prompt tokens/s); "
               "%zu tokens generated, %.1f tokens/s after the first; finish %s\n",
               static_cast<long long>(r.prompt_tokens), r.time_to_first_token_s,
               r.prompt_tokens / r.time_to_first_token_s, r.tokens.size(),
               r.tokens.size() > 1 ? (r.tokens.size() - 1) / decode_s : 0.0,
               r.finish_reason.c_str());
  return OkStatus();
}

}  // namespace
}  // namespace sqz

int main(int argc, char** argv) {
  sqz::Status s = sqz::Run(argc, argv);
  if (!s.ok()) {
    std::cerr << "sqz-gguf-run: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}
