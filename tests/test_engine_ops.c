/* test_engine_ops.c - one harness for every device operation (engine/device_ops.def), on every
 * backend that supports it (device_supports_op()), against a float64 reference computed here,
 * from the contract in device_ops.def, with plain double loops (never by calling a backend).
 *
 * - The table op_cases has one entry per operation, indexed by its id (DEVICE_OP_name): an
 *   operation added to the list without an entry here fails the test, naming it. And every
 *   backend's table is wrapped by counting shims (generated from the list), so the test also
 *   fails if an operation a backend supports was never called on it.
 * - Shapes include size 1, odd sizes, padded and large leading dimensions and strides, and
 *   each case runs twice on each backend from the same inputs: the second run must give the
 *   same bits (reductions add in a fixed order). Shapes marked GPU-size run on the backends
 *   other than the CPU only (their kernels' row chunks, sort groups and partial sums), so the
 *   CPU half stays a few seconds.
 * - Tolerances follow the arithmetic: a float sum or dot product of n terms is within
 *   gamma(n) = n u / (1 - n u) (u = 2^-24) times the sum of the terms' magnitudes of the exact
 *   value, whatever the order (Higham, Accuracy and Stability of Numerical Algorithms, ch. 3);
 *   an elementwise formula within a few units of u relative to its inputs' size; bitwise where
 *   the contract fixes the arithmetic (gathers, dropout masks, the optimizers' shared
 *   per-element arithmetic in engine/optim_update.h, embedding gradients added in row order).
 * - GEMMs run under every precision the backend supports: fp32 within gamma(k + 3); TF32,
 *   bf16 and fp16 within that bound plus the rounding of their operands, AND, on shapes with
 *   enough elements, with an error above fp32's measured on the same inputs in this run (and
 *   above u/16 of the format), so a precision mode that silently did not apply fails. The CPU
 *   has fp32 only: its reduced precisions are reported "not run".
 * - Backends other than the CPU are also compared with the CPU backend's results, with the
 *   bars the hand-written GPU test used (1e-5 relative, or bit for bit for the gathers).
 * - The memory, copy, upload, stream and timer operations get behavioural checks (round trip,
 *   zero fill, untouched neighbours, timers ordered) instead of a float64 reference.
 *
 * Without a GPU (or in a build without CUDA) the CUDA half is reported "not run: ... (no GPU)";
 * the CPU half runs everywhere. Each comparison prints a "measured:" line (backend, operation,
 * shape, worst error, tolerance), the format tests/gpu/acceptance.sh tabulates.
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "fixtures.h"
#include "engine/alloc.h"
#include "engine/cuda/reduction_plan.h" /* shapes that reach the kernels' partial sums */
#include "engine/device.h"
#include "engine/device_backend.h"
#include "engine/model_spec.h" /* conv_geometry_make */
#include "engine/optim_update.h"
#include "util/rng.h"

#define U 0x1p-24 /* float32's unit roundoff */
#define BITWISE (-1.0)
#define NO_CROSS 0.0
#define MAX_BACKENDS 2

/* --- backends under test, their tables wrapped by counting shims ---------------------------- */

typedef struct backend {
    device *dev;
    allocator *alloc;
    const char *name;
    bool is_cpu;
    const device_ops *real; /* the backend's own table */
    device_ops counted;     /* the same, each entry through a counting shim */
    long calls[DEVICE_OP_COUNT];
    void *buffers[64]; /* this case's device buffers, released by backend_release() */
    int buffer_count;
} backend;

static backend backends[MAX_BACKENDS];
static int backend_count;

static backend *backend_of(const device *dev) {
    for (int i = 0; i < backend_count; i++)
        if (backends[i].dev == dev) return &backends[i];
    fprintf(stderr, "a device the harness did not open\n");
    exit(1);
}

#define DEVICE_OP_VOID(name, parameters, arguments)                                                \
    static void counted_##name parameters {                                                        \
        backend *harness_backend = backend_of(dev);                                                \
        harness_backend->calls[DEVICE_OP_##name]++;                                                \
        harness_backend->real->name arguments;                                                     \
    }
#define DEVICE_OP(type, name, parameters, arguments)                                               \
    static type counted_##name parameters {                                                        \
        backend *harness_backend = backend_of(dev);                                                \
        harness_backend->calls[DEVICE_OP_##name]++;                                                \
        return harness_backend->real->name arguments;                                              \
    }
#include "engine/device_ops.def"

static void wrap_table(backend *b) {
    b->real = b->dev->ops;
    b->counted = *b->real;
#define DEVICE_OP(type, name, parameters, arguments)                                               \
    if (b->real->name) b->counted.name = counted_##name;
#include "engine/device_ops.def"
    b->dev->ops = &b->counted;
}

static void unwrap_table(backend *b) {
    b->dev->ops = b->real;
}

/* --- device buffers ------------------------------------------------------------------------- */

static void *dev_alloc(backend *b, size_t bytes) {
    void *pointer = NULL;
    if (allocator_alloc(b->alloc, MEMORY_COMPONENT_ACTIVATIONS, bytes ? bytes : 1, &pointer) !=
            DDT_OK ||
        b->buffer_count == (int)(sizeof b->buffers / sizeof b->buffers[0])) {
        fprintf(stderr, "cannot allocate %zu bytes on %s: %s\n", bytes, b->name,
                ddt_error_message());
        exit(1);
    }
    b->buffers[b->buffer_count++] = pointer;
    return pointer;
}

static void *dev_upload(backend *b, const void *host, size_t bytes) {
    void *pointer = dev_alloc(b, bytes);
    if (bytes) CHECK_OK(device_copy_host_to_device(b->dev, pointer, host, bytes));
    return pointer;
}

/* A host copy (held by ARENA) of `count` floats of device memory. */
static float *dev_floats(backend *b, fixture_arena *arena, const float *device_pointer,
                         size_t count) {
    float *host = fixture_alloc(arena, count * sizeof(float));
    if (count)
        CHECK_OK(device_copy_device_to_host(b->dev, host, device_pointer, count * sizeof(float)));
    return host;
}

static void backend_release(backend *b) {
    CHECK_OK(device_synchronize(b->dev));
    while (b->buffer_count > 0)
        allocator_free(b->alloc, b->buffers[--b->buffer_count]);
}

/* Whether backend B runs OP (and shapes marked GPU-size: not on the CPU); a "not run" line
 * when the backend lacks it. */
static bool runs(backend *b, device_op op, bool gpu_size) {
    if (gpu_size && b->is_cpu) return false;
    if (device_supports_op(b->dev, op)) return true;
    check_not_run(fixture_text("%s on %s", device_op_name(op), b->name),
                  "the backend leaves the operation out");
    return false;
}

/* Whether any backend runs shapes marked GPU-size (so their references are worth computing). */
static bool gpu_size_runs(void) {
    return backend_count > 1;
}

/* --- labels and comparisons ---------------------------------------------------------------- */

static const char *text(const char *format, ...) __attribute__((format(printf, 1, 2)));
static const char *text(const char *format, ...) {
    static char buffer[4][256];
    static int next;
    char *out = buffer[next++ % 4];
    va_list args;
    va_start(args, format);
    vsnprintf(out, sizeof buffer[0], format, args);
    va_end(args);
    return out;
}

static double float_sum_gamma(double terms, double unit) {
    double nu = terms * unit;
    return nu / (1.0 - nu);
}

static double *doubles(fixture_arena *arena, size_t count) {
    return fixture_alloc(arena, (count ? count : 1) * sizeof(double));
}

/* got[i] against the float64 reference ref[i]: |got - ref| <= tolerance * scale, where scale is
 * scales[i] or, without scales, max(1, |ref|); with tolerance BITWISE, got must be ref rounded
 * to float exactly. NaN must meet NaN and an infinity the same infinity. Returns whether it
 * held; one check and one "measured:" line per array. */
static bool compare(const char *what, const backend *b, const float *got, const double *ref,
                    size_t count, double tolerance, const double *scales) {
    double worst = 0.0;
    size_t worst_index = 0;
    bool mismatch = false;
    for (size_t i = 0; i < count && !mismatch; i++) {
        float expected = (float)ref[i];
        if (isnan(ref[i]) || isnan(got[i]) || isinf(ref[i]) || isinf(got[i])) {
            bool same = isnan(ref[i]) ? isnan(got[i]) : (double)got[i] == ref[i];
            if (!same) mismatch = true, worst_index = i;
            continue;
        }
        if (tolerance == BITWISE) {
            if (memcmp(&got[i], &expected, sizeof expected) != 0 &&
                !(got[i] == 0.0f && expected == 0.0f && ref[i] == 0.0))
                mismatch = true, worst_index = i;
            continue;
        }
        double scale = scales ? scales[i] : fmax(1.0, fabs(ref[i]));
        double error = fabs((double)got[i] - ref[i]) / scale;
        if (!(error <= worst)) worst = error, worst_index = i;
    }
    bool ok = !mismatch && (tolerance == BITWISE || worst <= tolerance);
    if (tolerance == BITWISE)
        printf("measured: %s %-56s %s tolerance bitwise %s\n", b->name, what,
               ok ? "identical" : "differs", ok ? "ok" : "FAIL");
    else
        printf("measured: %s %-56s worst %.3g tolerance %.3g %s\n", b->name, what,
               mismatch ? INFINITY : worst, tolerance, ok ? "ok" : "FAIL");
    if (!ok)
        fprintf(stderr, "  %s %s: element %zu of %zu: got %.9g, expected %.17g\n", b->name, what,
                worst_index, count, count ? (double)got[worst_index] : 0.0,
                count ? ref[worst_index] : 0.0);
    check_record(ok, __FILE__, __LINE__, what);
    return ok;
}

/* A backend's result against the CPU backend's on the same inputs: within TOLERANCE relative
 * to max(1, |cpu|), or BITWISE. */
static void compare_with_cpu(const char *what, const backend *b, const float *got, const float *cpu,
                             size_t count, double tolerance) {
    if (!cpu || tolerance == NO_CROSS) return;
    double *as_double = malloc((count ? count : 1) * sizeof *as_double);
    for (size_t i = 0; i < count; i++)
        as_double[i] = cpu[i];
    compare(text("%s, against the cpu backend", what), b, got, as_double, count, tolerance, NULL);
    free(as_double);
}

/* A second run's result must be the first's, bit for bit. */
static void compare_repeat(const char *what, const backend *b, const float *again,
                           const float *first, size_t count) {
    bool ok = count == 0 || memcmp(again, first, count * sizeof(float)) == 0;
    printf("measured: %s %-56s %s tolerance bitwise %s\n", b->name, text("%s: repeat", what),
           ok ? "identical" : "differs", ok ? "ok" : "FAIL");
    check_record(ok, __FILE__, __LINE__, what);
}

/* One output of one run of a case on backend number BI: against the reference, then (not the
 * CPU) against the CPU's result kept in *cpu_result, or (first run, CPU) kept there. */
typedef struct output {
    const char *name;
    const double *ref;
    const double *scales;
    double tolerance;
    double cross; /* against the CPU backend; NO_CROSS: none */
} output;

static void check_output(const char *what, int bi, const output *o, const float *got, size_t count,
                         float **cpu_result, fixture_arena *arena) {
    backend *b = &backends[bi];
    const char *label = text("%s: %s", what, o->name);
    compare(label, b, got, o->ref, count, o->tolerance, o->scales);
    if (b->is_cpu)
        *cpu_result = fixture_copy_floats(arena, got, count);
    else
        compare_with_cpu(label, b, got, *cpu_result, count, o->cross);
}

/* Random inputs, and the same as doubles. */
static float *random_floats(fixture_arena *arena, size_t count, float low, float high) {
    return fixture_random_floats(arena, count ? count : 1, low, high);
}

static double *as_doubles(fixture_arena *arena, const float *x, size_t count) {
    double *out = doubles(arena, count);
    for (size_t i = 0; i < count; i++)
        out[i] = x[i];
    return out;
}

/* --- GEMMs: gemm, gemm_fp32, gemm_strided_batched, under each precision ------------------- */

typedef struct gemm_shape {
    int m, n, k, batch; /* batch 0: a plain GEMM (gemm, gemm_fp32) */
    float alpha, beta;
    int pad_a, pad_b, pad_c;     /* leading dimension beyond the columns */
    int64_t gap_a, gap_b, gap_c; /* batched: stride beyond the entry */
    bool share_a, share_b;       /* batched: stride 0 */
} gemm_shape;

static const gemm_shape GEMM_SHAPES[] = {
    {1, 1, 1, 0, 1.0f, 0.0f, 0, 0, 0, 0, 0, 0, false, false},
    {1, 7, 5, 0, 0.5f, 1.0f, 0, 0, 0, 0, 0, 0, false, false},
    {33, 65, 1, 0, 1.0f, 0.0f, 0, 0, 0, 0, 0, 0, false, false},    /* an outer product */
    {3, 1, 300, 0, -1.25f, 0.25f, 0, 0, 0, 0, 0, 0, false, false}, /* one column, long k */
    {37, 29, 53, 0, 0.75f, 0.5f, 3, 1, 2, 0, 0, 0, false, false},  /* padded, odd */
    {64, 96, 256, 0, 1.0f, 0.0f, 3, 1, 2, 0, 0, 0, false, false},
    {9, 5, 7, 0, 1.0f, 0.5f, 1000, 517, 2049, 0, 0, 0, false, false}, /* large leading dims */
    {5, 7, 0, 0, 1.0f, 0.5f, 0, 0, 0, 0, 0, 0, false, false},         /* k = 0: C = beta C */
    {5, 7, 0, 0, 1.0f, 0.0f, 0, 0, 0, 0, 0, 0, false, false},
    {1, 1, 1, 1, 1.0f, 0.0f, 0, 0, 0, 0, 0, 0, false, false},
    {1, 9, 4, 3, 2.0f, 0.0f, 0, 0, 0, 0, 0, 0, false, false},
    {17, 23, 31, 5, 0.75f, 0.5f, 3, 1, 2, 5, 2, 7, false, false},       /* gaps between entries */
    {64, 64, 32, 8, 0.17677669f, 0.0f, 0, 0, 0, 0, 0, 0, false, false}, /* attention: Q K^T */
    {64, 32, 64, 8, 1.0f, 0.0f, 0, 0, 0, 0, 0, 0, false, false},        /* and P V */
    {9, 13, 11, 4, 1.0f, 1.0f, 0, 0, 0, 0, 0, 0, true, false},          /* a shared A */
    {9, 13, 11, 4, 1.0f, 1.0f, 0, 0, 0, 0, 0, 0, false, true},          /* a shared B */
    {3, 5, 2, 7, 1.0f, 0.5f, 1, 2, 3, 1000, 777, 1501, false, false},   /* large strides */
    {5, 7, 0, 3, 1.0f, 0.5f, 0, 0, 0, 0, 0, 0, false, false},
    {5, 7, 0, 3, 1.0f, 0.0f, 0, 0, 0, 0, 0, 0, false, false},
};
#define GEMM_SHAPE_COUNT ((int)(sizeof GEMM_SHAPES / sizeof GEMM_SHAPES[0]))

typedef enum gemm_variant { GEMM_PLAIN, GEMM_FP32, GEMM_BATCHED, GEMM_VARIANTS } gemm_variant;
static const device_op GEMM_OPS[GEMM_VARIANTS] = {DEVICE_OP_gemm, DEVICE_OP_gemm_fp32,
                                                  DEVICE_OP_gemm_strided_batched};

/* One shape in one layout: operands with their padding and gaps, and the float64 reference
 * for all of C (the padding and gaps must keep their values exactly: scale 1e-30). */
typedef struct gemm_case {
    bool ta, tb;
    int lda, ldb, ldc, batch;
    int64_t sa, sb, sc;
    size_t a_count, b_count, c_count;
    float *a, *b, *c;
    double *ref, *scales;
} gemm_case;

static void gemm_case_make(fixture_arena *arena, const gemm_shape *s, bool ta, bool tb,
                           gemm_case *g) {
    int a_rows = ta ? s->k : s->m, a_cols = ta ? s->m : s->k;
    int b_rows = tb ? s->n : s->k, b_cols = tb ? s->k : s->n;
    *g = (gemm_case){.ta = ta, .tb = tb, .batch = s->batch ? s->batch : 1};
    g->lda = a_cols + s->pad_a;
    g->ldb = b_cols + s->pad_b;
    g->ldc = s->n + s->pad_c;
    if (g->lda < 1) g->lda = 1;
    if (g->ldb < 1) g->ldb = 1;
    int64_t a_entry = (int64_t)a_rows * g->lda, b_entry = (int64_t)b_rows * g->ldb;
    int64_t c_entry = (int64_t)s->m * g->ldc;
    g->sa = s->share_a ? 0 : a_entry + s->gap_a;
    g->sb = s->share_b ? 0 : b_entry + s->gap_b;
    g->sc = c_entry + s->gap_c;
    g->a_count = (size_t)(g->sa * (g->batch - 1) + a_entry);
    g->b_count = (size_t)(g->sb * (g->batch - 1) + b_entry);
    g->c_count = (size_t)(g->sc * (g->batch - 1) + c_entry);
    g->a = random_floats(arena, g->a_count, -1.0f, 1.0f);
    g->b = random_floats(arena, g->b_count, -1.0f, 1.0f);
    g->c = random_floats(arena, g->c_count, -1.0f, 1.0f);
    g->ref = as_doubles(arena, g->c, g->c_count);
    g->scales = doubles(arena, g->c_count);
    for (size_t e = 0; e < g->c_count; e++)
        g->scales[e] = 1e-30;
    for (int entry = 0; entry < g->batch; entry++) {
        const float *a = g->a + entry * g->sa, *b = g->b + entry * g->sb;
        for (int i = 0; i < s->m; i++)
            for (int j = 0; j < s->n; j++) {
                double sum = 0.0, magnitude = 0.0;
                for (int p = 0; p < s->k; p++) {
                    double a_ip = ta ? a[(size_t)p * g->lda + i] : a[(size_t)i * g->lda + p];
                    double b_pj = tb ? b[(size_t)j * g->ldb + p] : b[(size_t)p * g->ldb + j];
                    sum += a_ip * b_pj;
                    magnitude += fabs(a_ip * b_pj);
                }
                size_t at = (size_t)(entry * g->sc) + (size_t)i * g->ldc + j;
                double c_ij = g->c[at];
                g->ref[at] = (double)s->alpha * sum + (double)s->beta * c_ij;
                g->scales[at] = fabs(s->alpha) * magnitude + fabs(s->beta * c_ij) + 1e-30;
            }
    }
}

/* The operation on backend B from C's initial values; its result (held by ARENA). */
static float *gemm_run(backend *b, fixture_arena *arena, gemm_variant variant, const gemm_shape *s,
                       const gemm_case *g, const float *da, const float *db, float *dc) {
    CHECK_OK(device_copy_host_to_device(b->dev, dc, g->c, g->c_count * sizeof(float)));
    if (variant == GEMM_BATCHED)
        device_gemm_strided_batched(b->dev, g->ta, g->tb, s->m, s->n, s->k, s->alpha, da, g->lda,
                                    g->sa, db, g->ldb, g->sb, s->beta, dc, g->ldc, g->sc, g->batch);
    else if (variant == GEMM_FP32)
        device_gemm_fp32(b->dev, g->ta, g->tb, s->m, s->n, s->k, s->alpha, da, g->lda, db, g->ldb,
                         s->beta, dc, g->ldc);
    else
        device_gemm(b->dev, g->ta, g->tb, s->m, s->n, s->k, s->alpha, da, g->lda, db, g->ldb,
                    s->beta, dc, g->ldc);
    return dev_floats(b, arena, dc, g->c_count);
}

/* How the operands reach the multiply in each precision: rounded to `unit` relative (0: as
 * float32), and accumulated by tensor cores, whose float32 additions may truncate (unit
 * roundoff 2^-23; Fasi et al., "Numerical behavior of NVIDIA tensor cores", 2021). TF32 takes
 * 2^-10, allowing the conversion to truncate its 10 stored bits; bf16 and fp16 round to
 * nearest: 2^-8 and 2^-11. */
typedef struct gemm_mode {
    precision_kind precision;
    const char *name;
    bool before_set_precision; /* fp32 as the backend opens, before any set_precision */
    double unit;
    bool tensor_cores;
    size_t operand_floats; /* 0: enough for every shape; else this (batches in chunks) */
} gemm_mode;

/* The bound on |C - exact| for one element, relative to |alpha| sum_p |a_ip b_pj| + |beta c|:
 * k products and sums, alpha, beta and the last add (gamma(k + 3)), the rounded operands
 * (2 unit + unit^2), and the float64 reference's own sum. */
static double gemm_bound(int k, double unit, bool tensor_cores) {
    return float_sum_gamma(k + 3, tensor_cores ? 2 * U : U) + 2.0 * unit + unit * unit +
           float_sum_gamma(k + 1, 0x1p-53);
}

static double bound_fp32(int k) {
    return float_sum_gamma(k + 3, U);
}

/* Whether a shape has elements and terms enough that rounding operands to a reduced format
 * shows, with certainty, as an error above u/16 of the format somewhere in C: each element's
 * relative error is a random walk of k operand roundings, of deviation near u / sqrt(k), and
 * over 1000 elements the worst is several deviations out. */
static bool gemm_probe(const gemm_shape *s) {
    return (size_t)s->m * s->n * (s->batch ? s->batch : 1) >= 1000 && s->k >= 16;
}

static void gemm_worst(const gemm_case *g, const float *got, double *worst) {
    *worst = 0.0;
    for (size_t e = 0; e < g->c_count; e++) {
        double error = fabs((double)got[e] - g->ref[e]) / g->scales[e];
        if (!(error <= *worst)) *worst = isnan(error) ? INFINITY : error;
    }
}

static void run_gemms(void) {
    size_t most = 0, entry_most = 0;
    for (int si = 0; si < GEMM_SHAPE_COUNT; si++) {
        const gemm_shape *s = &GEMM_SHAPES[si];
        int big = (s->m > s->n ? s->m : s->n) > s->k ? (s->m > s->n ? s->m : s->n) : s->k;
        size_t pads = (size_t)(s->pad_a > s->pad_b ? s->pad_a : s->pad_b);
        size_t entry = (size_t)big * ((size_t)big + pads);
        int64_t gaps = s->gap_a > s->gap_b ? s->gap_a : s->gap_b;
        size_t whole = (entry + (size_t)gaps) * (size_t)(s->batch ? s->batch : 1);
        if (whole > most) most = whole;
        if (s->batch && entry + (size_t)gaps > entry_most) entry_most = entry + (size_t)gaps;
    }
    const gemm_mode modes[] = {
        {PRECISION_FP32, "fp32 (as opened)", true, 0.0, false, 0},
        {PRECISION_FP32, "fp32", false, 0.0, false, 0},
        {PRECISION_TF32, "tf32", false, 0x1p-10, true, 0},
        {PRECISION_BF16, "bf16", false, 0x1p-8, true, 0},
        {PRECISION_FP16, "fp16", false, 0x1p-11, true, 0},
        /* Cast buffers of two entries: a batch runs in chunks (plain GEMMs are left out). */
        {PRECISION_BF16, "bf16 in chunks", false, 0x1p-8, true, 2 * entry_most + 100},
    };
    const int mode_count = (int)(sizeof modes / sizeof modes[0]);
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        /* fp32's error per variant, shape and layout, measured before the reduced modes. */
        static double fp32_error[GEMM_VARIANTS][GEMM_SHAPE_COUNT][4];
        for (int mi = 0; mi < mode_count; mi++) {
            const gemm_mode *mode = &modes[mi];
            if (mode->precision != PRECISION_FP32 &&
                !device_supports(b->dev, precision_capability(mode->precision))) {
                check_not_run(
                    text("gemm, gemm_fp32 and gemm_strided_batched in %s on %s", mode->name,
                         b->name),
                    text("the %s backend lacks %s", b->name, precision_kind_name(mode->precision)));
                continue;
            }
            if (!mode->before_set_precision)
                CHECK_OK(device_set_precision(b->dev, mode->precision, b->alloc,
                                              mode->operand_floats ? mode->operand_floats : most));
            for (int variant = 0; variant < GEMM_VARIANTS; variant++) {
                if (!runs(b, GEMM_OPS[variant], false)) continue;
                for (int si = 0; si < GEMM_SHAPE_COUNT; si++) {
                    const gemm_shape *s = &GEMM_SHAPES[si];
                    if ((variant == GEMM_BATCHED) != (s->batch > 0)) continue;
                    if (mode->operand_floats && variant != GEMM_BATCHED) continue;
                    for (int layout = 0; layout < 4; layout++) {
                        fixture_arena *arena = fixture_arena_new();
                        gemm_case g;
                        gemm_case_make(arena, s, layout & 1, layout & 2, &g);
                        float *da = dev_upload(b, g.a, g.a_count * sizeof(float));
                        float *db = dev_upload(b, g.b, g.b_count * sizeof(float));
                        float *dc = dev_alloc(b, g.c_count * sizeof(float));
                        float *got = gemm_run(b, arena, variant, s, &g, da, db, dc);
                        /* gemm_fp32 stays fp32 whatever the mode. */
                        bool reduced = mode->unit > 0 && variant != GEMM_FP32;
                        double bound = reduced ? gemm_bound(s->k, mode->unit, mode->tensor_cores)
                                               : gemm_bound(s->k, 0.0, false);
                        const char *what =
                            text("%s %s %c%c m=%d n=%d k=%d batch=%d alpha=%g beta=%g",
                                 device_op_name(GEMM_OPS[variant]), mode->name, g.ta ? 'T' : 'N',
                                 g.tb ? 'T' : 'N', s->m, s->n, s->k, s->batch, s->alpha, s->beta);
                        char label[256];
                        snprintf(label, sizeof label, "%s", what);
                        compare(label, b, got, g.ref, g.c_count, bound, g.scales);
                        float *again = gemm_run(b, arena, variant, s, &g, da, db, dc);
                        compare_repeat(label, b, again, got, g.c_count);
                        double worst = 0.0;
                        gemm_worst(&g, got, &worst);
                        if (mode->precision == PRECISION_FP32 && !mode->before_set_precision)
                            fp32_error[variant][si][layout] = worst;
                        if (reduced && gemm_probe(s) && !mode->operand_floats) {
                            /* The precision took effect: an error above what fp32 gave on
                             * these inputs, and above anything fp32 arithmetic can give. */
                            double least = fmax(fmax(mode->unit / 16.0, 2.0 * bound_fp32(s->k)),
                                                8.0 * fp32_error[variant][si][layout]);
                            bool ok = worst >= least;
                            printf("measured: %s %-56s worst %.3g tolerance >=%.3g %s\n", b->name,
                                   text("%s: above fp32's error", label), worst, least,
                                   ok ? "ok" : "FAIL");
                            if (!ok)
                                fprintf(stderr,
                                        "  %s %s: worst error %.3g, fp32's %.3g: the precision "
                                        "did not take effect\n",
                                        b->name, label, worst, fp32_error[variant][si][layout]);
                            check_record(ok, __FILE__, __LINE__, label);
                        }
                        backend_release(b);
                        fixture_arena_free(arena);
                    }
                }
            }
        }
        CHECK_OK(device_set_precision(b->dev, PRECISION_FP32, b->alloc, most));
    }
}

/* --- bias, scale, add ------------------------------------------------------------------------ */

typedef struct matrix_shape {
    int rows, cols;
    bool gpu_size;
} matrix_shape;

/* Correctly rounded elementwise results (one float operation each): within half an ulp of the
 * exact value, i.e. u relative to it. */
static double *relative_scales(fixture_arena *arena, const double *ref, size_t count) {
    double *scales = doubles(arena, count);
    for (size_t i = 0; i < count; i++)
        scales[i] = fabs(ref[i]) > 0 ? fabs(ref[i]) : DBL_MIN;
    return scales;
}

static void run_bias_and_scale(void) {
    static const matrix_shape shapes[] = {
        {1, 1, false},    {1, 33, false},         {33, 1, false},     {70, 45, false},
        {3000, 7, false}, {64 * 1024, 768, true}, {100, 40000, true},
    };
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const matrix_shape *s = &shapes[si];
        if (s->gpu_size && !gpu_size_runs()) continue;
        fixture_arena *arena = fixture_arena_new();
        int rows = s->rows, cols = s->cols;
        size_t count = (size_t)rows * cols;
        float *y = random_floats(arena, count, -2.0f, 2.0f);
        float *bias = random_floats(arena, (size_t)cols, -1.0f, 1.0f);
        float *gradient = random_floats(arena, (size_t)cols, -1.0f, 1.0f);
        const float alpha = -0.37f;
        double *ref_y = doubles(arena, count), *ref_scaled = doubles(arena, count);
        double *ref_gradient = as_doubles(arena, gradient, (size_t)cols);
        double *gradient_scales = doubles(arena, (size_t)cols);
        for (int c = 0; c < cols; c++)
            gradient_scales[c] = fabs(gradient[c]) + 1e-30;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                size_t at = (size_t)r * cols + c;
                ref_y[at] = (double)y[at] + bias[c];
                ref_scaled[at] = (double)y[at] * alpha;
                ref_gradient[c] += y[at];
                gradient_scales[c] += fabs(y[at]);
            }
        const char *shape = text("%dx%d", rows, cols);
        char what[64];
        snprintf(what, sizeof what, "%s", shape);
        output o_bias = {"bias_add y", ref_y, relative_scales(arena, ref_y, count), U, 1e-6};
        output o_scale = {"scale x", ref_scaled, relative_scales(arena, ref_scaled, count), U,
                          1e-6};
        /* rows + 1 terms added in whatever order. */
        output o_gradient = {"bias_gradient_accumulate", ref_gradient, gradient_scales,
                             float_sum_gamma(rows + 1, U), NO_CROSS};
        float *cpu_bias = NULL, *cpu_scale = NULL, *cpu_gradient = NULL;
        for (int bi = 0; bi < backend_count; bi++) {
            backend *b = &backends[bi];
            if (runs(b, DEVICE_OP_bias_add, s->gpu_size)) {
                float *dy = dev_upload(b, y, count * sizeof(float));
                float *dbias = dev_upload(b, bias, (size_t)cols * sizeof(float));
                device_bias_add(b->dev, rows, cols, dy, dbias);
                check_output(what, bi, &o_bias, dev_floats(b, arena, dy, count), count, &cpu_bias,
                             arena);
            }
            if (runs(b, DEVICE_OP_scale, s->gpu_size)) {
                float *dy = dev_upload(b, y, count * sizeof(float));
                device_scale(b->dev, count, alpha, dy);
                check_output(what, bi, &o_scale, dev_floats(b, arena, dy, count), count, &cpu_scale,
                             arena);
            }
            if (runs(b, DEVICE_OP_bias_gradient_accumulate, s->gpu_size)) {
                float *dy = dev_upload(b, y, count * sizeof(float));
                float *dg = dev_upload(b, gradient, (size_t)cols * sizeof(float));
                device_bias_gradient_accumulate(b->dev, rows, cols, dy, dg);
                float *first = dev_floats(b, arena, dg, (size_t)cols);
                check_output(what, bi, &o_gradient, first, (size_t)cols, &cpu_gradient, arena);
                CHECK_OK(
                    device_copy_host_to_device(b->dev, dg, gradient, (size_t)cols * sizeof(float)));
                device_bias_gradient_accumulate(b->dev, rows, cols, dy, dg);
                compare_repeat(text("bias_gradient_accumulate %s", shape), b,
                               dev_floats(b, arena, dg, (size_t)cols), first, (size_t)cols);
            }
            backend_release(b);
        }
        fixture_arena_free(arena);
    }
}

/* add: correctly rounded, out of place and in place (out == a, as a residual connection). */
static void run_add(void) {
    static const size_t counts[] = {1, 7, 10007};
    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t count = counts[ci];
        fixture_arena *arena = fixture_arena_new();
        float *a = random_floats(arena, count, -3.0f, 3.0f);
        float *b_values = random_floats(arena, count, -3.0f, 3.0f);
        double *ref = doubles(arena, count);
        for (size_t i = 0; i < count; i++)
            ref[i] = (double)a[i] + b_values[i];
        output o = {"add", ref, relative_scales(arena, ref, count), U, BITWISE};
        output o_in_place = {"add in place", ref, o.scales, U, BITWISE};
        const char *what = text("%zu elements", count);
        float *cpu = NULL, *cpu_in_place = NULL;
        for (int bi = 0; bi < backend_count; bi++) {
            backend *b = &backends[bi];
            if (!runs(b, DEVICE_OP_add, false)) continue;
            float *da = dev_upload(b, a, count * sizeof(float));
            float *db = dev_upload(b, b_values, count * sizeof(float));
            float *dout = dev_alloc(b, count * sizeof(float));
            device_add(b->dev, count, da, db, dout);
            check_output(what, bi, &o, dev_floats(b, arena, dout, count), count, &cpu, arena);
            device_add(b->dev, count, da, db, da);
            check_output(what, bi, &o_in_place, dev_floats(b, arena, da, count), count,
                         &cpu_in_place, arena);
            backend_release(b);
        }
        fixture_arena_free(arena);
    }
}

/* --- activations ------------------------------------------------------------------------------ */

static double activation_reference(activation_kind kind, double x) {
    switch (kind) {
    case ACTIVATION_RELU:
        return x < 0.0 ? 0.0 : x; /* NaN passes through */
    case ACTIVATION_GELU:
        return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case ACTIVATION_TANH:
        return tanh(x);
    case ACTIVATION_SIGMOID:
        return 1.0 / (1.0 + exp(-x));
    case ACTIVATION_GELU_TANH:
        return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    }
    return NAN;
}

static double activation_derivative(activation_kind kind, double x) {
    switch (kind) {
    case ACTIVATION_RELU:
        return x > 0.0 ? 1.0 : 0.0; /* 0 for NaN, as for x <= 0 */
    case ACTIVATION_GELU:
        return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
    case ACTIVATION_TANH: {
        double t = tanh(x);
        return 1.0 - t * t;
    }
    case ACTIVATION_SIGMOID: {
        double s = 1.0 / (1.0 + exp(-x));
        return s * (1.0 - s);
    }
    case ACTIVATION_GELU_TANH: {
        double k = sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x);
        double t = tanh(u);
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
    }
    }
    return NAN;
}

/* Forward and backward of each activation; y is given to the backward pass as the exact f(x)
 * rounded. Each formula is a handful of float operations and library functions accurate to
 * a few ulps, whose errors scale with the inputs' size: within 16 u of max(1, |x|, |result|)
 * (NaN inputs: NaN out, and relu's gradient 0). */
static void run_activations(void) {
    static const size_t counts[] = {1, 7, 4099};
    static const activation_kind kinds[] = {ACTIVATION_RELU, ACTIVATION_GELU, ACTIVATION_TANH,
                                            ACTIVATION_SIGMOID, ACTIVATION_GELU_TANH};
    static const char *const names[] = {"relu", "gelu", "tanh", "sigmoid", "gelu_tanh"};
    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t count = counts[ci];
        fixture_arena *arena = fixture_arena_new();
        float *x = random_floats(arena, count, -6.0f, 6.0f);
        const float special[] = {0.0f, -0.0f, 30.0f, -30.0f, NAN, 1e-3f, -1e-20f, 88.0f, -90.0f};
        for (size_t i = 0; i < sizeof special / sizeof special[0] && count > 100; i++)
            x[i] = special[i];
        float *dy = random_floats(arena, count, -1.0f, 1.0f);
        for (int ki = 0; ki < 5; ki++) {
            activation_kind kind = kinds[ki];
            double *ref_y = doubles(arena, count), *ref_dx = doubles(arena, count);
            double *scales_y = doubles(arena, count), *scales_dx = doubles(arena, count);
            float *y = fixture_alloc(arena, count * sizeof(float));
            for (size_t i = 0; i < count; i++) {
                ref_y[i] = activation_reference(kind, x[i]);
                y[i] = (float)ref_y[i];
                ref_dx[i] = dy[i] * activation_derivative(kind, x[i]);
                scales_y[i] = fmax(1.0, fmax(fabs((double)x[i]), fabs(ref_y[i])));
                scales_dx[i] = fmax(1.0, fmax(fabs((double)x[i]), fabs(ref_dx[i])));
            }
            output o_forward = {"forward", ref_y, scales_y, 16 * U, 1e-5};
            output o_backward = {"backward", ref_dx, scales_dx, 16 * U, 1e-5};
            const char *what = text("activation %s, %zu elements", names[ki], count);
            char label[96];
            snprintf(label, sizeof label, "%s", what);
            float *cpu_forward = NULL, *cpu_backward = NULL;
            for (int bi = 0; bi < backend_count; bi++) {
                backend *b = &backends[bi];
                float *dx_in = dev_upload(b, x, count * sizeof(float));
                float *dout = dev_alloc(b, count * sizeof(float));
                if (runs(b, DEVICE_OP_activation_forward, false)) {
                    device_activation_forward(b->dev, kind, count, dx_in, dout);
                    check_output(label, bi, &o_forward, dev_floats(b, arena, dout, count), count,
                                 &cpu_forward, arena);
                }
                if (runs(b, DEVICE_OP_activation_backward, false)) {
                    float *dev_y = dev_upload(b, y, count * sizeof(float));
                    float *dev_dy = dev_upload(b, dy, count * sizeof(float));
                    device_activation_backward(b->dev, kind, count, dx_in, dev_y, dev_dy, dout);
                    check_output(label, bi, &o_backward, dev_floats(b, arena, dout, count), count,
                                 &cpu_backward, arena);
                }
                backend_release(b);
            }
        }
        fixture_arena_free(arena);
    }
}

/* --- dropout -----------------------------------------------------------------------------------
 */

/* The mask exactly as the contract writes it; kept values within an ulp of x / (1 - rate) (the
 * backends multiply by the rounded 1 / (1 - rate)), dropped ones exactly 0, rate 0 the
 * identity bit for bit; and the backward pass the same mask on dy. */
static void run_dropout(void) {
    static const matrix_shape shapes[] = {
        {1, 1, false}, {1, 257, false}, {257, 1, false}, {33, 71, false}};
    static const float rates[] = {0.3f, 0.9f, 0.0f};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int rows = shapes[si].rows, cols = shapes[si].cols;
        size_t count = (size_t)rows * cols;
        fixture_arena *arena = fixture_arena_new();
        int64_t *row_ids = fixture_alloc(arena, (size_t)rows * sizeof *row_ids);
        for (int r = 0; r < rows; r++) /* global rows, far apart and beyond 32 bits */
            row_ids[r] = (int64_t)(rng_hash4(5, 6, 7, (uint64_t)r) >> 26);
        float *x = random_floats(arena, count, -3.0f, 3.0f);
        for (int ri = 0; ri < 3; ri++) {
            float rate = rates[ri];
            dropout_key key = {.seed = 0x123456789abcull, .step = 17 + ri, .layer = 3};
            double *ref = doubles(arena, count), *scales = doubles(arena, count);
            size_t kept = 0;
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++) {
                    size_t at = (size_t)r * cols + c;
                    uint64_t unit = (uint64_t)row_ids[r] * (uint64_t)cols + (uint64_t)c;
                    bool keep =
                        rng_uniform(rng_hash4(key.seed, RNG_PURPOSE_DROPOUT, (uint64_t)key.step,
                                              ((uint64_t)key.layer << 40) ^ unit)) >= rate;
                    kept += keep;
                    ref[at] = keep ? (double)x[at] / (1.0 - (double)rate) : 0.0;
                    /* Dropped: exactly 0 (scale 1e-300); kept: an ulp or two. */
                    scales[at] = keep ? fmax(fabs(ref[at]), 1e-300) : 1e-300;
                }
            if (count > 1000) CHECK(fabs((double)kept / count - (1.0 - rate)) < 0.05);
            output o_forward = {"forward", ref, scales, rate == 0.0f ? BITWISE : 4 * U, BITWISE};
            output o_backward = {"backward", ref, scales, rate == 0.0f ? BITWISE : 4 * U, BITWISE};
            const char *what = text("dropout %dx%d rate %g", rows, cols, rate);
            char label[96];
            snprintf(label, sizeof label, "%s", what);
            float *cpu_forward = NULL, *cpu_backward = NULL;
            for (int bi = 0; bi < backend_count; bi++) {
                backend *b = &backends[bi];
                int64_t *dids = dev_upload(b, row_ids, (size_t)rows * sizeof *row_ids);
                float *dxin = dev_upload(b, x, count * sizeof(float));
                float *dout = dev_alloc(b, count * sizeof(float));
                if (runs(b, DEVICE_OP_dropout_forward, false)) {
                    device_dropout_forward(b->dev, rows, cols, rate, key, dids, dxin, dout);
                    check_output(label, bi, &o_forward, dev_floats(b, arena, dout, count), count,
                                 &cpu_forward, arena);
                }
                if (runs(b, DEVICE_OP_dropout_backward, false)) {
                    device_dropout_backward(b->dev, rows, cols, rate, key, dids, dxin, dout);
                    check_output(label, bi, &o_backward, dev_floats(b, arena, dout, count), count,
                                 &cpu_backward, arena);
                }
                backend_release(b);
            }
        }
        fixture_arena_free(arena);
    }
}

/* --- losses and accuracy -----------------------------------------------------------------------
 */

typedef void (*loss_function)(device *dev, int rows, int cols, const float *logits,
                              const int32_t *labels, const float *targets, float scale,
                              float *loss_sum, float *dlogits);

/* The float64 loss (times scale, added to `start`) and gradient of one loss, with the sums of
 * the magnitudes each is made of, for the tolerances. */
typedef struct loss_reference {
    double loss, loss_magnitude;
    double *dlogits, *scales;
} loss_reference;

static void loss_reference_compute(device_op op, int rows, int cols, const float *logits,
                                   const int32_t *labels, const float *targets, float scale,
                                   double start, loss_reference *out) {
    double total = 0.0, magnitude = 0.0;
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * cols;
        double t[1] = {0};
        (void)t;
        if (op == DEVICE_OP_softmax_cross_entropy) {
            double max = x[0];
            for (int c = 1; c < cols; c++)
                max = fmax(max, x[c]);
            double sum = 0.0;
            for (int c = 0; c < cols; c++)
                sum += exp((double)x[c] - max);
            double lse = max + log(sum), target_sum = 0.0, row = 0.0, row_magnitude = 0.0;
            for (int c = 0; c < cols; c++) {
                double target = targets ? targets[(size_t)r * cols + c] : labels[r] == c;
                target_sum += target;
                row += target * (lse - x[c]);
                row_magnitude += fabs(target) * (fabs(lse) + fabs((double)x[c]) + 1.0);
            }
            for (int c = 0; c < cols; c++) {
                double target = targets ? targets[(size_t)r * cols + c] : labels[r] == c;
                double p = exp((double)x[c] - lse);
                out->dlogits[(size_t)r * cols + c] = scale * (p * target_sum - target);
                /* exp of a rounded x - max: an error of u |x - max| in the exponent. */
                out->scales[(size_t)r * cols + c] =
                    fabs(scale) *
                        (p * fabs(target_sum) * (1.0 + fabs((double)x[c] - max)) + fabs(target)) +
                    1e-30;
            }
            total += row;
            magnitude += row_magnitude;
        } else {
            for (int c = 0; c < cols; c++) {
                size_t at = (size_t)r * cols + c;
                double target = targets ? targets[at] : cols == 1 ? labels[r] : labels[r] == c;
                double v = x[c];
                if (op == DEVICE_OP_binary_cross_entropy) {
                    double softplus = log1p(exp(-fabs(v)));
                    total += fmax(v, 0.0) - v * target + softplus;
                    magnitude += fabs(v) + fabs(v * target) + softplus + 1.0;
                    double sigmoid = 1.0 / (1.0 + exp(-v));
                    out->dlogits[at] = scale * (sigmoid - target);
                    out->scales[at] = fabs(scale) * (sigmoid + fabs(target)) + 1e-30;
                } else { /* mean squared error */
                    double d = v - target;
                    total += d * d / cols;
                    magnitude += (d * d + fabs(d) * (fabs(v) + fabs(target))) / cols;
                    out->dlogits[at] = 2.0 * scale / cols * d;
                    out->scales[at] = 2.0 * fabs(scale) / cols * (fabs(v) + fabs(target)) + 1e-30;
                }
            }
        }
    }
    out->loss = start + scale * total;
    out->loss_magnitude = fabs(start) + fabs(scale) * magnitude;
}

/* One loss on every backend, labels or targets (the other NULL), with and without dlogits.
 * The loss is a sum of rows x cols terms, each a few float operations and library calls:
 * within gamma(rows * cols + cols + 8) of the sum of their magnitudes; dlogits elementwise,
 * from a float sum of a row's exps: within gamma(cols + 8) of its terms' magnitudes. */
static void loss_case(device_op op, loss_function function, const char *what, int rows, int cols,
                      const int32_t *labels, const float *targets, const float *logits,
                      bool gpu_size, fixture_arena *arena) {
    size_t count = (size_t)rows * cols;
    float scale = 1.0f / (float)rows;
    const float start = 2.5f; /* losses add to what is there */
    loss_reference ref = {.dlogits = doubles(arena, count), .scales = doubles(arena, count)};
    loss_reference_compute(op, rows, cols, logits, labels, targets, scale, start, &ref);
    double loss_tolerance = float_sum_gamma((double)count + cols + 8, U) + 2 * U;
    double loss_scale = ref.loss_magnitude + 1e-30;
    output o_loss = {"loss", &ref.loss, &loss_scale, loss_tolerance, 1e-5};
    output o_gradient = {"dlogits", ref.dlogits, ref.scales, float_sum_gamma(cols + 8, U) + 8 * U,
                         NO_CROSS};
    char label[160];
    snprintf(label, sizeof label, "%s %s %dx%d", device_op_name(op), what, rows, cols);
    float *cpu_loss[2] = {NULL, NULL}, *cpu_gradient = NULL;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, op, gpu_size)) continue;
        float *dlogits_in = dev_upload(b, logits, count * sizeof(float));
        int32_t *dlabels = labels ? dev_upload(b, labels, (size_t)rows * sizeof(int32_t)) : NULL;
        float *dtargets = targets ? dev_upload(b, targets, count * sizeof(float)) : NULL;
        float *dgradient = dev_alloc(b, count * sizeof(float));
        float *dloss = dev_alloc(b, sizeof(float));
        for (int with_gradient = 0; with_gradient < 2; with_gradient++) {
            float *first = NULL;
            for (int run = 0; run < 2; run++) {
                CHECK_OK(device_copy_host_to_device(b->dev, dloss, &start, sizeof start));
                function(b->dev, rows, cols, dlogits_in, dlabels, dtargets, scale, dloss,
                         with_gradient ? dgradient : NULL);
                float *got = dev_floats(b, arena, dloss, 1);
                const char *name = text("%s%s", label, with_gradient ? " with dlogits" : "");
                if (run == 0) {
                    first = got;
                    check_output(name, bi, &o_loss, got, 1, &cpu_loss[with_gradient], arena);
                } else {
                    compare_repeat(text("%s loss", name), b, got, first, 1);
                }
            }
            if (with_gradient)
                check_output(label, bi, &o_gradient, dev_floats(b, arena, dgradient, count), count,
                             &cpu_gradient, arena);
        }
        if (!b->is_cpu && cpu_gradient) /* the hand-written GPU test's bar: 1e-5 of scale */
        {
            double *cpu = as_doubles(arena, cpu_gradient, count);
            double *scales = doubles(arena, count);
            for (size_t e = 0; e < count; e++)
                scales[e] = scale;
            compare(text("%s: dlogits, against the cpu backend", label), b,
                    dev_floats(b, arena, dgradient, count), cpu, count, 1e-5, scales);
        }
        backend_release(b);
    }
}

static void losses_of_shape(int rows, int cols, bool gpu_size) {
    if (gpu_size && !gpu_size_runs()) return;
    fixture_arena *arena = fixture_arena_new();
    size_t count = (size_t)rows * cols;
    float *logits = random_floats(arena, count, -20.0f, 20.0f);
    for (int c = 0; c < cols && rows > 1; c++) /* a row of huge logits: stability */
        logits[c] = c % 2 ? 80.0f : -85.0f;
    float *targets = random_floats(arena, count, 0.0f, 1.0f);
    int32_t *labels = fixture_alloc(arena, (size_t)rows * sizeof *labels);
    int32_t *bits = fixture_alloc(arena, (size_t)rows * sizeof *bits);
    for (int r = 0; r < rows; r++) {
        labels[r] = (int32_t)(rng_hash4(1, 2, 3, (uint64_t)r) % (uint64_t)cols);
        bits[r] = (int32_t)(rng_hash4(1, 2, 4, (uint64_t)r) % 2);
    }
    loss_case(DEVICE_OP_softmax_cross_entropy, device_softmax_cross_entropy, "labels", rows, cols,
              labels, NULL, logits, gpu_size, arena);
    loss_case(DEVICE_OP_softmax_cross_entropy, device_softmax_cross_entropy, "targets", rows, cols,
              NULL, targets, logits, gpu_size, arena);
    loss_case(DEVICE_OP_binary_cross_entropy, device_binary_cross_entropy, "targets", rows, cols,
              NULL, targets, logits, gpu_size, arena);
    loss_case(DEVICE_OP_binary_cross_entropy, device_binary_cross_entropy, "labels", rows, 1, bits,
              NULL, logits, gpu_size, arena);
    loss_case(DEVICE_OP_mean_squared_error, device_mean_squared_error, "labels", rows, cols, labels,
              NULL, logits, gpu_size, arena);
    loss_case(DEVICE_OP_mean_squared_error, device_mean_squared_error, "one column", rows, 1, bits,
              NULL, logits, gpu_size, arena);
    loss_case(DEVICE_OP_mean_squared_error, device_mean_squared_error, "targets", rows, cols, NULL,
              targets, logits, gpu_size, arena);
    fixture_arena_free(arena);
}

/* count_correct: the exact count (argmax's first of equal maxima; a NaN never beats an earlier
 * value, as a comparison with > decides), added to what is there. */
static void count_correct_case(int rows, int cols, bool gpu_size) {
    if (gpu_size && !gpu_size_runs()) return;
    fixture_arena *arena = fixture_arena_new();
    size_t count = (size_t)rows * cols;
    float *logits = random_floats(arena, count, -4.0f, 4.0f);
    int32_t *labels = fixture_alloc(arena, (size_t)rows * sizeof *labels);
    for (int r = 0; r < rows; r++) {
        float *x = logits + (size_t)r * cols;
        labels[r] = (int32_t)(rng_hash4(9, 9, 9, (uint64_t)r) % (uint64_t)(cols > 1 ? cols : 2));
        if (cols > 1 && r % 5 == 1) { /* tied maxima: the first wins */
            x[labels[r]] = 9.0f;
            x[cols - 1] = 9.0f;
            x[0] = 9.0f;
        }
        if (cols > 1 && r % 7 == 2) x[r % cols] = NAN; /* NaN logits, also at index 0 */
        if (r % 3 == 0) x[labels[r] % cols] = 10.0f;   /* some hits in any case */
    }
    double hits = 1.0; /* added to what is there */
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * cols;
        int predicted = 0;
        if (cols == 1)
            predicted = x[0] > 0.0f;
        else
            for (int c = 1; c < cols; c++)
                if (x[c] > x[predicted]) predicted = c;
        hits += predicted == labels[r];
    }
    output o = {"correct", &hits, NULL, BITWISE, BITWISE};
    const char *what = text("count_correct %dx%d", rows, cols);
    char label[96];
    snprintf(label, sizeof label, "%s", what);
    float *cpu = NULL;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, DEVICE_OP_count_correct, gpu_size)) continue;
        const float one = 1.0f;
        float *dlogits = dev_upload(b, logits, count * sizeof(float));
        int32_t *dlabels = dev_upload(b, labels, (size_t)rows * sizeof(int32_t));
        float *dcorrect = dev_upload(b, &one, sizeof one);
        device_count_correct(b->dev, rows, cols, dlogits, dlabels, dcorrect);
        check_output(label, bi, &o, dev_floats(b, arena, dcorrect, 1), 1, &cpu, arena);
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_losses(void) {
    losses_of_shape(1, 1, false);
    losses_of_shape(1, 2, false);
    losses_of_shape(3, 1, false);
    losses_of_shape(67, 13, false);
    losses_of_shape(9, 100, false);   /* rows wider than a warp */
    losses_of_shape(5000, 10, false); /* many blocks adding to one loss */
    /* More rows than the row sums' blocks hold warps (REDUCTION_MAX_PARTIALS x 8): warps take
     * several rows, and all the partials meet in the second pass. */
    losses_of_shape(8 * REDUCTION_MAX_PARTIALS + 1001, 7, true);
    losses_of_shape(512, 50257, true); /* GPT-2's vocabulary */
    count_correct_case(1, 1, false);
    count_correct_case(1, 3, false);
    count_correct_case(67, 13, false);
    count_correct_case(300, 100, false);
    count_correct_case(129, 1, false);
    count_correct_case(8 * REDUCTION_MAX_PARTIALS + 1001, 5, true);
    count_correct_case(512, 50257, true);
}

/* --- optimizers --------------------------------------------------------------------------------
 */

/* Five steps from the same start on every backend: bit for bit the shared per-element
 * arithmetic of engine/optim_update.h (the contract: both backends round each operation on its
 * own, in one order); and the first step against PyTorch's semantics in float64, within a few
 * u of the magnitudes it combines. */
static void sgd_case(size_t count, float momentum, bool nesterov, float weight_decay) {
    fixture_arena *arena = fixture_arena_new();
    const float lr = 0.05f;
    const int steps = 5;
    float *params0 = random_floats(arena, count, -1.0f, 1.0f);
    float *grads[5];
    for (int s = 0; s < steps; s++)
        grads[s] = random_floats(arena, count, -1.0f, 1.0f);
    float *params = fixture_copy_floats(arena, params0, count);
    float *velocity = fixture_alloc(arena, count * sizeof(float));
    double *ref_step1 = doubles(arena, count), *scales_step1 = doubles(arena, count);
    for (size_t i = 0; i < count; i++) {
        double g = (double)grads[0][i] + (double)weight_decay * params0[i];
        /* First step: v = g; the step is g + momentum g (Nesterov) or g. */
        double step = momentum != 0.0f && nesterov ? g + (double)momentum * g : g;
        ref_step1[i] = params0[i] - (double)lr * step;
        scales_step1[i] =
            fabs(params0[i]) + fabs(lr) * (fabs(grads[0][i]) + fabs(weight_decay * params0[i])) *
                                   (1.0 + fabs(momentum));
    }
    float gradient_weight = nesterov ? 1.0f : 0.0f, velocity_weight = nesterov ? momentum : 1.0f;
    double *ref_params = doubles(arena, count), *ref_velocity = doubles(arena, count);
    for (int s = 0; s < steps; s++)
        for (size_t i = 0; i < count; i++)
            sgd_update_element(grads[s][i], &params[i], &velocity[i], lr, momentum, gradient_weight,
                               velocity_weight, weight_decay, s == 0);
    for (size_t i = 0; i < count; i++) {
        ref_params[i] = params[i];
        ref_velocity[i] = velocity[i];
    }
    char label[128];
    snprintf(label, sizeof label, "sgd_update %zu momentum %g nesterov %d weight decay %g", count,
             momentum, nesterov, weight_decay);
    output o_step1 = {"first step", ref_step1, scales_step1, 8 * U, NO_CROSS};
    output o_params = {"parameters after 5 steps", ref_params, NULL, BITWISE, BITWISE};
    output o_velocity = {"velocity after 5 steps", ref_velocity, NULL, BITWISE, BITWISE};
    float *cpu[3] = {NULL, NULL, NULL};
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, DEVICE_OP_sgd_update, false)) continue;
        float *dparams = dev_upload(b, params0, count * sizeof(float));
        float *dvelocity = dev_alloc(b, count * sizeof(float));
        for (int s = 0; s < steps; s++) {
            float *dgrads = dev_upload(b, grads[s], count * sizeof(float));
            device_sgd_update(b->dev, count, dparams, dgrads, momentum != 0.0f ? dvelocity : NULL,
                              lr, momentum, nesterov, weight_decay, s == 0);
            if (s == 0)
                check_output(label, bi, &o_step1, dev_floats(b, arena, dparams, count), count,
                             &cpu[0], arena);
        }
        check_output(label, bi, &o_params, dev_floats(b, arena, dparams, count), count, &cpu[1],
                     arena);
        if (momentum != 0.0f)
            check_output(label, bi, &o_velocity, dev_floats(b, arena, dvelocity, count), count,
                         &cpu[2], arena);
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void adamw_case(size_t count) {
    fixture_arena *arena = fixture_arena_new();
    const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 1e-2f;
    const int steps = 5;
    float *params0 = random_floats(arena, count, -1.0f, 1.0f);
    float *grads[5];
    for (int s = 0; s < steps; s++)
        grads[s] = random_floats(arena, count, -1.0f, 1.0f);
    float *params = fixture_copy_floats(arena, params0, count);
    float *m = fixture_alloc(arena, count * sizeof(float));
    float *v = fixture_alloc(arena, count * sizeof(float));
    /* The first step in float64, as torch.optim.AdamW: m = (1 - b1) g, v = (1 - b2) g^2,
     * m_hat = g, v_hat = g^2: p = p (1 - lr wd) - lr g / (|g| + eps). */
    double *ref_step1 = doubles(arena, count), *scales_step1 = doubles(arena, count);
    for (size_t i = 0; i < count; i++) {
        double g = grads[0][i], p = params0[i];
        ref_step1[i] = p * (1.0 - (double)lr * weight_decay) - (double)lr * g / (fabs(g) + eps);
        scales_step1[i] = fabs(p) + (double)lr;
    }
    for (int s = 0; s < steps; s++) {
        adamw_scalars scalars = adamw_scalars_for(lr, beta1, beta2, eps, weight_decay, s + 1);
        for (size_t i = 0; i < count; i++)
            adamw_update_element(&scalars, grads[s][i], &params[i], &m[i], &v[i]);
    }
    char label[64];
    snprintf(label, sizeof label, "adamw_update %zu", count);
    output o_step1 = {"first step", ref_step1, scales_step1, 16 * U, NO_CROSS};
    output o_params = {"parameters after 5 steps", as_doubles(arena, params, count), NULL, BITWISE,
                       BITWISE};
    output o_m = {"first moment", as_doubles(arena, m, count), NULL, BITWISE, BITWISE};
    output o_v = {"second moment", as_doubles(arena, v, count), NULL, BITWISE, BITWISE};
    float *cpu[4] = {NULL, NULL, NULL, NULL};
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, DEVICE_OP_adamw_update, false)) continue;
        float *dparams = dev_upload(b, params0, count * sizeof(float));
        float *dm = dev_alloc(b, count * sizeof(float)), *dv = dev_alloc(b, count * sizeof(float));
        device_fill_zero(b->dev, dm, count * sizeof(float));
        device_fill_zero(b->dev, dv, count * sizeof(float));
        for (int s = 0; s < steps; s++) {
            float *dgrads = dev_upload(b, grads[s], count * sizeof(float));
            device_adamw_update(b->dev, count, dparams, dgrads, dm, dv, lr, beta1, beta2, eps,
                                weight_decay, s + 1);
            if (s == 0)
                check_output(label, bi, &o_step1, dev_floats(b, arena, dparams, count), count,
                             &cpu[0], arena);
        }
        check_output(label, bi, &o_params, dev_floats(b, arena, dparams, count), count, &cpu[1],
                     arena);
        check_output(label, bi, &o_m, dev_floats(b, arena, dm, count), count, &cpu[2], arena);
        check_output(label, bi, &o_v, dev_floats(b, arena, dv, count), count, &cpu[3], arena);
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_optimizers(void) {
    static const size_t counts[] = {1, 7, 10007}; /* 7: the vector loops' scalar tail */
    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        sgd_case(counts[ci], 0.0f, false, 0.0f);
        sgd_case(counts[ci], 0.0f, false, 1e-2f);
        sgd_case(counts[ci], 0.9f, false, 0.0f);
        sgd_case(counts[ci], 0.9f, true, 5e-3f);
        adamw_case(counts[ci]);
    }
}

/* --- gathers: permute, im2col and col2im, pooling --------------------------------------------- */

static void permute_case(int rank, const int *dims, const int *perm) {
    fixture_arena *arena = fixture_arena_new();
    size_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (size_t)dims[i];
    float *in = random_floats(arena, count, -1.0f, 1.0f);
    double *ref = doubles(arena, count);
    /* out's index (row-major over dims[perm[.]]) from in's coordinates. */
    int coordinate[6] = {0};
    for (size_t e = 0; e < count; e++) {
        size_t at = 0;
        for (int i = 0; i < rank; i++)
            at = at * (size_t)dims[perm[i]] + (size_t)coordinate[perm[i]];
        ref[at] = in[e];
        for (int i = rank - 1; i >= 0; i--) {
            if (++coordinate[i] < dims[i]) break;
            coordinate[i] = 0;
        }
    }
    char label[128];
    int used = snprintf(label, sizeof label, "permute rank %d dims", rank);
    for (int i = 0; i < rank; i++)
        used += snprintf(label + used, sizeof label - (size_t)used, "%s%d", i ? "x" : " ", dims[i]);
    used += snprintf(label + used, sizeof label - (size_t)used, " perm");
    for (int i = 0; i < rank; i++)
        used += snprintf(label + used, sizeof label - (size_t)used, " %d", perm[i]);
    output o = {"out", ref, NULL, BITWISE, BITWISE};
    float *cpu = NULL;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, DEVICE_OP_permute, false)) continue;
        float *din = dev_upload(b, in, count * sizeof(float));
        float *dout = dev_upload(b, in, count * sizeof(float)); /* garbage to overwrite */
        device_permute(b->dev, rank, dims, perm, din, dout);
        check_output(label, bi, &o, dev_floats(b, arena, dout, count), count, &cpu, arena);
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_permute(void) {
    permute_case(1, (int[]){1}, (int[]){0});
    permute_case(1, (int[]){37}, (int[]){0});
    permute_case(2, (int[]){33, 65}, (int[]){1, 0});
    permute_case(2, (int[]){1, 7}, (int[]){1, 0});
    permute_case(4, (int[]){2, 3, 4, 5}, (int[]){0, 2, 1, 3});
    /* Attention: [B][T][3][heads][d] -> [3][B][heads][T][d], and back from [B][heads][T][d]. */
    permute_case(5, (int[]){3, 7, 3, 2, 5}, (int[]){2, 0, 3, 1, 4});
    permute_case(4, (int[]){3, 2, 7, 5}, (int[]){0, 2, 1, 3});
    permute_case(6, (int[]){2, 3, 1, 4, 5, 2}, (int[]){5, 3, 0, 2, 4, 1});
    permute_case(3, (int[]){1, 9, 1}, (int[]){2, 0, 1});       /* sizes of 1 */
    permute_case(3, (int[]){4, 6, 8}, (int[]){0, 1, 2});       /* the identity */
    permute_case(4, (int[]){4, 6, 8, 3}, (int[]){2, 3, 0, 1}); /* merged axes */
}

typedef struct conv_shape {
    int samples, channels, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
} conv_shape;

static const char *conv_label(const conv_shape *s) {
    return text("%dx%dx%dx%d k%dx%d s%dx%d p%dx%d", s->samples, s->channels, s->height, s->width,
                s->kernel_h, s->kernel_w, s->stride_h, s->stride_w, s->pad_h, s->pad_w);
}

/* The x index im2col reads for cols[row][column], or -1 in the padding. */
static int64_t im2col_source(const conv_geometry *g, int samples, size_t row, size_t column) {
    (void)samples;
    int j = (int)(row % (size_t)g->kernel_w);
    int i = (int)(row / (size_t)g->kernel_w % (size_t)g->kernel_h);
    int c = (int)(row / ((size_t)g->kernel_w * g->kernel_h));
    int ow = (int)(column % (size_t)g->out_width);
    int oh = (int)(column / (size_t)g->out_width % (size_t)g->out_height);
    int s = (int)(column / ((size_t)g->out_width * g->out_height));
    int h = oh * g->stride_h - g->pad_h + i, w = ow * g->stride_w - g->pad_w + j;
    if (h < 0 || h >= g->height || w < 0 || w >= g->width) return -1;
    return (((int64_t)s * g->channels + c) * g->height + h) * g->width + w;
}

/* im2col bit for bit; col2im within gamma(terms) of the magnitudes it adds (and bit for bit
 * the CPU's on other backends, which add in the CPU's order). */
static void im2col_case(const conv_shape *s) {
    fixture_arena *arena = fixture_arena_new();
    conv_geometry g;
    CHECK_OK(conv_geometry_make(s->channels, s->height, s->width, s->kernel_h, s->kernel_w,
                                s->stride_h, s->stride_w, s->pad_h, s->pad_w, "test", &g));
    size_t x_count = (size_t)s->samples * s->channels * s->height * s->width;
    size_t rows = (size_t)s->channels * s->kernel_h * s->kernel_w;
    size_t columns = (size_t)s->samples * g.out_height * g.out_width;
    size_t cols_count = rows * columns;
    float *x = random_floats(arena, x_count, -2.0f, 2.0f);
    float *cols = random_floats(arena, cols_count, -2.0f, 2.0f);
    double *ref_cols = doubles(arena, cols_count), *ref_dx = doubles(arena, x_count);
    double *dx_scales = doubles(arena, x_count);
    int *terms = fixture_alloc(arena, x_count * sizeof(int));
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < columns; c++) {
            int64_t from = im2col_source(&g, s->samples, r, c);
            ref_cols[r * columns + c] = from < 0 ? 0.0 : x[from];
            if (from >= 0) {
                ref_dx[from] += cols[r * columns + c];
                dx_scales[from] += fabs(cols[r * columns + c]);
                terms[from]++;
            }
        }
    int most_terms = 1;
    for (size_t e = 0; e < x_count; e++) {
        dx_scales[e] += 1e-30;
        if (terms[e] > most_terms) most_terms = terms[e];
    }
    const char *shape = conv_label(s);
    char label[128];
    snprintf(label, sizeof label, "%s", shape);
    output o_cols = {"im2col", ref_cols, NULL, BITWISE, BITWISE};
    output o_dx = {"col2im", ref_dx, dx_scales, float_sum_gamma(most_terms, U), BITWISE};
    float *cpu_cols = NULL, *cpu_dx = NULL;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (runs(b, DEVICE_OP_im2col, false)) {
            float *dxin = dev_upload(b, x, x_count * sizeof(float));
            float *dcols = dev_upload(b, cols, cols_count * sizeof(float)); /* to overwrite */
            device_im2col(b->dev, &g, s->samples, dxin, dcols);
            check_output(label, bi, &o_cols, dev_floats(b, arena, dcols, cols_count), cols_count,
                         &cpu_cols, arena);
        }
        if (runs(b, DEVICE_OP_col2im, false)) {
            float *dcols = dev_upload(b, cols, cols_count * sizeof(float));
            float *ddx = dev_upload(b, x, x_count * sizeof(float)); /* to overwrite */
            device_col2im(b->dev, &g, s->samples, dcols, ddx);
            float *first = dev_floats(b, arena, ddx, x_count);
            check_output(label, bi, &o_dx, first, x_count, &cpu_dx, arena);
            device_col2im(b->dev, &g, s->samples, dcols, ddx);
            compare_repeat(text("col2im %s", shape), b, dev_floats(b, arena, ddx, x_count), first,
                           x_count);
        }
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static const conv_shape CONV_SHAPES[] = {
    {1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, /* one pixel */
    {3, 3, 11, 9, 3, 3, 1, 1, 1, 1}, {2, 2, 8, 10, 3, 2, 2, 3, 1, 0},
    {3, 4, 7, 7, 1, 1, 1, 1, 0, 0},  {2, 1, 28, 28, 5, 5, 2, 2, 2, 2},
    {1, 2, 5, 6, 4, 3, 1, 2, 3, 2},  /* padding as wide as the window */
    {1, 3, 1, 13, 1, 3, 1, 2, 0, 1}, /* one row */
};

static void run_im2col(void) {
    for (size_t i = 0; i < sizeof CONV_SHAPES / sizeof CONV_SHAPES[0]; i++)
        im2col_case(&CONV_SHAPES[i]);
}

/* Pooling on inputs with many ties (values from a small set) and a NaN, so that max pooling's
 * rules decide often: NaN wins a window; the gradient goes to the first position (row-major)
 * equal to the maximum, or the first NaN when it is NaN; padding never wins. Max forward bit
 * for bit; average forward and both backward within the float sums' bound; bit for bit the
 * CPU's on other backends (their gathers add in the CPU's order). */
static void pool_case(pool_kind kind, int samples, int channels, int height, int width, int kernel,
                      int stride, int pad) {
    fixture_arena *arena = fixture_arena_new();
    conv_geometry g;
    CHECK_OK(conv_geometry_make(channels, height, width, kernel, kernel, stride, stride, pad, pad,
                                "test", &g));
    size_t x_count = (size_t)samples * channels * height * width;
    size_t y_count = (size_t)samples * channels * g.out_height * g.out_width;
    float *x = random_floats(arena, x_count, 0.0f, 1.0f);
    for (size_t i = 0; i < x_count; i++)
        x[i] = floorf(x[i] * 4.0f) - 1.5f;
    if (x_count > 20) x[17] = NAN;
    float *dy = random_floats(arena, y_count, -1.0f, 1.0f);
    double *ref_y = doubles(arena, y_count), *y_scales = doubles(arena, y_count);
    double *ref_dx = doubles(arena, x_count), *dx_scales = doubles(arena, x_count);
    float *y = fixture_alloc(arena, y_count * sizeof(float));
    int window = kernel * kernel, most_terms = 1;
    int *terms = fixture_alloc(arena, x_count * sizeof(int));
    for (int p = 0; p < samples * channels; p++)
        for (int oh = 0; oh < g.out_height; oh++)
            for (int ow = 0; ow < g.out_width; ow++) {
                size_t o = ((size_t)p * g.out_height + oh) * g.out_width + ow;
                double best = -INFINITY, sum = 0.0, magnitude = 0.0;
                int64_t best_at = -1;
                for (int i = 0; i < kernel; i++)
                    for (int j = 0; j < kernel; j++) {
                        int h = oh * stride - pad + i, w = ow * stride - pad + j;
                        if (h < 0 || h >= height || w < 0 || w >= width) continue;
                        int64_t at = ((int64_t)p * height + h) * width + w;
                        double v = x[at];
                        sum += v;
                        magnitude += fabs(v);
                        if (isnan(v) ? !isnan(best) : v > best) best = v, best_at = at;
                    }
                if (kind == POOL_MAX) {
                    ref_y[o] = best;
                    y_scales[o] = 1.0;
                    if (best_at >= 0) {
                        ref_dx[best_at] += dy[o];
                        dx_scales[best_at] += fabs(dy[o]);
                        terms[best_at]++;
                    }
                } else {
                    ref_y[o] = sum / window;
                    y_scales[o] = magnitude / window + 1e-30;
                    for (int i = 0; i < kernel; i++)
                        for (int j = 0; j < kernel; j++) {
                            int h = oh * stride - pad + i, w = ow * stride - pad + j;
                            if (h < 0 || h >= height || w < 0 || w >= width) continue;
                            int64_t at = ((int64_t)p * height + h) * width + w;
                            ref_dx[at] += dy[o] / window;
                            dx_scales[at] += fabs(dy[o]) / window;
                            terms[at]++;
                        }
                }
                y[o] = (float)ref_y[o];
            }
    for (size_t e = 0; e < x_count; e++) {
        dx_scales[e] += 1e-30;
        if (terms[e] > most_terms) most_terms = terms[e];
    }
    char label[96];
    snprintf(label, sizeof label, "pool2d %s %dx%dx%dx%d k%d s%d p%d",
             kind == POOL_MAX ? "max" : "avg", samples, channels, height, width, kernel, stride,
             pad);
    output o_y = {"forward", ref_y, y_scales,
                  kind == POOL_MAX ? BITWISE : float_sum_gamma(window + 1, U), BITWISE};
    /* Each share dy / window is rounded (average), then up to most_terms shares are added. */
    output o_dx = {"backward", ref_dx, dx_scales, float_sum_gamma(most_terms + 1, U), BITWISE};
    float *cpu_y = NULL, *cpu_dx = NULL;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        float *dxin = dev_upload(b, x, x_count * sizeof(float));
        if (runs(b, DEVICE_OP_pool2d_forward, false)) {
            float *dyout = dev_upload(b, dy, y_count * sizeof(float)); /* to overwrite */
            device_pool2d_forward(b->dev, kind, &g, samples, dxin, dyout);
            check_output(label, bi, &o_y, dev_floats(b, arena, dyout, y_count), y_count, &cpu_y,
                         arena);
        }
        if (runs(b, DEVICE_OP_pool2d_backward, false)) {
            float *dyin = dev_upload(b, y, y_count * sizeof(float));
            float *ddy = dev_upload(b, dy, y_count * sizeof(float));
            float *ddx = dev_upload(b, x, x_count * sizeof(float)); /* to overwrite */
            device_pool2d_backward(b->dev, kind, &g, samples, dxin, dyin, ddy, ddx);
            float *first = dev_floats(b, arena, ddx, x_count);
            check_output(label, bi, &o_dx, first, x_count, &cpu_dx, arena);
            device_pool2d_backward(b->dev, kind, &g, samples, dxin, dyin, ddy, ddx);
            compare_repeat(text("%s backward", label), b, dev_floats(b, arena, ddx, x_count), first,
                           x_count);
        }
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_pooling(void) {
    for (int kind = 0; kind < 2; kind++) {
        pool_kind k = kind ? POOL_AVERAGE : POOL_MAX;
        pool_case(k, 1, 1, 1, 1, 1, 1, 0); /* one pixel */
        pool_case(k, 3, 4, 8, 8, 2, 2, 0); /* cnn-small's maxpool(2) */
        pool_case(k, 2, 3, 9, 7, 2, 2, 0); /* 2x2 tiles, an odd last row and column */
        pool_case(k, 2, 3, 9, 7, 3, 2, 1); /* overlapping windows, padding */
        pool_case(k, 2, 2, 5, 6, 3, 1, 1); /* stride 1: up to 9 windows an input */
        pool_case(k, 2, 3, 7, 7, 7, 1, 0); /* one window: global pooling */
    }
}

/* --- normalisation ------------------------------------------------------------------------------
 */

/* Batch normalisation, training and evaluation, forward and backward. Forward: the statistics
 * are summed in double (the contract), so y, mean, invstd and the running statistics are each
 * a handful of float roundings of their terms: within 32 u of the magnitudes they combine.
 * Backward: float sums of samples x spatial terms allowed, within gamma(n + 8) of the
 * magnitudes. Inputs sit off zero (mean 3) so the two-pass statistics matter. */
static void batchnorm_case(int samples, int channels, int spatial) {
    fixture_arena *arena = fixture_arena_new();
    size_t count = (size_t)samples * channels * spatial, cc = (size_t)channels;
    int n = samples * spatial;
    const float eps = 1e-5f, momentum = 0.1f;
    float *x = random_floats(arena, count, 1.0f, 5.0f), *dy = random_floats(arena, count, -1, 1);
    float *gamma = random_floats(arena, cc, 0.5f, 1.5f),
          *beta = random_floats(arena, cc, -0.5f, 0.5f);
    float *running_mean = random_floats(arena, cc, -0.5f, 0.5f);
    float *running_var = random_floats(arena, cc, 0.5f, 2.0f);
    float *dgamma = random_floats(arena, cc, -1.0f, 1.0f), *dbeta = random_floats(arena, cc, -1, 1);
    char shape[64];
    snprintf(shape, sizeof shape, "batchnorm %dx%dx%d", samples, channels, spatial);
    /* Forward, per mode: outputs y, mean, invstd, running_mean, running_var. */
    for (int training = 1; training >= 0; training--) {
        double *ref[5], *scales[5];
        size_t counts[5] = {count, cc, cc, cc, cc};
        for (int i = 0; i < 5; i++)
            ref[i] = doubles(arena, counts[i]), scales[i] = doubles(arena, counts[i]);
        for (int c = 0; c < channels; c++) {
            double sum = 0.0, squares = 0.0;
            for (int s = 0; s < samples; s++)
                for (int i = 0; i < spatial; i++)
                    sum += x[((size_t)s * channels + c) * spatial + i];
            double mean = sum / n;
            for (int s = 0; s < samples; s++)
                for (int i = 0; i < spatial; i++) {
                    double d = x[((size_t)s * channels + c) * spatial + i] - mean;
                    squares += d * d;
                }
            double var = squares / n;
            double use_mean = training ? mean : running_mean[c];
            double use_invstd = 1.0 / sqrt((training ? var : (double)running_var[c]) + eps);
            ref[1][c] = use_mean;
            scales[1][c] = fabs(use_mean) + 1e-30;
            ref[2][c] = use_invstd;
            scales[2][c] = use_invstd;
            double unbiased = n > 1 ? squares / (n - 1) : var;
            ref[3][c] =
                training ? (1.0 - momentum) * running_mean[c] + momentum * mean : running_mean[c];
            scales[3][c] = fabs(running_mean[c]) + fabs(mean) + 1e-30;
            ref[4][c] =
                training ? (1.0 - momentum) * running_var[c] + momentum * unbiased : running_var[c];
            scales[4][c] = fabs(running_var[c]) + fabs(unbiased) + 1e-30;
            for (int s = 0; s < samples; s++)
                for (int i = 0; i < spatial; i++) {
                    size_t at = ((size_t)s * channels + c) * spatial + i;
                    ref[0][at] = (x[at] - use_mean) * use_invstd * gamma[c] + beta[c];
                    scales[0][at] = (fabs(x[at]) + fabs(use_mean)) * use_invstd * fabs(gamma[c]) +
                                    fabs(beta[c]) + 1e-30;
                }
        }
        static const char *const names[5] = {"y", "mean", "invstd", "running_mean", "running_var"};
        output outputs[5];
        for (int i = 0; i < 5; i++)
            outputs[i] = (output){names[i], ref[i], scales[i], 32 * U, 1e-5};
        char label[96];
        snprintf(label, sizeof label, "%s_forward %s", shape, training ? "training" : "evaluation");
        float *cpu[5] = {NULL};
        for (int bi = 0; bi < backend_count; bi++) {
            backend *b = &backends[bi];
            if (!runs(b, DEVICE_OP_batchnorm_forward, false)) continue;
            float *dxin = dev_upload(b, x, count * sizeof(float));
            float *dgam = dev_upload(b, gamma, cc * sizeof(float));
            float *dbet = dev_upload(b, beta, cc * sizeof(float));
            float *out[5] = {dev_upload(b, x, count * sizeof(float)), dev_alloc(b, cc * 4),
                             dev_alloc(b, cc * 4), dev_alloc(b, cc * 4), dev_alloc(b, cc * 4)};
            float *first[5];
            for (int run = 0; run < 2; run++) {
                CHECK_OK(device_copy_host_to_device(b->dev, out[3], running_mean, cc * 4));
                CHECK_OK(device_copy_host_to_device(b->dev, out[4], running_var, cc * 4));
                device_batchnorm_forward(b->dev, samples, channels, spatial, dxin, dgam, dbet, eps,
                                         training, momentum, out[3], out[4], out[1], out[2],
                                         out[0]);
                for (int i = 0; i < 5; i++) {
                    float *got = dev_floats(b, arena, out[i], counts[i]);
                    if (run == 0) {
                        first[i] = got;
                        check_output(label, bi, &outputs[i], got, counts[i], &cpu[i], arena);
                    } else {
                        compare_repeat(text("%s: %s", label, names[i]), b, got, first[i],
                                       counts[i]);
                    }
                }
            }
            backend_release(b);
        }
    }

    /* Backward from training statistics given to every backend (the exact ones, rounded). */
    float *mean = fixture_alloc(arena, cc * 4), *invstd = fixture_alloc(arena, cc * 4);
    for (int c = 0; c < channels; c++) {
        double sum = 0.0, squares = 0.0;
        for (int s = 0; s < samples; s++)
            for (int i = 0; i < spatial; i++)
                sum += x[((size_t)s * channels + c) * spatial + i];
        for (int s = 0; s < samples; s++)
            for (int i = 0; i < spatial; i++) {
                double d = x[((size_t)s * channels + c) * spatial + i] - sum / n;
                squares += d * d;
            }
        mean[c] = (float)(sum / n);
        invstd[c] = (float)(1.0 / sqrt(squares / n + eps));
    }
    double *ref_dx = doubles(arena, count), *dx_scales = doubles(arena, count);
    double *ref_dgamma = as_doubles(arena, dgamma, cc), *ref_dbeta = as_doubles(arena, dbeta, cc);
    double *dgamma_scales = doubles(arena, cc), *dbeta_scales = doubles(arena, cc);
    for (int c = 0; c < channels; c++) {
        double sum_dy = 0.0, sum_dy_xhat = 0.0, abs_dy = 0.0, abs_dy_xhat = 0.0;
        for (int s = 0; s < samples; s++)
            for (int i = 0; i < spatial; i++) {
                size_t at = ((size_t)s * channels + c) * spatial + i;
                double xhat = ((double)x[at] - mean[c]) * invstd[c];
                sum_dy += dy[at];
                sum_dy_xhat += dy[at] * xhat;
                abs_dy += fabs(dy[at]);
                abs_dy_xhat += fabs(dy[at] * xhat);
            }
        ref_dgamma[c] += sum_dy_xhat;
        ref_dbeta[c] += sum_dy;
        dgamma_scales[c] = fabs(dgamma[c]) + abs_dy_xhat + 1e-30;
        dbeta_scales[c] = fabs(dbeta[c]) + abs_dy + 1e-30;
        for (int s = 0; s < samples; s++)
            for (int i = 0; i < spatial; i++) {
                size_t at = ((size_t)s * channels + c) * spatial + i;
                double xhat = ((double)x[at] - mean[c]) * invstd[c];
                double k = (double)gamma[c] * invstd[c] / n;
                ref_dx[at] = k * (n * (double)dy[at] - sum_dy - xhat * sum_dy_xhat);
                dx_scales[at] =
                    fabs(k) * (n * fabs(dy[at]) + abs_dy + (fabs(xhat) + 1.0) * abs_dy_xhat) +
                    1e-30;
            }
    }
    double tolerance = float_sum_gamma(n + 8, U);
    output o_dx = {"dx", ref_dx, dx_scales, tolerance, 1e-5};
    output o_dgamma = {"dgamma", ref_dgamma, dgamma_scales, tolerance, NO_CROSS};
    output o_dbeta = {"dbeta", ref_dbeta, dbeta_scales, tolerance, NO_CROSS};
    char label[96];
    snprintf(label, sizeof label, "%s_backward", shape);
    float *cpu[3] = {NULL};
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, DEVICE_OP_batchnorm_backward, false)) continue;
        float *dxin = dev_upload(b, x, count * 4), *ddy = dev_upload(b, dy, count * 4);
        float *dgam = dev_upload(b, gamma, cc * 4), *dmean = dev_upload(b, mean, cc * 4);
        float *dinv = dev_upload(b, invstd, cc * 4);
        float *ddx = dev_upload(b, x, count * 4); /* to overwrite */
        float *ddgamma = dev_alloc(b, cc * 4), *ddbeta = dev_alloc(b, cc * 4);
        float *first[3];
        for (int run = 0; run < 2; run++) {
            CHECK_OK(device_copy_host_to_device(b->dev, ddgamma, dgamma, cc * 4));
            CHECK_OK(device_copy_host_to_device(b->dev, ddbeta, dbeta, cc * 4));
            device_batchnorm_backward(b->dev, samples, channels, spatial, dxin, ddy, dgam, dmean,
                                      dinv, ddx, ddgamma, ddbeta);
            float *got[3] = {dev_floats(b, arena, ddx, count), dev_floats(b, arena, ddgamma, cc),
                             dev_floats(b, arena, ddbeta, cc)};
            const output *outputs[3] = {&o_dx, &o_dgamma, &o_dbeta};
            size_t counts[3] = {count, cc, cc};
            for (int i = 0; i < 3; i++) {
                if (run == 0) {
                    first[i] = got[i];
                    check_output(label, bi, outputs[i], got[i], counts[i], &cpu[i], arena);
                } else {
                    compare_repeat(text("%s: %s", label, outputs[i]->name), b, got[i], first[i],
                                   counts[i]);
                }
            }
        }
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_batchnorm(void) {
    batchnorm_case(2, 1, 1); /* two values of one channel */
    batchnorm_case(1, 3, 5); /* one sample */
    batchnorm_case(6, 5, 37);
    batchnorm_case(64, 3, 1);   /* after a dense layer (BatchNorm1d) */
    batchnorm_case(16, 4, 784); /* more values than a block has threads */
}

/* One run of an operation with several outputs: the first run is checked against the
 * reference (and the CPU's), a repeat must give the first run's bits. */
static void check_run(const char *label, int run, int bi, const output *const *outputs, float **got,
                      const size_t *counts, int n, float **first, float **cpu,
                      fixture_arena *arena) {
    for (int i = 0; i < n; i++) {
        if (run == 0) {
            first[i] = got[i];
            check_output(label, bi, outputs[i], got[i], counts[i], &cpu[i], arena);
        } else {
            compare_repeat(text("%s: %s", label, outputs[i]->name), &backends[bi], got[i], first[i],
                           counts[i]);
        }
    }
}

/* Layer normalisation: as batch normalisation, per row; dgamma and dbeta sum rows in order. */
static void layernorm_case(int rows, int cols, bool gpu_size) {
    if (gpu_size && !gpu_size_runs()) return;
    fixture_arena *arena = fixture_arena_new();
    size_t count = (size_t)rows * cols, cc = (size_t)cols, rc = (size_t)rows;
    const float eps = 1e-5f;
    float *x = random_floats(arena, count, 1.0f, 5.0f), *dy = random_floats(arena, count, -1, 1);
    float *gamma = random_floats(arena, cc, 0.5f, 1.5f),
          *beta = random_floats(arena, cc, -0.5f, 0.5f);
    float *dgamma = random_floats(arena, cc, -1.0f, 1.0f), *dbeta = random_floats(arena, cc, -1, 1);
    double *ref_y = doubles(arena, count), *y_scales = doubles(arena, count);
    double *ref_mean = doubles(arena, rc), *mean_scales = doubles(arena, rc);
    double *ref_rstd = doubles(arena, rc);
    float *mean = fixture_alloc(arena, rc * 4), *rstd = fixture_alloc(arena, rc * 4);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        double sum = 0.0, squares = 0.0, magnitude = 0.0;
        for (int c = 0; c < cols; c++)
            sum += xr[c], magnitude += fabs(xr[c]);
        double m = sum / cols;
        for (int c = 0; c < cols; c++)
            squares += (xr[c] - m) * (xr[c] - m);
        double s = 1.0 / sqrt(squares / cols + eps);
        ref_mean[r] = m;
        mean_scales[r] = magnitude / cols + 1e-30;
        ref_rstd[r] = s;
        mean[r] = (float)m;
        rstd[r] = (float)s;
        for (int c = 0; c < cols; c++) {
            size_t at = (size_t)r * cols + c;
            ref_y[at] = (xr[c] - m) * s * gamma[c] + beta[c];
            y_scales[at] = (fabs(xr[c]) + fabs(m)) * s * fabs(gamma[c]) + fabs(beta[c]) + 1e-30;
        }
    }
    /* Forward: a row's statistics may be float sums of cols terms: gamma(cols + 8). */
    double forward_tolerance = float_sum_gamma(cols + 8, U) + 32 * U;
    output o_y = {"y", ref_y, y_scales, forward_tolerance, 1e-5};
    output o_mean = {"mean", ref_mean, mean_scales, forward_tolerance, 1e-5};
    output o_rstd = {"rstd", ref_rstd, relative_scales(arena, ref_rstd, rc), forward_tolerance,
                     1e-5};
    /* Backward from the rounded statistics. */
    double *ref_dx = doubles(arena, count), *dx_scales = doubles(arena, count);
    double *ref_dgamma = as_doubles(arena, dgamma, cc), *ref_dbeta = as_doubles(arena, dbeta, cc);
    double *dgamma_scales = doubles(arena, cc), *dbeta_scales = doubles(arena, cc);
    for (int c = 0; c < cols; c++) {
        dgamma_scales[c] = fabs(dgamma[c]) + 1e-30;
        dbeta_scales[c] = fabs(dbeta[c]) + 1e-30;
    }
    for (int r = 0; r < rows; r++) {
        double sum_g = 0.0, sum_g_xhat = 0.0, abs_g = 0.0, abs_g_xhat = 0.0;
        for (int c = 0; c < cols; c++) {
            size_t at = (size_t)r * cols + c;
            double xhat = ((double)x[at] - mean[r]) * rstd[r], g = (double)dy[at] * gamma[c];
            sum_g += g, sum_g_xhat += g * xhat, abs_g += fabs(g), abs_g_xhat += fabs(g * xhat);
            ref_dgamma[c] += dy[at] * xhat;
            ref_dbeta[c] += dy[at];
            dgamma_scales[c] += fabs(dy[at] * xhat);
            dbeta_scales[c] += fabs(dy[at]);
        }
        for (int c = 0; c < cols; c++) {
            size_t at = (size_t)r * cols + c;
            double xhat = ((double)x[at] - mean[r]) * rstd[r], g = (double)dy[at] * gamma[c];
            ref_dx[at] = rstd[r] * (g - sum_g / cols - xhat * sum_g_xhat / cols);
            dx_scales[at] =
                rstd[r] * (fabs(g) + abs_g / cols + (fabs(xhat) + 1.0) * abs_g_xhat / cols) + 1e-30;
        }
    }
    output o_dx = {"dx", ref_dx, dx_scales, float_sum_gamma(cols + 8, U), 1e-5};
    output o_dgamma = {"dgamma", ref_dgamma, dgamma_scales, float_sum_gamma(rows + 8, U), NO_CROSS};
    output o_dbeta = {"dbeta", ref_dbeta, dbeta_scales, float_sum_gamma(rows + 8, U), NO_CROSS};
    char label[96];
    snprintf(label, sizeof label, "layernorm %dx%d", rows, cols);
    float *cpu[6] = {NULL};
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        float *dxin = dev_upload(b, x, count * 4), *dgam = dev_upload(b, gamma, cc * 4);
        if (runs(b, DEVICE_OP_layernorm_forward, gpu_size)) {
            float *dbet = dev_upload(b, beta, cc * 4);
            float *dyout = dev_upload(b, x, count * 4); /* to overwrite */
            float *dmean = dev_alloc(b, rc * 4), *drstd = dev_alloc(b, rc * 4);
            float *first[3];
            for (int run = 0; run < 2; run++) {
                device_layernorm_forward(b->dev, rows, cols, dxin, dgam, dbet, eps, dyout, dmean,
                                         drstd);
                float *got[3] = {dev_floats(b, arena, dyout, count),
                                 dev_floats(b, arena, dmean, rc), dev_floats(b, arena, drstd, rc)};
                const output *outputs[3] = {&o_y, &o_mean, &o_rstd};
                size_t counts[3] = {count, rc, rc};
                check_run(text("%s forward", label), run, bi, outputs, got, counts, 3, first, cpu,
                          arena);
            }
        }
        if (runs(b, DEVICE_OP_layernorm_backward, gpu_size)) {
            float *ddy = dev_upload(b, dy, count * 4), *dmean = dev_upload(b, mean, rc * 4);
            float *drstd = dev_upload(b, rstd, rc * 4);
            float *ddx = dev_upload(b, x, count * 4); /* to overwrite */
            float *ddgamma = dev_alloc(b, cc * 4), *ddbeta = dev_alloc(b, cc * 4);
            float *first[3];
            for (int run = 0; run < 2; run++) {
                CHECK_OK(device_copy_host_to_device(b->dev, ddgamma, dgamma, cc * 4));
                CHECK_OK(device_copy_host_to_device(b->dev, ddbeta, dbeta, cc * 4));
                device_layernorm_backward(b->dev, rows, cols, dxin, ddy, dgam, dmean, drstd, ddx,
                                          ddgamma, ddbeta);
                float *got[3] = {dev_floats(b, arena, ddx, count),
                                 dev_floats(b, arena, ddgamma, cc),
                                 dev_floats(b, arena, ddbeta, cc)};
                const output *outputs[3] = {&o_dx, &o_dgamma, &o_dbeta};
                size_t counts[3] = {count, cc, cc};
                check_run(text("%s backward", label), run, bi, outputs, got, counts, 3, first,
                          cpu + 3, arena);
            }
        }
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_layernorm(void) {
    layernorm_case(1, 1, false);
    layernorm_case(1, 7, false);
    layernorm_case(7, 1, false);
    layernorm_case(5, 7, false);
    layernorm_case(67, 100, false);
    layernorm_case(300, 768, false);  /* gpt2-124m's width */
    layernorm_case(2100, 128, false); /* more rows than the gradient's row chunks, unevenly */
    layernorm_case(16 * 1024 + 3, 768, true); /* gpt2-124m, 16 x 1024 tokens: 42 row chunks */
    layernorm_case(200, 40000, true);         /* wider than the column blocks' target */
}

/* RMS normalisation: rstd = 1/sqrt(mean x^2 + eps) per row, y = x rstd gamma; backward from
 * the rounded rstd, dgamma summing rows in order. Inputs straddle zero (no mean is taken out). */
static void rmsnorm_case(int rows, int cols, bool gpu_size) {
    if (gpu_size && !gpu_size_runs()) return;
    fixture_arena *arena = fixture_arena_new();
    size_t count = (size_t)rows * cols, cc = (size_t)cols, rc = (size_t)rows;
    const float eps = 1e-5f;
    float *x = random_floats(arena, count, -3.0f, 3.0f), *dy = random_floats(arena, count, -1, 1);
    float *gamma = random_floats(arena, cc, 0.5f, 1.5f);
    float *dgamma = random_floats(arena, cc, -1.0f, 1.0f);
    double *ref_y = doubles(arena, count), *y_scales = doubles(arena, count);
    double *ref_rstd = doubles(arena, rc);
    float *rstd = fixture_alloc(arena, rc * 4);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        double squares = 0.0;
        for (int c = 0; c < cols; c++)
            squares += (double)xr[c] * xr[c];
        double s = 1.0 / sqrt(squares / cols + eps);
        ref_rstd[r] = s;
        rstd[r] = (float)s;
        for (int c = 0; c < cols; c++) {
            size_t at = (size_t)r * cols + c;
            ref_y[at] = xr[c] * s * gamma[c];
            y_scales[at] = fabs(xr[c]) * s * fabs(gamma[c]) + 1e-30;
        }
    }
    /* Forward: the mean of squares may be a float sum of cols terms: gamma(cols + 8). */
    double forward_tolerance = float_sum_gamma(cols + 8, U) + 32 * U;
    output o_y = {"y", ref_y, y_scales, forward_tolerance, 1e-5};
    output o_rstd = {"rstd", ref_rstd, relative_scales(arena, ref_rstd, rc), forward_tolerance,
                     1e-5};
    double *ref_dx = doubles(arena, count), *dx_scales = doubles(arena, count);
    double *ref_dgamma = as_doubles(arena, dgamma, cc), *dgamma_scales = doubles(arena, cc);
    for (int c = 0; c < cols; c++)
        dgamma_scales[c] = fabs(dgamma[c]) + 1e-30;
    for (int r = 0; r < rows; r++) {
        double sum_g_xhat = 0.0, abs_g_xhat = 0.0;
        for (int c = 0; c < cols; c++) {
            size_t at = (size_t)r * cols + c;
            double xhat = (double)x[at] * rstd[r], g = (double)dy[at] * gamma[c];
            sum_g_xhat += g * xhat, abs_g_xhat += fabs(g * xhat);
            ref_dgamma[c] += dy[at] * xhat;
            dgamma_scales[c] += fabs(dy[at] * xhat);
        }
        for (int c = 0; c < cols; c++) {
            size_t at = (size_t)r * cols + c;
            double xhat = (double)x[at] * rstd[r], g = (double)dy[at] * gamma[c];
            ref_dx[at] = rstd[r] * (g - xhat * sum_g_xhat / cols);
            dx_scales[at] = rstd[r] * (fabs(g) + (fabs(xhat) + 1.0) * abs_g_xhat / cols) + 1e-30;
        }
    }
    output o_dx = {"dx", ref_dx, dx_scales, float_sum_gamma(cols + 8, U), 1e-5};
    output o_dgamma = {"dgamma", ref_dgamma, dgamma_scales, float_sum_gamma(rows + 8, U), NO_CROSS};
    char label[96];
    snprintf(label, sizeof label, "rmsnorm %dx%d", rows, cols);
    float *cpu[4] = {NULL};
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        float *dxin = dev_upload(b, x, count * 4), *dgam = dev_upload(b, gamma, cc * 4);
        if (runs(b, DEVICE_OP_rmsnorm_forward, gpu_size)) {
            float *dyout = dev_upload(b, x, count * 4); /* to overwrite */
            float *drstd = dev_alloc(b, rc * 4);
            float *first[2];
            for (int run = 0; run < 2; run++) {
                device_rmsnorm_forward(b->dev, rows, cols, dxin, dgam, eps, dyout, drstd);
                float *got[2] = {dev_floats(b, arena, dyout, count),
                                 dev_floats(b, arena, drstd, rc)};
                const output *outputs[2] = {&o_y, &o_rstd};
                size_t counts[2] = {count, rc};
                check_run(text("%s forward", label), run, bi, outputs, got, counts, 2, first, cpu,
                          arena);
            }
        }
        if (runs(b, DEVICE_OP_rmsnorm_backward, gpu_size)) {
            float *ddy = dev_upload(b, dy, count * 4), *drstd = dev_upload(b, rstd, rc * 4);
            float *ddx = dev_upload(b, x, count * 4); /* to overwrite */
            float *ddgamma = dev_alloc(b, cc * 4);
            float *first[2];
            for (int run = 0; run < 2; run++) {
                CHECK_OK(device_copy_host_to_device(b->dev, ddgamma, dgamma, cc * 4));
                device_rmsnorm_backward(b->dev, rows, cols, dxin, ddy, dgam, drstd, ddx, ddgamma);
                float *got[2] = {dev_floats(b, arena, ddx, count),
                                 dev_floats(b, arena, ddgamma, cc)};
                const output *outputs[2] = {&o_dx, &o_dgamma};
                size_t counts[2] = {count, cc};
                check_run(text("%s backward", label), run, bi, outputs, got, counts, 2, first,
                          cpu + 2, arena);
            }
        }
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_rmsnorm(void) {
    rmsnorm_case(1, 1, false);
    rmsnorm_case(1, 7, false);
    rmsnorm_case(7, 1, false);
    rmsnorm_case(67, 100, false);
    rmsnorm_case(300, 768, false);          /* gpt2-124m's width */
    rmsnorm_case(2100, 128, false);         /* more rows than the gradient's row chunks, unevenly */
    rmsnorm_case(16 * 1024 + 3, 768, true); /* 16 x 1024 tokens: 42 row chunks */
    rmsnorm_case(200, 40000, true);         /* wider than the column blocks' target */
}

/* --- embeddings, causal softmax ------------------------------------------------------------------
 */

/* The forward gather bit for bit; the backward adds the rows into the table in increasing r
 * for every table row (the contract), so its float result is fixed: bit for bit as well. Ids
 * repeat a lot, as tokens and positions do. */
static void embedding_case(int rows, int cols, int table_rows, bool positions, bool gpu_size) {
    if (gpu_size && !gpu_size_runs()) return;
    fixture_arena *arena = fixture_arena_new();
    size_t count = (size_t)rows * cols, table_count = (size_t)table_rows * cols;
    int32_t *ids = fixture_alloc(arena, (size_t)rows * sizeof *ids);
    for (int r = 0; r < rows; r++)
        ids[r] = positions ? r % table_rows
                           : (int32_t)(rng_hash4(3, 1, 4, (uint64_t)r) % (uint64_t)table_rows);
    float *table = random_floats(arena, table_count, -1.0f, 1.0f);
    float *dy = random_floats(arena, count, -1.0f, 1.0f);
    float *dtable = random_floats(arena, table_count, -1.0f, 1.0f);
    double *ref_y = doubles(arena, count);
    float *sums = fixture_copy_floats(arena, dtable, table_count);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            ref_y[(size_t)r * cols + c] = table[(size_t)ids[r] * cols + c];
            sums[(size_t)ids[r] * cols + c] += dy[(size_t)r * cols + c];
        }
    output o_y = {"forward", ref_y, NULL, BITWISE, BITWISE};
    output o_dtable = {"backward", as_doubles(arena, sums, table_count), NULL, BITWISE, BITWISE};
    char label[96];
    snprintf(label, sizeof label, "embedding %d rows x %d of a %d-row table%s", rows, cols,
             table_rows, positions ? " (positions)" : "");
    float *cpu_y = NULL, *cpu_dtable = NULL;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        int32_t *dids = dev_upload(b, ids, (size_t)rows * sizeof *ids);
        if (runs(b, DEVICE_OP_embedding_forward, gpu_size)) {
            float *dtab = dev_upload(b, table, table_count * 4);
            float *dyout = dev_upload(b, dy, count * 4); /* to overwrite */
            device_embedding_forward(b->dev, rows, cols, dids, dtab, dyout);
            check_output(label, bi, &o_y, dev_floats(b, arena, dyout, count), count, &cpu_y, arena);
        }
        if (runs(b, DEVICE_OP_embedding_backward, gpu_size)) {
            float *ddy = dev_upload(b, dy, count * 4);
            float *ddtable = dev_alloc(b, table_count * 4);
            float *first = NULL;
            for (int run = 0; run < 2; run++) {
                CHECK_OK(device_copy_host_to_device(b->dev, ddtable, dtable, table_count * 4));
                device_embedding_backward(b->dev, rows, cols, dids, ddy, ddtable);
                float *got = dev_floats(b, arena, ddtable, table_count);
                if (run == 0) {
                    first = got;
                    check_output(label, bi, &o_dtable, got, table_count, &cpu_dtable, arena);
                } else {
                    compare_repeat(text("%s backward", label), b, got, first, table_count);
                }
            }
        }
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_embedding(void) {
    embedding_case(1, 1, 1, false, false);
    embedding_case(7, 3, 1, false, false); /* one table row: every row adds into it */
    embedding_case(300, 70, 13, false, false);
    embedding_case(4096, 128, 256, false, false); /* gpt-tiny's tokens: 64 windows of 64 */
    embedding_case(4096, 128, 64, true, false);   /* and its positions */
    embedding_case(50, 1000, 3, false, false);    /* wide rows, few table rows */
    /* gpt2-124m: its 50257-token table, more rows than one sorted group (EMBEDDING_SORT_ROWS),
     * so rows of one id are added across two groups, in order; and very long runs of ids. */
    embedding_case(EMBEDDING_SORT_ROWS + 4097, 768, 50257, false, true);
    embedding_case(EMBEDDING_SORT_ROWS + 4097, 96, 3, false, true);
}

/* Causal softmax: y = exp(s x - max) / sum over the row's first i + 1 entries, 0 above the
 * diagonal (the output starts as garbage). Each y is exp of a rounded s x - max (an error of u
 * (|s x| + |max|) in the exponent) over a float sum of up to t terms: within
 * y (2 (|s x| + |max|) + 2 (i + 1) + 16) u. The backward pass, given the exact y rounded, within
 * gamma(t + 8) of |s| y (|dy| + sum |y dy|). */
static void causal_softmax_case(int groups, int t, float scale) {
    fixture_arena *arena = fixture_arena_new();
    size_t count = (size_t)groups * t * t;
    float *x = random_floats(arena, count, -8.0f, 8.0f), *dy = random_floats(arena, count, -1, 1);
    for (size_t i = 0; i < count; i += 97) /* large scores: the max must be subtracted */
        x[i] = 300.0f;
    double *ref_y = doubles(arena, count), *y_scales = doubles(arena, count);
    double *ref_dx = doubles(arena, count), *dx_scales = doubles(arena, count);
    float *y = fixture_alloc(arena, count * 4);
    for (int g = 0; g < groups; g++)
        for (int i = 0; i < t; i++) {
            size_t row = ((size_t)g * t + i) * t;
            double max = -INFINITY, sum = 0.0;
            for (int j = 0; j <= i; j++)
                max = fmax(max, (double)scale * x[row + j]);
            for (int j = 0; j <= i; j++)
                sum += exp((double)scale * x[row + j] - max);
            for (int j = 0; j < t; j++) {
                double v = j <= i ? exp((double)scale * x[row + j] - max) / sum : 0.0;
                ref_y[row + j] = v;
                y[row + j] = (float)v;
                y_scales[row + j] =
                    v * (2.0 * (fabs(scale * x[row + j]) + fabs(max)) + 2.0 * (i + 1) + 16.0) +
                    1e-30;
            }
            double dot = 0.0, abs_dot = 0.0;
            for (int j = 0; j <= i; j++) {
                dot += (double)y[row + j] * dy[row + j];
                abs_dot += fabs((double)y[row + j] * dy[row + j]);
            }
            for (int j = 0; j < t; j++) {
                ref_dx[row + j] = j <= i ? scale * (double)y[row + j] * (dy[row + j] - dot) : 0.0;
                dx_scales[row + j] =
                    j <= i ? fabs(scale) * y[row + j] * (fabs(dy[row + j]) + abs_dot) + 1e-30
                           : 1e-30;
            }
        }
    /* The hand-written GPU test's bar against the CPU: 1e-5, or its rows' summation bound. */
    double cross = fmax(1e-5, 2.0 * float_sum_gamma(t + 8, U));
    output o_y = {"forward", ref_y, y_scales, U, cross};
    output o_dx = {"backward", ref_dx, dx_scales, float_sum_gamma(t + 8, U) + 8 * U, cross};
    char label[96];
    snprintf(label, sizeof label, "causal_softmax %d groups of %dx%d, scale %g", groups, t, t,
             scale);
    float *cpu_y = NULL, *cpu_dx = NULL;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (runs(b, DEVICE_OP_causal_softmax_forward, false)) {
            float *dxin = dev_upload(b, x, count * 4);
            float *dyout = dev_upload(b, x, count * 4); /* garbage to overwrite */
            float *first = NULL;
            for (int run = 0; run < 2; run++) {
                device_causal_softmax_forward(b->dev, groups, t, scale, dxin, dyout);
                float *got = dev_floats(b, arena, dyout, count);
                if (run == 0)
                    first = got, check_output(label, bi, &o_y, got, count, &cpu_y, arena);
                else
                    compare_repeat(text("%s forward", label), b, got, first, count);
            }
        }
        if (runs(b, DEVICE_OP_causal_softmax_backward, false)) {
            float *dyin = dev_upload(b, y, count * 4), *ddy = dev_upload(b, dy, count * 4);
            float *ddx = dev_upload(b, x, count * 4); /* garbage to overwrite */
            float *first = NULL;
            for (int run = 0; run < 2; run++) {
                device_causal_softmax_backward(b->dev, groups, t, scale, dyin, ddy, ddx);
                float *got = dev_floats(b, arena, ddx, count);
                if (run == 0)
                    first = got, check_output(label, bi, &o_dx, got, count, &cpu_dx, arena);
                else
                    compare_repeat(text("%s backward", label), b, got, first, count);
            }
        }
        backend_release(b);
    }
    fixture_arena_free(arena);
}

static void run_causal_softmax(void) {
    causal_softmax_case(1, 1, 1.0f);
    causal_softmax_case(3, 2, -0.5f);
    causal_softmax_case(6, 37, 0.25f);
    causal_softmax_case(8, 64, 0.17677669f); /* gpt-tiny: 4 heads of 32 */
    causal_softmax_case(2, 130, 0.125f);     /* rows longer than four warps' width */
}

/* --- checks: check_finite, sum_of_squares
 * ----------------------------------------------------------- */

static void run_checks(void) {
    static const size_t counts[] = {1, 7, 100003, 1000003};
    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t count = counts[ci];
        fixture_arena *arena = fixture_arena_new();
        float *x = random_floats(arena, count, -3.0f, 3.0f);
        double exact = 0.0;
        for (size_t i = 0; i < count; i++)
            exact += (double)x[i] * x[i];
        /* Squares and sum in double: within gamma(count + 1) of double's unit roundoff. */
        double bound = float_sum_gamma((double)count + 1, 0x1p-53) * exact;
        const float bad_values[] = {NAN, INFINITY, -INFINITY};
        const size_t positions[] = {count / 2, count - 1, 0};
        double cpu_sum = NAN;
        for (int bi = 0; bi < backend_count; bi++) {
            backend *b = &backends[bi];
            float *dx = dev_upload(b, x, count * 4);
            if (runs(b, DEVICE_OP_check_finite, false)) {
                bool finite = false;
                CHECK_OK(device_check_finite(b->dev, count, dx, &finite));
                CHECK(finite);
                finite = false;
                CHECK_OK(device_check_finite(b->dev, 0, dx, &finite));
                CHECK(finite);
                for (int i = 0; i < 3; i++) {
                    CHECK_OK(device_copy_host_to_device(b->dev, dx + positions[i], &bad_values[i],
                                                        sizeof(float)));
                    finite = true;
                    CHECK_OK(device_check_finite(b->dev, count, dx, &finite));
                    CHECK(!finite);
                    CHECK_OK(device_copy_host_to_device(b->dev, dx + positions[i], &x[positions[i]],
                                                        sizeof(float)));
                }
                CHECK_OK(device_check_finite(b->dev, count, dx, &finite));
                CHECK(finite);
                printf("measured: %s check_finite %zu elements (NaN, Inf, -Inf at %zu, %zu, %zu) "
                       "ok\n",
                       b->name, count, positions[0], positions[1], positions[2]);
            }
            if (runs(b, DEVICE_OP_sum_of_squares, false)) {
                double sum = -1.0, again = -2.0;
                CHECK_OK(device_sum_of_squares(b->dev, count, dx, &sum));
                bool ok = fabs(sum - exact) <= bound;
                printf("measured: %s %-56s worst %.3g tolerance %.3g %s\n", b->name,
                       text("sum_of_squares %zu elements", count),
                       fabs(sum - exact) / (exact + 1e-300), bound / (exact + 1e-300),
                       ok ? "ok" : "FAIL");
                CHECK(ok);
                for (int run = 0; run < 3; run++) { /* the same bits (--clip-grad-norm) */
                    CHECK_OK(device_sum_of_squares(b->dev, count, dx, &again));
                    CHECK(memcmp(&again, &sum, sizeof sum) == 0);
                }
                if (b->is_cpu)
                    cpu_sum = sum;
                else /* the hand-written GPU test's bar against the CPU */
                    CHECK(fabs(sum - cpu_sum) <= 1e-12 * cpu_sum);
                CHECK_OK(device_sum_of_squares(b->dev, 0, dx, &sum));
                CHECK(sum == 0.0);
                CHECK_OK(device_copy_host_to_device(b->dev, dx + count - 1, &(float){NAN}, 4));
                CHECK_OK(device_sum_of_squares(b->dev, count, dx, &sum));
                CHECK(isnan(sum));
            }
            backend_release(b);
        }
        fixture_arena_free(arena);
    }
}

/* --- memory, copies, host memory, uploads, streams, precision, timers: behaviour -----------------
 */

static bool bytes_are(const unsigned char *p, size_t count, unsigned char value) {
    for (size_t i = 0; i < count; i++)
        if (p[i] != value) return false;
    return true;
}

/* Raw allocation, copies both ways (odd sizes and offsets), device-to-device, zero fill of a
 * range with its neighbours untouched, and memory_info's figures. */
static void run_memory(void) {
    static const size_t sizes[] = {1, 13, 4099 * 4};
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t bytes = sizes[si];
            unsigned char *source = malloc(bytes), *back = malloc(bytes + 2);
            for (size_t i = 0; i < bytes; i++)
                source[i] = (unsigned char)(rng_splitmix64(i + 77 * bytes) | 1);
            void *p = NULL, *q = NULL;
            bool have =
                runs(b, DEVICE_OP_memory_alloc, false) && runs(b, DEVICE_OP_memory_free, false);
            if (have) {
                CHECK_OK(device_memory_alloc(b->dev, bytes + 2, &p));
                CHECK_OK(device_memory_alloc(b->dev, bytes + 2, &q));
            }
            if (p && q && runs(b, DEVICE_OP_copy_host_to_device, false) &&
                runs(b, DEVICE_OP_copy_device_to_host, false)) {
                /* At offset 1 (unaligned), between two known bytes. */
                unsigned char fence[1] = {0xA5};
                CHECK_OK(device_copy_host_to_device(b->dev, p, fence, 1));
                CHECK_OK(device_copy_host_to_device(b->dev, (char *)p + bytes + 1, fence, 1));
                CHECK_OK(device_copy_host_to_device(b->dev, (char *)p + 1, source, bytes));
                CHECK_OK(device_copy_device_to_host(b->dev, back, p, bytes + 2));
                bool round_trip = back[0] == 0xA5 && back[bytes + 1] == 0xA5 &&
                                  memcmp(back + 1, source, bytes) == 0;
                CHECK(round_trip);
                if (runs(b, DEVICE_OP_copy_device_to_device, false)) {
                    device_copy_device_to_device(b->dev, q, p, bytes + 2);
                    memset(back, 0, bytes + 2);
                    CHECK_OK(device_copy_device_to_host(b->dev, back, q, bytes + 2));
                    CHECK(back[0] == 0xA5 && memcmp(back + 1, source, bytes) == 0);
                }
                if (runs(b, DEVICE_OP_fill_zero, false)) {
                    device_fill_zero(b->dev, (char *)p + 1, bytes);
                    CHECK_OK(device_copy_device_to_host(b->dev, back, p, bytes + 2));
                    CHECK(back[0] == 0xA5 && back[bytes + 1] == 0xA5 &&
                          bytes_are(back + 1, bytes, 0));
                }
                printf("measured: %s memory_alloc, copies and fill_zero of %zu bytes at offset 1 "
                       "%s\n",
                       b->name, bytes, round_trip ? "ok" : "FAIL");
            }
            if (p) device_memory_free(b->dev, p);
            if (q) device_memory_free(b->dev, q);
            free(back);
            free(source);
        }
        if (runs(b, DEVICE_OP_memory_info, false)) {
            size_t total = 0, available = 0;
            ddt_status status = device_memory_info(b->dev, &total, &available);
            if (status == DDT_ERR_USAGE) { /* allowed: the backend cannot tell */
                check_not_run(text("memory_info on %s", b->name), "the backend cannot tell");
            } else {
                CHECK_OK(status);
                CHECK(total > 0 && available > 0 && available <= total);
            }
        }
        CHECK_OK(device_synchronize(b->dev)); /* synchronize: nothing pending fails */
    }
}

/* Host memory (aligned, zeroed as the input path expects), the upload path's double buffers
 * (each buffer's copy arrives; buffer 2 does not exist), and the stream handle. */
static void run_host_and_uploads(void) {
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        const size_t count = 4099, bytes = count * sizeof(float);
        float *host[2] = {NULL, NULL};
        if (runs(b, DEVICE_OP_host_alloc, false) && runs(b, DEVICE_OP_host_free, false)) {
            for (int k = 0; k < 2; k++) {
                CHECK_OK(device_host_alloc(b->dev, bytes, (void **)&host[k]));
                CHECK(host[k] && (uintptr_t)host[k] % 64 == 0);
                CHECK(host[k] && bytes_are((unsigned char *)host[k], bytes, 0));
            }
        }
        if (host[0] && host[1] && runs(b, DEVICE_OP_upload_async, false) &&
            runs(b, DEVICE_OP_upload_wait, false) && runs(b, DEVICE_OP_upload_host_done, false)) {
            for (size_t i = 0; i < count; i++)
                host[0][i] = (float)i, host[1][i] = -(float)i - 0.5f;
            float *target[2] = {dev_alloc(b, bytes), dev_alloc(b, bytes)};
            for (int k = 0; k < 2; k++)
                CHECK_OK(device_upload_async(b->dev, target[k], host[k], bytes, k));
            for (int k = 0; k < 2; k++) {
                CHECK_OK(device_upload_wait(b->dev, k));
                CHECK_OK(device_upload_host_done(b->dev, k));
            }
            fixture_arena *arena = fixture_arena_new();
            for (int k = 0; k < 2; k++) {
                float *got = dev_floats(b, arena, target[k], count);
                CHECK(memcmp(got, host[k], bytes) == 0);
            }
            fixture_arena_free(arena);
            CHECK(device_upload_async(b->dev, target[0], host[0], bytes, 2) != DDT_OK);
            CHECK(device_upload_wait(b->dev, 2) != DDT_OK);
            printf("measured: %s host_alloc and upload_async/wait/host_done of %zu bytes ok\n",
                   b->name, bytes);
            backend_release(b);
        }
        for (int k = 0; k < 2; k++)
            if (host[k]) device_host_free(b->dev, host[k]);
        if (runs(b, DEVICE_OP_native_stream, false)) {
            /* A stream exactly where work runs after the call returns. */
            bool asynchronous = device_supports(b->dev, DEVICE_CAPABILITY_ASYNCHRONOUS);
            CHECK((device_native_stream(b->dev) != NULL) == asynchronous);
        }
    }
}

/* set_precision: each supported precision takes exactly precision_workspace_bytes from the
 * allocator (component WORKSPACE), giving back the previous mode's; an unsupported one fails
 * naming --precision; fp32 comes back. (That each precision changes the GEMMs' arithmetic is
 * run_gemms' check.) */
static void run_precision(void) {
    const size_t operand_floats = 4096;
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, DEVICE_OP_set_precision, false)) continue;
        bool sizes = runs(b, DEVICE_OP_precision_workspace_bytes, false);
        for (int p = PRECISION_FP32; p <= PRECISION_FP16; p++) {
            precision_kind precision = (precision_kind)p;
            if (!device_supports(b->dev, precision_capability(precision))) {
                CHECK(device_set_precision(b->dev, precision, b->alloc, operand_floats) ==
                      DDT_ERR_USAGE);
                CHECK(strstr(ddt_error_message(), "--precision") != NULL);
                continue;
            }
            CHECK_OK(device_set_precision(b->dev, precision, b->alloc, operand_floats));
            if (sizes) {
                size_t expected =
                    device_precision_workspace_bytes(b->dev, precision, operand_floats);
                size_t in_use =
                    allocator_get_stats(b->alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE];
                printf("measured: %s set_precision %s: workspace %zu bytes, precision_workspace_"
                       "bytes %zu %s\n",
                       b->name, precision_kind_name(precision), in_use, expected,
                       in_use == expected ? "ok" : "FAIL");
                CHECK(in_use == expected);
            }
        }
        CHECK_OK(device_set_precision(b->dev, PRECISION_FP32, b->alloc, 1 << 20));
    }
}

/* Timer marks: ordered (a later mark is no earlier), and on a backend whose work is done when
 * its calls return (the CPU), a 20 ms pause between two marks reads as 20 ms. */
static void run_timers(void) {
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        if (!runs(b, DEVICE_OP_timer_mark, false) || !runs(b, DEVICE_OP_timer_elapsed, false))
            continue;
        bool asynchronous = device_supports(b->dev, DEVICE_CAPABILITY_ASYNCHRONOUS);
        float *work = dev_alloc(b, 256 * 256 * sizeof(float));
        double first = -1.0, whole = -1.0, second = -1.0;
        CHECK_OK(device_timer_mark(b->dev, 0));
        device_gemm(b->dev, false, false, 128, 128, 128, 1.0f, work, 256, work + 128, 256, 0.0f,
                    work + 128 * 256, 256);
        if (!asynchronous) nanosleep(&(struct timespec){0, 20000000}, NULL);
        CHECK_OK(device_timer_mark(b->dev, 7));
        device_gemm(b->dev, false, false, 128, 128, 128, 1.0f, work, 256, work + 128, 256, 0.0f,
                    work + 128 * 256, 256);
        CHECK_OK(device_timer_mark(b->dev, DEVICE_TIMER_SLOTS - 1));
        CHECK_OK(device_timer_elapsed(b->dev, 0, 7, &first));
        CHECK_OK(device_timer_elapsed(b->dev, 7, DEVICE_TIMER_SLOTS - 1, &second));
        CHECK_OK(device_timer_elapsed(b->dev, 0, DEVICE_TIMER_SLOTS - 1, &whole));
        bool ordered =
            first >= 0 && second >= 0 && whole >= first && whole >= second && whole < 10.0;
        printf("measured: %s timer marks: %.3g s, then %.3g s, %.3g s in all %s\n", b->name, first,
               second, whole, ordered ? "ok" : "FAIL");
        CHECK(ordered);
        if (!asynchronous) CHECK(first >= 0.019);
        CHECK(device_timer_mark(b->dev, DEVICE_TIMER_SLOTS) == DDT_ERR_INTERNAL);
        CHECK(device_timer_elapsed(b->dev, -1, 0, &first) == DDT_ERR_INTERNAL);
        backend_release(b);
    }
}

/* --- the table: one entry per operation ---------------------------------------------------------
 */

typedef void (*op_runner)(void);

/* Indexed by operation: an operation of engine/device_ops.def without an entry here is a NULL
 * entry, which main() reports as a failure naming it. */
static const op_runner op_cases[DEVICE_OP_COUNT] = {
    [DEVICE_OP_memory_alloc] = run_memory,
    [DEVICE_OP_memory_free] = run_memory,
    [DEVICE_OP_memory_info] = run_memory,
    [DEVICE_OP_copy_host_to_device] = run_memory,
    [DEVICE_OP_copy_device_to_host] = run_memory,
    [DEVICE_OP_copy_device_to_device] = run_memory,
    [DEVICE_OP_fill_zero] = run_memory,
    [DEVICE_OP_gemm] = run_gemms,
    [DEVICE_OP_gemm_fp32] = run_gemms,
    [DEVICE_OP_bias_add] = run_bias_and_scale,
    [DEVICE_OP_bias_gradient_accumulate] = run_bias_and_scale,
    [DEVICE_OP_scale] = run_bias_and_scale,
    [DEVICE_OP_activation_forward] = run_activations,
    [DEVICE_OP_activation_backward] = run_activations,
    [DEVICE_OP_dropout_forward] = run_dropout,
    [DEVICE_OP_dropout_backward] = run_dropout,
    [DEVICE_OP_softmax_cross_entropy] = run_losses,
    [DEVICE_OP_binary_cross_entropy] = run_losses,
    [DEVICE_OP_mean_squared_error] = run_losses,
    [DEVICE_OP_count_correct] = run_losses,
    [DEVICE_OP_sgd_update] = run_optimizers,
    [DEVICE_OP_adamw_update] = run_optimizers,
    [DEVICE_OP_gemm_strided_batched] = run_gemms,
    [DEVICE_OP_add] = run_add,
    [DEVICE_OP_permute] = run_permute,
    [DEVICE_OP_im2col] = run_im2col,
    [DEVICE_OP_col2im] = run_im2col,
    [DEVICE_OP_pool2d_forward] = run_pooling,
    [DEVICE_OP_pool2d_backward] = run_pooling,
    [DEVICE_OP_batchnorm_forward] = run_batchnorm,
    [DEVICE_OP_batchnorm_backward] = run_batchnorm,
    [DEVICE_OP_layernorm_forward] = run_layernorm,
    [DEVICE_OP_layernorm_backward] = run_layernorm,
    [DEVICE_OP_rmsnorm_forward] = run_rmsnorm,
    [DEVICE_OP_rmsnorm_backward] = run_rmsnorm,
    [DEVICE_OP_embedding_forward] = run_embedding,
    [DEVICE_OP_embedding_backward] = run_embedding,
    [DEVICE_OP_causal_softmax_forward] = run_causal_softmax,
    [DEVICE_OP_causal_softmax_backward] = run_causal_softmax,
    [DEVICE_OP_check_finite] = run_checks,
    [DEVICE_OP_sum_of_squares] = run_checks,
    [DEVICE_OP_synchronize] = run_memory,
    [DEVICE_OP_set_precision] = run_precision,
    [DEVICE_OP_precision_workspace_bytes] = run_precision,
    [DEVICE_OP_native_stream] = run_host_and_uploads,
    [DEVICE_OP_host_alloc] = run_host_and_uploads,
    [DEVICE_OP_host_free] = run_host_and_uploads,
    [DEVICE_OP_upload_async] = run_host_and_uploads,
    [DEVICE_OP_upload_wait] = run_host_and_uploads,
    [DEVICE_OP_upload_host_done] = run_host_and_uploads,
    [DEVICE_OP_timer_mark] = run_timers,
    [DEVICE_OP_timer_elapsed] = run_timers,
};

static bool open_backend(device_kind kind, const char *name) {
    backend *b = &backends[backend_count];
    *b = (backend){.name = name, .is_cpu = kind == DEVICE_KIND_CPU};
    if (device_open(kind, 0, &b->dev) != DDT_OK || allocator_open(b->dev, &b->alloc) != DDT_OK) {
        fprintf(stderr, "cannot open the %s backend: %s\n", name, ddt_error_message());
        CHECK(false);
        if (b->dev) device_close(b->dev);
        return false;
    }
    backend_count++;
    wrap_table(b);
    printf("backend %s: %s\n", name, b->dev->description);
    return true;
}

int main(void) {
    double started = fixture_seconds();
    open_backend(DEVICE_KIND_CPU, "cpu");
    if (device_count(DEVICE_KIND_CUDA) > 0)
        open_backend(DEVICE_KIND_CUDA, "cuda");
    else
        check_not_run("every operation on the cuda backend",
                      device_kind_available(DEVICE_KIND_CUDA)
                          ? "no GPU: the CUDA backend is built but no device is visible"
                          : "no GPU: the CUDA backend is not built into this binary");

    /* Every operation has a case. */
    for (int op = 0; op < DEVICE_OP_COUNT; op++) {
        if (!op_cases[op])
            fprintf(stderr,
                    "  the harness has no case for the device operation %s: add one to "
                    "op_cases\n",
                    device_op_name((device_op)op));
        check_record(op_cases[op] != NULL, __FILE__, __LINE__,
                     fixture_text("a case for %s", device_op_name((device_op)op)));
    }
    /* Each runner once (several operations share one), the GEMMs first: their first mode is
     * fp32 as the backends open, before any set_precision. */
    op_runner done[DEVICE_OP_COUNT];
    int done_count = 0;
    if (op_cases[DEVICE_OP_gemm]) done[done_count++] = op_cases[DEVICE_OP_gemm], run_gemms();
    for (int op = 0; op < DEVICE_OP_COUNT; op++) {
        op_runner runner = op_cases[op];
        bool seen = runner == NULL;
        for (int i = 0; i < done_count && !seen; i++)
            seen = done[i] == runner;
        if (seen) continue;
        double case_started = fixture_seconds();
        runner();
        done[done_count++] = runner;
        printf("timing: the case of %s took %.3f s\n", device_op_name((device_op)op),
               fixture_seconds() - case_started);
    }

    /* And each operation a backend supports was called on it. */
    for (int bi = 0; bi < backend_count; bi++) {
        backend *b = &backends[bi];
        for (int op = 0; op < DEVICE_OP_COUNT; op++) {
            if (!device_supports_op(b->dev, (device_op)op)) continue;
            if (b->calls[op] == 0)
                fprintf(stderr, "  %s was never called on the %s backend\n",
                        device_op_name((device_op)op), b->name);
            check_record(b->calls[op] > 0, __FILE__, __LINE__,
                         fixture_text("%s called on %s", device_op_name((device_op)op), b->name));
        }
    }
    for (int bi = backend_count - 1; bi >= 0; bi--) {
        backend *b = &backends[bi];
        CHECK_OK(device_synchronize(b->dev));
        allocator_close(b->alloc);
        unwrap_table(b);
        device_close(b->dev);
    }
    printf("timing: every operation on %d backend%s: %.2f s\n", backend_count,
           backend_count == 1 ? "" : "s", fixture_seconds() - started);
    return check_finish();
}
