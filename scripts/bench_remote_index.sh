#!/usr/bin/env bash
# Runs bm_remote_index as recorded in docs/benchmarks.md ("Remote index (issue 5)"): the
# machine-independent counts once (they do not vary between runs; inserts and evictions change
# their index, so repeating them would measure a fuller index), then the shm rates and latencies
# as medians of 3 repetitions.
# Usage: scripts/bench_remote_index.sh [build-dir]   (default build-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-bench}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVC_BUILD_FUZZERS=OFF \
  -DKVC_BUILD_BENCHMARKS=ON >/dev/null
ninja -C "$build" bm_remote_index
bm="$build/benchmarks/bm_remote_index"
"$bm" '--benchmark_filter=^(lookup|lookup_many|probe|bsearch|insert|evict)/' \
  --benchmark_min_time=0.3
"$bm" '--benchmark_filter=^(lookup_rate|insert_rate|latency|latency_baseline)/' --benchmark_repetitions=3
