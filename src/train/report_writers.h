/* report_writers.h - private to the report module: the records report.c builds from the
 * trainer, once per event, and the three writers that show them: the console
 * (report_console.c: progress, epoch and evaluation lines, the plan, the configuration and
 * the summary on the config's `out`), --metrics JSONL (report_jsonl.c) and --tensorboard
 * event files (report_tensorboard.c). A writer sees records only, never the trainer; each
 * says a failure to write once, on `log`, and stops (training goes on).
 *
 * Usage (rank 0):
 *     report_step_record record = {...};          // report.c
 *     report_jsonl_step(&r->jsonl, &record);
 *     report_tensorboard_step(&r->tensorboard, &record);
 *     report_console_step(&r->console, &record);
 */
#ifndef DDT_TRAIN_REPORT_WRITERS_H
#define DDT_TRAIN_REPORT_WRITERS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "io/tensorboard.h"
#include "train/memory_plan.h"
#include "util/status.h"

/* What each rank reports on a step record, gathered to rank 0: REPORT_MEMORY_COUNT values per
 * rank, rank after rank. */
enum {
    REPORT_MEMORY_DEVICE,        /* allocator bytes in use */
    REPORT_MEMORY_STAGING,       /* host staging bytes in use */
    REPORT_MEMORY_RSS,           /* resident set */
    REPORT_MEMORY_DEVICE_LIMIT,  /* 0: none */
    REPORT_MEMORY_STAGING_LIMIT, /* 0: none */
    REPORT_MEMORY_COUNT,
};

/* A step record's scalars, in this order (the JSONL keys and TensorBoard tags follow it); the
 * last, allreduce_device_s, only where step times come from the device (GPUs). */
enum {
    REPORT_STEP_LOSS,
    REPORT_STEP_LR,
    REPORT_STEP_SAMPLES_PER_S,
    REPORT_STEP_GRAD_NORM,
    REPORT_STEP_DATA_WAIT_S,
    REPORT_STEP_COMPUTE_S,
    REPORT_STEP_COMMUNICATION_S,
    REPORT_STEP_OPTIMIZER_S,
    REPORT_STEP_ALLREDUCE_DEVICE_S,
    REPORT_STEP_VALUES,
};

/* One step, as every writer sees it. The console shows the progress part when progress_due;
 * JSONL and TensorBoard the record part when record_due. */
typedef struct report_step_record {
    int64_t step;  /* steps completed, counting this one (from 1) */
    int64_t epoch; /* from 1 */
    int64_t total_steps;
    float lr;
    /* progress: over the steps since the last progress line */
    bool progress_due;
    double progress_loss;
    double progress_samples_per_s;
    double eta_seconds;
    /* the record: over the steps since the last record */
    bool record_due;
    double values[REPORT_STEP_VALUES];
    int value_count; /* REPORT_STEP_VALUES, or one less without device times */
    int ranks;
    const uint64_t *memory; /* ranks x REPORT_MEMORY_COUNT */
} report_step_record;

/* An evaluation every --eval-every steps. */
typedef struct report_evaluation_record {
    int64_t step;
    double loss;
    double accuracy;        /* < 0: none (a loss other than softmax-ce) */
    double seconds;         /* the evaluation's own time */
    double elapsed_seconds; /* since training began */
} report_evaluation_record;

/* An epoch's end. */
typedef struct report_epoch_record {
    int64_t epoch; /* from 1 */
    int64_t steps; /* of the epoch's window */
    int64_t step;  /* the step it ended at (TensorBoard's step) */
    double train_loss;
    bool evaluated;
    double eval_loss;
    double eval_accuracy; /* < 0: none */
    double samples_per_s;
    double elapsed_seconds; /* since training began, evaluation included */
} report_epoch_record;

/* What each rank measured, gathered to rank 0 for the summary: REPORT_PEAK_COUNT per rank. */
enum {
    REPORT_PEAK_RSS,
    REPORT_PEAK_DEVICE,          /* allocator bytes in use */
    REPORT_PEAK_DEVICE_RESERVED, /* allocator bytes reserved from the device */
    REPORT_PEAK_STAGING,         /* host staging bytes in use */
    REPORT_PLANNED_DEVICE,
    REPORT_PLANNED_STAGING,
    REPORT_DEVICE_LIMIT,
    REPORT_STAGING_LIMIT,
    REPORT_OUTSIDE_ALLOCATOR, /* device bytes the communication backend took itself (NCCL) */
    REPORT_PEAK_COUNT,
};

/* Step times, the largest over the ranks. */
enum {
    REPORT_TIME_DATA_WAIT,
    REPORT_TIME_COMPUTE,
    REPORT_TIME_COMMUNICATION,
    REPORT_TIME_OPTIMIZER,
    REPORT_TIME_ALLREDUCE_DEVICE,
    REPORT_TIME_COUNT,
};

/* The run's end. */
typedef struct report_summary_record {
    bool stopped; /* by a signal or --stop-after */
    int64_t first_step, steps_done;
    int64_t skipped_steps;    /* fp16 overflows */
    const char *resumed_from; /* "" if not resumed */
    int ranks;
    int64_t global_batch;
    int micro_batch;
    double wall_seconds, train_seconds, samples_per_s;
    double final_train_loss;
    bool evaluated;
    double eval_loss, eval_accuracy; /* accuracy < 0: none */
    double times[REPORT_TIME_COUNT];
    bool device_times;     /* compute, communication and optimizer in GPU time */
    const uint64_t *peaks; /* ranks x REPORT_PEAK_COUNT */
    const char *saved_to;  /* the model file written, or NULL */
} report_summary_record;

/* The memory plan of rank 0, and the ranks whose plans differ. */
typedef struct report_plan_record {
    const memory_plan *plan;
    const memory_limits *limits;
    const char *micro_batch_binding; /* --micro-batch auto: what bound it (NULL otherwise) */
    int micro_batch, micro_batches_per_step;
    int ranks;
    const double *per_rank; /* ranks x 5: device limit, device need, staging limit, staging need,
                             * fits (1 or 0) */
} report_plan_record;

/* ---- console (rank 0's `out`) ------------------------------------------------------------ */

typedef struct report_console {
    FILE *out;
    bool progress_bar; /* a bar redrawn in place (a terminal) instead of lines */
} report_console;

void report_console_plan(const report_console *c, const report_plan_record *record);
void report_console_configuration(const report_console *c, const char *text);
void report_console_step(const report_console *c, const report_step_record *record);
void report_console_evaluation(const report_console *c, const report_evaluation_record *record);
void report_console_epoch(const report_console *c, const report_epoch_record *record);
void report_console_summary(const report_console *c, const report_summary_record *record);

/* ---- --metrics JSONL ---------------------------------------------------------------------- */

typedef struct report_jsonl {
    FILE *file; /* NULL: none, or no longer written */
    const char *path;
    FILE *log;
} report_jsonl;

/* Opens `path` for adding records (a FIFO or /dev/null is written through). */
ddt_status report_jsonl_open(report_jsonl *j, const char *path, FILE *log);
void report_jsonl_step(report_jsonl *j, const report_step_record *record);
void report_jsonl_evaluation(report_jsonl *j, const report_evaluation_record *record);
void report_jsonl_epoch(report_jsonl *j, const report_epoch_record *record);
void report_jsonl_summary(report_jsonl *j, const report_summary_record *record);
void report_jsonl_close(report_jsonl *j);

/* ---- --tensorboard ------------------------------------------------------------------------ */

typedef struct report_tensorboard {
    tensorboard_writer *writer; /* NULL: none, or no longer written */
    FILE *log;
} report_tensorboard;

ddt_status report_tensorboard_open(report_tensorboard *tb, const char *directory, FILE *log);
/* The custom-scalars layout and the configuration text, at `step`. */
void report_tensorboard_configuration(report_tensorboard *tb, int64_t step, const char *text);
void report_tensorboard_step(report_tensorboard *tb, const report_step_record *record);
void report_tensorboard_evaluation(report_tensorboard *tb, const report_evaluation_record *record);
void report_tensorboard_epoch(report_tensorboard *tb, const report_epoch_record *record);
void report_tensorboard_close(report_tensorboard *tb);

#endif
