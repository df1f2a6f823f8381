/* loss.h - choosing and applying the training loss.
 *
 * Usage:
 *     loss_kind kind;
 *     DDT_CHECK(loss_kind_parse("softmax-ce", &kind));
 *     loss_apply(dev, kind, rows, cols, logits, labels, NULL, 1.0f / global_batch,
 *                loss_sum, model_output_gradient(m));
 */
#ifndef DDT_ENGINE_LOSS_H
#define DDT_ENGINE_LOSS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/device.h"
#include "util/status.h"

typedef enum loss_kind {
    LOSS_SOFTMAX_CROSS_ENTROPY,
    LOSS_BINARY_CROSS_ENTROPY,
    LOSS_MEAN_SQUARED_ERROR,
} loss_kind;

/* "softmax-ce", "bce", "mse"; DDT_ERR_USAGE otherwise. */
ddt_status loss_kind_parse(const char *text, loss_kind *out);
const char *loss_kind_name(loss_kind kind);
/* The device operation loss_apply() calls for `kind` (DEVICE_OP_COUNT for an unknown kind). */
device_op loss_device_op(loss_kind kind);

/* Checks that a loss can be used with the model's output width and the dataset's labels
 * (class ids with `classes` classes, or float targets of width target_width). */
ddt_status loss_check_compatible(loss_kind kind, int output_width, bool class_labels, int classes,
                                 int target_width);

/* Dispatches to the device's loss operation (see engine/device.h for the contract). */
void loss_apply(device *dev, loss_kind kind, int rows, int cols, const float *logits,
                const int32_t *labels, const float *targets, float scale, float *loss_sum,
                float *dlogits);

#endif
