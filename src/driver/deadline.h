/* deadline.h - a bound on the phases of a job that no communicator can bound: MPI's start-up
 * (MPI_Init, the control communicator's creation, the agreement on the options, the
 * watchdog's set-up) and MPI_Finalize at the end.
 *
 * These are blocking MPI calls without a timeout of their own: a rank stopped before or in
 * them (SIGSTOP, a hung file system, a launcher that started only some ranks) would leave
 * every other rank waiting in them forever. A thread of the driver's counts how long the
 * current phase has lasted; past `seconds` (--comm-timeout, which the driver parses before
 * MPI_Init for this) it prints
 *     ddtrain: error (rank R of N on HOST): PHASE did not finish within S s (--comm-timeout):
 *     REASON. This rank ends; the launcher ends the others ...
 * and ends the rank with _exit(1). Every rank that is not stalled ends so by itself, and the
 * launcher ends the stalled one (mpirun at once; srun with --kill-on-bad-exit=1). Before MPI
 * is up the rank and world size are the launcher's (OMPI_COMM_WORLD_RANK, PMIX_RANK,
 * SLURM_PROCID, PMI_RANK). Time the process spends stopped does not count: a rank that is
 * continued after a SIGSTOP does not end itself at once for having waited.
 *
 * Usage:
 *     deadline_start(seconds, "MPI start-up (MPI_Init)", "a rank is stalled or lost", NULL);
 *     MPI_Init_thread(...);
 *     deadline_phase("set-up: creating the control communicator", "...", &j);
 *     ...
 *     deadline_stop();          // the communicators' own bounds take over
 */
#ifndef DDT_DRIVER_DEADLINE_H
#define DDT_DRIVER_DEADLINE_H

#include "driver/job.h"

/* Starts counting `phase` from now, to end the rank after `seconds`; 0 or less: no bound
 * (nothing is counted). `reason` says in the message what may have happened. Both strings
 * must live as long as the process. `j` names the rank in the message once MPI is up (NULL
 * before: the launcher's numbers). */
void deadline_start(double seconds, const char *phase, const char *reason, const job *j);
/* The same deadline, counting on, now in another phase. */
void deadline_phase(const char *phase, const char *reason, const job *j);
/* Stops counting (until the next deadline_start). */
void deadline_stop(void);

#endif
