#!/usr/bin/env bash
# Fails when a tracked C++ file differs from what clang-format 14 makes of it.
# scripts/check-format.sh --fix rewrites the files instead.
set -euo pipefail
cd "$(dirname "$0")/.."
clang_format=$(command -v clang-format-14 || command -v clang-format)
mapfile -t files < <(git ls-files '*.hpp' '*.cpp' '*.h' '*.cc')
if [ "${1:-}" = "--fix" ]; then
  "$clang_format" -i "${files[@]}"
else
  "$clang_format" --dry-run --Werror "${files[@]}"
  echo "format: ${#files[@]} files clean"
fi
