/* report.h - what a training run tells its user, and the state that takes: the memory plan,
 * the configuration and a line per rank (its device), progress (a bar on a terminal, lines in
 * a log), a line per epoch, --metrics JSONL records, --tensorboard event files and the final
 * summary. Rank 0 writes to the config's `out` (warnings to `log`); the functions marked
 * collective gather what every rank measured, through the control communicator (bounded).
 *
 * Windows: progress lines, metrics records and epoch lines each cover the steps since their
 * last one (report_window): loss, samples/s and the step time split over that window. A
 * window's samples/s is its steps' samples over its time less the evaluations (and their
 * samples) within it: training throughput, wherever the evaluations fall.
 *
 * TensorBoard tags: train/loss, train/learning_rate, train/samples_per_s, train/grad_norm,
 * time/{data_wait,compute,communication,optimizer}_s and on GPUs time/allreduce_device_s (per
 * --metrics-every window, as the step records), memory/rank<R>/{device,staging,rss}_bytes and
 * {device,staging}_limit_bytes (limits only where set), train/epoch_loss, eval/loss and
 * eval/accuracy (per epoch), and the text "config". Every value is the one the --metrics
 * record of that step carries. A record that cannot be written (a full disk) is said once
 * and that output stops; training goes on.
 *
 * Layout: report.c turns the trainer's state into records, once per event (a step, an
 * evaluation, an epoch, the summary), and hands each to the writers, one file each, which see
 * records only: report_console.c, report_jsonl.c (--metrics), report_tensorboard.c
 * (report_writers.h).
 *
 * Ownership: report_open() opens the files (rank 0); report_close() closes them.
 */
#ifndef DDT_TRAIN_REPORT_H
#define DDT_TRAIN_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "train/evaluate.h"
#include "train/report_writers.h"
#include "train/step_timer.h"
#include "util/status.h"

typedef struct report_window {
    double loss_sum; /* training loss summed over the window's steps (as read) */
    int64_t steps;
    double started;
    double evaluation_at_start; /* report.evaluation_seconds when the window started */
    step_times times_at_start;
} report_window;

/* What one step produced, for the report (step.c fills it). */
typedef struct step_outcome {
    int64_t done;         /* steps completed, counting this one (from 1) */
    float lr;
    bool loss_read;       /* the loss was read this step (a reporting step, or fp16) */
    double loss_sum;      /* summed over the steps since the last read, all ranks */
    double grad_norm;     /* of the reduced gradients; NaN unless metrics were due */
    bool skipped;         /* fp16 overflow: no update */
    bool stop_requested;  /* a rank was asked to stop (SIGTERM, SIGUSR1) */
    bool checkpoint_by_time;
} step_outcome;

typedef struct report {
    report_jsonl jsonl;              /* rank 0, --metrics */
    report_tensorboard tensorboard;  /* rank 0, --tensorboard */
    double loop_started;             /* training time (evaluation excluded) runs from here */
    double evaluation_seconds;       /* spent evaluating (and printing samples) so far */
    report_window progress, record, epoch;
    int64_t steps_since_loss_read;
    double last_train_loss;
    evaluation last_evaluation;
    bool evaluated;
    double train_seconds;
} report;

struct trainer;

/* Whether step `done` reports (a progress line, a metrics record, an epoch end): the same on
 * every rank, from the configuration alone, since reporting steps take collectives. */
bool report_due_progress(const struct trainer *t, int64_t done);
bool report_due_record(const struct trainer *t, int64_t done);

ddt_status report_open(struct trainer *t);     /* rank 0 opens --metrics, --tensorboard */
void report_memory_plan(struct trainer *t);    /* collective */
void report_configuration(struct trainer *t);  /* collective */
void report_loop_start(struct trainer *t);
/* After each step (collective on record steps): windows, progress, records. */
void report_step(struct trainer *t, const step_outcome *outcome);
/* At an epoch's end, after evaluation (evaluation NULL without evaluation data). */
void report_epoch(struct trainer *t, int64_t epoch, const evaluation *result);
/* An evaluation every --eval-every steps: a line on rank 0, a metrics record, TensorBoard. */
void report_evaluation(struct trainer *t, int64_t step, const evaluation *result);
void report_summary(struct trainer *t, double wall_seconds); /* collective */
void report_close(report *r);

#endif
