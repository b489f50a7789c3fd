#!/usr/bin/env bash
# Fails when a C++ file of the project (tracked, or new and not ignored: a file not added yet is
# checked too) differs from what clang-format 14 makes of it.
# scripts/check-format.sh --fix rewrites the files instead.
set -euo pipefail
cd "$(dirname "$0")/.."
clang_format=$(command -v clang-format-14 || command -v clang-format)
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.hpp' '*.cpp' '*.h' '*.cc')
if [ "${1:-}" = "--fix" ]; then
  "$clang_format" -i "${files[@]}"
else
  # Compare the formatted text itself: clang-format 14's --dry-run reports a false violation at
  # the closing comment of a nested inline namespace ("}  // namespace kvc::inline v0").
  bad=0
  for f in "${files[@]}"; do
    if ! "$clang_format" --style=file "$f" | diff -u --label "$f" --label "$f (formatted)" "$f" -; then
      bad=$((bad + 1))
    fi
  done
  if [ "$bad" -ne 0 ]; then
    echo "format: $bad of ${#files[@]} files differ from clang-format; run scripts/check-format.sh --fix" >&2
    exit 1
  fi
  echo "format: ${#files[@]} files clean"
fi
