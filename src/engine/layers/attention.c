/* attention.c - attn(HEADS): causal multi-head self-attention over a T x D sequence, with its
 * two projections (c_attn: q, k and v; c_proj), named as nanoGPT's.
 *
 * One product makes q, k and v for all heads (c_attn); a permute gives each of them as
 * [samples * heads] matrices of T x head_size, so scores, the causal softmax and the weighted
 * sum are strided-batched products over all samples and heads at once; c_proj follows. The
 * probabilities are kept for backward (samples x heads x T x T floats, what the memory plan
 * counts).
 */
#include <math.h>

#include "engine/layers/layer_kind.h"

ddt_status attention_build(grammar *g, size_t start, const char *prefix, int heads,
                           float projection_std) {
    if (g->shape.rank != 2)
        return grammar_fail(g, start, "attn needs a sequence (T x D), after embed(D)");
    if (g->shape.dims[0] < MODEL_MIN_ATTENTION_CONTEXT)
        return grammar_fail(g, start, "a sequence of %d position%s is too short: %s",
                            g->shape.dims[0], g->shape.dims[0] == 1 ? "" : "s",
                            ATTENTION_CONTEXT_REASON);
    int width = g->shape.dims[1];
    if (width % heads != 0)
        return grammar_fail(g, start, "the width %d does not split into %d heads", width, heads);
    model_node *node;
    DDT_CHECK(grammar_new_node(g, start, NODE_ATTENTION, &node));
    node->heads = heads;
    char name[MODEL_TENSOR_MAX_NAME];
    model_tensor *t;
    int qkv[2] = {3 * width, width}, projection[2] = {width, width};
    DDT_CHECK(grammar_join(g, start, name, prefix, "c_attn."));
    DDT_CHECK(grammar_add_weight(g, start, name, 2, qkv, width, 3 * width, &t));
    t->init = TENSOR_INIT_NORMAL;
    t->init_std = 0.02f;
    DDT_CHECK(grammar_add_bias(g, start, name, 3 * width));
    DDT_CHECK(grammar_join(g, start, name, prefix, "c_proj."));
    DDT_CHECK(grammar_add_weight(g, start, name, 2, projection, width, width, &t));
    t->init = TENSOR_INIT_NORMAL;
    t->init_std = projection_std;
    DDT_CHECK(grammar_add_bias(g, start, name, width));
    DDT_CHECK(grammar_finish_node(g, start, node));
    return DDT_OK;
}

/* attn(HEADS) after "attn(". */
static ddt_status parse(grammar *g, const layer_word *word, size_t start, const char *prefix) {
    (void)word;
    int heads;
    DDT_CHECK(grammar_read_count(g, start, "the number of heads", 1, 256, &heads));
    if (g->source[g->pos] == ',')
        return grammar_fail(g, start, "attn(...) takes one argument, its number of heads");
    DDT_CHECK(grammar_expect(g, ')', start, "to close attn("));
    DDT_CHECK(attention_build(g, start, prefix, heads, 0.02f));
    grammar_emit(g, "attn(%d)", heads);
    return DDT_OK;
}

/* Its sizes for `rows` samples. */
typedef struct attention_shape {
    int64_t rows_t; /* samples * T */
    int t, width, heads, head_size;
    int64_t groups;   /* samples * heads */
    int64_t sequence; /* samples * T * width: one of q, k, v */
    int64_t scores;   /* samples * heads * T * T */
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

/* Its floats for `rows` samples, saturating: one of q, k, v (samples x T x width), and the
 * scores (samples x heads x T x T). */
static void attention_floats(const model_node *node, int rows, size_t *sequence, size_t *scores) {
    size_t t = (size_t)node->in_shape.dims[0], width = (size_t)node->in_shape.dims[1];
    *sequence = layer_times(layer_times((size_t)rows, t), width);
    *scores = layer_times(layer_times(layer_times((size_t)rows, (size_t)node->heads), t), t);
}

static size_t saved_floats(const model_node *node, int rows) {
    size_t sequence, scores;
    attention_floats(node, rows, &sequence, &scores);
    return layer_plus(layer_times(4, sequence), scores); /* q k v, probabilities, mix */
}

static size_t workspace_floats(const model_node *node, int rows, bool input_gradient) {
    (void)input_gradient;
    size_t sequence, scores;
    attention_floats(node, rows, &sequence, &scores);
    size_t forward = layer_plus(layer_times(4, sequence), scores);
    size_t backward = layer_plus(layer_times(8, sequence), layer_times(2, scores));
    return forward > backward ? forward : backward;
}

static size_t max_gemm_operand_floats(const model_node *node, int rows) {
    size_t sequence, scores;
    attention_floats(node, rows, &sequence, &scores);
    size_t w = (size_t)node->in_shape.dims[1];
    return layer_max3(layer_times(3 * w, w), layer_times(3, sequence), scores);
}

/* It hands the backends samples x T rows, and samples x heads batches. */
static int64_t rows_per_sample(const model_node *node) {
    return node->in_shape.dims[0] > node->heads ? node->in_shape.dims[0] : node->heads;
}

static ddt_status forward(const layer_call *c, const model_node *node, const float **out) {
    attention_shape a = attention_shape_of(node, c->rows);
    int w = a.width, t = a.t, hs = a.head_size;
    float *qkv_permuted = c->saved, *probabilities = qkv_permuted + 3 * a.sequence;
    float *mixed = probabilities + a.scores;
    float *qkv = c->workspace, *scores = qkv + 3 * a.sequence, *heads_out = scores + a.scores;
    device_gemm(c->dev, false, true, (int)a.rows_t, 3 * w, w, 1.0f, c->x, w,
                layer_parameter(c, node, 0), w, 0.0f, qkv, 3 * w);
    device_bias_add(c->dev, (int)a.rows_t, 3 * w, qkv, layer_parameter(c, node, 1));
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
    device_gemm(c->dev, false, true, (int)a.rows_t, w, w, 1.0f, mixed, w,
                layer_parameter(c, node, 2), w, 0.0f, c->y, w);
    device_bias_add(c->dev, (int)a.rows_t, w, c->y, layer_parameter(c, node, 3));
    *out = c->y;
    return DDT_OK;
}

static ddt_status backward(const layer_call *c, const model_node *node, const float *y,
                           const float *dy, float *dx, model_gradient_ready_fn ready,
                           void *context) {
    (void)y;
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
                layer_gradient(c, node, 2), w);
    device_bias_gradient_accumulate(dev, (int)a.rows_t, w, dy, layer_gradient(c, node, 3));
    device_gemm(dev, false, false, (int)a.rows_t, w, w, 1.0f, dy, w, layer_parameter(c, node, 2), w,
                0.0f, d_mixed, w);
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
                layer_gradient(c, node, 0), w);
    device_bias_gradient_accumulate(dev, (int)a.rows_t, 3 * w, d_qkv, layer_gradient(c, node, 1));
    DDT_CHECK(layer_ready(c, node, ready, context));
    if (dx)
        device_gemm(dev, false, false, (int)a.rows_t, w, 3 * w, 1.0f, d_qkv, 3 * w,
                    layer_parameter(c, node, 0), w, 0.0f, dx, w);
    return DDT_OK;
}

static const layer_word words[] = {
    {.word = "attn", .call = true, .help = "attn(H)", .parse = parse}};

const layer_kind layer_attention = {
    .name = "attn",
    .words = words,
    .word_count = 1,
    .saved_floats = saved_floats,
    .workspace_floats = workspace_floats,
    .max_gemm_operand_floats = max_gemm_operand_floats,
    .rows_per_sample = rows_per_sample,
    .forward = forward,
    .backward = backward,
    LAYER_OPS(DEVICE_OP_gemm, DEVICE_OP_bias_add, DEVICE_OP_bias_gradient_accumulate,
              DEVICE_OP_permute, DEVICE_OP_gemm_strided_batched, DEVICE_OP_causal_softmax_forward,
              DEVICE_OP_causal_softmax_backward),
};
