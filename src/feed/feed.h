/* feed.h - the input path, in one owner: from the dataset on disk to "the next micro-batch,
 * on the device, ready to compute".
 *
 * The feed owns, in the order a micro-batch crosses them:
 *   - the reader stream (io/stream.h): a reader thread that walks the shard plan, reads whole
 *     blocks into a block cache (checked once, as a block enters it) and gathers each
 *     micro-batch's rows into a bounded ring of ready slots;
 *   - the host memory those live in, from the device's host allocator (page-locked on GPUs,
 *     so slots upload asynchronously), inside the host staging budget;
 *   - two device input buffers (features or token ids, labels or targets, global row ids),
 *     from the device allocator, so micro-batch m+1 uploads while m computes;
 *   - the upload ordering rule: m+1's upload is issued after the compute of m-1 was issued
 *     and before that of m, so it never overwrites a buffer earlier compute still reads;
 *   - a host buffer for evaluation reads, and the device buffer evaluation may borrow (the one
 *     not holding the prefetched training micro-batch).
 *
 * A training micro-batch: feed_next() returns it on the device (the compute stream waits for
 * its upload; the next one starts uploading), the caller issues its compute, then
 * feed_release() gives its host slot back once the upload has read it. Evaluation:
 * feed_read_evaluation() reads rows synchronously into the evaluation buffer and uploads them
 * into the borrowed device buffer, without disturbing the prefetched training micro-batch.
 *
 * Ownership: feed_init() borrows the device, the allocator, the dataset and the shard plan
 * (they must outlive the feed), takes its device buffers from the allocator (released with
 * it) and its host memory from the device; feed_free() stops the reader and frees the rest.
 *
 * Usage:
 *     feed *f;
 *     DDT_CHECK(feed_init(&params, &f));
 *     DDT_CHECK(feed_start(f));
 *     for each micro-batch: feed_batch b; DDT_CHECK(feed_next(f, &b));
 *                           ... forward/backward on b ...; DDT_CHECK(feed_release(f));
 *     feed_free(f);
 */
#ifndef DDT_FEED_FEED_H
#define DDT_FEED_FEED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/alloc.h"
#include "engine/device.h"
#include "io/dataset.h"
#include "io/stream.h"
#include "shard/shard.h"
#include "util/status.h"

/* A micro-batch on the device; pointers are device pointers, valid until the next
 * feed_next() or feed_read_evaluation(). A feature dataset gives features (float32, rows x D,
 * each row C x H x W for images) and labels or targets; a token dataset gives tokens (int32
 * input ids, rows x T) and labels (int32, rows x T: the id after each position), features
 * NULL. */
typedef struct feed_batch {
    const float *features;  /* rows x D, or NULL (token datasets) */
    const int32_t *tokens;  /* rows x T input ids (token datasets), or NULL */
    const int32_t *labels;  /* rows x labels_per_row class ids (1, or T for tokens), or NULL */
    const float *targets;   /* rows x K, or NULL */
    const int64_t *row_ids; /* global rows (training), or NULL (evaluation) */
    int rows;
    int64_t global_step; /* training: the step it belongs to (counted from 0) */
    int micro_index;     /* training: 0 .. micro-batches per step - 1 */
} feed_batch;

typedef struct feed_params {
    device *dev;
    allocator *alloc;
    const dataset_geometry *geometry; /* of the training data (and of evaluation data) */
    int rows;                         /* rows per micro-batch: the device buffers' size */
    /* the training stream; data may be NULL for a feed used for evaluation only */
    dataset *data;
    shard_plan *plan;
    int64_t first_step;
    int64_t total_steps; /* steps to stream from first_step */
    int micro_batches_per_step;
    int prefetch_depth; /* ring slots, >= 2 */
    int cache_blocks;   /* see stream_params */
    bool evaluation;    /* keep a host buffer for feed_read_evaluation() */
    /* timelines (may be NULL): the reader's reads, and the start of each upload */
    void (*on_read)(void *context, int64_t global_step, int micro_index, double start, double end);
    void (*on_upload)(void *context, int64_t global_step, double start, double end);
    void *hook_context;
} feed_params;

typedef struct feed_stats {
    double data_wait_seconds; /* time feed_next() waited for the reader */
    int64_t micro_batches;    /* handed out for training */
    stream_stats stream;      /* the reader's own counts and staging bytes */
} feed_stats;

typedef struct feed feed;

ddt_status feed_init(const feed_params *params, feed **out);
/* Where the stream starts (a resumed run's first step): before feed_start(); total_steps is
 * the run's, counted from 0. */
void feed_set_first_step(feed *f, int64_t first_step, int64_t total_steps);
/* Starts the reader thread (when there is training data and steps to stream). */
ddt_status feed_start(feed *f);
/* The next training micro-batch, on the device; starts uploading the one after it. */
ddt_status feed_next(feed *f, feed_batch *out);
/* The micro-batch from the last feed_next() has had its compute issued: its host slot is
 * given back once its upload has read it. */
ddt_status feed_release(feed *f);
/* Evaluation: rows [first_row, first_row + rows) of `data` (rows <= params.rows), read now
 * and on the device when this returns (the compute stream waits for them). */
ddt_status feed_read_evaluation(feed *f, dataset *data, int64_t first_row, int rows,
                                feed_batch *out);
feed_stats feed_get_stats(const feed *f);
/* Waits for uploads in flight, stops the reader, frees host memory. NULL is allowed. The
 * device buffers belong to the allocator (allocator_close releases them). */
void feed_free(feed *f);

/* For memory plans: what feed_init() takes from the allocator, added to component_bytes as
 * the allocator counts it; and the host bytes of the evaluation buffer. The reader stream's
 * own host staging is stream_staging_bytes(). */
void feed_plan_device(const dataset_geometry *geometry, int rows,
                      size_t component_bytes[MEMORY_COMPONENT_COUNT]);
size_t feed_evaluation_host_bytes(const dataset_geometry *geometry, int rows);

#endif
