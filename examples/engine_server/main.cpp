// kvc-engine-server: an inference engine's prefill path as an HTTP demo. It embeds a
// kvc::cache_manager (device ids with a host-memory stand-in, host DRAM, optionally an SSD file
// and memory nodes) and serves prompts: each prefill matches the prompt's longest cached prefix,
// loads it, checks the loaded KV bytes, "computes" the rest (bytes derived from each block's key,
// and a sleep per token so that prefill takes real time), caches and publishes it. Two servers
// attached to the same memory node reuse each other's blocks, and can check every byte they read.
//
//   kvc-engine-server                                         (local tiers, port 7400)
//   kvc-engine-server --port 0 --ready-file /tmp/port --block-bytes 4K --device-blocks 64
//   kvc-engine-server --memnode 127.0.0.1:7300 --secret-file /etc/kvc/secret --model-salt m1
//
//   POST /v1/prefill  {"tokens": [1, 2, ...], "lora_id": 3, "tenant": "acme"}
//                     -> {"tokens", "blocks", "hits": {"device", "host", "ssd", "remote"},
//                         "usable", "computed", "verified", "mismatched", "timings_us": {...}}
//                        (400 with {"error": ...} for a bad body, 503 when the cache cannot serve)
//   GET  /metrics     the manager's counters in the Prometheus text format
//   GET  /healthz     "ok"
//
// Prints one status line when listening and one when it stops (SIGTERM, SIGINT). Invalid options,
// a configuration the manager refuses or an unreachable memory node: one line on stderr, exit 1.
#include <signal.h>
#include <unistd.h>

#include <httplib.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <initializer_list>
#include <kvc/manager.hpp>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/cli_checks.hpp"
#include "common/server_support.hpp"

namespace {

using manager = kvc::cache_manager<kvc::shm_transport>;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

// ---- options -------------------------------------------------------------------------------

struct settings {
  std::string listen = "127.0.0.1";
  unsigned port = 7400;
  std::string ready_file;
  unsigned threads = 8;
  std::uint32_t block_size = 16;
  std::string block_bytes = "64K";
  std::size_t device_blocks = 512;
  std::size_t host_blocks = 1024;
  std::string ssd_path;
  std::size_t ssd_blocks = 0;
  bool ssd_buffered = false;
  std::string policy_device = "lru", policy_host = "lru", policy_ssd = "lru";
  std::string place_host = "write_back", place_ssd = "write_back", place_remote = "write_through";
  std::vector<std::string> memnodes;  // host:port
  std::string secret;
  std::string secret_file;
  double cost_per_token_us = 20;
  std::string deadline = "all";
  std::int64_t deadline_budget_us = 2000;
  std::int64_t deadline_per_token_ns = 0;
  std::string model_salt;
};

int die(const std::string& message) {
  std::fprintf(stderr, "kvc-engine-server: %s\n", message.c_str());
  return 1;
}

// The manager's configuration from the options (transport attached by the caller); an error
// sentence when an option does not parse.
std::optional<std::string> make_config(const settings& s, manager::config& cfg) {
  cfg.block_size = s.block_size;
  cfg.model_salt = s.model_salt;
  cfg.block_bytes = kvc_examples::parse_size(s.block_bytes);
  if (cfg.block_bytes == 0) {
    return "--block-bytes " + s.block_bytes + " is not a size (examples: 4096, 64K, 1M)";
  }
  cfg.device.blocks = s.device_blocks;
  cfg.host.blocks = s.host_blocks;
  cfg.ssd.path = s.ssd_path;
  cfg.ssd.blocks = s.ssd_blocks;
  cfg.ssd.direct = !s.ssd_buffered;
  const std::pair<const std::string*, kvc::any_policy_config*> policies[] = {
      {&s.policy_device, &cfg.device.policy},
      {&s.policy_host, &cfg.host.policy},
      {&s.policy_ssd, &cfg.ssd.policy}};
  const char* const flags[] = {"--policy-device", "--policy-host", "--policy-ssd"};
  for (std::size_t i = 0; i < 3; ++i) {
    auto p = kvc::parse_policy_config(*policies[i].first);
    if (!p) return std::string(flags[i]) + ": " + p.message();
    *policies[i].second = *p;
  }
  const std::pair<const std::string*, kvc::placement*> places[] = {
      {&s.place_host, &cfg.host.place},
      {&s.place_ssd, &cfg.ssd.place},
      {&s.place_remote, &cfg.remote.place}};
  const char* const place_flags[] = {"--place-host", "--place-ssd", "--place-remote"};
  for (std::size_t i = 0; i < 3; ++i) {
    auto p = kvc::parse_placement(*places[i].first);
    if (!p) return std::string(place_flags[i]) + ": " + p.message();
    *places[i].second = *p;
  }
  cfg.deadline.mode = s.deadline == "best_effort"    ? kvc::load_wait::best_effort
                      : s.deadline == "token_budget" ? kvc::load_wait::token_budget
                                                     : kvc::load_wait::all;
  cfg.deadline.budget = std::chrono::microseconds(s.deadline_budget_us);
  cfg.deadline.per_token = std::chrono::nanoseconds(s.deadline_per_token_ns);
  return std::nullopt;
}

// The cluster's shared secret: --secret, --secret-file or $KVC_SECRET (as kvc-memnode takes it).
std::optional<std::string> read_secret(settings& s) {
  if (!s.secret_file.empty()) {
    std::ifstream in(s.secret_file);
    if (!in || !std::getline(in, s.secret)) return "cannot read " + s.secret_file;
  } else if (s.secret.empty()) {
    if (const char* env = std::getenv("KVC_SECRET")) s.secret = env;
  }
  if (s.secret.empty()) {
    return "--memnode needs the cluster's shared secret: --secret, --secret-file or KVC_SECRET";
  }
  return std::nullopt;
}

// ---- KV bytes ------------------------------------------------------------------------------

// A block's KV bytes, derived from its key alone: whichever engine computed the block, another
// that loads it can check every byte.
std::uint64_t kv_word(kvc::hash64 key, std::size_t word) {
  std::uint64_t x = key.value + 0x9E3779B97F4A7C15ull * (word + 1);
  x = (x ^ (x >> 31)) * 0xBF58476D1CE4E5B9ull;
  return x ^ (x >> 29);
}

void compute_block(std::span<std::byte> bytes, kvc::hash64 key) {
  for (std::size_t i = 0; i < bytes.size(); i += 8) {
    const std::uint64_t w = kv_word(key, i / 8);
    std::memcpy(bytes.data() + i, &w, std::min<std::size_t>(8, bytes.size() - i));
  }
}

bool holds_block(std::span<const std::byte> bytes, kvc::hash64 key) {
  for (std::size_t i = 0; i < bytes.size(); i += 8) {
    const std::uint64_t w = kv_word(key, i / 8);
    if (std::memcmp(bytes.data() + i, &w, std::min<std::size_t>(8, bytes.size() - i)) != 0) {
      return false;
    }
  }
  return !bytes.empty();
}

// ---- requests ------------------------------------------------------------------------------

// The largest request body taken: the largest prompt the device can serve (its blocks and a
// partial one) at 32 bytes a token (ten digits, a comma and indented lines), and 1 MiB for the
// other fields.
std::size_t max_body_bytes(const manager::config& cfg) {
  const std::size_t tokens_max = std::numeric_limits<std::size_t>::max() / 32 - (1 << 20);
  const std::size_t blocks = cfg.device.blocks + 1;
  const std::size_t tokens =
      blocks > tokens_max / cfg.block_size ? tokens_max : blocks * cfg.block_size;
  return tokens * 32 + (std::size_t{1} << 20);
}

struct prefill_request {
  std::vector<kvc::token_id> tokens;
  std::optional<std::uint64_t> lora_id;
  std::string tenant;
};

// The request in `body`, or the sentence saying what is wrong with it.
std::optional<std::string> parse_prefill(const std::string& body, prefill_request& out) {
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return "the body is not valid JSON";
  if (!doc.is_object()) return "the body must be a JSON object with a \"tokens\" array";
  const auto tokens = doc.find("tokens");
  if (tokens == doc.end()) return "\"tokens\" is missing";
  if (!tokens->is_array()) return "\"tokens\" must be an array of token ids";
  if (tokens->empty()) return "\"tokens\" is empty";
  out.tokens.reserve(tokens->size());
  for (std::size_t i = 0; i < tokens->size(); ++i) {
    const json& t = (*tokens)[i];
    if (!t.is_number_unsigned() ||
        t.get<std::uint64_t>() > std::numeric_limits<kvc::token_id>::max()) {
      return "tokens[" + std::to_string(i) + "] is not a token id (an integer in 0..4294967295)";
    }
    out.tokens.push_back(static_cast<kvc::token_id>(t.get<std::uint64_t>()));
  }
  if (const auto lora = doc.find("lora_id"); lora != doc.end() && !lora->is_null()) {
    if (!lora->is_number_unsigned()) return "\"lora_id\" must be a non-negative integer";
    out.lora_id = lora->get<std::uint64_t>();
  }
  if (const auto tenant = doc.find("tenant"); tenant != doc.end() && !tenant->is_null()) {
    if (!tenant->is_string()) return "\"tenant\" must be a string";
    out.tenant = tenant->get<std::string>();
  }
  return std::nullopt;
}

struct reply {
  int status = 200;
  json body;
};

reply error_reply(int status, const std::string& why) { return {status, json{{"error", why}}}; }

// A request in flight: it owns the match, the load and the computed ids, and releases them
// (once) on every path out of a prefill.
class request {
 public:
  request(manager& mgr, manager::prefix_match m) : mgr_(mgr), match_(std::move(m)) {}
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request() {
    if (!released_) (void)end();
  }
  [[nodiscard]] const manager::prefix_match& match() const { return match_; }
  manager::prefix_load& set_load(manager::prefix_load l) { return load_.emplace(std::move(l)); }
  void set_computed(std::vector<std::uint32_t> ids) { computed_ = std::move(ids); }
  [[nodiscard]] const std::vector<std::uint32_t>& computed() const { return computed_; }
  kvc::result<void> end() {
    released_ = true;
    return mgr_.release(match_, load_ ? &*load_ : nullptr, computed_);
  }

 private:
  manager& mgr_;
  manager::prefix_match match_;
  std::optional<manager::prefix_load> load_;
  std::vector<std::uint32_t> computed_;
  bool released_ = false;
};

// The engine: the manager plus the simulated prefill, and the server's own counters.
class engine {
 public:
  engine(std::unique_ptr<manager> mgr, double cost_per_token_us)
      : mgr_(std::move(mgr)), cost_per_token_us_(cost_per_token_us) {}

  reply prefill(const std::string& body) {
    prefill_request req;
    if (auto bad = parse_prefill(body, req)) {
      ++bad_requests_;
      return error_reply(400, *bad);
    }
    // A prompt of more full blocks than the device holds can never be served: refused before
    // the cache is asked (which would evict the device for it first).
    const std::size_t full_blocks = req.tokens.size() / mgr_->settings().block_size;
    if (full_blocks > mgr_->settings().device.blocks) {
      ++bad_requests_;
      return error_reply(413, "the prompt has " + std::to_string(full_blocks) +
                                  " full blocks; the device holds " +
                                  std::to_string(mgr_->settings().device.blocks));
    }
    reply r = serve(req);
    if (r.status == 200) {
      ++served_;
    } else if (r.status == 400) {
      ++bad_requests_;
    } else {
      ++failed_;
    }
    return r;
  }

  [[nodiscard]] manager& cache() { return *mgr_; }

  struct counters {
    std::uint64_t served = 0, bad_requests = 0, failed = 0;
    std::uint64_t verified = 0, mismatched = 0, computed_tokens = 0;
  };
  [[nodiscard]] counters totals() const {
    return {served_, bad_requests_, failed_, verified_, mismatched_, computed_tokens_};
  }

  // Ends the manager (its movers finish queued publishes first).
  void shutdown() { mgr_.reset(); }

 private:
  reply serve(const prefill_request& req) {
    using std::chrono::duration_cast;
    using us = std::chrono::microseconds;
    manager& mgr = *mgr_;
    const auto t0 = clock_type::now();
    kvc::extra_keys keys;
    keys.lora_id = req.lora_id;
    keys.tenant_salt = req.tenant;
    auto matched = mgr.match(req.tokens, keys);
    if (!matched) {
      const bool caller = matched.error() == kvc::errc::invalid_argument ||
                          matched.error() == kvc::errc::out_of_range;
      return error_reply(caller ? 400 : 503, "match: " + matched.message());
    }
    request r(mgr, std::move(*matched));
    const manager::prefix_match& m = r.match();
    const auto t_match = clock_type::now();

    auto loaded = mgr.load(m);
    if (!loaded) return error_reply(503, "load: " + loaded.message());
    manager::prefix_load& l = r.set_load(std::move(*loaded));
    const std::size_t usable = l.wait();
    const auto ids = l.ids();
    const auto t_load = clock_type::now();

    std::size_t verified = 0, mismatched = 0;
    for (std::size_t i = 0; i < usable; ++i) {
      if (holds_block(mgr.stand_in_data(ids[i]), m.chain()[i])) {
        ++verified;
      } else {
        ++mismatched;
      }
    }
    const auto t_verify = clock_type::now();

    // "Compute" every block not loaded, and the prompt's tail past its last full block.
    const std::size_t computed = m.blocks() - usable;
    const std::size_t computed_tokens = req.tokens.size() - usable * mgr.settings().block_size;
    if (computed > 0) {
      auto fresh = mgr.allocate(computed);
      if (!fresh) {
        return error_reply(
            503, "allocate " + std::to_string(computed) + " device blocks: " + fresh.message());
      }
      r.set_computed(std::move(*fresh));
      for (std::size_t i = 0; i < computed; ++i) {
        compute_block(mgr.stand_in_data(r.computed()[i]), m.chain()[usable + i]);
      }
    }
    std::this_thread::sleep_for(std::chrono::nanoseconds(static_cast<std::int64_t>(
        cost_per_token_us_ * 1000.0 * static_cast<double>(computed_tokens))));
    const auto t_compute = clock_type::now();

    if (computed > 0) {
      if (auto c = mgr.commit(m, usable, r.computed()); !c) {
        return error_reply(503, "commit: " + c.message());
      }
    }
    if (auto ok = r.end(); !ok) return error_reply(503, "release: " + ok.message());
    const auto t_end = clock_type::now();

    verified_ += verified;
    mismatched_ += mismatched;
    computed_tokens_ += computed_tokens;
    const auto& hits = m.by_tier();
    const auto micros = [](auto d) { return duration_cast<us>(d).count(); };
    json out;
    out["tokens"] = req.tokens.size();
    out["blocks"] = m.blocks();
    out["hits"] = {
        {"device", hits.device}, {"host", hits.host}, {"ssd", hits.ssd}, {"remote", hits.remote}};
    out["usable"] = usable;
    out["computed"] = computed;
    out["verified"] = verified;
    out["mismatched"] = mismatched;
    out["timings_us"] = {
        {"match", micros(t_match - t0)},       {"load", micros(t_load - t_match)},
        {"verify", micros(t_verify - t_load)}, {"compute", micros(t_compute - t_verify)},
        {"commit", micros(t_end - t_compute)}, {"total", micros(t_end - t0)}};
    return {200, std::move(out)};
  }

  std::unique_ptr<manager> mgr_;
  double cost_per_token_us_;
  std::atomic<std::uint64_t> served_{0}, bad_requests_{0}, failed_{0};
  std::atomic<std::uint64_t> verified_{0}, mismatched_{0}, computed_tokens_{0};
};

// ---- metrics -------------------------------------------------------------------------------

class prometheus_writer {
 public:
  // One metric family: its HELP and TYPE lines.
  void family(const char* name, const char* type, const char* help) {
    text_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void sample(const std::string& name, std::uint64_t value) {
    text_ += name + " " + std::to_string(value) + "\n";
  }
  void sample(const std::string& name, double value) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", value);
    text_ += name + " " + buf + "\n";
  }
  // A counter with one sample per tier label.
  void per_tier(const char* name, const char* help,
                std::initializer_list<std::pair<const char*, std::uint64_t>> tiers) {
    family(name, "counter", help);
    for (const auto& [tier, value] : tiers) {
      sample(std::string(name) + "{tier=\"" + tier + "\"}", value);
    }
  }
  void counter(const char* name, const char* help, std::uint64_t value) {
    family(name, "counter", help);
    sample(name, value);
  }
  [[nodiscard]] std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

// HTTP answers by status code, whoever gave them: the handlers, or cpp-httplib itself (a body
// over the limit: 413; a bad request line: 400) and the pre-routing check (411), which the
// prefill counters do not see. Counted by the server's logger, called for every answer.
class http_answers {
 public:
  void count(int status) noexcept {
    if (status >= first && status < first + static_cast<int>(by_code_.size())) {
      by_code_[static_cast<std::size_t>(status - first)].fetch_add(1, std::memory_order_relaxed);
    }
  }
  // (code, answers) for every code answered at least once, in order.
  [[nodiscard]] std::vector<std::pair<int, std::uint64_t>> snapshot() const {
    std::vector<std::pair<int, std::uint64_t>> out;
    for (std::size_t i = 0; i < by_code_.size(); ++i) {
      const std::uint64_t n = by_code_[i].load(std::memory_order_relaxed);
      if (n > 0) out.emplace_back(first + static_cast<int>(i), n);
    }
    return out;
  }

 private:
  static constexpr int first = 100;
  std::array<std::atomic<std::uint64_t>, 500> by_code_{};  // 100 to 599
};

// The manager's counters (and the server's own) in the Prometheus text exposition format.
std::string prometheus_text(const kvc::manager_stats& s, const engine::counters& c,
                            const http_answers& answers) {
  prometheus_writer w;
  const auto& t = s.pool.tiers;
  w.counter("kvc_requests_total", "Prefix matches (one per prefill request).", s.matches);
  w.counter("kvc_prompt_blocks_total", "Full blocks of the prompts matched.", s.prompt_blocks);
  w.counter("kvc_matched_blocks_total", "Blocks found cached (every tier) by matches.",
            s.matched_blocks);
  w.per_tier(
      "kvc_hit_blocks_total", "Matched blocks by the tier of their fastest copy.",
      {{"device", t[0].hits}, {"host", t[1].hits}, {"ssd", t[2].hits}, {"remote", s.remote_hits}});
  w.per_tier("kvc_tier_stored_total", "Block copies placed in a tier.",
             {{"device", t[0].stored},
              {"host", t[1].stored},
              {"ssd", t[2].stored},
              {"remote", s.published}});
  w.per_tier("kvc_tier_bytes_in_total", "Bytes copied into a tier.",
             {{"device", t[0].bytes_in},
              {"host", t[1].bytes_in},
              {"ssd", t[2].bytes_in},
              {"remote", s.remote_bytes_out}});
  w.per_tier("kvc_evicted_total", "Block copies evicted from a local tier to make room.",
             {{"device", t[0].evicted}, {"host", t[1].evicted}, {"ssd", t[2].evicted}});
  w.counter("kvc_loads_total", "Prefix loads started.", s.loads);
  w.counter("kvc_remote_loaded_blocks_total", "Blocks read from the memory nodes.",
            s.remote_loaded);
  w.counter("kvc_remote_short_blocks_total",
            "Blocks matched remotely but not brought (evicted since, or no room).", s.remote_short);
  w.counter("kvc_commits_total", "Commits of computed blocks.", s.commits);
  w.counter("kvc_committed_blocks_total", "Computed blocks cached by commits.", s.committed);
  w.counter("kvc_published_blocks_total", "Blocks this server wrote to the memory nodes.",
            s.published);
  w.counter("kvc_publish_missed_blocks_total",
            "Blocks a publish could not write: no local copy was left to send.", s.publish_missed);
  w.counter("kvc_remote_round_trips_total", "Round trips of remote index lookups and inserts.",
            s.remote_round_trips);
  w.counter("kvc_remote_bytes_in_total", "KV bytes read from the memory nodes.", s.remote_bytes_in);
  w.counter("kvc_remote_bytes_out_total", "KV bytes written to the memory nodes.",
            s.remote_bytes_out);
  w.counter("kvc_remote_errors_total", "Memory-node calls that failed (the request went on).",
            s.remote_errors);
  w.counter("kvc_mover_failures_total",
            "Publishes and remote loads given up for want of memory (what they held went back).",
            s.mover_failures);
  w.counter("kvc_index_upkeep_failures_total",
            "Remote index upkeep (heartbeats, reclaim, recovery) that failed; retried each beat.",
            s.index_upkeep_failures);
  w.counter("kvc_events_total", "Block events delivered to the listener.", s.events);
  w.counter("kvc_events_dropped_total", "Block events dropped for a slow listener.",
            s.events_dropped);

  // Bucket i counts [2^i, 2^(i+1)) ns; the last one also counts longer matches, so it is left to
  // +Inf.
  const auto& h = s.match_latency;
  w.family("kvc_match_latency_seconds", "histogram", "Latency of prefix matches.");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i + 1 < kvc::latency_histogram::buckets; ++i) {
    cumulative += h.counts[i];
    char le[64];
    std::snprintf(le, sizeof le, "%.12g",
                  static_cast<double>(kvc::latency_histogram::snapshot_type::upper_ns(i)) * 1e-9);
    w.sample(std::string("kvc_match_latency_seconds_bucket{le=\"") + le + "\"}", cumulative);
  }
  w.sample("kvc_match_latency_seconds_bucket{le=\"+Inf\"}", h.count);
  w.sample("kvc_match_latency_seconds_sum", static_cast<double>(h.sum_ns) * 1e-9);
  w.sample("kvc_match_latency_seconds_count", h.count);

  w.family("kvc_server_prefills_total", "counter", "Prefill requests answered, by outcome.");
  w.sample("kvc_server_prefills_total{outcome=\"ok\"}", c.served);
  w.sample("kvc_server_prefills_total{outcome=\"bad_request\"}", c.bad_requests);
  w.sample("kvc_server_prefills_total{outcome=\"unavailable\"}", c.failed);
  w.counter("kvc_server_verified_blocks_total", "Loaded blocks whose KV bytes were checked good.",
            c.verified);
  w.counter("kvc_server_mismatched_blocks_total", "Loaded blocks whose KV bytes were wrong.",
            c.mismatched);
  w.counter("kvc_server_computed_tokens_total", "Prompt tokens computed (not loaded).",
            c.computed_tokens);
  w.family("kvc_server_http_responses_total", "counter",
           "HTTP answers by status code, the HTTP layer's refusals (411, 413) included.");
  for (const auto& [code, n] : answers.snapshot()) {
    w.sample("kvc_server_http_responses_total{code=\"" + std::to_string(code) + "\"}", n);
  }
  return w.take();
}

// Writes the port where a watcher never sees a partial number: a temporary file, renamed.
const char* signal_name(int sig) {
  return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "a signal";
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  CLI::App app{"kvc-engine-server: an inference engine's prefill path over kvc, as an HTTP demo"};
  app.add_option("--listen", s.listen, "HTTP address")->capture_default_str();
  app.add_option("--port", s.port, "HTTP port (0: any free port)")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(0u, 65535u))
      ->capture_default_str();
  app.add_option("--ready-file", s.ready_file, "write the bound port here once listening");
  app.add_option("--threads", s.threads, "HTTP worker threads")
      ->check(kvc_examples::decimal_count)
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--block-size", s.block_size, "tokens per block (a power of two)")
      ->capture_default_str()
      ->check(kvc_examples::decimal_count);
  app.add_option("--block-bytes", s.block_bytes, "KV bytes per block, e.g. 4096, 64K")
      ->capture_default_str();
  app.add_option("--device-blocks", s.device_blocks, "device block ids")
      ->capture_default_str()
      ->check(kvc_examples::decimal_count);
  app.add_option("--host-blocks", s.host_blocks, "host DRAM blocks")
      ->capture_default_str()
      ->check(kvc_examples::decimal_count);
  app.add_option("--ssd-path", s.ssd_path, "SSD tier slot file (default: no SSD tier)");
  app.add_option("--ssd-blocks", s.ssd_blocks, "SSD tier blocks")
      ->check(kvc_examples::decimal_count);
  app.add_flag("--ssd-buffered", s.ssd_buffered,
               "use the page cache for the SSD file (for file systems without O_DIRECT)");
  app.add_option("--policy-device", s.policy_device, "device eviction policy, e.g. lru, s3fifo")
      ->capture_default_str();
  app.add_option("--policy-host", s.policy_host, "host eviction policy")->capture_default_str();
  app.add_option("--policy-ssd", s.policy_ssd, "SSD eviction policy")->capture_default_str();
  const char* const place_help =
      "write_back, write_through, selective or selective:N (copies kept after N uses)";
  app.add_option("--place-host", s.place_host, std::string("host placement: ") + place_help)
      ->capture_default_str();
  app.add_option("--place-ssd", s.place_ssd, std::string("SSD placement: ") + place_help)
      ->capture_default_str();
  app.add_option("--place-remote", s.place_remote,
                 std::string("when blocks go to the memory nodes: ") + place_help +
                     " (write_back: when their last local copy is to leave)")
      ->capture_default_str();
  app.add_option("--memnode", s.memnodes, "a memory node's bootstrap address host:port (repeat)");
  auto* secret =
      app.add_option("--secret", s.secret, "the cluster's shared secret (default: $KVC_SECRET)");
  app.add_option("--secret-file", s.secret_file, "read the shared secret from this file")
      ->excludes(secret);
  app.add_option("--cost-per-token-us", s.cost_per_token_us,
                 "simulated prefill time per computed token, microseconds")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--deadline", s.deadline, "how long a load waits: all, best_effort, token_budget")
      ->check(CLI::IsMember({"all", "best_effort", "token_budget"}))
      ->capture_default_str();
  app.add_option("--deadline-budget-us", s.deadline_budget_us,
                 "best_effort: the whole wait; token_budget: the base")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--deadline-per-token-ns", s.deadline_per_token_ns,
                 "token_budget: added per token to bring")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--model-salt", s.model_salt, "separates the caches of different models");
  CLI11_PARSE(app, argc, argv);

  manager::config cfg;
  if (auto bad = make_config(s, cfg)) return die(*bad);
  std::vector<kvc_examples::endpoint> nodes;
  for (const auto& text : s.memnodes) {
    auto e = kvc_examples::parse_endpoint(text);
    if (!e) return die("--memnode " + text + " is not host:port");
    nodes.push_back(*e);
  }
  if (!nodes.empty()) {
    if (auto bad = read_secret(s)) return die(*bad);
  }

  // SIGTERM and SIGINT are taken by sigwait() below: blocked before any thread starts, so that
  // every thread inherits the mask. A client gone mid-response is not a reason to die.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // The memory nodes, attached before the manager (which must not outlive the transport).
  kvc::shm_transport transport;
  for (const auto& e : nodes) {
    auto id = transport.connect(e.host, e.port, s.secret);
    if (!id) {
      return die("cannot attach memory node " + e.host + ":" + std::to_string(e.port) + ": " +
                 id.message());
    }
    auto& ids = cfg.remote.index.index.nodes;
    if (std::find(ids.begin(), ids.end(), *id) != ids.end()) {
      return die("memory node " + e.host + ":" + std::to_string(e.port) + " reports node id " +
                 std::to_string(*id) + ", as another --memnode does");
    }
    ids.push_back(*id);
  }
  if (!nodes.empty()) cfg.remote.transport = &transport;

  std::unique_ptr<manager> mgr;
  try {
    auto made = manager::create(cfg);
    if (!made) return die(made.message());
    mgr = std::move(*made);
  } catch (const std::exception& e) {  // e.g. tiers too large to allocate
    return die(std::string("cannot create the cache manager: ") + e.what());
  }
  engine eng(std::move(mgr), s.cost_per_token_us);

  httplib::Server server;
  // Bodies beyond what the largest servable prompt needs are refused with 413 and not kept
  // (without a limit cpp-httplib takes any size). The limit holds for bodies of a stated
  // length only (cpp-httplib reads a chunked body whole, even beside a Content-Length): any
  // request with a Transfer-Encoding, and a request of a method that may carry a body without
  // a Content-Length, is refused with 411 before its body is read. (cpp-httplib 0.11 keeps the
  // connection open after that answer and reads what follows as the next request: behind a
  // proxy, let the proxy frame requests.) Neither answer reaches the prefill counters; both are
  // counted by code (http_answers).
  server.set_payload_max_length(max_body_bytes(cfg));
  server.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    const bool bodiless = req.method == "GET" || req.method == "HEAD" || req.method == "OPTIONS";
    if (!req.has_header("Transfer-Encoding") && (bodiless || req.has_header("Content-Length"))) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.status = 411;
    res.set_content(
        "{\"error\":\"a request body needs a Content-Length and no "
        "Transfer-Encoding\"}\n",
        "application/json");
    return httplib::Server::HandlerResponse::Handled;
  });
  http_answers answers;
  server.set_logger([&answers](const httplib::Request&, const httplib::Response& res) {
    answers.count(res.status);
  });
  const unsigned threads = s.threads;
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.Post("/v1/prefill", [&eng](const httplib::Request& req, httplib::Response& res) {
    reply r = eng.prefill(req.body);
    res.status = r.status;
    res.set_content(r.body.dump() + "\n", "application/json");
  });
  server.Get("/metrics", [&eng, &answers](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus_text(eng.cache().stats(), eng.totals(), answers),
                    "text/plain; version=0.0.4");
  });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what += std::string(": ") + e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content(json{{"error", what}}.dump() + "\n", "application/json");
      });

  int port = static_cast<int>(s.port);
  if (port == 0) {
    port = server.bind_to_any_port(s.listen);
    if (port < 0) return die("cannot listen on " + s.listen + " (any port)");
  } else if (!server.bind_to_port(s.listen, port)) {
    return die("cannot listen on " + s.listen + ":" + std::to_string(port));
  }
  std::atomic<bool> listen_ended{false}, stopping{false};
  std::thread http([&] {
    (void)server.listen_after_bind();
    listen_ended = true;
    if (!stopping) ::kill(::getpid(), SIGTERM);  // wakes sigwait(): the server ended by itself
  });
  // Ready only once accepting (and so that stop() below cannot come before listening started).
  while (!server.is_running() && !listen_ended) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (listen_ended) {
    http.join();
    return die("the HTTP server did not start on " + s.listen + ":" + std::to_string(port));
  }
  // The status line comes before the ready file: whoever waits on the file can read it.
  const auto& c = eng.cache().settings();
  std::printf(
      "kvc-engine-server: listening on %s:%d, blocks of %u tokens and %zu bytes, device %zu, "
      "host %zu, ssd %zu, %zu memory node(s)\n",
      s.listen.c_str(), port, c.block_size, c.block_bytes, c.device.blocks, c.host.blocks,
      c.ssd.path.empty() ? std::size_t{0} : c.ssd.blocks, nodes.size());
  std::fflush(stdout);
  if (!s.ready_file.empty() && !kvc_examples::write_ready_file(s.ready_file, port)) {
    stopping = true;
    server.stop();
    http.join();
    return die("cannot write " + s.ready_file);
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  stopping = true;
  const bool by_itself = listen_ended;
  server.stop();  // in-flight requests finish before listen_after_bind() returns
  http.join();
  eng.shutdown();  // queued publishes finish first
  const auto totals = eng.totals();
  if (by_itself) return die("the HTTP server stopped unexpectedly");
  std::printf(
      "kvc-engine-server: stopping on %s after %llu prefills (%llu bad requests, %llu failed), "
      "%llu blocks verified, %llu mismatched\n",
      signal_name(signal_number), static_cast<unsigned long long>(totals.served),
      static_cast<unsigned long long>(totals.bad_requests),
      static_cast<unsigned long long>(totals.failed),
      static_cast<unsigned long long>(totals.verified),
      static_cast<unsigned long long>(totals.mismatched));
  return 0;
}
