/* shard.c - the epoch order (blocked, windowed shuffle) and each rank's slice of it.
 *
 * The epoch order is a pure function of (seed, epoch, N, block_rows, window_blocks, shuffle);
 * world_size, rank and micro_batch only choose which positions of that order a rank reads.
 * That separation is what makes a run with 4 ranks see the same global batches as a run
 * with 1 (see shard.h).
 *
 * Memory: the block permutation (one entry per block) and the window start positions for
 * the current epoch, plus the row permutation of one window. Never N entries.
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

    /* Shuffle state; all NULL / unused when params.shuffle is false. */
    int64_t block_count;    /* ceil(N / block_rows); the last block may be short */
    int64_t window_count;   /* ceil(block_count / window_blocks) */
    int64_t *block_order;   /* block_count: epoch position order of blocks */
    int64_t *window_starts; /* window_count + 1: first epoch position of each window */
    int64_t order_epoch;    /* epoch that block_order/window_starts describe; -1 if none */

    int64_t *window_rows;    /* rows of window `cached_window`, in epoch order */
    int64_t window_capacity; /* entries allocated in window_rows */
    int64_t cached_window;   /* -1 if none */
    int64_t cached_window_epoch;
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
    plan->order_epoch = -1;
    plan->cached_window = -1;
    plan->cached_window_epoch = -1;

    if (params->shuffle) {
        int64_t n = params->rows;
        int64_t block_rows = params->block_rows;
        int64_t window_blocks = params->window_blocks;
        plan->block_count = n / block_rows + (n % block_rows != 0);
        plan->window_count =
            plan->block_count / window_blocks + (plan->block_count % window_blocks != 0);
        /* A window never holds more than N rows; the test avoids overflowing the product. */
        plan->window_capacity = block_rows > n / window_blocks ? n : block_rows * window_blocks;
        if (plan->window_capacity > n) plan->window_capacity = n;

        plan->block_order = malloc((size_t)plan->block_count * sizeof *plan->block_order);
        plan->window_starts =
            malloc((size_t)(plan->window_count + 1) * sizeof *plan->window_starts);
        plan->window_rows = malloc((size_t)plan->window_capacity * sizeof *plan->window_rows);
        if (!plan->block_order || !plan->window_starts || !plan->window_rows) {
            int64_t blocks = plan->block_count;
            int64_t window_rows = plan->window_capacity;
            shard_plan_free(plan);
            return ddt_error(DDT_ERR_MEMORY,
                             "out of memory for the shuffle plan (%" PRId64 " blocks, a window of "
                             "%" PRId64 " rows); use larger blocks or fewer window blocks",
                             blocks, window_rows);
        }
    }
    *out = plan;
    return DDT_OK;
}

void shard_plan_free(shard_plan *plan) {
    if (!plan) return;
    free(plan->window_rows);
    free(plan->window_starts);
    free(plan->block_order);
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

static int64_t block_length(const shard_plan *plan, int64_t block) {
    int64_t first = block * plan->params.block_rows;
    int64_t rest = plan->params.rows - first;
    return rest < plan->params.block_rows ? rest : plan->params.block_rows;
}

/* Builds the block permutation and window starts of `epoch` (O(blocks), once per epoch). */
static void load_epoch(shard_plan *plan, int64_t epoch) {
    if (plan->order_epoch == epoch) return;
    int64_t count = plan->block_count;
    int64_t *order = plan->block_order;
    for (int64_t i = 0; i < count; i++)
        order[i] = i;
    rng_stream rng = rng_stream_init(
        rng_hash4(plan->params.seed, RNG_PURPOSE_SHUFFLE_BLOCKS, (uint64_t)epoch, 0));
    for (int64_t i = count - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_stream_below(&rng, (uint64_t)i + 1);
        int64_t swap = order[i];
        order[i] = order[j];
        order[j] = swap;
    }
    /* Window sizes vary by epoch: the short last block lands in a different window. */
    int64_t position = 0;
    for (int64_t w = 0; w < plan->window_count; w++) {
        plan->window_starts[w] = position;
        int64_t first = w * plan->params.window_blocks;
        int64_t end = first + plan->params.window_blocks;
        if (end > count) end = count;
        for (int64_t k = first; k < end; k++)
            position += block_length(plan, order[k]);
    }
    plan->window_starts[plan->window_count] = position;
    plan->order_epoch = epoch;
}

/* Window holding `position`: the last w with window_starts[w] <= position. */
static int64_t find_window(const shard_plan *plan, int64_t position) {
    int64_t low = 0, high = plan->window_count - 1;
    while (low < high) {
        int64_t mid = low + (high - low + 1) / 2;
        if (plan->window_starts[mid] <= position)
            low = mid;
        else
            high = mid - 1;
    }
    return low;
}

/* Fills the window cache with window `window`'s rows in epoch order. */
static void load_window(shard_plan *plan, int64_t epoch, int64_t window) {
    if (plan->cached_window == window && plan->cached_window_epoch == epoch) return;
    int64_t first = window * plan->params.window_blocks;
    int64_t end = first + plan->params.window_blocks;
    if (end > plan->block_count) end = plan->block_count;
    int64_t count = 0;
    for (int64_t k = first; k < end; k++) {
        int64_t block = plan->block_order[k];
        int64_t row = block * plan->params.block_rows;
        int64_t length = block_length(plan, block);
        for (int64_t i = 0; i < length; i++)
            plan->window_rows[count++] = row + i;
    }
    rng_stream rng = rng_stream_init(rng_hash4(plan->params.seed, RNG_PURPOSE_SHUFFLE_WINDOW,
                                               (uint64_t)epoch, (uint64_t)window));
    int64_t *rows = plan->window_rows;
    for (int64_t i = count - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_stream_below(&rng, (uint64_t)i + 1);
        int64_t swap = rows[i];
        rows[i] = rows[j];
        rows[j] = swap;
    }
    plan->cached_window = window;
    plan->cached_window_epoch = epoch;
}

int64_t shard_plan_row_at(shard_plan *plan, int64_t epoch, int64_t position) {
    if (position < 0 || position >= plan->params.rows || epoch < 0) return -1;
    if (!plan->params.shuffle) return position;
    load_epoch(plan, epoch);
    int64_t window = find_window(plan, position);
    load_window(plan, epoch, window);
    return plan->window_rows[position - plan->window_starts[window]];
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
    if (!p->shuffle) {
        for (int i = 0; i < p->micro_batch; i++)
            rows_out[i] = position + i;
        return DDT_OK;
    }
    load_epoch(plan, epoch);
    /* Walk windows forward rather than searching per row: a micro-batch spans one or two. */
    int64_t window = find_window(plan, position);
    load_window(plan, epoch, window);
    for (int i = 0; i < p->micro_batch; i++, position++) {
        while (position >= plan->window_starts[window + 1]) {
            window++;
            load_window(plan, epoch, window);
        }
        rows_out[i] = plan->window_rows[position - plan->window_starts[window]];
    }
    return DDT_OK;
}
