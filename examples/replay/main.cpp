// kvc-replay: the study's experiment on any Mooncake-format trace (JSON lines; see
// docs/design/trace.md). First the trace itself: how much of it repeats, how much of that a
// prefix cache can serve, reuse distances, the hottest blocks, the prefix tree's shape. Then the
// trace replayed through real cache managers, one per engine instance, sharing memory nodes
// (kvc-memnode processes on shared memory): hit ratio per tier for each eviction policy and
// capacity of the sweep, round trips and bytes per lookup, lookup latency p50/p99/p999, bytes
// moved between tiers. A readable table, or --json; --plot writes SVG charts.
//
//   kvc-replay trace.jsonl                                  # analysis, then the default sweep
//   kvc-replay trace.jsonl --capacity 1024,4096 --policy lru,s3fifo --engines 4 --plot out/r
//   kvc-replay trace.jsonl --memnode 127.0.0.1:7300 --capacity 2048   # a running memory node
//   kvc-replay trace.jsonl --analysis-only --json
//
// Each point of a sweep starts a fresh memory node (kvc-memnode, found beside this program or
// in the build tree), so that no run finds another's blocks; with --memnode the one point runs
// against that node as it is.
// Exit status: 0; 1 for an unreadable trace, a malformed line (unless --skip-malformed), invalid
// options, a memory node that cannot be started or reached, or requests that failed.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/cli_checks.hpp"
#include "common/memnode_process.hpp"
#ifdef KVC_REPLAY_VERBS
#include "kvc/verbs/transport.hpp"
#endif
#include "common/server_support.hpp"
#include "replay/replayer.hpp"
#include "replay/svg_plot.hpp"
#include "trace/analysis.hpp"
#include "trace/chain_keys.hpp"
#include "trace/mooncake_reader.hpp"

namespace {

void print_analysis(const std::string& path, const kvc_trace::trace_summary& s,
                    const kvc_trace::read_stats& rs) {
  const auto pct = [](double v) { return 100.0 * v; };
  const auto share = [](std::size_t a, std::size_t b) {
    return b == 0 ? 0.0 : 100.0 * static_cast<double>(a) / static_cast<double>(b);
  };
  std::printf("trace %s\n", path.c_str());
  std::printf("  requests              %zu (%zu lines, %zu malformed skipped)\n", s.requests,
              rs.lines, rs.skipped);
  for (const auto& e : rs.first_errors) std::printf("    skipped: %s\n", e.c_str());
  std::printf("  time span             %.1f s\n",
              static_cast<double>(s.last_ms - s.first_ms) / 1000.0);
  std::printf("  tokens in / out       %llu / %llu (mean input %.0f)\n",
              static_cast<unsigned long long>(s.input_tokens),
              static_cast<unsigned long long>(s.output_tokens),
              s.requests == 0
                  ? 0.0
                  : static_cast<double>(s.input_tokens) / static_cast<double>(s.requests));
  std::printf("  block references      %zu, unique blocks %zu\n", s.block_refs, s.unique_blocks);
  std::printf("  infinite-cache hits   %.2f%% of block references (%zu)\n", pct(s.hit_ratio()),
              s.hits);
  std::printf(
      "  requests over 50%%     %.2f%% of requests have more than half their blocks "
      "cached\n",
      share(s.requests_over_half, s.requests));
  std::printf(
      "  sequential hits       %.2f%% of hits lie in the request's leading run "
      "(non-sequential: %zu)\n",
      pct(s.sequential_share()), s.hits - s.sequential_hits);
  std::printf("  reuse distance        p50/p90/p99: %llu/%llu/%llu requests, %.1f/%.1f/%.1f s\n",
              static_cast<unsigned long long>(s.reuse_requests[0]),
              static_cast<unsigned long long>(s.reuse_requests[1]),
              static_cast<unsigned long long>(s.reuse_requests[2]),
              static_cast<double>(s.reuse_ms[0]) / 1000.0,
              static_cast<double>(s.reuse_ms[1]) / 1000.0,
              static_cast<double>(s.reuse_ms[2]) / 1000.0);
  std::printf(
      "  prefix tree           %zu roots, %zu leaves, depth up to %zu, %.2f children per "
      "parent, %zu parent mismatches\n",
      s.roots, s.leaves, s.max_depth, s.mean_children, s.parent_mismatches);
  std::printf("  hottest blocks        ");
  for (const auto& [id, refs] : s.hottest) {
    std::printf("%llu (%zu)  ", static_cast<unsigned long long>(id), refs);
  }
  std::printf("\n");
}

nlohmann::json analysis_json(const kvc_trace::trace_summary& s, const kvc_trace::read_stats& rs) {
  nlohmann::json hottest = nlohmann::json::array();
  for (const auto& [id, refs] : s.hottest) hottest.push_back({{"id", id}, {"references", refs}});
  return {{"requests", s.requests},
          {"lines", rs.lines},
          {"skipped", rs.skipped},
          {"skipped_errors", rs.first_errors},
          {"span_ms", s.last_ms - s.first_ms},
          {"input_tokens", s.input_tokens},
          {"output_tokens", s.output_tokens},
          {"block_references", s.block_refs},
          {"unique_blocks", s.unique_blocks},
          {"hits", s.hits},
          {"hit_ratio", s.hit_ratio()},
          {"sequential_hits", s.sequential_hits},
          {"requests_over_half", s.requests_over_half},
          {"reuse_requests_p50_p90_p99", s.reuse_requests},
          {"reuse_ms_p50_p90_p99", s.reuse_ms},
          {"hottest", hottest},
          {"tree",
           {{"roots", s.roots},
            {"leaves", s.leaves},
            {"max_depth", s.max_depth},
            {"mean_children", s.mean_children},
            {"parent_mismatches", s.parent_mismatches}}}};
}

// One point of the sweep and what it measured.
struct run {
  std::string policy;
  std::size_t capacity = 0;  // device blocks per engine
  kvc_replay::replay_report report;
};

nlohmann::json run_json(const run& r) {
  const auto& p = r.report;
  const auto per_lookup = [&](std::uint64_t v) {
    return p.remote_lookups == 0 ? 0.0
                                 : static_cast<double>(v) / static_cast<double>(p.remote_lookups);
  };
  return {
      {"policy", r.policy},
      {"device_blocks", r.capacity},
      {"requests", p.requests},
      {"blocks", p.blocks},
      {"hit_ratio", p.hit_ratio()},
      {"hits",
       {{"device", p.hits.device},
        {"host", p.hits.host},
        {"ssd", p.hits.ssd},
        {"remote", p.hits.remote}}},
      {"computed", p.computed},
      {"truncated_requests", p.truncated},
      {"errors", p.errors},
      {"allocate_waits", p.allocate_waits},
      {"remote_lookups", p.remote_lookups},
      {"round_trips_per_lookup", per_lookup(p.lookup_round_trips)},
      {"bytes_per_lookup", per_lookup(p.lookup_bytes)},
      {"lookup_us",
       {{"p50", p.lookup.p50_us},
        {"p99", p.lookup.p99_us},
        {"p999", p.lookup.p999_us},
        {"max", p.lookup.max_us}}},
      {"bytes",
       {{"to_device", p.bytes_to_device},
        {"to_host", p.bytes_to_host},
        {"from_remote", p.bytes_from_remote},
        {"to_remote", p.bytes_to_remote}}},
      {"published", p.published},
      {"publish_missed", p.publish_missed},
      {"remote_evicted", p.remote_evicted},
      {"remote_errors", p.remote_errors},
      {"mover_failures", p.mover_failures},
      {"seconds", p.seconds},
      {"requests_per_second", p.seconds > 0 ? static_cast<double>(p.requests) / p.seconds : 0.0}};
}

void print_runs(const std::vector<run>& runs) {
  std::printf("\n%-8s %8s %7s %7s %7s %7s %7s %7s %8s %8s %8s %8s %9s %9s %8s\n", "policy",
              "device", "hit%", "device%", "host%", "remote%", "RT/lkp", "B/lkp", "p50 us",
              "p99 us", "p999 us", "MB>dev", "MB<remote", "MB>remote", "req/s");
  for (const auto& r : runs) {
    const auto& p = r.report;
    const auto pct = [&](std::uint64_t n) { return 100.0 * p.ratio(n); };
    const double lookups = std::max<double>(1.0, static_cast<double>(p.remote_lookups));
    std::printf(
        "%-8s %8zu %7.2f %7.2f %7.2f %7.2f %7.2f %7.0f %8.1f %8.1f %8.1f %8.1f %9.1f %9.1f "
        "%8.0f\n",
        r.policy.c_str(), r.capacity, 100.0 * p.hit_ratio(), pct(p.hits.device), pct(p.hits.host),
        pct(p.hits.remote), static_cast<double>(p.lookup_round_trips) / lookups,
        static_cast<double>(p.lookup_bytes) / lookups, p.lookup.p50_us, p.lookup.p99_us,
        p.lookup.p999_us, static_cast<double>(p.bytes_to_device) / 1e6,
        static_cast<double>(p.bytes_from_remote) / 1e6,
        static_cast<double>(p.bytes_to_remote) / 1e6,
        p.seconds > 0 ? static_cast<double>(p.requests) / p.seconds : 0.0);
  }
  for (const auto& r : runs) {
    if (r.report.truncated == 0) continue;
    std::printf(
        "%s %zu: %zu requests longer than the device were served cut to its size (their hit "
        "ratio counts the blocks served)\n",
        r.policy.c_str(), r.capacity, r.report.truncated);
  }
  for (const auto& r : runs) {
    if (r.report.publish_missed == 0) continue;
    std::printf("%s %zu: %llu blocks not published: no local copy left to send (publish_missed)\n",
                r.policy.c_str(), r.capacity,
                static_cast<unsigned long long>(r.report.publish_missed));
  }
  for (const auto& r : runs) {
    if (r.report.mover_failures == 0) continue;
    std::printf(
        "%s %zu: %llu publishes or remote loads given up: out of memory "
        "(mover_failures)\n",
        r.policy.c_str(), r.capacity, static_cast<unsigned long long>(r.report.mover_failures));
  }
}

bool write_plots(const std::string& prefix, const std::vector<run>& runs, bool remote) {
  kvc_replay::chart hit{.title = remote ? "Block hit ratio (local tiers + memory nodes)"
                                        : "Block hit ratio (local tiers)",
                        .x_label = "device blocks per engine",
                        .y_label = "hit ratio (%)",
                        .log_x = true,
                        .lines = {}};
  kvc_replay::chart cdf{.title = "Lookup latency (match) CDF",
                        .x_label = "microseconds",
                        .y_label = "percentile",
                        .log_x = true,
                        .lines = {}};
  for (const auto& r : runs) {
    auto it = std::find_if(hit.lines.begin(), hit.lines.end(),
                           [&](const auto& s) { return s.name == r.policy; });
    if (it == hit.lines.end()) it = hit.lines.insert(hit.lines.end(), {r.policy, {}});
    it->points.emplace_back(static_cast<double>(r.capacity), 100.0 * r.report.hit_ratio());
    if (remote) {
      const std::string local = r.policy + " (local)";
      auto lt = std::find_if(hit.lines.begin(), hit.lines.end(),
                             [&](const auto& s) { return s.name == local; });
      if (lt == hit.lines.end()) lt = hit.lines.insert(hit.lines.end(), {local, {}});
      lt->points.emplace_back(
          static_cast<double>(r.capacity),
          100.0 * (r.report.hit_ratio() - r.report.ratio(r.report.hits.remote)));
    }
    kvc_replay::series s{r.policy + " " + std::to_string(r.capacity), {}};
    const auto& c = r.report.lookup.cdf_us;
    for (std::size_t p = 0; p < c.size(); ++p) {
      s.points.emplace_back(std::max(c[p], 0.001), static_cast<double>(p));
    }
    cdf.lines.push_back(std::move(s));
  }
  std::ofstream a(prefix + "-hit-ratio.svg"), b(prefix + "-latency-cdf.svg");
  a << kvc_replay::to_svg(hit);
  b << kvc_replay::to_svg(cdf);
  return static_cast<bool>(a) && static_cast<bool>(b);
}

// How many distinct block keys (chain_keys.hpp) the trace's requests name.
std::size_t distinct_keys(const std::vector<kvc_trace::trace_request>& trace) {
  std::unordered_set<std::uint64_t> keys;
  std::vector<kvc::hash64> chain;
  for (const auto& r : trace) {
    kvc_trace::chain_keys(r.hash_ids, chain);
    for (const auto& k : chain) keys.insert(k.value);
  }
  return keys.size();
}

// "1024,4096" -> {1024, 4096}; nullopt when an item is not a positive integer.
std::optional<std::vector<std::size_t>> parse_counts(const std::vector<std::string>& items) {
  std::vector<std::size_t> out;
  for (const auto& s : items) {
    std::size_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || v == 0) return std::nullopt;
    out.push_back(v);
  }
  return out;
}

// A progress bar on standard error, redrawn at most every 100 ms.
class progress_bar {
 public:
  progress_bar(std::string what, std::size_t total) : what_(std::move(what)), total_(total) {}
  void update(std::size_t done) {
    const auto now = std::chrono::steady_clock::now();
    // The last update always draws (and ends the line); others skip when another draws.
    std::unique_lock lock(mutex_, std::defer_lock);
    if (done >= total_) {
      lock.lock();
    } else if (!lock.try_lock() || now - last_ < std::chrono::milliseconds(100)) {
      return;
    }
    last_ = now;
    const int width = 30;
    const int filled = total_ == 0 ? width : static_cast<int>(width * done / total_);
    std::fprintf(stderr, "\r%-24s [%s%s] %3zu%% %zu/%zu", what_.c_str(),
                 std::string(static_cast<std::size_t>(filled), '#').c_str(),
                 std::string(static_cast<std::size_t>(width - filled), '.').c_str(),
                 total_ == 0 ? 100 : 100 * done / total_, done, total_);
    if (done >= total_) std::fprintf(stderr, "\n");
  }

 private:
  std::string what_;
  std::size_t total_;
  std::mutex mutex_;
  std::chrono::steady_clock::time_point last_{};
};

// Where a run's memory node comes from: started for the run, or running at `memnode`.
struct node_plan {
  std::string transport = "shm";  // or verbs
  std::string device;             // verbs: the RDMA device ("" = the first)
  int gid_index = -1;
  std::string memnode;  // host:port of a running node; empty: start one
  std::string secret;   // for a running node
  std::string binary;   // kvc-memnode
  std::size_t region_bytes = 0;
};

template <class T>
struct attached {
  std::unique_ptr<T> transport;
  kvc::node_id node = 0;
};

// One run against a memory node reached through T: a node of its own (started, then stopped) or
// the running one, attached by `attach(host, port, secret)`.
template <kvc::Transport T, class Attach>
kvc::result<kvc_replay::replay_report> replay_point(
    const std::vector<kvc_trace::trace_request>& trace, const kvc_replay::replay_config& cfg,
    const node_plan& plan, Attach&& attach) {
  std::optional<kvc_examples::memnode_process> node;
  std::string host = "127.0.0.1", key = plan.secret;
  std::uint16_t port = 0;
  if (plan.memnode.empty()) {
    auto o =
        kvc_examples::memnode_process::options::of(plan.binary, plan.region_bytes, cfg.block_bytes);
    if (plan.transport != "shm") {
      o.extra_args = {"--transport", plan.transport, "--gid-index", std::to_string(plan.gid_index)};
      if (!plan.device.empty()) o.extra_args.insert(o.extra_args.end(), {"--device", plan.device});
    }
    auto n = kvc_examples::memnode_process::start(o);
    if (!n) return std::move(n).take_failure();
    node.emplace(std::move(*n));
    port = node->port();
    key = node->secret();
  } else {
    auto hp = kvc_examples::parse_endpoint(plan.memnode);
    if (!hp)
      return kvc::fail(kvc::errc::invalid_config,
                       "--memnode " + plan.memnode + " is not host:port");
    host = hp->host;
    port = hp->port;
  }
  auto a = attach(host, port, key);
  if (!a) {
    return kvc::fail(a.error(),
                     "memory node " + host + ":" + std::to_string(port) + ": " + a.message());
  }
  auto r = kvc_replay::replay<T>(trace, cfg, {a->transport.get(), {a->node}});
  a->transport.reset();  // its connections end before the node stops
  if (node) {
    if (auto ok = node->stop(); !ok) return std::move(ok).take_failure();
  }
  return r;
}

int die(const std::string& message) {
  std::fprintf(stderr, "kvc-replay: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  kvc_trace::read_options opts;
  bool json = false, analysis_only = false, no_remote = false, sequential = false;
  kvc_replay::replay_config cfg;
  node_plan plan;
  std::vector<std::string> capacities, policies = {"lru", "s3fifo"};
  double host_factor = 2;
  std::string block_bytes = "1K", place_remote = "write_through", route = "round_robin";
  std::string remote_blocks = "auto", memnode, secret, memnode_bin, plot;
  std::string progress = "auto";

  CLI::App app(
      "kvc-replay: analyses a KV-cache trace in the Mooncake format (JSON lines) and replays it "
      "through kvc cache managers sharing memory nodes");
  app.add_option("trace", path, "the trace file")->required();
  app.add_flag("--skip-malformed", opts.skip_malformed,
               "skip (and count) malformed lines instead of stopping at the first");
  app.add_option("--block-tokens", opts.block_tokens,
                 "tokens per block: each request must have ceil(input_length / N) hash ids (0: "
                 "no check)")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_flag("--json", json, "print everything as one JSON object");
  app.add_flag("--analysis-only", analysis_only, "analyse the trace, do not replay it");
  app.add_option("--engines", cfg.engines, "engine instances (cache managers)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--capacity", capacities,
                 "device blocks per engine, a sweep (default: 1/64, 1/16, 1/4 and all of the "
                 "trace's unique blocks, split over the engines)")
      ->delimiter(',');
  app.add_option("--policy", policies, "eviction policies of the sweep (device and host tiers)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--host-factor", host_factor, "host blocks per device block")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--block-bytes", block_bytes,
                 "KV bytes per block, moved for real (a multiple of 64; bytes scale with it)")
      ->capture_default_str();
  app.add_flag("--no-remote", no_remote, "no memory nodes: local tiers only");
  app.add_option("--remote-blocks", remote_blocks,
                 "blocks the memory node holds ('auto': every distinct block of the trace)")
      ->capture_default_str();
  app.add_option("--place-remote", place_remote,
                 "when blocks go to the memory nodes: write_through, write_back, selective[:N]")
      ->capture_default_str();
  app.add_option("--route", route, "which engine serves a request: round_robin, affinity")
      ->check(CLI::IsMember({"round_robin", "affinity"}))
      ->capture_default_str();
  app.add_flag("--sequential", sequential,
               "one request at a time in trace order, publishes finished before the next "
               "(deterministic)");
  app.add_option("--speed", cfg.speed,
                 "0: as fast as possible; x > 0: at trace time, x times faster")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--memnode", memnode,
                 "a running memory node's bootstrap address host:port (one capacity and one "
                 "policy); default: start one per run");
  app.add_option("--secret", secret, "with --memnode: the shared secret (default: $KVC_SECRET)");
  app.add_option("--transport", plan.transport,
                 "how engines reach memory nodes: shm, or verbs (RDMA; kvc-memnode then "
                 "registers its region with --device)")
      ->check(CLI::IsMember({"shm", "verbs"}))
      ->capture_default_str();
  app.add_option("--device", plan.device, "verbs: the RDMA device (default: the first)");
  app.add_option("--gid-index", plan.gid_index, "verbs: the GID index (-1: a RoCE v2 IPv4 GID)")
      ->check(CLI::Range(-1, 255))  // a port's GID table; -5 is no GID (was taken as -1)
      ->capture_default_str();
  app.add_option("--memnode-bin", memnode_bin,
                 "the kvc-memnode program (default: beside kvc-replay, or in PATH)");
  app.add_option("--plot", plot, "write PREFIX-hit-ratio.svg and PREFIX-latency-cdf.svg");
  app.add_option("--progress", progress, "progress bar on standard error: auto, on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // Options that contradict each other, or that CLI11's checks let through.
  if (!memnode.empty() && no_remote) return die("--memnode and --no-remote contradict each other");
  if (!memnode.empty() && remote_blocks != "auto") {
    return die(
        "--remote-blocks sizes the memory node kvc-replay starts; a running node given "
        "by --memnode has its own size");
  }
  if (!secret.empty() && memnode.empty()) {
    return die(
        "--secret is for a running memory node (--memnode); kvc-replay makes its own "
        "node's secret");
  }
  if (!std::isfinite(host_factor) || host_factor <= 0 || host_factor > 1e6) {
    return die("--host-factor must be a positive number up to 1e6");
  }

  // The replay's options, checked before the trace is read (with --analysis-only too).
  cfg.block_bytes = kvc_examples::parse_size(block_bytes);
  if (cfg.block_bytes == 0 || cfg.block_bytes % 64 != 0) {
    return die("--block-bytes " + block_bytes + " is not a multiple of 64 bytes");
  }
  if (opts.block_tokens > 0) cfg.block_tokens = opts.block_tokens;
  auto place = kvc::parse_placement(place_remote);
  if (!place) return die("--place-remote: " + place.message());
  cfg.remote_place = *place;
  cfg.route =
      route == "affinity" ? kvc_replay::routing::affinity : kvc_replay::routing::round_robin;
  cfg.sequential = sequential;
  for (const auto& p : policies) {
    if (auto ok = kvc::parse_policy_config(p); !ok)
      return die("--policy " + p + ": " + ok.message());
  }
  std::optional<std::vector<std::size_t>> given_points;
  if (!capacities.empty()) {
    given_points = parse_counts(capacities);
    if (!given_points) return die("--capacity takes positive block counts, e.g. 1024,4096");
    for (const std::size_t capacity : *given_points) {
      if (host_factor * static_cast<double>(capacity) > 1e12) {
        return die("--host-factor x --capacity is more host blocks than any machine holds");
      }
    }
  }
  std::optional<std::size_t> given_node_blocks;
  if (remote_blocks != "auto") {
    auto n = parse_counts({remote_blocks});
    if (!n) return die("--remote-blocks takes a block count or 'auto'");
    given_node_blocks = (*n)[0];
  }

  // The trace: read whole (the replay goes over it once per point), analysed on the way.
  auto reader = kvc_trace::mooncake_reader::open(path, opts);
  if (!reader) return die(reader.message());
  kvc_trace::trace_analyzer analyzer;
  std::vector<kvc_trace::trace_request> trace;
  for (;;) {
    auto r = reader->next();
    if (!r) return die(r.message());
    if (!*r) break;
    analyzer.add(**r);
    if (!analysis_only) trace.push_back(std::move(**r));
  }
  const auto summary = analyzer.summary();
  nlohmann::json out = {{"trace", path}, {"analysis", analysis_json(summary, reader->stats())}};
  if (!json) print_analysis(path, summary, reader->stats());
  if (analysis_only) {
    if (json) std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }

  // The sweep.
  std::vector<std::size_t> points;
  if (given_points) {
    points = *given_points;
  } else {
    const std::size_t all = std::max<std::size_t>(1, summary.unique_blocks / cfg.engines);
    for (const std::size_t d : {std::size_t{64}, std::size_t{16}, std::size_t{4}, std::size_t{1}})
      points.push_back(std::max<std::size_t>(all / d, 64));
    points.erase(std::unique(points.begin(), points.end()), points.end());
  }
  for (const std::size_t capacity : points) {
    if (host_factor * static_cast<double>(capacity) > 1e12) {
      return die("--host-factor x --capacity is more host blocks than any machine holds");
    }
  }
  // 'auto': every distinct block key of the trace (the replay keys blocks by their whole chain:
  // an id after another prefix is another block), and the chunks the clients hold.
  const std::size_t node_blocks =
      given_node_blocks ? *given_node_blocks : distinct_keys(trace) + 64 * 8;
  if (!memnode.empty() && points.size() * policies.size() > 1) {
    return die(
        "--memnode runs one point (the node keeps what a run published): give one --capacity "
        "and one --policy, or leave --memnode out and kvc-replay starts a node per run");
  }
  if (!memnode.empty() && secret.empty()) {
    if (const char* env = std::getenv("KVC_SECRET")) secret = env;
    if (secret.empty()) return die("--memnode needs the shared secret: --secret or KVC_SECRET");
  }
  const bool remote = !no_remote;
  std::size_t region_bytes = 0;
  if (remote && memnode.empty()) {
    auto bytes = kvc_examples::region_bytes_for(node_blocks, cfg.block_bytes, 64);
    if (!bytes) return die("--remote-blocks: " + bytes.message());
    region_bytes = *bytes;
    if (memnode_bin.empty()) memnode_bin = kvc_examples::find_program("kvc-memnode", "memnode");
  }
  plan.memnode = memnode;
  plan.secret = secret;
  plan.binary = memnode_bin;
  plan.region_bytes = region_bytes;
#ifndef KVC_REPLAY_VERBS
  if (remote && plan.transport == "verbs") {
    return die("this build has no verbs transport (configure with KVC_WITH_VERBS=ON)");
  }
#endif
  // On standard error: beside --json too when asked for.
  const bool show_progress =
      progress == "on" || (progress == "auto" && !json && ::isatty(STDERR_FILENO) != 0);

  if (!json) {
    std::printf(
        "\nreplay: %zu engine%s (%s), %s; %s%s\n", cfg.engines, cfg.engines == 1 ? "" : "s",
        route.c_str(),
        cfg.sequential ? "sequential" : (cfg.speed > 0 ? "at trace time" : "as fast as possible"),
        remote ? (memnode.empty() ? "a fresh kvc-memnode per run holding " +
                                        std::to_string(node_blocks) + " blocks, "
                                  : "memory node " + memnode + ", ")
                     .c_str()
               : "no memory nodes",
        remote ? ("blocks published " + place_remote).c_str() : "");
    std::printf("        host blocks = %.3g x device blocks, %zu-byte blocks\n", host_factor,
                cfg.block_bytes);
  }
  std::vector<run> runs;
  nlohmann::json runs_json = nlohmann::json::array();
  for (const auto& policy : policies) {
    for (const std::size_t capacity : points) {
      cfg.policy = policy;
      cfg.device_blocks = capacity;
      cfg.host_blocks = std::max<std::size_t>(
          1, static_cast<std::size_t>(host_factor * static_cast<double>(capacity)));
      std::optional<progress_bar> bar;
      if (show_progress) {
        bar.emplace(policy + " " + std::to_string(capacity), trace.size());
        cfg.progress = [&](std::size_t done) { bar->update(done); };
      } else {
        cfg.progress = nullptr;
      }
      kvc::result<kvc_replay::replay_report> r =
          kvc::fail(kvc::errc::not_supported, "no transport for --transport " + plan.transport);
      if (!remote) {
        r = kvc_replay::replay(trace, cfg);
      } else if (plan.transport == "shm") {
        r = replay_point<kvc::shm_transport>(
            trace, cfg, plan,
            [&](const std::string& host, std::uint16_t port,
                const std::string& key) -> kvc::result<attached<kvc::shm_transport>> {
              auto t = std::make_unique<kvc::shm_transport>();
              auto id = t->connect(host, port, key);
              if (!id) return std::move(id).take_failure();
              return attached<kvc::shm_transport>{std::move(t), *id};
            });
      } else {
#ifdef KVC_REPLAY_VERBS
        r = replay_point<kvc::verbs_transport>(
            trace, cfg, plan,
            [&](const std::string& host, std::uint16_t port,
                const std::string& key) -> kvc::result<attached<kvc::verbs_transport>> {
              kvc::verbs_config vc;
              vc.device.device = plan.device;
              vc.device.gid_index = plan.gid_index;
              vc.secret = key;
              const kvc::verbs_node_address a{0, host, port};
              auto t = kvc::verbs_transport::connect(vc, std::span(&a, 1));
              if (!t) return std::move(t).take_failure();
              return attached<kvc::verbs_transport>{
                  std::make_unique<kvc::verbs_transport>(std::move(*t)), 0};
            });
#endif
      }
      if (!r) return die(r.message());
      runs.push_back({policy, capacity, std::move(*r)});
      runs_json.push_back(run_json(runs.back()));
      if (runs.back().report.errors > 0) {
        std::fprintf(stderr, "kvc-replay: %llu requests failed; the first: %s\n",
                     static_cast<unsigned long long>(runs.back().report.errors),
                     runs.back().report.first_error.c_str());
      }
    }
  }
  out["replay"] = {
      {"engines", cfg.engines},
      {"route", route},
      {"mode", cfg.sequential ? "sequential" : (cfg.speed > 0 ? "trace_time" : "fast")},
      {"speed", cfg.speed},
      {"remote", remote},
      {"remote_blocks", remote ? node_blocks : 0},
      {"place_remote", place_remote},
      {"host_factor", host_factor},
      {"block_bytes", cfg.block_bytes},
      {"block_tokens", cfg.block_tokens},
      {"runs", runs_json}};
  if (json) {
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    print_runs(runs);
  }
  if (!plot.empty() && !write_plots(plot, runs, remote)) {
    return die("cannot write the plots " + plot + "-*.svg");
  }
  std::uint64_t errors = 0;
  for (const auto& r : runs) errors += r.report.errors;
  return errors == 0 ? 0 : 1;
}
