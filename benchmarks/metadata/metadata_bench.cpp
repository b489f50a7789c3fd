// kvc-metadata-bench: the study's metadata experiment. For each request of a trace, in trace
// order, find the longest cached prefix of its block keys, then insert its new keys (those past
// the prefix); time each request (lookup + insert) with steady_clock. The same keys in the same
// order go through:
//
//   radix        kvc::radix_tree in this process: match, then insert;
//   kvc-remote   kvc::remote_index<kvc::shm_transport> over a kvc-memnode: lookup(chain, 0), then
//                insert(chain, length, ...) with no KV data (metadata only); also with the exact
//                hint (what an engine's local tree knows) and once through the counting
//                transport for round trips and bytes; with --model-rtt, once more through the
//                paced transport (kvc/transport/paced.hpp): every batch completes a modelled NIC
//                round trip (and its bytes at --model-gbps) after it was rung, as over RDMA;
//   redis-*      Redis through hiredis on loopback, keys the 8-byte block keys, values a small
//                record standing in for the block's location: the lookup as one pipeline of
//                EXISTS, as a Lua script scanning server side with an early stop (EVALSHA), or as
//                one multi-key EXISTS (a count, which is the prefix because the cache is
//                prefix-closed); the inserts as one MSET.
//
// benchmarks/metadata/run.sh starts redis-server and kvc-memnode, runs this and stops them;
// benchmarks/metadata/README.md says what is measured and how to read it.
#include <hiredis/hiredis.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/percentile.hpp"
#include "common/server_support.hpp"
#include "kvc/index/remote_index.hpp"
#include "kvc/transport/counting.hpp"
#include "kvc/transport/paced.hpp"
#include "kvc/transport/shm.hpp"
#include "kvc/tree/radix_tree.hpp"
#include "trace/chain_keys.hpp"
#include "trace/mooncake_reader.hpp"

namespace {

using steady = std::chrono::steady_clock;

// ---- the workload ------------------------------------------------------------------------------

// Every request's chain of block keys, back to back, and what an infinite prefix cache does with
// them (computed independently of the systems, which must all agree with it).
struct workload {
  std::vector<kvc::hash64> keys;
  std::vector<std::size_t> offsets{0};  // request i: keys[offsets[i], offsets[i + 1])
  std::vector<std::size_t> prefix;      // request i's longest cached prefix when it arrives
  std::size_t empty_requests = 0;       // requests without blocks (left out)
  std::size_t unique_blocks = 0;
  std::size_t hit_blocks = 0;  // sum of prefix
  std::size_t max_chain = 0;

  [[nodiscard]] std::size_t requests() const noexcept { return offsets.size() - 1; }
  [[nodiscard]] std::span<const kvc::hash64> chain(std::size_t i) const noexcept {
    return std::span<const kvc::hash64>(keys).subspan(offsets[i], offsets[i + 1] - offsets[i]);
  }
};

kvc::result<workload> load(const std::string& path, std::size_t limit) {
  auto reader = kvc_trace::mooncake_reader::open(path, {});
  if (!reader) return std::move(reader).take_failure();
  workload w;
  std::vector<kvc::hash64> chain;
  std::unordered_set<std::uint64_t> seen;
  while (limit == 0 || w.requests() < limit) {
    auto req = reader->next();
    if (!req) return std::move(req).take_failure();
    if (!*req) break;
    if ((*req)->hash_ids.empty()) {
      ++w.empty_requests;
      continue;
    }
    kvc_trace::chain_keys((*req)->hash_ids, chain);
    std::size_t hit = 0;
    while (hit < chain.size() && seen.contains(chain[hit].value)) ++hit;
    for (std::size_t k = hit; k < chain.size(); ++k) seen.insert(chain[k].value);
    w.prefix.push_back(hit);
    w.hit_blocks += hit;
    w.keys.insert(w.keys.end(), chain.begin(), chain.end());
    w.offsets.push_back(w.keys.size());
    w.max_chain = std::max(w.max_chain, chain.size());
  }
  w.unique_blocks = seen.size();
  if (w.requests() == 0) return kvc::fail(kvc::errc::malformed_input, path + " holds no request");
  return w;
}

// The keys with every value XORed with `salt`: the same prefix structure under other keys, so
// that several runs can share one memory node without seeing each other's blocks.
std::vector<kvc::hash64> salted(const std::vector<kvc::hash64>& keys, std::uint64_t salt) {
  std::vector<kvc::hash64> out(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) out[i] = kvc::hash64{keys[i].value ^ salt};
  return out;
}

// ---- results -----------------------------------------------------------------------------------

struct run_result {
  std::string name;
  std::string how;
  std::vector<std::uint64_t> ns;         // per request, sorted after the run
  std::vector<std::uint64_t> in_order;   // the same in request order (for --samples)
  std::vector<unsigned> trips;           // round trips of each request, in request order
  std::vector<std::uint64_t> lookup_ns;  // the lookup part of each request, sorted after the run
  double seconds = 0;                    // the whole loop, timer reads included
  std::size_t hit_blocks = 0;
  std::size_t inserted_blocks = 0;
  std::size_t short_inserts = 0;  // inserts that stopped before the end of their chain
  std::string short_reason;
  std::optional<double> round_trips;  // per request
  std::optional<double> bytes;        // per request, both directions
  std::optional<double> ops;          // per request (kvc: one-sided operations)
  double faults = 0;  // this process's minor page faults per request (first touches of memory)

  // Nearest rank: the smallest sample with at least q of the samples at or below it.
  [[nodiscard]] static double quantile_us(const std::vector<std::uint64_t>& sorted, double q) {
    const auto permille = static_cast<unsigned>(std::lround(q * 1000.0));
    return static_cast<double>(kvc_examples::nearest_rank(sorted, permille)) / 1e3;
  }
  [[nodiscard]] double quantile_us(double q) const { return quantile_us(ns, q); }
  [[nodiscard]] double lookup_quantile_us(double q) const { return quantile_us(lookup_ns, q); }
  [[nodiscard]] double mean_us() const {
    double sum = 0;
    for (const std::uint64_t v : ns) sum += static_cast<double>(v);
    return ns.empty() ? 0 : sum / static_cast<double>(ns.size()) / 1e3;
  }
  [[nodiscard]] double per_second() const {
    return seconds > 0 ? static_cast<double>(ns.size()) / seconds : 0;
  }
};

std::uint64_t elapsed_ns(steady::time_point a, steady::time_point b) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
}

std::uint64_t minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_minflt);
}

run_result named(std::string name, std::string how) {
  run_result r;
  r.name = std::move(name);
  r.how = std::move(how);
  return r;
}

void finish(run_result& r, steady::time_point start, std::uint64_t faults_at_start) {
  r.seconds = std::chrono::duration<double>(steady::now() - start).count();
  r.in_order = r.ns;
  r.faults =
      static_cast<double>(minor_faults() - faults_at_start) / static_cast<double>(r.ns.size());
  std::sort(r.ns.begin(), r.ns.end());
  std::sort(r.lookup_ns.begin(), r.lookup_ns.end());
}

// ---- kvc's radix tree --------------------------------------------------------------------------

run_result run_radix(const workload& w) {
  run_result r = named("radix", "kvc::radix_tree: match, then insert (in process)");
  r.ns.reserve(w.requests());
  kvc::radix_tree<kvc::hash64, std::uint64_t> tree;
  const std::uint64_t faults = minor_faults();
  const auto start = steady::now();
  for (std::size_t i = 0; i < w.requests(); ++i) {
    const auto chain = w.chain(i);
    const auto t0 = steady::now();
    const std::size_t hit = tree.match(chain);
    r.lookup_ns.push_back(elapsed_ns(t0, steady::now()));
    const auto ins = tree.insert(chain, [](std::size_t k) { return std::uint64_t{k}; });
    const auto t1 = steady::now();
    r.ns.push_back(elapsed_ns(t0, t1));
    r.hit_blocks += hit;
    r.inserted_blocks += ins.inserted;
    r.trips.push_back(0);
  }
  finish(r, start, faults);
  r.round_trips = 0;
  return r;
}

// ---- kvc's remote index ------------------------------------------------------------------------

enum class hint_mode { none, exact };

// transport_counts has operator- only; the per-request deltas are summed here.
void add(kvc::transport_counts& sum, const kvc::transport_counts& d) noexcept {
  sum.round_trips += d.round_trips;
  for (std::size_t k = 0; k < 4; ++k) {
    sum.ops[k] += d.ops[k];
    sum.bytes[k] += d.bytes[k];
  }
  sum.failed_ops += d.failed_ops;
}

// Reads the node's whole region through the transport, so that its pages exist and are mapped
// in this process before the timed runs (a memory node that has served for a while).
template <class T>
kvc::result<void> prefault(T& transport, kvc::node_id node) {
  const std::uint64_t total = transport.region_bytes(node);
  std::vector<std::byte> bytes(std::size_t{1} << 20);
  auto reg = transport.register_memory(bytes);
  if (!reg) return std::move(reg).take_failure();
  for (std::uint64_t at = 0; at < total; at += bytes.size()) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), total - at));
    auto b = transport.new_batch();
    b.read(kvc::remote_ptr(node, at), reg->buffer().sub(0, n));
    b.ring();
    if (auto ok = b.wait(); !ok) return ok;
  }
  return {};
}

// One pass of the trace through a fresh remote_index client on `transport`. With a counting
// transport, also the round trips, operations and bytes per request (maintain()'s excluded).
template <class T>
kvc::result<run_result> run_remote(T& transport, kvc::node_id node, const workload& w,
                                   const std::vector<kvc::hash64>& keys, hint_mode hint,
                                   std::size_t max_ops, run_result r) {
  constexpr bool counted = requires { transport.snapshot(); };
  kvc::remote_index_config cfg;
  cfg.nodes = {node};
  cfg.max_ops_per_node = max_ops;
  auto ix = kvc::remote_index<T>::open(transport, cfg);
  if (!ix) return std::move(ix).take_failure();
  std::vector<kvc::block_info> infos(w.max_chain);  // no KV data: the metadata only
  r.ns.reserve(w.requests());
  std::uint64_t round_trips = 0;
  kvc::transport_counts counts;
  const std::uint64_t faults = minor_faults();
  const auto start = steady::now();
  for (std::size_t i = 0; i < w.requests(); ++i) {
    // Upkeep (maintain(): heartbeats, reclaim, the slab reserve) between requests, as an
    // engine's loop or shared_index's maintainer thread runs it: outside each request's
    // latency, inside the throughput (the run's whole time).
    if (auto ok = (*ix)->maintain(); !ok) return std::move(ok).take_failure();
    const auto chain =
        std::span<const kvc::hash64>(keys).subspan(w.offsets[i], w.offsets[i + 1] - w.offsets[i]);
    kvc::transport_counts before;
    if constexpr (counted) before = transport.snapshot();
    const auto t0 = steady::now();
    auto m = (*ix)->lookup(chain, hint == hint_mode::exact ? w.prefix[i] : 0);
    if (!m) return std::move(m).take_failure();
    r.lookup_ns.push_back(elapsed_ns(t0, steady::now()));
    std::optional<kvc::result<kvc::index_insert_result>> ins;
    if (m->length < chain.size()) {
      ins.emplace((*ix)->insert(
          chain, *m, std::span<const kvc::block_info>(infos).first(chain.size() - m->length)));
    }
    const auto t1 = steady::now();
    if constexpr (counted) add(counts, transport.snapshot() - before);
    r.ns.push_back(elapsed_ns(t0, t1));
    r.hit_blocks += m->length;
    round_trips += m->round_trips;
    r.trips.push_back(m->round_trips);
    if (ins) {
      if (!*ins) return std::move(*ins).take_failure();
      const kvc::index_insert_result& got = **ins;
      round_trips += got.round_trips;
      r.trips.back() += got.round_trips;
      r.inserted_blocks += got.published;
      if (got.length < chain.size()) {
        ++r.short_inserts;
        if (r.short_reason.empty()) {
          r.short_reason = "insert stop " + std::to_string(static_cast<int>(got.stop));
        }
      }
    }
  }
  finish(r, start, faults);
  const auto n = static_cast<double>(w.requests());
  r.round_trips = static_cast<double>(round_trips) / n;
  if constexpr (counted) {
    r.round_trips = static_cast<double>(counts.round_trips) / n;
    r.ops = static_cast<double>(counts.total_ops()) / n;
    r.bytes = static_cast<double>(counts.total_bytes()) / n;
  }
  return r;
}

// ---- Redis -------------------------------------------------------------------------------------

struct reply_deleter {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;

class redis_client {
 public:
  static kvc::result<redis_client> connect(const std::string& host, int port) {
    const timeval timeout{5, 0};
    redisContext* c = redisConnectWithTimeout(host.c_str(), port, timeout);
    const std::string where = host + ":" + std::to_string(port);
    if (c == nullptr) return kvc::fail(kvc::errc::io_error, "Redis at " + where + ": no memory");
    redis_client client(c);
    if (c->err != 0) {
      return kvc::fail(kvc::errc::io_error,
                       "cannot connect to Redis at " + where + ": " + c->errstr +
                           " (benchmarks/metadata/run.sh starts a redis-server)");
    }
    if (redisSetTimeout(c, timeout) != REDIS_OK) {
      return kvc::fail(kvc::errc::io_error, "Redis at " + where + ": cannot set a timeout");
    }
    return client;
  }

  // Sends argv as one command (binary-safe).
  void append(std::span<const char* const> argv, std::span<const std::size_t> lens) {
    redisAppendCommandArgv(c_.get(), static_cast<int>(argv.size()),
                           const_cast<const char**>(argv.data()), lens.data());
  }
  // The next reply; errors (connection, or a Redis error reply) as a failure.
  kvc::result<reply_ptr> get() {
    void* raw = nullptr;
    if (redisGetReply(c_.get(), &raw) != REDIS_OK) {
      return kvc::fail(kvc::errc::io_error, std::string("Redis: ") + c_->errstr);
    }
    reply_ptr r(static_cast<redisReply*>(raw));
    if (r->type == REDIS_REPLY_ERROR) {
      return kvc::fail(kvc::errc::protocol_error,
                       "Redis: " + std::string(r->str, static_cast<std::size_t>(r->len)));
    }
    return r;
  }
  kvc::result<reply_ptr> command(std::initializer_list<std::string_view> words) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const std::string_view w : words) {
      argv.push_back(w.data());
      lens.push_back(w.size());
    }
    append(argv, lens);
    return get();
  }
  // INFO field `name` as an integer (e.g. total_net_input_bytes).
  kvc::result<std::uint64_t> info(std::string_view section, std::string_view name) {
    auto r = command({"INFO", section});
    if (!r) return std::move(r).take_failure();
    const std::string_view text((*r)->str, static_cast<std::size_t>((*r)->len));
    const std::string key = std::string(name) + ":";
    const auto at = text.find(key);
    if (at == std::string_view::npos) {
      return kvc::fail(kvc::errc::protocol_error, "Redis INFO has no " + std::string(name));
    }
    return std::strtoull(text.data() + at + key.size(), nullptr, 10);
  }

 private:
  struct context_deleter {
    void operator()(redisContext* c) const noexcept { redisFree(c); }
  };
  explicit redis_client(redisContext* c) : c_(c) {}
  std::unique_ptr<redisContext, context_deleter> c_;
};

enum class redis_lookup { pipeline, lua, exists_count };

// The Lua lookup: EXISTS key by key, stopping at the first miss.
constexpr std::string_view lua_prefix = R"(local n = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then break end
  n = i
end
return n)";

kvc::result<run_result> run_redis(redis_client& redis, const workload& w, redis_lookup how,
                                  std::size_t value_bytes, run_result r) {
  if (auto ok = redis.command({"FLUSHALL"}); !ok) return std::move(ok).take_failure();
  std::string sha;
  if (how == redis_lookup::lua) {
    auto loaded = redis.command({"SCRIPT", "LOAD", lua_prefix});
    if (!loaded) return std::move(loaded).take_failure();
    sha.assign((*loaded)->str, static_cast<std::size_t>((*loaded)->len));
  }
  // Bytes on the wire from Redis's own counters; one INFO's share is measured and taken off.
  std::array<std::uint64_t, 2> net_before{};
  std::uint64_t info_cost = 0;
  for (int round = 0; round < 2; ++round) {
    auto in = redis.info("stats", "total_net_input_bytes");
    if (!in) return std::move(in).take_failure();
    auto out = redis.info("stats", "total_net_output_bytes");
    if (!out) return std::move(out).take_failure();
    if (round == 1) info_cost = *in + *out - net_before[0] - net_before[1];
    net_before = {*in, *out};
  }

  // Stand-in location records, one per key of the longest chain (the contents do not matter).
  std::vector<std::string> values(w.max_chain, std::string(value_bytes, 'v'));
  for (std::size_t k = 0; k < values.size(); ++k) {
    std::memcpy(values[k].data(), &k, std::min(value_bytes, sizeof k));
  }
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  argv.reserve(2 * w.max_chain + 3);
  lens.reserve(2 * w.max_chain + 3);
  auto key_arg = [&](const kvc::hash64& key) {
    argv.push_back(reinterpret_cast<const char*>(&key.value));
    lens.push_back(sizeof key.value);
  };
  auto word = [&](std::string_view s) {
    argv.push_back(s.data());
    lens.push_back(s.size());
  };
  const std::string exists = "EXISTS", evalsha = "EVALSHA", mset = "MSET";
  std::string count_text;
  std::uint64_t round_trips = 0;
  r.ns.reserve(w.requests());
  const std::uint64_t faults = minor_faults();
  const auto start = steady::now();
  for (std::size_t i = 0; i < w.requests(); ++i) {
    const auto chain = w.chain(i);
    const auto t0 = steady::now();
    std::size_t hit = 0;
    r.trips.push_back(1);
    if (how == redis_lookup::pipeline) {
      for (const kvc::hash64& key : chain) {
        argv.clear();
        lens.clear();
        word(exists);
        key_arg(key);
        redis.append(argv, lens);
      }
      bool run = true;
      for (std::size_t k = 0; k < chain.size(); ++k) {  // every reply is read
        auto got = redis.get();
        if (!got) return std::move(got).take_failure();
        run = run && (*got)->integer == 1;
        hit += run ? 1 : 0;
      }
    } else {
      argv.clear();
      lens.clear();
      if (how == redis_lookup::lua) {
        word(evalsha);
        word(sha);
        count_text = std::to_string(chain.size());
        word(count_text);
      } else {
        word(exists);
      }
      for (const kvc::hash64& key : chain) key_arg(key);
      redis.append(argv, lens);
      auto got = redis.get();
      if (!got) return std::move(got).take_failure();
      hit = static_cast<std::size_t>((*got)->integer);
    }
    r.lookup_ns.push_back(elapsed_ns(t0, steady::now()));
    ++round_trips;
    if (hit < chain.size()) {
      argv.clear();
      lens.clear();
      word(mset);
      for (std::size_t k = hit; k < chain.size(); ++k) {
        key_arg(chain[k]);
        word(values[k]);
      }
      redis.append(argv, lens);
      auto got = redis.get();
      if (!got) return std::move(got).take_failure();
      ++round_trips;
      ++r.trips.back();
      r.inserted_blocks += chain.size() - hit;
    }
    const auto t1 = steady::now();
    r.ns.push_back(elapsed_ns(t0, t1));
    r.hit_blocks += hit;
  }
  finish(r, start, faults);
  auto in = redis.info("stats", "total_net_input_bytes");
  if (!in) return std::move(in).take_failure();
  auto out = redis.info("stats", "total_net_output_bytes");
  if (!out) return std::move(out).take_failure();
  const auto n = static_cast<double>(w.requests());
  r.round_trips = static_cast<double>(round_trips) / n;
  r.bytes = static_cast<double>(*in + *out - net_before[0] - net_before[1] - info_cost) / n;
  return r;
}

// ---- output ------------------------------------------------------------------------------------

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// How often this machine takes the CPU away from a running thread, and for how long: a thread
// reads the clock in a loop for a while, and every gap between two reads longer than 5 us is a
// time it did not run (an interrupt, the scheduler, or on a virtual machine the host running
// something else, which the guest cannot see). A request lasting D is hit with a probability of
// about rate x D and then takes a gap longer: on a machine that loses the CPU often, that alone
// puts a p99 above twice a p50 once requests last long enough (docs/benchmarks.md).
struct interruptions {
  double seconds = 0;
  std::size_t count = 0;
  double median_us = 0, p90_us = 0, max_us = 0;
  double lost_share = 0;  // of the time spun
  [[nodiscard]] double per_second() const {
    return seconds > 0 ? static_cast<double>(count) / seconds : 0;
  }
};

interruptions probe_interruptions(std::chrono::milliseconds span) {
  std::vector<std::uint64_t> gaps;
  gaps.reserve(std::size_t{1} << 16);  // no allocation inside the loop, where it would make gaps
  const auto start = steady::now();
  auto prev = start;
  std::uint64_t lost = 0;
  for (;;) {
    const auto now = steady::now();
    const std::uint64_t gap = elapsed_ns(prev, now);
    if (gap > 5000) {
      gaps.push_back(gap);
      lost += gap;
    }
    prev = now;
    if (now - start >= span) break;
  }
  interruptions r;
  r.seconds = std::chrono::duration<double>(prev - start).count();
  r.count = gaps.size();
  std::sort(gaps.begin(), gaps.end());
  r.median_us = run_result::quantile_us(gaps, 0.5);
  r.p90_us = run_result::quantile_us(gaps, 0.9);
  r.max_us = gaps.empty() ? 0 : static_cast<double>(gaps.back()) / 1e3;
  r.lost_share = r.seconds > 0 ? static_cast<double>(lost) / 1e9 / r.seconds : 0;
  return r;
}

// The kvc row run through the paced transport (--model-rtt).
constexpr const char* modelled_name = "kvc-remote nic-model";

// Ratios of `of` against `base`: how many times lower its latencies and higher its throughput.
struct ratio {
  double p50, p99, throughput;
};
ratio compare(const run_result& of, const run_result& base) {
  return {base.quantile_us(0.5) / of.quantile_us(0.5),
          base.quantile_us(0.99) / of.quantile_us(0.99), of.per_second() / base.per_second()};
}

// Requests grouped by how many blocks they insert (the work an insert does grows with them):
// [lo, hi] inclusive; each system's times of the requests in the class, sorted.
struct insert_class {
  std::size_t lo, hi;
};
constexpr std::array<insert_class, 7> insert_classes{
    {{0, 0}, {1, 2}, {3, 4}, {5, 8}, {9, 16}, {17, 64}, {65, ~std::size_t{0}}}};

std::vector<std::vector<std::uint64_t>> by_inserted(const workload& w, const run_result& r) {
  std::vector<std::vector<std::uint64_t>> out(insert_classes.size());
  for (std::size_t i = 0; i < w.requests() && i < r.in_order.size(); ++i) {
    const std::size_t inserted = w.chain(i).size() - w.prefix[i];
    for (std::size_t c = 0; c < insert_classes.size(); ++c) {
      if (inserted >= insert_classes[c].lo && inserted <= insert_classes[c].hi) {
        out[c].push_back(r.in_order[i]);
        break;
      }
    }
  }
  for (auto& v : out) std::sort(v.begin(), v.end());
  return out;
}

std::string class_name(const insert_class& c) {
  if (c.lo == c.hi) return std::to_string(c.lo);
  if (c.hi == ~std::size_t{0}) return std::to_string(c.lo) + "+";
  return std::to_string(c.lo) + "-" + std::to_string(c.hi);
}

// The tail split by work: p50, p99 and their ratio per class of blocks inserted, for the
// systems named. A system whose p99/p50 is wide overall but narrow inside each class has a
// tail made of larger requests, not of variance.
void print_by_inserted(const workload& w, const std::vector<const run_result*>& shown) {
  std::printf("\nper request by blocks inserted (us: p50, p99, p99/p50)\n%-8s %8s", "blocks",
              "requests");
  std::vector<std::vector<std::vector<std::uint64_t>>> split;
  for (const run_result* r : shown) {
    std::printf(" | %-22s", r->name.c_str());
    split.push_back(by_inserted(w, *r));
  }
  std::printf("\n");
  for (std::size_t c = 0; c < insert_classes.size(); ++c) {
    const std::size_t n = split.empty() ? 0 : split[0][c].size();  // the same for every system
    if (n == 0) continue;
    std::printf("%-8s %8zu", class_name(insert_classes[c]).c_str(), n);
    for (const auto& per : split) {
      if (per[c].empty()) {  // a system that ran fewer requests (--limit is the same for all)
        std::printf(" | %6s %7s %7s", "-", "-", "-");
        continue;
      }
      const double p50 = run_result::quantile_us(per[c], 0.5);
      const double p99 = run_result::quantile_us(per[c], 0.99);
      std::printf(" | %6s %7s %6sx", fixed(p50, 2).c_str(), fixed(p99, 2).c_str(),
                  fixed(p99 / p50, 2).c_str());
    }
    std::printf("\n");
  }
}

void print_table(const workload& w, const std::string& trace, const std::vector<run_result>& runs,
                 const run_result* best_redis, const interruptions& cpu) {
  std::printf(
      "trace %s: %zu requests (%zu without blocks left out), %zu block keys, %zu unique,\n"
      "  %zu found by an infinite prefix cache (%.1f%%), longest chain %zu\n\n",
      trace.c_str(), w.requests(), w.empty_requests, w.keys.size(), w.unique_blocks, w.hit_blocks,
      100.0 * static_cast<double>(w.hit_blocks) / static_cast<double>(w.keys.size()), w.max_chain);
  std::printf(
      "this machine, probed for %.1f s before the runs: a spinning thread lost the CPU %.0f times "
      "a second\n  for %.1f us at the median (p90 %.1f, max %.1f us; %.2f%% of its time): a "
      "request of D us\n  is held up so about %.2f%% of the time per microsecond of D\n\n",
      cpu.seconds, cpu.per_second(), cpu.median_us, cpu.p90_us, cpu.max_us, 100.0 * cpu.lost_share,
      cpu.per_second() * 1e-6 * 100.0);
  std::printf("%-22s %-34s %10s | %s\n", "", "per request (lookup + insert), us", "",
              "per request");
  std::printf("%-22s %8s %8s %8s %8s %10s | %6s %6s %7s %6s\n", "system", "p50", "p99", "p999",
              "mean", "req/s", "RT", "ops", "bytes", "faults");
  auto opt = [](const std::optional<double>& v, int decimals) {
    return v ? fixed(*v, decimals) : std::string("-");
  };
  for (const run_result& r : runs) {
    std::printf("%-22s %8s %8s %8s %8s %10s | %6s %6s %7s %6s\n", r.name.c_str(),
                fixed(r.quantile_us(0.5), 2).c_str(), fixed(r.quantile_us(0.99), 2).c_str(),
                fixed(r.quantile_us(0.999), 2).c_str(), fixed(r.mean_us(), 2).c_str(),
                fixed(r.per_second(), 0).c_str(), opt(r.round_trips, 2).c_str(),
                opt(r.ops, 1).c_str(), opt(r.bytes, 0).c_str(), fixed(r.faults, 2).c_str());
  }
  std::printf("\n%-22s %8s %8s %8s %8s   (the lookup alone, us)\n", "system", "p50", "p99", "p999",
              "p99/p50");
  for (const run_result& r : runs) {
    std::printf(
        "%-22s %8s %8s %8s %8s\n", r.name.c_str(), fixed(r.lookup_quantile_us(0.5), 2).c_str(),
        fixed(r.lookup_quantile_us(0.99), 2).c_str(), fixed(r.lookup_quantile_us(0.999), 2).c_str(),
        fixed(r.lookup_quantile_us(0.99) / r.lookup_quantile_us(0.5), 2).c_str());
  }
  std::vector<const run_result*> split_shown;
  for (const run_result& r : runs) {
    if (r.name == "radix" || r.name == "kvc-remote" || r.name == modelled_name) {
      split_shown.push_back(&r);
    }
  }
  if (best_redis != nullptr) split_shown.push_back(best_redis);
  if (!split_shown.empty()) print_by_inserted(w, split_shown);
  std::printf("\n");
  for (const run_result& r : runs) std::printf("  %-20s %s\n", r.name.c_str(), r.how.c_str());
  bool mismatch = false;
  for (const run_result& r : runs) {
    if (r.hit_blocks != w.hit_blocks || r.short_inserts != 0) {
      mismatch = true;
      std::printf("  note: %s found %zu blocks (expected %zu), %zu inserts stopped short%s%s\n",
                  r.name.c_str(), r.hit_blocks, w.hit_blocks, r.short_inserts,
                  r.short_reason.empty() ? "" : ": ", r.short_reason.c_str());
    }
  }
  if (!mismatch) std::printf("  every system found the %zu cached blocks expected\n", w.hit_blocks);
  if (best_redis == nullptr) return;
  std::printf("\nagainst %s (the fastest Redis lookup here), times better:\n",
              best_redis->name.c_str());
  std::printf("%-22s %8s %8s %10s\n", "system", "p50", "p99", "req/s");
  const run_result* kvc_primary = nullptr;
  const run_result* kvc_modelled = nullptr;
  for (const run_result& r : runs) {
    if (r.name.starts_with("redis")) continue;
    const ratio x = compare(r, *best_redis);
    std::printf("%-22s %8s %8s %10s\n", r.name.c_str(), fixed(x.p50, 1).c_str(),
                fixed(x.p99, 1).c_str(), fixed(x.throughput, 1).c_str());
    if (r.name == "kvc-remote") kvc_primary = &r;
    if (r.name == modelled_name) kvc_modelled = &r;
  }
  auto goal = [&](const run_result& r, const char* label) {
    const ratio x = compare(r, *best_redis);
    const double spread = r.quantile_us(0.99) / r.quantile_us(0.5);
    const double lookup_spread = r.lookup_quantile_us(0.99) / r.lookup_quantile_us(0.5);
    auto verdict = [](bool ok) { return ok ? "met" : "NOT met"; };
    std::printf(
        "\ngoal (issue 7), %s: %s >= 10x Redis on p50, p99 and req/s: %s "
        "(%.1fx, %.1fx, %.1fx);\n  its p99 within 2x its p50: %s per request (%.2fx), %s for the "
        "lookup alone (%.2fx)\n",
        label, r.name.c_str(), verdict(x.p50 >= 10 && x.p99 >= 10 && x.throughput >= 10), x.p50,
        x.p99, x.throughput, verdict(spread <= 2), spread, verdict(lookup_spread <= 2),
        lookup_spread);
  };
  if (kvc_primary != nullptr) goal(*kvc_primary, "measured on shm");
  if (kvc_modelled != nullptr) {
    goal(*kvc_modelled, "a model: shm plus a NIC's round trip per batch, not a measurement");
  }
}

nlohmann::json to_json(const workload& w, const std::string& trace,
                       const std::vector<run_result>& runs, const run_result* best_redis,
                       const interruptions& cpu) {
  nlohmann::json j;
  j["trace"] = {{"path", trace},
                {"requests", w.requests()},
                {"empty_requests_left_out", w.empty_requests},
                {"block_keys", w.keys.size()},
                {"unique_blocks", w.unique_blocks},
                {"prefix_hit_blocks", w.hit_blocks},
                {"longest_chain", w.max_chain}};
  j["machine_interruptions"] = {{"probed_s", cpu.seconds},    {"per_second", cpu.per_second()},
                                {"median_us", cpu.median_us}, {"p90_us", cpu.p90_us},
                                {"max_us", cpu.max_us},       {"lost_share", cpu.lost_share}};
  j["systems"] = nlohmann::json::array();
  auto opt = [](const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json();
  };
  for (const run_result& r : runs) {
    j["systems"].push_back({{"name", r.name},
                            {"how", r.how},
                            {"p50_us", r.quantile_us(0.5)},
                            {"p99_us", r.quantile_us(0.99)},
                            {"p999_us", r.quantile_us(0.999)},
                            {"mean_us", r.mean_us()},
                            {"lookup_p50_us", r.lookup_quantile_us(0.5)},
                            {"lookup_p99_us", r.lookup_quantile_us(0.99)},
                            {"lookup_p999_us", r.lookup_quantile_us(0.999)},
                            {"max_us", r.ns.empty() ? 0.0 : static_cast<double>(r.ns.back()) / 1e3},
                            {"requests_per_s", r.per_second()},
                            {"seconds", r.seconds},
                            {"round_trips_per_request", opt(r.round_trips)},
                            {"ops_per_request", opt(r.ops)},
                            {"bytes_per_request", opt(r.bytes)},
                            {"minor_faults_per_request", r.faults},
                            {"hit_blocks", r.hit_blocks},
                            {"inserted_blocks", r.inserted_blocks},
                            {"short_inserts", r.short_inserts}});
    auto& classes = j["systems"].back()["by_inserted_blocks"] = nlohmann::json::array();
    const auto split = by_inserted(w, r);
    for (std::size_t c = 0; c < insert_classes.size(); ++c) {
      if (split[c].empty()) continue;
      classes.push_back({{"blocks", class_name(insert_classes[c])},
                         {"requests", split[c].size()},
                         {"p50_us", run_result::quantile_us(split[c], 0.5)},
                         {"p99_us", run_result::quantile_us(split[c], 0.99)}});
    }
  }
  if (best_redis != nullptr) {
    j["baseline"] = best_redis->name;
    j["ratios"] = nlohmann::json::object();
    for (const run_result& r : runs) {
      if (r.name.starts_with("redis")) continue;
      const ratio x = compare(r, *best_redis);
      j["ratios"][r.name] = {{"p50", x.p50}, {"p99", x.p99}, {"throughput", x.throughput}};
    }
  }
  return j;
}

// One line per request and system: what the percentiles summarise, for plots.
bool write_samples(const std::string& path, const workload& w,
                   const std::vector<run_result>& runs) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return false;
  std::fprintf(f, "system,request,blocks,cached_prefix,round_trips,ns\n");
  for (const run_result& r : runs) {
    for (std::size_t i = 0; i < r.in_order.size(); ++i) {
      std::fprintf(f, "%s,%zu,%zu,%zu,%u,%llu\n", r.name.c_str(), i, w.chain(i).size(), w.prefix[i],
                   r.trips[i], static_cast<unsigned long long>(r.in_order[i]));
    }
  }
  return std::fclose(f) == 0;
}

int die(const std::string& message) {
  std::fprintf(stderr, "kvc-metadata-bench: %s\n", message.c_str());
  return 1;
}

void progress(const char* what) {
  std::fprintf(stderr, "kvc-metadata-bench: %s\n", what);
  std::fflush(stderr);
}

// kvc-remote runs on one memory node under differently salted keys; the region must hold them all
// (no hint, exact hint, counted, and the modelled NIC).
constexpr std::uint64_t remote_runs = 4;
constexpr std::uint64_t plan_block_bytes = 64;  // the smallest data slot: metadata only

}  // namespace

int main(int argc, char** argv) {
  std::string trace;
  std::string redis_at = "127.0.0.1:6379";
  std::string memnode_at;
  std::string secret;
  std::vector<std::string> systems{"radix", "kvc", "redis"};
  std::size_t limit = 0;
  std::size_t value_bytes = 24;
  std::size_t max_ops = 0;  // the transport's limit
  bool json = false;
  bool plan = false;
  bool cold = false;
  double model_rtt_us = 0;
  double model_gbps = 100;
  std::string samples;
  CLI::App app{
      "kvc-metadata-bench: a trace's metadata operations (longest cached prefix, then "
      "insert) against Redis, kvc's remote index and kvc's radix tree"};
  app.add_option("trace", trace, "Mooncake-format trace (JSON lines)")->required();
  app.add_option("--redis", redis_at, "redis-server to use (host:port)")->capture_default_str();
  app.add_option("--memnode", memnode_at, "kvc-memnode to use (host:port; shm)");
  app.add_option("--secret", secret, "the memory node's shared secret (default: $KVC_SECRET)");
  app.add_option("--systems", systems, "which to run: radix, kvc, redis")
      ->delimiter(',')
      ->check(CLI::IsMember({"radix", "kvc", "redis"}))
      ->capture_default_str();
  app.add_option("--limit", limit, "only the first N requests (0: all)")->capture_default_str();
  app.add_option("--value-bytes", value_bytes, "bytes of the record stored per key in Redis")
      ->check(CLI::Range(std::size_t{1}, std::size_t{4096}))
      ->capture_default_str();
  app.add_flag("--cold", cold,
               "start the kvc runs on the fresh node; by default its region is read once first, "
               "so that its pages exist and are mapped, as in a node that has served a while");
  app.add_option("--samples", samples,
                 "write every request's time to this CSV (system, request, blocks, cached prefix, "
                 "round trips, ns)");
  app.add_flag("--json", json, "print JSON instead of the table");
  app.add_option("--max-ops", max_ops,
                 "kvc: index operations per node in one batch (remote_index_config::"
                 "max_ops_per_node; 0: what the transport takes, 65,536 on shm; 256 is a verbs "
                 "queue pair's default)")
      ->check(CLI::Validator(
          [](const std::string& v) -> std::string {
            std::size_t n = 0;
            const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            const bool number = ec == std::errc{} && end == v.data() + v.size();
            return number && (n == 0 || (n >= 72 && n <= 65536)) ? "" : "0, or 72 to 65536";
          },
          "0|72..65536"))
      ->capture_default_str();
  app.add_option("--model-rtt", model_rtt_us,
                 "kvc: also run through the paced transport, each batch completing this many "
                 "microseconds (a NIC's round trip) plus its bytes at --model-gbps after it was "
                 "rung: a model of RDMA on shm (0: not run)")
      ->check(CLI::Range(0.0, 1000.0))
      ->take_last()  // run.sh passes one; a second on its command line wins
      ->capture_default_str();
  app.add_option("--model-gbps", model_gbps,
                 "kvc: the modelled NIC's bandwidth per memory node, Gbit/s (with --model-rtt)")
      ->check(CLI::Range(1.0, 10000.0))
      ->capture_default_str();
  app.add_flag("--plan", plan,
               "print the kvc-memnode --size and --block-bytes this trace needs, and exit");
  CLI11_PARSE(app, argc, argv);
  auto wants = [&](std::string_view s) {
    return std::find(systems.begin(), systems.end(), s) != systems.end();
  };

  auto loaded = load(trace, limit);
  if (!loaded) return die(loaded.message());
  const workload& w = *loaded;

  if (plan) {
    // Room for every run's blocks four times over (buckets far from full), found by trying.
    const std::uint64_t need = 4 * remote_runs * w.unique_blocks + 4096;
    for (std::uint64_t bytes = need * 256 + (std::uint64_t{4} << 20);; bytes += bytes / 8) {
      kvc::region_header h{};
      h.region_bytes = bytes;
      h.data_offset = 4096;
      auto g = kvc::index_layout::geometry::fit(bytes, h.data_offset, plan_block_bytes, 64);
      if (g && g->slabs() >= need) {
        std::printf("--size %llu --block-bytes %llu\n", static_cast<unsigned long long>(bytes),
                    static_cast<unsigned long long>(plan_block_bytes));
        return 0;
      }
    }
  }

  progress("probing how often this machine interrupts a running thread (1 s)");
  const interruptions cpu = probe_interruptions(std::chrono::seconds(1));
  std::vector<run_result> runs;
  if (wants("radix")) {
    progress("radix tree");
    runs.push_back(run_radix(w));
  }

  if (wants("kvc")) {
    if (memnode_at.empty())
      return die("kvc needs --memnode host:port (or leave it out of --systems)");
    const auto at = kvc_examples::parse_endpoint(memnode_at);
    if (!at) return die("--memnode " + memnode_at + " is not host:port");
    if (secret.empty()) {
      if (const char* env = std::getenv("KVC_SECRET")) secret = env;
    }
    if (secret.empty()) return die("the memory node's secret is needed: --secret or KVC_SECRET");
    // A connection of the row's own to the memory node, whose region it reads once first
    // (unless --cold), so that its pages are mapped in this process.
    auto connect_own = [&]() -> kvc::result<std::pair<kvc::shm_transport, kvc::node_id>> {
      kvc::shm_transport t;
      auto node = t.connect(at->host, at->port, secret);
      if (!node) {
        return kvc::fail(node.error(),
                         "cannot attach the memory node at " + memnode_at + ": " + node.message());
      }
      if (!cold) {
        if (auto ok = prefault(t, *node); !ok) {
          return kvc::fail(ok.error(), "reading the memory node's region: " + ok.message());
        }
      }
      return std::pair{std::move(t), *node};
    };
    // One kvc row: the trace's keys XORed with `salt` (0: as they are), through `transport`.
    auto row = [&](auto& transport, kvc::node_id node, std::uint64_t salt, hint_mode hint,
                   run_result named_row) -> kvc::result<void> {
      const std::string name = named_row.name;
      progress(name.c_str());
      auto r = run_remote(transport, node, w, salt == 0 ? w.keys : salted(w.keys, salt), hint,
                          max_ops, std::move(named_row));
      if (!r) return kvc::fail(r.error(), name + ": " + r.message());
      runs.push_back(std::move(*r));
      return {};
    };
    if (!cold) {
      progress(
          "reading the memory node's region once per row (its pages in place; --cold skips "
          "this)");
    }
    auto plain = connect_own();
    if (!plain) return die(plain.message());
    if (auto ok = row(plain->first, plain->second, 0, hint_mode::none,
                      named("kvc-remote",
                            "kvc::remote_index<shm_transport> over kvc-memnode: lookup (hint 0), "
                            "then insert"));
        !ok) {
      return die(ok.message());
    }
    if (auto ok = row(plain->first, plain->second, 0x9e3779b97f4a7c15u, hint_mode::exact,
                      named("kvc-remote hint",
                            "the same with the exact hint (what one engine's local tree knows); "
                            "other keys on the same node"));
        !ok) {
      return die(ok.message());
    }
    auto own = connect_own();
    if (!own) return die(own.message());
    kvc::counting<kvc::shm_transport> counting(std::move(own->first));
    if (auto ok = row(counting, own->second, 0xc2b2ae3d27d4eb4fu, hint_mode::none,
                      named("kvc-remote counted",
                            "hint 0 through the counting transport (for RT, ops and bytes; its "
                            "times include the counting)"));
        !ok) {
      return die(ok.message());
    }
    if (model_rtt_us > 0) {
      auto under = connect_own();
      if (!under) return die(under.message());
      kvc::pace_config model;
      model.round_trip = std::chrono::nanoseconds(std::llround(model_rtt_us * 1000.0));
      model.gbit_per_s = model_gbps;
      kvc::paced<kvc::shm_transport> nic(std::move(under->first), model);
      if (auto ok =
              row(nic, under->second, 0x165667b19e3779f9u, hint_mode::none,
                  named(modelled_name, "hint 0, every batch completing " + fixed(model_rtt_us, 2) +
                                           " us plus its bytes at " + fixed(model_gbps, 0) +
                                           " Gbit/s after it was rung (a model of a NIC on "
                                           "shm)"));
          !ok) {
        return die(ok.message());
      }
    }
  }

  const run_result* best_redis = nullptr;
  if (wants("redis")) {
    const auto at = kvc_examples::parse_endpoint(redis_at);
    if (!at) return die("--redis " + redis_at + " is not host:port");
    auto redis = redis_client::connect(at->host, at->port);
    if (!redis) return die(redis.message());
    struct variant {
      redis_lookup how;
      const char* name;
      const char* text;
    };
    const variant variants[] = {
        {redis_lookup::pipeline, "redis-pipeline",
         "one pipeline of EXISTS per key (1 round trip), leading run; then MSET of the new keys"},
        {redis_lookup::lua, "redis-lua",
         "EVALSHA of a Lua scan stopping at the first miss; then MSET of the new keys"},
        {redis_lookup::exists_count, "redis-exists",
         "one EXISTS of every key (a count: the prefix, as the cache is prefix-closed); then MSET"},
    };
    for (const variant& v : variants) {
      progress(v.name);
      auto r = run_redis(*redis, w, v.how, value_bytes, named(v.name, v.text));
      if (!r) return die(std::string(v.name) + ": " + r.message());
      runs.push_back(std::move(*r));
    }
    if (auto ok = redis->command({"FLUSHALL"}); !ok) return die(ok.message());
    for (const run_result& r : runs) {
      if (!r.name.starts_with("redis")) continue;
      if (best_redis == nullptr || r.per_second() > best_redis->per_second()) best_redis = &r;
    }
  }

  if (!samples.empty() && !write_samples(samples, w, runs)) return die("cannot write " + samples);
  if (json) {
    std::printf("%s\n", to_json(w, trace, runs, best_redis, cpu).dump(2).c_str());
  } else {
    print_table(w, trace, runs, best_redis, cpu);
  }
  return 0;
}
