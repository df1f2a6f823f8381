/* shard.h - which dataset rows each rank reads at each step.
 *
 * The rule that makes data parallelism exact: the rows of global step s are positions
 * [s*B, (s+1)*B) of the epoch's order, and the epoch's order depends only on (seed, epoch)
 * and the row count -- never on the number of ranks or the micro-batch size. Rank r reads the
 * r-th of `world_size` equal, disjoint slices of each global batch, split into micro-batches
 * of b rows. The ragged tail (N mod B rows) is dropped, so every rank runs the same steps.
 *
 * The epoch order keeps reads contiguous: rows are cut into blocks of block_rows (aligned to
 * the HDF5 chunk), the blocks are permuted with a key of (seed, epoch), consecutive permuted
 * blocks are grouped into windows of window_blocks blocks, and rows are permuted within each
 * window (key: seed, epoch, window). A micro-batch's rows therefore come from at most
 * 2 x window_blocks chunks (one window, or two when it straddles a boundary). With shuffle
 * off, the order is the file order.
 *
 * Both permutations are keyed Feistel bijections computed one position at a time
 * (rng_permutation in util/rng.h), so a plan holds a few words whatever N is: a dataset of
 * 10^12 rows plans in the same memory as one of 10^3, and no table of rows or blocks is
 * ever built. (Earlier builds drew the order from Fisher-Yates shuffles of a block table and
 * of each window's rows: the guarantees are the same, the orders differ.) A plan caches the
 * current epoch's and window's keys, so it is not thread-safe (one per reader).
 *
 * Ownership: shard_plan_init() allocates; shard_plan_free() frees.
 *
 * Usage:
 *     shard_plan *plan;
 *     DDT_CHECK(shard_plan_init(&params, &plan));
 *     for (s = 0; s < shard_plan_steps_per_epoch(plan); s++)
 *         for (m = 0; m < shard_plan_micro_batches_per_step(plan); m++)
 *             DDT_CHECK(shard_plan_micro_batch_rows(plan, epoch, s, m, rows));
 */
#ifndef DDT_SHARD_SHARD_H
#define DDT_SHARD_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "util/status.h"

typedef struct shard_params {
    int64_t rows;         /* N, dataset rows */
    int64_t global_batch; /* B */
    int micro_batch;      /* b, rows per micro-batch on one rank */
    int world_size;
    int rank;
    uint64_t seed;
    bool shuffle;
    int64_t block_rows;   /* >= 1; the dataset's chunk rows is a good choice */
    int window_blocks;    /* >= 1 */
} shard_params;

typedef struct shard_plan shard_plan;

/* DDT_ERR_USAGE if B is not a multiple of world_size * b (message gives the numbers and
 * nearby valid values) or a parameter is out of range; DDT_ERR_DATA if N < B. */
ddt_status shard_plan_init(const shard_params *params, shard_plan **out);
void shard_plan_free(shard_plan *plan);

int64_t shard_plan_steps_per_epoch(const shard_plan *plan);      /* floor(N / B) */
int shard_plan_micro_batches_per_step(const shard_plan *plan);   /* B / (world_size * b) */
/* The parameters the plan was made with (for consumers that must agree with it). */
const shard_params *shard_plan_get_params(const shard_plan *plan);

/* Dataset row at `position` (0 <= position < N) of epoch `epoch`'s order. */
int64_t shard_plan_row_at(shard_plan *plan, int64_t epoch, int64_t position);

/* Fills rows_out[0..b) with the rows this rank reads for micro-batch `micro_index` of step
 * `step` (0 <= step < steps_per_epoch) of `epoch`, in epoch order. */
ddt_status shard_plan_micro_batch_rows(shard_plan *plan, int64_t epoch, int64_t step,
                                       int micro_index, int64_t *rows_out);

#endif
