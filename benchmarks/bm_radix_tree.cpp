// bm_radix_tree: the radix tree's longest-prefix match and insert against the baseline of the
// same run, a std::unordered_map from block hash to block walked hash by hash until the first
// miss (how vLLM finds cached blocks), and the memory each uses per cached block.
//
// Match: a fully cached 8,192-block chain (128k tokens at 16 per block), a chain that diverges
// halfway, and a miss; both sides write a handle per matched block, as an engine needs them.
// Insert: an 8,192-block chain into an empty cache, teardown included, in blocks per second.
// Memory: heap bytes in use (glibc's mallinfo2, chunk headers included) per cached block, for one
// long chain and for a trace-like forest of short chains sharing prefixes. Payload: an 8-byte block
// id.
#include <benchmark/benchmark.h>

#include <malloc.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <kvc/evict/queue_policy.hpp>
#include <kvc/evict/s3fifo.hpp>
#include <kvc/tree/radix_tree.hpp>
#include <new>
#include <random>
#include <unordered_map>
#include <vector>

#include "support/ratio_reporter.hpp"

namespace {

// Bytes the C heap has handed out and not taken back (glibc's own accounting, chunk headers
// included), for the trees and maps alike.
std::size_t heap_in_use() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

}  // namespace

namespace {

using kvc::hash64;
using payload = std::uint64_t;  // e.g. the block's id in the engine's KV tensor
using tree_type = kvc::radix_tree<hash64, payload, kvc::lru_policy>;
using map_type = std::unordered_map<hash64, payload>;
// The baseline with what an engine's map entry carries for LRU eviction too (vLLM's KVCacheBlock
// links its free-block queue through prev/next pointers): the like-for-like comparison.
struct lru_block {
  payload id = 0;
  lru_block* prev = nullptr;
  lru_block* next = nullptr;
};
using lru_map_type = std::unordered_map<hash64, lru_block>;
constexpr std::size_t chain_blocks = 8192;

std::vector<hash64> random_chain(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<hash64> c(n);
  for (auto& h : c) h = hash64{rng()};
  return c;
}

const std::vector<hash64>& cached_chain() {
  static const auto c = random_chain(chain_blocks, 1);
  return c;
}

// The query of each match case: all of the cached chain, its first half then new blocks, or a
// chain that shares nothing.
std::vector<hash64> query(int which) {
  const auto& c = cached_chain();
  if (which == 0) return c;
  if (which == 1) {
    auto q = random_chain(chain_blocks, 2);
    std::copy(c.begin(), c.begin() + chain_blocks / 2, q.begin());
    return q;
  }
  return random_chain(chain_blocks, 3);
}

// Walks the map hash by hash until the first miss, collecting handles: the baseline.
std::size_t map_match(const map_type& map, const std::vector<hash64>& q, const payload** out) {
  std::size_t k = 0;
  for (; k < q.size(); ++k) {
    auto it = map.find(q[k]);
    if (it == map.end()) break;
    out[k] = &it->second;
  }
  return k;
}

void bm_tree_match(benchmark::State& state) {
  tree_type tree;
  tree.insert(cached_chain(), [](std::size_t i) { return payload{i}; });
  const auto q = query(static_cast<int>(state.range(0)));
  std::vector<const tree_type::block*> out(q.size());
  const tree_type& t = tree;
  std::size_t matched = 0;
  for (auto _ : state) {
    matched = t.match(q, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["matched"] = static_cast<double>(matched);
}

void bm_map_match(benchmark::State& state) {
  map_type map;
  const auto& c = cached_chain();
  for (std::size_t i = 0; i < c.size(); ++i) map.emplace(c[i], payload{i});
  const auto q = query(static_cast<int>(state.range(0)));
  std::vector<const payload*> out(q.size());
  std::size_t matched = 0;
  for (auto _ : state) {
    matched = map_match(map, q, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["matched"] = static_cast<double>(matched);
}

void bm_tree_insert(benchmark::State& state) {
  const auto& c = cached_chain();
  for (auto _ : state) {
    tree_type tree;
    tree.insert(c, [](std::size_t i) { return payload{i}; });
    benchmark::DoNotOptimize(tree.size());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(c.size()));
}

void bm_map_insert(benchmark::State& state) {
  const auto& c = cached_chain();
  for (auto _ : state) {
    map_type map;
    // Like the engine's walk: look up each block, add the ones missing.
    for (std::size_t i = 0; i < c.size(); ++i) map.try_emplace(c[i], payload{i});
    benchmark::DoNotOptimize(map.size());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(c.size()));
}

// A forest like the trace's: 2,000 chains of 1..30 blocks, each extending a random earlier chain
// or starting at a shared root block.
std::vector<std::vector<hash64>> forest() {
  std::mt19937_64 rng(4);
  std::vector<std::vector<hash64>> chains;
  for (int i = 0; i < 2000; ++i) {
    std::vector<hash64> c;
    if (!chains.empty() && rng() % 3 != 0) {
      const auto& base = chains[rng() % chains.size()];
      c.assign(base.begin(), base.begin() + static_cast<std::ptrdiff_t>(1 + rng() % base.size()));
    } else {
      c.push_back(hash64{0});
    }
    for (auto extra = 1 + rng() % 15; extra > 0; --extra) c.push_back(hash64{rng()});
    chains.push_back(std::move(c));
  }
  return chains;
}

// Memory shape 0: the one long chain; 1: the forest; 2 and 3: the same after evicting half the
// blocks (the tree in its policy's order, the maps every other entry they hold).
std::vector<std::vector<hash64>> shape(std::int64_t which) {
  if (which % 2 == 0) return {cached_chain()};
  return forest();
}
bool halved(std::int64_t which) { return which >= 2; }

template <class Build>
void bytes_per_block(benchmark::State& state, Build build) {
  double per_block = 0;
  for (auto _ : state) {
    const std::size_t before = heap_in_use();
    auto [bytes, blocks] = build(before);
    per_block = static_cast<double>(bytes) / static_cast<double>(blocks);
  }
  state.counters["bytes_per_block"] = per_block;
}

template <class Policy, class... PolicyArgs>
std::pair<std::size_t, std::size_t> tree_bytes(const std::vector<std::vector<hash64>>& chains,
                                               bool halve, std::size_t before,
                                               PolicyArgs... policy_args) {
  kvc::radix_tree<hash64, payload, Policy> tree(policy_args...);
  for (const auto& c : chains) tree.insert(c, [](std::size_t i) { return payload{i}; });
  if (halve) tree.evict(tree.size() / 2, [](const hash64&, payload&&) {});
  return {heap_in_use() - before, tree.size()};
}

template <class Map>
std::pair<std::size_t, std::size_t> map_bytes(const std::vector<std::vector<hash64>>& chains,
                                              bool halve, std::size_t before) {
  Map map;
  std::vector<hash64> order;
  for (const auto& c : chains) {
    for (const hash64& h : c) {
      if (map.try_emplace(h).second) order.push_back(h);
    }
  }
  if (halve) {
    for (std::size_t i = 0; i < order.size(); i += 2) map.erase(order[i]);
  }
  std::vector<hash64>().swap(order);  // not part of the map
  return {heap_in_use() - before, map.size()};
}

void bm_tree_memory(benchmark::State& state) {
  const auto chains = shape(state.range(0));
  const bool halve = halved(state.range(0));
  bytes_per_block(state, [&](std::size_t before) {
    return tree_bytes<kvc::lru_policy>(chains, halve, before);
  });
}
void bm_tree_s3fifo_memory(benchmark::State& state) {
  const auto chains = shape(state.range(0));
  const bool halve = halved(state.range(0));
  bytes_per_block(state, [&](std::size_t before) {
    // The ghost table sized for this cache (about 2x its entries), not the 64k-slot default.
    return tree_bytes<kvc::s3fifo_policy>(chains, halve, before, kvc::s3fifo_config{0.1, 1u << 14});
  });
}
void bm_map_memory(benchmark::State& state) {
  const auto chains = shape(state.range(0));
  const bool halve = halved(state.range(0));
  bytes_per_block(state,
                  [&](std::size_t before) { return map_bytes<map_type>(chains, halve, before); });
}
void bm_lru_map_memory(benchmark::State& state) {
  const auto chains = shape(state.range(0));
  const bool halve = halved(state.range(0));
  bytes_per_block(
      state, [&](std::size_t before) { return map_bytes<lru_map_type>(chains, halve, before); });
}

BENCHMARK(bm_tree_match)->Name("tree_match")->Arg(0)->Arg(1)->Arg(2);
BENCHMARK(bm_map_match)->Name("map_match")->Arg(0)->Arg(1)->Arg(2);
BENCHMARK(bm_tree_insert)->Name("tree_insert");
BENCHMARK(bm_map_insert)->Name("map_insert");
BENCHMARK(bm_tree_memory)->Name("tree_memory")->DenseRange(0, 3)->Iterations(1);
BENCHMARK(bm_tree_s3fifo_memory)->Name("tree_s3fifo_memory")->DenseRange(0, 3)->Iterations(1);
BENCHMARK(bm_map_memory)->Name("map_memory")->DenseRange(0, 3)->Iterations(1);
BENCHMARK(bm_lru_map_memory)->Name("lru_map_memory")->DenseRange(0, 3)->Iterations(1);

std::string run_name(const char* prefix, int arg, const char* suffix = "") {
  std::string name(prefix);
  name += std::to_string(arg);
  name += suffix;
  return name;
}

void print_table(const kvc_bench::ratio_reporter& r) {
  std::printf(
      "\nMatch (8,192-block query), ns per match; 'x map' = map time / tree time (goal >= 2):\n");
  const char* cases[] = {"full hit", "diverges halfway", "miss"};
  for (int i = 0; i < 3; ++i) {
    const double tree = r.ns(run_name("tree_match/", i));
    const double map = r.ns(run_name("map_match/", i));
    if (tree <= 0 || map <= 0) continue;
    std::printf("  %-17s tree %10.0f   map %10.0f   x map %7.1f\n", cases[i], tree, map,
                map / tree);
  }
  const double ti = r.ns("tree_insert");
  const double mi = r.ns("map_insert");
  if (ti > 0 && mi > 0) {
    std::printf(
        "Insert 8,192 blocks into an empty cache (teardown included): tree %.1f M blocks/s, map "
        "%.1f M blocks/s, tree/map speed %.2f (goal >= 1)\n",
        8192e3 / ti, 8192e3 / mi, mi / ti);
  }
  std::printf(
      "Bytes per cached block, heap (8-byte payload included; goal: tree <= map). 'map' holds the"
      " payload only; 'map+LRU' also the two LRU links an engine's block carries:\n");
  const char* shapes[] = {"one 8,192-block chain", "forest of 2,000 chains",
                          "the chain, half evicted", "the forest, half evicted"};
  for (int i = 0; i < 4; ++i) {
    std::printf("  %-24s tree+LRU %6.1f   tree+S3-FIFO %6.1f   map %6.1f   map+LRU %6.1f\n",
                shapes[i],
                r.counter(run_name("tree_memory/", i, "/iterations:1"), "bytes_per_block"),
                r.counter(run_name("tree_s3fifo_memory/", i, "/iterations:1"), "bytes_per_block"),
                r.counter(run_name("map_memory/", i, "/iterations:1"), "bytes_per_block"),
                r.counter(run_name("lru_map_memory/", i, "/iterations:1"), "bytes_per_block"));
  }
}

}  // namespace

int main(int argc, char** argv) { return kvc_bench::run_with_table(argc, argv, print_table); }
