#include "engine/cuda/cuda_weights.h"

#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/model_ops.h"

namespace sqz {
namespace {

template <typename T>
T FromFloatHost(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return __float2bfloat16_rn(x);
  }
}

// Converts src to T on the host and copies it to dst (device). staging is reused between calls.
template <typename T>
Status Put(const T* dst, const std::vector<float>& src, std::vector<T>& staging,
           const std::string& what) {
  if (src.empty()) return OkStatus();
  const void* host = src.data();
  if constexpr (!std::is_same_v<T, float>) {
    staging.resize(src.size());
    for (size_t i = 0; i < src.size(); ++i) staging[i] = FromFloatHost<T>(src[i]);
    host = staging.data();
  }
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(const_cast<T*>(dst), host, src.size() * sizeof(T), cudaMemcpyHostToDevice),
      "CudaWeights: upload of " + what);
  return OkStatus();
}

}  // namespace

template <typename T>
Status CudaWeights<T>::Allocate(const ModelConfig& c, bool separate_lm_head) {
  size_t offset = 0;
  auto take = [&](int64_t elems) {
    const size_t o = offset;
    offset += (static_cast<size_t>(elems) * sizeof(T) + 255) / 256 * 256;
    return o;
  };
  const int64_t qkv = c.q_dim() + 2 * c.kv_dim();
  const size_t emb = take(c.vocab * c.hidden);
  const size_t fnorm = take(c.hidden);
  const size_t lm = separate_lm_head ? take(c.vocab * c.hidden) : emb;
  struct Offsets {
    size_t attn_norm, wqkv, bqkv, wo, ffn_norm, w_gate_up, w_down;
  };
  std::vector<Offsets> lo(c.layers);
  for (Offsets& o : lo) {
    o.attn_norm = take(c.hidden);
    o.wqkv = take(qkv * c.hidden);
    o.bqkv = c.qkv_bias ? take(qkv) : SIZE_MAX;
    o.wo = take(c.hidden * c.q_dim());
    o.ffn_norm = take(c.hidden);
    o.w_gate_up = take(2 * c.intermediate * c.hidden);
    o.w_down = take(c.hidden * c.intermediate);
  }
  SQZ_ASSIGN_OR_RETURN(memory_, DeviceMemory::Allocate(offset, "model weights"));
  const char* base = memory_.get<char>();
  auto at = [&](size_t o) {
    return o == SIZE_MAX ? nullptr : reinterpret_cast<const T*>(base + o);
  };
  embedding_ = at(emb);
  final_norm_ = at(fnorm);
  lm_head_ = at(lm);
  layers_.resize(c.layers);
  for (int64_t i = 0; i < c.layers; ++i) {
    layers_[i] =
        CudaLayerWeights<T>{at(lo[i].attn_norm), at(lo[i].wqkv),      at(lo[i].bqkv),  at(lo[i].wo),
                            at(lo[i].ffn_norm),  at(lo[i].w_gate_up), at(lo[i].w_down)};
  }
  return OkStatus();
}

template <typename T>
StatusOr<std::unique_ptr<CudaWeights<T>>> CudaWeights<T>::Upload(const Model& model) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  std::unique_ptr<CudaWeights<T>> out(new CudaWeights<T>());
  SQZ_RETURN_IF_ERROR(out->Allocate(c, !w.lm_head.empty()));
  std::vector<T> staging;
  SQZ_RETURN_IF_ERROR(Put(out->embedding_, w.embedding, staging, "embedding"));
  SQZ_RETURN_IF_ERROR(Put(out->final_norm_, w.final_norm, staging, "final_norm"));
  if (!w.lm_head.empty()) SQZ_RETURN_IF_ERROR(Put(out->lm_head_, w.lm_head, staging, "lm_head"));
  const int64_t qd = c.q_dim(), kd = c.kv_dim(), h = c.hidden;
  for (int64_t i = 0; i < c.layers; ++i) {
    const LayerWeights& src = w.layers[i];
    const CudaLayerWeights<T>& dst = out->layers_[i];
    const std::string l = "layers." + std::to_string(i) + ".";
    SQZ_RETURN_IF_ERROR(Put(dst.attn_norm, src.attn_norm, staging, l + "attn_norm"));
    SQZ_RETURN_IF_ERROR(Put(dst.wqkv, src.wq, staging, l + "wq"));
    SQZ_RETURN_IF_ERROR(Put(dst.wqkv + qd * h, src.wk, staging, l + "wk"));
    SQZ_RETURN_IF_ERROR(Put(dst.wqkv + (qd + kd) * h, src.wv, staging, l + "wv"));
    if (dst.bqkv) {
      SQZ_RETURN_IF_ERROR(Put(dst.bqkv, src.bq, staging, l + "bq"));
      SQZ_RETURN_IF_ERROR(Put(dst.bqkv + qd, src.bk, staging, l + "bk"));
      SQZ_RETURN_IF_ERROR(Put(dst.bqkv + qd + kd, src.bv, staging, l + "bv"));
    }
    SQZ_RETURN_IF_ERROR(Put(dst.wo, src.wo, staging, l + "wo"));
    SQZ_RETURN_IF_ERROR(Put(dst.ffn_norm, src.ffn_norm, staging, l + "ffn_norm"));
    SQZ_RETURN_IF_ERROR(Put(dst.w_gate_up, src.w_gate, staging, l + "w_gate"));
    SQZ_RETURN_IF_ERROR(Put(dst.w_gate_up + c.intermediate * h, src.w_up, staging, l + "w_up"));
    SQZ_RETURN_IF_ERROR(Put(dst.w_down, src.w_down, staging, l + "w_down"));
  }
  return out;
}

template <typename T>
StatusOr<std::unique_ptr<CudaWeights<T>>> CudaWeights<T>::Random(const ModelConfig& c,
                                                                 uint64_t seed,
                                                                 cudaStream_t stream) {
  std::unique_ptr<CudaWeights<T>> out(new CudaWeights<T>());
  SQZ_RETURN_IF_ERROR(out->Allocate(c, !c.tie_embeddings));
  uint64_t tensor = 0;
  auto uniform = [&](const T* x, int64_t n, float scale) {
    return cuda::FillUniform(const_cast<T*>(x), n, scale, seed * 1000003u + tensor++, stream);
  };
  auto ones = [&](const T* x, int64_t n) {
    return cuda::FillConstant(const_cast<T*>(x), n, 1.0f, stream);
  };
  // Uniform in [-a, a] has variance a^2 / 3: a = sqrt(3 / fan_in) gives variance 1 / fan_in.
  auto lin = [](int64_t fan_in) { return std::sqrt(3.0f / static_cast<float>(fan_in)); };
  const int64_t qkv = c.q_dim() + 2 * c.kv_dim(), h = c.hidden;
  SQZ_RETURN_IF_ERROR(uniform(out->embedding_, c.vocab * h, 1.0f));
  SQZ_RETURN_IF_ERROR(ones(out->final_norm_, h));
  if (out->lm_head_ != out->embedding_) {
    SQZ_RETURN_IF_ERROR(uniform(out->lm_head_, c.vocab * h, lin(h)));
  }
  for (const CudaLayerWeights<T>& l : out->layers_) {
    SQZ_RETURN_IF_ERROR(ones(l.attn_norm, h));
    SQZ_RETURN_IF_ERROR(uniform(l.wqkv, qkv * h, lin(h)));
    if (l.bqkv) SQZ_RETURN_IF_ERROR(uniform(l.bqkv, qkv, 0.02f));
    SQZ_RETURN_IF_ERROR(uniform(l.wo, h * c.q_dim(), lin(c.q_dim())));
    SQZ_RETURN_IF_ERROR(ones(l.ffn_norm, h));
    SQZ_RETURN_IF_ERROR(uniform(l.w_gate_up, 2 * c.intermediate * h, lin(h)));
    SQZ_RETURN_IF_ERROR(uniform(l.w_down, h * c.intermediate, lin(c.intermediate)));
  }
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "CudaWeights::Random");
  return out;
}

template class CudaWeights<float>;
template class CudaWeights<__nv_bfloat16>;

}  // namespace sqz
