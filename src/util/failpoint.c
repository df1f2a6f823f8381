/* failpoint.c - DDTRAIN_DEBUG_STALL (see failpoint.h). */
#include "util/failpoint.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char stall_point[32];
static int stall_rank = -1;
static double stall_seconds = 3600;

static void read_environment(void) {
    const char *text = getenv("DDTRAIN_DEBUG_STALL");
    if (!text || !*text) return;
    size_t length = strcspn(text, ":");
    if (length == 0 || length >= sizeof stall_point || text[length] != ':') return;
    memcpy(stall_point, text, length);
    char *end = NULL;
    long rank = strtol(text + length + 1, &end, 10);
    if (end == text + length + 1 || rank < 0) return;
    if (*end == ':') {
        double seconds = strtod(end + 1, NULL);
        if (seconds > 0) stall_seconds = seconds;
    }
    stall_rank = (int)rank;
}

void failpoint_stall(const char *point, int rank) {
    pthread_once(&once, read_environment);
    if (stall_rank != rank || strcmp(point, stall_point) != 0) return;
    struct timespec pause = {(time_t)stall_seconds,
                             (long)((stall_seconds - (double)(time_t)stall_seconds) * 1e9)};
    while (nanosleep(&pause, &pause) != 0) {
    }
}
