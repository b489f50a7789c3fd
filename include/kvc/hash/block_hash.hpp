// kvc/hash/block_hash.hpp — the block key types: hash64 and hash128.
//
// A block hash is the global identity of one KV block: equal hashes mean equal tokens, equal
// extra keys and an equal prefix (the hash chains through the parent). Both types are trivially
// copyable values, totally ordered, usable as keys of std::unordered_map (std::hash is
// specialised) and have one canonical little-endian byte encoding, the one the hash format
// itself uses (docs/design/hashing.md).
//
// Concurrency: plain values. Design: docs/design/hashing.md.
#pragma once

#include <array>
#include <compare>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

namespace kvc::inline v0 {

// A 64-bit block hash (XXH3-64): the default width.
struct hash64 {
  static constexpr std::size_t bits = 64;
  static constexpr std::size_t bytes = 8;

  std::uint64_t value = 0;

  friend constexpr bool operator==(const hash64&, const hash64&) noexcept = default;
  friend constexpr auto operator<=>(const hash64&, const hash64&) noexcept = default;
};

// A 128-bit block hash (XXH3-128), for deployments where 2^-64 collision odds per pair are too
// high (very large shared caches).
struct hash128 {
  static constexpr std::size_t bits = 128;
  static constexpr std::size_t bytes = 16;

  std::uint64_t high = 0;
  std::uint64_t low = 0;

  friend constexpr bool operator==(const hash128&, const hash128&) noexcept = default;
  friend constexpr auto operator<=>(const hash128&, const hash128&) noexcept = default;
};

namespace detail {

constexpr void store_le64(std::byte* out, std::uint64_t v) noexcept {
  for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<std::byte>(v >> (8 * i));
}

constexpr std::uint64_t load_le64(const std::byte* in) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i)
    v |= std::uint64_t{std::to_integer<std::uint8_t>(in[i])} << (8 * i);
  return v;
}

inline void append_hex64(std::string& out, std::uint64_t v) {
  constexpr char digits[] = "0123456789abcdef";
  for (int shift = 60; shift >= 0; shift -= 4) out.push_back(digits[(v >> shift) & 0xF]);
}

}  // namespace detail

// The canonical encoding used inside the hash format: the 64-bit word little-endian; for
// hash128, the low word then the high word (each little-endian).
constexpr std::array<std::byte, 8> to_bytes(hash64 h) noexcept {
  std::array<std::byte, 8> out{};
  detail::store_le64(out.data(), h.value);
  return out;
}
constexpr std::array<std::byte, 16> to_bytes(hash128 h) noexcept {
  std::array<std::byte, 16> out{};
  detail::store_le64(out.data(), h.low);
  detail::store_le64(out.data() + 8, h.high);
  return out;
}

// The inverse of to_bytes: the hash whose canonical encoding is `b`.
template <class H>
requires std::same_as<H, hash64> || std::same_as<H, hash128>
constexpr H from_bytes(std::span<const std::byte, H::bytes> b) noexcept {
  if constexpr (H::bits == 64) {
    return hash64{detail::load_le64(b.data())};
  } else {
    return hash128{detail::load_le64(b.data() + 8), detail::load_le64(b.data())};
  }
}

// Lower-case hex as xxhsum prints it: 16 digits, or 32 (high word first) for hash128.
inline std::string to_hex(hash64 h) {
  std::string out;
  out.reserve(16);
  detail::append_hex64(out, h.value);
  return out;
}
inline std::string to_hex(hash128 h) {
  std::string out;
  out.reserve(32);
  detail::append_hex64(out, h.high);
  detail::append_hex64(out, h.low);
  return out;
}

}  // namespace kvc::inline v0

// The hashes are already uniformly distributed: std::hash passes bits through (folding the
// two words of hash128).
template <>
struct std::hash<kvc::hash64> {
  std::size_t operator()(const kvc::hash64& h) const noexcept {
    return static_cast<std::size_t>(h.value);
  }
};
template <>
struct std::hash<kvc::hash128> {
  std::size_t operator()(const kvc::hash128& h) const noexcept {
    return static_cast<std::size_t>(h.low ^ h.high);
  }
};
