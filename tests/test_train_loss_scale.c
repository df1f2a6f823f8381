/* test_train_loss_scale.c - fp16's dynamic loss scaling: halved and skipped on overflow,
 * doubled after 2000 clean steps in a row, inert under other precisions. */
#include "check.h"
#include "train/loss_scale.h"

int main(void) {
    loss_scaler s = loss_scaler_init(true, 65536.0f);
    CHECK(s.scale == 65536.0f);
    CHECK(!loss_scaler_step(&s, true)); /* overflow: skip */
    CHECK(s.scale == 32768.0f && s.skipped_steps == 1 && s.steps_since_overflow == 0);
    for (int i = 1; i < LOSS_SCALE_GROWTH_INTERVAL; i++) CHECK(loss_scaler_step(&s, false));
    CHECK(s.scale == 32768.0f);
    CHECK(loss_scaler_step(&s, false)); /* the 2000th clean step */
    CHECK(s.scale == 65536.0f);
    CHECK(!loss_scaler_step(&s, true));
    CHECK(s.scale == 32768.0f && s.skipped_steps == 2);
    loss_scaler off = loss_scaler_init(false, 65536.0f);
    CHECK(off.scale == 1.0f);
    for (int i = 0; i < 3000; i++) CHECK(loss_scaler_step(&off, i % 7 == 0));
    CHECK(off.scale == 1.0f && off.skipped_steps == 0);
    return check_finish();
}
