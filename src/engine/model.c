/* model.c - running a model_spec (see model.h): memory planned once, parameters initialised,
 * the graph walked forwards and backwards; each node's own work is its kind's (layers.c, and
 * the kind's file under src/engine/layers/).
 *
 * The backward pass is planned once per spec (plan_graph): walking the nodes last to first,
 * each gradient that must flow gets a gradient buffer when its first contribution is written
 * and gives it back once its node has consumed it. Nodes that pass gradients unchanged (a
 * residual block's view and sum, flatten) share their buffer with their input's gradient; a
 * second contribution to a gradient (a residual input's) is computed into a spare buffer and
 * added. So a chain needs two or three buffers and each residual level one more, whatever the
 * depth, and the memory plan knows how many before anything is allocated.
 */
#include "engine/model.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/layers.h"
#include "engine/layers/layer_kind.h"
#include "util/checked.h"
#include "util/rng.h"

/* Each activation sub-buffer starts on a 64-byte boundary (16 floats) for vector loads. */
#define ALIGN_FLOATS 16

enum { SLOT_UNSET = -3, SLOT_OUTPUT = -2, SLOT_NONE = -1 };

typedef enum input_mode {
    INPUT_SKIP,       /* no gradient flows there */
    INPUT_ALIAS,      /* the input's gradient is this node's (identity backward) */
    INPUT_ADD_INTO,   /* identity backward, but the input's gradient exists: add */
    INPUT_WRITE,      /* the node writes the input's gradient (its first contribution) */
    INPUT_ACCUMULATE, /* the node writes into a spare buffer, which is added */
} input_mode;

typedef struct backward_step {
    int dy_slot; /* where the node's output gradient is, SLOT_NONE: no backward */
    input_mode mode[2];
    int target[2]; /* slots of the input gradients */
    int spare;     /* INPUT_ACCUMULATE's buffer */
} backward_step;

/* Everything about one spec's memory and backward pass that does not need the device. */
typedef struct graph_plan {
    bool flows[MODEL_MAX_NODES]; /* a gradient flows into this node's output */
    backward_step steps[MODEL_MAX_NODES];
    int slot_count;
    size_t slot_floats;
    /* offsets in the activation allocation */
    size_t output_offset[MODEL_MAX_NODES];
    size_t saved_offset[MODEL_MAX_NODES];
    bool shared[MODEL_MAX_NODES]; /* recompute: in the shared block region */
    size_t shared_offset;         /* the shared region's start */
    size_t workspace_offset;
    size_t ones_offset; /* a row of ones (conv biases), ones_floats long */
    size_t ones_floats;
    size_t slots_offset;
    size_t output_gradient_offset;
    model_plan totals;
} graph_plan;

struct model {
    model_spec spec;
    model_options options;
    allocator *alloc;
    device *dev;
    int max_rows;
    graph_plan plan;
    float *parameters;
    float *gradients;
    float *buffers;
    float *activations; /* the one ACTIVATIONS allocation; everything below points into it */
    float *slots[MODEL_MAX_NODES];
    float *output_gradient;
    /* the last forward pass */
    int forward_rows; /* -1 until the first forward */
    bool forward_training;
    model_input input;
    const float *out[MODEL_MAX_NODES];
};

/* Plans add sizes that may not fit a size_t (a micro-batch far too large): they saturate at
 * SIZE_MAX (util/checked.h), which no limit admits, and an allocation of it fails. */
static size_t align_floats(size_t floats) {
    if (floats > SIZE_MAX - (ALIGN_FLOATS - 1)) return SIZE_MAX;
    return (floats + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

static size_t plus(size_t a, size_t b) {
    return saturated_add_size(a, b);
}

static size_t times(size_t a, size_t b) {
    return saturated_multiply_size(a, b);
}

static bool node_trains(const model_spec *spec, const model_node *node) {
    for (int t = node->first_tensor; t < node->first_tensor + node->tensor_count; t++)
        if (!spec->tensors[t].is_buffer) return true;
    return layer_kind_of(node->kind)->trains_tied; /* its gradient goes to a tied table */
}

/* The block's last node (its output, kept) for each gpt(...) block. */
static void block_ends(const model_spec *spec, int *last) {
    for (int b = 0; b < spec->block_count; b++)
        last[b] = -1;
    for (int n = 0; n < spec->node_count; n++)
        if (spec->nodes[n].block >= 0) last[spec->nodes[n].block] = n;
}

static bool in_shared_region(const model_spec *spec, const int *last, int n) {
    int b = spec->nodes[n].block;
    return b >= 0 && last[b] != n;
}

/* Plans the backward pass's gradient buffers (see the comment at the top). */
static ddt_status plan_backward(const model_spec *spec, graph_plan *g) {
    int count = spec->node_count;
    for (int n = 0; n < count; n++) {
        const model_node *node = &spec->nodes[n];
        g->flows[n] = node_trains(spec, node) || (node->input >= 0 && g->flows[node->input]) ||
                      (node->second_input >= 0 && g->flows[node->second_input]);
    }
    int slot_of[MODEL_MAX_NODES];
    int references[MODEL_MAX_NODES + 1] = {0};
    int free_slots[MODEL_MAX_NODES], free_count = 0;
    g->slot_count = 0;
    for (int n = 0; n < count; n++)
        slot_of[n] = SLOT_UNSET;
    slot_of[count - 1] = SLOT_OUTPUT;
#define TAKE_SLOT() (free_count ? free_slots[--free_count] : g->slot_count++)
#define RELEASE(slot)                                                                             \
    do {                                                                                           \
        if ((slot) >= 0 && --references[(slot)] == 0) free_slots[free_count++] = (slot);          \
    } while (0)
    for (int n = count - 1; n >= 0; n--) {
        const model_node *node = &spec->nodes[n];
        backward_step *step = &g->steps[n];
        step->dy_slot = SLOT_NONE;
        step->spare = SLOT_NONE;
        step->mode[0] = step->mode[1] = INPUT_SKIP;
        step->target[0] = step->target[1] = SLOT_NONE;
        if (!g->flows[n]) continue;
        if (slot_of[n] == SLOT_UNSET)
            return ddt_error(DDT_ERR_INTERNAL, "model: node %d's output is never used", n);
        int dy = slot_of[n];
        step->dy_slot = dy;
        int inputs[2] = {node->input, node->second_input};
        bool identity = layer_backward_is_identity(node);
        for (int k = 0; k < 2; k++) {
            int i = inputs[k];
            if (i < 0 || !g->flows[i]) continue;
            if (identity) {
                if (slot_of[i] == SLOT_UNSET) {
                    slot_of[i] = dy;
                    if (dy >= 0) references[dy]++;
                    step->mode[k] = INPUT_ALIAS;
                } else {
                    step->mode[k] = INPUT_ADD_INTO;
                }
            } else if (slot_of[i] == SLOT_UNSET) {
                int s = TAKE_SLOT();
                references[s] = 1;
                slot_of[i] = s;
                step->mode[k] = INPUT_WRITE;
            } else {
                step->spare = TAKE_SLOT();
                references[step->spare] = 1;
                step->mode[k] = INPUT_ACCUMULATE;
            }
            step->target[k] = slot_of[i];
        }
        RELEASE(dy);
        RELEASE(step->spare);
    }
#undef TAKE_SLOT
#undef RELEASE
    return DDT_OK;
}

static ddt_status plan_graph(const model_spec *spec, int rows, model_options options,
                             graph_plan *g) {
    memset(g, 0, sizeof *g);
    DDT_CHECK(plan_backward(spec, g));
    int last[MODEL_MAX_NODES];
    block_ends(spec, last);
    bool recompute = options.recompute && spec->block_count > 0;
    size_t offset = 0, shared_size = 0, block_used = 0, workspace = 0, slot_floats = 0;
    size_t max_operand = 0, ones = 0;
    int block = -1;
    for (int n = 0; n < spec->node_count; n++) {
        size_t output = align_floats(layer_output_floats(spec, n, rows));
        size_t saved = align_floats(layer_saved_floats(spec, n, rows));
        const model_node *node = &spec->nodes[n];
        bool input_gradient = node->input >= 0 && g->flows[node->input];
        size_t work = align_floats(layer_workspace_floats(spec, n, rows, input_gradient));
        if (work > workspace) workspace = work;
        size_t operand = layer_max_gemm_operand_floats(spec, n, rows);
        if (operand > max_operand) max_operand = operand;
        size_t need_ones = layer_ones_floats(spec, n, rows);
        if (need_ones > ones) ones = need_ones;
        if (g->flows[n] && g->steps[n].dy_slot != SLOT_OUTPUT) { /* the loss's has its own */
            size_t gradient = times((size_t)rows, (size_t)tensor_shape_count(&node->out_shape));
            if (gradient > slot_floats) slot_floats = gradient;
        }
        g->shared[n] = recompute && in_shared_region(spec, last, n);
        if (g->shared[n]) {
            if (node->block != block) {
                block = node->block;
                block_used = 0;
            }
            g->output_offset[n] = block_used;
            g->saved_offset[n] = plus(block_used, output);
            block_used = plus(block_used, plus(output, saved));
            if (block_used > shared_size) shared_size = block_used;
        } else {
            g->output_offset[n] = offset;
            g->saved_offset[n] = plus(offset, output);
            offset = plus(offset, plus(output, saved));
        }
    }
    size_t stored = plus(offset, shared_size);
    g->shared_offset = offset;
    offset = plus(offset, shared_size);
    g->workspace_offset = offset;
    offset = plus(offset, workspace);
    g->ones_offset = offset;
    g->ones_floats = ones;
    offset = plus(offset, align_floats(ones));
    g->slot_floats = align_floats(slot_floats);
    g->slots_offset = offset;
    size_t slots = times((size_t)g->slot_count, g->slot_floats);
    offset = plus(offset, slots);
    g->output_gradient_offset = offset;
    size_t output_gradient = align_floats(
        times(times((size_t)rows, (size_t)spec->positions), (size_t)spec->output_width));
    offset = plus(offset, output_gradient);
    g->totals = (model_plan){
        .activation_floats = offset,
        .stored_floats = stored,
        .workspace_floats = plus(workspace, align_floats(ones)),
        .gradient_floats = plus(slots, output_gradient),
        .gradient_buffers = g->slot_count,
        .max_gemm_operand_floats = max_operand,
    };
    for (int n = 0; n < spec->node_count; n++)
        if (g->shared[n]) {
            g->output_offset[n] = plus(g->output_offset[n], g->shared_offset);
            g->saved_offset[n] = plus(g->saved_offset[n], g->shared_offset);
        }
    return DDT_OK;
}

model_plan model_plan_for(const model_spec *spec, int rows, model_options options) {
    graph_plan *g = malloc(sizeof *g);
    model_plan plan = {0};
    if (g && plan_graph(spec, rows > 0 ? rows : 0, options, g) == DDT_OK) plan = g->totals;
    free(g);
    return plan;
}

size_t model_spec_activation_floats(const model_spec *spec, int rows, model_options options) {
    return model_plan_for(spec, rows, options).activation_floats;
}

int model_spec_max_rows(const model_spec *spec) {
    /* The loss takes rows x positions as an int too. */
    int largest = INT_MAX / (spec->positions > 0 ? spec->positions : 1);
    for (int n = 0; n < spec->node_count; n++) {
        int rows = layer_max_rows(spec, n);
        if (rows < largest) largest = rows;
    }
    return largest;
}

size_t model_spec_max_gemm_operand_floats(const model_spec *spec, int rows) {
    size_t largest = 0;
    for (int n = 0; n < spec->node_count; n++) {
        size_t operand = layer_max_gemm_operand_floats(spec, n, rows);
        if (operand > largest) largest = operand;
    }
    return largest;
}

/* --- lifetime ---------------------------------------------------------------------------- */

/* What model.c itself calls, whatever the nodes: storage, state copies, zeroed gradients, a
 * second contribution's sum, the precision's scratch. */
static const device_op model_ops[] = {
    DEVICE_OP_memory_alloc,        DEVICE_OP_memory_free, DEVICE_OP_copy_host_to_device,
    DEVICE_OP_copy_device_to_host, DEVICE_OP_fill_zero,   DEVICE_OP_add,
    DEVICE_OP_set_precision,       DEVICE_OP_synchronize,
};

ddt_status model_check_device(const model_spec *spec, const device *dev) {
    for (size_t i = 0; i < sizeof model_ops / sizeof model_ops[0]; i++) {
        if (!device_supports_op(dev, model_ops[i]))
            return ddt_error(DDT_ERR_USAGE,
                             "the %s backend cannot run a model: it lacks the operation %s",
                             device_kind_name(dev->kind), device_op_name(model_ops[i]));
    }
    for (int n = 0; n < spec->node_count; n++) {
        const device_op *ops;
        int count = layer_device_ops(&spec->nodes[n], &ops);
        for (int i = 0; i < count; i++) {
            if (!device_supports_op(dev, ops[i]))
                return ddt_error(
                    DDT_ERR_USAGE,
                    "the %s backend cannot run layer %d (%s): it lacks the operation %s",
                    device_kind_name(dev->kind), n, model_node_word(&spec->nodes[n]),
                    device_op_name(ops[i]));
        }
    }
    return DDT_OK;
}

ddt_status model_init(const model_spec *spec, allocator *alloc, int max_rows,
                      model_options options, model **out) {
    *out = NULL;
    if (max_rows <= 0)
        return ddt_error(DDT_ERR_USAGE, "the micro-batch must hold at least one row (got %d)",
                         max_rows);
    if (spec->node_count <= 0 || spec->parameter_count == 0)
        return ddt_error(DDT_ERR_INTERNAL, "model_init: the spec has no layer with parameters");
    if (max_rows > model_spec_max_rows(spec))
        return ddt_error(DDT_ERR_USAGE,
                         "a micro-batch of %d rows is more than the model '%s' "
                         "computes at once (%d: rows x positions must fit an int)",
                         max_rows, spec->text, model_spec_max_rows(spec));
    model *m = calloc(1, sizeof *m);
    if (!m) return ddt_error(DDT_ERR_MEMORY, "out of host memory creating the model");
    m->spec = *spec;
    m->options = options;
    m->alloc = alloc;
    m->dev = allocator_device(alloc);
    m->max_rows = max_rows;
    m->forward_rows = -1;
    ddt_status status;
    DDT_CHECK_GOTO(plan_graph(&m->spec, max_rows, options, &m->plan), status, fail);
    size_t parameter_bytes = spec->parameter_count * sizeof(float);
    DDT_CHECK_GOTO(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, parameter_bytes,
                                   (void **)&m->parameters),
                   status, fail);
    DDT_CHECK_GOTO(
        allocator_alloc(alloc, MEMORY_COMPONENT_GRADIENTS, parameter_bytes, (void **)&m->gradients),
        status, fail);
    if (spec->buffer_count)
        DDT_CHECK_GOTO(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS,
                                       spec->buffer_count * sizeof(float), (void **)&m->buffers),
                       status, fail);
    DDT_CHECK_GOTO(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS,
                                   m->plan.totals.activation_floats * sizeof(float),
                                   (void **)&m->activations),
                   status, fail);
    for (int s = 0; s < m->plan.slot_count; s++)
        m->slots[s] = m->activations + m->plan.slots_offset + (size_t)s * m->plan.slot_floats;
    m->output_gradient = m->activations + m->plan.output_gradient_offset;
    if (m->plan.ones_floats) {
        float *ones = malloc(m->plan.ones_floats * sizeof *ones);
        if (!ones) {
            status = ddt_error(DDT_ERR_MEMORY, "out of host memory creating the model");
            goto fail;
        }
        for (size_t i = 0; i < m->plan.ones_floats; i++)
            ones[i] = 1.0f;
        status = device_copy_host_to_device(m->dev, m->activations + m->plan.ones_offset, ones,
                                            m->plan.ones_floats * sizeof *ones);
        free(ones);
        if (status != DDT_OK) goto fail;
    }
    *out = m;
    return DDT_OK;

fail:
    model_free(m);
    return status;
}

void model_free(model *m) {
    if (!m) return;
    allocator_free(m->alloc, m->activations);
    allocator_free(m->alloc, m->buffers);
    allocator_free(m->alloc, m->gradients);
    allocator_free(m->alloc, m->parameters);
    free(m);
}

static void init_tensor(const model_spec *spec, int index, uint64_t seed, float *values) {
    const model_tensor *t = &spec->tensors[index];
    int owner = -1;
    for (int n = 0; n < spec->node_count && owner < 0; n++)
        if (index >= spec->nodes[n].first_tensor &&
            index < spec->nodes[n].first_tensor + spec->nodes[n].tensor_count)
            owner = n;
    switch (t->init) {
    case TENSOR_INIT_ZERO:
        memset(values, 0, t->count * sizeof *values);
        break;
    case TENSOR_INIT_ONE:
        for (size_t e = 0; e < t->count; e++)
            values[e] = 1.0f;
        break;
    case TENSOR_INIT_FAN_IN: {
        uint64_t key = (uint64_t)spec->nodes[owner].parameter_ordinal;
        if (t->init_rectifier) {
            double std = sqrt(2.0 / t->fan_in);
            for (size_t e = 0; e < t->count; e++)
                values[e] = (float)(std * rng_normal(
                                              rng_hash4(seed, RNG_PURPOSE_INIT, key, 2 * (uint64_t)e),
                                              rng_hash4(seed, RNG_PURPOSE_INIT, key,
                                                        2 * (uint64_t)e + 1)));
        } else {
            double limit = sqrt(6.0 / ((double)t->fan_in + t->fan_out)); /* no int overflow */
            for (size_t e = 0; e < t->count; e++) {
                double u = rng_uniform(rng_hash4(seed, RNG_PURPOSE_INIT, key, e));
                values[e] = (float)((2.0 * u - 1.0) * limit);
            }
        }
        break;
    }
    case TENSOR_INIT_NORMAL: {
        uint64_t key = MODEL_INIT_NORMAL_KEY + (uint64_t)index;
        for (size_t e = 0; e < t->count; e++)
            values[e] = (float)(t->init_std *
                                rng_normal(rng_hash4(seed, RNG_PURPOSE_INIT, key, 2 * (uint64_t)e),
                                           rng_hash4(seed, RNG_PURPOSE_INIT, key,
                                                     2 * (uint64_t)e + 1)));
        break;
    }
    }
}

ddt_status model_init_parameters(model *m, uint64_t seed) {
    const model_spec *spec = &m->spec;
    size_t total = spec->parameter_count + spec->buffer_count;
    float *host = calloc(total ? total : 1, sizeof *host);
    if (!host)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory initialising %zu parameters", total);
    float *buffers = host + spec->parameter_count;
    for (int t = 0; t < spec->tensor_count; t++) {
        const model_tensor *tensor = &spec->tensors[t];
        init_tensor(spec, t, seed, (tensor->is_buffer ? buffers : host) + tensor->offset);
    }
    ddt_status status = device_copy_host_to_device(m->dev, m->parameters, host,
                                                   spec->parameter_count * sizeof(float));
    if (status == DDT_OK && spec->buffer_count)
        status = device_copy_host_to_device(m->dev, m->buffers, buffers,
                                            spec->buffer_count * sizeof(float));
    free(host);
    if (status != DDT_OK) ddt_error_trace(__FILE__, __LINE__);
    return status;
}

const model_spec *model_get_spec(const model *m) {
    return &m->spec;
}

size_t model_parameter_count(const model *m) {
    return m->spec.parameter_count;
}

float *model_parameters(model *m) {
    return m->parameters;
}

float *model_gradients(model *m) {
    return m->gradients;
}

float *model_buffers(model *m) {
    return m->buffers;
}

size_t model_buffer_count(const model *m) {
    return m->spec.buffer_count;
}

ddt_status model_set_state(model *m, const float *host_state) {
    DDT_CHECK(device_copy_host_to_device(m->dev, m->parameters, host_state,
                                         m->spec.parameter_count * sizeof(float)));
    if (m->spec.buffer_count)
        DDT_CHECK(device_copy_host_to_device(m->dev, m->buffers,
                                             host_state + m->spec.parameter_count,
                                             m->spec.buffer_count * sizeof(float)));
    return DDT_OK;
}

ddt_status model_get_state(model *m, float *host_state) {
    DDT_CHECK(device_copy_device_to_host(m->dev, host_state, m->parameters,
                                         m->spec.parameter_count * sizeof(float)));
    if (m->spec.buffer_count)
        DDT_CHECK(device_copy_device_to_host(m->dev, host_state + m->spec.parameter_count,
                                             m->buffers, m->spec.buffer_count * sizeof(float)));
    return DDT_OK;
}

int model_max_rows(const model *m) {
    return m->max_rows;
}

float *model_output_gradient(model *m) {
    return m->output_gradient;
}

void model_zero_gradients(model *m) {
    device_fill_zero(m->dev, m->gradients, m->spec.parameter_count * sizeof(float));
}

/* --- passes ------------------------------------------------------------------------------ */

static layer_call call_for(model *m, int n, int rows, const model_pass *pass) {
    const model_node *node = &m->spec.nodes[n];
    return (layer_call){
        .dev = m->dev,
        .spec = &m->spec,
        .index = n,
        .rows = rows,
        .pass = pass,
        .parameters = m->parameters,
        .gradients = m->gradients,
        .buffers = m->buffers,
        .x = node->input >= 0 ? m->out[node->input] : m->input.features,
        .x2 = node->second_input >= 0 ? m->out[node->second_input] : NULL,
        .tokens = m->input.tokens,
        .y = m->activations + m->plan.output_offset[n],
        .saved = m->activations + m->plan.saved_offset[n],
        .workspace = m->activations + m->plan.workspace_offset,
        .ones = m->activations + m->plan.ones_offset,
    };
}

static ddt_status forward_range(model *m, int from, int to, int rows, const model_pass *pass) {
    for (int n = from; n < to; n++) {
        layer_call call = call_for(m, n, rows, pass);
        DDT_CHECK(layer_forward(&call, &m->out[n]));
    }
    return DDT_OK;
}

ddt_status model_forward(model *m, model_input input, int rows, const model_pass *pass,
                         const float **logits) {
    if (rows < 0 || rows > m->max_rows)
        return ddt_error(DDT_ERR_INTERNAL, "model_forward: %d rows, but the model holds %d", rows,
                         m->max_rows);
    bool tokens = m->spec.input_kind == MODEL_INPUT_TOKENS;
    if ((tokens && !input.tokens) || (!tokens && !input.features))
        return ddt_error(DDT_ERR_INTERNAL, "model_forward: the model takes %s",
                         tokens ? "token ids" : "features");
    m->input = input;
    DDT_CHECK(forward_range(m, 0, m->spec.node_count, rows, pass));
    m->forward_rows = rows;
    m->forward_training = pass->training;
    *logits = m->out[m->spec.node_count - 1];
    return DDT_OK;
}

static float *slot_pointer(model *m, int slot) {
    return slot == SLOT_OUTPUT ? m->output_gradient : slot >= 0 ? m->slots[slot] : NULL;
}

/* Recompute: runs block b's stored-in-the-shared-region nodes again. */
static ddt_status recompute_block(model *m, int block, int rows, const model_pass *pass) {
    int first = -1, last = -1;
    for (int n = 0; n < m->spec.node_count; n++)
        if (m->spec.nodes[n].block == block) {
            if (first < 0) first = n;
            last = n;
        }
    return forward_range(m, first, last, rows, pass);
}

ddt_status model_backward(model *m, int rows, const model_pass *pass,
                          model_gradient_ready_fn on_ready, void *context) {
    if (rows != m->forward_rows)
        return ddt_error(DDT_ERR_INTERNAL,
                         "model_backward: %d rows, but the last forward pass had %d", rows,
                         m->forward_rows);
    if (!m->forward_training)
        return ddt_error(DDT_ERR_INTERNAL, "model_backward: the last forward pass was not training");
    device *dev = m->dev;
    int last_block = -1;
    for (int n = 0; n < m->spec.node_count; n++)
        if (m->spec.nodes[n].block > last_block) last_block = m->spec.nodes[n].block;
    /* The block whose shared storage holds its own values: forward just left the last one
     * there. */
    int recomputed = last_block;
    for (int n = m->spec.node_count - 1; n >= 0; n--) {
        const backward_step *step = &m->plan.steps[n];
        if (step->dy_slot == SLOT_NONE) continue;
        const model_node *node = &m->spec.nodes[n];
        if (m->plan.shared[n] && node->block != recomputed) {
            DDT_CHECK(recompute_block(m, node->block, rows, pass));
            recomputed = node->block;
        }
        const float *dy = slot_pointer(m, step->dy_slot);
        size_t count = (size_t)rows * (size_t)tensor_shape_count(&node->out_shape);
        if (layer_backward_is_identity(node)) {
            for (int k = 0; k < 2; k++)
                if (step->mode[k] == INPUT_ADD_INTO) {
                    float *target = slot_pointer(m, step->target[k]);
                    device_add(dev, count, target, dy, target);
                }
            continue;
        }
        float *dx = NULL, *accumulate_into = NULL;
        if (step->mode[0] == INPUT_WRITE) dx = slot_pointer(m, step->target[0]);
        if (step->mode[0] == INPUT_ACCUMULATE) {
            dx = slot_pointer(m, step->spare);
            accumulate_into = slot_pointer(m, step->target[0]);
        }
        layer_call call = call_for(m, n, rows, pass);
        DDT_CHECK(layer_backward(&call, m->out[n], dy, dx, on_ready, context));
        if (accumulate_into) {
            const model_node *input = &m->spec.nodes[node->input];
            size_t input_count = (size_t)rows * (size_t)tensor_shape_count(&input->out_shape);
            device_add(dev, input_count, accumulate_into, dx, accumulate_into);
        }
    }
    return DDT_OK;
}
