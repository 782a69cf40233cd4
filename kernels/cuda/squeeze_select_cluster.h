// Internal to kernels/cuda: SqueezeSelect's selection step spread over a thread-block cluster of
// `ctas` CTAs per (request, kv head) (squeeze_select.h, SqueezeSelectPlan::select_ctas), for small
// batches where one block per (request, kv head) would leave most SMs idle. Flat index only
// (token or block mode); hierarchical lookups use the single-block kernel.
//
// CTA `rank` of a cluster owns the clusters [rank * per, (rank + 1) * per) of its (request, kv
// head), per = ceil(k / ctas), with their keys, weights and flags in its shared memory. Every CTA
// computes the normaliser itself (the same code as the single-block kernel, so the same bits);
// the candidates' total weight and key range, each radix pass's 256-bin histograms, the tied
// weight before a slice and the segment counts before a slice are combined across the cluster
// through distributed shared memory, so every CTA derives the same cut and each writes the
// segments that start or end in its slice. The outputs equal the single-block kernel's exactly
// (same cut, ties by position, same segments and counts).
// Thread safety: stateless; launches on `stream` only (graph-capturable).
#pragma once

#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz::cuda::internal {

// Dynamic shared memory per CTA for items split over ctas (2, 4, 8 or 16), or 0 when ctas is not
// one of those or a slice does not fit (the single-block kernel must run then).
size_t ClusterSelectSmemBytes(int max_items, int ctas);

// What the cluster kernel reads (the flat level of SqueezeSelect's workspace).
struct ClusterSelectArgs {
  int max_items = 0;              // items per (request, kv head) bound: params.max_clusters
  int chunks = 0;                 // scoring chunks per (request, kv head)
  const float* scores = nullptr;  // [batch][n_kv_heads][g][max_items]; unused in block mode
  const float2* stats = nullptr;  // [batch][n_kv_heads][g][chunks] (max, sum N exp(s - max))
  const float* probs = nullptr;   // block mode: [batch][n_kv_heads][max_items] p, < 0: none
};

// Whether the current device runs thread-block clusters (compute capability 9.0 and up); the
// library is also built for sm_80, where SqueezeSelect runs the single-block kernel instead.
bool DeviceSupportsClusters();

// Launches the cluster selection for params p (validated by SqueezeSelect; not hierarchical) into
// out (segments [batch][n_kv_heads][max_segments]). UNIMPLEMENTED when ctas = 16 and the device
// cannot schedule clusters of 16 of these CTAs. programmatic: launched as a programmatic
// dependent of the kernel before (SqueezeSelectPlan::chained).
Status LaunchClusterSelect(const SqueezeSelectParams& p, const ClusterSelectArgs& a, int ctas,
                           const SqueezeSelection& out, int max_segments, bool programmatic,
                           cudaStream_t stream);

}  // namespace sqz::cuda::internal
