#include "engine/gguf/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <string>
#include <vector>

#include "engine/gguf/dequantize.h"
#include "engine/gguf/gguf_tokenizer.h"

namespace sqz::gguf {
namespace {

std::string DimsString(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Reads an optional integer key as int64, `fallback` when absent.
StatusOr<int64_t> IntOr(const File& f, const std::string& key, int64_t fallback) {
  if (!f.Has(key)) return fallback;
  return f.GetInt(key);
}

StatusOr<double> FloatOr(const File& f, const std::string& key, double fallback) {
  if (!f.Has(key)) return fallback;
  return f.GetFloat(key);
}

// Fits llama3 RoPE scaling to a rope_freqs tensor (per-frequency divisors of the inverse
// frequencies, as llama.cpp's converter writes them, LlamaModel.generate_extra_tensors).
// factor = the largest divisor; low_freq_factor = 1 and high_freq_factor = 4 (every Llama-3.x
// release); the original context length comes from {arch}.rope.scaling.original_context_length,
// else 8192, else what a divisor in the smooth band implies (else any value that reproduces the
// divisors: they alone determine the frequencies). The fit must reproduce every divisor
// to 1e-4 (relative), or the file is rejected: the runtime would compute other frequencies.
Status FitLlama3Rope(const File& f, const std::string& arch, const TensorInfo& t, ModelConfig* c) {
  const std::string p = "GGUF " + f.path() + ": ";
  const int64_t half = c->head_dim / 2;
  if (t.n_elements != half) {
    return InvalidArgumentError(p + "rope_freqs.weight has " + std::to_string(t.n_elements) +
                                " elements, expected head_dim / 2 = " + std::to_string(half));
  }
  SQZ_ASSIGN_OR_RETURN(std::vector<float> divisors, DequantizeTensor(t));
  float factor = 0;
  for (float d : divisors) factor = std::max(factor, d);
  if (!(factor >= 1.0f)) return InvalidArgumentError(p + "rope_freqs.weight has no divisor >= 1");
  if (factor == 1.0f) {
    for (float d : divisors) {
      if (d != 1.0f) return InvalidArgumentError(p + "rope_freqs.weight has a divisor below 1");
    }
    return OkStatus();  // no scaling
  }
  cpu::RopeParams base = c->rope;
  std::vector<float> f0(half), f1(half);
  cpu::RopeInvFreq(base, c->head_dim, f0.data());

  std::vector<int64_t> candidates;
  const std::string key = arch + ".rope.scaling.original_context_length";
  if (f.Has(key)) {
    SQZ_ASSIGN_OR_RETURN(int64_t orig, f.GetInt(key));
    candidates.push_back(orig);
  } else {
    candidates.push_back(8192);
    // In the smooth band 1/d = (1 - s) / factor + s with s = (orig / wavelen - 1) / 3. Without
    // a divisor in that band, every orig just below the shortest fully scaled wavelength gives
    // the same frequencies: take that one.
    double shortest_scaled = 0;
    for (int64_t i = 0; i < half; ++i) {
      const double d = divisors[i];
      const double wavelen = 2.0 * std::numbers::pi / f0[i];
      if (d == factor && (shortest_scaled == 0 || wavelen < shortest_scaled)) {
        shortest_scaled = wavelen;
      }
      if (d <= 1.0 || d >= factor) continue;
      const double s = (1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor);
      candidates.push_back(std::llround(wavelen * (3.0 * s + 1.0)));
    }
    if (candidates.size() == 1 && shortest_scaled > 1) {
      candidates.push_back(static_cast<int64_t>(std::floor(shortest_scaled)));
    }
  }
  std::string why;
  for (int64_t orig : candidates) {
    cpu::RopeParams scaled = base;
    scaled.llama3_factor = factor;
    scaled.llama3_low_freq_factor = 1.0f;
    scaled.llama3_high_freq_factor = 4.0f;
    scaled.llama3_original_max_positions = orig;
    cpu::RopeInvFreq(scaled, c->head_dim, f1.data());
    why.clear();
    for (int64_t i = 0; i < half && why.empty(); ++i) {
      const double want = divisors[i];
      const double got = static_cast<double>(f0[i]) / f1[i];
      if (std::abs(got - want) > 1e-4 * want) {
        why = "divisor " + std::to_string(i) + " is " + std::to_string(want) + ", expected " +
              std::to_string(got) + " with original context " + std::to_string(orig);
      }
    }
    if (why.empty()) {
      c->rope = scaled;
      return OkStatus();
    }
  }
  return UnimplementedError(p + "rope_freqs.weight does not match llama3 RoPE scaling (factor " +
                            std::to_string(factor) + ", low 1, high 4): " + why);
}

// The tensor `name` with ggml dims `want`, checked.
StatusOr<const TensorInfo*> FindChecked(const File& f, const std::string& name,
                                        const std::vector<int64_t>& want) {
  const TensorInfo* t = f.FindTensor(name);
  if (t == nullptr) return NotFoundError("GGUF " + f.path() + ": tensor '" + name + "' not found");
  if (t->dims != want) {
    return InvalidArgumentError("GGUF " + f.path() + ": tensor '" + name + "' has dims " +
                                DimsString(t->dims) + ", expected " + DimsString(want) +
                                " (ggml order)");
  }
  if (!CanDequantize(t->type)) {
    return UnimplementedError("GGUF " + f.path() + ": tensor '" + name + "' has type " +
                              TensorTypeName(t->type) +
                              ", which we cannot dequantize (supported: F32, F16, BF16, Q4_0, "
                              "Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
  }
  return t;
}

// Dequantizes `name` (ggml dims `want`) into *out.
Status Load(const File& f, const std::string& name, const std::vector<int64_t>& want,
            std::vector<float>* out) {
  SQZ_ASSIGN_OR_RETURN(const TensorInfo* t, FindChecked(f, name, want));
  out->resize(static_cast<size_t>(t->n_elements));
  return DequantizeTensorTo(*t, out->data()).WithContext("GGUF " + f.path());
}

// Undoes llama.cpp's q/k row permutation in place: x holds heads * head_dim rows of `cols`
// values; GGUF row h*d + 2*i + j is Hugging Face row h*d + j*d/2 + i (i < d/2, j < 2).
void UnpermuteRows(std::vector<float>* x, int64_t heads, int64_t head_dim, int64_t cols) {
  const std::vector<float> src = *x;
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const float* from = src.data() + (h * head_dim + 2 * i + j) * cols;
        float* to = x->data() + (h * head_dim + j * half + i) * cols;
        std::memcpy(to, from, static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
}

}  // namespace

StatusOr<ModelConfig> ModelConfigFromGguf(const File& f) {
  const std::string p = "GGUF " + f.path() + ": ";
  SQZ_ASSIGN_OR_RETURN(std::string arch, f.GetString("general.architecture"));
  if (arch != "llama" && arch != "qwen2") {
    return UnimplementedError(p + "architecture '" + arch +
                              "' is not supported (supported: llama, qwen2)");
  }
  const std::string k = arch + ".";
  ModelConfig c;
  c.architecture = arch;
  SQZ_ASSIGN_OR_RETURN(c.hidden, f.GetInt(k + "embedding_length"));
  SQZ_ASSIGN_OR_RETURN(c.intermediate, f.GetInt(k + "feed_forward_length"));
  SQZ_ASSIGN_OR_RETURN(c.layers, f.GetInt(k + "block_count"));
  SQZ_ASSIGN_OR_RETURN(c.max_positions, f.GetInt(k + "context_length"));
  SQZ_ASSIGN_OR_RETURN(c.q_heads, f.GetInt(k + "attention.head_count"));
  if (c.q_heads <= 0) {
    return InvalidArgumentError(p + k + "attention.head_count must be positive, got " +
                                std::to_string(c.q_heads));
  }
  SQZ_ASSIGN_OR_RETURN(c.kv_heads, IntOr(f, k + "attention.head_count_kv", c.q_heads));
  SQZ_ASSIGN_OR_RETURN(c.head_dim, IntOr(f, k + "attention.key_length", c.hidden / c.q_heads));
  SQZ_ASSIGN_OR_RETURN(int64_t value_dim, IntOr(f, k + "attention.value_length", c.head_dim));
  if (value_dim != c.head_dim) {
    return UnimplementedError(p + "attention.value_length " + std::to_string(value_dim) +
                              " differs from key_length " + std::to_string(c.head_dim));
  }
  SQZ_ASSIGN_OR_RETURN(int64_t rotary, IntOr(f, k + "rope.dimension_count", c.head_dim));
  if (rotary != c.head_dim) {
    return UnimplementedError(p + "partial rotary embeddings are not supported: " + k +
                              "rope.dimension_count is " + std::to_string(rotary) + ", head size " +
                              std::to_string(c.head_dim));
  }
  SQZ_ASSIGN_OR_RETURN(double eps, f.GetFloat(k + "attention.layer_norm_rms_epsilon"));
  c.rms_eps = static_cast<float>(eps);
  SQZ_ASSIGN_OR_RETURN(double theta, FloatOr(f, k + "rope.freq_base", 10000.0));
  c.rope.theta = static_cast<float>(theta);

  std::string scaling = "none";
  if (f.Has(k + "rope.scaling.type")) {
    SQZ_ASSIGN_OR_RETURN(scaling, f.GetString(k + "rope.scaling.type"));
  }
  if (scaling == "linear") {
    SQZ_ASSIGN_OR_RETURN(double factor, f.GetFloat(k + "rope.scaling.factor"));
    c.rope.linear_factor = static_cast<float>(factor);
  } else if (scaling != "none") {
    return UnimplementedError(
        p + "RoPE scaling type '" + scaling +
        "' is not supported (supported: none, linear, llama3 via rope_freqs)");
  } else if (f.Has(k + "rope.scale_linear")) {
    SQZ_ASSIGN_OR_RETURN(double factor, f.GetFloat(k + "rope.scale_linear"));
    if (factor != 1.0) c.rope.linear_factor = static_cast<float>(factor);
  }
  if (const TensorInfo* freqs = f.FindTensor("rope_freqs.weight")) {
    if (c.rope.linear_factor > 0) {
      return InvalidArgumentError(p + "both linear RoPE scaling and rope_freqs.weight are present");
    }
    SQZ_RETURN_IF_ERROR(FitLlama3Rope(f, arch, *freqs, &c));
  }

  int64_t tokens = -1;
  if (const Value* v = f.FindValue("tokenizer.ggml.tokens")) tokens = v->array_size();
  SQZ_ASSIGN_OR_RETURN(c.vocab, IntOr(f, k + "vocab_size", tokens));
  if (c.vocab < 0) {
    const TensorInfo* e = f.FindTensor("token_embd.weight");
    if (e == nullptr || e->dims.size() != 2) {
      return NotFoundError(p + "cannot tell the vocabulary size: no " + k +
                           "vocab_size, tokenizer.ggml.tokens or 2-D token_embd.weight");
    }
    c.vocab = e->dims[1];
  }
  c.qkv_bias = arch == "qwen2" || f.FindTensor("blk.0.attn_q.bias") != nullptr;
  c.tie_embeddings = f.FindTensor("output.weight") == nullptr;
  // BOS, and the ids that end generation: EOS, then end-of-turn / end-of-message (as the
  // tokenizer mapping lists them). Ids outside the vocabulary are reported by that mapping.
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (!f.Has(key)) continue;
    SQZ_ASSIGN_OR_RETURN(int64_t id, f.GetInt(key));
    if (id < 0 || id >= c.vocab) continue;
    const auto id32 = static_cast<int32_t>(id);
    if (std::string_view(key) == "tokenizer.ggml.bos_token_id") {
      c.bos_id = id32;
    } else if (std::find(c.eos_ids.begin(), c.eos_ids.end(), id32) == c.eos_ids.end()) {
      c.eos_ids.push_back(id32);
    }
  }
  if (const TensorInfo* q = f.FindTensor("blk.0.attn_q.weight")) {
    c.torch_dtype = "gguf " + TensorTypeName(q->type);
  }
  Status valid = c.Validate();
  if (!valid.ok()) return InvalidArgumentError(p + valid.message());
  return c;
}

StatusOr<ModelWeights> ModelWeightsFromGguf(const File& f, const ModelConfig& c) {
  const bool permuted = c.architecture == "llama";
  ModelWeights w;
  SQZ_RETURN_IF_ERROR(Load(f, "token_embd.weight", {c.hidden, c.vocab}, &w.embedding));
  SQZ_RETURN_IF_ERROR(Load(f, "output_norm.weight", {c.hidden}, &w.final_norm));
  if (!c.tie_embeddings) {
    SQZ_RETURN_IF_ERROR(Load(f, "output.weight", {c.hidden, c.vocab}, &w.lm_head));
  }
  w.layers.resize(static_cast<size_t>(c.layers));
  for (int64_t l = 0; l < c.layers; ++l) {
    LayerWeights& L = w.layers[l];
    const std::string b = "blk." + std::to_string(l) + ".";
    SQZ_RETURN_IF_ERROR(Load(f, b + "attn_norm.weight", {c.hidden}, &L.attn_norm));
    SQZ_RETURN_IF_ERROR(Load(f, b + "attn_q.weight", {c.hidden, c.q_dim()}, &L.wq));
    SQZ_RETURN_IF_ERROR(Load(f, b + "attn_k.weight", {c.hidden, c.kv_dim()}, &L.wk));
    SQZ_RETURN_IF_ERROR(Load(f, b + "attn_v.weight", {c.hidden, c.kv_dim()}, &L.wv));
    if (c.qkv_bias) {
      SQZ_RETURN_IF_ERROR(Load(f, b + "attn_q.bias", {c.q_dim()}, &L.bq));
      SQZ_RETURN_IF_ERROR(Load(f, b + "attn_k.bias", {c.kv_dim()}, &L.bk));
      SQZ_RETURN_IF_ERROR(Load(f, b + "attn_v.bias", {c.kv_dim()}, &L.bv));
    }
    SQZ_RETURN_IF_ERROR(Load(f, b + "attn_output.weight", {c.q_dim(), c.hidden}, &L.wo));
    SQZ_RETURN_IF_ERROR(Load(f, b + "ffn_norm.weight", {c.hidden}, &L.ffn_norm));
    SQZ_RETURN_IF_ERROR(Load(f, b + "ffn_gate.weight", {c.hidden, c.intermediate}, &L.w_gate));
    SQZ_RETURN_IF_ERROR(Load(f, b + "ffn_up.weight", {c.hidden, c.intermediate}, &L.w_up));
    SQZ_RETURN_IF_ERROR(Load(f, b + "ffn_down.weight", {c.intermediate, c.hidden}, &L.w_down));
    if (permuted) {
      UnpermuteRows(&L.wq, c.q_heads, c.head_dim, c.hidden);
      UnpermuteRows(&L.wk, c.kv_heads, c.head_dim, c.hidden);
      if (c.qkv_bias) {
        UnpermuteRows(&L.bq, c.q_heads, c.head_dim, 1);
        UnpermuteRows(&L.bk, c.kv_heads, c.head_dim, 1);
      }
    }
  }
  Status valid = w.Validate(c);
  if (!valid.ok()) return InternalError("GGUF " + f.path() + ": " + valid.message());
  return w;
}

StatusOr<GgufModel> LoadGgufModel(const std::string& path) {
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<File> f, File::Open(path));
  GgufModel out;
  SQZ_ASSIGN_OR_RETURN(ModelConfig config, ModelConfigFromGguf(*f));
  SQZ_ASSIGN_OR_RETURN(out.tokenizer, TokenizerModelFromGguf(*f));
  if (static_cast<int64_t>(out.tokenizer.tokens.size()) > config.vocab) {
    return InvalidArgumentError(
        "GGUF " + path + ": the tokenizer has " + std::to_string(out.tokenizer.tokens.size()) +
        " tokens, more than the model's vocabulary of " + std::to_string(config.vocab));
  }
  SQZ_ASSIGN_OR_RETURN(out.chat_template, ChatTemplateFromGguf(*f));
  if (f->Has("general.name")) {
    SQZ_ASSIGN_OR_RETURN(out.name, f->GetString("general.name"));
  }
  SQZ_ASSIGN_OR_RETURN(ModelWeights weights, ModelWeightsFromGguf(*f, config));
  out.model = std::make_unique<Model>(std::move(config), std::move(weights));
  return out;
}

}  // namespace sqz::gguf
