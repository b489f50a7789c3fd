// kvc/evict/lfu.hpp — LFU with aging: evicts the entry used least often, least recently used
// among equals; every `aging_period x entries` accesses all use counts halve (LFU-Aging, Arlitt
// et al.), so once-popular entries that went cold give way to newer ones.
//
// O(1) per event: entries live on one LRU list per use count (0 to 255, saturating); a bitmap of
// non-empty lists finds the lowest count at once. Halving splices each list onto the one at half
// its count, and each entry's count is halved lazily (it keeps the epoch of its last update), so
// aging costs O(256) per period, not O(entries).
//
// In a prefix tree a parent is used whenever a child is, so its count is at least the child's
// (halving keeps that order): the victim is a leaf.
//
// Passed-over entries that are not evictable now are moved to the back of their count's list.
//
// Memory: 32 bytes per entry. Allocates nothing after construction. Concurrency: none; the owner
// serialises calls. Design: docs/design/eviction.md.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "kvc/concepts.hpp"
#include "kvc/evict/queue_policy.hpp"

namespace kvc::inline v0 {

struct lfu_config {
  // Halve every count after aging_period x (entries) accesses; 0 never ages (plain LFU). 1 was
  // best on the conversation trace (docs/benchmarks.md): slower aging let early one-off blocks
  // crowd out the next turns of conversations.
  std::size_t aging_period = 1;
};

class lfu_policy {
  struct tag;

 public:
  static constexpr std::size_t max_count = 255;

  struct hook : detail::list_hook<tag> {
    std::uint64_t epoch = 0;  // the aging epoch when count was last set (64 bits: never wraps)
    std::uint8_t count = 0;
  };

  explicit lfu_policy(const lfu_config& config = {}) : aging_period_(config.aging_period) {}
  lfu_policy(const lfu_policy&) = delete;
  lfu_policy& operator=(const lfu_policy&) = delete;

  void insert(hook& h, std::uint64_t /*key*/) noexcept {
    place(h, 1);
    ++size_;
  }
  void access(hook& h, std::uint64_t /*key*/) noexcept {
    const std::size_t c = count(h);
    unlink(h, c);
    place(h, c < max_count ? c + 1 : max_count);
    if (aging_period_ != 0 && ++accesses_ / aging_period_ >= size_) halve();
  }
  void erase(hook& h) noexcept {
    unlink(h, count(h));
    --size_;
  }

  template <class Pred>
  hook* victim(Pred&& evictable) {
    for (std::size_t word = 0; word < nonempty_.size(); ++word) {
      for (std::uint64_t bits = nonempty_[word]; bits != 0; bits &= bits - 1) {
        const std::size_t c = word * 64 + static_cast<std::size_t>(std::countr_zero(bits));
        if (hook* h = detail::first_evictable(buckets_[c], evictable)) return h;
      }
    }
    return nullptr;
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  // The entry's use count, after the halvings since it was last used.
  [[nodiscard]] std::size_t count(const hook& h) const noexcept {
    const std::uint64_t halvings = epoch_ - h.epoch;
    return halvings >= 8 ? 0 : std::size_t{h.count} >> halvings;
  }

 private:
  using bucket = detail::hook_list<hook, tag>;

  void place(hook& h, std::size_t c) noexcept {
    h.count = static_cast<std::uint8_t>(c);
    h.epoch = epoch_;
    buckets_[c].push_back(h);
    nonempty_[c / 64] |= std::uint64_t{1} << (c % 64);
  }
  void unlink(hook& h, std::size_t c) noexcept {
    buckets_[c].erase(buckets_[c].iterator_to(h));
    if (buckets_[c].empty()) nonempty_[c / 64] &= ~(std::uint64_t{1} << (c % 64));
  }
  // Every count halves: list c joins list c / 2 (after it: the halved entries were used more).
  void halve() noexcept {
    accesses_ = 0;
    ++epoch_;
    for (std::size_t c = 1; c <= max_count; ++c) {
      buckets_[c / 2].splice(buckets_[c / 2].end(), buckets_[c]);
    }
    nonempty_ = {};
    for (std::size_t c = 0; c <= max_count; ++c) {
      if (!buckets_[c].empty()) nonempty_[c / 64] |= std::uint64_t{1} << (c % 64);
    }
  }

  std::array<bucket, max_count + 1> buckets_;
  std::array<std::uint64_t, (max_count + 1) / 64> nonempty_{};
  std::size_t size_ = 0;
  std::size_t accesses_ = 0;
  std::size_t aging_period_;
  std::uint64_t epoch_ = 0;
};

static_assert(EvictionPolicy<lfu_policy>);

}  // namespace kvc::inline v0
