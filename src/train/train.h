/* train.h - data-parallel training on every rank, start to finish, as a library call.
 *
 * The driver (src/driver) turns the command line into a train_config, and train_run() does
 * the rest on every rank: set-up in phases, each ending at an agreement point (comm_agree on
 * the control communicator), so a failure on any rank ends every rank together with one
 * message; then the steps; then the results. Nothing here reads options or the environment,
 * or exits: every failure is returned, the same on every rank (its message on every rank,
 * comm_failure_origin() naming the rank it came from), and the driver decides how the job
 * ends. Rank 0 writes its progress, memory plan and summary to config->out, warnings to
 * config->log.
 *
 * Reading order of the module: trainer.c (the phases and the loop), step.c (one step, on one
 * screen), then the parts each owns: feed/ (the input path), memory_plan.c, checkpointing.c,
 * loss_scale.c, report.c, evaluate.c, step_timer.c, trace.c.
 *
 * There is no default configuration here: every default lives in the driver's option table
 * (src/driver/options.c), from which src/driver/train_command.c fills every field.
 *
 * Usage:
 *     train_config cfg = {0};
 *     cfg.data = "train-*.h5"; cfg.model = "784-256-relu-10"; cfg.epochs = 1; ...
 *     ddt_status st = train_run(control, &cfg);
 */
#ifndef DDT_TRAIN_TRAIN_H
#define DDT_TRAIN_TRAIN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "comm/comm.h"
#include "engine/device.h"
#include "engine/loss.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "io/dataset.h"
#include "train/memory_plan.h"
#include "util/status.h"

/* config.micro_batch: choose the largest that fits the memory plan. */
#define TRAIN_MICRO_BATCH_AUTO (-1)

/* What the trainer resolved that the user may have left to it, for the configuration
 * printout (shown instead of the raw zeros that meant "derive"). */
typedef struct train_resolved {
    int micro_batch;
    int micro_batches_per_step;
    int shuffle_window;  /* blocks */
    int prefetch_depth;  /* micro-batches */
    int64_t steps;       /* total steps of the run */
    int64_t steps_per_epoch;
    const char *device;    /* "cpu", "cuda" */
    const char *model;     /* the model's canonical description */
    const char *allreduce; /* the data plane's backend: "shm", "mpi", "nccl" */
} train_resolved;

typedef struct train_config {
    /* data */
    const char *data;      /* a path, comma list or glob */
    const char *eval_data; /* may be NULL */
    bool shuffle;
    bool allow_external_data;
    int shuffle_window; /* blocks; 0: derive from the staging limit */
    int prefetch_depth; /* micro-batches; 0: derive */
    /* model */
    const char *model; /* spec text; with init and model_given false, the init file's */
    bool model_given;  /* the user named the model (it must then agree with init's) */
    const char *init;  /* model file to start from, or NULL */
    const char *save;  /* model file to write at the end, or NULL */
    model_options model_options; /* --recompute */
    loss_kind loss;
    /* optimization */
    optimizer_params optimizer;
    bool decay_all_parameters; /* else only the tensors the spec marks (matrices) */
    float clip_grad_norm;      /* 0: off */
    int64_t eval_every;        /* steps; 0: at the end of each epoch */
    int64_t eval_rows;         /* evaluate a spread sample of this many rows; 0: all */
    lr_schedule schedule; /* kind, base_lr, min_lr, warmup_steps, gamma; step_size 0 = one
                           * epoch; total_steps is filled in */
    /* length */
    int64_t epochs;
    int64_t steps; /* > 0: run this many steps instead of epochs */
    int64_t stop_after;
    int64_t global_batch;
    int micro_batch; /* 0: global batch / ranks; TRAIN_MICRO_BATCH_AUTO */
    uint64_t seed;
    /* memory */
    memory_request memory;
    bool dry_run; /* print the plan and end: DDT_OK if it fits on every rank */
    /* compute and communication */
    device_request device;
    precision_kind precision;
    float loss_scale;    /* fp16's initial dynamic loss scale */
    double comm_timeout; /* seconds; 0: no limit */
    size_t bucket_bytes;
    comm_backend_request allreduce; /* the data plane's backend (auto: by device) */
    bool overlap;                   /* buckets start during backward */
    /* watching */
    const char *metrics;     /* JSONL file to add records to, or NULL */
    const char *tensorboard; /* directory for event files, or NULL */
    const char *trace;       /* Chrome-trace file, or NULL */
    int64_t trace_first, trace_last;
    int64_t log_every;
    int64_t metrics_every;
    /* checkpoints */
    const char *checkpoint_dir;
    int64_t checkpoint_every_steps;
    double checkpoint_every_seconds;
    int checkpoint_keep;
    bool resume;
    bool resume_new_data;  /* resuming on a dataset other than the checkpoint's is intended */
    bool resume_new_batch; /* ... with another global batch */
    /* where rank 0 writes (progress, plan, summary) and where warnings go */
    FILE *out;
    FILE *log;
    bool progress_bar; /* rank 0 redraws a bar in place (out is a terminal) */
    /* Prints the resolved configuration, one "  name  value" line each (the driver's option
     * table); also stored in checkpoints. */
    void (*print_configuration)(const void *context, const train_resolved *resolved, FILE *out);
    const void *print_configuration_context;
    const char *blas_description; /* "OpenBLAS 0.3.21, kernel SkylakeX" */
    /* Whether the process was asked to stop at the next step boundary (SIGTERM, SIGUSR1): the
     * driver's signal handlers answer it. May be NULL. */
    bool (*stop_requested)(void);
} train_config;

/* Refuses data that does not fit the model: a feature width other than its input, labels its
 * output and loss cannot take. Messages name `what` (the option) and `path`. */
ddt_status train_check_data_against_model(const char *what, const char *path,
                                          const dataset_geometry *g, const model_spec *spec,
                                          loss_kind loss);

/* Files with class labels but no num_classes (plain h5py files): the model's output width
 * (2 for bce on one output) becomes the class count their labels are checked against
 * (dataset_set_classes). Files that declare a count keep it. */
ddt_status train_adopt_class_count(dataset *data, const model_spec *spec, loss_kind loss);

/* Collective over `control`: whether this rank reads the same data as rank 0, by the data's
 * identity (dataset_identity: per shard its file name, rows, width, size and a fingerprint of
 * its header), so identical node-local copies under other paths pass and one path or glob
 * that names other files on another node does not. The answer is this rank's (DDT_ERR_USAGE
 * naming `what`, the option, and the first shard that differs on both ranks), for the caller
 * to agree on; a failed broadcast is DDT_ERR_COMM. */
ddt_status train_check_same_data(comm *control, const char *what, const dataset *data);

/* Collective over `control` (the driver's control-plane communicator, with its timeout and
 * watchdog): trains as configured. Every rank returns the same status. */
ddt_status train_run(comm *control, const train_config *config);

#endif
