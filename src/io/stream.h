/* stream.h - a reader thread per rank that keeps ready micro-batches queued.
 *
 * The reader walks the shard plan from a starting global step, reads each micro-batch's rows
 * from the dataset (sorted, so runs of rows become single hyperslab reads), and puts it in a
 * bounded ring of `prefetch_depth` slots. The trainer takes micro-batches in order with
 * stream_next() and gives each back with stream_release(); the reader blocks while the ring
 * is full, so host memory for staging is fixed: prefetch_depth slots of one micro-batch each.
 *
 * Rows inside a micro-batch are in ascending row order (the order they were read), each with
 * its global row id. The set of rows is what the shard plan says; the order inside a
 * micro-batch does not change the gradient sum.
 *
 * A read error in the reader thread (bad value, I/O error) is returned by the stream_next()
 * call that would have received that micro-batch, with the reader's message.
 *
 * Ownership: stream_start() allocates the slots and starts the thread; stream_stop() stops it
 * and frees everything. The stream borrows `data` and `plan` (not freed, not used by anyone
 * else while the stream runs except through the dataset's own lock).
 *
 * Usage:
 *     stream *s;
 *     DDT_CHECK(stream_start(&params, &s));
 *     micro_batch *mb;
 *     DDT_CHECK(stream_next(s, &mb));  ... use mb ...  stream_release(s, mb);
 *     stream_stop(s);
 */
#ifndef DDT_IO_STREAM_H
#define DDT_IO_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "io/dataset.h"
#include "shard/shard.h"
#include "util/status.h"

typedef struct micro_batch {
    int64_t global_step; /* optimizer steps since the start of training */
    int64_t epoch;
    int64_t step;        /* step within the epoch */
    int micro_index;     /* 0 .. micro_batches_per_step-1 */
    int rows;
    int64_t *row_ids;    /* rows entries */
    float *features;     /* rows x D */
    int32_t *labels;     /* rows, for class labels (else NULL) */
    float *targets;      /* rows x K, for float targets (else NULL) */
} micro_batch;

typedef struct stream_params {
    dataset *data;
    shard_plan *plan;
    int micro_batch;          /* rows per micro-batch (must match the plan) */
    int64_t first_global_step;
    int64_t total_global_steps; /* the reader stops after this many steps */
    int prefetch_depth;       /* slots in the ring, >= 2 */
} stream_params;

typedef struct stream_stats {
    double wait_seconds;      /* time stream_next() spent blocked */
    double read_seconds;      /* time the reader spent reading */
    int64_t micro_batches;    /* delivered */
    size_t staging_bytes;     /* bytes of the slot ring */
} stream_stats;

typedef struct stream stream;

/* Bytes of staging a ring of `prefetch_depth` slots needs for this geometry (for planning). */
size_t stream_staging_bytes(const dataset_geometry *geometry, int micro_batch,
                            int prefetch_depth);

ddt_status stream_start(const stream_params *params, stream **out);
/* Blocks until the next micro-batch is ready; DDT_ERR_INTERNAL if past the last step. */
ddt_status stream_next(stream *s, micro_batch **out);
void stream_release(stream *s, micro_batch *mb);
stream_stats stream_get_stats(const stream *s);
/* Stops the reader (even if blocked on a full ring), joins it, frees. NULL is allowed. */
void stream_stop(stream *s);

#endif
