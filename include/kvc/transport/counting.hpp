// kvc/transport/counting.hpp — a Transport decorator that counts what crosses the wire: round
// trips (doorbells rung with at least one operation), operations and bytes by kind, failures.
// These are the machine-independent figures benchmarks report (round trips per lookup, bytes
// per insert) next to times.
//
// counting<Inner> owns its inner transport and is a Transport itself. Counts are kept in relaxed
// atomics shared by every batch of the transport (totals; no ordering between counters is
// promised while batches run), read with snapshot() and zeroed with reset().
//
// Concurrency: as the inner transport; counting adds only relaxed atomic increments.
// Design: docs/design/transport.md.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>

#include "kvc/concepts.hpp"
#include "kvc/error.hpp"
#include "kvc/transport/forwarding.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

// A copy of the counters at one moment.
struct transport_counts {
  std::uint64_t round_trips = 0;       // batches rung with at least one operation
  std::array<std::uint64_t, 4> ops{};  // by op_kind: read, write, cas, faa
  std::array<std::uint64_t, 4> bytes{};
  std::uint64_t failed_ops = 0;  // completed with an error (not_executed included)

  [[nodiscard]] std::uint64_t count(op_kind k) const noexcept {
    return ops[static_cast<std::size_t>(k)];
  }
  [[nodiscard]] std::uint64_t bytes_of(op_kind k) const noexcept {
    return bytes[static_cast<std::size_t>(k)];
  }
  [[nodiscard]] std::uint64_t total_ops() const noexcept {
    return ops[0] + ops[1] + ops[2] + ops[3];
  }
  [[nodiscard]] std::uint64_t total_bytes() const noexcept {
    return bytes[0] + bytes[1] + bytes[2] + bytes[3];
  }
  friend transport_counts operator-(transport_counts a, const transport_counts& b) noexcept {
    a.round_trips -= b.round_trips;
    for (std::size_t k = 0; k < 4; ++k) {
      a.ops[k] -= b.ops[k];
      a.bytes[k] -= b.bytes[k];
    }
    a.failed_ops -= b.failed_ops;
    return a;
  }
};

template <Transport Inner>
class counting : public forwarding_transport<Inner> {
  struct counters {
    std::atomic<std::uint64_t> round_trips{0};
    std::array<std::atomic<std::uint64_t>, 4> ops{};
    std::array<std::atomic<std::uint64_t>, 4> bytes{};
    std::atomic<std::uint64_t> failed_ops{0};
  };

 public:
  class batch : public forwarding_batch<typename Inner::batch> {
    using forwarding_batch<typename Inner::batch>::inner_;

   public:
    void ring() {
      const auto ops = inner_.operations();
      if (!ops.empty()) c_->round_trips.fetch_add(1, std::memory_order_relaxed);
      for (const operation& op : ops) {
        const auto k = static_cast<std::size_t>(op.kind);
        c_->ops[k].fetch_add(1, std::memory_order_relaxed);
        c_->bytes[k].fetch_add(op.bytes(), std::memory_order_relaxed);
      }
      inner_.ring();
      counted_ = false;
    }
    bool poll() {
      const bool finished = inner_.poll();
      if (finished) count_failures();
      return finished;
    }
    result<void> wait() {
      auto r = inner_.wait();
      count_failures();
      return r;
    }
    [[nodiscard]] errc status(std::size_t i) const { return inner_.status(i); }
    [[nodiscard]] bool ok(std::size_t i) const { return status(i) == errc{}; }
    void clear() noexcept {
      inner_.clear();
      counted_ = false;
    }

   private:
    friend counting;
    batch(typename Inner::batch inner, counters* c)
        : forwarding_batch<typename Inner::batch>(std::move(inner)), c_(c) {}
    void count_failures() noexcept {
      if (counted_) return;
      counted_ = true;
      std::uint64_t failed = 0;
      for (std::size_t i = 0; i < inner_.size(); ++i) failed += inner_.status(i) != errc{};
      if (failed != 0) c_->failed_ops.fetch_add(failed, std::memory_order_relaxed);
    }
    counters* c_;
    bool counted_ = false;
  };

  explicit counting(Inner inner)
      : forwarding_transport<Inner>(std::move(inner)), c_(std::make_unique<counters>()) {}

  [[nodiscard]] batch new_batch() { return batch(this->inner_.new_batch(), c_.get()); }

  [[nodiscard]] transport_counts snapshot() const noexcept {
    transport_counts s;
    s.round_trips = c_->round_trips.load(std::memory_order_relaxed);
    for (std::size_t k = 0; k < 4; ++k) {
      s.ops[k] = c_->ops[k].load(std::memory_order_relaxed);
      s.bytes[k] = c_->bytes[k].load(std::memory_order_relaxed);
    }
    s.failed_ops = c_->failed_ops.load(std::memory_order_relaxed);
    return s;
  }
  void reset() noexcept {
    c_->round_trips.store(0, std::memory_order_relaxed);
    for (std::size_t k = 0; k < 4; ++k) {
      c_->ops[k].store(0, std::memory_order_relaxed);
      c_->bytes[k].store(0, std::memory_order_relaxed);
    }
    c_->failed_ops.store(0, std::memory_order_relaxed);
  }

 private:
  std::unique_ptr<counters> c_;  // stable address: batches point at it
};

}  // namespace kvc::inline v0
