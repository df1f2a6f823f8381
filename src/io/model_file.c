/* model_file.c - trained models as HDF5 files that h5py and PyTorch read directly.
 *
 * Reading is two steps so that nothing the file claims is allocated before the caller has
 * planned for it: the spec and every layer's shape and storage are checked without reading
 * a value, then the values are read into the caller's memory. */
#include "io/model_file.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/hdf5_lock.h"
#include "io/hdf5_storage.h"
#include "util/files.h"

static void directory_of(const char *path, char *out, size_t size) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, size, ".");
    else if (slash == path)
        snprintf(out, size, "/");
    else
        snprintf(out, size, "%.*s", (int)(slash - path), path);
}

ddt_status model_file_check_writable(const char *path) {
    if (!path || !*path) return ddt_error(DDT_ERR_USAGE, "no model file path given");
    size_t length = strlen(path);
    struct stat info;
    if (path[length - 1] == '/' || (stat(path, &info) == 0 && S_ISDIR(info.st_mode)))
        return ddt_error(DDT_ERR_IO, "%s: cannot write the model: Is a directory", path);
    /* /dev/null, a FIFO: written through in place (util/files.h), its directory untouched. */
    if (file_output_is_stream(path)) return DDT_OK;
    /* A symbolic link is followed: the file it points to is replaced, beside itself. */
    char resolved[PATH_MAX];
    struct stat link_info;
    const char *where = path;
    if (lstat(path, &link_info) == 0 && S_ISLNK(link_info.st_mode) && realpath(path, resolved))
        where = resolved;
    char directory[4096];
    directory_of(where, directory, sizeof directory);
    if (stat(directory, &info) != 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot write the model: directory %s: %s", path,
                         directory, strerror(errno));
    if (!S_ISDIR(info.st_mode))
        return ddt_error(DDT_ERR_IO, "%s: cannot write the model: %s is not a directory", path,
                         directory);
    /* The file is replaced by rename, so only the directory's permissions matter. */
    if (access(directory, W_OK | X_OK) != 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot write the model: directory %s: %s", path,
                         directory, strerror(errno));
    return DDT_OK;
}

static ddt_status hdf5_failure(const char *path, const char *what) {
    char detail[256];
    return ddt_error(DDT_ERR_IO, "%s: %s failed (HDF5: %s)", path, what,
                     hdf5_error_detail(detail, sizeof detail));
}

static herr_t write_dataset(hid_t group, const char *name, int rank, const hsize_t *dims,
                            hid_t file_type, hid_t memory_type, const void *data) {
    hid_t space = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dataset = H5Dcreate2(group, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t result = -1;
    if (dataset >= 0) {
        result = H5Dwrite(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
        if (H5Dclose(dataset) < 0) result = -1;
    }
    H5Sclose(space);
    return result;
}

ddt_status model_file_write_contents(hid_t file, const char *path, const model_spec *spec,
                                     const float *state) {
    /* Variable-length UTF-8: h5py returns it as str (fixed-length strings come back as
     * bytes). */
    hid_t string_type = H5Tcopy(H5T_C_S1);
    H5Tset_size(string_type, H5T_VARIABLE);
    H5Tset_cset(string_type, H5T_CSET_UTF8);
    hid_t scalar = H5Screate(H5S_SCALAR);
    hid_t attribute = H5Acreate2(file, "model", string_type, scalar, H5P_DEFAULT, H5P_DEFAULT);
    const char *text = spec->text;
    herr_t written = attribute < 0 ? -1 : H5Awrite(attribute, string_type, &text);
    if (attribute >= 0) H5Aclose(attribute);
    H5Sclose(scalar);
    H5Tclose(string_type);
    if (written < 0) return hdf5_failure(path, "writing the model attribute");

    const float *buffers = state + spec->parameter_count;
    for (int i = 0; i < spec->tensor_count; i++) {
        const model_tensor *t = &spec->tensors[i];
        hsize_t dims[4];
        for (int d = 0; d < t->rank; d++)
            dims[d] = (hsize_t)t->dims[d];
        const float *values = (t->is_buffer ? buffers : state) + t->offset;
        herr_t result;
        if (t->is_counter) {
            int64_t count = (int64_t)values[0];
            result = write_dataset(file, t->name, 0, dims, H5T_STD_I64LE, H5T_NATIVE_INT64, &count);
        } else {
            result = write_dataset(file, t->name, t->rank, dims, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT,
                                   values);
        }
        if (result < 0) {
            char what[128];
            snprintf(what, sizeof what, "writing %s", t->name);
            return hdf5_failure(path, what);
        }
    }
    return DDT_OK;
}

typedef struct save_arguments {
    const model_spec *spec;
    const float *params;
} save_arguments;

static ddt_status write_saved_model(int64_t file, const char *path, const void *context) {
    const save_arguments *arguments = context;
    return model_file_write_contents(file, path, arguments->spec, arguments->params);
}

ddt_status model_file_save(const char *path, const model_spec *spec, const float *host_params) {
    DDT_CHECK(model_file_check_writable(path));
    char temp_path[4096 + 32];
    if (strlen(path) >= 4096) return ddt_error(DDT_ERR_USAGE, "%.80s...: path too long", path);
    file_temp_path(path, temp_path, sizeof temp_path);
    save_arguments arguments = {spec, host_params};
    uint64_t data = model_spec_state_count(spec) * sizeof(float) + strlen(spec->text) +
                    (uint64_t)spec->tensor_count * 256; /* names and headers */
    DDT_CHECK(hdf5_write_temporary(temp_path, path, hdf5_reserve_estimate(data), write_saved_model,
                                   &arguments));
    return file_publish(temp_path, path);
}

/* Reads the root "model" attribute, fixed- or variable-length, into `out`. */
static ddt_status read_spec_text(hid_t file, const char *path, char *out, size_t size) {
    if (H5Aexists(file, "model") <= 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: no \"model\" attribute (not a ddtrain model file?)",
                         path);
    hid_t attribute = H5Aopen(file, "model", H5P_DEFAULT);
    if (attribute < 0) return hdf5_failure(path, "opening the model attribute");
    hid_t type = H5Aget_type(attribute);
    hid_t space = H5Aget_space(attribute);
    ddt_status status = DDT_OK;
    if (H5Tget_class(type) != H5T_STRING || H5Sget_simple_extent_npoints(space) != 1) {
        status =
            ddt_error(DDT_ERR_FORMAT, "%s: the \"model\" attribute is not a single string", path);
    } else if (H5Tis_variable_str(type) > 0) {
        hid_t memory_type = H5Tcopy(H5T_C_S1);
        H5Tset_size(memory_type, H5T_VARIABLE);
        H5Tset_cset(memory_type, H5Tget_cset(type));
        char *text = NULL;
        if (H5Aread(attribute, memory_type, &text) < 0 || !text) {
            status = hdf5_failure(path, "reading the model attribute");
        } else {
            snprintf(out, size, "%s", text);
            H5free_memory(text);
        }
        H5Tclose(memory_type);
    } else {
        size_t length = H5Tget_size(type);
        char *text = calloc(1, length + 1);
        hid_t memory_type = H5Tcopy(type);
        if (!text) {
            status = ddt_error(DDT_ERR_MEMORY, "%s: out of memory", path);
        } else if (H5Aread(attribute, memory_type, text) < 0) {
            status = hdf5_failure(path, "reading the model attribute");
        } else {
            snprintf(out, size, "%s", text);
        }
        H5Tclose(memory_type);
        free(text);
    }
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(attribute);
    return status;
}

/* Where tensor t lives in the file: its state_dict name, or, in files written before
 * models had named tensors (an MLP's dense_<i>/weight and dense_<i>/bias), that. */
static void member_name(const model_spec *spec, int t, bool legacy, char *out, size_t size) {
    const model_tensor *tensor = &spec->tensors[t];
    if (!legacy) {
        snprintf(out, size, "%s", tensor->name);
        return;
    }
    for (int n = 0; n < spec->node_count; n++) {
        const model_node *node = &spec->nodes[n];
        if (t >= node->first_tensor && t < node->first_tensor + node->tensor_count) {
            snprintf(out, size, "dense_%d/%s", node->parameter_ordinal,
                     t == node->first_tensor ? "weight" : "bias");
            return;
        }
    }
    snprintf(out, size, "%s", tensor->name);
}

/* Opens tensor t's dataset into *out, checked: a number dataset of exactly the tensor's shape
 * whose storage holds every value (hdf5_storage.h). Reads no value. */
static ddt_status open_tensor(hid_t file, const char *path, const model_spec *spec, int t,
                              bool legacy, hid_t *out) {
    *out = H5I_INVALID_HID;
    const model_tensor *tensor = &spec->tensors[t];
    char member[MODEL_TENSOR_MAX_NAME + 32];
    member_name(spec, t, legacy, member, sizeof member);
    char group[MODEL_TENSOR_MAX_NAME + 32];
    snprintf(group, sizeof group, "%s", member);
    char *slash = strchr(group, '/');
    if (slash) *slash = '\0';
    if ((slash && H5Lexists(file, group, H5P_DEFAULT) <= 0) ||
        H5Lexists(file, member, H5P_DEFAULT) <= 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: no %s (the model \"%s\" has it)", path, member,
                         spec->text);
    H5O_info_t info;
    if (H5Oget_info_by_name(file, member, &info, H5P_DEFAULT) < 0 || info.type != H5O_TYPE_DATASET)
        return ddt_error(DDT_ERR_FORMAT, "%s: %s is not a dataset", path, member);
    hid_t dataset = H5Dopen2(file, member, H5P_DEFAULT);
    if (dataset < 0) return ddt_error(DDT_ERR_FORMAT, "%s: %s is not a dataset", path, member);
    hid_t type = H5Dget_type(dataset);
    hid_t space = H5Dget_space(dataset);
    int file_rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    hsize_t dims[H5S_MAX_RANK] = {0};
    if (file_rank > 0) H5Sget_simple_extent_dims(space, dims, NULL);
    H5T_class_t class = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    bool number = tensor->is_counter ? (class == H5T_INTEGER || class == H5T_FLOAT)
                                     : class == H5T_FLOAT;
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    ddt_status status = DDT_OK;
    bool shape_ok = file_rank == tensor->rank;
    for (int d = 0; shape_ok && d < tensor->rank; d++)
        shape_ok = dims[d] == (hsize_t)tensor->dims[d];
    if (!number) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: %s is not %s", path, member,
                           tensor->is_counter ? "a number" : "floating point");
    } else if (!shape_ok) {
        char have[128] = "", need[64] = "";
        size_t used = 0;
        if (file_rank <= 0) snprintf(have, sizeof have, "a scalar");
        for (int d = 0; d < file_rank && used < sizeof have; d++)
            used += (size_t)snprintf(have + used, sizeof have - used, "%s%llu", d ? "x" : "",
                                     (unsigned long long)dims[d]);
        used = 0;
        if (tensor->rank == 0) snprintf(need, sizeof need, "a scalar");
        for (int d = 0; d < tensor->rank; d++)
            used += (size_t)snprintf(need + used, sizeof need - used, "%s%d", d ? "x" : "",
                                     tensor->dims[d]);
        status = ddt_error(DDT_ERR_FORMAT, "%s: %s is %s, the model \"%s\" needs %s", path, member,
                           have, spec->text, need);
    } else {
        char where[4200];
        snprintf(where, sizeof where, "%.4000s: %s", path, member);
        storage_rules rules = {.allow_external = false, .external_hint = NULL};
        status = hdf5_check_storage(dataset, where, &rules);
    }
    if (status != DDT_OK) {
        H5Dclose(dataset);
        return status;
    }
    *out = dataset;
    return DDT_OK;
}

/* Files from before named tensors: an MLP's dense_<i> groups. */
static bool legacy_layout(hid_t file, const model_spec *spec) {
    return spec->tensor_count > 0 && H5Lexists(file, spec->tensors[0].name, H5P_DEFAULT) <= 0 &&
           H5Lexists(file, "dense_0", H5P_DEFAULT) > 0;
}

ddt_status model_file_read_spec_contents(hid_t file, const char *path, model_spec *spec) {
    char text[MODEL_SPEC_MAX_TEXT * 2];
    DDT_CHECK(read_spec_text(file, path, text, sizeof text));
    if (model_spec_parse_stored(text, spec) != DDT_OK) {
        char reason[1024];
        snprintf(reason, sizeof reason, "%s", ddt_error_message());
        return ddt_error(DDT_ERR_FORMAT, "%s: bad model spec \"%s\": %s", path, text, reason);
    }
    bool legacy = legacy_layout(file, spec);
    if (legacy) {
        int dense = 0;
        for (int n = 0; n < spec->node_count; n++)
            if (spec->nodes[n].parameter_ordinal >= 0) {
                if (spec->nodes[n].kind != NODE_DENSE)
                    return ddt_error(DDT_ERR_FORMAT,
                                     "%s: has dense_<i> groups, which only MLPs were saved as, "
                                     "but the model \"%s\" is not one",
                                     path, spec->text);
                dense++;
            }
        char extra[32];
        snprintf(extra, sizeof extra, "dense_%d", dense);
        if (H5Lexists(file, extra, H5P_DEFAULT) > 0)
            return ddt_error(DDT_ERR_FORMAT,
                             "%s: has %s but the model \"%s\" has only %d dense layers", path,
                             extra, spec->text, dense);
    }
    for (int t = 0; t < spec->tensor_count; t++) {
        hid_t dataset;
        DDT_CHECK(open_tensor(file, path, spec, t, legacy, &dataset));
        H5Dclose(dataset);
    }
    return DDT_OK;
}

ddt_status model_file_read_parameters_contents(hid_t file, const char *path, const model_spec *spec,
                                               float *state) {
    /* The file may have changed since its spec was read and planned for. */
    model_spec *now = malloc(sizeof *now);
    if (!now) return ddt_error(DDT_ERR_MEMORY, "%s: out of host memory", path);
    ddt_status status = model_file_read_spec_contents(file, path, now);
    if (status == DDT_OK && strcmp(now->text, spec->text) != 0)
        status = ddt_error(DDT_ERR_FORMAT,
                           "%s: holds model \"%s\" now, but \"%s\" when it was first read (was "
                           "it replaced meanwhile?)",
                           path, now->text, spec->text);
    free(now);
    DDT_CHECK(status);
    bool legacy = legacy_layout(file, spec);
    float *buffers = state + spec->parameter_count;
    for (int t = 0; t < spec->tensor_count; t++) {
        const model_tensor *tensor = &spec->tensors[t];
        float *out = (tensor->is_buffer ? buffers : state) + tensor->offset;
        hid_t dataset;
        DDT_CHECK(open_tensor(file, path, spec, t, legacy, &dataset));
        herr_t read;
        if (tensor->is_counter) {
            int64_t count = 0;
            read = H5Dread(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &count);
            out[0] = (float)count;
        } else {
            read = H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
        }
        H5Dclose(dataset);
        char member[MODEL_TENSOR_MAX_NAME + 32];
        member_name(spec, t, legacy, member, sizeof member);
        if (read < 0) {
            char detail[256];
            return ddt_error(DDT_ERR_IO, "%s: cannot read %s (HDF5: %s)", path, member,
                             hdf5_error_detail(detail, sizeof detail));
        }
        for (size_t k = 0; k < tensor->count; k++)
            if (!isfinite(out[k]))
                return ddt_error(DDT_ERR_DATA, "%s: %s has a non-finite value at index %zu", path,
                                 member, k);
    }
    return DDT_OK;
}

/* What read_model_file() reads: the spec into spec_out, or (spec_out NULL) the parameters
 * of `spec` into host_params. */
typedef struct model_reader {
    model_spec *spec_out;
    const model_spec *spec;
    float *host_params;
} model_reader;

/* Opens `path` read-only with the HDF5 lock held, reads what `reader` asks, closes it. */
static ddt_status read_model_file(const char *path, const model_reader *reader) {
    DDT_CHECK(hdf5_check_readable(path));
    hdf5_lock_acquire();
    hdf5_lock_mark_reading(path);
    ddt_status status = DDT_OK;
    if (H5Fis_hdf5(path) <= 0) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: not an HDF5 file", path);
    } else {
        hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (file < 0) {
            status = hdf5_failure(path, "opening");
        } else {
            status = reader->spec_out
                         ? model_file_read_spec_contents(file, path, reader->spec_out)
                         : model_file_read_parameters_contents(file, path, reader->spec,
                                                               reader->host_params);
            hdf5_file_close(file);
        }
    }
    hdf5_lock_release();
    return status;
}

ddt_status model_file_read_spec(const char *path, model_spec *spec) {
    model_reader reader = {.spec_out = spec};
    return read_model_file(path, &reader);
}

ddt_status model_file_read_parameters(const char *path, const model_spec *spec,
                                      float *host_params) {
    model_reader reader = {.spec = spec, .host_params = host_params};
    return read_model_file(path, &reader);
}

ddt_status model_file_load(const char *path, model_spec *spec, float **host_params) {
    *host_params = NULL;
    DDT_CHECK(model_file_read_spec(path, spec));
    size_t count = model_spec_state_count(spec);
    float *params = malloc((count ? count : 1) * sizeof *params);
    if (!params)
        return ddt_error(DDT_ERR_MEMORY, "%s: out of memory for %zu parameters", path, count);
    ddt_status status = model_file_read_parameters(path, spec, params);
    if (status != DDT_OK) {
        free(params);
        return status;
    }
    *host_params = params;
    return DDT_OK;
}
