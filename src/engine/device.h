/* device.h - the operations every compute backend provides, as functions.
 *
 * The engine (model, loss, optimizer), the feed and the trainer call only these functions
 * (device_gemm(dev, ...)), so they hold no #ifdef and run unchanged on the CPU backend
 * (OpenBLAS) and the CUDA backend (cuBLAS and kernels); each function calls the backend's
 * table (engine/device_backend.h, seen by backends and device.c only). What a backend can do
 * beyond the common operations, it declares as capabilities (device_supports()). All
 * pointers passed to an operation are *device* pointers obtained from the allocator
 * (src/engine/alloc.h), except where a parameter says "host".
 *
 * Conventions: matrices are row-major float32. An operation's output buffer must not overlap
 * its inputs (the CPU backend declares them restrict); scale, bias_add and the optimizer
 * updates work in place by design. Operations that cannot fail return void; operations that
 * can fail return ddt_status. Operations may run asynchronously on a device stream;
 * device_synchronize() waits for all of them. The CPU backend runs them at once.
 *
 * Backends register in device.c, the only file that knows which backends were built.
 *
 * Usage:
 *     device *dev;
 *     DDT_CHECK(device_open(DEVICE_KIND_CPU, 0, &dev));
 *     device_gemm(dev, false, true, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
 *     device_close(dev);
 */
#ifndef DDT_ENGINE_DEVICE_H
#define DDT_ENGINE_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

typedef enum device_kind {
    DEVICE_KIND_CPU,
    DEVICE_KIND_CUDA,
} device_kind;

typedef enum activation_kind {
    ACTIVATION_RELU,
    ACTIVATION_GELU, /* exact (erf) form, as PyTorch's default */
    ACTIVATION_TANH,
    ACTIVATION_SIGMOID,
    ACTIVATION_GELU_TANH, /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as GPT-2 */
} activation_kind;

/* The geometry of a 2-D convolution or pooling window over NCHW tensors (one sample:
 * channels x height x width, row-major). out_height = (height + 2 pad_h - kernel_h) / stride_h
 * + 1, likewise out_width (conv_geometry_make() computes them). Padding reads as zero for
 * convolutions and average pooling (counted in the divisor, PyTorch's count_include_pad) and
 * never wins a max pooling. conv_geometry_make() (model_spec.h) fills one in. */
typedef struct conv_geometry {
    int channels, height, width;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_h, pad_w;
    int out_height, out_width;
} conv_geometry;

typedef enum pool_kind {
    POOL_MAX,
    POOL_AVERAGE,
} pool_kind;

typedef struct device device;
struct allocator; /* engine/alloc.h; backends take their workspace from it */

/* The arithmetic of matrix products. Elementwise work, losses and optimizer updates stay in
 * fp32; parameters (master weights) and gradients are always fp32. Elementwise work written
 * as a product (convolution's bias and its gradient: rank-one products with a row of ones)
 * goes through device_gemm_fp32(), so it too stays fp32 in every mode. (PyTorch's autocast
 * differs here: it runs conv2d, bias included, in 16 bits.) */
typedef enum precision_kind {
    PRECISION_FP32, /* plain fp32 */
    PRECISION_TF32, /* fp32 storage, TF32 tensor-core products (CUDA) */
    PRECISION_BF16, /* GEMM operands rounded to bf16, fp32 accumulation and output (CUDA) */
    PRECISION_FP16, /* GEMM operands rounded to fp16, fp32 accumulation; needs loss scaling */
} precision_kind;

/* Keys dropout's random mask so that it depends on (seed, step, layer, global row, unit) only. */
typedef struct dropout_key {
    uint64_t seed;
    int64_t step;
    int layer;
} dropout_key;

/* What a backend can do beyond the operations every backend has (device_supports()): a
 * caller asks before relying on it, so a missing capability is a clear message, not a
 * failure halfway. */
typedef enum device_capability {
    DEVICE_CAPABILITY_TF32 = 1 << 0,         /* --precision tf32 */
    DEVICE_CAPABILITY_BF16 = 1 << 1,         /* --precision bf16 */
    DEVICE_CAPABILITY_FP16 = 1 << 2,         /* --precision fp16 */
    DEVICE_CAPABILITY_ASYNCHRONOUS = 1 << 3, /* work runs on a stream, after the call returns:
                                              * time it with timer marks, not the host clock */
    DEVICE_CAPABILITY_PAGE_LOCKED = 1 << 4,  /* host_alloc gives page-locked memory */
} device_capability;

bool device_supports(const device *dev, device_capability capability);
/* The precision's capability (PRECISION_FP32: 0, which every backend has). */
device_capability precision_capability(precision_kind precision);

/* ---- the operations: each calls the backend's table (engine/device_backend.h) ---------- */


/* --- memory: raw allocation (only the allocator calls these) and how much there is -------- */
ddt_status device_memory_alloc(device *dev, size_t bytes, void **out);
void device_memory_free(device *dev, void *pointer);
/* *total_bytes = all memory of the device as this process may use it, *free_bytes = how
 * much of it could be allocated now (host values). CPU: physical memory, or the cgroup
 * memory.max of this process where smaller; free is MemAvailable from /proc/meminfo,
 * capped by the cgroup's headroom. CUDA: cudaMemGetInfo. Used to resolve a fractional
 * --device-memory-limit and to refuse a preallocation that cannot succeed. A backend that
 * cannot tell answers DDT_ERR_USAGE (the allocator then skips those checks). */
ddt_status device_memory_info(device *dev, size_t *total_bytes, size_t *free_bytes);

/* --- copies ---------------------------------------------------------------------------- */
ddt_status device_copy_host_to_device(device *dev, void *device_dst, const void *host_src, size_t bytes);
ddt_status device_copy_device_to_host(device *dev, void *host_dst, const void *device_src, size_t bytes);
void device_copy_device_to_device(device *dev, void *dst, const void *src, size_t bytes);
void device_fill_zero(device *dev, void *dst, size_t bytes);

/* --- dense algebra --------------------------------------------------------------------- */
/* C[m x n] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T; row-major with leading
 * dimensions lda, ldb, ldc (as cblas_sgemm with CblasRowMajor). */
void device_gemm(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* The same product in plain fp32 whatever the precision mode (no TF32, no 16-bit operands):
 * for elementwise work written as a product, which device.h keeps in fp32. */
void device_gemm_fp32(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* y[r][c] += bias[c] for a rows x cols matrix. */
void device_bias_add(device *dev, int rows, int cols, float *y, const float *bias);
/* bias_gradient[c] += sum over r of dy[r][c]. */
void device_bias_gradient_accumulate(device *dev, int rows, int cols, const float *dy, float *bias_gradient);
/* x[i] *= alpha for i < count. */
void device_scale(device *dev, size_t count, float alpha, float *x);

/* --- elementwise layers ---------------------------------------------------------------- */
void device_activation_forward(device *dev, activation_kind kind, size_t count, const float *x, float *y);
/* dx = dy * f'(x); y = f(x) is passed too so backends may use whichever is cheaper. */
void device_activation_backward(device *dev, activation_kind kind, size_t count, const float *x, const float *y, const float *dy, float *dx);
/* Inverted dropout: y = x * keep / (1 - rate), where, with all arithmetic in uint64_t,
 *     unit = row_ids[r] * cols + c
 *     keep = rng_uniform(rng_hash4(key.seed, RNG_PURPOSE_DROPOUT, key.step,
 *                                  ((uint64_t)key.layer << 40) ^ unit)) >= rate
 * so a unit's mask depends on (seed, step, layer, global row, unit) only, never on the
 * row's position in the batch; layers' masks are distinct while rows * cols < 2^40.
 * rate 0 is the identity. row_ids are global dataset rows (device int64). */
void device_dropout_forward(device *dev, int rows, int cols, float rate, dropout_key key, const int64_t *row_ids, const float *x, float *y);
/* dx = dy * keep / (1 - rate), with the same mask as the forward pass. */
void device_dropout_backward(device *dev, int rows, int cols, float rate, dropout_key key, const int64_t *row_ids, const float *dy, float *dx);

/* --- losses ---------------------------------------------------------------------------- */
/* Each loss takes logits (rows x cols) and either class ids (int32, one per row) or float
 * targets (rows x cols); exactly one of labels/targets is non-NULL. It adds the sum over
 * rows of the per-sample loss, times `scale`, to *loss_sum (a device float), and, if
 * dlogits is non-NULL, writes d(scale * sum loss)/d logits into it. `scale` is 1/global
 * batch during training, so gradients come out normalised by the global batch. */
void device_softmax_cross_entropy(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits);
/* Binary cross-entropy on sigmoid(logits), computed stably from the logits. With class
 * ids, cols must be 1 and labels are 0 or 1. */
void device_binary_cross_entropy(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits);
/* Mean over cols of the squared error, summed over rows; class ids mean one-hot targets. */
void device_mean_squared_error(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits);
/* *correct += number of rows whose argmax(logits) equals labels[r] (cols > 1), or whose
 * (logit > 0) equals labels[r] (cols == 1). correct is a device float. */
void device_count_correct(device *dev, int rows, int cols, const float *logits, const int32_t *labels, float *correct);

/* --- optimizers (one call updates the whole contiguous parameter buffer) --------------- */
/* PyTorch SGD semantics: g = grad + weight_decay * p; v = momentum * v + g (v = g on the
 * first step, signalled by first_step); g = nesterov ? g + momentum * v : v (if momentum
 * != 0); p -= lr * g. velocity may be NULL when momentum == 0. */
void device_sgd_update(device *dev, size_t count, float *params, const float *grads, float *velocity, float lr, float momentum, bool nesterov, float weight_decay, bool first_step);
/* PyTorch AdamW semantics, step counted from 1: p -= lr * weight_decay * p; m, v moments;
 * p -= lr * m_hat / (sqrt(v_hat) + eps). */
void device_adamw_update(device *dev, size_t count, float *params, const float *grads, float *m, float *v, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step);

/* --- the layer engine's operations (engine/layers.c composes them) ---------------------- */
/* For b < batch: C_b = alpha * op(A_b) * op(B_b) + beta * C_b, with X_b = x + b * stride_x
 * (strides in floats; stride_a or stride_b may be 0 to share one operand; the C_b must not
 * overlap). Row-major, as device_gemm. */
void device_gemm_strided_batched(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, int64_t stride_a, const float *b, int ldb, int64_t stride_b, float beta, float *c, int ldc, int64_t stride_c, int batch);
/* out[i] = a[i] + b[i] for i < count; out may be a or b. */
void device_add(device *dev, size_t count, const float *a, const float *b, float *out);
/* out = in with its axes permuted: in has `rank` (1..6) axes of sizes dims[], row-major; out's
 * axis i is in's axis perm[i], so out's sizes are dims[perm[i]]. in and out do not overlap. */
void device_permute(device *dev, int rank, const int *dims, const int *perm, const float *in, float *out);
/* Unfolds convolution windows: x is `samples` NCHW samples of geometry g; cols is a
 * (channels * kernel_h * kernel_w) x (samples * out_height * out_width) row-major matrix whose
 * row (c, i, j) (c slowest) and column (s, oh, ow) (s slowest) hold
 * x[s][c][oh * stride_h - pad_h + i][ow * stride_w - pad_w + j], or 0 in the padding. */
void device_im2col(device *dev, const conv_geometry *g, int samples, const float *x, float *cols);
/* The adjoint of im2col: dx (overwritten) = the sum, for every element of cols, of its value
 * at the x position im2col read it from; padding positions are dropped. Deterministic. */
void device_col2im(device *dev, const conv_geometry *g, int samples, const float *cols, float *dx);
/* y ([samples][channels][out_height][out_width]) = the max or average of each window of x. */
void device_pool2d_forward(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, float *y);
/* dx (overwritten) from dy: max pooling routes each window's gradient to the first position
 * (in row-major window order) holding the window's maximum (y is that maximum); average
 * pooling spreads it evenly over the window's kernel_h * kernel_w positions. Deterministic. */
void device_pool2d_backward(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, const float *y, const float *dy, float *dx);
/* Batch normalisation over x[samples][channels][spatial] (spatial = H*W, 1 after a dense
 * layer), per channel c. Training: mean[c], and invstd[c] = 1/sqrt(var + eps) with var the
 * biased variance over samples*spatial values, are written; running_mean and running_var
 * (unbiased variance) move by `momentum` towards them as PyTorch's BatchNorm2d does. Not
 * training: mean and invstd are computed from the running statistics instead (and written).
 * y = (x - mean) * invstd * gamma + beta. Sums in double, in a fixed order. */
void device_batchnorm_forward(device *dev, int samples, int channels, int spatial, const float *x, const float *gamma, const float *beta, float eps, bool training, float momentum, float *running_mean, float *running_var, float *mean, float *invstd, float *y);
/* The training-mode backward: dx (overwritten); dgamma[c] and dbeta[c] are added to. */
void device_batchnorm_backward(device *dev, int samples, int channels, int spatial, const float *x, const float *dy, const float *gamma, const float *mean, const float *invstd, float *dx, float *dgamma, float *dbeta);
/* Layer normalisation of each of `rows` rows of `cols` values: mean[r], rstd[r] =
 * 1/sqrt(biased var + eps) written, y = (x - mean) * rstd * gamma + beta. */
void device_layernorm_forward(device *dev, int rows, int cols, const float *x, const float *gamma, const float *beta, float eps, float *y, float *mean, float *rstd);
/* dx (overwritten); dgamma and dbeta (cols each) are added to, summing rows in order. */
void device_layernorm_backward(device *dev, int rows, int cols, const float *x, const float *dy, const float *gamma, const float *mean, const float *rstd, float *dx, float *dgamma, float *dbeta);
/* y[r][:] = table[ids[r]][:] for r < rows (ids: device int32, each in [0, table rows)). */
void device_embedding_forward(device *dev, int rows, int cols, const int32_t *ids, const float *table, float *y);
/* dtable[ids[r]][:] += dy[r][:], adding rows in increasing r for every table row (so the
 * result does not depend on the backend's scheduling). */
void device_embedding_backward(device *dev, int rows, int cols, const int32_t *ids, const float *dy, float *dtable);
/* For each of `groups` t x t matrices: y[i][j] = exp(scale x[i][j] - max) / sum over j' <= i,
 * for j <= i, and 0 for j > i (causal attention's masked softmax; x above the diagonal is
 * never read). */
void device_causal_softmax_forward(device *dev, int groups, int t, float scale, const float *x, float *y);
/* dx[i][j] = scale * y[i][j] * (dy[i][j] - sum over j' <= i of y[i][j'] dy[i][j']) for j <= i,
 * 0 above the diagonal; dx overwritten. */
void device_causal_softmax_backward(device *dev, int groups, int t, float scale, const float *y, const float *dy, float *dx);

/* --- checks and synchronisation -------------------------------------------------------- */
/* *all_finite (host) = no NaN or Inf among x[0..count). May synchronise. */
ddt_status device_check_finite(device *dev, size_t count, const float *x, bool *all_finite);
/* *sum (host) = the sum of x[i]^2 over x[0..count), each square and the sum in double
 * (so the gradient norm of a large model neither overflows nor loses its small terms);
 * NaN or Inf when x holds one. May synchronise: the trainer calls it on reporting steps
 * only, for the gradient norm. */
ddt_status device_sum_of_squares(device *dev, size_t count, const float *x, double *sum);
ddt_status device_synchronize(device *dev);

/* --- precision, streams and the input path ---------------------------------------------- */
/* Selects the GEMM arithmetic. Backends that need scratch (operand casts, the cuBLAS
 * workspace) take it from `alloc` (component WORKSPACE) here, once, sized for operands of
 * at most max_operand_floats floats. DDT_ERR_USAGE, naming the backend and --precision, if
 * it lacks the capability (device_supports(); the CPU backend has fp32 only). */
ddt_status device_set_precision(device *dev, precision_kind precision, struct allocator *alloc, size_t max_operand_floats);
/* Bytes set_precision() will take from the allocator (for memory plans). */
size_t device_precision_workspace_bytes(device *dev, precision_kind precision, size_t max_operand_floats);
/* The backend's compute stream as an opaque handle (cudaStream_t), or NULL (CPU). Work on
 * it runs in the order issued. */
void *device_native_stream(device *dev);
/* Host memory for the input path: page-locked (cudaHostAlloc) where the backend copies
 * from it asynchronously, ordinary aligned memory on CPU. */
ddt_status device_host_alloc(device *dev, size_t bytes, void **out);
void device_host_free(device *dev, void *pointer);
/* Double-buffered uploads: upload_async() starts copying host memory to device memory on
 * a copy stream, as input buffer `buffer` (0 or 1), so the next micro-batch travels while
 * the current one computes. The copy is ordered after all work issued on the compute
 * stream so far (so it cannot overwrite a buffer that earlier compute still reads): issue
 * the upload of micro-batch m+1 after the compute of m-1 and before the compute of m.
 * upload_wait() makes the compute stream wait for that copy (it does not block the host);
 * it also returns any failure an earlier operation recorded, so a failed step ends at the
 * next micro-batch without a synchronisation.
 * The host memory must stay untouched until upload_host_done() has returned for that
 * buffer. The CPU backend copies at once. */
ddt_status device_upload_async(device *dev, void *device_dst, const void *host_src, size_t bytes, int buffer);
ddt_status device_upload_wait(device *dev, int buffer);
/* Blocks until upload `buffer`'s copy has finished reading host memory. */
ddt_status device_upload_host_done(device *dev, int buffer);

/* --- timing on the device's own clock -------------------------------------------------- */
/* Host clocks around asynchronous work measure when it was issued, not how long it ran.
 * timer_mark() records, in timing slot `slot` (0 .. DEVICE_TIMER_SLOTS - 1), the point the
 * compute stream has reached: a timing event on GPUs; the host clock on the CPU backend,
 * whose work has finished when its operations return. timer_elapsed() gives the seconds
 * between two marks, waiting until the device has passed `to` (read marks a step or two
 * later and the wait is long over). A slot may be marked again once it has been read. */
ddt_status device_timer_mark(device *dev, int slot);
ddt_status device_timer_elapsed(device *dev, int from, int to, double *seconds);

#define DEVICE_TIMER_SLOTS 16

struct device {
    const struct device_ops *ops; /* the backend's table (engine/device_backend.h) */
    unsigned capabilities;        /* device_capability bits, set by the backend */
    device_kind kind;
    int ordinal;           /* which device of this kind (CUDA: the GPU index) */
    char description[128]; /* e.g. "cpu (OpenBLAS 0.3.21, kernel SkylakeX, 1 thread)" */
    /* What tells this device apart from the devices other processes on the node use: a GPU's
     * PCI bus id ("0000:1b:00.0"), the same whatever CUDA_VISIBLE_DEVICES calls it; "" for
     * the CPU, which every rank shares by design. */
    char identity[32];
    void *backend;         /* backend-private state */
};

/* Opens a backend. For DEVICE_KIND_CPU, `ordinal` is ignored. Returns DDT_ERR_USAGE with a
 * clear message if the backend was not built into this binary. The caller frees with
 * device_close(). */
ddt_status device_open(device_kind kind, int ordinal, device **out);
void device_close(device *dev);

/* --device: what the user asked for. */
typedef enum device_request {
    DEVICE_REQUEST_AUTO, /* a GPU when this process sees one, else the CPU */
    DEVICE_REQUEST_CPU,
    DEVICE_REQUEST_CUDA,
} device_request;

/* "auto", "cpu", "cuda". */
const char *device_request_name(device_request request);

/* Which backend and which device of it a rank uses: the GPU is local_rank modulo the GPUs
 * visible, so with CUDA_VISIBLE_DEVICES or Slurm's --gpus-per-task leaving each rank one
 * device, that is device 0. DDT_ERR_USAGE, naming --device, for cuda in a build without it
 * and for cuda where no GPU is visible. The one rule shared by every command that computes
 * (train, eval). */
ddt_status device_choose(device_request request, int local_rank, device_kind *kind,
                         int *ordinal);

/* True if this build contains the backend. */
bool device_kind_available(device_kind kind);
/* Devices of this kind visible to this process (CUDA: after CUDA_VISIBLE_DEVICES); 0 when the
 * backend is not built or no device or driver is present. */
int device_count(device_kind kind);
const char *precision_kind_name(precision_kind precision);
/* "fp32", "tf32", "bf16", "fp16"; DDT_ERR_USAGE otherwise. */
ddt_status precision_kind_parse(const char *text, precision_kind *out);
const char *device_kind_name(device_kind kind);

#endif
