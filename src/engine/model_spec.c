/* model_spec.c - the model grammar's parser, the presets, and the graph and tensor table it
 * builds (see model_spec.h). One recursive-descent pass over the text (whitespace and
 * comments removed first) builds the nodes and writes the canonical text; a repetition
 * N*(...) is parsed N times from the same place, writing its text once. */
#include "engine/model_spec.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "util/files.h"

#define MODEL_MAX_NESTING 8
/* One sample's values in any layer's output: the layers index a sample's values, and count
 * rows x positions, with C ints (BLAS takes int sizes). 8 GiB of floats per sample. */
#define MODEL_MAX_SAMPLE_VALUES INT_MAX
/* Causal attention over one position weighs it by 1 whatever the scores, so its queries and
 * keys would never learn; one token is nothing to predict among. */
#define MODEL_MIN_ATTENTION_CONTEXT 2
#define ATTENTION_CONTEXT_REASON                                                                   \
    "attention needs at least 2 positions (over one, it weighs that position by 1 whatever the "   \
    "scores, so its queries and keys never learn)"
#define VOCAB_REASON                                                                               \
    "a token model needs at least 2 tokens (with one, every prediction is right and the loss is "  \
    "0 whatever the weights)"

static const char LAYER_WORDS_HELP[] =
    "expected a width or one of relu, gelu, gelu_tanh, tanh, sigmoid, dropout, dropoutP, "
    "conv(...), maxpool(...), avgpool(...), gap, flatten, bn, ln, res(...), N*(...), embed(D), "
    "attn(H), lmhead, gpt(...)";

/* ---- presets ----------------------------------------------------------------------------- */

typedef struct preset {
    const char *name;
    const char *text;
} preset;

static const preset presets[] = {
    /* 0.928 on Fashion-MNIST after 10-12 epochs of AdamW on 2 ranks (launch/examples) */
    {"cnn-small", "1x28x28-conv(32,k3,p1)-bn-relu-maxpool(2)-conv(64,k3,p1)-bn-relu-maxpool(2)"
                  "-flatten-256-relu-dropout0.3-10"},
    {"resnet-small",
     "3x32x32-conv(16,k3,p1,nobias)-bn-relu"
     "-2*(res(conv(16,k3,p1,nobias)-bn-relu-conv(16,k3,p1,nobias)-bn)-relu)"
     "-res(conv(32,k3,s2,p1,nobias)-bn-relu-conv(32,k3,p1,nobias)-bn|conv(32,k1,s2,nobias)-bn)-relu"
     "-res(conv(32,k3,p1,nobias)-bn-relu-conv(32,k3,p1,nobias)-bn)-relu"
     "-res(conv(64,k3,s2,p1,nobias)-bn-relu-conv(64,k3,p1,nobias)-bn|conv(64,k1,s2,nobias)-bn)-relu"
     "-res(conv(64,k3,p1,nobias)-bn-relu-conv(64,k3,p1,nobias)-bn)-relu"
     "-gap-10"},
    {"gpt-tiny", "gpt(layers=4,heads=4,width=128,context=64,vocab=256)"},
    {"gpt-small", "gpt(layers=6,heads=6,width=384,context=256,vocab=256)"},
    {"gpt2-124m", "gpt(layers=12,heads=12,width=768,context=1024,vocab=50257)"},
};

const char *model_spec_preset_text(const char *name) {
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (name && strcmp(name, presets[i].name) == 0) return presets[i].text;
    return NULL;
}

void model_spec_print_presets(void (*print)(void *context, const char *name, const char *text),
                              void *context) {
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        print(context, presets[i].name, presets[i].text);
}

/* ---- small helpers ----------------------------------------------------------------------- */

int64_t tensor_shape_count(const tensor_shape *shape) {
    int64_t count;
    return checked_product_int64(shape->dims, shape->rank, &count) ? count : INT64_MAX;
}

void tensor_shape_format(const tensor_shape *shape, char *text, size_t size) {
    size_t used = 0;
    text[0] = '\0';
    for (int i = 0; i < shape->rank && used < size; i++) {
        int n = snprintf(text + used, size - used, i ? "x%d" : "%d", shape->dims[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
}

static tensor_shape shape1(int a) {
    return (tensor_shape){1, {a, 0, 0}};
}
static tensor_shape shape2(int a, int b) {
    return (tensor_shape){2, {a, b, 0}};
}
static tensor_shape shape3(int a, int b, int c) {
    return (tensor_shape){3, {a, b, c}};
}

static bool shapes_equal(const tensor_shape *a, const tensor_shape *b) {
    if (a->rank != b->rank) return false;
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] != b->dims[i]) return false;
    return true;
}

const char *model_node_word(const model_node *node) {
    switch (node->kind) {
    case NODE_DENSE:
        return "dense";
    case NODE_ACTIVATION:
        return "activation";
    case NODE_DROPOUT:
        return "dropout";
    case NODE_CONV:
        return "conv";
    case NODE_POOL:
        return node->pool == POOL_MAX ? "maxpool" : "avgpool";
    case NODE_GLOBAL_POOL:
        return "gap";
    case NODE_FLATTEN:
        return "flatten";
    case NODE_BATCHNORM:
        return "bn";
    case NODE_LAYERNORM:
        return "ln";
    case NODE_VIEW:
        return "res";
    case NODE_ADD:
        return "res (sum)";
    case NODE_EMBED:
        return "embed";
    case NODE_ATTENTION:
        return "attn";
    case NODE_LM_HEAD:
        return "lmhead";
    }
    return "?";
}

/* ---- the parser -------------------------------------------------------------------------- */

typedef struct parser {
    const char *source; /* the text without whitespace and comments */
    size_t pos;
    const char *original; /* for messages */
    model_spec *spec;
    char *out; /* canonical text */
    size_t out_length;
    int emit; /* > 0 while writing text (0 inside the 2nd..Nth pass of a repetition) */
    bool overflow;
    bool stored; /* a description read from a file ddtrain wrote (model_spec_parse_stored) */
    int current;          /* node producing the current tensor, -1 for the input */
    tensor_shape shape;   /* the current tensor's shape */
    int parameter_ordinal;
    int depth;
    int embed_node; /* the embed node (for lmhead), or -1 */
    int block;      /* gpt(...) block being built, or -1 */
} parser;

static void emit(parser *p, const char *format, ...) {
    if (p->emit <= 0 || p->overflow) return;
    va_list args;
    va_start(args, format);
    size_t room = MODEL_SPEC_MAX_TEXT - p->out_length;
    int n = vsnprintf(p->out + p->out_length, room, format, args);
    va_end(args);
    if (n < 0 || (size_t)n >= room)
        p->overflow = true;
    else
        p->out_length += (size_t)n;
}

/* The token starting at `start`: up to the next '-', '|' or unmatched ')' at its own depth. */
static void token_at(const parser *p, size_t start, char *text, size_t size) {
    size_t end = start;
    int depth = 0;
    for (; p->source[end]; end++) {
        char c = p->source[end];
        if (c == '(') depth++;
        if (c == ')') {
            if (depth == 0) break;
            depth--;
        }
        if ((c == '-' || c == '|') && depth == 0) break;
    }
    size_t length = end - start;
    if (length == 0) {
        snprintf(text, size, "%s", p->source[start] ? (char[]){p->source[start], 0} : "the end");
        return;
    }
    snprintf(text, size, "%.*s%s", (int)(length < 60 ? length : 60), p->source + start,
             length > 60 ? "..." : "");
}

static ddt_status fail_at(const parser *p, size_t start, const char *format, ...) {
    char token[80], detail[400];
    token_at(p, start, token, sizeof token);
    va_list args;
    va_start(args, format);
    vsnprintf(detail, sizeof detail, format, args);
    va_end(args);
    return ddt_error(DDT_ERR_USAGE, "--model: at '%s': %s", token, detail);
}

static bool accept(parser *p, char c) {
    if (p->source[p->pos] != c) return false;
    p->pos++;
    return true;
}

static ddt_status expect(parser *p, char c, size_t token_start, const char *what) {
    if (accept(p, c)) return DDT_OK;
    return fail_at(p, token_start, "expected '%c' %s, found '%s'", c, what,
                   p->source[p->pos] ? (char[]){p->source[p->pos], 0} : "the end");
}

/* A positive integer (at most MODEL_MAX_WIDTH unless `limit` says more). */
static ddt_status read_count(parser *p, size_t token_start, const char *what, long minimum,
                             long maximum, int *out) {
    const char *s = p->source + p->pos;
    if (!isdigit((unsigned char)*s))
        return fail_at(p, token_start, "expected a number for %s", what);
    size_t digits = 0;
    while (isdigit((unsigned char)s[digits]))
        digits++;
    long value = digits > 9 ? maximum + 1 : strtol(s, NULL, 10);
    p->pos += digits;
    if (value < minimum)
        return fail_at(p, token_start, "%s must be at least %ld", what, minimum);
    if (value > maximum) return fail_at(p, token_start, "%s is too large (at most %ld)", what, maximum);
    *out = (int)value;
    return DDT_OK;
}

/* A dropout rate: a plain decimal in [0, 1) ("0.1", ".25", "0"), read up to the next
 * separator; anything else there (a second '.', an exponent, a sign) is refused, naming it. */
static ddt_status read_rate(parser *p, size_t token_start, float *rate) {
    const char *s = p->source + p->pos;
    size_t length = 0, digits = 0, points = 0;
    while (isalnum((unsigned char)s[length]) || s[length] == '.' || s[length] == '+') {
        digits += isdigit((unsigned char)s[length]) != 0;
        points += s[length] == '.';
        length++;
    }
    if (length == 0)
        return fail_at(p, token_start, "expected a dropout rate in [0, 1) (e.g. 0.1), found '%s'",
                       *s ? (char[]){*s, 0} : "the end");
    if (digits + points != length || points > 1 || digits == 0)
        return fail_at(p, token_start,
                       "the dropout rate '%.*s' is not a plain decimal in [0, 1) "
                       "(e.g. 0.1)",
                       (int)(length < 24 ? length : 24), s);
    double value = strtod(s, NULL);
    if (!(value >= 0.0 && value < 1.0))
        return fail_at(p, token_start, "the dropout rate must be in [0, 1), got %.*s",
                       (int)(length < 24 ? length : 24), s);
    p->pos += length;
    *rate = (float)value;
    return DDT_OK;
}

/* The argument of a call like conv(...) at p->pos, up to the next ',' or ')' (or a '-' or
 * '|', which no argument holds: a ')' left out), as text for messages; returns its length. */
static size_t argument_at(const parser *p, char *text, size_t size) {
    const char *s = p->source + p->pos;
    size_t length = strcspn(s, ",)-|");
    snprintf(text, size, "%.*s%s", (int)(length < 24 ? length : 24), s, length > 24 ? "..." : "");
    return length;
}

static size_t read_word(parser *p, char *word, size_t size) {
    size_t length = 0;
    while (isalpha((unsigned char)p->source[p->pos + length]) ||
           p->source[p->pos + length] == '_')
        length++;
    snprintf(word, size, "%.*s", (int)length, p->source + p->pos);
    p->pos += length;
    return length;
}

/* out = a + b (both names or name parts); DDT_ERR_USAGE if the name would be too long. */
static ddt_status join(const parser *p, size_t token_start, char out[MODEL_TENSOR_MAX_NAME],
                       const char *a, const char *b);

/* ---- building nodes and tensors ---------------------------------------------------------- */

static ddt_status join(const parser *p, size_t token_start, char out[MODEL_TENSOR_MAX_NAME],
                       const char *a, const char *b) {
    int n = snprintf(out, MODEL_TENSOR_MAX_NAME, "%s%s", a, b);
    if (n < 0 || n >= MODEL_TENSOR_MAX_NAME)
        return fail_at(p, token_start, "the parameter name %s%s is too long (nesting too deep)",
                       a, b);
    return DDT_OK;
}

static ddt_status new_node(parser *p, size_t token_start, node_kind kind, model_node **out) {
    model_spec *spec = p->spec;
    if (spec->node_count == MODEL_MAX_NODES)
        return fail_at(p, token_start, "too many layers (at most %d after expansion)",
                       MODEL_MAX_NODES);
    model_node *node = &spec->nodes[spec->node_count];
    memset(node, 0, sizeof *node);
    node->kind = kind;
    node->input = p->current;
    node->second_input = -1;
    node->in_shape = p->shape;
    node->out_shape = p->shape;
    node->first_tensor = spec->tensor_count;
    node->tied_tensor = -1;
    node->parameter_ordinal = -1;
    node->block = p->block;
    *out = node;
    return DDT_OK;
}

/* "12345" or, for a count that overflowed, "more than 2^63". */
static const char *count_text(int64_t count, char *text, size_t size) {
    if (count == INT64_MAX)
        snprintf(text, size, "more than 2^63");
    else
        snprintf(text, size, "%lld", (long long)count);
    return text;
}

/* The node becomes the current tensor's producer, once its output is known to fit what the
 * layers can index (MODEL_MAX_SAMPLE_VALUES per sample). */
static ddt_status finish_node(parser *p, size_t token_start, model_node *node) {
    int64_t values = tensor_shape_count(&node->out_shape);
    if (values > MODEL_MAX_SAMPLE_VALUES) {
        char shape[64], count[32];
        tensor_shape_format(&node->out_shape, shape, sizeof shape);
        return fail_at(p, token_start,
                       "the %s layer's output %s holds %s values per sample; at most %d",
                       model_node_word(node), shape, count_text(values, count, sizeof count),
                       MODEL_MAX_SAMPLE_VALUES);
    }
    int index = (int)(node - p->spec->nodes);
    node->tensor_count = p->spec->tensor_count - node->first_tensor;
    bool trainable = false;
    for (int t = node->first_tensor; t < p->spec->tensor_count; t++)
        if (!p->spec->tensors[t].is_buffer) trainable = true;
    if (trainable) node->parameter_ordinal = p->parameter_ordinal++;
    p->spec->node_count++;
    p->current = index;
    p->shape = node->out_shape;
    return DDT_OK;
}

static ddt_status add_tensor(parser *p, size_t token_start, const char *prefix, const char *suffix,
                             int rank, const int *dims, tensor_init init, model_tensor **out) {
    model_spec *spec = p->spec;
    if (spec->tensor_count == MODEL_MAX_TENSORS)
        return fail_at(p, token_start, "too many parameter tensors (at most %d)",
                       MODEL_MAX_TENSORS);
    model_tensor *t = &spec->tensors[spec->tensor_count++];
    memset(t, 0, sizeof *t);
    int n = snprintf(t->name, sizeof t->name, "%s%s", prefix, suffix);
    if (n < 0 || (size_t)n >= sizeof t->name)
        return fail_at(p, token_start, "parameter name %s%s is too long (nesting too deep)",
                       prefix, suffix);
    t->rank = rank;
    size_t count = 1;
    for (int i = 0; i < rank; i++) {
        t->dims[i] = dims[i];
        if (dims[i] < 1 || !checked_multiply_size(count, (size_t)dims[i], &count)) {
            char text[64] = "";
            for (int d = 0, used = 0; d < rank; d++) /* at most 4 dims of 11 characters */
                used +=
                    snprintf(text + used, sizeof text - (size_t)used, d ? "x%d" : "%d", dims[d]);
            return fail_at(p, token_start,
                           "the parameter %s (%s) has more values than can be "
                           "counted",
                           t->name, text);
        }
    }
    t->count = count;
    t->init = init;
    *out = t;
    return DDT_OK;
}

static ddt_status add_weight(parser *p, size_t token_start, const char *prefix, int rank,
                             const int *dims, int fan_in, int fan_out, model_tensor **out) {
    DDT_CHECK(add_tensor(p, token_start, prefix, "weight", rank, dims, TENSOR_INIT_FAN_IN, out));
    (*out)->decay = true;
    (*out)->fan_in = fan_in;
    (*out)->fan_out = fan_out;
    return DDT_OK;
}

static ddt_status add_bias(parser *p, size_t token_start, const char *prefix, int width) {
    model_tensor *t;
    return add_tensor(p, token_start, prefix, "bias", 1, &width, TENSOR_INIT_ZERO, &t);
}

/* A Linear layer's node on the current tensor (flat or a sequence). */
static ddt_status build_dense(parser *p, size_t token_start, const char *prefix, int outputs,
                              float normal_std) {
    if (p->shape.rank == 3)
        return fail_at(p, token_start,
                       "a dense layer needs flat features or a sequence, not %dx%dx%d images: put "
                       "flatten or gap before it",
                       p->shape.dims[0], p->shape.dims[1], p->shape.dims[2]);
    if (p->spec->input_kind == MODEL_INPUT_TOKENS && p->current < 0)
        return fail_at(p, token_start, "token ids need embed(D) before any other layer");
    model_node *node;
    DDT_CHECK(new_node(p, token_start, NODE_DENSE, &node));
    int inputs = p->shape.dims[p->shape.rank - 1];
    node->bias = true;
    node->out_shape.dims[node->out_shape.rank - 1] = outputs;
    model_tensor *w;
    int dims[2] = {outputs, inputs};
    DDT_CHECK(add_weight(p, token_start, prefix, 2, dims, inputs, outputs, &w));
    if (normal_std > 0) {
        w->init = TENSOR_INIT_NORMAL;
        w->init_std = normal_std;
    }
    DDT_CHECK(add_bias(p, token_start, prefix, outputs));
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

static ddt_status build_simple(parser *p, size_t token_start, node_kind kind, model_node **out) {
    if (p->spec->input_kind == MODEL_INPUT_TOKENS && p->current < 0)
        return fail_at(p, token_start, "token ids need embed(D) before any other layer");
    return new_node(p, token_start, kind, out);
}

static ddt_status build_norm(parser *p, size_t token_start, const char *prefix, bool layer_norm) {
    model_node *node;
    DDT_CHECK(build_simple(p, token_start, layer_norm ? NODE_LAYERNORM : NODE_BATCHNORM, &node));
    int width;
    if (layer_norm) {
        width = p->shape.dims[p->shape.rank - 1];
    } else {
        if (p->shape.rank == 2)
            return fail_at(p, token_start, "bn works on images or flat features; use ln on a "
                                           "sequence");
        width = p->shape.dims[0];
    }
    model_tensor *t;
    DDT_CHECK(add_tensor(p, token_start, prefix, "weight", 1, &width, TENSOR_INIT_ONE, &t));
    DDT_CHECK(add_tensor(p, token_start, prefix, "bias", 1, &width, TENSOR_INIT_ZERO, &t));
    if (!layer_norm) {
        DDT_CHECK(add_tensor(p, token_start, prefix, "running_mean", 1, &width, TENSOR_INIT_ZERO,
                             &t));
        t->is_buffer = true;
        DDT_CHECK(add_tensor(p, token_start, prefix, "running_var", 1, &width, TENSOR_INIT_ONE,
                             &t));
        t->is_buffer = true;
        DDT_CHECK(add_tensor(p, token_start, prefix, "num_batches_tracked", 0, NULL,
                             TENSOR_INIT_ZERO, &t));
        t->is_buffer = true;
        t->is_counter = true;
    }
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

static ddt_status build_activation(parser *p, size_t token_start, activation_kind kind) {
    model_node *node;
    DDT_CHECK(build_simple(p, token_start, NODE_ACTIVATION, &node));
    node->activation = kind;
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

static ddt_status build_dropout(parser *p, size_t token_start, float rate) {
    model_node *node;
    DDT_CHECK(build_simple(p, token_start, NODE_DROPOUT, &node));
    node->rate = rate;
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

static ddt_status need_images(parser *p, size_t token_start, const char *word) {
    if (p->shape.rank == 3) return DDT_OK;
    char text[64];
    tensor_shape_format(&p->shape, text, sizeof text);
    return fail_at(p, token_start, "%s needs images (C x H x W), but its input is %s%s", word,
                   p->spec->input_kind == MODEL_INPUT_TOKENS ? "a token sequence " : "", text);
}

static ddt_status build_embed(parser *p, size_t token_start, const char *table_name,
                              const char *positions_name, int width) {
    if (p->spec->input_kind != MODEL_INPUT_TOKENS || p->current >= 0)
        return fail_at(p, token_start, "embed must come first, right after tokens(CONTEXT,VOCAB)");
    model_node *node;
    DDT_CHECK(new_node(p, token_start, NODE_EMBED, &node));
    node->out_shape = shape2(p->spec->context, width);
    model_tensor *t;
    int table[2] = {p->spec->vocab, width}, positions[2] = {p->spec->context, width};
    DDT_CHECK(add_tensor(p, token_start, "", table_name, 2, table, TENSOR_INIT_NORMAL, &t));
    t->init_std = 0.02f;
    DDT_CHECK(add_tensor(p, token_start, "", positions_name, 2, positions, TENSOR_INIT_NORMAL, &t));
    t->init_std = 0.02f;
    p->embed_node = p->spec->node_count;
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

static ddt_status build_attention(parser *p, size_t token_start, const char *prefix, int heads,
                                  float projection_std) {
    if (p->shape.rank != 2)
        return fail_at(p, token_start, "attn needs a sequence (T x D), after embed(D)");
    if (p->shape.dims[0] < MODEL_MIN_ATTENTION_CONTEXT)
        return fail_at(p, token_start, "a sequence of %d position%s is too short: %s",
                       p->shape.dims[0], p->shape.dims[0] == 1 ? "" : "s",
                       ATTENTION_CONTEXT_REASON);
    int width = p->shape.dims[1];
    if (width % heads != 0)
        return fail_at(p, token_start, "the width %d does not split into %d heads", width, heads);
    model_node *node;
    DDT_CHECK(new_node(p, token_start, NODE_ATTENTION, &node));
    node->heads = heads;
    char name[MODEL_TENSOR_MAX_NAME];
    model_tensor *t;
    int qkv[2] = {3 * width, width}, projection[2] = {width, width};
    DDT_CHECK(join(p, token_start, name, prefix, "c_attn."));
    DDT_CHECK(add_weight(p, token_start, name, 2, qkv, width, 3 * width, &t));
    t->init = TENSOR_INIT_NORMAL;
    t->init_std = 0.02f;
    DDT_CHECK(add_bias(p, token_start, name, 3 * width));
    DDT_CHECK(join(p, token_start, name, prefix, "c_proj."));
    DDT_CHECK(add_weight(p, token_start, name, 2, projection, width, width, &t));
    t->init = TENSOR_INIT_NORMAL;
    t->init_std = projection_std;
    DDT_CHECK(add_bias(p, token_start, name, width));
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

static ddt_status build_lm_head(parser *p, size_t token_start) {
    if (p->embed_node < 0)
        return fail_at(p, token_start, "lmhead reuses embed's token table: the model needs embed");
    const model_node *embed = &p->spec->nodes[p->embed_node];
    if (p->shape.rank != 2 || p->shape.dims[1] != embed->out_shape.dims[1])
        return fail_at(p, token_start, "lmhead needs a sequence of width %d (embed's)",
                       embed->out_shape.dims[1]);
    model_node *node;
    DDT_CHECK(new_node(p, token_start, NODE_LM_HEAD, &node));
    node->tied_tensor = embed->first_tensor;
    node->out_shape = shape2(p->shape.dims[0], p->spec->vocab);
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

/* A residual block's two ends: the view at its start, the sum at its end. */
static ddt_status build_view(parser *p, size_t token_start, int *view) {
    model_node *node;
    DDT_CHECK(build_simple(p, token_start, NODE_VIEW, &node));
    *view = p->spec->node_count;
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

static ddt_status build_add(parser *p, size_t token_start, int body_end, int shortcut_end) {
    const model_node *nodes = p->spec->nodes;
    const tensor_shape *a = &nodes[body_end].out_shape, *b = &nodes[shortcut_end].out_shape;
    if (!shapes_equal(a, b)) {
        char x[48], y[48];
        tensor_shape_format(a, x, sizeof x);
        tensor_shape_format(b, y, sizeof y);
        return fail_at(p, token_start,
                       "the block's body ends with %s but its shortcut gives %s: they must match "
                       "(add a shortcut after '|', e.g. conv(C,k1,s2))",
                       x, y);
    }
    p->current = body_end;
    p->shape = *a;
    model_node *node;
    DDT_CHECK(new_node(p, token_start, NODE_ADD, &node));
    node->second_input = shortcut_end;
    DDT_CHECK(finish_node(p, token_start, node));
    return DDT_OK;
}

/* ---- the grammar ------------------------------------------------------------------------- */

static ddt_status parse_sequence(parser *p, const char *prefix, int *index, char terminator);

/* One kN / sN / pN argument of conv(...) or a pooling layer, at p->pos: refused if `given`
 * already (a setting twice is a contradiction, not a choice), or if more than digits follow. */
static ddt_status read_setting(parser *p, size_t start, const char *layer, const char *what,
                               long minimum, bool *given, int *value) {
    char argument[32];
    size_t length = argument_at(p, argument, sizeof argument);
    if (*given)
        return fail_at(p, start, "%s(...) gives %s twice (%c%d, then %s)", layer, what, argument[0],
                       *value, argument);
    size_t end = p->pos + length;
    p->pos++; /* the letter */
    DDT_CHECK(read_count(p, start, what, minimum, 1024, value));
    if (p->pos != end)
        return fail_at(p, start, "%s(...): '%s' is not a number after '%c'", layer, argument,
                       argument[0]);
    *given = true;
    return DDT_OK;
}

/* conv(OUT,kK[,sS][,pP][,nobias]) after "conv(": each setting at most once. */
static ddt_status parse_conv(parser *p, size_t start, const char *prefix) {
    DDT_CHECK(need_images(p, start, "conv"));
    int outputs, kernel = 0, stride = 1, pad = 0;
    bool bias = true, kernel_given = false, stride_given = false, pad_given = false;
    DDT_CHECK(read_count(p, start, "conv's output channels", 1, MODEL_MAX_WIDTH, &outputs));
    while (accept(p, ',')) {
        char argument[32];
        size_t length = argument_at(p, argument, sizeof argument);
        char key = p->source[p->pos];
        bool numbered = length > 1 && isdigit((unsigned char)p->source[p->pos + 1]);
        if (length == 0) return fail_at(p, start, "conv(...) has an empty argument");
        if (length == 6 && strncmp(p->source + p->pos, "nobias", 6) == 0) {
            if (!bias) return fail_at(p, start, "conv(...) says nobias twice");
            p->pos += 6;
            bias = false;
        } else if (key == 'k' && numbered) {
            DDT_CHECK(read_setting(p, start, "conv", "the kernel", 1, &kernel_given, &kernel));
        } else if (key == 's' && numbered) {
            DDT_CHECK(read_setting(p, start, "conv", "the stride", 1, &stride_given, &stride));
        } else if (key == 'p' && numbered) {
            DDT_CHECK(read_setting(p, start, "conv", "the padding", 0, &pad_given, &pad));
        } else {
            return fail_at(p, start,
                           "conv(...) has no argument '%s' (it takes "
                           "OUT,kK[,sS][,pP][,nobias])",
                           argument);
        }
    }
    DDT_CHECK(expect(p, ')', start, "to close conv("));
    if (kernel == 0) return fail_at(p, start, "conv needs its kernel size, e.g. conv(32,k3,p1)");
    model_node *node;
    DDT_CHECK(new_node(p, start, NODE_CONV, &node));
    int channels = p->shape.dims[0];
    char what[48];
    snprintf(what, sizeof what, "--model: conv(%d,k%d)", outputs, kernel);
    DDT_CHECK(conv_geometry_make(channels, p->shape.dims[1], p->shape.dims[2], kernel, kernel,
                                 stride, stride, pad, pad, what, &node->geometry));
    node->bias = bias;
    node->out_shape = shape3(outputs, node->geometry.out_height, node->geometry.out_width);
    /* Each window unfolds to channels x K x K values (the GEMM's inner size, an int). */
    int64_t unfolded = (int64_t)channels * kernel * kernel,
            spread = (int64_t)outputs * kernel * kernel;
    if (unfolded > INT_MAX)
        return fail_at(p, start,
                       "each window holds %d channels x %dx%d = %lld values, more than %d",
                       channels, kernel, kernel, (long long)unfolded, INT_MAX);
    if (spread > INT_MAX)
        return fail_at(p, start, "%d outputs x a %dx%d kernel = %lld values, more than %d", outputs,
                       kernel, kernel, (long long)spread, INT_MAX);
    model_tensor *w;
    int dims[4] = {outputs, channels, kernel, kernel};
    DDT_CHECK(add_weight(p, start, prefix, 4, dims, (int)unfolded, (int)spread, &w));
    if (bias) DDT_CHECK(add_bias(p, start, prefix, outputs));
    DDT_CHECK(finish_node(p, start, node));
    emit(p, "conv(%d,k%d", outputs, kernel);
    if (stride != 1) emit(p, ",s%d", stride);
    if (pad != 0) emit(p, ",p%d", pad);
    emit(p, "%s)", bias ? "" : ",nobias");
    return DDT_OK;
}

/* maxpool(K[,sS][,pP]) / avgpool(...) after the '(': each setting at most once. */
static ddt_status parse_pool(parser *p, size_t start, pool_kind kind) {
    const char *word = kind == POOL_MAX ? "maxpool" : "avgpool";
    DDT_CHECK(need_images(p, start, word));
    int kernel, stride = 0, pad = 0;
    bool stride_given = false, pad_given = false;
    DDT_CHECK(read_count(p, start, "the pooling window", 1, 1024, &kernel));
    while (accept(p, ',')) {
        char argument[32];
        size_t length = argument_at(p, argument, sizeof argument);
        char key = p->source[p->pos];
        bool numbered = length > 1 && isdigit((unsigned char)p->source[p->pos + 1]);
        if (length == 0) return fail_at(p, start, "%s(...) has an empty argument", word);
        if (key == 's' && numbered)
            DDT_CHECK(read_setting(p, start, word, "the stride", 1, &stride_given, &stride));
        else if (key == 'p' && numbered)
            DDT_CHECK(read_setting(p, start, word, "the padding", 0, &pad_given, &pad));
        else
            return fail_at(p, start, "%s(...) has no argument '%s' (it takes K[,sS][,pP])", word,
                           argument);
    }
    DDT_CHECK(expect(p, ')', start, "to close the pooling layer"));
    if (stride == 0) stride = kernel;
    if (2 * pad > kernel)
        return fail_at(p, start, "the padding %d is more than half the window %d", pad, kernel);
    model_node *node;
    DDT_CHECK(new_node(p, start, NODE_POOL, &node));
    node->pool = kind;
    char what[48];
    snprintf(what, sizeof what, "--model: %s(%d)", word, kernel);
    DDT_CHECK(conv_geometry_make(p->shape.dims[0], p->shape.dims[1], p->shape.dims[2], kernel,
                                 kernel, stride, stride, pad, pad, what, &node->geometry));
    node->out_shape =
        shape3(p->shape.dims[0], node->geometry.out_height, node->geometry.out_width);
    DDT_CHECK(finish_node(p, start, node));
    emit(p, "%s(%d", word, kernel);
    if (stride != kernel) emit(p, ",s%d", stride);
    if (pad) emit(p, ",p%d", pad);
    emit(p, ")");
    return DDT_OK;
}

/* res(BODY[|SHORTCUT]) after "res(": the block is module `index` of the enclosing sequence. */
static ddt_status parse_residual(parser *p, size_t start, const char *prefix) {
    if (++p->depth > MODEL_MAX_NESTING)
        return fail_at(p, start, "blocks nest too deep (at most %d)", MODEL_MAX_NESTING);
    int view;
    DDT_CHECK(build_view(p, start, &view));
    char inner[MODEL_TENSOR_MAX_NAME];
    DDT_CHECK(join(p, start, inner, prefix, "body."));
    emit(p, "res(");
    int index = 0;
    DDT_CHECK(parse_sequence(p, inner, &index, '|'));
    int body_end = p->current;
    int shortcut_end = view;
    if (accept(p, '|')) {
        emit(p, "|");
        p->current = view;
        p->shape = p->spec->nodes[view].out_shape;
        DDT_CHECK(join(p, start, inner, prefix, "shortcut."));
        index = 0;
        DDT_CHECK(parse_sequence(p, inner, &index, ')'));
        shortcut_end = p->current;
    }
    DDT_CHECK(expect(p, ')', start, "to close res("));
    emit(p, ")");
    if (body_end == view) return fail_at(p, start, "res(...) needs at least one layer");
    DDT_CHECK(build_add(p, start, body_end, shortcut_end));
    p->depth--;
    return DDT_OK;
}

typedef struct gpt_shape {
    int layers, heads, width, context, vocab;
    float dropout;
} gpt_shape;

/* gpt(key=value,...) after "gpt(": every setting but dropout once, none twice. */
static ddt_status parse_gpt_arguments(parser *p, size_t start, gpt_shape *g) {
    memset(g, 0, sizeof *g);
    struct {
        const char *key;
        int *value;
        long minimum, maximum;
    } keys[] = {{"layers", &g->layers, 1, 64},
                {"heads", &g->heads, 1, 256},
                {"width", &g->width, 1, 65536},
                {"context", &g->context, 1, 65536},
                {"vocab", &g->vocab, 1, MODEL_MAX_VOCAB}};
    enum { KEY_COUNT = sizeof keys / sizeof keys[0] };
    bool given[KEY_COUNT + 1] = {false}; /* the last: dropout */
    do {
        char key[16];
        size_t length = read_word(p, key, sizeof key);
        size_t k = 0;
        for (; k < KEY_COUNT; k++)
            if (strcmp(key, keys[k].key) == 0) break;
        if (k == KEY_COUNT && strcmp(key, "dropout") != 0)
            return fail_at(p, start,
                           "gpt(...) has no setting '%.*s%s' (layers, heads, width, "
                           "context, vocab, dropout)",
                           (int)(length < 15 ? length : 15), p->source + p->pos - length,
                           length > 15 ? "..." : "");
        if (given[k]) return fail_at(p, start, "gpt(...) gives %s twice", key);
        given[k] = true;
        DDT_CHECK(expect(p, '=', start, "after a gpt(...) setting"));
        if (k == KEY_COUNT)
            DDT_CHECK(read_rate(p, start, &g->dropout));
        else
            DDT_CHECK(
                read_count(p, start, keys[k].key, keys[k].minimum, keys[k].maximum, keys[k].value));
    } while (accept(p, ','));
    DDT_CHECK(expect(p, ')', start, "to close gpt("));
    for (size_t k = 0; k < KEY_COUNT; k++)
        if (!given[k])
            return fail_at(p, start, "gpt(...) needs %s=N (layers, heads, width, context, vocab)",
                           keys[k].key);
    if (g->context < MODEL_MIN_ATTENTION_CONTEXT)
        return fail_at(p, start, "gpt(...): context=%d is too short: %s", g->context,
                       ATTENTION_CONTEXT_REASON);
    if (g->vocab < MODEL_MIN_VOCAB)
        return fail_at(p, start, "gpt(...): vocab=%d is too small: %s", g->vocab, VOCAB_REASON);
    return DDT_OK;
}

/* The whole GPT-2 decoder, with nanoGPT's names. */
static ddt_status build_gpt(parser *p, size_t start, const gpt_shape *g) {
    if (p->spec->input_kind != MODEL_INPUT_FEATURES || p->current >= 0 || p->spec->node_count)
        return fail_at(p, start, "gpt(...) is a whole model: write it alone");
    p->spec->input_kind = MODEL_INPUT_TOKENS;
    p->spec->context = g->context;
    p->spec->vocab = g->vocab;
    p->spec->input_shape = shape1(g->context);
    p->shape = shape1(g->context);
    DDT_CHECK(build_embed(p, start, "transformer.wte.weight", "transformer.wpe.weight", g->width));
    if (g->dropout > 0) DDT_CHECK(build_dropout(p, start, g->dropout));
    float projection_std = 0.02f / sqrtf(2.0f * (float)g->layers);
    for (int l = 0; l < g->layers; l++) {
        char prefix[MODEL_TENSOR_MAX_NAME], name[MODEL_TENSOR_MAX_NAME];
        snprintf(prefix, sizeof prefix, "transformer.h.%d.", l);
        p->block = l;
        int view, end;
        DDT_CHECK(build_view(p, start, &view));
        DDT_CHECK(join(p, start, name, prefix, "ln_1."));
        DDT_CHECK(build_norm(p, start, name, true));
        DDT_CHECK(join(p, start, name, prefix, "attn."));
        DDT_CHECK(build_attention(p, start, name, g->heads, projection_std));
        if (g->dropout > 0) DDT_CHECK(build_dropout(p, start, g->dropout));
        end = p->current;
        DDT_CHECK(build_add(p, start, end, view));
        DDT_CHECK(build_view(p, start, &view));
        DDT_CHECK(join(p, start, name, prefix, "ln_2."));
        DDT_CHECK(build_norm(p, start, name, true));
        DDT_CHECK(join(p, start, name, prefix, "mlp.c_fc."));
        DDT_CHECK(build_dense(p, start, name, 4 * g->width, 0.02f));
        DDT_CHECK(build_activation(p, start, ACTIVATION_GELU_TANH));
        DDT_CHECK(join(p, start, name, prefix, "mlp.c_proj."));
        DDT_CHECK(build_dense(p, start, name, g->width, projection_std));
        if (g->dropout > 0) DDT_CHECK(build_dropout(p, start, g->dropout));
        end = p->current;
        DDT_CHECK(build_add(p, start, end, view));
    }
    p->block = -1;
    p->spec->block_count = g->layers;
    DDT_CHECK(build_norm(p, start, "transformer.ln_f.", true));
    DDT_CHECK(build_lm_head(p, start));
    emit(p, "gpt(layers=%d,heads=%d,width=%d,context=%d,vocab=%d", g->layers, g->heads, g->width,
         g->context, g->vocab);
    if (g->dropout > 0) emit(p, ",dropout=%g", (double)g->dropout);
    emit(p, ")");
    return DDT_OK;
}

static const struct {
    const char *word;
    activation_kind kind;
} activation_words[] = {{"relu", ACTIVATION_RELU},
                        {"gelu", ACTIVATION_GELU},
                        {"gelu_tanh", ACTIVATION_GELU_TANH},
                        {"tanh", ACTIVATION_TANH},
                        {"sigmoid", ACTIVATION_SIGMOID}};

/* A bare "dropout" followed by '-' and a number: "dropout-1" reads as a rate of -1 as much
 * as dropout then a dense layer of 1, and "dropout-0.3" as a rate of 0.3; the grammar takes
 * neither reading silently. Files written before this rule stored "dropout-N" for the default
 * rate, so stored descriptions still read it as that (model_spec_parse_stored). */
static ddt_status refuse_bare_dropout(parser *p, size_t start) {
    const char *next = p->source + p->pos + 1;
    if (!isdigit((unsigned char)*next) && *next != '.') return DDT_OK;
    size_t length = strcspn(next, "-|)");
    int shown = (int)(length < 24 ? length : 24);
    bool width = strspn(next, "0123456789") == length && strtol(next, NULL, 10) > 0;
    if (!width)
        return fail_at(p, start,
                       "dropout's rate follows the word directly, without '-': write "
                       "dropout%.*s, not dropout-%.*s",
                       shown, next, shown, next);
    return fail_at(p, start,
                   "'dropout-%.*s' could be a rate of -%.*s or dropout then a dense "
                   "layer of %.*s: write the rate, e.g. dropout0.5-%.*s (a rate in [0, 1) "
                   "follows the word directly)",
                   shown, next, shown, next, shown, next, shown, next);
}

/* One layer token; `index` is its module index in the enclosing sequence (names). */
static ddt_status parse_layer(parser *p, const char *sequence_prefix, int *index) {
    size_t start = p->pos;
    char prefix[MODEL_TENSOR_MAX_NAME];
    char number[16];
    snprintf(number, sizeof number, "%d.", *index);
    DDT_CHECK(join(p, start, prefix, sequence_prefix, number));
    const char *s = p->source + p->pos;
    if (isdigit((unsigned char)*s)) {
        size_t digits = 0;
        while (isdigit((unsigned char)s[digits]))
            digits++;
        if (s[digits] == '*') { /* N*(LAYERS) */
            int copies;
            DDT_CHECK(read_count(p, start, "the repeat count", 1, 1024, &copies));
            p->pos++; /* '*' */
            DDT_CHECK(expect(p, '(', start, "after N*"));
            emit(p, "%d*(", copies);
            size_t body = p->pos;
            for (int c = 0; c < copies; c++) {
                p->pos = body;
                DDT_CHECK(parse_sequence(p, sequence_prefix, index, ')'));
                if (c == 0) p->emit--; /* text once */
            }
            p->emit++;
            DDT_CHECK(expect(p, ')', start, "to close N*("));
            emit(p, ")");
            return DDT_OK;
        }
        int outputs;
        DDT_CHECK(read_count(p, start, "a dense layer's width", 1, MODEL_MAX_WIDTH, &outputs));
        if (p->source[p->pos] == 'x')
            return fail_at(p, start, "an image shape is only allowed as the input (first token)");
        DDT_CHECK(build_dense(p, start, prefix, outputs, 0));
        emit(p, "%d", outputs);
        (*index)++;
        return DDT_OK;
    }
    char word[24];
    read_word(p, word, sizeof word);
    bool call = accept(p, '(');
    for (size_t i = 0; i < sizeof activation_words / sizeof activation_words[0]; i++)
        if (!call && strcmp(word, activation_words[i].word) == 0) {
            DDT_CHECK(build_activation(p, start, activation_words[i].kind));
            emit(p, "%s", word);
            (*index)++;
            return DDT_OK;
        }
    if (!call && strcmp(word, "dropout") == 0) {
        float rate = 0.5f; /* nn.Dropout()'s default */
        char c = p->source[p->pos];
        if (c != '-' && c != '\0' && c != ')' && c != '|') {
            DDT_CHECK(read_rate(p, start, &rate));
        } else if (c == '-' && !p->stored) {
            DDT_CHECK(refuse_bare_dropout(p, start));
        }
        DDT_CHECK(build_dropout(p, start, rate));
        emit(p, "dropout%g", (double)rate); /* the rate always: "dropout-1" is never written */
    } else if (call && strcmp(word, "conv") == 0) {
        DDT_CHECK(parse_conv(p, start, prefix));
    } else if (call && (strcmp(word, "maxpool") == 0 || strcmp(word, "avgpool") == 0)) {
        DDT_CHECK(parse_pool(p, start, word[0] == 'm' ? POOL_MAX : POOL_AVERAGE));
    } else if (!call && strcmp(word, "gap") == 0) {
        DDT_CHECK(need_images(p, start, "gap"));
        model_node *node;
        DDT_CHECK(new_node(p, start, NODE_GLOBAL_POOL, &node));
        node->pool = POOL_AVERAGE;
        DDT_CHECK(conv_geometry_make(p->shape.dims[0], p->shape.dims[1], p->shape.dims[2],
                                     p->shape.dims[1], p->shape.dims[2], 1, 1, 0, 0, "--model: gap",
                                     &node->geometry));
        node->out_shape = shape1(p->shape.dims[0]);
        DDT_CHECK(finish_node(p, start, node));
        emit(p, "gap");
    } else if (!call && strcmp(word, "flatten") == 0) {
        if (p->shape.rank == 2)
            return fail_at(p, start, "flatten works on images; a sequence stays a sequence");
        model_node *node;
        DDT_CHECK(build_simple(p, start, NODE_FLATTEN, &node));
        node->out_shape = shape1((int)tensor_shape_count(&p->shape));
        DDT_CHECK(finish_node(p, start, node));
        emit(p, "flatten");
    } else if (!call && (strcmp(word, "bn") == 0 || strcmp(word, "ln") == 0)) {
        DDT_CHECK(build_norm(p, start, prefix, word[0] == 'l'));
        emit(p, "%s", word);
    } else if (call && strcmp(word, "res") == 0) {
        DDT_CHECK(parse_residual(p, start, prefix));
    } else if (call && strcmp(word, "embed") == 0) {
        int width;
        DDT_CHECK(read_count(p, start, "embed's width", 1, 65536, &width));
        if (p->source[p->pos] == ',')
            return fail_at(p, start, "embed(...) takes one argument, its width D");
        DDT_CHECK(expect(p, ')', start, "to close embed("));
        char table[MODEL_TENSOR_MAX_NAME], positions[MODEL_TENSOR_MAX_NAME];
        DDT_CHECK(join(p, start, table, prefix, "wte.weight"));
        DDT_CHECK(join(p, start, positions, prefix, "wpe.weight"));
        DDT_CHECK(build_embed(p, start, table, positions, width));
        emit(p, "embed(%d)", width);
    } else if (call && strcmp(word, "attn") == 0) {
        int heads;
        DDT_CHECK(read_count(p, start, "the number of heads", 1, 256, &heads));
        if (p->source[p->pos] == ',')
            return fail_at(p, start, "attn(...) takes one argument, its number of heads");
        DDT_CHECK(expect(p, ')', start, "to close attn("));
        DDT_CHECK(build_attention(p, start, prefix, heads, 0.02f));
        emit(p, "attn(%d)", heads);
    } else if (!call && strcmp(word, "lmhead") == 0) {
        DDT_CHECK(build_lm_head(p, start));
        emit(p, "lmhead");
    } else if (call && strcmp(word, "gpt") == 0) {
        return fail_at(p, start, "gpt(...) is a whole model: write it alone");
    } else {
        return fail_at(p, start, "not a layer (%s)", LAYER_WORDS_HELP);
    }
    (*index)++;
    return DDT_OK;
}

/* LAYER ('-' LAYER)* up to `terminator` (or ')' or the end), not consuming it. */
static ddt_status parse_sequence(parser *p, const char *prefix, int *index, char terminator) {
    for (bool first = true;; first = false) {
        char c = p->source[p->pos];
        if (!first) {
            if (c != '-') break;
            p->pos++;
            c = p->source[p->pos];
            emit(p, "-");
        }
        if (c == '\0' || c == '-' || c == ')' || c == '|')
            return fail_at(p, p->pos, "expected a layer (a '-' at an end, or two in a row)");
        DDT_CHECK(parse_layer(p, prefix, index));
    }
    char c = p->source[p->pos];
    if (c == '\0' || c == ')' || (c == '|' && terminator == '|')) return DDT_OK;
    return fail_at(p, p->pos, "expected '-' between layers");
}

/* The input token: WIDTH, CxHxW or tokens(T,V). */
static ddt_status parse_input(parser *p) {
    size_t start = p->pos;
    model_spec *spec = p->spec;
    if (strncmp(p->source, "tokens(", 7) == 0) {
        p->pos += 7;
        DDT_CHECK(read_count(p, start, "the context", 1, 65536, &spec->context));
        DDT_CHECK(expect(p, ',', start, "between the context and the vocabulary size"));
        DDT_CHECK(read_count(p, start, "the vocabulary size", 1, MODEL_MAX_VOCAB, &spec->vocab));
        if (spec->vocab < MODEL_MIN_VOCAB)
            return fail_at(p, start, "a vocabulary of %d is too small: %s", spec->vocab,
                           VOCAB_REASON);
        if (p->source[p->pos] == ',')
            return fail_at(p, start, "tokens(...) takes two arguments, CONTEXT and VOCAB");
        DDT_CHECK(expect(p, ')', start, "to close tokens("));
        spec->input_kind = MODEL_INPUT_TOKENS;
        spec->input_shape = shape1(spec->context);
        emit(p, "tokens(%d,%d)", spec->context, spec->vocab);
    } else {
        if (!isdigit((unsigned char)p->source[0]))
            return fail_at(p, start,
                           "the model must start with its input: a width (784), an image shape "
                           "(1x28x28), tokens(CONTEXT,VOCAB), a preset, or gpt(...)");
        int dims[3], rank = 0;
        do {
            if (rank == 3) return fail_at(p, start, "an input shape has at most 3 dimensions");
            DDT_CHECK(read_count(p, start, rank ? "an image dimension" : "the input width", 1,
                                 MODEL_MAX_WIDTH, &dims[rank]));
            rank++;
        } while (accept(p, 'x'));
        if (rank == 2)
            return fail_at(p, start, "an input shape is a width (784) or C x H x W (1x28x28)");
        spec->input_shape = rank == 1 ? shape1(dims[0]) : shape3(dims[0], dims[1], dims[2]);
        int64_t values = tensor_shape_count(&spec->input_shape);
        if (values > MODEL_MAX_WIDTH) {
            char shape[64], count[32];
            tensor_shape_format(&spec->input_shape, shape, sizeof shape);
            return fail_at(p, start, "the input %s holds %s values per sample; at most %d", shape,
                           count_text(values, count, sizeof count), MODEL_MAX_WIDTH);
        }
        if (rank == 1)
            emit(p, "%d", dims[0]);
        else
            emit(p, "%dx%dx%d", dims[0], dims[1], dims[2]);
    }
    p->shape = spec->input_shape;
    return DDT_OK;
}

/* Copies `text` without whitespace and '#' comments. */
static ddt_status normalise(const char *text, char *out, size_t size) {
    size_t used = 0;
    for (const char *c = text; *c; c++) {
        if (*c == '#') {
            while (*c && *c != '\n')
                c++;
            if (!*c) break;
            continue;
        }
        if (isspace((unsigned char)*c)) continue;
        if (!isprint((unsigned char)*c))
            return ddt_error(DDT_ERR_USAGE, "--model: the description holds a control or "
                                            "non-ASCII byte (0x%02x)",
                             (unsigned char)*c);
        if (used + 1 >= size)
            return ddt_error(DDT_ERR_USAGE, "--model: the description is too long (at most %zu "
                                            "characters)",
                             size - 1);
        out[used++] = *c;
    }
    out[used] = '\0';
    return DDT_OK;
}

static ddt_status read_description_file(const char *path, char *out, size_t size) {
    char name[4200];
    snprintf(name, sizeof name, "--model @%s", path);
    FILE *file;
    DDT_CHECK(file_fopen_regular_input(path, name, &file)); /* a FIFO would block: refused */
    size_t n = fread(out, 1, size - 1, file);
    bool more = fgetc(file) != EOF;
    bool failed = ferror(file);
    fclose(file);
    if (failed) return ddt_error(DDT_ERR_IO, "--model @%s: cannot read it", path);
    if (more)
        return ddt_error(DDT_ERR_USAGE, "--model @%s: the file is too long (at most %zu bytes)",
                         path, size - 1);
    out[n] = '\0';
    if (memchr(out, '\0', n))
        return ddt_error(DDT_ERR_USAGE, "--model @%s: not a text file (it holds NUL bytes)", path);
    return DDT_OK;
}

/* He initialisation suits weights whose layer feeds relu or gelu (through dropout or bn). */
static void mark_rectifiers(model_spec *spec) {
    for (int n = 0; n < spec->node_count; n++) {
        const model_node *node = &spec->nodes[n];
        if (node->kind != NODE_DENSE && node->kind != NODE_CONV) continue;
        bool rectifier = false;
        for (int m = n + 1, from = n; m < spec->node_count; m++) {
            const model_node *next = &spec->nodes[m];
            if (next->input != from) break;
            if (next->kind == NODE_DROPOUT || next->kind == NODE_BATCHNORM) {
                from = m;
                continue;
            }
            rectifier = next->kind == NODE_ACTIVATION && (next->activation == ACTIVATION_RELU ||
                                                          next->activation == ACTIVATION_GELU ||
                                                          next->activation == ACTIVATION_GELU_TANH);
            break;
        }
        spec->tensors[node->first_tensor].init_rectifier = rectifier;
    }
}

static ddt_status parse_description(const char *text, bool stored, model_spec *out) {
    memset(out, 0, sizeof *out);
    if (!text || !*text)
        return ddt_error(DDT_ERR_USAGE, "--model: empty model description (expected e.g. "
                                        "784-256-relu-10, 1x28x28-conv(32,k3)-relu-flatten-10, "
                                        "or a preset such as cnn-small)");
    /* ddtrain stores canonical text: a file naming another file is not one of its own. */
    if (stored && strchr(text, '@'))
        return ddt_error(DDT_ERR_USAGE, "--model: a stored description cannot name a file (@)");
    char file_text[16384];
    const char *description = model_spec_preset_text(text);
    if (!description && text[0] == '@') {
        DDT_CHECK(read_description_file(text + 1, file_text, sizeof file_text));
        description = model_spec_preset_text(file_text) ? model_spec_preset_text(file_text)
                                                         : file_text;
    }
    if (!description) description = text;
    char source[MODEL_SPEC_MAX_TEXT];
    DDT_CHECK(normalise(description, source, sizeof source));
    const char *preset_text = model_spec_preset_text(source);
    char expanded[MODEL_SPEC_MAX_TEXT];
    if (preset_text) { /* a preset named in a file, after normalising */
        DDT_CHECK(normalise(preset_text, expanded, sizeof expanded));
        memcpy(source, expanded, sizeof source);
    }
    if (!source[0]) return ddt_error(DDT_ERR_USAGE, "--model: the description is empty");

    parser p = {.source = source,
                .original = text,
                .spec = out,
                .out = out->text,
                .emit = 1,
                .stored = stored,
                .current = -1,
                .embed_node = -1,
                .block = -1};
    out->input_kind = MODEL_INPUT_FEATURES;
    if (strncmp(source, "gpt(", 4) == 0) {
        p.pos = 4;
        gpt_shape g;
        DDT_CHECK(parse_gpt_arguments(&p, 0, &g));
        if (g.width % g.heads != 0)
            return ddt_error(DDT_ERR_USAGE, "--model: gpt(...): width %d does not split into %d "
                                            "heads",
                             g.width, g.heads);
        DDT_CHECK(build_gpt(&p, 0, &g));
    } else {
        DDT_CHECK(parse_input(&p));
        int index = 0;
        if (accept(&p, '-')) {
            emit(&p, "-");
            DDT_CHECK(parse_sequence(&p, "", &index, '\0'));
        }
    }
    if (source[p.pos] != '\0')
        return fail_at(&p, p.pos, source[p.pos] == ')' ? "an unmatched ')'" : "unexpected text");
    if (p.overflow)
        return ddt_error(DDT_ERR_USAGE, "--model: the canonical description is too long (at "
                                        "most %d characters)",
                         MODEL_SPEC_MAX_TEXT - 1);
    if (out->node_count == 0)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: '%s' has no layer (add a width after the input, e.g. %s-10)",
                         out->text, out->text);
    bool trained = false;
    for (int t = 0; t < out->tensor_count; t++)
        if (!out->tensors[t].is_buffer) trained = true;
    if (!trained)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: '%s' has no layer with parameters (add a dense layer, e.g. "
                         "%s-10)",
                         out->text, out->text);
    const model_node *last = &out->nodes[out->node_count - 1];
    if (last->kind == NODE_DROPOUT)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: '%s' ends with dropout; end with a dense layer or an activation",
                         out->text);
    const tensor_shape *result = &last->out_shape;
    if (out->input_kind == MODEL_INPUT_TOKENS) {
        if (result->rank != 2 || last->kind != NODE_LM_HEAD)
            return ddt_error(DDT_ERR_USAGE, "--model: a token model must end with lmhead");
        out->positions = result->dims[0];
        out->output_width = result->dims[1];
    } else {
        if (result->rank != 1) {
            char shape[48];
            tensor_shape_format(result, shape, sizeof shape);
            return ddt_error(DDT_ERR_USAGE,
                             "--model: '%s' ends with %s images; end with flat outputs (add "
                             "flatten or gap, then a dense layer)",
                             out->text, shape);
        }
        out->positions = 1;
        out->output_width = result->dims[0];
    }
    out->input_width = (int)tensor_shape_count(&out->input_shape);
    size_t parameters = 0, buffers = 0;
    for (int t = 0; t < out->tensor_count; t++) {
        model_tensor *tensor = &out->tensors[t];
        size_t *next = tensor->is_buffer ? &buffers : &parameters;
        tensor->offset = *next;
        if (!checked_add_size(*next, tensor->count, next))
            return ddt_error(DDT_ERR_USAGE,
                             "--model: '%s' has more parameters than can be counted "
                             "(at %s)",
                             out->text, tensor->name);
    }
    out->parameter_count = parameters;
    out->buffer_count = buffers;
    mark_rectifiers(out);
    return DDT_OK;
}

ddt_status model_spec_parse(const char *text, model_spec *out) {
    ddt_status status = parse_description(text, false, out);
    /* A description read from a file: the error names the file too. */
    const char *message = ddt_error_message();
    if (status != DDT_OK && text && text[0] == '@' && strncmp(message, "--model: ", 9) == 0)
        return ddt_error(status, "--model @%s: %s", text + 1, message + 9);
    return status;
}

ddt_status model_spec_parse_stored(const char *text, model_spec *out) {
    return parse_description(text, true, out);
}

/* ---- queries ----------------------------------------------------------------------------- */

size_t model_spec_parameter_count(const model_spec *spec) {
    return spec->parameter_count;
}

size_t model_spec_state_count(const model_spec *spec) {
    return spec->parameter_count + spec->buffer_count;
}

void model_spec_set_counters(const model_spec *spec, float *state, int64_t batches) {
    for (int t = 0; t < spec->tensor_count; t++)
        if (spec->tensors[t].is_counter)
            state[spec->parameter_count + spec->tensors[t].offset] = (float)batches;
}

int model_spec_find_tensor(const model_spec *spec, const char *name) {
    for (int t = 0; t < spec->tensor_count; t++)
        if (strcmp(spec->tensors[t].name, name) == 0) return t;
    return -1;
}

int model_spec_tensor_at(const model_spec *spec, size_t offset) {
    for (int t = 0; t < spec->tensor_count; t++) {
        const model_tensor *tensor = &spec->tensors[t];
        if (!tensor->is_buffer && offset >= tensor->offset && offset < tensor->offset + tensor->count)
            return t;
    }
    return -1;
}

int model_spec_ready_points(const model_spec *spec, size_t *points, int capacity) {
    int count = 0;
    for (int n = 0; n < spec->node_count && count < capacity; n++) {
        const model_node *node = &spec->nodes[n];
        for (int t = node->first_tensor; t < node->first_tensor + node->tensor_count; t++)
            if (!spec->tensors[t].is_buffer) {
                points[count++] = spec->tensors[t].offset;
                break;
            }
    }
    return count;
}

ddt_status conv_geometry_make(int channels, int height, int width, int kernel_h, int kernel_w,
                              int stride_h, int stride_w, int pad_h, int pad_w, const char *what,
                              conv_geometry *out) {
    memset(out, 0, sizeof *out);
    if (channels <= 0 || height <= 0 || width <= 0)
        return ddt_error(DDT_ERR_USAGE, "%s: its input %dx%dx%d is empty", what, channels, height,
                         width);
    if (kernel_h <= 0 || kernel_w <= 0 || stride_h <= 0 || stride_w <= 0 || pad_h < 0 || pad_w < 0)
        return ddt_error(DDT_ERR_USAGE,
                         "%s: kernel and stride must be at least 1 and padding at least 0", what);
    long padded_h = (long)height + 2L * pad_h, padded_w = (long)width + 2L * pad_w;
    if (padded_h < kernel_h || padded_w < kernel_w)
        return ddt_error(DDT_ERR_USAGE,
                         "%s: the %dx%d window does not fit its %dx%d input (with padding %d)",
                         what, kernel_h, kernel_w, height, width, pad_h);
    *out = (conv_geometry){channels, height, width, kernel_h, kernel_w, stride_h, stride_w,
                           pad_h, pad_w, (int)((padded_h - kernel_h) / stride_h + 1),
                           (int)((padded_w - kernel_w) / stride_w + 1)};
    return DDT_OK;
}
