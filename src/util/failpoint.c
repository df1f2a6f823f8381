/* failpoint.c - DDTRAIN_DEBUG_STALL and DDTRAIN_DEBUG_KILL (see failpoint.h). */
#include "util/failpoint.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct failpoint {
    char point[32];
    int rank; /* -1: none */
    double seconds;
} failpoint;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static failpoint stall = {.rank = -1, .seconds = 3600};
static failpoint death = {.rank = -1};
static void (*stall_observer)(const char *point, int rank, double seconds);

void failpoint_set_observer(void (*observer)(const char *point, int rank, double seconds)) {
    stall_observer = observer;
}

/* POINT:RANK[:SECONDS] */
static void parse(const char *variable, failpoint *f) {
    const char *text = getenv(variable);
    if (!text || !*text) return;
    size_t length = strcspn(text, ":");
    if (length == 0 || length >= sizeof f->point || text[length] != ':') return;
    memcpy(f->point, text, length);
    char *end = NULL;
    long rank = strtol(text + length + 1, &end, 10);
    if (end == text + length + 1 || rank < 0) return;
    if (*end == ':') {
        double seconds = strtod(end + 1, NULL);
        if (seconds > 0) f->seconds = seconds;
    }
    f->rank = (int)rank;
}

static void read_environment(void) {
    parse("DDTRAIN_DEBUG_STALL", &stall);
    parse("DDTRAIN_DEBUG_KILL", &death);
}

void failpoint_stall(const char *point, int rank) {
    pthread_once(&once, read_environment);
    if (stall.rank != rank || strcmp(point, stall.point) != 0) return;
    if (stall_observer) stall_observer(point, rank, stall.seconds);
    struct timespec pause = {(time_t)stall.seconds,
                             (long)((stall.seconds - (double)(time_t)stall.seconds) * 1e9)};
    while (nanosleep(&pause, &pause) != 0) {
    }
}

void failpoint_kill(const char *point, int rank) {
    pthread_once(&once, read_environment);
    if (death.rank != rank || strcmp(point, death.point) != 0) return;
    raise(SIGKILL);
}
