#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/sparse_prefill_select.h"
#include "kernels/cuda/squeeze_select.h"
#include "kernels/cuda/squeeze_select_cluster.h"
#include "kernels/cuda/squeeze_select_common.cuh"
#include "kernels/cuda/squeeze_select_grouped.h"

namespace sqz::cuda {
namespace {

constexpr int kScoreThreads = 128;
constexpr int kScoreChunk = internal::kSelectChunk;  // items (centroids) per scoring block
using internal::BlockExclusiveScan2;
using internal::kSelectThreads;
constexpr int kMaxG = kSqueezeMaxGroup;

// Which index level a launch works on.
enum class Level : int { kFlat = 0, kCoarse = 1, kFine = 2 };  // kFine: under kept coarse groups

// Workspace carve-up, in bytes (each part 256-byte aligned).
struct Workspace {
  size_t fine_scores, fine_stats, fine_keys, fine_flags;
  size_t coarse_scores, coarse_stats, coarse_keys, coarse_flags, coarse_weights;
  size_t block_stats, block_norm, block_probs;  // block mode (the fine scores and stats stay empty)
  size_t total;
};

size_t Align(size_t x) { return (x + 255) / 256 * 256; }

Workspace Carve(const SqueezeSelectParams& p, int fine_chunks, int coarse_chunks, int block_rows) {
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
  const bool blocks = p.block_starts != nullptr;
  w.fine_scores = take(blocks ? 0 : units * g * k * sizeof(float));
  w.fine_stats = take(blocks ? 0 : units * g * fine_chunks * sizeof(float2));
  w.fine_keys = take(units * k * sizeof(uint32_t));
  w.fine_flags = take(units * k);
  w.coarse_scores = take(units * g * k1 * sizeof(float));
  w.coarse_stats = take(units * g * coarse_chunks * sizeof(float2));
  w.coarse_keys = take(units * k1 * sizeof(uint32_t));
  w.coarse_flags = take(units * k1);
  w.coarse_weights = take(units * k1 * sizeof(int32_t));
  const size_t rows = static_cast<size_t>(std::max(block_rows, 0));
  w.block_stats = take(units * rows * fine_chunks * sizeof(float2));
  w.block_norm = take(units * rows * sizeof(float2));
  w.block_probs = take(blocks ? units * k * sizeof(float) : 0);
  w.total = at;
  return w;
}

// Arguments shared by the kernels of one level.
struct LevelArgs {
  Level level;
  int max_items;     // bound of the items per (request, kv head) on this level
  int chunks;        // scoring blocks per (request, kv head)
  float* scores;     // [batch][H][g][max_items]
  float2* stats;     // [batch][H][g][chunks] (max, sum N exp(s - max))
  uint32_t* keys;    // [batch][H][max_items]
  uint8_t* flags;    // [batch][H][max_items] by item id
  int32_t* weights;  // coarse: [batch][H][max_coarse] keys under each group
  // Coarse results read by the fine level of a hierarchical lookup.
  const float* coarse_scores;
  const uint8_t* coarse_flags;
  const int32_t* coarse_weights;
  int max_coarse;
  // Block mode (flat level): p per item, [batch][H][max_items], -1 for no candidate; replaces the
  // scores and the normaliser.
  const float* probs;
};

// Items of (view, h) on a level: how many, and whether the fine level runs under a coarse one.
__device__ __forceinline__ int NumItems(const SqueezeLayerView& v, Level level, int max_items) {
  const int n = level == Level::kCoarse ? v.num_coarse : v.num_clusters;
  return max(0, min(n, max_items));
}
__device__ __forceinline__ bool Hierarchical(const SqueezeLayerView& v, Level level) {
  return level == Level::kFine && v.num_coarse > 0;
}
// Scores one chunk of kScoreChunk items for the g query heads of (request, kv head) on tensor
// cores, and leaves the scores (s = scale * q . c; -inf for items that are not candidates) and the
// chunk's (max, sum of weight * exp(s - max)) per head. Items: the fine clusters (flat level), the
// coarse groups (weights = keys under a group, also written to a.weights), or, under a
// hierarchical lookup, positions in coarse_members (candidates: members of kept groups). The
// block finds each row's centroid and weight, copies the rows and q (the group's heads as the
// rows of an m16 tile, zero below) into shared memory with cp.async (all in flight at once), then
// each warp computes S = Q C^T for 64 items with mma.m16n8k16 (bf16 in, fp32 accumulate).
// grid: (batch, chunks, n_kv_heads), requests fastest (requests over one context share its
// centroids through L2); kScoreThreads threads; ScoreSmemBytes<D>() dynamic shared memory.
template <int D>
constexpr size_t ScoreSmemBytes() {
  return static_cast<size_t>(kScoreChunk + 16) * (D + 8) * 2 + kMaxG * kScoreChunk * 4 +
         kScoreChunk * 8;
}

template <int D>
__global__ void __launch_bounds__(kScoreThreads) ScoreKernel(SqueezeSelectParams p, LevelArgs a) {
  internal::AllowDependentLaunch();  // the selection after it may be scheduled (it waits)
  constexpr int kRow = D + 8;  // bf16 per smem row (16 bytes of padding: conflict-free ldmatrix)
  constexpr int kPieces = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* c_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);      // [kScoreChunk][kRow]
  __nv_bfloat16* q_s = c_s + kScoreChunk * kRow;               // [16][kRow]
  auto* s_s = reinterpret_cast<float*>(q_s + 16 * kRow);       // [kMaxG][kScoreChunk]
  float* w_s = s_s + kMaxG * kScoreChunk;                      // [kScoreChunk] weights
  auto* id_s = reinterpret_cast<int32_t*>(w_s + kScoreChunk);  // [kScoreChunk] row, -1: none
  const int r = blockIdx.x, chunk = blockIdx.y, h = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = p.n_q_heads / p.n_kv_heads;
  const SqueezeLayerView v = p.views[r];
  const int n = NumItems(v, a.level, a.max_items);
  const int k = max(0, min(v.num_clusters, p.max_clusters));
  const bool coarse = a.level == Level::kCoarse;
  const bool hier = Hierarchical(v, a.level);
  const int k1 = hier ? max(0, min(v.num_coarse, a.max_coarse)) : 0;
  const int64_t unit = static_cast<int64_t>(r) * p.n_kv_heads + h;
  const int base = chunk * kScoreChunk;
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const int32_t* coff =
      hier || coarse ? v.coarse_offsets + static_cast<int64_t>(h) * (v.num_coarse + 1) : nullptr;
  const int32_t* members =
      hier || coarse ? v.coarse_members + static_cast<int64_t>(h) * v.num_clusters : nullptr;
  const uint8_t* kept = hier ? a.coarse_flags + unit * a.max_coarse : nullptr;
  const __nv_bfloat16* cents = coarse
                                   ? v.coarse_centroids + static_cast<int64_t>(h) * v.num_coarse * D
                                   : v.centroids + static_cast<int64_t>(h) * v.num_clusters * D;

  // Rows: centroid and weight of each item of the chunk.
  for (int it = tid; it < kScoreChunk; it += kScoreThreads) {
    const int item = base + it;
    int id = item < n ? item : -1;
    float weight = 0.0f;
    if (id >= 0 && hier) {
      int lo = 0, hi = k1;  // the coarse group of position `item`: first whose end exceeds it
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (coff[mid + 1] > item) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      id = lo < k1 && kept[lo] != 0 ? members[item] : -1;
      if (id >= k) id = -1;
    }
    if (id >= 0) {
      if (coarse) {
        int32_t sum = 0;
        for (int m = coff[item]; m < coff[item + 1]; ++m) {
          const int c = members[m];
          sum += (c >= 0 && c < k) ? counts[c] : 0;
        }
        weight = static_cast<float>(sum);
        a.weights[unit * a.max_items + item] = sum;
      } else {
        weight = static_cast<float>(counts[id]);
      }
    }
    id_s[it] = id;
    w_s[it] = weight;
  }
  __syncthreads();
  for (int c = tid; c < kScoreChunk * kPieces; c += kScoreThreads) {
    const int row = c / kPieces, col = (c % kPieces) * 8;
    const int id = id_s[row];
    internal::CpAsync16(c_s + row * kRow + col,
                        id >= 0 ? cents + static_cast<int64_t>(id) * D + col : p.q, id >= 0);
  }
  for (int c = tid; c < 16 * kPieces; c += kScoreThreads) {
    const int row = c / kPieces, col = (c % kPieces) * 8;
    const bool valid = row < g;
    internal::CpAsync16(q_s + row * kRow + col,
                        valid ? p.q + r * p.q_stride + (h * g + row) * D + col : p.q, valid);
  }
  internal::CpAsyncCommit();
  internal::CpAsyncWait<0>();
  __syncthreads();

  const int gr = lane >> 2, t4 = lane & 3;  // fragment row (query head) and column pair
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    internal::LdMatrixX4(
        qf[kc], q_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * kRow + kc * 16 + (lane >> 4) * 8);
  }
#pragma unroll
  for (int nt = 0; nt < kScoreChunk / (kScoreThreads / 32) / 8; ++nt) {  // this warp's items
    const int c0 = warp * (kScoreChunk / (kScoreThreads / 32)) + nt * 8;
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kc = 0; kc < D / 16; kc += 2) {
      uint32_t b[4];
      internal::LdMatrixX4(b, c_s + (c0 + (lane & 7)) * kRow + kc * 16 + (lane >> 3) * 8);
      internal::MmaBf16(s, qf[kc], b[0], b[1]);
      internal::MmaBf16(s, qf[kc + 1], b[2], b[3]);
    }
    if (gr < g) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int it = c0 + 2 * t4 + e;
        s_s[gr * kScoreChunk + it] = id_s[it] >= 0 ? s[e] * p.scale : -INFINITY;
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < g * kScoreChunk; i += kScoreThreads) {
    const int j = i / kScoreChunk, it = i % kScoreChunk;
    if (base + it < a.max_items) a.scores[(unit * g + j) * a.max_items + base + it] = s_s[i];
  }
  for (int j = warp; j < g; j += kScoreThreads / 32) {
    const float2 st = internal::ChunkRowStats<kScoreChunk>(s_s + j * kScoreChunk, w_s);
    if (lane == 0) a.stats[(unit * g + j) * a.chunks + chunk] = st;
  }
}

// Shared memory of SelectKernel for max_items items when they fit (fine and flat levels): keys
// (4 bytes), weights (2 bytes; 0xFFFF: read the cluster size from global memory) and flags (1
// byte) per item; 0 otherwise (everything stays in the workspace and global memory).
constexpr size_t kSelectSmemLimit = 200 * 1024;
size_t SelectSmemBytes(int max_items, bool coarse) {
  const size_t bytes = static_cast<size_t>(max_items) * 7 + 32;
  return coarse || bytes > kSelectSmemLimit ? 0 : bytes;
}

// One block per (request, kv head): exact normaliser, p, the selection, and (flat and fine
// levels) the segment list. grid: (batch, n_kv_heads); kSelectThreads threads; dynamic shared
// memory SelectSmemBytes. One block per head works through its items in passes, so each pass
// issues kPer independent loads per thread before using them (the passes are latency-bound).
// kG: a power of two >= the group size (the per-head loops end there). The block runs its code
// about once, so the code's length costs instruction fetches: the loops are unrolled no further.
template <int kG>
__global__ void __launch_bounds__(kSelectThreads)
    SelectKernel(SqueezeSelectParams p, LevelArgs a, SqueezeSelection out, int max_segments,
                 bool in_smem) {
  // Launched as a programmatic dependent of the scoring kernel: nothing is read before it is done.
  // The attention after it may be scheduled now and waits for this kernel in turn.
  internal::WaitForPriorGrid();
  internal::AllowDependentLaunch();
  extern __shared__ __align__(16) uint32_t dyn_s[];
  constexpr int kPer = 2;
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
  const bool coarse = a.level == Level::kCoarse;
  const bool hier = Hierarchical(v, a.level);
  const int k1 = hier ? max(0, min(v.num_coarse, a.max_coarse)) : 0;
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const int32_t* offsets = v.offsets + static_cast<int64_t>(h) * (v.num_clusters + 1);
  const int32_t* members =
      hier ? v.coarse_members + static_cast<int64_t>(h) * v.num_clusters : nullptr;
  const int32_t* cweights = coarse ? a.weights + unit * a.max_items : nullptr;
  const float* scores = a.scores + unit * g * a.max_items;
  uint32_t* keys = in_smem ? dyn_s : a.keys + unit * a.max_items;
  uint16_t* w16 = in_smem ? reinterpret_cast<uint16_t*>(dyn_s + a.max_items) : nullptr;
  uint8_t* flags =
      in_smem ? reinterpret_cast<uint8_t*>(w16 + a.max_items) : a.flags + unit * a.max_items;
  const int flag_limit = coarse ? n : k;  // ids that own a flag
  // Weight (cluster size, or keys under a coarse group) of item i with id `id`.
  auto weight = [&](int i, int id) -> uint32_t {
    if (coarse) return static_cast<uint32_t>(cweights[i]);
    if (w16 && w16[i] != 0xFFFFu) return w16[i];
    return id >= 0 && id < k ? static_cast<uint32_t>(counts[id]) : 0u;
  };

  // 1. Normaliser per head: the chunks, plus (fine level) the mass of coarse groups not kept.
  if (warp < g && a.probs == nullptr) {
    const float2* st = a.stats + (unit * g + warp) * a.chunks;
    const float* cs = hier ? a.coarse_scores + (unit * g + warp) * a.max_coarse : nullptr;
    const uint8_t* kept = hier ? a.coarse_flags + unit * a.max_coarse : nullptr;
    const int32_t* cw = hier ? a.coarse_weights + unit * a.max_coarse : nullptr;
    internal::HeadNormaliser(st, a.chunks, cs, kept, cw, k1, &m_s[warp], &inv_s[warp]);
  }
  for (int i = tid; i < 256; i += kSelectThreads) hist_s[i] = cnt_s[i] = 0;
  __syncthreads();

  // 2. p per item -> key (0: not a candidate; else float bits of p + 1, monotone in p). The
  // threshold policy decides here; the budget policy histograms the top byte.
  const bool budget = coarse || p.policy == SqueezePolicy::kBudget;
  float value = p.per_request_value
                    ? p.per_request_value[r]
                    : (p.policy == SqueezePolicy::kBudget ? p.kv_budget : p.threshold);
  if (coarse) value = p.coarse_coverage;
  uint32_t total_w = 0, kmin = 0xFFFFFFFFu, kmax = 0;
  for (int i0 = 0; i0 < n; i0 += kSelectThreads * kPer) {
    float sc[kPer][kG];
    int id[kPer];
    uint32_t w[kPer];
#pragma unroll
    for (int e = 0; e < kPer; ++e) {  // loads first
      const int i = i0 + e * kSelectThreads + tid;
      const bool in = i < n;
      if (a.probs) {  // block mode: p in sc[e][0] (< 0: no candidate)
        sc[e][0] = in ? a.probs[unit * a.max_items + i] : -1.0f;
      } else {
#pragma unroll
        for (int j = 0; j < kG; ++j) {
          sc[e][j] = in && j < g ? scores[j * a.max_items + i] : -INFINITY;
        }
      }
      id[e] = in ? (hier ? members[i] : i) : -1;
      w[e] = in ? (coarse ? static_cast<uint32_t>(cweights[i])
                          : (id[e] >= 0 && id[e] < k ? static_cast<uint32_t>(counts[id[e]]) : 0u))
                : 0u;
    }
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      const int i = i0 + e * kSelectThreads + tid;
      bool cand;
      float pr = 0.0f;
      if (a.probs) {
        cand = sc[e][0] >= 0.0f;
        pr = cand ? sc[e][0] : 0.0f;
      } else {
        cand = sc[e][0] > -INFINITY;  // scored (every head, or none)
        pr = internal::ItemProbability(sc[e], g, m_s, inv_s, p.reduce);
      }
      if (!budget) {
        if (id[e] >= 0 && id[e] < k) flags[id[e]] = cand && pr > value;
        continue;
      }
      const uint32_t key = internal::SelectKey(cand, pr);
      if (i < n) {
        keys[i] = key;
        if (w16) w16[i] = static_cast<uint16_t>(min(w[e], 0xFFFFu));
      }
      if (cand) {
        total_w += w[e];
        kmin = min(kmin, key);
        kmax = max(kmax, key);
      }
    }
  }

  if (budget) {
    // 3. The cut: the key x* of the last cluster taken, and need_rem = the keys still wanted
    // among clusters whose key equals x*. Each pass splits the key range [lo, hi] that holds x*
    // into at most 256 equal bins (a power-of-two width), histograms the weights of the keys in
    // it, and keeps the bin where the weight from the top reaches need_rem. Keys are float bits
    // (about log2 p), so the first pass spreads a context's p over many bins (few atomics
    // collide); at most 4 passes.
    const float frac = fminf(fmaxf(value, 0.0f), 1.0f);
    const int64_t need =
        static_cast<int64_t>(ceil(static_cast<double>(frac) * internal::SelectBodyOf(v)));
    uint32_t tw = total_w;  // the candidates' total weight, exact; their key range
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      tw += __shfl_xor_sync(0xffffffffu, tw, off);
      kmin = min(kmin, __shfl_xor_sync(0xffffffffu, kmin, off));
      kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, off));
    }
    __shared__ uint32_t range_s[2][kSelectThreads / 32];
    __syncthreads();  // also: the keys are complete
    if (lane == 0) {
      scan_s[warp] = static_cast<int>(tw);
      range_s[0][warp] = kmin;
      range_s[1][warp] = kmax;
    }
    __syncthreads();
    int64_t all_w = 0;
    uint32_t lo = 0xFFFFFFFFu, hi = 0;
    for (int w = 0; w < (kSelectThreads >> 5); ++w) {
      all_w += static_cast<uint32_t>(scan_s[w]);
      lo = min(lo, range_s[0][w]);
      hi = max(hi, range_s[1][w]);
    }
    const bool take_all = all_w < need;
    uint32_t tied_items = 0;
    int64_t need_rem = need;
    if (!take_all && need > 0) {
      tied_items = 2;  // unknown until a pass counts them
      while (lo < hi) {
        const int shift = internal::CutShift(lo, hi);
        const uint32_t width = 1u << shift;
        for (int i = tid; i < 256; i += kSelectThreads) hist_s[i] = cnt_s[i] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += kSelectThreads) {
          const uint32_t key = keys[i];
          if (key != 0 && key >= lo && key <= hi) {
            const uint32_t bin = (key - lo) >> shift;
            atomicAdd(&hist_s[bin], weight(i, hier ? members[i] : i));
            atomicAdd(&cnt_s[bin], 1u);
          }
        }
        __syncthreads();
        if (warp == 0) internal::FindCutBin(hist_s, cnt_s, need_rem, cut_s);
        __syncthreads();
        const uint32_t bin = cut_s[0];
        need_rem -= cut_s[1];
        tied_items = cut_s[2];
        lo += bin * width;
        hi = static_cast<uint32_t>(
            min(static_cast<uint64_t>(hi), static_cast<uint64_t>(lo) + width - 1));
        __syncthreads();             // cut_s is rewritten by the next pass
        if (tied_items == 1) break;  // one key left in [lo, hi]: it is x*
      }
    }
    // x*: lo when the range closed; with one item left in [lo, hi], keys >= lo select the same.
    const uint32_t prefix = lo;
    // 4. Flags by cluster id: keys above x*, and those equal to x* in position order while the
    // keys taken among them are < need_rem (a block scan, needed only for true ties).
    const bool scan_ties = !take_all && need > 0 && tied_items > 1;
    if (!scan_ties) {
      for (int i = tid; i < n; i += kSelectThreads) {
        const uint32_t key = keys[i];
        const int id = hier ? members[i] : i;
        const bool sel = take_all ? key != 0 : (need > 0 && key != 0 && key >= prefix);
        if (id >= 0 && id < flag_limit) flags[id] = sel;
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
        if (key == prefix) w = weight(i, id);
      }
      const bool tied = key != 0 && key == prefix;
      int before = 0, unused = 0;
      const int2 tot =
          BlockExclusiveScan2(tied ? static_cast<int>(w) : 0, 0, &before, &unused, scan_s);
      const bool sel = key > prefix || (tied && carry + before < need_rem);
      if (i < n && id >= 0 && id < flag_limit) flags[id] = sel;
      carry += tot.x;
    }
  }
  if (coarse) return;
  __syncthreads();  // flags written by other threads of the block

  // 5. Segments over positions 0 (sink), 1 .. k (cluster pos - 1), k + 1 (window), coalescing
  // neighbours. Each thread takes kSeg consecutive positions: counts its segment starts and rows
  // (offsets loaded up front), one block scan places them, a second walk writes (row_delta at a
  // start, end at an end).
  constexpr int kSeg = 4;
  const int S = max(v.sink_len, 0), W = max(v.window_len, 0);
  const int body = static_cast<int>(internal::SelectBodyOf(v));
  auto selected = [&](int pos) -> bool {
    if (pos <= 0) return pos == 0 && S > 0;
    if (pos == k + 1) return W > 0;
    if (pos > k + 1) return false;
    return flags[pos - 1] != 0;
  };
  int2* segs = out.segments + unit * max_segments;
  int carry_seg = 0, carry_rows = 0;
  for (int p0 = 0; p0 < k + 2; p0 += kSelectThreads * kSeg) {
    const int first = p0 + tid * kSeg;
    // start[e]: first row of position first + e (and of first + kSeg, the end of the last).
    int start_row[kSeg + 1];
    bool sel[kSeg + 2];  // positions first - 1 .. first + kSeg
#pragma unroll
    for (int e = 0; e <= kSeg; ++e) {
      const int pos = first + e;
      start_row[e] =
          pos <= 0 ? 0 : (pos <= k ? S + offsets[pos - 1] : S + body + (pos > k + 1 ? W : 0));
    }
#pragma unroll
    for (int e = 0; e < kSeg + 2; ++e) sel[e] = selected(first - 1 + e);
    int starts = 0, rows = 0;
#pragma unroll
    for (int e = 0; e < kSeg; ++e) {
      if (sel[e + 1]) {
        rows += start_row[e + 1] - start_row[e];
        starts += sel[e] ? 0 : 1;
      }
    }
    int seg_before = 0, rows_before = 0;
    const int2 tot = BlockExclusiveScan2(starts, rows, &seg_before, &rows_before, scan_s);
    int seg = carry_seg + seg_before, key = carry_rows + rows_before;
#pragma unroll
    for (int e = 0; e < kSeg; ++e) {
      if (sel[e + 1]) {
        if (!sel[e]) {
          if (seg < max_segments) reinterpret_cast<int*>(segs + seg)[1] = start_row[e] - key;
          ++seg;
        }
        key += start_row[e + 1] - start_row[e];
        if (!sel[e + 2] && seg - 1 < max_segments) reinterpret_cast<int*>(segs + seg - 1)[0] = key;
      }
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
  const Workspace w = Carve(p, plan.fine_chunks, plan.coarse_chunks, plan.block_rows);
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
  fine.probs = nullptr;
  coarse.probs = nullptr;

  const dim3 select_grid(p.batch, p.n_kv_heads);
  // The selection kernel compiled for the smallest power of two >= the group size.
  const int g = p.n_q_heads / p.n_kv_heads;
  auto* select_kernel = g <= 1   ? SelectKernel<1>
                        : g <= 2 ? SelectKernel<2>
                        : g <= 4 ? SelectKernel<4>
                                 : SelectKernel<kMaxG>;
  constexpr size_t kSmem = ScoreSmemBytes<D>();
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(ScoreKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmem)),
      "SqueezeSelect: cudaFuncSetAttribute");
  if (p.hierarchical) {
    ScoreKernel<D>
        <<<dim3(p.batch, plan.coarse_chunks, p.n_kv_heads), kScoreThreads, kSmem, stream>>>(p,
                                                                                            coarse);
    SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: coarse scoring"));
    select_kernel<<<select_grid, kSelectThreads, 0, stream>>>(p, coarse, out, plan.max_segments,
                                                              false);
    SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: coarse selection"));
  }
  if (p.block_starts) {
    float* probs = reinterpret_cast<float*>(ws + w.block_probs);
    SQZ_RETURN_IF_ERROR(internal::LaunchBlockProbabilities(
        p, plan.fine_chunks, plan.block_rows, plan.block_span,
        reinterpret_cast<float2*>(ws + w.block_stats), reinterpret_cast<float2*>(ws + w.block_norm),
        probs, stream));
    fine.probs = probs;
  } else if (p.group_starts && !p.hierarchical) {
    SQZ_RETURN_IF_ERROR(
        internal::LaunchGroupedScore(p, plan.fine_chunks, fine.scores, fine.stats, stream));
  } else {
    ScoreKernel<D>
        <<<dim3(p.batch, plan.fine_chunks, p.n_kv_heads), kScoreThreads, kSmem, stream>>>(p, fine);
    SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: scoring"));
  }
  // Clusters need sm_90; on older devices the single-block kernel gives the same outputs.
  if (plan.select_ctas > 1 && internal::DeviceSupportsClusters()) {
    internal::ClusterSelectArgs args;
    args.max_items = p.max_clusters;
    args.chunks = plan.fine_chunks;
    args.scores = fine.scores;
    args.stats = fine.stats;
    args.probs = fine.probs;
    return internal::LaunchClusterSelect(p, args, plan.select_ctas, out, plan.max_segments,
                                         plan.chained, stream);
  }
  const size_t smem = SelectSmemBytes(p.max_clusters, false);
  if (smem > 0) {
    SQZ_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)),
        "SqueezeSelect: cudaFuncSetAttribute");
  }
  SQZ_CUDA_RETURN_IF_ERROR(
      internal::Launch(select_kernel, select_grid, dim3(kSelectThreads), smem, stream,
                       plan.chained && internal::DeviceSupportsClusters(), p, fine, out,
                       plan.max_segments,
                       smem > 0),
      "SqueezeSelect: selection");
  return LaunchStatus("SqueezeSelect: selection");
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

bool SqueezeClusterSelectFits(const SqueezeSelectParams& p, int ctas) {
  return !p.hierarchical && internal::ClusterSelectSmemBytes(p.max_clusters, ctas) > 0;
}

SqueezeSelectPlan PlanSqueezeSelect(const SqueezeSelectParams& p, int num_sms) {
  SqueezeSelectPlan plan;
  const int k = std::max(p.max_clusters, 0);
  const int k1 = p.hierarchical ? std::max(p.max_coarse, 0) : 0;
  plan.fine_chunks = std::max(1, (k + kScoreChunk - 1) / kScoreChunk);
  plan.coarse_chunks = p.hierarchical ? std::max(1, (k1 + kScoreChunk - 1) / kScoreChunk) : 0;
  // Runs of selected positions among k + 2 (sink, clusters, window) alternate with gaps.
  plan.max_segments = (k + 2 + 1) / 2;
  if (p.block_starts && p.n_kv_heads > 0 && p.n_q_heads % p.n_kv_heads == 0 &&
      p.n_q_heads / p.n_kv_heads >= 1 && p.n_q_heads / p.n_kv_heads <= kSqueezeMaxGroup) {
    plan.block_rows =
        std::max(p.max_block_tokens, 0) * internal::BlockRowsPerToken(p.n_q_heads / p.n_kv_heads);
  }
  plan.workspace_bytes = Carve(p, plan.fine_chunks, plan.coarse_chunks, plan.block_rows).total;
  if (plan.block_rows > 0) {
    plan.block_span = internal::BlockScoreSpan(p.batch, plan.fine_chunks, p.n_kv_heads, num_sms);
  }
  const int64_t units = static_cast<int64_t>(std::max(p.batch, 0)) * std::max(p.n_kv_heads, 0);
  for (int ctas : {8, 4, 2}) {
    if (units > 0 && units * ctas <= num_sms && k >= ctas * kSqueezeClusterMinItems &&
        SqueezeClusterSelectFits(p, ctas)) {
      plan.select_ctas = ctas;
      break;
    }
  }
  return plan;
}

Status SqueezeSelect(const SqueezeSelectParams& p, const SqueezeSelectPlan& plan,
                     const SqueezeSelection& out, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  constexpr const char* kOp = "SqueezeSelect";
  if (p.batch < 0 || p.batch > 65535) return ArgError(kOp, "batch must be in [0, 65535]");
  SQZ_RETURN_IF_ERROR(CheckHeadGroups(kOp, p.n_q_heads, p.n_kv_heads, kSqueezeMaxGroup));
  if (p.head_dim != 64 && p.head_dim != 128) {
    return UnsupportedError(
        kOp, "head_dim " + std::to_string(p.head_dim) + " is not compiled (64, 128)");
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
      return ArgError(
          kOp, "coarse_coverage " + std::to_string(p.coarse_coverage) + " is outside (0, 1]");
    }
  }
  const SqueezeSelectPlan expected = PlanSqueezeSelect(p);
  if (p.block_starts) {
    if (p.hierarchical) {
      return UnsupportedError(kOp, "hierarchical lookups of query blocks are not implemented");
    }
    if (p.max_block_tokens < 1) return ArgError(kOp, "block mode needs max_block_tokens >= 1");
  }
  if (plan.fine_chunks != expected.fine_chunks || plan.coarse_chunks != expected.coarse_chunks ||
      plan.block_rows != expected.block_rows || plan.max_segments != expected.max_segments ||
      plan.workspace_bytes != expected.workspace_bytes) {
    return ArgError(kOp, "plan was made for other params (make it with PlanSqueezeSelect)");
  }
  if (plan.block_span < 1) {
    return ArgError(kOp, "block_span " + std::to_string(plan.block_span) + " must be >= 1");
  }
  if (plan.select_ctas != 1 && !SqueezeClusterSelectFits(p, plan.select_ctas)) {
    return ArgError(kOp, "select_ctas " + std::to_string(plan.select_ctas) +
                             " is not 1, nor a cluster size (2, 4, 8, 16) these params fit");
  }
  if (p.batch == 0) return OkStatus();
  if (p.group_starts && !p.hierarchical && !p.block_starts) {
    if (p.num_groups < 1 || p.num_groups > p.batch) {
      return ArgError(kOp, "num_groups " + std::to_string(p.num_groups) +
                               " is outside [1, batch] (group_starts is set)");
    }
    if (p.max_group_size < 1 || p.max_group_size > p.batch) {
      return ArgError(kOp, "max_group_size " + std::to_string(p.max_group_size) +
                               " is outside [1, batch] (group_starts is set)");
    }
  }
  if (workspace_bytes < plan.workspace_bytes || !workspace || !Aligned16(workspace)) {
    return ArgError(kOp, "workspace of " + std::to_string(workspace_bytes) +
                             " bytes; the plan needs " + std::to_string(plan.workspace_bytes) +
                             ", 16-byte aligned");
  }
  if (!p.q || !p.views) return ArgError(kOp, "null q or views");
  if (!Aligned16(p.q) || p.q_stride % 8 != 0) {
    return ArgError(kOp, "q must be 16-byte aligned with q_stride a multiple of 8");
  }
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
