#!/usr/bin/env bash
# kvc's main job on its embedded default: generates a trace (kvc-tracegen), starts a memory node
# (kvc-memnode on shared memory), replays the trace through two engine instances, each a cache
# manager with its own device and host tiers sharing the node (kvc-replay), and prints the
# report: the trace's analysis, then hit ratio per tier, round trips and bytes per lookup, lookup
# latency and bytes moved. Installs the Debian packages it needs first.
#
#   scripts/demo.sh               # the embedded default: a generated trace of 3,000 requests
#   scripts/demo.sh TRACE.jsonl   # your own Mooncake-format trace instead
#
# Charts of the run go to build-demo/demo-hit-ratio.svg and build-demo/demo-latency-cdf.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${KVC_BUILD_DIR:-build-demo}
mkdir -p "$build"
log="$build/demo-build.log"
# Quiet on success; on failure, the whole build log.
if ! { cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVC_BUILD_TESTS=OFF \
         -DKVC_BUILD_EXAMPLES=ON &&
       cmake --build "$build" -j "$(nproc)" --target kvc-tracegen kvc-memnode kvc-replay; } \
       >"$log" 2>&1; then
  cat "$log" >&2
  echo "kvc demo: the build failed (log above, also in $log)" >&2
  exit 1
fi
bin="$build/examples"

trace=${1:-}
if [[ -z "$trace" ]]; then
  trace="$build/demo-trace.jsonl"
  "$bin/tracegen/kvc-tracegen" --requests 3000 --seed 1 -o "$trace"
  echo "kvc demo: generated $trace (3,000 requests: chat, RAG and agent sessions)"
fi

# The memory node: a shm segment of its own name, a free port, a random secret (in the
# environment, never on a command line), stopped on every way out.
export KVC_SECRET
KVC_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
ready="$build/demo-memnode.port"
rm -f "$ready"
"$bin/memnode/kvc-memnode" --name "/kvc-demo-$$-$RANDOM$RANDOM" --size 64M --block-bytes 1K \
  --port 0 --ready-file "$ready" >"$build/demo-memnode.log" 2>&1 &
node=$!
trap 'kill "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  [[ -s "$ready" ]] && break
  if ! kill -0 "$node" 2>/dev/null; then
    cat "$build/demo-memnode.log" >&2
    echo "kvc demo: the memory node did not start (log above)" >&2
    exit 1
  fi
  sleep 0.05
done
[[ -s "$ready" ]] || { echo "kvc demo: the memory node is not serving after 10 s" >&2; exit 1; }
echo "kvc demo: $(head -n 1 "$build/demo-memnode.log")"
echo

"$bin/replay/kvc-replay" "$trace" --engines 2 --memnode "127.0.0.1:$(cat "$ready")" \
  --capacity 256 --policy lru --block-bytes 1K --plot "$build/demo"
echo
echo "kvc demo: charts in $build/demo-hit-ratio.svg and $build/demo-latency-cdf.svg;"
echo "          kvc-replay --help for sweeps over capacity and policy, more engines, trace time."
