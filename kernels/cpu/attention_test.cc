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

TEST_CASE("paged attention equals contiguous attention bit for bit, for any page size") {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const int64_t d = 8, heads = 3, stride = heads * d;
  for (int64_t n : {0, 1, 3, 16, 17, 127, 129}) {
    std::vector<float> q(d), k(std::max<int64_t>(n, 1) * stride), v(k.size());
    for (auto& x : q) x = dist(rng);
    for (auto& x : k) x = dist(rng);
    for (auto& x : v) x = dist(rng);
    const int64_t head = 1;
    const float scale = 0.3f;
    std::vector<float> o_ref(d, 0.0f), scores(std::max<int64_t>(n, 1));
    AttentionPartial st_ref;
    // Contiguous: one page holding everything.
    const float* kp0 = k.data() + head * d;
    const float* vp0 = v.data() + head * d;
    PagedAttention(q.data(), &kp0, &vp0, std::max<int64_t>(n, 1), stride, n, d, scale,
                   scores.data(), o_ref.data(), &st_ref);
    if (n == 0) {
      CHECK(st_ref.l == 0.0f);
      CHECK(o_ref[0] == 0.0f);
      continue;
    }
    std::vector<float> o_acc(d, 0.0f);
    AttentionPartial st_acc;
    AttendAccumulate(q.data(), kp0, stride, vp0, stride, n, d, scale, o_acc.data(), &st_acc);
    for (int64_t j = 0; j < d; ++j) CHECK(o_acc[j] == Approx(o_ref[j]).margin(1e-6));
    for (int64_t page : {1, 3, 16}) {
      // Copy the rows into scattered pages (reverse order in memory).
      const int64_t pages = (n + page - 1) / page;
      std::vector<std::vector<float>> kb(pages), vb(pages);
      std::vector<const float*> kptr(pages), vptr(pages);
      for (int64_t p = 0; p < pages; ++p) {
        kb[pages - 1 - p].assign(page * stride, NAN);
        vb[pages - 1 - p].assign(page * stride, NAN);
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = i / page;
        for (int64_t j = 0; j < stride; ++j) {
          kb[pages - 1 - p][(i % page) * stride + j] = k[i * stride + j];
          vb[pages - 1 - p][(i % page) * stride + j] = v[i * stride + j];
        }
      }
      for (int64_t p = 0; p < pages; ++p) {
        kptr[p] = kb[pages - 1 - p].data() + head * d;
        vptr[p] = vb[pages - 1 - p].data() + head * d;
      }
      std::vector<float> o(d);
      AttentionPartial st;
      PagedAttention(q.data(), kptr.data(), vptr.data(), page, stride, n, d, scale, scores.data(),
                     o.data(), &st);
      CHECK(st.m == st_ref.m);
      CHECK(st.l == st_ref.l);
      for (int64_t j = 0; j < d; ++j) CHECK(o[j] == o_ref[j]);  // exact: same order
    }
  }
}

}  // namespace
}  // namespace sqz::cpu
