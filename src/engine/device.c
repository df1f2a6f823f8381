/* device.c - the backend registry: which compute backends this build contains and how to open
 * them. The only file in ddtrain that knows, through #ifdef, whether CUDA was built in; every
 * other file reaches a backend through device->ops. */
#include "engine/device.h"

#include <stdlib.h>

#ifdef DDTRAIN_HAVE_CUDA
/* The CUDA backend's constructor (src/engine/device_cuda.cu), present only in CUDA builds. */
ddt_status device_cuda_open(device *dev);
#endif

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

const char *device_kind_name(device_kind kind) {
    switch (kind) {
    case DEVICE_KIND_CPU:
        return "cpu";
    case DEVICE_KIND_CUDA:
        return "cuda";
    }
    return "unknown";
}

ddt_status device_open(device_kind kind, int ordinal, device **out) {
    *out = NULL;
    if (kind != DEVICE_KIND_CPU && kind != DEVICE_KIND_CUDA)
        return ddt_error(DDT_ERR_USAGE, "unknown device kind %d", (int)kind);
    if (!device_kind_available(kind))
        return ddt_error(DDT_ERR_USAGE,
                         "this ddtrain was built without CUDA support; rebuild with "
                         "-DDDTRAIN_CUDA=ON (needs the CUDA toolkit) or use the cpu device");
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
        status = device_cuda_open(dev);
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
