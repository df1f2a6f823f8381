/* loss_scale.c - dynamic loss scaling (see loss_scale.h). */
#include "train/loss_scale.h"

loss_scaler loss_scaler_init(bool enabled, float initial_scale) {
    return (loss_scaler){.enabled = enabled, .scale = enabled ? initial_scale : 1.0f};
}

bool loss_scaler_step(loss_scaler *s, bool overflow) {
    if (!s->enabled) return true;
    if (overflow) {
        s->skipped_steps++;
        s->scale /= 2;
        s->steps_since_overflow = 0;
        return false;
    }
    if (++s->steps_since_overflow % LOSS_SCALE_GROWTH_INTERVAL == 0) s->scale *= 2;
    return true;
}
