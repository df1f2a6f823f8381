/* model.h - the MLP: its spec, parameter layout, and forward/backward passes.
 *
 * A model spec is text like "784-256-relu-128-relu-10": the first number is the input width,
 * each later number a dense layer of that many outputs, and the words elementwise layers:
 * relu, gelu, tanh, sigmoid, dropout (rate 0.5) or dropout0.2 (rate 0.2).
 *
 * Parameters, gradients and activations each live in one contiguous allocation. The
 * parameter layout is fixed by the spec alone: for each dense layer in forward order, its
 * weight (outputs x inputs, row-major, the layout of PyTorch's nn.Linear) then its bias.
 * Gradients use the same layout. Backward runs last layer first, so the finished part of the
 * gradient buffer grows from the end towards the start; model_backward() reports it through a
 * callback so gradient buckets can be all-reduced while earlier layers still compute.
 *
 * Ownership: model_init() allocates through `alloc`; model_free() releases it. The model does
 * not own the allocator. Nothing is allocated by forward or backward.
 *
 * Usage:
 *     model_spec spec;
 *     DDT_CHECK(model_spec_parse("784-256-relu-10", &spec));
 *     model *m;
 *     DDT_CHECK(model_init(&spec, alloc, micro_batch, &m));
 *     DDT_CHECK(model_init_parameters(m, seed));
 *     model_zero_gradients(m);
 *     const float *logits;
 *     DDT_CHECK(model_forward(m, x, rows, &pass, &logits));
 *     ... loss writes dlogits into model_output_gradient(m) ...
 *     DDT_CHECK(model_backward(m, rows, &pass, on_ready, ctx));
 */
#ifndef DDT_ENGINE_MODEL_H
#define DDT_ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/alloc.h"
#include "engine/device.h"
#include "util/status.h"

#define MODEL_MAX_LAYERS 64
#define MODEL_SPEC_MAX_TEXT 512

typedef enum layer_kind {
    LAYER_DENSE,
    LAYER_ACTIVATION,
    LAYER_DROPOUT,
} layer_kind;

typedef struct layer_spec {
    layer_kind kind;
    activation_kind activation; /* LAYER_ACTIVATION only */
    float dropout_rate;         /* LAYER_DROPOUT only, in [0, 1) */
    int inputs;                 /* width in */
    int outputs;                /* width out (== inputs except for dense) */
} layer_spec;

typedef struct model_spec {
    int layer_count;
    layer_spec layers[MODEL_MAX_LAYERS];
    int input_width;
    int output_width;
    int dense_count;
    char text[MODEL_SPEC_MAX_TEXT]; /* canonical text, e.g. "784-256-relu-10" */
} model_spec;

/* Where dense layer `dense_index` (counted from 0 over dense layers only) lives in the
 * parameter buffer. */
typedef struct dense_layout {
    int inputs;
    int outputs;
    size_t weight_offset; /* in floats */
    size_t bias_offset;   /* in floats */
} dense_layout;

/* Parses spec text; DDT_ERR_USAGE with a message naming the bad token on failure. Needs at
 * least an input width and one dense layer; must end with a dense layer or an activation. */
ddt_status model_spec_parse(const char *text, model_spec *out);
size_t model_spec_parameter_count(const model_spec *spec);
dense_layout model_spec_dense_layout(const model_spec *spec, int dense_index);
/* Floats of activation storage model_init() allocates for `rows` rows (for memory plans). */
size_t model_spec_activation_floats(const model_spec *spec, int rows);
/* The largest matrix any GEMM of a forward/backward pass over `rows` rows reads (weights,
 * layer inputs, output gradients), in floats; sizes backends' operand-cast scratch. */
size_t model_spec_max_gemm_operand_floats(const model_spec *spec, int rows);

typedef struct model model;

/* What a forward/backward pass needs besides the inputs. row_ids (device int64, one per row)
 * are the global dataset rows, used to key dropout; they may be NULL when training is false.
 * A dropout layer's dropout_key is {seed, step, index of the layer in spec.layers}. */
typedef struct model_pass {
    bool training; /* dropout active */
    int64_t step;  /* global optimizer step, keys dropout */
    uint64_t seed;
    const int64_t *row_ids;
} model_pass;

/* Called by model_backward() each time a dense layer's weight and bias gradients are final:
 * gradients[ready_from .. parameter_count) will not change again in this pass. */
typedef ddt_status (*model_gradient_ready_fn)(void *context, size_t ready_from);

ddt_status model_init(const model_spec *spec, allocator *alloc, int max_rows, model **out);
void model_free(model *m);

/* He-normal init (std sqrt(2/fan_in)) for dense layers followed by relu or gelu, Xavier-
 * uniform otherwise; biases zero. Each value keyed by (seed, RNG_PURPOSE_INIT, layer, index),
 * so it does not depend on anything else. Exactly, for weight element e of dense layer d
 * (d counts dense layers from 0; a dropout between the layer and its activation is skipped
 * when choosing He):
 *     He:     sqrt(2 / inputs) * rng_normal(rng_hash4(seed, RNG_PURPOSE_INIT, d, 2 * e),
 *                                           rng_hash4(seed, RNG_PURPOSE_INIT, d, 2 * e + 1))
 *     Xavier: (2u - 1) * sqrt(6 / (inputs + outputs)),
 *             u = rng_uniform(rng_hash4(seed, RNG_PURPOSE_INIT, d, e)) */
ddt_status model_init_parameters(model *m, uint64_t seed);

const model_spec *model_get_spec(const model *m);
size_t model_parameter_count(const model *m);
float *model_parameters(model *m); /* device pointer */
float *model_gradients(model *m);  /* device pointer */
int model_max_rows(const model *m);

void model_zero_gradients(model *m);

/* Runs the layers on inputs (device, rows x input_width, rows <= max_rows) and sets *outputs
 * to the device logits (rows x output_width), valid until the next forward. */
ddt_status model_forward(model *m, const float *inputs, int rows, const model_pass *pass,
                         const float **outputs);

/* Device buffer (max_rows x output_width) where the loss writes d loss / d logits. */
float *model_output_gradient(model *m);

/* Back-propagates model_output_gradient() through the last forward pass, adding (not
 * overwriting) into the gradient buffer. on_ready may be NULL. */
ddt_status model_backward(model *m, int rows, const model_pass *pass,
                          model_gradient_ready_fn on_ready, void *context);

#endif
