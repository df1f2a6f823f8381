/* blas_setup.c - OpenBLAS kernel selection and threads (see blas_setup.h). */
#include "driver/blas_setup.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Rough capability levels: 1 SSE, 2 AVX, 3 AVX2+FMA, 4 AVX-512. */
static int kernel_level(const char *core) {
    static const struct {
        const char *name;
        int level;
    } kernels[] = {{"skylakex", 4},    {"cooperlake", 4}, {"sapphirerapids", 4},
                   {"haswell", 3},     {"zen", 3},        {"skylake", 3},
                   {"sandybridge", 2}, {"bulldozer", 2},  {"piledriver", 2}};
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++)
        if (strcasecmp(core, kernels[i].name) == 0) return kernels[i].level;
    return 1;
}

static int cpu_level(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return 4;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 3;
    if (__builtin_cpu_supports("avx")) return 2;
#endif
    return 1;
}

static const char *kernel_for_level(int level) {
    switch (level) {
    case 4: return "SkylakeX";
    case 3: return "Haswell";
    case 2: return "Sandybridge";
    }
    return NULL;
}

void blas_setup_kernel(char **argv) {
    const char *fix = getenv("DDTRAIN_BLAS_FIX");
    if ((fix && strcmp(fix, "0") == 0) || getenv("DDTRAIN_BLAS_REEXEC")) return;
    const char *core = openblas_get_corename();
    int have = kernel_level(core ? core : "");
    int want = cpu_level();
    const char *better = kernel_for_level(want);
    if (!better || have >= want) return;
    /* Remember what OpenBLAS chose, and whether the environment asked for it, so the
     * re-executed ddtrain can say what it changed. */
    const char *pinned = getenv("OPENBLAS_CORETYPE");
    char note[128];
    snprintf(note, sizeof note, "%s%s%s", core ? core : "unknown",
             pinned ? ", from OPENBLAS_CORETYPE=" : "", pinned ? pinned : "");
    setenv("DDTRAIN_BLAS_REEXEC", note, 1);
    setenv("OPENBLAS_CORETYPE", better, 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the kernel we have; blas_describe() says so. */
    if (pinned)
        setenv("OPENBLAS_CORETYPE", pinned, 1);
    else
        unsetenv("OPENBLAS_CORETYPE");
    unsetenv("DDTRAIN_BLAS_REEXEC");
}

void blas_set_threads(int threads) {
    openblas_set_num_threads(threads);
}

const char *blas_describe(void) {
    static char text[256];
    const char *config = openblas_get_config();
    const char *version = "OpenBLAS";
    char version_text[64] = "";
    if (config && sscanf(config, "OpenBLAS %63s", version_text) == 1) version = version_text;
    const char *replaced = getenv("DDTRAIN_BLAS_REEXEC");
    const char *core = openblas_get_corename();
    if (replaced)
        snprintf(text, sizeof text,
                 "OpenBLAS %s, kernel %s (set by ddtrain: OpenBLAS would have used %s, slower "
                 "on this CPU; DDTRAIN_BLAS_FIX=0 keeps it)",
                 version, core, replaced);
    else
        snprintf(text, sizeof text, "OpenBLAS %s, kernel %s%s", version, core,
                 kernel_level(core) < cpu_level()
                     ? " (slower than this CPU supports: DDTRAIN_BLAS_FIX=0 is set, or re-running "
                       "ddtrain with a better OPENBLAS_CORETYPE failed)"
                     : "");
    return text;
}
