#include "engine/squeeze/ingest.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace sqz {

StatusOr<std::unique_ptr<ContextIngestion>> ContextIngestion::Start(Backend& backend,
                                                                    std::vector<int32_t> tokens,
                                                                    const SqueezeOptions& options) {
  SQZ_RETURN_IF_ERROR(options.Validate());
  if (tokens.empty()) return InvalidArgumentError("cannot ingest an empty context");
  SQZ_ASSIGN_OR_RETURN(SeqId seq, backend.AddSequence());
  return std::unique_ptr<ContextIngestion>(
      new ContextIngestion(backend, seq, std::move(tokens), options));
}

ContextIngestion::ContextIngestion(Backend& backend, SeqId seq, std::vector<int32_t> tokens,
                                   const SqueezeOptions& options)
    : backend_(backend),
      seq_(seq),
      tokens_(std::move(tokens)),
      options_(options),
      window_len_(WindowLength(static_cast<int64_t>(tokens_.size()), options)) {
  const ModelConfig& cfg = backend_.config();
  window_q_.resize(static_cast<size_t>(cfg.layers) * window_len_ * cfg.q_dim());
}

ContextIngestion::~ContextIngestion() { (void)backend_.FreeSequence(seq_); }

StepInput ContextIngestion::NextStep(int64_t max_tokens) {
  SQZ_CHECK(!prefilled()) << "NextStep after the whole context was prefilled";
  const int64_t n = static_cast<int64_t>(tokens_.size());
  const int64_t window_begin = n - window_len_;
  const int64_t limit = pos_ < window_begin ? window_begin : n;
  if (pending_ == 0) {
    pending_ =
        std::max<int64_t>(1, std::min({max_tokens, options_.prefill_chunk_tokens, limit - pos_}));
  }
  StepInput step;
  step.seq = seq_;
  step.tokens = std::span<const int32_t>(tokens_).subspan(pos_, pending_);
  if (pos_ >= window_begin) {
    const ModelConfig& cfg = backend_.config();
    q_chunk_.resize(static_cast<size_t>(cfg.layers) * pending_ * cfg.q_dim());
    step.q_out = q_chunk_.data();
  }
  return step;
}

void ContextIngestion::StepDone() {
  SQZ_CHECK_GT(pending_, 0) << "StepDone without NextStep";
  const int64_t n = static_cast<int64_t>(tokens_.size());
  const int64_t window_begin = n - window_len_;
  if (pos_ >= window_begin) {
    const ModelConfig& cfg = backend_.config();
    const int64_t row = cfg.q_dim();  // floats per token and layer
    for (int64_t l = 0; l < cfg.layers; ++l) {
      std::copy_n(q_chunk_.data() + l * pending_ * row, pending_ * row,
                  window_q_.data() + (l * window_len_ + (pos_ - window_begin)) * row);
    }
  }
  pos_ += pending_;
  pending_ = 0;
}

StatusOr<CapturedContext> ContextIngestion::Capture() {
  if (!prefilled()) return FailedPreconditionError("context not fully prefilled yet");
  const ModelConfig& cfg = backend_.config();
  const int64_t n = static_cast<int64_t>(tokens_.size());
  CapturedContext c;
  c.layers = static_cast<int32_t>(cfg.layers);
  c.kv_heads = static_cast<int32_t>(cfg.kv_heads);
  c.q_heads = static_cast<int32_t>(cfg.q_heads);
  c.head_dim = static_cast<int32_t>(cfg.head_dim);
  c.n_tokens = n;
  const size_t per_layer = static_cast<size_t>(n) * cfg.kv_dim();
  c.k.resize(per_layer * cfg.layers);
  c.v.resize(per_layer * cfg.layers);
  for (int64_t l = 0; l < cfg.layers; ++l) {
    SQZ_RETURN_IF_ERROR(backend_
                            .ReadKv(seq_, static_cast<int>(l), 0, n, c.k.data() + l * per_layer,
                                    c.v.data() + l * per_layer)
                            .WithContext("ingestion K/V capture"));
  }
  c.window_q = std::move(window_q_);
  window_q_.clear();
  return c;
}

StatusOr<CapturedContext> CaptureContext(Backend& backend, std::span<const int32_t> tokens,
                                         const SqueezeOptions& options,
                                         const IngestProgress& progress) {
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<ContextIngestion> ing,
                       ContextIngestion::Start(
                           backend, std::vector<int32_t>(tokens.begin(), tokens.end()), options));
  while (!ing->prefilled()) {
    const StepInput step = ing->NextStep(options.prefill_chunk_tokens);
    SQZ_RETURN_IF_ERROR(
        backend.Forward(std::span<const StepInput>(&step, 1), nullptr)
            .WithContext("ingestion prefill at token " + std::to_string(ing->tokens_done())));
    ing->StepDone();
    if (progress) progress(IngestStage::kPrefilling, ing->fraction_prefilled());
  }
  return ing->Capture();
}

StatusOr<ContextSnapshot> IngestContext(Backend& backend, std::span<const int32_t> tokens,
                                        const SqueezeOptions& options,
                                        const IngestProgress& progress) {
  SQZ_ASSIGN_OR_RETURN(CapturedContext captured,
                       CaptureContext(backend, tokens, options, progress));
  return BuildSnapshot(captured, options, progress);
}

}  // namespace sqz
