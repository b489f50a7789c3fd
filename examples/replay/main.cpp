// kvc-replay: the study's trace analysis on any Mooncake-format trace (JSON lines; see
// docs/design/trace.md): how much of the trace repeats, how much of that a prefix cache can
// serve, reuse distances, the hottest blocks and the shape of the prefix tree. A readable table,
// or --json for machines.
//
//   kvc-replay trace.jsonl
//   kvc-replay trace.jsonl --skip-malformed --json
//
// Not built yet: the replay through a cache_manager and memory nodes (hit ratio per tier
// against capacity and policy, lookup latency); this version analyses the trace.
// Exit status: 0; 1 for an unreadable trace, a malformed line (unless --skip-malformed) or
// invalid options.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "trace/analysis.hpp"
#include "trace/mooncake_reader.hpp"

namespace {

void print_table(const std::string& path, const kvc_trace::trace_summary& s,
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

nlohmann::json as_json(const kvc_trace::trace_summary& s, const kvc_trace::read_stats& rs) {
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

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  kvc_trace::read_options opts;
  bool json = false;
  CLI::App app("kvc-replay: analyses a KV-cache trace in the Mooncake format (JSON lines)");
  app.add_option("trace", path, "the trace file")->required();
  app.add_flag("--skip-malformed", opts.skip_malformed,
               "skip (and count) malformed lines instead of stopping at the first");
  app.add_option("--block-tokens", opts.block_tokens,
                 "check that each request has ceil(input_length / N) hash ids (0: no check)")
      ->capture_default_str();
  app.add_flag("--json", json, "print the analysis as JSON");
  CLI11_PARSE(app, argc, argv);

  auto reader = kvc_trace::mooncake_reader::open(path, opts);
  if (!reader) {
    std::fprintf(stderr, "kvc-replay: %s\n", reader.message().c_str());
    return 1;
  }
  kvc_trace::trace_analyzer analyzer;
  for (;;) {
    auto r = reader->next();
    if (!r) {
      std::fprintf(stderr, "kvc-replay: %s\n", r.message().c_str());
      return 1;
    }
    if (!*r) break;
    analyzer.add(**r);
  }
  const auto summary = analyzer.summary();
  if (json) {
    std::printf("%s\n", as_json(summary, reader->stats()).dump(2).c_str());
  } else {
    print_table(path, summary, reader->stats());
  }
  return 0;
}
