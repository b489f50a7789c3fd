// kvc/index/fencer.hpp — the memory node's side of fencing: which clients of the index in its
// own region were declared dead and still have to be cut off, and the fence word that tells the
// other clients it was done. Design: docs/design/remote_index.md ("Fencing").
//
// A client is declared dead by another client after a lease without heartbeat (a CAS on its
// entry's word). Without fencing, recovery then waits `recovery_delay` more, in case the client
// was only slow and is about to land one more batch. A memory node that can cut a client off
// (verbs: move its queue pairs to the error state and refuse its identity from then on) does
// so, and then stores the fence word; clients recover a fenced entry at once.
//
// index_fencer reads the region through the memory node's own mapping (the CPU, not the NIC):
// due() lists the entries declared dead whose identity word names that same incarnation and
// whose fence word does not; mark_fenced() stores the fence word. What "cut off" means is the
// caller's (kvc/verbs/fencing.hpp for verbs); it must be done before mark_fenced().
//
// Concurrency: due() and mark_fenced() may run while clients use the region (they read with
// atomic loads and store one word no client writes). One thread at a time per fencer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvc/error.hpp"
#include "kvc/index/layout.hpp"
#include "kvc/transport/region.hpp"

namespace kvc::inline v0 {

// A client entry declared dead whose owner is still to be cut off.
struct fence_target {
  std::uint32_t entry = 0;
  std::uint32_t incarnation = 0;
  std::uint64_t identity = 0;  // its transport's (kvc::transport_identity)
  friend bool operator==(const fence_target&, const fence_target&) = default;
};

class index_fencer {
 public:
  // `base`: the memory node's mapping of its region (header first), formatted for the index.
  // Also announces fencing in the header (index_layout::announce_fencing), which clients read
  // when they attach: call it before the node takes clients.
  [[nodiscard]] static result<index_fencer> attach(std::byte* base) {
    auto& header = *reinterpret_cast<region_header*>(base);
    auto g = index_layout::read_layout(header);
    if (!g) return std::move(g).take_failure();
    index_layout::announce_fencing(header);
    index_fencer f;
    f.clients_ = base + g->clients_offset(header.data_offset);
    f.count_ = g->clients;
    return f;
  }

  // Entries declared dead, with an identity written for that incarnation, not fenced yet.
  // Entries without identity (a client that died before writing it, or whose transport has
  // none) cannot be fenced; clients recover them after recovery_delay.
  [[nodiscard]] std::vector<fence_target> due() const {
    using index_layout::client_state;
    std::vector<fence_target> out;
    for (std::uint64_t id = 0; id < count_; ++id) {
      const auto w = index_layout::client_word::decode(load(id, 0));
      if (w.state != client_state::dead) continue;
      const auto who = index_layout::identity_word::decode(load(id, index_layout::identity_offset));
      if (who.identity == 0 || who.incarnation != w.incarnation) continue;
      if (index_layout::fence_word::names(load(id, index_layout::fence_offset), w.incarnation)) {
        continue;
      }
      out.push_back({static_cast<std::uint32_t>(id), w.incarnation, who.identity});
    }
    return out;
  }

  // Whether `t`'s entry still reads dead in t's incarnation (not recovered, not taken again).
  [[nodiscard]] bool still_due(const fence_target& t) const noexcept {
    const auto w = client(t.entry);
    return w.state == index_layout::client_state::dead && w.incarnation == t.incarnation;
  }

  // Stores the fence word of `t`: its owner in that incarnation can reach the region no more.
  // Nothing is stored (false) when the entry moved on meanwhile (recovered, or taken by another
  // client): a fence word names one incarnation, and a later one is never said to be fenced.
  bool mark_fenced(const fence_target& t) {
    if (!still_due(t)) return false;
    std::atomic_ref<std::uint64_t>(word(t.entry, index_layout::fence_offset))
        .store(index_layout::fence_word::encode(t.incarnation), std::memory_order_seq_cst);
    return true;
  }

  // Zeroes fence words that name an incarnation other than their entry's current one (the entry
  // was recovered and taken again): incarnations are 22 bits, and after they wrap an old fence
  // word must not name a new incarnation that was never cut off. Returns how many it zeroed.
  std::size_t clear_stale() {
    std::size_t cleared = 0;
    for (std::uint64_t id = 0; id < count_; ++id) {
      const std::uint64_t f = load(id, index_layout::fence_offset);
      if (f == 0 ||
          index_layout::fence_word::names(f, client(static_cast<std::uint32_t>(id)).incarnation)) {
        continue;
      }
      std::atomic_ref<std::uint64_t>(word(id, index_layout::fence_offset))
          .store(0, std::memory_order_seq_cst);
      ++cleared;
    }
    return cleared;
  }

  // An entry's fence word as it is now.
  [[nodiscard]] std::uint64_t fence(std::uint32_t entry) const noexcept {
    return load(entry, index_layout::fence_offset);
  }

  [[nodiscard]] std::uint64_t clients() const noexcept { return count_; }
  // An entry's client word as it is now.
  [[nodiscard]] index_layout::client_word client(std::uint32_t entry) const noexcept {
    return index_layout::client_word::decode(load(entry, 0));
  }

 private:
  index_fencer() = default;
  [[nodiscard]] std::uint64_t& word(std::uint64_t entry, std::size_t offset) const noexcept {
    return *reinterpret_cast<std::uint64_t*>(clients_ + entry * index_layout::client_bytes +
                                             offset);
  }
  [[nodiscard]] std::uint64_t load(std::uint64_t entry, std::size_t offset) const noexcept {
    return std::atomic_ref<std::uint64_t>(word(entry, offset)).load(std::memory_order_acquire);
  }

  std::byte* clients_ = nullptr;
  std::uint64_t count_ = 0;
};

}  // namespace kvc::inline v0
