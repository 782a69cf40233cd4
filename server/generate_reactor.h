// GenerateReactor: the server-streaming reactor of one Generate call. It drains the request's
// RequestStream (fed by the engine loop) into gRPC writes with exactly one write in flight,
// finishes exactly once, forwards client cancellation (OnCancel) to the engine through the stream,
// and deletes itself in OnDone (the callback API's rule).
//
// A call over a context that must first be loaded starts without a stream: the service returns
// the reactor at once (no callback thread waits), and the registry's acquire callback later
// calls Attach (the job was submitted) or FinishEarly (it failed). Until then a client cancel
// runs the cancel hook (which ends the pending acquire, whose callback then calls FinishEarly).
// Thread safety: Attach, FinishEarly and SetCancelHook may be called from any thread, before or
// after the service returns the reactor; the reactor stays alive until one of Attach /
// FinishEarly has been called and gRPC has called OnDone.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <mutex>

#include "engine/runtime/request_stream.h"
#include "squeeze/v1/generation_service.pb.h"

namespace sqz {

class GenerateReactor final : public grpc::ServerWriteReactor<squeeze::v1::GenerateResponse> {
 public:
  // Called once when the reactor is done (for metrics and in-flight accounting); may be empty.
  using DoneCallback = std::function<void(const GenerateEvent& final_event)>;

  // Starts draining `stream` at once.
  GenerateReactor(std::shared_ptr<RequestStream> stream, std::string request_id,
                  DoneCallback on_done);
  // Waits for Attach or FinishEarly.
  GenerateReactor(std::string request_id, DoneCallback on_done);

  // Starts draining `stream` (the submitted job's). Call at most once, and not after FinishEarly.
  void Attach(std::shared_ptr<RequestStream> stream);
  // Ends the call with `status` (not OK) before any stream was attached.
  void FinishEarly(const Status& status);
  // Runs `hook` once if the client cancels before Attach / FinishEarly (at once if it already
  // has). The hook must lead to FinishEarly or Attach.
  void SetCancelHook(std::function<void()> hook);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void Pump();  // writes the next event if none is in flight

  std::shared_ptr<RequestStream> stream_;  // GUARDED_BY(mu_) until attached; then fixed
  std::string request_id_;
  DoneCallback on_done_;
  std::mutex mu_;
  bool cancelled_ = false;           // GUARDED_BY(mu_): OnCancel came
  std::function<void()> cancel_hook_;  // GUARDED_BY(mu_)
  bool write_in_flight_ = false;     // GUARDED_BY(mu_)
  bool finishing_ = false;           // GUARDED_BY(mu_): Finish called or pending after last write
  grpc::Status final_status_;        // GUARDED_BY(mu_)
  GenerateEvent final_event_;        // GUARDED_BY(mu_)
  squeeze::v1::GenerateResponse msg_;  // the message of the write in flight
};

// Fills a proto GenerateResponse from an engine event (chunk or final).
void EventToResponse(const GenerateEvent& event, squeeze::v1::GenerateResponse* out);

}  // namespace sqz
