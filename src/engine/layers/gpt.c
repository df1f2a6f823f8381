/* gpt.c - gpt(layers=L,heads=H,width=D,context=T,vocab=V[,dropout=P]): the whole GPT-2
 * decoder, written alone as the model, with nanoGPT's names. It is no node of its own: it
 * expands into the nodes of embed, ln, attn, dense, gelu_tanh, dropout, residual sums and
 * lmhead, through their builders (layer_kind.h), each block marked for recompute. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/layers/layer_kind.h"

typedef struct gpt_shape {
    int layers, heads, width, context, vocab;
    float dropout;
} gpt_shape;

/* gpt(key=value,...) after "gpt(": every setting but dropout once, none twice. */
static ddt_status parse_gpt_arguments(grammar *g, size_t start, gpt_shape *model) {
    memset(model, 0, sizeof *model);
    struct {
        const char *key;
        int *value;
        long minimum, maximum;
    } keys[] = {{"layers", &model->layers, 1, 64},
                {"heads", &model->heads, 1, 256},
                {"width", &model->width, 1, 65536},
                {"context", &model->context, 1, 65536},
                {"vocab", &model->vocab, 1, MODEL_MAX_VOCAB}};
    enum { KEY_COUNT = sizeof keys / sizeof keys[0] };
    bool given[KEY_COUNT + 1] = {false}; /* the last: dropout */
    do {
        char key[16];
        size_t length = grammar_read_word(g, key, sizeof key);
        size_t k = 0;
        for (; k < KEY_COUNT; k++)
            if (strcmp(key, keys[k].key) == 0) break;
        if (k == KEY_COUNT && strcmp(key, "dropout") != 0)
            return grammar_fail(g, start,
                                "gpt(...) has no setting '%.*s%s' (layers, heads, width, "
                                "context, vocab, dropout)",
                                (int)(length < 15 ? length : 15), g->source + g->pos - length,
                                length > 15 ? "..." : "");
        if (given[k]) return grammar_fail(g, start, "gpt(...) gives %s twice", key);
        given[k] = true;
        DDT_CHECK(grammar_expect(g, '=', start, "after a gpt(...) setting"));
        if (k == KEY_COUNT)
            DDT_CHECK(grammar_read_rate(g, start, &model->dropout));
        else
            DDT_CHECK(grammar_read_count(g, start, keys[k].key, keys[k].minimum, keys[k].maximum,
                                         keys[k].value));
    } while (grammar_accept(g, ','));
    DDT_CHECK(grammar_expect(g, ')', start, "to close gpt("));
    for (size_t k = 0; k < KEY_COUNT; k++)
        if (!given[k])
            return grammar_fail(g, start,
                                "gpt(...) needs %s=N (layers, heads, width, context, vocab)",
                                keys[k].key);
    if (model->context < MODEL_MIN_ATTENTION_CONTEXT)
        return grammar_fail(g, start, "gpt(...): context=%d is too short: %s", model->context,
                            ATTENTION_CONTEXT_REASON);
    if (model->vocab < MODEL_MIN_VOCAB)
        return grammar_fail(g, start, "gpt(...): vocab=%d is too small: %s", model->vocab,
                            VOCAB_REASON);
    return DDT_OK;
}

/* The whole GPT-2 decoder, with nanoGPT's names. */
static ddt_status build_gpt(grammar *g, size_t start, const gpt_shape *model) {
    if (g->spec->input_kind != MODEL_INPUT_FEATURES || g->current >= 0 || g->spec->node_count)
        return grammar_fail(g, start, "gpt(...) is a whole model: write it alone");
    g->spec->input_kind = MODEL_INPUT_TOKENS;
    g->spec->context = model->context;
    g->spec->vocab = model->vocab;
    g->spec->input_shape = tensor_shape_1(model->context);
    g->shape = tensor_shape_1(model->context);
    DDT_CHECK(
        embed_build(g, start, "transformer.wte.weight", "transformer.wpe.weight", model->width));
    if (model->dropout > 0) DDT_CHECK(dropout_build(g, start, model->dropout));
    float projection_std = 0.02f / sqrtf(2.0f * (float)model->layers);
    for (int l = 0; l < model->layers; l++) {
        char prefix[MODEL_TENSOR_MAX_NAME], name[MODEL_TENSOR_MAX_NAME];
        snprintf(prefix, sizeof prefix, "transformer.h.%d.", l);
        g->block = l;
        int view, end;
        DDT_CHECK(residual_build_view(g, start, &view));
        DDT_CHECK(grammar_join(g, start, name, prefix, "ln_1."));
        DDT_CHECK(layernorm_build(g, start, name));
        DDT_CHECK(grammar_join(g, start, name, prefix, "attn."));
        DDT_CHECK(attention_build(g, start, name, model->heads, projection_std));
        if (model->dropout > 0) DDT_CHECK(dropout_build(g, start, model->dropout));
        end = g->current;
        DDT_CHECK(residual_build_add(g, start, end, view));
        DDT_CHECK(residual_build_view(g, start, &view));
        DDT_CHECK(grammar_join(g, start, name, prefix, "ln_2."));
        DDT_CHECK(layernorm_build(g, start, name));
        DDT_CHECK(grammar_join(g, start, name, prefix, "mlp.c_fc."));
        DDT_CHECK(dense_build(g, start, name, 4 * model->width, 0.02f));
        DDT_CHECK(activation_build(g, start, ACTIVATION_GELU_TANH));
        DDT_CHECK(grammar_join(g, start, name, prefix, "mlp.c_proj."));
        DDT_CHECK(dense_build(g, start, name, model->width, projection_std));
        if (model->dropout > 0) DDT_CHECK(dropout_build(g, start, model->dropout));
        end = g->current;
        DDT_CHECK(residual_build_add(g, start, end, view));
    }
    g->block = -1;
    g->spec->block_count = model->layers;
    DDT_CHECK(layernorm_build(g, start, "transformer.ln_f."));
    DDT_CHECK(lm_head_build(g, start));
    grammar_emit(g, "gpt(layers=%d,heads=%d,width=%d,context=%d,vocab=%d", model->layers,
                 model->heads, model->width, model->context, model->vocab);
    if (model->dropout > 0) grammar_emit(g, ",dropout=%g", (double)model->dropout);
    grammar_emit(g, ")");
    return DDT_OK;
}

ddt_status gpt_parse_model(grammar *g) {
    gpt_shape model;
    DDT_CHECK(parse_gpt_arguments(g, 0, &model));
    if (model.width % model.heads != 0)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: gpt(...): width %d does not split into %d "
                         "heads",
                         model.width, model.heads);
    return build_gpt(g, 0, &model);
}

/* Among the layers of a sequence, gpt(...) is refused: it is a whole model. */
static ddt_status parse_in_sequence(grammar *g, const layer_word *word, size_t start,
                                    const char *prefix) {
    (void)word;
    (void)prefix;
    return grammar_fail(g, start, "gpt(...) is a whole model: write it alone");
}

const layer_word layer_gpt_word = {.word = "gpt", .call = true, .parse = parse_in_sequence};
