#include <cooperative_groups.h>

#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/squeeze_select_cluster.h"
#include "kernels/cuda/squeeze_select_common.cuh"

namespace sqz::cuda::internal {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = kSelectThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kPer = 2;       // items per thread in flight in the p pass
constexpr int kSeg = 4;       // segment positions per thread per sweep
constexpr int kMaxCtas = 16;  // a non-portable cluster size on Hopper
constexpr int kMaxG = kSqueezeMaxGroup;
constexpr size_t kSmemLimit = 160 * 1024;  // dynamic shared memory per CTA, at most

// Values of one CTA that the other CTAs of its cluster read through distributed shared memory.
// Each field is written once, before the cluster barrier after which others read it.
struct Published {
  uint32_t weight;      // candidates' total weight in the slice
  uint32_t kmin, kmax;  // their key range
  int tied;             // weight of the slice's keys equal to x* (tie scan only)
  int starts, rows;     // segment starts and rows among the CTA's positions
};

// One cluster of gridDim.x CTAs per (request r = blockIdx.y, kv head h = blockIdx.z), flat level
// only; see squeeze_select_cluster.h. kG: a power of two >= the group size g (the unrolled
// per-head loops run to kG: less code for small groups). kThreads threads; dynamic shared memory
// ClusterSelectSmemBytes: keys [slice_cap] | weights [slice_cap] | cluster offsets
// [slice_cap + 1] | flags [slice_cap] of the CTA's slice. Every branch that contains a cluster
// barrier depends only on values all CTAs of the cluster hold equally (params, view, combined
// sums), so all CTAs reach every barrier.
template <int kG>
__global__ void __launch_bounds__(kThreads)
    ClusterSelectKernel(SqueezeSelectParams p, ClusterSelectArgs a, SqueezeSelection out,
                        int max_segments, int slice_cap) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  // Launched as a programmatic dependent of the scoring kernel: nothing is read before it is done.
  // The attention after it may be scheduled now and waits for this kernel in turn.
  WaitForPriorGrid();
  AllowDependentLaunch();
  extern __shared__ __align__(16) uint32_t dyn_s[];
  __shared__ float m_s[kMaxG], inv_s[kMaxG];
  __shared__ uint32_t hist_s[256], cnt_s[256];  // this CTA's histograms of the current pass
  // The cluster's sums, which every CTA adds its histograms into; passes alternate.
  __shared__ uint32_t sum_hist_s[2][256], sum_cnt_s[2][256];
  __shared__ int scan_s[64];
  __shared__ uint32_t cut_s[3];  // digit found, weight above it, items with that digit
  __shared__ uint32_t red_s[3][kWarps];
  __shared__ Published pub_s;
  __shared__ int64_t all_w_s;
  __shared__ uint32_t range_s[2];
  __shared__ int carry_s[2];
  __shared__ bool edge_s[2];  // selected: the positions just before and after this CTA's

  cg::cluster_group cluster = cg::this_cluster();
  const int ctas = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int r = blockIdx.y, h = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = p.n_q_heads / p.n_kv_heads;
  const SqueezeLayerView v = p.views[r];
  const int64_t unit = static_cast<int64_t>(r) * p.n_kv_heads + h;
  const int k = max(0, min(v.num_clusters, a.max_items));
  const int per = (k + ctas - 1) / ctas;                               // <= slice_cap
  const int b = min(rank * per, k), e = min(b + per, k), len = e - b;  // this CTA's items
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const int32_t* offsets = v.offsets + static_cast<int64_t>(h) * (v.num_clusters + 1);
  const float* scores = a.scores + unit * g * a.max_items;
  uint32_t* keys = dyn_s;                                             // [slice_cap]
  uint32_t* weights = dyn_s + slice_cap;                              // [slice_cap]
  auto* offs = reinterpret_cast<int32_t*>(dyn_s + 2 * slice_cap);     // [slice_cap + 1]
  uint8_t* flags = reinterpret_cast<uint8_t*>(offs + slice_cap + 1);  // [slice_cap]

  // The slice's cluster offsets [b, e] (the segment step's row starts), fetched now so that step
  // waits on no global load; and the cluster sums zeroed before the first cluster barrier, after
  // which other CTAs add into them.
  for (int i = tid; i <= len && len > 0; i += kThreads) CpAsync4(offs + i, offsets + b + i);
  CpAsyncCommit();
  for (int i = tid; i < 2 * 256; i += kThreads) {
    (&sum_hist_s[0][0])[i] = 0;
    (&sum_cnt_s[0][0])[i] = 0;
  }

  // 1. Normaliser per head (every CTA: the same code and inputs as the single-block kernel).
  if (warp < g && a.probs == nullptr) {
    HeadNormaliser(a.stats + (unit * g + warp) * a.chunks, a.chunks, nullptr, nullptr, nullptr, 0,
                   &m_s[warp], &inv_s[warp]);
  }
  __syncthreads();

  // 2. p of the slice's items -> keys and weights (budget) or flags (threshold).
  const bool budget = p.policy == SqueezePolicy::kBudget;
  const float value =
      p.per_request_value ? p.per_request_value[r] : (budget ? p.kv_budget : p.threshold);
  uint32_t total_w = 0, kmin = 0xFFFFFFFFu, kmax = 0;
  for (int i0 = b; i0 < e; i0 += kThreads * kPer) {
    float sc[kPer][kG];
    uint32_t w[kPer];
#pragma unroll
    for (int x = 0; x < kPer; ++x) {  // loads first
      const int i = i0 + x * kThreads + tid;
      const bool in = i < e;
      if (a.probs) {  // block mode: p in sc[x][0] (< 0: no candidate)
        sc[x][0] = in ? a.probs[unit * a.max_items + i] : -1.0f;
      } else {
#pragma unroll
        for (int j = 0; j < kG; ++j) {
          sc[x][j] = in && j < g ? scores[j * a.max_items + i] : -INFINITY;
        }
      }
      w[x] = in ? static_cast<uint32_t>(counts[i]) : 0u;
    }
#pragma unroll
    for (int x = 0; x < kPer; ++x) {
      const int i = i0 + x * kThreads + tid;
      const bool in = i < e;
      bool cand;
      float pr = 0.0f;
      if (a.probs) {
        cand = sc[x][0] >= 0.0f;
        pr = cand ? sc[x][0] : 0.0f;
      } else {
        cand = sc[x][0] > -INFINITY;  // scored (every head, or none)
        pr = ItemProbability(sc[x], g, m_s, inv_s, p.reduce);
      }
      if (!budget) {
        if (in) flags[i - b] = cand && pr > value;
        continue;
      }
      const uint32_t key = SelectKey(cand, pr);
      if (in) {
        keys[i - b] = key;
        weights[i - b] = w[x];
      }
      if (cand) {
        total_w += w[x];
        kmin = min(kmin, key);
        kmax = max(kmax, key);
      }
    }
  }

  if (budget) {
    // 3. The cut, as the single-block kernel finds it (squeeze_select.cu, step 3), over the
    // cluster: the candidates' weight and key range, then each pass's histograms, summed over the
    // CTAs; every CTA derives the same bin from the same sums.
    const float frac = fminf(fmaxf(value, 0.0f), 1.0f);
    const int64_t need = static_cast<int64_t>(ceil(static_cast<double>(frac) * SelectBodyOf(v)));
    uint32_t tw = total_w;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      tw += __shfl_xor_sync(0xffffffffu, tw, off);
      kmin = min(kmin, __shfl_xor_sync(0xffffffffu, kmin, off));
      kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, off));
    }
    if (lane == 0) {
      red_s[0][warp] = tw;
      red_s[1][warp] = kmin;
      red_s[2][warp] = kmax;
    }
    __syncthreads();  // also: the slice's keys are complete
    if (tid == 0) {
      uint32_t sw = 0, mn = 0xFFFFFFFFu, mx = 0;
      for (int w = 0; w < kWarps; ++w) {
        sw += red_s[0][w];
        mn = min(mn, red_s[1][w]);
        mx = max(mx, red_s[2][w]);
      }
      pub_s.weight = sw;
      pub_s.kmin = mn;
      pub_s.kmax = mx;
    }
    cluster.sync();  // publishes pub_s; every CTA of the cluster is running from here on
    if (warp == 0) {
      int64_t sw = 0;
      uint32_t mn = 0xFFFFFFFFu, mx = 0;
      if (lane < ctas) {
        const Published* o = cluster.map_shared_rank(&pub_s, lane);
        sw = o->weight;
        mn = o->kmin;
        mx = o->kmax;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        sw += __shfl_xor_sync(0xffffffffu, sw, off);
        mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, off));
        mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      }
      if (lane == 0) {
        all_w_s = sw;
        range_s[0] = mn;
        range_s[1] = mx;
      }
    }
    __syncthreads();
    const int64_t all_w = all_w_s;
    uint32_t lo = range_s[0], hi = range_s[1];
    const bool take_all = all_w < need;
    uint32_t tied_items = 0;
    int64_t need_rem = need;
    if (!take_all && need > 0) {
      tied_items = 2;  // unknown until a pass counts them
      int buf = 0;
      while (lo < hi) {
        const int shift = CutShift(lo, hi);
        const uint32_t width = 1u << shift;
        for (int i = tid; i < 256; i += kThreads) hist_s[i] = cnt_s[i] = 0;
        __syncthreads();
        for (int i = tid; i < len; i += kThreads) {
          const uint32_t key = keys[i];
          if (key != 0 && key >= lo && key <= hi) {
            const uint32_t bin = (key - lo) >> shift;
            atomicAdd(&hist_s[bin], weights[i]);
            atomicAdd(&cnt_s[bin], 1u);
          }
        }
        __syncthreads();
        // Every CTA adds its non-empty bins into every CTA's sums (remote reductions, no round
        // trip to wait for); the cluster barrier completes them, so each CTA then reads the
        // cluster's histogram locally.
        if (tid < 256 && cnt_s[tid] != 0) {
          const uint32_t hs = hist_s[tid], cs = cnt_s[tid];
#pragma unroll 1
          for (int q = 0; q < ctas; ++q) {
            atomicAdd(cluster.map_shared_rank(&sum_hist_s[buf][tid], q), hs);
            atomicAdd(cluster.map_shared_rank(&sum_cnt_s[buf][tid], q), cs);
          }
        }
        cluster.sync();  // every CTA's bins of this pass are in every CTA's sums
        if (warp == 0) FindCutBin(sum_hist_s[buf], sum_cnt_s[buf], need_rem, cut_s);
        __syncthreads();
        // Zero these sums for the pass after next: other CTAs add into them only after the next
        // pass's cluster barrier, which this CTA reaches after this.
        for (int i = tid; i < 256; i += kThreads) sum_hist_s[buf][i] = sum_cnt_s[buf][i] = 0;
        const uint32_t bin = cut_s[0];
        need_rem -= cut_s[1];
        tied_items = cut_s[2];
        lo += bin * width;
        hi = static_cast<uint32_t>(
            min(static_cast<uint64_t>(hi), static_cast<uint64_t>(lo) + width - 1));
        buf ^= 1;
        if (tied_items == 1) break;  // one key left in [lo, hi]: it is x*
      }
    }
    // 4. Flags of the slice: keys above x* = lo, and those equal to x* in position order while the
    // keys taken among them are < need_rem; the tied weight before the slice comes from the
    // lower-ranked CTAs.
    const uint32_t prefix = lo;
    const bool scan_ties = !take_all && need > 0 && tied_items > 1;
    if (!scan_ties) {
      for (int i = tid; i < len; i += kThreads) {
        const uint32_t key = keys[i];
        flags[i] = take_all ? key != 0 : (need > 0 && key != 0 && key >= prefix);
      }
    } else {
      int tied_w = 0;
      for (int i = tid; i < len; i += kThreads) {
        if (keys[i] != 0 && keys[i] == prefix) tied_w += static_cast<int>(weights[i]);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) tied_w += __shfl_xor_sync(0xffffffffu, tied_w, off);
      __syncthreads();  // red_s was read above
      if (lane == 0) red_s[0][warp] = static_cast<uint32_t>(tied_w);
      __syncthreads();
      if (tid == 0) {
        int sum = 0;
        for (int w = 0; w < kWarps; ++w) sum += static_cast<int>(red_s[0][w]);
        pub_s.tied = sum;
      }
      cluster.sync();  // publishes pub_s.tied
      if (warp == 0) {
        int before = lane < rank ? cluster.map_shared_rank(&pub_s, lane)->tied : 0;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) before += __shfl_xor_sync(0xffffffffu, before, off);
        if (lane == 0) carry_s[0] = before;
      }
      __syncthreads();
      int carry = carry_s[0];
      for (int i0 = 0; i0 < len; i0 += kThreads) {
        const int i = i0 + tid;
        uint32_t key = 0, w = 0;
        if (i < len) {
          key = keys[i];
          if (key == prefix) w = weights[i];
        }
        const bool tied = key != 0 && key == prefix;
        int before = 0, unused = 0;
        const int2 tot =
            BlockExclusiveScan2(tied ? static_cast<int>(w) : 0, 0, &before, &unused, scan_s);
        const bool sel = key > prefix || (tied && carry + before < need_rem);
        if (i < len) flags[i] = sel;
        carry += tot.x;
      }
    }
  }
  cluster.sync();  // every slice's flags are complete (neighbours' flags are read below)

  // 5. Segments over positions 0 (sink), 1 .. k (cluster pos - 1), k + 1 (window), as the
  // single-block kernel writes them (squeeze_select.cu, step 5). This CTA owns the positions of
  // its slice (rank 0 also the sink, the last rank also the window): it counts their segment
  // starts and rows, the counts of the lower-ranked CTAs place them, and it writes the starts and
  // ends that fall on its positions. The two positions just outside the slice are read from the
  // CTAs that own them.
  const int S = max(v.sink_len, 0), W = max(v.window_len, 0);
  const int body = static_cast<int>(SelectBodyOf(v));
  const int pos_begin = rank == 0 ? 0 : b + 1;
  const int pos_end = rank == ctas - 1 ? k + 2 : e + 1;
  // Of the positions outside the slice, only pos_begin - 1 and pos_end matter (the runs around
  // the slice's first and last positions); their owners' flags are read once.
  if (tid < 2) {
    const int item = tid == 0 ? pos_begin - 2 : pos_end - 1;
    bool sel_edge = false;
    if (item >= 0 && item < k && (item < b || item >= e)) {
      const int owner = item / per;
      sel_edge = cluster.map_shared_rank(flags, owner)[item - owner * per] != 0;
    }
    edge_s[tid] = sel_edge;
  }
  __syncthreads();
  // Whether position pos is selected, for pos in [pos_begin - 1, pos_end] (others: unused).
  auto selected = [&](int pos) -> bool {
    if (pos <= 0) return pos == 0 && S > 0;
    if (pos == k + 1) return W > 0;
    if (pos > k + 1) return false;
    const int item = pos - 1;
    if (item >= b && item < e) return flags[item - b] != 0;
    return edge_s[item < b ? 0 : 1];
  };
  constexpr int kSweep = kThreads * kSeg;
  const bool one_sweep = pos_end - pos_begin <= kSweep;  // keep the loads of sweep 1
  int start_row[kSeg + 1];                               // first row of position first + e
  bool sel[kSeg + 2];                                    // positions first - 1 .. first + kSeg
  CpAsyncWait<0>();
  __syncthreads();  // offs is complete
  // Positions pos_begin .. pos_end are the only ones whose row starts count() reads; the
  // clusters among them are items b .. e, in offs.
  auto load = [&](int first) {
#pragma unroll
    for (int x = 0; x <= kSeg; ++x) {
      const int pos = first + x;
      start_row[x] = pos <= 0 || pos > pos_end
                         ? 0
                         : (pos <= k ? S + offs[pos - 1 - b] : S + body + (pos > k + 1 ? W : 0));
    }
#pragma unroll
    for (int x = 0; x < kSeg + 2; ++x) sel[x] = first < pos_end && selected(first - 1 + x);
  };
  auto count = [&](int first) {
    int starts = 0, rows = 0;
#pragma unroll
    for (int x = 0; x < kSeg; ++x) {
      if (first + x < pos_end && sel[x + 1]) {
        rows += start_row[x + 1] - start_row[x];
        starts += sel[x] ? 0 : 1;
      }
    }
    return make_int2(starts, rows);
  };
  int my_starts = 0, my_rows = 0;
  for (int p0 = pos_begin; p0 < pos_end; p0 += kSweep) {
    const int first = p0 + tid * kSeg;
    load(first);
    const int2 c = count(first);
    my_starts += c.x;
    my_rows += c.y;
  }
  int unused_a = 0, unused_b = 0;
  const int2 mine = BlockExclusiveScan2(my_starts, my_rows, &unused_a, &unused_b, scan_s);
  if (tid == 0) {
    pub_s.starts = mine.x;
    pub_s.rows = mine.y;
  }
  cluster.sync();  // publishes the counts
  if (warp == 0) {
    int seg = 0, rows = 0;
    if (lane < rank) {
      const Published* o = cluster.map_shared_rank(&pub_s, lane);
      seg = o->starts;
      rows = o->rows;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      seg += __shfl_xor_sync(0xffffffffu, seg, off);
      rows += __shfl_xor_sync(0xffffffffu, rows, off);
    }
    if (lane == 0) {
      carry_s[0] = seg;
      carry_s[1] = rows;
    }
  }
  __syncthreads();
  int carry_seg = carry_s[0], carry_rows = carry_s[1];
  int2* segs = out.segments + unit * max_segments;
  for (int p0 = pos_begin; p0 < pos_end; p0 += kSweep) {
    const int first = p0 + tid * kSeg;
    if (!one_sweep) load(first);
    const int2 c = count(first);
    int seg_before = 0, rows_before = 0;
    const int2 tot = BlockExclusiveScan2(c.x, c.y, &seg_before, &rows_before, scan_s);
    int seg = carry_seg + seg_before, key = carry_rows + rows_before;
#pragma unroll
    for (int x = 0; x < kSeg; ++x) {
      if (first + x < pos_end && sel[x + 1]) {
        if (!sel[x]) {
          if (seg < max_segments) reinterpret_cast<int*>(segs + seg)[1] = start_row[x] - key;
          ++seg;
        }
        key += start_row[x + 1] - start_row[x];
        if (!sel[x + 2] && seg - 1 < max_segments) reinterpret_cast<int*>(segs + seg - 1)[0] = key;
      }
    }
    carry_seg += tot.x;
    carry_rows += tot.y;
  }
  if (rank == ctas - 1 && tid == 0) {
    out.num_segments[unit] = min(carry_seg, max_segments);
    out.selected_len[unit] = carry_rows;
    if (out.body_selected) out.body_selected[unit] = carry_rows - S - W;
  }
  cluster.sync();  // no CTA leaves while another may still read its shared memory
#else
  __trap();  // thread-block clusters need sm_90: SqueezeSelect never launches this below it
#endif
}

}  // namespace

size_t ClusterSelectSmemBytes(int max_items, int ctas) {
  if ((ctas != 2 && ctas != 4 && ctas != 8 && ctas != kMaxCtas) || max_items < 1) return 0;
  const size_t slice = (static_cast<size_t>(max_items) + ctas - 1) / ctas;
  // keys, weights and offsets (4 bytes each; one offset more), flags (1 byte).
  const size_t bytes = (slice * 13 + 4 + 15) / 16 * 16;
  return bytes <= kSmemLimit ? bytes : 0;
}

bool DeviceSupportsClusters() {
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         major >= 9;
}

Status LaunchClusterSelect(const SqueezeSelectParams& p, const ClusterSelectArgs& a, int ctas,
                           const SqueezeSelection& out, int max_segments, bool programmatic,
                           cudaStream_t stream) {
  constexpr const char* kOp = "SqueezeSelect: cluster selection";
  const size_t smem = ClusterSelectSmemBytes(a.max_items, ctas);
  if (smem == 0 || p.hierarchical) {
    return ArgError("SqueezeSelect",
                    "no cluster selection of " + std::to_string(ctas) + " CTAs for these params");
  }
  const int slice_cap = (a.max_items + ctas - 1) / ctas;
  // The kernel compiled for the smallest power of two >= the group size.
  const int g = p.n_q_heads / p.n_kv_heads;
  auto* kernel = g <= 1   ? ClusterSelectKernel<1>
                 : g <= 2 ? ClusterSelectKernel<2>
                 : g <= 4 ? ClusterSelectKernel<4>
                          : ClusterSelectKernel<kMaxG>;
  SQZ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem)),
                           kOp);
  if (ctas > 8) {
    SQZ_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1), kOp);
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ctas, p.batch, p.n_kv_heads);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = ctas;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;  // after the scoring kernel
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = programmatic ? 2 : 1;
  if (ctas > 8) {  // a non-portable size: this device may have no GPC with room for it
    int clusters = 0;
    const cudaError_t err = cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg);
    if (err != cudaSuccess || clusters < 1) {
      (void)cudaGetLastError();
      return UnsupportedError("SqueezeSelect", "clusters of " + std::to_string(ctas) +
                                                   " CTAs do not fit on this device");
    }
  }
  SQZ_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, p, a, out, max_segments, slice_cap),
                           kOp);
  return LaunchStatus(kOp);
}

}  // namespace sqz::cuda::internal
