// bm_manager: what an engine's request costs through the cache manager, against the block pool
// called directly (the baseline, same run), for prompts whose blocks are on the device, in host
// memory, or only in a memory node (shm) that another manager published them to.
//
//   pool_hit/N          hash, pool match, load, wait, release: the floor
//   manager_hit/N       the same request through cache_manager (blocks on the device)
//   manager_host_hit/N  blocks in host memory: N copies of 64 KiB to the device
//   manager_remote_hit/N  blocks only in the memory node: index lookup, N reads into host
//                       slots on a mover, then to the device
//
// Machine-independent counters per request, through the counting transport: RT (round trips),
// bytes (moved over the transport), and blocks (hits). N blocks of 16 tokens, 64 KiB each.
//
// Then a table of the remote placement modes (counts only, one seeded workload): two engines
// share a memory node and take turns serving requests whose prompts share a system prefix,
// reuse documents by popularity and end in a unique question; their local tiers are small, so
// blocks come and go. Per mode: blocks computed by both, blocks and bytes written to the node,
// blocks read from it, against not publishing at all (the baseline).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../tests/support/unique_name.hpp"
#include "kvc/manager.hpp"
#include "kvc/transport/counting.hpp"
#include "support/ratio_reporter.hpp"

namespace {

using counted = kvc::counting<kvc::shm_transport>;
using manager = kvc::cache_manager<counted>;
constexpr std::size_t bb = 64 << 10;
constexpr std::uint32_t block_tokens = 16;
const std::vector<long> sizes = {16, 64};

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "bm_manager: %s\n", why.c_str());
  std::exit(1);
}

std::vector<kvc::token_id> prompt(std::size_t blocks, kvc::token_id salt) {
  std::vector<kvc::token_id> t(blocks * block_tokens);
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = salt * 1'000'003u + static_cast<kvc::token_id>(i);
  return t;
}

manager::config local_config() {
  manager::config cfg;
  cfg.block_size = block_tokens;
  cfg.model_salt = "bm";
  cfg.block_bytes = bb;
  cfg.device.blocks = 256;
  cfg.host.blocks = 256;
  return cfg;
}

// One request that only reads: match, load, wait, release (what a full hit costs).
std::size_t read_request(manager& mgr, const std::vector<kvc::token_id>& tokens) {
  auto m = mgr.match(tokens);
  if (!m) die("match: " + m.message());
  auto l = mgr.load(*m);
  if (!l) die("load: " + l.message());
  const std::size_t usable = l->wait();
  if (auto r = mgr.release(*m, &*l, {}); !r) die("release: " + r.message());
  return usable;
}

// Computes and commits every block of the prompt (the first request).
void compute(manager& mgr, const std::vector<kvc::token_id>& tokens) {
  auto m = mgr.match(tokens);
  if (!m) die("match: " + m.message());
  auto ids = mgr.allocate(m->blocks());
  if (!ids) die("allocate: " + ids.message());
  if (auto c = mgr.commit(*m, 0, *ids); !c) die("commit: " + c.message());
  if (auto r = mgr.release(*m, nullptr, *ids); !r) die("release: " + r.message());
  mgr.flush();
}

void evict_local(manager& mgr) {
  (void)mgr.evict(kvc::tier_kind::device, 1024);
  (void)mgr.evict(kvc::tier_kind::host, 1024);
}

// The floor: the hasher and the block pool, called directly.
void pool_hit(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  kvc::device_tier device({bb, 256, {}});
  auto host = kvc::host_tier::create({bb, 256, true});
  if (!host) die(host.message());
  kvc::block_pool<kvc::hash64, kvc::any_policy> pool(device, *host, nullptr, {});
  auto hasher = kvc::block_hasher<>::create({block_tokens, "bm"});
  const auto tokens = prompt(n, 1);
  std::vector<kvc::hash64> chain(n);
  (void)hasher->hash_prompt(tokens, chain);
  auto ids = pool.allocate_device(n);
  (void)pool.commit(chain, 0, *ids);
  (void)pool.release_device(*ids);
  for (auto _ : state) {
    std::vector<kvc::hash64> keys(hasher->full_blocks(tokens.size()));
    (void)hasher->hash_prompt(tokens, keys);
    auto m = pool.match(keys);
    auto l = pool.load_range(keys, 0, m.length);
    (void)l->wait();
    (void)pool.release_device(l->ids);
    benchmark::DoNotOptimize(m.length);
  }
  state.counters["blocks"] = static_cast<double>(n);
}

void manager_hit(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto mgr = manager::create(local_config());
  if (!mgr) die(mgr.message());
  const auto tokens = prompt(n, 2);
  compute(**mgr, tokens);
  std::size_t blocks = 0;
  for (auto _ : state) blocks += read_request(**mgr, tokens);
  state.counters["blocks"] = static_cast<double>(blocks) / static_cast<double>(state.iterations());
}

void manager_host_hit(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto mgr = manager::create(local_config());
  if (!mgr) die(mgr.message());
  const auto tokens = prompt(n, 3);
  compute(**mgr, tokens);
  std::size_t blocks = 0;
  for (auto _ : state) {
    state.PauseTiming();
    (void)(*mgr)->evict(kvc::tier_kind::device, 1024);  // write-back: now on the host only
    state.ResumeTiming();
    blocks += read_request(**mgr, tokens);
  }
  state.counters["blocks"] = static_cast<double>(blocks) / static_cast<double>(state.iterations());
}

// A memory node and two managers: the publisher computed the prompt; the reader evicts its
// local copies before each request, so every block comes from the node.
struct remote_world {
  explicit remote_world(kvc::placement place = {kvc::placement_mode::write_through, 2},
                        bool publish = true, std::size_t device = 256, std::size_t host = 256) {
    auto r =
        kvc::shm_region::create(kvc_test::unique_name("/kvc-bmmgr"), std::uint64_t{256} << 20, 0);
    if (!r) die("shm_region::create: " + r.message());
    if (auto g = kvc::format_index(r->header(), bb, 64); !g) die("format_index: " + g.message());
    region = std::make_unique<kvc::shm_region>(std::move(*r));
    publisher_t = attach();
    reader_t = attach();
    publisher = make(*publisher_t, 1, place, publish, device, host);
    reader = make(*reader_t, 2, place, publish, device, host);
  }
  std::unique_ptr<counted> attach() const {
    kvc::shm_transport t;
    if (auto ok = t.add_node(0, region->name()); !ok) die("add_node: " + ok.message());
    return std::make_unique<counted>(std::move(t));
  }
  static std::unique_ptr<manager> make(counted& t, std::uint64_t seed, kvc::placement place,
                                       bool publish, std::size_t device, std::size_t host) {
    auto cfg = local_config();
    cfg.device.blocks = device;
    cfg.host.blocks = host;
    cfg.remote.place = place;
    cfg.remote.publish = publish;
    cfg.remote.transport = &t;
    cfg.remote.index.index.nodes = {0};
    // A long lease: no heartbeat inside the measured loop.
    cfg.remote.index.index.lease = std::chrono::hours(1);
    cfg.remote.index.index.heartbeat = std::chrono::minutes(10);
    cfg.remote.index.index.seed = seed;
    cfg.remote.index.clients = 1;
    auto m = manager::create(cfg);
    if (!m) die("create: " + m.message());
    return std::move(*m);
  }
  std::unique_ptr<kvc::shm_region> region;
  std::unique_ptr<counted> publisher_t, reader_t;
  std::unique_ptr<manager> publisher, reader;
};

void manager_remote_hit(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  remote_world w;
  const auto tokens = prompt(n, 4);
  compute(*w.publisher, tokens);
  std::size_t blocks = 0;
  kvc::transport_counts moved{};
  for (auto _ : state) {
    state.PauseTiming();
    evict_local(*w.reader);
    const auto before = w.reader_t->snapshot();
    state.ResumeTiming();
    blocks += read_request(*w.reader, tokens);
    state.PauseTiming();
    const auto d = w.reader_t->snapshot() - before;
    moved.round_trips += d.round_trips;
    for (std::size_t k = 0; k < 4; ++k) moved.bytes[k] += d.bytes[k];
    state.ResumeTiming();
  }
  const auto calls = static_cast<double>(state.iterations());
  state.counters["blocks"] = static_cast<double>(blocks) / calls;
  state.counters["RT"] = static_cast<double>(moved.round_trips) / calls;
  state.counters["bytes"] = static_cast<double>(moved.total_bytes()) / calls;
}

BENCHMARK(pool_hit)->ArgsProduct({sizes})->Unit(benchmark::kMicrosecond);
BENCHMARK(manager_hit)->ArgsProduct({sizes})->Unit(benchmark::kMicrosecond);
BENCHMARK(manager_host_hit)->ArgsProduct({sizes})->Unit(benchmark::kMicrosecond);
BENCHMARK(manager_remote_hit)->ArgsProduct({sizes})->Unit(benchmark::kMicrosecond);

// One request as an engine serves it: match, load what is cached, compute and commit the rest.
// Returns the blocks computed.
std::size_t serve(manager& mgr, const std::vector<kvc::token_id>& tokens) {
  auto m = mgr.match(tokens);
  if (!m) die("match: " + m.message());
  auto l = mgr.load(*m);
  if (!l) die("load: " + l.message());
  const std::size_t usable = l->wait();
  const std::size_t todo = m->blocks() - usable;
  std::vector<std::uint32_t> ids;
  if (todo > 0) {
    auto got = mgr.allocate(todo);
    if (!got) die("allocate: " + got.message());
    ids = std::move(*got);
    if (auto c = mgr.commit(*m, usable, ids); !c) die("commit: " + c.message());
  }
  if (auto r = mgr.release(*m, &*l, ids); !r) die("release: " + r.message());
  return todo;
}

struct placement_outcome {
  std::size_t requests = 0, blocks = 0, computed = 0, published = 0, remote_loaded = 0;
  std::uint64_t bytes_written = 0, bytes_read = 0;
};

// The workload: a 4-block system prompt, one of 40 documents of 8 blocks (Zipf, s = 1.1), a
// unique 2-block question; the engines take turns. Each engine holds 48 device and 96 host
// blocks, a fifth of what the workload touches.
placement_outcome run_placement(kvc::placement place, bool publish) {
  remote_world w(place, publish, 48, 96);
  std::mt19937_64 rng(42);
  std::vector<double> weights(40);
  for (std::size_t d = 0; d < weights.size(); ++d)
    weights[d] = 1.0 / std::pow(static_cast<double>(d) + 1.0, 1.1);
  std::discrete_distribution<std::size_t> doc(weights.begin(), weights.end());
  placement_outcome out;
  for (std::size_t i = 0; i < 600; ++i) {
    auto tokens = prompt(4, 7);
    const auto d = prompt(8, static_cast<kvc::token_id>(100 + doc(rng)));
    const auto q = prompt(2, static_cast<kvc::token_id>(10'000 + i));
    tokens.insert(tokens.end(), d.begin(), d.end());
    tokens.insert(tokens.end(), q.begin(), q.end());
    manager& engine = i % 2 == 0 ? *w.publisher : *w.reader;
    out.computed += serve(engine, tokens);
    out.blocks += 14;
    ++out.requests;
    engine.flush();
  }
  for (manager* m : {w.publisher.get(), w.reader.get()}) {
    const auto st = m->stats();
    out.published += st.published;
    out.remote_loaded += st.remote_loaded;
  }
  for (counted* t : {w.publisher_t.get(), w.reader_t.get()}) {
    const auto c = t->snapshot();
    out.bytes_written += c.bytes_of(kvc::op_kind::write);
    out.bytes_read += c.bytes_of(kvc::op_kind::read);
  }
  return out;
}

void print_placements() {
  struct row {
    const char* name;
    kvc::placement place;
    bool publish;
  };
  const row rows[] = {
      {"none (baseline)", {kvc::placement_mode::write_through, 2}, false},
      {"write_through", {kvc::placement_mode::write_through, 2}, true},
      {"selective:2", {kvc::placement_mode::selective, 2}, true},
      {"selective:4", {kvc::placement_mode::selective, 4}, true},
      {"write_back", {kvc::placement_mode::write_back, 2}, true},
  };
  std::printf("\nremote placement: 2 engines taking turns, 600 requests of 14 blocks (counts)\n");
  std::printf("%-16s %10s %14s %12s %16s %12s %14s\n", "mode", "computed", "vs baseline",
              "published", "MiB written", "read back", "MiB read");
  double baseline = 0;
  for (const row& r : rows) {
    const auto o = run_placement(r.place, r.publish);
    if (baseline == 0) baseline = static_cast<double>(o.computed);
    std::printf("%-16s %10zu %14.2f %12zu %16.1f %12zu %14.1f\n", r.name, o.computed,
                static_cast<double>(o.computed) / baseline, o.published,
                static_cast<double>(o.bytes_written) / (1 << 20), o.remote_loaded,
                static_cast<double>(o.bytes_read) / (1 << 20));
  }
}

void print_table(const kvc_bench::ratio_reporter& r) {
  std::printf("\nper request, N blocks of %u tokens and %zu KiB (ratios within this run)\n",
              block_tokens, bb >> 10);
  std::printf("%6s %14s %14s %14s %16s %10s %14s\n", "N", "pool hit us", "manager/pool",
              "host hit us", "remote hit us", "remote RT", "remote bytes/N");
  for (long n : sizes) {
    std::string a = std::to_string(n);
    a.insert(a.begin(), '/');
    const double pool = r.ns("pool_hit" + a), mgr = r.ns("manager_hit" + a);
    const double host = r.ns("manager_host_hit" + a), remote = r.ns("manager_remote_hit" + a);
    std::printf("%6ld %14.2f %14.2f %14.2f %16.2f %10.1f %14.0f\n", n, pool / 1e3,
                pool > 0 ? mgr / pool : 0.0, host / 1e3, remote / 1e3,
                r.counter("manager_remote_hit" + a, "RT"),
                r.counter("manager_remote_hit" + a, "bytes") / static_cast<double>(n));
  }
  print_placements();
}

}  // namespace

int main(int argc, char** argv) { return kvc_bench::run_with_table(argc, argv, print_table); }
