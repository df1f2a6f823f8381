/* trainer.h - the state of `ddtrain train`, shared by its three files: train.c (set-up
 * phases and the training loop), train_checkpoint.c (checkpoints, resuming, stop signals)
 * and train_report.c (what rank 0 prints and writes). Private to src/driver.
 *
 * Ownership: train_run() owns the trainer; trainer_free() in train.c releases everything,
 * in reverse order of set-up. */
#ifndef DDT_DRIVER_TRAINER_H
#define DDT_DRIVER_TRAINER_H

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver/train.h"

#include "comm/comm.h"
#include "driver/blas_setup.h"
#include "driver/evaluate.h"
#include "driver/memory_plan.h"
#include "driver/trace.h"
#include "driver/watchdog.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/loss.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "io/checkpoint.h"
#include "io/dataset.h"
#include "io/model_file.h"
#include "io/stream.h"
#include "io/tensorboard.h"
#include "shard/shard.h"
#include "util/files.h"

typedef struct phase_times {
    double data_wait;
    double compute;
    double communication;
    double optimizer;
    double allreduce_device; /* GPUs: the all-reduces' own device time (overlapped or not) */
} phase_times;

typedef struct trainer {
    job *job;
    const options *opts;
    /* owned, freed in reverse order by trainer_free() */
    device *dev;
    allocator *alloc;
    comm *comm;
    dataset *train_data;
    dataset *eval_data;
    model *model;
    optimizer *opt;
    gradient_buckets *buckets;
    shard_plan *plan_rows; /* which rows this rank reads */
    stream *stream;
    batch_buffers buffers;
    FILE *metrics;
    tensorboard_writer *tensorboard; /* rank 0, --tensorboard */
    watchdog *watchdog;
    trace *trace;
    /* resolved settings */
    memory_limits limits;
    memory_plan plan;
    const char *micro_batch_binding; /* --micro-batch auto: what bound it */
    model_spec spec;
    loss_kind loss;
    optimizer_params optimizer_settings;
    lr_schedule schedule;
    device_kind device_kind;
    int device_ordinal; /* which GPU (device_choose: local rank modulo the visible GPUs) */
    precision_kind precision;
    int64_t global_batch;
    int micro_batch;
    int micro_batches_per_step;
    int64_t steps_per_epoch;
    int64_t total_steps;
    /* the input pipeline: the micro-batch already uploading into the other input buffer */
    micro_batch *next_micro_batch;
    int next_buffer;
    int64_t micro_batches_fetched;
    /* checkpoints and resuming */
    int64_t checkpoint_every_steps;
    double checkpoint_every_seconds;
    double last_checkpoint_time;
    int64_t start_step;      /* first step to run: 0, or where a checkpoint left off */
    int64_t steps_done;      /* where training ended (total_steps unless stopped) */
    int64_t current_step;    /* the step in progress, counted from 1 (for trace events) */
    double loop_started;     /* when the training loop began (job_now) */
    char resumed_from[4096]; /* the checkpoint resumed from, if any */
    bool stopped_by_signal;
    bool progress_bar; /* rank 0's output is a terminal: redraw a bar instead of lines */
    /* fp16 loss scaling */
    float loss_scale;
    int64_t steps_since_overflow;
    int64_t skipped_steps;
    /* results */
    phase_times times; /* host clock on CPU ranks; the device's timer marks on GPUs */
    bool device_timing;     /* GPU: step times from timer marks (train.c, step_marks_read) */
    bool marks_pending[2];  /* a step's marks in that set are not read yet */
    double train_seconds;
    double last_train_loss;
    evaluation last_eval;
    bool evaluated;
} trainer;

typedef struct epoch_tally {
    double loss_sum;
    int64_t steps;
    double started;
    double eval_seconds;
} epoch_tally;

/* One "step" record for --metrics: the window since the last one. */
typedef struct metrics_window {
    double loss_sum;
    int64_t steps;
    double started;
    phase_times times_at_start;
} metrics_window;

/* ---- train_checkpoint.c: checkpoints, resuming and stop signals ------------------------- */

/* --checkpoint-every: a number of steps ("500"), or a duration ("90s", "10min", "2h"). */
ddt_status train_parse_checkpoint_every(const char *text, int64_t *steps, double *seconds);
/* Rank 0: the newest complete checkpoint, checked against this run and loaded onto the
 * device; *resumed says whether there was one. */
ddt_status train_resume_on_root(trainer *t, bool *resumed);
/* Collective: every rank takes rank 0's optimizer state and position after a resume. */
ddt_status train_share_resume_state(trainer *t, bool resumed_on_root);
/* SIGTERM and SIGUSR1 ask for a stop at the next step boundary. */
void train_install_stop_handlers(void);
bool train_stop_requested(void);
/* Rank 0 writes a checkpoint of the state after `steps_done` steps (others return DDT_OK). */
ddt_status train_write_checkpoint(trainer *t, int64_t steps_done);

/* ---- train_report.c: what rank 0 prints and writes ----------------------------------------- */

void train_print_memory_plan(trainer *t); /* collective */
/* Collective: rank 0 prints the per-rank device lines and the resolved configuration, and
 * writes them to TensorBoard as the text "config" (with the custom-scalars layout). */
void train_print_configuration(trainer *t);
void train_format_duration(double seconds, char *text, size_t size);
void train_write_json_number(FILE *f, const char *name, double value);
/* Collective at the end of an epoch: evaluation, the epoch line and record. */
ddt_status train_end_of_epoch(trainer *t, int64_t epoch, epoch_tally *tally);
/* Collective on --metrics-every steps: gathers every rank's memory; rank 0 writes the step
 * record (--metrics) and the step's scalars (--tensorboard). grad_norm: the L2 norm of the
 * all-reduced gradients (rank 0's value). */
void train_report_step(trainer *t, int64_t step, float lr, double grad_norm, metrics_window *w);
void train_print_progress(trainer *t, int64_t done, int64_t epoch, double loss, float lr,
                          double rate, double seconds_left);
void train_report_summary(trainer *t, double wall_seconds); /* collective */

#endif
