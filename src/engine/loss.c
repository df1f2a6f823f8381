/* loss.c - loss names, the check that a loss fits the model and the dataset's labels, and
 * the dispatch to the device's loss operation (loss.h). The arithmetic is in the backends. */
#include "engine/loss.h"

#include <string.h>

static const struct {
    loss_kind kind;
    const char *name;
} loss_names[] = {
    {LOSS_SOFTMAX_CROSS_ENTROPY, "softmax-ce"},
    {LOSS_BINARY_CROSS_ENTROPY, "bce"},
    {LOSS_MEAN_SQUARED_ERROR, "mse"},
};

ddt_status loss_kind_parse(const char *text, loss_kind *out) {
    for (size_t i = 0; i < sizeof loss_names / sizeof loss_names[0]; i++) {
        if (text && strcmp(text, loss_names[i].name) == 0) {
            *out = loss_names[i].kind;
            return DDT_OK;
        }
    }
    return ddt_error(DDT_ERR_USAGE, "--loss: '%s' is not a loss (expected softmax-ce, bce or mse)",
                     text ? text : "");
}

const char *loss_kind_name(loss_kind kind) {
    for (size_t i = 0; i < sizeof loss_names / sizeof loss_names[0]; i++)
        if (loss_names[i].kind == kind) return loss_names[i].name;
    return "unknown";
}

ddt_status loss_check_compatible(loss_kind kind, int output_width, bool class_labels, int classes,
                                 int target_width) {
    const char *name = loss_kind_name(kind);
    switch (kind) {
    case LOSS_SOFTMAX_CROSS_ENTROPY:
        if (output_width < 2)
            return ddt_error(DDT_ERR_USAGE,
                             "softmax-ce needs a model with at least 2 outputs, this one has %d "
                             "(use bce for a single output)",
                             output_width);
        if (class_labels && classes != output_width)
            return ddt_error(DDT_ERR_USAGE,
                             "softmax-ce: the dataset has %d classes but the model has %d "
                             "outputs; make the last layer %d wide",
                             classes, output_width, classes);
        break;
    case LOSS_BINARY_CROSS_ENTROPY:
        if (class_labels && output_width != 1)
            return ddt_error(DDT_ERR_USAGE,
                             "bce with class labels needs a model with 1 output, this one has %d "
                             "(use softmax-ce for several classes)",
                             output_width);
        if (class_labels && classes > 2)
            return ddt_error(DDT_ERR_USAGE,
                             "bce with class labels needs 2 classes (0 and 1), the dataset has %d "
                             "(use softmax-ce)",
                             classes);
        break;
    case LOSS_MEAN_SQUARED_ERROR:
        if (class_labels && classes != output_width)
            return ddt_error(DDT_ERR_USAGE,
                             "mse with class labels compares one-hot targets: the dataset has %d "
                             "classes but the model has %d outputs",
                             classes, output_width);
        break;
    default:
        return ddt_error(DDT_ERR_INTERNAL, "loss_check_compatible: unknown loss %d", (int)kind);
    }
    if (!class_labels && target_width != output_width)
        return ddt_error(DDT_ERR_USAGE,
                         "%s: the dataset's targets are %d wide but the model has %d outputs; "
                         "make the last layer %d wide",
                         name, target_width, output_width, target_width);
    return DDT_OK;
}

device_op loss_device_op(loss_kind kind) {
    switch (kind) {
    case LOSS_SOFTMAX_CROSS_ENTROPY:
        return DEVICE_OP_softmax_cross_entropy;
    case LOSS_BINARY_CROSS_ENTROPY:
        return DEVICE_OP_binary_cross_entropy;
    case LOSS_MEAN_SQUARED_ERROR:
        return DEVICE_OP_mean_squared_error;
    }
    return DEVICE_OP_COUNT;
}

void loss_apply(device *dev, loss_kind kind, int rows, int cols, const float *logits,
                const int32_t *labels, const float *targets, float scale, float *loss_sum,
                float *dlogits) {
    switch (kind) {
    case LOSS_SOFTMAX_CROSS_ENTROPY:
        device_softmax_cross_entropy(dev, rows, cols, logits, labels, targets, scale, loss_sum,
                                   dlogits);
        break;
    case LOSS_BINARY_CROSS_ENTROPY:
        device_binary_cross_entropy(dev, rows, cols, logits, labels, targets, scale, loss_sum,
                                  dlogits);
        break;
    case LOSS_MEAN_SQUARED_ERROR:
        device_mean_squared_error(dev, rows, cols, logits, labels, targets, scale, loss_sum, dlogits);
        break;
    }
}
