/* kernels.h - the CUDA backend's kernels (kernels.cu), private to src/engine/cuda.
 *
 * Each launcher enqueues its kernel(s) on `stream` and returns at once with the launch status
 * (cudaGetLastError()), never waiting for the GPU; a fault inside a kernel surfaces at the
 * next synchronisation. Every function computes what the operation of the same name in
 * device.h specifies, as src/engine/device_cpu.c does; pointers are device pointers. Sizes of
 * zero launch nothing.
 */
#ifndef DDT_ENGINE_CUDA_KERNELS_H
#define DDT_ENGINE_CUDA_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "engine/device.h"
#include "engine/optim_update.h"

/* Device memory the reductions and the embedding gradient work in, owned by the backend (one
 * allocation of kernels_scratch_bytes(), cut up by kernels_scratch_place()): per-block partial
 * sums (engine/cuda/reduction_plan.h), and the sort of a group of embedding ids. The kernels
 * that take it run on one stream, one after another, so one scratch serves them all. */
typedef struct kernels_scratch {
    void *partials;       /* REDUCTION_PARTIAL_BYTES */
    int32_t *sorted_ids;  /* EMBEDDING_SORT_ROWS each: the ids of a group, sorted */
    int32_t *row_order;   /* 0, 1, 2, ...: the rows before sorting */
    int32_t *sorted_rows; /* the rows in the ids' sorted order (stable: rows ascend per id) */
    void *sort_temp;      /* the sort's own temporary storage */
    size_t sort_temp_bytes;
} kernels_scratch;

/* The bytes of a scratch, and of the sort's share of it (asked of the sort, for
 * EMBEDDING_SORT_ROWS ids, on the current device). */
cudaError_t kernels_scratch_bytes(size_t *bytes, size_t *sort_temp_bytes);
/* Cuts `base` (kernels_scratch_bytes() bytes, 256-byte aligned) into a scratch. */
void kernels_scratch_place(void *base, size_t sort_temp_bytes, kernels_scratch *out);

/* C[r][c] = beta == 0 ? 0 : beta * C[r][c]: a GEMM with k = 0 (no products). */
cudaError_t kernels_gemm_empty(cudaStream_t stream, int m, int n, float beta, float *c, int ldc);
/* The same for each of `batch` matrices C_b = c + b * stride_c. */
cudaError_t kernels_gemm_empty_batched(cudaStream_t stream, int batch, int m, int n, float beta,
                                       float *c, int ldc, int64_t stride_c);
/* dst (packed rows x cols) = src (rows x cols, leading dimension ld) rounded to bf16 or fp16
 * (round to nearest even); dst holds __nv_bfloat16 or __half values. */
cudaError_t kernels_cast_bf16(cudaStream_t stream, int rows, int cols, const float *src, int ld,
                              void *dst);
cudaError_t kernels_cast_fp16(cudaStream_t stream, int rows, int cols, const float *src, int ld,
                              void *dst);
/* The same for `batch` matrices src + b * stride (stride in floats, 0 for one shared matrix),
 * packed one after the other: entry b lands at dst + b * rows * cols. */
cudaError_t kernels_cast_bf16_batched(cudaStream_t stream, int batch, int rows, int cols,
                                      const float *src, int ld, int64_t stride, void *dst);
cudaError_t kernels_cast_fp16_batched(cudaStream_t stream, int batch, int rows, int cols,
                                      const float *src, int ld, int64_t stride, void *dst);

cudaError_t kernels_bias_add(cudaStream_t stream, int rows, int cols, float *y, const float *bias);
cudaError_t kernels_bias_gradient_accumulate(cudaStream_t stream, const kernels_scratch *scratch,
                                             int rows, int cols, const float *dy,
                                             float *bias_gradient);
cudaError_t kernels_scale(cudaStream_t stream, size_t count, float alpha, float *x);

cudaError_t kernels_activation_forward(cudaStream_t stream, activation_kind kind, size_t count,
                                       const float *x, float *y);
cudaError_t kernels_activation_backward(cudaStream_t stream, activation_kind kind, size_t count,
                                        const float *x, const float *y, const float *dy, float *dx);
/* out = in * keep * keep_scale with keep as in device.h; keep_scale = 1 / (1 - rate), computed
 * by the caller in float exactly as the CPU backend does, so outputs match bit for bit.
 * rate > 0 (rate 0 is a copy, done by the caller). */
cudaError_t kernels_dropout(cudaStream_t stream, int rows, int cols, float rate, float keep_scale,
                            dropout_key key, const int64_t *row_ids, const float *in, float *out);

/* The losses and count_correct add per-block partials in the scratch, then add their sum to
 * *loss_sum (*correct) in one step: reproducible bit for bit. */
cudaError_t kernels_softmax_cross_entropy(cudaStream_t stream, const kernels_scratch *scratch,
                                          int rows, int cols, const float *logits,
                                          const int32_t *labels, const float *targets, float scale,
                                          float *loss_sum, float *dlogits);
cudaError_t kernels_binary_cross_entropy(cudaStream_t stream, const kernels_scratch *scratch,
                                         int rows, int cols, const float *logits,
                                         const int32_t *labels, const float *targets, float scale,
                                         float *loss_sum, float *dlogits);
cudaError_t kernels_mean_squared_error(cudaStream_t stream, const kernels_scratch *scratch,
                                       int rows, int cols, const float *logits,
                                       const int32_t *labels, const float *targets, float scale,
                                       float *loss_sum, float *dlogits);
cudaError_t kernels_count_correct(cudaStream_t stream, const kernels_scratch *scratch, int rows,
                                  int cols, const float *logits, const int32_t *labels,
                                  float *correct);

cudaError_t kernels_sgd_update(cudaStream_t stream, size_t count, float *params, const float *grads,
                               float *velocity, float lr, float momentum, bool nesterov,
                               float weight_decay, bool first_step);
/* The optimizers round as the CPU backend does, bit for bit (engine/optim_update.h); AdamW's
 * per-step scalars come from adamw_scalars_for(), computed on the host as on the CPU. */
cudaError_t kernels_adamw_update(cudaStream_t stream, size_t count, float *params,
                                 const float *grads, float *m, float *v,
                                 const adamw_scalars *scalars);

/* *flag (a device int) = 1 if any of x[0..count) is NaN or Inf; left alone otherwise. */
cudaError_t kernels_find_nonfinite(cudaStream_t stream, size_t count, const float *x, int *flag);
/* *sum (a device double, zeroed by the caller) += the sum of x[i]^2, in double, added in an
 * order fixed by count alone (the same bits on every rank and every run). */
cudaError_t kernels_sum_of_squares(cudaStream_t stream, const kernels_scratch *scratch,
                                   size_t count, const float *x, double *sum);

/* The layer engine's operations (device.h documents each; device_cpu_layers.c is the
 * reference). dims, perm and g are host memory. Invalid arguments the CPU could not run
 * either (a rank outside 1..6, perm not a permutation, an unknown pool kind) return
 * cudaErrorInvalidValue without launching. All are deterministic (kernels.cu says how). */
cudaError_t kernels_add(cudaStream_t stream, size_t count, const float *a, const float *b,
                        float *out);
cudaError_t kernels_permute(cudaStream_t stream, int rank, const int *dims, const int *perm,
                            const float *in, float *out);
cudaError_t kernels_im2col(cudaStream_t stream, const conv_geometry *g, int samples, const float *x,
                           float *cols);
cudaError_t kernels_col2im(cudaStream_t stream, const conv_geometry *g, int samples,
                           const float *cols, float *dx);
cudaError_t kernels_pool2d_forward(cudaStream_t stream, pool_kind kind, const conv_geometry *g,
                                   int samples, const float *x, float *y);
cudaError_t kernels_pool2d_backward(cudaStream_t stream, pool_kind kind, const conv_geometry *g,
                                    int samples, const float *x, const float *y, const float *dy,
                                    float *dx);
cudaError_t kernels_batchnorm_forward(cudaStream_t stream, int samples, int channels, int spatial,
                                      const float *x, const float *gamma, const float *beta,
                                      float eps, bool training, float momentum, float *running_mean,
                                      float *running_var, float *mean, float *invstd, float *y);
cudaError_t kernels_batchnorm_backward(cudaStream_t stream, int samples, int channels, int spatial,
                                       const float *x, const float *dy, const float *gamma,
                                       const float *mean, const float *invstd, float *dx,
                                       float *dgamma, float *dbeta);
cudaError_t kernels_layernorm_forward(cudaStream_t stream, int rows, int cols, const float *x,
                                      const float *gamma, const float *beta, float eps, float *y,
                                      float *mean, float *rstd);
cudaError_t kernels_layernorm_backward(cudaStream_t stream, const kernels_scratch *scratch,
                                       int rows, int cols, const float *x, const float *dy,
                                       const float *gamma, const float *mean, const float *rstd,
                                       float *dx, float *dgamma, float *dbeta);
cudaError_t kernels_rmsnorm_forward(cudaStream_t stream, int rows, int cols, const float *x,
                                    const float *gamma, float eps, float *y, float *rstd);
cudaError_t kernels_rmsnorm_backward(cudaStream_t stream, const kernels_scratch *scratch, int rows,
                                     int cols, const float *x, const float *dy, const float *gamma,
                                     const float *rstd, float *dx, float *dgamma);
cudaError_t kernels_embedding_forward(cudaStream_t stream, int rows, int cols, const int32_t *ids,
                                      const float *table, float *y);
cudaError_t kernels_embedding_backward(cudaStream_t stream, const kernels_scratch *scratch,
                                       int rows, int cols, const int32_t *ids, const float *dy,
                                       float *dtable);
cudaError_t kernels_causal_softmax_forward(cudaStream_t stream, int groups, int t, float scale,
                                           const float *x, float *y);
cudaError_t kernels_causal_softmax_backward(cudaStream_t stream, int groups, int t, float scale,
                                            const float *y, const float *dy, float *dx);

#ifdef __cplusplus
}
#endif

#endif
