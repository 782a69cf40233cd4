// GenerateReactor: the server-streaming reactor of one Generate call. It drains the request's
// RequestStream (fed by the engine loop) into gRPC writes with exactly one write in flight,
// finishes exactly once, forwards client cancellation (OnCancel) to the engine through the stream,
// and deletes itself in OnDone (the callback API's rule).
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

  // Starts draining `stream` at once. `ctx` is gRPC's and outlives the reactor.
  GenerateReactor(grpc::CallbackServerContext* ctx, std::shared_ptr<RequestStream> stream,
                  std::string request_id, DoneCallback on_done);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void Pump();  // writes the next event if none is in flight

  std::shared_ptr<RequestStream> stream_;
  std::string request_id_;
  DoneCallback on_done_;
  std::mutex mu_;
  bool write_in_flight_ = false;     // GUARDED_BY(mu_)
  bool finishing_ = false;           // GUARDED_BY(mu_): Finish called or pending after last write
  grpc::Status final_status_;        // GUARDED_BY(mu_)
  GenerateEvent final_event_;        // GUARDED_BY(mu_)
  squeeze::v1::GenerateResponse msg_;  // the message of the write in flight
};

// Fills a proto GenerateResponse from an engine event (chunk or final).
void EventToResponse(const GenerateEvent& event, squeeze::v1::GenerateResponse* out);

}  // namespace sqz
