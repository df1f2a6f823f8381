/* check.c - implementation of the unit-test assertion kit (check.h). */
#include "check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int checks_passed;
static int checks_failed;

/* The checks that did not run, distinct (WHAT, WHY) pairs in the order first recorded. */
enum { NOT_RUN_LISTED = 32 };
static struct {
    char what[160];
    char why[96];
} not_run[NOT_RUN_LISTED];
static int not_run_count;

void check_record(int ok, const char *file, int line, const char *text) {
    if (ok) {
        checks_passed++;
        return;
    }
    checks_failed++;
    fprintf(stderr, "FAIL %s:%d: %s\n", file, line, text);
}

void check_record_status(ddt_status status, const char *file, int line, const char *text) {
    if (status == DDT_OK) {
        checks_passed++;
        return;
    }
    checks_failed++;
    fprintf(stderr, "FAIL %s:%d: %s -> %s: %s\n", file, line, text, ddt_status_name(status),
            ddt_error_message());
}

int check_near(double actual, double expected, double tolerance, const char *file, int line,
               const char *text) {
    double scale = fabs(expected) > 1.0 ? fabs(expected) : 1.0;
    int ok = fabs(actual - expected) <= tolerance * scale;
    if (!ok)
        fprintf(stderr, "FAIL %s:%d: %s: got %.9g, expected %.9g (tolerance %g)\n", file, line,
                text, actual, expected, tolerance);
    ok ? checks_passed++ : checks_failed++;
    return ok;
}

void check_not_run(const char *what, const char *why) {
    int listed = not_run_count < NOT_RUN_LISTED ? not_run_count : NOT_RUN_LISTED;
    for (int i = 0; i < listed; i++)
        if (strncmp(not_run[i].what, what, sizeof not_run[i].what - 1) == 0 &&
            strncmp(not_run[i].why, why, sizeof not_run[i].why - 1) == 0)
            return;
    if (not_run_count < NOT_RUN_LISTED) {
        snprintf(not_run[not_run_count].what, sizeof not_run[0].what, "%s", what);
        snprintf(not_run[not_run_count].why, sizeof not_run[0].why, "%s", why);
    }
    not_run_count++;
}

void check_counts(int *passed, int *failed) {
    *passed = checks_passed;
    *failed = checks_failed;
}

int check_finish_totals(int passed, int failed) {
    for (int i = 0; i < not_run_count && i < NOT_RUN_LISTED; i++)
        printf("not run: %s (%s)\n", not_run[i].what, not_run[i].why);
    if (not_run_count > NOT_RUN_LISTED)
        printf("not run: %d more, not listed (too many)\n", not_run_count - NOT_RUN_LISTED);
    /* Without not-run checks, exactly the line the scripts have always parsed. */
    if (not_run_count > 0)
        printf("%d passed, %d failed, %d not run\n", passed, failed, not_run_count);
    else
        printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

int check_finish(void) {
    return check_finish_totals(checks_passed, checks_failed);
}

const char *check_temp_dir(void) {
    static char path[512];
    if (path[0]) return path;
    const char *base = getenv("DDTRAIN_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    mkdir(base, 0755);
    snprintf(path, sizeof path, "%s/ddtrain-test-%ld", base, (long)getpid());
    mkdir(path, 0755);
    return path;
}
