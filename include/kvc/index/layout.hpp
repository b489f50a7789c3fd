// kvc/index/layout.hpp — every structure the one-sided prefix index keeps in a memory node's
// region, with its encoding. Design and protocol: docs/design/remote_index.md (the index itself
// is being built; this header fixes the remote formats first, so that they are reviewed and
// tested on their own).
//
// A memory node's region (after the 4 KiB region header of kvc/transport/region.hpp):
//
//   data_offset
//   +-----------+-------------+-------------------+------------------+---------------------+
//   | clients   | chunk table | groups            | records          | data slots          |
//   | C x 576 B | K x 16 B    | G x S x 64 B      | X x 64 B         | X x block_bytes     |
//   +-----------+-------------+-------------------+------------------+---------------------+
//   slab index x names record x and data slot x; chunk k holds slab indexes [64k, 64k + 64)
//
//   bucket (64 B) = 4 slots          slot (16 B)
//   +--------+--------+--------+--------+   word0: tag:58 | version:6         (CAS only)
//   | slot 0 | slot 1 | slot 2 | slot 3 |   word1: check:16 | version:6 | state:2 | ptr:40
//   +--------+--------+--------+--------+          (CAS only)
//   state VALID: ptr = slab index; RESERVED: ptr = owner client (22) | 18 more tag bits
//
//   record (64 B): hash lo | hash hi | parent (remote_ptr) | slot (remote_ptr) |
//                  length:32 tier:8 flags:8 tokens:16 | child_count (atomics only) |
//                  last access (WRITE only) | checksum of words 0-4
//
//   client entry: word 0 = state:2 | incarnation:22 | heartbeat:40 (atomics only),
//                 word 1..7 reserved, then hazard_words slab ranges (WRITE by the owner only)
//   chunk word:   state:2 | owner:22 | incarnation:40 (CAS only), then its 64-bit bitmap
//                 (bit set = slab index in use; CAS only)
//
// Every word that atomics touch is 8-byte aligned and is never the target of a WRITE (the
// Transport concept's rule); the static_asserts below check sizes, alignment and offsets.
//
// Concurrency: values and pure functions. Design: docs/design/remote_index.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvc/error.hpp"
#include "kvc/transport/region.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0::index_layout {

inline constexpr std::size_t segment_blocks = 16;  // S: blocks per chain segment
inline constexpr std::size_t slots_per_bucket = 4;
inline constexpr std::size_t bucket_bytes = 64;
inline constexpr std::size_t group_bytes = segment_blocks * bucket_bytes;  // 1 KiB
inline constexpr std::size_t slot_bytes = 16;
inline constexpr std::size_t record_bytes = 64;
inline constexpr std::size_t chunk_slabs = 64;
inline constexpr std::size_t hazard_words = 64;
inline constexpr std::size_t client_bytes = 64 + 8 * hazard_words;
inline constexpr std::size_t chunk_entry_bytes = 16;

// --- slots -----------------------------------------------------------------------------------

enum class slot_state : std::uint8_t { empty = 0, reserved = 1, valid = 2, tombstone = 3 };

inline constexpr unsigned ptr_bits = 40;
inline constexpr unsigned state_bits = 2;
inline constexpr unsigned version_bits = 6;
inline constexpr unsigned check_bits = 16;
inline constexpr unsigned tag_bits = 58;
inline constexpr unsigned owner_bits = 22;
inline constexpr unsigned reserved_tag_bits = ptr_bits - owner_bits;  // 18
static_assert(ptr_bits + state_bits + version_bits + check_bits == 64);
static_assert(tag_bits + version_bits == 64);

inline constexpr std::uint64_t mask(unsigned bits) noexcept {
  return bits >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
}

// word1 of a slot: the word every state change swings with one CAS.
struct slot_word {
  std::uint64_t ptr = 0;  // slab index (valid, tombstone) or owner | tag bits (reserved)
  slot_state state = slot_state::empty;
  std::uint8_t version = 0;  // bumped, modulo 64, by every transition
  std::uint16_t check = 0;   // 16 more bits of the key than the tag holds

  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return (ptr & mask(ptr_bits)) | (std::uint64_t{static_cast<std::uint8_t>(state)} << ptr_bits) |
           (std::uint64_t{version & mask(version_bits)} << (ptr_bits + state_bits)) |
           (std::uint64_t{check} << (ptr_bits + state_bits + version_bits));
  }
  [[nodiscard]] static constexpr slot_word decode(std::uint64_t w) noexcept {
    slot_word s;
    s.ptr = w & mask(ptr_bits);
    s.state = static_cast<slot_state>((w >> ptr_bits) & mask(state_bits));
    s.version = static_cast<std::uint8_t>((w >> (ptr_bits + state_bits)) & mask(version_bits));
    s.check = static_cast<std::uint16_t>(w >> (ptr_bits + state_bits + version_bits));
    return s;
  }
  // The same slot after a transition to `next` (version + 1).
  [[nodiscard]] constexpr slot_word moved_to(slot_state next, std::uint64_t next_ptr,
                                             std::uint16_t next_check) const noexcept {
    return {next_ptr & mask(ptr_bits), next,
            static_cast<std::uint8_t>((version + 1) & mask(version_bits)), next_check};
  }
  friend constexpr bool operator==(const slot_word&, const slot_word&) = default;
};

// RESERVED's pointer field: who reserved the slot and 18 bits of the key it will hold, so that a
// second inserter of the same block sees it pending.
[[nodiscard]] constexpr std::uint64_t reserved_ptr(std::uint32_t owner,
                                                   std::uint64_t key_bits) noexcept {
  return (std::uint64_t{owner} & mask(owner_bits)) |
         ((key_bits & mask(reserved_tag_bits)) << owner_bits);
}
[[nodiscard]] constexpr std::uint32_t reserved_owner(std::uint64_t ptr) noexcept {
  return static_cast<std::uint32_t>(ptr & mask(owner_bits));
}
[[nodiscard]] constexpr std::uint64_t reserved_key_bits(std::uint64_t ptr) noexcept {
  return (ptr >> owner_bits) & mask(reserved_tag_bits);
}

// word0 of a slot: the key's tag and the version of word1 it belongs to.
struct tag_word {
  std::uint64_t tag = 0;  // 58 bits of the block hash
  std::uint8_t version = 0;

  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return (tag & mask(tag_bits)) | (std::uint64_t{version & mask(version_bits)} << tag_bits);
  }
  [[nodiscard]] static constexpr tag_word decode(std::uint64_t w) noexcept {
    return {w & mask(tag_bits), static_cast<std::uint8_t>(w >> tag_bits)};
  }
  friend constexpr bool operator==(const tag_word&, const tag_word&) = default;
};

// The slot's two words as READ; they belong together only when their versions agree.
struct slot {
  std::uint64_t word0 = 0;
  std::uint64_t word1 = 0;
};
static_assert(sizeof(slot) == slot_bytes && alignof(slot) == 8);

struct bucket {
  slot slots[slots_per_bucket];
};
static_assert(sizeof(bucket) == bucket_bytes);

// The block with this tag and check is published in `s` (VALID, versions agreeing).
[[nodiscard]] constexpr bool holds(const slot& s, std::uint64_t tag, std::uint16_t check) noexcept {
  const slot_word w1 = slot_word::decode(s.word1);
  const tag_word w0 = tag_word::decode(s.word0);
  return w1.state == slot_state::valid && w0.version == w1.version &&
         w0.tag == (tag & mask(tag_bits)) && w1.check == check;
}

// --- records ---------------------------------------------------------------------------------

struct record {
  std::uint64_t hash_lo = 0;
  std::uint64_t hash_hi = 0;      // 0 for 64-bit hashes
  std::uint64_t parent = 0;       // remote_ptr raw of the parent's slot; 0 for a chain's first
  std::uint64_t slot_at = 0;      // remote_ptr raw of the slot that publishes this record
  std::uint64_t shape = 0;        // length:32 | tier:8 | flags:8 | tokens:16
  std::uint64_t child_count = 0;  // atomics only; evicting_bit while being evicted
  std::uint64_t last_access = 0;  // WRITE only
  std::uint64_t checksum = 0;     // of words 0-4

  static constexpr std::uint64_t evicting_bit = std::uint64_t{1} << 63;
};
static_assert(sizeof(record) == record_bytes && alignof(record) == 8);
static_assert(offsetof(record, child_count) % 8 == 0 && offsetof(record, child_count) == 40);

[[nodiscard]] constexpr std::uint64_t pack_shape(std::uint32_t length, std::uint8_t tier,
                                                 std::uint8_t flags,
                                                 std::uint16_t tokens) noexcept {
  return std::uint64_t{length} | std::uint64_t{tier} << 32 | std::uint64_t{flags} << 40 |
         std::uint64_t{tokens} << 48;
}

// --- clients and chunks ----------------------------------------------------------------------

enum class client_state : std::uint8_t { free = 0, live = 1, dead = 2, fenced = 3 };

// Client and chunk words share one shape: state:2 | id:22 | value:40.
struct state_id_value {
  std::uint8_t state = 0;
  std::uint32_t id = 0;
  std::uint64_t value = 0;

  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return (std::uint64_t{state} & mask(state_bits)) |
           (std::uint64_t{id} & mask(owner_bits)) << state_bits |
           (value & mask(40)) << (state_bits + owner_bits);
  }
  [[nodiscard]] static constexpr state_id_value decode(std::uint64_t w) noexcept {
    return {static_cast<std::uint8_t>(w & mask(state_bits)),
            static_cast<std::uint32_t>((w >> state_bits) & mask(owner_bits)),
            w >> (state_bits + owner_bits)};
  }
};
static_assert(state_bits + owner_bits + 40 == 64);

struct client_word {
  client_state state = client_state::free;
  std::uint32_t incarnation = 0;  // 22 bits
  std::uint64_t heartbeat = 0;    // 40 bits, FAA'd by the owner (wraps)

  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return state_id_value{static_cast<std::uint8_t>(state), incarnation, heartbeat}.encode();
  }
  [[nodiscard]] static constexpr client_word decode(std::uint64_t w) noexcept {
    const auto f = state_id_value::decode(w);
    return {static_cast<client_state>(f.state), f.id, f.value};
  }
  // The FAA that adds one heartbeat without touching state or incarnation.
  static constexpr std::uint64_t heartbeat_one = std::uint64_t{1} << (state_bits + owner_bits);
  friend constexpr bool operator==(const client_word&, const client_word&) = default;
};

enum class chunk_state : std::uint8_t { free = 0, owned = 1, orphan = 2, freeing = 3 };

struct chunk_word {
  chunk_state state = chunk_state::free;
  std::uint32_t owner = 0;        // client id, 22 bits
  std::uint64_t incarnation = 0;  // the owner's incarnation when it took the chunk, 40 bits

  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return state_id_value{static_cast<std::uint8_t>(state), owner, incarnation}.encode();
  }
  [[nodiscard]] static constexpr chunk_word decode(std::uint64_t w) noexcept {
    const auto f = state_id_value::decode(w);
    return {static_cast<chunk_state>(f.state), f.id, f.value};
  }
  friend constexpr bool operator==(const chunk_word&, const chunk_word&) = default;
};

struct chunk_entry {
  std::uint64_t word = 0;    // chunk_word
  std::uint64_t bitmap = 0;  // bit i set: slab index 64k + i is in use
};
static_assert(sizeof(chunk_entry) == chunk_entry_bytes);

// --- geometry --------------------------------------------------------------------------------

// What a node's region holds; stored in the region header's layout words by whoever formats it.
struct geometry {
  std::uint64_t clients = 0;      // C
  std::uint64_t groups = 0;       // G, a power of two
  std::uint64_t chunks = 0;       // K (slab indexes: 64 K)
  std::uint64_t block_bytes = 0;  // bytes of one KV data slot, a multiple of 64

  [[nodiscard]] std::uint64_t slabs() const noexcept { return chunks * chunk_slabs; }
  [[nodiscard]] std::uint64_t clients_offset(std::uint64_t data_offset) const noexcept {
    return align64(data_offset);
  }
  [[nodiscard]] std::uint64_t chunks_offset(std::uint64_t data_offset) const noexcept {
    return clients_offset(data_offset) + clients * client_bytes;
  }
  // Sections start on 64-byte boundaries (buckets and records are read as whole lines).
  [[nodiscard]] static constexpr std::uint64_t align64(std::uint64_t v) noexcept {
    return (v + 63) / 64 * 64;
  }
  [[nodiscard]] std::uint64_t groups_offset(std::uint64_t data_offset) const noexcept {
    return align64(chunks_offset(data_offset) + chunks * chunk_entry_bytes);
  }
  [[nodiscard]] std::uint64_t records_offset(std::uint64_t data_offset) const noexcept {
    return groups_offset(data_offset) + groups * group_bytes;
  }
  [[nodiscard]] std::uint64_t data_offset_of(std::uint64_t data_offset) const noexcept {
    return records_offset(data_offset) + slabs() * record_bytes;
  }
  [[nodiscard]] std::uint64_t end(std::uint64_t data_offset) const noexcept {
    return data_offset_of(data_offset) + slabs() * block_bytes;
  }

  // The largest geometry that fits `region_bytes` for blocks of `block_bytes` with `clients`
  // client entries, one group (16 buckets, 64 slots) per `slabs_per_group` slab indexes.
  [[nodiscard]] static result<geometry> fit(std::uint64_t region_bytes, std::uint64_t data_offset,
                                            std::uint64_t block_bytes, std::uint64_t clients,
                                            std::uint64_t slabs_per_group = 32) {
    if (block_bytes == 0 || block_bytes % 64 != 0) {
      return fail(errc::invalid_config, "block_bytes " + std::to_string(block_bytes) +
                                            " is not a positive multiple of 64");
    }
    if (clients == 0 || clients > mask(owner_bits)) {
      return fail(errc::invalid_config, "clients must be 1 to 4,194,303");
    }
    if (slabs_per_group == 0) return fail(errc::invalid_config, "slabs_per_group must be > 0");
    geometry g;
    g.clients = clients;
    g.block_bytes = block_bytes;
    // Per chunk: its entry, 64 records, 64 data slots, and its share of the groups.
    const std::uint64_t fixed = align64(data_offset) + clients * client_bytes + 64;  // + padding
    const std::uint64_t per_chunk = chunk_entry_bytes + chunk_slabs * (record_bytes + block_bytes) +
                                    chunk_slabs * group_bytes / slabs_per_group;
    if (region_bytes <= fixed || (region_bytes - fixed) / per_chunk == 0) {
      return fail(errc::invalid_config,
                  "a region of " + std::to_string(region_bytes) + " bytes holds no chunk of " +
                      std::to_string(chunk_slabs) + " blocks of " + std::to_string(block_bytes) +
                      " bytes with " + std::to_string(clients) + " clients");
    }
    g.chunks = (region_bytes - fixed) / per_chunk;
    // Groups: a power of two, about one per slabs_per_group slab indexes, at least one.
    std::uint64_t groups = 1;
    while (groups * 2 * slabs_per_group <= g.slabs()) groups *= 2;
    g.groups = groups;
    while (g.chunks > 0 && g.end(data_offset) > region_bytes) --g.chunks;  // rounding slack
    if (g.chunks == 0) return fail(errc::invalid_config, "the region is too small");
    return g;
  }
};

}  // namespace kvc::inline v0::index_layout
