#!/usr/bin/env bash
# rankwrap.sh RCDIR STOP_RANK STOP_SIGNAL BINARY ARGS... - one rank of a probe case under mpirun:
# records the rank's exit status in RCDIR/rank.R, and when R is STOP_RANK sends itself
# STOP_SIGNAL (STOP or KILL) first, before BINARY starts (so before MPI_Init). The words of
# $DDPROBE_ARGS_RANK_R, when set, are added to rank R's arguments (ranks started with different
# settings).
rcdir=$1 stop_rank=$2 stop_signal=$3
shift 3
rank=${OMPI_COMM_WORLD_RANK:-0}
[[ $rank == "$stop_rank" ]] && kill -"$stop_signal" $$
extra_variable=DDPROBE_ARGS_RANK_$rank
read -r -a extra <<<"${!extra_variable:-}"
"$@" "${extra[@]}"
code=$?
echo "$code" >"$rcdir/rank.$rank"
exit "$code"
