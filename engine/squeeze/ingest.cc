#include "engine/squeeze/ingest.h"

#include <algorithm>
#include <string>
#include <vector>

namespace sqz {
namespace {

// Frees the sequence on every path out of CaptureContext.
class SequenceGuard {
 public:
  SequenceGuard(Backend& backend, SeqId seq) : backend_(backend), seq_(seq) {}
  SequenceGuard(const SequenceGuard&) = delete;
  SequenceGuard& operator=(const SequenceGuard&) = delete;
  ~SequenceGuard() { (void)backend_.FreeSequence(seq_); }

 private:
  Backend& backend_;
  const SeqId seq_;
};

}  // namespace

StatusOr<CapturedContext> CaptureContext(Backend& backend, std::span<const int32_t> tokens,
                                         const SqueezeOptions& options,
                                         const IngestProgress& progress) {
  SQZ_RETURN_IF_ERROR(options.Validate());
  if (tokens.empty()) return InvalidArgumentError("cannot ingest an empty context");
  const ModelConfig& cfg = backend.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t window = WindowLength(n, options);
  const int64_t d = cfg.head_dim;
  CapturedContext c;
  c.layers = static_cast<int32_t>(cfg.layers);
  c.kv_heads = static_cast<int32_t>(cfg.kv_heads);
  c.q_heads = static_cast<int32_t>(cfg.q_heads);
  c.head_dim = static_cast<int32_t>(d);
  c.n_tokens = n;
  c.window_q.resize(static_cast<size_t>(cfg.layers) * window * cfg.q_heads * d);

  SQZ_ASSIGN_OR_RETURN(SeqId seq, backend.AddSequence());
  SequenceGuard guard(backend, seq);
  // Chunks never straddle the window start, so window chunks capture their queries whole.
  const int64_t window_begin = n - window;
  std::vector<float> q_chunk;
  int64_t pos = 0;
  while (pos < n) {
    const int64_t limit = pos < window_begin ? window_begin : n;
    const int64_t len = std::min(options.prefill_chunk_tokens, limit - pos);
    StepInput step;
    step.seq = seq;
    step.tokens = tokens.subspan(pos, len);
    if (pos >= window_begin) {
      q_chunk.resize(static_cast<size_t>(cfg.layers) * len * cfg.q_heads * d);
      step.q_out = q_chunk.data();
    }
    SQZ_RETURN_IF_ERROR(backend.Forward(std::span<const StepInput>(&step, 1), nullptr)
                            .WithContext("ingestion prefill at token " + std::to_string(pos)));
    if (step.q_out != nullptr) {
      const int64_t row = cfg.q_heads * d;  // floats per token and layer
      for (int64_t l = 0; l < cfg.layers; ++l) {
        std::copy_n(q_chunk.data() + l * len * row, len * row,
                    c.window_q.data() + (l * window + (pos - window_begin)) * row);
      }
    }
    pos += len;
    if (progress) progress(IngestStage::kPrefilling, static_cast<double>(pos) / n);
  }
  const size_t per_layer = static_cast<size_t>(n) * cfg.kv_heads * d;
  c.k.resize(per_layer * cfg.layers);
  c.v.resize(per_layer * cfg.layers);
  for (int64_t l = 0; l < cfg.layers; ++l) {
    SQZ_RETURN_IF_ERROR(backend
                            .ReadKv(seq, static_cast<int>(l), 0, n, c.k.data() + l * per_layer,
                                    c.v.data() + l * per_layer)
                            .WithContext("ingestion K/V capture"));
  }
  return c;
}

StatusOr<ContextSnapshot> IngestContext(Backend& backend, std::span<const int32_t> tokens,
                                        const SqueezeOptions& options,
                                        const IngestProgress& progress) {
  SQZ_ASSIGN_OR_RETURN(CapturedContext captured,
                       CaptureContext(backend, tokens, options, progress));
  return BuildSnapshot(captured, options, progress);
}

}  // namespace sqz
