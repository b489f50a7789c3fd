// The Transport conformance suite, run over every transport model. A translation unit defines
// KVC_TRANSPORT_ENVS (a comma-separated list of environment types) and includes this file.
//
// An environment type E provides:
//   using transport = ...;                 // the Transport under test
//   E();                                   // two memory nodes (ids 0 and 1) and one client
//   transport& client();                   // that client
//   transport connect_client();            // a new, independent client (also after fork())
//   static constexpr std::uint64_t region_bytes;
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "../support/fork_child.hpp"
#include "kvc/concepts.hpp"
#include "kvc/transport/region.hpp"

#ifndef KVC_TRANSPORT_SUITE_TAG
#define KVC_TRANSPORT_SUITE_TAG ""
#endif

namespace transport_suite {

// 8-byte aligned scratch memory registered with a transport. Usable from any thread (Catch2's
// assertions are not): a failed registration ends the test program with a message.
template <class T>
struct scratch {
  scratch(T& t, std::size_t bytes) : mem(bytes / 8 + 1), reg(registration(t)) {}
  std::vector<std::uint64_t> mem;
  typename T::registration reg;

  kvc::local_buffer at(std::size_t offset, std::size_t length) {
    return reg.buffer().sub(offset, length);
  }
  std::byte* bytes() { return reinterpret_cast<std::byte*>(mem.data()); }
  std::uint64_t word(std::size_t offset) {
    std::uint64_t w;
    std::memcpy(&w, bytes() + offset, 8);
    return w;
  }

 private:
  typename T::registration registration(T& t) {
    auto r = t.register_memory(
        std::span<std::byte>(reinterpret_cast<std::byte*>(mem.data()), mem.size() * 8));
    if (!r) {
      std::fprintf(stderr, "register_memory failed: %s\n", r.message().c_str());
      std::abort();
    }
    return std::move(*r);
  }
};

// Rings a batch and waits for it.
template <class Batch>
kvc::result<void> run(Batch& b) {
  b.ring();
  return b.wait();
}

// The first data byte of node n's region, past the header.
inline kvc::remote_ptr data(kvc::node_id n, std::uint64_t offset = 0) {
  return {n, kvc::region_header::reserved_bytes + offset};
}

}  // namespace transport_suite

TEMPLATE_TEST_CASE("transport: the region header is readable at offset 0",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  auto& t = env.client();
  static_assert(kvc::Transport<typename TestType::transport>);
  transport_suite::scratch s(t, sizeof(kvc::region_header));
  for (kvc::node_id n : {kvc::node_id{0}, kvc::node_id{1}}) {
    auto b = t.new_batch();
    b.read({n, 0}, s.at(0, sizeof(kvc::region_header)));
    REQUIRE(transport_suite::run(b));
    kvc::region_header h;
    std::memcpy(&h, s.bytes(), sizeof h);
    CHECK(kvc::check_region_header(h, TestType::region_bytes));
    CHECK(h.node == n);
    CHECK(t.region_bytes(n) == TestType::region_bytes);
  }
}

TEMPLATE_TEST_CASE("transport: WRITE then READ returns the bytes, at any alignment",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  auto& t = env.client();
  transport_suite::scratch s(t, 512);
  for (std::size_t len : {1u, 3u, 8u, 13u, 64u, 200u}) {
    for (std::size_t skew : {0u, 1u, 5u, 8u}) {
      for (std::size_t i = 0; i < len; ++i) {
        s.bytes()[i] = static_cast<std::byte>((len * 31 + skew * 7 + i) & 0xFF);
      }
      auto w = t.new_batch();
      w.write(transport_suite::data(1, 100 + skew), s.at(0, len));
      REQUIRE(transport_suite::run(w));
      std::memset(s.bytes() + 256, 0, 256);
      auto r = t.new_batch();
      r.read(transport_suite::data(1, 100 + skew), s.at(256 + skew, len));
      REQUIRE(transport_suite::run(r));
      CHECK(std::memcmp(s.bytes(), s.bytes() + 256 + skew, len) == 0);
    }
  }
}

TEMPLATE_TEST_CASE("transport: CAS and FAA are 8-byte read-modify-writes returning the old value",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  auto& t = env.client();
  transport_suite::scratch s(t, 64);
  const auto word = transport_suite::data(0, 64);
  std::uint64_t init = 41;
  std::memcpy(s.bytes(), &init, 8);
  auto b = t.new_batch();
  b.write(word, s.at(0, 8));
  const auto lost = b.cas(word, 40, 1000, s.at(8, 8));  // expected value wrong: no swap
  const auto won = b.cas(word, 41, 42, s.at(16, 8));
  const auto add = b.faa(word, 8, s.at(24, 8));
  const auto wrap = b.faa(word, ~std::uint64_t{0}, s.at(32, 8));  // adds -1, wrapping
  b.read(word, s.at(40, 8));
  REQUIRE(transport_suite::run(b));
  CHECK(b.status(lost) == kvc::errc{});  // a lost CAS is a completed operation, not an error
  CHECK(s.word(8) == 41);                // lost: the value it found
  CHECK(s.word(16) == 41);               // won: found what it expected
  CHECK(b.status(won) == kvc::errc{});
  CHECK(s.word(24) == 42);
  CHECK(b.status(add) == kvc::errc{});
  CHECK(s.word(32) == 50);
  CHECK(b.status(wrap) == kvc::errc{});
  CHECK(s.word(40) == 49);
}

TEMPLATE_TEST_CASE("transport: a batch executes in posting order",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  auto& t = env.client();
  transport_suite::scratch s(t, 256);
  const auto x = transport_suite::data(0, 8);
  const auto y = transport_suite::data(0, 16);
  for (std::uint64_t round = 0; round < 20; ++round) {
    const std::uint64_t v = 1000 * round + 1;
    std::memcpy(s.bytes(), &v, 8);
    auto b = t.new_batch();
    b.write(x, s.at(0, 8));                             // x = v
    b.read(x, s.at(8, 8));                              // sees v
    b.cas(x, v, v + 1, s.at(16, 8));                    // x = v + 1
    b.read(x, s.at(24, 8));                             // sees v + 1
    b.faa(x, 10, s.at(32, 8));                          // x = v + 11
    b.write(y, s.at(24, 8));                            // y = what the READ before saw: v + 1
    b.read(transport_suite::data(0, 8), s.at(40, 16));  // x and y together
    REQUIRE(transport_suite::run(b));
    CHECK(s.word(8) == v);
    CHECK(s.word(16) == v);
    CHECK(s.word(24) == v + 1);
    CHECK(s.word(32) == v + 1);
    CHECK(s.word(40) == v + 11);
    CHECK(s.word(48) == v + 1);
  }
}

TEMPLATE_TEST_CASE("transport: bad accesses fail cleanly and stop their connection's batch",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  auto& t = env.client();
  transport_suite::scratch s(t, 64);
  const std::uint64_t end = TestType::region_bytes;
  auto b = t.new_batch();
  const auto inside = b.read({0, end - 8}, s.at(0, 8));                // the last word: fine
  const auto beyond = b.read({0, end - 4}, s.at(8, 8));                // crosses the end
  const auto after = b.read(transport_suite::data(0), s.at(16, 8));    // same node, later
  const auto other = b.faa(transport_suite::data(1), 1, s.at(24, 8));  // another node goes on
  REQUIRE_FALSE(transport_suite::run(b));
  CHECK(b.status(inside) == kvc::errc{});
  CHECK(b.status(beyond) == kvc::errc::out_of_range);
  CHECK(b.status(after) == kvc::errc::not_executed);
  CHECK(b.status(other) == kvc::errc{});
  const auto outcome = b.wait();
  CHECK(outcome.error() == kvc::errc::out_of_range);
  CHECK_THAT(outcome.detail(), Catch::Contains("operation 1: READ of 8 bytes at node 0"));

  // A misaligned atomic, an atomic with a wrong-sized result buffer, an unknown node.
  b.clear();
  const auto misaligned = b.cas(transport_suite::data(1, 4), 0, 1, s.at(0, 8));
  const auto short_result = b.faa(transport_suite::data(0), 1, s.at(0, 4));
  const auto unknown = b.read({77, 4096}, s.at(0, 8));
  REQUIRE_FALSE(transport_suite::run(b));
  CHECK(b.status(misaligned) == kvc::errc::invalid_argument);
  CHECK(b.status(short_result) == kvc::errc::invalid_argument);
  CHECK((b.status(unknown) == kvc::errc::invalid_argument ||
         b.status(unknown) == kvc::errc::unreachable));

  // The client works afterwards (verbs: its broken connection was re-established).
  b.clear();
  const auto again = b.faa(transport_suite::data(0), 1, s.at(0, 8));
  REQUIRE(transport_suite::run(b));
  CHECK(b.status(again) == kvc::errc{});
}

TEMPLATE_TEST_CASE("transport: a cleared batch is reused; an empty batch completes",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  auto& t = env.client();
  transport_suite::scratch s(t, 64);
  auto b = t.new_batch();
  REQUIRE(transport_suite::run(b));
  CHECK(b.size() == 0);
  for (std::uint64_t i = 0; i < 100; ++i) {
    b.clear();
    b.faa(transport_suite::data(1, 8), 1, s.at(0, 8));
    REQUIRE(transport_suite::run(b));
    CHECK(s.word(0) == i);
  }
}

TEMPLATE_TEST_CASE("transport: CAS increments from 4 threads lose nothing",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  constexpr int threads = 4;
  constexpr std::uint64_t per_thread = 2000;
  const auto counter = transport_suite::data(0, 256);
  std::atomic<int> failures{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&] {
      auto t = env.connect_client();
      transport_suite::scratch s(t, 16);
      std::uint64_t seen = 0;
      for (std::uint64_t done = 0; done < per_thread;) {
        auto b = t.new_batch();
        b.cas(counter, seen, seen + 1, s.at(0, 8));
        if (!transport_suite::run(b)) {
          ++failures;
          return;
        }
        const std::uint64_t found = s.word(0);
        if (found == seen) ++done;
        seen = found == seen ? seen + 1 : found;
      }
    });
  }
  for (auto& th : pool) th.join();
  CHECK(failures == 0);
  auto& t = env.client();
  transport_suite::scratch s(t, 16);
  auto b = t.new_batch();
  b.read(counter, s.at(0, 8));
  REQUIRE(transport_suite::run(b));
  CHECK(s.word(0) == threads * per_thread);
}

// Store buffering across clients: each of two clients WRITEs its flag then READs the other's in
// one batch; posting order as seen by others forbids both reading 0 in the same round.
TEMPLATE_TEST_CASE("transport: WRITE then READ in a batch is ordered for other clients too",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  constexpr std::uint64_t rounds = 20000;
  const auto x = transport_suite::data(0, 8192);               // rounds x 8 bytes
  const auto y = transport_suite::data(0, 8192 + 8 * rounds);  // after x
  std::atomic<std::uint64_t> arrived{0};
  std::vector<std::uint64_t> seen[2] = {std::vector<std::uint64_t>(rounds),
                                        std::vector<std::uint64_t>(rounds)};
  std::atomic<int> failures{0};
  auto client = [&](int me) {
    auto t = env.connect_client();
    transport_suite::scratch s(t, 16);
    const std::uint64_t one = 1;
    std::memcpy(s.bytes(), &one, 8);
    const auto mine = me == 0 ? x : y;
    const auto theirs = me == 0 ? y : x;
    for (std::uint64_t r = 0; r < rounds; ++r) {
      // A two-party spin barrier per round, so that the rounds overlap. It yields: on a busy
      // machine the other client may be waiting for this core.
      arrived.fetch_add(1);
      while (arrived.load() < 2 * (r + 1)) std::this_thread::yield();
      auto b = t.new_batch();
      b.write(mine + 8 * r, s.at(0, 8));
      b.read(theirs + 8 * r, s.at(8, 8));
      if (!transport_suite::run(b)) ++failures;
      seen[me][r] = s.word(8);
    }
  };
  std::thread other(client, 1);
  client(0);
  other.join();
  CHECK(failures == 0);
  std::uint64_t both_missed = 0;
  for (std::uint64_t r = 0; r < rounds; ++r) both_missed += seen[0][r] == 0 && seen[1][r] == 0;
  CHECK(both_missed == 0);
}

// Real one-sided concurrency across processes: 4 forked clients each CAS-increment one remote
// counter 100,000 times; the total must be exact.
TEMPLATE_TEST_CASE("transport: CAS increments from 4 processes lose nothing",
                   "[transport]" KVC_TRANSPORT_SUITE_TAG, KVC_TRANSPORT_ENVS) {
  TestType env;
  constexpr int processes = 4;
  constexpr std::uint64_t per_process = 100000;
  const auto counter = transport_suite::data(1, 512);
  std::vector<pid_t> children;
  for (int p = 0; p < processes; ++p) {
    const pid_t pid = kvc_test::fork_child();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      {
        auto t = env.connect_client();
        std::uint64_t old = 0;
        auto reg =
            t.register_memory(std::span<std::byte>(reinterpret_cast<std::byte*>(&old), sizeof old));
        if (!reg) ::_exit(3);
        std::uint64_t seen = 0;
        auto b = t.new_batch();
        for (std::uint64_t done = 0; done < per_process;) {
          b.clear();
          b.cas(counter, seen, seen + 1, reg->buffer());
          b.ring();
          if (!b.wait()) {
            code = 2;
            break;
          }
          if (old == seen) ++done;
          seen = old == seen ? seen + 1 : old;
        }
      }
      ::_exit(code);
    }
    children.push_back(pid);
  }
  for (const pid_t pid : children) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  auto& t = env.client();
  transport_suite::scratch s(t, 16);
  auto b = t.new_batch();
  b.read(counter, s.at(0, 8));
  REQUIRE(transport_suite::run(b));
  CHECK(s.word(0) == processes * per_process);
}
