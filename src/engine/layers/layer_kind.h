/* layer_kind.h - one kind of layer, all in one place: the words the grammar knows it by and
 * its parser, the storage its nodes need, their forward and backward. Each kind's file under
 * src/engine/layers/ defines one layer_kind; kinds.h lists them, and layer_kind_of() finds a
 * node's. model_spec.c, layers.c and model.c ask the kind instead of switching on node_kind.
 *
 * Sizes are in floats for `rows` samples, saturating at SIZE_MAX (util/checked.h) when too
 * large to count: a plan that cannot fit, never a wrapped small size. A hook left NULL means
 * 0 (sizes), false (questions), or "nothing to do".
 */
#ifndef DDT_ENGINE_LAYERS_LAYER_KIND_H
#define DDT_ENGINE_LAYERS_LAYER_KIND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/layers.h"
#include "engine/model_grammar.h"
#include "util/checked.h"

/* One word of the grammar: `word`, or word(...) when `call`. */
typedef struct layer_word {
    const char *word; /* NULL: a layer written as a bare number (dense's width) */
    bool call;
    int variant;      /* the parser's own: which activation, which pooling */
    const char *help; /* in "expected ... one of": NULL gives "word" or "word(...)" */
    /* Called with g->pos after the word (and its '('); prefix: the module's name ("3."). */
    ddt_status (*parse)(grammar *g, const struct layer_word *word, size_t start,
                        const char *prefix);
} layer_word;

typedef struct layer_kind {
    const char *name;                             /* in messages: "conv", "dense" */
    const char *(*node_name)(const model_node *); /* when it depends on the node (pooling) */
    const layer_word *words;
    int word_count;

    /* Its output is its input (no storage of its own), and backward passes the gradient on
     * unchanged (to both inputs of a sum). */
    bool (*output_is_input)(const model_node *node);
    bool (*backward_is_identity)(const model_node *node);
    /* Computes a gradient for parameters that are not its own (lmhead: the tied table). */
    bool trains_tied;
    /* Its first tensor is a weight initialised by fan in (He when the layer feeds a
     * rectifier); a rectifier that follows it through init_transparent layers counts. */
    bool fan_in_weight;
    bool init_transparent;
    bool (*rectifies)(const model_node *node);

    size_t (*saved_floats)(const model_node *node, int rows);
    /* input_gradient: backward computes dx. */
    size_t (*workspace_floats)(const model_node *node, int rows, bool input_gradient);
    /* The row of ones it reads (a conv's bias, added by a product). */
    size_t (*ones_floats)(const model_node *node, int rows);
    size_t (*max_gemm_operand_floats)(const model_node *node, int rows);
    /* Rows it hands BLAS and the backends per sample (positions; attention: or heads). */
    int64_t (*rows_per_sample)(const model_node *node);

    /* The device operations its forward and backward call (static); model_check_device()
     * refuses a device that lacks one before anything is allocated
     * (tests/test_engine_device_ops.c runs each kind with its list alone, so a list that
     * leaves out an operation its passes call fails there). */
    const device_op *ops;
    int op_count;

    /* *out = its output: c->y, or its input (views, inactive dropout). */
    ddt_status (*forward)(const layer_call *c, const model_node *node, const float **out);
    /* As layer_backward (layers.h); NULL for kinds whose backward is the identity. */
    ddt_status (*backward)(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context);
} layer_kind;

#define DDT_DECLARE_LAYER_KIND(NAME, variable) extern const layer_kind variable;
DDT_LAYER_KINDS(DDT_DECLARE_LAYER_KIND)
#undef DDT_DECLARE_LAYER_KIND

/* The kind of `kind` (table.c). */
const layer_kind *layer_kind_of(node_kind kind);
/* gpt(...) (gpt.c): a whole model, not one node's word. gpt_parse_model reads it at g->pos,
 * after "gpt("; layer_gpt_word refuses it among the layers of a sequence. */
ddt_status gpt_parse_model(grammar *g);
extern const layer_word layer_gpt_word;

/* ---- what the kinds share ---------------------------------------------------------------- */

static const float LAYER_NORM_EPS = 1e-5f;

static inline const model_tensor *layer_tensor(const model_spec *spec, const model_node *node,
                                               int i) {
    return &spec->tensors[node->first_tensor + i];
}

/* The node's i-th tensor's values (parameter or buffer) and gradient. */
static inline float *layer_parameter(const layer_call *c, const model_node *node, int i) {
    const model_tensor *t = layer_tensor(c->spec, node, i);
    return (t->is_buffer ? c->buffers : c->parameters) + t->offset;
}
static inline float *layer_gradient(const layer_call *c, const model_node *node, int i) {
    return c->gradients + layer_tensor(c->spec, node, i)->offset;
}

/* Rows of the last axis: samples times the positions of a sequence. */
static inline int64_t layer_last_axis_rows(const tensor_shape *shape, int rows) {
    return shape->rank == 2 ? (int64_t)rows * shape->dims[0] : rows;
}

/* A normalisation over the last axis (layernorm.c, rmsnorm.c): its rows per sample, and the
 * workspace its backward writes dx into when the layer below wants none (it computes dx on the
 * way to the parameters' gradients). */
static inline int64_t layer_norm_rows_per_sample(const model_node *node) {
    return node->in_shape.rank == 2 ? node->in_shape.dims[0] : 1;
}
static inline size_t layer_norm_workspace_floats(const model_node *node, int rows,
                                                 bool input_gradient) {
    return input_gradient
               ? 0
               : saturated_multiply_size((size_t)rows, (size_t)tensor_shape_count(&node->in_shape));
}

/* Values in `rows` samples of the node's output. */
static inline size_t layer_output_count(const model_node *node, int rows) {
    return (size_t)rows * (size_t)tensor_shape_count(&node->out_shape);
}

/* Planning arithmetic saturates (util/checked.h). */
static inline size_t layer_times(size_t a, size_t b) {
    return saturated_multiply_size(a, b);
}
static inline size_t layer_plus(size_t a, size_t b) {
    return saturated_add_size(a, b);
}
static inline size_t layer_max3(size_t a, size_t b, size_t c) {
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

/* Tells the caller the node's parameter gradients are final (model_gradient_ready_fn). */
static inline ddt_status layer_ready(const layer_call *c, const model_node *node,
                                     model_gradient_ready_fn ready, void *context) {
    if (!ready || node->parameter_ordinal < 0) return DDT_OK;
    return ready(context, layer_tensor(c->spec, node, 0)->offset);
}

/* .ops and .op_count of a layer_kind: LAYER_OPS(DEVICE_OP_gemm, DEVICE_OP_bias_add). */
#define LAYER_OPS(...)                                                                             \
    .ops = (const device_op[]){__VA_ARGS__},                                                       \
    .op_count = sizeof((device_op[]){__VA_ARGS__}) / sizeof(device_op)

/* Pooling's passes (pool.c), which global average pooling (gap.c) shares. */
ddt_status pool_forward(const layer_call *c, const model_node *node, const float **out);
ddt_status pool_backward(const layer_call *c, const model_node *node, const float *y,
                         const float *dy, float *dx, model_gradient_ready_fn ready, void *context);

/* Node builders that composites (gpt.c) put together; each refuses what its parser would. */
ddt_status dense_build(grammar *g, size_t start, const char *prefix, int outputs, float normal_std);
ddt_status activation_build(grammar *g, size_t start, activation_kind kind);
ddt_status dropout_build(grammar *g, size_t start, float rate);
ddt_status layernorm_build(grammar *g, size_t start, const char *prefix);
ddt_status residual_build_view(grammar *g, size_t start, int *view);
ddt_status residual_build_add(grammar *g, size_t start, int body_end, int shortcut_end);
ddt_status embed_build(grammar *g, size_t start, const char *table_name, const char *positions_name,
                       int width);
ddt_status attention_build(grammar *g, size_t start, const char *prefix, int heads,
                           float projection_std);
ddt_status lm_head_build(grammar *g, size_t start);

#endif
