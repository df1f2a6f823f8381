/* optim_update.h - the per-element arithmetic of the optimizer updates, shared by the CPU
 * backend (device_cpu.c) and the CUDA kernels (cuda/kernels.cu), so that both round the same
 * way and give the same bits.
 *
 * Why a shared header: nvcc contracts `a * b + c` into one fused multiply-add (rounded once)
 * unless told otherwise, while the CPU build rounds the product and the sum separately. Where
 * two terms nearly cancel (AdamW's first moment, beta1 * m + (1 - beta1) * g) the two results
 * then differ by up to 1e-3 relative. Every operation below is spelled as an OPTIM_* macro:
 * on the GPU the round-to-nearest intrinsics (__fmul_rn, __fadd_rn, ...), which nvcc never
 * contracts; on the host the plain operators, which the build never contracts either
 * (-ffp-contract=off in CMakeLists.txt). The CPU backend's vectorised loops perform the same
 * operations in the same order; tests/test_engine_optim.c checks them against these functions
 * bit for bit, and tests/test_cuda_device.c checks the kernels the same way on a GPU.
 *
 * Semantics are device.h's sgd_update and adamw_update (PyTorch's torch.optim.SGD and the
 * non-fused torch.optim.AdamW).
 */
#ifndef DDT_ENGINE_OPTIM_UPDATE_H
#define DDT_ENGINE_OPTIM_UPDATE_H

#include <math.h>
#include <stdbool.h>

#if defined(__CUDACC__)
#define OPTIM_INLINE static __host__ __device__ __forceinline__
#else
#define OPTIM_INLINE static inline
#endif

#if defined(__CUDA_ARCH__)
#define OPTIM_MUL(a, b) __fmul_rn((a), (b))
#define OPTIM_ADD(a, b) __fadd_rn((a), (b))
#define OPTIM_SUB(a, b) __fsub_rn((a), (b))
#define OPTIM_DIV(a, b) __fdiv_rn((a), (b))
#define OPTIM_SQRT(a) __fsqrt_rn(a)
#else
#define OPTIM_MUL(a, b) ((a) * (b))
#define OPTIM_ADD(a, b) ((a) + (b))
#define OPTIM_SUB(a, b) ((a) - (b))
#define OPTIM_DIV(a, b) ((a) / (b))
#define OPTIM_SQRT(a) sqrtf(a)
#endif

/* The per-step scalars of AdamW, computed once on the host (as torch.optim.AdamW does, in
 * double, then rounded). */
typedef struct adamw_scalars {
    float beta1, one_minus_beta1;
    float beta2, one_minus_beta2;
    float eps;
    float decay;                /* 1 - lr * weight_decay */
    float step_size;            /* lr / (1 - beta1^step) */
    float inv_sqrt_correction2; /* 1 / sqrt(1 - beta2^step) */
} adamw_scalars;

OPTIM_INLINE adamw_scalars adamw_scalars_for(float lr, float beta1, float beta2, float eps,
                                             float weight_decay, long long step) {
    double correction1 = 1.0 - pow((double)beta1, (double)step);
    double correction2 = 1.0 - pow((double)beta2, (double)step);
    adamw_scalars s;
    s.beta1 = beta1;
    s.one_minus_beta1 = 1.0f - beta1;
    s.beta2 = beta2;
    s.one_minus_beta2 = 1.0f - beta2;
    s.eps = eps;
    s.decay = 1.0f - lr * weight_decay;
    s.step_size = (float)(lr / correction1);
    s.inv_sqrt_correction2 = (float)(1.0 / sqrt(correction2));
    return s;
}

/* One AdamW element: decoupled decay, the moments, then the bias-corrected step. */
OPTIM_INLINE void adamw_update_element(const adamw_scalars *s, float g, float *param, float *m,
                                       float *v) {
    float p = OPTIM_MUL(*param, s->decay);
    float mi = OPTIM_ADD(OPTIM_MUL(s->beta1, *m), OPTIM_MUL(s->one_minus_beta1, g));
    float vi = OPTIM_ADD(OPTIM_MUL(s->beta2, *v), OPTIM_MUL(OPTIM_MUL(s->one_minus_beta2, g), g));
    *m = mi;
    *v = vi;
    float denominator = OPTIM_ADD(OPTIM_MUL(OPTIM_SQRT(vi), s->inv_sqrt_correction2), s->eps);
    *param = OPTIM_SUB(p, OPTIM_DIV(OPTIM_MUL(s->step_size, mi), denominator));
}

/* One SGD element. With momentum the step is gradient_weight * g + velocity_weight * v, i.e.
 * g + momentum * v for Nesterov (1, momentum) and v otherwise (0, 1). */
OPTIM_INLINE void sgd_update_element(float g_raw, float *param, float *velocity, float lr,
                                     float momentum, float gradient_weight, float velocity_weight,
                                     float weight_decay, bool first_step) {
    if (momentum == 0.0f) {
        float g = weight_decay == 0.0f ? g_raw
                                       : OPTIM_ADD(g_raw, OPTIM_MUL(weight_decay, *param));
        *param = OPTIM_SUB(*param, OPTIM_MUL(lr, g));
        return;
    }
    float g = OPTIM_ADD(g_raw, OPTIM_MUL(weight_decay, *param));
    float v = first_step ? g : OPTIM_ADD(OPTIM_MUL(momentum, *velocity), g);
    *velocity = v;
    *param = OPTIM_SUB(*param,
                       OPTIM_MUL(lr, OPTIM_ADD(OPTIM_MUL(gradient_weight, g),
                                               OPTIM_MUL(velocity_weight, v))));
}

#endif
