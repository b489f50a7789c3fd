// bm_ssd_tier: the SSD tier's batches of block reads and writes, by I/O threads. A batch's copies
// are spread over the tier's I/O threads, so a batch of N blocks keeps up to io_threads reads in
// flight; io_threads = 1 runs them one after another, as every batch did before (the baseline,
// same run).
//
//   load/T/N    a batch of N random blocks of 64 KiB read from the file into host memory
//   store/T/N   the same, written
//
// T I/O threads. O_DIRECT (the host buffers are 4 KiB aligned), so the device, not the page
// cache, answers. The file (64 MiB) lies in $KVC_BENCH_DIR, /var/tmp by default: put it on the
// device to measure. Counters: blocks/s and bytes/s.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../tests/support/unique_name.hpp"
#include "kvc/pool/ssd_tier.hpp"
#include "support/ratio_reporter.hpp"

namespace {

constexpr std::size_t bb = 64 << 10;
constexpr std::size_t slots = 1024;
constexpr long threads[] = {1, 2, 4, 8};
constexpr long batch_sizes[] = {16, 64};

struct aligned_free {
  void operator()(std::byte* p) const noexcept { std::free(p); }
};

std::filesystem::path bench_dir() {
  const char* d = std::getenv("KVC_BENCH_DIR");
  return d != nullptr && *d != '\0' ? std::filesystem::path(d) : std::filesystem::path("/var/tmp");
}

// A tier of `io_threads` threads on a file of `slots` written blocks, and host buffers for a batch.
struct fixture {
  std::filesystem::path path;
  std::unique_ptr<kvc::ssd_tier> tier;
  std::unique_ptr<std::byte, aligned_free> host;
  std::vector<std::uint32_t> written;

  fixture(unsigned io_threads, std::size_t batch) {
    path = bench_dir() / kvc_test::unique_name("kvc-bm-ssd");
    kvc::ssd_tier_config cfg;
    cfg.path = path.string();
    cfg.block_bytes = bb;
    cfg.blocks = slots;
    cfg.io_threads = io_threads;
    auto t = kvc::ssd_tier::open(cfg);
    if (!t) {
      std::fprintf(stderr, "ssd_tier::open: %s\n", t.message().c_str());
      std::abort();
    }
    tier = std::move(*t);
    host.reset(static_cast<std::byte*>(std::aligned_alloc(4096, batch * bb)));
    for (std::size_t i = 0; i < batch * bb; ++i) host.get()[i] = static_cast<std::byte>(i * 31);
    for (std::size_t s = 0; s < slots; ++s) written.push_back(*tier->allocate());
    for (std::size_t first = 0; first < slots; first += batch) {
      std::vector<kvc::block_copy<std::uint32_t>> copies;
      for (std::size_t i = 0; i < batch && first + i < slots; ++i) {
        copies.push_back({written[first + i], host.get() + i * bb});
      }
      move(kvc::copy_direction::from_host, copies);
    }
  }
  ~fixture() {
    tier.reset();
    std::filesystem::remove(path);
  }
  void move(kvc::copy_direction dir, const std::vector<kvc::block_copy<std::uint32_t>>& copies) {
    auto job = std::make_shared<kvc::copy_job>();
    if (auto ok = tier->copy(dir, copies, job); !ok) {
      std::fprintf(stderr, "copy: %s\n", ok.message().c_str());
      std::abort();
    }
    job->seal();
    if (auto ok = job->wait(); !ok) {
      std::fprintf(stderr, "copy: %s\n", ok.message().c_str());
      std::abort();
    }
  }
};

void run(benchmark::State& state, kvc::copy_direction dir) {
  const auto io_threads = static_cast<unsigned>(state.range(0));
  const auto n = static_cast<std::size_t>(state.range(1));
  fixture f(io_threads, n);
  if (!f.tier->direct()) state.SetLabel("buffered (no O_DIRECT here)");
  std::mt19937_64 rng(7);
  std::vector<kvc::block_copy<std::uint32_t>> copies(n);
  for (auto _ : state) {
    state.PauseTiming();
    for (std::size_t i = 0; i < n; ++i)
      copies[i] = {f.written[rng() % slots], f.host.get() + i * bb};
    state.ResumeTiming();
    f.move(dir, copies);
  }
  const auto moved = static_cast<std::size_t>(state.iterations()) * n;
  state.counters["blocks/s"] =
      benchmark::Counter(static_cast<double>(moved), benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<std::int64_t>(moved * bb));
}

void load(benchmark::State& state) { run(state, kvc::copy_direction::to_host); }
void store(benchmark::State& state) { run(state, kvc::copy_direction::from_host); }

BENCHMARK(load)
    ->ArgsProduct({{threads, threads + 4}, {batch_sizes, batch_sizes + 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(store)
    ->ArgsProduct({{threads, threads + 4}, {batch_sizes, batch_sizes + 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void print_table(const kvc_bench::ratio_reporter& r) {
  std::printf("\nbatch time against one I/O thread (the queue depth every batch had before)\n");
  std::printf("%8s %8s %14s %14s %14s %14s\n", "threads", "blocks", "load us", "load x1/xT",
              "store us", "store x1/xT");
  for (long n : batch_sizes) {
    const std::string tail = "/" + std::to_string(n) + "/real_time";
    const double load1 = r.ns("load/1" + tail), store1 = r.ns("store/1" + tail);
    for (long t : threads) {
      const std::string name = "/" + std::to_string(t) + tail;
      const double l = r.ns("load" + name), s = r.ns("store" + name);
      std::printf("%8ld %8ld %14.1f %14.2f %14.1f %14.2f\n", t, n, l / 1e3, l > 0 ? load1 / l : 0.0,
                  s / 1e3, s > 0 ? store1 / s : 0.0);
    }
  }
}

}  // namespace

int main(int argc, char** argv) { return kvc_bench::run_with_table(argc, argv, print_table); }
