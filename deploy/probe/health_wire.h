// Wire format of grpc.health.v1.Health/Check, encoded and decoded by hand so that the container
// health probe needs neither generated code nor the health .proto (gRPC 1.51 on Debian ships no
// client stubs for it). The messages are tiny:
//   HealthCheckRequest  { string service = 1; }
//   HealthCheckResponse { ServingStatus status = 1; }   // enum, varint
//
// Pure functions, no state: safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace sqz::probe {

// grpc.health.v1.HealthCheckResponse.ServingStatus, numbered as in the .proto.
enum class ServingStatus : int {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,  // only sent by Watch; Check answers NOT_FOUND instead
};

// "SERVING", "NOT_SERVING", ...; "STATUS_<n>" for a number outside the enum.
std::string ServingStatusName(int status);

// The serialized HealthCheckRequest for `service` ("" asks about the server as a whole).
std::string EncodeHealthCheckRequest(std::string_view service);

// Parses a serialized HealthCheckResponse. Unknown fields are skipped, as protobuf does; a missing
// status field means UNKNOWN (proto3 default). Returns the raw enum value (it may lie outside
// ServingStatus: a newer server may add values). DATA_LOSS when the bytes are not a valid message
// (truncated varint or field, wrong wire type for field 1, group wire types).
StatusOr<int> DecodeHealthCheckResponse(std::string_view bytes);

}  // namespace sqz::probe
