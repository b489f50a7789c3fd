// kvc/index/layout.hpp — every structure the one-sided prefix index keeps in a memory node's
// region, with its encoding. Design and protocol: docs/design/remote_index.md; the protocol is in
// kvc/index/remote_index.hpp, the memory node's side of fencing in kvc/index/fencer.hpp.
//
// A memory node's region (after the 4 KiB region header of kvc/transport/region.hpp):
//
//   data_offset
//   +---------+-----------+-------------+----------------+-------------+-------------------+
//   | control | clients   | chunk table | groups         | records     | data slots        |
//   | 64 B    | C x 576 B | K x 16 B    | G x 1088 B     | X x 64 B    | X x block_bytes   |
//   +---------+-----------+-------------+----------------+-------------+-------------------+
//   control word 0: the chunk cursor (FAA; chunks at or beyond it were never handed out)
//
//   group (1088 B) = a 64 B header, then S = 16 buckets of 64 B (bucket o: blocks at offset o)
//   +-----------------------------+----------+----------+-----+-----------+
//   | words 0-6 reserved | overfl.| bucket 0 | bucket 1 | ... | bucket 15 |
//   +-----------------------------+----------+----------+-----+-----------+
//   overflow word (CAS only, bits are only ever set): bit o (0..15) set once a block at offset
//   o whose first group this is has taken its second bucket (o = 0: a head); a lookup reads it
//   with bucket 0 (one READ of 72 B) and reads second buckets only at the offsets it names
//   slab index x names record x and data slot x; chunk k holds slab indexes [64k, 64k + 64)
//
//   bucket (64 B) = 4 slots          slot (16 B)
//   +--------+--------+--------+--------+   word0: tag:58 | version:6         (CAS only)
//   | slot 0 | slot 1 | slot 2 | slot 3 |   word1: check:16 | version:6 | state:2 | ptr:40
//   +--------+--------+--------+--------+          (CAS only)
//   state VALID: ptr = slab index; RESERVED: ptr = owner client (22) | 18 more tag bits
//
//   record (64 B): hash lo | hash hi | parent (remote_ptr) | slot (remote_ptr) |
//                  length:32 tier:8 flags:8 tokens:16 | checksum of words 0-4 |
//                  last access (WRITE only) | slab word (atomics only)
//   slab word: state:2 | version:8 | owner:22 | children:32   (FREE, HELD, LIVE, EVICTING)
//              owner: the holder (HELD), the evictor (EVICTING: its own rollback undoes only its
//              own step 1), else 0
//
//   client entry: word 0 = state:2 | incarnation:22 | heartbeat:40 (atomics only),
//                 word 1 = identity word (WRITE by the owner right after it registers):
//                 set:1 | incarnation:22 | the owner's transport identity:40 (0 = none),
//                 word 2 = the fence word (a CPU store by the memory node only:
//                 fenced:1 | incarnation:22, the incarnation whose connections it cut),
//                 words 3..7 reserved, then hazard_words slab ranges (WRITE by the owner only):
//                 first slab:40 | count:24 (0 = none)
//   chunk word:   state:2 | owner:22 | incarnation:40 (CAS only), then a reserved word;
//                 a chunk groups 64 slab indexes for ownership (a dead owner's slabs are found
//                 through its chunks) and locality (one READ of 4 KiB shows all 64 slab words)
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
inline constexpr std::size_t group_bytes = segment_blocks * bucket_bytes;  // 1 KiB of buckets
inline constexpr std::size_t group_header_bytes = 64;  // before a group's buckets
inline constexpr std::size_t group_stride = group_header_bytes + group_bytes;
inline constexpr std::size_t overflow_offset = group_header_bytes - 8;  // in the group header
// The overflow word and bucket 0 (the segment heads) are adjacent: one READ reads both.
inline constexpr std::size_t head_line_bytes = 8 + bucket_bytes;
inline constexpr std::size_t slots_per_group = segment_blocks * slots_per_bucket;
static_assert(overflow_offset + 8 == group_header_bytes && group_stride % 64 == 0);
inline constexpr std::size_t slot_bytes = 16;
inline constexpr std::size_t record_bytes = 64;
inline constexpr std::size_t chunk_slabs = 64;
inline constexpr std::size_t hazard_words = 64;
inline constexpr std::size_t client_bytes = 64 + 8 * hazard_words;
inline constexpr std::size_t chunk_entry_bytes = 16;
inline constexpr std::size_t control_bytes = 64;
inline constexpr std::size_t hazard_offset = 64;   // of the hazard words in a client entry
inline constexpr std::size_t identity_offset = 8;  // of the owner's transport identity
inline constexpr std::size_t fence_offset = 16;    // of the memory node's fence word
static_assert(fence_offset + 8 <= hazard_offset && client_bytes % 64 == 0);

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
  std::uint64_t parent = 0;       // remote_ptr raw of the parent's record; 0 for a chain's first
  std::uint64_t slot_at = 0;      // remote_ptr raw of the slot that publishes this record
  std::uint64_t shape = 0;        // length:32 | tier:8 | flags:8 | tokens:16
  std::uint64_t checksum = 0;     // of words 0-4
  std::uint64_t last_access = 0;  // WRITE only: unix milliseconds of the last use
  std::uint64_t slab = 0;         // slab_word: the slab's allocation state (atomics only)
};
static_assert(sizeof(record) == record_bytes && alignof(record) == 8);
// The slab word last: an inserter writes the record in one WRITE (layout format 6).
static_assert(offsetof(record, last_access) == 48 && offsetof(record, slab) == 56);

// Word 7 of a record: the state of slab index x (its record and its data slot), changed by CAS
// and FAA, so that every step of a slab's life is one atomic step (one exception: the HELD
// owner writes it with the record before publishing it, when no other client should touch it,
// version + 1 again):
//   FREE -> HELD(owner) (the chunk's owner takes it; version + 1) -> LIVE (published with its
//   slot) -> EVICTING (being unpublished) -> FREE (reclaimed), or EVICTING -> LIVE (an
//   eviction rolled back; version + 1).
// count is the number of published children (FAA +1 by an inserter of a child, -1 by whoever
// unpublishes one); it lives in the low bits in every state so that FAA works in every state.
enum class slab_state : std::uint8_t { free = 0, held = 1, live = 2, evicting = 3 };

struct slab_word {
  slab_state state = slab_state::free;
  std::uint8_t version = 0;  // bumped when the slab is taken (FREE -> HELD), when its holder
                             // writes it with the record (round B), and when an eviction is
                             // rolled back (EVICTING -> LIVE: each episode's word differs)
  std::uint32_t owner = 0;   // HELD: the client holding it; EVICTING: its evictor (22 bits)
  std::uint32_t count = 0;   // children

  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return std::uint64_t{count} | (std::uint64_t{owner} & mask(owner_bits)) << 32 |
           std::uint64_t{version} << 54 | std::uint64_t{static_cast<std::uint8_t>(state)} << 62;
  }
  [[nodiscard]] static constexpr slab_word decode(std::uint64_t w) noexcept {
    return {static_cast<slab_state>(w >> 62), static_cast<std::uint8_t>(w >> 54),
            static_cast<std::uint32_t>((w >> 32) & mask(owner_bits)),
            static_cast<std::uint32_t>(w)};
  }
  friend constexpr bool operator==(const slab_word&, const slab_word&) = default;
};
inline constexpr std::uint64_t count_one = 1;                        // FAA addend of +1 child
inline constexpr std::uint64_t count_minus_one = ~std::uint64_t{0};  // FAA addend of -1 child

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

// The identity word of a client entry: which transport (kvc::transport_identity, 40 bits) the
// owner in `incarnation` reaches this node through. One 8-byte word, so a reader never sees an
// identity paired with another incarnation's number; a memory node fences only an identity
// written for the incarnation that was declared dead.
struct identity_word {
  static constexpr unsigned identity_bits = 40;
  static constexpr std::uint64_t set_bit = std::uint64_t{1} << 63;
  std::uint32_t incarnation = 0;  // 22 bits
  std::uint64_t identity = 0;     // 40 bits; 0 = none

  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return set_bit | (std::uint64_t{incarnation} & mask(owner_bits)) << identity_bits |
           (identity & mask(identity_bits));
  }
  [[nodiscard]] static constexpr identity_word decode(std::uint64_t w) noexcept {
    if ((w & set_bit) == 0) return {};
    return {static_cast<std::uint32_t>((w >> identity_bits) & mask(owner_bits)),
            w & mask(identity_bits)};
  }
  friend constexpr bool operator==(const identity_word&, const identity_word&) = default;
};

// The fence word of a client entry: written by the memory node (a plain store by its CPU, the
// only writer) once it has cut every connection of the entry's owner in `incarnation` and will
// refuse new ones; clients READ it. Zero: never fenced.
struct fence_word {
  static constexpr std::uint64_t fenced_bit = std::uint64_t{1} << 63;
  [[nodiscard]] static constexpr std::uint64_t encode(std::uint32_t incarnation) noexcept {
    return fenced_bit | (incarnation & mask(owner_bits));
  }
  // Whether `w` says the owner in `incarnation` is fenced.
  [[nodiscard]] static constexpr bool names(std::uint64_t w, std::uint32_t incarnation) noexcept {
    return w == encode(incarnation);
  }
};

enum class chunk_state : std::uint8_t { free = 0, owned = 1 };

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
  std::uint64_t word = 0;      // chunk_word
  std::uint64_t reserved = 0;  // zero
};
static_assert(sizeof(chunk_entry) == chunk_entry_bytes);

// A hazard word: the slab indexes [first, first + count) that its client may be reading.
struct hazard_range {
  std::uint64_t first = 0;  // 40 bits
  std::uint64_t count = 0;  // 24 bits; 0 = the word protects nothing

  static constexpr std::uint64_t max_count = (std::uint64_t{1} << 24) - 1;
  [[nodiscard]] constexpr std::uint64_t encode() const noexcept {
    return (first & mask(ptr_bits)) | (count & max_count) << ptr_bits;
  }
  [[nodiscard]] static constexpr hazard_range decode(std::uint64_t w) noexcept {
    return {w & mask(ptr_bits), w >> ptr_bits};
  }
  [[nodiscard]] constexpr bool covers(std::uint64_t slab) const noexcept {
    return slab >= first && slab - first < count;
  }
};

// --- overflow words --------------------------------------------------------------------------

// The bit of a group's overflow word that says blocks at `offset` (0..15) of the segments whose
// first group it is may sit in their second buckets (offset 0: the segment heads).
[[nodiscard]] constexpr std::uint64_t overflow_bit(unsigned offset) noexcept {
  return offset >= segment_blocks ? 0 : std::uint64_t{1} << offset;
}
inline constexpr std::uint64_t overflow_all = mask(segment_blocks);

// --- geometry --------------------------------------------------------------------------------

// What a node's region holds; stored in the region header's layout words by whoever formats it.
struct geometry {
  std::uint64_t clients = 0;      // C
  std::uint64_t groups = 0;       // G, a power of two
  std::uint64_t chunks = 0;       // K (slab indexes: 64 K)
  std::uint64_t block_bytes = 0;  // bytes of one KV data slot, a multiple of 64

  [[nodiscard]] std::uint64_t slabs() const noexcept { return chunks * chunk_slabs; }
  [[nodiscard]] std::uint64_t control_offset(std::uint64_t data_offset) const noexcept {
    return align64(data_offset);
  }
  [[nodiscard]] std::uint64_t clients_offset(std::uint64_t data_offset) const noexcept {
    return control_offset(data_offset) + control_bytes;
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
  // Group g's first bucket (its header, with the overflow word, is the 64 bytes before).
  [[nodiscard]] std::uint64_t group_offset(std::uint64_t data_offset,
                                           std::uint64_t g) const noexcept {
    return groups_offset(data_offset) + g * group_stride + group_header_bytes;
  }
  [[nodiscard]] std::uint64_t slots() const noexcept { return groups * slots_per_group; }
  // Slot i of the groups section (group i / 64, slot i % 64 of its buckets).
  [[nodiscard]] std::uint64_t slot_offset(std::uint64_t data_offset,
                                          std::uint64_t i) const noexcept {
    return group_offset(data_offset, i / slots_per_group) + (i % slots_per_group) * slot_bytes;
  }
  [[nodiscard]] std::uint64_t records_offset(std::uint64_t data_offset) const noexcept {
    return groups_offset(data_offset) + groups * group_stride;
  }
  [[nodiscard]] std::uint64_t data_offset_of(std::uint64_t data_offset) const noexcept {
    return records_offset(data_offset) + slabs() * record_bytes;
  }
  [[nodiscard]] std::uint64_t end(std::uint64_t data_offset) const noexcept {
    return data_offset_of(data_offset) + slabs() * block_bytes;
  }

  // The largest geometry that fits `region_bytes` for blocks of `block_bytes` with `clients`
  // client entries, one group (16 buckets, 64 slots) per `slabs_per_group` slab indexes: 8
  // slots per slab by default, so that the fullest buckets (a segment's first, which every
  // chain's head uses) rarely fill; 136 bytes per slab (a group and its header: 1,088 bytes
  // per 8 slabs), under 1% of a KV block of 16 KiB.
  [[nodiscard]] static result<geometry> fit(std::uint64_t region_bytes, std::uint64_t data_offset,
                                            std::uint64_t block_bytes, std::uint64_t clients,
                                            std::uint64_t slabs_per_group = 8) {
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
    const std::uint64_t fixed =
        align64(data_offset) + control_bytes + clients * client_bytes + 64;  // + padding
    const std::uint64_t per_chunk = chunk_entry_bytes + chunk_slabs * (record_bytes + block_bytes) +
                                    chunk_slabs * group_stride / slabs_per_group;
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

// --- the region header's layout words ----------------------------------------------------------

// layout[0..5] of a region that holds an index: magic, format, then the geometry; layout[6]:
// options (option_fences: the memory node fences clients declared dead, see fence_word).
inline constexpr std::uint64_t layout_magic = 0x3158'444E'4943'564Bu;  // "KVCINDX1" little-endian
inline constexpr std::uint64_t option_fences = 1;
// 6: a record's slab word is its last word (5: word 5, before last access and checksum);
// 5: a group starts with a header whose overflow word says at which offsets blocks took their
//    second bucket (4: none; a lookup read every second bucket of its boundary segment);
// 4: client entries carry the owner's transport identity and the memory node's fence word;
// 3: a non-head block's second bucket, in its own group, is picked by its hash (2: at its offset);
// 2: a non-head block's second group is picked by its own hash (1: by its segment head's). A
// client refuses a region of another format rather than miss blocks the other placed.
inline constexpr std::uint64_t layout_format = 6;

// Formats a fresh region for the index: writes the geometry into the header's layout words. The
// region's memory must be zero (as a new shm segment or mapping is): all-zero words are the
// initial state of every structure (slots EMPTY, clients and chunks free, cursor 0). Done by the
// memory node before it serves the region; read meanwhile (a shm client mapping a restarted node's
// segment by name), a layout is unformatted or fails read_layout's shape check (a word still 0).
inline void write_layout(region_header& h, const geometry& g) noexcept {
  h.layout[0] = layout_magic;
  h.layout[1] = layout_format;
  h.layout[2] = g.clients;
  h.layout[3] = g.groups;
  h.layout[4] = g.chunks;
  h.layout[5] = g.block_bytes;
}

// Says in the header that this memory node fences clients declared dead (it runs a fencer and
// cuts their connections); set before any client can reach the region.
inline void announce_fencing(region_header& h) noexcept { h.layout[6] |= option_fences; }
[[nodiscard]] inline bool fences(const region_header& h) noexcept {
  return (h.layout[6] & option_fences) != 0;
}

// The geometry of a region formatted by write_layout, checked against the region's size.
[[nodiscard]] inline result<geometry> read_layout(const region_header& h) {
  if (h.layout[0] != layout_magic) {
    return fail(errc::format_mismatch, "memory node " + std::to_string(h.node) +
                                           " holds no kvc index (unformatted region)");
  }
  if (h.layout[1] != layout_format) {
    return fail(errc::format_mismatch, "index format " + std::to_string(h.layout[1]) +
                                           " on memory node " + std::to_string(h.node) +
                                           ", this build reads format " +
                                           std::to_string(layout_format));
  }
  geometry g{h.layout[2], h.layout[3], h.layout[4], h.layout[5]};
  const bool shape_ok = g.clients > 0 && g.clients <= mask(owner_bits) && g.groups > 0 &&
                        (g.groups & (g.groups - 1)) == 0 && g.chunks > 0 &&
                        g.slabs() <= mask(ptr_bits) && g.block_bytes > 0 &&
                        g.block_bytes % 64 == 0 && g.groups <= (std::uint64_t{1} << 40) &&
                        g.block_bytes <= (std::uint64_t{1} << 40) && g.chunks <= mask(40) &&
                        g.clients <= (std::uint64_t{1} << 22);
  if (!shape_ok || g.end(h.data_offset) > h.region_bytes ||
      g.end(h.data_offset) < g.clients_offset(h.data_offset)) {
    return fail(errc::format_mismatch, "the index geometry in memory node " +
                                           std::to_string(h.node) +
                                           "'s header does not fit its region");
  }
  return g;
}

}  // namespace kvc::inline v0::index_layout
