/* optim.h - optimizers (SGD with momentum/Nesterov, AdamW) and learning-rate schedules.
 *
 * The optimizer's state (momentum, or Adam's two moments) is one contiguous device buffer
 * laid out like the parameters, so one device call updates everything (one per segment when
 * weight decay spares some tensors: optimizer_set_decay()).
 *
 * Ownership: optimizer_init() allocates the state through `alloc`; optimizer_free() frees it.
 *
 * Usage:
 *     optimizer_params p = optimizer_default_params();
 *     p.kind = OPTIMIZER_ADAMW;
 *     optimizer *opt;
 *     DDT_CHECK(optimizer_init(&p, alloc, model_parameter_count(m), &opt));
 *     float lr = lr_schedule_at(&schedule, step);
 *     optimizer_step(opt, model_parameters(m), model_gradients(m), lr);
 */
#ifndef DDT_ENGINE_OPTIM_H
#define DDT_ENGINE_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/alloc.h"
#include "util/status.h"

typedef enum optimizer_kind {
    OPTIMIZER_SGD,
    OPTIMIZER_ADAMW,
} optimizer_kind;

typedef struct optimizer_params {
    optimizer_kind kind;
    float momentum;          /* SGD */
    bool nesterov;           /* SGD; needs momentum > 0 */
    float weight_decay;      /* SGD: L2 added to the gradient; AdamW: decoupled */
    float beta1, beta2, eps; /* AdamW */
} optimizer_params;

/* SGD, momentum 0, no Nesterov, weight decay 0; AdamW defaults beta 0.9/0.999, eps 1e-8. */
optimizer_params optimizer_default_params(void);
ddt_status optimizer_kind_parse(const char *text, optimizer_kind *out); /* "sgd", "adamw" */
const char *optimizer_kind_name(optimizer_kind kind);
/* The device operation optimizer_step() calls for `kind` (DEVICE_OP_COUNT for an unknown one). */
device_op optimizer_device_op(optimizer_kind kind);
/* DDT_ERR_USAGE for inconsistent settings (Nesterov without momentum, negative decay...). */
ddt_status optimizer_params_check(const optimizer_params *params);

typedef struct optimizer optimizer;

/* Floats of state an optimizer with these settings keeps for parameter_count parameters
 * (0 for SGD without momentum, P with momentum, 2P for AdamW); for memory plans. */
size_t optimizer_state_floats(const optimizer_params *params, size_t parameter_count);

ddt_status optimizer_init(const optimizer_params *params, allocator *alloc, size_t parameter_count,
                          optimizer **out);
void optimizer_free(optimizer *opt);
/* Which parameters weight decay applies to (one flag per parameter; by default all): the
 * update runs segment by segment over the runs of equal flags, without decay where a flag is
 * false. The elementwise update is the same as over the whole buffer, so results do not
 * depend on how the buffer is cut. */
ddt_status optimizer_set_decay(optimizer *opt, const bool *decays, size_t count);
/* Applies one update with learning rate lr and counts it. */
void optimizer_step(optimizer *opt, float *params, const float *grads, float lr);
int64_t optimizer_steps_taken(const optimizer *opt);
/* Restores the step count (AdamW's bias correction) when resuming from a checkpoint. */
void optimizer_set_steps_taken(optimizer *opt, int64_t steps);
/* State buffer (device) and its length in floats: 0 for plain SGD, P for momentum, 2P AdamW. */
float *optimizer_state(optimizer *opt);
size_t optimizer_state_count(const optimizer *opt);

typedef enum lr_schedule_kind {
    LR_SCHEDULE_CONSTANT,
    LR_SCHEDULE_COSINE, /* from base_lr after warm-up down to min_lr at total_steps */
    LR_SCHEDULE_STEP,   /* multiplied by gamma every step_size steps after warm-up */
} lr_schedule_kind;

typedef struct lr_schedule {
    lr_schedule_kind kind;
    float base_lr;
    float min_lr;
    int64_t warmup_steps; /* linear ramp from base_lr/warmup_steps to base_lr */
    int64_t total_steps;
    int64_t step_size;
    float gamma;
} lr_schedule;

ddt_status lr_schedule_kind_parse(const char *text, lr_schedule_kind *out);
const char *lr_schedule_kind_name(lr_schedule_kind kind);
/* DDT_ERR_USAGE for settings the schedule cannot follow (lr <= 0, cosine with no steps after
 * warm-up, step with step_size < 1...). */
ddt_status lr_schedule_check(const lr_schedule *schedule);
/* Learning rate for optimizer step `step` (counted from 0). */
float lr_schedule_at(const lr_schedule *schedule, int64_t step);

#endif
