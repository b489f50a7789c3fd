// kvc/evict/s3fifo.hpp — S3-FIFO eviction (Yang et al., SOSP'23): three FIFO queues.
//
//   small  new entries land here (about 10% of the entries);
//   main   entries re-used while in small, or re-inserted soon after leaving it;
//   ghost  keys (only) of entries evicted from small without re-use, as many as main holds.
//
// An access only bumps a 2-bit counter (no list move). Eviction takes from small while it holds
// at least its share: a re-used entry moves to main, an unused one is the victim and its key goes
// to the ghost. Otherwise it takes from main, giving entries with a non-zero counter another round
// (counter - 1). Most one-hit entries leave quickly, which suits KV blocks: most are never reused.
//
// The ghost is a fixed-size direct-mapped table of keys (ghost_slots, a power of two) stamped
// with a counter of ghost insertions: a key counts as a ghost while fewer than main's size keys
// entered the ghost after it (a FIFO of main's size, as in the paper). Collisions overwrite, so
// the ghost is approximate; it allocates once, at construction.
//
// Passed-over entries that are not evictable now are moved to the back of their queue.
//
// Memory: 32 bytes per entry plus 16 bytes per ghost slot. O(1) per access; eviction amortised
// O(1). Concurrency: none; the owner serialises calls. Design: docs/design/eviction.md.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/evict/queue_policy.hpp"

namespace kvc::inline v0 {

struct s3fifo_config {
  double small_ratio = 0.10;           // share of entries the small queue holds before it evicts
  std::size_t ghost_slots = 1u << 16;  // ghost table size: a power of two, about 2x main's size
};

class s3fifo_policy {
  struct tag;

 public:
  struct hook : detail::list_hook<tag> {
    std::uint64_t key = 0;
    std::uint8_t freq = 0;  // 0..3
    bool in_main = false;
  };

  explicit s3fifo_policy(const s3fifo_config& config = {})
      : small_ratio_(config.small_ratio),
        ghost_mask_(config.ghost_slots - 1),
        ghost_(std::make_unique<ghost_slot[]>(config.ghost_slots)) {
    KVC_ASSERT(std::has_single_bit(config.ghost_slots), "ghost_slots must be a power of two");
    KVC_ASSERT(config.small_ratio > 0 && config.small_ratio < 1, "small_ratio must be in (0, 1)");
  }
  s3fifo_policy(const s3fifo_policy&) = delete;
  s3fifo_policy& operator=(const s3fifo_policy&) = delete;

  void insert(hook& h, std::uint64_t key) noexcept {
    small_victim_ = nullptr;  // a victim named but not evicted is not a ghost
    h.key = key;
    h.freq = 0;
    h.in_main = take_ghost(key);
    (h.in_main ? main_ : small_).push_back(h);
  }
  void access(hook& h, std::uint64_t /*key*/) noexcept {
    small_victim_ = nullptr;
    if (h.freq < 3) ++h.freq;
  }
  void erase(hook& h) noexcept {
    if (&h == small_victim_) {
      put_ghost(h.key);
      small_victim_ = nullptr;
    }
    auto& q = h.in_main ? main_ : small_;
    q.erase(q.iterator_to(h));
  }

  template <class Pred>
  hook* victim(Pred&& evictable) {
    small_victim_ = nullptr;
    // Consecutive pass-overs of entries that are not evictable, per queue: a queue whose every
    // entry was passed over is exhausted for this call.
    std::size_t small_skips = 0;
    std::size_t main_skips = 0;
    // Each entry moves small -> main at most once and loses at most 3 counter rounds in main,
    // so the loop ends; the bound is a backstop.
    for (std::size_t steps = 6 * size() + 2; steps > 0; --steps) {
      const bool small_left = small_skips < small_.size();
      const bool main_left = main_skips < main_.size();
      if (small_left && (small_.size() >= small_target() || !main_left)) {
        hook& t = small_.front();
        if (!evictable(t)) {
          ++small_skips;
          small_.splice(small_.end(), small_, small_.begin());
        } else if (t.freq > 0) {
          small_.pop_front();
          t.freq = 0;
          t.in_main = true;
          main_.push_back(t);
        } else {
          small_victim_ = &t;
          return &t;
        }
      } else if (main_left) {
        hook& t = main_.front();
        if (!evictable(t)) {
          ++main_skips;
        } else if (t.freq == 0) {
          return &t;
        } else {
          --t.freq;
          main_skips = 0;  // progress: every entry may be evictable next time round
        }
        main_.splice(main_.end(), main_, main_.begin());
      } else {
        return nullptr;
      }
    }
    return nullptr;
  }

  [[nodiscard]] std::size_t size() const noexcept { return small_.size() + main_.size(); }
  [[nodiscard]] std::size_t small_size() const noexcept { return small_.size(); }
  [[nodiscard]] std::size_t main_size() const noexcept { return main_.size(); }

 private:
  struct ghost_slot {
    std::uint64_t key = 0;
    std::uint64_t stamp = 0;  // ghost clock when the key entered; 0 = empty
  };

  [[nodiscard]] std::size_t small_target() const noexcept {
    return std::max<std::size_t>(
        1, static_cast<std::size_t>(small_ratio_ * static_cast<double>(size())));
  }
  void put_ghost(std::uint64_t key) noexcept {
    ghost_[key & ghost_mask_] = ghost_slot{key, ++ghost_clock_};
  }
  bool take_ghost(std::uint64_t key) noexcept {
    ghost_slot& slot = ghost_[key & ghost_mask_];
    const bool hit = slot.stamp != 0 && slot.key == key &&
                     ghost_clock_ - slot.stamp < std::max<std::size_t>(main_.size(), 1);
    if (hit) slot = ghost_slot{};
    return hit;
  }

  using queue = detail::hook_list<hook, tag>;
  queue small_;
  queue main_;
  double small_ratio_;
  std::size_t ghost_mask_;
  std::unique_ptr<ghost_slot[]> ghost_;
  std::uint64_t ghost_clock_ = 0;
  hook* small_victim_ = nullptr;  // the last victim taken from small: its key becomes a ghost
};

static_assert(EvictionPolicy<s3fifo_policy>);

}  // namespace kvc::inline v0
