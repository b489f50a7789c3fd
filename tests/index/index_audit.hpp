// An auditor of the one-sided index: walks memory nodes' regions directly in memory (the
// formats of kvc/index/layout.hpp only, none of the client's internals) and checks the
// invariants of docs/design/remote_index.md. Run it while no client changes the regions.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvc/detail/xxhash.hpp"
#include "kvc/index/layout.hpp"
#include "kvc/transport/region.hpp"
#include "kvc/transport/remote_ptr.hpp"

namespace kvc_test {

// One memory node's region as mapped in this process.
struct audited_region {
  const std::byte* base = nullptr;
  const kvc::region_header* header = nullptr;
};

struct audit_options {
  // Clients may have crashed between unpublishing a slot and freeing its slab: EVICTING slabs
  // that no slot refers to are then allowed (never after recover_everything()).
  bool crashed_reclaimers = false;
  std::size_t max_messages = 8;
  // Where a block's first bucket is, given its chain's hashes (low words, from the chain's
  // first block to it, rebuilt from the records' parent pointers): placement is the client's,
  // not the layout's. When set, a VALID block outside its first bucket must have its offset
  // named in its first group's overflow word (layout format 5).
  std::function<kvc::remote_ptr(std::span<const std::uint64_t>)> first_bucket;
};

struct audit_report {
  std::uint64_t empty = 0, reserved = 0, valid = 0, tombstone = 0;                   // slots
  std::uint64_t free_slabs = 0, held_slabs = 0, live_slabs = 0, evicting_slabs = 0;  // slabs
  std::uint64_t live_clients = 0, dead_clients = 0, owned_chunks = 0;  // dead: not recovered yet
  std::vector<std::string> errors;  // broken invariants (first max_messages of them)
  std::uint64_t error_count = 0;
  // Prefix closure: VALID records whose parent is not the record of a VALID slot.
  std::uint64_t closure_violations = 0;
  std::vector<std::string> closure_messages;
  // Child counts: LIVE slabs whose count differs from their VALID children (dead clients can
  // leave counts too high, so this is a figure of its own).
  std::uint64_t count_mismatches = 0;
  std::vector<std::string> count_messages;
  // Blocks published by more than one VALID slot (extra copies).
  std::uint64_t duplicates = 0;
  // VALID blocks found in their second bucket (checked against the overflow words when
  // audit_options::first_bucket is set; 0 otherwise).
  std::uint64_t second_bucket_blocks = 0;

  [[nodiscard]] bool clean() const noexcept { return error_count == 0; }
  [[nodiscard]] std::string summary() const {
    std::string s =
        "slots empty " + std::to_string(empty) + " reserved " + std::to_string(reserved) +
        " valid " + std::to_string(valid) + " tombstone " + std::to_string(tombstone) +
        "; slabs free " + std::to_string(free_slabs) + " held " + std::to_string(held_slabs) +
        " live " + std::to_string(live_slabs) + " evicting " + std::to_string(evicting_slabs) +
        "; live clients " + std::to_string(live_clients) + ", dead " +
        std::to_string(dead_clients) + ", owned chunks " + std::to_string(owned_chunks) +
        "; errors " + std::to_string(error_count) + ", closure violations " +
        std::to_string(closure_violations) + ", count mismatches " +
        std::to_string(count_mismatches) + ", duplicates " + std::to_string(duplicates) +
        ", in second buckets " + std::to_string(second_bucket_blocks);
    for (const auto& e : errors) s += "\n  error: " + e;
    for (const auto& e : closure_messages) s += "\n  closure: " + e;
    for (const auto& e : count_messages) s += "\n  count: " + e;
    return s;
  }
};

namespace audit_detail {

inline std::uint64_t word_at(const std::byte* base, std::uint64_t offset) {
  std::uint64_t v;
  std::memcpy(&v, base + offset, 8);
  return v;
}

inline std::uint64_t checksum(const kvc::index_layout::record& r) {
  const std::uint64_t words[5] = {r.hash_lo, r.hash_hi, r.parent, r.slot_at, r.shape};
  return XXH3_64bits(words, sizeof words);
}

inline void note(std::uint64_t& count, std::vector<std::string>& messages, std::size_t max,
                 std::string message) {
  ++count;
  if (messages.size() < max) messages.push_back(std::move(message));
}

}  // namespace audit_detail

// Audits every region of `regions` together (a record's parent may live on another node).
inline audit_report audit_index(std::span<const audited_region> regions,
                                const audit_options& opt = {}) {
  namespace L = kvc::index_layout;
  using audit_detail::note;
  using audit_detail::word_at;
  audit_report rep;
  auto error = [&](std::string m) { note(rep.error_count, rep.errors, opt.max_messages, m); };

  struct node_view {
    const std::byte* base = nullptr;
    kvc::node_id node = 0;
    L::geometry geo;
    std::uint64_t clients_off = 0, chunks_off = 0, groups_off = 0, records_off = 0, data_off = 0;
    std::vector<std::uint32_t> refs;        // slots referring to each slab
    std::vector<std::uint64_t> referrer;    // the first such slot's word1
    std::vector<std::uint64_t> valid_kids;  // VALID children per slab
  };
  std::vector<node_view> views;
  std::unordered_map<kvc::node_id, std::size_t> by_node;
  for (const audited_region& r : regions) {
    auto g = L::read_layout(*r.header);
    if (!g) {
      error("node " + std::to_string(r.header->node) + ": " + g.message());
      continue;
    }
    node_view v;
    v.base = r.base;
    v.node = r.header->node;
    v.geo = *g;
    v.clients_off = g->clients_offset(r.header->data_offset);
    v.chunks_off = g->chunks_offset(r.header->data_offset);
    v.groups_off = g->groups_offset(r.header->data_offset);
    v.data_off = r.header->data_offset;
    v.records_off = g->records_offset(r.header->data_offset);
    v.refs.assign(g->slabs(), 0);
    v.referrer.assign(g->slabs(), 0);
    v.valid_kids.assign(g->slabs(), 0);
    by_node[v.node] = views.size();
    views.push_back(std::move(v));
  }
  auto record_of = [](const node_view& v, std::uint64_t slab) {
    L::record rec;
    std::memcpy(&rec, v.base + v.records_off + slab * L::record_bytes, sizeof rec);
    return rec;
  };
  auto client_live = [](const node_view& v, std::uint64_t id) {
    return id < v.geo.clients &&
           L::client_word::decode(word_at(v.base, v.clients_off + id * L::client_bytes)).state ==
               L::client_state::live;
  };
  auto where = [](const node_view& v, std::uint64_t slot_off) {
    const std::uint64_t rel = slot_off - v.groups_off;
    return "node " + std::to_string(v.node) + " group " + std::to_string(rel / L::group_stride) +
           " slot " +
           std::to_string((rel % L::group_stride - L::group_header_bytes) / L::slot_bytes);
  };

  // Pass 1: slots.
  for (node_view& v : views) {
    for (std::uint64_t id = 0; id < v.geo.clients; ++id) {
      if (client_live(v, id)) ++rep.live_clients;
      const auto state =
          L::client_word::decode(word_at(v.base, v.clients_off + id * L::client_bytes)).state;
      if (state == L::client_state::dead || state == L::client_state::fenced) ++rep.dead_clients;
    }
    for (std::uint64_t s = 0; s < v.geo.slots(); ++s) {
      const std::uint64_t off = v.geo.slot_offset(v.data_off, s);
      const auto w1 = L::slot_word::decode(word_at(v.base, off + 8));
      switch (w1.state) {
        case L::slot_state::empty:
          ++rep.empty;
          continue;
        case L::slot_state::reserved:
          ++rep.reserved;
          if (!client_live(v, L::reserved_owner(w1.ptr))) {
            error(where(v, off) + " is RESERVED by client " +
                  std::to_string(L::reserved_owner(w1.ptr)) + ", which is not live");
          }
          continue;
        case L::slot_state::valid:
          ++rep.valid;
          break;
        case L::slot_state::tombstone:
          ++rep.tombstone;
          break;
      }
      if (w1.ptr >= v.geo.slabs()) {
        error(where(v, off) + " points to slab " + std::to_string(w1.ptr) + " beyond " +
              std::to_string(v.geo.slabs()));
        continue;
      }
      if (v.refs[w1.ptr]++ == 0) {
        v.referrer[w1.ptr] = word_at(v.base, off + 8);
      } else {
        error(where(v, off) + " refers to slab " + std::to_string(w1.ptr) +
              ", which another slot refers to as well");
      }
      const L::record rec = record_of(v, w1.ptr);
      const auto sw = L::slab_word::decode(rec.slab);
      const std::string what = where(v, off) + " (slab " + std::to_string(w1.ptr) + ")";
      if (w1.state == L::slot_state::tombstone) {
        if (sw.state != L::slab_state::evicting) {
          error(what + " is a TOMBSTONE whose slab is not EVICTING (state " +
                std::to_string(static_cast<int>(sw.state)) + ")");
        }
        continue;
      }
      // VALID.
      if (L::tag_word::decode(word_at(v.base, off)).version != w1.version) {
        error(what + " is VALID with word0's version disagreeing");
      }
      if (rec.slot_at != kvc::remote_ptr(v.node, off).raw()) {
        error(what + " is VALID but its record names another slot");
      }
      if (rec.checksum != audit_detail::checksum(rec)) {
        error(what + " is VALID with a record checksum that does not match");
      }
      const bool held_ok = sw.state == L::slab_state::held && client_live(v, sw.owner);
      if (sw.state != L::slab_state::live && !held_ok) {
        error(what + " is VALID but its slab is " +
              (sw.state == L::slab_state::free ? std::string("FREE")
               : sw.state == L::slab_state::evicting
                   ? std::string("EVICTING")
                   : "HELD by client " + std::to_string(sw.owner) + ", not live"));
      }
    }
  }

  // The node and slab index of a record pointer, if it names a record of an audited region.
  auto record_at = [&](std::uint64_t raw) -> std::optional<std::pair<node_view*, std::uint64_t>> {
    const kvc::remote_ptr p = kvc::remote_ptr::from_raw(raw);
    auto it = by_node.find(p.node());
    if (it == by_node.end()) return std::nullopt;
    node_view& pv = views[it->second];
    const std::uint64_t off = p.offset();
    if (off < pv.records_off || (off - pv.records_off) % L::record_bytes != 0 ||
        (off - pv.records_off) / L::record_bytes >= pv.geo.slabs()) {
      return std::nullopt;
    }
    return std::pair{&pv, (off - pv.records_off) / L::record_bytes};
  };
  // A VALID block outside its first bucket: its offset must be named in its first group's
  // overflow word before it was published (bits are never cleared).
  std::vector<std::uint64_t> chain;
  auto check_overflow = [&](const node_view& v, std::uint64_t x, const L::record& rec) {
    chain.assign(1, rec.hash_lo);
    for (std::uint64_t parent = rec.parent; parent != 0;) {
      const auto at = record_at(parent);
      if (!at || chain.size() > (std::uint64_t{1} << 20)) return;  // closure reports it
      const L::record pr = record_of(*at->first, at->second);
      chain.push_back(pr.hash_lo);
      parent = pr.parent;
    }
    std::reverse(chain.begin(), chain.end());
    const kvc::remote_ptr first = opt.first_bucket(chain);
    const kvc::remote_ptr slot = kvc::remote_ptr::from_raw(rec.slot_at);
    if (slot.node() == first.node() && slot.offset() >= first.offset() &&
        slot.offset() < first.offset() + L::bucket_bytes) {
      return;
    }
    ++rep.second_bucket_blocks;
    const auto offset = static_cast<unsigned>((chain.size() - 1) % L::segment_blocks);
    auto it = by_node.find(first.node());
    if (it == by_node.end()) return;
    const std::uint64_t word =
        word_at(views[it->second].base, first.offset() - offset * L::bucket_bytes - 8);
    if ((word & L::overflow_bit(offset)) == 0) {
      error("node " + std::to_string(v.node) + " slab " + std::to_string(x) +
            " is VALID in its second bucket at offset " + std::to_string(offset) +
            ", which its first group's overflow word does not name");
    }
  };

  // Pass 2: prefix closure, children and duplicates, from the VALID slots' records. A child
  // counts in its parent until its slab is reclaimed (TOMBSTONE children too).
  std::unordered_map<std::uint64_t, std::uint64_t> copies;  // by hash (low ^ mixed high)
  for (node_view& v : views) {
    for (std::uint64_t x = 0; x < v.geo.slabs(); ++x) {
      if (v.refs[x] == 0) continue;
      const auto w1 = L::slot_word::decode(v.referrer[x]);
      const bool valid = w1.state == L::slot_state::valid;
      if (!valid && w1.state != L::slot_state::tombstone) continue;
      const L::record rec = record_of(v, x);
      if (valid && copies[rec.hash_lo ^ (rec.hash_hi * 0x9E3779B97F4A7C15u)]++ > 0) {
        ++rep.duplicates;
      }
      if (valid && opt.first_bucket) check_overflow(v, x, rec);
      if (rec.parent == 0) continue;
      bool ok = false;
      if (const auto at = record_at(rec.parent)) {
        node_view& pv = *at->first;
        const std::uint64_t px = at->second;
        if (pv.refs[px] > 0 &&
            L::slot_word::decode(pv.referrer[px]).state == L::slot_state::valid) {
          ok = true;
          ++pv.valid_kids[px];
        }
      }
      if (!ok && valid) {
        note(rep.closure_violations, rep.closure_messages, opt.max_messages,
             "node " + std::to_string(v.node) + " slab " + std::to_string(x) + " (hash " +
                 std::to_string(rec.hash_lo) + ") is VALID under a parent that is not");
      }
    }
  }

  // Pass 3: slabs and chunks.
  for (node_view& v : views) {
    for (std::uint64_t k = 0; k < v.geo.chunks; ++k) {
      if (L::chunk_word::decode(word_at(v.base, v.chunks_off + k * L::chunk_entry_bytes)).state ==
          L::chunk_state::owned) {
        ++rep.owned_chunks;
      }
    }
    for (std::uint64_t x = 0; x < v.geo.slabs(); ++x) {
      const L::record rec = record_of(v, x);
      const auto sw = L::slab_word::decode(rec.slab);
      const std::string what = "node " + std::to_string(v.node) + " slab " + std::to_string(x);
      switch (sw.state) {
        case L::slab_state::free:
          ++rep.free_slabs;
          if (v.refs[x] > 0) error(what + " is FREE but a slot refers to it");
          break;
        case L::slab_state::held: {
          ++rep.held_slabs;
          const auto cw = L::chunk_word::decode(
              word_at(v.base, v.chunks_off + (x / L::chunk_slabs) * L::chunk_entry_bytes));
          const auto ow = sw.owner < v.geo.clients
                              ? L::client_word::decode(
                                    word_at(v.base, v.clients_off + sw.owner * L::client_bytes))
                              : L::client_word{};
          if (ow.state != L::client_state::live) {
            error(what + " is HELD by client " + std::to_string(sw.owner) + ", which is not live");
          } else if (cw.state != L::chunk_state::owned || cw.owner != sw.owner ||
                     cw.incarnation != ow.incarnation) {
            error(what + " is HELD by client " + std::to_string(sw.owner) +
                  ", which does not own its chunk");
          }
          break;
        }
        case L::slab_state::live:
          ++rep.live_slabs;
          if (v.refs[x] != 1) {
            error(what + " is LIVE but " + std::to_string(v.refs[x]) + " slots refer to it");
          } else if (L::slot_word::decode(v.referrer[x]).state == L::slot_state::valid &&
                     sw.count < v.valid_kids[x]) {
            // Too low is unsafe: the block could be evicted under a published child.
            error(what + " counts " + std::to_string(sw.count) + " children, but " +
                  std::to_string(v.valid_kids[x]) + " are published or awaiting reclaim");
          } else if (L::slot_word::decode(v.referrer[x]).state == L::slot_state::valid &&
                     sw.count != v.valid_kids[x]) {
            // Too high: a client died between counting a child and publishing it.
            note(rep.count_mismatches, rep.count_messages, opt.max_messages,
                 what + " counts " + std::to_string(sw.count) + " children, " +
                     std::to_string(v.valid_kids[x]) + " are published or awaiting reclaim");
          }
          break;
        case L::slab_state::evicting:
          ++rep.evicting_slabs;
          if (v.refs[x] > 1 || (v.refs[x] == 0 && !opt.crashed_reclaimers)) {
            error(what + " is EVICTING and " + std::to_string(v.refs[x]) + " slots refer to it");
          }
          break;
      }
    }
  }
  return rep;
}

}  // namespace kvc_test
