/* pool.c - maxpool(K[,sS][,pP]) and avgpool(...), nn.MaxPool2d / nn.AvgPool2d on images (the
 * stride is the window unless given). */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "engine/layers/layer_kind.h"

/* maxpool(K[,sS][,pP]) / avgpool(...) after the '(': each setting at most once. */
static ddt_status parse(grammar *g, const layer_word *entry, size_t start, const char *prefix) {
    (void)prefix;
    pool_kind kind = (pool_kind)entry->variant;
    const char *word = entry->word;
    DDT_CHECK(grammar_need_images(g, start, word));
    int kernel, stride = 0, pad = 0;
    bool stride_given = false, pad_given = false;
    DDT_CHECK(grammar_read_count(g, start, "the pooling window", 1, 1024, &kernel));
    while (grammar_accept(g, ',')) {
        char argument[32];
        size_t length = grammar_argument_at(g, argument, sizeof argument);
        char key = g->source[g->pos];
        bool numbered = length > 1 && isdigit((unsigned char)g->source[g->pos + 1]);
        if (length == 0) return grammar_fail(g, start, "%s(...) has an empty argument", word);
        if (key == 's' && numbered)
            DDT_CHECK(
                grammar_read_setting(g, start, word, "the stride", 1, &stride_given, &stride));
        else if (key == 'p' && numbered)
            DDT_CHECK(grammar_read_setting(g, start, word, "the padding", 0, &pad_given, &pad));
        else
            return grammar_fail(g, start, "%s(...) has no argument '%s' (it takes K[,sS][,pP])",
                                word, argument);
    }
    DDT_CHECK(grammar_expect(g, ')', start, "to close the pooling layer"));
    if (stride == 0) stride = kernel;
    if (2 * pad > kernel)
        return grammar_fail(g, start, "the padding %d is more than half the window %d", pad,
                            kernel);
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_POOL, &node));
    node->pool = kind;
    char what[48];
    snprintf(what, sizeof what, "--model: %s(%d)", word, kernel);
    DDT_CHECK(conv_geometry_make(g->shape.dims[0], g->shape.dims[1], g->shape.dims[2], kernel,
                                 kernel, stride, stride, pad, pad, what, &node->geometry));
    node->out_shape =
        tensor_shape_3(g->shape.dims[0], node->geometry.out_height, node->geometry.out_width);
    DDT_CHECK(grammar_finish_node(g, start, node));
    grammar_emit(g, "%s(%d", word, kernel);
    if (stride != kernel) grammar_emit(g, ",s%d", stride);
    if (pad) grammar_emit(g, ",p%d", pad);
    grammar_emit(g, ")");
    return DDT_OK;
}

static const char *node_name(const model_node *node) {
    return node->pool == POOL_MAX ? "maxpool" : "avgpool";
}

ddt_status pool_forward(const layer_call *c, const model_node *node, const float **out) {
    device_pool2d_forward(c->dev, node->pool, &node->geometry, c->rows, c->x, c->y);
    *out = c->y;
    return DDT_OK;
}

ddt_status pool_backward(const layer_call *c, const model_node *node, const float *y,
                         const float *dy, float *dx, model_gradient_ready_fn ready, void *context) {
    (void)ready;
    (void)context;
    if (dx) device_pool2d_backward(c->dev, node->pool, &node->geometry, c->rows, c->x, y, dy, dx);
    return DDT_OK;
}

static const layer_word words[] = {
    {.word = "maxpool", .call = true, .variant = POOL_MAX, .parse = parse},
    {.word = "avgpool", .call = true, .variant = POOL_AVERAGE, .parse = parse}};

const layer_kind layer_pool = {
    .name = "pool",
    .node_name = node_name,
    .words = words,
    .word_count = 2,
    .forward = pool_forward,
    .backward = pool_backward,
    LAYER_OPS(DEVICE_OP_pool2d_forward, DEVICE_OP_pool2d_backward),
};
