// The Transport conformance suite over the verbs transport, against memory nodes in this process
// (verbs_region behind a bootstrap_server), on whatever RDMA device is present: soft-RoCE in the
// QEMU guest (scripts/rxe-vm/, ctest label "rxe"). Without a device only the test of the error
// message runs; the device tests are tagged [device] and the guest runs them.
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <array>
#include <atomic>
#include <random>
#include <span>
#include <thread>

#include "../index/index_audit.hpp"
#include "../index/index_fixture.hpp"
#include "kvc/concepts.hpp"
#include "kvc/index/remote_index.hpp"
#include "kvc/transport/bootstrap_server.hpp"
#include "kvc/transport/faulty.hpp"
#include "kvc/transport/shm.hpp"
#include "kvc/verbs/fencing.hpp"
#include "kvc/verbs/region.hpp"
#include "kvc/verbs/transport.hpp"

namespace {

constexpr const char* secret = "verbs-test-secret";

// Two memory nodes served from this process (formatted for the index when `index_block_bytes`;
// fencing the index's dead clients as kvc-memnode does when `fence`).
struct verbs_nodes {
  static constexpr std::uint64_t region_bytes = 1u << 20;
  explicit verbs_nodes(std::uint64_t index_block_bytes = 0, bool fence = false) {
    auto dev = kvc::verbs_device::open({});
    if (!dev) {
      std::fprintf(stderr, "%s\n", dev.message().c_str());
      std::abort();
    }
    for (kvc::node_id n = 0; n < 2; ++n) {
      auto r = kvc::verbs_region::create(*dev, region_bytes, n);
      if (!r) std::abort();
      regions.push_back(std::make_unique<kvc::verbs_region>(std::move(*r)));
      if (index_block_bytes > 0 &&
          !kvc::format_index(regions.back()->header(), index_block_bytes, 16)) {
        std::abort();
      }
      kvc::verbs_fencing* fencer = nullptr;
      if (fence) {
        auto f = kvc::verbs_fencing::start(*regions.back());
        if (!f) std::abort();
        fencing.push_back(std::move(*f));
        fencer = fencing.back().get();
      }
      fencers.push_back(fencer);
      servers.push_back(nullptr);
      ports.push_back(0);
      start_server(n, 0);
    }
  }
  // Serves node n's region on `port` (0: any free port), as a memory node (re)started there.
  void start_server(kvc::node_id n, std::uint16_t port) {
    kvc::bootstrap_server::options o;
    o.secret = secret;
    o.port = port;
    auto* region = regions[n].get();
    kvc::verbs_fencing* fencer = fencers[n];
    auto s = kvc::bootstrap_server::start(
        o,
        [region,
         fencer](const kvc::bootstrap::hello& h) -> kvc::result<kvc::bootstrap_server::session> {
          if (fencer != nullptr) return fencer->admit(h);
          if (!h.endpoint) return kvc::fail(kvc::errc::protocol_error, "no endpoint");
          auto a = region->accept(*h.endpoint);
          if (!a) return std::move(a).take_failure();
          return kvc::bootstrap_server::session{
              std::move(a->first), std::make_shared<kvc::verbs_qp>(std::move(a->second))};
        });
    if (!s) {
      std::fprintf(stderr, "bootstrap_server::start: %s\n", s.message().c_str());
      std::abort();
    }
    servers[n] = std::move(*s);
    ports[n] = servers[n]->port();
  }
  // Node n restarts: its server stops (its queue pairs go with it) and serves a fresh region of
  // the same size on the same port, formatted for the index when `index_block_bytes` is set.
  // Returns the new region's creation time, another than the old one's.
  std::uint64_t restart(kvc::node_id n, std::uint64_t index_block_bytes = 0,
                        std::uint64_t clients = 16) {
    servers[n]->stop();
    servers[n].reset();
    const std::uint64_t before = regions[n]->header().created_unix_ms;
    auto dev = kvc::verbs_device::open({});
    if (!dev) std::abort();
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // another creation time
      auto r = kvc::verbs_region::create(*dev, region_bytes, n);
      if (!r) std::abort();
      if (r->header().created_unix_ms == before) continue;
      if (index_block_bytes > 0 && !kvc::format_index(r->header(), index_block_bytes, clients)) {
        std::abort();
      }
      regions[n] = std::make_unique<kvc::verbs_region>(std::move(*r));
      break;
    }
    start_server(n, ports[n]);
    return regions[n]->header().created_unix_ms;
  }
  ~verbs_nodes() {
    for (auto& s : servers) {
      if (s) s->stop();  // QPs go before their regions
    }
  }
  kvc::verbs_transport attach() const {
    kvc::verbs_config c;
    c.secret = secret;
    c.lanes = 2;
    std::vector<kvc::verbs_node_address> addrs;
    for (kvc::node_id n = 0; n < 2; ++n) addrs.push_back({n, "127.0.0.1", ports[n]});
    auto t = kvc::verbs_transport::connect(c, addrs);
    if (!t) {
      std::fprintf(stderr, "verbs connect: %s\n", t.message().c_str());
      std::abort();
    }
    return std::move(*t);
  }
  std::vector<std::unique_ptr<kvc::verbs_region>> regions;
  std::vector<std::unique_ptr<kvc::verbs_fencing>> fencing;  // stopped after the servers
  std::vector<kvc::verbs_fencing*> fencers;                  // per node (null: not fencing)
  std::vector<std::unique_ptr<kvc::bootstrap_server>> servers;
  std::vector<std::uint16_t> ports;  // where each node is served (kept while it is stopped)
};

struct verbs_env : verbs_nodes {
  using transport = kvc::verbs_transport;
  verbs_env() : t(attach()) {}
  transport& client() { return t; }
  transport connect_client() const { return attach(); }
  transport t;
};

// The index's config in the fencing tests: short leases, and a recovery_delay of an hour so that
// only a fence can make a recovery early.
kvc::remote_index_config fencing_config() {
  kvc::remote_index_config cfg;
  cfg.nodes = {0, 1};
  cfg.lease = std::chrono::milliseconds(1000);
  cfg.heartbeat = std::chrono::milliseconds(50);
  cfg.reclaim_grace = std::chrono::milliseconds(50);
  cfg.recovery_delay = std::chrono::hours(1);
  cfg.scratch_bytes = std::size_t{1} << 20;
  return cfg;
}

// Both memory nodes' regions audited (nobody may change them meanwhile).
kvc_test::audit_report audit(const verbs_nodes& nodes) {
  std::vector<kvc_test::audited_region> regions;
  for (const auto& r : nodes.regions) regions.push_back({r->base(), &r->header()});
  return kvc_test::audit_index(regions);
}

}  // namespace

static_assert(kvc::Transport<kvc::verbs_transport>);

TEST_CASE("verbs: without the device asked for, the error says so and names it", "[verbs]") {
  kvc::verbs_device_config c;
  c.device = "kvc_no_such_device";
  c.port = 3;
  auto dev = kvc::verbs_device::open(c);
  REQUIRE_FALSE(dev);
  CHECK(dev.error() == kvc::errc::no_rdma_device);
  CHECK_THAT(dev.detail(), Catch::Contains("kvc_no_such_device") && Catch::Contains("port 3"));
  CHECK_THAT(dev.message(),
             Catch::Contains("no RDMA device found") || Catch::Contains("RDMA device not found"));
}

#define KVC_TRANSPORT_ENVS verbs_env
#define KVC_TRANSPORT_SUITE_TAG "[device]"
#include "../conformance/transport_suite.hpp"

TEST_CASE("verbs: a wrong secret is refused by the memory node", "[verbs][device]") {
  verbs_nodes nodes;
  kvc::verbs_config c;
  c.secret = "not the secret";
  const kvc::verbs_node_address a{0, "127.0.0.1", nodes.servers[0]->port()};
  auto t = kvc::verbs_transport::connect(c, {&a, 1});
  REQUIRE_FALSE(t);
  CHECK(t.error() == kvc::errc::unauthenticated);
  CHECK_THAT(t.detail(), Catch::Contains("refused"));
}

TEST_CASE("verbs: its batches in flight at once are its lanes", "[verbs][device]") {
  verbs_env env;  // two lanes
  CHECK(kvc::max_batches_in_flight(env.client()) == 2);
}

TEST_CASE("verbs: a bad remote key fails cleanly, and the connection recovers", "[verbs][device]") {
  verbs_env env;
  auto& t = env.client();
  std::uint64_t words[3] = {};
  auto reg = t.register_memory({reinterpret_cast<std::byte*>(words), sizeof words});
  REQUIRE(reg);
  t.corrupt_rkey_for_testing(0);
  // The node refuses the first FAA (a remote access error on an unsignalled work request); the
  // second, on the same connection, is flushed; node 1 is unaffected.
  auto b = t.new_batch();
  const auto refused = b.faa({0, 4096}, 1, reg->buffer().sub(0, 8));
  const auto flushed = b.faa({0, 4096}, 1, reg->buffer().sub(8, 8));
  const auto other = b.faa({1, 4096}, 1, reg->buffer().sub(16, 8));
  b.ring();
  const auto r = b.wait();
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::rdma_error);
  CHECK_THAT(r.detail(), Catch::Contains("operation 0"));
  CHECK(b.status(refused) == kvc::errc::rdma_error);
  CHECK(b.status(flushed) == kvc::errc::not_executed);
  CHECK(b.status(other) == kvc::errc{});
  // The broken QP is replaced by a fresh connection with the key the node gives: the refused
  // increments never happened.
  for (std::uint64_t i = 0; i < 4; ++i) {
    b.clear();
    b.faa({0, 4096}, 1, reg->buffer().sub(0, 8));
    b.ring();
    REQUIRE(b.wait());
    CHECK(words[0] == i);
  }
}

// The fault injector passes the index's identity requirement on: behind it, a batch tied to an
// identity the connection was not made under fails unposted (errc::fenced) as it does without
// it, and lands under the right one. (The shm transport takes requirements too, for the region;
// a transport whose batches take none gives its decorated batch none either.)
template <class Batch>
concept takes_identity = requires(Batch& b) {
  b.require_identity(0, 1);
};
static_assert(takes_identity<kvc::faulty<kvc::verbs_transport>::batch>);
static_assert(takes_identity<kvc::faulty<kvc::shm_transport>::batch>);
struct without_requirements : kvc::shm_transport {
  struct batch : kvc::shm_transport::batch {
    void require_identity() = delete;  // hides the one of shm batches
  };
  [[nodiscard]] batch new_batch() const noexcept { return {}; }
};
static_assert(!takes_identity<kvc::faulty<without_requirements>::batch>);

TEST_CASE("verbs: behind the fault injector a batch of a stale identity is fenced",
          "[verbs][device][fencing]") {
  verbs_nodes nodes;
  kvc::faulty<kvc::verbs_transport> t(nodes.attach(), kvc::fault_config{});
  alignas(8) std::array<std::byte, 8> mark;
  mark.fill(std::byte{0xEF});
  auto reg = t.register_memory(mark);
  REQUIRE(reg);
  std::byte* target = nodes.regions[0]->base() + 2048;  // in the region header's spare bytes
  REQUIRE(std::to_integer<int>(target[0]) == 0);
  auto b = t.new_batch();
  b.require_identity(0, t.identity() + 1);
  b.write(kvc::remote_ptr(0, 2048), reg->buffer());
  b.ring();
  auto refused = b.wait();
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == kvc::errc::fenced);
  CHECK(std::to_integer<int>(target[0]) == 0);
  b.clear();  // the requirement goes with the operations
  b.write(kvc::remote_ptr(0, 2048), reg->buffer());
  b.ring();
  REQUIRE(b.wait());
  CHECK(std::to_integer<int>(target[0]) == 0xEF);
  b.clear();
  mark.fill(std::byte{0x12});
  b.require_identity(0, t.identity());
  b.write(kvc::remote_ptr(0, 2048), reg->buffer());
  b.ring();
  REQUIRE(b.wait());
  CHECK(std::to_integer<int>(target[0]) == 0x12);
}

// A batch required to reach the region created at a given time (the one whose header its caller
// read) goes out only to that region: after the node restarted with another region of the same
// size, the transport reconnects to it, and the batch fails unposted (errc::format_mismatch)
// instead of writing at what were the old region's offsets; a batch requiring the new region
// lands, under any identity (0) as under the transport's. Through the fault injector, which passes
// the requirement on.
TEST_CASE("verbs: a batch required for a region does not reach the one that replaced it",
          "[verbs][device]") {
  verbs_nodes nodes;
  kvc::faulty<kvc::verbs_transport> t(nodes.attach(), kvc::fault_config{});
  alignas(8) std::array<std::byte, 8> mark;
  mark.fill(std::byte{0xAB});
  auto reg = t.register_memory(mark);
  REQUIRE(reg);
  const std::uint64_t old_region = nodes.regions[0]->header().created_unix_ms;
  auto b = t.new_batch();
  // Writes the mark at byte 2048 of node 0 (the region header's spare bytes), held as asked.
  const auto write_mark = [&](std::uint64_t identity, std::uint64_t region) {
    b.clear();
    b.require_identity(0, identity, region);
    b.write(kvc::remote_ptr(0, 2048), reg->buffer());
    b.ring();
    return b.wait();
  };
  const auto landed = [&] { return std::to_integer<int>(nodes.regions[0]->base()[2048]); };
  REQUIRE(write_mark(t.identity(), old_region));
  CHECK(landed() == 0xAB);

  // Node 0 restarts with a fresh region of the same size.
  nodes.servers[0]->stop();
  b.clear();
  b.read(kvc::remote_ptr(0, 0), reg->buffer());
  b.ring();
  REQUIRE_FALSE(b.wait());  // the lost connection
  const std::uint64_t new_region = nodes.restart(0);

  mark.fill(std::byte{0xCD});
  // A lane whose queue pair has not met the loss yet fails once more (unreachable); then it
  // reconnects, to the new region, and is refused there, under any identity (0) too.
  int refusals = 0;
  for (int tries = 0; tries < 10 && refusals < 3; ++tries) {
    auto refused = write_mark(refusals == 2 ? 0 : t.identity(), old_region);
    REQUIRE_FALSE(refused);
    CHECK(landed() == 0);
    if (refused.error() == kvc::errc::unreachable) continue;
    CHECK(refused.error() == kvc::errc::format_mismatch);
    CHECK_THAT(refused.detail(), Catch::Contains("serves another region"));
    ++refusals;
  }
  CHECK(refusals == 3);
  REQUIRE(write_mark(0, new_region));
  CHECK(landed() == 0xCD);
  mark.fill(std::byte{0xEE});
  REQUIRE(write_mark(t.identity(), new_region));
  CHECK(landed() == 0xEE);
}

// In the guest, scripts/rxe-vm runs kvc-memnode --transport verbs and sets KVC_MEMNODE_PORT and
// KVC_SECRET; this client then works against that separate process over rxe.
TEST_CASE("verbs: a client of a kvc-memnode process", "[verbs][memnode]") {
  const char* port = std::getenv("KVC_MEMNODE_PORT");
  const char* key = std::getenv("KVC_SECRET");
  if (port == nullptr || key == nullptr) {
    WARN("KVC_MEMNODE_PORT or KVC_SECRET not set: no kvc-memnode to connect to");
    return;
  }
  kvc::verbs_config c;
  c.secret = key;
  const kvc::verbs_node_address a{0, "127.0.0.1", static_cast<std::uint16_t>(std::atoi(port))};
  auto t = kvc::verbs_transport::connect(c, {&a, 1});
  REQUIRE(t);
  std::uint64_t words[2] = {0, 0};
  auto reg = t->register_memory({reinterpret_cast<std::byte*>(words), sizeof words});
  REQUIRE(reg);
  // The words' values now (the node may have served earlier clients).
  auto first = t->new_batch();
  first.read({0, 8192}, reg->buffer());
  first.ring();
  REQUIRE(first.wait());
  const std::uint64_t base[2] = {words[0], words[1]};
  for (std::uint64_t i = 0; i < 1000; ++i) {
    auto b = t->new_batch();
    b.faa({0, 8192}, 1, reg->buffer().sub(0, 8));
    b.cas({0, 8200}, base[1] + i, base[1] + i + 1, reg->buffer().sub(8, 8));
    b.ring();
    const auto r = b.wait();
    INFO("round " << i << ": " << (r ? std::string("ok") : r.message()));
    REQUIRE(r);
    CHECK(words[0] == base[0] + i);
    CHECK(words[1] == base[1] + i);
  }
}

// The index protocol over verbs: threads, each its own transport and client, insert shared and
// private chains, look them up, evict, and recover; a smaller run than the shm stress tests.
TEST_CASE("verbs: the prefix index over two memory nodes, three clients",
          "[verbs][device][index]") {
  verbs_nodes nodes(256);
  kvc::remote_index_config cfg;
  cfg.nodes = {0, 1};
  cfg.lease = std::chrono::milliseconds(4000);
  cfg.heartbeat = std::chrono::milliseconds(200);
  cfg.reclaim_grace = std::chrono::milliseconds(50);
  cfg.scratch_bytes = std::size_t{1} << 20;
  std::mt19937_64 seed_rng(31);
  std::vector<std::vector<kvc::hash64>> shared(6);
  for (auto& c : shared) {
    c.resize(300);  // two super-segments: both nodes
    for (auto& h : c) h.value = seed_rng();
  }
  std::atomic<int> errors{0};
  std::atomic<int> wrong{0};
  std::atomic<std::size_t> evicted{0};
  // Another client's eviction may unpublish a chain's leaves between its insert and the lookup
  // that checks it; a chain counts as lost only when no eviction ran in that window.
  std::atomic<std::uint64_t> evictions_begun{0};
  std::atomic<std::uint64_t> evictions_ended{0};
  std::atomic<int> unchecked{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto t = nodes.attach();
      auto mine = cfg;
      mine.seed = static_cast<std::uint64_t>(i + 1);
      auto ix = kvc::remote_index<kvc::verbs_transport>::open(t, mine);
      if (!ix) {
        std::fprintf(stderr, "open: %s\n", ix.message().c_str());
        ++errors;
        return;
      }
      std::mt19937_64 rng(static_cast<std::uint64_t>(i) * 77 + 5);
      std::vector<kvc::block_info> info(300, kvc::block_info{{}, 256, 1, 0, 16});
      for (int r = 0; r < 40; ++r) {
        std::vector<kvc::hash64> chain = shared[rng() % shared.size()];
        chain.resize(100 + rng() % 200);
        auto m = (*ix)->lookup(chain);
        if (!m) {
          ++errors;
          continue;
        }
        const std::uint64_t ended_before = evictions_ended.load();
        const std::uint64_t begun_before = evictions_begun.load();
        auto ins = (*ix)->insert(chain, m->length, std::span(info).first(chain.size() - m->length));
        if (!ins) {
          std::fprintf(stderr, "insert: %s\n", ins.message().c_str());
          ++errors;
          continue;
        }
        if (ins->stop == kvc::insert_stop::none) {
          auto again = (*ix)->lookup(chain, chain.size());
          const bool quiet = begun_before == ended_before && evictions_begun.load() == begun_before;
          if (!again)
            ++errors;
          else if (again->length < chain.size())
            ++(quiet ? wrong : unchecked);
        }
        if (r % 10 == 9) {
          ++evictions_begun;
          auto e = (*ix)->evict(static_cast<kvc::node_id>(rng() % 2), 4);
          ++evictions_ended;
          if (!e)
            ++errors;
          else
            evicted += *e;
        }
        if (!(*ix)->maintain()) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  INFO("evicted " << evicted.load() << ", chains shortened by a concurrent eviction "
                  << unchecked.load());
  CHECK(errors == 0);
  CHECK(wrong == 0);
  // A last client reclaims every tombstone; what stays published is still found.
  auto t = nodes.attach();
  cfg.seed = 99;
  auto last = kvc::remote_index<kvc::verbs_transport>::open(t, cfg);
  REQUIRE(last);
  REQUIRE((*last)->recover_everything());
  for (const auto& c : shared) {
    auto m = (*last)->lookup(c);
    REQUIRE(m);
    std::vector<kvc::index_layout::record> recs(m->length);
    auto ok = (*last)->read_blocks(m->blocks, {}, recs);
    REQUIRE(ok);
    for (std::size_t k = 0; k < *ok; ++k) CHECK(recs[k].hash_lo == c[k].value);
  }
}

// A client declared dead while it was only stalled (it makes no call for longer than a lease:
// as if stopped between two operations) is cut off by both memory nodes: others recover its
// entries at once, not after recovery_delay; the WRITE it then sends does not land; its
// transport, refused as fenced, takes a new identity, and its index registers anew.
TEST_CASE("verbs: memory nodes fence a client declared dead", "[verbs][device][index][fencing]") {
  verbs_nodes nodes(256, true);
  auto cfg = fencing_config();
  using verbs_index = kvc::remote_index<kvc::verbs_transport>;
  auto ts = nodes.attach();
  cfg.seed = 1;
  auto stalled = verbs_index::open(ts, cfg);
  REQUIRE(stalled);
  std::mt19937_64 rng(5);
  std::vector<kvc::hash64> chain(300);  // two super-segments: both nodes
  for (auto& h : chain) h.value = rng();
  std::vector<kvc::block_info> info(300, kvc::block_info{{}, 256, 1, 0, 16});
  auto ins = (*stalled)->insert(chain, 0, info);
  REQUIRE(ins);
  REQUIRE(ins->published == 300);
  const std::uint64_t old_identity = ts.identity();
  const auto last_call = std::chrono::steady_clock::now();  // the stalled client's last heartbeat

  auto to = nodes.attach();
  cfg.seed = 2;
  auto other = verbs_index::open(to, cfg);
  REQUIRE(other);
  const auto started = std::chrono::steady_clock::now();
  // Both entries taken for recovery on their fence words, and the chunk it was filling (on the
  // node with 44 of its blocks; the other's four are full and were given back) recovered.
  auto recovered = [&] {
    return (*other)->stats().fenced_recoveries >= 2 && (*other)->stats().recovered_chunks >= 1;
  };
  while (!recovered() && std::chrono::steady_clock::now() - started < 10 * cfg.lease) {
    REQUIRE((*other)->maintain());
    std::this_thread::sleep_for(cfg.heartbeat);
  }
  REQUIRE(recovered());  // both nodes fenced it, recovered within seconds, not an hour
  std::printf(
      "fencing: the stalled client's entries recovered %lld ms after its last call "
      "(lease %lld ms)\n",
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now() - last_call)
                                 .count()),
      static_cast<long long>(cfg.lease.count()));
  CHECK(nodes.fencing[0]->stats().fenced == 1);
  CHECK(nodes.fencing[1]->stats().fenced == 1);
  CHECK(nodes.fencing[0]->stats().queue_pairs >= 1);

  // The stalled client resumes with a WRITE: it does not land (its queue pairs are in the error
  // state, then its identity is refused), until its transport has a new identity.
  std::byte* target = nodes.regions[0]->base() + 2048;  // in the region header's spare bytes
  REQUIRE(std::to_integer<int>(target[0]) == 0);
  alignas(8) std::array<std::byte, 8> mark;
  mark.fill(std::byte{0xAB});
  auto reg = ts.register_memory(mark);
  REQUIRE(reg);
  bool fenced_seen = false;
  bool landed = false;
  for (int attempt = 0; attempt < 8 && !landed; ++attempt) {
    auto b = ts.new_batch();
    b.write(kvc::remote_ptr(0, 2048), reg->buffer());
    b.ring();
    auto ok = b.wait();
    if (ok) {
      landed = true;
      CHECK(fenced_seen);  // only after the refusal
      CHECK(ts.identity() != old_identity);
    } else {
      fenced_seen = fenced_seen || ok.error() == kvc::errc::fenced;
      CHECK(std::to_integer<int>(target[0]) == 0);
    }
  }
  CHECK(fenced_seen);
  REQUIRE(landed);
  CHECK(std::to_integer<int>(target[0]) == 0xAB);
  CHECK(nodes.fencing[0]->stats().refused >= 1);
  // What a client registered under the old identity sends does not go out under the new one:
  // it fails unposted, and the index (which ties every batch to its registration) registers anew.
  mark.fill(std::byte{0xCD});
  {
    auto b = ts.new_batch();
    b.require_identity(0, old_identity);
    b.write(kvc::remote_ptr(0, 2048), reg->buffer());
    b.ring();
    auto ok = b.wait();
    REQUIRE_FALSE(ok);
    CHECK(ok.error() == kvc::errc::fenced);
    CHECK(std::to_integer<int>(target[0]) == 0xAB);
  }
  {
    auto b = ts.new_batch();
    b.require_identity(0, ts.identity());
    b.write(kvc::remote_ptr(0, 2048), reg->buffer());
    b.ring();
    CHECK(b.wait());
    CHECK(std::to_integer<int>(target[0]) == 0xCD);
  }

  // Its index registers anew and goes on; what it published is still there.
  std::vector<kvc::hash64> more(40);
  for (auto& h : more) h.value = rng();
  auto again = (*stalled)->insert(more, 0, std::span(info).first(40));
  if (!again) again = (*stalled)->insert(more, 0, std::span(info).first(40));
  REQUIRE(again);
  CHECK(again->published == 40);
  CHECK((*stalled)->stats().reregistrations >= 1);
  auto m = (*other)->lookup(chain);
  REQUIRE(m);
  CHECK(m->length == 300);
}

TEST_CASE("verbs: a fencing node forgets the queue pairs of clients that left",
          "[verbs][device][fencing]") {
  verbs_nodes nodes(4096, true);
  // Each transport is a client identity of its own; it leaves when destroyed, and its sessions
  // end (their queue pairs with them) once the node sees the connections close.
  for (int i = 0; i < 80; ++i) (void)nodes.attach();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  (void)nodes.attach();  // one more admission: a sweep, if one is due
  // Without the sweep every identity stayed: 81.
  CHECK(nodes.fencing[0]->tracked_identities() <= 64);
  CHECK(nodes.fencing[1]->tracked_identities() <= 64);
}

// The window fencing closes: a client stalled after its lease check and before the doorbell of
// the round that WRITEs its records and reserves slots (the index's "insert.B"), for longer than
// a lease. Meanwhile another client declares it dead and, on the fence words, recovers what it
// held. When the stalled round finally rings, nothing of it lands (its queue pairs are cut): the
// audit of both regions finds no reservation or record of the dead registration.
TEST_CASE("verbs: a client stalled inside an insert lands nothing once fenced",
          "[verbs][device][index][fencing]") {
  verbs_nodes nodes(256, true);
  auto cfg = fencing_config();
  using verbs_index = kvc::remote_index<kvc::verbs_transport>;
  auto ts = nodes.attach();
  cfg.seed = 11;
  auto stalled = verbs_index::open(ts, cfg);
  REQUIRE(stalled);
  auto to = nodes.attach();
  cfg.seed = 12;
  auto other = verbs_index::open(to, cfg);
  REQUIRE(other);
  std::mt19937_64 rng(13);
  std::vector<kvc::hash64> chain(300);
  for (auto& h : chain) h.value = rng();
  std::vector<kvc::block_info> info(300, kvc::block_info{{}, 256, 1, 0, 16});
  bool armed = true;
  bool fenced_meanwhile = false;
  (*stalled)->on_step([&](const char* step) {
    if (!armed || std::string_view(step) != "insert.B") return;
    armed = false;
    const auto start = std::chrono::steady_clock::now();
    while ((*other)->stats().fenced_recoveries < 2 &&
           std::chrono::steady_clock::now() - start < 10 * cfg.lease) {
      if (!(*other)->maintain()) break;
      std::this_thread::sleep_for(cfg.heartbeat);
    }
    fenced_meanwhile = (*other)->stats().fenced_recoveries >= 2;  // on both nodes
  });
  auto ins = (*stalled)->insert(chain, 0, info);
  REQUIRE(fenced_meanwhile);
  INFO("the stalled insert: " << (ins ? "published " + std::to_string(ins->published)
                                      : "failed: " + ins.message()));
  (*stalled)->on_step({});
  // Both clients finish what they do (the stalled one registered anew, or does now), then the
  // regions are audited with nobody changing them.
  for (int i = 0; i < 3; ++i) {
    (void)(*stalled)->maintain();
    REQUIRE((*other)->maintain());
    std::this_thread::sleep_for(cfg.heartbeat);
  }
  const auto rep = audit(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.reserved == 0);
  CHECK(nodes.fencing[0]->stats().fenced >= 1);
  CHECK(nodes.fencing[1]->stats().fenced >= 1);
}

// Index clients sharing one transport (as a shared_index pool does): when one of them is
// declared dead and fenced, the node cuts the transport's identity, so the live one's requests
// fail too. It registers anew under the transport's fresh identity and goes on; nothing it
// sent under the old registration lands afterwards (the audit is clean).
TEST_CASE("verbs: a client sharing the transport of a fenced one registers anew and goes on",
          "[verbs][device][index][fencing]") {
  verbs_nodes nodes(256, true);
  auto cfg = fencing_config();
  using verbs_index = kvc::remote_index<kvc::verbs_transport>;
  auto ts = nodes.attach();
  cfg.seed = 21;
  auto stalled = verbs_index::open(ts, cfg);
  cfg.seed = 22;
  auto sibling = verbs_index::open(ts, cfg);
  auto to = nodes.attach();
  cfg.seed = 23;
  auto other = verbs_index::open(to, cfg);
  REQUIRE(stalled);
  REQUIRE(sibling);
  REQUIRE(other);
  std::mt19937_64 rng(24);
  auto fresh = [&](std::size_t n) {
    std::vector<kvc::hash64> c(n);
    for (auto& h : c) h.value = rng();
    return c;
  };
  std::vector<kvc::block_info> info(300, kvc::block_info{{}, 256, 1, 0, 16});
  const auto chain = fresh(300);
  REQUIRE((*stalled)->insert(chain, 0, info)->published == 300);
  const std::uint64_t old_identity = ts.identity();

  // `stalled` makes no call; `sibling` keeps looking up and heartbeating (its calls fail once
  // the nodes cut the shared identity), `other` declares `stalled` dead and recovers it.
  const auto start = std::chrono::steady_clock::now();
  int sibling_failures = 0;
  while ((*other)->stats().fenced_recoveries < 2 &&
         std::chrono::steady_clock::now() - start < 15 * cfg.lease) {
    REQUIRE((*other)->maintain());
    if (!(*sibling)->lookup(chain) || !(*sibling)->maintain()) ++sibling_failures;
    std::this_thread::sleep_for(cfg.heartbeat);
  }
  REQUIRE((*other)->stats().fenced_recoveries >= 2);
  // The sibling goes on: its next calls register it anew under the transport's new identity.
  bool inserted = false;
  const auto more = fresh(40);
  for (int attempt = 0; attempt < 20 && !inserted; ++attempt) {
    auto ins = (*sibling)->insert(more, 0, std::span(info).first(40));
    if (ins && ins->published == 40) {
      inserted = true;
    } else {
      ++sibling_failures;
      std::this_thread::sleep_for(cfg.heartbeat);
    }
  }
  INFO("failed sibling calls " << sibling_failures);
  REQUIRE(inserted);
  CHECK(ts.identity() != old_identity);
  CHECK((*sibling)->stats().reregistrations >= 1);
  auto m = (*other)->lookup(more);
  REQUIRE(m);
  CHECK(m->length == 40);
  // Everything of the cut identity settles: `other` declares the sibling's abandoned entries
  // dead (a lease after their last heartbeat) and recovers them once their nodes fenced them
  // (the sibling's upkeep may have claimed its slab reserve under them).
  auto rep = audit(nodes);
  const auto settle = std::chrono::steady_clock::now();
  while (!rep.clean() && std::chrono::steady_clock::now() - settle < 10 * cfg.lease) {
    (void)(*sibling)->maintain();
    REQUIRE((*other)->maintain());
    std::this_thread::sleep_for(cfg.heartbeat);
    rep = audit(nodes);
  }
  INFO(rep.summary());
  CHECK(rep.clean());
}

TEST_CASE("verbs: a memory node down at the start joins once it is up", "[verbs][device][index]") {
  verbs_nodes nodes(256);
  nodes.servers[1]->stop();  // node 1 not started yet: nothing listens on its port
  nodes.servers[1].reset();
  // Neither node up: the transport cannot start.
  {
    nodes.servers[0]->stop();
    nodes.servers[0].reset();
    kvc::verbs_config c;
    c.secret = secret;
    std::vector<kvc::verbs_node_address> addrs{{0, "127.0.0.1", nodes.ports[0]},
                                               {1, "127.0.0.1", nodes.ports[1]}};
    auto none = kvc::verbs_transport::connect(c, addrs);
    REQUIRE_FALSE(none);
    CHECK(none.error() == kvc::errc::unreachable);
    CHECK_THAT(none.detail(), Catch::Contains("no memory node could be reached"));
    nodes.start_server(0, nodes.ports[0]);
  }
  auto t = nodes.attach();  // node 0 only, so far
  CHECK(t.region_bytes(0) == verbs_nodes::region_bytes);
  CHECK(t.region_bytes(1) == 0);
  kvc::remote_index_config cfg;
  cfg.nodes = {0, 1};
  cfg.lease = std::chrono::milliseconds(2000);
  cfg.heartbeat = std::chrono::milliseconds(100);
  cfg.scratch_bytes = std::size_t{1} << 20;
  auto opened = kvc::remote_index<kvc::verbs_transport>::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  CHECK(ix.reached(0));
  CHECK_FALSE(ix.reached(1));
  std::mt19937_64 rng(97);
  const auto on0 = kvc_test::chain_on(ix, rng, 8, {0});
  const auto on1 = kvc_test::chain_on(ix, rng, 8, {1});
  REQUIRE(ix.insert(on0, 0, kvc_test::no_data(8))->length == 8);
  auto missing = ix.lookup(on1);
  REQUIRE_FALSE(missing);
  CHECK(missing.error() == kvc::errc::unreachable);
  CHECK_THAT(missing.detail(), Catch::Contains("memory node 1 is out of reach"));

  // Node 1 starts on its port: a later call connects, reads its header and registers there.
  nodes.start_server(1, nodes.ports[1]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (ix.in_doubt() && std::chrono::steady_clock::now() < deadline) {
    (void)ix.maintain();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(ix.reached(1));
  CHECK(t.region_bytes(1) == verbs_nodes::region_bytes);
  auto published = ix.insert(on1, 0, kvc_test::no_data(8));
  REQUIRE(published);
  CHECK(published->length == 8);
  auto found = ix.lookup(on1);
  REQUIRE(found);
  CHECK(found->length == 8);
  CHECK(ix.lookup(on0)->length == 8);
  REQUIRE(ix.close());
  const auto rep = audit(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.valid == 16);
}

// A memory node restarts with a new region of the same size, formatted for fewer clients (every
// table after the client entries moves): the transport reconnects to it (new address and key) and
// the index reads its header again before registering there, so it publishes where the new
// layout says. (Until 2026-12-07 the index kept the old layout and wrote inside the new region's
// other tables; the transport took the new region for the old one since its size was the same.)
TEST_CASE("verbs: a memory node that restarts with a new region is read anew",
          "[verbs][device][index]") {
  verbs_nodes nodes(256);
  auto t = nodes.attach();
  kvc::remote_index_config cfg;
  cfg.nodes = {0, 1};
  cfg.lease = std::chrono::milliseconds(2000);
  cfg.heartbeat = std::chrono::milliseconds(100);
  cfg.scratch_bytes = std::size_t{1} << 20;
  auto opened = kvc::remote_index<kvc::verbs_transport>::open(t, cfg);
  REQUIRE(opened);
  auto& ix = **opened;
  std::mt19937_64 rng(101);
  const auto before = kvc_test::chain_on(ix, rng, 8, {1});
  const auto after = kvc_test::chain_on(ix, rng, 8, {1});
  REQUIRE(ix.insert(before, 0, kvc_test::no_data(8))->length == 8);

  // Node 1 stops (its queue pairs go with it) and comes back on its port with a fresh region.
  nodes.servers[1]->stop();
  REQUIRE_FALSE(ix.lookup(before));  // a call meets the lost connection
  nodes.restart(1, 256, 8);

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while ((ix.in_doubt() || ix.stats().regions_replaced == 0) &&
         std::chrono::steady_clock::now() < deadline) {
    (void)ix.maintain();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_FALSE(ix.in_doubt());
  CHECK(ix.stats().regions_replaced == 1);
  auto gone = ix.lookup(before);
  REQUIRE(gone);
  CHECK(gone->length == 0);
  auto published = ix.insert(after, 0, kvc_test::no_data(8));
  REQUIRE(published);
  CHECK(published->length == 8);
  // Another client, connected afterwards, finds it where the new layout puts it.
  auto t2 = nodes.attach();
  auto other = kvc::remote_index<kvc::verbs_transport>::open(t2, cfg);
  REQUIRE(other);
  auto found = (*other)->lookup(after);
  REQUIRE(found);
  CHECK(found->length == 8);
  REQUIRE(ix.close());
  REQUIRE((*other)->close());
  const auto rep = audit(nodes);
  INFO(rep.summary());
  CHECK(rep.clean());
  CHECK(rep.valid == 8);
}

TEST_CASE("verbs: a node that stops answering times a batch out, for poll() as for wait()",
          "[verbs][device]") {
  verbs_nodes nodes;
  auto t = nodes.attach();  // two lanes, each connected to both nodes
  alignas(8) std::array<std::uint64_t, 4> words{};
  auto reg = t.register_memory(std::as_writable_bytes(std::span(words)));
  REQUIRE(reg);
  // Node 0 goes away: its queue pairs are destroyed, so nothing answers the lanes' requests (the
  // NIC retries for about half a second before it gives up; the timeout comes first).
  nodes.servers[0]->stop();
  nodes.servers[0].reset();
  t.set_timeout_for_testing(std::chrono::milliseconds(150));
  // Two batches in flight hold both lanes: one waited for, one only polled.
  auto waited = t.new_batch();
  waited.read({0, 0}, reg->buffer().sub(0, 8));
  waited.read({1, 0}, reg->buffer().sub(8, 8));
  auto polled = t.new_batch();
  polled.read({0, 64}, reg->buffer().sub(16, 8));
  waited.ring();
  polled.ring();
  const auto r = waited.wait();
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::timed_out);
  CHECK_THAT(r.detail(), Catch::Contains("outcome unknown"));
  CHECK(waited.status(0) == kvc::errc::timed_out);
  CHECK(waited.status(1) == kvc::errc{});  // node 1 answered
  while (!polled.poll()) {
  }
  CHECK(polled.status(0) == kvc::errc::timed_out);
  // Node 0 back on its port: the next batch connects anew and is answered.
  nodes.start_server(0, nodes.ports[0]);
  t.set_timeout_for_testing(std::chrono::milliseconds(5000));
  words[3] = 0;
  auto again = t.new_batch();
  again.faa({0, 2048}, 1, reg->buffer().sub(24, 8));
  again.ring();
  REQUIRE(again.wait());
}
