#!/bin/sh
# ctest's smoke run of kvc-metadata-bench without Redis: a small generated trace through the radix
# tree and kvc's remote index over a kvc-memnode of its own (its modelled-NIC row too); fails
# unless every system found the cached blocks the independent count expects. No timing is
# asserted.
#   smoke.sh KVC_TRACEGEN KVC_MEMNODE KVC_METADATA_BENCH
set -eu
tracegen=$1 memnode=$2 bench=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/kvc-metadata-smoke.XXXXXX")
pid=
cleanup() {
  [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
"$tracegen" --requests 300 --seed 2 -o "$work/t.jsonl"
# shellcheck disable=SC2046 # the plan is a list of options
KVC_SECRET=smoke "$memnode" $("$bench" --plan "$work/t.jsonl") --port 0 \
  --name "/$(basename "$work")" --ready-file "$work/port" --parent-pid $$ >"$work/memnode.log" 2>&1 &
pid=$!
i=0
while [ ! -s "$work/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -s "$work/port" ] || { cat "$work/memnode.log"; exit 1; }
KVC_SECRET=smoke "$bench" "$work/t.jsonl" --systems radix,kvc --model-rtt 1 \
  --memnode "127.0.0.1:$(cat "$work/port")" >"$work/out.txt"
cat "$work/out.txt"
grep -q "every system found the" "$work/out.txt"
grep -q "^kvc-remote nic-model " "$work/out.txt"
