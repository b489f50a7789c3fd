// The remote tier: two engines (each its own transport, index clients and host arena) sharing
// one shm memory node reuse each other's KV blocks; evictions cut loads cleanly; bad arguments
// and mismatched block sizes are refused.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <kvc/pool/remote_tier.hpp>
#include <memory>
#include <random>
#include <vector>

#include "../index/index_fixture.hpp"
#include "../support/block_bytes.hpp"

namespace {

using kvc_test::index_nodes;
using tier_type = kvc::remote_tier<kvc::shm_transport>;
constexpr std::size_t block_bytes = 4096;

// One engine's side: transport, pooled index clients, host arena, remote tier.
struct engine {
  explicit engine(const index_nodes& nodes, std::uint64_t seed, std::size_t host_blocks = 128)
      : transport(nodes.attach()) {
    kvc::shared_index_config cfg;
    cfg.index = nodes.config(seed);
    cfg.clients = 2;
    auto ix = kvc::shared_index<kvc::shm_transport>::open(*transport, cfg);
    REQUIRE(ix);
    index = std::move(*ix);
    auto h = kvc::host_tier::create({block_bytes, host_blocks, false});
    REQUIRE(h);
    host = std::make_unique<kvc::host_tier>(std::move(*h));
    auto r = tier_type::create(*transport, *index, *host);
    REQUIRE(r);
    remote = std::move(*r);
  }
  std::vector<std::uint32_t> slots(std::size_t n) {
    std::vector<std::uint32_t> v;
    for (std::size_t i = 0; i < n; ++i) v.push_back(*host->allocate());
    return v;
  }
  std::unique_ptr<kvc::shm_transport> transport;
  std::unique_ptr<kvc::shared_index<kvc::shm_transport>> index;
  std::unique_ptr<kvc::host_tier> host;
  std::unique_ptr<tier_type> remote;
};

using kvc_test::fill;
using kvc_test::holds;

}  // namespace

TEST_CASE("remote tier: a second engine loads the blocks the first stored", "[pool][remote]") {
  index_nodes nodes(1, std::uint64_t{16} << 20, block_bytes);
  engine a(nodes, 1);
  engine b(nodes, 2);
  std::mt19937_64 rng(3);
  const auto chain = kvc_test::make_chain(rng, 40);

  const auto a_slots = a.slots(40);
  for (std::size_t i = 0; i < 40; ++i) fill(a.host->data(a_slots[i]), chain[i]);
  auto stored = a.remote->store(chain, 0, a_slots, 16);
  REQUIRE(stored);
  CHECK(stored->published == 40);
  CHECK(stored->length == 40);

  auto m = b.remote->lookup(chain);
  REQUIRE(m);
  REQUIRE(m->length == 40);
  const std::size_t located_by_lookup = static_cast<std::size_t>(
      std::count_if(m->blocks.begin(), m->blocks.end(), [](const auto& r) { return r.known(); }));
  CHECK(located_by_lookup < 40);  // inner blocks of earlier segments are inferred, not read
  const unsigned rts = m->round_trips;
  const auto b_slots = b.slots(40);
  auto loaded = b.remote->load(chain, *m, b_slots);
  REQUIRE(loaded);
  CHECK(*loaded == 40);
  CHECK(m->round_trips == rts + 1);  // one round trip located the rest
  for (std::size_t i = 0; i < 40; ++i) CHECK(holds(b.host->data(b_slots[i]), chain[i]));

  // B extends the chain (a next turn), A finds and loads all of it.
  auto longer = chain;
  for (int i = 0; i < 10; ++i) longer.push_back(kvc::hash64{rng()});
  const auto b_more = b.slots(10);
  for (std::size_t i = 0; i < 10; ++i) fill(b.host->data(b_more[i]), longer[40 + i]);
  auto more = b.remote->store(longer, 40, b_more, 16);
  REQUIRE(more);
  CHECK(more->published == 10);
  auto m2 = a.remote->lookup(longer);
  REQUIRE(m2);
  REQUIRE(m2->length == 50);
  const auto a_back = a.slots(50);
  auto loaded2 = a.remote->load(longer, *m2, a_back);
  REQUIRE(loaded2);
  CHECK(*loaded2 == 50);
  for (std::size_t i = 0; i < 50; ++i) CHECK(holds(a.host->data(a_back[i]), longer[i]));

  // Storing what is there already publishes nothing new and loses nothing.
  auto again = a.remote->store(chain, 0, a_slots, 16);
  REQUIRE(again);
  CHECK(again->published == 0);
  CHECK(again->length >= 40);
}

TEST_CASE("remote tier: blocks evicted after a lookup end the loaded prefix", "[pool][remote]") {
  index_nodes nodes(1, std::uint64_t{16} << 20, block_bytes);
  engine a(nodes, 1);
  engine b(nodes, 2);
  std::mt19937_64 rng(4);
  const auto chain = kvc_test::make_chain(rng, 30);
  const auto slots = a.slots(30);
  for (std::size_t i = 0; i < 30; ++i) fill(a.host->data(slots[i]), chain[i]);
  REQUIRE(a.remote->store(chain, 0, slots, 16));
  auto m = b.remote->lookup(chain);
  REQUIRE(m);
  REQUIRE(m->length == 30);
  std::size_t evicted = 0;
  for (int round = 0; round < 50 && evicted < 5; ++round) {
    auto e = a.index->evict(0, 5 - evicted);
    REQUIRE(e);
    evicted += *e;
  }
  REQUIRE(evicted > 0);
  const auto b_slots = b.slots(30);
  auto loaded = b.remote->load(chain, *m, b_slots);
  REQUIRE(loaded);
  CHECK(*loaded == 30 - evicted);  // leaves go first: the chain's tail
  for (std::size_t i = 0; i < *loaded; ++i) CHECK(holds(b.host->data(b_slots[i]), chain[i]));
  auto now = b.remote->lookup(chain);
  REQUIRE(now);
  CHECK(now->length == *loaded);
}

TEST_CASE("remote tier: mismatched sizes and bad slots are refused", "[pool][remote]") {
  index_nodes small(1, std::uint64_t{8} << 20, 1024);
  auto t = small.attach();
  kvc::shared_index_config cfg;
  cfg.index = small.config();
  cfg.clients = 1;
  auto ix = kvc::shared_index<kvc::shm_transport>::open(*t, cfg);
  REQUIRE(ix);
  auto host = kvc::host_tier::create({block_bytes, 8, false});
  REQUIRE(host);
  auto r = tier_type::create(*t, **ix, *host);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::invalid_config);
  CHECK(r.message().find("1024") != std::string::npos);

  index_nodes nodes(1, std::uint64_t{8} << 20, block_bytes);
  engine a(nodes, 1, 8);
  std::mt19937_64 rng(5);
  const auto chain = kvc_test::make_chain(rng, 4);
  const std::vector<std::uint32_t> bad = {0, 1, 99};
  auto s = a.remote->store(chain, 0, bad, 16);
  REQUIRE_FALSE(s);
  CHECK(s.error() == kvc::errc::invalid_argument);
  CHECK(a.remote->store(chain, 2, std::vector<std::uint32_t>{0, 1, 2}, 16).error() ==
        kvc::errc::invalid_argument);
  auto m = a.remote->lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 0);  // the refused store published nothing
  CHECK(a.remote->load(chain, *m, std::vector<std::uint32_t>{0}).error() ==
        kvc::errc::invalid_argument);  // more slots than matched blocks
}
