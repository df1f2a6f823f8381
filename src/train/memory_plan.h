/* memory_plan.h - each rank's memory budget: the limits it runs under, and the plan of what it
 * will hold, computed before anything is allocated.
 *
 * Limits: a device-memory policy (growth or preallocate) and limit, and a host-staging limit
 * for the input path. The device limit may be bytes, a fraction of the device, or a list with
 * one entry per local rank. Where each came from (an option, or the environment the driver
 * read) travels with it for messages.
 *
 * Plan: the bytes each component takes from the device allocator (parameters, gradients,
 * optimizer state, activations for one micro-batch, workspace, gradient buckets, device-side
 * input staging), exactly as the allocator will count them, and the host staging the reader
 * stream and the evaluation buffer will hold, fitted to the staging limit. The trainer checks
 * the plan against the limits before allocating, so a run that cannot fit is refused up front
 * with the numbers and what to change; after allocation it checks the allocator's counts
 * against the plan.
 *
 * Usage:
 *     memory_limits limits;
 *     DDT_CHECK(memory_limits_resolve(&request, dev, local_rank, local_size, &limits));
 *     memory_plan plan;
 *     memory_plan_compute(&inputs, micro_batch, &limits, &plan);
 *     if (!plan.fits) return memory_plan_refuse(&plan, &limits, rank);
 */
#ifndef DDT_TRAIN_MEMORY_PLAN_H
#define DDT_TRAIN_MEMORY_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "io/dataset.h"
#include "io/stream.h"
#include "shard/shard.h"

typedef struct memory_limits {
    memory_policy policy;
    size_t device_limit;  /* bytes; 0 = none */
    char device_source[160]; /* how it was set, for messages: "--device-memory-limit 2GiB" */
    /* No limit was given: device_limit is this rank's share of the device's memory (on CPU
     * ranks the node's), which device_sharing ranks share. */
    bool device_limit_implicit;
    int device_sharing;
    size_t staging_limit; /* bytes; 0 = none */
    /* Device bytes the communication backend took outside the allocator (NCCL's buffers,
     * measured when it was set up, before the allocator reserves anything), counted against
     * device_limit: the allocator gets what is left of the limit. */
    size_t device_outside_allocator;
    const char *outside_allocator_owner; /* "nccl", for messages */
} memory_limits;

/* This rank's share of its device's memory, in bytes: all of it, or on CPU ranks the node's
 * memory (MemTotal, or the cgroup's limit) divided by the node's ranks, on GPUs by the ranks
 * given the same GPU (*sharing); source says so ("the node's memory, 23.54 GiB, shared by 2
 * ranks"). 0 if the backend cannot tell. A run without --device-memory-limit plans against it. */
size_t memory_limits_device_share(device *dev, int local_rank, int local_size, int *sharing,
                                  char *source, size_t source_size);

/* The allocator's own limit: device_limit less what lies outside it (0 = none). */
size_t memory_limits_allocator_bytes(const memory_limits *limits);

/* What the user asked for, as text, with where each piece came from. */
typedef struct memory_request {
    memory_policy policy;
    const char *policy_source; /* "--device-memory", "DDTRAIN_DEVICE_MEMORY" */
    const char *limit;         /* SIZE, FRACTION or one per local rank ("8GiB,4GiB"); NULL: none */
    const char *limit_source;  /* "--device-memory-limit", "DDTRAIN_DEVICE_MEMORY_LIMIT" */
    size_t staging_limit;      /* --host-staging-limit bytes; 0: none */
} memory_request;

/* Resolves this rank's limits. DDT_ERR_USAGE for bad values (naming where they came from), a
 * list with fewer entries than local ranks, or preallocate without a limit. */
ddt_status memory_limits_resolve(const memory_request *request, device *dev, int local_rank,
                                 int local_size, memory_limits *out);

/* Device scalars the trainer keeps (one allocation, counted as workspace by the plan). */
enum {
    TRAIN_SCALAR_LOSS,    /* training loss sum since the trainer last read it */
    TRAIN_SCALAR_EVAL_LOSS,    /* evaluation: loss sum of one micro-batch */
    TRAIN_SCALAR_EVAL_CORRECT, /* evaluation: correct predictions of one micro-batch */
    TRAIN_SCALAR_COUNT,
};

/* Everything a plan depends on besides the micro-batch and the limits. */
typedef struct memory_plan_inputs {
    device *dev;             /* the backend: precision scratch, as it will take it */
    precision_kind precision;
    const model_spec *spec;
    model_options model; /* --recompute */
    const optimizer_params *optimizer;
    const dataset_geometry *geometry;
    shard_params shard;      /* rows, global batch, world, block rows, shuffle (micro-batch and
                              * window are filled in by the plan) */
    int prefetch_depth;      /* 0 = derive from the staging limit */
    int window_blocks;       /* 0 = derive */
    bool evaluation;         /* evaluation reads need a host buffer (--eval-data) */
} memory_plan_inputs;

typedef struct memory_plan {
    int micro_batch;
    size_t device[MEMORY_COMPONENT_COUNT]; /* allocator bytes per component */
    size_t device_total;
    staging_fit staging;        /* the reader stream's share of host staging */
    size_t evaluation_bytes;    /* host buffer for evaluation reads */
    size_t host_staging_total;  /* staging.bytes + evaluation_bytes */
    bool device_fits;
    bool too_many_rows;         /* micro_batch > max_rows: cannot run at all */
    int max_rows;               /* model_spec_max_rows() */
    bool staging_fits;
    bool fits;
    char staging_problem[512];  /* why staging does not fit, when it does not */
} memory_plan;

/* Whether training keeps a sampler (token models with evaluation data print a sample at each
 * evaluation): its device window is part of the plan. */
bool memory_plan_samples(const model_spec *spec, bool evaluation);

/* Computes the plan for `micro_batch` rows under `limits`. Never fails on a plan that does
 * not fit: it says so in the flags. */
void memory_plan_compute(const memory_plan_inputs *inputs, int micro_batch,
                         const memory_limits *limits, memory_plan *out);

/* --micro-batch auto: the largest b dividing per_rank_batch whose plan fits; *binding names
 * the resource that ruled out the next larger candidate ("device memory", "host staging") or
 * "nothing" when the whole per-rank batch fits. DDT_ERR_MEMORY if not even b = 1 fits. */
ddt_status memory_plan_choose_micro_batch(const memory_plan_inputs *inputs, int per_rank_batch,
                                          const memory_limits *limits, memory_plan *out,
                                          const char **binding);

/* The error for a plan that does not fit, naming the rank, the numbers and what to change. */
ddt_status memory_plan_refuse(const memory_plan *plan, const memory_limits *limits, int rank);

/* Prints the plan as a table against the limits. */
void memory_plan_print(const memory_plan *plan, const memory_limits *limits, FILE *out);

#endif
