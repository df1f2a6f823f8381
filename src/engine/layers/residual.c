/* residual.c - res(BODY[|SHORTCUT]): a residual block, two kinds of node. Its start is a view
 * (the block's input, unchanged) that the body and the shortcut (none: the identity) both
 * read; its end adds the body's output and the shortcut's. Both pass gradients on unchanged
 * (the sum to both its inputs); model.c plans the buffers that takes. */
#include <stdio.h>

#include "engine/layers/layer_kind.h"

#define MODEL_MAX_NESTING 8

static bool shapes_equal(const tensor_shape *a, const tensor_shape *b) {
    if (a->rank != b->rank) return false;
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] != b->dims[i]) return false;
    return true;
}

ddt_status residual_build_view(grammar *g, size_t start, int *view) {
    model_node *node;
    DDT_CHECK(grammar_new_layer(g, start, NODE_VIEW, &node));
    *view = g->spec->node_count;
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

ddt_status residual_build_add(grammar *g, size_t start, int body_end, int shortcut_end) {
    const model_node *nodes = g->spec->nodes;
    const tensor_shape *a = &nodes[body_end].out_shape, *b = &nodes[shortcut_end].out_shape;
    if (!shapes_equal(a, b)) {
        char x[48], y[48];
        tensor_shape_format(a, x, sizeof x);
        tensor_shape_format(b, y, sizeof y);
        return grammar_fail(g, start,
                            "the block's body ends with %s but its shortcut gives %s: they must "
                            "match (add a shortcut after '|', e.g. conv(C,k1,s2))",
                            x, y);
    }
    g->current = body_end;
    g->shape = *a;
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_ADD, &node));
    node->second_input = shortcut_end;
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

/* res(BODY[|SHORTCUT]) after "res(": the block is module `index` of the enclosing sequence. */
static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    if (++g->depth > MODEL_MAX_NESTING)
        return grammar_fail(g, start, "blocks nest too deep (at most %d)", MODEL_MAX_NESTING);
    int view;
    DDT_CHECK(residual_build_view(g, start, &view));
    char inner[MODEL_TENSOR_MAX_NAME];
    DDT_CHECK(grammar_join(g, start, inner, prefix, "body."));
    grammar_emit(g, "res(");
    int index = 0;
    DDT_CHECK(grammar_parse_sequence(g, inner, &index, '|'));
    int body_end = g->current;
    int shortcut_end = view;
    if (grammar_accept(g, '|')) {
        grammar_emit(g, "|");
        g->current = view;
        g->shape = g->spec->nodes[view].out_shape;
        DDT_CHECK(grammar_join(g, start, inner, prefix, "shortcut."));
        index = 0;
        DDT_CHECK(grammar_parse_sequence(g, inner, &index, ')'));
        shortcut_end = g->current;
    }
    DDT_CHECK(grammar_expect(g, ')', start, "to close res("));
    grammar_emit(g, ")");
    if (body_end == view) return grammar_fail(g, start, "res(...) needs at least one layer");
    DDT_CHECK(residual_build_add(g, start, body_end, shortcut_end));
    g->depth--;
    return DDT_OK;
}

static bool always(const model_node *node) {
    (void)node;
    return true;
}

static ddt_status view_forward(const layer_call *c, const model_node *node, const float **out) {
    (void)node;
    *out = c->x;
    return DDT_OK;
}

static ddt_status add_forward(const layer_call *c, const model_node *node, const float **out) {
    device_add(c->dev, layer_output_count(node, c->rows), c->x, c->x2, c->y);
    *out = c->y;
    return DDT_OK;
}

static const layer_word words[] = {
    {.word = "res", .call = true, .help = "res(...), N*(...)", .parse = parse}};

const layer_kind layer_view = {
    .name = "res",
    .words = words,
    .word_count = 1,
    .output_is_input = always,
    .backward_is_identity = always,
    .forward = view_forward,
};

const layer_kind layer_add = {
    .name = "res (sum)",
    .backward_is_identity = always,
    .forward = add_forward,
    LAYER_OPS(DEVICE_OP_add),
};
