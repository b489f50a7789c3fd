// kvc/manager/latency_histogram.hpp — a lock-free latency histogram: power-of-two buckets of
// nanoseconds (bucket i counts [2^i, 2^(i+1)) ns; bucket 0 also counts 0), so recording is one
// relaxed atomic add and a snapshot reports quantiles within a factor of two and the exact
// mean. The buckets map onto a Prometheus histogram's cumulative `le` buckets (kvc-engine-server
// renders them); the last one also counts everything longer, so it is the `+Inf` bucket.
//
//   kvc::latency_histogram h;
//   h.record(std::chrono::nanoseconds(1800));
//   auto s = h.snapshot();  s.quantile(0.99);  s.count;  s.sum_ns;
//
// Concurrency: record() from any number of threads; snapshot() at any time (counts read one by
// one, so a snapshot taken while others record may be off by the records in flight).
// Design: docs/design/manager.md.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace kvc::inline v0 {

class latency_histogram {
 public:
  static constexpr std::size_t buckets = 40;  // up to 2^40 ns (18 minutes); longer ones go last

  struct snapshot_type {
    std::array<std::uint64_t, buckets> counts{};
    std::uint64_t count = 0;
    std::uint64_t sum_ns = 0;

    // Upper bound (ns) of bucket i: 2^(i+1).
    [[nodiscard]] static std::uint64_t upper_ns(std::size_t i) noexcept {
      return std::uint64_t{1} << (i + 1);
    }
    // The upper bound of the bucket holding the q-quantile (0 when empty).
    [[nodiscard]] std::uint64_t quantile(double q) const noexcept {
      if (count == 0) return 0;
      const double want = q * static_cast<double>(count);
      std::uint64_t seen = 0;
      for (std::size_t i = 0; i < buckets; ++i) {
        seen += counts[i];
        if (static_cast<double>(seen) >= want && seen > 0) return upper_ns(i);
      }
      return upper_ns(buckets - 1);
    }
    [[nodiscard]] double mean_ns() const noexcept {
      return count == 0 ? 0.0 : static_cast<double>(sum_ns) / static_cast<double>(count);
    }
  };

  void record(std::chrono::nanoseconds d) noexcept {
    const auto ns = static_cast<std::uint64_t>(d.count() < 0 ? 0 : d.count());
    counts_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(ns, std::memory_order_relaxed);
  }

  [[nodiscard]] snapshot_type snapshot() const noexcept {
    snapshot_type s;
    for (std::size_t i = 0; i < buckets; ++i) {
      s.counts[i] = counts_[i].load(std::memory_order_relaxed);
      s.count += s.counts[i];
    }
    s.sum_ns = sum_ns_.load(std::memory_order_relaxed);
    return s;
  }

  [[nodiscard]] static std::size_t bucket_of(std::uint64_t ns) noexcept {
    if (ns < 2) return 0;
    const auto b = static_cast<std::size_t>(std::bit_width(ns) - 1);
    return b < buckets ? b : buckets - 1;
  }

 private:
  std::array<std::atomic<std::uint64_t>, buckets> counts_{};
  std::atomic<std::uint64_t> sum_ns_{0};
};

}  // namespace kvc::inline v0
