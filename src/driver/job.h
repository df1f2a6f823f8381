/* job.h - how a ddtrain job starts and ends on every rank together.
 *
 * The driver is the only code that decides how the job ends. Every phase that can fail on
 * some ranks only (opening files, checking data, a bad batch) ends at an agreement point,
 * job_agree(): all ranks learn the first failure, the lowest failing rank prints its message
 * once, and all ranks return the same status, so they exit together with the same code and
 * nobody is left waiting in a collective. job_abort() (MPI_Abort) is the last resort for
 * failures that cannot reach an agreement point.
 *
 * Usage:
 *     job j;
 *     job_init(&j, &argc, &argv);
 *     ddt_status st = job_agree(&j, open_my_files());
 *     if (st != DDT_OK) return job_finish(&j, st);
 */
#ifndef DDT_DRIVER_JOB_H
#define DDT_DRIVER_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "util/status.h"

typedef struct job {
    int rank;
    int world_size;
    int local_rank; /* among the ranks on this node (MPI_Comm_split_type, shared memory) */
    int local_size;
    bool mpi_initialised;
    char host[64];
} job;

/* MPI_Init_thread (funneled: only the main thread calls MPI). */
ddt_status job_init(job *j, int *argc, char ***argv);

/* Under Slurm, refuses a world size that disagrees with the job step's task count
 * (SLURM_STEP_NUM_TASKS for srun-launched tasks, else SLURM_NTASKS): that is the trap of N
 * singleton "rank 0 of 1" processes, e.g. srun without PMIx, that would each train alone and
 * overwrite each other's output. DDTRAIN_SLURM_CHECK=0 turns the check off. */
ddt_status job_check_slurm(const job *j);

/* Collective: returns DDT_OK if `local` is DDT_OK on every rank, else the status of the
 * lowest failing rank, whose message that rank prints (prefixed with its rank when the job
 * has several). */
ddt_status job_agree(job *j, ddt_status local);

/* Prints a local error (one rank's own view) to stderr, with the rank prefix. */
void job_print_error(const job *j, ddt_status status);

/* Finalises MPI and returns the process exit code for `status`. */
int job_finish(job *j, ddt_status status);

/* Ends every rank at once (MPI_Abort) after printing the message; does not return. */
_Noreturn void job_abort(job *j, ddt_status status, const char *message);

/* printf on rank 0 only, flushed. */
void job_say(const job *j, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Whether standard output reaches a terminal (for a progress bar rather than log lines).
 * Open MPI gives every rank a pseudo-terminal of its own even when mpirun's output goes to a
 * file, so under Open MPI this asks about mpirun's (the parent's) standard output instead. */
bool job_stdout_is_terminal(void);

/* Peak resident set size of this process, in bytes. */
size_t job_peak_rss_bytes(void);

/* Seconds since an arbitrary fixed point (monotonic). */
double job_now(void);

#endif
