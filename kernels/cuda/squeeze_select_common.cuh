// Internal to kernels/cuda: device code shared by SqueezeSelect's two selection kernels, the
// single-block one (squeeze_select.cu, one block per (request, kv head)) and the cluster one
// (squeeze_select_cluster.cu, a thread-block cluster per (request, kv head)). Both must derive the
// same normaliser, the same p and so the same keys and cut bit for bit: the arithmetic lives here
// once, with the roundings spelled out (__fmul_rn, __fadd_rn, __fma_rn), so that no contraction
// the compiler chooses in one kernel and not in the other can change a result.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/squeeze_select.h"

namespace sqz::cuda::internal {

inline constexpr int kSelectThreads = 512;  // threads per select block (either kernel)

// Body keys B: n_tokens - S - W (offsets[h][k] by the view's contract).
__device__ __forceinline__ int64_t SelectBodyOf(const SqueezeLayerView& v) {
  return max(0, v.n_tokens - max(v.sink_len, 0) - max(v.window_len, 0));
}

// Exact normaliser of one query head, computed by one whole warp: the max m over the chunk maxima
// and the not-kept coarse groups' scores, then z = sum over chunks of sum_c * exp(max_c - m) plus
// sum over not-kept groups of keys * exp(s - m), in double. Lane 0 stores m and 1 / z (0 when
// z = 0) to *m_out and *inv_out.
//   stats:   [chunks] (max, sum N exp(s - max)) of this head
//   cscores: [k1] coarse scores of this head, kept: [k1], cweights: [k1] (all unused when k1 = 0)
__device__ __forceinline__ void HeadNormaliser(const float2* stats, int chunks,
                                               const float* cscores, const uint8_t* kept,
                                               const int32_t* cweights, int k1, float* m_out,
                                               float* inv_out) {
  const int lane = threadIdx.x & 31;
  float m = -INFINITY;
  for (int c = lane; c < chunks; c += 32) m = fmaxf(m, stats[c].x);
  for (int c = lane; c < k1; c += 32) {
    if (!kept[c]) m = fmaxf(m, cscores[c]);
  }
  m = WarpMax(m);
  double z = 0.0;
  if (m > -INFINITY) {
    for (int c = lane; c < chunks; c += 32) {
      const float2 sc = stats[c];
      if (sc.y > 0.0f) {
        z = __fma_rn(static_cast<double>(sc.y), exp(static_cast<double>(sc.x - m)), z);
      }
    }
    for (int c = lane; c < k1; c += 32) {
      if (!kept[c]) z = __fma_rn(static_cast<double>(cweights[c]), expf(cscores[c] - m), z);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) z = __dadd_rn(z, __shfl_xor_sync(0xffffffffu, z, off));
  if (lane == 0) {
    *m_out = m;
    *inv_out = z > 0.0 ? static_cast<float>(1.0 / z) : 0.0f;
  }
}

// One query head's statistics over one scoring chunk, computed by one whole warp: (m, z) with
// m = max_i s[i] and z = sum_i w[i] * exp(s[i] - m) over the items with s[i] > -inf (z = 0 when
// there is none). Lane l takes items l, l + 32, ... in order, then a butterfly sums the lanes: the
// per-request and the grouped scoring kernels both call this, so their stats agree bit for bit.
//   s: [kChunk] scores (-inf: not a candidate), w: [kChunk] weights (cluster sizes); shared memory
template <int kChunk>
__device__ __forceinline__ float2 ChunkRowStats(const float* s, const float* w) {
  const int lane = threadIdx.x & 31;
  float m = -INFINITY;
  for (int it = lane; it < kChunk; it += 32) m = fmaxf(m, s[it]);
  m = WarpMax(m);
  float z = 0.0f;
  if (m > -INFINITY) {
    for (int it = lane; it < kChunk; it += 32) {
      const float sc = s[it];
      if (sc > -INFINITY) z = __fmaf_rn(w[it], expf(sc - m), z);
    }
  }
  z = WarpSum(z);
  return make_float2(m, z);
}

// p of one item from its g scores (sc[j] = -inf: not scored) and the heads' (m, 1 / z): the max or
// the mean over the group of exp(s_j - m_j) / z_j.
// N (>= g) bounds the unrolled loop: a kernel compiled for small groups carries less code.
template <int N>
__device__ __forceinline__ float ItemProbability(const float (&sc)[N], int g, const float* m,
                                                 const float* inv, SqueezeReduce reduce) {
  float pr = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j < g) {
      const float ex = sc[j] > -INFINITY ? __fmul_rn(expf(sc[j] - m[j]), inv[j]) : 0.0f;
      pr = reduce == SqueezeReduce::kMax ? (j == 0 ? ex : fmaxf(pr, ex)) : __fadd_rn(pr, ex);
    }
  }
  return reduce == SqueezeReduce::kMean ? __fmul_rn(pr, 1.0f / g) : pr;
}

// The key of an item: 0 for no candidate, else the float bits of p (>= 0) plus 1, monotone in p.
__device__ __forceinline__ uint32_t SelectKey(bool candidate, float pr) {
  return candidate ? __float_as_uint(pr) + 1u : 0u;
}

// One step of the budget cut, by warp 0 only: over 256 bins of weights `hist` and item counts
// `cnt` (bin 255 holds the largest keys), the bin where the weight summed from the top first
// reaches need_rem (>= 1, <= the total weight). Lane l holds bins 255 - 8l .. 248 - 8l; a warp scan
// gives the weight above each lane's run. The crossing lane writes cut[0] = the bin, cut[1] = the
// weight in the bins above it, cut[2] = the items in the bin.
__device__ __forceinline__ void FindCutBin(const uint32_t* hist, const uint32_t* cnt,
                                           int64_t need_rem, uint32_t* cut) {
  const int lane = threadIdx.x & 31;
  uint32_t run[8], sum = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    run[e] = hist[255 - 8 * lane - e];
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
    cut[0] = static_cast<uint32_t>(255 - 8 * lane - e);
    cut[1] = above;
    cut[2] = cnt[255 - 8 * lane - e];
  }
}

// Bins of 2^shift keys: the smallest power of two for which 256 bins cover [lo, hi].
__device__ __forceinline__ int CutShift(uint32_t lo, uint32_t hi) {
  int shift = 0;
  while (((static_cast<uint64_t>(hi) - lo) >> shift) >= 256) ++shift;
  return shift;
}

// Exclusive scan of two ints over the block (blockDim.x a multiple of 32); returns the block
// totals. scratch: 2 * 32 ints of shared memory. Contains barriers: call from all threads.
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

}  // namespace sqz::cuda::internal
