/* failpoint.h - stalls and deaths on request, to test that a stuck or lost rank cannot hang
 * the job.
 *
 * DDTRAIN_DEBUG_STALL=POINT:RANK[:SECONDS] makes rank RANK sleep SECONDS (default 3600) when
 * it reaches the named point, as a rank stuck on a hung file system or a stopped process
 * would: the other ranks must then end the job within --comm-timeout, naming it.
 * DDTRAIN_DEBUG_KILL=POINT:RANK makes rank RANK kill itself (SIGKILL) there, as a crashed or
 * OOM-killed process would. Points: "init" (before MPI_Init: the rank is the launcher's,
 * from the environment), "setup", "evaluation", "checkpoint", "step", "generate", "end"
 * (after the job's last meeting, before MPI_Finalize), "allreduce" (inside the
 * shared-memory all-reduce, after the rank posted its part of the first chunk and before it
 * summed its slice), and "publish" (in file_publish, util/files.h, with a finished temporary
 * file about to be renamed into place; it does not know the rank, so RANK 0 there stalls
 * every process that publishes). Unset (the normal case), each costs a getenv() the first
 * time and a branch after. A stall is announced first through the observer, if one is set
 * (the driver prints it, with the time, so tests can measure from the stall to the end of
 * the job).
 *
 * Usage:
 *     failpoint_stall("checkpoint", rank);
 *     failpoint_kill("allreduce", rank);
 */
#ifndef DDT_UTIL_FAILPOINT_H
#define DDT_UTIL_FAILPOINT_H

void failpoint_stall(const char *point, int rank);
/* Called by failpoint_stall() just before a requested stall begins (NULL: nobody). */
void failpoint_set_observer(void (*observer)(const char *point, int rank, double seconds));
void failpoint_kill(const char *point, int rank);

#endif
