#include "engine/squeeze/kmeans.h"

#include <omp.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <random>

namespace sqz {
namespace {

struct Mixture {
  std::vector<float> points;  // [n][d]
  std::vector<int32_t> labels;
};

// Points around `k` random directions, with random magnitudes (spherical k-means must ignore them)
// and Gaussian noise of `sigma` per coordinate.
Mixture PlantedMixture(int64_t n, int64_t d, int64_t k, float sigma, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::uniform_real_distribution<float> mag(0.5f, 4.0f);
  std::vector<float> means(k * d);
  for (int64_t c = 0; c < k; ++c) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += std::pow(means[c * d + j] = gauss(rng), 2);
    for (int64_t j = 0; j < d; ++j) means[c * d + j] /= std::sqrt(ss);
  }
  Mixture m;
  m.points.resize(n * d);
  m.labels.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t c = static_cast<int32_t>(rng() % k);
    m.labels[i] = c;
    const float r = mag(rng);
    for (int64_t j = 0; j < d; ++j)
      m.points[i * d + j] = r * (means[c * d + j] + sigma * gauss(rng));
  }
  return m;
}

TEST_CASE("k-means recovers planted clusters of a Gaussian mixture") {
  for (auto [n, d, k] : {std::tuple<int64_t, int64_t, int64_t>{997, 16, 7},
                         {2003, 32, 20},
                         {4001, 128, 50},
                         {129, 3, 3}}) {
    INFO("n=" << n << " d=" << d << " k=" << k);
    Mixture m = PlantedMixture(n, d, k, 0.02f, 42 + n);
    KMeansOptions o;
    o.k = k;
    o.max_iterations = 30;
    auto r = SphericalKMeans(m.points.data(), n, d, o);
    REQUIRE(r.ok());
    const double ari = AdjustedRandIndex(m.labels, r->assignment);
    INFO("ARI " << ari << " iterations " << r->iterations);
    REQUIRE(ari >= 0.95);
    REQUIRE(r->iterations <= 30);
    // Stored centroids are means of raw members.
    std::vector<double> mean(d, 0.0);
    int64_t members = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (r->assignment[i] != 0) continue;
      ++members;
      for (int64_t j = 0; j < d; ++j) mean[j] += m.points[i * d + j];
    }
    REQUIRE(members == r->counts[0]);
    for (int64_t j = 0; j < d; ++j) {
      REQUIRE(r->centroids[j] == Approx(mean[j] / members).margin(1e-5));
    }
  }
}

TEST_CASE("k-means leaves no cluster empty, even with duplicates and k = n") {
  const int64_t d = 4;
  SECTION("all points identical") {
    std::vector<float> pts(50 * d, 1.0f);
    KMeansOptions o;
    o.k = 5;
    auto r = SphericalKMeans(pts.data(), 50, d, o);
    REQUIRE(r.ok());
    int64_t total = 0;
    for (int32_t c : r->counts) {
      REQUIRE(c >= 1);
      total += c;
    }
    REQUIRE(total == 50);
    for (float x : r->centroids) REQUIRE(x == 1.0f);
  }
  SECTION("k = n, with zero rows") {
    std::mt19937 rng(3);
    std::normal_distribution<float> g;
    std::vector<float> pts(127 * d);
    for (float& x : pts) x = g(rng);
    for (int j = 0; j < d; ++j) pts[5 * d + j] = 0.0f;
    KMeansOptions o;
    o.k = 127;
    auto r = SphericalKMeans(pts.data(), 127, d, o);
    REQUIRE(r.ok());
    for (int32_t c : r->counts) REQUIRE(c == 1);
  }
  SECTION("many more clusters than directions") {
    // 3 directions only, 10 clusters: 7 must be filled by re-seeding or seeding of duplicates.
    std::vector<float> pts;
    for (int i = 0; i < 300; ++i) {
      for (int j = 0; j < d; ++j) pts.push_back(j == i % 3 ? 1.0f + (i % 7) : 0.0f);
    }
    KMeansOptions o;
    o.k = 10;
    auto r = SphericalKMeans(pts.data(), 300, d, o);
    REQUIRE(r.ok());
    for (int32_t c : r->counts) REQUIRE(c >= 1);
    for (float x : r->centroids) REQUIRE(std::isfinite(x));
  }
}

TEST_CASE("k-means is deterministic for a seed, whatever the thread count") {
  Mixture m = PlantedMixture(1500, 24, 30, 0.3f, 9);
  KMeansOptions o;
  o.k = 40;
  o.seed = 77;
  const int threads = omp_get_max_threads();
  auto a = SphericalKMeans(m.points.data(), 1500, 24, o);
  omp_set_num_threads(1);
  auto b = SphericalKMeans(m.points.data(), 1500, 24, o);
  omp_set_num_threads(threads);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(a->assignment == b->assignment);
  REQUIRE(a->centroids == b->centroids);
  o.seed = 78;
  auto c = SphericalKMeans(m.points.data(), 1500, 24, o);
  REQUIRE(c.ok());
  REQUIRE(c->assignment != a->assignment);
}

TEST_CASE("k-means rejects bad input with a clear message") {
  std::vector<float> pts(12, 1.0f);
  KMeansOptions o;
  o.k = 4;
  REQUIRE_THAT(SphericalKMeans(pts.data(), 3, 4, o).status().message(), Catch::Contains("k <= n"));
  o.k = 0;
  REQUIRE_THAT(SphericalKMeans(pts.data(), 3, 4, o).status().message(), Catch::Contains("k <= n"));
  o.k = 1;
  REQUIRE_THAT(SphericalKMeans(pts.data(), 0, 4, o).status().message(), Catch::Contains("n >= 1"));
  REQUIRE_THAT(SphericalKMeans(pts.data(), 3, 0, o).status().message(), Catch::Contains("d >= 1"));
  o.max_iterations = 0;
  REQUIRE_THAT(SphericalKMeans(pts.data(), 3, 4, o).status().message(),
               Catch::Contains("max_iterations"));
  o.max_iterations = 5;
  o.tolerance = std::nan("");
  REQUIRE_THAT(SphericalKMeans(pts.data(), 3, 4, o).status().message(),
               Catch::Contains("tolerance"));
  o.tolerance = 0;
  pts[6] = std::numeric_limits<float>::infinity();
  REQUIRE_THAT(SphericalKMeans(pts.data(), 3, 4, o).status().message(),
               Catch::Contains("point 1 is not finite"));
}

TEST_CASE("adjusted Rand index") {
  REQUIRE(AdjustedRandIndex({0, 0, 1, 1}, {5, 5, 2, 2}) == Approx(1.0));
  REQUIRE(AdjustedRandIndex({0, 0, 1, 1, 2, 2}, {0, 1, 0, 1, 0, 1}) < 0.0);
  std::mt19937 rng(1);
  std::vector<int32_t> a(5000), b(5000);
  for (auto& x : a) x = rng() % 10;
  for (auto& x : b) x = rng() % 10;
  REQUIRE(std::abs(AdjustedRandIndex(a, b)) < 0.01);
}

}  // namespace
}  // namespace sqz
