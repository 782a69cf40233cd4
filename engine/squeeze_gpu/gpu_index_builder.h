// BuildSnapshotOnDevice: the GPU counterpart of BuildSnapshot (engine/squeeze/index_builder.h).
// Uploads a captured context, runs the whole ingestion on the device
// (kernels/cuda/squeeze_ingest.h: batched k-means of all (layer, kv head) bodies, cluster-ordered
// re-layout, coarse level, calibration histograms), and brings back a host ContextSnapshot of the
// same structure as the CPU's, so the CPU engine, storage and ValidateSnapshot take it unchanged.
// The thresholds are the quantiles of the device histograms, computed here exactly as the CPU's
// Calibrate does.
//
// Differences from BuildSnapshot (same data, same seed): the seeding (batched D^2 sampling instead
// of greedy k-means++, see kernels/cuda/kmeans.h) and bf16 cosine scores in the assignment, so
// clusters are equivalent in quality (inertia), not identical.
//
// Thread safety: a pure function; it uses the current CUDA device and allocates device memory for
// the duration of the call (about 4x the context's K/V in fp32).
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/snapshot.h"
#include "kernels/cuda/squeeze_ingest.h"

namespace sqz {

struct GpuIngestReport {
  cuda::IngestTimings timings;      // device time per stage
  std::vector<int32_t> iterations;  // [layers * kv_heads] Lloyd iterations of each head
};

// Errors: those of BuildSnapshot for bad input (INVALID_ARGUMENT), FAILED_PRECONDITION without a
// usable CUDA device, UNIMPLEMENTED for head_dim other than 64/128 or GQA groups over 32,
// RESOURCE_EXHAUSTED when device memory runs out, INTERNAL for other CUDA failures.
StatusOr<ContextSnapshot> BuildSnapshotOnDevice(const CapturedContext& captured,
                                                const SqueezeOptions& options,
                                                GpuIngestReport* report = nullptr);

// Fills snapshot->thresholds_global / thresholds_layer from device calibration histograms
// [kNumGqaReduce][layers][cuda::kCalibrationBins] of summed cluster sizes (Calibrate's quantile
// rule). window_len == 0 keeps everything (threshold -1), as Calibrate does.
void ThresholdsFromHistograms(const std::vector<uint64_t>& histogram, int64_t window_len,
                              ContextSnapshot* snapshot);

}  // namespace sqz
