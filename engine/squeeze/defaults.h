// Squeeze options from the server-wide defaults (engine/options.h SqueezeDefaults, filled by
// config/ from YAML): the ingestion options of a registration and the attention options of a
// request, with the string fields parsed. Pure functions.
#pragma once

#include <string_view>

#include "common/status.h"
#include "engine/options.h"
#include "engine/squeeze/snapshot.h"
#include "engine/squeeze/squeezed_attention.h"

namespace sqz {

// "squeezed" | "dense"; "budget" | "threshold"; "max" | "mean". INVALID_ARGUMENT naming the
// accepted values otherwise.
StatusOr<AttentionMode> ParseAttentionMode(std::string_view s);
StatusOr<SelectionPolicy> ParseSelectionPolicy(std::string_view s);
StatusOr<GqaReduce> ParseGqaReduce(std::string_view s);

// Validated. prefill_chunk_tokens: SchedulerOptions::ingest_chunk_tokens.
StatusOr<SqueezeOptions> IngestOptionsFrom(const SqueezeDefaults& d, int64_t prefill_chunk_tokens);
StatusOr<AttentionOptions> AttentionOptionsFrom(const SqueezeDefaults& d);

}  // namespace sqz
