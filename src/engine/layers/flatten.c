/* flatten.c - flatten: a view of C x H x W images as C*H*W flat features (no copy; backward
 * passes the gradient on unchanged). */
#include "engine/layers/layer_kind.h"

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    (void)prefix;
    if (g->shape.rank == 2)
        return grammar_fail(g, start, "flatten works on images; a sequence stays a sequence");
    model_node *node;
    DDT_CHECK(grammar_new_layer(g, start, NODE_FLATTEN, &node));
    node->out_shape = tensor_shape_1((int)tensor_shape_count(&g->shape));
    DDT_CHECK(grammar_finish_node(g, start, node));
    grammar_emit(g, "flatten");
    return DDT_OK;
}

static bool always(const model_node *node) {
    (void)node;
    return true;
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    (void)node;
    *out = c->x;
    return DDT_OK;
}

static const layer_word words[] = {{.word = "flatten", .parse = parse}};

const layer_kind layer_flatten = {
    .name = "flatten",
    .words = words,
    .word_count = 1,
    .output_is_input = always,
    .backward_is_identity = always,
    .forward = forward,
};
