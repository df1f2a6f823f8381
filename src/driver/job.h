/* job.h - how a ddtrain job starts and ends on every rank together.
 *
 * The driver is the only code that decides how the job ends. job_init() starts MPI and, while
 * every rank is known to be there, makes the control communicator (comm.h: agreements and
 * small collectives, every wait bounded by --comm-timeout) and its watchdog. Commands run as
 * library calls that return a status; a failure they agreed on (comm_agree) is the same on
 * every rank, and job_end() prints it once (from rank 0, naming the rank it came from) and
 * ends every rank with its exit code. A failure that was not agreed (a rank lost or stalled,
 * a communicator dead) is printed by the rank that saw it and ends the job with MPI_Abort, so
 * no rank is ever left waiting.
 *
 * Usage:
 *     job j;
 *     deadline_start(timeout, "MPI start-up (MPI_Init)", "...", NULL);
 *     if (job_init(&j, &argc, &argv, timeout) != DDT_OK) return job_end(&j, DDT_ERR_COMM);
 *     ... options parsed and agreed ...; job_set_timeout(&j, opts.comm_timeout);
 *     ddt_status st = train_run(j.control, &config);
 *     return job_end(&j, st);
 */
#ifndef DDT_DRIVER_JOB_H
#define DDT_DRIVER_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "comm/comm.h"
#include "util/status.h"

typedef struct job {
    int rank;
    int world_size;
    bool mpi_initialised;
    char host[64];
    double timeout; /* --comm-timeout: bounds MPI_Finalize too (deadline.h); 0: none */
    comm *control; /* agreements and the control plane (MPI backend, no device) */
} job;

/* MPI_Init_thread (funneled: only the main thread calls MPI) and the control communicator,
 * whose waits are bounded by `timeout` until job_set_timeout(). Neither call has a timeout
 * of its own: the caller bounds them with a deadline (deadline.h), which job_init moves from
 * phase to phase. */
ddt_status job_init(job *j, int *argc, char ***argv, double timeout);

/* --comm-timeout for every wait between ranks from now on (0: no limit), and the watchdog
 * (warnings after a tenth of it, at most 30 s, to stderr). Collective: once, by every rank,
 * right after the options are agreed. */
ddt_status job_set_timeout(job *j, double seconds);

/* This process's rank and world size as its launcher set them in the environment, before
 * MPI is up (Open MPI's mpirun, PMIx as under srun --mpi=pmix, Slurm, MPICH's PMI): false,
 * with rank 0 and size 1, for a process started alone. `size` may be NULL; 0 where the
 * launcher does not say. */
bool job_launcher_rank(int *rank, int *size);

/* Under Slurm, refuses a world size that disagrees with the job step's task count
 * (SLURM_STEP_NUM_TASKS for srun-launched tasks, else SLURM_NTASKS): that is the trap of N
 * singleton "rank 0 of 1" processes, e.g. srun without PMIx, that would each train alone and
 * overwrite each other's output. DDTRAIN_SLURM_CHECK=0 turns the check off. */
ddt_status job_check_slurm(const job *j);

/* Ends the job with `status` on this rank: an agreed failure is printed once (rank 0), an
 * unagreed one by this rank, which then ends every rank (MPI_Abort). On success the ranks
 * meet once more (bounded) before MPI_Finalize. MPI_Finalize, which waits for every rank, is
 * bounded by the job's timeout (deadline.h). Returns the process exit code. */
int job_end(job *j, ddt_status status);

/* Ends every rank at once (MPI_Abort) after printing the message; does not return. */
_Noreturn void job_abort(job *j, ddt_status status, const char *message);

/* Whether standard output reaches a terminal (for a progress bar rather than log lines).
 * Open MPI gives every rank a pseudo-terminal of its own even when mpirun's output goes to a
 * file, so under Open MPI this asks about mpirun's (the parent's) standard output instead. */
bool job_stdout_is_terminal(void);

/* SIGTERM (a scheduler ending the job) and SIGUSR1 (Slurm's --signal warning before
 * preemption) ask for a stop at the next step boundary: job_install_stop_handlers() installs
 * the handlers, job_stop_requested() answers whether one came. */
void job_install_stop_handlers(void);
bool job_stop_requested(void);

#endif
