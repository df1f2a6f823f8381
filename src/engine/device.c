/* device.c - the backend registry and the public face of the operation table: which compute
 * backends this build contains, how to open them, and one function per operation
 * (device_gemm(dev, ...)) that calls the backend's table (engine/device_backend.h).
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

ddt_status device_memory_alloc(device *dev, size_t bytes, void **out) {
    return dev->ops->memory_alloc(dev, bytes, out);
}

void device_memory_free(device *dev, void *pointer) {
    dev->ops->memory_free(dev, pointer);
}

ddt_status device_memory_info(device *dev, size_t *total_bytes, size_t *free_bytes) {
    if (!dev->ops->memory_info)
        return ddt_error(DDT_ERR_USAGE, "the %s device cannot tell how much memory it has",
                         dev->ops->name);
    return dev->ops->memory_info(dev, total_bytes, free_bytes);
}

ddt_status device_copy_host_to_device(device *dev, void *device_dst, const void *host_src, size_t bytes) {
    return dev->ops->copy_host_to_device(dev, device_dst, host_src, bytes);
}

ddt_status device_copy_device_to_host(device *dev, void *host_dst, const void *device_src, size_t bytes) {
    return dev->ops->copy_device_to_host(dev, host_dst, device_src, bytes);
}

void device_copy_device_to_device(device *dev, void *dst, const void *src, size_t bytes) {
    dev->ops->copy_device_to_device(dev, dst, src, bytes);
}

void device_fill_zero(device *dev, void *dst, size_t bytes) {
    dev->ops->fill_zero(dev, dst, bytes);
}

void device_gemm(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    dev->ops->gemm(dev, transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void device_gemm_fp32(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    dev->ops->gemm_fp32(dev, transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void device_bias_add(device *dev, int rows, int cols, float *y, const float *bias) {
    dev->ops->bias_add(dev, rows, cols, y, bias);
}

void device_bias_gradient_accumulate(device *dev, int rows, int cols, const float *dy, float *bias_gradient) {
    dev->ops->bias_gradient_accumulate(dev, rows, cols, dy, bias_gradient);
}

void device_scale(device *dev, size_t count, float alpha, float *x) {
    dev->ops->scale(dev, count, alpha, x);
}

void device_activation_forward(device *dev, activation_kind kind, size_t count, const float *x, float *y) {
    dev->ops->activation_forward(dev, kind, count, x, y);
}

void device_activation_backward(device *dev, activation_kind kind, size_t count, const float *x, const float *y, const float *dy, float *dx) {
    dev->ops->activation_backward(dev, kind, count, x, y, dy, dx);
}

void device_dropout_forward(device *dev, int rows, int cols, float rate, dropout_key key, const int64_t *row_ids, const float *x, float *y) {
    dev->ops->dropout_forward(dev, rows, cols, rate, key, row_ids, x, y);
}

void device_dropout_backward(device *dev, int rows, int cols, float rate, dropout_key key, const int64_t *row_ids, const float *dy, float *dx) {
    dev->ops->dropout_backward(dev, rows, cols, rate, key, row_ids, dy, dx);
}

void device_softmax_cross_entropy(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits) {
    dev->ops->softmax_cross_entropy(dev, rows, cols, logits, labels, targets, scale, loss_sum, dlogits);
}

void device_binary_cross_entropy(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits) {
    dev->ops->binary_cross_entropy(dev, rows, cols, logits, labels, targets, scale, loss_sum, dlogits);
}

void device_mean_squared_error(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits) {
    dev->ops->mean_squared_error(dev, rows, cols, logits, labels, targets, scale, loss_sum, dlogits);
}

void device_count_correct(device *dev, int rows, int cols, const float *logits, const int32_t *labels, float *correct) {
    dev->ops->count_correct(dev, rows, cols, logits, labels, correct);
}

void device_sgd_update(device *dev, size_t count, float *params, const float *grads, float *velocity, float lr, float momentum, bool nesterov, float weight_decay, bool first_step) {
    dev->ops->sgd_update(dev, count, params, grads, velocity, lr, momentum, nesterov, weight_decay, first_step);
}

void device_adamw_update(device *dev, size_t count, float *params, const float *grads, float *m, float *v, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step) {
    dev->ops->adamw_update(dev, count, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step);
}

ddt_status device_check_finite(device *dev, size_t count, const float *x, bool *all_finite) {
    return dev->ops->check_finite(dev, count, x, all_finite);
}

ddt_status device_sum_of_squares(device *dev, size_t count, const float *x, double *sum) {
    return dev->ops->sum_of_squares(dev, count, x, sum);
}

ddt_status device_synchronize(device *dev) {
    return dev->ops->synchronize(dev);
}

ddt_status device_set_precision(device *dev, precision_kind precision, struct allocator *alloc, size_t max_operand_floats) {
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
    return dev->ops->set_precision(dev, precision, alloc, max_operand_floats);
}

size_t device_precision_workspace_bytes(device *dev, precision_kind precision, size_t max_operand_floats) {
    return dev->ops->precision_workspace_bytes(dev, precision, max_operand_floats);
}

void * device_native_stream(device *dev) {
    return dev->ops->native_stream(dev);
}

ddt_status device_host_alloc(device *dev, size_t bytes, void **out) {
    return dev->ops->host_alloc(dev, bytes, out);
}

void device_host_free(device *dev, void *pointer) {
    dev->ops->host_free(dev, pointer);
}

ddt_status device_upload_async(device *dev, void *device_dst, const void *host_src, size_t bytes, int buffer) {
    return dev->ops->upload_async(dev, device_dst, host_src, bytes, buffer);
}

ddt_status device_upload_wait(device *dev, int buffer) {
    return dev->ops->upload_wait(dev, buffer);
}

ddt_status device_upload_host_done(device *dev, int buffer) {
    return dev->ops->upload_host_done(dev, buffer);
}

ddt_status device_timer_mark(device *dev, int slot) {
    return dev->ops->timer_mark(dev, slot);
}

ddt_status device_timer_elapsed(device *dev, int from, int to, double *seconds) {
    return dev->ops->timer_elapsed(dev, from, to, seconds);
}

void device_gemm_strided_batched(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, int64_t stride_a, const float *b, int ldb, int64_t stride_b, float beta, float *c, int ldc, int64_t stride_c, int batch) {
    dev->ops->gemm_strided_batched(dev, transpose_a, transpose_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c, batch);
}

void device_add(device *dev, size_t count, const float *a, const float *b, float *out) {
    dev->ops->add(dev, count, a, b, out);
}

void device_permute(device *dev, int rank, const int *dims, const int *perm, const float *in, float *out) {
    dev->ops->permute(dev, rank, dims, perm, in, out);
}

void device_im2col(device *dev, const conv_geometry *g, int samples, const float *x, float *cols) {
    dev->ops->im2col(dev, g, samples, x, cols);
}

void device_col2im(device *dev, const conv_geometry *g, int samples, const float *cols, float *dx) {
    dev->ops->col2im(dev, g, samples, cols, dx);
}

void device_pool2d_forward(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, float *y) {
    dev->ops->pool2d_forward(dev, kind, g, samples, x, y);
}

void device_pool2d_backward(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, const float *y, const float *dy, float *dx) {
    dev->ops->pool2d_backward(dev, kind, g, samples, x, y, dy, dx);
}

void device_batchnorm_forward(device *dev, int samples, int channels, int spatial, const float *x, const float *gamma, const float *beta, float eps, bool training, float momentum, float *running_mean, float *running_var, float *mean, float *invstd, float *y) {
    dev->ops->batchnorm_forward(dev, samples, channels, spatial, x, gamma, beta, eps, training, momentum, running_mean, running_var, mean, invstd, y);
}

void device_batchnorm_backward(device *dev, int samples, int channels, int spatial, const float *x, const float *dy, const float *gamma, const float *mean, const float *invstd, float *dx, float *dgamma, float *dbeta) {
    dev->ops->batchnorm_backward(dev, samples, channels, spatial, x, dy, gamma, mean, invstd, dx, dgamma, dbeta);
}

void device_layernorm_forward(device *dev, int rows, int cols, const float *x, const float *gamma, const float *beta, float eps, float *y, float *mean, float *rstd) {
    dev->ops->layernorm_forward(dev, rows, cols, x, gamma, beta, eps, y, mean, rstd);
}

void device_layernorm_backward(device *dev, int rows, int cols, const float *x, const float *dy, const float *gamma, const float *mean, const float *rstd, float *dx, float *dgamma, float *dbeta) {
    dev->ops->layernorm_backward(dev, rows, cols, x, dy, gamma, mean, rstd, dx, dgamma, dbeta);
}

void device_embedding_forward(device *dev, int rows, int cols, const int32_t *ids, const float *table, float *y) {
    dev->ops->embedding_forward(dev, rows, cols, ids, table, y);
}

void device_embedding_backward(device *dev, int rows, int cols, const int32_t *ids, const float *dy, float *dtable) {
    dev->ops->embedding_backward(dev, rows, cols, ids, dy, dtable);
}

void device_causal_softmax_forward(device *dev, int groups, int t, float scale, const float *x, float *y) {
    dev->ops->causal_softmax_forward(dev, groups, t, scale, x, y);
}

void device_causal_softmax_backward(device *dev, int groups, int t, float scale, const float *y, const float *dy, float *dx) {
    dev->ops->causal_softmax_backward(dev, groups, t, scale, y, dy, dx);
}
