// CPU reference ops: fp32, exact and deterministic. They are the CPU backend's building blocks and
// the oracle that every CUDA kernel is tested against (kernels/cuda/*_test).
//
// Conventions: row-major; every pointer parameter states its shape; callers own all buffers.
// Batch invariance: the value of each output row depends only on the matching input row, never on
// how many rows are computed together (MatMulTransB uses one fixed reduction order per element),
// so a request gets bit-identical results alone or batched with others.
#pragma once

#include <cstdint>

namespace sqz::cpu {

// y[n][d] = x[n][d] / sqrt(mean_j(x[n][j]^2) + eps) * w[d]. y may alias x.
void RmsNorm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y);

// out[m][n] = sum_k a[m][k] * w[n][k] (+ bias[n] if bias != nullptr).
// a: [m][k], w: [n][k] (a Hugging Face Linear weight, [out_features][in_features]), bias: [n].
// out must not alias a or w. Parallel over n (OpenMP).
void MatMulTransB(const float* a, const float* w, const float* bias, int64_t m, int64_t n,
                  int64_t k, float* out);

// Dot product with the fixed reduction order MatMulTransB uses. x, y: [k].
float Dot(const float* x, const float* y, int64_t k);

// out[i] = silu(gate[i]) * up[i], i < n. out may alias gate or up.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// x[i] += y[i], i < n.
void AddInPlace(float* x, const float* y, int64_t n);

// RoPE parameters (Hugging Face semantics).
struct RopeParams {
  float theta = 10000.0f;
  // rope_scaling type "llama3" when llama3_factor > 0 (Llama-3.1+); "linear" when linear_factor >
  // 0.
  float llama3_factor = 0.0f;
  float llama3_low_freq_factor = 1.0f;
  float llama3_high_freq_factor = 4.0f;
  int64_t llama3_original_max_positions = 8192;
  float linear_factor = 0.0f;
};

// inv_freq[i] for i < rotary_dim / 2, including the llama3 or linear scaling. inv_freq:
// [rotary_dim/2].
void RopeInvFreq(const RopeParams& params, int64_t rotary_dim, float* inv_freq);

// Rotates x in place in the Hugging Face "rotate_half" layout: within each head, element i pairs
// with element i + d/2 (i < d/2), angle = position * inv_freq[i]. x: [n][heads][d], positions: [n],
// inv_freq: [d/2].
void ApplyRope(float* x, const int32_t* positions, int64_t n, int64_t heads, int64_t d,
               const float* inv_freq);

// In-place numerically stable softmax of x: [n].
void Softmax(float* x, int64_t n);

}  // namespace sqz::cpu
