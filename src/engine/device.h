/* device.h - the operations every compute backend provides, as functions.
 *
 * The engine (model, loss, optimizer), the feed and the trainer call only these functions
 * (device_gemm(dev, ...)), so they hold no #ifdef and run unchanged on the CPU backend
 * (OpenBLAS) and the CUDA backend (cuBLAS and kernels); each function calls the backend's
 * table (engine/device_backend.h, seen by backends and device.c only). The operations are
 * listed once, with their contracts, in engine/device_ops.def, from which the functions, the
 * table and the ids (device_op) come; a backend may leave an operation out
 * (device_supports_op()). What a backend can do beyond the operations, it declares as
 * capabilities (device_supports()). All pointers passed to an operation are *device* pointers
 * obtained from the allocator (src/engine/alloc.h), except where a parameter says "host".
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
/* One function per operation, device_NAME(dev, ...), declared from the list of operations,
 * engine/device_ops.def, which documents each: memory, copies, dense algebra, elementwise
 * layers, losses, optimizers, the layer engine's operations, checks and synchronisation,
 * precision, streams and the input path, timing. */
#define DEVICE_OP(type, name, parameters, arguments) type device_##name parameters;
#include "engine/device_ops.def"

/* Each operation's id, DEVICE_OP_NAME (DEVICE_OP_gemm for device_gemm), in the list's order. */
typedef enum device_op {
#define DEVICE_OP(type, name, parameters, arguments) DEVICE_OP_##name,
#include "engine/device_ops.def"
    DEVICE_OP_COUNT
} device_op;

/* Whether the backend provides the operation: a backend may leave one out (its table entry
 * NULL). The engine asks before it allocates anything (model_check_device()), so a model the
 * device cannot run is refused naming the operation; called anyway, a missing operation
 * fails as device_ops.def says, never silently. */
bool device_supports_op(const device *dev, device_op op);
/* The operation's name as in the list ("gemm"), or "unknown". */
const char *device_op_name(device_op op);

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
    /* The first void operation called that the backend lacks (its name), or NULL: the next
     * operation that returns a status fails, naming it (device.c). */
    const char *missing_op;
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
