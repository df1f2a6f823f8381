/* model_file.h - saving and loading trained models as HDF5.
 *
 * Layout, readable with h5py and loadable into PyTorch's nn.Linear as is:
 *   root attribute "model": the spec text (e.g. "784-256-relu-128-relu-10")
 *   /dense_<i>/weight  float32 (outputs, inputs)   for each dense layer i counted from 0
 *   /dense_<i>/bias    float32 (outputs)
 * Saving is atomic: a temporary file in the same directory, fsync, rename, fsync the
 * directory; an existing file is replaced only by a complete one.
 *
 * Parameters are exchanged as a host buffer in the model's parameter layout (model.h).
 *
 * Usage:
 *     DDT_CHECK(model_file_save("model.h5", &spec, host_params));
 *     model_spec spec; float *params;
 *     DDT_CHECK(model_file_load("model.h5", &spec, &params));   // free(params) afterwards
 */
#ifndef DDT_IO_MODEL_FILE_H
#define DDT_IO_MODEL_FILE_H

#include <stdint.h>

#include "engine/model.h"
#include "util/status.h"

/* Checks up front that `path` can be created (directory exists and is writable), so a run
 * can refuse an unwritable --save path before training. */
ddt_status model_file_check_writable(const char *path);

ddt_status model_file_save(const char *path, const model_spec *spec, const float *host_params);

/* Reads the spec and parameters; *host_params is malloc'ed, the caller frees it. Errors name
 * the file: missing, not HDF5, no "model" attribute, a bad spec, missing or misshapen layer. */
ddt_status model_file_load(const char *path, model_spec *spec, float **host_params);

/* For other io modules that embed a model in a file of their own (checkpoint.c), so that file
 * reads exactly like a saved model. `file` is an open HDF5 file (a hid_t, which is int64_t in
 * HDF5 >= 1.10; spelled so here to keep hdf5.h out of this header); the caller holds the HDF5
 * lock (hdf5_lock.h). `path` only names the file in messages. Write adds the "model" attribute
 * and the dense_<i> groups; read checks them as model_file_load() does and mallocs
 * *host_params (the caller frees it; NULL on failure). */
ddt_status model_file_write_contents(int64_t file, const char *path, const model_spec *spec,
                                     const float *host_params);
ddt_status model_file_read_contents(int64_t file, const char *path, model_spec *spec,
                                    float **host_params);

#endif
