#!/usr/bin/env bash
# check-format.sh - the C, CUDA and header lines changed since BASE must be formatted as
# .clang-format says (git clang-format checks the changed lines only, so files written before
# the check keep their layout until they are edited; `/* clang-format off */` regions, like the
# option table, are left alone).
#
#   .ci/check-format.sh [BASE]
# BASE (or $DDTRAIN_FORMAT_BASE): a commit. By default, what a branch adds to main (its
# merge-base with origin/main, or main), and on main itself the last landing: the first
# parent of HEAD, so a merged branch is checked whole. Installs clang-format if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v git-clang-format >/dev/null || launch/install-deps.sh format
base=${1:-${DDTRAIN_FORMAT_BASE:-}}
if [[ -z $base ]]; then
  head=$(git rev-parse HEAD)
  for ref in origin/main main; do
    if git rev-parse -q --verify "$ref^{commit}" >/dev/null; then
      fork=$(git merge-base HEAD "$ref" || true)
      [[ -n $fork && $fork != "$head" ]] && base=$fork
      break
    fi
  done
fi
if [[ -z $base ]]; then
  if ! git rev-parse -q --verify 'HEAD^1^{commit}' >/dev/null; then
    echo "format: no earlier commit to compare with; nothing checked"
    exit 0
  fi
  base=HEAD^1
fi

files=$(git diff --name-only --diff-filter=ACMR "$base" -- '*.c' '*.h' '*.cu' '*.cuh')
echo "format: the lines changed since $(git rev-parse --short "$base") in $(wc -w <<<"$files") C/CUDA file(s)"
[[ -n $files ]] || exit 0
# shellcheck disable=SC2086 # one path per word (the tree's paths hold no spaces)
diff=$(git clang-format --diff --extensions c,h,cu,cuh "$base" -- $files)
if [[ $diff == diff* ]]; then
  printf '%s\n' "$diff"
  echo
  echo "format: these files have changed lines that are not formatted as .clang-format says:" >&2
  grep '^+++ b/' <<<"$diff" | sed 's|^+++ b/|  |' >&2
  echo "format: to fix them, stage the changes (git add), run" \
    "\`git clang-format $(git rev-parse --short "$base")\` (it reformats only the lines" \
    "changed since then) and commit the result" >&2
  exit 1
fi
echo "format: ok"
