// The index client when memory runs out: every allocation of a request (lookup, insert, a read
// of the blocks under hazards, upkeep) is made to fail in turn (a replaced operator new), the
// client carries on as an engine would, and nothing it left behind may stay: no reservation, no
// hazard holding off reclaim, no chunk or slab held by an entry nobody uses. Its own binary: the
// replaced operator new is global, and not built under the sanitizers, whose allocators it
// would bypass.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "../support/failing_allocation.hpp"
#include "index_audit.hpp"
#include "index_fixture.hpp"

namespace {

namespace fa = kvc_test::failing_allocation;
using kvc_test::client;
using kvc_test::index_nodes;
using kvc_test::no_data;

kvc_test::audit_report audit(const index_nodes& nodes) {
  std::vector<kvc_test::audited_region> regions;
  for (const auto& r : nodes.regions) regions.push_back({r.base(), &r.header()});
  return kvc_test::audit_index(regions);
}

// Calls upkeep on both clients every heartbeat until `done()` or `leases` leases passed (the
// bounds below are generous: recovery takes about three leases on a quiet machine).
bool maintain_until(client& x, client& y, std::size_t leases, const std::function<bool()>& done) {
  const auto lease = x.index->config().lease;
  const auto until = std::chrono::steady_clock::now() + leases * lease;
  while (!done() && std::chrono::steady_clock::now() < until) {
    if (!x.index->maintain() || !y.index->maintain()) return false;
    std::this_thread::sleep_for(x.index->config().heartbeat);
  }
  return done();
}

}  // namespace

TEST_CASE("index: a request that runs out of memory anywhere leaves nothing behind",
          "[index][alloc]") {
  index_nodes nodes;
  auto cfg = nodes.config();
  cfg.lease = std::chrono::milliseconds(100);
  client x(nodes, cfg);  // the client whose allocations fail
  cfg.seed = 2;
  client y(nodes, cfg);  // another engine's, recovering what x's old entries left
  fa::foreground_thread = true;
  std::mt19937_64 rng(31);
  // Every request extends one published prefix (its parent is read, counted and hazarded).
  const auto prefix = kvc_test::make_chain(rng, 3);
  REQUIRE(y.index->insert(prefix, 0, no_data(3))->published == 3);
  constexpr std::size_t fresh = 5;
  std::size_t failures = 0;
  bool succeeded = false;
  // The n-th allocation fails, for n = 1, 2, ... until a request makes fewer.
  for (std::uint32_t n = 1; n < 2000 && !succeeded; ++n) {
    INFO("allocation " << n << " fails");
    const auto chain = kvc_test::make_chain(rng, prefix.size() + fresh, prefix, prefix.size());
    std::size_t published = 0, read = 0;
    fa::failed_one = false;
    fa::allocations_left = n;
    try {
      auto m = x.index->lookup(chain);
      if (m) {
        auto ins = x.index->insert(chain, *m, no_data(fresh));
        if (ins) published = ins->length;
        auto whole = x.index->lookup(chain);
        if (whole) {
          auto r = x.index->read_blocks(whole->blocks, {}, {});
          if (r) read = *r;
        }
      }
      (void)x.index->maintain();
    } catch (const std::bad_alloc&) {
      CHECK(fa::failed_one);
    }
    fa::allocations_left = 0;
    if (!fa::failed_one) {
      succeeded = true;
      CHECK(published == chain.size());
      CHECK(read == chain.size());
      break;
    }
    ++failures;
    // The next call runs out early too: where it registers anew after the failure above, or
    // heartbeats, or starts its lookup.
    fa::allocations_left = 1 + n % 4;
    try {
      (void)x.index->lookup(chain);
    } catch (const std::bad_alloc&) {
    }
    fa::allocations_left = 0;
    // The engine carries on: the request again publishes the chain whole, once the entry x may
    // have left its reservations under is recovered (until then its blocks read as pending).
    CHECK(maintain_until(x, y, 100, [&] {
      auto m = x.index->lookup(chain);
      if (!m) return false;
      if (m->length < chain.size()) {
        auto ins = x.index->insert(chain, *m, no_data(chain.size() - m->length));
        if (!ins || ins->length < chain.size()) return false;
      }
      return true;
    }));
    // Old entries are declared dead and recovered: no entry but x's and y's, no reservation.
    CHECK(maintain_until(x, y, 100, [&] {
      const auto rep = audit(nodes);
      return rep.live_clients == 2 && rep.dead_clients == 0 && rep.reserved == 0;
    }));
  }
  CHECK(succeeded);
  CHECK(failures > 0);
  // No hazard stays: every block can be evicted and its slab reclaimed.
  CHECK(maintain_until(x, y, 100, [&] {
    (void)y.index->evict(0, 64);
    const auto rep = audit(nodes);
    return rep.valid == 0 && rep.tombstone == 0 && rep.evicting_slabs == 0;
  }));
  // Both gone: every chunk and slab is free again, and the region passes the audit.
  REQUIRE(x.index->close());
  REQUIRE(y.index->close());
  const auto rep = audit(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.reserved == 0);
  CHECK(rep.held_slabs == 0);
  CHECK(rep.owned_chunks == 0);
  CHECK(rep.live_clients == 0);
  CHECK(rep.dead_clients == 0);
}

// A keep-alive whose n-th allocation fails (n = 1, 2, ... until one makes fewer): the throw
// leaves no heartbeat half sent, and the client's next call works; once both clients have left,
// nothing of x's stays behind.
TEST_CASE("index: a keep-alive that runs out of memory leaves the client usable",
          "[index][alloc]") {
  index_nodes nodes;
  const auto cfg = nodes.config();
  client x(nodes, cfg);
  client y(nodes, nodes.config(2));
  fa::foreground_thread = true;
  std::mt19937_64 rng(37);
  const auto chain = kvc_test::make_chain(rng, 4);
  REQUIRE(x.index->insert(chain, 0, no_data(4))->published == 4);
  std::size_t failures = 0;
  bool sent = false;
  for (std::uint32_t n = 1; n < 100 && !sent; ++n) {
    INFO("allocation " << n << " fails");
    std::this_thread::sleep_for(cfg.heartbeat);  // one is due
    fa::failed_one = false;
    fa::allocations_left = n;
    try {
      sent = x.index->start_keep_alive();
      REQUIRE(sent);
    } catch (const std::bad_alloc&) {
      CHECK(fa::failed_one);
    }
    fa::allocations_left = 0;
    if (sent) {
      CHECK_FALSE(fa::failed_one);
      x.index->finish_keep_alive();
      break;
    }
    ++failures;
    CHECK(x.index->keep_alive_done());  // nothing in flight
    auto m = x.index->lookup(chain);
    REQUIRE(m);
    CHECK(m->length == 4);
  }
  CHECK(sent);
  CHECK(failures > 0);
  CHECK(maintain_until(x, y, 100, [&] {
    const auto rep = audit(nodes);
    return rep.live_clients == 2 && rep.dead_clients == 0 && rep.reserved == 0;
  }));
  REQUIRE(x.index->close());
  REQUIRE(y.index->close());
  const auto rep = audit(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.held_slabs == 0);
  CHECK(rep.owned_chunks == 0);
  CHECK(rep.live_clients == 0);
  CHECK(rep.dead_clients == 0);
}
