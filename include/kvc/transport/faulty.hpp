// kvc/transport/faulty.hpp — a Transport decorator that injects the faults a one-sided protocol
// must survive, reproducibly from a seed:
// - latency: every doorbell waits latency + uniform(0, jitter) before its operations run;
// - torn reads: a READ longer than 8 bytes is, with some probability, executed as two reads split
//   at an 8-byte boundary, the second half first, with a pause in between, so a concurrent
//   writer's words land in between (what RDMA allows for reads beyond 8 bytes);
// - a crashing client: with some probability per batch, or after a given number of operations,
//   the client dies in the middle of a batch: a prefix of the batch is executed, the rest is not,
//   and every later operation of this transport fails with errc::unreachable. Whatever the dead
//   client left behind in remote memory (reservations, pins, half-published entries) stays there
//   for the protocol to clean up;
// - unreachable memory nodes: operations to a node marked unreachable fail with
//   errc::unreachable (and the later ones on that node are not executed), until it is marked
//   reachable again; a batch that has such operations completes `unreachable_wait` after its
//   ring() (as a NIC's retries take before a queue pair gives up: over verbs about half a
//   second): poll() is false and wait() sleeps until then.
//
// The decorator executes each batch during ring() (it rings and waits for the inner transport
// itself, in pieces when it tears a read), so poll() is true right after ring() (unless an
// unreachable node delays it). Statuses follow the batch failure rule of batch.hpp.
//
// Concurrency: as the inner transport. The random source is shared under a mutex (draws for the
// jitter, the crash decision and point, and each torn READ), so a single-threaded run is
// reproducible from the seed; a multi-threaded one is reproducible only in distribution. Design:
// docs/design/transport.md.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/error.hpp"
#include "kvc/transport/batch.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

struct fault_config {
  std::uint64_t seed = 1;
  std::chrono::microseconds latency{0};  // added to every doorbell
  std::chrono::microseconds jitter{0};   // plus uniform(0, jitter)
  double torn_read_probability = 0;      // per READ of more than 8 bytes
  std::chrono::microseconds tear_pause{20};
  double crash_probability = 0;  // per batch
  // Crash once this many operations were posted to this client (the one that would exceed it
  // and the rest of its batch are not executed).
  std::uint64_t crash_after_ops = std::numeric_limits<std::uint64_t>::max();
  // How long after ring() a batch with operations to an unreachable node completes.
  std::chrono::microseconds unreachable_wait{0};
};

template <Transport Inner>
class faulty {
  struct state {
    explicit state(const fault_config& c) : config(c), rng(c.seed) {}
    fault_config config;
    std::mutex rng_mutex;
    std::mt19937_64 rng;
    std::atomic<bool> crashed{false};
    std::atomic<std::uint64_t> executed{0};  // operations posted to this client so far
    std::atomic<std::uint64_t> torn{0};      // READs split
    std::array<std::atomic<std::uint64_t>, 1024> unreachable{};  // one bit per node id

    double uniform() {
      std::lock_guard lock(rng_mutex);
      return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    }
    std::uint64_t below(std::uint64_t n) {
      std::lock_guard lock(rng_mutex);
      return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
    }
    [[nodiscard]] bool is_unreachable(node_id n) const noexcept {
      return (unreachable[n / 64].load(std::memory_order_relaxed) >> (n % 64) & 1u) != 0;
    }
  };

 public:
  using inner_type = Inner;
  using registration = typename Inner::registration;

  class batch : public synchronous_batch {
   public:
    // Passed on to the inner batch where it has it (verbs: see verbs_transport::batch): every
    // piece this batch rings there goes out only under that identity (and to that region).
    void require_identity(node_id node, std::uint64_t identity,
                          std::uint64_t region_created_ms = 0) requires
        requires(typename Inner::batch& b, node_id n, std::uint64_t id) {
      b.require_identity(n, id, id);
    }
    { required_.push_back({node, identity, region_created_ms}); }
    void clear() noexcept {
      synchronous_batch::clear();
      required_.clear();
      complete_at_ = {};
    }
    bool poll() noexcept {
      return synchronous_batch::poll() && std::chrono::steady_clock::now() >= complete_at_;
    }
    result<void> wait() {
      std::this_thread::sleep_until(complete_at_);
      return synchronous_batch::wait();
    }
    void ring() {
      KVC_ASSERT(!rung() && !done(), "ring() twice without clear()");
      mark_rung();
      run();
      mark_done();
    }

   private:
    friend faulty;
    batch(Inner* inner, state* s) : s_(s), pending_(inner->new_batch()) {}

    void run() {
      const auto ops = operations();
      if (ops.empty()) return;
      if (s_->crashed.load(std::memory_order_relaxed)) {
        fail_all(0, "the client crashed earlier (injected fault)");
        return;
      }
      const fault_config& c = s_->config;
      if (c.latency.count() > 0 || c.jitter.count() > 0) {
        auto pause = c.latency;
        if (c.jitter.count() > 0) {
          pause += std::chrono::microseconds(
              static_cast<std::int64_t>(s_->below(static_cast<std::uint64_t>(c.jitter.count()))));
        }
        std::this_thread::sleep_for(pause);
      }
      // Where this client dies, if it does in this batch: ops [0, crash_at) are executed.
      std::size_t crash_at = ops.size() + 1;
      if (c.crash_probability > 0 && s_->uniform() < c.crash_probability) {
        crash_at = static_cast<std::size_t>(s_->below(ops.size()));
      }
      const std::uint64_t before = s_->executed.fetch_add(ops.size(), std::memory_order_relaxed);
      if (c.crash_after_ops != std::numeric_limits<std::uint64_t>::max() &&
          before + ops.size() > c.crash_after_ops) {
        crash_at = std::min<std::size_t>(
            crash_at,
            static_cast<std::size_t>(c.crash_after_ops > before ? c.crash_after_ops - before : 0));
      }
      for (std::size_t i = 0; i < ops.size(); ++i) {
        if (i == crash_at) {
          flush();
          s_->crashed.store(true, std::memory_order_relaxed);
          fail_all(i, "the client crashed in the middle of its batch (injected fault)");
          return;
        }
        if (statuses()[i] != errc{}) continue;
        const operation& op = ops[i];
        if (s_->is_unreachable(op.remote.node())) {
          flush();
          if (c.unreachable_wait.count() > 0 &&
              complete_at_ == std::chrono::steady_clock::time_point{}) {
            complete_at_ = std::chrono::steady_clock::now() + c.unreachable_wait;
          }
          fail_op(i, errc::unreachable, "memory node marked unreachable (injected fault)");
          continue;
        }
        if (op.kind == op_kind::read && op.local.size > 8 && c.torn_read_probability > 0 &&
            s_->uniform() < c.torn_read_probability) {
          flush();
          torn_read(i, op);
          continue;
        }
        pending_.post(op);
        pending_index_.push_back(i);
      }
      flush();
    }

    // Runs the pending operations on the inner transport and takes over their statuses.
    void flush() {
      if (pending_index_.empty()) return;
      if constexpr (requires(node_id n, std::uint64_t id) {
                      pending_.require_identity(n, id, id);
                    }) {
        for (const auto& [node, identity, region] : required_) {
          pending_.require_identity(node, identity, region);
        }
      }
      pending_.ring();
      // Per-operation statuses are taken over below; the first failure's detail with them.
      const result<void> inner = pending_.wait();
      bool first = true;
      for (std::size_t j = 0; j < pending_index_.size(); ++j) {
        const errc e = pending_.status(j);
        if (e == errc{} || statuses()[pending_index_[j]] != errc{}) continue;
        fail_op(pending_index_[j], e,
                first && !inner ? "in the decorated transport: " + inner.detail() : "");
        first = false;
      }
      pending_.clear();
      pending_index_.clear();
    }

    // The second half first, a pause, then the first half. The split falls on a remote 8-byte
    // boundary, so every aligned word still arrives whole, as on RDMA. A READ without an
    // interior boundary is executed whole.
    void torn_read(std::size_t i, const operation& op) {
      const std::size_t first_boundary = 8 - op.remote.offset() % 8;  // 1..8 bytes in
      if (first_boundary >= op.local.size) {
        pending_.post(op);
        pending_index_.push_back(i);
        flush();
        return;
      }
      const std::size_t choices = (op.local.size - first_boundary - 1) / 8 + 1;
      const std::size_t first_len =
          first_boundary + 8 * static_cast<std::size_t>(s_->below(choices));
      s_->torn.fetch_add(1, std::memory_order_relaxed);
      std::array<operation, 2> halves{op, op};
      halves[0].local = op.local.sub(first_len, op.local.size - first_len);
      halves[0].remote = op.remote + first_len;
      halves[1].local = op.local.sub(0, first_len);
      for (std::size_t h = 0; h < 2; ++h) {
        if (halves[h].local.size == 0) continue;
        pending_.post(halves[h]);
        pending_index_.push_back(i);
        flush();
        if (statuses()[i] != errc{}) return;
        if (h == 0) std::this_thread::sleep_for(s_->config.tear_pause);
      }
    }

    void fail_all(std::size_t from, const char* why) {
      if (from < size()) fail_op(from, errc::unreachable, why);
      for (std::size_t j = from; j < size(); ++j) {
        if (statuses()[j] == errc{}) statuses()[j] = errc::not_executed;
      }
    }

    state* s_;
    typename Inner::batch pending_;
    std::vector<std::size_t> pending_index_;
    std::vector<connection_requirement> required_;         // require_identity()
    std::chrono::steady_clock::time_point complete_at_{};  // unreachable_wait after ring()
  };

  faulty(Inner inner, const fault_config& config)
      : inner_(std::make_unique<Inner>(std::move(inner))), s_(std::make_unique<state>(config)) {}

  [[nodiscard]] batch new_batch() { return batch(inner_.get(), s_.get()); }
  [[nodiscard]] result<registration> register_memory(std::span<std::byte> bytes) {
    return inner_->register_memory(bytes);
  }
  [[nodiscard]] std::size_t max_ops_per_node() const { return kvc::max_ops_per_node(*inner_); }
  [[nodiscard]] std::size_t max_batches_in_flight() const {
    return kvc::max_batches_in_flight(*inner_);
  }
  [[nodiscard]] std::uint64_t identity() const { return kvc::transport_identity(*inner_); }
  [[nodiscard]] std::uint64_t region_bytes(node_id node) const noexcept {
    return inner_->region_bytes(node);
  }

  // Marks a memory node unreachable (or reachable again) for this client.
  void set_unreachable(node_id node, bool unreachable) noexcept {
    const std::uint64_t bit = std::uint64_t{1} << (node % 64);
    if (unreachable) {
      s_->unreachable[node / 64].fetch_or(bit, std::memory_order_relaxed);
    } else {
      s_->unreachable[node / 64].fetch_and(~bit, std::memory_order_relaxed);
    }
  }
  // READs executed torn so far.
  [[nodiscard]] std::uint64_t torn_reads() const noexcept {
    return s_->torn.load(std::memory_order_relaxed);
  }
  // True once the injected crash happened: the client is dead for good.
  [[nodiscard]] bool crashed() const noexcept {
    return s_->crashed.load(std::memory_order_relaxed);
  }
  [[nodiscard]] Inner& inner() noexcept { return *inner_; }

 private:
  std::unique_ptr<Inner> inner_;  // stable addresses: batches point at both
  std::unique_ptr<state> s_;
};

}  // namespace kvc::inline v0
