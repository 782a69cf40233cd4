// ContextStep: the attention of one CUDA-backend step in which some sequences have a fixed context
// (a resident DeviceContext), per layer:
//   1. SQUEEZED decode items: per lookup class (context_plan.h), their query rows are gathered, one
//      SqueezeSelect runs over them (batched across requests and contexts, per-request budget or
//      threshold; with Shape::group_lookups, the requests over one context scored together),
//      and the selections are scattered into the step's per-decode-item segment lists (a class of
//      every decode item in order, as at batch 1, skips the gather and the scatter); DENSE items
//      get one segment covering their whole context, items without one get none.
//   2. bf16 decode items: one DecodeAttention over [context (dense rows, or the segment lists when
//      any item is SQUEEZED)] + [own tokens in the paged pool], split-K.
//   3. bf16 prefill items (several new tokens) with a context: PrefillAttention non-causal over
//      every context row (with (m, l); split over ranges of context keys when few query tiles would
//      leave the GPU idle, Shape::context_prefill_kv_splits), causal PrefillAttention over the own
//      keys (with (m, l)), merged exactly (MergeAttentionPartials). SQUEEZED requests with
//      Shape::sparse_prefill and a flat lookup replace the context part by SqueezedPrefill
//      (context_prefill.h: one selection per block of query tokens, attention over the selected
//      rows); otherwise they prefill densely.
//   4. fp32 (the exactness mode), and bf16 decode when the decode kernel lacks the model's GQA
//      group: ContextAttentionSimple (context keys, then own keys, one online softmax, fp32 math).
// No host synchronisation inside a step: Prepare makes the step's metadata on the host and copies
// it in one transfer before the layers run, through one of two pinned staging buffers that it
// reuses only after an event says the copy out of it finished (so it waits for nothing in steady
// decode); Attention only enqueues kernels.
//
// CUDA graphs: the launches Attention enqueues read every per-request value (context pointers and
// lengths, lookup views and values, query rows) from the device metadata, so a decode step's
// launches depend only on what GraphSignature lists: the plan's sizes (lookup classes, segment
// capacity, the decode key bucket, workspace sizes) and the device buffers with their offsets. The
// backend replays a captured step only while that signature is unchanged (a grown buffer, another
// mix of classes or another key bucket make a new one).
//
// Keys read: every kernel that attends to a context adds, per row, the context keys it read
// (over kv heads and layers) into a device counter; the last layer copies the counters to pinned
// memory, and CountUsage, after the step, adds each item's keys (plus the centroids its lookups
// scored, half a key each; DENSE context prefill counted on the host) to its request's attention
// (SnapshotAttention::CountUsage), as the CPU backend counts them.
//
// Memory: buffers grow (never shrink) to the largest step seen, so the first step of a new shape
// may allocate; steady decode does not. Ownership: borrows the DeviceContexts for the step (the
// backend keeps them resident while sequences use them). Thread safety: one thread (the backend's).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/status.h"
#include "engine/cuda/context_plan.h"
#include "engine/cuda/context_prefill.h"
#include "engine/cuda/device_context.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/paged_sequences.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz {

// One layout item's fixed context in a step (StepLayout::items order).
struct StepContext {
  const DeviceContext* device = nullptr;  // null: the item has no context
  DeviceContextQuery query;
};

template <typename T>
class ContextStep {
 public:
  struct Shape {
    int layers = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
    int num_sms = 1;
    bool decode_kernel_fits = true;  // head_dim and group compiled in DecodeAttention
    bool sparse_prefill = false;     // SQUEEZED prefill items select per query block (bf16)
    // Key splits of the dense context part of a prefill item (CudaBackendOptions has the same
    // field): 0 lets cuda::PlanPrefillAttention choose, 1 never splits, n > 1 forces n.
    int context_prefill_kv_splits = 0;
    // SQUEEZED decode items of one lookup class that share a context are scored together
    // (SqueezeSelectParams::group_starts: the context's centroids read once per group instead of
    // once per request; flat lookups; the selections are bit-identical). The class's items are
    // ordered by context first (OrderClassesByContext), so interleaved requests of a few contexts
    // make a few groups; a class so reordered gathers its query rows instead of reading them in
    // place.
    bool group_lookups = false;
  };
  // The backend's buffers a step's attention reads and writes (device memory).
  struct Buffers {
    const T* qkv = nullptr;  // [rows][qkv_dim], post-RoPE
    int64_t qkv_dim = 0;
    T* attn = nullptr;              // [rows][q_dim] output
    const int32_t* meta = nullptr;  // the StepLayout ints on the device
    const T* pool_k = nullptr;      // this layer's paged pool
    const T* pool_v = nullptr;
    T* kbuf = nullptr;  // [max_seq][kv_dim] gather space for a prefill item's own keys
    T* vbuf = nullptr;
    void* decode_ws = nullptr;
    size_t decode_ws_bytes = 0;
  };

  ContextStep(const Shape& shape, cudaStream_t stream) : s_(shape), stream_(stream) {}
  // Turns the sparse prefill of SQUEEZED items on or off from the next step on (benchmarks compare
  // both on one backend and one resident context).
  void set_sparse_prefill(bool on) { s_.sparse_prefill = on; }
  // The same for Shape::context_prefill_kv_splits (>= 0).
  void set_context_prefill_kv_splits(int splits) { s_.context_prefill_kv_splits = splits; }
  // The same for Shape::group_lookups.
  void set_group_lookups(bool on) { s_.group_lookups = on; }
  ContextStep(const ContextStep&) = delete;
  ContextStep& operator=(const ContextStep&) = delete;
  ~ContextStep();

  // Plans the step (contexts: [L.items.size()]) and copies its metadata to the device.
  Status Prepare(const StepLayout& L, std::span<const StepContext> contexts);
  // Enqueues the attention of every row at `layer` into b.attn.
  Status Attention(const StepLayout& L, int layer, const Buffers& b);
  // Appends to *sig (after Prepare) every host value that Attention's launches for the prepared
  // step depend on, besides the layout and b: two steps with equal signatures (and equal layouts
  // and buffers) enqueue the same kernels with the same arguments.
  void GraphSignature(std::vector<int64_t>* sig) const;
  // After the step's work on the stream is complete (the backend synchronised): adds each item's
  // context keys read in the step to its request's attention.
  void CountUsage(const StepLayout& L) const;

 private:
  struct ClassOffsets {  // of a class's arrays in the step's metadata
    size_t rows = 0, values = 0, views = 0;
    // The class is every decode item in row order (always so at batch 1) and T is bf16: its
    // lookup reads the query rows in place and writes the step's lists (no gather, no scatter).
    bool in_place = false;
    // Shape::group_lookups: runs of adjacent items over one context, as group_starts [num_groups
    // + 1] at `groups`; num_groups 0 when no run is longer than one item (per-request scoring).
    size_t groups = 0;
    int32_t num_groups = 0, max_group = 0;
  };
  Status Grow(DeviceMemory* m, size_t bytes, const char* what);
  Status Select(const StepLayout& L, int layer, const Buffers& b);
  Status PrefillItem(const StepLayout& L, size_t i, int layer, const Buffers& b);
  // Plans and uploads the sparse prefill of the step's SQUEEZED prefill items (sparse_of_).
  Status PrepareSparsePrefill(const StepLayout& L);
  // The plan of the non-causal PrefillAttention of n_q query tokens over a dense context of n_ctx
  // rows (Shape::context_prefill_kv_splits).
  cuda::PrefillAttentionPlan ContextPrefillPlan(int64_t n_q, int64_t n_ctx) const;
  cuda::SqueezeSelection Full() const;
  cuda::SqueezeSelection Compact() const;
  // The full selection as DecodeAttention (and the simple kernel) read it.
  cuda::ContextSegments FullSegments() const;

  Shape s_;  // fixed at construction but for the fields the set_* calls above change
  cudaStream_t stream_;
  std::span<const StepContext> contexts_;  // the current step's
  std::vector<ContextItemFacts> facts_;    // ... as the planner sees them
  ContextStepPlan plan_;
  std::vector<ClassOffsets> class_offsets_;  // [plan_.classes.size()]
  std::vector<char> host_;                   // the step's metadata before the upload
  size_t off_ctx_len_ = 0, off_row_slot_ = 0, off_row_sel_ = 0, off_ctx_k_ = 0, off_ctx_v_ = 0;
  DeviceMemory meta_;  // host_ on the device
  // Staging of host_, used in turn; staged_[i] is recorded after the copy out of pinned_[i]
  // (null until its first use).
  PinnedMemory pinned_[2];
  cudaEvent_t staged_[2] = {nullptr, nullptr};
  int next_staging_ = 0;
  DeviceMemory select_;  // segment lists (full, compact), gathered q, lookup workspace
  // A prefill item's context partial [max_prefill_rows][q_heads][head_dim], its (m, l) and its own
  // tokens' (m, l) ([max_prefill_rows][q_heads] each), then prefill_ws_bytes_ of key-split
  // workspace (the largest of the step's dense context prefills).
  DeviceMemory prefill_;
  size_t prefill_ws_bytes_ = 0;
  // Byte offsets in prefill_ (set by Prepare): the context's (m, l), the own tokens' (m, l), the
  // key-split workspace; the context partial starts at 0.
  size_t off_pf_ctx_stats_ = 0, off_pf_own_stats_ = 0, off_pf_ws_ = 0;
  // Sparse prefill (Shape::sparse_prefill): one SqueezedPrefill per prefill item of the step that
  // runs sparse (reused across steps); sparse_of_[item] indexes it, -1 for dense context rows.
  std::vector<std::unique_ptr<SqueezedPrefill>> sparse_prefill_;
  std::vector<int> sparse_of_;
  // Context keys read per layout row in the current step ([rows] counters), and their host copy.
  DeviceMemory keys_;
  PinnedMemory keys_host_;
  size_t off_full_seg_ = 0, off_full_num_ = 0, off_full_len_ = 0, off_c_seg_ = 0, off_c_num_ = 0,
         off_c_len_ = 0, off_q_ = 0, off_ws_ = 0;
};

}  // namespace sqz
