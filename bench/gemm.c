/* gemm.c - the matrix-product ceiling of one training step: the GEMMs an MLP's forward and
 * backward pass issue, alone, on ddtrain's own gemm operation (OpenBLAS on the CPU, cuBLAS on
 * a GPU), timed on the device's clock (device timer marks: CUDA events on a GPU).
 *
 * For a model spec and a micro-batch B, one step's products are, for each dense layer of
 * `in` inputs and `out` outputs: forward Y[B x out] = X[B x in] W^T; backward dW[out x in] =
 * dY^T X and, except for the first layer, dX[B x in] = dY W. That is 2 * B * in * out
 * multiply-adds per product, 6 per parameter and sample less the first layer's dX. The step's
 * products are timed --repeats times after a warm-up; the best time counts. What it prints
 * (and appends to --csv) is the time of the products alone, their FLOP/s, and the samples/s a
 * step made only of them would reach: the physical ceiling a training run is measured
 * against, in the same run, on the same machine.
 *
 * Operands are random (never zeros: products of zeros can run faster than real data).
 * Usage:
 *     ddtrain_bench_gemm --model 784-256-relu-128-relu-10 --batch 128           # 1 CPU thread
 *     ddtrain_bench_gemm --device cuda --precision bf16 --model 1024-4096-relu-4096-relu-10 \
 *         --batch 4096 --csv out.csv
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver/blas_setup.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/model.h"
#include "util/rng.h"

static const char usage_text[] =
    "usage: ddtrain_bench_gemm --model SPEC --batch B [options]\n"
    "  --model SPEC        an MLP spec, e.g. 784-256-relu-128-relu-10 (required)\n"
    "  --batch B           rows per micro-batch (required)\n"
    "  --device cpu|cuda   [default: cpu]\n"
    "  --precision P       fp32, tf32, bf16 or fp16 (GPU) [default: fp32]\n"
    "  --threads T         BLAS threads on the CPU [default: 1]\n"
    "  --repeats N         timed steps; the best counts [default: 20]\n"
    "  --csv FILE          append one row (header written if the file is new)\n";

typedef struct product {
    bool transpose_a, transpose_b;
    int m, n, k;
    const float *a, *b;
    float *c;
    int lda, ldb, ldc;
    float beta; /* 1: accumulates, as gradients do */
} product;

static void die(const char *what) {
    fprintf(stderr, "ddtrain_bench_gemm: %s\n", what);
    exit(2);
}

static void *device_random(device *dev, allocator *alloc, size_t floats, uint64_t key) {
    float *host = malloc(floats * sizeof *host);
    if (!host) die("out of host memory");
    for (size_t i = 0; i < floats; i++)
        host[i] = (float)(2.0 * rng_uniform(rng_hash4(2026, key, i, 0)) - 1.0) * 0.1f;
    void *pointer = NULL;
    if (allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, floats * sizeof(float), &pointer) !=
            DDT_OK ||
        device_copy_host_to_device(dev, pointer, host, floats * sizeof(float)) != DDT_OK)
        die(ddt_error_message());
    free(host);
    return pointer;
}

int main(int argc, char **argv) {
    blas_setup_kernel(argv); /* the OpenBLAS kernel ddtrain itself would run */
    const char *spec_text = NULL, *csv = NULL, *device_name = "cpu", *precision_name = "fp32";
    int batch = 0, repeats = 20, threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!value) die("each option takes a value (see --help)");
        if (strcmp(arg, "--model") == 0) spec_text = value;
        else if (strcmp(arg, "--batch") == 0) batch = atoi(value);
        else if (strcmp(arg, "--device") == 0) device_name = value;
        else if (strcmp(arg, "--precision") == 0) precision_name = value;
        else if (strcmp(arg, "--threads") == 0) threads = atoi(value);
        else if (strcmp(arg, "--repeats") == 0) repeats = atoi(value);
        else if (strcmp(arg, "--csv") == 0) csv = value;
        else die("unknown option (see --help)");
        i++;
    }
    if (!spec_text || batch < 1 || repeats < 1 || threads < 1) die("give --model and --batch");
    model_spec spec;
    precision_kind precision;
    if (model_spec_parse(spec_text, &spec) != DDT_OK) die(ddt_error_message());
    if (precision_kind_parse(precision_name, &precision) != DDT_OK) die(ddt_error_message());
    device_kind kind = strcmp(device_name, "cuda") == 0 ? DEVICE_KIND_CUDA : DEVICE_KIND_CPU;
    if (kind == DEVICE_KIND_CPU && strcmp(device_name, "cpu") != 0) die("--device cpu or cuda");
    blas_set_threads(threads);

    device *dev = NULL;
    allocator *alloc = NULL;
    if (device_open(kind, 0, &dev) != DDT_OK || allocator_open(dev, &alloc) != DDT_OK)
        die(ddt_error_message());
    /* The dense layers' products: what an MLP's step computes besides elementwise work. */
    typedef struct dense_shape {
        int inputs, outputs;
    } dense_shape;
    dense_shape dense[MODEL_MAX_NODES];
    int dense_count = 0;
    int widest = spec.input_width;
    for (int n = 0; n < spec.node_count; n++) {
        const model_node *node = &spec.nodes[n];
        if (node->kind == NODE_DENSE) {
            if (node->in_shape.rank != 1) die("only MLPs (flat dense layers) are timed here");
            dense[dense_count++] = (dense_shape){node->in_shape.dims[0], node->out_shape.dims[0]};
            if (node->out_shape.dims[0] > widest) widest = node->out_shape.dims[0];
        } else if (node->kind != NODE_ACTIVATION && node->kind != NODE_DROPOUT) {
            die("only MLPs (dense layers, activations, dropout) are timed here");
        }
    }
    size_t operand_floats = model_spec_max_gemm_operand_floats(&spec, batch);
    if (device_set_precision(dev, precision, alloc, operand_floats) != DDT_OK)
        die(ddt_error_message());

    /* Every layer's products, on buffers of the right shapes (activations share two). */
    product products[3 * MODEL_MAX_NODES];
    int count = 0;
    double flops = 0;
    float *x = device_random(dev, alloc, (size_t)batch * (size_t)widest, 1);
    float *y = device_random(dev, alloc, (size_t)batch * (size_t)widest, 2);
    for (int d = 0; d < dense_count; d++) {
        dense_shape l = dense[d];
        float *w = device_random(dev, alloc, (size_t)l.outputs * (size_t)l.inputs, 3 + (uint64_t)d);
        float *dw = device_random(dev, alloc, (size_t)l.outputs * (size_t)l.inputs, 99);
        /* forward: y = x W^T */
        products[count++] = (product){false, true, batch, l.outputs, l.inputs, x, w, y,
                                      l.inputs, l.inputs, l.outputs, 0.0f};
        /* backward: dW += dY^T X, and dX = dY W except for the first layer */
        products[count++] = (product){true, false, l.outputs, l.inputs, batch, y, x, dw,
                                      l.outputs, l.inputs, l.inputs, 1.0f};
        if (d > 0)
            products[count++] = (product){false, false, batch, l.inputs, l.outputs, y, w, x,
                                          l.outputs, l.inputs, l.inputs, 0.0f};
    }
    for (int p = 0; p < count; p++)
        flops += 2.0 * products[p].m * (double)products[p].n * products[p].k;

    double best = INFINITY;
    for (int r = -2; r < repeats; r++) { /* two untimed warm-up steps */
        if (device_timer_mark(dev, 0) != DDT_OK) die(ddt_error_message());
        for (int p = 0; p < count; p++) {
            const product *q = &products[p];
            device_gemm(dev, q->transpose_a, q->transpose_b, q->m, q->n, q->k, 1.0f, q->a,
                           q->lda, q->b, q->ldb, q->beta, q->c, q->ldc);
        }
        double seconds = 0;
        if (device_timer_mark(dev, 1) != DDT_OK ||
            device_timer_elapsed(dev, 0, 1, &seconds) != DDT_OK)
            die(ddt_error_message());
        if (r >= 0 && seconds < best) best = seconds;
    }
    if (device_synchronize(dev) != DDT_OK) die(ddt_error_message());
    double samples_per_s = batch / best;
    printf("gemm ceiling: %s %s, model %s, batch %d: %d products, %.3g FLOP per step, "
           "%.4f ms per step, %.1f GFLOP/s, %.0f samples/s\n",
           dev->description, precision_kind_name(precision), spec.text, batch, count, flops,
           best * 1e3, flops / best / 1e9, samples_per_s);
    if (csv) {
        FILE *probe = fopen(csv, "r");
        bool fresh = probe == NULL;
        if (probe) fclose(probe);
        FILE *f = fopen(csv, "a");
        if (!f) die("cannot open --csv");
        if (fresh)
            fprintf(f, "device,precision,threads,model,batch,products,flop_per_step,"
                       "seconds_per_step,gflop_per_s,samples_per_s\n");
        fprintf(f, "\"%s\",%s,%d,%s,%d,%d,%.6g,%.6g,%.6g,%.6g\n", dev->description,
                precision_kind_name(precision), threads, spec.text, batch, count, flops, best,
                flops / best / 1e9, samples_per_s);
        fclose(f);
    }
    allocator_close(alloc);
    device_close(dev);
    return 0;
}
