/* dropout.c - dropout: "dropout0.3", or "dropout" at nn.Dropout()'s default rate 0.5. Its
 * mask comes from the row's global id (device.h: dropout_key), so it does not depend on how
 * rows are split over ranks; at rate 0, and outside training, it is its input. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "engine/layers/layer_kind.h"

ddt_status dropout_build(grammar *g, size_t start, float rate) {
    model_node *node;
    DDT_CHECK(grammar_new_layer(g, start, NODE_DROPOUT, &node));
    node->rate = rate;
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

/* A bare "dropout" followed by '-' and a number: "dropout-1" reads as a rate of -1 as much
 * as dropout then a dense layer of 1, and "dropout-0.3" as a rate of 0.3; the grammar takes
 * neither reading silently. Files written before this rule stored "dropout-N" for the default
 * rate, so stored descriptions still read it as that (model_spec_parse_stored). */
static ddt_status refuse_bare_dropout(grammar *g, size_t start) {
    const char *next = g->source + g->pos + 1;
    if (!isdigit((unsigned char)*next) && *next != '.') return DDT_OK;
    size_t length = strcspn(next, "-|)");
    int shown = (int)(length < 24 ? length : 24);
    bool width = strspn(next, "0123456789") == length && strtol(next, NULL, 10) > 0;
    if (!width)
        return grammar_fail(g, start,
                            "dropout's rate follows the word directly, without '-': write "
                            "dropout%.*s, not dropout-%.*s",
                            shown, next, shown, next);
    return grammar_fail(g, start,
                        "'dropout-%.*s' could be a rate of -%.*s or dropout then a dense "
                        "layer of %.*s: write the rate, e.g. dropout0.5-%.*s (a rate in [0, 1) "
                        "follows the word directly)",
                        shown, next, shown, next, shown, next, shown, next);
}

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    (void)prefix;
    float rate = 0.5f; /* nn.Dropout()'s default */
    char c = g->source[g->pos];
    if (c != '-' && c != '\0' && c != ')' && c != '|') {
        DDT_CHECK(grammar_read_rate(g, start, &rate));
    } else if (c == '-' && !g->stored) {
        DDT_CHECK(refuse_bare_dropout(g, start));
    }
    DDT_CHECK(dropout_build(g, start, rate));
    grammar_emit(g, "dropout%g", (double)rate); /* the rate always: "dropout-1" is never written */
    return DDT_OK;
}

static bool inactive(const model_node *node) {
    return node->rate == 0.0f;
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    if (!c->pass->training || node->rate == 0.0f) {
        *out = c->x; /* identity: no copy */
        return DDT_OK;
    }
    if (!c->pass->row_ids && c->rows > 0)
        return ddt_error(DDT_ERR_INTERNAL, "model_forward: dropout needs row ids");
    device_dropout_forward(c->dev, c->rows, (int)tensor_shape_count(&node->out_shape), node->rate,
                           (dropout_key){c->pass->seed, c->pass->step, c->index}, c->pass->row_ids,
                           c->x, c->y);
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
    (void)ready;
    (void)context;
    if (!c->pass->row_ids && c->rows > 0)
        return ddt_error(DDT_ERR_INTERNAL, "model_backward: dropout needs row ids");
    if (dx)
        device_dropout_backward(c->dev, c->rows, (int)tensor_shape_count(&node->out_shape),
                                node->rate, (dropout_key){c->pass->seed, c->pass->step, c->index},
                                c->pass->row_ids, dy, dx);
    return DDT_OK;
}

static const layer_word words[] = {
    {.word = "dropout", .help = "dropout, dropoutP", .parse = parse}};

const layer_kind layer_dropout = {
    .name = "dropout",
    .words = words,
    .word_count = 1,
    .output_is_input = inactive,
    .backward_is_identity = inactive,
    .init_transparent = true,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_dropout_forward, DEVICE_OP_dropout_backward),
};
