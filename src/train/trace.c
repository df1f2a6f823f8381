/* trace.c - per-rank event buffers gathered into one Chrome-trace JSON file (see trace.h). */
#include "train/trace.h"

#include "util/clock.h"
#include "util/files.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One event as it travels to rank 0: fixed size, so a contiguous MPI type can carry it and
 * Gatherv counts stay in events rather than bytes. */
typedef struct trace_record {
    double start_us;    /* since the common origin */
    double duration_us; /* >= 0 */
    int64_t step;
    int32_t thread; /* trace_thread */
    int32_t rank;
    char name[TRACE_NAME_MAX + 1];
    char category[TRACE_CATEGORY_MAX + 1];
} trace_record;

/* What each rank tells rank 0 before its events. */
typedef struct trace_rank_header {
    int64_t event_count;
    int64_t dropped;
    int64_t threads_used; /* bit i: trace_thread i recorded something */
    char host[64];
} trace_rank_header;

struct trace {
    char *path;
    int64_t first_step;
    int64_t last_step;
    comm *control; /* the gathers at the end (bounded, as every collective) */
    int rank;
    int world_size;
    char host[64];
    double origin;        /* clock_now() seconds at the common origin */
    pthread_mutex_t lock; /* guards the fields below; recording is a few stores under it */
    trace_record *records;
    int64_t capacity;
    int64_t count;
    int64_t dropped;
    int64_t threads_used;
    atomic_bool finished; /* read without the lock by trace_wants() */
    bool lock_ready;
    /* Rank 0 only, allocated at init so trace_finish() allocates just the gathered events. */
    trace_rank_header *headers;
    int *counts;
    int *displacements;
};

static const char *const trace_thread_names[] = {"main", "reader", "communication"};
#define TRACE_THREAD_COUNT 3

/* Copies at most size - 1 bytes, never cutting a UTF-8 sequence in two (the JSON stays valid). */
static void copy_cut(char *destination, size_t size, const char *source) {
    size_t length = source ? strnlen(source, size - 1) : 0;
    while (length && ((unsigned char)source[length] & 0xC0) == 0x80)
        length--;
    if (length) memcpy(destination, source, length);
    destination[length] = '\0';
}

/* The directory part of `path` ("." when it has none). */
static void directory_of(const char *path, char *out, size_t size) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(out, size, ".");
    } else if (slash == path) {
        snprintf(out, size, "/");
    } else {
        snprintf(out, size, "%.*s", (int)(slash - path), path);
    }
}

/* Decimal digits only (no sign, spaces or "0x", which strtoll would take); at most 18 digits,
 * so the value fits an int64_t. */
static bool parse_step(const char *begin, const char *end, int64_t *value) {
    if (begin == end || end - begin > 18) return false;
    int64_t v = 0;
    for (const char *c = begin; c < end; c++) {
        if (*c < '0' || *c > '9') return false;
        v = v * 10 + (*c - '0');
    }
    *value = v;
    return true;
}

ddt_status trace_parse_steps(const char *text, int64_t *first, int64_t *last) {
    if (!text) return ddt_error(DDT_ERR_USAGE, "--trace-steps: missing value (expected A:B)");
    const char *colon = strchr(text, ':');
    int64_t a = 0, b = 0;
    if (!colon || !parse_step(text, colon, &a) ||
        !parse_step(colon + 1, colon + 1 + strlen(colon + 1), &b) || a < 1 || a > b)
        return ddt_error(DDT_ERR_USAGE,
                         "--trace-steps: '%s' is not a window of steps A:B with 1 <= A <= B", text);
    *first = a;
    *last = b;
    return DDT_OK;
}

/* Rank 0 only: fails now if the file could not be published at the end. */
static ddt_status check_directory_writable(const char *path) {
    char directory[4096];
    directory_of(path, directory, sizeof directory);
    if (access(directory, W_OK | X_OK) != 0)
        return ddt_error(DDT_ERR_IO, "--trace %s: cannot write in directory %s: %s", path,
                         directory, strerror(errno));
    return DDT_OK;
}

ddt_status trace_init(const char *path, int64_t first_step, int64_t last_step, comm *control,
                      const char *host, trace **out) {
    *out = NULL;
    ddt_status status = DDT_OK;
    trace *t = NULL;
    int rank = comm_rank(control), world_size = comm_world_size(control);

    if (first_step < 1 || first_step > last_step) {
        status = ddt_error(DDT_ERR_USAGE,
                           "--trace-steps: %" PRId64 ":%" PRId64 " is not a window 1 <= A <= B",
                           first_step, last_step);
    } else if (rank == 0 && (!path || !path[0])) {
        status = ddt_error(DDT_ERR_USAGE, "--trace: missing file name");
    } else if (rank == 0) {
        status = check_directory_writable(path);
    }
    if (status == DDT_OK) {
        t = calloc(1, sizeof *t);
        if (t) t->path = strdup(path ? path : "");
        /* 64 per step plus slack, capped; the division keeps huge windows from overflowing. */
        int64_t steps = last_step - first_step; /* one less than the window, cannot overflow */
        int64_t capacity = TRACE_MAX_EVENTS_PER_RANK;
        if (steps < (TRACE_MAX_EVENTS_PER_RANK - TRACE_EVENTS_SLACK) / TRACE_EVENTS_PER_STEP)
            capacity = (steps + 1) * TRACE_EVENTS_PER_STEP + TRACE_EVENTS_SLACK;
        if (t) t->records = malloc((size_t)capacity * sizeof *t->records);
        bool root_ok = true;
        if (t && rank == 0) {
            t->headers = malloc((size_t)world_size * sizeof *t->headers);
            t->counts = malloc((size_t)world_size * sizeof *t->counts);
            t->displacements = malloc((size_t)world_size * sizeof *t->displacements);
            root_ok = t->headers && t->counts && t->displacements;
        }
        if (!t || !t->path || !t->records || !root_ok) {
            status =
                ddt_error(DDT_ERR_MEMORY, "trace: cannot allocate %" PRId64 " events", capacity);
        } else {
            t->capacity = capacity;
            t->first_step = first_step;
            t->last_step = last_step;
            t->control = control;
            t->rank = rank;
            t->world_size = world_size;
            copy_cut(t->host, sizeof t->host, host);
            atomic_init(&t->finished, false);
            t->lock_ready = pthread_mutex_init(&t->lock, NULL) == 0;
            if (!t->lock_ready) status = ddt_error(DDT_ERR_INTERNAL, "trace: cannot create a lock");
        }
    }
    /* Every rank reaches the barrier, whatever failed locally, so none is left waiting. */
    ddt_status barrier = comm_barrier(control, "the trace's common time origin");
    if (status == DDT_OK) status = barrier;
    if (status != DDT_OK) {
        trace_free(t);
        return status;
    }
    t->origin = clock_now();
    *out = t;
    return DDT_OK;
}

bool trace_wants(const trace *t, int64_t step) {
    return t && step >= t->first_step && step <= t->last_step &&
           !atomic_load_explicit(&t->finished, memory_order_relaxed);
}

void trace_event(trace *t, trace_thread thread, const char *name, const char *category,
                 int64_t step, double start, double end) {
    if (!trace_wants(t, step)) return;
    bool usable = isfinite(start) && isfinite(end) && (unsigned)thread < TRACE_THREAD_COUNT;
    pthread_mutex_lock(&t->lock);
    /* finish() sets the flag under this lock: nothing lands after the buffer was sent. */
    if (atomic_load_explicit(&t->finished, memory_order_relaxed)) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    if (!usable || t->count >= t->capacity) {
        t->dropped++;
    } else {
        trace_record *r = &t->records[t->count++];
        r->start_us = (start - t->origin) * 1e6;
        r->duration_us = end > start ? (end - start) * 1e6 : 0.0;
        r->step = step;
        r->thread = (int32_t)thread;
        r->rank = t->rank;
        t->threads_used |= INT64_C(1) << thread;
        copy_cut(r->name, sizeof r->name, name);
        copy_cut(r->category, sizeof r->category, category);
    }
    pthread_mutex_unlock(&t->lock);
}

int64_t trace_dropped_events(const trace *t) {
    if (!t) return 0;
    pthread_mutex_lock((pthread_mutex_t *)&t->lock);
    int64_t dropped = t->dropped;
    pthread_mutex_unlock((pthread_mutex_t *)&t->lock);
    return dropped;
}

/* True if adding `count` events after `total` would overflow an int displacement. */
static bool overflows_int(int64_t total, int64_t count) {
    return count < 0 || total > INT32_MAX - count;
}

/* Time order; on a tie the longer event first, so an enclosing event precedes what it holds. */
static int compare_records(const void *a, const void *b) {
    const trace_record *x = a, *y = b;
    if (x->start_us != y->start_us) return x->start_us < y->start_us ? -1 : 1;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    if (x->thread != y->thread) return x->thread < y->thread ? -1 : 1;
    if (x->duration_us != y->duration_us) return x->duration_us > y->duration_us ? -1 : 1;
    return 0;
}

/* A JSON string literal, quotes included. */
static void write_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            fputc('\\', f);
            fputc(*c, f);
        } else if (*c < 0x20 || *c == 0x7f) {
            fprintf(f, "\\u%04x", *c);
        } else {
            fputc(*c, f);
        }
    }
    fputc('"', f);
}

static void write_json(FILE *f, const trace *t, const trace_rank_header *headers,
                       const trace_record *records, int64_t total) {
    int64_t dropped = 0;
    fprintf(f, "{\"traceEvents\":[\n");
    for (int r = 0; r < t->world_size; r++) {
        char label[128];
        snprintf(label, sizeof label, "rank %d (%s)", r, headers[r].host);
        fprintf(
            f, "%s{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":1,\"args\":{\"name\":",
            r ? ",\n" : "", r + 1);
        write_json_string(f, label);
        fprintf(f,
                "}},\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":1,"
                "\"args\":{\"sort_index\":%d}}",
                r + 1, r);
        /* Names only for the threads that recorded something, so no empty tracks. */
        for (int thread = 0; thread < TRACE_THREAD_COUNT; thread++) {
            if (!(headers[r].threads_used & (INT64_C(1) << thread))) continue;
            fprintf(f,
                    ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,"
                    "\"args\":{\"name\":\"%s\"}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\","
                    "\"pid\":%d,\"tid\":%d,\"args\":{\"sort_index\":%d}}",
                    r + 1, thread + 1, trace_thread_names[thread], r + 1, thread + 1, thread);
        }
        dropped += headers[r].dropped;
    }
    for (int64_t i = 0; i < total; i++) {
        const trace_record *e = &records[i];
        fprintf(f, ",\n{\"name\":");
        write_json_string(f, e->name);
        fprintf(f, ",\"cat\":");
        write_json_string(f, e->category);
        fprintf(f,
                ",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,\"tid\":%d,"
                "\"args\":{\"step\":%" PRId64 "}}",
                e->start_us, e->duration_us, e->rank + 1, e->thread + 1, e->step);
    }
    fprintf(f,
            "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":{\"producer\":\"ddtrain\","
            "\"first_step\":%" PRId64 ",\"last_step\":%" PRId64 ",\"ranks\":%d,"
            "\"dropped_events\":%" PRId64 ",\"dropped_events_per_rank\":[",
            t->first_step, t->last_step, t->world_size, dropped);
    for (int r = 0; r < t->world_size; r++)
        fprintf(f, "%s%" PRId64, r ? "," : "", headers[r].dropped);
    fprintf(f, "]}}\n");
}

/* Rank 0: writes "PATH.tmp-<pid>" and publishes it (fsync, rename over PATH, fsync the
 * directory: util/files.h). */
static ddt_status write_file(const trace *t, const trace_rank_header *headers,
                             trace_record *records, int64_t total) {
    qsort(records, (size_t)total, sizeof *records, compare_records);
    size_t temp_size = strlen(t->path) + PATH_MAX + 32; /* file_temp_path may pick another place */
    char *temp_path = malloc(temp_size);
    if (!temp_path) return ddt_error(DDT_ERR_MEMORY, "--trace %s: out of memory", t->path);
    file_temp_path(t->path, temp_path, temp_size);
    ddt_status status = file_temp_register(temp_path);
    if (status != DDT_OK) goto done;
    FILE *f = fopen(temp_path, "w");
    if (!f) {
        status = ddt_error(DDT_ERR_IO, "--trace %s: cannot create %s: %s", t->path, temp_path,
                           strerror(errno));
        file_temp_forget(temp_path);
        goto done;
    }
    write_json(f, t, headers, records, total);
    int failed = fflush(f) != 0 || ferror(f);
    int saved = errno;
    if (fclose(f) != 0 && !failed) failed = 1, saved = errno;
    if (failed) {
        file_temp_remove(temp_path);
        status = ddt_error(DDT_ERR_IO, "--trace %s: cannot write %s: %s", t->path, temp_path,
                           strerror(saved));
        goto done;
    }
    status = file_publish(temp_path, t->path);
    if (status != DDT_OK) status = ddt_error(status, "--trace %s", ddt_error_message());
done:
    free(temp_path);
    return status;
}

ddt_status trace_finish(trace *t) {
    if (!t) return DDT_OK;
    /* Only the main thread calls this; the lock orders it after any event being recorded. */
    pthread_mutex_lock(&t->lock);
    bool already = atomic_load_explicit(&t->finished, memory_order_relaxed);
    atomic_store(&t->finished, true);
    pthread_mutex_unlock(&t->lock);
    if (already) return DDT_OK;

    ddt_status status = DDT_OK;
    bool root = t->rank == 0;
    trace_rank_header mine = {
        .event_count = t->count, .dropped = t->dropped, .threads_used = t->threads_used};
    memcpy(mine.host, t->host, sizeof mine.host);
    trace_record *all = NULL;
    int64_t total = 0;
    DDT_CHECK(comm_gather_bytes(t->control, &mine, sizeof mine, t->headers, 0,
                                "the trace's event counts"));

    /* Rank 0 says whether it can take the events, so a failure there strands nobody. */
    int ready = 1;
    if (root) {
        for (int r = 0; ready && r < t->world_size; r++) {
            /* Gatherv counts and displacements are ints (in bytes). */
            int64_t bytes = t->headers[r].event_count * (int64_t)sizeof(trace_record);
            if (overflows_int(total * (int64_t)sizeof(trace_record), bytes)) ready = 0;
            t->counts[r] = (int)bytes;
            t->displacements[r] = (int)(total * (int64_t)sizeof(trace_record));
            total += t->headers[r].event_count;
        }
        if (ready) all = malloc((size_t)(total ? total : 1) * sizeof *all);
        if (!all) {
            ready = 0;
            status = ddt_error(DDT_ERR_MEMORY,
                               "--trace %s: cannot hold the events of all ranks (%" PRId64
                               " gathered so far)",
                               t->path, total);
        }
    }
    ddt_status agreed = comm_broadcast_bytes(t->control, &ready, sizeof ready, 0,
                                             "the trace's gather");
    if (agreed != DDT_OK) {
        status = agreed;
        goto done;
    }
    if (!ready) goto done;
    agreed = comm_gatherv_bytes(t->control, t->records,
                                (size_t)t->count * sizeof(trace_record), all, t->counts,
                                t->displacements, 0, "the trace's events");
    if (agreed != DDT_OK) {
        status = agreed;
        goto done;
    }
    if (root) status = write_file(t, t->headers, all, total);

done:
    free(all);
    return status;
}

void trace_free(trace *t) {
    if (!t) return;
    free(t->displacements);
    free(t->counts);
    free(t->headers);
    if (t->lock_ready) pthread_mutex_destroy(&t->lock);
    free(t->records);
    free(t->path);
    free(t);
}
