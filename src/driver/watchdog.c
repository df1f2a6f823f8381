/* watchdog.c - per-step arrival messages to rank 0 and the names of missing ranks (see
 * watchdog.h). */
#include "driver/watchdog.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct watchdog {
    MPI_Comm comm; /* a duplicate, so arrivals never mix with other traffic */
    int rank, size;
    double warn_after;
    /* every rank: its last arrival message */
    int64_t sent_step;
    MPI_Request send;
    /* rank 0: one receive posted per other rank, and what each has reported */
    int64_t *received; /* receive buffers */
    int64_t *arrived;  /* last step each rank reached */
    MPI_Request *receives;
    int64_t current_step;
    double step_started;
    int64_t warned_step;
};

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

enum { ARRIVAL_TAG = 7 };

static void post_receive(watchdog *w, int r) {
    MPI_Irecv(&w->received[r], 1, MPI_INT64_T, r, ARRIVAL_TAG, w->comm, &w->receives[r]);
}

ddt_status watchdog_init(MPI_Comm world, double warn_after, watchdog **out) {
    *out = NULL;
    watchdog *w = calloc(1, sizeof *w);
    if (!w) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the watchdog");
    MPI_Comm_dup(world, &w->comm);
    MPI_Comm_rank(w->comm, &w->rank);
    MPI_Comm_size(w->comm, &w->size);
    w->warn_after = warn_after;
    w->send = MPI_REQUEST_NULL;
    w->warned_step = -1;
    if (w->rank == 0) {
        w->received = calloc((size_t)w->size, sizeof *w->received);
        w->arrived = calloc((size_t)w->size, sizeof *w->arrived);
        w->receives = calloc((size_t)w->size, sizeof *w->receives);
        if (!w->received || !w->arrived || !w->receives) {
            watchdog_abandon(w);
            return ddt_error(DDT_ERR_MEMORY, "out of host memory for the watchdog");
        }
        w->receives[0] = MPI_REQUEST_NULL;
        for (int r = 1; r < w->size; r++)
            post_receive(w, r);
    }
    *out = w;
    return DDT_OK;
}

/* Rank 0: takes in every arrival message that is there, without blocking. */
static void take_arrivals(watchdog *w) {
    for (int r = 1; r < w->size; r++) {
        int done = 1;
        while (done) {
            MPI_Test(&w->receives[r], &done, MPI_STATUS_IGNORE);
            if (!done) break;
            w->arrived[r] = w->received[r];
            post_receive(w, r);
        }
    }
}

void watchdog_arrive(watchdog *w, int64_t step) {
    if (!w) return;
    if (w->rank == 0) {
        w->arrived[0] = step;
        w->current_step = step;
        w->step_started = now_seconds();
        take_arrivals(w);
        return;
    }
    /* The previous message was received long ago unless rank 0 is far behind. */
    MPI_Wait(&w->send, MPI_STATUS_IGNORE);
    w->sent_step = step;
    MPI_Isend(&w->sent_step, 1, MPI_INT64_T, 0, ARRIVAL_TAG, w->comm, &w->send);
}

const char *watchdog_lagging(watchdog *w, char *text, size_t size) {
    text[0] = '\0';
    if (!w || w->rank != 0) return text;
    take_arrivals(w);
    size_t used = 0;
    int count = 0;
    for (int r = 1; r < w->size && used + 16 < size; r++)
        if (w->arrived[r] < w->current_step)
            used += (size_t)snprintf(text + used, size - used, "%s%d", count++ ? ", " : "", r);
    return text;
}

void watchdog_poll(void *context) {
    watchdog *w = context;
    if (!w || w->rank != 0) return;
    double waited = now_seconds() - w->step_started;
    if (waited < w->warn_after || w->warned_step == w->current_step) return;
    char lagging[256];
    watchdog_lagging(w, lagging, sizeof lagging);
    w->warned_step = w->current_step;
    if (lagging[0])
        fprintf(stderr,
                "ddtrain: warning: step %" PRId64 ": waited %.0f s for rank(s) %s, which have "
                "not reached it (stalled or lost?)\n",
                w->current_step, waited, lagging);
    else
        fprintf(stderr,
                "ddtrain: warning: step %" PRId64 ": waited %.0f s in communication although "
                "every rank reached the step: one is stalled inside the all-reduce (a stopped "
                "or overloaded process, or the network)\n",
                w->current_step, waited);
    fflush(stderr);
}

void watchdog_free(watchdog *w, int64_t last_step) {
    if (!w) return;
    if (w->rank == 0) {
        /* Absorb every rank's messages up to the last step, then cancel the spare receives. */
        for (int r = 1; r < w->size; r++) {
            while (w->arrived[r] < last_step) {
                MPI_Wait(&w->receives[r], MPI_STATUS_IGNORE);
                w->arrived[r] = w->received[r];
                post_receive(w, r);
            }
        }
    } else {
        MPI_Wait(&w->send, MPI_STATUS_IGNORE);
    }
    watchdog_abandon(w);
}

void watchdog_abandon(watchdog *w) {
    if (!w) return;
    if (w->rank == 0 && w->receives) {
        for (int r = 1; r < w->size; r++) {
            if (w->receives[r] == MPI_REQUEST_NULL) continue;
            MPI_Cancel(&w->receives[r]);
            MPI_Wait(&w->receives[r], MPI_STATUS_IGNORE);
        }
    }
    if (w->send != MPI_REQUEST_NULL) MPI_Request_free(&w->send);
    if (w->comm != MPI_COMM_NULL) MPI_Comm_free(&w->comm);
    free(w->received);
    free(w->arrived);
    free(w->receives);
    free(w);
}
