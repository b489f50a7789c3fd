// kvc/transport/region.hpp — the header at offset 0 of every memory node's region.
//
//   offset 0                                    4096                          region_bytes
//   +--------------------------------------------+----------------------------------+
//   | region_header (magic, format, sizes, node, | what the region holds (index,    |
//   | layout parameters of its contents)         | data slots), from data_offset on |
//   +--------------------------------------------+----------------------------------+
//
// The memory node writes the header once, before it tells any client of the region (the magic
// last: a header is read whole or not at all); clients read it (one READ) when they connect and
// refuse a region whose magic, format version or size does not match (errc::format_mismatch).
// A shm client may map a restarted node's segment by its name before the node serves it: the
// layout words may be unwritten then, or half written (every word starts zero, so the index
// refuses such a layout and tries again later). Layout parameters describe the region's contents;
// their meaning belongs to the component that formats them (the index), which checks them itself.
// Remote words are little-endian: kvc supports little-endian hosts only (static_assert).
//
// Beside the header, in the same reserved page, the region's state word (region_state_offset):
// 0 while a memory node serves the region, region_retired once none does. It is the one word of
// the page written once the node serves (retire_region(), once); shm clients read it before they
// run a batch's operations on the node, since over shared memory nothing else tells them that
// their node stopped or restarted (they keep the old segment mapped). Clients never write into
// the header's page: a stray WRITE there could retire a region its node still serves (its
// clients would then find no other and fail as unreachable).
//
// Concurrency: the header is written before the node serves, read-only afterwards; the state word
// is stored with release and loaded with acquire. Design: docs/design/transport.md.
#pragma once

#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>

#include "kvc/error.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

static_assert(std::endian::native == std::endian::little,
              "kvc's remote layouts are little-endian; big-endian hosts are not supported");

enum class transport_kind : std::uint16_t { shm = 1, verbs = 2 };

struct region_header {
  static constexpr std::uint64_t magic_value = 0x314E47455243564Bu;  // "KVCREGN1" little-endian
  static constexpr std::uint32_t format = 1;
  static constexpr std::size_t reserved_bytes = 4096;  // data_offset of a fresh region
  static constexpr std::size_t layout_words = 16;

  std::uint64_t magic = magic_value;
  std::uint32_t format_version = format;
  std::uint32_t header_bytes = sizeof(region_header);
  std::uint64_t region_bytes = 0;  // the whole region, header included
  std::uint64_t data_offset = reserved_bytes;
  node_id node = 0;
  transport_kind transport = transport_kind::shm;
  std::uint32_t flags = 0;  // flag_huge_pages, ...
  std::uint64_t created_unix_ms = 0;
  std::uint64_t layout[layout_words] = {};  // the contents' parameters; 0 = unformatted

  static constexpr std::uint32_t flag_huge_pages = 1;
};
static_assert(std::is_trivially_copyable_v<region_header>);
static_assert(sizeof(region_header) == 176 &&
              sizeof(region_header) <= region_header::reserved_bytes);
static_assert(alignof(region_header) == 8);

// The region's state word: after the header, in its reserved page. Not a field of region_header:
// clients compare headers whole (the index, to tell a restarted node's region from the one it
// read), and the header never changes once published.
inline constexpr std::size_t region_state_offset = 256;
inline constexpr std::uint64_t region_retired = 1;  // no memory node serves the region any more
static_assert(sizeof(region_header) <= region_state_offset &&
              region_state_offset + 8 <= region_header::reserved_bytes);

// Marks the region at `base` as served by no memory node: its node stops, or a node starting
// under the same name takes over the segment a dead one left. Clients that map it then look for
// the node's new segment or fail their operations there as unreachable (shm_transport).
inline void retire_region(std::byte* base) noexcept {
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(base + region_state_offset))
      .store(region_retired, std::memory_order_release);
}
[[nodiscard]] inline bool region_is_retired(const std::byte* base) noexcept {
  // atomic_ref needs a non-const object; only a load here
  auto* word = reinterpret_cast<std::uint64_t*>(const_cast<std::byte*>(base) + region_state_offset);
  return std::atomic_ref<std::uint64_t>(*word).load(std::memory_order_acquire) == region_retired;
}

// A transport object's identity as memory nodes see it (kvc::transport_identity): 40 random
// bits, never 0. A fencing memory node refuses an identity it cut off, so a transport takes a
// fresh one when refused as fenced.
inline std::uint64_t fresh_transport_identity() {
  std::random_device rd;
  const std::uint64_t mixed =
      (std::uint64_t{rd()} << 32 ^ rd()) ^
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const std::uint64_t id = mixed & ((std::uint64_t{1} << 40) - 1);
  return id != 0 ? id : 1;
}

// Writes a fresh region's header at `base` (zeroed memory: the magic stored last is what makes the
// header whole to a reader), before the node tells any client of the region.
inline void write_region_header(std::byte* base, std::uint64_t bytes, node_id node,
                                transport_kind transport, std::uint32_t flags) noexcept {
  region_header h;
  h.region_bytes = bytes;
  h.node = node;
  h.transport = transport;
  h.flags = flags;
  h.created_unix_ms =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  // The magic last, with release: a client that maps a shm segment while its node writes the
  // header (by name, a restarted node's) reads the magic first, with acquire, and so sees the
  // whole header or no kvc region yet, never some of its fields.
  std::memcpy(base + 8, reinterpret_cast<const std::byte*>(&h) + 8, sizeof h - 8);
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(base))
      .store(h.magic, std::memory_order_release);
}

// Checks a header read from a region that the transport says is `mapped_bytes` long.
[[nodiscard]] inline result<void> check_region_header(const region_header& h,
                                                      std::uint64_t mapped_bytes) {
  if (h.magic != region_header::magic_value) {
    return fail(errc::format_mismatch, "not a kvc region (bad magic)");
  }
  if (h.format_version != region_header::format || h.header_bytes != sizeof(region_header)) {
    return fail(errc::format_mismatch, "region format version " + std::to_string(h.format_version) +
                                           ", this build reads version " +
                                           std::to_string(region_header::format));
  }
  if (h.region_bytes != mapped_bytes || h.data_offset < region_state_offset + 8 ||
      h.data_offset > h.region_bytes) {
    return fail(errc::format_mismatch, "region header says " + std::to_string(h.region_bytes) +
                                           " bytes with data at " + std::to_string(h.data_offset) +
                                           ", the region is " + std::to_string(mapped_bytes));
  }
  return {};
}

}  // namespace kvc::inline v0
