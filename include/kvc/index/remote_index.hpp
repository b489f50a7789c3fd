// kvc/index/remote_index.hpp — the one-sided prefix index: a map from block hashes to published
// records in the memory nodes' DRAM, read and changed by every client with READ, WRITE, CAS and
// FAA only (the Transport concept); the memory nodes serve no index operation after bootstrap
// (a verbs node's CPU only cuts off clients declared dead: kvc/verbs/fencing.hpp).
//
// What a client does (docs/design/remote_index.md has the protocol and its proof sketch):
//   lookup(chain, hint)    longest cached prefix of a chain of block hashes. Round 1 reads the
//                          first bucket of every segment head with its group's overflow word
//                          (72 B per 16 blocks) and the buckets of the segment the hint names
//                          (without a hint, a chain of one segment's own); round 2, if the hint
//                          was wrong or missing, those of the last present head's
//                          segment: its first group (1 KiB) and the own second bucket (64 B) of
//                          each block at an offset the overflow word names.
//   insert(chain, from, blocks)   publishes chain[from..) under chain[from - 1]: round A reads the
//                          target buckets and overflow words, round B writes data and record,
//                          reserves a slot (CAS), names in the overflow word the offsets of
//                          blocks taking a second bucket (CAS) and counts the child in the
//                          parent (FAA under a hazard), round C publishes (CAS) and re-reads the
//                          buckets to find duplicates.
//   insert(chain, match, blocks)  the same after a lookup: the match's last block, which the
//                          lookup located, is the parent, and round A does not read it again.
//   evict(node, n)         samples groups, picks least recently used leaves (no children), and
//                          unpublishes them (CAS LIVE -> EVICTING, CAS VALID -> TOMBSTONE, FAA -1
//                          on the parent); their slabs are reclaimed after a grace period once no
//                          live client's hazard covers them.
//   read_blocks(...)       reads blocks' records and data under hazards, re-checking the slots in
//                          the same batch, so a block evicted meanwhile is detected, never misread.
//   maintain()             heartbeats (FAA), declares clients dead whose heartbeat stood still
//                          for a lease, recovers their chunks, slabs and reservations (after
//                          recovery_delay, or at once when their memory node fenced them),
//                          reclaims.
//
// Consistency a reader gets: every block a lookup returns was published (VALID, word versions
// agreeing) at some moment during the lookup; blocks of segments before the last present head
// are inferred from prefix closure (a block is published only under a published parent and
// unpublished only without published children). A racing insert may be missed (a shorter
// answer); a racing evict can make a later read_blocks() cut the prefix short, never return
// another block's bytes. Blocks are looked for in both their buckets, the second only at
// offsets their first group's overflow word named before the block was published.
//
// Concurrency: one remote_index is one client of the memory nodes (one entry in each node's
// client table) and is used by one thread at a time; threads and processes each open their
// own. Any number of clients run concurrently; no lock is held across a round trip.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/detail/xxhash.hpp"
#include "kvc/error.hpp"
#include "kvc/hash/block_hash.hpp"
#include "kvc/index/layout.hpp"
#include "kvc/transport/region.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

struct remote_index_config {
  std::vector<node_id> nodes;  // memory nodes holding the index (formatted by format_index)
  std::chrono::milliseconds lease{2000};       // a client silent this long is declared dead
  std::chrono::milliseconds heartbeat{100};    // how often maintain() heartbeats (< lease / 4)
  std::chrono::milliseconds reclaim_grace{0};  // tombstone to reclaim; 0 = lease / 4
  // From declaring a client dead to recovering what it held; 0 = one more lease. A client
  // checks its lease before every round, so one declared dead while only slow stops before
  // this unless it stalled inside one batch for longer. A memory node that fences (verbs
  // kvc-memnode) cuts such a client off, and its entry is recovered at once instead
  // (docs/design/remote_index.md, "Fencing").
  std::chrono::milliseconds recovery_delay{0};
  // How long open() waits for an entry when a node's client table is full. Meanwhile it watches
  // the entries from outside as maintain() does: those whose heartbeat stands still for a lease
  // are declared dead and recovered after recovery_delay, so clients that all crashed with the
  // table full cannot lock out everyone after them (nobody registered is left to recover them).
  // Negative: lease + recovery_delay + half a lease (what recovering an abandoned entry takes);
  // 0: fail at once. A client registering anew in a call (declared dead) never sleeps: a call
  // takes one such look, at most one per heartbeat period, until an entry comes free (the node
  // is out of reach for it meanwhile; its calls on other nodes go on).
  std::chrono::milliseconds full_table_wait{-1};
  // Operations per node in one batch; 0 = what the transport allows (kvc::max_ops_per_node:
  // verbs, its queue depth; shm, no real limit, so a chain's inserts take one pass).
  std::size_t max_ops_per_node = 0;
  std::size_t scratch_bytes = std::size_t{4} << 20;  // registered memory for the protocol
  unsigned sample_chunks = 4;  // chunks of 64 records read per eviction sample (4 KiB each)
  unsigned max_retries = 8;    // lost CAS races before giving up a block
  std::chrono::microseconds max_backoff{200};  // bounded, jittered
  std::chrono::milliseconds pending_wait{20};  // how long to wait on another's reservation
  std::uint64_t seed = 0;                      // 0: from std::random_device
  // Free slabs maintain() keeps this client holding on each node (claiming fresh chunks of 64
  // when it holds fewer, until the node's chunks have all been handed out once), so that inserts
  // rarely stop to claim one (three round trips and 64 atomics) while upkeep runs between them.
  // 0: inserts claim what they need, maintain() none.
  std::size_t slab_reserve = index_layout::chunk_slabs;
};

// Formats a fresh (zeroed) region for the index: the geometry that fits, in the header's layout
// words. Called by the memory node before it serves the region (a shm client that maps a
// restarted node's segment by name meanwhile finds it unformatted, and tries again).
[[nodiscard]] inline result<index_layout::geometry> format_index(
    region_header& header, std::uint64_t block_bytes, std::uint64_t clients = 64,
    std::uint64_t slabs_per_group = 8) {
  auto g = index_layout::geometry::fit(header.region_bytes, header.data_offset, block_bytes,
                                       clients, slabs_per_group);
  if (!g) return g;
  index_layout::write_layout(header, *g);
  return g;
}

// Where one block of a chain is published: its memory node, slab index (record and data slot)
// and slot; slab == no_slab when the lookup inferred the block without reading its slot.
struct block_ref {
  static constexpr std::uint64_t no_slab = ~std::uint64_t{0};
  node_id node = 0;
  std::uint64_t slab = no_slab;
  remote_ptr slot;          // word0 of the slot
  std::uint64_t word1 = 0;  // the slot's word1 as read (VALID)
  [[nodiscard]] bool known() const noexcept { return slab != no_slab; }
};

struct index_match {
  std::size_t length = 0;         // blocks of the chain found, a prefix
  std::vector<block_ref> blocks;  // length entries
  unsigned round_trips = 0;
  std::uint64_t bytes = 0;  // read by its operations
  // When the lookup began: how old what it read may be (insert(chain, m, blocks) uses its last
  // block as the parent without reading it again while that is recent).
  std::chrono::steady_clock::time_point read_at{};
};

// A block to publish: its KV bytes (written to the slab's data slot in the same batch as the
// record; size 0 = the caller wrote them already or stores none) and what the record says.
struct block_info {
  local_buffer data;
  std::uint32_t length = 0;  // bytes of KV data
  std::uint8_t tier = 0;
  std::uint8_t flags = 0;
  std::uint16_t tokens = 0;
};

// Blocks pinned by remote_index::pin(): `pinned` leading refs were published when pinned.
struct index_pin {
  std::size_t id = static_cast<std::size_t>(-1);
  std::size_t pinned = 0;
};

enum class insert_stop : std::uint8_t {
  none = 0,         // every block is present
  parent_missing,   // chain[from - 1] is not published
  parent_evicting,  // the parent was being evicted while its child was published
  no_room,          // both buckets of a block are full
  pending,          // another client kept a block reserved longer than pending_wait
  contention,       // max_retries lost races on one block
  no_slabs,         // the node has no free slab left (evict first)
  // The block's memory node is out of reach for this client now: its entry there is in doubt
  // and registering anew failed (index_stats::out_of_reach_cuts; tried again later).
  unreachable,
};

struct index_insert_result {
  std::size_t published = 0;      // blocks this call published
  std::size_t present = 0;        // blocks found published by others (or by an earlier call)
  std::size_t length = 0;         // chain[0, length) is present now (published or found)
  std::vector<block_ref> blocks;  // refs of chain[from, length)
  // The blocks this call published, as runs [first, end) of chain indexes in chain order (the
  // rest of [from, length) was found published).
  std::vector<std::pair<std::size_t, std::size_t>> published_runs;
  insert_stop stop = insert_stop::none;
  // Every round trip the call waited for: its rounds, and the chunk claims (3 for the chunks a
  // pass needs), chunk releases and heartbeats it needed on the way.
  unsigned round_trips = 0;
};

struct index_stats {
  std::uint64_t lookups = 0, lookup_round_trips = 0, second_group_reads = 0;
  std::uint64_t inserts = 0, published = 0, lost_races = 0;
  std::uint64_t evicted = 0, reclaimed = 0, declared_dead = 0, recovered_chunks = 0;
  std::uint64_t recovered_slabs = 0, chunks_taken = 0, reregistrations = 0, rolled_back = 0;
  std::uint64_t recounted = 0;  // child counts repaired by recover_everything()
  // Entries this client settled and freed itself after a call threw midway (else: others
  // declare them dead and recover them, two leases on).
  std::uint64_t settled_own = 0;
  // Evictions this client undid itself: stalled for a quarter lease between its two steps.
  std::uint64_t late_evictions = 0;
  std::uint64_t fenced_recoveries = 0;  // dead entries taken for recovery on their fence word
  // Overflow words: offsets named by this client's CAS, and CASes that lost to another's.
  std::uint64_t overflow_named = 0, overflow_races = 0;
  // Blocks a pass did not publish because their overflow word, read again in round B instead of
  // their second bucket, named their offset since round A (the next pass reads that bucket).
  std::uint64_t overflow_named_late = 0;
  // Inserts whose first round A came from their lookup's reads (one round trip fewer).
  std::uint64_t inserts_after_lookup = 0;
  // Tries to register anew on a node (after a lapse or a failed round) that failed: the node
  // stays out of reach for this client until a later try succeeds (docs/design/remote_index.md,
  // "A memory node out of reach").
  std::uint64_t registration_failures = 0;
  // Lookups and inserts cut short at a block whose node was out of reach (the lookup answered
  // the prefix before it; the insert stopped with insert_stop::unreachable).
  std::uint64_t out_of_reach_cuts = 0;
  // A parent's -1 (its child reclaimed or recovered) not sent because the parent's node was out
  // of reach: that parent keeps a child too many until recover_everything() counts again.
  std::uint64_t parent_releases_skipped = 0;
  // Nodes found holding another region than the one this client last read (a memory node that
  // restarted): its header is read again before registering anew there, and what this client
  // knew of the old region is forgotten.
  std::uint64_t regions_replaced = 0;
};

namespace detail::index {

inline std::uint64_t mix(std::uint64_t x) noexcept {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9u;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBu;
  x ^= x >> 31;
  return x;
}
inline std::uint64_t lo(const hash64& h) noexcept { return h.value; }
inline std::uint64_t hi(const hash64&) noexcept { return 0; }
inline std::uint64_t lo(const hash128& h) noexcept { return h.low; }
inline std::uint64_t hi(const hash128& h) noexcept { return h.high; }

inline std::uint64_t load64(const std::byte* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void store64(std::byte* p, std::uint64_t v) noexcept { std::memcpy(p, &v, 8); }

inline std::uint64_t now_ms() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

inline std::uint64_t record_checksum(const index_layout::record& r) noexcept {
  const std::uint64_t words[5] = {r.hash_lo, r.hash_hi, r.parent, r.slot_at, r.shape};
  return XXH3_64bits(words, sizeof words);
}

}  // namespace detail::index

template <Transport T, BlockHash H = hash64>
class remote_index {
 public:
  using hash_type = H;
  using transport_type = T;
  static constexpr std::size_t segment = index_layout::segment_blocks;      // S
  static constexpr std::size_t super_segment = 16 * segment;                // placement unit
  static constexpr std::size_t pin_words = index_layout::hazard_words - 1;  // word 0: inserts

  // Registers as a client on every node of `cfg` (errc::format_mismatch for a node that holds no
  // index, errc::invalid_config for a bad config, errc::unreachable / io errors from the
  // transport, errc::out_of_range when a node's client table is full). A node that cannot be
  // reached (errc::unreachable or errc::timed_out: down, not started yet) does not stop the
  // others: it starts out of reach, as a node lost later would be (its blocks miss, maintain()
  // reports it, calls try it again with a backoff), and joins once reached; open() fails only
  // when no node can be reached. The transport must outlive the index (its destructor leaves
  // through it).
  [[nodiscard]] static result<std::unique_ptr<remote_index>> open(T& transport,
                                                                  remote_index_config cfg) {
    if (cfg.nodes.empty()) return fail(errc::invalid_config, "remote_index needs a memory node");
    if (cfg.lease.count() <= 0 || cfg.heartbeat.count() <= 0 || cfg.heartbeat * 4 > cfg.lease) {
      return fail(errc::invalid_config,
                  "remote_index: heartbeat must be positive and at most a "
                  "quarter of the lease");
    }
    const std::size_t transport_limit = kvc::max_ops_per_node(transport);
    if (cfg.max_ops_per_node == 0) cfg.max_ops_per_node = transport_limit;
    if (cfg.max_ops_per_node < 72) {
      return fail(errc::invalid_config, "remote_index: max_ops_per_node must be at least 72");
    }
    if (cfg.max_ops_per_node > transport_limit) {
      return fail(errc::invalid_config,
                  "remote_index: max_ops_per_node " + std::to_string(cfg.max_ops_per_node) +
                      " is more than the transport takes in one batch per node (" +
                      std::to_string(transport_limit) + ")");
    }
    if (cfg.scratch_bytes < (std::size_t{1} << 16)) {
      return fail(errc::invalid_config, "remote_index: scratch_bytes must be at least 64 KiB");
    }
    if (cfg.reclaim_grace.count() == 0) cfg.reclaim_grace = cfg.lease / 4;
    if (cfg.recovery_delay.count() == 0) cfg.recovery_delay = cfg.lease;
    if (cfg.full_table_wait.count() < 0) {
      cfg.full_table_wait = cfg.lease + cfg.recovery_delay + cfg.lease / 2;
    }
    std::vector<node_id> sorted = cfg.nodes;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return fail(errc::invalid_config, "remote_index: a memory node is listed twice");
    }
    std::unique_ptr<remote_index> ix(new remote_index(transport, std::move(cfg)));
    if (auto ok = ix->attach(); !ok) return std::move(ok).take_failure();
    return ix;
  }

  remote_index(const remote_index&) = delete;
  remote_index& operator=(const remote_index&) = delete;
  // Leaves cleanly: unused slabs and chunks back, hazards cleared, the client entry freed (out of
  // memory meanwhile: left as a crash would, to others' recovery).
  ~remote_index() {
    detail::instead_if_throws([&] { (void)close(); }, [&] { abandon(); });
  }

  [[nodiscard]] const remote_index_config& config() const noexcept { return cfg_; }
  [[nodiscard]] const index_stats& stats() const noexcept { return stats_; }
  // Node `node`'s layout; all zeros while this client has not reached the node yet (reached():
  // out of reach since open()).
  [[nodiscard]] const index_layout::geometry& geometry(node_id node) const {
    return node_of(node).geo;
  }
  [[nodiscard]] bool reached(node_id node) const { return node_of(node).attached; }
  // The size of a block's data slot, the same on every node (a node formatted otherwise is
  // refused: at open(), or kept out of reach when reached later).
  [[nodiscard]] std::uint64_t block_bytes() const noexcept { return block_bytes_; }
  // This client's id in node `node`'s client table.
  [[nodiscard]] std::uint32_t client_id(node_id node) const { return node_of(node).client; }
  // Whether this client must settle or register again on some node before its calls there
  // succeed (declared dead, or a round failed or a call threw midway), or was closed: a pool
  // prefers its other clients meanwhile.
  [[nodiscard]] bool in_doubt() const noexcept {
    return closed_ || std::any_of(nodes_.begin(), nodes_.end(),
                                  [](const node_state& ns) { return ns.broken || !ns.registered; });
  }

  // The memory node of chain[k] (segments are placed by their super-segment's head).
  [[nodiscard]] node_id node_for(std::span<const H> chain, std::size_t k) const {
    return nodes_[place_node(chain[k - k % super_segment])].id;
  }

  // Where chain[k] may be published: its two candidate buckets (64 B each: its segment's first
  // group and its own second group, at its offset in the segment), and the tag and check its
  // slot carries (index_layout::holds). For tools and baselines that probe the index their way;
  // meaningless for a block whose node this client has not reached (reached()).
  struct block_address {
    std::array<remote_ptr, 2> bucket;
    std::uint64_t tag = 0;
    std::uint16_t check = 0;
  };
  [[nodiscard]] block_address address_of(std::span<const H> chain, std::size_t k) const {
    segment_place own;  // not the client's memo: a const call changes nothing
    const place_t p = place_in(chain, k, own);
    return {{bucket_ptr(p, 0, p.offset), bucket_ptr(p, 1, p.bucket[1])}, p.tag, p.check};
  }

  // ---- lookup ----------------------------------------------------------------------------------

  // The longest published prefix of `chain` (`hint`: its expected length, 0 for none). Where a
  // block's memory node is out of reach for this client, the prefix ends before it (counted in
  // stats().out_of_reach_cuts); where the first block's is, the call fails with why.
  [[nodiscard]] result<index_match> lookup(std::span<const H> chain, std::size_t hint = 0) {
    index_match m;
    if (auto ok = before_op(); !ok) return std::move(ok).take_failure();
    m.read_at = std::chrono::steady_clock::now();
    // Blocks on a node out of reach are not looked at: the answer is the prefix before them.
    if (const std::size_t reach = reachable_end(chain, 0); reach < chain.size()) {
      if (reach == 0) return out_of_reach(home_of(chain, 0));
      ++stats_.out_of_reach_cuts;
      chain = chain.first(reach);
    }
    const std::uint64_t bytes_before = bytes_posted_;
    const std::size_t n = chain.size();
    if (n == 0) return m;
    const std::size_t nseg = (n + segment - 1) / segment;
    heads_.assign(nseg, head_state{});
    // Reads of the segments believed to hold the boundary, by segment index.
    std::vector<segment_reads> groups;
    auto group_of = [&](std::size_t j) -> segment_reads* {
      for (auto& g : groups) {
        if (g.j == j) return &g;
      }
      return nullptr;
    };
    // Whether head j may sit in its second bucket: not found in its first bucket, read with the
    // overflow word, unless that word names no head overflow (before it is read: the word as
    // last seen says so).
    auto may_be_second = [&](std::size_t j) {
      const head_state& hs = heads_[j];
      if (hs.read_g1) return hs.state == head_state::unknown;
      return (expected_overflow(place(chain, j * segment)) & index_layout::overflow_bit(0)) != 0;
    };
    bool first = true;  // round 1
    // Posts what deciding segment j* = j needs: its blocks' buckets (read_segment: the second
    // buckets at the offsets its overflow word names, as read with its head; in round 1, before
    // that read, as last seen, checked against the word once read; else every offset), and the
    // second head bucket of segment j + 1 (its first was read with every head) where head j + 1 may
    // be there: not found in its first bucket and its overflow word names offset 0 (before that
    // word is read: as last seen), unless already read.
    auto want_boundary = [&](auto& b, std::size_t j) {
      if (group_of(j) == nullptr) {
        const place_t ph = place(chain, j * segment);
        const std::uint64_t want = heads_[j].read_g1 ? heads_[j].overflow
                                   : first           ? expected_overflow(ph)
                                                     : index_layout::overflow_all;
        groups.push_back(
            {j, read_segment(b, chain, j * segment + 1, std::min(n, (j + 1) * segment), want),
             want});
      }
      if (j + 1 < nseg && !heads_[j + 1].read_g2 && !heads_[j + 1].posted_g2 &&
          may_be_second(j + 1)) {
        const place_t p = place(chain, (j + 1) * segment);
        heads_[j + 1].buf2 = take(index_layout::bucket_bytes);
        b.read(bucket_ptr(p, 1, 0), heads_[j + 1].buf2);
        count_op(p.node);
        heads_[j + 1].posted_g2 = true;
      }
    };
    // Without a hint, a chain of one segment has its boundary there whenever its head is
    // present: round 1 reads that segment as a hint would (one round trip instead of two; on a
    // miss, its first group's bytes for nothing, in the same round trip), once this client has
    // seen the group's overflow word (before, it would read every second bucket of the segment
    // too: 15 more READs, where a miss needs one).
    const bool speculate = hint == 0 && nseg == 1 && n > 1 && overflow_known(place(chain, 0));
    const std::size_t hinted = hint > 0 ? (std::min(hint, n) - 1) / segment : speculate ? 0 : npos;
    std::size_t present_upto = 0;  // heads [0, present_upto) present
    for (;;) {
      reset_round();
      pooled_batch b_held(*this);
      auto& b = *b_held;
      bool posted = false;
      if (first && hinted != npos) {
        want_boundary(b, hinted);
        posted = true;
      }
      // A cold miss decides in one round trip: head 0's second bucket too, where it may be.
      if (first && hint == 0 && may_be_second(0)) {
        const place_t p = place(chain, 0);
        heads_[0].buf2 = take(index_layout::bucket_bytes);
        b.read(bucket_ptr(p, 1, 0), heads_[0].buf2);
        count_op(p.node);
        heads_[0].posted_g2 = true;
      }
      // First head buckets of every head not read yet (all of them in round 1).
      for (std::size_t j = present_upto; j < nseg; ++j) {
        head_state& hs = heads_[j];
        if (hs.read_g1 || hs.posted_g1) continue;
        const place_t p = place(chain, j * segment);
        if (!room(p.node, 3)) break;
        const local_buffer line = take(index_layout::head_line_bytes);  // overflow word, bucket 0
        if (overflow_) break;  // scratch memory full: refused below
        b.read(overflow_ptr(p), line);
        hs.buf1 = line.sub(8, index_layout::bucket_bytes);
        count_op(p.node);
        hs.posted_g1 = true;
        posted = true;
      }
      // Heads not found in their first bucket: their second buckets decide. The boundary is the
      // segment before the first of them that is in neither bucket, or the last segment: read
      // the groups of each candidate in the same round (1 KiB each, and the second buckets at
      // named offsets; heads overflow rarely).
      if (!first) {
        std::size_t j = present_upto;
        while (j < nseg && heads_[j].state == head_state::present) ++j;
        if (j < nseg && heads_[j].read_g1 && !heads_[j].read_g2 && !heads_[j].posted_g2) {
          unsigned guesses = 0;
          bool open_end = true;  // no head known absent: the chain may be present to its end
          for (std::size_t q = j; q < nseg; ++q) {
            head_state& hs = heads_[q];
            if (hs.state == head_state::absent || !hs.read_g1) {
              // Past an undecided head, the segment before the first absent one is a candidate.
              if (hs.state == head_state::absent && q > j && guesses < 4 &&
                  room(place(chain, (q - 1) * segment).node, 1 + segment)) {
                want_boundary(b, q - 1);
                ++guesses;
              }
              open_end = false;
              break;
            }
            if (hs.state != head_state::unknown || hs.read_g2 || hs.posted_g2) continue;
            const place_t p = place(chain, q * segment);
            // A boundary guess posts segment q - 1's reads (read_segment: up to 1 + segment, on
            // its node, which differs from q's at a super-segment boundary) and head q's second
            // bucket; otherwise only that bucket.
            const bool guess = q > 0 && guesses < 4;
            const bool fits =
                guess ? room(p.node, 1) &&
                            room(place(chain, (q - 1) * segment).node,
                                 1 + segment + (place(chain, (q - 1) * segment).node == p.node))
                      : room(p.node, 1);
            if (!fits) {
              open_end = false;
              break;
            }
            if (guess) {
              want_boundary(b, q - 1);  // with the second bucket of head q
              ++guesses;
            } else {
              hs.buf2 = take(index_layout::bucket_bytes);
              b.read(bucket_ptr(p, 1, 0), hs.buf2);
              count_op(p.node);
              hs.posted_g2 = true;
            }
            // A head whose first bucket has room is almost surely absent (heads go to their
            // first bucket while it has room): it is the boundary; guess no further.
            if (has_empty(hs.buf1.data)) {
              open_end = false;
              break;
            }
          }
          if (open_end && room(place(chain, (nseg - 1) * segment).node, 1 + segment)) {
            want_boundary(b, nseg - 1);
          }
          posted = true;
        }
      }
      first = false;
      if (overflow_) return scratch_full();
      if (!posted) break;
      if (auto ok = run(b, m.round_trips, "lookup"); !ok) return std::move(ok).take_failure();
      for (std::size_t j = 0; j < nseg; ++j) {
        head_state& hs = heads_[j];
        const bool line_read = hs.posted_g1;
        hs.read_g1 = hs.read_g1 || hs.posted_g1;
        hs.read_g2 = hs.read_g2 || hs.posted_g2;
        hs.posted_g1 = hs.posted_g2 = false;
        if (!line_read && hs.state != head_state::unknown) continue;
        const place_t p = place(chain, j * segment);
        if (line_read) {
          hs.overflow = detail::index::load64(hs.buf1.data - 8) & index_layout::overflow_all;
          saw_overflow(p, hs.overflow);
        }
        if (hs.state != head_state::unknown) continue;
        if (hs.read_g1) {
          if (const int s = find(hs.buf1.data, p); s >= 0) {
            hs.set_present(hs.buf1.data, s, slot_ptr(p, 0, 0, static_cast<unsigned>(s)));
            continue;
          }
          // No head of this group ever took its second bucket: absent.
          if ((hs.overflow & index_layout::overflow_bit(0)) == 0) {
            hs.state = head_state::absent;
            continue;
          }
        }
        if (hs.read_g2) {
          if (const int s = find(hs.buf2.data, p); s >= 0) {
            ++stats_.second_group_reads;
            hs.set_present(hs.buf2.data, s, slot_ptr(p, 1, 0, static_cast<unsigned>(s)));
          } else if (hs.read_g1) {
            hs.state = head_state::absent;
          }
        }
      }
      while (present_upto < nseg && heads_[present_upto].state == head_state::present) {
        ++present_upto;
      }
      if (present_upto == nseg || heads_[present_upto].state == head_state::absent) break;
    }
    ++stats_.lookups;
    if (present_upto == 0) {
      stats_.lookup_round_trips += m.round_trips;
      m.bytes = bytes_posted_ - bytes_before;
      return m;
    }
    // Segment j*: the last present head of the first unbroken run.
    const std::size_t js = present_upto - 1;
    const place_t ph = place(chain, js * segment);
    const std::size_t seg_end = std::min(n, (js + 1) * segment);
    if (group_of(js) == nullptr && seg_end > js * segment + 1) {
      reset_round();
      pooled_batch b_held(*this);
      auto& b = *b_held;
      want_boundary(b, js);
      if (overflow_) return scratch_full();
      if (auto ok = run(b, m.round_trips, "lookup"); !ok) return std::move(ok).take_failure();
    }
    if (segment_reads* g = group_of(js)) {
      // Read before its overflow word was (a hint's guess from the word last seen): the second
      // buckets of offsets whose bit was set since are read now.
      const std::uint64_t more =
          heads_[js].overflow & ~g->second_read & offsets_between(js * segment + 1, seg_end);
      if (more != 0) {
        reset_round();
        pooled_batch b_held(*this);
        auto& b = *b_held;
        read_second_buckets(b, chain, js * segment + 1, seg_end, more, g->buckets[1]);
        if (auto ok = run(b, m.round_trips, "lookup"); !ok) return std::move(ok).take_failure();
        g->second_read |= more;
      }
    }
    m.blocks.reserve(seg_end);  // one allocation: the inferred blocks, then segment j*
    m.blocks.resize(js * segment);
    for (std::size_t k = 0; k < m.blocks.size(); ++k) {
      m.blocks[k].node = node_for(chain, k);
    }
    for (std::size_t j = 0; j < js; ++j)
      m.blocks[j * segment] = head_ref(j, place(chain, j * segment).node);
    m.blocks.push_back(head_ref(js, ph.node));
    if (const segment_reads* g = group_of(js)) {
      for (std::size_t k = js * segment + 1; k < seg_end; ++k) {
        const place_t p = place(chain, k);
        // A block not in its first bucket is in its second only if its first group's overflow
        // word named its offset before it was published; those second buckets were read.
        unsigned which = 0;
        int s = find(g->buckets[0].data + p.offset * index_layout::bucket_bytes, p);
        if (s < 0 && (g->second_read & index_layout::overflow_bit(p.offset)) != 0) {
          which = 1;
          s = find(g->buckets[1].data + p.offset * index_layout::bucket_bytes, p);
        }
        if (s < 0) break;
        if (which == 1) ++stats_.second_group_reads;
        const std::byte* bucket = g->buckets[which].data + p.offset * index_layout::bucket_bytes;
        m.blocks.push_back(block_ref{p.node, slot_ptr_field(bucket, s),
                                     slot_ptr(p, which, p.bucket[which], static_cast<unsigned>(s)),
                                     word1_of(bucket, s)});
      }
    }
    m.length = m.blocks.size();
    stats_.lookup_round_trips += m.round_trips;
    m.bytes = bytes_posted_ - bytes_before;
    boundary_.op = 0;
    if (const segment_reads* g = group_of(js);
        g != nullptr && heads_[js].read_g1 && m.length > js * segment && m.length < seg_end) {
      boundary_.op = ops_begun_;
      boundary_.read_at = m.read_at;
      std::copy(chain.begin() + static_cast<std::ptrdiff_t>(js * segment),
                chain.begin() + static_cast<std::ptrdiff_t>(seg_end), boundary_.keys.begin());
      boundary_.j = js;
      boundary_.end = seg_end;
      boundary_.overflow = heads_[js].overflow;
      boundary_.second_read = g->second_read;
      boundary_.buckets = g->buckets;
      boundary_.scratch_used = used_;
    }
    return m;
  }

  // Locates the blocks of `m` (a lookup of `chain`) that the lookup inferred from prefix closure
  // instead of reading (the inner blocks of the segments before the boundary's): round 1 reads
  // the first group of each such segment (1 KiB, up to 256 segments per node per round trip),
  // round 2 the own second bucket of each block not found there (where a block goes when that
  // bucket was the emptier and its first held two or more, or its offset was named). Returns how
  // many leading blocks of m are located now; a block not found (evicted since the lookup) ends
  // them, and read_blocks stops there too. So does the first block on a node out of reach for
  // this client (another client of a pool may have made the lookup); where that is the first
  // block, the call fails with why.
  [[nodiscard]] result<std::size_t> locate(std::span<const H> chain, index_match& m) {
    if (m.length > chain.size() || m.blocks.size() != m.length) {
      return fail(errc::invalid_argument, "locate: the match is not a lookup of this chain");
    }
    if (auto ok = before_op(); !ok) return std::move(ok).take_failure();
    const std::size_t reach = reachable_end(chain.first(m.length), 0);
    if (reach < m.length) {
      if (reach == 0) return out_of_reach(home_of(chain, 0));
      ++stats_.out_of_reach_cuts;
    }
    std::vector<std::size_t> todo;  // segments with blocks not located
    for (std::size_t j = 0; j * segment < reach; ++j) {
      const std::size_t end = std::min(reach, (j + 1) * segment);
      for (std::size_t k = j * segment; k < end; ++k) {
        if (!m.blocks[k].known()) {
          todo.push_back(j);
          break;
        }
      }
    }
    // Block k found in `bucket` (its bucket in group `which`), if it is there.
    auto take_from = [&](std::size_t k, const std::byte* bucket, unsigned which) {
      const place_t p = place(chain, k);
      if (const int s = find(bucket, p); s >= 0) {
        m.blocks[k] = block_ref{p.node, slot_ptr_field(bucket, s),
                                slot_ptr(p, which, p.bucket[which], static_cast<unsigned>(s)),
                                word1_of(bucket, s)};
      }
    };
    auto first_group = [&](std::size_t j) { return group_ptr(place(chain, j * segment), 0); };
    auto found_in_group = [&](std::size_t j, const local_buffer& g) {
      const std::size_t end = std::min(reach, (j + 1) * segment);
      for (std::size_t k = j * segment; k < end; ++k) {
        if (!m.blocks[k].known())
          take_from(k, g.data + (k % segment) * index_layout::bucket_bytes, 0);
      }
    };
    if (auto ok = read_each(todo, index_layout::group_bytes, first_group, found_in_group, m); !ok) {
      return std::move(ok).take_failure();
    }
    std::vector<std::size_t> missing;  // blocks not in their first bucket
    for (std::size_t k = 0; k < reach; ++k) {
      if (!m.blocks[k].known()) missing.push_back(k);
    }
    auto second_bucket = [&](std::size_t k) {
      const place_t p = place(chain, k);
      return bucket_ptr(p, 1, p.bucket[1]);
    };
    auto found_in_bucket = [&](std::size_t k, const local_buffer& b) { take_from(k, b.data, 1); };
    if (auto ok = read_each(missing, index_layout::bucket_bytes, second_bucket, found_in_bucket, m);
        !ok) {
      return std::move(ok).take_failure();
    }
    std::size_t located = 0;
    while (located < reach && m.blocks[located].known()) ++located;
    return located;
  }

  // READs `bytes` at where(item) for every item, in as few round trips as the per-node
  // operation limit and the scratch memory allow, and hands each item its buffer (got).
  template <class Where, class Got>
  result<void> read_each(const std::vector<std::size_t>& items, std::size_t bytes, Where&& where,
                         Got&& got, index_match& m) {
    for (std::size_t first = 0; first < items.size();) {
      scratch_mark mark(*this);
      reset_round();
      pooled_batch b_held(*this);
      auto& b = *b_held;
      std::vector<local_buffer> bufs;
      std::size_t i = first;
      for (; i < items.size(); ++i) {
        const remote_ptr at = where(items[i]);
        if (!room(at.node(), 1) || scratch_left() < bytes + 64) break;
        bufs.push_back(take(bytes));
        b.read(at, bufs.back());
        count_op(at.node());
      }
      if (i == first || overflow_) return scratch_full();
      if (auto ok = run(b, m.round_trips); !ok) return ok;
      for (std::size_t q = first; q < i; ++q) got(items[q], bufs[q - first]);
      first = i;
    }
    return {};
  }

  // Posts the READs that find blocks [first, end) of one segment (a lookup's boundary guesses):
  // the segment's first group whole (1 KiB: every block's first choice, at its offset), and
  // the own second bucket (64 B) of each block at an offset that `overflow` (the group's
  // overflow word) names. Returns the two buffers, laid out alike: the bucket of the block at
  // offset o is at o * bucket_bytes in each (the second buffer holds the blocks' own second
  // buckets side by side; offsets not read are left as they were).
  template <class Batch>
  std::array<local_buffer, 2> read_segment(Batch& b, std::span<const H> chain, std::size_t first,
                                           std::size_t end, std::uint64_t overflow) {
    const place_t head = place(chain, first - first % segment);
    std::array<local_buffer, 2> g{take(index_layout::group_bytes), take(index_layout::group_bytes)};
    b.read(group_ptr(head, 0), g[0]);
    count_op(head.node);
    read_second_buckets(b, chain, first, end, overflow, g[1]);
    return g;
  }
  // Posts READs of the own second buckets of blocks [first, end) of one segment at the offsets
  // `offsets` names, each into `into` at its offset (o * bucket_bytes).
  template <class Batch>
  void read_second_buckets(Batch& b, std::span<const H> chain, std::size_t first, std::size_t end,
                           std::uint64_t offsets, const local_buffer& into) {
    if (overflow_) return;
    for (std::size_t k = first; k < end; ++k) {
      const place_t p = place(chain, k);
      if ((offsets & index_layout::overflow_bit(p.offset)) == 0) continue;
      b.read(bucket_ptr(p, 1, p.bucket[1]),
             into.sub(p.offset * index_layout::bucket_bytes, index_layout::bucket_bytes));
      count_op(p.node);
    }
  }
  // The overflow bits of offsets [first, end) of one segment (first and end - 1 in it).
  static std::uint64_t offsets_between(std::size_t first, std::size_t end) {
    std::uint64_t bits = 0;
    for (std::size_t k = first; k < end; ++k) {
      bits |= index_layout::overflow_bit(static_cast<unsigned>(k % segment));
    }
    return bits;
  }

  // ---- insert ----------------------------------------------------------------------------------

  // Publishes chain[from, from + blocks.size()) under chain[from - 1] (which must be published;
  // from = 0 starts a chain). Blocks already published are used, not duplicated. Stops at the
  // first block it cannot publish and says why; what it published stays published.
  [[nodiscard]] result<index_insert_result> insert(std::span<const H> chain, std::size_t from,
                                                   std::span<const block_info> blocks) {
    return insert_under(chain, from, blocks, nullptr, {});
  }
  // The same after lookup `m` of `chain`: publishes chain[m.length, m.length + blocks.size())
  // and takes m's last block (located by the lookup) as the parent instead of reading its
  // buckets again (two READs fewer), while the match is younger than a quarter of the reclaim
  // grace; the insert checks that block's slot before counting a child in it, as always.
  [[nodiscard]] result<index_insert_result> insert(std::span<const H> chain, const index_match& m,
                                                   std::span<const block_info> blocks) {
    const bool located = m.length > 0 && m.length <= m.blocks.size() && m.length <= chain.size() &&
                         m.blocks[m.length - 1].known();
    return insert_under(chain, m.length, blocks, located ? &m.blocks[m.length - 1] : nullptr,
                        m.read_at);
  }

  // ---- reading blocks --------------------------------------------------------------------------

  // Reads the records (and, where `data` gives a buffer, the KV data) of `refs` under hazards:
  // each batch WRITEs the hazards, READs data and record, and READs the slot last, so a slot
  // still publishing the same block after the reads proves the bytes read were that block's (a
  // reclaimer frees a slab only after unpublishing it and finding no hazard on it). Returns how
  // many leading refs were read whole; a block evicted since its lookup cuts the prefix there.
  // Refs not located (slab unknown) end the prefix too. The hazards are released on return.
  [[nodiscard]] result<std::size_t> read_blocks(std::span<const block_ref> refs,
                                                std::span<const local_buffer> data,
                                                std::span<index_layout::record> records) {
    const doubt_if_thrown doubt(*this);
    if (!data.empty() && data.size() != refs.size()) {
      return fail(errc::invalid_argument, "read_blocks: one data buffer per block, or none");
    }
    if (!records.empty() && records.size() != refs.size()) {
      return fail(errc::invalid_argument, "read_blocks: one record per block, or none");
    }
    for (std::size_t i = 0; i < data.size(); ++i) {
      if (data[i].size > 0 && refs[i].known() && data[i].size > block_bytes_) {
        return fail(errc::invalid_argument, "read_blocks: a data buffer exceeds the data slot");
      }
    }
    if (auto ok = before_op(); !ok) return std::move(ok).take_failure();
    auto usable = usable_refs(refs);
    if (!usable) return std::move(usable).take_failure();
    if (*usable == 0) return std::size_t{0};
    auto hazards = claim_hazards(refs.first(*usable));
    if (!hazards) return std::move(hazards).take_failure();
    unsigned rts = 0;
    std::size_t good = 0;
    bool hazards_posted = false;
    result<void> failed{};
    for (std::size_t first = 0; first < *usable && good == first;) {
      reset_round();
      pooled_batch b_held(*this);
      auto& b = *b_held;
      if (!hazards_posted) {
        post_hazards(b, *hazards);
        hazards_posted = true;
      }
      std::vector<std::pair<local_buffer, local_buffer>> bufs;  // slot word1, record
      std::size_t i = first;
      for (; i < *usable && room(refs[i].node, 3); ++i) {
        const block_ref& ref = refs[i];
        if (!data.empty() && data[i].size > 0) b.read(data_ptr(ref.node, ref.slab), data[i]);
        bufs.emplace_back(take(8), take(index_layout::record_bytes));
        b.read(record_ptr(ref.node, ref.slab), bufs.back().second);
        b.read(ref.slot + 8, bufs.back().first);  // last: validates the reads before it
        count_op(ref.node, 3);
      }
      if (overflow_) {
        failed = scratch_full();
        break;
      }
      if (auto ok = run(b, rts, "read"); !ok) {
        failed = std::move(ok);
        break;
      }
      for (std::size_t q = first; q < i; ++q) {
        const auto& [slot_buf, rec_buf] = bufs[q - first];
        if (detail::index::load64(slot_buf.data) != refs[q].word1) break;  // evicted or reused
        index_layout::record rec;
        std::memcpy(&rec, rec_buf.data, sizeof rec);
        if (rec.checksum != detail::index::record_checksum(rec) ||
            rec.slot_at != refs[q].slot.raw()) {
          break;
        }
        if (!records.empty()) records[q] = rec;
        ++good;
      }
      first = i;
    }
    if (hazards_posted) {
      clear_hazards(*hazards);
    } else {
      for (const hazard_claim& c : *hazards) free_words(c);
    }
    if (!failed) return std::move(failed).take_failure();
    return good;
  }

  // Pins blocks for reads that take longer than one batch (a KV load into the device, a copy to
  // another tier): their slabs are not reclaimed, so their bytes stay valid to read, until
  // unpin(), even if the blocks are unpublished meanwhile. One batch per node WRITEs the hazards
  // and READs the slots after them; `pinned` says how many leading refs were still published
  // (later ones are not protected). Pins cost no atomics, and hold while this client's lease
  // does: pin_holds() says whether they still do (a client declared dead loses them).
  [[nodiscard]] result<index_pin> pin(std::span<const block_ref> refs) {
    const doubt_if_thrown doubt(*this);
    if (auto ok = before_op(); !ok) return std::move(ok).take_failure();
    auto usable = usable_refs(refs);
    if (!usable) return std::move(usable).take_failure();
    auto hazards = claim_hazards(refs.first(*usable));
    if (!hazards) return std::move(hazards).take_failure();
    reset_round();
    pooled_batch b_held(*this);
    auto& b = *b_held;
    post_hazards(b, *hazards);
    std::vector<local_buffer> words;
    for (std::size_t i = 0; i < *usable && room(refs[i].node, 1); ++i) {
      words.push_back(take(8));
      b.read(refs[i].slot + 8, words.back());  // after the hazard WRITE, on the same node
      count_op(refs[i].node);
    }
    unsigned rts = 0;
    if (auto ok = run(b, rts, "pin"); !ok) {
      for (const hazard_claim& c : *hazards) free_words(c);
      return std::move(ok).take_failure();
    }
    index_pin p;
    while (p.pinned < words.size() &&
           detail::index::load64(words[p.pinned].data) == refs[p.pinned].word1) {
      ++p.pinned;
    }
    auto slot = std::find_if(pins_.begin(), pins_.end(),
                             [](const std::optional<hazard_set>& e) { return !e; });
    if (slot == pins_.end()) slot = pins_.insert(pins_.end(), std::nullopt);
    *slot = std::move(*hazards);
    p.id = static_cast<std::size_t>(slot - pins_.begin());
    return p;
  }

  // Releases a pin (its hazard words are cleared and reused).
  [[nodiscard]] result<void> unpin(index_pin p) {
    if (p.id >= pins_.size() || !pins_[p.id]) {
      return fail(errc::invalid_argument, "unpin: not a pin of this client");
    }
    if (closed_) return fail(errc::invalid_argument, "remote_index: used after close()");
    const doubt_if_thrown doubt(*this);
    begin_op();
    const hazard_set held = std::move(*pins_[p.id]);
    pins_[p.id].reset();
    clear_hazards(held);
    return {};
  }

  // Whether a pin still protects its blocks: this client's entries on their nodes are the ones
  // that wrote its hazards and are not in doubt.
  [[nodiscard]] bool pin_holds(index_pin p) const {
    if (p.id >= pins_.size() || !pins_[p.id]) return false;
    return std::all_of(pins_[p.id]->begin(), pins_[p.id]->end(), [&](const hazard_claim& c) {
      const node_state& ns = node_of(c.node);
      return c.generation == ns.generation && !ns.broken && ns.registered && !closed_ &&
             std::chrono::steady_clock::now() - last_beat_ < cfg_.lease / 2;
    });
  }

  // Records now as the last use of `refs` (eviction picks least recently used leaves).
  [[nodiscard]] result<void> touch(std::span<const block_ref> refs) {
    const doubt_if_thrown doubt(*this);
    if (auto ok = before_op(); !ok) return ok;
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    const local_buffer stamp = take(8);
    detail::index::store64(stamp.data, detail::index::now_ms());
    for (const block_ref& ref : refs) {
      // Out of reach, or a slab beyond the table (a ref of a region since replaced): not recorded.
      if (!ref.known() || node_of(ref.node).broken || ref.slab >= node_of(ref.node).geo.slabs()) {
        continue;
      }
      if (!room(ref.node, 1)) {
        if (auto ok = run(b, rts); !ok) return ok;
        b.clear();
        round_ops_.assign(round_ops_.size(), 0);
      }
      b.write(record_ptr(ref.node, ref.slab) + offsetof(index_layout::record, last_access), stamp);
      count_op(ref.node);
    }
    return run(b, rts);
  }

  // ---- eviction --------------------------------------------------------------------------------

  // Samples node `node` and unpublishes up to `n` least recently used leaves; returns how many
  // (and appends their hashes to `evicted` when given). Their slabs are reclaimed by maintain()
  // after the grace period. A sample is the records of a few random chunks (one READ of 4 KiB
  // each: every slab's state, child count and last access), then the slots of the oldest
  // leaves (8 bytes each) to unpublish them; slabs met EVICTING are queued for reclaim (their
  // slot is a tombstone) or watched (still published: an evictor that died between its steps).
  [[nodiscard]] result<std::size_t> evict(node_id node, std::size_t n,
                                          std::vector<H>* evicted = nullptr) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    using index_layout::slot_state;
    using index_layout::slot_word;
    const doubt_if_thrown doubt(*this);
    if (auto ok = before_op(); !ok) return std::move(ok).take_failure();
    node_state& ns = node_of(node);
    std::size_t done = 0;
    const std::size_t attempts = std::min<std::size_t>(16, 4 + n / 2);
    for (std::size_t attempt = 0; done < n && attempt < attempts; ++attempt) {
      scratch_mark mark(*this);
      unsigned rts = 0;
      // Chunks handed out so far: the cursor (read once, refreshed with every sample).
      if (ns.cursor_seen == 0) {
        reset_round();
        pooled_batch c_held(*this);
        auto& c = *c_held;
        const local_buffer cur = take(8);
        c.read(remote_ptr(node, ns.control_off), cur);
        if (auto ok = run(c, rts); !ok) return std::move(ok).take_failure();
        ns.cursor_seen = std::max<std::uint64_t>(1, detail::index::load64(cur.data));
      }
      const std::uint64_t span = std::min(ns.cursor_seen, ns.geo.chunks);
      reset_round();
      pooled_batch b_held(*this);
      auto& b = *b_held;
      std::vector<std::uint64_t> chunks;
      std::vector<local_buffer> recs;
      for (unsigned i = 0; i < cfg_.sample_chunks; ++i) {
        chunks.push_back(rng_() % span);
        recs.push_back(take(index_layout::chunk_slabs * index_layout::record_bytes));
        b.read(record_ptr(node, chunks.back() * index_layout::chunk_slabs), recs.back());
      }
      const local_buffer cur = take(8);
      b.read(remote_ptr(node, ns.control_off), cur);
      if (auto ok = run(b, rts); !ok) return std::move(ok).take_failure();
      ns.cursor_seen = std::max<std::uint64_t>(1, detail::index::load64(cur.data));
      std::vector<candidate> leaves, evicting;
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        for (std::uint64_t q = 0; q < index_layout::chunk_slabs; ++q) {
          candidate c;
          std::memcpy(&c.rec, recs[i].data + q * index_layout::record_bytes, sizeof c.rec);
          const slab_word sw = slab_word::decode(c.rec.slab);
          if ((sw.state != slab_state::live && sw.state != slab_state::evicting) ||
              !slot_in_range(ns, c.rec.slot_at) ||
              c.rec.checksum != detail::index::record_checksum(c.rec)) {
            continue;
          }
          c.slab = chunks[i] * index_layout::chunk_slabs + q;
          c.slot = remote_ptr::from_raw(c.rec.slot_at);
          if (sw.state == slab_state::evicting) {
            evicting.push_back(c);
          } else if (sw.count == 0) {
            leaves.push_back(c);
          }
        }
      }
      std::sort(leaves.begin(), leaves.end(), [](const candidate& a, const candidate& c) {
        return a.rec.last_access < c.rec.last_access;
      });
      // One READ each below (two for EVICTING), in one batch: at most max_ops_per_node (half of
      // it for EVICTING).
      const std::size_t most = cfg_.max_ops_per_node;
      if (evicting.size() > std::min<std::size_t>(64, most / 4)) {
        evicting.resize(std::min<std::size_t>(64, most / 4));
      }
      if (leaves.size() > std::min(2 * (n - done), most - 2 * evicting.size())) {
        leaves.resize(std::min(2 * (n - done), most - 2 * evicting.size()));
      }
      if (leaves.empty() && evicting.empty()) continue;
      // The slots: still publishing these slabs?
      reset_round();
      pooled_batch c_held(*this);
      auto& c = *c_held;
      std::vector<local_buffer> words;
      for (const candidate& x : leaves) {
        words.push_back(take(8));
        c.read(x.slot + 8, words.back());
      }
      // An EVICTING slab's record again, before its slot: the sample's 4 KiB READ may have
      // copied words 0-5 of an earlier life of the slab and word 7 of a later one (8-byte
      // atomicity only), and the slot to check and the parent to release are the body's. A body
      // read again after the sample saw the slab word is that life's (its WRITE came before the
      // word was LIVE); when the two bodies agree, the slot checked is the right one.
      std::vector<local_buffer> bodies;
      for (const candidate& x : evicting) {
        bodies.push_back(take(index_layout::record_bytes));
        c.read(record_ptr(node, x.slab), bodies.back());
        words.push_back(take(8));
        c.read(x.slot + 8, words.back());
      }
      if (auto ok = run(c, rts); !ok) return std::move(ok).take_failure();
      const auto now = std::chrono::steady_clock::now();
      std::vector<candidate> victims, stuck, orphaned;
      for (std::size_t i = 0; i < leaves.size() + evicting.size(); ++i) {
        candidate x = i < leaves.size() ? leaves[i] : evicting[i - leaves.size()];
        x.word1 = detail::index::load64(words[i].data);
        const slot_word w1 = slot_word::decode(x.word1);
        const bool refers = (w1.state == slot_state::valid || w1.state == slot_state::tombstone) &&
                            w1.ptr == x.slab;
        if (i >= leaves.size() && !refers &&
            std::memcmp(bodies[i - leaves.size()].data, &x.rec,
                        offsetof(index_layout::record, last_access)) == 0) {
          orphaned.push_back(x);
        }
        if (w1.ptr != x.slab) continue;
        if (i < leaves.size()) {
          if (w1.state == slot_state::valid && victims.size() < n - done) victims.push_back(x);
        } else if (w1.state == slot_state::tombstone) {
          queue_reclaim(ns, x.slot, x.word1, now);
        } else if (w1.state == slot_state::valid) {
          stuck.push_back(x);
        }
      }
      if (auto ok = watch_stuck_evictions(ns, stuck); !ok) return std::move(ok).take_failure();
      if (auto ok = finish_reclaims(ns, orphaned); !ok) return std::move(ok).take_failure();
      auto gone = unpublish(victims, evicted);
      if (!gone) return std::move(gone).take_failure();
      done += *gone;
    }
    stats_.evicted += done;
    return done;
  }

  // ---- upkeep ----------------------------------------------------------------------------------

  // Heartbeats when due; every half lease looks for dead clients and recovers what they held;
  // reclaims tombstoned slabs whose grace passed; keeps the slab reserve (slab_reserve: claims
  // fresh chunks, round trips of their own). Call it every heartbeat period or more often, and
  // between requests for the reserve to serve them (a client that stops calling it is declared
  // dead after a lease). Nodes where this client is in doubt (declared dead, an unknown outcome,
  // a call that threw) are settled and registered anew here too, as before a call (when their
  // retry time came: out of reach); while one is out of reach (its client table full:
  // errc::out_of_range; unreachable), every maintain() fails with why after the other nodes'
  // upkeep, so that a pool's stats().upkeep_failures counts every beat of an outage.
  [[nodiscard]] result<void> maintain() {
    if (closed_) return fail(errc::invalid_argument, "remote_index: used after close()");
    const doubt_if_thrown doubt(*this);
    begin_op();
    const auto now = std::chrono::steady_clock::now();
    if (now - last_beat_ >= cfg_.heartbeat) {
      if (auto ok = heartbeat(); !ok) return ok;
    }
    // A pooled client idle after a throw settles its entry here, not a lease later by others;
    // a node that cannot register again (its table full, unreachable) keeps the others' upkeep.
    result<void> first = leave_doubt(true);
    if (first) {
      for (const node_state& ns : nodes_) {
        if (ns.broken && ns.down) {
          first = out_of_reach(ns);
          break;
        }
      }
    }
    for (node_state& ns : nodes_) {
      if (ns.broken) continue;
      if (now - ns.last_scan >= cfg_.lease / 2) {
        ns.last_scan = now;
        if (auto ok = scan_clients(ns, false); !ok) return ok;
      }
      if (auto ok = reclaim(ns, false); !ok) return ok;
      if (auto ok = top_up_slabs(ns); !ok) return ok;
    }
    return first;
  }

  // Keep-alive: only the heartbeat, when a heartbeat period passed since the last (one round
  // trip to the nodes this client is registered on; no registering anew, no scans), in two
  // halves, so that one thread keeps many clients alive at once while another runs their
  // maintain() one after another (shared_index): their round trips overlap, and one waiting on a
  // node that does not answer holds up none of the others. start_keep_alive() rings the heartbeat
  // when one is due and says whether it did; finish_keep_alive() then waits for it and reads the
  // answers (keep_alive_done(): whether it would wait). Any other call on this client in between
  // finishes it first.
  [[nodiscard]] bool start_keep_alive() {
    if (closed_ || std::chrono::steady_clock::now() - last_beat_ < cfg_.heartbeat) return false;
    const doubt_if_thrown doubt(*this);
    begin_op();
    beat_.emplace(*this);
    bool rung = false;
    detail::undo_if_throws([&] { rung = ring_beat(*beat_); }, [&] { beat_.reset(); });
    if (!rung) beat_.reset();
    return rung;
  }
  [[nodiscard]] bool keep_alive_done() noexcept { return !beat_ || (*beat_->b).poll(); }
  void finish_keep_alive() {
    if (!beat_) return;
    const doubt_if_thrown doubt(*this);
    struct done {
      std::optional<beat_in_flight>& b;
      ~done() { b.reset(); }
    } const reset{beat_};
    read_beat(*beat_);
  }

  // Declares every other client dead at once and recovers all they held, then sweeps every
  // chunk for slabs left between two steps by a crashed client (stuck evictions rolled back);
  // reclaims every tombstone whose slab no live hazard covers (no grace); counts children
  // again. For tests and tools, after the clients stopped.
  [[nodiscard]] result<void> recover_everything() {
    if (closed_) return fail(errc::invalid_argument, "remote_index: used after close()");
    const doubt_if_thrown doubt(*this);
    begin_op();
    for (const node_state& ns : nodes_) {
      if (!ns.attached) {
        return fail(errc::unreachable, "recover_everything: memory node " + std::to_string(ns.id) +
                                           " has not been reached yet");
      }
    }
    for (node_state& ns : nodes_) {
      if (auto ok = scan_clients(ns, true); !ok) return ok;
      if (auto ok = sweep_slabs(ns); !ok) return ok;
      if (auto ok = reclaim_all_tombstones(ns); !ok) return ok;
    }
    return recount_children();
  }

 private:
  // Counts left too high by clients that died between counting a child and publishing it keep
  // a block from ever being evicted. With every client stopped (recover_everything(): a count
  // snapshot is wrong while others publish), count again: a child is a LIVE or EVICTING slab
  // whose slot (VALID or TOMBSTONE) still refers to it, counted in the record its parent
  // pointer names; LIVE slab words that differ are CASed to the count. LIVE slabs no slot refers
  // to and no published child names are freed, each after a READ of its own slot still does not
  // name it (a round C that landed after recovery took its reservation back leaves them; a block
  // published after the slot snapshot would name its slab by then).
  result<void> recount_children() {
    using index_layout::slab_state;
    using index_layout::slab_word;
    // Slabs a slot refers to, per node.
    std::vector<std::vector<bool>> referenced(nodes_.size());
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      node_state& ns = nodes_[i];
      referenced[i].assign(ns.geo.slabs(), false);
      auto ok = for_each_slot(
          ns,
          [&](remote_ptr, std::uint64_t word1) {
            const auto w1 = index_layout::slot_word::decode(word1);
            if ((w1.state == index_layout::slot_state::valid ||
                 w1.state == index_layout::slot_state::tombstone) &&
                w1.ptr < ns.geo.slabs()) {
              referenced[i][w1.ptr] = true;
            }
          },
          []() -> result<void> { return {}; });
      if (!ok) return ok;
    }
    // Children per parent record (pass 0), then the LIVE words that disagree (pass 1).
    std::unordered_map<std::uint64_t, std::uint32_t> children;  // parent record pointer -> count
    std::vector<orphan> orphans;
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t i = 0; i < nodes_.size(); ++i) {
        node_state& ns = nodes_[i];
        auto ok = for_each_window(
            ns, ns.records_off, index_layout::record_bytes, ns.geo.slabs(),
            [&](std::uint64_t first, const local_buffer& buf) -> result<void> {
              reset_round();
              unsigned rts = 0;
              pooled_batch fix_held(*this);
              auto& fix = *fix_held;
              for (std::uint64_t q = 0; q < buf.size / index_layout::record_bytes; ++q) {
                const std::uint64_t x = first + q;
                index_layout::record rec;
                std::memcpy(&rec, buf.data + q * index_layout::record_bytes, sizeof rec);
                const slab_word sw = slab_word::decode(rec.slab);
                if (pass == 0) {
                  if (referenced[i][x] && rec.parent != 0 &&
                      (sw.state == slab_state::live || sw.state == slab_state::evicting)) {
                    ++children[rec.parent];
                  }
                  continue;
                }
                if (sw.state != slab_state::live) continue;
                const auto it = children.find(record_ptr(ns.id, x).raw());
                const std::uint32_t want = it == children.end() ? 0 : it->second;
                if (!referenced[i][x]) {
                  if (want == 0 && slot_in_range(ns, rec.slot_at)) {
                    orphans.push_back({ns.id, x, rec.slab, rec.slot_at, {}, {}});
                  }
                  continue;
                }
                if (sw.count == want) continue;
                if (!room(ns.id, 1)) break;  // the rest on the next recount
                fix.cas(record_ptr(ns.id, x) + offsetof(index_layout::record, slab), rec.slab,
                        slab_word{sw.state, sw.version, sw.owner, want}.encode(), take(8));
                count_op(ns.id);
                ++stats_.recounted;
              }
              return run(fix, rts);
            });
        if (!ok) return ok;
      }
    }
    return free_orphans(orphans);
  }

  // A LIVE slab recount_children() found with no slot naming it (its word as read, its record's
  // slot pointer), and the answers of free_orphans()'s READ and CAS.
  struct orphan {
    node_id node;
    std::uint64_t slab, word, slot_at;
    local_buffer slot, old;
  };
  // Frees them: a READ of each one's slot, then, where it still does not name the slab, a CAS from
  // the LIVE word seen to FREE.
  result<void> free_orphans(std::vector<orphan>& orphans) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    // At most max_ops_per_node orphans a batch (one READ, then one CAS, each), whatever their
    // nodes: a verbs queue pair refuses a batch larger than it takes.
    const std::size_t per_batch = std::min<std::size_t>(256, cfg_.max_ops_per_node);
    for (std::size_t at = 0; at < orphans.size();) {
      const std::size_t end = std::min(orphans.size(), at + per_batch);
      reset_round();
      unsigned rts = 0;
      pooled_batch r_held(*this);
      auto& r = *r_held;
      for (std::size_t i = at; i < end; ++i) {
        orphans[i].slot = take(8);
        r.read(remote_ptr::from_raw(orphans[i].slot_at) + 8, orphans[i].slot);
      }
      if (auto ok = run(r, rts); !ok) return ok;
      pooled_batch f_held(*this);
      auto& f = *f_held;
      for (std::size_t i = at; i < end; ++i) {
        orphan& o = orphans[i];
        const auto w1 = index_layout::slot_word::decode(detail::index::load64(o.slot.data));
        if ((w1.state == index_layout::slot_state::valid ||
             w1.state == index_layout::slot_state::tombstone) &&
            w1.ptr == o.slab) {
          continue;  // named after all
        }
        o.old = take(8);
        const slab_word sw = slab_word::decode(o.word);
        f.cas(record_ptr(o.node, o.slab) + offsetof(index_layout::record, slab), o.word,
              slab_word{slab_state::free, sw.version, 0, 0}.encode(), o.old);
      }
      if (auto ok = run(f, rts); !ok) return ok;
      for (std::size_t i = at; i < end; ++i) {
        if (orphans[i].old.size > 0 &&
            detail::index::load64(orphans[i].old.data) == orphans[i].word) {
          ++stats_.recovered_slabs;
        }
      }
      at = end;
    }
    return {};
  }

 public:
  // Clean departure (also done by the destructor): unused slabs and chunks returned, hazards
  // cleared, the client entries freed.
  [[nodiscard]] result<void> close() {
    if (closed_) return {};
    closed_ = true;
    begin_op();
    result<void> first{};
    // Entries a throw left: settled and freed. Out of memory there, the others still leave.
    detail::instead_if_throws([&] { first = leave_doubt(false); }, [] {});
    for (node_state& ns : nodes_) {
      if (ns.broken || !ns.registered) continue;
      auto ok = leave(ns);
      if (!ok && first) first = std::move(ok);
    }
    return first;
  }

  // Ends this client's participation on every node abruptly, as a crash would (tests):
  // nothing is returned, the entries stay live until others declare them dead.
  void abandon() noexcept {
    closed_ = true;
    for (node_state& ns : nodes_) ns.broken = true;
  }

  // Fault injection for tests: `hook` is called with the protocol step's name ("lookup" for each
  // of a lookup's rounds, "insert.A" to
  // "insert.D", "insert.D.again" and "insert.undo" for its CAS retries, "evict.evicting",
  // "evict.tombstone", "evict.rollback", "evict.free", "reclaim.empty", "reclaim.free"; chunk
  // claims "claim.cursor", "claim.scan", "claim.chunks", "claim.slabs"; "release" of chunks;
  // "read" and "pin" for reads under hazards, "hazards.clear" when they end; "register" and
  // "register.clear" when this client takes an entry; "settle.free" when it frees the entry it
  // settled itself after a call threw; "settle.records" as recovery reads a chunk's records) just
  // before that step's batch is rung, so a test can change remote memory at that very point (or
  // throw: the call's entries are then in doubt, settled by the client on its next call). The
  // index's destructor releases chunks too: clear the hook before what it captures goes.
  void on_step(std::function<void(const char*)> hook) { hook_ = std::move(hook); }

 private:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  using hazard_range = index_layout::hazard_range;

  // Put at the top of every call that changes remote state. An exception leaving the call
  // midway (out of memory: scratch vectors, batches, error messages; a throwing step hook) may
  // leave behind what the call would have undone or finished: reservations, a parent's count,
  // hazards, slabs taken from the reserve. Nothing of it is known any more: every node's entry
  // is put in doubt, and on its next call (or maintain(), close()) the client settles the old
  // entry itself as recovery would a crashed client's (leave_doubt, settle_own_entry) and
  // registers anew; where a round of that registration failed (its outcome may be unknown) it
  // leaves the old entry to others' recovery after the lease instead (without this the entry
  // would stay live and what it left would stay for good).
  class doubt_if_thrown {
   public:
    explicit doubt_if_thrown(remote_index& ix) noexcept
        : ix_(ix), uncaught_(std::uncaught_exceptions()) {}
    doubt_if_thrown(const doubt_if_thrown&) = delete;
    doubt_if_thrown& operator=(const doubt_if_thrown&) = delete;
    ~doubt_if_thrown() {
      if (std::uncaught_exceptions() <= uncaught_) return;
      for (node_state& ns : ix_.nodes_) {
        // Nothing of the call is in flight once its batches were given back (cleared: drained),
        // so the client may settle the entry itself on its next call, unless a round of this
        // registration failed (an unknown outcome: it may still land) or a batch could not be
        // cleared. An entry in doubt already keeps what was decided for it.
        const bool clean =
            ix_.batches_leaked_ == 0 && ix_.rounds_failed_ == ns.failures_at_register;
        ns.settle_own = (ns.broken ? ns.settle_own : ns.registered) && clean;
        ns.broken = true;
      }
    }

   private:
    remote_index& ix_;
    int uncaught_;
  };

  // Hazard words of this client's entry on one node, holding slab ranges.
  struct hazard_claim {
    node_id node = 0;
    std::size_t first_word = 0;
    std::vector<hazard_range> ranges;
    std::uint64_t generation = 0;  // the registration they belong to
  };
  using hazard_set = std::vector<hazard_claim>;

  struct node_state {
    node_id id = 0;
    index_layout::geometry geo;
    std::uint64_t control_off = 0, clients_off = 0, chunks_off = 0, groups_off = 0, records_off = 0,
                  data_off = 0;
    bool attached = false;  // its region header read and checked: geo and offsets are known
    // That header as read, byte for byte: a node that comes back with another region (it
    // restarted) is told apart by it before this client registers there again.
    std::array<std::byte, sizeof(region_header)> header{};
    bool reading_header = false;  // attach_node()'s READ: not held to that region
    // When this client took the node's layout (attach_node(): at first, and again when it found
    // another region there): block refs taken before (a parent from a lookup, this client's or
    // another's) may name slabs of an older region.
    std::chrono::steady_clock::time_point layout_since{};
    bool registered = false;
    bool broken = false;  // in doubt: stop using the entry, let others recover it, re-register
    // In doubt only because a call threw (nothing of it in flight): before registering anew,
    // settle the old entry and free it, instead of leaving it to others for two leases.
    bool settle_own = false;
    std::uint64_t failures_at_register = 0;  // rounds_failed_ when this entry was taken
    // Out of reach: the last try to register anew here failed (why), and calls do not try again
    // before retry_at. Tries that failed a round (an unreachable node: over verbs about half a
    // second of queue-pair retries) back off: the second at once, then waits doubling from a
    // heartbeat period to a lease; a full table (a look is three reads of it and a scan) is
    // looked at again a heartbeat period later.
    std::optional<failure> down;
    std::chrono::steady_clock::time_point retry_at{};
    unsigned failed_tries = 0;
    bool fences = false;            // the memory node cuts off clients declared dead (fence words)
    std::uint64_t identity = 0;     // the transport identity the registration names
    std::uint64_t generation = 0;   // registrations so far (pins of an earlier one are void)
    std::uint64_t hazard_used = 1;  // bit w: hazard word w held (word 0: inserts)
    std::uint32_t client = 0;
    std::uint32_t incarnation = 0;
    std::uint64_t my_word = 0;  // the client word as this client last left it
    std::chrono::steady_clock::time_point last_scan{};
    struct owned_chunk {
      std::uint64_t index = 0;
      std::uint64_t word = 0;
      std::vector<std::pair<std::uint64_t, std::uint64_t>> free;  // slab, HELD word
      std::size_t in_use = 0;  // held slabs handed to an insert in progress
    };
    std::vector<owned_chunk> chunks;
    bool chunks_exhausted = false;
    std::uint64_t cursor_seen = 0;  // the chunk cursor as last read (chunks handed out)
    struct watched {
      std::uint64_t word = 0;
      std::chrono::steady_clock::time_point since{};
      bool fenced = false;  // taken for recovery on its fence word (counted once)
    };
    std::vector<watched> watch;  // per client entry
    struct pending {
      remote_ptr slot;
      std::uint64_t word1 = 0;  // TOMBSTONE
      std::uint64_t slab = 0;
      std::chrono::steady_clock::time_point since{};
    };
    std::vector<pending> reclaims;
    struct stuck_eviction {
      std::uint64_t slab = 0, word = 0, word1 = 0;
      std::chrono::steady_clock::time_point since{};
    };
    std::vector<stuck_eviction> stuck;  // EVICTING and still published, as first seen
  };

  struct place_t {
    std::size_t node_index = 0;
    node_id node = 0;
    std::uint64_t group[2] = {0, 0};
    unsigned offset = 0;          // in the segment
    unsigned bucket[2] = {0, 0};  // in each group: the offset, then the block's own (heads: 0)
    std::uint64_t tag = 0;
    std::uint16_t check = 0;
    std::uint64_t key_bits = 0;
    const node_state* ns = nullptr;
  };

  struct head_state {
    enum : std::uint8_t { unknown, present, absent } state = unknown;
    bool read_g1 = false, read_g2 = false, posted_g1 = false, posted_g2 = false;
    local_buffer buf1, buf2;  // the first and second head buckets as read (the overflow word
                              // is read with buf1, in the 8 bytes before it)
    // The overflow word of the segment's first group, once read (until then: every offset).
    std::uint64_t overflow = index_layout::overflow_all;
    std::uint64_t slab = 0, word1 = 0;
    remote_ptr slot;
    void set_present(const std::byte* bucket, int s, remote_ptr at) {
      state = present;
      slab = slot_ptr_field(bucket, s);
      word1 = word1_of(bucket, s);
      slot = at;
    }
  };

  // A lookup's reads of one segment: its first group whole and the own second buckets of the
  // blocks at the offsets `second_read` names (read_segment).
  struct segment_reads {
    std::size_t j = 0;
    std::array<local_buffer, 2> buckets;
    std::uint64_t second_read = 0;
  };
  // The boundary segment of this client's last lookup, whose reads stay in scratch until its next
  // operation: an insert with that lookup's match, next on this client, takes round A of its
  // first pass from them when they show every block of the pass (insert_attempt).
  struct boundary_seen {
    std::uint64_t op = 0;  // ops_begun_ when the lookup ended (0: none)
    std::chrono::steady_clock::time_point read_at{};
    std::array<H, segment> keys{};  // chain[j * segment, end)
    std::size_t j = 0;              // the segment
    std::size_t end = 0;            // where its blocks end in the chain
    std::uint64_t overflow = 0;     // its first group's overflow word, read with the head
    std::uint64_t second_read = 0;  // offsets whose own second buckets were read
    std::array<local_buffer, 2> buckets;
    std::size_t scratch_used = 0;  // scratch bytes in use when the lookup ended
  };

  struct candidate {
    remote_ptr slot;
    std::uint64_t word1 = 0;
    std::uint64_t slab = 0;
    index_layout::record rec;
  };

  struct attempt_outcome {
    insert_stop stop = insert_stop::none;
  };

  // An insert's parent, and when its slot was last seen publishing it.
  struct parent_ref {
    block_ref ref;
    std::chrono::steady_clock::time_point seen{};
  };

  remote_index(T& t, remote_index_config cfg)
      : t_(t), cfg_(std::move(cfg)), rng_(cfg_.seed != 0 ? cfg_.seed : std::random_device{}()) {}

  // ---- setup -----------------------------------------------------------------------------------

  result<void> attach() {
    scratch_mem_.reset(new std::uint64_t[cfg_.scratch_bytes / 8]());
    auto reg = t_.register_memory(
        std::span<std::byte>(reinterpret_cast<std::byte*>(scratch_mem_.get()), cfg_.scratch_bytes));
    if (!reg) return std::move(reg).take_failure();
    reg_.emplace(std::move(*reg));
    scratch_ = reg_->buffer();
    node_id max_id = 0;
    for (node_id id : cfg_.nodes) max_id = std::max(max_id, id);
    node_index_.assign(std::size_t{max_id} + 1, npos);
    for (node_id id : cfg_.nodes) {
      node_state ns;
      ns.id = id;
      node_index_[id] = nodes_.size();
      nodes_.push_back(std::move(ns));
    }
    // A node out of reach starts so (registered when a later call reaches it); any other
    // failure (a region that is not an index, another block size) is the caller's to fix.
    std::optional<failure> first_down;
    for (node_state& ns : nodes_) {
      auto ok = attach_node(ns);
      if (ok) continue;
      if (ok.error() != errc::unreachable && ok.error() != errc::timed_out) return ok;
      ns.broken = true;
      went_out_of_reach(ns, failure{ok.error(), ok.detail()}, true);
      if (!first_down) first_down = std::move(ok).take_failure();
    }
    if (block_bytes_ == 0) {
      failure f = std::move(*first_down);
      if (nodes_.size() > 1) f.detail = "no memory node could be reached: " + f.detail;
      return f;
    }
    bool any_registered = false;
    for (node_state& ns : nodes_) {
      if (!ns.attached) continue;
      const std::uint64_t rounds_failed = rounds_failed_;
      auto ok = register_on(ns, cfg_.full_table_wait);
      if (ok) {
        any_registered = true;
        continue;
      }
      // Gone between its header and its registration (or restarted: the registration, held to
      // the region read, was refused): out of reach like a node that never answered (a later
      // call registers there); anything else (a full table) fails open().
      if (ok.error() != errc::unreachable && ok.error() != errc::timed_out &&
          ok.error() != errc::format_mismatch) {
        return ok;
      }
      ns.broken = true;
      went_out_of_reach(ns, failure{ok.error(), ok.detail()}, rounds_failed_ != rounds_failed);
      if (!first_down) first_down = std::move(ok).take_failure();
    }
    if (!any_registered) {
      failure f = std::move(*first_down);
      if (nodes_.size() > 1) f.detail = "no memory node could be reached: " + f.detail;
      return f;
    }
    last_beat_ = std::chrono::steady_clock::now();
    return {};
  }

  // Reads node `ns`'s region header and takes its layout: at open(), and before every
  // registration anew (a node out of reach may come back as another region: a memory node that
  // restarted, at the same address and of the same size, possibly formatted otherwise). Its
  // blocks must have the size the other nodes' have. A header that differs from the one read
  // before is a region replaced: what this client knew of the old one is forgotten.
  result<void> attach_node(node_state& ns) {
    scratch_mark mark(*this);
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    const local_buffer hb = take(sizeof(region_header));
    b.read(remote_ptr(ns.id, 0), hb);
    struct reading {  // whichever region the node serves now (require_identities())
      bool& flag;
      explicit reading(bool& f) : flag(f) { flag = true; }
      reading(const reading&) = delete;
      reading& operator=(const reading&) = delete;
      ~reading() { flag = false; }
    };
    {
      const reading r(ns.reading_header);
      if (auto ok = run(b, rts, "attach"); !ok) return ok;
    }
    if (ns.attached && std::memcmp(hb.data, ns.header.data(), ns.header.size()) == 0) return {};
    region_header h;
    std::memcpy(&h, hb.data, sizeof h);
    if (auto ok = check_region_header(h, t_.region_bytes(ns.id)); !ok) {
      return fail(errc::format_mismatch, "memory node " + std::to_string(ns.id) + ": " +
                                             std::move(ok).take_failure().detail);
    }
    auto g = index_layout::read_layout(h);
    if (!g) return std::move(g).take_failure();
    if (block_bytes_ != 0 && g->block_bytes != block_bytes_) {
      const node_state* other = nullptr;
      for (const node_state& o : nodes_) {
        if (o.attached && &o != &ns) other = &o;
      }
      if (other == nullptr) {  // the node's own earlier region set the size
        return fail(errc::format_mismatch, "memory node " + std::to_string(ns.id) +
                                               " came back formatted for blocks of " +
                                               std::to_string(g->block_bytes) + " bytes, not " +
                                               std::to_string(block_bytes_) + " as before");
      }
      return fail(errc::format_mismatch,
                  "memory nodes " + std::to_string(other != nullptr ? other->id : ns.id) + " and " +
                      std::to_string(ns.id) + " were formatted for different block sizes (" +
                      std::to_string(block_bytes_) + " and " + std::to_string(g->block_bytes) +
                      " bytes)");
    }
    std::vector<typename node_state::watched> watch(g->clients);  // may throw: before any change
    if (ns.attached) forget_region(ns);
    ns.geo = *g;
    ns.fences = index_layout::fences(h);
    ns.control_off = g->control_offset(h.data_offset);
    ns.clients_off = g->clients_offset(h.data_offset);
    ns.chunks_off = g->chunks_offset(h.data_offset);
    ns.groups_off = g->groups_offset(h.data_offset);
    ns.records_off = g->records_offset(h.data_offset);
    ns.data_off = g->data_offset_of(h.data_offset);
    ns.watch = std::move(watch);
    std::memcpy(ns.header.data(), hb.data, ns.header.size());
    ns.layout_since = std::chrono::steady_clock::now();
    ns.attached = true;
    if (block_bytes_ == 0) block_bytes_ = g->block_bytes;  // read by other threads afterwards
    last_segment_.valid = false;
    return {};
  }

  // Node `ns` holds another region than the one this client read before: nothing known of the
  // old one holds there (its overflow words as seen, evictions and reclaims in progress, the
  // chunk cursor; chunks and entry went with the doubt that came before).
  void forget_region(node_state& ns) {
    std::erase_if(overflow_seen_, [&](const auto& seen) {
      return remote_ptr::from_raw(seen.first).node() == ns.id;
    });
    ns.chunks.clear();
    ns.chunks_exhausted = false;
    ns.cursor_seen = 0;
    ns.reclaims.clear();
    ns.stuck.clear();
    last_overflow_ = {0, 0};
    ++stats_.regions_replaced;
  }

  // Takes a free client entry: CAS free(incarnation) -> live(incarnation + 1), then clears the
  // entry's hazard words. With the table full, watches the entries from outside (scan_clients:
  // declares dead those silent for a lease, recovers them after recovery_delay) for up to
  // `wait`, sleeping a heartbeat period between looks.
  result<void> register_on(node_state& ns, std::chrono::milliseconds wait) {
    using index_layout::client_state;
    using index_layout::client_word;
    const std::uint64_t c = ns.geo.clients;
    const auto deadline = std::chrono::steady_clock::now() + wait;
    bool scanned = false;        // the words were read after a scan (which may have freed an entry)
    for (unsigned lost = 0;;) {  // rounds whose every CAS on a free entry lost
      scratch_mark mark(*this);
      std::vector<std::uint64_t> words;
      if (auto ok = read_client_words(ns, words); !ok) return ok;
      const bool full = std::none_of(words.begin(), words.end(), [](std::uint64_t w) {
        return client_word::decode(w).state == client_state::free;
      });
      if (full) {
        if (scanned && std::chrono::steady_clock::now() >= deadline) break;  // looked again
        // Nobody may be left to recover the entries: look after them as maintain() would, then
        // look for a free entry again.
        if (auto ok = scan_clients(ns, false); !ok) return ok;
        scanned = true;
        const auto now = std::chrono::steady_clock::now();
        if (now < deadline) {
          std::this_thread::sleep_for(
              std::min<std::chrono::steady_clock::duration>(cfg_.heartbeat, deadline - now));
        }
        continue;
      }
      const std::uint64_t start = rng_() % c;
      for (std::uint64_t i = 0; i < c; ++i) {
        const std::uint64_t id = (start + i) % c;
        const client_word w = client_word::decode(words[id]);
        if (w.state != client_state::free) continue;
        const client_word live{
            client_state::live,
            static_cast<std::uint32_t>((w.incarnation + 1) & index_layout::mask(22)), 0};
        reset_round();
        unsigned rts = 0;
        pooled_batch b_held(*this);
        auto& b = *b_held;
        const local_buffer old = take(8);
        b.cas(client_ptr(ns, id), words[id], live.encode(), old);
        if (auto ok = run(b, rts, "register"); !ok) return ok;
        if (detail::index::load64(old.data) != words[id]) continue;  // lost it
        ns.client = static_cast<std::uint32_t>(id);
        ns.incarnation = live.incarnation;
        ++ns.generation;
        ns.hazard_used = 1;
        ns.my_word = live.encode();
        ns.registered = true;
        ns.broken = false;
        ns.chunks.clear();
        ns.chunks_exhausted = false;
        // Which transport this incarnation uses (what a fencing node cuts off if it is declared
        // dead); hazards of an earlier incarnation would only delay reclaim: clear them.
        reset_round();
        pooled_batch z_held(*this);
        auto& z = *z_held;
        const std::uint64_t identity = transport_identity(t_);
        ns.identity = identity;
        require_identities(z);  // sent under the identity it names, or not at all
        const local_buffer who = take(8);
        detail::index::store64(
            who.data,
            identity == 0 ? 0 : index_layout::identity_word{live.incarnation, identity}.encode());
        z.write(client_ptr(ns, id) + index_layout::identity_offset, who);
        const local_buffer zeros = take(8 * index_layout::hazard_words);
        std::memset(zeros.data, 0, zeros.size);
        z.write(client_ptr(ns, id) + index_layout::hazard_offset, zeros);
        ns.failures_at_register = rounds_failed_;
        return run(z, rts, "register.clear");
      }
      if (++lost >= 4 && std::chrono::steady_clock::now() >= deadline) break;
      backoff(lost);
    }
    return fail(errc::out_of_range,
                "memory node " + std::to_string(ns.id) + " has no free client entry (" +
                    std::to_string(c) + " clients; none came free in " +
                    std::to_string(wait.count()) +
                    " ms); format it for more, or close clients it does not need");
  }

  // READs `bytes` at `offset` within each listed client entry of node `ns`, as many per batch
  // as the node's operation limit and the scratch memory allow, and calls f(client id, buffer).
  template <class F>
  result<void> for_each_client_read(node_state& ns, std::span<const std::uint64_t> ids,
                                    std::uint64_t offset, std::uint64_t bytes, F&& f) {
    for (std::size_t first = 0; first < ids.size();) {
      scratch_mark mark(*this);
      reset_round();
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      std::vector<local_buffer> bufs;
      std::size_t i = first;
      for (;
           i < ids.size() && bufs.size() + 1 < cfg_.max_ops_per_node && scratch_left() > bytes + 64;
           ++i) {
        bufs.push_back(take(bytes));
        b.read(client_ptr(ns, ids[i]) + offset, bufs.back());
      }
      KVC_ASSERT(i > first, "scratch memory too small for one client read");
      if (auto ok = run(b, rts); !ok) return ok;
      for (std::size_t j = first; j < i; ++j) f(ids[j], bufs[j - first]);
      first = i;
    }
    return {};
  }

  // Every client entry's word (and, with `fences`, its fence word).
  result<void> read_client_words(node_state& ns, std::vector<std::uint64_t>& words,
                                 std::vector<std::uint64_t>* fences = nullptr) {
    std::vector<std::uint64_t> ids(ns.geo.clients);
    std::iota(ids.begin(), ids.end(), std::uint64_t{0});
    words.assign(ids.size(), 0);
    if (fences != nullptr) fences->assign(ids.size(), 0);
    const std::uint64_t bytes = fences != nullptr ? index_layout::fence_offset + 8 : 8;
    return for_each_client_read(ns, ids, 0, bytes, [&](std::uint64_t id, const local_buffer& buf) {
      words[id] = detail::index::load64(buf.data);
      if (fences != nullptr) {
        (*fences)[id] = detail::index::load64(buf.data + index_layout::fence_offset);
      }
    });
  }

  result<void> leave(node_state& ns) {
    using index_layout::client_state;
    using index_layout::client_word;
    // Unused held slabs back to FREE, chunks back, hazards cleared, entry free.
    for (auto& ch : ns.chunks) {
      if (auto ok = return_free_slabs(ns, ch); !ok) return ok;
    }
    if (auto ok = release_chunks(ns, true); !ok) return ok;
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    const local_buffer zeros = take(8 * index_layout::hazard_words);
    std::memset(zeros.data, 0, zeros.size);
    b.write(client_ptr(ns, ns.client) + index_layout::hazard_offset, zeros);
    // The word holds our heartbeat count; CAS from what it is now (read it first).
    const local_buffer cur = take(8);
    b.read(client_ptr(ns, ns.client), cur);
    if (auto ok = run(b, rts); !ok) return ok;
    const std::uint64_t seen = detail::index::load64(cur.data);
    const client_word w = client_word::decode(seen);
    if (w.state != client_state::live || w.incarnation != ns.incarnation)
      return {};  // declared dead
    reset_round();
    pooled_batch c_held(*this);
    auto& c = *c_held;
    const local_buffer old = take(8);
    c.cas(client_ptr(ns, ns.client), seen,
          client_word{client_state::free, ns.incarnation, 0}.encode(), old);
    ns.registered = false;
    return run(c, rts);
  }

  // ---- liveness --------------------------------------------------------------------------------

  struct beat_in_flight;  // below pooled_batch
  result<void> heartbeat() {
    beat_in_flight bt(*this);
    if (ring_beat(bt)) read_beat(bt);
    return {};
  }

  // Posts and rings the heartbeat; false when no node has an entry to beat.
  bool ring_beat(beat_in_flight& bt) {
    using index_layout::client_word;
    reset_round();
    auto& b = *bt.b;
    for (node_state& ns : nodes_) {
      if (ns.broken || !ns.registered) continue;
      bt.sent.emplace_back(&ns, take(8));
      b.faa(client_ptr(ns, ns.client), client_word::heartbeat_one, bt.sent.back().second);
    }
    // Alive as of sending (the FAA ran later): the conservative time to count the lease from.
    last_beat_ = std::chrono::steady_clock::now();
    if (bt.sent.empty()) return false;
    require_identities(b);
    ++rounds_run_;
    b.ring();
    return true;
  }
  // Waits for a rung heartbeat and reads where this client stands on each node.
  void read_beat(beat_in_flight& bt) {
    using index_layout::client_state;
    using index_layout::client_word;
    auto& b = *bt.b;
    (void)b.wait();
    for (std::size_t i = 0; i < bt.sent.size(); ++i) {
      node_state& ns = *bt.sent[i].first;
      if (!b.ok(i)) {
        ns.broken = true;  // unknown: others will recover this entry after the lease
        ++rounds_failed_;
        continue;
      }
      const client_word w = client_word::decode(detail::index::load64(bt.sent[i].second.data));
      if (w.state != client_state::live || w.incarnation != ns.incarnation) {
        ns.broken = true;  // declared dead: what this entry held is someone else's now
      } else {
        ns.my_word = detail::index::load64(bt.sent[i].second.data) + client_word::heartbeat_one;
      }
    }
  }

  // Before every operation: heartbeat if the last one is older than a quarter lease (a client
  // that cannot prove itself alive stops using what it read), and re-register on nodes where
  // this client was declared dead or fell into doubt.
  result<void> before_op(std::size_t keep = 0) {
    if (closed_) return fail(errc::invalid_argument, "remote_index: used after close()");
    begin_op(keep);
    lease_lost_ = false;
    if (std::chrono::steady_clock::now() - last_beat_ >= cfg_.lease / 4) {
      if (auto ok = heartbeat(); !ok) return ok;
    }
    // A node where registering anew fails is out of reach: the call goes on with the others
    // (a lookup answers the prefix before it, an insert stops there, run() fails what needs it).
    (void)leave_doubt(true);
    lease_lost_ = false;  // a batch of leave_doubt's refused is not this call's
    return {};
  }

  // Nodes in doubt: settle the entries a throw left (settle_own_entry), then, with
  // `register_again`, register anew (before every call and in maintain()); without, leave them
  // unregistered (close()). A node where registering fails stays in doubt, out of reach for this
  // client (node_state::down) until a later call tries again after its retry time; the other
  // nodes are registered all the same. Returns the first such failure (maintain() reports it;
  // before_op() goes on: only what needs that node fails, run() says why).
  result<void> leave_doubt(bool register_again) {
    if (!any_in_doubt()) return {};
    const auto now = std::chrono::steady_clock::now();
    // Every node in doubt is taken out of doubt first: settling or recovering on one node may
    // send a batch to another (a parent's -1), which run() would refuse for a node in doubt.
    struct redo {
      node_state* ns;
      bool registered, settle_own;
    };
    std::vector<redo> todo;
    todo.reserve(nodes_.size());  // may throw here, before any node changed, not in the loop
    for (node_state& ns : nodes_) {
      if (!ns.broken) continue;
      if (ns.down && now < ns.retry_at) continue;  // nothing held there: it waits to try again
      todo.push_back({&ns, ns.registered, ns.settle_own});
      ns.chunks.clear();
      ns.reclaims.clear();
      ns.settle_own = false;
      ns.registered = false;
      ns.broken = false;  // the old entry is left to recovery; nothing of it is used again
    }
    // A step that throws leaves this node and those not reached yet in doubt again.
    std::size_t at = 0;
    result<void> first{};
    auto doubt_rest = [&] {
      for (std::size_t j = at; j < todo.size(); ++j) {
        todo[j].ns->broken = true;
        if (j > at) {  // not reached: as it was
          todo[j].ns->registered = todo[j].registered;
          todo[j].ns->settle_own = todo[j].settle_own;
        }
      }
    };
    for (; at < todo.size(); ++at) {
      node_state& ns = *todo[at].ns;
      if (todo[at].settle_own && todo[at].registered) {
        // Failing, the old entry stays to others' recovery as before (no heartbeat); throwing
        // (nothing in flight again), it is settled on the next call.
        // Only in the region that entry is in: a node that restarted meanwhile has none of it.
        detail::undo_if_throws(
            [&] {
              const std::uint64_t replaced = stats_.regions_replaced;
              if (attach_node(ns) && stats_.regions_replaced == replaced) {
                (void)settle_own_entry(ns);
              }
            },
            [&] {
              doubt_rest();
              ns.registered = true;
              ns.settle_own = batches_leaked_ == 0 && rounds_failed_ == ns.failures_at_register;
            });
      }
      if (!register_again) continue;
      result<void> ok{};
      const std::uint64_t rounds_failed = rounds_failed_;
      // A registration that throws midway (out of memory) is in doubt like one that fails. The
      // node's header is read first: a node not reached since open(), or one that came back
      // with another region (attach_node()).
      bool attach_failed = false;
      detail::undo_if_throws(
          [&] {
            ok = attach_node(ns);
            attach_failed = !ok;
            if (ok) ok = register_on(ns, std::chrono::milliseconds(0));
          },
          doubt_rest);
      if (!ok) {
        ns.broken = true;        // this node only: the others are not given up for it
        detail::undo_if_throws(  // copies the failure's text
            [&] {
              // A node that answers with another format backs off as one that does not answer.
              went_out_of_reach(ns, failure{ok.error(), ok.detail()},
                                attach_failed || rounds_failed_ != rounds_failed);
            },
            doubt_rest);
        if (first) first = std::move(ok);
        continue;
      }
      ns.down.reset();
      ns.failed_tries = 0;
      ++stats_.reregistrations;
    }
    return first;
  }

  // Registering anew on `ns` failed with `why`: out of reach until retry_at.
  void went_out_of_reach(node_state& ns, const failure& why, bool round_failed) {
    ++stats_.registration_failures;
    ns.down = why;
    std::chrono::steady_clock::duration wait = cfg_.heartbeat;  // a full table: look again then
    if (round_failed) {
      wait = {};
      if (ns.failed_tries > 0) {
        wait = std::min<std::chrono::steady_clock::duration>(
            cfg_.heartbeat * (std::uint64_t{1} << std::min(ns.failed_tries - 1, 16u)), cfg_.lease);
      }
      ++ns.failed_tries;
    }
    ns.retry_at = std::chrono::steady_clock::now() + wait;
  }

  // The error of a call that needs node `ns` while this client's entry there is in doubt: out
  // of reach (registering anew failed), or lapsed during this call.
  [[nodiscard]] failure out_of_reach(const node_state& ns) const {
    if (!ns.down) {
      return fail(errc::timed_out, "this client's lease on memory node " + std::to_string(ns.id) +
                                       " lapsed or is in doubt; it registers anew on its next "
                                       "call");
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        ns.retry_at - std::chrono::steady_clock::now());
    return fail(ns.down->code,
                "memory node " + std::to_string(ns.id) + " is out of reach for this client: " +
                    (!ns.attached         ? "it has not been reached since this client started: "
                     : ns.generation == 0 ? "registering on it failed: "
                                          : "registering on it again failed: ") +
                    detail::describe(*ns.down) + "; tried again by a call in " +
                    std::to_string(std::max<std::int64_t>(left.count(), 0)) + " ms or later");
  }

  // Where a call on chain[k, ...) must stop: the first block whose node is out of reach for this
  // client after before_op() (in doubt, registering there failed), or chain.size(). A
  // super-segment's blocks share a node, so only heads are looked at.
  [[nodiscard]] std::size_t reachable_end(std::span<const H> chain, std::size_t k) const {
    if (!any_in_doubt()) return chain.size();
    for (std::size_t s = k - k % super_segment; s < chain.size(); s += super_segment) {
      if (nodes_[place_node(chain[s])].broken) return std::max(s, k);
    }
    return chain.size();
  }
  // How many leading refs a read or pin can use: located ones, up to the first on a node out of
  // reach for this client (a pool's refs may come from another client's lookup); where that is
  // the first, the failure that says why.
  [[nodiscard]] result<std::size_t> usable_refs(std::span<const block_ref> refs) {
    std::size_t usable = 0;
    while (usable < refs.size() && refs[usable].known() && !node_of(refs[usable].node).broken) {
      ++usable;
    }
    if (usable < refs.size() && refs[usable].known()) {
      if (usable == 0) return out_of_reach(node_of(refs[0].node));
      ++stats_.out_of_reach_cuts;
    }
    return usable;
  }
  [[nodiscard]] bool any_in_doubt() const noexcept {
    return std::any_of(nodes_.begin(), nodes_.end(),
                       [](const node_state& ns) { return ns.broken; });
  }
  [[nodiscard]] const node_state& home_of(std::span<const H> chain, std::size_t k) const {
    return nodes_[place_node(chain[k - k % super_segment])];
  }

  // A call of this client threw midway on node `ns` and nothing of it is in flight: settle the
  // entry it left as recovery would a dead client's, but at once and without declaring it dead
  // (which on a fencing node would cut off every client sharing this transport): each chunk the
  // entry's incarnation owns is settled and freed, then the entry. Stops at the first step that
  // fails or loses a race, leaving the rest to others' recovery (the entry stops heartbeating).
  result<void> settle_own_entry(node_state& ns) {
    using index_layout::client_state;
    using index_layout::client_word;
    const std::uint64_t me = ns.client;
    const std::uint64_t inc = ns.incarnation & index_layout::mask(22);
    std::uint64_t word = 0;
    auto read_word = [&]() -> result<void> {
      return for_each_client_read(
          ns, std::span(&me, 1), 0, 8,
          [&](std::uint64_t, const local_buffer& buf) { word = detail::index::load64(buf.data); });
    };
    if (auto ok = read_word(); !ok) return ok;
    const client_word w = client_word::decode(word);
    if (w.state != client_state::live || (w.incarnation & index_layout::mask(22)) != inc) {
      return {};  // declared dead meanwhile (or recovered): others' now
    }
    std::vector<std::pair<std::uint64_t, std::uint64_t>> owned;  // chunk, word
    if (auto ok = for_each_chunk(ns,
                                 [&](std::uint64_t k, std::uint64_t cword) -> result<void> {
                                   const auto cw = index_layout::chunk_word::decode(cword);
                                   if (cw.state == index_layout::chunk_state::owned &&
                                       cw.owner == me &&
                                       (cw.incarnation & index_layout::mask(22)) == inc) {
                                     owned.emplace_back(k, cword);
                                   }
                                   return {};
                                 });
        !ok) {
      return ok;
    }
    for (const auto& [k, cword] : owned) {
      auto done = recover_chunk(ns, k, cword);
      if (!done) return std::move(done).take_failure();
      if (!*done) return {};  // a race moved a word: the rest is left to recovery
    }
    // The entry's hazard words are cleared by whoever takes it next (register_on); a reclaimer
    // reads those of live entries only.
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    const local_buffer old = take(8);
    b.cas(client_ptr(ns, me), word, client_word{client_state::free, w.incarnation, 0}.encode(),
          old);
    if (auto ok = run(b, rts, "settle.free"); !ok) return ok;
    if (detail::index::load64(old.data) == word) ++stats_.settled_own;
    return {};
  }

  // Reads every client word; declares dead those whose word stood still for a lease (or every
  // other live client when `everyone`). A dead entry is recovered once it has been dead for
  // recovery_delay (a client checks its lease before every round, so one declared dead while
  // only slow has stopped by then), at once when its memory node fenced it (its fence word
  // names the dead incarnation: the node cut it off), or at once when `everyone` (the clients
  // are known stopped): its chunks' slabs and reservations are settled, its chunks freed, then
  // the entry.
  result<void> scan_clients(node_state& ns, bool everyone) {
    using index_layout::client_state;
    using index_layout::client_word;
    std::vector<std::uint64_t> words, fences;
    if (auto ok = read_client_words(ns, words, ns.fences ? &fences : nullptr); !ok) return ok;
    const auto now = std::chrono::steady_clock::now();
    const auto long_ago = now - cfg_.recovery_delay - cfg_.lease;
    std::vector<std::uint64_t> due;  // dead for a lease: recover
    for (std::uint64_t id = 0; id < words.size(); ++id) {
      const client_word w = client_word::decode(words[id]);
      auto& watch = ns.watch[id];
      if (w.state == client_state::dead || w.state == client_state::fenced) {
        if (watch.word != words[id] || watch.since == std::chrono::steady_clock::time_point{}) {
          watch = {words[id], everyone ? long_ago : now};
        }
        if (now - watch.since >= cfg_.recovery_delay) {
          due.push_back(id);
        } else if (ns.fences && index_layout::fence_word::names(fences[id], w.incarnation)) {
          due.push_back(id);
          if (!watch.fenced) ++stats_.fenced_recoveries;
          watch.fenced = true;
        }
        continue;
      }
      if (w.state != client_state::live || (id == ns.client && ns.registered && !ns.broken)) {
        watch = {words[id], now};
        continue;
      }
      if (watch.word != words[id]) {
        watch = {words[id], now};
        if (!everyone) continue;
      }
      if (everyone || now - watch.since >= cfg_.lease) {
        reset_round();
        unsigned rts = 0;
        pooled_batch b_held(*this);
        auto& b = *b_held;
        const local_buffer old = take(8);
        const std::uint64_t dead_word =
            client_word{client_state::dead, w.incarnation, w.heartbeat}.encode();
        b.cas(client_ptr(ns, id), words[id], dead_word, old);
        if (auto ok = run(b, rts); !ok) return ok;
        if (detail::index::load64(old.data) == words[id]) {
          ++stats_.declared_dead;
          watch = {dead_word, everyone ? long_ago : now};
          if (everyone) due.push_back(id);
        }
      }
    }
    if (due.empty()) return {};
    // Chunk words first, client words second: a chunk is recovered only while its owner's entry
    // reads dead in the incarnation that took it (never merely "not live": the entry may have
    // been freed and taken again since the chunk word was read).
    std::vector<bool> is_due(ns.geo.clients, false);
    for (std::uint64_t id : due) is_due[id] = true;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> owned;  // chunk, word
    if (auto ok = for_each_chunk(ns,
                                 [&](std::uint64_t k, std::uint64_t word) -> result<void> {
                                   const auto cw = index_layout::chunk_word::decode(word);
                                   if (cw.state == index_layout::chunk_state::owned &&
                                       cw.owner < is_due.size() && is_due[cw.owner]) {
                                     owned.emplace_back(k, word);
                                   }
                                   return {};
                                 });
        !ok) {
      return ok;
    }
    std::vector<std::uint64_t> fresh;
    if (auto ok = read_client_words(ns, fresh); !ok) return ok;
    std::vector<bool> unfinished(ns.geo.clients, false);
    for (const auto& [k, word] : owned) {
      const auto cw = index_layout::chunk_word::decode(word);
      const client_word ow = client_word::decode(fresh[cw.owner]);
      const bool dead = ow.state == client_state::dead || ow.state == client_state::fenced;
      if (!dead ||
          (ow.incarnation & index_layout::mask(22)) != (cw.incarnation & index_layout::mask(22))) {
        continue;
      }
      auto done = recover_chunk(ns, k, word);
      if (!done) return std::move(done).take_failure();
      if (!*done) unfinished[cw.owner] = true;
    }
    for (std::uint64_t id : due) {
      if (unfinished[id]) continue;
      const client_word w = client_word::decode(fresh[id]);
      if (w.state != client_state::dead && w.state != client_state::fenced) continue;
      reset_round();
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      const local_buffer old = take(8);
      b.cas(client_ptr(ns, id), fresh[id],
            client_word{client_state::free, w.incarnation, 0}.encode(), old);
      if (auto ok = run(b, rts); !ok) return ok;
    }
    return {};
  }

  // READs `items` items of `item_bytes` from `offset` of node `ns`'s region, in windows of a
  // quarter of the scratch memory at most, and calls f(first item, window) for each.
  template <class F>
  result<void> for_each_window(node_state& ns, std::uint64_t offset, std::uint64_t item_bytes,
                               std::uint64_t items, F&& f) {
    const std::uint64_t per = std::max<std::uint64_t>(1, (cfg_.scratch_bytes / 4) / item_bytes);
    for (std::uint64_t first = 0; first < items; first += per) {
      const std::uint64_t count = std::min(per, items - first);
      scratch_mark mark(*this);
      reset_round();
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      const local_buffer buf = take(count * item_bytes);
      b.read(remote_ptr(ns.id, offset + first * item_bytes), buf);
      if (auto ok = run(b, rts); !ok) return ok;
      if (auto ok = f(first, buf); !ok) return ok;
    }
    return {};
  }

  // Calls f(slot, its word1) for every slot of the node's groups, then after() once per window
  // of groups read (one READ each, group headers skipped).
  template <class F, class After>
  result<void> for_each_slot(node_state& ns, F&& f, After&& after) {
    return for_each_window(
        ns, ns.groups_off, index_layout::group_stride, ns.geo.groups,
        [&](std::uint64_t first, const local_buffer& buf) -> result<void> {
          for (std::uint64_t g = 0; g < buf.size / index_layout::group_stride; ++g) {
            for (std::uint64_t q = 0; q < index_layout::slots_per_group; ++q) {
              const std::uint64_t at = g * index_layout::group_stride +
                                       index_layout::group_header_bytes +
                                       q * index_layout::slot_bytes;
              f(remote_ptr(ns.id, ns.groups_off + first * index_layout::group_stride + at),
                detail::index::load64(buf.data + at + 8));
            }
          }
          return after();
        });
  }

  // Calls f(chunk index, chunk word) for every chunk of the node.
  template <class F>
  result<void> for_each_chunk(node_state& ns, F&& f) {
    return for_each_window(
        ns, ns.chunks_off, index_layout::chunk_entry_bytes, ns.geo.chunks,
        [&](std::uint64_t first, const local_buffer& table) -> result<void> {
          for (std::uint64_t i = 0; i < table.size / index_layout::chunk_entry_bytes; ++i) {
            const std::uint64_t word =
                detail::index::load64(table.data + i * index_layout::chunk_entry_bytes);
            if (auto ok = f(first + i, word); !ok) return ok;
          }
          return {};
        });
  }

  // Returns whether the chunk is settled and free now.
  result<bool> recover_chunk(node_state& ns, std::uint64_t k, std::uint64_t word) {
    const std::uint32_t owner = index_layout::chunk_word::decode(word).owner;
    auto unsettled = settle_slabs(
        ns, k, [owner](std::uint32_t o) { return o == owner; }, false, word);
    if (!unsettled) return std::move(unsettled).take_failure();
    if (*unsettled > 0) return false;  // a race moved a word meanwhile: the next scan retries
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    const local_buffer old = take(8);
    b.cas(chunk_ptr(ns, k), word, 0, old);
    if (auto ok = run(b, rts); !ok) return std::move(ok).take_failure();
    if (detail::index::load64(old.data) != word) return false;
    ++stats_.recovered_chunks;
    return true;
  }

  // Reads chunk k's 64 records and their slots and repairs what crashed clients left: slabs
  // HELD by an owner `gone(owner)` says is gone (published slot: LIVE; reserved slot: back to
  // EMPTY, then the slab FREE; else FREE), and EVICTING slabs no slot refers to (a reclaimer died
  // between its two steps: FREE, and the parent loses the child). Returns how many repairs lost
  // a race (0: the chunk is settled).
  // With `evictors_gone` (every client is known stopped), EVICTING slabs still published are
  // rolled back to LIVE too: their evictor died between its two steps.
  // `chunk_word` (recovery of a dead owner's chunk: the word naming it; 0: no check) is READ
  // again after the records, and nothing is repaired unless it still names that owner: a slow
  // recoverer may settle a chunk that another has already settled and freed, whose owner entry
  // was freed and taken again under the same id, and whose new owner took slabs from it. Its
  // HELD slabs name that same id, and would be taken for the dead owner's. While the chunk word
  // stands, the records' words 0-5 are written by nobody (only a chunk's owner writes them, as
  // it takes a FREE slab), so the one READ of all 64 is not torn as an evict sample may be.
  template <class Gone>
  result<std::size_t> settle_slabs(node_state& ns, std::uint64_t k, Gone&& gone,
                                   bool evictors_gone = false, std::uint64_t chunk_word = 0) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    using index_layout::slot_state;
    using index_layout::slot_word;
    constexpr std::size_t slab_at = offsetof(index_layout::record, slab);
    scratch_mark mark(*this);
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    const std::uint64_t first = k * index_layout::chunk_slabs;
    const local_buffer recs = take(index_layout::chunk_slabs * index_layout::record_bytes);
    b.read(record_ptr(ns.id, first), recs);
    if (auto ok = run(b, rts, "settle.records"); !ok) return std::move(ok).take_failure();
    struct todo {
      std::uint64_t slab;
      index_layout::record rec;
      local_buffer slot;
      local_buffer old;  // first repair's answer
      std::uint64_t expected = 0;
      bool then_free = false;    // HELD: FREE once the reservation is reset (or there is none)
      bool rolled_back = false;  // EVICTING -> LIVE: the parent keeps its child
    };
    std::vector<todo> todos;
    reset_round();
    pooled_batch c_held(*this);
    auto& c = *c_held;
    for (std::uint64_t i = 0; i < index_layout::chunk_slabs; ++i) {
      index_layout::record rec;
      std::memcpy(&rec, recs.data + i * index_layout::record_bytes, sizeof rec);
      const slab_word sw = slab_word::decode(rec.slab);
      const bool held = sw.state == slab_state::held && gone(sw.owner);
      if (!held && sw.state != slab_state::evicting) continue;
      todo t{first + i, rec, {}, {}, 0, false, false};
      if (slot_in_range(ns, rec.slot_at)) {
        t.slot = take(index_layout::slot_bytes);
        c.read(remote_ptr::from_raw(rec.slot_at), t.slot);
      }
      todos.push_back(t);
    }
    if (todos.empty()) return std::size_t{0};
    local_buffer chunk_now;
    if (chunk_word != 0) {
      chunk_now = take(8);
      c.read(chunk_ptr(ns, k), chunk_now);
    }
    if (overflow_) return scratch_full();
    if (auto ok = run(c, rts); !ok) return std::move(ok).take_failure();
    if (chunk_word != 0 && detail::index::load64(chunk_now.data) != chunk_word) {
      return std::size_t{1};  // settled and handed on meanwhile: not this owner's any more
    }
    // First repairs: reservations reset, published-but-HELD finished, orphaned EVICTING freed.
    reset_round();
    pooled_batch d_held(*this);
    auto& d = *d_held;
    std::vector<todo*> posted;
    for (todo& t : todos) {
      const slab_word sw = slab_word::decode(t.rec.slab);
      slot_word w1{};
      if (t.slot.size > 0) w1 = slot_word::decode(detail::index::load64(t.slot.data + 8));
      const bool refers = t.slot.size > 0 &&
                          (w1.state == slot_state::valid || w1.state == slot_state::tombstone) &&
                          w1.ptr == t.slab;
      const remote_ptr slab_ptr = record_ptr(ns.id, t.slab) + slab_at;
      if (sw.state == slab_state::evicting) {
        if (refers && evictors_gone && w1.state == slot_state::valid) {
          t.rolled_back = true;
          t.old = take(8);
          t.expected = t.rec.slab;
          d.cas(
              slab_ptr, t.rec.slab,
              slab_word{slab_state::live, static_cast<std::uint8_t>(sw.version + 1), 0, 0}.encode(),
              t.old);
          posted.push_back(&t);
          continue;
        }
        if (refers) continue;  // being unpublished or waiting for reclaim: not ours to touch
        t.old = take(8);
        t.expected = t.rec.slab;
        d.cas(slab_ptr, t.rec.slab, slab_word{slab_state::free, sw.version, 0, 0}.encode(), t.old);
        posted.push_back(&t);
        continue;
      }
      if (refers && w1.state == slot_state::valid) {  // published slot, HELD record: finish it
        t.old = take(8);
        t.expected = t.rec.slab;
        d.cas(slab_ptr, t.rec.slab, slab_word{slab_state::live, sw.version, 0, sw.count}.encode(),
              t.old);
        posted.push_back(&t);
        continue;
      }
      if (refers) continue;  // a tombstone of a HELD slab cannot happen; the audit reports it
      t.then_free = true;
      if (t.slot.size > 0 && w1.state == slot_state::reserved &&
          index_layout::reserved_owner(w1.ptr) == sw.owner) {
        t.old = take(8);
        t.expected = w1.encode();
        d.cas(remote_ptr::from_raw(t.rec.slot_at) + 8, w1.encode(),
              w1.moved_to(slot_state::empty, 0, 0).encode(), t.old);
        posted.push_back(&t);
      }
    }
    if (overflow_) return scratch_full();
    if (auto ok = run(d, rts); !ok) return std::move(ok).take_failure();
    std::size_t lost = 0;
    for (todo* t : posted) {
      if (detail::index::load64(t->old.data) != t->expected) {
        ++lost;
        t->then_free = false;  // the slot moved (its owner was not gone after all): leave it
      }
    }
    // Then: HELD slabs without a reservation FREE (their children's FAAs on a record never
    // published are void: the count starts over); parents of freed EVICTING slabs lose a child.
    reset_round();
    pooled_batch e_held(*this);
    auto& e = *e_held;
    std::vector<todo*> freed;
    for (todo& t : todos) {
      const slab_word sw = slab_word::decode(t.rec.slab);
      const remote_ptr slab_ptr = record_ptr(ns.id, t.slab) + slab_at;
      if (t.then_free) {
        t.old = take(8);
        t.expected = t.rec.slab;
        e.cas(slab_ptr, t.rec.slab, slab_word{slab_state::free, sw.version, 0, 0}.encode(), t.old);
        freed.push_back(&t);
      } else if (sw.state == slab_state::evicting && t.old.size > 0 && !t.rolled_back &&
                 detail::index::load64(t.old.data) == t.expected) {
        post_parent_release(e, t.rec);
      }
    }
    if (overflow_) return scratch_full();
    if (auto ok = run(e, rts); !ok) return std::move(ok).take_failure();
    for (todo* t : freed) {
      if (detail::index::load64(t->old.data) != t->expected) {
        ++lost;
      } else {
        ++stats_.recovered_slabs;
      }
    }
    return lost;
  }

  // The parent of a record whose slab was just freed from EVICTING counts one child less:
  // exactly once, by whoever won that CAS (a reclaimer, or a settle after a reclaimer died).
  template <class Batch>
  void post_parent_release(Batch& b, const index_layout::record& rec) {
    if (rec.parent == 0 || rec.checksum != detail::index::record_checksum(rec)) return;
    const remote_ptr parent = remote_ptr::from_raw(rec.parent);
    if (parent.node() >= node_index_.size() || node_index_[parent.node()] == npos) return;
    // On a node out of reach: not sent (run() would refuse the whole batch, the settling on this
    // node with it). The parent keeps one child too many, which only keeps it from eviction
    // until recover_everything() counts again.
    const node_state& home = nodes_[node_index_[parent.node()]];
    if (home.broken && home.down) {
      ++stats_.parent_releases_skipped;
      return;
    }
    b.faa(parent + offsetof(index_layout::record, slab), index_layout::count_minus_one, take(8));
  }

  // recover_everything(): settle the slabs of every chunk whose owner is not live (FREE chunks
  // too), and the foreign leftovers in this client's own chunks.
  result<void> sweep_slabs(node_state& ns) {
    std::vector<std::uint64_t> words;
    if (auto ok = read_client_words(ns, words); !ok) return ok;
    auto not_live = [&](std::uint32_t owner) {
      return owner >= words.size() || index_layout::client_word::decode(words[owner]).state !=
                                          index_layout::client_state::live;
    };
    return for_each_chunk(ns, [&](std::uint64_t k, std::uint64_t word) -> result<void> {
      const auto cw = index_layout::chunk_word::decode(word);
      if (cw.state == index_layout::chunk_state::owned && !not_live(cw.owner) &&
          cw.owner != ns.client) {
        return {};
      }
      auto r = settle_slabs(ns, k, not_live, true);
      if (!r) return std::move(r).take_failure();
      return {};
    });
  }

  // ---- chunks and slabs ------------------------------------------------------------------------

  // A HELD slab on node `ns` for an insert; takes a chunk when none of ours has one left.
  result<std::pair<std::uint64_t, std::uint64_t>> take_slab(node_state& ns) {
    for (auto& ch : ns.chunks) {
      if (!ch.free.empty()) {
        auto s = ch.free.back();
        ch.free.pop_back();
        ++ch.in_use;
        return s;
      }
    }
    if (auto ok = take_chunk(ns); !ok) return std::move(ok).take_failure();
    for (auto& ch : ns.chunks) {
      if (!ch.free.empty()) {
        auto s = ch.free.back();
        ch.free.pop_back();
        ++ch.in_use;
        return s;
      }
    }
    return fail(errc::out_of_range, "memory node " + std::to_string(ns.id) + " has no free slab");
  }

  // A slab taken for an insert and not used goes back to the chunk's free list.
  void give_back_slab(node_state& ns, std::pair<std::uint64_t, std::uint64_t> s) {
    for (auto& ch : ns.chunks) {
      if (s.first / index_layout::chunk_slabs == ch.index) {
        ch.free.push_back(s);
        --ch.in_use;
        return;
      }
    }
  }
  void slab_used(node_state& ns, std::uint64_t slab) {
    for (auto& ch : ns.chunks) {
      if (slab / index_layout::chunk_slabs == ch.index) {
        --ch.in_use;
        return;
      }
    }
  }

  // Claims a chunk (FAA on the cursor while fresh chunks remain, else a scan for a free one) and
  // its FREE slabs (CAS FREE -> HELD(this client)). A scan goes round the whole chunk table
  // from a random place, up to scan_window entries per round trip, before it says the node has
  // no free chunk: a full node answers no_slabs only when no chunk is free anywhere (or the eight
  // FREE chunks it tried held no FREE slab). (Until
  // 2026-12-05 it read one window of 256 entries and gave up when none was free there: on a
  // node of more chunks an insert could stop with no_slabs, and its caller evict, while free
  // chunks lay outside the window.)
  result<void> take_chunk(node_state& ns) {
    using index_layout::chunk_state;
    using index_layout::chunk_word;
    const std::uint64_t table = ns.geo.chunks;
    for (unsigned attempt = 0; attempt < 8; ++attempt) {
      scratch_mark mark(*this);
      std::uint64_t k = 0;
      std::uint64_t expected = 0;
      if (!ns.chunks_exhausted) {
        auto first = advance_cursor(ns, 1);
        if (!first) return std::move(first).take_failure();
        if (*first >= table) continue;  // through the table: scan
        k = *first;
      } else {
        // From a random place each time: a FREE chunk may hold no FREE slab (every slab
        // published), and the FREE chunks after it often hold none either.
        auto free_chunk = scan_for_free_chunk(ns, table == 0 ? 0 : rng_() % table);
        if (!free_chunk) return std::move(free_chunk).take_failure();
        if (!free_chunk->has_value()) {
          return fail(errc::out_of_range,
                      "memory node " + std::to_string(ns.id) + " has no free chunk");
        }
        k = (**free_chunk).first;
        expected = (**free_chunk).second;
      }
      const std::pair<std::uint64_t, std::uint64_t> target{k, expected};
      auto got = claim_chunks(ns, std::span(&target, 1));
      if (!got) return std::move(got).take_failure();
      if (*got == 0) continue;  // someone else's now
      if (!ns.chunks.back().free.empty()) return {};
      // Nothing free in it: settle what crashed clients left, give it back, try another.
      std::vector<std::uint64_t> words;
      if (auto ok = read_client_words(ns, words); !ok) return ok;
      auto gone = [&](std::uint32_t owner) {
        return owner >= words.size() || index_layout::client_word::decode(words[owner]).state !=
                                            index_layout::client_state::live;
      };
      if (auto ok = settle_slabs(ns, k, gone); !ok) return std::move(ok).take_failure();
      if (auto ok = release_chunks(ns, false); !ok) return ok;
    }
    return fail(errc::out_of_range,
                "memory node " + std::to_string(ns.id) + " has no chunk with a free slab");
  }

  // Reads the chunk table from entry `next` on, round the whole table, up to scan_window
  // entries per round trip, until it meets a FREE chunk: its index and word (none when no entry
  // was FREE).
  static constexpr std::uint64_t scan_window = 1024;  // 16 KiB of chunk entries
  result<std::optional<std::pair<std::uint64_t, std::uint64_t>>> scan_for_free_chunk(
      node_state& ns, std::uint64_t next) {
    using index_layout::chunk_state;
    using index_layout::chunk_word;
    const std::uint64_t table = ns.geo.chunks;
    std::uint64_t unscanned = table;
    const std::uint64_t entry = index_layout::chunk_entry_bytes;
    while (unscanned > 0) {
      scratch_mark mark(*this);
      const std::uint64_t fits = std::max<std::uint64_t>(1, scratch_left() / 2 / entry);
      const std::uint64_t n = std::min({unscanned, scan_window, fits});
      reset_round();
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      const std::uint64_t first_len = std::min(n, table - next);  // then from entry 0
      const local_buffer bytes = take(n * entry);
      if (overflow_) return scratch_full();
      b.read(chunk_ptr(ns, next), bytes.sub(0, first_len * entry));
      if (first_len < n)
        b.read(chunk_ptr(ns, 0), bytes.sub(first_len * entry, (n - first_len) * entry));
      if (auto ok = run(b, rts, "claim.scan"); !ok) return std::move(ok).take_failure();
      for (std::uint64_t i = 0; i < n; ++i) {
        const std::uint64_t w = detail::index::load64(bytes.data + i * entry);
        if (chunk_word::decode(w).state != chunk_state::free) continue;
        return std::optional(std::pair{(next + i) % table, w});
      }
      next = (next + n) % table;
      unscanned -= n;
    }
    return std::optional<std::pair<std::uint64_t, std::uint64_t>>{};
  }

  // A claim's CASes failed as a round (a timeout, a lost connection): some may have run, so
  // chunks may be this client's that it does not know of, or HELD slabs in chunks it gives
  // back. The node's registration is in doubt, as after a failed insert round: left to
  // recovery, which settles what its chunks hold, and registered anew on the next call.
  result<void> put_in_doubt(node_state& ns, result<void> failed) {
    ns.broken = true;
    return failed;
  }

  // Makes sure this client holds at least `n` free slabs on ns: while fresh chunks remain (the
  // cursor is not through the table), claims every chunk the shortfall needs in the round trips
  // of one claim (FAA the cursor by their number; CAS each chunk and READ its records; CAS their
  // free slabs), up to what one batch holds; when it needs at least `least` chunks (an insert
  // leaves a single chunk to take_slab(), which also scans once the cursor is through). Best
  // effort: take_slab() claims one chunk at a time for whatever is still missing (chunks taken
  // by a scanning client meanwhile, the table's end).
  result<void> reserve_slabs(node_state& ns, std::size_t n, std::uint64_t least = 2) {
    const std::size_t have = free_slabs(ns);
    if (have >= n || ns.chunks_exhausted) return {};
    const std::size_t per_batch =
        std::max<std::size_t>(1, cfg_.max_ops_per_node / index_layout::chunk_slabs);
    const std::uint64_t want = std::min<std::uint64_t>(
        {(n - have + index_layout::chunk_slabs - 1) / index_layout::chunk_slabs, per_batch,
         scratch_left() / (2 * index_layout::chunk_slabs * index_layout::record_bytes)});
    if (want < least) return {};
    scratch_mark mark(*this);
    auto first = advance_cursor(ns, want);
    if (!first) return std::move(first).take_failure();
    if (*first >= ns.geo.chunks) return {};
    std::vector<std::pair<std::uint64_t, std::uint64_t>> targets;  // fresh: chunk words are 0
    for (std::uint64_t k = *first; k < std::min(*first + want, ns.geo.chunks); ++k) {
      targets.emplace_back(k, 0);
    }
    // A chunk a scanning client took first is its own (scans start once the cursor is through);
    // a claimed chunk with nothing free goes back with the used-up ones (release_unused()).
    auto got = claim_chunks(ns, targets);
    if (!got) return std::move(got).take_failure();
    return {};
  }

  // Upkeep: claims fresh chunks (reserve_slabs) while this client holds fewer than
  // cfg_.slab_reserve free slabs on ns, so that the inserts that follow find theirs held. Once
  // the cursor is through the table the node has been full and a reserve would hold capacity
  // that inserts elsewhere need (they evict for it): from then on it claims nothing and gives
  // back what it holds beyond what an insert leaves (less than a chunk's worth). A fresh chunk
  // won with nothing free (a scanning client used it and gave it back first) goes back at once.
  result<void> top_up_slabs(node_state& ns) {
    if (cfg_.slab_reserve == 0 || ns.broken) return {};
    if (!ns.chunks_exhausted) {
      if (auto ok = reserve_slabs(ns, cfg_.slab_reserve, 1); !ok) return ok;
      if (!ns.chunks_exhausted) return release_chunks(ns, false);
    }
    while (free_slabs(ns) >= index_layout::chunk_slabs) {
      auto most = std::max_element(
          ns.chunks.begin(), ns.chunks.end(),
          [](const auto& x, const auto& y) { return x.free.size() < y.free.size(); });
      if (most == ns.chunks.end() || most->in_use > 0 || most->free.empty()) break;
      if (auto ok = return_free_slabs(ns, *most); !ok) return put_in_doubt(ns, std::move(ok));
    }
    return release_chunks(ns, false);
  }
  [[nodiscard]] static std::size_t free_slabs(const node_state& ns) noexcept {
    std::size_t have = 0;
    for (const auto& ch : ns.chunks) have += ch.free.size();
    return have;
  }

  // FAA on the chunk cursor by n: the first of the n fresh chunks it hands out (at or past the
  // table's end when they ran out; then the client scans for free chunks from now on).
  result<std::uint64_t> advance_cursor(node_state& ns, std::uint64_t n) {
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    const local_buffer old = take(8);
    b.faa(remote_ptr(ns.id, ns.control_off), n, old);
    if (auto ok = run(b, rts, "claim.cursor"); !ok) return std::move(ok).take_failure();
    const std::uint64_t first = detail::index::load64(old.data);
    if (first + n >= ns.geo.chunks) ns.chunks_exhausted = true;  // the cursor is through
    return first;
  }

  // Claims chunks (index, chunk word as read: 0 for a fresh one) in one round trip, CAS to this
  // client's word with a READ of each one's records, then their FREE slabs in another; the
  // chunks won are appended to ns.chunks. Returns how many were won.
  result<std::size_t> claim_chunks(
      node_state& ns, std::span<const std::pair<std::uint64_t, std::uint64_t>> targets) {
    using index_layout::chunk_state;
    using index_layout::chunk_word;
    const std::uint64_t mine = chunk_word{chunk_state::owned, ns.client, ns.incarnation}.encode();
    std::vector<std::pair<local_buffer, local_buffer>> reads;  // chunk CAS answer, records
    reset_round();
    {
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      for (const auto& [k, expected] : targets) {
        reads.emplace_back(take(8), take(index_layout::chunk_slabs * index_layout::record_bytes));
        b.cas(chunk_ptr(ns, k), expected, mine, reads.back().first);
        b.read(record_ptr(ns.id, k * index_layout::chunk_slabs), reads.back().second);
      }
      if (overflow_) return scratch_full();
      if (auto ok = run(b, rts, "claim.chunks"); !ok) {
        return std::move(put_in_doubt(ns, std::move(ok))).take_failure();
      }
    }
    std::vector<std::pair<std::size_t, local_buffer>> claimed;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      if (detail::index::load64(reads[i].first.data) != targets[i].second) continue;
      ++stats_.chunks_taken;
      typename node_state::owned_chunk ch;
      ch.index = targets[i].first;
      ch.word = mine;
      ns.chunks.push_back(std::move(ch));
      claimed.emplace_back(ns.chunks.size() - 1, reads[i].second);
    }
    if (claimed.empty()) return std::size_t{0};
    if (auto ok = claim_free_slabs(ns, claimed); !ok) return std::move(ok).take_failure();
    return claimed.size();
  }

  // CAS FREE(v) -> HELD(this client, v + 1) on every FREE slab of chunks of ns.chunks (index,
  // records as read), in one round trip.
  result<void> claim_free_slabs(node_state& ns,
                                std::span<const std::pair<std::size_t, local_buffer>> claimed) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    struct attempt {
      std::size_t chunk;
      std::uint64_t slab, expect, held;
      local_buffer old;
    };
    std::vector<attempt> tries;
    tries.reserve(claimed.size() * index_layout::chunk_slabs);
    for (const auto& [chunk, recs] : claimed) {
      const std::uint64_t first = ns.chunks[chunk].index * index_layout::chunk_slabs;
      for (std::uint64_t i = 0; i < index_layout::chunk_slabs; ++i) {
        const std::uint64_t w = detail::index::load64(recs.data + i * index_layout::record_bytes +
                                                      offsetof(index_layout::record, slab));
        const slab_word sw = slab_word::decode(w);
        if (sw.state != slab_state::free) continue;
        const std::uint64_t held =
            slab_word{slab_state::held, static_cast<std::uint8_t>(sw.version + 1), ns.client, 0}
                .encode();
        tries.push_back({chunk, first + i, w, held, take(8)});
        b.cas(record_ptr(ns.id, first + i) + offsetof(index_layout::record, slab), w, held,
              tries.back().old);
      }
    }
    if (tries.empty()) return {};
    if (overflow_) return scratch_full();
    if (auto ok = run(b, rts, "claim.slabs"); !ok) return put_in_doubt(ns, std::move(ok));
    for (const attempt& a : tries) {
      auto& free = ns.chunks[a.chunk].free;
      if (free.empty()) free.reserve(index_layout::chunk_slabs);
      if (detail::index::load64(a.old.data) == a.expect) free.emplace_back(a.slab, a.held);
    }
    for (const auto& c : claimed) {
      auto& free = ns.chunks[c.first].free;
      std::reverse(free.begin(), free.end());  // hand out in ascending order
    }
    return {};
  }

  // HELD -> FREE for the chunk's slabs this client holds but does not use.
  result<void> return_free_slabs(node_state& ns, typename node_state::owned_chunk& ch) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    if (ch.free.empty()) return {};
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    for (const auto& [slab, held] : ch.free) {
      const slab_word sw = slab_word::decode(held);
      b.cas(record_ptr(ns.id, slab) + offsetof(index_layout::record, slab), held,
            slab_word{slab_state::free, sw.version, 0, 0}.encode(), take(8));
    }
    ch.free.clear();
    if (overflow_) return scratch_full();
    return run(b, rts);
  }

  // Chunks with no free slab and none in use go back to FREE (all of them when `all`). They
  // leave ns.chunks before the round runs: when it fails (or scratch ran out), some may still be
  // this client's on the node, forgotten here, so the node is put in doubt (recovery settles
  // them). (Until 2026-12-07 it was not: such a chunk stayed owned by a live client for good.)
  // At most max_ops_per_node of them a round, and what scratch holds (until 2026-12-07 all in
  // one: an insert that used up more chunks than that had its give-back refused).
  result<void> release_chunks(node_state& ns, bool all) {
    const auto releasable = [all](const typename node_state::owned_chunk& ch) {
      return ch.in_use == 0 && (all || ch.free.empty());
    };
    while (std::any_of(ns.chunks.begin(), ns.chunks.end(), releasable)) {
      scratch_mark mark(*this);
      reset_round();
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      // Room kept for the heartbeat run() may send first (8 bytes a node); nothing is taken
      // off the list when scratch has no room at all (the chunks stay listed, and go later).
      const std::size_t spare = 8 * nodes_.size() + 64;
      if (overflow_ || scratch_left() < spare + 8) return scratch_full();
      const std::size_t most = std::min(cfg_.max_ops_per_node, (scratch_left() - spare) / 8);
      std::size_t n = 0;
      std::erase_if(ns.chunks, [&](const typename node_state::owned_chunk& ch) {
        if (n == most || !releasable(ch)) return false;
        b.cas(chunk_ptr(ns, ch.index), ch.word, 0, take(8));
        ++n;
        return true;
      });
      if (auto ok = run(b, rts, "release"); !ok) return put_in_doubt(ns, std::move(ok));
    }
    return {};
  }

  // Gives back the chunks whose slabs are all used. `in_passing` (the end of an insert that
  // found the slabs it needed): only where upkeep would not, or where more than
  // kept_used_chunks wait for it; upkeep (top_up_slabs) gives them back, outside any request
  // (until 2026-12-07 every insert that used a chunk's last slab did it: one round trip more
  // inside that insert). Not on a node whose fresh chunks were all handed out: there other
  // clients find free slabs only in chunks given back, and slabs freed later in a chunk kept
  // here would be out of their reach until this client's upkeep.
  void release_unused(bool in_passing = false) {
    static constexpr std::size_t kept_used_chunks = 8;
    for (node_state& ns : nodes_) {
      if (ns.broken) continue;
      const bool full = ns.chunks_exhausted || ns.cursor_seen >= ns.geo.chunks;  // (or seen so)
      if (in_passing && cfg_.slab_reserve > 0 && !full &&
          std::count_if(ns.chunks.begin(), ns.chunks.end(), [](const auto& ch) {
            return ch.in_use == 0 && ch.free.empty();
          }) <= static_cast<std::ptrdiff_t>(kept_used_chunks)) {
        continue;
      }
      (void)release_chunks(ns, false);
    }
  }

  // ---- insert: both entry points ----------------------------------------------------------------

  // `known_parent`: chain[from - 1] as located at `seen`, or null (read it).
  [[nodiscard]] result<index_insert_result> insert_under(
      std::span<const H> chain, std::size_t from, std::span<const block_info> blocks,
      const block_ref* known_parent, std::chrono::steady_clock::time_point seen) {
    const doubt_if_thrown doubt(*this);
    index_insert_result r;
    r.blocks.reserve(blocks.size());
    const std::uint64_t rounds_before = rounds_run_;
    if (from > chain.size() || blocks.size() > chain.size() - from) {
      return fail(errc::invalid_argument, "insert: blocks beyond the end of the chain");
    }
    for (const block_info& bi : blocks) {
      if (bi.data.size > 0 && bi.data.size > block_bytes_) {
        return fail(errc::invalid_argument, "insert: a block's data (" +
                                                std::to_string(bi.data.size) +
                                                " bytes) exceeds the index's data slot of " +
                                                std::to_string(block_bytes_) + " bytes");
      }
    }
    // The lookup that located the parent, when it was this client's last operation: its reads
    // of the boundary segment are still in scratch, kept there for the first pass's round A
    // (while what is left of scratch holds a whole pass of that segment's blocks).
    const boundary_seen* from_lookup =
        same_lookup(chain, from, known_parent, seen) ? &boundary_ : nullptr;
    const std::uint64_t registrations = stats_.reregistrations;
    if (auto ok = before_op(from_lookup != nullptr ? boundary_.scratch_used : 0); !ok) {
      return std::move(ok).take_failure();
    }
    // Registered anew meanwhile (declared dead): nothing read before is used.
    if (stats_.reregistrations != registrations) from_lookup = nullptr;
    ++stats_.inserts;
    r.length = from;
    const std::size_t wanted_end = from + blocks.size();
    std::size_t end = wanted_end;
    // Blocks on a node out of reach (or under a parent there) are not tried: the insert stops
    // before them with insert_stop::unreachable; where nothing could be, it fails with why.
    auto cut_at_reach = [&](std::size_t k) {
      if (k >= end) return;
      const std::size_t reach = reachable_end(chain, k > 0 ? k - 1 : 0);
      if (reach >= end) return;
      ++stats_.out_of_reach_cuts;
      end = std::max(reach, k);
    };
    // The error of an insert that could publish nothing: block k's node (or its parent's) is
    // out of reach.
    auto unreachable_at = [&](std::size_t k) {
      return out_of_reach(home_of(chain, k > 0 && reachable_end(chain, k - 1) < k ? k - 1 : k));
    };
    cut_at_reach(from);
    if (end == from && from < wanted_end) return unreachable_at(from);
    parent_ref parent;
    // A parent found before this client took its node's layout may name a slab of another
    // region (the node restarted): read again (round A), as if unknown.
    if (known_parent != nullptr && from > 0) {
      const node_state& pn = node_of(known_parent->node);
      if (pn.layout_since < seen && known_parent->slab < pn.geo.slabs()) {
        parent = {*known_parent, seen};
      }
    }
    unsigned retries = 0;
    unsigned waits = 0;
    std::size_t k = from;
    auto pending_since = std::chrono::steady_clock::time_point{};
    while (k < end) {
      result<attempt_outcome> step = attempt_outcome{};
      {
        scratch_mark mark(*this);  // an attempt's buffers are not read after it
        step = insert_attempt(chain, k, end, blocks.subspan(k - from), parent, r, from_lookup);
      }
      if (from_lookup != nullptr) {  // the first pass only: what it did changed the buckets
        from_lookup = nullptr;
        used_ = 0;  // the later passes have the whole scratch
      }
      // (A node out of reach since before this pass is not a lapse: the pass kept off it.)
      const bool lapsed =
          lease_lost_ || std::any_of(nodes_.begin(), nodes_.end(),
                                     [](const node_state& s) { return s.broken && !s.down; });
      if (!step && !lapsed) {
        pass_.trim();
        release_unused();
        return std::move(step).take_failure();
      }
      attempt_outcome o = step ? *step : attempt_outcome{insert_stop::contention};
      if (lapsed) {
        // This client's entry on a node lapsed mid-insert: what it held there is left to
        // recovery; register anew and go on from what is published.
        parent = parent_ref{};
        if (++retries > cfg_.max_retries) {
          pass_.trim();
          release_unused();
          return step ? fail(errc::timed_out, "insert: this client's lease keeps lapsing")
                      : std::move(step).take_failure();
        }
        if (auto ok = before_op(); !ok) {
          pass_.trim();
          return std::move(ok).take_failure();
        }
        cut_at_reach(r.length);
        if (r.length >= end) {  // the rest is on a node out of reach now
          if (r.length > from) break;
          pass_.trim();
          release_unused();
          return unreachable_at(from);
        }
        if (o.stop == insert_stop::none) o.stop = insert_stop::contention;
      }
      const bool progressed = r.length > k;
      k = r.length;
      if (progressed) {
        retries = 0;
        pending_since = {};
      }
      if (o.stop == insert_stop::none) {
        if (!progressed && ++retries > cfg_.max_retries) {
          r.stop = insert_stop::contention;
          break;
        }
        continue;
      }
      if (o.stop == insert_stop::pending) {
        const auto now = std::chrono::steady_clock::now();
        if (pending_since == std::chrono::steady_clock::time_point{}) pending_since = now;
        if (now - pending_since < cfg_.pending_wait) {
          backoff(waits++);
          continue;
        }
      } else if (o.stop == insert_stop::contention && ++retries <= cfg_.max_retries) {
        ++stats_.lost_races;
        backoff(retries);
        continue;
      }
      r.stop = o.stop;
      break;
    }
    if (r.stop == insert_stop::none && r.length < wanted_end) r.stop = insert_stop::unreachable;
    pass_.trim();
    release_unused(r.stop != insert_stop::no_slabs);
    r.round_trips = static_cast<unsigned>(rounds_run_ - rounds_before);
    return r;
  }

  // ---- insert internals ------------------------------------------------------------------------

  struct new_block {
    std::size_t k = 0;
    place_t p;
    unsigned which = 0;  // 0: G1, 1: G2
    unsigned slot = 0;
    std::uint64_t word0_seen = 0;
    std::uint64_t empty_word = 0;  // word1 EMPTY as seen
    std::uint64_t reserved_word = 0;
    std::pair<std::uint64_t, std::uint64_t> slab{0, 0};  // slab, HELD word
    remote_ptr slot_at;                                  // the slot it takes (pick_slot)
    remote_ptr record_at;                                // its slab's record
    std::uint32_t children = 0;       // counted in its slab word by this insert (the next block)
    std::uint64_t overflow_seen = 0;  // its first group's overflow word, as round A read it
    bool sets_overflow = false;       // takes its second bucket at an offset not named there yet
    bool overflow_set = true;         // ... and round B's CAS (or another client) named it
    bool reserved = false;
    bool published = false;
    std::uint64_t valid_word = 0;
    std::uint64_t live_expected = 0;
    // Where the answers land in scratch (pointers, not local_buffers: a new_block is built per
    // block inserted, and its size is what building it costs). Read only after their round ran:
    // a pass that runs out of scratch (take() then answers an empty buffer at scratch's start,
    // not null) is abandoned before.
    const std::byte* reserve_old = nullptr;            // round B's reservation CAS
    const std::byte* answers = nullptr;                // round C's CASes: word0, word1, slab word
    const std::byte* recheck[2] = {nullptr, nullptr};  // its buckets (G1, G2) read again right
                                                       // after reserving; G2 only when it
                                                       // reserved there or its overflow word
                                                       // named its offset
    const std::byte* overflow_after = nullptr;         // else that word, read after its run's CASes
    bool second_unseen = false;  // ... and found naming its offset: G2 may hold a copy
  };

  // An insert pass's vectors, kept by the client from pass to pass (cleared by each); what a
  // pass of more than `kept` blocks grew is let go after its insert.
  struct pass_vectors {
    static constexpr std::size_t kept = 256;
    std::vector<place_t> placed;
    std::vector<std::pair<local_buffer, local_buffer>> buckets;
    std::vector<local_buffer> overflow_words;
    std::vector<new_block> todo;
    std::vector<place_t> todo_placed;
    void trim() noexcept {
      if (placed.capacity() > kept || todo.capacity() > kept) *this = pass_vectors{};
    }
  };

  // Block k of the chain was published by this call (blocks are published in chain order).
  void note_published(index_insert_result& r, std::size_t k) {
    if (!r.published_runs.empty() && r.published_runs.back().second == k) {
      ++r.published_runs.back().second;
    } else {
      r.published_runs.emplace_back(k, k + 1);
    }
    ++r.published;
    ++stats_.published;
  }
  [[nodiscard]] static bool published_by(const index_insert_result& r, std::size_t k) {
    return !r.published_runs.empty() && k >= r.published_runs.back().first &&
           k < r.published_runs.back().second;
  }

  // One pass over chain[k0, end): read, reserve, publish. Advances r.length past every block
  // now present; says why it stopped short.
  //   A: READ both buckets of the parent and of every block, and the overflow word of each
  //      segment's first group (the first buckets of consecutive blocks of a segment lie side by
  //      side: one READ for them all).
  //   B: for the first block WRITE a hazard on the parent, READ the parent's slot again, FAA +1
  //      its count; CAS into each overflow word the offsets of blocks taking their second bucket
  //      that it does not name yet; WRITE every block's record (those of consecutive slabs in
  //      one WRITE); for every block WRITE its data, CAS EMPTY -> RESERVED, READ its buckets again
  //      (another inserter of the same block?: its first in one READ after the last CAS of its run;
  //      its second at once where it reserved there or the overflow word named its offset, else
  //      that word after the run's READ); the record's slab word counts the next new block. A block
  //      whose offset its overflow word does not name after B, or names when its second bucket was
  //      not read again, is not published (the next pass reads them again).
  //   C: per node in chain order: CAS word0 (tag), CAS word1 RESERVED -> VALID, CAS the slab
  //      HELD -> LIVE; clear the parent's hazard with the last batch where it can.
  //   D: only where needed: undo what was not published, clear the hazard C did not.
  result<attempt_outcome> insert_attempt(std::span<const H> chain, std::size_t k0, std::size_t end,
                                         std::span<const block_info> info, parent_ref& parent,
                                         index_insert_result& r,
                                         const boundary_seen* looked = nullptr) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    using index_layout::slot_state;
    using index_layout::slot_word;
    attempt_outcome out;
    constexpr std::size_t slab_at = offsetof(index_layout::record, slab);
    // Round B's share of the per-node batch limit: data and record WRITEs, the reservation's
    // CAS, the second bucket's READ, the run's READs of first buckets and overflow word.
    constexpr std::size_t ops_per_block = 6;
    // A parent seen long ago may have been reclaimed since (a reclaimer waits reclaim_grace
    // after unpublishing): read it again rather than count a child in a reused record.
    if (parent.ref.known() &&
        std::chrono::steady_clock::now() - parent.seen > cfg_.reclaim_grace / 4) {
      parent = parent_ref{};
    }
    // Round A.
    reset_round();
    pooled_batch a_held(*this);
    auto& a = *a_held;
    const bool read_parent = k0 > 0 && !parent.ref.known();
    const std::size_t first_read = read_parent ? k0 - 1 : k0;
    if (k0 > 0) count_op(read_parent ? place(chain, k0 - 1).node : parent.ref.node, 3);
    std::size_t last = first_read;
    // (The pass's vectors are the client's, kept from pass to pass: no allocation per pass.)
    std::vector<place_t>& placed = pass_.placed;  // of the blocks read, from first_read
    placed.clear();
    for (std::size_t k = first_read; k < end; ++k) {
      const place_t p = place(chain, k);
      // One overflow word per segment of new blocks (READ here, perhaps CAS in round B); the
      // parent (k < k0) needs none.
      const bool new_word = k >= k0 && (k == k0 || p.offset == 0);
      if (!room(p.node, ops_per_block + (new_word ? 1 : 0)) ||
          scratch_left() < 8192 + 512 * (k - first_read)) {
        break;
      }
      count_op(p.node, ops_per_block + (new_word ? 1 : 0));
      placed.push_back(p);
      last = k + 1;
    }
    if (placed.empty() || (read_parent && last == first_read + 1 && end > k0 && last <= k0)) {
      return fail(errc::buffer_too_small, "insert: not one block fits a batch");
    }
    std::vector<std::pair<local_buffer, local_buffer>>& buckets = pass_.buckets;
    buckets.assign(placed.size(), {});
    std::vector<local_buffer>& overflow_words = pass_.overflow_words;  // per block read: its
    overflow_words.clear();                                            // first group's word
    const bool from_lookup = looked != nullptr && !read_parent && seen_shows(*looked, placed, k0);
    if (from_lookup) {
      // Round A as the lookup read it: every block in its boundary segment, each with room in its
      // first bucket under pick_slot's rule or its offset named (its second bucket was read). A
      // second bucket not read holds no copy of the block (the word does not name its offset)
      // and is not chosen (it reads as empty), unless an earlier block of the pass took a slot
      // of this block's first bucket (its own second bucket) so that the rule no longer finds it
      // roomy: then the reservation's CAS is from a word not read, and fails unless the slot is
      // empty indeed; either way round B's re-read decides. Round B catches what changed since.
      const local_buffer word = take(8);
      detail::index::store64(word.data, looked->overflow);
      for (std::size_t i = 0; i < placed.size(); ++i) {
        const std::size_t at = placed[i].offset * index_layout::bucket_bytes;
        buckets[i].first = looked->buckets[0].sub(at, index_layout::bucket_bytes);
        if ((looked->overflow & index_layout::overflow_bit(placed[i].offset)) != 0) {
          buckets[i].second = looked->buckets[1].sub(at, index_layout::bucket_bytes);
        } else {
          buckets[i].second = {no_bucket_.data(), no_bucket_.size(), 0};  // read only
        }
        overflow_words.push_back(word);
      }
      if (overflow_) return scratch_full();
      ++stats_.inserts_after_lookup;
    } else {
      // First buckets of consecutive blocks of a segment lie side by side: one READ per run.
      for (std::size_t i = 0; i < placed.size();) {
        const std::size_t n = first_bucket_run(placed, i);
        const local_buffer run_bytes = take(n * index_layout::bucket_bytes);
        a.read(bucket_ptr(placed[i], 0, placed[i].offset), run_bytes);
        for (std::size_t j = 0; j < n; ++j) {
          buckets[i + j].first =
              run_bytes.sub(j * index_layout::bucket_bytes, index_layout::bucket_bytes);
        }
        i += n;
      }
      for (std::size_t i = 0; i < placed.size(); ++i) {
        const place_t& p = placed[i];
        buckets[i].second = take(index_layout::bucket_bytes);
        a.read(bucket_ptr(p, 1, p.bucket[1]), buckets[i].second);
        const std::size_t k = first_read + i;
        if (k >= k0 && (k == k0 || p.offset == 0)) {
          overflow_words.push_back(take(8));
          a.read(overflow_ptr(p), overflow_words.back());
        } else {
          overflow_words.push_back(k < k0 ? local_buffer{} : overflow_words.back());
        }
      }
      if (auto ok = run(a, r.round_trips, "insert.A"); !ok) return std::move(ok).take_failure();
    }
    const auto read_at = from_lookup ? looked->read_at : std::chrono::steady_clock::now();
    std::size_t bi = 0;
    if (read_parent) {
      auto found = find_in_pair(buckets[0], place(chain, k0 - 1));
      if (!found) {
        out.stop = insert_stop::parent_missing;
        return out;
      }
      parent = {*found, read_at};
      bi = 1;
    }
    // Present blocks (a prefix) are used; the others get a target slot.
    std::vector<new_block>& todo = pass_.todo;
    todo.clear();
    slots_picked picked;  // by the pass's earlier blocks: a bucket two blocks share
    for (std::size_t k = k0; k < last; ++k, ++bi) {
      const place_t& p = placed[bi];
      if (todo.empty()) {
        if (auto found = find_in_pair(buckets[bi], p)) {
          parent = {*found, read_at};
          r.blocks.push_back(*found);
          if (!published_by(r, k)) ++r.present;  // else an earlier pass of this call's
          r.length = k + 1;
          continue;
        }
      }
      if (pending_in_pair(buckets[bi], p, node_of(p.node).client)) {
        if (todo.empty()) out.stop = insert_stop::pending;
        break;
      }
      new_block& nb = todo.emplace_back();
      nb.k = k;
      nb.p = p;
      nb.overflow_seen = detail::index::load64(overflow_words[bi].data);
      saw_overflow(p, nb.overflow_seen);
      if (!pick_slot(buckets[bi], nb, picked)) {
        todo.pop_back();
        if (todo.empty()) out.stop = insert_stop::no_room;
        break;
      }
    }
    if (todo.empty()) return out;
    for (node_state& ns : nodes_) {  // claim what the pass needs at once, node by node
      const auto need = static_cast<std::size_t>(std::count_if(
          todo.begin(), todo.end(), [&](const new_block& nb) { return nb.p.node == ns.id; }));
      if (need == 0 || ns.broken) continue;
      if (auto ok = reserve_slabs(ns, need); !ok) return std::move(ok).take_failure();
    }
    for (std::size_t i = 0; i < todo.size(); ++i) {
      auto slab = take_slab(node_of(todo[i].p.node));
      if (!slab && slab.error() != errc::out_of_range) {
        // Not a full node: a claim that failed (an unreachable node, a timeout). Said as it is,
        // not as no_slabs (a caller would evict to make room on a node that has it). Highest
        // first, as at a pass's end.
        for (std::size_t j = i; j-- > 0;) give_back_slab(node_of(todo[j].p.node), todo[j].slab);
        return std::move(slab).take_failure();
      }
      if (!slab) {
        if (i == 0) {
          out.stop = insert_stop::no_slabs;
          return out;
        }
        todo.resize(i);
        break;
      }
      todo[i].slab = *slab;
      todo[i].record_at = record_ptr(todo[i].p.node, slab->first);
    }
    // From here on every way out goes through round D (or marks the nodes in doubt).
    auto abandon_all = [&] {
      mark_broken(todo, parent.ref);
      return attempt_outcome{insert_stop::contention};
    };
    // Round B.
    reset_round();
    pooled_batch b_held(*this);
    auto& b = *b_held;
    local_buffer parent_slot, parent_old;
    if (parent.ref.known()) {
      const local_buffer hz = take(8);
      detail::index::store64(hz.data, hazard_range{parent.ref.slab, 1}.encode());
      node_state& pn = node_of(parent.ref.node);
      b.write(client_ptr(pn, pn.client) + index_layout::hazard_offset, hz);
      parent_slot = take(8);
      b.read(parent.ref.slot + 8, parent_slot);
      parent_old = take(8);
      b.faa(record_ptr(parent.ref.node, parent.ref.slab) + slab_at, index_layout::count_one,
            parent_old);
    }
    // Offsets the overflow words must name before their blocks turn VALID in a second bucket.
    struct overflow_cas {
      remote_ptr at;
      std::uint64_t seen = 0, bits = 0;
      local_buffer old;
    };
    std::vector<overflow_cas> overflow_cases;
    for (const new_block& nb : todo) {
      if (!nb.sets_overflow) continue;
      const remote_ptr at = overflow_ptr(nb.p);  // segments may share a first group: one CAS
      auto oc = std::find_if(overflow_cases.begin(), overflow_cases.end(),
                             [&](const overflow_cas& c) { return c.at == at; });
      if (oc == overflow_cases.end()) {
        oc = overflow_cases.insert(oc, {at, nb.overflow_seen, 0, take(8)});
      }
      oc->bits |= index_layout::overflow_bit(nb.p.offset);
    }
    for (const overflow_cas& oc : overflow_cases) {
      b.cas(oc.at, oc.seen, oc.seen | oc.bits, oc.old);
    }
    // Every block's record, whole, built in scratch in chain order, and WRITTEN before the
    // reservations.
    const std::uint64_t stamp = detail::index::now_ms();
    const local_buffer records = take(todo.size() * sizeof(index_layout::record));
    for (std::size_t q = 0; q < todo.size() && !overflow_; ++q) {
      new_block& nb = todo[q];
      const block_info& bi_ = info[nb.k - k0];
      // Built where the WRITE sends it from (built aside and copied, its words were read back
      // wider than they were stored: store-forwarding stalls).
      index_layout::record& rec =
          *::new (records.data + q * sizeof(index_layout::record)) index_layout::record;
      rec.hash_lo = detail::index::lo(chain[nb.k]);
      rec.hash_hi = detail::index::hi(chain[nb.k]);
      rec.parent =
          q == 0 ? (parent.ref.known() ? record_ptr(parent.ref.node, parent.ref.slab).raw() : 0)
                 : todo[q - 1].record_at.raw();
      rec.slot_at = nb.slot_at.raw();
      rec.shape = index_layout::pack_shape(bi_.length, bi_.tier, bi_.flags, bi_.tokens);
      rec.last_access = stamp;
      rec.checksum = detail::index::record_checksum(rec);
      // The slab word too, with the next block of the pass counted as its child: the slab is
      // this client's HELD slab, not published, so no other client touches its word before
      // round C (children are counted only under published parents); the word is what
      // take_slab() handed out (nb.slab.second) with that count and its version one higher.
      // Written here rather than FAA'd: one operation less per block, the same counts as the
      // FAA left before C. The version moves so that a stray +1 (an inserter stalled past the
      // reclaim grace, counting a child in a parent whose slab was reclaimed and handed to
      // this client) answered the word from before this WRITE: its take-back then sees
      // another version and leaves this client's count alone (undo_count()). From here on the
      // slab's word is the bumped one: round D and give_back_slab() expect it.
      nb.children = q + 1 < todo.size() ? 1 : 0;
      const slab_word held = slab_word::decode(nb.slab.second);
      const auto version = static_cast<std::uint8_t>(held.version + 1);
      nb.slab.second = slab_word{held.state, version, held.owner, 0}.encode();
      rec.slab = slab_word{held.state, version, held.owner, nb.children}.encode();
    }
    // Those of consecutive slabs (a chunk hands its slabs out in ascending order) in one WRITE.
    // (Posted after the reservations instead, on shm no faster.)
    for (std::size_t i = 0; i < todo.size() && !overflow_;) {
      std::size_t j = i + 1;  // todo[i, j): slabs i, i + 1, ... on one node
      while (j < todo.size() && todo[j].p.node == todo[i].p.node &&
             todo[j].slab.first == todo[j - 1].slab.first + 1) {
        ++j;
      }
      b.write(todo[i].record_at, records.sub(i * sizeof(index_layout::record),
                                             (j - i) * sizeof(index_layout::record)));
      i = j;
    }
    std::vector<place_t>& todo_placed = pass_.todo_placed;
    todo_placed.clear();
    for (const new_block& nb : todo) todo_placed.push_back(nb.p);
    local_buffer run_bytes;     // the first buckets of todo[run_first, run_end), read again at once
    local_buffer run_overflow;  // their first group's overflow word, read after them
    bool run_reads_overflow = false;
    std::size_t run_first = 0, run_end = 0;
    for (std::size_t i = 0; i < todo.size() && !overflow_; ++i) {
      new_block& nb = todo[i];
      const block_info& bi_ = info[nb.k - k0];
      node_state& ns = node_of(nb.p.node);
      if (bi_.data.size > 0) b.write(data_ptr(ns.id, nb.slab.first), bi_.data);
      nb.reserved_word =
          slot_word::decode(nb.empty_word)
              .moved_to(slot_state::reserved, index_layout::reserved_ptr(ns.client, nb.p.key_bits),
                        nb.p.check)
              .encode();
      // (Answers go through a local first: read back whole from nb right after it was stored
      // field by field, a buffer stalls on store forwarding.)
      const local_buffer reserve_old = take(8);
      nb.reserve_old = reserve_old.data;
      b.cas(nb.slot_at + 8, nb.empty_word, nb.reserved_word, reserve_old);
      // Read again after the CAS: its first bucket with the run's last block; its second now
      // when it reserved there or the overflow word named its offset, else the overflow word
      // after the run's last CAS. Another inserter of the block that reserves in its second
      // bucket names the offset in that word before its CAS (its round B) and re-reads the
      // first bucket after it: if the word read here does not name the offset, that inserter's
      // CAS and re-read come after this CAS and it sees this reservation (conflicts()).
      if (i == run_end) {
        run_first = i;
        run_end = i + first_bucket_run(todo_placed, i);
        run_bytes = take((run_end - run_first) * index_layout::bucket_bytes);
        run_reads_overflow = false;
      }
      const bool second =
          nb.which == 1 || (nb.overflow_seen & index_layout::overflow_bit(nb.p.offset)) != 0;
      const local_buffer second_bytes = second ? take(index_layout::bucket_bytes) : local_buffer{};
      if (second) {
        nb.recheck[1] = second_bytes.data;
      } else {
        if (!run_reads_overflow) run_overflow = take(8);
        run_reads_overflow = true;
        nb.overflow_after = run_overflow.data;
      }
      if (overflow_) break;  // out of scratch: abandoned below
      nb.recheck[0] = run_bytes.data + (i - run_first) * index_layout::bucket_bytes;
      if (second) b.read(bucket_ptr(nb.p, 1, nb.p.bucket[1]), second_bytes);
      if (i + 1 == run_end) {
        b.read(bucket_ptr(todo[run_first].p, 0, todo[run_first].p.offset), run_bytes);
        if (run_reads_overflow) b.read(overflow_ptr(todo[run_first].p), run_overflow);
      }
    }
    if (overflow_) return abandon_all();
    if (auto ok = run(b, r.round_trips, "insert.B"); !ok) {
      mark_broken(todo, parent.ref);
      return std::move(ok).take_failure();
    }
    // The parent: still published in the slot it was read from, and LIVE?
    slab_word parent_seen{};
    bool parent_gone = false;
    bool parent_pending = false;  // published by a client not yet LIVE (inside its round C)
    if (parent.ref.known()) {
      parent_seen = slab_word::decode(detail::index::load64(parent_old.data));
      const bool same_slot = detail::index::load64(parent_slot.data) == parent.ref.word1;
      parent_pending = same_slot && parent_seen.state == slab_state::held;
      parent_gone = !same_slot || (parent_seen.state != slab_state::live && !parent_pending);
    }
    // Reservations that held and met no other inserter of the same block.
    std::size_t good = 0;
    for (const overflow_cas& oc : overflow_cases) {
      const std::uint64_t now = detail::index::load64(oc.old.data);
      const bool swapped = now == oc.seen;
      saw_overflow_at(oc.at, swapped ? oc.seen | oc.bits : now);
      if (swapped) {
        stats_.overflow_named += static_cast<unsigned>(std::popcount(oc.bits));
        continue;
      }
      ++stats_.overflow_races;
      for (new_block& nb : todo) {  // named meanwhile by another client, or not
        if (nb.sets_overflow && overflow_ptr(nb.p) == oc.at) {
          nb.overflow_set = (now & index_layout::overflow_bit(nb.p.offset)) != 0;
        }
      }
    }
    for (new_block& nb : todo) {
      nb.reserved = detail::index::load64(nb.reserve_old) == nb.empty_word;
      if (nb.overflow_after != nullptr) {
        // Named since round A: its second bucket, not read again, may hold another copy; the
        // next pass reads it.
        const std::uint64_t word = detail::index::load64(nb.overflow_after);
        saw_overflow(nb.p, word);
        nb.second_unseen = (word & index_layout::overflow_bit(nb.p.offset)) != 0;
        if (nb.second_unseen) ++stats_.overflow_named_late;
      }
    }
    if (!parent_gone && !parent_pending) {
      while (good < todo.size() && todo[good].reserved && todo[good].overflow_set &&
             !todo[good].second_unseen && !conflicts(todo[good])) {
        ++good;
      }
    }
    // Round C, node by node in chain order, so that a child never turns VALID before its parent
    // even when this client dies in the middle. Each block's slab turns LIVE right after its slot
    // turns VALID, in the same batch (HELD(count) -> LIVE(count); a count landing in between
    // fails the CAS, retried below); when every block of the pass goes out in it, the last batch
    // on the parent's node also clears the parent's hazard, and a pass that publishes all its
    // blocks needs no round D. (Until 2026-12-05 round D turned the slabs LIVE: one round trip
    // more per pass.)
    std::size_t published = 0;
    bool hazard_cleared = false;
    const auto clear_hazard = [&](auto& batch) {
      const local_buffer zero = take(8);
      detail::index::store64(zero.data, 0);
      node_state& pn = node_of(parent.ref.node);
      batch.write(client_ptr(pn, pn.client) + index_layout::hazard_offset, zero);
    };
    for (std::size_t i = 0; i < good;) {
      reset_round();
      pooled_batch c_held(*this);
      auto& c = *c_held;
      const node_id nid = todo[i].p.node;
      std::size_t j = i;
      for (; j < good && todo[j].p.node == nid; ++j) {
        new_block& nb = todo[j];
        const remote_ptr sp = nb.slot_at;
        nb.valid_word = slot_word::decode(nb.reserved_word)
                            .moved_to(slot_state::valid, nb.slab.first, nb.p.check)
                            .encode();
        const local_buffer answers = take(24);  // (through locals: see round B)
        if (overflow_) break;                   // out of scratch: run() fails the round
        nb.answers = answers.data;
        c.cas(sp, nb.word0_seen,
              index_layout::tag_word{nb.p.tag, slot_word::decode(nb.valid_word).version}.encode(),
              answers.sub(0, 8));
        c.cas(sp + 8, nb.reserved_word, nb.valid_word, answers.sub(8, 8));
        const slab_word held = slab_word::decode(nb.slab.second);
        nb.live_expected = slab_word{held.state, held.version, held.owner, nb.children}.encode();
        c.cas(nb.record_at + slab_at, nb.live_expected,
              slab_word{slab_state::live, held.version, 0, nb.children}.encode(),
              answers.sub(16, 8));
      }
      if (parent.ref.known() && good == todo.size() && j == good && parent.ref.node == nid) {
        clear_hazard(c);
        hazard_cleared = true;
      }
      if (auto ok = run(c, r.round_trips, "insert.C"); !ok) {
        mark_broken(todo, parent.ref);
        return std::move(ok).take_failure();
      }
      bool lost = false;
      for (std::size_t q = i; q < j; ++q) {
        new_block& nb = todo[q];
        if (detail::index::load64(nb.answers + 8) != nb.reserved_word) {
          // The reservation was taken back: this client was declared dead meanwhile.
          node_of(nid).broken = true;
          lost = true;
          break;
        }
        nb.reserved = false;
        nb.published = true;
        ++published;
        if (detail::index::load64(nb.answers) != nb.word0_seen) {
          if (auto ok = repair_word0(nb); !ok) {
            mark_broken(todo, parent.ref);
            return std::move(ok).take_failure();
          }
        }
        // Counted as this call's now: a later round of the pass that fails leaves the block
        // published, and the pass after it finds the block present.
        note_published(r, nb.k);
      }
      if (lost) break;
      i = j;
    }
    // Round D: what was not published, the parent's hazard where round C did not clear it
    // (nothing, and no round trip, for a pass that published every block on one node).
    reset_round();
    pooled_batch d_held(*this);
    auto& d = *d_held;
    if (parent.ref.known() && !hazard_cleared) clear_hazard(d);
    if (published > 0 && published < todo.size() && todo[published - 1].children > 0) {
      // The last published block counted a child that is not published: ours, FAA is exact
      // (the slab may be LIVE already: round C turned it so with the count).
      new_block& nb = todo[published - 1];
      d.faa(nb.record_at + slab_at, index_layout::count_minus_one, take(8));
      --nb.children;
    }
    for (new_block& nb : todo) {
      if (nb.published) continue;  // turned LIVE in round C
      const slab_word held = slab_word::decode(nb.slab.second);
      if (nb.reserved) {
        d.cas(nb.slot_at + 8, nb.reserved_word,
              slot_word::decode(nb.reserved_word).moved_to(slot_state::empty, 0, 0).encode(),
              take(8));
      }
      if (nb.children > 0) {  // counted children that were never published: back to 0
        d.cas(nb.record_at + slab_at,
              slab_word{held.state, held.version, held.owner, nb.children}.encode(), nb.slab.second,
              take(8));
      }
    }
    if (overflow_) return abandon_all();
    if (auto ok = run(d, r.round_trips, "insert.D"); !ok) {
      mark_broken(todo, parent.ref);
      return std::move(ok).take_failure();
    }
    // Children counted by others between C's two CASes: CAS again from what is there, while the
    // word is still this client's HELD word (owner and version): anything else is not ours to
    // touch. No limit on the tries: each failure is another client's count landing (lock-free), and
    // a slab left HELD would be published yet never LIVE: never evictable, and every insert under
    // it would wait for it as pending (the first version gave up after 16).
    for (new_block& nb : todo) {
      if (!nb.published) continue;
      const slab_word held = slab_word::decode(nb.slab.second);
      std::uint64_t seen = detail::index::load64(nb.answers + 16);
      while (seen != nb.live_expected) {
        scratch_mark mark(*this);  // each try's answer is read in that try only
        const slab_word sw = slab_word::decode(seen);
        if (sw.state != slab_state::held || sw.owner != held.owner || sw.version != held.version) {
          if (sw.state != slab_state::live || sw.version != held.version) {
            node_of(nb.p.node).broken = true;  // recovered by others: this client lapsed
          }
          break;
        }
        reset_round();
        pooled_batch e_held(*this);
        auto& e = *e_held;
        const local_buffer old = take(8);
        e.cas(nb.record_at + slab_at, seen,
              slab_word{slab_state::live, sw.version, 0, sw.count}.encode(), old);
        if (auto ok = run(e, r.round_trips, "insert.D.again"); !ok) {
          mark_broken(todo, parent.ref);
          return std::move(ok).take_failure();
        }
        nb.live_expected = seen;
        seen = detail::index::load64(old.data);
      }
    }
    const auto done_at = std::chrono::steady_clock::now();
    for (new_block& nb : todo) {
      node_state& ns = node_of(nb.p.node);
      if (nb.published) {
        slab_used(ns, nb.slab.first);
        const block_ref ref{nb.p.node, nb.slab.first, nb.slot_at, nb.valid_word};
        r.blocks.push_back(ref);
        parent = {ref, done_at};
        r.length = nb.k + 1;
      } else if (ns.broken) {
        slab_used(ns, nb.slab.first);  // left to recovery
      }
    }
    // The slabs not used go back highest first, so that the next pass takes them in ascending
    // order (its records of consecutive slabs then go in one WRITE).
    for (auto nb = todo.rbegin(); nb != todo.rend(); ++nb) {
      if (!nb->published && !node_of(nb->p.node).broken)
        give_back_slab(node_of(nb->p.node), nb->slab);
    }
    // The parent's +1 stays only under a published child; taken back with a CAS that checks the
    // word is still the one the FAA answered (never a blind -1 on a word reset meanwhile). After
    // the slabs went back: a take-back that fails must not leave them counted in use (until
    // 2026-12-07 it returned first, and their chunks were never given back).
    if (parent.ref.known() && published == 0 &&
        (parent_seen.state == slab_state::live || parent_seen.state == slab_state::held)) {
      if (auto ok = undo_count(parent.ref.node, parent.ref.slab,
                               detail::index::load64(parent_old.data), r.round_trips);
          !ok) {
        return std::move(ok).take_failure();
      }
    }
    if (parent_gone) {
      parent = parent_ref{};
      out.stop = parent_seen.state == slab_state::evicting ? insert_stop::parent_evicting
                                                           : insert_stop::contention;
    } else if (published < todo.size() && !parent_pending && todo[published].second_unseen) {
      out.stop = insert_stop::none;  // no race lost: the next pass reads its second bucket
    } else if (published < todo.size()) {
      out.stop = parent_pending || (published < todo.size() && !todo[published].reserved &&
                                    !todo[published].published && conflicts(todo[published]))
                     ? insert_stop::pending
                     : insert_stop::contention;
    }
    return out;
  }

  // Whether boundary_ is what the lookup that gave (known_parent, read_at) read of chain's
  // segment holding block `from`, still in scratch, with room left after it for a pass.
  bool same_lookup(std::span<const H> chain, std::size_t from, const block_ref* known_parent,
                   std::chrono::steady_clock::time_point read_at) const {
    const boundary_seen& b = boundary_;
    if (known_parent == nullptr || b.op == 0 || b.op != ops_begun_ || b.read_at != read_at ||
        from <= b.j * segment || from >= b.end || chain.size() < b.end) {
      return false;
    }
    if (scratch_.size - b.scratch_used < 8192 + 512 * segment) return false;
    return std::equal(chain.begin() + static_cast<std::ptrdiff_t>(b.j * segment),
                      chain.begin() + static_cast<std::ptrdiff_t>(b.end), b.keys.begin());
  }

  // Whether a lookup's reads of its boundary segment show what round A would read for blocks
  // placed = chain[k0, ...): all in that segment (past its head), and each either named in the
  // overflow word with its second bucket read, or not named with at least slots_per_bucket - 1
  // empty slots in its first bucket (pick_slot then takes the first without the second).
  bool seen_shows(const boundary_seen& seen, std::span<const place_t> placed,
                  std::size_t k0) const {
    if (k0 <= seen.j * segment || k0 + placed.size() > seen.end) return false;
    for (const place_t& p : placed) {
      const std::uint64_t bit = index_layout::overflow_bit(p.offset);
      if ((seen.overflow & bit) != 0) {
        if ((seen.second_read & bit) == 0) return false;
        continue;
      }
      const std::byte* bucket = seen.buckets[0].data + p.offset * index_layout::bucket_bytes;
      unsigned empty = 0;
      for (unsigned s = 0; s < index_layout::slots_per_bucket; ++s) {
        if (slot_empty(bucket, s)) ++empty;
      }
      if (!first_roomy(empty)) return false;
    }
    return true;
  }

  // How many of placed[i, ...) have their first buckets side by side (the same group on the
  // same node, offsets one apart): one READ covers them.
  static std::size_t first_bucket_run(std::span<const place_t> placed, std::size_t i) {
    std::size_t n = 1;
    while (i + n < placed.size() && placed[i + n].offset == placed[i + n - 1].offset + 1 &&
           placed[i + n].group[0] == placed[i + n - 1].group[0] &&
           placed[i + n].node == placed[i + n - 1].node) {
      ++n;
    }
    return n;
  }

  // Another inserter of the same block, seen in the buckets re-read right after reserving: one
  // still reserving (same key bits and check, another owner), or a published copy where this
  // one would be found. Of two clients reserving at once, at least one sees the other (both
  // CAS, then READ, in order, on one node) and yields, so a block is published once.
  bool conflicts(const new_block& nb) const {
    const std::uint32_t me = node_of(nb.p.node).client;
    const auto mine = static_cast<unsigned>(nb.which * index_layout::slots_per_bucket + nb.slot);
    const unsigned read = nb.recheck[1] != nullptr ? 2 : 1;  // buckets read again
    for (unsigned pos = 0; pos < read * index_layout::slots_per_bucket; ++pos) {
      if (pos == mine) continue;
      const unsigned in = pos % index_layout::slots_per_bucket;
      const std::byte* sp =
          nb.recheck[pos / index_layout::slots_per_bucket] + in * index_layout::slot_bytes;
      const index_layout::slot s{detail::index::load64(sp), detail::index::load64(sp + 8)};
      const auto w1 = index_layout::slot_word::decode(s.word1);
      if (w1.check != nb.p.check) continue;  // neither a reservation nor a copy of this block
      if (w1.state == index_layout::slot_state::reserved &&
          index_layout::reserved_key_bits(w1.ptr) == nb.p.key_bits &&
          index_layout::reserved_owner(w1.ptr) != me) {
        return true;
      }
      if (index_layout::holds(s, nb.p.tag, nb.p.check)) return true;
    }
    return false;
  }

  // Takes back a +1 this client added to the slab word at (node, slab), whose FAA answered
  // `answered`: a CAS from what the word holds to one less, only while the word is still the
  // same record (version; state and owner, or HELD turned LIVE by its publisher) with a count to
  // take from.
  result<void> undo_count(node_id node, std::uint64_t slab, std::uint64_t answered,
                          unsigned& round_trips) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    const slab_word was = slab_word::decode(answered);
    std::uint64_t expected = answered + index_layout::count_one;
    // No limit on the tries (each failure is another client's change landing): a +1 left behind
    // would keep the parent from ever being a leaf again (the first version gave up after 16).
    for (;;) {
      scratch_mark mark(*this);  // each try's answer is read in that try only
      const slab_word now = slab_word::decode(expected);
      // The same record: the word the FAA answered, or, answered HELD, that slab turned LIVE
      // meanwhile (its publisher's round C, which keeps the count and clears the owner).
      const bool same = now.version == was.version &&
                        ((now.state == was.state && now.owner == was.owner) ||
                         (was.state == slab_state::held && now.state == slab_state::live));
      if (!same || now.count == 0) return {};
      reset_round();
      pooled_batch b_held(*this);
      auto& b = *b_held;
      const local_buffer old = take(8);
      b.cas(record_ptr(node, slab) + offsetof(index_layout::record, slab), expected,
            expected + index_layout::count_minus_one, old);
      if (auto ok = run(b, round_trips, "insert.undo"); !ok) {
        node_of(node).broken = true;
        return ok;
      }
      const std::uint64_t seen = detail::index::load64(old.data);
      if (seen == expected) return {};
      expected = seen;
    }
  }

  result<void> repair_word0(const new_block& nb) {
    const remote_ptr sp = nb.slot_at;
    const auto valid = index_layout::slot_word::decode(nb.reserved_word)
                           .moved_to(index_layout::slot_state::valid, nb.slab.first, nb.p.check);
    std::uint64_t seen = detail::index::load64(nb.answers);
    for (unsigned i = 0; i < 4; ++i) {
      reset_round();
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      const local_buffer old = take(8);
      b.cas(sp, seen, index_layout::tag_word{nb.p.tag, valid.version}.encode(), old);
      if (auto ok = run(b, rts); !ok) return ok;
      if (detail::index::load64(old.data) == seen) return {};
      seen = detail::index::load64(old.data);
    }
    return {};  // left invisible (versions disagree); eviction or reclaim will clear it
  }

  // A batch failed with an unknown outcome: the nodes it touched may hold this client's half-done
  // steps, which only recovery can settle; stop using the entries there (others declare them
  // dead after a lease and recover them) and register anew.
  void mark_broken(const std::vector<new_block>& todo, const block_ref& parent) {
    for (const new_block& nb : todo) node_of(nb.p.node).broken = true;
    if (parent.known()) node_of(parent.node).broken = true;
  }

  // The published copy of block p in its two buckets.
  std::optional<block_ref> find_in_pair(const std::pair<local_buffer, local_buffer>& pair,
                                        const place_t& p) const {
    for (unsigned which = 0; which < 2; ++which) {
      const std::byte* bucket = which == 0 ? pair.first.data : pair.second.data;
      const int s = find(bucket, p);
      if (s >= 0) {
        return block_ref{p.node, slot_ptr_field(bucket, s),
                         slot_ptr(p, which, p.bucket[which], static_cast<unsigned>(s)),
                         word1_of(bucket, s)};
      }
    }
    return std::nullopt;
  }

  // Another client reserved a slot for (probably) this block.
  bool pending_in_pair(const std::pair<local_buffer, local_buffer>& pair, const place_t& p,
                       std::uint32_t me) const {
    for (const std::byte* bucket : {pair.first.data, pair.second.data}) {
      for (unsigned s = 0; s < index_layout::slots_per_bucket; ++s) {
        const auto w1 = index_layout::slot_word::decode(
            detail::index::load64(bucket + s * index_layout::slot_bytes + 8));
        if (w1.state == index_layout::slot_state::reserved && w1.check == p.check &&
            index_layout::reserved_key_bits(w1.ptr) == p.key_bits &&
            index_layout::reserved_owner(w1.ptr) != me) {
          return true;
        }
      }
    }
    return false;
  }

  // Whether slot s of a bucket's bytes is EMPTY.
  static bool slot_empty(const std::byte* bucket, unsigned s) noexcept {
    return index_layout::slot_word::decode(word1_of(bucket, static_cast<int>(s))).state ==
           index_layout::slot_state::empty;
  }
  // The EMPTY slots of a bucket's bytes, a bit each.
  static unsigned empty_slots(const std::byte* bucket) noexcept {
    unsigned m = 0;
    for (unsigned s = 0; s < index_layout::slots_per_bucket; ++s) {
      m |= static_cast<unsigned>(slot_empty(bucket, s)) << s;
    }
    return m;
  }
  // A first bucket holding at most one block: a non-head at an offset not named keeps it
  // (pick_slot); seen_shows relies on the same rule.
  static bool first_roomy(unsigned empty_slots) noexcept {
    return empty_slots + 1 >= index_layout::slots_per_bucket;
  }

  // An EMPTY slot, random among the empty ones of the chosen bucket (concurrent inserters rarely
  // collide). Heads take their first bucket while it has room (a lookup reads every head's first
  // bucket, the second only for heads not found there whose overflow word names offset 0). Other
  // blocks take the emptier of their two, but their first while it holds at most one block and
  // their first group's overflow word does not name their offset (a lookup reads their second
  // buckets only at the offsets it names; taking a second bucket names the offset in round B).
  // locate() reads a segment's first group, then the second buckets of blocks not found there. The
  // second bucket, in the block's own group, spreads chains branching at one point.
  // The slots the blocks of one pass picked, by bucket: two blocks of a pass may share a bucket
  // (one's first, the other's second), and both picking one empty slot would cost the later one
  // its CAS and the rest of the pass another pass. A pass of a few blocks scans what it
  // picked; a long one (thousands of blocks on shm) keeps a map.
  class slots_picked {
   public:
    [[nodiscard]] unsigned in(std::uint64_t bucket) const {
      if ((seen_ & bit(bucket)) == 0) return 0;  // most buckets of a pass are its blocks' own
      if (!map_.empty()) {
        const auto it = map_.find(bucket);
        return it == map_.end() ? 0 : it->second;
      }
      unsigned mask = 0;
      for (const auto& [b, m] : std::span(few_).first(n_)) {
        if (b == bucket) mask |= m;
      }
      return mask;
    }
    void add(std::uint64_t bucket, unsigned slot) {
      seen_ |= bit(bucket);
      if (map_.empty() && n_ < few_.size()) {
        few_[n_++] = {bucket, 1u << slot};
        return;
      }
      if (map_.empty()) {
        for (const auto& [b, m] : std::span(few_).first(n_)) map_[b] |= m;
      }
      map_[bucket] |= 1u << slot;
    }

   private:
    // Buckets are 64-byte aligned: the address bits above that pick one of 64 filter bits.
    static std::uint64_t bit(std::uint64_t bucket) noexcept {
      return std::uint64_t{1} << (bucket / index_layout::bucket_bytes % 64);
    }
    std::uint64_t seen_ = 0;  // a filter of the buckets added: no bit, no scan
    std::array<std::pair<std::uint64_t, unsigned>, 32> few_{};
    std::size_t n_ = 0;
    std::unordered_map<std::uint64_t, unsigned> map_;
  };

  bool pick_slot(const std::pair<local_buffer, local_buffer>& pair, new_block& nb,
                 slots_picked& picked) {
    static_assert(index_layout::slots_per_bucket == 4, "count[] below counts 4 bits");
    unsigned empties[2];  // a bit per slot
    unsigned count[2];
    for (unsigned which = 0; which < 2; ++which) {
      const std::byte* bucket = which == 0 ? pair.first.data : pair.second.data;
      const unsigned taken = picked.in(bucket_ptr(nb.p, which, nb.p.bucket[which]).raw());
      empties[which] = empty_slots(bucket) & ~taken;
      count[which] = (0x4332'3221'3221'2110u >> (4 * empties[which])) & 0xF;  // its bits set
    }
    if (count[0] + count[1] == 0) return false;
    // Heads take their first bucket while it has room (a lookup reads heads' second buckets only
    // where the overflow word names offset 0). Other blocks take the emptier (the first on a tie),
    // so that the first buckets of popular segments push their blocks elsewhere before they fill
    // and a block whose second bucket is in such a group finds both full
    // (docs/design/remote_index.md); but at an offset not named yet, the first while it holds
    // at most one block, so that only buckets shared in earnest get their offset named.
    const bool head = nb.p.offset == 0;
    const bool named = (nb.overflow_seen & index_layout::overflow_bit(nb.p.offset)) != 0;
    const unsigned which =
        count[0] == 0 || (!head && count[1] > count[0] && (named || !first_roomy(count[0]))) ? 1
                                                                                             : 0;
    nb.sets_overflow = which == 1 && !named;
    const std::byte* bucket = which == 0 ? pair.first.data : pair.second.data;
    unsigned left = empties[which];  // the (random index)-th empty slot
    for (auto skip = (rng_() >> 32) * count[which] >> 32; skip > 0; --skip) left &= left - 1;
    const auto s = static_cast<unsigned>(std::countr_zero(left));
    nb.which = which;
    nb.slot = s;
    nb.slot_at = slot_ptr(nb.p, which, nb.p.bucket[which], s);
    picked.add(bucket_ptr(nb.p, which, nb.p.bucket[which]).raw(), s);
    nb.word0_seen = detail::index::load64(bucket + s * index_layout::slot_bytes);
    nb.empty_word = detail::index::load64(bucket + s * index_layout::slot_bytes + 8);
    return true;
  }

  // ---- eviction internals ----------------------------------------------------------------------

  result<void> read_records(node_id node, std::vector<candidate>& cands) {
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    std::vector<local_buffer> bufs;
    for (const candidate& c : cands) {
      bufs.push_back(take(index_layout::record_bytes));
      b.read(record_ptr(node, c.slab), bufs.back());
    }
    if (overflow_) return scratch_full();
    if (auto ok = run(b, rts); !ok) return ok;
    for (std::size_t i = 0; i < cands.size(); ++i) {
      std::memcpy(&cands[i].rec, bufs[i].data, sizeof cands[i].rec);
    }
    return {};
  }

  // LIVE(0) -> EVICTING, then VALID -> TOMBSTONE; slabs queued for reclaim (whoever frees the
  // slab takes the child off its parent's count, exactly once). A candidate whose slot moved on
  // gets its slab back to LIVE. Candidates need slot, word1 and slab; their records are read
  // here. Returns how many were unpublished.
  result<std::size_t> unpublish(std::vector<candidate>& cands, std::vector<H>* evicted = nullptr) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    if (cands.empty()) return std::size_t{0};
    for (candidate& c : cands) {
      if (c.rec.checksum == 0 && c.rec.slot_at == 0) {
        std::vector<candidate> one{c};
        if (auto ok = read_records(c.slot.node(), one); !ok) return std::move(ok).take_failure();
        c.rec = one[0].rec;
      }
    }
    std::erase_if(cands, [&](const candidate& c) {
      const slab_word sw = slab_word::decode(c.rec.slab);
      return sw.state != slab_state::live || sw.count != 0 || c.rec.slot_at != c.slot.raw() ||
             c.rec.checksum != detail::index::record_checksum(c.rec);
    });
    if (cands.empty()) return std::size_t{0};
    if (cands.size() > cfg_.max_ops_per_node) {  // one CAS each in a batch: in parts
      std::size_t gone = 0;
      for (std::size_t at = 0; at < cands.size(); at += cfg_.max_ops_per_node) {
        std::vector<candidate> part(cands.begin() + static_cast<std::ptrdiff_t>(at),
                                    cands.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                        cands.size(), at + cfg_.max_ops_per_node)));
        auto g = unpublish(part, evicted);
        if (!g) return g;
        gone += *g;
      }
      return gone;
    }
    unsigned rts = 0;
    // 1: LIVE(0) -> EVICTING(0): from now on no child can be published under it.
    reset_round();
    pooled_batch b_held(*this);
    auto& b = *b_held;
    std::vector<local_buffer> olds;
    for (const candidate& c : cands) {
      const slab_word sw = slab_word::decode(c.rec.slab);
      olds.push_back(take(8));
      b.cas(record_ptr(c.slot.node(), c.slab) + offsetof(index_layout::record, slab), c.rec.slab,
            slab_word{slab_state::evicting, sw.version, node_of(c.slot.node()).client, 0}.encode(),
            olds.back());
    }
    // Others roll back a published slab they see EVICTING and unchanged for a lease (its evictor
    // died between the two steps): a tombstone landing after that would unpublish a slab LIVE
    // again, perhaps with a child published under it since. So step 2 goes out within a quarter
    // lease of step 1 (counted from before step 1 went out, before any other could see it), or
    // this client rolls its slabs back itself.
    const auto tombstone_by = std::chrono::steady_clock::now() + cfg_.lease / 4;
    if (auto ok = run(b, rts, "evict.evicting"); !ok) {
      for (const candidate& c : cands) node_of(c.slot.node()).broken = true;
      return std::move(ok).take_failure();
    }
    std::vector<candidate> won;
    for (std::size_t i = 0; i < cands.size(); ++i) {
      if (detail::index::load64(olds[i].data) == cands[i].rec.slab) won.push_back(cands[i]);
    }
    if (won.empty()) return std::size_t{0};
    // 2: VALID -> TOMBSTONE.
    reset_round();
    pooled_batch c2_held(*this);
    auto& c2 = *c2_held;
    olds.clear();
    for (const candidate& c : won) {
      const auto w1 = index_layout::slot_word::decode(c.word1);
      olds.push_back(take(8));
      c2.cas(c.slot + 8, c.word1,
             w1.moved_to(index_layout::slot_state::tombstone, c.slab, w1.check).encode(),
             olds.back());
    }
    if (auto ok = run(c2, rts, "evict.tombstone", tombstone_by); !ok) {
      if (missed_ring_by_) {  // stalled between the steps: nothing went out, undo step 1
        for (const candidate& c : won) {
          const slab_word sw = slab_word::decode(c.rec.slab);
          if (auto back = roll_back_evicting(c.slot.node(), c.slab, sw.version,
                                             node_of(c.slot.node()).client);
              !back) {
            return std::move(back).take_failure();
          }
        }
        stats_.late_evictions += won.size();
        return std::size_t{0};
      }
      for (const candidate& c : won) node_of(c.slot.node()).broken = true;
      return std::move(ok).take_failure();
    }
    // 3: lost tombstones give the slab back to LIVE.
    std::size_t gone = 0;
    const auto now = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < won.size(); ++i) {
      const candidate& c = won[i];
      const slab_word sw = slab_word::decode(c.rec.slab);
      if (detail::index::load64(olds[i].data) == c.word1) {
        ++gone;
        if (evicted != nullptr) {
          if constexpr (H::bits == 128) {
            evicted->push_back(H{c.rec.hash_hi, c.rec.hash_lo});
          } else {
            evicted->push_back(H{c.rec.hash_lo});
          }
        }
        const auto w1 = index_layout::slot_word::decode(c.word1);
        queue_reclaim(node_of(c.slot.node()), c.slot,
                      w1.moved_to(index_layout::slot_state::tombstone, c.slab, w1.check).encode(),
                      now);
      } else if (auto ok = roll_back_evicting(c.slot.node(), c.slab, sw.version,
                                              node_of(c.slot.node()).client);
                 !ok) {
        return std::move(ok).take_failure();
      }
    }
    return gone;
  }

  // EVICTING slabs whose slot no longer refers to them: a reclaim emptied the slot (after its
  // hazard scan: a slot stops naming an EVICTING slab no other way) and has not freed the slab
  // yet, or died (or threw) before it could. Either may finish it: CAS from the exact word
  // sampled to FREE, and whoever wins that CAS, the reclaimer or this client, takes the child
  // off its parent's count (at most once: the -1 goes out in the next round). Without this the
  // slab and its parent's count stayed when the reclaimer died between its two steps (its slab
  // lies in the inserter's chunk, which recovery of the reclaimer does not settle). `orphaned`:
  // candidates whose record, read again before their slot, agreed with the sample.
  result<void> finish_reclaims(node_state& ns, const std::vector<candidate>& orphaned) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    if (orphaned.empty()) return {};
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    std::vector<local_buffer> olds;
    olds.reserve(orphaned.size());
    for (const candidate& c : orphaned) {
      const slab_word sw = slab_word::decode(c.rec.slab);
      olds.push_back(take(8));
      b.cas(record_ptr(ns.id, c.slab) + offsetof(index_layout::record, slab), c.rec.slab,
            slab_word{slab_state::free, sw.version, 0, 0}.encode(), olds.back());
    }
    if (overflow_) return scratch_full();
    if (auto ok = run(b, rts, "evict.free"); !ok) return ok;
    reset_round();
    pooled_batch c_held(*this);
    auto& c = *c_held;
    for (std::size_t i = 0; i < orphaned.size(); ++i) {
      if (detail::index::load64(olds[i].data) != orphaned[i].rec.slab) continue;  // not ours
      ++stats_.reclaimed;
      post_parent_release(c, orphaned[i].rec);
    }
    if (overflow_) return scratch_full();
    return run(c, rts);
  }

  // A published slab seen EVICTING and unchanged for a whole lease: its evictor died between
  // its two steps (an evictor takes microseconds between them, and one stalled there for a
  // quarter lease sends no tombstone but rolls back itself: unpublish()): roll it back to LIVE.
  // "Unchanged" is one episode: every rollback moves the slab word's version, so an evictor's
  // second eviction of the slab after its own rollback is a new word, watched from its start.
  result<void> watch_stuck_evictions(node_state& ns, const std::vector<candidate>& cands) {
    const auto now = std::chrono::steady_clock::now();
    for (const candidate& c : cands) {
      const auto sw = index_layout::slab_word::decode(c.rec.slab);
      if (sw.state != index_layout::slab_state::evicting || c.rec.slot_at != c.slot.raw() ||
          c.rec.checksum != detail::index::record_checksum(c.rec)) {
        continue;
      }
      auto it = std::find_if(ns.stuck.begin(), ns.stuck.end(),
                             [&](const auto& e) { return e.slab == c.slab; });
      if (it == ns.stuck.end() || it->word != c.rec.slab || it->word1 != c.word1) {
        if (it != ns.stuck.end()) ns.stuck.erase(it);
        if (ns.stuck.size() < 256) ns.stuck.push_back({c.slab, c.rec.slab, c.word1, now});
        continue;
      }
      if (now - it->since < cfg_.lease) continue;
      ns.stuck.erase(it);
      if (auto ok = roll_back_evicting(ns.id, c.slab, sw.version, sw.owner); !ok) return ok;
      ++stats_.rolled_back;
    }
    return {};
  }

  // EVICTING(version, evictor, any count) -> LIVE(version + 1, 0): an unpublish that did not
  // happen. The version moves so that the next eviction's word differs from this one's even when
  // the same client evicts the slab again: a watcher tells the episodes apart by the word.
  // The count is 0 again because no child can be published under an EVICTING slab (inserters
  // that saw it backed out without taking their +1 back). A CAS loop from what the word holds,
  // while it is that evictor's: the EVICTING word names its evictor, so a rollback that comes
  // late (a watcher rolled the slab back meanwhile, and another client began evicting it again)
  // cannot undo another evictor's step 1, whose tombstone would then name a LIVE slab.
  result<void> roll_back_evicting(node_id node, std::uint64_t slab, std::uint8_t version,
                                  std::uint32_t evictor) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    std::uint64_t expected = slab_word{slab_state::evicting, version, evictor, 0}.encode();
    for (;;) {                   // each failure is an inserter's count landing: lock-free, no limit
      scratch_mark mark(*this);  // each try's answer is read in that try only
      reset_round();
      unsigned rts = 0;
      pooled_batch b_held(*this);
      auto& b = *b_held;
      const local_buffer old = take(8);
      b.cas(record_ptr(node, slab) + offsetof(index_layout::record, slab), expected,
            slab_word{slab_state::live, static_cast<std::uint8_t>(version + 1), 0, 0}.encode(),
            old);
      if (auto ok = run(b, rts, "evict.rollback"); !ok) {
        node_of(node).broken = true;
        return ok;
      }
      const std::uint64_t seen = detail::index::load64(old.data);
      if (seen == expected) return {};
      const slab_word sw = slab_word::decode(seen);
      if (sw.state != slab_state::evicting || sw.version != version || sw.owner != evictor) {
        return {};  // not that evictor's now
      }
      expected = seen;
    }
  }

  void queue_reclaim(node_state& ns, remote_ptr slot, std::uint64_t word1,
                     std::chrono::steady_clock::time_point since) {
    const std::uint64_t slab = index_layout::slot_word::decode(word1).ptr;
    for (const auto& p : ns.reclaims) {
      if (p.slot == slot && p.word1 == word1) return;
    }
    if (ns.reclaims.size() >= 4096) return;  // found again by a later sample
    ns.reclaims.push_back({slot, word1, slab, since});
  }

  // Tombstones older than the grace period whose slab no live client's hazard covers: slot
  // TOMBSTONE -> EMPTY, then slab EVICTING -> FREE.
  result<void> reclaim(node_state& ns, bool ignore_grace) {
    using index_layout::slab_state;
    using index_layout::slab_word;
    const auto now = std::chrono::steady_clock::now();
    std::vector<typename node_state::pending> due;
    // Two operations each (CAS, READ) in one batch: at most max_ops_per_node in it.
    const std::size_t most = std::min<std::size_t>(128, cfg_.max_ops_per_node / 2);
    std::erase_if(ns.reclaims, [&](const typename node_state::pending& p) {
      if (!ignore_grace && now - p.since < cfg_.reclaim_grace) return false;
      if (due.size() >= most) return false;
      due.push_back(p);
      return true;
    });
    if (due.empty()) return {};
    scratch_mark mark(*this);
    // The hazards of every live client, and the slab words.
    std::vector<hazard_range> hazards;
    if (auto ok = read_hazards(ns, hazards); !ok) return ok;
    std::vector<typename node_state::pending> free_now;
    for (const auto& p : due) {
      const bool covered = std::any_of(hazards.begin(), hazards.end(),
                                       [&](const hazard_range& h) { return h.covers(p.slab); });
      if (covered) {
        ns.reclaims.push_back(p);
      } else {
        free_now.push_back(p);
      }
    }
    if (free_now.empty()) return {};
    unsigned rts = 0;
    reset_round();
    pooled_batch b_held(*this);
    auto& b = *b_held;
    std::vector<std::pair<local_buffer, local_buffer>> olds;  // slot CAS answer, record
    for (const auto& p : free_now) {
      const auto w1 = index_layout::slot_word::decode(p.word1);
      olds.emplace_back(take(8), take(index_layout::record_bytes));
      // The record first: while the slot is this TOMBSTONE nobody frees the slab (a sampler
      // finishes a reclaim only once no slot names it), so a record read before a CAS that wins
      // is the life the tombstone names; read after it, a sampler could have freed the slab and
      // another life begun meanwhile.
      b.read(record_ptr(ns.id, p.slab), olds.back().second);
      b.cas(p.slot + 8, p.word1, w1.moved_to(index_layout::slot_state::empty, 0, 0).encode(),
            olds.back().first);
    }
    if (auto ok = run(b, rts, "reclaim.empty"); !ok) {
      ns.broken = true;
      return ok;
    }
    // The slabs whose slot this client emptied: EVICTING -> FREE (a CAS loop: a backing-out
    // inserter may add to the count meanwhile), then the parent loses the child.
    for (std::size_t i = 0; i < free_now.size(); ++i) {
      if (detail::index::load64(olds[i].first.data) != free_now[i].word1) continue;  // not ours
      index_layout::record rec;
      std::memcpy(&rec, olds[i].second.data, sizeof rec);
      std::uint64_t expected = rec.slab;
      const std::uint8_t version = slab_word::decode(rec.slab).version;
      for (;;) {  // each failure is an inserter's count landing: lock-free, no limit
        scratch_mark try_mark(*this);  // each try's answers are read in that try only
        const slab_word sw = slab_word::decode(expected);
        if (sw.state != slab_state::evicting || sw.version != version) break;  // the audit says
        reset_round();
        pooled_batch c_held(*this);
        auto& c = *c_held;
        const local_buffer old = take(8);
        c.cas(record_ptr(ns.id, free_now[i].slab) + offsetof(index_layout::record, slab), expected,
              slab_word{slab_state::free, version, 0, 0}.encode(), old);
        if (auto ok = run(c, rts, "reclaim.free"); !ok) {
          ns.broken = true;
          return ok;
        }
        const std::uint64_t seen = detail::index::load64(old.data);
        if (seen == expected) {
          ++stats_.reclaimed;
          reset_round();
          pooled_batch d_held(*this);
          auto& d = *d_held;
          post_parent_release(d, rec);
          if (auto ok = run(d, rts); !ok) return ok;
          break;
        }
        expected = seen;
      }
    }
    return {};
  }

  result<void> reclaim_all_tombstones(node_state& ns) {
    return for_each_slot(
        ns,
        [&](remote_ptr slot, std::uint64_t w1) {
          if (index_layout::slot_word::decode(w1).state == index_layout::slot_state::tombstone) {
            queue_reclaim(ns, slot, w1, {});
          }
        },
        [&]() -> result<void> {
          while (!ns.reclaims.empty()) {
            const std::size_t before = ns.reclaims.size();
            if (auto ok = reclaim(ns, true); !ok) return ok;
            if (ns.reclaims.size() >= before) break;  // covered by hazards: leave them
          }
          return {};
        });
  }

  result<void> read_hazards(node_state& ns, std::vector<hazard_range>& out) {
    std::vector<std::uint64_t> words;
    if (auto ok = read_client_words(ns, words); !ok) return ok;
    std::vector<std::uint64_t> live;
    for (std::uint64_t id = 0; id < words.size(); ++id) {
      if (index_layout::client_word::decode(words[id]).state == index_layout::client_state::live) {
        live.push_back(id);
      }
    }
    return for_each_client_read(
        ns, live, index_layout::hazard_offset, 8 * index_layout::hazard_words,
        [&](std::uint64_t, const local_buffer& buf) {
          for (std::size_t h = 0; h < index_layout::hazard_words; ++h) {
            const auto r = hazard_range::decode(detail::index::load64(buf.data + 8 * h));
            if (r.count > 0) out.push_back(r);
          }
        });
  }

  // ---- hazards for readers ---------------------------------------------------------------------

  // Claims hazard words on every node of `refs` (word 0 is the inserts'; the others are shared
  // by read_blocks() and pins) for slab ranges covering them: ranges are merged (protecting more
  // is always safe) down to the longest run of free words on the node.
  result<hazard_set> claim_hazards(std::span<const block_ref> refs) {
    std::vector<std::pair<node_id, std::vector<std::uint64_t>>> slabs;
    for (const block_ref& r : refs) {
      auto it = std::find_if(slabs.begin(), slabs.end(),
                             [&](const auto& e) { return e.first == r.node; });
      if (it == slabs.end()) {
        slabs.push_back({r.node, {}});
        it = slabs.end() - 1;
      }
      it->second.push_back(r.slab);
    }
    hazard_set out;
    auto undo = [&] {
      for (const hazard_claim& c : out) free_words(c);
    };
    for (auto& [node, list] : slabs) {
      node_state& ns = node_of(node);
      // The longest run of free words.
      std::size_t best_first = 0, best_len = 0;
      for (std::size_t w = 1; w < index_layout::hazard_words;) {
        if ((ns.hazard_used >> w) & 1u) {
          ++w;
          continue;
        }
        std::size_t e = w;
        while (e < index_layout::hazard_words && ((ns.hazard_used >> e) & 1u) == 0) ++e;
        if (e - w > best_len) {
          best_first = w;
          best_len = e - w;
        }
        w = e;
      }
      if (best_len == 0) {
        undo();
        return fail(errc::out_of_range, "every hazard word of this client on memory node " +
                                            std::to_string(node) +
                                            " is held by pins; unpin some first");
      }
      std::sort(list.begin(), list.end());
      std::vector<hazard_range> ranges;
      for (std::uint64_t x : list) {
        if (!ranges.empty() && x >= ranges.back().first &&
            x - ranges.back().first <= ranges.back().count) {
          ranges.back().count = std::max(ranges.back().count, x - ranges.back().first + 1);
          continue;
        }
        ranges.push_back({x, 1});
      }
      while (ranges.size() > best_len) {  // merge the closest neighbours
        std::size_t best = 0;
        std::uint64_t gap = ~std::uint64_t{0};
        for (std::size_t i = 0; i + 1 < ranges.size(); ++i) {
          const std::uint64_t g = ranges[i + 1].first - (ranges[i].first + ranges[i].count);
          if (g < gap) {
            gap = g;
            best = i;
          }
        }
        ranges[best].count = ranges[best + 1].first + ranges[best + 1].count - ranges[best].first;
        ranges.erase(ranges.begin() + static_cast<std::ptrdiff_t>(best) + 1);
      }
      for (const hazard_range& r : ranges) {
        if (r.count > hazard_range::max_count) {
          undo();
          return fail(errc::invalid_argument, "blocks too far apart to protect together");
        }
      }
      hazard_claim c{node, best_first, std::move(ranges), ns.generation};
      for (std::size_t w = 0; w < c.ranges.size(); ++w) {
        ns.hazard_used |= std::uint64_t{1} << (c.first_word + w);
      }
      out.push_back(std::move(c));
    }
    return out;
  }

  void free_words(const hazard_claim& c) {
    node_state& ns = node_of(c.node);
    if (c.generation != ns.generation) return;  // words of an entry left behind
    for (std::size_t w = 0; w < c.ranges.size(); ++w) {
      ns.hazard_used &= ~(std::uint64_t{1} << (c.first_word + w));
    }
  }

  template <class Batch>
  void post_hazards(Batch& b, const hazard_set& set) {
    for (const hazard_claim& c : set) {
      const local_buffer buf = take(8 * c.ranges.size());
      for (std::size_t i = 0; i < c.ranges.size(); ++i) {
        detail::index::store64(buf.data + 8 * i, c.ranges[i].encode());
      }
      node_state& ns = node_of(c.node);
      b.write(client_ptr(ns, ns.client) + index_layout::hazard_offset + 8 * c.first_word, buf);
      count_op(c.node);
    }
  }

  // Zeroes and frees the words (best effort: a failed clear only delays reclaim).
  void clear_hazards(const hazard_set& set) {
    reset_round();
    unsigned rts = 0;
    pooled_batch b_held(*this);
    auto& b = *b_held;
    for (const hazard_claim& c : set) {
      free_words(c);
      node_state& ns = node_of(c.node);
      if (c.generation != ns.generation || ns.broken) continue;
      const local_buffer buf = take(8 * c.ranges.size());
      std::memset(buf.data, 0, buf.size);
      b.write(client_ptr(ns, ns.client) + index_layout::hazard_offset + 8 * c.first_word, buf);
    }
    (void)run(b, rts, "hazards.clear");
  }

  template <class Batch>
  void clear_hazard_in(Batch& b, node_id node) {
    const local_buffer zero = take(8);
    detail::index::store64(zero.data, 0);
    node_state& ns = node_of(node);
    b.write(client_ptr(ns, ns.client) + index_layout::hazard_offset, zero);
  }

  // ---- placement and addresses -----------------------------------------------------------------

  // The head-dependent part of place() for the last segment placed (nodes_ fixed after open).
  struct segment_place {
    bool valid = false;
    H head{}, super_head{};
    std::size_t node_index = 0;
    std::uint64_t group0 = 0, head_mix = 0;
  };
  std::size_t place_node(const H& super_head) const noexcept {
    std::size_t best = 0;
    std::uint64_t best_score = 0;
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      const std::uint64_t score =
          detail::index::mix(detail::index::lo(super_head) ^
                             (0x9E3779B97F4A7C15u * (std::uint64_t{nodes_[i].id} + 1)));
      if (i == 0 || score > best_score) {
        best = i;
        best_score = score;
      }
    }
    return best;
  }

  place_t place(std::span<const H> chain, std::size_t k) const noexcept {
    return place_in(chain, k, last_segment_);
  }
  // What the segment's head decides is the same for every block of the segment: computed once
  // for a run of calls on one segment (an insert places each of its blocks) and kept in `sp`.
  place_t place_in(std::span<const H> chain, std::size_t k, segment_place& sp) const noexcept {
    place_t p;
    const H& head = chain[k - k % segment];
    const H& super_head = chain[k - k % super_segment];
    if (!sp.valid || !(sp.head == head) || !(sp.super_head == super_head)) {
      sp.node_index = place_node(super_head);
      // (A node not reached has no groups yet: group 0, never sent, run() refuses the node.)
      const std::uint64_t groups = nodes_[sp.node_index].geo.groups;
      sp.group0 = detail::index::mix(detail::index::lo(head) ^ 0x243F6A8885A308D3u) &
                  (groups == 0 ? 0 : groups - 1);
      sp.head_mix = detail::index::mix(detail::index::lo(head));
      sp.head = head;
      sp.super_head = super_head;
      sp.valid = true;
    }
    p.node_index = sp.node_index;
    p.ns = &nodes_[p.node_index];
    p.node = p.ns->id;
    const std::uint64_t groups = p.ns->geo.groups;
    const H& h = chain[k];
    // The first group is the segment's (a lookup reads it whole); the second is the block's own:
    // chains that share a segment's head but branch inside it (one system prompt, many
    // conversations) spread over every group instead of filling the head's two buckets.
    p.group[0] = sp.group0;
    p.group[1] = detail::index::mix(detail::index::lo(h) ^ 0x13198A2E03707344u) &
                 (groups == 0 ? 0 : groups - 1);
    if (p.group[1] == p.group[0] && groups > 1) p.group[1] ^= 1;
    p.offset = static_cast<unsigned>(k % segment);
    // In its own group a block takes a bucket of its own too (not the one at its offset, which
    // the first groups of other segments fill at every offset that branches often); heads keep
    // bucket 0, where a lookup reads them.
    p.bucket[0] = p.offset;
    p.bucket[1] = p.offset == 0
                      ? 0
                      : 1 + static_cast<unsigned>(
                                detail::index::mix(detail::index::lo(h) ^ 0xA4093822299F31D0u) %
                                (segment - 1));
    p.tag = detail::index::lo(h) & index_layout::mask(index_layout::tag_bits);
    if constexpr (H::bits == 128) {
      p.check = static_cast<std::uint16_t>(detail::index::hi(h));
    } else {
      p.check = static_cast<std::uint16_t>((sp.head_mix >> 48) ^
                                           (detail::index::lo(h) >> index_layout::tag_bits));
    }
    p.key_bits = (p.tag >> 40) & index_layout::mask(index_layout::reserved_tag_bits);
    return p;
  }

  node_state& node_of(node_id id) {
    KVC_ASSERT(id < node_index_.size() && node_index_[id] != npos, "node not in the index");
    return nodes_[node_index_[id]];
  }
  const node_state& node_of(node_id id) const {
    KVC_ASSERT(id < node_index_.size() && node_index_[id] != npos, "node not in the index");
    return nodes_[node_index_[id]];
  }

  // Group `which` of p, at `offset` in it (its header first, then its buckets).
  KVC_ALWAYS_INLINE static remote_ptr in_group(const place_t& p, unsigned which,
                                               std::uint64_t offset) {
    return remote_ptr(p.node,
                      p.ns->groups_off + p.group[which] * index_layout::group_stride + offset);
  }
  KVC_ALWAYS_INLINE static remote_ptr group_ptr(const place_t& p, unsigned which) {
    return in_group(p, which, index_layout::group_header_bytes);
  }
  // The overflow word of p's first group (just before its bucket 0).
  KVC_ALWAYS_INLINE static remote_ptr overflow_ptr(const place_t& p) {
    return in_group(p, 0, index_layout::overflow_offset);
  }
  // What this client last saw of p's first group's overflow word (bits are only ever set, so a
  // word seen is a lower bound of the word now); every offset when it never saw it.
  bool overflow_known(const place_t& p) const {
    return overflow_seen_.contains(overflow_ptr(p).raw());
  }
  std::uint64_t expected_overflow(const place_t& p) const {
    const auto it = overflow_seen_.find(overflow_ptr(p).raw());
    return it == overflow_seen_.end() ? index_layout::overflow_all : it->second;
  }
  void saw_overflow(const place_t& p, std::uint64_t word) {
    saw_overflow_at(overflow_ptr(p), word);
  }
  void saw_overflow_at(remote_ptr at, std::uint64_t word) {
    word &= index_layout::overflow_all;
    // The blocks of one segment share their first group's word: the common case is the last
    // word recorded again.
    if (at.raw() == last_overflow_.first && (word & ~last_overflow_.second) == 0) return;
    if (overflow_seen_.size() >= max_overflow_seen) overflow_seen_.clear();
    std::uint64_t& seen = overflow_seen_[at.raw()];
    seen |= word;  // bits are never cleared
    last_overflow_ = {at.raw(), seen};
  }
  KVC_ALWAYS_INLINE static remote_ptr bucket_ptr(const place_t& p, unsigned which,
                                                 unsigned bucket) {
    return group_ptr(p, which) + std::uint64_t{bucket} * index_layout::bucket_bytes;
  }
  KVC_ALWAYS_INLINE static remote_ptr slot_ptr(const place_t& p, unsigned which, unsigned bucket,
                                               unsigned s) {
    return bucket_ptr(p, which, bucket) + std::uint64_t{s} * index_layout::slot_bytes;
  }
  KVC_ALWAYS_INLINE remote_ptr record_ptr(node_id node, std::uint64_t slab) const {
    return remote_ptr(node, node_of(node).records_off + slab * index_layout::record_bytes);
  }
  remote_ptr data_ptr(node_id node, std::uint64_t slab) const {
    return remote_ptr(node, node_of(node).data_off + slab * node_of(node).geo.block_bytes);
  }
  static remote_ptr client_ptr(const node_state& ns, std::uint64_t id) {
    return remote_ptr(ns.id, ns.clients_off + id * index_layout::client_bytes);
  }
  static remote_ptr chunk_ptr(const node_state& ns, std::uint64_t k) {
    return remote_ptr(ns.id, ns.chunks_off + k * index_layout::chunk_entry_bytes);
  }
  static bool slot_in_range(const node_state& ns, std::uint64_t raw) {
    const remote_ptr p = remote_ptr::from_raw(raw);
    return p.node() == ns.id && p.offset() >= ns.groups_off &&
           p.offset() < ns.groups_off + ns.geo.groups * index_layout::group_stride &&
           (p.offset() - ns.groups_off) % index_layout::group_stride >=
               index_layout::group_header_bytes &&
           (p.offset() - ns.groups_off) % index_layout::slot_bytes == 0;
  }

  block_ref head_ref(std::size_t j, node_id node) const {
    const head_state& hs = heads_[j];
    return block_ref{node, hs.slab, hs.slot, hs.word1};
  }

  // ---- buckets ---------------------------------------------------------------------------------

  static int find(const std::byte* bucket, const place_t& p) noexcept {
    for (unsigned s = 0; s < index_layout::slots_per_bucket; ++s) {
      const std::byte* sp = bucket + s * index_layout::slot_bytes;
      const index_layout::slot sl{detail::index::load64(sp), detail::index::load64(sp + 8)};
      if (index_layout::holds(sl, p.tag, p.check) &&
          index_layout::slot_word::decode(sl.word1).ptr < p.ns->geo.slabs()) {
        return static_cast<int>(s);
      }
    }
    return -1;
  }
  static bool has_empty(const std::byte* bucket) noexcept {
    for (unsigned s = 0; s < index_layout::slots_per_bucket; ++s) {
      const auto w1 = index_layout::slot_word::decode(
          detail::index::load64(bucket + s * index_layout::slot_bytes + 8));
      if (w1.state == index_layout::slot_state::empty) return true;
    }
    return false;
  }
  static std::uint64_t word1_of(const std::byte* bucket, int s) noexcept {
    return detail::index::load64(bucket + static_cast<unsigned>(s) * index_layout::slot_bytes + 8);
  }
  static std::uint64_t slot_ptr_field(const std::byte* bucket, int s) noexcept {
    return index_layout::slot_word::decode(word1_of(bucket, s)).ptr;
  }

  // ---- rounds and scratch ----------------------------------------------------------------------

  // A batch of this client's, given back cleared when it goes out of scope: batches keep their
  // operation and status vectors' capacity, so a warm lookup or insert allocates nothing for
  // them (a fresh batch per round grew each vector from empty: 17 allocations per N = 256 lookup).
  class pooled_batch {
   public:
    explicit pooled_batch(remote_index& ix) : ix_(ix) {
      if (ix.spare_batches_.empty()) {
        // Room to keep every batch ever made: giving one back (a destructor, perhaps while an
        // exception unwinds) never allocates.
        ix.spare_batches_.reserve(ix.batches_made_ + 1);
        b_.reset(new typename T::batch(ix.t_.new_batch()));  // no move: batches need not move
        ++ix.batches_made_;
      } else {
        b_ = std::move(ix.spare_batches_.back());
        ix.spare_batches_.pop_back();
      }
    }
    ~pooled_batch() {
      // A batch that cannot be cleared (out of memory while it waits for what is in flight) is
      // neither reused nor destroyed: what may still land in it stays valid memory.
      bool cleared = false;
      detail::instead_if_throws(
          [&] {
            b_->clear();
            cleared = true;
          },
          [&] {
            (void)b_.release();
            ++ix_.batches_leaked_;
          });
      if (cleared) ix_.spare_batches_.push_back(std::move(b_));
    }
    pooled_batch(const pooled_batch&) = delete;
    pooled_batch& operator=(const pooled_batch&) = delete;
    typename T::batch& operator*() const noexcept { return *b_; }

   private:
    remote_index& ix_;
    std::unique_ptr<typename T::batch> b_;
  };
  // A heartbeat between its two halves: the FAAs of this client's word on every node it is
  // registered on (and not in doubt there), and their answers.
  struct beat_in_flight {
    explicit beat_in_flight(remote_index& ix) : b(ix) {}
    pooled_batch b;
    std::vector<std::pair<node_state*, local_buffer>> sent;
  };

  // A new batch: per-node operation counts start over. Scratch memory is kept (buffers of
  // earlier rounds are still read); begin_op() frees it, a scratch_mark frees a loop's share.
  void reset_round() { round_ops_.assign(nodes_.size() + 1, 0); }
  // `keep`: scratch bytes left in place (an insert keeping its lookup's boundary reads).
  void begin_op(std::size_t keep = 0) {
    if (KVC_UNLIKELY(beat_.has_value())) finish_keep_alive();  // its answers are in scratch
    used_ = keep;
    overflow_ = false;
    reset_round();
    ++ops_begun_;
  }
  struct scratch_mark {
    explicit scratch_mark(remote_index& ix) : ix_(ix), saved_(ix.used_) {}
    ~scratch_mark() { ix_.used_ = saved_; }
    scratch_mark(const scratch_mark&) = delete;
    scratch_mark& operator=(const scratch_mark&) = delete;
    remote_index& ix_;
    std::size_t saved_;
  };
  KVC_ALWAYS_INLINE local_buffer take(std::size_t bytes) {
    const std::size_t n = (bytes + 7) / 8 * 8;
    if (used_ + n > scratch_.size) {
      overflow_ = true;
      return scratch_.sub(0, 0);
    }
    local_buffer b = scratch_.sub(used_, bytes);
    used_ += n;
    return b;
  }
  [[nodiscard]] std::size_t scratch_left() const noexcept { return scratch_.size - used_; }
  bool room(node_id node, std::size_t ops) {
    return round_ops_[node_index_[node]] + ops <= cfg_.max_ops_per_node;
  }
  void count_op(node_id node, std::size_t ops = 1) { round_ops_[node_index_[node]] += ops; }
  static failure scratch_full() {
    return fail(errc::buffer_too_small,
                "remote_index: the operation needs more scratch memory "
                "than remote_index_config::scratch_bytes");
  }

  // Rings a batch and waits for it. First, a client whose last heartbeat is a quarter lease old
  // heartbeats (one more round trip, every lease / 4 at most), and a batch for a node where this
  // client was declared dead or is in doubt does not go out at all: its entry may be recovered
  // by others, and nothing it read can be trusted (lease_lost_ tells the caller). A batch that
  // would be rung at `ring_by` or later does not go out either (missed_ring_by_ tells).
  template <class Batch>
  result<void> run(Batch& b, unsigned& round_trips, const char* step = nullptr,
                   std::chrono::steady_clock::time_point ring_by =
                       std::chrono::steady_clock::time_point::max()) {
    missed_ring_by_ = false;
    if (overflow_) return scratch_full();
    if (b.size() == 0) return {};
    if (std::chrono::steady_clock::now() - last_beat_ >= cfg_.lease / 4) {
      if (auto ok = heartbeat(); !ok) return ok;
    }
    node_id checked = 0;  // the node of the run of operations whose lease was checked
    bool any_checked = false;
    for (const operation& op : b.operations()) {
      bytes_posted_ += op.bytes();
      const node_id n = op.remote.node();
      if (any_checked && n == checked) continue;
      any_checked = true;
      checked = n;
      if (n < node_index_.size() && node_index_[n] != npos && nodes_[node_index_[n]].broken) {
        lease_lost_ = true;
        return out_of_reach(nodes_[node_index_[n]]);
      }
    }
    if (step != nullptr && hook_) hook_(step);
    if (ring_by != std::chrono::steady_clock::time_point::max() &&
        std::chrono::steady_clock::now() >= ring_by) {
      missed_ring_by_ = true;
      return fail(errc::timed_out, "a batch missed the moment it had to go out by");
    }
    require_identities(b);
    b.ring();
    ++round_trips;
    ++rounds_run_;
    auto done = b.wait();
    if (!done) ++rounds_failed_;
    if (!done) {
      // Registered under an identity the transport replaced after a node refused it as fenced:
      // what this client holds on those nodes is someone else's now; register anew. Or the node
      // serves another region than the one whose header this client read (it restarted, or
      // came back otherwise unfit): read it again, and register anew there.
      for (std::size_t i = 0; i < b.size(); ++i) {
        const node_id n = b.operations()[i].remote.node();
        const errc e = b.status(i);
        if ((e == errc::fenced || e == errc::format_mismatch) && n < node_index_.size() &&
            node_index_[n] != npos) {
          nodes_[node_index_[n]].broken = true;
          lease_lost_ = true;
        }
      }
    }
    return done;
  }

  // On transports that can be told (verbs), a batch goes out to a node only under the identity
  // this client's registration there names (what a fencing node would cut off), and only to the
  // region whose header this client read (a node that restarted serves another, which the
  // transport reconnects to unasked: the operations fail unposted instead of landing at the old
  // layout's offsets; the client reads the new header before it registers again), or not at all.
  // When the region whose header this client read at node `ns` was created (what batches
  // require), from that header.
  [[nodiscard]] static std::uint64_t region_created_ms(const node_state& ns) noexcept {
    std::uint64_t ms = 0;
    std::memcpy(&ms, ns.header.data() + offsetof(region_header, created_unix_ms), sizeof ms);
    return ms;
  }
  template <class Batch>
  void require_identities(Batch& b) {
    if constexpr (requires(node_id n, std::uint64_t id) { b.require_identity(n, id, id); }) {
      for (const node_state& ns : nodes_) {
        if (ns.registered && ns.identity != 0) {
          b.require_identity(ns.id, ns.identity, region_created_ms(ns));
        } else if (ns.attached && !ns.reading_header) {  // registering: any identity, that region
          b.require_identity(ns.id, 0, region_created_ms(ns));
        }
      }
    }
  }

  void backoff(unsigned attempt) {
    const auto cap =
        std::min<std::int64_t>(cfg_.max_backoff.count(), std::int64_t{1} << std::min(attempt, 20u));
    std::uniform_int_distribution<std::int64_t> d(0, std::max<std::int64_t>(cap, 1));
    std::this_thread::sleep_for(std::chrono::microseconds(d(rng_)));
  }

  T& t_;
  std::uint64_t bytes_posted_ = 0;  // by every batch this client rang
  remote_index_config cfg_;
  std::mt19937_64 rng_;
  pass_vectors pass_;  // insert_attempt's
  std::vector<node_state> nodes_;
  std::vector<std::size_t> node_index_;
  std::unique_ptr<std::uint64_t[]> scratch_mem_;
  std::optional<typename T::registration> reg_;
  local_buffer scratch_;
  std::size_t used_ = 0;
  bool overflow_ = false;
  std::vector<std::size_t> round_ops_;
  std::vector<head_state> heads_;
  // Overflow words last seen, by their remote pointer (a hinted lookup reads the second buckets
  // these name in its first round trip; cleared when it reaches max_overflow_seen).
  static constexpr std::size_t max_overflow_seen = std::size_t{1} << 16;
  std::unordered_map<std::uint64_t, std::uint64_t> overflow_seen_;
  std::uint64_t rounds_run_ = 0;     // round trips run() made, all calls together
  std::uint64_t rounds_failed_ = 0;  // rounds that failed (their outcome may be unknown)
  std::uint64_t block_bytes_ = 0;    // every node's data slot (0 until a node was reached)
  std::pair<std::uint64_t, std::uint64_t> last_overflow_{0, 0};  // the last entry recorded there
  std::chrono::steady_clock::time_point last_beat_{};
  bool closed_ = false;
  index_stats stats_;
  std::function<void(const char*)> hook_;
  std::vector<std::optional<hazard_set>> pins_;
  bool lease_lost_ = false;      // a batch was held back: a node's entry lapsed during the call
  bool missed_ring_by_ = false;  // the last run() held its batch back: past its ring_by
  std::uint64_t ops_begun_ = 0;  // begin_op() calls: tells whether scratch still holds a read
  boundary_seen boundary_;       // the last lookup's boundary segment, in scratch
  mutable segment_place last_segment_;  // place()'s memo (one thread uses a client at a time)
  std::array<std::byte, index_layout::bucket_bytes> no_bucket_{};  // a bucket not read: all EMPTY
  // Batches given back by pooled_batch, cleared (declared last: destroyed first, while the
  // transport and the registration they may refer to are still there).
  std::vector<std::unique_ptr<typename T::batch>> spare_batches_;
  std::size_t batches_made_ = 0;
  std::size_t batches_leaked_ = 0;  // could not be cleared: perhaps still in flight
  // A heartbeat start_keep_alive() rang and finish_keep_alive() reads (after spare_batches_:
  // destroyed before it, its batch given back there).
  std::optional<beat_in_flight> beat_;
};

}  // namespace kvc::inline v0
