#include "kernels/cpu/attention.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

namespace sqz::cpu {
namespace {

TEST_CASE("partials over any split merge to full attention") {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  for (int64_t n : {1, 3, 127, 129, 1000}) {
    const int64_t d = 16;
    std::vector<float> q(d), k(n * d), v(n * d);
    for (auto& x : q) x = dist(rng);
    for (auto& x : k) x = dist(rng);
    for (auto& x : v) x = dist(rng);
    const float scale = 1.0f / std::sqrt(float(d));
    // Reference in double.
    std::vector<double> s(n), ref(d, 0.0);
    double mx = -1e300, sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      double t = 0;
      for (int64_t j = 0; j < d; ++j) t += double(q[j]) * k[i * d + j];
      s[i] = t * scale;
      mx = std::max(mx, s[i]);
    }
    for (int64_t i = 0; i < n; ++i) sum += std::exp(s[i] - mx);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) ref[j] += std::exp(s[i] - mx) / sum * v[i * d + j];

    // One call, and three partials merged in another order.
    std::vector<float> o1(d, 0.0f), oa(d, 0.0f), ob(d, 0.0f);
    AttentionPartial st1, sta, stb;
    AttendAccumulate(q.data(), k.data(), d, v.data(), d, n, d, scale, o1.data(), &st1);
    const int64_t cut = n / 3;
    AttendAccumulate(q.data(), k.data() + cut * d, d, v.data() + cut * d, d, n - cut, d, scale,
                     oa.data(), &sta);
    AttendAccumulate(q.data(), k.data(), d, v.data(), d, cut, d, scale, ob.data(), &stb);
    MergePartial(oa.data(), &sta, ob.data(), stb, d);
    for (int64_t j = 0; j < d; ++j) {
      CHECK(o1[j] == Approx(ref[j]).margin(1e-5));
      CHECK(oa[j] == Approx(ref[j]).margin(1e-5));
    }
    CHECK(std::log(st1.l) + st1.m == Approx(std::log(sum) + mx).epsilon(1e-5));
  }
}

TEST_CASE("merging an empty partial is a no-op") {
  float o[2] = {1.0f, 2.0f}, e[2] = {0.0f, 0.0f};
  AttentionPartial st{0.5f, 2.0f};
  MergePartial(o, &st, e, AttentionPartial{}, 2);
  CHECK(o[0] == 1.0f);
  CHECK(st.l == 2.0f);
}

}  // namespace
}  // namespace sqz::cpu
