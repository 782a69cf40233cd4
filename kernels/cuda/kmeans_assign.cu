// The fused assignment of the batched k-means (kmeans.h): a bf16 mma.sync GEMM of unit points
// against unit centroids with a running argmax per point; the score matrix never reaches memory.
#include <cuda_bf16.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kmeans_internal.cuh"
#include "kernels/cuda/ptx.cuh"

namespace sqz::cuda::internal {
namespace {

using bf16 = __nv_bfloat16;

// Fused assignment: bf16 mma.sync GEMM of unit points against unit centroids with a running argmax.
// A block owns kBlockRows points of one head (kRowsPerWarp per warp, kept as A fragments in
// registers for the whole launch) and streams the centroids through shared memory in tiles of
// kTileCols rows, two stages deep (cp.async). Rows are padded by 16 bytes so that ldmatrix reads
// are free of bank conflicts.
constexpr int kAssignWarps = 8;
constexpr int kRowsPerWarp = 32;  // two m16 tiles
constexpr int kBlockRows = kAssignWarps * kRowsPerWarp;
constexpr int kTileCols = 64;

template <int D>
__host__ __device__ constexpr int SmemStride() {
  return D + 8;
}
template <int D>
constexpr size_t AssignSmemBytes() {
  return 2 * kTileCols * SmemStride<D>() * sizeof(bf16);
}

template <int D, AssignMode kMode>
__global__ void __launch_bounds__(kAssignWarps * 32, 2) AssignKernel(AssignArgs args) {
  const int h = blockIdx.y;
  if (args.active != nullptr && args.active[h] == 0) return;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* tiles = reinterpret_cast<bf16*>(smem_raw);  // [2][kTileCols][SmemStride<D>()]
  constexpr int kS = SmemStride<D>();
  constexpr int kKSteps = D / 16;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t n = args.n;
  const bf16* xh = args.xn + static_cast<int64_t>(h) * n * D;
  const bf16* ch = args.cent + static_cast<int64_t>(h) * args.cent_head_stride;
  const int64_t row_base = static_cast<int64_t>(blockIdx.x) * kBlockRows + warp * kRowsPerWarp;

  auto load_tile = [&](int64_t tile, int stage) {
    constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
    bf16* dst = tiles + stage * kTileCols * kS;
    for (int q = threadIdx.x; q < kTileCols * kChunksPerRow; q += blockDim.x) {
      const int row = q / kChunksPerRow, chunk = q % kChunksPerRow;
      const int64_t c = tile * kTileCols + row;
      const bool valid = c < args.kc;
      const bf16* src = valid ? ch + c * D + chunk * 8 : ch;
      CpAsync16(dst + row * kS + chunk * 8, src, valid);
    }
  };

  const int64_t n_tiles = (args.kc + kTileCols - 1) / kTileCols;
  load_tile(0, 0);
  CpAsyncCommit();

  // A fragments of the warp's two m16 tiles (rows past n repeat the last row; never written).
  uint32_t a[2][kKSteps][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int64_t r0 = min(row_base + mt * 16 + g, n - 1);
    const int64_t r1 = min(row_base + mt * 16 + g + 8, n - 1);
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      const uint32_t* p0 = reinterpret_cast<const uint32_t*>(xh + r0 * D + ks * 16 + 2 * t);
      const uint32_t* p1 = reinterpret_cast<const uint32_t*>(xh + r1 * D + ks * 16 + 2 * t);
      a[mt][ks][0] = p0[0];
      a[mt][ks][1] = p1[0];
      a[mt][ks][2] = p0[4];
      a[mt][ks][3] = p1[4];
    }
  }

  float best[2][2];
  int32_t idx[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    best[mt][0] = best[mt][1] = -INFINITY;
    idx[mt][0] = idx[mt][1] = 0;
  }

  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    if (tile + 1 < n_tiles) {
      load_tile(tile + 1, (tile + 1) & 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const bf16* st = tiles + (tile & 1) * kTileCols * kS;
#pragma unroll
    for (int ng = 0; ng < kTileCols / 32; ++ng) {
      float acc[2][4][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nb][e] = 0.0f;
#pragma unroll
      for (int ks2 = 0; ks2 < D / 32; ++ks2) {
#pragma unroll
        for (int nb = 0; nb < 4; ++nb) {
          uint32_t b[4];
          LdMatrixX4(b, st + (ng * 32 + nb * 8 + (lane % 8)) * kS + ks2 * 32 + (lane / 8) * 8);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            MmaBf16(acc[mt][nb], a[mt][2 * ks2], b[0], b[1]);
            MmaBf16(acc[mt][nb], a[mt][2 * ks2 + 1], b[2], b[3]);
          }
        }
      }
      // Epilogue: the block's 8 columns per row of this thread are first reduced to a maximum
      // (one FMNMX each); the column is searched only when that maximum beats the running best,
      // which becomes rare after the first tiles. Columns past kc exist only in the last tile.
      const int64_t col0 = tile * kTileCols + ng * 32 + 2 * t;
      if (tile == n_tiles - 1) {
#pragma unroll
        for (int nb = 0; nb < 4; ++nb) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (col0 + nb * 8 + e >= args.kc) {
#pragma unroll
              for (int mt = 0; mt < 2; ++mt) acc[mt][nb][e] = acc[mt][nb][e + 2] = -INFINITY;
            }
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float m = acc[mt][0][2 * half];
#pragma unroll
          for (int nb = 0; nb < 4; ++nb) {
            m = fmaxf(m, fmaxf(acc[mt][nb][2 * half], acc[mt][nb][2 * half + 1]));
          }
          if (m > best[mt][half]) {
            int32_t j = -1;
#pragma unroll
            for (int nb = 0; nb < 4; ++nb) {
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                if (j < 0 && acc[mt][nb][2 * half + e] == m) j = nb * 8 + e;
              }
            }
            best[mt][half] = m;
            idx[mt][half] = static_cast<int32_t>(col0 + j);
          }
        }
      }
    }
    __syncthreads();  // the stage is refilled by the next iteration's prefetch
  }

  // The four threads of a quad hold interleaved columns of the same rows: lower id wins ties.
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best[mt][half], off);
        const int32_t oi = __shfl_xor_sync(0xffffffffu, idx[mt][half], off);
        if (ob > best[mt][half] || (ob == best[mt][half] && oi < idx[mt][half])) {
          best[mt][half] = ob;
          idx[mt][half] = oi;
        }
      }
      const int64_t row = row_base + mt * 16 + half * 8 + g;
      if (t != 0 || row >= n) continue;
      const int64_t p = static_cast<int64_t>(h) * n + row;
      if constexpr (kMode == AssignMode::kAssign) {
        args.prev[p] = args.assign[p];
        args.assign[p] = idx[mt][half];
        args.sim[p] = best[mt][half];
        atomicAdd(&args.counts[static_cast<int64_t>(h) * args.kc + idx[mt][half]], 1);
      } else if constexpr (kMode == AssignMode::kNearest) {
        args.assign[p] = idx[mt][half];
        args.sim[p] = best[mt][half];
      } else {
        args.dist[p] = fminf(args.dist[p], fmaxf(0.0f, 1.0f - best[mt][half]));
      }
    }
  }
}

template <int D, AssignMode kMode>
Status LaunchAssign(const AssignArgs& args, int heads, cudaStream_t stream, std::string_view op) {
  const size_t smem = AssignSmemBytes<D>();
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(AssignKernel<D, kMode>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)),
      op);
  const dim3 grid(static_cast<unsigned>((args.n + kBlockRows - 1) / kBlockRows), heads);
  AssignKernel<D, kMode><<<grid, kAssignWarps * 32, smem, stream>>>(args);
  return LaunchStatus(op);
}

template <AssignMode kMode>
Status Dispatch(int d, const AssignArgs& args, int heads, cudaStream_t stream,
                std::string_view op) {
  if (d == 128) return LaunchAssign<128, kMode>(args, heads, stream, op);
  if (d == 64) return LaunchAssign<64, kMode>(args, heads, stream, op);
  return UnsupportedError(op, "head_dim " + std::to_string(d) + " is not compiled");
}

}  // namespace

Status LaunchAssignment(AssignMode mode, int d, const AssignArgs& args, int heads,
                        cudaStream_t stream, std::string_view op) {
  switch (mode) {
    case AssignMode::kAssign:
      return Dispatch<AssignMode::kAssign>(d, args, heads, stream, op);
    case AssignMode::kSeedDistance:
      return Dispatch<AssignMode::kSeedDistance>(d, args, heads, stream, op);
    case AssignMode::kNearest:
      return Dispatch<AssignMode::kNearest>(d, args, heads, stream, op);
  }
  return UnsupportedError(op, "unknown assignment mode");
}

}  // namespace sqz::cuda::internal
