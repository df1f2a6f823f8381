/* stream.h - a reader thread per rank that keeps ready micro-batches queued.
 *
 * The reader walks the shard plan from a starting global step and puts each micro-batch in a
 * bounded ring of `prefetch_depth` slots. The trainer takes micro-batches in order with
 * stream_next() and gives each back with stream_release(); the reader blocks while the ring
 * is full.
 *
 * Reading goes through a block cache: the reader reads the shard plan's blocks (block i is
 * rows [i*block_rows, min((i+1)*block_rows, N)); chunk-aligned when block_rows is the chunk's
 * rows and shard sizes are multiples of it) whole, with one contiguous dataset_read_range()
 * each, keeps up to `cache_blocks` of them, and fills a slot by copying its rows out of the
 * cached blocks. The plan consumes blocks window by window, so a block is needed only while
 * the micro-batches walk its window; with the default cache of 2 x window_blocks + 1 blocks
 * (a micro-batch may straddle two windows) each block this rank needs is read once per
 * epoch. While the ring is full the reader reads the blocks of coming micro-batches ahead,
 * so the reads at the start of each window overlap the consumer's work (not across an epoch
 * boundary: the first micro-batch of an epoch, and of the stream, waits for its window's
 * blocks). The cost: each rank reads whole blocks, so with R ranks the bytes read per rank
 * are about the whole dataset per epoch, not 1/R of it.
 *
 * Rows inside a micro-batch are in the shard plan's order, each with its global row id
 * (row_ids[i] is the row whose data is features[i*D ..], labels[i] / targets[i*K ..]).
 *
 * Values are validated once per block read (NaN/Inf, labels out of range). A block with a bad
 * value is kept and its rows are then read one by one, so the error is returned exactly by
 * the micro-batch that holds the bad row, naming the file and the row, as if rows were read
 * one micro-batch at a time. A read error in the reader thread (bad value, I/O error) is
 * returned by the stream_next() call that would have received that micro-batch, with the
 * reader's message.
 *
 * Memory is fixed at stream_start(): the ring, the block cache and their bookkeeping are one
 * allocation of stream_staging_bytes(); nothing is allocated per micro-batch.
 *
 * Ownership: stream_start() allocates the slots and the cache and starts the thread;
 * stream_stop() stops it and frees everything. The stream borrows `data` and `plan` (not
 * freed, not used by anyone else while the stream runs except through the dataset's own
 * lock). The stream reads only whole blocks, so HDF5's chunk cache for `data` can be off
 * (dataset_set_chunk_cache(data, 0)).
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
    int64_t step;    /* step within the epoch */
    int micro_index; /* 0 .. micro_batches_per_step-1 */
    int rows;
    int64_t *row_ids; /* rows entries */
    float *features;  /* rows x D */
    int32_t *labels;  /* rows, for class labels (else NULL) */
    float *targets;   /* rows x K, for float targets (else NULL) */
} micro_batch;

typedef struct stream_params {
    dataset *data;
    shard_plan *plan;
    int micro_batch; /* rows per micro-batch (must match the plan) */
    int64_t first_global_step;
    int64_t total_global_steps; /* the reader stops after this many steps */
    int prefetch_depth;         /* slots in the ring, >= 2 */
    int cache_blocks;           /* blocks in the block cache, >= 0; 0 = the default: 2 x the
                                 * plan's window_blocks + 1 (1 when the plan does not shuffle,
                                 * as blocks then come in file order). Never more than the
                                 * dataset's block count. Any value >= 1 is correct; fewer than
                                 * the default may read blocks more than once per epoch, and
                                 * do not read ahead. */
} stream_params;

typedef struct stream_stats {
    double wait_seconds;       /* time stream_next() spent blocked */
    double read_seconds;       /* time the reader spent reading */
    int64_t micro_batches;     /* delivered */
    int64_t blocks_read;       /* block reads from the dataset (cache misses) */
    int64_t blocks_read_ahead; /* of which read ahead of need, while the ring was full */
    int64_t block_hits;        /* blocks a micro-batch needed that were already cached */
    int cache_blocks;          /* blocks the cache holds (the resolved cache_blocks) */
    size_t staging_bytes;      /* bytes the stream allocated: see stream_staging_bytes() */
} stream_stats;

typedef struct stream stream;

/* Bytes stream_start() allocates for a dataset of `geometry` read with a shard plan made from
 * `plan` (its rows, micro_batch, block_rows, window_blocks and shuffle are used), for
 * memory plans: the ring (prefetch_depth slots of micro_batch rows: row ids, features,
 * labels or targets), the block cache (cache_blocks blocks of min(block_rows, N) rows:
 * features, labels or targets; cache_blocks resolved as in stream_params) and bookkeeping
 * (4 bytes per dataset block, 16 per micro-batch row, a few dozen per slot and cached block),
 * each array rounded up to 64 bytes. Exact: everything the stream allocates except its fixed
 * handle. 0 if an argument is out of range. */
size_t stream_staging_bytes(const dataset_geometry *geometry, const shard_params *plan,
                            int prefetch_depth, int cache_blocks);

ddt_status stream_start(const stream_params *params, stream **out);
/* Blocks until the next micro-batch is ready; DDT_ERR_INTERNAL if past the last step. */
ddt_status stream_next(stream *s, micro_batch **out);
void stream_release(stream *s, micro_batch *mb);
stream_stats stream_get_stats(const stream *s);
/* Stops the reader (even if blocked on a full ring), joins it, frees. NULL is allowed. */
void stream_stop(stream *s);

#endif
