#include "engine/cuda/context_step.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>

#include "engine/cuda/context_kernels.h"
#include "engine/cuda/host_layout.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/model_ops.h"
#include "kernels/cuda/prefill_attention.h"

namespace sqz {
namespace {

using bf16 = __nv_bfloat16;

using host_layout::Align;
using host_layout::At;
using host_layout::Take;

// A SQUEEZED item whose context has a body to select from; a context of only sink and window
// (no clusters) is attended densely, which is what selection would give.
bool IsSqueezed(const StepContext& c) {
  return c.device != nullptr && c.query.squeezed != nullptr && c.device->shape().k > 0;
}

}  // namespace

template <typename T>
ContextStep<T>::~ContextStep() {
  for (cudaEvent_t& e : staged_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
}

template <typename T>
Status ContextStep<T>::Grow(DeviceMemory* m, size_t bytes, const char* what) {
  if (m->bytes() >= bytes) return OkStatus();
  // The old buffer may be in use by the previous step's kernels.
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "ContextStep: grow");
  *m = DeviceMemory();
  SQZ_ASSIGN_OR_RETURN(*m, DeviceMemory::Allocate(Align(bytes * 5 / 4 + 256), what));
  return OkStatus();
}

template <typename T>
Status ContextStep<T>::Prepare(const StepLayout& L, std::span<const StepContext> contexts) {
  contexts_ = contexts;
  const int64_t items = static_cast<int64_t>(L.items.size()), D = L.decode_items;
  const int kvh = s_.kv_heads;
  facts_.assign(items, ContextItemFacts{});
  for (int64_t i = 0; i < items; ++i) {
    const DeviceContext* dc = contexts[i].device;
    if (dc == nullptr) continue;
    const DeviceContextShape& sh = dc->shape();
    ContextItemFacts& f = facts_[i];
    f.has_context = true;
    f.squeezed = IsSqueezed(contexts[i]);
    f.lookup = contexts[i].query.lookup;
    f.kv_budget = contexts[i].query.kv_budget;
    f.n_tokens = sh.n_tokens;
    f.sink_len = sh.sink_len;
    f.body_len = sh.body_len();
    f.window_len = sh.window_len;
    f.largest_cluster = dc->largest_cluster();
    f.k = static_cast<int32_t>(sh.k);
    f.k1 = static_cast<int32_t>(sh.k1);
  }
  plan_ = PlanContextStep(L, facts_, s_.q_heads, kvh, s_.head_dim);
  if (s_.group_lookups) {
    // Lookups are grouped over runs of adjacent items: order each class's items by context.
    std::vector<const void*> context_of(static_cast<size_t>(D));
    for (int64_t i = 0; i < D; ++i) context_of[i] = contexts[i].device;
    OrderClassesByContext(context_of, &plan_);
  }

  host_.clear();
  off_ctx_len_ = Take(&host_, items * 4);
  off_row_slot_ = Take(&host_, L.rows * 4);
  off_row_sel_ = Take(&host_, L.rows * 4);
  off_ctx_k_ = Take(&host_, static_cast<size_t>(s_.layers) * items * sizeof(void*));
  off_ctx_v_ = Take(&host_, static_cast<size_t>(s_.layers) * items * sizeof(void*));
  class_offsets_.clear();
  for (const ContextStepPlan::Class& c : plan_.classes) {
    const size_t n = c.items.size();
    ClassOffsets o;
    o.rows = Take(&host_, n * 4);
    o.values = Take(&host_, static_cast<size_t>(s_.layers) * n * 4);
    o.views = Take(&host_, static_cast<size_t>(s_.layers) * n * sizeof(cuda::SqueezeLayerView),
                   alignof(cuda::SqueezeLayerView));
    // SqueezeSelect reads q rows 16-byte aligned (qkv is; its row stride must be a multiple of 8).
    o.in_place = std::is_same_v<T, bf16> && static_cast<int64_t>(n) == D &&
                 (s_.q_heads + 2 * s_.kv_heads) * s_.head_dim % 8 == 0 &&
                 c.select.max_segments == plan_.full_max_segments;
    for (size_t j = 0; j < n && o.in_place; ++j) {
      o.in_place =
          c.items[j] == static_cast<int32_t>(j) && L.items[j].row0 == static_cast<int64_t>(j);
    }
    if (s_.group_lookups && !c.lookup.hierarchical) {
      // Runs of items over one context (adjacent after OrderClassesByContext; the kernel needs a
      // group's views to agree).
      std::vector<int32_t> starts = {0};
      for (size_t j = 1; j < n; ++j) {
        if (contexts[c.items[j]].device != contexts[c.items[j - 1]].device) {
          starts.push_back(static_cast<int32_t>(j));
        }
      }
      starts.push_back(static_cast<int32_t>(n));
      const int32_t groups = static_cast<int32_t>(starts.size()) - 1;
      if (groups < static_cast<int32_t>(n)) {
        o.groups = Take(&host_, starts.size() * 4);
        std::memcpy(&At<int32_t>(host_, o.groups)[0], starts.data(), starts.size() * 4);
        o.num_groups = groups;
        for (int32_t g = 0; g < groups; ++g) {
          o.max_group = std::max(o.max_group, starts[g + 1] - starts[g]);
        }
      }
    }
    class_offsets_.push_back(o);
  }

  // Per item: context length, K/V pointers per layer; per row: slot and selection index.
  for (int64_t i = 0; i < items; ++i) {
    const StepLayout::Item& item = L.items[i];
    const DeviceContext* dc = contexts[i].device;
    At<int32_t>(host_, off_ctx_len_)[i] = dc ? static_cast<int32_t>(dc->shape().n_tokens) : 0;
    for (int layer = 0; layer < s_.layers; ++layer) {
      At<const void*>(host_, off_ctx_k_)[layer * items + i] = dc ? dc->layer_k(layer) : nullptr;
      At<const void*>(host_, off_ctx_v_)[layer * items + i] = dc ? dc->layer_v(layer) : nullptr;
    }
    const bool squeezed = i < D && facts_[i].squeezed;
    for (int64_t t = 0; t < item.n; ++t) {
      At<int32_t>(host_, off_row_slot_)[item.row0 + t] = dc ? static_cast<int32_t>(i) : -1;
      At<int32_t>(host_, off_row_sel_)[item.row0 + t] = squeezed ? static_cast<int32_t>(i) : -1;
    }
  }
  // Per class: rows, per-layer values and views.
  for (size_t ci = 0; ci < plan_.classes.size(); ++ci) {
    const ContextStepPlan::Class& c = plan_.classes[ci];
    const ClassOffsets& o = class_offsets_[ci];
    const int64_t n = static_cast<int64_t>(c.items.size());
    for (int64_t j = 0; j < n; ++j) {
      const int32_t d = c.items[j];
      const StepContext& sc = contexts[d];
      At<int32_t>(host_, o.rows)[j] = static_cast<int32_t>(L.items[d].row0);
      for (int layer = 0; layer < s_.layers; ++layer) {
        At<float>(host_, o.values)[layer * n + j] = LookupValue(sc.query, layer);
        At<cuda::SqueezeLayerView>(host_, o.views)[layer * n + j] = sc.device->view(layer);
      }
    }
  }

  // Device space: metadata, selections, prefill partials.
  SQZ_RETURN_IF_ERROR(Grow(&meta_, host_.size(), "the context step's metadata"));
  // This staging buffer's last copy (two steps ago) must have left it before it is rewritten.
  const int st = next_staging_;
  next_staging_ ^= 1;
  if (staged_[st] == nullptr) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&staged_[st], cudaEventDisableTiming),
                             "ContextStep: staging event");
  } else {
    SQZ_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(staged_[st]), "ContextStep: staging");
  }
  if (pinned_[st].bytes() < host_.size()) {
    pinned_[st] = PinnedMemory();
    SQZ_ASSIGN_OR_RETURN(pinned_[st], PinnedMemory::Allocate(Align(host_.size() * 5 / 4 + 256),
                                                             "context step metadata staging"));
  }
  if (plan_.any_squeezed()) {
    size_t off = 0;
    auto take = [&](size_t bytes) {
      const size_t o = off;
      off += Align(bytes);
      return o;
    };
    const size_t full = static_cast<size_t>(D) * kvh,
                 compact = static_cast<size_t>(plan_.max_class) * kvh;
    off_full_seg_ = take(full * plan_.full_max_segments * sizeof(int2));
    off_full_num_ = take(full * 4);
    off_full_len_ = take(full * 4);
    off_c_seg_ = take(compact * plan_.full_max_segments * sizeof(int2));
    off_c_num_ = take(compact * 4);
    off_c_len_ = take(compact * 4);
    off_q_ = take(static_cast<size_t>(plan_.max_class) * s_.q_heads * s_.head_dim * sizeof(bf16));
    off_ws_ = take(plan_.select_workspace_bytes);
    SQZ_RETURN_IF_ERROR(Grow(&select_, off, "Squeezed Attention selections"));
  }
  prefill_ws_bytes_ = 0;
  if constexpr (std::is_same_v<T, bf16>) {
    // Key-split workspace of the dense context prefills (sparse ones need none).
    for (int64_t i = D; i < items; ++i) {
      const StepContext& c = contexts[i];
      if (c.device == nullptr ||
          (s_.sparse_prefill && SqueezedPrefill::Applies(c.query, *c.device))) {
        continue;
      }
      prefill_ws_bytes_ =
          std::max(prefill_ws_bytes_,
                   ContextPrefillPlan(L.items[i].n, c.device->shape().n_tokens).workspace_bytes);
    }
  }
  if (plan_.max_prefill_rows > 0) {
    const size_t rows = static_cast<size_t>(plan_.max_prefill_rows) * s_.q_heads;
    off_pf_ctx_stats_ = Align(rows * s_.head_dim * sizeof(T));
    off_pf_own_stats_ = off_pf_ctx_stats_ + Align(rows * sizeof(cpu::AttentionPartial));
    off_pf_ws_ = off_pf_own_stats_ + Align(rows * sizeof(cpu::AttentionPartial));
    SQZ_RETURN_IF_ERROR(
        Grow(&prefill_, off_pf_ws_ + prefill_ws_bytes_, "context prefill partials"));
  }
  // The copy is ordered on the stream after the previous step's kernels, which read meta_.
  std::memcpy(pinned_[st].get(), host_.data(), host_.size());
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_.get(), pinned_[st].get(), host_.size(),
                                           cudaMemcpyHostToDevice, stream_),
                           "ContextStep: metadata");
  SQZ_CUDA_RETURN_IF_ERROR(cudaEventRecord(staged_[st], stream_), "ContextStep: staging event");
  const size_t key_bytes = static_cast<size_t>(std::max<int64_t>(L.rows, 1)) * sizeof(uint64_t);
  SQZ_RETURN_IF_ERROR(Grow(&keys_, key_bytes, "context keys read"));
  if (keys_host_.bytes() < key_bytes) {
    // The previous step's copy into it is complete: the backend synchronised after that step.
    keys_host_ = PinnedMemory();
    SQZ_ASSIGN_OR_RETURN(keys_host_, PinnedMemory::Allocate(keys_.bytes(), "context keys read"));
  }
  return PrepareSparsePrefill(L);
}

template <typename T>
Status ContextStep<T>::PrepareSparsePrefill(const StepLayout& L) {
  sparse_of_.assign(L.items.size(), -1);
  if constexpr (std::is_same_v<T, bf16>) {
    if (!s_.sparse_prefill) return OkStatus();
    size_t used = 0;
    for (size_t i = static_cast<size_t>(L.decode_items); i < L.items.size(); ++i) {
      const StepContext& c = contexts_[i];
      if (c.device == nullptr || !SqueezedPrefill::Applies(c.query, *c.device)) continue;
      if (used == sparse_prefill_.size()) {
        sparse_prefill_.push_back(std::make_unique<SqueezedPrefill>(
            SqueezedPrefill::Shape{s_.q_heads, s_.kv_heads, s_.head_dim, s_.layers, s_.num_sms}));
      }
      SQZ_RETURN_IF_ERROR(sparse_prefill_[used]->Prepare(*c.device, c.query, L.items[i].n,
                                                         L.items[i].cached, stream_));
      sparse_of_[i] = static_cast<int>(used++);
    }
  }
  return OkStatus();
}

template <typename T>
void ContextStep<T>::GraphSignature(std::vector<int64_t>* sig) const {
  auto ptr = [](const void* p) { return static_cast<int64_t>(reinterpret_cast<uintptr_t>(p)); };
  auto add = [sig](std::initializer_list<int64_t> v) { sig->insert(sig->end(), v); };
  add({ptr(meta_.get()), ptr(select_.get()), ptr(prefill_.get()),
       static_cast<int64_t>(prefill_ws_bytes_), ptr(keys_.get()), ptr(keys_host_.get())});
  for (size_t off : {off_ctx_len_, off_row_slot_, off_row_sel_, off_ctx_k_, off_ctx_v_,
                     off_full_seg_, off_full_num_, off_full_len_, off_c_seg_, off_c_num_,
                     off_c_len_, off_q_, off_ws_, plan_.select_workspace_bytes}) {
    sig->push_back(static_cast<int64_t>(off));
  }
  add({plan_.decode_kv_bucket, plan_.full_max_segments, plan_.max_class, plan_.max_prefill_rows,
       static_cast<int64_t>(plan_.classes.size())});
  for (size_t ci = 0; ci < plan_.classes.size(); ++ci) {
    const ContextStepPlan::Class& c = plan_.classes[ci];
    const ClassOffsets& o = class_offsets_[ci];
    uint32_t coverage = 0;
    std::memcpy(&coverage, &c.lookup.coarse_coverage, 4);
    add({static_cast<int64_t>(c.lookup.policy), static_cast<int64_t>(c.lookup.reduce),
         c.lookup.hierarchical, coverage, static_cast<int64_t>(c.items.size()), c.max_clusters,
         c.max_coarse, c.select.fine_chunks, c.select.block_rows, c.select.coarse_chunks,
         c.select.max_segments, static_cast<int64_t>(c.select.workspace_bytes),
         static_cast<int64_t>(o.rows), static_cast<int64_t>(o.values),
         static_cast<int64_t>(o.views), o.in_place, static_cast<int64_t>(o.groups), o.num_groups,
         o.max_group});
  }
}

template <typename T>
cuda::PrefillAttentionPlan ContextStep<T>::ContextPrefillPlan(int64_t n_q, int64_t n_ctx) const {
  cuda::PrefillAttentionParams c;
  c.n_q = n_q;
  c.n_kv = n_ctx;
  c.n_q_heads = s_.q_heads;
  c.n_kv_heads = s_.kv_heads;
  c.head_dim = s_.head_dim;
  c.causal = false;
  return s_.context_prefill_kv_splits == 0
             ? cuda::PlanPrefillAttention(c, s_.num_sms)
             : cuda::PlanPrefillAttentionSplits(c, s_.context_prefill_kv_splits);
}

template <typename T>
cuda::SqueezeSelection ContextStep<T>::Full() const {
  char* b = select_.get<char>();
  return {reinterpret_cast<int2*>(b + off_full_seg_), reinterpret_cast<int32_t*>(b + off_full_num_),
          reinterpret_cast<int32_t*>(b + off_full_len_), nullptr};
}

template <typename T>
cuda::ContextSegments ContextStep<T>::FullSegments() const {
  const cuda::SqueezeSelection full = Full();
  return cuda::ContextSegments{full.segments, full.num_segments, full.selected_len,
                               plan_.full_max_segments};
}

template <typename T>
cuda::SqueezeSelection ContextStep<T>::Compact() const {
  char* b = select_.get<char>();
  return {reinterpret_cast<int2*>(b + off_c_seg_), reinterpret_cast<int32_t*>(b + off_c_num_),
          reinterpret_cast<int32_t*>(b + off_c_len_), nullptr};
}

template <typename T>
Status ContextStep<T>::Select(const StepLayout& L, int layer, const Buffers& b) {
  if (!plan_.any_squeezed()) return OkStatus();
  const cuda::SqueezeSelection full = Full(), compact = Compact();
  const char* meta = meta_.get<char>();
  const int D = static_cast<int>(L.decode_items);
  if (layer == 0) {
    SQZ_RETURN_IF_ERROR(
        cuda_ctx::InitDenseSelection(reinterpret_cast<const int32_t*>(meta + off_ctx_len_), D,
                                     s_.kv_heads, full, plan_.full_max_segments, stream_));
  }
  bf16* q = reinterpret_cast<bf16*>(select_.get<char>() + off_q_);
  const int q_dim = s_.q_heads * s_.head_dim;
  for (size_t ci = 0; ci < plan_.classes.size(); ++ci) {
    const ContextStepPlan::Class& c = plan_.classes[ci];
    const ClassOffsets& o = class_offsets_[ci];
    const int n = static_cast<int>(c.items.size());
    const int32_t* rows = reinterpret_cast<const int32_t*>(meta + o.rows);
    cuda::SqueezeSelectParams p;
    p.batch = n;
    p.n_q_heads = s_.q_heads;
    p.n_kv_heads = s_.kv_heads;
    p.head_dim = s_.head_dim;
    p.scale = 1.0f / std::sqrt(static_cast<float>(s_.head_dim));
    if (o.in_place) {
      p.q = reinterpret_cast<const bf16*>(b.qkv);
      p.q_stride = b.qkv_dim;
    } else {
      SQZ_RETURN_IF_ERROR(
          cuda_ctx::GatherQueryRows<T>(b.qkv, b.qkv_dim, rows, n, q_dim, q, stream_));
      p.q = q;
      p.q_stride = q_dim;
    }
    p.views = reinterpret_cast<const cuda::SqueezeLayerView*>(meta + o.views) +
              static_cast<int64_t>(layer) * n;
    p.policy = c.lookup.policy;
    p.reduce = c.lookup.reduce;
    p.per_request_value =
        reinterpret_cast<const float*>(meta + o.values) + static_cast<int64_t>(layer) * n;
    p.hierarchical = c.lookup.hierarchical;
    p.coarse_coverage = c.lookup.coarse_coverage;
    p.max_clusters = c.max_clusters;
    p.max_coarse = c.lookup.hierarchical ? c.max_coarse : 0;
    if (o.num_groups > 0) {
      p.group_starts = reinterpret_cast<const int32_t*>(meta + o.groups);
      p.num_groups = o.num_groups;
      p.max_group_size = o.max_group;
    }
    const cuda::SqueezeSelectPlan plan = cuda::PlanSqueezeSelect(p, s_.num_sms);
    if (o.in_place && plan.max_segments != plan_.full_max_segments) {
      return InternalError("ContextStep: a lookup's segment capacity differs from its plan's");
    }
    SQZ_RETURN_IF_ERROR(cuda::SqueezeSelect(p, plan, o.in_place ? full : compact,
                                            select_.get<char>() + off_ws_,
                                            plan_.select_workspace_bytes, stream_));
    if (o.in_place) continue;
    // Scatter by decode item index: the layout's decode rows are the decode item indices.
    SQZ_RETURN_IF_ERROR(cuda_ctx::ScatterSelection(compact, plan.max_segments, rows, n, s_.kv_heads,
                                                   full, plan_.full_max_segments, stream_));
  }
  return OkStatus();
}

template <typename T>
Status ContextStep<T>::PrefillItem(const StepLayout& L, size_t i, int layer, const Buffers& b) {
  const StepLayout::Item& item = L.items[i];
  const int d = s_.head_dim, q_dim = s_.q_heads * d, kv_dim = s_.kv_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const DeviceContext* dc = contexts_[i].device;
  cuda::PrefillAttentionParams p;
  p.q = reinterpret_cast<const bf16*>(b.qkv) + item.row0 * b.qkv_dim;
  p.q_token_stride = b.qkv_dim;
  const int32_t* block_ids = b.meta + L.off_block_ids;
  if (item.cached == 0) {
    p.k = reinterpret_cast<const bf16*>(b.qkv) + item.row0 * b.qkv_dim + q_dim;
    p.v = p.k + kv_dim;
    p.kv_token_stride = b.qkv_dim;
  } else {
    SQZ_RETURN_IF_ERROR(cuda::GatherPagedKv<T>(b.pool_k, b.pool_v, block_ids + item.table,
                                               item.cached + item.n, s_.kv_heads, d, b.kbuf, b.vbuf,
                                               stream_));
    p.k = reinterpret_cast<const bf16*>(b.kbuf);
    p.v = reinterpret_cast<const bf16*>(b.vbuf);
    p.kv_token_stride = kv_dim;
  }
  p.kv_head_stride = d;
  p.n_q = item.n;
  p.n_kv = item.cached + item.n;
  p.n_q_heads = s_.q_heads;
  p.n_kv_heads = s_.kv_heads;
  p.head_dim = d;
  p.scale = scale;
  p.causal = true;
  p.q_offset = item.cached;
  bf16* out = reinterpret_cast<bf16*>(b.attn) + item.row0 * q_dim;
  if (dc == nullptr) return cuda::PrefillAttention<bf16>(p, out, q_dim, nullptr, stream_);
  char* base = prefill_.get<char>();
  bf16* ctx_o = reinterpret_cast<bf16*>(base);
  auto* st_ctx = reinterpret_cast<cpu::AttentionPartial*>(base + off_pf_ctx_stats_);
  auto* st_own = reinterpret_cast<cpu::AttentionPartial*>(base + off_pf_own_stats_);
  void* split_ws = base + off_pf_ws_;
  SQZ_RETURN_IF_ERROR(cuda::PrefillAttention<bf16>(p, out, q_dim, st_own, stream_));
  if (sparse_of_[i] >= 0) {
    // SQUEEZED: each block of query tokens attends to its selected context rows only.
    SQZ_RETURN_IF_ERROR(
        sparse_prefill_[sparse_of_[i]]->Run(layer, p.q, p.q_token_stride, ctx_o, q_dim, st_ctx,
                                            keys_.get<unsigned long long>() + item.row0, stream_));
    return cuda::MergeAttentionPartials<bf16>(out, st_own, ctx_o, st_ctx, item.n * s_.q_heads, d,
                                              stream_);
  }
  // Every context row precedes every own token: non-causal over the head-major context rows.
  cuda::PrefillAttentionParams c = p;
  const int64_t n = dc->shape().n_tokens;
  c.k = static_cast<const bf16*>(dc->layer_k(layer));
  c.v = static_cast<const bf16*>(dc->layer_v(layer));
  c.kv_token_stride = d;
  c.kv_head_stride = n * d;
  c.n_kv = n;
  c.causal = false;
  c.q_offset = 0;
  // Split over ranges of context keys when the query tiles alone leave the GPU idle (Prepare sized
  // the workspace for this plan).
  const cuda::PrefillAttentionPlan plan = ContextPrefillPlan(item.n, n);
  if (plan.workspace_bytes > prefill_ws_bytes_) {
    return InternalError("ContextStep: a context prefill's key-split workspace exceeds its plan's");
  }
  SQZ_RETURN_IF_ERROR(cuda::PrefillAttention<bf16>(c, plan, ctx_o, q_dim, st_ctx, split_ws,
                                                   prefill_ws_bytes_, stream_));
  return cuda::MergeAttentionPartials<bf16>(out, st_own, ctx_o, st_ctx, item.n * s_.q_heads, d,
                                            stream_);
}

template <typename T>
Status ContextStep<T>::Attention(const StepLayout& L, int layer, const Buffers& b) {
  auto* keys = keys_.get<unsigned long long>();
  if (layer == 0) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(keys, 0, L.rows * sizeof(uint64_t), stream_),
                             "ContextStep: keys read");
  }
  SQZ_RETURN_IF_ERROR(Select(L, layer, b));
  const char* meta = meta_.get<char>();
  const int64_t items = static_cast<int64_t>(L.items.size());
  const int d = s_.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const auto* ctx_len = reinterpret_cast<const int32_t*>(meta + off_ctx_len_);
  const auto* ctx_k = reinterpret_cast<const T* const*>(meta + off_ctx_k_) + layer * items;
  const auto* ctx_v = reinterpret_cast<const T* const*>(meta + off_ctx_v_) + layer * items;
  const bool all_simple = std::is_same_v<T, float>;
  const int64_t simple_rows = all_simple ? L.rows : (s_.decode_kernel_fits ? 0 : L.decode_items);
  if (simple_rows > 0) {
    cuda_ctx::ContextAttentionParams<T> p;
    p.q = b.qkv;
    p.q_stride = b.qkv_dim;
    p.rows = simple_rows;
    p.q_heads = s_.q_heads;
    p.kv_heads = s_.kv_heads;
    p.head_dim = d;
    p.scale = scale;
    p.row_keys = b.meta + L.off_row_keys;
    p.row_table = b.meta + L.off_row_table;
    p.block_ids = b.meta + L.off_block_ids;
    p.pool_k = b.pool_k;
    p.pool_v = b.pool_v;
    p.row_slot = reinterpret_cast<const int32_t*>(meta + off_row_slot_);
    p.ctx_len = ctx_len;
    p.ctx_k = ctx_k;
    p.ctx_v = ctx_v;
    if (plan_.any_squeezed()) {
      p.row_sel = reinterpret_cast<const int32_t*>(meta + off_row_sel_);
      p.sparse = FullSegments();
    }
    p.context_keys = keys;
    SQZ_RETURN_IF_ERROR(
        cuda_ctx::ContextAttentionSimple<T>(p, b.attn, int64_t{s_.q_heads} * d, stream_));
  }
  if constexpr (std::is_same_v<T, bf16>) {
    if (L.decode_items > 0 && simple_rows == 0) {
      cuda::DecodeAttentionParams p;
      p.batch = static_cast<int>(L.decode_items);
      p.n_q_heads = s_.q_heads;
      p.n_kv_heads = s_.kv_heads;
      p.head_dim = d;
      p.scale = scale;
      p.q = b.qkv;
      p.q_stride = b.qkv_dim;
      p.ctx_len = ctx_len;
      p.ctx_k = ctx_k;
      p.ctx_v = ctx_v;
      p.own_len = b.meta + L.off_own_len;
      p.block_indptr = b.meta + L.off_indptr;
      p.block_ids = b.meta + L.off_block_ids;
      p.pool_k = b.pool_k;
      p.pool_v = b.pool_v;
      p.max_kv_len = plan_.decode_kv_bucket;
      if (plan_.any_squeezed()) {
        p.sparse = FullSegments();
      }
      p.context_keys = keys;  // decode item r is layout row r
      // Fewer, longer chunks where the partials would not fit the workspace.
      const cuda::DecodePlan plan =
          cuda::PlanDecodeAttentionWithin(p, s_.num_sms, b.decode_ws_bytes);
      SQZ_RETURN_IF_ERROR(cuda::DecodeAttention<bf16>(p, plan, b.attn, nullptr, b.decode_ws,
                                                      b.decode_ws_bytes, stream_));
    }
    for (size_t i = L.decode_items; i < L.items.size(); ++i) {
      SQZ_RETURN_IF_ERROR(PrefillItem(L, i, layer, b));
    }
  }
  if (layer == s_.layers - 1) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(keys_host_.get(), keys, L.rows * sizeof(uint64_t),
                                             cudaMemcpyDeviceToHost, stream_),
                             "ContextStep: keys read");
  }
  return OkStatus();
}

template <typename T>
void ContextStep<T>::CountUsage(const StepLayout& L) const {
  const auto* keys = keys_host_.get<uint64_t>();
  const int64_t layers = s_.layers, kvh = s_.kv_heads;
  for (size_t i = 0; i < L.items.size() && i < contexts_.size(); ++i) {
    const StepContext& c = contexts_[i];
    if (c.device == nullptr || c.query.attention == nullptr) continue;
    const StepLayout::Item& item = L.items[i];
    const DeviceContextShape& sh = c.device->shape();
    const int64_t n_ctx = sh.n_tokens;
    int64_t read = 0;
    for (int64_t r = item.row0; r < item.row0 + item.n; ++r) read += static_cast<int64_t>(keys[r]);
    const bool decode = static_cast<int64_t>(i) < L.decode_items;
    // Tokens whose context part came from a lookup: a SQUEEZED decode row, a sparse prefill's
    // tokens. A bf16 prefill item without a sparse prefill read the whole context on a path that
    // counts nothing on the device (fp32 ones run the counting simple kernel).
    int64_t looked_up = 0;
    if (decode) {
      looked_up = facts_[i].squeezed ? item.n : 0;
    } else if (sparse_of_[i] >= 0) {
      looked_up = item.n;
    } else if constexpr (std::is_same_v<T, bf16>) {
      read += item.n * kvh * layers * n_ctx;
    }
    // Centroids scored per lookup, half a key each: every head's k fine ones (and its coarse
    // ones in a hierarchical lookup, where the CPU counts only the fine ones under kept coarse
    // groups, so this bounds the GPU's reads from above). From the device copy's shape: the host
    // snapshot may hold no heads (a context made on the device).
    const int64_t centroids = layers * kvh * (sh.k + (c.query.lookup.hierarchical ? sh.k1 : 0));
    c.query.attention->CountUsage(2 * read + looked_up * centroids, item.n * kvh * layers * n_ctx);
  }
}

template class ContextStep<float>;
template class ContextStep<__nv_bfloat16>;

}  // namespace sqz
