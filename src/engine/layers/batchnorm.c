/* batchnorm.c - bn: batch normalisation, BatchNorm2d over the channels of images or
 * BatchNorm1d over flat features; weight, bias, and the buffers running_mean, running_var and
 * num_batches_tracked (saved, never trained). */
#include "engine/layers/layer_kind.h"

static const float BATCHNORM_MOMENTUM = 0.1f;

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    model_node *node;
    DDT_CHECK(grammar_new_layer(g, start, NODE_BATCHNORM, &node));
    if (g->shape.rank == 2)
        return grammar_fail(g, start,
                            "bn works on images or flat features; use ln on a "
                            "sequence");
    int width = g->shape.dims[0];
    model_tensor *t;
    DDT_CHECK(grammar_add_tensor(g, start, prefix, "weight", 1, &width, TENSOR_INIT_ONE, &t));
    DDT_CHECK(grammar_add_tensor(g, start, prefix, "bias", 1, &width, TENSOR_INIT_ZERO, &t));
    DDT_CHECK(
        grammar_add_tensor(g, start, prefix, "running_mean", 1, &width, TENSOR_INIT_ZERO, &t));
    t->is_buffer = true;
    DDT_CHECK(grammar_add_tensor(g, start, prefix, "running_var", 1, &width, TENSOR_INIT_ONE, &t));
    t->is_buffer = true;
    DDT_CHECK(
        grammar_add_tensor(g, start, prefix, "num_batches_tracked", 0, NULL, TENSOR_INIT_ZERO, &t));
    t->is_buffer = true;
    t->is_counter = true;
    DDT_CHECK(grammar_finish_node(g, start, node));
    grammar_emit(g, "bn");
    return DDT_OK;
}

/* The batch's mean and inverse deviation per channel. */
static size_t saved_floats(const model_node *node, int rows) {
    (void)rows;
    return 2 * (size_t)node->in_shape.dims[0];
}

/* Its backward computes dx on the way to the parameters' gradients: without a dx to write,
 * it writes there. */
static size_t workspace_floats(const model_node *node, int rows, bool input_gradient) {
    return input_gradient ? 0
                          : layer_times((size_t)rows, (size_t)tensor_shape_count(&node->in_shape));
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    int channels = node->in_shape.dims[0];
    int spatial = (int)(tensor_shape_count(&node->in_shape) / channels);
    device_batchnorm_forward(c->dev, c->rows, channels, spatial, c->x, layer_parameter(c, node, 0),
                             layer_parameter(c, node, 1), LAYER_NORM_EPS, c->pass->training,
                             BATCHNORM_MOMENTUM, layer_parameter(c, node, 2),
                             layer_parameter(c, node, 3), c->saved, c->saved + channels, c->y);
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
    int channels = node->in_shape.dims[0];
    int spatial = (int)(tensor_shape_count(&node->in_shape) / channels);
    /* Its parameters' gradients and dx come out of one pass; dx is needed for them. */
    float *target = dx ? dx : c->workspace;
    device_batchnorm_backward(c->dev, c->rows, channels, spatial, c->x, dy,
                              layer_parameter(c, node, 0), c->saved, c->saved + channels, target,
                              layer_gradient(c, node, 0), layer_gradient(c, node, 1));
    return layer_ready(c, node, ready, context);
}

static const layer_word words[] = {{.word = "bn", .parse = parse}};

const layer_kind layer_batchnorm = {
    .name = "bn",
    .words = words,
    .word_count = 1,
    .init_transparent = true,
    .saved_floats = saved_floats,
    .workspace_floats = workspace_floats,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_batchnorm_forward, DEVICE_OP_batchnorm_backward),
};
