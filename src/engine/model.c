/* model.c - the MLP behind model.h: spec parsing, parameter layout, initialisation, and the
 * forward and backward passes expressed as device operations.
 *
 * Memory: three allocations made once in model_init() (parameters, gradients, activations).
 * The activation allocation holds, each padded to 64 bytes, every layer's output for max_rows
 * rows, the output-gradient buffer the loss writes, and two ping-pong buffers that carry the
 * gradient backwards from layer to layer; forward and backward only point into it.
 */
#include "engine/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/rng.h"

/* Wider layers than this are surely a typo, and keep rows * width products far from overflow. */
#define MODEL_MAX_WIDTH (1 << 24)
/* Each activation sub-buffer starts on a 64-byte boundary (16 floats) for vector loads. */
#define ACTIVATION_ALIGN_FLOATS 16

static const char LAYER_WORDS_HELP[] =
    "expected a width or one of relu, gelu, tanh, sigmoid, dropout, dropoutP";

struct model {
    model_spec spec;
    allocator *alloc;
    device *dev;
    int max_rows;
    size_t parameter_count;
    float *parameters;
    float *gradients;
    float *activations; /* the one ACTIVATIONS allocation; everything below points into it */
    float *layer_storage[MODEL_MAX_LAYERS];
    float *output_gradient;
    float *backward_buffers[2];
    dense_layout dense_of_layer[MODEL_MAX_LAYERS]; /* valid for dense layers */
    int first_dense_layer;
    /* What the last forward pass used and produced; an identity dropout aliases its input. */
    int forward_rows; /* -1 until the first forward */
    const float *forward_inputs[MODEL_MAX_LAYERS];
    const float *forward_outputs[MODEL_MAX_LAYERS];
};

/* --- spec -------------------------------------------------------------------------------- */

static const char *activation_word(activation_kind kind) {
    switch (kind) {
    case ACTIVATION_RELU:
        return "relu";
    case ACTIVATION_GELU:
        return "gelu";
    case ACTIVATION_TANH:
        return "tanh";
    case ACTIVATION_SIGMOID:
        return "sigmoid";
    case ACTIVATION_GELU_TANH:
        return "gelu_tanh";
    }
    return "?";
}

static bool all_digits(const char *token) {
    if (!*token) return false;
    for (const char *p = token; *p; p++)
        if (*p < '0' || *p > '9') return false;
    return true;
}

/* Parses one layer word (not a width) into `layer`; DDT_ERR_USAGE naming the token otherwise. */
static ddt_status parse_layer_word(const char *token, layer_spec *layer) {
    static const activation_kind activations[] = {ACTIVATION_RELU, ACTIVATION_GELU, ACTIVATION_TANH,
                                                  ACTIVATION_SIGMOID};
    for (size_t i = 0; i < sizeof activations / sizeof activations[0]; i++) {
        if (strcmp(token, activation_word(activations[i])) == 0) {
            layer->kind = LAYER_ACTIVATION;
            layer->activation = activations[i];
            return DDT_OK;
        }
    }
    const char *prefix = "dropout";
    size_t prefix_length = strlen(prefix);
    if (strncmp(token, prefix, prefix_length) == 0) {
        const char *rate_text = token + prefix_length;
        double rate = 0.5;
        if (*rate_text) {
            char *end = NULL;
            rate = strtod(rate_text, &end);
            bool numeric = end != rate_text && *end == '\0' &&
                           ((*rate_text >= '0' && *rate_text <= '9') || *rate_text == '.');
            if (!numeric)
                return ddt_error(DDT_ERR_USAGE, "--model: '%s' is not a layer (%s)", token,
                                 LAYER_WORDS_HELP);
            if (!(rate >= 0.0 && rate < 1.0))
                return ddt_error(DDT_ERR_USAGE,
                                 "--model: '%s': the dropout rate must be in [0, 1), got %s", token,
                                 rate_text);
        }
        layer->kind = LAYER_DROPOUT;
        layer->dropout_rate = (float)rate;
        return DDT_OK;
    }
    return ddt_error(DDT_ERR_USAGE, "--model: '%s' is not a layer (%s)", token, LAYER_WORDS_HELP);
}

static ddt_status parse_width(const char *token, int *width) {
    if (!all_digits(token)) return ddt_error(DDT_ERR_INTERNAL, "parse_width: not a number");
    /* Compare lengths first so 30-digit widths cannot overflow strtol. */
    long value = strlen(token) > 9 ? MODEL_MAX_WIDTH + 1L : strtol(token, NULL, 10);
    if (value <= 0)
        return ddt_error(DDT_ERR_USAGE, "--model: width '%s' must be at least 1", token);
    if (value > MODEL_MAX_WIDTH)
        return ddt_error(DDT_ERR_USAGE, "--model: width '%s' is too large (at most %d)", token,
                         MODEL_MAX_WIDTH);
    *width = (int)value;
    return DDT_OK;
}

/* Writes the canonical text; fails only if it does not fit in MODEL_SPEC_MAX_TEXT. */
static ddt_status spec_format_text(model_spec *spec) {
    char *text = spec->text;
    size_t size = sizeof spec->text, used = 0;
    int written = snprintf(text, size, "%d", spec->input_width);
    for (int i = 0; i < spec->layer_count && written >= 0 && (size_t)written < size - used; i++) {
        used += (size_t)written;
        const layer_spec *layer = &spec->layers[i];
        switch (layer->kind) {
        case LAYER_DENSE:
            written = snprintf(text + used, size - used, "-%d", layer->outputs);
            break;
        case LAYER_ACTIVATION:
            written = snprintf(text + used, size - used, "-%s", activation_word(layer->activation));
            break;
        case LAYER_DROPOUT:
            written = layer->dropout_rate == 0.5f ? snprintf(text + used, size - used, "-dropout")
                                                  : snprintf(text + used, size - used, "-dropout%g",
                                                             (double)layer->dropout_rate);
            break;
        }
    }
    if (written < 0 || (size_t)written >= size - used)
        return ddt_error(DDT_ERR_USAGE, "--model: the spec is too long (at most %d characters)",
                         MODEL_SPEC_MAX_TEXT - 1);
    return DDT_OK;
}

ddt_status model_spec_parse(const char *text, model_spec *out) {
    memset(out, 0, sizeof *out);
    if (!text || !*text)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: empty model spec (expected e.g. 784-256-relu-10)");
    char buffer[MODEL_SPEC_MAX_TEXT];
    if (strlen(text) >= sizeof buffer)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: the spec is too long (%zu characters, at most %d)", strlen(text),
                         MODEL_SPEC_MAX_TEXT - 1);
    strcpy(buffer, text);

    model_spec spec;
    memset(&spec, 0, sizeof spec);
    int width = 0;
    int token_index = 0;
    char *token = buffer;
    for (;;) {
        char *dash = strchr(token, '-');
        if (dash) *dash = '\0';
        if (!*token)
            return ddt_error(DDT_ERR_USAGE,
                             "--model: '%s' has an empty layer (a '-' at an end or two in a row)",
                             text);
        if (token_index == 0) {
            if (!all_digits(token))
                return ddt_error(DDT_ERR_USAGE,
                                 "--model: '%s' must start with the input width, not '%s'", text,
                                 token);
            DDT_CHECK(parse_width(token, &width));
            spec.input_width = width;
        } else {
            if (spec.layer_count == MODEL_MAX_LAYERS)
                return ddt_error(DDT_ERR_USAGE, "--model: too many layers (at most %d)",
                                 MODEL_MAX_LAYERS);
            layer_spec *layer = &spec.layers[spec.layer_count];
            if (all_digits(token)) {
                int outputs;
                DDT_CHECK(parse_width(token, &outputs));
                layer->kind = LAYER_DENSE;
                layer->inputs = width;
                layer->outputs = outputs;
                width = outputs;
                spec.dense_count++;
            } else {
                DDT_CHECK(parse_layer_word(token, layer));
                layer->inputs = width;
                layer->outputs = width;
            }
            spec.layer_count++;
        }
        token_index++;
        if (!dash) break;
        token = dash + 1;
    }
    if (spec.dense_count == 0)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: '%s' has no dense layer (add a width after the input width, "
                         "e.g. %d-10)",
                         text, spec.input_width);
    if (spec.layers[spec.layer_count - 1].kind == LAYER_DROPOUT)
        return ddt_error(DDT_ERR_USAGE,
                         "--model: '%s' ends with dropout; end with a dense layer or an activation",
                         text);
    spec.output_width = width;
    DDT_CHECK(spec_format_text(&spec));
    *out = spec;
    return DDT_OK;
}

size_t model_spec_parameter_count(const model_spec *spec) {
    size_t count = 0;
    for (int i = 0; i < spec->layer_count; i++) {
        const layer_spec *layer = &spec->layers[i];
        if (layer->kind == LAYER_DENSE)
            count += (size_t)layer->outputs * (size_t)layer->inputs + (size_t)layer->outputs;
    }
    return count;
}

dense_layout model_spec_dense_layout(const model_spec *spec, int dense_index) {
    dense_layout layout = {0};
    size_t offset = 0;
    int dense = 0;
    for (int i = 0; i < spec->layer_count; i++) {
        const layer_spec *layer = &spec->layers[i];
        if (layer->kind != LAYER_DENSE) continue;
        size_t weights = (size_t)layer->outputs * (size_t)layer->inputs;
        if (dense == dense_index) {
            layout.inputs = layer->inputs;
            layout.outputs = layer->outputs;
            layout.weight_offset = offset;
            layout.bias_offset = offset + weights;
            return layout;
        }
        offset += weights + (size_t)layer->outputs;
        dense++;
    }
    return layout;
}

static size_t align_floats(size_t floats) {
    return (floats + ACTIVATION_ALIGN_FLOATS - 1) / ACTIVATION_ALIGN_FLOATS *
           ACTIVATION_ALIGN_FLOATS;
}

/* The activation allocation's layout, shared by model_init() and the memory plan so the two
 * cannot disagree: layer outputs, then the output gradient, then two backward buffers. */
typedef struct activation_layout {
    size_t layer_offset[MODEL_MAX_LAYERS];
    size_t output_gradient_offset;
    size_t backward_offset[2];
    size_t total_floats;
} activation_layout;

static activation_layout plan_activations(const model_spec *spec, int rows) {
    activation_layout layout = {{0}, 0, {0, 0}, 0};
    size_t offset = 0, rows_count = rows > 0 ? (size_t)rows : 0;
    int max_width = 0;
    for (int i = 0; i < spec->layer_count; i++) {
        layout.layer_offset[i] = offset;
        offset += align_floats(rows_count * (size_t)spec->layers[i].outputs);
        if (spec->layers[i].outputs > max_width) max_width = spec->layers[i].outputs;
    }
    layout.output_gradient_offset = offset;
    offset += align_floats(rows_count * (size_t)spec->output_width);
    /* Gradients flowing backwards only ever have a layer's output width. */
    for (int b = 0; b < 2; b++) {
        layout.backward_offset[b] = offset;
        offset += align_floats(rows_count * (size_t)max_width);
    }
    layout.total_floats = offset;
    return layout;
}

size_t model_spec_activation_floats(const model_spec *spec, int rows) {
    return plan_activations(spec, rows).total_floats;
}

size_t model_spec_max_gemm_operand_floats(const model_spec *spec, int rows) {
    size_t largest = 0;
    for (int d = 0; d < spec->dense_count; d++) {
        dense_layout layout = model_spec_dense_layout(spec, d);
        size_t in = (size_t)layout.inputs, out = (size_t)layout.outputs, n = (size_t)rows;
        size_t sizes[3] = {in * out, n * in, n * out};
        for (int i = 0; i < 3; i++)
            if (sizes[i] > largest) largest = sizes[i];
    }
    return largest;
}

/* --- lifetime ---------------------------------------------------------------------------- */

ddt_status model_init(const model_spec *spec, allocator *alloc, int max_rows, model **out) {
    *out = NULL;
    if (max_rows <= 0)
        return ddt_error(DDT_ERR_USAGE, "the micro-batch must hold at least one row (got %d)",
                         max_rows);
    if (spec->layer_count <= 0 || spec->dense_count <= 0)
        return ddt_error(DDT_ERR_INTERNAL, "model_init: spec has no dense layer");
    model *m = calloc(1, sizeof *m);
    if (!m) return ddt_error(DDT_ERR_MEMORY, "out of host memory creating the model");
    m->spec = *spec;
    m->alloc = alloc;
    m->dev = allocator_device(alloc);
    m->max_rows = max_rows;
    m->forward_rows = -1;
    m->parameter_count = model_spec_parameter_count(spec);
    m->first_dense_layer = -1;
    int dense = 0;
    for (int i = 0; i < spec->layer_count; i++) {
        if (spec->layers[i].kind != LAYER_DENSE) continue;
        if (m->first_dense_layer < 0) m->first_dense_layer = i;
        m->dense_of_layer[i] = model_spec_dense_layout(spec, dense++);
    }

    ddt_status status;
    size_t parameter_bytes = m->parameter_count * sizeof(float);
    DDT_CHECK_GOTO(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, parameter_bytes,
                                   (void **)&m->parameters),
                   status, fail);
    DDT_CHECK_GOTO(
        allocator_alloc(alloc, MEMORY_COMPONENT_GRADIENTS, parameter_bytes, (void **)&m->gradients),
        status, fail);
    activation_layout layout = plan_activations(spec, max_rows);
    DDT_CHECK_GOTO(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS,
                                   layout.total_floats * sizeof(float), (void **)&m->activations),
                   status, fail);
    for (int i = 0; i < spec->layer_count; i++)
        m->layer_storage[i] = m->activations + layout.layer_offset[i];
    m->output_gradient = m->activations + layout.output_gradient_offset;
    for (int b = 0; b < 2; b++)
        m->backward_buffers[b] = m->activations + layout.backward_offset[b];
    *out = m;
    return DDT_OK;

fail:
    model_free(m);
    return status;
}

void model_free(model *m) {
    if (!m) return;
    allocator_free(m->alloc, m->activations);
    allocator_free(m->alloc, m->gradients);
    allocator_free(m->alloc, m->parameters);
    free(m);
}

/* He init suits layers whose output goes (through any dropout) into relu or gelu. */
static bool dense_feeds_rectifier(const model_spec *spec, int layer_index) {
    for (int i = layer_index + 1; i < spec->layer_count; i++) {
        const layer_spec *layer = &spec->layers[i];
        if (layer->kind == LAYER_DROPOUT) continue;
        return layer->kind == LAYER_ACTIVATION &&
               (layer->activation == ACTIVATION_RELU || layer->activation == ACTIVATION_GELU);
    }
    return false;
}

ddt_status model_init_parameters(model *m, uint64_t seed) {
    float *host = calloc(m->parameter_count ? m->parameter_count : 1, sizeof *host);
    if (!host)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory initialising %zu parameters",
                         m->parameter_count);
    int dense = 0;
    for (int i = 0; i < m->spec.layer_count; i++) {
        if (m->spec.layers[i].kind != LAYER_DENSE) continue;
        dense_layout layout = m->dense_of_layer[i];
        float *weights = host + layout.weight_offset;
        size_t count = (size_t)layout.outputs * (size_t)layout.inputs;
        if (dense_feeds_rectifier(&m->spec, i)) {
            double std = sqrt(2.0 / layout.inputs);
            for (size_t e = 0; e < count; e++)
                weights[e] = (float)(std * rng_normal(rng_hash4(seed, RNG_PURPOSE_INIT, dense,
                                                                2 * (uint64_t)e),
                                                      rng_hash4(seed, RNG_PURPOSE_INIT, dense,
                                                                2 * (uint64_t)e + 1)));
        } else {
            double limit = sqrt(6.0 / (layout.inputs + layout.outputs));
            for (size_t e = 0; e < count; e++) {
                double u = rng_uniform(rng_hash4(seed, RNG_PURPOSE_INIT, dense, e));
                weights[e] = (float)((2.0 * u - 1.0) * limit);
            }
        }
        /* Biases stay zero from calloc. */
        dense++;
    }
    ddt_status status = device_copy_host_to_device(m->dev, m->parameters, host,
                                                         m->parameter_count * sizeof(float));
    free(host);
    if (status != DDT_OK) ddt_error_trace(__FILE__, __LINE__);
    return status;
}

const model_spec *model_get_spec(const model *m) {
    return &m->spec;
}

size_t model_parameter_count(const model *m) {
    return m->parameter_count;
}

float *model_parameters(model *m) {
    return m->parameters;
}

float *model_gradients(model *m) {
    return m->gradients;
}

int model_max_rows(const model *m) {
    return m->max_rows;
}

float *model_output_gradient(model *m) {
    return m->output_gradient;
}

void model_zero_gradients(model *m) {
    device_fill_zero(m->dev, m->gradients, m->parameter_count * sizeof(float));
}

/* --- passes ------------------------------------------------------------------------------ */

static bool dropout_active(const layer_spec *layer, const model_pass *pass) {
    return pass->training && layer->dropout_rate > 0.0f;
}

ddt_status model_forward(model *m, const float *inputs, int rows, const model_pass *pass,
                         const float **outputs) {
    if (rows < 0 || rows > m->max_rows)
        return ddt_error(DDT_ERR_INTERNAL, "model_forward: %d rows, but the model holds %d", rows,
                         m->max_rows);
    device *dev = m->dev;
    const float *x = inputs;
    for (int i = 0; i < m->spec.layer_count; i++) {
        const layer_spec *layer = &m->spec.layers[i];
        float *y = m->layer_storage[i];
        m->forward_inputs[i] = x;
        switch (layer->kind) {
        case LAYER_DENSE: {
            const dense_layout *d = &m->dense_of_layer[i];
            device_gemm(dev, false, true, rows, d->outputs, d->inputs, 1.0f, x, d->inputs,
                      m->parameters + d->weight_offset, d->inputs, 0.0f, y, d->outputs);
            device_bias_add(dev, rows, d->outputs, y, m->parameters + d->bias_offset);
            m->forward_outputs[i] = y;
            break;
        }
        case LAYER_ACTIVATION:
            device_activation_forward(dev, layer->activation, (size_t)rows * layer->outputs, x, y);
            m->forward_outputs[i] = y;
            break;
        case LAYER_DROPOUT:
            if (!dropout_active(layer, pass)) {
                m->forward_outputs[i] = x; /* identity: no copy */
                break;
            }
            if (!pass->row_ids && rows > 0)
                return ddt_error(DDT_ERR_INTERNAL, "model_forward: dropout needs row ids");
            device_dropout_forward(dev, rows, layer->outputs, layer->dropout_rate,
                                 (dropout_key){pass->seed, pass->step, i}, pass->row_ids, x, y);
            m->forward_outputs[i] = y;
            break;
        }
        x = m->forward_outputs[i];
    }
    m->forward_rows = rows;
    *outputs = x;
    return DDT_OK;
}

ddt_status model_backward(model *m, int rows, const model_pass *pass,
                          model_gradient_ready_fn on_ready, void *context) {
    if (rows != m->forward_rows)
        return ddt_error(DDT_ERR_INTERNAL,
                         "model_backward: %d rows, but the last forward pass had %d", rows,
                         m->forward_rows);
    device *dev = m->dev;
    const float *dy = m->output_gradient;
    int next_buffer = 0;
    /* Layers before the first dense one have no parameters, so the gradient stops there. */
    for (int i = m->spec.layer_count - 1; i >= m->first_dense_layer; i--) {
        const layer_spec *layer = &m->spec.layers[i];
        const float *x = m->forward_inputs[i];
        float *dx = i > m->first_dense_layer ? m->backward_buffers[next_buffer] : NULL;
        switch (layer->kind) {
        case LAYER_DENSE: {
            const dense_layout *d = &m->dense_of_layer[i];
            /* dW += dy^T x and db += column sums of dy, then tell the caller they are final
             * before computing dx, so a reduction of them can overlap that last product. */
            device_gemm(dev, true, false, d->outputs, d->inputs, rows, 1.0f, dy, d->outputs, x,
                      d->inputs, 1.0f, m->gradients + d->weight_offset, d->inputs);
            device_bias_gradient_accumulate(dev, rows, d->outputs, dy, m->gradients + d->bias_offset);
            if (on_ready) DDT_CHECK(on_ready(context, d->weight_offset));
            if (dx)
                device_gemm(dev, false, false, rows, d->inputs, d->outputs, 1.0f, dy, d->outputs,
                          m->parameters + d->weight_offset, d->inputs, 0.0f, dx, d->inputs);
            break;
        }
        case LAYER_ACTIVATION:
            device_activation_backward(dev, layer->activation, (size_t)rows * layer->outputs, x,
                                     m->forward_outputs[i], dy, dx);
            break;
        case LAYER_DROPOUT:
            if (!dropout_active(layer, pass)) continue; /* identity: dy passes unchanged */
            if (!pass->row_ids && rows > 0)
                return ddt_error(DDT_ERR_INTERNAL, "model_backward: dropout needs row ids");
            device_dropout_backward(dev, rows, layer->outputs, layer->dropout_rate,
                                  (dropout_key){pass->seed, pass->step, i}, pass->row_ids, dy, dx);
            break;
        }
        if (dx) {
            dy = dx;
            next_buffer ^= 1;
        }
    }
    return DDT_OK;
}
