// DaemonConfig: the whole configuration of squeezed, loaded once at start from a YAML file and
// command-line overrides, validated, then handed as plain option structs to each module.
//
// Every key has a documented default (config/squeezed.yaml lists them all). Unknown keys, wrong
// types and out-of-range values are errors that name the key path and the reason; all errors of a
// file are reported at once.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/options.h"
#include "server/server_options.h"
#include "storage/store_options.h"

namespace sqz {

struct DaemonConfig {
  ServerOptions server;
  EngineOptions engine;
  StoreOptions storage;
};

// One override "a.b.c=value"; value is parsed as a YAML scalar or flow sequence ("[a, b]").
using ConfigOverride = std::pair<std::string, std::string>;

// Applies `yaml_text` (may be empty: all defaults) and then the overrides on top of the defaults.
// On error, INVALID_ARGUMENT whose message lists every problem, one per line, each starting with
// its key path ("server.limits.max_new_tokens: must be in [1, 1048576], got 0").
StatusOr<DaemonConfig> ParseDaemonConfig(const std::string& yaml_text,
                                         const std::vector<ConfigOverride>& overrides = {});

// Reads the file (NOT_FOUND / INVALID_ARGUMENT naming the file) and parses it as above.
StatusOr<DaemonConfig> LoadDaemonConfig(const std::string& path,
                                        const std::vector<ConfigOverride>& overrides = {});

// The effective configuration as YAML, every key, in the layout of the default file.
std::string DaemonConfigToYaml(const DaemonConfig& config);

// Expands a leading "~/" and ${VAR} references in a path (used for model.path, storage.path).
std::string ExpandPath(const std::string& path);

}  // namespace sqz
