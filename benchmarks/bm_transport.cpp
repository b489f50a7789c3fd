// bm_transport: the shm transport's cost per operation and operations per second, with 1 and 2
// client processes, batches of 1 to 64 operations (8-byte READs, and CAS on one shared word),
// through the counting decorator so the round trips per batch are shown next to the times.
// Baseline in the same run: the same operation as a plain CPU atomic on process-local memory.
#include <benchmark/benchmark.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "../tests/support/fork_child.hpp"
#include "../tests/support/unique_name.hpp"
#include "kvc/transport/counting.hpp"
#include "kvc/transport/shm.hpp"
#include "support/ratio_reporter.hpp"

namespace {

constexpr std::size_t region_bytes = 1u << 24;

struct node {
  node() {
    auto r = kvc::shm_region::create(kvc_test::unique_name("/kvc-bm"), region_bytes, 0);
    if (!r) {
      std::fprintf(stderr, "%s\n", r.message().c_str());
      std::abort();
    }
    region = std::move(*r);
  }
  kvc::shm_region region;
};

node& shared_node() {
  static node n;
  return n;
}

// A second client process hammering the same words for the whole run (2-process case).
struct rival {
  explicit rival(bool on) {
    if (!on) return;
    pid = kvc_test::fork_child();
    if (pid == 0) {
      kvc::shm_transport t;
      if (!t.add_node(0, shared_node().region.name())) ::_exit(1);
      std::uint64_t old = 0;
      const auto buf = kvc::unregistered({reinterpret_cast<std::byte*>(&old), 8});
      for (;;) {
        auto b = t.new_batch();
        for (int i = 0; i < 16; ++i) b.cas({0, 4096}, old, old + 1, buf);
        b.ring();
        (void)b.wait();
      }
    }
  }
  ~rival() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  pid_t pid = -1;
};

// range(0): batch size; range(1): client processes (1 or 2); range(2): 0 READ, 1 CAS.
void bm_shm(benchmark::State& state) {
  const auto batch_size = static_cast<std::size_t>(state.range(0));
  const bool cas = state.range(2) == 1;
  kvc::shm_transport inner;
  if (!inner.add_node(0, shared_node().region.name())) std::abort();
  kvc::counting<kvc::shm_transport> t(std::move(inner));
  const rival other(state.range(1) == 2);
  std::vector<std::uint64_t> local(batch_size);
  auto b = t.new_batch();
  std::uint64_t expected = 0;
  for (auto _ : state) {
    b.clear();
    for (std::size_t i = 0; i < batch_size; ++i) {
      const auto buf = kvc::unregistered({reinterpret_cast<std::byte*>(&local[i]), 8});
      if (cas) {
        b.cas({0, 4096}, expected, expected + 1, buf);
      } else {
        b.read({0, 8192 + 64 * i}, buf);
      }
    }
    b.ring();
    if (!b.wait()) state.SkipWithError("batch failed");
    expected = local[batch_size - 1] + (local[batch_size - 1] == expected ? 1 : 0);
    benchmark::DoNotOptimize(local.data());
  }
  const auto c = t.snapshot();
  state.SetItemsProcessed(static_cast<std::int64_t>(c.total_ops()));
  state.counters["round_trips_per_batch"] =
      static_cast<double>(c.round_trips) / static_cast<double>(state.iterations());
  state.counters["ns_per_op"] =
      benchmark::Counter(static_cast<double>(c.total_ops()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The baseline: the same word operations as process-local CPU atomics, no transport.
void bm_local_atomic(benchmark::State& state) {
  const bool cas = state.range(0) == 1;
  std::atomic<std::uint64_t> word{0};
  std::uint64_t expected = 0;
  for (auto _ : state) {
    if (cas) {
      std::uint64_t e = expected;
      word.compare_exchange_strong(e, e + 1);
      expected = e + 1;
    } else {
      benchmark::DoNotOptimize(word.load(std::memory_order_acquire));
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void args(benchmark::internal::Benchmark* b) {
  for (int kind : {0, 1}) {
    for (int procs : {1, 2}) {
      for (int size : {1, 4, 16, 64}) b->Args({size, procs, kind});
    }
  }
}

}  // namespace

BENCHMARK(bm_shm)->Name("shm")->Apply(args);
BENCHMARK(bm_local_atomic)->Name("local_atomic")->Arg(0)->Arg(1);

int main(int argc, char** argv) {
  return kvc_bench::run_with_table(argc, argv, [](const kvc_bench::ratio_reporter& r) {
    std::printf(
        "\nshm transport, ns per operation (x local = that / the local CPU atomic; round "
        "trips per batch from the counting decorator):\n");
    const char* kinds[] = {"READ 8 B", "CAS"};
    for (int kind : {0, 1}) {
      const double local = r.ns("local_atomic/" + std::to_string(kind));
      for (int procs : {1, 2}) {
        std::printf("  %-8s %d process%s:", kinds[kind], procs, procs == 1 ? " " : "es");
        for (int size : {1, 4, 16, 64}) {
          const std::string name = "shm/" + std::to_string(size) + "/" + std::to_string(procs) +
                                   "/" + std::to_string(kind);
          const double per_op = r.ns(name) / size;
          std::printf("  batch %2d %6.1f ns (x local %5.1f, %.0f RT)", size, per_op,
                      local > 0 ? per_op / local : 0.0, r.counter(name, "round_trips_per_batch"));
        }
        std::printf("\n");
      }
    }
  });
}
