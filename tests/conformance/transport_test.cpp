// The Transport conformance suite over the shm transport and the decorators over it, and the
// decorators' own behaviour (counts, injected faults).
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "../support/fork_child.hpp"
#include "../support/unique_name.hpp"
#include "kvc/transport/counting.hpp"
#include "kvc/transport/faulty.hpp"
#include "kvc/transport/paced.hpp"
#include "kvc/transport/shm.hpp"

namespace {

// Two shm memory nodes with names unique to this process and environment.
struct shm_nodes {
  static constexpr std::uint64_t region_bytes = 1u << 20;
  shm_nodes() {
    const std::string stem = kvc_test::unique_name("/kvc-test") + "-";
    for (kvc::node_id n = 0; n < 2; ++n) {
      auto r = kvc::shm_region::create(stem + std::to_string(n), region_bytes, n);
      REQUIRE(r.has_value());
      regions.push_back(std::move(*r));
    }
  }
  kvc::shm_transport attach() const {
    kvc::shm_transport t;
    for (kvc::node_id n = 0; n < 2; ++n) {
      if (auto ok = t.add_node(n, regions[n].name()); !ok) {
        std::fprintf(stderr, "add_node failed: %s\n", ok.message().c_str());
        std::abort();  // also called from threads and children, where Catch2 cannot report
      }
    }
    return t;
  }
  std::vector<kvc::shm_region> regions;
};

// The suite's environment for the transport `Make::make` builds over shm: the same nodes,
// client and further clients for every transport; what a decorator adds is its Make's.
template <class Make>
struct env_of : shm_nodes {
  using transport = typename Make::transport;
  env_of() : t(Make::make(attach())) {}
  transport& client() { return t; }
  transport connect_client() const { return Make::make(attach()); }
  transport t;
};

struct plain {
  using transport = kvc::shm_transport;
  static transport make(kvc::shm_transport s) { return s; }
};

struct counted {
  using transport = kvc::counting<kvc::shm_transport>;
  static transport make(kvc::shm_transport s) { return transport(std::move(s)); }
};

// Faults that change no single-threaded outcome: every long READ torn (the halves of a READ land
// in the same buffer), a little jitter.
struct with_faults {
  using transport = kvc::faulty<kvc::shm_transport>;
  static transport make(kvc::shm_transport s) {
    kvc::fault_config c;
    c.seed = 7;
    c.torn_read_probability = 1.0;
    c.tear_pause = std::chrono::microseconds(0);
    c.jitter = std::chrono::microseconds(2);
    return transport(std::move(s), c);
  }
};

// A modelled network: every batch completes a little later, nothing else changes.
struct with_pace {
  using transport = kvc::paced<kvc::shm_transport>;
  static transport make(kvc::shm_transport s) {
    kvc::pace_config c;
    c.round_trip = std::chrono::microseconds(5);
    c.gbit_per_s = 100;
    c.per_operation = std::chrono::nanoseconds(10);
    return transport(std::move(s), c);
  }
};

using shm_env = env_of<plain>;
using counting_env = env_of<counted>;
using faulty_env = env_of<with_faults>;
using paced_env = env_of<with_pace>;

}  // namespace

#define KVC_TRANSPORT_ENVS shm_env, counting_env, faulty_env, paced_env
#include "transport_suite.hpp"

static_assert(kvc::Transport<kvc::shm_transport>);
static_assert(kvc::Transport<kvc::counting<kvc::shm_transport>>);
static_assert(kvc::Transport<kvc::faulty<kvc::shm_transport>>);
static_assert(kvc::Transport<kvc::counting<kvc::faulty<kvc::shm_transport>>>);
static_assert(kvc::Transport<kvc::paced<kvc::shm_transport>>);
static_assert(kvc::Transport<kvc::counting<kvc::paced<kvc::shm_transport>>>);
static_assert(!kvc::Transport<int>);

TEST_CASE("shm: regions are created 0600, refused when they exist, checked when attached",
          "[transport][shm]") {
  shm_env env;
  const std::string path = "/dev/shm" + env.regions[0].name();
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  auto again = kvc::shm_region::create(env.regions[0].name(), 1u << 20, 0);
  REQUIRE_FALSE(again);
  CHECK(again.error() == kvc::errc::io_error);
  CHECK_THAT(again.detail(), Catch::Contains("File exists"));

  CHECK(kvc::shm_region::create("no-slash", 1u << 20, 0).error() == kvc::errc::invalid_argument);
  CHECK(kvc::shm_region::create("/a/b", 1u << 20, 0).error() == kvc::errc::invalid_argument);
  CHECK(kvc::shm_region::create("/kvc-tiny", 100, 0).error() == kvc::errc::invalid_argument);

  kvc::shm_transport t;
  CHECK(t.add_node(0, "/kvc-no-such-segment").error() == kvc::errc::io_error);
  CHECK(t.add_node(5, env.regions[0].name()).error() == kvc::errc::format_mismatch);  // node 0's
  REQUIRE(t.add_node(0, env.regions[0].name()));
  CHECK(t.add_node(0, env.regions[0].name()).error() == kvc::errc::invalid_argument);

  // A segment that is not a kvc region, and one whose format version is from the future.
  env.regions[1].header().format_version = 99;
  auto future = t.add_node(1, env.regions[1].name());
  REQUIRE_FALSE(future);
  CHECK(future.error() == kvc::errc::format_mismatch);
  CHECK_THAT(future.detail(), Catch::Contains("version 99"));
  env.regions[1].header().magic = 0;
  CHECK(t.add_node(1, env.regions[1].name()).error() == kvc::errc::format_mismatch);
}

TEST_CASE("batches: post() answers the index in posting order; a moved-from batch is empty",
          "[transport][shm]") {
  shm_env env;
  auto b = env.client().new_batch();
  std::array<std::byte, 16> buf{};
  const kvc::local_buffer first{buf.data(), 8, 0};
  const kvc::local_buffer second{buf.data() + 8, 8, 0};
  kvc::operation op;
  op.kind = kvc::op_kind::read;
  op.remote = kvc::remote_ptr(0, 4096);
  op.local = second;
  for (int round = 0; round < 2; ++round) {  // the second after clear(), slots kept
    CHECK(b.read(kvc::remote_ptr(0, 4096), first) == 0);
    CHECK(b.post(op) == 1);
    CHECK(b.size() == 2);
    b.ring();
    REQUIRE(b.wait());
    CHECK(b.ok(0));
    CHECK(b.ok(1));
    b.clear();
  }
  CHECK(b.read(kvc::remote_ptr(0, 4096), first) == 0);
  auto moved = std::move(b);
  CHECK(moved.size() == 1);
  CHECK(b.size() == 0);  // NOLINT(bugprone-use-after-move): moved-from batches are empty
  CHECK(b.empty());
  CHECK(b.post(op) == 0);  // and open: posting to one works
  b.ring();
  REQUIRE(b.wait());
  moved.ring();
  REQUIRE(moved.wait());
  CHECK(moved.ok(0));
}

TEST_CASE("shm: the segment's name is removed with its region", "[transport][shm]") {
  std::string path;
  {
    shm_env env;
    path = "/dev/shm" + env.regions[0].name();
    CHECK(::access(path.c_str(), F_OK) == 0);
  }
  CHECK(::access(path.c_str(), F_OK) != 0);
}

namespace {
// One 8-byte operation's buffer.
kvc::local_buffer word(std::uint64_t& w) { return {reinterpret_cast<std::byte*>(&w), 8, 0}; }

// Runs `b` and says how it ended.
kvc::result<void> ring(kvc::shm_transport::batch& b) {
  b.ring();
  return b.wait();
}

// A later millisecond than the one `header`'s region was created in: the next region made is
// told apart from it.
void next_millisecond(const kvc::region_header& header) {
  const auto now = [] {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
  };
  while (now() <= header.created_unix_ms) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}
}  // namespace

TEST_CASE("shm: a node that restarts is mapped anew; a batch held to its old region is refused",
          "[transport][shm]") {
  shm_nodes nodes;
  auto t = nodes.attach();
  const std::string name = nodes.regions[0].name();
  const std::uint64_t first = nodes.regions[0].header().created_unix_ms;
  std::uint64_t w = 41;
  auto b = t.new_batch();
  b.write({0, 4096}, word(w));
  REQUIRE(ring(b));

  // The node stops: its region is retired. Its operations fail as unreachable, naming why;
  // node 1's in the same batch run.
  next_millisecond(nodes.regions[0].header());
  nodes.regions[0] = kvc::shm_region{};
  std::uint64_t old0 = 0, old1 = 0, read0 = 0;
  b.clear();
  const auto on0 = b.faa({0, 4096}, 1, word(old0));
  const auto after0 = b.read({0, 4096}, word(read0));
  const auto on1 = b.faa({1, 4096}, 1, word(old1));
  auto stopped = ring(b);
  REQUIRE_FALSE(stopped);
  CHECK(stopped.error() == kvc::errc::unreachable);
  CHECK_THAT(stopped.detail(),
             Catch::Contains("memory node 0 stopped serving its region") && Catch::Contains(name));
  CHECK(b.status(on0) == kvc::errc::unreachable);
  CHECK(b.status(after0) == kvc::errc::not_executed);
  CHECK(b.ok(on1));
  CHECK(t.has_node(0));  // still the transport's node, of the size it had
  CHECK(t.region_bytes(0) == shm_nodes::region_bytes);

  // It comes back under the same name, twice the size: the next batch maps the new segment
  // (once the pause after a look that found none is over).
  auto back = kvc::shm_region::create(name, 2 * shm_nodes::region_bytes, 0);
  REQUIRE(back);
  std::this_thread::sleep_for(kvc::shm_transport::retry_pause);
  const std::uint64_t second = back->header().created_unix_ms;
  REQUIRE(second != first);
  // Held to the old region, nothing runs there: the WRITE does not land.
  b.clear();
  b.require_identity(0, 0, first);
  w = 7;
  b.write({0, 4096}, word(w));
  auto held = ring(b);
  REQUIRE_FALSE(held);
  CHECK(held.error() == kvc::errc::format_mismatch);
  CHECK_THAT(held.detail(), Catch::Contains("serves another region") &&
                                Catch::Contains(std::to_string(first)) &&
                                Catch::Contains("read its header again"));
  CHECK(t.region_bytes(0) == 2 * shm_nodes::region_bytes);
  // Held to the new one, or to none, it runs there: a fresh word, the region's new end in reach.
  b.clear();
  b.require_identity(0, 0, second);
  read0 = 99;
  b.read({0, 4096}, word(read0));
  b.faa({0, 2 * shm_nodes::region_bytes - 8}, 1, word(old0));
  REQUIRE(ring(b));
  CHECK(read0 == 0);
  auto plain = t.new_batch();
  plain.read({0, 2 * shm_nodes::region_bytes - 8}, word(read0));
  REQUIRE(ring(plain));
  CHECK(read0 == 1);

  // Another node's region under the name is not taken for node 0's.
  next_millisecond(back->header());
  *back = kvc::shm_region{};
  auto foreign = kvc::shm_region::create(name, shm_nodes::region_bytes, 5);
  REQUIRE(foreign);
  plain.clear();
  plain.read({0, 4096}, word(read0));
  auto wrong = ring(plain);
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error() == kvc::errc::unreachable);
  CHECK_THAT(wrong.detail(), Catch::Contains("holds memory node 5, not 0"));
}

TEST_CASE("shm: a segment left behind is retired by the node that replaces it",
          "[transport][shm]") {
  const std::string name = kvc_test::unique_name("/kvc-test-left");
  // A node that dies without cleaning up: its segment stays, unlocked and not retired.
  const pid_t child = kvc_test::fork_child();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto r = kvc::shm_region::create(name, 1u << 20, 0);
    if (!r) ::_exit(1);
    std::uint64_t* at = reinterpret_cast<std::uint64_t*>(r->base() + 4096);
    *at = 5;
    ::_exit(0);  // no destructor: the segment is left behind
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  CHECK_FALSE(kvc::shm_region::in_use(name));

  kvc::shm_transport t;
  REQUIRE(t.add_node(0, name));
  std::uint64_t w = 0;
  auto b = t.new_batch();
  b.read({0, 4096}, word(w));
  REQUIRE(ring(b));
  CHECK(w == 5);  // still served as it was: nothing told the client its node died

  REQUIRE(kvc::shm_region::remove_left_behind(name));
  b.clear();
  b.read({0, 4096}, word(w));
  auto gone = ring(b);
  REQUIRE_FALSE(gone);
  CHECK(gone.error() == kvc::errc::unreachable);
  auto fresh = kvc::shm_region::create(name, 1u << 20, 0);
  REQUIRE(fresh);
  std::this_thread::sleep_for(kvc::shm_transport::retry_pause);
  b.clear();
  b.read({0, 4096}, word(w));
  REQUIRE(ring(b));
  CHECK(w == 0);  // the new node's region

  // A running node's segment is never removed; a name nobody uses is no error.
  auto refused = kvc::shm_region::remove_left_behind(name);
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == kvc::errc::invalid_argument);
  CHECK_THAT(refused.detail(), Catch::Contains("running"));
  CHECK(kvc::shm_region::remove_left_behind(kvc_test::unique_name("/kvc-test-none")));
}

TEST_CASE("shm: batches on many threads go on while a node restarts under them",
          "[transport][shm]") {
  shm_nodes nodes;
  auto t = nodes.attach();
  const std::string name = nodes.regions[0].name();
  constexpr int threads = 4;
  constexpr int restarts = 20;
  std::atomic<bool> stop{false};
  std::atomic<bool> bad{false};
  std::atomic<std::uint64_t> ok0{0}, rings{0};
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) {
    pool.emplace_back([&] {
      auto b = t.new_batch();
      std::uint64_t old0 = 0, old1 = 0, seen = 0;
      while (!stop.load()) {
        b.clear();
        const auto a = b.faa({0, 4096}, 1, word(old0));
        const auto r = b.read({0, 8192}, word(seen));
        const auto c = b.faa({1, 4096}, 1, word(old1));
        b.ring();
        (void)b.wait();
        // Node 0's operations run or fail as unreachable, together; node 1's always run.
        const bool ran = b.ok(a) && b.ok(r);
        const bool failed =
            b.status(a) == kvc::errc::unreachable && b.status(r) == kvc::errc::not_executed;
        if ((!ran && !failed) || !b.ok(c)) bad = true;
        if (ran) ++ok0;
        ++rings;
      }
    });
  }
  // What landed in each region of node 0, read by its node as it stops.
  const auto count = [](const kvc::shm_region& r) {
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(r.base() + 4096))
        .load();
  };
  // Each region until its node saw some increments there (the threads took it), for 2 s at most.
  const auto used = [&](const kvc::shm_region& r) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (count(r) == 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  std::vector<std::uint64_t> landed_in;  // per region of node 0, in order
  bool created = true;
  for (int i = 0; i < restarts && created; ++i) {
    used(nodes.regions[0]);
    next_millisecond(nodes.regions[0].header());
    kvc::retire_region(nodes.regions[0].base());   // no ring reaches it after this, but those
    landed_in.push_back(count(nodes.regions[0]));  // that did already (one per thread at most)
    nodes.regions[0] = kvc::shm_region{};
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    auto r = kvc::shm_region::create(name, shm_nodes::region_bytes, 0);
    created = r.has_value();
    if (created) nodes.regions[0] = std::move(*r);
  }
  if (created) used(nodes.regions[0]);
  stop = true;
  for (auto& th : pool) th.join();
  REQUIRE(created);
  landed_in.push_back(count(nodes.regions[0]));
  std::uint64_t landed = 0;
  for (const std::uint64_t n : landed_in) landed += n;
  // Every region was mapped and used by the threads: each of them restarted under them.
  CHECK(std::count(landed_in.begin(), landed_in.end(), 0) == 0);
  CHECK_FALSE(bad.load());
  // Every node-1 increment landed once. Every node-0 increment that landed was reported; those
  // reported but not counted are at most one ring per thread and restart: admitted to a region
  // before it was retired, run after its node read its count (in flight as it stopped).
  std::uint64_t total = 0;
  auto b = t.new_batch();
  b.read({1, 4096}, word(total));
  REQUIRE(ring(b));
  CHECK(total == rings.load());
  INFO("node 0: " << ok0.load() << " increments reported, " << landed << " counted");
  CHECK(landed <= ok0.load());
  CHECK(ok0.load() - landed <= std::uint64_t{threads} * restarts);
}

namespace {
// A transport that says how many batches it takes in flight at once (as verbs does: its lanes).
struct three_in_flight : kvc::shm_transport {
  [[nodiscard]] std::size_t max_batches_in_flight() const noexcept { return 3; }
};
}  // namespace

TEST_CASE("max_batches_in_flight: the transport's own, or no limit; the decorators pass it on",
          "[transport]") {
  constexpr auto none = std::numeric_limits<std::size_t>::max();
  shm_nodes nodes;
  CHECK(kvc::max_batches_in_flight(nodes.attach()) == none);
  CHECK(kvc::max_batches_in_flight(kvc::faulty<kvc::shm_transport>(nodes.attach(), {})) == none);
  CHECK(kvc::max_batches_in_flight(three_in_flight{}) == 3);
  CHECK(kvc::max_batches_in_flight(kvc::faulty<three_in_flight>(three_in_flight{}, {})) == 3);
  CHECK(kvc::max_batches_in_flight(kvc::counting<three_in_flight>(three_in_flight{})) == 3);
  CHECK(kvc::max_batches_in_flight(kvc::paced<three_in_flight>(three_in_flight{}, {})) == 3);
}

TEST_CASE("shm: a lowered per-node limit refuses a node's batch beyond it, as verbs does",
          "[transport][shm]") {
  shm_nodes nodes;
  auto t = nodes.attach();
  CHECK(t.max_ops_per_node() == kvc::shm_transport::batch_limit);
  CHECK_FALSE(t.set_max_ops_per_node(0));
  CHECK_FALSE(t.set_max_ops_per_node(kvc::shm_transport::batch_limit + 1));
  REQUIRE(t.set_max_ops_per_node(4));
  CHECK(kvc::max_ops_per_node(t) == 4);
  std::array<std::uint64_t, 7> old{};
  auto b = t.new_batch();
  std::array<std::size_t, 7> at{};
  for (std::size_t i = 0; i < 5; ++i) {  // five for node 0: over the limit
    at[i] = b.faa({0, 4096}, 1, {reinterpret_cast<std::byte*>(&old[i]), 8});
  }
  for (std::size_t i = 5; i < 7; ++i) {  // two for node 1
    at[i] = b.faa({1, 4096}, 1, {reinterpret_cast<std::byte*>(&old[i]), 8});
  }
  b.ring();
  const auto r = b.wait();
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::invalid_argument);
  CHECK_THAT(r.detail(),
             Catch::Contains("5 operations for one node") && Catch::Contains("the limit is 4"));
  CHECK(b.status(at[0]) == kvc::errc::invalid_argument);
  for (std::size_t i = 1; i < 5; ++i) CHECK(b.status(at[i]) == kvc::errc::not_executed);
  CHECK(b.ok(at[5]));
  CHECK(b.ok(at[6]));
  CHECK(old[6] == 1);  // node 1's two ran; node 0's word is untouched
  auto check = t.new_batch();
  check.read({0, 4096}, {reinterpret_cast<std::byte*>(&old[0]), 8});
  check.ring();
  REQUIRE(check.wait());
  CHECK(old[0] == 0);
}

TEST_CASE("counting: round trips, operations and bytes by kind", "[transport][counting]") {
  counting_env env;
  auto& t = env.client();
  transport_suite::scratch s(t, 256);
  auto b = t.new_batch();
  b.write(transport_suite::data(0), s.at(0, 100));
  b.read(transport_suite::data(0), s.at(100, 100));
  b.read(transport_suite::data(1), s.at(200, 24));
  b.cas(transport_suite::data(0), 0, 1, s.at(232, 8));
  b.faa(transport_suite::data(0), 1, s.at(240, 8));
  REQUIRE(transport_suite::run(b));
  auto empty = t.new_batch();
  REQUIRE(transport_suite::run(empty));  // no operation, no round trip
  auto c = t.snapshot();
  CHECK(c.round_trips == 1);
  CHECK(c.count(kvc::op_kind::read) == 2);
  CHECK(c.count(kvc::op_kind::write) == 1);
  CHECK(c.count(kvc::op_kind::cas) == 1);
  CHECK(c.count(kvc::op_kind::faa) == 1);
  CHECK(c.bytes_of(kvc::op_kind::read) == 124);
  CHECK(c.bytes_of(kvc::op_kind::write) == 100);
  CHECK(c.total_bytes() == 240);
  CHECK(c.failed_ops == 0);

  b.clear();
  b.read({0, env.region_bytes}, s.at(0, 8));     // out of range
  b.read(transport_suite::data(0), s.at(0, 8));  // not executed
  REQUIRE_FALSE(transport_suite::run(b));
  const auto d = t.snapshot() - c;
  CHECK(d.round_trips == 1);
  CHECK(d.failed_ops == 2);
  t.reset();
  CHECK(t.snapshot().total_ops() == 0);
}

TEST_CASE("paced: a batch's cost is a round trip plus its slowest node's operations and bytes",
          "[transport][paced]") {
  kvc::pace_config m;
  m.round_trip = std::chrono::nanoseconds(1500);
  m.gbit_per_s = 8;  // one byte a nanosecond
  m.per_operation = std::chrono::nanoseconds(10);
  REQUIRE(m.check());
  std::array<std::byte, 4096> buf{};
  auto op = [&](kvc::op_kind kind, kvc::node_id node, std::size_t bytes) {
    kvc::operation o;
    o.kind = kind;
    o.remote = kvc::remote_ptr(node, 4096);
    o.local = kvc::local_buffer{buf.data(), bytes, 0};
    return o;
  };
  CHECK(m.cost({}).count() == 0);  // nothing rung, nothing waited for
  const std::array one{op(kvc::op_kind::read, 0, 1000)};
  CHECK(m.cost(one).count() == 1500 + 10 + 1000);
  // Node 0: 2 operations, 1,064 bytes; node 1: 3 operations, 24 bytes. The nodes run in
  // parallel: the batch takes as long as node 0's share.
  const std::array two{op(kvc::op_kind::read, 0, 1000), op(kvc::op_kind::cas, 1, 8),
                       op(kvc::op_kind::write, 0, 64), op(kvc::op_kind::faa, 1, 8),
                       op(kvc::op_kind::read, 1, 8)};
  CHECK(m.cost(two).count() == 1500 + 20 + 1064);
  m.gbit_per_s = 0;  // bytes free
  CHECK(m.cost(two).count() == 1500 + 30);
  // More nodes than the model tallies on the stack (8), posted round-robin: node 3 has the most
  // operations, five of its six posted after the ninth node moved the tallies off the stack.
  std::vector<kvc::operation> many;
  const auto ops_of = [](kvc::node_id n) { return n == 3 ? 6u : 1u + n % 3u; };
  for (unsigned round = 0; round < 6; ++round) {
    for (kvc::node_id n = 0; n < 12; ++n) {
      if (round < ops_of(n)) many.push_back(op(kvc::op_kind::cas, n, 8));
    }
  }
  CHECK(m.cost(many).count() == 1500 + 60);

  m.gbit_per_s = std::numeric_limits<double>::quiet_NaN();
  CHECK(m.check().error() == kvc::errc::invalid_argument);
  m.gbit_per_s = 1e-15;  // a second per 125 bytes: capped at an hour, no overflow
  REQUIRE(m.check());
  CHECK(m.cost(one).count() == 1500 + 3'600'000'000'000);
  m.round_trip = std::chrono::nanoseconds(-1);
  CHECK(m.check().error() == kvc::errc::invalid_argument);
}

TEST_CASE("paced: a batch is not complete before its modelled time; its results are the inner's",
          "[transport][paced]") {
  shm_nodes nodes;
  kvc::pace_config m;
  m.round_trip = std::chrono::milliseconds(30);
  m.gbit_per_s = 0;
  kvc::paced<kvc::shm_transport> t(nodes.attach(), m);
  CHECK(t.model().round_trip == std::chrono::milliseconds(30));
  transport_suite::scratch s(t, 64);
  const std::uint64_t init = 41;
  std::memcpy(s.bytes(), &init, 8);
  auto b = t.new_batch();
  b.write(transport_suite::data(0), s.at(0, 8));
  b.faa(transport_suite::data(0), 1, s.at(8, 8));
  // A poll that provably came before the modelled completion (less than 30 ms after ring()) must
  // find the batch incomplete; a thread held up longer has nothing to check there.
  const auto polled_early = [&](std::chrono::steady_clock::time_point rung, bool done) {
    if (std::chrono::steady_clock::now() - rung < std::chrono::milliseconds(30)) CHECK_FALSE(done);
  };
  auto rung = std::chrono::steady_clock::now();
  b.ring();
  polled_early(rung, b.poll());
  REQUIRE(b.wait());
  CHECK(std::chrono::steady_clock::now() - rung >= std::chrono::milliseconds(30));
  CHECK(b.poll());
  CHECK(s.word(8) == 41);  // the FAA saw the WRITE: the inner batch ran, in order
  b.clear();
  b.read(transport_suite::data(0), s.at(16, 8));
  b.ring();
  REQUIRE(b.wait());
  CHECK(s.word(16) == 42);
  // Failures are the inner batch's, after the same wait.
  b.clear();
  b.read({0, shm_nodes::region_bytes}, s.at(0, 8));
  rung = std::chrono::steady_clock::now();
  b.ring();
  polled_early(rung, b.poll());
  CHECK(b.wait().error() == kvc::errc::out_of_range);
}

TEST_CASE("faulty: a client crashing mid-batch leaves the rest unexecuted and stays dead",
          "[transport][faulty]") {
  shm_nodes nodes;
  kvc::fault_config config;
  config.crash_after_ops = 5;  // the 6th operation is never executed
  kvc::faulty<kvc::shm_transport> t(nodes.attach(), config);
  transport_suite::scratch s(t, 64);
  auto b = t.new_batch();
  for (int i = 0; i < 3; ++i) b.faa(transport_suite::data(0), 1, s.at(0, 8));
  REQUIRE(transport_suite::run(b));
  CHECK_FALSE(t.crashed());
  b.clear();
  for (int i = 0; i < 4; ++i) b.faa(transport_suite::data(0), 1, s.at(0, 8));
  const auto result = transport_suite::run(b);
  REQUIRE_FALSE(result);
  CHECK(result.error() == kvc::errc::unreachable);
  CHECK_THAT(result.detail(), Catch::Contains("crashed"));
  CHECK(b.status(0) == kvc::errc{});
  CHECK(b.status(1) == kvc::errc{});
  CHECK(b.status(2) == kvc::errc::unreachable);
  CHECK(b.status(3) == kvc::errc::not_executed);
  CHECK(t.crashed());
  // The remote counter got exactly the executed increments; the client is dead from now on.
  kvc::shm_transport observer = nodes.attach();
  transport_suite::scratch o(observer, 16);
  auto r = observer.new_batch();
  r.read(transport_suite::data(0), o.at(0, 8));
  REQUIRE(transport_suite::run(r));
  CHECK(o.word(0) == 5);
  b.clear();
  b.read(transport_suite::data(1), s.at(0, 8));
  CHECK(transport_suite::run(b).error() == kvc::errc::unreachable);
}

TEST_CASE("faulty: random crashes are reproducible from the seed", "[transport][faulty]") {
  shm_nodes nodes;
  auto crash_point = [&](std::uint64_t seed) {
    kvc::fault_config config;
    config.seed = seed;
    config.crash_probability = 0.05;
    kvc::faulty<kvc::shm_transport> t(nodes.attach(), config);
    transport_suite::scratch s(t, 16);
    std::uint64_t executed = 0;
    for (int batch = 0; batch < 1000 && !t.crashed(); ++batch) {
      auto b = t.new_batch();
      for (int i = 0; i < 8; ++i) b.faa(transport_suite::data(0, 64), 1, s.at(0, 8));
      (void)transport_suite::run(b);
      for (std::size_t i = 0; i < b.size(); ++i) executed += b.status(i) == kvc::errc{};
    }
    CHECK(t.crashed());
    return executed;
  };
  CHECK(crash_point(11) == crash_point(11));
  CHECK(crash_point(11) != crash_point(12));
}

TEST_CASE("faulty: unreachable memory nodes", "[transport][faulty]") {
  faulty_env env;
  auto& t = env.client();
  transport_suite::scratch s(t, 64);
  t.set_unreachable(1, true);
  auto b = t.new_batch();
  const auto a = b.faa(transport_suite::data(1), 1, s.at(0, 8));
  const auto a2 = b.faa(transport_suite::data(1), 1, s.at(8, 8));
  const auto ok = b.faa(transport_suite::data(0), 1, s.at(16, 8));
  REQUIRE_FALSE(transport_suite::run(b));
  CHECK(b.status(a) == kvc::errc::unreachable);
  CHECK(b.status(a2) == kvc::errc::not_executed);
  CHECK(b.status(ok) == kvc::errc{});
  t.set_unreachable(1, false);
  b.clear();
  b.faa(transport_suite::data(1), 1, s.at(0, 8));
  REQUIRE(transport_suite::run(b));
  CHECK(s.word(0) == 0);  // the failed increments never happened
}

// As a NIC's retries before its queue pair gives up: a batch with an operation to an unreachable
// node completes unreachable_wait after ring(); one without is done at once.
TEST_CASE("faulty: a batch to an unreachable node completes after unreachable_wait",
          "[transport][faulty]") {
  shm_nodes nodes;
  kvc::fault_config config;
  config.unreachable_wait = std::chrono::milliseconds(30);
  kvc::faulty<kvc::shm_transport> t(nodes.attach(), config);
  transport_suite::scratch s(t, 64);
  t.set_unreachable(1, true);
  auto b = t.new_batch();
  const auto ok = b.faa(transport_suite::data(0), 1, s.at(0, 8));
  const auto gone = b.faa(transport_suite::data(1), 1, s.at(8, 8));
  const auto rung = std::chrono::steady_clock::now();
  b.ring();
  // A poll provably before the completion (under 30 ms after ring()) finds it incomplete.
  const bool done_early = b.poll();
  if (std::chrono::steady_clock::now() - rung < std::chrono::milliseconds(30)) {
    CHECK_FALSE(done_early);
  }
  CHECK(b.wait().error() == kvc::errc::unreachable);
  CHECK(std::chrono::steady_clock::now() - rung >= std::chrono::milliseconds(30));
  CHECK(b.poll());
  CHECK(b.status(ok) == kvc::errc{});
  CHECK(b.status(gone) == kvc::errc::unreachable);
  b.clear();
  b.faa(transport_suite::data(0), 1, s.at(16, 8));
  b.ring();
  CHECK(b.poll());  // nothing unreachable: done in ring()
  REQUIRE(b.wait());
  CHECK(s.word(16) == 1);
}

// A writer flips a 64-byte record between all-A and all-B words; a reader whose READs are torn
// must see mixed records, and only mixes at 8-byte granularity.
TEST_CASE("faulty: torn READs mix whole 8-byte words of a concurrent writer",
          "[transport][faulty]") {
  shm_nodes nodes;
  kvc::fault_config config;
  config.torn_read_probability = 1.0;
  config.tear_pause = std::chrono::microseconds(200);
  kvc::faulty<kvc::shm_transport> reader(nodes.attach(), config);
  std::atomic<bool> stop{false};
  std::atomic<int> write_failures{0};
  std::thread writer([&] {
    kvc::shm_transport w = nodes.attach();
    transport_suite::scratch s(w, 128);
    for (std::size_t i = 0; i < 8; ++i) {
      const std::uint64_t a = 0xAAAAAAAAAAAAAAAAu, bb = 0xBBBBBBBBBBBBBBBBu;
      std::memcpy(s.bytes() + 8 * i, &a, 8);
      std::memcpy(s.bytes() + 64 + 8 * i, &bb, 8);
    }
    for (std::uint64_t n = 0; !stop.load(); ++n) {
      auto b = w.new_batch();
      b.write(transport_suite::data(0), s.at(n % 2 == 0 ? 0 : 64, 64));
      if (!transport_suite::run(b)) ++write_failures;
    }
  });
  transport_suite::scratch s(reader, 64);
  int mixed = 0;
  for (int i = 0; i < 200 && mixed < 3; ++i) {
    auto b = reader.new_batch();
    b.read(transport_suite::data(0), s.at(0, 64));
    REQUIRE(transport_suite::run(b));
    bool has_a = false, has_b = false;
    for (std::size_t w = 0; w < 8; ++w) {
      const std::uint64_t v = s.word(8 * w);
      const bool word_ok = v == 0 || v == 0xAAAAAAAAAAAAAAAAu || v == 0xBBBBBBBBBBBBBBBBu;
      CHECK(word_ok);  // never a torn word
      has_a |= v == 0xAAAAAAAAAAAAAAAAu;
      has_b |= v == 0xBBBBBBBBBBBBBBBBu;
    }
    mixed += has_a && has_b;
  }
  stop = true;
  writer.join();
  CHECK(write_failures == 0);
  CHECK(reader.torn_reads() > 0);  // the fault was injected...
  CHECK(mixed > 0);                // ...and let the writer's words in between

  // A READ is split only on remote 8-byte boundaries: at an odd offset, no word is split.
  kvc::shm_transport plain = nodes.attach();
  transport_suite::scratch p(plain, 64);
  for (std::size_t i = 0; i < 40; ++i) p.bytes()[i] = static_cast<std::byte>(i + 1);
  auto w = plain.new_batch();
  w.write(transport_suite::data(1, 3), p.at(0, 40));
  REQUIRE(transport_suite::run(w));
  const auto before = reader.torn_reads();
  auto b = reader.new_batch();
  b.read(transport_suite::data(1, 3), s.at(0, 40));
  b.read(transport_suite::data(1, 3), s.at(40, 5));  // no interior boundary: read whole
  REQUIRE(transport_suite::run(b));
  CHECK(reader.torn_reads() == before + 1);
  CHECK(std::memcmp(s.bytes(), p.bytes(), 40) == 0);
  CHECK(std::memcmp(s.bytes() + 40, p.bytes(), 5) == 0);
}
