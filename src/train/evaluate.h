/* evaluate.h - loss and accuracy of a model on a dataset, spread across ranks.
 *
 * Rank r evaluates the contiguous rows [r*N/world, (r+1)*N/world) in micro-batches (read
 * through the feed's evaluation buffer, on the device buffer the training pipeline is not
 * using) and the sums are all-reduced, so every row counts once whatever the number of ranks.
 * Used after every epoch by `ddtrain train --eval-data`, and by `ddtrain eval`
 * (eval_run(), which sets up a device, a model and a feed of its own).
 */
#ifndef DDT_TRAIN_EVALUATE_H
#define DDT_TRAIN_EVALUATE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "comm/comm.h"
#include "engine/device.h"
#include "engine/loss.h"
#include "engine/model.h"
#include "feed/feed.h"
#include "io/dataset.h"
#include "util/status.h"

typedef struct evaluation {
    double loss;     /* mean per sample (per token position for token models) */
    double accuracy; /* fraction correct; negative when labels are not class ids */
    int64_t rows;
    double seconds;  /* how long it took */
} evaluation;

/* Collective over `control`: every rank evaluates its rows; a local failure is agreed, so
 * every rank returns the same status. `scalars` are two device floats of scratch.
 * limit_rows > 0 (and below the dataset's rows): a fixed sample of that many rows, blocks of
 * one micro-batch spread evenly over the data (as nanoGPT estimates its losses on a few
 * batches); 0: every row. The loss is a mean per sample (per token for token models). */
ddt_status evaluate_model(comm *control, device *dev, model *m, dataset *data, loss_kind loss,
                          feed *f, float *scalars, int64_t limit_rows, evaluation *result);

/* `ddtrain eval`: a saved model on a dataset. */
typedef struct eval_config {
    const char *model_file;
    const char *data;
    bool allow_external_data;
    loss_kind loss;
    device_request device;
    int rows; /* rows per micro-batch */
    FILE *out;
} eval_config;

/* Collective over `control`: sets up, evaluates, prints the result on rank 0. */
ddt_status eval_run(comm *control, const eval_config *config);

#endif
