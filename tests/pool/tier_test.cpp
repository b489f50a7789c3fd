// Tests of the block pool's tiers (kvc/pool/): one suite over every StorageTier model (slots,
// references, copies, errors, many threads), then each tier's own behaviour and copy_job.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <kvc/pool/device_tier.hpp>
#include <kvc/pool/host_tier.hpp>
#include <kvc/pool/ssd_tier.hpp>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "../support/unique_name.hpp"

namespace {

constexpr std::size_t block_bytes = 256;
constexpr std::size_t blocks = 64;

template <class Tier>
std::unique_ptr<Tier> make_tier();
template <>
std::unique_ptr<kvc::host_tier> make_tier<kvc::host_tier>() {
  auto t = kvc::host_tier::create({block_bytes, blocks, true});
  REQUIRE(t);
  return std::make_unique<kvc::host_tier>(std::move(*t));
}
template <>
std::unique_ptr<kvc::device_tier> make_tier<kvc::device_tier>() {
  return std::make_unique<kvc::device_tier>(kvc::device_tier_config{block_bytes, blocks, {}});
}

// Slot files of the SSD tiers made here, removed when the tests end.
struct scratch_files {
  std::vector<std::filesystem::path> paths;
  ~scratch_files() {
    for (const auto& p : paths) std::filesystem::remove(p);
  }
  std::filesystem::path next() {
    paths.push_back(std::filesystem::temp_directory_path() /
                    (kvc_test::unique_name("kvc-tier-test") + ".blocks"));
    std::filesystem::remove(paths.back());
    return paths.back();
  }
};
scratch_files scratch;

template <>
std::unique_ptr<kvc::ssd_tier> make_tier<kvc::ssd_tier>() {
  kvc::ssd_tier_config cfg;
  cfg.path = scratch.next().string();
  cfg.block_bytes = block_bytes;
  cfg.blocks = blocks;
  auto t = kvc::ssd_tier::open(cfg);
  REQUIRE(t);
  return std::move(*t);
}

std::vector<std::byte> pattern(std::size_t seed) {
  std::vector<std::byte> v(block_bytes);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::byte>((seed * 131 + i) & 0xff);
  return v;
}

// Copies one block through the tier and waits for it.
template <class Tier>
kvc::result<void> copy_one(Tier& t, kvc::copy_direction dir, typename Tier::slot s,
                           std::byte* host) {
  auto job = std::make_shared<kvc::copy_job>();
  const kvc::block_copy<typename Tier::slot> c{s, host};
  if (auto ok = t.copy(dir, std::span(&c, 1), job); !ok) return ok;
  job->seal();
  return job->wait();
}

}  // namespace

TEMPLATE_TEST_CASE("a tier hands out every slot once, then says it is full", "[pool][tier]",
                   kvc::host_tier, kvc::device_tier, kvc::ssd_tier) {
  auto t = make_tier<TestType>();
  CHECK(t->capacity() == blocks);
  CHECK(t->block_bytes() == block_bytes);
  std::set<std::uint32_t> held;
  for (std::size_t i = 0; i < blocks; ++i) {
    auto s = t->allocate();
    REQUIRE(s);
    CHECK(*s < blocks);
    CHECK(held.insert(*s).second);
    CHECK(t->refs(*s) == 1);
  }
  CHECK(t->free_slots() == 0);
  auto full = t->allocate();
  REQUIRE_FALSE(full);
  CHECK(full.error() == kvc::errc::no_space);
  CHECK(full.message().find("64 slots") != std::string::npos);
  // A released slot comes back; nothing else does.
  REQUIRE(t->release(17));
  auto again = t->allocate();
  REQUIRE(again);
  CHECK(*again == 17);
  for (std::uint32_t s : held) REQUIRE(t->release(s));
  CHECK(t->free_slots() == blocks);
}

TEMPLATE_TEST_CASE("a tier refuses double releases and slots it does not hold", "[pool][tier]",
                   kvc::host_tier, kvc::device_tier, kvc::ssd_tier) {
  auto t = make_tier<TestType>();
  auto s = t->allocate();
  REQUIRE(s);
  REQUIRE(t->share(*s));
  CHECK(t->refs(*s) == 2);
  REQUIRE(t->release(*s));
  CHECK(t->free_slots() == blocks - 1);  // still held once
  REQUIRE(t->release(*s));
  CHECK(t->free_slots() == blocks);
  auto twice = t->release(*s);
  REQUIRE_FALSE(twice);
  CHECK(twice.error() == kvc::errc::invalid_argument);
  CHECK(twice.message().find("not allocated") != std::string::npos);
  CHECK(t->release(static_cast<std::uint32_t>(blocks)).error() == kvc::errc::invalid_argument);
  CHECK(t->share(3).error() == kvc::errc::invalid_argument);
  CHECK(t->free_slots() == blocks);  // the refusals changed nothing
}

TEMPLATE_TEST_CASE("a tier copies blocks to and from host memory", "[pool][tier]", kvc::host_tier,
                   kvc::device_tier, kvc::ssd_tier) {
  auto t = make_tier<TestType>();
  std::vector<std::uint32_t> slots;
  std::vector<std::vector<std::byte>> src;
  std::vector<kvc::block_copy<std::uint32_t>> in;
  for (std::size_t i = 0; i < 8; ++i) {
    auto s = t->allocate();
    REQUIRE(s);
    slots.push_back(*s);
    src.push_back(pattern(i));
  }
  for (std::size_t i = 0; i < 8; ++i) in.push_back({slots[i], src[i].data()});
  auto job = std::make_shared<kvc::copy_job>();
  REQUIRE(t->copy(kvc::copy_direction::from_host, in, job));
  CHECK_FALSE(job->done());  // open until sealed
  job->seal();
  REQUIRE(job->wait());
  // Back out in reverse order into fresh buffers.
  std::vector<std::vector<std::byte>> out(8, std::vector<std::byte>(block_bytes));
  std::vector<kvc::block_copy<std::uint32_t>> back;
  for (std::size_t i = 8; i-- > 0;) back.push_back({slots[i], out[i].data()});
  auto job2 = std::make_shared<kvc::copy_job>();
  REQUIRE(t->copy(kvc::copy_direction::to_host, back, job2));
  job2->seal();
  REQUIRE(job2->wait_until(std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  for (std::size_t i = 0; i < 8; ++i) CHECK(out[i] == src[i]);
}

TEMPLATE_TEST_CASE("a copy naming a slot not held starts nothing", "[pool][tier]", kvc::host_tier,
                   kvc::device_tier, kvc::ssd_tier) {
  auto t = make_tier<TestType>();
  auto s = t->allocate();
  REQUIRE(s);
  const auto src = pattern(1);
  std::vector<std::byte> buf(block_bytes);
  REQUIRE(copy_one(*t, kvc::copy_direction::from_host, *s, const_cast<std::byte*>(src.data())));
  const std::uint32_t other = *s == 0 ? 1 : 0;  // never allocated
  const std::vector<kvc::block_copy<std::uint32_t>> bad = {{*s, buf.data()}, {other, buf.data()}};
  auto job = std::make_shared<kvc::copy_job>();
  auto r = t->copy(kvc::copy_direction::to_host, bad, job);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::invalid_argument);
  CHECK(buf == std::vector<std::byte>(block_bytes));  // the valid first copy did not run either
  job->seal();
  CHECK(job->done());
  CHECK(job->failed() == 0);
  const std::vector<kvc::block_copy<std::uint32_t>> null_buffer = {{*s, nullptr}};
  CHECK(t->copy(kvc::copy_direction::to_host, null_buffer, job).error() ==
        kvc::errc::invalid_argument);
}

TEMPLATE_TEST_CASE("many threads allocate, copy and release without sharing a slot",
                   "[pool][tier][threads]", kvc::host_tier, kvc::device_tier, kvc::ssd_tier) {
  auto t = make_tier<TestType>();
  std::vector<std::atomic<int>> owner(blocks);
  for (auto& o : owner) o = -1;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int id = 0; id < 8; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937 rng(static_cast<std::uint32_t>(id));
      std::vector<std::uint32_t> mine;
      std::vector<std::byte> buf(block_bytes);
      for (int op = 0; op < 3000; ++op) {
        if (mine.empty() || rng() % 2 == 0) {
          auto s = t->allocate();
          if (!s) {
            if (s.error() != kvc::errc::no_space) ++errors;
            continue;
          }
          int expected = -1;
          if (!owner[*s].compare_exchange_strong(expected, id)) ++errors;  // handed out twice
          const auto src = pattern(*s + static_cast<std::size_t>(id));
          if (!copy_one(*t, kvc::copy_direction::from_host, *s, const_cast<std::byte*>(src.data())))
            ++errors;
          mine.push_back(*s);
        } else {
          const std::size_t k = rng() % mine.size();
          const std::uint32_t s = mine[k];
          if (!copy_one(*t, kvc::copy_direction::to_host, s, buf.data())) ++errors;
          if (buf != pattern(s + static_cast<std::size_t>(id))) ++errors;  // someone wrote it
          owner[s] = -1;
          if (!t->release(s)) ++errors;
          mine.erase(mine.begin() + static_cast<std::ptrdiff_t>(k));
        }
      }
      for (std::uint32_t s : mine) {
        owner[s] = -1;
        if (!t->release(s)) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(errors == 0);
  CHECK(t->free_slots() == blocks);
}

TEST_CASE("host tier: one aligned arena for registration, and clear errors", "[pool][tier]") {
  auto t = kvc::host_tier::create({4096, 16, false});
  REQUIRE(t);
  const auto mem = t->memory();
  CHECK(mem.size() == 16 * 4096);
  CHECK(reinterpret_cast<std::uintptr_t>(mem.data()) % 4096 == 0);
  for (std::uint32_t s = 0; s < 16; ++s) {
    CHECK(t->data(s).data() == mem.data() + s * 4096);
    CHECK(reinterpret_cast<std::uintptr_t>(t->data(s).data()) % 4096 == 0);
    CHECK(t->slot_of(t->data(s).data() + 100) == s);
  }
  std::byte outside{};
  CHECK(t->slot_of(&outside) == 16);
  // A moved tier keeps its arena and slots.
  auto s = t->allocate();
  REQUIRE(s);
  kvc::host_tier moved = std::move(*t);
  CHECK(moved.memory().data() == mem.data());
  CHECK(moved.refs(*s) == 1);
  CHECK(moved.free_slots() == 15);

  auto zero = kvc::host_tier::create({0, 16, true});
  REQUIRE_FALSE(zero);
  CHECK(zero.error() == kvc::errc::invalid_config);
  auto huge = kvc::host_tier::create({std::size_t{1} << 40, std::size_t{1} << 30, true});
  REQUIRE_FALSE(huge);
  CHECK(huge.error() == kvc::errc::invalid_config);
  auto unmappable = kvc::host_tier::create({std::size_t{1} << 30, std::size_t{1} << 20, true});
  REQUIRE_FALSE(unmappable);  // 1 PiB: the kernel refuses the mapping
  CHECK(unmappable.error() == kvc::errc::io_error);
}

TEST_CASE("device tier: the engine's hook moves blocks asynchronously and reports failures",
          "[pool][tier]") {
  // A hook that finishes on another thread after a delay, like a copy stream's event, and fails
  // batches that touch block 13.
  std::vector<std::byte> device(blocks * block_bytes);
  std::vector<std::thread> copiers;
  std::atomic<int> calls{0};
  kvc::device_tier gpu(
      {block_bytes, blocks,
       [&](kvc::copy_direction dir, std::span<const kvc::block_copy<std::uint32_t>> copies,
           std::function<void(const kvc::result<void>&)> done) {
         ++calls;
         std::vector<kvc::block_copy<std::uint32_t>> mine(copies.begin(), copies.end());
         copiers.emplace_back([&device, dir, mine, done = std::move(done)] {
           std::this_thread::sleep_for(std::chrono::milliseconds(50));
           for (const auto& c : mine) {
             if (c.slot == 13) {
               done(kvc::fail(kvc::errc::io_error, "stream error"));
               return;
             }
             std::byte* b = device.data() + c.slot * block_bytes;
             if (dir == kvc::copy_direction::from_host) {
               std::copy_n(c.host, block_bytes, b);
             } else {
               std::copy_n(b, block_bytes, c.host);
             }
           }
           done({});
         });
       }});
  CHECK(gpu.stand_in_data(0).empty());  // the engine's memory, not kvc's
  std::vector<std::uint32_t> ids;
  for (int i = 0; i < 14; ++i) ids.push_back(*gpu.allocate());
  REQUIRE(ids[13] == 13);
  const auto src = pattern(5);
  std::atomic<int> callbacks{0};
  kvc::result<void> seen = kvc::errc::invalid_argument;
  auto job = std::make_shared<kvc::copy_job>([&](const kvc::result<void>& r) {
    seen = r;
    ++callbacks;
  });
  const std::vector<kvc::block_copy<std::uint32_t>> load = {
      {ids[0], const_cast<std::byte*>(src.data())}, {ids[1], const_cast<std::byte*>(src.data())}};
  REQUIRE(gpu.copy(kvc::copy_direction::from_host, load, job));
  job->seal();
  // Not done at once: a deadline in the past times out, and the copies go on.
  auto early = job->wait_until(std::chrono::steady_clock::now());
  REQUIRE_FALSE(early);
  CHECK(early.error() == kvc::errc::timed_out);
  REQUIRE(job->wait());
  CHECK(callbacks == 1);
  CHECK(seen);
  CHECK(std::equal(src.begin(), src.end(), device.begin() + ids[1] * block_bytes));

  // One job over two batches, one failing: the job fails with the hook's reason.
  std::vector<std::byte> out(block_bytes);
  auto job2 = std::make_shared<kvc::copy_job>();
  const std::vector<kvc::block_copy<std::uint32_t>> good = {{ids[1], out.data()}};
  const std::vector<kvc::block_copy<std::uint32_t>> bad = {{ids[13], out.data()}};
  REQUIRE(gpu.copy(kvc::copy_direction::to_host, good, job2));
  REQUIRE(gpu.copy(kvc::copy_direction::to_host, bad, job2));
  job2->seal();
  auto r = job2->wait();
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::io_error);
  CHECK(r.message().find("stream error") != std::string::npos);
  CHECK(job2->failed() == 1);
  for (auto& c : copiers) c.join();
  CHECK(calls == 3);
}

TEST_CASE("device tier: a hook that throws fails its copies and the job still ends",
          "[pool][tier]") {
  // The hook's contract: one that throws has not called done. Its copies count as failed, so a
  // job waiting on them ends (it would wait for ever otherwise), and later copies go on.
  int calls = 0;
  kvc::device_tier gpu({block_bytes, blocks,
                        [&](kvc::copy_direction, std::span<const kvc::block_copy<std::uint32_t>>,
                            const std::function<void(const kvc::result<void>&)>& done) {
                          if (++calls == 1) throw std::runtime_error("stream gone");
                          done({});
                        }});
  const auto a = gpu.allocate();
  const auto b = gpu.allocate();
  REQUIRE(a);
  REQUIRE(b);
  std::vector<std::byte> host(block_bytes);
  const std::vector<kvc::block_copy<std::uint32_t>> both = {{*a, host.data()}, {*b, host.data()}};
  int callbacks = 0;
  kvc::result<void> seen;
  auto job = std::make_shared<kvc::copy_job>([&](const kvc::result<void>& r) {
    seen = r;
    ++callbacks;
  });
  REQUIRE(gpu.copy(kvc::copy_direction::from_host, both, job));
  job->seal();
  auto r = job->wait_until(std::chrono::steady_clock::now() + std::chrono::seconds(10));
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::io_error);
  CHECK(r.message().find("copy hook threw") != std::string::npos);
  CHECK(job->failed() == 2);
  CHECK(callbacks == 1);
  CHECK_FALSE(seen);

  auto next = std::make_shared<kvc::copy_job>();
  REQUIRE(gpu.copy(kvc::copy_direction::to_host, both, next));
  next->seal();
  CHECK(next->wait());
  CHECK(calls == 2);
  CHECK(gpu.release(*a));
  CHECK(gpu.release(*b));
}

TEST_CASE("copy_job: complete only when sealed and every copy finished", "[pool]") {
  int fired = 0;
  kvc::copy_job job([&](const kvc::result<void>& r) {
    CHECK(r);
    ++fired;
  });
  job.expect(2);
  job.finish(2);
  CHECK_FALSE(job.done());  // still open
  job.expect(1);
  job.seal();
  CHECK_FALSE(job.done());
  CHECK(fired == 0);
  job.finish(1);
  CHECK(job.done());
  CHECK(fired == 1);
  CHECK(job.wait());
}
