/* evaluate.h - loss and accuracy of a model on a dataset, spread across ranks, and the batch
 * buffers evaluation shares with training.
 *
 * Rank r evaluates the contiguous rows [r*N/world, (r+1)*N/world) in micro-batches and the
 * sums are all-reduced, so every row counts once whatever the number of ranks. Used after
 * every epoch by `train --eval-data` and by `ddtrain eval`.
 *
 * Batch buffers hold two device-side input sets (features, labels or targets, row ids), so
 * the next micro-batch can be uploaded while the current one computes, a host staging set
 * for evaluation reads (from the device's host_alloc: pinned memory on GPUs), and a few
 * device scalars for loss and accuracy sums.
 */
#ifndef DDT_DRIVER_EVALUATE_H
#define DDT_DRIVER_EVALUATE_H

#include <stdint.h>

#include "comm/comm.h"
#include "driver/job.h"
#include "engine/loss.h"
#include "engine/model.h"
#include "io/dataset.h"

typedef struct evaluation {
    double loss;     /* mean per sample */
    double accuracy; /* fraction correct; negative when labels are not class ids */
    int64_t rows;
} evaluation;

/* Device scalars: sums the training loop and evaluation read back. */
enum {
    SCALAR_TRAIN_LOSS,   /* training loss sum since the trainer last read it */
    SCALAR_EVAL_LOSS,    /* evaluation: loss sum of one micro-batch */
    SCALAR_EVAL_CORRECT, /* evaluation: correct predictions of one micro-batch */
    SCALAR_COUNT,
};

typedef struct batch_input {
    float *features;
    int32_t *labels;
    float *targets;
    int64_t *row_ids;
} batch_input;

typedef struct batch_buffers {
    device *dev;
    int rows;
    batch_input host;       /* evaluation reads (host_alloc'ed) */
    batch_input device[2];  /* double-buffered device inputs */
    float *device_scalars;  /* SCALAR_COUNT floats */
} batch_buffers;

/* Allocates device buffers (through alloc) for `rows` rows of `geometry`, and, when
 * `evaluation` is true, host staging for evaluation reads (dev->ops->host_alloc).
 * batch_buffers_free_host() frees the host part; the allocator frees the rest. */
ddt_status batch_buffers_init(batch_buffers *b, allocator *alloc, device *dev,
                              const dataset_geometry *geometry, int rows, bool evaluation);
void batch_buffers_free_host(batch_buffers *b);
/* Adds to component_bytes what batch_buffers_init() takes from the allocator, as the
 * allocator counts it; for memory plans. */
void batch_buffers_plan(const dataset_geometry *geometry, int rows,
                        size_t component_bytes[MEMORY_COMPONENT_COUNT]);
/* Host bytes batch_buffers_init() takes for evaluation reads (when asked); for plans. */
size_t batch_buffers_host_bytes(const dataset_geometry *geometry, int rows);

/* Starts uploading `rows` rows of host input (features, labels or targets, row ids — row_ids
 * may be NULL) into device input set `buffer` (0 or 1); see device_ops.upload_async for the
 * ordering rules. */
ddt_status batch_buffers_upload(batch_buffers *b, const dataset_geometry *geometry, int buffer,
                                int rows, const float *features, const int32_t *labels,
                                const float *targets, const int64_t *row_ids);

/* Collective over `c` (every rank must call it). Failures are agreed through `j`: a non-OK
 * return is the same on every rank and its message has already been printed. Evaluation
 * uploads into device input set `buffer`: the trainer passes the one not holding its next,
 * already uploading, training micro-batch. */
ddt_status evaluate_model(job *j, comm *c, device *dev, model *m, dataset *data,
                          loss_kind loss, batch_buffers *buffers, int buffer,
                          evaluation *result);

#endif
