/* crash_guard.c - turns a crash or an endless loop inside HDF5 into a message naming the file
 * (see crash_guard.h). Everything the handler does is async-signal-safe: the message prefix
 * is formatted at install time, the rest is copied with plain loops, written with write(2),
 * and the process ends with _exit(1). */
#include "driver/crash_guard.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io/read_guard.h"
#include "util/files.h"
#include "util/watcher.h"

static char message_prefix[160]; /* "ddtrain: error (rank 0 of 2 on vm): " */
static double stall_limit;
static const int guarded_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

static const char *signal_name(int signal_number) {
    switch (signal_number) {
    case SIGSEGV:
        return "SIGSEGV";
    case SIGBUS:
        return "SIGBUS";
    case SIGFPE:
        return "SIGFPE";
    case SIGILL:
        return "SIGILL";
    case SIGABRT:
        return "SIGABRT";
    }
    return "a signal";
}

/* Appends `text` to out[*used ..], never past `size` - 1 bytes in all. */
static void append(char *out, size_t size, size_t *used, const char *text) {
    while (*text && *used + 1 < size)
        out[(*used)++] = *text++;
}

static void append_number(char *out, size_t size, size_t *used, long value) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0 && count < (int)sizeof digits);
    while (count > 0 && *used + 1 < size)
        out[(*used)++] = digits[--count];
}

/* Writes the whole message to stderr and ends the process with status 1. */
static _Noreturn void report_and_exit(const char *what, const char *path, long seconds) {
    char text[6144];
    size_t used = 0;
    append(text, sizeof text, &used, message_prefix);
    append(text, sizeof text, &used, what);
    if (seconds >= 0) {
        append_number(text, sizeof text, &used, seconds);
        append(text, sizeof text, &used, " s");
    }
    append(text, sizeof text, &used, " while reading ");
    append(text, sizeof text, &used, path);
    append(text, sizeof text, &used,
           ": the file is damaged in a way HDF5 does not detect (HDF5 1.10.8 crashes on some "
           "damaged files, and HDF5 up to 2.0 loops forever on others); replace it with a good "
           "copy\n");
    for (size_t done = 0; done < used;) {
        ssize_t n = write(STDERR_FILENO, text + done, used - done);
        if (n <= 0) break;
        done += (size_t)n;
    }
    file_temp_remove_all(); /* async-signal-safe: unfinished outputs are not left behind */
    _exit(1);
}

static void on_crash(int signal_number) {
    read_guard_state state = read_guard_current();
    if (state.path && state.this_thread) {
        char what[64];
        size_t used = 0;
        append(what, sizeof what, &used, "HDF5 crashed (");
        append(what, sizeof what, &used, signal_name(signal_number));
        append(what, sizeof what, &used, ")");
        what[used] = '\0';
        report_and_exit(what, state.path, -1);
    }
    /* Not inside HDF5: the default action (SA_RESETHAND restored it) takes over when the
     * faulting instruction runs again, or abort() raises again. */
}

/* Counts how long the current read step has lasted, from its own wake-ups once a second:
 * each counts the time since the last one, but at most two seconds of it, so time in which
 * the process did not run (stopped, then continued) does not make a read look endless. */
static void *watch_reads(void *unused) {
    (void)unused;
    struct timespec second = {1, 0};
    double last = read_guard_now(), read_started = -1, counted = 0;
    for (;;) {
        nanosleep(&second, NULL);
        double now = read_guard_now(), gap = now - last;
        last = now;
        if (gap > 2) gap = 2;
        read_guard_state state = read_guard_current();
        if (!state.path) {
            read_started = -1;
            continue;
        }
        if (state.started != read_started) { /* a new read step since the last look */
            read_started = state.started;
            counted = now - state.started < gap ? now - state.started : gap;
        } else {
            counted += gap;
        }
        if (counted > stall_limit)
            report_and_exit("HDF5 has not returned in more than ", state.path, (long)stall_limit);
    }
    return NULL;
}

void crash_guard_install(const job *j, double stall_seconds) {
    static int installed;
    if (installed) return;
    installed = 1;
    if (j->world_size > 1)
        snprintf(message_prefix, sizeof message_prefix,
                 "ddtrain: error (rank %d of %d on %s): ", j->rank, j->world_size, j->host);
    else
        snprintf(message_prefix, sizeof message_prefix, "ddtrain: error: ");
    stall_limit = stall_seconds;

    /* A stack of its own, so a stack overflow inside HDF5 is reported too. */
    static char alternate_stack[64 * 1024];
    stack_t stack = {.ss_sp = alternate_stack, .ss_size = sizeof alternate_stack};
    sigaltstack(&stack, NULL);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_crash;
    action.sa_flags = SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof guarded_signals / sizeof guarded_signals[0]; i++)
        sigaction(guarded_signals[i], &action, NULL);
    if (stall_seconds <= 0) return; /* --comm-timeout 0: no limit */

    watcher_start(watch_reads, NULL); /* without it, reads are unbounded as before */
}
