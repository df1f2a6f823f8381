/* job.c - start-up, printing the one message, and ending every rank together (see job.h). */
#include "driver/job.h"

#include <mpi.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver/deadline.h"
#include "io/io_exit.h"
#include "util/failpoint.h"
#include "util/files.h"

/* The watchdog's first warning: a tenth of the timeout, at most 30 s. */
static double warn_after(double timeout) {
    if (timeout <= 0) return 30;
    return timeout / 10 < 30 ? timeout / 10 : 30;
}

bool job_launcher_rank(int *rank, int *size) {
    static const char *const variables[][2] = {
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, /* Open MPI's mpirun */
        {"PMIX_RANK", "SLURM_STEP_NUM_TASKS"},            /* PMIx (srun --mpi=pmix) */
        {"PMI_RANK", "PMI_SIZE"},                         /* MPICH's PMI */
        {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS"},         /* Slurm */
    };
    *rank = 0;
    if (size) *size = 1;
    for (size_t i = 0; i < sizeof variables / sizeof variables[0]; i++) {
        const char *text = getenv(variables[i][0]);
        if (!text || !*text) continue;
        *rank = atoi(text);
        const char *count = getenv(variables[i][1]);
        if (size) *size = count && *count ? atoi(count) : 0;
        return true;
    }
    return false;
}

ddt_status job_init(job *j, int *argc, char ***argv, double timeout) {
    memset(j, 0, sizeof *j);
    j->timeout = timeout;
    int provided = 0;
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return ddt_error(DDT_ERR_COMM, "MPI_Init_thread failed");
    j->mpi_initialised = true;
    /* Errors come back as codes, so ddtrain can say what failed instead of MPI aborting. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &j->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &j->world_size);
    gethostname(j->host, sizeof j->host - 1);
    if (provided < MPI_THREAD_FUNNELED)
        return ddt_error(DDT_ERR_COMM, "the MPI library does not support threads (needed for "
                                       "the reader thread)");
    /* The only collective without a timeout of its own (communicator creation): here, right
     * after MPI_Init, under the caller's deadline. */
    deadline_phase("set-up: creating the control communicator (MPI_Comm_split_type)",
                   "a rank is stalled (stopped, or waiting on a hung file system) or lost", j);
    DDT_CHECK(comm_init(COMM_BACKEND_MPI, MPI_COMM_WORLD, NULL, &j->control));
    comm_set_timeout(j->control, timeout);
    return DDT_OK;
}

ddt_status job_set_timeout(job *j, double seconds) {
    j->timeout = seconds;
    comm_set_timeout(j->control, seconds);
    /* The watchdog's communicator is made by a blocking MPI_Comm_dup, under the deadline. */
    deadline_phase("set-up: starting the watchdog (MPI_Comm_dup)",
                   "a rank is stalled (stopped, or waiting on a hung file system) or lost", j);
    return comm_enable_watchdog(j->control, warn_after(seconds), stderr);
}

ddt_status job_check_slurm(const job *j) {
    const char *off = getenv("DDTRAIN_SLURM_CHECK");
    if (off && strcmp(off, "0") == 0) return DDT_OK;
    const char *name = "SLURM_STEP_NUM_TASKS";
    const char *tasks = getenv(name);
    if (!tasks || !*tasks) {
        name = "SLURM_NTASKS";
        tasks = getenv(name);
    }
    if (!tasks || !*tasks) return DDT_OK;
    long expected = strtol(tasks, NULL, 10);
    if (expected <= 0 || expected == j->world_size) return DDT_OK;
    return ddt_error(DDT_ERR_USAGE,
                     "Slurm says %s=%ld, but MPI started a world of %d rank%s: the ranks do not "
                     "see each other, and each would train alone and overwrite the others' "
                     "output. Launch with srun --mpi=pmix (Debian's Open MPI speaks PMIx only) "
                     "or mpirun inside the allocation; DDTRAIN_SLURM_CHECK=0 skips this check",
                     name, expected, j->world_size, j->world_size == 1 ? "" : "s");
}

/* "ddtrain: error (rank R of N on HOST): MESSAGE", or without the rank in a job of one. */
static void print_error(const job *j, ddt_status status, int rank, const char *host) {
    const char *message = ddt_error_message();
    if (!*message) message = ddt_status_name(status);
    if (j->world_size > 1)
        fprintf(stderr, "ddtrain: error (rank %d of %d on %s): %s\n", rank, j->world_size, host,
                message);
    else
        fprintf(stderr, "ddtrain: error: %s\n", message);
    const char *debug = getenv("DDTRAIN_DEBUG");
    if (debug && *debug && strcmp(debug, "0") && *ddt_error_trail())
        fprintf(stderr, "ddtrain: trail: %s\n", ddt_error_trail());
    fflush(stderr);
}

/* MPI_Finalize waits for every rank, with no timeout of its own: under the job's deadline.
 * After it the process ends now, without HDF5's clean-up at exit where a failed file close
 * left it unable to run safely (io_exit.h). */
static int finish(job *j, int code) {
    fflush(stdout);
    fflush(stderr);
    if (j->mpi_initialised) {
        failpoint_stall("end", j->rank);
        deadline_start(j->timeout, "the end of the job (MPI_Finalize)",
                       "a rank stalled or was lost at the very end, after the ranks' last "
                       "meeting",
                       j);
        MPI_Finalize();
        deadline_stop();
    }
    j->mpi_initialised = false;
    if (io_exit_must_be_immediate()) _exit(code);
    return code;
}

int job_end(job *j, ddt_status status) {
    int origin = 0;
    const char *host = j->host;
    if (status != DDT_OK) {
        bool agreed = j->control && comm_failure_origin(j->control, &origin, &host);
        if (!agreed && j->world_size > 1 && j->mpi_initialised)
            job_abort(j, status, NULL); /* not every rank knows: end them all */
        if (j->rank == 0 || !agreed) print_error(j, status, agreed ? origin : j->rank, host);
        comm_finish_watchdog(j->control, false);
        comm_free(j->control);
        j->control = NULL;
        return finish(j, ddt_status_exit_code(status));
    }
    /* Every rank succeeded: meet once more, bounded, so that MPI_Finalize (which waits for
     * every rank) cannot hang on one that is lost at the very end. */
    if (j->control) {
        /* One bound in all: a drain that gave up ends the job at once, without the barrier
         * waiting out another timeout. */
        ddt_status ended = comm_finish_watchdog(j->control, true);
        if (ended == DDT_OK) ended = comm_barrier(j->control, "the end of the job");
        if (ended != DDT_OK) job_abort(j, DDT_ERR_COMM, NULL);
        comm_free(j->control);
        j->control = NULL;
    }
    return finish(j, 0);
}

_Noreturn void job_abort(job *j, ddt_status status, const char *message) {
    if (message) ddt_error(status, "%s", message);
    print_error(j, status, j->rank, j->host);
    file_temp_remove_all(); /* nothing unwinds after this: no temporary file is left */
    if (j->mpi_initialised) MPI_Abort(MPI_COMM_WORLD, ddt_status_exit_code(status));
    _exit(ddt_status_exit_code(status));
}

bool job_stdout_is_terminal(void) {
    if (!isatty(STDOUT_FILENO)) return false;
    if (!getenv("OMPI_COMM_WORLD_SIZE")) return true;
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/%d/fd/1", (int)getppid());
    ssize_t length = readlink(link, target, sizeof target - 1);
    if (length <= 0) return false;
    target[length] = '\0';
    return strncmp(target, "/dev/pts/", 9) == 0 || strncmp(target, "/dev/tty", 8) == 0;
}

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int signal_number) {
    stop_signal = signal_number;
}

void job_install_stop_handlers(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGUSR1, &action, NULL);
}

bool job_stop_requested(void) {
    return stop_signal != 0;
}
