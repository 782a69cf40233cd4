// Synthetic contexts with planted structure, for tests and the fidelity tool's model-free mode:
// keys drawn from a Gaussian mixture (random unit means scaled by key_norm, per-coordinate noise),
// values Gaussian, and queries near some of the mixture means (so that attention concentrates on a
// few clusters, as it does in trained models). Deterministic for a seed.
#pragma once

#include <cstdint>

#include "engine/squeeze/index_builder.h"

namespace sqz {

struct SyntheticSpec {
  int32_t layers = 1;
  int32_t kv_heads = 1;
  int32_t q_heads = 1;
  int32_t head_dim = 128;
  int64_t n_tokens = 32768;
  int64_t window_len = 100;  // must equal WindowLength(n_tokens, options) of the build
  int64_t mixture_components = 256;
  float key_norm = 10.0f;  // length of the mixture means (sharper attention when larger)
  float key_noise =
      0.35f;  // per-coordinate noise of keys around their mean, times key_norm / sqrt(d)
  float query_noise = 0.35f;  // likewise for queries around the mean they target
  uint64_t seed = 1;
};

// window_q is filled with window_len queries per layer; extra_queries (if not null) receives
// n_extra more queries [layers][n_extra][q_heads][head_dim] from the same distribution.
CapturedContext SyntheticContext(const SyntheticSpec& spec, int64_t n_extra = 0,
                                 std::vector<float>* extra_queries = nullptr);

}  // namespace sqz
