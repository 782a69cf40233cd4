#include "server/generate_reactor.h"

#include <utility>

#include "server/status_map.h"

namespace sqz {

namespace v1 = squeeze::v1;

void EventToResponse(const GenerateEvent& e, v1::GenerateResponse* out) {
  out->Clear();
  if (!e.final) {
    auto* c = out->mutable_chunk();
    c->set_text(e.text);
    for (int32_t id : e.token_ids) c->add_token_ids(static_cast<uint32_t>(id));
    for (float lp : e.logprobs) c->add_logprobs(lp);
    for (const auto& t : e.top_logprobs) {
      auto* tl = c->add_top_logprobs();
      tl->set_token_id(static_cast<uint32_t>(t.token_id));
      tl->set_logprob(t.logprob);
    }
    return;
  }
  auto* f = out->mutable_final();
  switch (e.finish_reason) {
    case FinishReason::kStop: f->set_finish_reason(v1::STOP); break;
    case FinishReason::kLength: f->set_finish_reason(v1::LENGTH); break;
    case FinishReason::kCancelled: f->set_finish_reason(v1::CANCELLED); break;
    case FinishReason::kNone: break;
  }
  f->set_stop_string(e.stop_string);
  auto* u = f->mutable_usage();
  u->set_context_tokens(e.usage.context_tokens);
  u->set_prompt_tokens(e.usage.prompt_tokens);
  u->set_completion_tokens(e.usage.completion_tokens);
  u->set_context_keys_read(static_cast<float>(e.usage.context_keys_read));
  auto* t = f->mutable_timings();
  t->set_queued_s(e.timings.queued_s);
  t->set_time_to_first_token_s(e.timings.time_to_first_token_s);
  t->set_total_s(e.timings.total_s);
}

GenerateReactor::GenerateReactor(std::shared_ptr<RequestStream> stream, std::string request_id,
                                 DoneCallback on_done)
    : request_id_(std::move(request_id)), on_done_(std::move(on_done)) {
  Attach(std::move(stream));
}

GenerateReactor::GenerateReactor(std::string request_id, DoneCallback on_done)
    : request_id_(std::move(request_id)), on_done_(std::move(on_done)) {}

void GenerateReactor::Attach(std::shared_ptr<RequestStream> stream) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream_ = std::move(stream);
    cancel_hook_ = nullptr;
    // A cancel that came while the context was loading reaches the engine now.
    if (cancelled_) stream_->Cancel(CancelledError("the client cancelled the call"));
  }
  stream_->SetWaker([this] { Pump(); });
}

void GenerateReactor::FinishEarly(const Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_hook_ = nullptr;
  if (finishing_) return;
  finishing_ = true;
  final_event_.final = true;
  final_event_.status = status;
  Finish(ToGrpcStatus(status));
}

void GenerateReactor::SetCancelHook(std::function<void()> hook) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stream_ || finishing_) return;
    if (!cancelled_) {
      cancel_hook_ = std::move(hook);
      return;
    }
  }
  hook();  // the client cancelled before the hook was set
}

void GenerateReactor::Pump() {
  std::lock_guard<std::mutex> lock(mu_);
  if (write_in_flight_ || finishing_ || !stream_) return;
  GenerateEvent e;
  if (!stream_->Pop(&e)) return;
  if (e.final) {
    finishing_ = true;
    final_event_ = e;
    if (!e.status.ok()) {
      Finish(ToGrpcStatus(e.status));
      return;
    }
    EventToResponse(e, &msg_);
    msg_.set_request_id(request_id_);
    // The final message and the OK status go together.
    StartWriteAndFinish(&msg_, grpc::WriteOptions(), grpc::Status::OK);
    return;
  }
  EventToResponse(e, &msg_);
  msg_.set_request_id(request_id_);
  write_in_flight_ = true;
  StartWrite(&msg_);
}

void GenerateReactor::OnWriteDone(bool ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    write_in_flight_ = false;
    if (!ok) {
      // The client is gone: stop the engine work; OnDone follows once we finish.
      if (stream_) stream_->Cancel(CancelledError("the client closed the stream"));
      if (!finishing_) {
        finishing_ = true;
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed: client gone"));
      }
      return;
    }
  }
  Pump();
}

void GenerateReactor::OnCancel() {
  std::function<void()> hook;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (stream_) {
      stream_->Cancel(CancelledError("the client cancelled the call"));
      return;
    }
    hook = std::exchange(cancel_hook_, nullptr);
  }
  // Outside mu_: the hook ends the pending acquire, whose callback calls FinishEarly.
  if (hook) hook();
}

void GenerateReactor::OnDone() {
  std::shared_ptr<RequestStream> stream;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream = stream_;
  }
  if (stream) {
    stream->ClearWaker();
    if (!stream->cancelled()) {
      // Done without the engine having finished (e.g. the transport failed): stop the engine.
      stream->Cancel(CancelledError("the call ended"));
    }
  }
  if (on_done_) on_done_(final_event_);
  delete this;
}

}  // namespace sqz
