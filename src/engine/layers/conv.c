/* conv.c - conv(OUT,kK[,sS][,pP][,nobias]), nn.Conv2d on C x H x W images.
 *
 * im2col + one GEMM per chunk of samples: the windows of a chunk are unfolded into a
 * (C*K*K) x (samples*positions) matrix, and one product W [OUT x C*K*K] times it gives the
 * chunk's outputs channel-major (OUT x samples*positions); the bias joins as a rank-one
 * product with a row of ones (in fp32 whatever the precision: device_gemm_fp32), and a permute
 * puts the outputs in NCHW. Backward: the output gradient permuted channel-major,
 * dW += dY cols^T, d cols = W^T dY, col2im. All products are plain (no operand transposed
 * twice), so BLAS and cuBLAS run them at their best; one large product per chunk rather than
 * one per sample (small, slow), and the chunk bounds the unfolded matrix's memory
 * (CONV_WORKSPACE_FLOATS). Winograd or direct convolutions would save memory traffic but would
 * need their own code on every backend; im2col reuses the GEMM that already runs at the
 * machine's speed.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "engine/layers/layer_kind.h"

/* The unfolded windows of one chunk of samples take at most this many floats (16 MiB), unless
 * a single sample needs more. */
#define CONV_WORKSPACE_FLOATS ((size_t)4 << 20)

/* conv(OUT,kK[,sS][,pP][,nobias]) after "conv(": each setting at most once. */
static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    DDT_CHECK(grammar_need_images(g, start, "conv"));
    int outputs, kernel = 0, stride = 1, pad = 0;
    bool bias = true, kernel_given = false, stride_given = false, pad_given = false;
    DDT_CHECK(grammar_read_count(g, start, "conv's output channels", 1, MODEL_MAX_WIDTH, &outputs));
    while (grammar_accept(g, ',')) {
        char argument[32];
        size_t length = grammar_argument_at(g, argument, sizeof argument);
        char key = g->source[g->pos];
        bool numbered = length > 1 && isdigit((unsigned char)g->source[g->pos + 1]);
        if (length == 0) return grammar_fail(g, start, "conv(...) has an empty argument");
        if (length == 6 && strncmp(g->source + g->pos, "nobias", 6) == 0) {
            if (!bias) return grammar_fail(g, start, "conv(...) says nobias twice");
            g->pos += 6;
            bias = false;
        } else if (key == 'k' && numbered) {
            DDT_CHECK(
                grammar_read_setting(g, start, "conv", "the kernel", 1, &kernel_given, &kernel));
        } else if (key == 's' && numbered) {
            DDT_CHECK(
                grammar_read_setting(g, start, "conv", "the stride", 1, &stride_given, &stride));
        } else if (key == 'p' && numbered) {
            DDT_CHECK(grammar_read_setting(g, start, "conv", "the padding", 0, &pad_given, &pad));
        } else {
            return grammar_fail(g, start,
                                "conv(...) has no argument '%s' (it takes "
                                "OUT,kK[,sS][,pP][,nobias])",
                                argument);
        }
    }
    DDT_CHECK(grammar_expect(g, ')', start, "to close conv("));
    if (kernel == 0)
        return grammar_fail(g, start, "conv needs its kernel size, e.g. conv(32,k3,p1)");
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_CONV, &node));
    int channels = g->shape.dims[0];
    char what[48];
    snprintf(what, sizeof what, "--model: conv(%d,k%d)", outputs, kernel);
    DDT_CHECK(conv_geometry_make(channels, g->shape.dims[1], g->shape.dims[2], kernel, kernel,
                                 stride, stride, pad, pad, what, &node->geometry));
    node->bias = bias;
    node->out_shape = tensor_shape_3(outputs, node->geometry.out_height, node->geometry.out_width);
    /* Each window unfolds to channels x K x K values (the GEMM's inner size, an int). */
    int64_t unfolded = (int64_t)channels * kernel * kernel,
            spread = (int64_t)outputs * kernel * kernel;
    if (unfolded > INT_MAX)
        return grammar_fail(g, start,
                            "each window holds %d channels x %dx%d = %lld values, more than %d",
                            channels, kernel, kernel, (long long)unfolded, INT_MAX);
    if (spread > INT_MAX)
        return grammar_fail(g, start, "%d outputs x a %dx%d kernel = %lld values, more than %d",
                            outputs, kernel, kernel, (long long)spread, INT_MAX);
    model_tensor *w;
    int dims[4] = {outputs, channels, kernel, kernel};
    DDT_CHECK(grammar_add_weight(g, start, prefix, 4, dims, (int)unfolded, (int)spread, &w));
    if (bias) DDT_CHECK(grammar_add_bias(g, start, prefix, outputs));
    DDT_CHECK(grammar_finish_node(g, start, node));
    grammar_emit(g, "conv(%d,k%d", outputs, kernel);
    if (stride != 1) grammar_emit(g, ",s%d", stride);
    if (pad != 0) grammar_emit(g, ",p%d", pad);
    grammar_emit(g, "%s)", bias ? "" : ",nobias");
    return DDT_OK;
}

/* A window's unfolded values (C x K x K) and its output positions (H' x W'); both at most
 * INT_MAX for a parsed spec. */
static size_t conv_unfolded(const conv_geometry *g) {
    return layer_times(layer_times((size_t)g->channels, (size_t)g->kernel_h), (size_t)g->kernel_w);
}
static size_t conv_positions(const conv_geometry *g) {
    return layer_times((size_t)g->out_height, (size_t)g->out_width);
}

/* Samples per chunk. */
static int conv_chunk(const model_node *node, int rows) {
    const conv_geometry *g = &node->geometry;
    size_t per_sample =
        layer_times(layer_plus(layer_times(2, conv_unfolded(g)), (size_t)node->out_shape.dims[0]),
                    conv_positions(g));
    size_t chunk = CONV_WORKSPACE_FLOATS / per_sample;
    if (chunk < 1) chunk = 1;
    if (chunk > (size_t)rows) chunk = rows > 0 ? (size_t)rows : 1;
    return (int)chunk;
}

static size_t workspace_floats(const model_node *node, int rows, bool input_gradient) {
    (void)input_gradient;
    const conv_geometry *g = &node->geometry;
    size_t positions = layer_times(conv_positions(g), (size_t)conv_chunk(node, rows));
    return layer_times(
        layer_plus(layer_times(2, conv_unfolded(g)), (size_t)node->out_shape.dims[0]), positions);
}

static size_t ones_floats(const model_node *node, int rows) {
    if (!node->bias) return 0;
    return layer_times(conv_positions(&node->geometry), (size_t)conv_chunk(node, rows));
}

static size_t max_gemm_operand_floats(const model_node *node, int rows) {
    const conv_geometry *g = &node->geometry;
    size_t positions = layer_times(conv_positions(g), (size_t)conv_chunk(node, rows));
    size_t unfolded = conv_unfolded(g);
    size_t outputs = (size_t)node->out_shape.dims[0];
    return layer_max3(layer_times(unfolded, outputs), layer_times(unfolded, positions),
                      layer_times(outputs, positions));
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
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
                    layer_parameter(c, node, 0), unfolded, cols, columns, 0.0f, wide, columns);
        if (node->bias) /* wide += bias 1^T, in fp32 in every precision mode (device.h) */
            device_gemm_fp32(c->dev, false, false, outputs, columns, 1, 1.0f,
                             layer_parameter(c, node, 1), 1, c->ones, columns, 1.0f, wide, columns);
        /* [outputs, n, positions] -> [n, outputs, positions] */
        int dims[3] = {outputs, n, positions}, perm[3] = {1, 0, 2};
        device_permute(c->dev, 3, dims, perm, wide, c->y + s * out_size);
    }
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
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
                             c->ones, 1, 1.0f, layer_gradient(c, node, 1), 1);
        device_im2col(c->dev, g, n, c->x + s * in_size, cols);
        /* dW [outputs x unfolded] += dY cols^T */
        device_gemm(c->dev, false, true, outputs, unfolded, columns, 1.0f, d_wide, columns, cols,
                    columns, 1.0f, layer_gradient(c, node, 0), unfolded);
        if (dx) {
            /* d_cols [unfolded x columns] = W^T dY */
            device_gemm(c->dev, true, false, unfolded, columns, outputs, 1.0f,
                        layer_parameter(c, node, 0), unfolded, d_wide, columns, 0.0f, d_cols,
                        columns);
            device_col2im(c->dev, g, n, d_cols, dx + s * in_size);
        }
    }
    return layer_ready(c, node, ready, context);
}

static const layer_word words[] = {{.word = "conv", .call = true, .parse = parse}};

const layer_kind layer_conv = {
    .name = "conv",
    .words = words,
    .word_count = 1,
    .fan_in_weight = true,
    .workspace_floats = workspace_floats,
    .ones_floats = ones_floats,
    .max_gemm_operand_floats = max_gemm_operand_floats,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_im2col, DEVICE_OP_gemm, DEVICE_OP_gemm_fp32, DEVICE_OP_permute,
              DEVICE_OP_col2im),
};
