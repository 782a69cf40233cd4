// Daemon: squeezed's whole serving stack, built from a DaemonConfig and torn down in order.
//
// Owns (in construction order) the metrics registry and its HTTP endpoint, the RocksDB context
// store, the gRPC server and services, then — loaded after the server listens, so health answers
// NOT_SERVING meanwhile — the model, the backend, the engine and the context registry.
// Shutdown(): stop accepting, let streams drain until the deadline, end the rest with UNAVAILABLE,
// stop the server; the destructor then stops the registry, the engine and closes RocksDB.
// Thread safety: Shutdown() may be called from any one thread (the signal thread), once.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>

#include "common/status.h"
#include "config/daemon_config.h"
#include "engine/model/backend.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/loaded_model.h"
#include "server/metrics.h"
#include "server/registry.h"
#include "server/services.h"
#include "storage/context_store.h"

namespace sqz {

class Daemon {
 public:
  // Listens, then loads the model and starts serving. `on_listening(port)` runs once the port is
  // bound (before the model is loaded). Errors: the store or the address cannot be opened, the model
  // cannot be loaded.
  static StatusOr<std::unique_ptr<Daemon>> Start(const DaemonConfig& config,
                                                 const std::function<void(int port)>& on_listening);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  int port() const { return port_; }
  int metrics_port() const { return http_ ? http_->port() : 0; }
  // Drains until `deadline`, then ends the remaining streams with UNAVAILABLE and stops the server.
  void Shutdown(std::chrono::system_clock::time_point deadline);
  void Wait();

 private:
  explicit Daemon(const DaemonConfig& config);
  Status LoadAndServe();
  void RegisterMetrics();

  DaemonConfig config_;
  metrics::Registry metrics_;
  std::unique_ptr<metrics::HttpEndpoint> http_;
  std::unique_ptr<ContextStore> store_;
  ServingState state_;
  std::unique_ptr<GenerationServiceImpl> generation_;
  std::unique_ptr<ContextServiceImpl> contexts_;
  std::unique_ptr<grpc::Server> server_;
  LoadedModel model_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Registry> registry_;
  RegistryMetrics registry_metrics_;
  int port_ = 0;
};

// The version of this build, e.g. "0.1.0".
const char* SqueezeVersion();

}  // namespace sqz
