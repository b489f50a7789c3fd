// kvc-replay's parts: the Mooncake reader (every kind of malformed line named by file and line,
// stop or skip), the trace analysis against hand-worked and independently computed figures (and
// the public trace's published ones when it is present), and the program itself.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>
#include <vector>

#include "../support/run_program.hpp"
#include "../support/unique_name.hpp"
#include "trace/analysis.hpp"
#include "trace/mooncake_reader.hpp"

namespace {

struct temp_trace {
  explicit temp_trace(const std::string& text) {
    path = (std::filesystem::temp_directory_path() /
            (kvc_test::unique_name("kvc-replay-test") + ".jsonl"))
               .string();
    std::ofstream(path) << text;
  }
  ~temp_trace() { std::filesystem::remove(path); }
  std::string path;
};

// Every request of a file, or the first error.
kvc::result<std::vector<kvc_trace::trace_request>> read_all(const std::string& path,
                                                            kvc_trace::read_options o = {}) {
  auto r = kvc_trace::mooncake_reader::open(path, o);
  if (!r) return std::move(r).take_failure();
  std::vector<kvc_trace::trace_request> out;
  for (;;) {
    auto next = r->next();
    if (!next) return std::move(next).take_failure();
    if (!*next) return out;
    out.push_back(std::move(**next));
  }
}

std::string run_replay(const std::string& args, int& status) {
  auto r = kvc_test::run_program(std::string(KVC_REPLAY) + " " + args);
  status = r.status;
  return r.output;
}

const char* const good_line =
    R"({"timestamp": 5, "input_length": 1000, "output_length": 7, "hash_ids": [1, 2]})";

}  // namespace

TEST_CASE("mooncake reader: requests, blank lines and unknown fields", "[replay]") {
  // A UTF-8 byte order mark before the first line, CRLF line ends.
  temp_trace t("\xEF\xBB\xBF" + std::string(good_line) + "\r\n\n  \n" +
               R"({"hash_ids": [], "output_length": 0, "input_length": 0, "timestamp": 9,)" +
               R"( "extra": {"nested": [1, "x"]}})" + "\n");
  auto all = read_all(t.path);
  REQUIRE(all);
  REQUIRE(all->size() == 2);
  CHECK((*all)[0].timestamp_ms == 5);
  CHECK((*all)[0].input_length == 1000);
  CHECK((*all)[0].output_length == 7);
  CHECK((*all)[0].hash_ids == std::vector<std::uint64_t>{1, 2});
  CHECK((*all)[1].timestamp_ms == 9);
  CHECK((*all)[1].hash_ids.empty());
}

TEST_CASE("mooncake reader: a malformed line is named by file and line, or skipped", "[replay]") {
  const std::pair<const char*, const char*> bad[] = {
      {"not json at all", "not JSON"},
      {"[1, 2]", "not a JSON object"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3})", "no \"hash_ids\""},
      {R"({"input_length": 2, "output_length": 3, "hash_ids": []})", "no \"timestamp\""},
      {R"({"timestamp": 1, "output_length": 3, "hash_ids": []})", "no \"input_length\""},
      {R"({"timestamp": 1, "input_length": 2, "hash_ids": []})", "no \"output_length\""},
      {R"({"timestamp": -1, "input_length": 2, "output_length": 3, "hash_ids": []})",
       "\"timestamp\" is not an unsigned integer"},
      {R"({"timestamp": 1.5, "input_length": 2, "output_length": 3, "hash_ids": []})",
       "\"timestamp\" is not an unsigned integer"},
      {R"({"timestamp": 1, "input_length": "2", "output_length": 3, "hash_ids": []})",
       "\"input_length\" is not an unsigned integer"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": 4})",
       "\"hash_ids\" is not an array"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [1, "x"]})",
       "\"hash_ids\" holds something other than an unsigned integer"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [1, -2]})",
       "\"hash_ids\" holds something other than an unsigned integer"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [1,)", "not JSON"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": []} x)", "not JSON"},
      // Two objects where a newline went missing (or a lone CR ended the first).
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": []})"
       R"({"timestamp": 2, "input_length": 2, "output_length": 3, "hash_ids": []})",
       "not JSON"},
      {"{\"timestamp\": 1, \"input_length\": 2, \"output_length\": 3, \"hash_ids\": []}\r"
       "{\"timestamp\": 2, \"input_length\": 2, \"output_length\": 3, \"hash_ids\": []}",
       "not JSON"},
      // An ignored field's value is still checked.
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [], "x": tru})",
       "not JSON"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [], "x": [1 2]})",
       "not JSON"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [1], "hash_ids": [2]})",
       "\"hash_ids\" appears twice"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [], "timestamp": 2})",
       "\"timestamp\" appears twice"},
      {R"({"timestamp": 1, "input_length": 18446744073709551615, "output_length": 3, "hash_ids": []})",
       "\"input_length\" is 18446744073709551615, more than a request can hold"},
      {R"({"timestamp": 1, "input_length": 2, "output_length": 4294967297, "hash_ids": []})",
       "\"output_length\" is 4294967297, more than a request can hold"},
      // A byte order mark is taken only before the first line.
      {"\xEF\xBB\xBF{\"timestamp\": 1, \"input_length\": 2, \"output_length\": 3, \"hash_ids\": "
       "[]}",
       "not JSON"},
  };
  for (const auto& [line, why] : bad) {
    INFO(line);
    temp_trace t(std::string(good_line) + "\n" + line + "\n" + good_line + "\n");
    auto stopped = read_all(t.path);
    REQUIRE_FALSE(stopped);
    CHECK(stopped.error() == kvc::errc::malformed_input);
    CHECK_THAT(stopped.message(), Catch::Contains(t.path + ":2: " + why));
    kvc_trace::read_options skip;
    skip.skip_malformed = true;
    auto r = kvc_trace::mooncake_reader::open(t.path, skip);
    REQUIRE(r);
    std::size_t n = 0;
    for (auto next = r->next(); next && *next; next = r->next()) ++n;
    CHECK(n == 2);
    CHECK(r->stats().skipped == 1);
    REQUIRE(r->stats().first_errors.size() == 1);
    CHECK_THAT(r->stats().first_errors[0], Catch::Contains(":2: "));
  }
  // The block count, when asked to check it.
  temp_trace t(R"({"timestamp": 1, "input_length": 1025, "output_length": 3, "hash_ids": [1, 2]})"
               "\n");
  kvc_trace::read_options blocks;
  blocks.block_tokens = 512;
  auto checked = read_all(t.path, blocks);
  REQUIRE_FALSE(checked);
  CHECK_THAT(checked.message(), Catch::Contains("2 hash ids for 1025 tokens in blocks of 512"));
  CHECK(read_all(t.path));  // unchecked by default
  auto missing = read_all("/nonexistent-dir/trace.jsonl");
  REQUIRE_FALSE(missing);
  CHECK(missing.error() == kvc::errc::io_error);
}

TEST_CASE("trace analysis: a hand-worked trace", "[replay]") {
  // r0 [0 1 2] at 0 ms; r1 [0 1 3] at 1 s; r2 [4 1] at 3 s (block 1 after another parent).
  kvc_trace::trace_analyzer a;
  a.add({0, 1536, 10, {0, 1, 2}});
  a.add({1000, 1536, 20, {0, 1, 3}});
  a.add({3000, 1024, 30, {4, 1}});
  const auto s = a.summary();
  CHECK(s.requests == 3);
  CHECK(s.block_refs == 8);
  CHECK(s.unique_blocks == 5);
  CHECK(s.hits == 3);
  CHECK(s.sequential_hits == 2);  // 0 and 1 of r1; 1 of r2 follows a miss
  CHECK(s.requests_over_half == 1);
  CHECK(s.input_tokens == 4096);
  CHECK(s.output_tokens == 60);
  CHECK(s.last_ms - s.first_ms == 3000);
  CHECK(s.reuse_requests == std::array<std::uint64_t, 3>{1, 1, 1});
  // Nearest rank over {1000, 1000, 2000}: p50 the 2nd, p90 and p99 the 3rd.
  CHECK(s.reuse_ms == std::array<std::uint64_t, 3>{1000, 2000, 2000});
  CHECK(s.roots == 2);   // 0 and 4
  CHECK(s.leaves == 3);  // 2, 3 and 4
  CHECK(s.max_depth == 3);
  CHECK(s.mean_children == Approx(1.5));  // 0 has one child, 1 has two
  CHECK(s.parent_mismatches == 1);
  REQUIRE(s.hottest.size() == 5);
  CHECK(s.hottest[0] == std::pair<std::uint64_t, std::size_t>{1, 3});
  CHECK(s.hottest[1] == std::pair<std::uint64_t, std::size_t>{0, 2});
}

TEST_CASE("trace analysis: timestamps out of order, and an id that is every bit set", "[replay]") {
  kvc_trace::trace_analyzer a;
  constexpr std::uint64_t all_ones = ~std::uint64_t{0};
  a.add({5000, 1024, 1, {all_ones, 7}});
  a.add({1000, 1024, 1, {all_ones, 7}});
  a.add({3000, 512, 1, {7}});  // 7 as a root now: after another parent than at first
  const auto s = a.summary();
  CHECK(s.first_ms == 1000);  // the earliest, not the first line's
  CHECK(s.last_ms == 5000);
  CHECK(s.roots == 1);  // all_ones (it is a block like any other, not "no parent")
  CHECK(s.leaves == 1);
  CHECK(s.max_depth == 2);
  CHECK(s.parent_mismatches == 1);
  CHECK(s.hits == 3);
  CHECK(s.sequential_hits == 3);
  // Reuse in ms of a request earlier than the last use counts 0.
  CHECK(s.reuse_ms[0] == 0);
}

TEST_CASE("trace analysis: a generated trace read back, against an independent count", "[replay]") {
  kvc_trace::generator_config c;
  c.requests = 2000;
  c.seed = 21;
  auto g = kvc_trace::generator::create(c);
  REQUIRE(g);
  std::vector<kvc_trace::trace_request> generated;
  g->run([&](const kvc_trace::trace_request& r) { generated.push_back(r); });
  const std::string text = kvc_trace::to_jsonl(generated);
  temp_trace t(text);
  kvc_trace::read_options o;
  o.block_tokens = c.block_tokens;
  auto back = read_all(t.path, o);
  REQUIRE(back);
  REQUIRE(back->size() == generated.size());
  kvc_trace::trace_analyzer a;
  std::unordered_set<std::uint64_t> seen;
  std::size_t refs = 0, hits = 0;
  for (std::size_t i = 0; i < back->size(); ++i) {
    const auto& r = (*back)[i];
    CHECK(r.hash_ids == generated[i].hash_ids);
    a.add(r);
    for (auto id : r.hash_ids) {
      ++refs;
      if (!seen.insert(id).second) ++hits;
    }
  }
  const auto s = a.summary();
  CHECK(s.block_refs == refs);
  CHECK(s.hits == hits);
  CHECK(s.unique_blocks == seen.size());
  CHECK(s.sequential_hits == s.hits);  // chained ids: every reuse is a prefix
  CHECK(s.parent_mismatches == 0);
}

TEST_CASE("trace analysis: the public conversation trace's published figures", "[replay]") {
  const std::string path = KVC_SHARED_TRACES_DIR "/conversation_trace.jsonl";
  if (!std::ifstream(path).good()) {
    WARN("skipped: no trace at " << path);
    return;
  }
  kvc_trace::read_options o;
  o.block_tokens = 512;
  auto r = kvc_trace::mooncake_reader::open(path, o);
  REQUIRE(r);
  kvc_trace::trace_analyzer a;
  for (auto next = r->next(); next && *next; next = r->next()) a.add(**next);
  CHECK(r->stats().skipped == 0);
  const auto s = a.summary();
  CHECK(s.requests == 12'031);
  CHECK(s.block_refs == 288'500);
  CHECK(s.unique_blocks == 182'790);
  CHECK(s.hits == 105'710);
  CHECK(s.sequential_hits == s.hits);
}

TEST_CASE(
    "kvc-replay prints the analysis and the replay, as a table or JSON, and refuses bad traces",
    "[replay]") {
  temp_trace t(std::string(good_line) + "\n" +
               R"({"timestamp": 9, "input_length": 1000, "output_length": 7, "hash_ids": [1, 3]})" +
               "\n");
  int status = -1;
  const auto table = run_replay(t.path, status);
  INFO(table);
  CHECK(status == 0);
  CHECK_THAT(table, Catch::Contains("infinite-cache hits   25.00% of block references (1)"));
  CHECK_THAT(table, Catch::Contains("replay: 2 engines"));
  const auto json_text = run_replay(t.path + " --analysis-only --json", status);
  CHECK(status == 0);
  const auto doc = nlohmann::json::parse(json_text);
  const auto& a = doc["analysis"];
  CHECK(a["requests"] == 2);
  CHECK(a["block_references"] == 4);
  CHECK(a["hits"] == 1);
  CHECK(a["tree"]["roots"] == 1);
  CHECK_FALSE(doc.contains("replay"));

  temp_trace bad(std::string(good_line) + "\n{\"timestamp\": 1}\n");
  CHECK_THAT(run_replay(bad.path, status), Catch::Contains(bad.path + ":2: no \"input_length\""));
  CHECK(status == 1);
  CHECK_THAT(run_replay(bad.path + " --skip-malformed", status),
             Catch::Contains("1 malformed skipped"));
  CHECK(status == 0);
  CHECK_THAT(run_replay("/nonexistent-dir/t.jsonl", status), Catch::Contains("cannot open trace"));
  CHECK(status == 1);
}
