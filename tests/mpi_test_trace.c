/* mpi_test_trace.c - the tracer under mpirun: every rank records on its three threads (one
 * from a second pthread), rank 0 writes one JSON file that Python's json module accepts, with
 * events from every rank, only the window's steps and the metadata names; --trace-steps
 * parsing; a NULL trace does nothing; a full buffer drops and counts; an interrupted trace
 * leaves the previous file intact. */
#include <dirent.h>
#include <math.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "train/trace.h"
#include "util/clock.h"

#define READS_PER_STEP 20
#define SPECIAL_NAME "say \"hi\" \\ tab\there"
#define LONG_NAME "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9 and more"

/* The clock trace.h expects, and the control communicator its collectives go through. */
static double now(void) {
    return clock_now();
}

static comm *control;

/* Checks the file with Python's json module; argv: path world events_per_rank step_min
 * step_max dropped_per_rank special_name_expected. Prints why on failure. */
static const char *const validator[] = {
    "import json, sys",
    "path, world, per_rank, lo, hi, dropped, special = sys.argv[1], *map(int, sys.argv[2:8])",
    "def fail(why):",
    "    print('trace check failed:', why); sys.exit(1)",
    "d = json.load(open(path, encoding='utf-8'))",
    "if d.get('displayTimeUnit') != 'ms': fail('displayTimeUnit')",
    "events = d['traceEvents']",
    "x = [e for e in events if e['ph'] == 'X']",
    "m = [e for e in events if e['ph'] == 'M']",
    "pids = set(range(1, world + 1))",
    "if {e['pid'] for e in x} != pids: fail('pids %s' % sorted({e['pid'] for e in x}))",
    "for p in pids:",
    "    n = sum(1 for e in x if e['pid'] == p)",
    "    if n != per_rank: fail('pid %d has %d events, expected %d' % (p, n, per_rank))",
    "steps = {e['args']['step'] for e in x}",
    "if steps != set(range(lo, hi + 1)): fail('steps %s' % sorted(steps))",
    "if any(e['dur'] < 0 or e['ts'] < 0 for e in x): fail('negative time')",
    "if any(a['ts'] > b['ts'] for a, b in zip(x, x[1:])): fail('not sorted by time')",
    "if any(not isinstance(e['cat'], str) or not e['name'] for e in x): fail('name/cat')",
    "names = {e['pid']: e['args']['name'] for e in m if e['name'] == 'process_name'}",
    "for p in pids:",
    "    if not names.get(p, '').startswith('rank %d (' % (p - 1)): fail('process_name %d' % p)",
    "threads = {(e['pid'], e['tid']): e['args']['name'] for e in m if e['name'] == 'thread_name'}",
    "expected = {1: 'main', 2: 'reader', 3: 'communication'}",
    "for e in x:",
    "    if threads.get((e['pid'], e['tid'])) != expected[e['tid']]: fail('thread_name')",
    "other = d['otherData']",
    "if other['dropped_events_per_rank'] != [dropped] * world: fail('dropped per rank')",
    "if other['dropped_events'] != dropped * world or other['ranks'] != world: fail('otherData')",
    "if special:",
    "    hits = {e['pid'] for e in x if e['name'] == 'say \"hi\" \\\\ tab\\there'}",
    "    if hits != pids: fail('escaped name')",
    "    if {e['pid'] for e in x if e['name'] == 'a' * 46} != pids: fail('cut name')",
};

static int python_available(void) {
    return access("/usr/bin/python3", X_OK) == 0;
}

/* Rank 0: 1 if the file passes the validator. */
static int validate(const char *dir, const char *path, int world, int per_rank, int step_min,
                    int step_max, int dropped, int special) {
    if (!python_available()) {
        printf("note: /usr/bin/python3 missing, %s not checked as JSON\n", path);
        return 1;
    }
    char script[600], command[2048];
    snprintf(script, sizeof script, "%s/validate_trace.py", dir);
    FILE *f = fopen(script, "w");
    if (!f) return 0;
    for (size_t i = 0; i < sizeof validator / sizeof validator[0]; i++)
        fprintf(f, "%s\n", validator[i]);
    fclose(f);
    snprintf(command, sizeof command, "/usr/bin/python3 '%s' '%s' %d %d %d %d %d %d", script, path,
             world, per_rank, step_min, step_max, dropped, special);
    int rc = system(command);
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

static int file_exists(const char *path) {
    return access(path, F_OK) == 0;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
}

static int file_equals(const char *path, const char *text) {
    char buffer[256] = {0};
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buffer, 1, sizeof buffer - 1, f);
    fclose(f);
    return n == strlen(text) && memcmp(buffer, text, n) == 0;
}

/* No "*.tmp-*" left behind in `dir`. */
static int no_temporary_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int clean = 1;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp-")) clean = 0;
    closedir(d);
    return clean;
}

static void *reader_thread(void *argument) {
    trace *t = argument;
    for (int64_t step = 1; step <= 10; step++) {
        for (int i = 0; i < READS_PER_STEP; i++) {
            double start = now();
            trace_event(t, TRACE_THREAD_READER, "read", "io", step, start, now());
        }
    }
    return NULL;
}

static void test_parse_steps(void) {
    int64_t first = -1, last = -1;
    CHECK_OK(trace_parse_steps("3:6", &first, &last));
    CHECK(first == 3 && last == 6);
    CHECK_OK(trace_parse_steps("1:1", &first, &last));
    CHECK(first == 1 && last == 1);
    CHECK_OK(trace_parse_steps("100:123456789012", &first, &last));
    CHECK(first == 100 && last == 123456789012);
    const char *bad[] = {"",
                         "3",
                         "6:3",
                         "0:5",
                         "-1:2",
                         "3:6x",
                         "a:b",
                         "3:",
                         ":6",
                         " 3:6",
                         "3: 6",
                         "+3:6",
                         "3:6:9",
                         "0x3:6",
                         "99999999999999999999:1",
                         "1:99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        first = last = -1;
        ddt_status status = trace_parse_steps(bad[i], &first, &last);
        CHECK(status == DDT_ERR_USAGE);
        CHECK(strstr(ddt_error_message(), "--trace-steps") != NULL);
        CHECK(first == -1 && last == -1);
    }
    CHECK(trace_parse_steps(NULL, &first, &last) == DDT_ERR_USAGE);
}

static void test_null_trace(void) {
    CHECK(!trace_wants(NULL, 1));
    trace_event(NULL, TRACE_THREAD_MAIN, "forward", "compute", 1, 0.0, 1.0);
    CHECK(trace_dropped_events(NULL) == 0);
    CHECK_OK(trace_finish(NULL));
    trace_free(NULL);
}

static void test_bad_init(const char *path, int rank) {
    static char not_a_trace;
    trace *t = (trace *)&not_a_trace; /* anything but NULL, to see it cleared */
    CHECK(trace_init(path, 5, 3, control, "host", &t) == DDT_ERR_USAGE);
    CHECK(t == NULL);
    CHECK(trace_init(path, 0, 3, control, "host", &t) == DDT_ERR_USAGE);
    CHECK(t == NULL);
    /* Rank 0 checks the directory at init; the other ranks do not use the path. */
    ddt_status status =
        trace_init("/nonexistent-ddtrain-dir/trace.json", 1, 2, control, "host", &t);
    if (rank == 0) {
        CHECK(status == DDT_ERR_IO && t == NULL);
        CHECK(strstr(ddt_error_message(), "--trace") != NULL);
    } else {
        CHECK_OK(status);
        CHECK(t != NULL);
    }
    trace_free(t);
}

/* Steps 1..10 on three threads with the window 3:6. */
static void test_window(const char *dir, const char *path, int rank, int world, char *host) {
    if (rank == 0) write_text(path, "previous run");
    trace *t = NULL;
    CHECK_OK(trace_init(path, 3, 6, control, host, &t));
    CHECK(t != NULL);
    if (!t) return;
    CHECK(!trace_wants(t, 2) && trace_wants(t, 3) && trace_wants(t, 6) && !trace_wants(t, 7));
    pthread_t reader;
    int started = pthread_create(&reader, NULL, reader_thread, t) == 0;
    CHECK(started);
    const char *main_names[] = {"copy", "forward", "backward", "optimizer"};
    for (int64_t step = 1; step <= 10; step++) {
        for (int i = 0; i < 4; i++) {
            double start = now();
            trace_event(t, TRACE_THREAD_MAIN, main_names[i], "compute", step, start, now());
        }
        for (int bucket = 0; bucket < 2; bucket++) {
            char name[32];
            snprintf(name, sizeof name, "all-reduce bucket %d", bucket);
            double start = now();
            trace_event(t, TRACE_THREAD_COMMUNICATION, name, "comm", step, start, now());
        }
        if (step == 3) {
            trace_event(t, TRACE_THREAD_MAIN, SPECIAL_NAME, "test", step, now(), now());
            /* Cut to 47 bytes, the 2-byte e-acute at bytes 46..47 must go whole. */
            trace_event(t, TRACE_THREAD_MAIN, LONG_NAME, "test", step, now(), now());
        }
    }
    if (started) pthread_join(reader, NULL);
    CHECK(trace_dropped_events(t) == 0);
    CHECK_OK(trace_finish(t));
    int per_rank = 4 * (4 + 2 + READS_PER_STEP) + 2;
    if (rank == 0) {
        CHECK(!file_equals(path, "previous run"));
        CHECK(validate(dir, path, world, per_rank, 3, 6, 0, 1));
        CHECK(no_temporary_files(dir));
    }
    /* Finished: nothing more is wanted or recorded, and a second finish writes nothing. */
    CHECK(!trace_wants(t, 4));
    trace_event(t, TRACE_THREAD_MAIN, "late", "compute", 4, now(), now());
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) remove(path);
    CHECK_OK(trace_finish(t));
    if (rank == 0) CHECK(!file_exists(path));
    trace_free(t);
}

/* Stopped at step 4 of the window 3:6: only steps 3 and 4, and a NaN time is dropped. */
static void test_early_stop(const char *dir, const char *path, int rank, int world) {
    trace *t = NULL;
    CHECK_OK(trace_init(path, 3, 6, control, NULL, &t));
    for (int64_t step = 1; step <= 4; step++) {
        double start = now();
        trace_event(t, TRACE_THREAD_MAIN, "forward", "compute", step, start, now());
        /* An end before the start is kept with zero duration. */
        trace_event(t, TRACE_THREAD_COMMUNICATION, "all-reduce", "comm", step, start + 1, start);
    }
    trace_event(t, TRACE_THREAD_MAIN, "broken", "compute", 3, NAN, now());
    CHECK(trace_dropped_events(t) == 1);
    CHECK_OK(trace_finish(t));
    if (rank == 0) CHECK(validate(dir, path, world, 4, 3, 4, 1, 0));
    trace_free(t);
}

/* A one-step window holds 64 + slack events; the rest are dropped and counted. */
static void test_cap(const char *dir, const char *path, int rank, int world) {
    trace *t = NULL;
    CHECK_OK(trace_init(path, 1, 1, control, "host", &t));
    int recorded = 1000;
    for (int i = 0; i < recorded; i++) {
        double start = now();
        trace_event(t, TRACE_THREAD_MAIN, "forward", "compute", 1, start, now());
    }
    int64_t dropped = trace_dropped_events(t);
    int64_t kept = recorded - dropped;
    CHECK(kept == TRACE_EVENTS_PER_STEP + TRACE_EVENTS_SLACK);
    CHECK(dropped > 0);
    CHECK_OK(trace_finish(t));
    if (rank == 0) CHECK(validate(dir, path, world, (int)kept, 1, 1, (int)dropped, 0));
    trace_free(t);
}

/* Freed without trace_finish (a run that died): the previous file stays, nothing partial. */
static void test_interrupted(const char *dir, const char *path, int rank) {
    if (rank == 0) write_text(path, "previous run");
    trace *t = NULL;
    CHECK_OK(trace_init(path, 1, 2, control, "host", &t));
    trace_event(t, TRACE_THREAD_MAIN, "forward", "compute", 1, now(), now());
    trace_free(t);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) CHECK(file_equals(path, "previous run") && no_temporary_files(dir));
}

int main(int argc, char **argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (comm_init(COMM_BACKEND_MPI, MPI_COMM_WORLD, NULL, &control) != DDT_OK) {
        fprintf(stderr, "comm_init: %s\n", ddt_error_message());
        return 1;
    }

    /* Rank 0's scratch directory, shared by all (only rank 0 writes the trace). */
    char dir[512] = {0};
    if (rank == 0) snprintf(dir, sizeof dir, "%s", check_temp_dir());
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    char path[600], host[64];
    snprintf(path, sizeof path, "%s/trace.json", dir);
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';

    test_parse_steps();
    test_null_trace();
    test_bad_init(path, rank);
    test_window(dir, path, rank, world, host);
    test_early_stop(dir, path, rank, world);
    test_cap(dir, path, rank, world);
    test_interrupted(dir, path, rank);

    if (rank == 0) {
        remove(path);
        char script[600];
        snprintf(script, sizeof script, "%s/validate_trace.py", dir);
        remove(script);
        rmdir(dir);
    }
    comm_free(control);
    int local_failed = check_finish() != 0;
    int any_failed = 0;
    MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any_failed;
}
