// any_policy: each kind gives exactly the victims of its concrete policy, in a radix tree too;
// names parse; configs are checked.
#include <kvc/evict/any_policy.hpp>  // first: the header compiles on its own

#include <kvc/tree/radix_tree.hpp>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../support/tree_workload.hpp"

namespace {

using kvc_test::manual_clock;

using test_any = kvc::basic_any_policy<manual_clock>;

template <class P>
inline constexpr bool is_priority = false;
template <class C>
inline constexpr bool is_priority<kvc::priority_ttl_policy<C>> = true;
template <class P>
inline constexpr bool is_tinylfu = false;
template <class P>
inline constexpr bool is_tinylfu<kvc::tinylfu<P>> = true;

// Calls fn(std::type_identity<P>) with the concrete policy of `kind` (priority+TTL on Clock). A
// kind added to policy_kind without a case here fails to compile (-Wswitch).
template <class Clock, class Fn>
void with_concrete(kvc::policy_kind kind, Fn&& fn) {
  switch (kind) {
    case kvc::policy_kind::lru:
      return fn(std::type_identity<kvc::lru_policy>{});
    case kvc::policy_kind::fifo:
      return fn(std::type_identity<kvc::fifo_policy>{});
    case kvc::policy_kind::sieve:
      return fn(std::type_identity<kvc::sieve_policy>{});
    case kvc::policy_kind::s3fifo:
      return fn(std::type_identity<kvc::s3fifo_policy>{});
    case kvc::policy_kind::lfu:
      return fn(std::type_identity<kvc::lfu_policy>{});
    case kvc::policy_kind::priority_ttl:
      return fn(std::type_identity<kvc::priority_ttl_policy<Clock>>{});
  }
  FAIL("no concrete policy for this kind");
}

// P (Inner, or tinylfu<Inner> with `lead` = the tinylfu config) with the settings of `c`.
template <class Inner, class P = Inner, class... Lead>
P make_concrete(const kvc::any_policy_config& c, const Lead&... lead) {
  if constexpr (std::is_same_v<Inner, kvc::s3fifo_policy>) {
    return P(lead..., c.s3fifo);
  } else if constexpr (std::is_same_v<Inner, kvc::lfu_policy>) {
    return P(lead..., c.lfu);
  } else if constexpr (is_priority<Inner>) {
    return P(lead..., c.priority_ttl);
  } else {
    return P(lead...);
  }
}

// Whether P is priority+TTL, or TinyLFU over it; then priority_of(p) is that policy.
template <class P>
constexpr bool has_priority() {
  if constexpr (is_tinylfu<P>) {
    return is_priority<typename P::inner_type>;
  } else {
    return is_priority<P>;
  }
}
template <class P>
auto& priority_of(P& p) {
  if constexpr (is_tinylfu<P>) {
    return p.inner();
  } else {
    return p;
  }
}

template <class Hook>
struct entry : Hook {
  int id = 0;
};

constexpr std::size_t entry_count = 96;
std::uint64_t key_of(std::size_t id) { return (id + 1) * 0x9E3779B97F4A7C15u; }

// Drives the same random sequence of insert, access, erase, pin changes, victim (erased or
// not), admission and priority calls against `concrete` and `any`; returns each one's victims
// (-1 for none), stopping at the first difference.
template <class Concrete>
std::pair<std::vector<int>, std::vector<int>> run_both(Concrete& concrete, test_any& any,
                                                       std::uint32_t seed) {
  using chook = typename Concrete::hook;
  using ahook = test_any::hook;
  std::vector<entry<chook>> ce(entry_count);
  std::vector<entry<ahook>> ae(entry_count);
  std::vector<char> inserted(entry_count, 0);
  std::vector<char> pinned(entry_count, 0);
  for (std::size_t i = 0; i < entry_count; ++i) ce[i].id = ae[i].id = static_cast<int>(i);
  const auto c_ok = [&](chook& h) {
    return pinned[static_cast<std::size_t>(static_cast<entry<chook>&>(h).id)] == 0;
  };
  const auto a_ok = [&](ahook& h) {
    return pinned[static_cast<std::size_t>(static_cast<entry<ahook>&>(h).id)] == 0;
  };
  constexpr bool prio = has_priority<Concrete>();
  CHECK(prio == (any.kind() == kvc::policy_kind::priority_ttl));
  manual_clock::current = manual_clock::time_point{std::chrono::seconds(1000)};

  std::pair<std::vector<int>, std::vector<int>> victims;
  bool same = true;
  std::size_t pinned_victims = 0;
  const auto take_victim = [&](bool erase) {
    auto* cv = concrete.victim(c_ok);
    auto* av = any.victim(a_ok);
    const int cid = cv == nullptr ? -1 : static_cast<entry<chook>*>(cv)->id;
    const int aid = av == nullptr ? -1 : static_cast<entry<ahook>*>(av)->id;
    victims.first.push_back(cid);
    victims.second.push_back(aid);
    if (cid != aid) {
      same = false;
      return;
    }
    if (cid < 0) return;
    const auto id = static_cast<std::size_t>(cid);
    if (pinned[id] != 0) ++pinned_victims;
    if (erase) {
      concrete.erase(ce[id]);
      any.erase(ae[id]);
      inserted[id] = 0;
    }
  };

  std::mt19937 rng(seed);
  for (int step = 0; step < 4000 && same; ++step) {
    const std::size_t id = rng() % entry_count;
    const std::uint64_t key = key_of(id);
    const auto op = rng() % 100;
    if (op < 30 && inserted[id] == 0) {
      concrete.insert(ce[id], key);
      any.insert(ae[id], key);
      inserted[id] = 1;
    } else if (op < 55 && inserted[id] != 0) {
      concrete.access(ce[id], key);
      any.access(ae[id], key);
    } else if (op < 62 && inserted[id] != 0) {
      concrete.erase(ce[id]);
      any.erase(ae[id]);
      inserted[id] = 0;
    } else if (op < 66) {
      pinned[id] ^= 1;
    } else if (op < 71) {
      const std::uint64_t other = key_of(rng() % entry_count);
      if constexpr (is_tinylfu<Concrete>) {
        concrete.record(key);
        any.record(key);
        if (concrete.admit(key, other) != any.admit(key, other)) same = false;
      } else {
        any.record(key);  // does nothing without admission
        if (!any.admit(key, other)) same = false;
      }
    } else if (op < 76) {
      if (op % 3 == 0) {
        manual_clock::current += std::chrono::seconds(1);
      } else if (inserted[id] != 0 && op % 3 == 1) {
        const auto level = static_cast<std::uint8_t>(rng() % 5);  // some above the top: clamped
        if constexpr (prio) priority_of(concrete).set_priority(ce[id], level);
        if (any.set_priority(ae[id], level) != prio) same = false;
      } else if (inserted[id] != 0) {
        const auto ttl = std::chrono::seconds(1 + rng() % 20);
        if constexpr (prio) priority_of(concrete).pin_for(ce[id], ttl);
        if (any.pin_for(ae[id], ttl) != prio) same = false;
      }
    } else {
      take_victim(rng() % 5 != 0);  // sometimes a victim is named but not taken
    }
    if (concrete.size() != any.size()) same = false;
  }
  // Everything unpinned, pins expired: both drain in the same order.
  std::fill(pinned.begin(), pinned.end(), 0);
  manual_clock::current += std::chrono::hours(1);
  for (std::size_t left = concrete.size(); left > 0 && same; --left) take_victim(true);
  CHECK(same);
  CHECK(pinned_victims == 0);
  CHECK(concrete.size() == 0);
  CHECK(any.size() == 0);
  return victims;
}

kvc::any_policy_config test_config(kvc::policy_kind kind, bool admission, std::uint32_t seed) {
  kvc::any_policy_config config;
  config.kind = kind;
  config.s3fifo = kvc::s3fifo_config{0.1 + 0.1 * (seed % 3), 256};
  config.lfu = kvc::lfu_config{seed % 3};  // 0: no aging
  config.priority_ttl = kvc::priority_ttl_config{3, 1};
  if (admission) config.admission = kvc::tinylfu_config{64, 300};
  return config;
}

}  // namespace

TEST_CASE("any_policy gives the concrete policy's victims in the same order", "[evict][any]") {
  for (const kvc::policy_kind kind : kvc::policy_kinds) {
    for (const bool admission : {false, true}) {
      for (std::uint32_t seed = 1; seed <= 3; ++seed) {
        INFO("policy " << (admission ? "tinylfu+" : "") << kvc::to_string(kind) << ", seed "
                       << seed);
        const kvc::any_policy_config config = test_config(kind, admission, seed);
        test_any any(config);
        CHECK(any.kind() == kind);
        CHECK(any.has_admission() == admission);
        with_concrete<manual_clock>(kind, [&]<class P>(std::type_identity<P>) {
          std::pair<std::vector<int>, std::vector<int>> victims;
          if (admission) {
            auto concrete = make_concrete<P, kvc::tinylfu<P>>(config, *config.admission);
            victims = run_both(concrete, any, seed);
          } else {
            auto concrete = make_concrete<P>(config);
            victims = run_both(concrete, any, seed);
          }
          CHECK(victims.first == victims.second);
          CHECK(victims.first.size() > 500);
        });
      }
    }
  }
}

TEST_CASE("any_policy's hook holds the largest hook; hooks are reusable and copies are empty",
          "[evict][any]") {
  constexpr std::size_t largest =
      std::max({sizeof(kvc::lru_policy::hook), sizeof(kvc::fifo_policy::hook),
                sizeof(kvc::sieve_policy::hook), sizeof(kvc::s3fifo_policy::hook),
                sizeof(kvc::lfu_policy::hook), sizeof(kvc::priority_ttl_policy<>::hook)});
  STATIC_REQUIRE(sizeof(kvc::any_policy::hook) == largest);
  STATIC_REQUIRE(alignof(kvc::any_policy::hook) == alignof(std::uint64_t));

  // One entry inserted under every kind in turn.
  entry<kvc::any_policy::hook> e;
  for (const kvc::policy_kind kind : kvc::policy_kinds) {
    kvc::any_policy p(kind);
    p.insert(e, 42);
    p.access(e, 42);
    CHECK(p.size() == 1);
    auto* v = p.victim([](kvc::any_policy::hook&) { return true; });
    CHECK(v == &e);
    p.erase(*v);
    CHECK(p.size() == 0);
  }

  // A copy of an inserted entry is a separate, empty hook: it can be inserted beside it.
  kvc::any_policy p(kvc::policy_kind::lru);
  entry<kvc::any_policy::hook> a;
  a.id = 1;
  p.insert(a, 1);
  entry<kvc::any_policy::hook> b = a;
  b.id = 2;
  p.insert(b, 2);
  b = a;  // assigning leaves b's own link alone
  b.id = 2;
  std::vector<int> order;
  while (auto* v = p.victim([](kvc::any_policy::hook&) { return true; })) {
    order.push_back(static_cast<entry<kvc::any_policy::hook>*>(v)->id);
    p.erase(*v);
  }
  CHECK(order == std::vector<int>{1, 2});
}

TEST_CASE("any_policy forwards admission and priority calls only where they apply",
          "[evict][any]") {
  kvc::any_policy lru(kvc::policy_kind::lru);
  CHECK_FALSE(lru.has_admission());
  CHECK(lru.sketch() == nullptr);
  lru.record(7);
  CHECK(lru.admit(1, 7));  // without admission everything is admitted
  CHECK(lru.get_if<kvc::lru_policy>() != nullptr);
  CHECK(lru.get_if<kvc::fifo_policy>() == nullptr);
  entry<kvc::any_policy::hook> e;
  lru.insert(e, 1);
  CHECK_FALSE(lru.set_priority(e, 2));
  CHECK_FALSE(lru.pin_for(e, std::chrono::seconds(1)));
  CHECK(lru.victim([](kvc::any_policy::hook&) { return true; }) == &e);  // not pinned
  lru.erase(e);

  kvc::any_policy_config config;
  config.kind = kvc::policy_kind::priority_ttl;
  config.admission = kvc::tinylfu_config{};
  kvc::any_policy prio(config);
  CHECK(prio.kind() == kvc::policy_kind::priority_ttl);
  REQUIRE(prio.sketch() != nullptr);
  for (int i = 0; i < 3; ++i) prio.record(7);
  CHECK(prio.admit(7, 8));
  CHECK_FALSE(prio.admit(8, 7));
  prio.insert(e, 1);
  CHECK(prio.pin_for(e, std::chrono::hours(1)));
  CHECK(prio.get_if<kvc::priority_ttl_policy<>>()->ttl_pinned_count() == 1);
  CHECK(prio.victim([](kvc::any_policy::hook&) { return true; }) == nullptr);
  CHECK(prio.set_priority(e, 2));
  prio.erase(e);
  CHECK(prio.size() == 0);
}

namespace {

using kvc::hash64;
using chain = std::vector<hash64>;

template <class P>
kvc::radix_tree<hash64, int, P> reference_tree(const kvc::any_policy_config& c) {
  using tree = kvc::radix_tree<hash64, int, P>;
  if constexpr (std::is_same_v<P, kvc::s3fifo_policy>) {
    return tree(c.s3fifo);
  } else if constexpr (std::is_same_v<P, kvc::lfu_policy>) {
    return tree(c.lfu);
  } else if constexpr (is_priority<P>) {
    return tree(c.priority_ttl);
  } else {
    return tree();
  }
}

using kvc_test::chain_source;

}  // namespace

TEST_CASE("radix_tree<hash64, int, any_policy> evicts as the tree over each concrete policy",
          "[evict][any]") {
  for (const kvc::policy_kind kind : kvc::policy_kinds) {
    for (const bool admission : {false, true}) {
      INFO("policy " << (admission ? "tinylfu+" : "") << kvc::to_string(kind));
      kvc::any_policy_config config = test_config(kind, admission, 1);
      config.s3fifo.ghost_slots = 1024;
      kvc::radix_tree<hash64, int, kvc::any_policy> tree(config);
      REQUIRE(tree.policy().kind() == kind);
      with_concrete<std::chrono::steady_clock>(kind, [&]<class P>(std::type_identity<P>) {
        auto reference = reference_tree<P>(config);
        using any_tree = decltype(tree);
        using ref_tree = decltype(reference);
        constexpr std::size_t capacity = 120;
        std::vector<std::uint64_t> evicted, evicted_ref;
        const auto payload = [](const chain& c) {
          return [&c](std::size_t i) { return static_cast<int>(c[i].value); };
        };
        std::vector<typename any_tree::lease> leases;
        std::vector<typename ref_tree::lease> leases_ref;
        chain_source source(static_cast<std::uint32_t>(kind) + 1);
        for (int step = 0; step < 400; ++step) {
          const auto roll = source.roll() % 10;
          if (roll < 5 || step == 0) {
            const chain c = source.next();
            const auto r = tree.insert(c, payload(c));
            const auto r_ref = reference.insert(c, payload(c));
            REQUIRE(r.existing == r_ref.existing);
            REQUIRE(r.inserted == r_ref.inserted);
          } else if (roll < 8) {
            const chain& c = source.any();
            REQUIRE(tree.access(c) == reference.access(c));
          } else if (roll < 9) {
            const chain& c = source.any();
            leases.push_back(tree.acquire(c));
            leases_ref.push_back(reference.acquire(c));
            if (leases.size() > 3) {
              leases.erase(leases.begin());
              leases_ref.erase(leases_ref.begin());
            }
          } else {
            // A hint on a cached path: applied under priority+TTL, ignored by the others.
            const chain& c = source.any();
            std::vector<typename any_tree::block*> blocks(c.size());
            std::vector<typename ref_tree::block*> blocks_ref(c.size());
            const std::size_t n = tree.match(c, std::span(blocks));
            REQUIRE(reference.match(c, std::span(blocks_ref)) == n);
            for (std::size_t i = 0; i < n; ++i) {
              const bool applied = tree.policy().set_priority(*blocks[i], 2);
              CHECK(applied == (kind == kvc::policy_kind::priority_ttl));
              if constexpr (is_priority<P>) reference.policy().set_priority(*blocks_ref[i], 2);
            }
          }
          if (tree.size() > capacity) {
            tree.evict(tree.size() - capacity, [&](const hash64& h, int&& p) {
              CHECK(p == static_cast<int>(h.value));
              evicted.push_back(h.value);
            });
          }
          if (reference.size() > capacity) {
            reference.evict(reference.size() - capacity,
                            [&](const hash64& h, int&&) { evicted_ref.push_back(h.value); });
          }
          REQUIRE(tree.size() == reference.size());
          REQUIRE(tree.node_count() == reference.node_count());
        }
        CHECK(evicted.size() > 200);
        CHECK(evicted == evicted_ref);
        // The same blocks are cached, and all of them go once nothing is pinned.
        std::vector<std::uint64_t> cached, cached_ref;
        tree.for_each(
            [&](const hash64& h, const auto&, std::size_t) { cached.push_back(h.value); });
        reference.for_each(
            [&](const hash64& h, const auto&, std::size_t) { cached_ref.push_back(h.value); });
        CHECK(cached == cached_ref);
        leases.clear();
        leases_ref.clear();
        evicted.clear();
        evicted_ref.clear();
        tree.evict(SIZE_MAX, [&](const hash64& h, int&&) { evicted.push_back(h.value); });
        reference.evict(SIZE_MAX, [&](const hash64& h, int&&) { evicted_ref.push_back(h.value); });
        CHECK(evicted == evicted_ref);
        CHECK(tree.empty());
        CHECK(tree.policy().size() == 0);
      });
    }
  }
}

TEST_CASE("policy names parse, and bad names are refused with the valid ones listed",
          "[evict][any]") {
  for (const kvc::policy_kind kind : kvc::policy_kinds) {
    auto parsed = kvc::parse_policy_kind(kvc::to_string(kind));
    REQUIRE(parsed);
    CHECK(*parsed == kind);
  }
  CHECK(kvc::to_string(kvc::policy_kind::s3fifo) == "s3fifo");
  CHECK(kvc::to_string(static_cast<kvc::policy_kind>(42)) == "unknown");
  CHECK(kvc::parse_policy_kind("LRU").value() == kvc::policy_kind::lru);
  CHECK(kvc::parse_policy_kind("Priority_TTL").value() == kvc::policy_kind::priority_ttl);

  for (const char* bad : {"arc", "", "lru ", "s3-fifo", "tinylfu", "fifo2"}) {
    auto parsed = kvc::parse_policy_kind(bad);
    REQUIRE_FALSE(parsed);
    CHECK(parsed.error() == kvc::errc::invalid_config);
    const std::string message = parsed.message();
    CHECK(message.find('"' + std::string(bad) + '"') != std::string::npos);
    for (const kvc::policy_kind kind : kvc::policy_kinds) {
      CHECK(message.find(std::string(kvc::to_string(kind))) != std::string::npos);
    }
  }
  CHECK(kvc::parse_policy_kind("arc").message() ==
        "unknown eviction policy \"arc\"; valid names: lru, fifo, sieve, s3fifo, lfu, "
        "priority_ttl (invalid configuration)");

  auto plain = kvc::parse_policy_config("sieve");
  REQUIRE(plain);
  CHECK(plain->kind == kvc::policy_kind::sieve);
  CHECK_FALSE(plain->admission.has_value());
  auto admitted = kvc::parse_policy_config("TinyLFU+lfu");
  REQUIRE(admitted);
  CHECK(admitted->kind == kvc::policy_kind::lfu);
  CHECK(admitted->admission.has_value());
  for (const char* bad : {"tinylfu+", "tinylfu", "tinylfu+tinylfu+lru", "lru+tinylfu", "+lru"}) {
    auto parsed = kvc::parse_policy_config(bad);
    REQUIRE_FALSE(parsed);
    CHECK(parsed.error() == kvc::errc::invalid_config);
    CHECK(parsed.message().find("tinylfu+<kind>") != std::string::npos);
    CHECK(parsed.message().find("priority_ttl") != std::string::npos);
  }
}

TEST_CASE("validate refuses the settings the chosen policy would assert on", "[evict][any]") {
  for (const kvc::policy_kind kind : kvc::policy_kinds) {
    kvc::any_policy_config config;
    config.kind = kind;
    CHECK(kvc::validate(config));
    config.admission = kvc::tinylfu_config{};
    CHECK(kvc::validate(config));
  }
  const auto refused = [](const kvc::any_policy_config& config, const std::string& what) {
    auto checked = kvc::validate(config);
    REQUIRE_FALSE(checked);
    CHECK(checked.error() == kvc::errc::invalid_config);
    CHECK(checked.message().find(what) != std::string::npos);
  };
  kvc::any_policy_config config;
  config.s3fifo.ghost_slots = 1000;
  CHECK(kvc::validate(config));  // not the chosen kind's setting
  config.kind = kvc::policy_kind::s3fifo;
  refused(config, "ghost_slots 1000");
  config.s3fifo = {};
  config.s3fifo.small_ratio = 1.0;
  refused(config, "small_ratio");
  config = {};
  config.kind = kvc::policy_kind::priority_ttl;
  config.priority_ttl.levels = 0;
  refused(config, "levels 0");
  config.priority_ttl.levels = 300;
  refused(config, "levels 300");
  config.priority_ttl = kvc::priority_ttl_config{4, 4};
  refused(config, "default_level 4");
  config = {};
  config.admission = kvc::tinylfu_config{100, 0};
  refused(config, "tinylfu width 100");
  config = {};
  config.kind = static_cast<kvc::policy_kind>(17);
  refused(config, "kind 17");
}
