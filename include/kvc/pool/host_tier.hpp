// kvc/pool/host_tier.hpp — the host DRAM tier: one arena of fixed-size blocks, mapped at once
// (anonymous memory, transparent huge pages advised), so a transport registers it whole and RDMA
// moves blocks straight to and from it. It is also the hub every move between tiers goes through.
//
//   auto host = kvc::host_tier::create({.block_bytes = 64 << 10, .blocks = 4096});
//   auto reg = transport.register_memory(host->memory());   // RDMA to and from the arena
//   auto s = host->allocate();  std::span<std::byte> bytes = host->data(*s);
//
// Slots are numbered 0..blocks-1; data(slot) is the block's bytes, at a fixed address for the
// tier's life, block_bytes apart and 4 KiB aligned when block_bytes is a multiple of 4 KiB (as
// O_DIRECT needs). copy() is memcpy, completed before it returns.
//
// Errors: create() fails with invalid_config for a zero size or one that overflows, io_error when
// the memory cannot be mapped; allocate() with no_space when every slot is held; release() and
// copy() with invalid_argument for a slot that is not held (a double release), never silently.
//
// Concurrency: allocate, release, share and copy may be called from any threads at once; the
// bytes of one slot are the caller's to synchronise. Movable, not copyable.
// Design: docs/design/pool.md.
#pragma once

#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "kvc/error.hpp"
#include "kvc/pool/tier.hpp"

namespace kvc::inline v0 {

struct host_tier_config {
  std::size_t block_bytes = 0;  // bytes of one KV block (all layers), > 0
  std::size_t blocks = 0;       // slots, > 0
  bool huge_pages = true;       // advise transparent huge pages for the arena
};

class host_tier {
 public:
  using slot = std::uint32_t;

  [[nodiscard]] static result<host_tier> create(const host_tier_config& cfg) {
    if (cfg.block_bytes == 0 || cfg.blocks == 0) {
      return fail(errc::invalid_config, "host tier: block_bytes and blocks must be > 0");
    }
    if (cfg.blocks > std::size_t{UINT32_MAX} || cfg.block_bytes > SIZE_MAX / cfg.blocks) {
      return fail(errc::invalid_config, "host tier: " + std::to_string(cfg.blocks) + " blocks of " +
                                            std::to_string(cfg.block_bytes) +
                                            " bytes do not fit in memory");
    }
    const std::size_t bytes = cfg.block_bytes * cfg.blocks;
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      const int err = errno;
      return fail(errc::io_error,
                  "host tier: mapping " + std::to_string(bytes) + " bytes: " + std::strerror(err));
    }
    if (cfg.huge_pages) (void)::madvise(base, bytes, MADV_HUGEPAGE);  // advice only
    return host_tier(static_cast<std::byte*>(base), bytes, cfg.block_bytes, cfg.blocks);
  }

  [[nodiscard]] tier_kind kind() const noexcept { return tier_kind::host; }
  [[nodiscard]] std::size_t block_bytes() const noexcept { return block_bytes_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return slots_->capacity(); }
  [[nodiscard]] std::size_t free_slots() const { return slots_->free_slots(); }

  [[nodiscard]] result<slot> allocate() { return slots_->allocate("host"); }
  // One more holder of a held slot (released once per holder).
  [[nodiscard]] result<void> share(slot s) { return slots_->share(s); }
  [[nodiscard]] result<void> release(slot s) {
    auto freed = slots_->release(s);
    if (!freed) return std::move(freed).take_failure();
    return {};
  }
  [[nodiscard]] std::uint32_t refs(slot s) const { return slots_->refs(s); }

  // The block's bytes (any slot below capacity(); stable for the tier's life).
  [[nodiscard]] std::span<std::byte> data(slot s) const {
    KVC_ASSERT(s < capacity(), "host tier: slot out of range");
    return {arena_.get() + std::size_t{s} * block_bytes_, block_bytes_};
  }
  // The whole arena, for transport registration.
  [[nodiscard]] std::span<std::byte> memory() const noexcept { return {arena_.get(), bytes_}; }
  // The slot holding `p` (a pointer into the arena), or capacity() when it is outside.
  [[nodiscard]] slot slot_of(const std::byte* p) const noexcept {
    if (p < arena_.get() || p >= arena_.get() + bytes_) return static_cast<slot>(capacity());
    return static_cast<slot>(static_cast<std::size_t>(p - arena_.get()) / block_bytes_);
  }

  [[nodiscard]] result<void> copy(copy_direction dir, std::span<const block_copy<slot>> copies,
                                  const std::shared_ptr<copy_job>& job) {
    if (auto ok = slots_->check_copies(copies); !ok) return ok;
    job->expect(copies.size());
    for (const auto& c : copies) {
      const std::span<std::byte> block = data(c.slot);
      if (dir == copy_direction::to_host) {
        std::memmove(c.host, block.data(), block_bytes_);
      } else {
        std::memmove(block.data(), c.host, block_bytes_);
      }
    }
    job->finish(copies.size());
    return {};
  }

 private:
  struct unmap {
    std::size_t bytes;
    void operator()(std::byte* p) const noexcept { ::munmap(p, bytes); }
  };

  host_tier(std::byte* base, std::size_t bytes, std::size_t block_bytes, std::size_t blocks)
      : arena_(base, unmap{bytes}),
        bytes_(bytes),
        block_bytes_(block_bytes),
        slots_(std::make_unique<slot_table>(blocks)) {}

  std::unique_ptr<std::byte, unmap> arena_;
  std::size_t bytes_;
  std::size_t block_bytes_;
  std::unique_ptr<slot_table> slots_;  // behind a pointer: its mutex does not move
};

static_assert(StorageTier<host_tier>);

}  // namespace kvc::inline v0
