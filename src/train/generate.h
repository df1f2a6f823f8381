/* generate.h - sampling text from a token model (gpt(...), or any model ending in lmhead):
 * `ddtrain generate`, and the sample rank 0 prints at each evaluation during training.
 *
 * Each new token: the last `context` tokens so far (fewer at the start) go in at positions
 * 0.., the logits at the last of them are divided by the temperature, cut to the top k, and
 * one token is drawn with a random number keyed by (seed, RNG_PURPOSE_SAMPLE, its index), so
 * the same seed gives the same text on any machine. Temperature 0 takes the most likely.
 * Byte-level models (vocabulary 256) read the prompt as bytes and print bytes; others take
 * and print token ids.
 *
 * Usage:
 *     generator g;
 *     DDT_CHECK(generator_init(&g, m, alloc));      // device buffers from the allocator
 *     sampling s = {.temperature = 0.8f, .top_k = 40, .seed = 1};
 *     DDT_CHECK(generator_run(&g, prompt_ids, prompt_length, 200, &s, stdout));
 */
#ifndef DDT_TRAIN_GENERATE_H
#define DDT_TRAIN_GENERATE_H

#include <stdint.h>
#include <stdio.h>

#include "comm/comm.h"
#include "engine/alloc.h"
#include "engine/model.h"
#include "util/status.h"

typedef struct sampling {
    float temperature; /* 0: the most likely token */
    int top_k;         /* 0: the whole vocabulary */
    uint64_t seed;
} sampling;

/* A model's generation state: its device window of ids (context int32), host scratch. */
typedef struct generator {
    model *m;
    device *dev;
    int32_t *window; /* device, context ids (from the allocator: counted by memory plans) */
    float *logits;   /* host, vocabulary floats */
    int32_t *order;  /* host, vocabulary indices (top-k) */
} generator;

/* Device bytes generator_init() takes from the allocator (for memory plans). */
size_t generator_device_bytes(const model_spec *spec);
ddt_status generator_init(generator *g, model *m, allocator *alloc);
/* Appends `count` tokens to the prompt (prompt_length >= 1 ids, each < vocabulary), printing
 * each as it comes (a byte, or " id") to `out` (may be NULL); the generated ids go to
 * `produced` (may be NULL). Runs forward passes on the model's device (evaluation mode); the
 * model's activations are overwritten. */
ddt_status generator_run(generator *g, const int32_t *prompt, int prompt_length, int count,
                         const sampling *s, FILE *out, int32_t *produced);
/* The allocator keeps the device window: free it with the allocator. */
void generator_free(generator *g);

/* Text to ids for a byte-level model (each byte its id); for other vocabularies the text must
 * be comma- or space-separated ids below the vocabulary. *ids is malloc'ed. */
ddt_status generate_parse_prompt(const model_spec *spec, const char *text, int32_t **ids,
                                 int *count);

/* ---- ddtrain generate ---------------------------------------------------------------------- */

typedef struct generate_config {
    const char *model_file;
    const char *prompt;
    int tokens;
    sampling sampling;
    device_request device;
    FILE *out;
} generate_config;

/* Collective over `control`: every rank loads the model and generates the same tokens (the
 * sampling is keyed by the seed alone), and rank 0 prints the prompt and what follows. No
 * rank waits on another's generation, only at the two agreements (after the set-up, at the
 * end), so the control communicator's timeout bounds a stall, not the length of the text. */
ddt_status generate_run(comm *control, const generate_config *config);

#endif
