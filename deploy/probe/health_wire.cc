#include "deploy/probe/health_wire.h"

namespace sqz::probe {
namespace {

// Wire types of the protobuf encoding.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// Reads a varint at bytes[*pos], advancing *pos; false when truncated or longer than 10 bytes.
bool ReadVarint(std::string_view bytes, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (*pos >= bytes.size()) return false;
    const auto byte = static_cast<uint8_t>(bytes[(*pos)++]);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

}  // namespace

std::string ServingStatusName(int status) {
  switch (static_cast<ServingStatus>(status)) {
    case ServingStatus::kUnknown:
      return "UNKNOWN";
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "STATUS_" + std::to_string(status);
}

std::string EncodeHealthCheckRequest(std::string_view service) {
  std::string out;
  if (service.empty()) return out;  // proto3 omits default values
  out.push_back(static_cast<char>((1 << 3) | kLengthDelimited));
  AppendVarint(service.size(), &out);
  out.append(service);
  return out;
}

StatusOr<int> DecodeHealthCheckResponse(std::string_view bytes) {
  int status = static_cast<int>(ServingStatus::kUnknown);
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t field_start = pos;
    uint64_t tag = 0;
    if (!ReadVarint(bytes, &pos, &tag)) {
      return DataLossError("HealthCheckResponse: truncated tag at byte " +
                           std::to_string(field_start));
    }
    const uint64_t field = tag >> 3;
    const int wire_type = static_cast<int>(tag & 7);
    if (field == 0) {
      return DataLossError("HealthCheckResponse: field number 0 at byte " +
                           std::to_string(field_start));
    }
    if (field == 1 && wire_type != kVarint) {
      return DataLossError("HealthCheckResponse: field 1 (status) has wire type " +
                           std::to_string(wire_type) + ", want 0 (varint)");
    }
    uint64_t value = 0;
    switch (wire_type) {
      case kVarint:
        if (!ReadVarint(bytes, &pos, &value)) {
          return DataLossError("HealthCheckResponse: truncated varint of field " +
                               std::to_string(field));
        }
        // An enum is an int32 on the wire: negative values arrive as 10-byte varints.
        if (field == 1) status = static_cast<int>(static_cast<int32_t>(value));
        break;
      case kFixed64:
      case kFixed32: {
        const size_t width = wire_type == kFixed64 ? 8 : 4;
        if (bytes.size() - pos < width) {
          return DataLossError("HealthCheckResponse: truncated fixed-width field " +
                               std::to_string(field));
        }
        pos += width;
        break;
      }
      case kLengthDelimited:
        if (!ReadVarint(bytes, &pos, &value) || bytes.size() - pos < value) {
          return DataLossError("HealthCheckResponse: truncated length-delimited field " +
                               std::to_string(field));
        }
        pos += value;
        break;
      default:
        return DataLossError("HealthCheckResponse: unsupported wire type " +
                             std::to_string(wire_type) + " of field " + std::to_string(field));
    }
  }
  return status;
}

}  // namespace sqz::probe
