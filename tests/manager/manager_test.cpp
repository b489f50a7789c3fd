// The cache manager: config errors, the engine's request cycle over every local tier, reuse of
// blocks through memory nodes (threads and separate processes), load deadlines, block events,
// and many engine threads at once.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <kvc/manager.hpp>
#include <kvc/transport/faulty.hpp>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../index/index_fixture.hpp"
#include "../support/block_bytes.hpp"
#include "../support/fork_child.hpp"
#include "../support/unique_name.hpp"

namespace {

using manager = kvc::cache_manager<kvc::shm_transport>;
using faulty_manager = kvc::cache_manager<kvc::faulty<kvc::shm_transport>>;
using kvc::token_id;
constexpr std::size_t bb = 4096;  // KV bytes per block
constexpr std::uint32_t bs = 4;   // tokens per block

template <class Manager = manager>
typename Manager::config small_config(std::size_t device, std::size_t host) {
  typename Manager::config cfg;
  cfg.block_size = bs;
  cfg.model_salt = "manager-test";
  cfg.block_bytes = bb;
  cfg.device.blocks = device;
  cfg.host.blocks = host;
  cfg.host.huge_pages = false;
  return cfg;
}

std::vector<token_id> prompt(std::uint32_t id, std::size_t tokens,
                             std::vector<token_id> base = {}) {
  for (std::size_t i = 0; i < tokens; ++i) base.push_back(id * 100000 + static_cast<token_id>(i));
  return base;
}

using kvc_test::fill;
using kvc_test::holds;

// One request as an engine runs it: match, load, compute the rest, commit, release. Returns the
// match's per-tier breakdown and checks every block the engine read. No Catch2 assertions: it
// also runs in forked processes, which report through their exit status.
struct request_outcome {
  std::string failed;  // the call that failed, if any
  kvc::tier_blocks hits;
  std::size_t usable = 0, computed = 0, bad_bytes = 0;
};
request_outcome failed_at(std::string why) {
  request_outcome out;
  out.failed = std::move(why);
  return out;
}
template <class Manager>
request_outcome serve(Manager& mgr, const std::vector<token_id>& tokens,
                      const kvc::extra_keys& keys = {}) {
  request_outcome out;
  auto m = mgr.match(tokens, keys);
  if (!m) return failed_at("match: " + m.message());
  out.hits = m->by_tier();
  auto l = mgr.load(*m);
  if (!l) return failed_at("load: " + l.message());
  out.usable = l->wait();
  const auto ids = l->ids();
  for (std::size_t i = 0; i < out.usable; ++i) {
    if (!holds(mgr.stand_in_data(ids[i]), m->chain()[i])) ++out.bad_bytes;
  }
  out.computed = m->blocks() - out.usable;
  std::vector<std::uint32_t> fresh;
  if (out.computed > 0) {
    auto got = mgr.allocate(out.computed);
    if (!got) return failed_at("allocate: " + got.message());
    fresh = *got;
    for (std::size_t i = 0; i < fresh.size(); ++i) {
      fill(mgr.stand_in_data(fresh[i]), m->chain()[out.usable + i]);
    }
    if (auto c = mgr.commit(*m, out.usable, fresh); !c) return failed_at("commit: " + c.message());
  }
  if (auto r = mgr.release(*m, &*l, fresh); !r) return failed_at("release: " + r.message());
  return out;
}
template <class Manager>
request_outcome served(Manager& mgr, const std::vector<token_id>& tokens,
                       const kvc::extra_keys& keys = {}) {
  auto out = serve(mgr, tokens, keys);
  INFO(out.failed);
  REQUIRE(out.failed.empty());
  return out;
}

// A manager of 32 device and host blocks over the memory nodes through t, publishing as
// `place` says.
std::unique_ptr<manager> remote_manager(kvc_test::index_nodes& nodes, kvc::shm_transport& t,
                                        std::uint64_t seed,
                                        kvc::placement place = {kvc::placement_mode::write_through,
                                                                2}) {
  auto cfg = small_config(32, 32);
  cfg.remote.transport = &t;
  cfg.remote.index.index = nodes.config(seed);
  cfg.remote.place = place;
  auto m = manager::create(cfg);
  REQUIRE(m);
  return std::move(*m);
}

// How many blocks of the prompt a match finds in the memory nodes past the local prefix (it
// loads nothing).
template <class Manager>
std::size_t remote_part(Manager& mgr, const std::vector<token_id>& tokens) {
  auto m = mgr.match(tokens);
  REQUIRE(m);
  const std::size_t n = m->by_tier().remote;
  REQUIRE(mgr.release(*m, nullptr, {}));
  return n;
}

struct temp_file {
  temp_file() {
    path = std::filesystem::temp_directory_path() / kvc_test::unique_name("kvc-manager-test");
  }
  ~temp_file() { std::filesystem::remove(path); }
  std::filesystem::path path;
};

}  // namespace

TEST_CASE("manager: create refuses an invalid config with a clear error", "[manager]") {
  const auto refused = [](manager::config cfg, const std::string& names) {
    auto m = manager::create(std::move(cfg));
    REQUIRE_FALSE(m);
    CHECK(m.error() == kvc::errc::invalid_config);
    INFO(m.message());
    CHECK(m.message().find(names) != std::string::npos);
  };
  auto cfg = small_config(8, 8);
  cfg.block_bytes = 0;
  refused(cfg, "block_bytes");
  cfg = small_config(0, 8);
  refused(cfg, "device.blocks");
  cfg = small_config(8, 0);
  refused(cfg, "host.blocks");
  cfg = small_config(8, 8);
  cfg.ssd.path = "/tmp/unused";
  refused(cfg, "ssd.blocks");
  cfg = small_config(8, 8);
  cfg.movers = 0;
  refused(cfg, "movers");
  cfg = small_config(std::size_t{1} << 30, 8);  // the device's host-memory stand-in: 2^70 bytes
  cfg.block_bytes = std::size_t{1} << 40;
  refused(cfg, "device.blocks x block_bytes");
  cfg = small_config(8, 8);
  cfg.block_size = 3;
  auto odd = manager::create(cfg);
  REQUIRE_FALSE(odd);
  CHECK(odd.error() == kvc::errc::invalid_config);
  cfg = small_config(8, 8);
  cfg.ssd.place.mode = kvc::placement_mode::write_through;
  cfg.ssd.path = "/tmp/unused";
  cfg.ssd.blocks = 8;
  refused(cfg, "write-through");
  cfg = small_config(8, 8);
  cfg.ssd.path = "/tmp/unused";
  cfg.ssd.blocks = 8;
  cfg.ssd.persist = true;
  cfg.model_salt.clear();  // nothing ties the file to a model
  refused(cfg, "ssd.persist needs a model_salt");
  cfg = small_config(8, 8);
  cfg.host.policy.s3fifo.small_ratio = 2.0;
  cfg.host.policy.kind = kvc::policy_kind::s3fifo;
  refused(cfg, "cache manager");
  kvc_test::index_nodes nodes(1, std::uint64_t{8} << 20, bb);
  auto t = nodes.attach();
  cfg = small_config(8, 8);
  cfg.remote.transport = t.get();
  refused(cfg, "nodes");
  cfg.remote.index.index = nodes.config(1);
  cfg.remote.place = {kvc::placement_mode::selective, 0};
  refused(cfg, "remote.place: selective placement needs after_uses > 0");
  // An unusable SSD file is the tier's error, passed on.
  cfg = small_config(8, 8);
  cfg.ssd.path = "/nonexistent-dir/kvc-slots";
  cfg.ssd.blocks = 8;
  auto bad_ssd = manager::create(cfg);
  REQUIRE_FALSE(bad_ssd);
  CHECK(bad_ssd.error() == kvc::errc::io_error);
}

TEST_CASE("manager: a persistent SSD serves its blocks after a restart, under its model only",
          "[manager]") {
  temp_file file;
  auto cfg = small_config(16, 16);
  cfg.model_salt = "model-a@step-1";
  cfg.ssd.path = file.path.string();
  cfg.ssd.blocks = 64;
  cfg.ssd.persist = true;
  const auto tokens = prompt(3, 6 * bs);
  {
    auto mgr = manager::create(cfg);
    REQUIRE(mgr);
    CHECK(served(**mgr, tokens).computed == 6);
    REQUIRE(*(*mgr)->evict(kvc::tier_kind::device, 16) == 6);  // write-back: to the host
    REQUIRE(*(*mgr)->evict(kvc::tier_kind::host, 16) == 6);    // and on to the SSD
  }
  {
    auto again = manager::create(cfg);
    REQUIRE(again);
    auto out = served(**again, tokens);
    CHECK(out.hits.ssd == 6);
    CHECK(out.usable == 6);
    CHECK(out.bad_bytes == 0);
  }
  // Another checkpoint with the same keys would take these bytes for its own: refused.
  cfg.model_salt = "model-a@step-2";
  auto other = manager::create(cfg);
  REQUIRE_FALSE(other);
  CHECK(other.error() == kvc::errc::format_mismatch);
  CHECK(other.message().find("model-a@step-1") != std::string::npos);
}

TEST_CASE("manager: a request cycle caches blocks, and later requests hit every local tier",
          "[manager]") {
  temp_file file;
  auto cfg = small_config(16, 16);
  cfg.ssd.path = file.path.string();
  cfg.ssd.blocks = 64;
  auto mgr = manager::create(cfg);
  REQUIRE(mgr);
  const auto tokens = prompt(1, 10 * bs + 3);  // 10 full blocks and 3 tokens
  auto first = served(**mgr, tokens);
  CHECK(first.hits.total() == 0);
  CHECK(first.computed == 10);

  auto again = served(**mgr, tokens);
  CHECK(again.hits.device == 10);
  CHECK(again.computed == 0);
  CHECK(again.bad_bytes == 0);

  // Pushed out of the device (write-back: to the host), then out of the host (to the SSD).
  REQUIRE(*(*mgr)->evict(kvc::tier_kind::device, 16) == 10);
  auto from_host = served(**mgr, tokens);
  CHECK(from_host.hits.host == 10);
  CHECK(from_host.usable == 10);
  CHECK(from_host.bad_bytes == 0);
  REQUIRE(*(*mgr)->evict(kvc::tier_kind::device, 16) == 10);
  REQUIRE(*(*mgr)->evict(kvc::tier_kind::host, 16) == 10);
  auto from_ssd = served(**mgr, tokens);
  CHECK(from_ssd.hits.ssd == 10);
  CHECK(from_ssd.usable == 10);
  CHECK(from_ssd.bad_bytes == 0);

  // A longer prompt sharing the prefix computes only its new blocks.
  auto longer = served(**mgr, prompt(1, 10 * bs));  // the same 10 blocks, no tail
  CHECK(longer.computed == 0);
  auto extended = prompt(1, 10 * bs);
  for (token_id t = 0; t < 2 * bs; ++t) extended.push_back(900000 + t);
  auto ext = served(**mgr, extended);
  CHECK(ext.usable == 10);
  CHECK(ext.computed == 2);

  // LoRA and tenant keys separate caches.
  kvc::extra_keys lora;
  lora.lora_id = 7;
  auto other = served(**mgr, tokens, lora);
  CHECK(other.hits.total() == 0);

  const auto st = (*mgr)->stats();
  CHECK(st.matches == 7);
  CHECK(st.pool.tiers[0].hits >= 10);
  CHECK(st.pool.tiers[1].hits == 10);
  CHECK(st.pool.tiers[2].hits == 10);
  CHECK(st.match_latency.count == 7);
  CHECK(st.committed == 10 + 2 + 10);
}

TEST_CASE("manager: a second manager reuses blocks the first published to a memory node",
          "[manager][remote]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto tb = nodes.attach();
  auto make = [&](kvc::shm_transport& t, std::uint64_t seed) {
    auto cfg = small_config(32, 32);
    cfg.remote.transport = &t;
    cfg.remote.index.index = nodes.config(seed);
    cfg.remote.index.clients = 2;
    auto m = manager::create(cfg);
    REQUIRE(m);
    return std::move(*m);
  };
  auto a = make(*ta, 1);
  auto b = make(*tb, 2);
  REQUIRE(a->has_remote());
  const auto tokens = prompt(3, 12 * bs);
  auto first = served(*a, tokens);
  CHECK(first.computed == 12);
  a->flush();
  CHECK(a->stats().published == 12);

  auto second = served(*b, tokens);
  CHECK(second.hits.remote == 12);
  CHECK(second.usable == 12);
  CHECK(second.computed == 0);
  CHECK(second.bad_bytes == 0);
  // Now local to b: the next request there hits its device.
  auto third = served(*b, tokens);
  CHECK(third.hits.device == 12);
  const auto st = b->stats();
  CHECK(st.remote_hits == 12);
  CHECK(st.remote_loaded == 12);
  CHECK(st.remote_bytes_in == 12 * bb);
  CHECK(st.remote_round_trips >= 1);
  CHECK(st.remote_errors == 0);

  // A prompt extending the shared one: a's prefix from the node, the tail computed by b and
  // published; a then finds the tail remotely past its local prefix.
  auto longer = prompt(3, 12 * bs);
  for (token_id t = 0; t < 4 * bs; ++t) longer.push_back(700000 + t);
  auto ext = served(*b, longer);
  CHECK(ext.hits.device == 12);
  CHECK(ext.computed == 4);
  b->flush();
  auto back = served(*a, longer);
  CHECK(back.hits.device == 12);
  CHECK(back.hits.remote == 4);
  CHECK(back.usable == 16);
  CHECK(back.bad_bytes == 0);
}

TEST_CASE("manager: remote stored events name only the blocks this manager published",
          "[manager][remote]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto tb = nodes.attach();
  auto a = remote_manager(nodes, *ta, 1);
  auto b = remote_manager(nodes, *tb, 2);
  std::mutex mu;
  std::vector<manager::event> seen;
  b->on_event([&](const manager::event& e) {
    std::lock_guard lock(mu);
    if (e.tier == kvc::tier_kind::remote) seen.push_back(e);
  });
  // b looks a prompt up while the node holds none of it; a computes and publishes the first 6
  // of its 8 blocks meanwhile; b computes all 8, and its publish finds those 6 there.
  const auto tokens = prompt(61, 8 * bs);
  auto m = b->match(tokens);
  REQUIRE(m);
  REQUIRE(m->length() == 0);
  served(*a, std::vector<token_id>(tokens.begin(), tokens.begin() + 6 * bs));
  a->flush();
  REQUIRE(a->stats().published == 6);
  auto ids = b->allocate(8);
  REQUIRE(ids);
  for (std::size_t i = 0; i < 8; ++i) fill(b->stand_in_data((*ids)[i]), m->chain()[i]);
  REQUIRE(b->commit(*m, 0, *ids));
  REQUIRE(b->release(*m, nullptr, *ids));
  b->flush();
  CHECK(b->stats().published == 2);
  std::lock_guard lock(mu);
  REQUIRE(seen.size() == 2);  // blocks 6 and 7, not the 6 a published
  CHECK(seen[0].hash == m->chain()[6]);
  CHECK(seen[1].hash == m->chain()[7]);
  CHECK(seen[1].parent == m->chain()[6]);
  for (const auto& e : seen) CHECK(e.what == manager::event::kind::stored);
}

TEST_CASE("manager: evicting from the memory nodes goes on past a node out of reach",
          "[manager][remote][faults]") {
  kvc_test::index_nodes nodes(2, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto a = remote_manager(nodes, *ta, 1);
  kvc::faulty<kvc::shm_transport> tb(std::move(*nodes.attach()), kvc::fault_config{});
  auto fcfg = small_config<faulty_manager>(64, 64);
  fcfg.remote.transport = &tb;
  fcfg.remote.index.index = nodes.config(2);
  auto made = faulty_manager::create(fcfg);
  REQUIRE(made);
  auto& b = **made;
  // Chains of one block each, spread over both nodes by their heads: all leaves. Each publish
  // is waited for: with 32 blocks a tier, a backlog of publishes beyond what the pool holds for
  // them (max_held, 16) lets eviction take a block before its publish sends it (publish_missed;
  // once in a sanitizer run, 63 of 64).
  for (std::uint32_t p = 100; p < 164; ++p) {
    served(*a, prompt(p, bs));
    a->flush();
  }
  REQUIRE(a->stats().publish_missed == 0);
  REQUIRE(a->stats().published == 64);
  tb.set_unreachable(0, true);
  // Node 1 answers each time (its evictions sample a few chunks: a few tries find a's).
  const auto errors = b.stats().remote_errors;
  std::size_t evicted = 0;
  for (int i = 0; i < 20 && evicted == 0; ++i) {
    auto e = b.evict(kvc::tier_kind::remote, 64);
    REQUIRE(e);
    evicted += *e;
    CHECK(b.stats().remote_errors == errors + static_cast<std::uint64_t>(i) + 1);
  }
  CHECK(evicted > 0);
  CHECK(evicted < 64);          // node 0's blocks stay
  tb.set_unreachable(1, true);  // every node out of reach: the failure is the answer
  const auto before = b.stats().remote_errors;
  auto none = b.evict(kvc::tier_kind::remote, 64);
  REQUIRE_FALSE(none);
  CHECK(b.stats().remote_errors == before + 2);
}

TEST_CASE("manager: selective publishing sends only blocks used often enough, once",
          "[manager][remote]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto tb = nodes.attach();
  auto a = remote_manager(nodes, *ta, 1, {kvc::placement_mode::selective, 3});
  // b only reads: what it finds remotely is what a published.
  auto b = remote_manager(nodes, *tb, 2);
  const auto remote_hits = [&](const std::vector<token_id>& tokens) {
    return remote_part(*b, tokens);
  };
  const auto base = prompt(6, 8 * bs);
  auto longer = base;
  for (token_id t = 0; t < 4 * bs; ++t) longer.push_back(800000 + t);

  CHECK(served(*a, base).computed == 8);  // use 1 of base's blocks: the commit
  a->flush();
  CHECK(a->stats().published == 0);
  CHECK(remote_hits(base) == 0);
  CHECK(served(*a, base).hits.device == 8);  // use 2
  a->flush();
  CHECK(a->stats().published == 0);
  // Use 3 of base's blocks, use 1 of the tail's: base goes, the tail stays.
  auto ext = served(*a, longer);
  CHECK(ext.hits.device == 8);
  CHECK(ext.computed == 4);
  a->flush();
  CHECK(a->stats().published == 8);
  CHECK(remote_hits(longer) == 8);

  // Published blocks are marked: further full local hits publish nothing and cost no round trip.
  const auto trips = a->stats().remote_round_trips;
  CHECK(served(*a, base).hits.device == 8);
  a->flush();
  CHECK(a->stats().published == 8);
  CHECK(a->stats().remote_round_trips == trips);

  // Two more uses of the tail: its third publishes it under the published base.
  served(*a, longer);
  served(*a, longer);
  a->flush();
  CHECK(a->stats().published == 12);
  CHECK(remote_hits(longer) == 12);
  CHECK(a->stats().remote_errors == 0);
}

TEST_CASE("manager: blocks evicted from the memory node end a remote load cleanly",
          "[manager][remote]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto tb = nodes.attach();
  auto cfg = small_config(32, 32);
  cfg.remote.transport = ta.get();
  cfg.remote.index.index = nodes.config(1);
  auto a = manager::create(cfg);
  REQUIRE(a);
  cfg.remote.transport = tb.get();
  cfg.remote.index.index = nodes.config(2);
  auto b = manager::create(cfg);
  REQUIRE(b);
  const auto tokens = prompt(4, 8 * bs);
  served(**a, tokens);
  (*a)->flush();
  auto m = (*b)->match(tokens);
  REQUIRE(m);
  REQUIRE(m->by_tier().remote == 8);
  // Every leaf goes (sampling eviction takes leaves; repeat until the chain is gone).
  for (int i = 0; i < 64; ++i) (void)(*a)->evict(kvc::tier_kind::remote, 8);
  auto l = (*b)->load(*m);
  REQUIRE(l);
  const std::size_t usable = l->wait();
  CHECK(usable < 8);
  const auto ids = l->ids();
  for (std::size_t i = 0; i < usable; ++i) CHECK(holds((*b)->stand_in_data(ids[i]), m->chain()[i]));
  REQUIRE((*b)->release(*m, &*l, {}));
  CHECK((*b)->stats().remote_short == 8 - usable);
}

TEST_CASE("manager: load deadlines: best effort uses what arrived, all waits for every block",
          "[manager]") {
  // A device whose copies complete on a thread after a gate opens: loads are slow on purpose.
  std::mutex gate_mutex;
  std::condition_variable gate_cv;
  bool open = false;
  std::vector<std::thread> copiers;
  std::vector<std::byte> gpu(64 * bb);
  auto cfg = small_config(64, 64);
  cfg.device.copy = [&](kvc::copy_direction dir,
                        std::span<const kvc::block_copy<std::uint32_t>> copies,
                        std::function<void(const kvc::result<void>&)> done) {
    std::vector<kvc::block_copy<std::uint32_t>> mine(copies.begin(), copies.end());
    const bool immediate = dir == kvc::copy_direction::to_host;
    auto work = [&gpu, dir, mine, done = std::move(done)] {
      for (const auto& c : mine) {
        std::byte* block = gpu.data() + std::size_t{c.slot} * bb;
        if (dir == kvc::copy_direction::to_host) {
          std::copy(block, block + bb, c.host);
        } else {
          std::copy(c.host, c.host + bb, block);
        }
      }
      done(kvc::result<void>{});
    };
    if (immediate) {
      work();
      return;
    }
    copiers.emplace_back([&gate_mutex, &gate_cv, &open, work = std::move(work)] {
      std::unique_lock lock(gate_mutex);
      gate_cv.wait(lock, [&] { return open; });
      lock.unlock();
      work();
    });
  };
  cfg.deadline.mode = kvc::load_wait::best_effort;
  cfg.deadline.budget = std::chrono::microseconds(0);
  auto mgr = manager::create(cfg);
  REQUIRE(mgr);
  const auto tokens = prompt(5, 6 * bs);
  {
    auto m = (*mgr)->match(tokens);
    REQUIRE(m);
    auto ids = (*mgr)->allocate(6);
    REQUIRE(ids);
    for (std::size_t i = 0; i < 6; ++i) {
      fill({gpu.data() + std::size_t{(*ids)[i]} * bb, bb}, m->chain()[i]);
    }
    REQUIRE((*mgr)->commit(*m, 0, *ids));
    REQUIRE((*mgr)->release(*m, nullptr, *ids));
  }
  REQUIRE(*(*mgr)->evict(kvc::tier_kind::device, 6) == 6);  // now on the host only
  auto m = (*mgr)->match(tokens);
  REQUIRE(m);
  REQUIRE(m->by_tier().host == 6);
  kvc::load_deadline negative;
  negative.mode = kvc::load_wait::best_effort;
  negative.budget = std::chrono::microseconds(-1);
  CHECK((*mgr)->load(*m, negative).error() == kvc::errc::invalid_argument);
  auto l = (*mgr)->load(*m);
  REQUIRE(l);
  CHECK(l->requested() == 6);
  CHECK(l->wait() == 0);  // the budget passed with every copy held at the gate
  {
    std::lock_guard lock(gate_mutex);
    open = true;
  }
  gate_cv.notify_all();
  // Wait for all: every block arrives.
  kvc::load_deadline all;
  auto l2 = (*mgr)->load(*m, all);
  REQUIRE(l2);
  CHECK(l2->wait() == 6);
  CHECK(l->wait_until(std::chrono::steady_clock::now() + std::chrono::seconds(30)) == 6);
  const auto ids = l->ids();
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(holds({gpu.data() + std::size_t{ids[i]} * bb, bb}, m->chain()[i]));
  }
  REQUIRE((*mgr)->release(*m, &*l, {}));
  REQUIRE((*mgr)->release(*m, &*l2, {}));
  for (auto& t : copiers) t.join();
}

TEST_CASE("manager: token budgets grow with the tokens to bring", "[manager]") {
  kvc::load_deadline d;
  const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  CHECK(d.at(t0, 100) == std::chrono::steady_clock::time_point::max());
  d.mode = kvc::load_wait::best_effort;
  d.budget = std::chrono::microseconds(500);
  CHECK(d.at(t0, 100) == t0 + std::chrono::microseconds(500));
  d.mode = kvc::load_wait::token_budget;
  d.per_token = std::chrono::nanoseconds(10);
  CHECK(d.at(t0, 0) == t0 + std::chrono::microseconds(500));
  CHECK(d.at(t0, 1000) == t0 + std::chrono::microseconds(510));
  // Budgets meant as "for ever" wait for ever, never overflowing into the past.
  const auto never = std::chrono::steady_clock::time_point::max();
  d.per_token = std::chrono::nanoseconds::max();
  CHECK(d.at(t0, 2) == never);
  d.per_token = std::chrono::nanoseconds(1);
  d.budget = std::chrono::microseconds::max();
  CHECK(d.at(t0, 1) == never);
  d.mode = kvc::load_wait::best_effort;
  CHECK(d.at(t0, 1) == never);
  d.budget = std::chrono::microseconds(1);
  CHECK(d.at(never - std::chrono::nanoseconds(10), 1) == never);
}

TEST_CASE("manager: block events say what each tier stores and removes, with LoRA and tenant",
          "[manager]") {
  auto cfg = small_config(8, 8);
  cfg.host.place.mode = kvc::placement_mode::write_through;
  auto mgr = manager::create(cfg);
  REQUIRE(mgr);
  std::mutex mu;
  std::vector<manager::event> seen;
  (*mgr)->on_event([&](const manager::event& e) {
    std::lock_guard lock(mu);
    seen.push_back(e);
  });
  kvc::extra_keys keys;
  keys.lora_id = 42;
  keys.tenant_salt = "tenant-a";
  const auto tokens = prompt(6, 3 * bs);
  served(**mgr, tokens, keys);
  (*mgr)->flush();
  auto m = (*mgr)->match(tokens, keys);
  REQUIRE(m);
  {
    std::lock_guard lock(mu);
    REQUIRE(seen.size() == 6);  // three blocks, on the device and (write-through) the host
    for (const auto& e : seen) {
      CHECK(e.what == manager::event::kind::stored);
      CHECK(e.tokens == bs);
      CHECK(e.lora_id == std::optional<std::uint64_t>(42));
      CHECK(e.tenant != 0);
      const auto at = std::find(m->chain().begin(), m->chain().end(), e.hash);
      REQUIRE(at != m->chain().end());
      CHECK(e.has_parent == (at != m->chain().begin()));
      if (at != m->chain().begin()) CHECK(e.parent == *(at - 1));
    }
    CHECK(std::count_if(seen.begin(), seen.end(),
                        [](const auto& e) { return e.tier == kvc::tier_kind::host; }) == 3);
    seen.clear();
  }
  REQUIRE((*mgr)->release(*m, nullptr, {}));
  REQUIRE(*(*mgr)->evict(kvc::tier_kind::device, 8) == 3);
  (*mgr)->flush();
  {
    std::lock_guard lock(mu);
    REQUIRE(seen.size() == 3);
    for (const auto& e : seen) {
      CHECK(e.what == manager::event::kind::removed);
      CHECK(e.tier == kvc::tier_kind::device);
    }
  }
  CHECK((*mgr)->stats().events == 9);
  CHECK((*mgr)->stats().events_dropped == 0);
}

TEST_CASE("manager: a listener that throws loses that event only, counted as dropped",
          "[manager]") {
  auto cfg = small_config(8, 8);
  cfg.host.place.mode = kvc::placement_mode::write_through;
  auto mgr = manager::create(cfg);
  REQUIRE(mgr);
  std::atomic<int> calls{0};
  (*mgr)->on_event([&](const manager::event&) {
    if (++calls == 1) throw std::runtime_error("listener failed");
  });
  served(**mgr, prompt(7, 3 * bs));  // three blocks on the device and the host: six events
  (*mgr)->flush();
  CHECK(calls == 6);  // the thread delivering them lived on
  CHECK((*mgr)->stats().events == 5);
  CHECK((*mgr)->stats().events_dropped == 1);
}

// Unsubscribing waits for a listener call running on the event thread, so that what it uses
// may go once on_event() returned; a listener may flush() or unsubscribe itself (both return at
// once there: waiting for its own delivery would never end).
TEST_CASE("manager: unsubscribing waits for the listener; a listener may flush or unsubscribe",
          "[manager]") {
  auto cfg = small_config(8, 8);
  cfg.host.place.mode = kvc::placement_mode::write_through;
  auto mgr = manager::create(cfg);
  REQUIRE(mgr);
  std::atomic<bool> started{false}, finished{false};
  (*mgr)->on_event([&](const manager::event&) {
    if (started.exchange(true)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    finished = true;
  });
  served(**mgr, prompt(8, 3 * bs));
  while (!started) std::this_thread::yield();
  (*mgr)->on_event({});
  CHECK(finished);
  (*mgr)->flush();
  const auto s = (*mgr)->stats();
  CHECK(s.events + s.events_dropped == 6);  // dropped: queued, then nobody listening

  std::atomic<int> calls{0};
  (*mgr)->on_event([&](const manager::event&) {
    (*mgr)->flush();
    if (++calls == 2) (*mgr)->on_event({});
  });
  served(**mgr, prompt(9, 3 * bs));
  (*mgr)->flush();
  CHECK(calls == 2);

  // Replacing a listener waits for the call running then, not for the queue to empty: the new
  // listener holds each of its calls until on_event() has returned (waiting for an empty queue,
  // on_event() would never return).
  std::atomic<bool> replaced{false};
  std::atomic<int> first_calls{0}, second_calls{0};
  (*mgr)->on_event([&](const manager::event&) {
    ++first_calls;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  });
  const auto delivered = (*mgr)->stats().events;
  served(**mgr, prompt(10, 3 * bs));  // six events stored, and removals to make room
  while (first_calls == 0) std::this_thread::yield();
  (*mgr)->on_event([&](const manager::event&) {
    while (!replaced) std::this_thread::yield();
    ++second_calls;
  });
  replaced = true;
  (*mgr)->flush();
  CHECK(first_calls + second_calls >= 6);
  CHECK(static_cast<std::uint64_t>(first_calls + second_calls) ==
        (*mgr)->stats().events - delivered);
}

TEST_CASE("manager: engine threads and a copy thread at once, blocks always intact",
          "[manager][threads]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{64} << 20, bb);
  auto t = nodes.attach();
  auto cfg = small_config(48, 40);
  cfg.remote.transport = t.get();
  cfg.remote.index.index = nodes.config(1);
  cfg.remote.index.clients = 3;
  cfg.movers = 2;
  auto mgr = manager::create(cfg);
  REQUIRE(mgr);
  std::atomic<std::uint64_t> events{0};
  (*mgr)->on_event([&](const manager::event&) { ++events; });
  constexpr int threads = 4;
  constexpr int rounds = 120;
  std::atomic<int> bad{0}, errors{0}, no_space{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(i) + 1);
      for (int r = 0; r < rounds; ++r) {
        // Five shared system prompts, each with a private tail now and then.
        auto tokens = prompt(static_cast<std::uint32_t>(rng() % 5 + 10), (2 + rng() % 6) * bs);
        if (rng() % 3 == 0) {
          for (token_id k = 0; k < 2 * bs; ++k) tokens.push_back(static_cast<token_id>(rng()));
        }
        auto m = (*mgr)->match(tokens);
        if (!m) {
          ++errors;
          continue;
        }
        auto l = (*mgr)->load(*m);
        if (!l) {
          ++errors;
          continue;
        }
        const std::size_t usable = l->wait();
        const auto ids = l->ids();
        for (std::size_t k = 0; k < usable; ++k) {
          if (!holds((*mgr)->stand_in_data(ids[k]), m->chain()[k])) ++bad;
        }
        std::vector<std::uint32_t> fresh;
        if (m->blocks() > usable) {
          auto got = (*mgr)->allocate(m->blocks() - usable);
          if (got) {
            fresh = *got;
            for (std::size_t k = 0; k < fresh.size(); ++k) {
              fill((*mgr)->stand_in_data(fresh[k]), m->chain()[usable + k]);
            }
            if (!(*mgr)->commit(*m, usable, fresh)) ++errors;
          } else if (got.error() == kvc::errc::no_space) {
            ++no_space;
          } else {
            ++errors;
          }
        }
        if (!(*mgr)->release(*m, &*l, fresh)) ++errors;
      }
    });
  }
  // The engine's copy thread: evicts now and then, as a memory-pressure hook would.
  std::atomic<bool> stop{false};
  std::thread evictor([&] {
    while (!stop) {
      (void)(*mgr)->evict(kvc::tier_kind::device, 4);
      (void)(*mgr)->evict(kvc::tier_kind::host, 2);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
  for (auto& th : pool) th.join();
  stop = true;
  evictor.join();
  (*mgr)->flush();
  CHECK(bad == 0);
  CHECK(errors == 0);
  const auto st = (*mgr)->stats();
  CHECK(st.matches == threads * rounds);
  CHECK(st.matched_blocks > 0);
  CHECK(st.remote_errors == 0);
  CHECK(events.load() == st.events);
  INFO("no_space " << no_space.load() << " remote hits " << st.remote_hits);
}

TEST_CASE("manager: managers in separate processes share a memory node", "[manager][process]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  const auto tokens = prompt(8, 16 * bs);
  // Process A computes and publishes, then signals; process B waits, then must hit all of it.
  // Only A holds the pipe's write end: A dying before it signals ends B's wait (read gives 0).
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  auto child = [&](bool publisher) -> int {
    auto t = nodes.attach();
    auto cfg = small_config(32, 32);
    cfg.remote.transport = t.get();
    cfg.remote.index.index = nodes.config(publisher ? 11 : 12);
    auto mgr = manager::create(cfg);
    if (!mgr) return 10;
    if (publisher) {
      auto out = serve(**mgr, tokens);
      (*mgr)->flush();
      const char go =
          out.failed.empty() && out.computed == 16 && (*mgr)->stats().published == 16 ? 'y' : 'n';
      return ::write(ready[1], &go, 1) == 1 && go == 'y' ? 0 : 11;
    }
    char go = 0;
    ::close(ready[1]);
    if (::read(ready[0], &go, 1) != 1 || go != 'y') return 12;
    auto out = serve(**mgr, tokens);
    if (!out.failed.empty()) return 15;
    if (out.hits.remote != 16) return 13;
    if (out.usable != 16 || out.bad_bytes != 0) return 14;
    return 0;
  };
  const pid_t b = kvc_test::fork_child();
  REQUIRE(b >= 0);
  if (b == 0) ::_exit(child(false));
  const pid_t a = kvc_test::fork_child();
  REQUIRE(a >= 0);
  if (a == 0) ::_exit(child(true));
  ::close(ready[0]);
  ::close(ready[1]);
  int sa = 0, sb = 0;
  REQUIRE(::waitpid(a, &sa, 0) == a);
  REQUIRE(::waitpid(b, &sb, 0) == b);
  REQUIRE(WIFEXITED(sa));
  REQUIRE(WIFEXITED(sb));
  CHECK(WEXITSTATUS(sa) == 0);
  CHECK(WEXITSTATUS(sb) == 0);
}

TEST_CASE(
    "manager: torn reads never reach the engine; an unreachable node costs hits, not requests",
    "[manager][remote][faults]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto cfg = small_config(64, 64);
  cfg.remote.transport = ta.get();
  cfg.remote.index.index = nodes.config(1);
  auto a = manager::create(cfg);
  REQUIRE(a);
  kvc::fault_config faults;
  faults.seed = 5;
  faults.torn_read_probability = 0.3;
  faults.tear_pause = std::chrono::microseconds(0);
  kvc::faulty<kvc::shm_transport> tb(std::move(*nodes.attach()), faults);
  auto fcfg = small_config<faulty_manager>(64, 64);
  fcfg.remote.transport = &tb;
  fcfg.remote.index.index = nodes.config(2);
  auto b = faulty_manager::create(fcfg);
  REQUIRE(b);
  for (std::uint32_t p = 20; p < 23; ++p) served(**a, prompt(p, 8 * bs));
  (*a)->flush();

  // Torn reads of records and data are caught by validation: what b reads is the block's.
  auto torn = served(**b, prompt(20, 8 * bs));
  CHECK(torn.bad_bytes == 0);
  CHECK(torn.usable + torn.computed == 8);
  CHECK(tb.torn_reads() > 0);

  // The node unreachable: the request goes on with the local tiers and computes everything.
  tb.set_unreachable(0, true);
  auto cut = served(**b, prompt(21, 8 * bs));
  CHECK(cut.hits.remote == 0);
  CHECK(cut.computed == 8);
  (*b)->flush();  // its publish fails too, counted
  const auto errors = (*b)->stats().remote_errors;
  CHECK(errors >= 2);

  // Reachable again: b finds what a published, once its index clients have registered there
  // again (their tries back off while the node is out of reach: a lease at most after the last
  // try, which may have begun just before the node came back).
  tb.set_unreachable(0, false);
  std::this_thread::sleep_for(fcfg.remote.index.index.lease * 2);
  auto back = served(**b, prompt(22, 8 * bs));
  CHECK(back.hits.remote == 8);
  CHECK(back.bad_bytes == 0);
}

TEST_CASE("manager: write-back publishes a block when its last local copy is to leave",
          "[manager][remote]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  kvc::faulty<kvc::shm_transport> ta(std::move(*nodes.attach()), kvc::fault_config{});
  auto tb = nodes.attach();
  auto cfg = small_config<faulty_manager>(4, 8);
  cfg.remote.transport = &ta;
  cfg.remote.index.index = nodes.config(1);
  cfg.remote.place.mode = kvc::placement_mode::write_back;
  auto made = faulty_manager::create(cfg);
  REQUIRE(made);
  auto& a = **made;
  auto reader = remote_manager(nodes, *tb, 2);
  const auto remote_hits = [&](const std::vector<token_id>& tokens) {
    return remote_part(*reader, tokens);
  };

  // p1 moves from the device to the host (host write-back) when p2 needs the device: it still
  // has a local copy, so nothing is published.
  const auto p1 = prompt(31, 4 * bs), p2 = prompt(32, 4 * bs), p3 = prompt(33, 4 * bs);
  CHECK(served(a, p1).computed == 4);
  CHECK(served(a, p2).computed == 4);
  a.flush();
  CHECK(a.stats().published == 0);
  CHECK(remote_hits(p1) == 0);

  // Asked to leave the host, p1's last copies stay until published; then they may go.
  CHECK(*a.evict(kvc::tier_kind::host, 8) == 0);
  a.flush();
  CHECK(a.stats().published == 4);
  CHECK(a.stats().pool.write_backs == 1);
  CHECK(remote_hits(p1) == 4);
  CHECK(*a.evict(kvc::tier_kind::host, 8) == 4);
  const auto back = served(a, p1);
  CHECK(back.hits.remote == 4);
  CHECK(back.bad_bytes == 0);

  // The node unreachable: the publish fails, counted, and the held blocks are given up (they
  // leave rather than fill the host for ever).
  a.flush();
  CHECK(served(a, p3).computed == 4);  // p2 and p1 move to the host
  ta.set_unreachable(0, true);
  const auto errors = a.stats().remote_errors;
  const auto published = a.stats().published;
  CHECK(*a.evict(kvc::tier_kind::host, 8) == 4);  // p1, published already; p2 is held
  a.flush();
  CHECK(a.stats().remote_errors > errors);
  CHECK(a.stats().published == published);
  CHECK(*a.evict(kvc::tier_kind::host, 8) == 4);  // given up: they leave unpublished, counted
  CHECK(remote_hits(p2) == 0);
  CHECK(a.stats().pool.unpublished_drops == 4);
}

TEST_CASE("manager: a write-back under a prefix the memory node lost publishes the whole chain",
          "[manager][remote]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto tb = nodes.attach();
  auto made_a = remote_manager(nodes, *ta, 1, {kvc::placement_mode::write_back, 2});
  auto made_b = remote_manager(nodes, *tb, 2);  // write-through
  auto& a = *made_a;
  auto& b = *made_b;
  const auto remote_hits = [&](const std::vector<token_id>& tokens) {
    return remote_part(b, tokens);
  };
  const auto base = prompt(41, 8 * bs);
  auto longer = base;
  for (token_id t = 0; t < 4 * bs; ++t) longer.push_back(900000 + t);
  // b publishes the base; a loads it from the node (so a believes the node holds it) and
  // computes the tail (write-back: not published yet).
  served(b, base);
  b.flush();
  (void)b.evict(kvc::tier_kind::device, 32);  // b only looks from now on
  (void)b.evict(kvc::tier_kind::host, 32);
  REQUIRE(remote_hits(base) == 8);
  const auto ext = served(a, longer);
  CHECK(ext.hits.remote == 8);
  CHECK(ext.computed == 4);
  a.flush();
  CHECK(a.stats().published == 0);
  // The node evicts everything (leaf by leaf: a parent becomes a leaf once its child's slab is
  // reclaimed, a grace period later); a is not told.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (remote_hits(base) > 0 && std::chrono::steady_clock::now() < until) {
    (void)b.evict(kvc::tier_kind::remote, 8);
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  REQUIRE(remote_hits(base) == 0);
  // The tail's last copies leave a: its write-back finds the base gone and publishes all 12.
  (void)a.evict(kvc::tier_kind::device, 32);
  (void)a.evict(kvc::tier_kind::host, 32);
  a.flush();
  CHECK(a.stats().published == 12);
  CHECK(remote_hits(longer) == 12);
  CHECK(a.stats().remote_errors == 0);
}

TEST_CASE("manager: a write-through publish queued behind a slow one still finds its blocks",
          "[manager][remote]") {
  // With room for both publishes' holds (8), p2's blocks wait for their publish; with room for
  // one publish's (4, held by p1), p2's leave first and are counted as missed.
  const std::size_t max_held = GENERATE(std::size_t{8}, std::size_t{4});
  const bool p2_held = max_held == 8;
  // The engine's device is a buffer here, behind a copy hook that withholds the completion of
  // the first prompt's copies to the host: that prompt's publish waits on them and keeps the
  // (single) mover busy while the second prompt is committed and the tiers are asked to empty.
  constexpr std::size_t device_blocks = 8;
  std::vector<std::byte> device(device_blocks * bb);
  std::mutex gate_mutex;
  bool gate_closed = true;
  std::vector<std::function<void(const kvc::result<void>&)>> withheld;
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto ta = nodes.attach();
  auto tb = nodes.attach();
  auto cfg = small_config(device_blocks, 8);
  cfg.device.copy = [&](kvc::copy_direction dir,
                        std::span<const kvc::block_copy<std::uint32_t>> copies,
                        std::function<void(const kvc::result<void>&)> done) {
    for (const auto& c : copies) {
      std::byte* block = device.data() + std::size_t{c.slot} * bb;
      if (dir == kvc::copy_direction::to_host) {
        std::memmove(c.host, block, bb);
      } else {
        std::memmove(block, c.host, bb);
      }
    }
    {
      std::lock_guard lock(gate_mutex);
      if (dir == kvc::copy_direction::to_host && gate_closed) {
        withheld.push_back(std::move(done));
        return;
      }
    }
    done(kvc::result<void>{});
  };
  cfg.remote.transport = &*ta;
  cfg.remote.index.index = nodes.config(1);
  cfg.remote.index.clients = 2;
  cfg.remote.max_held = max_held;
  auto made = manager::create(cfg);
  REQUIRE(made);
  auto& a = **made;
  // Opens the gate and completes what it withheld; also on the way out of a failed REQUIRE,
  // before the manager goes (its mover would wait on the withheld copies for ever).
  const auto open_gate = [&] {
    std::vector<std::function<void(const kvc::result<void>&)>> release;
    {
      std::lock_guard lock(gate_mutex);
      gate_closed = false;
      release.swap(withheld);
    }
    for (auto& done : release) done(kvc::result<void>{});
    return release.size();
  };
  struct on_exit {
    const decltype(open_gate)& run;
    ~on_exit() { run(); }
  } gate_guard{open_gate};
  const auto cycle = [&](const std::vector<token_id>& tokens) {
    auto m = a.match(tokens);
    REQUIRE(m);
    auto l = a.load(*m);
    REQUIRE(l);
    REQUIRE(l->wait() == 0);
    auto ids = a.allocate(m->blocks());
    REQUIRE(ids);
    for (std::size_t i = 0; i < ids->size(); ++i) {
      kvc_test::fill(std::span(device).subspan(std::size_t{(*ids)[i]} * bb, bb), m->chain()[i]);
    }
    REQUIRE(a.commit(*m, 0, *ids));
    REQUIRE(a.release(*m, &*l, *ids));
  };
  const auto p1 = prompt(51, 4 * bs), p2 = prompt(52, 4 * bs);
  cycle(p1);
  // p1's publish is on the mover, waiting for its host copies (at most 10 s to get there).
  for (int i = 0; i < 10000; ++i) {
    {
      std::lock_guard lock(gate_mutex);
      if (!withheld.empty()) {
        gate_closed = false;
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  {
    // Else the evictions below would wait for ever on a copy the gate withholds.
    std::lock_guard lock(gate_mutex);
    REQUIRE_FALSE(gate_closed);  // p1's publish reached the gate
  }
  cycle(p2);
  // Memory pressure before p2's publish runs: held blocks may move down a tier but not leave.
  (void)a.evict(kvc::tier_kind::device, device_blocks);
  (void)a.evict(kvc::tier_kind::host, 8);
  CHECK(a.stats().pool.holding == (p2_held ? 8 : 4));
  REQUIRE(open_gate() > 0);  // else p1's publish never started
  a.flush();
  const auto st = a.stats();
  CHECK(st.published == (p2_held ? 8 : 4));
  CHECK(st.publish_missed == (p2_held ? 0 : 4));
  CHECK(st.pool.holding == 0);
  auto reader = remote_manager(nodes, *tb, 2);
  const auto got = served(*reader, p2);
  CHECK(got.hits.remote == (p2_held ? 4 : 0));
  CHECK(got.bad_bytes == 0);
  if (p2_held) CHECK(*a.evict(kvc::tier_kind::host, 8) >= 4);  // published: they may leave now
}
