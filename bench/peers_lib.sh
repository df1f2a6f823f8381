# peers_lib.sh - what bench/vs-peers-cnn and bench/vs-peers-gpt share (sourced, not run):
# prerequisites, the single-core SGEMM ceiling, one ddtrain run under mpirun, one peer run in
# its virtual environment (bench/peers-venv), and reading their JSON results.
#
# The caller sets: name (for messages), repo (the repository root, the working directory),
# ddtrain (the binary), work (a scratch directory it removes).

die() { echo "$name: $*" >&2; exit 1; }

peers_check_ddtrain() {
  [[ -x $ddtrain ]] || die "$ddtrain not found: build ddtrain first" \
    "(cmake -S . -B build && cmake --build build), or point \$DDTRAIN at the binary"
  command -v mpirun >/dev/null || die "mpirun not found (apt-get install openmpi-bin)"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
}

# peers_python FRAMEWORK: the python of FRAMEWORK's environment (installed on first use).
peers_python() { "$repo/bench/peers-venv" "$1" || die "no $1 environment (see above)"; }

# peers_gemm_ceiling: prints "GFLOP/s description" of one core's SGEMM: ddtrain's own gemm
# operation (OpenBLAS, one thread, the kernel ddtrain picks) on 1024 x 1024 x 1024 products,
# the forward and backward products of a 1024-wide MLP, best of 20 (bench/gemm.c).
peers_gemm_ceiling() {
  local gemm=${DDTRAIN_BENCH_GEMM:-$(dirname "$ddtrain")/bench/ddtrain_bench_gemm} line
  [[ -x $gemm ]] || die "$gemm not found (it is built with ddtrain)"
  line=$("$gemm" --model 1024-1024-1024-1024 --batch 1024 --repeats 20) ||
    die "$gemm failed"
  echo "$line" | sed -n 's/.* \([0-9.]*\) GFLOP\/s.*/\1/p' | tr '\n' ' '
  echo "$line" | sed -n 's/^gemm ceiling: \([^,]*\),.*/\1/p'
}

# peers_json FILE KEY...: prints the values of KEYs in the last JSON object of FILE whose
# "event" is "summary" (ddtrain's --metrics) or that has no "event" (a peer's line); a list
# (per-rank values) prints as its maximum, a missing key as "-".
peers_json() {
  /usr/bin/python3 - "$@" <<'EOF'
import json, sys
path, keys = sys.argv[1], sys.argv[2:]
found = None
for line in open(path):
    line = line.strip()
    if line.startswith("{"):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("event", "summary") == "summary":
            found = d
if found is None:
    sys.exit("no summary in %s" % path)
out = []
for k in keys:
    v = found.get(k, "-")
    if isinstance(v, list):
        v = max(v)
    out.append("-" if v is None else str(v))
print(" ".join(out))
EOF
}

# peers_run_ddtrain RANKS LOG METRICS ARG...: `ddtrain train ARG...` on RANKS ranks, one core
# each (as launch/ddtrain-mpirun binds them), writing --metrics METRICS; dies with the log's
# tail on failure.
peers_run_ddtrain() {
  local ranks=$1 log=$2 metrics=$3
  shift 3
  local bind=(--map-by core --bind-to core)
  ((ranks > $(nproc))) && bind=(--oversubscribe --bind-to none)
  rm -f "$metrics"
  mpirun -np "$ranks" "${bind[@]}" -x OPENBLAS_NUM_THREADS=1 "$ddtrain" train "$@" \
    --threads 1 --metrics "$metrics" --log-every 0 >"$log" 2>&1 || {
    tail -n 20 "$log" >&2; die "ddtrain failed on $ranks rank(s) (log above)"; }
}

# peers_run_peer FRAMEWORK LOG ARG...: bench/peer_train.py in FRAMEWORK's environment; its JSON
# line goes to LOG (with its messages).
peers_run_peer() {
  local framework=$1 log=$2 python
  shift 2
  python=$(peers_python "$framework")
  TF_CPP_MIN_LOG_LEVEL=2 "$python" "$repo/bench/peer_train.py" --framework "$framework" \
    --json "$@" >"$log" 2>&1 || {
    tail -n 20 "$log" >&2; die "the $framework peer failed (log above)"; }
}

# peers_fmt NUMBER [DECIMALS]: a number with thousands separators, or "-".
peers_fmt() {
  [[ $1 == - || -z $1 ]] && { echo -; return; }
  LC_ALL=C awk -v x="$1" -v d="${2:-0}" 'BEGIN {
    s = sprintf("%." d "f", x); i = index(s, "."); ip = i ? substr(s, 1, i - 1) : s
    fp = i ? substr(s, i) : ""; o = ""
    while (length(ip) > 3) { o = "," substr(ip, length(ip) - 2) o; ip = substr(ip, 1, length(ip) - 3) }
    print ip o fp }'
}
