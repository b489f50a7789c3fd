// The one-sided prefix index, protocol step by protocol step, over shm memory nodes.
#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <thread>

#include "../support/unique_name.hpp"
#include "index_audit.hpp"
#include "index_fixture.hpp"
#include "kvc/transport/counting.hpp"
#include "kvc/transport/faulty.hpp"

using kvc_test::client;
using kvc_test::index_nodes;
using kvc_test::make_chain;
using kvc_test::no_data;

namespace {

std::span<const kvc::hash64> first(const std::vector<kvc::hash64>& c, std::size_t n) {
  return std::span<const kvc::hash64>(c).first(n);
}

// Calls maintain() every heartbeat until `done()` or four leases passed.
template <class Index, class Done>
bool maintain_until(Index& ix, Done&& done) {
  const auto until = std::chrono::steady_clock::now() + 4 * ix.config().lease;
  while (!done() && std::chrono::steady_clock::now() < until) {
    if (!ix.maintain()) return false;
    std::this_thread::sleep_for(ix.config().heartbeat);
  }
  return done();
}

// Samples node 0 until one leaf is evicted (or 5,000 samples found none); how many were.
std::size_t evict_one(kvc_test::shm_index& ix) {
  for (int i = 0; i < 5000; ++i) {
    auto e = ix.evict(0, 1);
    REQUIRE(e);
    if (*e > 0) return *e;
  }
  return 0;
}

}  // namespace

TEST_CASE("remote index: an empty index matches nothing; an inserted chain matches whole",
          "[index]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  std::mt19937_64 rng(7);
  const auto chain = make_chain(rng, 100);

  auto m0 = a.index->lookup(chain);
  REQUIRE(m0);
  CHECK(m0->length == 0);
  CHECK(m0->round_trips == 1);  // a cold miss: both head buckets of the first segment at once

  const auto info = no_data(chain.size());
  auto ins = a.index->insert(chain, 0, info);
  REQUIRE(ins);
  CHECK(ins->stop == kvc::insert_stop::none);
  CHECK(ins->published == 100);
  CHECK(ins->length == 100);

  auto m = a.index->lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 100);
  CHECK(m->round_trips == 2);  // heads, then the last segment's group
  auto hinted = a.index->lookup(chain, 100);
  REQUIRE(hinted);
  CHECK(hinted->length == 100);
  CHECK(hinted->round_trips == 1);  // the hint named the boundary's segment
  // Every head and every block of the last segment is located exactly.
  for (std::size_t k = 0; k < 100; ++k) {
    const bool exact = k % 16 == 0 || k >= 96;
    CHECK(m->blocks[k].known() == exact);
    if (exact) CHECK(m->blocks[k].slab == ins->blocks[k].slab);
  }
  // Prefixes and a diverging chain.
  for (std::size_t n : {1u, 15u, 16u, 17u, 31u, 32u, 33u, 99u}) {
    auto p = a.index->lookup(first(chain, n));
    REQUIRE(p);
    CHECK(p->length == n);
  }
  const auto other = make_chain(rng, 80, chain, 40);
  auto d = a.index->lookup(other);
  REQUIRE(d);
  CHECK(d->length == 40);
}

TEST_CASE("remote index: inserting under a matched prefix, and inserting what is present",
          "[index]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  std::mt19937_64 rng(8);
  const auto chain = make_chain(rng, 50);
  REQUIRE(a.index->insert(chain, 0, no_data(50))->published == 50);
  const auto branch = make_chain(rng, 90, chain, 37);
  auto m = a.index->lookup(branch);
  REQUIRE(m);
  REQUIRE(m->length == 37);
  auto ins = a.index->insert(branch, 37, no_data(53));
  REQUIRE(ins);
  CHECK(ins->published == 53);
  CHECK(a.index->lookup(branch)->length == 90);
  CHECK(a.index->lookup(chain)->length == 50);
  // Again: everything is present, nothing is published twice.
  auto again = a.index->insert(branch, 0, no_data(90));
  REQUIRE(again);
  CHECK(again->published == 0);
  CHECK(again->present == 90);
  CHECK(again->length == 90);
  // A parent that is not published.
  const auto orphan = make_chain(rng, 10);
  auto o = a.index->insert(orphan, 5, no_data(5));
  REQUIRE(o);
  CHECK(o->stop == kvc::insert_stop::parent_missing);
  CHECK(o->published == 0);
}

TEST_CASE("remote index: many chains branching inside one segment are all published", "[index]") {
  // One system prompt of 4 blocks, then 300 conversations: every chain shares segment 0's head
  // and branches at offset 4. Their blocks at offsets 4..15 are keyed by the same head, so
  // they must not be confined to the head's buckets (8 slots per offset).
  index_nodes nodes;
  client a(nodes, nodes.config());
  std::mt19937_64 rng(81);
  const auto system = make_chain(rng, 4);
  std::vector<std::vector<kvc::hash64>> chains;
  REQUIRE(a.index->insert(system, 0, no_data(4))->published == 4);
  for (int c = 0; c < 300; ++c) {
    chains.push_back(make_chain(rng, 20, system, 4));
    auto ins = a.index->insert(chains.back(), 4, no_data(16));
    REQUIRE(ins);
    INFO("chain " << c);
    CHECK(ins->stop == kvc::insert_stop::none);
    CHECK(ins->published == 16);
  }
  for (const auto& chain : chains) {
    auto m = a.index->lookup(chain);
    REQUIRE(m);
    CHECK(m->length == 20);
    CHECK(m->round_trips <= 2);
    // locate() finds the inferred blocks of the first segment too.
    REQUIRE(a.index->locate(chain, *m));
    for (const auto& b : m->blocks) CHECK(b.known());
  }
}

TEST_CASE("remote index: data and records are read back under hazards", "[index]") {
  index_nodes nodes(1, std::uint64_t{8} << 20, 256);
  client a(nodes, nodes.config());
  std::mt19937_64 rng(9);
  const auto chain = make_chain(rng, 20);
  std::vector<std::vector<std::byte>> payload(20, std::vector<std::byte>(256));
  std::vector<kvc::block_info> info(20);
  for (std::size_t i = 0; i < 20; ++i) {
    for (std::size_t b = 0; b < 256; ++b) payload[i][b] = static_cast<std::byte>(i * 7 + b);
    info[i] = {kvc::unregistered(payload[i]), 256, 2, 0, 16};
  }
  auto ins = a.index->insert(chain, 0, info);
  REQUIRE(ins);
  REQUIRE(ins->published == 20);
  std::vector<std::vector<std::byte>> back(20, std::vector<std::byte>(256));
  std::vector<kvc::local_buffer> dst;
  for (auto& v : back) dst.push_back(kvc::unregistered(v));
  std::vector<kvc::index_layout::record> recs(20);
  auto got = a.index->read_blocks(ins->blocks, dst, recs);
  REQUIRE(got);
  CHECK(*got == 20);
  for (std::size_t i = 0; i < 20; ++i) {
    CHECK(back[i] == payload[i]);
    CHECK(recs[i].hash_lo == chain[i].value);
    CHECK((recs[i].shape & 0xFFFFFFFF) == 256);
  }
}

TEST_CASE("remote index: eviction takes leaves only, and reclaimed slabs are reused", "[index]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  std::mt19937_64 rng(10);
  const auto chain = make_chain(rng, 20);
  REQUIRE(a.index->insert(chain, 0, no_data(20))->published == 20);
  const auto before = a.index->lookup(chain);
  REQUIRE(before->length == 20);
  // Sampling may need several tries to see the one leaf among the groups.
  std::size_t evicted = 0;
  for (int i = 0; i < 2000 && evicted == 0; ++i) evicted = *a.index->evict(0, 1);
  REQUIRE(evicted == 1);
  CHECK(a.index->lookup(chain)->length == 19);  // the leaf went, its prefix stayed
  // A stale reference to the evicted block is detected by read_blocks.
  std::vector<kvc::index_layout::record> recs(20);
  auto got = a.index->read_blocks(before->blocks, {}, recs);
  REQUIRE(got);
  CHECK(*got <= 19);
  // After the grace period the slab is reclaimed.
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  REQUIRE(a.index->maintain());
  CHECK(a.index->stats().reclaimed == 1);
}

// ---- races forced at one protocol step (remote memory changed through the test's own mapping) --

namespace {

namespace il = kvc::index_layout;

// The index's sections in a node's region, seen directly in memory.
struct region_view {
  explicit region_view(const kvc::shm_region& r) : base(r.base()) {
    const auto& h = r.header();
    geo = *il::read_layout(h);
    data_off = h.data_offset;
    records = base + geo.records_offset(h.data_offset);
    clients = base + geo.clients_offset(h.data_offset);
  }
  [[nodiscard]] std::uint64_t slots() const { return geo.slots(); }
  [[nodiscard]] std::uint64_t* word(std::byte* p) const {
    return reinterpret_cast<std::uint64_t*>(p);
  }
  [[nodiscard]] std::uint64_t* word1(std::uint64_t s) const {
    return word(base + geo.slot_offset(data_off, s) + 8);
  }
  [[nodiscard]] std::uint64_t* word0(std::uint64_t s) const {
    return word(base + geo.slot_offset(data_off, s));
  }
  // The overflow word of the first group whose bucket `first_bucket` holds a segment's blocks
  // at `offset` (remote_index::address_of(chain, k).bucket[0] for such a block k).
  [[nodiscard]] std::uint64_t* overflow_word(kvc::remote_ptr first_bucket, unsigned offset) const {
    return word(base + first_bucket.offset() - offset * il::bucket_bytes - 8);
  }
  [[nodiscard]] std::uint64_t* slab_word(std::uint64_t slab) const {
    return word(records + slab * il::record_bytes + offsetof(il::record, slab));
  }
  [[nodiscard]] std::uint64_t* hazard(std::uint32_t client, std::size_t h) const {
    return word(clients + client * il::client_bytes + il::hazard_offset + 8 * h);
  }
  // The HELD slab whose record holds block hash `h` (written by an insert's round B, not yet
  // published), and that record; nullopt when there is none.
  [[nodiscard]] std::optional<std::pair<std::uint64_t, il::record>> held_record(
      kvc::hash64 h) const {
    for (std::uint64_t x = 0; x < geo.slabs(); ++x) {
      il::record rec;
      std::memcpy(&rec, records + x * il::record_bytes, sizeof rec);
      if (il::slab_word::decode(rec.slab).state == il::slab_state::held &&
          rec.hash_lo == kvc::detail::index::lo(h)) {
        return std::pair{x, rec};
      }
    }
    return std::nullopt;
  }
  // The slab of the first VALID slot publishing `h` (which must have one).
  [[nodiscard]] std::uint64_t slab_of(kvc::hash64 h) const {
    const auto slots = valid_for(h);
    REQUIRE_FALSE(slots.empty());
    return il::slot_word::decode(*word1(slots[0])).ptr;
  }
  // Slots (indexes) whose word1 is in `state`.
  [[nodiscard]] std::vector<std::uint64_t> in_state(il::slot_state state) const {
    std::vector<std::uint64_t> out;
    for (std::uint64_t s = 0; s < slots(); ++s) {
      if (il::slot_word::decode(*word1(s)).state == state) out.push_back(s);
    }
    return out;
  }
  // VALID slots publishing hash `h` (versions agreeing).
  [[nodiscard]] std::vector<std::uint64_t> valid_for(kvc::hash64 h) const {
    std::vector<std::uint64_t> out;
    for (std::uint64_t s = 0; s < slots(); ++s) {
      const auto w1 = il::slot_word::decode(*word1(s));
      const auto w0 = il::tag_word::decode(*word0(s));
      if (w1.state == il::slot_state::valid && w0.version == w1.version &&
          w0.tag == (h.value & il::mask(il::tag_bits))) {
        out.push_back(s);
      }
    }
    return out;
  }
  std::byte* base;
  il::geometry geo;
  std::uint64_t data_off = 0;
  std::byte* records;
  std::byte* clients;
};

// Two clients of one shm node, and the node's region seen directly.
struct two_clients {
  index_nodes nodes;
  client a{nodes, nodes.config(1)};
  client b{nodes, nodes.config(2)};
  region_view v{nodes.regions[0]};
};

// The audit of node 0 as it stands.
kvc_test::audit_report audit_node0(const index_nodes& nodes) {
  std::vector<kvc_test::audited_region> regions{
      {nodes.regions[0].base(), &nodes.regions[0].header()}};
  return kvc_test::audit_index(regions);
}

// A node's chunk cursor (the fresh chunks handed out so far), to read or move as other clients
// would.
std::atomic_ref<std::uint64_t> chunk_cursor(const kvc::shm_region& region) {
  const auto g = kvc::index_layout::read_layout(region.header());
  if (!g) std::abort();
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(
      region.base() + g->control_offset(region.header().data_offset)));
}

// The audit of node 0: no error, and every LIVE slab counts exactly its published children.
void check_counts_exact(const index_nodes& nodes) {
  const auto rep = audit_node0(nodes);
  INFO(rep.summary());
  CHECK(rep.error_count == 0);
  CHECK(rep.count_mismatches == 0);
}

}  // namespace

TEST_CASE("remote index: a lost reservation race is retried", "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(11);
  const auto chain = make_chain(rng, 5);
  std::vector<std::uint64_t> taken;
  a.index->on_step([&](const char* step) {
    const std::string s = step;
    if (s == "insert.B" && taken.empty()) {  // someone else reserves every empty slot first
      taken = v.in_state(il::slot_state::empty);
      for (std::uint64_t i : taken) {
        const auto w = il::slot_word::decode(*v.word1(i));
        *v.word1(i) = w.moved_to(il::slot_state::reserved, il::reserved_ptr(63, 0), 1).encode();
      }
    } else if (s == "insert.A" && !taken.empty()) {  // and gives them back
      for (std::uint64_t i : taken) {
        const auto w = il::slot_word::decode(*v.word1(i));
        if (w.state == il::slot_state::reserved) {
          *v.word1(i) = w.moved_to(il::slot_state::empty, 0, 0).encode();
        }
      }
    }
  });
  auto ins = a.index->insert(chain, 0, no_data(5));
  REQUIRE(ins);
  CHECK(ins->published == 5);
  CHECK(ins->stop == kvc::insert_stop::none);
  CHECK(a.index->stats().lost_races >= 1);
  CHECK(a.index->lookup(chain)->length == 5);
  CHECK(v.in_state(il::slot_state::reserved).empty());
}

TEST_CASE("remote index: a child counted while its parent turns LIVE is taken back",
          "[index][race]") {
  // b counts a child in a block a has made VALID but not yet LIVE (between the two CASes of a's
  // round C: one batch, so here another count lands first and a's LIVE CAS takes a second try),
  // finds it pending and takes the +1 back only after a's retry turned the slab LIVE (with b's
  // +1 in it). The take-back must still apply; then b publishes the child on its next pass.
  two_clients f;
  auto& [nodes, a, b, v] = f;
  std::mt19937_64 rng(61);
  const auto base = make_chain(rng, 4);
  REQUIRE(a.index->insert(base, 0, no_data(4))->published == 4);
  const auto parent = make_chain(rng, 5, base, 4);   // a publishes block 4
  const auto child = make_chain(rng, 6, parent, 5);  // b publishes block 5 under it
  std::mutex mu;
  std::condition_variable cv;
  bool b_counted = false, a_live = false;
  std::thread bt;
  kvc::result<kvc::index_insert_result> got = kvc::fail(kvc::errc::invalid_argument, "not run");
  b.index->on_step([&](const char* step) {
    if (std::string(step) != "insert.D") return;
    std::unique_lock lock(mu);
    if (b_counted) return;  // only its first pass waits
    b_counted = true;       // round B counted the child; round D and the take-back follow
    cv.notify_all();
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return a_live; });
  });
  std::uint64_t* slab = nullptr;  // a's slab for block 4
  a.index->on_step([&](const char* step) {
    const std::string_view s(step);
    if (s == "insert.C" && slab == nullptr) {
      // A count lands before a's round C: its LIVE CAS fails and is tried again.
      const auto held = v.held_record(parent[4]);
      REQUIRE(held);
      slab = v.slab_word(held->first);
      std::atomic_ref(*slab).fetch_add(il::count_one);
      return;
    }
    if (s != "insert.D.again" || bt.joinable()) return;
    bt = std::thread([&] { got = b.index->insert(child, 5, no_data(1)); });
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return b_counted; });
    std::atomic_ref(*slab).fetch_add(il::count_minus_one);  // that count goes; b's stays
  });
  auto ins = a.index->insert(parent, 4, no_data(1));
  {
    std::lock_guard lock(mu);
    a_live = true;
  }
  cv.notify_all();
  if (bt.joinable()) bt.join();
  REQUIRE(ins);
  CHECK(ins->published == 1);
  REQUIRE(b_counted);
  REQUIRE(got);
  CHECK(got->published == 1);
  CHECK(a.index->lookup(child)->length == 6);
  std::vector<kvc_test::audited_region> regions;
  for (const auto& r : nodes.regions) regions.push_back({r.base(), &r.header()});
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.count_mismatches == 0);  // block 4 counts one child, not two
  CHECK(rep.clean());
}

TEST_CASE("remote index: turning a slab LIVE and a take-back retry while others change the word",
          "[index][race]") {
  // Other clients' counts land on a slab word between a CAS's read and its retry, twenty times
  // (children counted and taken back under a block just published). Round C's CAS and its
  // retries must still turn the slab LIVE, and a take-back must still take its +1 back: the first
  // version gave up after 16 tries, leaving a published slab HELD (never evictable, inserts under
  // it pending forever) or a count one too high (its parent never a leaf again). Ten thousand
  // changes on a client with the least scratch memory: each try must give its answer's scratch back
  // (8,192 tries would fill it, and a scratch-full round marks the node in doubt: the same stuck
  // states).
  const int total = GENERATE(20, 10000);
  index_nodes nodes;
  const auto& region = nodes.regions[0];
  region_view v(region);
  auto slab_word_of = [&](std::uint64_t slab) { return std::atomic_ref(*v.slab_word(slab)); };
  int changes = 0;  // +1, -1, +1, ...: an even number of changes, none left in the end
  auto change = [&](std::uint64_t slab) {
    if (changes >= total) return;
    slab_word_of(slab).fetch_add(changes % 2 == 0 ? kvc::index_layout::count_one
                                                  : kvc::index_layout::count_minus_one);
    ++changes;
  };
  auto cfg = nodes.config(1);
  cfg.slab_reserve = 0;
  cfg.scratch_bytes = std::size_t{64} << 10;
  client a(nodes, cfg);
  client b(nodes, nodes.config(2));
  std::mt19937_64 rng(79);
  const auto parent = make_chain(rng, 1);
  a.index->on_step([&](const char* step) {
    const std::string_view s(step);
    if (s == "insert.C" || s == "insert.D.again") change(0);  // a's first slab: the parent
  });
  auto first = a.index->insert(parent, 0, no_data(1));
  REQUIRE(first);
  REQUIRE(first->published == 1);
  REQUIRE(first->blocks[0].slab == 0);
  CHECK(changes == total);
  auto w = kvc::index_layout::slab_word::decode(slab_word_of(0).load());
  CHECK(w.state == kvc::index_layout::slab_state::live);
  CHECK(w.count == 0);

  // a counts a child under the parent, then meets b's copy of that child (published by b while
  // a's round B was about to ring): a yields and takes its +1 back while the word keeps moving.
  const auto child = make_chain(rng, 2, parent, 1);
  changes = 0;
  bool b_done = false;
  a.index->on_step([&](const char* step) {
    const std::string_view s(step);
    if (s == "insert.B" && !b_done) {
      b_done = true;
      auto got = b.index->insert(child, 1, no_data(1));
      REQUIRE(got);
      REQUIRE(got->published == 1);
    }
    if (s == "insert.undo") change(0);
  });
  auto second = a.index->insert(child, 1, no_data(1));
  a.index->on_step({});
  REQUIRE(second);
  REQUIRE(b_done);
  CHECK(second->published == 0);
  CHECK(changes == total);
  w = kvc::index_layout::slab_word::decode(slab_word_of(0).load());
  CHECK(w.state == kvc::index_layout::slab_state::live);
  CHECK(w.count == 1);  // b's child only
  std::vector<kvc_test::audited_region> regions{{region.base(), &region.header()}};
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.count_mismatches == 0);
  CHECK(rep.clean());
}

TEST_CASE("remote index: a stray count in a reused slab is not taken back from its new holder",
          "[index][race]") {
  // A client stalled past the reclaim grace between seeing its parent published and its round B
  // counts a child in a slab that was reclaimed meanwhile and taken by another client, before
  // that client's round B writes the slab's word with its record (counting the next block of its
  // pass). That client then publishes and turns the slab LIVE; the stalled one finds its parent
  // gone and takes its +1 back, which must not take the new holder's count: the holder's WRITE
  // moves the slab's version (before, the take-back found the same version and left the holder's
  // first block LIVE(0) with a published child). The stall is played by a's parent reference: it
  // names b's next free slab (what a reference to a reclaimed and reused slab names) and a slot
  // word the slot no longer holds.
  index_nodes nodes;
  auto cfg_b = nodes.config(2);
  cfg_b.slab_reserve = 0;
  client a(nodes, nodes.config(1));
  client b(nodes, cfg_b);
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(83);
  const auto parent = make_chain(rng, 1);
  REQUIRE(a.index->insert(parent, 0, no_data(1))->published == 1);
  auto z = b.index->insert(make_chain(rng, 1), 0, no_data(1));  // b takes a chunk
  REQUIRE(z);
  REQUIRE(z->published == 1);
  const std::uint64_t reused = z->blocks[0].slab + 1;  // b hands its slabs out in order
  REQUIRE(il::slab_word::decode(*v.slab_word(reused)).state == il::slab_state::held);
  const auto child = make_chain(rng, 2, parent, 1);
  auto m = a.index->lookup(child);
  REQUIRE(m);
  REQUIRE(m->length == 1);
  m->blocks[0].slab = reused;
  m->blocks[0].word1 ^= 1;
  const auto holder = make_chain(rng, 2);
  kvc::result<kvc::index_insert_result> held = kvc::fail(kvc::errc::invalid_argument, "not run");
  bool ran = false;
  a.index->on_step([&](const char* step) {
    // a's +1 has landed (round B rang); b writes, publishes and turns LIVE before a takes it back
    if (std::string_view(step) != "insert.D" || ran) return;
    ran = true;
    held = b.index->insert(holder, 0, no_data(2));
  });
  auto ins = a.index->insert(child, *m, no_data(1));
  a.index->on_step({});
  REQUIRE(ins);
  REQUIRE(ran);
  REQUIRE(held);
  REQUIRE(held->published == 2);
  REQUIRE(held->blocks[0].slab == reused);  // the premise: b's first block took that slab
  const auto w = il::slab_word::decode(*v.slab_word(reused));
  CHECK(w.state == il::slab_state::live);
  CHECK(w.count == 1);  // b's second block
  CHECK(b.index->lookup(holder)->length == 2);
  check_counts_exact(nodes);
}

TEST_CASE("remote index: a slab turned LIVE after recovery took its reservation back is freed",
          "[index][race]") {
  // Round C turns a block's slab LIVE right after its slot's CAS, whether or not that CAS won. A
  // client declared dead while only slow (no fencing) whose round C lands after recovery reset
  // its reservation, before recovery freed the slab, leaves the slab LIVE with no slot naming
  // it; recover_everything() frees it. The reset is played through the region.
  two_clients f;
  auto& [nodes, a, b, v] = f;
  std::mt19937_64 rng(89);
  const auto chain = make_chain(rng, 1);
  bool reset = false;
  a.index->on_step([&](const char* step) {
    if (std::string_view(step) != "insert.C" || reset) return;
    const auto reserved = v.in_state(il::slot_state::reserved);
    REQUIRE(reserved.size() == 1);
    const auto w = il::slot_word::decode(*v.word1(reserved[0]));
    *v.word1(reserved[0]) = w.moved_to(il::slot_state::empty, 0, 0).encode();
    reset = true;
  });
  auto ins = a.index->insert(chain, 0, no_data(1));
  a.index->on_step({});
  REQUIRE(reset);
  REQUIRE(ins);  // a re-registered and published the block again
  CHECK(ins->published == 1);
  const auto before = audit_node0(nodes);
  INFO(before.summary());
  REQUIRE(before.error_count == 1);  // the premise: a LIVE slab no slot refers to
  REQUIRE(before.live_slabs == before.valid + 1);
  REQUIRE(b.index->recover_everything());
  CHECK(b.index->stats().recovered_slabs >= 1);
  const auto after = audit_node0(nodes);
  INFO(after.summary());
  CHECK(after.error_count == 0);
  CHECK(after.live_slabs == after.valid);
  CHECK(b.index->lookup(chain)->length == 1);
}

TEST_CASE("remote index: recovery frees no LIVE slab that a published child names",
          "[index][race]") {
  // As above, but the reservation taken back is the first of three blocks: round C still turns
  // the other two VALID (one batch), so block 1's record names block 0's LIVE slab, which no slot
  // names (a closure violation, documented: fencing or recovery_delay keeps a client declared
  // dead from running round C). recover_everything() must leave that slab LIVE: freed, it could
  // be handed out again while block 1's record names it, and block 1's reclaim would take a
  // count off whatever record it holds then.
  two_clients f;
  auto& [nodes, a, b, v] = f;
  std::mt19937_64 rng(97);
  const auto chain = make_chain(rng, 3);
  std::uint64_t first_slab = ~std::uint64_t{0};
  a.index->on_step([&](const char* step) {
    if (std::string_view(step) != "insert.C" || first_slab != ~std::uint64_t{0}) return;
    const auto held = v.held_record(chain[0]);
    REQUIRE(held);
    first_slab = held->first;
    auto* w1 = v.word(v.base + kvc::remote_ptr::from_raw(held->second.slot_at).offset() + 8);
    const auto w = il::slot_word::decode(*w1);
    REQUIRE(w.state == il::slot_state::reserved);
    *w1 = w.moved_to(il::slot_state::empty, 0, 0).encode();
  });
  auto ins = a.index->insert(chain, 0, no_data(3));
  a.index->on_step({});
  REQUIRE(first_slab != ~std::uint64_t{0});
  CHECK(ins);
  REQUIRE(il::slab_word::decode(*v.slab_word(first_slab)).state == il::slab_state::live);
  REQUIRE(b.index->recover_everything());
  CHECK(il::slab_word::decode(*v.slab_word(first_slab)).state == il::slab_state::live);
}

TEST_CASE("remote index: round C clears the parent's hazard where it publishes every block",
          "[index]") {
  // Round B sets a hazard on the parent; a pass publishing every block on the parent's node has
  // no round D, so its last batch of round C clears the hazard (left set, it would hold off the
  // parent's reclaim for as long as this client lives).
  two_clients f;
  auto& [nodes, a, b, v] = f;
  std::mt19937_64 rng(101);
  const auto base = make_chain(rng, 4);
  REQUIRE(a.index->insert(base, 0, no_data(4))->published == 4);
  const auto longer = make_chain(rng, 8, base, 4);
  std::map<std::string, int> steps;
  std::uint64_t hazard_in_c = 0;
  a.index->on_step([&](const char* step) {
    ++steps[step];
    if (std::string_view(step) == "insert.C") hazard_in_c = *v.hazard(a.index->client_id(0), 0);
  });
  auto ins = a.index->insert(longer, 4, no_data(4));
  a.index->on_step({});
  REQUIRE(ins);
  CHECK(ins->published == 4);
  CHECK(hazard_in_c != 0);  // set by round B
  CHECK(steps.count("insert.D") == 0);
  CHECK(*v.hazard(a.index->client_id(0), 0) == 0);
}

TEST_CASE("remote index: a reservation taken back (declared dead) makes the client re-register",
          "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(12);
  const auto chain = make_chain(rng, 4);
  const std::uint32_t me = a.index->client_id(0);
  bool done = false;
  a.index->on_step([&](const char* step) {
    if (std::string(step) != "insert.C" || done) return;
    done = true;  // a recoverer resets this client's reservations (as for a dead client)
    for (std::uint64_t i : v.in_state(il::slot_state::reserved)) {
      const auto w = il::slot_word::decode(*v.word1(i));
      if (il::reserved_owner(w.ptr) == me) {
        *v.word1(i) = w.moved_to(il::slot_state::empty, 0, 0).encode();
      }
    }
  });
  auto ins = a.index->insert(chain, 0, no_data(4));
  REQUIRE(ins);
  CHECK(a.index->stats().reregistrations == 1);
  CHECK(ins->published == 4);  // published again under the new registration
  CHECK(a.index->lookup(chain)->length == 4);
  CHECK(v.in_state(il::slot_state::reserved).empty());
  // The abandoned registration is declared dead after a lease of silence and its chunk is
  // recovered a lease later.
  a.index->on_step({});
  CHECK(maintain_until(*a.index, [&] { return a.index->stats().recovered_chunks >= 1; }));
  CHECK(a.index->stats().declared_dead == 1);
}

TEST_CASE("remote index: a child is not published under a parent being evicted", "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(13);
  const auto chain = make_chain(rng, 12);
  REQUIRE(a.index->insert(chain, 0, no_data(10))->published == 10);
  const auto parent = v.valid_for(chain[9]);
  REQUIRE(parent.size() == 1);
  const std::uint64_t slab = il::slot_word::decode(*v.word1(parent[0])).ptr;
  REQUIRE(il::slab_word::decode(*v.slab_word(slab)).state == il::slab_state::live);
  a.index->on_step([&](const char* step) {
    if (std::string(step) != "insert.B") return;
    auto w = il::slab_word::decode(*v.slab_word(slab));  // an evictor's first CAS lands first
    w.state = il::slab_state::evicting;
    *v.slab_word(slab) = w.encode();
  });
  auto ins = a.index->insert(std::span<const kvc::hash64>(chain), 10, no_data(2));
  REQUIRE(ins);
  CHECK(ins->stop == kvc::insert_stop::parent_evicting);
  CHECK(ins->published == 0);
  CHECK(a.index->lookup(chain)->length == 10);
  CHECK(v.in_state(il::slot_state::reserved).empty());
  // The evicting parent kept the inserter's +1 (reset when it is reclaimed), nothing else.
  CHECK(il::slab_word::decode(*v.slab_word(slab)).count == 1);
}

// One block published by a client, seen in memory, and an eviction of it whose candidate moves
// on: the slot's version changes right before the evictor's tombstone CAS, which then fails.
struct moved_candidate {
  explicit moved_candidate(std::uint64_t seed, std::size_t scratch_bytes = std::size_t{1} << 20)
      : a(nodes, with_scratch(nodes.config(), scratch_bytes)), v(nodes.regions[0]) {
    std::mt19937_64 rng(seed);
    chain = make_chain(rng, 1);
    REQUIRE(a.index->insert(chain, 0, no_data(1))->published == 1);
    const auto slots = v.valid_for(chain[0]);
    REQUIRE(slots.size() == 1);
    slot = slots[0];
    slab = il::slot_word::decode(*v.word1(slot)).ptr;
    original = *v.word1(slot);
  }
  // Evicts until a sample picked the block (at most 5,000 calls); `step` sees every step.
  // Returns how many blocks the calls evicted.
  std::size_t evict_until_moved(const std::function<void(std::string_view)>& step) {
    bool moved = false;
    a.index->on_step([&](const char* name) {
      const std::string_view s(name);
      if (s == "evict.tombstone" && !moved) {
        moved = true;
        *v.word1(slot) = original ^ (std::uint64_t{1} << 42);  // the slot's version moved on
      }
      step(s);
    });
    std::size_t evicted = 0;
    for (int i = 0; i < 5000 && !moved; ++i) evicted += *a.index->evict(0, 1);
    a.index->on_step({});
    REQUIRE(moved);
    return evicted;
  }
  static kvc::remote_index_config with_scratch(kvc::remote_index_config c, std::size_t bytes) {
    c.scratch_bytes = bytes;
    return c;
  }
  index_nodes nodes;
  client a;
  region_view v;
  std::vector<kvc::hash64> chain;
  std::uint64_t slot = 0, slab = 0, original = 0;
};

TEST_CASE("remote index: an evictor whose candidate moved on gives the slab back",
          "[index][race]") {
  moved_candidate b(14);
  int rollbacks = 0;
  const std::size_t evicted = b.evict_until_moved([&](std::string_view s) {
    if (s == "evict.rollback") ++rollbacks;
  });
  CHECK(rollbacks == 1);  // the tombstone CAS lost: EVICTING went back to LIVE
  // A later sample of the same call may evict the block as it is now (its slot moved on to a
  // new version but still publishes it): either way the slab and slot agree.
  const auto w1 = il::slot_word::decode(*b.v.word1(b.slot));
  const auto sw = il::slab_word::decode(*b.v.slab_word(b.slab));
  if (evicted == 0) {
    CHECK(w1.state == il::slot_state::valid);
    CHECK(sw.state == il::slab_state::live);
  } else {
    CHECK(w1.state == il::slot_state::tombstone);
    CHECK(sw.state == il::slab_state::evicting);
  }
}

TEST_CASE("remote index: an evictor's rollback and a reclaim retry while inserters count",
          "[index][race]") {
  // Inserters that meet an EVICTING slab back out and leave their +1 (the count is reset when
  // the slab goes back to LIVE or to FREE): twenty of them land between an evictor's CAS and its
  // retry, in the rollback of a candidate that moved on and in the reclaim of a tombstone. Both
  // must still finish (the first version gave up after 16 tries: a published slab left EVICTING,
  // or an unpublished one never freed). Ten thousand of them on a client with the least scratch
  // memory: each try must give its answer's scratch back.
  const int total = GENERATE(20, 10000);
  moved_candidate b(83, std::size_t{64} << 10);
  int counted = 0;
  auto count_one = [&] {
    if (counted >= total) return;
    std::atomic_ref(*b.v.slab_word(b.slab)).fetch_add(il::count_one);
    ++counted;
  };
  b.evict_until_moved([&](std::string_view s) {
    if (s == "evict.rollback") count_one();
  });
  CHECK(counted == total);
  // The slab and its slot agree: published and LIVE (or evicted since, by a later sample).
  auto w1 = il::slot_word::decode(*b.v.word1(b.slot));
  auto sw = il::slab_word::decode(*b.v.slab_word(b.slab));
  CHECK(((w1.state == il::slot_state::valid && sw.state == il::slab_state::live) ||
         (w1.state == il::slot_state::tombstone && sw.state == il::slab_state::evicting)));
  if (sw.state == il::slab_state::live) CHECK(sw.count == 0);  // the backed-out +1s are reset

  // Evicted (if it was not yet), then reclaimed after the grace while inserters keep counting.
  for (int i = 0;
       i < 5000 && il::slot_word::decode(*b.v.word1(b.slot)).state == il::slot_state::valid; ++i) {
    (void)*b.a.index->evict(0, 1);
  }
  REQUIRE(il::slot_word::decode(*b.v.word1(b.slot)).state == il::slot_state::tombstone);
  counted = 0;
  b.a.index->on_step([&](const char* step) {
    if (std::string_view(step) == "reclaim.free") count_one();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  REQUIRE(b.a.index->maintain());
  b.a.index->on_step({});
  CHECK(counted == total);
  CHECK(b.a.index->stats().reclaimed == 1);
  sw = il::slab_word::decode(*b.v.slab_word(b.slab));
  CHECK(sw.state == il::slab_state::free);
  CHECK(il::slot_word::decode(*b.v.word1(b.slot)).state == il::slot_state::empty);
}

TEST_CASE("remote index: a live hazard holds off reclaim", "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  client b(nodes, nodes.config(2));
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(15);
  const auto chain = make_chain(rng, 1);
  REQUIRE(a.index->insert(chain, 0, no_data(1))->published == 1);
  const std::uint64_t slab = v.slab_of(chain[0]);
  // b is reading the block: its hazard covers the slab.
  *v.hazard(b.index->client_id(0), 5) = il::hazard_range{slab, 1}.encode();
  const std::size_t evicted = evict_one(*a.index);
  REQUIRE(evicted == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  REQUIRE(a.index->maintain());
  CHECK(a.index->stats().reclaimed == 0);
  CHECK(il::slab_word::decode(*v.slab_word(slab)).state == il::slab_state::evicting);
  *v.hazard(b.index->client_id(0), 5) = 0;  // b is done
  REQUIRE(a.index->maintain());
  CHECK(a.index->stats().reclaimed == 1);
  CHECK(il::slab_word::decode(*v.slab_word(slab)).state == il::slab_state::free);
}

// A reclaimer that dies between emptying a tombstoned slot and freeing its slab leaves the slab
// EVICTING with no slot naming it, in the inserter's chunk (recovering the reclaimer settles only
// its own chunks), and its parent counting the child: any sampler finishes the reclaim.
TEST_CASE("remote index: a reclaim interrupted between its two steps is finished by a sampler",
          "[index][race]") {
  struct crash {};
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(18);
  const auto chain = make_chain(rng, 2);
  REQUIRE(a.index->insert(chain, 0, no_data(2))->published == 2);
  const std::uint64_t parent = v.slab_of(chain[0]);
  const std::uint64_t child = v.slab_of(chain[1]);
  CHECK(il::slab_word::decode(*v.slab_word(parent)).count == 1);
  {
    client dying(nodes, nodes.config(4));
    const std::size_t evicted = evict_one(*dying.index);
    REQUIRE(evicted == 1);  // the leaf: the child
    std::this_thread::sleep_for(2 * dying.index->config().reclaim_grace);
    dying.index->on_step([](const char* step) {
      if (std::string_view(step) == "reclaim.free") throw crash{};
    });
    CHECK_THROWS_AS(dying.index->maintain(), crash);
    dying.index->on_step({});
    dying.index->abandon();
  }
  CHECK(il::slab_word::decode(*v.slab_word(child)).state == il::slab_state::evicting);
  CHECK(v.valid_for(chain[1]).empty());
  CHECK(v.in_state(il::slot_state::tombstone).empty());
  // The other client's evictions sample the slab and free it; the parent is a leaf again and
  // goes too.
  const std::size_t evicted = evict_one(*a.index);
  CHECK(evicted == 1);
  CHECK(il::slab_word::decode(*v.slab_word(child)).state == il::slab_state::free);
  CHECK(v.valid_for(chain[0]).empty());
  CHECK(a.index->lookup(chain)->length == 0);
}

// Another client rolls back a published slab it sees EVICTING and unchanged for a lease (its
// evictor died between the two steps). An evictor only stalled there (not declared dead) must not
// tombstone the slab afterwards: it is LIVE again, and here a child was published under it since.
// The evictor rings its second step within a quarter lease of its first or undoes the first.
TEST_CASE("remote index: an evictor stalled between its two steps does not unpublish late",
          "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  client e(nodes, nodes.config(6));
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(23);
  const auto chain = make_chain(rng, 3);
  REQUIRE(a.index->insert(first(chain, 2), 0, no_data(2))->published == 2);
  const std::uint64_t child = v.slab_of(chain[1]);
  bool stalled = false;
  e.index->on_step([&](const char* step) {
    if (std::string_view(step) != "evict.tombstone" || stalled) return;
    stalled = true;
    const auto sw = il::slab_word::decode(*v.slab_word(child));
    REQUIRE(sw.state == il::slab_state::evicting);
    // Stalled for a lease; meanwhile a watcher rolls the slab back (what roll_back_evicting
    // writes), and a child is published under it.
    std::this_thread::sleep_for(e.index->config().lease);
    *v.slab_word(child) =
        il::slab_word{il::slab_state::live, static_cast<std::uint8_t>(sw.version + 1), 0, 0}
            .encode();
    REQUIRE(a.index->insert(chain, 2, no_data(1))->published == 1);
  });
  std::size_t gone = 0;
  for (int i = 0; i < 5000 && !stalled; ++i) {
    auto g = e.index->evict(0, 1);
    REQUIRE(g);
    gone = *g;
  }
  e.index->on_step({});
  REQUIRE(stalled);
  CHECK(e.index->stats().late_evictions == 1);
  // The child stays published (the call may have gone on sampling and evicted the new leaf).
  CHECK(v.valid_for(chain[1]).size() == 1);
  CHECK(il::slab_word::decode(*v.slab_word(child)).state == il::slab_state::live);
  CHECK(v.valid_for(chain[2]).size() == 1 - gone);
  CHECK(a.index->lookup(chain)->length == 3 - gone);
  check_counts_exact(nodes);
}

// The stalled evictor's own rollback must undo only its own step 1: meanwhile a watcher rolled
// the slab back and another client evicted it again (count 0). Its word names that evictor, so the
// late rollback's CAS fails instead of turning the slab LIVE under the other evictor's tombstone.
// A rollback also moves the version; here it keeps it (as one would after 256 rollbacks), so
// that the evictor's name in the word alone must tell the two evictions apart.
TEST_CASE("remote index: a late evictor's rollback leaves another evictor's eviction alone",
          "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  client e(nodes, nodes.config(6));
  client f(nodes, nodes.config(7));
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(26);
  const auto chain = make_chain(rng, 2);
  REQUIRE(a.index->insert(chain, 0, no_data(2))->published == 2);
  const std::uint64_t child = v.slab_of(chain[1]);
  bool stalled = false;
  e.index->on_step([&](const char* step) {
    if (std::string_view(step) != "evict.tombstone" || stalled) return;
    stalled = true;
    const auto sw = il::slab_word::decode(*v.slab_word(child));
    REQUIRE(sw.state == il::slab_state::evicting);
    CHECK(sw.owner == e.index->client_id(0));
    std::this_thread::sleep_for(e.index->config().lease);
    *v.slab_word(child) = il::slab_word{il::slab_state::live, sw.version, 0, 0}.encode();
    REQUIRE(evict_one(*f.index) == 1);  // the child again: EVICTING, then its tombstone
  });
  for (int i = 0; i < 5000 && !stalled; ++i) REQUIRE(e.index->evict(0, 1));
  e.index->on_step({});
  REQUIRE(stalled);
  CHECK(e.index->stats().late_evictions == 1);
  const auto sw = il::slab_word::decode(*v.slab_word(child));
  CHECK(sw.state == il::slab_state::evicting);  // f's, awaiting reclaim
  CHECK(sw.owner == f.index->client_id(0));
  CHECK(v.valid_for(chain[1]).empty());
  CHECK(v.in_state(il::slot_state::tombstone).size() >= 1);
  CHECK(a.index->lookup(chain)->length < 2);
  // f reclaims it after the grace: the slab is freed, nothing leaks.
  std::this_thread::sleep_for(2 * f.index->config().reclaim_grace);
  REQUIRE(f.index->maintain());
  CHECK(il::slab_word::decode(*v.slab_word(child)).state == il::slab_state::free);
}

// A watcher rolls back a slab seen EVICTING and unchanged for a lease. The same client evicting
// the same slab again after rolling back its own late step 1 must not look like the same episode:
// the watcher would roll the second back inside its evictor's quarter-lease window, a child could
// be published under it, and the evictor's (timely) tombstone would then unpublish its parent.
// A rollback moves the slab word's version, so the second episode's word differs.
TEST_CASE("remote index: a watcher tells an evictor's second eviction of a slab from its first",
          "[index][race]") {
  index_nodes nodes;
  auto cfg = [&](std::uint64_t seed) {
    auto c = nodes.config(seed);
    c.lease = std::chrono::milliseconds(2000);  // an eighth lease of margin for the steps below
    return c;
  };
  client a(nodes, cfg(1));
  client e(nodes, cfg(6));
  client w(nodes, cfg(7));
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(31);
  const auto chain = make_chain(rng, 3);
  REQUIRE(a.index->insert(first(chain, 2), 0, no_data(2))->published == 2);
  const std::uint64_t child = v.slab_of(chain[1]);
  const auto lease = e.index->config().lease;
  using clock = std::chrono::steady_clock;
  clock::time_point watched{};  // the watcher's first sight of the stuck word is before this
  clock::time_point resumed{};  // e's second step 1 is after this
  clock::time_point done{};     // e checks its window after this
  int stalls = 0;
  bool extended = false;
  e.index->on_step([&](const char* step) {
    if (std::string_view(step) != "evict.tombstone" || stalls == 2) return;
    REQUIRE(il::slab_word::decode(*v.slab_word(child)).state == il::slab_state::evicting);
    if (++stalls == 1) {
      // Episode 1: the watcher samples the EVICTING slab (the only leaf: it evicts nothing).
      for (int i = 0; i < 100; ++i) REQUIRE(*w.index->evict(0, 1) == 0);
      watched = clock::now();
      // Stalled past the quarter lease: e rolls back its own step 1, then evicts again at once.
      std::this_thread::sleep_until(watched + lease - lease / 8);
      resumed = clock::now();
      return;
    }
    // Episode 2, inside e's window: a lease after the watcher first saw the word. Other leaves
    // for the watcher to evict (in the round that would roll the slab back, one of them is its
    // victim, not the slab), then the child.
    for (int i = 0; i < 8; ++i) REQUIRE(a.index->insert(make_chain(rng, 1), 0, no_data(1)));
    std::this_thread::sleep_until(watched + lease + std::chrono::milliseconds(5));
    for (int i = 0; i < 8 && w.index->stats().rolled_back == 0; ++i) REQUIRE(w.index->evict(0, 1));
    auto ins = a.index->insert(chain, 2, no_data(1));
    REQUIRE(ins);
    extended = ins->published == 1;
    done = clock::now();
  });
  for (int i = 0; i < 5000 && stalls < 2; ++i) REQUIRE(e.index->evict(0, 1));
  e.index->on_step({});
  REQUIRE(stalls == 2);
  REQUIRE(done < resumed + lease / 4);  // e was inside its window: it rang
  CHECK(e.index->stats().late_evictions == 1);
  CHECK(w.index->stats().rolled_back == 0);
  CHECK_FALSE(extended);                 // under EVICTING, the child backs out
  CHECK(v.valid_for(chain[1]).empty());  // e's second eviction stands
  CHECK(v.valid_for(chain[2]).empty());
  CHECK(a.index->lookup(chain)->length == 1);
  check_counts_exact(nodes);
}

// The same while the reclaimer is alive and only between its two steps: a sampler frees the slab
// first, the reclaimer's CAS fails on the changed word, and the parent loses its child once (a
// second -1 on a count of 0 would borrow into the word's state bits).
TEST_CASE(
    "remote index: a sampler and a live reclaimer finishing one reclaim take the child off "
    "the parent once",
    "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  client r(nodes, nodes.config(5));
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(19);
  const auto chain = make_chain(rng, 2);
  REQUIRE(a.index->insert(chain, 0, no_data(2))->published == 2);
  const std::uint64_t parent = v.slab_of(chain[0]);
  const std::uint64_t child = v.slab_of(chain[1]);
  REQUIRE(evict_one(*r.index) == 1);  // the child
  std::this_thread::sleep_for(2 * r.index->config().reclaim_grace);
  bool sampled = false;
  r.index->on_step([&](const char* step) {
    if (std::string_view(step) != "reclaim.free" || sampled) return;
    sampled = true;
    // Between r's two steps: the slot is empty, the slab still EVICTING.
    CHECK(il::slab_word::decode(*v.slab_word(child)).state == il::slab_state::evicting);
    REQUIRE(evict_one(*a.index) == 1);  // frees the child, then evicts the parent, a leaf now
  });
  REQUIRE(r.index->maintain());
  r.index->on_step({});
  CHECK(sampled);
  CHECK(il::slab_word::decode(*v.slab_word(child)).state == il::slab_state::free);
  const auto pw = il::slab_word::decode(*v.slab_word(parent));
  CHECK(pw.count == 0);
  CHECK(pw.state == il::slab_state::evicting);  // a's eviction of it, not a borrow
  CHECK(a.index->stats().reclaimed == 1);
  CHECK(r.index->stats().reclaimed == 0);
}

TEST_CASE("remote index: a client that dies between reserving and publishing is recovered",
          "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(16);
  const auto chain = make_chain(rng, 6);
  {
    client dying(nodes, nodes.config(3));
    struct crash {};
    dying.index->on_step([](const char* step) {
      if (std::string(step) == "insert.C") throw crash{};
    });
    CHECK_THROWS_AS(dying.index->insert(chain, 0, no_data(6)), crash);
    dying.index->abandon();  // gone without a word: reservations and held slabs stay
  }
  CHECK(v.in_state(il::slot_state::reserved).size() == 6);
  // Another inserter sees the blocks pending and waits, then gives up for now.
  auto first_try = a.index->insert(chain, 0, no_data(6));
  REQUIRE(first_try);
  CHECK(first_try->stop == kvc::insert_stop::pending);
  CHECK(first_try->published == 0);
  // After a lease the dead client is declared dead, and a lease later what it held is recovered
  // (not before: a client declared dead while only slow must have stopped first).
  const auto start = std::chrono::steady_clock::now();
  CHECK(maintain_until(*a.index, [&] { return a.index->stats().recovered_slabs >= 6; }));
  CHECK(std::chrono::steady_clock::now() - start >= 2 * a.index->config().lease);
  CHECK(a.index->stats().declared_dead == 1);
  CHECK(a.index->stats().recovered_slabs >= 6);
  CHECK(v.in_state(il::slot_state::reserved).empty());
  auto second = a.index->insert(chain, 0, no_data(6));
  REQUIRE(second);
  CHECK(second->published == 6);
  CHECK(a.index->lookup(chain)->length == 6);
}

// A call that throws midway (out of memory, here a throwing step hook) while the client carries on
// and keeps heartbeating: what the call left behind (reservations of an insert, hazards of a read)
// would stay for good under the client's live entry. The entry is put in doubt instead: left to
// recovery like a crashed client's, while the client registers anew on its next call (which
// throws too here, as it registers: it is in doubt again and registers on the call after).
TEST_CASE("remote index: what a call that throws midway left behind is recovered",
          "[index][race]") {
  const std::string step = GENERATE(as<std::string>{}, "insert.C", "hazards.clear");
  INFO("throwing before step " << step);
  // Where x's calls throw, in turn: the call, then the next call as it registers anew.
  const std::vector<std::string> throws_at = {step,
                                              step == "insert.C" ? "register" : "register.clear"};
  std::size_t thrown_at = 0;  // before the clients: x's hook reads it until x is gone
  struct thrown {};
  index_nodes nodes;
  auto cfg = nodes.config();
  cfg.lease = std::chrono::milliseconds(100);
  client x(nodes, cfg);
  cfg.seed = 2;
  client y(nodes, cfg);
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(17);
  const auto chain = make_chain(rng, 6);
  x.index->on_step([&](const char* s) {
    if (thrown_at < throws_at.size() && throws_at[thrown_at] == s) {
      ++thrown_at;
      throw thrown{};
    }
  });
  // What stays behind until the entry that left it is recovered.
  std::function<bool()> left_behind;
  if (step == "insert.C") {
    CHECK_THROWS_AS(x.index->insert(chain, 0, no_data(6)), thrown);
    CHECK(v.in_state(il::slot_state::reserved).size() == 6);
    left_behind = [&] { return !v.in_state(il::slot_state::reserved).empty(); };
  } else {
    REQUIRE(y.index->insert(chain, 0, no_data(6))->published == 6);
    auto m = y.index->lookup(chain);
    REQUIRE(m->length == 6);
    // x reads the last block: its hazard covers that block's slab, then the call throws.
    const std::vector<kvc::block_ref> last{m->blocks[5]};
    CHECK_THROWS_AS(x.index->read_blocks(last, {}, {}), thrown);
    const std::size_t evicted = evict_one(*y.index);
    REQUIRE(evicted == 1);
    left_behind = [&] { return !v.in_state(il::slot_state::tombstone).empty(); };
  }
  REQUIRE(left_behind());
  // The next call settles the entry the throw left (nothing of that call is in flight) and
  // registers anew, and that throws too (before its entry's CAS, or after it: that entry is
  // left to others' recovery).
  CHECK_THROWS_AS(x.index->lookup(chain), thrown);
  CHECK(thrown_at == 2);
  CHECK(x.index->stats().settled_own == 1);
  if (step == "insert.C") CHECK_FALSE(left_behind());  // at once, not two leases on
  // Both clients carry on with their upkeep; x heartbeats whatever entry it still trusts.
  // Recovery takes about three leases; the bound is generous for a loaded machine.
  const auto until = std::chrono::steady_clock::now() + 100 * cfg.lease;
  while (left_behind() && std::chrono::steady_clock::now() < until) {
    REQUIRE(x.index->maintain());
    REQUIRE(y.index->maintain());
    std::this_thread::sleep_for(cfg.heartbeat);
  }
  CHECK_FALSE(left_behind());
  // x goes on under a new entry: the chain is published whole (again, for the read).
  auto again = x.index->insert(chain, 0, no_data(6));
  REQUIRE(again);
  CHECK(again->length == 6);
  CHECK(x.index->stats().reregistrations == 1);
  CHECK(y.index->lookup(chain)->length == 6);
  CHECK(v.in_state(il::slot_state::reserved).empty());
  x.index->on_step({});
}

// A recoverer that read a dead owner's chunk word and is slow to settle it: meanwhile another
// recoverer settled and freed the chunk and the entry, a new client took the entry (the same id,
// the next incarnation), then the chunk, then a slab of it. The slow one must not take that HELD
// slab for the dead owner's (it names the same id) and free it under its new holder.
TEST_CASE("remote index: a slow recoverer leaves a chunk settled and handed on meanwhile",
          "[index][race]") {
  index_nodes nodes;
  client r(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(25);
  std::uint32_t id = 0;
  {
    client d(nodes, nodes.config(2));
    REQUIRE(d.index->insert(make_chain(rng, 2), 0, no_data(2))->published == 2);
    id = d.index->client_id(0);
    d.index->abandon();  // its chunk's unused slabs stay HELD
  }
  const auto& h = nodes.regions[0].header();
  std::byte* chunks = v.base + v.geo.chunks_offset(h.data_offset);
  std::uint64_t k = v.geo.chunks;
  for (std::uint64_t c = 0; c < v.geo.chunks; ++c) {
    const auto cw = il::chunk_word::decode(*v.word(chunks + c * il::chunk_entry_bytes));
    if (cw.state == il::chunk_state::owned && cw.owner == id) k = c;
  }
  REQUIRE(k < v.geo.chunks);
  std::uint64_t taken = 0;  // the slab the new holder takes
  bool moved = false;
  r.index->on_step([&](const char* step) {
    if (std::string_view(step) != "settle.records" || moved) return;
    moved = true;
    std::uint64_t* client_word = v.word(v.clients + id * il::client_bytes);
    const auto dead = il::client_word::decode(*client_word);
    REQUIRE(dead.state == il::client_state::dead);
    const std::uint32_t next = dead.incarnation + 1;
    for (std::uint64_t x = k * il::chunk_slabs; x < (k + 1) * il::chunk_slabs; ++x) {
      const auto sw = il::slab_word::decode(*v.slab_word(x));
      if (sw.state != il::slab_state::held) continue;
      *v.slab_word(x) = il::slab_word{il::slab_state::free, sw.version, 0, 0}.encode();
      taken = x;
    }
    REQUIRE(taken != 0);
    const auto sw = il::slab_word::decode(*v.slab_word(taken));
    *client_word = il::client_word{il::client_state::live, next, 0}.encode();
    *v.word(chunks + k * il::chunk_entry_bytes) =
        il::chunk_word{il::chunk_state::owned, id, next}.encode();
    *v.slab_word(taken) =
        il::slab_word{il::slab_state::held, static_cast<std::uint8_t>(sw.version + 1), id, 0}
            .encode();
  });
  CHECK(maintain_until(*r.index, [&] { return moved; }));
  r.index->on_step({});
  REQUIRE(moved);
  const auto sw = il::slab_word::decode(*v.slab_word(taken));
  CHECK(sw.state == il::slab_state::held);
  CHECK(sw.owner == id);
  CHECK(r.index->stats().recovered_slabs == 0);
  CHECK(r.index->stats().recovered_chunks == 0);
}

// With a table of one entry, a client whose call threw midway can only go on by settling that
// entry itself: its next call does, and registers in it again at once (before, the call failed
// for want of an entry until the old one had been declared dead and recovered). maintain()
// does the same for an idle client, close() settles it and leaves; a settle that throws itself
// is tried again on the call after.
TEST_CASE("remote index: a client whose call threw settles its own entry on its next call",
          "[index][race]") {
  const std::string next = GENERATE(as<std::string>{}, "insert", "maintain", "close", "again");
  INFO("the next call: " << next);
  index_nodes nodes(1, std::uint64_t{4} << 20, 64, 1);
  region_view v(nodes.regions[0]);
  client x(nodes, nodes.config());
  std::mt19937_64 rng(24);
  const auto chain = make_chain(rng, 6);
  const auto other = make_chain(rng, 3);
  REQUIRE(x.index->insert(other, 0, no_data(3))->published == 3);
  const std::uint32_t before = x.index->client_id(0);
  struct thrown {};
  std::vector<std::string> throw_at{"insert.C"};
  if (next == "again") throw_at.emplace_back("settle.records");
  x.index->on_step([&](const char* s) {
    if (!throw_at.empty() && throw_at.front() == s) {
      throw_at.erase(throw_at.begin());
      throw thrown{};
    }
  });
  CHECK_THROWS_AS(x.index->insert(chain, 0, no_data(6)), thrown);
  CHECK(v.in_state(il::slot_state::reserved).size() == 6);
  if (next == "again") {
    CHECK_THROWS_AS(x.index->insert(chain, 0, no_data(6)), thrown);  // as it settles
    CHECK(x.index->stats().settled_own == 0);
  }
  x.index->on_step({});
  if (next == "close") {
    REQUIRE(x.index->close());
  } else if (next == "maintain") {
    REQUIRE(x.index->maintain());
  } else {
    auto again = x.index->insert(chain, 0, no_data(6));
    REQUIRE(again);
    CHECK(again->published == 6);
  }
  CHECK(x.index->stats().settled_own == 1);
  CHECK(v.in_state(il::slot_state::reserved).empty());
  if (next == "close") CHECK(x.index->stats().reregistrations == 0);
  if (next != "close") {
    CHECK(x.index->stats().reregistrations == 1);
    CHECK(x.index->client_id(0) == before);  // the only entry, freed and taken again
    CHECK(x.index->lookup(other)->length == 3);
    check_counts_exact(nodes);
    REQUIRE(x.index->close());
  }
  // Everything x held is accounted for: once it has left, every chunk is free again.
  const auto rep = audit_node0(nodes);
  INFO(rep.summary());
  CHECK(rep.error_count == 0);
  CHECK(rep.live_clients == 0);
  CHECK(rep.owned_chunks == 0);
}

// Settling on one node may send a batch to another: here a reclaim this client left half done
// (a throw between emptying the child's slot and freeing its slab) is finished as it settles
// node 0, and the child's parent lies on node 1. Every node is taken out of doubt before any is
// settled, or run() refuses the parent's -1 for node 1, still in doubt, and the parent counts
// a child for good (never a leaf again).
TEST_CASE("remote index: settling one node sends a parent's -1 to another node in doubt",
          "[index][race][nodes]") {
  index_nodes nodes(2);
  client x(nodes, nodes.config());
  region_view v0(nodes.regions[0]);
  region_view v1(nodes.regions[1]);
  std::mt19937_64 rng(27);
  std::vector<kvc::hash64> chain;
  for (int tries = 0; tries < 64; ++tries) {  // the head segment on node 1, the last on node 0
    chain = make_chain(rng, 257);
    if (x.index->node_for(chain, 255) == 1 && x.index->node_for(chain, 256) == 0) break;
  }
  REQUIRE(x.index->node_for(chain, 255) == 1);
  REQUIRE(x.index->node_for(chain, 256) == 0);
  REQUIRE(x.index->insert(chain, 0, no_data(257))->published == 257);
  const std::uint64_t parent = v1.slab_of(chain[255]);
  const std::uint64_t child = v0.slab_of(chain[256]);
  CHECK(il::slab_word::decode(*v1.slab_word(parent)).count == 1);
  REQUIRE(evict_one(*x.index) == 1);  // node 0's only block: the child
  std::this_thread::sleep_for(2 * x.index->config().reclaim_grace);
  struct thrown {};
  x.index->on_step([](const char* s) {
    if (std::string_view(s) == "reclaim.free") throw thrown{};
  });
  CHECK_THROWS_AS(x.index->maintain(), thrown);
  x.index->on_step({});
  CHECK(il::slab_word::decode(*v0.slab_word(child)).state == il::slab_state::evicting);
  CHECK(il::slab_word::decode(*v1.slab_word(parent)).count == 1);
  // The next call settles both entries (node 0's chunk holds the child's slab) and registers.
  REQUIRE(x.index->lookup(chain));
  CHECK(x.index->stats().settled_own == 2);
  CHECK(il::slab_word::decode(*v0.slab_word(child)).state == il::slab_state::free);
  CHECK(il::slab_word::decode(*v1.slab_word(parent)).count == 0);
}

TEST_CASE("remote index: two inserters of one block leave one entry", "[index][race]") {
  // b inserts the same blocks between a's read (round A) and a's reservation (round B), or
  // between a's reservation and its publication (round C): a sees b's copy or b's reservation
  // in its buckets re-read right after reserving, and yields; every block is published once.
  for (const char* at : {"insert.B", "insert.C"}) {
    for (std::uint64_t trial = 0; trial < 12; ++trial) {
      index_nodes nodes;
      client a(nodes, nodes.config(100 + trial));
      client b(nodes, nodes.config(200 + trial));
      region_view v(nodes.regions[0]);
      std::mt19937_64 rng(trial);
      const auto chain = make_chain(rng, 3);
      bool once = false;
      kvc::index_insert_result from_b;
      a.index->on_step([&](const char* step) {
        if (std::string(step) != at || once) return;
        once = true;
        auto r = b.index->insert(chain, 0, no_data(3));
        if (!r) throw std::runtime_error("b's insert failed");
        from_b = *r;
      });
      auto r = a.index->insert(chain, 0, no_data(3));
      REQUIRE(r);
      CHECK(r->length + from_b.length > 0);
      for (const auto& h : chain) CHECK(v.valid_for(h).size() <= 1);
      // Afterwards both find every block.
      CHECK(b.index->insert(chain, 0, no_data(3))->length == 3);
      CHECK(a.index->lookup(chain)->length == 3);
      for (const auto& h : chain) CHECK(v.valid_for(h).size() == 1);
      CHECK(v.in_state(il::slot_state::reserved).empty());
    }
  }
}

TEST_CASE("remote index: clear errors for unformatted regions, bad configs, full tables",
          "[index]") {
  std::mt19937_64 rng(17);
  {
    auto r = kvc::shm_region::create(kvc_test::unique_name("/kvc-ix-unformatted"),
                                     std::size_t{1} << 20, 0);
    REQUIRE(r);
    kvc::shm_transport t;
    REQUIRE(t.add_node(0, r->name()));
    kvc::remote_index_config c;
    c.nodes = {0};
    auto ix = kvc_test::shm_index::open(t, c);
    REQUIRE_FALSE(ix);
    CHECK(ix.error() == kvc::errc::format_mismatch);
    CHECK_THAT(ix.detail(), Catch::Contains("holds no kvc index"));
  }
  index_nodes nodes(1, std::uint64_t{4} << 20, 64, 2);
  auto t = nodes.attach();
  auto cfg = nodes.config();
  cfg.heartbeat = cfg.lease;  // more than a quarter lease
  CHECK(kvc_test::shm_index::open(*t, cfg).error() == kvc::errc::invalid_config);
  cfg = nodes.config();
  cfg.nodes = {0, 0};
  CHECK(kvc_test::shm_index::open(*t, cfg).error() == kvc::errc::invalid_config);
  cfg.nodes = {};
  CHECK(kvc_test::shm_index::open(*t, cfg).error() == kvc::errc::invalid_config);
  cfg = nodes.config();
  cfg.max_ops_per_node = 71;  // less than an insert pass needs for one block
  CHECK(kvc_test::shm_index::open(*t, cfg).error() == kvc::errc::invalid_config);
  cfg.max_ops_per_node = kvc::shm_transport::batch_limit + 1;  // more than the transport takes
  auto too_many = kvc_test::shm_index::open(*t, cfg);
  REQUIRE_FALSE(too_many);
  CHECK(too_many.error() == kvc::errc::invalid_config);
  CHECK_THAT(too_many.detail(), Catch::Contains("more than the transport takes"));
  client one(nodes, nodes.config());
  client two(nodes, nodes.config(2));
  cfg = nodes.config(3);
  cfg.full_table_wait = std::chrono::milliseconds(0);  // fail at once (both entries are live)
  auto third = kvc_test::shm_index::open(*t, cfg);
  REQUIRE_FALSE(third);
  CHECK(third.error() == kvc::errc::out_of_range);
  CHECK_THAT(third.detail(), Catch::Contains("no free client entry"));
  // A client leaving frees its entry.
  REQUIRE(two.index->close());
  CHECK(kvc_test::shm_index::open(*t, nodes.config(4)));
  // Data larger than the data slot.
  std::vector<std::byte> big(128);
  const auto chain = make_chain(rng, 1);
  std::vector<kvc::block_info> info{{kvc::unregistered(big), 128, 0, 0, 16}};
  CHECK(one.index->insert(chain, 0, info).error() == kvc::errc::invalid_argument);
}

// Every client of a full table crashed: nobody registered is left to declare them dead and
// recover what they held. A newcomer's open() does it itself, watching the entries from outside.
TEST_CASE("remote index: a newcomer recovers a full table of crashed clients itself",
          "[index][race]") {
  index_nodes nodes(1, std::uint64_t{4} << 20, 64, 2);
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(20);
  const auto kept = make_chain(rng, 3);
  const auto torn = make_chain(rng, 6);
  {
    client a(nodes, nodes.config());
    client b(nodes, nodes.config(2));
    REQUIRE(b.index->insert(kept, 0, no_data(3))->published == 3);
    struct crash {};
    a.index->on_step([](const char* step) {
      if (std::string(step) == "insert.C") throw crash{};
    });
    CHECK_THROWS_AS(a.index->insert(torn, 0, no_data(6)), crash);
    a.index->on_step({});
    a.index->abandon();  // reservations and held slabs stay
    b.index->abandon();  // a chunk with free slabs stays
  }
  CHECK(v.in_state(il::slot_state::reserved).size() == 6);
  const auto start = std::chrono::steady_clock::now();
  client c(nodes, nodes.config(3));  // aborts if open() fails
  // Declared dead after a lease of silence, recovered a recovery_delay (a lease) later.
  CHECK(std::chrono::steady_clock::now() - start >= 2 * c.index->config().lease);
  CHECK(c.index->stats().declared_dead == 2);
  CHECK(c.index->stats().recovered_slabs >= 6);
  CHECK(v.in_state(il::slot_state::reserved).empty());
  // The other entry came free too; what the crashed clients published stays.
  client d(nodes, nodes.config(4));
  CHECK(c.index->lookup(kept)->length == 3);
  CHECK(c.index->insert(torn, 0, no_data(6))->published == 6);
  CHECK(d.index->lookup(torn)->length == 6);
}

// The newcomer takes no entry from clients that keep heartbeating: it waits, then fails.
TEST_CASE("remote index: a newcomer waits for a full table of live clients, then fails",
          "[index][race]") {
  index_nodes nodes(1, std::uint64_t{4} << 20, 64, 2);
  client a(nodes, nodes.config());
  client b(nodes, nodes.config(2));
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::thread beat([&] {
    while (!stop) {
      if (!a.index->maintain() || !b.index->maintain()) ++failures;
      std::this_thread::sleep_for(a.index->config().heartbeat);
    }
  });
  auto t = nodes.attach();
  const auto start = std::chrono::steady_clock::now();
  auto third = kvc_test::shm_index::open(*t, nodes.config(3));
  const auto waited = std::chrono::steady_clock::now() - start;
  stop = true;
  beat.join();
  REQUIRE_FALSE(third);
  CHECK(third.error() == kvc::errc::out_of_range);
  CHECK_THAT(third.detail(), Catch::Contains("none came free in 1000 ms"));
  CHECK(waited >= a.index->config().lease + a.index->config().recovery_delay);
  CHECK(failures == 0);
  CHECK(a.index->stats().reregistrations == 0);
  CHECK(b.index->stats().reregistrations == 0);
  std::mt19937_64 rng(21);
  CHECK(a.index->insert(make_chain(rng, 2), 0, no_data(2))->published == 2);
}

// A client declared dead registers anew on its next call; with the table full of its own old
// entry and a crashed client's, each call fails at once (no sleeping inside a request) after one
// look at the entries, until one of them has been recovered.
TEST_CASE("remote index: a client re-registering on a full table recovers the entries itself",
          "[index][race]") {
  index_nodes nodes(1, std::uint64_t{4} << 20, 64, 2);
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(22);
  const auto chain = make_chain(rng, 4);
  client a(nodes, nodes.config());
  client(nodes, nodes.config(2)).index->abandon();
  REQUIRE(a.index->insert(chain, 0, no_data(4))->published == 4);  // a holds a chunk
  // Declared dead (what another client's scan CASes), and a learns it from its next heartbeat.
  std::uint64_t* word = v.word(v.clients + a.index->client_id(0) * il::client_bytes);
  const auto w = il::client_word::decode(*word);
  *word = il::client_word{il::client_state::dead, w.incarnation, w.heartbeat}.encode();
  std::this_thread::sleep_for(a.index->config().lease / 4);
  const auto start = std::chrono::steady_clock::now();
  auto refused = a.index->lookup(chain);
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == kvc::errc::out_of_range);
  int calls = 1;
  const auto until = start + 4 * a.index->config().lease;
  kvc::result<kvc::index_match> m = a.index->lookup(chain);
  for (; !m && std::chrono::steady_clock::now() < until; ++calls) {
    CHECK(m.error() == kvc::errc::out_of_range);
    std::this_thread::sleep_for(a.index->config().heartbeat);
    m = a.index->lookup(chain);
  }
  REQUIRE(m);
  CHECK(m->length == 4);
  CHECK(calls > 2);
  // Its old entry, dead since before the first look, is recovered recovery_delay after it; the
  // crashed client's, silent for a lease by then, is declared dead in that same scan.
  CHECK(std::chrono::steady_clock::now() - start >= a.index->config().recovery_delay);
  CHECK(a.index->stats().reregistrations == 1);
  CHECK(a.index->stats().settled_own == 0);  // declared dead: not its own to settle
  CHECK(a.index->stats().declared_dead == 1);
  CHECK(a.index->stats().recovered_chunks >= 1);
  CHECK(a.index->insert(make_chain(rng, 3), 0, no_data(3))->published == 3);
}

// maintain() on a client that cannot register again on one node (declared dead there, its entry
// taken by another client since, a one-entry table) reports that, and still does the other
// nodes' upkeep: here a tombstone on node 0 is reclaimed.
TEST_CASE("remote index: maintain() keeps up the other nodes when one cannot register",
          "[index][race][nodes]") {
  index_nodes nodes(2, std::uint64_t{4} << 20, 64, 1);
  region_view v1(nodes.regions[1]);
  client c(nodes, nodes.config());
  std::mt19937_64 rng(32);
  std::vector<kvc::hash64> chain;
  for (int tries = 0; tries < 64; ++tries) {
    chain = make_chain(rng, 2);
    if (c.index->node_for(chain, 0) == 0) break;
  }
  REQUIRE(c.index->node_for(chain, 0) == 0);
  REQUIRE(c.index->insert(chain, 0, no_data(2))->published == 2);
  REQUIRE(evict_one(*c.index) == 1);  // node 0's leaf: its tombstone awaits the grace
  // c is declared dead on node 1 (what another client's scan CASes), and d takes the entry once
  // it has been recovered.
  std::uint64_t* word = v1.word(v1.clients + c.index->client_id(1) * il::client_bytes);
  const auto w = il::client_word::decode(*word);
  *word = il::client_word{il::client_state::dead, w.incarnation, w.heartbeat}.encode();
  auto d_cfg = nodes.config(2);
  d_cfg.nodes = {1};
  client d(nodes, d_cfg);
  std::this_thread::sleep_for(2 * c.index->config().reclaim_grace);
  const auto reclaimed = c.index->stats().reclaimed;
  auto ok = c.index->maintain();
  REQUIRE_FALSE(ok);
  CHECK(ok.error() == kvc::errc::out_of_range);
  CHECK(c.index->stats().reclaimed == reclaimed + 1);
  REQUIRE(d.index->maintain());
}

TEST_CASE("remote index: rounds are as large as the transport takes", "[index]") {
  index_nodes nodes;
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  REQUIRE(kvc::max_ops_per_node(t) == kvc::shm_transport::batch_limit);  // passed through
  using counted = kvc::remote_index<kvc::counting<kvc::shm_transport>>;
  auto cfg = nodes.config();
  cfg.lease = std::chrono::seconds(60);    // no heartbeat round trip inside a counted call
  auto shm_sized = counted::open(t, cfg);  // max_ops_per_node 0: the transport's
  REQUIRE(shm_sized);
  CHECK((*shm_sized)->config().max_ops_per_node == kvc::shm_transport::batch_limit);
  cfg.max_ops_per_node = 256;  // what a verbs queue pair takes
  cfg.seed = 2;
  auto verbs_sized = counted::open(t, cfg);
  REQUIRE(verbs_sized);
  std::mt19937_64 rng(41);
  // 4,096 blocks: 256 segment heads on one node. In batches of 256 the heads (and the first
  // segment's second head bucket) take two rounds; in one batch, one.
  const auto chain = make_chain(rng, 4096);
  REQUIRE((*shm_sized)->insert(chain, 0, no_data(chain.size()))->published == 4096);
  auto big = (*shm_sized)->lookup(chain);
  auto small = (*verbs_sized)->lookup(chain);
  REQUIRE(big);
  REQUIRE(small);
  CHECK(big->length == 4096);
  CHECK(small->length == 4096);
  CHECK(big->round_trips == 2);  // heads, then the last segment
  CHECK(small->round_trips == 3);
  // An insert pass takes what one batch holds: 41 blocks at 256 operations, so a fresh
  // 200-block chain needs five passes of three round trips; in shm-sized batches one pass.
  const auto fresh = make_chain(rng, 200);
  const auto fresh2 = make_chain(rng, 200);
  std::map<std::string, std::size_t> steps;
  (*shm_sized)->on_step([&](const char* step) { ++steps[step]; });
  const auto taken = (*shm_sized)->stats().chunks_taken;  // the 4,096 blocks used up 64 chunks
  auto one_pass = (*shm_sized)->insert(fresh, 0, no_data(200));
  std::map<std::string, std::size_t> verbs_steps;
  (*verbs_sized)->on_step([&](const char* step) { ++verbs_steps[step]; });
  auto passes = (*verbs_sized)->insert(fresh2, 0, no_data(200));
  (*verbs_sized)->on_step({});
  REQUIRE(one_pass);
  REQUIRE(passes);
  CHECK(one_pass->published == 200);
  CHECK(passes->published == 200);
  // 41 + 41 + 41 + 41 + 36 blocks, three round trips each (every pass after the first has its
  // parent on the same node: C clears the hazard), and the chunk claims between (the chunks
  // used up go back in upkeep: none released here).
  CHECK(verbs_steps["insert.A"] == 5);
  CHECK(verbs_steps.count("insert.D") == 0);
  CHECK(passes->round_trips == 3 * 5 + verbs_steps["claim.cursor"] + verbs_steps["claim.chunks"] +
                                   verbs_steps["claim.slabs"]);
  CHECK(verbs_steps.count("release") == 0);
  // One pass (blocks of the pass sharing a bucket pick different slots), and the four chunks of
  // slabs it needs claimed at once: one FAA on the cursor, one round of chunk CASes and record
  // READs, one round of slab CASes (the used-up chunks are upkeep's to give back). Three rounds
  // a pass (A, B, C: every block published, no parent's hazard to clear, so no round D).
  CHECK(steps["insert.A"] == 1);
  CHECK((*shm_sized)->stats().chunks_taken - taken == 4);
  CHECK(steps["claim.cursor"] == 1);
  CHECK(steps["claim.chunks"] == 1);
  CHECK(steps["claim.slabs"] == 1);
  CHECK(steps.count("insert.D") == 0);
  CHECK(one_pass->round_trips == 3 * steps["insert.A"] + 3);
  CHECK(steps.count("release") == 0);
  (*shm_sized)->on_step({});  // `steps` goes before the index, which releases its chunks
}

namespace {
// A prompt of 4 blocks and 12 branches after it: each branch's fifth block sits at offset 4 of
// segment 0, so all twelve have one first bucket (4 slots). The first two take it; the third
// finds its second bucket emptier, takes it and names offset 4; the others follow the emptier.
struct branching {
  explicit branching(std::uint64_t seed) : rng(seed) {
    prompt = make_chain(rng, 4);
    for (int i = 0; i < 12; ++i) branches.push_back(make_chain(rng, 5, prompt, 4));
  }
  // Publishes the prompt and the first `n` branches through `ix`.
  void publish(kvc_test::shm_index& ix, std::size_t n) const {
    REQUIRE(ix.insert(prompt, 0, no_data(4))->published == 4);
    for (std::size_t i = 0; i < n; ++i)
      REQUIRE(ix.insert(branches[i], 4, no_data(1))->published == 1);
  }
  std::mt19937_64 rng;
  std::vector<kvc::hash64> prompt;
  std::vector<std::vector<kvc::hash64>> branches;
};
using counted_index = kvc::remote_index<kvc::counting<kvc::shm_transport>>;
// A client through the counting transport t (also one that inserts).
std::unique_ptr<counted_index> counted_reader(kvc::counting<kvc::shm_transport>& t,
                                              const index_nodes& nodes, std::uint64_t seed) {
  auto cfg = nodes.config();
  cfg.lease = std::chrono::seconds(60);  // no heartbeat round trip inside a counted lookup
  cfg.seed = seed;
  auto ix = counted_index::open(t, cfg);
  REQUIRE(ix);
  return std::move(*ix);
}
// One lookup of `chain` through the counting transport `t`: {length, round trips, READs}.
std::array<std::size_t, 3> counted_lookup(kvc::counting<kvc::shm_transport>& t, counted_index& ix,
                                          const std::vector<kvc::hash64>& chain,
                                          std::size_t hint = 0) {
  t.reset();
  auto m = ix.lookup(chain, hint);
  REQUIRE(m);
  return {m->length, m->round_trips, t.snapshot().count(kvc::op_kind::read)};
}
using counts = std::array<std::size_t, 3>;
}  // namespace

TEST_CASE("remote index: blocks take a second bucket only at offsets the overflow word names",
          "[index]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  branching w(51);
  w.publish(*a.index, 2);
  std::uint64_t* word = v.overflow_word(a.index->address_of(w.branches[0], 4).bucket[0], 4);
  CHECK(*word == 0);  // the first bucket holds the first two
  CHECK(a.index->stats().overflow_named == 0);
  REQUIRE(a.index->insert(w.branches[2], 4, no_data(1))->published == 1);
  CHECK(*word == il::overflow_bit(4));  // the third took its emptier second bucket: named
  CHECK(a.index->stats().overflow_named == 1);
  for (std::size_t i = 3; i < 12; ++i)
    REQUIRE(a.index->insert(w.branches[i], 4, no_data(1))->published == 1);
  CHECK(*word == il::overflow_bit(4));  // named once
  CHECK(a.index->stats().overflow_named == 1);
  // Another client finds every branch, reading second buckets only at offset 4: the head's
  // overflow word and bucket 0 (72 bytes), the first group and the fifth block's second bucket
  // (format 4 read those of offsets 1 to 4). Its first lookup takes two round trips (the line,
  // then the rest) and also reads the head's second bucket in the first: it never saw the word.
  // The others take one (a chain of one segment whose group's word this client has seen: the
  // group is read with the head's line; two round trips until 2026-12-05).
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  auto reader = counted_reader(t, nodes, 7);
  for (std::size_t i = 0; i < w.branches.size(); ++i) {
    t.reset();
    auto m = reader->lookup(w.branches[i]);
    REQUIRE(m);
    CHECK(m->length == 5);
    CHECK(m->round_trips == (i == 0 ? 2u : 1u));
    CHECK(t.snapshot().count(kvc::op_kind::read) == (i == 0 ? 4u : 3u));
    CHECK(m->bytes == 72 + 1024 + 64 + (i == 0 ? 64u : 0u));
  }
  CHECK(reader->stats().second_group_reads == 10);  // from the third on: the emptier bucket
  t.reset();
  CHECK(reader->lookup(w.prompt)->length == 4);
  CHECK(t.snapshot().count(kvc::op_kind::read) == 2);  // no offset of 0-3 is named
}

TEST_CASE("remote index: a head in its second bucket is named at offset 0 and never forgotten",
          "[index]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(54);
  // Five one-block chains whose heads share a first bucket (found by trying random hashes).
  std::map<std::uint64_t, std::vector<std::vector<kvc::hash64>>> by_bucket;
  std::vector<std::vector<kvc::hash64>> heads;
  while (heads.empty()) {
    auto c = make_chain(rng, 1);
    auto& same = by_bucket[a.index->address_of(c, 0).bucket[0].raw()];
    same.push_back(std::move(c));
    if (same.size() == 5) heads = same;
  }
  const kvc::remote_ptr bucket0 = a.index->address_of(heads[0], 0).bucket[0];
  std::uint64_t* word = v.overflow_word(bucket0, 0);
  for (std::size_t i = 0; i < 4; ++i)
    REQUIRE(a.index->insert(heads[i], 0, no_data(1))->published == 1);
  CHECK(*word == 0);
  REQUIRE(a.index->insert(heads[4], 0, no_data(1))->published == 1);  // the first bucket is full
  CHECK(*word == il::overflow_bit(0));
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  auto reader = counted_reader(t, nodes, 9);
  for (const auto& h : heads) CHECK(reader->lookup(h)->length == 1);
  // A slot of the first bucket frees (as after an eviction): the fifth is still found, since
  // the word says heads of this group may be in their second buckets (a head missing from a
  // first bucket with room is not taken as absent).
  std::uint64_t* w1 = reinterpret_cast<std::uint64_t*>(v.base + bucket0.offset() + 8);
  *w1 = il::slot_word::decode(*w1).moved_to(il::slot_state::empty, 0, 0).encode();
  // The word as last seen names offset 0: the second bucket in round 1 too.
  CHECK(counted_lookup(t, *reader, heads[4]) == counts{1, 1, 2});
  // A cold miss elsewhere reads the head's line only, once the word was seen. A longer chain of
  // one segment reads its first group too, in the same round trip (1 KiB for nothing on a
  // miss), once this client has seen the group's word (before, the line only).
  const auto other = make_chain(rng, 1);
  CHECK(reader->lookup(other)->length == 0);  // the word is seen now
  CHECK(counted_lookup(t, *reader, other) == counts{0, 1, 1});
  const auto longer = make_chain(rng, 3);
  // Its group's word not seen yet: the line and the head's second bucket; seen now.
  CHECK(counted_lookup(t, *reader, longer) == counts{0, 1, 2});
  t.reset();
  CHECK(reader->lookup(longer)->length == 0);
  CHECK(t.snapshot().count(kvc::op_kind::read) == 2);
  CHECK(t.snapshot().bytes_of(kvc::op_kind::read) == 72 + 1024);
}

TEST_CASE(
    "remote index: a boundary segment whose head's word was not read has every second "
    "bucket read",
    "[index]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  std::mt19937_64 rng(55);
  constexpr std::size_t last = 68 * 16;  // the head of the chain's last segment
  const auto chain = make_chain(rng, last + 8);
  // Four heads sharing head 68's first bucket; two of them with blocks at offsets 1 and 2 of
  // the same first group (two blocks there each: not roomy, not named).
  const kvc::remote_ptr bucket0 = a.index->address_of(chain, last).bucket[0];
  std::vector<std::vector<kvc::hash64>> fillers;
  while (fillers.size() < 4) {
    auto c = make_chain(rng, fillers.size() < 2 ? 3 : 1);
    if (a.index->address_of(c, 0).bucket[0] == bucket0) fillers.push_back(std::move(c));
  }
  for (const auto& f : fillers) {
    REQUIRE(a.index->insert(f, 0, no_data(f.size()))->published == f.size());
  }
  // Head 68 takes its second bucket (offset 0 named), its next block too (offset 1).
  REQUIRE(a.index->insert(chain, 0, no_data(last + 2))->published == last + 2);
  auto cfg = nodes.config();
  cfg.max_ops_per_node = 72;  // the fewest an index takes: round 1 runs out before head 68
  cfg.seed = 9;
  client r(nodes, cfg);
  REQUIRE(r.index->lookup(chain)->length == last + 2);  // r saw segment 68's word: 0 and 1
  // The rest of segment 68 is published by another client: the block at offset 2 takes its
  // second bucket and names offset 2, which r has not seen.
  REQUIRE(a.index->insert(chain, last + 2, no_data(6))->published == 6);
  // A hint one segment short: round 1 reads segment 67, head 68's second bucket (the word as r
  // last saw it names heads) and the heads' lines until the 72 operations run out, just before
  // head 68's. Head 68 is found in its second bucket; segment 68, the boundary, is read in
  // round 2 without its word: every second bucket, not only those of the word r remembers.
  auto m = r.index->lookup(chain, last);
  REQUIRE(m);
  CHECK(m->length == chain.size());
}

TEST_CASE("remote index: an overflow word changed before its CAS is named on the next pass",
          "[index][race]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  region_view v(nodes.regions[0]);
  branching w(52);
  w.publish(*a.index, 2);
  std::uint64_t* word = v.overflow_word(a.index->address_of(w.branches[0], 4).bucket[0], 4);
  bool done = false;
  a.index->on_step([&](const char* step) {
    if (std::string(step) != "insert.B" || done) return;
    done = true;  // another client names offset 9 after round A read the word
    *word |= il::overflow_bit(9);
  });
  auto ins = a.index->insert(w.branches[2], 4, no_data(1));
  REQUIRE(ins);
  CHECK(ins->published == 1);
  CHECK(a.index->stats().overflow_races == 1);  // the first pass's CAS lost, nothing published
  CHECK(a.index->stats().overflow_named == 1);  // the second named offset 4
  CHECK(*word == (il::overflow_bit(4) | il::overflow_bit(9)));
  CHECK(v.in_state(il::slot_state::reserved).empty());
  a.index->on_step({});
  CHECK(a.index->lookup(w.branches[2])->length == 5);
}

TEST_CASE(
    "remote index: a block reserved in its first bucket yields to a copy named into its second",
    "[index][race]") {
  // a reads (round A) a first bucket holding one block and picks a slot there. Before a's
  // round B, b publishes another block into that bucket and then a's block itself: b finds
  // the bucket holding two, takes the emptier second bucket and names the offset. a's round B
  // re-reads the first bucket and, in place of the second, the overflow word: it names the
  // offset now, so a does not publish (the second bucket may hold a copy) and its next pass
  // finds b's. Without that check a publishes a second copy (its re-read of the first bucket
  // shows nothing of b's). A trial where b took a's slot ends with a's CAS failing instead.
  std::uint64_t late = 0;
  for (std::uint64_t trial = 0; trial < 8; ++trial) {
    index_nodes nodes;
    client a(nodes, nodes.config(300 + trial));
    client b(nodes, nodes.config(400 + trial));
    region_view v(nodes.regions[0]);
    branching w(60 + trial);
    w.publish(*a.index, 1);
    std::uint64_t* word = v.overflow_word(a.index->address_of(w.branches[0], 4).bucket[0], 4);
    bool once = false;
    a.index->on_step([&](const char* step) {
      if (std::string(step) != "insert.B" || once) return;
      once = true;
      if (b.index->insert(w.branches[1], 4, no_data(1))->published != 1 ||
          b.index->insert(w.branches[2], 4, no_data(1))->published != 1) {
        throw std::runtime_error("b's inserts failed");
      }
    });
    auto r = a.index->insert(w.branches[2], 4, no_data(1));
    a.index->on_step({});
    REQUIRE(r);
    CHECK(r->length == 5);
    CHECK(r->published == 0);             // b's copy is the one
    CHECK(*word == il::overflow_bit(4));  // b named offset 4
    CHECK(v.valid_for(w.branches[2][4]).size() == 1);
    CHECK(v.in_state(il::slot_state::reserved).empty());
    late += a.index->stats().overflow_named_late;
    // Named late is no lost race: the next pass runs at once, without a backoff.
    if (a.index->stats().overflow_named_late > 0) CHECK(a.index->stats().lost_races == 0);
  }
  CHECK(late > 0);
}

TEST_CASE("remote index: address_of() is const: threads may ask one client at once", "[index]") {
  // place() keeps a memo of the last segment it placed, for the client's own calls; address_of()
  // must not touch it (ThreadSanitizer reports the race when it does) and answers as placed.
  index_nodes nodes;
  client a(nodes, nodes.config());
  std::mt19937_64 rng(61);
  std::vector<std::vector<kvc::hash64>> chains;
  for (int i = 0; i < 4; ++i) chains.push_back(make_chain(rng, 40));
  std::vector<std::vector<kvc::remote_ptr>> expected(chains.size());
  for (std::size_t c = 0; c < chains.size(); ++c) {
    for (std::size_t k = 0; k < 40; ++k)
      expected[c].push_back(a.index->address_of(chains[c], k).bucket[1]);
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> pool;
  const kvc_test::shm_index& ix = *a.index;
  for (std::size_t t = 0; t < chains.size(); ++t) {
    pool.emplace_back([&, t] {
      for (int rep = 0; rep < 200; ++rep) {
        const std::size_t c = (t + static_cast<std::size_t>(rep)) % chains.size();
        for (std::size_t k = 0; k < 40; ++k) {
          if (!(ix.address_of(chains[c], k).bucket[1] == expected[c][k])) wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("remote index: a hinted lookup reads second buckets by the overflow word last seen",
          "[index]") {
  index_nodes nodes;
  client a(nodes, nodes.config());
  branching w(53);
  w.publish(*a.index, 2);
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  auto reader = counted_reader(t, nodes, 8);
  // Never seen: a hinted lookup reads every second bucket of the hinted segment (the head's
  // line, the group, offsets 1-4).
  CHECK(counted_lookup(t, *reader, w.branches[0], 5) == counts{5, 1, 1 + 1 + 4});
  // Seen with no offset named: the group and the head line only.
  CHECK(counted_lookup(t, *reader, w.branches[1], 5) == counts{5, 1, 2});
  // Another client names offset 4 meanwhile: the word read with the head says so, and a second
  // round trip reads the bucket the guess left out.
  REQUIRE(a.index->insert(w.branches[2], 4, no_data(1))->published == 1);
  CHECK(counted_lookup(t, *reader, w.branches[2], 5) == counts{5, 2, 3});
  // Now seen: one round trip again, with that bucket.
  CHECK(counted_lookup(t, *reader, w.branches[2], 5) == counts{5, 1, 3});
}

TEST_CASE("remote index: an insert after a lookup takes the parent and round A from its reads",
          "[index]") {
  index_nodes nodes;
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  auto cfg = nodes.config();
  cfg.lease = std::chrono::seconds(60);          // no heartbeat round trip inside a counted call
  cfg.reclaim_grace = std::chrono::seconds(20);  // a match stays trusted for 5 s (slow sanitizers)
  auto opened = kvc::remote_index<kvc::counting<kvc::shm_transport>>::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(43);
  const auto base = make_chain(rng, 40);
  REQUIRE(ix.insert(base, 0, no_data(40))->published == 40);
  // Two chains sharing base's first 20 blocks, then 5 new ones each (all from the chunk the
  // first insert took: no chunk round in either).
  const auto with = make_chain(rng, 25, base, 20);
  const auto without = make_chain(rng, 25, base, 20);
  auto reads_of_insert = [&](const std::vector<kvc::hash64>& chain, bool pass_match) {
    auto m = ix.lookup(chain);
    REQUIRE(m);
    REQUIRE(m->length == 20);
    REQUIRE(m->blocks[19].known());  // the boundary segment's blocks are located
    t.reset();
    auto ins = pass_match ? ix.insert(chain, *m, no_data(5)) : ix.insert(chain, 20, no_data(5));
    REQUIRE(ins);
    CHECK(ins->published == 5);
    CHECK(ins->length == 25);
    CHECK(ins->round_trips == (pass_match ? 2 : 3));  // round A from the lookup's reads
    return t.snapshot().count(kvc::op_kind::read);
  };
  const auto reads_with = reads_of_insert(with, true);
  const auto reads_without = reads_of_insert(without, false);
  // With the match, round A comes from the lookup's reads of the boundary segment (blocks 16-31),
  // and only round B reads: the parent's slot, the 5 blocks' first buckets in one READ and
  // their overflow word (each took its first bucket, the word naming none of their offsets: no
  // second bucket is read again). Without it, round A reads the first buckets of the parent and
  // the 5 blocks in one READ, their 6 second buckets and the overflow word; then its blocks find
  // their first buckets holding two (base's and with's) and take their second buckets, which
  // round B reads again with the parent's slot and the first buckets.
  CHECK(reads_with == 1 + 1 + 1);
  CHECK(reads_without == (1 + 6 + 1) + (1 + 1 + 5));
  CHECK(ix.stats().inserts_after_lookup == 1);
  // One block after a read parent: round A reads the parent's and the block's buckets and the
  // block's overflow word (none for the parent), round B the parent's slot and the block's
  // buckets again. At a segment's head (32) the two first buckets are in different groups; inside
  // a segment (33) they lie side by side and one READ takes both.
  for (const std::size_t at : {std::size_t{32}, std::size_t{33}}) {
    REQUIRE(ix.insert(base, 0, no_data(40))->length == 40);
    const auto longer = make_chain(rng, at + 1, base, at);
    t.reset();
    auto one = ix.insert(longer, at, no_data(1));
    REQUIRE(one);
    CHECK(one->published == 1);
    const std::size_t round_a = at == 32 ? 2 + 2 + 1 : 1 + 2 + 1;
    CHECK(t.snapshot().count(kvc::op_kind::read) == round_a + 1 + 2);
  }
  for (const auto* c : {&with, &without}) {
    auto m = ix.lookup(*c);
    REQUIRE(m);
    CHECK(m->length == 25);
  }
  // A match too old to trust (a quarter of the reclaim grace) is read again: still correct.
  const auto late = make_chain(rng, 25, base, 20);
  auto m = ix.lookup(late);
  REQUIRE(m);
  m->read_at -= cfg.reclaim_grace;
  t.reset();
  auto ins = ix.insert(late, *m, no_data(5));
  REQUIRE(ins);
  CHECK(ins->published == 5);
  CHECK(t.snapshot().count(kvc::op_kind::read) == reads_without);
}

TEST_CASE("remote index: an insert from its lookup's reads yields to what changed since",
          "[index]") {
  index_nodes nodes;
  auto ta = nodes.attach();
  auto tb = nodes.attach();
  auto cfg = nodes.config();
  cfg.lease = std::chrono::seconds(60);
  cfg.reclaim_grace = std::chrono::seconds(20);
  auto a = kvc::remote_index<kvc::shm_transport>::open(*ta, cfg);
  auto b = kvc::remote_index<kvc::shm_transport>::open(*tb, cfg);
  REQUIRE(a);
  REQUIRE(b);
  std::mt19937_64 rng(53);
  const auto base = make_chain(rng, 20);
  REQUIRE((*a)->insert(base, 0, no_data(20))->published == 20);
  const auto audit = [&] {
    std::vector<kvc_test::audited_region> regions;
    for (const auto& r : nodes.regions) regions.push_back({r.base(), &r.header()});
    return kvc_test::audit_index(regions);
  };
  SECTION("the blocks were published by another client meanwhile") {
    const auto chain = make_chain(rng, 23, base, 20);
    auto m = (*a)->lookup(chain);
    REQUIRE(m);
    REQUIRE(m->length == 20);
    REQUIRE((*b)->insert(chain, 20, no_data(3))->published == 3);
    auto ins = (*a)->insert(chain, *m, no_data(3));
    REQUIRE(ins);
    CHECK(ins->length == 23);
    CHECK(ins->published == 0);  // found present on the next pass, not published again
    CHECK(ins->present == 3);
  }
  SECTION("the slots it read as empty were taken meanwhile") {
    // Sibling branches under the same parent: their blocks 20-22 go to the same first group, at
    // the same offsets, and fill those buckets (then name the offsets and go to second ones).
    const auto chain = make_chain(rng, 23, base, 20);
    auto m = (*a)->lookup(chain);
    REQUIRE(m);
    REQUIRE(m->length == 20);
    for (int sibling = 0; sibling < 4; ++sibling) {
      REQUIRE((*b)->insert(make_chain(rng, 23, base, 20), 20, no_data(3))->published == 3);
    }
    auto ins = (*a)->insert(chain, *m, no_data(3));
    REQUIRE(ins);
    CHECK(ins->length == 23);
    CHECK(ins->published == 3);
    auto again = (*b)->lookup(chain);
    REQUIRE(again);
    CHECK(again->length == 23);
  }
  CHECK((*a)->stats().inserts_after_lookup == 1);
  const auto rep = audit();
  INFO(rep.summary());
  CHECK(rep.error_count == 0);
  CHECK(rep.duplicates == 0);
  CHECK(rep.closure_violations == 0);
}

TEST_CASE("remote index: an insert reads a segment's first buckets in one READ per round",
          "[index]") {
  index_nodes nodes;
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  auto opened = counted_reader(t, nodes, 1);
  auto& ix = *opened;
  std::mt19937_64 rng(47);
  REQUIRE(ix.insert(make_chain(rng, 8), 0, no_data(8))->published == 8);  // takes a chunk
  // 16 new blocks from a chain's start: one segment, one first group. Round A: one READ of
  // the 16 first buckets, 16 second buckets, the overflow word; round B: the 16 first buckets
  // in one READ after their CASes, then the overflow word in place of the second buckets
  // (every block took its first bucket; block by block: 33 and 32, and before 2026-12-05
  // round B read the 16 second buckets too).
  const auto chain = make_chain(rng, 16);
  t.reset();
  auto ins = ix.insert(chain, 0, no_data(16));
  REQUIRE(ins);
  CHECK(ins->published == 16);
  CHECK(ins->round_trips == 3);  // A, B, C (round C turns the slabs LIVE: no round D)
  CHECK(t.snapshot().count(kvc::op_kind::read) == (1 + 16 + 1) + (1 + 1));
  // The 16 records lie side by side (slabs of the chunk the first insert took): one WRITE
  // (one per record until 2026-12-07).
  CHECK(t.snapshot().count(kvc::op_kind::write) == 1);
  // Each record's slab word is written with it, counting the next block as its child: no FAA
  // (until 2026-12-05 one per block after the first). C's CASes turn them LIVE with the count.
  CHECK(t.snapshot().bytes_of(kvc::op_kind::write) == 16 * kvc::index_layout::record_bytes);
  CHECK(t.snapshot().count(kvc::op_kind::faa) == 0);
  {
    // ... and the counts written are right: each record LIVE, counting its published child.
    const region_view v(nodes.regions[0]);
    for (std::size_t i = 0; i < 16; ++i) {
      const auto sw = il::slab_word::decode(*v.slab_word(ins->blocks[i].slab));
      CHECK(sw.state == il::slab_state::live);
      CHECK(sw.count == (i + 1 < 16 ? 1u : 0u));
    }
    check_counts_exact(nodes);
  }
  auto m = ix.lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 16);
  // Past the segment's end, the next segment's blocks start a run of their own (another
  // group): 20 blocks from 0 of a new chain are two runs in each round.
  const auto longer = make_chain(rng, 20);
  t.reset();
  auto two = ix.insert(longer, 0, no_data(20));
  REQUIRE(two);
  CHECK(two->published == 20);
  CHECK(t.snapshot().count(kvc::op_kind::read) == (2 + 20 + 2) + (2 + 2));
}

TEST_CASE("remote index: an insert counts the round trips of the chunk claims it waited for",
          "[index]") {
  index_nodes nodes;
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  auto opened = counted_reader(t, nodes, 53);
  auto& ix = *opened;
  std::mt19937_64 rng(53);
  // The client's first insert claims a chunk (FAA on the cursor; CAS on the chunk with a READ of
  // its records; CAS on its free slabs) before its three rounds; 200 blocks more need three
  // chunks more (56 slabs are left), claimed at once in the same three round trips; 3 blocks
  // more need none. The chunks the 200 used up (the first three of four) are given back by
  // upkeep, not inside the insert (until 2026-12-07 it took a round trip more).
  const std::array<std::array<std::size_t, 4>, 3> cases{{
      {8, 3 + 3, 1, 1},  // blocks, round trips, chunks taken, chunks owned after
      {200, 3 + 3, 3, 4},
      {3, 3, 0, 4},
  }};
  for (const auto& [n, trips, chunks, owned] : cases) {
    t.reset();
    const auto taken = ix.stats().chunks_taken;
    auto ins = ix.insert(make_chain(rng, n), 0, no_data(n));
    REQUIRE(ins);
    CHECK(ins->published == n);
    CHECK(ins->round_trips == t.snapshot().round_trips);  // every round trip the call made
    CHECK(ins->round_trips == trips);
    CHECK(ix.stats().chunks_taken - taken == chunks);
    CHECK(audit_node0(nodes).owned_chunks == owned);
  }
  // Upkeep gives the used-up chunks back (and claims one to hold its reserve of free slabs).
  REQUIRE(ix.maintain());
  CHECK(audit_node0(nodes).owned_chunks == 4 - 3 + 1);
  // An insert that uses up more than 8 chunks gives them back itself: 109 slabs held, 600
  // blocks claim 8 chunks more and use up 9 of the 10; one is left, with 21 free slabs.
  t.reset();
  auto big = ix.insert(make_chain(rng, 600), 0, no_data(600));
  REQUIRE(big);
  CHECK(big->published == 600);
  CHECK(audit_node0(nodes).owned_chunks == 1);
  t.reset();
  auto first = counted_reader(t, nodes, 54);
  t.reset();
  auto ins = first->insert(make_chain(rng, 8), 0, no_data(8));
  REQUIRE(ins);
  CHECK(ins->round_trips == 3 + 3);  // its rounds and one chunk claim
  CHECK(t.snapshot().round_trips == 3 + 3);
}

TEST_CASE("remote index: maintain() keeps a reserve of free slabs, so inserts claim none",
          "[index]") {
  index_nodes nodes;
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  std::map<std::string, int> steps;  // before the indexes: their destructors call the hook
  auto ix = counted_reader(t, nodes, 61);
  REQUIRE(ix->config().slab_reserve == kvc::index_layout::chunk_slabs);  // the default
  ix->on_step([&](const char* s) { ++steps[s]; });
  std::mt19937_64 rng(61);
  REQUIRE(ix->maintain());  // upkeep claims a chunk: 64 free slabs held
  CHECK(ix->stats().chunks_taken == 1);
  CHECK(steps["claim.cursor"] == 1);
  steps.clear();
  t.reset();
  auto ins = ix->insert(make_chain(rng, 8), 0, no_data(8));
  REQUIRE(ins);
  CHECK(ins->published == 8);
  CHECK(ins->round_trips == 3);  // its own rounds: no claim
  CHECK(t.snapshot().round_trips == 3);
  CHECK(steps.count("claim.cursor") == 0);
  REQUIRE(ix->maintain());  // 56 held, fewer than the reserve: one chunk more
  CHECK(ix->stats().chunks_taken == 2);
  steps.clear();
  ins = ix->insert(make_chain(rng, 100), 0, no_data(100));  // 120 held
  REQUIRE(ins);
  CHECK(ins->published == 100);
  CHECK(steps.count("claim.cursor") == 0);
  CHECK(steps.count("claim.chunks") == 0);
  CHECK(ix->stats().chunks_taken == 2);
  REQUIRE(ix->maintain());  // 20 held: one more, and the audit finds every held slab owned
  CHECK(ix->stats().chunks_taken == 3);
  std::vector<kvc_test::audited_region> regions;
  for (const auto& r : nodes.regions) regions.push_back({r.base(), &r.header()});
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.error_count == 0);

  // Without a reserve, upkeep claims nothing and the first insert claims its chunk itself.
  auto cfg = nodes.config();
  cfg.slab_reserve = 0;
  cfg.lease = std::chrono::seconds(60);
  auto bare = counted_index::open(t, cfg);
  REQUIRE(bare);
  steps.clear();
  (*bare)->on_step([&](const char* s) { ++steps[s]; });
  REQUIRE((*bare)->maintain());
  CHECK((*bare)->stats().chunks_taken == 0);
  ins = (*bare)->insert(make_chain(rng, 8), 0, no_data(8));
  REQUIRE(ins);
  CHECK(ins->round_trips == 3 + 3);
  CHECK(steps["claim.cursor"] == 1);
  // ... and gives back the chunks it used up at the insert's end (upkeep does not, without a
  // reserve): 8 + 200 slabs use up three of four.
  ins = (*bare)->insert(make_chain(rng, 200), 0, no_data(200));
  REQUIRE(ins);
  CHECK(steps["release"] == 1);
  CHECK(ins->round_trips == 3 + 3 + 1);
}

TEST_CASE("remote index: maintain() reserves from fresh chunks only, never on a full node",
          "[index]") {
  // A small node filled once: upkeep then claims nothing, not even chunks holding slabs that
  // eviction freed (those are for the inserts that need them: a reserve would hold them idle);
  // the insert that needs slabs claims them itself.
  index_nodes nodes(1, std::uint64_t{1} << 20);
  client c(nodes, nodes.config());
  std::mt19937_64 rng(67);
  std::size_t published = 0;
  for (int i = 0; i < 1000; ++i) {
    REQUIRE(c.index->maintain());  // tops up while fresh chunks remain
    auto ins = c.index->insert(make_chain(rng, 16), 0, no_data(16));
    REQUIRE(ins);
    published += ins->published;
    if (ins->stop == kvc::insert_stop::no_slabs) break;
  }
  CHECK(published > 0);
  REQUIRE(c.index->maintain());  // a full node is no error to upkeep
  std::size_t evicted = 0;
  for (int i = 0; i < 2000 && evicted < 32; ++i) evicted += *c.index->evict(0, 8);
  REQUIRE(evicted >= 32);
  std::this_thread::sleep_for(2 * c.index->config().reclaim_grace);
  const auto taken = c.index->stats().chunks_taken;
  REQUIRE(c.index->maintain());  // reclaims the evicted slabs and claims none of them
  CHECK(c.index->stats().reclaimed >= 32);
  CHECK(c.index->stats().chunks_taken == taken);
  auto ins = c.index->insert(make_chain(rng, 16), 0, no_data(16));
  REQUIRE(ins);
  CHECK(ins->published > 0);  // claimed by the insert, from scans of the table
  CHECK(c.index->stats().chunks_taken > taken);
}

TEST_CASE("remote index: once a node's chunks were all handed out, upkeep gives the reserve back",
          "[index]") {
  // A node of two chunks, two clients kept up: A's upkeep takes the first, B's the last, which
  // puts the cursor through the table. B gives its unused chunk back (the node has been full:
  // its slabs are for whoever needs them), and A's 100-block insert finds them by a scan.
  index_nodes nodes(1, std::uint64_t{48} << 10, 64, 4);
  auto g = kvc::index_layout::read_layout(nodes.regions[0].header());
  REQUIRE(g);
  REQUIRE(g->chunks == 2);
  client a(nodes, nodes.config(2));
  client b(nodes, nodes.config(3));
  REQUIRE(a.index->maintain());
  REQUIRE(a.index->stats().chunks_taken == 1);
  REQUIRE(b.index->maintain());
  CHECK(b.index->stats().chunks_taken == 1);
  REQUIRE(b.index->maintain());  // nothing to claim and nothing held: no error
  std::mt19937_64 rng(89);
  auto ins = a.index->insert(make_chain(rng, 100), 0, no_data(100));
  REQUIRE(ins);
  CHECK(ins->published == 100);
  CHECK(a.index->stats().chunks_taken == 2);
  const auto rep = audit_node0(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  // The first chunk, used up, went back at the insert's end (not kept for upkeep): on a node
  // that has been full, slabs freed in it later are for whichever client scans for them.
  CHECK(rep.owned_chunks == 1);
}

TEST_CASE("remote index: an insert that uses up more chunks than a batch holds gives them all back",
          "[index]") {
  // 80 chunks used up by one insert, at most 72 operations a batch: two rounds of give-back
  // (until 2026-12-07 one batch of 80, refused by the transport).
  index_nodes nodes(1, std::uint64_t{32} << 20);
  auto t = nodes.attach();
  REQUIRE(t->set_max_ops_per_node(72));
  auto cfg = nodes.config(1);
  cfg.slab_reserve = 0;              // the insert gives its chunks back itself
  std::map<std::string, int> steps;  // before the index: its destructor calls the hook
  auto opened = kvc_test::shm_index::open(*t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  ix.on_step([&](const char* s) { ++steps[s]; });
  std::mt19937_64 rng(109);
  const std::size_t n = 80 * kvc::index_layout::chunk_slabs;
  auto ins = ix.insert(make_chain(rng, n), 0, no_data(n));
  ix.on_step({});
  REQUIRE(ins);
  CHECK(ins->published == n);
  CHECK_FALSE(ix.in_doubt());
  CHECK(steps["release"] == 2);
  const auto rep = audit_node0(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.owned_chunks == 0);
}

TEST_CASE("remote index: a node seen full by eviction sampling gets used-up chunks back at once",
          "[index]") {
  // A client's upkeep took one chunk; then other clients took every fresh chunk left (the
  // cursor put through the table here). The client's own claims never met the table's end, but
  // its eviction sampling read the cursor: an insert that uses its chunk up gives it back
  // itself, as on a node it found full by claiming, instead of keeping it for upkeep.
  index_nodes nodes;
  auto g = kvc::index_layout::read_layout(nodes.regions[0].header());
  REQUIRE(g);
  const auto cursor = chunk_cursor(nodes.regions[0]);
  client a(nodes, nodes.config(2));
  REQUIRE(a.index->maintain());
  REQUIRE(a.index->stats().chunks_taken == 1);
  REQUIRE(cursor.load() < g->chunks);
  cursor.store(g->chunks);
  REQUIRE(a.index->evict(0, 1));  // nothing to evict; the sample reads the cursor
  std::mt19937_64 rng(107);
  const std::size_t n = kvc::index_layout::chunk_slabs;
  auto ins = a.index->insert(make_chain(rng, n), 0, no_data(n));
  REQUIRE(ins);
  CHECK(ins->published == n);
  CHECK(a.index->stats().chunks_taken == 1);  // the insert used the chunk upkeep took
  const auto rep = audit_node0(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.owned_chunks == 0);
}

TEST_CASE(
    "remote index: a claim of several chunks at the table's end takes what is left, then "
    "scans",
    "[index]") {
  // Other clients took every fresh chunk but two (the cursor two short of the table's end; the
  // chunks before it stand free again, as chunks given back do). A 200-block insert needs four:
  // its FAA by four hands out two, and the other two come from scans of the table.
  index_nodes nodes;
  const auto& region = nodes.regions[0];
  auto g = kvc::index_layout::read_layout(region.header());
  REQUIRE(g);
  const auto cursor = chunk_cursor(region);
  cursor.store(g->chunks - 2);
  auto cfg = nodes.config();
  cfg.slab_reserve = 0;              // the insert claims all it needs itself
  std::map<std::string, int> steps;  // before the index: its destructor calls the hook
  client c(nodes, cfg);
  c.index->on_step([&](const char* s) { ++steps[s]; });
  std::mt19937_64 rng(71);
  auto ins = c.index->insert(make_chain(rng, 200), 0, no_data(200));
  REQUIRE(ins);
  CHECK(ins->published == 200);
  CHECK(c.index->stats().chunks_taken == 4);
  CHECK(steps["claim.cursor"] == 1);  // two chunks of the four asked for
  CHECK(steps["claim.scan"] == 2);    // then one scan for each chunk more
  CHECK(cursor.load() == g->chunks + 2);
  std::vector<kvc_test::audited_region> regions{{region.base(), &region.header()}};
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.error_count == 0);
  CHECK(rep.duplicates == 0);
}

TEST_CASE(
    "remote index: on a full chunk table a claim finds the one free chunk wherever it is, and "
    "says no_slabs only after reading the whole table",
    "[index]") {
  // Every fresh chunk handed out (the cursor through the table) and every chunk word owned, by
  // an entry nobody registered (nothing recovers those), but one, somewhere else each round.
  // Until 2026-12-05 a claim read one window of 256 entries from a random place and gave up
  // when none was free there: on this table of about 1,900 chunks most of these inserts
  // stopped with no_slabs (and their callers would have evicted for nothing).
  index_nodes nodes(1, std::uint64_t{32} << 20);
  const auto& region = nodes.regions[0];
  auto g = il::read_layout(region.header());
  REQUIRE(g);
  REQUIRE(g->chunks > 1024);  // more than one round trip of the scan, 7 windows of the old one
  const auto data_offset = region.header().data_offset;
  chunk_cursor(region).store(g->chunks);
  auto chunk_word = [&](std::uint64_t k) {
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(
        region.base() + g->chunks_offset(data_offset) + k * il::chunk_entry_bytes));
  };
  constexpr std::uint32_t stranger = 63;  // the fixture's last client entry, never registered
  const std::uint64_t owned = il::chunk_word{il::chunk_state::owned, stranger, 1}.encode();
  for (std::uint64_t k = 0; k < g->chunks; ++k) chunk_word(k).store(owned);
  auto cfg = nodes.config();
  cfg.slab_reserve = 0;  // the insert claims what it needs
  std::mt19937_64 rng(79);
  std::map<std::string, int> steps;  // before the clients: their destructors call the hook
  // Each round's client stays: a client going away gives back its chunks (its published slabs
  // stay LIVE), which would leave more than one free.
  std::vector<std::unique_ptr<client>> clients;
  for (int round = 0; round < 12; ++round) {
    std::uint64_t free_one = rng() % g->chunks;
    while (chunk_word(free_one).load() != owned) free_one = rng() % g->chunks;  // not a client's
    chunk_word(free_one).store(0);
    cfg.seed = static_cast<std::uint64_t>(round) + 1;  // the scan starts somewhere else
    auto& c = *clients.emplace_back(std::make_unique<client>(nodes, cfg));
    auto ins = c.index->insert(make_chain(rng, 5), 0, no_data(5));
    REQUIRE(ins);
    INFO("round " << round << ": chunk " << free_one << " of " << g->chunks);
    CHECK(ins->published == 5);
    const auto w = il::chunk_word::decode(chunk_word(free_one).load());
    CHECK(w.state == il::chunk_state::owned);
    CHECK(w.owner != stranger);
  }
  // None free: no_slabs, after one READ of every entry, 1,024 per round trip.
  cfg.seed = 99;
  auto& c = *clients.emplace_back(std::make_unique<client>(nodes, cfg));
  c.index->on_step([&](const char* s) { ++steps[s]; });
  auto ins = c.index->insert(make_chain(rng, 5), 0, no_data(5));
  REQUIRE(ins);
  CHECK(ins->published == 0);
  CHECK(ins->stop == kvc::insert_stop::no_slabs);
  CHECK(steps["claim.scan"] == static_cast<int>((g->chunks + 1023) / 1024));
  std::vector<kvc_test::audited_region> regions{{region.base(), &region.header()}};
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.duplicates == 0);
  CHECK(rep.closure_violations == 0);
}

TEST_CASE("remote index: a chunk the cursor handed out but a scanning client took first",
          "[index][race]") {
  // A node of two chunks. B takes the first; A's FAA takes the last, and before A's CAS on it,
  // B's FAA passes the table's end, so B scans, finds that chunk free and takes it. A's CAS then
  // fails: the chunk is B's, A holds nothing of it, and with nothing free left A stops with
  // no_slabs. No slab is handed out twice.
  index_nodes nodes(1, std::uint64_t{48} << 10, 64, 4);
  const auto& region = nodes.regions[0];
  auto g = kvc::index_layout::read_layout(region.header());
  REQUIRE(g);
  REQUIRE(g->chunks == 2);
  auto cfg = nodes.config(2);
  cfg.slab_reserve = 0;
  client a(nodes, cfg);
  cfg.seed = 3;
  client b(nodes, cfg);
  std::mt19937_64 rng(73);
  auto b_first = b.index->insert(make_chain(rng, 40), 0, no_data(40));
  REQUIRE(b_first);
  REQUIRE(b_first->published == 40);
  REQUIRE(b.index->stats().chunks_taken == 1);
  bool raced = false;
  std::size_t b_published = 0;
  a.index->on_step([&](const char* s) {
    if (raced || std::string_view(s) != "claim.chunks") return;
    raced = true;  // B needs 16 slabs more than its chunk has left
    auto more = b.index->insert(make_chain(rng, 40), 0, no_data(40));
    REQUIRE(more);
    b_published = more->published;
  });
  auto a_ins = a.index->insert(make_chain(rng, 8), 0, no_data(8));
  a.index->on_step({});
  REQUIRE(raced);
  CHECK(b_published == 40);
  CHECK(b.index->stats().chunks_taken == 2);  // the last chunk, found free by B's scan
  REQUIRE(a_ins);
  CHECK(a_ins->published == 0);
  CHECK(a_ins->stop == kvc::insert_stop::no_slabs);
  std::vector<kvc_test::audited_region> regions{{region.base(), &region.header()}};
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.error_count == 0);
  CHECK(rep.duplicates == 0);
}

TEST_CASE("remote index: a chunk claim that fails leaves the node to recovery", "[index]") {
  // The claim's slab CASes (or its chunk CASes) fail as a round: some may have run, so the chunk
  // may hold HELD slabs of this client that it does not know of. The client must not give such a
  // chunk back as free: its registration on the node is in doubt, left to recovery, and it
  // registers anew. A failed FAA on the cursor only skips a chunk (found by later scans). Either
  // way the insert fails with the error, not as a node without slabs.
  const auto [step, in_doubt] = GENERATE(table<const char*, bool>(
      {{"claim.cursor", false}, {"claim.chunks", true}, {"claim.slabs", true}}));
  index_nodes nodes;
  kvc::faulty<kvc::shm_transport> t(std::move(*nodes.attach()), kvc::fault_config{});
  auto cfg = nodes.config();
  cfg.lease = std::chrono::seconds(60);
  auto opened = kvc::remote_index<kvc::faulty<kvc::shm_transport>>::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(59);
  bool failed_once = false;
  ix.on_step([&](const char* s) {
    if (!failed_once && std::string_view(s) == step) {
      failed_once = true;
      t.set_unreachable(0, true);  // this round's operations fail
    }
  });
  const auto chain = make_chain(rng, 8);
  auto first = ix.insert(chain, 0, no_data(8));
  CHECK(failed_once);
  REQUIRE_FALSE(first);  // the claim's failure, not a short insert stopped at no_slabs
  CHECK(first.error() == kvc::errc::unreachable);
  t.set_unreachable(0, false);
  ix.on_step({});
  auto again = ix.insert(chain, 0, no_data(8));
  REQUIRE(again);
  CHECK(again->length == 8);
  CHECK(ix.stats().reregistrations == (in_doubt ? 1u : 0u));  // an entry in doubt is left
  // Recovery of the abandoned entry (as another client would after its lease) leaves the index
  // whole: nothing HELD without its chunk's owner, no block twice.
  REQUIRE(ix.recover_everything());
  std::vector<kvc_test::audited_region> regions;
  for (const auto& r : nodes.regions) regions.push_back({r.base(), &r.header()});
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.error_count == 0);
  CHECK(rep.duplicates == 0);
}

TEST_CASE("remote index: chains are sharded over nodes by super-segment", "[index][nodes]") {
  index_nodes nodes(3);
  kvc::counting<kvc::shm_transport> t(std::move(*nodes.attach()));
  auto opened = counted_reader(t, nodes, 1);
  auto& ix = *opened;
  std::mt19937_64 rng(18);
  std::vector<std::vector<kvc::hash64>> chains;
  for (int c = 0; c < 12; ++c) chains.push_back(make_chain(rng, 700));
  std::array<std::size_t, 3> per_node{};
  for (const auto& chain : chains) {
    auto ins = ix.insert(chain, 0, no_data(chain.size()));
    REQUIRE(ins);
    REQUIRE(ins->published == 700);
    for (std::size_t k = 0; k < chain.size(); ++k) {
      // Every block of a 256-block super-segment lives on one node, named by its first block.
      CHECK(ix.node_for(chain, k) == ix.node_for(chain, k - k % 256));
      CHECK(ins->blocks[k].node == ix.node_for(chain, k));
      ++per_node[ix.node_for(chain, k)];
    }
  }
  for (std::size_t n : per_node) CHECK(n > 0);  // 36 super-segments spread over all three
  for (const auto& chain : chains) {
    t.reset();
    auto m = ix.lookup(chain, 700);
    REQUIRE(m);
    CHECK(m->length == 700);
    CHECK(m->round_trips == 1);
    const auto c = t.snapshot();
    CHECK(c.round_trips == 1);
    // ceil(700 / 16) heads; the boundary segment's first group and the second buckets of its
    // 11 blocks after the head at the offsets its overflow word names (this client saw the word
    // when it inserted the chain, so it reads them in the hint's round trip).
    const kvc::remote_ptr b1 = ix.address_of(chain, 689).bucket[0];
    const std::uint64_t named =
        *region_view(nodes.regions[b1.node()]).overflow_word(b1, 1) & 0xFFE;  // offsets 1-11
    CHECK(c.count(kvc::op_kind::read) == 44 + 1 + static_cast<unsigned>(std::popcount(named)));
    // locate() finds the 656 inferred blocks: the first groups of 43 segments in one round
    // trip, the second buckets of the few blocks that overflowed in at most one more.
    t.reset();
    auto located = ix.locate(chain, *m);
    REQUIRE(located);
    CHECK(*located == 700);
    CHECK(m->round_trips <= 1 + 2);
    CHECK(t.snapshot().count(kvc::op_kind::read) < 43 + 700 / 8);
    auto half = ix.lookup(std::span<const kvc::hash64>(chain).first(300));
    REQUIRE(half);
    CHECK(half->length == 300);
    CHECK(half->round_trips <= 2);
  }
}

TEST_CASE("remote index: a pin keeps an evicted block's bytes from being reclaimed",
          "[index][race]") {
  index_nodes nodes(1, std::uint64_t{8} << 20, 128);
  client a(nodes, nodes.config());
  client reader(nodes, nodes.config(2));
  region_view v(nodes.regions[0]);
  std::mt19937_64 rng(19);
  const auto chain = make_chain(rng, 1);
  std::vector<std::byte> payload(128, std::byte{0x5A});
  std::vector<kvc::block_info> info{{kvc::unregistered(payload), 128, 1, 0, 16}};
  auto ins = a.index->insert(chain, 0, info);
  REQUIRE(ins);
  REQUIRE(ins->published == 1);
  auto pin = reader.index->pin(ins->blocks);
  REQUIRE(pin);
  CHECK(pin->pinned == 1);
  CHECK(reader.index->pin_holds(*pin));
  // Evicted meanwhile: unpublished, but not reclaimed while pinned.
  const std::size_t evicted = evict_one(*a.index);
  REQUIRE(evicted == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  REQUIRE(a.index->maintain());
  CHECK(a.index->stats().reclaimed == 0);
  const std::uint64_t slab = ins->blocks[0].slab;
  CHECK(il::slab_word::decode(*v.slab_word(slab)).state == il::slab_state::evicting);
  REQUIRE(reader.index->unpin(*pin));
  CHECK_FALSE(reader.index->pin_holds(*pin));
  CHECK(reader.index->unpin(*pin).error() == kvc::errc::invalid_argument);
  REQUIRE(a.index->maintain());
  CHECK(a.index->stats().reclaimed == 1);
  // A pin of a block no longer published says so.
  auto late = reader.index->pin(ins->blocks);
  REQUIRE(late);
  CHECK(late->pinned == 0);
  REQUIRE(reader.index->unpin(*late));
  // Hazard words are finite: pins of scattered blocks merge their ranges, then run out.
  std::vector<kvc::index_pin> held;
  const auto chain2 = make_chain(rng, 200);
  auto ins2 = a.index->insert(chain2, 0, std::vector<kvc::block_info>(200, info[0]));
  REQUIRE(ins2);
  REQUIRE(ins2->published == 200);
  for (std::size_t i = 0; i < 63; ++i) {
    auto p = reader.index->pin(std::span(ins2->blocks).subspan(i * 3, 1));
    REQUIRE(p);
    held.push_back(*p);
  }
  auto none = reader.index->pin(std::span(ins2->blocks).first(1));
  REQUIRE_FALSE(none);
  CHECK(none.error() == kvc::errc::out_of_range);
  for (const auto& p : held) REQUIRE(reader.index->unpin(p));
  auto again = reader.index->pin(ins2->blocks);  // 200 blocks in at most 63 words
  REQUIRE(again);
  CHECK(again->pinned == 200);
  REQUIRE(reader.index->unpin(*again));
  // A pin still held when its client closed is not unpinned afterwards: its entry is freed (and
  // may be another client's by then), so nothing is written into its hazard words.
  auto kept = reader.index->pin(ins2->blocks);
  REQUIRE(kept);
  CHECK(reader.index->pin_holds(*kept));
  REQUIRE(reader.index->close());
  CHECK_FALSE(reader.index->pin_holds(*kept));  // nothing protects its blocks any more
  CHECK(reader.index->unpin(*kept).error() == kvc::errc::invalid_argument);
}

TEST_CASE("remote index: reclaim and recovery keep to the transport's per-node batch limit",
          "[index]") {
  // A shm transport held to 72 operations per node in a batch, the least the index accepts (a
  // verbs queue pair refuses a batch beyond its depth). Reclaiming 200 evicted blocks and freeing
  // 200 orphaned slabs each took one batch of 2 operations per block (up to 256 and 400: refused).
  index_nodes nodes;
  auto t = nodes.attach();
  REQUIRE(t->set_max_ops_per_node(72));
  auto opened = kvc_test::shm_index::open(*t, nodes.config(5));
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(131);
  constexpr std::size_t n = 200;
  for (std::size_t i = 0; i < n; ++i) {
    REQUIRE(ix.insert(make_chain(rng, 1), 0, no_data(1))->published == 1);
  }
  std::size_t evicted = 0;
  for (int i = 0; i < 4000 && evicted < n; ++i) {
    auto e = ix.evict(0, n - evicted);
    INFO((e ? std::string() : e.message()));
    REQUIRE(e);
    evicted += *e;
  }
  REQUIRE(evicted == n);
  std::this_thread::sleep_for(2 * ix.config().reclaim_grace);
  for (int i = 0; i < 20 && ix.stats().reclaimed < n; ++i) {
    auto ok = ix.maintain();
    INFO((ok ? std::string() : ok.message()));
    REQUIRE(ok);
  }
  CHECK(ix.stats().reclaimed == n);

  // Orphans: LIVE slabs that no slot names, written through the region; recover_everything()
  // frees them all.
  region_view v(nodes.regions[0]);
  std::vector<std::uint64_t> orphans;
  for (std::uint64_t x = v.geo.slabs(); x-- > 0 && orphans.size() < n;) {
    if (il::slab_word::decode(*v.slab_word(x)).state != il::slab_state::free) continue;
    il::record rec{};
    rec.slot_at = kvc::remote_ptr(0, v.geo.slot_offset(v.data_off, orphans.size())).raw();
    rec.checksum = kvc::detail::index::record_checksum(rec);
    rec.slab = il::slab_word{il::slab_state::live, 1, 0, 0}.encode();
    std::memcpy(v.records + x * il::record_bytes, &rec, sizeof rec);
    orphans.push_back(x);
  }
  REQUIRE(orphans.size() == n);
  auto ok = ix.recover_everything();
  INFO((ok ? std::string() : ok.message()));
  REQUIRE(ok);
  std::size_t freed = 0;
  for (const std::uint64_t x : orphans) {
    if (il::slab_word::decode(*v.slab_word(x)).state == il::slab_state::free) ++freed;
  }
  CHECK(freed == n);
}
