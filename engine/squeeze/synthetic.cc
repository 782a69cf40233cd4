#include "engine/squeeze/synthetic.h"

#include <cmath>
#include <random>
#include <vector>

namespace sqz {
namespace {

// Queries [layers][n][q_heads][d]: each token targets one component per kv head (the query heads
// of a group share it), at a random positive scale.
void MakeQueries(const SyntheticSpec& s, const std::vector<float>& means, int64_t n,
                 std::mt19937_64& rng, std::vector<float>* out) {
  const int64_t d = s.head_dim;
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  const int g = s.q_heads / s.kv_heads;
  const float noise = s.query_noise * s.key_norm / std::sqrt(static_cast<float>(d));
  out->resize(static_cast<size_t>(s.layers) * n * s.q_heads * d);
  float* o = out->data();
  for (int l = 0; l < s.layers; ++l) {
    for (int64_t t = 0; t < n; ++t) {
      for (int h = 0; h < s.kv_heads; ++h) {
        const int64_t c = static_cast<int64_t>(rng() % s.mixture_components);
        const float* mean =
            means.data() + ((int64_t{l} * s.kv_heads + h) * s.mixture_components + c) * d;
        for (int j = 0; j < g; ++j) {
          for (int64_t i = 0; i < d; ++i) *o++ = mean[i] + noise * gauss(rng);
        }
      }
    }
  }
}

}  // namespace

CapturedContext SyntheticContext(const SyntheticSpec& s, int64_t n_extra,
                                 std::vector<float>* extra_queries) {
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  const int64_t d = s.head_dim;
  const int64_t m = s.mixture_components;
  std::vector<float> means(static_cast<size_t>(s.layers) * s.kv_heads * m * d);
  for (int64_t c = 0; c < static_cast<int64_t>(means.size()) / d; ++c) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += std::pow(means[c * d + i] = gauss(rng), 2);
    const float scale = s.key_norm / static_cast<float>(std::sqrt(ss));
    for (int64_t i = 0; i < d; ++i) means[c * d + i] *= scale;
  }
  CapturedContext c;
  c.layers = s.layers;
  c.kv_heads = s.kv_heads;
  c.q_heads = s.q_heads;
  c.head_dim = s.head_dim;
  c.n_tokens = s.n_tokens;
  const size_t kv = static_cast<size_t>(s.layers) * s.n_tokens * s.kv_heads * d;
  c.k.resize(kv);
  c.v.resize(kv);
  const float noise = s.key_noise * s.key_norm / std::sqrt(static_cast<float>(d));
  for (int l = 0; l < s.layers; ++l) {
    for (int64_t t = 0; t < s.n_tokens; ++t) {
      for (int h = 0; h < s.kv_heads; ++h) {
        const int64_t comp = static_cast<int64_t>(rng() % m);
        const float* mean = means.data() + ((int64_t{l} * s.kv_heads + h) * m + comp) * d;
        const size_t base = ((static_cast<size_t>(l) * s.n_tokens + t) * s.kv_heads + h) * d;
        for (int64_t i = 0; i < d; ++i) {
          c.k[base + i] = mean[i] + noise * gauss(rng);
          c.v[base + i] = gauss(rng);
        }
      }
    }
  }
  MakeQueries(s, means, s.window_len, rng, &c.window_q);
  if (extra_queries != nullptr) MakeQueries(s, means, n_extra, rng, extra_queries);
  return c;
}

}  // namespace sqz
