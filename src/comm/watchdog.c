/* watchdog.c - arrival messages and liveness pings to rank 0, rank 0's pings to the others,
 * and the names of the ranks everybody waits for (see watchdog.h).
 *
 * Three kinds of message, each on its own tag of a private communicator (messages from one
 * rank with one tag arrive in order):
 *   - an arrival: one per meeting point, before its communication;
 *   - a ping: about once a second while a rank waits in communication, so a rank that is
 *     stopped or dead inside a collective (it has arrived) falls silent and can be named.
 *     A final ping of -1 (watchdog_free) says no more will come, so the drain is exact;
 *   - rank 0's ping: about once a second while rank 0 waits, to every other rank, so that
 *     they can name rank 0 when it is the one that stopped (silent: it has not reached their
 *     point, or stopped inside it). A final one of -1 ends them the same way. */
#include "comm/watchdog.h"
#include "util/clock.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ARRIVAL_TAG = 7, PING_TAG = 8, ROOT_PING_TAG = 9 };
static const double ping_interval = 1.0;

struct watchdog {
    MPI_Comm comm;
    int rank, size;
    double warn_after;
    FILE *log;
    char label[96]; /* the current point, for messages */
    /* every rank but 0: its last arrival and ping messages */
    int64_t sent_step;
    MPI_Request send;
    int64_t ping_value;
    MPI_Request ping;
    double last_ping;
    /* rank 0: a receive of each kind posted per other rank, and what each has said */
    int64_t *received;
    MPI_Request *receives;
    int64_t *ping_received;
    MPI_Request *ping_receives;
    int64_t *arrived;          /* last point each rank reached */
    double *last_heard;        /* when each rank last sent anything */
    bool *done;                /* its final ping seen */
    int64_t *root_ping_values; /* what the ping to each rank carries (its own buffer) */
    MPI_Request *root_pings;   /* the ping in flight to each rank */
    double last_root_ping;
    /* every rank but 0: rank 0's pings */
    int64_t root_ping_received;
    MPI_Request root_ping_receive;
    double root_last_heard;
    bool root_done; /* its final ping seen */
    int64_t current_point;
    double point_started;
    int64_t warned_point;
};

static void post_receive(watchdog *w, int r) {
    MPI_Irecv(&w->received[r], 1, MPI_INT64_T, r, ARRIVAL_TAG, w->comm, &w->receives[r]);
}

static void post_ping_receive(watchdog *w, int r) {
    MPI_Irecv(&w->ping_received[r], 1, MPI_INT64_T, r, PING_TAG, w->comm, &w->ping_receives[r]);
}

static void post_root_ping_receive(watchdog *w) {
    MPI_Irecv(&w->root_ping_received, 1, MPI_INT64_T, 0, ROOT_PING_TAG, w->comm,
              &w->root_ping_receive);
}

ddt_status watchdog_init(MPI_Comm world, double warn_after, FILE *log, watchdog **out) {
    *out = NULL;
    watchdog *w = calloc(1, sizeof *w);
    if (!w) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the watchdog");
    MPI_Comm_dup(world, &w->comm);
    MPI_Comm_rank(w->comm, &w->rank);
    MPI_Comm_size(w->comm, &w->size);
    w->warn_after = warn_after;
    w->log = log;
    w->send = MPI_REQUEST_NULL;
    w->ping = MPI_REQUEST_NULL;
    w->root_ping_receive = MPI_REQUEST_NULL;
    w->warned_point = -1;
    if (w->rank == 0) {
        size_t n = (size_t)w->size;
        w->received = calloc(n, sizeof *w->received);
        w->receives = calloc(n, sizeof *w->receives);
        w->ping_received = calloc(n, sizeof *w->ping_received);
        w->ping_receives = calloc(n, sizeof *w->ping_receives);
        w->arrived = calloc(n, sizeof *w->arrived);
        w->last_heard = calloc(n, sizeof *w->last_heard);
        w->done = calloc(n, sizeof *w->done);
        w->root_ping_values = calloc(n, sizeof *w->root_ping_values);
        w->root_pings = calloc(n, sizeof *w->root_pings);
        if (!w->received || !w->receives || !w->ping_received || !w->ping_receives || !w->arrived ||
            !w->last_heard || !w->done || !w->root_ping_values || !w->root_pings) {
            watchdog_abandon(w);
            return ddt_error(DDT_ERR_MEMORY, "out of host memory for the watchdog");
        }
        w->receives[0] = w->ping_receives[0] = MPI_REQUEST_NULL;
        w->done[0] = true;
        double now = clock_now();
        w->root_pings[0] = MPI_REQUEST_NULL;
        for (int r = 1; r < w->size; r++) {
            post_receive(w, r);
            post_ping_receive(w, r);
            w->last_heard[r] = now;
            w->root_pings[r] = MPI_REQUEST_NULL;
        }
    } else {
        post_root_ping_receive(w);
        w->root_last_heard = clock_now();
    }
    *out = w;
    return DDT_OK;
}

/* Rank 0: takes in every arrival and ping that is there, without blocking. */
static void take_messages(watchdog *w) {
    double now = clock_now();
    for (int r = 1; r < w->size; r++) {
        int ready = 1;
        while (ready) {
            MPI_Test(&w->receives[r], &ready, MPI_STATUS_IGNORE);
            if (!ready) break;
            w->arrived[r] = w->received[r];
            w->last_heard[r] = now;
            post_receive(w, r);
        }
        ready = !w->done[r];
        while (ready) {
            MPI_Test(&w->ping_receives[r], &ready, MPI_STATUS_IGNORE);
            if (!ready) break;
            w->last_heard[r] = now;
            if (w->ping_received[r] < 0) {
                w->done[r] = true; /* its last ping: post no more */
                break;
            }
            post_ping_receive(w, r);
        }
    }
}

/* Every rank but 0: takes in rank 0's pings that are there, without blocking. */
static void take_root_pings(watchdog *w) {
    while (!w->root_done) {
        int ready = 0;
        MPI_Test(&w->root_ping_receive, &ready, MPI_STATUS_IGNORE);
        if (!ready) break;
        w->root_last_heard = clock_now();
        if (w->root_ping_received < 0) {
            w->root_done = true; /* its last ping: post no more */
            break;
        }
        post_root_ping_receive(w);
    }
}

/* Rank 0, waiting in communication: tells every other rank it is alive (`value`: its current
 * point, or -1 for the last ping). A rank that has not taken the previous ping is skipped. */
static void send_root_pings(watchdog *w, int64_t value) {
    for (int r = 1; r < w->size; r++) {
        int sent = 1;
        if (w->root_pings[r] != MPI_REQUEST_NULL)
            MPI_Test(&w->root_pings[r], &sent, MPI_STATUS_IGNORE);
        if (!sent) continue;
        w->root_ping_values[r] = value;
        MPI_Isend(&w->root_ping_values[r], 1, MPI_INT64_T, r, ROOT_PING_TAG, w->comm,
                  &w->root_pings[r]);
    }
    w->last_root_ping = clock_now();
}

bool watchdog_root_silent(watchdog *w) {
    if (!w || w->rank == 0) return false;
    take_root_pings(w);
    return clock_now() - w->root_last_heard > 3 * ping_interval;
}

void watchdog_arrive(watchdog *w, int64_t point, const char *label) {
    if (!w) return;
    snprintf(w->label, sizeof w->label, "%s", label ? label : "");
    if (w->rank == 0) {
        w->arrived[0] = point;
        w->current_point = point;
        w->point_started = clock_now();
        take_messages(w);
        return;
    }
    /* The previous message was received long ago unless rank 0 is far behind; rank 0 takes
     * in messages whenever it polls, so this wait ends unless rank 0 is lost, in which case
     * the collective that follows times out instead. */
    int sent = 1;
    if (w->send != MPI_REQUEST_NULL) MPI_Test(&w->send, &sent, MPI_STATUS_IGNORE);
    if (!sent) return; /* skip this arrival: rank 0 still sees the rank as behind */
    w->sent_step = point;
    MPI_Isend(&w->sent_step, 1, MPI_INT64_T, 0, ARRIVAL_TAG, w->comm, &w->send);
}

const char *watchdog_point_label(const watchdog *w) {
    return w ? w->label : "";
}

const char *watchdog_lagging(watchdog *w, char *text, size_t size) {
    text[0] = '\0';
    if (!w || w->rank != 0) return text;
    take_messages(w);
    double now = clock_now();
    size_t used = 0;
    int count = 0;
    for (int r = 1; r < w->size && used + 16 < size; r++)
        if (w->arrived[r] < w->current_point || now - w->last_heard[r] > 3 * ping_interval)
            used += (size_t)snprintf(text + used, size - used, "%s%d", count++ ? ", " : "", r);
    return text;
}

/* A rank other than 0, waiting in communication: tells rank 0 it is alive. */
static void send_ping(watchdog *w) {
    int sent = 1;
    if (w->ping != MPI_REQUEST_NULL) MPI_Test(&w->ping, &sent, MPI_STATUS_IGNORE);
    if (!sent) return; /* rank 0 has not taken the last one yet */
    w->ping_value = w->sent_step;
    MPI_Isend(&w->ping_value, 1, MPI_INT64_T, 0, PING_TAG, w->comm, &w->ping);
    w->last_ping = clock_now();
}

void watchdog_poll(void *context) {
    watchdog *w = context;
    if (!w) return;
    if (w->rank != 0) {
        take_root_pings(w);
        if (clock_now() - w->last_ping >= ping_interval) send_ping(w);
        return;
    }
    if (clock_now() - w->last_root_ping >= ping_interval) send_root_pings(w, w->current_point);
    double waited = clock_now() - w->point_started;
    if (waited < w->warn_after || w->warned_point == w->current_point) return;
    char lagging[256];
    watchdog_lagging(w, lagging, sizeof lagging);
    w->warned_point = w->current_point;
    if (!w->log) return;
    if (lagging[0])
        fprintf(w->log,
                "ddtrain: warning: %s: waited %.0f s for rank(s) %s, which have not reached it "
                "or have gone silent (stalled or lost?)\n",
                w->label, waited, lagging);
    else
        fprintf(w->log,
                "ddtrain: warning: %s: waited %.0f s in communication although every rank "
                "reached it and answers: the network or an overloaded node?\n",
                w->label, waited);
    fflush(w->log);
}

/* Waits for a request, giving up at `deadline` (0: none); true if it completed. */
static bool wait_until(MPI_Request *request, double deadline) {
    for (;;) {
        int done = 0;
        MPI_Test(request, &done, MPI_STATUS_IGNORE);
        if (done) return true;
        if (deadline > 0 && clock_now() > deadline) return false;
        sched_yield();
    }
}

/* Waits for every request of `requests` (n) that is in flight, giving up at `deadline`. */
static bool wait_all_until(MPI_Request *requests, int n, double deadline) {
    for (int r = 0; r < n; r++)
        if (requests[r] != MPI_REQUEST_NULL && !wait_until(&requests[r], deadline)) return false;
    return true;
}

bool watchdog_free(watchdog *w, int64_t last_point, double timeout_seconds, char *lagging,
                   size_t size) {
    if (lagging && size) lagging[0] = '\0';
    if (!w) return true;
    double deadline = timeout_seconds > 0 ? clock_now() + timeout_seconds : 0;
    bool complete = true;
    if (w->rank == 0) {
        /* The last of rank 0's pings: after the one in flight to each rank. */
        complete = wait_all_until(w->root_pings, w->size, deadline);
        if (complete) send_root_pings(w, -1);
        /* Absorb every rank's arrivals up to the last point and its pings up to the final one;
         * a rank lost at the very end makes this give up, not hang. */
        for (int r = 1; r < w->size && complete; r++) {
            while (complete && w->arrived[r] < last_point) {
                complete = wait_until(&w->receives[r], deadline);
                if (!complete) break;
                w->arrived[r] = w->received[r];
                post_receive(w, r);
            }
            while (complete && !w->done[r]) {
                complete = wait_until(&w->ping_receives[r], deadline);
                if (!complete) break;
                if (w->ping_received[r] < 0)
                    w->done[r] = true;
                else
                    post_ping_receive(w, r);
            }
            if (!complete && lagging && size) snprintf(lagging, size, "%d", r);
        }
        if (complete) complete = wait_all_until(w->root_pings, w->size, deadline);
    } else {
        if (w->send != MPI_REQUEST_NULL && w->sent_step < last_point) {
            /* The last arrival was skipped (rank 0 was behind): send it now. */
            complete = wait_until(&w->send, deadline);
            if (complete) {
                w->sent_step = last_point;
                MPI_Isend(&w->sent_step, 1, MPI_INT64_T, 0, ARRIVAL_TAG, w->comm, &w->send);
            }
        }
        if (complete) complete = wait_until(&w->send, deadline);
        if (complete && w->ping != MPI_REQUEST_NULL) complete = wait_until(&w->ping, deadline);
        if (complete) {
            w->ping_value = -1;
            MPI_Isend(&w->ping_value, 1, MPI_INT64_T, 0, PING_TAG, w->comm, &w->ping);
            complete = wait_until(&w->ping, deadline);
        }
        /* Absorb rank 0's pings up to its last. */
        while (complete && !w->root_done) {
            complete = wait_until(&w->root_ping_receive, deadline);
            if (!complete) break;
            if (w->root_ping_received < 0)
                w->root_done = true;
            else
                post_root_ping_receive(w);
        }
        if (!complete && lagging && size) snprintf(lagging, size, "0");
    }
    watchdog_abandon(w);
    return complete;
}

void watchdog_abandon(watchdog *w) {
    if (!w) return;
    if (w->rank == 0 && w->receives && w->ping_receives) {
        for (int r = 1; r < w->size; r++) {
            if (w->receives[r] != MPI_REQUEST_NULL) {
                MPI_Cancel(&w->receives[r]);
                MPI_Wait(&w->receives[r], MPI_STATUS_IGNORE);
            }
            if (!w->done[r] && w->ping_receives[r] != MPI_REQUEST_NULL) {
                MPI_Cancel(&w->ping_receives[r]);
                MPI_Wait(&w->ping_receives[r], MPI_STATUS_IGNORE);
            }
        }
    }
    if (w->rank == 0 && w->root_pings)
        for (int r = 1; r < w->size; r++)
            if (w->root_pings[r] != MPI_REQUEST_NULL) MPI_Request_free(&w->root_pings[r]);
    if (w->rank != 0 && !w->root_done && w->root_ping_receive != MPI_REQUEST_NULL) {
        MPI_Cancel(&w->root_ping_receive);
        MPI_Wait(&w->root_ping_receive, MPI_STATUS_IGNORE);
    }
    if (w->send != MPI_REQUEST_NULL) MPI_Request_free(&w->send);
    if (w->ping != MPI_REQUEST_NULL) MPI_Request_free(&w->ping);
    MPI_Comm_free(&w->comm);
    free(w->received);
    free(w->receives);
    free(w->ping_received);
    free(w->ping_receives);
    free(w->arrived);
    free(w->last_heard);
    free(w->done);
    free(w->root_ping_values);
    free(w->root_pings);
    free(w);
}
