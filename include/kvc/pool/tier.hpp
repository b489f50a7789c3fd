// kvc/pool/tier.hpp — what every storage tier of the block pool shares: the tier kinds, a copy
// between a tier's slot and host memory, the completion object of a batch of copies (copy_job),
// the slot table that hands out a tier's slots, and the StorageTier concept refining Tier.
//
// Moves between tiers go through host memory: a tier copies its slots to host buffers
// (copy_direction::to_host) and from them (from_host); host DRAM is the hub, as RDMA and disk I/O
// need registered or aligned host memory anyway. Copies are asynchronous: copy() starts a batch
// and returns; the tier finishes the job's copies when they completed (possibly before copy()
// returns). A block is never to be read before its job says so.
//
// copy() contract, for every tier: it validates the whole batch first (every slot held, every
// host buffer non-null) and then either fails having started nothing, leaving the job untouched,
// or starts every copy and finishes each of them on the job exactly once, with its outcome.
//
// Concurrency: copy_job and slot_table are thread-safe. Tiers say their own rules.
// Design: docs/design/pool.md.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/error.hpp"

namespace kvc::inline v0 {

enum class tier_kind : std::uint8_t { device, host, remote, ssd };

[[nodiscard]] constexpr const char* to_string(tier_kind k) noexcept {
  switch (k) {
    case tier_kind::device:
      return "device";
    case tier_kind::host:
      return "host";
    case tier_kind::remote:
      return "remote";
    case tier_kind::ssd:
      return "ssd";
  }
  return "?";
}

enum class copy_direction : std::uint8_t { to_host, from_host };

// One block copy between a tier's slot and block_bytes() of host memory.
template <class Slot>
struct block_copy {
  Slot slot;
  std::byte* host;
};

// The completion of a batch of copies, possibly spread over several tiers. A job starts open:
// copies announced with expect() cannot complete it before seal() says that nothing more will be
// added. Done when sealed, every announced copy finished and the callback, if any, returned: it
// runs once, on the thread that finished the last copy, outside any lock, before wait() returns
// (so it must not wait on its own job). The first failure is kept.
class copy_job {
 public:
  using callback = std::function<void(const result<void>&)>;

  copy_job() = default;
  explicit copy_job(callback on_done) : on_done_(std::move(on_done)) {}
  copy_job(const copy_job&) = delete;
  copy_job& operator=(const copy_job&) = delete;

  // n more copies will be finished on this job.
  void expect(std::size_t n) {
    std::lock_guard lock(mutex_);
    KVC_ASSERT(pending_ > 0, "copy_job::expect after the job completed");
    pending_ += n;
  }
  // n copies ended: successfully when `why` is null.
  void finish(std::size_t n, const failure* why = nullptr) {
    if (n == 0) return;
    bool completed = false;
    {
      std::lock_guard lock(mutex_);
      KVC_ASSERT(pending_ >= n, "copy_job::finish of more copies than expected");
      if (why != nullptr) {
        failed_ += n;
        if (!first_failure_) {
          // Out of memory for the text keeps the code: the copies must end all the same.
          detail::instead_if_throws([&] { first_failure_ = *why; },
                                    [&] {
                                      first_failure_ = failure{why->code, {}};
                                    });
        }
      }
      pending_ -= n;
      completed = pending_ == 0;
    }
    if (completed) complete();  // pending_ stays 0: no other thread gets here
  }
  // No more copies will be added.
  void seal() { finish(1); }
  // Calls `cb` with the outcome once every copy has ended: on the thread that completes the
  // job (after the constructor's callback), or at once on this one when they have ended
  // (then possibly while the constructor's callback still runs). `cb` must not throw.
  void then(callback cb) {
    result<void> outcome;
    {
      std::lock_guard lock(mutex_);
      if (!completing_) {
        more_.push_back(std::move(cb));
        return;
      }
      outcome = outcome_locked();
    }
    cb(outcome);
  }

  [[nodiscard]] bool done() const {
    std::lock_guard lock(mutex_);
    return done_;
  }
  // Copies that failed so far.
  [[nodiscard]] std::size_t failed() const {
    std::lock_guard lock(mutex_);
    return failed_;
  }
  // The code of the first failure so far (none: a default std::error_code).
  [[nodiscard]] std::error_code first_error() const {
    std::lock_guard lock(mutex_);
    return first_failure_ ? first_failure_->code : std::error_code{};
  }
  // Blocks until the job is done; its outcome.
  [[nodiscard]] result<void> wait() const {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return done_; });
    return outcome_locked();
  }
  // Its outcome if done by `deadline`, else errc::timed_out (the copies go on).
  [[nodiscard]] result<void> wait_until(std::chrono::steady_clock::time_point deadline) const {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_until(lock, deadline, [&] { return done_; })) {
      return fail(errc::timed_out, std::to_string(pending_) + " block copies still running");
    }
    return outcome_locked();
  }

 private:
  result<void> outcome_locked() const {
    if (!first_failure_) return {};
    failure f = *first_failure_;
    f.detail = std::to_string(failed_) + " block copies failed; the first: " + f.detail;
    return f;
  }
  void complete() {
    callback cb;
    std::vector<callback> more;
    result<void> outcome;
    {
      std::lock_guard lock(mutex_);
      outcome = outcome_locked();
      cb = std::move(on_done_);
      more = std::move(more_);
      completing_ = true;
    }
    if (cb) cb(outcome);
    for (auto& m : more) m(outcome);
    std::lock_guard lock(mutex_);  // notified under the lock: a waiter may free the job next
    done_ = true;
    cv_.notify_all();
  }

  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  std::size_t pending_ = 1;  // the open submission, until seal()
  bool done_ = false;
  bool completing_ = false;  // every copy ended: callbacks run (then() calls its own at once)
  std::size_t failed_ = 0;
  std::optional<failure> first_failure_;
  callback on_done_;
  std::vector<callback> more_;  // then()'s
};

// The slots of one tier: which are held, by how many references (a device block shared by
// several running requests), and a stack of free ones. Thread-safe; O(1) per call.
class slot_table {
 public:
  // `slots` slots; those in `held` (distinct, in range) start held once, as after allocate().
  explicit slot_table(std::size_t slots, std::span<const std::uint32_t> held = {})
      : refs_(slots, 0) {
    KVC_ASSERT(slots <= std::size_t{UINT32_MAX}, "slot_table: at most 2^32 - 1 slots");
    for (const std::uint32_t s : held) {
      KVC_ASSERT(s < slots && refs_[s] == 0, "slot_table: held slots distinct and in range");
      refs_[s] = 1;
    }
    free_.reserve(slots - held.size());
    for (std::size_t i = slots; i-- > 0;) {
      if (refs_[i] == 0) free_.push_back(static_cast<std::uint32_t>(i));
    }
  }

  [[nodiscard]] std::size_t capacity() const noexcept { return refs_.size(); }
  [[nodiscard]] std::size_t free_slots() const {
    std::lock_guard lock(mutex_);
    return free_.size();
  }

  // A free slot, now held once (lowest numbers first on a fresh table); errc::no_space when every
  // slot is held.
  [[nodiscard]] result<std::uint32_t> allocate(const char* tier) {
    std::lock_guard lock(mutex_);
    if (free_.empty()) {
      return fail(errc::no_space, std::string(tier) + " tier: all " + std::to_string(refs_.size()) +
                                      " slots are in use");
    }
    const std::uint32_t s = free_.back();
    free_.pop_back();
    refs_[s] = 1;
    return s;
  }
  // One more reference to a held slot. errc::invalid_argument when it is not held.
  [[nodiscard]] result<void> share(std::uint32_t s) {
    std::lock_guard lock(mutex_);
    if (auto ok = check_held(s); !ok) return ok;
    ++refs_[s];
    return {};
  }
  // Drops one reference; the slot is free again when none is left (true then).
  // errc::invalid_argument when it is not held (a double release).
  [[nodiscard]] result<bool> release(std::uint32_t s) {
    std::lock_guard lock(mutex_);
    if (auto ok = check_held(s); !ok) return std::move(ok).take_failure();
    if (--refs_[s] > 0) return false;
    free_.push_back(s);
    return true;
  }
  [[nodiscard]] std::uint32_t refs(std::uint32_t s) const {
    std::lock_guard lock(mutex_);
    return s < refs_.size() ? refs_[s] : 0;
  }
  // errc::invalid_argument unless every slot of `copies` is held and every buffer non-null.
  template <class Slot>
  [[nodiscard]] result<void> check_copies(std::span<const block_copy<Slot>> copies) const {
    std::lock_guard lock(mutex_);
    for (const auto& c : copies) {
      if (auto ok = check_held(static_cast<std::uint64_t>(c.slot)); !ok) return ok;
      if (c.host == nullptr) return fail(errc::invalid_argument, "a block copy without a buffer");
    }
    return {};
  }

  // errc::invalid_argument unless slot s is held.
  [[nodiscard]] result<void> held(std::uint64_t s) const {
    std::lock_guard lock(mutex_);
    return check_held(s);
  }

 private:
  result<void> check_held(std::uint64_t s) const {
    if (s >= refs_.size()) {
      return fail(errc::invalid_argument, "slot " + std::to_string(s) + " is out of range (" +
                                              std::to_string(refs_.size()) + " slots)");
    }
    if (refs_[s] == 0) {
      return fail(errc::invalid_argument, "slot " + std::to_string(s) + " is not allocated");
    }
    return {};
  }

  mutable std::mutex mutex_;
  std::vector<std::uint32_t> refs_;
  std::vector<std::uint32_t> free_;
};

// A tier the block pool can use: Tier's slots, plus its kind, how many slots are free, and
// asynchronous copies to and from host memory as above.
template <class T>
concept StorageTier = Tier<T> && requires(T& t, const T& ct, copy_direction d,
                                          std::span<const block_copy<typename T::slot>> copies,
                                          const std::shared_ptr<copy_job>& job) {
  { ct.kind() } -> std::same_as<tier_kind>;
  { ct.free_slots() } -> std::convertible_to<std::size_t>;
  { t.copy(d, copies, job) } -> std::same_as<result<void>>;
};

}  // namespace kvc::inline v0
