#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace sqz::cpu {

void RmsNorm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / d) + eps);
    for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * inv * w[j];
  }
}

// Sixteen independent accumulators (lane j sums the products at indices i = j mod 16, in index
// order), then a fixed pairwise tree: this one reduction order is used for every element by Dot and
// by every tile shape of MatMulTransB, which is what makes MatMulTransB batch invariant.
float Dot(const float* x, const float* y, int64_t k) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * y[i + j];
  }
  for (int j = 0; i < k; ++i, ++j) acc[j] += x[i] * y[i];
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

namespace {

// R activation rows x C weight rows of outputs at once, each with exactly Dot's arithmetic: the
// activation and weight blocks are loaded once per tile instead of once per output. `out` rows are
// `ldo` apart.
template <int R, int C>
void DotTile(const float* a, const float* w, int64_t k, float* out, int64_t ldo,
             const float* bias) {
  constexpr int kLanes = 16;
  float acc[R][C][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) {
        for (int j = 0; j < kLanes; ++j) acc[r][c][j] += a[r * k + i + j] * w[c * k + i + j];
      }
    }
  }
  const int tail = static_cast<int>(k - i);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float* lane = acc[r][c];
      for (int j = 0; j < tail; ++j) lane[j] += a[r * k + i + j] * w[c * k + i + j];
      for (int width = kLanes / 2; width > 0; width /= 2) {
        for (int j = 0; j < width; ++j) lane[j] += lane[j + width];
      }
      out[r * ldo + c] = lane[0] + (bias ? bias[c] : 0.0f);
    }
  }
}

}  // namespace

void MatMulTransB(const float* a, const float* w, const float* bias, int64_t m, int64_t n,
                  int64_t k, float* out) {
  // Tiles of 4 activation rows x 2 weight rows; edges use smaller tiles with the same arithmetic.
  // Work is split over pairs of weight rows; a parallel region is only worth it for >= ~1M MACs
  // (fork/join costs microseconds, far more when the cores are oversubscribed).
  constexpr int64_t kR = 4, kC = 2;
  const int64_t col_blocks = (n + kC - 1) / kC;
#pragma omp parallel for schedule(static) if (m * n * k >= (int64_t{1} << 20))
  for (int64_t cb = 0; cb < col_blocks; ++cb) {
    const int64_t j = cb * kC;
    const float* wj = w + j * k;
    const float* bj = bias ? bias + j : nullptr;
    const bool pair = j + 1 < n;
    int64_t r = 0;
    for (; r + kR <= m; r += kR) {
      if (pair) {
        DotTile<kR, kC>(a + r * k, wj, k, out + r * n + j, n, bj);
      } else {
        DotTile<kR, 1>(a + r * k, wj, k, out + r * n + j, n, bj);
      }
    }
    for (; r < m; ++r) {
      if (pair) {
        DotTile<1, kC>(a + r * k, wj, k, out + r * n + j, n, bj);
      } else {
        DotTile<1, 1>(a + r * k, wj, k, out + r * n + j, n, bj);
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void RopeInvFreq(const RopeParams& p, int64_t rotary_dim, float* inv_freq) {
  const int64_t half = rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // Computed in double and rounded once, so the CPU oracle is the more exact side.
    double f =
        1.0 / std::pow(static_cast<double>(p.theta), static_cast<double>(2 * i) / rotary_dim);
    if (p.llama3_factor > 0.0f) {
      const double old_ctx = static_cast<double>(p.llama3_original_max_positions);
      const double low_wavelen = old_ctx / p.llama3_low_freq_factor;
      const double high_wavelen = old_ctx / p.llama3_high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = f / p.llama3_factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_ctx / wavelen - p.llama3_low_freq_factor) /
                              (p.llama3_high_freq_factor - p.llama3_low_freq_factor);
        f = (1.0 - smooth) * f / p.llama3_factor + smooth * f;
      }
    } else if (p.linear_factor > 0.0f) {
      f = f / p.linear_factor;
    }
    inv_freq[i] = static_cast<float>(f);
  }
}

void ApplyRope(float* x, const int32_t* positions, int64_t n, int64_t heads, int64_t d,
               const float* inv_freq) {
  const int64_t half = d / 2;
  for (int64_t t = 0; t < n; ++t) {
    const float pos = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      const float c = std::cos(angle);
      const float s = std::sin(angle);
      for (int64_t h = 0; h < heads; ++h) {
        float* xh = x + (t * heads + h) * d;
        const float x0 = xh[i];
        const float x1 = xh[i + half];
        xh[i] = x0 * c - x1 * s;
        xh[i + half] = x1 * c + x0 * s;
      }
    }
  }
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  const float m = *std::max_element(x, x + n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace sqz::cpu
