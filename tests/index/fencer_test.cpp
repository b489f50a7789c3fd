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
  index_nodes nodes(1, std::uint64_t{8} << 20, 64, 2);               // two client entries: one each
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
  const kvc::fence_target first = due[0];
  CHECK(first.identity == kvc::transport_identity(*stalled.t));
  CHECK(first.identity != kvc::transport_identity(*other.t));
  CHECK(fencer->client(first.entry).state == kvc::index_layout::client_state::dead);
  CHECK(fencer->still_due(first));

  // Not fenced yet: nothing is recovered (recovery_delay is an hour).
  REQUIRE_FALSE(maintain_until(
      *other.index, [&] { return !fencer->still_due(first); }, 2));
  CHECK(other.index->stats().recovered_chunks == 0);

  // The node cut it off (here: nothing to cut on shm) and says so: recovered at once.
  CHECK(fencer->mark_fenced(first));
  CHECK(fencer->due().empty());
  REQUIRE(maintain_until(*other.index, [&] {
    return fencer->client(first.entry).state == kvc::index_layout::client_state::free;
  }));
  CHECK(other.index->stats().fenced_recoveries == 1);
  CHECK(other.index->stats().recovered_chunks >= 1);
  CHECK_FALSE(fencer->mark_fenced(first));  // the entry moved on: nothing stored
  // Everything it published stays published.
  auto m = other.index->lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 40);

  // The stalled client, resumed, finds itself dead and registers anew, in the only free entry:
  // its old one, one incarnation on. The old fence word names the old incarnation only, and the
  // node clears it.
  const auto more = make_chain(rng, 20);
  auto ins = stalled.index->insert(more, 0, no_data(20));
  if (!ins) ins = stalled.index->insert(more, 0, no_data(20));  // the first call may lapse
  REQUIRE(ins);
  CHECK(ins->published == 20);
  CHECK(stalled.index->stats().reregistrations >= 1);
  const auto again = fencer->client(first.entry);
  REQUIRE(again.state == kvc::index_layout::client_state::live);
  REQUIRE(again.incarnation == first.incarnation + 1);
  CHECK(kvc::index_layout::fence_word::names(fencer->fence(first.entry), first.incarnation));
  CHECK(fencer->clear_stale() == 1);
  CHECK(fencer->fence(first.entry) == 0);

  // Stalled again, declared dead again: that incarnation is recovered only on its own fence.
  REQUIRE(maintain_until(*other.index, [&] {
    due = fencer->due();
    return !due.empty();
  }));
  REQUIRE(due.size() == 1);
  CHECK(due[0].entry == first.entry);
  CHECK(due[0].incarnation == first.incarnation + 1);
  REQUIRE_FALSE(maintain_until(
      *other.index, [&] { return !fencer->still_due(due[0]); }, 2));
  CHECK(fencer->mark_fenced(due[0]));
  REQUIRE(maintain_until(*other.index, [&] { return !fencer->still_due(due[0]); }));
  CHECK(other.index->stats().fenced_recoveries == 2);
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
  CHECK(fencer->mark_fenced(due[0]));
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
