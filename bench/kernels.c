/* kernels.c - the reduction kernels of a GPT step, alone, at GPT-2 124M's shapes: the ones that
 * add many values into few (the softmax cross-entropy over the vocabulary, count_correct, the
 * bias and layer-normalisation parameter gradients, the embedding gradient, the gradient's sum
 * of squares for --clip-grad-norm), timed on the device's clock (timer marks: CUDA events on
 * a GPU), each against the physical ceiling measured in the same run: a device-to-device copy
 * of the same bytes. An operation that reads and writes B bytes at least cannot take less
 * than copying B/2 bytes, so "of copy" near 1 is as fast as memory allows.
 *
 * Shapes (tokens = --batch x --seq): logits tokens x --vocab; widths --width (layer
 * normalisation, bias gradient) over tokens rows; embedding table --vocab x --width; the sum of
 * squares over --parameters floats. Inputs are random, the embedding ids random over the
 * vocabulary. Each operation runs --repeats times after a warm-up; the best time counts.
 * Usage:
 *     ddtrain_bench_kernels --device cuda                          # GPT-2: 64 x 1024 tokens
 *     ddtrain_bench_kernels --device cpu --batch 1 --seq 64 --vocab 1000 --parameters 1000000
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/alloc.h"
#include "engine/device.h"
#include "util/rng.h"

static const char usage_text[] =
    "usage: ddtrain_bench_kernels [options]\n"
    "  --device cpu|cuda   [default: cuda]\n"
    "  --batch B           sequences per micro-batch [default: 64]\n"
    "  --seq T             tokens per sequence [default: 1024]\n"
    "  --vocab V           vocabulary (logits' width, embedding rows) [default: 50257]\n"
    "  --width W           model width [default: 768]\n"
    "  --parameters N      floats in the sum of squares [default: 124439808, GPT-2 124M]\n"
    "  --repeats N         timed runs of each operation; the best counts [default: 10]\n"
    "  --csv FILE          append one row per operation (header written if the file is new)\n";

static void die(const char *what) {
    fprintf(stderr, "ddtrain_bench_kernels: %s\n", what);
    exit(2);
}

/* A device buffer of random floats in [-1, 1): 1M random values, repeated (filling tens of GB
 * value by value would take the host a minute; the kernels' speed does not depend on it). */
static void *device_floats(device *dev, allocator *alloc, size_t floats, uint64_t key) {
    const size_t piece = (size_t)1 << 20;
    float *host = malloc(piece * sizeof *host);
    void *pointer = NULL;
    if (!host) die("out of host memory");
    for (size_t i = 0; i < piece; i++)
        host[i] = (float)(2.0 * rng_uniform(rng_hash4(2026, key, i, 0)) - 1.0);
    if (allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, floats * sizeof(float), &pointer) !=
        DDT_OK)
        die(ddt_error_message());
    for (size_t at = 0; at < floats; at += piece) {
        size_t n = floats - at < piece ? floats - at : piece;
        if (device_copy_host_to_device(dev, (float *)pointer + at, host, n * sizeof(float)) !=
            DDT_OK)
            die(ddt_error_message());
    }
    free(host);
    return pointer;
}

static int32_t *device_ids(device *dev, allocator *alloc, size_t count, int range, uint64_t key) {
    int32_t *host = malloc(count * sizeof *host);
    void *pointer = NULL;
    if (!host) die("out of host memory");
    for (size_t i = 0; i < count; i++)
        host[i] = (int32_t)(rng_hash4(2026, key, i, 1) % (uint64_t)range);
    if (allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, count * sizeof(int32_t), &pointer) !=
            DDT_OK ||
        device_copy_host_to_device(dev, pointer, host, count * sizeof(int32_t)) != DDT_OK)
        die(ddt_error_message());
    free(host);
    return pointer;
}

/* What one timed operation needs: its arguments, set up once. */
typedef struct bench_state {
    device *dev;
    int tokens, vocab, width;
    size_t parameters;
    float *logits, *dlogits, *loss;
    int32_t *labels, *ids;
    float *x, *dy, *dx, *gamma, *mean, *rstd, *dgamma, *dbeta, *table_gradient, *bias_gradient;
    float *params;
    float *copy_from, *copy_to; /* the ceiling: as many bytes as the largest operation moves */
} bench_state;

typedef struct bench_case {
    const char *name;
    double (*bytes)(const bench_state *s); /* the least it must read and write */
    void (*run)(const bench_state *s);
} bench_case;

static double logits_bytes(const bench_state *s) {
    return 2.0 * s->tokens * (double)s->vocab * sizeof(float); /* read logits, write dlogits */
}
static void run_cross_entropy(const bench_state *s) {
    device_softmax_cross_entropy(s->dev, s->tokens, s->vocab, s->logits, s->labels, NULL,
                                 1.0f / (float)s->tokens, s->loss, s->dlogits);
}
static double read_logits_bytes(const bench_state *s) {
    return s->tokens * (double)s->vocab * sizeof(float);
}
static void run_count_correct(const bench_state *s) {
    device_count_correct(s->dev, s->tokens, s->vocab, s->logits, s->labels, s->loss);
}
static double width_bytes(const bench_state *s) {
    return s->tokens * (double)s->width * sizeof(float);
}
static void run_bias_gradient(const bench_state *s) {
    device_bias_gradient_accumulate(s->dev, s->tokens, s->width, s->dy, s->bias_gradient);
}
static double layernorm_bytes(const bench_state *s) {
    return 3.0 * width_bytes(s); /* read x and dy, write dx */
}
static void run_layernorm_backward(const bench_state *s) {
    device_layernorm_backward(s->dev, s->tokens, s->width, s->x, s->dy, s->gamma, s->mean, s->rstd,
                              s->dx, s->dgamma, s->dbeta);
}
static double embedding_bytes(const bench_state *s) {
    /* read dy, and at least read and write each table row it adds into (all, or nearly) */
    double rows = s->tokens < s->vocab ? s->tokens : s->vocab;
    return width_bytes(s) + 2.0 * rows * s->width * sizeof(float);
}
static void run_embedding_backward(const bench_state *s) {
    device_embedding_backward(s->dev, s->tokens, s->width, s->ids, s->dy, s->table_gradient);
}
static double squares_bytes(const bench_state *s) {
    return (double)s->parameters * sizeof(float);
}
static void run_sum_of_squares(const bench_state *s) {
    double sum = 0;
    if (device_sum_of_squares(s->dev, s->parameters, s->params, &sum) != DDT_OK)
        die(ddt_error_message());
}

/* The best of `repeats` timed runs (after one untimed), in seconds. */
static double best_seconds(const bench_state *s, void (*run)(const bench_state *), int repeats) {
    double best = INFINITY;
    for (int r = -1; r < repeats; r++) {
        double seconds = 0;
        if (device_timer_mark(s->dev, 0) != DDT_OK) die(ddt_error_message());
        run(s);
        if (device_timer_mark(s->dev, 1) != DDT_OK ||
            device_timer_elapsed(s->dev, 0, 1, &seconds) != DDT_OK)
            die(ddt_error_message());
        if (r >= 0 && seconds < best) best = seconds;
    }
    return best;
}

static double copy_bytes_now; /* the copy's length for run_copy */
static void run_copy(const bench_state *s) {
    device_copy_device_to_device(s->dev, s->copy_to, s->copy_from, (size_t)copy_bytes_now);
}

int main(int argc, char **argv) {
    const char *csv = NULL, *device_name = "cuda";
    int batch = 64, seq = 1024, vocab = 50257, width = 768, repeats = 10;
    long long parameters = 124439808;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!value) die("each option takes a value (see --help)");
        if (strcmp(arg, "--device") == 0)
            device_name = value;
        else if (strcmp(arg, "--batch") == 0)
            batch = atoi(value);
        else if (strcmp(arg, "--seq") == 0)
            seq = atoi(value);
        else if (strcmp(arg, "--vocab") == 0)
            vocab = atoi(value);
        else if (strcmp(arg, "--width") == 0)
            width = atoi(value);
        else if (strcmp(arg, "--parameters") == 0)
            parameters = atoll(value);
        else if (strcmp(arg, "--repeats") == 0)
            repeats = atoi(value);
        else if (strcmp(arg, "--csv") == 0)
            csv = value;
        else
            die("unknown option (see --help)");
        i++;
    }
    if (batch < 1 || seq < 1 || vocab < 2 || width < 1 || parameters < 1 || repeats < 1)
        die("--batch, --seq, --width, --parameters and --repeats must be positive, --vocab >= 2");
    if ((long long)batch * seq > 1 << 24) die("--batch x --seq must be at most 16M tokens");
    device_kind kind = strcmp(device_name, "cuda") == 0 ? DEVICE_KIND_CUDA : DEVICE_KIND_CPU;
    if (kind == DEVICE_KIND_CPU && strcmp(device_name, "cpu") != 0) die("--device cpu or cuda");

    bench_state s = {0};
    allocator *alloc = NULL;
    if (device_open(kind, 0, &s.dev) != DDT_OK || allocator_open(s.dev, &alloc) != DDT_OK)
        die(ddt_error_message());
    if (device_set_precision(s.dev, PRECISION_FP32, alloc, 1) != DDT_OK) /* takes the scratch */
        die(ddt_error_message());
    s.tokens = batch * seq;
    s.vocab = vocab;
    s.width = width;
    s.parameters = (size_t)parameters;
    size_t logits = (size_t)s.tokens * (size_t)vocab, activations = (size_t)s.tokens * width;
    s.logits = device_floats(s.dev, alloc, logits, 1);
    s.dlogits = device_floats(s.dev, alloc, logits, 2);
    s.loss = device_floats(s.dev, alloc, 1, 3);
    s.labels = device_ids(s.dev, alloc, (size_t)s.tokens, vocab, 4);
    s.ids = device_ids(s.dev, alloc, (size_t)s.tokens, vocab, 5);
    s.x = device_floats(s.dev, alloc, activations, 6);
    s.dy = device_floats(s.dev, alloc, activations, 7);
    s.dx = device_floats(s.dev, alloc, activations, 8);
    s.gamma = device_floats(s.dev, alloc, (size_t)width, 9);
    s.mean = device_floats(s.dev, alloc, (size_t)s.tokens, 10);
    s.rstd = device_floats(s.dev, alloc, (size_t)s.tokens, 11);
    s.dgamma = device_floats(s.dev, alloc, (size_t)width, 12);
    s.dbeta = device_floats(s.dev, alloc, (size_t)width, 13);
    s.bias_gradient = device_floats(s.dev, alloc, (size_t)width, 14);
    s.table_gradient = device_floats(s.dev, alloc, (size_t)vocab * width, 15);
    s.params = device_floats(s.dev, alloc, s.parameters, 16);

    const bench_case cases[] = {
        {"softmax_cross_entropy", logits_bytes, run_cross_entropy},
        {"count_correct", read_logits_bytes, run_count_correct},
        {"bias_gradient", width_bytes, run_bias_gradient},
        {"layernorm_backward", layernorm_bytes, run_layernorm_backward},
        {"embedding_backward", embedding_bytes, run_embedding_backward},
        {"sum_of_squares", squares_bytes, run_sum_of_squares},
    };
    const int case_count = (int)(sizeof cases / sizeof cases[0]);
    double largest = 0;
    for (int c = 0; c < case_count; c++)
        largest = fmax(largest, cases[c].bytes(&s));
    /* The ceiling: a copy moving half of each operation's bytes (read once, written once);
     * between the logits' two buffers where they are large enough (GPT-2's are). */
    s.copy_from = s.logits;
    s.copy_to = s.dlogits;
    if (largest / 2 > (double)logits * sizeof(float)) {
        size_t floats = (size_t)(largest / 2 / sizeof(float)) + 1;
        s.copy_from = device_floats(s.dev, alloc, floats, 17);
        s.copy_to = device_floats(s.dev, alloc, floats, 18);
    }

    FILE *out = NULL;
    if (csv) {
        FILE *probe = fopen(csv, "r");
        bool fresh = probe == NULL;
        if (probe) fclose(probe);
        out = fopen(csv, "a");
        if (!out) die("cannot open --csv");
        if (fresh)
            fprintf(out, "operation,tokens,vocab,width,bytes,seconds,gb_per_s,copy_seconds,"
                         "of_copy,device\n"); /* the device last: its name holds commas */
    }
    printf("%s: %d tokens (%d x %d), vocabulary %d, width %d, %lld parameters\n",
           s.dev->description, s.tokens, batch, seq, vocab, width, parameters);
    printf("%-24s %12s %10s %10s %12s %8s\n", "operation", "MB moved", "ms", "GB/s", "copy ms",
           "of copy");
    for (int c = 0; c < case_count; c++) {
        double bytes = cases[c].bytes(&s);
        double seconds = best_seconds(&s, cases[c].run, repeats);
        copy_bytes_now = bytes / 2;
        double copy = best_seconds(&s, run_copy, repeats);
        printf("%-24s %12.1f %10.4f %10.1f %12.4f %8.2f\n", cases[c].name, bytes / 1e6,
               seconds * 1e3, bytes / seconds / 1e9, copy * 1e3, copy / seconds);
        if (out)
            fprintf(out, "%s,%d,%d,%d,%.0f,%.6g,%.6g,%.6g,%.4f,\"%s\"\n", cases[c].name, s.tokens,
                    vocab, width, bytes, seconds, bytes / seconds / 1e9, copy, copy / seconds,
                    s.dev->description);
    }
    if (out) fclose(out);
    if (device_synchronize(s.dev) != DDT_OK) die(ddt_error_message());
    allocator_close(alloc);
    device_close(s.dev);
    return 0;
}
