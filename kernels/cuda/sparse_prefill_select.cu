#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/sparse_prefill_select.h"

namespace sqz::cuda::internal {
namespace {

constexpr int kThreads = 128;  // 4 warps; each takes m16 row tiles in turn
constexpr int kChunk = kSelectChunk;
constexpr int kSub = 64;  // items per register pass (8 n-tiles of 8)
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
constexpr size_t SmemBytes() {
  return static_cast<size_t>(kChunk) * (D + 8) * 2 + kChunk * 4 + (kThreads / 32) * kChunk * 4;
}

// Tokens of block r, clamped to [0, max_block_tokens].
__device__ __forceinline__ int BlockTokens(const SqueezeSelectParams& p, int r) {
  return max(0, min(p.block_starts[r + 1] - p.block_starts[r], p.max_block_tokens));
}

// One block per (block r, chunk of kChunk centroids, kv head h). Both passes compute
// S = Q C^T for the block's rows (m16 tiles, warp w takes tiles w, w + 4, ...) against the chunk's
// centroids in shared memory, 64 items at a time.
//   kProbs == false: each row's (max, sum N exp(s - max)) over the chunk -> row_stats (log2 units).
//   kProbs == true: p over the chunk: sum over tokens of reduce_j exp(s - m_row) / z_row
//   (row_norm), times 1 / n_tokens (and 1 / g for kMean) -> probs.
template <int D, bool kProbs>
__global__ void __launch_bounds__(kThreads)
    BlockScoreKernel(SqueezeSelectParams p, int chunks, int block_rows, float2* row_stats,
                     const float2* row_norm, float* probs) {
  constexpr int kRow = D + 8;
  constexpr int kPieces = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* c_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);     // [kChunk][kRow]
  auto* w_s = reinterpret_cast<float*>(c_s + kChunk * kRow);  // [kChunk] weight, 0: no item
  float* acc_s = w_s + kChunk;                                // [warps][kChunk]
  const int r = blockIdx.x, chunk = blockIdx.y, h = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gr = lane >> 2, t4 = lane & 3;
  const int g = p.n_q_heads / p.n_kv_heads;
  const int gp = g <= 1 ? 1 : (g <= 2 ? 2 : (g <= 4 ? 4 : 8));
  const SqueezeLayerView v = p.views[r];
  const int n = max(0, min(v.num_clusters, p.max_clusters));
  const int nt = BlockTokens(p, r);
  const int rows = min(nt * gp, block_rows);
  const int64_t unit = static_cast<int64_t>(r) * p.n_kv_heads + h;
  const int base = chunk * kChunk;
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const __nv_bfloat16* cents = v.centroids + static_cast<int64_t>(h) * v.num_clusters * D;
  const __nv_bfloat16* q_block = p.q + static_cast<int64_t>(p.block_starts[r]) * p.q_stride;

  for (int it = tid; it < kChunk; it += kThreads) {
    w_s[it] = base + it < n ? static_cast<float>(counts[base + it]) : 0.0f;
  }
  for (int c = tid; c < kChunk * kPieces; c += kThreads) {
    const int row = c / kPieces, col = (c % kPieces) * 8;
    const bool valid = base + row < n;
    CpAsync16(c_s + row * kRow + col,
              valid ? cents + static_cast<int64_t>(base + row) * D + col : v.centroids, valid);
  }
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();

  float acc[kChunk / 8][2];  // kProbs: this lane's columns 2 * t4, 2 * t4 + 1 of each n-tile
#pragma unroll
  for (int i = 0; i < kChunk / 8; ++i) acc[i][0] = acc[i][1] = 0.0f;
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
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      const int col = kc * 16 + 2 * t4;
      qf[kc][0] = ok0 ? *reinterpret_cast<const uint32_t*>(q0 + col) : 0u;
      qf[kc][1] = ok1 ? *reinterpret_cast<const uint32_t*>(q1 + col) : 0u;
      qf[kc][2] = ok0 ? *reinterpret_cast<const uint32_t*>(q0 + col + 8) : 0u;
      qf[kc][3] = ok1 ? *reinterpret_cast<const uint32_t*>(q1 + col + 8) : 0u;
    }
    // kProbs: the rows' normalisers; stats pass: running (max, sum) of each row.
    float m0 = -INFINITY, m1 = -INFINITY, z0 = 0.0f, z1 = 0.0f;
    if constexpr (kProbs) {
      const float2* norm = row_norm + unit * block_rows;
      if (ok0) {
        const float2 x = norm[row0];
        m0 = x.x;
        z0 = x.y;
      }
      if (ok1) {
        const float2 x = norm[row1];
        m1 = x.x;
        z1 = x.y;
      }
    }
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
      if constexpr (!kProbs) {
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
      } else {
#pragma unroll
        for (int ntl = 0; ntl < kSub / 8; ++ntl) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float p0 = ok0 && s[ntl][e] > -INFINITY ? exp2f(s[ntl][e] - m0) * z0 : 0.0f;
            float p1 = ok1 && s[ntl][2 + e] > -INFINITY ? exp2f(s[ntl][2 + e] - m1) * z1 : 0.0f;
            if (p.reduce == SqueezeReduce::kMax) {
              // Max over the token's heads: rows t * gp .. t * gp + gp - 1 are lanes whose gr
              // differ in the low log2(gp) bits; one lane of each token then contributes.
#pragma unroll
              for (int off = 4; off < 32; off <<= 1) {
                if ((off >> 2) < gp) {
                  p0 = fmaxf(p0, __shfl_xor_sync(0xffffffffu, p0, off));
                  p1 = fmaxf(p1, __shfl_xor_sync(0xffffffffu, p1, off));
                }
              }
              if (gr % gp != 0) p0 = p1 = 0.0f;
            }
            acc[sub * (kSub / 8) + ntl][e] += p0 + p1;
          }
        }
      }
    }
    if constexpr (!kProbs) {
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
  if constexpr (kProbs) {
    // Sum each column over the warp's lanes (the rows), then over the warps.
#pragma unroll
    for (int i = 0; i < kChunk / 8; ++i) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x = acc[i][e];
        x += __shfl_xor_sync(0xffffffffu, x, 4);
        x += __shfl_xor_sync(0xffffffffu, x, 8);
        x += __shfl_xor_sync(0xffffffffu, x, 16);
        if (gr == 0) acc_s[warp * kChunk + i * 8 + 2 * t4 + e] = x;
      }
    }
    __syncthreads();
    const float norm = nt > 0 ? (1.0f / static_cast<float>(nt)) *
                                    (p.reduce == SqueezeReduce::kMean ? 1.0f / g : 1.0f)
                              : 0.0f;
    float* out = probs + unit * p.max_clusters;
    for (int it = tid; it < kChunk; it += kThreads) {
      const int item = base + it;
      if (item >= p.max_clusters) continue;
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kThreads / 32; ++w) sum += acc_s[w * kChunk + it];
      out[item] = item < n && nt > 0 ? sum * norm : -1.0f;
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

template <int D>
Status Launch(const SqueezeSelectParams& p, int chunks, int block_rows, float2* row_stats,
              float2* row_norm, float* probs, cudaStream_t stream) {
  constexpr size_t kSmem = SmemBytes<D>();
  const dim3 grid(p.batch, chunks, p.n_kv_heads);
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(BlockScoreKernel<D, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmem)),
      "SqueezeSelect: cudaFuncSetAttribute");
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(BlockScoreKernel<D, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmem)),
      "SqueezeSelect: cudaFuncSetAttribute");
  BlockScoreKernel<D, false>
      <<<grid, kThreads, kSmem, stream>>>(p, chunks, block_rows, row_stats, row_norm, probs);
  SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: block scoring"));
  RowNormKernel<<<dim3(p.batch, p.n_kv_heads), 256, 0, stream>>>(p, chunks, block_rows, row_stats,
                                                                 row_norm);
  SQZ_RETURN_IF_ERROR(LaunchStatus("SqueezeSelect: block normalisers"));
  BlockScoreKernel<D, true>
      <<<grid, kThreads, kSmem, stream>>>(p, chunks, block_rows, row_stats, row_norm, probs);
  return LaunchStatus("SqueezeSelect: block probabilities");
}

}  // namespace

int BlockRowsPerToken(int g) { return g <= 1 ? 1 : (g <= 2 ? 2 : (g <= 4 ? 4 : 8)); }

Status LaunchBlockProbabilities(const SqueezeSelectParams& p, int chunks, int block_rows,
                                float2* row_stats, float2* row_norm, float* probs,
                                cudaStream_t stream) {
  if (p.head_dim == 64)
    return Launch<64>(p, chunks, block_rows, row_stats, row_norm, probs, stream);
  if (p.head_dim == 128) {
    return Launch<128>(p, chunks, block_rows, row_stats, row_norm, probs, stream);
  }
  return UnsupportedError("SqueezeSelect",
                          "head_dim " + std::to_string(p.head_dim) + " is not compiled (64, 128)");
}

}  // namespace sqz::cuda::internal
