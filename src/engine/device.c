/* device.c - the backend registry and the public face of the operation table: which compute
 * backends this build contains, how to open them, and one function per operation
 * (device_gemm(dev, ...)) that calls the backend's table (engine/device_backend.h), generated
 * from the list of operations (engine/device_ops.def).
 *
 * The CUDA backend (with NCCL) lives in the plugin libddtrain_cuda.so (util/plugin.h), loaded
 * the first time a GPU is asked for, so ranks that never touch a GPU never map cuBLAS or NCCL.
 * Whether a GPU exists is first asked of the driver library alone: a machine without an
 * NVIDIA driver never loads the plugin. */
#include "engine/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/device_backend.h"
#include "util/plugin.h"

bool device_kind_available(device_kind kind) {
    switch (kind) {
    case DEVICE_KIND_CPU:
        return true;
    case DEVICE_KIND_CUDA:
        return plugin_built();
    }
    return false;
}

int device_count(device_kind kind) {
    switch (kind) {
    case DEVICE_KIND_CPU:
        return 1;
    case DEVICE_KIND_CUDA: {
        /* Without a driver there is no GPU: do not load the plugin just to learn that. */
        if (!plugin_driver_present()) return 0;
        int (*count)(void);
        *(void **)&count = plugin_symbol("device_cuda_count");
        return count ? count() : 0;
    }
    }
    return 0;
}

static const char *const precision_names[] = {
    [PRECISION_FP32] = "fp32",
    [PRECISION_TF32] = "tf32",
    [PRECISION_BF16] = "bf16",
    [PRECISION_FP16] = "fp16",
};

const char *precision_kind_name(precision_kind precision) {
    if ((unsigned)precision < sizeof precision_names / sizeof precision_names[0])
        return precision_names[precision];
    return "unknown";
}

ddt_status precision_kind_parse(const char *text, precision_kind *out) {
    for (unsigned i = 0; i < sizeof precision_names / sizeof precision_names[0]; i++) {
        if (text && strcmp(text, precision_names[i]) == 0) {
            *out = (precision_kind)i;
            return DDT_OK;
        }
    }
    return ddt_error(DDT_ERR_USAGE, "unknown precision '%s': use fp32, tf32, bf16 or fp16",
                     text ? text : "");
}

const char *device_kind_name(device_kind kind) {
    switch (kind) {
    case DEVICE_KIND_CPU:
        return "cpu";
    case DEVICE_KIND_CUDA:
        return "cuda";
    }
    return "unknown";
}

const char *device_request_name(device_request request) {
    switch (request) {
    case DEVICE_REQUEST_AUTO:
        return "auto";
    case DEVICE_REQUEST_CPU:
        return "cpu";
    case DEVICE_REQUEST_CUDA:
        return "cuda";
    }
    return "unknown";
}

ddt_status device_choose(device_request request, int local_rank, device_kind *kind,
                         int *ordinal) {
    *kind = DEVICE_KIND_CPU;
    *ordinal = 0;
    switch (request) {
    case DEVICE_REQUEST_CPU:
        return DDT_OK;
    case DEVICE_REQUEST_AUTO:
        if (device_count(DEVICE_KIND_CUDA) == 0) return DDT_OK;
        break;
    case DEVICE_REQUEST_CUDA:
        if (!device_kind_available(DEVICE_KIND_CUDA))
            return ddt_error(DDT_ERR_USAGE, "--device cuda: this ddtrain was built without CUDA "
                                            "(configure with -DDDTRAIN_CUDA=ON where nvcc and "
                                            "NCCL are installed)");
        if (device_count(DEVICE_KIND_CUDA) == 0) {
            const char *problem = plugin_problem();
            return ddt_error(DDT_ERR_USAGE, "--device cuda: no GPU is visible to this process (%s)",
                             problem ? problem : "check the driver and CUDA_VISIBLE_DEVICES");
        }
        break;
    default:
        return ddt_error(DDT_ERR_USAGE, "--device: unknown request %d", (int)request);
    }
    *kind = DEVICE_KIND_CUDA;
    *ordinal = (local_rank < 0 ? 0 : local_rank) % device_count(DEVICE_KIND_CUDA);
    return DDT_OK;
}

ddt_status device_open(device_kind kind, int ordinal, device **out) {
    *out = NULL;
    if (kind != DEVICE_KIND_CPU && kind != DEVICE_KIND_CUDA)
        return ddt_error(DDT_ERR_USAGE, "unknown device kind %d", (int)kind);
    ddt_status (*open_backend)(device *dev) = device_cpu_open;
    if (kind == DEVICE_KIND_CUDA) {
        *(void **)&open_backend = plugin_symbol("device_cuda_open");
        if (!open_backend) return ddt_error(DDT_ERR_USAGE, "%s", plugin_problem());
    }
    device *dev = calloc(1, sizeof *dev);
    if (!dev)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory opening the %s device",
                         device_kind_name(kind));
    dev->kind = kind;
    dev->ordinal = kind == DEVICE_KIND_CPU ? 0 : ordinal;
    ddt_status status = open_backend(dev);
    if (status != DDT_OK) {
        ddt_error_trace(__FILE__, __LINE__);
        free(dev);
        return status;
    }
    *out = dev;
    return DDT_OK;
}

void device_close(device *dev) {
    if (!dev) return;
    if (dev->ops && dev->ops->close) dev->ops->close(dev);
    free(dev);
}

/* ---- capabilities ------------------------------------------------------------------------ */

bool device_supports(const device *dev, device_capability capability) {
    return (dev->capabilities & (unsigned)capability) == (unsigned)capability;
}

device_capability precision_capability(precision_kind precision) {
    switch (precision) {
    case PRECISION_TF32:
        return DEVICE_CAPABILITY_TF32;
    case PRECISION_BF16:
        return DEVICE_CAPABILITY_BF16;
    case PRECISION_FP16:
        return DEVICE_CAPABILITY_FP16;
    case PRECISION_FP32:
        break;
    }
    return 0;
}

/* ---- the operations ---------------------------------------------------------------------- */

static const char *const op_names[] = {
#define DEVICE_OP(type, name, parameters, arguments) [DEVICE_OP_##name] = #name,
#include "engine/device_ops.def"
};

const char *device_op_name(device_op op) {
    if ((unsigned)op < sizeof op_names / sizeof op_names[0]) return op_names[op];
    return "unknown";
}

bool device_supports_op(const device *dev, device_op op) {
    switch (op) {
#define DEVICE_OP(type, name, parameters, arguments)                                               \
    case DEVICE_OP_##name:                                                                         \
        return dev->ops->name != NULL;
#include "engine/device_ops.def"
    case DEVICE_OP_COUNT:
        break;
    }
    return false;
}

/* An operation the backend lacks, called anyway (the engine checks a model's operations
 * before it runs, so this is a caller that did not ask): the error names it. */
static ddt_status op_missing(const device *dev, device_op op) {
    return ddt_error(DDT_ERR_USAGE, "the %s backend lacks the operation %s (device_%s)",
                     dev->ops->name, device_op_name(op), device_op_name(op));
}

/* A void operation cannot return the failure, so it is kept (the first) and the next
 * operation that returns a status reports it, as a backend's own deferred failures are. */
static void op_missing_later(device *dev, device_op op) {
    if (!dev->missing_op) dev->missing_op = device_op_name(op);
}

static ddt_status op_missed_earlier(const device *dev) {
    if (!dev->missing_op) return DDT_OK;
    return ddt_error(DDT_ERR_USAGE,
                     "the %s backend lacks the operation %s (device_%s), which was called earlier",
                     dev->ops->name, dev->missing_op, dev->missing_op);
}

/* The public function of each operation: a call through the backend's table, generated from
 * the list (engine/device_ops.def says what each kind does when the entry is missing). */
#define DEVICE_OP_VOID(name, parameters, arguments)                                                \
    void device_##name parameters {                                                                \
        if (dev->ops->name)                                                                        \
            dev->ops->name arguments;                                                              \
        else                                                                                       \
            op_missing_later(dev, DEVICE_OP_##name);                                               \
    }
#define DEVICE_OP_STATUS(name, parameters, arguments)                                              \
    ddt_status device_##name parameters {                                                          \
        if (!dev->ops->name) return op_missing(dev, DEVICE_OP_##name);                             \
        DDT_CHECK(op_missed_earlier(dev));                                                         \
        return dev->ops->name arguments;                                                           \
    }
#define DEVICE_OP_VALUE(type, name, parameters, arguments)                                         \
    type device_##name parameters {                                                                \
        return dev->ops->name ? dev->ops->name arguments : 0;                                      \
    }
#define DEVICE_OP_CUSTOM(type, name, parameters, arguments) /* written below */
#include "engine/device_ops.def"

/* Refuses a precision the device lacks before the backend sees it. */
ddt_status device_set_precision(device *dev, precision_kind precision, struct allocator *alloc,
                                size_t max_operand_floats) {
    if (!device_supports(dev, precision_capability(precision))) {
        if (dev->kind == DEVICE_KIND_CPU)
            return ddt_error(DDT_ERR_USAGE,
                             "--precision %s needs --device cuda (the CPU backend computes in "
                             "fp32)",
                             precision_kind_name(precision));
        return ddt_error(DDT_ERR_USAGE,
                         "--precision %s is not supported by %s (tf32 and bf16 need compute "
                         "capability 8.0 or newer)",
                         precision_kind_name(precision), dev->description);
    }
    if (!dev->ops->set_precision) return op_missing(dev, DEVICE_OP_set_precision);
    DDT_CHECK(op_missed_earlier(dev));
    return dev->ops->set_precision(dev, precision, alloc, max_operand_floats);
}
