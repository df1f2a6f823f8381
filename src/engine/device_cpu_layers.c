/* device_cpu_layers.c - the CPU backend's layer-engine operations (device.h documents each):
 * batched GEMMs, permutes, convolution unfolding, pooling, normalisation, embeddings and
 * attention's causal softmax. Plain loops in a fixed order, so every result is the same run
 * after run; reductions over many values sum in double. The table entries are collected in
 * device_cpu.c through device_cpu_layers.h.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("tree-vectorize", "vect-cost-model=dynamic", "no-math-errno", "no-trapping-math")
#endif

#include "engine/device_cpu_layers.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

void cpu_gemm_strided_batched(device *dev, bool transpose_a, bool transpose_b, int m, int n,
                              int k, float alpha, const float *a, int lda, int64_t stride_a,
                              const float *b, int ldb, int64_t stride_b, float beta, float *c,
                              int ldc, int64_t stride_c, int batch) {
    (void)dev;
    for (int i = 0; i < batch; i++)
        cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
                    transpose_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a + i * stride_a, lda,
                    b + i * stride_b, ldb, beta, c + i * stride_c, ldc);
}

void cpu_add(device *dev, size_t count, const float *a, const float *b, float *out) {
    (void)dev;
    for (size_t i = 0; i < count; i++)
        out[i] = a[i] + b[i];
}

void cpu_permute(device *dev, int rank, const int *dims, const int *perm, const float *in,
                 float *out) {
    (void)dev;
    /* Pad to 6 axes of size 1 in front, so the loop nest is fixed. */
    int64_t size[6], in_stride[6];
    int pad = 6 - rank;
    for (int i = 0; i < 6; i++)
        size[i] = i < pad ? 1 : dims[i - pad];
    int64_t stride = 1;
    for (int i = 5; i >= 0; i--) {
        in_stride[i] = stride;
        stride *= size[i];
    }
    /* out's axis i is in's axis perm[i]: walk out in order, find where each element came from. */
    int64_t out_size[6], from_stride[6];
    for (int i = 0; i < 6; i++) {
        int axis = i < pad ? i : pad + perm[i - pad];
        out_size[i] = size[axis];
        from_stride[i] = in_stride[axis];
    }
    int64_t o = 0;
    for (int64_t i0 = 0; i0 < out_size[0]; i0++)
        for (int64_t i1 = 0; i1 < out_size[1]; i1++)
            for (int64_t i2 = 0; i2 < out_size[2]; i2++)
                for (int64_t i3 = 0; i3 < out_size[3]; i3++)
                    for (int64_t i4 = 0; i4 < out_size[4]; i4++) {
                        const float *source = in + i0 * from_stride[0] + i1 * from_stride[1] +
                                              i2 * from_stride[2] + i3 * from_stride[3] +
                                              i4 * from_stride[4];
                        int64_t step = from_stride[5];
                        if (step == 1) { /* the innermost axis stays innermost: a copy */
                            memcpy(out + o, source, (size_t)out_size[5] * sizeof *out);
                            o += out_size[5];
                            continue;
                        }
                        for (int64_t i5 = 0; i5 < out_size[5]; i5++)
                            out[o++] = source[i5 * step];
                    }
}

/* The outputs [first, end) whose input column ow * stride - pad + j lies inside the row. */
static void valid_outputs(const conv_geometry *g, int j, int *first, int *end) {
    int lo = 0, hi = g->out_width;
    /* ow * stride >= pad - j */
    int need = g->pad_w - j;
    if (need > 0) lo = (need + g->stride_w - 1) / g->stride_w;
    /* ow * stride - pad + j <= width - 1 */
    int limit = g->width - 1 + g->pad_w - j;
    hi = limit < 0 ? 0 : limit / g->stride_w + 1;
    if (hi > g->out_width) hi = g->out_width;
    if (lo > hi) lo = hi;
    *first = lo;
    *end = hi;
}

void cpu_im2col(device *dev, const conv_geometry *g, int samples, const float *x, float *cols) {
    (void)dev;
    int64_t plane = (int64_t)g->out_height * g->out_width;
    int64_t columns = (int64_t)samples * plane;
    int64_t sample_size = (int64_t)g->channels * g->height * g->width;
    for (int c = 0; c < g->channels; c++)
        for (int i = 0; i < g->kernel_h; i++)
            for (int j = 0; j < g->kernel_w; j++) {
                int64_t row = ((int64_t)c * g->kernel_h + i) * g->kernel_w + j;
                float *out = cols + row * columns;
                for (int s = 0; s < samples; s++) {
                    const float *channel =
                        x + s * sample_size + (int64_t)c * g->height * g->width;
                    float *sample_out = out + s * plane;
                    for (int oh = 0; oh < g->out_height; oh++) {
                        int h = oh * g->stride_h - g->pad_h + i;
                        float *line = sample_out + (int64_t)oh * g->out_width;
                        if (h < 0 || h >= g->height) {
                            memset(line, 0, (size_t)g->out_width * sizeof *line);
                            continue;
                        }
                        const float *source = channel + (int64_t)h * g->width;
                        int first, end; /* the outputs whose column w lies inside */
                        valid_outputs(g, j, &first, &end);
                        for (int ow = 0; ow < first; ow++)
                            line[ow] = 0.0f;
                        if (g->stride_w == 1) {
                            int w0 = first - g->pad_w + j;
                            if (end > first)
                                memcpy(line + first, source + w0, (size_t)(end - first) * sizeof *line);
                        } else {
                            for (int ow = first; ow < end; ow++)
                                line[ow] = source[ow * g->stride_w - g->pad_w + j];
                        }
                        for (int ow = end > first ? end : first; ow < g->out_width; ow++)
                            line[ow] = 0.0f;
                    }
                }
            }
}

void cpu_col2im(device *dev, const conv_geometry *g, int samples, const float *cols, float *dx) {
    (void)dev;
    int64_t plane = (int64_t)g->out_height * g->out_width;
    int64_t columns = (int64_t)samples * plane;
    int64_t sample_size = (int64_t)g->channels * g->height * g->width;
    memset(dx, 0, (size_t)(samples * sample_size) * sizeof *dx);
    /* The same walk as im2col, adding instead of reading: one fixed order. */
    for (int c = 0; c < g->channels; c++)
        for (int i = 0; i < g->kernel_h; i++)
            for (int j = 0; j < g->kernel_w; j++) {
                int64_t row = ((int64_t)c * g->kernel_h + i) * g->kernel_w + j;
                const float *in = cols + row * columns;
                for (int s = 0; s < samples; s++) {
                    float *channel = dx + s * sample_size + (int64_t)c * g->height * g->width;
                    const float *sample_in = in + s * plane;
                    for (int oh = 0; oh < g->out_height; oh++) {
                        int h = oh * g->stride_h - g->pad_h + i;
                        if (h < 0 || h >= g->height) continue;
                        float *target = channel + (int64_t)h * g->width;
                        const float *line = sample_in + (int64_t)oh * g->out_width;
                        int first, end;
                        valid_outputs(g, j, &first, &end);
                        if (g->stride_w == 1) {
                            float *shifted = target - g->pad_w + j;
                            for (int ow = first; ow < end; ow++)
                                shifted[ow] += line[ow];
                        } else {
                            for (int ow = first; ow < end; ow++)
                                target[ow * g->stride_w - g->pad_w + j] += line[ow];
                        }
                    }
                }
            }
}

/* The window of output (oh, ow): rows [h0, h1) and columns [w0, w1) of the input, clipped. */
typedef struct window {
    int h0, h1, w0, w1;
} window;

static window window_at(const conv_geometry *g, int oh, int ow) {
    window r;
    r.h0 = oh * g->stride_h - g->pad_h;
    r.w0 = ow * g->stride_w - g->pad_w;
    r.h1 = r.h0 + g->kernel_h;
    r.w1 = r.w0 + g->kernel_w;
    if (r.h0 < 0) r.h0 = 0;
    if (r.w0 < 0) r.w0 = 0;
    if (r.h1 > g->height) r.h1 = g->height;
    if (r.w1 > g->width) r.w1 = g->width;
    return r;
}

/* The common pooling of CNNs: 2x2 windows at stride 2 without padding, which tile the input
 * (an odd last row or column is never read). Each window is the generic loop's, unrolled in
 * the same order, so the results are the same bits. */
static bool tiles_2x2(const conv_geometry *g) {
    return g->kernel_h == 2 && g->kernel_w == 2 && g->stride_h == 2 && g->stride_w == 2 &&
           g->pad_h == 0 && g->pad_w == 0;
}

/* The generic loop's "v > value || isnan(v)", over a window's four values in row order. */
static inline float max_of_4(float a, float b, float c, float d) {
    float value = a; /* -INFINITY < a unless a is -INFINITY or NaN: either way a wins */
    if (b > value || isnan(b)) value = b;
    if (c > value || isnan(c)) value = c;
    if (d > value || isnan(d)) value = d;
    return value;
}

static void pool_2x2_forward(pool_kind kind, const conv_geometry *g, int64_t planes,
                             const float *x, float *y) {
    int64_t in_plane = (int64_t)g->height * g->width;
    int64_t out_plane = (int64_t)g->out_height * g->out_width;
    for (int64_t p = 0; p < planes; p++)
        for (int oh = 0; oh < g->out_height; oh++) {
            const float *top = x + p * in_plane + (int64_t)(2 * oh) * g->width;
            const float *bottom = top + g->width;
            float *out = y + p * out_plane + (int64_t)oh * g->out_width;
            if (kind == POOL_MAX) {
                for (int ow = 0; ow < g->out_width; ow++)
                    out[ow] = max_of_4(top[2 * ow], top[2 * ow + 1], bottom[2 * ow],
                                       bottom[2 * ow + 1]);
            } else {
                for (int ow = 0; ow < g->out_width; ow++) {
                    float sum = 0.0f;
                    sum += top[2 * ow];
                    sum += top[2 * ow + 1];
                    sum += bottom[2 * ow];
                    sum += bottom[2 * ow + 1];
                    out[ow] = sum / 4.0f;
                }
            }
        }
}

/* Writes every position of dx the windows cover (all but an odd last row or column, which the
 * caller zeroes). Max: the window's first value equal to its maximum gets the gradient. */
static void pool_2x2_backward(pool_kind kind, const conv_geometry *g, int64_t planes,
                              const float *x, const float *y, const float *dy, float *dx) {
    int64_t in_plane = (int64_t)g->height * g->width;
    int64_t out_plane = (int64_t)g->out_height * g->out_width;
    for (int64_t p = 0; p < planes; p++)
        for (int oh = 0; oh < g->out_height; oh++) {
            int64_t row = p * in_plane + (int64_t)(2 * oh) * g->width;
            const float *in[2] = {x + row, x + row + g->width};
            float *din[2] = {dx + row, dx + row + g->width};
            int64_t o = p * out_plane + (int64_t)oh * g->out_width;
            for (int ow = 0; ow < g->out_width; ow++) {
                float gradient = dy[o + ow];
                if (kind == POOL_AVERAGE) {
                    float share = 0.0f + gradient / 4.0f; /* as += on a zeroed dx */
                    din[0][2 * ow] = share;
                    din[0][2 * ow + 1] = share;
                    din[1][2 * ow] = share;
                    din[1][2 * ow + 1] = share;
                    continue;
                }
                /* Branch-free (which of the four is the maximum is random): the first value
                 * equal to the maximum (or NaN, when the maximum is NaN) takes the gradient;
                 * the windows tile the zeroed dx, so each position is written once. */
                float best = y[o + ow];
                bool nan_best = isnan(best);
                float v0 = in[0][2 * ow], v1 = in[0][2 * ow + 1];
                float v2 = in[1][2 * ow], v3 = in[1][2 * ow + 1];
                bool m0 = (v0 == best) | (nan_best & isnan(v0));
                bool m1 = (v1 == best) | (nan_best & isnan(v1));
                bool m2 = (v2 == best) | (nan_best & isnan(v2));
                bool m3 = (v3 == best) | (nan_best & isnan(v3));
                float routed = 0.0f + gradient; /* as += on a zeroed dx */
                din[0][2 * ow] = m0 ? routed : 0.0f;
                din[0][2 * ow + 1] = (m1 & !m0) ? routed : 0.0f;
                din[1][2 * ow] = (m2 & !(m0 | m1)) ? routed : 0.0f;
                din[1][2 * ow + 1] = (m3 & !(m0 | m1 | m2)) ? routed : 0.0f;
            }
        }
}

void cpu_pool2d_forward(device *dev, pool_kind kind, const conv_geometry *g, int samples,
                        const float *x, float *y) {
    (void)dev;
    int64_t in_plane = (int64_t)g->height * g->width;
    int64_t out_plane = (int64_t)g->out_height * g->out_width;
    float divisor = (float)(g->kernel_h * g->kernel_w);
    if (tiles_2x2(g)) {
        pool_2x2_forward(kind, g, (int64_t)samples * g->channels, x, y);
        return;
    }
    for (int64_t p = 0; p < (int64_t)samples * g->channels; p++) {
        const float *in = x + p * in_plane;
        float *out = y + p * out_plane;
        for (int oh = 0; oh < g->out_height; oh++)
            for (int ow = 0; ow < g->out_width; ow++) {
                window r = window_at(g, oh, ow);
                float value;
                if (kind == POOL_MAX) {
                    value = -INFINITY;
                    for (int h = r.h0; h < r.h1; h++)
                        for (int w = r.w0; w < r.w1; w++) {
                            float v = in[(int64_t)h * g->width + w];
                            /* NaN wins, so divergence stays visible (as PyTorch). */
                            if (v > value || isnan(v)) value = v;
                        }
                } else {
                    float sum = 0.0f;
                    for (int h = r.h0; h < r.h1; h++)
                        for (int w = r.w0; w < r.w1; w++)
                            sum += in[(int64_t)h * g->width + w];
                    value = sum / divisor;
                }
                out[(int64_t)oh * g->out_width + ow] = value;
            }
    }
}

void cpu_pool2d_backward(device *dev, pool_kind kind, const conv_geometry *g, int samples,
                         const float *x, const float *y, const float *dy, float *dx) {
    (void)dev;
    int64_t in_plane = (int64_t)g->height * g->width;
    int64_t out_plane = (int64_t)g->out_height * g->out_width;
    float divisor = (float)(g->kernel_h * g->kernel_w);
    if (tiles_2x2(g)) {
        if (g->height % 2 || g->width % 2)
            memset(dx, 0, (size_t)(samples * g->channels * in_plane) * sizeof *dx);
        pool_2x2_backward(kind, g, (int64_t)samples * g->channels, x, y, dy, dx);
        return;
    }
    memset(dx, 0, (size_t)(samples * g->channels * in_plane) * sizeof *dx);
    for (int64_t p = 0; p < (int64_t)samples * g->channels; p++) {
        const float *in = x + p * in_plane;
        float *din = dx + p * in_plane;
        const float *out = y + p * out_plane, *dout = dy + p * out_plane;
        for (int oh = 0; oh < g->out_height; oh++)
            for (int ow = 0; ow < g->out_width; ow++) {
                window r = window_at(g, oh, ow);
                int64_t o = (int64_t)oh * g->out_width + ow;
                if (kind == POOL_MAX) {
                    float best = out[o];
                    bool routed = false;
                    for (int h = r.h0; h < r.h1 && !routed; h++)
                        for (int w = r.w0; w < r.w1; w++) {
                            float v = in[(int64_t)h * g->width + w];
                            if (v == best || (isnan(v) && isnan(best))) {
                                din[(int64_t)h * g->width + w] += dout[o];
                                routed = true;
                                break;
                            }
                        }
                } else {
                    float share = dout[o] / divisor;
                    for (int h = r.h0; h < r.h1; h++)
                        for (int w = r.w0; w < r.w1; w++)
                            din[(int64_t)h * g->width + w] += share;
                }
            }
    }
}

/* Sums in double over a channel's values in NORM_LANES interleaved partial sums, combined in a
 * fixed order at the end: one long chain of dependent additions would bound the speed, and
 * the lanes keep the order fixed, so every run gives the same bits. */
enum { NORM_LANES = 8 };

static double combine_lanes(const double *lane) {
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* lane sums of v[i] and of (v[i] - mean)^2 over one plane of `n` values */
static void add_plane(const float *v, int n, double *lane) {
    int i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int k = 0; k < NORM_LANES; k++)
            lane[k] += v[i + k];
    for (; i < n; i++)
        lane[i % NORM_LANES] += v[i];
}

static void add_plane_squares(const float *v, int n, double mean, double *lane) {
    int i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int k = 0; k < NORM_LANES; k++) {
            double d = v[i + k] - mean;
            lane[k] += d * d;
        }
    for (; i < n; i++) {
        double d = v[i] - mean;
        lane[i % NORM_LANES] += d * d;
    }
}

/* lane sums of dy[i] and of dy[i] * xhat[i], xhat = (x - mu) * inverse (in float, as the
 * normalisation itself) */
static void add_plane_gradients(const float *x, const float *dy, int n, float mu, float inverse,
                                double *lane_dy, double *lane_dy_xhat) {
    int i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int k = 0; k < NORM_LANES; k++) {
            lane_dy[k] += dy[i + k];
            lane_dy_xhat[k] += (double)dy[i + k] * (double)((x[i + k] - mu) * inverse);
        }
    for (; i < n; i++) {
        lane_dy[i % NORM_LANES] += dy[i];
        lane_dy_xhat[i % NORM_LANES] += (double)dy[i] * (double)((x[i] - mu) * inverse);
    }
}

void cpu_batchnorm_forward(device *dev, int samples, int channels, int spatial, const float *x,
                           const float *gamma, const float *beta, float eps, bool training,
                           float momentum, float *running_mean, float *running_var, float *mean,
                           float *invstd, float *y) {
    (void)dev;
    int64_t count = (int64_t)samples * spatial;
    for (int c = 0; c < channels; c++) {
        double m, inverse;
        if (training) {
            double lane[NORM_LANES] = {0};
            for (int s = 0; s < samples; s++)
                add_plane(x + ((int64_t)s * channels + c) * spatial, spatial, lane);
            m = combine_lanes(lane) / (double)count;
            double square_lane[NORM_LANES] = {0};
            for (int s = 0; s < samples; s++)
                add_plane_squares(x + ((int64_t)s * channels + c) * spatial, spatial, m,
                                  square_lane);
            double squares = combine_lanes(square_lane);
            double variance = squares / (double)count;
            inverse = 1.0 / sqrt(variance + eps);
            double unbiased = count > 1 ? squares / (double)(count - 1) : variance;
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * m);
            running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
        } else {
            m = running_mean[c];
            inverse = 1.0 / sqrt((double)running_var[c] + eps);
        }
        mean[c] = (float)m;
        invstd[c] = (float)inverse;
        float scale = (float)inverse * gamma[c], mu = (float)m, shift = beta[c];
        for (int s = 0; s < samples; s++) {
            const float *v = x + ((int64_t)s * channels + c) * spatial;
            float *out = y + ((int64_t)s * channels + c) * spatial;
            for (int i = 0; i < spatial; i++)
                out[i] = (v[i] - mu) * scale + shift;
        }
    }
}

void cpu_batchnorm_backward(device *dev, int samples, int channels, int spatial, const float *x,
                            const float *dy, const float *gamma, const float *mean,
                            const float *invstd, float *dx, float *dgamma, float *dbeta) {
    (void)dev;
    int64_t count = (int64_t)samples * spatial;
    for (int c = 0; c < channels; c++) {
        float mu = mean[c], inverse = invstd[c];
        double lane_dy[NORM_LANES] = {0}, lane_dy_xhat[NORM_LANES] = {0};
        for (int s = 0; s < samples; s++) {
            int64_t base = ((int64_t)s * channels + c) * spatial;
            add_plane_gradients(x + base, dy + base, spatial, mu, inverse, lane_dy, lane_dy_xhat);
        }
        double sum_dy = combine_lanes(lane_dy), sum_dy_xhat = combine_lanes(lane_dy_xhat);
        dgamma[c] += (float)sum_dy_xhat;
        dbeta[c] += (float)sum_dy;
        /* dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)) */
        float mean_dy = (float)(sum_dy / (double)count);
        float mean_dy_xhat = (float)(sum_dy_xhat / (double)count);
        float scale = gamma[c] * inverse;
        for (int s = 0; s < samples; s++) {
            int64_t base = ((int64_t)s * channels + c) * spatial;
            for (int i = 0; i < spatial; i++) {
                float xhat = (x[base + i] - mu) * inverse;
                dx[base + i] = scale * (dy[base + i] - mean_dy - xhat * mean_dy_xhat);
            }
        }
    }
}

void cpu_layernorm_forward(device *dev, int rows, int cols, const float *x, const float *gamma,
                           const float *beta, float eps, float *y, float *mean, float *rstd) {
    (void)dev;
    for (int r = 0; r < rows; r++) {
        const float *v = x + (int64_t)r * cols;
        float *out = y + (int64_t)r * cols;
        double sum = 0.0;
        for (int c = 0; c < cols; c++)
            sum += v[c];
        double m = sum / cols;
        double squares = 0.0;
        for (int c = 0; c < cols; c++) {
            double d = v[c] - m;
            squares += d * d;
        }
        float inverse = (float)(1.0 / sqrt(squares / cols + eps)), mu = (float)m;
        mean[r] = mu;
        rstd[r] = inverse;
        for (int c = 0; c < cols; c++)
            out[c] = (v[c] - mu) * inverse * gamma[c] + beta[c];
    }
}

void cpu_layernorm_backward(device *dev, int rows, int cols, const float *x, const float *dy,
                            const float *gamma, const float *mean, const float *rstd, float *dx,
                            float *dgamma, float *dbeta) {
    (void)dev;
    for (int r = 0; r < rows; r++) {
        const float *v = x + (int64_t)r * cols, *g = dy + (int64_t)r * cols;
        float *out = dx + (int64_t)r * cols;
        float mu = mean[r], inverse = rstd[r];
        /* dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
        double sum = 0.0, sum_xhat = 0.0;
        for (int c = 0; c < cols; c++) {
            float xhat = (v[c] - mu) * inverse;
            float dxhat = g[c] * gamma[c];
            sum += dxhat;
            sum_xhat += (double)dxhat * xhat;
            dgamma[c] += g[c] * xhat;
            dbeta[c] += g[c];
        }
        float mean_dxhat = (float)(sum / cols), mean_dxhat_xhat = (float)(sum_xhat / cols);
        for (int c = 0; c < cols; c++) {
            float xhat = (v[c] - mu) * inverse;
            out[c] = inverse * (g[c] * gamma[c] - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    }
}

void cpu_rmsnorm_forward(device *dev, int rows, int cols, const float *x, const float *gamma,
                         float eps, float *y, float *rstd) {
    (void)dev;
    for (int r = 0; r < rows; r++) {
        const float *v = x + (int64_t)r * cols;
        float *out = y + (int64_t)r * cols;
        double squares = 0.0;
        for (int c = 0; c < cols; c++)
            squares += (double)v[c] * v[c];
        float inverse = (float)(1.0 / sqrt(squares / cols + eps));
        rstd[r] = inverse;
        for (int c = 0; c < cols; c++)
            out[c] = v[c] * inverse * gamma[c];
    }
}

void cpu_rmsnorm_backward(device *dev, int rows, int cols, const float *x, const float *dy,
                          const float *gamma, const float *rstd, float *dx, float *dgamma) {
    (void)dev;
    for (int r = 0; r < rows; r++) {
        const float *v = x + (int64_t)r * cols, *g = dy + (int64_t)r * cols;
        float *out = dx + (int64_t)r * cols;
        float inverse = rstd[r];
        /* xhat = x * rstd, dxhat = dy * gamma: dx = rstd * (dxhat - xhat * mean(dxhat * xhat)) */
        double sum_xhat = 0.0;
        for (int c = 0; c < cols; c++) {
            float xhat = v[c] * inverse;
            sum_xhat += (double)(g[c] * gamma[c]) * xhat;
            dgamma[c] += g[c] * xhat;
        }
        float mean_dxhat_xhat = (float)(sum_xhat / cols);
        for (int c = 0; c < cols; c++) {
            float xhat = v[c] * inverse;
            out[c] = inverse * (g[c] * gamma[c] - xhat * mean_dxhat_xhat);
        }
    }
}

void cpu_embedding_forward(device *dev, int rows, int cols, const int32_t *ids,
                           const float *table, float *y) {
    (void)dev;
    for (int r = 0; r < rows; r++)
        memcpy(y + (int64_t)r * cols, table + (int64_t)ids[r] * cols, (size_t)cols * sizeof *y);
}

void cpu_embedding_backward(device *dev, int rows, int cols, const int32_t *ids, const float *dy,
                            float *dtable) {
    (void)dev;
    for (int r = 0; r < rows; r++) {
        float *target = dtable + (int64_t)ids[r] * cols;
        const float *source = dy + (int64_t)r * cols;
        for (int c = 0; c < cols; c++)
            target[c] += source[c];
    }
}

void cpu_causal_softmax_forward(device *dev, int groups, int t, float scale, const float *x,
                                float *y) {
    (void)dev;
    for (int64_t row = 0; row < (int64_t)groups * t; row++) {
        int i = (int)(row % t);
        const float *in = x + row * t;
        float *out = y + row * t;
        float largest = -INFINITY;
        for (int j = 0; j <= i; j++)
            if (scale * in[j] > largest) largest = scale * in[j];
        float sum = 0.0f;
        for (int j = 0; j <= i; j++) {
            out[j] = expf(scale * in[j] - largest);
            sum += out[j];
        }
        float inverse = 1.0f / sum;
        for (int j = 0; j <= i; j++)
            out[j] *= inverse;
        for (int j = i + 1; j < t; j++)
            out[j] = 0.0f;
    }
}

void cpu_causal_softmax_backward(device *dev, int groups, int t, float scale, const float *y,
                                 const float *dy, float *dx) {
    (void)dev;
    for (int64_t row = 0; row < (int64_t)groups * t; row++) {
        int i = (int)(row % t);
        const float *p = y + row * t, *g = dy + row * t;
        float *out = dx + row * t;
        float dot = 0.0f;
        for (int j = 0; j <= i; j++)
            dot += p[j] * g[j];
        for (int j = 0; j <= i; j++)
            out[j] = scale * p[j] * (g[j] - dot);
        for (int j = i + 1; j < t; j++)
            out[j] = 0.0f;
    }
}
