#include "kernels/cpu/ops.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

namespace sqz::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST_CASE("MatMulTransB matches a double-precision reference and is batch invariant") {
  for (int64_t k : {1, 3, 16, 127, 129}) {
    for (int64_t m : {1, 3, 9}) {
      const int64_t n = (k == 3) ? 1 : 17;
      auto a = Random(m * k, 1), w = Random(n * k, 2), b = Random(n, 3);
      std::vector<float> out(m * n);
      MatMulTransB(a.data(), w.data(), b.data(), m, n, k, out.data());
      for (int64_t r = 0; r < m; ++r) {
        std::vector<float> one(n);
        MatMulTransB(a.data() + r * k, w.data(), b.data(), 1, n, k, one.data());
        for (int64_t j = 0; j < n; ++j) {
          double ref = b[j];
          for (int64_t i = 0; i < k; ++i) ref += double(a[r * k + i]) * w[j * k + i];
          CHECK(out[r * n + j] == Approx(ref).margin(1e-4));
          CHECK(out[r * n + j] == one[j]);  // bit-identical alone or batched
          CHECK(out[r * n + j] == Dot(a.data() + r * k, w.data() + j * k, k) + b[j]);
        }
      }
    }
  }
}

TEST_CASE("RmsNorm normalises rows") {
  auto x = Random(3 * 129, 4);
  std::vector<float> w(129, 2.0f), y(3 * 129);
  RmsNorm(x.data(), w.data(), 3, 129, 1e-5f, y.data());
  for (int r = 0; r < 3; ++r) {
    double ss = 0;
    for (int j = 0; j < 129; ++j) ss += double(y[r * 129 + j]) * y[r * 129 + j];
    CHECK(std::sqrt(ss / 129) == Approx(2.0).epsilon(1e-4));
  }
}

TEST_CASE("ApplyRope preserves norms and rotates position 0 to itself") {
  const int64_t d = 8;
  std::vector<float> inv(d / 2);
  RopeInvFreq(RopeParams{}, d, inv.data());
  CHECK(inv[0] == 1.0f);
  CHECK(inv[1] == Approx(std::pow(10000.0, -2.0 / 8)));
  auto x = Random(2 * 3 * d, 5);
  auto orig = x;
  int32_t pos[2] = {0, 37};
  ApplyRope(x.data(), pos, 2, 3, d, inv.data());
  for (int i = 0; i < 3 * d; ++i) CHECK(x[i] == orig[i]);
  for (int h = 0; h < 3; ++h) {
    double a = 0, b = 0;
    for (int i = 0; i < d; ++i) {
      a += double(x[(3 + h) * d + i]) * x[(3 + h) * d + i];
      b += double(orig[(3 + h) * d + i]) * orig[(3 + h) * d + i];
    }
    CHECK(a == Approx(b).epsilon(1e-5));
  }
}

TEST_CASE("llama3 RoPE scaling keeps high frequencies and divides low ones by the factor") {
  RopeParams p;
  p.theta = 500000.0f;
  p.llama3_factor = 8.0f;
  p.llama3_original_max_positions = 8192;
  std::vector<float> scaled(64), plain(64);
  RopeInvFreq(p, 128, scaled.data());
  RopeInvFreq(RopeParams{.theta = 500000.0f}, 128, plain.data());
  CHECK(scaled[0] == plain[0]);                   // wavelength 2*pi < high_wavelen
  CHECK(scaled[63] == Approx(plain[63] / 8.0f));  // longest wavelength
  for (int i = 0; i < 64; ++i) CHECK(scaled[i] <= plain[i]);
}

TEST_CASE("SiluMul and Softmax") {
  float g[3] = {0.0f, 1.0f, -2.0f}, u[3] = {5.0f, 2.0f, 1.0f}, o[3];
  SiluMul(g, u, 3, o);
  CHECK(o[0] == 0.0f);
  CHECK(o[1] == Approx(2.0 / (1.0 + std::exp(-1.0))));
  float s[3] = {1000.0f, 1000.0f, -1000.0f};
  Softmax(s, 3);
  CHECK(s[0] == Approx(0.5));
  CHECK(s[2] == 0.0f);
}

}  // namespace
}  // namespace sqz::cpu
