// kvc-replay's replay through real cache managers (examples/replay/replayer.hpp), on small
// generated traces, checked against an independent computation: with room for every block, an
// engine serves from its own tiers exactly the blocks it has seen before, and engines sharing a
// memory node serve every block any of them has seen before. Memory nodes are real kvc-memnode
// processes (examples/common/memnode_process.hpp).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>
#include <vector>

#include "../support/run_program.hpp"
#include "../support/unique_name.hpp"
#include "common/memnode_process.hpp"
#include "replay/replayer.hpp"
#include "replay/svg_plot.hpp"
#include "trace/generator.hpp"
#include "trace/mooncake_reader.hpp"

namespace {

std::vector<kvc_trace::trace_request> generated(std::size_t requests, std::uint64_t seed,
                                                bool few_branches = false) {
  kvc_trace::generator_config c;
  c.requests = requests;
  c.seed = seed;
  if (few_branches) {
    // Chat sessions over many system prompts: no segment of the prefix tree branches into
    // hundreds of blocks at one offset (see the test below).
    c.chat_share = 1;
    c.rag_share = c.agent_share = 0;
    c.system_prompts = 400;
    c.system_zipf = 0;
  }
  auto g = kvc_trace::generator::create(c);
  REQUIRE(g);
  std::vector<kvc_trace::trace_request> out;
  g->run([&](const kvc_trace::trace_request& r) { out.push_back(r); });
  return out;
}

// The independent computation: blocks seen before, by id, over the requests `take` selects.
struct seen_before {
  std::unordered_set<std::uint64_t> seen;
  std::uint64_t hits = 0, refs = 0;
  void add(const kvc_trace::trace_request& r) {
    for (const auto id : r.hash_ids) {
      ++refs;
      if (!seen.insert(id).second) ++hits;
    }
  }
};

// What the engines see when requests go round robin: one model per engine, and one for all.
struct models {
  std::vector<seen_before> engine;
  seen_before all;
  models(const std::vector<kvc_trace::trace_request>& trace, std::size_t engines)
      : engine(engines) {
    for (std::size_t i = 0; i < trace.size(); ++i) {
      engine[i % engines].add(trace[i]);
      all.add(trace[i]);
    }
  }
  [[nodiscard]] std::uint64_t local_hits() const {
    std::uint64_t n = 0;
    for (const auto& e : engine) n += e.hits;
    return n;
  }
};

kvc_replay::replay_config roomy(std::size_t engines, std::size_t unique) {
  kvc_replay::replay_config cfg;
  cfg.engines = engines;
  cfg.device_blocks = unique + 64;  // every block fits: nothing is evicted
  cfg.host_blocks = 2 * (unique + 64);
  cfg.block_bytes = 256;
  cfg.sequential = true;
  return cfg;
}

kvc_examples::memnode_process start_node(std::size_t blocks, std::size_t block_bytes) {
  auto bytes = kvc_examples::region_bytes_for(blocks, block_bytes, 64);
  REQUIRE(bytes);
  auto node = kvc_examples::memnode_process::start(
      kvc_examples::memnode_process::options::of(KVC_MEMNODE, *bytes, block_bytes));
  if (!node) FAIL(node.message());
  return std::move(*node);
}

}  // namespace

TEST_CASE("replay: with room for every block, an engine serves exactly what it saw before",
          "[replay]") {
  const auto trace = generated(400, 5);
  for (const std::size_t engines : {std::size_t{1}, std::size_t{3}}) {
    const models m(trace, engines);
    auto r = kvc_replay::replay(trace, roomy(engines, m.all.seen.size()));
    REQUIRE(r);
    INFO("engines " << engines << ", first error: " << r->first_error);
    CHECK(r->errors == 0);
    CHECK(r->requests == trace.size());
    CHECK(r->blocks == m.all.refs);
    CHECK(r->hits.total() == m.local_hits());
    CHECK(r->hits.remote == 0);
    CHECK(r->computed == m.all.refs - m.local_hits());
    CHECK(r->remote_lookups == 0);
    CHECK(r->lookup.p50_us <= r->lookup.p99_us);
    CHECK(r->lookup.p99_us <= r->lookup.p999_us);
    REQUIRE(r->lookup.cdf_us.size() == 101);
    CHECK(std::is_sorted(r->lookup.cdf_us.begin(), r->lookup.cdf_us.end()));
  }
}

TEST_CASE("replay: engines sharing a memory node serve every block any of them saw before",
          "[replay]") {
  const auto trace = generated(400, 9, true);
  const std::size_t engines = 3;
  const models m(trace, engines);
  const std::size_t unique = m.all.seen.size();
  auto cfg = roomy(engines, unique);
  // A node 8 times the trace's blocks and a trace without hot branch points: no bucket of the
  // index overflows (checked by every block being published), so nothing is missing remotely.
  // (Hundreds of branches at one offset of one segment can leave a block with both buckets full:
  // it stays local; docs/design/remote_index.md.)
  auto node = start_node(8 * unique, cfg.block_bytes);
  kvc::shm_transport t;
  auto id = t.connect("127.0.0.1", node.port(), node.secret());
  REQUIRE(id);
  auto r = kvc_replay::replay(trace, cfg, {&t, {*id}});
  REQUIRE(r);
  INFO("first error: " << r->first_error);
  CHECK(r->errors == 0);
  CHECK(r->remote_errors == 0);
  CHECK(r->mover_failures == 0);
  REQUIRE(r->published == unique);
  CHECK(r->hits.total() == m.all.hits);
  CHECK(r->hits.device + r->hits.host == m.local_hits());
  CHECK(r->hits.remote == m.all.hits - m.local_hits());
  CHECK(r->computed == unique);
  // Machine-independent costs: every request with blocks past its local prefix asked the node,
  // in one or two round trips (the protocol's bound), and the bytes the node sent back are the
  // blocks it served.
  CHECK(r->remote_lookups > 0);
  CHECK(r->lookup_round_trips >= r->remote_lookups);
  CHECK(r->lookup_round_trips <= 2 * r->remote_lookups);
  CHECK(r->bytes_from_remote == r->hits.remote * cfg.block_bytes);
  CHECK(r->bytes_to_remote == unique * cfg.block_bytes);
  CHECK(node.stop());
}

TEST_CASE("replay: a full memory node evicts to take new blocks, and loses no request",
          "[replay]") {
  const auto trace = generated(400, 13, true);
  const models m(trace, 2);
  const std::size_t unique = m.all.seen.size();
  auto cfg = roomy(2, unique);
  cfg.block_bytes = 4096;  // a region of whole MiB holds about a quarter of the blocks
  cfg.lease = std::chrono::milliseconds(40);  // evicted slots are reused 10 ms later
  cfg.speed = 1000;  // the trace's minutes in a few hundred ms: time for reclaiming
  auto node = start_node(unique / 4, cfg.block_bytes);
  kvc::shm_transport t;
  auto id = t.connect("127.0.0.1", node.port(), node.secret());
  REQUIRE(id);
  auto r = kvc_replay::replay(trace, cfg, {&t, {*id}});
  REQUIRE(r);
  CHECK(r->errors == 0);
  CHECK(r->remote_errors == 0);
  CHECK(r->mover_failures == 0);
  CHECK(r->remote_evicted > 0);
  // More than the node holds at once: it made room.
  const auto holds = kvc::index_layout::geometry::fit(
      *kvc_examples::region_bytes_for(unique / 4, cfg.block_bytes, 64),
      kvc::region_header::reserved_bytes, cfg.block_bytes, 64);
  REQUIRE(holds);
  CHECK(r->published > holds->slabs());
  CHECK(r->hits.total() <= m.all.hits);
  CHECK(r->hits.device + r->hits.host == m.local_hits());  // the local tiers lose nothing
  CHECK(r->hits.remote > 0);
  CHECK(node.stop());
}

TEST_CASE("replay: an invalid configuration is refused by name", "[replay]") {
  const auto trace = generated(10, 1);
  kvc_replay::replay_config cfg;
  cfg.engines = 0;
  auto r = kvc_replay::replay(trace, cfg);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.message(), Catch::Contains("engines"));
  cfg.engines = 1;
  cfg.policy = "no-such-policy";
  r = kvc_replay::replay(trace, cfg);
  REQUIRE_FALSE(r);
  CHECK(r.error() == kvc::errc::invalid_config);
  cfg.policy = "lru";
  cfg.block_bytes = 0;
  CHECK_FALSE(kvc_replay::replay(trace, cfg));
}

namespace {

bool segment_exists(const std::string& segment) {
  const int fd = ::shm_open(segment.c_str(), O_RDONLY, 0);
  if (fd >= 0) ::close(fd);
  return fd >= 0;
}

// A stand-in for kvc-memnode: a shell script taking its options, which creates the segment it is
// told to (`--name`) as a node does and then misbehaves as `body` says.
struct stand_in {
  explicit stand_in(const std::string& body)
      : dir(std::filesystem::temp_directory_path() / kvc_test::unique_name("kvc-stand-in")),
        path((dir / "kvc-memnode").string()) {
    std::filesystem::create_directories(dir);
    std::ofstream out(path);
    out << "#!/bin/sh\n"
           "while [ $# -gt 0 ]; do\n"
           "  case $1 in --name) seg=$2 ;; --ready-file) ready=$2 ;; esac\n"
           "  shift\n"
           "done\n"
           ": > \"/dev/shm$seg\" || exit 99\n"
           "echo \"segment $seg\"\n"
        << body;
    out.close();
    std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  }
  ~stand_in() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::filesystem::path dir;
  std::string path;
};

}  // namespace

TEST_CASE("memnode process: a node that cannot start is an error quoting it", "[replay]") {
  auto bad = kvc_examples::memnode_process::start(kvc_examples::memnode_process::options::of(
      KVC_MEMNODE, 1 << 20, 100));  // not a multiple of 64
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.message(), Catch::Contains("multiple of 64"));
  auto missing = kvc_examples::memnode_process::start(
      kvc_examples::memnode_process::options::of("/nonexistent/kvc-memnode", 1 << 20, 1024));
  REQUIRE_FALSE(missing);
}

TEST_CASE("memnode process: a node killed without its cleanup leaves no segment behind",
          "[replay]") {
  auto node = start_node(64, 1024);
  const std::string segment = node.segment();
  REQUIRE(segment_exists(segment));
  REQUIRE(::kill(node.pid(), SIGKILL) == 0);
  const auto stopped = node.stop();
  REQUIRE_FALSE(stopped);
  CHECK_THAT(stopped.message(), Catch::Contains("did not stop cleanly"));
  CHECK_FALSE(segment_exists(segment));
}

TEST_CASE("memnode process: a node that exits before serving leaves no segment behind",
          "[replay]") {
  const stand_in node("exit 3\n");
  auto started = kvc_examples::memnode_process::start(
      kvc_examples::memnode_process::options::of(node.path, 1 << 20, 1024));
  REQUIRE_FALSE(started);
  CHECK(started.error() == kvc::errc::io_error);
  const std::string message = started.message();
  CHECK_THAT(message, Catch::Contains("exited before serving"));
  const auto at = message.find("segment /");
  REQUIRE(at != std::string::npos);  // the log, quoted: the name the node was given
  const std::string segment = message.substr(at + 8, message.find('\n', at) - at - 8);
  CHECK_THAT(segment, Catch::StartsWith("/kvc-memnode-"));
  CHECK_FALSE(segment_exists(segment));
}

TEST_CASE("memnode process: a node that ignores SIGTERM is killed and leaves no segment behind",
          "[replay]") {
  const stand_in node(
      "trap '' TERM\n"
      "echo 7300 > \"$ready.tmp\" && mv \"$ready.tmp\" \"$ready\"\n"
      "exec sleep 60\n");
  auto started = kvc_examples::memnode_process::start(
      kvc_examples::memnode_process::options::of(node.path, 1 << 20, 1024));
  REQUIRE(started);
  CHECK(started->port() == 7300);
  const std::string segment = started->segment();
  REQUIRE(segment_exists(segment));
  const auto stopped = started->stop();  // SIGTERM, ignored; SIGKILL 5 s later
  REQUIRE_FALSE(stopped);
  CHECK(stopped.error() == kvc::errc::timed_out);
  CHECK_THAT(stopped.message(), Catch::Contains("did not stop within 5 s"));
  CHECK(started->pid() < 0);
  CHECK_FALSE(segment_exists(segment));
}

TEST_CASE("svg plot: every series is drawn, text is escaped", "[replay]") {
  kvc_replay::chart c{
      .title = "a <b> & c",
      .x_label = "x",
      .y_label = "y",
      .log_x = true,
      .lines = {{"lru", {{64, 10}, {256, 20}, {1024, 30}}}, {"s3fifo", {{64, 12}, {256, 25}}}}};
  const std::string svg = kvc_replay::to_svg(c);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK_THAT(svg, Catch::Contains("a &lt;b&gt; &amp; c"));
  std::size_t lines = 0;
  for (auto at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1))
    ++lines;
  CHECK(lines == 2);
  CHECK_THAT(svg, Catch::Contains(">lru<"));
  CHECK_THAT(svg, Catch::Contains(">s3fifo<"));
}

TEST_CASE("kvc-replay: a sweep with memory nodes of its own, as JSON and SVG", "[replay]") {
  const auto dir =
      std::filesystem::temp_directory_path() / kvc_test::unique_name("kvc-replay-sweep");
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "t.jsonl").string();
  std::ofstream(path) << kvc_trace::to_jsonl(generated(300, 3));
  const auto run = kvc_test::run_program(std::string(KVC_REPLAY) + " " + path +
                                         " --capacity 64,512 --policy lru,s3fifo --json --plot " +
                                         (dir / "p").string());
  INFO(run.output);
  REQUIRE(run.status == 0);
  const auto doc = nlohmann::json::parse(run.output);
  CHECK(doc["analysis"]["requests"] == 300);
  const auto& runs = doc["replay"]["runs"];
  REQUIRE(runs.size() == 4);
  for (const auto& r : runs) {
    CHECK(r["errors"] == 0);
    CHECK(r["requests"] == 300);
    CHECK(r["hit_ratio"].get<double>() > 0.0);
    CHECK(r["hit_ratio"].get<double>() <= doc["analysis"]["hit_ratio"].get<double>() + 1e-12);
    CHECK(r["round_trips_per_lookup"].get<double>() >= 1.0);
    CHECK(r["round_trips_per_lookup"].get<double>() <= 2.0);
  }
  for (const char* f : {"p-hit-ratio.svg", "p-latency-cdf.svg"}) {
    std::ifstream in(dir / f);
    std::string head(4, '\0');
    in.read(head.data(), 4);
    CHECK(head == "<svg");
  }
  // A running node keeps what a run published: a sweep against it is refused.
  const auto refused = kvc_test::run_program(std::string(KVC_REPLAY) + " " + path +
                                             " --memnode 127.0.0.1:1 --secret s --capacity 64,512");
  CHECK(refused.status == 1);
  CHECK_THAT(refused.output, Catch::Contains("--memnode runs one point"));
  // Options that contradict each other or are out of range: refused before the trace is read.
  const std::pair<const char*, const char*> bad[] = {
      {"--memnode 127.0.0.1:1 --secret s --no-remote", "--memnode and --no-remote contradict"},
      {"--memnode 127.0.0.1:1 --secret s --remote-blocks 100", "a running node given by --memnode"},
      {"--secret s", "--secret is for a running memory node"},
      {"--host-factor nan", "--host-factor must be a positive number"},
      {"--block-tokens -1", "not a whole number in decimal digits: -1"},
      {"--block-tokens 0512", "a number with a leading zero"},
      {"--analysis-only --block-bytes 3", "--block-bytes 3 is not a multiple of 64"},
      {"--capacity 1000000000000 --host-factor 1000", "more host blocks than any machine holds"},
      {"--transport verbs --gid-index -5", "--gid-index"},  // not taken for -1 (any RoCE v2 GID)
  };
  for (const auto& [args, why] : bad) {
    INFO(args);
    const auto r = kvc_test::run_program(std::string(KVC_REPLAY) + " " + path + " " + args);
    CHECK(r.status != 0);
    CHECK_THAT(r.output, Catch::Contains(why));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("replay: the public conversation trace at infinite capacity gives its 36.64%",
          "[replay]") {
  const std::string path = KVC_SHARED_TRACES_DIR "/conversation_trace.jsonl";
  if (!std::ifstream(path).good()) {
    WARN("skipped: no trace at " << path);
    return;
  }
  auto reader = kvc_trace::mooncake_reader::open(path, {});
  REQUIRE(reader);
  std::vector<kvc_trace::trace_request> trace;
  for (auto next = reader->next(); next && *next; next = reader->next()) {
    trace.push_back(std::move(**next));
  }
  REQUIRE(trace.size() == 12'031);
  const models m(trace, 1);
  kvc_replay::replay_config cfg = roomy(1, m.all.seen.size());
  cfg.block_bytes = 64;
  cfg.host_blocks = 1024;  // every block stays on the device
  auto r = kvc_replay::replay(trace, cfg);
  REQUIRE(r);
  CHECK(r->errors == 0);
  CHECK(r->blocks == 288'500);
  CHECK(r->hits.total() == 105'710);  // 36.64% of the references
  CHECK(r->hits.total() == m.all.hits);
  CHECK(r->computed == 182'790);
}
