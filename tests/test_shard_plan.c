/* test_shard_plan.c - the shard plan, with N ranks simulated in one process.
 *
 * The property everything else relies on: the rows of a global step are the same set whatever
 * the world size and micro-batch, and each epoch reads each row at most once (exactly once
 * when N is a multiple of B).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "shard/shard.h"

static shard_params make_params(int64_t rows, int64_t global_batch, int micro_batch, int world,
                                int rank) {
    shard_params p = {
        .rows = rows,
        .global_batch = global_batch,
        .micro_batch = micro_batch,
        .world_size = world,
        .rank = rank,
        .seed = 1234,
        .shuffle = true,
        .block_rows = 32,
        .window_blocks = 4,
    };
    return p;
}

static int compare_rows(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Rows of global step `step` of `epoch` gathered over all simulated ranks, sorted; returns
 * B or -1 if a plan call failed. */
static int64_t gather_step(const shard_params *base, int64_t epoch, int64_t step,
                           int64_t *rows_out) {
    int64_t count = 0;
    for (int rank = 0; rank < base->world_size; rank++) {
        shard_params p = *base;
        p.rank = rank;
        shard_plan *plan;
        if (shard_plan_init(&p, &plan) != DDT_OK) return -1;
        for (int m = 0; m < shard_plan_micro_batches_per_step(plan); m++) {
            if (shard_plan_micro_batch_rows(plan, epoch, step, m, rows_out + count) != DDT_OK) {
                shard_plan_free(plan);
                return -1;
            }
            count += p.micro_batch;
        }
        shard_plan_free(plan);
    }
    qsort(rows_out, (size_t)count, sizeof *rows_out, compare_rows);
    return count;
}

/* Every row read at most once per epoch; returns how many rows were read in all. */
static int64_t epoch_coverage(const shard_params *base, int64_t epoch, int *counts) {
    memset(counts, 0, (size_t)base->rows * sizeof *counts);
    int64_t total = 0;
    int64_t *rows = malloc((size_t)base->micro_batch * sizeof *rows);
    for (int rank = 0; rank < base->world_size; rank++) {
        shard_params p = *base;
        p.rank = rank;
        shard_plan *plan;
        CHECK_OK(shard_plan_init(&p, &plan));
        for (int64_t s = 0; s < shard_plan_steps_per_epoch(plan); s++)
            for (int m = 0; m < shard_plan_micro_batches_per_step(plan); m++) {
                CHECK_OK(shard_plan_micro_batch_rows(plan, epoch, s, m, rows));
                for (int i = 0; i < p.micro_batch; i++) {
                    CHECK(rows[i] >= 0 && rows[i] < p.rows);
                    counts[rows[i]]++;
                    total++;
                }
            }
        shard_plan_free(plan);
    }
    free(rows);
    return total;
}

static void test_coverage(void) {
    static const int worlds[] = {1, 2, 4};
    static const int micros[] = {8, 16, 64};
    int *counts = malloc(4096 * sizeof *counts);
    for (int w = 0; w < 3; w++)
        for (int m = 0; m < 3; m++) {
            /* N a multiple of B: every row exactly once. */
            shard_params p = make_params(3072, 256, micros[m], worlds[w], 0);
            int64_t total = epoch_coverage(&p, 0, counts);
            CHECK(total == 3072);
            int exactly_once = 1;
            for (int64_t r = 0; r < p.rows; r++)
                exactly_once &= counts[r] == 1;
            CHECK(exactly_once);

            /* Ragged N (and a short last block): at most once, steps * B rows. */
            p = make_params(3001, 256, micros[m], worlds[w], 0);
            total = epoch_coverage(&p, 3, counts);
            CHECK(total == 11 * 256);
            int at_most_once = 1;
            for (int64_t r = 0; r < p.rows; r++)
                at_most_once &= counts[r] <= 1;
            CHECK(at_most_once);
        }
    free(counts);
}

static void test_epoch_order_is_permutation(void) {
    /* row_at over all N positions, including the dropped tail, is a permutation of the rows. */
    shard_params p = make_params(3001, 256, 16, 1, 0);
    shard_plan *plan;
    CHECK_OK(shard_plan_init(&p, &plan));
    int *seen = calloc((size_t)p.rows, sizeof *seen);
    int ok = 1;
    for (int64_t pos = 0; pos < p.rows; pos++) {
        int64_t row = shard_plan_row_at(plan, 2, pos);
        if (row < 0 || row >= p.rows || seen[row]++) ok = 0;
    }
    CHECK(ok);
    CHECK(shard_plan_row_at(plan, 2, -1) == -1);
    CHECK(shard_plan_row_at(plan, 2, p.rows) == -1);
    free(seen);

    /* micro_batch_rows agrees with row_at. */
    int64_t rows[16];
    CHECK_OK(shard_plan_micro_batch_rows(plan, 5, 7, 3, rows));
    ok = 1;
    for (int i = 0; i < 16; i++)
        ok &= rows[i] == shard_plan_row_at(plan, 5, 7 * 256 + 3 * 16 + i);
    CHECK(ok);
    shard_plan_free(plan);
}

static void test_epochs_differ(void) {
    shard_params p = make_params(3072, 256, 16, 1, 0);
    shard_plan *plan;
    CHECK_OK(shard_plan_init(&p, &plan));
    int64_t *epoch0 = malloc((size_t)p.rows * sizeof *epoch0);
    for (int64_t pos = 0; pos < p.rows; pos++)
        epoch0[pos] = shard_plan_row_at(plan, 0, pos);
    int64_t moved = 0;
    for (int64_t pos = 0; pos < p.rows; pos++)
        moved += shard_plan_row_at(plan, 1, pos) != epoch0[pos];
    CHECK(moved > p.rows * 9 / 10);
    /* Going back to an epoch gives the same order (caches are keyed by epoch). */
    int64_t same = 0;
    for (int64_t pos = 0; pos < p.rows; pos++)
        same += shard_plan_row_at(plan, 0, pos) == epoch0[pos];
    CHECK(same == p.rows);
    /* The first step of each epoch is not simply the first rows of the file. */
    int64_t in_order = 0;
    for (int64_t pos = 0; pos < 256; pos++)
        in_order += epoch0[pos] == pos;
    CHECK(in_order < 64);
    free(epoch0);
    shard_plan_free(plan);
}

static void test_same_rows_for_any_world(void) {
    /* Reference: one rank, one micro-batch per step. */
    enum { N = 3001, B = 192 };
    int64_t reference[B], other[B];
    static const int worlds[] = {1, 2, 4};
    static const int micros[] = {8, 16, 24, 48};
    shard_params base = make_params(N, B, B, 1, 0);
    base.block_rows = 40;
    base.window_blocks = 3;
    int all_equal = 1, all_gathered = 1;
    for (int64_t epoch = 0; epoch < 3; epoch++)
        for (int64_t step = 0; step < N / B; step++) {
            if (gather_step(&base, epoch, step, reference) != B) all_gathered = 0;
            for (int w = 0; w < 3; w++)
                for (int m = 0; m < 4; m++) {
                    shard_params p = base;
                    p.world_size = worlds[w];
                    p.micro_batch = micros[m];
                    if (B % (worlds[w] * micros[m]) != 0) continue;
                    if (gather_step(&p, epoch, step, other) != B) all_gathered = 0;
                    all_equal &= memcmp(reference, other, sizeof reference) == 0;
                }
        }
    CHECK(all_gathered);
    CHECK(all_equal);
}

static void test_seeds(void) {
    shard_params p = make_params(3072, 256, 16, 2, 1);
    shard_plan *a, *b, *c;
    CHECK_OK(shard_plan_init(&p, &a));
    CHECK_OK(shard_plan_init(&p, &b));
    p.seed = 99;
    CHECK_OK(shard_plan_init(&p, &c));
    int64_t ra[16], rb[16], rc[16];
    int same = 1, differs = 0;
    for (int64_t s = 0; s < 12; s++)
        for (int m = 0; m < 8; m++) {
            CHECK_OK(shard_plan_micro_batch_rows(a, 1, s, m, ra));
            CHECK_OK(shard_plan_micro_batch_rows(b, 1, s, m, rb));
            CHECK_OK(shard_plan_micro_batch_rows(c, 1, s, m, rc));
            same &= memcmp(ra, rb, sizeof ra) == 0;
            differs += memcmp(ra, rc, sizeof ra) != 0;
        }
    CHECK(same);
    CHECK(differs > 90);
    shard_plan_free(a);
    shard_plan_free(b);
    shard_plan_free(c);
}

static void test_no_shuffle(void) {
    shard_params p = make_params(1000, 64, 8, 4, 2);
    p.shuffle = false;
    shard_plan *plan;
    CHECK_OK(shard_plan_init(&p, &plan));
    CHECK(shard_plan_steps_per_epoch(plan) == 15);
    CHECK(shard_plan_micro_batches_per_step(plan) == 2);
    int64_t rows[8];
    CHECK_OK(shard_plan_micro_batch_rows(plan, 4, 3, 1, rows));
    int ok = 1;
    for (int i = 0; i < 8; i++)
        ok &= rows[i] == 3 * 64 + 2 * 16 + 8 + i;
    CHECK(ok);
    ok = 1;
    for (int64_t pos = 0; pos < p.rows; pos++)
        ok &= shard_plan_row_at(plan, 7, pos) == pos;
    CHECK(ok);
    shard_plan_free(plan);
}

/* Distinct blocks and contiguous runs among a micro-batch's rows (sorted in place). */
static void measure_contiguity(int64_t *rows, int count, int64_t block_rows, int *blocks,
                               int *runs) {
    qsort(rows, (size_t)count, sizeof *rows, compare_rows);
    *blocks = 1;
    *runs = 1;
    for (int i = 1; i < count; i++) {
        *blocks += rows[i] / block_rows != rows[i - 1] / block_rows;
        *runs += rows[i] != rows[i - 1] + 1;
    }
}

/* Worst-case blocks and mean runs over one epoch for every rank. */
static void epoch_contiguity(const shard_params *base, int *max_blocks, double *mean_runs) {
    int64_t *rows = malloc((size_t)base->micro_batch * sizeof *rows);
    *max_blocks = 0;
    int64_t run_total = 0, batches = 0;
    for (int rank = 0; rank < base->world_size; rank++) {
        shard_params p = *base;
        p.rank = rank;
        shard_plan *plan;
        CHECK_OK(shard_plan_init(&p, &plan));
        for (int64_t s = 0; s < shard_plan_steps_per_epoch(plan); s++)
            for (int m = 0; m < shard_plan_micro_batches_per_step(plan); m++) {
                CHECK_OK(shard_plan_micro_batch_rows(plan, 0, s, m, rows));
                int blocks, runs;
                measure_contiguity(rows, p.micro_batch, p.block_rows, &blocks, &runs);
                if (blocks > *max_blocks) *max_blocks = blocks;
                run_total += runs;
                batches++;
            }
        shard_plan_free(plan);
    }
    *mean_runs = (double)run_total / (double)batches;
    free(rows);
}

static void test_contiguity(void) {
    int max_blocks;
    double mean_runs;
    /* Windows of 4 x 64 = 256 rows, a multiple of b: no micro-batch straddles two windows. */
    shard_params p = make_params(64 * 200, 512, 64, 2, 0);
    p.block_rows = 64;
    p.window_blocks = 4;
    epoch_contiguity(&p, &max_blocks, &mean_runs);
    CHECK(max_blocks <= 4);
    printf("contiguity: b=64 of windows 4x64 rows: <= %d blocks, %.1f runs per micro-batch\n",
           max_blocks, mean_runs);

    /* b equal to a window: each micro-batch is exactly its blocks, one run per block or fewer. */
    p.micro_batch = 256;
    epoch_contiguity(&p, &max_blocks, &mean_runs);
    CHECK(max_blocks <= 4);
    CHECK(mean_runs <= 4.0);
    printf("contiguity: b=256 of windows 4x64 rows: <= %d blocks, %.1f runs per micro-batch\n",
           max_blocks, mean_runs);

    /* Half a window: sampling b of R window rows leaves about b(R-b)/R runs (plus block
     * edges); a shuffle over the whole file would leave about b. */
    p.micro_batch = 128;
    epoch_contiguity(&p, &max_blocks, &mean_runs);
    CHECK(max_blocks <= 4);
    CHECK(mean_runs < 128.0 * (256 - 128) / 256 + 4);
    printf("contiguity: b=128 of windows 4x64 rows: <= %d blocks, %.1f runs per micro-batch\n",
           max_blocks, mean_runs);

    /* Ragged N: the short block shifts later windows, so a micro-batch may straddle two. */
    p = make_params(64 * 200 + 17, 512, 64, 2, 0);
    p.block_rows = 64;
    p.window_blocks = 4;
    epoch_contiguity(&p, &max_blocks, &mean_runs);
    CHECK(max_blocks <= 2 * 4);
    printf("contiguity: ragged N, b=64: <= %d blocks, %.1f runs per micro-batch\n", max_blocks,
           mean_runs);
}

static void check_usage(shard_params p, ddt_status expected, const char *message) {
    shard_plan *plan = (shard_plan *)&p; /* must be reset to NULL on failure */
    ddt_status status = shard_plan_init(&p, &plan);
    CHECK(status == expected);
    CHECK(plan == NULL);
    if (message && strcmp(ddt_error_message(), message) != 0) {
        fprintf(stderr, "message was: %s\nexpected:    %s\n", ddt_error_message(), message);
        CHECK(!"message matches");
    }
    if (!message) CHECK(ddt_error_message()[0] != '\0');
}

static void test_usage_errors(void) {
    check_usage(make_params(1000, 100, 16, 2, 0), DDT_ERR_USAGE,
                "--global-batch 100 is not a multiple of world size 2 x --micro-batch 16 = 32 "
                "(try --global-batch 96 or 128, or another --micro-batch)");
    check_usage(make_params(1000, 20, 16, 2, 0), DDT_ERR_USAGE,
                "--global-batch 20 is not a multiple of world size 2 x --micro-batch 16 = 32 "
                "(try --global-batch 32, or another --micro-batch)");
    check_usage(make_params(50, 64, 16, 2, 0), DDT_ERR_DATA,
                "the dataset has 50 rows, fewer than one global batch of 64");
    check_usage(make_params(1000, 64, 16, 2, 2), DDT_ERR_USAGE, "rank 2 is outside [0, 2)");
    check_usage(make_params(1000, 64, 16, 2, -1), DDT_ERR_USAGE, "rank -1 is outside [0, 2)");
    check_usage(make_params(1000, 0, 16, 2, 0), DDT_ERR_USAGE, NULL);
    check_usage(make_params(1000, 64, 0, 2, 0), DDT_ERR_USAGE, NULL);
    check_usage(make_params(1000, 64, 16, 0, 0), DDT_ERR_USAGE, NULL);
    check_usage(make_params(0, 64, 16, 2, 0), DDT_ERR_USAGE, NULL);
    shard_params p = make_params(1000, 64, 16, 2, 0);
    p.block_rows = 0;
    check_usage(p, DDT_ERR_USAGE, NULL);
    p = make_params(1000, 64, 16, 2, 0);
    p.window_blocks = -3;
    check_usage(p, DDT_ERR_USAGE, NULL);

    /* Out-of-range step / micro-batch is the caller's bug, reported, not a crash. */
    shard_plan *plan;
    p = make_params(1000, 64, 16, 2, 0);
    CHECK_OK(shard_plan_init(&p, &plan));
    int64_t rows[16];
    CHECK(shard_plan_micro_batch_rows(plan, 0, 15, 0, rows) == DDT_ERR_INTERNAL);
    CHECK(shard_plan_micro_batch_rows(plan, 0, 0, 2, rows) == DDT_ERR_INTERNAL);
    CHECK(shard_plan_micro_batch_rows(plan, -1, 0, 0, rows) == DDT_ERR_INTERNAL);
    shard_plan_free(plan);
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void test_large_dataset(void) {
    /* 10^8 rows: an N-entry permutation would be 800 MB and take seconds to build. */
    shard_params p = make_params(100000000, 4096, 256, 4, 3);
    p.block_rows = 256;
    p.window_blocks = 16;
    struct mallinfo2 before = mallinfo2();
    double start = seconds_now();
    shard_plan *plan;
    CHECK_OK(shard_plan_init(&p, &plan));
    int64_t rows[256];
    int in_range = 1;
    for (int64_t s = 0; s < 20; s++) {
        CHECK_OK(shard_plan_micro_batch_rows(plan, s % 2, s * 1000, (int)(s % 4), rows));
        for (int i = 0; i < 256; i++)
            in_range &= rows[i] >= 0 && rows[i] < p.rows;
    }
    double elapsed = seconds_now() - start;
    struct mallinfo2 after = mallinfo2();
    size_t used = (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
    CHECK(in_range);
    CHECK(elapsed < 1.0);
    CHECK(used < 8u << 20);
    printf("large: 1e8 rows, 20 micro-batches over 2 epochs in %.3f s, plan holds %.2f MB\n",
           elapsed, (double)used / 1e6);
    shard_plan_free(plan);
}

/* Heap bytes a plan of `p` holds after planning a few micro-batches of two epochs. */
static size_t plan_heap_bytes(shard_params p) {
    struct mallinfo2 before = mallinfo2();
    shard_plan *plan;
    CHECK_OK(shard_plan_init(&p, &plan));
    int64_t *rows = malloc((size_t)p.micro_batch * sizeof *rows);
    int64_t steps = shard_plan_steps_per_epoch(plan);
    for (int64_t s = 0; s < 8; s++)
        CHECK_OK(shard_plan_micro_batch_rows(plan, s % 2, (s * 7919) % steps, 0, rows));
    free(rows);
    struct mallinfo2 after = mallinfo2();
    shard_plan_free(plan);
    return (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
}

/* The plan's memory does not grow with the rows: 10^12 rows (2^40 with blocks of one row, the
 * worst case: as many blocks as rows) plan in what 10^3 rows take. */
static void test_constant_memory(void) {
    shard_params small = make_params(1000, 64, 16, 2, 1);
    shard_params huge = make_params(1000000000000, 4096, 256, 4, 3);
    huge.block_rows = 1024;
    huge.window_blocks = 16;
    shard_params blocks_of_one = make_params((int64_t)1 << 40, 64, 16, 2, 0);
    blocks_of_one.block_rows = 1;
    double start = seconds_now();
    size_t small_bytes = plan_heap_bytes(small), huge_bytes = plan_heap_bytes(huge),
           one_bytes = plan_heap_bytes(blocks_of_one);
    double elapsed = seconds_now() - start;
    CHECK(huge_bytes == small_bytes);
    CHECK(one_bytes == small_bytes);
    CHECK(small_bytes < 1024);
    CHECK(elapsed < 0.5);
    printf("constant memory: a plan holds %zu bytes for 10^3 rows, %zu for 10^12, %zu for 2^40 "
           "blocks (%.4f s)\n",
           small_bytes, huge_bytes, one_bytes, elapsed);

    /* Rows of a global step of 10^12 rows: the same set for any world size and micro-batch,
     * at the start, the middle and the end of an epoch (tail blocks included). */
    enum { B = 4096 };
    int64_t *reference = malloc(B * sizeof *reference), *other = malloc(B * sizeof *other);
    shard_params base = huge;
    base.world_size = 1;
    base.micro_batch = B;
    int64_t steps = base.rows / B;
    static const int64_t step_choices[3] = {0, 122070312, 244140624};
    int equal = 1;
    for (int k = 0; k < 3; k++) {
        CHECK(step_choices[k] < steps);
        CHECK(gather_step(&base, 5, step_choices[k], reference) == B);
        shard_params p = huge; /* 4 ranks x micro-batch 256 */
        CHECK(gather_step(&p, 5, step_choices[k], other) == B);
        equal &= memcmp(reference, other, B * sizeof *reference) == 0;
        p.world_size = 8;
        p.micro_batch = 128;
        CHECK(gather_step(&p, 5, step_choices[k], other) == B);
        equal &= memcmp(reference, other, B * sizeof *reference) == 0;
        int distinct = 1;
        for (int i = 1; i < B; i++)
            distinct &= reference[i] != reference[i - 1] && reference[i] < base.rows;
        CHECK(distinct);
    }
    CHECK(equal);
    free(reference);
    free(other);
}

/* Every position of an epoch maps to a distinct row, for shapes with a short last block in
 * every place, blocks longer than the dataset, windows wider than it, one-row blocks. */
static void test_permutation_shapes(void) {
    static const int64_t rows[] = {1, 2, 3, 7, 64, 65, 127, 1000, 3001, 4096};
    static const int64_t blocks[] = {1, 2, 3, 32, 64, 5000};
    static const int windows[] = {1, 2, 3, 16, 1000};
    int all = 1, shapes = 0;
    int *seen = malloc(4096 * sizeof *seen);
    for (size_t n = 0; n < sizeof rows / sizeof rows[0]; n++)
        for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++)
            for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
                shard_params p = make_params(rows[n], 1, 1, 1, 0);
                p.block_rows = blocks[b];
                p.window_blocks = windows[w];
                shard_plan *plan;
                CHECK_OK(shard_plan_init(&p, &plan));
                for (int64_t epoch = 0; epoch < 3; epoch++) {
                    memset(seen, 0, (size_t)p.rows * sizeof *seen);
                    for (int64_t pos = 0; pos < p.rows; pos++) {
                        int64_t row = shard_plan_row_at(plan, epoch, pos);
                        if (row < 0 || row >= p.rows || seen[row]++) all = 0;
                    }
                }
                shard_plan_free(plan);
                shapes++;
            }
    free(seen);
    CHECK(all);
    printf("permutation shapes: %d (rows, block rows, window) shapes, 3 epochs each\n", shapes);
}

int main(void) {
    test_coverage();
    test_epoch_order_is_permutation();
    test_epochs_differ();
    test_same_rows_for_any_world();
    test_seeds();
    test_no_shuffle();
    test_contiguity();
    test_usage_errors();
    test_large_dataset();
    test_constant_memory();
    test_permutation_shapes();
    return check_finish();
}
