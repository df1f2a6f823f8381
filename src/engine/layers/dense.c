/* dense.c - a dense layer, nn.Linear on the last axis (flat features, or each position of a
 * sequence): written as its width ("784-256-10"); weight [out, in] and bias. */
#include <string.h>

#include "engine/layers/layer_kind.h"

ddt_status dense_build(grammar *g, size_t start, const char *prefix, int outputs,
                       float normal_std) {
    if (g->shape.rank == 3)
        return grammar_fail(g, start,
                            "a dense layer needs flat features or a sequence, not %dx%dx%d images: "
                            "put flatten or gap before it",
                            g->shape.dims[0], g->shape.dims[1], g->shape.dims[2]);
    if (g->spec->input_kind == MODEL_INPUT_TOKENS && g->current < 0)
        return grammar_fail(g, start, "token ids need embed(D) before any other layer");
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_DENSE, &node));
    int inputs = g->shape.dims[g->shape.rank - 1];
    node->bias = true;
    node->out_shape.dims[node->out_shape.rank - 1] = outputs;
    model_tensor *w;
    int dims[2] = {outputs, inputs};
    DDT_CHECK(grammar_add_weight(g, start, prefix, 2, dims, inputs, outputs, &w));
    if (normal_std > 0) {
        w->init = TENSOR_INIT_NORMAL;
        w->init_std = normal_std;
    }
    DDT_CHECK(grammar_add_bias(g, start, prefix, outputs));
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

/* WIDTH, at the number. */
static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    int outputs;
    DDT_CHECK(grammar_read_count(g, start, "a dense layer's width", 1, MODEL_MAX_WIDTH, &outputs));
    if (g->source[g->pos] == 'x')
        return grammar_fail(g, start, "an image shape is only allowed as the input (first token)");
    DDT_CHECK(dense_build(g, start, prefix, outputs, 0));
    grammar_emit(g, "%d", outputs);
    return DDT_OK;
}

static size_t max_gemm_operand_floats(const model_node *node, int rows) {
    size_t in = (size_t)node->in_shape.dims[node->in_shape.rank - 1];
    size_t out = (size_t)node->out_shape.dims[node->out_shape.rank - 1];
    size_t n =
        layer_times((size_t)rows, node->in_shape.rank == 2 ? (size_t)node->in_shape.dims[0] : 1);
    return layer_max3(layer_times(in, out), layer_times(n, in), layer_times(n, out));
}

static int64_t rows_per_sample(const model_node *node) {
    return node->in_shape.rank == 2 ? node->in_shape.dims[0] : 1;
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    int in = node->in_shape.dims[node->in_shape.rank - 1];
    int outputs = node->out_shape.dims[node->out_shape.rank - 1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    device_gemm(c->dev, false, true, n, outputs, in, 1.0f, c->x, in, layer_parameter(c, node, 0),
                in, 0.0f, c->y, outputs);
    if (node->bias) device_bias_add(c->dev, n, outputs, c->y, layer_parameter(c, node, 1));
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
    int in = node->in_shape.dims[node->in_shape.rank - 1];
    int out = node->out_shape.dims[node->out_shape.rank - 1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    /* dW += dy^T x and db += column sums of dy, then tell the caller they are final before
     * computing dx, so a reduction of them can overlap that last product. */
    device_gemm(c->dev, true, false, out, in, n, 1.0f, dy, out, c->x, in, 1.0f,
                layer_gradient(c, node, 0), in);
    if (node->bias) device_bias_gradient_accumulate(c->dev, n, out, dy, layer_gradient(c, node, 1));
    DDT_CHECK(layer_ready(c, node, ready, context));
    if (dx)
        device_gemm(c->dev, false, false, n, in, out, 1.0f, dy, out, layer_parameter(c, node, 0),
                    in, 0.0f, dx, in);
    return DDT_OK;
}

static const layer_word words[] = {{.word = NULL, .parse = parse}};

const layer_kind layer_dense = {
    .name = "dense",
    .words = words,
    .word_count = 1,
    .fan_in_weight = true,
    .max_gemm_operand_floats = max_gemm_operand_floats,
    .rows_per_sample = rows_per_sample,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_gemm, DEVICE_OP_bias_add, DEVICE_OP_bias_gradient_accumulate),
};
