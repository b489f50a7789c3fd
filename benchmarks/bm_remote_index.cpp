// bm_remote_index: the one-sided prefix index (kvc/index/remote_index.hpp) on shm memory nodes.
//
// Machine-independent counts, through the counting transport decorator, per call:
//   lookup/N/hit/hint   longest-prefix match of a chain of N blocks whose first hit% are cached,
//                       without (0) or with (1) a correct hint (the cached length);
//   probe/N/hit         naive 1: READ both buckets of every block in one doorbell (a block may
//                       be in either of its two groups);
//   bsearch/N/hit       naive 2: binary search over the prefix length, one block's two buckets
//                       per round trip;
//   insert/B            publishing a fresh chain of B blocks in one call (B = 1: extending a
//                       chain by one block per call);
//   evict/n             evict(node, n): sampling, records, unpublishing.
// The naive strategies use the index's own placement (remote_index::address_of: a block's two
// buckets, tag and check) over the same index state as kvc's lookups, in the same run.
//
// Times on shm:
//   lookup_rate/P/hint  lookups per second per client process (N = 256, full hit), P = 1 or 2
//                       processes running the same loop;
//   insert_rate/P       inserts of fresh 16-block chains per second per client process;
//   latency/load/hint   p50/p99/p99.9 of a lookup (N = 256, full hit), alone (load 0) or while a
//                       forked process inserts fresh 64-block chains without pause (load 1).
#include <benchmark/benchmark.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../tests/support/fork_child.hpp"
#include "../tests/support/unique_name.hpp"
#include "kvc/hash/block_hash.hpp"
#include "kvc/index/layout.hpp"
#include "kvc/index/remote_index.hpp"
#include "kvc/transport/counting.hpp"
#include "kvc/transport/shm.hpp"
#include "support/ratio_reporter.hpp"

namespace {

namespace lay = kvc::index_layout;
using kvc::hash64;
using chain_t = std::vector<hash64>;
using counted = kvc::counting<kvc::shm_transport>;
using counted_index = kvc::remote_index<counted>;
using shm_index = kvc::remote_index<kvc::shm_transport>;

constexpr std::uint64_t block_bytes = 64;
constexpr std::size_t sizes[] = {16, 64, 256, 1024, 4096};
constexpr int hits[] = {0, 50, 100};
// Of the slab indexes, before anything is measured. Inserts start to fail for want of room in
// both buckets of a block at about 35% (see docs/benchmarks.md): the index's practical limit.
constexpr double fill_ratio = 0.35;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bm_remote_index: %s\n", what.c_str());
  std::abort();
}

kvc::shm_region make_region(std::uint64_t bytes) {
  auto r = kvc::shm_region::create(kvc_test::unique_name("/kvc-bmix"), bytes, 0);
  if (!r) die("shm_region::create: " + r.message());
  if (auto g = kvc::format_index(r->header(), block_bytes, 64); !g) {
    die("format_index: " + g.message());
  }
  return std::move(*r);
}

kvc::shm_transport attach(const kvc::shm_region& region) {
  kvc::shm_transport t;
  if (auto ok = t.add_node(0, region.name()); !ok) die("add_node: " + ok.message());
  return t;
}

// A long lease: no heartbeat or liveness scan inside a measured loop (they would add round
// trips that are not the operation's).
kvc::remote_index_config config(std::uint64_t seed) {
  kvc::remote_index_config c;
  c.nodes = {0};
  c.lease = std::chrono::milliseconds(3'600'000);
  c.heartbeat = std::chrono::milliseconds(100);
  c.reclaim_grace = std::chrono::milliseconds(1000);
  c.seed = seed;
  // Batches sized as on RDMA (a verbs queue pair's default depth), where the round trips counted
  // here cost: on shm the index would take 65,536 operations per batch (long chains in one pass).
  c.max_ops_per_node = kvc::default_max_ops_per_node;
  return c;
}

chain_t make_chain(std::mt19937_64& rng, std::size_t n) {
  chain_t c(n);
  for (hash64& h : c) h = hash64{rng()};
  return c;
}

std::vector<kvc::block_info> no_data(std::size_t n) {
  return std::vector<kvc::block_info>(n, kvc::block_info{{}, 0, 1, 0, 16});
}

template <class Index>
std::size_t insert_chain(Index& ix, const chain_t& chain, std::size_t from, std::size_t n) {
  const auto info = no_data(n);
  auto r = ix.insert(std::span<const hash64>(chain), from, info);
  if (!r) die("insert: " + r.message());
  if (r->length < from + n && r->stop != kvc::insert_stop::no_room) {
    die("insert stopped at " + std::to_string(r->length) + " of " + std::to_string(from + n) +
        ", reason " + std::to_string(static_cast<int>(r->stop)));
  }
  return r->length;
}

// One memory node behind the counting transport, filled to fill_ratio of its slabs with chains
// of 64 blocks, and one client.
struct world {
  explicit world(std::uint64_t bytes, std::uint64_t seed)
      : region(make_region(bytes)), t(std::make_unique<counted>(attach(region))), rng(seed) {
    auto ix_or = counted_index::open(*t, config(seed));
    if (!ix_or) die("remote_index::open: " + ix_or.message());
    ix = std::move(*ix_or);
    geo = ix->geometry(0);
    const auto target = static_cast<std::size_t>(static_cast<double>(geo.slabs()) * fill_ratio);
    while (filled < target) {
      const chain_t c = make_chain(rng, 64);
      const std::size_t len = insert_chain(*ix, c, 0, c.size());
      filled += len;
      ++fill_calls;
      no_room += len < c.size() ? 1u : 0u;
    }
    t->reset();
  }
  kvc::shm_region region;
  std::unique_ptr<counted> t;
  std::mt19937_64 rng;
  std::unique_ptr<counted_index> ix;
  lay::geometry geo;
  std::size_t filled = 0;
  std::size_t fill_calls = 0, no_room = 0;  // inserts of the fill, and those stopped short
};

// The lookups' index: never changed once built. Chains per (N, hit%): the first N * hit / 100
// blocks are cached.
struct lookup_world : world {
  lookup_world() : world(std::uint64_t{64} << 20, 11) {
    for (std::size_t n : sizes) {
      for (int hit : hits) {
        const std::size_t cached = n * static_cast<std::size_t>(hit) / 100;
        chain_t c = make_chain(rng, n);
        // A chain whose insert found no room is replaced (its blocks stay: more fill).
        for (int tries = 0; cached > 0 && insert_chain(*ix, c, 0, cached) != cached; ++tries) {
          if (tries == 100) die("setup: no room for the lookups' chains");
          c = make_chain(rng, n);
        }
        chains[{n, hit}] = std::move(c);
      }
    }
    for (std::size_t n : {std::size_t{256}, std::size_t{1024}}) {
      auto& v = many[n];
      while (v.size() < 32) {
        chain_t c = make_chain(rng, n);
        if (insert_chain(*ix, c, 0, n) == n) v.push_back(std::move(c));
      }
    }
    t->reset();
  }
  std::map<std::pair<std::size_t, int>, chain_t> chains;
  std::map<std::size_t, std::vector<chain_t>> many;  // 32 fully cached chains of 256 and 1,024
};

lookup_world& lookups() {
  static lookup_world w;
  return w;
}

// Inserts and evictions change their index: a world of their own.
world& writes() {
  static world w(std::uint64_t{64} << 20, 12);
  return w;
}

// ---- the naive strategies, with the index's placement ---------------------------------------

using probe_addr = counted_index::block_address;

// The block is published in this bucket.
bool holds_block(const world& w, const std::byte* bucket, const probe_addr& a) {
  for (std::size_t s = 0; s < lay::slots_per_bucket; ++s) {
    lay::slot sl;
    std::memcpy(&sl, bucket + s * lay::slot_bytes, sizeof sl);
    if (lay::holds(sl, a.tag, a.check) && lay::slot_word::decode(sl.word1).ptr < w.geo.slabs()) {
      return true;
    }
  }
  return false;
}

std::vector<std::byte>& scratch(std::size_t bytes) {
  static std::vector<std::byte> buf;
  if (buf.size() < bytes) buf.resize(bytes);
  return buf;
}

void read_all(world& w, const std::vector<kvc::remote_ptr>& from, std::vector<std::byte>& to) {
  auto b = w.t->new_batch();
  for (std::size_t i = 0; i < from.size(); ++i) {
    b.read(from[i], kvc::unregistered({to.data() + i * lay::bucket_bytes, lay::bucket_bytes}));
  }
  b.ring();
  if (!b.wait()) die("naive READ failed");
}

// Naive 1: both buckets of every block in one batch; the first block in neither ends the match.
std::size_t naive_probe(world& w, std::span<const hash64> chain) {
  const std::size_t n = chain.size();
  std::vector<std::byte>& buf = scratch(2 * n * lay::bucket_bytes);
  std::vector<probe_addr> addrs(n);
  std::vector<kvc::remote_ptr> from(2 * n);
  for (std::size_t k = 0; k < n; ++k) {
    addrs[k] = w.ix->address_of(chain, k);
    from[2 * k] = addrs[k].bucket[0];
    from[2 * k + 1] = addrs[k].bucket[1];
  }
  read_all(w, from, buf);
  for (std::size_t k = 0; k < n; ++k) {
    if (!holds_block(w, buf.data() + 2 * k * lay::bucket_bytes, addrs[k]) &&
        !holds_block(w, buf.data() + (2 * k + 1) * lay::bucket_bytes, addrs[k])) {
      return k;
    }
  }
  return n;
}

bool probe_one(world& w, std::span<const hash64> chain, std::size_t k) {
  std::vector<std::byte>& buf = scratch(2 * lay::bucket_bytes);
  const probe_addr a = w.ix->address_of(chain, k);
  read_all(w, {a.bucket[0], a.bucket[1]}, buf);
  return holds_block(w, buf.data(), a) || holds_block(w, buf.data() + lay::bucket_bytes, a);
}

// Naive 2: binary search over the prefix length (prefix closure makes presence monotone).
std::size_t naive_bsearch(world& w, std::span<const hash64> chain) {
  std::size_t lo = 0, hi = chain.size();  // the answer is in [lo, hi]
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo + 1) / 2;
    if (probe_one(w, chain, mid - 1)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// ---- counters --------------------------------------------------------------------------------

void put_counts(benchmark::State& state, const kvc::transport_counts& d, double calls) {
  using kvc::op_kind;
  state.counters["RT"] = static_cast<double>(d.round_trips) / calls;
  state.counters["READs"] = static_cast<double>(d.count(op_kind::read)) / calls;
  state.counters["WRITEs"] = static_cast<double>(d.count(op_kind::write)) / calls;
  state.counters["CAS"] = static_cast<double>(d.count(op_kind::cas)) / calls;
  state.counters["FAA"] = static_cast<double>(d.count(op_kind::faa)) / calls;
  state.counters["ops"] = static_cast<double>(d.total_ops()) / calls;
  state.counters["bytes"] = static_cast<double>(d.total_bytes()) / calls;
}

// ---- machine-independent benchmarks ----------------------------------------------------------

// range(0): N; range(1): hit %; range(2): 0 no hint, 1 hint = the cached length.
void bm_lookup(benchmark::State& state) {
  lookup_world& w = lookups();
  const auto n = static_cast<std::size_t>(state.range(0));
  const int hit = static_cast<int>(state.range(1));
  const chain_t& chain = w.chains.at({n, hit});
  const std::size_t expect = n * static_cast<std::size_t>(hit) / 100;
  const std::size_t hint = state.range(2) == 1 ? expect : 0;
  const std::uint64_t second0 = w.ix->stats().second_group_reads;
  const auto c0 = w.t->snapshot();
  for (auto _ : state) {
    auto m = w.ix->lookup(std::span<const hash64>(chain), hint);
    if (!m || m->length != expect) {
      state.SkipWithError("lookup failed or returned another length");
      break;
    }
    benchmark::DoNotOptimize(m->blocks.data());
  }
  const auto calls = static_cast<double>(state.iterations());
  put_counts(state, w.t->snapshot() - c0, calls);
  state.counters["overflow"] =
      static_cast<double>(w.ix->stats().second_group_reads - second0) / calls;
}

// range(0): N (256 or 1,024); range(1): hint. Cycles over 32 fully cached chains: the spread of
// round trips over chains (one chain says little about overflowing head buckets).
void bm_lookup_many(benchmark::State& state) {
  lookup_world& w = lookups();
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto& chains = w.many.at(n);
  const std::size_t hint = state.range(1) == 1 ? n : 0;
  std::size_t i = 0, over2 = 0;
  unsigned most = 0;
  const auto c0 = w.t->snapshot();
  for (auto _ : state) {
    auto m = w.ix->lookup(std::span<const hash64>(chains[i++ % chains.size()]), hint);
    if (!m || m->length != n) {
      state.SkipWithError("lookup failed or returned another length");
      break;
    }
    over2 += m->round_trips > 2 ? 1u : 0u;
    most = std::max(most, m->round_trips);
  }
  const auto calls = static_cast<double>(state.iterations());
  put_counts(state, w.t->snapshot() - c0, calls);
  state.counters["over_2RT"] = static_cast<double>(over2) / calls;
  state.counters["max_RT"] = most;
}

// range(0): N; range(1): hit %. Both naive strategies, picked by the name.
template <std::size_t (*Strategy)(world&, std::span<const hash64>)>
void bm_naive(benchmark::State& state) {
  lookup_world& w = lookups();
  const auto n = static_cast<std::size_t>(state.range(0));
  const int hit = static_cast<int>(state.range(1));
  const chain_t& chain = w.chains.at({n, hit});
  const std::size_t expect = n * static_cast<std::size_t>(hit) / 100;
  const auto c0 = w.t->snapshot();
  for (auto _ : state) {
    if (Strategy(w, std::span<const hash64>(chain)) != expect) {
      state.SkipWithError("naive strategy returned another length");
      break;
    }
  }
  put_counts(state, w.t->snapshot() - c0, static_cast<double>(state.iterations()));
}

// range(0): blocks per call. 1: one chain extended by one block per call; B > 1: a fresh chain
// of B blocks per call.
void bm_insert(benchmark::State& state) {
  world& w = writes();
  const auto per_call = static_cast<std::size_t>(state.range(0));
  chain_t chain;
  std::size_t at = 0;
  std::size_t published = 0, short_calls = 0;
  std::vector<chain_t> chains;  // hashes drawn before the loop
  for (std::int64_t i = 0; i < (per_call > 1 ? state.max_iterations : 64); ++i) {
    chains.push_back(make_chain(w.rng, per_call > 1 ? per_call : 1024));
  }
  std::size_t next = 0;
  const auto c0 = w.t->snapshot();
  for (auto _ : state) {
    if (per_call > 1 || at == chain.size()) {
      chain = chains[next++ % chains.size()];
      at = 0;
    }
    const std::size_t len = insert_chain(*w.ix, chain, at, per_call);
    published += len - at;
    short_calls += len < at + per_call ? 1u : 0u;
    at = len < at + per_call ? chain.size() : len;  // no room: the next call takes a new chain
  }
  const auto calls = static_cast<double>(state.iterations());
  put_counts(state, w.t->snapshot() - c0, calls);
  state.counters["blocks"] = static_cast<double>(published) / calls;
  state.counters["no_room"] = static_cast<double>(short_calls) / calls;
}

// range(0): blocks asked per evict() call.
void bm_evict(benchmark::State& state) {
  world& w = writes();
  const auto n = static_cast<std::size_t>(state.range(0));
  std::size_t evicted = 0, empty_calls = 0;
  const auto c0 = w.t->snapshot();
  for (auto _ : state) {
    auto r = w.ix->evict(0, n);
    if (!r) die("evict: " + r.message());
    evicted += *r;
    empty_calls += *r == 0 ? std::size_t{1} : std::size_t{0};
  }
  const auto calls = static_cast<double>(state.iterations());
  put_counts(state, w.t->snapshot() - c0, calls);
  state.counters["evicted"] = static_cast<double>(evicted) / calls;
  state.counters["empty_calls"] = static_cast<double>(empty_calls) / calls;
}

// ---- shm: rates and latency --------------------------------------------------------------------

// Flags in memory shared with a forked client process.
struct shared_flags {
  std::atomic<int> ready{0};
  std::atomic<int> stop{0};
  std::atomic<std::uint64_t> done{0};  // the other process's calls
};

// A second client process running `body(index, flags)` until flags.stop; killed if it hangs.
class other_process {
 public:
  template <class Body>
  other_process(const kvc::shm_region& region, std::uint64_t seed, Body body) {
    void* mem = ::mmap(nullptr, sizeof(shared_flags), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    flags_ = new (mem) shared_flags;
    pid_ = kvc_test::fork_child();
    if (pid_ < 0) die("fork");
    if (pid_ == 0) {
      kvc::shm_transport t = attach(region);
      auto ix = shm_index::open(t, config(seed));
      if (!ix) ::_exit(1);
      flags_->ready.store(1);
      body(**ix, *flags_);
      (void)(*ix)->close();
      ::_exit(0);
    }
    while (flags_->ready.load() == 0) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) die("the other client process did not start");
      std::this_thread::yield();
    }
  }
  other_process(const other_process&) = delete;
  other_process& operator=(const other_process&) = delete;
  ~other_process() {
    flags_->stop.store(1);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    ::munmap(flags_, sizeof(shared_flags));
  }
  [[nodiscard]] std::uint64_t done() const { return flags_->done.load(); }

 private:
  shared_flags* flags_ = nullptr;
  pid_t pid_ = -1;
};

// A fresh node (512 MiB: 3.3 M slabs, room for every insert these runs make) with one chain of
// 256 blocks cached.
struct speed_node {
  speed_node() : region(make_region(std::uint64_t{512} << 20)), t(attach(region)) {
    std::mt19937_64 rng(21);
    chain = make_chain(rng, 256);
    auto ix_or = shm_index::open(t, config(21));
    if (!ix_or) die("remote_index::open: " + ix_or.message());
    ix = std::move(*ix_or);
    if (insert_chain(*ix, chain, 0, chain.size()) != chain.size()) die("setup: short insert");
  }
  kvc::shm_region region;
  kvc::shm_transport t;
  chain_t chain;
  std::unique_ptr<shm_index> ix;
};

// Inserts fresh chains of `blocks` blocks until told to stop.
auto inserter(std::size_t blocks, std::uint64_t seed) {
  return [blocks, seed](shm_index& ix, shared_flags& f) {
    std::mt19937_64 rng(seed);
    const auto info = no_data(blocks);
    while (f.stop.load(std::memory_order_relaxed) == 0) {
      const chain_t c = make_chain(rng, blocks);
      auto r = ix.insert(std::span<const hash64>(c), 0, info);
      if (!r || r->stop == kvc::insert_stop::no_slabs) break;
      f.done.fetch_add(1, std::memory_order_relaxed);
    }
  };
}

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// range(0): client processes; range(1): hint.
void bm_lookup_rate(benchmark::State& state) {
  speed_node node;
  const std::size_t hint = state.range(1) == 1 ? node.chain.size() : 0;
  const std::span<const hash64> chain(node.chain);
  std::unique_ptr<other_process> other;
  if (state.range(0) == 2) {
    other = std::make_unique<other_process>(node.region, 22, [&](shm_index& ix, shared_flags& f) {
      while (f.stop.load(std::memory_order_relaxed) == 0) {
        auto m = ix.lookup(chain, hint);
        if (!m) break;
        f.done.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  const std::uint64_t other0 = other ? other->done() : 0;
  const auto t0 = clock_type::now();
  for (auto _ : state) {
    auto m = node.ix->lookup(chain, hint);
    if (!m || m->length != chain.size()) {
      state.SkipWithError("lookup failed");
      break;
    }
  }
  const double secs = seconds_since(t0);
  state.SetItemsProcessed(state.iterations());
  if (other) state.counters["other_per_s"] = static_cast<double>(other->done() - other0) / secs;
}

// range(0): client processes. Items: blocks (16 per call).
void bm_insert_rate(benchmark::State& state) {
  constexpr std::size_t blocks = 16;
  speed_node node;
  std::unique_ptr<other_process> other;
  if (state.range(0) == 2)
    other = std::make_unique<other_process>(node.region, 23, inserter(blocks, 23));
  std::mt19937_64 rng(24);
  std::vector<chain_t> chains;
  for (std::int64_t i = 0; i < state.max_iterations; ++i) chains.push_back(make_chain(rng, blocks));
  const auto info = no_data(blocks);
  std::size_t next = 0, published = 0;
  const std::uint64_t other0 = other ? other->done() : 0;
  const auto t0 = clock_type::now();
  for (auto _ : state) {
    auto r = node.ix->insert(std::span<const hash64>(chains[next++]), 0, info);
    if (!r) {
      state.SkipWithError("insert failed");
      break;
    }
    published += r->length;
  }
  const double secs = seconds_since(t0);
  state.SetItemsProcessed(static_cast<std::int64_t>(published));
  const auto asked = static_cast<double>(state.iterations()) * static_cast<double>(blocks);
  state.counters["no_room"] = (asked - static_cast<double>(published)) / asked;
  if (other) state.counters["other_per_s"] = static_cast<double>(other->done() - other0) / secs;
}

// p50, p99, p99.9 of the measured times (ns) and p99/p50 as counters.
void put_percentiles(benchmark::State& state, std::vector<std::int64_t>& ns) {
  std::sort(ns.begin(), ns.end());
  const auto at = [&](double q) {
    return static_cast<double>(
        ns[static_cast<std::size_t>(q * static_cast<double>(ns.size() - 1))]);
  };
  state.counters["p50_ns"] = at(0.5);
  state.counters["p99_ns"] = at(0.99);
  state.counters["p999_ns"] = at(0.999);
  state.counters["p99_over_p50"] = at(0.99) / at(0.5);
}

// The machine's own tail for a constant piece of work of about a lookup's duration (XXH3 over
// 32 KiB, no memory node involved), measured the same way in the same run: the share of a
// lookup's p99/p50 that the index cannot be blamed for.
void bm_latency_baseline(benchmark::State& state) {
  std::vector<std::byte> bytes(std::size_t{32} << 10, std::byte{7});
  std::vector<std::int64_t> ns;
  ns.reserve(static_cast<std::size_t>(state.max_iterations));
  std::uint64_t sink = 0;
  for (auto _ : state) {
    const auto a = clock_type::now();
    sink += XXH3_64bits(bytes.data(), bytes.size());
    const auto b = clock_type::now();
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
  }
  benchmark::DoNotOptimize(sink);
  put_percentiles(state, ns);
}

// range(0): 0 alone, 1 under a forked inserter of 64-block chains; range(1): hint.
void bm_latency(benchmark::State& state) {
  speed_node node;
  const std::size_t hint = state.range(1) == 1 ? node.chain.size() : 0;
  const std::span<const hash64> chain(node.chain);
  std::unique_ptr<other_process> other;
  if (state.range(0) == 1)
    other = std::make_unique<other_process>(node.region, 25, inserter(64, 25));
  std::vector<std::int64_t> ns;
  ns.reserve(static_cast<std::size_t>(state.max_iterations));
  const std::uint64_t other0 = other ? other->done() : 0;
  const auto t0 = clock_type::now();
  for (auto _ : state) {
    const auto a = clock_type::now();
    auto m = node.ix->lookup(chain, hint);
    const auto b = clock_type::now();
    if (!m || m->length != chain.size()) {
      state.SkipWithError("lookup failed");
      break;
    }
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
  }
  const double secs = seconds_since(t0);
  if (ns.empty()) return;
  put_percentiles(state, ns);
  if (other) {
    state.counters["insert_blocks_per_s"] =
        static_cast<double>(other->done() - other0) * 64.0 / secs;
  }
}

void lookup_args(benchmark::internal::Benchmark* b) {
  for (std::size_t n : sizes) {
    for (int hit : hits) {
      for (int hint : {0, 1}) b->Args({static_cast<std::int64_t>(n), hit, hint});
    }
  }
}
void naive_args(benchmark::internal::Benchmark* b) {
  for (std::size_t n : sizes) {
    for (int hit : hits) b->Args({static_cast<std::int64_t>(n), hit});
  }
}

// ---- the table -------------------------------------------------------------------------------

// Google Benchmark names runs with a fixed iteration count "name/iterations:n[/real_time]".
std::string fixed(const std::string& name, int iterations, bool real_time = false) {
  return name + "/iterations:" + std::to_string(iterations) + (real_time ? "/real_time" : "");
}

std::string num(double v) {
  char buf[32];
  if (v >= 10'000) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else if (v == static_cast<double>(static_cast<std::int64_t>(v))) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f", v);
  }
  return buf;
}

void print_table(const kvc_bench::ratio_reporter& r) {
  const auto cell = [&](const std::string& name) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%5s %5s %7s", num(r.counter(name, "RT")).c_str(),
                  num(r.counter(name, "READs")).c_str(), num(r.counter(name, "bytes")).c_str());
    return std::string(buf);
  };
  if (r.ns("probe/16/0") > 0 || r.ns("lookup/16/0/0") > 0) {
    const lookup_world& w = lookups();
    std::printf(
        "\nLongest-prefix match, per lookup: round trips, READs, bytes READ (1 memory node, %zu "
        "blocks in %llu slabs / %llu slots before the lookups' chains; %zu of the fill's %zu "
        "inserts found no room)\n",
        w.filled, static_cast<unsigned long long>(w.geo.slabs()),
        static_cast<unsigned long long>(w.geo.slots()), w.no_room, w.fill_calls);
    std::printf(
        "    N  hit |   kvc, no hint      |   kvc, hint         |  naive: probe all   |"
        "  naive: bsearch\n");
    std::printf(
        "           |   RT READs   bytes  |   RT READs   bytes  |   RT READs   bytes  |"
        "   RT READs   bytes\n");
    for (std::size_t n : sizes) {
      for (int hit : hits) {
        const std::string a = std::to_string(n) + "/" + std::to_string(hit);
        std::printf("%5zu %3d%% | %s | %s | %s | %s\n", n, hit, cell("lookup/" + a + "/0").c_str(),
                    cell("lookup/" + a + "/1").c_str(), cell("probe/" + a).c_str(),
                    cell("bsearch/" + a).c_str());
      }
    }
    std::printf("\nOver 32 fully cached chains each (the spread of head-bucket overflow):\n");
    for (const char* n : {"256", "1024"}) {
      for (const char* hint : {"0", "1"}) {
        const std::string name = fixed(std::string("lookup_many/") + n + "/" + hint, 3200);
        std::printf(
            "  N %4s %-7s: %5.2f RT on average, %3.0f%% of lookups over 2 RT, at most %.0f; "
            "%.1f READs, %.0f bytes\n",
            n, hint[0] == '1' ? "hint" : "no hint", r.counter(name, "RT"),
            100 * r.counter(name, "over_2RT"), r.counter(name, "max_RT"), r.counter(name, "READs"),
            r.counter(name, "bytes"));
      }
    }
    std::printf("\nsame, time per lookup on shm (us; through the counting decorator)\n");
    std::printf("    N  hit | no hint    hint   probe  bsearch\n");
    for (std::size_t n : sizes) {
      for (int hit : hits) {
        const std::string a = std::to_string(n) + "/" + std::to_string(hit);
        std::printf("%5zu %3d%% | %7.2f %7.2f %7.2f %7.2f\n", n, hit,
                    r.ns("lookup/" + a + "/0") / 1e3, r.ns("lookup/" + a + "/1") / 1e3,
                    r.ns("probe/" + a) / 1e3, r.ns("bsearch/" + a) / 1e3);
      }
    }
  }
  const std::vector<std::pair<std::string, int>> write_iters = {
      {"insert/1", 2000},  {"insert/16", 1000}, {"insert/64", 500},
      {"insert/256", 100}, {"evict/1", 500},    {"evict/16", 500}};
  if (r.ns(fixed("insert/1", 2000)) > 0 || r.ns(fixed("evict/1", 500)) > 0) {
    std::printf(
        "\nInsert and evict, per call (the write index is %.0f%% full of 64-block chains)\n",
        fill_ratio * 100);
    std::printf(
        "  call          blocks   RT READs WRITEs  CAS  FAA    bytes |  RT/block ops/block\n");
    for (const auto& [label, iters] : write_iters) {
      const std::string name = fixed(label, iters);
      const bool evict = label[0] == 'e';
      const double blocks = r.counter(name, evict ? "evicted" : "blocks");
      std::printf("  %-12s %7.2f %5s %5s %6s %4s %4s %8s | %8.2f %9.2f\n", label.c_str(), blocks,
                  num(r.counter(name, "RT")).c_str(), num(r.counter(name, "READs")).c_str(),
                  num(r.counter(name, "WRITEs")).c_str(), num(r.counter(name, "CAS")).c_str(),
                  num(r.counter(name, "FAA")).c_str(), num(r.counter(name, "bytes")).c_str(),
                  blocks > 0 ? r.counter(name, "RT") / blocks : 0.0,
                  blocks > 0 ? r.counter(name, "ops") / blocks : 0.0);
    }
  }
  const auto rate_name = [](const std::string& name) {
    return fixed(name, name[0] == 'l' ? 100'000 : 20'000, true);
  };
  if (r.ns(rate_name("lookup_rate/1/0")) > 0 || r.ns(rate_name("insert_rate/1")) > 0) {
    std::printf(
        "\nOn shm, thousands per second per client process (the second process runs the "
        "same loop)\n");
    for (const char* name : {"lookup_rate/1/0", "lookup_rate/1/1", "lookup_rate/2/0",
                             "lookup_rate/2/1", "insert_rate/1", "insert_rate/2"}) {
      const std::string full = rate_name(name);
      const double ns = r.ns(full);
      const bool insert = name[0] == 'i';
      std::printf("  %-16s %s %8.1f", name, insert ? "16-block inserts" : "lookups N=256   ",
                  ns > 0 ? 1e6 / ns : 0.0);
      if (insert) std::printf(" (%7.1f blocks)", ns > 0 ? 16e6 / ns : 0.0);
      const double other = r.counter(full, "other_per_s");
      if (other > 0) std::printf("   other process %8.1f", other / 1e3);
      std::printf("\n");
    }
  }
  if (r.ns(fixed("latency/0/0", 100'000, true)) > 0) {
    std::printf("\nLookup latency, N = 256 full hit (us)\n");
    std::printf("  load                    hint |   p50    p99  p99.9 | p99/p50\n");
    for (int load : {0, 1}) {
      for (int hint : {0, 1}) {
        const std::string name =
            fixed("latency/" + std::to_string(load) + "/" + std::to_string(hint), 100'000, true);
        std::printf("  %-23s %4s | %5.2f %6.2f %6.2f | %5.2f\n",
                    load == 0 ? "none" : "inserter (64-block)", hint == 1 ? "yes" : "no",
                    r.counter(name, "p50_ns") / 1e3, r.counter(name, "p99_ns") / 1e3,
                    r.counter(name, "p999_ns") / 1e3, r.counter(name, "p99_over_p50"));
      }
    }
    const std::string base = fixed("latency_baseline", 100'000, true);
    if (r.ns(base) > 0) {
      std::printf("  %-28s | %5.2f %6.2f %6.2f | %5.2f\n", "baseline: XXH3 of 32 KiB",
                  r.counter(base, "p50_ns") / 1e3, r.counter(base, "p99_ns") / 1e3,
                  r.counter(base, "p999_ns") / 1e3, r.counter(base, "p99_over_p50"));
    }
  }
}

}  // namespace

BENCHMARK(bm_lookup)->Name("lookup")->Apply(lookup_args);
BENCHMARK(bm_lookup_many)
    ->Name("lookup_many")
    ->Args({256, 0})
    ->Args({256, 1})
    ->Args({1024, 0})
    ->Args({1024, 1})
    ->Iterations(3200);
BENCHMARK(bm_naive<naive_probe>)->Name("probe")->Apply(naive_args);
BENCHMARK(bm_naive<naive_bsearch>)->Name("bsearch")->Apply(naive_args);
BENCHMARK(bm_insert)->Name("insert")->Arg(1)->Iterations(2000);
BENCHMARK(bm_insert)->Name("insert")->Arg(16)->Iterations(1000);
BENCHMARK(bm_insert)->Name("insert")->Arg(64)->Iterations(500);
BENCHMARK(bm_insert)->Name("insert")->Arg(256)->Iterations(100);
BENCHMARK(bm_evict)->Name("evict")->Arg(1)->Arg(16)->Iterations(500);
BENCHMARK(bm_lookup_rate)
    ->Name("lookup_rate")
    ->Args({1, 0})
    ->Args({1, 1})
    ->Args({2, 0})
    ->Args({2, 1})
    ->Iterations(100'000)
    ->UseRealTime();
BENCHMARK(bm_insert_rate)->Name("insert_rate")->Arg(1)->Arg(2)->Iterations(20'000)->UseRealTime();
BENCHMARK(bm_latency_baseline)->Name("latency_baseline")->Iterations(100'000)->UseRealTime();
BENCHMARK(bm_latency)
    ->Name("latency")
    ->Args({0, 0})
    ->Args({0, 1})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Iterations(100'000)
    ->UseRealTime();

int main(int argc, char** argv) { return kvc_bench::run_with_table(argc, argv, print_table); }
