// kvc/evict/priority_ttl.hpp — eviction by priority level with time-limited pins, as
// TensorRT-LLM's retention priorities and Mooncake's soft pins offer: the host marks blocks
// (a system prompt, a tool's instructions) as more valuable, or keeps them for a while.
//
//   levels: entries live on one of `levels` LRU lists; the victim is the least recently used
//           evictable entry of the lowest non-empty level (level 0 goes first).
//   TTL pin: pin_until(h, t) keeps h out of eviction until the clock reaches t; then it returns
//            to its level as if just used.
//
// Passed-over entries that are not evictable now are moved to the back of their level's list.
//
// Clock is a std::chrono clock (tests use a manual one). Memory: 32 bytes per entry. O(1) per
// event; victim() also returns expired pins to their levels, amortised O(1) each; the number of
// levels is fixed at construction (at most 256). Concurrency: none; the owner serialises calls.
// Design: docs/design/eviction.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/evict/queue_policy.hpp"

namespace kvc::inline v0 {

struct priority_ttl_config {
  std::size_t levels = 4;          // 1 to 256
  std::uint8_t default_level = 0;  // the level of a newly inserted entry
};

template <class Clock = std::chrono::steady_clock>
class priority_ttl_policy {
  struct tag;

 public:
  using clock = Clock;
  using time_point = typename Clock::time_point;

  struct hook : detail::list_hook<tag> {
    time_point pinned_until{};
    std::uint8_t level = 0;
    bool ttl_pinned = false;
  };

  explicit priority_ttl_policy(const priority_ttl_config& config = {})
      : levels_(std::make_unique<queue[]>(config.levels)),
        level_count_(config.levels),
        default_level_(config.default_level) {
    KVC_ASSERT(config.levels >= 1 && config.levels <= 256, "levels must be 1 to 256");
    KVC_ASSERT(config.default_level < config.levels, "default_level must be below levels");
  }
  priority_ttl_policy(const priority_ttl_policy&) = delete;
  priority_ttl_policy& operator=(const priority_ttl_policy&) = delete;

  void insert(hook& h, std::uint64_t /*key*/) noexcept {
    h.level = default_level_;
    h.ttl_pinned = false;
    levels_[h.level].push_back(h);
    ++size_;
  }
  void access(hook& h, std::uint64_t /*key*/) noexcept {
    if (!h.ttl_pinned) list_of(h).splice(list_of(h).end(), list_of(h), list_of(h).iterator_to(h));
  }
  void erase(hook& h) noexcept {
    list_of(h).erase(list_of(h).iterator_to(h));
    --size_;
  }

  // Moves h to `level` (clamped to the highest), as its most recently used entry.
  void set_priority(hook& h, std::uint8_t level) noexcept {
    if (level >= level_count_) level = static_cast<std::uint8_t>(level_count_ - 1);
    if (h.ttl_pinned) {
      h.level = level;  // takes effect when the pin expires
      return;
    }
    list_of(h).erase(list_of(h).iterator_to(h));
    h.level = level;
    levels_[level].push_back(h);
  }
  // Keeps h from eviction until `until` (a later pin extends an earlier one).
  void pin_until(hook& h, time_point until) noexcept {
    if (!h.ttl_pinned) {
      list_of(h).erase(list_of(h).iterator_to(h));
      h.ttl_pinned = true;
      h.pinned_until = until;
      pinned_.push_back(h);
    } else if (until > h.pinned_until) {
      h.pinned_until = until;
    }
    if (pinned_.size() == 1 || until < next_expiry_) next_expiry_ = until;
  }
  void pin_for(hook& h, typename Clock::duration ttl) noexcept { pin_until(h, Clock::now() + ttl); }
  [[nodiscard]] static bool ttl_pinned(const hook& h) noexcept { return h.ttl_pinned; }

  template <class Pred>
  hook* victim(Pred&& evictable) {
    release_expired();
    for (std::size_t level = 0; level < level_count_; ++level) {
      if (hook* h = detail::first_evictable(levels_[level], evictable)) return h;
    }
    return nullptr;
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t ttl_pinned_count() const noexcept { return pinned_.size(); }

 private:
  using queue = detail::hook_list<hook, tag>;

  queue& list_of(const hook& h) noexcept { return h.ttl_pinned ? pinned_ : levels_[h.level]; }

  // Returns pins that expired to their levels, as most recently used.
  void release_expired() noexcept {
    if (pinned_.empty() || Clock::now() < next_expiry_) return;
    const time_point now = Clock::now();
    bool any_left = false;
    time_point next{};
    for (auto it = pinned_.begin(); it != pinned_.end();) {
      hook& h = *it++;
      if (h.pinned_until <= now) {
        pinned_.erase(pinned_.iterator_to(h));
        h.ttl_pinned = false;
        levels_[h.level].push_back(h);
      } else if (!any_left || h.pinned_until < next) {
        next = h.pinned_until;
        any_left = true;
      }
    }
    next_expiry_ = next;
  }

  std::unique_ptr<queue[]> levels_;
  std::size_t level_count_;
  std::uint8_t default_level_;
  queue pinned_;
  time_point next_expiry_{};
  std::size_t size_ = 0;
};

static_assert(EvictionPolicy<priority_ttl_policy<>>);

}  // namespace kvc::inline v0
