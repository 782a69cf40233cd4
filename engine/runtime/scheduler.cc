#include "engine/runtime/scheduler.h"

#include <algorithm>

namespace sqz {

int64_t StepPlan::total_tokens() const {
  int64_t n = ingest_tokens;
  for (const auto& w : work) n += w.tokens;
  return n;
}

SchedulerLimits LimitsFromOptions(const SchedulerOptions& o, int64_t kv_capacity_tokens) {
  SchedulerLimits l;
  l.max_batch_tokens = o.max_batch_tokens;
  l.max_running = o.max_running;
  l.prefill_chunk_tokens = o.max_batch_tokens;
  l.ingest_chunk_tokens = o.ingest_chunk_tokens;
  l.ingest_floor_tokens = std::max<int64_t>(1, o.ingest_chunk_tokens / 8);
  l.kv_capacity_tokens = kv_capacity_tokens;
  return l;
}

StepPlan PlanStep(const SchedulerLimits& limits, const std::vector<SchedRequest>& running,
                  const std::vector<SchedRequest>& waiting, const std::vector<IngestJob>& ingest) {
  StepPlan plan;
  int64_t budget = limits.max_batch_tokens;
  int64_t reserved = 0;
  int64_t n_running = 0;
  std::vector<const SchedRequest*> prefilling;
  for (const auto& r : running) {
    if (r.cancelled) {
      plan.finished_cancelled.push_back(r.id);
      continue;
    }
    reserved += r.reserved_tokens;
    ++n_running;
    if (r.prompt_remaining == 0) {
      if (budget > 0) {
        plan.work.push_back({r.id, 1, true});
        --budget;
      }
    } else {
      prefilling.push_back(&r);
    }
  }
  const int64_t max_chunk = std::min(limits.prefill_chunk_tokens, limits.max_batch_tokens);
  auto prefill = [&](const SchedRequest& r) {
    int64_t n = std::min({r.prompt_remaining, limits.prefill_chunk_tokens, budget});
    if (r.prefill_align > 1 && n < r.prompt_remaining && max_chunk >= r.prefill_align) {
      n -= n % r.prefill_align;  // 0: this step cannot hold an aligned chunk; wait for the next
    }
    if (n <= 0) return;
    plan.work.push_back({r.id, n, false});
    budget -= n;
  };
  for (const auto* r : prefilling) prefill(*r);
  bool blocked = false;
  for (const auto& r : waiting) {
    if (r.cancelled) {
      plan.finished_cancelled.push_back(r.id);
      continue;
    }
    if (blocked) continue;
    if (n_running >= limits.max_running ||
        reserved + r.reserved_tokens > limits.kv_capacity_tokens) {
      blocked = true;
      continue;
    }
    plan.admitted.push_back(r.id);
    reserved += r.reserved_tokens;
    ++n_running;
    if (r.prompt_remaining == 0) {
      if (budget > 0) {
        plan.work.push_back({r.id, 1, true});
        --budget;
      }
    } else {
      prefill(r);
    }
  }
  if (!ingest.empty()) {
    const auto& job = ingest.front();
    const int64_t share = std::max(budget, limits.ingest_floor_tokens);
    plan.ingest_tokens = std::min({job.remaining, limits.ingest_chunk_tokens, share});
    if (plan.ingest_tokens > 0) plan.ingest_id = job.id;
  }
  return plan;
}

}  // namespace sqz
