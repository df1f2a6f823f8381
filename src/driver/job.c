/* job.c - start-up, agreement on failures, and ending every rank together (see job.h). */
#include "driver/job.h"

#include <limits.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

ddt_status job_init(job *j, int *argc, char ***argv) {
    memset(j, 0, sizeof *j);
    int provided = 0;
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return ddt_error(DDT_ERR_COMM, "MPI_Init_thread failed");
    j->mpi_initialised = true;
    /* Errors come back as codes, so ddtrain can say what failed instead of MPI aborting. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &j->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &j->world_size);
    gethostname(j->host, sizeof j->host - 1);
    /* The node's ranks, found once while every rank is here (a collective). */
    MPI_Comm node;
    j->local_rank = 0;
    j->local_size = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, j->rank, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_rank(node, &j->local_rank);
        MPI_Comm_size(node, &j->local_size);
        MPI_Comm_free(&node);
    }
    if (provided < MPI_THREAD_FUNNELED)
        return ddt_error(DDT_ERR_COMM, "the MPI library does not support threads (needed for "
                                       "the reader thread)");
    return DDT_OK;
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

void job_print_error(const job *j, ddt_status status) {
    const char *message = ddt_error_message();
    if (!*message) message = ddt_status_name(status);
    if (j->world_size > 1)
        fprintf(stderr, "ddtrain: error (rank %d of %d on %s): %s\n", j->rank, j->world_size,
                j->host, message);
    else
        fprintf(stderr, "ddtrain: error: %s\n", message);
    const char *debug = getenv("DDTRAIN_DEBUG");
    if (debug && *debug && strcmp(debug, "0") && *ddt_error_trail())
        fprintf(stderr, "ddtrain: trail: %s\n", ddt_error_trail());
    fflush(stderr);
}

ddt_status job_agree(job *j, ddt_status local) {
    if (!j->mpi_initialised || j->world_size == 1) {
        if (local != DDT_OK) job_print_error(j, local);
        return local;
    }
    int first_failing = local != DDT_OK ? j->rank : INT_MAX;
    int rc = MPI_Allreduce(MPI_IN_PLACE, &first_failing, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        job_abort(j, DDT_ERR_COMM, "ranks could not agree on the job's state (MPI failed)");
    if (first_failing == INT_MAX) return DDT_OK;
    int code = (int)local;
    rc = MPI_Bcast(&code, 1, MPI_INT, first_failing, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        job_abort(j, DDT_ERR_COMM, "ranks could not agree on the job's state (MPI failed)");
    if (j->rank == first_failing) job_print_error(j, local);
    return (ddt_status)code;
}

int job_finish(job *j, ddt_status status) {
    fflush(stdout);
    fflush(stderr);
    if (j->mpi_initialised) MPI_Finalize();
    j->mpi_initialised = false;
    return ddt_status_exit_code(status);
}

_Noreturn void job_abort(job *j, ddt_status status, const char *message) {
    if (message) ddt_error(status, "%s", message);
    job_print_error(j, status);
    if (j->mpi_initialised) MPI_Abort(MPI_COMM_WORLD, ddt_status_exit_code(status));
    exit(ddt_status_exit_code(status));
}

void job_say(const job *j, const char *format, ...) {
    if (j->rank != 0) return;
    va_list args;
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    fflush(stdout);
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

size_t job_peak_rss_bytes(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
    return (size_t)usage.ru_maxrss * 1024; /* Linux reports KiB */
}

double job_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
