// The block pool over device, host and SSD tiers: commit and match, loads from each tier, the
// placement modes, pins and engine references against eviction, prefix closure, asynchronous
// device copies, many threads.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <kvc/pool/block_pool.hpp>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "../support/unique_name.hpp"

namespace {

using kvc::hash64;
using pool_type = kvc::block_pool<hash64>;
constexpr std::size_t bb = 256;

std::vector<std::byte> pattern(hash64 h) {
  std::vector<std::byte> v(bb);
  for (std::size_t i = 0; i < bb; ++i) v[i] = static_cast<std::byte>((h.value >> (i % 8)) + i);
  return v;
}

std::vector<hash64> make_chain(std::uint64_t id, std::size_t n, std::vector<hash64> base = {}) {
  for (std::size_t i = 0; i < n; ++i) base.push_back(hash64{id * 1000 + i + 1});
  return base;
}

// Tiers and a pool; the engine's "GPU" is the device tier's host stand-in.
struct rig {
  explicit rig(std::size_t dev, std::size_t host_blocks, std::size_t ssd_blocks,
               pool_type::config cfg = {}, kvc::device_copy_hook hook = {})
      : device({bb, dev, std::move(hook)}) {
    auto h = kvc::host_tier::create({bb, host_blocks, false});
    REQUIRE(h);
    host = std::make_unique<kvc::host_tier>(std::move(*h));
    if (ssd_blocks > 0) {
      path = std::filesystem::temp_directory_path() / kvc_test::unique_name("kvc-pool-test");
      kvc::ssd_tier_config sc;
      sc.path = path.string();
      sc.block_bytes = bb;
      sc.blocks = ssd_blocks;
      auto s = kvc::ssd_tier::open(sc);
      REQUIRE(s);
      ssd = std::move(*s);
    }
    REQUIRE(pool_type::check(cfg, ssd != nullptr));
    pool = std::make_unique<pool_type>(device, *host, ssd.get(), std::move(cfg));
  }
  ~rig() {
    pool.reset();
    ssd.reset();
    if (!path.empty()) std::filesystem::remove(path);
  }
  // The engine computes chain[from, end) into fresh device ids and commits them.
  kvc::result<pool_type::commit_result> compute(const std::vector<hash64>& chain,
                                                std::size_t from) {
    auto ids = pool->allocate_device(chain.size() - from);
    if (!ids) return std::move(ids).take_failure();
    for (std::size_t i = 0; i < ids->size(); ++i) {
      const auto p = pattern(chain[from + i]);
      std::copy(p.begin(), p.end(), device_bytes((*ids)[i]).begin());
    }
    auto c = pool->commit(chain, from, *ids);
    REQUIRE(pool->release_device(*ids));
    return c;
  }
  std::span<std::byte> device_bytes(std::uint32_t id) {
    if (gpu != nullptr) return {gpu->data() + std::size_t{id} * bb, bb};
    return device.stand_in_data(id);
  }
  // Matches and loads chain; checks every loaded block's bytes; returns the match length.
  std::size_t match_and_check(const std::vector<hash64>& chain) {
    auto m = pool->match(chain);
    auto l = pool->load(chain, m);
    REQUIRE(l);
    REQUIRE(l->wait());
    for (std::size_t i = 0; i < l->ids.size(); ++i) {
      const auto p = pattern(chain[i]);
      const auto got = device_bytes(l->ids[i]);
      CHECK(std::equal(p.begin(), p.end(), got.begin()));
    }
    REQUIRE(pool->release_device(l->ids));
    return m.length;
  }

  std::vector<std::byte>* gpu = nullptr;  // the engine's memory when a hook is given
  kvc::device_tier device;
  std::unique_ptr<kvc::host_tier> host;
  std::unique_ptr<kvc::ssd_tier> ssd;
  std::filesystem::path path;
  std::unique_ptr<pool_type> pool;
};

// A slot file of its own for a test, removed before and after; and an SSD config on it.
struct temp_file {
  std::filesystem::path path;
  explicit temp_file(const std::string& name)
      : path(std::filesystem::temp_directory_path() / kvc_test::unique_name("kvc-pool-" + name)) {
    std::filesystem::remove(path);
  }
  ~temp_file() { std::filesystem::remove(path); }
};
kvc::ssd_tier_config persistent_ssd(const temp_file& f, std::size_t blocks) {
  kvc::ssd_tier_config sc;
  sc.path = f.path.string();
  sc.block_bytes = bb;
  sc.blocks = blocks;
  sc.persist = true;
  sc.model = "pool-test-model";
  return sc;
}
pool_type::config write_through_all() {
  pool_type::config cfg;
  cfg.host.mode = kvc::placement_mode::write_through;
  cfg.ssd.mode = kvc::placement_mode::write_through;
  return cfg;
}

}  // namespace

TEST_CASE("block pool: committed blocks match on the device and load as shared ids",
          "[pool][block_pool]") {
  rig r(12, 16, 0);
  const auto chain = make_chain(1, 6);
  auto c = r.compute(chain, 0);
  REQUIRE(c);
  CHECK(c->cached == 6);
  auto m = r.pool->match(chain);
  CHECK(m.length == 6);
  CHECK(m.fastest[0] == 6);
  auto l = r.pool->load(chain, m);
  REQUIRE(l);
  REQUIRE(l->ids.size() == 6);
  for (std::uint32_t id : l->ids) CHECK(r.device.refs(id) == 2);  // the cache's and ours
  REQUIRE(r.pool->release_device(l->ids));
  // A longer chain: the cached prefix, then a commit of the rest only.
  const auto longer = make_chain(2, 3, chain);
  auto m2 = r.pool->match(longer);
  CHECK(m2.length == 6);
  auto c2 = r.compute(longer, m2.length);
  REQUIRE(c2);
  CHECK(c2->cached == 3);
  CHECK(r.pool->size() == 9);
  CHECK(r.pool->match(longer).length == 9);
}

TEST_CASE("block pool: write-back moves blocks down as tiers fill, and loads bring them back",
          "[pool][block_pool]") {
  rig r(8, 12, 64);  // write-back to host, then to SSD
  std::vector<std::vector<hash64>> chains;
  for (std::uint64_t k = 0; k < 5; ++k) {
    chains.push_back(make_chain(k + 1, 8));
    REQUIRE(r.compute(chains.back(), 0));
  }
  // 40 blocks: 8 on the device, 12 on the host, the rest on the SSD; all still cached.
  CHECK(r.pool->size() == 40);
  const auto st = r.pool->stats();
  CHECK(st.removed == 0);
  CHECK(st.tiers[1].stored == 32);  // everything that left the device went to the host
  CHECK(st.tiers[2].stored == 20);
  auto first = r.pool->where(chains[0]);
  CHECK(first.slot[0] == pool_type::none);
  CHECK(first.slot[2] != pool_type::none);  // the oldest chain is on the SSD
  // Loading it comes up through the host with the right bytes; so does every other chain.
  CHECK(r.match_and_check(chains[0]) == 8);
  const auto now = r.pool->where(chains[0]);
  CHECK(now.slot[0] != pool_type::none);
  CHECK(now.slot[1] != pool_type::none);  // the host slot it came through stays a copy
  CHECK(now.slot[2] == first.slot[2]);
  for (const auto& c : chains) CHECK(r.match_and_check(c) == 8);
  CHECK(r.pool->stats().removed == 0);  // copies are kept below: the SSD holds all 40
}

// A load of blocks whose host copies are still being read from the SSD (host_copies(), as a
// publish asks for them) copies them on to the device only once they are filled. Before, the
// load copied the host slots at once: an SSD read takes a moment (an I/O thread), so the device
// got whatever the slots held before.
TEST_CASE("block pool: a load waits for host copies still being read from the SSD",
          "[pool][block_pool]") {
  for (int trial = 0; trial < 8; ++trial) {
    INFO("trial " << trial);
    rig r(8, 12, 64);  // write-back: the oldest chains end up on the SSD alone
    std::vector<std::vector<hash64>> chains;
    for (std::uint64_t k = 0; k < 5; ++k) {
      chains.push_back(make_chain(k + 1, 8));
      REQUIRE(r.compute(chains.back(), 0));
    }
    for (std::size_t c = 0; c < 2; ++c) {
      const auto where = r.pool->where(chains[c]);
      REQUIRE(where.slot[pool_type::device_index] == pool_type::none);
      REQUIRE(where.slot[pool_type::host_index] == pool_type::none);
      auto hc = r.pool->host_copies(chains[c], 0);  // SSD -> host, queued
      REQUIRE(hc);
      REQUIRE(hc->slots.size() == 8);
      CHECK(r.match_and_check(chains[c]) == 8);  // the host slots, to the device
      REQUIRE(hc->wait());
      hc->pin.release();
    }
  }
}

TEST_CASE("block pool: without a lower tier the last copy leaves with its leaf",
          "[pool][block_pool]") {
  rig r(4, 4, 0);
  std::mt19937_64 rng(7);
  std::vector<std::vector<hash64>> chains;
  for (std::uint64_t k = 0; k < 40; ++k) {
    // Chains extend earlier ones (shared prefixes) or start anew.
    std::vector<hash64> base;
    if (!chains.empty() && rng() % 2 == 0) {
      const auto& b = chains[rng() % chains.size()];
      base.assign(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(1 + rng() % b.size()));
    }
    auto chain = make_chain(100 + k, 1 + rng() % 3, base);
    auto m = r.pool->match(chain);
    if (m.length < chain.size()) {
      auto c = r.compute(chain, m.length);
      if (!c) CHECK(c.error() == kvc::errc::no_space);
    }
    m.pin.release();
    chains.push_back(chain);
    CHECK(r.pool->size() <= 8);
    // Prefix closure: whatever matches loads with the right bytes.
    for (const auto& c : chains) r.match_and_check(c);
  }
  CHECK(r.pool->stats().removed > 0);
}

TEST_CASE("block pool: when the tier below is full of inner blocks a leaf leaves in their place",
          "[pool][block_pool]") {
  rig r(4, 2, 0);
  const auto a = make_chain(1, 4);
  REQUIRE(r.compute(a, 0));
  REQUIRE(r.compute(make_chain(2, 2), 0));  // a0 and a1 move down to the host: it is full
  CHECK(r.pool->stats().tiers[1].stored == 2);
  // A new chain needs a device slot. The oldest device block (a2) is inner and the host holds
  // only inner blocks (a0, a1), so nothing can move down: the leaf a3 leaves instead.
  const auto b = make_chain(3, 1);
  REQUIRE(r.compute(b, 0));
  CHECK(r.pool->match(b).length == 1);
  CHECK(r.pool->match(a).length == 3);
  CHECK(r.pool->stats().removed == 1);
  CHECK(r.pool->stats().tiers[1].stored == 2);  // no move down happened
  // One move down was tried (a2's); once the host was found full, a3 left without trying.
  CHECK(r.pool->stats().failed_moves == 1);
}

TEST_CASE("block pool: pins and the engine's references keep blocks; errors say why",
          "[pool][block_pool]") {
  rig r(4, 4, 0);
  const auto a = make_chain(1, 4);
  REQUIRE(r.compute(a, 0));
  const auto b = make_chain(2, 4);
  REQUIRE(r.compute(b, 0));  // a moved to the host
  {
    auto pin_a = r.pool->match(a);
    auto pin_b = r.pool->match(b);
    REQUIRE(pin_a.length == 4);
    REQUIRE(pin_b.length == 4);
    // Everything is pinned: nothing can make room on the device.
    auto ids = r.pool->allocate_device(1);
    REQUIRE_FALSE(ids);
    CHECK(ids.error() == kvc::errc::no_space);
    CHECK(ids.message().find("device tier") != std::string::npos);
  }
  // Unpinned, room is made; but ids the engine still holds are never taken from it.
  auto held = r.pool->allocate_device(4);
  REQUIRE(held);
  auto more = r.pool->allocate_device(1);
  REQUIRE_FALSE(more);
  CHECK(more.error() == kvc::errc::no_space);
  REQUIRE(r.pool->release_device(*held));
  CHECK(r.pool->allocate_device(1));
  // Commit after the prefix left the cache (no lease held): refused.
  const auto c = make_chain(3, 2, make_chain(4, 2));
  auto ids = r.pool->allocate_device(2);
  REQUIRE(ids);
  auto bad = r.pool->commit(c, 2, *ids);
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == kvc::errc::invalid_argument);
  REQUIRE(r.pool->release_device(*ids));
  // More ids than the device has: refused before anything is evicted for them.
  REQUIRE(r.compute(make_chain(5, 3), 0));
  const auto evicted = r.pool->stats().tiers[0].evicted;
  auto too_many = r.pool->allocate_device(5);
  REQUIRE_FALSE(too_many);
  CHECK(too_many.error() == kvc::errc::no_space);
  CHECK(too_many.message().find("5 slots asked of the device tier, which has 4") !=
        std::string::npos);
  CHECK(r.pool->stats().tiers[0].evicted == evicted);
}

TEST_CASE("block pool: write-through copies at commit, to the host and through it to the SSD",
          "[pool][block_pool]") {
  pool_type::config bad;
  bad.ssd.mode = kvc::placement_mode::write_through;
  auto refused = pool_type::check(bad, true);
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == kvc::errc::invalid_config);

  pool_type::config cfg;
  cfg.host.mode = kvc::placement_mode::write_through;
  cfg.ssd.mode = kvc::placement_mode::write_through;
  rig r(8, 8, 8, cfg);
  const auto chain = make_chain(1, 5);
  auto c = r.compute(chain, 0);
  REQUIRE(c);
  REQUIRE(c->job->wait());
  for (std::size_t k = 1; k <= chain.size(); ++k) {
    const auto loc = r.pool->where(std::span(chain).first(k));
    REQUIRE(loc.slot[1] != pool_type::none);
    REQUIRE(loc.slot[2] != pool_type::none);
    const auto p = pattern(chain[k - 1]);
    const auto on_host = r.host->data(loc.slot[1]);
    CHECK(std::equal(p.begin(), p.end(), on_host.begin()));
    std::vector<std::byte> back(bb);
    auto job = std::make_shared<kvc::copy_job>();
    const kvc::block_copy<std::uint32_t> cp{loc.slot[2], back.data()};
    REQUIRE(r.ssd->copy(kvc::copy_direction::to_host, std::span(&cp, 1), job));
    job->seal();
    REQUIRE(job->wait());
    CHECK(back == p);
  }
}

TEST_CASE("block pool: selective placement keeps only blocks used often enough",
          "[pool][block_pool]") {
  pool_type::config cfg;
  cfg.host.mode = kvc::placement_mode::selective;
  cfg.host.after_uses = 2;
  rig r(4, 8, 0, cfg);
  const auto hot = make_chain(1, 2);
  const auto cold = make_chain(2, 2);
  REQUIRE(r.compute(hot, 0));
  REQUIRE(r.compute(cold, 0));
  CHECK(r.pool->match(hot).length == 2);                 // a second use
  REQUIRE(r.compute(make_chain(3, 4), 0));               // the device fills: both leave it
  CHECK(r.pool->where(hot).slot[1] != pool_type::none);  // kept on the host
  CHECK(r.pool->match(cold).length == 0);                // dropped
  CHECK(r.match_and_check(hot) == 2);
}

TEST_CASE("block pool: asynchronous device copies are waited for, and shared by later loads",
          "[pool][block_pool]") {
  std::vector<std::byte> gpu(4 * bb);
  std::mutex threads_mutex;
  std::vector<std::thread> copiers;
  auto hook = [&](kvc::copy_direction dir, std::span<const kvc::block_copy<std::uint32_t>> copies,
                  std::function<void(const kvc::result<void>&)> done) {
    std::vector<kvc::block_copy<std::uint32_t>> mine(copies.begin(), copies.end());
    std::lock_guard lock(threads_mutex);
    copiers.emplace_back([&gpu, dir, mine, done = std::move(done)] {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      for (const auto& c : mine) {
        std::byte* b = gpu.data() + std::size_t{c.slot} * bb;
        if (dir == kvc::copy_direction::from_host) {
          std::copy_n(c.host, bb, b);
        } else {
          std::copy_n(b, bb, c.host);
        }
      }
      done({});
    });
  };
  {
    rig r(4, 8, 0, {}, hook);
    r.gpu = &gpu;  // the engine computes into the hook's memory
    const auto a = make_chain(1, 4);
    REQUIRE(r.compute(a, 0));
    REQUIRE(r.compute(make_chain(2, 4), 0));  // a is demoted (device -> host, waited for)
    auto m = r.pool->match(a);
    REQUIRE(m.length == 4);
    CHECK(m.fastest[1] == 4);
    auto first = r.pool->load(a, m);
    REQUIRE(first);
    REQUIRE(first->ids.size() == 4);
    CHECK_FALSE(first->jobs.back()->done());  // the copies take 30 ms
    auto m2 = r.pool->match(a);
    auto second = r.pool->load(a, m2);
    REQUIRE(second);
    CHECK(second->ids == first->ids);
    CHECK(second->jobs.size() >= 2);  // waits for the first load's copies
    REQUIRE(second->wait());
    CHECK(first->jobs.back()->done());
    for (std::size_t i = 0; i < 4; ++i) {
      const auto p = pattern(a[i]);
      const auto got = r.device_bytes(first->ids[i]);
      CHECK(std::equal(p.begin(), p.end(), got.begin()));
    }
    REQUIRE(r.pool->release_device(first->ids));
    REQUIRE(r.pool->release_device(second->ids));
  }
  for (auto& t : copiers) t.join();
}

TEST_CASE("block pool: threads matching, loading and committing keep every byte right",
          "[pool][block_pool][threads]") {
  rig r(16, 16, 64);
  std::atomic<int> wrong{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 1);
      for (int round = 0; round < 150; ++round) {
        // Ten conversations, each a prefix of one long chain: shared and extended.
        const auto full = make_chain(rng() % 10, 12);
        const std::vector<hash64> chain(full.begin(),
                                        full.begin() + static_cast<std::ptrdiff_t>(1 + rng() % 12));
        auto m = r.pool->match(chain);
        auto l = r.pool->load(chain, m);
        if (!l || !l->wait()) {
          ++errors;
          continue;
        }
        for (std::size_t i = 0; i < l->ids.size(); ++i) {
          const auto p = pattern(chain[i]);
          const auto got = r.device.stand_in_data(l->ids[i]);
          if (!std::equal(p.begin(), p.end(), got.begin())) ++wrong;
        }
        if (!r.pool->release_device(l->ids)) ++errors;
        if (m.length < chain.size()) {
          auto ids = r.pool->allocate_device(chain.size() - m.length);
          if (!ids) {
            if (ids.error() != kvc::errc::no_space) ++errors;
            continue;
          }
          for (std::size_t i = 0; i < ids->size(); ++i) {
            const auto p = pattern(chain[m.length + i]);
            std::copy(p.begin(), p.end(), r.device.stand_in_data((*ids)[i]).begin());
          }
          if (!r.pool->commit(chain, m.length, *ids)) ++errors;
          if (!r.pool->release_device(*ids)) ++errors;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
  CHECK(errors == 0);
  CHECK(r.pool->size() > 0);
}

TEST_CASE("block pool: a persistent SSD brings its chains back after a restart",
          "[pool][block_pool][ssd]") {
  const temp_file file("persist");
  const auto sc = persistent_ssd(file, 64);
  const auto cfg = write_through_all();
  const auto a = make_chain(1, 6);
  const auto b = make_chain(2, 3, std::vector<hash64>(a.begin(), a.begin() + 4));  // a branch
  {
    kvc::device_tier device({bb, 16, {}});
    auto host = kvc::host_tier::create({bb, 16, false});
    REQUIRE(host);
    auto ssd = kvc::ssd_tier::open(sc);
    REQUIRE(ssd);
    pool_type pool(device, *host, ssd->get(), cfg);
    for (const auto* chain : {&a, &b}) {
      auto m = pool.match(*chain);
      auto ids = pool.allocate_device(chain->size() - m.length);
      REQUIRE(ids);
      for (std::size_t i = 0; i < ids->size(); ++i) {
        const auto p = pattern((*chain)[m.length + i]);
        std::copy(p.begin(), p.end(), device.stand_in_data((*ids)[i]).begin());
      }
      auto c = pool.commit(*chain, m.length, *ids);
      REQUIRE(c);
      REQUIRE(c->job->wait());
      REQUIRE(pool.release_device(*ids));
    }
    CHECK(pool.size() == 9);
  }
  // A new process: fresh device and host, the same SSD file.
  kvc::device_tier device({bb, 16, {}});
  auto host = kvc::host_tier::create({bb, 16, false});
  REQUIRE(host);
  auto ssd = kvc::ssd_tier::open(sc);
  REQUIRE(ssd);
  CHECK((*ssd)->recovered().size() == 9);
  pool_type pool(device, *host, ssd->get(), cfg);
  CHECK(pool.stats().adopted == 9);
  CHECK(pool.stats().orphans == 0);
  CHECK(pool.size() == 9);
  for (const auto* chain : {&a, &b}) {
    auto m = pool.match(*chain);
    REQUIRE(m.length == chain->size());
    // a comes from the SSD; then b's first four blocks (a's) are on the device already.
    CHECK(m.fastest[0] == (chain == &a ? 0u : 4u));
    CHECK(m.fastest[2] == (chain == &a ? 6u : 3u));
    auto l = pool.load(*chain, m);
    REQUIRE(l);
    REQUIRE(l->wait());
    for (std::size_t i = 0; i < l->ids.size(); ++i) {
      const auto p = pattern((*chain)[i]);
      const auto got = device.stand_in_data(l->ids[i]);
      CHECK(std::equal(p.begin(), p.end(), got.begin()));
    }
    REQUIRE(pool.release_device(l->ids));
  }
}

TEST_CASE("block pool: blocks whose chain lost a link on the SSD are released, not adopted",
          "[pool][block_pool][ssd]") {
  const temp_file file("orphans");
  const auto sc = persistent_ssd(file, 16);
  const auto a = make_chain(1, 6);
  {
    auto ssd = kvc::ssd_tier::open(sc);
    REQUIRE(ssd);
    // Records written as a pool writes them: each block names its parent.
    for (std::size_t i = 0; i < a.size(); ++i) {
      const auto s = *(*ssd)->allocate();
      auto p = pattern(a[i]);
      auto job = std::make_shared<kvc::copy_job>();
      const kvc::block_copy<std::uint32_t> c{s, p.data()};
      REQUIRE((*ssd)->copy(kvc::copy_direction::from_host, std::span(&c, 1), job));
      job->seal();
      REQUIRE(job->wait());
      const auto key = kvc::to_bytes(a[i]);
      const auto parent = i > 0 ? kvc::to_bytes(a[i - 1]) : decltype(key){};
      REQUIRE((*ssd)->tag(
          s, key, i > 0 ? std::span<const std::byte>(parent) : std::span<const std::byte>()));
      if (i == 2) REQUIRE((*ssd)->release(s));  // a lost link: its record is cleared
    }
  }
  kvc::device_tier device({bb, 8, {}});
  auto host = kvc::host_tier::create({bb, 8, false});
  REQUIRE(host);
  auto ssd = kvc::ssd_tier::open(sc);
  REQUIRE(ssd);
  CHECK((*ssd)->recovered().size() == 5);
  {
    pool_type pool(device, *host, ssd->get(), {});
    CHECK(pool.stats().adopted == 2);  // a[0], a[1]
    CHECK(pool.stats().orphans == 3);  // a[3..5]: their chain is broken
    CHECK(pool.match(a).length == 2);
    CHECK((*ssd)->free_slots() == 14);
  }
}

TEST_CASE("block pool: blocks loaded from elsewhere into host slots join the cache",
          "[pool][block_pool]") {
  rig r(8, 8, 0);
  const auto chain = make_chain(1, 5);
  REQUIRE(r.compute(std::vector<hash64>(chain.begin(), chain.begin() + 2), 0));
  // Blocks 2..4 arrive from a memory node (here: written by hand) into slots the pool gives.
  auto m = r.pool->match(chain);
  REQUIRE(m.length == 2);
  auto slots = r.pool->allocate_host(3);
  REQUIRE(slots);
  for (std::size_t i = 0; i < 3; ++i) {
    const auto p = pattern(chain[2 + i]);
    std::copy(p.begin(), p.end(), r.host->data((*slots)[i]).begin());
  }
  auto added = r.pool->insert_loaded(chain, 2, *slots);
  REQUIRE(added);
  CHECK(*added == 3);
  m.pin.release();
  auto m2 = r.pool->match(chain);
  CHECK(m2.length == 5);
  CHECK(m2.fastest[0] == 2);
  CHECK(m2.fastest[1] == 3);
  m2.pin.release();
  CHECK(r.match_and_check(chain) == 5);
  // A slot the cache owns cannot be handed in again; a partly cached range releases the rest.
  const auto loc = r.pool->where(chain);
  const std::vector<std::uint32_t> owned = {loc.slot[1]};
  CHECK(r.pool->insert_loaded(chain, 4, owned).error() == kvc::errc::invalid_argument);
  auto again = r.pool->allocate_host(1);
  REQUIRE(again);
  auto dup = r.pool->insert_loaded(chain, 4, *again);
  REQUIRE(dup);
  CHECK(*dup == 0);
  CHECK(r.host->refs((*again)[0]) == 0);  // given back
}

TEST_CASE("block pool: a failed copy is never served, and a damaged SSD copy is dropped",
          "[pool][block_pool]") {
  std::vector<std::byte> gpu(2 * bb);
  bool fail_to_host = true;
  auto hook = [&](kvc::copy_direction dir, std::span<const kvc::block_copy<std::uint32_t>> copies,
                  std::function<void(const kvc::result<void>&)> done) {
    if (dir == kvc::copy_direction::to_host && fail_to_host) {
      done(kvc::fail(kvc::errc::io_error, "a copy stream error"));
      return;
    }
    for (const auto& c : copies) {
      std::byte* b = gpu.data() + std::size_t{c.slot} * bb;
      if (dir == kvc::copy_direction::to_host) {
        std::copy_n(b, bb, c.host);
      } else {
        std::copy_n(c.host, bb, b);
      }
    }
    done({});
  };
  pool_type::config cfg;
  cfg.host.mode = kvc::placement_mode::write_through;
  rig r(2, 8, 8, cfg, hook);
  r.gpu = &gpu;
  const auto a = make_chain(1, 2);
  auto c = r.compute(a, 0);  // its host copies fail
  REQUIRE(c);
  CHECK_FALSE(c->job->wait());
  fail_to_host = false;
  REQUIRE(r.compute(make_chain(2, 2), 0));  // a leaves the device: moved down, not dropped
  CHECK(r.match_and_check(a) == 2);         // the right bytes, not the failed host copy's
  CHECK(r.pool->stats().failed_copies >= 2);

  // The SSD damages a block whose only copy is there: the load fails, the copy is dropped,
  // and the engine's recomputed block is taken.
  const auto b = make_chain(3, 1);
  REQUIRE(r.compute(b, 0));
  for (std::uint64_t k = 4; k < 9; ++k) {
    REQUIRE(r.compute(make_chain(k, 2), 0));  // the host fills up: b moves on to the SSD
  }
  const auto on = r.pool->where(b);
  REQUIRE(on.slot[2] != pool_type::none);
  REQUIRE(on.slot[1] == pool_type::none);
  {
    std::fstream f(r.path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(8192 + std::size_t{on.slot[2]} * bb));
    f.write("\x01\x02\x03\x04", 4);
  }
  auto m = r.pool->match(b);
  REQUIRE(m.length == 1);
  auto l = r.pool->load(b, m);
  REQUIRE(l);
  auto w = l->wait();
  REQUIRE_FALSE(w);
  CHECK(w.error() == kvc::errc::malformed_input);
  REQUIRE(r.pool->release_device(l->ids));
  m.pin.release();
  CHECK(r.pool->match(b).length == 0);  // its only copy was bad: not matched any more
  auto again = r.compute(b, 0);         // the engine's recomputed copy is taken
  REQUIRE(again);
  CHECK(again->cached + again->present == 1);
  CHECK(r.match_and_check(b) == 1);
}

TEST_CASE("block pool: a load's wait() waits for every job, past a failed one",
          "[pool][block_pool]") {
  // Job 0 brings block 2 and fails at once; job 1 brings blocks 0 and 1 and is still running.
  pool_type::load_result l;
  l.ids = {7, 8, 9};
  l.jobs = {std::make_shared<kvc::copy_job>(), std::make_shared<kvc::copy_job>()};
  l.job_of = {1, 1, 0};
  const kvc::failure why{make_error_code(kvc::errc::io_error), "a copy stream error"};
  l.jobs[0]->finish(1, &why);  // its seal: failed
  CHECK(l.ready() == 0);
  std::atomic<bool> finished{false};
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    finished = true;
    l.jobs[1]->seal();
  });
  {
    auto w = l.wait_until(std::chrono::steady_clock::now() + std::chrono::seconds(30));
    REQUIRE_FALSE(w);
    CHECK(w.error() == kvc::errc::io_error);  // the failure, not a time-out
    CHECK(finished);                          // job 1 was waited for
    CHECK(l.ready() == 2);                    // blocks 0 and 1 arrived
  }
  late.join();

  // The same with wait(): job 1 ends after job 0 failed.
  pool_type::load_result l2;
  l2.ids = {7, 8};
  l2.jobs = {std::make_shared<kvc::copy_job>(), std::make_shared<kvc::copy_job>()};
  l2.job_of = {1, 0};
  l2.jobs[0]->finish(1, &why);
  finished = false;
  std::thread late2([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    finished = true;
    l2.jobs[1]->seal();
  });
  auto w2 = l2.wait();
  REQUIRE_FALSE(w2);
  CHECK(w2.error() == kvc::errc::io_error);
  CHECK(finished);
  CHECK(l2.ready() == 1);
  late2.join();

  // A job still running at the deadline: timed_out.
  pool_type::load_result l3;
  l3.ids = {7};
  l3.jobs = {std::make_shared<kvc::copy_job>()};
  l3.job_of = {0};
  CHECK(l3.wait_until(std::chrono::steady_clock::now()).error() == kvc::errc::timed_out);
  l3.jobs[0]->seal();
  CHECK(l3.wait());
}

TEST_CASE("block pool: leases move, loads pin for themselves, bad ids are refused",
          "[pool][block_pool]") {
  rig r(2, 3, 0);
  const auto a = make_chain(1, 2);
  REQUIRE(r.compute(a, 0));
  REQUIRE(r.compute(make_chain(2, 2), 0));  // a moves to the host
  auto m = r.pool->match(a);
  pool_type::lease moved(std::move(m.pin));
  CHECK(moved.length() == 2);
  m.pin.release();  // the moved-from lease holds nothing
  moved.release();
  // A load after the lease went: the load pins its blocks itself while it evicts for them.
  auto l = r.pool->load(a, m);
  REQUIRE(l);
  REQUIRE(l->wait());
  for (std::size_t i = 0; i < l->ids.size(); ++i) {
    const auto p = pattern(a[i]);
    CHECK(std::equal(p.begin(), p.end(), r.device.stand_in_data(l->ids[i]).begin()));
  }
  REQUIRE(r.pool->release_device(l->ids));
  // Released twice: refused, the cache's own references stay, and the blocks still load from
  // their ids.
  auto twice_released = r.pool->release_device(l->ids);
  REQUIRE_FALSE(twice_released);
  CHECK(twice_released.error() == kvc::errc::invalid_argument);
  CHECK_THAT(twice_released.message(), Catch::Contains("held by the cache alone"));
  for (const std::uint32_t id : l->ids) CHECK(r.device.refs(id) == 1);
  CHECK(r.match_and_check(a) == 2);
  // In a list with ids the caller holds, those are released all the same.
  auto spare = r.pool->allocate_device(1);  // evicts one of a's blocks from the device
  REQUIRE(spare);
  std::uint32_t cached = r.pool->where(a).slot[0];
  if (cached == pool_type::none) cached = r.pool->where(std::span(a).first(1)).slot[0];
  REQUIRE(cached != pool_type::none);
  const std::vector<std::uint32_t> mixed = {cached, (*spare)[0]};
  CHECK(r.pool->release_device(mixed).error() == kvc::errc::invalid_argument);
  CHECK(r.device.refs((*spare)[0]) == 0);
  CHECK(r.device.refs(cached) == 1);
  // Commit ids: one the cache owns, or the same id twice, are refused.
  const auto loc = r.pool->where(a);
  REQUIRE(loc.slot[0] != pool_type::none);
  const auto c = make_chain(3, 2);
  const std::vector<std::uint32_t> owned = {loc.slot[0], loc.slot[0]};
  CHECK(r.pool->commit(c, 0, owned).error() == kvc::errc::invalid_argument);
  auto one = r.pool->allocate_device(1);
  REQUIRE(one);
  const std::vector<std::uint32_t> twice = {(*one)[0], (*one)[0]};
  CHECK(r.pool->commit(c, 0, twice).error() == kvc::errc::invalid_argument);
  const std::vector<std::uint32_t> host_owned = {r.pool->where(std::span(a).first(1)).slot[1]};
  if (host_owned[0] != pool_type::none) {
    CHECK(r.pool->release_host(host_owned).error() == kvc::errc::invalid_argument);
  }
  REQUIRE(r.pool->release_device(*one));
}

TEST_CASE("block pool: a second pool on the same SSD adopts nothing stale",
          "[pool][block_pool][ssd]") {
  const temp_file file("second");
  const auto sc = persistent_ssd(file, 8);
  const auto cfg = write_through_all();
  {
    kvc::device_tier device({bb, 4, {}});
    auto host = kvc::host_tier::create({bb, 4, false});
    REQUIRE(host);
    auto ssd = kvc::ssd_tier::open(sc);
    REQUIRE(ssd);
    pool_type pool(device, *host, ssd->get(), cfg);
    auto ids = pool.allocate_device(2);
    REQUIRE(ids);
    auto c = pool.commit(make_chain(1, 2), 0, *ids);
    REQUIRE(c);
    REQUIRE(c->job->wait());
    REQUIRE(pool.release_device(*ids));
  }
  kvc::device_tier device({bb, 4, {}});
  auto host = kvc::host_tier::create({bb, 4, false});
  REQUIRE(host);
  auto ssd = kvc::ssd_tier::open(sc);
  REQUIRE(ssd);
  {
    pool_type first(device, *host, ssd->get(), cfg);
    CHECK(first.stats().adopted == 2);
  }
  CHECK((*ssd)->recovered().empty());  // handed over once
  pool_type second(device, *host, ssd->get(), cfg);
  CHECK(second.stats().adopted == 0);
}

TEST_CASE("block pool: events name each copy stored and removed, with parent and label", "[pool]") {
  std::vector<kvc::pool_event<hash64>> seen;
  pool_type::config cfg;
  cfg.host.mode = kvc::placement_mode::write_through;
  cfg.on_event = [&](const kvc::pool_event<hash64>& e) { seen.push_back(e); };
  rig r(8, 8, 0, cfg);
  const auto chain = make_chain(1, 3);
  auto ids = r.pool->allocate_device(3);
  REQUIRE(ids);
  auto c = r.pool->commit(chain, 0, *ids, 77);
  REQUIRE(c);
  REQUIRE(c->job->wait());
  REQUIRE(r.pool->release_device(*ids));
  REQUIRE(seen.size() == 6);
  for (const auto& e : seen) {
    CHECK(e.what == kvc::pool_event<hash64>::kind::stored);
    CHECK(e.label == 77);
    const auto at = std::find(chain.begin(), chain.end(), e.hash);
    REQUIRE(at != chain.end());
    CHECK(e.has_parent == (at != chain.begin()));
    if (e.has_parent) CHECK(e.parent == *(at - 1));
  }
  seen.clear();
  // The host copies leave first (they have another copy), then the last one of each block.
  REQUIRE(*r.pool->evict(kvc::tier_kind::host, 8) == 3);
  REQUIRE(seen.size() == 3);
  for (const auto& e : seen) {
    CHECK(e.what == kvc::pool_event<hash64>::kind::removed);
    CHECK(e.tier == kvc::tier_kind::host);
  }
  // Last copies leaving the device move to the host: removed there, stored here.
  CHECK(*r.pool->evict(kvc::tier_kind::device, 8) == 3);
  CHECK(r.pool->size() == 3);
  REQUIRE(seen.size() == 9);
  CHECK(std::count_if(seen.begin() + 3, seen.end(), [](const auto& e) {
          return e.tier == kvc::tier_kind::host && e.what == kvc::pool_event<hash64>::kind::stored;
        }) == 3);
  CHECK(*r.pool->evict(kvc::tier_kind::host, 8) == 3);  // nothing below: the blocks leave
  CHECK(r.pool->size() == 0);
  CHECK(seen.size() == 12);
  auto remote = r.pool->evict(kvc::tier_kind::remote, 1);
  REQUIRE_FALSE(remote);
  CHECK(remote.error() == kvc::errc::invalid_argument);
}

TEST_CASE("block pool: explicit eviction spares pinned blocks and blocks the engine holds",
          "[pool]") {
  rig r(8, 8, 0);
  const auto a = make_chain(1, 2), b = make_chain(2, 2);
  REQUIRE(r.compute(a, 0));
  REQUIRE(r.compute(b, 0));
  auto m = r.pool->match(a);  // a pinned
  REQUIRE(m.length == 2);
  auto held = r.pool->allocate_device(1);  // not cached: never a victim
  REQUIRE(held);
  CHECK(*r.pool->evict(kvc::tier_kind::device, 8) == 2);  // b's, moved to the host
  CHECK(r.pool->where(b).slot[pool_type::device_index] == pool_type::none);
  CHECK(r.pool->where(b).slot[pool_type::host_index] != pool_type::none);
  CHECK(r.pool->where(a).slot[pool_type::device_index] != pool_type::none);
  m.pin.release();
  CHECK(*r.pool->evict(kvc::tier_kind::device, 8) == 2);
  CHECK(*r.pool->evict(kvc::tier_kind::ssd, 8) == 0);  // no SSD tier
  REQUIRE(r.pool->release_device(*held));
}

TEST_CASE("block pool: host copies for publishing, and loads of a range with per-block jobs",
          "[pool]") {
  rig r(8, 8, 0);
  const auto chain = make_chain(3, 4);
  REQUIRE(r.compute(chain, 0));  // write-back: device copies only
  CHECK(r.pool->where(chain).slot[pool_type::host_index] == pool_type::none);
  auto hc = r.pool->host_copies(chain, 1);
  REQUIRE(hc);
  REQUIRE(hc->slots.size() == 3);
  REQUIRE(hc->wait());
  for (std::size_t i = 0; i < 3; ++i) {
    const auto p = pattern(chain[1 + i]);
    const auto got = r.host->data(hc->slots[i]);
    CHECK(std::equal(p.begin(), p.end(), got.begin()));
  }
  CHECK(hc->pin.length() == 4);
  // Pinned: the host copies stay, whatever evicts.
  CHECK(*r.pool->evict(kvc::tier_kind::host, 8) == 0);
  hc->pin.release();
  // Asked again, the same copies are handed out, nothing copied.
  auto again = r.pool->host_copies(chain, 1);
  REQUIRE(again);
  CHECK(again->slots == hc->slots);
  again->pin.release();

  // Blocks 2 and 3 from the host (their device copies evicted), block 1 shared on the device.
  auto m = r.pool->match(chain);
  REQUIRE(m.length == 4);
  auto part = r.pool->load(chain, m, 4, 1);
  REQUIRE(part);
  REQUIRE(part->ids.size() == 3);
  REQUIRE(part->job_of.size() == 3);
  REQUIRE(part->wait());
  CHECK(part->ready() == 3);
  REQUIRE(r.pool->release_device(part->ids));
  auto beyond = r.pool->load(chain, m, 2, 3);
  REQUIRE_FALSE(beyond);
  CHECK(beyond.error() == kvc::errc::invalid_argument);
}

TEST_CASE("block pool: insert_and_load caches arriving blocks and puts them on the device",
          "[pool]") {
  rig r(8, 8, 0);
  const auto chain = make_chain(4, 3);
  auto slots = r.pool->allocate_host(3);
  REQUIRE(slots);
  for (std::size_t i = 0; i < 3; ++i) {
    const auto p = pattern(chain[i]);
    std::copy(p.begin(), p.end(), r.host->data((*slots)[i]).begin());
  }
  auto l = r.pool->insert_and_load(chain, 0, *slots, 5);
  REQUIRE(l);
  REQUIRE(l->ids.size() == 3);
  REQUIRE(l->wait());
  for (std::size_t i = 0; i < 3; ++i) {
    const auto p = pattern(chain[i]);
    const auto got = r.device_bytes(l->ids[i]);
    CHECK(std::equal(p.begin(), p.end(), got.begin()));
  }
  REQUIRE(r.pool->release_device(l->ids));
  CHECK(r.match_and_check(chain) == 3);
  // A slot not from allocate_host() is refused and nothing is taken.
  auto bad = r.pool->insert_and_load(make_chain(5, 1), 0, std::vector<std::uint32_t>{0}, 0);
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == kvc::errc::invalid_argument);
}

TEST_CASE("block pool: a write-back holds a last copy until its publish is settled",
          "[pool][block_pool]") {
  struct request {
    std::vector<hash64> chain;
    std::size_t published;
    std::uint32_t label;
  };
  std::vector<request> asked;
  pool_type::config cfg;
  cfg.host.mode = kvc::placement_mode::write_through;
  cfg.on_write_back = [&](std::vector<hash64>&& chain, std::size_t published, std::uint32_t label) {
    asked.push_back({std::move(chain), published, label});
  };
  rig r(4, 4, 0, std::move(cfg));
  const auto a = make_chain(1, 3);
  auto ids = r.pool->allocate_device(3);
  REQUIRE(ids);
  REQUIRE(r.pool->commit(a, 0, *ids, /*label=*/7));
  REQUIRE(r.pool->release_device(*ids));
  // Other copies may go: the host copies stay, nothing is asked.
  CHECK(*r.pool->evict(kvc::tier_kind::device, 3) == 3);
  CHECK(asked.empty());
  // The last copies: the leaf is held and its publish asked for once, with its whole chain.
  CHECK(*r.pool->evict(kvc::tier_kind::host, 3) == 0);
  CHECK(*r.pool->evict(kvc::tier_kind::host, 3) == 0);
  REQUIRE(asked.size() == 1);
  CHECK(asked[0].chain == a);
  CHECK(asked[0].published == 0);
  CHECK(asked[0].label == 7);
  CHECK(r.pool->stats().write_backs == 1);
  CHECK(r.pool->stats().holding == 1);
  // A publish that stored the first block only: it is published, the rest of the chain given up
  // (the held leaf and its parent) and free to leave without asking again.
  CHECK(r.pool->mark_published(a, 1) == 1);
  CHECK(r.pool->settle_publish(a, 1) == 2);
  CHECK(r.pool->stats().holding == 0);
  CHECK(r.pool->match(a).published == 1);
  CHECK(*r.pool->evict(kvc::tier_kind::host, 3) == 3);
  CHECK(r.pool->size() == 0);
  CHECK(asked.size() == 1);
  CHECK(r.pool->stats().unpublished_drops == 2);  // the leaf and its parent
  asked.clear();

  // A chain under a published prefix is asked for with that prefix counted; a mark without
  // giving up keeps the rest held.
  const auto b = make_chain(2, 2, make_chain(3, 1));
  auto bid = r.pool->allocate_device(3);
  REQUIRE(bid);
  REQUIRE(r.pool->commit(b, 0, *bid));
  REQUIRE(r.pool->release_device(*bid));
  CHECK(r.pool->mark_published(b, 1) == 1);
  CHECK(*r.pool->evict(kvc::tier_kind::device, 3) == 3);
  CHECK(*r.pool->evict(kvc::tier_kind::host, 3) == 0);
  REQUIRE(asked.size() == 1);
  CHECK(asked[0].chain == b);
  CHECK(asked[0].published == 1);
  CHECK(r.pool->mark_published(b, 2) == 1);
  CHECK(*r.pool->evict(kvc::tier_kind::host, 3) == 0);  // the leaf is still publishing
  CHECK(r.pool->mark_published(b, 3) == 1);
  CHECK(r.pool->settle_publish(b, 3) == 0);  // nothing past it
  CHECK(*r.pool->evict(kvc::tier_kind::host, 3) == 3);
  CHECK(asked.size() == 1);
  CHECK(r.pool->stats().unpublished_drops == 2);  // a's, before
  // A lookup that found less: the marks past it go.
  const auto c = make_chain(4, 2);
  auto cid = r.pool->allocate_device(2);
  REQUIRE(cid);
  REQUIRE(r.pool->commit(c, 0, *cid));
  REQUIRE(r.pool->release_device(*cid));
  CHECK(r.pool->mark_published(c, 2) == 2);
  CHECK(r.pool->mark_unpublished(c, 1) == 1);
  CHECK(r.pool->match(c).published == 1);
}

TEST_CASE("block pool: write-backs are capped, and a throwing hook holds nothing",
          "[pool][block_pool]") {
  std::size_t asked = 0;
  bool fail_hook = false;
  pool_type::config cfg;
  cfg.host.mode = kvc::placement_mode::write_through;
  cfg.max_write_backs = 1;
  cfg.on_write_back = [&](std::vector<hash64>&&, std::size_t, std::uint32_t) {
    if (fail_hook) throw std::bad_alloc();
    ++asked;
  };
  rig r(4, 4, 0, std::move(cfg));
  for (std::uint64_t k = 0; k < 2; ++k) REQUIRE(r.compute(make_chain(10 + k, 1), 0));
  CHECK(*r.pool->evict(kvc::tier_kind::device, 4) == 2);
  // One is held (the cap); the other leaves unpublished, counted.
  CHECK(*r.pool->evict(kvc::tier_kind::host, 4) == 1);
  CHECK(asked == 1);
  CHECK(r.pool->stats().holding == 1);
  CHECK(r.pool->stats().unpublished_drops == 1);
  // A hook that throws: the exception propagates and the block is not held.
  REQUIRE(r.compute(make_chain(20, 1), 0));
  CHECK(*r.pool->evict(kvc::tier_kind::device, 4) == 1);
  CHECK(r.pool->settle_publish(make_chain(10, 1), 0) +
            r.pool->settle_publish(make_chain(11, 1), 0) ==
        1);
  fail_hook = true;
  // The settled block leaves; asking for chain 20's publish throws.
  CHECK_THROWS_AS((void)r.pool->evict(kvc::tier_kind::host, 4), std::bad_alloc);
  CHECK(r.pool->stats().holding == 0);
  fail_hook = false;
  CHECK(*r.pool->evict(kvc::tier_kind::host, 4) == 0);  // asked again, and held
  CHECK(asked == 2);
  CHECK(r.pool->stats().holding == 1);
}

TEST_CASE("block pool: placements are parsed from their names, and bad ones refused",
          "[pool][block_pool]") {
  using kvc::placement_mode;
  CHECK(kvc::parse_placement("write_back")->mode == placement_mode::write_back);
  CHECK(kvc::parse_placement("write_through")->mode == placement_mode::write_through);
  auto two = kvc::parse_placement("selective");
  REQUIRE(two);
  CHECK(two->mode == placement_mode::selective);
  CHECK(two->after_uses == 2);
  auto five = kvc::parse_placement("selective:5");
  REQUIRE(five);
  CHECK(five->after_uses == 5);
  for (const char* bad : {"", "writeback", "selective:", "selective:0", "selective:x",
                          "selective:3x", "selective5", "selective:99999999999"}) {
    auto p = kvc::parse_placement(bad);
    INFO(bad);
    REQUIRE_FALSE(p);
    CHECK(p.error() == kvc::errc::invalid_config);
    CHECK_THAT(p.message(), Catch::Contains("valid: write_back, write_through"));
  }
}
