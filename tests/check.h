/* check.h - the tiny assertion kit shared by ddtrain's C unit tests.
 *
 * CHECK(cond) records a failure with file:line and the condition but keeps going, so one run
 * shows every broken case; check_finish() prints "N passed, M failed" and returns the exit
 * code. CHECK_OK(expr) expects a DDT_OK status and prints the library's message otherwise.
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
/* A scratch directory for this test (created; under $DDTRAIN_TEST_TMP or /tmp). */
const char *check_temp_dir(void);

#define CHECK(cond) check_record(!!(cond), __FILE__, __LINE__, #cond)
#define CHECK_OK(expr) check_record_status((expr), __FILE__, __LINE__, #expr)
/* |actual - expected| <= tolerance * max(1, |expected|) */
#define CHECK_NEAR(actual, expected, tolerance)                                                    \
    check_near((actual), (expected), (tolerance), __FILE__, __LINE__, #actual " ~ " #expected)

#endif
