#!/usr/bin/env bash
# kvc's main job on its embedded default: builds the examples and runs the quickstart, which
# hashes a demo prompt into its block keys. Installs the Debian packages it needs first.
# Arguments are passed to kvc-quickstart (BLOCK_SIZE TOKEN...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${KVC_BUILD_DIR:-build-demo}
mkdir -p "$build"
log="$build/demo-build.log"
# Quiet on success; on failure, the whole build log.
if ! { cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVC_BUILD_TESTS=OFF \
         -DKVC_BUILD_EXAMPLES=ON &&
       cmake --build "$build" -j "$(nproc)" --target kvc-quickstart; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "kvc demo: the build failed (log above, also in $log)" >&2
  exit 1
fi
exec "$build/examples/quickstart/kvc-quickstart" "$@"
