/* check.h - the tiny assertion kit shared by ddtrain's C unit tests.
 *
 * CHECK(cond) records a failure with file:line and the condition but keeps going, so one run
 * shows every broken case; check_finish() prints "N passed, M failed" and returns the exit
 * code. CHECK_OK(expr) expects a DDT_OK status and prints the library's message otherwise.
 *
 * A check that cannot prove anything where it runs (an ordering between ranks on one rank, a
 * timeout that needs a peer) is recorded with check_not_run(WHAT, WHY) rather than passed:
 * check_finish() then lists each one and ends with "N passed, M failed, K not run"
 *     not run: stream ordering: compute work, bucketed all-reduce, compute work (1 rank)
 *     41 passed, 0 failed, 1 not run
 * (scripts read the last line; the list comes before it). Not-run checks do not fail a test.
 *
 * Usage:
 *     int main(void) {
 *         CHECK(1 + 1 == 2);
 *         CHECK_NEAR(x, 1.0, 1e-6);
 *         return check_finish();
 *     }
 */
#ifndef DDT_TESTS_CHECK_H
#define DDT_TESTS_CHECK_H

#include "util/status.h"

void check_record(int ok, const char *file, int line, const char *text);
void check_record_status(ddt_status status, const char *file, int line, const char *text);
int check_near(double actual, double expected, double tolerance, const char *file, int line,
               const char *text);
int check_finish(void);
/* Records that the check WHAT did not run, and WHY; the same WHAT and WHY recorded again (a
 * helper called in a loop) counts once. WHY holds no parentheses: scripts read it as the last
 * parenthesised group of the "not run:" line. */
void check_not_run(const char *what, const char *why);
/* check_finish with PASSED and FAILED summed over MPI ranks by the caller, printed by one rank
 * with its own not-run list (an MPI test leaves a check out on every rank alike, for the world
 * size). */
int check_finish_totals(int passed, int failed);
/* This process's counts so far (for the MPI tests to sum before check_finish_totals). */
void check_counts(int *passed, int *failed);
/* A scratch directory for this test (created; under $DDTRAIN_TEST_TMP or /tmp). */
const char *check_temp_dir(void);

#define CHECK(cond) check_record(!!(cond), __FILE__, __LINE__, #cond)
#define CHECK_OK(expr) check_record_status((expr), __FILE__, __LINE__, #expr)
/* |actual - expected| <= tolerance * max(1, |expected|) */
#define CHECK_NEAR(actual, expected, tolerance)                                                    \
    check_near((actual), (expected), (tolerance), __FILE__, __LINE__, #actual " ~ " #expected)

#endif
