// Status and Result<T>: the one error type of Custody.
//
// Every fallible function returns Status (no value) or Result<T> (a value or an error). Both are
// [[nodiscard]]. Methods are named after std::expected (has_value, value, error, operator*) so
// that moving to it later is mechanical. No exceptions cross Custody APIs; third-party
// exceptions are caught at the boundary and turned into a Status.
//
// Messages say what was expected and what was found. Security failures say which check failed
// (signature, key commitment, chunk tag...) and never echo secret material.
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace custody {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,     // the caller or the input is malformed
  kNotFound,            // a file, key or record does not exist
  kAlreadyExists,       // refusing to overwrite
  kPermissionDenied,    // the OS or a policy refused access
  kFailedPrecondition,  // the system is not in a state where this can run (expired, revoked)
  kUnauthenticated,     // a signature, key or identity check failed
  kDataLoss,            // stored data is corrupt, truncated or was tampered with
  kUnimplemented,       // a version or feature this build does not support
  kOutOfRange,          // a value is outside what the format allows
  kResourceExhausted,   // a budget, limit or memory ran out
  kUnavailable,         // a dependency (TPM, network, device) is not reachable; retrying may help
  kDeadlineExceeded,    // an operation ran out of time
  kInternal,            // a bug or an unexpected third-party failure
};

// Stable lower_snake name of a code, e.g. "data_loss". Used in logs, JSON errors and tests.
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "data_loss: chunk 3 of 7 failed authentication".
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(std::string_view context) const;

  // Explicitly discard a status where ignoring it is correct (e.g. best-effort cleanup).
  void IgnoreError() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }

// Convenience constructors: `return InvalidArgument("...")`.
Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status AlreadyExists(std::string message);
Status PermissionDenied(std::string message);
Status FailedPrecondition(std::string message);
Status Unauthenticated(std::string message);
Status DataLoss(std::string message);
Status Unimplemented(std::string message);
Status OutOfRange(std::string message);
Status ResourceExhausted(std::string message);
Status Unavailable(std::string message);
Status DeadlineExceeded(std::string message);
Status Internal(std::string message);

// Status from errno after a failed system call: "open /x: No such file or directory".
Status ErrnoStatus(int err, std::string_view what);

// Aborts with a message: for broken invariants only, never for untrusted input.
[[noreturn]] void Panic(std::string_view message);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) Panic("Result constructed from an OK Status without a value");
  }

  bool has_value() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return has_value(); }
  bool ok() const { return has_value(); }

  T& value() & {
    CheckValue();
    return std::get<T>(v_);
  }
  const T& value() const& {
    CheckValue();
    return std::get<T>(v_);
  }
  T&& value() && {
    CheckValue();
    return std::get<T>(std::move(v_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  // The error; OkStatus() when a value is held.
  Status error() const { return has_value() ? OkStatus() : std::get<Status>(v_); }
  Status status() const { return error(); }

 private:
  void CheckValue() const {
    if (!has_value()) Panic("Result::value() on error: " + std::get<Status>(v_).ToString());
  }
  std::variant<T, Status> v_;
};

}  // namespace custody

#define CUSTODY_CONCAT_INNER_(a, b) a##b
#define CUSTODY_CONCAT_(a, b) CUSTODY_CONCAT_INNER_(a, b)

// Returns the Status from the enclosing function if `expr` (a Status) is not OK.
// The variable gets a unique name (__COUNTER__) so that the macro nests, e.g. inside a lambda
// passed to a call that is itself checked.
#define CUSTODY_RETURN_IF_ERROR(expr) \
  CUSTODY_RETURN_IF_ERROR_IMPL_(CUSTODY_CONCAT_(custody_status_, __COUNTER__), expr)
#define CUSTODY_RETURN_IF_ERROR_IMPL_(var, expr) \
  do {                                           \
    ::custody::Status var = (expr);              \
    if (!var.ok()) return var;                   \
  } while (0)

// `CUSTODY_ASSIGN_OR_RETURN(auto x, Foo());` declares x from a Result or returns its error.
#define CUSTODY_ASSIGN_OR_RETURN(lhs, expr) \
  CUSTODY_ASSIGN_OR_RETURN_IMPL_(CUSTODY_CONCAT_(custody_result_, __COUNTER__), lhs, expr)
#define CUSTODY_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.has_value()) return tmp.error();            \
  lhs = std::move(tmp).value()
