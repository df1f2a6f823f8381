/* rmsnorm.c - rms: RMS normalisation over the last axis (Llama's RMSNorm, PyTorch's
 * nn.RMSNorm with eps 1e-5): y = x / sqrt(mean of x^2 + eps) * weight; a weight, no bias, and
 * no mean taken out. */
#include "engine/layers/layer_kind.h"

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    model_node *node;
    DDT_CHECK(grammar_new_layer(g, start, NODE_RMSNORM, &node));
    int width = g->shape.dims[g->shape.rank - 1];
    model_tensor *t;
    DDT_CHECK(grammar_add_tensor(g, start, prefix, "weight", 1, &width, TENSOR_INIT_ONE, &t));
    DDT_CHECK(grammar_finish_node(g, start, node));
    grammar_emit(g, "rms");
    return DDT_OK;
}

/* Each row's inverse root mean square. */
static size_t saved_floats(const model_node *node, int rows) {
    return layer_times((size_t)rows, node->in_shape.rank == 2 ? (size_t)node->in_shape.dims[0] : 1);
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    int width = node->in_shape.dims[node->in_shape.rank - 1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    device_rmsnorm_forward(c->dev, n, width, c->x, layer_parameter(c, node, 0), LAYER_NORM_EPS,
                           c->y, c->saved);
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
    int width = node->in_shape.dims[node->in_shape.rank - 1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    device_rmsnorm_backward(c->dev, n, width, c->x, dy, layer_parameter(c, node, 0), c->saved,
                            dx ? dx : c->workspace, layer_gradient(c, node, 0));
    return layer_ready(c, node, ready, context);
}

static const layer_word words[] = {{.word = "rms", .parse = parse}};

const layer_kind layer_rmsnorm = {
    .name = "rms",
    .words = words,
    .word_count = 1,
    .saved_floats = saved_floats,
    .workspace_floats = layer_norm_workspace_floats,
    .rows_per_sample = layer_norm_rows_per_sample,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_rmsnorm_forward, DEVICE_OP_rmsnorm_backward),
};
