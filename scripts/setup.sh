#!/usr/bin/env bash
# Installs every Debian package kvc needs to build, test and benchmark.
# Idempotent: when everything is present it does nothing (no apt-get at all).
# Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  # toolchain
  g++ cmake ninja-build pkg-config git make
  # library dependencies
  libxxhash-dev libboost-dev libibverbs-dev librdmacm-dev
  # programs
  libcli11-dev libcpp-httplib-dev libsimdjson-dev
  # tests and benchmarks
  catch2 libbenchmark-dev libssl-dev xxhash nlohmann-json3-dev
  # the metadata benchmark against Redis (benchmarks/metadata/)
  redis-server libhiredis-dev
  # fuzzing (libFuzzer)
  clang-14 libclang-rt-14-dev
  # the soft-RoCE guest (scripts/rxe-vm/): the kernel image is fetched with apt-get download
  qemu-system-x86 busybox-static cpio ibverbs-providers ibverbs-utils iproute2 xz-utils
  # style checks
  clang-format-14 clang-tidy-14
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "kvc setup: installing ${missing[*]}" >&2
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "kvc setup: missing packages (${missing[*]}) and not root; run this script as root" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "kvc setup: done" >&2
