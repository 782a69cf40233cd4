// Device-side helpers shared by the .cu files of kernels/cuda: type conversion, warp and block
// reductions, grid sizing. Internal to this library (not included by its users).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace sqz::cuda::internal {

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// SiLU in fp32, as the SwiGLU kernels (elementwise.cu, gemv.cu) compute it: one definition so that
// the fused and the separate paths give the same bits.
__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// scratch: 32 floats of shared memory. Contains __syncthreads: call from all threads.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(v);
}

// RoPE of one rotation pair of values (Hugging Face rotate_half layout: elements i and i + half of
// a head), angle = position * inv_freq_i, fp32 math with every product and sum rounded on its own
// (no contraction into FMAs, so that every kernel that rotates gives the same bits), one rounding
// to T each.
template <typename T>
__device__ __forceinline__ void RotateValues(float x0, float x1, float position, float inv_freq_i,
                                             T* r0, T* r1) {
  float s, c;
  sincosf(position * inv_freq_i, &s, &c);
  *r0 = FromFloat<T>(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
  *r1 = FromFloat<T>(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s)));
}

// RotateValues of the pair (i, i + half) of the head at `head`, in place. The rotated values are
// also returned (the paged KV write stores them without reading them back).
template <typename T>
__device__ __forceinline__ void RotatePair(T* head, int64_t i, int64_t half, float position,
                                           float inv_freq_i, T* r0, T* r1) {
  RotateValues(ToFloat(head[i]), ToFloat(head[i + half]), position, inv_freq_i, r0, r1);
  head[i] = *r0;
  head[i + half] = *r1;
}

// Programmatic dependent launch (PDL, sm_90). A kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start before the previous kernel on its
// stream has completed; WaitForPriorGrid blocks until that kernel has completed and its writes
// are visible, so nothing that kernel writes (or reads and this one writes) may be touched before
// it. AllowDependentLaunch lets such a dependent of this kernel be scheduled once every block of
// this kernel has called it (the dependent still waits for this kernel's completion before it
// reads its results). Both are no-ops for kernels launched normally.
__device__ __forceinline__ void WaitForPriorGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...); with `programmatic`, as a programmatic
// dependent (PDL) of the previous kernel on the stream: the kernel must call WaitForPriorGrid
// (in every block that touches memory, before it does) and may prefetch only data that kernel
// neither writes nor reads. Recorded into CUDA graphs as a programmatic edge.
template <typename... KernelArgs, typename... Args>
cudaError_t Launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, bool programmatic, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// Blocks for a grid-stride loop over n items with `threads` per block: enough to fill the device
// several times over, never more than needed.
inline unsigned GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 132 * 16));
}

}  // namespace sqz::cuda::internal
