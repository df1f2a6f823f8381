/* reduction_plan.h - how the CUDA kernels that add many values into few split their work:
 * grids that fill a GPU, a partial sum per block, and a second pass that adds the partials in
 * block order. Plain C, for the host and the device (nvcc), so that the CPU tests can check
 * the partitions without a GPU (tests/test_cuda_reduction_plan.c).
 *
 * Every choice here depends on the shapes alone, never on the GPU (its number of SMs) or on
 * timing: ranks given the same values add them in the same order and get the same bits. That
 * is what --clip-grad-norm needs (each rank computes the norm of the same all-reduced gradient
 * and must clip it by the same factor), and it makes loss sums reproducible from run to run.
 *
 * The partial sums live in the backend's reduction scratch (REDUCTION_PARTIAL_BYTES), taken
 * with the cuBLAS workspace in device_set_precision() and counted by the memory plan.
 */
#ifndef DDT_ENGINE_CUDA_REDUCTION_PLAN_H
#define DDT_ENGINE_CUDA_REDUCTION_PLAN_H

#include <stddef.h>

#ifdef __CUDACC__
#define REDUCTION_PLAN_FUNCTION static inline __host__ __device__
#else
#define REDUCTION_PLAN_FUNCTION static inline
#endif

enum {
    /* Row sums (losses, correct predictions: a warp per row) and element sums (sum of
     * squares, element-wise losses) use at most this many blocks of 256 threads, each leaving
     * one double. 4096 blocks are 32768 warps: four times what an H100 (132 SMs of 64 warps)
     * holds at once, so every SM stays busy to the end. */
    REDUCTION_MAX_PARTIALS = 4096,
    /* Column sums (a bias gradient; layer normalisation's gamma and beta gradients): blocks of
     * 32 columns x COLUMN_SUM_ROW_THREADS rows of threads, the rows split into chunks so that
     * there are about COLUMN_SUM_TARGET_BLOCKS blocks, each chunk at least
     * COLUMN_SUM_MIN_CHUNK_ROWS rows. GPT-2's width 768 gives 24 column groups x 42 chunks. */
    COLUMN_SUM_ROW_THREADS = 16,
    COLUMN_SUM_TARGET_BLOCKS = 1024,
    COLUMN_SUM_MIN_CHUNK_ROWS = 64,
    COLUMN_SUM_MAX_OUTPUTS = 2, /* layer normalisation sums dgamma and dbeta together */
    /* The embedding gradient sorts the ids of this many rows at a time (GPT-2's 1024 tokens x
     * micro-batch 64 in one group). */
    EMBEDDING_SORT_ROWS = 65536,
};

/* The partial sums' scratch: the larger of the row sums' doubles and the column sums' floats
 * (chunks x cols per output is at most COLUMN_SUM_TARGET_BLOCKS x 32: column_sum_plan_for()). */
#define COLUMN_SUM_PARTIAL_BYTES                                                                   \
    ((size_t)COLUMN_SUM_MAX_OUTPUTS * COLUMN_SUM_TARGET_BLOCKS * 32 * sizeof(float))
#define ROW_SUM_PARTIAL_BYTES ((size_t)REDUCTION_MAX_PARTIALS * sizeof(double))
#define REDUCTION_PARTIAL_BYTES                                                                    \
    (COLUMN_SUM_PARTIAL_BYTES > ROW_SUM_PARTIAL_BYTES ? COLUMN_SUM_PARTIAL_BYTES                   \
                                                      : ROW_SUM_PARTIAL_BYTES)

/* Blocks for `items` (rows or elements) at `items_per_block` per block: enough for one item
 * each, at most REDUCTION_MAX_PARTIALS (a grid-stride loop covers the rest); 0 for none. */
REDUCTION_PLAN_FUNCTION unsigned reduction_blocks(size_t items, size_t items_per_block) {
    size_t blocks = items / items_per_block + (items % items_per_block != 0);
    return (unsigned)(blocks < (size_t)REDUCTION_MAX_PARTIALS ? blocks
                                                              : (size_t)REDUCTION_MAX_PARTIALS);
}

/* A column sum over a rows x cols matrix: blockIdx.x picks 32 columns (of column_groups),
 * blockIdx.y a chunk of chunk_rows rows (of chunks; the last may be shorter, none is empty).
 * With one chunk the blocks add into the result directly; otherwise each leaves chunks x cols
 * partials per output, which a second pass adds in chunk order. */
typedef struct column_sum_plan {
    int column_groups;
    int chunks;
    int chunk_rows;
} column_sum_plan;

REDUCTION_PLAN_FUNCTION column_sum_plan column_sum_plan_for(int rows, int cols) {
    column_sum_plan plan;
    plan.column_groups = cols / 32 + (cols % 32 != 0);
    int chunks = plan.column_groups > 0 ? COLUMN_SUM_TARGET_BLOCKS / plan.column_groups : 1;
    int by_rows = rows / COLUMN_SUM_MIN_CHUNK_ROWS; /* chunks of at least that many rows */
    if (chunks > by_rows) chunks = by_rows;
    if (chunks < 1) chunks = 1;
    plan.chunk_rows = rows / chunks + (rows % chunks != 0);
    if (plan.chunk_rows < 1) plan.chunk_rows = 1;
    /* Fewer chunks where rounding chunk_rows up left the last ones empty. */
    plan.chunks = rows / plan.chunk_rows + (rows % plan.chunk_rows != 0);
    if (plan.chunks < 1) plan.chunks = 1;
    return plan;
}

/* Floats of partials one output of the plan takes (0 with a single chunk). */
REDUCTION_PLAN_FUNCTION size_t column_sum_partial_floats(column_sum_plan plan, int cols) {
    return plan.chunks > 1 ? (size_t)plan.chunks * (size_t)cols : 0;
}

/* Rows [*first, *last) of chunk `chunk` that thread row `thread_row` of a column-sum block adds,
 * in order: the chunk cut into COLUMN_SUM_ROW_THREADS contiguous pieces. */
REDUCTION_PLAN_FUNCTION void column_sum_thread_rows(column_sum_plan plan, int rows, int chunk,
                                                    int thread_row, int *first, int *last) {
    /* In long long: chunk_first + chunk_rows may pass INT_MAX when rows is near it. */
    long long chunk_first = (long long)chunk * plan.chunk_rows;
    long long chunk_last = chunk_first + plan.chunk_rows;
    if (chunk_last > rows) chunk_last = rows;
    long long span = chunk_last > chunk_first ? chunk_last - chunk_first : 0;
    long long per_thread = (span + COLUMN_SUM_ROW_THREADS - 1) / COLUMN_SUM_ROW_THREADS;
    long long begin = chunk_first + (long long)thread_row * per_thread;
    long long end = begin + per_thread;
    *first = (int)(begin < chunk_last ? begin : chunk_last);
    *last = (int)(end < chunk_last ? end : chunk_last);
}

#endif
