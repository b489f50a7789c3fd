// The cache manager when memory runs out: every allocation a commit or a request cycle makes on
// the engine's thread, or that the manager's own threads make meanwhile (movers publishing and
// bringing blocks, the event thread), is made to fail in turn (a replaced operator new), and
// nothing may stay held or in use afterwards, nor may a background thread end the process. Its
// own binary: the replaced operator new is global, and not built under the sanitizers, whose
// allocators it would bypass.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <kvc/manager.hpp>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../index/index_fixture.hpp"
#include "../support/failing_allocation.hpp"

namespace {

using namespace kvc_test::failing_allocation;

using manager = kvc::cache_manager<kvc::shm_transport>;
constexpr std::size_t bb = 4096;
constexpr std::uint32_t bs = 4;

std::vector<kvc::token_id> prompt(std::uint32_t id, std::size_t tokens) {
  std::vector<kvc::token_id> out;
  for (std::size_t i = 0; i < tokens; ++i)
    out.push_back(id * 100000 + static_cast<kvc::token_id>(i));
  return out;
}

// A manager over the memory node through t, publishing as `mode` says.
manager::config alloc_config(const kvc_test::index_nodes& nodes, kvc::shm_transport& t,
                             std::size_t device, std::size_t host, std::uint64_t seed,
                             kvc::placement_mode mode) {
  manager::config cfg;
  cfg.block_size = bs;
  cfg.model_salt = "manager-alloc-test";
  cfg.block_bytes = bb;
  cfg.device.blocks = device;
  cfg.host.blocks = host;
  cfg.host.huge_pages = false;
  cfg.remote.transport = &t;
  cfg.remote.index.index = nodes.config(seed);
  cfg.remote.place = {mode, 2};
  return cfg;
}

// Where allocations fail: on the engine's thread (the calls it makes), or on the manager's own
// threads while the calls run (a mover publishing or bringing blocks from the memory node).
enum class failing_on { engine, background };

// Runs `calls` with the n-th allocation on the engine's thread (or of the background threads)
// failing; whether one did. A bad_alloc on the engine's thread (the only exception expected) is
// caught here, as the engine would; one on a background thread must not reach the engine.
template <class Calls>
bool with_allocation_failing(std::uint32_t n, failing_on where, Calls&& calls) {
  foreground_thread = true;  // the engine's
  failed_one = false;
  background_failed = false;
  if (where == failing_on::engine) {
    allocations_left = n;
  } else {
    background_left = n;
  }
  try {
    calls();
  } catch (const std::bad_alloc&) {
    CHECK(failed_one);
  }
  allocations_left = 0;
  background_left = 0;
  return failed_one || background_failed;
}

}  // namespace

TEST_CASE("manager: a commit or publish that runs out of memory leaves no block held for it",
          "[manager][alloc]") {
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto t = nodes.attach();
  auto made =
      manager::create(alloc_config(nodes, *t, 64, 64, 1, kvc::placement_mode::write_through));
  REQUIRE(made);
  auto& mgr = **made;
  // On the engine's thread, the commit's own allocations; on the manager's, its publish's (a
  // mover's) while the commit runs and the manager is flushed.
  const auto where = GENERATE(failing_on::engine, failing_on::background);
  INFO("failing on " << (where == failing_on::engine ? "the engine's thread" : "the manager's"));
  std::size_t failures = 0;
  bool succeeded = false;
  // The n-th allocation fails, for n = 1, 2, ... until a commit and its publish make fewer.
  for (std::uint32_t n = 1; n < 1000 && !succeeded; ++n) {
    INFO("allocation " << n << " fails");
    auto m = mgr.match(prompt(n, 4 * bs));
    REQUIRE(m);
    auto ids = mgr.allocate(m->blocks());
    REQUIRE(ids);
    if (with_allocation_failing(n, where, [&] {
          succeeded = static_cast<bool>(mgr.commit(*m, 0, *ids));
          mgr.flush();
        })) {
      ++failures;
      succeeded = false;
    }
    mgr.flush();
    // Whatever became of the commit, no block stays held for a publish that will not run.
    CHECK(mgr.stats().pool.holding == 0);
    REQUIRE(mgr.release(*m, nullptr, *ids));
  }
  CHECK(succeeded);
  CHECK(failures > 0);
  // A publish given up is counted, not silent.
  if (where == failing_on::background) CHECK(mgr.stats().mover_failures > 0);
}

// The engine's whole request cycle, a prompt whose first half is in host memory and the rest in
// the memory node only: match, load (a mover brings the rest), allocate, commit, release, with the
// n-th allocation on the engine's thread (or of the manager's own threads) failing, for n = 1,
// 2, ... until a cycle makes fewer. The engine does what it would after an exception: it ends the
// request with what it has (a mover that runs out of memory ends the load short). Afterwards
// nothing is left held or in use: a request that needs the whole device is served.
TEST_CASE("manager: a request cycle that runs out of memory anywhere leaks no device block",
          "[manager][alloc]") {
  constexpr std::size_t device_blocks = 16;
  constexpr std::size_t host_blocks = 16;
  kvc_test::index_nodes nodes(1, std::uint64_t{32} << 20, bb);
  auto t = nodes.attach();
  const auto mode = GENERATE(kvc::placement_mode::write_through, kvc::placement_mode::write_back);
  const auto where = GENERATE(failing_on::engine, failing_on::background);
  INFO("placement " << static_cast<int>(mode) << ", failing on "
                    << (where == failing_on::engine ? "the engine's thread" : "the manager's"));
  // Outlives the manager (even one left behind on failure), whose listener counts in it.
  static std::atomic<std::size_t> events_heard;
  events_heard = 0;
  auto made = manager::create(alloc_config(nodes, *t, device_blocks, host_blocks, 2, mode));
  REQUIRE(made);
  auto& mgr = **made;
  // A listener: its events are queued under the pool's lock and delivered by the event thread,
  // both of which allocate.
  mgr.on_event([](const manager::event&) { ++events_heard; });
  // One request, start to end; no allocation fails here.
  const auto serve = [&](const std::vector<kvc::token_id>& tokens) {
    auto m = mgr.match(tokens);
    REQUIRE(m);
    auto l = mgr.load(*m);
    REQUIRE(l);
    const std::size_t usable = l->wait();
    std::vector<std::uint32_t> ids;
    if (usable < m->blocks()) {
      auto got = mgr.allocate(m->blocks() - usable);
      REQUIRE(got);
      ids = *got;
      REQUIRE(mgr.commit(*m, usable, ids));
    }
    REQUIRE(mgr.release(*m, &*l, ids));
    return usable;
  };
  std::size_t failures = 0;
  bool succeeded = false;
  for (std::uint32_t n = 1; n < 2000 && !succeeded; ++n) {
    INFO("allocation " << n << " of the cycle fails");
    const auto tokens = prompt(1000 + n, 4 * bs);
    serve(tokens);  // published (at commit, or as its last copies leave) ...
    for (int round = 0; round < 2; ++round) {  // ... and no longer local
      mgr.flush();
      (void)mgr.evict(kvc::tier_kind::device, device_blocks);
      (void)mgr.evict(kvc::tier_kind::host, host_blocks);
    }
    mgr.flush();
    // Its first half local again: the cycle below loads that half from the host and brings
    // the rest from the memory node.
    REQUIRE(serve(std::vector<kvc::token_id>(tokens.begin(), tokens.begin() + 2 * bs)) == 2);
    mgr.flush();
    (void)mgr.evict(kvc::tier_kind::device, device_blocks);  // on the host: loads copy it up
    // Other blocks fill the device and the host, so that the cycle's slots are taken by
    // evicting (copies moving down, write-backs) while allocations fail.
    serve(prompt(500000 + n, (device_blocks - 2) * bs));
    mgr.flush();
    std::optional<manager::prefix_match> m;
    std::optional<manager::prefix_load> l;
    std::vector<std::uint32_t> ids;
    const bool failed = with_allocation_failing(n, where, [&] {
      auto got_m = mgr.match(tokens);
      if (got_m) m.emplace(std::move(*got_m));
      if (m) {
        auto got_l = mgr.load(*m);
        if (got_l) l.emplace(std::move(*got_l));
      }
      if (l) {
        const std::size_t usable = l->wait();
        if (usable < m->blocks()) {
          auto got = mgr.allocate(m->blocks() - usable);
          if (got) {
            ids = *got;
            (void)mgr.commit(*m, usable, ids);
          }
        }
      }
      // The movers' work (the publish of what was committed) runs while armed too.
      mgr.flush();
      succeeded = m && l && !failed_one && !background_failed;
    });
    if (failed) {
      ++failures;
      succeeded = false;
    }
    if (m) REQUIRE(mgr.release(*m, l ? &*l : nullptr, ids));
    mgr.flush();
    CHECK(mgr.stats().pool.holding == 0);
    // Nothing stays in use: the whole device can be allocated again, once the copies still
    // running from it (write-through to the host) are done: a leaked id never comes back.
    bool whole_device = false;
    for (int i = 0; i < 500 && !whole_device; ++i) {
      mgr.flush();
      (void)mgr.evict(kvc::tier_kind::device, device_blocks);
      auto got = mgr.allocate(device_blocks);
      if (got) {
        whole_device = true;
        auto none = mgr.match(prompt(999999, 0));
        REQUIRE(none);
        REQUIRE(mgr.release(*none, nullptr, *got));
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    // Nor host slots: a mover's slots given back (held ones leave once their publish ends).
    bool whole_host = false;
    for (int i = 0; i < 500 && whole_device && !whole_host; ++i) {
      mgr.flush();
      auto got = mgr.pool().allocate_host(host_blocks);
      if (got) {
        whole_host = true;
        REQUIRE(mgr.pool().release_host(*got));
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    if (!whole_device || !whole_host) {
      // A copy that never ends would also hang the manager's destructor: leave it behind.
      (void)made->release();
      FAIL((whole_device ? "host slots" : "device blocks")
           << " stay in use after allocation " << n << " failed");
    }
  }
  CHECK(succeeded);
  CHECK(failures > 0);
  // Work given up on the manager's threads is counted, and the listener heard the rest.
  if (where == failing_on::background) CHECK(mgr.stats().mover_failures > 0);
  CHECK(events_heard > 0);
}
