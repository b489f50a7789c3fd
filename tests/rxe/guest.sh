#!/bin/sh
# Runs inside the soft-RoCE QEMU guest (scripts/rxe-vm/run.sh): the verbs transport's
# conformance suite against in-process memory nodes, then kvc-memnode as its own process with a
# client of it, both over the rxe0 device.
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
echo "rxe guest: all passed"
