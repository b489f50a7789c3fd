// kvc/evict/tinylfu.hpp — TinyLFU admission (Einziger et al.): a compact estimate of how often
// each key was seen recently, so that a cache that is full admits a new entry only when it is
// likely to be used more than the entry it would evict. It composes with any EvictionPolicy:
// tinylfu<Inner> is an EvictionPolicy that orders entries as Inner does and adds admit().
//
//   frequency_sketch: a count-min sketch (4 rows of 8-bit counters, saturating at 15) behind a
//   doorkeeper (a Bloom filter that absorbs each key's first sighting, so one-hit keys never
//   reach the counters). Every sample_size recorded sightings all counters halve and the
//   doorkeeper clears: the estimate follows recent history.
//
// Use: every request of a block is recorded once: access() records a hit, and the host calls
// record(key) for a miss; before caching the missed block in a full cache, it asks
// admit(new_key, victim_key).
//
// Memory: 4 bytes per counter column plus 1 bit per doorkeeper slot, allocated once at
// construction; the per-entry hook is Inner's. O(1) per event. Concurrency: none; the owner
// serialises calls. Design: docs/design/eviction.md.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/evict/queue_policy.hpp"

namespace kvc::inline v0 {

struct tinylfu_config {
  std::size_t width = 1u << 16;  // counters per row: a power of two, about the cache's entries
  std::size_t sample_size = 0;   // sightings between halvings; 0 = 10 x width
};

class frequency_sketch {
 public:
  explicit frequency_sketch(const tinylfu_config& config = {})
      : shift_(64 - std::countr_zero(config.width)),
        width_(config.width),
        sample_size_(config.sample_size != 0 ? config.sample_size : 10 * config.width),
        counters_(std::make_unique<std::uint8_t[]>(rows * config.width)),
        doorkeeper_((config.width * 8 + 63) / 64) {
    KVC_ASSERT(std::has_single_bit(config.width) && config.width >= 64,
               "tinylfu width must be a power of two of at least 64");
  }

  // Records one sighting of key.
  void record(std::uint64_t key) noexcept {
    if (++samples_ >= sample_size_) halve();
    if (doorkeeper_insert(key)) return;  // first sighting since the last halving
    for (std::size_t r = 0; r < rows; ++r) {
      std::uint8_t& c = counters_[r * width_ + index(key, r)];
      if (c < 15) ++c;
    }
  }

  // Estimated sightings of key since about the last halving (0 to 16).
  [[nodiscard]] unsigned estimate(std::uint64_t key) const noexcept {
    unsigned m = 15;
    for (std::size_t r = 0; r < rows; ++r) {
      m = std::min<unsigned>(m, counters_[r * width_ + index(key, r)]);
    }
    return m + (doorkeeper_contains(key) ? 1u : 0u);
  }

 private:
  static constexpr std::size_t rows = 4;
  static constexpr std::uint64_t seeds[rows] = {0x9E3779B97F4A7C15u, 0xC2B2AE3D27D4EB4Fu,
                                                0x165667B19E3779F9u, 0xD6E8FEB86659FD93u};

  [[nodiscard]] std::size_t index(std::uint64_t key, std::size_t row) const noexcept {
    return static_cast<std::size_t>(((key ^ (key >> 29)) * seeds[row]) >> shift_);
  }
  // The doorkeeper uses two bits per key, from the key's own halves.
  [[nodiscard]] std::pair<std::size_t, std::size_t> door_bits(std::uint64_t key) const noexcept {
    const std::size_t bits = doorkeeper_.size() * 64;
    return {static_cast<std::size_t>(key % bits),
            static_cast<std::size_t>((key * seeds[0] >> 32) % bits)};
  }
  [[nodiscard]] bool test(std::size_t bit) const noexcept {
    return ((doorkeeper_[bit / 64] >> (bit % 64)) & 1u) != 0;
  }
  [[nodiscard]] bool doorkeeper_contains(std::uint64_t key) const noexcept {
    const auto [a, b] = door_bits(key);
    return test(a) && test(b);
  }
  // Adds key; true when it was not there yet.
  bool doorkeeper_insert(std::uint64_t key) noexcept {
    if (doorkeeper_contains(key)) return false;
    const auto [a, b] = door_bits(key);
    doorkeeper_[a / 64] |= std::uint64_t{1} << (a % 64);
    doorkeeper_[b / 64] |= std::uint64_t{1} << (b % 64);
    return true;
  }
  void halve() noexcept {
    samples_ = 0;
    for (std::size_t i = 0; i < rows * width_; ++i)
      counters_[i] = static_cast<std::uint8_t>(counters_[i] >> 1);
    std::fill(doorkeeper_.begin(), doorkeeper_.end(), 0);
  }

  int shift_;
  std::size_t width_;
  std::size_t sample_size_;
  std::size_t samples_ = 0;
  std::unique_ptr<std::uint8_t[]> counters_;
  std::vector<std::uint64_t> doorkeeper_;
};

template <EvictionPolicy Inner>
class tinylfu {
 public:
  using hook = typename Inner::hook;
  using inner_type = Inner;

  template <class... InnerArgs>
  explicit tinylfu(const tinylfu_config& config, InnerArgs&&... inner_args)
      : sketch_(config), inner_(std::forward<InnerArgs>(inner_args)...) {}
  tinylfu() : tinylfu(tinylfu_config{}) {}

  // Does not record: the host recorded the miss that led to the insert (record()).
  void insert(hook& h, std::uint64_t key) noexcept { inner_.insert(h, key); }
  void access(hook& h, std::uint64_t key) noexcept {
    sketch_.record(key);
    inner_.access(h, key);
  }
  void erase(hook& h) noexcept { inner_.erase(h); }
  template <class Pred>
  hook* victim(Pred&& evictable) {
    return inner_.victim(std::forward<Pred>(evictable));
  }
  [[nodiscard]] std::size_t size() const noexcept { return inner_.size(); }

  // Records a sighting of a key that is not cached (a miss), so its frequency is known when it
  // asks to be admitted.
  void record(std::uint64_t key) noexcept { sketch_.record(key); }
  // Whether a new entry should replace the victim: it is estimated to be used more often.
  [[nodiscard]] bool admit(std::uint64_t candidate, std::uint64_t victim_key) const noexcept {
    return sketch_.estimate(candidate) > sketch_.estimate(victim_key);
  }
  [[nodiscard]] const frequency_sketch& sketch() const noexcept { return sketch_; }
  [[nodiscard]] Inner& inner() noexcept { return inner_; }

 private:
  frequency_sketch sketch_;
  Inner inner_;
};

static_assert(EvictionPolicy<tinylfu<lru_policy>>);

}  // namespace kvc::inline v0
