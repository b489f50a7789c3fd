// kvc/evict/queue_policy.hpp — LRU and FIFO eviction: one intrusive queue, oldest at the front.
//
//   lru_policy:  access moves the entry to the back (most recently used); victim = least recently
//                used. The exact LRU of the study's trace numbers.
//   fifo_policy: access changes nothing; victim = oldest insertion. Cheapest per access.
//
// Passed-over entries (not evictable now) are moved to the back, as if just used: in a prefix tree
// these are pinned blocks or inner blocks, which stay while their descendants do.
//
// Memory: 16 bytes per entry (two pointers). Every event is O(1) and allocates nothing.
// Concurrency: none; the owner (tree or tier) serialises calls. Design: docs/design/eviction.md.
#pragma once

#include <boost/intrusive/list.hpp>
#include <cstddef>
#include <cstdint>

#include "kvc/concepts.hpp"

namespace kvc::inline v0 {

namespace detail {

namespace bi = boost::intrusive;

template <class Tag>
using list_hook = bi::list_base_hook<bi::tag<Tag>, bi::link_mode<bi::normal_link>>;

template <class Hook, class Tag>
using hook_list = bi::list<Hook, bi::base_hook<list_hook<Tag>>, bi::constant_time_size<true>>;

// The first entry from the front of `list` for which evictable(entry) holds; entries passed over
// move to the back. Visits each entry at most once; nullptr when none qualifies.
template <class Hook, class Tag, class Pred>
Hook* first_evictable(hook_list<Hook, Tag>& list, Pred& evictable) {
  for (std::size_t n = list.size(); n > 0; --n) {
    Hook& h = list.front();
    if (evictable(h)) return &h;
    list.splice(list.end(), list, list.begin());
  }
  return nullptr;
}

}  // namespace detail

template <bool MoveOnAccess>
class queue_policy {
  struct tag;

 public:
  // The per-entry state: derive the cached entry from it.
  struct hook : detail::list_hook<tag> {};

  queue_policy() = default;
  queue_policy(const queue_policy&) = delete;
  queue_policy& operator=(const queue_policy&) = delete;

  void insert(hook& h, std::uint64_t /*key*/) noexcept { queue_.push_back(h); }
  void access(hook& h, std::uint64_t /*key*/) noexcept {
    if constexpr (MoveOnAccess) queue_.splice(queue_.end(), queue_, queue_.iterator_to(h));
  }
  void erase(hook& h) noexcept { queue_.erase(queue_.iterator_to(h)); }

  template <class Pred>
  hook* victim(Pred&& evictable) {
    return detail::first_evictable(queue_, evictable);
  }

  [[nodiscard]] std::size_t size() const noexcept { return queue_.size(); }

 private:
  detail::hook_list<hook, tag> queue_;
};

using lru_policy = queue_policy<true>;
using fifo_policy = queue_policy<false>;

static_assert(EvictionPolicy<lru_policy>);
static_assert(EvictionPolicy<fifo_policy>);

}  // namespace kvc::inline v0
