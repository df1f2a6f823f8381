/* test_cuda_device.c - the CUDA backend against the CPU backend, operation by operation.
 *
 * Every operation of engine/device.h runs on the same random inputs on both backends and the
 * results are compared: fp32 arithmetic within 1e-5 (relative to max(1, |value|)); GEMMs and
 * float sums within the bound float32 rounding allows them, whatever order each backend adds
 * in (relative to the sum of the magnitudes that were added: float_sum_gamma, gemm_tolerance),
 * plus, for TF32, bf16 and fp16 GEMMs, the rounding of their operands; dropout masks, argmax
 * counts and the optimizer updates exactly (engine/optim_update.h). The layer engine's
 * operations likewise: the pure gathers (add, permute, im2col, col2im, pooling, embeddings)
 * bit for bit, since the GPU adds in the CPU's order; normalisation within 1e-5 (its sums in
 * double on both), causal softmax within 1e-5 or its rows' summation bound; and every
 * reduction a second time on the GPU, which must give the same bits (no float atomics). Also:
 * the upload
 * path, check_finite on NaN and Inf, memory_info, preallocating through the allocator with a
 * limit, the precision workspace as the allocator counts it, and a failure in an operation
 * without a status surfacing at the next micro-batch's upload_wait and synchronisation.
 * Then that TF32, bf16 and fp16 GEMMs really lose the bits their formats lack (an error above
 * any fp32 GEMM's, against float64), and that fp32 comes back; and the index paths of GPT
 * sizes: elementwise counts past the grid's 2^24 threads, causal softmax past its 524,288
 * warps, operand casts of more than 20M and of more than 2^31 elements (each case that the
 * GPU has no memory for prints "not run: ..." with the reason, and times itself).
 *
 * First, on any machine, the CPU side of the newer operations (precision, host memory, the
 * upload path) and the registry. Then, without a GPU (or in a build without CUDA), the test
 * prints one line, "skipped: no GPU ...", and returns 77, which CTest reports as skipped.
 */
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
#include "engine/cuda/reduction_plan.h" /* the kernels' partial sums: shapes that reach them */
#include "engine/device.h"
#include "engine/model_spec.h" /* conv_geometry_make */
#include "util/rng.h"

#define MIB ((size_t)1 << 20)
#define GIB ((size_t)1 << 30)
#define SKIP_EXIT_CODE 77

static device *cpu, *gpu;
static allocator *gpu_alloc;
static int failures; /* the checks of this file that failed, to decide between fail and skip */

static void expect_record(int ok, const char *file, int line, const char *text) {
    if (!ok) failures++;
    check_record(ok, file, line, text);
}

static void expect_status(ddt_status status, const char *file, int line, const char *text) {
    if (status != DDT_OK) failures++;
    check_record_status(status, file, line, text);
}

#define EXPECT(cond) expect_record(!!(cond), __FILE__, __LINE__, #cond)
#define EXPECT_OK(expr) expect_status((expr), __FILE__, __LINE__, #expr)

static bool message_has(const char *part) {
    bool found = strstr(ddt_error_message(), part) != NULL;
    if (!found) fprintf(stderr, "  message lacks '%s': %s\n", part, ddt_error_message());
    return found;
}

/* --- GPU buffers (through the allocator, as the engine takes them) ------------------------ */

static void *gpu_buffer(size_t bytes) {
    void *pointer = NULL;
    ddt_status status =
        allocator_alloc(gpu_alloc, MEMORY_COMPONENT_ACTIVATIONS, bytes ? bytes : 1, &pointer);
    if (status != DDT_OK) {
        fprintf(stderr, "cannot allocate %zu bytes on the GPU: %s\n", bytes, ddt_error_message());
        exit(1);
    }
    return pointer;
}

static void *gpu_copy_of(const void *host, size_t bytes) {
    void *pointer = gpu_buffer(bytes);
    EXPECT_OK(device_copy_host_to_device(gpu, pointer, host, bytes));
    return pointer;
}

static void host_copy_of(void *host, const void *device_pointer, size_t bytes) {
    EXPECT_OK(device_copy_device_to_host(gpu, host, device_pointer, bytes));
}

static void gpu_release(void *pointer) {
    allocator_free(gpu_alloc, pointer);
}

/* gpu_buffer and gpu_copy_of, released with ARENA. */
static void *gpu_scratch(fixture_arena *arena, size_t bytes) {
    return fixture_adopt(arena, gpu_buffer(bytes), gpu_release);
}

static void *gpu_scratch_copy(fixture_arena *arena, const void *host, size_t bytes) {
    return fixture_adopt(arena, gpu_copy_of(host, bytes), gpu_release);
}

/* --- comparisons ------------------------------------------------------------------------- */

/* got[i] ~ expected[i]: |got - expected| <= tolerance * scale, where scale is scales[i] or,
 * without scales, max(1, |expected|); NaN must meet NaN and an infinity the same infinity.
 * One check per array; a failure names the worst element. */
static void check_close(const char *what, const float *got, const float *expected, size_t count,
                        double tolerance, const double *scales, const char *file, int line) {
    double worst = 0.0;
    size_t worst_index = 0;
    bool mismatch = false;
    for (size_t i = 0; i < count && !mismatch; i++) {
        if (isnan(expected[i]) || isnan(got[i]) || isinf(expected[i]) || isinf(got[i])) {
            bool same = isnan(expected[i]) ? isnan(got[i]) : got[i] == expected[i];
            if (!same) {
                mismatch = true;
                worst_index = i;
            }
            continue;
        }
        double scale = scales ? scales[i] : fmax(1.0, fabs((double)expected[i]));
        double error = fabs((double)got[i] - (double)expected[i]) / scale;
        if (!(error <= worst)) {
            worst = error;
            worst_index = i;
        }
    }
    bool ok = !mismatch && worst <= tolerance;
    /* One line per comparison, for tests/gpu/acceptance.sh's table of measured errors. */
    printf("measured: %-56s worst %.3g tolerance %.3g %s\n", what, mismatch ? INFINITY : worst,
           tolerance, ok ? "ok" : "FAIL");
    if (!ok)
        fprintf(stderr,
                "  %s: element %zu of %zu: got %.9g, expected %.9g (error %.3g, tolerance %.3g)\n",
                what, worst_index, count, count ? got[worst_index] : 0.0,
                count ? expected[worst_index] : 0.0, worst, tolerance);
    expect_record(ok, file, line, what);
}

#define CHECK_CLOSE(what, got, expected, count, tolerance, scales)                                 \
    check_close((what), (got), (expected), (count), (tolerance), (scales), __FILE__, __LINE__)

/* gamma(n) = n u / (1 - n u): a sum or dot product of n terms computed in floating point with
 * unit roundoff u, in any order, fused or not, is within gamma(n) times the sum of the terms'
 * magnitudes of the exact value (Higham, Accuracy and Stability of Numerical Algorithms, 2nd
 * ed., ch. 3 and 4). Two such computations (the CPU's and the GPU's) are within the sum of
 * their two bounds of each other: tolerances that hold for every BLAS kernel and GPU, not
 * only for the orders this machine happens to use. */
static double float_sum_gamma(int terms, double unit_roundoff) {
    double nu = (double)terms * unit_roundoff;
    return nu / (1.0 - nu);
}

/* How an operand reaches the GPU's multiply: rounded to `unit` relative (0: as float32), and
 * accumulated by tensor cores, whose float32 additions may truncate (unit roundoff 2^-23,
 * twice round-to-nearest's; Fasi et al., "Numerical behavior of NVIDIA tensor cores", 2021).
 * TF32 takes 2^-10, allowing the conversion to truncate its 10 stored bits; ddtrain rounds to
 * bf16 and fp16 to nearest (__float2bfloat16_rn, __float2half_rn): 2^-8 and 2^-11. */
typedef struct gemm_precision {
    double unit;
    bool tensor_cores;
} gemm_precision;
static const gemm_precision GEMM_FP32 = {0.0, false}, GEMM_TF32 = {0x1p-10, true},
                            GEMM_BF16 = {0x1p-8, true}, GEMM_FP16 = {0x1p-11, true};

/* The bound on |GPU - CPU| for one element of C = alpha op(A) op(B) + beta C, relative to
 * |alpha| sum_p |a_ip b_pj| + |beta c_ij|: k products and sums, alpha, beta and the last add
 * on each side (gamma(k + 3)), and 2 unit + unit^2 for the GPU's rounded operands. */
static double gemm_tolerance(int k, gemm_precision precision) {
    double u = 0x1p-24;
    return float_sum_gamma(k + 3, u) + float_sum_gamma(k + 3, precision.tensor_cores ? 2 * u : u) +
           2.0 * precision.unit + precision.unit * precision.unit;
}

static void check_identical(const char *what, const void *got, const void *expected, size_t bytes,
                            const char *file, int line) {
    bool ok = memcmp(got, expected, bytes) == 0;
    printf("measured: %-56s %s tolerance bitwise %s\n", what, ok ? "identical" : "differs",
           ok ? "ok" : "FAIL");
    if (!ok) {
        const unsigned char *g = got, *e = expected;
        size_t i = 0;
        while (g[i] == e[i])
            i++;
        fprintf(stderr, "  %s: first difference at byte %zu of %zu\n", what, i, bytes);
    }
    expect_record(ok, file, line, what);
}

#define CHECK_IDENTICAL(what, got, expected, bytes)                                                \
    check_identical((what), (got), (expected), (bytes), __FILE__, __LINE__)

/* --- the CPU side of the newer operations, and the registry (no GPU needed) -------------- */

static void check_cpu_backend_and_registry(void) {
    EXPECT(device_count(DEVICE_KIND_CPU) == 1);

    precision_kind precision = PRECISION_FP32;
    const char *names[] = {"fp32", "tf32", "bf16", "fp16"};
    for (int i = 0; i < 4; i++) {
        EXPECT_OK(precision_kind_parse(names[i], &precision));
        EXPECT((int)precision == i);
        EXPECT(strcmp(precision_kind_name(precision), names[i]) == 0);
    }
    EXPECT(precision_kind_parse("fp8", &precision) == DDT_ERR_USAGE);
    EXPECT(message_has("fp32, tf32, bf16 or fp16"));

    EXPECT_OK(device_set_precision(cpu, PRECISION_FP32, NULL, 1000));
    EXPECT(device_set_precision(cpu, PRECISION_BF16, NULL, 1000) == DDT_ERR_USAGE);
    EXPECT(message_has("--precision bf16 needs --device cuda"));
    EXPECT(device_precision_workspace_bytes(cpu, PRECISION_FP32, 1000) == 0);
    EXPECT(device_native_stream(cpu) == NULL);

    unsigned char *host = NULL;
    EXPECT_OK(device_host_alloc(cpu, 1000, (void **)&host));
    EXPECT(host && (uintptr_t)host % 64 == 0);
    bool zero = host != NULL;
    for (int i = 0; host && i < 1000; i++)
        zero = zero && host[i] == 0;
    EXPECT(zero);
    unsigned char source[100], target[100];
    for (int i = 0; i < 100; i++)
        source[i] = (unsigned char)i;
    EXPECT_OK(device_upload_async(cpu, target, source, sizeof source, 1));
    EXPECT(memcmp(source, target, sizeof source) == 0);
    EXPECT_OK(device_upload_wait(cpu, 1));
    EXPECT_OK(device_upload_host_done(cpu, 1));
    EXPECT(device_upload_async(cpu, target, source, sizeof source, 2) != DDT_OK);
    device_host_free(cpu, host);

    /* Timer marks: on the CPU the host clock (its operations are done when they return). */
    double seconds = -1;
    EXPECT_OK(device_timer_mark(cpu, 0));
    struct timespec pause = {0, 20000000};
    nanosleep(&pause, NULL);
    EXPECT_OK(device_timer_mark(cpu, DEVICE_TIMER_SLOTS - 1));
    EXPECT_OK(device_timer_elapsed(cpu, 0, DEVICE_TIMER_SLOTS - 1, &seconds));
    EXPECT(seconds >= 0.019 && seconds < 1.0);
    EXPECT(device_timer_mark(cpu, DEVICE_TIMER_SLOTS) == DDT_ERR_INTERNAL);
    EXPECT(device_timer_elapsed(cpu, -1, 0, &seconds) == DDT_ERR_INTERNAL);

    /* device_gemm_fp32 (convolution's bias, in fp32 whatever the mode) is the plain product
     * on the CPU, which has fp32 only: the same bits as device_gemm. */
    float a[6] = {0.1f, -2.5f, 3.25f, 1e-3f, 7.0f, -0.3f},
          b[6] = {1.5f, 0.7f, -1.1f, 2.2f, 0.01f, 4.0f};
    float c_plain[4] = {1, 2, 3, 4}, c_fp32[4] = {1, 2, 3, 4};
    device_gemm(cpu, false, false, 2, 2, 3, 0.5f, a, 3, b, 2, 1.0f, c_plain, 2);
    device_gemm_fp32(cpu, false, false, 2, 2, 3, 0.5f, a, 3, b, 2, 1.0f, c_fp32, 2);
    EXPECT(memcmp(c_plain, c_fp32, sizeof c_plain) == 0);
    EXPECT(c_fp32[0] != 1.0f);

    if (!device_kind_available(DEVICE_KIND_CUDA)) {
        device *none = (device *)1;
        EXPECT(device_open(DEVICE_KIND_CUDA, 0, &none) == DDT_ERR_USAGE);
        EXPECT(none == NULL);
        EXPECT(device_count(DEVICE_KIND_CUDA) == 0);
    }
}

/* --- GPU: device facts -------------------------------------------------------------------- */

static void check_description_and_memory(void) {
    EXPECT(strncmp(gpu->description, "cuda:", 5) == 0);
    EXPECT(strcmp(device_kind_name(gpu->kind), "cuda") == 0);
    EXPECT(device_native_stream(gpu) != NULL);
    size_t total = 0, available = 0;
    EXPECT_OK(device_memory_info(gpu, &total, &available));
    EXPECT(total >= GIB);
    EXPECT(available > 0 && available <= total);

    int count = device_count(DEVICE_KIND_CUDA);
    device *none = (device *)1;
    EXPECT(device_open(DEVICE_KIND_CUDA, count, &none) != DDT_OK);
    EXPECT(none == NULL);
}

/* --- GPU: matrix products ----------------------------------------------------------------- */

/* One GEMM, C = alpha op(A) op(B) + beta C with padded leading dimensions, on both backends;
 * the GPU must agree within gemm_tolerance times the sum of the magnitudes of the terms. */
static void check_gemm_case(const char *what, bool transpose_a, bool transpose_b, int m, int n,
                            int k, float alpha, float beta, gemm_precision precision) {
    double tolerance = gemm_tolerance(k, precision);
    int a_rows = transpose_a ? k : m, a_cols = transpose_a ? m : k;
    int b_rows = transpose_b ? n : k, b_cols = transpose_b ? k : n;
    int lda = a_cols + 3, ldb = b_cols + 1, ldc = n + 2;
    size_t a_size = (size_t)a_rows * lda, b_size = (size_t)b_rows * ldb, c_size = (size_t)m * ldc;
    float *a = fixture_random_floats(NULL, a_size, -1.0f, 1.0f);
    float *b = fixture_random_floats(NULL, b_size, -1.0f, 1.0f);
    float *c = fixture_random_floats(NULL, c_size, -1.0f, 1.0f);
    float *expected = fixture_copy_floats(NULL, c, c_size);
    float *got = fixture_copy_floats(NULL, c, c_size);
    double *scales = malloc(c_size * sizeof *scales);
    for (size_t e = 0; e < c_size; e++) /* padding must stay exactly as it was */
        scales[e] = 1e-30;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double sum = 0.0;
            for (int p = 0; p < k; p++) {
                float a_ip = transpose_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                float b_pj = transpose_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                sum += fabs((double)a_ip * b_pj);
            }
            scales[(size_t)i * ldc + j] =
                fabs(alpha) * sum + fabs(beta * c[(size_t)i * ldc + j]) + 1e-30;
        }
    device_gemm(cpu, transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, expected,
                   ldc);

    float *device_a = gpu_copy_of(a, a_size * sizeof(float));
    float *device_b = gpu_copy_of(b, b_size * sizeof(float));
    float *device_c = gpu_copy_of(c, c_size * sizeof(float));
    device_gemm(gpu, transpose_a, transpose_b, m, n, k, alpha, device_a, lda, device_b, ldb,
                   beta, device_c, ldc);
    host_copy_of(got, device_c, c_size * sizeof(float));
    char label[160];
    snprintf(label, sizeof label, "%s gemm %c%c m=%d n=%d k=%d beta=%g", what,
             transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, beta);
    CHECK_CLOSE(label, got, expected, c_size, tolerance, scales);

    gpu_release(device_c);
    gpu_release(device_b);
    gpu_release(device_a);
    free(scales);
    free(got);
    free(expected);
    free(c);
    free(b);
    free(a);
}

static void check_gemm_all_layouts(const char *what, gemm_precision precision) {
    for (int layout = 0; layout < 4; layout++) {
        bool transpose_a = layout & 1, transpose_b = layout & 2;
        check_gemm_case(what, transpose_a, transpose_b, 37, 29, 53, 0.75f, 0.5f, precision);
        check_gemm_case(what, transpose_a, transpose_b, 64, 96, 256, 1.0f, 0.0f, precision);
    }
}

static size_t workspace_in_use(void) {
    return allocator_get_stats(gpu_alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE];
}

static void check_gemm(void) {
    /* Before set_precision: fp32 with cuBLAS's own workspace. */
    check_gemm_all_layouts("fp32 (default)", GEMM_FP32);
    check_gemm_case("fp32 empty", false, false, 5, 7, 0, 1.0f, 0.5f, GEMM_FP32);
    check_gemm_case("fp32 empty", true, false, 5, 7, 0, 1.0f, 0.0f, GEMM_FP32);

    const size_t max_operand_floats = 256 * 96; /* the largest m*k or k*n above */
    EXPECT(workspace_in_use() == 0);
    size_t fp32_bytes = device_precision_workspace_bytes(gpu, PRECISION_FP32, max_operand_floats);
    /* cuBLAS's 32 MiB and the kernels' scratch: the partial sums and the embedding sort's
     * three id arrays, plus the sort's own temporary storage (a few MiB at most). */
    size_t scratch_bytes = fp32_bytes - 32 * MIB;
    printf("measured: the kernels' scratch takes %zu bytes\n", scratch_bytes);
    EXPECT(fp32_bytes > 32 * MIB);
    EXPECT(scratch_bytes >= REDUCTION_PARTIAL_BYTES + 3 * (size_t)EMBEDDING_SORT_ROWS * 4);
    EXPECT(scratch_bytes <= 16 * MIB);
    EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, max_operand_floats));
    EXPECT(workspace_in_use() == fp32_bytes);
    check_gemm_all_layouts("fp32", GEMM_FP32);

    EXPECT_OK(device_set_precision(gpu, PRECISION_TF32, gpu_alloc, max_operand_floats));
    EXPECT(workspace_in_use() ==
           device_precision_workspace_bytes(gpu, PRECISION_TF32, max_operand_floats));
    check_gemm_all_layouts("tf32", GEMM_TF32);

    size_t bf16_bytes = device_precision_workspace_bytes(gpu, PRECISION_BF16, max_operand_floats);
    EXPECT(bf16_bytes == fp32_bytes + 2 * allocator_rounded_size(max_operand_floats * 2));
    EXPECT_OK(device_set_precision(gpu, PRECISION_BF16, gpu_alloc, max_operand_floats));
    EXPECT(workspace_in_use() == bf16_bytes); /* the fp32 pieces went back */
    check_gemm_all_layouts("bf16", GEMM_BF16);

    EXPECT_OK(device_set_precision(gpu, PRECISION_FP16, gpu_alloc, max_operand_floats));
    check_gemm_all_layouts("fp16", GEMM_FP16);

    EXPECT(device_set_precision(gpu, (precision_kind)42, gpu_alloc, 1) == DDT_ERR_USAGE);
    EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, max_operand_floats));
    EXPECT(workspace_in_use() == fp32_bytes);
    EXPECT_OK(device_synchronize(gpu));
}

/* --- GPU: bias, scale, activations, dropout ---------------------------------------------- */

static void check_bias_case(int rows, int cols) {
    size_t count = (size_t)rows * cols;
    float *y = fixture_random_floats(NULL, count, -2.0f, 2.0f);
    float *bias = fixture_random_floats(NULL, (size_t)cols, -1.0f, 1.0f);
    float *gradient = fixture_random_floats(NULL, (size_t)cols, -1.0f, 1.0f);
    float *expected_y = fixture_copy_floats(NULL, y, count),
          *got_y = fixture_copy_floats(NULL, y, count);
    float *expected_gradient = fixture_copy_floats(NULL, gradient, (size_t)cols);
    float *got_gradient = fixture_copy_floats(NULL, gradient, (size_t)cols);
    double *scales = calloc((size_t)cols, sizeof *scales);
    for (int c = 0; c < cols; c++) {
        scales[c] = fabs(gradient[c]) + 1e-30;
        for (int r = 0; r < rows; r++)
            scales[c] += fabs(y[(size_t)r * cols + c]);
    }
    float *device_y = gpu_copy_of(y, count * sizeof(float));
    float *device_bias = gpu_copy_of(bias, (size_t)cols * sizeof(float));
    float *device_gradient = gpu_copy_of(gradient, (size_t)cols * sizeof(float));

    device_bias_gradient_accumulate(cpu, rows, cols, y, expected_gradient);
    device_bias_gradient_accumulate(gpu, rows, cols, device_y, device_gradient);
    host_copy_of(got_gradient, device_gradient, (size_t)cols * sizeof(float));
    /* A float sum of rows + 1 terms on each side, in whatever order each adds. */
    char what[96];
    snprintf(what, sizeof what, "bias_gradient_accumulate %dx%d", rows, cols);
    CHECK_CLOSE(what, got_gradient, expected_gradient, (size_t)cols,
                2.0 * float_sum_gamma(rows + 1, 0x1p-24), scales);
    /* Again from the same start: the same bits (the partials add in a fixed order). */
    float *again = fixture_copy_floats(NULL, gradient, (size_t)cols);
    EXPECT_OK(
        device_copy_host_to_device(gpu, device_gradient, gradient, (size_t)cols * sizeof(float)));
    device_bias_gradient_accumulate(gpu, rows, cols, device_y, device_gradient);
    host_copy_of(again, device_gradient, (size_t)cols * sizeof(float));
    snprintf(what, sizeof what, "bias_gradient_accumulate %dx%d: repeat", rows, cols);
    CHECK_IDENTICAL(what, again, got_gradient, (size_t)cols * sizeof(float));
    free(again);

    device_bias_add(cpu, rows, cols, expected_y, bias);
    device_bias_add(gpu, rows, cols, device_y, device_bias);
    device_scale(cpu, count, -0.37f, expected_y);
    device_scale(gpu, count, -0.37f, device_y);
    host_copy_of(got_y, device_y, count * sizeof(float));
    CHECK_CLOSE("bias_add then scale", got_y, expected_y, count, 1e-6, NULL);

    gpu_release(device_gradient);
    gpu_release(device_bias);
    gpu_release(device_y);
    free(scales);
    free(got_gradient);
    free(expected_gradient);
    free(got_y);
    free(expected_y);
    free(gradient);
    free(bias);
    free(y);
}

static void check_activations(void) {
    const size_t count = 4099;
    float *x = fixture_random_floats(NULL, count, -6.0f, 6.0f);
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 30.0f;
    x[3] = -30.0f;
    x[4] = NAN;
    x[5] = 1e-3f;
    float *dy = fixture_random_floats(NULL, count, -1.0f, 1.0f);
    float *expected = fixture_random_floats(NULL, count, 0, 0),
          *got = fixture_random_floats(NULL, count, 0, 0);
    float *y = fixture_random_floats(NULL, count, 0, 0);
    float *device_x = gpu_copy_of(x, count * sizeof(float));
    float *device_dy = gpu_copy_of(dy, count * sizeof(float));
    float *device_y = gpu_buffer(count * sizeof(float));
    float *device_out = gpu_buffer(count * sizeof(float));
    const char *names[] = {"relu", "gelu", "tanh", "sigmoid", "gelu_tanh"};
    activation_kind kinds[] = {ACTIVATION_RELU, ACTIVATION_GELU, ACTIVATION_TANH,
                               ACTIVATION_SIGMOID, ACTIVATION_GELU_TANH};
    for (int i = 0; i < 5; i++) {
        char label[64];
        device_activation_forward(cpu, kinds[i], count, x, y);
        device_activation_forward(gpu, kinds[i], count, device_x, device_out);
        host_copy_of(got, device_out, count * sizeof(float));
        snprintf(label, sizeof label, "%s forward", names[i]);
        CHECK_CLOSE(label, got, y, count, 1e-5, NULL);

        /* Both backends get the CPU's y, so only the backward formulas are compared. */
        EXPECT_OK(device_copy_host_to_device(gpu, device_y, y, count * sizeof(float)));
        device_activation_backward(cpu, kinds[i], count, x, y, dy, expected);
        device_activation_backward(gpu, kinds[i], count, device_x, device_y, device_dy,
                                      device_out);
        host_copy_of(got, device_out, count * sizeof(float));
        snprintf(label, sizeof label, "%s backward", names[i]);
        CHECK_CLOSE(label, got, expected, count, 1e-5, NULL);
    }
    gpu_release(device_out);
    gpu_release(device_y);
    gpu_release(device_dy);
    gpu_release(device_x);
    free(y);
    free(got);
    free(expected);
    free(dy);
    free(x);
}

static void check_dropout(void) {
    const int rows = 33, cols = 71;
    const size_t count = (size_t)rows * cols;
    int64_t row_ids[33];
    for (int r = 0; r < rows; r++) /* global rows, far apart and beyond 32 bits */
        row_ids[r] = (int64_t)(rng_hash4(5, 6, 7, (uint64_t)r) >> 26);
    float *x = fixture_random_floats(NULL, count, -3.0f, 3.0f);
    float *expected = fixture_random_floats(NULL, count, 0, 0),
          *got = fixture_random_floats(NULL, count, 0, 0);
    int64_t *device_row_ids = gpu_copy_of(row_ids, sizeof row_ids);
    float *device_x = gpu_copy_of(x, count * sizeof(float));
    float *device_out = gpu_buffer(count * sizeof(float));
    const float rates[] = {0.3f, 0.9f, 0.0f};
    for (int i = 0; i < 3; i++) {
        dropout_key key = {.seed = 0x123456789abcull, .step = 17 + i, .layer = 3};
        char label[64];
        device_dropout_forward(cpu, rows, cols, rates[i], key, row_ids, x, expected);
        device_dropout_forward(gpu, rows, cols, rates[i], key, device_row_ids, device_x,
                                  device_out);
        host_copy_of(got, device_out, count * sizeof(float));
        snprintf(label, sizeof label, "dropout forward rate %g, bit for bit", rates[i]);
        CHECK_IDENTICAL(label, got, expected, count * sizeof(float));
        size_t kept = 0;
        for (size_t e = 0; e < count; e++)
            kept += expected[e] != 0.0f;
        double kept_fraction = (double)kept / (double)count;
        EXPECT(fabs(kept_fraction - (1.0 - rates[i])) < 0.05);

        device_dropout_backward(cpu, rows, cols, rates[i], key, row_ids, x, expected);
        device_dropout_backward(gpu, rows, cols, rates[i], key, device_row_ids, device_x,
                                   device_out);
        host_copy_of(got, device_out, count * sizeof(float));
        snprintf(label, sizeof label, "dropout backward rate %g, bit for bit", rates[i]);
        CHECK_IDENTICAL(label, got, expected, count * sizeof(float));
    }
    gpu_release(device_out);
    gpu_release(device_x);
    gpu_release(device_row_ids);
    free(got);
    free(expected);
    free(x);
}

/* --- GPU: losses and accuracy ------------------------------------------------------------ */

typedef void (*loss_function)(device *dev, int rows, int cols, const float *logits,
                              const int32_t *labels, const float *targets, float scale,
                              float *loss_sum, float *dlogits);

/* One loss on both backends; labels or targets (the other NULL); with and without dlogits. */
static void check_loss_case(const char *what, loss_function cpu_loss, loss_function gpu_loss,
                            int rows, int cols, const int32_t *labels, const float *targets,
                            const float *logits) {
    size_t count = (size_t)rows * cols;
    float scale = 1.0f / (float)rows;
    float *expected = fixture_random_floats(NULL, count, 0, 0),
          *got = fixture_random_floats(NULL, count, 0, 0);
    double *scales = malloc(count * sizeof *scales);
    for (size_t e = 0; e < count; e++)
        scales[e] = scale;
    float *device_logits = gpu_copy_of(logits, count * sizeof(float));
    int32_t *device_labels = labels ? gpu_copy_of(labels, (size_t)rows * sizeof(int32_t)) : NULL;
    float *device_targets = targets ? gpu_copy_of(targets, count * sizeof(float)) : NULL;
    float *device_dlogits = gpu_buffer(count * sizeof(float));
    float *device_loss = gpu_buffer(sizeof(float));
    for (int with_gradient = 0; with_gradient < 2; with_gradient++) {
        float expected_loss = 2.5f, got_loss = 2.5f; /* losses add to what is there */
        EXPECT_OK(device_copy_host_to_device(gpu, device_loss, &got_loss, sizeof(float)));
        cpu_loss(cpu, rows, cols, logits, labels, targets, scale, &expected_loss,
                 with_gradient ? expected : NULL);
        gpu_loss(gpu, rows, cols, device_logits, device_labels, device_targets, scale, device_loss,
                 with_gradient ? device_dlogits : NULL);
        host_copy_of(&got_loss, device_loss, sizeof(float));
        float again = 2.5f; /* the same bits a second time: partials add in a fixed order */
        EXPECT_OK(device_copy_host_to_device(gpu, device_loss, &again, sizeof(float)));
        gpu_loss(gpu, rows, cols, device_logits, device_labels, device_targets, scale, device_loss,
                 NULL);
        host_copy_of(&again, device_loss, sizeof(float));
        EXPECT(memcmp(&again, &got_loss, sizeof(float)) == 0);
        char label[128];
        snprintf(label, sizeof label, "%s %dx%d loss%s", what, rows, cols,
                 with_gradient ? " with gradient" : "");
        if (!(fabs((double)got_loss - expected_loss) <= 1e-5 * fmax(1.0, fabs(expected_loss))))
            fprintf(stderr, "  %s: got %.9g, expected %.9g\n", label, got_loss, expected_loss);
        EXPECT(fabs((double)got_loss - expected_loss) <= 1e-5 * fmax(1.0, fabs(expected_loss)));
        if (with_gradient) {
            host_copy_of(got, device_dlogits, count * sizeof(float));
            snprintf(label, sizeof label, "%s %dx%d dlogits", what, rows, cols);
            CHECK_CLOSE(label, got, expected, count, 1e-5, scales);
        }
    }
    gpu_release(device_loss);
    gpu_release(device_dlogits);
    gpu_release(device_targets);
    gpu_release(device_labels);
    gpu_release(device_logits);
    free(scales);
    free(got);
    free(expected);
}

static void check_losses_of_shape(int rows, int cols) {
    size_t count = (size_t)rows * cols;
    float *logits = fixture_random_floats(NULL, count, -20.0f, 20.0f);
    for (int c = 0; c < cols; c++) /* a row of huge logits: stability */
        logits[c] = c % 2 ? 80.0f : -85.0f;
    float *targets = fixture_random_floats(NULL, count, 0.0f, 1.0f);
    int32_t *labels = malloc((size_t)rows * sizeof *labels);
    int32_t *bits = malloc((size_t)rows * sizeof *bits);
    for (int r = 0; r < rows; r++) {
        labels[r] = (int32_t)(rng_hash4(1, 2, 3, (uint64_t)r) % (uint64_t)cols);
        bits[r] = (int32_t)(rng_hash4(1, 2, 4, (uint64_t)r) % 2);
    }
    check_loss_case("softmax_cross_entropy labels", device_softmax_cross_entropy,
                    device_softmax_cross_entropy, rows, cols, labels, NULL, logits);
    check_loss_case("softmax_cross_entropy targets", device_softmax_cross_entropy,
                    device_softmax_cross_entropy, rows, cols, NULL, targets, logits);
    check_loss_case("binary_cross_entropy targets", device_binary_cross_entropy,
                    device_binary_cross_entropy, rows, cols, NULL, targets, logits);
    check_loss_case("binary_cross_entropy labels", device_binary_cross_entropy,
                    device_binary_cross_entropy, rows, 1, bits, NULL, logits);
    check_loss_case("mean_squared_error labels", device_mean_squared_error,
                    device_mean_squared_error, rows, cols, labels, NULL, logits);
    check_loss_case("mean_squared_error one column", device_mean_squared_error,
                    device_mean_squared_error, rows, 1, bits, NULL, logits);
    check_loss_case("mean_squared_error targets", device_mean_squared_error,
                    device_mean_squared_error, rows, cols, NULL, targets, logits);
    free(bits);
    free(labels);
    free(targets);
    free(logits);
}

static void check_count_correct_case(int rows, int cols) {
    size_t count = (size_t)rows * cols;
    float *logits = fixture_random_floats(NULL, count, -4.0f, 4.0f);
    int32_t *labels = malloc((size_t)rows * sizeof *labels);
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
    float expected = 1.0f, got = 1.0f;
    float *device_logits = gpu_copy_of(logits, count * sizeof(float));
    int32_t *device_labels = gpu_copy_of(labels, (size_t)rows * sizeof(int32_t));
    float *device_correct = gpu_copy_of(&got, sizeof(float));
    device_count_correct(cpu, rows, cols, logits, labels, &expected);
    device_count_correct(gpu, rows, cols, device_logits, device_labels, device_correct);
    host_copy_of(&got, device_correct, sizeof(float));
    if (got != expected)
        fprintf(stderr, "  count_correct %dx%d: got %g, expected %g\n", rows, cols, got, expected);
    EXPECT(got == expected);
    gpu_release(device_correct);
    gpu_release(device_labels);
    gpu_release(device_logits);
    free(labels);
    free(logits);
}

static void check_losses(void) {
    check_losses_of_shape(67, 13);
    check_losses_of_shape(9, 100);   /* rows wider than a warp */
    check_losses_of_shape(5000, 10); /* many blocks adding to one loss */
    /* More rows than the row sums' blocks hold warps (REDUCTION_MAX_PARTIALS x 8): warps take
     * several rows, and all the partials meet in the second pass. */
    check_losses_of_shape(8 * REDUCTION_MAX_PARTIALS + 1001, 7);
    check_count_correct_case(67, 13);
    check_count_correct_case(300, 100);
    check_count_correct_case(129, 1);
    check_count_correct_case(8 * REDUCTION_MAX_PARTIALS + 1001, 5);
    /* GPT-2's vocabulary: 512 rows of 50257 logits (a micro-batch of 64 x 1024 tokens has 128
     * times more rows, the same kernels and grid cap). */
    double started = fixture_seconds();
    check_losses_of_shape(512, 50257);
    check_count_correct_case(512, 50257);
    printf("measured: losses and count_correct at 512 x 50257 on both backends: %.1f s\n",
           fixture_seconds() - started);
}

/* --- GPU: optimizers --------------------------------------------------------------------- */

static void check_sgd_case(float momentum, bool nesterov, float weight_decay) {
    const size_t count = 10007;
    float *params = fixture_random_floats(NULL, count, -1.0f, 1.0f);
    float *expected = fixture_copy_floats(NULL, params, count),
          *got = fixture_random_floats(NULL, count, 0, 0);
    float *velocity = fixture_random_floats(NULL, count, 0, 0),
          *got_velocity = fixture_random_floats(NULL, count, 0, 0);
    float *device_params = gpu_copy_of(params, count * sizeof(float));
    float *device_velocity = gpu_copy_of(velocity, count * sizeof(float));
    float *device_grads = gpu_buffer(count * sizeof(float));
    for (int step = 1; step <= 5; step++) {
        float *grads = fixture_random_floats(NULL, count, -1.0f, 1.0f);
        EXPECT_OK(device_copy_host_to_device(gpu, device_grads, grads, count * sizeof(float)));
        device_sgd_update(cpu, count, expected, grads, momentum != 0.0f ? velocity : NULL, 0.05f,
                             momentum, nesterov, weight_decay, step == 1);
        device_sgd_update(gpu, count, device_params, device_grads,
                             momentum != 0.0f ? device_velocity : NULL, 0.05f, momentum, nesterov,
                             weight_decay, step == 1);
        free(grads);
    }
    char label[128];
    snprintf(label, sizeof label, "sgd momentum %g nesterov %d weight decay %g: parameters",
             momentum, nesterov, weight_decay);
    /* Both backends round each operation on its own, in one order (engine/optim_update.h). */
    host_copy_of(got, device_params, count * sizeof(float));
    CHECK_IDENTICAL(label, got, expected, count * sizeof(float));
    if (momentum != 0.0f) {
        host_copy_of(got_velocity, device_velocity, count * sizeof(float));
        CHECK_IDENTICAL("sgd velocity", got_velocity, velocity, count * sizeof(float));
    }
    gpu_release(device_grads);
    gpu_release(device_velocity);
    gpu_release(device_params);
    free(got_velocity);
    free(velocity);
    free(got);
    free(expected);
    free(params);
}

static void check_adamw(void) {
    const size_t count = 10007;
    float *params = fixture_random_floats(NULL, count, -1.0f, 1.0f);
    float *m = fixture_random_floats(NULL, count, 0, 0),
          *v = fixture_random_floats(NULL, count, 0, 0);
    float *got = fixture_random_floats(NULL, count, 0, 0);
    float *device_params = gpu_copy_of(params, count * sizeof(float));
    float *device_m = gpu_copy_of(m, count * sizeof(float));
    float *device_v = gpu_copy_of(v, count * sizeof(float));
    float *device_grads = gpu_buffer(count * sizeof(float));
    for (int step = 1; step <= 5; step++) {
        float *grads = fixture_random_floats(NULL, count, -1.0f, 1.0f);
        EXPECT_OK(device_copy_host_to_device(gpu, device_grads, grads, count * sizeof(float)));
        device_adamw_update(cpu, count, params, grads, m, v, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f,
                               step);
        device_adamw_update(gpu, count, device_params, device_grads, device_m, device_v, 1e-3f,
                               0.9f, 0.999f, 1e-8f, 1e-2f, step);
        free(grads);
    }
    /* Bit for bit: no fused multiply-add on either side (engine/optim_update.h), so even
     * where beta1 * m and (1 - beta1) * g nearly cancel the moments agree exactly. */
    host_copy_of(got, device_params, count * sizeof(float));
    CHECK_IDENTICAL("adamw parameters", got, params, count * sizeof(float));
    host_copy_of(got, device_m, count * sizeof(float));
    CHECK_IDENTICAL("adamw first moment", got, m, count * sizeof(float));
    host_copy_of(got, device_v, count * sizeof(float));
    CHECK_IDENTICAL("adamw second moment", got, v, count * sizeof(float));
    gpu_release(device_grads);
    gpu_release(device_v);
    gpu_release(device_m);
    gpu_release(device_params);
    free(got);
    free(v);
    free(m);
    free(params);
}

static void check_optimizers(void) {
    check_sgd_case(0.0f, false, 0.0f);
    check_sgd_case(0.0f, false, 1e-2f);
    check_sgd_case(0.9f, false, 0.0f);
    check_sgd_case(0.9f, true, 5e-3f);
    check_adamw();
}

/* --- GPU: the layer engine's operations --------------------------------------------------- */

/* A GPU array against the CPU's: within tolerance (check_close), or bit for bit. */
static void expect_gpu_close(const char *what, const float *device_got, const float *expected,
                             size_t count, double tolerance, const double *scales, const char *file,
                             int line) {
    float *got = fixture_random_floats(NULL, count, 0, 0);
    host_copy_of(got, device_got, count * sizeof(float));
    check_close(what, got, expected, count, tolerance, scales, file, line);
    free(got);
}

static void expect_gpu_identical(const char *what, const void *device_got, const void *expected,
                                 size_t bytes, const char *file, int line) {
    void *got = malloc(bytes ? bytes : 1);
    host_copy_of(got, device_got, bytes);
    check_identical(what, got, expected, bytes, file, line);
    free(got);
}

#define EXPECT_GPU_CLOSE(what, device_got, expected, count, tolerance, scales)                     \
    expect_gpu_close((what), (device_got), (expected), (count), (tolerance), (scales), __FILE__,   \
                     __LINE__)
#define EXPECT_GPU_IDENTICAL(what, device_got, expected, bytes)                                    \
    expect_gpu_identical((what), (device_got), (expected), (bytes), __FILE__, __LINE__)

/* The GPU's result as a host copy, for a second run to be compared with bit for bit. */
static float *gpu_snapshot(const float *device_pointer, size_t count) {
    float *copy = fixture_random_floats(NULL, count, 0, 0);
    host_copy_of(copy, device_pointer, count * sizeof(float));
    return copy;
}

static char label_text[192];

/* printf into a static label (one at a time). */
static const char *label(const char *format, ...) __attribute__((format(printf, 1, 2)));
static const char *label(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(label_text, sizeof label_text, format, args);
    va_end(args);
    return label_text;
}

/* One strided batch on both backends: padded leading dimensions, strides past the end of each
 * entry (the gaps, like the padding, must stay as they were), or stride 0 for a shared
 * operand; the tolerance is gemm_tolerance, relative to the sum of the magnitudes of the terms.
 * A second GPU run from the same C must give the same bits. */
static void check_gemm_batched_case(const char *what, bool transpose_a, bool transpose_b, int m,
                                    int n, int k, int batch, bool share_a, bool share_b,
                                    float alpha, float beta, gemm_precision precision) {
    double tolerance = gemm_tolerance(k, precision);
    int a_rows = transpose_a ? k : m, a_cols = transpose_a ? m : k;
    int b_rows = transpose_b ? n : k, b_cols = transpose_b ? k : n;
    int lda = a_cols + 3, ldb = b_cols + 1, ldc = n + 2;
    int64_t a_entry = (int64_t)a_rows * lda, b_entry = (int64_t)b_rows * ldb;
    int64_t c_entry = (int64_t)m * ldc;
    int64_t stride_a = share_a ? 0 : a_entry + 5, stride_b = share_b ? 0 : b_entry + 2;
    int64_t stride_c = c_entry + 7;
    size_t a_size = (size_t)(stride_a * (batch - 1) + a_entry);
    size_t b_size = (size_t)(stride_b * (batch - 1) + b_entry);
    size_t c_size = (size_t)(stride_c * (batch - 1) + c_entry);
    float *a = fixture_random_floats(NULL, a_size, -1.0f, 1.0f);
    float *b = fixture_random_floats(NULL, b_size, -1.0f, 1.0f);
    float *c = fixture_random_floats(NULL, c_size, -1.0f, 1.0f);
    float *expected = fixture_copy_floats(NULL, c, c_size);
    double *scales = malloc(c_size * sizeof *scales);
    for (size_t e = 0; e < c_size; e++)
        scales[e] = 1e-30;
    for (int entry = 0; entry < batch; entry++) {
        const float *a_b = a + entry * stride_a, *b_b = b + entry * stride_b;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double sum = 0.0;
                for (int p = 0; p < k; p++) {
                    float a_ip = transpose_a ? a_b[(size_t)p * lda + i] : a_b[(size_t)i * lda + p];
                    float b_pj = transpose_b ? b_b[(size_t)j * ldb + p] : b_b[(size_t)p * ldb + j];
                    sum += fabs((double)a_ip * b_pj);
                }
                size_t at = (size_t)(entry * stride_c) + (size_t)i * ldc + j;
                scales[at] = fabs(alpha) * sum + fabs(beta * c[at]) + 1e-30;
            }
    }
    device_gemm_strided_batched(cpu, transpose_a, transpose_b, m, n, k, alpha, a, lda, stride_a, b,
                                ldb, stride_b, beta, expected, ldc, stride_c, batch);

    float *device_a = gpu_copy_of(a, a_size * sizeof(float));
    float *device_b = gpu_copy_of(b, b_size * sizeof(float));
    float *device_c = gpu_copy_of(c, c_size * sizeof(float));
    device_gemm_strided_batched(gpu, transpose_a, transpose_b, m, n, k, alpha, device_a, lda,
                                stride_a, device_b, ldb, stride_b, beta, device_c, ldc, stride_c,
                                batch);
    char name[160];
    snprintf(name, sizeof name, "%s gemm_strided_batched %c%c m=%d n=%d k=%d batch=%d%s%s", what,
             transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, batch,
             share_a ? " shared A" : "", share_b ? " shared B" : "");
    EXPECT_GPU_CLOSE(name, device_c, expected, c_size, tolerance, scales);
    float *first = gpu_snapshot(device_c, c_size);
    EXPECT_OK(device_copy_host_to_device(gpu, device_c, c, c_size * sizeof(float)));
    device_gemm_strided_batched(gpu, transpose_a, transpose_b, m, n, k, alpha, device_a, lda,
                                stride_a, device_b, ldb, stride_b, beta, device_c, ldc, stride_c,
                                batch);
    strncat(name, ": repeat", sizeof name - strlen(name) - 1);
    EXPECT_GPU_IDENTICAL(name, device_c, first, c_size * sizeof(float));

    free(first);
    gpu_release(device_c);
    gpu_release(device_b);
    gpu_release(device_a);
    free(scales);
    free(expected);
    free(c);
    free(b);
    free(a);
}

static void check_gemm_batched_cases(const char *what, gemm_precision precision) {
    for (int layout = 0; layout < 4; layout++)
        check_gemm_batched_case(what, layout & 1, layout & 2, 17, 23, 31, 5, false, false, 0.75f,
                                0.5f, precision);
    /* Attention's shapes: Q K^T scaled, then the probabilities times V. */
    check_gemm_batched_case(what, false, true, 64, 64, 32, 8, false, false, 0.17677669f, 0.0f,
                            precision);
    check_gemm_batched_case(what, false, false, 64, 32, 64, 8, false, false, 1.0f, 0.0f, precision);
    /* One operand shared by every entry (stride 0), accumulating. */
    check_gemm_batched_case(what, true, false, 9, 13, 11, 4, true, false, 1.0f, 1.0f, precision);
    check_gemm_batched_case(what, false, true, 9, 13, 11, 4, false, true, 1.0f, 1.0f, precision);
}

static void check_gemm_strided_batched(void) {
    /* Enough for every whole batch above (8 entries of 64 x 64). */
    const size_t whole_batches = 8 * 64 * 64;
    check_gemm_batched_cases("fp32", GEMM_FP32);
    check_gemm_batched_case("fp32 empty", false, false, 5, 7, 0, 3, false, false, 1.0f, 0.5f,
                            GEMM_FP32);
    check_gemm_batched_case("fp32 empty", false, false, 5, 7, 0, 3, false, false, 1.0f, 0.0f,
                            GEMM_FP32);
    EXPECT_OK(device_set_precision(gpu, PRECISION_TF32, gpu_alloc, whole_batches));
    check_gemm_batched_cases("tf32", GEMM_TF32);
    EXPECT_OK(device_set_precision(gpu, PRECISION_BF16, gpu_alloc, whole_batches));
    check_gemm_batched_cases("bf16", GEMM_BF16);
    EXPECT_OK(device_set_precision(gpu, PRECISION_FP16, gpu_alloc, whole_batches));
    check_gemm_batched_cases("fp16", GEMM_FP16);
    /* Cast buffers holding two 64 x 64 entries: the batch runs in chunks. */
    EXPECT_OK(device_set_precision(gpu, PRECISION_BF16, gpu_alloc, 2 * 64 * 64 + 100));
    check_gemm_batched_cases("bf16 in chunks", GEMM_BF16);
    EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, 256 * 96));
    EXPECT_OK(device_synchronize(gpu));
}

static void check_add(void) {
    const size_t count = 10007;
    float *a = fixture_random_floats(NULL, count, -3.0f, 3.0f),
          *b = fixture_random_floats(NULL, count, -3.0f, 3.0f);
    float *expected = fixture_random_floats(NULL, count, 0, 0);
    float *device_a = gpu_copy_of(a, count * sizeof(float));
    float *device_b = gpu_copy_of(b, count * sizeof(float));
    float *device_out = gpu_copy_of(expected, count * sizeof(float));
    device_add(cpu, count, a, b, expected);
    device_add(gpu, count, device_a, device_b, device_out);
    EXPECT_GPU_IDENTICAL("add, bit for bit", device_out, expected, count * sizeof(float));
    device_add(cpu, count, a, b, a); /* in place, as a residual connection adds */
    device_add(gpu, count, device_a, device_b, device_a);
    EXPECT_GPU_IDENTICAL("add in place, bit for bit", device_a, a, count * sizeof(float));
    gpu_release(device_out);
    gpu_release(device_b);
    gpu_release(device_a);
    free(expected);
    free(b);
    free(a);
}

static void check_permute_case(int rank, const int *dims, const int *perm) {
    size_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (size_t)dims[i];
    float *in = fixture_random_floats(NULL, count, -1.0f, 1.0f);
    float *expected = fixture_random_floats(NULL, count, 0, 0);
    float *device_in = gpu_copy_of(in, count * sizeof(float));
    float *device_out = gpu_copy_of(expected, count * sizeof(float));
    device_permute(cpu, rank, dims, perm, in, expected);
    device_permute(gpu, rank, dims, perm, device_in, device_out);
    char name[128];
    int used = snprintf(name, sizeof name, "permute rank %d dims", rank);
    for (int i = 0; i < rank; i++)
        used += snprintf(name + used, sizeof name - (size_t)used, "%s%d", i ? "x" : " ", dims[i]);
    used += snprintf(name + used, sizeof name - (size_t)used, " perm");
    for (int i = 0; i < rank; i++)
        used += snprintf(name + used, sizeof name - (size_t)used, " %d", perm[i]);
    EXPECT_GPU_IDENTICAL(name, device_out, expected, count * sizeof(float));
    gpu_release(device_out);
    gpu_release(device_in);
    free(expected);
    free(in);
}

static void check_permute(void) {
    check_permute_case(1, (int[]){37}, (int[]){0});
    check_permute_case(2, (int[]){33, 65}, (int[]){1, 0});
    check_permute_case(4, (int[]){2, 3, 4, 5}, (int[]){0, 2, 1, 3});
    /* Attention: [B][T][3][heads][d] -> [3][B][heads][T][d], and back from [B][heads][T][d]. */
    check_permute_case(5, (int[]){3, 7, 3, 2, 5}, (int[]){2, 0, 3, 1, 4});
    check_permute_case(4, (int[]){3, 2, 7, 5}, (int[]){0, 2, 1, 3});
    check_permute_case(6, (int[]){2, 3, 1, 4, 5, 2}, (int[]){5, 3, 0, 2, 4, 1});
    check_permute_case(3, (int[]){1, 9, 1}, (int[]){2, 0, 1});       /* sizes of 1 */
    check_permute_case(3, (int[]){4, 6, 8}, (int[]){0, 1, 2});       /* the identity */
    check_permute_case(4, (int[]){4, 6, 8, 3}, (int[]){2, 3, 0, 1}); /* merged axes */
}

/* im2col bit for bit; col2im (a gather on the GPU) adds in the CPU's order, so bit for bit too;
 * and a second col2im gives the same bits. */
static void check_im2col_case(int samples, int channels, int height, int width, int kernel_h,
                              int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w) {
    conv_geometry g;
    EXPECT_OK(conv_geometry_make(channels, height, width, kernel_h, kernel_w, stride_h, stride_w,
                                 pad_h, pad_w, "test", &g));
    size_t x_count = (size_t)samples * channels * height * width;
    size_t cols_count =
        (size_t)channels * kernel_h * kernel_w * (size_t)samples * g.out_height * g.out_width;
    float *x = fixture_random_floats(NULL, x_count, -2.0f, 2.0f);
    float *cols = fixture_random_floats(NULL, cols_count, -2.0f, 2.0f);
    float *expected_cols = fixture_random_floats(NULL, cols_count, 0, 0),
          *expected_dx = fixture_random_floats(NULL, x_count, 0, 0);
    float *device_x = gpu_copy_of(x, x_count * sizeof(float));
    float *device_cols = gpu_copy_of(cols, cols_count * sizeof(float));
    float *device_cols_out = gpu_copy_of(cols, cols_count * sizeof(float)); /* to overwrite */
    float *device_dx = gpu_copy_of(x, x_count * sizeof(float));
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d k%dx%d s%dx%d p%dx%d", samples, channels, height,
             width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w);

    device_im2col(cpu, &g, samples, x, expected_cols);
    device_im2col(gpu, &g, samples, device_x, device_cols_out);
    EXPECT_GPU_IDENTICAL(label("im2col %s", shape), device_cols_out, expected_cols,
                         cols_count * sizeof(float));
    device_col2im(cpu, &g, samples, cols, expected_dx);
    device_col2im(gpu, &g, samples, device_cols, device_dx);
    EXPECT_GPU_IDENTICAL(label("col2im %s, bit for bit", shape), device_dx, expected_dx,
                         x_count * sizeof(float));
    float *first = gpu_snapshot(device_dx, x_count);
    device_col2im(gpu, &g, samples, device_cols, device_dx);
    EXPECT_GPU_IDENTICAL(label("col2im %s: repeat", shape), device_dx, first,
                         x_count * sizeof(float));
    free(first);
    gpu_release(device_dx);
    gpu_release(device_cols_out);
    gpu_release(device_cols);
    gpu_release(device_x);
    free(expected_dx);
    free(expected_cols);
    free(cols);
    free(x);
}

static void check_im2col(void) {
    check_im2col_case(3, 3, 11, 9, 3, 3, 1, 1, 1, 1);
    check_im2col_case(2, 2, 8, 10, 3, 2, 2, 3, 1, 0);
    check_im2col_case(3, 4, 7, 7, 1, 1, 1, 1, 0, 0);
    check_im2col_case(2, 1, 28, 28, 5, 5, 2, 2, 2, 2);
    check_im2col_case(1, 2, 5, 6, 4, 3, 1, 2, 3, 2); /* padding as wide as the window */
}

/* Pooling on inputs with many ties (values from a small set), so that max pooling's rule (the
 * first position holding the maximum) decides often. Forward and backward bit for bit: the
 * GPU's gather adds the windows' gradients in the CPU's order. */
static void check_pool_case(pool_kind kind, int samples, int channels, int height, int width,
                            int kernel, int stride, int pad) {
    conv_geometry g;
    EXPECT_OK(conv_geometry_make(channels, height, width, kernel, kernel, stride, stride, pad, pad,
                                 "test", &g));
    size_t x_count = (size_t)samples * channels * height * width;
    size_t y_count = (size_t)samples * channels * g.out_height * g.out_width;
    float *x = fixture_random_floats(NULL, x_count, 0.0f, 1.0f);
    for (size_t i = 0; i < x_count; i++)
        x[i] = floorf(x[i] * 4.0f) - 1.5f;
    if (x_count > 20) x[17] = NAN; /* NaN wins a max window */
    float *dy = fixture_random_floats(NULL, y_count, -1.0f, 1.0f);
    float *expected_y = fixture_random_floats(NULL, y_count, 0, 0),
          *expected_dx = fixture_random_floats(NULL, x_count, 0, 0);
    float *device_x = gpu_copy_of(x, x_count * sizeof(float));
    float *device_dy = gpu_copy_of(dy, y_count * sizeof(float));
    float *device_y = gpu_copy_of(dy, y_count * sizeof(float)); /* garbage to overwrite */
    float *device_dx = gpu_copy_of(x, x_count * sizeof(float)); /* garbage to overwrite */
    char shape[96];
    snprintf(shape, sizeof shape, "%s %dx%dx%dx%d k%d s%d p%d", kind == POOL_MAX ? "max" : "avg",
             samples, channels, height, width, kernel, stride, pad);

    device_pool2d_forward(cpu, kind, &g, samples, x, expected_y);
    device_pool2d_forward(gpu, kind, &g, samples, device_x, device_y);
    EXPECT_GPU_IDENTICAL(label("pool2d_forward %s", shape), device_y, expected_y,
                         y_count * sizeof(float));
    device_pool2d_backward(cpu, kind, &g, samples, x, expected_y, dy, expected_dx);
    device_pool2d_backward(gpu, kind, &g, samples, device_x, device_y, device_dy, device_dx);
    EXPECT_GPU_IDENTICAL(label("pool2d_backward %s, bit for bit", shape), device_dx, expected_dx,
                         x_count * sizeof(float));
    float *first = gpu_snapshot(device_dx, x_count);
    device_pool2d_backward(gpu, kind, &g, samples, device_x, device_y, device_dy, device_dx);
    EXPECT_GPU_IDENTICAL(label("pool2d_backward %s: repeat", shape), device_dx, first,
                         x_count * sizeof(float));
    free(first);
    gpu_release(device_dx);
    gpu_release(device_y);
    gpu_release(device_dy);
    gpu_release(device_x);
    free(expected_dx);
    free(expected_y);
    free(dy);
    free(x);
}

static void check_pooling(void) {
    for (int kind = 0; kind < 2; kind++) {
        pool_kind k = kind ? POOL_AVERAGE : POOL_MAX;
        check_pool_case(k, 3, 4, 8, 8, 2, 2, 0); /* cnn-small's maxpool(2) */
        check_pool_case(k, 2, 3, 9, 7, 3, 2, 1); /* overlapping windows, padding */
        check_pool_case(k, 2, 2, 5, 6, 3, 1, 1); /* stride 1: up to 9 windows an input */
        check_pool_case(k, 2, 3, 7, 7, 7, 1, 0); /* one window: global pooling */
    }
}

/* Batch normalisation, training and evaluation, forward and backward, within 1e-5 (relative
 * to max(1, |value|); parameter gradients to the sum of the magnitudes added); the inputs sit
 * off zero (mean 3) so the two-pass statistics matter. Then each GPU result again, bit for bit. */
static void check_batchnorm_case(int samples, int channels, int spatial) {
    fixture_arena *scratch = fixture_arena_new();
    size_t count = (size_t)samples * channels * spatial, c_count = (size_t)channels;
    float *x = fixture_random_floats(scratch, count, 1.0f, 5.0f),
          *dy = fixture_random_floats(scratch, count, -1.0f, 1.0f);
    float *gamma = fixture_random_floats(scratch, c_count, 0.5f, 1.5f),
          *beta = fixture_random_floats(scratch, c_count, -0.5f, 0.5f);
    float *running_mean = fixture_random_floats(scratch, c_count, -0.5f, 0.5f);
    float *running_var = fixture_random_floats(scratch, c_count, 0.5f, 2.0f);
    float *dgamma = fixture_random_floats(scratch, c_count, -1.0f, 1.0f),
          *dbeta = fixture_random_floats(scratch, c_count, -1.0f, 1.0f);
    float *device_x = gpu_scratch_copy(scratch, x, count * sizeof(float));
    float *device_dy = gpu_scratch_copy(scratch, dy, count * sizeof(float));
    float *device_gamma = gpu_scratch_copy(scratch, gamma, c_count * sizeof(float));
    float *device_beta = gpu_scratch_copy(scratch, beta, c_count * sizeof(float));
    float *device_running_mean = gpu_scratch(scratch, c_count * sizeof(float));
    float *device_running_var = gpu_scratch(scratch, c_count * sizeof(float));
    float *device_mean = gpu_scratch(scratch, c_count * sizeof(float));
    float *device_invstd = gpu_scratch(scratch, c_count * sizeof(float));
    float *device_y =
        gpu_scratch_copy(scratch, x, count * sizeof(float)); /* garbage to overwrite */
    float *device_dx = gpu_scratch_copy(scratch, x, count * sizeof(float));
    float *device_dgamma = gpu_scratch(scratch, c_count * sizeof(float));
    float *device_dbeta = gpu_scratch(scratch, c_count * sizeof(float));
    float *expected_y = fixture_random_floats(scratch, count, 0, 0),
          *expected_dx = fixture_random_floats(scratch, count, 0, 0);
    float *mean = fixture_random_floats(scratch, c_count, 0, 0),
          *invstd = fixture_random_floats(scratch, c_count, 0, 0);
    float *expected_running_mean = fixture_random_floats(scratch, c_count, 0, 0);
    float *expected_running_var = fixture_random_floats(scratch, c_count, 0, 0);
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%dx%d", samples, channels, spatial);

    for (int training = 1; training >= 0; training--) {
        const char *mode = training ? "training" : "evaluation";
        memcpy(expected_running_mean, running_mean, c_count * sizeof(float));
        memcpy(expected_running_var, running_var, c_count * sizeof(float));
        device_batchnorm_forward(cpu, samples, channels, spatial, x, gamma, beta, 1e-5f, training,
                                 0.1f, expected_running_mean, expected_running_var, mean, invstd,
                                 expected_y);
        float *first[5] = {NULL};
        for (int run = 0; run < 2; run++) {
            EXPECT_OK(device_copy_host_to_device(gpu, device_running_mean, running_mean,
                                                 c_count * sizeof(float)));
            EXPECT_OK(device_copy_host_to_device(gpu, device_running_var, running_var,
                                                 c_count * sizeof(float)));
            device_batchnorm_forward(gpu, samples, channels, spatial, device_x, device_gamma,
                                     device_beta, 1e-5f, training, 0.1f, device_running_mean,
                                     device_running_var, device_mean, device_invstd, device_y);
            float *outputs[5] = {device_y, device_mean, device_invstd, device_running_mean,
                                 device_running_var};
            const float *expected[5] = {expected_y, mean, invstd, expected_running_mean,
                                        expected_running_var};
            const char *names[5] = {"y", "mean", "invstd", "running_mean", "running_var"};
            size_t counts[5] = {count, c_count, c_count, c_count, c_count};
            for (int i = 0; i < 5; i++) {
                if (run == 0) {
                    EXPECT_GPU_CLOSE(label("batchnorm_forward %s %s: %s", mode, shape, names[i]),
                                     outputs[i], expected[i], counts[i], 1e-5, NULL);
                    first[i] = gpu_snapshot(outputs[i], counts[i]);
                } else {
                    EXPECT_GPU_IDENTICAL(
                        label("batchnorm_forward %s %s: %s repeat", mode, shape, names[i]),
                        outputs[i], first[i], counts[i] * sizeof(float));
                    free(first[i]);
                }
            }
        }
    }

    /* Backward from training statistics (the CPU's, given to both). */
    memcpy(expected_running_mean, running_mean, c_count * sizeof(float));
    memcpy(expected_running_var, running_var, c_count * sizeof(float));
    device_batchnorm_forward(cpu, samples, channels, spatial, x, gamma, beta, 1e-5f, true, 0.1f,
                             expected_running_mean, expected_running_var, mean, invstd, expected_y);
    EXPECT_OK(device_copy_host_to_device(gpu, device_mean, mean, c_count * sizeof(float)));
    EXPECT_OK(device_copy_host_to_device(gpu, device_invstd, invstd, c_count * sizeof(float)));
    float *expected_dgamma = fixture_copy_floats(scratch, dgamma, c_count),
          *expected_dbeta = fixture_copy_floats(scratch, dbeta, c_count);
    device_batchnorm_backward(cpu, samples, channels, spatial, x, dy, gamma, mean, invstd,
                              expected_dx, expected_dgamma, expected_dbeta);
    double *gamma_scales = fixture_alloc(scratch, c_count * sizeof *gamma_scales);
    double *beta_scales = fixture_alloc(scratch, c_count * sizeof *beta_scales);
    for (int c = 0; c < channels; c++) {
        gamma_scales[c] = fabs(dgamma[c]) + 1e-30;
        beta_scales[c] = fabs(dbeta[c]) + 1e-30;
        for (int s = 0; s < samples; s++)
            for (int i = 0; i < spatial; i++) {
                size_t at = ((size_t)s * channels + c) * spatial + i;
                gamma_scales[c] += fabs(dy[at] * (x[at] - mean[c]) * invstd[c]);
                beta_scales[c] += fabs(dy[at]);
            }
    }
    float *first_dx = NULL, *first_dgamma = NULL, *first_dbeta = NULL;
    for (int run = 0; run < 2; run++) {
        EXPECT_OK(device_copy_host_to_device(gpu, device_dgamma, dgamma, c_count * sizeof(float)));
        EXPECT_OK(device_copy_host_to_device(gpu, device_dbeta, dbeta, c_count * sizeof(float)));
        device_batchnorm_backward(gpu, samples, channels, spatial, device_x, device_dy,
                                  device_gamma, device_mean, device_invstd, device_dx,
                                  device_dgamma, device_dbeta);
        if (run == 0) {
            EXPECT_GPU_CLOSE(label("batchnorm_backward %s: dx", shape), device_dx, expected_dx,
                             count, 1e-5, NULL);
            EXPECT_GPU_CLOSE(label("batchnorm_backward %s: dgamma", shape), device_dgamma,
                             expected_dgamma, c_count, 1e-5, gamma_scales);
            EXPECT_GPU_CLOSE(label("batchnorm_backward %s: dbeta", shape), device_dbeta,
                             expected_dbeta, c_count, 1e-5, beta_scales);
            first_dx = fixture_adopt(scratch, gpu_snapshot(device_dx, count), free);
            first_dgamma = fixture_adopt(scratch, gpu_snapshot(device_dgamma, c_count), free);
            first_dbeta = fixture_adopt(scratch, gpu_snapshot(device_dbeta, c_count), free);
        } else {
            EXPECT_GPU_IDENTICAL(label("batchnorm_backward %s: dx repeat", shape), device_dx,
                                 first_dx, count * sizeof(float));
            EXPECT_GPU_IDENTICAL(label("batchnorm_backward %s: dgamma repeat", shape),
                                 device_dgamma, first_dgamma, c_count * sizeof(float));
            EXPECT_GPU_IDENTICAL(label("batchnorm_backward %s: dbeta repeat", shape), device_dbeta,
                                 first_dbeta, c_count * sizeof(float));
        }
    }
    fixture_arena_free(scratch);
}

static void check_batchnorm(void) {
    check_batchnorm_case(6, 5, 37);
    check_batchnorm_case(64, 3, 1);   /* after a dense layer (BatchNorm1d) */
    check_batchnorm_case(16, 4, 784); /* more values than a block has threads */
}

/* Layer normalisation: forward and backward within 1e-5 (dgamma, dbeta relative to the sum of
 * the magnitudes added), then each GPU result again, bit for bit. */
static void check_layernorm_case(int rows, int cols) {
    fixture_arena *scratch = fixture_arena_new();
    size_t count = (size_t)rows * cols, c_count = (size_t)cols;
    float *x = fixture_random_floats(scratch, count, 1.0f, 5.0f),
          *dy = fixture_random_floats(scratch, count, -1.0f, 1.0f);
    float *gamma = fixture_random_floats(scratch, c_count, 0.5f, 1.5f),
          *beta = fixture_random_floats(scratch, c_count, -0.5f, 0.5f);
    float *dgamma = fixture_random_floats(scratch, c_count, -1.0f, 1.0f),
          *dbeta = fixture_random_floats(scratch, c_count, -1.0f, 1.0f);
    float *expected_y = fixture_random_floats(scratch, count, 0, 0),
          *expected_dx = fixture_random_floats(scratch, count, 0, 0);
    float *mean = fixture_random_floats(scratch, (size_t)rows, 0, 0),
          *rstd = fixture_random_floats(scratch, (size_t)rows, 0, 0);
    float *expected_dgamma = fixture_copy_floats(scratch, dgamma, c_count),
          *expected_dbeta = fixture_copy_floats(scratch, dbeta, c_count);
    float *device_x = gpu_scratch_copy(scratch, x, count * sizeof(float));
    float *device_dy = gpu_scratch_copy(scratch, dy, count * sizeof(float));
    float *device_gamma = gpu_scratch_copy(scratch, gamma, c_count * sizeof(float));
    float *device_beta = gpu_scratch_copy(scratch, beta, c_count * sizeof(float));
    float *device_y =
        gpu_scratch_copy(scratch, x, count * sizeof(float)); /* garbage to overwrite */
    float *device_dx = gpu_scratch_copy(scratch, x, count * sizeof(float));
    float *device_mean = gpu_scratch(scratch, (size_t)rows * sizeof(float));
    float *device_rstd = gpu_scratch(scratch, (size_t)rows * sizeof(float));
    float *device_dgamma = gpu_scratch(scratch, c_count * sizeof(float));
    float *device_dbeta = gpu_scratch(scratch, c_count * sizeof(float));
    char shape[48];
    snprintf(shape, sizeof shape, "%dx%d", rows, cols);

    device_layernorm_forward(cpu, rows, cols, x, gamma, beta, 1e-5f, expected_y, mean, rstd);
    device_layernorm_forward(gpu, rows, cols, device_x, device_gamma, device_beta, 1e-5f, device_y,
                             device_mean, device_rstd);
    EXPECT_GPU_CLOSE(label("layernorm_forward %s: y", shape), device_y, expected_y, count, 1e-5,
                     NULL);
    EXPECT_GPU_CLOSE(label("layernorm_forward %s: mean", shape), device_mean, mean, (size_t)rows,
                     1e-5, NULL);
    EXPECT_GPU_CLOSE(label("layernorm_forward %s: rstd", shape), device_rstd, rstd, (size_t)rows,
                     1e-5, NULL);
    float *first_y = fixture_adopt(scratch, gpu_snapshot(device_y, count), free);
    float *first_rstd = fixture_adopt(scratch, gpu_snapshot(device_rstd, rows), free);
    device_layernorm_forward(gpu, rows, cols, device_x, device_gamma, device_beta, 1e-5f, device_y,
                             device_mean, device_rstd);
    EXPECT_GPU_IDENTICAL(label("layernorm_forward %s: y repeat", shape), device_y, first_y,
                         count * sizeof(float));
    EXPECT_GPU_IDENTICAL(label("layernorm_forward %s: rstd repeat", shape), device_rstd, first_rstd,
                         (size_t)rows * sizeof(float));

    /* Backward from the CPU's statistics, given to both. */
    EXPECT_OK(device_copy_host_to_device(gpu, device_mean, mean, (size_t)rows * sizeof(float)));
    EXPECT_OK(device_copy_host_to_device(gpu, device_rstd, rstd, (size_t)rows * sizeof(float)));
    device_layernorm_backward(cpu, rows, cols, x, dy, gamma, mean, rstd, expected_dx,
                              expected_dgamma, expected_dbeta);
    double *gamma_scales = fixture_alloc(scratch, c_count * sizeof *gamma_scales);
    double *beta_scales = fixture_alloc(scratch, c_count * sizeof *beta_scales);
    for (int c = 0; c < cols; c++) {
        gamma_scales[c] = fabs(dgamma[c]) + 1e-30;
        beta_scales[c] = fabs(dbeta[c]) + 1e-30;
        for (int r = 0; r < rows; r++) {
            size_t at = (size_t)r * cols + c;
            gamma_scales[c] += fabs(dy[at] * (x[at] - mean[r]) * rstd[r]);
            beta_scales[c] += fabs(dy[at]);
        }
    }
    float *first_dx = NULL, *first_dgamma = NULL, *first_dbeta = NULL;
    for (int run = 0; run < 2; run++) {
        EXPECT_OK(device_copy_host_to_device(gpu, device_dgamma, dgamma, c_count * sizeof(float)));
        EXPECT_OK(device_copy_host_to_device(gpu, device_dbeta, dbeta, c_count * sizeof(float)));
        device_layernorm_backward(gpu, rows, cols, device_x, device_dy, device_gamma, device_mean,
                                  device_rstd, device_dx, device_dgamma, device_dbeta);
        if (run == 0) {
            EXPECT_GPU_CLOSE(label("layernorm_backward %s: dx", shape), device_dx, expected_dx,
                             count, 1e-5, NULL);
            EXPECT_GPU_CLOSE(label("layernorm_backward %s: dgamma", shape), device_dgamma,
                             expected_dgamma, c_count, 1e-5, gamma_scales);
            EXPECT_GPU_CLOSE(label("layernorm_backward %s: dbeta", shape), device_dbeta,
                             expected_dbeta, c_count, 1e-5, beta_scales);
            first_dx = fixture_adopt(scratch, gpu_snapshot(device_dx, count), free);
            first_dgamma = fixture_adopt(scratch, gpu_snapshot(device_dgamma, c_count), free);
            first_dbeta = fixture_adopt(scratch, gpu_snapshot(device_dbeta, c_count), free);
        } else {
            EXPECT_GPU_IDENTICAL(label("layernorm_backward %s: dx repeat", shape), device_dx,
                                 first_dx, count * sizeof(float));
            EXPECT_GPU_IDENTICAL(label("layernorm_backward %s: dgamma repeat", shape),
                                 device_dgamma, first_dgamma, c_count * sizeof(float));
            EXPECT_GPU_IDENTICAL(label("layernorm_backward %s: dbeta repeat", shape), device_dbeta,
                                 first_dbeta, c_count * sizeof(float));
        }
    }
    fixture_arena_free(scratch);
}

static void check_layernorm(void) {
    check_layernorm_case(67, 100);
    check_layernorm_case(5, 7);
    check_layernorm_case(300, 768);  /* gpt2-124m's width */
    check_layernorm_case(2100, 128); /* more rows than the gradient's row chunks, unevenly */
    check_layernorm_case(16 * 1024 + 3, 768); /* gpt2-124m, 16 x 1024 tokens: 42 row chunks */
    check_layernorm_case(200, 40000);         /* wider than the column blocks' target: one chunk */
}

/* Embeddings: the forward gather, and the backward adding rows into the table in increasing r
 * for every table row, bit for bit as the CPU (and again); ids repeat a lot, as tokens and
 * positions do. */
static void check_embedding_case(int rows, int cols, int table_rows, bool positions) {
    size_t count = (size_t)rows * cols, table_count = (size_t)table_rows * cols;
    int32_t *ids = malloc((size_t)rows * sizeof *ids);
    for (int r = 0; r < rows; r++)
        ids[r] = positions ? r % table_rows
                           : (int32_t)(rng_hash4(3, 1, 4, (uint64_t)r) % (uint64_t)table_rows);
    float *table = fixture_random_floats(NULL, table_count, -1.0f, 1.0f),
          *dy = fixture_random_floats(NULL, count, -1.0f, 1.0f);
    float *dtable = fixture_random_floats(NULL, table_count, -1.0f, 1.0f);
    float *expected_y = fixture_random_floats(NULL, count, 0, 0),
          *expected_dtable = fixture_copy_floats(NULL, dtable, table_count);
    int32_t *device_ids = gpu_copy_of(ids, (size_t)rows * sizeof *ids);
    float *device_table = gpu_copy_of(table, table_count * sizeof(float));
    float *device_dy = gpu_copy_of(dy, count * sizeof(float));
    float *device_y = gpu_copy_of(dy, count * sizeof(float)); /* garbage to overwrite */
    float *device_dtable = gpu_buffer(table_count * sizeof(float));
    char shape[64];
    snprintf(shape, sizeof shape, "%d rows x %d of a %d-row table%s", rows, cols, table_rows,
             positions ? " (positions)" : "");

    device_embedding_forward(cpu, rows, cols, ids, table, expected_y);
    device_embedding_forward(gpu, rows, cols, device_ids, device_table, device_y);
    EXPECT_GPU_IDENTICAL(label("embedding_forward %s", shape), device_y, expected_y,
                         count * sizeof(float));
    device_embedding_backward(cpu, rows, cols, ids, dy, expected_dtable);
    for (int run = 0; run < 2; run++) {
        EXPECT_OK(
            device_copy_host_to_device(gpu, device_dtable, dtable, table_count * sizeof(float)));
        device_embedding_backward(gpu, rows, cols, device_ids, device_dy, device_dtable);
        EXPECT_GPU_IDENTICAL(
            label("embedding_backward %s, bit for bit%s", shape, run ? " (again)" : ""),
            device_dtable, expected_dtable, table_count * sizeof(float));
    }
    gpu_release(device_dtable);
    gpu_release(device_y);
    gpu_release(device_dy);
    gpu_release(device_table);
    gpu_release(device_ids);
    free(expected_dtable);
    free(expected_y);
    free(dtable);
    free(dy);
    free(table);
    free(ids);
}

static void check_embedding(void) {
    check_embedding_case(300, 70, 13, false);
    check_embedding_case(4096, 128, 256, false); /* gpt-tiny's tokens: 64 windows of 64 */
    check_embedding_case(4096, 128, 64, true);   /* and its positions */
    check_embedding_case(50, 1000, 3, false);    /* wide rows, few table rows */
    /* gpt2-124m: its 50257-token table, more rows than one sorted group (EMBEDDING_SORT_ROWS),
     * so rows of one id are added across two groups, in order; and very long runs of ids. */
    check_embedding_case(EMBEDDING_SORT_ROWS + 4097, 768, 50257, false);
    check_embedding_case(EMBEDDING_SORT_ROWS + 4097, 96, 3, false);
}

/* Causal softmax: forward within 1e-5 (above the diagonal exactly 0: the GPU's output starts
 * as garbage), backward from the CPU's probabilities within 1e-5; each again, bit for bit.
 * Each row adds up to t float terms, in another order on each side: where t is long the bar
 * is twice gamma(t + 8) instead (the sum, and a few roundings and ulps of expf around it). */
static void check_causal_softmax_case(int groups, int t, float scale) {
    size_t count = (size_t)groups * t * t;
    double tolerance = fmax(1e-5, 2.0 * float_sum_gamma(t + 8, 0x1p-24));
    float *x = fixture_random_floats(NULL, count, -8.0f, 8.0f),
          *dy = fixture_random_floats(NULL, count, -1.0f, 1.0f);
    for (size_t i = 0; i < count; i += 97) /* large scores: the max must be subtracted */
        x[i] = 300.0f;
    float *expected_y = fixture_random_floats(NULL, count, 0, 0),
          *expected_dx = fixture_random_floats(NULL, count, 0, 0);
    float *device_x = gpu_copy_of(x, count * sizeof(float));
    float *device_dy = gpu_copy_of(dy, count * sizeof(float));
    float *device_y = gpu_copy_of(x, count * sizeof(float)); /* garbage to overwrite */
    float *device_dx = gpu_copy_of(x, count * sizeof(float));
    char shape[64];
    snprintf(shape, sizeof shape, "%d groups of %dx%d, scale %g", groups, t, t, scale);

    device_causal_softmax_forward(cpu, groups, t, scale, x, expected_y);
    device_causal_softmax_forward(gpu, groups, t, scale, device_x, device_y);
    EXPECT_GPU_CLOSE(label("causal_softmax_forward %s", shape), device_y, expected_y, count,
                     tolerance, NULL);
    float *first = gpu_snapshot(device_y, count);
    device_causal_softmax_forward(gpu, groups, t, scale, device_x, device_y);
    EXPECT_GPU_IDENTICAL(label("causal_softmax_forward %s: repeat", shape), device_y, first,
                         count * sizeof(float));
    free(first);

    EXPECT_OK(device_copy_host_to_device(gpu, device_y, expected_y, count * sizeof(float)));
    device_causal_softmax_backward(cpu, groups, t, scale, expected_y, dy, expected_dx);
    device_causal_softmax_backward(gpu, groups, t, scale, device_y, device_dy, device_dx);
    EXPECT_GPU_CLOSE(label("causal_softmax_backward %s", shape), device_dx, expected_dx, count,
                     tolerance, NULL);
    first = gpu_snapshot(device_dx, count);
    device_causal_softmax_backward(gpu, groups, t, scale, device_y, device_dy, device_dx);
    EXPECT_GPU_IDENTICAL(label("causal_softmax_backward %s: repeat", shape), device_dx, first,
                         count * sizeof(float));
    free(first);
    gpu_release(device_dx);
    gpu_release(device_y);
    gpu_release(device_dy);
    gpu_release(device_x);
    free(expected_dx);
    free(expected_y);
    free(dy);
    free(x);
}

static void check_causal_softmax(void) {
    check_causal_softmax_case(6, 37, 0.25f);
    check_causal_softmax_case(8, 64, 0.17677669f); /* gpt-tiny: 4 heads of 32 */
    check_causal_softmax_case(2, 130, 0.125f);     /* rows longer than four warps' width */
}

static void check_layer_operations(void) {
    check_gemm_strided_batched();
    check_add();
    check_permute();
    check_im2col();
    check_pooling();
    check_batchnorm();
    check_layernorm();
    check_embedding();
    check_causal_softmax();
    EXPECT_OK(device_synchronize(gpu));
}

/* --- GPU: checks, uploads, memory -------------------------------------------------------- */

static void check_finite_flags(void) {
    const size_t count = 100003;
    float *x = fixture_random_floats(NULL, count, -1e30f, 1e30f);
    float *device_x = gpu_copy_of(x, count * sizeof(float));
    bool finite = false;
    EXPECT_OK(device_check_finite(gpu, count, device_x, &finite));
    EXPECT(finite);
    EXPECT_OK(device_check_finite(gpu, 0, device_x, &finite));
    EXPECT(finite);
    const float bad_values[] = {NAN, INFINITY, -INFINITY};
    const size_t positions[] = {77777, count - 1, 0};
    for (int i = 0; i < 3; i++) {
        EXPECT_OK(device_copy_host_to_device(gpu, device_x + positions[i], &bad_values[i],
                                                sizeof(float)));
        finite = true;
        EXPECT_OK(device_check_finite(gpu, count, device_x, &finite));
        EXPECT(!finite);
        bool cpu_finite = true;
        x[positions[i]] = bad_values[i];
        EXPECT_OK(device_check_finite(cpu, count, x, &cpu_finite));
        EXPECT(!cpu_finite);
        EXPECT_OK(device_copy_host_to_device(gpu, device_x + positions[i], &(float){1.0f},
                                                sizeof(float)));
        x[positions[i]] = 1.0f;
    }
    EXPECT_OK(device_check_finite(gpu, count, device_x, &finite));
    EXPECT(finite);
    gpu_release(device_x);
    free(x);
}

/* The gradient norm's sum of squares against the CPU backend's (both add in double; the GPU
 * in another order), on an empty buffer, and with a NaN. */
static void check_sum_of_squares(void) {
    const size_t count = 1000003;
    float *x = fixture_random_floats(NULL, count, -3.0f, 3.0f);
    float *device_x = gpu_copy_of(x, count * sizeof(float));
    double gpu_sum = -1, cpu_sum = -2;
    EXPECT_OK(device_sum_of_squares(gpu, count, device_x, &gpu_sum));
    EXPECT_OK(device_sum_of_squares(cpu, count, x, &cpu_sum));
    EXPECT(fabs(gpu_sum - cpu_sum) <= 1e-12 * cpu_sum);
    /* The same bits every time (--clip-grad-norm: every rank must compute the same factor). */
    for (int run = 0; run < 3; run++) {
        double again = -3;
        EXPECT_OK(device_sum_of_squares(gpu, count, device_x, &again));
        EXPECT(memcmp(&again, &gpu_sum, sizeof again) == 0);
    }
    EXPECT_OK(device_sum_of_squares(gpu, 0, device_x, &gpu_sum));
    EXPECT(gpu_sum == 0.0);
    EXPECT_OK(device_copy_host_to_device(gpu, device_x + 5, &(float){NAN}, sizeof(float)));
    EXPECT_OK(device_sum_of_squares(gpu, count, device_x, &gpu_sum));
    EXPECT(isnan(gpu_sum));
    gpu_release(device_x);
    free(x);
}

/* Two page-locked buffers travel on the copy stream while the compute stream scales what has
 * arrived; the third upload reuses buffer 0's memory once its computation was issued. */
static void check_uploads(void) {
    const size_t count = (size_t)1 << 20;
    const size_t bytes = count * sizeof(float);
    float *host[2] = {NULL, NULL};
    for (int b = 0; b < 2; b++) {
        EXPECT_OK(device_host_alloc(gpu, bytes, (void **)&host[b]));
        if (!host[b]) return;
    }
    bool zero = true;
    for (size_t i = 0; i < count; i++)
        zero = zero && host[0][i] == 0.0f && host[1][i] == 0.0f;
    EXPECT(zero);
    for (size_t i = 0; i < count; i++) {
        host[0][i] = (float)i;
        host[1][i] = (float)(count - i);
    }
    float *device_buffer[2] = {gpu_buffer(bytes), gpu_buffer(bytes)};
    EXPECT_OK(device_upload_async(gpu, device_buffer[0], host[0], bytes, 0));
    EXPECT_OK(device_upload_wait(gpu, 0));
    EXPECT_OK(device_upload_async(gpu, device_buffer[1], host[1], bytes, 1));
    device_scale(gpu, count, 2.0f, device_buffer[0]);
    EXPECT_OK(device_upload_wait(gpu, 1));
    device_scale(gpu, count, 3.0f, device_buffer[1]);
    EXPECT_OK(device_upload_host_done(gpu, 0));
    for (size_t i = 0; i < count; i++) /* buffer 0 again, with new data */
        host[0][i] = (float)(i % 1000);
    EXPECT_OK(device_upload_async(gpu, device_buffer[0], host[0], bytes, 0));
    EXPECT_OK(device_upload_wait(gpu, 0));
    device_scale(gpu, count, 5.0f, device_buffer[0]);
    EXPECT_OK(device_upload_host_done(gpu, 0));
    EXPECT_OK(device_upload_host_done(gpu, 1));
    EXPECT(device_upload_wait(gpu, 2) != DDT_OK);

    float *got = fixture_random_floats(NULL, count, 0, 0);
    host_copy_of(got, device_buffer[1], bytes);
    bool ok = true;
    for (size_t i = 0; i < count; i++)
        ok = ok && got[i] == 3.0f * (float)(count - i);
    EXPECT(ok);
    host_copy_of(got, device_buffer[0], bytes);
    ok = true;
    for (size_t i = 0; i < count; i++)
        ok = ok && got[i] == 5.0f * (float)(i % 1000);
    EXPECT(ok);
    EXPECT_OK(device_synchronize(gpu));
    free(got);
    gpu_release(device_buffer[1]);
    gpu_release(device_buffer[0]);
    device_host_free(gpu, host[1]);
    device_host_free(gpu, host[0]);
}

/* Timer marks on the GPU: CUDA events on the compute stream, so the time between two marks is
 * the work issued between them (here 20 large GEMMs), not the time it took to issue it. */
static void check_timers(void) {
    const int n = 2048;
    float *a = gpu_buffer((size_t)n * n * sizeof(float));
    float *c = gpu_buffer((size_t)n * n * sizeof(float));
    double issue_started = 0, gpu_seconds = -1;
    struct timespec t;
    EXPECT_OK(device_synchronize(gpu));
    EXPECT_OK(device_timer_mark(gpu, 3));
    clock_gettime(CLOCK_MONOTONIC, &t);
    issue_started = (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    for (int i = 0; i < 20; i++)
        device_gemm(gpu, false, false, n, n, n, 1.0f, a, n, a, n, 0.0f, c, n);
    EXPECT_OK(device_timer_mark(gpu, 4));
    clock_gettime(CLOCK_MONOTONIC, &t);
    double issue_seconds = (double)t.tv_sec + 1e-9 * (double)t.tv_nsec - issue_started;
    EXPECT_OK(device_timer_elapsed(gpu, 3, 4, &gpu_seconds));
    printf("measured: timer marks around 20 GEMMs of 2048^3: GPU %.3g s, issuing them %.3g s\n",
           gpu_seconds, issue_seconds);
    EXPECT(gpu_seconds > 0 && gpu_seconds < 10);
    EXPECT(device_timer_mark(gpu, DEVICE_TIMER_SLOTS) == DDT_ERR_INTERNAL);
    gpu_release(c);
    gpu_release(a);
}

static void check_preallocation(void) {
    size_t total = 0, available = 0;
    EXPECT_OK(device_memory_info(gpu, &total, &available));
    size_t limit = available / 4 < 2 * GIB ? available / 4 : 2 * GIB;
    limit -= limit % 256;
    allocator_params params = allocator_default_params();
    params.policy = MEMORY_POLICY_PREALLOCATE;
    params.limit_bytes = limit;
    params.rank = 0;
    params.limit_source = "test limit";
    allocator *alloc = NULL;
    EXPECT_OK(allocator_init_with_params(gpu, &params, &alloc));
    if (alloc) {
        allocator_stats stats = allocator_get_stats(alloc);
        EXPECT(stats.reserved_bytes == limit);
        EXPECT(stats.region_count == 1);
        float *half = NULL, *too_much = NULL;
        EXPECT_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, limit / 2, (void **)&half));
        EXPECT(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, limit / 2 + 256,
                               (void **)&too_much) == DDT_ERR_MEMORY);
        EXPECT(too_much == NULL);
        if (half) { /* zero-filled (fill_zero) at both ends */
            float *probe = calloc(MIB, 1);
            bool zero = true;
            EXPECT_OK(device_copy_device_to_host(gpu, probe, half, MIB));
            for (size_t i = 0; i < MIB / sizeof(float); i++)
                zero = zero && probe[i] == 0.0f;
            EXPECT_OK(
                device_copy_device_to_host(gpu, probe, (char *)half + (limit / 2 - MIB), MIB));
            for (size_t i = 0; i < MIB / sizeof(float); i++)
                zero = zero && probe[i] == 0.0f;
            EXPECT(zero);
            free(probe);
        }
        allocator_destroy(alloc);
    }
    /* More than the GPU has fails at once, with a message, not a crash. */
    params.limit_bytes = total + GIB;
    alloc = NULL;
    EXPECT(allocator_init_with_params(gpu, &params, &alloc) == DDT_ERR_MEMORY);
    EXPECT(alloc == NULL);
}

/* A GEMM too large for the bf16 cast buffers cannot return a status; its failure must come out
 * of the next synchronize. On a device of its own, since the failure stays recorded. */
static void check_deferred_failure(void) {
    device *other = NULL;
    allocator *alloc = NULL;
    EXPECT_OK(device_open(DEVICE_KIND_CUDA, gpu->ordinal, &other));
    if (!other) return;
    EXPECT_OK(allocator_init(other, &alloc));
    if (alloc) {
        EXPECT_OK(device_set_precision(other, PRECISION_BF16, alloc, 64));
        float *buffer = NULL;
        EXPECT_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 3 * 256 * sizeof(float),
                                  (void **)&buffer));
        if (buffer) {
            device_gemm(other, false, false, 16, 16, 16, 1.0f, buffer, 16, buffer + 256, 16,
                             0.0f, buffer + 512, 16);
            /* Caught at the next micro-batch's upload_wait, without a synchronisation. */
            EXPECT(device_upload_wait(other, 0) == DDT_ERR_INTERNAL);
            EXPECT(message_has("max_operand_floats"));
            EXPECT(device_synchronize(other) == DDT_ERR_INTERNAL);
            EXPECT(message_has("max_operand_floats"));
        }
        allocator_destroy(alloc);
    }
    device_close(other);
}

/* The operations that add partial sums need the kernels' scratch, which set_precision() takes:
 * before it they fail with a message saying so (on a device of its own: the failure stays). */
static void check_scratch_needed(void) {
    device *other = NULL;
    allocator *alloc = NULL;
    EXPECT_OK(device_open(DEVICE_KIND_CUDA, gpu->ordinal, &other));
    if (!other) return;
    EXPECT_OK(allocator_init(other, &alloc));
    float *buffer = NULL;
    if (alloc)
        EXPECT_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 256 * sizeof(float),
                                  (void **)&buffer));
    if (buffer) {
        double sum = 0;
        EXPECT(device_sum_of_squares(other, 16, buffer, &sum) == DDT_ERR_INTERNAL);
        EXPECT(message_has("device_set_precision"));
        device_bias_gradient_accumulate(other, 4, 4, buffer, buffer + 64);
        EXPECT(device_synchronize(other) == DDT_ERR_INTERNAL);
        EXPECT(message_has("bias_gradient_accumulate") && message_has("device_set_precision"));
    }
    allocator_destroy(alloc);
    device_close(other);
}

/* Convolution's bias as a rank-one product with a row of ones stays fp32 in bf16 mode
 * (device_gemm_fp32, device.h): forward C += bias 1^T gives the CPU's bits exactly (each
 * element is one rounded add of bias + C), where a bf16 GEMM rounds the bias to 8 bits and
 * differs, so the check can tell the two apart; backward d bias += dY 1 is within fp32's
 * summation bound of the CPU. */
static void check_gemm_fp32(void) {
    const int outputs = 37, columns = 1000;
    size_t wide = (size_t)outputs * columns;
    EXPECT_OK(device_set_precision(gpu, PRECISION_BF16, gpu_alloc, wide));
    float *bias = fixture_random_floats(NULL, (size_t)outputs, -1.0f, 1.0f);
    float *c = fixture_random_floats(NULL, wide, -1.0f, 1.0f);
    float *ones = malloc((size_t)columns * sizeof *ones);
    for (int j = 0; j < columns; j++)
        ones[j] = 1.0f;
    float *expected = fixture_copy_floats(NULL, c, wide), *got = fixture_copy_floats(NULL, c, wide);
    device_gemm(cpu, false, false, outputs, columns, 1, 1.0f, bias, 1, ones, columns, 1.0f,
                expected, columns);
    float *device_bias = gpu_copy_of(bias, (size_t)outputs * sizeof(float));
    float *device_ones = gpu_copy_of(ones, (size_t)columns * sizeof(float));
    float *device_c = gpu_copy_of(c, wide * sizeof(float));
    device_gemm_fp32(gpu, false, false, outputs, columns, 1, 1.0f, device_bias, 1, device_ones,
                     columns, 1.0f, device_c, columns);
    host_copy_of(got, device_c, wide * sizeof(float));
    CHECK_IDENTICAL("gemm_fp32 in bf16 mode: C += bias 1^T", got, expected, wide * sizeof(float));
    EXPECT_OK(device_copy_host_to_device(gpu, device_c, c, wide * sizeof(float)));
    device_gemm(gpu, false, false, outputs, columns, 1, 1.0f, device_bias, 1, device_ones, columns,
                1.0f, device_c, columns);
    host_copy_of(got, device_c, wide * sizeof(float));
    EXPECT(memcmp(got, expected, wide * sizeof(float)) != 0); /* bf16 did round the bias */

    float *gradient = fixture_random_floats(NULL, (size_t)outputs, -1.0f, 1.0f);
    float *expected_gradient = fixture_copy_floats(NULL, gradient, (size_t)outputs);
    float *got_gradient = fixture_copy_floats(NULL, gradient, (size_t)outputs);
    double *scales = malloc((size_t)outputs * sizeof *scales);
    for (int i = 0; i < outputs; i++) {
        scales[i] = fabs(gradient[i]) + 1e-30;
        for (int j = 0; j < columns; j++)
            scales[i] += fabs(c[(size_t)i * columns + j]);
    }
    float *device_gradient = gpu_copy_of(gradient, (size_t)outputs * sizeof(float));
    EXPECT_OK(device_copy_host_to_device(gpu, device_c, c, wide * sizeof(float)));
    device_gemm(cpu, false, false, outputs, 1, columns, 1.0f, c, columns, ones, 1, 1.0f,
                expected_gradient, 1);
    device_gemm_fp32(gpu, false, false, outputs, 1, columns, 1.0f, device_c, columns, device_ones,
                     1, 1.0f, device_gradient, 1);
    host_copy_of(got_gradient, device_gradient, (size_t)outputs * sizeof(float));
    CHECK_CLOSE("gemm_fp32 in bf16 mode: d bias += dY 1", got_gradient, expected_gradient,
                (size_t)outputs, gemm_tolerance(columns, GEMM_FP32), scales);
    EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, 256 * 96));

    gpu_release(device_gradient);
    gpu_release(device_c);
    gpu_release(device_ones);
    gpu_release(device_bias);
    free(scales);
    free(got_gradient);
    free(expected_gradient);
    free(gradient);
    free(got);
    free(expected);
    free(ones);
    free(c);
    free(bias);
}

/* --- GPU: reduced precisions take effect ------------------------------------------------- */

/* The tests above bound a TF32, bf16 or fp16 GEMM's error from above only, so one that
 * silently ran in fp32 (a math mode never set, operands never cast) would pass them. Here
 * the error is bounded from below too. Inputs are uniform in [-1, 1] with (nearly) full
 * 24-bit significands, which TF32 and fp16 (11 significant bits) and bf16 (8) cannot hold.
 * Relative to s_ij = sum_p |a_ip b_pj| (about k/4 here):
 *   - fp32: |C - exact| <= gamma(k) s_ij, gamma(k) ~ k 2^-24 (Higham), whatever order and
 *     fused or not: 7.8e-6 at k = 128, and in practice far less (it is measured, below);
 *   - rounding the operands to unit roundoff u moves each product a_ip b_pj by up to
 *     2u |a_ip b_pj|, with signs independent over p: the k errors add as a random walk, not
 *     to zero, to a relative error whose standard deviation is near 0.06 u at k = 128; over
 *     196,608 elements the worst is near 0.3 u.
 * The bar, the largest of u/16, twice gamma(k + 3) and 8 times the fp32 GEMM's error measured
 * on the same inputs in this run, lies two deviations or less above zero for every format
 * (u/16 = 2^-14 for TF32 at its truncating 2^-10, 2^-12 for bf16, 2^-15 for fp16): rounding
 * these very inputs on the host (to nearest, the least error a format can give) puts 9,000 of
 * the 196,608 elements above it for TF32 and 63,000 for bf16 and fp16, where one suffices, so
 * a precision that took effect clears it on any GPU, whatever its accumulation order; and it
 * lies above anything fp32 arithmetic can produce (gamma(k) at most; about 3e-7 measured), so
 * a GEMM that ran in fp32 cannot. From above, gemm_tolerance() still applies (a GEMM that did
 * not run at all must not pass as "imprecise"). Then set_precision(FP32) must bring the error
 * back to fp32's level. Plain and strided-batched GEMMs each; the reference is float64. */
typedef struct precision_probe {
    bool batched;
    int m, n, k, batch;
    size_t a_count, b_count, c_count;
    float *a, *b, *got;
    double *reference, *scales;
    float *device_a, *device_b, *device_c;
} precision_probe;

static void precision_probe_init(precision_probe *probe, bool batched, int m, int n, int k,
                                 int batch) {
    *probe = (precision_probe){.batched = batched, .m = m, .n = n, .k = k, .batch = batch};
    probe->a_count = (size_t)batch * m * k;
    probe->b_count = (size_t)batch * k * n;
    probe->c_count = (size_t)batch * m * n;
    probe->a = fixture_random_floats(NULL, probe->a_count, -1.0f, 1.0f);
    probe->b = fixture_random_floats(NULL, probe->b_count, -1.0f, 1.0f);
    probe->got = fixture_random_floats(NULL, probe->c_count, 0, 0);
    probe->reference = malloc(probe->c_count * sizeof *probe->reference);
    probe->scales = malloc(probe->c_count * sizeof *probe->scales);
    if (!probe->reference || !probe->scales) {
        fprintf(stderr, "out of host memory\n");
        exit(1);
    }
    for (int entry = 0; entry < batch; entry++) {
        const float *a = probe->a + (size_t)entry * m * k, *b = probe->b + (size_t)entry * k * n;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double sum = 0.0, magnitude = 0.0;
                for (int p = 0; p < k; p++) {
                    double product = (double)a[(size_t)i * k + p] * b[(size_t)p * n + j];
                    sum += product;
                    magnitude += fabs(product);
                }
                size_t at = ((size_t)entry * m + i) * n + j;
                probe->reference[at] = sum;
                probe->scales[at] = magnitude + 1e-30;
            }
    }
    probe->device_a = gpu_copy_of(probe->a, probe->a_count * sizeof(float));
    probe->device_b = gpu_copy_of(probe->b, probe->b_count * sizeof(float));
    probe->device_c = gpu_buffer(probe->c_count * sizeof(float));
}

static void precision_probe_free(precision_probe *probe) {
    gpu_release(probe->device_c);
    gpu_release(probe->device_b);
    gpu_release(probe->device_a);
    free(probe->scales);
    free(probe->reference);
    free(probe->got);
    free(probe->b);
    free(probe->a);
}

/* C = A B on the GPU in the precision now set: the worst of |C - reference| / s_ij
 * (infinity where C is not finite). */
static double precision_probe_error(precision_probe *probe) {
    int m = probe->m, n = probe->n, k = probe->k;
    device_fill_zero(gpu, probe->device_c, probe->c_count * sizeof(float));
    if (probe->batched)
        device_gemm_strided_batched(gpu, false, false, m, n, k, 1.0f, probe->device_a, k,
                                    (int64_t)m * k, probe->device_b, n, (int64_t)k * n, 0.0f,
                                    probe->device_c, n, (int64_t)m * n, probe->batch);
    else
        device_gemm(gpu, false, false, m, n, k, 1.0f, probe->device_a, k, probe->device_b, n, 0.0f,
                    probe->device_c, n);
    host_copy_of(probe->got, probe->device_c, probe->c_count * sizeof(float));
    double worst = 0.0;
    for (size_t e = 0; e < probe->c_count; e++) {
        double error = fabs((double)probe->got[e] - probe->reference[e]) / probe->scales[e];
        if (!(error <= worst)) worst = isnan(error) ? INFINITY : error;
    }
    return worst;
}

static void check_precision_takes_effect(void) {
    const int k = 128;
    precision_probe probes[2];
    precision_probe_init(&probes[0], false, 512, 384, k, 1);
    precision_probe_init(&probes[1], true, 256, 192, k, 4);
    /* Both operands of every batch entry at once: 4 x 256 x 128 floats, the largest. */
    const size_t max_operand_floats = 4 * 256 * 128;
    const double fp32_bound = float_sum_gamma(k + 3, 0x1p-24);
    const precision_kind kinds[3] = {PRECISION_TF32, PRECISION_BF16, PRECISION_FP16};
    const gemm_precision formats[3] = {GEMM_TF32, GEMM_BF16, GEMM_FP16};
    for (int which = 0; which < 2; which++) {
        precision_probe *probe = &probes[which];
        char shape[64];
        if (probe->batched)
            snprintf(shape, sizeof shape, "gemm_strided_batched %dx%dx%d batch=%d", probe->m,
                     probe->n, probe->k, probe->batch);
        else
            snprintf(shape, sizeof shape, "gemm %dx%dx%d", probe->m, probe->n, probe->k);

        EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, max_operand_floats));
        double fp32_error = precision_probe_error(probe);
        bool ok = fp32_error <= fp32_bound;
        printf("measured: fp32 %s against float64  worst %.3g tolerance %.3g %s\n", shape,
               fp32_error, fp32_bound, ok ? "ok" : "FAIL");
        EXPECT(fp32_error <= fp32_bound);

        for (int i = 0; i < 3; i++) {
            const char *name = precision_kind_name(kinds[i]);
            EXPECT_OK(device_set_precision(gpu, kinds[i], gpu_alloc, max_operand_floats));
            double error = precision_probe_error(probe);
            double least = fmax(fmax(formats[i].unit / 16.0, 2.0 * fp32_bound), 8.0 * fp32_error);
            double ceiling = gemm_tolerance(k, formats[i]);
            ok = error >= least && error <= ceiling;
            printf("measured: %s %s error, above fp32's  worst %.3g tolerance >=%.3g %s\n", name,
                   shape, error, least, ok ? "ok" : "FAIL");
            if (!ok)
                fprintf(stderr,
                        "  %s %s: worst error %.3g against float64, outside [%.3g, %.3g]: %s\n",
                        name, shape, error, least, ceiling,
                        error < least ? "the precision did not take effect" : "too imprecise");
            EXPECT(error >= least);
            EXPECT(error <= ceiling);

            /* And back: fp32's error again, far below what the reduced precision gave. */
            EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, max_operand_floats));
            double back = precision_probe_error(probe);
            double bar = fmin(fp32_bound, error / 8.0);
            ok = back <= bar;
            printf("measured: fp32 after %s, %s  worst %.3g tolerance %.3g %s\n", name, shape, back,
                   bar, ok ? "ok" : "FAIL");
            if (!ok)
                fprintf(stderr, "  fp32 after %s %s: worst error %.3g (fp32 before: %.3g)\n", name,
                        shape, back, fp32_error);
            EXPECT(back <= bar);
        }
    }
    precision_probe_free(&probes[1]);
    precision_probe_free(&probes[0]);
    EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, 256 * 96));
    EXPECT_OK(device_synchronize(gpu));
}

/* --- GPU: index paths at GPT sizes ---------------------------------------------------------- */

/* kernels.cu launches at most 65536 blocks of 256 threads and covers the rest with grid-stride
 * loops: past GRID_THREADS elements (or GRID_WARPS rows, for the kernels that give a row a
 * warp, 8 warps to a block) every thread or warp takes a second turn, and the rows and
 * elements of that turn are checked on their own below as well. Each case runs on an
 * allocator of its own, destroyed at its end, so its gigabytes go back to the GPU; a case the
 * GPU has no room for prints "not run: ..." with the reason, and is not counted as a pass. */
#define GRID_THREADS ((size_t)65536 * 256) /* 16,777,216 */
#define GRID_WARPS ((size_t)65536 * 8)     /* 524,288 */

/* Whether the GPU has `bytes` free now, with 1 GiB to spare for cuBLAS and the runtime. */
static bool gpu_has_room(const char *what, size_t bytes) {
    size_t total = 0, available = 0;
    if (device_memory_info(gpu, &total, &available) != DDT_OK) {
        printf("not run: %s: device_memory_info failed: %s\n", what, ddt_error_message());
        return false;
    }
    if (bytes > available || available - bytes < GIB) {
        printf("not run: %s: needs %.2f GiB of GPU memory and 1 GiB to spare; %.2f GiB of %.2f "
               "GiB free\n",
               what, (double)bytes / (double)GIB, (double)available / (double)GIB,
               (double)total / (double)GIB);
        return false;
    }
    return true;
}

/* A case's own allocator, and buffers from it; NULL (with a "not run" line) on failure. */
static allocator *case_allocator(const char *what) {
    allocator *alloc = NULL;
    if (allocator_init(gpu, &alloc) != DDT_OK) {
        printf("not run: %s: %s\n", what, ddt_error_message());
        return NULL;
    }
    return alloc;
}

static void *case_buffer(allocator *alloc, const char *what, size_t bytes) {
    void *pointer = NULL;
    if (allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, bytes, &pointer) != DDT_OK)
        printf("not run: %s: %s\n", what, ddt_error_message());
    return pointer;
}

static void *case_upload(allocator *alloc, const char *what, const void *host, size_t bytes) {
    void *pointer = case_buffer(alloc, what, bytes);
    if (pointer) EXPECT_OK(device_copy_host_to_device(gpu, pointer, host, bytes));
    return pointer;
}

static void *host_buffer(const char *what, size_t bytes) {
    void *pointer = malloc(bytes ? bytes : 1);
    if (!pointer)
        printf("not run: %s: cannot allocate %.2f GiB of host memory\n", what,
               (double)bytes / (double)GIB);
    return pointer;
}

/* Cheap hashed values for arrays of tens of millions of elements: element i of `stream`. */
static float hashed_uniform(uint64_t stream, size_t i, float low, float high) {
    return low + (high - low) * rng_uniform(rng_splitmix64((stream << 48) ^ (uint64_t)i));
}

/* Small nonzero integers: exact in bf16 and fp16, and every partial sum of up to 2^20 products
 * of two of them is an integer of at most 2^24, exact in float32 whatever the order of the
 * additions: GEMMs of such operands give the exact product on the CPU and the GPU in any
 * precision, so the cast kernels are checked exactly, element by element of C. */
static const float SMALL_INTEGERS[8] = {-4.0f, -3.0f, -2.0f, -1.0f, 1.0f, 2.0f, 3.0f, 4.0f};

static float *small_integer_array(const char *what, size_t count, uint64_t stream) {
    float *x = host_buffer(what, count * sizeof(float));
    for (size_t i = 0; x && i < count; i++)
        x[i] = SMALL_INTEGERS[rng_splitmix64((stream << 48) ^ (uint64_t)i) >> 61];
    return x;
}

/* device_scale (and device_add) over `count` elements, against the CPU bit for bit: every
 * element, and on their own the elements past GRID_THREADS, which the threads reach on their
 * second turn of the grid-stride loop (or third, ...). x is a nonzero float with a random
 * significand, so a skipped element (x), one scaled twice (4x) or a neighbour's value fails. */
static void check_grid_stride_case(size_t count) {
    char what[96];
    snprintf(what, sizeof what, "scale and add over %zu elements", count);
    size_t bytes = count * sizeof(float);
    if (!gpu_has_room(what, 3 * bytes)) return;
    allocator *alloc = case_allocator(what);
    if (!alloc) return;
    float *x = host_buffer(what, bytes), *expected = host_buffer(what, bytes);
    float *got = host_buffer(what, bytes);
    float *device_x = NULL, *device_original = NULL, *device_sum = NULL;
    if (!x || !expected || !got) goto done;
    for (size_t i = 0; i < count; i++) {
        float magnitude = 1.0f + hashed_uniform(11, i, 0.0f, 1.0f);
        x[i] = i % 3 == 1 ? -magnitude : magnitude;
    }
    device_x = case_upload(alloc, what, x, bytes);
    device_original = case_upload(alloc, what, x, bytes);
    device_sum = case_buffer(alloc, what, bytes);
    if (!device_x || !device_original || !device_sum) goto done;

    double started = fixture_seconds();
    device_scale(gpu, count, -2.0f, device_x);
    EXPECT_OK(device_synchronize(gpu));
    double gpu_seconds = fixture_seconds() - started;
    memcpy(expected, x, bytes);
    device_scale(cpu, count, -2.0f, expected);
    host_copy_of(got, device_x, bytes);
    CHECK_IDENTICAL(label("scale %zu elements, bit for bit", count), got, expected, bytes);
    if (count > GRID_THREADS)
        CHECK_IDENTICAL(label("scale %zu elements: the %zu past 2^24", count, count - GRID_THREADS),
                        got + GRID_THREADS, expected + GRID_THREADS,
                        (count - GRID_THREADS) * sizeof(float));

    /* -2x + x = -x, exactly. */
    device_add(gpu, count, device_x, device_original, device_sum);
    device_add(cpu, count, expected, x, expected);
    host_copy_of(got, device_sum, bytes);
    CHECK_IDENTICAL(label("add %zu elements, bit for bit", count), got, expected, bytes);
    if (count > GRID_THREADS)
        CHECK_IDENTICAL(label("add %zu elements: the %zu past 2^24", count, count - GRID_THREADS),
                        got + GRID_THREADS, expected + GRID_THREADS,
                        (count - GRID_THREADS) * sizeof(float));
    printf("timing: scale of %zu elements on the GPU: %.4f s\n", count, gpu_seconds);
done:
    EXPECT_OK(device_synchronize(gpu));
    allocator_destroy(alloc);
    free(got);
    free(expected);
    free(x);
}

/* Causal softmax over more rows than GRID_WARPS (9600 groups of 64 x 64: 614,400 rows), forward
 * and backward, against the CPU within check_causal_softmax_case's tolerance: every row, and
 * on their own the rows from 524,288 on, which the warps compute on their second turn. The
 * GPU's outputs start as garbage (x), so a row no warp reached cannot pass. */
static void check_causal_softmax_wrap(void) {
    const int groups = 9600, t = 64;
    const float scale = 0.125f;
    const size_t rows = (size_t)groups * t, count = rows * (size_t)t;
    const size_t bytes = count * sizeof(float), tail = GRID_WARPS * (size_t)t;
    const double tolerance = fmax(1e-5, 2.0 * float_sum_gamma(t + 8, 0x1p-24));
    char what[96];
    snprintf(what, sizeof what, "causal_softmax %d groups of %dx%d (%zu rows)", groups, t, t, rows);
    if (!gpu_has_room(what, 4 * bytes)) return;
    allocator *alloc = case_allocator(what);
    if (!alloc) return;
    float *x = host_buffer(what, bytes), *dy = host_buffer(what, bytes);
    float *expected_y = host_buffer(what, bytes), *expected_dx = host_buffer(what, bytes);
    float *got = host_buffer(what, bytes);
    float *device_x = NULL, *device_dy = NULL, *device_y = NULL, *device_dx = NULL;
    if (!x || !dy || !expected_y || !expected_dx || !got) goto done;
    for (size_t i = 0; i < count; i++) {
        x[i] = i % 97 == 0 ? 300.0f : hashed_uniform(12, i, -8.0f, 8.0f);
        dy[i] = hashed_uniform(13, i, -1.0f, 1.0f);
    }
    device_x = case_upload(alloc, what, x, bytes);
    device_dy = case_upload(alloc, what, dy, bytes);
    device_y = case_upload(alloc, what, x, bytes); /* garbage to overwrite */
    device_dx = case_upload(alloc, what, x, bytes);
    if (!device_x || !device_dy || !device_y || !device_dx) goto done;

    double started = fixture_seconds();
    device_causal_softmax_forward(gpu, groups, t, scale, device_x, device_y);
    EXPECT_OK(device_synchronize(gpu));
    double forward_seconds = fixture_seconds() - started;
    device_causal_softmax_forward(cpu, groups, t, scale, x, expected_y);
    host_copy_of(got, device_y, bytes);
    CHECK_CLOSE(label("causal_softmax_forward %zu rows: every row", rows), got, expected_y, count,
                tolerance, NULL);
    CHECK_CLOSE(label("causal_softmax_forward %zu rows: rows from %zu on", rows, GRID_WARPS),
                got + tail, expected_y + tail, count - tail, tolerance, NULL);

    EXPECT_OK(device_copy_host_to_device(gpu, device_y, expected_y, bytes));
    started = fixture_seconds();
    device_causal_softmax_backward(gpu, groups, t, scale, device_y, device_dy, device_dx);
    EXPECT_OK(device_synchronize(gpu));
    double backward_seconds = fixture_seconds() - started;
    device_causal_softmax_backward(cpu, groups, t, scale, expected_y, dy, expected_dx);
    host_copy_of(got, device_dx, bytes);
    CHECK_CLOSE(label("causal_softmax_backward %zu rows: every row", rows), got, expected_dx, count,
                tolerance, NULL);
    CHECK_CLOSE(label("causal_softmax_backward %zu rows: rows from %zu on", rows, GRID_WARPS),
                got + tail, expected_dx + tail, count - tail, tolerance, NULL);
    printf("timing: causal_softmax of %zu rows on the GPU: forward %.4f s, backward %.4f s\n", rows,
           forward_seconds, backward_seconds);
done:
    EXPECT_OK(device_synchronize(gpu));
    allocator_destroy(alloc);
    free(got);
    free(expected_dx);
    free(expected_y);
    free(dy);
    free(x);
}

/* A bf16 or fp16 GEMM (plain, or strided-batched with gaps between the entries) whose A operand
 * has more than 20M elements, so the cast kernel's grid-stride loop wraps; exact inputs
 * (SMALL_INTEGERS), so C must equal the CPU's fp32 result exactly, every element (the gaps
 * between C's entries must stay as they were). */
static void check_large_cast_case(precision_kind precision, bool transpose_a, int batch, int m) {
    const int n = 8, k = 64;
    const char *name = precision_kind_name(precision);
    int a_cols = transpose_a ? m : k;
    int64_t a_entry = (int64_t)m * k, b_entry = (int64_t)k * n, c_entry = (int64_t)m * n;
    /* Strides with gaps, for the batched call; one entry is the plain GEMM. */
    int64_t stride_a = a_entry + 3, stride_b = b_entry + 1, stride_c = c_entry + 2;
    size_t a_count = (size_t)(stride_a * (batch - 1) + a_entry);
    size_t b_count = (size_t)(stride_b * (batch - 1) + b_entry);
    size_t c_count = (size_t)(stride_c * (batch - 1) + c_entry);
    size_t cast_floats = (size_t)batch * (size_t)a_entry; /* one chunk: the whole batch */
    char what[128];
    snprintf(what, sizeof what, "%s %s%c%c m=%d n=%d k=%d batch=%d (A: %zu elements)", name,
             batch > 1 ? "gemm_strided_batched " : "gemm ", transpose_a ? 'T' : 'N', 'N', m, n, k,
             batch, cast_floats);
    size_t need = (a_count + b_count + c_count) * sizeof(float) +
                  device_precision_workspace_bytes(gpu, precision, cast_floats);
    if (!gpu_has_room(what, need)) return;
    allocator *alloc = case_allocator(what);
    if (!alloc) return;
    float *a = small_integer_array(what, a_count, 21), *b = small_integer_array(what, b_count, 22);
    float *c = small_integer_array(what, c_count, 23);
    float *expected = host_buffer(what, c_count * sizeof(float));
    float *got = host_buffer(what, c_count * sizeof(float));
    float *device_a = NULL, *device_b = NULL, *device_c = NULL;
    bool precision_set = false;
    if (!a || !b || !c || !expected || !got) goto done;
    device_a = case_upload(alloc, what, a, a_count * sizeof(float));
    device_b = case_upload(alloc, what, b, b_count * sizeof(float));
    device_c = case_upload(alloc, what, c, c_count * sizeof(float));
    if (!device_a || !device_b || !device_c) goto done;
    if (device_set_precision(gpu, precision, alloc, cast_floats) != DDT_OK) {
        printf("not run: %s: %s\n", what, ddt_error_message());
        goto done;
    }
    precision_set = true;

    memcpy(expected, c, c_count * sizeof(float));
    double started = fixture_seconds();
    if (batch > 1)
        device_gemm_strided_batched(gpu, transpose_a, false, m, n, k, 1.0f, device_a, a_cols,
                                    stride_a, device_b, n, stride_b, 0.0f, device_c, n, stride_c,
                                    batch);
    else
        device_gemm(gpu, transpose_a, false, m, n, k, 1.0f, device_a, a_cols, device_b, n, 0.0f,
                    device_c, n);
    EXPECT_OK(device_synchronize(gpu));
    double gpu_seconds = fixture_seconds() - started;
    if (batch > 1)
        device_gemm_strided_batched(cpu, transpose_a, false, m, n, k, 1.0f, a, a_cols, stride_a, b,
                                    n, stride_b, 0.0f, expected, n, stride_c, batch);
    else
        device_gemm(cpu, transpose_a, false, m, n, k, 1.0f, a, a_cols, b, n, 0.0f, expected, n);
    host_copy_of(got, device_c, c_count * sizeof(float));
    CHECK_CLOSE(label("%s: exactly", what), got, expected, c_count, 0.0, NULL);
    printf("timing: %s: casts and GEMM on the GPU %.4f s\n", what, gpu_seconds);
done:
    if (precision_set) EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, 256 * 96));
    EXPECT_OK(device_synchronize(gpu));
    allocator_destroy(alloc);
    free(got);
    free(expected);
    free(c);
    free(b);
    free(a);
}

/* The cast of more than 2^31 elements: a bf16 GEMM C (m x 4) = A (m x 64) B with m =
 * 33,570,816, so A holds 2^31 + 2^20 elements and every signed 32-bit index into it or into
 * its cast would overflow for the last 16,384 rows. A (8.6 GB) is built and uploaded in chunks
 * of rows, each row from hashes of its own index (no pattern repeats down A), and C's
 * exact value is computed on the way; C is checked exactly, every element, and on their own
 * the rows whose elements of A lie at 2^31 and beyond. It needs about 19 GB of GPU memory
 * (A, the two cast buffers of 4.3 GB each, C) and 1.1 GB of host memory. Last of the GPU
 * checks: a failure (cuBLAS refusing the operand, an illegal address) stays recorded in the
 * backend and fails every later status. */
#define HUGE_K 64
#define HUGE_N 4
#define HUGE_CHUNK_ROWS ((size_t)1 << 18) /* 64 MiB of A at a time */

static void huge_operand_row(size_t row, float *out) {
    for (int part = 0; part < HUGE_K / 16; part++) { /* 16 values of 3 bits from each hash */
        uint64_t bits = rng_splitmix64((uint64_t)row * (HUGE_K / 16) + (uint64_t)part);
        for (int p = 0; p < 16; p++)
            out[part * 16 + p] = SMALL_INTEGERS[(bits >> (3 * p)) & 7];
    }
}

static void check_cast_past_2_31(void) {
    const size_t elements = ((size_t)1 << 31) + ((size_t)1 << 20);
    const size_t m = elements / HUGE_K, c_count = m * HUGE_N;
    const size_t first_high_row = ((size_t)1 << 31) / HUGE_K; /* its elements start at 2^31 */
    const size_t a_bytes = elements * sizeof(float), c_bytes = c_count * sizeof(float);
    char what[128];
    snprintf(what, sizeof what, "bf16 gemm m=%zu n=%d k=%d (A: %zu elements, past 2^31)", m, HUGE_N,
             HUGE_K, elements);
    size_t need = a_bytes + c_bytes + HUGE_K * HUGE_N * sizeof(float) +
                  device_precision_workspace_bytes(gpu, PRECISION_BF16, elements);
    if (!gpu_has_room(what, need)) return;
    allocator *alloc = case_allocator(what);
    if (!alloc) return;
    float *b = small_integer_array(what, HUGE_K * HUGE_N, 31);
    float *expected = host_buffer(what, c_bytes), *got = host_buffer(what, c_bytes);
    float *chunk = host_buffer(what, HUGE_CHUNK_ROWS * HUGE_K * sizeof(float));
    float *device_a = NULL, *device_b = NULL, *device_c = NULL;
    bool precision_set = false;
    if (!b || !expected || !got || !chunk) goto done;
    device_a = case_buffer(alloc, what, a_bytes);
    device_b = case_upload(alloc, what, b, HUGE_K * HUGE_N * sizeof(float));
    device_c = case_buffer(alloc, what, c_bytes);
    if (!device_a || !device_b || !device_c) goto done;
    if (device_set_precision(gpu, PRECISION_BF16, alloc, elements) != DDT_OK) {
        printf("not run: %s: %s\n", what, ddt_error_message());
        goto done;
    }
    precision_set = true;

    double started = fixture_seconds();
    for (size_t first = 0; first < m; first += HUGE_CHUNK_ROWS) {
        size_t rows = m - first < HUGE_CHUNK_ROWS ? m - first : HUGE_CHUNK_ROWS;
        for (size_t r = 0; r < rows; r++) {
            float *row = chunk + r * HUGE_K;
            huge_operand_row(first + r, row);
            for (int j = 0; j < HUGE_N; j++) {
                int sum = 0; /* at most 64 x 16: exact */
                for (int p = 0; p < HUGE_K; p++)
                    sum += (int)row[p] * (int)b[p * HUGE_N + j];
                expected[(first + r) * HUGE_N + j] = (float)sum;
            }
        }
        /* Pageable memory: the copy has taken the bytes when it returns, so chunk is free. */
        EXPECT_OK(device_copy_host_to_device(gpu, device_a + first * HUGE_K, chunk,
                                             rows * HUGE_K * sizeof(float)));
    }
    double build_seconds = fixture_seconds() - started;
    started = fixture_seconds();
    device_gemm(gpu, false, false, (int)m, HUGE_N, HUGE_K, 1.0f, device_a, HUGE_K, device_b, HUGE_N,
                0.0f, device_c, HUGE_N);
    EXPECT_OK(device_synchronize(gpu));
    double gpu_seconds = fixture_seconds() - started;
    host_copy_of(got, device_c, c_bytes);
    CHECK_CLOSE(label("bf16 gemm, A of %zu elements: exactly, every row", elements), got, expected,
                c_count, 0.0, NULL);
    CHECK_CLOSE(label("bf16 gemm, A of %zu elements: rows from %zu on (past 2^31)", elements,
                      first_high_row),
                got + first_high_row * HUGE_N, expected + first_high_row * HUGE_N,
                (m - first_high_row) * HUGE_N, 0.0, NULL);
    printf("timing: %s: building and uploading A %.2f s, cast and GEMM on the GPU %.4f s\n", what,
           build_seconds, gpu_seconds);
done:
    if (precision_set) EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, 256 * 96));
    EXPECT_OK(device_synchronize(gpu));
    allocator_destroy(alloc);
    free(chunk);
    free(got);
    free(expected);
    free(b);
}

static void check_big_index_paths(void) {
    double started = fixture_seconds();
    check_grid_stride_case(GRID_THREADS + 257);   /* the threads' second turn: 257 elements */
    check_grid_stride_case(3 * GRID_THREADS + 5); /* above 20M elements: three turns and more */
    check_causal_softmax_wrap();
    /* Casts of more than 20M elements: both kernels, both layouts of A, plain and batched. */
    check_large_cast_case(PRECISION_BF16, false, 1, 312501);
    check_large_cast_case(PRECISION_FP16, true, 1, 312501);
    check_large_cast_case(PRECISION_BF16, false, 5, 62501);
    check_large_cast_case(PRECISION_FP16, true, 5, 62501);
    check_cast_past_2_31();
    printf("timing: index paths at GPT sizes: %.1f s in all\n", fixture_seconds() - started);
}

int main(void) {
    if (device_open(DEVICE_KIND_CPU, 0, &cpu) != DDT_OK) {
        fprintf(stderr, "cannot open the CPU device: %s\n", ddt_error_message());
        return 1;
    }
    check_cpu_backend_and_registry();
    if (device_count(DEVICE_KIND_CUDA) == 0) {
        device_close(cpu);
        if (failures) return check_finish();
        printf("skipped: no GPU (CUDA backend %s)\n",
               device_kind_available(DEVICE_KIND_CUDA)
                   ? "built, but no CUDA device or driver is visible"
                   : "not built into this binary");
        return SKIP_EXIT_CODE;
    }
    if (device_open(DEVICE_KIND_CUDA, 0, &gpu) != DDT_OK) {
        fprintf(stderr, "cannot open the GPU: %s\n", ddt_error_message());
        return 1;
    }
    printf("%s\n", gpu->description);
    if (allocator_init(gpu, &gpu_alloc) != DDT_OK) {
        fprintf(stderr, "cannot create the GPU allocator: %s\n", ddt_error_message());
        return 1;
    }
    check_description_and_memory();
    check_gemm();
    check_bias_case(70, 45);
    check_bias_case(3000, 7);
    check_bias_case(64 * 1024, 768); /* gpt2-124m's width, 64 x 1024 tokens: 42 row chunks */
    check_bias_case(100, 40000);     /* wider than the column blocks' target: one chunk */
    check_scratch_needed();
    check_gemm_fp32();
    check_activations();
    check_dropout();
    check_losses();
    check_optimizers();
    check_layer_operations();
    check_finite_flags();
    check_sum_of_squares();
    check_uploads();
    check_timers();
    check_preallocation();
    check_deferred_failure();
    check_precision_takes_effect();
    check_big_index_paths(); /* last: see check_cast_past_2_31 */
    EXPECT_OK(device_synchronize(gpu));
    allocator_destroy(gpu_alloc);
    device_close(gpu);
    device_close(cpu);
    return check_finish();
}
