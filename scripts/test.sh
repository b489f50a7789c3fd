#!/usr/bin/env bash
# Builds kvc with its tests, examples and benchmarks and runs every test (ctest), installing
# the Debian packages it needs first. Warnings are errors.
#
#   scripts/test.sh                          the test command (README, CI)
#   KVC_SANITIZE=address,undefined scripts/test.sh   the same under sanitizers
#                                            (build-sanitize-address-undefined/; thread works too)
#   KVC_BUILD_DIR=dir                        build somewhere else
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

jobs=$(nproc)
cmake_args=(-G Ninja -DKVC_WARNINGS_AS_ERRORS=ON)
if [ -n "${KVC_SANITIZE:-}" ]; then
  build=${KVC_BUILD_DIR:-build-sanitize-${KVC_SANITIZE//,/-}}
  # -O1 keeps sanitized runs of the trace and stress tests to minutes. GCC 12's
  # -Wmaybe-uninitialized misfires on sanitizer-instrumented standard headers (<regex>).
  flags="-O1 -fsanitize=${KVC_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all"
  flags+=" -Wno-maybe-uninitialized"
  cmake_args+=(-DCMAKE_BUILD_TYPE=Debug -DKVC_BUILD_BENCHMARKS=OFF -DKVC_BUILD_FUZZERS=OFF
              "-DCMAKE_CXX_FLAGS=${flags}")
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
else
  build=${KVC_BUILD_DIR:-build}
  cmake_args+=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVC_BUILD_BENCHMARKS=ON)
fi

# A test that hangs fails after 5 minutes, with its output, instead of holding the run (most take
# seconds; the longest have deadlines of their own, at most 150 s). Tests with a TIMEOUT of their
# own keep it.
ctest_args=(--timeout 300)
if [ -n "${KVC_SANITIZE:-}" ]; then
  # Sanitizer builds skip what the plain build covers and sanitizers add nothing to: the
  # soft-RoCE guest (label rxe), the packaging consumers (consumer) and the libFuzzer target
  # (not built: it has ASan and UBSan of its own). The trace replay is single-threaded:
  # ThreadSanitizer has nothing to check there.
  ctest_args+=(-LE 'rxe|consumer')
  [ "$KVC_SANITIZE" = thread ] && ctest_args+=(-E '^trace_replay$')
fi

cmake -S . -B "$build" "${cmake_args[@]}"
cmake --build "$build" -j "$jobs"

# Shared-memory segments the run leaves behind are a leak, and on this machine they outlive the
# run: scripts/shm-leaks.sh lists them and fails the run, whether or not ctest passed.
scripts/shm-leaks.sh /dev/shm -- ctest --test-dir "$build" --output-on-failure -j "$jobs" \
  "${ctest_args[@]}"
