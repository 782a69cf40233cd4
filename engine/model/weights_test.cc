#include "engine/model/weights.h"

#include <catch2/catch.hpp>

namespace sqz {
namespace {

ModelConfig SmallConfig() {
  ModelConfig c;
  c.hidden = 6;
  c.intermediate = 10;
  c.layers = 2;
  c.q_heads = 3;
  c.kv_heads = 1;
  c.head_dim = 2;
  c.vocab = 7;
  c.max_positions = 16;
  return c;
}

ModelWeights Sized(const ModelConfig& c) {
  ModelWeights w;
  w.embedding.resize(c.vocab * c.hidden);
  w.final_norm.resize(c.hidden);
  if (!c.tie_embeddings) w.lm_head.resize(c.vocab * c.hidden);
  w.layers.resize(c.layers);
  for (LayerWeights& l : w.layers) {
    l.attn_norm.resize(c.hidden);
    l.wq.resize(c.q_dim() * c.hidden);
    l.wk.resize(c.kv_dim() * c.hidden);
    l.wv.resize(c.kv_dim() * c.hidden);
    if (c.qkv_bias) {
      l.bq.resize(c.q_dim());
      l.bk.resize(c.kv_dim());
      l.bv.resize(c.kv_dim());
    }
    l.wo.resize(c.hidden * c.q_dim());
    l.ffn_norm.resize(c.hidden);
    l.w_gate.resize(c.intermediate * c.hidden);
    l.w_up.resize(c.intermediate * c.hidden);
    l.w_down.resize(c.hidden * c.intermediate);
  }
  return w;
}

TEST_CASE("ModelWeights::Validate accepts correct shapes, tied or not, with or without bias") {
  ModelConfig c = SmallConfig();
  REQUIRE(c.Validate().ok());
  CHECK(Sized(c).Validate(c).ok());
  c.tie_embeddings = true;
  c.qkv_bias = true;
  ModelWeights w = Sized(c);
  CHECK(w.Validate(c).ok());
  CHECK(w.LmHead() == w.embedding.data());
  c.tie_embeddings = false;
  w = Sized(c);
  CHECK(w.LmHead() == w.lm_head.data());
}

TEST_CASE("ModelWeights::Validate names the wrong tensor") {
  ModelConfig c = SmallConfig();
  auto expect = [&](const ModelWeights& w, const std::string& fragment) {
    Status s = w.Validate(c);
    INFO(s.ToString());
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find(fragment) != std::string::npos);
  };
  ModelWeights w = Sized(c);
  w.layers[1].wk.pop_back();
  expect(w, "layers.1.wk has 11 floats, expected [2][6] = 12");
  w = Sized(c);
  w.lm_head.clear();
  expect(w, "lm_head is missing");
  w = Sized(c);
  w.layers.pop_back();
  expect(w, "1 layers, config says 2");
  w = Sized(c);
  w.layers[0].bq.resize(c.q_dim());
  expect(w, "bias present");
  c.qkv_bias = true;
  w = Sized(c);
  w.layers[0].bv.clear();
  expect(w, "layers.0.bv has 0 floats, expected [2]");
  w = Sized(c);
  w.final_norm.push_back(1.0f);
  expect(w, "final_norm has 7 floats");
}

}  // namespace
}  // namespace sqz
