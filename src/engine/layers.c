/* layers.c - a node's passes and storage (see layers.h), through its kind's entry in the
 * table (layers/layer_kind.h): what every kind shares is here, each kind's own work in its
 * file under src/engine/layers/. */
#include "engine/layers.h"

#include <limits.h>

#include "engine/layers/layer_kind.h"

static const model_node *node_of(const model_spec *spec, int index) {
    return &spec->nodes[index];
}

static const layer_kind *kind_of(const model_node *node) {
    return layer_kind_of(node->kind);
}

/* ---- storage ----------------------------------------------------------------------------- */

bool layer_backward_is_identity(const model_node *node) {
    const layer_kind *kind = kind_of(node);
    return kind->backward_is_identity && kind->backward_is_identity(node);
}

size_t layer_output_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    const layer_kind *kind = kind_of(node);
    if (kind->output_is_input && kind->output_is_input(node)) return 0;
    return layer_times((size_t)rows, (size_t)tensor_shape_count(&node->out_shape));
}

size_t layer_saved_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    const layer_kind *kind = kind_of(node);
    return kind->saved_floats ? kind->saved_floats(node, rows) : 0;
}

size_t layer_workspace_floats(const model_spec *spec, int index, int rows, bool input_gradient) {
    const model_node *node = node_of(spec, index);
    const layer_kind *kind = kind_of(node);
    return kind->workspace_floats ? kind->workspace_floats(node, rows, input_gradient) : 0;
}

size_t layer_ones_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    const layer_kind *kind = kind_of(node);
    return kind->ones_floats ? kind->ones_floats(node, rows) : 0;
}

size_t layer_max_gemm_operand_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    const layer_kind *kind = kind_of(node);
    return kind->max_gemm_operand_floats ? kind->max_gemm_operand_floats(node, rows) : 0;
}

int layer_max_rows(const model_spec *spec, int index) {
    const model_node *node = node_of(spec, index);
    const layer_kind *kind = kind_of(node);
    /* The layers hand BLAS and the backends rows x positions (and attention samples x heads)
     * as an int. */
    int64_t per_row = kind->rows_per_sample ? kind->rows_per_sample(node) : 1;
    return (int)(INT_MAX / per_row);
}

/* ---- passes ------------------------------------------------------------------------------ */

ddt_status layer_forward(const layer_call *c, const float **out) {
    const model_node *node = node_of(c->spec, c->index);
    *out = c->y;
    return kind_of(node)->forward(c, node, out);
}

ddt_status layer_backward(const layer_call *c, const float *y, const float *dy, float *dx,
                          model_gradient_ready_fn ready, void *context) {
    const model_node *node = node_of(c->spec, c->index);
    const layer_kind *kind = kind_of(node);
    if (!kind->backward)
        return ddt_error(DDT_ERR_INTERNAL, "layer_backward: %s passes gradients unchanged",
                         model_node_word(node));
    return kind->backward(c, node, y, dy, dx, ready, context);
}

/* ---- the device operations each kind calls ----------------------------------------------- */

int layer_device_ops(const model_node *node, const device_op **ops) {
    const layer_kind *kind = kind_of(node);
    *ops = kind ? kind->ops : NULL;
    return kind ? kind->op_count : 0;
}
