/* gap.c - gap: global average pooling, C x H x W -> C (one window over the whole image). */
#include "engine/layers/layer_kind.h"

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    (void)prefix;
    DDT_CHECK(grammar_need_images(g, start, "gap"));
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_GLOBAL_POOL, &node));
    node->pool = POOL_AVERAGE;
    DDT_CHECK(conv_geometry_make(g->shape.dims[0], g->shape.dims[1], g->shape.dims[2],
                                 g->shape.dims[1], g->shape.dims[2], 1, 1, 0, 0, "--model: gap",
                                 &node->geometry));
    node->out_shape = tensor_shape_1(g->shape.dims[0]);
    DDT_CHECK(grammar_finish_node(g, start, node));
    grammar_emit(g, "gap");
    return DDT_OK;
}

static const layer_word words[] = {{.word = "gap", .parse = parse}};

const layer_kind layer_global_pool = {
    .name = "gap",
    .words = words,
    .word_count = 1,
    .forward = pool_forward, /* average pooling over the whole plane: pool.c's passes */
    .backward = pool_backward,
    LAYER_OPS(DEVICE_OP_pool2d_forward, DEVICE_OP_pool2d_backward),
};
