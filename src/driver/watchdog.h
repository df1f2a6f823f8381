/* watchdog.h - naming the rank everybody is waiting for.
 *
 * Before a step's communication every rank tells rank 0 that it has arrived (one small
 * non-blocking message per step, on a communicator of its own), and while it waits in
 * communication it pings rank 0 about once a second: watchdog_poll(), installed as the
 * communicator's wait hook, runs on every rank. While rank 0 waits, watchdog_poll() looks at
 * who has not arrived or has gone silent: past `warn_after` seconds it prints a warning naming
 * them (a stalled rank; one stopped inside the all-reduce is silent too), and
 * watchdog_lagging() gives the same list for the error printed when the wait times out (a lost
 * rank). If rank 0 itself is the one lagging, nobody is named and the timeout message says so.
 *
 * Usage:
 *     watchdog *w;
 *     DDT_CHECK(watchdog_init(MPI_COMM_WORLD, 30.0, &w));
 *     comm_set_wait_hook(c, watchdog_poll, w);
 *     each step: watchdog_arrive(w, step); ... collectives ...
 *     at the end, on every rank: watchdog_free(w, last_step);
 */
#ifndef DDT_DRIVER_WATCHDOG_H
#define DDT_DRIVER_WATCHDOG_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

typedef struct watchdog watchdog;

ddt_status watchdog_init(MPI_Comm world, double warn_after, watchdog **out);
/* Every rank, once per step, before the step's communication. */
void watchdog_arrive(watchdog *w, int64_t step);
/* Rank 0: takes in arrivals and warns (once per step) about ranks missing for too long. */
void watchdog_poll(void *w);
/* Rank 0: "ranks 2, 5" not yet at the current step ("" when none or not rank 0). */
const char *watchdog_lagging(watchdog *w, char *text, size_t size);
/* Collective at a normal end (every rank passes the last step it arrived at); drains and
 * frees. After a failure call watchdog_abandon() instead. */
void watchdog_free(watchdog *w, int64_t last_step);
void watchdog_abandon(watchdog *w);

#endif
