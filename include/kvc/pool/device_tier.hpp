// kvc/pool/device_tier.hpp — the device tier: the block ids of the engine's GPU KV tensor. kvc
// hands out ids, counts references (a block shared by several running requests is freed when the
// last lets go) and moves blocks with copy hooks the engine supplies (a cudaMemcpyAsync on a copy
// stream, say); it never touches device memory itself. Without a hook, a host-memory stand-in
// plays the device, so everything runs and is tested without a GPU.
//
//   kvc::device_tier gpu({.block_bytes = 64 << 10, .blocks = 8192, .copy = my_copy_hook});
//   auto id = gpu.allocate();          // an index into the engine's KV tensor
//   gpu.share(*id);  gpu.release(*id); // references
//
// The hook: copy(dir, copies, done) copies block_bytes between each {device block id, host
// buffer} pair in `dir`, and calls done exactly once, when all of them completed (from any
// thread, for instance a copy thread after its stream's event), with the first failure if any.
// `copies` is valid only during the call: an asynchronous hook keeps its own copy. A hook that
// fails calls done(failure); one that throws must not have called done (nor arranged to): its
// copies count as failed. A hook that never calls done breaks the job's contract.
//
// Errors: construction asserts blocks > 0 and block_bytes > 0 (a config the pool validates
// first); allocate() fails with no_space when every id is held; release(), share() and copy()
// with invalid_argument for an id that is not held.
//
// Concurrency: every member may be called from any thread; the hook may be called concurrently
// from several (copy batches of different jobs). Not movable (the hook's completions point at it).
// Design: docs/design/pool.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>

#include "kvc/error.hpp"
#include "kvc/pool/tier.hpp"

namespace kvc::inline v0 {

using device_copy_hook =
    std::function<void(copy_direction, std::span<const block_copy<std::uint32_t>>,
                       std::function<void(const result<void>&)> done)>;

struct device_tier_config {
  std::size_t block_bytes = 0;  // bytes of one block in the engine's KV tensor, > 0
  std::size_t blocks = 0;       // block ids 0..blocks-1, > 0
  device_copy_hook copy;        // empty: the host-memory stand-in
};

class device_tier {
 public:
  using slot = std::uint32_t;

  explicit device_tier(device_tier_config cfg)
      : block_bytes_(cfg.block_bytes), slots_(cfg.blocks), hook_(std::move(cfg.copy)) {
    KVC_ASSERT(cfg.block_bytes > 0 && cfg.blocks > 0, "device tier: empty configuration");
    if (!hook_) {
      KVC_ASSERT(cfg.blocks <= SIZE_MAX / cfg.block_bytes,
                 "device tier: blocks x block_bytes overflows (the stand-in's size)");
      stand_in_ = std::make_unique<std::byte[]>(cfg.blocks * cfg.block_bytes);
      hook_ = [this](copy_direction dir, std::span<const block_copy<slot>> copies,
                     const std::function<void(const result<void>&)>& done) {
        for (const auto& c : copies) {
          std::byte* block = stand_in_.get() + std::size_t{c.slot} * block_bytes_;
          if (dir == copy_direction::to_host) {
            std::memmove(c.host, block, block_bytes_);
          } else {
            std::memmove(block, c.host, block_bytes_);
          }
        }
        done(result<void>{});
      };
    }
  }
  device_tier(const device_tier&) = delete;
  device_tier& operator=(const device_tier&) = delete;

  [[nodiscard]] tier_kind kind() const noexcept { return tier_kind::device; }
  [[nodiscard]] std::size_t block_bytes() const noexcept { return block_bytes_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return slots_.capacity(); }
  [[nodiscard]] std::size_t free_slots() const { return slots_.free_slots(); }

  [[nodiscard]] result<slot> allocate() { return slots_.allocate("device"); }
  [[nodiscard]] result<void> share(slot id) { return slots_.share(id); }
  // Drops one reference; the id is free again after the last.
  [[nodiscard]] result<void> release(slot id) {
    auto freed = slots_.release(id);
    if (!freed) return std::move(freed).take_failure();
    return {};
  }
  [[nodiscard]] std::uint32_t refs(slot id) const { return slots_.refs(id); }

  // The stand-in's bytes of block `id` (empty when the engine supplied a hook).
  [[nodiscard]] std::span<std::byte> stand_in_data(slot id) const noexcept {
    if (!stand_in_ || id >= capacity()) return {};
    return {stand_in_.get() + std::size_t{id} * block_bytes_, block_bytes_};
  }

  [[nodiscard]] result<void> copy(copy_direction dir, std::span<const block_copy<slot>> copies,
                                  const std::shared_ptr<copy_job>& job) {
    if (auto ok = slots_.check_copies(copies); !ok) return ok;
    if (copies.empty()) return {};
    const std::size_t n = copies.size();
    // Made before the job counts the copies: out of memory here leaves the job as it was.
    std::function<void(const result<void>&)> done = [job, n](const result<void>& outcome) {
      if (outcome) {
        job->finish(n);
      } else {
        const failure why = fail(outcome.error(), "device copy: " + outcome.message());
        job->finish(n, &why);
      }
    };
    job->expect(n);
    // The engine's hook may throw (without having called `done`: its contract): the copies
    // failed, and the job still ends. The detail fits std::string's own buffer.
    detail::instead_if_throws(
        [&] { hook_(dir, copies, std::move(done)); },  // moved, not copied: no allocation
        [&] {
          const failure why = fail(errc::io_error, "copy hook threw");
          job->finish(n, &why);
        });
    return {};
  }

 private:
  std::size_t block_bytes_;
  slot_table slots_;
  device_copy_hook hook_;
  std::unique_ptr<std::byte[]> stand_in_;
};

static_assert(StorageTier<device_tier>);

}  // namespace kvc::inline v0
