// The SSD tier's own behaviour: persistence across a reopen, files it must not touch, damaged
// data and records, a full disk (a file size limit in a child process), O_DIRECT transfers.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <kvc/pool/host_tier.hpp>
#include <kvc/pool/ssd_tier.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "../support/fork_child.hpp"
#include "../support/unique_name.hpp"

namespace {

namespace fs = std::filesystem;

// A file path under the temporary directory, removed with this object.
struct temp_file {
  fs::path path;
  explicit temp_file(const std::string& name)
      : path(fs::temp_directory_path() / kvc_test::unique_name("kvc-ssd-test-" + name)) {
    fs::remove_all(path);
  }
  ~temp_file() { fs::remove_all(path); }
};

kvc::ssd_tier_config config(const temp_file& f, std::size_t block_bytes, std::size_t blocks,
                            bool persist) {
  kvc::ssd_tier_config cfg;
  cfg.path = f.path.string();
  cfg.block_bytes = block_bytes;
  cfg.blocks = blocks;
  cfg.persist = persist;
  cfg.model = "test-model@1";
  return cfg;
}

std::string contents(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Opening f as a tier of 8 slots of 512 bytes, with persist or without, is refused as not
// kvc's to use (`says` in the message), and leaves the file as it was.
void refused_untouched(const temp_file& f, const std::string& says) {
  const std::string before = contents(f.path);
  for (bool persist : {false, true}) {
    auto t = kvc::ssd_tier::open(config(f, 512, 8, persist));
    REQUIRE_FALSE(t);
    CHECK(t.error() == kvc::errc::format_mismatch);
    CHECK(t.message().find(says) != std::string::npos);
    CHECK(contents(f.path) == before);
  }
}

kvc::result<void> move(kvc::ssd_tier& t, kvc::copy_direction dir, std::uint32_t slot,
                       std::byte* host) {
  auto job = std::make_shared<kvc::copy_job>();
  const kvc::block_copy<std::uint32_t> c{slot, host};
  if (auto ok = t.copy(dir, std::span(&c, 1), job); !ok) return ok;
  job->seal();
  return job->wait();
}

std::array<std::byte, 8> key_of(std::uint64_t v) {
  std::array<std::byte, 8> k{};
  for (std::size_t i = 0; i < 8; ++i) k[i] = static_cast<std::byte>(v >> (8 * i));
  return k;
}

void fill(std::span<std::byte> b, unsigned seed) {
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>((seed * 7 + i) & 0xff);
}

// Holds an SSD tier's I/O thread inside a job's completion (a job's callback runs on the thread
// that ends it) until release(), so that the blocks queued meanwhile are taken in the tier's
// own order; each job made by track() records when it ended, in `ended`.
struct held_io_thread {
  std::mutex m;
  std::condition_variable cv;
  bool holding = false, released = false, let_go = false;
  std::vector<int> ended;
  std::vector<std::shared_ptr<kvc::copy_job>> tracked;
  held_io_thread(kvc::ssd_tier& ssd, std::uint32_t slot, std::byte* buf) {
    // The I/O thread ends the job only if its copy is still running at seal(); when it is
    // quicker, seal() ends the job on this thread, which must not wait there (nobody would
    // release it): then the job holds nothing and another is tried.
    const auto me = std::this_thread::get_id();
    for (int attempt = 0;; ++attempt) {
      REQUIRE(attempt < 1000);
      auto hold = std::make_shared<kvc::copy_job>([this, me](const kvc::result<void>&) {
        if (std::this_thread::get_id() == me) return;
        std::unique_lock lock(m);
        holding = true;
        cv.notify_all();
        cv.wait(lock, [&] { return released; });
        let_go = true;
        cv.notify_all();
      });
      const kvc::block_copy<std::uint32_t> c{slot, buf};
      REQUIRE(ssd.copy(kvc::copy_direction::to_host, std::span(&c, 1), hold));
      hold->seal();
      if (!hold->done()) break;  // not ended here: the I/O thread holds it, or soon will
    }
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return holding; });
  }
  // Also when a failed REQUIRE skips release(): the I/O thread must not be left waiting (the
  // tier's destructor joins it), nor this object destroyed while a callback may still run (the
  // held job's, or a tracked job's still queued; a job never sealed has no callback to run).
  ~held_io_thread() {
    release();
    {
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return let_go; });
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (const auto& job : tracked) (void)job->wait_until(until);
  }
  held_io_thread(const held_io_thread&) = delete;
  held_io_thread& operator=(const held_io_thread&) = delete;
  std::shared_ptr<kvc::copy_job> track(int id) {
    tracked.push_back(std::make_shared<kvc::copy_job>([this, id](const kvc::result<void>&) {
      std::lock_guard lock(m);
      ended.push_back(id);
    }));
    return tracked.back();
  }
  void release() {
    {
      std::lock_guard lock(m);
      released = true;
    }
    cv.notify_all();
  }
  std::vector<int> order() {
    std::lock_guard lock(m);
    return ended;
  }
};

}  // namespace

TEST_CASE("ssd tier: tagged blocks survive a reopen; released and untagged ones do not",
          "[pool][ssd]") {
  temp_file f("persist.blocks");
  constexpr std::size_t bb = 4096;
  auto host = kvc::host_tier::create({bb, 4, false});  // 4 KiB-aligned buffers: O_DIRECT path
  REQUIRE(host);
  std::uint32_t kept = 0;
  {
    auto t = kvc::ssd_tier::open(config(f, bb, 16, true));
    REQUIRE(t);
    auto& ssd = **t;
    INFO("direct I/O: " << ssd.direct());
    CHECK(ssd.recovered().empty());
    std::vector<std::uint32_t> slots;
    for (unsigned i = 0; i < 3; ++i) {
      slots.push_back(*ssd.allocate());
      fill(host->data(i), i + 1);
      REQUIRE(move(ssd, kvc::copy_direction::from_host, slots[i], host->data(i).data()));
    }
    // Tag errors: a long key, a slot never written.
    const std::array<std::byte, 17> long_key{};
    CHECK(ssd.tag(slots[0], long_key).error() == kvc::errc::invalid_argument);
    auto unwritten = ssd.allocate();
    REQUIRE(unwritten);
    CHECK(ssd.tag(*unwritten, key_of(9)).error() == kvc::errc::invalid_argument);
    REQUIRE(ssd.tag(slots[0], key_of(100)));
    REQUIRE(ssd.tag(slots[1], key_of(101), key_of(100)));
    REQUIRE(ssd.release(slots[0]));  // its record goes with it
    kept = slots[1];
  }
  auto t = kvc::ssd_tier::open(config(f, bb, 16, true));
  REQUIRE(t);
  auto& ssd = **t;
  REQUIRE(ssd.recovered().size() == 1);
  const auto& b = ssd.recovered()[0];
  CHECK(b.where == kept);
  const auto k = key_of(101);
  CHECK(std::equal(k.begin(), k.end(), b.key_view().begin(), b.key_view().end()));
  const auto parent = key_of(100);
  CHECK(std::equal(parent.begin(), parent.end(), b.parent_view().begin(), b.parent_view().end()));
  CHECK(ssd.refs(kept) == 1);
  CHECK(ssd.free_slots() == 15);
  std::vector<std::byte> expect(bb);
  fill(expect, 2);
  REQUIRE(move(ssd, kvc::copy_direction::to_host, kept, host->data(3).data()));
  CHECK(std::equal(expect.begin(), expect.end(), host->data(3).begin()));
  for (int i = 0; i < 15; ++i) CHECK(*ssd.allocate() != kept);
  CHECK(ssd.discarded_records() == 0);
}

TEST_CASE("ssd tier: without persist a reopen starts empty", "[pool][ssd]") {
  temp_file f("fresh.blocks");
  {
    auto t = kvc::ssd_tier::open(config(f, 512, 8, true));
    REQUIRE(t);
    std::vector<std::byte> buf(512, std::byte{1});
    const auto s = *(*t)->allocate();
    REQUIRE(move(**t, kvc::copy_direction::from_host, s, buf.data()));
    REQUIRE((*t)->tag(s, key_of(1)));
  }
  auto t = kvc::ssd_tier::open(config(f, 512, 8, false));
  REQUIRE(t);
  CHECK((*t)->recovered().empty());
  CHECK((*t)->free_slots() == 8);
  CHECK((*t)->tag(0, key_of(1)).error() == kvc::errc::invalid_argument);  // needs persist
  // And the record really is gone: a persisting reopen finds nothing either.
  t = kvc::fail(kvc::errc::invalid_argument);  // closed first: one tier per file at a time
  t = kvc::ssd_tier::open(config(f, 512, 8, true));
  REQUIRE(t);
  CHECK((*t)->recovered().empty());
}

TEST_CASE("ssd tier: files it did not make, or made differently, are refused untouched",
          "[pool][ssd]") {
  temp_file f("other.blocks");
  {
    std::ofstream out(f.path, std::ios::binary);
    out << "someone's precious data, not a kvc file";
  }
  refused_untouched(f, "not touched");
  fs::remove(f.path);
  REQUIRE(kvc::ssd_tier::open(config(f, 512, 8, true)));
  const std::string made = contents(f.path);
  auto other = kvc::ssd_tier::open(config(f, 1024, 8, true));
  REQUIRE_FALSE(other);
  CHECK(other.error() == kvc::errc::format_mismatch);
  CHECK(other.message().find("8 blocks of 512 bytes") != std::string::npos);
  CHECK(contents(f.path) == made);
  // An empty file is taken (and formatted).
  fs::remove(f.path);
  { std::ofstream touch(f.path); }
  CHECK(kvc::ssd_tier::open(config(f, 512, 8, false)));
}

TEST_CASE("ssd tier: a persisted file is reopened only under the model it was made for",
          "[pool][ssd]") {
  temp_file f("model.blocks");
  std::vector<std::byte> buf(512, std::byte{5});
  {
    auto t = kvc::ssd_tier::open(config(f, 512, 8, true));
    REQUIRE(t);
    const auto s = *(*t)->allocate();
    REQUIRE(move(**t, kvc::copy_direction::from_host, s, buf.data()));
    REQUIRE((*t)->tag(s, key_of(7)));
  }
  const std::string made = contents(f.path);
  // Another checkpoint under the same keys: its blocks are not this file's bytes.
  auto other_cfg = config(f, 512, 8, true);
  other_cfg.model = "test-model@2";
  auto other = kvc::ssd_tier::open(other_cfg);
  REQUIRE_FALSE(other);
  CHECK(other.error() == kvc::errc::format_mismatch);
  CHECK(other.message().find("holds blocks of model \"test-model@1\"") != std::string::npos);
  CHECK(other.message().find("not of \"test-model@2\"") != std::string::npos);
  CHECK(contents(f.path) == made);
  // Persisting with no model named is refused before the file is opened.
  auto nameless_cfg = config(f, 512, 8, true);
  nameless_cfg.model.clear();
  auto nameless = kvc::ssd_tier::open(nameless_cfg);
  REQUIRE_FALSE(nameless);
  CHECK(nameless.error() == kvc::errc::invalid_config);
  CHECK(contents(f.path) == made);
  // The same model finds its block.
  {
    auto same = kvc::ssd_tier::open(config(f, 512, 8, true));
    REQUIRE(same);
    CHECK((*same)->recovered().size() == 1);
  }
  // A file last opened without persist names no model and holds no record: any model takes it.
  auto plain_cfg = config(f, 512, 8, false);
  plain_cfg.model = "whatever";
  REQUIRE(kvc::ssd_tier::open(plain_cfg));
  auto taken = kvc::ssd_tier::open(other_cfg);
  REQUIRE(taken);
  CHECK((*taken)->recovered().empty());
}

TEST_CASE("ssd tier: a file of an earlier format is refused untouched", "[pool][ssd]") {
  temp_file f("format1.blocks");
  REQUIRE(kvc::ssd_tier::open(config(f, 512, 8, true)));
  // Format 1 had the same magic and the format word at the same place.
  {
    std::fstream io(f.path, std::ios::in | std::ios::out | std::ios::binary);
    const std::uint32_t one = 1;
    io.seekp(8);
    io.write(reinterpret_cast<const char*>(&one), sizeof one);
  }
  refused_untouched(f, "another version of kvc (format 1");
}

TEST_CASE("ssd tier: one tier per file at a time", "[pool][ssd]") {
  temp_file f("locked.blocks");
  auto first = kvc::ssd_tier::open(config(f, 512, 8, true));
  REQUIRE(first);
  std::vector<std::byte> buf(512, std::byte{3});
  const auto s = *(*first)->allocate();
  REQUIRE(move(**first, kvc::copy_direction::from_host, s, buf.data()));
  REQUIRE((*first)->tag(s, key_of(3)));
  const std::string before = contents(f.path);
  for (bool persist : {false, true}) {  // without persist it would reformat under the first
    auto second = kvc::ssd_tier::open(config(f, 512, 8, persist));
    REQUIRE_FALSE(second);
    CHECK(second.error() == kvc::errc::io_error);
    CHECK(second.message().find("in use by another SSD tier") != std::string::npos);
    CHECK(contents(f.path) == before);
  }
  first = kvc::fail(kvc::errc::invalid_argument);  // closed: the file is free again
  auto again = kvc::ssd_tier::open(config(f, 512, 8, true));
  REQUIRE(again);
  CHECK((*again)->recovered().size() == 1);
}

TEST_CASE("ssd tier: a file left half made by a process that died is made again", "[pool][ssd]") {
  // A child makes a file whose directory takes a while to clear (2^21 records, 128 MiB) and is
  // killed once the file has its full size, while it clears the directory: the file then has
  // no valid header. Tried until a kill lands in that window (the child may finish first).
  temp_file f("half-made.blocks");
  const auto cfg = config(f, 8, std::size_t{1} << 21, false);
  const std::uintmax_t full_size = 4096 + (std::uintmax_t{1} << 21) * (64 + 8);
  bool caught = false;
  for (int attempt = 0; attempt < 5 && !caught; ++attempt) {
    fs::remove(f.path);
    const pid_t child = kvc_test::fork_child();
    REQUIRE(child >= 0);
    if (child == 0) {
      auto t = kvc::ssd_tier::open(cfg);
      ::_exit(t ? 0 : 1);
    }
    std::error_code ec;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < until &&
           !(fs::exists(f.path, ec) && fs::file_size(f.path, ec) >= full_size)) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    if (WIFEXITED(status)) continue;  // it finished first
    std::string head(8, '\0');
    std::ifstream(f.path, std::ios::binary).read(head.data(), 8);
    if (head == "KVCSSD01") continue;  // killed after the header was written
    caught = true;
    auto reopened = kvc::ssd_tier::open(config(f, 8, std::size_t{1} << 21, true));
    INFO((reopened ? std::string("opened") : reopened.message()));
    REQUIRE(reopened);
    CHECK((*reopened)->recovered().empty());
    CHECK((*reopened)->free_slots() == (std::size_t{1} << 21));
  }
  if (!caught) WARN("no kill landed while the directory was cleared: nothing checked");
}

TEST_CASE("ssd tier: unusable paths and configs get clear errors", "[pool][ssd]") {
  temp_file d("a-directory");
  fs::create_directories(d.path);
  auto dir = kvc::ssd_tier::open(config(d, 512, 8, false));
  REQUIRE_FALSE(dir);
  CHECK(dir.error() == kvc::errc::io_error);
  temp_file missing("no-such-dir");
  kvc::ssd_tier_config cfg = config(missing, 512, 8, false);
  cfg.path += "/inside/file";
  auto absent = kvc::ssd_tier::open(cfg);
  REQUIRE_FALSE(absent);
  CHECK(absent.error() == kvc::errc::io_error);
  CHECK(absent.message().find("inside/file") != std::string::npos);
  cfg = config(missing, 0, 8, false);
  CHECK(kvc::ssd_tier::open(cfg).error() == kvc::errc::invalid_config);
  cfg = config(missing, 512, 8, false);
  cfg.io_threads = 0;
  CHECK(kvc::ssd_tier::open(cfg).error() == kvc::errc::invalid_config);
  cfg = config(missing, std::size_t{1} << 62, 8, false);
  CHECK(kvc::ssd_tier::open(cfg).error() == kvc::errc::invalid_config);
}

TEST_CASE("ssd tier: damaged data fails its read; a damaged record is discarded", "[pool][ssd]") {
  temp_file f("damaged.blocks");
  constexpr std::size_t bb = 512;
  std::vector<std::byte> buf(bb);
  {
    auto t = kvc::ssd_tier::open(config(f, bb, 8, true));
    REQUIRE(t);
    for (unsigned i = 0; i < 2; ++i) {
      const auto s = *(*t)->allocate();
      fill(buf, i);
      REQUIRE(move(**t, kvc::copy_direction::from_host, s, buf.data()));
      REQUIRE((*t)->tag(s, key_of(i)));
    }
  }
  // Slot 0's data: one flipped byte. Slot 1's record: one flipped byte.
  std::string bytes = contents(f.path);
  const std::size_t data_offset = (4096 + 8 * 64 + 4095) / 4096 * 4096;
  bytes[data_offset + 10] = static_cast<char>(bytes[data_offset + 10] ^ 0x40);
  bytes[4096 + 64 + 9] = static_cast<char>(bytes[4096 + 64 + 9] ^ 0x01);
  {
    std::ofstream out(f.path, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  auto t = kvc::ssd_tier::open(config(f, bb, 8, true));
  REQUIRE(t);
  CHECK((*t)->discarded_records() == 1);
  REQUIRE((*t)->recovered().size() == 1);
  CHECK((*t)->recovered()[0].where == 0);
  auto r = move(**t, kvc::copy_direction::to_host, 0, buf.data());
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::malformed_input);
  CHECK(r.message().find("checksum") != std::string::npos);
  CHECK((*t)->free_slots() == 7);  // slot 1 is free again, slot 0 still held
}

TEST_CASE("ssd tier: a full disk is reported when the file is made", "[pool][ssd]") {
  temp_file f("full.blocks");
  const pid_t child = kvc_test::fork_child();
  REQUIRE(child >= 0);
  if (child == 0) {
    // A 1 MiB file size limit stands in for a full disk (EFBIG, like ENOSPC).
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit lim{1 << 20, 1 << 20};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    auto t = kvc::ssd_tier::open(config(f, 64 << 10, 64, false));  // 4 MiB of slots
    int code = 0;
    if (t)
      code = 1;
    else if (t.error() != kvc::errc::no_space)
      code = 2;
    else if (t.message().find("making room") == std::string::npos)
      code = 3;
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("ssd tier: batches of several callers, spread over four I/O threads, land whole",
          "[pool][ssd]") {
  temp_file f("threads.blocks");
  constexpr std::size_t bb = 16 << 10;
  constexpr std::size_t per_caller = 64;
  constexpr std::size_t callers = 4;
  auto cfg = config(f, bb, per_caller * callers, false);
  cfg.io_threads = 4;
  auto t = kvc::ssd_tier::open(cfg);
  REQUIRE(t);
  auto& ssd = **t;
  std::vector<std::uint32_t> slots;
  for (std::size_t i = 0; i < per_caller * callers; ++i) slots.push_back(*ssd.allocate());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (std::size_t c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      std::vector<std::byte> out(per_caller * bb), in(per_caller * bb);
      for (unsigned round = 0; round < 4; ++round) {
        std::vector<kvc::block_copy<std::uint32_t>> stores, loads;
        for (std::size_t i = 0; i < per_caller; ++i) {
          fill(std::span(out).subspan(i * bb, bb), unsigned(c * 1000 + round * 100 + i));
          stores.push_back({slots[c * per_caller + i], out.data() + i * bb});
          loads.push_back({slots[c * per_caller + i], in.data() + i * bb});
        }
        for (const auto& [dir, copies] : {std::pair{kvc::copy_direction::from_host, &stores},
                                          std::pair{kvc::copy_direction::to_host, &loads}}) {
          auto job = std::make_shared<kvc::copy_job>();
          if (!ssd.copy(dir, *copies, job)) ++failures;
          job->seal();
          if (!job->wait()) ++failures;
        }
        if (in != out) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
}

TEST_CASE("ssd tier: a load goes before the blocks of stores queued earlier", "[pool][ssd]") {
  temp_file f("order.blocks");
  constexpr std::size_t bb = 16 << 10;
  constexpr std::size_t blocks = 64;
  auto cfg = config(f, bb, blocks, false);
  cfg.io_threads = 1;  // one thread: the order it takes blocks in is all that decides
  auto t = kvc::ssd_tier::open(cfg);
  REQUIRE(t);
  auto& ssd = **t;
  std::vector<std::uint32_t> slots;
  for (std::size_t i = 0; i < blocks; ++i) slots.push_back(*ssd.allocate());
  std::vector<std::byte> out(blocks * bb), in(2 * bb);
  for (std::size_t i = 0; i < blocks; ++i) fill(std::span(out).subspan(i * bb, bb), unsigned(i));
  REQUIRE(move(ssd, kvc::copy_direction::from_host, slots[7], out.data() + 7 * bb));
  // While the thread is held, a store of 63 blocks is queued (job 1), then a one-block load
  // (job 2): the load ends first, the store's blocks after it (until 2026-12-07 the store's
  // batch was taken whole first).
  held_io_thread held(ssd, slots[7], in.data() + bb);
  std::vector<kvc::block_copy<std::uint32_t>> copies;
  for (std::size_t i = 0; i < blocks; ++i) {
    if (i != 7) copies.push_back({slots[i], out.data() + i * bb});
  }
  auto store = held.track(1);
  REQUIRE(ssd.copy(kvc::copy_direction::from_host, copies, store));
  store->seal();
  auto load = held.track(2);
  const kvc::block_copy<std::uint32_t> one{slots[7], in.data()};
  REQUIRE(ssd.copy(kvc::copy_direction::to_host, std::span(&one, 1), load));
  load->seal();
  held.release();
  REQUIRE(load->wait());
  REQUIRE(store->wait());
  CHECK(held.order() == std::vector<int>{2, 1});
  CHECK(std::equal(in.begin(), in.begin() + bb, out.begin() + 7 * bb));
}

TEST_CASE("ssd tier: steady loads do not hold a store back; a store names each slot once",
          "[pool][ssd]") {
  temp_file f("fair.blocks");
  constexpr std::size_t bb = 16 << 10;
  constexpr std::size_t blocks = 64;
  auto cfg = config(f, bb, blocks, false);
  cfg.io_threads = 1;
  auto t = kvc::ssd_tier::open(cfg);
  REQUIRE(t);
  auto& ssd = **t;
  std::vector<std::uint32_t> slots;
  for (std::size_t i = 0; i < blocks; ++i) slots.push_back(*ssd.allocate());
  std::vector<std::byte> buf(blocks * bb), one(bb), spare(bb);
  std::vector<kvc::block_copy<std::uint32_t>> all;
  for (std::size_t i = 0; i < blocks; ++i) all.push_back({slots[i], buf.data() + i * bb});
  auto written = std::make_shared<kvc::copy_job>();
  REQUIRE(ssd.copy(kvc::copy_direction::from_host, all, written));
  written->seal();
  REQUIRE(written->wait());
  {
    // While the thread is held: a load of 63 blocks (job 1), then a one-block store (job 2).
    // The store is written after at most 16 of the load's blocks, so it ends first (it waited
    // for all of them before the cap).
    held_io_thread held(ssd, slots[0], spare.data());
    auto load = held.track(1);
    REQUIRE(ssd.copy(kvc::copy_direction::to_host, std::span(all).first(blocks - 1), load));
    load->seal();
    auto store = held.track(2);
    const kvc::block_copy<std::uint32_t> last{slots[blocks - 1], one.data()};
    REQUIRE(ssd.copy(kvc::copy_direction::from_host, std::span(&last, 1), store));
    store->seal();
    held.release();
    REQUIRE(store->wait());
    REQUIRE(load->wait());
    CHECK(held.order() == std::vector<int>{2, 1});
  }
  // One slot twice in a store: refused, and the job not counted.
  const std::array<kvc::block_copy<std::uint32_t>, 2> twice{
      {{slots[3], buf.data()}, {slots[3], one.data()}}};
  auto refused = std::make_shared<kvc::copy_job>();
  auto r = ssd.copy(kvc::copy_direction::from_host, twice, refused);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::invalid_argument);
  refused->seal();
  CHECK(refused->done());
  // Read twice into two buffers is fine.
  auto reads = std::make_shared<kvc::copy_job>();
  REQUIRE(ssd.copy(kvc::copy_direction::to_host, twice, reads));
  reads->seal();
  CHECK(reads->wait());
}
