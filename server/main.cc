// squeezed: the Squeeze gRPC inference server daemon.
//
//   squeezed [--config FILE] [--set KEY=VALUE]... [--listen ADDR] [--model PATH] ...
//   squeezed --check-config FILE     print the effective configuration, or every error
//   squeezed --version
//
// SIGINT/SIGTERM: stop accepting, let streams drain (server.drain_timeout_s), exit 0.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <iostream>

#include "config/daemon_config.h"
#include "server/daemon.h"
#include "server/logging.h"

namespace {

int Fail(const sqz::Status& status) {
  std::fprintf(stderr, "squeezed: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"squeezed: Squeeze gRPC inference server with Squeezed Attention over registered "
               "long contexts"};
  std::string config_path, check_config, listen, model, backend, data_dir, log_level;
  std::vector<std::string> sets;
  bool version = false;
  app.add_option("-c,--config", config_path, "YAML configuration file (default: built-in defaults)");
  app.add_option("--set", sets, "Override one configuration key: KEY=VALUE (repeatable)");
  app.add_option("--listen", listen, "Same as --set server.listen_address=ADDR");
  app.add_option("--model", model, "Same as --set engine.model.path=PATH");
  app.add_option("--backend", backend, "Same as --set engine.model.backend=cpu|cuda");
  app.add_option("--data-dir", data_dir, "Same as --set storage.path=DIR");
  app.add_option("--log-level", log_level, "Same as --set server.logging.level=LEVEL");
  app.add_option("--check-config", check_config,
                 "Validate FILE (with the overrides given), print the effective config, exit");
  app.add_flag("--version", version, "Print the version and exit");
  CLI11_PARSE(app, argc, argv);

  if (version) {
    std::printf("squeezed %s\n", sqz::SqueezeVersion());
    return 0;
  }
  std::vector<sqz::ConfigOverride> overrides;
  for (const auto& s : sets) {
    const auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Fail(sqz::InvalidArgumentError("--set needs KEY=VALUE, got '" + s + "'"));
    }
    overrides.emplace_back(s.substr(0, eq), s.substr(eq + 1));
  }
  if (!listen.empty()) overrides.emplace_back("server.listen_address", listen);
  if (!model.empty()) overrides.emplace_back("engine.model.path", model);
  if (!backend.empty()) overrides.emplace_back("engine.model.backend", backend);
  if (!data_dir.empty()) overrides.emplace_back("storage.path", data_dir);
  if (!log_level.empty()) overrides.emplace_back("server.logging.level", log_level);

  if (!check_config.empty()) {
    auto config = sqz::LoadDaemonConfig(check_config, overrides);
    if (!config.ok()) return Fail(config.status());
    std::cout << "# effective configuration of " << check_config << "\n"
              << sqz::DaemonConfigToYaml(*config);
    return 0;
  }
  auto config = config_path.empty() ? sqz::ParseDaemonConfig("", overrides)
                                    : sqz::LoadDaemonConfig(config_path, overrides);
  if (!config.ok()) return Fail(config.status());
  if (auto s = sqz::SetUpLogging(config->server.logging); !s.ok()) return Fail(s);

  // Block the stop signals in every thread; a dedicated wait below receives them (gRPC's Shutdown
  // must not run in a signal handler).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  spdlog::info("squeezed {} starting: backend {}, model {}", sqz::SqueezeVersion(),
               config->engine.model.backend, config->engine.model.path);
  const std::string address = config->server.listen_address;
  auto daemon = sqz::Daemon::Start(*config, [&](int port) {
    spdlog::info("listening on {}:{} (loading the model)", address.substr(0, address.rfind(':')),
                 port);
  });
  if (!daemon.ok()) {
    spdlog::critical("{}", daemon.status().ToString());
    return 1;
  }
  if ((*daemon)->metrics_port() > 0) {
    spdlog::info("metrics on http://{}:{}/metrics",
                 config->server.metrics_address.substr(0, config->server.metrics_address.rfind(':')),
                 (*daemon)->metrics_port());
  }

  int signal = 0;
  sigwait(&stop_signals, &signal);
  spdlog::info("received {}, draining for up to {} s", signal == SIGTERM ? "SIGTERM" : "SIGINT",
               config->server.drain_timeout_s);
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(
                            static_cast<int64_t>(config->server.drain_timeout_s * 1000));
  (*daemon)->Shutdown(deadline);
  (*daemon)->Wait();
  daemon->reset();
  spdlog::info("stopped cleanly");
  return 0;
}
