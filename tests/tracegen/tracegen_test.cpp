// The trace generator: the same seed gives the same trace, its output keeps the Mooncake
// format's invariants (checked here from the output alone), the workload knobs do what they
// say, and kvc-tracegen writes what the library generates and refuses bad options.

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../support/run_program.hpp"
#include "../support/unique_name.hpp"
#include "trace/generator.hpp"

namespace {

using kvc_trace::generator_config;
using kvc_trace::trace_request;

std::vector<trace_request> generate(const generator_config& c) {
  auto g = kvc_trace::generator::create(c);
  REQUIRE(g);
  std::vector<trace_request> out;
  g->run([&](const trace_request& r) { out.push_back(r); });
  return out;
}

// The share of block references that repeat an earlier block: an infinite cache's hit ratio.
double infinite_hit_ratio(const std::vector<trace_request>& trace) {
  std::unordered_set<std::uint64_t> seen;
  std::size_t refs = 0, hits = 0;
  for (const auto& r : trace) {
    for (std::uint64_t id : r.hash_ids) {
      ++refs;
      if (!seen.insert(id).second) ++hits;
    }
  }
  return refs == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(refs);
}

std::string run_tool(const std::string& args, int& status) {
  auto r = kvc_test::run_program(std::string(KVC_TRACEGEN) + " " + args);
  status = r.status;
  return r.output;
}

}  // namespace

TEST_CASE("trace generator: the same seed gives the same trace, another seed another",
          "[tracegen]") {
  generator_config c;
  c.requests = 500;
  c.seed = 11;
  const auto a = kvc_trace::to_jsonl(generate(c));
  CHECK(a == kvc_trace::to_jsonl(generate(c)));
  c.seed = 12;
  CHECK(a != kvc_trace::to_jsonl(generate(c)));
}

TEST_CASE("trace generator: the output keeps the Mooncake format's invariants", "[tracegen]") {
  generator_config c;
  c.requests = 3000;
  c.seed = 5;
  const auto trace = generate(c);
  REQUIRE(trace.size() == 3000);
  std::uint64_t last_time = 0, next_new = 0;
  std::unordered_map<std::uint64_t, std::uint64_t> parent_of;  // id -> the id before it (or ~0)
  std::size_t chat_like = 0;
  for (const auto& r : trace) {
    // One id per block of the input, the last one possibly partial.
    CHECK(r.hash_ids.size() == (r.input_length + c.block_tokens - 1) / c.block_tokens);
    CHECK(r.output_length > 0);
    CHECK(r.timestamp_ms >= last_time);
    last_time = r.timestamp_ms;
    std::uint64_t parent = ~std::uint64_t{0};
    for (std::uint64_t id : r.hash_ids) {
      // Ids are handed out in first-seen order.
      CHECK(id <= next_new);
      if (id == next_new) ++next_new;
      // An equal id means an equal prefix: the block before it is always the same.
      const auto [it, added] = parent_of.try_emplace(id, parent);
      CHECK(it->second == parent);
      parent = id;
    }
    if (r.input_length > c.system_tokens) ++chat_like;
  }
  CHECK(chat_like > 0);
  // Shared system prompts, documents and growing histories make blocks repeat.
  const double ratio = infinite_hit_ratio(trace);
  CHECK(ratio > 0.2);
  CHECK(ratio < 0.95);
}

TEST_CASE("trace generator: the knobs shape the workload", "[tracegen]") {
  generator_config c;
  c.requests = 1000;
  c.seed = 9;
  // RAG only, over one document and one system prompt: every request repeats them.
  c.chat_share = c.agent_share = 0;
  c.rag_share = 1;
  c.documents = 1;
  c.system_prompts = 1;
  c.rag_documents = 1;
  const double one_doc = infinite_hit_ratio(generate(c));
  // The same over a large corpus nobody prefers: the documents rarely repeat.
  c.documents = 100000;
  c.document_zipf = 0;
  const double many_docs = infinite_hit_ratio(generate(c));
  CHECK(one_doc > 0.8);
  CHECK(many_docs < one_doc - 0.3);

  // Longer conversations (chat only, more turns): more of each prompt is history seen before.
  generator_config chat;
  chat.requests = 1000;
  chat.seed = 9;
  chat.rag_share = chat.agent_share = 0;
  chat.chat_share = 1;
  chat.system_prompts = 1000;
  chat.system_zipf = 0;
  chat.turns = 1;
  const double single_turn = infinite_hit_ratio(generate(chat));
  chat.turns = 8;
  const double eight_turns = infinite_hit_ratio(generate(chat));
  CHECK(eight_turns > single_turn + 0.2);

  // The rate sets the span: 1,000 sessions at 10/s arrive in about 100 s, not 1,000 s.
  generator_config rag;
  rag.requests = 1000;
  rag.chat_share = rag.agent_share = 0;
  rag.rag_share = 1;
  rag.rate = 10;
  const auto fast = generate(rag);
  CHECK(fast.back().timestamp_ms > 80'000);
  CHECK(fast.back().timestamp_ms < 120'000);

  // A duration bounds the arrivals (later turns of running sessions may follow).
  generator_config timed;
  timed.requests = 0;
  timed.duration_s = 30;
  timed.rate = 5;
  const auto t = generate(timed);
  CHECK(t.size() > 100);
  CHECK(t.size() < 1000);
}

TEST_CASE("trace generator: invalid configs are refused naming the field", "[tracegen]") {
  const auto refused = [](generator_config c, const std::string& what) {
    auto g = kvc_trace::generator::create(c);
    REQUIRE_FALSE(g);
    CHECK(g.error() == kvc::errc::invalid_config);
    CHECK_THAT(g.message(), Catch::Contains(what));
  };
  generator_config c;
  c.rate = 0;
  refused(c, "rate");
  c = {};
  c.requests = 0;
  refused(c, "requests or duration_s");
  c = {};
  c.block_tokens = 0;
  refused(c, "block_tokens");
  c = {};
  c.chat_share = c.rag_share = c.agent_share = 0;
  refused(c, "share");
  c = {};
  c.documents = 0;
  refused(c, "documents");
  c = {};
  c.turns = 0.5;
  refused(c, "turns");
  c = {};
  c.document_zipf = -1;
  refused(c, "Zipf");
  // Bounds that keep timestamps and token counts from overflowing, and tables sane.
  c = {};
  c.rate = 1e-300;
  refused(c, "rate must be between");
  c = {};
  c.think_s = 1e300;
  refused(c, "think_s and step_s must be at most");
  c = {};
  c.user_tokens = 4'000'000'000;
  refused(c, "token counts must be at most");
  c = {};
  c.documents = 20'000'000;
  refused(c, "documents");
}

TEST_CASE("kvc-tracegen writes what the generator makes, as JSON lines", "[tracegen]") {
  const auto path = std::filesystem::temp_directory_path() /
                    (kvc_test::unique_name("kvc-tracegen-test") + ".jsonl");
  int status = -1;
  const std::string out =
      run_tool("--requests 200 --seed 3 --rag-share 0.5 --output " + path.string(), status);
  INFO(out);
  REQUIRE(status == 0);
  generator_config c;
  c.requests = 200;
  c.seed = 3;
  c.rag_share = 0.5;
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  CHECK(text.str() == kvc_trace::to_jsonl(generate(c)));
  // Every line is a JSON object with the four fields.
  std::istringstream lines(text.str());
  std::string line;
  std::size_t n = 0;
  while (std::getline(lines, line)) {
    const auto doc = nlohmann::json::parse(line);
    CHECK(doc["timestamp"].is_number_unsigned());
    CHECK(doc["input_length"].is_number_unsigned());
    CHECK(doc["output_length"].is_number_unsigned());
    CHECK(doc["hash_ids"].is_array());
    ++n;
  }
  CHECK(n == 200);
  std::filesystem::remove(path);

  // To standard output by default.
  const std::string stdout_text = run_tool("--requests 5 --seed 3", status);
  CHECK(status == 0);
  generator_config five;
  five.requests = 5;
  five.seed = 3;
  CHECK(stdout_text == kvc_trace::to_jsonl(generate(five)));

  CHECK_THAT(run_tool("--rate 0", status), Catch::Contains("rate must be > 0"));
  CHECK(status == 1);
  CHECK_THAT(run_tool("--requests 3 --output /nonexistent-dir/t.jsonl", status),
             Catch::Contains("cannot write /nonexistent-dir/t.jsonl"));
  CHECK(status == 1);
  run_tool("--no-such-option", status);
  CHECK(status != 0);
  // Counts in decimal digits only (CLI11 alone would wrap -1 and read 0512 as octal).
  CHECK_THAT(run_tool("--documents -1", status),
             Catch::Contains("not a whole number in decimal digits: -1"));
  CHECK(status != 0);
  CHECK_THAT(run_tool("--requests 010", status), Catch::Contains("a number with a leading zero"));
  CHECK(status != 0);
  CHECK_THAT(run_tool("--seed 18446744073709551616", status), Catch::Contains("too large"));
  CHECK(status != 0);
  CHECK(run_tool("--requests 1 --seed 18446744073709551615", status).find("\"hash_ids\"") !=
        std::string::npos);
  CHECK(status == 0);
}
