#include "kernels/cuda/kmeans.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cub/cub.cuh>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kmeans_internal.cuh"
#include "kernels/cuda/philox.h"

namespace sqz::cuda {
namespace {

using internal::AssignArgs;
using internal::AssignMode;
using internal::GridFor;
using internal::LaunchAssignment;
using internal::ToFloat;
using internal::WarpSum;
using bf16 = __nv_bfloat16;

constexpr char kOp[] = "BatchedSphericalKMeans";

// ---------------------------------------------------------------------------------------------
// Normalisation, seeding, re-seeding, CSR and centroid updates.

// xn[h][i] = bf16(x / |x|) (zero rows stay zero). One warp per point, lane l holds elements
// l, l + 32, ... (coalesced loads for any element type).
template <int D, typename T>
__global__ void NormalizeKernel(PointsView view, int64_t n, int64_t total, bf16* xn) {
  constexpr int kE = D / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t p = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const T* row = internal::PointRow<T>(view, p / n, p % n);
    float x[kE];
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      x[e] = ToFloat(row[lane + 32 * e]);
      ss += x[e] * x[e];
    }
    ss = WarpSum(ss);
    const float inv = ss > 0.0f ? rsqrtf(ss) : 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) xn[p * D + lane + 32 * e] = __float2bfloat16_rn(x[e] * inv);
  }
}

__global__ void FillFloatKernel(float* x, int64_t total, float value) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = value;
  }
}

// Sort keys of one seeding round: (head, tier, -log(u) / D(x)), value = point id. Tier 0: D > 0;
// 1: D = 0 and not yet a seed (duplicates of seeds, taken only when nothing else is left); 2:
// seeds.
constexpr int kSeedHeadShift = 34;

__global__ void SeedKeysKernel(const float* dist, const int32_t* chosen, int64_t n, int64_t total,
                               uint64_t seed, uint32_t round, uint64_t* keys, int32_t* vals) {
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = p / n, i = p % n;
    const Philox4 r =
        Philox4x32(static_cast<uint32_t>(i), static_cast<uint32_t>(h), round, 0x6b6d65u,
                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    const float u = (static_cast<float>(r.v[0] >> 8) + 1.0f) * 0x1.0p-24f;  // (0, 1]
    uint64_t tier, bits;
    if (chosen[p]) {
      tier = 2, bits = 0;
    } else if (dist[p] > 0.0f) {
      tier = 0, bits = __float_as_uint(-__logf(u) / dist[p]) & 0x7fffffffu;  // no -0
    } else {
      tier = 1, bits = __float_as_uint(u);
    }
    keys[p] = (static_cast<uint64_t>(h) << kSeedHeadShift) | (tier << 32) | bits;
    vals[p] = static_cast<int32_t>(i);
  }
}

// The first m sorted points of every head become seeds base .. base + m - 1. Warp per seed.
template <int D>
__global__ void SeedPickKernel(const int32_t* sorted_vals, const bf16* xn, int64_t n, int64_t k,
                               int64_t base, int64_t m, int64_t total, int32_t* chosen, bf16* cn) {
  const int lane = threadIdx.x % 32;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < total;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const int64_t h = w / m, j = w % m;
    const int64_t i = sorted_vals[h * n + j];
    for (int e = lane; e < D; e += 32) cn[(h * k + base + j) * D + e] = xn[(h * n + i) * D + e];
    if (lane == 0) chosen[h * n + i] = 1;
  }
}

// Greedy k-means++ (as the CPU reference does for k <= kGreedySeedingMaxK): the first `trials`
// sorted points of a head are candidates; partial[h][block][t] = sum over the block's points of
// min(D(x), 1 - cos(x, candidate t)), the potential if candidate t became the next seed.
constexpr int64_t kGreedySeedingMaxK = 256;
constexpr int kMaxTrials = 8;
constexpr int kPotentialThreads = 256;

template <int D>
__global__ void __launch_bounds__(kPotentialThreads)
    PotentialKernel(const bf16* xn, const float* dist, const int32_t* sorted_vals, int64_t n,
                    int trials, float* partial) {
  __shared__ float cand[kMaxTrials][D];
  __shared__ float red[kPotentialThreads / 32][kMaxTrials];
  const int64_t h = blockIdx.y;
  for (int q = threadIdx.x; q < kMaxTrials * D; q += blockDim.x) {
    const int t = q / D, e = q % D;
    cand[t][e] = t < trials ? __bfloat162float(xn[(h * n + sorted_vals[h * n + t]) * D + e]) : 0.0f;
  }
  __syncthreads();
  float sum[kMaxTrials] = {};
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bf16* x = xn + (h * n + i) * D;
    float dot[kMaxTrials] = {};
    for (int e = 0; e < D; ++e) {
      const float xe = __bfloat162float(x[e]);
#pragma unroll
      for (int t = 0; t < kMaxTrials; ++t) dot[t] += xe * cand[t][e];
    }
    const float di = dist[h * n + i];
#pragma unroll
    for (int t = 0; t < kMaxTrials; ++t) sum[t] += fminf(di, fmaxf(0.0f, 1.0f - dot[t]));
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < kMaxTrials; ++t) {
    const float v = WarpSum(sum[t]);
    if (lane == 0) red[warp][t] = v;
  }
  __syncthreads();
  if (threadIdx.x < trials) {
    float v = 0.0f;
    for (int w = 0; w < kPotentialThreads / 32; ++w) v += red[w][threadIdx.x];
    partial[(h * gridDim.x + blockIdx.x) * kMaxTrials + threadIdx.x] = v;
  }
}

// Per head: the candidate with the lowest potential (first on ties) moves to sorted position 0.
__global__ void GreedyPickKernel(const float* partial, int blocks, int trials, int heads, int64_t n,
                                 int32_t* sorted_vals) {
  for (int h = blockIdx.x * blockDim.x + threadIdx.x; h < heads; h += gridDim.x * blockDim.x) {
    int best = 0;
    double best_total = 0.0;
    for (int t = 0; t < trials; ++t) {
      double total = 0.0;
      for (int b = 0; b < blocks; ++b)
        total += partial[(static_cast<int64_t>(h) * blocks + b) * kMaxTrials + t];
      if (t == 0 || total < best_total) best_total = total, best = t;
    }
    int32_t* v = sorted_vals + static_cast<int64_t>(h) * n;
    const int32_t winner = v[best];
    v[best] = v[0];
    v[0] = winner;
  }
}

// Empty clusters of one head (one block per head) take, in cluster id order, the point with the
// lowest cosine to its centroid among clusters of >= 2 members (lowest index on ties).
constexpr int kReseedThreads = 1024;
constexpr int kReseedBatch = 2048;

__global__ void __launch_bounds__(kReseedThreads)
    ReseedKernel(int32_t* assign, float* sim, int32_t* counts, const int32_t* active, int64_t n,
                 int64_t k, int64_t* reseeded) {
  const int h = blockIdx.x;
  if (active[h] == 0) return;
  using BlockScan = cub::BlockScan<int, kReseedThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ int32_t empties[kReseedBatch];
  __shared__ int n_empty;
  __shared__ float red_v[kReseedThreads / 32];
  __shared__ int64_t red_i[kReseedThreads / 32];
  int32_t* a = assign + static_cast<int64_t>(h) * n;
  float* s = sim + static_cast<int64_t>(h) * n;
  int32_t* cnt = counts + static_cast<int64_t>(h) * k;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (;;) {
    if (threadIdx.x == 0) n_empty = 0;
    __syncthreads();
    for (int64_t c0 = 0; c0 < k; c0 += kReseedThreads) {
      const int64_t c = c0 + threadIdx.x;
      const int flag = c < k && cnt[c] == 0 ? 1 : 0;
      int pos, total;
      BlockScan(scan_storage).ExclusiveSum(flag, pos, total);
      const int base = n_empty;
      if (flag && base + pos < kReseedBatch) empties[base + pos] = static_cast<int32_t>(c);
      __syncthreads();
      if (threadIdx.x == 0) n_empty = min(base + total, kReseedBatch);
      __syncthreads();
      if (n_empty == kReseedBatch) break;
    }
    const int batch = n_empty;
    if (batch == 0) return;
    for (int e = 0; e < batch; ++e) {
      float bv = INFINITY;
      int64_t bi = INT64_MAX;
      for (int64_t i = threadIdx.x; i < n; i += kReseedThreads) {
        if (cnt[a[i]] >= 2 && s[i] < bv) bv = s[i], bi = i;  // i ascending per thread
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (ov < bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
      }
      if (lane == 0) red_v[warp] = bv, red_i[warp] = bi;
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 1; w < kReseedThreads / 32; ++w) {
          if (red_v[w] < bv || (red_v[w] == bv && red_i[w] < bi)) bv = red_v[w], bi = red_i[w];
        }
        if (bi != INT64_MAX) {  // k <= n guarantees a donor
          const int32_t c = empties[e];
          --cnt[a[bi]];
          a[bi] = c;
          cnt[c] = 1;
          s[bi] = 1.0f;
          if (reseeded != nullptr) ++reseeded[h];
        }
      }
      __syncthreads();
    }
    if (batch < kReseedBatch) return;
  }
}

// keys = head * k + cluster, vals = point id; changed[h] += points whose cluster moved.
__global__ void LoopKeysKernel(const int32_t* assign, const int32_t* prev, const int32_t* active,
                               int64_t n, int64_t k, uint32_t* keys, int32_t* vals,
                               int32_t* changed) {
  const int h = blockIdx.y;
  int moved = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = static_cast<int64_t>(h) * n + i;
    keys[p] = static_cast<uint32_t>(h * k + assign[p]);
    vals[p] = static_cast<int32_t>(i);
    moved += assign[p] != prev[p];
  }
  if (active[h] == 0) return;
  moved = __reduce_add_sync(0xffffffffu, moved);
  if (threadIdx.x % 32 == 0 && moved > 0) atomicAdd(&changed[h], moved);
}

// Local CSR offsets [heads][k+1] from the sorted keys (head * k + cluster): every key value in
// (keys[p-1], keys[p]] starts at position p.
__global__ void CsrKernel(const uint32_t* keys, int64_t total, int64_t n, int64_t k, int64_t n_keys,
                          int32_t* offsets) {
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p <= total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t lo = p == 0 ? 0 : static_cast<int64_t>(keys[p - 1]) + 1;
    const int64_t hi = p == total ? n_keys - 1 : static_cast<int64_t>(keys[p]);
    for (int64_t key = lo; key <= hi; ++key) {
      const int64_t h = key / k;
      offsets[h * (k + 1) + key % k] = static_cast<int32_t>(p - h * n);
    }
    if (p < n_keys / k) offsets[p * (k + 1) + k] = static_cast<int32_t>(n);
  }
}

// New unit direction of every cluster of the active heads: normalised sum of its unit members
// (in CSR order); a cluster whose members cancel out keeps its direction. Warp per cluster.
template <int D>
__global__ void UpdateDirectionsKernel(const bf16* xn, const int32_t* order, const int32_t* offsets,
                                       const int32_t* active, int64_t n, int64_t k, int64_t total,
                                       bf16* cn) {
  constexpr int kE = D / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < total;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const int64_t h = w / k, c = w % k;
    if (active[h] == 0) continue;
    const int32_t* off = offsets + h * (k + 1);
    float sum[kE] = {};
    for (int32_t q = off[c]; q < off[c + 1]; ++q) {
      const bf16* row = xn + (h * n + order[h * n + q]) * D;
#pragma unroll
      for (int e = 0; e < kE; ++e) sum[e] += __bfloat162float(row[lane + 32 * e]);
    }
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) ss += sum[e] * sum[e];
    ss = WarpSum(ss);
    if (ss == 0.0f) continue;
    const float inv = rsqrtf(ss);
#pragma unroll
    for (int e = 0; e < kE; ++e) cn[w * D + lane + 32 * e] = __float2bfloat16_rn(sum[e] * inv);
  }
}

// Early stop per head; counts the heads still running into *n_active.
__global__ void StopKernel(const int32_t* changed, int32_t* active, int32_t* iterations, int heads,
                           int32_t iteration, double limit, int32_t* n_active) {
  for (int h = blockIdx.x * blockDim.x + threadIdx.x; h < heads; h += gridDim.x * blockDim.x) {
    if (active[h] == 0) continue;
    if (iterations != nullptr) iterations[h] = iteration + 1;
    if (static_cast<double>(changed[h]) < limit) {
      active[h] = 0;
    } else {
      atomicAdd(n_active, 1);
    }
  }
}

// Final counts and raw (optionally weighted) member means. Warp per cluster.
template <int D, typename T>
__global__ void RawCentroidsKernel(PointsView view, const float* weights, const int32_t* order,
                                   const int32_t* offsets, int64_t n, int64_t k, int64_t total,
                                   int32_t* counts, float* centroids) {
  constexpr int kE = D / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < total;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const int64_t h = w / k, c = w % k;
    const int32_t* off = offsets + h * (k + 1);
    float sum[kE] = {}, wsum_plain[kE] = {};
    float wsum = 0.0f;
    for (int32_t q = off[c]; q < off[c + 1]; ++q) {
      const int64_t i = order[h * n + q];
      const T* row = internal::PointRow<T>(view, h, i);
      const float wi = weights != nullptr ? weights[h * n + i] : 1.0f;
      wsum += wi;
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const float x = ToFloat(row[lane + 32 * e]);
        sum[e] += wi * x;
        wsum_plain[e] += x;
      }
    }
    const int32_t count = off[c + 1] - off[c];
    if (lane == 0) counts[w] = count;
    const bool weighted = weights != nullptr && wsum > 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      centroids[w * D + lane + 32 * e] =
          weighted ? sum[e] / wsum : wsum_plain[e] / static_cast<float>(max(count, 1));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Workspace.

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

int BitsFor(uint64_t max_value) {  // bits needed to hold values 0 .. max_value
  int bits = 1;
  while (bits < 64 && (max_value >> bits) != 0) ++bits;
  return bits;
}

struct Layout {
  size_t xn, cn, sim, prev, keys_a, keys_b, vals_in, vals_tmp, small, partial, cub, total;
  size_t cub_bytes;
};

StatusOr<Layout> MakeLayout(const KMeansShape& s) {
  if (s.heads < 1 || s.n < 1 || s.k < 1 || s.k > s.n) {
    return ArgError(
        kOp, "needs heads >= 1, n >= 1 and 1 <= k <= n, got heads=" + std::to_string(s.heads) +
                 " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k));
  }
  if (s.d != 64 && s.d != 128) {
    return UnsupportedError(kOp, "head_dim " + std::to_string(s.d) + " is not compiled (64, 128)");
  }
  const int64_t total = static_cast<int64_t>(s.heads) * s.n;
  if (total >= (int64_t{1} << 31)) return ArgError(kOp, "heads * n must be < 2^31");
  size_t cub64 = 0, cub32 = 0;
  SQZ_CUDA_RETURN_IF_ERROR(
      cub::DeviceRadixSort::SortPairs(
          nullptr, cub64, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
          static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), total, 0, 64),
      kOp);
  SQZ_CUDA_RETURN_IF_ERROR(
      cub::DeviceRadixSort::SortPairs(
          nullptr, cub32, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
          static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), total, 0, 32),
      kOp);
  Layout l{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += AlignUp(bytes);
    return here;
  };
  l.xn = take(static_cast<size_t>(total) * s.d * sizeof(bf16));
  l.cn = take(static_cast<size_t>(s.heads) * s.k * s.d * sizeof(bf16));
  l.sim = take(static_cast<size_t>(total) * sizeof(float));
  l.prev = take(static_cast<size_t>(total) * sizeof(int32_t));
  l.keys_a = take(static_cast<size_t>(total) * sizeof(uint64_t));
  l.keys_b = take(static_cast<size_t>(total) * sizeof(uint64_t));
  l.vals_in = take(static_cast<size_t>(total) * sizeof(int32_t));
  l.vals_tmp = take(static_cast<size_t>(total) * sizeof(int32_t));
  l.small = take((2 * static_cast<size_t>(s.heads) + 1) * sizeof(int32_t));  // changed, active, n
  l.partial = take(static_cast<size_t>(s.heads) * 64 * kMaxTrials * sizeof(float));
  l.cub_bytes = std::max(cub64, cub32);
  l.cub = take(l.cub_bytes);
  l.total = at;
  return l;
}

template <int D>
Status RunKMeans(const KMeansShape& s, const KMeansParams& prm, const PointsView& points,
                 const float* weights, const KMeansOutputs& out, char* ws, const Layout& l,
                 cudaStream_t stream, KMeansStats* stats) {
  const int64_t n = s.n, k = s.k, total = static_cast<int64_t>(s.heads) * n;
  bf16* xn = reinterpret_cast<bf16*>(ws + l.xn);
  bf16* cn = reinterpret_cast<bf16*>(ws + l.cn);
  float* sim = reinterpret_cast<float*>(ws + l.sim);
  int32_t* prev = reinterpret_cast<int32_t*>(ws + l.prev);
  void* keys_a = ws + l.keys_a;
  void* keys_b = ws + l.keys_b;
  int32_t* vals_in = reinterpret_cast<int32_t*>(ws + l.vals_in);
  int32_t* vals_tmp = reinterpret_cast<int32_t*>(ws + l.vals_tmp);
  int32_t* changed = reinterpret_cast<int32_t*>(ws + l.small);
  int32_t* active = changed + s.heads;
  int32_t* n_active = active + s.heads;
  void* cub_tmp = ws + l.cub;
  size_t cub_bytes = l.cub_bytes;
  constexpr int kThreads = 256;

  internal::StageEvents<8> ev(stats != nullptr, stream);
  KMeansStats local;
  ev.Mark(0);
  const bool bf16_points = points.type == PointType::kBf16;
  if (bf16_points) {
    NormalizeKernel<D, bf16>
        <<<GridFor(total * 32, kThreads), kThreads, 0, stream>>>(points, n, total, xn);
  } else {
    NormalizeKernel<D, float>
        <<<GridFor(total * 32, kThreads), kThreads, 0, stream>>>(points, n, total, xn);
  }
  SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));

  ev.Mark(1);
  // Seeding: batched D^2 sampling; sim holds D(x), prev marks the seeds.
  // Small k: one seed per round with greedy trials, as the CPU reference; else batched rounds.
  const bool greedy = k <= kGreedySeedingMaxK;
  const int64_t rounds = greedy ? k : std::min<int64_t>(k, prm.seed_rounds);
  const int trials =
      greedy ? std::min(kMaxTrials, 2 + static_cast<int>(std::log(static_cast<double>(k)))) : 1;
  const int potential_blocks =
      static_cast<int>(std::min<int64_t>((n + kPotentialThreads - 1) / kPotentialThreads, 64));
  float* partial = reinterpret_cast<float*>(ws + l.partial);
  FillFloatKernel<<<GridFor(total, kThreads), kThreads, 0, stream>>>(sim, total, 1.0f);
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(prev, 0, total * sizeof(int32_t), stream), kOp);
  const int seed_end_bit = kSeedHeadShift + BitsFor(static_cast<uint64_t>(s.heads - 1));
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t base = k * r / rounds, m = k * (r + 1) / rounds - base;
    if (m == 0) continue;
    SeedKeysKernel<<<GridFor(total, kThreads), kThreads, 0, stream>>>(
        sim, prev, n, total, prm.seed, static_cast<uint32_t>(r), static_cast<uint64_t*>(keys_a),
        vals_in);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    SQZ_CUDA_RETURN_IF_ERROR(
        cub::DeviceRadixSort::SortPairs(cub_tmp, cub_bytes, static_cast<const uint64_t*>(keys_a),
                                        static_cast<uint64_t*>(keys_b), vals_in, vals_tmp, total, 0,
                                        seed_end_bit, stream),
        kOp);
    const int cands = static_cast<int>(std::min<int64_t>(trials, n - base));
    if (greedy && r > 0 && cands > 1) {
      PotentialKernel<D><<<dim3(potential_blocks, s.heads), kPotentialThreads, 0, stream>>>(
          xn, sim, vals_tmp, n, cands, partial);
      SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
      GreedyPickKernel<<<GridFor(s.heads, 128), 128, 0, stream>>>(partial, potential_blocks, cands,
                                                                  s.heads, n, vals_tmp);
      SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    }
    SeedPickKernel<D><<<GridFor(s.heads * m * 32, kThreads), kThreads, 0, stream>>>(
        vals_tmp, xn, n, k, base, m, s.heads * m, prev, cn);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    if (r + 1 < rounds) {
      AssignArgs args{};
      args.xn = xn;
      args.n = n;
      args.cent = cn + base * D;
      args.cent_head_stride = k * D;
      args.kc = m;
      args.dist = sim;
      SQZ_RETURN_IF_ERROR(
          LaunchAssignment(AssignMode::kSeedDistance, D, args, s.heads, stream, kOp));
    }
  }

  ev.Mark(2);
  // Lloyd iterations.
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out.assignment, 0xFF, total * sizeof(int32_t), stream),
                           kOp);
  std::vector<int32_t> ones(s.heads, 1);
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(active, ones.data(), s.heads * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, stream),
                           kOp);
  if (out.iterations != nullptr) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out.iterations, 0, s.heads * sizeof(int32_t), stream),
                             kOp);
  }
  if (out.reseeded != nullptr) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out.reseeded, 0, s.heads * sizeof(int64_t), stream),
                             kOp);
  }
  const int key_end_bit = BitsFor(static_cast<uint64_t>(s.heads) * k - 1);
  const double limit = prm.tolerance * static_cast<double>(n);
  int32_t loops = 0;
  for (int32_t it = 0; it < prm.max_iterations; ++it) {
    SQZ_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(out.counts, 0, static_cast<size_t>(s.heads) * k * sizeof(int32_t), stream),
        kOp);
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(changed, 0, s.heads * sizeof(int32_t), stream), kOp);
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(n_active, 0, sizeof(int32_t), stream), kOp);
    ev.Mark(3);
    AssignArgs args{};
    args.xn = xn;
    args.n = n;
    args.cent = cn;
    args.cent_head_stride = k * D;
    args.kc = k;
    args.active = active;
    args.assign = out.assignment;
    args.prev = prev;
    args.sim = sim;
    args.counts = out.counts;
    SQZ_RETURN_IF_ERROR(LaunchAssignment(AssignMode::kAssign, D, args, s.heads, stream, kOp));
    ev.Mark(4);
    ReseedKernel<<<s.heads, kReseedThreads, 0, stream>>>(out.assignment, sim, out.counts, active, n,
                                                         k, out.reseeded);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    const dim3 key_grid(GridFor(n, kThreads), s.heads);
    LoopKeysKernel<<<key_grid, kThreads, 0, stream>>>(
        out.assignment, prev, active, n, k, static_cast<uint32_t*>(keys_a), vals_in, changed);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    SQZ_CUDA_RETURN_IF_ERROR(
        cub::DeviceRadixSort::SortPairs(cub_tmp, cub_bytes, static_cast<const uint32_t*>(keys_a),
                                        static_cast<uint32_t*>(keys_b), vals_in, out.order, total,
                                        0, key_end_bit, stream),
        kOp);
    CsrKernel<<<GridFor(total + 1, kThreads), kThreads, 0, stream>>>(
        static_cast<const uint32_t*>(keys_b), total, n, k, static_cast<int64_t>(s.heads) * k,
        out.offsets);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    const int64_t clusters = static_cast<int64_t>(s.heads) * k;
    UpdateDirectionsKernel<D><<<GridFor(clusters * 32, kThreads), kThreads, 0, stream>>>(
        xn, out.order, out.offsets, active, n, k, clusters, cn);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    StopKernel<<<GridFor(s.heads, kThreads), kThreads, 0, stream>>>(changed, active, out.iterations,
                                                                    s.heads, it, limit, n_active);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    ev.Mark(5);
    ++loops;
    int32_t still = 0;
    SQZ_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(&still, n_active, sizeof(int32_t), cudaMemcpyDeviceToHost, stream), kOp);
    SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), kOp);
    local.assign_ms += ev.Ms(3, 4);
    local.update_ms += ev.Ms(4, 5);
    if (still == 0) break;
  }
  ev.Mark(6);

  const int64_t clusters = static_cast<int64_t>(s.heads) * k;
  if (bf16_points) {
    RawCentroidsKernel<D, bf16><<<GridFor(clusters * 32, kThreads), kThreads, 0, stream>>>(
        points, weights, out.order, out.offsets, n, k, clusters, out.counts, out.centroids);
  } else {
    RawCentroidsKernel<D, float><<<GridFor(clusters * 32, kThreads), kThreads, 0, stream>>>(
        points, weights, out.order, out.offsets, n, k, clusters, out.counts, out.centroids);
  }
  SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
  if (stats != nullptr) {
    ev.Mark(7);
    SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), kOp);
    local.loop_iterations = loops;
    local.normalize_ms = ev.Ms(0, 1);
    local.seed_ms = ev.Ms(1, 2);
    local.final_ms = ev.Ms(6, 7);
    *stats = local;
  }
  return OkStatus();
}

}  // namespace

Status NearestCentroids(const __nv_bfloat16* points, const __nv_bfloat16* centroids, int32_t heads,
                        int64_t n, int64_t k, int32_t d, int32_t* assignment, float* similarity,
                        cudaStream_t stream) {
  constexpr char kNearestOp[] = "NearestCentroids";
  if (heads < 1 || n < 1 || k < 1) {
    return ArgError(kNearestOp, "needs heads, n, k >= 1");
  }
  if (!points || !centroids || !assignment || !similarity) {
    return ArgError(kNearestOp, "null pointer");
  }
  if ((reinterpret_cast<uintptr_t>(points) | reinterpret_cast<uintptr_t>(centroids)) % 16 != 0) {
    return ArgError(kNearestOp, "points and centroids must be 16-byte aligned");
  }
  internal::AssignArgs args{};
  args.xn = points;
  args.n = n;
  args.cent = centroids;
  args.cent_head_stride = k * d;
  args.kc = k;
  args.assign = assignment;
  args.sim = similarity;
  return internal::LaunchAssignment(internal::AssignMode::kNearest, d, args, heads, stream,
                                    kNearestOp);
}

StatusOr<size_t> KMeansWorkspaceBytes(const KMeansShape& shape) {
  SQZ_ASSIGN_OR_RETURN(Layout l, MakeLayout(shape));
  return l.total;
}

Status BatchedSphericalKMeans(const KMeansShape& shape, const KMeansParams& params,
                              const PointsView& points, const float* weights,
                              const KMeansOutputs& out, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream, KMeansStats* stats) {
  SQZ_ASSIGN_OR_RETURN(Layout l, MakeLayout(shape));
  if (params.max_iterations < 1) return ArgError(kOp, "max_iterations must be >= 1");
  if (!(params.tolerance >= 0.0)) return ArgError(kOp, "tolerance must be >= 0");
  if (params.seed_rounds < 1) return ArgError(kOp, "seed_rounds must be >= 1");
  if (points.data == nullptr) return ArgError(kOp, "null points");
  if (points.heads_inner < 1) return ArgError(kOp, "points.heads_inner must be >= 1");
  if (points.type != PointType::kF32 && points.type != PointType::kBf16) {
    return ArgError(kOp, "unknown point type");
  }
  if (!out.assignment || !out.order || !out.offsets || !out.counts || !out.centroids) {
    return ArgError(kOp, "null output (assignment, order, offsets, counts and centroids needed)");
  }
  if (workspace == nullptr || workspace_bytes < l.total) {
    return ArgError(kOp, "workspace of " + std::to_string(workspace_bytes) + " bytes, needs " +
                             std::to_string(l.total));
  }
  if (reinterpret_cast<uintptr_t>(workspace) % kAlign != 0) {
    return ArgError(kOp, "workspace must be 256-byte aligned");
  }
  char* ws = static_cast<char*>(workspace);
  if (shape.d == 128)
    return RunKMeans<128>(shape, params, points, weights, out, ws, l, stream, stats);
  return RunKMeans<64>(shape, params, points, weights, out, ws, l, stream, stats);
}

}  // namespace sqz::cuda
