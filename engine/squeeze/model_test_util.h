// Helpers for squeeze tests that run a model (not part of the library): "plain generation over
// [context + query]" versus "query over an ingested context", compared logit by logit.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "engine/model/backend.h"
#include "engine/model/cpu_backend.h"
#include "engine/squeeze/ingest.h"
#include "engine/squeeze/squeezed_attention.h"

namespace sqz::testing {

// Rows of logits: every query token, then `decode` greedy steps (tokens chosen from the plain run
// and fed to both runs, so that rows stay comparable).
struct LogitRows {
  std::vector<float> logits;  // [rows][vocab]
  std::vector<int32_t> fed;   // decode tokens fed
};

inline int32_t Argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

// Runs `prefix` (no logits) then `query` (all logits) and `decode` more steps on a new sequence.
// When `fed` is empty the decode tokens are chosen greedily and recorded; else they are replayed.
inline Status RunRows(Backend& b, const ContextAttention* ctx, const std::vector<int32_t>& prefix,
                      const std::vector<int32_t>& query, int decode, LogitRows* rows) {
  const int64_t vocab = b.config().vocab;
  SQZ_ASSIGN_OR_RETURN(SeqId seq, b.AddSequence());
  const bool replay = !rows->fed.empty();
  rows->logits.assign((query.size() + decode) * vocab, 0.0f);
  Status st;
  for (size_t pos = 0; st.ok() && pos < prefix.size(); pos += 64) {
    StepInput in{
        seq,
        std::span<const int32_t>(prefix).subspan(pos, std::min<size_t>(64, prefix.size() - pos)),
        ctx, false};
    st = b.Forward({&in, 1}, nullptr);
  }
  if (st.ok()) {
    StepInput in{seq, std::span<const int32_t>(query), ctx, true};
    st = b.Forward({&in, 1}, rows->logits.data());
  }
  for (int i = 0; st.ok() && i < decode; ++i) {
    const float* last = rows->logits.data() + (query.size() + i - 1) * vocab;
    if (!replay) rows->fed.push_back(Argmax(last, vocab));
    const int32_t tok = rows->fed[i];
    StepInput in{seq, std::span<const int32_t>(&tok, 1), ctx, true};
    st = b.Forward({&in, 1}, rows->logits.data() + (query.size() + i) * vocab);
  }
  (void)b.FreeSequence(seq);
  return st;
}

// max |a - b| / max |a| over all logits.
inline double MaxRelativeDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(a[i])));
  }
  return diff / scale;
}

// Compares plain generation over [context + query] with the query over the ingested context
// attended through `options`. Returns the max relative logit difference (or an error).
inline StatusOr<double> CompareWithPlain(Backend& b, const std::vector<int32_t>& context,
                                         const std::vector<int32_t>& query,
                                         const SqueezeOptions& so, const AttentionOptions& ao,
                                         int decode) {
  LogitRows plain, with_ctx;
  SQZ_RETURN_IF_ERROR(RunRows(b, nullptr, context, query, decode, &plain));
  SQZ_ASSIGN_OR_RETURN(ContextSnapshot snap, IngestContext(b, context, so));
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<SnapshotAttention> att, MakeContextAttention(snap, ao));
  with_ctx.fed = plain.fed;
  SQZ_RETURN_IF_ERROR(RunRows(b, att.get(), {}, query, decode, &with_ctx));
  return MaxRelativeDiff(plain.logits, with_ctx.logits);
}

}  // namespace sqz::testing
