// Daemon: the gRPC server of squeezed with everything it serves, built from a DaemonConfig.
//
// Owns the grpc::Server and the services (and, as they arrive, the engine and the context store).
// Start() returns once the server listens; Shutdown() stops accepting, lets calls in flight run
// until the deadline, then cancels them; Wait() blocks until the server has stopped.
// Thread safety: Shutdown() may be called from any one thread (the signal thread), once.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>

#include "common/status.h"
#include "config/daemon_config.h"
#include "server/services.h"

namespace sqz {

class Daemon {
 public:
  static StatusOr<std::unique_ptr<Daemon>> Start(const DaemonConfig& config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // The port the server listens on (the chosen one when the config asked for port 0).
  int port() const { return port_; }
  void Shutdown(std::chrono::system_clock::time_point deadline);
  void Wait();

 private:
  explicit Daemon(const DaemonConfig& config);

  DaemonConfig config_;
  ServerFacts facts_;
  std::unique_ptr<GenerationServiceImpl> generation_;
  std::unique_ptr<ContextServiceImpl> contexts_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// The version of this build, e.g. "0.1.0".
const char* SqueezeVersion();

}  // namespace sqz
