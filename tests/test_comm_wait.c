/* test_comm_wait.c - the one waiting policy of every communication backend (comm_wait_tick,
 * used by the MPI backend's polls and the NCCL backend's alike): the wait hook runs every
 * half second while a wait lasts, a timeout ends the wait with a message naming the
 * operation and --comm-timeout, and a timeout of 0 means no limit on either backend. Time in
 * which the process did not run (stopped by SIGSTOP, then continued: a gap between ticks far
 * longer than polling makes) counts as one second, so a rank continued after a stop does not
 * time out at once, blaming another for its own stop. No MPI call is made.
 */
#include <string.h>
#include <time.h>

#include "check.h"
#include "comm/comm_backend.h"

static int hook_calls;

static void count_hook(void *context) {
    (void)context;
    hook_calls++;
}

/* Ticks for `seconds` (or until a tick fails); returns the first failure, else DDT_OK. */
static ddt_status wait_for(comm *c, double seconds, double *failed_after) {
    comm_wait w = comm_wait_begin(c);
    for (;;) {
        ddt_status status = comm_wait_tick(c, &w, "a test collective");
        if (status != DDT_OK) {
            *failed_after = w.now - w.started;
            return status;
        }
        if (w.now - w.started >= seconds) return DDT_OK;
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
}

int main(void) {
    comm c;
    memset(&c, 0, sizeof c);
    double failed_after = -1;

    /* A timeout ends the wait, at the timeout, with the documented message. */
    comm_set_timeout(&c, 0.2);
    comm_set_wait_hook(&c, count_hook, NULL);
    CHECK(wait_for(&c, 5.0, &failed_after) == DDT_ERR_COMM);
    CHECK(failed_after >= 0.2 && failed_after < 1.0);
    CHECK(strstr(ddt_error_message(), "a test collective") != NULL);
    CHECK(strstr(ddt_error_message(), "--comm-timeout") != NULL);

    /* 0 (and anything not positive) means no limit, as on every backend: the wait goes on,
     * and the hook (the watchdog's pings and warnings) keeps being called. */
    const double no_limit[] = {0.0, -1.0};
    for (int i = 0; i < 2; i++) {
        comm_set_timeout(&c, no_limit[i]);
        hook_calls = 0;
        CHECK_OK(wait_for(&c, 1.2, &failed_after));
        CHECK(hook_calls >= 2 && hook_calls <= 3);
    }

    /* A stop of 30 s right after the wait began (the clock moved on, the process did not run)
     * counts as 1 s: the wait goes on under a timeout of 5 s. A gap of half a second (a slow
     * poll) counts in full. */
    comm_set_timeout(&c, 5.0);
    comm_wait stopped = comm_wait_begin(&c);
    stopped.started -= 30;
    stopped.now -= 30;
    CHECK_OK(comm_wait_tick(&c, &stopped, "a test collective"));
    CHECK(stopped.now - stopped.started >= 1.0 && stopped.now - stopped.started < 1.5);
    comm_wait slow = comm_wait_begin(&c);
    slow.started -= 0.5;
    slow.now -= 0.5;
    CHECK_OK(comm_wait_tick(&c, &slow, "a test collective"));
    CHECK(slow.now - slow.started >= 0.5 && slow.now - slow.started < 0.9);

    /* Without a hook nothing is called, and a long timeout does not fire early. */
    comm_set_wait_hook(&c, NULL, NULL);
    comm_set_timeout(&c, 300);
    hook_calls = 0;
    CHECK_OK(wait_for(&c, 0.6, &failed_after));
    CHECK(hook_calls == 0);
    return check_finish();
}
