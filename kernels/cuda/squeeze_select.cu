#include "kernels/cuda/squeeze_select.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"

namespace sqz::cuda {
namespace {

constexpr int kScoreThreads = 256;
constexpr int kScoreChunk = 256;  // items (centroids) per scoring block
constexpr int kSelectThreads = 1024;
constexpr int kMaxG = kSqueezeMaxGroup;

// Which index level a launch works on.
enum class Level : int { kFlat = 0, kCoarse = 1, kFine = 2 };  // kFine: under kept coarse groups

// Workspace carve-up, in bytes (each part 256-byte aligned).
struct Workspace {
  size_t fine_scores, fine_stats, fine_keys, fine_flags;
  size_t coarse_scores, coarse_stats, coarse_keys, coarse_flags, coarse_weights;
  size_t total;
};

size_t Align(size_t x) { return (x + 255) / 256 * 256; }

Workspace Carve(const SqueezeSelectParams& p, int fine_chunks, int coarse_chunks) {
  const size_t units = static_cast<size_t>(std::max(p.batch, 0)) * std::max(p.n_kv_heads, 0);
  const size_t g = p.n_kv_heads > 0 ? static_cast<size_t>(p.n_q_heads / p.n_kv_heads) : 0;
  const size_t k = std::max(p.max_clusters, 0), k1 = p.hierarchical ? std::max(p.max_coarse, 0) : 0;
  Workspace w{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += Align(bytes);
    return here;
  };
  w.fine_scores = take(units * g * k * sizeof(float));
  w.fine_stats = take(units * g * fine_chunks * sizeof(float2));
  w.fine_keys = take(units * k * sizeof(uint32_t));
  w.fine_flags = take(units * k);
  w.coarse_scores = take(units * g * k1 * sizeof(float));
  w.coarse_stats = take(units * g * coarse_chunks * sizeof(float2));
  w.coarse_keys = take(units * k1 * sizeof(uint32_t));
  w.coarse_flags = take(units * k1);
  w.coarse_weights = take(units * k1 * sizeof(int32_t));
  w.total = at;
  return w;
}

// Arguments shared by the kernels of one level.
struct LevelArgs {
  Level level;
  int max_items;  // bound of the items per (request, kv head) on this level
  int chunks;     // scoring blocks per (request, kv head)
  float* scores;  // [batch][H][g][max_items]
  float2* stats;  // [batch][H][g][chunks] (max, sum N exp(s - max))
  uint32_t* keys;       // [batch][H][max_items]
  uint8_t* flags;       // [batch][H][max_items] by item id
  int32_t* weights;     // coarse: [batch][H][max_coarse] keys under each group
  // Coarse results read by the fine level of a hierarchical lookup.
  const float* coarse_scores;
  const uint8_t* coarse_flags;
  const int32_t* coarse_weights;
  int max_coarse;
};

// Items of (view, h) on a level: how many, and whether the fine level runs under a coarse one.
__device__ __forceinline__ int NumItems(const SqueezeLayerView& v, Level level, int max_items) {
  const int n = level == Level::kCoarse ? v.num_coarse : v.num_clusters;
  return max(0, min(n, max_items));
}
__device__ __forceinline__ bool Hierarchical(const SqueezeLayerView& v, Level level) {
  return level == Level::kFine && v.num_coarse > 0;
}

// Scores one chunk of items for the g query heads of (request, kv head); leaves the scores and the
// chunk's (max, sum of weight * exp(s - max)) per head. Items skipped (fine level: group not kept)
// score -inf. grid: (batch, chunks, n_kv_heads); kScoreThreads threads; 8 lanes per item.
template <int D>
__global__ void __launch_bounds__(kScoreThreads)
    ScoreKernel(SqueezeSelectParams p, LevelArgs a) {
  constexpr int kLanes = 8;                 // lanes per item, 16 bytes each per step
  constexpr int kSteps = D / (8 * kLanes);  // 16-byte loads per lane per item
  __shared__ __align__(16) float q_s[kMaxG * D];
  __shared__ float s_s[kMaxG][kScoreChunk];
  __shared__ float w_s[kScoreChunk];
  const int r = blockIdx.x, chunk = blockIdx.y, h = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = p.n_q_heads / p.n_kv_heads;
  const SqueezeLayerView v = p.views[r];
  const int n = NumItems(v, a.level, a.max_items);
  const int k = max(0, min(v.num_clusters, p.max_clusters));
  const bool hier = Hierarchical(v, a.level);
  const int k1 = hier ? max(0, min(v.num_coarse, a.max_coarse)) : 0;
  const int64_t unit = static_cast<int64_t>(r) * p.n_kv_heads + h;

  for (int i = tid; i < g * D; i += kScoreThreads) {
    const int j = i / D, dim = i % D;
    q_s[i] = __bfloat162float(p.q[r * p.q_stride + (h * g + j) * D + dim]) * p.scale;
  }
  __syncthreads();

  const __nv_bfloat16* cents =
      a.level == Level::kCoarse ? v.coarse_centroids + static_cast<int64_t>(h) * v.num_coarse * D
                                : v.centroids + static_cast<int64_t>(h) * v.num_clusters * D;
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const int32_t* coff = hier || a.level == Level::kCoarse
                            ? v.coarse_offsets + static_cast<int64_t>(h) * (v.num_coarse + 1)
                            : nullptr;
  const int32_t* members = hier || a.level == Level::kCoarse
                               ? v.coarse_members + static_cast<int64_t>(h) * v.num_clusters
                               : nullptr;
  const uint8_t* kept = hier ? a.coarse_flags + unit * a.max_coarse : nullptr;

  // 4 items per warp step: lanes 8i .. 8i+7 share item i.
  const int sub = lane / kLanes, sl = lane % kLanes;
  const int base = chunk * kScoreChunk;
  for (int it = warp * 4 + sub; it < kScoreChunk; it += (kScoreThreads / 32) * 4) {
    const int item = base + it;
    bool valid = item < n;
    int id = item;
    float weight = 0.0f;
    if (valid && hier) {
      // Item = position in coarse_members; score it only when its coarse group is kept.
      int lo = 0, hi = k1;  // first group whose end exceeds item
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (coff[mid + 1] > item) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      valid = lo < k1 && kept[lo] != 0;
      id = members[item];
      valid = valid && id >= 0 && id < k;
    }
    if (valid) {
      if (a.level == Level::kCoarse) {
        // The item's 8 lanes agree on `valid`: shuffle within them only.
        const unsigned lanes = 0xFFu << (sub * kLanes);
        int32_t sum = 0;
        for (int m = coff[item] + sl; m < coff[item + 1]; m += kLanes) {
          const int c = members[m];
          sum += (c >= 0 && c < k) ? counts[c] : 0;
        }
        for (int off = kLanes / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(lanes, sum, off);
        weight = static_cast<float>(sum);
        if (sl == 0) a.weights[unit * a.max_items + item] = sum;
      } else {
        weight = static_cast<float>(counts[id]);
      }
    }
    float dot[kMaxG];
#pragma unroll
    for (int j = 0; j < kMaxG; ++j) dot[j] = 0.0f;
    if (valid) {
      const __nv_bfloat16* row = cents + static_cast<int64_t>(id) * D;
#pragma unroll
      for (int st = 0; st < kSteps; ++st) {
        const int col = (st * kLanes + sl) * 8;
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + col));
        const __nv_bfloat162* c2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
        float c[8];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 f = __bfloat1622float2(c2[e]);
          c[2 * e] = f.x;
          c[2 * e + 1] = f.y;
        }
#pragma unroll
        for (int j = 0; j < kMaxG; ++j) {
          if (j < g) {
            const float4 qa = *reinterpret_cast<const float4*>(q_s + j * D + col);
            const float4 qb = *reinterpret_cast<const float4*>(q_s + j * D + col + 4);
            float d = dot[j];
            d = fmaf(qa.x, c[0], d);
            d = fmaf(qa.y, c[1], d);
            d = fmaf(qa.z, c[2], d);
            d = fmaf(qa.w, c[3], d);
            d = fmaf(qb.x, c[4], d);
            d = fmaf(qb.y, c[5], d);
            d = fmaf(qb.z, c[6], d);
            d = fmaf(qb.w, c[7], d);
            dot[j] = d;
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxG; ++j) {
      if (j < g) {
        float d = dot[j];
        for (int off = kLanes / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        dot[j] = d;
      }
    }
    if (sl == 0) {
      for (int j = 0; j < g; ++j) s_s[j][it] = valid ? dot[j] : -INFINITY;
      w_s[it] = weight;
    }
  }
  __syncthreads();
  // Scores out (coalesced), then warp j reduces head j of the chunk.
  for (int i = tid; i < g * kScoreChunk; i += kScoreThreads) {
    const int j = i / kScoreChunk, it = i % kScoreChunk;
    if (base + it < a.max_items) {
      a.scores[(unit * g + j) * a.max_items + base + it] = s_s[j][it];
    }
  }
  if (warp < g) {
    float m = -INFINITY;
    for (int it = lane; it < kScoreChunk; it += 32) m = fmaxf(m, s_s[warp][it]);
    m = internal::WarpMax(m);
    float z = 0.0f;
    if (m > -INFINITY) {
      for (int it = lane; it < kScoreChunk; it += 32) {
        const float s = s_s[warp][it];
        if (s > -INFINITY) z += w_s[it] * expf(s - m);
      }
    }
    z = internal::WarpSum(z);
    if (lane == 0) a.stats[(unit * g + warp) * a.chunks + chunk] = make_float2(m, z);
  }
}

// Exclusive scan of two ints over the block (kSelectThreads threads); returns the block totals.
// scratch: 2 * 32 ints of shared memory. Contains barriers: call from all threads.
__device__ __forceinline__ int2 BlockExclusiveScan2(int a, int b, int* ea, int* eb, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int ia = a, ib = b;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int ta = __shfl_up_sync(0xffffffffu, ia, off);
    const int tb = __shfl_up_sync(0xffffffffu, ib, off);
    if (lane >= off) {
      ia += ta;
      ib += tb;
    }
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) {
    scratch[warp] = ia;
    scratch[32 + warp] = ib;
  }
  __syncthreads();
  int wa = 0, wb = 0, ta = 0, tb = 0;
  for (int w = 0; w < warps; ++w) {
    const int sa = scratch[w], sb = scratch[32 + w];
    if (w < warp) {
      wa += sa;
      wb += sb;
    }
    ta += sa;
    tb += sb;
  }
  *ea = wa + ia - a;
  *eb = wb + ib - b;
  return make_int2(ta, tb);
}

// One block per (request, kv head): exact normaliser, p, the selection, and (flat and fine
// levels) the segment list. grid: (batch, n_kv_heads); kSelectThreads threads.
__global__ void __launch_bounds__(kSelectThreads)
    SelectKernel(SqueezeSelectParams p, LevelArgs a, SqueezeSelection out, int max_segments) {
  __shared__ float m_s[kMaxG], inv_s[kMaxG];
  __shared__ uint32_t hist_s[256];  // weight per digit
  __shared__ uint32_t cnt_s[256];   // items per digit
  __shared__ int scan_s[64];
  __shared__ uint32_t cut_s[3];  // digit found, weight above it, items with that digit
  const int r = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = p.n_q_heads / p.n_kv_heads;
  const SqueezeLayerView v = p.views[r];
  const int64_t unit = static_cast<int64_t>(r) * p.n_kv_heads + h;
  const int n = NumItems(v, a.level, a.max_items);
  const int k = max(0, min(v.num_clusters, p.max_clusters));
  const bool hier = Hierarchical(v, a.level);
  const int k1 = hier ? max(0, min(v.num_coarse, a.max_coarse)) : 0;
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const int32_t* offsets = v.offsets + static_cast<int64_t>(h) * (v.num_clusters + 1);
  const int32_t* members =
      hier ? v.coarse_members + static_cast<int64_t>(h) * v.num_clusters : nullptr;
  const int64_t body = k > 0 ? offsets[k] : 0;
  const float* scores = a.scores + unit * g * a.max_items;
  uint32_t* keys = a.keys + unit * a.max_items;
  uint8_t* flags = a.flags + unit * a.max_items;

  // 1. Normaliser per head: the chunks, plus (fine level) the mass of coarse groups not kept.
  if (warp < g) {
    const float2* st = a.stats + (unit * g + warp) * a.chunks;
    const float* cs = hier ? a.coarse_scores + (unit * g + warp) * a.max_coarse : nullptr;
    const uint8_t* kept = hier ? a.coarse_flags + unit * a.max_coarse : nullptr;
    const int32_t* cw = hier ? a.coarse_weights + unit * a.max_coarse : nullptr;
    float m = -INFINITY;
    for (int c = lane; c < a.chunks; c += 32) m = fmaxf(m, st[c].x);
    for (int c = lane; c < k1; c += 32) {
      if (!kept[c]) m = fmaxf(m, cs[c]);
    }
    m = internal::WarpMax(m);
    double z = 0.0;
    if (m > -INFINITY) {
      for (int c = lane; c < a.chunks; c += 32) {
        if (st[c].y > 0.0f) z += static_cast<double>(st[c].y) * exp(static_cast<double>(st[c].x - m));
      }
      for (int c = lane; c < k1; c += 32) {
        if (!kept[c]) z += static_cast<double>(cw[c]) * expf(cs[c] - m);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) z += __shfl_xor_sync(0xffffffffu, z, off);
    if (lane == 0) {
      m_s[warp] = m;
      inv_s[warp] = z > 0.0 ? static_cast<float>(1.0 / z) : 0.0f;
    }
  }
  for (int i = tid; i < 256; i += kSelectThreads) hist_s[i] = cnt_s[i] = 0;
  __syncthreads();

  // 2. p per item -> key (0: not a candidate; else float bits of p + 1, monotone in p). The
  // threshold policy decides here; the budget policy histograms the top byte.
  const bool budget = a.level == Level::kCoarse || p.policy == SqueezePolicy::kBudget;
  float value = p.per_request_value ? p.per_request_value[r]
                                    : (p.policy == SqueezePolicy::kBudget ? p.kv_budget
                                                                          : p.threshold);
  if (a.level == Level::kCoarse) value = p.coarse_coverage;
  const float group_scale = p.reduce == SqueezeReduce::kMean ? 1.0f / g : 1.0f;
  uint32_t total_w = 0;
  for (int i = tid; i < n; i += kSelectThreads) {
    const bool cand = scores[i] > -INFINITY;  // scored (every head, or none)
    float pr = 0.0f;
    for (int j = 0; j < g; ++j) {
      const float s = scores[j * a.max_items + i];
      const float e = s > -INFINITY ? expf(s - m_s[j]) * inv_s[j] : 0.0f;
      pr = p.reduce == SqueezeReduce::kMax ? (j == 0 ? e : fmaxf(pr, e)) : pr + e;
    }
    pr *= group_scale;
    const int id = hier ? members[i] : i;
    const uint32_t w = a.level == Level::kCoarse ? a.weights[unit * a.max_items + i]
                                                 : (id >= 0 && id < k ? counts[id] : 0);
    if (!budget) {
      if (id >= 0 && id < k) flags[id] = cand && pr > value;
      continue;
    }
    const uint32_t key = cand ? __float_as_uint(pr) + 1u : 0u;
    keys[i] = key;
    if (cand) {
      total_w += w;
      atomicAdd(&hist_s[key >> 24], w);
      atomicAdd(&cnt_s[key >> 24], 1u);
    }
  }

  if (budget) {
    // 3. The cut: the key x* of the last cluster taken, found a byte at a time from the top, and
    // need_rem = the keys still wanted among clusters whose key equals x*.
    const float frac = fminf(fmaxf(value, 0.0f), 1.0f);
    const int64_t need = static_cast<int64_t>(ceil(static_cast<double>(frac) * body));
    // The candidates' total weight (exact, in integers).
    uint32_t tw = total_w;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) tw += __shfl_xor_sync(0xffffffffu, tw, off);
    __syncthreads();  // also: the top-byte histogram is complete
    if (lane == 0) scan_s[warp] = static_cast<int>(tw);
    __syncthreads();
    int64_t all_w = 0;
    for (int w = 0; w < (kSelectThreads >> 5); ++w) all_w += static_cast<uint32_t>(scan_s[w]);
    const bool take_all = all_w < need;
    uint32_t prefix = 0, mask = 0, tied_items = 0;
    int64_t need_rem = need;
    if (!take_all && need > 0) {
      for (int shift = 24; shift >= 0; shift -= 8) {
        if (shift < 24) {
          for (int i = tid; i < 256; i += kSelectThreads) hist_s[i] = cnt_s[i] = 0;
          __syncthreads();
          for (int i = tid; i < n; i += kSelectThreads) {
            const uint32_t key = keys[i];
            if (key != 0 && (key & mask) == prefix) {
              const int id = hier ? members[i] : i;
              const uint32_t w = a.level == Level::kCoarse ? a.weights[unit * a.max_items + i]
                                                           : counts[id];
              atomicAdd(&hist_s[(key >> shift) & 255u], w);
              atomicAdd(&cnt_s[(key >> shift) & 255u], 1u);
            }
          }
        }
        __syncthreads();
        if (warp == 0) {
          // Lane l holds digits 255 - 8l .. 248 - 8l (descending); a warp scan gives the weight
          // above each lane's run; the lane whose run crosses need_rem finds the digit.
          uint32_t run[8], sum = 0;
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            run[e] = hist_s[255 - 8 * lane - e];
            sum += run[e];
          }
          uint32_t incl = sum;
#pragma unroll
          for (int off = 1; off < 32; off <<= 1) {
            const uint32_t t = __shfl_up_sync(0xffffffffu, incl, off);
            if (lane >= off) incl += t;
          }
          const uint32_t nr = static_cast<uint32_t>(need_rem);
          uint32_t above = incl - sum;
          if (above < nr && incl >= nr) {
            int e = 0;
            for (; e < 7; ++e) {
              if (above + run[e] >= nr) break;
              above += run[e];
            }
            cut_s[0] = static_cast<uint32_t>(255 - 8 * lane - e);
            cut_s[1] = above;
            cut_s[2] = cnt_s[255 - 8 * lane - e];
          }
        }
        __syncthreads();
        prefix |= cut_s[0] << shift;
        mask |= 255u << shift;
        need_rem -= cut_s[1];
        tied_items = cut_s[2];
        __syncthreads();  // cut_s is rewritten by the next digit
      }
    }
    // 4. Flags by cluster id: keys above x*, and those equal to x* in position order while the
    // keys taken among them are < need_rem (a block scan, needed only for true ties).
    const bool scan_ties = !take_all && need > 0 && tied_items > 1;
    if (!scan_ties) {
      for (int i = tid; i < n; i += kSelectThreads) {
        const uint32_t key = keys[i];
        const int id = hier ? members[i] : i;
        const bool sel = take_all ? key != 0 : (need > 0 && key != 0 && key >= prefix);
        if (id >= 0 && id < (a.level == Level::kCoarse ? n : k)) flags[id] = sel;
      }
    }
    int carry = 0;
    for (int i0 = 0; scan_ties && i0 < n; i0 += kSelectThreads) {
      const int i = i0 + tid;
      uint32_t key = 0, w = 0;
      int id = -1;
      if (i < n) {
        key = keys[i];
        id = hier ? members[i] : i;
        w = a.level == Level::kCoarse ? a.weights[unit * a.max_items + i]
                                      : (id >= 0 && id < k ? counts[id] : 0);
      }
      const bool tied = !take_all && need > 0 && key != 0 && key == prefix;
      int before = 0, unused = 0;
      const int2 tot = BlockExclusiveScan2(tied ? static_cast<int>(w) : 0, 0, &before, &unused,
                                           scan_s);
      bool sel;
      if (take_all) {
        sel = key != 0;
      } else if (need <= 0) {
        sel = false;
      } else {
        sel = key > prefix || (tied && carry + before < need_rem);
      }
      if (i < n && id >= 0 && id < (a.level == Level::kCoarse ? n : k)) flags[id] = sel;
      carry += tot.x;
    }
  }
  if (a.level == Level::kCoarse) return;
  __syncthreads();  // flags written by other threads of the block

  // 5. Segments over positions -1 (sink), 0 .. k-1 (clusters), k (window), coalescing neighbours.
  const int S = max(v.sink_len, 0), W = max(v.window_len, 0);
  auto selected = [&](int pos) -> bool {
    if (pos <= 0) return pos == 0 && S > 0;
    if (pos == k + 1) return W > 0;
    if (pos > k + 1) return false;
    return flags[pos - 1] != 0;
  };
  auto rows_of = [&](int pos) -> int {
    return pos == 0 ? S : (pos == k + 1 ? W : offsets[pos] - offsets[pos - 1]);
  };
  auto row_start = [&](int pos) -> int {
    return pos == 0 ? 0 : (pos == k + 1 ? S + static_cast<int>(body) : S + offsets[pos - 1]);
  };
  // Each thread takes kPer consecutive positions: counts its segment starts and rows, one block
  // scan places them, a second walk writes (row_delta at a start, end at an end).
  constexpr int kPer = 8;
  int2* segs = out.segments + unit * max_segments;
  int carry_seg = 0, carry_rows = 0;
  for (int p0 = 0; p0 < k + 2; p0 += kSelectThreads * kPer) {
    const int first = p0 + tid * kPer;
    int starts = 0, rows = 0;
    bool prev = selected(first - 1);
    for (int e = 0; e < kPer; ++e) {
      const bool sel = selected(first + e);
      if (sel) {
        rows += rows_of(first + e);
        starts += prev ? 0 : 1;
      }
      prev = sel;
    }
    int seg_before = 0, rows_before = 0;
    const int2 tot = BlockExclusiveScan2(starts, rows, &seg_before, &rows_before, scan_s);
    int seg = carry_seg + seg_before, key = carry_rows + rows_before;
    prev = selected(first - 1);
    for (int e = 0; e < kPer; ++e) {
      const int pos = first + e;
      const bool sel = selected(pos);
      if (sel) {
        if (!prev) {
          if (seg < max_segments) reinterpret_cast<int*>(segs + seg)[1] = row_start(pos) - key;
          ++seg;
        }
        key += rows_of(pos);
        if (!selected(pos + 1) && seg - 1 < max_segments) {
          reinterpret_cast<int*>(segs + seg - 1)[0] = key;
        }
      }
      prev = sel;
    }
    carry_seg += tot.x;
    carry_rows += tot.y;
  }
  if (tid == 0) {
    out.num_segments[unit] = min(carry_seg, max_segments);
    out.selected_len[unit] = carry_rows;
    if (out.body_selected) out.body_selected[unit] = carry_rows - S - W;
  }
}

template <int D>
Status Launch(const SqueezeSelectParams& p, const SqueezeSelectPlan& plan,
              const SqueezeSelection& out, void* workspace, cudaStream_t stream) {
  const Workspace w = Carve(p, plan.fine_chunks, plan.coarse_chunks);
  char* ws = static_cast<char*>(workspace);
  LevelArgs coarse{};
  coarse.level = Level::kCoarse;
  coarse.max_items = p.max_coarse;
  coarse.chunks = plan.coarse_chunks;
  coarse.scores = reinterpret_cast<float*>(ws + w.coarse_scores);
  coarse.stats = reinterpret_cast<float2*>(ws + w.coarse_stats);
  coarse.keys = reinterpret_cast<uint32_t*>(ws + w.coarse_keys);
  coarse.flags = reinterpret_cast<uint8_t*>(ws + w.coarse_flags);
  coarse.weights = reinterpret_cast<int32_t*>(ws + w.coarse_weights);
  coarse.max_coarse = p.max_coarse;

  LevelArgs fine{};
  fine.level = p.hierarchical ? Level::kFine : Level::kFlat;
  fine.max_items = p.max_clusters;
  fine.chunks = plan.fine_chunks;
  fine.scores = reinterpret_cast<float*>(ws + w.fine_scores);
  fine.stats = reinterpret_cast<float2*>(ws + w.fine_stats);
  fine.keys = reinterpret_cast<uint32_t*>(ws + w.fine_keys);
  fine.flags = reinterpret_cast<uint8_t*>(ws + w.fine_flags);
  fine.coarse_scores = coarse.scores;
  fine.coarse_flags = coarse.flags;
  fine.coarse_weights = coarse.weights;
  fine.max_coarse = p.hierarchical ? p.max_coarse : 0;

  const dim3 select_grid(p.batch, p.n_kv_heads);
  if (p.hierarchical) {
    ScoreKernel<D><<<dim3(p.batch, plan.coarse_chunks, p.n_kv_heads), kScoreThreads, 0, stream>>>(
        p, coarse);
    SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: coarse scoring"));
    SelectKernel<<<select_grid, kSelectThreads, 0, stream>>>(p, coarse, out, plan.max_segments);
    SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: coarse selection"));
  }
  ScoreKernel<D><<<dim3(p.batch, plan.fine_chunks, p.n_kv_heads), kScoreThreads, 0, stream>>>(
      p, fine);
  SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: scoring"));
  SelectKernel<<<select_grid, kSelectThreads, 0, stream>>>(p, fine, out, plan.max_segments);
  return LaunchStatus("SqueezeSelect: selection");
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

SqueezeSelectPlan PlanSqueezeSelect(const SqueezeSelectParams& p) {
  SqueezeSelectPlan plan;
  const int k = std::max(p.max_clusters, 0);
  const int k1 = p.hierarchical ? std::max(p.max_coarse, 0) : 0;
  plan.fine_chunks = std::max(1, (k + kScoreChunk - 1) / kScoreChunk);
  plan.coarse_chunks = p.hierarchical ? std::max(1, (k1 + kScoreChunk - 1) / kScoreChunk) : 0;
  // Runs of selected positions among k + 2 (sink, clusters, window) alternate with gaps.
  plan.max_segments = (k + 2 + 1) / 2;
  plan.workspace_bytes = Carve(p, plan.fine_chunks, plan.coarse_chunks).total;
  return plan;
}

Status SqueezeSelect(const SqueezeSelectParams& p, const SqueezeSelectPlan& plan,
                     const SqueezeSelection& out, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  constexpr const char* kOp = "SqueezeSelect";
  if (p.batch < 0 || p.batch > 65535) return ArgError(kOp, "batch must be in [0, 65535]");
  if (p.n_q_heads <= 0 || p.n_kv_heads <= 0 || p.n_kv_heads > 65535 ||
      p.n_q_heads % p.n_kv_heads != 0) {
    return ArgError(kOp, "n_kv_heads (" + std::to_string(p.n_kv_heads) +
                             ") must be positive and divide n_q_heads (" +
                             std::to_string(p.n_q_heads) + ")");
  }
  if (p.n_q_heads / p.n_kv_heads > kSqueezeMaxGroup) {
    return UnsupportedError(kOp, "n_q_heads / n_kv_heads = " +
                                     std::to_string(p.n_q_heads / p.n_kv_heads) +
                                     " exceeds the compiled maximum " +
                                     std::to_string(kSqueezeMaxGroup));
  }
  if (p.head_dim != 64 && p.head_dim != 128) {
    return UnsupportedError(kOp, "head_dim " + std::to_string(p.head_dim) +
                                     " is not compiled (64, 128)");
  }
  if (!(p.scale > 0.0f) || !std::isfinite(p.scale)) return ArgError(kOp, "scale must be > 0");
  if (p.q_stride < static_cast<int64_t>(p.n_q_heads) * p.head_dim) {
    return ArgError(kOp, "q_stride must be >= n_q_heads * head_dim");
  }
  if (p.policy != SqueezePolicy::kBudget && p.policy != SqueezePolicy::kThreshold) {
    return ArgError(kOp, "unknown policy");
  }
  if (p.reduce != SqueezeReduce::kMax && p.reduce != SqueezeReduce::kMean) {
    return ArgError(kOp, "unknown GQA reduction");
  }
  if (p.policy == SqueezePolicy::kBudget && !(p.kv_budget >= 0.0f && p.kv_budget <= 1.0f)) {
    return ArgError(kOp, "kv_budget " + std::to_string(p.kv_budget) + " is outside [0, 1]");
  }
  if (p.policy == SqueezePolicy::kThreshold && !std::isfinite(p.threshold)) {
    return ArgError(kOp, "threshold must be finite");
  }
  if (p.max_clusters < 1) return ArgError(kOp, "max_clusters must be >= 1");
  if (p.hierarchical) {
    if (p.max_coarse < 1) return ArgError(kOp, "hierarchical lookup needs max_coarse >= 1");
    if (!(p.coarse_coverage > 0.0f && p.coarse_coverage <= 1.0f)) {
      return ArgError(kOp, "coarse_coverage " + std::to_string(p.coarse_coverage) +
                               " is outside (0, 1]");
    }
  }
  const SqueezeSelectPlan expected = PlanSqueezeSelect(p);
  if (plan.fine_chunks != expected.fine_chunks || plan.coarse_chunks != expected.coarse_chunks ||
      plan.max_segments != expected.max_segments ||
      plan.workspace_bytes != expected.workspace_bytes) {
    return ArgError(kOp, "plan was made for other params (make it with PlanSqueezeSelect)");
  }
  if (p.batch == 0) return OkStatus();
  if (workspace_bytes < plan.workspace_bytes || !workspace || !Aligned16(workspace)) {
    return ArgError(kOp, "workspace of " + std::to_string(workspace_bytes) +
                             " bytes; the plan needs " + std::to_string(plan.workspace_bytes) +
                             ", 16-byte aligned");
  }
  if (!p.q || !p.views) return ArgError(kOp, "null q or views");
  if (!out.segments || !out.num_segments || !out.selected_len) {
    return ArgError(kOp, "null output (segments, num_segments and selected_len are required)");
  }
  if (p.head_dim == 64) return Launch<64>(p, plan, out, workspace, stream);
  return Launch<128>(p, plan, out, workspace, stream);
}

int64_t SqueezeMaxSelectedKeys(SqueezePolicy policy, double kv_budget, int64_t sink_len,
                               int64_t body_len, int64_t window_len, int64_t largest_cluster) {
  int64_t body = body_len;
  if (policy == SqueezePolicy::kBudget) {
    const double b = std::clamp(kv_budget, 0.0, 1.0);
    const int64_t need = static_cast<int64_t>(std::ceil(b * static_cast<double>(body_len)));
    body = std::min(body_len, need + std::max<int64_t>(largest_cluster, 1) - 1);
  }
  return sink_len + std::max<int64_t>(body, 0) + window_len;
}

}  // namespace sqz::cuda
