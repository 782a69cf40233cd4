// How the CUDA backend serves the fixed context of a request: DescribeContext maps the
// ContextAttention that a request carries (a CPU object, engine/squeeze MakeContextAttention) to
// what the device needs: the snapshot to keep resident (its identity keys the device cache,
// device_context.h) and, for SQUEEZED attention, the parameters of the GPU lookup
// (kernels/cuda/squeeze_select.h) that reproduce the CPU's SelectionParams.
//
// Only engine/squeeze's SnapshotAttention implementations carry a snapshot; any other
// ContextAttention is UNIMPLEMENTED on the GPU (the CPU backend calls its Attend instead).
// The mapping, per request (SqueezedContextAttention::ParamsForLayer on the CPU):
//   DENSE                      -> every context row (sink | body | window), no lookup;
//   SQUEEZED, budget policy    -> SqueezePolicy::kBudget with value kv_budget (all layers);
//   SQUEEZED, threshold policy -> SqueezePolicy::kThreshold with the calibrated threshold of the
//                                 layer (or the global one), value per layer;
//   gqa_reduce max / mean      -> SqueezeReduce::kMax / kMean;
//   hierarchical               -> hierarchical with coarse_coverage = min(1, coarse_expansion *
//                                 coarse_keep), as the CPU's coarse step keeps groups.
// Requests whose lookups differ only in the value (budget or threshold) share one SqueezeSelect
// launch (per_request_value); other differences (policy, reduce, hierarchy, coverage) make separate
// lookup classes, each one launch per layer.
//
// What the GPU does not do like the CPU (documented in cuda_backend.h): the lookups planned here
// are those of decode steps; prefill rows (several new tokens of a request) attend to every
// context row, so a SQUEEZED request's prefill equals its DENSE prefill, unless the backend's
// sparse_prefill option hands them to SqueezedPrefill (context_prefill.h, per query block). The
// lookup reads bf16 centroids and bf16 queries, so near-ties may select otherwise.
//
// Pure host code (no device access): tested without a GPU. Thread safety: stateless functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <tuple>
#include <vector>

#include "common/status.h"
#include "engine/cuda/paged_sequences.h"
#include "engine/model/config.h"
#include "engine/model/context_attention.h"
#include "engine/squeeze/snapshot.h"
#include "engine/squeeze/squeezed_attention.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz {

// The lookup parameters shared by one SqueezeSelect launch.
struct LookupClass {
  cuda::SqueezePolicy policy = cuda::SqueezePolicy::kBudget;
  cuda::SqueezeReduce reduce = cuda::SqueezeReduce::kMax;
  bool hierarchical = false;
  float coarse_coverage = 1.0f;  // used when hierarchical

  auto Tie() const { return std::tie(policy, reduce, hierarchical, coarse_coverage); }
  bool operator==(const LookupClass& o) const { return Tie() == o.Tie(); }
  bool operator<(const LookupClass& o) const { return Tie() < o.Tie(); }
};

struct DeviceContextQuery {
  const ContextSnapshot* snapshot = nullptr;  // borrowed from the ContextAttention
  // The request's attention (borrowed for the step): the step counts the keys it read into it
  // (SnapshotAttention::CountUsage).
  const SnapshotAttention* attention = nullptr;
  // Null for DENSE; else the request's squeezed attention (borrowed for the step), whose
  // ParamsForLayer gives per-layer thresholds.
  const SqueezedContextAttention* squeezed = nullptr;
  LookupClass lookup;      // meaningful when squeezed
  float kv_budget = 1.0f;  // budget policy
};

// Whether the GPU lookup and the sparse decode kernel are compiled for this model's attention
// shape (head_dim 64 or 128, GQA group at most 8).
bool SqueezedLookupFits(const ModelConfig& config);

// Describes `context` for the device. INVALID_ARGUMENT when its snapshot does not match the model
// (layers, heads, head_dim) or is longer than 2^31 - 1 tokens; UNIMPLEMENTED for a ContextAttention
// without a snapshot, or a SQUEEZED one on a model whose shape the lookup kernels lack (the message
// says to use DENSE).
StatusOr<DeviceContextQuery> DescribeContext(const ContextAttention& context,
                                             const ModelConfig& config);

// The per-request value of SqueezeSelect at `layer`: kv_budget (budget) or the threshold.
float LookupValue(const DeviceContextQuery& query, int layer);

// What planning a step needs to know about one layout item's context (host data only).
struct ContextItemFacts {
  bool has_context = false;
  // SQUEEZED over a context with a body to select from (a context of only sink and window is
  // attended densely: selection would keep every row anyway).
  bool squeezed = false;
  LookupClass lookup;
  float kv_budget = 1.0f;
  int64_t n_tokens = 0, sink_len = 0, body_len = 0, window_len = 0;
  int64_t largest_cluster = 0;  // over the context's heads
  int32_t k = 0, k1 = 0;        // fine and coarse clusters per head
};

// The sizes of one step's context attention (context_step.h), made on the host.
struct ContextStepPlan {
  struct Class {
    LookupClass lookup;
    // Its decode items (indices == their device rows): ascending, or by context after
    // OrderClassesByContext.
    std::vector<int32_t> items;
    int32_t max_clusters = 0, max_coarse = 0;
    cuda::SqueezeSelectPlan select;  // of one SqueezeSelect launch over the class
  };
  std::vector<Class> classes;  // in LookupClass order
  // DecodeAttention's max_kv_len: over decode items, context keys read (all rows for DENSE, the
  // lookup's bound for SQUEEZED, 0 without a context) + own keys.
  int64_t decode_max_kv = 0;
  // DecodeKeysBucket(decode_max_kv): what DecodeAttention is planned for, so that the split (and a
  // CUDA graph of the step) stays the same while own tokens grow within a bucket.
  int64_t decode_kv_bucket = 64;
  int32_t full_max_segments = 1;      // segment capacity of the per-item lists (>= every class's)
  int32_t max_class = 0;              // largest class
  size_t select_workspace_bytes = 0;  // largest SqueezeSelect workspace of the classes
  int64_t max_prefill_rows = 0;       // largest prefill item with a context
  bool any_squeezed() const { return !classes.empty(); }
};

// The key count decode attention is planned for: `keys` rounded up to one of 8 steps per power of
// two (at least one 64-key tile). Planning for a bucket instead of the exact count lets a CUDA
// graph serve many steps; eager steps use the same bucket, so graphs change no result. Keys past
// a sequence's own count are never read.
int64_t DecodeKeysBucket(int64_t keys);

// Plans a step whose layout is L: facts[i] describes L.items[i].
ContextStepPlan PlanContextStep(const StepLayout& L, std::span<const ContextItemFacts> facts,
                                int q_heads, int kv_heads, int head_dim);

// Orders the items of each flat lookup class by context: the contexts in the order their first
// item appears, one context's items in their order (a stable sort). SqueezeSelect scores adjacent
// items over one context together (ContextStep::Shape::group_lookups), so a step interleaving the
// requests of a few contexts then reads each context's centroids once instead of once per
// request. context_of[d] identifies decode item d's context (any pointer; null: none). Hierarchical
// classes are left as they are (their lookups are never grouped). Returns whether any class
// changed order: such a class reads its query rows through a gather (not in place).
bool OrderClassesByContext(std::span<const void* const> context_of, ContextStepPlan* plan);

}  // namespace sqz
