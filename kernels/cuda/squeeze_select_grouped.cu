#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/sparse_prefill_select.h"
#include "kernels/cuda/squeeze_select_common.cuh"
#include "kernels/cuda/squeeze_select_grouped.h"

namespace sqz::cuda::internal {
namespace {

constexpr int kThreads = 256;  // 8 warps; warp w takes items [32 w, 32 w + 32) of every tile
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = kSelectChunk;
constexpr int kItemsPerWarp = kChunk / kWarps;
constexpr int kSRow = kChunk + 8;  // floats per staged score row (8 of padding: float2 stores of
                                   // the 8 fragment rows of a half-warp hit distinct banks)

// kRows = kGroupedScoreSmallRows (one tile): the staged scores reuse the centroids' space once
// every warp has its MMAs done, so the block is 75 KB (three per SM) instead of 105 KB (two).
template <int kRows>
constexpr bool kStageInCentroids = kRows <= 16;

template <int D, int kRows>
constexpr size_t SmemBytes() {
  static_assert(!kStageInCentroids<kRows> ||
                16 * kSRow * 4 <= static_cast<size_t>(kChunk) * (D + 8) * 2);
  return static_cast<size_t>(kChunk + kRows) * (D + 8) * 2 +
         (kStageInCentroids<kRows> ? 0 : 16 * kSRow * 4) + kChunk * 4;
}

// One block per (sub-group of up to kRows / g requests of one group, chunk of kChunk centroids,
// kv head h). Row rho of the block is request r0 + rho / g, query head rho % g of h's group.
// The block copies the chunk's centroids and all its rows' queries into shared memory with
// cp.async (zero past the items and the rows), then works through the m16 row tiles in turn: each
// warp computes S = Q C^T of the tile for its 32 items with mma.m16n8k16 (bf16 in, fp32
// accumulate; the same fragments and k order as the per-request ScoreKernel, so each row's
// scores are the same bits), stages the tile's scores in shared memory, and the block writes them
// and each row's chunk stats (ChunkRowStats, as ScoreKernel) to the workspace.
//   scores: [batch][n_kv_heads][g][max_clusters], stats: [batch][n_kv_heads][g][chunks]
// grid: (num_groups * blocks_per_group, chunks, n_kv_heads), sub-groups of a group adjacent;
// kThreads threads; SmemBytes<D>() dynamic shared memory.
template <int D, int kRows>
__global__ void __launch_bounds__(kThreads, kStageInCentroids<kRows> ? 3 : 2)
    GroupedScoreKernel(SqueezeSelectParams p, int chunks, int per_block, int blocks_per_group,
                       float* scores, float2* stats) {
  internal::AllowDependentLaunch();  // the selection after it may be scheduled (it waits)
  constexpr int kRow = D + 8;  // bf16 per smem row (16 bytes of padding: conflict-free ldmatrix)
  constexpr int kPieces = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* c_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);    // [kChunk][kRow]
  __nv_bfloat16* q_s = c_s + kChunk * kRow;                  // [kRows][kRow]
  // [16][kSRow] one tile's scores (over c_s when kStageInCentroids: a single tile).
  auto* s_s = kStageInCentroids<kRows> ? reinterpret_cast<float*>(c_s)
                                       : reinterpret_cast<float*>(q_s + kRows * kRow);
  float* w_s = kStageInCentroids<kRows> ? reinterpret_cast<float*>(q_s + kRows * kRow)
                                        : s_s + 16 * kSRow;  // [kChunk] weights, 0: no item
  const int group = blockIdx.x / blocks_per_group, sub = blockIdx.x % blocks_per_group;
  const int chunk = blockIdx.y, h = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = p.n_q_heads / p.n_kv_heads;
  const int first = min(max(p.group_starts[group], 0), p.batch);
  const int end = min(max(p.group_starts[group + 1], first), p.batch);
  const int size = min(end - first, p.max_group_size);
  const int r0 = first + sub * per_block;
  const int nr = min(per_block, size - sub * per_block);
  if (nr <= 0) return;  // the whole block: no barrier is skipped by part of it
  const int rows = nr * g, tiles = (rows + 15) / 16;
  const SqueezeLayerView v = p.views[r0];  // the group's context (its views agree)
  const int n = max(0, min(v.num_clusters, p.max_clusters));
  const int base = chunk * kChunk;
  const int n_here = n - base;  // items of this chunk that exist (may be <= 0)
  const int32_t* counts = v.counts + static_cast<int64_t>(h) * v.num_clusters;
  const __nv_bfloat16* cents = v.centroids + static_cast<int64_t>(h) * v.num_clusters * D;

  for (int c = tid; c < kChunk * kPieces; c += kThreads) {
    const int row = c / kPieces, col = (c % kPieces) * 8;
    const bool valid = row < n_here;
    CpAsync16(c_s + row * kRow + col,
              valid ? cents + static_cast<int64_t>(base + row) * D + col : p.q, valid);
  }
  for (int c = tid; c < tiles * 16 * kPieces; c += kThreads) {
    const int row = c / kPieces, col = (c % kPieces) * 8;
    const bool valid = row < rows;
    const int64_t r = r0 + row / g;
    const int j = row % g;
    CpAsync16(q_s + row * kRow + col, valid ? p.q + r * p.q_stride + (h * g + j) * D + col : p.q,
              valid);
  }
  CpAsyncCommit();
  // The weights while the copies are in flight.
  for (int it = tid; it < kChunk; it += kThreads) {
    w_s[it] = it < n_here ? static_cast<float>(counts[base + it]) : 0.0f;
  }
  CpAsyncWait<0>();
  __syncthreads();

  const int gr = lane >> 2, t4 = lane & 3;  // fragment row and column pair
  for (int tile = 0; tile < tiles; ++tile) {
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      LdMatrixX4(qf[kc], q_s + (tile * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRow + kc * 16 +
                             (lane >> 4) * 8);
    }
    float s[kItemsPerWarp / 8][4];
#pragma unroll
    for (int nt = 0; nt < kItemsPerWarp / 8; ++nt) {
      const int c0 = warp * kItemsPerWarp + nt * 8;
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < D / 16; kc += 2) {
        uint32_t b[4];
        LdMatrixX4(b, c_s + (c0 + (lane & 7)) * kRow + kc * 16 + (lane >> 3) * 8);
        MmaBf16(s[nt], qf[kc], b[0], b[1]);
        MmaBf16(s[nt], qf[kc + 1], b[2], b[3]);
      }
    }
    if constexpr (kStageInCentroids<kRows>) __syncthreads();  // every warp is done with c_s
#pragma unroll
    for (int nt = 0; nt < kItemsPerWarp / 8; ++nt) {
      const int it = warp * kItemsPerWarp + nt * 8 + 2 * t4;
      const bool ok0 = it < n_here, ok1 = it + 1 < n_here;
      *reinterpret_cast<float2*>(s_s + gr * kSRow + it) =
          make_float2(ok0 ? s[nt][0] * p.scale : -INFINITY, ok1 ? s[nt][1] * p.scale : -INFINITY);
      *reinterpret_cast<float2*>(s_s + (gr + 8) * kSRow + it) =
          make_float2(ok0 ? s[nt][2] * p.scale : -INFINITY, ok1 ? s[nt][3] * p.scale : -INFINITY);
    }
    __syncthreads();  // the tile's scores are staged
    const int tile_rows = min(16, rows - tile * 16);
    for (int i = warp; i < tile_rows; i += kWarps) {
      const int row = tile * 16 + i;
      const int64_t unit = static_cast<int64_t>(r0 + row / g) * p.n_kv_heads + h;
      const int64_t head_row = unit * g + row % g;
      const float* srow = s_s + i * kSRow;
      const float2 st = ChunkRowStats<kChunk>(srow, w_s);
      if (lane == 0) stats[head_row * chunks + chunk] = st;
      float* out = scores + head_row * p.max_clusters + base;
      for (int it = lane; it < kChunk && base + it < p.max_clusters; it += 32) out[it] = srow[it];
    }
    __syncthreads();  // s_s is rewritten by the next tile
  }
}

template <int D, int kRows>
Status Launch(const SqueezeSelectParams& p, int chunks, float* scores, float2* stats,
              cudaStream_t stream) {
  constexpr size_t kSmem = SmemBytes<D, kRows>();
  const int g = p.n_q_heads / p.n_kv_heads;
  const int per_block = GroupedScoreRequests(g, kRows);
  const int blocks_per_group = (p.max_group_size + per_block - 1) / per_block;
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(GroupedScoreKernel<D, kRows>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)),
      "SqueezeSelect: cudaFuncSetAttribute");
  const dim3 grid(static_cast<unsigned>(p.num_groups) * blocks_per_group, chunks, p.n_kv_heads);
  GroupedScoreKernel<D, kRows>
      <<<grid, kThreads, kSmem, stream>>>(p, chunks, per_block, blocks_per_group, scores, stats);
  return LaunchStatus("SqueezeSelect: grouped scoring");
}

template <int D>
Status LaunchRows(const SqueezeSelectParams& p, int chunks, float* scores, float2* stats,
                  cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.max_group_size) * (p.n_q_heads / p.n_kv_heads);
  if (rows <= kGroupedScoreSmallRows) {
    return Launch<D, kGroupedScoreSmallRows>(p, chunks, scores, stats, stream);
  }
  return Launch<D, kGroupedScoreRows>(p, chunks, scores, stats, stream);
}

}  // namespace

Status LaunchGroupedScore(const SqueezeSelectParams& p, int chunks, float* scores, float2* stats,
                          cudaStream_t stream) {
  if (p.head_dim == 64) return LaunchRows<64>(p, chunks, scores, stats, stream);
  if (p.head_dim == 128) return LaunchRows<128>(p, chunks, scores, stats, stream);
  return UnsupportedError("SqueezeSelect",
                          "head_dim " + std::to_string(p.head_dim) + " is not compiled (64, 128)");
}

}  // namespace sqz::cuda::internal
