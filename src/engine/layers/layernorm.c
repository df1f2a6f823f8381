/* layernorm.c - ln: layer normalisation over the last axis (flat features, or each position
 * of a sequence); weight and bias. */
#include "engine/layers/layer_kind.h"

ddt_status layernorm_build(grammar *g, size_t start, const char *prefix) {
    model_node *node;
    DDT_CHECK(grammar_new_layer(g, start, NODE_LAYERNORM, &node));
    int width = g->shape.dims[g->shape.rank - 1];
    model_tensor *t;
    DDT_CHECK(grammar_add_tensor(g, start, prefix, "weight", 1, &width, TENSOR_INIT_ONE, &t));
    DDT_CHECK(grammar_add_tensor(g, start, prefix, "bias", 1, &width, TENSOR_INIT_ZERO, &t));
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    DDT_CHECK(layernorm_build(g, start, prefix));
    grammar_emit(g, "ln");
    return DDT_OK;
}

/* Each row's mean and inverse deviation. */
static size_t saved_floats(const model_node *node, int rows) {
    return layer_times(
        2,
        layer_times((size_t)rows, node->in_shape.rank == 2 ? (size_t)node->in_shape.dims[0] : 1));
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    int width = node->in_shape.dims[node->in_shape.rank - 1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    device_layernorm_forward(c->dev, n, width, c->x, layer_parameter(c, node, 0),
                             layer_parameter(c, node, 1), LAYER_NORM_EPS, c->y, c->saved,
                             c->saved + n);
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
    int width = node->in_shape.dims[node->in_shape.rank - 1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    float *target = dx ? dx : c->workspace;
    device_layernorm_backward(c->dev, n, width, c->x, dy, layer_parameter(c, node, 0), c->saved,
                              c->saved + n, target, layer_gradient(c, node, 0),
                              layer_gradient(c, node, 1));
    return layer_ready(c, node, ready, context);
}

static const layer_word words[] = {{.word = "ln", .parse = parse}};

const layer_kind layer_layernorm = {
    .name = "ln",
    .words = words,
    .word_count = 1,
    .saved_floats = saved_floats,
    .workspace_floats = layer_norm_workspace_floats,
    .rows_per_sample = layer_norm_rows_per_sample,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_layernorm_forward, DEVICE_OP_layernorm_backward),
};
