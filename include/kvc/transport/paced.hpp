// kvc/transport/paced.hpp — a Transport decorator that makes every batch complete no sooner than
// a network adapter would: a round trip, plus the time to move the batch's bytes at a given
// bandwidth and to issue its operations, per memory node, the nodes in parallel. On the
// shared-memory transport (where a round trip costs no wait at all) it shows what a protocol's
// round trips and bytes would cost over a NIC: benchmarks run the same code on shm with and
// without it (benchmarks/metadata: kvc's remote index at a modelled RDMA round trip).
//
// A model, not a measurement: a real NIC's latency has its own spread (queueing, PCIe, the
// switch), which this leaves out; what it adds is fixed per batch and exact.
//
// paced<Inner> owns its inner transport and is a Transport itself. The inner batch is rung at
// once (on shm its operations take effect during ring(), as a NIC's may take effect any time
// before their completion is seen); poll() answers false until the batch's completion time,
// wait() waits for it (sleeping while more than 100 us remain, then polling the clock, as a
// client polls its completion queue), then both defer to the inner batch. A batch over a slower
// inner transport completes when the later of the two does.
//
// Concurrency: as the inner transport; the model is read-only after construction.
// Design: docs/design/transport.md.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/error.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

struct pace_config {
  std::chrono::nanoseconds round_trip{2000};  // a doorbell to its completion, nothing to move
  double gbit_per_s = 100;                    // each node's link; 0 or less: bytes cost nothing
  std::chrono::nanoseconds per_operation{0};  // the adapter's time to issue one operation

  // Empty when the model makes sense, else why not.
  [[nodiscard]] result<void> check() const {
    if (round_trip.count() < 0 || per_operation.count() < 0) {
      return fail(errc::invalid_argument, "pace_config: negative round trip or per-operation time");
    }
    return {};
  }
  // How long a batch of these operations takes, the nodes in parallel.
  [[nodiscard]] std::chrono::nanoseconds cost(std::span<const operation> ops) const {
    if (ops.empty()) return std::chrono::nanoseconds{0};
    struct per_node {
      node_id node = 0;
      std::uint64_t ops = 0, bytes = 0;
    };
    // A batch reaches a handful of nodes: kept on the stack up to 8 (no allocation on the
    // measured path), in a vector beyond.
    std::array<per_node, 8> near{};
    std::vector<per_node> far;
    std::size_t used = 0;
    auto tally = [&](node_id id) -> per_node& {
      per_node* first = far.empty() ? near.data() : far.data();
      const std::size_t n = far.empty() ? used : far.size();
      for (std::size_t i = 0; i < n; ++i) {
        if (first[i].node == id) return first[i];
      }
      if (far.empty() && used < near.size()) {
        near[used] = per_node{id, 0, 0};
        return near[used++];
      }
      if (far.empty()) far.assign(near.begin(), near.end());
      far.push_back(per_node{id, 0, 0});
      return far.back();
    };
    for (const operation& op : ops) {
      per_node& n = tally(op.remote.node());
      ++n.ops;
      n.bytes += op.bytes();
    }
    const std::span<const per_node> nodes =
        far.empty() ? std::span<const per_node>(near.data(), used) : std::span<const per_node>(far);
    double slowest = 0;
    for (const per_node& n : nodes) {
      double ns = static_cast<double>(per_operation.count()) * static_cast<double>(n.ops);
      if (gbit_per_s > 0) ns += static_cast<double>(n.bytes) * 8.0 / gbit_per_s;
      slowest = std::max(slowest, ns);
    }
    return round_trip + std::chrono::nanoseconds(static_cast<std::int64_t>(slowest));
  }
};

template <Transport Inner>
class paced {
 public:
  using inner_type = Inner;
  using registration = typename Inner::registration;
  using clock = std::chrono::steady_clock;

  class batch {
   public:
    std::size_t read(remote_ptr from, local_buffer to) { return inner_.read(from, to); }
    std::size_t write(remote_ptr to, local_buffer from) { return inner_.write(to, from); }
    std::size_t cas(remote_ptr at, std::uint64_t expected, std::uint64_t desired,
                    local_buffer old) {
      return inner_.cas(at, expected, desired, old);
    }
    std::size_t faa(remote_ptr at, std::uint64_t add, local_buffer old) {
      return inner_.faa(at, add, old);
    }
    // Passed on to the inner batch where it has it (verbs: see verbs_transport::batch).
    void require_identity(node_id node, std::uint64_t identity) requires
        requires(typename Inner::batch& b, node_id n, std::uint64_t id) {
      b.require_identity(n, id);
    }
    { inner_.require_identity(node, identity); }
    void ring() {
      complete_at_ = clock::now() + model_->cost(inner_.operations());
      inner_.ring();
    }
    bool poll() {
      if (clock::now() < complete_at_) return false;
      return inner_.poll();
    }
    result<void> wait() {
      for (auto left = complete_at_ - clock::now(); left.count() > 0;
           left = complete_at_ - clock::now()) {
        if (left > std::chrono::microseconds(100)) {
          std::this_thread::sleep_for(left - std::chrono::microseconds(50));
        }
      }
      return inner_.wait();
    }
    [[nodiscard]] errc status(std::size_t i) const { return inner_.status(i); }
    [[nodiscard]] bool ok(std::size_t i) const { return status(i) == errc{}; }
    [[nodiscard]] std::size_t size() const noexcept { return inner_.size(); }
    [[nodiscard]] bool empty() const noexcept { return inner_.size() == 0; }
    [[nodiscard]] std::span<const operation> operations() const noexcept {
      return inner_.operations();
    }
    void clear() noexcept {
      inner_.clear();
      complete_at_ = {};
    }

   private:
    friend paced;
    batch(typename Inner::batch inner, const pace_config* model)
        : inner_(std::move(inner)), model_(model) {}
    typename Inner::batch inner_;
    const pace_config* model_;
    clock::time_point complete_at_{};
  };

  // Precondition: model.check() succeeds (the constructor asserts it).
  paced(Inner inner, pace_config model)
      : inner_(std::move(inner)), model_(std::make_unique<pace_config>(model)) {
    KVC_ASSERT(model.check(), "paced: an invalid pace_config (check() says why)");
  }

  [[nodiscard]] batch new_batch() { return batch(inner_.new_batch(), model_.get()); }
  [[nodiscard]] result<registration> register_memory(std::span<std::byte> bytes) {
    return inner_.register_memory(bytes);
  }
  [[nodiscard]] std::size_t max_ops_per_node() const { return kvc::max_ops_per_node(inner_); }
  [[nodiscard]] std::uint64_t identity() const { return kvc::transport_identity(inner_); }
  [[nodiscard]] std::uint64_t region_bytes(node_id node) const noexcept {
    return inner_.region_bytes(node);
  }
  [[nodiscard]] const pace_config& model() const noexcept { return *model_; }
  [[nodiscard]] Inner& inner() noexcept { return inner_; }
  [[nodiscard]] const Inner& inner() const noexcept { return inner_; }

 private:
  Inner inner_;
  std::unique_ptr<pace_config> model_;  // stable address: batches point at it
};

}  // namespace kvc::inline v0
