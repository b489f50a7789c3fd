// kvc/evict/sieve.hpp — SIEVE eviction (Zhang et al., NSDI'24): a FIFO queue with one "visited"
// bit per entry and a hand that sweeps from the oldest entry towards the newest. An access only
// sets the bit; the hand clears bits as it passes and evicts the first unvisited entry. Nearly
// LRU's hit ratio with FIFO's cost per access (no list move, so no write to shared list nodes).
//
// Entries that are not evictable now are passed over in place, like visited ones (moving them
// behind the hand would make the sweep circle among them); a sweep re-examines them, so a call
// costs O(entries pinned in the hand's way).
//
// Memory: 24 bytes per entry (two pointers and the bit). O(1) per access; eviction is amortised
// O(1). Allocates nothing. Concurrency: none; the owner serialises calls.
// Design: docs/design/eviction.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>

#include "kvc/concepts.hpp"
#include "kvc/evict/queue_policy.hpp"

namespace kvc::inline v0 {

class sieve_policy {
  struct tag;

 public:
  struct hook : detail::list_hook<tag> {
    bool visited = false;
  };

  sieve_policy() = default;
  sieve_policy(const sieve_policy&) = delete;
  sieve_policy& operator=(const sieve_policy&) = delete;

  void insert(hook& h, std::uint64_t /*key*/) noexcept {
    h.visited = false;
    queue_.push_back(h);  // back = newest
  }
  void access(hook& h, std::uint64_t /*key*/) noexcept { h.visited = true; }
  void erase(hook& h) noexcept {
    auto it = queue_.iterator_to(h);
    if (hand_ == it) hand_ = std::next(it);
    queue_.erase(it);
  }

  template <class Pred>
  hook* victim(Pred&& evictable) {
    // Two sweeps suffice: the first clears every visited bit it passes.
    for (std::size_t steps = 2 * queue_.size() + 1; steps > 0 && !queue_.empty(); --steps) {
      if (hand_ == queue_.end()) hand_ = queue_.begin();
      hook& h = *hand_;
      if (!evictable(h) || h.visited) {
        h.visited = false;
      } else {
        return &h;  // the hand stays on it; erase() moves the hand on
      }
      ++hand_;
    }
    return nullptr;
  }

  [[nodiscard]] std::size_t size() const noexcept { return queue_.size(); }

 private:
  using queue = detail::hook_list<hook, tag>;
  queue queue_;
  queue::iterator hand_ = queue_.end();
};

static_assert(EvictionPolicy<sieve_policy>);

}  // namespace kvc::inline v0
