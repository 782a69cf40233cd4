#include "engine/cuda/context_prefill.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "engine/cuda/host_layout.h"
#include "kernels/cuda/cuda_status.h"

namespace sqz {
namespace {

using bf16 = __nv_bfloat16;

using host_layout::Align;
using host_layout::At;
using host_layout::Take;

}  // namespace

bool SqueezedPrefill::Applies(const DeviceContextQuery& query, const DeviceContext& context) {
  return query.squeezed != nullptr && !query.lookup.hierarchical && context.shape().k > 0;
}

std::vector<int32_t> SqueezedPrefill::BlockStarts(int64_t n, int64_t first_pos,
                                                  int64_t block_size) {
  std::vector<int32_t> starts = {0};
  for (int64_t t = 0; t < n;) {
    const int64_t pos = first_pos + t;
    t = std::min(n, t + (block_size - pos % block_size));
    starts.push_back(static_cast<int32_t>(t));
  }
  return starts;
}

Status SqueezedPrefill::Grow(DeviceMemory* m, size_t bytes, const char* what,
                             cudaStream_t stream) {
  if (m->bytes() >= bytes) return OkStatus();
  // The old buffer may still be read by the previous step's kernels.
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "SqueezedPrefill: grow");
  *m = DeviceMemory();
  SQZ_ASSIGN_OR_RETURN(*m, DeviceMemory::Allocate(Align(bytes * 5 / 4 + 256), what));
  return OkStatus();
}

Status SqueezedPrefill::Prepare(const DeviceContext& context, const DeviceContextQuery& query,
                                int64_t n, int64_t first_pos, cudaStream_t stream) {
  if (!Applies(query, context) || n < 1) {
    return InternalError("SqueezedPrefill::Prepare: not a sparse prefill item");
  }
  lookup_ = query.lookup;
  const DeviceContextShape& sh = context.shape();
  const int64_t block_size = query.squeezed->options().block_size;
  const std::vector<int32_t> starts = BlockStarts(n, first_pos, block_size);
  const int nb = static_cast<int>(starts.size()) - 1;
  const int L = s_.layers, kvh = s_.kv_heads;
  num_blocks_ = nb;
  max_block_tokens_ = static_cast<int32_t>(std::min<int64_t>(n, block_size));
  max_clusters_ = static_cast<int32_t>(sh.k);
  max_selected_ = cuda::SqueezeMaxSelectedKeys(query.lookup.policy, query.kv_budget, sh.sink_len,
                                               sh.body_len(), sh.window_len,
                                               context.largest_cluster());

  // Host metadata for every layer, uploaded once.
  host_.clear();
  off_starts_ = Take(&host_, (nb + 1) * sizeof(int32_t));
  off_len_ = Take(&host_, nb * sizeof(int32_t));
  off_views_ = Take(&host_, size_t(L) * nb * sizeof(cuda::SqueezeLayerView),
                    alignof(cuda::SqueezeLayerView));
  off_values_ = Take(&host_, size_t(L) * nb * sizeof(float));
  off_k_ = Take(&host_, size_t(L) * nb * sizeof(void*));
  off_v_ = Take(&host_, size_t(L) * nb * sizeof(void*));
  std::memcpy(host_.data() + off_starts_, starts.data(), starts.size() * sizeof(int32_t));
  for (int b = 0; b < nb; ++b) At<int32_t>(host_, off_len_)[b] = static_cast<int32_t>(sh.n_tokens);
  for (int layer = 0; layer < L; ++layer) {
    const cuda::SqueezeLayerView view = context.view(layer);
    const float value = LookupValue(query, layer);
    for (int b = 0; b < nb; ++b) {
      const size_t i = size_t(layer) * nb + b;
      At<cuda::SqueezeLayerView>(host_, off_views_)[i] = view;
      At<float>(host_, off_values_)[i] = value;
      At<const void*>(host_, off_k_)[i] = context.layer_k(layer);
      At<const void*>(host_, off_v_)[i] = context.layer_v(layer);
    }
  }

  SQZ_RETURN_IF_ERROR(Grow(&meta_, host_.size(), "sparse prefill metadata", stream));

  // Plans (sizes only) from the parameters Run will pass.
  cuda::SqueezeSelectParams sp;
  sp.batch = nb;
  sp.n_q_heads = s_.q_heads;
  sp.n_kv_heads = kvh;
  sp.head_dim = s_.head_dim;
  sp.policy = query.lookup.policy;
  sp.reduce = query.lookup.reduce;
  sp.max_clusters = max_clusters_;
  sp.block_starts = reinterpret_cast<const int32_t*>(meta_.get<char>() + off_starts_);
  sp.max_block_tokens = max_block_tokens_;
  select_plan_ = cuda::PlanSqueezeSelect(sp, s_.num_sms);
  cuda::SparsePrefillParams ap;
  ap.num_blocks = nb;
  ap.n_q_heads = s_.q_heads;
  ap.n_kv_heads = kvh;
  ap.head_dim = s_.head_dim;
  ap.max_block_tokens = max_block_tokens_;
  ap.max_selected = max_selected_;
  attn_plan_ = cuda::PlanSparsePrefill(ap, s_.num_sms);

  const size_t units = size_t(nb) * kvh;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t o = off;
    off += Align(bytes);
    return o;
  };
  off_segs_ = take(units * select_plan_.max_segments * sizeof(int2));
  off_nseg_ = take(units * sizeof(int32_t));
  off_sel_len_ = take(units * sizeof(int32_t));
  SQZ_RETURN_IF_ERROR(Grow(&out_, off, "sparse prefill selections", stream));
  // The selection's workspace is free again once its kernels have run, before the attention's.
  workspace_bytes_ = std::max(select_plan_.workspace_bytes, attn_plan_.workspace_bytes);
  SQZ_RETURN_IF_ERROR(Grow(&workspace_, workspace_bytes_, "sparse prefill workspace", stream));
  // The previous item's upload may still be in flight from the staging buffer.
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "SqueezedPrefill: staging");
  if (pinned_.bytes() < host_.size()) {
    pinned_ = PinnedMemory();
    SQZ_ASSIGN_OR_RETURN(pinned_, PinnedMemory::Allocate(Align(host_.size() * 5 / 4 + 256),
                                                         "sparse prefill metadata staging"));
  }
  std::memcpy(pinned_.get(), host_.data(), host_.size());
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(meta_.get(), pinned_.get(), host_.size(), cudaMemcpyHostToDevice, stream),
      "SqueezedPrefill: metadata");
  return OkStatus();
}

Status SqueezedPrefill::Run(int layer, const bf16* q, int64_t q_stride, bf16* out,
                            int64_t out_stride, cpu::AttentionPartial* stats,
                            unsigned long long* context_keys, cudaStream_t stream) const {
  const int nb = num_blocks_;
  const char* meta = meta_.get<char>();
  char* sel = out_.get<char>();
  const auto* starts = reinterpret_cast<const int32_t*>(meta + off_starts_);
  const cuda::SqueezeSelection selection{reinterpret_cast<int2*>(sel + off_segs_),
                                         reinterpret_cast<int32_t*>(sel + off_nseg_),
                                         reinterpret_cast<int32_t*>(sel + off_sel_len_), nullptr};
  const float scale = 1.0f / std::sqrt(static_cast<float>(s_.head_dim));

  cuda::SqueezeSelectParams sp;
  sp.batch = nb;
  sp.n_q_heads = s_.q_heads;
  sp.n_kv_heads = s_.kv_heads;
  sp.head_dim = s_.head_dim;
  sp.scale = scale;
  sp.q = q;
  sp.q_stride = q_stride;
  sp.views = reinterpret_cast<const cuda::SqueezeLayerView*>(meta + off_views_) +
             static_cast<int64_t>(layer) * nb;
  sp.policy = lookup_.policy;
  sp.reduce = lookup_.reduce;
  sp.per_request_value =
      reinterpret_cast<const float*>(meta + off_values_) + static_cast<int64_t>(layer) * nb;
  sp.max_clusters = max_clusters_;
  sp.block_starts = starts;
  sp.max_block_tokens = max_block_tokens_;
  SQZ_RETURN_IF_ERROR(cuda::SqueezeSelect(sp, select_plan_, selection, workspace_.get(),
                                          workspace_bytes_, stream));

  cuda::SparsePrefillParams ap;
  ap.num_blocks = nb;
  ap.n_q_heads = s_.q_heads;
  ap.n_kv_heads = s_.kv_heads;
  ap.head_dim = s_.head_dim;
  ap.scale = scale;
  ap.q = q;
  ap.q_stride = q_stride;
  ap.block_starts = starts;
  ap.max_block_tokens = max_block_tokens_;
  ap.ctx_len = reinterpret_cast<const int32_t*>(meta + off_len_);
  ap.ctx_k = reinterpret_cast<const bf16* const*>(meta + off_k_) + static_cast<int64_t>(layer) * nb;
  ap.ctx_v = reinterpret_cast<const bf16* const*>(meta + off_v_) + static_cast<int64_t>(layer) * nb;
  ap.segments = cuda::AsContextSegments(selection, select_plan_);
  ap.max_selected = max_selected_;
  ap.context_keys = context_keys;
  return cuda::SparsePrefillAttention<bf16>(ap, attn_plan_, out, out_stride, stats,
                                            workspace_.get(), workspace_bytes_, stream);
}

}  // namespace sqz
