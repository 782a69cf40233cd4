#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/ptx.cuh"

namespace sqz::cuda {
namespace {

using internal::FromFloat;
using internal::ToFloat;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kThreads = 128;
constexpr int kStages = 4;
constexpr int kPad = 8;  // bf16 of padding per smem row: 16 bytes, conflict-free row-parallel reads
constexpr int kTile = 32;
static_assert(kTile == 32, "the softmax maps one key of a tile to one lane");
constexpr int kMaxG = kDecodeMaxGroup;

// Shared memory of one chunk block, in bytes: K/V stages, q (fp32), probabilities, per-head state.
template <int D>
constexpr size_t ChunkSmemBytes() {
  return static_cast<size_t>(kStages) * 2 * kTile * (D + kPad) * sizeof(__nv_bfloat16) +
         (kMaxG * D + kMaxG * kTile + 3 * kMaxG) * sizeof(float);
}

// Workspace of a split (num_chunks > 1), in order: the fused merge's counters
// [batch][n_kv_heads] uint32 (DecodeCounterBytes), partial outputs [batch][n_q_heads][chunks][D]
// fp32, stats [batch][n_q_heads][chunks] (m, l).
size_t PartialOutBytes(const DecodeAttentionParams& p, int chunks) {
  const size_t bytes = static_cast<size_t>(p.batch) * p.n_q_heads * chunks * p.head_dim * 4;
  return (bytes + 255) / 256 * 256;
}

constexpr int kMergePiece = 64;  // chunks whose weights the fused merge holds in smem at a time

// Shared memory the fused merge needs (it reuses a chunk kernel's K/V stages), in bytes.
constexpr size_t kMergeSmemBytes = (2 * kMaxG + kMaxG * kMergePiece) * sizeof(float);

// The fused merge, called by every thread of a chunk block (uniformly) once the block's partials
// of the group's heads are in ws_o / ws_stats. The block counts itself done on counter
// (one per (r, kv_head)); the last of the num_chunks blocks to do so resets the counter to zero
// (for the next launch or graph replay) and merges all chunks' partials into out / stats by the
// rule of DecodeMergeKernel. The fence before the count publishes this block's partials; the last
// block reads the others' through L2 (ld.global.cg), never through a possibly stale L1.
// smem: >= kMergeSmemBytes, free for reuse (no thread still reads it). The partials of the group
// are the rows qh0 .. qh0 + group - 1 (qh = r * n_q_heads + query head).
template <int D, typename TOut>
__device__ void MergeChunksIfLast(int64_t qh0, int group, int num_chunks,
                                  unsigned* __restrict__ counter, const float* ws_o,
                                  const cpu::AttentionPartial* ws_stats, TOut* __restrict__ out,
                                  cpu::AttentionPartial* __restrict__ stats, float* smem) {
  static_assert(D % 4 == 0, "partial rows are read as float4");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  __threadfence();
  __syncthreads();
  bool last = false;
  if (tid == 0) {
    last = atomicAdd(counter, 1u) == static_cast<unsigned>(num_chunks - 1);
    if (last) *counter = 0u;  // every block of this launch has counted
  }
  if (!__syncthreads_or(last)) return;
  __threadfence();

  float* m_s = smem;         // [kMaxG] max over chunks of m (natural log)
  float* l_s = m_s + kMaxG;  // [kMaxG] sum over chunks of exp(m_c - m) l_c
  float* w_s = l_s + kMaxG;  // [kMaxG][kMergePiece] exp(m_c - m) l_c of the current piece
  const float2* st = reinterpret_cast<const float2*>(ws_stats);  // (m, l) pairs
  // (m, l) of each head: warp w takes heads w, w + 4; lanes stride the chunks (online), then
  // combine by shuffles.
  for (int hh = warp; hh < group; hh += kThreads / 32) {
    const float2* sh = st + (qh0 + hh) * num_chunks;
    float m = -INFINITY, l = 0.0f;
    for (int c = lane; c < num_chunks; c += 32) {
      const float2 sc = __ldcg(sh + c);
      if (sc.y > 0.0f) {
        const float mn = fmaxf(m, sc.x);
        l = l * expf(m - mn) + sc.y * expf(sc.x - mn);
        m = mn;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m, off);
      const float lo = __shfl_xor_sync(0xffffffffu, l, off);
      const float mn = fmaxf(m, mo);
      const float base = mn == -INFINITY ? 0.0f : mn;
      l = l * expf(m - base) + lo * expf(mo - base);
      m = mn;
    }
    if (lane == 0) {
      m_s[hh] = m;
      l_s[hh] = l;
    }
  }
  __syncthreads();

  // Output float4 v of head hh is index hh * kVec + v; thread tid owns tid + k * kThreads.
  constexpr int kVec = D / 4;
  constexpr int kPerThread = (kMaxG * kVec + kThreads - 1) / kThreads;
  const int outputs = group * kVec;
  float4 acc[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) acc[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int c0 = 0; c0 < num_chunks; c0 += kMergePiece) {
    const int n = min(kMergePiece, num_chunks - c0);
    for (int i = tid; i < group * kMergePiece; i += kThreads) {
      const int hh = i / kMergePiece, c = i % kMergePiece;
      float w = 0.0f;
      if (c < n) {
        const float2 sc = __ldcg(st + (qh0 + hh) * num_chunks + c0 + c);
        w = sc.y > 0.0f ? expf(sc.x - m_s[hh]) * sc.y : 0.0f;
      }
      w_s[i] = w;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int o = tid + k * kThreads;
      if (o < outputs) {
        const int hh = o / kVec, v = o % kVec;
        const float4* src =
            reinterpret_cast<const float4*>(ws_o + ((qh0 + hh) * num_chunks + c0) * D) + v;
        const float* w = w_s + hh * kMergePiece;
        float4 a = acc[k];
#pragma unroll 8
        for (int c = 0; c < n; ++c) {
          const float4 x = __ldcg(src + static_cast<int64_t>(c) * kVec);
          a.x = fmaf(w[c], x.x, a.x);
          a.y = fmaf(w[c], x.y, a.y);
          a.z = fmaf(w[c], x.z, a.z);
          a.w = fmaf(w[c], x.w, a.w);
        }
        acc[k] = a;
      }
    }
    __syncthreads();  // w_s is rewritten by the next piece
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int o = tid + k * kThreads;
    if (o < outputs) {
      const int hh = o / kVec, v = o % kVec;
      const float l = l_s[hh];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      TOut* dst = out + (qh0 + hh) * D + 4 * v;
      dst[0] = FromFloat<TOut>(acc[k].x * inv);
      dst[1] = FromFloat<TOut>(acc[k].y * inv);
      dst[2] = FromFloat<TOut>(acc[k].z * inv);
      dst[3] = FromFloat<TOut>(acc[k].w * inv);
      if (stats && v == 0) stats[qh0 + hh] = {m_s[hh], l};
    }
  }
}

// Where column col of key j of a request's sequence lives for kv head kv_head: keys below len_ctx
// are context row ctx_row (of ctx_rows per kv head; ctx_row == j for a dense context), the rest
// the request's own tokens in the paged pool (blocks: its block ids).
struct KeyRow {
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
};
template <int D>
__device__ __forceinline__ KeyRow FindKeyRow(const DecodeAttentionParams& p,
                                             const __nv_bfloat16* ctx_k, const __nv_bfloat16* ctx_v,
                                             int64_t ctx_rows, int64_t len_ctx, int64_t j,
                                             int64_t ctx_row, const int32_t* blocks, int kv_head,
                                             int col) {
  if (j < len_ctx) {
    const int64_t off = (kv_head * ctx_rows + ctx_row) * D + col;
    return {ctx_k + off, ctx_v + off};
  }
  const int64_t u = j - len_ctx;
  const int64_t b = blocks[u / kPageSize];
  const int64_t off = ((b * p.n_kv_heads + kv_head) * kPageSize + u % kPageSize) * D + col;
  return {p.pool_k + off, p.pool_v + off};
}

// DecodeAttentionParams::context_keys: request r's kv head attends len_ctx context keys (of the
// total keys it reads); called once per (request, kv head), by chunk 0's first thread.
__device__ __forceinline__ void CountContextKeys(const DecodeAttentionParams& p, int r,
                                                 int64_t len_ctx, int64_t total) {
  if (p.context_keys == nullptr) return;
  atomicAdd(p.context_keys + r,
            static_cast<unsigned long long>(
                min(static_cast<long long>(len_ctx), static_cast<long long>(total))));
}

// One block = one (chunk, kv head, request): streams the chunk's keys through a kStages-deep
// cp.async pipeline and leaves the partial (o, m, l) of each of the group's query heads either in
// the workspace (several chunks) or directly in out/stats (one chunk). counters (several chunks,
// fused merge; else nullptr): [batch][n_kv_heads], zero at launch; the last block of each
// (request, kv head) merges the partials (MergeChunksIfLast).
template <int D, typename TOut>
__global__ void __launch_bounds__(kThreads)
    DecodeChunkKernel(DecodeAttentionParams p, int64_t chunk_len, int num_chunks,
                      float* __restrict__ ws_o, cpu::AttentionPartial* __restrict__ ws_stats,
                      unsigned* __restrict__ counters, TOut* __restrict__ out,
                      cpu::AttentionPartial* __restrict__ stats) {
  internal::AllowDependentLaunch();  // a PDL-launched Gemv after it may start its weight loads
  internal::WaitForPriorGrid();      // a no-op unless launched as a programmatic dependent
  constexpr int kRow = D + kPad;
  constexpr int kChunks = D / 8;  // 16-byte pieces per K/V row
  constexpr int kPairs = D / 2;   // bf16 pairs per V row
  constexpr int kKeyLanes = kThreads / kPairs > 0 ? kThreads / kPairs : 1;
  static_assert(kPairs <= kThreads);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* kv_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kStages][2][kTile][kRow]
  auto* q_s = reinterpret_cast<float*>(kv_s + kStages * 2 * kTile * kRow);  // [kMaxG][D]
  float* p_s = q_s + kMaxG * D;                                             // [kMaxG][kTile]
  float* alpha_s = p_s + kMaxG * kTile;                                     // [kMaxG]
  float* m_s = alpha_s + kMaxG;                                             // [kMaxG]
  float* l_s = m_s + kMaxG;                                                 // [kMaxG]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int chunk = blockIdx.x, kv_head = blockIdx.y, r = blockIdx.z;
  const int group = p.n_q_heads / p.n_kv_heads;

  const int64_t len_ctx = p.ctx_len ? p.ctx_len[r] : 0;
  const int64_t len_own = p.own_len ? p.own_len[r] : 0;
  const int64_t total =
      min(static_cast<long long>(len_ctx + len_own), static_cast<long long>(p.max_kv_len));
  const int64_t start = static_cast<int64_t>(chunk) * chunk_len;
  const int64_t end = min(static_cast<long long>(start + chunk_len), static_cast<long long>(total));
  const int n_tiles = end > start ? static_cast<int>((end - start + kTile - 1) / kTile) : 0;
  if (chunk == 0 && tid == 0) CountContextKeys(p, r, len_ctx, total);
  const __nv_bfloat16* ctx_k = len_ctx > 0 ? p.ctx_k[r] : nullptr;
  const __nv_bfloat16* ctx_v = len_ctx > 0 ? p.ctx_v[r] : nullptr;
  const int32_t* blocks = len_own > 0 ? p.block_ids + p.block_indptr[r] : nullptr;

  // q of the group's heads, pre-scaled into the log2 domain.
  const float scale_log2 = p.scale * kLog2e;
  for (int i = tid; i < group * D; i += kThreads) {
    const int hh = i / D, dim = i % D;
    q_s[hh * D + dim] =
        ToFloat(p.q[static_cast<int64_t>(r) * p.q_stride + (kv_head * group + hh) * D + dim]) *
        scale_log2;
  }

  auto load_tile = [&](int tile, int stage) {
    __nv_bfloat16* k_dst = kv_s + (stage * 2) * kTile * kRow;
    __nv_bfloat16* v_dst = k_dst + kTile * kRow;
    const int64_t j0 = start + static_cast<int64_t>(tile) * kTile;
    for (int c = tid; c < kTile * kChunks; c += kThreads) {
      const int row = c / kChunks, col = (c % kChunks) * 8;
      const int64_t j = j0 + row;
      const bool valid = j < end;
      const KeyRow src =
          valid ? FindKeyRow<D>(p, ctx_k, ctx_v, len_ctx, len_ctx, j, j, blocks, kv_head, col)
                : KeyRow{p.q, p.q};  // any mapped address for zero-fill
      internal::CpAsync16(k_dst + row * kRow + col, src.k, valid);
      internal::CpAsync16(v_dst + row * kRow + col, src.v, valid);
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) load_tile(s, s);
    internal::CpAsyncCommit();
  }

  // Softmax state of heads warp and warp + 4 (held by every lane of the owning warp).
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  // PV accumulators: this thread's pair of dims for every head of the group, over its key lane.
  const int pair = tid % kPairs, key_lane = tid / kPairs;
  const bool pv_active = key_lane < kKeyLanes;
  float acc[kMaxG][2];
#pragma unroll
  for (int hh = 0; hh < kMaxG; ++hh) acc[hh][0] = acc[hh][1] = 0.0f;

  for (int ti = 0; ti < n_tiles; ++ti) {
    const int pre = ti + kStages - 1;
    if (pre < n_tiles) load_tile(pre, pre % kStages);
    internal::CpAsyncCommit();
    internal::CpAsyncWait<kStages - 1>();
    __syncthreads();
    const __nv_bfloat16* k_t = kv_s + ((ti % kStages) * 2) * kTile * kRow;
    const __nv_bfloat16* v_t = k_t + kTile * kRow;
    const int64_t j0 = start + static_cast<int64_t>(ti) * kTile;

    // Scores: one (head, key) per thread per step.
    for (int i = tid; i < group * kTile; i += kThreads) {
      const int hh = i / kTile, key = i % kTile;
      const __nv_bfloat16* kr = k_t + key * kRow;
      const float* qr = q_s + hh * D;
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const uint4 raw = *reinterpret_cast<const uint4*>(kr + c * 8);
        const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
        const float4 qa = *reinterpret_cast<const float4*>(qr + c * 8);
        const float4 qb = *reinterpret_cast<const float4*>(qr + c * 8 + 4);
        const float2 k01 = __bfloat1622float2(k2[0]), k23 = __bfloat1622float2(k2[1]);
        const float2 k45 = __bfloat1622float2(k2[2]), k67 = __bfloat1622float2(k2[3]);
        dot = fmaf(qa.x, k01.x, dot);
        dot = fmaf(qa.y, k01.y, dot);
        dot = fmaf(qa.z, k23.x, dot);
        dot = fmaf(qa.w, k23.y, dot);
        dot = fmaf(qb.x, k45.x, dot);
        dot = fmaf(qb.y, k45.y, dot);
        dot = fmaf(qb.z, k67.x, dot);
        dot = fmaf(qb.w, k67.y, dot);
      }
      p_s[hh * kTile + key] = j0 + key < end ? dot : -INFINITY;
    }
    __syncthreads();
    // Online softmax: warp w updates heads w and w + 4.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int hh = warp + 4 * i;
      if (hh < group) {
        const float s = p_s[hh * kTile + lane];
        const float mn = fmaxf(m_run[i], internal::WarpMax(s));
        const float base = mn == -INFINITY ? 0.0f : mn;
        const float pr = exp2f(s - base);
        const float alpha = exp2f(m_run[i] - base);
        l_run[i] = l_run[i] * alpha + internal::WarpSum(pr);
        m_run[i] = mn;
        p_s[hh * kTile + lane] = pr;
        if (lane == 0) alpha_s[hh] = alpha;
      }
    }
    __syncthreads();
    if (pv_active) {
#pragma unroll
      for (int hh = 0; hh < kMaxG; ++hh) {
        if (hh < group) {
          const float a = alpha_s[hh];
          acc[hh][0] *= a;
          acc[hh][1] *= a;
        }
      }
      for (int key = key_lane; key < kTile; key += kKeyLanes) {
        const float2 v = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(v_t + key * kRow + 2 * pair));
#pragma unroll
        for (int hh = 0; hh < kMaxG; ++hh) {
          if (hh < group) {
            const float pr = p_s[hh * kTile + key];
            acc[hh][0] = fmaf(pr, v.x, acc[hh][0]);
            acc[hh][1] = fmaf(pr, v.y, acc[hh][1]);
          }
        }
      }
    }
    __syncthreads();  // the stage just read is refilled by the next iteration
  }
  internal::CpAsyncWait<0>();

  // Reduce the key lanes through shared memory (the K/V stages are free now).
  auto* red = reinterpret_cast<float*>(kv_s);  // [kKeyLanes][kMaxG][D]
  static_assert(kKeyLanes * kMaxG * D * sizeof(float) <=
                kStages * 2 * kTile * (D + kPad) * sizeof(__nv_bfloat16));
  if (pv_active) {
#pragma unroll
    for (int hh = 0; hh < kMaxG; ++hh) {
      if (hh < group) {
        red[(key_lane * kMaxG + hh) * D + 2 * pair] = acc[hh][0];
        red[(key_lane * kMaxG + hh) * D + 2 * pair + 1] = acc[hh][1];
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int hh = warp + 4 * i;
      if (hh < group) {
        m_s[hh] = m_run[i];
        l_s[hh] = l_run[i];
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < group * D; i += kThreads) {
    const int hh = i / D, dim = i % D;
    float sum = 0.0f;
#pragma unroll
    for (int kl = 0; kl < kKeyLanes; ++kl) sum += red[(kl * kMaxG + hh) * D + dim];
    const float l = l_s[hh];
    const float o = l > 0.0f ? sum / l : 0.0f;
    const int64_t qh = static_cast<int64_t>(r) * p.n_q_heads + kv_head * group + hh;
    const cpu::AttentionPartial st{m_s[hh] * kLn2, l};
    if (num_chunks == 1) {
      out[qh * D + dim] = FromFloat<TOut>(o);
      if (stats && dim == 0) stats[qh] = st;
    } else {
      ws_o[(qh * num_chunks + chunk) * D + dim] = o;
      if (dim == 0) ws_stats[qh * num_chunks + chunk] = st;
    }
  }
  if (num_chunks > 1 && counters != nullptr) {
    static_assert(kMergeSmemBytes <= kStages * 2 * kTile * kRow * sizeof(__nv_bfloat16));
    const int64_t qh0 = static_cast<int64_t>(r) * p.n_q_heads + kv_head * group;
    MergeChunksIfLast<D, TOut>(qh0, group, num_chunks, counters + r * p.n_kv_heads + kv_head, ws_o,
                               ws_stats, out, stats, reinterpret_cast<float*>(kv_s));
  }
}

// ---- Tensor-core chunk kernel (head_dim 32, 64, 96, 128)
// ----------------------------------------- The group's query heads are the rows of an m16 tile
// (rows >= group are zero), so S = Q K^T and O += P V run on mma.m16n8k16. A pipeline stage holds
// 64 keys; each warp owns 16 of them with its own online-softmax state (no barrier between the
// phases), and the four warps' partials are merged once at the end. One barrier per stage.
constexpr int kMmaKeys = 64;  // keys per stage (16 per warp)
static_assert(kMmaKeys % kDecodeTile == 0 || kDecodeTile % kMmaKeys == 0);

// kStages: tiles in the cp.async ring (DecodePlan::stages): 3 (the default; two CTAs per SM at
// head_dim 128) or 2 (less shared memory: three CTAs per SM).
template <int D, int kStages>
constexpr size_t MmaSmemBytes() {
  return (static_cast<size_t>(kStages) * 2 * kMmaKeys + 16) * (D + kPad) * sizeof(__nv_bfloat16) +
         4 * kMaxG * 2 * sizeof(float) + kStages * kMmaKeys * sizeof(int32_t) +
         6 * sizeof(int32_t) + (kMmaKeys + 1) * sizeof(int2);
}

// Sparse contexts: the context row of selected key j (ContextSegments). Searches the segments
// [lo, hi) of one list (global or shared memory) for the first whose end exceeds j; lo must hold
// j or precede it.
__device__ __forceinline__ int FindSegment(const int2* seg, int lo, int hi, int64_t j) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (seg[mid].x > j) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// kSparse: the context part of the key sequence is the segment list of (r, kv head) (the rows of
// each tile are looked up one tile ahead into rows_s); otherwise all ctx_len[r] rows in order.
template <int D, typename TOut, bool kSparse, int kMmaStages>
__global__ void __launch_bounds__(kThreads)
    DecodeMmaChunkKernel(DecodeAttentionParams p, int64_t chunk_len, int num_chunks,
                         float* __restrict__ ws_o, cpu::AttentionPartial* __restrict__ ws_stats,
                         unsigned* __restrict__ counters, TOut* __restrict__ out,
                         cpu::AttentionPartial* __restrict__ stats) {
  static_assert(D % 32 == 0, "K fragments are loaded two k-chunks at a time");
  internal::AllowDependentLaunch();  // a PDL-launched Gemv after it may start its weight loads
  constexpr int kRow = D + kPad;
  constexpr int kChunks = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* kv_s = reinterpret_cast<__nv_bfloat16*>(smem_raw);       // [kMmaStages][2][kMmaKeys][kRow]
  __nv_bfloat16* q_s = kv_s + kMmaStages * 2 * kMmaKeys * kRow;  // [16][kRow]
  auto* ml_s = reinterpret_cast<float*>(q_s + 16 * kRow);        // [4 warps][kMaxG][2]
  auto* rows_s = reinterpret_cast<int32_t*>(ml_s + 4 * kMaxG * 2);  // [kMmaStages][kMmaKeys]
  // Sparse: cursor_s [2] by tile parity; win_s {first segment, count} of window_s; probe_s the
  // two warps' ballots of the initial search.
  int32_t* cursor_s = rows_s + kMmaStages * kMmaKeys;
  int32_t* win_s = cursor_s + 2;
  uint32_t* probe_s = reinterpret_cast<uint32_t*>(win_s + 2);
  int2* window_s = reinterpret_cast<int2*>(probe_s + 2);  // [kMmaKeys + 1] segments

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int chunk = blockIdx.x, kv_head = blockIdx.y, r = blockIdx.z;
  const int group = p.n_q_heads / p.n_kv_heads;

  // ctx_rows: rows of the context per kv head. What the kernel before may be writing under a
  // programmatic launch (the selection) is read only after WaitForPriorGrid below.
  const int64_t ctx_rows = p.ctx_len ? p.ctx_len[r] : 0;
  const int64_t len_own = p.own_len ? p.own_len[r] : 0;
  // Loaded beside the lengths, not after them (one round trip fewer before the first tile): the
  // arrays have an entry for every request whenever ctx_len / own_len are given; entries of
  // requests without keys are never dereferenced.
  const __nv_bfloat16* ctx_k = p.ctx_len ? p.ctx_k[r] : nullptr;
  const __nv_bfloat16* ctx_v = p.ctx_len ? p.ctx_v[r] : nullptr;
  const int32_t* blocks = p.own_len ? p.block_ids + p.block_indptr[r] : nullptr;
  // Q rows: the group's heads, zero below (committed with tile 0).
  auto load_q = [&] {
    for (int c = tid; c < 16 * kChunks; c += kThreads) {
      const int row = c / kChunks, col = (c % kChunks) * 8;
      const bool valid = row < group;
      const __nv_bfloat16* src =
          valid ? p.q + static_cast<int64_t>(r) * p.q_stride + (kv_head * group + row) * D + col
                : p.q;
      internal::CpAsync16(q_s + row * kRow + col, src, valid);
    }
  };
  // After the kernel that writes q and the newest keys (dense only): tile 0 may go before the
  // wait, q after it (the prologue below). Otherwise q first, then the wait (a no-op unless
  // launched as a programmatic dependent).
  const bool after_qkv = !kSparse && p.programmatic && p.programmatic_after_qkv;
  if (!after_qkv) {
    load_q();
    internal::WaitForPriorGrid();
  }
  // len_ctx: context keys attended (all rows, or the selected ones of this kv head).
  const int64_t sel_index = static_cast<int64_t>(r) * p.n_kv_heads + kv_head;
  const int64_t len_ctx =
      kSparse ? (ctx_rows > 0 ? max(0, p.sparse.selected_len[sel_index]) : 0) : ctx_rows;
  const int2* segs = kSparse ? p.sparse.segments + sel_index * p.sparse.max_segments : nullptr;
  const int n_segs =
      kSparse ? min(max(p.sparse.num_segments[sel_index], 0), p.sparse.max_segments) : 0;
  const int64_t total =
      min(static_cast<long long>(len_ctx + len_own), static_cast<long long>(p.max_kv_len));
  const int64_t start = static_cast<int64_t>(chunk) * chunk_len;
  const int64_t end = min(static_cast<long long>(start + chunk_len), static_cast<long long>(total));
  const int n_tiles = end > start ? static_cast<int>((end - start + kMmaKeys - 1) / kMmaKeys) : 0;
  if (chunk == 0 && tid == 0 && !after_qkv) CountContextKeys(p, r, len_ctx, total);

  // Sparse: rows of the selected keys of `tile` into rows_s[tile % kMmaStages], by threads
  // 0 .. 63 (warps 0 and 1; thread t takes key j0 + t; they synchronise among themselves with
  // named barrier 1). The segments are read through window_s, a copy of up to 65 consecutive
  // segments (usually hundreds of keys, many tiles): a tile's keys lie in segments lo .. lo + 64,
  // lo = the segment of its first key, so the window is reloaded (one round trip, one load per
  // thread) only when it does not reach the tile's last key. lo comes from the previous tile
  // (cursor_s[tile & 1], the segment of its last key); tile 0 finds it by a 64-ary search over the
  // segment ends (a round trip per 64x narrowing instead of one per halving).
  auto find_rows = [&](int tile) {
    if (!kSparse || tid >= kMmaKeys) return;
    const int64_t j0 = start + static_cast<int64_t>(tile) * kMmaKeys;
    const int64_t lim = min(end, len_ctx);
    // A tile without context keys needs no rows (and may follow a tile that left no cursor).
    // Uniform over the 64 threads, as the barriers below need.
    if (j0 >= lim || n_segs == 0) return;
    int lo;
    if (tile == 0) {
      // The first segment whose end exceeds j0 (n_segs if none) is in [a, b]; each round probes
      // 64 evenly spaced ends and keeps the stretch where they start to exceed j0.
      int a = 0, b = n_segs;
      while (a < b) {
        const int step = (b - a + kMmaKeys - 1) / kMmaKeys;
        const int q = min(a + (tid + 1) * step - 1, b - 1);
        const unsigned ballot = __ballot_sync(0xffffffffu, segs[q].x > j0);
        if (lane == 0) probe_s[warp] = ballot;
        asm volatile("bar.sync 1, %0;\n" ::"n"(kMmaKeys));
        const unsigned long long mask =
            probe_s[0] | (static_cast<unsigned long long>(probe_s[1]) << 32);
        asm volatile("bar.sync 1, %0;\n" ::"n"(kMmaKeys));  // probe_s is rewritten next round
        if (mask == 0) {  // every probed end is <= j0, the last being b - 1's: the answer is b
          a = b;
          break;
        }
        const int t = __ffsll(static_cast<long long>(mask)) - 1;
        const int qt = min(a + (t + 1) * step - 1, b - 1);
        a = t == 0 ? a : min(a + t * step - 1, b - 1) + 1;
        b = qt;
      }
      lo = min(a, n_segs - 1);
    } else {
      lo = min(max(cursor_s[tile & 1], 0), n_segs - 1);
    }
    int wlo = tile == 0 ? -1 : win_s[0], wn = tile == 0 ? 0 : win_s[1];
    const int64_t last = min(j0 + kMmaKeys, lim) - 1;
    const bool reload =
        lo < wlo || lo >= wlo + wn || (wlo + wn < n_segs && window_s[wn - 1].x <= last);
    if (reload) {
      asm volatile("bar.sync 1, %0;\n" ::"n"(kMmaKeys));  // every thread is done with the old
      wlo = lo;
      wn = min(kMmaKeys + 1, n_segs - lo);
      if (tid < wn) window_s[tid] = segs[lo + tid];
      if (tid == 0 && kMmaKeys < wn) window_s[kMmaKeys] = segs[lo + kMmaKeys];
      if (tid == 0) {
        win_s[0] = wlo;
        win_s[1] = wn;
      }
      asm volatile("bar.sync 1, %0;\n" ::"n"(kMmaKeys));
    }
    const int64_t j = j0 + tid;
    if (j >= lim) return;
    const int w = FindSegment(window_s, lo - wlo, wn, j);
    const int s = wlo + w;
    int64_t row = w < wn ? j + window_s[w].y : 0;  // w == wn: a malformed list
    row = row < 0 ? 0 : (row >= ctx_rows ? ctx_rows - 1 : row);
    rows_s[(tile % kMmaStages) * kMmaKeys + tid] = static_cast<int32_t>(row);
    if (j == last) cursor_s[(tile + 1) & 1] = min(s, n_segs - 1);
  };
  auto load_tile = [&](int tile, int stage) {
    __nv_bfloat16* k_dst = kv_s + (stage * 2) * kMmaKeys * kRow;
    __nv_bfloat16* v_dst = k_dst + kMmaKeys * kRow;
    const int64_t j0 = start + static_cast<int64_t>(tile) * kMmaKeys;
    if (!kSparse && j0 + kMmaKeys <= end && j0 + kMmaKeys <= len_ctx) {
      // Common case: a full tile inside the contiguous context; no per-row address logic.
      const __nv_bfloat16* kb = ctx_k + (kv_head * len_ctx + j0) * D;
      const __nv_bfloat16* vb = ctx_v + (kv_head * len_ctx + j0) * D;
#pragma unroll
      for (int c = tid; c < kMmaKeys * kChunks; c += kThreads) {
        const int row = c / kChunks, col = (c % kChunks) * 8;
        internal::CpAsync16(k_dst + row * kRow + col, kb + row * D + col, true);
        internal::CpAsync16(v_dst + row * kRow + col, vb + row * D + col, true);
      }
      return;
    }
    for (int c = tid; c < kMmaKeys * kChunks; c += kThreads) {
      const int row = c / kChunks, col = (c % kChunks) * 8;
      const int64_t j = j0 + row;
      const bool valid = j < end;
      KeyRow src{p.q, p.q};  // any mapped address for zero-fill
      if (valid) {
        const int64_t ctx_row =
            kSparse && j < len_ctx ? rows_s[(tile % kMmaStages) * kMmaKeys + row] : j;
        src = FindKeyRow<D>(p, ctx_k, ctx_v, ctx_rows, len_ctx, j, ctx_row, blocks, kv_head, col);
      }
      internal::CpAsync16(k_dst + row * kRow + col, src.k, valid);
      internal::CpAsync16(v_dst + row * kRow + col, src.v, valid);
    }
  };
  // Group 0 holds Q and tile 0. Sparse: the rows of tile t are found (and published by a barrier)
  // just before its load, so tile 0's loads are in flight while tiles 1 .. kMmaStages - 1 look up
  // theirs (each starts from the cursor of the one before). The barrier at the top of the main
  // loop publishes the rows of tile kMmaStages - 1.
  int first = 0;  // tiles of the prologue already issued
  if (after_qkv) {
    // Tile 0 before the wait when all its keys are older than the newest key (total - 1), which
    // the kernel before writes; q, the count and any newer tile after it.
    const bool early = n_tiles > 0 && start + kMmaKeys <= total - 1;
    if (early) load_tile(0, 0);
    internal::WaitForPriorGrid();
    load_q();
    if (!early && n_tiles > 0) load_tile(0, 0);
    internal::CpAsyncCommit();
    if (chunk == 0 && tid == 0) CountContextKeys(p, r, len_ctx, total);
    first = 1;
  }
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < first) continue;
    if (kSparse && s < n_tiles) {
      find_rows(s);
      __syncthreads();
    }
    if (s < n_tiles) load_tile(s, s);
    internal::CpAsyncCommit();
  }
  if (kSparse && kMmaStages - 1 < n_tiles) find_rows(kMmaStages - 1);

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m0 = -INFINITY, l0 = 0.0f;  // row g (rows g + 8 are padding: group <= 8)
  const float scale_log2 = p.scale * kLog2e;

  for (int ti = 0; ti < n_tiles; ++ti) {
    internal::CpAsyncWait<kMmaStages - 2>();
    __syncthreads();  // tile ti visible to all; every warp is done with tile ti - 1
    {
      const int pre = ti + kMmaStages - 1;
      if (pre < n_tiles) load_tile(pre, pre % kMmaStages);
      internal::CpAsyncCommit();
      // rows_s[(pre + 1) % kMmaStages] held tile ti's rows, issued two iterations ago; the
      // barrier at the top of the next iteration publishes the new ones before their load.
      if (kSparse && pre + 1 < n_tiles) find_rows(pre + 1);
    }
    if (ti == 0) {
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
        internal::LdMatrixX4(qf[kc], q_s + row * kRow + kc * 16 + (lane >> 4) * 8);
      }
    }
    const __nv_bfloat16* k_t = kv_s + ((ti % kMmaStages) * 2) * kMmaKeys * kRow + warp * 16 * kRow;
    const __nv_bfloat16* v_t = k_t + kMmaKeys * kRow;
    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < D / 16; kc += 2) {
        uint32_t b[4];
        internal::LdMatrixX4(b, k_t + (nt * 8 + (lane & 7)) * kRow + kc * 16 + (lane >> 3) * 8);
        internal::MmaBf16(s[nt], qf[kc], b[0], b[1]);
        internal::MmaBf16(s[nt], qf[kc + 1], b[2], b[3]);
      }
    }
    const int64_t j0 = start + static_cast<int64_t>(ti) * kMmaKeys + warp * 16;
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t j = j0 + nt * 8 + 2 * t4 + e;
        s[nt][e] = j < end ? s[nt][e] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[nt][e]);
      }
      s[nt][2] = s[nt][3] = 0.0f;  // padding rows g + 8
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m0, mx);
    const float base = mn == -INFINITY ? 0.0f : mn;
    const float alpha = exp2f(m0 - base);
    m0 = mn;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - base);
      s[nt][1] = exp2f(s[nt][1] - base);
      sum += s[nt][0] + s[nt][1];
    }
    l0 = l0 * alpha + sum;
    uint32_t pf[4];
    pf[0] = internal::PackBf16(s[0][0], s[0][1]);
    pf[1] = 0u;
    pf[2] = internal::PackBf16(s[1][0], s[1][1]);
    pf[3] = 0u;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      o[dt][0] *= alpha;
      o[dt][1] *= alpha;
      o[dt + 1][0] *= alpha;
      o[dt + 1][1] *= alpha;
      uint32_t b[4];
      internal::LdMatrixX4Trans(
          b, v_t + ((lane & 7) + ((lane >> 3) & 1) * 8) * kRow + dt * 8 + (lane >> 4) * 8);
      internal::MmaBf16(o[dt], pf, b[0], b[1]);
      internal::MmaBf16(o[dt + 1], pf, b[2], b[3]);
    }
  }
  internal::CpAsyncWait<0>();
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  __syncthreads();  // all warps are done with the stages: reuse them for the warps' partials

  auto* part = reinterpret_cast<float*>(kv_s);  // [4 warps][kMaxG][D], normalised by l of the warp
  if (g < group) {
    const float inv = l0 > 0.0f ? 1.0f / l0 : 0.0f;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      float* dst = part + (warp * kMaxG + g) * D + dt * 8 + 2 * t4;
      dst[0] = o[dt][0] * inv;
      dst[1] = o[dt][1] * inv;
    }
    if (t4 == 0) {
      ml_s[(warp * kMaxG + g) * 2] = m0;
      ml_s[(warp * kMaxG + g) * 2 + 1] = l0;
    }
  }
  __syncthreads();
  for (int i = tid; i < group * D; i += kThreads) {
    const int hh = i / D, dim = i % D;
    float mw[4], lw[4], m = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      mw[w] = ml_s[(w * kMaxG + hh) * 2];
      lw[w] = ml_s[(w * kMaxG + hh) * 2 + 1];
      if (lw[w] > 0.0f) m = fmaxf(m, mw[w]);
    }
    float l = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      if (lw[w] > 0.0f) {
        const float wt = exp2f(mw[w] - m) * lw[w];
        l += wt;
        acc += wt * part[(w * kMaxG + hh) * D + dim];
      }
    }
    const float o_val = l > 0.0f ? acc / l : 0.0f;
    const int64_t qh = static_cast<int64_t>(r) * p.n_q_heads + kv_head * group + hh;
    const cpu::AttentionPartial st{m * kLn2, l};
    if (num_chunks == 1) {
      out[qh * D + dim] = FromFloat<TOut>(o_val);
      if (stats && dim == 0) stats[qh] = st;
    } else {
      ws_o[(qh * num_chunks + chunk) * D + dim] = o_val;
      if (dim == 0) ws_stats[qh * num_chunks + chunk] = st;
    }
  }
  if (num_chunks > 1 && counters != nullptr) {
    static_assert(kMergeSmemBytes <= kMmaStages * 2 * kMmaKeys * kRow * sizeof(__nv_bfloat16));
    const int64_t qh0 = static_cast<int64_t>(r) * p.n_q_heads + kv_head * group;
    MergeChunksIfLast<D, TOut>(qh0, group, num_chunks, counters + r * p.n_kv_heads + kv_head, ws_o,
                               ws_stats, out, stats, reinterpret_cast<float*>(kv_s));
  }
}

// One block per (request, query head): merges its chunks' partials (log-sum-exp rule). The
// chunks' weights exp(m_c - m) l_c are formed in parallel (one thread per chunk) into w_s
// (dynamic shared memory, num_chunks floats), so no thread walks the chunks' stats one load at a
// time; the weighted sum per dim then issues its loads unrolled.
template <typename TOut>
__global__ void DecodeMergeKernel(int num_chunks, int d, const float* __restrict__ ws_o,
                                  const cpu::AttentionPartial* __restrict__ ws_stats,
                                  TOut* __restrict__ out,
                                  cpu::AttentionPartial* __restrict__ stats) {
  extern __shared__ float w_s[];  // [num_chunks + 16], zero past num_chunks
  __shared__ float red_s[32];
  const int64_t qh = blockIdx.x;
  const cpu::AttentionPartial* st = ws_stats + qh * num_chunks;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < num_chunks; c += blockDim.x) {
    if (st[c].l > 0.0f) m = fmaxf(m, st[c].m);
  }
  m = internal::BlockMax(m, red_s);
  float total = 0.0f;
  for (int c = threadIdx.x; c < num_chunks + 16; c += blockDim.x) {
    float w = 0.0f;
    if (c < num_chunks) {
      const cpu::AttentionPartial sc = st[c];
      w = sc.l > 0.0f ? expf(sc.m - m) * sc.l : 0.0f;
    }
    w_s[c] = w;
    total += w;
  }
  total = internal::BlockSum(total, red_s);  // its barriers also publish w_s
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
    float acc = 0.0f;
#pragma unroll 8
    for (int c = 0; c < num_chunks; ++c) acc += w_s[c] * ws_o[(qh * num_chunks + c) * d + dim];
    out[qh * d + dim] = FromFloat<TOut>(acc * inv);
  }
  if (stats && threadIdx.x == 0) stats[qh] = {m, total};
}

// Head dims whose chunk kernel runs on tensor cores; the others use DecodeChunkKernel.
constexpr bool UsesMma(int d) { return d % 32 == 0; }

template <int D, typename TOut>
Status LaunchDecode(const DecodeAttentionParams& p, const DecodePlan& plan, TOut* out,
                    cpu::AttentionPartial* stats, void* workspace, cudaStream_t stream) {
  constexpr bool kMma = UsesMma(D);
  constexpr int kD = kMma ? D : 32;  // the tensor-core instances' head dim (unused otherwise)
  const bool sparse = p.sparse.segments != nullptr, two = plan.stages == 2;
  const size_t smem = !kMma ? ChunkSmemBytes<D>()
                      : two ? MmaSmemBytes<kD, 2>()
                            : MmaSmemBytes<kD, 3>();
  auto* kernel = !kMma    ? DecodeChunkKernel<D, TOut>
                 : sparse ? (two ? DecodeMmaChunkKernel<kD, TOut, true, 2>
                                 : DecodeMmaChunkKernel<kD, TOut, true, 3>)
                          : (two ? DecodeMmaChunkKernel<kD, TOut, false, 2>
                                 : DecodeMmaChunkKernel<kD, TOut, false, 3>);
  SQZ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem)),
                           "DecodeAttention: cudaFuncSetAttribute");
  float* ws_o = nullptr;
  cpu::AttentionPartial* ws_stats = nullptr;
  unsigned* counters = nullptr;
  if (plan.num_chunks > 1) {
    char* base = static_cast<char*>(workspace);
    if (plan.fused_merge) counters = reinterpret_cast<unsigned*>(base);
    ws_o = reinterpret_cast<float*>(base + DecodeCounterBytes(p));
    ws_stats = reinterpret_cast<cpu::AttentionPartial*>(base + DecodeCounterBytes(p) +
                                                        PartialOutBytes(p, plan.num_chunks));
  }
  const dim3 grid(plan.num_chunks, p.n_kv_heads, p.batch);
  SQZ_CUDA_RETURN_IF_ERROR(
      internal::Launch(kernel, grid, dim3(kThreads), smem, stream, p.programmatic, p,
                       plan.chunk_len, plan.num_chunks, ws_o, ws_stats, counters, out, stats),
      "DecodeAttention: chunk kernel");
  SQZ_RETURN_IF_ERROR(LaunchStatus("DecodeAttention: chunk kernel"));
  if (plan.num_chunks > 1 && !plan.fused_merge) {
    const unsigned blocks = static_cast<unsigned>(static_cast<int64_t>(p.batch) * p.n_q_heads);
    // Weights of the chunks plus 16 zero floats: the unrolled sum may read a little past them.
    const size_t merge_smem = (static_cast<size_t>(plan.num_chunks) + 16) * sizeof(float);
    if (merge_smem > 48 * 1024) {  // only for tiny forced chunks over very long sequences
      SQZ_CUDA_RETURN_IF_ERROR(
          cudaFuncSetAttribute(DecodeMergeKernel<TOut>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(merge_smem)),
          "DecodeAttention: merge kernel cudaFuncSetAttribute (too many chunks?)");
    }
    DecodeMergeKernel<TOut>
        <<<blocks, 128, merge_smem, stream>>>(plan.num_chunks, D, ws_o, ws_stats, out, stats);
    SQZ_RETURN_IF_ERROR(LaunchStatus("DecodeAttention: merge kernel"));
  }
  return OkStatus();
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

size_t DecodeCounterBytes(const DecodeAttentionParams& p) {
  const size_t bytes = static_cast<size_t>(std::max(p.batch, 0)) * std::max(p.n_kv_heads, 0) * 4;
  return (bytes + 255) / 256 * 256;
}

namespace {

// The chunk length with the smallest modelled time for `slots` resident blocks. Time model:
// blocks run in waves of `slots`; a block costs its keys plus a fixed overhead worth ~256 keys
// (pipeline fill). The merge kernel costs ~1024 keys; the fused merge only its last block's pass
// over the chunks' partials (from L2, about a key's worth per chunk and head row) plus a fixed
// ~64. Prefers fewer chunks on ties.
int64_t ModelChunk(const DecodeAttentionParams& p, int64_t len, int64_t slots, bool fused_merge) {
  const int64_t units = std::max<int64_t>(1, static_cast<int64_t>(p.batch) * p.n_kv_heads);
  const int64_t max_chunks = std::max<int64_t>(1, (len + kDecodeTile - 1) / kDecodeTile);
  int64_t best_cost = -1, chunk = kDecodeTile;
  for (int64_t c = 1; c <= std::min<int64_t>(max_chunks, 4 * slots); ++c) {
    int64_t cl = (len + c - 1) / c;
    cl = std::max<int64_t>(kDecodeTile, (cl + kDecodeTile - 1) / kDecodeTile * kDecodeTile);
    const int64_t chunks = std::max<int64_t>(1, (len + cl - 1) / cl);
    const int64_t waves = (units * chunks + slots - 1) / slots;
    const int64_t merge = chunks == 1 ? 0 : fused_merge ? 64 + chunks : 1024;
    const int64_t cost = waves * (cl + 256) + merge;
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      chunk = cl;
    }
  }
  return chunk;
}

}  // namespace

DecodePlan PlanDecodeAttention(const DecodeAttentionParams& p, int num_sms,
                               const DecodePlanOptions& options) {
  DecodePlan plan;
  const int64_t len = std::max<int64_t>(p.max_kv_len, 0);
  const int64_t sms = std::max(num_sms, 1);
  int64_t chunk = options.force_chunk_len;
  int stages = options.mma_stages;
  if (chunk <= 0) {
    // Three-tile rings hold two blocks per SM (head_dim 128), two-tile rings three. The two-tile
    // ring pays for sparse contexts of many (request, kv head) units when the third block per SM
    // buys more chunks, of kLongChunk keys or more, in one wave: sparse batch 16 at 128K 233.4
    // against 272.0 us (3 chunks of 5,568 keys against 2 of 8,320), at 512K 962.1 against 1038.8.
    // Elsewhere three tiles: at batch 1 the two-tile split (384-key chunks) measured 31.3 against
    // 29.2 us; a budget-1.0 step at batch 32, whose two-tile split takes two waves, 16% slower;
    // dense contexts within +-2% either way (docs/benchmarks/squeeze_gpu.md, run 13).
    constexpr int64_t kLongChunk = 2048;
    if (stages == 0) {
      const int64_t units = static_cast<int64_t>(std::max(p.batch, 0)) * p.n_kv_heads;
      const int64_t three = ModelChunk(p, len, 2 * sms, options.fused_merge);
      // The two-tile split is modelled only where it may be taken (the planner runs every step).
      const bool candidate = p.sparse.segments != nullptr && 2 * units >= sms;
      const int64_t two = candidate ? ModelChunk(p, len, 3 * sms, options.fused_merge) : 0;
      const auto chunks_of = [&](int64_t cl) { return (len + cl - 1) / cl; };
      const bool two_tiles = candidate && two >= kLongChunk && chunks_of(two) > chunks_of(three) &&
                             units * chunks_of(two) <= 3 * sms;
      stages = two_tiles ? 2 : 3;
      chunk = two_tiles ? two : three;
    } else {
      chunk = ModelChunk(p, len, (stages == 2 ? 3 : 2) * sms, options.fused_merge);
    }
  }
  chunk = (chunk + kDecodeTile - 1) / kDecodeTile * kDecodeTile;
  plan.chunk_len = chunk;
  plan.stages = stages == 2 ? 2 : 3;
  plan.num_chunks = static_cast<int>(std::max<int64_t>(1, (len + chunk - 1) / chunk));
  if (plan.num_chunks > 1) {
    plan.fused_merge = options.fused_merge;
    plan.workspace_bytes = DecodeCounterBytes(p) + PartialOutBytes(p, plan.num_chunks) +
                           static_cast<size_t>(p.batch) * p.n_q_heads * plan.num_chunks *
                               sizeof(cpu::AttentionPartial);
  }
  return plan;
}

DecodePlan PlanDecodeAttention(const DecodeAttentionParams& p, int num_sms,
                               int64_t force_chunk_len) {
  DecodePlanOptions options;
  options.force_chunk_len = force_chunk_len;
  return PlanDecodeAttention(p, num_sms, options);
}

DecodePlan PlanDecodeAttentionWithin(const DecodeAttentionParams& p, int num_sms,
                                     size_t workspace_bytes, const DecodePlanOptions& options) {
  DecodePlan plan = PlanDecodeAttention(p, num_sms, options);
  // Fewer chunks until the partials fit: the bytes per chunk give a first guess, then step down
  // (chunk_len rounding can leave one chunk more than asked for).
  const size_t per_chunk = static_cast<size_t>(std::max(p.batch, 0)) * std::max(p.n_q_heads, 0) *
                           (4 * static_cast<size_t>(std::max(p.head_dim, 0)) + 8);
  const int64_t len = std::max<int64_t>(p.max_kv_len, 0);
  int64_t chunks = plan.num_chunks;
  if (plan.workspace_bytes > workspace_bytes && per_chunk > 0) {
    const size_t fixed = DecodeCounterBytes(p) + 256;
    chunks =
        workspace_bytes > fixed ? static_cast<int64_t>((workspace_bytes - fixed) / per_chunk) : 1;
    chunks = std::clamp<int64_t>(chunks, 1, plan.num_chunks);
  }
  DecodePlanOptions forced = options;
  while (plan.workspace_bytes > workspace_bytes && chunks >= 1) {
    forced.force_chunk_len = (len + chunks - 1) / chunks;
    plan = PlanDecodeAttention(p, num_sms, forced);
    --chunks;
  }
  return plan;
}

template <typename TOut>
Status DecodeAttention(const DecodeAttentionParams& p, const DecodePlan& plan, TOut* out,
                       cpu::AttentionPartial* stats, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream) {
  constexpr const char* kOp = "DecodeAttention";
  if (p.batch < 0 || p.batch > 65535) return ArgError(kOp, "batch must be in [0, 65535]");
  SQZ_RETURN_IF_ERROR(CheckHeadGroups(kOp, p.n_q_heads, p.n_kv_heads, kDecodeMaxGroup));
  if (std::find(kDecodeHeadDims.begin(), kDecodeHeadDims.end(), p.head_dim) ==
      kDecodeHeadDims.end()) {
    return UnsupportedError(kOp, "head_dim " + std::to_string(p.head_dim) +
                                     " is not compiled (8, 16, 32, 48, 64, 96, 128)");
  }
  if (!(p.scale > 0.0f)) return ArgError(kOp, "scale must be > 0");
  if (p.max_kv_len < 0) return ArgError(kOp, "max_kv_len must be >= 0");
  if (p.q_stride < static_cast<int64_t>(p.n_q_heads) * p.head_dim) {
    return ArgError(kOp, "q_stride must be >= n_q_heads * head_dim");
  }
  if (plan.chunk_len <= 0 || plan.chunk_len % kDecodeTile != 0 || plan.num_chunks < 1 ||
      plan.chunk_len * plan.num_chunks < p.max_kv_len) {
    return ArgError(kOp, "plan does not cover max_kv_len (make it with PlanDecodeAttention)");
  }
  if (p.batch == 0) return OkStatus();
  DecodePlanOptions same;
  same.force_chunk_len = plan.chunk_len;
  same.fused_merge = plan.fused_merge || plan.num_chunks == 1;
  same.mma_stages = plan.stages;
  const DecodePlan expected = PlanDecodeAttention(p, 1, same);
  if (expected.num_chunks != plan.num_chunks || expected.fused_merge != plan.fused_merge ||
      (plan.stages != 2 && plan.stages != 3)) {
    return ArgError(kOp, "plan was made for other params");
  }
  if (workspace_bytes < expected.workspace_bytes ||
      (expected.workspace_bytes > 0 && (!workspace || !Aligned16(workspace)))) {
    return ArgError(kOp, "workspace of " + std::to_string(workspace_bytes) +
                             " bytes; the plan needs " + std::to_string(expected.workspace_bytes) +
                             ", 16-byte aligned");
  }
  if (!p.q || !out) return ArgError(kOp, "null q or out");
  if (p.ctx_len && (!p.ctx_k || !p.ctx_v))
    return ArgError(kOp, "ctx_len given without ctx_k/ctx_v");
  if (p.own_len && (!p.block_indptr || !p.block_ids || !p.pool_k || !p.pool_v)) {
    return ArgError(kOp, "own_len given without block_indptr, block_ids, pool_k and pool_v");
  }
  if (p.own_len && (!Aligned16(p.pool_k) || !Aligned16(p.pool_v))) {
    return ArgError(kOp, "pool_k and pool_v must be 16-byte aligned");
  }
  if (p.sparse.segments) {
    if (!p.ctx_len || !p.sparse.num_segments || !p.sparse.selected_len ||
        p.sparse.max_segments <= 0) {
      return ArgError(kOp,
                      "a sparse context needs ctx_len, num_segments, selected_len and "
                      "max_segments > 0");
    }
    if (!UsesMma(p.head_dim)) {
      return UnsupportedError(kOp, "a sparse context needs head_dim 32, 64, 96 or 128, not " +
                                       std::to_string(p.head_dim));
    }
  }
  switch (p.head_dim) {
    case 8:
      return LaunchDecode<8>(p, plan, out, stats, workspace, stream);
    case 16:
      return LaunchDecode<16>(p, plan, out, stats, workspace, stream);
    case 32:
      return LaunchDecode<32>(p, plan, out, stats, workspace, stream);
    case 48:
      return LaunchDecode<48>(p, plan, out, stats, workspace, stream);
    case 64:
      return LaunchDecode<64>(p, plan, out, stats, workspace, stream);
    case 96:
      return LaunchDecode<96>(p, plan, out, stats, workspace, stream);
    case 128:
      return LaunchDecode<128>(p, plan, out, stats, workspace, stream);
    default:
      break;
  }
  return UnsupportedError(kOp, "head_dim " + std::to_string(p.head_dim) + " is not compiled");
}

template Status DecodeAttention<float>(const DecodeAttentionParams&, const DecodePlan&, float*,
                                       cpu::AttentionPartial*, void*, size_t, cudaStream_t);
template Status DecodeAttention<__nv_bfloat16>(const DecodeAttentionParams&, const DecodePlan&,
                                               __nv_bfloat16*, cpu::AttentionPartial*, void*,
                                               size_t, cudaStream_t);

}  // namespace sqz::cuda
