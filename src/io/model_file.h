/* model_file.h - saving and loading trained models as HDF5.
 *
 * Layout, readable with h5py and loadable by name into the PyTorch module the spec means:
 *   root attribute "model": the canonical spec text (e.g. "784-256-relu-128-relu-10")
 *   one root dataset per tensor, named by its state_dict key ("0.weight", "0.bias",
 *   "transformer.h.0.attn.c_attn.weight", "3.running_mean"), float32 in PyTorch's shape;
 *   num_batches_tracked is an int64 scalar, as PyTorch keeps it.
 * Files written before models had named tensors (an MLP's /dense_<i>/weight and bias) are
 * still read.
 * Saving is atomic: a temporary file in the same directory, fsync, rename, fsync the
 * directory; an existing file is replaced only by a complete one.
 *
 * A model's state is exchanged as one host buffer: its parameters in the parameter layout,
 * then its buffers (model_spec_state_count() floats).
 *
 * Usage:
 *     DDT_CHECK(model_file_save("model.h5", &spec, host_params));
 *     model_spec spec;
 *     DDT_CHECK(model_file_read_spec("model.h5", &spec));   // small: nothing read yet
 *     ... check model_spec_parameter_count(&spec) against the memory plan, allocate ...
 *     DDT_CHECK(model_file_read_parameters("model.h5", &spec, params));
 */
#ifndef DDT_IO_MODEL_FILE_H
#define DDT_IO_MODEL_FILE_H

#include <stdint.h>

#include "engine/model.h"
#include "util/status.h"

/* Checks up front that `path` can be created (directory exists and is writable), so a run
 * can refuse an unwritable --save path before training. */
ddt_status model_file_check_writable(const char *path);

ddt_status model_file_save(const char *path, const model_spec *spec, const float *host_state);

/* Reads the spec of the model in `path` and checks the file against it, reading no parameter:
 * the root "model" attribute, a spec that parses, and for every tensor a float dataset of its
 * shape whose storage holds every value (no chunk left unwritten, nothing outside the file:
 * hdf5_storage.h). Allocates nothing that grows with the model, so a spec claiming 1M x 1M
 * layers costs nothing until the caller's memory plan has accepted it. Errors name the file:
 * missing, not HDF5, no "model" attribute, a bad spec, a missing, misshapen or unwritten
 * tensor. */
ddt_status model_file_read_spec(const char *path, model_spec *spec);

/* Reads the state of the model in `path`, whose spec model_file_read_spec() returned as
 * `spec`, into host_state: model_spec_state_count(spec) floats of the caller's. Checks
 * everything model_file_read_spec() does again (the file may have been replaced since), and
 * that every value is finite (DDT_ERR_DATA naming the tensor and index). */
ddt_status model_file_read_parameters(const char *path, const model_spec *spec, float *host_state);

/* Both steps, with *host_state malloc'ed for whatever the file's spec says (the caller frees
 * it): for tests and tools with small trusted models. Code that must plan memory first calls
 * the two steps itself. */
ddt_status model_file_load(const char *path, model_spec *spec, float **host_state);

/* For other io modules that embed a model in a file of their own (checkpoint.c), so that file
 * reads exactly like a saved model. `file` is an open HDF5 file (a hid_t, which is int64_t in
 * HDF5 >= 1.10; spelled so here to keep hdf5.h out of this header); the caller holds the HDF5
 * lock (hdf5_lock.h). `path` only names the file in messages. Write adds the "model" attribute
 * and the tensors; the reads are model_file_read_spec() and
 * model_file_read_parameters() on the open file. */
ddt_status model_file_write_contents(int64_t file, const char *path, const model_spec *spec,
                                     const float *host_state);
ddt_status model_file_read_spec_contents(int64_t file, const char *path, model_spec *spec);
ddt_status model_file_read_parameters_contents(int64_t file, const char *path,
                                               const model_spec *spec, float *host_state);

#endif
