#include "engine/runtime/loaded_model.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/gguf/gguf_model.h"
#include "engine/model/hf_loader.h"

namespace sqz {
namespace {

constexpr uint64_t kFingerprintVersion = 1;

// A fast 64-bit mixing hash over words (not cryptographic; detects a different model).
struct Hasher {
  uint64_t h = 0x9e3779b97f4a7c15ULL;
  void Word(uint64_t w) {
    h ^= w + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
  }
  void Bytes(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      Word(w);
    }
    uint64_t tail = 0;
    std::memcpy(&tail, p + i, n - i);
    Word(tail ^ (static_cast<uint64_t>(n) << 56));
  }
  void Floats(const std::vector<float>& v) {
    Word(v.size());
    Bytes(v.data(), v.size() * sizeof(float));
  }
  void String(const std::string& s) {
    Word(s.size());
    Bytes(s.data(), s.size());
  }
};

}  // namespace

uint64_t ModelFingerprint(const Model& m) {
  Hasher h;
  h.Word(kFingerprintVersion);
  const ModelConfig& c = m.config;
  h.String(c.architecture);
  for (int64_t v : {c.hidden, c.intermediate, c.layers, c.q_heads, c.kv_heads, c.head_dim, c.vocab,
                    c.max_positions}) {
    h.Word(static_cast<uint64_t>(v));
  }
  float floats[] = {c.rms_eps, c.rope.theta, c.rope.llama3_factor, c.rope.llama3_low_freq_factor,
                    c.rope.llama3_high_freq_factor, c.rope.linear_factor};
  h.Bytes(floats, sizeof(floats));
  h.Word(static_cast<uint64_t>(c.rope.llama3_original_max_positions));
  h.Word((c.qkv_bias ? 1 : 0) | (c.tie_embeddings ? 2 : 0));
  const ModelWeights& w = m.weights;
  h.Floats(w.embedding);
  for (const auto& l : w.layers) {
    for (const auto* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo,
                          &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      h.Floats(*t);
    }
  }
  h.Floats(w.final_norm);
  h.Floats(w.lm_head);
  return h.h;
}

std::string FingerprintHex(uint64_t f) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(f));
  return buf;
}

StatusOr<LoadedModel> LoadModel(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return NotFoundError("model not found at '" + path +
                         "' (the default model is fetched by scripts/fetch_model.sh; or set "
                         "engine.model.path to a .gguf file or a Hugging Face directory)");
  }
  LoadedModel out;
  out.path = path;
  if (fs::is_regular_file(path, ec)) {
    SQZ_ASSIGN_OR_RETURN(gguf::GgufModel g, gguf::LoadGgufModel(path));
    out.model = std::move(g.model);
    SQZ_ASSIGN_OR_RETURN(out.tokenizer, Tokenizer::Create(std::move(g.tokenizer)));
    if (!g.chat_template.empty()) {
      auto t = DetectChatTemplate(g.chat_template);
      if (t.ok()) out.chat_template = *t;
    }
    out.name = g.name.empty() ? fs::path(path).stem().string() : g.name;
    out.format = "gguf";
  } else {
    SQZ_ASSIGN_OR_RETURN(out.model, LoadHfModel(path));
    SQZ_ASSIGN_OR_RETURN(out.tokenizer, Tokenizer::FromHfDirectory(path));
    auto cfg = ReadTextFile((fs::path(path) / "tokenizer_config.json").string());
    if (cfg.ok()) {
      auto j = nlohmann::json::parse(*cfg, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string()) {
        auto t = DetectChatTemplate(j["chat_template"].get<std::string>());
        if (t.ok()) out.chat_template = *t;
      }
    }
    out.name = fs::path(path).filename().string();
    if (out.name.empty()) out.name = fs::path(path).parent_path().filename().string();
    out.format = "hf";
  }
  if (out.tokenizer->vocab_size() > out.model->config.vocab) {
    return InvalidArgumentError("tokenizer of '" + path + "' has " +
                                std::to_string(out.tokenizer->vocab_size()) +
                                " tokens but the model only " +
                                std::to_string(out.model->config.vocab));
  }
  out.fingerprint = ModelFingerprint(*out.model);
  return out;
}

}  // namespace sqz
