/* plugin.c - finding and loading libddtrain_cuda.so (see plugin.h). The only file besides
 * engine/device.c's registry that knows whether the build has CUDA. */
#include "util/plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef DDTRAIN_HAVE_CUDA
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <link.h>
#include <unistd.h>

/* Where `cmake --install` puts the plugin, relative to the binary's directory. */
#ifndef DDTRAIN_CUDA_PLUGIN_INSTALL_DIR
#define DDTRAIN_CUDA_PLUGIN_INSTALL_DIR "../lib/ddtrain"
#endif

static struct {
    bool tried;
    void *handle;
    char path[PATH_MAX];           /* where it was loaded from, or looked for */
    char problem[PATH_MAX + 1024]; /* why it could not be loaded */
} plugin;

/* The plugin's path: the first candidate that exists, or the bare name for the search path. */
static void find_path(char *out, size_t size) {
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

static bool load(void) {
    if (plugin.tried) return plugin.handle != NULL;
    plugin.tried = true;
    char looked[PATH_MAX];
    find_path(plugin.path, sizeof plugin.path);
    snprintf(looked, sizeof looked, "%s", plugin.path);
    plugin.handle = dlopen(looked, RTLD_NOW | RTLD_LOCAL);
    if (!plugin.handle) {
        snprintf(plugin.problem, sizeof plugin.problem,
                 "the CUDA backend plugin %s could not be loaded: %s", looked, dlerror());
        return false;
    }
    struct link_map *map = NULL;
    if (dlinfo(plugin.handle, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name && *map->l_name)
        snprintf(plugin.path, sizeof plugin.path, "%s", map->l_name); /* where the search led */
    if (!dlsym(plugin.handle, "device_cuda_open")) {
        snprintf(plugin.problem, sizeof plugin.problem,
                 "%s is not a ddtrain CUDA plugin (device_cuda_open is missing)", looked);
        dlclose(plugin.handle);
        plugin.handle = NULL;
        return false;
    }
    return true;
}

bool plugin_built(void) {
    return true;
}

bool plugin_driver_present(void) {
    void *driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!driver) return false;
    dlclose(driver);
    return true;
}

void *plugin_symbol(const char *name) {
    return load() ? dlsym(plugin.handle, name) : NULL;
}

const char *plugin_problem(void) {
    return load() ? NULL : plugin.problem;
}

const char *plugin_path(void) {
    if (!plugin.tried) find_path(plugin.path, sizeof plugin.path);
    return plugin.path;
}

#else

bool plugin_built(void) {
    return false;
}

bool plugin_driver_present(void) {
    return false;
}

void *plugin_symbol(const char *name) {
    (void)name;
    return NULL;
}

const char *plugin_problem(void) {
    return "this ddtrain was built without CUDA support; rebuild with -DDDTRAIN_CUDA=ON (needs "
           "the CUDA toolkit and NCCL) or use the cpu device";
}

const char *plugin_path(void) {
    return NULL;
}

#endif
