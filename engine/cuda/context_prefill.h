// Sparse prefill of a SQUEEZED request over its fixed context (ALGORITHM.md online steps 4-5 for a
// block of query tokens), as the CPU's SqueezedContextAttention does it: the new tokens of one
// prefill item are cut into runs that share a block_size-aligned block of request positions; each
// (block, kv head) gets one selection (SqueezeSelect in block mode: probability estimates averaged
// over the block's tokens) and attends to sink + selected clusters + window only
// (SparsePrefillAttention). The result is the context's partial (o, m, l) per (token, query head),
// which the caller merges with the causal attention over the request's own tokens, exactly as it
// does with the dense context partial.
//
// Scope: bf16 steps, flat lookups (budget or threshold, GQA max or mean). A hierarchical lookup of
// blocks is not built on the GPU; such requests prefill densely (Applies says which).
//
// Usage, per step and prefill item: Prepare (host metadata for every layer, one upload), then
// Run once per layer. Memory: device buffers grow to the largest item seen and are reused; nothing
// is allocated by Run. Ownership: the metadata holds the DeviceContext's device pointers, so the
// context must stay resident until the step's kernels have run (the backend keeps it). Thread
// safety: one thread (the backend's); Prepare synchronises the stream before it rewrites its
// staging buffer, Run only enqueues kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/cuda/context_plan.h"
#include "engine/cuda/device_context.h"
#include "engine/cuda/device_memory.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/sparse_prefill_attention.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz {

class SqueezedPrefill {
 public:
  struct Shape {
    int q_heads = 0;
    int kv_heads = 0;
    int head_dim = 0;
    int layers = 0;
    int num_sms = 0;
  };

  explicit SqueezedPrefill(const Shape& shape) : s_(shape) {}

  // Whether a prefill item with this context query runs sparse (SQUEEZED, flat lookup, a context
  // with a body to select from).
  static bool Applies(const DeviceContextQuery& query, const DeviceContext& context);

  // Token offsets [0 = b_0 < b_1 < ... < b_nb = n] of the blocks of n tokens whose first one sits
  // at request position first_pos: a block ends where a position is a multiple of block_size
  // (the CPU's blocks, engine/squeeze/squeezed_attention.cc). n >= 1, block_size >= 1.
  static std::vector<int32_t> BlockStarts(int64_t n, int64_t first_pos, int64_t block_size);

  // Plans and uploads the item's metadata: n new tokens at request position first_pos over
  // `context` with `query` (Applies must hold). RESOURCE_EXHAUSTED when a buffer cannot grow.
  Status Prepare(const DeviceContext& context, const DeviceContextQuery& query, int64_t n,
                 int64_t first_pos, cudaStream_t stream);

  // Layer `layer`: q rows of the item's tokens (token t, head h at q + t * q_stride + h * d);
  // writes the context partial to out (token t at out + t * out_stride) and stats [n][q_heads].
  // context_keys (nullable, device): adds the context keys the tokens attend (over kv heads).
  Status Run(int layer, const __nv_bfloat16* q, int64_t q_stride, __nv_bfloat16* out,
             int64_t out_stride, cpu::AttentionPartial* stats, unsigned long long* context_keys,
             cudaStream_t stream) const;

  int num_blocks() const { return num_blocks_; }

 private:
  Status Grow(DeviceMemory* m, size_t bytes, const char* what, cudaStream_t stream);

  const Shape s_;
  LookupClass lookup_;
  int num_blocks_ = 0;
  int32_t max_block_tokens_ = 0;
  int32_t max_clusters_ = 0;
  int64_t max_selected_ = 0;
  cuda::SqueezeSelectPlan select_plan_;
  cuda::SparsePrefillPlan attn_plan_;
  // Offsets into meta_ (staged in host_/pinned_): block_starts [nb + 1], ctx_len [nb], and per
  // layer views, values, ctx_k, ctx_v [layers][nb].
  size_t off_starts_ = 0, off_len_ = 0, off_views_ = 0, off_values_ = 0, off_k_ = 0, off_v_ = 0;
  // Offsets into out_: segments [nb][kvh][max_segments], num_segments, selected_len [nb][kvh].
  size_t off_segs_ = 0, off_nseg_ = 0, off_sel_len_ = 0;
  std::vector<char> host_;
  PinnedMemory pinned_;
  DeviceMemory meta_, out_, workspace_;
  size_t workspace_bytes_ = 0;
};

}  // namespace sqz
