#!/usr/bin/env bash
# cluster.sh - a cluster of N "nodes" on one Linux machine, for running ddtrain over a real
# network (TCP between nodes, shared memory inside one) without a real cluster.
#
#   launch/local-cluster/cluster.sh start N [--bandwidth RATE] [--slurm] [--dir DIR]
#   launch/local-cluster/cluster.sh stop [--dir DIR]          # removes all that start made
#   launch/local-cluster/cluster.sh status [--dir DIR]        # exit 0 up, 3 down, 1 partly up
#   launch/local-cluster/cluster.sh exec [--dir DIR] NODE COMMAND...   # NODE: head, 0..N-1 or a name
#   launch/local-cluster/cluster.sh shape [--dir DIR] RATE    # change every link's bandwidth
#   launch/local-cluster/cluster.sh counters [--dir DIR]      # bytes per link (tc), TCP resends
#   launch/local-cluster/cluster.sh list                      # every local cluster on this machine
#
# Each node is a network namespace with its own address on a private network and its own
# host name (a UTS namespace for each process started on it): ddt-ID-n0, ddt-ID-n1, ... at
# 10.77.0.11, .12, ... A veth link joins each node to a bridge in one more namespace, the
# head (ddt-ID-head, 10.77.0.1), where a launcher or slurmctld can run as on a login node.
# Every interface and address lives inside these namespaces: nothing is added to the
# machine's own network, so the same private addresses serve every cluster at once. ID is
# derived from DIR, where the cluster keeps its state (default: $DDTRAIN_CLUSTER_DIR, else
# /tmp/ddtrain-cluster; give every command the same):
#   DIR/hostfile   the nodes' addresses with slots=CORES each, for mpirun --hostfile
#   DIR/rsh        the launcher for mpirun --mca plm_rsh_agent: "rsh NODE COMMAND" runs
#                  COMMAND on NODE as ssh would (sh -c, a fresh environment: PATH, HOME...)
#   DIR/env        OMPI_MCA_plm_rsh_agent, OMPI_MCA_orte_default_hostfile and, with --slurm,
#                  SLURM_CONF, to source in a shell that launches jobs
#   DIR/nodes      one line per node: index, name, address, namespace
#   DIR/slurm/     with --slurm: slurm.conf, state, spool and logs per node
# The filesystem is shared by all nodes (as a cluster's shared filesystem would be), so paths
# are the same everywhere; processes see all of the machine's cores on every node.
#
# --bandwidth RATE shapes both directions of every node's link with a token bucket (tc tbf),
# RATE in tc's units (500mbit, 1gbit, 2.5gbit); none (the default) leaves them unshaped,
# which on a 2-core machine tops out around 3-4 Gbit/s. Each direction of each link has a tc
# queue (tbf, or pfifo when unshaped) whose byte counters `counters` prints: "NODE TX RX
# TX_PACKETS RX_PACKETS RETRANSMITTED", TX what the node sent (at its end of the link), RX
# what it received (at the bridge's end), RETRANSMITTED the TCP segments the node's stack
# sent again (counted in TX a second time). This kernel feature set has no netem, so no added
# latency; what arrives on each end of a link is steered to one core per flow (RPS), so a
# link keeps each flow in order as a wire would.
#
# --slurm adds a Slurm cluster: munged and slurmctld on the head, one slurmd per node
# (slurm-wlm and munge: launch/install-deps.sh slurm). Then, on the head:
#   cluster.sh exec head srun -N 2 --mpi=pmix ...
#
# Launching across the nodes with Open MPI (from the head, or from a node as from a job's
# first node):
#   cluster.sh exec head mpirun --hostfile DIR/hostfile --mca plm_rsh_agent DIR/rsh \
#       --bind-to none -x OPENBLAS_NUM_THREADS=1 -np 4 build/ddtrain train ...
# --bind-to none: every node's daemon believes it owns all of the machine's cores.
#
# Needs root (namespaces, links, tc), iproute2 (ip, tc) and util-linux (nsenter, unshare):
# launch/install-deps.sh cluster. stop is safe to repeat and works from DIR's path alone, even
# after DIR was deleted; it ends every process left inside the namespaces, then removes them
# (with them the links and the bridge).
set -euo pipefail

SUBNET=10.77.0
HEAD_IP=$SUBNET.1
FIRST_NODE_HOST=11 # node i has $SUBNET.$((FIRST_NODE_HOST + i))
MAX_NODES=64
REGISTRY=/run/ddtrain-local-cluster # ID -> DIR, for `list`

usage() { # usage [EXIT]: the header above; on stderr unless asked for (--help)
  if [[ ${1:-2} -eq 0 ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; else
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; fi
  exit "${1:-2}"
}
say() { echo "local-cluster: $*"; }
die() {
  echo "local-cluster: error: $*" >&2
  exit 1
}

[[ $# -ge 1 ]] || usage
action=$1
shift
[[ $action =~ ^(start|stop|status|exec|shape|counters|list|-h|--help)$ ]] || {
  echo "local-cluster: unknown command '$action'" >&2
  usage
}
[[ $action == -h || $action == --help ]] && usage 0

dir=${DDTRAIN_CLUSTER_DIR:-/tmp/ddtrain-cluster}
bandwidth=none slurm=0
positional=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) dir=${2:?--dir needs a directory}; shift 2 ;;
    --dir=*) dir=${1#*=}; shift ;;
    --bandwidth) bandwidth=${2:?--bandwidth needs a rate}; shift 2 ;;
    --bandwidth=*) bandwidth=${1#*=}; shift ;;
    --slurm) slurm=1; shift ;;
    --) shift; positional+=("$@"); break ;;
    *)
      positional+=("$1")
      shift
      # exec: everything after NODE is the command, options included.
      if [[ $action == exec ]]; then positional+=("$@"); break; fi
      ;;
  esac
done

# The cluster's ID: 6 hex digits of DIR's absolute path, so that stop finds the namespaces of
# a DIR that no longer exists.
case $dir in /*) ;; *) dir=$PWD/$dir ;; esac
dir=${dir%/}
id=$(printf '%s' "$dir" | cksum | awk '{ printf "%06x", $1 % 16777216 }')
prefix=ddt-$id
head_ns=$prefix-head

# valid_rate RATE: tc's rate syntax (a number and bit, kbit, mbit, gbit or tbit).
valid_rate() { [[ ${1,,} =~ ^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|tbit)$ ]]; }
# rate_bits RATE: bits per second.
rate_bits() {
  awk -v r="${1,,}" 'BEGIN {
    n = r + 0; u = r; sub(/^[0-9.]+/, "", u)
    m = (u == "bit") ? 1 : (u == "kbit") ? 1e3 : (u == "mbit") ? 1e6 : (u == "gbit") ? 1e9 : 1e12
    printf "%.0f", n * m }'
}

need_root_tools() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, links and tc need it)"
  local missing=() tool
  for tool in ip tc nsenter unshare; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [[ ${#missing[@]} -eq 0 ]] ||
    die "${missing[*]} not found: install iproute2 and util-linux (launch/install-deps.sh cluster)"
}

netns_exists() { [[ -e /run/netns/$1 ]]; }
# Our namespaces, whatever N was: the head and every ddt-ID-nK.
our_namespaces() {
  local f
  for f in /run/netns/"$prefix"-*; do
    [[ -e $f ]] || continue
    f=${f##*/}
    [[ $f == "$head_ns" || $f =~ ^$prefix-n[0-9]+$ ]] && echo "$f"
  done
}

node_count() { [[ -f $dir/nodes ]] && wc -l <"$dir/nodes" || echo 0; }

# resolve_node NODE: "name address namespace" of head, an index, a name or an address.
resolve_node() {
  local want=$1
  if [[ $want == head || $want == "$head_ns" || $want == "$HEAD_IP" ]]; then
    echo "$head_ns $HEAD_IP $head_ns"
    return 0
  fi
  [[ -f $dir/nodes ]] || return 1
  awk -v w="$want" '$1 == w || $2 == w || $3 == w { print $2, $3, $4; found = 1; exit }
    END { exit !found }' "$dir/nodes"
}

# on NAMESPACE HOSTNAME COMMAND...: runs COMMAND in the namespace's network, in a UTS
# namespace of its own named HOSTNAME (the same PID all along: nsenter and unshare exec).
on() {
  local ns=$1 name=$2
  shift 2
  # shellcheck disable=SC2016 # for the inner shell
  exec nsenter --net="/run/netns/$ns" -- unshare --uts -- \
    sh -c 'hostname "$0" && exec "$@"' "$name" "$@"
}

write_rsh() {
  # The plm_rsh_agent: Open MPI calls it as "rsh HOST WORDS..." and, like ssh, expects the
  # words joined into one command line for a shell on HOST. The environment is a fresh one,
  # as after an ssh login (what mpirun does not pass with -x is not there).
  local i name ip ns
  {
    cat <<EOF
#!/bin/sh
# rsh - written by launch/local-cluster/cluster.sh for the cluster in $dir:
# "rsh NODE COMMAND..." runs COMMAND on NODE (head, an index, a name or an address) as ssh
# would: one command line for sh, a fresh environment. For mpirun --mca plm_rsh_agent.
while [ \$# -gt 0 ]; do case \$1 in -*) shift ;; *) break ;; esac; done  # ssh's options
[ \$# -ge 2 ] || { echo "usage: \$0 NODE COMMAND..." >&2; exit 2; }
host=\$1
shift
case \$host in
  head|$head_ns|$HEAD_IP) ns=$head_ns ;;
EOF
    while read -r i name ip ns; do
      echo "  $i|$name|$ip) ns=$ns ;;"
    done <"$dir/nodes"
    echo "  *) echo \"rsh: \$host is not a node of the cluster in $dir\" >&2; exit 255 ;;"
    cat <<'EOF'
esac
exec nsenter --net="/run/netns/$ns" -- unshare --uts -- env -i \
  PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}" HOME="${HOME:-/root}" USER="${USER:-root}" \
  LOGNAME="${LOGNAME:-root}" SHELL=/bin/sh LANG="${LANG:-C.UTF-8}" ${TMPDIR:+TMPDIR="$TMPDIR"} \
  sh -c 'hostname "$0" && exec sh -c "$1"' "$ns" "$*"
EOF
  } >"$dir/rsh.tmp"
  chmod 755 "$dir/rsh.tmp"
  mv "$dir/rsh.tmp" "$dir/rsh"
}

# shape_link NAMESPACE DEVICE RATE: the qdisc of one direction of one link: a token bucket at
# RATE, or a plain FIFO when unshaped (for its byte counters; veth has no queue of its own).
# tbf: a burst of 0.5 ms at the rate, at least 64 KiB (the largest segment the TCP stack
# hands down at once: smaller would make tbf cut it up), and a queue of at most 100 ms. The
# burst is what a link idle for a while may send above its rate: kept small, so that traffic
# that alternates direction (a reduce, then a broadcast) gains little from it.
shape_link() {
  local ns=$1 dev=$2 rate=$3
  if [[ $rate == none ]]; then
    tc -n "$ns" qdisc replace dev "$dev" root pfifo limit 10000
  else
    local bits burst
    bits=$(rate_bits "$rate")
    burst=$(awk -v b="$bits" 'BEGIN { x = b / 8 / 2000; if (x < 65536) x = 65536; printf "%d", x }')
    tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 100ms
  fi
}

# steer_receive NAMESPACE DEVICE CORES: what arrives on a veth end is queued for the core its
# flow hashes to (RPS), not for whichever core sent it. Without this, a TCP flow whose packets
# leave the token bucket from both cores arrives out of order, and the sender retransmits
# segments the receiver already had (SACK reordering, confirmed by D-SACK): bytes a real link,
# which keeps order, would not carry, and which bench/scaling --nodes would count.
steer_receive() {
  local ns=$1 dev=$2 cores=$3 mask="" word bits
  # The kernel's CPU mask: 32-bit hex words, the highest first, comma-separated.
  for ((bits = cores; bits > 0; bits -= 32)); do
    word=$(((1 << (bits < 32 ? bits : 32)) - 1))
    mask=$(printf '%x' "$word")${mask:+,$mask}
  done
  # A kernel without RPS still makes a working cluster, only its byte counts are noisier.
  ip netns exec "$ns" sh -c "echo $mask >/sys/class/net/$dev/queues/rx-0/rps_cpus" 2>/dev/null ||
    say "no receive steering (RPS) on $dev in $ns: a flow may arrive out of order and be resent" >&2
}

shape_all() {
  local rate=$1 i name ip ns
  while read -r i name ip ns; do
    shape_link "$ns" eth0 "$rate"
    shape_link "$head_ns" "n$i" "$rate"
  done <"$dir/nodes"
  echo "$rate" >"$dir/bandwidth"
}

# ---- Slurm -----------------------------------------------------------------------------------
daemon_pid() { cat "$dir/pids/$1" 2>/dev/null || true; }
pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $stat != *") Z "* ]]
}
daemon_running() {
  local pid
  pid=$(daemon_pid "$1")
  [[ -n $pid ]] && pid_alive "$pid"
}
# start_daemon NAME NAMESPACE HOSTNAME COMMAND...: a daemon in the foreground of a background
# job inside a node, its PID recorded, its early output in DIR/slurm/NAME.out.
start_daemon() {
  local name=$1 ns=$2 host=$3
  shift 3
  (on "$ns" "$host" "$@") </dev/null >>"$dir/slurm/$name.out" 2>&1 &
  echo $! >"$dir/pids/$name"
}

write_slurm_conf() {
  local conf=$dir/slurm/slurm.conf s node_line i name ip ns
  # This machine's CPUs, as every node sees them all; RealMemory left out so that a busy
  # machine does not drain the nodes.
  node_line=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//')
  s=$dir/slurm
  {
    echo "# Written by launch/local-cluster/cluster.sh: $(node_count) nodes under $dir"
    echo "ClusterName=ddtrain-local"
    echo "MailProg=/bin/true"
    echo "SlurmctldHost=$head_ns($HEAD_IP)"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$s/munge/munge.socket"
    echo "SlurmctldPort=6817"
    echo "SlurmdPort=6818"
    echo "StateSaveLocation=$s/state"
    echo "SlurmdSpoolDir=$s/spool/%n"
    echo "SlurmctldPidFile=$s/state/slurmctld.pid"
    echo "SlurmdPidFile=$s/spool/%n/slurmd.pid"
    echo "SlurmctldLogFile=$s/slurmctld.log"
    echo "SlurmdLogFile=$s/slurmd-%n.log"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    # Each node's PMIx server keeps its files under TmpFS; one directory per node, or the
    # nodes' servers of one step collide in the shared filesystem.
    echo "TmpFS=$s/tmp/%n"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "SchedulerType=sched/backfill"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "MpiDefault=pmix"
    echo "ReturnToService=2"
    echo "SlurmdTimeout=30"
    echo "InactiveLimit=0"
    echo "KillWait=5"
    while read -r i name ip ns; do
      echo "NodeName=$name NodeAddr=$ip NodeHostname=$name $node_line State=UNKNOWN"
    done <"$dir/nodes"
    echo "PartitionName=nodes Nodes=$(awk '{ printf "%s%s", (NR > 1 ? "," : ""), $2 }' "$dir/nodes") Default=YES MaxTime=INFINITE State=UP"
  } >"$conf"
}

nodes_idle() {
  local idle
  idle=$(nsenter --net="/run/netns/$head_ns" env SLURM_CONF="$dir/slurm/slurm.conf" \
    sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 == "idle"' | wc -l)
  [[ $idle -eq $(node_count) ]]
}

start_slurm() {
  local missing=() tool
  for tool in munged munge slurmctld slurmd sinfo srun; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [[ ${#missing[@]} -eq 0 ]] ||
    die "${missing[*]} not found: install Debian's slurm-wlm and munge (launch/install-deps.sh slurm)"
  local s=$dir/slurm i name ip ns
  mkdir -p "$s/state" "$s/munge" "$s/spool" "$s/tmp" "$dir/pids"
  chmod 755 "$s/munge"
  while read -r i name ip ns; do mkdir -p "$s/spool/$name" "$s/tmp/$name"; done <"$dir/nodes"
  (umask 077 && head -c 1024 /dev/urandom >"$s/munge/munge.key")
  # --force: munged wants every directory above its socket to be world-searchable.
  start_daemon munged "$head_ns" "$head_ns" munged --foreground --force \
    --socket="$s/munge/munge.socket" --key-file="$s/munge/munge.key" \
    --pid-file="$s/munge/munged.pid" --seed-file="$s/munge/munged.seed"
  wait_for 10 "munged answering" munge -n -S "$s/munge/munge.socket"
  write_slurm_conf
  start_daemon slurmctld "$head_ns" "$head_ns" slurmctld -D -f "$s/slurm.conf"
  while read -r i name ip ns; do
    start_daemon "slurmd-$name" "$ns" "$name" slurmd -D -N "$name" -f "$s/slurm.conf"
  done <"$dir/nodes"
  wait_for "${DDTRAIN_SLURM_START_TIMEOUT:-30}" "every node becoming idle in Slurm" nodes_idle
  echo "export SLURM_CONF=$s/slurm.conf" >>"$dir/env"
}

# wait_for SECONDS WHAT COMMAND...: polls until COMMAND succeeds; on failure (time out, or a
# daemon died) shows the logs, stops the cluster and fails.
wait_for() {
  local seconds=$1 what=$2 f
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    for f in "$dir"/pids/*; do
      [[ -e $f ]] || continue
      pid_alive "$(cat "$f")" || {
        show_logs
        stop_cluster >/dev/null
        die "${f##*/} exited while waiting for $what (logs above, under $dir/slurm)"
      }
    done
    if [[ $SECONDS -ge $deadline ]]; then
      show_logs
      stop_cluster >/dev/null
      die "$what did not happen within $seconds s (logs above, under $dir/slurm)"
    fi
    sleep 0.1
  done
}

show_logs() {
  local f
  for f in "$dir"/slurm/*.log "$dir"/slurm/*.out; do
    [[ -s $f ]] || continue
    echo "--- last lines of $f"
    tail -n 10 "$f"
  done >&2
}

# ---- start, stop, status -------------------------------------------------------------------
start_cluster() {
  local n=${positional[0]:-}
  [[ ${#positional[@]} -eq 1 && $n =~ ^[1-9][0-9]*$ ]] ||
    die "start needs the number of nodes: start N [--bandwidth RATE] [--slurm] [--dir DIR]"
  ((n <= MAX_NODES)) || die "at most $MAX_NODES nodes"
  [[ $bandwidth == none ]] || valid_rate "$bandwidth" ||
    die "--bandwidth '$bandwidth': give a rate as tc writes it (500mbit, 1gbit) or none"
  need_root_tools
  if [[ -n $(our_namespaces) ]]; then
    die "a cluster is already running under $dir (namespaces $(our_namespaces | tr '\n' ' '));" \
      "stop it first: $0 stop --dir $dir"
  fi
  mkdir -p "$dir"
  rm -rf "$dir/pids" "$dir/slurm" "$dir/nodes" "$dir/env" "$dir/hostfile" "$dir/rsh"
  mkdir -p "$dir/pids" "$REGISTRY"
  echo "$dir" >"$REGISTRY/$id"
  # From here on, a failure removes whatever was made.
  # shellcheck disable=SC2154 # rc is the trap's own
  trap 'rc=$?; [[ $rc -eq 0 ]] || stop_cluster >/dev/null 2>&1; exit $rc' EXIT
  ip netns add "$head_ns"
  ip -n "$head_ns" link set lo up
  ip -n "$head_ns" link add br0 type bridge
  ip -n "$head_ns" addr add "$HEAD_IP/24" dev br0
  ip -n "$head_ns" link set br0 up
  local cores i ns name ip
  cores=$(nproc)
  : >"$dir/nodes"
  for ((i = 0; i < n; i++)); do
    ns=$prefix-n$i name=$prefix-n$i ip=$SUBNET.$((FIRST_NODE_HOST + i))
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Made inside the head and the node: no interface ever appears in the machine's own
    # namespace.
    ip -n "$head_ns" link add "n$i" type veth peer name eth0 netns "$ns"
    ip -n "$head_ns" link set "n$i" master br0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    steer_receive "$head_ns" "n$i" "$cores"
    steer_receive "$ns" eth0 "$cores"
    echo "$i $name $ip $ns" >>"$dir/nodes"
  done
  shape_all "$bandwidth"
  awk -v c="$cores" '{ print $3, "slots=" c }' "$dir/nodes" >"$dir/hostfile"
  write_rsh
  {
    echo "export OMPI_MCA_plm_rsh_agent=$dir/rsh"
    echo "export OMPI_MCA_orte_default_hostfile=$dir/hostfile"
  } >"$dir/env"
  # Every node must reach every other before anything is launched.
  for ((i = 0; i < n; i++)); do
    ip=$SUBNET.$((FIRST_NODE_HOST + i))
    local tries=0
    # A refused connection (nothing listens on port 9) proves the node answered.
    until [[ $(nsenter --net="/run/netns/$head_ns" timeout 1 bash -c "exec 3<>/dev/tcp/$ip/9" 2>&1) == *refused* ]]; do
      tries=$((tries + 1))
      ((tries < 50)) || die "node $i ($ip) does not answer on its link"
      sleep 0.1
    done
  done
  [[ $slurm -eq 0 ]] || start_slurm
  trap - EXIT
  say "$n node(s) up under $dir: $(awk '{ printf "%s%s (%s)", (NR > 1 ? ", " : ""), $2, $3 }' "$dir/nodes");" \
    "head $head_ns ($HEAD_IP); bandwidth $bandwidth$([[ $slurm -eq 1 ]] && echo '; Slurm running')"
  echo "hostfile: $dir/hostfile   launcher: $dir/rsh   environment: source $dir/env"
}

stop_cluster() {
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  local namespaces pids=() ns pid i d
  namespaces=$(our_namespaces)
  # Jobs first, while the controller can still end them properly.
  if [[ -f $dir/slurm/slurm.conf ]] && daemon_running slurmctld; then
    local jobs
    jobs=$(nsenter --net="/run/netns/$head_ns" env SLURM_CONF="$dir/slurm/slurm.conf" \
      squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086 # a list of job IDs
      nsenter --net="/run/netns/$head_ns" env SLURM_CONF="$dir/slurm/slurm.conf" \
        scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        [[ -z $(nsenter --net="/run/netns/$head_ns" env SLURM_CONF="$dir/slurm/slurm.conf" \
          squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.1
      done
    fi
  fi
  # Every process inside the namespaces (daemons, job steps, orted, ranks), and the recorded
  # daemons wherever they are.
  local victims=""
  for ns in $namespaces; do victims+=" $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"; done
  for d in "$dir"/pids/*; do
    [[ -e $d ]] || continue
    pid=$(cat "$d")
    [[ -n $pid ]] && pid_alive "$pid" && victims+=" $pid"
  done
  victims=$(tr ' ' '\n' <<<"$victims" | sed '/^$/d' | sort -u | grep -vx "$$" | tr '\n' ' ' || true)
  if [[ -n ${victims// /} ]]; then
    # shellcheck disable=SC2086 # a list of PIDs
    kill -TERM $victims 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do # up to 10 s, then SIGKILL
      local alive=0
      for pid in $victims; do pid_alive "$pid" && alive=1 && break; done
      [[ $alive -eq 0 ]] && break
      sleep 0.1
    done
    for pid in $victims; do pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
  fi
  # Processes that entered meanwhile (a launch racing the stop) go with SIGKILL.
  for ns in $namespaces; do
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
    [[ ${#pids[@]} -eq 0 ]] || kill -KILL "${pids[@]}" 2>/dev/null || true
  done
  # Deleting a namespace deletes its interfaces: the veth pairs and the bridge.
  local failed=""
  for ns in $namespaces; do
    for ((i = 0; i < 50; i++)); do
      ip netns delete "$ns" 2>/dev/null && break
      sleep 0.1
    done
    netns_exists "$ns" && failed+=" $ns"
  done
  rm -f "$dir"/pids/* "$dir/slurm/munge/munge.socket" "$dir/slurm/munge/munge.socket.lock" \
    "$REGISTRY/$id" 2>/dev/null || true
  [[ -z $failed ]] || die "could not delete namespace(s)$failed"
  if [[ -z $namespaces ]]; then say "nothing running under $dir"; else
    say "stopped: removed $(wc -w <<<"$namespaces") namespace(s) and their links under $dir"; fi
}

status_cluster() {
  local namespaces n expected
  namespaces=$(our_namespaces)
  n=$(node_count)
  expected=$((n + 1))
  if [[ -z $namespaces ]]; then
    say "not running under $dir"
    return 3
  fi
  say "namespaces: $(tr '\n' ' ' <<<"$namespaces")(bandwidth $(cat "$dir/bandwidth" 2>/dev/null || echo '?'))"
  local f down=0
  for f in "$dir"/pids/*; do
    [[ -e $f ]] || continue
    if pid_alive "$(cat "$f")"; then say "${f##*/} running (pid $(cat "$f"))"; else
      say "${f##*/} NOT running"
      down=1
    fi
  done
  [[ $(wc -l <<<"$namespaces") -eq $expected && $down -eq 0 ]] || return 1
  return 0
}

exec_on() {
  [[ ${#positional[@]} -ge 2 ]] || die "exec needs a node and a command: exec NODE COMMAND..."
  need_root_tools
  local found name ip ns
  [[ -f $dir/nodes ]] && netns_exists "$head_ns" ||
    die "no cluster running under $dir (start one: $0 start N --dir $dir)"
  found=$(resolve_node "${positional[0]}") ||
    die "'${positional[0]}' is not a node of the cluster under $dir (head, 0..$(($(node_count) - 1)), or a name)"
  read -r name ip ns <<<"$found"
  netns_exists "$ns" || die "node $name is not running (start the cluster first)"
  on "$ns" "$name" "${positional[@]:1}"
}

print_counters() {
  [[ -f $dir/nodes ]] && netns_exists "$head_ns" || die "no cluster running under $dir"
  local i name ip ns tx rx txp rxp retransmitted
  while read -r i name ip ns; do
    # "Sent B bytes P pkt" of each end's root qdisc.
    read -r tx txp < <(tc -n "$ns" -s qdisc show dev eth0 |
      awk '/^ Sent/ { print $2, $4; exit }')
    read -r rx rxp < <(tc -n "$head_ns" -s qdisc show dev "n$i" |
      awk '/^ Sent/ { print $2, $4; exit }')
    # RetransSegs, found by name in the node's own /proc/net/snmp.
    retransmitted=$(nsenter --net="/run/netns/$ns" cat /proc/net/snmp | awk '
      $1 == "Tcp:" && !k { for (i = 2; i <= NF; i++) if ($i == "RetransSegs") k = i; next }
      $1 == "Tcp:" && k { print $k; exit }')
    echo "$name ${tx:-0} ${rx:-0} ${txp:-0} ${rxp:-0} ${retransmitted:-0}"
  done <"$dir/nodes"
}

list_clusters() {
  local f d
  for f in /run/netns/ddt-*-head; do
    [[ -e $f ]] || continue
    f=${f##*/}
    f=${f#ddt-}
    f=${f%-head}
    d=$(cat "$REGISTRY/$f" 2>/dev/null || echo "(directory unknown)")
    local count=0 node
    for node in /run/netns/ddt-"$f"-n*; do [[ -e $node ]] && count=$((count + 1)); done
    echo "ddt-$f $d $count node(s)"
  done
}

case $action in
  start) start_cluster ;;
  stop) stop_cluster ;;
  status) status_cluster ;;
  exec) exec_on ;;
  shape)
    need_root_tools
    [[ ${#positional[@]} -eq 1 ]] || die "shape needs a rate: shape RATE (500mbit, 1gbit, none)"
    [[ ${positional[0]} == none ]] || valid_rate "${positional[0]}" ||
      die "'${positional[0]}': give a rate as tc writes it (500mbit, 1gbit) or none"
    netns_exists "$head_ns" || die "no cluster running under $dir"
    shape_all "${positional[0]}"
    say "every link shaped to ${positional[0]}"
    ;;
  counters) print_counters ;;
  list) list_clusters ;;
esac
