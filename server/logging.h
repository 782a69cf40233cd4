// Logging setup for squeezed (spdlog). Text: "[time] [level] message"; JSON: one object per line
// with time, level and msg. Call once at start, before any other thread logs.
#pragma once

#include "common/status.h"
#include "server/server_options.h"

namespace sqz {

Status SetUpLogging(const LoggingOptions& options);

// `s` as the body of a JSON string (quotes, backslashes and control characters escaped).
std::string JsonEscape(std::string_view s);

}  // namespace sqz
