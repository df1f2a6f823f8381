/* lmhead.c - lmhead: T x D -> T x VOCAB logits with embed's token table (tied, no bias); its
 * gradient adds to the table's, final only after embed's backward. */
#include "engine/layers/layer_kind.h"

ddt_status lm_head_build(grammar *g, size_t start) {
    if (g->embed_node < 0)
        return grammar_fail(g, start, "lmhead reuses embed's token table: the model needs embed");
    const model_node *embed = &g->spec->nodes[g->embed_node];
    if (g->shape.rank != 2 || g->shape.dims[1] != embed->out_shape.dims[1])
        return grammar_fail(g, start, "lmhead needs a sequence of width %d (embed's)",
                            embed->out_shape.dims[1]);
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_LM_HEAD, &node));
    node->tied_tensor = embed->first_tensor;
    node->out_shape = tensor_shape_2(g->shape.dims[0], g->spec->vocab);
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    (void)prefix;
    DDT_CHECK(lm_head_build(g, start));
    grammar_emit(g, "lmhead");
    return DDT_OK;
}

static size_t max_gemm_operand_floats(const model_node *node, int rows) {
    size_t n = layer_times((size_t)rows, (size_t)node->in_shape.dims[0]);
    size_t d = (size_t)node->in_shape.dims[1], v = (size_t)node->out_shape.dims[1];
    return layer_max3(layer_times(v, d), layer_times(n, d), layer_times(n, v));
}

static int64_t rows_per_sample(const model_node *node) {
    return node->out_shape.dims[0];
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    int width = node->in_shape.dims[1], vocab = node->out_shape.dims[1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    const model_tensor *table = &c->spec->tensors[node->tied_tensor];
    device_gemm(c->dev, false, true, n, vocab, width, 1.0f, c->x, width,
                c->parameters + table->offset, width, 0.0f, c->y, vocab);
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
    (void)ready;
    (void)context;
    int width = node->in_shape.dims[1], vocab = node->out_shape.dims[1];
    int n = (int)layer_last_axis_rows(&node->in_shape, c->rows);
    const model_tensor *table = &c->spec->tensors[node->tied_tensor];
    /* The token table's gradient is final only after embed's backward. */
    device_gemm(c->dev, true, false, vocab, width, n, 1.0f, dy, vocab, c->x, width, 1.0f,
                c->gradients + table->offset, width);
    if (dx)
        device_gemm(c->dev, false, false, n, width, vocab, 1.0f, dy, vocab,
                    c->parameters + table->offset, width, 0.0f, dx, width);
    return DDT_OK;
}

static const layer_word words[] = {{.word = "lmhead", .parse = parse}};

const layer_kind layer_lm_head = {
    .name = "lmhead",
    .words = words,
    .word_count = 1,
    .trains_tied = true,
    .max_gemm_operand_floats = max_gemm_operand_floats,
    .rows_per_sample = rows_per_sample,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_gemm),
};
