#include "common/status.h"

#include <cstdio>
#include <cstdlib>

namespace sqz {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(StatusCodeName(code_));
  s += ": ";
  s += message_;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m));
}

#define SQZ_DEFINE_ERROR_(Name, code) \
  Status Name(std::string message) { return Status(StatusCode::code, std::move(message)); }
SQZ_DEFINE_ERROR_(InvalidArgumentError, kInvalidArgument)
SQZ_DEFINE_ERROR_(NotFoundError, kNotFound)
SQZ_DEFINE_ERROR_(AlreadyExistsError, kAlreadyExists)
SQZ_DEFINE_ERROR_(FailedPreconditionError, kFailedPrecondition)
SQZ_DEFINE_ERROR_(ResourceExhaustedError, kResourceExhausted)
SQZ_DEFINE_ERROR_(UnimplementedError, kUnimplemented)
SQZ_DEFINE_ERROR_(InternalError, kInternal)
SQZ_DEFINE_ERROR_(UnavailableError, kUnavailable)
SQZ_DEFINE_ERROR_(DataLossError, kDataLoss)
SQZ_DEFINE_ERROR_(CancelledError, kCancelled)
SQZ_DEFINE_ERROR_(DeadlineExceededError, kDeadlineExceeded)
SQZ_DEFINE_ERROR_(OutOfRangeError, kOutOfRange)
SQZ_DEFINE_ERROR_(PermissionDeniedError, kPermissionDenied)
SQZ_DEFINE_ERROR_(UnauthenticatedError, kUnauthenticated)
#undef SQZ_DEFINE_ERROR_

namespace internal {

CheckFailure::CheckFailure(const char* file, int line, const char* condition) {
  stream_ << file << ":" << line << ": CHECK failed: " << condition << " ";
}

CheckFailure::~CheckFailure() {
  std::string s = stream_.str();
  std::fprintf(stderr, "%s\n", s.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace internal
}  // namespace sqz
