/* test_engine_layers.c - the CPU backend's layer-engine operations against their definitions
 * in device.h, written out naively here: im2col for many geometries (strides, padding wider
 * than the border, kernels of 1, rectangular inputs) and col2im as its adjoint
 * (<im2col(x), c> = <x, col2im(c)>), permutes of every rank, max and average pooling with
 * PyTorch's padding rules, the causal softmax (rows sum to 1, zeros above the diagonal,
 * invariant to values above it), batch normalisation's running statistics (PyTorch's unbiased
 * variance and momentum) and embeddings. The CUDA backend is compared with these in
 * test_cuda_device.c; gradients in test_engine_gradcheck.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/device.h"
#include "engine/model_spec.h"
#include "util/rng.h"

static device *dev;

static float *random_floats(size_t count, uint64_t seed) {
    float *x = malloc((count ? count : 1) * sizeof *x);
    for (size_t i = 0; i < count; i++)
        x[i] = 2.0f * (float)rng_uniform(rng_hash4(seed, 500, 0, i)) - 1.0f;
    return x;
}

static void check_im2col(int channels, int height, int width, int kernel, int stride, int pad,
                         int samples) {
    conv_geometry g;
    CHECK_OK(conv_geometry_make(channels, height, width, kernel, kernel, stride, stride, pad, pad,
                                "test", &g));
    size_t in = (size_t)samples * channels * height * width;
    size_t rows = (size_t)channels * kernel * kernel;
    size_t columns = (size_t)samples * g.out_height * g.out_width;
    float *x = random_floats(in, 1), *cols = random_floats(rows * columns, 2);
    float *c = random_floats(rows * columns, 3), *dx = random_floats(in, 4);
    device_im2col(dev, &g, samples, x, cols);
    int wrong = 0;
    for (int ch = 0; ch < channels; ch++)
        for (int i = 0; i < kernel; i++)
            for (int j = 0; j < kernel; j++)
                for (int s = 0; s < samples; s++)
                    for (int oh = 0; oh < g.out_height; oh++)
                        for (int ow = 0; ow < g.out_width; ow++) {
                            int h = oh * stride - pad + i, w = ow * stride - pad + j;
                            float expected =
                                h >= 0 && h < height && w >= 0 && w < width
                                    ? x[(((size_t)s * channels + ch) * height + h) * width + w]
                                    : 0.0f;
                            size_t row = ((size_t)ch * kernel + i) * kernel + j;
                            size_t column = ((size_t)s * g.out_height + oh) * g.out_width + ow;
                            wrong += cols[row * columns + column] != expected;
                        }
    CHECK(wrong == 0);
    /* col2im is im2col's adjoint */
    device_col2im(dev, &g, samples, c, dx);
    double left = 0, right = 0;
    for (size_t k = 0; k < rows * columns; k++)
        left += (double)cols[k] * c[k];
    for (size_t k = 0; k < in; k++)
        right += (double)x[k] * dx[k];
    CHECK_NEAR(left, right, 1e-4);
    if (wrong)
        fprintf(stderr, "  im2col %dx%dx%d k%d s%d p%d: %d wrong\n", channels, height, width,
                kernel, stride, pad, wrong);
    free(x);
    free(cols);
    free(c);
    free(dx);
}

static void check_permute(void) {
    int dims[6] = {2, 3, 1, 4, 2, 3};
    int perms[3][6] = {{5, 4, 3, 2, 1, 0}, {1, 0, 2, 3, 4, 5}, {2, 0, 3, 1, 5, 4}};
    size_t count = 2 * 3 * 1 * 4 * 2 * 3;
    float *in = random_floats(count, 5), *out = random_floats(count, 6);
    for (int rank = 1; rank <= 6; rank++)
        for (int p = 0; p < 3; p++) {
            int perm[6], k = 0;
            for (int i = 0; i < 6; i++) /* keep the axes below `rank`, in the same order */
                if (perms[p][i] < rank) perm[k++] = perms[p][i];
            size_t n = 1;
            for (int i = 0; i < rank; i++)
                n *= (size_t)dims[i];
            device_permute(dev, rank, dims, perm, in, out);
            int wrong = 0;
            for (size_t o = 0; o < n; o++) {
                /* out's index -> out coordinates -> in coordinates */
                int coordinate[6];
                size_t rest = o;
                for (int i = rank - 1; i >= 0; i--) {
                    coordinate[i] = (int)(rest % (size_t)dims[perm[i]]);
                    rest /= (size_t)dims[perm[i]];
                }
                int source[6];
                for (int i = 0; i < rank; i++)
                    source[perm[i]] = coordinate[i];
                size_t index = 0;
                for (int i = 0; i < rank; i++)
                    index = index * (size_t)dims[i] + (size_t)source[i];
                wrong += out[o] != in[index];
            }
            CHECK(wrong == 0);
        }
    free(in);
    free(out);
}

static void check_pooling(pool_kind kind, int kernel, int stride, int pad, int height) {
    int channels = 2, width = 6, samples = 3;
    conv_geometry g;
    CHECK_OK(conv_geometry_make(channels, height, width, kernel, kernel, stride, stride, pad, pad,
                                "test", &g));
    size_t in = (size_t)samples * channels * height * width;
    size_t out = (size_t)samples * channels * g.out_height * g.out_width;
    float *x = random_floats(in, 7), *y = random_floats(out, 8);
    device_pool2d_forward(dev, kind, &g, samples, x, y);
    int wrong = 0;
    for (int p = 0; p < samples * channels; p++)
        for (int oh = 0; oh < g.out_height; oh++)
            for (int ow = 0; ow < g.out_width; ow++) {
                float best = -INFINITY;
                double sum = 0;
                for (int i = 0; i < kernel; i++)
                    for (int j = 0; j < kernel; j++) {
                        int h = oh * stride - pad + i, w = ow * stride - pad + j;
                        if (h < 0 || h >= height || w < 0 || w >= width) continue;
                        float v = x[((size_t)p * height + h) * width + w];
                        best = v > best ? v : best;
                        sum += v;
                    }
                float expected = kind == POOL_MAX ? best : (float)(sum / (kernel * kernel));
                float got = y[((size_t)p * g.out_height + oh) * g.out_width + ow];
                wrong += fabsf(got - expected) > 1e-6f;
            }
    CHECK(wrong == 0);
    /* Backward against the rule: max routes each gradient to the first input (row order) of
     * its window equal to the maximum, ties included; average shares it evenly. */
    for (size_t k = 0; k + 1 < in; k += 5)
        x[k + 1] = x[k]; /* ties */
    device_pool2d_forward(dev, kind, &g, samples, x, y);
    float *dy = random_floats(out, 9), *dx = random_floats(in, 10);
    double *expected = calloc(in, sizeof *expected);
    device_pool2d_backward(dev, kind, &g, samples, x, y, dy, dx);
    for (int p = 0; p < samples * channels; p++)
        for (int oh = 0; oh < g.out_height; oh++)
            for (int ow = 0; ow < g.out_width; ow++) {
                size_t o = ((size_t)p * g.out_height + oh) * g.out_width + ow;
                bool routed = false;
                for (int i = 0; i < kernel; i++)
                    for (int j = 0; j < kernel; j++) {
                        int h = oh * stride - pad + i, w = ow * stride - pad + j;
                        if (h < 0 || h >= height || w < 0 || w >= width) continue;
                        size_t at = ((size_t)p * height + h) * width + w;
                        if (kind == POOL_AVERAGE)
                            expected[at] += dy[o] / (float)(kernel * kernel);
                        else if (!routed && x[at] == y[o]) {
                            expected[at] += dy[o];
                            routed = true;
                        }
                    }
            }
    wrong = 0;
    for (size_t k = 0; k < in; k++)
        wrong += fabs(dx[k] - expected[k]) > 1e-6;
    CHECK(wrong == 0);
    free(expected);
    free(dx);
    free(dy);
    free(x);
    free(y);
}

static void check_softmax_and_norms(void) {
    int groups = 3, t = 5;
    size_t n = (size_t)groups * t * t;
    float *x = random_floats(n, 9), *y = random_floats(n, 10), *z = random_floats(n, 11);
    device_causal_softmax_forward(dev, groups, t, 0.5f, x, y);
    for (size_t k = 0; k < n; k++) /* above the diagonal is never read */
        if ((int)(k % t) > (int)((k / t) % t)) x[k] = 1e30f;
    device_causal_softmax_forward(dev, groups, t, 0.5f, x, z);
    CHECK(memcmp(y, z, n * sizeof *y) == 0);
    for (int row = 0; row < groups * t; row++) {
        int i = row % t;
        double sum = 0;
        for (int j = 0; j < t; j++) {
            sum += y[row * t + j];
            if (j > i) CHECK(y[row * t + j] == 0.0f);
        }
        CHECK_NEAR(sum, 1.0, 1e-6);
    }

    /* batch normalisation: PyTorch's running statistics (unbiased variance, momentum 0.1) */
    int samples = 4, channels = 2, spatial = 3;
    size_t count = (size_t)samples * channels * spatial;
    float *v = random_floats(count, 12), *out = random_floats(count, 13);
    float gamma[2] = {1.5f, -0.5f}, beta[2] = {0.25f, 1.0f};
    float running_mean[2] = {0.0f, 1.0f}, running_var[2] = {1.0f, 2.0f};
    float mean[2], invstd[2];
    device_batchnorm_forward(dev, samples, channels, spatial, v, gamma, beta, 1e-5f, true, 0.1f,
                             running_mean, running_var, mean, invstd, out);
    for (int c = 0; c < channels; c++) {
        double m = 0, squares = 0;
        for (int s = 0; s < samples; s++)
            for (int i = 0; i < spatial; i++)
                m += v[((size_t)s * channels + c) * spatial + i];
        m /= samples * spatial;
        for (int s = 0; s < samples; s++)
            for (int i = 0; i < spatial; i++) {
                double d = v[((size_t)s * channels + c) * spatial + i] - m;
                squares += d * d;
            }
        CHECK_NEAR(mean[c], m, 1e-6);
        CHECK_NEAR(invstd[c], 1.0 / sqrt(squares / (samples * spatial) + 1e-5), 1e-5);
        CHECK_NEAR(running_mean[c], 0.9 * (c == 0 ? 0.0 : 1.0) + 0.1 * m, 1e-6);
        CHECK_NEAR(running_var[c],
                   0.9 * (c == 0 ? 1.0 : 2.0) + 0.1 * squares / (samples * spatial - 1), 1e-6);
        float first = v[(size_t)c * spatial];
        CHECK_NEAR(out[(size_t)c * spatial], (first - m) * invstd[c] * gamma[c] + beta[c], 1e-5);
    }
    /* evaluation normalises with the running statistics and leaves them alone */
    float saved_mean[2] = {running_mean[0], running_mean[1]};
    device_batchnorm_forward(dev, samples, channels, spatial, v, gamma, beta, 1e-5f, false, 0.1f,
                             running_mean, running_var, mean, invstd, out);
    CHECK(running_mean[0] == saved_mean[0] && running_mean[1] == saved_mean[1]);
    CHECK_NEAR(out[0], (v[0] - running_mean[0]) / sqrt(running_var[0] + 1e-5) * gamma[0] + beta[0],
               1e-5);

    /* embeddings: rows gathered, gradients added per id in order */
    float table[3 * 2] = {1, 2, 3, 4, 5, 6}, rows[4 * 2], gradient[3 * 2] = {0};
    int32_t ids[4] = {2, 0, 2, 1};
    device_embedding_forward(dev, 4, 2, ids, table, rows);
    CHECK(rows[0] == 5 && rows[1] == 6 && rows[2] == 1 && rows[7] == 4);
    float dy[4 * 2] = {1, 1, 2, 2, 3, 3, 4, 4};
    device_embedding_backward(dev, 4, 2, ids, dy, gradient);
    CHECK(gradient[4] == 4 && gradient[0] == 2 && gradient[2] == 4);
    free(x);
    free(y);
    free(z);
    free(v);
    free(out);
}

int main(void) {
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    if (!dev) return check_finish();
    check_im2col(2, 6, 6, 3, 1, 1, 3);
    check_im2col(3, 7, 5, 3, 2, 1, 2);
    check_im2col(1, 5, 8, 1, 1, 0, 2);
    check_im2col(2, 4, 4, 3, 1, 2, 1); /* padding wider than needed: whole rows of zeros */
    check_im2col(2, 9, 9, 5, 3, 2, 2);
    check_im2col(4, 8, 8, 1, 2, 0, 3); /* a projection shortcut */
    check_permute();
    for (pool_kind kind = POOL_MAX; kind <= POOL_AVERAGE; kind++) {
        check_pooling(kind, 2, 2, 0, 7); /* an odd last row no window reads */
        check_pooling(kind, 2, 2, 0, 8); /* windows tiling the input */
        check_pooling(kind, 3, 2, 1, 7);
        check_pooling(kind, 3, 1, 1, 7);
    }
    check_softmax_and_norms();
    device_close(dev);
    return check_finish();
}
