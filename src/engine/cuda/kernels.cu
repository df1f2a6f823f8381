/* kernels.cu - the CUDA backend's kernels: everything but the matrix products (cuBLAS).
 *
 * Each kernel computes what the CPU backend (src/engine/device_cpu.c) computes, in the same
 * order of operations where the order matters, so results agree to rounding; dropout masks
 * agree bit for bit because both sides run the hash in util/rng.h. Elementwise kernels use
 * grid-stride loops over size_t indices; row-wise kernels (losses, argmax) give one warp to a
 * row; reductions go through shared memory with one atomic per block, not per element.
 *
 * Loss sums and correct-prediction counts are added to a device float with atomicAdd, one per
 * block, in whatever order the blocks finish: GPU loss sums are therefore not bitwise
 * reproducible from run to run (counts are: they are small integers, exact in a float).
 * Gradients are: no kernel here adds floats in a data-dependent order.
 */
#include "engine/cuda/kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "engine/optim_update.h"
#include "util/rng.h"

#define THREADS_PER_BLOCK 256
#define WARPS_PER_BLOCK (THREADS_PER_BLOCK / 32)
#define FULL_WARP 0xffffffffu
/* Grid-stride loops cover what these blocks do not; 65536 blocks of 256 threads fill any
 * current GPU many times over. */
#define MAX_BLOCKS ((size_t)1 << 16)
/* Kernels that add into one device float (losses, counts) use at most this many blocks, so
 * at most this many float atomics round the sum; it still gives every SM of an H100 a block. */
#define MAX_SUM_BLOCKS ((size_t)160)

#define GRID_STRIDE_LOOP(i, count)                                                                 \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count);                    \
         i += (size_t)gridDim.x * blockDim.x)

static const float INV_SQRT2 = 0.70710678118654752f;
static const float INV_SQRT_2PI = 0.39894228040143268f;

/* Blocks for `items` work items at `per_block` items per block, capped. */
static unsigned blocks_for(size_t items, size_t per_block) {
    size_t blocks = (items + per_block - 1) / per_block;
    return (unsigned)(blocks < MAX_BLOCKS ? blocks : MAX_BLOCKS);
}

/* --- reductions -------------------------------------------------------------------------- */

/* Butterfly reductions: every lane ends with the same, bitwise identical, result. */
static __device__ float warp_max(float value) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_xor_sync(FULL_WARP, value, offset);
        value = other > value ? other : value;
    }
    return value;
}

static __device__ float warp_sum_float(float value) {
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(FULL_WARP, value, offset);
    return value;
}

static __device__ double warp_sum_double(double value) {
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(FULL_WARP, value, offset);
    return value;
}

/* Sum of `value` over the block, valid in thread 0. Every thread of the block must call it,
 * once per kernel (it uses one shared array). */
static __device__ double block_sum_double(double value) {
    __shared__ double warp_sums[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    value = warp_sum_double(value);
    if (lane == 0) warp_sums[warp] = value;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    value = threadIdx.x < (unsigned)warps ? warp_sums[threadIdx.x] : 0.0;
    if (warp == 0) value = warp_sum_double(value);
    return value;
}

/* --- matrix helpers ---------------------------------------------------------------------- */

static __global__ void gemm_empty_kernel(int m, int n, float beta, float *c, int ldc) {
    size_t count = (size_t)m * n;
    GRID_STRIDE_LOOP(i, count) {
        size_t row = i / (size_t)n, column = i - row * (size_t)n;
        float *element = c + row * (size_t)ldc + column;
        *element = beta == 0.0f ? 0.0f : beta * *element;
    }
}

extern "C" cudaError_t kernels_gemm_empty(cudaStream_t stream, int m, int n, float beta, float *c,
                                          int ldc) {
    if (m <= 0 || n <= 0) return cudaSuccess;
    size_t count = (size_t)m * n;
    gemm_empty_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        m, n, beta, c, ldc);
    return cudaGetLastError();
}

static __device__ __nv_bfloat16 round_to(float x, __nv_bfloat16 *) {
    return __float2bfloat16_rn(x);
}

static __device__ __half round_to(float x, __half *) {
    return __float2half_rn(x);
}

template <typename T>
static __global__ void cast_kernel(int rows, int cols, const float *__restrict__ src, int ld,
                                   T *__restrict__ dst) {
    size_t count = (size_t)rows * cols;
    GRID_STRIDE_LOOP(i, count) {
        size_t row = i / (size_t)cols, column = i - row * (size_t)cols;
        dst[i] = round_to(src[row * (size_t)ld + column], (T *)nullptr);
    }
}

extern "C" cudaError_t kernels_cast_bf16(cudaStream_t stream, int rows, int cols, const float *src,
                                         int ld, void *dst) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols;
    cast_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, src, ld, (__nv_bfloat16 *)dst);
    return cudaGetLastError();
}

extern "C" cudaError_t kernels_cast_fp16(cudaStream_t stream, int rows, int cols, const float *src,
                                         int ld, void *dst) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols;
    cast_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, src, ld, (__half *)dst);
    return cudaGetLastError();
}

/* --- bias and scale ---------------------------------------------------------------------- */

static __global__ void bias_add_kernel(int rows, int cols, float *__restrict__ y,
                                       const float *__restrict__ bias) {
    size_t count = (size_t)rows * cols;
    GRID_STRIDE_LOOP(i, count) {
        y[i] += bias[i % (size_t)cols];
    }
}

extern "C" cudaError_t kernels_bias_add(cudaStream_t stream, int rows, int cols, float *y,
                                        const float *bias) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols;
    bias_add_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, y, bias);
    return cudaGetLastError();
}

/* Column sums: a block owns 32 adjacent columns (one per lane, so each warp reads 128
 * contiguous bytes of a row) and its BIAS_ROW_THREADS rows of threads stride down the rows;
 * the partial sums meet in shared memory. Each column is written by exactly one thread, so
 * there are no atomics and the result does not depend on scheduling. */
#define BIAS_ROW_THREADS 16

static __global__ void bias_gradient_kernel(int rows, int cols, const float *__restrict__ dy,
                                            float *__restrict__ bias_gradient) {
    __shared__ float partial[BIAS_ROW_THREADS][33];
    int column = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (column < cols)
        for (int row = threadIdx.y; row < rows; row += BIAS_ROW_THREADS)
            sum += dy[(size_t)row * cols + column];
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && column < cols) {
        float total = 0.0f;
        for (int j = 0; j < BIAS_ROW_THREADS; j++)
            total += partial[j][threadIdx.x];
        bias_gradient[column] += total;
    }
}

extern "C" cudaError_t kernels_bias_gradient_accumulate(cudaStream_t stream, int rows, int cols,
                                                        const float *dy, float *bias_gradient) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    dim3 block(32, BIAS_ROW_THREADS);
    unsigned blocks = (unsigned)((cols + 31) / 32);
    bias_gradient_kernel<<<blocks, block, 0, stream>>>(rows, cols, dy, bias_gradient);
    return cudaGetLastError();
}

static __global__ void scale_kernel(size_t count, float alpha, float *x) {
    GRID_STRIDE_LOOP(i, count) {
        x[i] *= alpha;
    }
}

extern "C" cudaError_t kernels_scale(cudaStream_t stream, size_t count, float alpha, float *x) {
    if (count == 0) return cudaSuccess;
    scale_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(count,
                                                                                         alpha, x);
    return cudaGetLastError();
}

/* --- activations ------------------------------------------------------------------------- */

template <activation_kind KIND>
static __global__ void activation_forward_kernel(size_t count, const float *__restrict__ x,
                                                 float *__restrict__ y) {
    GRID_STRIDE_LOOP(i, count) {
        float v = x[i];
        switch (KIND) {
        case ACTIVATION_RELU:
            y[i] = v < 0.0f ? 0.0f : v; /* lets NaN through, as the CPU backend does */
            break;
        case ACTIVATION_GELU:
            y[i] = 0.5f * v * (1.0f + erff(v * INV_SQRT2));
            break;
        case ACTIVATION_TANH:
            y[i] = tanhf(v);
            break;
        case ACTIVATION_SIGMOID: {
            float e = expf(-fabsf(v)); /* exp of a non-positive number: no overflow */
            y[i] = v >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            break;
        }
        }
    }
}

template <activation_kind KIND>
static __global__ void
activation_backward_kernel(size_t count, const float *__restrict__ x, const float *__restrict__ y,
                           const float *__restrict__ dy, float *__restrict__ dx) {
    GRID_STRIDE_LOOP(i, count) {
        switch (KIND) {
        case ACTIVATION_RELU:
            dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
            break;
        case ACTIVATION_GELU: {
            /* d/dx [x * Phi(x)] = Phi(x) + x * phi(x). */
            float v = x[i];
            float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
            float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
            dx[i] = dy[i] * (cdf + v * pdf);
            break;
        }
        case ACTIVATION_TANH:
            dx[i] = dy[i] * (1.0f - y[i] * y[i]);
            break;
        case ACTIVATION_SIGMOID:
            dx[i] = dy[i] * y[i] * (1.0f - y[i]);
            break;
        }
    }
}

#define LAUNCH_ACTIVATION(kernel, kind, count, stream, ...)                                        \
    kernel<kind><<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(          \
        count, __VA_ARGS__)

extern "C" cudaError_t kernels_activation_forward(cudaStream_t stream, activation_kind kind,
                                                  size_t count, const float *x, float *y) {
    if (count == 0) return cudaSuccess;
    switch (kind) {
    case ACTIVATION_RELU:
        LAUNCH_ACTIVATION(activation_forward_kernel, ACTIVATION_RELU, count, stream, x, y);
        break;
    case ACTIVATION_GELU:
        LAUNCH_ACTIVATION(activation_forward_kernel, ACTIVATION_GELU, count, stream, x, y);
        break;
    case ACTIVATION_TANH:
        LAUNCH_ACTIVATION(activation_forward_kernel, ACTIVATION_TANH, count, stream, x, y);
        break;
    case ACTIVATION_SIGMOID:
        LAUNCH_ACTIVATION(activation_forward_kernel, ACTIVATION_SIGMOID, count, stream, x, y);
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t kernels_activation_backward(cudaStream_t stream, activation_kind kind,
                                                   size_t count, const float *x, const float *y,
                                                   const float *dy, float *dx) {
    if (count == 0) return cudaSuccess;
    switch (kind) {
    case ACTIVATION_RELU:
        LAUNCH_ACTIVATION(activation_backward_kernel, ACTIVATION_RELU, count, stream, x, y, dy, dx);
        break;
    case ACTIVATION_GELU:
        LAUNCH_ACTIVATION(activation_backward_kernel, ACTIVATION_GELU, count, stream, x, y, dy, dx);
        break;
    case ACTIVATION_TANH:
        LAUNCH_ACTIVATION(activation_backward_kernel, ACTIVATION_TANH, count, stream, x, y, dy, dx);
        break;
    case ACTIVATION_SIGMOID:
        LAUNCH_ACTIVATION(activation_backward_kernel, ACTIVATION_SIGMOID, count, stream, x, y, dy,
                          dx);
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

/* --- dropout ----------------------------------------------------------------------------- */

static __global__ void dropout_kernel(int rows, int cols, float rate, float keep_scale,
                                      dropout_key key, const int64_t *__restrict__ row_ids,
                                      const float *__restrict__ in, float *__restrict__ out) {
    size_t count = (size_t)rows * cols;
    GRID_STRIDE_LOOP(i, count) {
        size_t row = i / (size_t)cols, column = i - row * (size_t)cols;
        /* The formula of device.h, term for term as device_cpu.c's dropout_keeps(). */
        uint64_t unit = (uint64_t)row_ids[row] * (uint64_t)cols + (uint64_t)column;
        uint64_t index = ((uint64_t)key.layer << 40) ^ unit;
        bool keep = rng_uniform(rng_hash4(key.seed, RNG_PURPOSE_DROPOUT, (uint64_t)key.step,
                                          index)) >= rate;
        out[i] = keep ? in[i] * keep_scale : 0.0f; /* one rounding, as on the CPU */
    }
}

extern "C" cudaError_t kernels_dropout(cudaStream_t stream, int rows, int cols, float rate,
                                       float keep_scale, dropout_key key, const int64_t *row_ids,
                                       const float *in, float *out) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols;
    dropout_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, rate, keep_scale, key, row_ids, in, out);
    return cudaGetLastError();
}

/* --- losses ------------------------------------------------------------------------------ */

/* Target of element i = (row, column): a float target, or from a class id (one-hot, or the
 * id itself for a single-column output). */
static __device__ float loss_target(size_t i, size_t row, size_t column, int cols,
                                    const int32_t *labels, const float *targets) {
    if (targets) return targets[i];
    if (cols == 1) return (float)labels[row];
    return (size_t)labels[row] == column ? 1.0f : 0.0f;
}

/* One warp per row; lane 0 keeps the warp's running loss in double, as the CPU does. */
static __global__ void softmax_cross_entropy_kernel(int rows, int cols,
                                                    const float *__restrict__ logits,
                                                    const int32_t *__restrict__ labels,
                                                    const float *__restrict__ targets, float scale,
                                                    float *loss_sum, float *__restrict__ dlogits) {
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int warps = (int)((gridDim.x * blockDim.x) >> 5);
    double total = 0.0;
    for (int row = warp; row < rows; row += warps) {
        const float *x = logits + (size_t)row * cols;
        float *d = dlogits ? dlogits + (size_t)row * cols : NULL;
        float max = -INFINITY;
        for (int c = lane; c < cols; c += 32)
            max = x[c] > max ? x[c] : max;
        max = warp_max(max);
        /* Subtracting the max keeps exp() in (0, 1]; the exps wait in dlogits if given (each
         * lane rereads only what it wrote). */
        float sum = 0.0f;
        for (int c = lane; c < cols; c += 32) {
            float e = expf(x[c] - max);
            if (d) d[c] = e;
            sum += e;
        }
        sum = warp_sum_float(sum);
        double log_sum_exp = log((double)sum) + (double)max;
        if (labels) {
            int label = labels[row];
            if (lane == 0)
                total += label >= 0 && label < cols ? log_sum_exp - (double)x[label] : (double)NAN;
            if (d) {
                float factor = scale / sum;
                for (int c = lane; c < cols; c += 32) {
                    float gradient = d[c] * factor;
                    d[c] = c == label ? gradient - scale : gradient;
                }
            }
        } else {
            /* -sum t log p = (sum t) * logsumexp - sum t x; gradient (sum t) * p - t. */
            const float *t = targets + (size_t)row * cols;
            double target_sum = 0.0, target_dot = 0.0;
            for (int c = lane; c < cols; c += 32) {
                target_sum += t[c];
                target_dot += (double)t[c] * x[c];
            }
            target_sum = warp_sum_double(target_sum);
            target_dot = warp_sum_double(target_dot);
            if (lane == 0) total += target_sum * log_sum_exp - target_dot;
            if (d) {
                float factor = (float)(scale * target_sum / sum);
                for (int c = lane; c < cols; c += 32)
                    d[c] = d[c] * factor - scale * t[c];
            }
        }
    }
    double block_total = block_sum_double(total);
    /* Not bitwise reproducible: blocks add in the order they finish (see the file comment). */
    if (threadIdx.x == 0 && block_total != 0.0) atomicAdd(loss_sum, (float)(block_total * scale));
}

static unsigned row_blocks(int rows) {
    unsigned blocks = blocks_for((size_t)rows, WARPS_PER_BLOCK);
    return blocks < MAX_SUM_BLOCKS ? blocks : (unsigned)MAX_SUM_BLOCKS;
}

static unsigned sum_blocks(size_t count) {
    unsigned blocks = blocks_for(count, THREADS_PER_BLOCK);
    return blocks < MAX_SUM_BLOCKS ? blocks : (unsigned)MAX_SUM_BLOCKS;
}

extern "C" cudaError_t kernels_softmax_cross_entropy(cudaStream_t stream, int rows, int cols,
                                                     const float *logits, const int32_t *labels,
                                                     const float *targets, float scale,
                                                     float *loss_sum, float *dlogits) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    softmax_cross_entropy_kernel<<<row_blocks(rows), THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, logits, labels, targets, scale, loss_sum, dlogits);
    return cudaGetLastError();
}

static __global__ void binary_cross_entropy_kernel(int rows, int cols,
                                                   const float *__restrict__ logits,
                                                   const int32_t *__restrict__ labels,
                                                   const float *__restrict__ targets, float scale,
                                                   float *loss_sum, float *__restrict__ dlogits) {
    size_t count = (size_t)rows * cols;
    double total = 0.0;
    GRID_STRIDE_LOOP(i, count) {
        size_t row = i / (size_t)cols, column = i - row * (size_t)cols;
        float x = logits[i];
        float t = loss_target(i, row, column, cols, labels, targets);
        /* -t log s(x) - (1-t) log(1-s(x)) = max(x,0) - x t + log(1 + exp(-|x|)). */
        float e = expf(-fabsf(x));
        total += (double)(x > 0.0f ? x : 0.0f) - (double)x * t + log1p((double)e);
        if (dlogits) {
            float sigmoid = x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            dlogits[i] = scale * (sigmoid - t);
        }
    }
    double block_total = block_sum_double(total);
    if (threadIdx.x == 0 && block_total != 0.0) atomicAdd(loss_sum, (float)(block_total * scale));
}

extern "C" cudaError_t kernels_binary_cross_entropy(cudaStream_t stream, int rows, int cols,
                                                    const float *logits, const int32_t *labels,
                                                    const float *targets, float scale,
                                                    float *loss_sum, float *dlogits) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols;
    binary_cross_entropy_kernel<<<sum_blocks(count), THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, logits, labels, targets, scale, loss_sum, dlogits);
    return cudaGetLastError();
}

static __global__ void mean_squared_error_kernel(int rows, int cols,
                                                 const float *__restrict__ logits,
                                                 const int32_t *__restrict__ labels,
                                                 const float *__restrict__ targets, float scale,
                                                 float gradient_factor, float *loss_sum,
                                                 float *__restrict__ dlogits) {
    size_t count = (size_t)rows * cols;
    double total = 0.0;
    GRID_STRIDE_LOOP(i, count) {
        size_t row = i / (size_t)cols, column = i - row * (size_t)cols;
        float difference = logits[i] - loss_target(i, row, column, cols, labels, targets);
        total += (double)difference * difference;
        if (dlogits) dlogits[i] = gradient_factor * difference;
    }
    double block_total = block_sum_double(total);
    if (threadIdx.x == 0 && block_total != 0.0)
        atomicAdd(loss_sum, (float)(block_total * scale / cols));
}

extern "C" cudaError_t kernels_mean_squared_error(cudaStream_t stream, int rows, int cols,
                                                  const float *logits, const int32_t *labels,
                                                  const float *targets, float scale,
                                                  float *loss_sum, float *dlogits) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols;
    float gradient_factor = 2.0f * scale / (float)cols;
    mean_squared_error_kernel<<<sum_blocks(count), THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, logits, labels, targets, scale, gradient_factor, loss_sum, dlogits);
    return cudaGetLastError();
}

/* The CPU's argmax: the first index of the largest value, where a NaN is never chosen unless
 * it sits at index 0 (then index 0 wins, since nothing compares greater than NaN). Each lane
 * scans its columns in order, then lanes merge by (larger value, then smaller index). */
static __global__ void count_correct_kernel(int rows, int cols, const float *__restrict__ logits,
                                            const int32_t *__restrict__ labels, float *correct) {
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int warps = (int)((gridDim.x * blockDim.x) >> 5);
    double hits = 0.0;
    for (int row = warp; row < rows; row += warps) {
        const float *x = logits + (size_t)row * cols;
        int predicted;
        if (cols == 1) {
            predicted = x[0] > 0.0f;
        } else {
            float best = 0.0f;
            int best_index = -1; /* none yet */
            for (int c = lane; c < cols; c += 32) {
                float v = x[c];
                if (!isnan(v) && (best_index < 0 || v > best)) {
                    best = v;
                    best_index = c;
                }
            }
            for (int offset = 16; offset > 0; offset >>= 1) {
                float other = __shfl_xor_sync(FULL_WARP, best, offset);
                int other_index = __shfl_xor_sync(FULL_WARP, best_index, offset);
                bool take = other_index >= 0 && (best_index < 0 || other > best ||
                                                 (other == best && other_index < best_index));
                if (take) {
                    best = other;
                    best_index = other_index;
                }
            }
            predicted = isnan(x[0]) ? 0 : best_index;
        }
        if (lane == 0 && predicted == labels[row]) hits += 1.0;
    }
    double block_hits = block_sum_double(hits);
    if (threadIdx.x == 0 && block_hits != 0.0) atomicAdd(correct, (float)block_hits);
}

extern "C" cudaError_t kernels_count_correct(cudaStream_t stream, int rows, int cols,
                                             const float *logits, const int32_t *labels,
                                             float *correct) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    count_correct_kernel<<<row_blocks(rows), THREADS_PER_BLOCK, 0, stream>>>(rows, cols, logits,
                                                                             labels, correct);
    return cudaGetLastError();
}

/* --- optimizers -------------------------------------------------------------------------- */

/* The per-element arithmetic is engine/optim_update.h's, shared with device_cpu.c: every
 * product and sum is rounded on its own (no fused multiply-add), in the CPU's order, so the
 * GPU's updates equal the CPU's bit for bit. */
static __global__ void sgd_kernel(size_t count, float *__restrict__ params,
                                  const float *__restrict__ grads, float *__restrict__ velocity,
                                  float lr, float momentum, float gradient_weight,
                                  float velocity_weight, float weight_decay, bool first_step) {
    GRID_STRIDE_LOOP(i, count) {
        float unused = 0.0f;
        sgd_update_element(grads[i], &params[i], momentum == 0.0f ? &unused : &velocity[i], lr,
                           momentum, gradient_weight, velocity_weight, weight_decay, first_step);
    }
}

extern "C" cudaError_t kernels_sgd_update(cudaStream_t stream, size_t count, float *params,
                                          const float *grads, float *velocity, float lr,
                                          float momentum, bool nesterov, float weight_decay,
                                          bool first_step) {
    if (count == 0) return cudaSuccess;
    float gradient_weight = nesterov ? 1.0f : 0.0f;
    float velocity_weight = nesterov ? momentum : 1.0f;
    sgd_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        count, params, grads, velocity, lr, momentum, gradient_weight, velocity_weight,
        weight_decay, first_step);
    return cudaGetLastError();
}

static __global__ void adamw_kernel(size_t count, float *__restrict__ params,
                                    const float *__restrict__ grads, float *__restrict__ m,
                                    float *__restrict__ v, adamw_scalars scalars) {
    GRID_STRIDE_LOOP(i, count) {
        adamw_update_element(&scalars, grads[i], &params[i], &m[i], &v[i]);
    }
}

extern "C" cudaError_t kernels_adamw_update(cudaStream_t stream, size_t count, float *params,
                                            const float *grads, float *m, float *v,
                                            const adamw_scalars *scalars) {
    if (count == 0) return cudaSuccess;
    adamw_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        count, params, grads, m, v, *scalars);
    return cudaGetLastError();
}

/* --- checks ------------------------------------------------------------------------------ */

static __global__ void find_nonfinite_kernel(size_t count, const float *__restrict__ x, int *flag) {
    int bad = 0;
    GRID_STRIDE_LOOP(i, count) {
        bad |= (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u;
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

extern "C" cudaError_t kernels_find_nonfinite(cudaStream_t stream, size_t count, const float *x,
                                              int *flag) {
    if (count == 0) return cudaSuccess;
    find_nonfinite_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        count, x, flag);
    return cudaGetLastError();
}

/* One double atomic per block (at most MAX_SUM_BLOCKS): the order of those additions varies
 * from run to run, which moves the gradient norm in its last bits only. */
static __global__ void sum_of_squares_kernel(size_t count, const float *__restrict__ x,
                                             double *sum) {
    double total = 0.0;
    GRID_STRIDE_LOOP(i, count) {
        double value = x[i];
        total += value * value;
    }
    double block_total = block_sum_double(total);
    if (threadIdx.x == 0 && block_total != 0.0) atomicAdd(sum, block_total);
}

extern "C" cudaError_t kernels_sum_of_squares(cudaStream_t stream, size_t count, const float *x,
                                              double *sum) {
    if (count == 0) return cudaSuccess;
    unsigned blocks = blocks_for(count, THREADS_PER_BLOCK);
    if (blocks > MAX_SUM_BLOCKS) blocks = (unsigned)MAX_SUM_BLOCKS;
    sum_of_squares_kernel<<<blocks, THREADS_PER_BLOCK, 0, stream>>>(count, x, sum);
    return cudaGetLastError();
}
