#include "server/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>
#include <thread>

namespace sqz {
namespace {

StatusOr<std::string> ReadPem(const std::string& key, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError(key + ": cannot read '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(const TlsOptions& tls) {
  if (!tls.enabled) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  SQZ_ASSIGN_OR_RETURN(pair.private_key, ReadPem("server.tls.key_file", tls.key_file));
  SQZ_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem("server.tls.cert_file", tls.cert_file));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.client_ca_file.empty()) {
    SQZ_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem("server.tls.client_ca_file",
                                                     tls.client_ca_file));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

const char* SqueezeVersion() { return SQZ_VERSION; }

Daemon::Daemon(const DaemonConfig& config) : config_(config) {}

Daemon::~Daemon() {
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
}

StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonConfig& config) {
  std::unique_ptr<Daemon> d(new Daemon(config));
  const auto& opts = d->config_;
  d->facts_.version = SqueezeVersion();
  d->facts_.backend = opts.engine.model.backend;
  d->facts_.model_path = opts.engine.model.path;
  const unsigned threads = opts.engine.model.threads > 0
                               ? static_cast<unsigned>(opts.engine.model.threads)
                               : std::thread::hardware_concurrency();
  d->facts_.devices.push_back("cpu: " + std::to_string(threads) + " threads");
  d->generation_ = std::make_unique<GenerationServiceImpl>(d->facts_, d->config_.server);
  d->contexts_ = std::make_unique<ContextServiceImpl>();

  SQZ_ASSIGN_OR_RETURN(auto creds, MakeCredentials(opts.server.tls));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(opts.server.listen_address, creds, &d->port_);
  // A second server on the same port must fail, not share it (gRPC sets SO_REUSEPORT by default).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(opts.server.limits.max_message_bytes));
  builder.RegisterService(d->generation_.get());
  builder.RegisterService(d->contexts_.get());
  d->server_ = builder.BuildAndStart();
  if (!d->server_ || d->port_ == 0) {
    d->server_.reset();
    return UnavailableError("cannot listen on " + opts.server.listen_address +
                            " (address in use or not local?)");
  }
  // Liveness is the process; readiness (the overall service) follows the model being loaded.
  d->facts_.ready = true;
  d->server_->GetHealthCheckService()->SetServingStatus(true);
  return d;
}

void Daemon::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (!server_) return;
  server_->GetHealthCheckService()->Shutdown();
  server_->Shutdown(deadline);
}

void Daemon::Wait() {
  if (server_) server_->Wait();
}

}  // namespace sqz
