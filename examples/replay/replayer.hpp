// Replays a trace's requests through real cache managers, one per engine instance, as an engine
// would serve them: match the prompt's block keys (the trace's ids, chained: trace/chain_keys.hpp),
// load the cached prefix onto device ids, allocate ids for the rest, commit what was "computed",
// release. Engines share the memory nodes they are given; each has its own local tiers.
//
//   kvc_replay::replay_config cfg;                       // engines, capacities, policy, ...
//   auto r = kvc_replay::replay(requests, cfg, remote);  // remote: a transport + nodes, or none
//   r->hit_ratio(); r->hits.remote; r->lookup.p99_us; ...
//
// Modes: concurrent (a thread per engine, each serving its requests in trace order, as fast as
// possible or at trace time) or sequential (one request at a time in trace order, each engine's
// publishes finished before the next request: the result is a function of the trace and the
// configuration, which the tests check against an independent computation).
// A request longer than an engine's device is served up to the device's size (counted).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <kvc/manager.hpp>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/percentile.hpp"
#include "trace/chain_keys.hpp"
#include "trace/generator.hpp"

namespace kvc_replay {

enum class routing : std::uint8_t {
  round_robin,  // request i to engine i mod engines
  affinity,     // by the first block's key: requests sharing a first block share an engine
};

struct replay_config {
  std::size_t engines = 2;
  std::size_t device_blocks = 1024;  // per engine
  std::size_t host_blocks = 2048;    // per engine
  std::string policy = "lru";        // the device's and the host's (kvc::parse_policy_config)
  std::size_t block_bytes = 1024;    // KV bytes per block (moved for real; bytes scale with it)
  std::uint32_t block_tokens = 512;  // tokens per block of the trace
  kvc::placement remote_place{kvc::placement_mode::write_through, 2};
  routing route = routing::round_robin;
  bool sequential = false;
  double speed = 0;        // 0: as fast as possible; > 0: at trace time, sped up this many times
  std::uint64_t seed = 1;  // the index clients' (their eviction samples)
  // The index clients' lease: blocks evicted from a full node are reclaimed (their slots reused)
  // a quarter lease later.
  std::chrono::milliseconds lease{2000};
  std::function<void(std::size_t done)> progress;  // called from the replaying threads
};

// Memory nodes the engines share: a transport attached to them (shm, verbs) and their ids.
template <kvc::Transport T = kvc::shm_transport>
struct remote_nodes {
  T* transport = nullptr;
  std::vector<kvc::node_id> nodes;
};

struct latency_summary {
  double p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
  std::vector<double> cdf_us;  // 101 points: the latency at percentile 0, 1, ..., 100
};

struct replay_report {
  std::size_t engines = 0, requests = 0;
  std::uint64_t blocks = 0;    // prompt blocks served (requests cut to the device's size)
  kvc::tier_blocks hits;       // blocks the engines read from each tier
  std::uint64_t computed = 0;  // blocks the engines computed
  std::size_t truncated = 0;   // requests longer than the device, served cut
  std::uint64_t errors = 0;    // requests a manager call failed for (computed; first_error says)
  std::uint64_t allocate_waits = 0;  // allocations that waited for the engine's own publishes
  std::string first_error;
  std::uint64_t remote_lookups = 0, lookup_round_trips = 0, lookup_bytes = 0;
  std::uint64_t published = 0, remote_evicted = 0, remote_errors = 0;
  std::uint64_t publish_missed = 0;  // blocks a publish found without a local copy to send
  std::uint64_t mover_failures = 0;  // publishes and remote loads given up for want of memory
  std::uint64_t bytes_to_device = 0, bytes_to_host = 0;  // copies into the local tiers
  std::uint64_t bytes_from_remote = 0, bytes_to_remote = 0;
  latency_summary lookup;  // match(): the local tiers and the memory nodes
  double seconds = 0;

  [[nodiscard]] double ratio(std::uint64_t n) const {
    return blocks == 0 ? 0.0 : static_cast<double>(n) / static_cast<double>(blocks);
  }
  [[nodiscard]] double hit_ratio() const { return ratio(hits.total()); }
};

// Latencies in nanoseconds (sorted here) as percentiles in microseconds.
inline latency_summary summarize(std::vector<std::uint64_t>& ns) {
  latency_summary s;
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  const auto at = [&](unsigned permille) {
    return static_cast<double>(kvc_examples::nearest_rank(ns, permille)) / 1000.0;
  };
  s.p50_us = at(500);
  s.p99_us = at(990);
  s.p999_us = at(999);
  s.max_us = static_cast<double>(ns.back()) / 1000.0;
  s.cdf_us.reserve(101);
  for (unsigned p = 0; p <= 100; ++p) s.cdf_us.push_back(at(10 * p));
  return s;
}

namespace detail {

template <kvc::Transport T>
struct engine {
  std::unique_ptr<kvc::cache_manager<T>> mgr;
  std::vector<std::size_t> requests;  // indices into the trace, in order
  kvc::tier_blocks hits;
  std::uint64_t blocks = 0, computed = 0, errors = 0, allocate_waits = 0;
  std::size_t truncated = 0;
  std::string first_error;
  std::vector<std::uint64_t> latency_ns;

  void fail(const std::string& what) {
    if (errors++ == 0) first_error = what;
  }

  // One request, as an engine serves it.
  void serve(std::span<const kvc::hash64> chain) {
    const auto t0 = std::chrono::steady_clock::now();
    auto m = mgr->match_chain(chain);
    latency_ns.push_back(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
            .count()));
    if (!m) {
      blocks += chain.size();
      computed += chain.size();
      return fail("match: " + m.message());
    }
    auto l = mgr->load(*m);
    if (!l) {
      blocks += m->blocks();
      computed += m->blocks();
      (void)mgr->release(*m, nullptr, {});
      return fail("load: " + l.message());
    }
    const std::size_t usable = l->wait();
    auto ids = mgr->allocate(m->blocks() - usable);
    if (!ids && ids.error() == kvc::errc::no_space) {
      // The device is held by this engine's publishes in flight (they pin their chains while
      // the memory nodes are written): wait for them, then ask again.
      ++allocate_waits;
      mgr->flush();
      ids = mgr->allocate(m->blocks() - usable);
    }
    if (!ids) {
      blocks += m->blocks();  // the engine computes the request without caching it
      computed += m->blocks();
      (void)mgr->release(*m, &*l, {});
      return fail("allocate: " + ids.message());
    }
    // What the engine read, tier by tier: the local prefix (device, host, SSD copies), then the
    // memory nodes' blocks; a load cut short (a block evicted since the match) is recomputed.
    const kvc::tier_blocks& t = m->by_tier();
    std::size_t left = usable;
    for (auto [from, to] : {std::pair{t.device, &hits.device}, std::pair{t.host, &hits.host},
                            std::pair{t.ssd, &hits.ssd}, std::pair{t.remote, &hits.remote}}) {
      const std::size_t n = std::min(from, left);
      *to += n;
      left -= n;
    }
    blocks += m->blocks();
    computed += ids->size();
    if (auto c = mgr->commit(*m, usable, *ids); !c) fail("commit: " + c.message());
    if (auto r = mgr->release(*m, &*l, *ids); !r) fail("release: " + r.message());
  }
};

}  // namespace detail

// The configuration's errors, as the cache manager would name them (invalid_config).
template <kvc::Transport T>
[[nodiscard]] kvc::result<typename kvc::cache_manager<T>::config> manager_config(
    const replay_config& cfg, const remote_nodes<T>& remote) {
  using manager = kvc::cache_manager<T>;
  if (cfg.engines == 0 || cfg.engines > 256) {
    return kvc::fail(kvc::errc::invalid_config, "replay: engines must be in 1..256");
  }
  if (!(cfg.speed >= 0) || !std::isfinite(cfg.speed)) {
    return kvc::fail(kvc::errc::invalid_config, "replay: speed must be >= 0");
  }
  auto policy = kvc::parse_policy_config(cfg.policy);
  if (!policy) return std::move(policy).take_failure();
  typename manager::config m;
  m.block_size = cfg.block_tokens;
  m.model_salt = "kvc-replay";
  m.block_bytes = cfg.block_bytes;
  m.device.blocks = cfg.device_blocks;
  m.device.policy = *policy;
  m.host.blocks = cfg.host_blocks;
  m.host.huge_pages = false;
  m.host.policy = *policy;
  m.remote.transport = remote.transport;
  m.remote.index.index.nodes = remote.nodes;
  m.remote.index.index.seed = cfg.seed;
  m.remote.index.index.lease = cfg.lease;
  m.remote.index.index.heartbeat = std::max(cfg.lease / 8, std::chrono::milliseconds(1));
  m.remote.index.clients = 2;
  m.remote.place = cfg.remote_place;
  // A replay computes nothing, so an engine's requests outrun its publishes (a real engine's
  // prefill leaves the movers time): every queued publish holds its blocks, and an engine whose
  // device is full of them waits for its publishes (allocate_waits) instead of dropping them.
  m.remote.max_held = std::numeric_limits<std::size_t>::max();
  if (auto ok = manager::check(m); !ok) return std::move(ok).take_failure();
  return m;
}

// Replays `trace` (in its order) through cfg.engines cache managers sharing `remote`.
template <kvc::Transport T = kvc::shm_transport>
[[nodiscard]] kvc::result<replay_report> replay(const std::vector<kvc_trace::trace_request>& trace,
                                                const replay_config& cfg,
                                                const remote_nodes<T>& remote = {}) {
  using manager = kvc::cache_manager<T>;
  auto mcfg = manager_config(cfg, remote);
  if (!mcfg) return std::move(mcfg).take_failure();
  std::vector<detail::engine<T>> engines(cfg.engines);
  for (std::size_t e = 0; e < engines.size(); ++e) {
    auto c = *mcfg;
    c.remote.index.index.seed = cfg.seed + 16 * e;
    auto m = manager::create(c);
    if (!m) return std::move(m).take_failure();
    engines[e].mgr = std::move(*m);
  }
  // Keys, cut to the device's size, and routes.
  std::vector<std::vector<kvc::hash64>> chains(trace.size());
  std::vector<std::size_t> engine_of(trace.size());
  std::size_t truncated = 0;
  for (std::size_t i = 0; i < trace.size(); ++i) {
    const auto& ids = trace[i].hash_ids;
    const std::size_t n = std::min(ids.size(), cfg.device_blocks);
    if (n < ids.size()) ++truncated;
    kvc_trace::chain_keys(std::span(ids).first(n), chains[i]);
    engine_of[i] = cfg.route == routing::round_robin || chains[i].empty()
                       ? i % engines.size()
                       : std::hash<kvc::hash64>{}(chains[i][0]) % engines.size();
    engines[engine_of[i]].requests.push_back(i);
  }

  std::atomic<std::size_t> done{0};
  const auto tick = [&] {
    const std::size_t d = done.fetch_add(1, std::memory_order_relaxed) + 1;
    if (cfg.progress) cfg.progress(d);
  };
  const auto start = std::chrono::steady_clock::now();
  const std::uint64_t t0_ms = trace.empty() ? 0 : trace.front().timestamp_ms;
  const auto due = [&](std::size_t i) {
    const double ms =
        static_cast<double>(trace[i].timestamp_ms - std::min(t0_ms, trace[i].timestamp_ms)) /
        cfg.speed;
    const double us = std::min(ms * 1000.0, 1e15);  // a tiny speed waits "forever", not UB
    return start + std::chrono::microseconds(static_cast<std::int64_t>(us));
  };
  if (cfg.sequential) {
    for (std::size_t i = 0; i < trace.size(); ++i) {
      if (cfg.speed > 0) std::this_thread::sleep_until(due(i));
      auto& e = engines[engine_of[i]];
      e.serve(chains[i]);
      e.mgr->flush();
      tick();
    }
  } else {
    std::vector<std::jthread> threads;  // joined on every way out
    threads.reserve(engines.size());
    for (auto& e : engines) {
      threads.emplace_back([&, ep = &e] {
        for (const std::size_t i : ep->requests) {
          if (cfg.speed > 0) std::this_thread::sleep_until(due(i));
          ep->serve(chains[i]);
          tick();
        }
        ep->mgr->flush();
      });
    }
    for (auto& t : threads) t.join();
  }

  replay_report r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.engines = engines.size();
  r.requests = trace.size();
  r.truncated = truncated;
  std::vector<std::uint64_t> latency;
  for (auto& e : engines) {
    r.blocks += e.blocks;
    r.hits.device += e.hits.device;
    r.hits.host += e.hits.host;
    r.hits.ssd += e.hits.ssd;
    r.hits.remote += e.hits.remote;
    r.computed += e.computed;
    if (e.errors > 0 && r.errors == 0) r.first_error = e.first_error;
    r.errors += e.errors;
    r.allocate_waits += e.allocate_waits;
    latency.insert(latency.end(), e.latency_ns.begin(), e.latency_ns.end());
    const auto s = e.mgr->stats();
    r.remote_lookups += s.remote_lookups;
    r.lookup_round_trips += s.lookup_round_trips;
    r.lookup_bytes += s.lookup_bytes;
    r.published += s.published;
    r.publish_missed += s.publish_missed;
    r.remote_evicted += s.remote_evicted;
    r.remote_errors += s.remote_errors;
    r.mover_failures += s.mover_failures;
    r.bytes_to_device += s.pool.tiers[manager::pool_type::device_index].bytes_in;
    r.bytes_to_host += s.pool.tiers[manager::pool_type::host_index].bytes_in;
    r.bytes_from_remote += s.remote_bytes_in;
    r.bytes_to_remote += s.remote_bytes_out;
  }
  r.lookup = summarize(latency);
  return r;
}

}  // namespace kvc_replay
