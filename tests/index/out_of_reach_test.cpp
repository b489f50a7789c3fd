// A memory node out of reach: calls on the other nodes go on, blocks on it are cut off with a
// clear error, tries to register there again back off, a pool keeps its leases elsewhere, and a
// reclaim or a settle owing that node a parent's -1 loses nothing.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "index_audit.hpp"
#include "index_fixture.hpp"
#include "kvc/index/shared_index.hpp"
#include "kvc/transport/faulty.hpp"

using kvc_test::chain_on;
using kvc_test::index_nodes;
using kvc_test::make_chain;
using kvc_test::no_data;

namespace {

using faulty_shm = kvc::faulty<kvc::shm_transport>;
using faulty_index = kvc::remote_index<faulty_shm>;

// Upkeep every `pause` until `ix` is registered on every node again (20 s at most).
template <class Index>
void maintain_until_registered(Index& ix, std::chrono::milliseconds pause) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (ix.in_doubt() && std::chrono::steady_clock::now() < deadline) {
    (void)ix.maintain();
    std::this_thread::sleep_for(pause);
  }
}

// Upkeep until `ix`'s heartbeat has failed on an unreachable node (its entry there in doubt).
template <class Index>
void lose_entry(Index& ix) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!ix.in_doubt() && std::chrono::steady_clock::now() < deadline) {
    (void)ix.maintain();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(ix.in_doubt());
}

}  // namespace

TEST_CASE("remote index: a node out of reach costs the blocks on it, not the calls on the others",
          "[index]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  auto cfg = nodes.config();  // lease 400 ms, heartbeat 20 ms
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(71);
  const auto on0 = chain_on(ix, rng, 8, {0});
  const auto on1 = chain_on(ix, rng, 8, {1});
  const auto across = chain_on(ix, rng, 300, {0, 1});  // 256 blocks on node 0, 44 on node 1
  for (const auto* c : {&on0, &on1, &across}) {
    auto ins = ix.insert(*c, 0, no_data(c->size()));
    REQUIRE(ins);
    REQUIRE(ins->length == c->size());
  }

  t.set_unreachable(1, true);
  // The next heartbeat finds node 1 gone, and registering there again fails: out of reach.
  std::this_thread::sleep_for(cfg.heartbeat + std::chrono::milliseconds(5));
  const auto first_failure = std::chrono::steady_clock::now();
  auto upkeep = ix.maintain();
  REQUIRE_FALSE(upkeep);
  CHECK(upkeep.error() == kvc::errc::unreachable);
  CHECK(ix.stats().registration_failures == 1);
  CHECK(ix.in_doubt());

  // Node 0's blocks are found; node 1's fail with why; a chain across both is cut at node 1.
  auto m0 = ix.lookup(on0);
  REQUIRE(m0);
  CHECK(m0->length == 8);
  auto m1 = ix.lookup(on1);
  REQUIRE_FALSE(m1);
  CHECK(m1.error() == kvc::errc::unreachable);
  CHECK(m1.message().find("memory node 1 is out of reach") != std::string::npos);
  const auto cuts = ix.stats().out_of_reach_cuts;
  auto mx = ix.lookup(across);
  REQUIRE(mx);
  CHECK(mx->length == 256);
  CHECK(ix.stats().out_of_reach_cuts == cuts + 1);

  // Inserts: on node 0 whole; across the nodes up to node 1, stopped as unreachable; on node 1
  // (or under a parent there) an error.
  const auto new0 = chain_on(ix, rng, 8, {0});
  auto i0 = ix.insert(new0, 0, no_data(8));
  REQUIRE(i0);
  CHECK(i0->length == 8);
  CHECK(i0->stop == kvc::insert_stop::none);
  const auto new_across = chain_on(ix, rng, 270, {0, 1});
  auto ix_across = ix.insert(new_across, 0, no_data(270));
  REQUIRE(ix_across);
  CHECK(ix_across->length == 256);
  CHECK(ix_across->published == 256);
  CHECK(ix_across->stop == kvc::insert_stop::unreachable);
  auto i_rest = ix.insert(new_across, 256, no_data(14));
  REQUIRE_FALSE(i_rest);
  CHECK(i_rest.error() == kvc::errc::unreachable);
  const auto new1 = chain_on(ix, rng, 8, {1});
  auto i1 = ix.insert(new1, 0, no_data(8));
  REQUIRE_FALSE(i1);
  CHECK(i1.error() == kvc::errc::unreachable);

  // Tries to register on node 1 again back off: the second at once, then waits doubling from a
  // heartbeat period to a lease, so at most one more try at 20, 60, 140, 300, 620, 1,020 ms ...
  // after the first failure, whatever the number of calls. Every lookup on node 0 meanwhile
  // succeeds.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(600);
  int calls = 0, found = 0, upkeep_failed = 0;
  while (std::chrono::steady_clock::now() < until || calls <= 10) {
    auto m = ix.lookup(on0);
    if (m && m->length == 8) ++found;
    if (!ix.maintain()) ++upkeep_failed;  // every one, while node 1 is out of reach
    ++calls;
  }
  CHECK(found == calls);
  CHECK(upkeep_failed == calls);
  const auto elapsed = std::chrono::steady_clock::now() - first_failure;
  std::uint64_t most = 2;  // the tries the schedule above allows in `elapsed`
  for (auto at = cfg.heartbeat, step = cfg.heartbeat; at <= elapsed;
       step = std::min(step * 2, cfg.lease), at += step) {
    ++most;
  }
  INFO("calls " << calls << ", tries allowed " << most);
  CHECK(ix.stats().registration_failures >= 3);
  CHECK(ix.stats().registration_failures <= most);

  // Back: within the longest backoff (a lease), a call registers there again and node 1's
  // blocks are found as they were.
  t.set_unreachable(1, false);
  const auto registrations = ix.stats().reregistrations;
  maintain_until_registered(ix, std::chrono::milliseconds(5));
  CHECK_FALSE(ix.in_doubt());
  CHECK(ix.stats().reregistrations == registrations + 1);
  auto back = ix.lookup(on1);
  REQUIRE(back);
  CHECK(back->length == 8);
  auto whole = ix.insert(new_across, 256, no_data(14));
  REQUIRE(whole);
  CHECK(whole->length == 270);
}

// The pool's clients find node 1 unreachable one after another, each upkeep waiting out the
// node's timeout (here 80 ms per batch) for its try to register there again, and for the
// heartbeat that finds it gone unless a keep-alive found it first. In a row (six clients),
// those waits add up to more than a lease; the idle clients' heartbeats go out beside them
// (several in flight at once: by the beat thread, or without it by maintain() after each
// client's upkeep), so that nobody is declared dead on node 0, which is fine.
// Round C publishes node by node: node 0's blocks are VALID when node 1's round fails. The
// call registers anew and finds them present; they are still this call's to report (a manager
// sends "stored" events for what its insert published, and only for that).
TEST_CASE("remote index: blocks published before a later round failed are this call's", "[index]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  auto opened = faulty_index::open(t, nodes.config());
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(73);
  const auto across = chain_on(ix, rng, 300, {0, 1});  // 256 blocks on node 0, 44 on node 1
  int rounds_c = 0;
  ix.on_step([&](const char* step) {
    if (std::string_view(step) == "insert.C" && ++rounds_c == 2) t.set_unreachable(1, true);
  });
  auto ins = ix.insert(across, 0, no_data(across.size()));
  ix.on_step({});
  REQUIRE(rounds_c >= 2);
  REQUIRE(ins);
  CHECK(ins->stop == kvc::insert_stop::unreachable);
  CHECK(ins->length == 256);
  CHECK(ins->published == 256);
  CHECK(ins->present == 0);
  CHECK(ins->published_runs == std::vector<std::pair<std::size_t, std::size_t>>{{0, 256}});
  t.set_unreachable(1, false);
}

TEST_CASE("shared index: a node slow to fail costs no client its lease on the others",
          "[index][shared]") {
  const bool threads = GENERATE(true, false);
  index_nodes nodes(2);
  kvc::fault_config faults;
  faults.unreachable_wait = std::chrono::milliseconds(80);
  faulty_shm t(std::move(*nodes.attach()), faults);
  kvc::shared_index_config cfg;
  cfg.index = nodes.config();  // lease 400 ms, heartbeat 20 ms
  cfg.clients = 6;
  cfg.maintenance_thread = threads;
  auto opened = kvc::shared_index<faulty_shm>::open(t, cfg);
  REQUIRE(opened);
  auto& pool = **opened;
  std::mt19937_64 rng(73);
  std::vector<kvc::hash64> chain;  // on node 0 as the pool places it (over nodes 0 and 1)
  {
    kvc_test::client placer(nodes, nodes.config(11));
    chain = chain_on(*placer.index, rng, 10, {0});
    REQUIRE(placer.index->close());
  }
  // A client of node 0 alone (on a transport of its own) declares dead whoever there stays
  // silent for a lease.
  auto on0 = nodes.config(9);
  on0.nodes = {0};
  kvc_test::client watcher(nodes, on0);
  t.set_unreachable(1, true);
  std::atomic<bool> stop{false};
  std::atomic<int> watch_failures{0};
  std::thread watching([&] {
    while (!stop.load()) {
      if (!watcher.index->maintain()) ++watch_failures;
      std::this_thread::sleep_for(cfg.index.heartbeat);
    }
  });
  std::thread upkeep;  // what the maintenance thread would do
  if (!threads) {
    upkeep = std::thread([&] {
      while (!stop.load()) {
        (void)pool.maintain();
        std::this_thread::sleep_for(cfg.index.heartbeat);
      }
    });
  }
  // Three leases: time for every pooled client to find node 1 gone and try it again.
  std::this_thread::sleep_for(cfg.index.lease * 3);
  stop = true;
  watching.join();
  if (upkeep.joinable()) upkeep.join();
  CHECK(watch_failures == 0);
  CHECK(watcher.index->stats().declared_dead == 0);
  CHECK(pool.stats().upkeep_failures > 0);  // node 1: the tries to register there that failed
  // The pool serves node 0 throughout.
  auto ins = pool.insert(chain, 0, no_data(10));
  REQUIRE(ins);
  CHECK(ins->published == 10);
}

// A block reclaimed on a healthy node whose parent is on a node out of reach: the parent's -1 is
// not sent there (run() refuses a batch for such a node: here it would fail maintain()'s upkeep
// of the healthy node; in recovery, whose batches mix the -1s with the healthy node's CASes, it
// would hold the recovery up), the reclaim completes, and recover_everything() repairs the
// parent's count once the node is back.
TEST_CASE("remote index: a reclaim under a parent out of reach goes on without its -1", "[index]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  const auto cfg = nodes.config();
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(79);
  const auto chain = chain_on(ix, rng, 257, {1, 0});  // blocks 0-255 on node 1, 256 on node 0
  auto ins = ix.insert(chain, 0, no_data(257));
  REQUIRE(ins);
  REQUIRE(ins->length == 257);
  std::size_t evicted = 0;  // block 256: the only block on node 0, a leaf
  for (int i = 0; i < 5000 && evicted == 0; ++i) evicted = *ix.evict(0, 1);
  REQUIRE(evicted == 1);

  t.set_unreachable(1, true);
  std::this_thread::sleep_for(cfg.heartbeat + std::chrono::milliseconds(5));
  REQUIRE_FALSE(ix.maintain());  // node 1 out of reach from here on
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (ix.stats().reclaimed == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(cfg.reclaim_grace);
    (void)ix.maintain();  // fails each time (node 1), reclaims on node 0
  }
  CHECK(ix.stats().reclaimed == 1);
  CHECK(ix.stats().parent_releases_skipped == 1);

  // Back: once registered there again, counting again finds block 255 without children.
  t.set_unreachable(1, false);
  maintain_until_registered(ix, cfg.heartbeat);
  REQUIRE_FALSE(ix.in_doubt());
  REQUIRE(ix.recover_everything());
  CHECK(ix.stats().recounted >= 1);
}

// A settle cut short: this client's call threw midway through a reclaim on node 0 (after
// emptying the child's slot, before freeing its slab), and node 1, the parent's, is out of reach
// when the next call settles the entry. The child's slab is freed; the parent's -1 cannot be
// sent, so the settle stops there and the old entry is left to recovery (this client's own
// scans declare it dead after a lease and recover it), while node 0 serves throughout; once
// node 1 is back, recover_everything() repairs the parent's count. Nothing is lost.
TEST_CASE("remote index: a settle cut short by a node out of reach loses nothing",
          "[index][race]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  const auto cfg = nodes.config();
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(97);
  const auto chain = chain_on(ix, rng, 257, {1, 0});  // blocks 0-255 on node 1, 256 on node 0
  REQUIRE(ix.insert(chain, 0, no_data(257))->published == 257);
  std::size_t evicted = 0;  // block 256: the only block on node 0, a leaf
  for (int i = 0; i < 5000 && evicted == 0; ++i) evicted = *ix.evict(0, 1);
  REQUIRE(evicted == 1);
  std::this_thread::sleep_for(2 * cfg.reclaim_grace);
  struct thrown {};
  ix.on_step([](const char* s) {
    if (std::string_view(s) == "reclaim.free") throw thrown{};
  });
  CHECK_THROWS_AS(ix.maintain(), thrown);
  ix.on_step({});
  auto audit = [&](bool node0_only = false) {
    std::vector<kvc_test::audited_region> regions;
    for (const auto& r : nodes.regions) {
      if (!node0_only || regions.empty()) regions.push_back({r.base(), &r.header()});
    }
    return kvc_test::audit_index(regions);
  };
  CHECK(audit().evicting_slabs == 1);  // the child's, its slot emptied

  t.set_unreachable(1, true);
  const auto settled = ix.stats().settled_own;
  CHECK_FALSE(ix.maintain());  // node 1 out of reach
  CHECK(ix.stats().settled_own == settled);
  auto rep0 = audit(true);
  CHECK(rep0.evicting_slabs == 0);
  const auto on0 = chain_on(ix, rng, 4, {0});  // node 0 serves as before
  REQUIRE(ix.insert(on0, 0, no_data(4))->published == 4);
  CHECK(ix.lookup(on0)->length == 4);
  const auto recovered_by = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  auto recovered = [&] {
    const auto r = audit(true);
    return r.live_clients == 1 && r.dead_clients == 0;
  };
  while (!recovered() && std::chrono::steady_clock::now() < recovered_by) {
    (void)ix.maintain();
    std::this_thread::sleep_for(cfg.heartbeat);
  }
  rep0 = audit(true);
  INFO(rep0.summary());
  CHECK(rep0.live_clients == 1);
  CHECK(rep0.dead_clients == 0);
  CHECK(ix.stats().declared_dead == 1);

  // Back: the parent counts a child too many until recover_everything() counts again.
  t.set_unreachable(1, false);
  maintain_until_registered(ix, cfg.heartbeat);
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(audit().count_mismatches == 1);
  REQUIRE(ix.recover_everything());
  const auto rep = audit();
  INFO(rep.summary());
  CHECK(rep.error_count == 0);
  CHECK(rep.count_mismatches == 0);
  CHECK(ix.lookup(chain)->length == 256);
}

TEST_CASE("remote index: a node out of reach at open joins once reached; none reached fails",
          "[index]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  auto cfg = nodes.config();  // lease 400 ms, heartbeat 20 ms

  // Neither node: nothing to start on, and the error says why.
  t.set_unreachable(0, true);
  t.set_unreachable(1, true);
  auto none = faulty_index::open(t, cfg);
  REQUIRE_FALSE(none);
  CHECK(none.error() == kvc::errc::unreachable);
  CHECK(none.message().find("no memory node could be reached") != std::string::npos);

  // Another client, on a transport that reaches both nodes, has published a chain across them.
  faulty_shm t_full(std::move(*nodes.attach()), kvc::fault_config{});
  auto full = faulty_index::open(t_full, cfg);
  REQUIRE(full);
  std::mt19937_64 rng(83);
  const auto on0 = chain_on(**full, rng, 8, {0});
  const auto on1 = chain_on(**full, rng, 8, {1});
  const auto across = chain_on(**full, rng, 300, {0, 1});
  const auto early = chain_on(**full, rng, 300, {0, 1});
  REQUIRE((*full)->insert(early, 0, no_data(300))->length == 300);

  // Node 1 down (not started yet): the index starts on node 0.
  t.set_unreachable(0, false);
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  // Its blocks as another client's lookup found them (a pool's locate may run on any client):
  // located up to node 1, and nothing of a chain that starts there.
  auto seen_early = (*full)->lookup(early);
  REQUIRE(seen_early);
  REQUIRE(seen_early->length == 300);
  auto located = ix.locate(early, *seen_early);
  REQUIRE(located);
  CHECK(*located == 256);
  // Reading and pinning them stop at node 1 too (the blocks there are known: the lookup that
  // found them was another client's); before, the whole call failed.
  std::vector<kvc::index_layout::record> records(300);
  auto read = ix.read_blocks(seen_early->blocks, {}, records);
  REQUIRE(read);
  CHECK(*read == 256);
  auto pinned = ix.pin(seen_early->blocks);
  REQUIRE(pinned);
  CHECK(pinned->pinned == 256);
  REQUIRE(ix.unpin(*pinned));
  REQUIRE(ix.touch(seen_early->blocks));
  const auto on1_early = chain_on(**full, rng, 20, {1});
  REQUIRE((*full)->insert(on1_early, 0, no_data(20))->length == 20);
  auto seen_on1 = (*full)->lookup(on1_early);
  REQUIRE(seen_on1);
  auto not_located = ix.locate(on1_early, *seen_on1);
  REQUIRE_FALSE(not_located);
  CHECK(not_located.error() == kvc::errc::unreachable);
  CHECK(not_located.message().find("has not been reached since this client started") !=
        std::string::npos);
  CHECK(ix.reached(0));
  CHECK_FALSE(ix.reached(1));
  CHECK(ix.in_doubt());
  CHECK(ix.block_bytes() == 64);  // index_nodes' default, from node 0
  CHECK(ix.geometry(1).groups == 0);
  auto i0 = ix.insert(on0, 0, no_data(8));
  REQUIRE(i0);
  CHECK(i0->length == 8);
  auto i_across = ix.insert(across, 0, no_data(300));
  REQUIRE(i_across);
  CHECK(i_across->length == 256);
  CHECK(i_across->stop == kvc::insert_stop::unreachable);
  auto m1 = ix.lookup(on1);
  REQUIRE_FALSE(m1);
  CHECK(m1.error() == kvc::errc::unreachable);
  CHECK(m1.message().find("memory node 1 is out of reach") != std::string::npos);
  auto i1 = ix.insert(on1, 0, no_data(8));
  REQUIRE_FALSE(i1);
  CHECK(i1.error() == kvc::errc::unreachable);
  auto upkeep = ix.maintain();
  REQUIRE_FALSE(upkeep);
  CHECK(upkeep.error() == kvc::errc::unreachable);
  auto evict1 = ix.evict(1, 4);
  REQUIRE_FALSE(evict1);
  CHECK(evict1.error() == kvc::errc::unreachable);
  CHECK(ix.recover_everything().error() == kvc::errc::unreachable);

  // Started: reached by a later call (after its backoff), registered, and used like the other.
  t.set_unreachable(1, false);
  maintain_until_registered(ix, std::chrono::milliseconds(5));
  CHECK_FALSE(ix.in_doubt());
  CHECK(ix.reached(1));
  CHECK(ix.geometry(1).groups == ix.geometry(0).groups);
  auto again1 = ix.insert(on1, 0, no_data(8));
  REQUIRE(again1);
  CHECK(again1->length == 8);
  auto rest = ix.insert(across, 256, no_data(44));
  REQUIRE(rest);
  CHECK(rest->length == 300);
  auto whole = ix.lookup(across);
  REQUIRE(whole);
  CHECK(whole->length == 300);
  seen_early = (*full)->lookup(early);
  REQUIRE(seen_early);
  located = ix.locate(early, *seen_early);
  REQUIRE(located);
  CHECK(*located == 300);
  REQUIRE((*full)->close());
  // A second client sees what the first published on node 1.
  auto other = faulty_index::open(t, cfg);
  REQUIRE(other);
  auto seen = (*other)->lookup(on1);
  REQUIRE(seen);
  CHECK(seen->length == 8);
  REQUIRE(ix.close());
  REQUIRE((*other)->close());
  std::vector<kvc_test::audited_region> regions;
  for (const auto& r : nodes.regions) regions.push_back({r.base(), &r.header()});
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.closure_violations == 0);
  CHECK(rep.count_mismatches == 0);
  CHECK(rep.valid == 636);  // 8 + 300 + 8 + 300 + 20 blocks, each once
  CHECK(rep.live_clients == 0);
}

TEST_CASE("remote index: a node formatted for another block size is kept out, not used",
          "[index]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  auto cfg = nodes.config();
  // Node 1 reformatted for 128-byte blocks: refused at open when reached there...
  REQUIRE(kvc::format_index(nodes.regions[1].header(), 128, 64));
  auto refused = faulty_index::open(t, cfg);
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == kvc::errc::format_mismatch);
  CHECK(refused.message().find("different block sizes") != std::string::npos);
  // ... and kept out of reach, with why, when first reached later.
  t.set_unreachable(1, true);
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  t.set_unreachable(1, false);
  std::this_thread::sleep_for(cfg.heartbeat);
  auto upkeep = (*opened)->maintain();
  for (int i = 0; i < 50 && upkeep.error() != kvc::errc::format_mismatch; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    upkeep = (*opened)->maintain();
  }
  REQUIRE_FALSE(upkeep);
  CHECK(upkeep.error() == kvc::errc::format_mismatch);
  CHECK(upkeep.message().find("different block sizes") != std::string::npos);
  CHECK_FALSE((*opened)->reached(1));
}

TEST_CASE("remote index: a node lost between its header and its registration starts out of reach",
          "[index]") {
  // The transport stops answering after n operations: for some n, node 1's header was read and
  // node 0 registered, but node 1's registration fails. open() goes on without node 1.
  bool seen = false;
  for (std::uint64_t n = 2; n < 512 && !seen; ++n) {
    index_nodes nodes(2, std::uint64_t{16} << 20);
    kvc::fault_config fc;
    fc.crash_after_ops = n;
    faulty_shm t(std::move(*nodes.attach()), fc);
    auto opened = faulty_index::open(t, nodes.config());
    if (!opened) continue;  // a crash before node 0 registered, or none before the end
    auto& ix = **opened;
    if (!t.crashed() || !ix.reached(1) || !ix.in_doubt()) continue;
    seen = true;
    INFO("crash after " << n << " operations");
    const std::vector<kvc::hash64> chain = [&] {
      std::mt19937_64 rng(5);
      return chain_on(ix, rng, 4, {1});
    }();
    auto m = ix.lookup(chain);
    REQUIRE_FALSE(m);
    CHECK(m.error() == kvc::errc::unreachable);
    CHECK(m.message().find("memory node 1 is out of reach for this client: registering on it "
                           "failed") != std::string::npos);
    ix.abandon();  // the transport is gone: nothing to leave through
  }
  CHECK(seen);
}

// An insert that lost its one block to another client's copy takes back the +1 it counted under
// the parent; when that take-back fails (the parent's node went out of reach), the slab it took
// on the other node still goes back: on close, nothing on that node stays HELD or owned. (Until
// 2026-12-07 the insert returned first: the slab stayed counted in use and its chunk was never
// given back, not even by close().)
TEST_CASE("remote index: a take-back that fails still gives the insert's unused slabs back",
          "[index][race]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  faulty_shm ta(std::move(*nodes.attach()), kvc::fault_config{});
  faulty_shm tb(std::move(*nodes.attach()), kvc::fault_config{});
  const auto cfg = nodes.config(1);
  auto opened_a = faulty_index::open(ta, cfg);
  auto opened_b = faulty_index::open(tb, nodes.config(2));
  REQUIRE(opened_a);
  REQUIRE(opened_b);
  auto& a = **opened_a;
  auto& b = **opened_b;
  std::mt19937_64 rng(101);
  const auto chain = chain_on(a, rng, 257, {1, 0});  // blocks 0-255 on node 1, 256 on node 0
  REQUIRE(a.insert(chain, 0, no_data(256))->published == 256);
  bool b_done = false, cut = false;
  a.on_step([&](const char* step) {
    const std::string_view s(step);
    if (s == "insert.B" && !b_done) {  // b publishes block 256 first: a yields
      b_done = true;
      auto got = b.insert(chain, 256, no_data(1));
      REQUIRE(got);
      REQUIRE(got->published == 1);
    }
    if (s == "insert.undo" && !cut) {
      cut = true;
      ta.set_unreachable(1, true);
    }
  });
  auto lost = a.insert(chain, 256, no_data(1));
  a.on_step({});
  REQUIRE(b_done);
  REQUIRE(cut);
  CHECK_FALSE(lost);  // the take-back could not be sent
  ta.set_unreachable(1, false);
  maintain_until_registered(a, cfg.heartbeat);
  REQUIRE_FALSE(a.in_doubt());
  REQUIRE(a.close());
  REQUIRE(b.close());
  std::vector<kvc_test::audited_region> node0{
      {nodes.regions[0].base(), &nodes.regions[0].header()}};
  const auto rep = kvc_test::audit_index(node0);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.held_slabs == 0);
  CHECK(rep.owned_chunks == 0);
}

// Chunks given back leave the client's list before their round runs; when it fails, the node is
// put in doubt, so that the chunks it may still own there are recovered with its old entry. On
// close, nothing stays owned. (Until 2026-12-07 such a chunk stayed owned for good, by a live
// client that had forgotten it.)
TEST_CASE("remote index: chunks whose give-back fails are left to recovery, not forgotten",
          "[index][race]") {
  index_nodes nodes(1, std::uint64_t{16} << 20);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  auto cfg = nodes.config(1);
  cfg.slab_reserve = 0;  // an insert that uses a chunk up gives it back itself
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(103);
  bool cut = false;
  ix.on_step([&](const char* step) {
    if (std::string_view(step) == "release" && !cut) {
      cut = true;
      t.set_unreachable(0, true);
    }
  });
  const auto chain = make_chain(rng, kvc::index_layout::chunk_slabs);
  auto ins = ix.insert(chain, 0, no_data(chain.size()));
  ix.on_step({});
  REQUIRE(cut);
  REQUIRE(ins);
  CHECK(ins->published == chain.size());  // the blocks are published all the same
  CHECK(ix.in_doubt());
  t.set_unreachable(0, false);
  auto audit = [&] {
    std::vector<kvc_test::audited_region> regions{
        {nodes.regions[0].base(), &nodes.regions[0].header()}};
    return kvc_test::audit_index(regions);
  };
  // Registered anew; the old entry is declared dead after its lease and recovered.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!(audit().live_clients == 1 && audit().dead_clients == 0 && !ix.in_doubt()) &&
         std::chrono::steady_clock::now() < deadline) {
    (void)ix.maintain();
    std::this_thread::sleep_for(cfg.heartbeat);
  }
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(ix.lookup(chain)->length == chain.size());
  REQUIRE(ix.close());
  const auto rep = audit();
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.dead_clients == 0);
  CHECK(rep.held_slabs == 0);
  CHECK(rep.owned_chunks == 0);
}

// A memory node that restarts comes back with a new region at the same address and of the same
// size (over verbs the transport reconnects to it transparently): in between, the client's calls
// failed and its registration there fell into doubt. Before it registers again it reads the
// region's header anew and takes the new layout (here: formatted for fewer clients, so every
// table after the client entries moved), forgetting what it knew of the old region, and a match
// taken before names no parent for it. (Until 2026-12-07 it kept the old layout: it registered
// and published at the old offsets, inside another table of the new region; a parent from an old
// match had its slab's word in the new region counted a child.)
TEST_CASE("remote index: a node back with a new region is read anew before the client registers",
          "[index]") {
  index_nodes nodes(1, std::uint64_t{16} << 20, 64, 64);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  auto cfg = nodes.config();
  cfg.reclaim_grace = std::chrono::minutes(1);  // a match stays recent enough to name a parent
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(17);
  const auto filler = chain_on(ix, rng, 300, {0});  // so that `before` takes slabs past 256
  const auto before = chain_on(ix, rng, 8, {0});
  const auto after = chain_on(ix, rng, 8, {0});
  REQUIRE(ix.insert(filler, 0, no_data(filler.size())));
  auto ins = ix.insert(before, 0, no_data(before.size()));
  REQUIRE(ins);
  REQUIRE(ins->length == before.size());
  const auto old_match = ix.lookup(before);  // its blocks name slabs of the old region
  REQUIRE(old_match);
  REQUIRE(old_match->length == before.size());
  REQUIRE(old_match->blocks.back().slab >= 256);  // in a chunk the new region has not handed out

  // The node goes down: a call fails and the client's entry there is in doubt.
  t.set_unreachable(0, true);
  REQUIRE_FALSE(ix.lookup(before));
  lose_entry(ix);
  // It restarts: a fresh region of the same size, formatted for 16 clients instead of 64.
  kvc::shm_region& r = nodes.regions[0];
  std::memset(r.base(), 0, r.bytes());
  kvc::write_region_header(r.base(), r.bytes(), 0, kvc::transport_kind::shm, 0);
  const auto geo = kvc::format_index(r.header(), 64, 16);
  REQUIRE(geo);
  t.set_unreachable(0, false);
  maintain_until_registered(ix, std::chrono::milliseconds(10));
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(ix.stats().regions_replaced == 1);

  auto gone = ix.lookup(before);
  REQUIRE(gone);
  CHECK(gone->length == 0);  // the old region's blocks went with it
  // The old match names a parent in the old region: read again, it is missing (before, its
  // slab's word in the new region was counted a child: a FREE slab with a count).
  std::vector<kvc::hash64> longer = before;
  longer.push_back(kvc::hash64{0x5EED});
  auto under_old = ix.insert(longer, *old_match, no_data(1));
  REQUIRE(under_old);
  CHECK(under_old->stop == kvc::insert_stop::parent_missing);
  CHECK(under_old->published == 0);
  REQUIRE(ix.touch(old_match->blocks));  // refs beyond the new slab table are skipped
  std::uint64_t counted_free = 0;
  for (std::uint64_t x = 0; x < geo->slabs(); ++x) {
    const auto w = kvc::index_layout::slab_word::decode(kvc::detail::index::load64(
        r.base() + geo->records_offset(r.header().data_offset) +
        x * kvc::index_layout::record_bytes + offsetof(kvc::index_layout::record, slab)));
    if (w.state == kvc::index_layout::slab_state::free && w.count != 0) ++counted_free;
  }
  CHECK(counted_free == 0);
  ins = ix.insert(after, 0, no_data(after.size()));
  REQUIRE(ins);
  REQUIRE(ins->length == after.size());

  // A client that opens the new region finds what the first one published there.
  auto fresh = faulty_index::open(t, cfg);
  REQUIRE(fresh);
  auto seen = (*fresh)->lookup(after);
  REQUIRE(seen);
  CHECK(seen->length == after.size());
  REQUIRE(ix.close());
  REQUIRE((*fresh)->close());
  std::vector<kvc_test::audited_region> regions{{r.base(), &r.header()}};
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.closure_violations == 0);
  CHECK(rep.count_mismatches == 0);
  CHECK(rep.valid == after.size());
  CHECK(rep.live_clients == 0);
  CHECK(rep.owned_chunks == 0);
}

// Over shm for real: the node stops (its region retired, its segment's name removed) and starts
// again under the same name, a smaller region formatted for 16 clients instead of 64. The client
// maps the new segment, reads its header, and registers there; before, it went on in the old
// segment, which no node served, and shared nothing with the clients of the new one. Refs taken
// before name slabs beyond the new region's table: touch() leaves them alone.
TEST_CASE("remote index: a shm memory node that restarts is mapped and read anew", "[index]") {
  index_nodes nodes(2, std::uint64_t{16} << 20, 64, 64);
  auto t = nodes.attach();
  auto opened = kvc_test::shm_index::open(*t, nodes.config());
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(23);
  const auto filler = chain_on(ix, rng, 600, {0, 0, 0});  // so that on0 takes slabs past 600
  const auto on0 = chain_on(ix, rng, 8, {0});
  const auto on1 = chain_on(ix, rng, 8, {1});
  const auto after = chain_on(ix, rng, 8, {0});
  REQUIRE(ix.insert(filler, 0, no_data(filler.size())));
  REQUIRE(ix.insert(on0, 0, no_data(on0.size())));
  REQUIRE(ix.insert(on1, 0, no_data(on1.size())));
  const auto old_match = ix.lookup(on0);
  REQUIRE(old_match);
  REQUIRE(old_match->length == on0.size());

  kvc::shm_region& r = nodes.regions[0];
  const std::string name = r.name();
  const std::uint64_t created = r.header().created_unix_ms;
  r = kvc::shm_region{};  // stops: retired, its name removed
  // A call meanwhile fails on node 0 only, as unreachable; node 1's blocks are found.
  auto down = ix.lookup(on0);
  REQUIRE_FALSE(down);
  CHECK(down.error() == kvc::errc::unreachable);
  CHECK_THAT(down.detail(), Catch::Contains("stopped serving its region"));
  auto other = ix.lookup(on1);
  REQUIRE(other);
  CHECK(other->length == on1.size());
  while (static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count()) <= created) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto back = kvc::shm_region::create(name, std::uint64_t{64} << 10, 0);
  REQUIRE(back);
  const auto geo = kvc::format_index(back->header(), 64, 16);
  REQUIRE(geo);
  REQUIRE(old_match->blocks.front().slab >= geo->slabs());
  r = std::move(*back);

  // Its heartbeat, held to the old region, fails there; the client reads the new header and
  // registers again.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((ix.in_doubt() || ix.stats().regions_replaced == 0) &&
         std::chrono::steady_clock::now() < deadline) {
    (void)ix.maintain();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(ix.stats().regions_replaced == 1);
  CHECK(ix.geometry(0).clients == 16);
  auto gone = ix.lookup(on0);
  REQUIRE(gone);
  CHECK(gone->length == 0);  // the old region's blocks went with it
  other = ix.lookup(on1);
  REQUIRE(other);
  CHECK(other->length == on1.size());
  // Refs of the old region beyond the new table: nothing written for them (before the bound, a
  // last access landed past the records table, in data slots or past the region's end).
  const std::vector<std::byte> region_before(r.base(), r.base() + r.bytes());
  REQUIRE(ix.touch(old_match->blocks));
  CHECK(std::memcmp(region_before.data(), r.base(), r.bytes()) == 0);
  auto ins = ix.insert(after, 0, no_data(after.size()));
  REQUIRE(ins);
  REQUIRE(ins->length == after.size());

  // A client that starts now, on the new segment, finds what the first one published there.
  kvc_test::client fresh(nodes, nodes.config(2));
  auto seen = fresh.index->lookup(after);
  REQUIRE(seen);
  CHECK(seen->length == after.size());
  REQUIRE(ix.close());
  REQUIRE(fresh.index->close());
  std::vector<kvc_test::audited_region> regions{{r.base(), &r.header()}};
  const auto rep = kvc_test::audit_index(regions);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.valid == after.size());
  CHECK(rep.live_clients == 0);
}

// Restarts that keep the layout: a node back as it was (only unreachable for a while) is not
// taken for a new region; one restarted with the same format is (the header's creation time
// differs): what was published in the old region is gone, nothing of it is assumed; one
// restarted for another block size is kept out, with why.
TEST_CASE("remote index: a node back as it was is not taken for a new region", "[index]") {
  index_nodes nodes(1, std::uint64_t{16} << 20, 64, 64);
  faulty_shm t(std::move(*nodes.attach()), kvc::fault_config{});
  auto cfg = nodes.config();
  auto opened = faulty_index::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(19);
  const auto chain = chain_on(ix, rng, 8, {0});
  REQUIRE(ix.insert(chain, 0, no_data(chain.size())));
  t.set_unreachable(0, true);
  REQUIRE_FALSE(ix.lookup(chain));
  lose_entry(ix);
  t.set_unreachable(0, false);
  maintain_until_registered(ix, std::chrono::milliseconds(10));
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(ix.stats().regions_replaced == 0);
  auto m = ix.lookup(chain);
  REQUIRE(m);
  CHECK(m->length == chain.size());

  kvc::shm_region& r = nodes.regions[0];
  const auto restart = [&](std::uint64_t block_bytes) {
    t.set_unreachable(0, true);
    lose_entry(ix);
    const std::uint64_t before = r.header().created_unix_ms;
    do {  // a fresh region, made at another time
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      std::memset(r.base(), 0, r.bytes());
      kvc::write_region_header(r.base(), r.bytes(), 0, kvc::transport_kind::shm, 0);
    } while (r.header().created_unix_ms == before);
    REQUIRE(kvc::format_index(r.header(), block_bytes, 64));
    t.set_unreachable(0, false);
  };
  restart(64);  // the same format
  maintain_until_registered(ix, std::chrono::milliseconds(10));
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(ix.stats().regions_replaced == 1);
  m = ix.lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 0);
  REQUIRE(ix.insert(chain, 0, no_data(chain.size())));
  m = ix.lookup(chain);
  REQUIRE(m);
  CHECK(m->length == chain.size());

  restart(128);  // another block size: kept out
  auto upkeep = ix.maintain();
  for (int i = 0; i < 100 && upkeep.error() != kvc::errc::format_mismatch; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    upkeep = ix.maintain();
  }
  REQUIRE_FALSE(upkeep);
  CHECK(upkeep.error() == kvc::errc::format_mismatch);
  CHECK_THAT(upkeep.detail(),
             Catch::Contains("came back formatted for blocks of 128 bytes, not 64 as before"));
  CHECK(ix.in_doubt());
  ix.abandon();
}
