// Fencing, the memory node's side (kvc/index/fencer.hpp) and the clients' (recovery on the fence
// word), over shm memory nodes: the test plays the memory node. Over verbs, with queue pairs
// really cut: tests/verbs/verbs_transport_test.cpp ("[fencing]").
#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <thread>

#include "index_fixture.hpp"
#include "kvc/index/fencer.hpp"

using kvc_test::client;
using kvc_test::index_nodes;
using kvc_test::make_chain;
using kvc_test::no_data;

namespace {

// Calls maintain() on `ix` every heartbeat until `done()` or `leases` leases passed.
template <class Done>
bool maintain_until(kvc_test::shm_index& ix, Done&& done, int leases = 4) {
  const auto until = std::chrono::steady_clock::now() + leases * ix.config().lease;
  while (!done() && std::chrono::steady_clock::now() < until) {
    if (!ix.maintain()) return false;
    std::this_thread::sleep_for(ix.config().heartbeat);
  }
  return done();
}

kvc::remote_index_config patient(const index_nodes& nodes, std::uint64_t seed) {
  auto cfg = nodes.config(seed);
  cfg.recovery_delay = std::chrono::hours(1);  // only a fence can make recovery early
  return cfg;
}

}  // namespace

TEST_CASE("fencing: a client declared dead is recovered as soon as its node fenced it",
          "[index][fencing]") {
  index_nodes nodes;
  auto fencer = kvc::index_fencer::attach(nodes.regions[0].base());  // before clients attach
  REQUIRE(fencer);
  CHECK(kvc::index_layout::fences(nodes.regions[0].header()));
  CHECK(fencer->due().empty());

  client stalled(nodes, patient(nodes, 1));
  std::mt19937_64 rng(3);
  const auto chain = make_chain(rng, 40);
  REQUIRE(stalled.index->insert(chain, 0, no_data(40))->published == 40);  // holds a chunk
  client other(nodes, patient(nodes, 2));

  // `stalled` makes no call from here: after a lease `other` declares it dead, and the node
  // finds it due, under the identity of the transport it registered through.
  std::vector<kvc::fence_target> due;
  REQUIRE(maintain_until(*other.index, [&] {
    due = fencer->due();
    return !due.empty();
  }));
  REQUIRE(due.size() == 1);
  CHECK(due[0].identity == kvc::transport_identity(*stalled.t));
  CHECK(due[0].identity != kvc::transport_identity(*other.t));
  CHECK(fencer->client(due[0].entry).state == kvc::index_layout::client_state::dead);

  // Not fenced yet: nothing is recovered (recovery_delay is an hour).
  REQUIRE_FALSE(maintain_until(
      *other.index,
      [&] { return fencer->client(due[0].entry).state != kvc::index_layout::client_state::dead; },
      2));
  CHECK(other.index->stats().recovered_chunks == 0);

  // The node cut it off (here: nothing to cut on shm) and says so: recovered at once.
  fencer->mark_fenced(due[0]);
  CHECK(fencer->due().empty());
  REQUIRE(maintain_until(*other.index, [&] {
    return fencer->client(due[0].entry).state == kvc::index_layout::client_state::free;
  }));
  CHECK(other.index->stats().fenced_recoveries >= 1);
  CHECK(other.index->stats().recovered_chunks >= 1);
  // Everything it published stays published.
  auto m = other.index->lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 40);

  // A fence word names one incarnation: the entry taken again is not fenced.
  client next(nodes, patient(nodes, 4));
  CHECK(fencer->due().empty());
  // The stalled client, resumed, finds itself dead and registers anew.
  const auto more = make_chain(rng, 20);
  auto ins = stalled.index->insert(more, 0, no_data(20));
  if (!ins) ins = stalled.index->insert(more, 0, no_data(20));  // the first call may lapse
  REQUIRE(ins);
  CHECK(ins->published == 20);
  CHECK(stalled.index->stats().reregistrations >= 1);
}

TEST_CASE("fencing: clients trust fence words only from a node that said it fences",
          "[index][fencing]") {
  index_nodes nodes;
  client stalled(nodes, patient(nodes, 1));
  client other(nodes, patient(nodes, 2));  // attached before the node announced fencing
  auto fencer = kvc::index_fencer::attach(nodes.regions[0].base());
  REQUIRE(fencer);
  std::vector<kvc::fence_target> due;
  REQUIRE(maintain_until(*other.index, [&] {
    due = fencer->due();
    return !due.empty();
  }));
  fencer->mark_fenced(due[0]);
  CHECK_FALSE(maintain_until(
      *other.index,
      [&] { return fencer->client(due[0].entry).state != kvc::index_layout::client_state::dead; },
      2));
  CHECK(other.index->stats().fenced_recoveries == 0);
}

TEST_CASE("fencing: an entry whose identity names another incarnation is not due",
          "[index][fencing]") {
  index_nodes nodes;
  auto fencer = kvc::index_fencer::attach(nodes.regions[0].base());
  REQUIRE(fencer);
  client stalled(nodes, patient(nodes, 1));
  client other(nodes, patient(nodes, 2));
  std::vector<kvc::fence_target> due;
  REQUIRE(maintain_until(*other.index, [&] {
    due = fencer->due();
    return !due.empty();
  }));
  // As if the dead client had died between registering and writing its identity: the word
  // still names the entry's previous owner (another incarnation), which must not be cut off.
  auto* base = nodes.regions[0].base();
  const auto& h = nodes.regions[0].header();
  auto g = kvc::index_layout::read_layout(h);
  REQUIRE(g);
  auto* entry =
      base + g->clients_offset(h.data_offset) + due[0].entry * kvc::index_layout::client_bytes;
  const kvc::index_layout::identity_word stale{due[0].incarnation - 1, due[0].identity};
  const std::uint64_t word = stale.encode();
  std::memcpy(entry + kvc::index_layout::identity_offset, &word, 8);
  CHECK(fencer->due().empty());
}
