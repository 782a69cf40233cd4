// CudaBackend's sequence and fixed-context entry points: binding sequences to resident device
// contexts (reference counts), per-step context preparation, and the device-context API
// (InstallContext, EvictContext, CopyKvToDevice). The forward pass is in cuda_backend.cc.
#include <string>
#include <vector>

#include "engine/cuda/context_plan.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_backend_impl.h"

namespace sqz {

Status CudaBackend::FreeSequence(SeqId seq) {
  SQZ_RETURN_IF_ERROR(sequences_.Free(seq));
  auto it = seq_context_.find(seq);
  if (it != seq_context_.end()) {
    contexts_->Release(it->second);
    seq_context_.erase(it);
  }
  return OkStatus();
}

Status CudaBackend::PrepareContexts(std::span<const StepInput> batch, bool* any) {
  *any = false;
  by_batch_.assign(batch.size(), StepContext{});
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].context == nullptr) continue;
    auto query = DescribeContext(*batch[i].context, config_);
    if (!query.ok()) {
      return query.status().WithContext("Forward: batch item " + std::to_string(i));
    }
    auto device = contexts_->Get(*query->snapshot, impl_->stream());
    if (!device.ok()) {
      return device.status().WithContext("Forward: batch item " + std::to_string(i));
    }
    // Held for the step, so that a later item's upload cannot evict it.
    contexts_->Acquire(query->snapshot);
    step_refs_.push_back(query->snapshot);
    by_batch_[i] = StepContext{*device, *query};
    *any = true;
  }
  return OkStatus();
}

void CudaBackend::ReleaseStepContexts() {
  for (const ContextSnapshot* s : step_refs_) contexts_->Release(s);
  step_refs_.clear();
}

Status CudaBackend::RunStep(std::span<const StepInput> batch, float* logits,
                            std::span<const TokenSampling> sampling, int32_t* tokens) {
  bool any = false;
  Status st = PrepareContexts(batch, &any);
  const StepLimits limits{config_.vocab, config_.max_positions, options_.max_step_tokens};
  if (st.ok()) st = sequences_.Prepare(batch, limits, &layout_);
  if (st.ok() && !batch.empty()) {
    step_contexts_.clear();
    if (any) {
      for (const StepLayout::Item& item : layout_.items) {
        step_contexts_.push_back(by_batch_[item.batch_index]);
      }
    }
    st = impl_->Run(layout_, batch, step_contexts_, logits, sampling, tokens);
    if (st.ok()) {
      sequences_.Advance(layout_, batch);
      // Bind each sequence to its context (one reference per live sequence).
      for (size_t i = 0; i < batch.size(); ++i) {
        const ContextSnapshot* snap = by_batch_[i].query.snapshot;
        auto it = seq_context_.find(batch[i].seq);
        const ContextSnapshot* old = it == seq_context_.end() ? nullptr : it->second;
        if (old == snap) continue;
        if (old != nullptr) contexts_->Release(old);
        if (snap != nullptr) {
          contexts_->Acquire(snap);
          seq_context_[batch[i].seq] = snap;
        } else {
          seq_context_.erase(it);
        }
      }
    }
  }
  ReleaseStepContexts();
  return st;
}

Status CudaBackend::Forward(std::span<const StepInput> batch, float* logits) {
  return RunStep(batch, logits, {}, nullptr);
}

Status CudaBackend::InstallContext(const ContextSnapshot& snapshot,
                                   std::unique_ptr<DeviceContext> context) {
  if (context == nullptr) return InvalidArgumentError("InstallContext: null device context");
  return contexts_->Install(snapshot, std::move(context), impl_->stream());
}

Status CudaBackend::CopyKvToDevice(SeqId seq, int layer, int64_t begin, int64_t n, void* k,
                                   void* v) {
  const std::vector<int32_t>* blocks = sequences_.Blocks(seq);
  if (blocks == nullptr) {
    return NotFoundError("CopyKvToDevice: unknown sequence " + std::to_string(seq));
  }
  if (layer < 0 || layer >= config_.layers) {
    return InvalidArgumentError("CopyKvToDevice: layer " + std::to_string(layer) + " outside [0, " +
                                std::to_string(config_.layers) + ")");
  }
  const int64_t length = sequences_.Length(seq);
  if (begin < 0 || n < 0 || begin % kKvBlockTokens != 0 || begin + n > length) {
    return OutOfRangeError("CopyKvToDevice: tokens [" + std::to_string(begin) + ", " +
                           std::to_string(begin + n) + ") (begin a multiple of 16) outside the " +
                           std::to_string(length) + " cached tokens of sequence " +
                           std::to_string(seq));
  }
  if (n == 0) return OkStatus();
  return impl_->GatherKv(*blocks, layer, begin, n, k, v);
}

Status CudaBackend::EvictContext(const ContextSnapshot& snapshot) {
  return contexts_->Evict(&snapshot);
}

DeviceContextCache::Stats CudaBackend::context_stats() const { return contexts_->stats(); }

}  // namespace sqz
