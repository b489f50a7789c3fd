// Replays the public Mooncake conversation trace's block chains through the radix tree and
// eviction policies. Exits with 77 (ctest: skipped) when the trace is absent.
//
// Expected figures, computed independently of kvc (a Python OrderedDict model over the same
// file, touching each request's blocks deepest first and counting its leading resident run as
// hits): infinite capacity 105,710 hits of 288,500 references (36.64%); LRU at 16,000 blocks
// 75,791 hits (26.27%).
#define CATCH_CONFIG_RUNNER
#include <kvc/evict/queue_policy.hpp>
#include <kvc/evict/s3fifo.hpp>
#include <kvc/evict/sieve.hpp>
#include <kvc/tree/radix_tree.hpp>

#include <catch2/catch.hpp>
#include <cstdio>

#include "../support/mooncake_trace.hpp"
#include "../support/trace_replay.hpp"

namespace {

const std::vector<std::vector<kvc::hash64>>& trace() {
  static const auto chains = [] {
    auto r = kvc_test::read_chains(kvc_test::conversation_trace_path());
    if (!r) FAIL(r.message());
    return std::move(*r);
  }();
  return chains;
}

template <class Policy>
kvc_test::replay_result replay(std::size_t capacity) {
  return kvc_test::replay<Policy>(trace(), capacity);
}

}  // namespace

TEST_CASE("infinite capacity: the hit ratio of block references is exactly 36.64%", "[trace]") {
  const auto r = replay<kvc::lru_policy>(SIZE_MAX);
  CHECK(r.references == 288'500);
  CHECK(r.hits == 105'710);
}

TEST_CASE("LRU at 16,000 blocks: 26.27% (75,791 hits)", "[trace]") {
  const auto r = replay<kvc::lru_policy>(16'000);
  CHECK(r.references == 288'500);
  CHECK(r.hits == 75'791);
}

TEST_CASE("every policy stays within capacity and below the infinite-cache hit ratio", "[trace]") {
  const auto check = [](kvc_test::replay_result r, const char* name) {
    INFO(name);
    CHECK(r.hits <= 105'710);
    CHECK(r.hits > 0);
  };
  check(replay<kvc::fifo_policy>(16'000), "fifo");
  check(replay<kvc::sieve_policy>(16'000), "sieve");
  check(replay<kvc::s3fifo_policy>(16'000), "s3fifo");
}

int main(int argc, char** argv) {
  const auto path = kvc_test::conversation_trace_path();
  if (!kvc_test::file_exists(path)) {
    std::printf("skipped: no trace at %s (set KVC_TRACE to its path)\n", path.c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
