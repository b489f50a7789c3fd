// kvc/error.hpp — kvc's error codes, their std::error_category, and result<T>.
//
// Environment and setup failures (bad config, no RDMA device, unreachable memory node, malformed
// input) come back as result<T>: a value or a std::error_code with kvc's category plus a detail
// string a person can act on ("block size 17 is not a power of two"). Expected outcomes on hot
// paths (miss, lost CAS race, pool full) are plain return values, not errors; bugs are
// KVC_ASSERT. Nothing here throws: result<T>::value() on an error is a precondition violation
// (KVC_ASSERT), not an exception, so the library builds with -fno-exceptions.
//
// result<T> uses std::expected's member names (has_value, value, error, value_or, operator*,
// operator->) so that code reads the same; it is its own type, never an alias of std::expected.
//
// Concurrency: values; a result is as thread-safe as a std::string. error_category() returns one
// static object, initialised thread-safely on first use. Design: docs/design/core.md.
#pragma once

#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "kvc/config.hpp"

namespace kvc::inline v0 {

// kvc's error codes. Zero is never an error. Values are stable: they may be logged and compared
// across versions.
enum class errc : int {
  invalid_argument = 1,  // an argument violates the call's documented requirements
  invalid_config = 2,    // a configuration struct is inconsistent or out of range
  buffer_too_small = 3,  // a caller-provided output span cannot hold the result
  out_of_range = 4,      // an offset or index lies outside the object it refers to
  not_supported = 5,     // the build or the platform lacks the requested feature
  no_rdma_device = 6,    // no RDMA device (or not the one asked for) is present
  rdma_error = 7,        // a verbs call or a completion failed
  unreachable = 8,       // a memory node or peer cannot be reached
  protocol_error = 9,    // a peer sent a malformed or unexpected message
  unauthenticated = 10,  // a peer failed to present the cluster's shared secret
  malformed_input = 11,  // a file or message does not parse
  io_error = 12,         // an operating-system I/O call failed
  timed_out = 13,        // a deadline passed before the operation completed
  format_mismatch = 14,  // remote or on-disk data has an unknown magic or format version
  not_executed = 15,     // an earlier operation of its batch on the same connection failed
  no_space = 16,         // a tier, file or disk has no room left for another block
  fenced = 17,           // a memory node cut this client off (declared dead): register anew
};

namespace detail {

class error_category_impl final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "kvc"; }

  [[nodiscard]] std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::invalid_argument:
        return "invalid argument";
      case errc::invalid_config:
        return "invalid configuration";
      case errc::buffer_too_small:
        return "output buffer too small";
      case errc::out_of_range:
        return "out of range";
      case errc::not_supported:
        return "not supported";
      case errc::no_rdma_device:
        return "no RDMA device found";
      case errc::rdma_error:
        return "RDMA operation failed";
      case errc::unreachable:
        return "memory node unreachable";
      case errc::protocol_error:
        return "protocol error";
      case errc::unauthenticated:
        return "authentication failed";
      case errc::malformed_input:
        return "malformed input";
      case errc::io_error:
        return "I/O error";
      case errc::timed_out:
        return "timed out";
      case errc::format_mismatch:
        return "format or version mismatch";
      case errc::not_executed:
        return "not executed: an earlier operation on its connection failed";
      case errc::no_space:
        return "no space left";
      case errc::fenced:
        return "fenced: the memory node cut this client off after it was declared dead";
    }
    return "unknown kvc error " + std::to_string(code);
  }
};

}  // namespace detail

// The one category object of kvc's codes (an inline function's static is one object per program).
[[nodiscard]] inline const std::error_category& error_category() noexcept {
  static const detail::error_category_impl category;
  return category;
}

[[nodiscard]] inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

// The error half of a result: a code plus a detail string saying what, in this call, went wrong.
// Build one with kvc::fail(code, detail) and return it from a function that returns result<T>.
struct failure {
  std::error_code code;
  std::string detail;
};

// A failure with kvc's category (or any std::error_code) and a detail message.
[[nodiscard]] inline failure fail(std::error_code code, std::string detail = {}) {
  return failure{code, std::move(detail)};
}
[[nodiscard]] inline failure fail(errc code, std::string detail = {}) {
  return failure{make_error_code(code), std::move(detail)};
}

namespace detail {
// "<detail>: <code message>", or just the code's message when there is no detail.
[[nodiscard]] inline std::string describe(const failure& f) {
  std::string text = f.code.message();
  if (f.detail.empty()) return text;
  return f.detail + " (" + text + ")";
}
}  // namespace detail

// A value of type T, or a failure. Never empty. Copyable and movable when T is.
template <class T>
class [[nodiscard]] result {
  static_assert(!std::is_reference_v<T> && !std::is_same_v<std::remove_cv_t<T>, failure>,
                "result<T> holds a value type other than kvc::failure");

 public:
  using value_type = T;
  using error_type = std::error_code;

  template <class U = T>
  requires std::is_constructible_v<T, U&&> &&
      (!std::is_same_v<std::remove_cvref_t<U>, failure>)result(U&& value)
      : state_(std::in_place_index<0>, std::forward<U>(value)) {}      // NOLINT
  result(failure f) : state_(std::in_place_index<1>, std::move(f)) {}  // NOLINT
  result(std::error_code code) : result(failure{code, {}}) {}          // NOLINT
  result(errc code) : result(failure{make_error_code(code), {}}) {}    // NOLINT

  [[nodiscard]] bool has_value() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  // The value. Precondition (KVC_ASSERT): has_value().
  [[nodiscard]] T& value() & {
    KVC_ASSERT(has_value(), "result::value() called on an error");
    return *std::get_if<0>(&state_);
  }
  [[nodiscard]] const T& value() const& {
    KVC_ASSERT(has_value(), "result::value() called on an error");
    return *std::get_if<0>(&state_);
  }
  [[nodiscard]] T&& value() && { return std::move(value()); }
  [[nodiscard]] T& operator*() & { return value(); }
  [[nodiscard]] const T& operator*() const& { return value(); }
  [[nodiscard]] T&& operator*() && { return std::move(value()); }
  [[nodiscard]] T* operator->() { return &value(); }
  [[nodiscard]] const T* operator->() const { return &value(); }

  template <class U>
  [[nodiscard]] T value_or(U&& fallback) const& {
    return has_value() ? value() : static_cast<T>(std::forward<U>(fallback));
  }

  // The error code. Precondition (KVC_ASSERT): !has_value().
  [[nodiscard]] std::error_code error() const {
    KVC_ASSERT(!has_value(), "result::error() called on a value");
    return std::get_if<1>(&state_)->code;
  }
  // The call-specific detail ("" when none). Precondition: !has_value().
  [[nodiscard]] const std::string& detail() const {
    KVC_ASSERT(!has_value(), "result::detail() called on a value");
    return std::get_if<1>(&state_)->detail;
  }
  // A sentence for a person: the detail and the code's message. Precondition: !has_value().
  [[nodiscard]] std::string message() const {
    KVC_ASSERT(!has_value(), "result::message() called on a value");
    return detail::describe(*std::get_if<1>(&state_));
  }
  // The whole failure, to pass an error on to a caller. Precondition: !has_value().
  [[nodiscard]] failure take_failure() && {
    KVC_ASSERT(!has_value(), "result::take_failure() called on a value");
    return std::move(*std::get_if<1>(&state_));
  }

 private:
  std::variant<T, failure> state_;
};

// result<void>: success, or a failure.
template <>
class [[nodiscard]] result<void> {
 public:
  using value_type = void;
  using error_type = std::error_code;

  result() = default;
  result(failure f) : failure_(std::move(f)), failed_(true) {}       // NOLINT
  result(std::error_code code) : result(failure{code, {}}) {}        // NOLINT
  result(errc code) : result(failure{make_error_code(code), {}}) {}  // NOLINT

  [[nodiscard]] bool has_value() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return has_value(); }
  // Precondition (KVC_ASSERT): has_value().
  void value() const { KVC_ASSERT(has_value(), "result::value() called on an error"); }

  [[nodiscard]] std::error_code error() const {
    KVC_ASSERT(!has_value(), "result::error() called on a value");
    return failure_.code;
  }
  [[nodiscard]] const std::string& detail() const {
    KVC_ASSERT(!has_value(), "result::detail() called on a value");
    return failure_.detail;
  }
  [[nodiscard]] std::string message() const {
    KVC_ASSERT(!has_value(), "result::message() called on a value");
    return detail::describe(failure_);
  }
  [[nodiscard]] failure take_failure() && {
    KVC_ASSERT(!has_value(), "result::take_failure() called on a value");
    return std::move(failure_);
  }

 private:
  failure failure_{};
  bool failed_ = false;
};

}  // namespace kvc::inline v0

template <>
struct std::is_error_code_enum<kvc::errc> : std::true_type {};
