// kvc/concepts.hpp — the roles a host composes kvc from, as C++20 concepts. Each concept's comment
// states the half of the contract the compiler cannot check; every model kvc ships is followed by
// a static_assert, and negative cases live in tests/conformance/.
//
// Roles whose components are still being built (Tier) state their contract and the
// operations every model must have; their components refine them.
//
// Concurrency: declarations only. Design: docs/design/core.md.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <type_traits>

#include "kvc/error.hpp"
#include "kvc/hash/block_hash.hpp"
#include "kvc/hash/extra_keys.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc::inline v0 {

// A block key. Semantics: equal values mean the same block (same tokens, extra keys and prefix);
// the bits are uniformly distributed, so std::hash may pass them through and any bit range may
// pick a shard or bucket; to_bytes() is the canonical encoding, the same on every machine.
template <class H>
concept BlockHash = std::regular<H> && std::totally_ordered<H> && std::is_trivially_copyable_v<H> &&
                    (H::bits == 64 || H::bits == 128) &&
                    requires(const H& h) {
  { std::hash<H>{}(h) } -> std::convertible_to<std::size_t>;
  { to_bytes(h).size() } -> std::convertible_to<std::size_t>;
};

// Turns token sequences into chained block keys. Semantics: deterministic across processes,
// machines and runs (no per-process seed); hash_prompt hashes only full blocks, block k's key
// depends on blocks 0..k and their extra keys and on nothing else; const members are safe to call
// concurrently; hash_prompt does not allocate unless it fails.
template <class T>
concept Hasher = BlockHash<typename T::hash_type> &&
    requires(const T& h, std::span<const token_id> tokens, std::span<typename T::hash_type> out,
             const extra_keys& keys, std::size_t n_tokens) {
  { h.block_size() } -> std::convertible_to<std::uint32_t>;
  { h.root() } -> std::same_as<typename T::hash_type>;
  { h.full_blocks(n_tokens) } -> std::convertible_to<std::size_t>;
  { h.hash_prompt(tokens, out, keys) } -> std::same_as<result<std::size_t>>;
};

// The predicate type the EvictionPolicy concept is checked with: policies accept any callable
// `bool(Hook&)`; this one stands for them in the requires-expression.
template <class Hook>
using evictable_predicate = bool (*)(Hook&);

// Decides which cached entry to drop. The entry embeds the policy's per-entry state by deriving
// from P::hook (Boost.Intrusive style: no allocation per entry or per event).
// Semantics:
//   - insert(h, key): h is now cached (key: 64 uniformly distributed bits naming the entry, for
//     policies that remember keys, such as S3-FIFO's ghost queue or TinyLFU's sketch);
//   - access(h, key): h was used; erase(h): h is no longer cached (evicted or erased);
//   - victim(evictable): the entry the policy would drop next among those for which
//     evictable(h) is true, or nullptr when there is none; it does not remove the entry (the
//     caller erases it, then calls erase(h)). Entries that are not evictable now (pinned, or
//     inner blocks of a prefix tree) are passed over and may be re-queued as if just used, so a
//     call costs amortised O(1) per passed-over entry and visits each entry at most a bounded
//     number of times (it terminates even when nothing is evictable);
//   - size(): entries tracked.
// Bookkeeping is O(1) per event where the policy allows (LFU's ordering is O(log n)). The caller
// serialises all calls (policies are not thread-safe); hooks must stay at a fixed address while
// inserted.
template <class P>
concept EvictionPolicy = requires(P& p, const P& cp, typename P::hook& h, std::uint64_t key,
                                  evictable_predicate<typename P::hook> evictable) {
  p.insert(h, key);
  p.access(h, key);
  p.erase(h);
  { p.victim(evictable) } -> std::same_as<typename P::hook*>;
  { cp.size() } -> std::convertible_to<std::size_t>;
};

// One storage tier of fixed-size KV blocks (device ids, host DRAM, remote DRAM, SSD). Semantics:
// allocate() hands out a slot no one else holds, or reports the tier full (an expected outcome,
// not an error); release() returns it; a slot's bytes are stable until released; moves between
// tiers are asynchronous and a block is never read before its copy completed. Refined by the
// block-pool component.
template <class T>
concept Tier = requires(T& t, typename T::slot s) {
  { t.block_bytes() } -> std::convertible_to<std::size_t>;
  { t.capacity() } -> std::convertible_to<std::size_t>;
  { t.allocate() } -> std::same_as<result<typename T::slot>>;
  t.release(s);
};

// One-sided access to memory nodes' regions (kvc/transport/, docs/design/transport.md).
// Semantics every model gives, and the index protocol relies on:
// - Operations are posted into a batch; ring() sends them (one doorbell per connection, one
//   round trip); poll() makes progress and returns true once all completed; wait() blocks until
//   then and returns success or the first failure. status(i) says how operation i ended.
// - Operations of one batch execute at the memory node in posting order on their connection
//   (one connection per memory node per batch): a later operation sees an earlier one's effect,
//   and every other client observes them in that order too (a WRITE then READ by one client and
//   a WRITE then READ by another cannot both miss each other's WRITE). Batches, and operations
//   on different nodes, are not ordered with each other. (verbs: one NIC per region, registered
//   without relaxed ordering, as kvc does.)
// - CAS and FAA on an 8-byte aligned word are atomic against every CAS and FAA of every client,
//   and a READ sees the word whole, before or after. A word that clients CAS or FAA must not be
//   the target of a concurrent WRITE (RDMA NICs do not order a WRITE against an atomic on the
//   same word): protocols change such words with atomics only. READ and WRITE are not atomic
//   beyond aligned 8-byte words: a READ racing a WRITE may return a mix of old and new words.
// - A failed operation (out of bounds, bad key, unreachable node) reports its error, and the
//   later operations of its batch on that connection are not executed (errc::not_executed) —
//   or, where that cannot be known (a timeout, a connection lost mid-batch), report the same
//   error as the failed one; nothing fails silently and nothing else is lost.
// - Local buffers stay owned by the caller and untouched by it until the batch completed.
template <class T>
concept Transport = requires(T& t, const T& ct, typename T::batch& b, remote_ptr r, local_buffer l,
                             std::uint64_t v, std::size_t i, std::span<std::byte> mem) {
  { t.new_batch() } -> std::same_as<typename T::batch>;
  { t.register_memory(mem) } -> std::same_as<result<typename T::registration>>;
  { ct.region_bytes(node_id{}) } -> std::convertible_to<std::uint64_t>;
  { b.read(r, l) } -> std::same_as<std::size_t>;
  { b.write(r, l) } -> std::same_as<std::size_t>;
  { b.cas(r, v, v, l) } -> std::same_as<std::size_t>;
  { b.faa(r, v, l) } -> std::same_as<std::size_t>;
  b.ring();
  { b.poll() } -> std::same_as<bool>;
  { b.wait() } -> std::same_as<result<void>>;
  { b.status(i) } -> std::same_as<errc>;
  { b.size() } -> std::convertible_to<std::size_t>;
  { b.operations() } -> std::convertible_to<std::span<const operation>>;
  b.clear();
};

// Which transport object a client is, as memory nodes see it: a member `identity()` (40 bits,
// never 0; the same in every connection one transport object makes) lets a fencing memory node
// cut off a client declared dead (docs/design/remote_index.md, "Fencing"); 0 = none.
template <Transport T>
[[nodiscard]] std::uint64_t transport_identity(const T& t) {
  if constexpr (requires {
                  { t.identity() } -> std::convertible_to<std::uint64_t>;
                }) {
    return t.identity();
  } else {
    return 0;
  }
}

// How many operations one batch may carry per memory node: a transport says so with a member
// `max_ops_per_node()` (verbs: its queue pairs' depth; shm: no queue, so a large bound), and one
// that does not gets 256, what a verbs queue pair takes by default. Protocols size their rounds
// by it (remote_index: every head of a chain of up to 16x this many blocks in one round).
inline constexpr std::size_t default_max_ops_per_node = 256;
template <Transport T>
[[nodiscard]] std::size_t max_ops_per_node(const T& t) {
  if constexpr (requires {
                  { t.max_ops_per_node() } -> std::convertible_to<std::size_t>;
                }) {
    return t.max_ops_per_node();
  } else {
    return default_max_ops_per_node;
  }
}

// How many batches may be in flight (rung, not yet completed) on the transport at once, all
// threads together: a transport says so with a member `max_batches_in_flight()` (verbs: its
// lanes; a ring() beyond waits for one to complete); one that does not has no such limit.
template <Transport T>
[[nodiscard]] std::size_t max_batches_in_flight(const T& t) {
  if constexpr (requires {
                  { t.max_batches_in_flight() } -> std::convertible_to<std::size_t>;
                }) {
    return t.max_batches_in_flight();
  } else {
    return std::numeric_limits<std::size_t>::max();
  }
}

}  // namespace kvc::inline v0
