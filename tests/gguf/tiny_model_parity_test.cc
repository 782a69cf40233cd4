// LoadGgufModel on GGUF files written the way llama.cpp's converter writes them (by PyPI's gguf
// package, q/k rows permuted with the converter's own formula, quantized tensors, llama3
// rope_freqs) yields exactly the config and weights LoadHfModel reads from the Hugging Face
// directory the GGUF was made from, and so bit-identical logits (tests/gguf/make_tiny_gguf.py).
#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/gguf/gguf_model.h"
#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "tests/gguf/test_util.h"

namespace sqz::gguf {
namespace {

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

void CheckSameConfig(const ModelConfig& g, const ModelConfig& h) {
  CHECK(g.architecture == h.architecture);
  CHECK(g.hidden == h.hidden);
  CHECK(g.intermediate == h.intermediate);
  CHECK(g.layers == h.layers);
  CHECK(g.q_heads == h.q_heads);
  CHECK(g.kv_heads == h.kv_heads);
  CHECK(g.head_dim == h.head_dim);
  CHECK(g.vocab == h.vocab);
  CHECK(g.max_positions == h.max_positions);
  CHECK(g.rms_eps == h.rms_eps);
  CHECK(g.rope.theta == h.rope.theta);
  CHECK(g.rope.llama3_factor == h.rope.llama3_factor);
  CHECK(g.rope.llama3_low_freq_factor == h.rope.llama3_low_freq_factor);
  CHECK(g.rope.llama3_high_freq_factor == h.rope.llama3_high_freq_factor);
  if (h.rope.llama3_factor > 0) {
    CHECK(g.rope.llama3_original_max_positions == h.rope.llama3_original_max_positions);
  }
  CHECK(g.rope.linear_factor == h.rope.linear_factor);
  CHECK(g.qkv_bias == h.qkv_bias);
  CHECK(g.tie_embeddings == h.tie_embeddings);
  CHECK(g.bos_id == h.bos_id);
  CHECK(g.eos_ids == h.eos_ids);
}

void CheckSameWeights(const ModelWeights& g, const ModelWeights& h) {
  CHECK(SameBits(g.embedding, h.embedding));
  CHECK(SameBits(g.final_norm, h.final_norm));
  CHECK(SameBits(g.lm_head, h.lm_head));
  REQUIRE(g.layers.size() == h.layers.size());
  for (size_t l = 0; l < g.layers.size(); ++l) {
    INFO("layer " << l);
    const LayerWeights &a = g.layers[l], &b = h.layers[l];
    CHECK(SameBits(a.attn_norm, b.attn_norm));
    CHECK(SameBits(a.wq, b.wq));  // un-permuted back to the Hugging Face layout
    CHECK(SameBits(a.wk, b.wk));
    CHECK(SameBits(a.wv, b.wv));
    CHECK(SameBits(a.bq, b.bq));
    CHECK(SameBits(a.bk, b.bk));
    CHECK(SameBits(a.bv, b.bv));
    CHECK(SameBits(a.wo, b.wo));
    CHECK(SameBits(a.ffn_norm, b.ffn_norm));
    CHECK(SameBits(a.w_gate, b.w_gate));
    CHECK(SameBits(a.w_up, b.w_up));
    CHECK(SameBits(a.w_down, b.w_down));
  }
}

std::vector<float> Logits(const Model& m, const std::vector<int32_t>& tokens) {
  auto backend = CpuBackend::Create(m, CpuBackendOptions{});
  REQUIRE(backend.ok());
  auto seq = (*backend)->AddSequence();
  REQUIRE(seq.ok());
  StepInput in;
  in.seq = *seq;
  in.tokens = tokens;
  in.all_logits = true;
  std::vector<float> logits(tokens.size() * m.config.vocab);
  REQUIRE((*backend)->Forward({&in, 1}, logits.data()).ok());
  return logits;
}

TEST_CASE("GGUF files made by the gguf package load as their Hugging Face originals", "[gguf]") {
  const std::string py = testing::VenvPython();
  if (py.empty()) {
    WARN("skipped: no .venv/bin/python (run scripts/install_deps.sh)");
    return;
  }
  for (const char* name : {"llama_gqa_tied_q8", "llama_mha_untied_llama3", "qwen2_bias"}) {
    SECTION(name) {
      const std::string dir = std::string(SQZ_BINARY_DIR) + "/tiny_gguf/" + name;
      REQUIRE(testing::Run(py + " " + SQZ_SOURCE_DIR + "/tests/gguf/make_tiny_gguf.py --out " +
                           dir + " --case " + name) == 0);
      auto g = LoadGgufModel(dir + "/model.gguf");
      REQUIRE(g.ok());
      auto h = LoadHfModel(dir + "/hf");
      REQUIRE(h.ok());
      CheckSameConfig(g->model->config, (*h)->config);
      CheckSameWeights(g->model->weights, (*h)->weights);
      CHECK(g->name == std::string("tiny ") + name);
      CHECK(g->chat_template.find("<|im_start|>") != std::string::npos);

      std::mt19937 rng(11);
      std::vector<int32_t> tokens(13);
      for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % g->model->config.vocab);
      const std::vector<float> a = Logits(*g->model, tokens), b = Logits(**h, tokens);
      CHECK(SameBits(a, b));

      auto tok = Tokenizer::Create(g->tokenizer);
      REQUIRE(tok.ok());
      CHECK((*tok)->kind() == TokenizerKind::kSentencePieceBpe);
      CHECK((*tok)->bos_id() == 1);
      CHECK((*tok)->eos_id() == 2);
      CHECK((*tok)->unk_id() == 0);
      CHECK((*tok)->add_bos());
      const std::vector<int32_t> ids = (*tok)->Encode("a aa\xC3\xA9", true);
      CHECK(ids.front() == 1);
      CHECK((*tok)->Decode(ids, true) == "a aa\xC3\xA9");
    }
  }
}

}  // namespace
}  // namespace sqz::gguf
