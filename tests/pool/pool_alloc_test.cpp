// The block pool when memory runs out midway through host_copies() (what a publish asks for:
// host copies of blocks on the device or the SSD): the n-th allocation fails, for n = 1, 2, ...
// until a call makes fewer. The copies it adopted before the failure never started: they leave
// again, nothing stays busy, every block still loads with its bytes, and the pool's destructor
// returns. Its own binary: the replaced operator new is global, and not built under the
// sanitizers, whose allocators it would bypass.
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <kvc/pool/block_pool.hpp>
#include <memory>
#include <new>
#include <vector>

#include "../support/failing_allocation.hpp"
#include "../support/unique_name.hpp"

namespace {

namespace fa = kvc_test::failing_allocation;
using kvc::hash64;
using pool_type = kvc::block_pool<hash64>;
constexpr std::size_t bb = 256;

std::byte pattern(hash64 h, std::size_t i) { return static_cast<std::byte>(h.value * 7 + i); }

std::vector<hash64> chain_of(std::uint64_t id, std::size_t n) {
  std::vector<hash64> c;
  for (std::size_t i = 0; i < n; ++i) c.push_back(hash64{id * 1000 + i + 1});
  return c;
}

}  // namespace

TEST_CASE("block pool: host copies that run out of memory midway leave nothing busy",
          "[pool][alloc]") {
  fa::foreground_thread = true;
  bool completed = false;
  std::size_t failures = 0;
  for (std::uint32_t n = 1; n < 500 && !completed; ++n) {
    INFO("allocation " << n << " fails");
    const auto path =
        std::filesystem::temp_directory_path() / kvc_test::unique_name("kvc-pool-alloc");
    {
      kvc::device_tier device({bb, 16, {}});
      auto host = kvc::host_tier::create({bb, 8, false});
      REQUIRE(host);
      kvc::ssd_tier_config sc;
      sc.path = path.string();
      sc.block_bytes = bb;
      sc.blocks = 64;
      auto ssd = kvc::ssd_tier::open(sc);
      REQUIRE(ssd);
      {
        pool_type pool(device, *host, ssd->get(), {});  // write-back: device copies only
        // Two chains on the device, b's blocks copied to the host too: host_copies() of a takes
        // the 4 free host slots, then moves 2 of b's copies down to the SSD for the rest.
        const auto a = chain_of(1, 6), b = chain_of(2, 4);
        for (const auto* c : {&a, &b}) {
          auto ids = pool.allocate_device(c->size());
          REQUIRE(ids);
          for (std::size_t i = 0; i < ids->size(); ++i) {
            auto bytes = device.stand_in_data((*ids)[i]);
            for (std::size_t k = 0; k < bb; ++k) bytes[k] = pattern((*c)[i], k);
          }
          REQUIRE(pool.commit(*c, 0, *ids));
          REQUIRE(pool.release_device(*ids));
        }
        auto hb = pool.host_copies(b, 0);
        REQUIRE(hb);
        REQUIRE(hb->wait());
        hb->pin.release();

        fa::failed_one = false;
        fa::allocations_left = n;
        try {
          auto hc = pool.host_copies(a, 0);
          fa::allocations_left = 0;
          REQUIRE(hc);
          // A copy that could not start for want of memory fails its job (no throw).
          const auto copied = hc->wait();
          if (!fa::failed_one) REQUIRE(copied);
          completed = !fa::failed_one;
        } catch (const std::bad_alloc&) {
          CHECK(fa::failed_one);
        }
        fa::allocations_left = 0;
        if (!completed) ++failures;
        // Every block of both chains still loads with its bytes, and host copies can be made.
        for (const auto* c : {&a, &b}) {
          auto m = pool.match(*c);
          REQUIRE(m.length == c->size());
          auto l = pool.load(*c, m);
          REQUIRE(l);
          REQUIRE(l->wait());
          for (std::size_t i = 0; i < l->ids.size(); ++i) {
            const auto bytes = device.stand_in_data(l->ids[i]);
            bool same = true;
            for (std::size_t k = 0; k < bb; ++k) same = same && bytes[k] == pattern((*c)[i], k);
            CHECK(same);
          }
          REQUIRE(pool.release_device(l->ids));
        }
        auto again = pool.host_copies(a, 0);
        REQUIRE(again);
        CHECK(again->slots.size() == a.size());
        REQUIRE(again->wait());
      }  // the pool's destructor waits for nothing left busy
    }
    std::filesystem::remove(path);
  }
  CHECK(completed);
  CHECK(failures > 0);
}
