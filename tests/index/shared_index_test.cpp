// shared_index: many threads of one process over a pool of index clients; identical in-flight
// lookups and inserts are combined, and every thread gets the right answer.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string_view>
#include <thread>

#include "index_fixture.hpp"
#include "kvc/index/shared_index.hpp"

using kvc_test::index_nodes;
using kvc_test::make_chain;
using kvc_test::no_data;

TEST_CASE("shared index: threads share a pool; identical calls in flight are combined",
          "[index][shared]") {
  index_nodes nodes(2);
  auto t = nodes.attach();
  kvc::shared_index_config cfg;
  cfg.index = nodes.config();
  cfg.clients = 3;
  auto opened = kvc::shared_index<kvc::shm_transport>::open(*t, cfg);
  REQUIRE(opened);
  auto& shared = **opened;
  CHECK(shared.clients() == 3);
  std::mt19937_64 rng(21);
  // A few hot chains (as a shared system prompt is), asked for by every thread at once.
  std::vector<std::vector<kvc::hash64>> chains;
  for (int c = 0; c < 4; ++c) chains.push_back(make_chain(rng, 300));
  constexpr int threads = 8;
  constexpr int rounds = 200;
  std::atomic<int> wrong{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      for (int r = 0; r < rounds; ++r) {
        const auto& chain = chains[static_cast<std::size_t>((r + i) % 4)];
        auto m = shared.lookup(chain);
        if (!m) {
          ++errors;
          continue;
        }
        if (m->length < chain.size()) {
          // Odd threads pass the match (its located last block is the parent).
          const auto blocks = no_data(chain.size() - m->length);
          auto ins = i % 2 == 1 ? shared.insert(chain, *m, blocks)
                                : shared.insert(chain, m->length, blocks);
          if (!ins) {
            ++errors;
          } else if (ins->length != chain.size()) {
            ++wrong;
          }
        }
        auto again = shared.lookup(chain, chain.size());
        if (!again || again->length != chain.size()) ++wrong;
      }
    });
  }
  for (auto& th : pool) th.join();
  CHECK(errors == 0);
  CHECK(wrong == 0);
  const auto st = shared.stats();
  CHECK(st.lookups == threads * rounds * 2);
  CHECK(st.lookups_combined > 0);
  INFO("combined " << st.lookups_combined << " of " << st.lookups << " lookups, "
                   << st.inserts_combined << " of " << st.inserts << " inserts");
  // Every chain is present exactly once per block.
  for (const auto& chain : chains) CHECK(shared.lookup(chain)->length == chain.size());
}

TEST_CASE("shared index: the maintenance thread keeps idle clients alive", "[index][shared]") {
  index_nodes nodes;
  auto t = nodes.attach();
  kvc::shared_index_config cfg;
  cfg.index = nodes.config();
  cfg.clients = 2;
  auto opened = kvc::shared_index<kvc::shm_transport>::open(*t, cfg);
  REQUIRE(opened);
  // Another client watches: after two leases of idleness the pool must not be declared dead.
  kvc_test::client watcher(nodes, nodes.config(9));
  for (int i = 0; i < 10; ++i) {
    std::this_thread::sleep_for(cfg.index.lease / 4);
    REQUIRE(watcher.index->maintain());
  }
  CHECK(watcher.index->stats().declared_dead == 0);
  std::mt19937_64 rng(22);
  const auto chain = make_chain(rng, 10);
  auto ins = (*opened)->insert(chain, 0, no_data(10));
  REQUIRE(ins);
  CHECK(ins->published == 10);
}

TEST_CASE("shared index: upkeep takes one client at a time and fills its slab reserve",
          "[index][shared]") {
  // Upkeep may claim chunks (round trips) for each client's reserve of free slabs: the other
  // clients stay free for calls meanwhile, and inserts afterwards find their slabs held.
  index_nodes nodes;
  auto t = nodes.attach();
  kvc::shared_index_config cfg;
  cfg.index = nodes.config();
  cfg.clients = 3;
  cfg.maintenance_thread = false;
  std::vector<std::size_t> idle_at_claims;  // before the index: its destructor calls the hook
  int claims = 0;
  auto opened = kvc::shared_index<kvc::shm_transport>::open(*t, cfg);
  REQUIRE(opened);
  auto& s = **opened;
  REQUIRE(s.idle_clients() == 3);
  s.on_step([&](const char* step) {
    if (std::string_view(step) != "claim.cursor") return;
    ++claims;
    idle_at_claims.push_back(s.idle_clients());
  });
  REQUIRE(s.maintain());
  CHECK(idle_at_claims == std::vector<std::size_t>{2, 2, 2});  // one claim per client
  CHECK(s.idle_clients() == 3);
  claims = 0;
  std::mt19937_64 rng(23);
  auto ins = s.insert(make_chain(rng, 30), 0, no_data(30));
  REQUIRE(ins);
  CHECK(ins->published == 30);
  CHECK(claims == 0);  // the reserve had them
  s.on_step({});
}

// A combined call whose one real call throws (out of memory; here a throwing step hook): the
// threads waiting for its answer make the call themselves instead of waiting for ever, and a
// later identical call is not joined to the one that threw.
TEST_CASE("shared index: callers joined to a call that throws make the call themselves",
          "[index][shared]") {
  index_nodes nodes;
  auto t = nodes.attach();
  kvc::shared_index_config cfg;
  cfg.index = nodes.config();
  cfg.clients = 2;
  cfg.maintenance_thread = false;
  auto opened = kvc::shared_index<kvc::shm_transport>::open(*t, cfg);
  REQUIRE(opened);
  auto& shared = **opened;
  std::mt19937_64 rng(23);
  const auto chain = make_chain(rng, 8);
  const auto blocks = no_data(chain.size());
  struct thrown {};
  std::atomic<bool> armed{true};
  // The first insert waits in its round A until a second identical one has joined it, then
  // throws.
  shared.on_step([&](const char* step) {
    if (std::string_view(step) != "insert.A" || !armed.exchange(false)) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (shared.stats().inserts_combined == 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    throw thrown{};
  });
  std::atomic<bool> first_threw{false};
  std::thread first([&] {
    try {
      (void)shared.insert(chain, 0, blocks);
    } catch (const thrown&) {
      first_threw = true;
    }
  });
  while (armed) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // in its round A
  auto joined = std::make_shared<std::promise<kvc::result<kvc::index_insert_result>>>();
  auto answer = joined->get_future();
  std::thread second(
      [&shared, &chain, &blocks, joined] { joined->set_value(shared.insert(chain, 0, blocks)); });
  const bool answered = answer.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  first.join();
  CHECK(first_threw);
  CHECK(shared.stats().inserts_combined == 1);
  if (!answered) {
    // Waiting for an answer that never comes: leave the index to the stuck thread.
    second.detach();
    (void)opened->release();
    FAIL("the caller joined to the call that threw waits for ever");
  }
  second.join();
  auto r = answer.get();
  REQUIRE(r);
  CHECK(r->length == chain.size());
  CHECK(shared.lookup(chain)->length == chain.size());
  // Nothing of the call that threw is left in flight: the same insert again is not joined.
  CHECK(shared.insert(chain, 0, blocks)->length == chain.size());
  CHECK(shared.stats().inserts_combined == 1);
  shared.on_step({});
}
