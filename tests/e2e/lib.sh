# lib.sh - shared harness for ddtrain's end-to-end tests (sourced by tests/e2e/*.sh).
#
# Provides: $DDTRAIN (the binary), $WORK (a scratch directory removed at exit), ranks N ARGS
# (runs ddtrain under mpirun with N ranks), expect_ok / expect_fail checks that count
# results, and finish, which prints "N passed, M failed" and sets the exit code.
#
# The GPUs are hidden (CUDA_VISIBLE_DEVICES=-1: --device auto resolves to the CPU), as ctest
# hides them from every test but the GPU ones (tests/CMakeLists.txt says why), so a script
# run by hand on a GPU node behaves as under ctest. A script that tests the GPU sets
# DDTRAIN_TEST_USES_GPU=1 before sourcing this file and sees the GPUs it was given.
set -uo pipefail
if [[ ${DDTRAIN_TEST_USES_GPU:-0} != 1 ]]; then
  export CUDA_VISIBLE_DEVICES=-1
fi

DDTRAIN=${DDTRAIN:?set DDTRAIN to the ddtrain binary}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3
H5TOOL="$PY $HERE/h5tool.py"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ddtrain-e2e.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# Tests are not about speed: one BLAS thread, no core binding (ranks may outnumber cores).
export OPENBLAS_NUM_THREADS=1
PASSED=0
FAILED=0
TIMEOUT=${DDTRAIN_TEST_TIMEOUT:-120}

ranks() {
  local n=$1
  shift
  timeout -k 5 "$TIMEOUT" mpirun -np "$n" --bind-to none "$DDTRAIN" "$@"
}

pass() { PASSED=$((PASSED + 1)); echo "ok: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }

# expect_ok NAME COMMAND...: the command exits 0.
expect_ok() {
  local name=$1
  shift
  if "$@" >"$WORK/out.txt" 2>&1; then
    local detail
    detail=$(tail -1 "$WORK/out.txt" | cut -c1-100)
    pass "$name${detail:+ [$detail]}"
  else
    fail "$name (exit $?)"
    tail -20 "$WORK/out.txt"
  fi
}

# expect_fail_all_ranks NAME NRANKS EXPECTED_CODE TEXT -- DDTRAIN_ARGS...
# Runs ddtrain on NRANKS ranks, each rank recording its own exit code; checks that every rank
# exited with EXPECTED_CODE, that stderr contains TEXT, that the message is printed once,
# and that the job ended within the timeout (no hang).
expect_fail_all_ranks() {
  local name=$1 n=$2 code=$3 text=$4
  shift 5
  rm -f "$WORK"/rank-exit.*
  local start=$SECONDS
  timeout -k 5 "$TIMEOUT" mpirun -np "$n" --bind-to none sh -c \
    '"$0" "$@"; echo $? > "'"$WORK"'/rank-exit.${OMPI_COMM_WORLD_RANK}"' "$DDTRAIN" "$@" \
    >"$WORK/out.txt" 2>"$WORK/err.txt"
  local mpirun_code=$?
  local problems=""
  [[ $mpirun_code -eq 124 || $mpirun_code -eq 137 ]] && problems+=" timed out (hang);"
  for ((r = 0; r < n; r++)); do
    local got
    got=$(cat "$WORK/rank-exit.$r" 2>/dev/null || echo missing)
    [[ "$got" == "$code" ]] || problems+=" rank $r exit $got (expected $code);"
  done
  grep -qF -- "$text" "$WORK/err.txt" || problems+=" stderr lacks '$text';"
  local count
  count=$(grep -c "ddtrain: error" "$WORK/err.txt")
  [[ $count -eq 1 ]] || problems+=" $count error lines (expected 1);"
  if [[ -z $problems ]]; then pass "$name ($((SECONDS - start)) s)"; else
    fail "$name:$problems"
    sed 's/^/    /' "$WORK/err.txt" | head -10
  fi
}

finish() {
  echo "$PASSED passed, $FAILED failed"
  [[ $FAILED -eq 0 ]]
}
