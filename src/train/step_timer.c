/* step_timer.c - a step's time split from the device's timer marks (see step_timer.h). */
#include "train/step_timer.h"

void step_timer_init(step_timer *timer, device *dev, comm *data_comm) {
    *timer = (step_timer){.dev = dev, .comm = data_comm};
    timer->device_clock = dev->ops->native_stream(dev) != NULL; /* asynchronous: a GPU */
}

static int slot(int set, int mark) {
    return set * STEP_MARKS + mark;
}

/* Adds the times of the step last marked in `set` (if not read yet) to the totals. */
static ddt_status read_set(step_timer *timer, int set) {
    if (!timer->pending[set]) return DDT_OK;
    timer->pending[set] = false;
    device *dev = timer->dev;
    double compute = 0, communication = 0, optimizer = 0;
    DDT_CHECK(dev->ops->timer_elapsed(dev, slot(set, STEP_MARK_START),
                                      slot(set, STEP_MARK_BACKWARD_DONE), &compute));
    DDT_CHECK(dev->ops->timer_elapsed(dev, slot(set, STEP_MARK_BACKWARD_DONE),
                                      slot(set, STEP_MARK_REDUCED), &communication));
    DDT_CHECK(dev->ops->timer_elapsed(dev, slot(set, STEP_MARK_REDUCED),
                                      slot(set, STEP_MARK_UPDATED), &optimizer));
    double wait = timer->data_wait_in_step[set];
    timer->totals.data_wait += wait;
    /* On the host clock, waiting for data happened between the compute marks. */
    timer->totals.compute += timer->device_clock ? compute : compute - wait;
    timer->totals.communication += communication;
    timer->totals.optimizer += optimizer;
    double busy = comm_device_busy_seconds(timer->comm);
    if (busy >= 0) timer->totals.allreduce_device = busy;
    return DDT_OK;
}

ddt_status step_timer_begin(step_timer *timer, int64_t step, double data_wait_total) {
    int set = (int)(step & 1);
    DDT_CHECK(read_set(timer, set));
    timer->data_wait_at_start[set] = data_wait_total;
    step_timer_mark(timer, step, STEP_MARK_START);
    return DDT_OK;
}

void step_timer_mark(step_timer *timer, int64_t step, int mark) {
    (void)timer->dev->ops->timer_mark(timer->dev, slot((int)(step & 1), mark));
}

void step_timer_end(step_timer *timer, int64_t step, double data_wait_total) {
    int set = (int)(step & 1);
    step_timer_mark(timer, step, STEP_MARK_UPDATED);
    timer->data_wait_in_step[set] = data_wait_total - timer->data_wait_at_start[set];
    timer->pending[set] = true;
}

ddt_status step_timer_flush(step_timer *timer) {
    DDT_CHECK(read_set(timer, 0));
    return read_set(timer, 1);
}
