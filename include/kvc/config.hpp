// kvc/config.hpp — compile-time configuration: the assertion macro and small portability helpers
// (with or without exceptions).
//
// KVC_ASSERT(cond, message) checks preconditions and internal invariants (bugs, never expected
// outcomes: those are return values, and environment failures are kvc::result errors). The host
// may define KVC_ASSERT before including any kvc header to route failures into its own handler;
// the default prints the condition, message and location to stderr and calls std::abort().
// Define KVC_DISABLE_ASSERTS to compile the default checks out.
//
// Concurrency: the default handler is safe to call from any thread. Design: docs/design/core.md.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace kvc::inline v0::detail {

[[noreturn]] inline void assert_fail(const char* condition, const char* message, const char* file,
                                     int line) noexcept {
  std::fprintf(stderr, "kvc: assertion failed: %s (%s) at %s:%d\n", condition, message, file, line);
  std::abort();
}

// kvc builds with and without exceptions (-fno-exceptions: nothing throws, and these run the
// body alone). With them:
// undo_if_throws: runs body(); if it throws, runs undo() (which must not throw) and lets the
// exception go on.
template <class Body, class Undo>
void undo_if_throws(Body&& body, Undo&& undo) {
#if defined(__cpp_exceptions)
  try {
    body();
  } catch (...) {
    undo();
    throw;
  }
#else
  static_cast<void>(undo);
  body();
#endif
}
// instead_if_throws: runs body(); if it throws, runs instead() (which must not throw) and the
// exception ends there.
template <class Body, class Instead>
void instead_if_throws(Body&& body, Instead&& instead) {
#if defined(__cpp_exceptions)
  try {
    body();
  } catch (...) {
    instead();
  }
#else
  static_cast<void>(instead);
  body();
#endif
}

}  // namespace kvc::inline v0::detail

#ifndef KVC_ASSERT
#ifdef KVC_DISABLE_ASSERTS
#define KVC_ASSERT(cond, message) static_cast<void>(0)
#else
#define KVC_ASSERT(cond, message)                 \
  (static_cast<bool>(cond) ? static_cast<void>(0) \
                           : ::kvc::detail::assert_fail(#cond, message, __FILE__, __LINE__))
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define KVC_LIKELY(x) __builtin_expect(!!(x), 1)
#define KVC_UNLIKELY(x) __builtin_expect(!!(x), 0)
// Inline every call inside the function: for hot loops whose callees must see constant sizes.
#define KVC_FLATTEN [[gnu::flatten]]
// Always inline a small function that returns a struct: called out of line, its result goes
// through memory in pieces and is read back whole, which stalls the caller (store forwarding).
#define KVC_ALWAYS_INLINE [[gnu::always_inline]]
#else
#define KVC_LIKELY(x) (x)
#define KVC_UNLIKELY(x) (x)
#define KVC_FLATTEN
#define KVC_ALWAYS_INLINE
#endif
