#include "config/daemon_config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

namespace sqz {
namespace {

// One configurable key, bound to a member of a DaemonConfig.
struct Field {
  enum class Kind { kString, kBool, kInt, kDouble, kEnum, kStringList };
  std::string path;
  Kind kind;
  void* target;
  double min = 0, max = 0;          // kInt, kDouble (inclusive)
  std::vector<std::string> choices = {};  // kEnum
};

constexpr double kIntMax = 1LL << 50;

std::vector<Field> Fields(DaemonConfig& c) {
  using K = Field::Kind;
  auto& s = c.server;
  auto& e = c.engine;
  auto& q = c.engine.squeeze;
  return {
      {"server.listen_address", K::kString, &s.listen_address},
      {"server.metrics_address", K::kString, &s.metrics_address},
      {"server.drain_timeout_s", K::kDouble, &s.drain_timeout_s, 0, 3600},
      {"server.tls.enabled", K::kBool, &s.tls.enabled},
      {"server.tls.cert_file", K::kString, &s.tls.cert_file},
      {"server.tls.key_file", K::kString, &s.tls.key_file},
      {"server.tls.client_ca_file", K::kString, &s.tls.client_ca_file},
      {"server.auth.api_keys", K::kStringList, &s.auth.api_keys},
      {"server.limits.max_context_tokens", K::kInt, &s.limits.max_context_tokens, 0, 1 << 24},
      {"server.limits.max_prompt_tokens", K::kInt, &s.limits.max_prompt_tokens, 0, 1 << 24},
      {"server.limits.max_new_tokens", K::kInt, &s.limits.max_new_tokens, 1, 1 << 20},
      {"server.limits.default_max_tokens", K::kInt, &s.limits.default_max_tokens, 1, 1 << 20},
      {"server.limits.max_message_bytes", K::kInt, &s.limits.max_message_bytes, 1024, 1LL << 31},
      {"server.limits.context_load_wait_s", K::kDouble, &s.limits.context_load_wait_s, 0, 3600},
      {"server.limits.context_loader_threads", K::kInt, &s.limits.context_loader_threads, 1, 64},
      {"server.logging.level", K::kEnum, &s.logging.level, 0, 0,
       {"trace", "debug", "info", "warn", "error", "critical", "off"}},
      {"server.logging.format", K::kEnum, &s.logging.format, 0, 0, {"text", "json"}},
      {"server.logging.file", K::kString, &s.logging.file},
      {"engine.model.path", K::kString, &e.model.path},
      {"engine.model.backend", K::kEnum, &e.model.backend, 0, 0, {"cpu", "cuda"}},
      {"engine.model.threads", K::kInt, &e.model.threads, 0, 1024},
      {"engine.model.cuda.dtype", K::kEnum, &e.model.cuda.dtype, 0, 0, {"bf16", "fp32"}},
      {"engine.model.cuda.device", K::kInt, &e.model.cuda.device, 0, 1023},
      {"engine.model.cuda.weights_mb", K::kInt, &e.model.cuda.weights_mb, 0, 1 << 24},
      {"engine.model.cuda.workspace_mb", K::kInt, &e.model.cuda.workspace_mb, 1, 1 << 16},
      {"engine.model.cuda.max_step_tokens", K::kInt, &e.model.cuda.max_step_tokens, 1, 65535},
      {"engine.model.cuda.graphs", K::kBool, &e.model.cuda.graphs},
      {"engine.model.cuda.graph_max_batch", K::kInt, &e.model.cuda.graph_max_batch, 1, 256},
      {"engine.model.cuda.context_mb", K::kInt, &e.model.cuda.context_mb, 0, 1 << 24},
      {"engine.memory.kv_pool_mb", K::kInt, &e.memory.kv_pool_mb, 1, 1 << 24},
      {"engine.memory.resident_contexts_mb", K::kInt, &e.memory.resident_contexts_mb, 1, 1 << 24},
      {"engine.scheduler.max_batch_tokens", K::kInt, &e.scheduler.max_batch_tokens, 1, 1 << 20},
      {"engine.scheduler.max_running", K::kInt, &e.scheduler.max_running, 1, 4096},
      {"engine.scheduler.max_queue", K::kInt, &e.scheduler.max_queue, 0, 1 << 20},
      {"engine.scheduler.ingest_chunk_tokens", K::kInt, &e.scheduler.ingest_chunk_tokens, 1,
       1 << 20},
      {"engine.squeeze.sink_tokens", K::kInt, &q.sink_tokens, 0, 1024},
      {"engine.squeeze.observation_window", K::kInt, &q.observation_window, 1, 4096},
      {"engine.squeeze.centroid_fraction", K::kDouble, &q.centroid_fraction, 1e-4, 0.5},
      {"engine.squeeze.coarse_fraction", K::kDouble, &q.coarse_fraction, -1, 0.5},
      {"engine.squeeze.kmeans_iterations", K::kInt, &q.kmeans_iterations, 1, 300},
      {"engine.squeeze.kmeans_seed", K::kInt, &q.kmeans_seed, 0, kIntMax},
      {"engine.squeeze.default_mode", K::kEnum, &q.default_mode, 0, 0, {"squeezed", "dense"}},
      {"engine.squeeze.default_policy", K::kEnum, &q.default_policy, 0, 0,
       {"budget", "threshold"}},
      {"engine.squeeze.default_kv_budget", K::kDouble, &q.default_kv_budget, 1e-4, 1},
      {"engine.squeeze.default_sparsity", K::kDouble, &q.default_sparsity, 0.5, 0.95},
      {"engine.squeeze.gqa_reduce", K::kEnum, &q.gqa_reduce, 0, 0, {"max", "mean"}},
      {"engine.squeeze.prefill_block_size", K::kInt, &q.prefill_block_size, 1, 4096},
      {"engine.squeeze.hierarchical", K::kBool, &q.hierarchical},
      {"storage.path", K::kString, &c.storage.path},
      {"storage.blob_min_bytes", K::kInt, &c.storage.blob_min_bytes, 0, 1 << 30},
      {"storage.block_cache_mb", K::kInt, &c.storage.block_cache_mb, 1, 1 << 20},
      {"storage.kv_dtype", K::kEnum, &c.storage.kv_dtype, 0, 0, {"fp32", "bf16"}},
  };
}

std::string FormatNumber(double v) {
  std::ostringstream os;
  os.precision(12);
  os << v;
  return os.str();
}

// Sets `f` from `node`; appends a message to `errors` on failure.
void Assign(const Field& f, const YAML::Node& node, std::vector<std::string>& errors) {
  auto fail = [&](const std::string& why) { errors.push_back(f.path + ": " + why); };
  if (!node.IsDefined() || node.IsNull()) return fail("has no value");
  using K = Field::Kind;
  if (f.kind == K::kStringList) {
    if (!node.IsSequence()) return fail("must be a list of strings");
    std::vector<std::string> out;
    for (const auto& item : node) {
      if (!item.IsScalar()) return fail("must be a list of strings");
      out.push_back(item.Scalar());
    }
    *static_cast<std::vector<std::string>*>(f.target) = std::move(out);
    return;
  }
  if (!node.IsScalar()) return fail("must be a single value, not a list or a map");
  const std::string& text = node.Scalar();
  try {
    switch (f.kind) {
      case K::kString:
        *static_cast<std::string*>(f.target) = text;
        return;
      case K::kEnum: {
        for (const auto& c : f.choices) {
          if (c == text) {
            *static_cast<std::string*>(f.target) = text;
            return;
          }
        }
        std::string list;
        for (const auto& c : f.choices) list += (list.empty() ? "" : ", ") + c;
        return fail("must be one of [" + list + "], got '" + text + "'");
      }
      case K::kBool:
        *static_cast<bool*>(f.target) = node.as<bool>();
        return;
      case K::kInt: {
        const auto v = node.as<long long>();
        if (v < f.min || v > f.max) {
          return fail("must be in [" + FormatNumber(f.min) + ", " + FormatNumber(f.max) +
                      "], got " + text);
        }
        if (f.path == "engine.squeeze.kmeans_seed") {
          *static_cast<uint64_t*>(f.target) = static_cast<uint64_t>(v);
        } else {
          *static_cast<int64_t*>(f.target) = v;
        }
        return;
      }
      case K::kDouble: {
        const double v = node.as<double>();
        if (!(v >= f.min && v <= f.max)) {
          return fail("must be in [" + FormatNumber(f.min) + ", " + FormatNumber(f.max) +
                      "], got " + text);
        }
        *static_cast<double*>(f.target) = v;
        return;
      }
      case K::kStringList:
        return;
    }
  } catch (const YAML::Exception&) {
    const char* want = f.kind == K::kBool ? "true or false" : f.kind == K::kInt ? "an integer"
                                                                                : "a number";
    fail(std::string("must be ") + want + ", got '" + text + "'");
  }
}

void Walk(const YAML::Node& node, const std::string& prefix, std::vector<Field>& fields,
          std::vector<std::string>& errors) {
  if (!node.IsMap()) {
    errors.push_back((prefix.empty() ? std::string("(top level)") : prefix) +
                     ": must be a map of keys");
    return;
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.Scalar();
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    const Field* exact = nullptr;
    bool section = false;
    for (const auto& f : fields) {
      if (f.path == path) exact = &f;
      if (f.path.rfind(path + ".", 0) == 0) section = true;
    }
    if (exact) {
      Assign(*exact, kv.second, errors);
    } else if (section) {
      if (kv.second.IsNull()) continue;  // an empty section keeps its defaults
      Walk(kv.second, path, fields, errors);
    } else {
      errors.push_back(path + ": unknown key");
    }
  }
}

// Cross-field checks that a single range cannot express.
void Validate(const DaemonConfig& c, std::vector<std::string>& errors) {
  const auto& s = c.server;
  if (s.listen_address.find(':') == std::string::npos) {
    errors.push_back("server.listen_address: must be host:port, got '" + s.listen_address + "'");
  }
  if (!s.metrics_address.empty() && s.metrics_address.find(':') == std::string::npos) {
    errors.push_back("server.metrics_address: must be host:port or empty, got '" +
                     s.metrics_address + "'");
  }
  if (s.tls.enabled && (s.tls.cert_file.empty() || s.tls.key_file.empty())) {
    errors.push_back("server.tls: enabled needs cert_file and key_file");
  }
  std::set<std::string> names, tokens;
  for (const auto& entry : s.auth.api_keys) {
    const auto colon = entry.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == entry.size()) {
      errors.push_back("server.auth.api_keys: entries must be NAME:TOKEN, got an entry of " +
                       std::to_string(entry.size()) + " characters without that form");
      continue;
    }
    if (!names.insert(entry.substr(0, colon)).second) {
      errors.push_back("server.auth.api_keys: duplicate name '" + entry.substr(0, colon) + "'");
    }
    if (!tokens.insert(entry.substr(colon + 1)).second) {
      errors.push_back("server.auth.api_keys: duplicate token for '" + entry.substr(0, colon) +
                       "'");
    }
  }
  if (s.limits.default_max_tokens > s.limits.max_new_tokens) {
    errors.push_back("server.limits.default_max_tokens: must be <= max_new_tokens (" +
                     std::to_string(s.limits.max_new_tokens) + "), got " +
                     std::to_string(s.limits.default_max_tokens));
  }
  const auto& q = c.engine.squeeze;
  if (q.coarse_fraction > 0 && q.coarse_fraction >= q.centroid_fraction) {
    errors.push_back("engine.squeeze.coarse_fraction: must be below centroid_fraction (" +
                     FormatNumber(q.centroid_fraction) + "), got " +
                     FormatNumber(q.coarse_fraction));
  }
  const auto& cuda = c.engine.model.cuda;
  if (c.engine.model.backend == "cuda" &&
      cuda.max_step_tokens < c.engine.scheduler.max_batch_tokens) {
    errors.push_back("engine.model.cuda.max_step_tokens: must be >= "
                     "engine.scheduler.max_batch_tokens (" +
                     std::to_string(c.engine.scheduler.max_batch_tokens) +
                     ") with the cuda backend, got " + std::to_string(cuda.max_step_tokens));
  }
  if (c.engine.model.path.empty()) errors.push_back("engine.model.path: must be set");
  if (c.storage.path.empty()) errors.push_back("storage.path: must be set");
}

std::string JoinErrors(const std::vector<std::string>& errors) {
  std::string msg = std::to_string(errors.size()) + " configuration error" +
                    (errors.size() == 1 ? "" : "s") + ":";
  for (const auto& e : errors) msg += "\n  " + e;
  return msg;
}

}  // namespace

std::string ExpandPath(const std::string& path) {
  std::string out;
  size_t i = 0;
  if (path.rfind("~/", 0) == 0) {
    const char* home = std::getenv("HOME");
    out = home ? home : "";
    i = 1;
  }
  while (i < path.size()) {
    if (path.compare(i, 2, "${") == 0) {
      const size_t end = path.find('}', i);
      if (end != std::string::npos) {
        const char* v = std::getenv(path.substr(i + 2, end - i - 2).c_str());
        out += v ? v : "";
        i = end + 1;
        continue;
      }
    }
    out += path[i++];
  }
  return out;
}

StatusOr<DaemonConfig> ParseDaemonConfig(const std::string& yaml_text,
                                         const std::vector<ConfigOverride>& overrides) {
  DaemonConfig config;
  auto fields = Fields(config);
  std::vector<std::string> errors;
  try {
    const YAML::Node root = YAML::Load(yaml_text);
    if (root.IsDefined() && !root.IsNull()) Walk(root, "", fields, errors);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError("configuration is not valid YAML: line " +
                                std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  for (const auto& [path, value] : overrides) {
    const Field* field = nullptr;
    for (const auto& f : fields) {
      if (f.path == path) field = &f;
    }
    if (!field) {
      errors.push_back(path + ": unknown key (in --set)");
      continue;
    }
    try {
      // "--set key=" means the empty string, not YAML's null.
      Assign(*field, value.empty() ? YAML::Node(std::string()) : YAML::Load(value), errors);
    } catch (const YAML::Exception& e) {
      errors.push_back(path + ": value '" + value + "' is not valid YAML: " + e.msg);
    }
  }
  config.engine.model.path = ExpandPath(config.engine.model.path);
  config.storage.path = ExpandPath(config.storage.path);
  if (errors.empty()) Validate(config, errors);
  if (!errors.empty()) return InvalidArgumentError(JoinErrors(errors));
  return config;
}

StatusOr<DaemonConfig> LoadDaemonConfig(const std::string& path,
                                        const std::vector<ConfigOverride>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open configuration file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = ParseDaemonConfig(ss.str(), overrides);
  if (!config.ok()) return config.status().WithContext(path);
  return config;
}

namespace {

// Sets root[parts[0]][parts[1]]...[parts.back()] = value, creating the maps on the way.
void SetPath(YAML::Node parent, const std::vector<std::string>& parts, size_t i,
             const YAML::Node& value) {
  if (i + 1 == parts.size()) {
    parent[parts[i]] = value;
    return;
  }
  SetPath(parent[parts[i]], parts, i + 1, value);
}

}  // namespace

std::string DaemonConfigToYaml(const DaemonConfig& config) {
  DaemonConfig copy = config;
  YAML::Node root(YAML::NodeType::Map);
  for (const auto& f : Fields(copy)) {
    std::vector<std::string> parts;
    std::stringstream ss(f.path);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    using K = Field::Kind;
    YAML::Node value;
    switch (f.kind) {
      case K::kString:
      case K::kEnum:
        value = *static_cast<std::string*>(f.target);
        break;
      case K::kBool:
        value = *static_cast<bool*>(f.target);
        break;
      case K::kInt:
        if (f.path == "engine.squeeze.kmeans_seed") {
          value = *static_cast<uint64_t*>(f.target);
        } else {
          value = *static_cast<int64_t*>(f.target);
        }
        break;
      case K::kDouble:
        value = *static_cast<double*>(f.target);
        break;
      case K::kStringList: {
        value = YAML::Node(YAML::NodeType::Sequence);
        for (const auto& v : *static_cast<std::vector<std::string>*>(f.target)) {
          // Never print secrets: API keys show their name only.
          const auto colon = v.find(':');
          value.push_back(colon == std::string::npos ? v : v.substr(0, colon) + ":<redacted>");
        }
        break;
      }
    }
    SetPath(root, parts, 0, value);
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}

}  // namespace sqz
