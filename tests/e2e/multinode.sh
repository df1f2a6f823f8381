#!/usr/bin/env bash
# multinode.sh - ddtrain across nodes: two emulated nodes on this machine
# (launch/local-cluster/cluster.sh: a network namespace and host name per node, veth links to
# a bridge), so ranks on different nodes talk over TCP and ranks on one node over shared
# memory, launched the way clusters launch them:
#   - mpirun --hostfile with the cluster's rsh agent, 2 nodes x 1 rank and 2 nodes x 2 ranks,
#     from the head and from the first node: the same weights as 1 rank (within rounding, as
#     dp_equivalence.sh), and the gradients did cross the links (tc byte counters);
#   - each rank's host and local rank, and the device line, on each node, for both ways of
#     placing ranks (by slot, by node), and limits given per local rank applied on each node;
#   - a rank killed on the remote node ends the job on every node, with Open MPI's message;
#   - a checkpoint written by ranks on two nodes and resumed by another launch (srun when
#     Slurm is there), bit for bit the uninterrupted run;
#   - srun -N 2 --mpi=pmix (one slurmd per node): one world of 4 ranks over both nodes, and
#     the multi-node batch template submitted with sbatch --nodes=2;
#   - the interfaces MPI uses, chosen as on a real cluster (btl_tcp_if_include and
#     oob_tcp_if_include by subnet);
#   - bench/scaling --nodes, small, on a cluster of its own beside this one: the bytes each
#     link carried per step (tc counters) are what the all-reduce in use should move, link by
#     link and both ways, give or take the TCP/IP headers; bench/project --nodes predicts it.
# The cluster is removed at the end whatever happens, and no namespace, link or process of it
# may remain. Skipped (exit 77) where namespaces cannot be made: not root, no iproute2, or no
# permission (a container without CAP_SYS_ADMIN/CAP_NET_ADMIN). The Slurm checks are reported
# skipped where slurm-wlm and munge cannot be installed.
source "$(dirname "$0")/lib.sh"
REPO=$(cd "$HERE/../.." && pwd)
CLUSTER_SH=$REPO/launch/local-cluster/cluster.sh

if [[ $(id -u) -ne 0 ]]; then
  echo "skipped: not root (network namespaces need it)"
  exit 77
fi
"$REPO/launch/install-deps.sh" cluster >"$WORK/install.txt" 2>&1 || true
for tool in ip tc nsenter unshare; do
  command -v $tool >/dev/null || {
    echo "skipped: $tool not found and could not be installed: $(tail -1 "$WORK/install.txt")"
    exit 77
  }
done
probe=ddt-probe-$$
if ! ip netns add $probe 2>"$WORK/probe.txt"; then
  echo "skipped: cannot make a network namespace here: $(head -1 "$WORK/probe.txt")"
  exit 77
fi
ip netns delete $probe
slurm=1
if ! "$REPO/launch/install-deps.sh" slurm >"$WORK/install-slurm.txt" 2>&1; then
  slurm=0
  slurm_why="slurm-wlm and munge cannot be installed: $(tail -1 "$WORK/install-slurm.txt")"
fi
# Nothing from an outer Slurm job may leak into this cluster's commands.
# shellcheck disable=SC2046 # names of variables
unset $(compgen -e | grep '^SLURM_') 2>/dev/null

CLUSTER=$WORK/cluster
cluster() { "$CLUSTER_SH" "$1" --dir "$CLUSTER" "${@:2}"; }
# The namespaces are named after the directory: what must be gone at the end.
cleanup() {
  "$CLUSTER_SH" stop --dir "$CLUSTER" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

start=$SECONDS
extra=()
[[ $slurm -eq 1 ]] && extra=(--slurm)
if ! timeout -k 5 60 "$CLUSTER_SH" start 2 "${extra[@]}" --dir "$CLUSTER" >"$WORK/start.txt" 2>&1; then
  fail "2-node cluster did not start"
  sed 's/^/    /' "$WORK/start.txt" | tail -20
  finish
  exit
fi
pass "2 nodes up in $((SECONDS - start)) s$([[ $slurm -eq 1 ]] && echo ', with Slurm')"
read -r _ N0 _ < <(sed -n 1p "$CLUSTER/nodes")
read -r _ N1 _ < <(sed -n 2p "$CLUSTER/nodes")
PREFIX=${N0%-n0} # the namespaces: $PREFIX-head, $PREFIX-n0, $PREFIX-n1

# Ranks may outnumber the machine's cores (each node claims them all, and Open MPI cannot
# tell): waiting ranks must yield, or they starve the ranks they wait for.
# The rsh agent starts each node's daemon in a fresh environment: the GPUs' hiding (lib.sh)
# travels with -x, as the BLAS setting does.
MPI_ARGS=(--hostfile "$CLUSTER/hostfile" --mca plm_rsh_agent "$CLUSTER/rsh" --bind-to none
          --mca mpi_yield_when_idle 1 -x OPENBLAS_NUM_THREADS=1 -x CUDA_VISIBLE_DEVICES)
# on_cluster NODE NP MAPPING [--mca NAME VALUE]... DDTRAIN_ARGS...: mpirun started on NODE
# (head, 0, 1), NP ranks placed --map-by MAPPING over the hostfile's two nodes.
on_cluster() {
  local node=$1 np=$2 map=$3 mca=()
  shift 3
  while [[ ${1:-} == --mca ]]; do
    mca+=("$1" "$2" "$3")
    shift 3
  done
  timeout -k 5 "$TIMEOUT" "$CLUSTER_SH" exec --dir "$CLUSTER" "$node" \
    mpirun "${MPI_ARGS[@]}" "${mca[@]}" -np "$np" --map-by "$map" "$DDTRAIN" "$@"
}
# link_bytes: the bytes both links carried so far, both directions, summed.
link_bytes() { cluster counters | awk '{ s += $2 + $3 } END { print s + 0 }'; }

"$DDTRAIN" synth -o "$WORK/train.h5" --rows 2048 --features 32 --classes 4 --seed 7 --shards 2 \
  >/dev/null || { fail "synth"; finish; exit; }
common=(train --data "$WORK/train-*.h5" --model 32-64-relu-dropout0.1-32-tanh-4 --global-batch 64
        --steps 20 --seed 3 --log-every 0 --optimizer sgd --lr 0.1 --momentum 0.9)
# 4 (32x64 + 64 + 64x32 + 32 + 32x4 + 4) bytes of gradients, all-reduced once per step.
grad_bytes=$((4 * (32 * 64 + 64 + 64 * 32 + 32 + 32 * 4 + 4)))

ranks 1 "${common[@]}" --micro-batch 64 --save "$WORK/one.h5" >"$WORK/one.log" 2>&1 ||
  { fail "1 rank: training failed"; tail -5 "$WORK/one.log"; }
# The noise floor the N-rank runs are held to (as in dp_equivalence.sh): the 1-rank run again
# with its learning rate moved by 2^-22 of itself; h5tool compare-floor's bar is max(1e-5, 10 x
# how far it lands from one.h5), so it follows what rounding does on this CPU.
floor_args=("${common[@]}")
for i in "${!floor_args[@]}"; do
  [[ ${floor_args[i]} == --lr ]] &&
    floor_args[i+1]=$($PY -c "import sys; print(repr(float(sys.argv[1]) * (1 + 2 ** -22)))" \
      "${floor_args[i+1]}")
done
ranks 1 "${floor_args[@]}" --micro-batch 64 --save "$WORK/one-floor.h5" >"$WORK/one-floor.log" 2>&1 ||
  { fail "1 rank, the noise floor's run: training failed"; tail -5 "$WORK/one-floor.log"; }
floor=("$WORK/one-floor.h5" "$WORK/one.h5")

# check_rank_lines LOG EXPECTED...: rank 0's "rank R of N on HOST, local rank L: DEVICE" lines
# name, in rank order, the "HOST:L" pairs given, each with a device.
check_rank_lines() {
  local log=$1 name=$2
  shift 2
  local got
  got=$(sed -n 's/^  rank \([0-9]*\) of [0-9]* on \([^,]*\), local rank \([0-9]*\): \(cpu\|cuda\).*/\2:\3/p' "$log" |
    tr '\n' ' ')
  if [[ $got == "$* " ]]; then pass "$name: hosts and local ranks ${got% }, each with its device line"; else
    fail "$name: rank lines say '$got', expected '$* '"
    grep '^  rank ' "$log" | sed 's/^/    /'
  fi
}

# --- mpirun --hostfile: 2 nodes x 1 rank from the head, 2 nodes x 2 ranks from node 0 --------
before=$(link_bytes)
on_cluster head 2 node "${common[@]}" --micro-batch 32 --save "$WORK/2x1.h5" >"$WORK/2x1.log" 2>&1 ||
  { fail "2 nodes x 1 rank: training failed"; tail -15 "$WORK/2x1.log"; }
moved=$(($(link_bytes) - before))
expect_ok "2 nodes x 1 rank (mpirun --hostfile, from the head) equals 1 rank (within rounding)" \
  $H5TOOL compare-floor "$WORK/2x1.h5" "$WORK/one.h5" 1e-5 "${floor[@]}"
check_rank_lines "$WORK/2x1.log" "2 nodes x 1 rank" "$N0:0" "$N1:0"
# Each step's gradients go to the other node and back (at least once each way).
if ((moved >= 2 * 20 * grad_bytes)); then
  pass "the gradients crossed the links: $moved bytes (at least $((2 * 20 * grad_bytes)))"
else fail "the links carried $moved bytes, less than 20 steps of gradients both ways ($((2 * 20 * grad_bytes)))"; fi

SUBNET=$(awk 'NR == 1 { split($3, a, "."); print a[1] "." a[2] "." a[3] ".0/24" }' "$CLUSTER/nodes")
IFACES=(--mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET")
on_cluster 0 4 slot "${IFACES[@]}" "${common[@]}" --micro-batch 16 --save "$WORK/2x2.h5" >"$WORK/2x2.log" 2>&1 ||
  { fail "2 nodes x 2 ranks: training failed"; tail -15 "$WORK/2x2.log"; }
expect_ok "2 nodes x 2 ranks (mpirun --hostfile, from node 0, btl_tcp_if_include $SUBNET) equals 1 rank (within rounding)" \
  $H5TOOL compare-floor "$WORK/2x2.h5" "$WORK/one.h5" 1e-5 "${floor[@]}"
check_rank_lines "$WORK/2x2.log" "2 nodes x 2 ranks by slot" "$N0:0" "$N0:1" "$N1:0" "$N1:1"

# The check can fail: another seed must differ.
on_cluster 0 2 node "${common[@]}" --micro-batch 32 --seed 9 --save "$WORK/seed9.h5" >/dev/null 2>&1
if $H5TOOL compare-floor "$WORK/seed9.h5" "$WORK/one.h5" 1e-5 "${floor[@]}" >/dev/null 2>&1; then
  fail "another seed on 2 nodes gave equal weights (the comparison cannot fail)"
else pass "another seed on 2 nodes gives other weights"; fi

# --- local ranks on each node: ranks placed round-robin over the nodes, and a device memory
# limit per local rank (1 GiB for local rank 0, too little for local rank 1): exactly the
# ranks that are second on their node (2 and 3 here) must be refused, each on its node.
on_cluster head 4 node "${common[@]}" --micro-batch 16 --device-memory-limit 1GiB,20KiB --dry-run \
  >"$WORK/local.log" 2>&1
problems=""
grep -q "^  rank 2: device .* DOES NOT FIT" "$WORK/local.log" || problems+=" rank 2 not refused;"
grep -q "^  rank 3: device .* DOES NOT FIT" "$WORK/local.log" || problems+=" rank 3 not refused;"
grep -q "^  rank 1: device" "$WORK/local.log" && problems+=" rank 1 (local rank 0 on $N1) refused;"
grep -q "error (rank [23] of 4 on $N0\|error (rank [23] of 4 on $N1" "$WORK/local.log" ||
  problems+=" no error naming rank 2 or 3 and its node;"
grep -q "local rank 1: 20KiB" "$WORK/local.log" || problems+=" the limit is not said to be local rank 1's;"
if [[ -z $problems ]]; then pass "limits per local rank: local rank 1 on each node refused, local rank 0 kept"; else
  fail "limits per local rank:$problems"
  grep -E "^  rank|error" "$WORK/local.log" | sed 's/^/    /' | head -8
fi
on_cluster head 4 node "${common[@]}" --micro-batch 16 --steps 2 >"$WORK/bynode.log" 2>&1 ||
  { fail "2 nodes x 2 ranks by node: training failed"; tail -15 "$WORK/bynode.log"; }
check_rank_lines "$WORK/bynode.log" "2 nodes x 2 ranks by node" "$N0:0" "$N1:0" "$N0:1" "$N1:1"

# --- a rank killed on the remote node ends the job on every node ----------------------------
long=(train --data "$WORK/train-*.h5" --model 32-64-relu-4 --global-batch 64 --epochs 100000
      --log-every 0 --metrics "$WORK/long.jsonl" --metrics-every 1)
"$CLUSTER_SH" exec --dir "$CLUSTER" 0 timeout -k 5 "$TIMEOUT" \
  mpirun "${MPI_ARGS[@]}" -np 4 --map-by slot "$DDTRAIN" "${long[@]}" >"$WORK/kill.log" 2>&1 &
launcher=$!
for _ in $(seq 300); do grep -q '"event":"step"' "$WORK/long.jsonl" 2>/dev/null && break; sleep 0.1; done
# ddtrain processes of node 1 (ranks 2 and 3), found by their network namespace.
remote=()
for pid in $(ip netns pids "$N1"); do
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == ddtrain ]] && remote+=("$pid")
done
if [[ ${#remote[@]} -ne 2 ]]; then
  fail "kill: expected the 2 ranks of $N1 running, found ${#remote[@]}"
  kill $launcher 2>/dev/null
  wait $launcher
else
  killed_at=$SECONDS
  kill -KILL "${remote[0]}"
  wait $launcher
  code=$?
  took=$((SECONDS - killed_at))
  left=""
  for ns in "$N0" "$N1"; do
    for pid in $(ip netns pids "$ns"); do
      [[ $(cat "/proc/$pid/comm" 2>/dev/null) =~ ^(ddtrain|orted|mpirun)$ ]] && left+=" $pid@$ns"
    done
  done
  problems=""
  [[ $code -ne 0 ]] || problems+=" mpirun exited 0;"
  ((took < TIMEOUT - 5)) || problems+=" the job hung until the timeout;"
  [[ -z $left ]] || problems+=" processes left:$left;"
  grep -q "exited on signal 9" "$WORK/kill.log" || problems+=" no message naming the killed rank;"
  if [[ -z $problems ]]; then
    pass "a rank killed on $N1 ended the job on both nodes in $took s (mpirun exit $code)"
  else
    fail "kill on the remote node:$problems"
    tail -8 "$WORK/kill.log" | sed 's/^/    /'
  fi
fi

# --- a checkpoint written on two nodes, resumed by another launch -----------------------------
ck=(--micro-batch 16 --checkpoint-dir "$WORK/ckpt" --checkpoint-every 5)
on_cluster 0 4 slot "${common[@]}" "${ck[@]}" --stop-after 10 >"$WORK/ck1.log" 2>&1 ||
  { fail "checkpoint: first part failed"; tail -8 "$WORK/ck1.log"; }
if [[ $slurm -eq 1 ]]; then
  resumer="srun -N 2 -n 4 --mpi=pmix"
  timeout -k 5 "$TIMEOUT" "$CLUSTER_SH" exec --dir "$CLUSTER" head env SLURM_CONF="$CLUSTER/slurm/slurm.conf" \
    OPENBLAS_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1 srun -N 2 -n 4 --overcommit --mpi=pmix \
    "$DDTRAIN" "${common[@]}" "${ck[@]}" --resume --save "$WORK/resumed.h5" >"$WORK/ck2.log" 2>&1 ||
    { fail "checkpoint: resuming under srun failed"; tail -8 "$WORK/ck2.log"; }
else
  resumer="mpirun by node from the head"
  on_cluster head 4 node "${common[@]}" "${ck[@]}" --resume --save "$WORK/resumed.h5" \
    >"$WORK/ck2.log" 2>&1 || { fail "checkpoint: resuming failed"; tail -8 "$WORK/ck2.log"; }
fi
grep -q "resume: .*checkpoint-000000000010.h5 (step 10, .* written by 4 ranks)" "$WORK/ck2.log" &&
  pass "checkpoint of step 10 written by 4 ranks on 2 nodes, resumed ($resumer)" ||
  fail "checkpoint: no resume at step 10: $(grep resume: "$WORK/ck2.log")"
expect_ok "resumed across nodes == uninterrupted 2 nodes x 2 ranks, bit for bit" \
  $H5TOOL compare "$WORK/resumed.h5" "$WORK/2x2.h5" 0

# --- srun -N 2 --mpi=pmix --------------------------------------------------------------------
if [[ $slurm -eq 1 ]]; then
  srun_on_head() {
    timeout -k 5 "$TIMEOUT" "$CLUSTER_SH" exec --dir "$CLUSTER" head env \
      SLURM_CONF="$CLUSTER/slurm/slurm.conf" OPENBLAS_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1 \
      srun --mpi=pmix --overcommit "$@"
  }
  srun_on_head -N 2 -n 2 hostname >"$WORK/hosts.txt" 2>&1
  [[ $(sort "$WORK/hosts.txt" | tr '\n' ' ') == "$N0 $N1 " ]] &&
    pass "srun -N 2 -n 2 hostname: $(sort "$WORK/hosts.txt" | paste -sd' ')" ||
    fail "srun -N 2 -n 2 hostname said: $(head -3 "$WORK/hosts.txt" | tr '\n' ' ')"
  srun_on_head -N 2 -n 4 "$DDTRAIN" "${common[@]}" --micro-batch 16 --save "$WORK/srun.h5" \
    >"$WORK/srun.log" 2>&1 || { fail "srun -N 2 -n 4 --mpi=pmix: training failed"; tail -10 "$WORK/srun.log"; }
  expect_ok "srun -N 2 -n 4 --mpi=pmix equals 1 rank (within rounding)" \
    $H5TOOL compare-floor "$WORK/srun.h5" "$WORK/one.h5" 1e-5 "${floor[@]}"
  check_rank_lines "$WORK/srun.log" "srun -N 2 -n 4" "$N0:0" "$N0:1" "$N1:0" "$N1:1"

  # The multi-node batch template, as a user submits it: 2 nodes x 2 tasks.
  on_head() {
    timeout -k 5 "$TIMEOUT" "$CLUSTER_SH" exec --dir "$CLUSTER" head env \
      SLURM_CONF="$CLUSTER/slurm/slurm.conf" "$@"
  }
  mkdir -p "$WORK/out"
  job=$(cd "$WORK" && on_head env DDTRAIN="$DDTRAIN" DATA="$WORK/train-*.h5" EVAL_DATA= \
    MODEL=32-16-relu-4 STEPS=20 GLOBAL_BATCH=64 OUT="$WORK/out/run" \
    sbatch --parsable --nodes=2 --output="$WORK/out/job-%j.out" \
    "$REPO/launch/slurm/ddtrain-multi-node.sbatch" --log-every 0 2>"$WORK/sbatch.err")
  state=""
  for _ in $(seq 600); do
    state=$(on_head scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    [[ $state == COMPLETED || $state == FAILED || $state == CANCELLED || $state == TIMEOUT ]] && break
    sleep 0.1
  done
  out="$WORK/out/job-$job.out"
  if [[ $state == COMPLETED ]] && grep -q "running: srun --mpi=pmix" "$out" 2>/dev/null &&
    [[ -s $WORK/out/run/model.h5 ]]; then
    pass "sbatch --nodes=2 launch/slurm/ddtrain-multi-node.sbatch: COMPLETED, model written"
    check_rank_lines "$out" "the multi-node template" "$N0:0" "$N0:1" "$N1:0" "$N1:1"
  else
    fail "the multi-node template: job '${job:-none}' state '${state:-unknown}'"
    cat "$WORK/sbatch.err" 2>/dev/null | sed 's/^/    /'
    tail -10 "$out" 2>/dev/null | sed 's/^/    /'
  fi
else
  echo "skipped: the srun checks ($slurm_why)"
fi

# --- bench/scaling --nodes, small: the bytes each link carried against the algorithm's ----------
# Each all-reduce path ddtrain has on CPU ranks: its default (with --allreduce: shm, the
# hierarchical one) and MPI's (--allreduce mpi: Open MPI's binomial tree), 2 nodes x 2 ranks.
paths=("")
grep -q -- '--allreduce' <<<"$("$DDTRAIN" train --help 2>&1)" && paths=("" "--allreduce mpi")
if "$REPO/launch/install-deps.sh" data >"$WORK/install-data.txt" 2>&1; then
  for train_args in "${paths[@]}"; do
    bench_start=$SECONDS
    rm -f "$WORK/nodes.csv"
    DDTRAIN=$DDTRAIN timeout -k 5 300 "$REPO/bench/scaling" --nodes --node-counts "1 2" \
      --ranks-per-node 2 --bandwidths 1gbit --model 784-64-relu-10 --steps 9 --warmup-steps 3 \
      --repeats 1 --allreduce-probe-bytes 1MiB --data-dir "$WORK/data" --csv "$WORK/nodes.csv" \
      --network-csv "$WORK/net.csv" \
      --train-args "$train_args" >"$WORK/bench.log" 2>&1 ||
      { fail "bench/scaling --nodes ${train_args:-(default all-reduce)} failed"; tail -15 "$WORK/bench.log"; }
    [[ -s $WORK/nodes.csv ]] || continue
    # Per link and direction: measured / expected, the headers' share on top (1.046 at MTU
    # 1500, a little more for acknowledgements and the per-step control messages). The
    # links keep each flow in order, so TCP resends ~nothing; a resent segment counts twice.
    if verdict=$($PY - "$WORK/nodes.csv" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["kind"] == "run" and r["nodes"] == "2"]
if not rows:
    sys.exit("no 2-node run in the CSV")
r = rows[0]
tx = [float(x) for x in r["link_tx_mb_per_step"].split(";")]
rx = [float(x) for x in r["link_rx_mb_per_step"].split(";")]
expected = [tuple(float(v) for v in e.split(":")) for e in r["expected_tx_rx_mb_per_step"].split(";")]
ratios = [m / e for m, e in zip(tx + rx, [e[0] for e in expected] + [e[1] for e in expected])]
text = (f"{r['algorithm']}, 2 nodes x 2 ranks: node 0 sent {tx[0]:.3f} received {rx[0]:.3f}, "
        f"node 1 sent {tx[1]:.3f} received {rx[1]:.3f} MB/step; measured/expected "
        f"{min(ratios):.3f}..{max(ratios):.3f}; TCP segments resent: {r['retransmitted_segments']}")
print(text)
sys.exit(0 if all(1.0 <= q <= 1.2 for q in ratios) else 1)
EOF
    ); then pass "${train_args:-default all-reduce}: bytes per link per step as it should move them ($verdict)"
    else fail "${train_args:-default all-reduce}: bytes per link per step: $verdict"; fi
    if "$REPO/bench/project" --nodes "$WORK/nodes.csv" --nodes-network "$WORK/net.csv" \
      --nodes-csv "$WORK/projection.csv" >"$WORK/project.log" 2>&1 &&
      [[ $(grep -c '^[0-9]' "$WORK/projection.csv") -ge 1 ]]; then
      pass "bench/project --nodes predicted it: $(grep '^ *2 .*|' "$WORK/project.log" | head -1 | tr -s ' ' | cut -c1-90)"
    else
      fail "bench/project --nodes"
      tail -5 "$WORK/project.log"
    fi
    echo "  (bench/scaling --nodes ${train_args:+$train_args }took $((SECONDS - bench_start)) s)"
  done
else
  echo "skipped: bench/scaling --nodes (no Fashion-MNIST: $(tail -1 "$WORK/install-data.txt"))"
fi

# --- stop leaves nothing behind --------------------------------------------------------------
pids_before=""
for ns in /run/netns/"$PREFIX"-*; do pids_before+=" $(ip netns pids "${ns##*/}" | tr '\n' ' ')"; done
cluster stop >"$WORK/stop.txt" 2>&1 || fail "stop: $(tail -1 "$WORK/stop.txt")"
left=""
for ns in /run/netns/"$PREFIX"-*; do [[ -e $ns ]] && left+=" namespace ${ns##*/};"; done
for pid in $pids_before; do
  [[ -e /proc/$pid ]] && [[ $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) != Z ]] &&
    left+=" process $pid ($(cat "/proc/$pid/comm" 2>/dev/null));"
done
[[ -z $left ]] && pass "stop removed every namespace, link and daemon ($(wc -w <<<"$pids_before") processes)" ||
  fail "stop left:$left"
finish
