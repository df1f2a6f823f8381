/* loss_scale.h - dynamic loss scaling for fp16 GEMMs, as the usual AMP scalers do.
 *
 * Under fp16 the loss (and so every gradient) is multiplied by a scale, so small gradients
 * survive the cast of GEMM operands to fp16. After the all-reduce the ranks agree whether any
 * gradient overflowed: if so the step is skipped on every rank and the scale halved; else the
 * gradients are divided by the scale before the update, and after `growth_interval` clean
 * steps in a row the scale doubles. Under any other precision the scale is 1 and never moves.
 * The state is three numbers, saved in checkpoints so a resumed run continues with them.
 *
 * Usage:
 *     loss_scaler s = loss_scaler_init(precision == PRECISION_FP16, 65536.0f);
 *     ... backward with loss scaled by s.scale ...
 *     if (loss_scaler_step(&s, overflow_agreed_by_all_ranks)) update with gradients / scale_used;
 */
#ifndef DDT_TRAIN_LOSS_SCALE_H
#define DDT_TRAIN_LOSS_SCALE_H

#include <stdbool.h>
#include <stdint.h>

#define LOSS_SCALE_GROWTH_INTERVAL 2000

typedef struct loss_scaler {
    bool enabled;
    float scale;                  /* 1 when disabled */
    int64_t steps_since_overflow; /* clean steps in a row */
    int64_t skipped_steps;        /* steps skipped for overflow in this run */
} loss_scaler;

loss_scaler loss_scaler_init(bool enabled, float initial_scale);
/* Decides the step after the ranks agreed whether gradients overflowed: true to apply the
 * update (with gradients divided by the scale in force before this call), false to skip it.
 * Halves the scale on overflow, doubles it after LOSS_SCALE_GROWTH_INTERVAL clean steps. */
bool loss_scaler_step(loss_scaler *s, bool overflow);

#endif
