// gRPC services of squeeze.v1 on the callback API: one reactor per call, unary calls finish in
// their handler, streams keep one write in flight, nothing blocks inside a reaction.
//
// The services borrow a ServingState (built and owned by the Daemon, which outlives the gRPC
// server). Until the model is loaded (state.ready), every RPC but GetServerInfo answers
// UNAVAILABLE; while draining, new Generate calls do too.
#pragma once

#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "config/daemon_config.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/loaded_model.h"
#include "server/metrics.h"
#include "server/registry.h"
#include "server/server_options.h"
#include "squeeze/v1/context_service.grpc.pb.h"
#include "squeeze/v1/generation_service.grpc.pb.h"

namespace sqz {

struct ServerMetrics {
  metrics::Counter* requests = nullptr;         // Generate calls accepted
  metrics::Counter* request_errors = nullptr;   // Generate calls that ended in an error
  metrics::Counter* prompt_tokens = nullptr;
  metrics::Counter* generated_tokens = nullptr;
  metrics::Histogram* ttft = nullptr;
  metrics::Histogram* inter_token = nullptr;
  metrics::Histogram* keys_read = nullptr;      // share of context keys read per request
};

struct ServingState {
  std::string version;
  const DaemonConfig* config = nullptr;
  std::atomic<bool> ready{false};
  std::atomic<bool> draining{false};
  // Set before ready becomes true; immutable afterwards.
  LoadedModel* model = nullptr;
  Engine* engine = nullptr;
  Registry* registry = nullptr;
  std::vector<std::string> devices;
  std::map<std::string, std::string> api_keys;  // token -> key name
  ServerMetrics metrics;
  std::atomic<int64_t> streams_in_flight{0};
};

class GenerationServiceImpl final : public squeeze::v1::GenerationService::CallbackService {
 public:
  explicit GenerationServiceImpl(ServingState* state) : state_(state) {}

  grpc::ServerWriteReactor<squeeze::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const squeeze::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const squeeze::v1::TokenizeRequest* request,
                                     squeeze::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx,
                                       const squeeze::v1::DetokenizeRequest* request,
                                       squeeze::v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx,
                                          const squeeze::v1::GetServerInfoRequest* request,
                                          squeeze::v1::ServerInfo* response) override;

 private:
  ServingState* const state_;
};

class ContextServiceImpl final : public squeeze::v1::ContextService::CallbackService {
 public:
  explicit ContextServiceImpl(ServingState* state) : state_(state) {}

  grpc::ServerUnaryReactor* CreateContext(grpc::CallbackServerContext* ctx,
                                          const squeeze::v1::CreateContextRequest* request,
                                          squeeze::v1::Context* response) override;
  grpc::ServerUnaryReactor* GetContext(grpc::CallbackServerContext* ctx,
                                       const squeeze::v1::GetContextRequest* request,
                                       squeeze::v1::Context* response) override;
  grpc::ServerUnaryReactor* ListContexts(grpc::CallbackServerContext* ctx,
                                         const squeeze::v1::ListContextsRequest* request,
                                         squeeze::v1::ListContextsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteContext(grpc::CallbackServerContext* ctx,
                                          const squeeze::v1::DeleteContextRequest* request,
                                          squeeze::v1::DeleteContextResponse* response) override;
  grpc::ServerWriteReactor<squeeze::v1::Context>* WatchContext(
      grpc::CallbackServerContext* ctx, const squeeze::v1::WatchContextRequest* request) override;

 private:
  ServingState* const state_;
};

// The API key name of the caller: "" when auth is off; UNAUTHENTICATED when a key is required and
// missing or unknown.
StatusOr<std::string> Authenticate(const ServingState& state, const grpc::ServerContextBase& ctx);

void ContextToProto(const ContextView& view, squeeze::v1::Context* out);

}  // namespace sqz
