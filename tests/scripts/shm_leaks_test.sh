#!/usr/bin/env bash
# scripts/shm-leaks.sh against a directory of its own: a clean run passes with the command's
# status, a leaked kvc-* entry fails the run and is named, whether or not the command failed,
# an entry removed within the check's grace is no leak, and other names are not its business.
#   shm_leaks_test.sh SCRIPT
set -uo pipefail
script=$1
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvc-shm-leaks-test.XXXXXX")
trap 'rm -rf "$dir"' EXIT
failures=0
expect() {  # expect STATUS NAME-IN-STDERR-OR-EMPTY -- COMMAND...
  local want=$1 named=$2
  shift 3
  local err status
  err=$("$script" "$dir" -- "$@" 2>&1 >/dev/null)
  status=$?
  if [ "$status" -ne "$want" ]; then
    echo "FAILED: '$*' gave status $status, expected $want (stderr: $err)"
    failures=$((failures + 1))
  fi
  if [ -n "$named" ] && [[ "$err" != *"$named"* ]]; then
    echo "FAILED: '$*' did not name $named (stderr: $err)"
    failures=$((failures + 1))
  fi
  if [ -z "$named" ] && [ -n "$err" ]; then
    echo "FAILED: '$*' reported something: $err"
    failures=$((failures + 1))
  fi
}

touch "$dir/kvc-there-before"  # not the run's: never blamed
expect 0 "" -- true
expect 3 "" -- sh -c 'exit 3'
expect 0 "" -- touch "$dir/other-name"                         # not a kvc segment
expect 1 kvc-leaked-1 -- touch "$dir/kvc-leaked-1"             # a leak fails a passing run
expect 4 kvc-leaked-2 -- sh -c "touch '$dir/kvc-leaked-2'; exit 4"  # and keeps a failure's status
rm -f "$dir"/kvc-leaked-*
# A child that removes its segment a moment after the command returned: no leak.
expect 0 "" -- sh -c "touch '$dir/kvc-late'; (sleep 1; rm -f '$dir/kvc-late') >/dev/null 2>&1 &"
expect 2 usage -- # no command at all
if [ "$("$script" 2>&1)" = "" ]; then
  echo "FAILED: no usage message without arguments"
  failures=$((failures + 1))
fi
[ "$failures" -eq 0 ] && echo "shm-leaks: all cases passed"
exit $((failures > 0))
