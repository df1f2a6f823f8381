/* device_backend.h - the table a compute backend fills, private to backends (device_cpu.c,
 * cuda/) and device.c, which registers them and turns each entry into the public function of
 * the same name (device.h documents what each must do). A backend also sets the device's
 * capabilities (device.h) in its open function.
 */
#ifndef DDT_ENGINE_DEVICE_BACKEND_H
#define DDT_ENGINE_DEVICE_BACKEND_H

#include "engine/device.h"

typedef struct device_ops {
    const char *name; /* "cpu", "cuda" */
    ddt_status (*memory_alloc)(device *dev, size_t bytes, void **out);
    void (*memory_free)(device *dev, void *pointer);
    ddt_status (*memory_info)(device *dev, size_t *total_bytes, size_t *free_bytes);
    ddt_status (*copy_host_to_device)(device *dev, void *device_dst, const void *host_src, size_t bytes);
    ddt_status (*copy_device_to_host)(device *dev, void *host_dst, const void *device_src, size_t bytes);
    void (*copy_device_to_device)(device *dev, void *dst, const void *src, size_t bytes);
    void (*fill_zero)(device *dev, void *dst, size_t bytes);
    void (*gemm)(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
    void (*gemm_fp32)(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
    void (*bias_add)(device *dev, int rows, int cols, float *y, const float *bias);
    void (*bias_gradient_accumulate)(device *dev, int rows, int cols, const float *dy, float *bias_gradient);
    void (*scale)(device *dev, size_t count, float alpha, float *x);
    void (*activation_forward)(device *dev, activation_kind kind, size_t count, const float *x, float *y);
    void (*activation_backward)(device *dev, activation_kind kind, size_t count, const float *x, const float *y, const float *dy, float *dx);
    void (*dropout_forward)(device *dev, int rows, int cols, float rate, dropout_key key, const int64_t *row_ids, const float *x, float *y);
    void (*dropout_backward)(device *dev, int rows, int cols, float rate, dropout_key key, const int64_t *row_ids, const float *dy, float *dx);
    void (*softmax_cross_entropy)(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits);
    void (*binary_cross_entropy)(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits);
    void (*mean_squared_error)(device *dev, int rows, int cols, const float *logits, const int32_t *labels, const float *targets, float scale, float *loss_sum, float *dlogits);
    void (*count_correct)(device *dev, int rows, int cols, const float *logits, const int32_t *labels, float *correct);
    void (*sgd_update)(device *dev, size_t count, float *params, const float *grads, float *velocity, float lr, float momentum, bool nesterov, float weight_decay, bool first_step);
    void (*adamw_update)(device *dev, size_t count, float *params, const float *grads, float *m, float *v, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step);
    void (*gemm_strided_batched)(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, int64_t stride_a, const float *b, int ldb, int64_t stride_b, float beta, float *c, int ldc, int64_t stride_c, int batch);
    void (*add)(device *dev, size_t count, const float *a, const float *b, float *out);
    void (*permute)(device *dev, int rank, const int *dims, const int *perm, const float *in, float *out);
    void (*im2col)(device *dev, const conv_geometry *g, int samples, const float *x, float *cols);
    void (*col2im)(device *dev, const conv_geometry *g, int samples, const float *cols, float *dx);
    void (*pool2d_forward)(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, float *y);
    void (*pool2d_backward)(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, const float *y, const float *dy, float *dx);
    void (*batchnorm_forward)(device *dev, int samples, int channels, int spatial, const float *x, const float *gamma, const float *beta, float eps, bool training, float momentum, float *running_mean, float *running_var, float *mean, float *invstd, float *y);
    void (*batchnorm_backward)(device *dev, int samples, int channels, int spatial, const float *x, const float *dy, const float *gamma, const float *mean, const float *invstd, float *dx, float *dgamma, float *dbeta);
    void (*layernorm_forward)(device *dev, int rows, int cols, const float *x, const float *gamma, const float *beta, float eps, float *y, float *mean, float *rstd);
    void (*layernorm_backward)(device *dev, int rows, int cols, const float *x, const float *dy, const float *gamma, const float *mean, const float *rstd, float *dx, float *dgamma, float *dbeta);
    void (*embedding_forward)(device *dev, int rows, int cols, const int32_t *ids, const float *table, float *y);
    void (*embedding_backward)(device *dev, int rows, int cols, const int32_t *ids, const float *dy, float *dtable);
    void (*causal_softmax_forward)(device *dev, int groups, int t, float scale, const float *x, float *y);
    void (*causal_softmax_backward)(device *dev, int groups, int t, float scale, const float *y, const float *dy, float *dx);
    ddt_status (*check_finite)(device *dev, size_t count, const float *x, bool *all_finite);
    ddt_status (*sum_of_squares)(device *dev, size_t count, const float *x, double *sum);
    ddt_status (*synchronize)(device *dev);
    ddt_status (*set_precision)(device *dev, precision_kind precision, struct allocator *alloc, size_t max_operand_floats);
    size_t (*precision_workspace_bytes)(device *dev, precision_kind precision, size_t max_operand_floats);
    void *(*native_stream)(device *dev);
    ddt_status (*host_alloc)(device *dev, size_t bytes, void **out);
    void (*host_free)(device *dev, void *pointer);
    ddt_status (*upload_async)(device *dev, void *device_dst, const void *host_src, size_t bytes, int buffer);
    ddt_status (*upload_wait)(device *dev, int buffer);
    ddt_status (*upload_host_done)(device *dev, int buffer);
    ddt_status (*timer_mark)(device *dev, int slot);
    ddt_status (*timer_elapsed)(device *dev, int from, int to, double *seconds);
    void (*close)(device *dev); /* backend teardown, called by device_close() */
} device_ops;

/* The CPU backend's constructor (src/engine/device_cpu.c); used by device.c only. */
ddt_status device_cpu_open(device *dev);
/* The CUDA backend's constructor and device count (src/engine/cuda/, built into the plugin
 * libddtrain_cuda.so); device.c finds them with dlsym(). */
ddt_status device_cuda_open(device *dev);
int device_cuda_count(void);

#endif
