#include <kvc/evict/lfu.hpp>
#include <kvc/evict/priority_ttl.hpp>
#include <kvc/evict/queue_policy.hpp>
#include <kvc/evict/s3fifo.hpp>
#include <kvc/evict/sieve.hpp>
#include <kvc/evict/tinylfu.hpp>

#include <algorithm>
#include <catch2/catch.hpp>
#include <deque>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "../support/tree_workload.hpp"

// Every shipped policy; the suite below runs over each.
#define ALL_POLICIES                                                                         \
  kvc::lru_policy, kvc::fifo_policy, kvc::sieve_policy, kvc::s3fifo_policy, kvc::lfu_policy, \
      kvc::tinylfu<kvc::lru_policy>, kvc::priority_ttl_policy<>

namespace {

template <class Policy>
struct entry : Policy::hook {
  int id = 0;
  bool pinned = false;
};

template <class Policy>
auto evictable() {
  return [](typename Policy::hook& h) { return !static_cast<entry<Policy>&>(h).pinned; };
}

// Takes victims until the policy has none, erasing each; returns their ids in order.
template <class Policy>
std::vector<int> drain(Policy& p) {
  std::vector<int> order;
  while (auto* h = p.victim(evictable<Policy>())) {
    order.push_back(static_cast<entry<Policy>*>(h)->id);
    p.erase(*h);
  }
  return order;
}

}  // namespace

TEMPLATE_TEST_CASE("every policy evicts each entry exactly once and tracks its size", "[evict]",
                   ALL_POLICIES) {
  TestType policy;
  std::deque<entry<TestType>> entries(100);
  std::mt19937 rng(7);
  for (int i = 0; i < 100; ++i) {
    entries[static_cast<std::size_t>(i)].id = i;
    policy.insert(entries[static_cast<std::size_t>(i)],
                  static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15u);
  }
  CHECK(policy.size() == 100);
  for (int i = 0; i < 500; ++i) {
    auto& e = entries[rng() % 100];
    policy.access(e, static_cast<std::uint64_t>(e.id) * 0x9E3779B97F4A7C15u);
  }
  CHECK(policy.size() == 100);
  auto order = drain(policy);
  CHECK(policy.size() == 0);
  std::sort(order.begin(), order.end());
  std::vector<int> all(100);
  std::iota(all.begin(), all.end(), 0);
  CHECK(order == all);
}

TEMPLATE_TEST_CASE("no policy hands out an entry that is not evictable", "[evict]", kvc::lru_policy,
                   kvc::fifo_policy, kvc::sieve_policy, kvc::s3fifo_policy) {
  TestType policy;
  std::deque<entry<TestType>> entries(50);
  for (int i = 0; i < 50; ++i) {
    auto& e = entries[static_cast<std::size_t>(i)];
    e.id = i;
    e.pinned = i % 3 == 0;  // 17 pinned
    policy.insert(e, static_cast<std::uint64_t>(i + 1));
    if (i % 2 == 0) policy.access(e, static_cast<std::uint64_t>(i + 1));
  }
  const auto order = drain(policy);
  CHECK(order.size() == 33);
  for (int id : order) CHECK(id % 3 != 0);
  // Only pinned entries are left: victim() terminates and finds none.
  CHECK(policy.size() == 17);
  CHECK(policy.victim(evictable<TestType>()) == nullptr);
  // Unpinned, they become victims again.
  for (auto& e : entries) e.pinned = false;
  CHECK(drain(policy).size() == 17);
  CHECK(policy.victim(evictable<TestType>()) == nullptr);  // and an empty policy has none
}

TEMPLATE_TEST_CASE("erasing entries the policy did not choose keeps it consistent", "[evict]",
                   ALL_POLICIES) {
  TestType policy;
  std::deque<entry<TestType>> entries(20);
  for (int i = 0; i < 20; ++i) {
    entries[static_cast<std::size_t>(i)].id = i;
    policy.insert(entries[static_cast<std::size_t>(i)], static_cast<std::uint64_t>(i + 1));
  }
  // Ask for a victim, then erase something else (the host erased a block itself).
  auto* v = policy.victim(evictable<TestType>());
  REQUIRE(v != nullptr);
  auto& other = entries[static_cast<std::size_t>((static_cast<entry<TestType>*>(v)->id + 5) % 20)];
  policy.erase(other);
  CHECK(policy.size() == 19);
  auto order = drain(policy);
  CHECK(order.size() == 19);
  CHECK(std::find(order.begin(), order.end(), other.id) == order.end());
}

namespace {
template <class Policy>
std::vector<int> hand_worked(Policy& policy, std::deque<entry<Policy>>& e,
                             std::initializer_list<int> accessed) {
  for (std::size_t i = 0; i < e.size(); ++i) {
    e[i].id = static_cast<int>(i);
    policy.insert(e[i], i + 1);
  }
  for (int id : accessed)
    policy.access(e[static_cast<std::size_t>(id)], static_cast<std::uint64_t>(id + 1));
  return drain(policy);
}
}  // namespace

TEST_CASE("LRU evicts least recently used first", "[evict][lru]") {
  kvc::lru_policy p;
  std::deque<entry<kvc::lru_policy>> e(4);
  CHECK(hand_worked(p, e, {0, 2, 0}) == std::vector<int>{1, 3, 2, 0});
}

TEST_CASE("FIFO ignores accesses", "[evict][fifo]") {
  kvc::fifo_policy p;
  std::deque<entry<kvc::fifo_policy>> e(4);
  CHECK(hand_worked(p, e, {0, 2, 0}) == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("SIEVE's hand skips visited entries and clears them", "[evict][sieve]") {
  // Queue oldest..newest: 0 1 2 3; 0 and 2 visited. The hand clears 0, evicts 1; moves on, clears
  // 2, evicts 3; wraps to 0 (now unvisited) and evicts it; then 2.
  kvc::sieve_policy p;
  std::deque<entry<kvc::sieve_policy>> e(4);
  CHECK(hand_worked(p, e, {0, 2}) == std::vector<int>{1, 3, 0, 2});
}

TEST_CASE("SIEVE keeps its hand where it stopped", "[evict][sieve]") {
  kvc::sieve_policy p;
  std::deque<entry<kvc::sieve_policy>> e(5);
  for (std::size_t i = 0; i < 5; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], i + 1);
  }
  p.access(e[0], 1);
  p.access(e[1], 2);
  auto* v = p.victim(evictable<kvc::sieve_policy>());  // clears 0, 1; evicts 2
  REQUIRE(static_cast<entry<kvc::sieve_policy>*>(v)->id == 2);
  p.erase(*v);
  p.access(e[0], 1);  // visited again, but the hand is past it
  v = p.victim(evictable<kvc::sieve_policy>());
  CHECK(static_cast<entry<kvc::sieve_policy>*>(v)->id == 3);
}

TEST_CASE(
    "S3-FIFO: one-hit entries leave from small, re-used ones move to main, ghosts return to main",
    "[evict][s3fifo]") {
  kvc::s3fifo_policy p;
  std::deque<entry<kvc::s3fifo_policy>> e(10);
  for (std::size_t i = 0; i < 10; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], 1000 + i);
  }
  CHECK(p.small_size() == 10);
  CHECK(p.main_size() == 0);

  // 0 was never re-used: it is the first victim, and its key becomes a ghost.
  auto* v = p.victim(evictable<kvc::s3fifo_policy>());
  REQUIRE(static_cast<entry<kvc::s3fifo_policy>*>(v)->id == 0);
  p.erase(*v);

  // 1 was re-used: it moves to main, and 2 is the victim.
  p.access(e[1], 1001);
  v = p.victim(evictable<kvc::s3fifo_policy>());
  REQUIRE(static_cast<entry<kvc::s3fifo_policy>*>(v)->id == 2);
  p.erase(*v);
  CHECK(p.main_size() == 1);

  // The ghost remembers as many keys as main holds (1): 2's, not 0's, which came before it.
  p.insert(e[0], 1000);
  CHECK(p.main_size() == 1);
  CHECK(p.small_size() == 8);
  p.erase(e[0]);
  p.insert(e[2], 1002);
  CHECK(p.main_size() == 2);
  CHECK(p.small_size() == 7);
  // A ghost is used once.
  p.erase(e[2]);
  p.insert(e[2], 1002);
  CHECK(p.main_size() == 1);
  CHECK(p.small_size() == 8);
}

TEST_CASE("S3-FIFO gives main entries with a non-zero counter another round", "[evict][s3fifo]") {
  kvc::s3fifo_policy p(kvc::s3fifo_config{0.5, 64});
  std::deque<entry<kvc::s3fifo_policy>> e(4);
  for (std::size_t i = 0; i < 4; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], 100 + i);
    p.access(e[i], 100 + i);  // all re-used: each will move to main rather than be evicted
  }
  p.access(e[0], 100);
  p.access(e[0], 100);  // 0 reaches counter 3 before moving (the move resets it)
  // Small empties into main (counters reset to 0); main then evicts in FIFO order.
  const auto order = drain(p);
  CHECK(order == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("LFU evicts the least used first, least recently used among equals", "[evict][lfu]") {
  kvc::lfu_policy p(kvc::lfu_config{0});  // no aging
  std::deque<entry<kvc::lfu_policy>> e(4);
  for (std::size_t i = 0; i < 4; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], i + 1);
  }
  for (int n = 0; n < 3; ++n) p.access(e[0], 1);  // counts: 0:4 1:1 2:2 3:1
  p.access(e[2], 3);
  p.access(e[1], 2);  // 1:2, after 2
  CHECK(p.count(e[0]) == 4);
  CHECK(drain(p) == std::vector<int>{3, 2, 1, 0});
}

TEST_CASE("LFU ages: counts halve, so entries that went cold give way", "[evict][lfu]") {
  kvc::lfu_policy p(kvc::lfu_config{2});  // halve after 2 x entries accesses
  std::deque<entry<kvc::lfu_policy>> e(4);
  for (std::size_t i = 0; i < 4; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], i + 1);
  }
  // 0 was popular: count 1 + 6 = 7 (the 7th access overall would halve, so stop at 6).
  for (int n = 0; n < 6; ++n) p.access(e[0], 1);
  CHECK(p.count(e[0]) == 7);
  // Then 3 becomes popular: its 2nd access is the 8th overall and halves every count.
  p.access(e[3], 4);
  CHECK(p.count(e[0]) == 7);
  p.access(e[3], 4);
  CHECK(p.count(e[0]) == 3);  // 7 / 2
  CHECK(p.count(e[3]) == 1);  // 3 / 2
  CHECK(p.count(e[1]) == 0);  // 1 / 2
  for (int n = 0; n < 3; ++n) p.access(e[3], 4);
  CHECK(p.count(e[3]) == 4);
  // 3 now outranks 0; 1 and 2 (count 0) go first, in their old order.
  CHECK(drain(p) == std::vector<int>{1, 2, 0, 3});
}

TEST_CASE("TinyLFU admits a newcomer only when it was seen more often than the victim",
          "[evict][tinylfu]") {
  kvc::tinylfu<kvc::lru_policy> p(kvc::tinylfu_config{1024, 0});
  const std::uint64_t hot = 0x1234567890abcdefu;
  const std::uint64_t cold = 0x0fedcba987654321u;
  const std::uint64_t once = 0x5555aaaa5555aaaau;
  for (int i = 0; i < 6; ++i) p.record(hot);
  p.record(cold);
  p.record(once);
  p.record(cold);
  CHECK(p.sketch().estimate(hot) >= 6);
  CHECK(p.sketch().estimate(cold) >= 2);
  CHECK(p.sketch().estimate(once) == 1);  // only the doorkeeper has seen it
  CHECK(p.sketch().estimate(0x77) == 0);
  CHECK(p.admit(hot, cold));
  CHECK_FALSE(p.admit(cold, hot));
  CHECK_FALSE(p.admit(once, once));  // a tie is not admitted
}

TEST_CASE("TinyLFU's counts fade: every sample_size sightings they halve", "[evict][tinylfu]") {
  kvc::frequency_sketch s(kvc::tinylfu_config{64, 100});
  for (int i = 0; i < 9; ++i) s.record(42);
  CHECK(s.estimate(42) == 9);  // doorkeeper 1 + counters 8
  for (std::uint64_t k = 1000; k < 1090; ++k)
    s.record(k * 0x9E3779B97F4A7C15u);  // 99 sightings in all
  s.record(7);  // the 100th: halves, clears the doorkeeper, then records 7 there
  CHECK(s.estimate(42) == 4);
  CHECK(s.estimate(7) == 1);
}

using kvc_test::manual_clock;

TEST_CASE("priority levels: the lowest level goes first, LRU within a level", "[evict][priority]") {
  using policy = kvc::priority_ttl_policy<manual_clock>;
  policy p(kvc::priority_ttl_config{3, 1});
  std::deque<entry<policy>> e(5);
  for (std::size_t i = 0; i < 5; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], i + 1);  // all at the default level 1
  }
  p.set_priority(e[3], 2);  // a system prompt: kept longest
  p.set_priority(e[4], 0);  // scratch: goes first
  p.access(e[0], 1);        // 0 becomes the most recent at level 1
  p.set_priority(e[2], 7);  // clamped to the top level 2, behind 3
  CHECK(drain(p) == std::vector<int>{4, 1, 0, 3, 2});
}

TEST_CASE("TTL pins keep an entry until the clock passes the pin", "[evict][priority]") {
  using policy = kvc::priority_ttl_policy<manual_clock>;
  manual_clock::current = manual_clock::time_point{std::chrono::seconds(100)};
  policy p;
  std::deque<entry<policy>> e(3);
  for (std::size_t i = 0; i < 3; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], i + 1);
  }
  p.pin_for(e[0], std::chrono::seconds(10));
  p.pin_until(e[1], manual_clock::current + std::chrono::seconds(5));
  p.pin_for(e[1], std::chrono::seconds(2));  // an earlier end does not shorten the pin
  CHECK(p.ttl_pinned_count() == 2);
  CHECK(drain(p) == std::vector<int>{2});
  CHECK(p.victim(evictable<policy>()) == nullptr);
  manual_clock::current += std::chrono::seconds(5);
  CHECK(drain(p) == std::vector<int>{1});
  manual_clock::current += std::chrono::seconds(5);
  CHECK(drain(p) == std::vector<int>{0});
  CHECK(p.size() == 0);
}

TEST_CASE("S3-FIFO finds the evictable entry in main behind entries it must pass over",
          "[evict][s3fifo]") {
  kvc::s3fifo_policy p;
  std::deque<entry<kvc::s3fifo_policy>> e(2);  // 0: an inner block (never evictable), 1: a leaf
  for (std::size_t i = 0; i < 2; ++i) {
    e[i].id = static_cast<int>(i);
    p.insert(e[i], i + 1);
    p.access(e[i], i + 1);
  }
  REQUIRE(p.victim(evictable<kvc::s3fifo_policy>()) != nullptr);  // both move to main
  CHECK(p.main_size() == 2);
  p.access(e[1], 2);
  p.access(e[1], 2);  // the leaf needs two rounds in main before it can go
  e[0].pinned = true;
  auto* v = p.victim(evictable<kvc::s3fifo_policy>());
  REQUIRE(v != nullptr);
  CHECK(static_cast<entry<kvc::s3fifo_policy>*>(v)->id == 1);
}
