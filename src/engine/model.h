/* model.h - running a model (model_spec.h): its memory, initialisation, and the forward and
 * backward passes, built from the device operations (device.h), so every layer runs on every
 * backend.
 *
 * Memory: parameters, gradients, non-trainable buffers and activations are each one
 * allocation made in model_init() and never again. The activation allocation holds each
 * node's output for max_rows samples and what its backward needs (normalisation statistics,
 * attention's probabilities), one workspace shared by all nodes (convolution's unfolded
 * windows, attention's scores), a few gradient buffers that carry gradients backwards (how
 * many is decided once, by planning the backward pass), and the output gradient the loss
 * writes. model_plan() gives the same numbers without allocating, for memory plans.
 *
 * Recompute (activation checkpointing): with `recompute`, the nodes inside each gpt(...)
 * block share one block's storage; backward runs the block's forward again before its
 * backward. Results are bitwise those without it.
 *
 * Backward runs last node first, so the finished part of the gradient buffer grows from the
 * end towards the start; model_backward() reports it through a callback so gradient buckets
 * can be all-reduced while earlier layers still compute.
 *
 * Ownership: model_init() allocates through `alloc`; model_free() releases it. The model does
 * not own the allocator and copies the spec. Nothing is allocated by forward or backward.
 *
 * Usage:
 *     model_spec *spec = malloc(sizeof *spec);
 *     DDT_CHECK(model_spec_parse("784-256-relu-10", spec));
 *     model *m;
 *     DDT_CHECK(model_init(spec, alloc, micro_batch, (model_options){0}, &m));
 *     DDT_CHECK(model_init_parameters(m, seed));
 *     model_zero_gradients(m);
 *     const float *logits;
 *     DDT_CHECK(model_forward(m, (model_input){.features = x}, rows, &pass, &logits));
 *     ... the loss writes dlogits into model_output_gradient(m) ...
 *     DDT_CHECK(model_backward(m, rows, &pass, on_ready, ctx));
 */
#ifndef DDT_ENGINE_MODEL_H
#define DDT_ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/model_spec.h"
#include "util/status.h"

typedef struct model model;

typedef struct model_options {
    bool recompute; /* share gpt(...) blocks' activation storage; recompute in backward */
} model_options;

/* What model_init() will take, in floats, for `rows` samples. */
typedef struct model_plan {
    size_t activation_floats; /* the ACTIVATIONS allocation, all of it */
    size_t stored_floats;     /* of which node outputs and what backward needs */
    size_t workspace_floats;  /* of which the shared workspace */
    size_t gradient_floats;   /* of which the gradient buffers and the output gradient */
    int gradient_buffers;
    size_t max_gemm_operand_floats; /* the largest operand of any product (cast scratch) */
} model_plan;

/* Sizes too large to count are SIZE_MAX: a plan no limit admits, never a wrapped size. */
model_plan model_plan_for(const model_spec *spec, int rows, model_options options);
/* The most samples one pass can hold: the layers hand BLAS and the backends rows x positions
 * as an int. model_init refuses more; the trainer says so naming --micro-batch. */
int model_spec_max_rows(const model_spec *spec);
/* The ACTIVATIONS allocation's floats (model_plan_for().activation_floats). */
size_t model_spec_activation_floats(const model_spec *spec, int rows, model_options options);
/* The largest matrix any product of a pass over `rows` samples reads or writes, in floats
 * (batched products count all their matrices); sizes backends' operand-cast scratch. */
size_t model_spec_max_gemm_operand_floats(const model_spec *spec, int rows);

/* The model's input for one pass: fp32 features (rows x input_width) or int32 token ids
 * (rows x context), device pointers; they must stay valid until backward has run. */
typedef struct model_input {
    const float *features;
    const int32_t *tokens;
} model_input;

/* What a forward/backward pass needs besides the inputs. row_ids (device int64, one per row)
 * are the global dataset rows, used to key dropout; they may be NULL when training is false.
 * A dropout node's dropout_key is {seed, step, index of the node}; training also selects
 * batch normalisation's batch statistics (and updates its running statistics). */
typedef struct model_pass {
    bool training;
    int64_t step; /* global optimizer step, keys dropout */
    uint64_t seed;
    const int64_t *row_ids;
} model_pass;

/* Called by model_backward() each time a node's parameter gradients are final:
 * gradients[ready_from .. parameter_count) will not change again in this pass. */
typedef ddt_status (*model_gradient_ready_fn)(void *context, size_t ready_from);

/* DDT_ERR_USAGE, naming the layer and the operation, if the device lacks an operation the
 * model's passes call (a backend may leave operations out: device_supports_op()). Callers
 * check before they allocate anything for the model. */
ddt_status model_check_device(const model_spec *spec, const device *dev);
ddt_status model_init(const model_spec *spec, allocator *alloc, int max_rows,
                      model_options options, model **out);
void model_free(model *m);

/* Fresh parameters and buffers from `seed`. Each value is keyed by (seed, what it is, its
 * index), so it depends on nothing else:
 *   - weights marked TENSOR_INIT_FAN_IN (dense and conv), with k the node's parameter ordinal:
 *       He (the layer feeds relu/gelu, through dropout or bn):
 *         sqrt(2 / fan_in) * rng_normal(rng_hash4(seed, RNG_PURPOSE_INIT, k, 2e),
 *                                       rng_hash4(seed, RNG_PURPOSE_INIT, k, 2e + 1))
 *       Xavier: (2u - 1) * sqrt(6 / (fan_in + fan_out)), u = rng_uniform(rng_hash4(seed,
 *               RNG_PURPOSE_INIT, k, e))
 *     (for an MLP exactly what ddtrain has always done);
 *   - TENSOR_INIT_NORMAL (GPT's matrices and embeddings): init_std * rng_normal of the hashes
 *     with k = MODEL_INIT_NORMAL_KEY + the tensor's index;
 *   - biases and shifts 0, scales 1, running means 0, running variances 1. */
#define MODEL_INIT_NORMAL_KEY 1000000
ddt_status model_init_parameters(model *m, uint64_t seed);

const model_spec *model_get_spec(const model *m);
size_t model_parameter_count(const model *m);
float *model_parameters(model *m); /* device pointer */
float *model_gradients(model *m);  /* device pointer */
/* Non-trainable state (running statistics), model_spec.buffer_count floats; NULL if none. */
float *model_buffers(model *m);
size_t model_buffer_count(const model *m);
/* The whole state (parameters, then buffers: model_spec_state_count() floats) from or to a
 * host buffer. */
ddt_status model_set_state(model *m, const float *host_state);
ddt_status model_get_state(model *m, float *host_state);
int model_max_rows(const model *m);

void model_zero_gradients(model *m);

/* Runs the nodes on `rows` samples (rows <= max_rows) and sets *logits to the device logits
 * (rows * positions x output_width), valid until the next forward. */
ddt_status model_forward(model *m, model_input input, int rows, const model_pass *pass,
                         const float **logits);

/* Device buffer (max_rows * positions x output_width) where the loss writes d loss / d logits. */
float *model_output_gradient(model *m);

/* Back-propagates model_output_gradient() through the last forward pass (which must have had
 * training set), adding (not overwriting) into the gradient buffer. on_ready may be NULL. */
ddt_status model_backward(model *m, int rows, const model_pass *pass,
                          model_gradient_ready_fn on_ready, void *context);

#endif
