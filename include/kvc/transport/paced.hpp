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
// paced<Inner> owns its inner transport and is a Transport itself (what it passes on unchanged:
// kvc/transport/forwarding.hpp). The inner batch is rung at once (on shm its operations take
// effect during ring(), as a NIC's may take effect any time before their completion is seen);
// poll() answers false until the batch's completion time, wait() waits for it (sleeping while
// more than 100 us remain, then polling the clock, as a client polls its completion queue), then
// both defer to the inner batch. A batch over a slower inner transport completes when the later
// of the two does.
//
// Concurrency: as the inner transport; the model is read-only after construction.
// Design: docs/design/transport.md.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/error.hpp"
#include "kvc/transport/forwarding.hpp"
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
    if (!std::isfinite(gbit_per_s)) {
      return fail(errc::invalid_argument, "pace_config: the bandwidth is not a finite number");
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
    // A bandwidth near zero would make the wait overflow: a batch waits an hour at most.
    slowest = std::min(slowest, 3.6e12);
    return round_trip + std::chrono::nanoseconds(static_cast<std::int64_t>(slowest));
  }
};

template <Transport Inner>
class paced : public forwarding_transport<Inner> {
 public:
  using clock = std::chrono::steady_clock;

  class batch : public forwarding_batch<typename Inner::batch> {
    using forwarding_batch<typename Inner::batch>::inner_;

   public:
    void ring() {
      complete_at_ = clock::now() + model_->cost(inner_.operations());
      completed_ = false;
      inner_.ring();
    }
    bool poll() {
      if (clock::now() < complete_at_) return false;
      completed_ = inner_.poll();
      return completed_;
    }
    result<void> wait() {
      for (auto left = complete_at_ - clock::now(); left.count() > 0;
           left = complete_at_ - clock::now()) {
        if (left > std::chrono::microseconds(100)) {
          std::this_thread::sleep_for(left - std::chrono::microseconds(50));
        }
      }
      auto r = inner_.wait();
      completed_ = true;
      return r;
    }
    // Only once poll() or wait() saw the batch complete: on shm the inner batch's statuses are
    // there at ring(), and a protocol reading them early would pass here and fail on a NIC.
    [[nodiscard]] errc status(std::size_t i) const {
      KVC_ASSERT(completed_, "paced: status() before poll() or wait() saw the batch complete");
      return inner_.status(i);
    }
    [[nodiscard]] bool ok(std::size_t i) const { return status(i) == errc{}; }
    void clear() noexcept {
      inner_.clear();
      complete_at_ = {};
      completed_ = false;
    }

   private:
    friend paced;
    batch(typename Inner::batch inner, const pace_config* model)
        : forwarding_batch<typename Inner::batch>(std::move(inner)), model_(model) {}
    const pace_config* model_;
    clock::time_point complete_at_{};
    bool completed_ = false;
  };

  // Precondition: model.check() succeeds (the constructor asserts it).
  paced(Inner inner, pace_config model)
      : forwarding_transport<Inner>(std::move(inner)),
        model_(std::make_unique<pace_config>(model)) {
    KVC_ASSERT(model.check(), "paced: an invalid pace_config (check() says why)");
  }

  [[nodiscard]] batch new_batch() { return batch(this->inner_.new_batch(), model_.get()); }
  [[nodiscard]] const pace_config& model() const noexcept { return *model_; }

 private:
  std::unique_ptr<pace_config> model_;  // stable address: batches point at it
};

}  // namespace kvc::inline v0
