#include <string>

#include "engine/cuda/context_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/warp_row_attention.cuh"

namespace sqz::cuda_ctx {
namespace {

using cuda::internal::ToFloat;
using cuda::internal::WarpRowAttention;

template <typename T>
__global__ void GatherQueryRowsKernel(const T* __restrict__ src, int64_t src_stride,
                                      const int32_t* __restrict__ rows, int n, int width,
                                      __nv_bfloat16* __restrict__ dst) {
  const int j = blockIdx.y;
  if (j >= n) return;
  const T* s = src + static_cast<int64_t>(rows[j]) * src_stride;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < width; c += gridDim.x * blockDim.x) {
    dst[static_cast<int64_t>(j) * width + c] = __float2bfloat16(ToFloat(s[c]));
  }
}

__global__ void ScatterSelectionKernel(cuda::SqueezeSelection compact, int compact_max,
                                       const int32_t* __restrict__ rows, int kv_heads,
                                       cuda::SqueezeSelection full, int full_max) {
  const int j = blockIdx.x, h = blockIdx.y;
  const int64_t ci = static_cast<int64_t>(j) * kv_heads + h;
  const int64_t fi = static_cast<int64_t>(rows[j]) * kv_heads + h;
  const int ns = compact.num_segments[ci];
  for (int s = threadIdx.x; s < ns; s += blockDim.x) {
    full.segments[fi * full_max + s] = compact.segments[ci * compact_max + s];
  }
  if (threadIdx.x == 0) {
    full.num_segments[fi] = ns;
    full.selected_len[fi] = compact.selected_len[ci];
  }
}

__global__ void InitDenseSelectionKernel(const int32_t* __restrict__ ctx_len, int n, int kv_heads,
                                         cuda::SqueezeSelection full, int full_max) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(n) * kv_heads) return;
  const int32_t len = ctx_len[i / kv_heads];
  full.num_segments[i] = len > 0 ? 1 : 0;
  full.selected_len[i] = len;
  full.segments[i * full_max] = make_int2(len, 0);
}

constexpr int kWarps = 4;

// One warp per (row, q head) (WarpRowAttention): the context's rows (all, or the selection's
// segments), then the row's own paged tokens.
template <typename T, int kPer>
__global__ void __launch_bounds__(kWarps * 32)
    ContextAttentionKernel(ContextAttentionParams<T> p, T* __restrict__ out, int64_t out_stride) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (warp >= p.rows * p.q_heads) return;
  const int64_t r = warp / p.q_heads;
  const int h = static_cast<int>(warp - r * p.q_heads);
  const int kvh = h / (p.q_heads / p.kv_heads);
  const int d = p.head_dim;
  WarpRowAttention<kPer> a(p.q + r * p.q_stride + static_cast<int64_t>(h) * d, d, p.scale);
  const int slot = p.row_slot != nullptr ? p.row_slot[r] : -1;
  if (slot >= 0) {
    const int64_t n = p.ctx_len[slot];
    const T* kb = p.ctx_k[slot] + static_cast<int64_t>(kvh) * n * d;
    const T* vb = p.ctx_v[slot] + static_cast<int64_t>(kvh) * n * d;
    const int sel = p.row_sel != nullptr ? p.row_sel[r] : -1;
    int64_t attended = n;
    if (sel < 0) {
      for (int64_t j = 0; j < n; ++j) a.Attend(kb + j * d, vb + j * d);
    } else {
      const int64_t i = static_cast<int64_t>(sel) * p.kv_heads + kvh;
      const int ns = p.sparse.num_segments[i];
      int64_t key = 0;
      for (int s = 0; s < ns; ++s) {
        const int2 seg = p.sparse.segments[i * p.sparse.max_segments + s];
        for (; key < seg.x; ++key) {
          int64_t row = key + seg.y;
          row = row < 0 ? 0 : (row >= n ? n - 1 : row);
          a.Attend(kb + row * d, vb + row * d);
        }
      }
      attended = key;
    }
    // One count per (row, kv head): the group's first query head's warp.
    if (p.context_keys != nullptr && h % (p.q_heads / p.kv_heads) == 0 && (threadIdx.x & 31) == 0) {
      atomicAdd(p.context_keys + r, static_cast<unsigned long long>(attended));
    }
  }
  const int64_t own = p.row_keys[r];
  const int32_t* table = p.block_ids + p.row_table[r];
  for (int64_t j = 0; j < own; ++j) {
    const int64_t block = table[j / 16];
    const int64_t base = ((block * p.kv_heads + kvh) * 16 + j % 16) * d;
    a.Attend(p.pool_k + base, p.pool_v + base);
  }
  a.Write(out + r * out_stride + static_cast<int64_t>(h) * d);
}

}  // namespace

template <typename T>
Status GatherQueryRows(const T* src, int64_t src_stride, const int32_t* rows, int n, int width,
                       __nv_bfloat16* dst, cudaStream_t stream) {
  if (n <= 0) return OkStatus();
  const dim3 grid((width + 255) / 256, n);
  GatherQueryRowsKernel<T><<<grid, 256, 0, stream>>>(src, src_stride, rows, n, width, dst);
  return cuda::CudaStatus(cudaGetLastError(), "GatherQueryRows");
}

Status ScatterSelection(const cuda::SqueezeSelection& compact, int compact_max_segments,
                        const int32_t* rows, int n, int kv_heads,
                        const cuda::SqueezeSelection& full, int full_max_segments,
                        cudaStream_t stream) {
  if (n <= 0) return OkStatus();
  if (compact_max_segments > full_max_segments) {
    return InvalidArgumentError("ScatterSelection: " + std::to_string(compact_max_segments) +
                                " segments per list do not fit lists of " +
                                std::to_string(full_max_segments));
  }
  ScatterSelectionKernel<<<dim3(n, kv_heads), 128, 0, stream>>>(compact, compact_max_segments, rows,
                                                                kv_heads, full, full_max_segments);
  return cuda::CudaStatus(cudaGetLastError(), "ScatterSelection");
}

Status InitDenseSelection(const int32_t* ctx_len, int n, int kv_heads,
                          const cuda::SqueezeSelection& full, int full_max_segments,
                          cudaStream_t stream) {
  if (n <= 0) return OkStatus();
  const int64_t total = static_cast<int64_t>(n) * kv_heads;
  InitDenseSelectionKernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
      ctx_len, n, kv_heads, full, full_max_segments);
  return cuda::CudaStatus(cudaGetLastError(), "InitDenseSelection");
}

template <typename T>
Status ContextAttentionSimple(const ContextAttentionParams<T>& p, T* out, int64_t out_stride,
                              cudaStream_t stream) {
  if (p.rows == 0) return OkStatus();
  if (p.head_dim < 1 || p.head_dim > 256 || p.kv_heads < 1 || p.q_heads % p.kv_heads != 0) {
    return InvalidArgumentError("ContextAttentionSimple: head_dim " + std::to_string(p.head_dim) +
                                " (1..256) or heads " + std::to_string(p.q_heads) + "/" +
                                std::to_string(p.kv_heads));
  }
  const int64_t warps = p.rows * p.q_heads;
  const unsigned blocks = static_cast<unsigned>((warps + kWarps - 1) / kWarps);
  const int per = (p.head_dim + 31) / 32;
  if (per <= 1) {
    ContextAttentionKernel<T, 1><<<blocks, kWarps * 32, 0, stream>>>(p, out, out_stride);
  } else if (per <= 2) {
    ContextAttentionKernel<T, 2><<<blocks, kWarps * 32, 0, stream>>>(p, out, out_stride);
  } else if (per <= 4) {
    ContextAttentionKernel<T, 4><<<blocks, kWarps * 32, 0, stream>>>(p, out, out_stride);
  } else {
    ContextAttentionKernel<T, 8><<<blocks, kWarps * 32, 0, stream>>>(p, out, out_stride);
  }
  return cuda::CudaStatus(cudaGetLastError(), "ContextAttentionSimple");
}

template Status GatherQueryRows<float>(const float*, int64_t, const int32_t*, int, int,
                                       __nv_bfloat16*, cudaStream_t);
template Status GatherQueryRows<__nv_bfloat16>(const __nv_bfloat16*, int64_t, const int32_t*, int,
                                               int, __nv_bfloat16*, cudaStream_t);
template Status ContextAttentionSimple<float>(const ContextAttentionParams<float>&, float*, int64_t,
                                              cudaStream_t);
template Status ContextAttentionSimple<__nv_bfloat16>(const ContextAttentionParams<__nv_bfloat16>&,
                                                      __nv_bfloat16*, int64_t, cudaStream_t);

}  // namespace sqz::cuda_ctx
