// Conversions from squeeze.v1 request messages to the engine's option structs, with the server's
// defaults filled in and every field validated. Errors are INVALID_ARGUMENT naming the field, its
// valid range and the value received. Pure functions; no engine state.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"
#include "engine/model/sampler.h"
#include "engine/options.h"
#include "engine/squeeze/snapshot.h"
#include "engine/squeeze/squeezed_attention.h"
#include "server/server_options.h"
#include "squeeze/v1/context_service.pb.h"
#include "squeeze/v1/generation_service.pb.h"

namespace sqz {

// Context ids: 1..128 characters of [a-z0-9-_.], starting with a letter or digit.
Status ValidateApiContextId(std::string_view id);
// "contexts/{id}" -> id (validated).
StatusOr<std::string> ParseContextName(std::string_view name);
std::string ContextName(std::string_view id);

// INVALID_ARGUMENT "<field> is not valid UTF-8 (first bad byte at offset N)".
Status ValidateUtf8(std::string_view text, std::string_view field);

StatusOr<SqueezeOptions> SqueezeOptionsFromProto(const squeeze::v1::SqueezeOptions& proto,
                                                 const SqueezeDefaults& defaults);

StatusOr<AttentionOptions> AttentionOptionsFromProto(const squeeze::v1::AttentionOptions& proto,
                                                     const SqueezeDefaults& defaults);

// Validates sampling against the limits; max_tokens defaults to limits.default_max_tokens.
// `request_seed` seeds the sampler when the request gives none.
StatusOr<SamplingParams> SamplingFromProto(const squeeze::v1::SamplingParams& proto,
                                           const LimitsOptions& limits, uint64_t request_seed);

}  // namespace sqz
