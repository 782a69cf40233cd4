// Model shapes and inputs shared by the whole-model benchmarks (bench/cuda_model, bench/cuda_e2e):
// the Llama-3-8B configuration with any number of layers (random weights are made on the device
// from it) and seeded random token ids. Header-only.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "engine/model/config.h"

namespace sqz::bench {

// Llama-3-8B: hidden 4096, 32 query / 8 KV heads of 128, SwiGLU 14336, vocabulary 128256, RoPE
// theta 500000 with llama3 scaling (factor 8, original 8192 positions), untied embeddings.
inline ModelConfig Llama3_8B(int64_t layers, int64_t max_positions) {
  ModelConfig c;
  c.hidden = 4096;
  c.intermediate = 14336;
  c.layers = layers;
  c.q_heads = 32;
  c.kv_heads = 8;
  c.head_dim = 128;
  c.vocab = 128256;
  c.max_positions = max_positions;
  c.rms_eps = 1e-5f;
  c.rope.theta = 500000.0f;
  c.rope.llama3_factor = 8.0f;
  c.rope.llama3_low_freq_factor = 1.0f;
  c.rope.llama3_high_freq_factor = 4.0f;
  c.rope.llama3_original_max_positions = 8192;
  c.tie_embeddings = false;
  return c;
}

// n token ids uniform in [0, vocab), from std::mt19937(seed).
inline std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = u(gen);
  return t;
}

}  // namespace sqz::bench
