/* device_cuda.c - the CUDA backend: device memory, copies, streams, cuBLAS, and the launches of
 * the kernels in kernels.cu, behind the operations table of engine/device.h.
 *
 * Plain C over the CUDA runtime and cuBLAS C APIs. Every operation is issued on one compute
 * stream (cuBLAS is bound to it), so operations run in the order the engine calls them and
 * the host never waits, except where an operation must hand a value to the host:
 * copy_device_to_host, check_finite and synchronize (and copy_host_to_device from
 * page-locked memory, which must not return while the DMA engine still reads the caller's
 * buffer). Inputs travel on a second, copy stream (upload_async), ordered against the compute
 * stream with events, so the next micro-batch crosses PCIe while the current one computes.
 *
 * Errors: operations returning ddt_status report a failed CUDA or cuBLAS call with the call,
 * CUDA's description of the error, and file:line. Operations returning void cannot, so they
 * record their first failure in the backend, and the next operation that returns a status
 * (synchronize, check_finite, the copies) reports it: a failure never goes unnoticed past the
 * end of a step. Faults inside kernels surface the same way, at the next synchronisation.
 *
 * Threads: host_alloc, host_free and the upload operations may be called from any thread
 * (they make this GPU current first, so no thread creates a stray context on GPU 0); every
 * other operation belongs to the thread that opened the device.
 */
#include "engine/device.h"
#include "engine/device_backend.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "engine/alloc.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"

/* cuBLAS's recommended workspace for Hopper (32 MiB; 4 MiB suffices before it). */
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
#define UPLOAD_BUFFERS 2

/* What the checks leave on the device for the host to read. */
typedef struct cuda_reductions {
    double sum_of_squares;
    int nonfinite;
} cuda_reductions;

typedef struct cuda_backend {
    cudaStream_t compute_stream; /* every operation */
    cudaStream_t copy_stream;    /* upload_async() only */
    cublasHandle_t cublas;       /* bound to compute_stream */
    /* upload_done[b]: recorded on the copy stream after upload b's copies.
     * buffer_free[b]: recorded on the compute stream at a point after which no issued work
     * reads device buffer b, so the next upload into b may overwrite it (see upload_async). */
    cudaEvent_t upload_done[UPLOAD_BUFFERS];
    cudaEvent_t buffer_free[UPLOAD_BUFFERS];
    bool buffer_free_recorded[UPLOAD_BUFFERS];
    int current_buffer; /* the buffer of the last upload_wait(); -1 before the first */

    /* The results of check_finite (a flag) and sum_of_squares (a double): 256 bytes of
     * cudaMalloc and a page-locked copy, taken at open (the allocator is not known yet then)
     * and returned at close. */
    cuda_reductions *device_results;
    cuda_reductions *host_results;

    /* GEMM arithmetic and its workspace, owned by the allocator given to set_precision(). */
    precision_kind precision;
    allocator *workspace_allocator;
    void *cublas_workspace;
    void *cast_a, *cast_b;       /* bf16/fp16 copies of the GEMM operands */
    size_t cast_capacity_floats; /* elements each cast buffer holds */
    /* The kernels' scratch (partial sums, the embedding sort), taken with the cuBLAS
     * workspace from the same allocator; its size is asked of the kernels at open. Until
     * set_precision() the scratch is empty and the operations that need it fail clearly. */
    size_t scratch_bytes, sort_temp_bytes;
    void *scratch_memory;
    kernels_scratch scratch;

    /* timer_mark/timer_elapsed: timing events, recorded on the compute stream. */
    cudaEvent_t timers[DEVICE_TIMER_SLOTS];

    /* The first failure of an operation that returns void; reported by the next status. */
    ddt_status deferred_status;
    char deferred_message[512];
} cuda_backend;

/* --- errors ------------------------------------------------------------------------------ */

static ddt_status cublas_failure(cublasStatus_t error, const char *call, const char *file,
                                 int line) {
    ddt_status code = error == CUBLAS_STATUS_ALLOC_FAILED ? DDT_ERR_MEMORY : DDT_ERR_INTERNAL;
    return ddt_error(code, "%s failed: %s (%s) at %s:%d", call, cublasGetStatusString(error),
                     cublasGetStatusName(error), file, line);
}

#define CUBLAS_CHECK_GOTO(call, status_var, label)                                                 \
    do {                                                                                           \
        cublasStatus_t cublas_check_error_ = (call);                                               \
        if (cublas_check_error_ != CUBLAS_STATUS_SUCCESS) {                                        \
            (status_var) = cublas_failure(cublas_check_error_, #call, __FILE__, __LINE__);         \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

/* Records the first failure of a void operation; later ones add nothing new. */
static void cuda_defer(cuda_backend *backend, ddt_status code, const char *what, const char *why,
                       const char *file, int line) {
    if (backend->deferred_status != DDT_OK) return;
    backend->deferred_status = code;
    snprintf(backend->deferred_message, sizeof backend->deferred_message, "%s failed: %s at %s:%d",
             what, why, file, line);
}

static void cuda_defer_cuda(cuda_backend *backend, cudaError_t error, const char *call,
                            const char *file, int line) {
    if (error == cudaSuccess) return;
    (void)cudaGetLastError();
    char why[192];
    snprintf(why, sizeof why, "%s (%s)", cudaGetErrorString(error), cudaGetErrorName(error));
    cuda_defer(backend, cuda_error_status(error), call, why, file, line);
}

static void cuda_defer_cublas(cuda_backend *backend, cublasStatus_t error, const char *call,
                              const char *file, int line) {
    if (error == CUBLAS_STATUS_SUCCESS) return;
    char why[192];
    snprintf(why, sizeof why, "%s (%s)", cublasGetStatusString(error), cublasGetStatusName(error));
    cuda_defer(backend, DDT_ERR_INTERNAL, call, why, file, line);
}

#define CUDA_DEFER(backend, call) cuda_defer_cuda((backend), (call), #call, __FILE__, __LINE__)
#define CUBLAS_DEFER(backend, call) cuda_defer_cublas((backend), (call), #call, __FILE__, __LINE__)

/* The failure a void operation recorded, as this operation's status; it stays recorded (the
 * GPU's state is suspect from then on), so every later status reports it too. */
static ddt_status cuda_deferred(const device *dev) {
    const cuda_backend *backend = dev->backend;
    if (backend->deferred_status == DDT_OK) return DDT_OK;
    return ddt_error(backend->deferred_status, "cuda:%d: an earlier operation failed: %s",
                     dev->ordinal, backend->deferred_message);
}

static cuda_backend *backend_of(device *dev) {
    return dev->backend;
}

/* --- memory and copies ------------------------------------------------------------------- */

/* Regions for the allocator, which zero-fills what it hands out (fill_zero). */
static ddt_status cuda_memory_alloc(device *dev, size_t bytes, void **out) {
    void *pointer = NULL;
    /* cudaMalloc(0) may give NULL; a minimal region keeps "success means non-NULL". */
    cudaError_t error = cudaMalloc(&pointer, bytes ? bytes : 256);
    if (error != cudaSuccess || !pointer) {
        (void)cudaGetLastError();
        *out = NULL;
        return ddt_error(error == cudaSuccess ? DDT_ERR_MEMORY : cuda_error_status(error),
                         "out of device memory: cudaMalloc of %zu bytes on cuda:%d failed: %s",
                         bytes, dev->ordinal, cudaGetErrorString(error));
    }
    *out = pointer;
    return DDT_OK;
}

static void cuda_memory_free(device *dev, void *pointer) {
    if (pointer) CUDA_DEFER(backend_of(dev), cudaFree(pointer));
}

static ddt_status cuda_memory_info(device *dev, size_t *total_bytes, size_t *free_bytes) {
    (void)dev;
    size_t free_memory = 0, total_memory = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_memory, &total_memory));
    *total_bytes = total_memory;
    *free_bytes = free_memory;
    return DDT_OK;
}

/* Ordered with the compute stream. The caller may reuse host_src when this returns: from
 * pageable memory the runtime has staged the bytes by then; page-locked memory is read by the
 * DMA engine later, so then this waits for the copy (the asynchronous path is upload_async). */
static ddt_status cuda_copy_host_to_device(device *dev, void *device_dst, const void *host_src,
                                           size_t bytes) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(cuda_deferred(dev));
    if (!bytes) return DDT_OK;
    CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice,
                               backend->compute_stream));
    struct cudaPointerAttributes attributes;
    if (cudaPointerGetAttributes(&attributes, host_src) != cudaSuccess) {
        (void)cudaGetLastError();
        attributes.type = cudaMemoryTypeHost; /* unsure: wait, to be safe */
    }
    if (attributes.type != cudaMemoryTypeUnregistered)
        CUDA_CHECK(cudaStreamSynchronize(backend->compute_stream));
    return DDT_OK;
}

static ddt_status cuda_copy_device_to_host(device *dev, void *host_dst, const void *device_src,
                                           size_t bytes) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(cuda_deferred(dev));
    if (!bytes) return DDT_OK;
    CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost,
                               backend->compute_stream));
    CUDA_CHECK(cudaStreamSynchronize(backend->compute_stream));
    return DDT_OK;
}

static void cuda_copy_device_to_device(device *dev, void *dst, const void *src, size_t bytes) {
    cuda_backend *backend = backend_of(dev);
    if (!bytes || dst == src) return;
    CUDA_DEFER(backend,
               cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, backend->compute_stream));
}

static void cuda_fill_zero(device *dev, void *dst, size_t bytes) {
    cuda_backend *backend = backend_of(dev);
    if (!bytes) return;
    CUDA_DEFER(backend, cudaMemsetAsync(dst, 0, bytes, backend->compute_stream));
}

/* bf16 and fp16 GEMMs cast their operands (cast_a, cast_b). */
static bool precision_is_16_bit(precision_kind precision) {
    return precision == PRECISION_BF16 || precision == PRECISION_FP16;
}

/* --- the kernels' scratch --------------------------------------------------------------- */

/* The scratch, or NULL after recording why there is none (set_precision() not yet called). */
static const kernels_scratch *scratch_of(cuda_backend *backend, const char *what) {
    if (backend->scratch_memory) return &backend->scratch;
    cuda_defer(backend, DDT_ERR_INTERNAL, what,
               "the kernels' scratch is taken by device_set_precision(), which was not called",
               __FILE__, __LINE__);
    return NULL;
}

/* --- dense algebra ----------------------------------------------------------------------- */

/* cuBLAS is column-major. A row-major matrix read column-major is its transpose, and the
 * row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T: so cuBLAS gets B as its
 * first operand and A as its second, n and m swapped, and each operand keeps its own
 * transpose flag and leading dimension. */
/* Whether the product is empty, done here: no output (m or n 0), or no products (k 0: a
 * micro-batch of zero rows), which leaves beta * C, as on the CPU. */
static bool gemm_was_empty(cuda_backend *backend, int m, int n, int k, float beta, float *c,
                           int ldc) {
    if (m <= 0 || n <= 0) return true;
    if (k > 0) return false;
    CUDA_DEFER(backend, kernels_gemm_empty(backend->compute_stream, m, n, beta, c, ldc));
    return true;
}

static void cuda_gemm(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k,
                      float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                      float *c, int ldc) {
    cuda_backend *backend = backend_of(dev);
    if (gemm_was_empty(backend, m, n, k, beta, c, ldc)) return;
    cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (backend->precision != PRECISION_BF16 && backend->precision != PRECISION_FP16) {
        /* FP32 and TF32 differ only in the handle's math mode (set_precision). */
        CUBLAS_DEFER(backend, cublasSgemm(backend->cublas, op_b, op_a, n, m, k, &alpha, b, ldb, a,
                                          lda, &beta, c, ldc));
        return;
    }
    /* 16-bit operands: round each operand, as stored (rows x cols, leading dimension ld), into
     * a packed copy (leading dimension cols), then multiply with fp32 accumulation into the
     * fp32 C, so beta keeps accumulating in fp32. */
    int a_rows = transpose_a ? k : m, a_cols = transpose_a ? m : k;
    int b_rows = transpose_b ? n : k, b_cols = transpose_b ? k : n;
    size_t a_floats = (size_t)m * (size_t)k, b_floats = (size_t)k * (size_t)n;
    if (a_floats > backend->cast_capacity_floats || b_floats > backend->cast_capacity_floats) {
        char why[192];
        snprintf(why, sizeof why,
                 "operands of %zu and %zu floats exceed the %s workspace of %zu floats each "
                 "(set_precision's max_operand_floats is too small)",
                 a_floats, b_floats, precision_kind_name(backend->precision),
                 backend->cast_capacity_floats);
        cuda_defer(backend, DDT_ERR_INTERNAL, "gemm", why, __FILE__, __LINE__);
        return;
    }
    cudaDataType type;
    if (backend->precision == PRECISION_BF16) {
        type = CUDA_R_16BF;
        CUDA_DEFER(backend, kernels_cast_bf16(backend->compute_stream, a_rows, a_cols, a, lda,
                                              backend->cast_a));
        CUDA_DEFER(backend, kernels_cast_bf16(backend->compute_stream, b_rows, b_cols, b, ldb,
                                              backend->cast_b));
    } else {
        type = CUDA_R_16F;
        CUDA_DEFER(backend, kernels_cast_fp16(backend->compute_stream, a_rows, a_cols, a, lda,
                                              backend->cast_a));
        CUDA_DEFER(backend, kernels_cast_fp16(backend->compute_stream, b_rows, b_cols, b, ldb,
                                              backend->cast_b));
    }
    CUBLAS_DEFER(backend,
                 cublasGemmEx(backend->cublas, op_b, op_a, n, m, k, &alpha, backend->cast_b, type,
                              b_cols, backend->cast_a, type, a_cols, &beta, c, CUDA_R_32F, ldc,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* Plain fp32 whatever the precision mode: fp32 operands, and the pedantic compute type, which
 * keeps cuBLAS off TF32 tensor cores even when the handle's math mode allows them. */
static void cuda_gemm_fp32(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k,
                           float alpha, const float *a, int lda, const float *b, int ldb,
                           float beta, float *c, int ldc) {
    cuda_backend *backend = backend_of(dev);
    if (gemm_was_empty(backend, m, n, k, beta, c, ldc)) return;
    cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_DEFER(backend, cublasGemmEx(backend->cublas, op_b, op_a, n, m, k, &alpha, b, CUDA_R_32F,
                                       ldb, a, CUDA_R_32F, lda, &beta, c, CUDA_R_32F, ldc,
                                       CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
}

static void cuda_bias_add(device *dev, int rows, int cols, float *y, const float *bias) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_bias_add(backend->compute_stream, rows, cols, y, bias));
}

static void cuda_bias_gradient_accumulate(device *dev, int rows, int cols, const float *dy,
                                          float *bias_gradient) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "bias_gradient_accumulate");
    if (!scratch) return;
    CUDA_DEFER(backend, kernels_bias_gradient_accumulate(backend->compute_stream, scratch, rows,
                                                         cols, dy, bias_gradient));
}

static void cuda_scale(device *dev, size_t count, float alpha, float *x) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_scale(backend->compute_stream, count, alpha, x));
}

/* --- elementwise layers ------------------------------------------------------------------ */

static void cuda_activation_forward(device *dev, activation_kind kind, size_t count, const float *x,
                                    float *y) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_activation_forward(backend->compute_stream, kind, count, x, y));
}

static void cuda_activation_backward(device *dev, activation_kind kind, size_t count,
                                     const float *x, const float *y, const float *dy, float *dx) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend,
               kernels_activation_backward(backend->compute_stream, kind, count, x, y, dy, dx));
}

static void cuda_dropout_apply(device *dev, int rows, int cols, float rate, dropout_key key,
                               const int64_t *row_ids, const float *in, float *out) {
    cuda_backend *backend = backend_of(dev);
    if (rows <= 0 || cols <= 0) return;
    if (rate <= 0.0f) {
        cuda_copy_device_to_device(dev, out, in, (size_t)rows * (size_t)cols * sizeof(float));
        return;
    }
    /* The same float expression as device_cpu.c, so kept values match bit for bit. */
    float keep_scale = 1.0f / (1.0f - rate);
    CUDA_DEFER(backend, kernels_dropout(backend->compute_stream, rows, cols, rate, keep_scale, key,
                                        row_ids, in, out));
}

static void cuda_dropout_forward(device *dev, int rows, int cols, float rate, dropout_key key,
                                 const int64_t *row_ids, const float *x, float *y) {
    cuda_dropout_apply(dev, rows, cols, rate, key, row_ids, x, y);
}

static void cuda_dropout_backward(device *dev, int rows, int cols, float rate, dropout_key key,
                                  const int64_t *row_ids, const float *dy, float *dx) {
    cuda_dropout_apply(dev, rows, cols, rate, key, row_ids, dy, dx);
}

/* --- losses ------------------------------------------------------------------------------ */

static void cuda_softmax_cross_entropy(device *dev, int rows, int cols, const float *logits,
                                       const int32_t *labels, const float *targets, float scale,
                                       float *loss_sum, float *dlogits) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "softmax_cross_entropy");
    if (!scratch) return;
    CUDA_DEFER(backend,
               kernels_softmax_cross_entropy(backend->compute_stream, scratch, rows, cols, logits,
                                             labels, targets, scale, loss_sum, dlogits));
}

static void cuda_binary_cross_entropy(device *dev, int rows, int cols, const float *logits,
                                      const int32_t *labels, const float *targets, float scale,
                                      float *loss_sum, float *dlogits) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "binary_cross_entropy");
    if (!scratch) return;
    CUDA_DEFER(backend,
               kernels_binary_cross_entropy(backend->compute_stream, scratch, rows, cols, logits,
                                            labels, targets, scale, loss_sum, dlogits));
}

static void cuda_mean_squared_error(device *dev, int rows, int cols, const float *logits,
                                    const int32_t *labels, const float *targets, float scale,
                                    float *loss_sum, float *dlogits) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "mean_squared_error");
    if (!scratch) return;
    CUDA_DEFER(backend,
               kernels_mean_squared_error(backend->compute_stream, scratch, rows, cols, logits,
                                          labels, targets, scale, loss_sum, dlogits));
}

static void cuda_count_correct(device *dev, int rows, int cols, const float *logits,
                               const int32_t *labels, float *correct) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "count_correct");
    if (!scratch) return;
    CUDA_DEFER(backend, kernels_count_correct(backend->compute_stream, scratch, rows, cols, logits,
                                              labels, correct));
}

/* --- optimizers -------------------------------------------------------------------------- */

static void cuda_sgd_update(device *dev, size_t count, float *params, const float *grads,
                            float *velocity, float lr, float momentum, bool nesterov,
                            float weight_decay, bool first_step) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_sgd_update(backend->compute_stream, count, params, grads, velocity,
                                           lr, momentum, nesterov, weight_decay, first_step));
}

static void cuda_adamw_update(device *dev, size_t count, float *params, const float *grads,
                              float *m, float *v, float lr, float beta1, float beta2, float eps,
                              float weight_decay, int64_t step) {
    cuda_backend *backend = backend_of(dev);
    /* The per-step scalars exactly as device_cpu.c computes them (torch.optim.AdamW). */
    adamw_scalars scalars = adamw_scalars_for(lr, beta1, beta2, eps, weight_decay, step);
    CUDA_DEFER(backend, kernels_adamw_update(backend->compute_stream, count, params, grads, m, v,
                                             &scalars));
}

/* --- the layer engine's operations ------------------------------------------------------ */

typedef cudaError_t (*cast_batched_function)(cudaStream_t stream, int batch, int rows, int cols,
                                             const float *src, int ld, int64_t stride, void *dst);

/* C_b = alpha op(A_b) op(B_b) + beta C_b for b < batch, one cuBLAS strided-batched GEMM with
 * the operands swapped as in cuda_gemm (strides carry over unchanged: they count floats).
 * 16-bit operands are cast entry by entry into the packed cast buffers, so those must hold one
 * entry of each operand (m * k and k * n floats, what gemm needs too); the batch then runs in
 * chunks of as many entries as the buffers hold (one chunk when set_precision's
 * max_operand_floats covers batch * m * k and batch * k * n). A shared operand (stride 0) is
 * cast once and read with stride 0. */
static void cuda_gemm_strided_batched(device *dev, bool transpose_a, bool transpose_b, int m, int n,
                                      int k, float alpha, const float *a, int lda, int64_t stride_a,
                                      const float *b, int ldb, int64_t stride_b, float beta,
                                      float *c, int ldc, int64_t stride_c, int batch) {
    cuda_backend *backend = backend_of(dev);
    cudaStream_t stream = backend->compute_stream;
    if (m <= 0 || n <= 0 || batch <= 0) return;
    if (k <= 0) {
        CUDA_DEFER(backend,
                   kernels_gemm_empty_batched(stream, batch, m, n, beta, c, ldc, stride_c));
        return;
    }
    cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (!precision_is_16_bit(backend->precision)) {
        CUBLAS_DEFER(backend,
                     cublasSgemmStridedBatched(backend->cublas, op_b, op_a, n, m, k, &alpha, b, ldb,
                                               (long long)stride_b, a, lda, (long long)stride_a,
                                               &beta, c, ldc, (long long)stride_c, batch));
        return;
    }
    int a_rows = transpose_a ? k : m, a_cols = transpose_a ? m : k;
    int b_rows = transpose_b ? n : k, b_cols = transpose_b ? k : n;
    size_t a_floats = (size_t)m * (size_t)k, b_floats = (size_t)k * (size_t)n;
    size_t capacity = backend->cast_capacity_floats;
    if (a_floats > capacity || b_floats > capacity) {
        char why[224];
        snprintf(why, sizeof why,
                 "batch entries of %zu and %zu floats exceed the %s workspace of %zu floats each "
                 "(set_precision's max_operand_floats is too small)",
                 a_floats, b_floats, precision_kind_name(backend->precision), capacity);
        cuda_defer(backend, DDT_ERR_INTERNAL, "gemm_strided_batched", why, __FILE__, __LINE__);
        return;
    }
    int chunk = batch;
    if (stride_a != 0 && (size_t)chunk > capacity / a_floats) chunk = (int)(capacity / a_floats);
    if (stride_b != 0 && (size_t)chunk > capacity / b_floats) chunk = (int)(capacity / b_floats);
    bool bf16 = backend->precision == PRECISION_BF16;
    cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    cast_batched_function cast = bf16 ? kernels_cast_bf16_batched : kernels_cast_fp16_batched;
    if (stride_a == 0)
        CUDA_DEFER(backend, cast(stream, 1, a_rows, a_cols, a, lda, 0, backend->cast_a));
    if (stride_b == 0)
        CUDA_DEFER(backend, cast(stream, 1, b_rows, b_cols, b, ldb, 0, backend->cast_b));
    long long packed_a = stride_a != 0 ? (long long)a_floats : 0;
    long long packed_b = stride_b != 0 ? (long long)b_floats : 0;
    /* Each chunk's casts overwrite the buffers only after the previous chunk's GEMM has read
     * them: everything runs in order on the compute stream. */
    for (int first = 0; first < batch; first += chunk) {
        int count = batch - first < chunk ? batch - first : chunk;
        if (stride_a != 0)
            CUDA_DEFER(backend, cast(stream, count, a_rows, a_cols, a + (int64_t)first * stride_a,
                                     lda, stride_a, backend->cast_a));
        if (stride_b != 0)
            CUDA_DEFER(backend, cast(stream, count, b_rows, b_cols, b + (int64_t)first * stride_b,
                                     ldb, stride_b, backend->cast_b));
        CUBLAS_DEFER(backend,
                     cublasGemmStridedBatchedEx(
                         backend->cublas, op_b, op_a, n, m, k, &alpha, backend->cast_b, type,
                         b_cols, packed_b, backend->cast_a, type, a_cols, packed_a, &beta,
                         c + (int64_t)first * stride_c, CUDA_R_32F, ldc, (long long)stride_c, count,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

static void cuda_add(device *dev, size_t count, const float *a, const float *b, float *out) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_add(backend->compute_stream, count, a, b, out));
}

/* dims and perm are read on the host, at the call (they describe the tensor, like sizes). */
static void cuda_permute(device *dev, int rank, const int *dims, const int *perm, const float *in,
                         float *out) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_permute(backend->compute_stream, rank, dims, perm, in, out));
}

static void cuda_im2col(device *dev, const conv_geometry *g, int samples, const float *x,
                        float *cols) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_im2col(backend->compute_stream, g, samples, x, cols));
}

static void cuda_col2im(device *dev, const conv_geometry *g, int samples, const float *cols,
                        float *dx) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_col2im(backend->compute_stream, g, samples, cols, dx));
}

static void cuda_pool2d_forward(device *dev, pool_kind kind, const conv_geometry *g, int samples,
                                const float *x, float *y) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_pool2d_forward(backend->compute_stream, kind, g, samples, x, y));
}

static void cuda_pool2d_backward(device *dev, pool_kind kind, const conv_geometry *g, int samples,
                                 const float *x, const float *y, const float *dy, float *dx) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend,
               kernels_pool2d_backward(backend->compute_stream, kind, g, samples, x, y, dy, dx));
}

static void cuda_batchnorm_forward(device *dev, int samples, int channels, int spatial,
                                   const float *x, const float *gamma, const float *beta, float eps,
                                   bool training, float momentum, float *running_mean,
                                   float *running_var, float *mean, float *invstd, float *y) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_batchnorm_forward(backend->compute_stream, samples, channels,
                                                  spatial, x, gamma, beta, eps, training, momentum,
                                                  running_mean, running_var, mean, invstd, y));
}

static void cuda_batchnorm_backward(device *dev, int samples, int channels, int spatial,
                                    const float *x, const float *dy, const float *gamma,
                                    const float *mean, const float *invstd, float *dx,
                                    float *dgamma, float *dbeta) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend,
               kernels_batchnorm_backward(backend->compute_stream, samples, channels, spatial, x,
                                          dy, gamma, mean, invstd, dx, dgamma, dbeta));
}

static void cuda_layernorm_forward(device *dev, int rows, int cols, const float *x,
                                   const float *gamma, const float *beta, float eps, float *y,
                                   float *mean, float *rstd) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_layernorm_forward(backend->compute_stream, rows, cols, x, gamma,
                                                  beta, eps, y, mean, rstd));
}

static void cuda_layernorm_backward(device *dev, int rows, int cols, const float *x,
                                    const float *dy, const float *gamma, const float *mean,
                                    const float *rstd, float *dx, float *dgamma, float *dbeta) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "layernorm_backward");
    if (!scratch) return;
    CUDA_DEFER(backend, kernels_layernorm_backward(backend->compute_stream, scratch, rows, cols, x,
                                                   dy, gamma, mean, rstd, dx, dgamma, dbeta));
}

static void cuda_rmsnorm_forward(device *dev, int rows, int cols, const float *x,
                                 const float *gamma, float eps, float *y, float *rstd) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_rmsnorm_forward(backend->compute_stream, rows, cols, x, gamma, eps,
                                                y, rstd));
}

static void cuda_rmsnorm_backward(device *dev, int rows, int cols, const float *x, const float *dy,
                                  const float *gamma, const float *rstd, float *dx, float *dgamma) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "rmsnorm_backward");
    if (!scratch) return;
    CUDA_DEFER(backend, kernels_rmsnorm_backward(backend->compute_stream, scratch, rows, cols, x,
                                                 dy, gamma, rstd, dx, dgamma));
}

static void cuda_embedding_forward(device *dev, int rows, int cols, const int32_t *ids,
                                   const float *table, float *y) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend,
               kernels_embedding_forward(backend->compute_stream, rows, cols, ids, table, y));
}

static void cuda_embedding_backward(device *dev, int rows, int cols, const int32_t *ids,
                                    const float *dy, float *dtable) {
    cuda_backend *backend = backend_of(dev);
    const kernels_scratch *scratch = scratch_of(backend, "embedding_backward");
    if (!scratch) return;
    CUDA_DEFER(backend, kernels_embedding_backward(backend->compute_stream, scratch, rows, cols,
                                                   ids, dy, dtable));
}

static void cuda_causal_softmax_forward(device *dev, int groups, int t, float scale, const float *x,
                                        float *y) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend,
               kernels_causal_softmax_forward(backend->compute_stream, groups, t, scale, x, y));
}

static void cuda_causal_softmax_backward(device *dev, int groups, int t, float scale,
                                         const float *y, const float *dy, float *dx) {
    cuda_backend *backend = backend_of(dev);
    CUDA_DEFER(backend, kernels_causal_softmax_backward(backend->compute_stream, groups, t, scale,
                                                        y, dy, dx));
}

/* --- checks and synchronisation ---------------------------------------------------------- */

static ddt_status cuda_check_finite(device *dev, size_t count, const float *x, bool *all_finite) {
    cuda_backend *backend = backend_of(dev);
    *all_finite = false;
    DDT_CHECK(cuda_deferred(dev));
    int *flag = &backend->device_results->nonfinite;
    CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof *flag, backend->compute_stream));
    CUDA_CHECK(kernels_find_nonfinite(backend->compute_stream, count, x, flag));
    CUDA_CHECK(cudaMemcpyAsync(&backend->host_results->nonfinite, flag, sizeof *flag,
                               cudaMemcpyDeviceToHost, backend->compute_stream));
    CUDA_CHECK(cudaStreamSynchronize(backend->compute_stream));
    *all_finite = backend->host_results->nonfinite == 0;
    return DDT_OK;
}

static ddt_status cuda_sum_of_squares(device *dev, size_t count, const float *x, double *sum) {
    cuda_backend *backend = backend_of(dev);
    *sum = NAN;
    DDT_CHECK(cuda_deferred(dev));
    const kernels_scratch *scratch = scratch_of(backend, "sum_of_squares");
    DDT_CHECK(cuda_deferred(dev)); /* says why when there is no scratch */
    double *total = &backend->device_results->sum_of_squares;
    CUDA_CHECK(cudaMemsetAsync(total, 0, sizeof *total, backend->compute_stream));
    CUDA_CHECK(kernels_sum_of_squares(backend->compute_stream, scratch, count, x, total));
    CUDA_CHECK(cudaMemcpyAsync(&backend->host_results->sum_of_squares, total, sizeof *total,
                               cudaMemcpyDeviceToHost, backend->compute_stream));
    CUDA_CHECK(cudaStreamSynchronize(backend->compute_stream));
    *sum = backend->host_results->sum_of_squares;
    return DDT_OK;
}

/* Waits for the compute stream and for uploads in flight. */
static ddt_status cuda_synchronize(device *dev) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(cuda_deferred(dev));
    CUDA_CHECK(cudaStreamSynchronize(backend->compute_stream));
    CUDA_CHECK(cudaStreamSynchronize(backend->copy_stream));
    return DDT_OK;
}

/* --- precision --------------------------------------------------------------------------- */

/* One cast buffer: max_operand_floats 2-byte values, rounded as the allocator rounds, so that
 * precision_workspace_bytes() is exact both before and after the allocator's rounding. */
static size_t cast_buffer_bytes(size_t max_operand_floats) {
    if (max_operand_floats > SIZE_MAX / 2) return SIZE_MAX;
    return allocator_rounded_size(max_operand_floats * 2);
}

static size_t cuda_precision_workspace_bytes(device *dev, precision_kind precision,
                                             size_t max_operand_floats) {
    size_t bytes = CUBLAS_WORKSPACE_BYTES + allocator_rounded_size(backend_of(dev)->scratch_bytes);
    if (precision_is_16_bit(precision)) {
        size_t cast = cast_buffer_bytes(max_operand_floats);
        if (cast == SIZE_MAX || cast > (SIZE_MAX - bytes) / 2) return SIZE_MAX;
        bytes += 2 * cast;
    }
    return bytes;
}

/* Takes the cuBLAS workspace and the kernels' scratch (always: so they are counted and limited
 * like all device memory) and, for bf16/fp16, the two operand cast buffers from `alloc`. They
 * belong to the allocator: allocator_close() releases them, so the allocator must not be
 * destroyed while GEMMs may still run. A second call takes new buffers before returning the old
 * ones to the allocator it took them from; on failure the previous precision stays in force. */
static ddt_status cuda_set_precision(device *dev, precision_kind precision, allocator *alloc,
                                     size_t max_operand_floats) {
    cuda_backend *backend = backend_of(dev);
    if (precision != PRECISION_FP32 && precision != PRECISION_TF32 &&
        !precision_is_16_bit(precision))
        return ddt_error(DDT_ERR_USAGE, "unknown precision %d", (int)precision);
    if (!alloc) return ddt_error(DDT_ERR_INTERNAL, "set_precision needs an allocator");
    size_t cast_bytes = 0;
    if (precision_is_16_bit(precision)) {
        cast_bytes = cast_buffer_bytes(max_operand_floats);
        if (cast_bytes == SIZE_MAX)
            return ddt_error(DDT_ERR_MEMORY, "%s GEMM operands of %zu floats are too large",
                             precision_kind_name(precision), max_operand_floats);
    }
    ddt_status status = DDT_OK;
    void *workspace = NULL, *cast_a = NULL, *cast_b = NULL, *scratch = NULL;
    DDT_CHECK_GOTO(
        allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, CUBLAS_WORKSPACE_BYTES, &workspace),
        status, fail);
    DDT_CHECK_GOTO(
        allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, backend->scratch_bytes, &scratch),
        status, fail);
    if (cast_bytes) {
        DDT_CHECK_GOTO(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, cast_bytes, &cast_a),
                       status, fail);
        DDT_CHECK_GOTO(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, cast_bytes, &cast_b),
                       status, fail);
    }
    /* The workspace must stay after cublasSetStream (which resets it to cuBLAS's own pool):
     * the stream was bound at open and is never changed. */
    CUBLAS_CHECK_GOTO(cublasSetWorkspace(backend->cublas, workspace, CUBLAS_WORKSPACE_BYTES),
                      status, fail);
    cublasMath_t math =
        precision == PRECISION_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    CUBLAS_CHECK_GOTO(cublasSetMathMode(backend->cublas, math), status, fail_restore);

    /* Work already issued may still use the old buffers, but everything runs on the compute
     * stream, so whatever reuses them (also through it) runs after that work. */
    if (backend->workspace_allocator) {
        allocator_free(backend->workspace_allocator, backend->scratch_memory);
        allocator_free(backend->workspace_allocator, backend->cast_b);
        allocator_free(backend->workspace_allocator, backend->cast_a);
        allocator_free(backend->workspace_allocator, backend->cublas_workspace);
    }
    backend->precision = precision;
    backend->workspace_allocator = alloc;
    backend->cublas_workspace = workspace;
    backend->cast_a = cast_a;
    backend->cast_b = cast_b;
    backend->cast_capacity_floats = cast_bytes / 2;
    backend->scratch_memory = scratch;
    kernels_scratch_place(scratch, backend->sort_temp_bytes, &backend->scratch);
    return DDT_OK;

fail_restore:
    /* Put the previous workspace (or cuBLAS's own pool, via the stream) back. */
    if (backend->cublas_workspace)
        (void)cublasSetWorkspace(backend->cublas, backend->cublas_workspace,
                                 CUBLAS_WORKSPACE_BYTES);
    else
        (void)cublasSetStream(backend->cublas, backend->compute_stream);
fail:
    allocator_free(alloc, cast_b);
    allocator_free(alloc, cast_a);
    allocator_free(alloc, scratch);
    allocator_free(alloc, workspace);
    return status;
}

/* --- streams and the input path ---------------------------------------------------------- */

static void *cuda_native_stream(device *dev) {
    return (void *)backend_of(dev)->compute_stream;
}

static ddt_status cuda_host_alloc(device *dev, size_t bytes, void **out) {
    *out = NULL;
    CUDA_CHECK(cudaSetDevice(dev->ordinal));
    size_t size = bytes ? bytes : 64;
    void *pointer = NULL;
    /* Portable: page-locked for every context, whichever thread asks. */
    cudaError_t error = cudaHostAlloc(&pointer, size, cudaHostAllocPortable);
    if (error != cudaSuccess || !pointer) {
        (void)cudaGetLastError();
        return ddt_error(DDT_ERR_MEMORY,
                         "out of page-locked host memory: cudaHostAlloc of %zu bytes failed: %s",
                         bytes, cudaGetErrorString(error));
    }
    memset(pointer, 0, size);
    *out = pointer;
    return DDT_OK;
}

static void cuda_host_free(device *dev, void *pointer) {
    if (!pointer) return;
    if (cudaSetDevice(dev->ordinal) != cudaSuccess || cudaFreeHost(pointer) != cudaSuccess)
        (void)cudaGetLastError(); /* nothing to report to: the memory is gone either way */
}

static ddt_status check_buffer(int buffer) {
    if (buffer < 0 || buffer >= UPLOAD_BUFFERS)
        return ddt_error(DDT_ERR_INTERNAL, "upload buffer %d is not 0 or 1", buffer);
    return DDT_OK;
}

/* The copy overwrites device memory that compute work issued earlier may still read, so the
 * copy stream first waits for buffer_free[buffer]: recorded by upload_wait() of the other
 * buffer (after the work that used this one was issued), or, if this buffer is the one in use
 * or was never released, right now, after everything issued so far (the allocator's zero-fill
 * included). In the usual alternation (upload b+1 while b computes) that wait is long over. */
static ddt_status cuda_upload_async(device *dev, void *device_dst, const void *host_src,
                                    size_t bytes, int buffer) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(check_buffer(buffer));
    CUDA_CHECK(cudaSetDevice(dev->ordinal));
    if (!backend->buffer_free_recorded[buffer] || backend->current_buffer == buffer) {
        CUDA_CHECK(cudaEventRecord(backend->buffer_free[buffer], backend->compute_stream));
        backend->buffer_free_recorded[buffer] = true;
    }
    CUDA_CHECK(cudaStreamWaitEvent(backend->copy_stream, backend->buffer_free[buffer], 0));
    if (bytes)
        CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice,
                                   backend->copy_stream));
    CUDA_CHECK(cudaEventRecord(backend->upload_done[buffer], backend->copy_stream));
    return DDT_OK;
}

/* Compute work issued from now on waits for upload `buffer`; the other buffer is released
 * (everything that may read it has been issued), for the next upload into it.
 *
 * Called before every micro-batch, it is also where a failure of the operations that cannot
 * return one surfaces without costing a synchronisation: a failed launch recorded by
 * cuda_defer(), or a fault inside a kernel already run (a sticky error, which
 * cudaStreamQuery reports without waiting). So a failed step ends at the next micro-batch,
 * before its garbage is all-reduced, not at the next step that reports. */
static ddt_status cuda_upload_wait(device *dev, int buffer) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(check_buffer(buffer));
    DDT_CHECK(cuda_deferred(dev));
    CUDA_CHECK(cudaSetDevice(dev->ordinal));
    cudaError_t state = cudaStreamQuery(backend->compute_stream);
    if (state == cudaErrorNotReady) {
        /* Not an error: work is still running. Keep it out of cudaGetLastError(). */
        if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
    } else if (state != cudaSuccess) {
        return cuda_check_result(state,
                                 "an operation on the compute stream (found by cudaStreamQuery)",
                                 __FILE__, __LINE__);
    }
    int other = UPLOAD_BUFFERS - 1 - buffer;
    CUDA_CHECK(cudaEventRecord(backend->buffer_free[other], backend->compute_stream));
    backend->buffer_free_recorded[other] = true;
    CUDA_CHECK(cudaStreamWaitEvent(backend->compute_stream, backend->upload_done[buffer], 0));
    backend->current_buffer = buffer;
    return DDT_OK;
}

static ddt_status cuda_upload_host_done(device *dev, int buffer) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(check_buffer(buffer));
    CUDA_CHECK(cudaSetDevice(dev->ordinal));
    CUDA_CHECK(cudaEventSynchronize(backend->upload_done[buffer]));
    return DDT_OK;
}

/* --- timing ------------------------------------------------------------------------------ */

static ddt_status check_timer_slot(int slot) {
    if (slot < 0 || slot >= DEVICE_TIMER_SLOTS)
        return ddt_error(DDT_ERR_INTERNAL, "timer slot %d is not in [0, %d)", slot,
                         DEVICE_TIMER_SLOTS);
    return DDT_OK;
}

static ddt_status cuda_timer_mark(device *dev, int slot) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(check_timer_slot(slot));
    CUDA_CHECK(cudaEventRecord(backend->timers[slot], backend->compute_stream));
    return DDT_OK;
}

static ddt_status cuda_timer_elapsed(device *dev, int from, int to, double *seconds) {
    cuda_backend *backend = backend_of(dev);
    DDT_CHECK(check_timer_slot(from));
    DDT_CHECK(check_timer_slot(to));
    CUDA_CHECK(cudaEventSynchronize(backend->timers[to]));
    float milliseconds = 0;
    CUDA_CHECK(cudaEventElapsedTime(&milliseconds, backend->timers[from], backend->timers[to]));
    *seconds = 1e-3 * (double)milliseconds;
    return DDT_OK;
}

/* --- lifetime ---------------------------------------------------------------------------- */

/* Releases whatever part of a backend exists, in reverse order of cuda_open's steps. The
 * precision workspace belongs to the allocator and is not touched. */
static void cuda_backend_release(cuda_backend *backend) {
    if (!backend) return;
    if (backend->compute_stream) (void)cudaStreamSynchronize(backend->compute_stream);
    if (backend->copy_stream) (void)cudaStreamSynchronize(backend->copy_stream);
    if (backend->host_results) (void)cudaFreeHost(backend->host_results);
    if (backend->device_results) (void)cudaFree(backend->device_results);
    for (int i = DEVICE_TIMER_SLOTS - 1; i >= 0; i--)
        if (backend->timers[i]) (void)cudaEventDestroy(backend->timers[i]);
    for (int i = UPLOAD_BUFFERS - 1; i >= 0; i--) {
        if (backend->buffer_free[i]) (void)cudaEventDestroy(backend->buffer_free[i]);
        if (backend->upload_done[i]) (void)cudaEventDestroy(backend->upload_done[i]);
    }
    if (backend->cublas) (void)cublasDestroy(backend->cublas);
    if (backend->copy_stream) (void)cudaStreamDestroy(backend->copy_stream);
    if (backend->compute_stream) (void)cudaStreamDestroy(backend->compute_stream);
    (void)cudaGetLastError();
    free(backend);
}

static void cuda_close(device *dev) {
    if (!dev->backend) return;
    (void)cudaSetDevice(dev->ordinal);
    cuda_backend_release(dev->backend);
    dev->backend = NULL;
}

static const device_ops cuda_ops = {
    .name = "cuda",
    .memory_alloc = cuda_memory_alloc,
    .memory_free = cuda_memory_free,
    .memory_info = cuda_memory_info,
    .copy_host_to_device = cuda_copy_host_to_device,
    .copy_device_to_host = cuda_copy_device_to_host,
    .copy_device_to_device = cuda_copy_device_to_device,
    .fill_zero = cuda_fill_zero,
    .gemm = cuda_gemm,
    .gemm_fp32 = cuda_gemm_fp32,
    .bias_add = cuda_bias_add,
    .bias_gradient_accumulate = cuda_bias_gradient_accumulate,
    .scale = cuda_scale,
    .activation_forward = cuda_activation_forward,
    .activation_backward = cuda_activation_backward,
    .dropout_forward = cuda_dropout_forward,
    .dropout_backward = cuda_dropout_backward,
    .softmax_cross_entropy = cuda_softmax_cross_entropy,
    .binary_cross_entropy = cuda_binary_cross_entropy,
    .mean_squared_error = cuda_mean_squared_error,
    .count_correct = cuda_count_correct,
    .sgd_update = cuda_sgd_update,
    .adamw_update = cuda_adamw_update,
    .gemm_strided_batched = cuda_gemm_strided_batched,
    .add = cuda_add,
    .permute = cuda_permute,
    .im2col = cuda_im2col,
    .col2im = cuda_col2im,
    .pool2d_forward = cuda_pool2d_forward,
    .pool2d_backward = cuda_pool2d_backward,
    .batchnorm_forward = cuda_batchnorm_forward,
    .batchnorm_backward = cuda_batchnorm_backward,
    .layernorm_forward = cuda_layernorm_forward,
    .layernorm_backward = cuda_layernorm_backward,
    .rmsnorm_forward = cuda_rmsnorm_forward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .embedding_forward = cuda_embedding_forward,
    .embedding_backward = cuda_embedding_backward,
    .causal_softmax_forward = cuda_causal_softmax_forward,
    .causal_softmax_backward = cuda_causal_softmax_backward,
    .check_finite = cuda_check_finite,
    .sum_of_squares = cuda_sum_of_squares,
    .synchronize = cuda_synchronize,
    .set_precision = cuda_set_precision,
    .precision_workspace_bytes = cuda_precision_workspace_bytes,
    .native_stream = cuda_native_stream,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .upload_async = cuda_upload_async,
    .upload_wait = cuda_upload_wait,
    .upload_host_done = cuda_upload_host_done,
    .timer_mark = cuda_timer_mark,
    .timer_elapsed = cuda_timer_elapsed,
    .close = cuda_close,
};

int device_cuda_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError(); /* no driver, or no device: none */
        return 0;
    }
    return count;
}

/* "cuda:0 NVIDIA H100 80GB HBM3 (PCI 0000:1b:00.0, sm_90, 79.1 GiB)". */
static ddt_status cuda_describe(device *dev) {
    struct cudaDeviceProp properties;
    CUDA_CHECK(cudaGetDeviceProperties(&properties, dev->ordinal));
    char bus[32];
    if (cudaDeviceGetPCIBusId(bus, (int)sizeof bus, dev->ordinal) != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(bus, sizeof bus, "?");
    }
    for (char *p = bus; *p; p++)
        *p = (char)tolower((unsigned char)*p); /* as nvidia-smi and sysfs write it */
    snprintf(dev->identity, sizeof dev->identity, "%s", bus[0] != '?' ? bus : "");
    snprintf(dev->description, sizeof dev->description,
             "cuda:%d %.60s (PCI %.16s, sm_%d%d, %.1f GiB)", dev->ordinal, properties.name, bus,
             properties.major, properties.minor,
             (double)properties.totalGlobalMem / (double)((size_t)1 << 30));
    /* Tensor-core tf32 and bf16 GEMMs arrived with Ampere (compute capability 8.0). */
    dev->capabilities = DEVICE_CAPABILITY_FP16 | DEVICE_CAPABILITY_ASYNCHRONOUS |
                        DEVICE_CAPABILITY_PAGE_LOCKED;
    if (properties.major >= 8) dev->capabilities |= DEVICE_CAPABILITY_TF32 | DEVICE_CAPABILITY_BF16;
    return DDT_OK;
}

/* A failed cudaSetDevice: a missing GPU or driver is the user's to fix, anything else ours. */
static ddt_status cuda_select_failure(int ordinal, cudaError_t error) {
    (void)cudaGetLastError();
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        count = 0;
    }
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (error == cudaErrorInvalidDevice || error == cudaErrorNoDevice ||
        error == cudaErrorInsufficientDriver)
        return ddt_error(DDT_ERR_USAGE,
                         "cannot use GPU %d: %s (this process sees %d GPU%s; "
                         "CUDA_VISIBLE_DEVICES=%s)",
                         ordinal, cudaGetErrorString(error), count, count == 1 ? "" : "s",
                         visible ? visible : "(unset)");
    return cuda_check_result(error, "cudaSetDevice", __FILE__, __LINE__);
}

ddt_status device_cuda_open(device *dev) {
    /* The first CUDA call: it makes this GPU current (and creates its context), so nothing
     * below touches GPU 0 by default. */
    cudaError_t error = cudaSetDevice(dev->ordinal);
    if (error != cudaSuccess) return cuda_select_failure(dev->ordinal, error);
    ddt_status status = DDT_OK;
    cuda_backend *backend = calloc(1, sizeof *backend);
    if (!backend)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory opening cuda:%d", dev->ordinal);
    backend->current_buffer = -1;
    backend->precision = PRECISION_FP32;
    CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&backend->compute_stream, cudaStreamNonBlocking),
                    status, fail);
    CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&backend->copy_stream, cudaStreamNonBlocking), status,
                    fail);
    CUBLAS_CHECK_GOTO(cublasCreate(&backend->cublas), status, fail);
    CUBLAS_CHECK_GOTO(cublasSetStream(backend->cublas, backend->compute_stream), status, fail);
    for (int i = 0; i < UPLOAD_BUFFERS; i++) {
        CUDA_CHECK_GOTO(cudaEventCreateWithFlags(&backend->upload_done[i], cudaEventDisableTiming),
                        status, fail);
        CUDA_CHECK_GOTO(cudaEventCreateWithFlags(&backend->buffer_free[i], cudaEventDisableTiming),
                        status, fail);
    }
    for (int i = 0; i < DEVICE_TIMER_SLOTS; i++)
        CUDA_CHECK_GOTO(cudaEventCreate(&backend->timers[i]), status, fail);
    CUDA_CHECK_GOTO(cudaMalloc((void **)&backend->device_results, 256), status, fail);
    CUDA_CHECK_GOTO(kernels_scratch_bytes(&backend->scratch_bytes, &backend->sort_temp_bytes),
                    status, fail);
    CUDA_CHECK_GOTO(cudaHostAlloc((void **)&backend->host_results, sizeof(cuda_reductions),
                                  cudaHostAllocDefault),
                    status, fail);
    DDT_CHECK_GOTO(cuda_describe(dev), status, fail);
    dev->ops = &cuda_ops;
    dev->backend = backend;
    return DDT_OK;

fail:
    cuda_backend_release(backend);
    return status;
}
