/* device_cpu_layers.h - the CPU backend's layer-engine operations (device_cpu_layers.c), for
 * device_cpu.c's table only. Each is the device.h operation of the same name without "cpu_".
 */
#ifndef DDT_ENGINE_DEVICE_CPU_LAYERS_H
#define DDT_ENGINE_DEVICE_CPU_LAYERS_H

#include "engine/device.h"

void cpu_gemm_strided_batched(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float *a, int lda, int64_t stride_a, const float *b, int ldb, int64_t stride_b, float beta, float *c, int ldc, int64_t stride_c, int batch);
void cpu_add(device *dev, size_t count, const float *a, const float *b, float *out);
void cpu_permute(device *dev, int rank, const int *dims, const int *perm, const float *in, float *out);
void cpu_im2col(device *dev, const conv_geometry *g, int samples, const float *x, float *cols);
void cpu_col2im(device *dev, const conv_geometry *g, int samples, const float *cols, float *dx);
void cpu_pool2d_forward(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, float *y);
void cpu_pool2d_backward(device *dev, pool_kind kind, const conv_geometry *g, int samples, const float *x, const float *y, const float *dy, float *dx);
void cpu_batchnorm_forward(device *dev, int samples, int channels, int spatial, const float *x, const float *gamma, const float *beta, float eps, bool training, float momentum, float *running_mean, float *running_var, float *mean, float *invstd, float *y);
void cpu_batchnorm_backward(device *dev, int samples, int channels, int spatial, const float *x, const float *dy, const float *gamma, const float *mean, const float *invstd, float *dx, float *dgamma, float *dbeta);
void cpu_layernorm_forward(device *dev, int rows, int cols, const float *x, const float *gamma, const float *beta, float eps, float *y, float *mean, float *rstd);
void cpu_layernorm_backward(device *dev, int rows, int cols, const float *x, const float *dy, const float *gamma, const float *mean, const float *rstd, float *dx, float *dgamma, float *dbeta);
void cpu_rmsnorm_forward(device *dev, int rows, int cols, const float *x, const float *gamma,
                         float eps, float *y, float *rstd);
void cpu_rmsnorm_backward(device *dev, int rows, int cols, const float *x, const float *dy,
                          const float *gamma, const float *rstd, float *dx, float *dgamma);
void cpu_embedding_forward(device *dev, int rows, int cols, const int32_t *ids, const float *table, float *y);
void cpu_embedding_backward(device *dev, int rows, int cols, const int32_t *ids, const float *dy, float *dtable);
void cpu_causal_softmax_forward(device *dev, int groups, int t, float scale, const float *x, float *y);
void cpu_causal_softmax_backward(device *dev, int groups, int t, float scale, const float *y, const float *dy, float *dx);

#endif
