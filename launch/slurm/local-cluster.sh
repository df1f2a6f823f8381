#!/usr/bin/env bash
# local-cluster.sh - a throwaway single-node Slurm cluster on localhost, for tests and for
# trying the batch templates beside this file without a real cluster.
#
#   launch/slurm/local-cluster.sh start  DIR   # munged + slurmctld + slurmd, waits for an idle node
#   launch/slurm/local-cluster.sh status DIR   # exit 0 running, 3 stopped, 1 partly running
#   launch/slurm/local-cluster.sh stop   DIR   # stops what start started; safe to repeat
#   launch/slurm/local-cluster.sh logs   DIR   # the last lines of each daemon's log
#
# Then, in the shell that submits:  export SLURM_CONF=DIR/slurm.conf   (or: source DIR/env)
#
# Everything lives under DIR: slurm.conf, the controller's state, slurmd's spool, the logs
# (slurmctld.log, slurmd.log, munged.out; NAME.out also catches what a daemon prints before it
# opens its log), a private munge key and socket, and the daemons' PIDs (DIR/pids/). Nothing under /etc is read or changed, no system munged is needed, and the
# ports are the first free ones from 6817 up, so clusters in different DIRs can coexist.
# The configuration is the one verified in shared/notes/toolchain.md section 7 (Slurm 22.05,
# no cgroups, no accounting, MpiDefault=pmix), with the node line taken from `slurmd -C`.
# Needs root (the daemons run as root, SlurmUser=root) and Debian's slurm-wlm and munge
# (launch/install-deps.sh slurm). Environment: DDTRAIN_SLURM_START_TIMEOUT (seconds to wait
# for the node to become idle, default 30).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|status|logs DIR" >&2
  exit 2
}
[[ $# -eq 2 ]] || usage
action=$1
[[ $action =~ ^(start|stop|status|logs)$ ]] || usage
[[ $action != start ]] || mkdir -p "$2"
if [[ ! -d $2 ]]; then
  echo "local-cluster: nothing under $2"
  [[ $action == status ]] && exit 3
  exit 0
fi
dir=$(cd "$2" && pwd)
conf=$dir/slurm.conf
daemons=(munged slurmctld slurmd) # started in this order, stopped in reverse

say() { echo "local-cluster: $*"; }
die() {
  echo "local-cluster: error: $*" >&2
  exit 1
}

# pid_alive PID NAME: the process exists, is not a zombie, and is NAME (a recorded PID may
# have been reused by an unrelated process since).
pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $stat == *") Z "* ]] && return 1
  [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]]
}

daemon_pid() { cat "$dir/pids/$1" 2>/dev/null || true; }

daemon_running() {
  local pid
  pid=$(daemon_pid "$1")
  [[ -n $pid ]] && pid_alive "$pid" "$1"
}

# leftover_pids: processes that belong to this cluster other than the daemons themselves:
# job steps (slurmstepd inherits the daemons' DDTRAIN_LOCAL_CLUSTER marker), and batch
# scripts, tasks and salloc shells (a SLURM_JOB_ID, with SLURM_CONF pointing here). A shell
# that merely exported SLURM_CONF is not one; this script and its ancestors are not counted.
leftover_pids() {
  local ancestors=" " p=$$ proc pid
  while [[ $p -gt 1 ]]; do
    ancestors+="$p "
    p=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null || echo 1)
  done
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [[ $ancestors == *" $pid "* || $pid == "$BASHPID" ]] && continue
    if ! grep -qzxF "DDTRAIN_LOCAL_CLUSTER=$dir" "$proc/environ" 2>/dev/null; then
      grep -qzxF "SLURM_CONF=$conf" "$proc/environ" 2>/dev/null || continue
      grep -qz '^SLURM_JOB_ID=' "$proc/environ" 2>/dev/null || continue
    fi
    local stat d ours=0
    stat=$(cat "$proc/stat" 2>/dev/null) || continue
    [[ $stat == *") Z "* ]] && continue
    # The daemons and their own helpers (slurmctld's slurmscriptd) are not leftovers.
    for d in "${daemons[@]}"; do
      daemon_running "$d" || continue
      [[ $(daemon_pid "$d") == "$pid" || $(daemon_pid "$d") == "$(awk '{ print $2 }' <<<"${stat##*)}")" ]] &&
        ours=1
    done
    [[ $ours -eq 1 ]] || echo "$pid"
  done
}

# port_free PORT: nothing on this host accepts connections on PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

first_free_port() {
  local port=$1
  while ! port_free "$port" || [[ $port == "${2:-}" ]]; do port=$((port + 1)); done
  echo "$port"
}

show_logs() {
  local d
  local d log
  for d in "${daemons[@]}"; do
    log=$dir/$d.log
    [[ -s $log ]] || log=$dir/$d.out
    [[ -s $log ]] || continue
    echo "--- last lines of $log"
    tail -n "${1:-15}" "$log"
  done >&2
}

write_config() {
  local ctld_port slurmd_port node
  ctld_port=$(first_free_port 6817)
  slurmd_port=$(first_free_port $((ctld_port + 1)) "$ctld_port")
  # `slurmd -C` describes this machine (CPUs, sockets, cores, threads); the node is named
  # localhost (slurmd -N localhost) so the configuration does not depend on the host name,
  # and RealMemory is left at its default so a busy machine does not drain the node.
  node=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]*/NodeName=localhost/' -e 's/ RealMemory=[0-9]*//')
  cat >"$conf" <<EOF
# Written by launch/slurm/local-cluster.sh: a single-node cluster on localhost under $dir
ClusterName=ddtrain
MailProg=/bin/true
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/state/slurmctld.pid
SlurmdPidFile=$dir/spool/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
$node State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

# start_daemon NAME COMMAND...: runs a daemon in the foreground of a background job, with
# its PID recorded and the marker its children inherit. It logs to DIR/NAME.log; DIR/NAME.out
# catches what it prints before it opens its log (a bad configuration, say).
start_daemon() {
  local name=$1
  shift
  DDTRAIN_LOCAL_CLUSTER=$dir SLURM_CONF=$conf "$@" </dev/null >>"$dir/$name.out" 2>&1 &
  echo $! >"$dir/pids/$name"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s until it succeeds;
# fails (with the logs) if it does not in time or a daemon has died meanwhile.
wait_for() {
  local seconds=$1 what=$2 d
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    for d in "${daemons[@]}"; do
      [[ -z $(daemon_pid "$d") ]] || daemon_running "$d" || {
        show_logs
        stop_cluster >/dev/null
        die "$d exited while waiting for $what (logs above, under $dir)"
      }
    done
    if [[ $SECONDS -ge $deadline ]]; then
      show_logs
      stop_cluster >/dev/null
      die "$what did not happen within $seconds s (logs above, under $dir)"
    fi
    sleep 0.1
  done
}

node_idle() { [[ $(SLURM_CONF=$conf sinfo -h -n localhost -o %T 2>/dev/null) == idle ]]; }

start_cluster() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (the daemons run as root: SlurmUser=root)"
  local missing=() tool
  for tool in munged munge slurmctld slurmd sinfo srun sbatch; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [[ ${#missing[@]} -eq 0 ]] ||
    die "${missing[*]} not found: install Debian's slurm-wlm and munge (launch/install-deps.sh slurm)"
  local running=0 d
  for d in "${daemons[@]}"; do daemon_running "$d" && running=$((running + 1)); done
  if [[ $running -eq ${#daemons[@]} ]]; then
    say "already running under $dir"
    echo "export SLURM_CONF=$conf"
    return 0
  fi
  [[ $running -eq 0 ]] || stop_cluster # half a cluster: start afresh

  mkdir -p "$dir/state" "$dir/spool" "$dir/pids" "$dir/munge"
  rm -f "$dir"/pids/*
  chmod 755 "$dir/munge"
  # A private key: this cluster's credentials mean nothing to any other munged.
  if [[ ! -s $dir/munge/munge.key ]]; then
    (umask 077 && head -c 1024 /dev/urandom >"$dir/munge/munge.key")
  fi
  # --force: munged wants every directory above its socket world-searchable, which a
  # mktemp -d directory is not; only root (the daemons and the submitting root) uses it.
  start_daemon munged munged --foreground --force --socket="$dir/munge/munge.socket" \
    --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
    --seed-file="$dir/munge/munged.seed"
  wait_for 10 "munged answering" munge -n -S "$dir/munge/munge.socket"

  write_config
  start_daemon slurmctld slurmctld -D -f "$conf"
  start_daemon slurmd slurmd -D -N localhost -f "$conf"
  wait_for "${DDTRAIN_SLURM_START_TIMEOUT:-30}" "node localhost becoming idle" node_idle
  say "running under $dir (slurmctld port $(sed -n 's/^SlurmctldPort=//p' "$conf"), slurmd port" \
    "$(sed -n 's/^SlurmdPort=//p' "$conf"); PIDs in $dir/pids)"
  echo "export SLURM_CONF=$conf" | tee "$dir/env"
}

stop_cluster() {
  local pids=() d pid i jobs
  # Jobs first, while the controller can still end them properly (their steps and tasks).
  if daemon_running slurmctld; then
    jobs=$(SLURM_CONF=$conf squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086 # a list of job IDs
      SLURM_CONF=$conf scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 150; i++)); do # KillWait is 5 s
        [[ -z $(SLURM_CONF=$conf squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.1
      done
    fi
  fi
  for d in slurmd slurmctld munged; do
    if daemon_running "$d"; then
      pid=$(daemon_pid "$d")
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$d:$pid")
    fi
  done
  local stray
  # Steps still running would outlive slurmd: end them too.
  stray=$(leftover_pids || true)
  # shellcheck disable=SC2086 # a list of PIDs
  [[ -z $stray ]] || kill -TERM $stray 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do # up to 15 s, then SIGKILL
    local alive=0 entry
    for entry in "${pids[@]}"; do pid_alive "${entry#*:}" "${entry%%:*}" && alive=1; done
    [[ $alive -eq 0 && -z $(leftover_pids || true) ]] && break
    sleep 0.1
  done
  for entry in "${pids[@]}"; do
    pid_alive "${entry#*:}" "${entry%%:*}" && kill -KILL "${entry#*:}" 2>/dev/null
  done
  stray=$(leftover_pids || true)
  # shellcheck disable=SC2086 # a list of PIDs
  [[ -z $stray ]] || kill -KILL $stray 2>/dev/null || true
  rm -f "$dir/munge/munge.socket" "$dir/munge/munge.socket.lock" "$dir"/pids/*
  if [[ ${#pids[@]} -eq 0 ]]; then say "not running under $dir"; else say "stopped ${pids[*]}"; fi
}

status_cluster() {
  local running=0 d
  for d in "${daemons[@]}"; do
    if daemon_running "$d"; then
      say "$d running (pid $(daemon_pid "$d"))"
      running=$((running + 1))
    else
      say "$d not running"
    fi
  done
  local stray
  stray=$(leftover_pids || true)
  if [[ $running -eq ${#daemons[@]} ]]; then
    [[ -z $stray ]] || say "processes of running jobs: ${stray//$'\n'/ }"
    SLURM_CONF=$conf sinfo || true
    echo "export SLURM_CONF=$conf"
    return 0
  fi
  [[ -z $stray ]] || say "processes left from this cluster: ${stray//$'\n'/ }"
  [[ $running -eq 0 && -z $stray ]] && return 3
  return 1
}

case $action in
  start) start_cluster ;;
  stop) stop_cluster ;;
  status) status_cluster ;;
  logs) show_logs 30 2>&1 ;;
esac
