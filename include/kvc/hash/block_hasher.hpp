// kvc/hash/block_hasher.hpp — the token-block hasher: splits a token sequence into fixed-size
// blocks and gives each full block a chained hash, the global key of the KV cache.
//
//   h_k = H( enc(h_{k-1}) || enc(H(tokens of block k)) || extra-key frames of block k )
//   h_{-1} = root = H( "kvc.hash" || format version || width || block size || model salt )
//
// H is XXH3-64 (hash64, the default) or XXH3-128 (hash128), unseeded. The exact byte layout is
// format version 1 in docs/design/hashing.md, with test vectors computed by xxhsum. Nothing in it
// depends on the process, machine or run, so the same tokens give the same hashes everywhere:
// the remote index relies on that. Tokens are hashed straight from the caller's memory on
// little-endian hosts (no copy); only the small chaining step copies 16 or 32 bytes.
//
// Concurrency: a block_hasher is immutable after create(); any number of threads may call its
// const members concurrently. No call allocates, except to build the detail message of an error.
// Design: docs/design/hashing.md.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "kvc/concepts.hpp"
#include "kvc/detail/xxhash.hpp"
#include "kvc/error.hpp"
#include "kvc/hash/block_hash.hpp"
#include "kvc/hash/extra_keys.hpp"

namespace kvc::inline v0 {

// The hasher's configuration.
struct hasher_config {
  // Tokens per block: a power of two from 1 to 1024 (vLLM uses 16, Mooncake 512).
  std::uint32_t block_size = 16;
  // Model or namespace salt (any bytes; "" = none), folded into the root: caches of different
  // models, or of one model under different quantisations, never share a key.
  std::string_view model_salt;
};

namespace detail {

// Frame tags of the extra keys (format version 1). Never reuse a value.
enum class frame_tag : std::uint8_t { lora = 0x01, tenant = 0x02, mm_item = 0x03 };

// Feeds little-endian integers and byte strings into an XXH3 stream.
template <class Hash>
class hash_stream {
 public:
  hash_stream() noexcept {
    XXH3_INITSTATE(&state_);
    xxh3<Hash>::reset(&state_);
  }
  void bytes(const void* data, std::size_t len) noexcept { xxh3<Hash>::update(&state_, data, len); }
  void u8(std::uint8_t v) noexcept { bytes(&v, 1); }
  void u32(std::uint32_t v) noexcept {
    std::byte b[4];
    for (std::size_t i = 0; i < 4; ++i) b[i] = static_cast<std::byte>(v >> (8 * i));
    bytes(b, 4);
  }
  void u64(std::uint64_t v) noexcept {
    std::byte b[8];
    store_le64(b, v);
    bytes(b, 8);
  }
  void sized(std::string_view s) noexcept {  // u32 length, then the bytes
    u32(static_cast<std::uint32_t>(s.size()));
    bytes(s.data(), s.size());
  }
  void hash(const Hash& h) noexcept {
    const auto b = to_bytes(h);
    bytes(b.data(), b.size());
  }
  [[nodiscard]] Hash digest() const noexcept { return xxh3<Hash>::digest(&state_); }

 private:
  XXH3_state_t state_;
};

}  // namespace detail

template <class Hash>
class sequence_hasher;

// The token-block hasher at width Hash (hash64 or hash128).
template <class Hash = hash64>
class block_hasher {
  static_assert(std::is_same_v<Hash, hash64> || std::is_same_v<Hash, hash128>,
                "block_hasher<Hash>: Hash is kvc::hash64 or kvc::hash128");

 public:
  using hash_type = Hash;
  // Version of the hashed byte layout (docs/design/hashing.md); part of the root.
  static constexpr std::uint32_t format_version = 1;
  static constexpr std::uint32_t max_block_size = 1024;

  // A hasher for the config. Errors: invalid_config when block_size is not a power of two in
  // [1, 1024] or the model salt is longer than 2^32-1 bytes. Allocates only on error.
  [[nodiscard]] static result<block_hasher> create(const hasher_config& config) {
    const std::uint32_t bs = config.block_size;
    if (bs == 0 || bs > max_block_size || !std::has_single_bit(bs)) {
      return fail(errc::invalid_config,
                  "block size " + std::to_string(bs) + " is not a power of two from 1 to 1024");
    }
    if (config.model_salt.size() > 0xFFFF'FFFFu) {
      return fail(errc::invalid_config, "model salt is longer than 2^32-1 bytes");
    }
    detail::hash_stream<Hash> root;
    root.bytes("kvc.hash", 8);
    root.u32(format_version);
    root.u32(static_cast<std::uint32_t>(Hash::bits));
    root.u32(bs);
    root.sized(config.model_salt);
    return block_hasher(bs, root.digest());
  }

  // Tokens per block.
  [[nodiscard]] std::uint32_t block_size() const noexcept { return block_size_; }
  // The parent of block 0: depends on the format version, width, block size and model salt.
  [[nodiscard]] Hash root() const noexcept { return root_; }
  // Full blocks in a sequence of n tokens (the trailing partial block gets no hash).
  [[nodiscard]] std::size_t full_blocks(std::size_t n_tokens) const noexcept {
    return n_tokens >> std::countr_zero(block_size_);
  }

  // Hashes every full block of a prompt into out[0, n) and returns n = full_blocks(size).
  // Errors: buffer_too_small when out.size() < n; invalid_argument / out_of_range for invalid
  // keys (see validate(); items must lie inside the prompt). O(tokens + extra-key bytes); does
  // not allocate unless it fails.
  [[nodiscard]] result<std::size_t> hash_prompt(std::span<const token_id> tokens,
                                                std::span<Hash> out,
                                                const extra_keys& keys = {}) const {
    const std::size_t n = full_blocks(tokens.size());
    if (out.size() < n) {
      return fail(errc::buffer_too_small, "output holds " + std::to_string(out.size()) +
                                              " hashes but the prompt has " + std::to_string(n) +
                                              " full blocks");
    }
    if (auto ok = validate(keys, tokens.size()); !ok) return std::move(ok).take_failure();
    hash_blocks_unchecked(root_, tokens.data(), 0, n, keys, out.data());
    return n;
  }

  // Int32 token ids (as many engines store them) hash exactly like their uint32 bit patterns.
  [[nodiscard]] result<std::size_t> hash_prompt(std::span<const std::int32_t> tokens,
                                                std::span<Hash> out,
                                                const extra_keys& keys = {}) const {
    return hash_prompt(as_token_ids(tokens), out, keys);
  }

  // Hashes one block: tokens must hold exactly block_size() tokens, block_index is the block's
  // position in its sequence (it selects the extra keys that apply) and parent is the hash of
  // block block_index - 1, or root() for block 0. Errors: invalid_argument when tokens.size()
  // != block_size() or the keys are invalid. Does not allocate unless it fails.
  [[nodiscard]] result<Hash> hash_block(Hash parent, std::span<const token_id> tokens,
                                        std::size_t block_index,
                                        const extra_keys& keys = {}) const {
    if (tokens.size() != block_size_) {
      return fail(errc::invalid_argument, "a block holds " + std::to_string(block_size_) +
                                              " tokens, got " + std::to_string(tokens.size()));
    }
    if (auto ok = validate(keys); !ok) return std::move(ok).take_failure();
    Hash out{};
    hash_blocks_unchecked(parent, tokens.data(), block_index, 1, keys, &out);
    return out;
  }

  // Token ids as uint32: the same bits, and the aliasing rules allow the view.
  static std::span<const token_id> as_token_ids(std::span<const std::int32_t> tokens) noexcept {
    return {reinterpret_cast<const token_id*>(tokens.data()), tokens.size()};
  }

 private:
  template <class>
  friend class sequence_hasher;

  // Hashes blocks [first, first + count) whose tokens start at `tokens`, chaining from `parent`,
  // into out[0, count). Preconditions: validated keys, `count` full blocks readable.
  void hash_blocks_unchecked(Hash parent, const token_id* tokens, std::size_t first,
                             std::size_t count, const extra_keys& keys, Hash* out) const noexcept {
    const std::size_t bs = block_size_;
    std::size_t i = 0;
    if (keys.mm_items.empty()) {
      // The common case: only block 0 can carry extra keys (LoRA, tenant); the rest chain in a
      // tight loop with nothing to reload.
      if (first == 0 && count > 0) {
        std::size_t no_items = 0;
        parent = chain(parent, tokens, 0, keys, no_items);
        out[0] = parent;
        i = 1;
      }
      chain_plain(parent, tokens + i * bs, count - i, out + i);
      return;
    }
    std::size_t mm_cursor = 0;
    for (; i < count; ++i) {
      parent = chain(parent, tokens + i * bs, first + i, keys, mm_cursor);
      out[i] = parent;
    }
  }

  block_hasher(std::uint32_t block_size, Hash root) noexcept
      : block_size_(block_size), root_(root) {}

  // H(tokens of one block) over their 32-bit little-endian encoding.
  [[nodiscard]] static Hash token_hash(const token_id* tokens, std::size_t block_size) noexcept {
    const std::size_t len = block_size * sizeof(token_id);
    if constexpr (std::endian::native == std::endian::little) {
      return detail::xxh3<Hash>::oneshot(tokens, len);
    } else {
      token_id le[max_block_size];
      for (std::size_t i = 0; i < block_size; ++i) {
        const token_id t = tokens[i];
        le[i] = (t >> 24) | ((t >> 8) & 0xFF00u) | ((t << 8) & 0xFF0000u) | (t << 24);
      }
      return detail::xxh3<Hash>::oneshot(le, len);
    }
  }

  // Chains `count` blocks without extra keys. The block size is made a compile-time constant
  // (one instantiation per power of two) so that XXH3 is specialised for the block's length:
  // at 16 tokens that halves the time per block.
  void chain_plain(Hash parent, const token_id* tokens, std::size_t count,
                   Hash* out) const noexcept {
    switch (std::countr_zero(block_size_)) {
      case 0:
        return chain_plain_fixed<1>(parent, tokens, count, out);
      case 1:
        return chain_plain_fixed<2>(parent, tokens, count, out);
      case 2:
        return chain_plain_fixed<4>(parent, tokens, count, out);
      case 3:
        return chain_plain_fixed<8>(parent, tokens, count, out);
      case 4:
        return chain_plain_fixed<16>(parent, tokens, count, out);
      case 5:
        return chain_plain_fixed<32>(parent, tokens, count, out);
      case 6:
        return chain_plain_fixed<64>(parent, tokens, count, out);
      case 7:
        return chain_plain_fixed<128>(parent, tokens, count, out);
      case 8:
        return chain_plain_fixed<256>(parent, tokens, count, out);
      case 9:
        return chain_plain_fixed<512>(parent, tokens, count, out);
      default:
        return chain_plain_fixed<1024>(parent, tokens, count, out);
    }
  }

  template <std::size_t BlockSize>
  KVC_FLATTEN static void chain_plain_fixed(Hash parent, const token_id* tokens, std::size_t count,
                                            Hash* out) noexcept {
    for (std::size_t i = 0; i < count; ++i) {
      parent = combine(parent, token_hash(tokens + i * BlockSize, BlockSize));
      out[i] = parent;
    }
  }

  // H(enc(parent) || enc(inner)): the chaining step of a block without extra keys.
  [[nodiscard]] static Hash combine(Hash parent, Hash inner) noexcept {
    if constexpr (std::endian::native == std::endian::little && Hash::bits == 64) {
      const std::uint64_t words[2] = {parent.value, inner.value};
      return detail::xxh3<Hash>::oneshot(words, sizeof words);
    } else if constexpr (std::endian::native == std::endian::little) {
      const std::uint64_t words[4] = {parent.low, parent.high, inner.low, inner.high};
      return detail::xxh3<Hash>::oneshot(words, sizeof words);
    } else {
      std::byte buf[2 * Hash::bytes];
      const auto p = to_bytes(parent);
      const auto c = to_bytes(inner);
      std::memcpy(buf, p.data(), Hash::bytes);
      std::memcpy(buf + Hash::bytes, c.data(), Hash::bytes);
      return detail::xxh3<Hash>::oneshot(buf, sizeof buf);
    }
  }

  // h_k from its parent. mm_cursor: index of the first item that may still overlap this or a
  // later block (items are sorted and disjoint, and blocks come in increasing order).
  [[nodiscard]] Hash chain(Hash parent, const token_id* tokens, std::size_t index,
                           const extra_keys& keys, std::size_t& mm_cursor) const noexcept {
    const Hash inner = token_hash(tokens, block_size_);
    const std::uint64_t begin = std::uint64_t{index} * block_size_;
    const std::uint64_t end = begin + block_size_;
    const auto items = keys.mm_items;
    while (mm_cursor < items.size() && items[mm_cursor].offset + items[mm_cursor].length <= begin) {
      ++mm_cursor;
    }
    const bool first_block_keys = index == 0 && (keys.lora_id || !keys.tenant_salt.empty());
    const bool mm_keys = mm_cursor < items.size() && items[mm_cursor].offset < end;

    if (KVC_LIKELY(!first_block_keys && !mm_keys)) return combine(parent, inner);

    detail::hash_stream<Hash> s;
    s.hash(parent);
    s.hash(inner);
    if (index == 0) {
      if (keys.lora_id) {
        s.u8(static_cast<std::uint8_t>(detail::frame_tag::lora));
        s.u64(*keys.lora_id);
      }
      if (!keys.tenant_salt.empty()) {
        s.u8(static_cast<std::uint8_t>(detail::frame_tag::tenant));
        s.sized(keys.tenant_salt);
      }
    }
    for (std::size_t i = mm_cursor; i < items.size() && items[i].offset < end; ++i) {
      s.u8(static_cast<std::uint8_t>(detail::frame_tag::mm_item));
      s.u64(items[i].offset);
      s.u64(items[i].length);
      s.sized(items[i].content_hash);
    }
    return s.digest();
  }

  std::uint32_t block_size_;
  Hash root_;
};

static_assert(BlockHash<hash64>);
static_assert(BlockHash<hash128>);
static_assert(Hasher<block_hasher<hash64>>);
static_assert(Hasher<block_hasher<hash128>>);

}  // namespace kvc::inline v0
