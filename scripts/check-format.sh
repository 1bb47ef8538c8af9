#!/usr/bin/env bash
# Fails if any tracked (or new, not ignored) C++ file is not clang-format clean.
set -euo pipefail
cd "$(dirname "$0")/.."
files=$( (git ls-files '*.cc' '*.h'; git ls-files --others --exclude-standard '*.cc' '*.h') | sort -u)
bad=0
for f in $files; do
  [ -f "$f" ] || continue
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not clang-format clean: $f (run: make format)"
    bad=1
  fi
done
[ "$bad" -eq 0 ] && echo "clang-format: $(echo "$files" | wc -w) files clean"
exit "$bad"
