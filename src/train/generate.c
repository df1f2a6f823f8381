/* generate.c - sampling from token models (see generate.h). */
#include "train/generate.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/model_file.h"
#include "util/failpoint.h"
#include "util/rng.h"

size_t generator_device_bytes(const model_spec *spec) {
    return allocator_rounded_size((size_t)spec->context * sizeof(int32_t));
}

ddt_status generator_init(generator *g, model *m, allocator *alloc) {
    memset(g, 0, sizeof *g);
    const model_spec *spec = model_get_spec(m);
    if (spec->input_kind != MODEL_INPUT_TOKENS)
        return ddt_error(DDT_ERR_USAGE, "generating text needs a token model (gpt(...) or one "
                                        "starting with tokens(CONTEXT,VOCAB)), not '%s'",
                         spec->text);
    g->m = m;
    g->dev = allocator_device(alloc);
    g->logits = malloc((size_t)spec->vocab * sizeof *g->logits);
    g->order = malloc((size_t)spec->vocab * sizeof *g->order);
    if (!g->logits || !g->order) {
        generator_free(g);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory for generation");
    }
    ddt_status status = allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE,
                                        (size_t)spec->context * sizeof(int32_t),
                                        (void **)&g->window);
    if (status != DDT_OK) generator_free(g);
    return status;
}

void generator_free(generator *g) {
    free(g->logits);
    free(g->order);
    g->logits = NULL;
    g->order = NULL;
}

static const float *sort_logits;

/* Descending logits; ties by index, so the order is the same everywhere. */
static int by_logit(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_logits[i] != sort_logits[j]) return sort_logits[i] > sort_logits[j] ? -1 : 1;
    return i < j ? -1 : 1;
}

/* One token from the logits. */
static int32_t sample(generator *g, int vocab, const sampling *s, uint64_t index) {
    float *logits = g->logits;
    int32_t best = 0;
    for (int v = 1; v < vocab; v++)
        if (logits[v] > logits[best]) best = v;
    if (s->temperature <= 0) return best;
    int keep = s->top_k > 0 && s->top_k < vocab ? s->top_k : vocab;
    for (int v = 0; v < vocab; v++)
        g->order[v] = v;
    if (keep < vocab) {
        sort_logits = logits;
        qsort(g->order, (size_t)vocab, sizeof *g->order, by_logit);
    }
    double total = 0;
    float top = logits[best];
    for (int k = 0; k < keep; k++) {
        int32_t v = g->order[k];
        total += exp(((double)logits[v] - top) / s->temperature);
    }
    double target = rng_uniform(rng_hash4(s->seed, RNG_PURPOSE_SAMPLE, index, 0)) * total;
    double running = 0;
    for (int k = 0; k < keep; k++) {
        int32_t v = g->order[k];
        running += exp(((double)logits[v] - top) / s->temperature);
        if (running >= target) return v;
    }
    return g->order[keep - 1];
}

static void print_token(FILE *out, int vocab, int32_t id) {
    if (!out) return;
    if (vocab == 256)
        fputc((unsigned char)id, out);
    else
        fprintf(out, " %d", id);
    fflush(out);
}

ddt_status generator_run(generator *g, const int32_t *prompt, int prompt_length, int count,
                         const sampling *s, FILE *out, int32_t *produced) {
    const model_spec *spec = model_get_spec(g->m);
    int context = spec->context, vocab = spec->vocab;
    if (prompt_length < 1)
        return ddt_error(DDT_ERR_USAGE, "the prompt is empty: give at least one token");
    int total = prompt_length + count;
    int32_t *ids = calloc((size_t)total, sizeof *ids);
    int32_t *window = calloc((size_t)context, sizeof *window);
    if (!ids || !window) {
        free(ids);
        free(window);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory for %d tokens", total);
    }
    memcpy(ids, prompt, (size_t)prompt_length * sizeof *ids);
    ddt_status status = DDT_OK;
    model_pass pass = {.training = false};
    for (int n = prompt_length; n < total && status == DDT_OK; n++) {
        int length = n < context ? n : context; /* the last `context` tokens */
        memset(window, 0, (size_t)context * sizeof *window);
        memcpy(window, ids + n - length, (size_t)length * sizeof *window);
        status = device_copy_host_to_device(g->dev, g->window, window,
                                            (size_t)context * sizeof *window);
        const float *logits = NULL;
        if (status == DDT_OK)
            status = model_forward(g->m, (model_input){.tokens = g->window}, 1, &pass, &logits);
        /* causal: the positions after the window's end do not reach its last position */
        if (status == DDT_OK)
            status = device_copy_device_to_host(g->dev, g->logits,
                                                logits + (size_t)(length - 1) * (size_t)vocab,
                                                (size_t)vocab * sizeof(float));
        if (status != DDT_OK) break;
        ids[n] = sample(g, vocab, s, (uint64_t)(n - prompt_length));
        if (produced) produced[n - prompt_length] = ids[n];
        print_token(out, vocab, ids[n]);
    }
    free(ids);
    free(window);
    return status;
}

/* The ids of a prompt for a model without a text tokenizer: decimal ids, each separated from
 * the next by one comma or by spaces (spaces may surround the comma). Refused, naming the
 * place: an empty id (a comma at the start or end, or two in a row), a sign, anything but
 * digits, an id at or beyond the vocabulary (however many digits it has). */
static ddt_status parse_token_ids(int vocab, const char *text, int32_t *out, int *count) {
    static const char rule[] = "token ids are whole numbers from 0 to %d, separated by one comma "
                               "or by spaces (the model's vocabulary has %d tokens and no text "
                               "tokenizer)";
    char why[160];
    snprintf(why, sizeof why, rule, vocab - 1, vocab);
    const char *p = text;
    bool after_comma = false;
    int n = 0;
    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        long offset = (long)(p - text) + 1; /* counted from 1, for people */
        if (!*p) {
            if (after_comma)
                return ddt_error(DDT_ERR_USAGE,
                                 "--prompt '%s': a comma at the end, with no id after it: %s",
                                 text, why);
            break;
        }
        if (*p == ',')
            return ddt_error(
                DDT_ERR_USAGE,
                "--prompt '%s': an empty id at character %ld (%s): %s",
                text, offset,
                n == 0 && !after_comma ? "a comma at the start" : "two commas in a row", why);
        if ((*p == '-' || *p == '+') && isdigit((unsigned char)p[1]))
            return ddt_error(DDT_ERR_USAGE,
                             "--prompt '%s': '%.20s' at character %ld has a sign: %s",
                             text, p, offset, why);
        if (!isdigit((unsigned char)*p))
            return ddt_error(DDT_ERR_USAGE,
                             "--prompt '%s': '%.20s' at character %ld is not a token id: %s",
                             text, p, offset, why);
        const char *start = p;
        int64_t id = 0;
        for (; isdigit((unsigned char)*p); p++)
            if (id <= vocab) id = id * 10 + (*p - '0'); /* past the vocabulary: stays past it */
        if (id >= vocab)
            return ddt_error(DDT_ERR_USAGE,
                             "--prompt '%s': id %.*s at character %ld is not below the "
                             "vocabulary of %d: give token ids below %d (%s)",
                             text, (int)(p - start > 24 ? 24 : p - start), start, offset, vocab,
                             vocab, why);
        out[n++] = (int32_t)id;
        while (isspace((unsigned char)*p))
            p++;
        after_comma = *p == ',';
        if (after_comma)
            p++;
        else if (*p && !isdigit((unsigned char)*p) && *p != '-' && *p != '+')
            return ddt_error(DDT_ERR_USAGE,
                             "--prompt '%s': '%.20s' at character %ld is not a token id: %s",
                             text, p, (long)(p - text) + 1, why);
    }
    *count = n;
    return DDT_OK;
}

ddt_status generate_parse_prompt(const model_spec *spec, const char *text, int32_t **ids,
                                 int *count) {
    *ids = NULL;
    *count = 0;
    size_t length = strlen(text);
    int32_t *out = malloc((length ? length : 1) * sizeof *out);
    if (!out) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the prompt");
    int n = 0;
    if (spec->vocab == 256) {
        for (size_t i = 0; i < length; i++)
            out[n++] = (unsigned char)text[i];
    } else {
        ddt_status status = parse_token_ids(spec->vocab, text, out, &n);
        if (status != DDT_OK) {
            free(out);
            return status;
        }
    }
    if (n == 0) {
        free(out);
        return ddt_error(DDT_ERR_USAGE, "--prompt is empty: give at least one token");
    }
    *ids = out;
    *count = n;
    return DDT_OK;
}

/* ---- ddtrain generate ---------------------------------------------------------------------- */

/* Everything `ddtrain generate` sets up on a rank, freed in reverse by generate_free(). */
typedef struct generate_state {
    model_spec *spec;
    device *dev;
    allocator *alloc;
    model *m;
    int32_t *prompt;
    int prompt_length;
    generator g;
} generate_state;

static void generate_free(generate_state *s) {
    generator_free(&s->g);
    free(s->prompt);
    model_free(s->m);
    allocator_close(s->alloc);
    if (s->dev) device_close(s->dev);
    free(s->spec);
}

/* This rank's set-up: the spec first (nothing allocated for what a file only claims), the
 * prompt against it, then the device, the model within the device's memory, its state. */
static ddt_status generate_setup(comm *control, const generate_config *cfg, generate_state *s) {
    if (!cfg->model_file) return ddt_error(DDT_ERR_USAGE, "ddtrain generate needs --model-file");
    if (!cfg->prompt) return ddt_error(DDT_ERR_USAGE, "ddtrain generate needs --prompt");
    s->spec = malloc(sizeof *s->spec);
    if (!s->spec) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the model's spec");
    DDT_CHECK(model_file_read_spec(cfg->model_file, s->spec));
    if (s->spec->input_kind != MODEL_INPUT_TOKENS)
        return ddt_error(DDT_ERR_USAGE,
                         "%s holds '%s', which does not take tokens: generate "
                         "needs a token model",
                         cfg->model_file, s->spec->text);
    DDT_CHECK(generate_parse_prompt(s->spec, cfg->prompt, &s->prompt, &s->prompt_length));
    device_kind kind = DEVICE_KIND_CPU;
    int ordinal = 0;
    DDT_CHECK(device_choose(cfg->device, comm_local_rank(control), &kind, &ordinal));
    DDT_CHECK(device_open(kind, ordinal, &s->dev));
    DDT_CHECK(model_check_device(s->spec, s->dev));
    size_t total = 0, free_bytes = 0;
    DDT_CHECK(device_memory_info(s->dev, &total, &free_bytes));
    allocator_params ap = allocator_default_params();
    ap.limit_bytes = total;
    ap.rank = comm_rank(control);
    ap.limit_source = "the device's memory";
    DDT_CHECK(allocator_open_with_params(s->dev, &ap, &s->alloc));
    DDT_CHECK(device_set_precision(s->dev, PRECISION_FP32, s->alloc,
                                   model_spec_max_gemm_operand_floats(s->spec, 1)));
    DDT_CHECK(model_init(s->spec, s->alloc, 1, (model_options){0}, &s->m));
    float *state = malloc(model_spec_state_count(s->spec) * sizeof *state + sizeof *state);
    if (!state) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the model");
    ddt_status status = model_file_read_parameters(cfg->model_file, s->spec, state);
    if (status == DDT_OK) status = model_set_state(s->m, state);
    free(state);
    DDT_CHECK(status);
    return generator_init(&s->g, s->m, s->alloc);
}

/* Every rank generates the same tokens (the sampling is keyed by the seed alone); rank 0
 * prints the prompt and what follows. */
static ddt_status generate_tokens(comm *control, const generate_config *cfg, generate_state *s) {
    FILE *out = comm_rank(control) == 0 ? cfg->out : NULL;
    if (out) {
        if (s->spec->vocab == 256)
            fwrite(cfg->prompt, 1, strlen(cfg->prompt), out);
        else
            for (int i = 0; i < s->prompt_length; i++)
                fprintf(out, i ? " %d" : "%d", s->prompt[i]);
    }
    ddt_status status =
        generator_run(&s->g, s->prompt, s->prompt_length, cfg->tokens, &cfg->sampling, out, NULL);
    if (out) {
        fprintf(out, "\n");
        fflush(out);
    }
    return status;
}

ddt_status generate_run(comm *control, const generate_config *cfg) {
    generate_state s;
    memset(&s, 0, sizeof s);
    ddt_status status = comm_agree(control, generate_setup(control, cfg, &s), "set-up");
    if (status == DDT_OK) {
        failpoint_stall("generate", comm_rank(control));
        status = comm_agree(control, generate_tokens(control, cfg, &s), "generating");
    }
    generate_free(&s);
    return status;
}
