// Options of the gRPC server, the metrics endpoint and logging. Plain data filled by config/.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sqz {

struct TlsOptions {
  bool enabled = false;
  std::string cert_file;       // PEM server certificate chain
  std::string key_file;        // PEM private key
  std::string client_ca_file;  // PEM CA bundle; when set, clients must present a certificate
};

struct AuthOptions {
  // "NAME:TOKEN" entries. When non-empty, every RPC but health needs "authorization: Bearer TOKEN";
  // contexts belong to the NAME that created them and are invisible to other keys.
  std::vector<std::string> api_keys;
};

struct LimitsOptions {
  int64_t max_context_tokens = 0;   // 0 = the model's length
  int64_t max_prompt_tokens = 0;    // 0 = the model's length
  int64_t max_new_tokens = 4096;    // per request
  int64_t default_max_tokens = 256;  // when a request leaves max_tokens at 0
  int64_t max_message_bytes = 64 << 20;
  // Seconds a Generate call may wait for room in the resident budget
  // (engine.memory.resident_contexts_mb) for its context's load, while other contexts are held by
  // requests in flight; then RESOURCE_EXHAUSTED. The client's deadline also bounds it. 0 refuses
  // at once. Longer rides out bursts; shorter tells clients sooner to retry elsewhere.
  double context_load_wait_s = 30.0;
  // Threads loading contexts from storage for Generate (never a gRPC thread). More overlap loads
  // of different contexts (disk reads and checksums).
  int64_t context_loader_threads = 2;
};

struct LoggingOptions {
  std::string level = "info";  // trace | debug | info | warn | error | critical | off
  std::string format = "text";  // text | json
  std::string file;             // empty: stderr
};

struct ServerOptions {
  std::string listen_address = "127.0.0.1:50051";
  // Prometheus text metrics over HTTP ("host:port"); empty disables.
  std::string metrics_address = "127.0.0.1:9464";
  // Seconds that streams in flight may run on after SIGTERM before they end with UNAVAILABLE.
  double drain_timeout_s = 30.0;
  TlsOptions tls;
  AuthOptions auth;
  LimitsOptions limits;
  LoggingOptions logging;
};

}  // namespace sqz
