// kvc/transport/region.hpp — the header at offset 0 of every memory node's region.
//
//   offset 0                                    4096                          region_bytes
//   +--------------------------------------------+----------------------------------+
//   | region_header (magic, format, sizes, node, | what the region holds (index,    |
//   | layout parameters of its contents)         | data slots), from data_offset on |
//   +--------------------------------------------+----------------------------------+
//
// The memory node writes the header once, before any client can reach the region; clients read
// it (one READ) when they connect and refuse a region whose magic, format version or size does
// not match (errc::format_mismatch). Layout parameters describe the region's contents; their
// meaning belongs to the component that formats them (the index), which checks them itself.
// Remote words are little-endian: kvc supports little-endian hosts only (static_assert).
//
// Concurrency: written before publication, read-only afterwards. Design: docs/design/transport.md.
#pragma once

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

// Writes a fresh region's header at `base`, before any client can know the region exists.
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
  std::memcpy(base, &h, sizeof h);
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
  if (h.region_bytes != mapped_bytes || h.data_offset < sizeof(region_header) ||
      h.data_offset > h.region_bytes) {
    return fail(errc::format_mismatch, "region header says " + std::to_string(h.region_bytes) +
                                           " bytes with data at " + std::to_string(h.data_offset) +
                                           ", the region is " + std::to_string(mapped_bytes));
  }
  return {};
}

}  // namespace kvc::inline v0
