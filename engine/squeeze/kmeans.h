// Spherical k-means over keys (ALGORITHM.md, offline step 3).
//
// Points are assigned to clusters by cosine similarity (on L2-normalised copies of the points and
// of the centroids); seeding is k-means++ on the normalised points (distance 1 - cosine); Lloyd
// iterations stop after max_iterations or when fewer than tolerance * n points change cluster. A
// cluster that becomes empty is re-seeded with the point farthest (lowest cosine) from its own
// centroid among clusters of two or more members, so every cluster ends non-empty. The returned
// centroid of a cluster is the mean of its members' raw (un-normalised) points, so that q . c keeps
// the key magnitudes.
//
// Deterministic for a seed: the random stream is a seeded std::mt19937_64 and every reduction has a
// fixed order, independent of the number of OpenMP threads. Thread safety: a pure function.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace sqz {

struct KMeansOptions {
  int64_t k = 1;                // clusters, 1 <= k <= n
  int32_t max_iterations = 20;  // Lloyd iterations at most (>= 1)
  double tolerance = 1e-3;      // early stop when changed assignments < tolerance * n
  uint64_t seed = 1234;
};

struct KMeansResult {
  std::vector<float> centroids;     // [k][d] mean of raw member points
  std::vector<int32_t> assignment;  // [n] cluster of each point
  std::vector<int32_t> counts;      // [k] members per cluster, all >= 1
  int32_t iterations = 0;           // Lloyd iterations run
  int64_t reseeded = 0;             // empty clusters re-seeded over all iterations
};

// points: [n][d] row-major. INVALID_ARGUMENT for n < 1, d < 1, k outside [1, n], non-finite points
// or bad options.
StatusOr<KMeansResult> SphericalKMeans(const float* points, int64_t n, int64_t d,
                                       const KMeansOptions& options);

// Adjusted Rand index between two labelings of the same n points (1 = identical partitions up to
// renaming, about 0 for independent ones). a, b: [n], labels >= 0.
double AdjustedRandIndex(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

}  // namespace sqz
