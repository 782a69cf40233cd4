#include "server/services.h"

#include "server/status_map.h"

namespace sqz {
namespace {

namespace v1 = squeeze::v1;

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A server stream that ends at once with `status` (used for RPCs not served by this build).
template <typename T>
class FinishedWriter final : public grpc::ServerWriteReactor<T> {
 public:
  explicit FinishedWriter(const Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

Status NotYet(const std::string& rpc, const std::string& missing) {
  return UnimplementedError(rpc + " is not served by this build yet: it needs " + missing);
}

}  // namespace

GenerationServiceImpl::GenerationServiceImpl(const ServerFacts& facts,
                                             const ServerOptions& options)
    : facts_(facts), options_(options) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationServiceImpl::Generate(
    grpc::CallbackServerContext*, const v1::GenerateRequest*) {
  return new FinishedWriter<v1::GenerateResponse>(
      NotYet("Generate", "the engine (model runtime and scheduler)"));
}

grpc::ServerUnaryReactor* GenerationServiceImpl::Tokenize(grpc::CallbackServerContext* ctx,
                                                          const v1::TokenizeRequest*,
                                                          v1::TokenizeResponse*) {
  return FinishUnary(ctx, NotYet("Tokenize", "the model's tokenizer in the engine"));
}

grpc::ServerUnaryReactor* GenerationServiceImpl::Detokenize(grpc::CallbackServerContext* ctx,
                                                            const v1::DetokenizeRequest*,
                                                            v1::DetokenizeResponse*) {
  return FinishUnary(ctx, NotYet("Detokenize", "the model's tokenizer in the engine"));
}

grpc::ServerUnaryReactor* GenerationServiceImpl::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                               const v1::GetServerInfoRequest*,
                                                               v1::ServerInfo* info) {
  info->set_version(facts_.version);
  info->set_backend(facts_.backend);
  *info->mutable_model() = facts_.model;
  if (info->model().path().empty()) info->mutable_model()->set_path(facts_.model_path);
  for (const auto& d : facts_.devices) info->add_devices(d);
  auto* limits = info->mutable_limits();
  const auto& l = options_.limits;
  limits->set_max_context_tokens(static_cast<uint32_t>(l.max_context_tokens));
  limits->set_max_prompt_tokens(static_cast<uint32_t>(l.max_prompt_tokens));
  limits->set_max_new_tokens(static_cast<uint32_t>(l.max_new_tokens));
  limits->set_max_message_bytes(static_cast<uint64_t>(l.max_message_bytes));
  info->set_ready(facts_.ready);
  info->add_features("health");
  info->add_features("reflection");
  info->add_features("server_info");
  return FinishUnary(ctx, OkStatus());
}

grpc::ServerUnaryReactor* ContextServiceImpl::CreateContext(grpc::CallbackServerContext* ctx,
                                                            const v1::CreateContextRequest*,
                                                            v1::Context*) {
  return FinishUnary(ctx, NotYet("CreateContext", "the context registry and RocksDB storage"));
}

grpc::ServerUnaryReactor* ContextServiceImpl::GetContext(grpc::CallbackServerContext* ctx,
                                                         const v1::GetContextRequest*,
                                                         v1::Context*) {
  return FinishUnary(ctx, NotYet("GetContext", "the context registry and RocksDB storage"));
}

grpc::ServerUnaryReactor* ContextServiceImpl::ListContexts(grpc::CallbackServerContext* ctx,
                                                           const v1::ListContextsRequest*,
                                                           v1::ListContextsResponse*) {
  return FinishUnary(ctx, NotYet("ListContexts", "the context registry and RocksDB storage"));
}

grpc::ServerUnaryReactor* ContextServiceImpl::DeleteContext(grpc::CallbackServerContext* ctx,
                                                            const v1::DeleteContextRequest*,
                                                            v1::DeleteContextResponse*) {
  return FinishUnary(ctx, NotYet("DeleteContext", "the context registry and RocksDB storage"));
}

grpc::ServerWriteReactor<v1::Context>* ContextServiceImpl::WatchContext(
    grpc::CallbackServerContext*, const v1::WatchContextRequest*) {
  return new FinishedWriter<v1::Context>(
      NotYet("WatchContext", "the context registry and RocksDB storage"));
}

}  // namespace sqz
