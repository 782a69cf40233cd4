// The one place where sqz::Status becomes grpc::Status. Codes map one to one (common/status.h
// numbers them as gRPC does); the message is passed through unchanged.
#pragma once

#include <grpcpp/support/status.h>

#include "common/status.h"

namespace sqz {

grpc::Status ToGrpcStatus(const Status& status);
Status FromGrpcStatus(const grpc::Status& status);

}  // namespace sqz
