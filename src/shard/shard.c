/* shard.c - the epoch order (blocked, windowed shuffle) and each rank's slice of it.
 *
 * The epoch order is a pure function of (seed, epoch, N, block_rows, window_blocks, shuffle);
 * world_size, rank and micro_batch only choose which positions of that order a rank reads.
 * That separation is what makes a run with 4 ranks see the same global batches as a run
 * with 1 (see shard.h).
 *
 * The order, computed one position at a time. With R = block_rows, C = ceil(N / R) blocks
 * and W = window_blocks:
 *   1. Block slots. Slot k of the epoch holds block P(k), P a keyed permutation of [0, C)
 *      (key: seed, epoch). Every block has R rows except the last, which may be short; the
 *      slot holding it (the "short slot", P^-1(C - 1)) makes later slots start earlier.
 *      Laid end to end, the slots give the blocked order: position q lies in slot k at
 *      offset o, and stands for row P(k) * R + o.
 *   2. Windows. Window w is slots [wW, (w+1)W); its positions are a range [start, end) of
 *      the blocked order. Position p of the epoch, in window w, is the blocked position
 *      start + S_w(p - start), S_w a keyed permutation of the window's rows (key: seed,
 *      epoch, w).
 * So each position costs two permutation lookups and some arithmetic.
 *
 * Memory: the parameters and the keys of one epoch and one window. Never anything per row or
 * per block.
 */
#include "shard/shard.h"

#include <inttypes.h>
#include <stdlib.h>

#include "util/rng.h"

struct shard_plan {
    shard_params params;
    int64_t rank_rows;       /* B / world_size: one rank's share of a global step */
    int64_t steps_per_epoch; /* floor(N / B) */
    int micro_batches_per_step;

    /* Shuffle geometry (unused when params.shuffle is false). */
    int64_t block_rows;   /* R: params.block_rows, capped at N */
    int64_t block_count;  /* C = ceil(N / R) */
    int64_t short_rows;   /* rows of the last block */
    int64_t window_count; /* ceil(C / W) */

    /* The blocked order of epoch `order_epoch` (-1 if none yet). */
    int64_t order_epoch;
    rng_permutation blocks; /* P */
    int64_t short_slot;     /* slot of the short last block; -1 if the last block is full */

    /* The row permutation of window `window` of epoch `window_epoch` (-1 if none yet). */
    int64_t window_epoch;
    int64_t window;
    int64_t window_start, window_end; /* its positions [start, end) */
    rng_permutation window_rows;      /* S_w */
};

static ddt_status validate_params(const shard_params *p) {
    if (p->rows <= 0)
        return ddt_error(DDT_ERR_USAGE, "the dataset row count must be positive (got %" PRId64 ")",
                         p->rows);
    if (p->global_batch <= 0)
        return ddt_error(DDT_ERR_USAGE, "--global-batch must be positive (got %" PRId64 ")",
                         p->global_batch);
    if (p->micro_batch <= 0)
        return ddt_error(DDT_ERR_USAGE, "--micro-batch must be positive (got %d)", p->micro_batch);
    if (p->world_size <= 0)
        return ddt_error(DDT_ERR_USAGE, "world size must be positive (got %d)", p->world_size);
    if (p->rank < 0 || p->rank >= p->world_size)
        return ddt_error(DDT_ERR_USAGE, "rank %d is outside [0, %d)", p->rank, p->world_size);
    if (p->block_rows <= 0)
        return ddt_error(DDT_ERR_USAGE, "shard block rows must be positive (got %" PRId64 ")",
                         p->block_rows);
    if (p->window_blocks <= 0)
        return ddt_error(DDT_ERR_USAGE, "shuffle window blocks must be positive (got %d)",
                         p->window_blocks);

    int64_t quantum = (int64_t)p->world_size * p->micro_batch;
    if (p->global_batch % quantum != 0) {
        int64_t below = p->global_batch / quantum * quantum;
        int64_t above = below + quantum;
        if (below > 0)
            return ddt_error(DDT_ERR_USAGE,
                             "--global-batch %" PRId64 " is not a multiple of world size %d x "
                             "--micro-batch %d = %" PRId64 " (try --global-batch %" PRId64
                             " or %" PRId64 ", or another --micro-batch)",
                             p->global_batch, p->world_size, p->micro_batch, quantum, below, above);
        return ddt_error(DDT_ERR_USAGE,
                         "--global-batch %" PRId64 " is not a multiple of world size %d x "
                         "--micro-batch %d = %" PRId64 " (try --global-batch %" PRId64
                         ", or another --micro-batch)",
                         p->global_batch, p->world_size, p->micro_batch, quantum, above);
    }
    if (p->rows < p->global_batch)
        return ddt_error(DDT_ERR_DATA,
                         "the dataset has %" PRId64
                         " rows, fewer than one global batch of %" PRId64,
                         p->rows, p->global_batch);
    return DDT_OK;
}

ddt_status shard_plan_init(const shard_params *params, shard_plan **out) {
    *out = NULL;
    DDT_CHECK(validate_params(params));

    shard_plan *plan = calloc(1, sizeof *plan);
    if (!plan) return ddt_error(DDT_ERR_MEMORY, "out of memory allocating the shard plan");
    plan->params = *params;
    plan->rank_rows = params->global_batch / params->world_size;
    plan->steps_per_epoch = params->rows / params->global_batch;
    plan->micro_batches_per_step = (int)(plan->rank_rows / params->micro_batch);
    /* A block longer than the dataset is the dataset: one block, one window. */
    int64_t block_rows = params->block_rows < params->rows ? params->block_rows : params->rows;
    plan->block_rows = block_rows;
    plan->block_count = (params->rows - 1) / block_rows + 1;
    plan->short_rows = params->rows - (plan->block_count - 1) * block_rows;
    plan->window_count = (plan->block_count - 1) / params->window_blocks + 1;
    plan->order_epoch = -1;
    plan->window_epoch = -1;
    *out = plan;
    return DDT_OK;
}

void shard_plan_free(shard_plan *plan) {
    free(plan);
}

int64_t shard_plan_steps_per_epoch(const shard_plan *plan) {
    return plan->steps_per_epoch;
}

int shard_plan_micro_batches_per_step(const shard_plan *plan) {
    return plan->micro_batches_per_step;
}

const shard_params *shard_plan_get_params(const shard_plan *plan) {
    return &plan->params;
}

/* Keys the block permutation of `epoch` and finds its short slot. */
static void load_epoch(shard_plan *plan, int64_t epoch) {
    if (plan->order_epoch == epoch) return;
    plan->blocks = rng_permutation_init(
        (uint64_t)plan->block_count,
        rng_hash4(plan->params.seed, RNG_PURPOSE_SHUFFLE_BLOCKS, (uint64_t)epoch, 0));
    plan->short_slot =
        plan->short_rows < plan->block_rows
            ? (int64_t)rng_permutation_invert(&plan->blocks, (uint64_t)plan->block_count - 1)
            : -1;
    plan->order_epoch = epoch;
}

/* First blocked position of slot `slot` (0 <= slot <= C; slot C gives N). */
static int64_t slot_start(const shard_plan *plan, int64_t slot) {
    int64_t start = slot * plan->block_rows;
    if (plan->short_slot >= 0 && slot > plan->short_slot)
        start -= plan->block_rows - plan->short_rows;
    return start;
}

/* Blocked position `position` as if every block were full: positions after the short slot
 * move up by the rows it lacks. */
static int64_t uniform_position(const shard_plan *plan, int64_t position) {
    if (plan->short_slot >= 0 && position >= plan->short_slot * plan->block_rows + plan->short_rows)
        return position + plan->block_rows - plan->short_rows;
    return position;
}

/* Row of blocked position `position` of the loaded epoch. */
static int64_t blocked_row(const shard_plan *plan, int64_t position) {
    int64_t uniform = uniform_position(plan, position);
    int64_t slot = uniform / plan->block_rows;
    int64_t block = (int64_t)rng_permutation_apply(&plan->blocks, (uint64_t)slot);
    return block * plan->block_rows + uniform % plan->block_rows;
}

/* Window holding blocked position `position` of the loaded epoch. */
static int64_t window_of(const shard_plan *plan, int64_t position) {
    return uniform_position(plan, position) / plan->block_rows / plan->params.window_blocks;
}

/* Keys window `window`'s row permutation (the epoch must be loaded). */
static void load_window(shard_plan *plan, int64_t epoch, int64_t window) {
    if (plan->window_epoch == epoch && plan->window == window) return;
    int64_t window_blocks = plan->params.window_blocks;
    int64_t first = window * window_blocks;
    int64_t end =
        first + window_blocks < plan->block_count ? first + window_blocks : plan->block_count;
    plan->window_start = slot_start(plan, first);
    plan->window_end = slot_start(plan, end);
    plan->window_rows =
        rng_permutation_init((uint64_t)(plan->window_end - plan->window_start),
                             rng_hash4(plan->params.seed, RNG_PURPOSE_SHUFFLE_WINDOW,
                                       (uint64_t)epoch, (uint64_t)window));
    plan->window_epoch = epoch;
    plan->window = window;
}

/* Row at `position` of `epoch`'s shuffled order; the position must be in range. */
static int64_t shuffled_row(shard_plan *plan, int64_t epoch, int64_t position) {
    load_epoch(plan, epoch);
    if (plan->window_epoch != epoch || position < plan->window_start ||
        position >= plan->window_end)
        load_window(plan, epoch, window_of(plan, position));
    uint64_t offset =
        rng_permutation_apply(&plan->window_rows, (uint64_t)(position - plan->window_start));
    return blocked_row(plan, plan->window_start + (int64_t)offset);
}

int64_t shard_plan_row_at(shard_plan *plan, int64_t epoch, int64_t position) {
    if (position < 0 || position >= plan->params.rows || epoch < 0) return -1;
    if (!plan->params.shuffle) return position;
    return shuffled_row(plan, epoch, position);
}

ddt_status shard_plan_micro_batch_rows(shard_plan *plan, int64_t epoch, int64_t step,
                                       int micro_index, int64_t *rows_out) {
    if (epoch < 0 || step < 0 || step >= plan->steps_per_epoch || micro_index < 0 ||
        micro_index >= plan->micro_batches_per_step)
        return ddt_error(DDT_ERR_INTERNAL,
                         "shard plan asked for epoch %" PRId64 ", step %" PRId64
                         ", micro-batch %d; valid: step < %" PRId64 ", micro-batch < %d",
                         epoch, step, micro_index, plan->steps_per_epoch,
                         plan->micro_batches_per_step);
    const shard_params *p = &plan->params;
    int64_t position =
        step * p->global_batch + p->rank * plan->rank_rows + (int64_t)micro_index * p->micro_batch;
    for (int i = 0; i < p->micro_batch; i++, position++)
        rows_out[i] = p->shuffle ? shuffled_row(plan, epoch, position) : position;
    return DDT_OK;
}
