/* trace.h - a timeline of a window of training steps on every rank, written as one
 * Chrome-trace / Perfetto JSON file (--trace FILE --trace-steps A:B).
 *
 * Each rank records complete events (read, copy, forward, backward, each bucket's all-reduce,
 * optimizer) into a buffer preallocated by trace_init(), from the main thread and the reader
 * thread alike. trace_finish(), a collective, gathers every rank's events to rank 0, which
 * writes the file: the Trace Event Format's JSON object form, one process per rank named
 * "rank R (host)", one thread per trace_thread, events sorted by time. Perfetto
 * (ui.perfetto.dev) and chrome://tracing open it.
 *
 * Time: trace_init() takes a common origin (a barrier, then each rank's clock), so the ranks'
 * events line up to within the barrier's skew. Event times are clock_now() seconds
 * (CLOCK_MONOTONIC); the file holds microseconds since the origin.
 *
 * Ids in the file: pid = rank + 1 and tid = trace_thread + 1, because Perfetto reserves pid 0
 * and tid 0 for the idle ("swapper") task and merges what is recorded there; the process name
 * and process_sort_index carry the real rank.
 *
 * Interruption: the file is written under a temporary name in the same directory, fsynced,
 * then renamed over FILE, so it is only ever published whole. A run stopped before
 * trace_finish() leaves no partial file, and a FILE from an earlier run stays intact; the
 * trainer calls trace_finish() at the window's end and on an agreed early stop alike.
 *
 * Ownership: trace_init() allocates; the caller frees with trace_free() on every rank, after
 * trace_finish() or instead of it, once the reader thread records no more. A NULL trace means
 * tracing is off: every function accepts it and does nothing, so call sites need no `if`.
 *
 * Usage:
 *     trace *t = NULL;   // stays NULL without --trace
 *     if (trace_path)
 *         st = comm_agree(control, trace_init(path, first, last, control, host, &t), "trace");
 *     for (int64_t step = 1; ...; step++) {
 *         double start = clock_now();
 *         forward(...);
 *         trace_event(t, TRACE_THREAD_MAIN, "forward", "compute", step, start, clock_now());
 *         ...
 *         if (step == last) st = trace_finish(t);   // every rank, same step
 *     }
 *     trace_finish(t);   // early stop: same point on every rank; no-op if already done
 *     trace_free(t);
 */
#ifndef DDT_TRAIN_TRACE_H
#define DDT_TRAIN_TRACE_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "util/status.h"

typedef enum trace_thread {
    TRACE_THREAD_MAIN,
    TRACE_THREAD_READER,
    TRACE_THREAD_COMMUNICATION,
} trace_thread;

/* Opaque; NULL = tracing off. */
typedef struct trace trace;

/* Longest name and category trace_event() keeps; longer ones are cut. */
#define TRACE_NAME_MAX 47
#define TRACE_CATEGORY_MAX 15

/* Events one rank can hold: 64 per step of the window plus 256, at most this many. Events past
 * the capacity are dropped and counted (trace_dropped_events(), "dropped_events" in the file). */
#define TRACE_EVENTS_PER_STEP 64
#define TRACE_EVENTS_SLACK 256
#define TRACE_MAX_EVENTS_PER_RANK (1 << 17)

/* Collective over `control` (every rank calls it, even when its arguments are bad, so nobody
 * waits in the barrier): takes the common time origin and preallocates the event buffer.
 * Steps are global optimizer steps counted from 1; the window is [first_step, last_step].
 * `path` matters on rank 0 only, which checks its directory is writable now rather than at
 * the end of a long run; `host` names the rank's process (may be NULL). Errors can differ
 * between ranks (the directory check, memory), so pass the status through comm_agree(). On
 * failure *out is NULL. */
ddt_status trace_init(const char *path, int64_t first_step, int64_t last_step, comm *control,
                      const char *host, trace **out);

/* Parses --trace-steps "A:B" (1 <= A <= B, decimal, nothing else). DDT_ERR_USAGE naming
 * --trace-steps otherwise; *first and *last are set only on success. */
ddt_status trace_parse_steps(const char *text, int64_t *first, int64_t *last);

/* True if `step` is inside the window and trace_finish() has not run yet: lets callers skip
 * taking times they would not record. Cheap and safe from any thread. */
bool trace_wants(const trace *t, int64_t step);

/* Records the complete event [start, end] (clock_now() seconds) on `thread` if trace_wants(t,
 * step). Thread-safe; never allocates (the buffer is preallocated). `name` and `category`
 * are copied (cut to TRACE_NAME_MAX and TRACE_CATEGORY_MAX characters); the step goes into
 * the event's args. Events with non-finite times are dropped; an end before start records a
 * zero duration. */
void trace_event(trace *t, trace_thread thread, const char *name, const char *category,
                 int64_t step, double start, double end);

/* Events this rank dropped so far because its buffer was full or their times were not
 * finite (0 for NULL). */
int64_t trace_dropped_events(const trace *t);

/* Collective over the communicator given to trace_init(), bounded by its timeout: call after
 * step last_step, or earlier when the run stops (every rank at the same point). Stops
 * recording, gathers every rank's events to rank 0 (a gather of fixed-size binary records;
 * the ranks must share one binary layout), and rank 0 writes the JSON file atomically
 * (temporary file beside it, fsync, rename, fsync of the directory). Later calls do nothing
 * and return DDT_OK. Returns the write error on rank 0 (others DDT_OK), or DDT_ERR_COMM where a
 * collective failed or timed out. */
ddt_status trace_finish(trace *t);

/* Frees the trace (not collective; does not write the file). Accepts NULL. */
void trace_free(trace *t);

#endif
