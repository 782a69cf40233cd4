// Helpers shared by the squeeze tests (not part of the library).
#pragma once

#include <cmath>
#include <random>
#include <vector>

#include "engine/squeeze/index_builder.h"
#include "kernels/cpu/attention.h"

namespace sqz::testing {

// A random captured context: keys from a few Gaussian clusters (so k-means has structure), values
// and queries Gaussian. scale multiplies keys and queries.
inline CapturedContext RandomCaptured(int layers, int kv_heads, int q_heads, int d, int64_t n,
                                      const SqueezeOptions& o, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  CapturedContext c;
  c.layers = layers;
  c.kv_heads = kv_heads;
  c.q_heads = q_heads;
  c.head_dim = d;
  c.n_tokens = n;
  const int comps = 8;
  std::vector<float> means(comps * d);
  for (float& x : means) x = 2.0f * g(rng);
  c.k.resize(size_t(layers) * n * kv_heads * d);
  c.v.resize(c.k.size());
  for (size_t i = 0; i < c.k.size(); i += d) {
    const int comp = int(rng() % comps);
    for (int j = 0; j < d; ++j) {
      c.k[i + j] = scale * (means[comp * d + j] + 0.5f * g(rng));
      c.v[i + j] = g(rng);
    }
  }
  c.window_q.resize(size_t(layers) * WindowLength(n, o) * q_heads * d);
  for (float& x : c.window_q) x = scale * g(rng);
  return c;
}

// Dense attention of query row qr over all n context keys of (layer, kv head h) in position order.
inline void ReferenceAttend(const CapturedContext& c, int layer, int h, const float* qr, float* o,
                            cpu::AttentionPartial* st) {
  const int64_t d = c.head_dim;
  const int64_t stride = int64_t{c.kv_heads} * d;
  const size_t base = (size_t(layer) * c.n_tokens * c.kv_heads + h) * d;
  std::fill(o, o + d, 0.0f);
  *st = cpu::AttentionPartial{};
  cpu::AttendAccumulate(qr, c.k.data() + base, stride, c.v.data() + base, stride, c.n_tokens, d,
                        1.0f / std::sqrt(float(d)), o, st);
}

}  // namespace sqz::testing
