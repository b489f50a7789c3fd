// kvc/transport/remote_ptr.hpp — addresses in memory nodes' regions, local buffers that
// operations read into and write from, and the operations themselves.
//
// remote_ptr packs a memory node id (16 bits) and a byte offset in that node's region (48 bits)
// into one 64-bit word, so a pointer can be stored in remote memory and swung with one 8-byte
// compare-and-swap. Offsets are relative to the region, never virtual addresses: a region can be
// mapped at a different address by every client (shm) or registered at any address (verbs).
//
// local_buffer is a view of client memory an operation uses: the bytes and the key the transport
// needs to reach them (verbs: the memory region's lkey; shm: unused). Its memory must stay valid,
// and must not be touched by the caller, from posting an operation until the batch completed.
//
// Concurrency: values. Design: docs/design/transport.md.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <span>

#include "kvc/config.hpp"

namespace kvc::inline v0 {

using node_id = std::uint16_t;

class remote_ptr {
 public:
  static constexpr unsigned offset_bits = 48;
  static constexpr std::uint64_t max_offset = (std::uint64_t{1} << offset_bits) - 1;

  constexpr remote_ptr() noexcept = default;
  constexpr remote_ptr(node_id node, std::uint64_t offset)
      : raw_(std::uint64_t{node} << offset_bits | (offset & max_offset)) {
    KVC_ASSERT(offset <= max_offset, "remote_ptr offset beyond 48 bits");
  }

  // The packed word (what is stored in remote memory), and back. raw 0 is null: node 0, offset
  // 0, which is the region header's first byte and never the target of a stored pointer.
  [[nodiscard]] static constexpr remote_ptr from_raw(std::uint64_t raw) noexcept {
    remote_ptr p;
    p.raw_ = raw;
    return p;
  }
  [[nodiscard]] constexpr std::uint64_t raw() const noexcept { return raw_; }
  [[nodiscard]] constexpr bool is_null() const noexcept { return raw_ == 0; }

  [[nodiscard]] constexpr node_id node() const noexcept {
    return static_cast<node_id>(raw_ >> offset_bits);
  }
  [[nodiscard]] constexpr std::uint64_t offset() const noexcept { return raw_ & max_offset; }

  // The pointer `bytes` further in the same region.
  [[nodiscard]] constexpr remote_ptr operator+(std::uint64_t bytes) const {
    return remote_ptr(node(), offset() + bytes);
  }

  friend constexpr bool operator==(remote_ptr, remote_ptr) noexcept = default;
  friend constexpr auto operator<=>(remote_ptr, remote_ptr) noexcept = default;

 private:
  std::uint64_t raw_ = 0;
};
static_assert(sizeof(remote_ptr) == 8);

// Client memory an operation reads into or writes from.
struct local_buffer {
  std::byte* data = nullptr;
  std::size_t size = 0;
  std::uint32_t lkey = 0;  // the registration's local key (verbs); 0 for transports without one

  // The sub-view [offset, offset + length). Precondition: it lies inside this view.
  [[nodiscard]] KVC_ALWAYS_INLINE local_buffer sub(std::size_t offset, std::size_t length) const {
    KVC_ASSERT(offset <= size && length <= size - offset, "local_buffer::sub out of range");
    return {data + offset, length, lkey};
  }
  [[nodiscard]] std::span<std::byte> bytes() const noexcept { return {data, size}; }
};

// Memory that needs no registration (the shm transport and tests).
[[nodiscard]] inline local_buffer unregistered(std::span<std::byte> bytes) noexcept {
  return {bytes.data(), bytes.size(), 0};
}

enum class op_kind : std::uint8_t { read, write, cas, faa };

[[nodiscard]] constexpr const char* op_name(op_kind kind) noexcept {
  switch (kind) {
    case op_kind::read:
      return "READ";
    case op_kind::write:
      return "WRITE";
    case op_kind::cas:
      return "CAS";
    case op_kind::faa:
      return "FAA";
  }
  return "?";
}

// One posted operation. read: remote -> local; write: local -> remote; cas: if the remote word
// equals `compare`, it becomes `swap`; faa: the remote word grows by `compare` (the addend).
// cas and faa write the word's previous value into `local` (8 bytes).
struct operation {
  op_kind kind = op_kind::read;
  remote_ptr remote;
  local_buffer local;
  std::uint64_t compare = 0;  // cas: expected value; faa: addend
  std::uint64_t swap = 0;     // cas: desired value

  // Bytes moved over the wire in the data direction (8 for atomics).
  [[nodiscard]] std::size_t bytes() const noexcept { return local.size; }
};

}  // namespace kvc::inline v0
