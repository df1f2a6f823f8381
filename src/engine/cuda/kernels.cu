/* kernels.cu - the CUDA backend's kernels: everything but the matrix products (cuBLAS).
 *
 * Each kernel computes what the CPU backend (src/engine/device_cpu.c) computes, in the same
 * order of operations where the order matters, so results agree to rounding; dropout masks
 * agree bit for bit because both sides run the hash in util/rng.h. Elementwise kernels use
 * grid-stride loops over size_t indices; row-wise kernels (losses, argmax) give one warp to a
 * row. Nothing here adds floats with atomics or in an order that depends on scheduling: sums
 * over many values leave one partial per block in the scratch, and a second pass adds the
 * partials in block order (engine/cuda/reduction_plan.h sizes the grids, from the shapes
 * alone). So every result is the same bit for bit from run to run and from rank to rank:
 * gradients, loss sums, counts, and the sum of squares that --clip-grad-norm turns into a
 * factor each rank computes for itself.
 */
#include "engine/cuda/kernels.h"

#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "engine/cuda/reduction_plan.h"
#include "engine/optim_update.h"
#include "util/rng.h"

#define THREADS_PER_BLOCK 256
#define WARPS_PER_BLOCK (THREADS_PER_BLOCK / 32)
#define FULL_WARP 0xffffffffu
/* Grid-stride loops cover what these blocks do not; 65536 blocks of 256 threads fill any
 * current GPU many times over. */
#define MAX_BLOCKS ((size_t)1 << 16)

#define GRID_STRIDE_LOOP(i, count)                                                                 \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count);                    \
         i += (size_t)gridDim.x * blockDim.x)

static const float INV_SQRT2 = 0.70710678118654752f;
static const float INV_SQRT_2PI = 0.39894228040143268f;
static const float GELU_TANH_SCALE = 0.79788456080286536f; /* sqrt(2/pi), as device_cpu.c */
static const float GELU_TANH_CUBIC = 0.044715f;

/* Rounded operations that nvcc never fuses into a multiply-add: where a formula is spelled with
 * these, it rounds step by step as device_cpu.c's (built with -ffp-contract=off) does. */
#define RN_MUL(a, b) __fmul_rn((a), (b))
#define RN_ADD(a, b) __fadd_rn((a), (b))
#define RN_SUB(a, b) __fsub_rn((a), (b))

/* GELU's tanh form: u = sqrt(2/pi) (x + 0.044715 x^3), in device_cpu.c's order. */
static __device__ float gelu_tanh_inner(float x) {
    float cube = RN_MUL(RN_MUL(RN_MUL(GELU_TANH_CUBIC, x), x), x);
    return RN_MUL(GELU_TANH_SCALE, RN_ADD(x, cube));
}

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

/* The second pass of a row or element sum: one block adds the first pass's `count` partials
 * (one per block of it, in the scratch) in a fixed order (each thread its strided share in
 * index order, then the block's fixed tree), and adds total * scale / divisor to *out_float
 * (rounded once) or to *out_double. */
static __global__ void add_row_partials_kernel(unsigned count, const double *__restrict__ partials,
                                               double scale, double divisor, float *out_float,
                                               double *out_double) {
    double sum = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x)
        sum += partials[i];
    double total = block_sum_double(sum);
    if (threadIdx.x == 0) {
        if (out_float) *out_float += (float)(total * scale / divisor);
        if (out_double) *out_double += total * scale / divisor;
    }
}

static cudaError_t add_row_partials(cudaStream_t stream, unsigned count, const double *partials,
                                    double scale, double divisor, float *out_float,
                                    double *out_double) {
    cudaError_t error = cudaGetLastError(); /* the first pass's launch */
    if (error != cudaSuccess) return error;
    add_row_partials_kernel<<<1, THREADS_PER_BLOCK, 0, stream>>>(count, partials, scale, divisor,
                                                                 out_float, out_double);
    return cudaGetLastError();
}

/* --- matrix helpers ---------------------------------------------------------------------- */

/* Batch entry b of a strided batch starts `stride` floats after entry b - 1. */
static __global__ void gemm_empty_kernel(int batch, int m, int n, float beta, float *c, int ldc,
                                         int64_t stride_c) {
    size_t per_entry = (size_t)m * n, count = per_entry * (size_t)batch;
    GRID_STRIDE_LOOP(i, count) {
        size_t entry = i / per_entry, rest = i - entry * per_entry;
        size_t row = rest / (size_t)n, column = rest - row * (size_t)n;
        float *element = c + (int64_t)entry * stride_c + row * (size_t)ldc + column;
        *element = beta == 0.0f ? 0.0f : beta * *element;
    }
}

extern "C" cudaError_t kernels_gemm_empty(cudaStream_t stream, int m, int n, float beta, float *c,
                                          int ldc) {
    return kernels_gemm_empty_batched(stream, 1, m, n, beta, c, ldc, 0);
}

extern "C" cudaError_t kernels_gemm_empty_batched(cudaStream_t stream, int batch, int m, int n,
                                                  float beta, float *c, int ldc, int64_t stride_c) {
    if (batch <= 0 || m <= 0 || n <= 0) return cudaSuccess;
    size_t count = (size_t)m * n * (size_t)batch;
    gemm_empty_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        batch, m, n, beta, c, ldc, stride_c);
    return cudaGetLastError();
}

static __device__ __nv_bfloat16 round_to(float x, __nv_bfloat16 *) {
    return __float2bfloat16_rn(x);
}

static __device__ __half round_to(float x, __half *) {
    return __float2half_rn(x);
}

/* Entry b of the batch: src + b * stride (rows x cols, leading dimension ld) into the packed
 * dst + b * rows * cols. */
template <typename T>
static __global__ void cast_kernel(int batch, int rows, int cols, const float *__restrict__ src,
                                   int ld, int64_t stride, T *__restrict__ dst) {
    size_t per_entry = (size_t)rows * cols, count = per_entry * (size_t)batch;
    GRID_STRIDE_LOOP(i, count) {
        size_t entry = i / per_entry, rest = i - entry * per_entry;
        size_t row = rest / (size_t)cols, column = rest - row * (size_t)cols;
        dst[i] = round_to(src[(int64_t)entry * stride + row * (size_t)ld + column], (T *)nullptr);
    }
}

extern "C" cudaError_t kernels_cast_bf16(cudaStream_t stream, int rows, int cols, const float *src,
                                         int ld, void *dst) {
    return kernels_cast_bf16_batched(stream, 1, rows, cols, src, ld, 0, dst);
}

extern "C" cudaError_t kernels_cast_fp16(cudaStream_t stream, int rows, int cols, const float *src,
                                         int ld, void *dst) {
    return kernels_cast_fp16_batched(stream, 1, rows, cols, src, ld, 0, dst);
}

extern "C" cudaError_t kernels_cast_bf16_batched(cudaStream_t stream, int batch, int rows, int cols,
                                                 const float *src, int ld, int64_t stride,
                                                 void *dst) {
    if (batch <= 0 || rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols * (size_t)batch;
    cast_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        batch, rows, cols, src, ld, stride, (__nv_bfloat16 *)dst);
    return cudaGetLastError();
}

extern "C" cudaError_t kernels_cast_fp16_batched(cudaStream_t stream, int batch, int rows, int cols,
                                                 const float *src, int ld, int64_t stride,
                                                 void *dst) {
    if (batch <= 0 || rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols * (size_t)batch;
    cast_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        batch, rows, cols, src, ld, stride, (__half *)dst);
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

/* Column sums (bias gradients here; layer normalisation's dgamma and dbeta below): a block
 * owns 32 adjacent columns (a lane each, so a warp reads 128 contiguous bytes of a row) and
 * one chunk of rows (column_sum_plan_for()); its COLUMN_SUM_ROW_THREADS rows of threads each
 * add a contiguous piece of the chunk in increasing row order, and the pieces meet in shared
 * memory in piece order. With one chunk the block adds its sums into the result; otherwise it
 * leaves them in the scratch (output o, chunk c, column j at (o * chunks + c) * cols + j) and
 * add_column_partials_kernel adds them in chunk order. No atomics: the order is fixed by the
 * shapes. The layer-normalisation form adds dy * xhat (output 0, dgamma) and dy (output 1,
 * dbeta); the bias form adds dy (output 0). */
/* What a column sum adds per element: dy (a bias gradient); dy * xhat and dy (layer
 * normalisation's dgamma and dbeta, xhat = (x - mean) * rstd); dy * xhat (RMS normalisation's
 * dgamma, xhat = x * rstd). */
enum column_sum_kind { COLUMN_SUM_BIAS, COLUMN_SUM_LAYERNORM, COLUMN_SUM_RMSNORM };

template <column_sum_kind KIND>
static __global__ void column_sums_kernel(column_sum_plan plan, int rows, int cols,
                                          const float *__restrict__ x, const float *__restrict__ dy,
                                          const float *__restrict__ mean,
                                          const float *__restrict__ rstd, float *out0, float *out1,
                                          float *__restrict__ partials) {
    __shared__ float piece[COLUMN_SUM_MAX_OUTPUTS][COLUMN_SUM_ROW_THREADS][33];
    int column = (int)blockIdx.x * 32 + (int)threadIdx.x;
    int chunk = (int)blockIdx.y;
    int first = 0, last = 0;
    column_sum_thread_rows(plan, rows, chunk, (int)threadIdx.y, &first, &last);
    float sum0 = 0.0f, sum1 = 0.0f;
    if (column < cols)
        for (int row = first; row < last; row++) {
            size_t at = (size_t)row * cols + column;
            if (KIND == COLUMN_SUM_LAYERNORM) {
                float xhat = RN_MUL(RN_SUB(x[at], mean[row]), rstd[row]);
                sum0 = RN_ADD(sum0, RN_MUL(dy[at], xhat));
                sum1 = RN_ADD(sum1, dy[at]);
            } else if (KIND == COLUMN_SUM_RMSNORM) {
                sum0 = RN_ADD(sum0, RN_MUL(dy[at], RN_MUL(x[at], rstd[row])));
            } else {
                sum0 = RN_ADD(sum0, dy[at]);
            }
        }
    piece[0][threadIdx.y][threadIdx.x] = sum0;
    piece[1][threadIdx.y][threadIdx.x] = sum1;
    __syncthreads();
    if (threadIdx.y != 0 || column >= cols) return;
    float total0 = 0.0f, total1 = 0.0f;
    for (int j = 0; j < COLUMN_SUM_ROW_THREADS; j++) {
        total0 = RN_ADD(total0, piece[0][j][threadIdx.x]);
        total1 = RN_ADD(total1, piece[1][j][threadIdx.x]);
    }
    if (plan.chunks == 1) {
        out0[column] += total0;
        if (KIND == COLUMN_SUM_LAYERNORM) out1[column] += total1;
    } else {
        partials[(size_t)chunk * cols + column] = total0;
        if (KIND == COLUMN_SUM_LAYERNORM)
            partials[((size_t)plan.chunks + chunk) * cols + column] = total1;
    }
}

/* The second pass: a thread per (output, column) adds its chunks' partials in chunk order. */
static __global__ void add_column_partials_kernel(int chunks, int cols, int outputs,
                                                  const float *__restrict__ partials, float *out0,
                                                  float *out1) {
    size_t count = (size_t)outputs * cols;
    GRID_STRIDE_LOOP(i, count) {
        int output = (int)(i / (size_t)cols), column = (int)(i % (size_t)cols);
        const float *p = partials + (size_t)output * chunks * cols + column;
        float sum = 0.0f;
        for (int c = 0; c < chunks; c++)
            sum = RN_ADD(sum, p[(size_t)c * cols]);
        (output == 0 ? out0 : out1)[column] += sum;
    }
}

/* Both passes of a column sum (x, mean and rstd are read where KIND uses them). */
template <column_sum_kind KIND>
static cudaError_t column_sums(cudaStream_t stream, const kernels_scratch *scratch, int rows,
                               int cols, const float *x, const float *dy, const float *mean,
                               const float *rstd, float *out0, float *out1) {
    column_sum_plan plan = column_sum_plan_for(rows, cols);
    int outputs = KIND == COLUMN_SUM_LAYERNORM ? 2 : 1;
    float *partials = NULL;
    if (plan.chunks > 1) {
        if (!scratch || !scratch->partials ||
            (size_t)outputs * column_sum_partial_floats(plan, cols) * sizeof(float) >
                REDUCTION_PARTIAL_BYTES)
            return cudaErrorInvalidValue;
        partials = (float *)scratch->partials;
    }
    dim3 grid((unsigned)plan.column_groups, (unsigned)plan.chunks);
    dim3 block(32, COLUMN_SUM_ROW_THREADS);
    column_sums_kernel<KIND>
        <<<grid, block, 0, stream>>>(plan, rows, cols, x, dy, mean, rstd, out0, out1, partials);
    cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess || plan.chunks == 1) return error;
    size_t count = (size_t)outputs * cols;
    add_column_partials_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                                 stream>>>(plan.chunks, cols, outputs, partials, out0, out1);
    return cudaGetLastError();
}

extern "C" cudaError_t kernels_bias_gradient_accumulate(cudaStream_t stream,
                                                        const kernels_scratch *scratch, int rows,
                                                        int cols, const float *dy,
                                                        float *bias_gradient) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    return column_sums<COLUMN_SUM_BIAS>(stream, scratch, rows, cols, NULL, dy, NULL, NULL,
                                        bias_gradient, NULL);
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
        case ACTIVATION_GELU_TANH:
            y[i] = RN_MUL(RN_MUL(0.5f, v), RN_ADD(1.0f, tanhf(gelu_tanh_inner(v))));
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
        case ACTIVATION_GELU_TANH: {
            /* (1 + tanh u)/2 + x/2 (1 - tanh^2 u) u', u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
            float v = x[i];
            float t = tanhf(gelu_tanh_inner(v));
            float slope = RN_MUL(GELU_TANH_SCALE,
                                 RN_ADD(1.0f, RN_MUL(RN_MUL(RN_MUL(3.0f, GELU_TANH_CUBIC), v), v)));
            float derivative =
                RN_ADD(RN_MUL(0.5f, RN_ADD(1.0f, t)),
                       RN_MUL(RN_MUL(RN_MUL(0.5f, v), RN_SUB(1.0f, RN_MUL(t, t))), slope));
            dx[i] = RN_MUL(dy[i], derivative);
            break;
        }
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
    case ACTIVATION_GELU_TANH:
        LAUNCH_ACTIVATION(activation_forward_kernel, ACTIVATION_GELU_TANH, count, stream, x, y);
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
    case ACTIVATION_GELU_TANH:
        LAUNCH_ACTIVATION(activation_backward_kernel, ACTIVATION_GELU_TANH, count, stream, x, y, dy,
                          dx);
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
                                                    double *__restrict__ partials,
                                                    float *__restrict__ dlogits) {
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
    if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

/* The scratch's row partials, or NULL where there is no scratch (the launcher then fails). */
static double *row_partials(const kernels_scratch *scratch) {
    return scratch ? (double *)scratch->partials : NULL;
}

/* Blocks of a warp-per-row kernel: a warp per row, up to REDUCTION_MAX_PARTIALS blocks. */
static unsigned row_sum_blocks(int rows) {
    return reduction_blocks((size_t)rows, WARPS_PER_BLOCK);
}

extern "C" cudaError_t kernels_softmax_cross_entropy(cudaStream_t stream,
                                                     const kernels_scratch *scratch, int rows,
                                                     int cols, const float *logits,
                                                     const int32_t *labels, const float *targets,
                                                     float scale, float *loss_sum, float *dlogits) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    double *partials = row_partials(scratch);
    if (!partials) return cudaErrorInvalidValue;
    unsigned blocks = row_sum_blocks(rows);
    softmax_cross_entropy_kernel<<<blocks, THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, logits, labels, targets, scale, partials, dlogits);
    return add_row_partials(stream, blocks, partials, scale, 1.0, loss_sum, NULL);
}

static __global__ void binary_cross_entropy_kernel(int rows, int cols,
                                                   const float *__restrict__ logits,
                                                   const int32_t *__restrict__ labels,
                                                   const float *__restrict__ targets, float scale,
                                                   double *__restrict__ partials,
                                                   float *__restrict__ dlogits) {
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
    if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

extern "C" cudaError_t kernels_binary_cross_entropy(cudaStream_t stream,
                                                    const kernels_scratch *scratch, int rows,
                                                    int cols, const float *logits,
                                                    const int32_t *labels, const float *targets,
                                                    float scale, float *loss_sum, float *dlogits) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    double *partials = row_partials(scratch);
    if (!partials) return cudaErrorInvalidValue;
    size_t count = (size_t)rows * cols;
    unsigned blocks = reduction_blocks(count, THREADS_PER_BLOCK);
    binary_cross_entropy_kernel<<<blocks, THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, logits, labels, targets, scale, partials, dlogits);
    return add_row_partials(stream, blocks, partials, scale, 1.0, loss_sum, NULL);
}

static __global__ void
mean_squared_error_kernel(int rows, int cols, const float *__restrict__ logits,
                          const int32_t *__restrict__ labels, const float *__restrict__ targets,
                          float scale, float gradient_factor, double *__restrict__ partials,
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
    if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

extern "C" cudaError_t kernels_mean_squared_error(cudaStream_t stream,
                                                  const kernels_scratch *scratch, int rows,
                                                  int cols, const float *logits,
                                                  const int32_t *labels, const float *targets,
                                                  float scale, float *loss_sum, float *dlogits) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    double *partials = row_partials(scratch);
    if (!partials) return cudaErrorInvalidValue;
    size_t count = (size_t)rows * cols;
    float gradient_factor = 2.0f * scale / (float)cols;
    unsigned blocks = reduction_blocks(count, THREADS_PER_BLOCK);
    mean_squared_error_kernel<<<blocks, THREADS_PER_BLOCK, 0, stream>>>(
        rows, cols, logits, labels, targets, scale, gradient_factor, partials, dlogits);
    return add_row_partials(stream, blocks, partials, scale, (double)cols, loss_sum, NULL);
}

/* The CPU's argmax: the first index of the largest value, where a NaN is never chosen unless
 * it sits at index 0 (then index 0 wins, since nothing compares greater than NaN). Each lane
 * scans its columns in order, then lanes merge by (larger value, then smaller index). */
static __global__ void count_correct_kernel(int rows, int cols, const float *__restrict__ logits,
                                            const int32_t *__restrict__ labels,
                                            double *__restrict__ partials) {
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
    if (threadIdx.x == 0) partials[blockIdx.x] = block_hits;
}

extern "C" cudaError_t kernels_count_correct(cudaStream_t stream, const kernels_scratch *scratch,
                                             int rows, int cols, const float *logits,
                                             const int32_t *labels, float *correct) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    double *partials = row_partials(scratch);
    if (!partials) return cudaErrorInvalidValue;
    unsigned blocks = row_sum_blocks(rows);
    count_correct_kernel<<<blocks, THREADS_PER_BLOCK, 0, stream>>>(rows, cols, logits, labels,
                                                                   partials);
    return add_row_partials(stream, blocks, partials, 1.0, 1.0, correct, NULL);
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

/* A partial per block in the scratch (the blocks and each thread's elements fixed by count
 * alone), then add_row_partials: the same bits on every rank that has the same gradient. */
static __global__ void sum_of_squares_kernel(size_t count, const float *__restrict__ x,
                                             double *__restrict__ partials) {
    double total = 0.0;
    GRID_STRIDE_LOOP(i, count) {
        double value = x[i];
        total += value * value;
    }
    double block_total = block_sum_double(total);
    if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

extern "C" cudaError_t kernels_sum_of_squares(cudaStream_t stream, const kernels_scratch *scratch,
                                              size_t count, const float *x, double *sum) {
    if (count == 0) return cudaSuccess;
    double *partials = row_partials(scratch);
    if (!partials) return cudaErrorInvalidValue;
    unsigned blocks = reduction_blocks(count, THREADS_PER_BLOCK);
    sum_of_squares_kernel<<<blocks, THREADS_PER_BLOCK, 0, stream>>>(count, x, partials);
    return add_row_partials(stream, blocks, partials, 1.0, 1.0, NULL, sum);
}

/* --- the layer engine's operations ------------------------------------------------------- */

/* Every operation below is deterministic: each output element is written by one thread, and
 * every sum runs in an order fixed by the shapes alone (a thread's own elements in order, then
 * warp butterflies and shared-memory partials combined in index order); no float atomics.
 * Gathers (add, permute, im2col, col2im, pooling, embeddings) add in device_cpu_layers.c's
 * order and so give its bits exactly; normalisation and softmax sums are grouped differently
 * from the CPU's sequential loops and agree with them to rounding. */

#define NORM_THREADS 512 /* a block per channel (batch normalisation) */

/* The sum of a and of b over the block, in every thread: warp butterflies, then the warps'
 * partials in warp order (each thread adds them itself, in the same order, so all agree).
 * Every thread of the block must call it; it may be called again in the same kernel. */
static __device__ double2 block_sum_pair(double a, double b) {
    __shared__ double2 partials[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a = warp_sum_double(a);
    b = warp_sum_double(b);
    if (lane == 0) partials[warp] = make_double2(a, b);
    __syncthreads();
    double2 total = make_double2(0.0, 0.0);
    int warps = (int)((blockDim.x + 31) >> 5);
    for (int w = 0; w < warps; w++) {
        total.x += partials[w].x;
        total.y += partials[w].y;
    }
    __syncthreads(); /* before the next call overwrites partials */
    return total;
}

static __global__ void add_kernel(size_t count, const float *a, const float *b, float *out) {
    GRID_STRIDE_LOOP(i, count) {
        out[i] = a[i] + b[i];
    }
}

extern "C" cudaError_t kernels_add(cudaStream_t stream, size_t count, const float *a,
                                   const float *b, float *out) {
    if (count == 0) return cudaSuccess;
    add_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(count, a, b,
                                                                                       out);
    return cudaGetLastError();
}

/* out's axes (outermost first) with the input stride of each: out[i] = in[sum of index_a *
 * stride[a]], where index_a are i's coordinates over size[]. */
typedef struct permute_walk {
    int rank;
    int64_t size[6];
    int64_t stride[6];
} permute_walk;

static __global__ void permute_kernel(size_t count, permute_walk walk, const float *__restrict__ in,
                                      float *__restrict__ out) {
    GRID_STRIDE_LOOP(i, count) {
        size_t rest = i;
        int64_t offset = 0;
        /* Unrolled with constant indices, so walk stays in parameter space (no local copy). */
#pragma unroll
        for (int a = 5; a >= 0; a--) {
            if (a >= walk.rank) continue;
            size_t size = (size_t)walk.size[a];
            size_t index = rest % size;
            rest /= size;
            offset += (int64_t)index * walk.stride[a];
        }
        out[i] = in[offset];
    }
}

extern "C" cudaError_t kernels_permute(cudaStream_t stream, int rank, const int *dims,
                                       const int *perm, const float *in, float *out) {
    if (rank < 1 || rank > 6) return cudaErrorInvalidValue;
    int64_t in_stride[6];
    int64_t stride = 1;
    for (int a = rank - 1; a >= 0; a--) {
        if (dims[a] < 0) return cudaErrorInvalidValue;
        in_stride[a] = stride;
        stride *= dims[a];
    }
    size_t count = (size_t)stride;
    unsigned seen = 0;
    for (int a = 0; a < rank; a++) {
        if (perm[a] < 0 || perm[a] >= rank || (seen >> perm[a]) & 1u) return cudaErrorInvalidValue;
        seen |= 1u << perm[a];
    }
    if (count == 0) return cudaSuccess;
    /* Fewer axes, less index arithmetic: drop axes of size 1, and merge an output axis into the
     * one before it where the input holds them contiguously too. The elements read are the same. */
    permute_walk walk;
    walk.rank = 0;
    for (int a = 0; a < rank; a++) {
        int64_t size = dims[perm[a]], from = in_stride[perm[a]];
        if (size == 1) continue;
        if (walk.rank > 0 && walk.stride[walk.rank - 1] == from * size) {
            walk.size[walk.rank - 1] *= size;
            walk.stride[walk.rank - 1] = from;
            continue;
        }
        walk.size[walk.rank] = size;
        walk.stride[walk.rank] = from;
        walk.rank++;
    }
    permute_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        count, walk, in, out);
    return cudaGetLastError();
}

/* One thread per element of cols: row (c, i, j), column (s, oh, ow). */
static __global__ void im2col_kernel(conv_geometry g, int samples, const float *__restrict__ x,
                                     float *__restrict__ cols) {
    size_t plane = (size_t)g.out_height * g.out_width;
    size_t columns = (size_t)samples * plane;
    size_t rows = (size_t)g.channels * g.kernel_h * g.kernel_w;
    GRID_STRIDE_LOOP(e, rows * columns) {
        size_t row = e / columns, column = e - row * columns;
        int j = (int)(row % (size_t)g.kernel_w);
        size_t rest = row / (size_t)g.kernel_w;
        int i = (int)(rest % (size_t)g.kernel_h);
        size_t c = rest / (size_t)g.kernel_h;
        size_t s = column / plane, position = column - s * plane;
        int oh = (int)(position / (size_t)g.out_width);
        int ow = (int)(position - (size_t)oh * g.out_width);
        int h = oh * g.stride_h - g.pad_h + i, w = ow * g.stride_w - g.pad_w + j;
        float value = 0.0f;
        if (h >= 0 && h < g.height && w >= 0 && w < g.width)
            value = x[((s * g.channels + c) * g.height + (size_t)h) * g.width + (size_t)w];
        cols[e] = value;
    }
}

extern "C" cudaError_t kernels_im2col(cudaStream_t stream, const conv_geometry *g, int samples,
                                      const float *x, float *cols) {
    size_t count = (size_t)g->channels * g->kernel_h * g->kernel_w * (size_t)samples *
                   g->out_height * g->out_width;
    if (samples <= 0 || count == 0) return cudaSuccess;
    im2col_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        *g, samples, x, cols);
    return cudaGetLastError();
}

/* A gather: one thread per element (s, c, h, w) of dx adds the cols entries im2col read from
 * it, for kernel offsets (i, j) in row-major order: the order device_cpu_layers.c's walk adds
 * them in, so the sums match it bit for bit, and no two threads write one element. */
static __global__ void col2im_kernel(conv_geometry g, int samples, const float *__restrict__ cols,
                                     float *__restrict__ dx) {
    size_t plane = (size_t)g.out_height * g.out_width;
    size_t columns = (size_t)samples * plane;
    size_t count = (size_t)samples * g.channels * g.height * g.width;
    GRID_STRIDE_LOOP(e, count) {
        int w = (int)(e % (size_t)g.width);
        size_t rest = e / (size_t)g.width;
        int h = (int)(rest % (size_t)g.height);
        rest /= (size_t)g.height;
        size_t c = rest % (size_t)g.channels, s = rest / (size_t)g.channels;
        float sum = 0.0f;
        for (int i = 0; i < g.kernel_h; i++) {
            int h_offset = h + g.pad_h - i; /* = oh * stride_h for the window that reads h */
            if (h_offset < 0 || h_offset % g.stride_h) continue;
            int oh = h_offset / g.stride_h;
            if (oh >= g.out_height) continue;
            for (int j = 0; j < g.kernel_w; j++) {
                int w_offset = w + g.pad_w - j;
                if (w_offset < 0 || w_offset % g.stride_w) continue;
                int ow = w_offset / g.stride_w;
                if (ow >= g.out_width) continue;
                size_t row = (c * g.kernel_h + (size_t)i) * g.kernel_w + (size_t)j;
                sum += cols[row * columns + s * plane + (size_t)oh * g.out_width + (size_t)ow];
            }
        }
        dx[e] = sum;
    }
}

extern "C" cudaError_t kernels_col2im(cudaStream_t stream, const conv_geometry *g, int samples,
                                      const float *cols, float *dx) {
    size_t count = (size_t)samples * g->channels * g->height * g->width;
    if (samples <= 0 || count == 0) return cudaSuccess;
    col2im_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
        *g, samples, cols, dx);
    return cudaGetLastError();
}

/* The window of output (oh, ow), clipped to the input: rows [h0, h1), columns [w0, w1). */
typedef struct pool_window {
    int h0, h1, w0, w1;
} pool_window;

static __device__ pool_window pool_window_at(const conv_geometry &g, int oh, int ow) {
    pool_window r;
    r.h0 = oh * g.stride_h - g.pad_h;
    r.w0 = ow * g.stride_w - g.pad_w;
    r.h1 = min(r.h0 + g.kernel_h, g.height);
    r.w1 = min(r.w0 + g.kernel_w, g.width);
    r.h0 = max(r.h0, 0);
    r.w0 = max(r.w0, 0);
    return r;
}

/* Whether max pooling's gradient for a window whose maximum is `best` goes to an input of
 * value v: equal, or both NaN (as device_cpu_layers.c). */
static __device__ bool pool_holds_max(float v, float best) {
    return v == best || (isnan(v) && isnan(best));
}

/* One thread per output element; the window in row-major order, as the CPU. */
template <pool_kind KIND>
static __global__ void pool_forward_kernel(conv_geometry g, size_t count, float divisor,
                                           const float *__restrict__ x, float *__restrict__ y) {
    size_t in_plane = (size_t)g.height * g.width;
    GRID_STRIDE_LOOP(e, count) {
        int ow = (int)(e % (size_t)g.out_width);
        size_t rest = e / (size_t)g.out_width;
        int oh = (int)(rest % (size_t)g.out_height);
        size_t p = rest / (size_t)g.out_height; /* sample * channels + channel */
        const float *in = x + p * in_plane;
        pool_window r = pool_window_at(g, oh, ow);
        float value;
        if (KIND == POOL_MAX) {
            value = -INFINITY;
            for (int h = r.h0; h < r.h1; h++)
                for (int w = r.w0; w < r.w1; w++) {
                    float v = in[(size_t)h * g.width + w];
                    if (v > value || isnan(v)) value = v; /* NaN wins, as on the CPU */
                }
        } else {
            float sum = 0.0f;
            for (int h = r.h0; h < r.h1; h++)
                for (int w = r.w0; w < r.w1; w++)
                    sum += in[(size_t)h * g.width + w];
            value = sum / divisor;
        }
        y[e] = value;
    }
}

/* A gather: one thread per input element adds the gradients of the windows that route to it,
 * windows in row-major (oh, ow) order, the CPU's order of adding them. Max pooling routes a
 * window to this element if it holds the window's maximum and no position before it in the
 * window does. */
template <pool_kind KIND>
static __global__ void pool_backward_kernel(conv_geometry g, size_t count, float divisor,
                                            const float *__restrict__ x,
                                            const float *__restrict__ y,
                                            const float *__restrict__ dy, float *__restrict__ dx) {
    size_t in_plane = (size_t)g.height * g.width;
    size_t out_plane = (size_t)g.out_height * g.out_width;
    GRID_STRIDE_LOOP(e, count) {
        int w = (int)(e % (size_t)g.width);
        size_t rest = e / (size_t)g.width;
        int h = (int)(rest % (size_t)g.height);
        size_t p = rest / (size_t)g.height;
        const float *in = x + p * in_plane;
        const float *out = y + p * out_plane, *dout = dy + p * out_plane;
        /* Windows covering h: oh * stride_h - pad_h <= h < oh * stride_h - pad_h + kernel_h. */
        int h_far = h + g.pad_h, w_far = w + g.pad_w;
        int oh_first = h_far < g.kernel_h ? 0 : (h_far - g.kernel_h) / g.stride_h + 1;
        int oh_last = min(h_far / g.stride_h, g.out_height - 1);
        int ow_first = w_far < g.kernel_w ? 0 : (w_far - g.kernel_w) / g.stride_w + 1;
        int ow_last = min(w_far / g.stride_w, g.out_width - 1);
        float v = in[(size_t)h * g.width + w];
        float sum = 0.0f;
        for (int oh = oh_first; oh <= oh_last; oh++)
            for (int ow = ow_first; ow <= ow_last; ow++) {
                size_t o = (size_t)oh * g.out_width + ow;
                if (KIND == POOL_MAX) {
                    float best = out[o];
                    if (!pool_holds_max(v, best)) continue;
                    pool_window r = pool_window_at(g, oh, ow);
                    bool earlier = false; /* a position before (h, w) holds it: it wins */
                    for (int hh = r.h0; hh <= h && !earlier; hh++) {
                        int w_end = hh < h ? r.w1 : w;
                        for (int ww = r.w0; ww < w_end; ww++)
                            if (pool_holds_max(in[(size_t)hh * g.width + ww], best)) {
                                earlier = true;
                                break;
                            }
                    }
                    if (!earlier) sum += dout[o];
                } else {
                    sum += dout[o] / divisor;
                }
            }
        dx[e] = sum;
    }
}

extern "C" cudaError_t kernels_pool2d_forward(cudaStream_t stream, pool_kind kind,
                                              const conv_geometry *g, int samples, const float *x,
                                              float *y) {
    size_t count = (size_t)samples * g->channels * g->out_height * g->out_width;
    if (samples <= 0 || count == 0) return cudaSuccess;
    float divisor = (float)(g->kernel_h * g->kernel_w);
    unsigned blocks = blocks_for(count, THREADS_PER_BLOCK);
    if (kind == POOL_MAX)
        pool_forward_kernel<POOL_MAX>
            <<<blocks, THREADS_PER_BLOCK, 0, stream>>>(*g, count, divisor, x, y);
    else if (kind == POOL_AVERAGE)
        pool_forward_kernel<POOL_AVERAGE>
            <<<blocks, THREADS_PER_BLOCK, 0, stream>>>(*g, count, divisor, x, y);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

extern "C" cudaError_t kernels_pool2d_backward(cudaStream_t stream, pool_kind kind,
                                               const conv_geometry *g, int samples, const float *x,
                                               const float *y, const float *dy, float *dx) {
    size_t count = (size_t)samples * g->channels * g->height * g->width;
    if (samples <= 0 || count == 0) return cudaSuccess;
    float divisor = (float)(g->kernel_h * g->kernel_w);
    unsigned blocks = blocks_for(count, THREADS_PER_BLOCK);
    if (kind == POOL_MAX)
        pool_backward_kernel<POOL_MAX>
            <<<blocks, THREADS_PER_BLOCK, 0, stream>>>(*g, count, divisor, x, y, dy, dx);
    else if (kind == POOL_AVERAGE)
        pool_backward_kernel<POOL_AVERAGE>
            <<<blocks, THREADS_PER_BLOCK, 0, stream>>>(*g, count, divisor, x, y, dy, dx);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

/* Element e (of samples * spatial) of channel c in [samples][channels][spatial]. */
static __device__ size_t channel_element(size_t e, int c, int channels, int spatial) {
    size_t s = e / (size_t)spatial, i = e - s * (size_t)spatial;
    return (s * (size_t)channels + (size_t)c) * (size_t)spatial + i;
}

/* One block per channel: the statistics in double (the sum, then the squared deviations from
 * the mean, two passes as on the CPU), then y. */
static __global__ void
batchnorm_forward_kernel(int samples, int channels, int spatial, const float *__restrict__ x,
                         const float *__restrict__ gamma, const float *__restrict__ beta, float eps,
                         bool training, float momentum, float *__restrict__ running_mean,
                         float *__restrict__ running_var, float *__restrict__ mean,
                         float *__restrict__ invstd, float *__restrict__ y) {
    int c = blockIdx.x;
    size_t count = (size_t)samples * (size_t)spatial;
    double m, inverse;
    if (training) {
        double sum = 0.0;
        for (size_t e = threadIdx.x; e < count; e += blockDim.x)
            sum += x[channel_element(e, c, channels, spatial)];
        m = block_sum_pair(sum, 0.0).x / (double)count;
        double squares = 0.0;
        for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
            double d = x[channel_element(e, c, channels, spatial)] - m;
            squares += d * d;
        }
        squares = block_sum_pair(squares, 0.0).x;
        double variance = squares / (double)count;
        inverse = 1.0 / sqrt(variance + (double)eps);
        if (threadIdx.x == 0) {
            double unbiased = count > 1 ? squares / (double)(count - 1) : variance;
            double keep = 1.0 - (double)momentum;
            /* Products and sums rounded one by one, as the CPU's. */
            running_mean[c] = (float)__dadd_rn(__dmul_rn(keep, (double)running_mean[c]),
                                               __dmul_rn((double)momentum, m));
            running_var[c] = (float)__dadd_rn(__dmul_rn(keep, (double)running_var[c]),
                                              __dmul_rn((double)momentum, unbiased));
        }
    } else {
        m = running_mean[c];
        inverse = 1.0 / sqrt((double)running_var[c] + (double)eps);
    }
    if (threadIdx.x == 0) {
        mean[c] = (float)m;
        invstd[c] = (float)inverse;
    }
    float scale = RN_MUL((float)inverse, gamma[c]), mu = (float)m, shift = beta[c];
    for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
        size_t at = channel_element(e, c, channels, spatial);
        y[at] = RN_ADD(RN_MUL(RN_SUB(x[at], mu), scale), shift);
    }
}

extern "C" cudaError_t kernels_batchnorm_forward(cudaStream_t stream, int samples, int channels,
                                                 int spatial, const float *x, const float *gamma,
                                                 const float *beta, float eps, bool training,
                                                 float momentum, float *running_mean,
                                                 float *running_var, float *mean, float *invstd,
                                                 float *y) {
    if (channels <= 0 || spatial <= 0 || samples < 0) return cudaSuccess;
    batchnorm_forward_kernel<<<(unsigned)channels, NORM_THREADS, 0, stream>>>(
        samples, channels, spatial, x, gamma, beta, eps, training, momentum, running_mean,
        running_var, mean, invstd, y);
    return cudaGetLastError();
}

/* One block per channel: sum(dy) and sum(dy * xhat) in double, then dx. */
static __global__ void
batchnorm_backward_kernel(int samples, int channels, int spatial, const float *__restrict__ x,
                          const float *__restrict__ dy, const float *__restrict__ gamma,
                          const float *__restrict__ mean, const float *__restrict__ invstd,
                          float *__restrict__ dx, float *__restrict__ dgamma,
                          float *__restrict__ dbeta) {
    int c = blockIdx.x;
    size_t count = (size_t)samples * (size_t)spatial;
    float mu = mean[c], inverse = invstd[c];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
        size_t at = channel_element(e, c, channels, spatial);
        float xhat = RN_MUL(RN_SUB(x[at], mu), inverse);
        sum_dy += dy[at];
        sum_dy_xhat += (double)dy[at] * (double)xhat;
    }
    double2 sums = block_sum_pair(sum_dy, sum_dy_xhat);
    if (threadIdx.x == 0) {
        dgamma[c] += (float)sums.y;
        dbeta[c] += (float)sums.x;
    }
    /* dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)) */
    float mean_dy = (float)(sums.x / (double)count);
    float mean_dy_xhat = (float)(sums.y / (double)count);
    float scale = RN_MUL(gamma[c], inverse);
    for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
        size_t at = channel_element(e, c, channels, spatial);
        float xhat = RN_MUL(RN_SUB(x[at], mu), inverse);
        dx[at] = RN_MUL(scale, RN_SUB(RN_SUB(dy[at], mean_dy), RN_MUL(xhat, mean_dy_xhat)));
    }
}

extern "C" cudaError_t kernels_batchnorm_backward(cudaStream_t stream, int samples, int channels,
                                                  int spatial, const float *x, const float *dy,
                                                  const float *gamma, const float *mean,
                                                  const float *invstd, float *dx, float *dgamma,
                                                  float *dbeta) {
    if (channels <= 0 || spatial <= 0 || samples <= 0) return cudaSuccess;
    batchnorm_backward_kernel<<<(unsigned)channels, NORM_THREADS, 0, stream>>>(
        samples, channels, spatial, x, dy, gamma, mean, invstd, dx, dgamma, dbeta);
    return cudaGetLastError();
}

/* One warp per row: each lane sums its columns (lane, lane + 32, ...) in double, the warp's
 * butterfly adds the lanes; two passes (mean, then squared deviations), as on the CPU. */
static __global__ void layernorm_forward_kernel(int rows, int cols, const float *__restrict__ x,
                                                const float *__restrict__ gamma,
                                                const float *__restrict__ beta, float eps,
                                                float *__restrict__ y, float *__restrict__ mean,
                                                float *__restrict__ rstd) {
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int warps = (int)((gridDim.x * blockDim.x) >> 5);
    for (int row = warp; row < rows; row += warps) {
        const float *v = x + (size_t)row * cols;
        float *out = y + (size_t)row * cols;
        double sum = 0.0;
        for (int c = lane; c < cols; c += 32)
            sum += v[c];
        double m = warp_sum_double(sum) / cols;
        double squares = 0.0;
        for (int c = lane; c < cols; c += 32) {
            double d = v[c] - m;
            squares += d * d;
        }
        squares = warp_sum_double(squares);
        float inverse = (float)(1.0 / sqrt(squares / cols + (double)eps)), mu = (float)m;
        if (lane == 0) {
            mean[row] = mu;
            rstd[row] = inverse;
        }
        for (int c = lane; c < cols; c += 32)
            out[c] = RN_ADD(RN_MUL(RN_MUL(RN_SUB(v[c], mu), inverse), gamma[c]), beta[c]);
    }
}

extern "C" cudaError_t kernels_layernorm_forward(cudaStream_t stream, int rows, int cols,
                                                 const float *x, const float *gamma,
                                                 const float *beta, float eps, float *y,
                                                 float *mean, float *rstd) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    layernorm_forward_kernel<<<blocks_for((size_t)rows, WARPS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                               stream>>>(rows, cols, x, gamma, beta, eps, y, mean, rstd);
    return cudaGetLastError();
}

/* dx, one warp per row: the two row sums in double (lanes, then the butterfly). */
static __global__ void layernorm_backward_kernel(int rows, int cols, const float *__restrict__ x,
                                                 const float *__restrict__ dy,
                                                 const float *__restrict__ gamma,
                                                 const float *__restrict__ mean,
                                                 const float *__restrict__ rstd,
                                                 float *__restrict__ dx) {
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int warps = (int)((gridDim.x * blockDim.x) >> 5);
    for (int row = warp; row < rows; row += warps) {
        const float *v = x + (size_t)row * cols, *g = dy + (size_t)row * cols;
        float *out = dx + (size_t)row * cols;
        float mu = mean[row], inverse = rstd[row];
        /* dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
        double sum = 0.0, sum_xhat = 0.0;
        for (int c = lane; c < cols; c += 32) {
            float xhat = RN_MUL(RN_SUB(v[c], mu), inverse);
            float dxhat = RN_MUL(g[c], gamma[c]);
            sum += dxhat;
            sum_xhat += (double)dxhat * xhat;
        }
        float mean_dxhat = (float)(warp_sum_double(sum) / cols);
        float mean_dxhat_xhat = (float)(warp_sum_double(sum_xhat) / cols);
        for (int c = lane; c < cols; c += 32) {
            float xhat = RN_MUL(RN_SUB(v[c], mu), inverse);
            out[c] = RN_MUL(inverse, RN_SUB(RN_SUB(RN_MUL(g[c], gamma[c]), mean_dxhat),
                                            RN_MUL(xhat, mean_dxhat_xhat)));
        }
    }
}

/* dgamma and dbeta: column sums over the rows (column_sums above: both in one pass). */
extern "C" cudaError_t
kernels_layernorm_backward(cudaStream_t stream, const kernels_scratch *scratch, int rows, int cols,
                           const float *x, const float *dy, const float *gamma, const float *mean,
                           const float *rstd, float *dx, float *dgamma, float *dbeta) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    layernorm_backward_kernel<<<blocks_for((size_t)rows, WARPS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                                stream>>>(rows, cols, x, dy, gamma, mean, rstd, dx);
    cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) return error;
    return column_sums<COLUMN_SUM_LAYERNORM>(stream, scratch, rows, cols, x, dy, mean, rstd, dgamma,
                                             dbeta);
}

/* RMS normalisation, one warp per row: the mean of squares in double (lanes, then the
 * butterfly), as the CPU sums it; y = x * rstd * gamma. */
static __global__ void rmsnorm_forward_kernel(int rows, int cols, const float *__restrict__ x,
                                              const float *__restrict__ gamma, float eps,
                                              float *__restrict__ y, float *__restrict__ rstd) {
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int warps = (int)((gridDim.x * blockDim.x) >> 5);
    for (int row = warp; row < rows; row += warps) {
        const float *v = x + (size_t)row * cols;
        float *out = y + (size_t)row * cols;
        double squares = 0.0;
        for (int c = lane; c < cols; c += 32)
            squares += (double)v[c] * v[c];
        squares = warp_sum_double(squares);
        float inverse = (float)(1.0 / sqrt(squares / cols + (double)eps));
        if (lane == 0) rstd[row] = inverse;
        for (int c = lane; c < cols; c += 32)
            out[c] = RN_MUL(RN_MUL(v[c], inverse), gamma[c]);
    }
}

extern "C" cudaError_t kernels_rmsnorm_forward(cudaStream_t stream, int rows, int cols,
                                               const float *x, const float *gamma, float eps,
                                               float *y, float *rstd) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    rmsnorm_forward_kernel<<<blocks_for((size_t)rows, WARPS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                             stream>>>(rows, cols, x, gamma, eps, y, rstd);
    return cudaGetLastError();
}

/* dx, one warp per row: dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), the row sum in double. */
static __global__ void rmsnorm_backward_kernel(int rows, int cols, const float *__restrict__ x,
                                               const float *__restrict__ dy,
                                               const float *__restrict__ gamma,
                                               const float *__restrict__ rstd,
                                               float *__restrict__ dx) {
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int warps = (int)((gridDim.x * blockDim.x) >> 5);
    for (int row = warp; row < rows; row += warps) {
        const float *v = x + (size_t)row * cols, *g = dy + (size_t)row * cols;
        float *out = dx + (size_t)row * cols;
        float inverse = rstd[row];
        double sum_xhat = 0.0;
        for (int c = lane; c < cols; c += 32)
            sum_xhat += (double)RN_MUL(g[c], gamma[c]) * RN_MUL(v[c], inverse);
        float mean_dxhat_xhat = (float)(warp_sum_double(sum_xhat) / cols);
        for (int c = lane; c < cols; c += 32)
            out[c] = RN_MUL(inverse, RN_SUB(RN_MUL(g[c], gamma[c]),
                                            RN_MUL(RN_MUL(v[c], inverse), mean_dxhat_xhat)));
    }
}

/* dgamma: column sums of dy * x * rstd (column_sums above). */
extern "C" cudaError_t kernels_rmsnorm_backward(cudaStream_t stream, const kernels_scratch *scratch,
                                                int rows, int cols, const float *x, const float *dy,
                                                const float *gamma, const float *rstd, float *dx,
                                                float *dgamma) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    rmsnorm_backward_kernel<<<blocks_for((size_t)rows, WARPS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                              stream>>>(rows, cols, x, dy, gamma, rstd, dx);
    cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) return error;
    return column_sums<COLUMN_SUM_RMSNORM>(stream, scratch, rows, cols, x, dy, NULL, rstd, dgamma,
                                           NULL);
}

static __global__ void embedding_forward_kernel(int rows, int cols, const int32_t *__restrict__ ids,
                                                const float *__restrict__ table,
                                                float *__restrict__ y) {
    size_t count = (size_t)rows * cols;
    GRID_STRIDE_LOOP(i, count) {
        size_t row = i / (size_t)cols, column = i - row * (size_t)cols;
        y[i] = table[(size_t)ids[row] * cols + column];
    }
}

extern "C" cudaError_t kernels_embedding_forward(cudaStream_t stream, int rows, int cols,
                                                 const int32_t *ids, const float *table, float *y) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    size_t count = (size_t)rows * cols;
    embedding_forward_kernel<<<blocks_for(count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                               stream>>>(rows, cols, ids, table, y);
    return cudaGetLastError();
}

/* The embedding gradient: dtable[ids[r]] += dy[r] for every row r, each table row adding its
 * rows in increasing r, as the CPU does (so the bits agree). The rows go in groups of up to
 * EMBEDDING_SORT_ROWS: a stable radix sort of the group's ids (with their row numbers) lines up
 * the rows of each id in increasing order, and then one warp per (run of equal ids, 32
 * columns) adds that run's rows in order, one owner per element of dtable, no atomics. Groups
 * run one after another, so later rows add after earlier ones. The work grows with the rows
 * and the columns, not with how many warps there are (before: every warp read every id). */
static __global__ void row_order_kernel(int count, int32_t *__restrict__ order) {
    GRID_STRIDE_LOOP(i, (size_t)count) {
        order[i] = (int32_t)i;
    }
}

static __global__ void embedding_runs_kernel(int count, int cols, int first_row,
                                             const int32_t *__restrict__ sorted_ids,
                                             const int32_t *__restrict__ sorted_rows,
                                             const float *__restrict__ dy,
                                             float *__restrict__ dtable) {
    int lane = threadIdx.x & 31;
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    size_t warps = ((size_t)gridDim.x * blockDim.x) >> 5;
    size_t column_groups = ((size_t)cols + 31) / 32;
    size_t items = (size_t)count * column_groups;
    for (size_t item = warp; item < items; item += warps) {
        int start = (int)(item / column_groups); /* the same for the whole warp */
        int column = (int)(item % column_groups) * 32 + lane;
        int32_t id = sorted_ids[start];
        if (start > 0 && sorted_ids[start - 1] == id) continue; /* not the run's first row */
        if (column >= cols) continue;
        float *out = dtable + (size_t)id * cols + column;
        float sum = *out;
        for (int j = start; j < count && sorted_ids[j] == id; j++)
            sum += dy[((size_t)first_row + (size_t)sorted_rows[j]) * cols + column];
        *out = sum;
    }
}

/* The sort: ids ascending, equal ids in the order they came (a radix sort is stable), over
 * all 32 bits of the key (ids are checked to lie in the table before any kernel sees them). */
static cudaError_t sort_ids(const kernels_scratch *scratch, size_t *temp_bytes, const int32_t *ids,
                            int count, cudaStream_t stream) {
    return cub::DeviceRadixSort::SortPairs(
        scratch ? scratch->sort_temp : NULL, *temp_bytes, ids, scratch ? scratch->sorted_ids : NULL,
        scratch ? scratch->row_order : NULL, scratch ? scratch->sorted_rows : NULL, count, 0, 32,
        stream);
}

extern "C" cudaError_t kernels_embedding_backward(cudaStream_t stream,
                                                  const kernels_scratch *scratch, int rows,
                                                  int cols, const int32_t *ids, const float *dy,
                                                  float *dtable) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (!scratch || !scratch->sorted_ids) return cudaErrorInvalidValue;
    size_t column_groups = ((size_t)cols + 31) / 32;
    for (int first = 0; first < rows; first += EMBEDDING_SORT_ROWS) {
        int count = rows - first < EMBEDDING_SORT_ROWS ? rows - first : EMBEDDING_SORT_ROWS;
        row_order_kernel<<<blocks_for((size_t)count, THREADS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                           stream>>>(count, scratch->row_order);
        cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess) return error;
        size_t temp_bytes = 0; /* what this count needs: at most what the scratch was sized for */
        error = sort_ids(NULL, &temp_bytes, ids + first, count, stream);
        if (error != cudaSuccess) return error;
        if (temp_bytes > scratch->sort_temp_bytes) return cudaErrorInvalidValue;
        temp_bytes = scratch->sort_temp_bytes;
        error = sort_ids(scratch, &temp_bytes, ids + first, count, stream);
        if (error != cudaSuccess) return error;
        size_t warps = (size_t)count * column_groups;
        embedding_runs_kernel<<<blocks_for(warps, WARPS_PER_BLOCK), THREADS_PER_BLOCK, 0, stream>>>(
            count, cols, first, scratch->sorted_ids, scratch->sorted_rows, dy, dtable);
        error = cudaGetLastError();
        if (error != cudaSuccess) return error;
    }
    return cudaSuccess;
}

/* --- the scratch ------------------------------------------------------------------------- */

static size_t aligned_256(size_t bytes) {
    return (bytes + 255) / 256 * 256;
}

extern "C" cudaError_t kernels_scratch_bytes(size_t *bytes, size_t *sort_temp_bytes) {
    size_t temp = 0;
    cudaError_t error = sort_ids(NULL, &temp, NULL, EMBEDDING_SORT_ROWS, 0);
    if (error != cudaSuccess) return error;
    *sort_temp_bytes = aligned_256(temp);
    *bytes = aligned_256(REDUCTION_PARTIAL_BYTES) +
             3 * aligned_256((size_t)EMBEDDING_SORT_ROWS * sizeof(int32_t)) + *sort_temp_bytes;
    return cudaSuccess;
}

extern "C" void kernels_scratch_place(void *base, size_t sort_temp_bytes, kernels_scratch *out) {
    char *at = (char *)base;
    size_t ids_bytes = aligned_256((size_t)EMBEDDING_SORT_ROWS * sizeof(int32_t));
    out->partials = at;
    at += aligned_256(REDUCTION_PARTIAL_BYTES);
    out->sorted_ids = (int32_t *)at;
    at += ids_bytes;
    out->row_order = (int32_t *)at;
    at += ids_bytes;
    out->sorted_rows = (int32_t *)at;
    at += ids_bytes;
    out->sort_temp = at;
    out->sort_temp_bytes = sort_temp_bytes;
}

/* One warp per row i of a t x t matrix: lanes take columns lane, lane + 32, ... up to i; the
 * maximum and the sum of the exponentials meet in warp butterflies (fixed order). The
 * exponentials wait in y (each lane rereads only what it wrote). */
static __global__ void causal_softmax_forward_kernel(int groups, int t, float scale,
                                                     const float *__restrict__ x,
                                                     float *__restrict__ y) {
    int lane = threadIdx.x & 31;
    int64_t warp = (int64_t)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int64_t warps = (int64_t)((gridDim.x * blockDim.x) >> 5);
    int64_t rows = (int64_t)groups * t;
    for (int64_t row = warp; row < rows; row += warps) {
        int i = (int)(row % t);
        const float *in = x + row * t;
        float *out = y + row * t;
        /* NaN never becomes the largest (as on the CPU); it then spreads through the sum. */
        float largest = -INFINITY;
        for (int j = lane; j <= i; j += 32) {
            float v = RN_MUL(scale, in[j]);
            if (v > largest) largest = v;
        }
        largest = warp_max(largest);
        float sum = 0.0f;
        for (int j = lane; j <= i; j += 32) {
            float e = expf(RN_SUB(RN_MUL(scale, in[j]), largest));
            out[j] = e;
            sum += e;
        }
        float inverse = 1.0f / warp_sum_float(sum);
        for (int j = lane; j < t; j += 32)
            out[j] = j <= i ? out[j] * inverse : 0.0f;
    }
}

static __global__ void causal_softmax_backward_kernel(int groups, int t, float scale,
                                                      const float *__restrict__ y,
                                                      const float *__restrict__ dy,
                                                      float *__restrict__ dx) {
    int lane = threadIdx.x & 31;
    int64_t warp = (int64_t)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int64_t warps = (int64_t)((gridDim.x * blockDim.x) >> 5);
    int64_t rows = (int64_t)groups * t;
    for (int64_t row = warp; row < rows; row += warps) {
        int i = (int)(row % t);
        const float *p = y + row * t, *g = dy + row * t;
        float *out = dx + row * t;
        float dot = 0.0f;
        for (int j = lane; j <= i; j += 32)
            dot = RN_ADD(dot, RN_MUL(p[j], g[j]));
        dot = warp_sum_float(dot);
        for (int j = lane; j < t; j += 32)
            out[j] = j <= i ? RN_MUL(RN_MUL(scale, p[j]), RN_SUB(g[j], dot)) : 0.0f;
    }
}

extern "C" cudaError_t kernels_causal_softmax_forward(cudaStream_t stream, int groups, int t,
                                                      float scale, const float *x, float *y) {
    if (groups <= 0 || t <= 0) return cudaSuccess;
    size_t rows = (size_t)groups * t;
    causal_softmax_forward_kernel<<<blocks_for(rows, WARPS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                                    stream>>>(groups, t, scale, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t kernels_causal_softmax_backward(cudaStream_t stream, int groups, int t,
                                                       float scale, const float *y, const float *dy,
                                                       float *dx) {
    if (groups <= 0 || t <= 0) return cudaSuccess;
    size_t rows = (size_t)groups * t;
    causal_softmax_backward_kernel<<<blocks_for(rows, WARPS_PER_BLOCK), THREADS_PER_BLOCK, 0,
                                     stream>>>(groups, t, scale, y, dy, dx);
    return cudaGetLastError();
}
