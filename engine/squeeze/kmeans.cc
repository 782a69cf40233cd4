#include "engine/squeeze/kmeans.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>

#include "kernels/cpu/ops.h"

namespace sqz {
namespace {

// Below this many multiply-adds a loop runs on one thread: a parallel region costs more, badly so
// on an oversubscribed machine.
constexpr int64_t kParallelMinWork = int64_t{1} << 18;
// Largest k seeded with greedy k-means++ (several candidates per step).
constexpr int64_t kGreedySeedingMaxK = 256;

// Rows of x normalised to unit L2 norm; zero rows stay zero (cosine 0 with everything).
std::vector<float> NormalizedRows(const float* x, int64_t n, int64_t d) {
  std::vector<float> out(static_cast<size_t>(n * d));
#pragma omp parallel for schedule(static) if (n * d >= kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(xi[j]) * xi[j];
    const float inv = ss > 0.0 ? static_cast<float>(1.0 / std::sqrt(ss)) : 0.0f;
    float* oi = out.data() + i * d;
    for (int64_t j = 0; j < d; ++j) oi[j] = xi[j] * inv;
  }
  return out;
}

// Uniform double in [0, 1) from the generator, defined bit for bit (unlike
// std::uniform_real_distribution, whose algorithm is left to the library).
double Uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Greedy k-means++ on unit rows xn (distance 1 - cosine, as in scikit-learn): each step samples
// `trials` candidates with probability proportional to the distance to the nearest seed and keeps
// the one that lowers the total distance most. Returns k distinct point indices.
std::vector<int64_t> SeedPlusPlus(const std::vector<float>& xn, int64_t n, int64_t d, int64_t k,
                                  std::mt19937_64& rng) {
  // Greedy trials pay off for few, well separated clusters; at the k of a context index (5% of the
  // keys) seeding would cost more than all Lloyd iterations, so plain k-means++ is used there.
  const int trials =
      k <= kGreedySeedingMaxK ? 2 + static_cast<int>(std::log(static_cast<double>(k))) : 1;
  std::vector<int64_t> seeds;
  seeds.reserve(k);
  std::vector<char> chosen(n, 0);
  std::vector<float> dist(n);  // 1 - cosine to the nearest seed, in [0, 2]; 0 for seeds
  std::vector<float> cand_dist(static_cast<size_t>(trials * n));
  std::vector<double> prefix(n);
  auto distance_to = [&](int64_t c, float* out) {
    const float* xc = xn.data() + c * d;
#pragma omp parallel for schedule(static) if (n * d >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
      const float dd = std::max(0.0f, 1.0f - cpu::Dot(xn.data() + i * d, xc, d));
      out[i] = std::min(dist[i], dd);
    }
  };
  std::fill(dist.begin(), dist.end(), 2.0f);
  const int64_t first = std::min(static_cast<int64_t>(Uniform(rng) * n), n - 1);
  distance_to(first, dist.data());
  seeds.push_back(first);
  chosen[first] = 1;
  dist[first] = 0.0f;
  std::vector<int64_t> cands;
  while (static_cast<int64_t>(seeds.size()) < k) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) prefix[i] = total += chosen[i] ? 0.0f : dist[i];
    cands.clear();
    if (total > 0.0) {
      for (int t = 0; t < trials; ++t) {
        // First point whose prefix exceeds r: it has dist > 0, so it is not a seed.
        const double r = Uniform(rng) * total;
        int64_t pick = std::upper_bound(prefix.begin(), prefix.end(), r) - prefix.begin();
        if (pick >= n) {  // rounding at the end of the range: the last point with mass
          pick = n - 1;
          while (chosen[pick] || dist[pick] <= 0.0f) --pick;
        }
        cands.push_back(pick);
      }
    } else {  // every remaining point duplicates a seed: take the first unchosen one
      for (int64_t i = 0; i < n && cands.empty(); ++i) {
        if (!chosen[i]) cands.push_back(i);
      }
    }
    int best = 0;
    double best_total = std::numeric_limits<double>::infinity();
    for (size_t t = 0; t < cands.size(); ++t) {
      float* cd = cand_dist.data() + t * n;
      distance_to(cands[t], cd);
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += cd[i];
      if (s < best_total) best_total = s, best = static_cast<int>(t);
    }
    const int64_t pick = cands[best];
    std::copy_n(cand_dist.data() + best * n, n, dist.data());
    seeds.push_back(pick);
    chosen[pick] = 1;
    dist[pick] = 0.0f;
  }
  return seeds;
}

// Register tile of the similarity kernel: kTileRows points x kTileCols centroids.
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCols = 16;

// out[i][c] = sum_j x[i][j] * ct[j][c] for i < kTileRows * row_tiles, c < k_pad, each element
// summed over j in order (no FMA contraction in ISO C++ mode), so every build and thread count
// gives the same bits. x: [row_tiles * kTileRows][d], ct: [d][k_pad] (centroids transposed,
// zero-padded), out: [row_tiles * kTileRows][k_pad]. Cloned for AVX2 machines (runtime dispatch).
using V8 = float __attribute__((vector_size(32)));

__attribute__((target_clones("arch=x86-64-v3", "default"))) void SimilarityTiles(
    const float* x, int64_t row_tiles, const float* ct, int64_t k_pad, int64_t d, float* out) {
  static_assert(kTileCols == 16, "two 8-lane vectors per tile row");
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    const float* xr = x + rt * kTileRows * d;
    for (int64_t c0 = 0; c0 < k_pad; c0 += kTileCols) {
      V8 acc[kTileRows][2] = {};
      for (int64_t j = 0; j < d; ++j) {
        V8 lo, hi;
        std::memcpy(&lo, ct + j * k_pad + c0, sizeof(V8));
        std::memcpy(&hi, ct + j * k_pad + c0 + 8, sizeof(V8));
        for (int64_t r = 0; r < kTileRows; ++r) {
          const float xv = xr[r * d + j];
          const V8 b = {xv, xv, xv, xv, xv, xv, xv, xv};
          acc[r][0] += b * lo;
          acc[r][1] += b * hi;
        }
      }
      for (int64_t r = 0; r < kTileRows; ++r) {
        float* o = out + (rt * kTileRows + r) * k_pad + c0;
        std::memcpy(o, &acc[r][0], sizeof(V8));
        std::memcpy(o + 8, &acc[r][1], sizeof(V8));
      }
    }
  }
}

// Best cluster (highest cosine) of every point; sim_out[i] receives that cosine.
// cn: [k][d] unit centroid directions.
void Assign(const std::vector<float>& xn, int64_t n, int64_t d, const std::vector<float>& cn,
            int64_t k, std::vector<int32_t>* assignment, std::vector<float>* sim_out) {
  const int64_t k_pad = (k + kTileCols - 1) / kTileCols * kTileCols;
  std::vector<float> ct(static_cast<size_t>(d * k_pad), 0.0f);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t j = 0; j < d; ++j) ct[j * k_pad + c] = cn[c * d + j];
  }
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  constexpr int64_t kTilesPerTask = 8;
#pragma omp parallel if (n * k * d >= kParallelMinWork)
  {
    std::vector<float> x(static_cast<size_t>(kTilesPerTask * kTileRows * d), 0.0f);
    std::vector<float> sims(static_cast<size_t>(kTilesPerTask * kTileRows * k_pad));
#pragma omp for schedule(dynamic)
    for (int64_t t0 = 0; t0 < tiles; t0 += kTilesPerTask) {
      const int64_t i0 = t0 * kTileRows;
      const int64_t rows = std::min(kTilesPerTask * kTileRows, n - i0);
      std::fill(x.begin(), x.end(), 0.0f);
      std::copy_n(xn.data() + i0 * d, rows * d, x.data());
      SimilarityTiles(x.data(), (rows + kTileRows - 1) / kTileRows, ct.data(), k_pad, d,
                      sims.data());
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = sims.data() + r * k_pad;
        int64_t best = 0;
        for (int64_t c = 1; c < k; ++c) {
          if (row[c] > row[best]) best = c;
        }
        (*assignment)[i0 + r] = static_cast<int32_t>(best);
        (*sim_out)[i0 + r] = row[best];
      }
    }
  }
}

// Moves the farthest points of multi-member clusters into empty clusters. Returns how many clusters
// were re-seeded.
int64_t ReseedEmpty(int64_t n, int64_t k, std::vector<int32_t>* assignment, std::vector<float>* sim,
                    std::vector<int32_t>* counts) {
  int64_t reseeded = 0;
  std::vector<int64_t> order;  // points by increasing cosine to their centroid (farthest first)
  for (int64_t c = 0; c < k; ++c) {
    if ((*counts)[c] > 0) continue;
    if (order.empty()) {
      order.resize(n);
      for (int64_t i = 0; i < n; ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return (*sim)[a] < (*sim)[b]; });
    }
    for (int64_t& i : order) {
      if (i < 0) continue;
      const int32_t from = (*assignment)[i];
      if ((*counts)[from] < 2) continue;
      --(*counts)[from];
      (*assignment)[i] = static_cast<int32_t>(c);
      (*counts)[c] = 1;
      (*sim)[i] = 1.0f;
      i = -1;  // used
      break;
    }
    SQZ_CHECK_EQ((*counts)[c], 1) << "k <= n guarantees a donor cluster";
    ++reseeded;
  }
  return reseeded;
}

}  // namespace

StatusOr<KMeansResult> SphericalKMeans(const float* points, int64_t n, int64_t d,
                                       const KMeansOptions& options) {
  if (n < 1 || d < 1) {
    return InvalidArgumentError("k-means needs n >= 1 points of d >= 1 dims, got n=" +
                                std::to_string(n) + " d=" + std::to_string(d));
  }
  const int64_t k = options.k;
  if (k < 1 || k > n) {
    return InvalidArgumentError("k-means needs 1 <= k <= n, got k=" + std::to_string(k) +
                                " n=" + std::to_string(n));
  }
  if (options.max_iterations < 1) {
    return InvalidArgumentError("k-means max_iterations must be >= 1");
  }
  if (!(options.tolerance >= 0.0)) return InvalidArgumentError("k-means tolerance must be >= 0");
  for (int64_t i = 0; i < n * d; ++i) {
    if (!std::isfinite(points[i])) {
      return InvalidArgumentError("k-means point " + std::to_string(i / d) + " is not finite");
    }
  }

  std::mt19937_64 rng(options.seed);
  const std::vector<float> xn = NormalizedRows(points, n, d);
  const std::vector<int64_t> seeds = SeedPlusPlus(xn, n, d, k, rng);
  std::vector<float> cn(static_cast<size_t>(k * d));
  for (int64_t c = 0; c < k; ++c) {
    std::copy_n(xn.data() + seeds[c] * d, d, cn.data() + c * d);
  }

  KMeansResult result;
  result.assignment.assign(n, -1);
  result.counts.assign(k, 0);
  std::vector<int32_t> next(n);
  std::vector<float> sim(n);
  std::vector<double> sum(static_cast<size_t>(k * d));
  for (int32_t it = 0; it < options.max_iterations; ++it) {
    Assign(xn, n, d, cn, k, &next, &sim);
    std::fill(result.counts.begin(), result.counts.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++result.counts[next[i]];
    result.reseeded += ReseedEmpty(n, k, &next, &sim, &result.counts);
    int64_t changed = 0;
    for (int64_t i = 0; i < n; ++i) changed += next[i] != result.assignment[i];
    result.assignment.swap(next);
    result.iterations = it + 1;
    // New directions: normalised sum of the unit members (spherical k-means).
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      double* s = sum.data() + static_cast<int64_t>(result.assignment[i]) * d;
      const float* x = xn.data() + i * d;
      for (int64_t j = 0; j < d; ++j) s[j] += x[j];
    }
    for (int64_t c = 0; c < k; ++c) {
      const double* s = sum.data() + c * d;
      double ss = 0.0;
      for (int64_t j = 0; j < d; ++j) ss += s[j] * s[j];
      if (ss == 0.0) continue;  // members cancel out: keep the previous direction
      const double inv = 1.0 / std::sqrt(ss);
      for (int64_t j = 0; j < d; ++j) cn[c * d + j] = static_cast<float>(s[j] * inv);
    }
    if (static_cast<double>(changed) < options.tolerance * static_cast<double>(n)) break;
  }

  // Stored centroids: means of the raw members.
  std::fill(sum.begin(), sum.end(), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double* s = sum.data() + static_cast<int64_t>(result.assignment[i]) * d;
    const float* x = points + i * d;
    for (int64_t j = 0; j < d; ++j) s[j] += x[j];
  }
  result.centroids.resize(static_cast<size_t>(k * d));
  for (int64_t c = 0; c < k; ++c) {
    SQZ_CHECK_GT(result.counts[c], 0) << "cluster " << c << " left empty";
    const double inv = 1.0 / result.counts[c];
    for (int64_t j = 0; j < d; ++j) {
      result.centroids[c * d + j] = static_cast<float>(sum[c * d + j] * inv);
    }
  }
  return result;
}

double AdjustedRandIndex(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  SQZ_CHECK_EQ(a.size(), b.size());
  const double n = static_cast<double>(a.size());
  if (a.size() < 2) return 1.0;
  std::map<std::pair<int32_t, int32_t>, int64_t> joint;
  std::map<int32_t, int64_t> ca, cb;
  for (size_t i = 0; i < a.size(); ++i) {
    ++joint[{a[i], b[i]}];
    ++ca[a[i]];
    ++cb[b[i]];
  }
  auto pairs = [](double x) { return x * (x - 1.0) / 2.0; };
  double index = 0.0, sa = 0.0, sb = 0.0;
  for (const auto& [key, c] : joint) index += pairs(static_cast<double>(c));
  for (const auto& [key, c] : ca) sa += pairs(static_cast<double>(c));
  for (const auto& [key, c] : cb) sb += pairs(static_cast<double>(c));
  const double expected = sa * sb / pairs(n);
  const double max_index = 0.5 * (sa + sb);
  if (max_index == expected) return 1.0;  // both trivial partitions
  return (index - expected) / (max_index - expected);
}

}  // namespace sqz
