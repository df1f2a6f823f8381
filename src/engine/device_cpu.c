/* device_cpu.c - the CPU backend: every device operation on host memory.
 *
 * Matrix products go to OpenBLAS (cblas_sgemm); everything else is a plain loop over
 * restrict-qualified arrays that the compiler can vectorise. Nothing here allocates except
 * memory_alloc (and memory_info reads a few files in /proc and /sys), so a training step
 * costs the GEMMs plus a few passes over the activations.
 * Operations run synchronously, so synchronize() has nothing to wait for.
 */
/* The build uses -O2, where GCC (12) vectorises only loops whose trip count is a known
 * multiple of the vector width. These loops are all this backend adds to the GEMMs, and
 * scalar, branchy relu/optimizer loops cost a third of a training step, so this file asks
 * for the full vectoriser. errno is never read here; without it sqrtf is one instruction. No
 * floating-point exception is ever tested either: without trapping maths, comparisons in a
 * loop (clamps, selects) can become vector blends.
 * Clang vectorises at -O2 already. None of this changes results. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("tree-vectorize", "vect-cost-model=dynamic", "no-math-errno", "no-trapping-math")
#endif

#include "engine/device.h"
#include "engine/device_backend.h"

#include <cblas.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "engine/device_cpu_layers.h"
#include "engine/optim_update.h"
#include "util/rng.h"
#include "util/clock.h"
#include "util/values.h"

#define CPU_ALIGNMENT 64

static const float INV_SQRT2 = 0.70710678118654752f;
static const float INV_SQRT_2PI = 0.39894228040143268f;
static const float GELU_TANH_SCALE = 0.79788456080286536f; /* sqrt(2/pi) */
static const float GELU_TANH_CUBIC = 0.044715f;

/* exp(x) within 2 ulp for x in [-87, 88] (clamped outside), in operations the vectoriser can
 * turn into SIMD code (libm's expf and tanhf are scalar calls, and cost GPT's GELU two thirds
 * of its time): Cephes' expf, round-to-nearest by the 1.5 * 2^23 trick, the power of two
 * built in the exponent bits. */
static inline float exp_vectorisable(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh(u) = 1 - 2 / (exp(2u) + 1), within 1e-7 of libm's absolutely. */
static inline float tanh_vectorisable(float u) {
    return 1.0f - 2.0f / (exp_vectorisable(2.0f * u) + 1.0f);
}

/* --- memory and copies ------------------------------------------------------------------- */

static ddt_status cpu_memory_alloc(device *dev, size_t bytes, void **out) {
    (void)dev;
    void *pointer = NULL;
    /* posix_memalign(0) may return NULL; a one-line buffer keeps "success means non-NULL". */
    size_t size = bytes ? bytes : CPU_ALIGNMENT;
    if (posix_memalign(&pointer, CPU_ALIGNMENT, size) != 0 || !pointer) {
        *out = NULL;
        return ddt_error(DDT_ERR_MEMORY, "out of host memory: cannot allocate %zu bytes", bytes);
    }
    memset(pointer, 0, size);
    *out = pointer;
    return DDT_OK;
}

static void cpu_memory_free(device *dev, void *pointer) {
    (void)dev;
    free(pointer);
}

/* Reads a byte count from a cgroup file; false if missing, unreadable or "max". */
static bool read_size_file(const char *path, size_t *out) {
    FILE *file = fopen(path, "r");
    if (!file) return false;
    char text[64] = "";
    bool ok = fgets(text, sizeof text, file) != NULL;
    fclose(file);
    if (!ok || !isdigit((unsigned char)text[0])) return false;
    unsigned long long value = strtoull(text, NULL, 10);
    *out = value > SIZE_MAX ? SIZE_MAX : (size_t)value;
    return true;
}

/* Lowers *limit (and sets *usage) to the smallest memory limit among a cgroup and its
 * ancestors: a container's limit may sit on a parent, not on the process's own group.
 * `base` is the hierarchy's mount point, `path` the process's group inside it. */
static void cgroup_lower_limit(const char *base, const char *path, const char *limit_file,
                               const char *usage_file, size_t *limit, size_t *usage) {
    char group[512];
    snprintf(group, sizeof group, "%s", path);
    for (;;) {
        size_t length = strlen(group);
        while (length > 1 && group[length - 1] == '/')
            group[--length] = '\0';
        char file[1024];
        size_t value;
        snprintf(file, sizeof file, "%s%s/%s", base, strcmp(group, "/") == 0 ? "" : group,
                 limit_file);
        if (read_size_file(file, &value) && value < *limit) {
            *limit = value;
            snprintf(file, sizeof file, "%s%s/%s", base, strcmp(group, "/") == 0 ? "" : group,
                     usage_file);
            if (!read_size_file(file, usage)) *usage = 0;
        }
        char *slash = strrchr(group, '/');
        if (!slash || strcmp(group, "/") == 0) break;
        if (slash == group)
            group[1] = '\0';
        else
            *slash = '\0';
    }
}

/* The cgroup memory limit of this process (v2 memory.max; v1 memory.limit_in_bytes) if it is
 * below *limit, with the group's current usage. */
static void cgroup_memory_limit(size_t *limit, size_t *usage) {
    FILE *file = fopen("/proc/self/cgroup", "r");
    if (!file) return;
    char line[768];
    while (fgets(line, sizeof line, file)) {
        line[strcspn(line, "\n")] = '\0';
        /* "0::/path" (v2) or "4:memory:/path" (v1; the controller list may hold several). */
        char *controllers = strchr(line, ':');
        char *path = controllers ? strchr(controllers + 1, ':') : NULL;
        if (!path) continue;
        *path++ = '\0';
        *controllers++ = '\0';
        if (strncmp(line, "0", 2) == 0 && controllers[0] == '\0') {
            cgroup_lower_limit("/sys/fs/cgroup", path, "memory.max", "memory.current", limit,
                               usage);
        } else {
            char *save = NULL;
            for (char *name = strtok_r(controllers, ",", &save); name;
                 name = strtok_r(NULL, ",", &save))
                if (strcmp(name, "memory") == 0)
                    cgroup_lower_limit("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes",
                                       "memory.usage_in_bytes", limit, usage);
        }
    }
    fclose(file);
}

/* MemAvailable from /proc/meminfo in bytes; false if the kernel does not say. */
static bool meminfo_available(size_t *out) {
    FILE *file = fopen("/proc/meminfo", "r");
    if (!file) return false;
    char line[256];
    bool found = false;
    while (!found && fgets(line, sizeof line, file)) {
        unsigned long long kib;
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
            *out = kib > SIZE_MAX / 1024 ? SIZE_MAX : (size_t)kib * 1024;
            found = true;
        }
    }
    fclose(file);
    return found;
}

static ddt_status cpu_memory_info(device *dev, size_t *total_bytes, size_t *free_bytes) {
    (void)dev;
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0)
        return ddt_error(DDT_ERR_INTERNAL, "cannot tell how much memory this machine has");
    size_t total = (size_t)pages * (size_t)page_size;
    size_t available;
    if (!meminfo_available(&available)) {
        long free_pages = sysconf(_SC_AVPHYS_PAGES); /* ignores the page cache: pessimistic */
        available = free_pages > 0 ? (size_t)free_pages * (size_t)page_size : 0;
    }
    /* In a container, MemAvailable describes the host; the group's limit is what counts. */
    size_t limit = total, usage = 0;
    cgroup_memory_limit(&limit, &usage);
    if (limit < total) {
        total = limit;
        size_t headroom = usage < limit ? limit - usage : 0;
        if (available > headroom) available = headroom;
    }
    if (available > total) available = total;
    *total_bytes = total;
    *free_bytes = available;
    return DDT_OK;
}

static ddt_status cpu_copy(device *dev, void *dst, const void *src, size_t bytes) {
    (void)dev;
    if (bytes && dst != src) memmove(dst, src, bytes);
    return DDT_OK;
}

static void cpu_copy_device_to_device(device *dev, void *dst, const void *src, size_t bytes) {
    cpu_copy(dev, dst, src, bytes);
}

static void cpu_fill_zero(device *dev, void *dst, size_t bytes) {
    (void)dev;
    if (bytes) memset(dst, 0, bytes);
}

/* --- dense algebra ----------------------------------------------------------------------- */

static void cpu_gemm(device *dev, bool transpose_a, bool transpose_b, int m, int n, int k,
                     float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                     float *c, int ldc) {
    (void)dev;
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        /* An empty product (a micro-batch of zero rows) leaves beta * C; BLAS may reject it. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(size_t)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
                transpose_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                ldc);
}

static void cpu_bias_add(device *dev, int rows, int cols, float *restrict y,
                         const float *restrict bias) {
    (void)dev;
    for (int r = 0; r < rows; r++) {
        float *restrict row = y + (size_t)r * cols;
        for (int c = 0; c < cols; c++)
            row[c] += bias[c];
    }
}

static void cpu_bias_gradient_accumulate(device *dev, int rows, int cols, const float *restrict dy,
                                         float *restrict bias_gradient) {
    (void)dev;
    for (int r = 0; r < rows; r++) {
        const float *restrict row = dy + (size_t)r * cols;
        for (int c = 0; c < cols; c++)
            bias_gradient[c] += row[c];
    }
}

static void cpu_scale(device *dev, size_t count, float alpha, float *restrict x) {
    (void)dev;
    for (size_t i = 0; i < count; i++)
        x[i] *= alpha;
}

/* --- elementwise layers ------------------------------------------------------------------ */

static void cpu_activation_forward(device *dev, activation_kind kind, size_t count,
                                   const float *restrict x, float *restrict y) {
    (void)dev;
    switch (kind) {
    case ACTIVATION_RELU:
        /* "x < 0 ? 0 : x" lets NaN through, as PyTorch does, so divergence stays visible. */
        for (size_t i = 0; i < count; i++)
            y[i] = x[i] < 0.0f ? 0.0f : x[i];
        break;
    case ACTIVATION_GELU:
        for (size_t i = 0; i < count; i++)
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * INV_SQRT2));
        break;
    case ACTIVATION_TANH:
        for (size_t i = 0; i < count; i++)
            y[i] = tanhf(x[i]);
        break;
    case ACTIVATION_GELU_TANH:
        for (size_t i = 0; i < count; i++) {
            float inner = GELU_TANH_SCALE * (x[i] + GELU_TANH_CUBIC * x[i] * x[i] * x[i]);
            y[i] = 0.5f * x[i] * (1.0f + tanh_vectorisable(inner));
        }
        break;
    case ACTIVATION_SIGMOID:
        for (size_t i = 0; i < count; i++) {
            /* exp of a non-positive number only, so large |x| cannot overflow. */
            float e = expf(-fabsf(x[i]));
            y[i] = x[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
        }
        break;
    }
}

static void cpu_activation_backward(device *dev, activation_kind kind, size_t count,
                                    const float *restrict x, const float *restrict y,
                                    const float *restrict dy, float *restrict dx) {
    (void)dev;
    switch (kind) {
    case ACTIVATION_RELU:
        /* dy is read unconditionally so the select has no branch and vectorises. */
        for (size_t i = 0; i < count; i++) {
            float gradient = dy[i];
            dx[i] = x[i] > 0.0f ? gradient : 0.0f;
        }
        break;
    case ACTIVATION_GELU:
        /* d/dx [x * Phi(x)] = Phi(x) + x * phi(x). */
        for (size_t i = 0; i < count; i++) {
            float cdf = 0.5f * (1.0f + erff(x[i] * INV_SQRT2));
            float pdf = INV_SQRT_2PI * expf(-0.5f * x[i] * x[i]);
            dx[i] = dy[i] * (cdf + x[i] * pdf);
        }
        break;
    case ACTIVATION_TANH:
        for (size_t i = 0; i < count; i++)
            dx[i] = dy[i] * (1.0f - y[i] * y[i]);
        break;
    case ACTIVATION_GELU_TANH:
        /* d/dx [x/2 (1 + tanh u)] = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) u',
         * u = s (x + c x^3), u' = s (1 + 3 c x^2). */
        for (size_t i = 0; i < count; i++) {
            float xi = x[i];
            float inner = GELU_TANH_SCALE * (xi + GELU_TANH_CUBIC * xi * xi * xi);
            float t = tanh_vectorisable(inner);
            float slope = GELU_TANH_SCALE * (1.0f + 3.0f * GELU_TANH_CUBIC * xi * xi);
            dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * xi * (1.0f - t * t) * slope);
        }
        break;
    case ACTIVATION_SIGMOID:
        for (size_t i = 0; i < count; i++)
            dx[i] = dy[i] * y[i] * (1.0f - y[i]);
        break;
    }
}

/* Whether dropout keeps unit `column` of global row `row_id`; the formula is the contract in
 * device.h, shared by every backend so masks agree across devices. */
static inline bool dropout_keeps(dropout_key key, float rate, int64_t row_id, int cols,
                                 int column) {
    uint64_t unit = (uint64_t)row_id * (uint64_t)cols + (uint64_t)column;
    uint64_t index = ((uint64_t)key.layer << 40) ^ unit;
    return rng_uniform(rng_hash4(key.seed, RNG_PURPOSE_DROPOUT, (uint64_t)key.step, index)) >= rate;
}

static void cpu_dropout_apply(int rows, int cols, float rate, dropout_key key,
                              const int64_t *restrict row_ids, const float *restrict in,
                              float *restrict out) {
    if (rate <= 0.0f) {
        memmove(out, in, (size_t)rows * cols * sizeof *out);
        return;
    }
    float keep_scale = 1.0f / (1.0f - rate);
    for (int r = 0; r < rows; r++) {
        const float *restrict row_in = in + (size_t)r * cols;
        float *restrict row_out = out + (size_t)r * cols;
        for (int c = 0; c < cols; c++)
            row_out[c] =
                dropout_keeps(key, rate, row_ids[r], cols, c) ? row_in[c] * keep_scale : 0.0f;
    }
}

static void cpu_dropout_forward(device *dev, int rows, int cols, float rate, dropout_key key,
                                const int64_t *row_ids, const float *x, float *y) {
    (void)dev;
    cpu_dropout_apply(rows, cols, rate, key, row_ids, x, y);
}

static void cpu_dropout_backward(device *dev, int rows, int cols, float rate, dropout_key key,
                                 const int64_t *row_ids, const float *dy, float *dx) {
    (void)dev;
    cpu_dropout_apply(rows, cols, rate, key, row_ids, dy, dx);
}

/* --- losses ------------------------------------------------------------------------------ */

/* Target of row r, column c: a float target, or from a class id (one-hot, or the id itself
 * for a single-column binary output). */
static inline float loss_target(int r, int c, int cols, const int32_t *labels,
                                const float *targets) {
    if (targets) return targets[(size_t)r * cols + c];
    if (cols == 1) return (float)labels[r];
    return labels[r] == c ? 1.0f : 0.0f;
}

static void cpu_softmax_cross_entropy(device *dev, int rows, int cols, const float *logits,
                                      const int32_t *labels, const float *targets, float scale,
                                      float *loss_sum, float *dlogits) {
    (void)dev;
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        const float *restrict x = logits + (size_t)r * cols;
        float *restrict d = dlogits ? dlogits + (size_t)r * cols : NULL;
        float max = x[0];
        for (int c = 1; c < cols; c++)
            max = x[c] > max ? x[c] : max;
        /* Subtracting the max keeps exp() in (0, 1]; the exps are kept in dlogits if given. */
        float sum = 0.0f;
        if (d) {
            for (int c = 0; c < cols; c++) {
                d[c] = expf(x[c] - max);
                sum += d[c];
            }
        } else {
            for (int c = 0; c < cols; c++)
                sum += expf(x[c] - max);
        }
        double log_sum_exp = log((double)sum) + (double)max;
        if (labels) {
            int label = labels[r];
            total += log_sum_exp - (double)x[label];
            if (d) {
                float factor = scale / sum;
                for (int c = 0; c < cols; c++)
                    d[c] *= factor;
                d[label] -= scale;
            }
        } else {
            /* -sum t log p = (sum t) * logsumexp - sum t x; gradient (sum t) * p - t. */
            const float *restrict t = targets + (size_t)r * cols;
            double target_sum = 0.0, target_dot = 0.0;
            for (int c = 0; c < cols; c++) {
                target_sum += t[c];
                target_dot += (double)t[c] * x[c];
            }
            total += target_sum * log_sum_exp - target_dot;
            if (d) {
                float factor = (float)(scale * target_sum / sum);
                for (int c = 0; c < cols; c++)
                    d[c] = d[c] * factor - scale * t[c];
            }
        }
    }
    *loss_sum += (float)(total * scale);
}

static void cpu_binary_cross_entropy(device *dev, int rows, int cols, const float *logits,
                                     const int32_t *labels, const float *targets, float scale,
                                     float *loss_sum, float *dlogits) {
    (void)dev;
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            float x = logits[i];
            float t = loss_target(r, c, cols, labels, targets);
            /* -t log s(x) - (1-t) log(1-s(x)) = max(x,0) - x t + log(1 + exp(-|x|)). */
            float e = expf(-fabsf(x));
            total += (double)(x > 0.0f ? x : 0.0f) - (double)x * t + log1p((double)e);
            if (dlogits) {
                float sigmoid = x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
                dlogits[i] = scale * (sigmoid - t);
            }
        }
    }
    *loss_sum += (float)(total * scale);
}

static void cpu_mean_squared_error(device *dev, int rows, int cols, const float *logits,
                                   const int32_t *labels, const float *targets, float scale,
                                   float *loss_sum, float *dlogits) {
    (void)dev;
    double total = 0.0;
    float gradient_factor = 2.0f * scale / (float)cols;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            float difference = logits[i] - loss_target(r, c, cols, labels, targets);
            total += (double)difference * difference;
            if (dlogits) dlogits[i] = gradient_factor * difference;
        }
    }
    *loss_sum += (float)(total * scale / cols);
}

static void cpu_count_correct(device *dev, int rows, int cols, const float *logits,
                              const int32_t *labels, float *correct) {
    (void)dev;
    int hits = 0;
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * cols;
        int predicted;
        if (cols == 1) {
            predicted = x[0] > 0.0f;
        } else {
            predicted = 0; /* the first of equal maxima, as argmax in PyTorch and NumPy */
            for (int c = 1; c < cols; c++)
                if (x[c] > x[predicted]) predicted = c;
        }
        hits += predicted == labels[r];
    }
    *correct += (float)hits;
}

/* --- optimizers -------------------------------------------------------------------------- */

static void cpu_sgd_update(device *dev, size_t count, float *restrict params,
                           const float *restrict grads, float *restrict velocity, float lr,
                           float momentum, bool nesterov, float weight_decay, bool first_step) {
    (void)dev;
    /* One simple loop per case, so each vectorises without branches inside; each computes
     * what sgd_update_element() (engine/optim_update.h) does, in the same order. */
    if (momentum == 0.0f) {
        if (weight_decay == 0.0f) {
            for (size_t i = 0; i < count; i++)
                params[i] -= lr * grads[i];
        } else {
            for (size_t i = 0; i < count; i++)
                params[i] -= lr * (grads[i] + weight_decay * params[i]);
        }
        return;
    }
    /* One pass over params, grads and velocity (memory traffic is the whole cost): the
     * step is gradient_weight * g + velocity_weight * v, i.e. g + momentum * v for Nesterov
     * and v otherwise. */
    float gradient_weight = nesterov ? 1.0f : 0.0f;
    float velocity_weight = nesterov ? momentum : 1.0f;
    if (first_step) {
        for (size_t i = 0; i < count; i++) {
            float g = grads[i] + weight_decay * params[i];
            velocity[i] = g;
            params[i] -= lr * (gradient_weight * g + velocity_weight * g);
        }
    } else {
        for (size_t i = 0; i < count; i++) {
            float g = grads[i] + weight_decay * params[i];
            float v = momentum * velocity[i] + g;
            velocity[i] = v;
            params[i] -= lr * (gradient_weight * g + velocity_weight * v);
        }
    }
}

static void cpu_adamw_update(device *dev, size_t count, float *restrict params,
                             const float *restrict grads, float *restrict m, float *restrict v,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             int64_t step) {
    (void)dev;
    /* As torch.optim.AdamW (non-fused): decay first, then the bias-corrected Adam step with
     * eps added to sqrt(v) / sqrt(1 - beta2^t); engine/optim_update.h has the arithmetic. */
    adamw_scalars s = adamw_scalars_for(lr, beta1, beta2, eps, weight_decay, step);
    size_t i = 0;
#ifdef __SSE2__
    /* sqrtf() may set errno, so GCC will not vectorise the loop below unless the build says
     * -fno-math-errno (a pragma cannot), and scalar it is 4x slower (0.55 ms for 235k
     * parameters, most of a training step). The same operations in the same order, four at
     * a time, so results match the scalar loop bit for bit. */
    const __m128 decay4 = _mm_set1_ps(s.decay), step_size4 = _mm_set1_ps(s.step_size);
    const __m128 beta1_4 = _mm_set1_ps(s.beta1), one_minus_beta1_4 = _mm_set1_ps(s.one_minus_beta1);
    const __m128 beta2_4 = _mm_set1_ps(s.beta2), one_minus_beta2_4 = _mm_set1_ps(s.one_minus_beta2);
    const __m128 correction4 = _mm_set1_ps(s.inv_sqrt_correction2), eps4 = _mm_set1_ps(s.eps);
    for (; i + 4 <= count; i += 4) {
        __m128 g = _mm_loadu_ps(grads + i);
        __m128 p = _mm_mul_ps(_mm_loadu_ps(params + i), decay4);
        __m128 mi =
            _mm_add_ps(_mm_mul_ps(beta1_4, _mm_loadu_ps(m + i)), _mm_mul_ps(one_minus_beta1_4, g));
        __m128 vi = _mm_add_ps(_mm_mul_ps(beta2_4, _mm_loadu_ps(v + i)),
                               _mm_mul_ps(_mm_mul_ps(one_minus_beta2_4, g), g));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        __m128 denominator = _mm_add_ps(_mm_mul_ps(_mm_sqrt_ps(vi), correction4), eps4);
        _mm_storeu_ps(params + i,
                      _mm_sub_ps(p, _mm_div_ps(_mm_mul_ps(step_size4, mi), denominator)));
    }
#endif
    for (; i < count; i++)
        adamw_update_element(&s, grads[i], &params[i], &m[i], &v[i]);
}

/* --- checks ------------------------------------------------------------------------------ */

static ddt_status cpu_check_finite(device *dev, size_t count, const float *restrict x,
                                   bool *all_finite) {
    (void)dev;
    *all_finite = values_all_finite(x, count);
    return DDT_OK;
}

static ddt_status cpu_sum_of_squares(device *dev, size_t count, const float *restrict x,
                                     double *sum) {
    (void)dev;
    double total = 0;
    for (size_t i = 0; i < count; i++)
        total += (double)x[i] * (double)x[i];
    *sum = total;
    return DDT_OK;
}

static ddt_status cpu_synchronize(device *dev) {
    (void)dev;
    return DDT_OK;
}

/* --- precision, streams and the input path ---------------------------------------------- */

static ddt_status cpu_set_precision(device *dev, precision_kind precision, struct allocator *alloc,
                                    size_t max_operand_floats) {
    (void)dev;
    (void)alloc;
    (void)max_operand_floats;
    (void)precision; /* fp32, the only precision its capabilities claim (device.c checks) */
    return DDT_OK;
}

static size_t cpu_precision_workspace_bytes(device *dev, precision_kind precision,
                                            size_t max_operand_floats) {
    (void)dev;
    (void)precision;
    (void)max_operand_floats;
    return 0;
}

static void *cpu_native_stream(device *dev) {
    (void)dev;
    return NULL;
}

/* Ordinary memory: nothing copies from it asynchronously on this backend. */
static ddt_status cpu_host_alloc(device *dev, size_t bytes, void **out) {
    return cpu_memory_alloc(dev, bytes, out);
}

static void cpu_host_free(device *dev, void *pointer) {
    cpu_memory_free(dev, pointer);
}

static ddt_status cpu_upload_async(device *dev, void *device_dst, const void *host_src,
                                   size_t bytes, int buffer) {
    if (buffer != 0 && buffer != 1)
        return ddt_error(DDT_ERR_INTERNAL, "upload buffer %d is not 0 or 1", buffer);
    return cpu_copy(dev, device_dst, host_src, bytes);
}

/* The copy happened in upload_async(); nothing is in flight. */
static ddt_status cpu_upload_done(device *dev, int buffer) {
    (void)dev;
    if (buffer != 0 && buffer != 1)
        return ddt_error(DDT_ERR_INTERNAL, "upload buffer %d is not 0 or 1", buffer);
    return DDT_OK;
}

/* The CPU backend's only state: its timing marks. */
typedef struct cpu_backend {
    double marks[DEVICE_TIMER_SLOTS];
} cpu_backend;

static ddt_status check_timer_slot(int slot) {
    if (slot < 0 || slot >= DEVICE_TIMER_SLOTS)
        return ddt_error(DDT_ERR_INTERNAL, "timer slot %d is not in [0, %d)", slot,
                         DEVICE_TIMER_SLOTS);
    return DDT_OK;
}

/* Operations have finished when they return, so "the device got here" is now. */
static ddt_status cpu_timer_mark(device *dev, int slot) {
    DDT_CHECK(check_timer_slot(slot));
    ((cpu_backend *)dev->backend)->marks[slot] = clock_now();
    return DDT_OK;
}

static ddt_status cpu_timer_elapsed(device *dev, int from, int to, double *seconds) {
    DDT_CHECK(check_timer_slot(from));
    DDT_CHECK(check_timer_slot(to));
    const cpu_backend *backend = dev->backend;
    *seconds = backend->marks[to] - backend->marks[from];
    return DDT_OK;
}

static void cpu_close(device *dev) {
    free(dev->backend);
    dev->backend = NULL;
}

static const device_ops cpu_ops = {
    .name = "cpu",
    .memory_alloc = cpu_memory_alloc,
    .memory_free = cpu_memory_free,
    .memory_info = cpu_memory_info,
    .copy_host_to_device = cpu_copy,
    .copy_device_to_host = cpu_copy,
    .copy_device_to_device = cpu_copy_device_to_device,
    .fill_zero = cpu_fill_zero,
    .gemm = cpu_gemm,
    .gemm_fp32 = cpu_gemm, /* the CPU has fp32 only */
    .bias_add = cpu_bias_add,
    .bias_gradient_accumulate = cpu_bias_gradient_accumulate,
    .scale = cpu_scale,
    .activation_forward = cpu_activation_forward,
    .activation_backward = cpu_activation_backward,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
    .softmax_cross_entropy = cpu_softmax_cross_entropy,
    .binary_cross_entropy = cpu_binary_cross_entropy,
    .mean_squared_error = cpu_mean_squared_error,
    .count_correct = cpu_count_correct,
    .sgd_update = cpu_sgd_update,
    .adamw_update = cpu_adamw_update,
    .gemm_strided_batched = cpu_gemm_strided_batched,
    .add = cpu_add,
    .permute = cpu_permute,
    .im2col = cpu_im2col,
    .col2im = cpu_col2im,
    .pool2d_forward = cpu_pool2d_forward,
    .pool2d_backward = cpu_pool2d_backward,
    .batchnorm_forward = cpu_batchnorm_forward,
    .batchnorm_backward = cpu_batchnorm_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .causal_softmax_forward = cpu_causal_softmax_forward,
    .causal_softmax_backward = cpu_causal_softmax_backward,
    .check_finite = cpu_check_finite,
    .sum_of_squares = cpu_sum_of_squares,
    .synchronize = cpu_synchronize,
    .set_precision = cpu_set_precision,
    .precision_workspace_bytes = cpu_precision_workspace_bytes,
    .native_stream = cpu_native_stream,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .upload_async = cpu_upload_async,
    .upload_wait = cpu_upload_done,
    .upload_host_done = cpu_upload_done,
    .timer_mark = cpu_timer_mark,
    .timer_elapsed = cpu_timer_elapsed,
    .close = cpu_close,
};

/* "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." -> "0.3.21" (or "?" if the format changes). */
static void openblas_version(char *out, size_t size) {
    const char *config = openblas_get_config();
    const char *prefix = "OpenBLAS ";
    snprintf(out, size, "?");
    if (!config || strncmp(config, prefix, strlen(prefix)) != 0) return;
    const char *version = config + strlen(prefix);
    size_t length = strcspn(version, " ");
    snprintf(out, size, "%.*s", (int)length, version);
}

ddt_status device_cpu_open(device *dev) {
    dev->ops = &cpu_ops;
    dev->capabilities = 0; /* fp32, synchronous, ordinary host memory */
    dev->backend = calloc(1, sizeof(cpu_backend));
    if (!dev->backend) return ddt_error(DDT_ERR_MEMORY, "out of host memory opening the CPU device");
    char version[32];
    openblas_version(version, sizeof version);
    int threads = openblas_get_num_threads();
    const char *core = openblas_get_corename();
    snprintf(dev->description, sizeof dev->description, "cpu (OpenBLAS %s, kernel %s, %d thread%s)",
             version, core ? core : "?", threads, threads == 1 ? "" : "s");
    return DDT_OK;
}
