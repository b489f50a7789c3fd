#include <kvc/evict/lfu.hpp>
#include <kvc/evict/priority_ttl.hpp>
#include <kvc/evict/queue_policy.hpp>
#include <kvc/evict/s3fifo.hpp>
#include <kvc/evict/sieve.hpp>
#include <kvc/evict/tinylfu.hpp>
#include <kvc/tree/radix_tree.hpp>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <list>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <span>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../support/tree_workload.hpp"

namespace {

using kvc::hash64;
using chain = std::vector<hash64>;

chain make_chain(std::span<const std::uint64_t> ids) {
  chain c;
  for (auto id : ids) c.push_back(hash64{id});
  return c;
}
chain make_chain(std::initializer_list<std::uint64_t> ids) {
  return make_chain(std::span<const std::uint64_t>(ids.begin(), ids.size()));
}

template <class Tree>
kvc::insert_result insert(Tree& t, const chain& c) {
  return t.insert(c, [&](std::size_t i) { return static_cast<int>(c[i].value); });
}

template <class Tree>
std::vector<std::uint64_t> evict_all(Tree& t, std::size_t n = SIZE_MAX) {
  std::vector<std::uint64_t> out;
  t.evict(n, [&](const hash64& h, int&& payload) {
    CHECK(payload == static_cast<int>(h.value));  // the payload comes back with its block
    out.push_back(h.value);
  });
  return out;
}

auto ignore = [](const hash64&, int&&) {};

using kvc_test::chain_source;

// Exact LRU over blocks, touching a chain deepest block first (so parents are more recent).
class lru_model {
 public:
  std::size_t leading_run(const chain& c) const {
    std::size_t k = 0;
    while (k < c.size() && where_.count(c[k].value) != 0) ++k;
    return k;
  }
  void use(const chain& c) {
    for (std::size_t i = c.size(); i-- > 0;) {
      auto it = where_.find(c[i].value);
      if (it != where_.end()) order_.erase(it->second);
      order_.push_back(c[i].value);
      where_[c[i].value] = std::prev(order_.end());
    }
  }
  std::uint64_t evict() {
    const std::uint64_t v = order_.front();
    order_.pop_front();
    where_.erase(v);
    return v;
  }
  std::size_t size() const { return order_.size(); }

 private:
  std::list<std::uint64_t> order_;
  std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> where_;
};

}  // namespace

TEST_CASE("insert reports existing and new blocks; match finds the longest cached prefix",
          "[tree]") {
  kvc::radix_tree<hash64, int> t;
  auto r = insert(t, make_chain({1, 2, 3, 4}));
  CHECK(r.existing == 0);
  CHECK(r.inserted == 4);
  r = insert(t, make_chain({1, 2, 3, 4, 5, 6}));  // the leaf's segment is full: a child run
  CHECK(r.existing == 4);
  CHECK(r.inserted == 2);
  CHECK(t.node_count() == 2);
  r = insert(t, make_chain({1, 2, 7}));  // diverges inside the run: split
  CHECK(r.existing == 2);
  CHECK(r.inserted == 1);
  CHECK(t.node_count() == 4);
  CHECK(t.size() == 7);

  CHECK(t.match(make_chain({1, 2, 3, 4, 5, 6, 8})) == 6);
  CHECK(t.match(make_chain({1, 2, 7, 9})) == 3);
  CHECK(t.match(make_chain({1, 2, 3, 9})) == 3);
  CHECK(t.match(make_chain({2, 3})) == 0);  // a block counts only after its own prefix
  CHECK(t.match(chain{}) == 0);

  std::vector<const kvc::radix_tree<hash64, int>::block*> handles(8);
  const auto& ct = t;
  REQUIRE(ct.match(make_chain({1, 2, 7}), handles) == 3);
  CHECK(handles[0]->payload() == 1);
  CHECK(handles[2]->payload() == 7);
  // A short output span gets the first handles; the length is still the whole match.
  std::vector<const kvc::radix_tree<hash64, int>::block*> two(2);
  CHECK(ct.match(make_chain({1, 2, 3, 4}), two) == 4);
  CHECK(two[1]->payload() == 2);

  // Inserting a cached chain again adds nothing.
  r = insert(t, make_chain({1, 2, 7}));
  CHECK(r.existing == 3);
  CHECK(r.inserted == 0);
  CHECK(t.size() == 7);
}

TEST_CASE("a throwing make_payload leaves the tree as it was", "[tree]") {
  kvc::radix_tree<hash64, int> t;
  insert(t, make_chain({1, 2, 3, 4}));
  for (std::size_t fail_at : {0u, 1u, 2u}) {
    INFO("payload " << fail_at << " throws");
    const chain c = fail_at == 0 ? make_chain({1, 2, 7, 8, 9}) : make_chain({1, 2, 3, 4, 5, 6, 7});
    const std::size_t first_new = fail_at == 0 ? 2 : 4;
    CHECK_THROWS_AS(t.insert(c,
                             [&](std::size_t i) -> int {
                               if (i == first_new + fail_at)
                                 throw std::runtime_error("no GPU block");
                               return static_cast<int>(i);
                             }),
                    std::runtime_error);
    CHECK(t.size() == 4);
    CHECK(t.policy().size() == 4);
    CHECK(t.match(c) == first_new);
  }
  // Still fully working: the same chains insert, and everything evicts.
  CHECK(insert(t, make_chain({1, 2, 7, 8, 9})).inserted == 3);
  CHECK(insert(t, make_chain({1, 2, 3, 4, 5, 6, 7})).inserted == 3);
  CHECK(evict_all(t).size() == 10);
  CHECK(t.node_count() == 0);
}

TEST_CASE("long chains span several segments; a leaf grows into slots freed by eviction",
          "[tree]") {
  using tree_type = kvc::radix_tree<hash64, int, kvc::lru_policy>;
  tree_type t;
  std::vector<std::uint64_t> ids(600);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = 1000 + i;
  const chain full = make_chain(ids);
  CHECK(insert(t, full).inserted == 600);
  CHECK(t.node_count() == 3);  // segments of at most 256 blocks: 256 + 256 + 88
  std::vector<const tree_type::block*> handles(600);
  REQUIRE(t.match(full, handles) == 600);
  for (std::size_t i = 0; i < handles.size(); ++i) {
    CHECK(handles[i]->payload() == static_cast<int>(ids[i]));
  }
  // Diverging inside the second segment splits it; no block moves.
  std::vector<std::uint64_t> other(ids.begin(), ids.begin() + 300);
  other.push_back(7);
  CHECK(insert(t, make_chain(other)).inserted == 1);
  CHECK(t.node_count() == 5);
  std::vector<const tree_type::block*> again(600);
  REQUIRE(t.match(full, again) == 600);
  CHECK(again == handles);
  // LRU evicts deepest first across segments: the 7 (older), then the chain's tail.
  t.access(full);
  CHECK(evict_all(t, 1) == std::vector<std::uint64_t>{7});
  const auto tail = evict_all(t, 540);
  REQUIRE(tail.size() == 540);
  CHECK(tail.front() == 1599);
  CHECK(tail.back() == 1060);
  CHECK(t.match(full) == 60);
  CHECK(t.node_count() == 1);
  // The first segment's leaf has 196 free slots after its run: growing by 4 stays in place, and
  // growing past the segment's end continues in a new node.
  CHECK(insert(t, make_chain(std::span(ids).first(64))).inserted == 4);
  CHECK(t.node_count() == 1);
  CHECK(insert(t, make_chain(std::span(ids).first(300))).inserted == 236);
  CHECK(t.node_count() == 2);
  CHECK(t.match(full, again) == 300);
  CHECK(again[0] == handles[0]);
  CHECK(again[299]->payload() == 1299);
  CHECK(evict_all(t).size() == 300);
  CHECK(t.node_count() == 0);
}

TEST_CASE("a throwing make_payload in a later segment takes out the earlier ones too", "[tree]") {
  kvc::radix_tree<hash64, int> t;
  std::vector<std::uint64_t> ids(600);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = 1 + i;
  insert(t, make_chain(std::span(ids).first(10)));
  const chain c = make_chain(ids);
  CHECK_THROWS_AS(t.insert(c,
                           [&](std::size_t i) -> int {
                             if (i == 520) throw std::runtime_error("no GPU block");
                             return static_cast<int>(i);
                           }),
                  std::runtime_error);
  CHECK(t.size() == 10);
  CHECK(t.policy().size() == 10);
  CHECK(t.node_count() == 1);
  CHECK(t.match(c) == 10);
  CHECK(insert(t, c).inserted == 590);
  CHECK(evict_all(t).size() == 600);
  CHECK(t.node_count() == 0);
}

TEST_CASE("for_each visits parents before children with their depth", "[tree]") {
  kvc::radix_tree<hash64, int> t;
  insert(t, make_chain({1, 2, 3}));
  insert(t, make_chain({1, 4}));
  std::unordered_map<std::uint64_t, std::size_t> depth;
  t.for_each([&](const hash64& h, const auto& b, std::size_t d) {
    if (d > 0) CHECK(!depth.empty());
    CHECK(b.payload() == static_cast<int>(h.value));
    depth[h.value] = d;
  });
  CHECK(depth == std::unordered_map<std::uint64_t, std::size_t>{{1, 0}, {2, 1}, {3, 2}, {4, 1}});
}

TEMPLATE_TEST_CASE("eviction removes leaves only: the tree stays prefix-closed", "[tree]",
                   kvc::lru_policy, kvc::fifo_policy, kvc::sieve_policy, kvc::s3fifo_policy,
                   kvc::lfu_policy, kvc::tinylfu<kvc::lru_policy>, kvc::priority_ttl_policy<>) {
  kvc::radix_tree<hash64, int, TestType> t;
  chain_source source(11);
  std::vector<chain> inserted;
  for (int i = 0; i < 300; ++i) {
    inserted.push_back(source.next());
    insert(t, inserted.back());
    if (i % 3 == 0) t.access(source.any());
    if (t.size() > 150) {
      const std::size_t before = t.size();
      const auto gone = evict_all(t, t.size() - 150);
      CHECK(gone.size() == before - 150);
    }
    // Every chain is cached as a prefix: whatever is cached of it starts at its first block.
    for (std::size_t j = inserted.size() > 20 ? inserted.size() - 20 : 0; j < inserted.size();
         ++j) {
      const chain& c = inserted[j];
      const std::size_t m = t.match(c);
      for (std::size_t k = m; k < c.size(); ++k) {
        chain longer(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(k + 1));
        CHECK(t.match(longer) == m);
      }
    }
  }
  evict_all(t);
  CHECK(t.empty());
  CHECK(t.node_count() == 0);
  CHECK(t.policy().size() == 0);
}

TEST_CASE("under LRU, eviction is exactly block LRU (parents touched after children)",
          "[tree][lru]") {
  kvc::radix_tree<hash64, int, kvc::lru_policy> t;
  lru_model model;
  chain_source source(5);
  const std::size_t capacity = 60;
  for (int i = 0; i < 2000; ++i) {
    const chain c = i % 5 == 4 ? source.any() : source.next();
    REQUIRE(t.match(c) == model.leading_run(c));
    const auto r = insert(t, c);
    CHECK(r.existing == model.leading_run(c));
    model.use(c);
    if (t.size() > capacity) {
      const auto gone = evict_all(t, t.size() - capacity);
      for (std::uint64_t g : gone) REQUIRE(g == model.evict());
    }
    REQUIRE(t.size() == model.size());
  }
}

TEST_CASE("a lease pins its path: pinned blocks survive eviction and erase", "[tree][pins]") {
  kvc::radix_tree<hash64, int> t;
  insert(t, make_chain({1, 2, 3, 4, 5, 6, 7, 8}));
  insert(t, make_chain({1, 2, 9}));
  {
    auto lease = t.acquire(make_chain({1, 2, 3, 4, 99}));  // ends inside the run: it splits
    CHECK(lease.length() == 4);
    CHECK(t.node_count() == 4);
    const auto gone = evict_all(t);
    std::vector<std::uint64_t> sorted = gone;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == std::vector<std::uint64_t>{5, 6, 7, 8, 9});
    CHECK(t.match(make_chain({1, 2, 3, 4})) == 4);
    std::vector<kvc::radix_tree<hash64, int>::block*> handles(4);
    REQUIRE(t.match(make_chain({1, 2, 3, 4}), handles) == 4);
    for (auto* b : handles) {
      CHECK(t.pinned(*b));
      CHECK_FALSE(t.evictable(*b));
    }
    CHECK(t.erase(make_chain({1, 2}), ignore) == 0);  // refused: pinned
    CHECK(t.size() == 4);

    // A second lease on a shorter prefix; releasing the first leaves 1, 2 pinned.
    auto inner = t.acquire(make_chain({1, 2}));
    CHECK(inner.length() == 2);
    lease.release();
    CHECK(lease.empty());
    const auto more = evict_all(t);
    CHECK(more == std::vector<std::uint64_t>{4, 3});
    CHECK(t.match(make_chain({1, 2})) == 2);
  }
  CHECK(evict_all(t) == std::vector<std::uint64_t>{2, 1});
  CHECK(t.empty());
}

TEST_CASE("leases move and an empty match gives an empty lease", "[tree][pins]") {
  kvc::radix_tree<hash64, int> t;
  insert(t, make_chain({1, 2}));
  auto none = t.acquire(make_chain({5}));
  CHECK(none.empty());
  kvc::radix_tree<hash64, int>::lease moved;
  {
    auto l = t.acquire(make_chain({1, 2}));
    moved = std::move(l);
  }
  CHECK(moved.length() == 2);
  CHECK(evict_all(t).empty());
  moved = {};
  CHECK(evict_all(t).size() == 2);
}

TEST_CASE("insert under a pinned leaf starts a new run instead of growing the pinned one",
          "[tree][pins]") {
  kvc::radix_tree<hash64, int> t;
  insert(t, make_chain({1, 2}));
  auto l = t.acquire(make_chain({1, 2}));
  insert(t, make_chain({1, 2, 3, 4}));
  CHECK(t.node_count() == 2);
  CHECK(evict_all(t) == std::vector<std::uint64_t>{4, 3});
  l.release();
}

TEST_CASE("erase removes a block and everything below it, descendants first", "[tree]") {
  kvc::radix_tree<hash64, int> t;
  insert(t, make_chain({1, 2, 3, 4}));
  insert(t, make_chain({1, 2, 5, 6}));
  insert(t, make_chain({1, 7}));
  std::vector<std::uint64_t> erased;
  const auto n =
      t.erase(make_chain({1, 2}), [&](const hash64& h, int&&) { erased.push_back(h.value); });
  CHECK(n == 5);
  CHECK(erased.size() == 5);
  CHECK(erased.back() == 2);  // the block itself comes last
  CHECK(t.size() == 2);
  CHECK(t.match(make_chain({1, 7})) == 2);
  CHECK(t.match(make_chain({1, 2})) == 1);
  CHECK(t.erase(make_chain({1, 8}), ignore) == 0);  // not cached
  CHECK(t.erase(make_chain({1}), ignore) == 2);
  CHECK(t.empty());
  CHECK(t.node_count() == 0);
}

TEST_CASE("128-bit keys and S3-FIFO compose with the tree", "[tree]") {
  kvc::radix_tree<kvc::hash128, std::string, kvc::s3fifo_policy> t(kvc::s3fifo_config{0.2, 256});
  std::vector<kvc::hash128> c{{1, 1}, {1, 2}, {1, 3}};
  t.insert(c, [](std::size_t i) { return "block " + std::to_string(i); });
  std::vector<kvc::radix_tree<kvc::hash128, std::string, kvc::s3fifo_policy>::block*> out(3);
  REQUIRE(t.match(c, out) == 3);
  CHECK(out[2]->payload() == "block 2");
  std::vector<std::string> freed;
  t.evict(3, [&](const kvc::hash128&, std::string&& s) { freed.push_back(std::move(s)); });
  CHECK(freed == std::vector<std::string>{"block 2", "block 1", "block 0"});
}

TEST_CASE("concurrent matches under a shared lock while a writer inserts and evicts",
          "[tree][concurrency]") {
  kvc::radix_tree<hash64, int> t;
  std::shared_mutex mutex;
  std::vector<chain> chains;
  chain_source source(3);
  for (int i = 0; i < 200; ++i) chains.push_back(source.next());

  // Bounded work on every thread; readers yield between matches so that the writer, whom a
  // reader-preferring lock could starve, gets its turns.
  std::vector<std::thread> readers;
  std::atomic<long> bad{0};
  std::atomic<long> matched{0};
  for (int r = 0; r < 4; ++r) {
    readers.emplace_back([&, r] {
      std::mt19937 rng(static_cast<std::uint32_t>(r));
      std::vector<const kvc::radix_tree<hash64, int>::block*> out(64);
      const auto& ct = t;
      for (int i = 0; i < 2000; ++i) {
        const chain& c = chains[rng() % chains.size()];
        {
          std::shared_lock lock(mutex);
          const std::size_t m = ct.match(c, out);
          for (std::size_t k = 0; k < std::min(m, out.size()); ++k) {
            if (out[k]->payload() != static_cast<int>(c[k].value)) bad.fetch_add(1);
          }
          matched.fetch_add(static_cast<long>(m), std::memory_order_relaxed);
        }
        std::this_thread::yield();
      }
    });
  }
  std::mt19937 rng(99);
  for (int i = 0; i < 2000; ++i) {
    {
      std::unique_lock lock(mutex);
      insert(t, chains[rng() % chains.size()]);
      if (t.size() > 100) t.evict(t.size() - 100, ignore);
    }
    std::this_thread::yield();
  }
  for (auto& th : readers) th.join();
  CHECK(bad.load() == 0);  // no reader saw a handle that did not belong to its chain
  CHECK(matched.load() > 0);
  CHECK(t.size() <= 100);
}
