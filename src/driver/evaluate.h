/* evaluate.h - loss and accuracy of a model on a dataset, spread across ranks.
 *
 * Rank r evaluates the contiguous rows [r*N/world, (r+1)*N/world) in micro-batches and the
 * sums are all-reduced, so every row counts once whatever the number of ranks. Used after
 * every epoch by `train --eval-data` and by `ddtrain eval`.
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

/* Buffers the evaluation reads into and computes from; sized for model_max_rows() rows. */
typedef struct batch_buffers {
    /* host staging */
    float *features;
    int32_t *labels;
    float *targets;
    /* device */
    float *device_features;
    int32_t *device_labels;
    float *device_targets;
    int64_t *device_row_ids;
    float *device_scalars; /* [0] loss sum, [1] correct count */
} batch_buffers;

/* Allocates host staging (malloc) and device buffers (through alloc) for `rows` rows of
 * `geometry`. Free the host part with batch_buffers_free_host(); the allocator frees the rest. */
ddt_status batch_buffers_init(batch_buffers *b, allocator *alloc, const dataset_geometry *geometry,
                              int rows, int output_width);
void batch_buffers_free_host(batch_buffers *b);
/* Adds to component_bytes what batch_buffers_init() takes from the allocator (device-side
 * input staging, and a little workspace), as the allocator counts it; for memory plans. */
void batch_buffers_plan(const dataset_geometry *geometry, int rows,
                        size_t component_bytes[MEMORY_COMPONENT_COUNT]);

/* Collective over `c` (every rank must call it). Failures are agreed through `j`: a non-OK
 * return is the same on every rank and its message has already been printed. */
ddt_status evaluate_model(job *j, comm *c, device *dev, model *m, dataset *data,
                          loss_kind loss, batch_buffers *buffers, evaluation *result);

/* Copies `rows` rows of host staging (features, labels or targets, row ids) to the device
 * buffers. row_ids may be NULL (evaluation needs none). */
ddt_status batch_buffers_upload(batch_buffers *b, device *dev, const dataset_geometry *geometry,
                                int rows, const float *features, const int32_t *labels,
                                const float *targets, const int64_t *row_ids);

#endif
