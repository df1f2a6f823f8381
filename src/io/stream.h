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
 * (row_ids[i] is the row whose data is features[i*D ..] or tokens[i*T ..], labels[i*L ..]
 * / targets[i*K ..], with L = labels_per_row: 1 for class ids, T for token datasets).
 *
 * Values are validated once per block read (NaN/Inf, labels out of range). A block with a bad
 * value is kept and its rows are then read one by one, so the error is returned exactly by
 * the micro-batch that holds the bad row, naming the file and the row, as if rows were read
 * one micro-batch at a time. A read error in the reader thread (bad value, I/O error) is
 * returned by the stream_next() call that would have received that micro-batch, with the
 * reader's message.
 *
 * Memory is fixed at stream_open(): the handle, the ring, the block cache and their
 * bookkeeping are one allocation of stream_staging_bytes(); nothing is allocated per
 * micro-batch. stream_fit_staging() sizes the ring, the shuffle window and the cache to a host
 * staging limit (--host-staging-limit). The stream also counts the staging bytes in use -- the
 * handle and bookkeeping, each ring slot from when the reader starts filling it until
 * stream_release(), each cache entry once it holds (or is loading) a block -- and their peak,
 * which by construction never exceeds stream_staging_bytes() (so never the limit it was fitted
 * to), whatever the relative speeds of reader and consumer. Not counted: HDF5's own transient
 * buffers inside a read (with the chunk cache off, a compressed chunk is decompressed into a buffer
 * HDF5 frees after the read).
 *
 * Ownership: stream_open() allocates the slots and the cache and starts the thread;
 * stream_close() stops it and frees everything. The stream borrows `data` and `plan` (not
 * freed, not used by anyone else while the stream runs except through the dataset's own
 * lock). The stream reads only whole blocks, so HDF5's chunk cache for `data` can be off
 * (dataset_set_chunk_cache(data, 0)).
 *
 * Usage:
 *     staging_fit fit = {.prefetch_depth = 0, .window_blocks = 0};  (0: derive)
 *     DDT_CHECK(stream_fit_staging(limit, geometry, &plan_params, &fit));
 *     plan_params.window_blocks = fit.window_blocks;  ... shard_plan_init(&plan_params, &plan)
 *     params.prefetch_depth = fit.prefetch_depth; params.cache_blocks = fit.cache_blocks;
 *     stream *s;
 *     DDT_CHECK(stream_open(&params, &s));
 *     micro_batch *mb;
 *     DDT_CHECK(stream_next(s, &mb));  ... use mb ...  stream_release(s, mb);
 *     stream_close(s);
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
    float *features;  /* rows x D, for feature datasets (else NULL) */
    int32_t *tokens;  /* rows x T input ids, for token datasets (else NULL) */
    int32_t *labels;  /* rows x labels_per_row, for class labels (else NULL) */
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
    /* Where the stream's one allocation comes from (pinned memory on GPUs, so slots can be
     * uploaded asynchronously); NULL for aligned_alloc/free. The memory must be aligned to at
     * least 64 bytes. Counted in stream_staging_bytes() either way. */
    ddt_status (*host_alloc)(void *context, size_t bytes, void **out);
    void (*host_free)(void *context, void *pointer);
    void *host_alloc_context;
    /* Called on the reader thread after each micro-batch is read, with its start and end
     * (seconds, CLOCK_MONOTONIC); for timelines. May be NULL. */
    void (*on_read)(void *context, int64_t global_step, int micro_index, double start,
                    double end);
    void *on_read_context;
} stream_params;

typedef struct stream_stats {
    double wait_seconds;              /* time stream_next() spent blocked */
    double read_seconds;              /* time the reader spent reading */
    int64_t micro_batches;            /* delivered */
    int64_t blocks_read;              /* block reads from the dataset (cache misses) */
    int64_t blocks_read_ahead;        /* of which read ahead of need, while the ring was full */
    int64_t block_hits;               /* blocks a micro-batch needed that were already cached */
    int cache_blocks;                 /* blocks the cache holds (the resolved cache_blocks) */
    size_t staging_bytes;             /* bytes the stream allocated: see stream_staging_bytes() */
    size_t staging_bytes_in_use;      /* now: handle and bookkeeping, slots being filled,
                                       * filled or taken, cache entries holding a block */
    size_t peak_staging_bytes_in_use; /* the most in use at any time; <= staging_bytes */
} stream_stats;

typedef struct stream stream;

/* Bytes stream_open() allocates for a dataset of `geometry` read with a shard plan made from
 * `plan` (its rows, micro_batch, block_rows, window_blocks and shuffle are used), for
 * memory plans: the ring (prefetch_depth slots of micro_batch rows: row ids, features or
 * token ids (4 bytes each), labels_per_row int32 labels or K float targets), the block cache
 * (cache_blocks blocks of min(block_rows, N) rows: the same but row ids; a token block holds
 * its windows' ids and labels unpacked; cache_blocks resolved as in stream_params) and
 * bookkeeping (the stream's handle, about 1.2 KiB; 16 bytes per micro-batch row, a few
 * dozen per slot and cached block, 8 to 16 more per cached block for its index, and nothing
 * per dataset block), each array rounded up to 64 bytes. Exact: everything the stream allocates
 * (the allocator's own rounding aside). 0 if an argument is out of range. */
size_t stream_staging_bytes(const dataset_geometry *geometry, const shard_params *plan,
                            int prefetch_depth, int cache_blocks);

/* A stream configuration sized to a host staging limit; see stream_fit_staging(). */
typedef struct staging_fit {
    int prefetch_depth;   /* in: 0 = derive; out: resolved */
    int window_blocks;    /* in: 0 = derive; out: resolved (the shard plan's shuffle window) */
    int cache_blocks;     /* out: resolved (never more than the dataset's block count) */
    size_t bytes;         /* out: stream_staging_bytes() of the result */
    size_t minimum_bytes; /* out: the least any configuration needs: 2 ring slots, 1 cached
                           * block and the bookkeeping */
} staging_fit;

/* Chooses prefetch depth, shuffle window and cache size for a stream over a dataset of
 * `geometry` with a shard plan made from `plan` (its rows, micro_batch, block_rows and shuffle
 * are used; its window_blocks is ignored: fit->window_blocks replaces it) so that the stream's
 * staging, stream_staging_bytes(), is at most `limit_bytes`. Deterministic: a function of its
 * arguments only, so every rank resolves the same window (and hence the same epoch order).
 *
 * limit_bytes 0 means no limit: prefetch 4 and window 16 unless given, cache 2W+1 blocks
 * (1 without shuffle), capped at the block count.
 *
 * Otherwise, with C(W) = min(2W+1, block count), the cache that reads each block once per
 * epoch (1 without shuffle), and bytes(P, C) = stream_staging_bytes():
 *   1. minimum_bytes = bytes(2, 1) > limit: DDT_ERR_USAGE giving the parts and the total.
 *   2. A given prefetch depth P (>= 2) must fit with a 1-block cache, a given window W with
 *      its full cache C(W) (and the given P, else P = 2); if not, DDT_ERR_USAGE naming the
 *      option, what it needs and the limit.
 *   3. Derived P: the largest of 4, 3, 2 with bytes(P, C(W)) <= limit, where W is the given
 *      window, or 1 when the window is derived (a useful cache); 2 if none.
 *   4. Derived W (shuffle): the largest W in 16..1 with bytes(P, C(W)) <= limit, cache C(W).
 *      If not even C(1) fits: W = 1 and the largest cache of 2 or 1 blocks that fits (correct,
 *      but blocks may be read more than once per epoch and nothing is read ahead).
 *   5. Without shuffle the window does not matter (the given one, else 16, is passed through)
 *      and the cache is 1 block.
 * fit->bytes <= limit_bytes whenever limit_bytes > 0 and DDT_OK is returned. A prefetch depth
 * of 1 or below 0, or a window below 0, is DDT_ERR_USAGE; parameters the stream cannot take
 * (too many blocks) are DDT_ERR_USAGE as in stream_open(). */
ddt_status stream_fit_staging(size_t limit_bytes, const dataset_geometry *geometry,
                              const shard_params *plan, staging_fit *fit);

ddt_status stream_open(const stream_params *params, stream **out);
/* Blocks until the next micro-batch is ready; DDT_ERR_INTERNAL if past the last step. */
ddt_status stream_next(stream *s, micro_batch **out);
void stream_release(stream *s, micro_batch *mb);
stream_stats stream_get_stats(const stream *s);
/* Stops the reader (even if blocked on a full ring), joins it, frees. NULL is allowed. */
void stream_close(stream *s);

#endif
