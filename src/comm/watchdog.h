/* watchdog.h - naming the rank everybody is waiting for.
 *
 * Every rank tells rank 0 each time it reaches a point where all ranks meet (a set-up
 * agreement, a training step, an evaluation, a checkpoint): one small non-blocking message
 * per point, on a communicator of its own. While a rank waits in communication it pings rank
 * 0 about once a second: watchdog_poll(), installed as the communicators' wait hook, runs on
 * every rank. While rank 0 waits, watchdog_poll() looks at who has not arrived at its current
 * point or has gone silent: past `warn_after` seconds it writes a warning naming them and the
 * point ("step 43: waited 3 s for rank(s) 1, ..."), and watchdog_lagging() gives the same list
 * for the error when the wait times out. Rank 0 in turn pings every other rank about once a
 * second while it waits, so that when rank 0 itself is the one lagging (it has not reached
 * the point, or stopped inside it) the others can name it: watchdog_root_silent().
 *
 * Nothing here waits without bound: the drain at the end (watchdog_free) gives up after its
 * timeout, so a rank lost at the very end cannot hang the others.
 *
 * Usage (comm_enable_watchdog() does this for a communicator):
 *     watchdog *w;
 *     DDT_CHECK(watchdog_init(world, 30.0, stderr, &w));
 *     comm_set_wait_hook(c, watchdog_poll, w);
 *     at each meeting point: watchdog_arrive(w, ++point, "step 17"); ... collectives ...
 *     at the end, on every rank: watchdog_free(w, point, 30.0, NULL, 0);
 */
#ifndef DDT_COMM_WATCHDOG_H
#define DDT_COMM_WATCHDOG_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/status.h"

typedef struct watchdog watchdog;

/* Collective over `world` (duplicates it). Warnings go to `log` (rank 0). */
ddt_status watchdog_init(MPI_Comm world, double warn_after, FILE *log, watchdog **out);
/* Every rank, at meeting point number `point` (increasing), before its communication; the
 * label names the point in messages ("step 17", "the checkpoint after step 500"). */
void watchdog_arrive(watchdog *w, int64_t point, const char *label);
/* Every rank, while waiting: pings (ranks > 0), or takes in arrivals and warns (rank 0). */
void watchdog_poll(void *w);
/* Rank 0: "2, 5", the ranks not yet at the current point or silent ("" when none or not
 * rank 0). */
const char *watchdog_lagging(watchdog *w, char *text, size_t size);
/* Every rank but 0: whether rank 0 has been silent for a few seconds (it is not waiting in
 * communication: it has not reached the point this rank waits at, or stopped inside it);
 * false on rank 0. */
bool watchdog_root_silent(watchdog *w);
/* The label of the current point ("" before the first). */
const char *watchdog_point_label(const watchdog *w);
/* Collective at a normal end (every rank passes the last point it arrived at): drains the
 * messages and frees, giving up after `timeout_seconds` (0: no limit). Returns whether the
 * drain completed; if not, `lagging` (may be NULL) names the rank it gave up on ("3"; rank
 * 0 for every other rank). After a failure call watchdog_abandon() instead. */
bool watchdog_free(watchdog *w, int64_t last_point, double timeout_seconds, char *lagging,
                   size_t size);
void watchdog_abandon(watchdog *w);

#endif
