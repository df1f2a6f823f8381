/* embedding.c - embed(D): token ids to vectors, a token table [VOCAB, D] plus learned
 * positions [T, D] (wte, wpe); first after tokens(CONTEXT,VOCAB), its table tied to lmhead. */
#include "engine/layers/layer_kind.h"

ddt_status embed_build(grammar *g, size_t start, const char *table_name, const char *positions_name,
                       int width) {
    if (g->spec->input_kind != MODEL_INPUT_TOKENS || g->current >= 0)
        return grammar_fail(g, start, "embed must come first, right after tokens(CONTEXT,VOCAB)");
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_EMBED, &node));
    node->out_shape = tensor_shape_2(g->spec->context, width);
    model_tensor *t;
    int table[2] = {g->spec->vocab, width}, positions[2] = {g->spec->context, width};
    DDT_CHECK(grammar_add_tensor(g, start, "", table_name, 2, table, TENSOR_INIT_NORMAL, &t));
    t->init_std = 0.02f;
    DDT_CHECK(
        grammar_add_tensor(g, start, "", positions_name, 2, positions, TENSOR_INIT_NORMAL, &t));
    t->init_std = 0.02f;
    g->embed_node = g->spec->node_count;
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

/* embed(D) after "embed(". */
static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    int width;
    DDT_CHECK(grammar_read_count(g, start, "embed's width", 1, 65536, &width));
    if (g->source[g->pos] == ',')
        return grammar_fail(g, start, "embed(...) takes one argument, its width D");
    DDT_CHECK(grammar_expect(g, ')', start, "to close embed("));
    char table[MODEL_TENSOR_MAX_NAME], positions[MODEL_TENSOR_MAX_NAME];
    DDT_CHECK(grammar_join(g, start, table, prefix, "wte.weight"));
    DDT_CHECK(grammar_join(g, start, positions, prefix, "wpe.weight"));
    DDT_CHECK(embed_build(g, start, table, positions, width));
    grammar_emit(g, "embed(%d)", width);
    return DDT_OK;
}

static int64_t rows_per_sample(const model_node *node) {
    return node->out_shape.dims[0];
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    int t = node->out_shape.dims[0], width = node->out_shape.dims[1];
    device_embedding_forward(c->dev, c->rows * t, width, c->tokens, layer_parameter(c, node, 0),
                             c->y);
    /* positions: one [T * width] row per sample */
    device_bias_add(c->dev, c->rows, t * width, c->y, layer_parameter(c, node, 1));
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
    (void)dx;
    int t = node->out_shape.dims[0], width = node->out_shape.dims[1];
    device_bias_gradient_accumulate(c->dev, c->rows, t * width, dy, layer_gradient(c, node, 1));
    device_embedding_backward(c->dev, c->rows * t, width, c->tokens, dy,
                              layer_gradient(c, node, 0));
    return layer_ready(c, node, ready, context);
}

static const layer_word words[] = {
    {.word = "embed", .call = true, .help = "embed(D)", .parse = parse}};

const layer_kind layer_embed = {
    .name = "embed",
    .words = words,
    .word_count = 1,
    .rows_per_sample = rows_per_sample,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_embedding_forward, DEVICE_OP_embedding_backward, DEVICE_OP_bias_add,
              DEVICE_OP_bias_gradient_accumulate),
};
