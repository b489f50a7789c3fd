// Test support: a global operator new that fails on command, for sweeps that make the n-th
// allocation of a call throw std::bad_alloc, for n = 1, 2, ... Include it in exactly one file of
// a test binary of its own (the replacement is global), and never under a sanitizer, whose
// allocator it would bypass.
//
// Two countdowns: one per thread (the calling thread's own allocations), and one shared by every
// thread that has not set `foreground_thread` (a library's background threads together).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace kvc_test::failing_allocation {

// Allocations on this thread left before one fails (0: none fails); set when one did.
inline thread_local std::size_t allocations_left = 0;
inline thread_local bool failed_one = false;
// The same for every thread but those that set foreground_thread, together.
inline thread_local bool foreground_thread = false;
inline std::atomic<std::size_t> background_left{0};
inline std::atomic<bool> background_failed{false};

// Whether this allocation is the one to fail among the background threads' (counted down once
// per allocation while armed, whichever thread makes it).
inline bool background_turn() {
  std::size_t left = background_left.load(std::memory_order_relaxed);
  while (left > 0) {
    if (background_left.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
      return left == 1;
    }
  }
  return false;
}

inline void* allocate(std::size_t n) {
  if (allocations_left > 0 && --allocations_left == 0) {
    failed_one = true;
    throw std::bad_alloc();
  }
  if (!foreground_thread && background_turn()) {
    background_failed = true;
    throw std::bad_alloc();
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}

}  // namespace kvc_test::failing_allocation

// GCC cannot see that these pair up with each other (malloc and free underneath).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) { return kvc_test::failing_allocation::allocate(n); }
void* operator new[](std::size_t n) { return kvc_test::failing_allocation::allocate(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop
