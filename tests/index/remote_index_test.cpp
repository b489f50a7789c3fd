// The one-sided prefix index, protocol step by protocol step, over shm memory nodes.
#include <catch2/catch.hpp>

#include <cstring>
#include <thread>

#include "index_fixture.hpp"

using kvc_test::client;
using kvc_test::index_nodes;
using kvc_test::make_chain;
using kvc_test::no_data;

namespace {

std::span<const kvc::hash64> first(const std::vector<kvc::hash64>& c, std::size_t n) {
  return std::span<const kvc::hash64>(c).first(n);
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
  CHECK(m0->round_trips == 1);

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
