#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_tile.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/sparse_prefill_attention.h"

namespace sqz::cuda {
namespace {

constexpr int kBc = 64;  // keys per tile
constexpr int kThreads = 128;
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// (token, head) rows per CTA with kMt m16 tiles per warp (4 warps). Two tiles per warp (128 rows)
// let every K or V fragment read from shared memory feed two mma (flash_tile.cuh, "Wide tiles"),
// for blocks that fill them; shorter blocks take one tile per warp (64 rows).
__host__ __device__ constexpr int RowsPerCta(int mt) { return 4 * mt * 16; }

template <int D>
constexpr size_t SmemBytes(int rows_per_cta) {
  return internal::FlashTileSmemBytes(rows_per_cta, kBc, D + kPad);
}

// m16 tiles per warp for params p: two when a block has at least 128 (token, head) rows.
int TilesPerWarp(const SparsePrefillParams& p) {
  const int g = p.n_kv_heads > 0 ? p.n_q_heads / p.n_kv_heads : 0;
  return static_cast<int64_t>(std::max(p.max_block_tokens, 0)) * g >= RowsPerCta(2) ? 2 : 1;
}
int RowTile(const SparsePrefillParams& p) { return RowsPerCta(TilesPerWarp(p)); }

__device__ __forceinline__ int BlockTokens(const SparsePrefillParams& p, int b) {
  return max(0, min(p.block_starts[b + 1] - p.block_starts[b], p.max_block_tokens));
}
__device__ __forceinline__ int SelectedLen(const SparsePrefillParams& p, int64_t unit) {
  if (p.ctx_len[unit / p.n_kv_heads] <= 0) return 0;
  return static_cast<int>(
      min(static_cast<int64_t>(max(p.segments.selected_len[unit], 0)), p.max_selected));
}

// rows[unit][j] = the context row of selected key j (j < SelectedLen), clamped into the context.
// grid (num_blocks, n_kv_heads); one warp per segment.
__global__ void __launch_bounds__(256) ExpandRowsKernel(SparsePrefillParams p, int32_t* rows) {
  const int b = blockIdx.x, h = blockIdx.y;
  const int64_t unit = static_cast<int64_t>(b) * p.n_kv_heads + h;
  const int len = SelectedLen(p, unit);
  const int ctx = p.ctx_len[b];
  const int n_segs = min(max(p.segments.num_segments[unit], 0), p.segments.max_segments);
  const int2* segs = p.segments.segments + unit * p.segments.max_segments;
  int32_t* out = rows + unit * p.max_selected;
  if (p.context_keys != nullptr && threadIdx.x == 0) {
    atomicAdd(p.context_keys,
              static_cast<unsigned long long>(len) * static_cast<unsigned>(BlockTokens(p, b)));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int s = warp; s < n_segs; s += warps) {
    const int begin = s == 0 ? 0 : segs[s - 1].x;
    const int2 seg = segs[s];
    const int end = min(seg.x, len);
    for (int j = max(begin, 0) + lane; j < end; j += 32) {
      out[j] = min(max(j + seg.y, 0), ctx - 1);
    }
  }
}

// Key splits (plan.splits > 1): split i of a (block, kv head, row tile) takes selected keys
// [i * split_len, (i + 1) * split_len) and leaves its partial for row r of the block at
// part_o[((unit * splits + i) * max_rows + r) * D] (normalised) and part_ml[...] (m, l).
struct Splits {
  int count = 1;
  bool blocks_inner = false;  // grid (row tiles * splits, num_blocks, n_kv_heads); else y/z swapped
  int split_len = 0;
  int max_rows = 0;
  float* part_o = nullptr;
  float2* part_ml = nullptr;
};

template <typename TOut>
__device__ __forceinline__ void StorePair(TOut* p, float a, float b) {
  if constexpr (std::is_same_v<TOut, float>) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  }
}

// The (block, kv head, key split, row tile) of a CTA, from its grid position
// (grid: (row tiles * splits, n_kv_heads, num_blocks), or (..., num_blocks, n_kv_heads) when
// sp.blocks_inner), with rows_per_cta rows per tile. Rows of a block: (token t, head j) -> t * g + j;
// this CTA's are [r0, min(r0 + rows_per_cta, n_rows)).
struct CtaRows {
  int split, h, b, g, n_rows, r0;
  int64_t unit, first_token;
  __device__ CtaRows(const SparsePrefillParams& p, const Splits& sp, int rows_per_cta)
      : split(blockIdx.x % sp.count),
        h(sp.blocks_inner ? blockIdx.z : blockIdx.y),
        b(sp.blocks_inner ? blockIdx.y : blockIdx.z),
        g(p.n_q_heads / p.n_kv_heads),
        n_rows(BlockTokens(p, b) * g),
        r0(static_cast<int>(blockIdx.x / sp.count) * rows_per_cta),
        unit(static_cast<int64_t>(b) * p.n_kv_heads + h),
        first_token(p.block_starts[b]) {}
};

// What a CTA attends to: the keys [k_first, len) of its split of the (block,
// kv head) list, and their gather through the row map one tile of kBc keys at a time: Fetch(t)
// reads the rows of tile t into registers (a tile ahead, so their latency hides behind a tile's
// math), Load copies the fetched rows' K and V into shared memory (zero past the keys).
template <int D>
struct KeyGather {
  static constexpr int kChunks = D / 8;                      // 16-byte pieces per row
  static constexpr int kRowsPer = kBc * kChunks / kThreads;  // K/V rows each thread copies a tile
  static constexpr int kRowStep = kThreads / kChunks;
  int k_first = 0, len = 0, n_tiles = 0;
  int32_t ctx_rows = 0;
  const __nv_bfloat16* k_base = nullptr;
  const __nv_bfloat16* v_base = nullptr;
  const __nv_bfloat16* any = nullptr;  // a mapped address for zero-filling copies
  const int32_t* rmap = nullptr;
  int my_row = 0, my_col = 0;
  int32_t next_rows[kRowsPer];

  __device__ KeyGather(const SparsePrefillParams& p, const Splits& sp, const int32_t* rows_map,
                       int64_t unit, int b, int h, int split) {
    const int sel_len = SelectedLen(p, unit);
    k_first = sp.count > 1 ? min(split * sp.split_len, sel_len) : 0;
    len = sp.count > 1 ? min(k_first + sp.split_len, sel_len) : sel_len;
    const int64_t ctx = p.ctx_len[b];
    ctx_rows = static_cast<int32_t>(ctx);
    k_base = len > 0 ? p.ctx_k[b] + h * ctx * D : nullptr;
    v_base = len > 0 ? p.ctx_v[b] + h * ctx * D : nullptr;
    any = p.q;
    rmap = rows_map + unit * p.max_selected;
    n_tiles = (len - k_first + kBc - 1) / kBc;
    my_row = threadIdx.x / kChunks;
    my_col = (threadIdx.x % kChunks) * 8;
  }
  __device__ __forceinline__ void Fetch(int tile) {
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
      const int j = k_first + tile * kBc + my_row + i * kRowStep;
      // Clamped again: a list whose last end falls short of selected_len leaves keys unwritten.
      next_rows[i] = tile < n_tiles && j < len ? min(max(rmap[j], 0), ctx_rows - 1) : -1;
    }
  }
  // k_dst, v_dst: a stage's [kBc][kRow] K and V tiles.
  template <int kRow>
  __device__ __forceinline__ void Load(__nv_bfloat16* k_dst, __nv_bfloat16* v_dst) const {
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
      const int r = my_row + i * kRowStep;
      const bool valid = next_rows[i] >= 0;
      const int64_t off = static_cast<int64_t>(valid ? next_rows[i] : 0) * D + my_col;
      internal::CpAsync16(k_dst + r * kRow + my_col, valid ? k_base + off : any, valid);
      internal::CpAsync16(v_dst + r * kRow + my_col, valid ? v_base + off : any, valid);
    }
  }
};

// Copies the CTA's rows [r0, r0 + rows) of block b's (token, kv head h's query head) pairs into
// q_s ([rows][D + kPad]; zero past the block's n_rows).
template <int D>
__device__ __forceinline__ void LoadQRows(const SparsePrefillParams& p, int b, int h, int r0,
                                          int rows, int n_rows, __nv_bfloat16* q_s) {
  constexpr int kChunks = D / 8;
  const int g = p.n_q_heads / p.n_kv_heads;
  const int64_t first_token = p.block_starts[b];
#pragma unroll 1
  for (int c = threadIdx.x; c < rows * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const int row = r0 + r;
    const bool valid = row < n_rows;
    const __nv_bfloat16* src =
        valid ? p.q + (first_token + row / g) * p.q_stride + (h * g + row % g) * D + col : p.q;
    internal::CpAsync16(q_s + r * (D + kPad) + col, src, valid);
  }
}

// One CTA per (kMt * 64 (token, head) rows of a block, key split, kv head, block): warp w owns
// rows kMt * 16 * w .. + kMt * 16 - 1 (kMt m16 tiles). Scores stay raw and the online softmax
// folds the scale into its exponentials (flash_tile.cuh, "Wide tiles"). grid (row tiles * splits,
// n_kv_heads, num_blocks) with row tiles of RowsPerCta(kMt).
template <int D, int kMt, typename TOut>
__global__ void __launch_bounds__(kThreads, 2)
    SparsePrefillKernel(SparsePrefillParams p, Splits sp, const int32_t* __restrict__ rows_map,
                        TOut* __restrict__ out, int64_t out_stride,
                        cpu::AttentionPartial* __restrict__ stats) {
  constexpr int kRow = D + kPad;
  constexpr int kRows = RowsPerCta(kMt);
  constexpr bool kQInRegs = D <= 64;
  // Keys per softmax step: with two tiles per warp, head_dim 128 takes a tile in two halves so
  // that the scores fit beside the accumulators without spilling (as the dense wide kernel).
  constexpr int kStep = D <= 64 || kMt == 1 ? kBc : kBc / 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const internal::FlashSmem<kRows, kBc, kRow> sm(smem_raw);
  __nv_bfloat16* q_s = sm.q;  // [kRows][kRow]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gr = lane >> 2, t4 = lane & 3;
  const CtaRows cta(p, sp, kRows);
  if (cta.r0 >= cta.n_rows) return;
  const int split = cta.split, h = cta.h, b = cta.b, g = cta.g, n_rows = cta.n_rows, r0 = cta.r0;
  const int64_t unit = cta.unit, first_token = cta.first_token;
  KeyGather<D> keys(p, sp, rows_map, unit, b, h, split);  // this CTA's keys: [k_first, len)
  const int k_first = keys.k_first, len = keys.len, n_tiles = keys.n_tiles;
  const int w0 = r0 + warp * (kMt * 16);  // the warp's first row

  LoadQRows<D>(p, b, h, r0, kRows, n_rows, q_s);
  keys.Fetch(0);
  if (n_tiles > 0) keys.Load<kRow>(sm.k(0), sm.v(0));
  internal::CpAsyncCommit();
  keys.Fetch(1);

  const __nv_bfloat16* q_warp = q_s + warp * (kMt * 16) * kRow;
  uint32_t qf[kQInRegs ? kMt : 1][kQInRegs ? D / 16 : 1][4];
  float o[kMt][D / 8][4];
  float m[kMt][2], l[kMt][2];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  const float scale_log2 = p.scale * kLog2e;
  const bool warp_rows = w0 < n_rows;  // warp-uniform: a warp past the block's rows only loads

  for (int jt = 0; jt < n_tiles; ++jt) {
    const int stage = jt & 1;
    if (jt + 1 < n_tiles) keys.Load<kRow>(sm.k(stage ^ 1), sm.v(stage ^ 1));
    internal::CpAsyncCommit();
    keys.Fetch(jt + 2);
    internal::CpAsyncWait<1>();
    __syncthreads();
    if constexpr (kQInRegs) {
      if (jt == 0) internal::LoadQFragmentsWide<D, kRow, kMt>(q_warp, lane, qf);
    }
    if (warp_rows) {
#pragma unroll
      for (int sub = 0; sub < kBc / kStep; ++sub) {
        const int j0 = k_first + jt * kBc + sub * kStep;
        if (j0 >= len) break;  // warp-uniform
        const __nv_bfloat16* k_step = sm.k(stage) + sub * kStep * kRow;
        float s[kMt][kStep / 8][4];
        if constexpr (kQInRegs) {
          internal::ScoreTileWideRegQ<D, kStep, kRow, kMt>(qf, k_step, lane, s);
        } else {
          internal::ScoreTileWideSmemQ<D, kStep, kRow, kMt>(q_warp, k_step, lane, s);
        }
        if (j0 + kStep > len) {  // the list ends inside this step
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
            for (int ntl = 0; ntl < kStep / 8; ++ntl) {
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                if (j0 + ntl * 8 + 2 * t4 + (e & 1) >= len) s[mt][ntl][e] = -INFINITY;
              }
            }
          }
        }
        internal::OnlineSoftmaxWide(s, scale_log2, m, l, o);
        internal::AccumulatePVWide<D, kStep, kRow, kMt>(s, sm.v(stage) + sub * kStep * kRow, lane,
                                                        o);
      }
    }
    __syncthreads();  // the next iteration's loads overwrite the other stage only after this
  }
  internal::CpAsyncWait<0>();

#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[mt][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int row = w0 + mt * 16 + gr + r * 8;
      if (row >= n_rows) continue;
      if (sp.count > 1) {
        const int64_t at = (unit * sp.count + split) * sp.max_rows + row;
        float* dst = sp.part_o + at * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          *reinterpret_cast<float2*>(dst + dt * 8) =
              make_float2(o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
        }
        if (t4 == 0) sp.part_ml[at] = make_float2(m[mt][r] * kLn2, sum);
      } else {
        const int64_t t = first_token + row / g;
        const int hq = h * g + row % g;
        TOut* dst = out + t * out_stride + hq * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          StorePair(dst + dt * 8, o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
        }
        if (stats && t4 == 0) stats[t * p.n_q_heads + hq] = {m[mt][r] * kLn2, sum};
      }
    }
  }
}

// Merges the splits' partials of each (token, head) row by the log-sum-exp rule into out and
// stats. grid (row tiles of row_tile rows, n_kv_heads, num_blocks); one warp per row, lanes over
// the dims.
template <typename TOut>
__global__ void __launch_bounds__(kThreads)
    MergeSplitsKernel(SparsePrefillParams p, Splits sp, int row_tile, TOut* __restrict__ out,
                      int64_t out_stride, cpu::AttentionPartial* __restrict__ stats) {
  const int h = blockIdx.y, b = blockIdx.z;
  const int g = p.n_q_heads / p.n_kv_heads;
  const int n_rows = BlockTokens(p, b) * g;
  const int64_t unit = static_cast<int64_t>(b) * p.n_kv_heads + h;
  const int lane = threadIdx.x & 31;
  const int d = p.head_dim;
  for (int row = blockIdx.x * row_tile + (threadIdx.x >> 5);
       row < min(n_rows, (blockIdx.x + 1) * row_tile); row += kThreads / 32) {
    float m = -INFINITY;
    for (int i = 0; i < sp.count; ++i) {
      m = fmaxf(m, sp.part_ml[(unit * sp.count + i) * sp.max_rows + row].x);
    }
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // dims lane, lane + 32, ... (d <= 128)
    float l = 0.0f;
    for (int i = 0; i < sp.count && m > -INFINITY; ++i) {
      const int64_t at = (unit * sp.count + i) * sp.max_rows + row;
      const float2 ml = sp.part_ml[at];
      if (ml.y <= 0.0f) continue;
      const float w = expf(ml.x - m) * ml.y;
      l += w;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (lane + 32 * e < d) acc[e] += w * sp.part_o[at * d + lane + 32 * e];
      }
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int64_t t = p.block_starts[b] + row / g;
    const int hq = h * g + row % g;
    TOut* dst = out + t * out_stride + static_cast<int64_t>(hq) * d;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (lane + 32 * e < d) dst[lane + 32 * e] = internal::FromFloat<TOut>(acc[e] * inv);
    }
    if (stats && lane == 0) {
      stats[t * p.n_q_heads + hq] =
          l > 0.0f ? cpu::AttentionPartial{m, l} : cpu::AttentionPartial{};
    }
  }
}

template <int D, typename TOut>
Status Launch(const SparsePrefillParams& p, const SparsePrefillPlan& plan, TOut* out,
              int64_t out_stride, cpu::AttentionPartial* stats, char* workspace,
              cudaStream_t stream) {
  auto* rows = reinterpret_cast<int32_t*>(workspace);
  Splits sp;
  sp.count = plan.splits;
  sp.split_len = static_cast<int>(plan.split_len);
  const int row_tile = RowTile(p);
  sp.max_rows = plan.row_tiles * row_tile;
  if (sp.count > 1) {
    sp.part_o = reinterpret_cast<float*>(workspace + plan.partials_offset);
    sp.part_ml = reinterpret_cast<float2*>(workspace + plan.partials_offset +
                                           static_cast<size_t>(p.num_blocks) * p.n_kv_heads *
                                               sp.count * sp.max_rows * D * 4);
  }
  ExpandRowsKernel<<<dim3(p.num_blocks, p.n_kv_heads), 256, 0, stream>>>(p, rows);
  SQZ_RETURN_IF_ERROR(LaunchStatus("SparsePrefillAttention: rows"));
  auto* kernel =
      TilesPerWarp(p) == 2 ? SparsePrefillKernel<D, 2, TOut> : SparsePrefillKernel<D, 1, TOut>;
  const size_t smem = SmemBytes<D>(row_tile);
  SQZ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem)),
                           "SparsePrefillAttention: cudaFuncSetAttribute");
  sp.blocks_inner = plan.blocks_inner;
  const dim3 grid = plan.blocks_inner
                        ? dim3(plan.row_tiles * sp.count, p.num_blocks, p.n_kv_heads)
                        : dim3(plan.row_tiles * sp.count, p.n_kv_heads, p.num_blocks);
  kernel<<<grid, kThreads, smem, stream>>>(p, sp, rows, out, out_stride, stats);
  SQZ_RETURN_IF_ERROR(LaunchStatus("SparsePrefillAttention"));
  if (sp.count == 1) return OkStatus();
  MergeSplitsKernel<TOut>
      <<<dim3(plan.row_tiles, p.n_kv_heads, p.num_blocks), kThreads, 0, stream>>>(
          p, sp, row_tile, out, out_stride, stats);
  return LaunchStatus("SparsePrefillAttention: merge");
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The plan for a given split count.
SparsePrefillPlan PlanWithSplits(const SparsePrefillParams& p, int splits) {
  SparsePrefillPlan plan;
  const int g = p.n_kv_heads > 0 ? p.n_q_heads / p.n_kv_heads : 0;
  const int64_t rows = static_cast<int64_t>(std::max(p.max_block_tokens, 0)) * g;
  const int row_tile = RowTile(p);
  plan.row_tiles = static_cast<int>((rows + row_tile - 1) / row_tile);
  plan.splits = std::max(splits, 1);
  // A kv head's blocks side by side: 1,318 against 1,363 us for 1,024 Llama-2-shaped tokens over
  // 128K (docs/benchmarks/squeeze_gpu.md, sparse prefill run 4), the same elsewhere.
  plan.blocks_inner = true;
  const int64_t sel = std::max<int64_t>(p.max_selected, 0);
  const int64_t per = (sel + plan.splits - 1) / plan.splits;
  plan.split_len = plan.splits > 1 ? (per + kBc - 1) / kBc * kBc : sel;
  const size_t units = static_cast<size_t>(std::max(p.num_blocks, 0)) * std::max(p.n_kv_heads, 0);
  const size_t map_bytes = units * sel * sizeof(int32_t);
  plan.partials_offset = (map_bytes + 255) / 256 * 256;
  plan.workspace_bytes = map_bytes;
  if (plan.splits > 1) {
    const size_t parts = units * plan.splits * static_cast<size_t>(plan.row_tiles) * row_tile;
    plan.workspace_bytes =
        plan.partials_offset + parts * std::max(p.head_dim, 0) * sizeof(float) + parts * 8;
  }
  return plan;
}

}  // namespace

SparsePrefillPlan PlanSparsePrefill(const SparsePrefillParams& p, int num_sms) {
  int splits = p.num_splits;
  if (splits <= 0) {
    // The most splits that keep the CTAs within one wave of two per SM (the kernel's residency,
    // 87-104 KB of shared memory each), each split >= 1024 keys. A second, partial wave costs
    // about what a full one does: at 64 CTAs on 132 SMs, 4 splits measured 360.9 us against
    // 533.1 for 5 (320 CTAs), at 128 CTAs 2 splits 413.6 against 520.8 for 3, and at 256 CTAs
    // 2 splits 7% slower than 1 (docs/benchmarks/squeeze_gpu.md, sparse prefill run 4).
    const SparsePrefillPlan one = PlanWithSplits(p, 1);
    const int64_t ctas =
        static_cast<int64_t>(one.row_tiles) * std::max(p.n_kv_heads, 1) * std::max(p.num_blocks, 1);
    splits = 1;
    if (num_sms > 0 && ctas < 2 * static_cast<int64_t>(num_sms)) {
      const int64_t want = 2 * static_cast<int64_t>(num_sms) / ctas;
      const int64_t by_len = std::max<int64_t>(p.max_selected, 0) / 1024;
      splits = static_cast<int>(std::max<int64_t>(1, std::min({want, by_len, int64_t{16}})));
    }
  }
  return PlanWithSplits(p, splits);
}

template <typename TOut>
Status SparsePrefillAttention(const SparsePrefillParams& p, const SparsePrefillPlan& plan,
                              TOut* out, int64_t out_token_stride, cpu::AttentionPartial* stats,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  constexpr const char* kOp = "SparsePrefillAttention";
  if (p.num_blocks < 0 || p.num_blocks > 65535) {
    return ArgError(kOp, "num_blocks must be in [0, 65535]");
  }
  SQZ_RETURN_IF_ERROR(CheckHeadGroups(kOp, p.n_q_heads, p.n_kv_heads, kSparsePrefillMaxGroup));
  if (p.head_dim != 64 && p.head_dim != 128) {
    return UnsupportedError(
        kOp, "head_dim " + std::to_string(p.head_dim) + " is not compiled (64, 128)");
  }
  if (!(p.scale > 0.0f)) return ArgError(kOp, "scale must be > 0");
  const int64_t row = static_cast<int64_t>(p.n_q_heads) * p.head_dim;
  if (p.q_stride < row || out_token_stride < row) {
    return ArgError(kOp, "q_stride and out_token_stride must be >= n_q_heads * head_dim = " +
                             std::to_string(row));
  }
  if (p.max_block_tokens < 1) return ArgError(kOp, "max_block_tokens must be >= 1");
  if (p.max_selected < 0 || p.max_selected > INT32_MAX) {
    return ArgError(kOp, "max_selected must be in [0, 2^31)");
  }
  if (p.num_splits < 0 || p.num_splits > kSparsePrefillMaxSplits || plan.splits < 1 ||
      plan.splits > kSparsePrefillMaxSplits) {
    return ArgError(kOp, "splits must be in [1, " + std::to_string(kSparsePrefillMaxSplits) + "]");
  }
  const SparsePrefillPlan expected = PlanWithSplits(p, plan.splits);
  if (plan.row_tiles != expected.row_tiles || plan.workspace_bytes != expected.workspace_bytes ||
      plan.split_len != expected.split_len || plan.partials_offset != expected.partials_offset ||
      (p.num_splits > 0 && plan.splits != p.num_splits)) {
    return ArgError(kOp, "plan was made for other params (make it with PlanSparsePrefill)");
  }
  if (static_cast<int64_t>(expected.row_tiles) * plan.splits > INT32_MAX) {
    return ArgError(kOp, "blocks too long for one launch");
  }
  if (p.num_blocks == 0) return OkStatus();
  if (!p.q || !out || !p.block_starts || !p.ctx_len || !p.ctx_k || !p.ctx_v ||
      !p.segments.segments || !p.segments.num_segments || !p.segments.selected_len) {
    return ArgError(kOp, "null pointer (q, out, block_starts, ctx_len, ctx_k, ctx_v, segments)");
  }
  if (p.segments.max_segments <= 0) return ArgError(kOp, "segments.max_segments must be > 0");
  if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && !workspace) ||
      !Aligned16(workspace)) {
    return ArgError(kOp, "workspace of " + std::to_string(workspace_bytes) +
                             " bytes; the plan needs " + std::to_string(plan.workspace_bytes) +
                             ", 16-byte aligned");
  }
  if (!Aligned16(p.q) || !Aligned16(out) || p.q_stride % 8 != 0 || out_token_stride % 2 != 0) {
    return ArgError(kOp,
                    "q and out must be 16-byte aligned, q_stride a multiple of 8 and "
                    "out_token_stride even");
  }
  auto* ws = static_cast<char*>(workspace);
  if (p.head_dim == 64) return Launch<64>(p, plan, out, out_token_stride, stats, ws, stream);
  return Launch<128>(p, plan, out, out_token_stride, stats, ws, stream);
}

template Status SparsePrefillAttention<float>(const SparsePrefillParams&, const SparsePrefillPlan&,
                                              float*, int64_t, cpu::AttentionPartial*, void*,
                                              size_t, cudaStream_t);
template Status SparsePrefillAttention<__nv_bfloat16>(const SparsePrefillParams&,
                                                      const SparsePrefillPlan&, __nv_bfloat16*,
                                                      int64_t, cpu::AttentionPartial*, void*,
                                                      size_t, cudaStream_t);

}  // namespace sqz::cuda
