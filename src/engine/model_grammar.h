/* model_grammar.h - what a layer kind's parser may use of the model grammar (model_spec.c
 * implements it): the parser's state, reading numbers, rates and settings, messages that name
 * the token, and building the nodes and tensors of the graph. Only model_spec.c and the layer
 * kinds (src/engine/layers/) include it; everyone else reads a finished model_spec.
 *
 * A kind's parser (layer_word.parse, layers/layer_kind.h) is called with g->pos just after
 * its word (and the '(' of word(...)): it reads its arguments, refuses what does not fit the
 * current tensor (g->shape) with grammar_fail, adds its node(s) with grammar_new_node ...
 * grammar_finish_node, and writes its canonical text with grammar_emit.
 */
#ifndef DDT_ENGINE_MODEL_GRAMMAR_H
#define DDT_ENGINE_MODEL_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/model_spec.h"
#include "util/status.h"

/* Causal attention over one position weighs it by 1 whatever the scores, so its queries and
 * keys would never learn; one token is nothing to predict among. */
#define MODEL_MIN_ATTENTION_CONTEXT 2
#define ATTENTION_CONTEXT_REASON                                                                   \
    "attention needs at least 2 positions (over one, it weighs that position by 1 whatever the "   \
    "scores, so its queries and keys never learn)"
#define VOCAB_REASON                                                                               \
    "a token model needs at least 2 tokens (with one, every prediction is right and the loss is "  \
    "0 whatever the weights)"

typedef struct grammar {
    const char *source; /* the text without whitespace and comments */
    size_t pos;
    const char *original; /* for messages */
    model_spec *spec;
    char *out; /* canonical text */
    size_t out_length;
    int emit; /* > 0 while writing text (0 inside the 2nd..Nth pass of a repetition) */
    bool overflow;
    bool stored;        /* a description read from a file ddtrain wrote (model_spec_parse_stored) */
    int current;        /* node producing the current tensor, -1 for the input */
    tensor_shape shape; /* the current tensor's shape */
    int parameter_ordinal;
    int depth;
    int embed_node; /* the embed node (for lmhead), or -1 */
    int block;      /* gpt(...) block being built, or -1 */
} grammar;

static inline tensor_shape tensor_shape_1(int a) {
    return (tensor_shape){1, {a, 0, 0}};
}
static inline tensor_shape tensor_shape_2(int a, int b) {
    return (tensor_shape){2, {a, b, 0}};
}
static inline tensor_shape tensor_shape_3(int a, int b, int c) {
    return (tensor_shape){3, {a, b, c}};
}

/* Appends to the canonical text (printf-style). */
void grammar_emit(grammar *g, const char *format, ...);
/* DDT_ERR_USAGE "--model: at 'TOKEN': DETAIL", TOKEN the one starting at `start`. */
ddt_status grammar_fail(const grammar *g, size_t start, const char *format, ...);
/* Consumes `c` if it is next. */
bool grammar_accept(grammar *g, char c);
/* Consumes `c`, or fails "expected 'c' WHAT, found ...". */
ddt_status grammar_expect(grammar *g, char c, size_t start, const char *what);
/* An integer in [minimum, maximum], named `what` in messages. */
ddt_status grammar_read_count(grammar *g, size_t start, const char *what, long minimum,
                              long maximum, int *out);
/* A dropout rate: a plain decimal in [0, 1). */
ddt_status grammar_read_rate(grammar *g, size_t start, float *rate);
/* The argument of a call like conv(...) at g->pos, up to the next ',' or ')' (or a '-' or
 * '|', which no argument holds: a ')' left out), as text for messages; returns its length. */
size_t grammar_argument_at(const grammar *g, char *text, size_t size);
/* A word of letters and '_' at g->pos, consumed; returns its length. */
size_t grammar_read_word(grammar *g, char *word, size_t size);
/* One kN / sN / pN argument of `layer`(...) at g->pos: refused if `given` already (a setting
 * twice is a contradiction, not a choice), or if more than digits follow. */
ddt_status grammar_read_setting(grammar *g, size_t start, const char *layer, const char *what,
                                long minimum, bool *given, int *value);
/* out = a + b (both names or name parts); DDT_ERR_USAGE if the name would be too long. */
ddt_status grammar_join(const grammar *g, size_t start, char out[MODEL_TENSOR_MAX_NAME],
                        const char *a, const char *b);
/* LAYER ('-' LAYER)* up to `terminator` (or ')' or the end), not consuming it; `index` counts
 * the modules of the enclosing sequence (their names). */
ddt_status grammar_parse_sequence(grammar *g, const char *prefix, int *index, char terminator);

/* A node of `kind` reading the current tensor, its output shape the same until the builder
 * sets it; grammar_finish_node makes it the current tensor's producer. */
ddt_status grammar_new_node(grammar *g, size_t start, node_kind kind, model_node **out);
/* As grammar_new_node, refused on token ids (only embed reads them). */
ddt_status grammar_new_layer(grammar *g, size_t start, node_kind kind, model_node **out);
ddt_status grammar_finish_node(grammar *g, size_t start, model_node *node);
/* The next tensor of the node being built: PREFIX SUFFIX, `rank` dims. */
ddt_status grammar_add_tensor(grammar *g, size_t start, const char *prefix, const char *suffix,
                              int rank, const int *dims, tensor_init init, model_tensor **out);
/* PREFIX "weight": decayed, initialised by fan in and out. */
ddt_status grammar_add_weight(grammar *g, size_t start, const char *prefix, int rank,
                              const int *dims, int fan_in, int fan_out, model_tensor **out);
/* PREFIX "bias" of `width` zeros. */
ddt_status grammar_add_bias(grammar *g, size_t start, const char *prefix, int width);
/* Refuses a layer (`word`) whose input is not C x H x W images. */
ddt_status grammar_need_images(const grammar *g, size_t start, const char *word);

#endif
