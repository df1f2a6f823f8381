/* plugin.h - the one plugin ddtrain loads: libddtrain_cuda.so, which carries the CUDA compute
 * backend (engine/cuda) and the NCCL communication backend (comm/nccl). It is loaded with
 * dlopen() the first time either is asked for, so ranks that never touch a GPU never map
 * cuBLAS or NCCL (over 200 MiB of resident pages). The engine and comm each take their symbols
 * from here; neither goes through the other.
 *
 * Where it is looked for, in order: $DDTRAIN_CUDA_PLUGIN; next to the executable (the build
 * tree); the installed library directory relative to it (bin/../lib/ddtrain, `cmake
 * --install`); one directory above it (the build tree's tests/ and bench/); the library search
 * path. Loading happens on the main thread during set-up.
 *
 * Usage:
 *     ddt_status (*open)(device *) = plugin_symbol("device_cuda_open");
 *     if (!open) return ddt_error(DDT_ERR_USAGE, "%s", plugin_problem());
 */
#ifndef DDT_UTIL_PLUGIN_H
#define DDT_UTIL_PLUGIN_H

#include <stdbool.h>

/* Whether this build has the plugin at all. */
bool plugin_built(void);
/* Whether the NVIDIA driver library (libcuda.so.1) can be loaded: a machine without it has no
 * GPU, and the plugin is never loaded just to learn that. False in a build without CUDA. */
bool plugin_driver_present(void);
/* A symbol of the plugin, loading it if needed; NULL if it is not built, cannot be loaded, or
 * lacks the symbol. */
void *plugin_symbol(const char *name);
/* Why plugin_symbol() gives NULL (not built, not loadable: the loader's words), or NULL. */
const char *plugin_problem(void);
/* The file the plugin was loaded from, or, before it is loaded, the file it would be loaded
 * from (a bare file name: the library search path). NULL in a build without it. */
const char *plugin_path(void);

#endif
