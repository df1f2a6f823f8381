/* device.c - the backend registry: which compute backends this build contains and how to open
 * them. The only file in ddtrain that knows, through #ifdef, whether CUDA was built in; every
 * other file reaches a backend through device->ops.
 *
 * The CUDA backend (with NCCL) is a plugin, libddtrain_cuda.so, loaded with dlopen() the first
 * time a GPU is asked for, so ranks that never touch a GPU never map cuBLAS or NCCL (over
 * 200 MiB of resident pages). Whether a GPU exists is first asked of the driver library alone
 * (libcuda.so.1): a machine without an NVIDIA driver never loads the plugin. The plugin is
 * looked for at $DDTRAIN_CUDA_PLUGIN, next to the executable (the build tree), in the
 * installed library directory relative to it (bin/../lib/ddtrain, see `cmake --install`), one
 * directory above it (the build tree's tests/ and bench/), and on the library search path, in
 * that order. Loading happens on the main thread during set-up. */
#include "engine/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef DDTRAIN_HAVE_CUDA
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <link.h>

/* Where `cmake --install` puts the plugin, relative to the binary's directory. */
#ifndef DDTRAIN_CUDA_PLUGIN_INSTALL_DIR
#define DDTRAIN_CUDA_PLUGIN_INSTALL_DIR "../lib/ddtrain"
#endif

typedef struct cuda_plugin {
    bool tried;
    void *handle;
    char path[PATH_MAX]; /* where it was loaded from, or looked for */
    ddt_status (*open)(device *dev);
    int (*count)(void);
    char problem[PATH_MAX + 1024]; /* why it could not be loaded */
} cuda_plugin;

static cuda_plugin plugin;

static bool driver_present(void) {
    void *driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!driver) return false;
    dlclose(driver);
    return true;
}

/* The plugin's path: the first candidate that exists, or the bare name for the search path. */
static void plugin_path(char *out, size_t size) {
    out[0] = '\0';
    const char *forced = getenv("DDTRAIN_CUDA_PLUGIN");
    if (forced && *forced) {
        snprintf(out, size, "%s", forced);
        return;
    }
    char executable[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", executable, sizeof executable - 1);
    if (length > 0) {
        executable[length] = '\0';
        const char *directory = dirname(executable);
        const char *formats[] = {"%s/" DDTRAIN_CUDA_PLUGIN,
                                 "%s/" DDTRAIN_CUDA_PLUGIN_INSTALL_DIR "/" DDTRAIN_CUDA_PLUGIN,
                                 "%s/../" DDTRAIN_CUDA_PLUGIN};
        for (int i = 0; i < 3; i++) {
            snprintf(out, size, formats[i], directory);
            char resolved[PATH_MAX]; /* without "..", for messages and --version */
            if (access(out, R_OK) == 0) {
                if (realpath(out, resolved)) snprintf(out, size, "%s", resolved);
                return;
            }
        }
    }
    snprintf(out, size, "%s", DDTRAIN_CUDA_PLUGIN);
}

static bool plugin_load(void) {
    if (plugin.tried) return plugin.handle != NULL;
    plugin.tried = true;
    char *path = plugin.path;
    plugin_path(path, sizeof plugin.path);
    plugin.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    struct link_map *map = NULL;
    if (plugin.handle && dlinfo(plugin.handle, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name &&
        *map->l_name) /* the file the search path led to */
        snprintf(plugin.path, sizeof plugin.path, "%s", map->l_name);
    if (!plugin.handle) {
        snprintf(plugin.problem, sizeof plugin.problem,
                 "the CUDA backend plugin %s could not be loaded: %s", path, dlerror());
        return false;
    }
    *(void **)&plugin.open = dlsym(plugin.handle, "device_cuda_open");
    *(void **)&plugin.count = dlsym(plugin.handle, "device_cuda_count");
    if (!plugin.open || !plugin.count) {
        snprintf(plugin.problem, sizeof plugin.problem,
                 "%s is not a ddtrain CUDA plugin (device_cuda_open is missing)", path);
        dlclose(plugin.handle);
        plugin.handle = NULL;
        return false;
    }
    return true;
}
#endif

void *device_backend_symbol(device_kind kind, const char *name) {
#ifdef DDTRAIN_HAVE_CUDA
    if (kind == DEVICE_KIND_CUDA && plugin_load()) return dlsym(plugin.handle, name);
#else
    (void)kind;
    (void)name;
#endif
    return NULL;
}

const char *device_backend_plugin_path(device_kind kind) {
#ifdef DDTRAIN_HAVE_CUDA
    if (kind == DEVICE_KIND_CUDA) {
        if (!plugin.tried) plugin_path(plugin.path, sizeof plugin.path);
        return plugin.path;
    }
#else
    (void)kind;
#endif
    return NULL;
}

const char *device_backend_problem(device_kind kind) {
#ifdef DDTRAIN_HAVE_CUDA
    if (kind == DEVICE_KIND_CUDA && !plugin_load()) return plugin.problem;
#else
    if (kind == DEVICE_KIND_CUDA)
        return "this ddtrain was built without CUDA support; rebuild with -DDDTRAIN_CUDA=ON "
               "(needs the CUDA toolkit and NCCL) or use the cpu device";
#endif
    return NULL;
}

bool device_kind_available(device_kind kind) {
    switch (kind) {
    case DEVICE_KIND_CPU:
        return true;
    case DEVICE_KIND_CUDA:
#ifdef DDTRAIN_HAVE_CUDA
        return true;
#else
        return false;
#endif
    }
    return false;
}

int device_count(device_kind kind) {
    switch (kind) {
    case DEVICE_KIND_CPU:
        return 1;
    case DEVICE_KIND_CUDA:
#ifdef DDTRAIN_HAVE_CUDA
        /* Without a driver there is no GPU: do not load the plugin just to learn that. */
        return driver_present() && plugin_load() ? plugin.count() : 0;
#else
        return 0;
#endif
    }
    return 0;
}

static const char *const precision_names[] = {
    [PRECISION_FP32] = "fp32",
    [PRECISION_TF32] = "tf32",
    [PRECISION_BF16] = "bf16",
    [PRECISION_FP16] = "fp16",
};

const char *precision_kind_name(precision_kind precision) {
    if ((unsigned)precision < sizeof precision_names / sizeof precision_names[0])
        return precision_names[precision];
    return "unknown";
}

ddt_status precision_kind_parse(const char *text, precision_kind *out) {
    for (unsigned i = 0; i < sizeof precision_names / sizeof precision_names[0]; i++) {
        if (text && strcmp(text, precision_names[i]) == 0) {
            *out = (precision_kind)i;
            return DDT_OK;
        }
    }
    return ddt_error(DDT_ERR_USAGE, "unknown precision '%s': use fp32, tf32, bf16 or fp16",
                     text ? text : "");
}

const char *device_kind_name(device_kind kind) {
    switch (kind) {
    case DEVICE_KIND_CPU:
        return "cpu";
    case DEVICE_KIND_CUDA:
        return "cuda";
    }
    return "unknown";
}

const char *device_request_name(device_request request) {
    switch (request) {
    case DEVICE_REQUEST_AUTO:
        return "auto";
    case DEVICE_REQUEST_CPU:
        return "cpu";
    case DEVICE_REQUEST_CUDA:
        return "cuda";
    }
    return "unknown";
}

ddt_status device_choose(device_request request, int local_rank, device_kind *kind,
                         int *ordinal) {
    *kind = DEVICE_KIND_CPU;
    *ordinal = 0;
    switch (request) {
    case DEVICE_REQUEST_CPU:
        return DDT_OK;
    case DEVICE_REQUEST_AUTO:
        if (device_count(DEVICE_KIND_CUDA) == 0) return DDT_OK;
        break;
    case DEVICE_REQUEST_CUDA:
        if (!device_kind_available(DEVICE_KIND_CUDA))
            return ddt_error(DDT_ERR_USAGE, "--device cuda: this ddtrain was built without CUDA "
                                            "(configure with -DDDTRAIN_CUDA=ON where nvcc and "
                                            "NCCL are installed)");
        if (device_count(DEVICE_KIND_CUDA) == 0) {
            const char *problem = device_backend_problem(DEVICE_KIND_CUDA);
            return ddt_error(DDT_ERR_USAGE, "--device cuda: no GPU is visible to this process (%s)",
                             problem ? problem : "check the driver and CUDA_VISIBLE_DEVICES");
        }
        break;
    default:
        return ddt_error(DDT_ERR_USAGE, "--device: unknown request %d", (int)request);
    }
    *kind = DEVICE_KIND_CUDA;
    *ordinal = (local_rank < 0 ? 0 : local_rank) % device_count(DEVICE_KIND_CUDA);
    return DDT_OK;
}

ddt_status device_open(device_kind kind, int ordinal, device **out) {
    *out = NULL;
    if (kind != DEVICE_KIND_CPU && kind != DEVICE_KIND_CUDA)
        return ddt_error(DDT_ERR_USAGE, "unknown device kind %d", (int)kind);
    const char *problem = device_backend_problem(kind);
    if (problem) return ddt_error(DDT_ERR_USAGE, "%s", problem);
    device *dev = calloc(1, sizeof *dev);
    if (!dev)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory opening the %s device",
                         device_kind_name(kind));
    dev->kind = kind;
    dev->ordinal = kind == DEVICE_KIND_CPU ? 0 : ordinal;
    ddt_status status = DDT_ERR_INTERNAL;
    switch (kind) {
    case DEVICE_KIND_CPU:
        status = device_cpu_open(dev);
        break;
    case DEVICE_KIND_CUDA:
#ifdef DDTRAIN_HAVE_CUDA
        status = plugin.open(dev);
#endif
        break;
    }
    if (status != DDT_OK) {
        ddt_error_trace(__FILE__, __LINE__);
        free(dev);
        return status;
    }
    *out = dev;
    return DDT_OK;
}

void device_close(device *dev) {
    if (!dev) return;
    if (dev->ops && dev->ops->close) dev->ops->close(dev);
    free(dev);
}
