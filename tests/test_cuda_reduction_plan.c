/* test_cuda_reduction_plan.c - how the CUDA kernels split their sums (engine/cuda/
 * reduction_plan.h), checked on the CPU: the same header sizes the grids on the GPU.
 *
 * For every shape: the column-sum chunks and each thread's piece of a chunk cover every row
 * once, in increasing order (so the partials, added in chunk order, add the rows in order);
 * no chunk is empty; the partials fit the scratch; and GPT-2's shapes get grids that fill a
 * GPU (the kernels before this plan gave a width of 768 only 24 blocks, and a loss 160). */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#include "check.h"
#include "engine/cuda/reduction_plan.h"
#include "util/rng.h"

/* Walks the pieces of every (chunk, thread row) in order, as the kernel and the second pass
 * combine them: each must start where the one before ended, and the last end at `rows`. */
static int pieces_cover_rows(column_sum_plan plan, int rows) {
    long long next = 0;
    for (int chunk = 0; chunk < plan.chunks; chunk++) {
        int chunk_rows_seen = 0;
        for (int thread_row = 0; thread_row < COLUMN_SUM_ROW_THREADS; thread_row++) {
            int first = -1, last = -1;
            column_sum_thread_rows(plan, rows, chunk, thread_row, &first, &last);
            if (first != next || last < first) {
                fprintf(stderr,
                        "  rows %d: chunk %d thread row %d has [%d, %d), expected from %lld\n",
                        rows, chunk, thread_row, first, last, next);
                return 0;
            }
            chunk_rows_seen += last - first;
            next = last;
        }
        if (chunk_rows_seen == 0) {
            fprintf(stderr, "  rows %d: chunk %d of %d is empty\n", rows, chunk, plan.chunks);
            return 0;
        }
    }
    if (next != rows) fprintf(stderr, "  rows %d: the pieces end at %lld\n", rows, next);
    return next == rows;
}

static void check_column_plan(int rows, int cols) {
    column_sum_plan plan = column_sum_plan_for(rows, cols);
    CHECK(plan.column_groups == (cols + 31) / 32);
    CHECK(plan.chunks >= 1 && plan.chunk_rows >= 1);
    CHECK((long long)plan.chunks * plan.chunk_rows >= rows);
    CHECK((long long)(plan.chunks - 1) * plan.chunk_rows < rows);
    CHECK(plan.chunks == 1 || plan.chunk_rows >= COLUMN_SUM_MIN_CHUNK_ROWS);
    /* Both outputs' partials fit the scratch; with one chunk there are none. */
    size_t partial_bytes = COLUMN_SUM_MAX_OUTPUTS * column_sum_partial_floats(plan, cols) * 4;
    CHECK(partial_bytes <= REDUCTION_PARTIAL_BYTES);
    CHECK((plan.chunks == 1) == (column_sum_partial_floats(plan, cols) == 0));
    /* The grid stays near its target: never more blocks than the target unless the columns
     * alone need more (then there is one chunk). */
    long long blocks = (long long)plan.column_groups * plan.chunks;
    CHECK(blocks <= COLUMN_SUM_TARGET_BLOCKS || plan.chunks == 1);
    CHECK(rows <= 0 || pieces_cover_rows(plan, rows));
}

static void check_column_plans(void) {
    int shapes[][2] = {{1, 1},       {5, 7},        {63, 32},       {64, 33},
                       {65, 768},    {70, 45},      {2100, 128},    {3000, 7},
                       {65536, 768}, {65536, 3072}, {1000003, 10},  {100, 40000},
                       {1 << 20, 1}, {INT_MAX, 32}, {INT_MAX, 1},   {INT_MAX - 1, 50257},
                       {17, 32768},  {4096, 32769}, {131072, 1024}, {1, 1 << 20}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_column_plan(shapes[i][0], shapes[i][1]);
    for (uint64_t i = 0; i < 2000; i++) { /* random shapes, small and large */
        int rows = 1 + (int)(rng_hash4(7, 1, i, 0) % (i % 2 ? 100000u : 3000u));
        int cols = 1 + (int)(rng_hash4(7, 2, i, 0) % (i % 3 ? 5000u : 70000u));
        check_column_plan(rows, cols);
    }
}

/* GPT-2 124M: width 768, 64 x 1024 tokens a micro-batch, vocabulary 50257. */
static void check_gpt2_grids(void) {
    column_sum_plan width = column_sum_plan_for(64 * 1024, 768);
    long long blocks = (long long)width.column_groups * width.chunks;
    printf("gpt2 bias/layernorm gradient (65536 x 768): %d column groups x %d chunks = %lld "
           "blocks of %d threads (before: 24 blocks)\n",
           width.column_groups, width.chunks, blocks, 32 * COLUMN_SUM_ROW_THREADS);
    CHECK(width.column_groups == 24);
    CHECK(blocks >= 900); /* several blocks per SM of any current GPU (an H100 has 132) */
    unsigned loss_blocks = reduction_blocks(64 * 1024, 8);
    printf("gpt2 softmax cross-entropy (65536 rows): %u blocks of 8 warps (before: 160)\n",
           loss_blocks);
    CHECK(loss_blocks == REDUCTION_MAX_PARTIALS);
    CHECK(reduction_blocks((size_t)124 << 20, 256) == REDUCTION_MAX_PARTIALS);
}

static void check_reduction_blocks(void) {
    CHECK(reduction_blocks(0, 8) == 0);
    CHECK(reduction_blocks(1, 8) == 1);
    CHECK(reduction_blocks(8, 8) == 1);
    CHECK(reduction_blocks(9, 8) == 2);
    CHECK(reduction_blocks((size_t)8 * REDUCTION_MAX_PARTIALS, 8) == REDUCTION_MAX_PARTIALS);
    CHECK(reduction_blocks(SIZE_MAX, 256) == REDUCTION_MAX_PARTIALS);
    /* Row sums' partials (doubles) fit the scratch too. */
    CHECK((size_t)REDUCTION_MAX_PARTIALS * sizeof(double) <= REDUCTION_PARTIAL_BYTES);
}

int main(void) {
    check_column_plans();
    check_gpt2_grids();
    check_reduction_blocks();
    return check_finish();
}
