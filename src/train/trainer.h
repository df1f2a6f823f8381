/* trainer.h - the state of one training run, private to src/train, split by owner: each part
 * is set up by one phase of trainer.c and read by the modules named beside it.
 *
 * Ownership: train_run() owns the trainer; trainer_free() releases every part in reverse
 * order of set-up. */
#ifndef DDT_TRAIN_TRAINER_H
#define DDT_TRAIN_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "feed/feed.h"
#include "io/dataset.h"
#include "shard/shard.h"
#include "train/checkpointing.h"
#include "train/generate.h"
#include "train/loss_scale.h"
#include "train/memory_plan.h"
#include "train/report.h"
#include "train/step_timer.h"
#include "train/trace.h"
#include "train/train.h"

/* What the run is, once resolved (trainer.c: settings, data and memory phases). */
typedef struct run_shape {
    model_spec spec;
    int64_t global_batch;
    int micro_batch;
    int micro_batches_per_step;
    int64_t steps_per_epoch;
    int64_t total_steps;
    lr_schedule schedule;
    device_kind device;
    int ordinal;
    comm_backend_kind allreduce; /* the data plane's backend */
    const char *micro_batch_binding; /* --micro-batch auto: what bound it (NULL otherwise) */
} run_shape;

/* The data (trainer.c) and the input path (feed/). */
typedef struct run_data {
    dataset *train;
    dataset *eval; /* NULL without evaluation data */
    shard_plan *rows; /* which rows this rank reads at each step */
    feed *feed;
    char *identity;   /* dataset_identity() of the training data, for checkpoints */
} run_data;

/* The compute and communication engine (trainer.c, used by step.c and evaluate.c). */
typedef struct run_engine {
    device *dev;
    allocator *alloc;
    comm *comm; /* the data plane: gradients (shm or MPI on CPU ranks, NCCL on GPUs) */
    model *model;
    optimizer *opt;
    gradient_buckets *buckets;
    float *scalars; /* TRAIN_SCALAR_COUNT device floats (memory_plan.h) */
    generator sampler; /* token models with evaluation data: the sample at each evaluation */
    bool sampling;
} run_engine;

typedef struct trainer {
    const train_config *config;
    comm *control; /* borrowed: agreements and the control plane, with the watchdog */
    int rank, world_size;
    run_shape shape;
    run_data data;
    memory_limits limits;
    memory_plan plan;
    run_engine engine;
    loss_scaler scaler;
    checkpointing checkpoints;
    report report;
    trace *trace;
    step_timer timer;
    /* where the run is */
    int64_t start_step;   /* the first step to run: 0, or where a checkpoint left off */
    int64_t current_step; /* the step in progress, counted from 1 */
    int64_t steps_done;   /* where training ended */
    bool stopped;         /* by a signal or --stop-after, with a checkpoint */
} trainer;

/* step.c: one optimizer step, counted from 0 (every rank; collective). The outcome says what
 * the ranks agreed (stop, checkpoint by time) and what to report. */
ddt_status train_step(trainer *t, int64_t step, step_outcome *outcome);

/* What training needs of the device besides the model's layers (model_check_device): the
 * loss, the optimizer, the step's checks (finite gradients, their norm, the loss scale) and
 * evaluation's count. DDT_ERR_USAGE naming the operation where the backend leaves one out;
 * checked at set-up, before anything is allocated. */
ddt_status train_check_device_ops(const train_config *cfg, const device *dev);

#endif
