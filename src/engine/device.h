/* device.h - the table of operations every compute backend provides.
 *
 * The engine (model, loss, optimizer) calls only these operations, so it holds no #ifdef and
 * runs unchanged on the CPU backend (OpenBLAS) and the CUDA backend (cuBLAS and kernels). All
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
 *     dev->ops->gemm(dev, false, true, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
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
} activation_kind;

typedef struct device device;
struct allocator; /* engine/alloc.h; backends take their workspace from it */

/* The arithmetic of matrix products. Elementwise work, losses and optimizer updates stay in
 * fp32; parameters (master weights) and gradients are always fp32. */
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

typedef struct device_ops {
    const char *name; /* "cpu", "cuda" */

    /* --- memory: raw allocation (only the allocator calls these) and how much there is ---- */
    ddt_status (*memory_alloc)(device *dev, size_t bytes, void **out);
    void (*memory_free)(device *dev, void *pointer);
    /* *total_bytes = all memory of the device as this process may use it, *free_bytes = how
     * much of it could be allocated now (host values). CPU: physical memory, or the cgroup
     * memory.max of this process where smaller; free is MemAvailable from /proc/meminfo,
     * capped by the cgroup's headroom. CUDA: cudaMemGetInfo. Used to resolve a fractional
     * --device-memory-limit and to refuse a preallocation that cannot succeed. May be NULL in
     * a backend that cannot tell (the allocator then skips those checks). */
    ddt_status (*memory_info)(device *dev, size_t *total_bytes, size_t *free_bytes);

    /* --- copies ---------------------------------------------------------------------------- */
    ddt_status (*copy_host_to_device)(device *dev, void *device_dst, const void *host_src,
                                      size_t bytes);
    ddt_status (*copy_device_to_host)(device *dev, void *host_dst, const void *device_src,
                                      size_t bytes);
    void (*copy_device_to_device)(device *dev, void *dst, const void *src, size_t bytes);
    void (*fill_zero)(device *dev, void *dst, size_t bytes);

    /* --- dense algebra --------------------------------------------------------------------- */
    /* C[m x n] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T; row-major with leading
     * dimensions lda, ldb, ldc (as cblas_sgemm with CblasRowMajor). */
    void (*gemm)(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
    /* y[r][c] += bias[c] for a rows x cols matrix. */
    void (*bias_add)(device *dev, int rows, int cols, float *y, const float *bias);
    /* bias_gradient[c] += sum over r of dy[r][c]. */
    void (*bias_gradient_accumulate)(device *dev, int rows, int cols, const float *dy,
                                     float *bias_gradient);
    /* x[i] *= alpha for i < count. */
    void (*scale)(device *dev, size_t count, float alpha, float *x);

    /* --- elementwise layers ---------------------------------------------------------------- */
    void (*activation_forward)(device *dev, activation_kind kind, size_t count, const float *x,
                               float *y);
    /* dx = dy * f'(x); y = f(x) is passed too so backends may use whichever is cheaper. */
    void (*activation_backward)(device *dev, activation_kind kind, size_t count, const float *x,
                                const float *y, const float *dy, float *dx);
    /* Inverted dropout: y = x * keep / (1 - rate), where, with all arithmetic in uint64_t,
     *     unit = row_ids[r] * cols + c
     *     keep = rng_uniform(rng_hash4(key.seed, RNG_PURPOSE_DROPOUT, key.step,
     *                                  ((uint64_t)key.layer << 40) ^ unit)) >= rate
     * so a unit's mask depends on (seed, step, layer, global row, unit) only, never on the
     * row's position in the batch; layers' masks are distinct while rows * cols < 2^40.
     * rate 0 is the identity. row_ids are global dataset rows (device int64). */
    void (*dropout_forward)(device *dev, int rows, int cols, float rate, dropout_key key,
                            const int64_t *row_ids, const float *x, float *y);
    /* dx = dy * keep / (1 - rate), with the same mask as the forward pass. */
    void (*dropout_backward)(device *dev, int rows, int cols, float rate, dropout_key key,
                             const int64_t *row_ids, const float *dy, float *dx);

    /* --- losses ---------------------------------------------------------------------------- */
    /* Each loss takes logits (rows x cols) and either class ids (int32, one per row) or float
     * targets (rows x cols); exactly one of labels/targets is non-NULL. It adds the sum over
     * rows of the per-sample loss, times `scale`, to *loss_sum (a device float), and, if
     * dlogits is non-NULL, writes d(scale * sum loss)/d logits into it. `scale` is 1/global
     * batch during training, so gradients come out normalised by the global batch. */
    void (*softmax_cross_entropy)(device *dev, int rows, int cols, const float *logits,
                                  const int32_t *labels, const float *targets, float scale,
                                  float *loss_sum, float *dlogits);
    /* Binary cross-entropy on sigmoid(logits), computed stably from the logits. With class
     * ids, cols must be 1 and labels are 0 or 1. */
    void (*binary_cross_entropy)(device *dev, int rows, int cols, const float *logits,
                                 const int32_t *labels, const float *targets, float scale,
                                 float *loss_sum, float *dlogits);
    /* Mean over cols of the squared error, summed over rows; class ids mean one-hot targets. */
    void (*mean_squared_error)(device *dev, int rows, int cols, const float *logits,
                               const int32_t *labels, const float *targets, float scale,
                               float *loss_sum, float *dlogits);
    /* *correct += number of rows whose argmax(logits) equals labels[r] (cols > 1), or whose
     * (logit > 0) equals labels[r] (cols == 1). correct is a device float. */
    void (*count_correct)(device *dev, int rows, int cols, const float *logits,
                          const int32_t *labels, float *correct);

    /* --- optimizers (one call updates the whole contiguous parameter buffer) --------------- */
    /* PyTorch SGD semantics: g = grad + weight_decay * p; v = momentum * v + g (v = g on the
     * first step, signalled by first_step); g = nesterov ? g + momentum * v : v (if momentum
     * != 0); p -= lr * g. velocity may be NULL when momentum == 0. */
    void (*sgd_update)(device *dev, size_t count, float *params, const float *grads,
                       float *velocity, float lr, float momentum, bool nesterov, float weight_decay,
                       bool first_step);
    /* PyTorch AdamW semantics, step counted from 1: p -= lr * weight_decay * p; m, v moments;
     * p -= lr * m_hat / (sqrt(v_hat) + eps). */
    void (*adamw_update)(device *dev, size_t count, float *params, const float *grads, float *m,
                         float *v, float lr, float beta1, float beta2, float eps,
                         float weight_decay, int64_t step);

    /* --- checks and synchronisation -------------------------------------------------------- */
    /* *all_finite (host) = no NaN or Inf among x[0..count). May synchronise. */
    ddt_status (*check_finite)(device *dev, size_t count, const float *x, bool *all_finite);
    /* *sum (host) = the sum of x[i]^2 over x[0..count), each square and the sum in double
     * (so the gradient norm of a large model neither overflows nor loses its small terms);
     * NaN or Inf when x holds one. May synchronise: the trainer calls it on reporting steps
     * only, for the gradient norm. */
    ddt_status (*sum_of_squares)(device *dev, size_t count, const float *x, double *sum);
    ddt_status (*synchronize)(device *dev);

    /* Backend teardown, called by device_close(). */
    /* --- precision, streams and the input path (added for the CUDA backend) ---------------- */
    /* Selects the GEMM arithmetic. Backends that need scratch (operand casts, the cuBLAS
     * workspace) take it from `alloc` (component WORKSPACE) here, once, sized for operands of
     * at most max_operand_floats floats. DDT_ERR_USAGE, saying so, if the backend lacks it
     * (the CPU backend supports PRECISION_FP32 only). */
    ddt_status (*set_precision)(device *dev, precision_kind precision, struct allocator *alloc,
                                size_t max_operand_floats);
    /* Bytes set_precision() will take from the allocator (for memory plans). */
    size_t (*precision_workspace_bytes)(device *dev, precision_kind precision,
                                        size_t max_operand_floats);
    /* The backend's compute stream as an opaque handle (cudaStream_t), or NULL (CPU). Work on
     * it runs in the order issued. */
    void *(*native_stream)(device *dev);
    /* Host memory for the input path: page-locked (cudaHostAlloc) where the backend copies
     * from it asynchronously, ordinary aligned memory on CPU. */
    ddt_status (*host_alloc)(device *dev, size_t bytes, void **out);
    void (*host_free)(device *dev, void *pointer);
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
    ddt_status (*upload_async)(device *dev, void *device_dst, const void *host_src, size_t bytes,
                               int buffer);
    ddt_status (*upload_wait)(device *dev, int buffer);
    /* Blocks until upload `buffer`'s copy has finished reading host memory. */
    ddt_status (*upload_host_done)(device *dev, int buffer);

    /* --- timing on the device's own clock -------------------------------------------------- */
    /* Host clocks around asynchronous work measure when it was issued, not how long it ran.
     * timer_mark() records, in timing slot `slot` (0 .. DEVICE_TIMER_SLOTS - 1), the point the
     * compute stream has reached: a timing event on GPUs; the host clock on the CPU backend,
     * whose work has finished when its operations return. timer_elapsed() gives the seconds
     * between two marks, waiting until the device has passed `to` (read marks a step or two
     * later and the wait is long over). A slot may be marked again once it has been read. */
    ddt_status (*timer_mark)(device *dev, int slot);
    ddt_status (*timer_elapsed)(device *dev, int from, int to, double *seconds);

    void (*close)(device *dev);
} device_ops;

#define DEVICE_TIMER_SLOTS 16

struct device {
    const device_ops *ops;
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

/* The CPU backend's constructor (src/engine/device_cpu.c); used by device.c only. */
ddt_status device_cpu_open(device *dev);
/* The CUDA backend's constructor and device count (src/engine/cuda/, built into the plugin
 * libddtrain_cuda.so); device.c finds them with dlsym(). */
ddt_status device_cuda_open(device *dev);
int device_cuda_count(void);

/* A symbol of a backend built as a plugin (the CUDA plugin also carries the NCCL backend),
 * loading the plugin if needed; NULL if the backend is absent or could not be loaded. */
void *device_backend_symbol(device_kind kind, const char *name);
/* Why a backend cannot be used (not built, plugin not loadable), or NULL if it can. May load
 * the plugin. */
const char *device_backend_problem(device_kind kind);
/* The file a backend built as a plugin was loaded from, or, before it is loaded, the file it
 * would be loaded from (a bare file name: the library search path). NULL for backends that
 * are not plugins or not built. Loads nothing. */
const char *device_backend_plugin_path(device_kind kind);

#endif
