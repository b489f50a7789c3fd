// shared_index: many threads of one process over a pool of index clients; identical in-flight
// lookups and inserts are combined, and every thread gets the right answer.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "index_audit.hpp"
#include "index_fixture.hpp"
#include "kvc/index/shared_index.hpp"

using kvc_test::index_nodes;
using kvc_test::make_chain;
using kvc_test::no_data;

namespace {

namespace il = kvc::index_layout;
using shared_shm = kvc::shared_index<kvc::shm_transport>;

// Client `id`'s state word in a node's client table.
std::uint64_t* client_word(const kvc::shm_region& r, std::uint32_t id) {
  const auto geo = *il::read_layout(r.header());
  return reinterpret_cast<std::uint64_t*>(r.base() + geo.clients_offset(r.header().data_offset) +
                                          std::size_t{id} * il::client_bytes);
}

kvc_test::audit_report audit_node0(const index_nodes& nodes) {
  std::vector<kvc_test::audited_region> regions{
      {nodes.regions[0].base(), &nodes.regions[0].header()}};
  return kvc_test::audit_index(regions);
}

// A pool of `clients` over `nodes`, its maintenance thread off (the test runs upkeep).
std::unique_ptr<shared_shm> open_pool(const kvc::remote_index_config& index, kvc::shm_transport& t,
                                      std::size_t clients) {
  kvc::shared_index_config cfg;
  cfg.index = index;
  cfg.clients = clients;
  cfg.maintenance_thread = false;
  auto opened = shared_shm::open(t, cfg);
  REQUIRE(opened);
  return std::move(*opened);
}

// Evicts one block (a leaf) of node 0: its tombstone awaits reclaim.
void evict_one(shared_shm& s) {
  std::size_t evicted = 0;
  for (int i = 0; i < 5000 && evicted == 0; ++i) evicted = *s.evict(0, 1);
  REQUIRE(evicted == 1);
}

// Blocks until released; tells when it has been reached. For a step hook that holds one call.
struct gate {
  std::mutex m;
  std::condition_variable cv;
  bool reached = false, open = false;
  void wait_here() {
    std::unique_lock lock(m);
    reached = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  void wait_reached() {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return reached; });
  }
  void release() {
    std::lock_guard lock(m);
    open = true;
    cv.notify_all();
  }
};

// The first insert's round A (once per `armed`).
bool first_round_a(const char* step, std::atomic<bool>& armed) {
  return std::string_view(step) == "insert.A" && armed.exchange(false);
}
// Until another call has joined one in flight (10 s at most).
void wait_for_a_joined_call(const shared_shm& shared) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (shared.stats().inserts_combined == 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace

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
  std::vector<std::size_t> idle_at_claims;  // before the index: its destructor calls the hook
  int claims = 0;
  auto opened = open_pool(nodes.config(), *t, 3);
  auto& s = *opened;
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
  auto opened = open_pool(nodes.config(), *t, 2);
  auto& shared = *opened;
  std::mt19937_64 rng(23);
  const auto chain = make_chain(rng, 8);
  const auto blocks = no_data(chain.size());
  struct thrown {};
  std::atomic<bool> armed{true};
  // The first insert waits in its round A until a second identical one has joined it, then
  // throws.
  shared.on_step([&](const char* step) {
    if (!first_round_a(step, armed)) return;
    wait_for_a_joined_call(shared);
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
    (void)opened.release();
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

// Two identical inserts at once make one call; only the caller that made it is told it
// published the blocks (a manager sends "stored" events, and counts, for what it published).
TEST_CASE("shared index: a caller joined to an insert in flight finds its blocks present",
          "[index][shared]") {
  index_nodes nodes;
  auto t = nodes.attach();
  auto opened = open_pool(nodes.config(), *t, 2);
  auto& shared = *opened;
  std::mt19937_64 rng(29);
  const auto chain = make_chain(rng, 8);
  const auto blocks = no_data(chain.size());
  std::atomic<bool> armed{true};
  shared.on_step([&](const char* step) {  // the first insert waits in round A for the second
    if (first_round_a(step, armed)) wait_for_a_joined_call(shared);
  });
  kvc::result<kvc::index_insert_result> made = kvc::fail(kvc::errc::invalid_argument);
  std::thread first([&] { made = shared.insert(chain, 0, blocks); });
  while (armed) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // in its round A
  auto joined = shared.insert(chain, 0, blocks);
  first.join();
  shared.on_step({});
  REQUIRE(shared.stats().inserts_combined == 1);
  REQUIRE(made);
  REQUIRE(joined);
  CHECK(made->published == 8);
  CHECK(made->published_runs == std::vector<std::pair<std::size_t, std::size_t>>{{0, 8}});
  CHECK(joined->length == 8);
  CHECK(joined->published == 0);
  CHECK(joined->present == 8);
  CHECK(joined->published_runs.empty());
}

// A pooled client declared dead while its table is full (its entry another's now) fails each
// call until an entry comes free. The pool takes it last meanwhile: one call may fail on it, the
// rest go to the healthy client. Each of the two entries is the lost one once: in one case the
// lost client is the one a lone caller is handed first (without the preference, every call
// fails on it), in the other it is never handed out.
TEST_CASE("shared index: a client in doubt is taken last", "[index][shared]") {
  const std::uint32_t lost = GENERATE(0u, 1u);
  index_nodes nodes(1, std::uint64_t{4} << 20, 64, 2);
  auto t = nodes.attach();
  const auto cfg = nodes.config();
  auto opened = open_pool(cfg, *t, 2);
  auto& shared = *opened;
  // Entry `lost` taken by a newcomer (what its registration CASes after recovery freed it).
  std::uint64_t* word = client_word(nodes.regions[0], lost);
  const auto w = il::client_word::decode(*word);
  REQUIRE(w.state == il::client_state::live);
  *word = il::client_word{il::client_state::live, (w.incarnation + 1) & 0x3fffffu, 0}.encode();
  // Past a quarter lease: the next call on each client heartbeats and learns where it stands.
  std::this_thread::sleep_for(cfg.lease / 4 + std::chrono::milliseconds(10));
  std::mt19937_64 rng(41);
  const auto chain = make_chain(rng, 3);
  int failures = 0;
  for (int i = 0; i < 10; ++i) {
    auto m = shared.lookup(chain);
    if (!m) {
      ++failures;
      CHECK(m.error() == kvc::errc::out_of_range);
    }
  }
  CHECK(failures <= 1);
  auto ins = shared.insert(chain, 0, no_data(3));
  REQUIRE(ins);
  CHECK(ins->published == 3);
}

// upkeep (maintain()) is the only place a client reclaims what it evicted: a client kept busy
// must still get it. maintain() waits for a busy client whose upkeep is overdue, for a heartbeat
// period at most: held longer, it is left for the next beat.
TEST_CASE("shared index: upkeep reaches a client kept busy", "[index][shared]") {
  index_nodes nodes;
  auto t = nodes.attach();
  auto cfg = nodes.config();
  cfg.lease = std::chrono::milliseconds(4000);
  cfg.heartbeat = std::chrono::milliseconds(1000);  // how long upkeep waits for busy clients
  auto opened = open_pool(cfg, *t, 1);
  auto& shared = *opened;
  std::mt19937_64 rng(42);
  const auto chain = make_chain(rng, 2);
  REQUIRE(shared.insert(chain, 0, no_data(2))->published == 2);
  evict_one(shared);
  REQUIRE(audit_node0(nodes).tombstone == 1);
  // Past the reclaim grace, and half a lease since the pool's last upkeep.
  std::this_thread::sleep_for(cfg.lease / 2 + std::chrono::milliseconds(10));
  std::atomic<gate*> hold{nullptr};  // the next lookup waits there
  shared.on_step([&](const char* step) {
    if (std::string_view(step) != "lookup") return;
    if (gate* g = hold.exchange(nullptr)) g->wait_here();
  });
  const auto held_call = [&](gate& g) {
    hold = &g;
    std::thread busy([&] { (void)shared.lookup(chain); });
    g.wait_reached();  // the only client is busy
    return busy;
  };
  const auto wait_for_upkeep = [&](std::uint64_t waits) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (shared.stats().upkeep_waits < waits && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return shared.stats().upkeep_waits == waits;
  };
  {  // held past the wait: upkeep returns without it
    gate g;
    std::thread busy = held_call(g);
    auto upkeep = std::async(std::launch::async, [&] { return shared.maintain(); });
    const bool returned = upkeep.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
    g.release();
    busy.join();
    REQUIRE(returned);
    CHECK(upkeep.get());
    CHECK(shared.stats().upkeep_waits == 1);
    CHECK(audit_node0(nodes).tombstone == 1);
  }
  {  // given back while upkeep waits: upkeep takes it
    gate g;
    std::thread busy = held_call(g);
    auto upkeep = std::async(std::launch::async, [&] { return shared.maintain(); });
    CHECK(wait_for_upkeep(2));
    g.release();
    busy.join();
    CHECK(upkeep.get());
  }
  shared.on_step({});
  const auto rep = audit_node0(nodes);
  INFO(rep.summary());
  CHECK(rep.tombstone == 0);  // reclaimed by the upkeep that waited for the client
  CHECK(rep.evicting_slabs == 0);
}

// A lookup does not join one in flight that began before an insert returned: the caller that
// inserted, then looks up, must find what it inserted.
TEST_CASE("shared index: a lookup joins none that began before an insert returned",
          "[index][shared]") {
  index_nodes nodes;
  auto t = nodes.attach();
  auto opened = open_pool(nodes.config(), *t, 2);
  auto& shared = *opened;
  std::mt19937_64 rng(43);
  const auto chain = make_chain(rng, 4);
  gate held;
  std::atomic<bool> armed{true};
  shared.on_step([&](const char* step) {
    if (std::string_view(step) == "lookup" && armed.exchange(false)) held.wait_here();
  });
  std::thread early([&] { (void)shared.lookup(chain); });  // began before the insert
  held.wait_reached();
  REQUIRE(shared.insert(chain, 0, no_data(4))->published == 4);
  auto late = std::async(std::launch::async, [&] { return shared.lookup(chain); });
  const bool answered = late.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  held.release();
  early.join();
  shared.on_step({});
  REQUIRE(answered);  // not waiting for the early lookup
  auto m = late.get();
  REQUIRE(m);
  CHECK(m->length == 4);
  CHECK(shared.stats().lookups_combined == 0);
}

// The pool's clients after the first wait for a full client table too: here one entry is a
// crashed client's (recovered after a lease and recovery_delay) and the other a live client's
// that closes a while after the first pooled client got in. The open pooled client keeps its
// lease meanwhile: the live client's scans do not take it for dead.
TEST_CASE("shared index: every pooled client waits for a full table", "[index][shared]") {
  index_nodes nodes(1, std::uint64_t{4} << 20, 64, 2);
  const auto lease = nodes.config().lease;
  kvc_test::client crashed(nodes, nodes.config(5));
  const std::uint32_t crashed_id = crashed.index->client_id(0);
  const auto crashed_word = il::client_word::decode(*client_word(nodes.regions[0], crashed_id));
  crashed.index->abandon();
  auto live = std::make_unique<kvc_test::client>(nodes, nodes.config(6));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> live_declared{0};
  std::atomic<bool> closed{false};
  std::thread keeper([&] {
    std::optional<std::chrono::steady_clock::time_point> taken;
    while (!stop) {
      (void)live->index->maintain();
      const auto w = il::client_word::decode(  // CASed by the pooled clients meanwhile
          std::atomic_ref<std::uint64_t>(*client_word(nodes.regions[0], crashed_id)).load());
      if (!taken && w.state == il::client_state::live &&
          w.incarnation != crashed_word.incarnation) {
        taken = std::chrono::steady_clock::now();  // the first pooled client got in
      }
      if (taken && std::chrono::steady_clock::now() - *taken > lease + lease / 2) {
        live_declared = live->index->stats().declared_dead;
        closed = static_cast<bool>(live->index->close());
        return;
      }
      std::this_thread::sleep_for(live->index->config().heartbeat);
    }
  });
  auto t = nodes.attach();
  kvc::shared_index_config cfg;
  cfg.index = nodes.config();
  cfg.index.full_table_wait = std::chrono::milliseconds(3000);  // margin for slow builds
  cfg.clients = 2;
  cfg.maintenance_thread = false;
  auto opened = shared_shm::open(*t, cfg);
  stop = true;
  keeper.join();
  INFO((opened ? std::string() : opened.message()));
  REQUIRE(opened);
  CHECK(closed);
  // The live client declared the crashed one dead at most; never the pooled client that waited.
  CHECK(live_declared <= 1);
  const auto rep = audit_node0(nodes);
  CHECK(rep.live_clients == 2);
  CHECK(rep.dead_clients == 0);
  std::mt19937_64 rng(44);
  CHECK((*opened)->insert(make_chain(rng, 3), 0, no_data(3))->published == 3);
}

// Upkeep that throws is reported by what was thrown, and counted.
TEST_CASE("shared index: upkeep reports what it failed on", "[index][shared]") {
  index_nodes nodes;
  auto t = nodes.attach();
  const auto cfg = nodes.config();
  auto opened = open_pool(cfg, *t, 1);
  auto& shared = *opened;
  std::mt19937_64 rng(45);
  REQUIRE(shared.insert(make_chain(rng, 2), 0, no_data(2))->published == 2);
  evict_one(shared);
  std::this_thread::sleep_for(2 * cfg.reclaim_grace);
  shared.on_step([](const char* step) {
    if (std::string_view(step) == "reclaim.empty") throw std::runtime_error("the hook's failure");
  });
  auto ok = shared.maintain();
  shared.on_step({});
  REQUIRE_FALSE(ok);
  CHECK_THAT(ok.detail(), Catch::Contains("the hook's failure"));
  CHECK(shared.stats().upkeep_failures == 1);
  CHECK(shared.idle_clients() == 1);  // given back
  CHECK(shared.maintain());           // settles what the throw left
}
