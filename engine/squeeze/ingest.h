// Ingestion of a fixed context (ALGORITHM.md, offline steps 1-6; DESIGN.md states PREFILLING ->
// CLUSTERING -> CALIBRATING): chunked dense prefill of the tokens on a Backend, capturing the
// post-RoPE K/V of every layer (Backend::ReadKv) and the post-RoPE queries of the observation
// window (StepInput::q_out), then BuildSnapshot.
//
// The result is a plain ContextSnapshot: many requests share one snapshot read-only, each through
// its own ContextAttention (squeezed_attention.h). Thread safety: uses the backend, which is not
// thread-safe: call on the thread that owns it. The backend needs free KV blocks for all the
// tokens at once (the sequence is freed before returning, also on error).
#pragma once

#include <cstdint>
#include <span>

#include "common/status.h"
#include "engine/model/backend.h"
#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/snapshot.h"

namespace sqz {

// Dense prefill and capture only. INVALID_ARGUMENT for an empty token list or bad options; errors
// of the backend (RESOURCE_EXHAUSTED when the KV pool is too small, OUT_OF_RANGE beyond the
// model's positions, ...) pass through with "ingestion prefill" prepended.
StatusOr<CapturedContext> CaptureContext(Backend& backend, std::span<const int32_t> tokens,
                                         const SqueezeOptions& options,
                                         const IngestProgress& progress = {});

// CaptureContext followed by BuildSnapshot.
StatusOr<ContextSnapshot> IngestContext(Backend& backend, std::span<const int32_t> tokens,
                                        const SqueezeOptions& options,
                                        const IngestProgress& progress = {});

}  // namespace sqz
