/* device_backend.h - the table a compute backend fills, private to backends (device_cpu.c,
 * cuda/) and device.c, which registers them and turns each entry into the public function of
 * the same name (engine/device_ops.def lists them and documents what each must do). A backend
 * fills its table with designated initialisers; an entry it leaves out is an operation it
 * does not support. A backend also sets the device's capabilities (device.h) in its open
 * function.
 */
#ifndef DDT_ENGINE_DEVICE_BACKEND_H
#define DDT_ENGINE_DEVICE_BACKEND_H

#include "engine/device.h"

typedef struct device_ops {
    const char *name; /* "cpu", "cuda" */
    /* One entry per operation of engine/device_ops.def, of the same name and parameters; NULL
     * where the backend leaves the operation out (device_supports_op()). */
#define DEVICE_OP(type, name, parameters, arguments) type(*name) parameters;
#include "engine/device_ops.def"
    void (*close)(device *dev); /* backend teardown, called by device_close() */
} device_ops;

/* The CPU backend's constructor (src/engine/device_cpu.c); used by device.c only. */
ddt_status device_cpu_open(device *dev);
/* The CUDA backend's constructor and device count (src/engine/cuda/, built into the plugin
 * libddtrain_cuda.so); device.c finds them with dlsym(). */
ddt_status device_cuda_open(device *dev);
int device_cuda_count(void);

#endif
