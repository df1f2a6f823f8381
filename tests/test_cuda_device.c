/* test_cuda_device.c - what the CUDA backend does beyond each operation's arithmetic.
 *
 * Each operation's results, on every backend, against a float64 reference and against the CPU
 * backend (and run twice for the same bits) are tests/test_engine_ops.c's, the harness of every
 * operation. Here, what only a GPU has: the device facts and memory_info; the precision
 * workspace as the allocator counts it; the operations that need the kernels' scratch failing
 * before set_precision; convolution's bias staying fp32 (gemm_fp32) in bf16 mode bit for bit;
 * the upload path with compute interleaved on two streams; timer events around GPU work;
 * preallocating through the allocator with a limit; a failure in an operation without a
 * status surfacing at the next micro-batch's upload_wait and synchronisation. Then that TF32,
 * bf16 and fp16 GEMMs really lose the bits their formats lack (an error above any fp32 GEMM's,
 * against float64), and that fp32 comes back; and the index paths of GPT sizes: elementwise
 * counts past the grid's 2^24 threads, causal softmax past its 524,288 warps, operand casts of
 * more than 20M and of more than 2^31 elements (each case that the GPU has no memory for
 * prints "not run: ..." with the reason, and times itself). Comparisons are within the bound
 * float32 rounding allows (float_sum_gamma, gemm_tolerance, relative to the sum of the
 * magnitudes added), or bit for bit.
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

/* --- GPU: the precision workspace -------------------------------------------------------- */

static size_t workspace_in_use(void) {
    return allocator_get_stats(gpu_alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE];
}

/* What each precision takes from the allocator, and gives back. (The GEMMs themselves, in
 * every precision and before set_precision, are tests/test_engine_ops.c's.) */
static void check_gemm(void) {
    const size_t max_operand_floats = 256 * 96;
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

    EXPECT_OK(device_set_precision(gpu, PRECISION_TF32, gpu_alloc, max_operand_floats));
    EXPECT(workspace_in_use() ==
           device_precision_workspace_bytes(gpu, PRECISION_TF32, max_operand_floats));

    size_t bf16_bytes = device_precision_workspace_bytes(gpu, PRECISION_BF16, max_operand_floats);
    EXPECT(bf16_bytes == fp32_bytes + 2 * allocator_rounded_size(max_operand_floats * 2));
    EXPECT_OK(device_set_precision(gpu, PRECISION_BF16, gpu_alloc, max_operand_floats));
    EXPECT(workspace_in_use() == bf16_bytes); /* the fp32 pieces went back */

    EXPECT_OK(device_set_precision(gpu, PRECISION_FP16, gpu_alloc, max_operand_floats));

    EXPECT(device_set_precision(gpu, (precision_kind)42, gpu_alloc, 1) == DDT_ERR_USAGE);
    EXPECT_OK(device_set_precision(gpu, PRECISION_FP32, gpu_alloc, max_operand_floats));
    EXPECT(workspace_in_use() == fp32_bytes);
    EXPECT_OK(device_synchronize(gpu));
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

/* --- GPU: checks, uploads, memory -------------------------------------------------------- */

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
    EXPECT_OK(allocator_open_with_params(gpu, &params, &alloc));
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
        allocator_close(alloc);
    }
    /* More than the GPU has fails at once, with a message, not a crash. */
    params.limit_bytes = total + GIB;
    alloc = NULL;
    EXPECT(allocator_open_with_params(gpu, &params, &alloc) == DDT_ERR_MEMORY);
    EXPECT(alloc == NULL);
}

/* A GEMM too large for the bf16 cast buffers cannot return a status; its failure must come out
 * of the next synchronize. On a device of its own, since the failure stays recorded. */
static void check_deferred_failure(void) {
    device *other = NULL;
    allocator *alloc = NULL;
    EXPECT_OK(device_open(DEVICE_KIND_CUDA, gpu->ordinal, &other));
    if (!other) return;
    EXPECT_OK(allocator_open(other, &alloc));
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
        allocator_close(alloc);
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
    EXPECT_OK(allocator_open(other, &alloc));
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
    allocator_close(alloc);
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
    if (allocator_open(gpu, &alloc) != DDT_OK) {
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
    allocator_close(alloc);
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
    allocator_close(alloc);
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
    allocator_close(alloc);
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
    allocator_close(alloc);
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
    if (allocator_open(gpu, &gpu_alloc) != DDT_OK) {
        fprintf(stderr, "cannot create the GPU allocator: %s\n", ddt_error_message());
        return 1;
    }
    check_description_and_memory();
    check_gemm();
    check_scratch_needed();
    check_gemm_fp32();
    check_uploads();
    check_timers();
    check_preallocation();
    check_deferred_failure();
    check_precision_takes_effect();
    check_big_index_paths(); /* last: see check_cast_past_2_31 */
    EXPECT_OK(device_synchronize(gpu));
    allocator_close(gpu_alloc);
    device_close(gpu);
    device_close(cpu);
    return check_finish();
}
