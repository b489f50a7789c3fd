#!/usr/bin/env bash
# Runs a command and fails when it leaves kvc shared-memory segments behind: the `kvc-*` entries
# of DIR (/dev/shm on Linux) that were not there before it ran are listed on stderr and make the
# exit status 1, whether or not the command succeeded; otherwise the status is the command's.
# On this machine a segment outlives the process that leaked it, so a leak would otherwise show
# up only sessions later, as a name a later run cannot create.
#
#   scripts/shm-leaks.sh /dev/shm -- ctest --test-dir build
#
# A child still exiting removes its segment: the check looks again for up to 4 s before it
# reports one. Any other kvc run on the machine at the same time would be blamed for its own
# segments. Tested by tests/scripts/shm_leaks_test.sh.
set -uo pipefail
if [ $# -lt 3 ] || [ "$2" != -- ]; then
  echo "usage: $0 DIR -- COMMAND [ARG...]" >&2
  exit 2
fi
dir=$1
shift 2

segments() {
  { find "$dir" -maxdepth 1 -name 'kvc-*' -printf '%f\n' 2>/dev/null || true; } | sort
}
before=$(segments)
status=0
"$@" || status=$?
left=
for wait in 0 1 1 1 1; do
  sleep "$wait"
  left=$(comm -13 <(echo "$before") <(segments) | sed '/^$/d')
  [ -z "$left" ] && break
done
if [ -n "$left" ]; then
  echo "the run left shared-memory segments behind in $dir:" >&2
  echo "$left" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
