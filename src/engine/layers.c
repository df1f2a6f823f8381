/* layers.c - every node kind's passes and storage (see layers.h).
 *
 * Convolution is im2col + one GEMM per chunk of samples: the windows of a chunk are unfolded
 * into a (C*K*K) x (samples*positions) matrix, and one product W [OUT x C*K*K] times it gives
 * the chunk's outputs channel-major (OUT x samples*positions); the bias joins as a rank-one
 * product with a row of ones (in fp32 whatever the precision: device_gemm_fp32), and a permute
 * puts the outputs in NCHW. Backward: the output gradient permuted channel-major,
 * dW += dY cols^T, d cols = W^T dY, col2im. All products are plain (no operand transposed
 * twice), so BLAS and cuBLAS run them at their best; one large product per chunk rather than
 * one per sample (small, slow), and the chunk bounds the unfolded matrix's memory
 * (CONV_WORKSPACE_FLOATS). Winograd or direct convolutions would
 * save memory traffic but would need their own code on every backend; im2col reuses the GEMM
 * that already runs at the machine's speed.
 *
 * Attention: one product makes q, k and v for all heads (c_attn); a permute gives each of
 * them as [samples * heads] matrices of T x head_size, so scores, the causal softmax and the
 * weighted sum are strided-batched products over all samples and heads at once; c_proj
 * follows. The probabilities are kept for backward (samples x heads x T x T floats, what
 * the memory plan counts).
 */
#include "engine/layers.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>

#include "util/checked.h"

/* The unfolded windows of one chunk of samples take at most this many floats (16 MiB), unless
 * a single sample needs more. */
#define CONV_WORKSPACE_FLOATS ((size_t)4 << 20)

static const float NORM_EPS = 1e-5f;
static const float BATCHNORM_MOMENTUM = 0.1f;

static const model_node *node_of(const model_spec *spec, int index) {
    return &spec->nodes[index];
}

static const model_tensor *tensor(const model_spec *spec, const model_node *node, int i) {
    return &spec->tensors[node->first_tensor + i];
}

static float *parameter(const layer_call *c, const model_node *node, int i) {
    const model_tensor *t = tensor(c->spec, node, i);
    return (t->is_buffer ? c->buffers : c->parameters) + t->offset;
}

static float *gradient(const layer_call *c, const model_node *node, int i) {
    return c->gradients + tensor(c->spec, node, i)->offset;
}

/* Rows of the last axis: samples times the positions of a sequence. */
static int64_t last_axis_rows(const tensor_shape *shape, int rows) {
    return shape->rank == 2 ? (int64_t)rows * shape->dims[0] : rows;
}

/* Planning sizes saturate (util/checked.h): a micro-batch or a layer too large to count is
 * planned as SIZE_MAX floats, which no memory limit admits, never as a wrapped small size. */
static size_t times(size_t a, size_t b) {
    return saturated_multiply_size(a, b);
}
static size_t plus(size_t a, size_t b) {
    return saturated_add_size(a, b);
}

/* A conv window's unfolded values (C x K x K) and its output positions (H' x W'); both at
 * most INT_MAX for a parsed spec. */
static size_t conv_unfolded(const conv_geometry *g) {
    return times(times((size_t)g->channels, (size_t)g->kernel_h), (size_t)g->kernel_w);
}
static size_t conv_positions(const conv_geometry *g) {
    return times((size_t)g->out_height, (size_t)g->out_width);
}

/* Samples per convolution chunk. */
static int conv_chunk(const model_node *node, int rows) {
    const conv_geometry *g = &node->geometry;
    size_t per_sample =
        times(plus(times(2, conv_unfolded(g)), (size_t)node->out_shape.dims[0]), conv_positions(g));
    size_t chunk = CONV_WORKSPACE_FLOATS / per_sample;
    if (chunk < 1) chunk = 1;
    if (chunk > (size_t)rows) chunk = rows > 0 ? (size_t)rows : 1;
    return (int)chunk;
}

/* Attention's sizes. */
typedef struct attention_shape {
    int64_t rows_t;    /* samples * T */
    int t, width, heads, head_size;
    int64_t groups;    /* samples * heads */
    int64_t sequence;  /* samples * T * width: one of q, k, v */
    int64_t scores;    /* samples * heads * T * T */
} attention_shape;

static attention_shape attention_shape_of(const model_node *node, int rows) {
    attention_shape a;
    a.t = node->in_shape.dims[0];
    a.width = node->in_shape.dims[1];
    a.heads = node->heads;
    a.head_size = a.width / a.heads;
    a.rows_t = (int64_t)rows * a.t;
    a.groups = (int64_t)rows * a.heads;
    a.sequence = a.rows_t * a.width;
    a.scores = a.groups * a.t * a.t;
    return a;
}

/* ---- storage ----------------------------------------------------------------------------- */

bool layer_backward_is_identity(const model_node *node) {
    return node->kind == NODE_VIEW || node->kind == NODE_FLATTEN || node->kind == NODE_ADD ||
           (node->kind == NODE_DROPOUT && node->rate == 0.0f);
}

size_t layer_output_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    if (node->kind == NODE_VIEW || node->kind == NODE_FLATTEN) return 0;
    if (node->kind == NODE_DROPOUT && node->rate == 0.0f) return 0;
    return times((size_t)rows, (size_t)tensor_shape_count(&node->out_shape));
}

/* Attention's floats for `rows` samples: one of q, k, v (samples x T x width), and the
 * scores (samples x heads x T x T). */
static void attention_floats(const model_node *node, int rows, size_t *sequence, size_t *scores) {
    size_t t = (size_t)node->in_shape.dims[0], width = (size_t)node->in_shape.dims[1];
    *sequence = times(times((size_t)rows, t), width);
    *scores = times(times(times((size_t)rows, (size_t)node->heads), t), t);
}

size_t layer_saved_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    switch (node->kind) {
    case NODE_BATCHNORM:
        return 2 * (size_t)node->in_shape.dims[0];
    case NODE_LAYERNORM:
        return times(
            2, times((size_t)rows, node->in_shape.rank == 2 ? (size_t)node->in_shape.dims[0] : 1));
    case NODE_ATTENTION: {
        size_t sequence, scores;
        attention_floats(node, rows, &sequence, &scores);
        return plus(times(4, sequence), scores); /* q k v, probabilities, mix */
    }
    default:
        return 0;
    }
}

size_t layer_workspace_floats(const model_spec *spec, int index, int rows, bool input_gradient) {
    const model_node *node = node_of(spec, index);
    switch (node->kind) {
    case NODE_BATCHNORM:
    case NODE_LAYERNORM: /* their backward computes dx on the way to the parameters' */
        return input_gradient ? 0
                              : times((size_t)rows, (size_t)tensor_shape_count(&node->in_shape));
    case NODE_CONV: {
        const conv_geometry *g = &node->geometry;
        size_t positions = times(conv_positions(g), (size_t)conv_chunk(node, rows));
        return times(plus(times(2, conv_unfolded(g)), (size_t)node->out_shape.dims[0]), positions);
    }
    case NODE_ATTENTION: {
        size_t sequence, scores;
        attention_floats(node, rows, &sequence, &scores);
        size_t forward = plus(times(4, sequence), scores);
        size_t backward = plus(times(8, sequence), times(2, scores));
        return forward > backward ? forward : backward;
    }
    default:
        return 0;
    }
}

static size_t max3(size_t a, size_t b, size_t c) {
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

size_t layer_ones_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    if (node->kind != NODE_CONV || !node->bias) return 0;
    return times(conv_positions(&node->geometry), (size_t)conv_chunk(node, rows));
}

size_t layer_max_gemm_operand_floats(const model_spec *spec, int index, int rows) {
    const model_node *node = node_of(spec, index);
    switch (node->kind) {
    case NODE_DENSE: {
        size_t in = (size_t)node->in_shape.dims[node->in_shape.rank - 1];
        size_t out = (size_t)node->out_shape.dims[node->out_shape.rank - 1];
        size_t n =
            times((size_t)rows, node->in_shape.rank == 2 ? (size_t)node->in_shape.dims[0] : 1);
        return max3(times(in, out), times(n, in), times(n, out));
    }
    case NODE_CONV: {
        const conv_geometry *g = &node->geometry;
        size_t positions = times(conv_positions(g), (size_t)conv_chunk(node, rows));
        size_t unfolded = conv_unfolded(g);
        size_t outputs = (size_t)node->out_shape.dims[0];
        return max3(times(unfolded, outputs), times(unfolded, positions),
                    times(outputs, positions));
    }
    case NODE_ATTENTION: {
        size_t sequence, scores;
        attention_floats(node, rows, &sequence, &scores);
        size_t w = (size_t)node->in_shape.dims[1];
        return max3(times(3 * w, w), times(3, sequence), scores);
    }
    case NODE_LM_HEAD: {
        size_t n = times((size_t)rows, (size_t)node->in_shape.dims[0]);
        size_t d = (size_t)node->in_shape.dims[1], v = (size_t)node->out_shape.dims[1];
        return max3(times(v, d), times(n, d), times(n, v));
    }
    default:
        return 0;
    }
}

int layer_max_rows(const model_spec *spec, int index) {
    const model_node *node = node_of(spec, index);
    /* The layers hand BLAS and the backends rows x positions (and attention samples x heads)
     * as an int. */
    int64_t per_row = 1;
    switch (node->kind) {
    case NODE_DENSE:
    case NODE_LAYERNORM:
        per_row = node->in_shape.rank == 2 ? node->in_shape.dims[0] : 1;
        break;
    case NODE_EMBED:
    case NODE_LM_HEAD:
        per_row = node->out_shape.dims[0];
        break;
    case NODE_ATTENTION:
        per_row = node->in_shape.dims[0] > node->heads ? node->in_shape.dims[0] : node->heads;
        break;
    default:
        break;
    }
    return (int)(INT_MAX / per_row);
}

/* ---- the device operations each kind calls ---------------------------------------------- */

/* Forward and backward together; model_check_device() refuses a device that lacks one
 * before anything is allocated (tests/test_engine_device_ops.c runs each kind with its list
 * alone, so a list that leaves out an operation its passes call fails there). */
#define OPS(...)                                                                                   \
    { (const device_op[]){__VA_ARGS__}, sizeof((device_op[]){__VA_ARGS__}) / sizeof(device_op) }
static const struct {
    const device_op *ops;
    int count;
} kind_ops[] = {
    [NODE_DENSE] = OPS(DEVICE_OP_gemm, DEVICE_OP_bias_add, DEVICE_OP_bias_gradient_accumulate),
    [NODE_ACTIVATION] = OPS(DEVICE_OP_activation_forward, DEVICE_OP_activation_backward),
    [NODE_DROPOUT] = OPS(DEVICE_OP_dropout_forward, DEVICE_OP_dropout_backward),
    [NODE_CONV] = OPS(DEVICE_OP_im2col, DEVICE_OP_gemm, DEVICE_OP_gemm_fp32, DEVICE_OP_permute,
                      DEVICE_OP_col2im),
    [NODE_POOL] = OPS(DEVICE_OP_pool2d_forward, DEVICE_OP_pool2d_backward),
    [NODE_GLOBAL_POOL] = OPS(DEVICE_OP_pool2d_forward, DEVICE_OP_pool2d_backward),
    [NODE_FLATTEN] = {NULL, 0},
    [NODE_BATCHNORM] = OPS(DEVICE_OP_batchnorm_forward, DEVICE_OP_batchnorm_backward),
    [NODE_LAYERNORM] = OPS(DEVICE_OP_layernorm_forward, DEVICE_OP_layernorm_backward),
    [NODE_VIEW] = {NULL, 0},
    [NODE_ADD] = OPS(DEVICE_OP_add),
    [NODE_EMBED] = OPS(DEVICE_OP_embedding_forward, DEVICE_OP_embedding_backward,
                       DEVICE_OP_bias_add, DEVICE_OP_bias_gradient_accumulate),
    [NODE_ATTENTION] = OPS(DEVICE_OP_gemm, DEVICE_OP_bias_add, DEVICE_OP_bias_gradient_accumulate,
                           DEVICE_OP_permute, DEVICE_OP_gemm_strided_batched,
                           DEVICE_OP_causal_softmax_forward, DEVICE_OP_causal_softmax_backward),
    [NODE_LM_HEAD] = OPS(DEVICE_OP_gemm),
};
#undef OPS

int layer_device_ops(const model_node *node, const device_op **ops) {
    *ops = NULL;
    if ((unsigned)node->kind >= sizeof kind_ops / sizeof kind_ops[0]) return 0;
    *ops = kind_ops[node->kind].ops;
    return kind_ops[node->kind].count;
}

/* ---- forward ----------------------------------------------------------------------------- */

static void dense_forward(const layer_call *c, const model_node *node) {
    int in = node->in_shape.dims[node->in_shape.rank - 1];
    int out = node->out_shape.dims[node->out_shape.rank - 1];
    int n = (int)last_axis_rows(&node->in_shape, c->rows);
    device_gemm(c->dev, false, true, n, out, in, 1.0f, c->x, in, parameter(c, node, 0), in, 0.0f,
                c->y, out);
    if (node->bias) device_bias_add(c->dev, n, out, c->y, parameter(c, node, 1));
}

static void conv_forward(const layer_call *c, const model_node *node) {
    const conv_geometry *g = &node->geometry;
    int outputs = node->out_shape.dims[0];
    int unfolded = g->channels * g->kernel_h * g->kernel_w;
    int positions = g->out_height * g->out_width;
    int64_t in_size = (int64_t)g->channels * g->height * g->width;
    int64_t out_size = (int64_t)outputs * positions;
    int chunk = conv_chunk(node, c->rows);
    float *cols = c->workspace;
    float *wide = cols + (size_t)unfolded * positions * chunk; /* outputs x n * positions */
    for (int s = 0; s < c->rows; s += chunk) {
        int n = c->rows - s < chunk ? c->rows - s : chunk;
        int columns = n * positions;
        device_im2col(c->dev, g, n, c->x + s * in_size, cols);
        device_gemm(c->dev, false, false, outputs, columns, unfolded, 1.0f,
                    parameter(c, node, 0), unfolded, cols, columns, 0.0f, wide, columns);
        if (node->bias) /* wide += bias 1^T, in fp32 in every precision mode (device.h) */
            device_gemm_fp32(c->dev, false, false, outputs, columns, 1, 1.0f, parameter(c, node, 1),
                             1, c->ones, columns, 1.0f, wide, columns);
        /* [outputs, n, positions] -> [n, outputs, positions] */
        int dims[3] = {outputs, n, positions}, perm[3] = {1, 0, 2};
        device_permute(c->dev, 3, dims, perm, wide, c->y + s * out_size);
    }
}

static void attention_forward(const layer_call *c, const model_node *node) {
    attention_shape a = attention_shape_of(node, c->rows);
    int w = a.width, t = a.t, hs = a.head_size;
    float *qkv_permuted = c->saved, *probabilities = qkv_permuted + 3 * a.sequence;
    float *mixed = probabilities + a.scores;
    float *qkv = c->workspace, *scores = qkv + 3 * a.sequence, *heads_out = scores + a.scores;
    device_gemm(c->dev, false, true, (int)a.rows_t, 3 * w, w, 1.0f, c->x, w,
                parameter(c, node, 0), w, 0.0f, qkv, 3 * w);
    device_bias_add(c->dev, (int)a.rows_t, 3 * w, qkv, parameter(c, node, 1));
    /* [samples, T, 3, heads, hs] -> [3, samples, heads, T, hs] */
    int dims[5] = {c->rows, t, 3, a.heads, hs}, perm[5] = {2, 0, 3, 1, 4};
    device_permute(c->dev, 5, dims, perm, qkv, qkv_permuted);
    const float *q = qkv_permuted, *k = q + a.sequence, *v = k + a.sequence;
    int64_t matrix = (int64_t)t * hs, square = (int64_t)t * t;
    device_gemm_strided_batched(c->dev, false, true, t, t, hs, 1.0f, q, hs, matrix, k, hs, matrix,
                                0.0f, scores, t, square, (int)a.groups);
    device_causal_softmax_forward(c->dev, (int)a.groups, t, 1.0f / sqrtf((float)hs), scores,
                                  probabilities);
    device_gemm_strided_batched(c->dev, false, false, t, hs, t, 1.0f, probabilities, t, square, v,
                                hs, matrix, 0.0f, heads_out, hs, matrix, (int)a.groups);
    /* [samples, heads, T, hs] -> [samples, T, heads, hs] */
    int mix_dims[4] = {c->rows, a.heads, t, hs}, mix_perm[4] = {0, 2, 1, 3};
    device_permute(c->dev, 4, mix_dims, mix_perm, heads_out, mixed);
    device_gemm(c->dev, false, true, (int)a.rows_t, w, w, 1.0f, mixed, w, parameter(c, node, 2), w,
                0.0f, c->y, w);
    device_bias_add(c->dev, (int)a.rows_t, w, c->y, parameter(c, node, 3));
}

ddt_status layer_forward(const layer_call *c, const float **out) {
    const model_node *node = node_of(c->spec, c->index);
    device *dev = c->dev;
    size_t count = (size_t)c->rows * (size_t)tensor_shape_count(&node->out_shape);
    *out = c->y;
    switch (node->kind) {
    case NODE_DENSE:
        dense_forward(c, node);
        break;
    case NODE_ACTIVATION:
        device_activation_forward(dev, node->activation, count, c->x, c->y);
        break;
    case NODE_DROPOUT:
        if (!c->pass->training || node->rate == 0.0f) {
            *out = c->x; /* identity: no copy */
            break;
        }
        if (!c->pass->row_ids && c->rows > 0)
            return ddt_error(DDT_ERR_INTERNAL, "model_forward: dropout needs row ids");
        device_dropout_forward(dev, c->rows, (int)tensor_shape_count(&node->out_shape), node->rate,
                               (dropout_key){c->pass->seed, c->pass->step, c->index},
                               c->pass->row_ids, c->x, c->y);
        break;
    case NODE_CONV:
        conv_forward(c, node);
        break;
    case NODE_POOL:
    case NODE_GLOBAL_POOL:
        device_pool2d_forward(dev, node->pool, &node->geometry, c->rows, c->x, c->y);
        break;
    case NODE_VIEW:
    case NODE_FLATTEN:
        *out = c->x;
        break;
    case NODE_BATCHNORM: {
        int channels = node->in_shape.dims[0];
        int spatial = (int)(tensor_shape_count(&node->in_shape) / channels);
        device_batchnorm_forward(dev, c->rows, channels, spatial, c->x, parameter(c, node, 0),
                                 parameter(c, node, 1), NORM_EPS, c->pass->training,
                                 BATCHNORM_MOMENTUM, parameter(c, node, 2), parameter(c, node, 3),
                                 c->saved, c->saved + channels, c->y);
        break;
    }
    case NODE_LAYERNORM: {
        int width = node->in_shape.dims[node->in_shape.rank - 1];
        int n = (int)last_axis_rows(&node->in_shape, c->rows);
        device_layernorm_forward(dev, n, width, c->x, parameter(c, node, 0), parameter(c, node, 1),
                                 NORM_EPS, c->y, c->saved, c->saved + n);
        break;
    }
    case NODE_ADD:
        device_add(dev, count, c->x, c->x2, c->y);
        break;
    case NODE_EMBED: {
        int t = node->out_shape.dims[0], width = node->out_shape.dims[1];
        device_embedding_forward(dev, c->rows * t, width, c->tokens, parameter(c, node, 0), c->y);
        /* positions: one [T * width] row per sample */
        device_bias_add(dev, c->rows, t * width, c->y, parameter(c, node, 1));
        break;
    }
    case NODE_ATTENTION:
        attention_forward(c, node);
        break;
    case NODE_LM_HEAD: {
        int width = node->in_shape.dims[1], vocab = node->out_shape.dims[1];
        int n = (int)last_axis_rows(&node->in_shape, c->rows);
        const model_tensor *table = &c->spec->tensors[node->tied_tensor];
        device_gemm(dev, false, true, n, vocab, width, 1.0f, c->x, width,
                    c->parameters + table->offset, width, 0.0f, c->y, vocab);
        break;
    }
    }
    return DDT_OK;
}

/* ---- backward ---------------------------------------------------------------------------- */

static ddt_status ready_at(const layer_call *c, const model_node *node,
                           model_gradient_ready_fn ready, void *context) {
    if (!ready || node->parameter_ordinal < 0) return DDT_OK;
    return ready(context, tensor(c->spec, node, 0)->offset);
}

static ddt_status dense_backward(const layer_call *c, const model_node *node, const float *dy,
                                 float *dx, model_gradient_ready_fn ready, void *context) {
    int in = node->in_shape.dims[node->in_shape.rank - 1];
    int out = node->out_shape.dims[node->out_shape.rank - 1];
    int n = (int)last_axis_rows(&node->in_shape, c->rows);
    /* dW += dy^T x and db += column sums of dy, then tell the caller they are final before
     * computing dx, so a reduction of them can overlap that last product. */
    device_gemm(c->dev, true, false, out, in, n, 1.0f, dy, out, c->x, in, 1.0f,
                gradient(c, node, 0), in);
    if (node->bias) device_bias_gradient_accumulate(c->dev, n, out, dy, gradient(c, node, 1));
    DDT_CHECK(ready_at(c, node, ready, context));
    if (dx)
        device_gemm(c->dev, false, false, n, in, out, 1.0f, dy, out, parameter(c, node, 0), in,
                    0.0f, dx, in);
    return DDT_OK;
}

static ddt_status conv_backward(const layer_call *c, const model_node *node, const float *dy,
                                float *dx, model_gradient_ready_fn ready, void *context) {
    const conv_geometry *g = &node->geometry;
    int outputs = node->out_shape.dims[0];
    int unfolded = g->channels * g->kernel_h * g->kernel_w;
    int positions = g->out_height * g->out_width;
    int64_t in_size = (int64_t)g->channels * g->height * g->width;
    int64_t out_size = (int64_t)outputs * positions;
    int chunk = conv_chunk(node, c->rows);
    float *cols = c->workspace;
    float *d_cols = cols + (size_t)unfolded * positions * chunk;
    float *d_wide = d_cols + (size_t)unfolded * positions * chunk; /* outputs x n * positions */
    for (int s = 0; s < c->rows; s += chunk) {
        int n = c->rows - s < chunk ? c->rows - s : chunk;
        int columns = n * positions;
        /* [n, outputs, positions] -> [outputs, n, positions] */
        int dims[3] = {n, outputs, positions}, perm[3] = {1, 0, 2};
        device_permute(c->dev, 3, dims, perm, dy + s * out_size, d_wide);
        if (node->bias) /* d bias += dY 1, in fp32 in every precision mode (device.h) */
            device_gemm_fp32(c->dev, false, false, outputs, 1, columns, 1.0f, d_wide, columns,
                             c->ones, 1, 1.0f, gradient(c, node, 1), 1);
        device_im2col(c->dev, g, n, c->x + s * in_size, cols);
        /* dW [outputs x unfolded] += dY cols^T */
        device_gemm(c->dev, false, true, outputs, unfolded, columns, 1.0f, d_wide, columns, cols,
                    columns, 1.0f, gradient(c, node, 0), unfolded);
        if (dx) {
            /* d_cols [unfolded x columns] = W^T dY */
            device_gemm(c->dev, true, false, unfolded, columns, outputs, 1.0f,
                        parameter(c, node, 0), unfolded, d_wide, columns, 0.0f, d_cols, columns);
            device_col2im(c->dev, g, n, d_cols, dx + s * in_size);
        }
    }
    return ready_at(c, node, ready, context);
}

static ddt_status attention_backward(const layer_call *c, const model_node *node,
                                     const float *dy, float *dx, model_gradient_ready_fn ready,
                                     void *context) {
    attention_shape a = attention_shape_of(node, c->rows);
    int w = a.width, t = a.t, hs = a.head_size;
    const float *qkv_permuted = c->saved, *probabilities = qkv_permuted + 3 * a.sequence;
    const float *mixed = probabilities + a.scores;
    const float *q = qkv_permuted, *k = q + a.sequence, *v = k + a.sequence;
    float *d_mixed = c->workspace, *d_heads = d_mixed + a.sequence;
    float *d_probabilities = d_heads + a.sequence, *d_scores = d_probabilities + a.scores;
    float *d_qkv_permuted = d_scores + a.scores, *d_qkv = d_qkv_permuted + 3 * a.sequence;
    device *dev = c->dev;
    /* c_proj */
    device_gemm(dev, true, false, w, w, (int)a.rows_t, 1.0f, dy, w, mixed, w, 1.0f,
                gradient(c, node, 2), w);
    device_bias_gradient_accumulate(dev, (int)a.rows_t, w, dy, gradient(c, node, 3));
    device_gemm(dev, false, false, (int)a.rows_t, w, w, 1.0f, dy, w, parameter(c, node, 2), w, 0.0f,
                d_mixed, w);
    int mix_dims[4] = {c->rows, t, a.heads, hs}, mix_perm[4] = {0, 2, 1, 3};
    device_permute(dev, 4, mix_dims, mix_perm, d_mixed, d_heads);
    int64_t matrix = (int64_t)t * hs, square = (int64_t)t * t;
    int groups = (int)a.groups;
    /* dP = dO V^T, dV = P^T dO */
    device_gemm_strided_batched(dev, false, true, t, t, hs, 1.0f, d_heads, hs, matrix, v, hs,
                                matrix, 0.0f, d_probabilities, t, square, groups);
    float *d_q = d_qkv_permuted, *d_k = d_q + a.sequence, *d_v = d_k + a.sequence;
    device_gemm_strided_batched(dev, true, false, t, hs, t, 1.0f, probabilities, t, square, d_heads,
                                hs, matrix, 0.0f, d_v, hs, matrix, groups);
    device_causal_softmax_backward(dev, groups, t, 1.0f / sqrtf((float)hs), probabilities,
                                   d_probabilities, d_scores);
    /* dQ = dS K, dK = dS^T Q */
    device_gemm_strided_batched(dev, false, false, t, hs, t, 1.0f, d_scores, t, square, k, hs,
                                matrix, 0.0f, d_q, hs, matrix, groups);
    device_gemm_strided_batched(dev, true, false, t, hs, t, 1.0f, d_scores, t, square, q, hs,
                                matrix, 0.0f, d_k, hs, matrix, groups);
    /* [3, samples, heads, T, hs] -> [samples, T, 3, heads, hs] */
    int dims[5] = {3, c->rows, a.heads, t, hs}, perm[5] = {1, 3, 0, 2, 4};
    device_permute(dev, 5, dims, perm, d_qkv_permuted, d_qkv);
    /* c_attn */
    device_gemm(dev, true, false, 3 * w, w, (int)a.rows_t, 1.0f, d_qkv, 3 * w, c->x, w, 1.0f,
                gradient(c, node, 0), w);
    device_bias_gradient_accumulate(dev, (int)a.rows_t, 3 * w, d_qkv, gradient(c, node, 1));
    DDT_CHECK(ready_at(c, node, ready, context));
    if (dx)
        device_gemm(dev, false, false, (int)a.rows_t, w, 3 * w, 1.0f, d_qkv, 3 * w,
                    parameter(c, node, 0), w, 0.0f, dx, w);
    return DDT_OK;
}

ddt_status layer_backward(const layer_call *c, const float *y, const float *dy, float *dx,
                          model_gradient_ready_fn ready, void *context) {
    const model_node *node = node_of(c->spec, c->index);
    device *dev = c->dev;
    size_t count = (size_t)c->rows * (size_t)tensor_shape_count(&node->out_shape);
    switch (node->kind) {
    case NODE_DENSE:
        return dense_backward(c, node, dy, dx, ready, context);
    case NODE_CONV:
        return conv_backward(c, node, dy, dx, ready, context);
    case NODE_ATTENTION:
        return attention_backward(c, node, dy, dx, ready, context);
    case NODE_ACTIVATION:
        if (dx) device_activation_backward(dev, node->activation, count, c->x, y, dy, dx);
        return DDT_OK;
    case NODE_DROPOUT:
        if (!c->pass->row_ids && c->rows > 0)
            return ddt_error(DDT_ERR_INTERNAL, "model_backward: dropout needs row ids");
        if (dx)
            device_dropout_backward(dev, c->rows, (int)tensor_shape_count(&node->out_shape), node->rate,
                                    (dropout_key){c->pass->seed, c->pass->step, c->index},
                                    c->pass->row_ids, dy, dx);
        return DDT_OK;
    case NODE_POOL:
    case NODE_GLOBAL_POOL:
        if (dx) device_pool2d_backward(dev, node->pool, &node->geometry, c->rows, c->x, y, dy, dx);
        return DDT_OK;
    case NODE_BATCHNORM: {
        int channels = node->in_shape.dims[0];
        int spatial = (int)(tensor_shape_count(&node->in_shape) / channels);
        /* Its parameters' gradients and dx come out of one pass; dx is needed for them. */
        float *target = dx ? dx : c->workspace;
        device_batchnorm_backward(dev, c->rows, channels, spatial, c->x, dy, parameter(c, node, 0),
                                  c->saved, c->saved + channels, target, gradient(c, node, 0),
                                  gradient(c, node, 1));
        return ready_at(c, node, ready, context);
    }
    case NODE_LAYERNORM: {
        int width = node->in_shape.dims[node->in_shape.rank - 1];
        int n = (int)last_axis_rows(&node->in_shape, c->rows);
        float *target = dx ? dx : c->workspace;
        device_layernorm_backward(dev, n, width, c->x, dy, parameter(c, node, 0), c->saved,
                                  c->saved + n, target, gradient(c, node, 0), gradient(c, node, 1));
        return ready_at(c, node, ready, context);
    }
    case NODE_EMBED: {
        int t = node->out_shape.dims[0], width = node->out_shape.dims[1];
        device_bias_gradient_accumulate(dev, c->rows, t * width, dy, gradient(c, node, 1));
        device_embedding_backward(dev, c->rows * t, width, c->tokens, dy, gradient(c, node, 0));
        return ready_at(c, node, ready, context);
    }
    case NODE_LM_HEAD: {
        int width = node->in_shape.dims[1], vocab = node->out_shape.dims[1];
        int n = (int)last_axis_rows(&node->in_shape, c->rows);
        const model_tensor *table = &c->spec->tensors[node->tied_tensor];
        /* The token table's gradient is final only after embed's backward. */
        device_gemm(dev, true, false, vocab, width, n, 1.0f, dy, vocab, c->x, width, 1.0f,
                    c->gradients + table->offset, width);
        if (dx)
            device_gemm(dev, false, false, n, width, vocab, 1.0f, dy, vocab,
                        c->parameters + table->offset, width, 0.0f, dx, width);
        return DDT_OK;
    }
    case NODE_VIEW:
    case NODE_FLATTEN:
    case NODE_ADD:
        return ddt_error(DDT_ERR_INTERNAL, "layer_backward: %s passes gradients unchanged",
                         model_node_word(node));
    }
    return DDT_OK;
}
