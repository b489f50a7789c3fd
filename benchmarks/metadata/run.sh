#!/usr/bin/env bash
# The metadata benchmark in one go: builds kvc-metadata-bench, kvc-memnode and kvc-tracegen into
# build-metadata/ (Release), starts a redis-server and a kvc-memnode of its own on free loopback
# ports, runs every system on the same trace, prints the table and stops both servers.
#
#   benchmarks/metadata/run.sh                 a generated trace (kvc-tracegen, 4,000 requests)
#   benchmarks/metadata/run.sh TRACE           a Mooncake-format trace (JSON lines)
#   benchmarks/metadata/run.sh TRACE --json    options after the trace go to kvc-metadata-bench
#
# Environment: KVC_METADATA_BUILD (build directory, default build-metadata), KVC_METADATA_REQUESTS
# (requests of the generated trace, default 4000), KVC_METADATA_MODEL_RTT (the modelled NIC round
# trip of the kvc-remote nic-model row in microseconds, default 2; 0 leaves the row out),
# KVC_SKIP_SETUP=1 (do not run scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${KVC_METADATA_BUILD:-build-metadata}
requests=${KVC_METADATA_REQUESTS:-4000}

say() { echo "metadata bench: $*" >&2; }
die() {
  say "$*"
  exit 1
}

trace=
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  trace=$1
  shift
  [ -r "$trace" ] || die "cannot read the trace $trace"
  trace=$(cd "$(dirname "$trace")" && echo "$PWD/$(basename "$trace")")
fi

[ "${KVC_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
command -v redis-server >/dev/null 2>&1 ||
  die "redis-server not found (apt-get install redis-server, or run scripts/setup.sh)"
command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found (apt-get install redis-tools)"

# Build only what the benchmark needs; quiet on success, the whole log on failure.
mkdir -p "$build"
log="$build/metadata-build.log"
if ! { cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVC_BUILD_TESTS=OFF \
         -DKVC_BUILD_EXAMPLES=ON -DKVC_BUILD_BENCHMARKS=ON -DKVC_INSTALL=OFF &&
       cmake --build "$build" --target kvc-metadata-bench kvc-memnode kvc-tracegen; } \
     >"$log" 2>&1; then
  cat "$log" >&2
  die "the build failed (log above, also in $log)"
fi
bench=$build/benchmarks/metadata/kvc-metadata-bench
[ -x "$bench" ] || die "kvc-metadata-bench was not built (hiredis missing? see $log)"

if [ -z "$trace" ]; then
  trace=$root/$build/metadata-trace-$requests.jsonl
  if [ ! -s "$trace" ]; then
    say "generating $trace ($requests requests, seed 1)"
    "$build/examples/tracegen/kvc-tracegen" --requests "$requests" --seed 1 -o "$trace"
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kvc-metadata.XXXXXX")
redis_pid=
memnode_pid=
cleanup() {
  [ -z "$memnode_pid" ] || kill "$memnode_pid" 2>/dev/null || true
  [ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null || true
  [ -z "$memnode_pid" ] || wait "$memnode_pid" 2>/dev/null || true
  [ -z "$redis_pid" ] || wait "$redis_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# redis-server on a free port: try random ones until one answers PING.
redis_port=
for _ in 1 2 3 4 5 6 7 8; do
  port=$((20000 + RANDOM % 40000))
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$work" --logfile "$work/redis.log" &
  redis_pid=$!
  for _ in $(seq 50); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
      redis_port=$port
      break
    fi
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -z "$redis_port" ] || break
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=
done
if [ -z "$redis_port" ]; then
  cat "$work/redis.log" >&2 2>/dev/null || true
  die "redis-server did not start (log above)"
fi
say "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on port $redis_port"

# kvc-memnode: shm, sized for the trace by the benchmark itself (--plan), its own segment name.
plan_line=$("$bench" --plan "$trace") || die "cannot plan the memory node for $trace"
read -r -a plan <<<"$plan_line"
export KVC_SECRET
KVC_SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
"$build/examples/memnode/kvc-memnode" "${plan[@]}" --port 0 \
  --name "/$(basename "$work")" \
  --ready-file "$work/memnode.port" >"$work/memnode.log" 2>&1 &
memnode_pid=$!
for _ in $(seq 100); do
  [ ! -s "$work/memnode.port" ] || break
  kill -0 "$memnode_pid" 2>/dev/null || break
  sleep 0.1
done
if [ ! -s "$work/memnode.port" ]; then
  cat "$work/memnode.log" >&2
  die "kvc-memnode did not start (log above)"
fi
memnode_port=$(cat "$work/memnode.port")
say "kvc-memnode ${plan[*]} on port $memnode_port"

"$bench" "$trace" --redis "127.0.0.1:$redis_port" --memnode "127.0.0.1:$memnode_port" \
  --model-rtt "${KVC_METADATA_MODEL_RTT:-2}" "$@"
