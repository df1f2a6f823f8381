/* check.c - implementation of the unit-test assertion kit (check.h). */
#include "check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static int checks_passed;
static int checks_failed;

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

int check_finish(void) {
    printf("%d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed == 0 ? 0 : 1;
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
