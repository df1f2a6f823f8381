/* model_spec.c - the model grammar's general parts, the presets, and the graph and tensor
 * table it builds (see model_spec.h): reading the input, sequences, repetitions N*(...), the
 * whole-model checks and the offsets; each layer word is parsed by its kind
 * (src/engine/layers/, found through layer_kind_of). One recursive-descent pass over the text
 * (whitespace and comments removed first) builds the nodes and writes the canonical text; a
 * repetition N*(...) is parsed N times from the same place, writing its text once. */
#include "engine/model_spec.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/layers/layer_kind.h"
#include "engine/model_grammar.h"
#include "util/checked.h"
#include "util/files.h"

/* One sample's values in any layer's output: the layers index a sample's values, and count
 * rows x positions, with C ints (BLAS takes int sizes). 8 GiB of floats per sample. */
#define MODEL_MAX_SAMPLE_VALUES INT_MAX

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

const char *model_node_word(const model_node *node) {
    const layer_kind *kind = layer_kind_of(node->kind);
    if (!kind) return "?";
    return kind->node_name ? kind->node_name(node) : kind->name;
}

/* "expected a width or one of relu, gelu, ...": every kind's words, in the table's order. */
static void layer_words_help(char *text, size_t size) {
    size_t used = (size_t)snprintf(text, size, "expected a width or one of");
    const char *separator = " ";
    for (int k = 0; k <= NODE_KIND_COUNT; k++) {
        const layer_word *words =
            k < NODE_KIND_COUNT ? layer_kind_of((node_kind)k)->words : &layer_gpt_word;
        int count = k < NODE_KIND_COUNT ? layer_kind_of((node_kind)k)->word_count : 1;
        for (int w = 0; w < count && used < size; w++) {
            const layer_word *word = &words[w];
            if (!word->word) continue;
            int n = word->help ? snprintf(text + used, size - used, "%s%s", separator, word->help)
                    : word->call
                        ? snprintf(text + used, size - used, "%s%s(...)", separator, word->word)
                        : snprintf(text + used, size - used, "%s%s", separator, word->word);
            if (n < 0) return;
            used += (size_t)n;
            separator = ", ";
        }
    }
}

/* ---- the grammar's general parts (model_grammar.h) --------------------------------------- */

void grammar_emit(grammar *p, const char *format, ...) {
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
static void token_at(const grammar *p, size_t start, char *text, size_t size) {
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

ddt_status grammar_fail(const grammar *p, size_t start, const char *format, ...) {
    char token[80], detail[400];
    token_at(p, start, token, sizeof token);
    va_list args;
    va_start(args, format);
    vsnprintf(detail, sizeof detail, format, args);
    va_end(args);
    return ddt_error(DDT_ERR_USAGE, "--model: at '%s': %s", token, detail);
}

bool grammar_accept(grammar *p, char c) {
    if (p->source[p->pos] != c) return false;
    p->pos++;
    return true;
}

ddt_status grammar_expect(grammar *p, char c, size_t start, const char *what) {
    if (grammar_accept(p, c)) return DDT_OK;
    return grammar_fail(p, start, "expected '%c' %s, found '%s'", c, what,
                        p->source[p->pos] ? (char[]){p->source[p->pos], 0} : "the end");
}

/* A positive integer (at most MODEL_MAX_WIDTH unless `limit` says more). */
ddt_status grammar_read_count(grammar *p, size_t start, const char *what, long minimum,
                              long maximum, int *out) {
    const char *s = p->source + p->pos;
    if (!isdigit((unsigned char)*s))
        return grammar_fail(p, start, "expected a number for %s", what);
    size_t digits = 0;
    while (isdigit((unsigned char)s[digits]))
        digits++;
    long value = digits > 9 ? maximum + 1 : strtol(s, NULL, 10);
    p->pos += digits;
    if (value < minimum) return grammar_fail(p, start, "%s must be at least %ld", what, minimum);
    if (value > maximum)
        return grammar_fail(p, start, "%s is too large (at most %ld)", what, maximum);
    *out = (int)value;
    return DDT_OK;
}

/* A dropout rate: a plain decimal in [0, 1) ("0.1", ".25", "0"), read up to the next
 * separator; anything else there (a second '.', an exponent, a sign) is refused, naming it. */
ddt_status grammar_read_rate(grammar *p, size_t start, float *rate) {
    const char *s = p->source + p->pos;
    size_t length = 0, digits = 0, points = 0;
    while (isalnum((unsigned char)s[length]) || s[length] == '.' || s[length] == '+') {
        digits += isdigit((unsigned char)s[length]) != 0;
        points += s[length] == '.';
        length++;
    }
    if (length == 0)
        return grammar_fail(p, start, "expected a dropout rate in [0, 1) (e.g. 0.1), found '%s'",
                            *s ? (char[]){*s, 0} : "the end");
    if (digits + points != length || points > 1 || digits == 0)
        return grammar_fail(p, start,
                            "the dropout rate '%.*s' is not a plain decimal in [0, 1) "
                            "(e.g. 0.1)",
                            (int)(length < 24 ? length : 24), s);
    double value = strtod(s, NULL);
    if (!(value >= 0.0 && value < 1.0))
        return grammar_fail(p, start, "the dropout rate must be in [0, 1), got %.*s",
                            (int)(length < 24 ? length : 24), s);
    p->pos += length;
    *rate = (float)value;
    return DDT_OK;
}

/* The argument of a call like conv(...) at p->pos, up to the next ',' or ')' (or a '-' or
 * '|', which no argument holds: a ')' left out), as text for messages; returns its length. */
size_t grammar_argument_at(const grammar *p, char *text, size_t size) {
    const char *s = p->source + p->pos;
    size_t length = strcspn(s, ",)-|");
    snprintf(text, size, "%.*s%s", (int)(length < 24 ? length : 24), s, length > 24 ? "..." : "");
    return length;
}

size_t grammar_read_word(grammar *p, char *word, size_t size) {
    size_t length = 0;
    while (isalpha((unsigned char)p->source[p->pos + length]) ||
           p->source[p->pos + length] == '_')
        length++;
    snprintf(word, size, "%.*s", (int)length, p->source + p->pos);
    p->pos += length;
    return length;
}

/* ---- building nodes and tensors ---------------------------------------------------------- */

ddt_status grammar_join(const grammar *p, size_t start, char out[MODEL_TENSOR_MAX_NAME],
                        const char *a, const char *b) {
    int n = snprintf(out, MODEL_TENSOR_MAX_NAME, "%s%s", a, b);
    if (n < 0 || n >= MODEL_TENSOR_MAX_NAME)
        return grammar_fail(p, start, "the parameter name %s%s is too long (nesting too deep)", a,
                            b);
    return DDT_OK;
}

ddt_status grammar_new_node(grammar *p, size_t start, node_kind kind, model_node **out) {
    model_spec *spec = p->spec;
    if (spec->node_count == MODEL_MAX_NODES)
        return grammar_fail(p, start, "too many layers (at most %d after expansion)",
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
ddt_status grammar_finish_node(grammar *p, size_t start, model_node *node) {
    int64_t values = tensor_shape_count(&node->out_shape);
    if (values > MODEL_MAX_SAMPLE_VALUES) {
        char shape[64], count[32];
        tensor_shape_format(&node->out_shape, shape, sizeof shape);
        return grammar_fail(p, start,
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

ddt_status grammar_add_tensor(grammar *p, size_t start, const char *prefix, const char *suffix,
                              int rank, const int *dims, tensor_init init, model_tensor **out) {
    model_spec *spec = p->spec;
    if (spec->tensor_count == MODEL_MAX_TENSORS)
        return grammar_fail(p, start, "too many parameter tensors (at most %d)", MODEL_MAX_TENSORS);
    model_tensor *t = &spec->tensors[spec->tensor_count++];
    memset(t, 0, sizeof *t);
    int n = snprintf(t->name, sizeof t->name, "%s%s", prefix, suffix);
    if (n < 0 || (size_t)n >= sizeof t->name)
        return grammar_fail(p, start, "parameter name %s%s is too long (nesting too deep)", prefix,
                            suffix);
    t->rank = rank;
    size_t count = 1;
    for (int i = 0; i < rank; i++) {
        t->dims[i] = dims[i];
        if (dims[i] < 1 || !checked_multiply_size(count, (size_t)dims[i], &count)) {
            char text[64] = "";
            for (int d = 0, used = 0; d < rank; d++) /* at most 4 dims of 11 characters */
                used +=
                    snprintf(text + used, sizeof text - (size_t)used, d ? "x%d" : "%d", dims[d]);
            return grammar_fail(p, start,
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

ddt_status grammar_add_weight(grammar *p, size_t start, const char *prefix, int rank,
                              const int *dims, int fan_in, int fan_out, model_tensor **out) {
    DDT_CHECK(grammar_add_tensor(p, start, prefix, "weight", rank, dims, TENSOR_INIT_FAN_IN, out));
    (*out)->decay = true;
    (*out)->fan_in = fan_in;
    (*out)->fan_out = fan_out;
    return DDT_OK;
}

ddt_status grammar_add_bias(grammar *p, size_t start, const char *prefix, int width) {
    model_tensor *t;
    return grammar_add_tensor(p, start, prefix, "bias", 1, &width, TENSOR_INIT_ZERO, &t);
}

/* A Linear layer's node on the current tensor (flat or a sequence). */
ddt_status grammar_new_layer(grammar *p, size_t start, node_kind kind, model_node **out) {
    if (p->spec->input_kind == MODEL_INPUT_TOKENS && p->current < 0)
        return grammar_fail(p, start, "token ids need embed(D) before any other layer");
    return grammar_new_node(p, start, kind, out);
}

ddt_status grammar_need_images(const grammar *p, size_t start, const char *word) {
    if (p->shape.rank == 3) return DDT_OK;
    char text[64];
    tensor_shape_format(&p->shape, text, sizeof text);
    return grammar_fail(p, start, "%s needs images (C x H x W), but its input is %s%s", word,
                        p->spec->input_kind == MODEL_INPUT_TOKENS ? "a token sequence " : "", text);
}

ddt_status grammar_read_setting(grammar *p, size_t start, const char *layer, const char *what,
                                long minimum, bool *given, int *value) {
    char argument[32];
    size_t length = grammar_argument_at(p, argument, sizeof argument);
    if (*given)
        return grammar_fail(p, start, "%s(...) gives %s twice (%c%d, then %s)", layer, what,
                            argument[0], *value, argument);
    size_t end = p->pos + length;
    p->pos++; /* the letter */
    DDT_CHECK(grammar_read_count(p, start, what, minimum, 1024, value));
    if (p->pos != end)
        return grammar_fail(p, start, "%s(...): '%s' is not a number after '%c'", layer, argument,
                            argument[0]);
    *given = true;
    return DDT_OK;
}

/* conv(OUT,kK[,sS][,pP][,nobias]) after "conv(": each setting at most once. */

/* One layer token; `index` is its module index in the enclosing sequence (names). */
static ddt_status parse_layer(grammar *p, const char *sequence_prefix, int *index) {
    size_t start = p->pos;
    char prefix[MODEL_TENSOR_MAX_NAME];
    char number[16];
    snprintf(number, sizeof number, "%d.", *index);
    DDT_CHECK(grammar_join(p, start, prefix, sequence_prefix, number));
    const char *s = p->source + p->pos;
    bool numeric = isdigit((unsigned char)*s);
    if (numeric) {
        size_t digits = 0;
        while (isdigit((unsigned char)s[digits]))
            digits++;
        if (s[digits] == '*') { /* N*(LAYERS) */
            int copies;
            DDT_CHECK(grammar_read_count(p, start, "the repeat count", 1, 1024, &copies));
            p->pos++; /* '*' */
            DDT_CHECK(grammar_expect(p, '(', start, "after N*"));
            grammar_emit(p, "%d*(", copies);
            size_t body = p->pos;
            for (int c = 0; c < copies; c++) {
                p->pos = body;
                DDT_CHECK(grammar_parse_sequence(p, sequence_prefix, index, ')'));
                if (c == 0) p->emit--; /* text once */
            }
            p->emit++;
            DDT_CHECK(grammar_expect(p, ')', start, "to close N*("));
            grammar_emit(p, ")");
            return DDT_OK;
        }
    }
    char word[24] = "";
    bool call = false;
    if (!numeric) {
        grammar_read_word(p, word, sizeof word);
        call = grammar_accept(p, '(');
    }
    /* The word's entry among the kinds' words (a number: the entry for numbers), then the
     * words that are no node's own. */
    const layer_word *found = NULL;
    for (int k = 0; k <= NODE_KIND_COUNT && !found; k++) {
        const layer_word *words =
            k < NODE_KIND_COUNT ? layer_kind_of((node_kind)k)->words : &layer_gpt_word;
        int count = k < NODE_KIND_COUNT ? layer_kind_of((node_kind)k)->word_count : 1;
        for (int w = 0; w < count && !found; w++) {
            const layer_word *entry = &words[w];
            if (numeric ? !entry->word
                        : entry->word && entry->call == call && strcmp(word, entry->word) == 0)
                found = entry;
        }
    }
    if (!found) {
        char help[400];
        layer_words_help(help, sizeof help);
        return grammar_fail(p, start, "not a layer (%s)", help);
    }
    DDT_CHECK(found->parse(p, found, start, prefix));
    (*index)++;
    return DDT_OK;
}

/* LAYER ('-' LAYER)* up to `terminator` (or ')' or the end), not consuming it. */
ddt_status grammar_parse_sequence(grammar *p, const char *prefix, int *index, char terminator) {
    for (bool first = true;; first = false) {
        char c = p->source[p->pos];
        if (!first) {
            if (c != '-') break;
            p->pos++;
            c = p->source[p->pos];
            grammar_emit(p, "-");
        }
        if (c == '\0' || c == '-' || c == ')' || c == '|')
            return grammar_fail(p, p->pos, "expected a layer (a '-' at an end, or two in a row)");
        DDT_CHECK(parse_layer(p, prefix, index));
    }
    char c = p->source[p->pos];
    if (c == '\0' || c == ')' || (c == '|' && terminator == '|')) return DDT_OK;
    return grammar_fail(p, p->pos, "expected '-' between layers");
}

/* The input token: WIDTH, CxHxW or tokens(T,V). */
static ddt_status parse_input(grammar *p) {
    size_t start = p->pos;
    model_spec *spec = p->spec;
    if (strncmp(p->source, "tokens(", 7) == 0) {
        p->pos += 7;
        DDT_CHECK(grammar_read_count(p, start, "the context", 1, 65536, &spec->context));
        DDT_CHECK(grammar_expect(p, ',', start, "between the context and the vocabulary size"));
        DDT_CHECK(
            grammar_read_count(p, start, "the vocabulary size", 1, MODEL_MAX_VOCAB, &spec->vocab));
        if (spec->vocab < MODEL_MIN_VOCAB)
            return grammar_fail(p, start, "a vocabulary of %d is too small: %s", spec->vocab,
                                VOCAB_REASON);
        if (p->source[p->pos] == ',')
            return grammar_fail(p, start, "tokens(...) takes two arguments, CONTEXT and VOCAB");
        DDT_CHECK(grammar_expect(p, ')', start, "to close tokens("));
        spec->input_kind = MODEL_INPUT_TOKENS;
        spec->input_shape = tensor_shape_1(spec->context);
        grammar_emit(p, "tokens(%d,%d)", spec->context, spec->vocab);
    } else {
        if (!isdigit((unsigned char)p->source[0]))
            return grammar_fail(
                p, start,
                "the model must start with its input: a width (784), an image shape "
                "(1x28x28), tokens(CONTEXT,VOCAB), a preset, or gpt(...)");
        int dims[3], rank = 0;
        do {
            if (rank == 3) return grammar_fail(p, start, "an input shape has at most 3 dimensions");
            DDT_CHECK(grammar_read_count(p, start, rank ? "an image dimension" : "the input width",
                                         1, MODEL_MAX_WIDTH, &dims[rank]));
            rank++;
        } while (grammar_accept(p, 'x'));
        if (rank == 2)
            return grammar_fail(p, start, "an input shape is a width (784) or C x H x W (1x28x28)");
        spec->input_shape =
            rank == 1 ? tensor_shape_1(dims[0]) : tensor_shape_3(dims[0], dims[1], dims[2]);
        int64_t values = tensor_shape_count(&spec->input_shape);
        if (values > MODEL_MAX_WIDTH) {
            char shape[64], count[32];
            tensor_shape_format(&spec->input_shape, shape, sizeof shape);
            return grammar_fail(p, start, "the input %s holds %s values per sample; at most %d",
                                shape, count_text(values, count, sizeof count), MODEL_MAX_WIDTH);
        }
        if (rank == 1)
            grammar_emit(p, "%d", dims[0]);
        else
            grammar_emit(p, "%dx%dx%d", dims[0], dims[1], dims[2]);
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
/* He initialisation suits weights whose layer feeds a rectifier (relu, gelu), also through
 * layers that leave it (dropout, bn): each kind says which it is. */
static void mark_rectifiers(model_spec *spec) {
    for (int n = 0; n < spec->node_count; n++) {
        const model_node *node = &spec->nodes[n];
        if (!layer_kind_of(node->kind)->fan_in_weight) continue;
        bool rectifier = false;
        for (int m = n + 1, from = n; m < spec->node_count; m++) {
            const model_node *next = &spec->nodes[m];
            if (next->input != from) break;
            const layer_kind *kind = layer_kind_of(next->kind);
            if (kind->init_transparent) {
                from = m;
                continue;
            }
            rectifier = kind->rectifies && kind->rectifies(next);
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

    grammar p = {.source = source,
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
        DDT_CHECK(gpt_parse_model(&p));
    } else {
        DDT_CHECK(parse_input(&p));
        int index = 0;
        if (grammar_accept(&p, '-')) {
            grammar_emit(&p, "-");
            DDT_CHECK(grammar_parse_sequence(&p, "", &index, '\0'));
        }
    }
    if (source[p.pos] != '\0')
        return grammar_fail(&p, p.pos,
                            source[p.pos] == ')' ? "an unmatched ')'" : "unexpected text");
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
