// Cluster selection of Squeezed Attention (ALGORITHM.md, online steps 1-4) for one KV head and one
// block of query tokens, over the index of a ContextSnapshot. Pure functions; the caller provides
// a Scratch per thread (it holds buffers only, so repeated calls do not allocate).
//
// Shapes: q points at the first query head of the group in the block's first token; token t, head
// j of the group is q + t * q_stride + j * d. g = query heads per KV head.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/squeeze/snapshot.h"

namespace sqz {

enum class SelectionPolicy : int32_t {
  kBudget = 0,     // highest-probability clusters until kv_budget * body_len keys
  kThreshold = 1,  // clusters whose probability estimate exceeds a calibrated threshold
};

struct SelectionParams {
  SelectionPolicy policy = SelectionPolicy::kBudget;
  double kv_budget = 0.125;  // budget policy: share of body keys, in [0, 1]
  float threshold = 0.0f;    // threshold policy: keep p[c] > threshold
  GqaReduce reduce = GqaReduce::kMax;
  // Hierarchical lookup: score every coarse centroid, keep the most probable coarse groups until
  // they cover coarse_expansion * (kv_budget, or 1 - sparsity for the threshold policy) of the body
  // keys, then score only the fine centroids of the kept groups. Needs a coarse level.
  bool hierarchical = false;
  double coarse_expansion = 2.0;
  double coarse_keep = 0.125;  // the share (before expansion) used by the coarse step
};

struct SelectionResult {
  std::vector<int32_t> clusters;  // selected fine cluster ids, ascending
  int64_t selected_keys = 0;      // body keys in the selected clusters
  int64_t fine_scored = 0;        // fine centroids scored (per token of the block)
  int64_t coarse_scored = 0;      // coarse centroids scored (per token of the block)
};

struct SelectionScratch {
  std::vector<float> scores, probs, acc, coarse_acc;
  std::vector<int32_t> candidates, order, coarse_counts, coarse_rest, coarse_ids, coarse_selected;
  std::vector<char> coarse_kept;
};

// Per-key probability estimates p[c] of every fine cluster (cluster-size weighted softmax over the
// centroid scores, max-subtracted), reduced over the g query heads and averaged over n_tokens.
// p: [k]. Used by calibration and by flat selection. Finite for any finite input.
void ClusterProbabilities(const HeadIndex& index, int64_t d, const float* q, int64_t n_tokens,
                          int64_t q_stride, int g, GqaReduce reduce, float* p,
                          SelectionScratch* scratch);

// Selects the clusters of one KV head for a block of n_tokens query tokens.
void SelectClusters(const HeadIndex& index, int64_t d, const float* q, int64_t n_tokens,
                    int64_t q_stride, int g, const SelectionParams& params,
                    SelectionScratch* scratch, SelectionResult* result);

}  // namespace sqz
