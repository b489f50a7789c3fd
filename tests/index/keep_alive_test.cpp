// Keep-alives (remote_index::start_keep_alive / keep_alive_done / finish_keep_alive): the
// heartbeat alone, in two halves, as shared_index's beat thread sends it for its idle clients.
// They keep a client's lease with no other call; a call or a close while one is in flight
// finishes it first.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "index_audit.hpp"
#include "index_fixture.hpp"
#include "kvc/transport/faulty.hpp"

using kvc_test::chain_on;
using kvc_test::client;
using kvc_test::index_nodes;
using kvc_test::make_chain;
using kvc_test::no_data;

namespace {

using faulty_shm = kvc::faulty<kvc::shm_transport>;
using faulty_index = kvc::remote_index<faulty_shm>;

kvc_test::audit_report audit_node0(const index_nodes& nodes) {
  std::vector<kvc_test::audited_region> regions{
      {nodes.regions[0].base(), &nodes.regions[0].header()}};
  return kvc_test::audit_index(regions);
}

}  // namespace

// Client x makes no call but keep-alives for three leases while client y runs upkeep (which
// declares dead whoever stays silent for a lease). Without them (the control), y declares x
// dead and x registers anew at its next call.
TEST_CASE("remote index: keep-alives alone keep a client's lease", "[index]") {
  const bool keep_alive = GENERATE(true, false);
  index_nodes nodes;
  const auto cfg = nodes.config(1);  // lease 400 ms, heartbeat 20 ms
  client x(nodes, cfg);
  client y(nodes, nodes.config(2));
  std::mt19937_64 rng(83);
  const auto chain = make_chain(rng, 6);
  REQUIRE(x.index->insert(chain, 0, no_data(6))->published == 6);
  // Due a heartbeat period after the last; not before: nothing is sent.
  std::this_thread::sleep_for(cfg.heartbeat);
  const auto first = std::chrono::steady_clock::now();
  REQUIRE(x.index->start_keep_alive());
  x.index->finish_keep_alive();
  const bool again = x.index->start_keep_alive();
  if (std::chrono::steady_clock::now() - first < cfg.heartbeat) CHECK_FALSE(again);
  if (again) x.index->finish_keep_alive();
  CHECK(x.index->keep_alive_done());

  int beats = 0;
  const auto until = std::chrono::steady_clock::now() + cfg.lease * 3;
  while (std::chrono::steady_clock::now() < until) {
    if (keep_alive && x.index->start_keep_alive()) {
      ++beats;
      x.index->finish_keep_alive();
      CHECK(x.index->keep_alive_done());
    }
    REQUIRE(y.index->maintain());
    std::this_thread::sleep_for(cfg.heartbeat);
  }
  const auto registrations = x.index->stats().reregistrations;
  auto m = x.index->lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 6);
  if (keep_alive) {
    CHECK(beats >= 3);  // one per heartbeat period (about 60); a lease needs one at least
    CHECK(y.index->stats().declared_dead == 0);
    CHECK(x.index->stats().reregistrations == registrations);
  } else {
    CHECK(y.index->stats().declared_dead == 1);
    CHECK(x.index->stats().reregistrations == registrations + 1);
  }
}

// A heartbeat in flight to a node that answers only after a while (here node 1, unreachable,
// failing each batch 150 ms after it was rung): a lookup on node 0 meanwhile waits for it and
// then goes on; a client destroyed with one in flight waits for it too and leaves node 0 as it
// found it.
TEST_CASE("remote index: a call or a close with a keep-alive in flight finishes it first",
          "[index]") {
  index_nodes nodes(2, std::uint64_t{16} << 20);
  kvc::fault_config faults;
  faults.unreachable_wait = std::chrono::milliseconds(150);
  faulty_shm t(std::move(*nodes.attach()), faults);
  const auto cfg = nodes.config();
  const auto before = audit_node0(nodes);
  std::mt19937_64 rng(89);
  std::vector<kvc::hash64> on0;

  SECTION("a call") {
    auto opened = faulty_index::open(t, cfg);
    REQUIRE(opened);
    auto& ix = **opened;
    on0 = chain_on(ix, rng, 8, {0});
    REQUIRE(ix.insert(on0, 0, no_data(8))->published == 8);
    t.set_unreachable(1, true);
    std::this_thread::sleep_for(cfg.heartbeat + std::chrono::milliseconds(5));
    const auto rung = std::chrono::steady_clock::now();
    REQUIRE(ix.start_keep_alive());
    const bool done_at_once = ix.keep_alive_done();  // node 1's FAA fails 150 ms after the ring
    if (std::chrono::steady_clock::now() - rung < std::chrono::milliseconds(100)) {
      CHECK_FALSE(done_at_once);
    }
    auto m = ix.lookup(on0);
    CHECK(std::chrono::steady_clock::now() - rung >= faults.unreachable_wait);
    REQUIRE(m);
    CHECK(m->length == 8);
    CHECK(ix.keep_alive_done());
    CHECK(ix.in_doubt());  // the heartbeat's answer from node 1 was read: a failure
    CHECK(ix.stats().registration_failures == 1);  // the lookup's try to register there again
    opened->reset();
  }

  SECTION("a close") {
    auto opened = faulty_index::open(t, cfg);
    REQUIRE(opened);
    on0 = chain_on(**opened, rng, 8, {0});
    REQUIRE((*opened)->insert(on0, 0, no_data(8))->published == 8);  // it holds a chunk there
    const auto holding = audit_node0(nodes);
    CHECK(holding.live_clients == before.live_clients + 1);
    CHECK(holding.owned_chunks > before.owned_chunks);
    t.set_unreachable(1, true);
    std::this_thread::sleep_for(cfg.heartbeat + std::chrono::milliseconds(5));
    const auto rung = std::chrono::steady_clock::now();
    REQUIRE((*opened)->start_keep_alive());
    const bool done_at_once = (*opened)->keep_alive_done();
    if (std::chrono::steady_clock::now() - rung < std::chrono::milliseconds(100)) {
      CHECK_FALSE(done_at_once);
    }
    opened->reset();  // leaves node 0 cleanly; node 1's entry is left to its recovery
  }

  // Node 0 as before but for the published blocks: the entry free, its chunks back.
  const auto after = audit_node0(nodes);
  INFO(after.summary());
  CHECK(after.error_count == 0);
  CHECK(after.reserved == 0);
  CHECK(after.held_slabs == 0);
  CHECK(after.valid == before.valid + 8);
  CHECK(after.live_clients == before.live_clients);
  CHECK(after.owned_chunks == before.owned_chunks);
}
