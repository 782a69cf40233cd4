#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/sparse_prefill_select.h"

namespace sqz::cuda::internal {
namespace {

constexpr int kThreads = 128;  // pass 1: 4 warps; each takes m16 row tiles in turn
constexpr int kChunk = kSelectChunk;
constexpr int kSub = 64;  // pass 1: items per register pass (8 n-tiles of 8)
constexpr float kLog2e = 1.4426950408889634f;
// Pass 2: 8 warps, each holding two m16 tiles of the chunk's centroids in registers, over query
// rows staged in shared memory kPieceRows at a time (double-buffered).
constexpr int kProbWarps = kChunk / 32;
constexpr int kProbThreads = kProbWarps * 32;
constexpr int kPieceRows = 128;

template <int D>
constexpr size_t SmemBytes() {
  return static_cast<size_t>(kChunk) * (D + 8) * 2 + kChunk * 4;
}
template <int D>
constexpr size_t ProbSmemBytes() {
  return 2 * (static_cast<size_t>(kPieceRows) * (D + 8) * 2 + kPieceRows * sizeof(float2));
}

// Tokens of block r, clamped to [0, max_block_tokens].
__device__ __forceinline__ int BlockTokens(const SqueezeSelectParams& p, int r) {
  return max(0, min(p.block_starts[r + 1] - p.block_starts[r], p.max_block_tokens));
}

// The A operand of m16n8k16 MMAs over all D / 16 k-steps for one m16 tile, straight from global
// memory: this lane's rows are row0 (gr) and row1 (gr + 8) of the tile, zero where !ok.
template <int D>
__device__ __forceinline__ void LoadATile(const __nv_bfloat16* row0, const __nv_bfloat16* row1,
                                          bool ok0, bool ok1, int t4, uint32_t frag[D / 16][4]) {
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    const int col = kc * 16 + 2 * t4;
    frag[kc][0] = ok0 ? *reinterpret_cast<const uint32_t*>(row0 + col) : 0u;
    frag[kc][1] = ok1 ? *reinterpret_cast<const uint32_t*>(row1 + col) : 0u;
    frag[kc][2] = ok0 ? *reinterpret_cast<const uint32_t*>(row0 + col + 8) : 0u;
    frag[kc][3] = ok1 ? *reinterpret_cast<const uint32_t*>(row1 + col + 8) : 0u;
  }
}

// Copies chunk `chunk` of kv head h of view v (its centroids and their cluster sizes; rows past the
// view's n clusters zero with weight 0) into shared memory. Ends with the block synchronised.
template <int D>
__device__ __forceinline__ void LoadChunk(const SqueezeLayerView& v, int n, int chunk, int h,
                                          __nv_bfloat16* c_s, float* w_s) {
  constexpr int kRow = D + 8;
  constexpr int kPieces = D / 8;
  const int base = chunk * kChunk;
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const __nv_bfloat16* cents = v.centroids + static_cast<int64_t>(h) * v.num_clusters * D;
  for (int it = threadIdx.x; it < kChunk; it += kThreads) {
    w_s[it] = base + it < n ? static_cast<float>(counts[base + it]) : 0.0f;
  }
  for (int c = threadIdx.x; c < kChunk * kPieces; c += kThreads) {
    const int row = c / kPieces, col = (c % kPieces) * 8;
    const bool valid = base + row < n;
    CpAsync16(c_s + row * kRow + col,
              valid ? cents + static_cast<int64_t>(base + row) * D + col : v.centroids, valid);
  }
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
}

// Pass 1. One block per (run of `span` consecutive query blocks, chunk of kChunk centroids, kv head
// h). The chunk's centroids are loaded into shared memory once and serve every query block of the
// run that reads the same view (a block of another context reloads them), so the centroids cross
// from L2 once per run rather than once per query block. Per query block r: S = Q C^T for the
// block's rows (m16 tiles, warp w takes tiles w, w + 4, ...) against the chunk, 64 items at a
// time, and each row's (max, sum N exp(s - max)) over the chunk -> row_stats (log2 units).
// The arithmetic of each (r, chunk) does not depend on the span: outputs are the same bits.
template <int D>
__global__ void __launch_bounds__(kThreads)
    BlockStatsKernel(SqueezeSelectParams p, int chunks, int block_rows, int span,
                     float2* row_stats) {
  constexpr int kRow = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* c_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);     // [kChunk][kRow]
  auto* w_s = reinterpret_cast<float*>(c_s + kChunk * kRow);  // [kChunk] weight, 0: no item
  const int chunk = blockIdx.y, h = blockIdx.z;
  const int r_end = min(p.batch, (blockIdx.x + 1) * span);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gr = lane >> 2, t4 = lane & 3;
  const int g = p.n_q_heads / p.n_kv_heads;
  const int gp = g <= 1 ? 1 : (g <= 2 ? 2 : (g <= 4 ? 4 : 8));
  const int base = chunk * kChunk;
  // Which view's chunk shared memory holds (uniform over the block).
  const __nv_bfloat16* held = nullptr;
  const int32_t* held_counts = nullptr;
  int held_k = -1;
  for (int r = blockIdx.x * span; r < r_end; ++r) {
    const SqueezeLayerView v = p.views[r];
    const int n = max(0, min(v.num_clusters, p.max_clusters));
    if (v.centroids != held || v.counts != held_counts || v.num_clusters != held_k) {
      __syncthreads();  // every warp is done with the chunk held
      LoadChunk<D>(v, n, chunk, h, c_s, w_s);
      held = v.centroids;
      held_counts = v.counts;
      held_k = v.num_clusters;
    }
    const int nt = BlockTokens(p, r);
    const int rows = min(nt * gp, block_rows);
    const int64_t unit = static_cast<int64_t>(r) * p.n_kv_heads + h;
    const __nv_bfloat16* q_block = p.q + static_cast<int64_t>(p.block_starts[r]) * p.q_stride;

    // Scores in log2 units (s * log2 e), so every exponential is one exp2f; the (max, sum) pairs
    // and the normalisers are in the same units (the sums themselves do not change).
    const float scale_log2 = p.scale * kLog2e;
    const int n_here = n - base;  // items of this chunk that exist

    for (int tile = warp; tile * 16 < rows; tile += kThreads / 32) {
      const int row0 = tile * 16 + gr, row1 = row0 + 8;
      const int tk0 = row0 / gp, j0 = row0 % gp, tk1 = row1 / gp, j1 = row1 % gp;
      const bool ok0 = row0 < rows && j0 < g, ok1 = row1 < rows && j1 < g;
      const __nv_bfloat16* q0 = q_block + static_cast<int64_t>(tk0) * p.q_stride + (h * g + j0) * D;
      const __nv_bfloat16* q1 = q_block + static_cast<int64_t>(tk1) * p.q_stride + (h * g + j1) * D;
      uint32_t qf[D / 16][4];
      LoadATile<D>(q0, q1, ok0, ok1, t4, qf);
      // Running (max, sum) of each row.
      float m0 = -INFINITY, m1 = -INFINITY, z0 = 0.0f, z1 = 0.0f;
#pragma unroll
      for (int sub = 0; sub < kChunk / kSub; ++sub) {
        float s[kSub / 8][4];
#pragma unroll
        for (int ntl = 0; ntl < kSub / 8; ++ntl) {
          const int c0 = sub * kSub + ntl * 8;
          s[ntl][0] = s[ntl][1] = s[ntl][2] = s[ntl][3] = 0.0f;
#pragma unroll
          for (int kc = 0; kc < D / 16; kc += 2) {
            uint32_t b[4];
            LdMatrixX4(b, c_s + (c0 + (lane & 7)) * kRow + kc * 16 + (lane >> 3) * 8);
            MmaBf16(s[ntl], qf[kc], b[0], b[1]);
            MmaBf16(s[ntl], qf[kc + 1], b[2], b[3]);
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int it = c0 + 2 * t4 + (e & 1);
            s[ntl][e] = it < n_here ? s[ntl][e] * scale_log2 : -INFINITY;
          }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int ntl = 0; ntl < kSub / 8; ++ntl) {
          mx0 = fmaxf(mx0, fmaxf(s[ntl][0], s[ntl][1]));
          mx1 = fmaxf(mx1, fmaxf(s[ntl][2], s[ntl][3]));
        }
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        if (mn0 > -INFINITY) {
          z0 = m0 > -INFINITY ? z0 * exp2f(m0 - mn0) : 0.0f;
          m0 = mn0;
        }
        if (mn1 > -INFINITY) {
          z1 = m1 > -INFINITY ? z1 * exp2f(m1 - mn1) : 0.0f;
          m1 = mn1;
        }
#pragma unroll
        for (int ntl = 0; ntl < kSub / 8; ++ntl) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float w = w_s[sub * kSub + ntl * 8 + 2 * t4 + e];
            if (s[ntl][e] > -INFINITY) z0 += w * exp2f(s[ntl][e] - m0);
            if (s[ntl][2 + e] > -INFINITY) z1 += w * exp2f(s[ntl][2 + e] - m1);
          }
        }
      }
      // Merge the quad's partial (max, sum) of each row; lane t4 == 0 writes.
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        const float om0 = __shfl_xor_sync(0xffffffffu, m0, off);
        const float oz0 = __shfl_xor_sync(0xffffffffu, z0, off);
        const float om1 = __shfl_xor_sync(0xffffffffu, m1, off);
        const float oz1 = __shfl_xor_sync(0xffffffffu, z1, off);
        const float mn0 = fmaxf(m0, om0), mn1 = fmaxf(m1, om1);
        if (mn0 > -INFINITY) {
          z0 = (m0 > -INFINITY ? z0 * exp2f(m0 - mn0) : 0.0f) +
               (om0 > -INFINITY ? oz0 * exp2f(om0 - mn0) : 0.0f);
          m0 = mn0;
        }
        if (mn1 > -INFINITY) {
          z1 = (m1 > -INFINITY ? z1 * exp2f(m1 - mn1) : 0.0f) +
               (om1 > -INFINITY ? oz1 * exp2f(om1 - mn1) : 0.0f);
          m1 = mn1;
        }
      }
      float2* st = row_stats + unit * block_rows * chunks;
      if (t4 == 0 && ok0) st[static_cast<int64_t>(row0) * chunks + chunk] = make_float2(m0, z0);
      if (t4 == 0 && ok1) st[static_cast<int64_t>(row1) * chunks + chunk] = make_float2(m1, z1);
    }
  }
}

// One block per (block r, kv head): each row's normaliser from its chunks' (max, sum) pairs, in
// double as the CPU reference (z >= 1 whenever the row has an item: the max term counts N >= 1).
__global__ void __launch_bounds__(256)
    RowNormKernel(SqueezeSelectParams p, int chunks, int block_rows, const float2* row_stats,
                  float2* row_norm) {
  const int r = blockIdx.x, h = blockIdx.y;
  const int g = p.n_q_heads / p.n_kv_heads;
  const int gp = g <= 1 ? 1 : (g <= 2 ? 2 : (g <= 4 ? 4 : 8));
  const int rows = min(BlockTokens(p, r) * gp, block_rows);
  const int64_t unit = static_cast<int64_t>(r) * p.n_kv_heads + h;
  for (int row = threadIdx.x; row < rows; row += blockDim.x) {
    if (row % gp >= g) continue;
    const float2* st = row_stats + (unit * block_rows + row) * chunks;
    float m = -INFINITY;
    for (int c = 0; c < chunks; ++c) m = fmaxf(m, st[c].x);
    double z = 0.0;
    if (m > -INFINITY) {
      for (int c = 0; c < chunks; ++c) {
        const float2 x = st[c];
        if (x.y > 0.0f) z += static_cast<double>(x.y) * exp2(static_cast<double>(x.x - m));
      }
    }
    row_norm[unit * block_rows + row] =
        make_float2(m, z > 0.0 ? static_cast<float>(1.0 / z) : 0.0f);
  }
}

// Pass 2, transposed: S^T = C Q^T with the chunk's centroids as the A operand, held in registers
// for the whole run (warp w: centroids base + 32 w .. + 31, two m16 tiles), and the query rows as B
// (ldmatrix from shared memory, kPieceRows rows at a time, the next piece copied while this one is
// computed). Each query row's probability of each centroid, exp(s - m_row) / z_row (row_norm),
// reduced over the token's heads (max or sum) and summed over the block's tokens in registers:
// every warp owns its centroids, so nothing is reduced across warps. One block per (run of `span`
// query blocks, chunk, kv head), as pass 1; writes probs = sum / n_tokens (and / g for kMean), -1
// past the view's clusters and for empty blocks.
template <int D>
__global__ void __launch_bounds__(kProbThreads)
    BlockProbsKernel(SqueezeSelectParams p, int block_rows, int span, const float2* row_norm,
                     float* probs) {
  constexpr int kRow = D + 8;
  constexpr int kPieces16 = D / 8;  // 16-byte pieces per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* q_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);                 // [2][kPieceRows][kRow]
  auto* norm_s = reinterpret_cast<float2*>(q_s + 2 * kPieceRows * kRow);  // [2][kPieceRows]
  const int chunk = blockIdx.y, h = blockIdx.z;
  const int r_begin = blockIdx.x * span, r_end = min(p.batch, r_begin + span);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gr = lane >> 2, t4 = lane & 3;
  const int g = p.n_q_heads / p.n_kv_heads;
  const int gp = g <= 1 ? 1 : (g <= 2 ? 2 : (g <= 4 ? 4 : 8));
  const float scale_log2 = p.scale * kLog2e;
  const int item0 = chunk * kChunk + warp * 32;  // this warp's first centroid
  auto rows_of = [&](int r) { return min(BlockTokens(p, r) * gp, block_rows); };
  auto pieces_of = [&](int r) { return (rows_of(r) + kPieceRows - 1) / kPieceRows; };
  // Rows [pc * kPieceRows, + kPieceRows) of block r into buffer buf: q (zeros for padding heads and
  // rows past the block) and the rows' (max, 1 / normaliser).
  auto issue = [&](int r, int pc, int buf) {
    const int rows = rows_of(r), row0 = pc * kPieceRows;
    const __nv_bfloat16* q_block = p.q + static_cast<int64_t>(p.block_starts[r]) * p.q_stride;
    __nv_bfloat16* dst = q_s + buf * kPieceRows * kRow;
    for (int c = tid; c < kPieceRows * kPieces16; c += kProbThreads) {
      const int i = c / kPieces16, col = (c % kPieces16) * 8, row = row0 + i;
      const int j = row % gp;
      const bool valid = row < rows && j < g;
      const __nv_bfloat16* src =
          q_block + static_cast<int64_t>(row / gp) * p.q_stride + (h * g + j) * D + col;
      CpAsync16(dst + i * kRow + col, valid ? src : p.q, valid);
    }
    const float* norm = reinterpret_cast<const float*>(
        row_norm + (static_cast<int64_t>(r) * p.n_kv_heads + h) * block_rows + row0);
    float* nd = reinterpret_cast<float*>(norm_s + buf * kPieceRows);
    for (int c = tid; c < 2 * kPieceRows; c += kProbThreads) {
      if (row0 + c / 2 < rows) CpAsync4(nd + c, norm + c);
    }
  };
  // The piece after (r, pc) in the run, skipping blocks without rows; false at the run's end.
  auto advance = [&](int& r, int& pc) {
    ++pc;
    while (r < r_end && pc >= pieces_of(r)) {
      ++r;
      pc = 0;
    }
    return r < r_end;
  };

  const SqueezeLayerView* held = nullptr;  // the view whose centroids the registers hold
  uint32_t a[2][D / 16][4];
  int next_r = r_begin, next_pc = -1, buf = 0;
  if (advance(next_r, next_pc)) issue(next_r, next_pc, 0);
  CpAsyncCommit();
  for (int r = r_begin; r < r_end; ++r) {
    const SqueezeLayerView& v = p.views[r];
    const int n = max(0, min(v.num_clusters, p.max_clusters));
    if (held == nullptr || v.centroids != held->centroids || v.num_clusters != held->num_clusters) {
      const __nv_bfloat16* cents = v.centroids + static_cast<int64_t>(h) * v.num_clusters * D;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int c0 = item0 + t * 16 + gr, c1 = c0 + 8;
        LoadATile<D>(cents + static_cast<int64_t>(c0) * D, cents + static_cast<int64_t>(c1) * D,
                     c0 < n, c1 < n, t4, a[t]);
      }
      held = &v;
    }
    const int rows = rows_of(r);
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // [tile][centroid gr, gr + 8]
    for (int pc = 0; pc * kPieceRows < rows; ++pc) {
      // (r, pc) is in flight into buf; start the piece after it into the other buffer.
      int after_r = next_r, after_pc = next_pc;
      if (advance(after_r, after_pc)) issue(after_r, after_pc, buf ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
      __syncthreads();
      const __nv_bfloat16* qb = q_s + buf * kPieceRows * kRow;
      const float2* nb = norm_s + buf * kPieceRows;
      const int here = min(kPieceRows, rows - pc * kPieceRows);
      for (int t8 = 0; t8 * 8 < here; ++t8) {
        uint32_t b[D / 32][4];
#pragma unroll
        for (int kp = 0; kp < D / 32; ++kp) {
          LdMatrixX4(b[kp], qb + (t8 * 8 + (lane & 7)) * kRow + kp * 32 + (lane >> 3) * 8);
        }
        // This lane's two query rows (columns 2 t4, 2 t4 + 1 of the n-tile): (max, 1 / z), and
        // (+inf, 0) for padding heads and rows past the block, so their p is exactly 0.
        float m[2], zi[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int row = pc * kPieceRows + t8 * 8 + 2 * t4 + e;
          const bool ok = row < rows && row % gp < g;
          const float2 x = nb[t8 * 8 + 2 * t4 + e];
          m[e] = ok ? x.x : INFINITY;
          zi[e] = ok ? x.y : 0.0f;
        }
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
          for (int kp = 0; kp < D / 32; ++kp) {
            MmaBf16(c, a[t][2 * kp], b[kp][0], b[kp][1]);
            MmaBf16(c, a[t][2 * kp + 1], b[kp][2], b[kp][3]);
          }
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            // c[2 half + e]: centroid gr + 8 half, query row 2 t4 + e.
            const float p0 = exp2f(c[2 * half] * scale_log2 - m[0]) * zi[0];
            const float p1 = exp2f(c[2 * half + 1] * scale_log2 - m[1]) * zi[1];
            if (p.reduce == SqueezeReduce::kMean || gp == 1) {
              acc[t][half] += p0 + p1;
            } else {
              // Max over the token's heads: rows t * gp .. t * gp + gp - 1 are this lane's pair
              // and, for gp 4 and 8, the pairs of the lanes whose t4 differ in the low bits.
              float x = fmaxf(p0, p1);
              if (gp >= 4) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
              if (gp >= 8) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
              if ((t4 & (gp / 2 - 1)) == 0) acc[t][half] += x;
            }
          }
        }
      }
      __syncthreads();  // every warp is done with buf before it is refilled
      next_r = after_r;
      next_pc = after_pc;
      buf ^= 1;
    }
    // Sum over the quad's query rows; lane t4 == 0 writes its two centroids of each tile.
    const int nt = BlockTokens(p, r);
    const float norm = nt > 0 ? (1.0f / static_cast<float>(nt)) *
                                    (p.reduce == SqueezeReduce::kMean ? 1.0f / g : 1.0f)
                              : 0.0f;
    float* out = probs + (static_cast<int64_t>(r) * p.n_kv_heads + h) * p.max_clusters;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float x = acc[t][half];
        x += __shfl_xor_sync(0xffffffffu, x, 1);
        x += __shfl_xor_sync(0xffffffffu, x, 2);
        const int item = item0 + t * 16 + gr + 8 * half;
        if (t4 == 0 && item < p.max_clusters) out[item] = item < n && nt > 0 ? x * norm : -1.0f;
      }
    }
  }
  CpAsyncWait<0>();
}

template <int D>
Status Launch(const SqueezeSelectParams& p, int chunks, int block_rows, int span, float2* row_stats,
              float2* row_norm, float* probs, cudaStream_t stream) {
  const dim3 grid((p.batch + span - 1) / span, chunks, p.n_kv_heads);
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(BlockStatsKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(SmemBytes<D>())),
      "SqueezeSelect: cudaFuncSetAttribute");
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(BlockProbsKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(ProbSmemBytes<D>())),
      "SqueezeSelect: cudaFuncSetAttribute");
  BlockStatsKernel<D>
      <<<grid, kThreads, SmemBytes<D>(), stream>>>(p, chunks, block_rows, span, row_stats);
  SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: block scoring"));
  RowNormKernel<<<dim3(p.batch, p.n_kv_heads), 256, 0, stream>>>(p, chunks, block_rows, row_stats,
                                                                 row_norm);
  SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: block normalisers"));
  BlockProbsKernel<D>
      <<<grid, kProbThreads, ProbSmemBytes<D>(), stream>>>(p, block_rows, span, row_norm, probs);
  return LaunchStatus("SqueezeSelect: block probabilities");
}

}  // namespace

int BlockRowsPerToken(int g) { return g <= 1 ? 1 : (g <= 2 ? 2 : (g <= 4 ? 4 : 8)); }

int BlockScoreSpan(int batch, int chunks, int n_kv_heads, int num_sms) {
  if (num_sms <= 0 || batch <= 1) return 1;
  // Resident CTAs per SM, the smaller of the two passes' (d = 128): pass 1 three of 128 threads
  // (shared memory), pass 2 two of 256 (registers).
  constexpr int64_t kPerSm = 2;
  const int64_t ctas = static_cast<int64_t>(batch) * chunks * n_kv_heads;
  // As many query blocks per CTA as keep four waves of CTAs (the tail stays small), then spread
  // evenly over the runs that needs.
  const int64_t most = std::clamp<int64_t>(ctas / (4 * kPerSm * num_sms), 1, batch);
  const int64_t runs = (batch + most - 1) / most;
  return static_cast<int>((batch + runs - 1) / runs);
}

Status LaunchBlockProbabilities(const SqueezeSelectParams& p, int chunks, int block_rows, int span,
                                float2* row_stats, float2* row_norm, float* probs,
                                cudaStream_t stream) {
  if (p.head_dim == 64)
    return Launch<64>(p, chunks, block_rows, span, row_stats, row_norm, probs, stream);
  if (p.head_dim == 128) {
    return Launch<128>(p, chunks, block_rows, span, row_stats, row_norm, probs, stream);
  }
  return UnsupportedError("SqueezeSelect",
                          "head_dim " + std::to_string(p.head_dim) + " is not compiled (64, 128)");
}

}  // namespace sqz::cuda::internal
