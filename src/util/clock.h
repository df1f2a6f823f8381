/* clock.h - the one clock ddtrain measures time with: seconds on CLOCK_MONOTONIC (never goes
 * backwards, unaffected by changes of the wall clock), as a double. Every duration in the
 * program, its timelines and its tests comes from clock_now(), so times from different modules
 * can be subtracted from each other.
 *
 * Usage:
 *     double started = clock_now();
 *     ...
 *     double seconds = clock_now() - started;
 */
#ifndef DDT_UTIL_CLOCK_H
#define DDT_UTIL_CLOCK_H

/* Seconds since an arbitrary fixed point (CLOCK_MONOTONIC). */
double clock_now(void);

#endif
