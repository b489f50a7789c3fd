// Shared by the policy and tree tests: a clock the test moves by hand, and a workload of block
// chains that extend earlier ones (a conversation's next turn) or start anew, sharing prefixes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <kvc/hash/block_hash.hpp>
#include <random>
#include <vector>

namespace kvc_test {

struct manual_clock {
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<manual_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static inline time_point current{};
  static time_point now() noexcept { return current; }
};

class chain_source {
 public:
  using chain = std::vector<kvc::hash64>;
  explicit chain_source(std::uint32_t seed) : rng_(seed) {}
  // A new chain: a prefix of an earlier one (three times in four), then 1 to 5 new blocks.
  chain next() {
    chain c;
    if (!chains_.empty() && rng_() % 4 != 0) {
      const chain& base = chains_[rng_() % chains_.size()];
      c.assign(base.begin(), base.begin() + static_cast<std::ptrdiff_t>(1 + rng_() % base.size()));
    }
    for (std::size_t extra = 1 + rng_() % 5; extra > 0; --extra) {
      c.push_back(kvc::hash64{next_id_++});
    }
    chains_.push_back(c);
    return c;
  }
  // One of the chains made so far.
  const chain& any() { return chains_[rng_() % chains_.size()]; }
  std::uint32_t roll() { return static_cast<std::uint32_t>(rng_()); }

 private:
  std::mt19937 rng_;
  std::vector<chain> chains_;
  std::uint64_t next_id_ = 1;
};

}  // namespace kvc_test
