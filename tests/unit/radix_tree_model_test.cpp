// A randomized differential test of kvc::radix_tree against a plain model.
//
// The model is a map from each cached block's hash to its parent, its children, the payload it
// was given and its pins. Block hashes are chained, so a hash names its whole prefix: a chain's
// cached prefix is its longest leading run of hashes present in the map, and no tree structure
// of the model's own is needed. Each operation runs on both, and the tree's answers (lengths,
// handles, removed blocks and their order, sizes) must agree with the model's after every step.
//
// The workload: chains that extend earlier chains at random points, short ones and long ones
// (300 to 1,200 new blocks, several 256-block segments each, so that splits land inside shared
// segments and leaves grow into slots freed by eviction), inserts whose make_payload throws at a
// random index, leases, evict(n), erase, access and for_each, under a fixed seed.
#include <kvc/evict/queue_policy.hpp>
#include <kvc/evict/s3fifo.hpp>
#include <kvc/evict/sieve.hpp>
#include <kvc/tree/radix_tree.hpp>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

using kvc::hash64;
using chain = std::vector<hash64>;

// A payload that knows its block and counts live instances, so that a leak, a double
// destruction or a payload handed back moved-from (its hash is 0 then) shows.
struct tracked {
  std::uint64_t hash = 0;
  std::uint64_t serial = 0;  // unique per make_payload call
  static inline std::int64_t live = 0;

  tracked(std::uint64_t h, std::uint64_t s) noexcept : hash(h), serial(s) { ++live; }
  tracked(const tracked& o) noexcept : hash(o.hash), serial(o.serial) { ++live; }
  tracked(tracked&& o) noexcept
      : hash(std::exchange(o.hash, 0)), serial(std::exchange(o.serial, 0)) {
    ++live;
  }
  tracked& operator=(const tracked&) = default;
  tracked& operator=(tracked&& o) noexcept {
    hash = std::exchange(o.hash, 0);
    serial = std::exchange(o.serial, 0);
    return *this;
  }
  ~tracked() { --live; }
};

struct injected_failure {};

// splitmix64's finalizer: a bijection, so distinct counters give distinct (random-looking) hashes.
std::uint64_t mix(std::uint64_t x) noexcept {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

#define MODEL_CHECK(cond)                                                                 \
  do {                                                                                    \
    if (!(cond)) FAIL("step " << step_ << " (" << op_ << "): " #cond << "; " << errors_); \
  } while (false)

// How often the workload reached the cases that matter, so that a change to it cannot quietly
// stop exercising them.
struct coverage {
  std::size_t long_inserts = 0;           // 300 or more new blocks
  std::size_t grew_in_place = 0;          // new blocks, and no new node
  std::size_t late_throws = 0;            // make_payload threw after 256 or more new blocks
  std::size_t throws_on_pinned_path = 0;  // an insert that threw extended a pinned block
  std::size_t leases = 0;
  std::size_t evicted = 0;
  std::size_t erased = 0;
  std::size_t erase_refused_pinned = 0;
  std::size_t evict_stopped_by_pins = 0;  // evict(n) removed fewer than n
};

template <class Policy>
class model_test {
 public:
  using tree_type = kvc::radix_tree<hash64, tracked, Policy>;
  using block = typename tree_type::block;

  explicit model_test(std::uint64_t seed) : rng_(seed), live_before_(tracked::live) {}

  void run(std::size_t steps) {
    for (step_ = 0; step_ < steps; ++step_) {
      const std::size_t r = below(100);
      if (r < 28) {
        insert_new(1 + below(12));
      } else if (r < 32) {
        insert_new(300 + below(901));
      } else if (r < 40) {
        insert_known();
      } else if (r < 48) {
        insert_throwing();
      } else if (r < 56) {
        acquire();
      } else if (r < 63) {
        release();
      } else if (r < 72) {
        evict(1 + below(below(4) == 0 ? cached_.size() / 2 + 1 : 40));
      } else if (r < 77) {
        erase();
      } else if (r < 83) {
        access();
      } else if (r < 85) {
        check_for_each();
      } else if (r < 86 && below(2) == 0) {
        evict(std::numeric_limits<std::size_t>::max());  // leaves the pinned blocks
      } else {
        match_handles();
      }
      if (cached_.size() > high_water) evict(cached_.size() - low_water);
      check_step();
      if (step_ % 16 == 0) check_model_and_handles();
    }
    finish();
  }

  [[nodiscard]] const coverage& covered() const noexcept { return covered_; }

 private:
  struct entry {
    std::uint64_t parent = 0;  // 0 for a chain's first block
    std::uint64_t serial = 0;  // of its payload
    std::size_t depth = 0;     // index in its chain
    std::size_t pins = 0;      // leases covering it
    const block* handle = nullptr;
    std::vector<std::uint64_t> kids;  // cached children
  };
  struct held {
    typename tree_type::lease lease;
    chain path;  // the pinned blocks
  };

  static constexpr std::size_t max_depth = 1500;
  static constexpr std::size_t pool_size = 96;
  static constexpr std::size_t high_water = 2500;
  static constexpr std::size_t low_water = 1600;
  static constexpr std::size_t max_leases = 8;

  std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rng_() % n); }
  hash64 fresh() { return hash64{mix(++hashes_made_)}; }

  void remember(const chain& c) {
    if (c.empty()) return;
    if (pool_.size() < pool_size) {
      pool_.push_back(c);
    } else {
      pool_[below(pool_size)] = c;
    }
  }

  // A prefix of a chain seen before: the whole chain (its end may be a leaf that can grow in
  // place) or a cut at a random point.
  chain known_prefix() {
    if (pool_.empty()) return chain{fresh()};
    const chain& base = pool_[below(pool_.size())];
    const std::size_t len = below(10) < 3 ? base.size() : 1 + below(base.size());
    return chain(base.begin(), base.begin() + static_cast<std::ptrdiff_t>(len));
  }

  // A new chain: an earlier one cut at a random point (or nothing), then `extra` new blocks.
  chain new_chain(std::size_t extra) {
    chain c;
    if (below(8) != 0) c = known_prefix();
    c.resize(std::min(c.size(), max_depth - extra));
    for (std::size_t i = 0; i < extra; ++i) c.push_back(fresh());
    remember(c);
    return c;
  }

  // A chain to look up: a known prefix, sometimes followed by a block never inserted, sometimes
  // never seen at all.
  chain probe() {
    const std::size_t r = below(10);
    if (r == 0) return chain{fresh(), fresh()};
    chain c = known_prefix();
    if (r < 4) c.push_back(fresh());
    return c;
  }

  std::size_t model_match(std::span<const hash64> c) const {
    std::size_t k = 0;
    while (k < c.size() && cached_.count(c[k].value) != 0) ++k;
    return k;
  }

  void note(const char* what, std::uint64_t h) {
    errors_ += what;
    errors_ += " (hash " + std::to_string(h) + "); ";
  }

  // The model's side of a block removed by evict or erase: it must be cached, a leaf of the
  // model at this moment, unpinned, and come with its own payload.
  void removed(const hash64& h, const tracked& p) {
    auto it = cached_.find(h.value);
    if (it == cached_.end()) {
      note("removed a block that is not cached", h.value);
      return;
    }
    const entry& e = it->second;
    if (!e.kids.empty()) note("removed a block whose children are cached", h.value);
    if (e.pins != 0) note("removed a pinned block", h.value);
    if (p.hash != h.value || p.serial != e.serial) note("removed with a wrong payload", h.value);
    if (e.parent != 0) {
      auto parent = cached_.find(e.parent);
      if (parent == cached_.end()) {
        note("removed a block whose parent is not cached", h.value);
      } else {
        auto& kids = parent->second.kids;
        auto kid = std::find(kids.begin(), kids.end(), h.value);
        if (kid != kids.end()) kids.erase(kid);
      }
    }
    cached_.erase(it);
  }

  void add(const chain& c, std::size_t i, std::uint64_t serial) {
    const std::uint64_t parent = i == 0 ? 0 : c[i - 1].value;
    const bool added = cached_.emplace(c[i].value, entry{parent, serial, i, 0, nullptr, {}}).second;
    MODEL_CHECK(added);
    if (parent != 0) cached_.at(parent).kids.push_back(c[i].value);
  }

  // A handle from match: the block's own payload, and the same address as before while the block
  // stays cached.
  void check_handle(std::uint64_t h, const block* b) {
    auto it = cached_.find(h);
    MODEL_CHECK(it != cached_.end());
    entry& e = it->second;
    MODEL_CHECK(b != nullptr);
    MODEL_CHECK(b->payload().hash == h);
    MODEL_CHECK(b->payload().serial == e.serial);
    if (e.handle == nullptr) e.handle = b;
    MODEL_CHECK(e.handle == b);
  }

  // Matches c with handles, through the const or the mutable overload, into an output span of a
  // random length; slots past the span stay untouched.
  void match_with_handles(const chain& c) {
    const std::size_t expected = model_match(c);
    const std::size_t limit = below(3) == 0 ? below(c.size() + 2) : c.size();
    const block* const sentinel = reinterpret_cast<const block*>(&sentinel_);
    std::vector<const block*> out(limit + 2, sentinel);
    std::size_t got = 0;
    if (below(2) == 0) {
      got = std::as_const(tree_).match(c, std::span<const block*>(out).first(limit));
    } else {
      std::vector<block*> mut(limit, nullptr);
      got = tree_.match(c, std::span<block*>(mut));
      std::copy(mut.begin(), mut.end(), out.begin());
    }
    MODEL_CHECK(got == expected);
    for (std::size_t i = 0; i < std::min(got, limit); ++i) check_handle(c[i].value, out[i]);
    for (std::size_t i = limit; i < out.size(); ++i) MODEL_CHECK(out[i] == sentinel);
  }

  void insert_chain(const chain& c) {
    const std::size_t existing = model_match(c);
    std::vector<std::size_t> calls;
    const std::uint64_t first_serial = serial_ + 1;
    const std::size_t nodes_before = tree_.node_count();
    const auto r = tree_.insert(c, [&](std::size_t i) {
      calls.push_back(i);
      return tracked(c[i].value, ++serial_);
    });
    MODEL_CHECK(r.existing == existing);
    MODEL_CHECK(r.inserted == c.size() - existing);
    MODEL_CHECK(calls.size() == c.size() - existing);
    for (std::size_t k = 0; k < calls.size(); ++k) MODEL_CHECK(calls[k] == existing + k);
    for (std::size_t i = existing; i < c.size(); ++i) add(c, i, first_serial + (i - existing));
    if (r.inserted >= 300) ++covered_.long_inserts;
    if (r.inserted > 0 && tree_.node_count() == nodes_before) ++covered_.grew_in_place;
    match_with_handles(c);
  }

  void insert_new(std::size_t extra) {
    op_ = "insert a chain with " + std::to_string(extra) + " new blocks";
    insert_chain(new_chain(extra));
  }

  void insert_known() {
    op_ = "insert a known chain";
    insert_chain(known_prefix());
  }

  // make_payload throws at a random new block: the tree must be as it was.
  void insert_throwing() {
    const std::size_t kind = below(4);
    chain c = kind == 0   ? new_chain(300 + below(700))
              : kind == 1 ? known_prefix()
                          : new_chain(1 + below(12));
    const std::size_t existing = model_match(c);
    if (existing == c.size()) c.push_back(fresh());
    const std::size_t fail_at = below(4) == 0 ? existing : existing + below(c.size() - existing);
    op_ = "insert of " + std::to_string(c.size()) + " blocks (" + std::to_string(existing) +
          " cached) throwing at " + std::to_string(fail_at);

    std::vector<chain> probes{c};
    for (int i = 0; i < 6; ++i) probes.push_back(probe());
    std::vector<std::vector<const block*>> before;
    for (const chain& p : probes) {
      std::vector<const block*> out(p.size());
      out.resize(std::as_const(tree_).match(p, out));
      before.push_back(std::move(out));
    }
    const std::size_t size_before = tree_.size();
    const std::size_t policy_before = tree_.policy().size();
    const std::size_t nodes_before = tree_.node_count();

    std::vector<std::size_t> calls;
    bool threw = false;
    try {
      tree_.insert(c, [&](std::size_t i) -> tracked {
        calls.push_back(i);
        if (i == fail_at) throw injected_failure{};
        return tracked(c[i].value, ++serial_);
      });
    } catch (const injected_failure&) {
      threw = true;
    }
    MODEL_CHECK(threw);
    if (fail_at - existing >= 256) ++covered_.late_throws;
    if (existing > 0 && cached_.at(c[existing - 1].value).pins != 0) {
      ++covered_.throws_on_pinned_path;
    }
    MODEL_CHECK(calls.size() == fail_at - existing + 1);
    for (std::size_t k = 0; k < calls.size(); ++k) MODEL_CHECK(calls[k] == existing + k);
    MODEL_CHECK(tree_.size() == size_before);
    MODEL_CHECK(tree_.policy().size() == policy_before);
    MODEL_CHECK(tracked::live - live_before_ == static_cast<std::int64_t>(cached_.size()));
    MODEL_CHECK(tree_.node_count() <= nodes_before + 1);  // a split may stay
    for (std::size_t k = 0; k < probes.size(); ++k) {
      std::vector<const block*> out(probes[k].size());
      out.resize(std::as_const(tree_).match(probes[k], out));
      MODEL_CHECK(out == before[k]);
    }
    if (below(2) == 0) {  // and the same insert works afterwards
      op_ += ", then again without throwing";
      insert_chain(c);
    }
  }

  void acquire() {
    if (leases_.size() >= max_leases) {
      release();
      return;
    }
    chain c = probe();
    op_ = "acquire " + std::to_string(c.size()) + " blocks";
    const std::size_t m = model_match(c);
    auto l = tree_.acquire(c);
    MODEL_CHECK(l.length() == m);
    MODEL_CHECK(l.empty() == (m == 0));
    if (m == 0) return;
    ++covered_.leases;
    c.resize(m);
    for (const hash64& h : c) ++cached_.at(h.value).pins;
    leases_.push_back(held{std::move(l), std::move(c)});
    const chain& path = leases_.back().path;
    match_with_handles(path);
    std::vector<const block*> out(path.size());
    MODEL_CHECK(std::as_const(tree_).match(path, out) == path.size());
    for (const block* b : out) MODEL_CHECK(tree_type::pinned(*b));
  }

  void release() {
    if (leases_.empty()) return;
    const std::size_t i = below(leases_.size());
    const std::size_t how = below(3);
    op_ = "release a lease of " + std::to_string(leases_[i].path.size()) + " blocks, way " +
          std::to_string(how);
    auto& l = leases_[i].lease;
    if (how == 0) {
      l.release();
      l.release();  // idempotent
    } else if (how == 1) {
      l = {};
    } else {
      typename tree_type::lease moved = std::move(l);
      MODEL_CHECK(l.empty());
      MODEL_CHECK(moved.length() == leases_[i].path.size());
    }
    MODEL_CHECK(l.empty());
    for (const hash64& h : leases_[i].path) --cached_.at(h.value).pins;
    leases_.erase(leases_.begin() + static_cast<std::ptrdiff_t>(i));  // moves the others
  }

  void evict(std::size_t n) {
    op_ = "evict " + std::to_string(n);
    const bool predict = below(2) == 0;
    std::optional<hash64> predicted;
    if (predict) predicted = tree_.next_victim();
    std::vector<std::uint64_t> gone;
    const std::size_t got = tree_.evict(n, [&](const hash64& h, tracked&& p) {
      gone.push_back(h.value);
      removed(h, p);
    });
    MODEL_CHECK(errors_.empty());
    MODEL_CHECK(got == gone.size());
    MODEL_CHECK(got <= n);
    covered_.evicted += got;
    if (got < n) {  // nothing evictable is left: every cached block is pinned
      if (!cached_.empty()) ++covered_.evict_stopped_by_pins;
      MODEL_CHECK(std::all_of(cached_.begin(), cached_.end(),
                              [](const auto& kv) { return kv.second.pins != 0; }));
    }
    if (predict) {
      MODEL_CHECK(predicted.has_value() == (got > 0));
      if (got > 0) MODEL_CHECK(predicted->value == gone.front());
    }
  }

  // Blocks of the model's subtree under h (h included).
  std::vector<std::uint64_t> subtree(std::uint64_t h) const {
    std::vector<std::uint64_t> out{h};
    for (std::size_t i = 0; i < out.size(); ++i) {
      for (std::uint64_t k : cached_.at(out[i]).kids) out.push_back(k);
    }
    return out;
  }

  void erase() {
    chain c = probe();
    const std::size_t m = model_match(c);
    if (m > 0 && below(10) < 7) c.resize(1 + below(m));  // mostly a cached block
    if (below(20) == 0) c.clear();
    op_ = "erase " + std::to_string(c.size()) + " blocks";
    std::vector<std::uint64_t> expected;
    if (!c.empty() && model_match(c) == c.size()) {
      expected = subtree(c.back().value);
      const bool pinned = cached_.at(c.back().value).pins != 0;
      const bool any_pinned = std::any_of(expected.begin(), expected.end(),
                                          [&](std::uint64_t h) { return cached_.at(h).pins != 0; });
      MODEL_CHECK(pinned == any_pinned);  // leases pin whole prefixes
      if (pinned) {
        ++covered_.erase_refused_pinned;
        expected.clear();
      }
    }
    const std::unordered_set<std::uint64_t> expected_set(expected.begin(), expected.end());
    std::vector<std::uint64_t> gone;
    const std::size_t got = tree_.erase(c, [&](const hash64& h, tracked&& p) {
      gone.push_back(h.value);
      if (expected_set.count(h.value) == 0) note("erased a block outside the subtree", h.value);
      removed(h, p);  // also checks that descendants go first
    });
    MODEL_CHECK(errors_.empty());
    MODEL_CHECK(got == expected.size());
    MODEL_CHECK(gone.size() == got);
    if (got > 0) MODEL_CHECK(gone.back() == c.back().value);  // the block itself comes last
    covered_.erased += got;
  }

  void access() {
    const chain c = probe();
    op_ = "access " + std::to_string(c.size()) + " blocks";
    MODEL_CHECK(tree_.access(c) == model_match(c));
  }

  void match_handles() {
    const chain c = probe();
    op_ = "match " + std::to_string(c.size()) + " blocks with handles";
    match_with_handles(c);
  }

  // for_each visits every cached block once, parents first, with its depth, payload and handle.
  void check_for_each() {
    op_ = "for_each";
    std::unordered_set<std::uint64_t> seen;
    std::as_const(tree_).for_each([&](const hash64& h, const block& b, std::size_t depth) {
      auto it = cached_.find(h.value);
      if (it == cached_.end()) {
        note("for_each visited a block that is not cached", h.value);
        return;
      }
      const entry& e = it->second;
      if (!seen.insert(h.value).second) note("for_each visited a block twice", h.value);
      if (depth != e.depth) note("for_each gave a wrong depth", h.value);
      if (e.parent != 0 && seen.count(e.parent) == 0) {
        note("for_each: child before parent", h.value);
      }
      if (b.payload().hash != h.value || b.payload().serial != e.serial) {
        note("for_each gave a wrong payload", h.value);
      }
      if (e.handle != nullptr && e.handle != &b) note("for_each gave another address", h.value);
    });
    MODEL_CHECK(errors_.empty());
    MODEL_CHECK(seen.size() == cached_.size());
  }

  // After every step: sizes, live payloads, and a few lookups agree with the model.
  void check_step() {
    MODEL_CHECK(errors_.empty());
    MODEL_CHECK(tree_.size() == cached_.size());
    MODEL_CHECK(tree_.empty() == cached_.empty());
    MODEL_CHECK(tree_.policy().size() == cached_.size());
    MODEL_CHECK(tracked::live - live_before_ == static_cast<std::int64_t>(cached_.size()));
    for (int i = 0; i < 3; ++i) {
      const chain c = probe();
      MODEL_CHECK(std::as_const(tree_).match(c) == model_match(c));
    }
    match_with_handles(probe());
  }

  // Now and then: the model is prefix-closed, and every handle taken so far still holds its
  // block, with the right pinned and evictable state.
  void check_model_and_handles() {
    for (const auto& [h, e] : cached_) {
      if (e.depth == 0) {
        MODEL_CHECK(e.parent == 0);
      } else {
        auto parent = cached_.find(e.parent);
        MODEL_CHECK(parent != cached_.end());
        MODEL_CHECK(parent->second.depth + 1 == e.depth);
        MODEL_CHECK(parent->second.pins >= e.pins);
      }
      if (e.handle == nullptr) continue;
      MODEL_CHECK(e.handle->payload().hash == h);
      MODEL_CHECK(e.handle->payload().serial == e.serial);
      MODEL_CHECK(tree_type::pinned(*e.handle) == (e.pins != 0));
      MODEL_CHECK(tree_type::evictable(*e.handle) == (e.pins == 0 && e.kids.empty()));
    }
  }

  void finish() {
    op_ = "at the end";
    check_for_each();
    check_model_and_handles();
    evict(std::numeric_limits<std::size_t>::max());  // leaves the pinned blocks
    leases_.clear();
    for (auto& kv : cached_) kv.second.pins = 0;
    op_ = "after releasing every lease";
    check_model_and_handles();
    evict(std::numeric_limits<std::size_t>::max());
    op_ = "after evicting everything";
    MODEL_CHECK(cached_.empty());
    MODEL_CHECK(tree_.size() == 0);
    MODEL_CHECK(tree_.empty());
    MODEL_CHECK(tree_.node_count() == 0);
    MODEL_CHECK(tree_.policy().size() == 0);
    MODEL_CHECK(tracked::live == live_before_);
  }

  std::mt19937_64 rng_;
  tree_type tree_;
  std::vector<held> leases_;  // after tree_: destroyed first
  std::unordered_map<std::uint64_t, entry> cached_;
  std::vector<chain> pool_;  // chains made so far (a bounded sample)
  std::uint64_t hashes_made_ = 0;
  std::uint64_t serial_ = 0;
  std::int64_t live_before_;
  int sentinel_ = 0;
  std::size_t step_ = 0;
  std::string op_;
  std::string errors_;  // found inside callbacks, which must not throw
  coverage covered_;
};

}  // namespace

TEMPLATE_TEST_CASE("radix_tree agrees with a model of cached chains under random operations",
                   "[tree][model]", kvc::lru_policy, kvc::s3fifo_policy, kvc::sieve_policy) {
  model_test<TestType> test(0x6b7663'7472'6565ULL);
  test.run(4000);
  const coverage& c = test.covered();
  CHECK(c.long_inserts >= 100);
  CHECK(c.grew_in_place >= 5);
  CHECK(c.late_throws >= 10);
  CHECK(c.throws_on_pinned_path >= 5);
  CHECK(c.leases >= 50);
  CHECK(c.evicted > 0);
  CHECK(c.erased > 0);
  CHECK(c.erase_refused_pinned >= 3);
  CHECK(c.evict_stopped_by_pins >= 5);
}
