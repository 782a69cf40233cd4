#include "storage/fingerprint.h"

#include <xxhash.h>

#include <cstdio>
#include <cstring>

namespace sqz {
namespace {

// Appends fields with their lengths, so that no two field lists encode to the same bytes.
class Canonical {
 public:
  void U64(uint64_t v) { out_.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
  void Str(const std::string& s) {
    U64(s.size());
    out_ += s;
  }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// %g keeps the summary short and stable for the float hyper-parameters.
std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

std::string ConfigSummary(const ModelConfig& c) {
  std::string s = c.architecture;
  s += " L=" + std::to_string(c.layers) + " hidden=" + std::to_string(c.hidden) +
       " ffn=" + std::to_string(c.intermediate) + " heads=" + std::to_string(c.q_heads) + "/" +
       std::to_string(c.kv_heads) + " d=" + std::to_string(c.head_dim) +
       " vocab=" + std::to_string(c.vocab) + " pos=" + std::to_string(c.max_positions) +
       " eps=" + Num(c.rms_eps) + " rope_theta=" + Num(c.rope.theta);
  if (c.rope.llama3_factor > 0) {
    s += " llama3=" + Num(c.rope.llama3_factor) + "/" + Num(c.rope.llama3_low_freq_factor) + "/" +
         Num(c.rope.llama3_high_freq_factor) + "/" +
         std::to_string(c.rope.llama3_original_max_positions);
  }
  if (c.rope.linear_factor > 0) s += " linear=" + Num(c.rope.linear_factor);
  if (c.qkv_bias) s += " qkv_bias";
  if (c.tie_embeddings) s += " tied";
  return s;
}

std::vector<TensorSignature> Signatures(const Model& m) {
  const ModelConfig& c = m.config;
  const std::string& dt = c.torch_dtype;
  std::vector<TensorSignature> t;
  t.push_back({"model.embed_tokens.weight", dt, {c.vocab, c.hidden}});
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", dt, {c.hidden}});
    t.push_back({p + "self_attn.q_proj.weight", dt, {c.q_dim(), c.hidden}});
    t.push_back({p + "self_attn.k_proj.weight", dt, {c.kv_dim(), c.hidden}});
    t.push_back({p + "self_attn.v_proj.weight", dt, {c.kv_dim(), c.hidden}});
    if (c.qkv_bias) {
      t.push_back({p + "self_attn.q_proj.bias", dt, {c.q_dim()}});
      t.push_back({p + "self_attn.k_proj.bias", dt, {c.kv_dim()}});
      t.push_back({p + "self_attn.v_proj.bias", dt, {c.kv_dim()}});
    }
    t.push_back({p + "self_attn.o_proj.weight", dt, {c.hidden, c.q_dim()}});
    t.push_back({p + "post_attention_layernorm.weight", dt, {c.hidden}});
    t.push_back({p + "mlp.gate_proj.weight", dt, {c.intermediate, c.hidden}});
    t.push_back({p + "mlp.up_proj.weight", dt, {c.intermediate, c.hidden}});
    t.push_back({p + "mlp.down_proj.weight", dt, {c.hidden, c.intermediate}});
  }
  t.push_back({"model.norm.weight", dt, {c.hidden}});
  if (!m.weights.lm_head.empty()) t.push_back({"lm_head.weight", dt, {c.vocab, c.hidden}});
  return t;
}

uint64_t DigestWeights(const ModelWeights& w) {
  XXH3_state_t* state = XXH3_createState();
  SQZ_CHECK(state != nullptr) << "XXH3_createState failed";
  XXH3_64bits_reset(state);
  auto add = [&](const std::vector<float>& v) {
    const uint64_t n = v.size();
    XXH3_64bits_update(state, &n, sizeof(n));
    XXH3_64bits_update(state, v.data(), v.size() * sizeof(float));
  };
  add(w.embedding);
  for (const auto& l : w.layers) {
    for (const auto* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.bq, &l.bk, &l.bv, &l.wo,
                          &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      add(*t);
    }
  }
  add(w.final_norm);
  add(w.lm_head);
  const uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return h;
}

}  // namespace

uint64_t ModelIdentity::Hash() const {
  Canonical c;
  c.U64(static_cast<uint64_t>(format_version));
  c.Str(config_summary);
  c.U64(tensors_digest);
  c.U64(weights_digest);
  return XXH3_64bits(c.bytes().data(), c.bytes().size());
}

std::string ModelIdentity::HashHex() const { return Hex(Hash()); }

std::string DescribeIdentityChange(const ModelIdentity& stored, const ModelIdentity& current) {
  std::string out;
  auto add = [&out](const std::string& part) { out += (out.empty() ? "" : "; ") + part; };
  if (stored.format_version != current.format_version) {
    add("fingerprint format version differs (" + std::to_string(stored.format_version) + " vs " +
        std::to_string(current.format_version) + ")");
  }
  if (stored.config_summary != current.config_summary) {
    add("config differs (" + stored.config_summary + " vs " + current.config_summary + ")");
  }
  if (stored.tensors_digest != current.tensors_digest) {
    add("tensor names/shapes/dtypes differ (" + Hex(stored.tensors_digest) + " vs " +
        Hex(current.tensors_digest) + ")");
  }
  if (stored.weights_digest != current.weights_digest) {
    add("weights differ (" + Hex(stored.weights_digest) + " vs " + Hex(current.weights_digest) +
        ")");
  }
  return out;
}

uint64_t DigestTensors(const std::vector<TensorSignature>& tensors) {
  Canonical c;
  c.U64(tensors.size());
  for (const auto& t : tensors) {
    c.Str(t.name);
    c.Str(t.dtype);
    c.U64(t.shape.size());
    for (int64_t d : t.shape) c.U64(static_cast<uint64_t>(d));
  }
  return XXH3_64bits(c.bytes().data(), c.bytes().size());
}

ModelIdentity IdentifyModel(const Model& model, std::optional<uint64_t> weights_digest) {
  ModelIdentity id;
  id.config_summary = ConfigSummary(model.config);
  id.tensors_digest = DigestTensors(Signatures(model));
  id.weights_digest = weights_digest ? *weights_digest : DigestWeights(model.weights);
  return id;
}

}  // namespace sqz
