/* step_timer.h - where a training step's time goes: data wait, compute (forward and
 * backward), communication (the all-reduce the step waited for, and the agreement), and the
 * optimizer; on GPUs also the all-reduce's own device time, overlapped or not.
 *
 * Times come from the device's timer marks (device.h timer_mark): CUDA events on GPUs, whose
 * work is asynchronous (a host clock would time when work was issued, not how long it ran),
 * the host clock on CPU ranks (their work is done when an operation returns). Four marks a
 * step, in one of two sets of slots taken in turn; a set is read when the step two later
 * begins, when the device has long passed it, so reading never waits. Data wait is host time
 * (the feed's wait for the reader thread) and is taken out of compute on CPU ranks, where it
 * falls between the marks.
 *
 * Usage:
 *     step_timer_init(&timer, dev, data_comm);
 *     each step: step_timer_begin(&timer, step, data_wait_so_far);
 *                ... forward/backward ...       step_timer_mark(&timer, step, STEP_MARK_BACKWARD_DONE);
 *                ... all-reduce, agreement ...  step_timer_mark(&timer, step, STEP_MARK_REDUCED);
 *                ... optimizer ...              step_timer_end(&timer, step, data_wait_so_far);
 *     at the end: step_timer_flush(&timer); timer.totals holds the sums.
 */
#ifndef DDT_TRAIN_STEP_TIMER_H
#define DDT_TRAIN_STEP_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "engine/device.h"
#include "util/status.h"

typedef struct step_times {
    double data_wait;
    double compute;
    double communication;
    double optimizer;
    double allreduce_device; /* the all-reduces' own device time (GPUs; 0 on CPU ranks) */
} step_times;

enum { STEP_MARK_START, STEP_MARK_BACKWARD_DONE, STEP_MARK_REDUCED, STEP_MARK_UPDATED, STEP_MARKS };

typedef struct step_timer {
    device *dev;
    comm *comm;
    bool device_clock; /* marks are device events (GPU), not the host clock */
    bool pending[2];   /* a step's marks in that set are not read yet */
    double data_wait_at_start[2], data_wait_in_step[2];
    step_times totals; /* everything read so far */
} step_timer;

void step_timer_init(step_timer *timer, device *dev, comm *data_comm);
/* Reads the marks of step - 2, then marks this step's start. */
ddt_status step_timer_begin(step_timer *timer, int64_t step, double data_wait_total);
void step_timer_mark(step_timer *timer, int64_t step, int mark);
/* Marks the step's end (after the optimizer was issued). */
void step_timer_end(step_timer *timer, int64_t step, double data_wait_total);
/* Reads every step not read yet (waits for the device where it must: the run's end). */
ddt_status step_timer_flush(step_timer *timer);

#endif
