// Status and StatusOr<T>: the error type that crosses every module boundary in Squeeze.
//
// Codes are numbered exactly as gRPC's (and absl's) canonical codes, so server/ maps them one to one
// onto grpc::StatusCode. No exceptions cross a module boundary: functions that can fail return a
// Status or a StatusOr<T>. Broken invariants are bugs and use SQZ_CHECK (common/check.h) instead.
//
// Thread safety: values; safe to copy between threads.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "common/check.h"

namespace sqz {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// "OK", "INVALID_ARGUMENT", ... as gRPC spells them.
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: temperature must be >= 0, got -1".
  std::string ToString() const;

  // Returns a copy whose message is "context: message" (code unchanged). No-op on OK.
  Status WithContext(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }
Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status AlreadyExistsError(std::string message);
Status FailedPreconditionError(std::string message);
Status ResourceExhaustedError(std::string message);
Status UnimplementedError(std::string message);
Status InternalError(std::string message);
Status UnavailableError(std::string message);
Status DataLossError(std::string message);
Status CancelledError(std::string message);
Status DeadlineExceededError(std::string message);
Status OutOfRangeError(std::string message);
Status PermissionDeniedError(std::string message);
Status UnauthenticatedError(std::string message);

// Either a value of T or a non-OK Status. Accessing the value of an error is a bug (CHECK).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : status_(status) {  // NOLINT(runtime/explicit)
    SQZ_CHECK(!status_.ok()) << "StatusOr built from an OK Status without a value";
  }
  StatusOr(Status&& status) : status_(std::move(status)) {  // NOLINT(runtime/explicit)
    SQZ_CHECK(!status_.ok()) << "StatusOr built from an OK Status without a value";
  }
  StatusOr(const T& value) : value_(value) {}       // NOLINT(runtime/explicit)
  StatusOr(T&& value) : value_(std::move(value)) {}  // NOLINT(runtime/explicit)
  template <typename U,
            typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                        !std::is_same_v<std::decay_t<U>, Status> &&
                                        !std::is_same_v<std::decay_t<U>, StatusOr<T>> &&
                                        !std::is_same_v<std::decay_t<U>, T>>>
  StatusOr(U&& value) : value_(std::forward<U>(value)) {}  // NOLINT(runtime/explicit)

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  const T& value() const& {
    SQZ_CHECK(ok()) << "value() of an error StatusOr: " << status_.ToString();
    return *value_;
  }
  T& value() & {
    SQZ_CHECK(ok()) << "value() of an error StatusOr: " << status_.ToString();
    return *value_;
  }
  T&& value() && {
    SQZ_CHECK(ok()) << "value() of an error StatusOr: " << status_.ToString();
    return std::move(*value_);
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace sqz

#define SQZ_STATUS_CONCAT_INNER_(a, b) a##b
#define SQZ_STATUS_CONCAT_(a, b) SQZ_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define SQZ_RETURN_IF_ERROR(expr)                   \
  do {                                              \
    ::sqz::Status sqz_status_ = (expr);             \
    if (!sqz_status_.ok()) return sqz_status_;      \
  } while (0)

// `lhs` = value of `expr` (a StatusOr), or returns its error from the enclosing function.
#define SQZ_ASSIGN_OR_RETURN(lhs, expr) \
  SQZ_ASSIGN_OR_RETURN_IMPL_(SQZ_STATUS_CONCAT_(sqz_statusor_, __LINE__), lhs, expr)
#define SQZ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
