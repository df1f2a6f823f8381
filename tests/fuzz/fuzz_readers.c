/* fuzz_readers.c - a libFuzzer target for ddtrain's readers of untrusted HDF5: the dataset
 * reader (dataset_open_with_params over an in-memory file image, then reads of the first and
 * last rows and a few scattered ones, as training and info do) and the model-file reader
 * (spec, shapes and storage, then the parameters, as eval and --init do), each over the same
 * input bytes held in memory through HDF5's core driver.
 *
 * Built by tests/fuzz/run.sh with clang -fsanitize=fuzzer,address,undefined (CI runs it for
 * a bounded time), and into the plain replay test (tests/test_io_fuzz_replay.c), which runs
 * every file of the regression corpus through the same function under the crash guard.
 * Allocations follow the file's claims only up to FUZZ_MAX_FLOATS, so an input cannot make
 * the target itself run out of memory.
 */
#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "io/dataset.h"
#include "io/hdf5_lock.h"
#include "io/model_file.h"

/* Most floats the target allocates for one read. */
#define FUZZ_MAX_FLOATS ((size_t)1 << 22)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads `count` rows from `first` with buffers sized to them, if they fit the cap. */
static void read_range(dataset *ds, int64_t first, int64_t count) {
    const dataset_geometry *g = dataset_get_geometry(ds);
    if (count <= 0 || (size_t)count * (size_t)g->features > FUZZ_MAX_FLOATS ||
        (size_t)count * (size_t)g->target_width > FUZZ_MAX_FLOATS)
        return;
    float *features = malloc((size_t)count * (size_t)g->features * sizeof *features);
    int32_t *labels = malloc((size_t)count * sizeof *labels);
    float *targets = malloc((size_t)count * (size_t)g->target_width * sizeof *targets);
    if (features && labels && targets)
        (void)dataset_read_range(ds, first, (int)count, features, labels, targets);
    free(targets);
    free(labels);
    free(features);
}

static void fuzz_dataset(const uint8_t *data, size_t size) {
    dataset_open_params params = dataset_default_open_params();
    params.file_image = data;
    params.file_image_size = size;
    dataset *ds = NULL;
    if (dataset_open_with_params("fuzz-input.h5", &params, &ds) != DDT_OK) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    int64_t head = g->rows < 64 ? g->rows : 64;
    read_range(ds, 0, head);
    read_range(ds, g->rows - head, head);
    /* Scattered rows, one read each, as dataset_read_rows does for small batches. */
    if (g->rows > 0 && (size_t)g->features * 4 <= FUZZ_MAX_FLOATS &&
        (size_t)g->target_width * 4 <= FUZZ_MAX_FLOATS) {
        int64_t rows[4] = {0, g->rows / 3, g->rows / 2, g->rows - 1};
        int count = 1;
        for (int i = 1; i < 4; i++)
            if (rows[i] > rows[count - 1]) rows[count++] = rows[i];
        float features[4 * 1024], targets[4 * 1024];
        int32_t labels[4];
        if (g->features <= 1024 && g->target_width <= 1024)
            (void)dataset_read_rows(ds, rows, count, features, labels, targets);
        (void)dataset_set_chunk_cache(ds, 0);
        read_range(ds, 0, head);
    }
    dataset_close(ds);
}

/* As model_file_read_spec() and model_file_read_parameters() do, over the in-memory file. */
static void fuzz_model_file(const uint8_t *data, size_t size) {
    hdf5_lock_acquire();
    hdf5_lock_mark_reading("fuzz-model.h5");
    hid_t access_list = H5Pcreate(H5P_FILE_ACCESS);
    hid_t file = H5I_INVALID_HID;
    if (access_list >= 0 && H5Pset_fapl_core(access_list, 1 << 16, 0) >= 0 &&
        H5Pset_file_image(access_list, (void *)data, size) >= 0)
        file = H5Fopen("fuzz-model.h5", H5F_ACC_RDONLY, access_list);
    if (access_list >= 0) H5Pclose(access_list);
    model_spec spec;
    if (file >= 0 && model_file_read_spec_contents(file, "fuzz-model.h5", &spec) == DDT_OK) {
        size_t count = model_spec_state_count(&spec);
        float *params =
            count <= FUZZ_MAX_FLOATS ? malloc((count ? count : 1) * sizeof *params) : NULL;
        if (params) (void)model_file_read_parameters_contents(file, "fuzz-model.h5", &spec, params);
        free(params);
    }
    if (file >= 0) H5Fclose(file);
    hdf5_lock_release();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_dataset(data, size);
    fuzz_model_file(data, size);
    return 0;
}
