/* layers.h - a node's forward and backward pass, and the storage it needs, for model.c, which
 * owns the memory and walks the graph; each is its kind's (src/engine/layers/layer_kind.h,
 * one file per kind, built from the device operations).
 *
 * A node reads its input (and, for a sum, a second input), writes its output into storage
 * model.c gives it, keeps what its backward needs in `saved`, and may use the shared
 * `workspace` during one call. Backward writes (never adds) the input gradient, and adds
 * parameter gradients.
 */
#ifndef DDT_ENGINE_LAYERS_H
#define DDT_ENGINE_LAYERS_H

#include "engine/device.h"
#include "engine/model.h"
#include "engine/model_spec.h"

typedef struct layer_call {
    device *dev;
    const model_spec *spec;
    int index; /* the node */
    int rows;  /* samples */
    const model_pass *pass;
    float *parameters, *gradients, *buffers;
    const float *x;         /* the input (NULL for embed) */
    const float *x2;        /* a sum's second input */
    const int32_t *tokens;  /* embed's input */
    float *y;               /* output storage (NULL for views) */
    float *saved;
    float *workspace;
    const float *ones; /* a row of ones, layer_ones_floats() long at least */
} layer_call;

/* Floats of output storage (0: the node's output is its input, a view), of what backward
 * needs, and of workspace, for `rows` samples; input_gradient: backward computes dx. These
 * and the sizes below are SIZE_MAX when too large to count (a plan that cannot fit). */
size_t layer_output_floats(const model_spec *spec, int index, int rows);
size_t layer_saved_floats(const model_spec *spec, int index, int rows);
size_t layer_workspace_floats(const model_spec *spec, int index, int rows, bool input_gradient);
/* Floats of the row of ones the node needs (a conv's bias, added by a product). */
size_t layer_ones_floats(const model_spec *spec, int index, int rows);
/* Backward passes the output gradient on unchanged (to both inputs of a sum). */
bool layer_backward_is_identity(const model_node *node);
/* The largest product operand of the node for `rows` samples, in floats. */
size_t layer_max_gemm_operand_floats(const model_spec *spec, int index, int rows);
/* The most samples the node computes in one call: it hands rows x positions (attention:
 * also samples x heads) to BLAS and the backends as an int. */
int layer_max_rows(const model_spec *spec, int index);

/* The device operations the node's forward and backward passes call: *ops (static) holds the
 * returned count of them. */
int layer_device_ops(const model_node *node, const device_op **ops);

/* *out = the node's output: call->y, or its input for views and inactive dropout. */
ddt_status layer_forward(const layer_call *call, const float **out);
/* dy: the output gradient; y: the output forward produced; dx: where the input gradient goes
 * (NULL: not needed). Calls ready(context, offset of the node's first parameter) once its
 * parameter gradients are final, before computing dx. */
ddt_status layer_backward(const layer_call *call, const float *y, const float *dy, float *dx,
                          model_gradient_ready_fn ready, void *context);

#endif
