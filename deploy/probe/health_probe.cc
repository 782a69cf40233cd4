// squeeze-health-probe: asks a gRPC server's grpc.health.v1.Health/Check and exits 0 only when
// the answer is SERVING. Used by the container images' HEALTHCHECK; Kubernetes uses its native
// gRPC probes instead (deploy/k8s/base/statefulset.yaml).
//
//   squeeze-health-probe [--addr HOST:PORT] [--service NAME] [--timeout SECONDS]
//
// Defaults: --addr 127.0.0.1:50051, --service "" (the server as a whole), --timeout 5.
// Exit codes: 0 SERVING; 1 anything else (NOT_SERVING, the RPC failed, a malformed reply);
// 2 usage error. Prints one line saying what it found. Plaintext only, like Kubernetes' probes.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "deploy/probe/health_wire.h"

namespace {

constexpr int kExitServing = 0;
constexpr int kExitUnhealthy = 1;
constexpr int kExitUsage = 2;

struct Options {
  std::string address = "127.0.0.1:50051";
  std::string service;
  double timeout_s = 5;
};

const char* GrpcCodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(std::size(kNames)) ? kNames[i] : "CODE_OUT_OF_RANGE";
}

int Usage(const char* argv0, const std::string& error) {
  if (!error.empty()) std::fprintf(stderr, "squeeze-health-probe: %s\n", error.c_str());
  std::fprintf(stderr, "usage: %s [--addr HOST:PORT] [--service NAME] [--timeout SECONDS]\n",
               argv0);
  return kExitUsage;
}

// Fills `options` from argv; returns an error message, or "" when the arguments are valid.
std::string ParseArgs(int argc, char** argv, Options* options) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") return "help";
    if (arg != "--addr" && arg != "--service" && arg != "--timeout") {
      return "unknown argument '" + std::string(arg) + "'";
    }
    if (i + 1 >= argc) return std::string(arg) + " needs a value";
    const std::string value = argv[++i];
    if (arg == "--addr") {
      if (value.empty()) return "--addr must not be empty";
      options->address = value;
    } else if (arg == "--service") {
      options->service = value;
    } else {
      char* end = nullptr;
      options->timeout_s = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0' || !(options->timeout_s > 0) ||
          options->timeout_s > 3600) {
        return "--timeout must be a number of seconds in (0, 3600], got '" + value + "'";
      }
    }
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (const std::string error = ParseArgs(argc, argv, &options); !error.empty()) {
    return Usage(argv[0], error == "help" ? "" : error);
  }

  auto channel = grpc::CreateChannel(options.address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000)));

  const std::string request_bytes = sqz::probe::EncodeHealthCheckRequest(options.service);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(std::move(status)); });
  const grpc::Status rpc = done.get_future().get();

  const std::string what =
      options.address + (options.service.empty() ? "" : " service '" + options.service + "'");
  if (!rpc.ok()) {
    std::printf("%s: health check failed: %s: %s\n", what.c_str(), GrpcCodeName(rpc.error_code()),
                rpc.error_message().c_str());
    return kExitUnhealthy;
  }
  std::vector<grpc::Slice> slices;
  std::string response_bytes;
  if (!response.Dump(&slices).ok()) {
    std::printf("%s: cannot read the health reply\n", what.c_str());
    return kExitUnhealthy;
  }
  for (const auto& s : slices) {
    response_bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  const auto status = sqz::probe::DecodeHealthCheckResponse(response_bytes);
  if (!status.ok()) {
    std::printf("%s: %s\n", what.c_str(), status.status().ToString().c_str());
    return kExitUnhealthy;
  }
  std::printf("%s: %s\n", what.c_str(), sqz::probe::ServingStatusName(*status).c_str());
  return *status == static_cast<int>(sqz::probe::ServingStatus::kServing) ? kExitServing
                                                                          : kExitUnhealthy;
}
