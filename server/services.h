// gRPC services of squeeze.v1 on the callback API. One reactor per call; unary calls finish inside
// the handler; nothing blocks inside a reaction.
//
// The services borrow what they serve (ServerInfo facts, later the engine and the registry): the
// borrowed objects must outlive the grpc::Server. Thread safety: handlers run on gRPC's threads and
// only read the immutable facts given at construction.
#pragma once

#include <string>

#include "server/server_options.h"
#include "squeeze/v1/context_service.grpc.pb.h"
#include "squeeze/v1/generation_service.grpc.pb.h"

namespace sqz {

// Facts GetServerInfo reports; filled by the daemon at start.
struct ServerFacts {
  std::string version;
  std::string backend;
  std::string model_path;
  std::vector<std::string> devices;
  squeeze::v1::ModelInfo model;  // empty until a model is loaded
  bool ready = false;
};

class GenerationServiceImpl final : public squeeze::v1::GenerationService::CallbackService {
 public:
  // `facts` and `options` are borrowed and must outlive the service.
  GenerationServiceImpl(const ServerFacts& facts, const ServerOptions& options);

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
  const ServerFacts& facts_;
  const ServerOptions& options_;
};

class ContextServiceImpl final : public squeeze::v1::ContextService::CallbackService {
 public:
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
};

}  // namespace sqz
