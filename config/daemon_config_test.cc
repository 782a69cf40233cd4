#include "config/daemon_config.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

namespace sqz {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::string kDefaultFile = std::string(SQZ_SOURCE_DIR) + "/config/squeezed.yaml";

TEST_CASE("the shipped default file parses and equals the built-in defaults") {
  auto from_file = LoadDaemonConfig(kDefaultFile);
  REQUIRE(from_file.ok());
  auto built_in = ParseDaemonConfig("");
  REQUIRE(built_in.ok());
  CHECK(DaemonConfigToYaml(*from_file) == DaemonConfigToYaml(*built_in));
  CHECK(from_file->server.listen_address == "127.0.0.1:50051");
  CHECK(from_file->engine.squeeze.centroid_fraction == 0.05);
  CHECK(from_file->engine.model.path.find('~') == std::string::npos);  // expanded
}

TEST_CASE("values and overrides are applied") {
  auto c = ParseDaemonConfig(R"(
server:
  listen_address: 0.0.0.0:6000
  auth: {api_keys: ["alice:s3cret", "bob:t0ken"]}
engine:
  model: {path: /models/x.gguf, backend: cuda}
  squeeze: {default_kv_budget: 0.25, hierarchical: true}
)",
                             {{"server.limits.max_new_tokens", "100"},
                              {"server.limits.default_max_tokens", "50"},
                              {"storage.path", "/data"}});
  REQUIRE(c.ok());
  CHECK(c->server.listen_address == "0.0.0.0:6000");
  CHECK(c->server.auth.api_keys.size() == 2);
  CHECK(c->engine.model.backend == "cuda");
  CHECK(c->engine.squeeze.default_kv_budget == 0.25);
  CHECK(c->engine.squeeze.hierarchical);
  CHECK(c->server.limits.max_new_tokens == 100);
  CHECK(c->storage.path == "/data");
  // Secrets never appear in the printed config.
  const std::string yaml = DaemonConfigToYaml(*c);
  CHECK(yaml.find("s3cret") == std::string::npos);
  CHECK(yaml.find("alice:<redacted>") != std::string::npos);
  // The printed config parses back to itself (minus the redacted secrets).
  auto again = ParseDaemonConfig(ReadFile(kDefaultFile));
  REQUIRE(again.ok());
}

TEST_CASE("every kind of error is reported with its key path, all at once") {
  auto c = ParseDaemonConfig(R"(
server:
  listn_address: 1.2.3.4:5
  drain_timeout_s: fast
  limits: {max_new_tokens: 0}
  tls: {enabled: maybe}
engine:
  model: {backend: tpu, threads: [1, 2]}
  squeeze: {centroid_fraction: 0.9}
bogus: 1
)");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == StatusCode::kInvalidArgument);
  const std::string& m = c.status().message();
  INFO(m);
  CHECK(m.find("8 configuration errors") != std::string::npos);
  CHECK(m.find("server.listn_address: unknown key") != std::string::npos);
  CHECK(m.find("server.drain_timeout_s: must be a number, got 'fast'") != std::string::npos);
  CHECK(m.find("server.limits.max_new_tokens: must be in [1, 1048576], got 0") !=
        std::string::npos);
  CHECK(m.find("server.tls.enabled: must be true or false, got 'maybe'") != std::string::npos);
  CHECK(m.find("engine.model.backend: must be one of [cpu, cuda], got 'tpu'") !=
        std::string::npos);
  CHECK(m.find("engine.model.threads: must be a single value") != std::string::npos);
  CHECK(m.find("engine.squeeze.centroid_fraction: must be in [0.0001, 0.5], got 0.9") !=
        std::string::npos);
  CHECK(m.find("bogus: unknown key") != std::string::npos);
}

TEST_CASE("unknown top-level keys, bad overrides, bad YAML and cross-field rules") {
  auto unknown = ParseDaemonConfig("bogus: 1\n");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().message().find("bogus: unknown key") != std::string::npos);

  auto bad_override = ParseDaemonConfig("", {{"server.nope", "1"}, {"storage.path", "[a"}});
  REQUIRE_FALSE(bad_override.ok());
  CHECK(bad_override.status().message().find("server.nope: unknown key (in --set)") !=
        std::string::npos);
  CHECK(bad_override.status().message().find("storage.path: value '[a' is not valid YAML") !=
        std::string::npos);

  auto bad_yaml = ParseDaemonConfig("server: [1, 2\n");
  REQUIRE_FALSE(bad_yaml.ok());
  CHECK(bad_yaml.status().message().find("not valid YAML: line") != std::string::npos);

  auto cross = ParseDaemonConfig(R"(
server:
  tls: {enabled: true}
  auth: {api_keys: ["nocolon", "a:x", "a:y", "b:x"]}
  limits: {max_new_tokens: 10, default_max_tokens: 20}
engine: {model: {path: m}, squeeze: {coarse_fraction: 0.1, centroid_fraction: 0.05}}
)");
  REQUIRE_FALSE(cross.ok());
  const std::string& m = cross.status().message();
  INFO(m);
  CHECK(m.find("server.tls: enabled needs cert_file and key_file") != std::string::npos);
  CHECK(m.find("entries must be NAME:TOKEN") != std::string::npos);
  CHECK(m.find("duplicate name 'a'") != std::string::npos);
  CHECK(m.find("duplicate token for 'b'") != std::string::npos);
  CHECK(m.find("default_max_tokens: must be <= max_new_tokens (10), got 20") != std::string::npos);
  CHECK(m.find("coarse_fraction: must be below centroid_fraction") != std::string::npos);

  auto missing = LoadDaemonConfig("/nonexistent/squeezed.yaml");
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find("/nonexistent/squeezed.yaml") != std::string::npos);
}

TEST_CASE("cuda backend options: defaults, values, overrides and key-path errors") {
  auto d = ParseDaemonConfig("");
  REQUIRE(d.ok());
  const CudaOptions& def = d->engine.model.cuda;
  CHECK(def.dtype == "bf16");
  CHECK(def.device == 0);
  CHECK(def.weights_mb == 0);
  CHECK(def.workspace_mb == 64);
  CHECK(def.max_step_tokens == 4096);
  CHECK(def.graphs);
  CHECK(def.graph_max_batch == 16);
  CHECK(def.context_mb == 8192);
  CHECK(DaemonConfigToYaml(*d).find("graph_max_batch: 16") != std::string::npos);
  CHECK(DaemonConfigToYaml(*d).find("context_mb: 8192") != std::string::npos);

  auto c = ParseDaemonConfig(R"(
engine:
  model:
    backend: cuda
    cuda: {dtype: fp32, device: 1, weights_mb: 20000, workspace_mb: 128, graphs: false}
  memory: {kv_pool_mb: 8192}
)",
                             {{"engine.model.cuda.graph_max_batch", "3"},
                              {"engine.model.cuda.context_mb", "40960"},
                              {"engine.model.cuda.max_step_tokens", "1024"}});
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  const CudaOptions& o = c->engine.model.cuda;
  CHECK(o.dtype == "fp32");
  CHECK(o.device == 1);
  CHECK(o.weights_mb == 20000);
  CHECK(o.workspace_mb == 128);
  CHECK_FALSE(o.graphs);
  CHECK(o.graph_max_batch == 3);
  CHECK(o.max_step_tokens == 1024);
  CHECK(o.context_mb == 40960);
  CHECK(c->engine.memory.kv_pool_mb == 8192);
  // The printed configuration parses back to the same options.
  auto again = ParseDaemonConfig(DaemonConfigToYaml(*c));
  REQUIRE(again.ok());
  CHECK(DaemonConfigToYaml(*again) == DaemonConfigToYaml(*c));

  auto bad = ParseDaemonConfig(R"(
engine:
  model:
    backend: cuda
    cuda:
      dtype: fp16
      device: -1
      weights_mb: -5
      workspace_mb: 0
      max_step_tokens: 70000
      graphs: sometimes
      graph_max_batch: 512
      context_mb: -1
      streams: 2
)");
  REQUIRE_FALSE(bad.ok());
  const std::string& m = bad.status().message();
  INFO(m);
  CHECK(m.find("9 configuration errors") != std::string::npos);
  CHECK(m.find("engine.model.cuda.dtype: must be one of [bf16, fp32], got 'fp16'") !=
        std::string::npos);
  CHECK(m.find("engine.model.cuda.device: must be in [0, 1023], got -1") != std::string::npos);
  CHECK(m.find("engine.model.cuda.weights_mb: must be in [0, 16777216], got -5") !=
        std::string::npos);
  CHECK(m.find("engine.model.cuda.workspace_mb: must be in [1, 65536], got 0") !=
        std::string::npos);
  CHECK(m.find("engine.model.cuda.max_step_tokens: must be in [1, 65535], got 70000") !=
        std::string::npos);
  CHECK(m.find("engine.model.cuda.graphs: must be true or false, got 'sometimes'") !=
        std::string::npos);
  CHECK(m.find("engine.model.cuda.graph_max_batch: must be in [1, 256], got 512") !=
        std::string::npos);
  CHECK(m.find("engine.model.cuda.context_mb: must be in [0, 16777216], got -1") !=
        std::string::npos);
  CHECK(m.find("engine.model.cuda.streams: unknown key") != std::string::npos);

  // Steps of the scheduler must fit the GPU's step buffers, with the cuda backend only.
  const std::string steps = R"(
engine:
  model: {backend: BACKEND, cuda: {max_step_tokens: 256}}
  scheduler: {max_batch_tokens: 512}
)";
  auto with_backend = [&](const std::string& b) {
    std::string y = steps;
    y.replace(y.find("BACKEND"), 7, b);
    return ParseDaemonConfig(y);
  };
  auto cuda = with_backend("cuda");
  REQUIRE_FALSE(cuda.ok());
  CHECK(cuda.status().message().find(
            "engine.model.cuda.max_step_tokens: must be >= engine.scheduler.max_batch_tokens "
            "(512) with the cuda backend, got 256") != std::string::npos);
  CHECK(with_backend("cpu").ok());
}

TEST_CASE("context load waiting: server.limits.context_load_wait_s and context_loader_threads") {
  auto defaults = ParseDaemonConfig("");
  REQUIRE(defaults.ok());
  CHECK(defaults->server.limits.context_load_wait_s == 30.0);
  CHECK(defaults->server.limits.context_loader_threads == 2);
  auto set = ParseDaemonConfig("server: {limits: {context_load_wait_s: 2.5}}",
                               {{"server.limits.context_loader_threads", "3"}});
  REQUIRE(set.ok());
  CHECK(set->server.limits.context_load_wait_s == 2.5);
  CHECK(set->server.limits.context_loader_threads == 3);
  CHECK(ParseDaemonConfig("server: {limits: {context_load_wait_s: 0}}").ok());  // refuse at once
  auto bad = ParseDaemonConfig("server: {limits: {context_load_wait_s: -1, "
                               "context_loader_threads: 0}}");
  REQUIRE_FALSE(bad.ok());
  const std::string m = bad.status().message();
  CHECK(m.find("server.limits.context_load_wait_s: must be in [0, 3600], got -1") !=
        std::string::npos);
  CHECK(m.find("server.limits.context_loader_threads: must be in [1, 64], got 0") !=
        std::string::npos);
}

TEST_CASE("storage.kv_dtype: fp32 by default, bf16 on request, nothing else") {
  auto defaults = ParseDaemonConfig("");
  REQUIRE(defaults.ok());
  CHECK(defaults->storage.kv_dtype == "fp32");
  auto set = ParseDaemonConfig("", {{"storage.kv_dtype", "bf16"}});
  REQUIRE(set.ok());
  CHECK(set->storage.kv_dtype == "bf16");
  auto bad = ParseDaemonConfig("storage: {kv_dtype: fp16}");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find(
            "storage.kv_dtype: must be one of [fp32, bf16], got 'fp16'") != std::string::npos);
}

TEST_CASE("ExpandPath expands ~ and environment variables") {
  setenv("SQZ_TEST_VAR", "/tmp/x", 1);
  CHECK(ExpandPath("${SQZ_TEST_VAR}/m.gguf") == "/tmp/x/m.gguf");
  CHECK(ExpandPath("/abs/path") == "/abs/path");
  CHECK(ExpandPath("~/a").find("~") == std::string::npos);
}

}  // namespace
}  // namespace sqz
