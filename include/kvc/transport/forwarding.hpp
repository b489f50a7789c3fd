// kvc/transport/forwarding.hpp — what a Transport decorator passes on to the transport it wraps
// unchanged: posting, the batch's size and operations, identity requirements (batches), and
// memory registration, limits, identity and region sizes (transports). counting<> and paced<>
// derive from these and add what they change (ring, poll, wait, status, clear; their own state).
//
// Concurrency: as the inner transport. Design: docs/design/transport.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "kvc/concepts.hpp"
#include "kvc/error.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

template <class InnerBatch>
class forwarding_batch {
 public:
  std::size_t read(remote_ptr from, local_buffer to) { return inner_.read(from, to); }
  std::size_t write(remote_ptr to, local_buffer from) { return inner_.write(to, from); }
  std::size_t cas(remote_ptr at, std::uint64_t expected, std::uint64_t desired, local_buffer old) {
    return inner_.cas(at, expected, desired, old);
  }
  std::size_t faa(remote_ptr at, std::uint64_t add, local_buffer old) {
    return inner_.faa(at, add, old);
  }
  // Passed on to the inner batch where it has it (verbs: see verbs_transport::batch).
  void require_identity(node_id node, std::uint64_t identity,
                        std::uint64_t region_created_ms = 0) requires
      requires(InnerBatch& b, node_id n, std::uint64_t id) {
    b.require_identity(n, id, id);
  }
  { inner_.require_identity(node, identity, region_created_ms); }
  [[nodiscard]] std::size_t size() const noexcept { return inner_.size(); }
  [[nodiscard]] bool empty() const noexcept { return inner_.size() == 0; }
  [[nodiscard]] std::span<const operation> operations() const noexcept {
    return inner_.operations();
  }

 protected:
  explicit forwarding_batch(InnerBatch inner) : inner_(std::move(inner)) {}
  InnerBatch inner_;
};

template <Transport Inner>
class forwarding_transport {
 public:
  using inner_type = Inner;
  using registration = typename Inner::registration;

  [[nodiscard]] result<registration> register_memory(std::span<std::byte> bytes) {
    return inner_.register_memory(bytes);
  }
  [[nodiscard]] std::size_t max_ops_per_node() const { return kvc::max_ops_per_node(inner_); }
  [[nodiscard]] std::size_t max_batches_in_flight() const {
    return kvc::max_batches_in_flight(inner_);
  }
  [[nodiscard]] std::uint64_t identity() const { return kvc::transport_identity(inner_); }
  [[nodiscard]] std::uint64_t region_bytes(node_id node) const noexcept {
    return inner_.region_bytes(node);
  }
  [[nodiscard]] Inner& inner() noexcept { return inner_; }
  [[nodiscard]] const Inner& inner() const noexcept { return inner_; }

 protected:
  explicit forwarding_transport(Inner inner) : inner_(std::move(inner)) {}
  Inner inner_;
};

}  // namespace kvc::inline v0
