/* activation.c - elementwise activations, each written as its word ("relu").
 *
 * Adding an activation: its line in ACTIVATIONS below (its word, its activation_kind, and
 * whether it rectifies: weights feeding it start He-initialised), its value in activation_kind
 * (engine/device.h), and its CPU and CUDA bodies behind device_activation_forward/backward. */
#include <string.h>

#include "engine/layers/layer_kind.h"

/* X(word, activation_kind, rectifies), in the order messages list them. */
#define ACTIVATIONS(X)                                                                             \
    X("relu", ACTIVATION_RELU, true)                                                               \
    X("gelu", ACTIVATION_GELU, true)                                                               \
    X("gelu_tanh", ACTIVATION_GELU_TANH, true)                                                     \
    X("tanh", ACTIVATION_TANH, false)                                                              \
    X("sigmoid", ACTIVATION_SIGMOID, false)

ddt_status activation_build(grammar *g, size_t start, activation_kind kind) {
    model_node *node;
    DDT_CHECK(grammar_new_layer(g, start, NODE_ACTIVATION, &node));
    node->activation = kind;
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)prefix;
    DDT_CHECK(activation_build(g, start, (activation_kind)word->variant));
    grammar_emit(g, "%s", word->word);
    return DDT_OK;
}

static bool rectifies(const model_node *node) {
#define RECTIFIES(text, value, rectifier)                                                          \
    if (node->activation == (value)) return (rectifier);
    ACTIVATIONS(RECTIFIES)
#undef RECTIFIES
    return false;
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    device_activation_forward(c->dev, node->activation, layer_output_count(node, c->rows), c->x,
                              c->y);
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)ready;
    (void)context;
    if (dx)
        device_activation_backward(c->dev, node->activation, layer_output_count(node, c->rows),
                                   c->x, y, dy, dx);
    return DDT_OK;
}

#define WORD(text, value, rectifier) {.word = (text), .variant = (value), .parse = parse},
static const layer_word words[] = {ACTIVATIONS(WORD)};
#undef WORD

const layer_kind layer_activation = {
    .name = "activation",
    .words = words,
    .word_count = sizeof words / sizeof words[0],
    .rectifies = rectifies,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_activation_forward, DEVICE_OP_activation_backward),
};
