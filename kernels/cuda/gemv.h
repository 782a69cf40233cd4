// Gemv: the linear layers' product for a few rows (decode steps at small batch), bf16 inputs,
// fp32 accumulation, bf16 or fp32 output:
//   out[m][n] = sum_k a[m][k] * w[n][k] (+ bias[n]),   1 <= m <= kGemvMaxRows.
// a: [m][k] activations, w: [n][k] a Hugging Face Linear weight, bias: [n] of the output type or
// nullptr, out: [m][n]; row-major device memory owned by the caller.
// Memory-bound: the weights are streamed once with 16-byte loads kept out of L1 while the few
// activation rows stay in L1/L2. Two kernels (GemvKernel):
//   * kStreaming (the default): one wave of persistent blocks (SMs x resident blocks per SM, sized
//     once by PlanGemv) over balanced contiguous ranges of output features, one warp per feature
//     (two at a time from m = 3 on), 8 weight loads in flight per lane. Optionally launched as a
//     programmatic dependent of the previous kernel on the stream (PDL): its first weight loads
//     are issued before it waits for that kernel, so the ramp overlaps the previous kernel's tail.
//   * kWarpPerRow: the first kernel (one warp per feature, four for n < 16384, one block per 8
//     or 2 features), the backend's default at one row; PDL-launched like kStreaming when the
//     plan says so (each block's first weight loads overlap the previous kernel's tail).
// Each output element is summed in a fixed order independent of m (batch invariant): a lane adds
// its 16-byte vectors in increasing k, then the warp's 32 lanes are added by an xor butterfly.
// kStreaming and kWarpPerRow give the same bits where kWarpPerRow uses one warp per feature
// (n >= 16384); below that kWarpPerRow adds four warps' partial sums (bf16-rounding-level
// differences). Needs k % 8 == 0 and 16-byte aligned a and w (GemvSupported); other shapes are the
// caller's to send to cuBLASLt (gemm.h).
// Two fused forms of the kWarpPerRow kernel serve a decode layer (GemvSwiGlu, GemvQkvRope): the
// two rows an epilogue needs (a feature's gate and up rows, a head's rotation pair) are summed side
// by side in one block, so that SwiGLU, or RoPE and the paged KV write, follow in the same launch
// with the bits of the separate kernels.
// Thread safety: stateless. Nothing allocated.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"

namespace sqz::cuda {

inline constexpr int kGemvMaxRows = 8;

enum class GemvKernel {
  kWarpPerRow,  // the first kernel (fallback, comparison)
  kStreaming,   // persistent single wave, optionally PDL-launched
};

// How Gemv launches on one device: made once by PlanGemv, then read by every call (a plain value;
// copy it freely).
struct GemvPlan {
  GemvKernel kernel = GemvKernel::kStreaming;
  // Launch as a programmatic dependent (PDL) of the previous kernel on the stream (both kernels).
  // The kernel reads only w before waiting for that kernel to complete, so w must not be written
  // by the kernel launched just before it (weights never are); a, bias and out are touched only
  // after the wait. Kernels launched without PDL wait as usual. Captured into CUDA graphs as
  // programmatic edges. The results are the same bits either way.
  bool programmatic_launch = true;
  int sm_count = 0;                      // multiprocessors of the device
  int blocks_per_sm[kGemvMaxRows] = {};  // resident kStreaming blocks per SM, by m - 1
};

// The plan for the current device (queries its SM count and the kernels' occupancy). INTERNAL when
// CUDA fails (no device).
StatusOr<GemvPlan> PlanGemv(GemvKernel kernel, bool programmatic_launch);

// Whether Gemv takes these arguments (m in [1, kGemvMaxRows], k % 8 == 0, a and w 16-byte aligned).
bool GemvSupported(const __nv_bfloat16* a, const __nv_bfloat16* w, int64_t m, int64_t k);

// INVALID_ARGUMENT when !GemvSupported, n < 1, or a kStreaming plan not made by PlanGemv;
// INTERNAL if the launch fails.
template <typename TOut>
Status Gemv(const GemvPlan& plan, const __nv_bfloat16* a, const __nv_bfloat16* w, const TOut* bias,
            int64_t m, int64_t n, int64_t k, TOut* out, cudaStream_t stream);

// The kWarpPerRow kernel (no plan needed), launched normally.
template <typename TOut>
Status Gemv(const __nv_bfloat16* a, const __nv_bfloat16* w, const TOut* bias, int64_t m, int64_t n,
            int64_t k, TOut* out, cudaStream_t stream);

// The MLP's gate/up product and SwiGLU in one launch (decode at few rows): w_gate_up is the fused
// [2 cols][k] weight (gate rows, then up rows), out: [m][cols] bf16,
//   out[r][j] = bf16(silu(g) * u),  g = bf16(a[r] . w[j]),  u = bf16(a[r] . w[cols + j]),
// the same bits as Gemv (kWarpPerRow) into a [m][2 cols] buffer then SwiGlu (elementwise.h), one
// launch and one round trip through memory fewer. Always the kWarpPerRow layout, whatever
// plan.kernel; PDL-launched when plan.programmatic_launch. INVALID_ARGUMENT as Gemv (n = 2 cols),
// or cols < 1; INTERNAL if the launch fails.
Status GemvSwiGlu(const GemvPlan& plan, const __nv_bfloat16* a, const __nv_bfloat16* w_gate_up,
                  int64_t m, int64_t cols, int64_t k, __nv_bfloat16* out, cudaStream_t stream);

// RoPE and the paged KV write for GemvQkvRope (as RopeWritePagedKv's arguments, model_ops.h).
struct QkvRopeArgs {
  int q_heads = 0, kv_heads = 0, head_dim = 0;  // head_dim even
  const int32_t* positions = nullptr;           // [m]: each row's position
  const int32_t* slots = nullptr;               // [m]: each row's slot in the paged pool
  const float* inv_freq = nullptr;              // [head_dim / 2]
  __nv_bfloat16* pool_k = nullptr;              // the paged pool's keys and values of the layer
  __nv_bfloat16* pool_v = nullptr;
};

// The attention's QKV projection, RoPE and the paged KV write in one launch (decode at few rows):
// w_qkv: the fused [n][k] weight, n = (q_heads + 2 kv_heads) * head_dim (query, key, value heads),
// bias: [n] or nullptr; qkv: [m][n] bf16, q and k rotated; the keys and values also written to
// the pool at slots[r]. The same bits as Gemv (kWarpPerRow) into qkv then RopeWritePagedKv with
// row_stride n. Always the kWarpPerRow layout, whatever plan.kernel; PDL-launched when
// plan.programmatic_launch (positions, slots, the pool and qkv touched only after the wait).
// INVALID_ARGUMENT as Gemv, for heads < 1, an odd head_dim or null pointers; INTERNAL if the
// launch fails.
Status GemvQkvRope(const GemvPlan& plan, const __nv_bfloat16* a, const __nv_bfloat16* w_qkv,
                   const __nv_bfloat16* bias, int64_t m, int64_t k, const QkvRopeArgs& rope,
                   __nv_bfloat16* qkv, cudaStream_t stream);

}  // namespace sqz::cuda
