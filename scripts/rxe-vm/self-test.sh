#!/usr/bin/env bash
# Self-test of the rxe VM runner: boots the guest and runs smoke.sh (ibv_devices, ibv_devinfo and
# an RC ping-pong between two processes on the guest's rxe0). Extra arguments go to run.sh
# (e.g. --timeout 600). Exit status: run.sh's (0 pass, 77 skip, 124 timeout, other fail).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$here/lib.sh"

tools=(ibv_rc_pingpong ibv_devices ibv_devinfo)
have_tools() { for t in "${tools[@]}"; do command -v "$t" >/dev/null 2>&1 || return 1; done; }
if ! have_tools; then
  rxe_vm_install ibverbs-utils ||
    rxe_vm_skip "ibv_rc_pingpong/ibv_devices/ibv_devinfo missing (Debian package ibverbs-utils); cannot install: $RXE_VM_INSTALL_ERROR"
  have_tools || rxe_vm_skip "ibverbs-utils installed but ${tools[*]} still not on PATH"
fi

start=$(date +%s)
rc=0
"$here/run.sh" "$@" "$here/smoke.sh" "$(command -v ibv_rc_pingpong)" "$(command -v ibv_devices)" \
  "$(command -v ibv_devinfo)" || rc=$?
case $rc in
  0) echo "rxe-vm self-test: PASS ($(($(date +%s) - start))s)" ;;
  77) echo "rxe-vm self-test: SKIP (see the message above)" ;;
  124) echo "rxe-vm self-test: FAIL (timeout)" ;;
  *) echo "rxe-vm self-test: FAIL (exit $rc)" ;;
esac
exit "$rc"
