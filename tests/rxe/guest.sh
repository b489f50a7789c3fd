#!/bin/sh
# Runs inside the soft-RoCE QEMU guest (scripts/rxe-vm/run.sh): the verbs transport's
# conformance suite against in-process memory nodes, then kvc-memnode as its own process with a
# client of it, then kvc-replay with memory nodes over verbs, all over the rxe0 device.
set -e
cd /kvc
ulimit -l unlimited 2>/dev/null || true
./kvc_verbs_tests "~[memnode]"
export KVC_SECRET=rxe-guest-secret
./kvc-memnode --transport verbs --size 16M --port 7300 --ready-file /tmp/memnode.port > /tmp/memnode.log 2>&1 &
memnode=$!
i=0
while [ ! -s /tmp/memnode.port ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
cat /tmp/memnode.log
KVC_MEMNODE_PORT=$(cat /tmp/memnode.port) ./kvc_verbs_tests "[memnode]"
kill -TERM $memnode
wait $memnode
cat /tmp/memnode.log
grep -q "stopping on SIGTERM after" /tmp/memnode.log
# kvc-replay over verbs: a generated trace replayed by two engines sharing a memory node it
# starts itself (kvc-memnode --transport verbs, beside it), one run per capacity; it exits 1 if a
# request failed, and the node must have served blocks.
if [ -x ./kvc-replay ] && [ -x ./kvc-tracegen ]; then
  ./kvc-tracegen --requests 150 --seed 3 -o /tmp/trace.jsonl
  ./kvc-replay /tmp/trace.jsonl --transport verbs --capacity 32,256 --policy lru --sequential \
    --block-bytes 1K --json > /tmp/replay.json
  # Two runs: each with no failed request and blocks served by the node (nlohmann sorts keys:
  # "remote" inside "hits" is a count, the top-level "remote" is true).
  [ "$(grep -cE '"errors": 0,' /tmp/replay.json)" -eq 2 ]
  [ "$(grep -cE '"remote": [1-9]' /tmp/replay.json)" -eq 2 ]
  echo "rxe guest: kvc-replay over verbs passed"
fi
echo "rxe guest: all passed"
