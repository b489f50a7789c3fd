// kvc/transport/batch.hpp — what every transport's batch shares: the posted operations, their
// validation against the regions' bounds, per-operation statuses, and the first failure.
//
// Life of a batch: post operations (read, write, cas, faa; each returns its index), ring() once
// (one doorbell per connection: one round trip), then poll() until it returns true or wait().
// status(i) then says how operation i ended: errc{} for success, or the error. clear() makes the
// batch reusable; posting again after ring() without clear() is a precondition violation.
//
// Failure rule, the same for every transport because it is what RDMA reliable connections do:
// when an operation fails, the later operations of the batch on the same connection (memory
// node) are not executed (errc::not_executed); operations on other connections go on. An
// operation that fails validation (unknown node, out of bounds, misaligned atomic) fails the
// same way, without reaching the node. When a failure leaves it unknown whether the later
// operations ran (a timeout, a connection lost with operations in flight), they report the same
// error (errc::timed_out, errc::unreachable, errc::rdma_error) instead: not_executed is a promise.
//
// Concurrency: a batch is used by one thread at a time. Design: docs/design/transport.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvc/config.hpp"
#include "kvc/error.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

// What a batch's operations for one node must go out over (require_identity(), on transports
// that reconnect by themselves: verbs and the decorators passing it on): a connection made under
// `identity` (0: any), to the region created at `region_created_ms` (0: any).
struct connection_requirement {
  node_id node = 0;
  std::uint64_t identity = 0;
  std::uint64_t region_created_ms = 0;
};

class batch_base {
 public:
  batch_base() = default;
  batch_base(const batch_base&) = default;
  batch_base& operator=(const batch_base&) = default;
  // A batch moved from is empty and open (its operation slots went with the move).
  batch_base(batch_base&& o) noexcept
      : ops_(std::move(o.ops_)),
        size_(std::exchange(o.size_, 0)),
        status_(std::move(o.status_)),
        first_failed_(std::exchange(o.first_failed_, npos)),
        first_failure_(std::move(o.first_failure_)),
        phase_(std::exchange(o.phase_, phase::open)) {
    o.ops_.clear();
    o.status_.clear();
  }
  batch_base& operator=(batch_base&& o) noexcept {
    if (this != &o) {
      ops_ = std::move(o.ops_);
      size_ = std::exchange(o.size_, 0);
      status_ = std::move(o.status_);
      first_failed_ = std::exchange(o.first_failed_, npos);
      first_failure_ = std::move(o.first_failure_);
      phase_ = std::exchange(o.phase_, phase::open);
      o.ops_.clear();
      o.status_.clear();
    }
    return *this;
  }
  ~batch_base() = default;

  // Posts an operation; returns its index in the batch. Allocates only when the batch grows
  // beyond what it held before (a cleared batch keeps its capacity).
  KVC_ALWAYS_INLINE std::size_t read(remote_ptr from, local_buffer to) {
    return emplace(op_kind::read, from, to, 0, 0);
  }
  KVC_ALWAYS_INLINE std::size_t write(remote_ptr to, local_buffer from) {
    return emplace(op_kind::write, to, from, 0, 0);
  }
  // If the 8-byte word at `at` equals `expected` it becomes `desired`; its previous value is
  // written to `old` (8 bytes). The CAS succeeded when that value equals `expected`.
  KVC_ALWAYS_INLINE std::size_t cas(remote_ptr at, std::uint64_t expected, std::uint64_t desired,
                                    local_buffer old) {
    return emplace(op_kind::cas, at, old, expected, desired);
  }
  // Adds `add` to the 8-byte word at `at` (wrapping); its previous value is written to `old`.
  KVC_ALWAYS_INLINE std::size_t faa(remote_ptr at, std::uint64_t add, local_buffer old) {
    return emplace(op_kind::faa, at, old, add, 0);
  }
  std::size_t post(const operation& op) {
    append() = op;
    return size_ - 1;
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] std::span<const operation> operations() const noexcept {
    return {ops_.data(), size_};
  }
  // True once every operation has completed (successfully or not).
  [[nodiscard]] bool done() const noexcept { return phase_ == phase::done; }
  // How operation i ended: errc{} for success. Precondition: done().
  [[nodiscard]] errc status(std::size_t i) const {
    KVC_ASSERT(done() && i < size_, "status() of an unfinished batch or a bad index");
    return status_[i];
  }
  [[nodiscard]] bool ok(std::size_t i) const { return status(i) == errc{}; }
  // Success, or the first failure in posting order with a detail naming the operation.
  [[nodiscard]] result<void> outcome() const {
    KVC_ASSERT(done(), "outcome() of an unfinished batch");
    if (first_failed_ == npos) return {};
    return first_failure_;
  }

  void clear() noexcept {
    size_ = 0;
    first_failed_ = npos;
    first_failure_ = {};
    phase_ = phase::open;
  }

  // Why `op` cannot run against a region of `region_bytes` (errc{} when it can). Checked by
  // every transport before an operation leaves the client.
  [[nodiscard]] static errc check(const operation& op, std::uint64_t region_bytes) noexcept {
    const std::uint64_t off = op.remote.offset();
    if (op.kind == op_kind::cas || op.kind == op_kind::faa) {
      if (op.local.size != 8 || off % 8 != 0) return errc::invalid_argument;
    }
    if (op.local.size > region_bytes || off > region_bytes - op.local.size) {
      return errc::out_of_range;
    }
    return errc{};
  }

 protected:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  enum class phase : std::uint8_t { open, rung, done };

  // Builds the operation in place: posting is on every index operation's path, and a copy of an
  // operation built on the caller's stack costs more than the rest of posting.
  KVC_ALWAYS_INLINE std::size_t emplace(op_kind kind, remote_ptr remote, local_buffer local,
                                        std::uint64_t compare, std::uint64_t swap) {
    operation& op = append();
    op.kind = kind;
    op.remote = remote;
    op.local.data = local.data;  // field by field: read whole, a buffer just built by the caller
    op.local.size = local.size;  // stalls on store forwarding
    op.local.lkey = local.lkey;
    struct local_buffer_fields {  // what is copied above: a field added to local_buffer goes
      std::byte* data;            // here too, or this fails
      std::size_t size;
      std::uint32_t lkey;
    };
    static_assert(sizeof(local_buffer) == sizeof(local_buffer_fields));
    op.compare = compare;
    op.swap = swap;
    return size_ - 1;
  }
  // A new operation at the end. The slots past size_ are kept across clear(): posting writes
  // into one and allocates only when the batch grows beyond what it ever held.
  KVC_ALWAYS_INLINE operation& append() {
    KVC_ASSERT(phase_ == phase::open, "post to a batch that was rung; clear() it first");
    if (KVC_UNLIKELY(size_ == ops_.size())) grow();
    return ops_[size_++];
  }

  // Every operation's status starts as success when the batch is rung.
  void mark_rung() {
    status_.assign(size_, errc{});
    phase_ = phase::rung;
  }
  void mark_done() noexcept { phase_ = phase::done; }
  [[nodiscard]] bool rung() const noexcept { return phase_ == phase::rung; }
  [[nodiscard]] std::span<errc> statuses() noexcept { return status_; }

  // Records that operation i failed with `code` (`why` completes the detail), and that the later
  // operations on its connection were not executed.
  void fail_op(std::size_t i, errc code, const std::string& why = {}) {
    status_[i] = code;
    if (first_failed_ == npos || i < first_failed_) {
      first_failed_ = i;
      first_failure_ = fail(code, describe(i, why));
    }
    for (std::size_t j = i + 1; j < size_; ++j) {
      if (ops_[j].remote.node() == ops_[i].remote.node() && status_[j] == errc{}) {
        status_[j] = errc::not_executed;
      }
    }
  }
  // Records that operation i failed with `code` and that the outcome of the later operations on
  // its connection is unknown (they may or may not have executed: a timeout, a lost connection):
  // they report `code` too, never not_executed.
  void fail_op_unknown(std::size_t i, errc code, const std::string& why = {}) {
    fail_op(i, code, why);
    for (std::size_t j = i + 1; j < size_; ++j) {
      if (ops_[j].remote.node() == ops_[i].remote.node() && status_[j] == errc::not_executed) {
        status_[j] = code;
      }
    }
  }
  // Fails operation i for the reason check() gave.
  void fail_check(std::size_t i, errc code, std::uint64_t region_bytes) {
    if (code == errc::out_of_range) {
      fail_op(i, code,
              "region of node " + std::to_string(ops_[i].remote.node()) + " is " +
                  std::to_string(region_bytes) + " bytes");
    } else {
      fail_op(i, code, "atomics need an 8-byte local buffer and an 8-byte aligned remote word");
    }
  }

 private:
  [[gnu::noinline]] void grow() { ops_.resize(ops_.empty() ? 16 : 2 * ops_.size()); }

  [[nodiscard]] std::string describe(std::size_t i, const std::string& why) const {
    const operation& op = ops_[i];
    std::string text = "operation ";
    text += std::to_string(i);
    text += ": ";
    text += op_name(op.kind);
    text += " of ";
    text += std::to_string(op.local.size);
    text += " bytes at node ";
    text += std::to_string(op.remote.node());
    text += " offset ";
    text += std::to_string(op.remote.offset());
    if (!why.empty()) {
      text += ": ";
      text += why;
    }
    return text;
  }

  std::vector<operation> ops_;  // ops_[0, size_) are posted; the rest are spare
  std::size_t size_ = 0;
  std::vector<errc> status_;  // one per posted operation once rung
  std::size_t first_failed_ = npos;
  failure first_failure_;
  phase phase_ = phase::open;
};

// A batch that executes everything during ring() (shm, the faulty decorator): poll() is true
// and wait() returns at once after it.
class synchronous_batch : public batch_base {
 public:
  bool poll() noexcept { return done(); }
  result<void> wait() {
    KVC_ASSERT(rung() || done(), "wait() before ring()");
    return outcome();
  }
};

}  // namespace kvc::inline v0
