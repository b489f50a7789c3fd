#!/bin/sh
# Guest script for scripts/rxe-vm/self-test.sh: runs inside the rxe VM (busybox sh, cwd /kvc,
# ibv_devices, ibv_devinfo and ibv_rc_pingpong copied to /kvc). Exits non-zero on any failure.
set -eu

step() { echo "== [$(cut -d" " -f1 /proc/uptime)s] $*"; }

step "rdma link / rdma dev"
rdma link show
rdma dev show

step "ibv_devices"
ibv_devices
ibv_devices | grep -q rxe0

step "ibv_devinfo -d rxe0"
ibv_devinfo -d rxe0
ibv_devinfo -d rxe0 | grep -q 'PORT_ACTIVE'

step "GID table (rxe0 port 1)"
# Pick the RoCE v2 GID that carries the netdev's IPv4 address (::ffff:a.b.c.d).
port=/sys/class/infiniband/rxe0/ports/1
gid_index=""
for g in "$port"/gids/*; do
  i=${g##*/}
  # builtin reads only: the table has hundreds of (mostly empty) entries and forks are slow under TCG
  read -r gid <"$g" 2>/dev/null || continue
  [ "$gid" = "0000:0000:0000:0000:0000:0000:0000:0000" ] && continue
  read -r type <"$port/gid_attrs/types/$i" 2>/dev/null || type="?"
  read -r ndev <"$port/gid_attrs/ndevs/$i" 2>/dev/null || ndev="?"
  echo "gid[$i] $gid type=$type ndev=$ndev"
  case "$gid" in
    0000:0000:0000:0000:0000:ffff:*)
      if [ "$type" = "RoCE v2" ] && [ -z "$gid_index" ]; then gid_index=$i; fi
      ;;
  esac
done
if [ -z "$gid_index" ]; then
  echo "smoke: no RoCE v2 IPv4 GID on rxe0" >&2
  exit 1
fi
echo "RoCEv2 IPv4 GID index: $gid_index"

step "devices and limits"
ls -l /dev/infiniband/
# shellcheck disable=SC3045  # busybox ash has ulimit -l
echo "ulimit -l: $(ulimit -l)"

step "ibv_rc_pingpong: server and client, two processes on rxe0"
ibv_rc_pingpong -d rxe0 -g "$gid_index" >/tmp/server.log 2>&1 &
server=$!
# Wait until the server listens on its TCP port 18515 (0x4853) before starting the client.
i=0
while ! grep -qiE ':4853 [0-9a-f]+:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$server" 2>/dev/null; then
    echo "smoke: ibv_rc_pingpong server did not start" >&2
    cat /tmp/server.log >&2
    exit 1
  fi
  sleep 0.1
done
client_rc=0
ibv_rc_pingpong -d rxe0 -g "$gid_index" 127.0.0.1 || client_rc=$?
server_rc=0
wait "$server" || server_rc=$?
echo "-- server output:"
cat /tmp/server.log
echo "client exit $client_rc, server exit $server_rc"
[ "$client_rc" -eq 0 ] && [ "$server_rc" -eq 0 ]
grep -q 'iters in' /tmp/server.log
echo "smoke: OK"
