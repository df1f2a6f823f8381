/* deadline.c - the thread that ends a rank whose start-up or MPI_Finalize does not finish in
 * time (see deadline.h). It wakes four times a second while a phase is counted and sleeps on
 * a condition variable otherwise; each wake-up counts the time since the last one, but at
 * most a second of it, so a stretch in which the process did not run (stopped) counts as a
 * second. The message is formatted with snprintf and written with one write(2). */
#include "driver/deadline.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/files.h"
#include "util/watcher.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed;
static bool thread_started;
static const char *current_phase; /* NULL: nothing counted */
static const char *current_reason;
static double limit, counted, last_tick;
static char who[160]; /* "rank 1 of 2 on vm" or "" (a job of one) */

static const double tick_seconds = 0.25, longest_counted_gap = 1.0;

/* "rank R of N on HOST", from the job once MPI is up, else from the launcher's variables. */
static void describe_rank(const job *j) {
    char host[64] = "";
    int rank = -1, size = 0;
    if (j) {
        rank = j->rank;
        size = j->world_size;
        snprintf(host, sizeof host, "%s", j->host);
    } else {
        job_launcher_rank(&rank, &size);
        gethostname(host, sizeof host - 1);
    }
    if (size == 1 || (rank < 0 && size == 0))
        who[0] = '\0';
    else if (size > 0)
        snprintf(who, sizeof who, "rank %d of %d on %s", rank, size, host);
    else
        snprintf(who, sizeof who, "rank %d on %s", rank, host);
}

static _Noreturn void report_and_exit(const char *phase, const char *reason, double seconds) {
    char text[1024];
    int length = snprintf(text, sizeof text,
                          "ddtrain: error%s%s%s: %s did not finish within %g s (--comm-timeout): "
                          "%s. This rank ends; the launcher ends the others (mpirun does at "
                          "once, srun with --kill-on-bad-exit=1)\n",
                          who[0] ? " (" : "", who, who[0] ? ")" : "", phase, seconds, reason);
    if (length > (int)sizeof text - 1) length = (int)sizeof text - 1;
    for (int done = 0; done < length;) {
        ssize_t n = write(STDERR_FILENO, text + done, (size_t)(length - done));
        if (n <= 0) break;
        done += (int)n;
    }
    file_temp_remove_all(); /* nothing unwinds after _exit: no temporary file is left */
    _exit(1);
}

static void *watch(void *unused) {
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        if (!current_phase) {
            pthread_cond_wait(&changed, &lock);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)(tick_seconds * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&changed, &lock, &until);
        if (!current_phase) continue;
        double now = clock_now(), gap = now - last_tick;
        last_tick = now;
        counted += gap < longest_counted_gap ? gap : longest_counted_gap;
        if (counted > limit) report_and_exit(current_phase, current_reason, limit);
    }
    return NULL;
}

static void start_thread(void) {
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&changed, &attributes);
    pthread_condattr_destroy(&attributes);
    thread_started = watcher_start(watch, NULL);
}

void deadline_start(double seconds, const char *phase, const char *reason, const job *j) {
    if (!(seconds > 0)) return; /* no bound (NaN too) */
    pthread_mutex_lock(&lock);
    if (!thread_started) start_thread();
    describe_rank(j);
    limit = seconds;
    counted = 0;
    last_tick = clock_now();
    current_phase = phase;
    current_reason = reason;
    pthread_cond_signal(&changed);
    pthread_mutex_unlock(&lock);
}

void deadline_phase(const char *phase, const char *reason, const job *j) {
    pthread_mutex_lock(&lock);
    if (current_phase) {
        describe_rank(j);
        current_phase = phase;
        current_reason = reason;
    }
    pthread_mutex_unlock(&lock);
}

void deadline_stop(void) {
    pthread_mutex_lock(&lock);
    current_phase = NULL;
    pthread_cond_signal(&changed);
    pthread_mutex_unlock(&lock);
}
