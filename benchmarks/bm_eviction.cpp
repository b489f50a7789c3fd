// bm_eviction: what each eviction policy costs and what it buys.
//
// Cost: ns per access (a hit recorded on a random one of 65,536 cached entries) and per eviction
// (victim + erase + insert of a new entry, the steady state of a full cache), for every policy.
// Hit ratio: when the public trace is present (../shared/traces/ or $KVC_TRACE), a table of the
// block hit ratio of every policy at 4k, 16k and 64k blocks, replayed through the radix tree the
// way the study counts (tests/support/trace_replay.hpp), with the infinite cache as the ceiling.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <deque>
#include <kvc/evict/lfu.hpp>
#include <kvc/evict/priority_ttl.hpp>
#include <kvc/evict/queue_policy.hpp>
#include <kvc/evict/s3fifo.hpp>
#include <kvc/evict/sieve.hpp>
#include <kvc/evict/tinylfu.hpp>
#include <random>
#include <string>
#include <vector>

#include "../tests/support/mooncake_trace.hpp"
#include "../tests/support/trace_replay.hpp"
#include "support/ratio_reporter.hpp"

namespace {

constexpr std::size_t entries = 1u << 16;

template <class Policy>
struct entry : Policy::hook {
  std::uint64_t key = 0;
};

std::uint64_t key_of(std::size_t i) { return (i + 1) * 0x9E3779B97F4A7C15u; }

template <class Policy>
struct cache {
  Policy policy;
  std::deque<entry<Policy>> slots{entries};
  cache() {
    for (std::size_t i = 0; i < entries; ++i) {
      slots[i].key = key_of(i);
      policy.insert(slots[i], slots[i].key);
    }
  }
};

std::vector<std::uint32_t> random_indices() {
  std::mt19937 rng(8);
  // Skewed like a cache's hits: a Zipf-ish mix of a hot eighth and the rest.
  std::vector<std::uint32_t> idx(1u << 20);
  for (auto& i : idx)
    i = static_cast<std::uint32_t>(rng() % 4 != 0 ? rng() % (entries / 8) : rng() % entries);
  return idx;
}

template <class Policy>
void bm_access(benchmark::State& state) {
  cache<Policy> c;
  const auto idx = random_indices();
  std::size_t n = 0;
  for (auto _ : state) {
    auto& e = c.slots[idx[n++ & (idx.size() - 1)]];
    c.policy.access(e, e.key);
  }
}

template <class Policy>
void bm_evict(benchmark::State& state) {
  cache<Policy> c;
  const auto idx = random_indices();
  std::size_t n = 0;
  std::uint64_t next_key = entries + 1;
  const auto always = [](typename Policy::hook&) { return true; };
  for (auto _ : state) {
    // Some hits between evictions, so the policies have something to weigh.
    auto& hit = c.slots[idx[n++ & (idx.size() - 1)]];
    c.policy.access(hit, hit.key);
    auto* v = c.policy.victim(always);
    c.policy.erase(*v);
    auto& e = static_cast<entry<Policy>&>(*v);
    e.key = key_of(next_key++);
    c.policy.insert(e, e.key);
  }
}

#define KVC_POLICY_BENCHMARKS(policy, name)           \
  BENCHMARK(bm_access<policy>)->Name("access/" name); \
  BENCHMARK(bm_evict<policy>)->Name("evict/" name)

KVC_POLICY_BENCHMARKS(kvc::lru_policy, "lru");
KVC_POLICY_BENCHMARKS(kvc::fifo_policy, "fifo");
KVC_POLICY_BENCHMARKS(kvc::sieve_policy, "sieve");
KVC_POLICY_BENCHMARKS(kvc::s3fifo_policy, "s3fifo");
KVC_POLICY_BENCHMARKS(kvc::lfu_policy, "lfu");
KVC_POLICY_BENCHMARKS(kvc::tinylfu<kvc::lru_policy>, "tinylfu(lru)");
KVC_POLICY_BENCHMARKS(kvc::priority_ttl_policy<>, "priority_ttl");

const char* const policy_names[] = {"lru", "fifo",         "sieve",       "s3fifo",
                                    "lfu", "tinylfu(lru)", "priority_ttl"};

void print_costs(const kvc_bench::ratio_reporter& r) {
  std::printf("\nCost per event, ns (%zu cached entries); 'x LRU' = policy time / LRU time:\n",
              entries);
  std::printf("  %-14s %9s %7s %9s %7s\n", "policy", "access", "x LRU", "evict", "x LRU");
  const double lru_access = r.ns("access/lru");
  const double lru_evict = r.ns("evict/lru");
  for (const char* name : policy_names) {
    const double a = r.ns(std::string("access/") + name);
    const double e = r.ns(std::string("evict/") + name);
    if (a <= 0 || e <= 0) continue;
    std::printf("  %-14s %9.1f %7.2f %9.1f %7.2f\n", name, a, a / lru_access, e, e / lru_evict);
  }
}

void print_hit_ratios() {
  const auto path = kvc_test::conversation_trace_path();
  if (!kvc_test::file_exists(path)) {
    std::printf("\nHit ratios: skipped, no trace at %s (set KVC_TRACE)\n", path.c_str());
    return;
  }
  auto chains = kvc_test::read_chains(path);
  if (!chains) {
    std::printf("\nHit ratios: %s\n", chains.message().c_str());
    return;
  }
  const auto& c = *chains;
  const std::size_t capacities[] = {4'000, 16'000, 64'000};
  std::printf("\nBlock hit ratio on %s (%zu requests), by capacity in blocks:\n", path.c_str(),
              c.size());
  std::printf("  %-16s %8s %8s %8s\n", "policy", "4k", "16k", "64k");
  const auto row = [&](const char* name, auto&& run) {
    std::printf("  %-16s", name);
    for (auto cap : capacities) std::printf(" %7.2f%%", 100.0 * run(cap).hit_ratio());
    std::printf("\n");
  };
  row("lru", [&](std::size_t cap) { return kvc_test::replay<kvc::lru_policy>(c, cap); });
  row("fifo", [&](std::size_t cap) { return kvc_test::replay<kvc::fifo_policy>(c, cap); });
  row("sieve", [&](std::size_t cap) { return kvc_test::replay<kvc::sieve_policy>(c, cap); });
  row("s3fifo", [&](std::size_t cap) { return kvc_test::replay<kvc::s3fifo_policy>(c, cap); });
  row("lfu (aging)", [&](std::size_t cap) { return kvc_test::replay<kvc::lfu_policy>(c, cap); });
  row("tinylfu + lru", [&](std::size_t cap) {
    return kvc_test::replay_admitted<kvc::lru_policy>(c, cap, kvc::tinylfu_config{1u << 16, 0});
  });
  row("tinylfu + s3fifo", [&](std::size_t cap) {
    return kvc_test::replay_admitted<kvc::s3fifo_policy>(c, cap, kvc::tinylfu_config{1u << 16, 0});
  });
  std::printf("  %-16s %7.2f%% (every capacity)\n", "infinite",
              100.0 * kvc_test::replay<kvc::lru_policy>(c, SIZE_MAX).hit_ratio());
}

}  // namespace

int main(int argc, char** argv) {
  return kvc_bench::run_with_table(argc, argv, [](const kvc_bench::ratio_reporter& r) {
    print_costs(r);
    print_hit_ratios();
  });
}
