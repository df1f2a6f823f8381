/* comm_control.c - the control plane (see comm.h): small host-side collectives, every one a
 * non-blocking MPI call polled under the communicator's timeout and wait hook, the agreement
 * on failures, and the watchdog's meeting points. Nothing here can wait without bound: a
 * stalled or lost rank becomes DDT_ERR_COMM after the timeout, with the watchdog naming it. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm_backend.h"
#include "comm/watchdog.h"

static MPI_Op mpi_op(comm_reduce_op op) {
    switch (op) {
    case COMM_REDUCE_MIN:
        return MPI_MIN;
    case COMM_REDUCE_MAX:
        return MPI_MAX;
    case COMM_REDUCE_SUM:
        break;
    }
    return MPI_SUM;
}

/* Starts `rc`'s request (already issued) and waits for it under the communicator's policy. */
static ddt_status finish(comm *c, int rc, MPI_Request *request, const char *call,
                         const char *what) {
    if (rc != MPI_SUCCESS) {
        char text[160];
        snprintf(text, sizeof text, "%s (%s)", call, what);
        return comm_mpi_error(rc, text);
    }
    return comm_mpi_wait(c, request, what);
}

ddt_status comm_allreduce_doubles(comm *c, double *values, int count, comm_reduce_op op) {
    MPI_Request request;
    int rc =
        MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, mpi_op(op), c->world, &request);
    return finish(c, rc, &request, "MPI_Iallreduce", "the ranks' agreement on values");
}

ddt_status comm_allreduce_u64(comm *c, uint64_t *values, int count, comm_reduce_op op) {
    MPI_Request request;
    int rc =
        MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_UINT64_T, mpi_op(op), c->world, &request);
    return finish(c, rc, &request, "MPI_Iallreduce", "the ranks' agreement on values");
}

ddt_status comm_broadcast_bytes(comm *c, void *buffer, size_t bytes, int root, const char *what) {
    char *p = buffer;
    do { /* MPI counts are int */
        int part = bytes > INT_MAX ? INT_MAX : (int)bytes;
        MPI_Request request;
        int rc = MPI_Ibcast(p, part, MPI_BYTE, root, c->world, &request);
        DDT_CHECK(finish(c, rc, &request, "MPI_Ibcast", what));
        p += part;
        bytes -= (size_t)part;
    } while (bytes > 0);
    return DDT_OK;
}

ddt_status comm_gather_bytes(comm *c, const void *mine, size_t bytes, void *all, int root,
                             const char *what) {
    if (bytes > INT_MAX)
        return ddt_error(DDT_ERR_INTERNAL, "%s: %zu bytes per rank is too much to gather", what,
                         bytes);
    MPI_Request request;
    int rc = MPI_Igather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, root, c->world,
                         &request);
    return finish(c, rc, &request, "MPI_Igather", what);
}

ddt_status comm_gatherv_bytes(comm *c, const void *mine, size_t bytes, void *all,
                              const int *counts, const int *displacements, int root,
                              const char *what) {
    if (bytes > INT_MAX)
        return ddt_error(DDT_ERR_INTERNAL, "%s: %zu bytes from one rank is too much to gather",
                         what, bytes);
    MPI_Request request;
    int rc = MPI_Igatherv(mine, (int)bytes, MPI_BYTE, all, counts, displacements, MPI_BYTE, root,
                          c->world, &request);
    return finish(c, rc, &request, "MPI_Igatherv", what);
}

ddt_status comm_allgather_bytes(comm *c, const void *mine, size_t bytes, void *all,
                                const char *what) {
    if (bytes > INT_MAX)
        return ddt_error(DDT_ERR_INTERNAL, "%s: %zu bytes per rank is too much to gather", what,
                         bytes);
    MPI_Request request;
    int rc =
        MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, c->world, &request);
    return finish(c, rc, &request, "MPI_Iallgather", what);
}

ddt_status comm_barrier(comm *c, const char *what) {
    MPI_Request request;
    int rc = MPI_Ibarrier(c->world, &request);
    return finish(c, rc, &request, "MPI_Ibarrier", what);
}

ddt_status comm_broadcast_text(comm *c, const char *mine, char **root_text, const char *what) {
    *root_text = NULL;
    uint64_t length = c->rank == 0 ? (uint64_t)strlen(mine) : 0;
    DDT_CHECK(comm_broadcast_bytes(c, &length, sizeof length, 0, what));
    char *text = malloc((size_t)length + 1);
    /* Out of memory on one rank must not leave the others in the broadcast: every rank takes
     * part, into a scratch buffer if it has no room (and fails after). */
    static char scratch[1 << 16];
    ddt_status status = DDT_OK;
    if (c->rank == 0 && text) memcpy(text, mine, (size_t)length);
    for (uint64_t done = 0; done < length && status == DDT_OK;) {
        size_t part = length - done > sizeof scratch ? sizeof scratch : (size_t)(length - done);
        status = comm_broadcast_bytes(c, text ? text + done : scratch, part, 0, what);
        done += part;
    }
    if (status != DDT_OK) {
        free(text);
        return status;
    }
    if (!text)
        return ddt_error(DDT_ERR_MEMORY, "%s: out of host memory for %llu bytes", what,
                         (unsigned long long)length);
    text[length] = '\0';
    *root_text = text;
    return DDT_OK;
}

/* ---- agreement ------------------------------------------------------------------------- */

/* What the failing rank sends everybody. */
typedef struct failure_report {
    int code;
    int origin; /* the rank the failure came from (itself, or an earlier agreement's) */
    char host[64];
    char message[1024];
} failure_report;

ddt_status comm_agree(comm *c, ddt_status local, const char *where) {
    /* A communication failure is not agreed over communication that failed: the caller ends
     * the job (MPI_Abort) at once rather than waiting out another timeout here. */
    if (local == DDT_ERR_COMM && c->failure_origin < 0) return local;
    comm_arrive(c, where);
    if (c->world_size == 1) {
        if (local != DDT_OK && c->failure_origin < 0) {
            c->failure_origin = 0;
            gethostname(c->failure_host, sizeof c->failure_host - 1);
        }
        return local;
    }
    int first_failing = local != DDT_OK ? c->rank : INT_MAX;
    MPI_Request request;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, &first_failing, 1, MPI_INT, MPI_MIN, c->world, &request);
    if (local != DDT_OK) {
        /* This rank's own message must survive a timeout's: keep it aside. */
        failure_report mine = {.code = (int)local};
        snprintf(mine.message, sizeof mine.message, "%s", ddt_error_message());
        ddt_status status = finish(c, rc, &request, "MPI_Iallreduce", where);
        if (status != DDT_OK) return status;
        ddt_error(local, "%s", mine.message);
    } else {
        DDT_CHECK(finish(c, rc, &request, "MPI_Iallreduce", where));
    }
    if (first_failing == INT_MAX) return DDT_OK;

    failure_report report;
    memset(&report, 0, sizeof report);
    if (c->rank == first_failing) {
        report.code = (int)local;
        report.origin = c->failure_origin >= 0 ? c->failure_origin : c->rank;
        if (c->failure_origin >= 0)
            snprintf(report.host, sizeof report.host, "%s", c->failure_host);
        else
            gethostname(report.host, sizeof report.host - 1);
        snprintf(report.message, sizeof report.message, "%s", ddt_error_message());
    }
    DDT_CHECK(comm_broadcast_bytes(c, &report, sizeof report, first_failing, where));
    c->failure_origin = report.origin;
    snprintf(c->failure_host, sizeof c->failure_host, "%s", report.host);
    return ddt_error((ddt_status)report.code, "%s", report.message);
}

bool comm_failure_origin(const comm *c, int *rank, const char **host) {
    if (!c || c->failure_origin < 0) return false;
    *rank = c->failure_origin;
    *host = c->failure_host;
    return true;
}

/* ---- the watchdog's meeting points ---------------------------------------------------- */

void comm_arrive(comm *c, const char *label) {
    c->meeting_points++;
    if (c->watchdog) watchdog_arrive(c->watchdog, c->meeting_points, label);
}

ddt_status comm_enable_watchdog(comm *c, double warn_after, FILE *log) {
    if (c->watchdog) return DDT_OK;
    DDT_CHECK(watchdog_init(c->world, warn_after, log, &c->watchdog));
    comm_set_wait_hook(c, comm_watchdog_poll, c);
    return DDT_OK;
}

void comm_watchdog_poll(void *control_comm) {
    comm *c = control_comm;
    if (c && c->watchdog) watchdog_poll(c->watchdog);
}

const char *comm_lagging_ranks(comm *c, char *text, size_t size) {
    text[0] = '\0';
    if (c && c->watchdog) watchdog_lagging(c->watchdog, text, size);
    return text;
}

bool comm_root_silent(comm *c) {
    return c && c->watchdog && watchdog_root_silent(c->watchdog);
}

ddt_status comm_finish_watchdog(comm *c, bool normal_end) {
    if (!c || !c->watchdog) return DDT_OK;
    watchdog *w = c->watchdog;
    c->watchdog = NULL;
    if (!normal_end) {
        watchdog_abandon(w);
        return DDT_OK;
    }
    char lagging[32];
    if (watchdog_free(w, c->meeting_points, c->timeout_seconds, lagging, sizeof lagging))
        return DDT_OK;
    return ddt_error(DDT_ERR_COMM,
                     "the end of the job made no progress for %g s (--comm-timeout): rank(s) %s "
                     "never reached it or went silent (stalled or lost)",
                     c->timeout_seconds, lagging[0] ? lagging : "?");
}
