/* dataset_writer.c - writes ddtrain HDF5 datasets block by block, published atomically. */
#include "io/dataset_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/hdf5_lock.h"
#include "util/checked.h"
#include "util/files.h"

#define DATASET_FORMAT_VERSION 1
#define DATASET_CHUNK_TARGET_BYTES (1 << 20)
#define DATASET_TOKEN_CHUNK 65536

struct dataset_writer {
    char *path;
    char *temp_path;
    dataset_kind kind;
    int64_t rows;
    int features;
    int feature_rank; /* of /features: 2 or 4 */
    hsize_t feature_dims[4];
    bool class_labels;
    int target_width;
    int vocab_size;
    int64_t written;
    hid_t file;
    hid_t features_dataset;
    hid_t labels_dataset;
};

static ddt_status hdf5_failure(const char *path, const char *what) {
    char detail[256];
    return ddt_error(DDT_ERR_IO, "%s: %s failed (HDF5: %s)", path, what,
                     hdf5_error_detail(detail, sizeof detail));
}

static ddt_status check_params(const char *path, const dataset_writer_params *p) {
    if (p->rows < 0) return ddt_error(DDT_ERR_USAGE, "%s: negative row count", path);
    if (p->chunk_rows < 0) return ddt_error(DDT_ERR_USAGE, "%s: negative chunk rows", path);
    if (p->compression < 0 || p->compression > 9)
        return ddt_error(DDT_ERR_USAGE, "%s: compression level %d outside 0-9", path,
                         p->compression);
    if (p->kind == DATASET_KIND_TOKENS) {
        if (p->vocab_size < 1)
            return ddt_error(DDT_ERR_USAGE, "%s: tokens need a vocab_size > 0", path);
        if (p->rows < 1) return ddt_error(DDT_ERR_USAGE, "%s: no tokens to write", path);
        return DDT_OK;
    }
    if (p->feature_rank != 0 && p->feature_rank != 1 && p->feature_rank != 3)
        return ddt_error(DDT_ERR_USAGE, "%s: feature rank %d (1 or 3)", path, p->feature_rank);
    if (p->feature_rank == 3 &&
        (p->feature_dims[0] < 1 || p->feature_dims[1] < 1 || p->feature_dims[2] < 1 ||
         (int64_t)p->feature_dims[0] * p->feature_dims[1] * p->feature_dims[2] != p->features))
        return ddt_error(DDT_ERR_USAGE, "%s: image shape %dx%dx%d does not make %d features", path,
                         p->feature_dims[0], p->feature_dims[1], p->feature_dims[2], p->features);
    if (p->features < 1)
        return ddt_error(DDT_ERR_USAGE, "%s: %d features, need at least 1", path, p->features);
    if (!p->class_labels && p->target_width < 1)
        return ddt_error(DDT_ERR_USAGE, "%s: target width %d, need at least 1", path,
                         p->target_width);
    if (p->classes < 0)
        return ddt_error(DDT_ERR_USAGE, "%s: negative class count %d", path, p->classes);
    if (p->class_labels && p->classes < 1)
        return ddt_error(DDT_ERR_USAGE, "%s: class labels need a class count > 0", path);
    for (int c = 0; p->class_names && c < p->classes; c++)
        if (!p->class_names[c])
            return ddt_error(DDT_ERR_USAGE, "%s: class name %d is missing", path, c);
    return DDT_OK;
}

static ddt_status write_int_attribute(hid_t location, const char *path, const char *name,
                                      int value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attribute = H5Acreate2(location, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t written = attribute < 0 ? -1 : H5Awrite(attribute, H5T_NATIVE_INT, &value);
    if (attribute >= 0) H5Aclose(attribute);
    H5Sclose(space);
    if (written < 0) return hdf5_failure(path, "writing an attribute");
    return DDT_OK;
}

static ddt_status write_string_attribute(hid_t file, const char *path, const char *name,
                                         const char *value) {
    /* Variable-length UTF-8 so h5py returns a str, not bytes. */
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attribute = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t written = attribute < 0 ? -1 : H5Awrite(attribute, type, &value);
    if (attribute >= 0) H5Aclose(attribute);
    H5Sclose(space);
    H5Tclose(type);
    if (written < 0) return hdf5_failure(path, "writing an attribute");
    return DDT_OK;
}

/* An array of variable-length UTF-8 strings (h5py reads a list of str). */
static ddt_status write_names_attribute(hid_t location, const char *path, const char *name,
                                        const char *const *values, int count) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hsize_t dims = (hsize_t)count;
    hid_t space = H5Screate_simple(1, &dims, NULL);
    hid_t attribute = H5Acreate2(location, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t written = attribute < 0 ? -1 : H5Awrite(attribute, type, values);
    if (attribute >= 0) H5Aclose(attribute);
    H5Sclose(space);
    H5Tclose(type);
    if (written < 0) return hdf5_failure(path, "writing the class names");
    return DDT_OK;
}

/* A dataset of `rank` dimensions: rows, then dims[1..rank) of `dims`; chunks of chunk_rows
 * whole rows. */
static hid_t create_dataset(hid_t file, const char *name, hid_t type, int rank,
                            const hsize_t *shape, int64_t chunk_rows, int compression) {
    hsize_t dims[4], chunk[4];
    for (int i = 0; i < rank; i++)
        dims[i] = chunk[i] = shape[i];
    chunk[0] = (hsize_t)chunk_rows;
    int64_t rows = (int64_t)dims[0];
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    /* A fixed-size chunked dataset cannot have 0 rows (chunks must fit), so empty stays
     * contiguous. */
    if (rows > 0) {
        H5Pset_chunk(create, rank, chunk);
        if (compression > 0) H5Pset_deflate(create, (unsigned)compression);
    }
    hid_t dataset = H5Dcreate2(file, name, type, space, H5P_DEFAULT, create, H5P_DEFAULT);
    H5Pclose(create);
    H5Sclose(space);
    return dataset;
}

/* The file's values would take more than 2^63 bytes: no file system holds them. */
static ddt_status too_large(const char *path, int64_t rows, uint64_t row_bytes) {
    return ddt_error(DDT_ERR_IO,
                     "%s: %" PRId64 " rows of %" PRIu64 " bytes are more than 2^63 bytes: no file "
                     "system holds them",
                     path, rows, row_bytes);
}

/* /tokens, uint16 when the ids fit, with its vocab_size. Call with the lock held. */
static ddt_status create_tokens(dataset_writer *w, const dataset_writer_params *params) {
    const char *path = w->path;
    bool narrow = params->vocab_size <= 65536;
    size_t bytes;
    if (!checked_multiply_size((size_t)params->rows, narrow ? 2 : 4, &bytes) || bytes > INT64_MAX)
        return too_large(path, params->rows, narrow ? 2 : 4);
    DDT_CHECK(hdf5_reserve(w->file, path, hdf5_reserve_estimate(bytes)));
    int64_t chunk = params->chunk_rows ? params->chunk_rows : DATASET_TOKEN_CHUNK;
    if (chunk > params->rows) chunk = params->rows;
    hsize_t shape[1] = {(hsize_t)params->rows};
    w->features_dataset = create_dataset(w->file, "tokens", narrow ? H5T_STD_U16LE : H5T_STD_I32LE,
                                         1, shape, chunk, params->compression);
    if (w->features_dataset < 0) return hdf5_failure(path, "creating /tokens");
    return write_int_attribute(w->features_dataset, path, "vocab_size", params->vocab_size);
}

/* /features (flat or image-shaped), /labels and their attributes. Call with the lock held. */
static ddt_status create_features(dataset_writer *w, const dataset_writer_params *params) {
    const char *path = w->path;
    /* The whole file's room up front (uncompressed size: compression only needs less), so a
     * full disk is refused now, with the numbers, not halfway through the rows. */
    uint64_t row_bytes = 4 * ((uint64_t)params->features +
                              (params->class_labels ? 1 : (uint64_t)params->target_width));
    size_t bytes; /* 2^61 rows of 8 bytes wrapped to a few KB, and the disk check passed */
    if (!checked_multiply_size((size_t)params->rows, row_bytes, &bytes) || bytes > INT64_MAX)
        return too_large(path, params->rows, row_bytes);
    DDT_CHECK(hdf5_reserve(w->file, path, hdf5_reserve_estimate(bytes)));
    int64_t chunk_rows = params->chunk_rows;
    if (chunk_rows == 0) chunk_rows = DATASET_CHUNK_TARGET_BYTES / ((int64_t)params->features * 4);
    if (chunk_rows > params->rows) chunk_rows = params->rows;
    if (chunk_rows < 1) chunk_rows = 1;

    w->features_dataset = create_dataset(w->file, "features", H5T_IEEE_F32LE, w->feature_rank,
                                         w->feature_dims, chunk_rows, params->compression);
    if (w->features_dataset < 0) return hdf5_failure(path, "creating /features");
    hsize_t label_shape[2] = {(hsize_t)params->rows, (hsize_t)params->target_width};
    if (params->class_labels)
        w->labels_dataset = create_dataset(w->file, "labels", H5T_STD_I32LE, 1, label_shape,
                                           chunk_rows, params->compression);
    else
        w->labels_dataset = create_dataset(w->file, "labels", H5T_IEEE_F32LE, 2, label_shape,
                                           chunk_rows, params->compression);
    if (w->labels_dataset < 0) return hdf5_failure(path, "creating /labels");
    if (params->classes > 0)
        DDT_CHECK(write_int_attribute(w->file, path, "num_classes", params->classes));
    if (params->class_labels && params->class_names)
        DDT_CHECK(write_names_attribute(w->labels_dataset, path, "class_names", params->class_names,
                                        params->classes));
    return DDT_OK;
}

ddt_status dataset_writer_open(const char *path, const dataset_writer_params *params,
                               dataset_writer **out) {
    *out = NULL;
    DDT_CHECK(check_params(path, params));
    struct stat info;
    if (stat(path, &info) == 0 && S_ISDIR(info.st_mode))
        return ddt_error(DDT_ERR_IO, "%s: cannot create: Is a directory", path);

    dataset_writer *w = calloc(1, sizeof *w);
    if (!w) return ddt_error(DDT_ERR_MEMORY, "%s: out of memory", path);
    w->file = w->features_dataset = w->labels_dataset = H5I_INVALID_HID;
    size_t temp_size = strlen(path) + PATH_MAX + 32; /* file_temp_path may pick another place */
    w->path = strdup(path);
    w->temp_path = malloc(temp_size);
    if (!w->path || !w->temp_path) {
        free(w->path);
        free(w->temp_path);
        free(w);
        return ddt_error(DDT_ERR_MEMORY, "%s: out of memory", path);
    }
    file_temp_path(path, w->temp_path, temp_size);
    w->kind = params->kind;
    w->rows = params->rows;
    w->features = params->features;
    w->class_labels = params->class_labels;
    w->target_width = params->class_labels ? 1 : params->target_width;
    w->vocab_size = params->vocab_size;
    w->feature_dims[0] = (hsize_t)params->rows;
    if (params->feature_rank == 3) {
        w->feature_rank = 4;
        for (int i = 0; i < 3; i++)
            w->feature_dims[i + 1] = (hsize_t)params->feature_dims[i];
    } else {
        w->feature_rank = 2;
        w->feature_dims[1] = (hsize_t)params->features;
    }

    /* Creating the file with open() first gives the user errno's words ("Permission
     * denied") instead of HDF5's generic failure. Registered first, so a signal at any point
     * from here on removes it (util/files.h). */
    ddt_status created = file_temp_register(w->temp_path);
    int fd = -1;
    if (created == DDT_OK && (fd = open(w->temp_path, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0) {
        created = ddt_error(DDT_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        file_temp_forget(w->temp_path);
    }
    if (created != DDT_OK) {
        free(w->path);
        free(w->temp_path);
        free(w);
        return created;
    }
    close(fd);

    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    w->file = H5Fcreate(w->temp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0) {
        status = hdf5_failure(path, "creating the HDF5 file");
        goto fail;
    }
    if (params->kind == DATASET_KIND_TOKENS)
        DDT_CHECK_GOTO(create_tokens(w, params), status, fail);
    else
        DDT_CHECK_GOTO(create_features(w, params), status, fail);
    if (params->source)
        DDT_CHECK_GOTO(write_string_attribute(w->file, path, "source", params->source), status,
                       fail);
    DDT_CHECK_GOTO(write_int_attribute(w->file, path, "ddtrain_format", DATASET_FORMAT_VERSION),
                   status, fail);
    hdf5_lock_release();
    *out = w;
    return DDT_OK;

fail:
    hdf5_lock_release();
    dataset_writer_abort(w);
    return status;
}

/* Writes rows [first, first + count) of a dataset of `rank` dimensions whose rows have the
 * shape dims[1..rank). */
static herr_t write_rows(hid_t dataset, hid_t memory_type, int64_t first, int64_t count, int rank,
                         const hsize_t *dims, const void *data) {
    hsize_t start[4] = {(hsize_t)first, 0, 0, 0};
    hsize_t extent[4] = {(hsize_t)count, 0, 0, 0};
    for (int i = 1; i < rank; i++)
        extent[i] = dims[i];
    hid_t file_space = H5Dget_space(dataset);
    hid_t memory_space = H5Screate_simple(rank, extent, NULL);
    herr_t result = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, extent, NULL);
    if (result >= 0)
        result = H5Dwrite(dataset, memory_type, memory_space, file_space, H5P_DEFAULT, data);
    H5Sclose(memory_space);
    H5Sclose(file_space);
    return result;
}

ddt_status dataset_writer_append(dataset_writer *w, int count, const float *features,
                                 const int32_t *labels, const float *targets) {
    if (count < 0) return ddt_error(DDT_ERR_INTERNAL, "%s: negative append count", w->path);
    if (count > w->rows - w->written)
        return ddt_error(DDT_ERR_INTERNAL,
                         "%s: appending %d rows after %lld would exceed the declared %lld rows",
                         w->path, count, (long long)w->written, (long long)w->rows);
    if (count == 0) return DDT_OK;
    if (w->kind == DATASET_KIND_TOKENS)
        return ddt_error(DDT_ERR_INTERNAL, "%s: rows appended to a token dataset", w->path);
    if (!features || (w->class_labels ? !labels : !targets))
        return ddt_error(DDT_ERR_INTERNAL, "%s: append needs features and %s", w->path,
                         w->class_labels ? "labels" : "targets");
    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    hsize_t target_dims[2] = {0, (hsize_t)w->target_width};
    if (write_rows(w->features_dataset, H5T_NATIVE_FLOAT, w->written, count, w->feature_rank,
                   w->feature_dims, features) < 0) {
        status = hdf5_failure(w->path, "writing /features");
    } else if (w->class_labels ? write_rows(w->labels_dataset, H5T_NATIVE_INT32, w->written, count,
                                            1, target_dims, labels) < 0
                               : write_rows(w->labels_dataset, H5T_NATIVE_FLOAT, w->written, count,
                                            2, target_dims, targets) < 0) {
        status = hdf5_failure(w->path, "writing /labels");
    }
    hdf5_lock_release();
    if (status == DDT_OK) w->written += count;
    return status;
}

ddt_status dataset_writer_append_tokens(dataset_writer *w, int64_t count, const int32_t *ids) {
    if (w->kind != DATASET_KIND_TOKENS)
        return ddt_error(DDT_ERR_INTERNAL, "%s: tokens appended to a feature dataset", w->path);
    if (count < 0 || count > w->rows - w->written)
        return ddt_error(DDT_ERR_INTERNAL,
                         "%s: appending %lld ids after %lld would exceed the declared %lld",
                         w->path, (long long)count, (long long)w->written, (long long)w->rows);
    for (int64_t i = 0; i < count; i++)
        if ((uint32_t)ids[i] >= (uint32_t)w->vocab_size)
            return ddt_error(DDT_ERR_DATA, "%s: token %lld is %d, outside [0, %d) (vocab_size)",
                             w->path, (long long)(w->written + i), ids[i], w->vocab_size);
    if (count == 0) return DDT_OK;
    hdf5_lock_acquire();
    hsize_t dims[1] = {(hsize_t)w->rows};
    herr_t result =
        write_rows(w->features_dataset, H5T_NATIVE_INT32, w->written, count, 1, dims, ids);
    ddt_status status = result < 0 ? hdf5_failure(w->path, "writing /tokens") : DDT_OK;
    hdf5_lock_release();
    if (status == DDT_OK) w->written += count;
    return status;
}

static void free_writer(dataset_writer *w) {
    free(w->path);
    free(w->temp_path);
    free(w);
}

/* Checks, closes and flushes w's file; on success it stays under w->temp_path. Frees w's HDF5
 * handles, not w. */
static ddt_status finish_file(dataset_writer *w) {
    if (w->written != w->rows) {
        ddt_status status =
            ddt_error(DDT_ERR_INTERNAL, "%s: only %lld of the declared %lld rows were written",
                      w->path, (long long)w->written, (long long)w->rows);
        return status;
    }
    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    herr_t closed = w->labels_dataset >= 0 ? H5Dclose(w->labels_dataset) : 0;
    if (H5Dclose(w->features_dataset) < 0) closed = -1;
    w->labels_dataset = w->features_dataset = H5I_INVALID_HID;
    /* H5Fclose flushes; its failure (e.g. disk full) means the file is incomplete. */
    if (hdf5_file_close(w->file) < 0) closed = -1;
    w->file = H5I_INVALID_HID;
    if (closed < 0) status = hdf5_failure(w->path, "finishing the file");
    hdf5_lock_release();
    return status;
}

ddt_status dataset_writer_close(dataset_writer *w) {
    ddt_status status = finish_file(w);
    if (status != DDT_OK) {
        dataset_writer_abort(w);
        return status;
    }
    status = file_publish(w->temp_path, w->path);
    free_writer(w);
    return status;
}

ddt_status dataset_writer_close_unpublished(dataset_writer *w, char *temp_path, size_t size) {
    ddt_status status = finish_file(w);
    if (status == DDT_OK && (size_t)snprintf(temp_path, size, "%s", w->temp_path) >= size)
        status = ddt_error(DDT_ERR_INTERNAL, "%s: temporary path too long", w->path);
    if (status != DDT_OK) {
        dataset_writer_abort(w);
        return status;
    }
    free_writer(w);
    return DDT_OK;
}

void dataset_writer_abort(dataset_writer *w) {
    if (!w) return;
    hdf5_lock_acquire();
    if (w->labels_dataset >= 0) H5Dclose(w->labels_dataset);
    if (w->features_dataset >= 0) H5Dclose(w->features_dataset);
    if (w->file >= 0) hdf5_file_close(w->file);
    hdf5_lock_release();
    file_temp_remove(w->temp_path);
    free_writer(w);
}

void dataset_shard_path(const char *path, int index, int count, char *out, size_t out_size) {
    if (count == 1) {
        snprintf(out, out_size, "%s", path);
        return;
    }
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    /* A leading dot names a hidden file, not an extension. */
    if (!dot || dot == base) dot = base + strlen(base);
    snprintf(out, out_size, "%.*s-%05d-of-%05d%s", (int)(dot - path), path, index, count, dot);
}

int64_t dataset_writer_block_rows(int64_t features) {
    int64_t rows = (8 << 20) / ((features > 0 ? features : 1) * (int64_t)sizeof(float));
    return rows < 1 ? 1 : rows;
}

uint64_t dataset_writer_memory_bytes(const dataset_writer_params *params) {
    uint64_t chunk_bytes;
    if (params->kind == DATASET_KIND_TOKENS) {
        int64_t chunk = params->chunk_rows ? params->chunk_rows : DATASET_TOKEN_CHUNK;
        if (chunk > params->rows) chunk = params->rows;
        chunk_bytes = (uint64_t)(chunk > 0 ? chunk : 1) * 4;
    } else {
        int64_t features = params->features > 0 ? params->features : 1;
        int64_t chunk_rows = params->chunk_rows;
        if (chunk_rows == 0) chunk_rows = DATASET_CHUNK_TARGET_BYTES / (features * 4);
        if (chunk_rows > params->rows) chunk_rows = params->rows;
        if (chunk_rows < 1) chunk_rows = 1;
        chunk_bytes = (uint64_t)chunk_rows * (uint64_t)features * 4;
    }
    /* Two datasets' chunk caches (1 MiB each by default) and the 1 MiB conversion buffer; the
     * chunk HDF5 assembles, and with deflate its compressed copy (at most as large). Measured
     * for 1 x 4096 x 4096 rows (64 MiB chunks of one row), random pixels, beside a 64 MiB block:
     * 140 MiB peak without compression, 166 MiB with level 9 -- under the 147 and 211 MiB this
     * plans with the 16 MiB decoded image. */
    uint64_t fixed = (uint64_t)3 << 20;
    return fixed + chunk_bytes * (params->compression > 0 ? 2 : 1);
}
