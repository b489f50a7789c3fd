// kvc/evict/lfu.hpp — LFU with dynamic aging (LFU-DA, Arlitt et al.): evicts the entry with the
// lowest priority, where an entry's priority is its use count plus the cache's age at its last
// use, and the age becomes the priority of each evicted entry. Plain LFU keeps once-popular
// entries forever; the age lets newer entries catch up, so the cache follows a shifting
// workload. Ties go to the least recently used entry.
//
// In a prefix tree a parent is used whenever a child is, so its count is at least the child's:
// the victim is a leaf.
//
// Passed-over entries that are not evictable now are re-aged as if just used.
//
// Memory: 56 bytes per entry (an intrusive red-black tree node, priority, order, count). Every
// event is O(log n) (the ordered set), allocates nothing. Concurrency: none; the owner
// serialises calls. Design: docs/design/eviction.md.
#pragma once

#include <boost/intrusive/set.hpp>
#include <cstddef>
#include <cstdint>
#include <tuple>

#include "kvc/concepts.hpp"

namespace kvc::inline v0 {

class lfu_policy {
  struct tag;
  using set_hook =
      boost::intrusive::set_base_hook<boost::intrusive::tag<tag>,
                                      boost::intrusive::link_mode<boost::intrusive::normal_link>>;

 public:
  struct hook : set_hook {
    std::uint64_t priority = 0;
    std::uint64_t order = 0;  // tie-break: smaller = used longer ago
    std::uint32_t count = 0;
  };

  lfu_policy() = default;
  lfu_policy(const lfu_policy&) = delete;
  lfu_policy& operator=(const lfu_policy&) = delete;

  void insert(hook& h, std::uint64_t /*key*/) noexcept {
    h.count = 1;
    place(h);
  }
  void access(hook& h, std::uint64_t /*key*/) noexcept {
    set_.erase(set_.iterator_to(h));
    if (h.count < UINT32_MAX) ++h.count;
    place(h);
  }
  void erase(hook& h) noexcept {
    if (&h == victim_) {
      age_ = h.priority;
      victim_ = nullptr;
    }
    set_.erase(set_.iterator_to(h));
  }

  template <class Pred>
  hook* victim(Pred&& evictable) {
    victim_ = nullptr;
    for (std::size_t n = set_.size(); n > 0; --n) {
      hook& h = *set_.begin();
      if (evictable(h)) {
        victim_ = &h;
        return &h;
      }
      set_.erase(set_.begin());
      place(h);  // re-aged: behind every entry of equal priority
    }
    return nullptr;
  }

  [[nodiscard]] std::size_t size() const noexcept { return set_.size(); }
  // The cache's age: the priority of the last evicted entry.
  [[nodiscard]] std::uint64_t age() const noexcept { return age_; }

 private:
  struct by_priority {
    bool operator()(const hook& a, const hook& b) const noexcept {
      return std::tie(a.priority, a.order) < std::tie(b.priority, b.order);
    }
  };

  void place(hook& h) noexcept {
    h.priority = age_ + h.count;
    h.order = ++clock_;
    set_.insert(h);
  }

  boost::intrusive::set<hook, boost::intrusive::base_hook<set_hook>,
                        boost::intrusive::compare<by_priority>,
                        boost::intrusive::constant_time_size<true>>
      set_;
  std::uint64_t age_ = 0;
  std::uint64_t clock_ = 0;
  hook* victim_ = nullptr;  // the last victim named: its priority becomes the age when erased
};

static_assert(EvictionPolicy<lfu_policy>);

}  // namespace kvc::inline v0
