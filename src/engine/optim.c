/* optim.c - optimizer state and steps (SGD, AdamW) and learning-rate schedules (optim.h).
 *
 * The update arithmetic lives in the device backends (sgd_update, adamw_update) so one call
 * updates the whole parameter buffer; this file owns the state buffer, the step counter and
 * the schedule, which are plain host arithmetic.
 */
#include "engine/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct optimizer {
    optimizer_params params;
    allocator *alloc;
    device *dev;
    size_t parameter_count;
    float *state; /* NULL for plain SGD; velocity (P) or AdamW's m then v (2P) */
    size_t state_count;
    int64_t steps_taken;
    /* Where weight decay applies: segments [start, end) of the buffer, in order, each with
     * or without decay; one segment (with decay) unless optimizer_set_decay() said more. */
    int segment_count;
    size_t *segment_start;
    bool *segment_decays;
};

optimizer_params optimizer_default_params(void) {
    optimizer_params params;
    memset(&params, 0, sizeof params);
    params.kind = OPTIMIZER_SGD;
    params.momentum = 0.0f;
    params.nesterov = false;
    params.weight_decay = 0.0f;
    params.beta1 = 0.9f;
    params.beta2 = 0.999f;
    params.eps = 1e-8f;
    return params;
}

ddt_status optimizer_kind_parse(const char *text, optimizer_kind *out) {
    if (text && strcmp(text, "sgd") == 0) {
        *out = OPTIMIZER_SGD;
        return DDT_OK;
    }
    if (text && strcmp(text, "adamw") == 0) {
        *out = OPTIMIZER_ADAMW;
        return DDT_OK;
    }
    return ddt_error(DDT_ERR_USAGE, "--optimizer: '%s' is not an optimizer (expected sgd or adamw)",
                     text ? text : "");
}

const char *optimizer_kind_name(optimizer_kind kind) {
    switch (kind) {
    case OPTIMIZER_SGD:
        return "sgd";
    case OPTIMIZER_ADAMW:
        return "adamw";
    }
    return "unknown";
}

device_op optimizer_device_op(optimizer_kind kind) {
    switch (kind) {
    case OPTIMIZER_SGD:
        return DEVICE_OP_sgd_update;
    case OPTIMIZER_ADAMW:
        return DEVICE_OP_adamw_update;
    }
    return DEVICE_OP_COUNT;
}

ddt_status optimizer_params_check(const optimizer_params *p) {
    /* Written so that NaN fails every range test. */
    if (!(p->weight_decay >= 0.0f && isfinite(p->weight_decay)))
        return ddt_error(DDT_ERR_USAGE, "--weight-decay must be >= 0, got %g",
                         (double)p->weight_decay);
    switch (p->kind) {
    case OPTIMIZER_SGD:
        if (!(p->momentum >= 0.0f && p->momentum < 1.0f))
            return ddt_error(DDT_ERR_USAGE, "--momentum must be in [0, 1), got %g",
                             (double)p->momentum);
        if (p->nesterov && p->momentum == 0.0f)
            return ddt_error(DDT_ERR_USAGE, "--nesterov needs --momentum above 0");
        return DDT_OK;
    case OPTIMIZER_ADAMW:
        if (p->momentum != 0.0f || p->nesterov)
            return ddt_error(DDT_ERR_USAGE,
                             "--momentum and --nesterov apply to sgd only (adamw uses --beta1)");
        if (!(p->beta1 >= 0.0f && p->beta1 < 1.0f))
            return ddt_error(DDT_ERR_USAGE, "--beta1 must be in [0, 1), got %g", (double)p->beta1);
        if (!(p->beta2 >= 0.0f && p->beta2 < 1.0f))
            return ddt_error(DDT_ERR_USAGE, "--beta2 must be in [0, 1), got %g", (double)p->beta2);
        if (!(p->eps > 0.0f && isfinite(p->eps)))
            return ddt_error(DDT_ERR_USAGE, "--eps must be > 0, got %g", (double)p->eps);
        return DDT_OK;
    }
    return ddt_error(DDT_ERR_INTERNAL, "optimizer_params_check: unknown optimizer %d",
                     (int)p->kind);
}

size_t optimizer_state_floats(const optimizer_params *params, size_t parameter_count) {
    if (params->kind == OPTIMIZER_ADAMW) return 2 * parameter_count;
    return params->momentum != 0.0f ? parameter_count : 0;
}

ddt_status optimizer_init(const optimizer_params *params, allocator *alloc, size_t parameter_count,
                          optimizer **out) {
    *out = NULL;
    DDT_CHECK(optimizer_params_check(params));
    optimizer *opt = calloc(1, sizeof *opt);
    if (!opt) return ddt_error(DDT_ERR_MEMORY, "out of host memory creating the optimizer");
    opt->params = *params;
    opt->alloc = alloc;
    opt->dev = allocator_device(alloc);
    opt->parameter_count = parameter_count;
    opt->state_count = optimizer_state_floats(params, parameter_count);
    if (opt->state_count) {
        ddt_status status = allocator_alloc(alloc, MEMORY_COMPONENT_OPTIMIZER,
                                            opt->state_count * sizeof(float), (void **)&opt->state);
        if (status != DDT_OK) {
            ddt_error_trace(__FILE__, __LINE__);
            free(opt);
            return status;
        }
    }
    *out = opt;
    return DDT_OK;
}

void optimizer_free(optimizer *opt) {
    if (!opt) return;
    allocator_free(opt->alloc, opt->state);
    free(opt->segment_start);
    free(opt->segment_decays);
    free(opt);
}

ddt_status optimizer_set_decay(optimizer *opt, const bool *decays, size_t count) {
    if (count != opt->parameter_count)
        return ddt_error(DDT_ERR_INTERNAL, "optimizer_set_decay: %zu flags for %zu parameters",
                         count, opt->parameter_count);
    int segments = 0;
    for (size_t i = 0; i < count; i++)
        if (i == 0 || decays[i] != decays[i - 1]) segments++;
    size_t *start = malloc((size_t)(segments ? segments : 1) * sizeof *start);
    bool *decay = malloc((size_t)(segments ? segments : 1) * sizeof *decay);
    if (!start || !decay) {
        free(start);
        free(decay);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory for the weight-decay segments");
    }
    int k = 0;
    for (size_t i = 0; i < count; i++)
        if (i == 0 || decays[i] != decays[i - 1]) {
            start[k] = i;
            decay[k++] = decays[i];
        }
    free(opt->segment_start);
    free(opt->segment_decays);
    opt->segment_start = start;
    opt->segment_decays = decay;
    opt->segment_count = segments;
    return DDT_OK;
}

/* One update of parameters [from, from + count) with weight decay `decay`. */
static void update_segment(optimizer *opt, float *params, const float *grads, float lr,
                           size_t from, size_t count, float decay) {
    const optimizer_params *p = &opt->params;
    device *dev = opt->dev;
    switch (p->kind) {
    case OPTIMIZER_SGD:
        device_sgd_update(dev, count, params + from, grads + from,
                          opt->state ? opt->state + from : NULL, lr, p->momentum, p->nesterov,
                          decay, opt->steps_taken == 0);
        break;
    case OPTIMIZER_ADAMW:
        device_adamw_update(dev, count, params + from, grads + from, opt->state + from,
                            opt->state + opt->parameter_count + from, lr, p->beta1, p->beta2,
                            p->eps, decay, opt->steps_taken + 1);
        break;
    }
}

void optimizer_step(optimizer *opt, float *params, const float *grads, float lr) {
    if (opt->segment_count == 0) {
        update_segment(opt, params, grads, lr, 0, opt->parameter_count, opt->params.weight_decay);
    } else {
        for (int k = 0; k < opt->segment_count; k++) {
            size_t from = opt->segment_start[k];
            size_t end = k + 1 < opt->segment_count ? opt->segment_start[k + 1]
                                                    : opt->parameter_count;
            update_segment(opt, params, grads, lr, from, end - from,
                           opt->segment_decays[k] ? opt->params.weight_decay : 0.0f);
        }
    }
    opt->steps_taken++;
}

int64_t optimizer_steps_taken(const optimizer *opt) {
    return opt->steps_taken;
}

void optimizer_set_steps_taken(optimizer *opt, int64_t steps) {
    opt->steps_taken = steps;
}

float *optimizer_state(optimizer *opt) {
    return opt->state;
}

size_t optimizer_state_count(const optimizer *opt) {
    return opt->state_count;
}

/* --- learning-rate schedules ------------------------------------------------------------- */

ddt_status lr_schedule_kind_parse(const char *text, lr_schedule_kind *out) {
    static const lr_schedule_kind kinds[] = {LR_SCHEDULE_CONSTANT, LR_SCHEDULE_COSINE,
                                             LR_SCHEDULE_STEP};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (text && strcmp(text, lr_schedule_kind_name(kinds[i])) == 0) {
            *out = kinds[i];
            return DDT_OK;
        }
    }
    return ddt_error(DDT_ERR_USAGE,
                     "--lr-schedule: '%s' is not a schedule (expected constant, cosine or step)",
                     text ? text : "");
}

const char *lr_schedule_kind_name(lr_schedule_kind kind) {
    switch (kind) {
    case LR_SCHEDULE_CONSTANT:
        return "constant";
    case LR_SCHEDULE_COSINE:
        return "cosine";
    case LR_SCHEDULE_STEP:
        return "step";
    }
    return "unknown";
}

ddt_status lr_schedule_check(const lr_schedule *s) {
    if (!(s->base_lr > 0.0f && isfinite(s->base_lr)))
        return ddt_error(DDT_ERR_USAGE, "--lr must be > 0, got %g", (double)s->base_lr);
    if (s->warmup_steps < 0)
        return ddt_error(DDT_ERR_USAGE, "--warmup-steps must be >= 0, got %lld",
                         (long long)s->warmup_steps);
    switch (s->kind) {
    case LR_SCHEDULE_CONSTANT:
        return DDT_OK;
    case LR_SCHEDULE_COSINE:
        if (!(s->min_lr >= 0.0f && s->min_lr <= s->base_lr))
            return ddt_error(DDT_ERR_USAGE, "--min-lr must be in [0, --lr = %g], got %g",
                             (double)s->base_lr, (double)s->min_lr);
        if (s->total_steps <= s->warmup_steps)
            return ddt_error(DDT_ERR_USAGE,
                             "the cosine schedule needs more steps (%lld) than warm-up steps "
                             "(%lld)",
                             (long long)s->total_steps, (long long)s->warmup_steps);
        return DDT_OK;
    case LR_SCHEDULE_STEP:
        if (s->step_size <= 0)
            return ddt_error(DDT_ERR_USAGE, "--lr-step-size must be >= 1, got %lld",
                             (long long)s->step_size);
        if (!(s->gamma > 0.0f && isfinite(s->gamma)))
            return ddt_error(DDT_ERR_USAGE, "--lr-gamma must be > 0, got %g", (double)s->gamma);
        return DDT_OK;
    }
    return ddt_error(DDT_ERR_INTERNAL, "lr_schedule_check: unknown schedule %d", (int)s->kind);
}

float lr_schedule_at(const lr_schedule *s, int64_t step) {
    double base = s->base_lr;
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return (float)(base * (double)(step + 1) / (double)s->warmup_steps);
    int64_t after = step - (s->warmup_steps > 0 ? s->warmup_steps : 0);
    switch (s->kind) {
    case LR_SCHEDULE_CONSTANT:
        return (float)base;
    case LR_SCHEDULE_COSINE: {
        int64_t span = s->total_steps - (s->warmup_steps > 0 ? s->warmup_steps : 0);
        double progress = span > 0 ? (double)after / (double)span : 1.0;
        if (progress > 1.0) progress = 1.0;
        double min = s->min_lr;
        return (float)(min + (base - min) * 0.5 * (1.0 + cos(M_PI * progress)));
    }
    case LR_SCHEDULE_STEP:
        if (s->step_size <= 0) return (float)base;
        return (float)(base * pow((double)s->gamma, (double)(after / s->step_size)));
    }
    return (float)base;
}
