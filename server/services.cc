#include "server/services.h"

#include <google/protobuf/util/time_util.h>

#include <chrono>
#include <random>

#include "engine/chat/chat_template.h"
#include "server/generate_reactor.h"
#include "server/request_convert.h"
#include "server/status_map.h"

namespace sqz {
namespace {

namespace v1 = squeeze::v1;

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A server stream that ends at once with `status`.
template <typename T>
class FinishedWriter final : public grpc::ServerWriteReactor<T> {
 public:
  explicit FinishedWriter(const Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

Status CheckReady(const ServingState& s) {
  if (!s.ready.load()) return UnavailableError("the model is still loading; retry shortly");
  return OkStatus();
}

std::string RandomId(size_t n) {
  static const char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 rng(std::random_device{}());
  std::string id;
  for (size_t i = 0; i < n; ++i) id += kChars[rng() % 36];
  return id;
}

Status CheckTokenIds(const google::protobuf::RepeatedField<uint32_t>& ids, int64_t vocab,
                     const std::string& field) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] >= vocab) {
      return InvalidArgumentError(field + "[" + std::to_string(i) + "] = " +
                                  std::to_string(ids[i]) + " is outside the vocabulary (size " +
                                  std::to_string(vocab) + ")");
    }
  }
  return OkStatus();
}

// The request's prompt as token ids (text, token ids or chat messages).
StatusOr<std::vector<int32_t>> PromptTokens(const ServingState& s, const v1::GenerateRequest& req,
                                            bool has_context) {
  const Tokenizer& tok = *s.model->tokenizer;
  const bool add_bos = !has_context && tok.add_bos();
  std::vector<int32_t> out;
  switch (req.prompt_case()) {
    case v1::GenerateRequest::kText:
      SQZ_RETURN_IF_ERROR(ValidateUtf8(req.text(), "text"));
      out = tok.Encode(req.text(), add_bos, /*parse_special=*/true);
      break;
    case v1::GenerateRequest::kTokenIds:
      SQZ_RETURN_IF_ERROR(CheckTokenIds(req.token_ids().ids(), tok.vocab_size(), "token_ids.ids"));
      out.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
      break;
    case v1::GenerateRequest::kMessages: {
      if (!s.model->chat_template) {
        return FailedPreconditionError("the model has no chat template; send text or token ids");
      }
      std::vector<ChatMessage> messages;
      for (int i = 0; i < req.messages().messages_size(); ++i) {
        const auto& m = req.messages().messages(i);
        SQZ_RETURN_IF_ERROR(ValidateUtf8(m.content(), "messages[" + std::to_string(i) + "].content"));
        messages.push_back({m.role(), m.content()});
      }
      auto text = ApplyChatTemplate(*s.model->chat_template, messages, /*add_generation_prompt=*/true);
      if (!text.ok()) return InvalidArgumentError("messages: " + text.status().message());
      out = tok.Encode(*text, add_bos, /*parse_special=*/true);
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      break;
  }
  if (out.empty()) return InvalidArgumentError("the prompt is empty: set text, token_ids or messages");
  return out;
}

// Deadline of the call on the steady clock, if the client set one.
std::optional<Clock::time_point> SteadyDeadline(const grpc::CallbackServerContext& ctx) {
  const auto deadline = ctx.deadline();
  if (deadline >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return std::nullopt;
  }
  return Clock::now() + (deadline - std::chrono::system_clock::now());
}

}  // namespace

StatusOr<std::string> Authenticate(const ServingState& state, const grpc::ServerContextBase& ctx) {
  if (state.api_keys.empty()) return std::string();
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return UnauthenticatedError("this server needs an API key: send \"authorization: Bearer KEY\"");
  }
  const std::string value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.rfind(kBearer, 0) != 0) {
    return UnauthenticatedError("the authorization header must be \"Bearer KEY\"");
  }
  auto key = state.api_keys.find(value.substr(kBearer.size()));
  if (key == state.api_keys.end()) return UnauthenticatedError("unknown API key");
  return key->second;
}

void ContextToProto(const ContextView& view, v1::Context* out) {
  const ContextRecord& r = view.record;
  out->set_name(ContextName(r.id));
  out->set_state(static_cast<v1::ContextState>(static_cast<int>(r.state)));
  out->set_progress(static_cast<float>(r.progress));
  out->set_token_count(static_cast<uint64_t>(r.token_count));
  auto* o = out->mutable_squeeze_options();
  o->set_sink_tokens(static_cast<uint32_t>(r.options.sink_tokens));
  o->set_observation_window(static_cast<uint32_t>(r.options.observation_window));
  o->set_centroid_fraction(static_cast<float>(r.options.centroid_fraction));
  o->set_coarse_fraction(static_cast<float>(r.options.coarse_fraction));
  o->set_kmeans_iterations(static_cast<uint32_t>(r.options.kmeans_iterations));
  o->set_kmeans_seed(r.options.kmeans_seed);
  for (const auto& [k, v] : r.labels) (*out->mutable_labels())[k] = v;
  out->set_error(r.error);
  *out->mutable_create_time() =
      google::protobuf::util::TimeUtil::MillisecondsToTimestamp(r.create_time_ms);
  *out->mutable_update_time() =
      google::protobuf::util::TimeUtil::MillisecondsToTimestamp(r.update_time_ms);
  out->set_stored_bytes(static_cast<uint64_t>(r.stored_bytes));
  out->set_resident(view.resident);
  out->set_content_digest(r.content_digest);
}

// ---- GenerationService ----------------------------------------------------------------------

namespace {

// Counts a finished Generate call in the metrics (any outcome) and its stream as closed.
GenerateReactor::DoneCallback RecordDone(ServingState* state) {
  return [state](const GenerateEvent& final_event) {
    const auto& m = state->metrics;
    const auto& u = final_event.usage;
    if (!final_event.status.ok() && m.request_errors) m.request_errors->Inc();
    if (m.generated_tokens) m.generated_tokens->Inc(static_cast<double>(u.completion_tokens));
    const auto& t = final_event.timings;
    if (u.completion_tokens > 0 && m.ttft) m.ttft->Observe(t.time_to_first_token_s);
    if (u.completion_tokens > 1 && m.inter_token) {
      m.inter_token->Observe((t.total_s - t.time_to_first_token_s) / (u.completion_tokens - 1));
    }
    if (u.context_tokens > 0 && m.keys_read) m.keys_read->Observe(u.context_keys_read);
    state->streams_in_flight.fetch_sub(1);
  };
}

// The checks that need the context's length, then Submit. `max_tokens_given`: the request set
// max_tokens (else the default shrinks to what fits the model).
StatusOr<std::shared_ptr<RequestStream>> SubmitJob(ServingState& s, GenerateJob job,
                                                   bool max_tokens_given) {
  const int64_t context_tokens = job.context ? job.context->dims.n_tokens : 0;
  const int64_t prompt_tokens = static_cast<int64_t>(job.prompt.size());
  const int64_t model_len = s.model->model->config.max_positions;
  if (!max_tokens_given) {
    const int64_t room = model_len - context_tokens - prompt_tokens;
    if (room >= 1 && room < job.sampling.max_tokens) {
      job.sampling.max_tokens = static_cast<int32_t>(room);
    }
  }
  const int64_t total = context_tokens + prompt_tokens + job.sampling.max_tokens;
  if (total > model_len) {
    return InvalidArgumentError(
        "context (" + std::to_string(context_tokens) + ") + prompt (" +
        std::to_string(prompt_tokens) + ") + max_tokens (" +
        std::to_string(job.sampling.max_tokens) + ") = " + std::to_string(total) +
        " tokens exceeds the model's length of " + std::to_string(model_len));
  }
  SQZ_ASSIGN_OR_RETURN(auto stream, s.engine->Submit(std::move(job)));
  if (s.metrics.requests) s.metrics.requests->Inc();
  if (s.metrics.prompt_tokens) s.metrics.prompt_tokens->Inc(static_cast<double>(prompt_tokens));
  return stream;
}

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationServiceImpl::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) {
  ServingState& s = *state_;
  auto fail = [&](const Status& st) {
    if (s.metrics.request_errors) s.metrics.request_errors->Inc();
    return new FinishedWriter<v1::GenerateResponse>(st);
  };
  auto owner = Authenticate(s, *ctx);
  if (!owner.ok()) return fail(owner.status());
  if (Status r = CheckReady(s); !r.ok()) return fail(r);
  if (s.draining.load()) return fail(UnavailableError("the server is shutting down"));

  // Everything that does not need the context's snapshot is checked before it is acquired.
  GenerateJob job;
  job.arrival = Clock::now();
  job.request_id = req->request_id().empty() ? RandomId(12) : req->request_id();
  job.deadline = SteadyDeadline(*ctx);
  const bool has_context = !req->context().empty();
  std::string context_id;
  if (has_context) {
    auto id = ParseContextName(req->context());
    if (!id.ok()) return fail(id.status().WithContext("context"));
    context_id = *id;
    auto attention = AttentionOptionsFromProto(req->attention(), s.config->engine.squeeze);
    if (!attention.ok()) return fail(attention.status());
    job.attention = *attention;
  }
  auto prompt = PromptTokens(s, *req, has_context);
  if (!prompt.ok()) return fail(prompt.status());
  job.prompt = std::move(prompt).value();
  const auto& limits = s.config->server.limits;
  const int64_t max_prompt =
      limits.max_prompt_tokens > 0 ? limits.max_prompt_tokens : s.model->model->config.max_positions;
  if (static_cast<int64_t>(job.prompt.size()) > max_prompt) {
    return fail(InvalidArgumentError("the prompt has " + std::to_string(job.prompt.size()) +
                                     " tokens; at most " + std::to_string(max_prompt) +
                                     " are allowed"));
  }
  const uint64_t seed = std::hash<std::string>{}(job.request_id);
  auto sampling = SamplingFromProto(req->sampling(), limits, seed);
  if (!sampling.ok()) return fail(sampling.status());
  job.sampling = std::move(sampling).value();
  job.logprobs = req->sampling().logprobs();
  const bool max_tokens_given = req->sampling().has_max_tokens();
  const std::string request_id = job.request_id;

  if (!has_context) {
    auto stream = SubmitJob(s, std::move(job), max_tokens_given);
    if (!stream.ok()) return fail(stream.status());
    s.streams_in_flight.fetch_add(1);
    return new GenerateReactor(std::move(stream).value(), request_id, RecordDone(state_));
  }
  // The context may have to be loaded (or wait for room in memory) first: the reactor is
  // returned at once and the acquire's callback submits the job, on whichever thread the lease
  // comes (inline when the context is resident).
  s.streams_in_flight.fetch_add(1);
  auto* reactor = new GenerateReactor(request_id, RecordDone(state_));
  AcquireOptions options;
  options.deadline = job.deadline;
  auto pending = std::make_shared<GenerateJob>(std::move(job));
  ServingState* state = state_;
  const int64_t ticket = s.registry->AcquireAsync(
      context_id, *owner, options,
      [state, reactor, pending, max_tokens_given](StatusOr<ContextLease> lease) {
        if (!lease.ok()) {
          reactor->FinishEarly(lease.status());
          return;
        }
        pending->context = lease->snapshot;
        pending->lease = lease->hold;
        auto stream = SubmitJob(*state, std::move(*pending), max_tokens_given);
        if (!stream.ok()) {
          reactor->FinishEarly(stream.status());
          return;
        }
        reactor->Attach(std::move(stream).value());
      });
  Registry* registry = s.registry;
  reactor->SetCancelHook([registry, ticket] {
    registry->CancelAcquire(ticket, CancelledError("the client cancelled the call while its "
                                                   "context was waiting to be loaded"));
  });
  return reactor;
}

grpc::ServerUnaryReactor* GenerationServiceImpl::Tokenize(grpc::CallbackServerContext* ctx,
                                                          const v1::TokenizeRequest* req,
                                                          v1::TokenizeResponse* resp) {
  auto owner = Authenticate(*state_, *ctx);
  if (!owner.ok()) return FinishUnary(ctx, owner.status());
  if (Status r = CheckReady(*state_); !r.ok()) return FinishUnary(ctx, r);
  if (Status u = ValidateUtf8(req->text(), "text"); !u.ok()) return FinishUnary(ctx, u);
  const Tokenizer& tok = *state_->model->tokenizer;
  for (int32_t id : tok.Encode(req->text(), req->add_bos() && tok.bos_id() >= 0,
                               req->parse_special())) {
    resp->add_token_ids(static_cast<uint32_t>(id));
    resp->add_pieces(std::string(tok.Piece(id)));
  }
  return FinishUnary(ctx, OkStatus());
}

grpc::ServerUnaryReactor* GenerationServiceImpl::Detokenize(grpc::CallbackServerContext* ctx,
                                                            const v1::DetokenizeRequest* req,
                                                            v1::DetokenizeResponse* resp) {
  auto owner = Authenticate(*state_, *ctx);
  if (!owner.ok()) return FinishUnary(ctx, owner.status());
  if (Status r = CheckReady(*state_); !r.ok()) return FinishUnary(ctx, r);
  const Tokenizer& tok = *state_->model->tokenizer;
  if (Status c = CheckTokenIds(req->token_ids(), tok.vocab_size(), "token_ids"); !c.ok()) {
    return FinishUnary(ctx, c);
  }
  std::vector<int32_t> ids(req->token_ids().begin(), req->token_ids().end());
  resp->set_text(tok.Decode(ids, req->skip_special()));
  return FinishUnary(ctx, OkStatus());
}

grpc::ServerUnaryReactor* GenerationServiceImpl::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                               const v1::GetServerInfoRequest*,
                                                               v1::ServerInfo* info) {
  auto owner = Authenticate(*state_, *ctx);
  if (!owner.ok()) return FinishUnary(ctx, owner.status());
  const ServingState& s = *state_;
  info->set_version(s.version);
  info->set_backend(s.config->engine.model.backend);
  for (const auto& d : s.devices) info->add_devices(d);
  auto* m = info->mutable_model();
  m->set_path(s.config->engine.model.path);
  if (s.ready.load()) {
    const ModelConfig& c = s.model->model->config;
    m->set_name(s.model->name);
    m->set_architecture(c.architecture);
    m->set_layers(static_cast<uint32_t>(c.layers));
    m->set_hidden_size(static_cast<uint32_t>(c.hidden));
    m->set_query_heads(static_cast<uint32_t>(c.q_heads));
    m->set_kv_heads(static_cast<uint32_t>(c.kv_heads));
    m->set_head_dim(static_cast<uint32_t>(c.head_dim));
    m->set_vocab_size(static_cast<uint32_t>(c.vocab));
    m->set_max_positions(static_cast<uint32_t>(c.max_positions));
    m->set_fingerprint(FingerprintHex(s.model->fingerprint));
    if (s.model->chat_template) {
      m->set_chat_template(std::string(ChatTemplateKindName(s.model->chat_template->kind)));
    }
  }
  const auto& l = s.config->server.limits;
  auto* limits = info->mutable_limits();
  const int64_t model_len = s.ready.load() ? s.model->model->config.max_positions : 0;
  limits->set_max_context_tokens(
      static_cast<uint32_t>(l.max_context_tokens > 0 ? l.max_context_tokens : model_len));
  limits->set_max_prompt_tokens(
      static_cast<uint32_t>(l.max_prompt_tokens > 0 ? l.max_prompt_tokens : model_len));
  limits->set_max_new_tokens(static_cast<uint32_t>(l.max_new_tokens));
  limits->set_max_queue(static_cast<uint32_t>(s.config->engine.scheduler.max_queue));
  limits->set_max_message_bytes(static_cast<uint64_t>(l.max_message_bytes));
  info->set_ready(s.ready.load());
  for (const char* f : {"health", "reflection", "server_info", "contexts", "generate", "tokenize",
                        "squeezed_attention"}) {
    info->add_features(f);
  }
  return FinishUnary(ctx, OkStatus());
}

// ---- ContextService -------------------------------------------------------------------------

grpc::ServerUnaryReactor* ContextServiceImpl::CreateContext(grpc::CallbackServerContext* ctx,
                                                            const v1::CreateContextRequest* req,
                                                            v1::Context* resp) {
  ServingState& s = *state_;
  auto owner = Authenticate(s, *ctx);
  if (!owner.ok()) return FinishUnary(ctx, owner.status());
  if (Status r = CheckReady(s); !r.ok()) return FinishUnary(ctx, r);
  CreateContextArgs args;
  args.id = req->context_id().empty() ? RandomId(16) : req->context_id();
  if (Status v = ValidateApiContextId(args.id); !v.ok()) return FinishUnary(ctx, v);
  const Tokenizer& tok = *s.model->tokenizer;
  switch (req->content_case()) {
    case v1::CreateContextRequest::kText:
      if (Status u = ValidateUtf8(req->text(), "text"); !u.ok()) return FinishUnary(ctx, u);
      args.tokens = tok.Encode(req->text(), tok.add_bos(), /*parse_special=*/true);
      break;
    case v1::CreateContextRequest::kTokenIds:
      if (Status c = CheckTokenIds(req->token_ids().ids(), tok.vocab_size(), "token_ids.ids");
          !c.ok()) {
        return FinishUnary(ctx, c);
      }
      args.tokens.assign(req->token_ids().ids().begin(), req->token_ids().ids().end());
      break;
    case v1::CreateContextRequest::CONTENT_NOT_SET:
      return FinishUnary(ctx, InvalidArgumentError("set text or token_ids"));
  }
  if (req->labels_size() > 64) {
    return FinishUnary(ctx, InvalidArgumentError("at most 64 labels, got " +
                                                 std::to_string(req->labels_size())));
  }
  for (const auto& [k, v] : req->labels()) {
    if (k.empty() || k.size() > 63 || v.size() > 256) {
      return FinishUnary(ctx, InvalidArgumentError("label keys need 1..63 characters and values "
                                                   "at most 256; bad label '" + k.substr(0, 64) +
                                                   "'"));
    }
    args.labels[k] = v;
  }
  auto options = SqueezeOptionsFromProto(req->squeeze_options(), s.config->engine.squeeze);
  if (!options.ok()) return FinishUnary(ctx, options.status());
  args.options = *options;
  args.pin = req->pin();
  args.owner = *owner;
  auto view = s.registry->Create(std::move(args));
  if (!view.ok()) return FinishUnary(ctx, view.status());
  ContextToProto(*view, resp);
  return FinishUnary(ctx, OkStatus());
}

grpc::ServerUnaryReactor* ContextServiceImpl::GetContext(grpc::CallbackServerContext* ctx,
                                                         const v1::GetContextRequest* req,
                                                         v1::Context* resp) {
  auto owner = Authenticate(*state_, *ctx);
  if (!owner.ok()) return FinishUnary(ctx, owner.status());
  if (Status r = CheckReady(*state_); !r.ok()) return FinishUnary(ctx, r);
  auto id = ParseContextName(req->name());
  if (!id.ok()) return FinishUnary(ctx, id.status().WithContext("name"));
  auto view = state_->registry->Get(*id, *owner);
  if (!view.ok()) return FinishUnary(ctx, view.status());
  ContextToProto(*view, resp);
  return FinishUnary(ctx, OkStatus());
}

grpc::ServerUnaryReactor* ContextServiceImpl::ListContexts(grpc::CallbackServerContext* ctx,
                                                           const v1::ListContextsRequest* req,
                                                           v1::ListContextsResponse* resp) {
  auto owner = Authenticate(*state_, *ctx);
  if (!owner.ok()) return FinishUnary(ctx, owner.status());
  if (Status r = CheckReady(*state_); !r.ok()) return FinishUnary(ctx, r);
  if (req->page_size() > 1000) {
    return FinishUnary(ctx, InvalidArgumentError("page_size must be in [0, 1000], got " +
                                                 std::to_string(req->page_size())));
  }
  std::optional<ContextState> filter;
  if (req->state_filter() != v1::CONTEXT_STATE_UNSPECIFIED) {
    filter = static_cast<ContextState>(static_cast<int>(req->state_filter()));
  }
  auto page = state_->registry->List(req->page_size() ? req->page_size() : 100, req->page_token(),
                                     filter, *owner);
  if (!page.ok()) return FinishUnary(ctx, page.status());
  for (const auto& v : page->contexts) ContextToProto(v, resp->add_contexts());
  resp->set_next_page_token(page->next_page_token);
  return FinishUnary(ctx, OkStatus());
}

grpc::ServerUnaryReactor* ContextServiceImpl::DeleteContext(grpc::CallbackServerContext* ctx,
                                                            const v1::DeleteContextRequest* req,
                                                            v1::DeleteContextResponse*) {
  auto owner = Authenticate(*state_, *ctx);
  if (!owner.ok()) return FinishUnary(ctx, owner.status());
  if (Status r = CheckReady(*state_); !r.ok()) return FinishUnary(ctx, r);
  auto id = ParseContextName(req->name());
  if (!id.ok()) return FinishUnary(ctx, id.status().WithContext("name"));
  auto* reactor = ctx->DefaultReactor();
  // Completes on the registry thread once the context's requests in flight are done.
  state_->registry->Delete(*id, *owner,
                           [reactor](Status s) { reactor->Finish(ToGrpcStatus(s)); });
  return reactor;
}

namespace {

// Streams a context's state until READY or FAILED (or its deletion). The registry calls Update
// (under its lock) on every change; the latest view is written, one write in flight.
class WatchReactor final : public grpc::ServerWriteReactor<v1::Context> {
 public:
  WatchReactor(Registry* registry, std::string id) : registry_(registry), id_(std::move(id)) {}

  void Begin(const std::string& owner) {
    auto handle = registry_->Watch(id_, owner, [this](const ContextView& v, bool deleted) {
      return Update(v, deleted);
    });
    std::lock_guard<std::mutex> lock(mu_);
    if (!handle.ok()) {
      done_ = true;
      Finish(ToGrpcStatus(handle.status()));
      return;
    }
    handle_ = *handle;
    watching_ = true;
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_ = false;
    if (!ok) {
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "client gone"));
      return;
    }
    PumpLocked();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }
  void OnDone() override {
    bool unwatch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      unwatch = watching_;
    }
    if (unwatch) registry_->Unwatch(id_, handle_);
    delete this;
  }

 private:
  bool Update(const ContextView& v, bool deleted) {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    if (deleted) {
      deleted_ = true;
    } else {
      pending_ = v;
    }
    PumpLocked();
    return !done_;
  }
  void PumpLocked() {
    if (in_flight_ || done_) return;
    if (pending_) {
      msg_.Clear();
      ContextToProto(*pending_, &msg_);
      const bool terminal =
          pending_->record.state == ContextState::kReady || pending_->record.state == ContextState::kFailed;
      pending_.reset();
      if (terminal) {
        done_ = true;
        StartWriteAndFinish(&msg_, grpc::WriteOptions(), grpc::Status::OK);
        return;
      }
      in_flight_ = true;
      StartWrite(&msg_);
      return;
    }
    if (deleted_) FinishOnce(grpc::Status(grpc::StatusCode::NOT_FOUND, "context " + id_ + " was deleted"));
  }
  void FinishOnce(const grpc::Status& s) {
    if (done_) return;
    done_ = true;
    Finish(s);
  }

  Registry* const registry_;
  const std::string id_;
  std::mutex mu_;
  int64_t handle_ = 0;
  bool watching_ = false;
  bool in_flight_ = false;
  bool done_ = false;
  bool deleted_ = false;
  std::optional<ContextView> pending_;
  v1::Context msg_;
};

}  // namespace

grpc::ServerWriteReactor<v1::Context>* ContextServiceImpl::WatchContext(
    grpc::CallbackServerContext* ctx, const v1::WatchContextRequest* req) {
  auto owner = Authenticate(*state_, *ctx);
  if (!owner.ok()) return new FinishedWriter<v1::Context>(owner.status());
  if (Status r = CheckReady(*state_); !r.ok()) return new FinishedWriter<v1::Context>(r);
  auto id = ParseContextName(req->name());
  if (!id.ok()) return new FinishedWriter<v1::Context>(id.status().WithContext("name"));
  auto* reactor = new WatchReactor(state_->registry, *id);
  reactor->Begin(*owner);
  return reactor;
}

}  // namespace sqz
