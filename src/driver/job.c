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
    if (provided < MPI_THREAD_FUNNELED)
        return ddt_error(DDT_ERR_COMM, "the MPI library does not support threads (needed for "
                                       "the reader thread)");
    return DDT_OK;
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
