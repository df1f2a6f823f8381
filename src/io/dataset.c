/* dataset.c - opens ddtrain HDF5 datasets (one file or many shards) and reads rows on demand.
 *
 * Every read is a regular hyperslab per shard: dataset_read_range() reads one per shard it
 * touches, dataset_read_rows() one per run of consecutive rows within a shard (HDF5 1.10 maps
 * an irregular selection, a union of runs, onto chunks element by element, which is far
 * slower). No rows are cached here: a streaming reader caches whole blocks itself (stream.c),
 * and dataset_set_chunk_cache() sizes HDF5's own chunk cache for /features. Values are
 * checked after the read, outside the lock.
 */
#include "io/dataset.h"

#include <errno.h>
#include <glob.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/hdf5_lock.h"
#include "io/hdf5_storage.h"
#include "util/checked.h"
#include "util/values.h"

#define DATASET_FORMAT_VERSION 1
/* More rows than any file holds; keeps sums over shards and row * width products far from
 * overflowing int64. */
#define DATASET_MAX_ROWS ((hsize_t)1 << 62)
/* What to do about refused external data, appended to the messages. */
#define DATASET_EXTERNAL_HINT "pass --allow-external-data if you trust this file"
/* Most hash slots dataset_set_chunk_cache() gives HDF5's chunk cache (8 bytes each). */
#define DATASET_MAX_CHUNK_CACHE_SLOTS ((size_t)1 << 20)

/* A list of class names (the class_names attribute). */
typedef struct name_list {
    char **names;
    int count;
} name_list;

typedef struct dataset_shard {
    char *path;
    int64_t first_row; /* global row of this shard's row 0 */
    int64_t rows;      /* rows (token datasets: windows) */
    int64_t tokens;    /* token datasets: ids in /tokens */
    hid_t file;
    hid_t features;       /* /features, or /tokens */
    hid_t labels;         /* /labels; none for tokens */
    hid_t features_space; /* file dataspaces, reused for every read's selection */
    hid_t labels_space;
    int features_rank;  /* of /features: 2 (N x D) or 4 (N x C x H x W) */
    int64_t chunk_rows; /* of /features (tokens: windows per chunk); 1 if contiguous */
    size_t chunk_bytes; /* of one /features (/tokens) chunk; 0 if contiguous */
} dataset_shard;

struct dataset {
    dataset_geometry geometry;
    int shard_count;
    dataset_shard *shards;
    int declared_classes;  /* num_classes or vocab_size as the files say; 0 if they do not */
    name_list class_names; /* the first shard's (all agree) */
};

/* ---------------------------------------------------------------------------------------- */
/* Opening                                                                                  */

static void type_name(hid_t type, char *out, size_t size) {
    H5T_class_t type_class = H5Tget_class(type);
    size_t bytes = H5Tget_size(type);
    switch (type_class) {
    case H5T_INTEGER:
        snprintf(out, size, "%s%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int", bytes * 8);
        return;
    case H5T_FLOAT:
        snprintf(out, size, "float%zu", bytes * 8);
        return;
    case H5T_STRING:
        snprintf(out, size, "string");
        return;
    case H5T_COMPOUND:
        snprintf(out, size, "compound");
        return;
    case H5T_ENUM:
        snprintf(out, size, "enum");
        return;
    case H5T_ARRAY:
        snprintf(out, size, "array");
        return;
    case H5T_VLEN:
        snprintf(out, size, "vlen");
        return;
    default:
        snprintf(out, size, "an unsupported type");
        return;
    }
}

static void shape_text(int rank, const hsize_t *dims, char *out, size_t size) {
    size_t used = 0;
    out[0] = '\0';
    if (rank == 0) snprintf(out, size, "scalar");
    for (int i = 0; i < rank && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%llu", i ? "x" : "",
                                 (unsigned long long)dims[i]);
}

/* Opens /name as a dataset; reports its type's class and size, rank and dims. External links
 * are refused unless allowed, and the storage behind the dataset is checked against its
 * shape (check_dataset_storage). */
static ddt_status open_member(dataset_shard *shard, const char *name,
                              const dataset_open_params *params, hid_t *handle, hid_t *type,
                              int *rank, hsize_t dims[H5S_MAX_RANK]) {
    htri_t exists = H5Lexists(shard->file, name, H5P_DEFAULT);
    if (exists <= 0)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: no /%s dataset (ddtrain needs /features and /labels, or /tokens)",
                         shard->path, name);
    /* Before anything follows the link: an external one opens another file. */
    H5L_info_t link;
    if (H5Lget_info(shard->file, name, &link, H5P_DEFAULT) < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot read the link /%s", shard->path, name);
    if (link.type == H5L_TYPE_EXTERNAL && !params->allow_external) {
        char value[4096] = "";
        const char *target_file = "?", *target_object = "?";
        unsigned flags = 0;
        if (link.u.val_size <= sizeof value &&
            H5Lget_val(shard->file, name, value, sizeof value, H5P_DEFAULT) >= 0)
            H5Lunpack_elink_val(value, link.u.val_size, &flags, &target_file, &target_object);
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: /%s is an external link to %s in '%s'; " HDF5_EXTERNAL_REFUSED
                         "; " DATASET_EXTERNAL_HINT,
                         shard->path, name, target_object, target_file);
    }
    if (link.type != H5L_TYPE_HARD && link.type != H5L_TYPE_SOFT && link.type != H5L_TYPE_EXTERNAL)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: /%s is a user-defined link, which ddtrain does not "
                         "follow",
                         shard->path, name);
    H5O_info_t info;
    if (H5Oget_info_by_name(shard->file, name, &info, H5P_DEFAULT) < 0 ||
        info.type != H5O_TYPE_DATASET)
        return ddt_error(DDT_ERR_FORMAT, "%s: /%s is not a dataset", shard->path, name);
    *handle = H5Dopen2(shard->file, name, H5P_DEFAULT);
    if (*handle < 0) {
        char detail[256];
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot open /%s (HDF5: %s)", shard->path, name,
                         hdf5_error_detail(detail, sizeof detail));
    }
    /* A soft link may lead through an external one: compare the files the objects are in. */
    H5O_info_t root;
    if (!params->allow_external &&
        (H5Oget_info2(*handle, &info, H5O_INFO_BASIC) < 0 ||
         H5Oget_info_by_name2(shard->file, "/", &root, H5O_INFO_BASIC, H5P_DEFAULT) < 0 ||
         info.fileno != root.fileno))
        return ddt_error(
            DDT_ERR_FORMAT,
            "%s: /%s lives in another file (reached through links); " HDF5_EXTERNAL_REFUSED
            "; " DATASET_EXTERNAL_HINT,
            shard->path, name);
    char where[4200];
    snprintf(where, sizeof where, "%s: /%s", shard->path, name);
    storage_rules rules = {.allow_external = params->allow_external,
                           .external_hint = DATASET_EXTERNAL_HINT};
    DDT_CHECK(hdf5_check_storage(*handle, where, &rules));
    *type = H5Dget_type(*handle);
    hid_t space = H5Dget_space(*handle);
    *rank = H5Sget_simple_extent_ndims(space);
    if (*rank > 0) H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    return DDT_OK;
}

static bool is_float32(hid_t type) {
    return H5Tget_class(type) == H5T_FLOAT && H5Tget_size(type) == 4;
}

/* Class ids may be stored as any integer type (h5py writes int64 by default); HDF5 converts
 * them to int32 as they are read (a value beyond int32 saturates, and then fails the range
 * check). */
static bool is_integer(hid_t type) {
    return H5Tget_class(type) == H5T_INTEGER;
}

static bool is_token_type(hid_t type) {
    if (H5Tget_class(type) != H5T_INTEGER) return false;
    size_t bytes = H5Tget_size(type);
    bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    return (bytes == 2 && !is_signed) || (bytes == 4 && is_signed);
}

/* Reads a single-integer attribute of `location` (described by `where` in messages).
 * *present is false if it does not exist. */
static ddt_status read_int_attribute(hid_t location, const char *where, const char *name,
                                     bool *present, long long *value) {
    *present = false;
    if (H5Aexists(location, name) <= 0) return DDT_OK;
    hid_t attribute = H5Aopen(location, name, H5P_DEFAULT);
    if (attribute < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot open attribute %s", where, name);
    hid_t type = H5Aget_type(attribute);
    hid_t space = H5Aget_space(attribute);
    bool integer = H5Tget_class(type) == H5T_INTEGER;
    hssize_t points = H5Sget_simple_extent_npoints(space);
    herr_t read = -1;
    if (integer && points == 1) read = H5Aread(attribute, H5T_NATIVE_LLONG, value);
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(attribute);
    if (read < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: attribute %s must be a single integer", where, name);
    *present = true;
    return DDT_OK;
}

static void name_list_free(name_list *list) {
    for (int i = 0; i < list->count; i++)
        free(list->names[i]);
    free(list->names);
    *list = (name_list){0};
}

/* Reads the string-array attribute `name` of `location` (variable-length strings, as h5py
 * writes a list of str, or fixed-length ones, as it writes numpy bytes). Absent: empty list. */
static ddt_status read_names_attribute(hid_t location, const char *where, const char *name,
                                       name_list *out) {
    *out = (name_list){0};
    if (H5Aexists(location, name) <= 0) return DDT_OK;
    ddt_status status = DDT_OK;
    hid_t attribute = H5Aopen(location, name, H5P_DEFAULT);
    hid_t type = attribute < 0 ? H5I_INVALID_HID : H5Aget_type(attribute);
    hid_t space = attribute < 0 ? H5I_INVALID_HID : H5Aget_space(attribute);
    hid_t memory_type = H5I_INVALID_HID;
    int rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    hssize_t points = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    if (type < 0 || H5Tget_class(type) != H5T_STRING || rank > 1 || points < 1 ||
        points > (1 << 20)) {
        status =
            ddt_error(DDT_ERR_FORMAT, "%s: attribute %s must be an array of strings", where, name);
        goto done;
    }
    out->names = calloc((size_t)points, sizeof *out->names);
    if (!out->names) {
        status = ddt_error(DDT_ERR_MEMORY, "%s: out of memory reading %s", where, name);
        goto done;
    }
    out->count = (int)points;
    memory_type = H5Tcopy(H5T_C_S1);
    H5Tset_cset(memory_type, H5Tget_cset(type)); /* HDF5 does not convert ASCII <-> UTF-8 */
    if (H5Tis_variable_str(type) > 0) {
        H5Tset_size(memory_type, H5T_VARIABLE);
        char **values = calloc((size_t)points, sizeof *values);
        if (!values || H5Aread(attribute, memory_type, values) < 0) {
            free(values);
            status = ddt_error(DDT_ERR_FORMAT, "%s: cannot read attribute %s", where, name);
            goto done;
        }
        for (hssize_t i = 0; i < points && status == DDT_OK; i++) {
            out->names[i] = strdup(values[i] ? values[i] : "");
            if (!out->names[i]) status = ddt_error(DDT_ERR_MEMORY, "%s: out of memory", where);
        }
        H5Dvlen_reclaim(memory_type, space, H5P_DEFAULT, values);
        free(values);
    } else {
        size_t size = H5Tget_size(type);
        H5Tset_size(memory_type, size + 1);
        H5Tset_strpad(memory_type, H5T_STR_NULLTERM);
        char *values = calloc((size_t)points, size + 1);
        if (!values || H5Aread(attribute, memory_type, values) < 0) {
            free(values);
            status = ddt_error(DDT_ERR_FORMAT, "%s: cannot read attribute %s", where, name);
            goto done;
        }
        for (hssize_t i = 0; i < points && status == DDT_OK; i++) {
            out->names[i] = strdup(values + (size_t)i * (size + 1));
            if (!out->names[i]) status = ddt_error(DDT_ERR_MEMORY, "%s: out of memory", where);
        }
        free(values);
    }
done:
    if (memory_type >= 0) H5Tclose(memory_type);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (attribute >= 0) H5Aclose(attribute);
    if (status != DDT_OK) name_list_free(out);
    return status;
}

/* The per-file facts that all shards must agree on. */
typedef struct shard_facts {
    dataset_kind kind;
    int features;
    int feature_rank;
    int feature_dims[3];
    bool class_labels;
    int target_width;
    int classes; /* declared: num_classes or vocab_size; 0 if absent */
    name_list class_names;
} shard_facts;

/* Opens the shard's file: from the disk, or from params' file image through the core driver
 * (HDF5 copies the image; nothing is written back). */
static ddt_status open_shard_file(dataset_shard *shard, const dataset_open_params *params) {
    const char *path = shard->path;
    hdf5_lock_mark_reading(path);
    hid_t access_list = H5P_DEFAULT;
    if (params->file_image) {
        access_list = H5Pcreate(H5P_FILE_ACCESS);
        if (access_list < 0 || H5Pset_fapl_core(access_list, 1 << 16, 0) < 0 ||
            H5Pset_file_image(access_list, (void *)params->file_image, params->file_image_size) <
                0) {
            if (access_list >= 0) H5Pclose(access_list);
            return ddt_error(DDT_ERR_INTERNAL, "%s: cannot set up the in-memory file image", path);
        }
    } else {
        DDT_CHECK(hdf5_check_readable(path));
        if (H5Fis_hdf5(path) <= 0) return ddt_error(DDT_ERR_FORMAT, "%s: not an HDF5 file", path);
    }
    shard->file = H5Fopen(path, H5F_ACC_RDONLY, access_list);
    if (access_list != H5P_DEFAULT) H5Pclose(access_list);
    if (shard->file < 0) {
        char detail[256];
        return ddt_error(params->file_image ? DDT_ERR_FORMAT : DDT_ERR_IO,
                         "%s: cannot open as HDF5 (HDF5: %s)", path,
                         hdf5_error_detail(detail, sizeof detail));
    }
    return DDT_OK;
}

/* The chunk shape of an open dataset of `rank` dimensions: rows per chunk (1 if contiguous)
 * and the bytes of one chunk of `element_bytes` elements (0 if contiguous). */
static void read_chunking(hid_t handle, int rank, size_t element_bytes, int64_t *chunk_rows,
                          size_t *chunk_bytes) {
    *chunk_rows = 1;
    *chunk_bytes = 0;
    hid_t create = H5Dget_create_plist(handle);
    hsize_t chunk[H5S_MAX_RANK];
    if (H5Pget_layout(create) == H5D_CHUNKED && H5Pget_chunk(create, rank, chunk) == rank) {
        *chunk_rows = (int64_t)chunk[0];
        size_t bytes = element_bytes;
        for (int i = 0; i < rank; i++) /* a file's numbers: saturate rather than wrap */
            bytes = saturated_multiply_size(bytes, (size_t)chunk[i]);
        *chunk_bytes = bytes;
    }
    H5Pclose(create);
}

/* /tokens: checks its type, shape and vocab_size, and cuts it into windows of T ids. */
static ddt_status open_token_shard(dataset_shard *shard, const dataset_open_params *params,
                                   shard_facts *facts) {
    const char *path = shard->path;
    char type_text[32], shape[128];
    hsize_t dims[H5S_MAX_RANK];
    hid_t type = H5I_INVALID_HID;
    int rank = 0;
    DDT_CHECK(open_member(shard, "tokens", params, &shard->features, &type, &rank, dims));
    bool type_ok = is_token_type(type);
    type_name(type, type_text, sizeof type_text);
    H5Tclose(type);
    if (!type_ok)
        return ddt_error(DDT_ERR_FORMAT, "%s: /tokens is %s, expected uint16 or int32 token ids",
                         path, type_text);
    if (rank != 1) {
        shape_text(rank, dims, shape, sizeof shape);
        return ddt_error(DDT_ERR_FORMAT, "%s: /tokens has rank %d (shape %s), expected 1", path,
                         rank, shape);
    }
    if (dims[0] == 0) return ddt_error(DDT_ERR_FORMAT, "%s: /tokens is empty", path);
    if (dims[0] > DATASET_MAX_ROWS)
        return ddt_error(DDT_ERR_FORMAT, "%s: /tokens declares %llu ids, more than 2^62", path,
                         (unsigned long long)dims[0]);
    shard->tokens = (int64_t)dims[0];
    int context = params->token_context;
    if (context <= 0)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: holds /tokens (a token dataset), which is read in windows of the "
                         "model's context length: it needs a model that takes tokens",
                         path);
    if (context > (1 << 24))
        return ddt_error(DDT_ERR_USAGE, "%s: a context of %d tokens is too long", path, context);
    /* Window k is tokens [k*T, k*T + T + 1): the last id of one is the first of the next. */
    shard->rows = (shard->tokens - 1) / context;
    if (shard->rows == 0)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: /tokens holds %lld ids, fewer than one window of %d (the context "
                         "%d plus the next token)",
                         path, (long long)shard->tokens, context + 1, context);

    bool present = false;
    long long vocab = 0;
    char where[4200];
    snprintf(where, sizeof where, "%s: /tokens", path);
    DDT_CHECK(read_int_attribute(shard->features, where, "vocab_size", &present, &vocab));
    if (!present) DDT_CHECK(read_int_attribute(shard->file, path, "vocab_size", &present, &vocab));
    if (!present)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: /tokens has no vocab_size attribute (the number of distinct ids, an "
                         "int > 0)",
                         path);
    if (vocab < 1 || vocab > (1LL << 30))
        return ddt_error(DDT_ERR_FORMAT, "%s: vocab_size is %lld, must be between 1 and 2^30", path,
                         vocab);
    facts->kind = DATASET_KIND_TOKENS;
    facts->features = context;
    facts->feature_rank = 1;
    facts->feature_dims[0] = context;
    facts->class_labels = true;
    facts->target_width = 1;
    facts->classes = (int)vocab;

    hid_t file_type = H5Dget_type(shard->features);
    size_t element_bytes = H5Tget_size(file_type);
    H5Tclose(file_type);
    int64_t chunk_tokens;
    read_chunking(shard->features, 1, element_bytes, &chunk_tokens, &shard->chunk_bytes);
    /* A block of windows spans about one chunk of ids. */
    shard->chunk_rows = shard->chunk_bytes ? chunk_tokens / context : 1;
    if (shard->chunk_rows < 1) shard->chunk_rows = 1;
    shard->features_space = H5Dget_space(shard->features);
    if (shard->features_space < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot read the dataspace of /tokens", path);
    return DDT_OK;
}

static ddt_status open_feature_shard(dataset_shard *shard, const dataset_open_params *params,
                                     shard_facts *facts) {
    const char *path = shard->path;
    char type_text[32], shape[128];
    hsize_t dims[H5S_MAX_RANK];
    hid_t type = H5I_INVALID_HID;
    int rank = 0;
    DDT_CHECK(open_member(shard, "features", params, &shard->features, &type, &rank, dims));
    bool features_ok = is_float32(type);
    type_name(type, type_text, sizeof type_text);
    H5Tclose(type);
    if (!features_ok)
        return ddt_error(DDT_ERR_FORMAT, "%s: /features is %s, expected float32", path, type_text);
    if (rank != 2 && rank != 4) {
        shape_text(rank, dims, shape, sizeof shape);
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: /features has rank %d (shape %s), expected 2 (rows x features) or 4 "
                         "(rows x channels x height x width)",
                         path, rank, shape);
    }
    int64_t width = 1;
    bool counted = true; /* 2^30 x 2^30 x 2^30 would wrap a product to 2^26 */
    for (int i = 1; i < rank; i++) {
        if (dims[i] < 1 || dims[i] > (hsize_t)(1 << 30)) {
            shape_text(rank, dims, shape, sizeof shape);
            return ddt_error(DDT_ERR_FORMAT, "%s: /features has shape %s", path, shape);
        }
        counted = counted && checked_multiply_int64(width, (int64_t)dims[i], &width);
    }
    if (!counted || width > (1 << 30)) {
        shape_text(rank, dims, shape, sizeof shape);
        return ddt_error(DDT_ERR_FORMAT, "%s: /features has shape %s: more than 2^30 values a row",
                         path, shape);
    }
    if (dims[0] > DATASET_MAX_ROWS)
        return ddt_error(DDT_ERR_FORMAT, "%s: /features declares %llu rows, more than 2^62", path,
                         (unsigned long long)dims[0]);
    shard->rows = (int64_t)dims[0];
    shard->features_rank = rank;
    facts->kind = DATASET_KIND_FEATURES;
    facts->features = (int)width;
    facts->feature_rank = rank - 1;
    for (int i = 1; i < rank; i++)
        facts->feature_dims[i - 1] = (int)dims[i];
    read_chunking(shard->features, rank, sizeof(float), &shard->chunk_rows, &shard->chunk_bytes);

    DDT_CHECK(open_member(shard, "labels", params, &shard->labels, &type, &rank, dims));
    bool int_labels = is_integer(type), float_labels = is_float32(type);
    type_name(type, type_text, sizeof type_text);
    H5Tclose(type);
    if (int_labels && rank == 1) {
        facts->class_labels = true;
        facts->target_width = 1;
    } else if (float_labels && rank == 2 && dims[1] >= 1 && dims[1] <= (hsize_t)(1 << 30)) {
        facts->class_labels = false;
        facts->target_width = (int)dims[1];
    } else {
        shape_text(rank, dims, shape, sizeof shape);
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: /labels is %s with shape %s; expected integer class ids (N) or "
                         "float32 targets (N x K)",
                         path, type_text, shape);
    }
    if ((int64_t)dims[0] != shard->rows)
        return ddt_error(DDT_ERR_FORMAT, "%s: /features has %lld rows but /labels has %llu", path,
                         (long long)shard->rows, (unsigned long long)dims[0]);

    bool present;
    long long value;
    DDT_CHECK(read_int_attribute(shard->file, path, "num_classes", &present, &value));
    if (present && (value < 1 || value > (1 << 30)))
        return ddt_error(DDT_ERR_FORMAT, "%s: num_classes is %lld, must be > 0", path, value);
    facts->classes = present ? (int)value : 0;
    if (facts->class_labels) {
        char where[4200];
        snprintf(where, sizeof where, "%s: /labels", path);
        DDT_CHECK(read_names_attribute(shard->labels, where, "class_names", &facts->class_names));
        if (facts->class_names.count && facts->classes &&
            facts->class_names.count != facts->classes)
            return ddt_error(DDT_ERR_FORMAT, "%s: class_names holds %d names but num_classes is %d",
                             path, facts->class_names.count, facts->classes);
    }

    shard->features_space = H5Dget_space(shard->features);
    shard->labels_space = H5Dget_space(shard->labels);
    if (shard->features_space < 0 || shard->labels_space < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot read the dataspaces", path);
    return DDT_OK;
}

static ddt_status open_shard(dataset_shard *shard, const dataset_open_params *params,
                             shard_facts *facts) {
    const char *path = shard->path;
    DDT_CHECK(open_shard_file(shard, params));
    bool present;
    long long value;
    DDT_CHECK(read_int_attribute(shard->file, path, "ddtrain_format", &present, &value));
    if (present && value > DATASET_FORMAT_VERSION)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: ddtrain_format %lld is newer than this ddtrain reads (%d)", path,
                         value, DATASET_FORMAT_VERSION);
    if (H5Lexists(shard->file, "features", H5P_DEFAULT) <= 0 &&
        H5Lexists(shard->file, "tokens", H5P_DEFAULT) > 0)
        return open_token_shard(shard, params, facts);
    return open_feature_shard(shard, params, facts);
}

static void dims_text(const shard_facts *f, char *out, size_t size) {
    if (f->feature_rank == 3)
        snprintf(out, size, "%dx%dx%d", f->feature_dims[0], f->feature_dims[1], f->feature_dims[2]);
    else
        snprintf(out, size, "%d", f->features);
}

static ddt_status check_shards_agree(const dataset_shard *first, const shard_facts *a,
                                     const dataset_shard *other, const shard_facts *b) {
    const char *p = first->path, *q = other->path;
    if (a->kind != b->kind)
        return ddt_error(DDT_ERR_FORMAT, "%s: holds %s but %s holds %s (all shards must agree)", q,
                         b->kind == DATASET_KIND_TOKENS ? "/tokens" : "/features", p,
                         a->kind == DATASET_KIND_TOKENS ? "/tokens" : "/features");
    if (a->kind == DATASET_KIND_TOKENS) {
        if (a->classes != b->classes)
            return ddt_error(DDT_ERR_FORMAT,
                             "%s: has vocab_size %d but %s has %d (all shards must agree)", q,
                             b->classes, p, a->classes);
        return DDT_OK;
    }
    if (a->features != b->features)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: has %d features but %s has %d (all shards must agree)", q,
                         b->features, p, a->features);
    if (a->feature_rank != b->feature_rank ||
        memcmp(a->feature_dims, b->feature_dims, sizeof a->feature_dims) != 0) {
        char shape_a[64], shape_b[64];
        dims_text(a, shape_a, sizeof shape_a);
        dims_text(b, shape_b, sizeof shape_b);
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: has rows of shape %s but %s has %s (all shards must agree)", q,
                         shape_b, p, shape_a);
    }
    if (a->class_labels != b->class_labels)
        return ddt_error(DDT_ERR_FORMAT, "%s: has %s but %s has %s (all shards must agree)", q,
                         b->class_labels ? "class labels" : "float targets", p,
                         a->class_labels ? "class labels" : "float targets");
    if (a->target_width != b->target_width)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: has %d targets per row but %s has %d (all shards must agree)", q,
                         b->target_width, p, a->target_width);
    if (a->classes != b->classes)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: has num_classes %d but %s has %d (all shards must agree)", q,
                         b->classes, p, a->classes);
    bool same_names = a->class_names.count == b->class_names.count;
    for (int i = 0; same_names && i < a->class_names.count; i++)
        same_names = strcmp(a->class_names.names[i], b->class_names.names[i]) == 0;
    if (!same_names)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: its class_names differ from those of %s (all shards must agree)", q,
                         p);
    return DDT_OK;
}

static bool has_glob_characters(const char *text) {
    return strpbrk(text, "*?[") != NULL;
}

/* A growing list of paths. */
typedef struct path_list {
    char **paths;
    int count;
    int capacity;
} path_list;

static ddt_status path_list_add(path_list *list, const char *path, size_t length) {
    if (list->count == list->capacity) {
        int capacity = list->capacity ? list->capacity * 2 : 8;
        char **grown = realloc(list->paths, (size_t)capacity * sizeof *grown);
        if (!grown) return ddt_error(DDT_ERR_MEMORY, "out of memory listing dataset files");
        list->paths = grown;
        list->capacity = capacity;
    }
    char *copy = strndup(path, length);
    if (!copy) return ddt_error(DDT_ERR_MEMORY, "out of memory listing dataset files");
    list->paths[list->count++] = copy;
    return DDT_OK;
}

static void path_list_free(path_list *list) {
    for (int i = 0; i < list->count; i++)
        free(list->paths[i]);
    free(list->paths);
}

/* Each comma-separated item is a path, or a glob expanded in sorted order. */
static ddt_status expand_spec(const char *spec, path_list *list) {
    const char *item = spec;
    for (;;) {
        const char *end = strchr(item, ',');
        size_t length = end ? (size_t)(end - item) : strlen(item);
        while (length > 0 && (*item == ' ' || *item == '\t'))
            item++, length--;
        while (length > 0 && (item[length - 1] == ' ' || item[length - 1] == '\t'))
            length--;
        if (length == 0)
            return ddt_error(DDT_ERR_USAGE, "dataset '%s': empty file name in the list", spec);
        char *pattern = strndup(item, length);
        if (!pattern) return ddt_error(DDT_ERR_MEMORY, "out of memory listing dataset files");
        ddt_status status = DDT_OK;
        if (has_glob_characters(pattern)) {
            glob_t matches;
            int result = glob(pattern, 0, NULL, &matches);
            if (result == GLOB_NOMATCH) {
                status = ddt_error(DDT_ERR_IO, "no files match '%s'", pattern);
            } else if (result != 0) {
                status = ddt_error(DDT_ERR_IO, "%s: cannot expand the pattern: %s", pattern,
                                   result == GLOB_ABORTED ? "read error" : "out of memory");
            } else {
                for (size_t i = 0; i < matches.gl_pathc && status == DDT_OK; i++)
                    status = path_list_add(list, matches.gl_pathv[i], strlen(matches.gl_pathv[i]));
            }
            if (result == 0 || result == GLOB_NOMATCH) globfree(&matches);
        } else {
            status = path_list_add(list, pattern, length);
        }
        free(pattern);
        DDT_CHECK(status);
        if (!end) return DDT_OK;
        item = end + 1;
    }
}

static void close_shard(dataset_shard *shard) {
    if (shard->path) hdf5_lock_mark_reading(shard->path);
    if (shard->labels_space >= 0) H5Sclose(shard->labels_space);
    if (shard->features_space >= 0) H5Sclose(shard->features_space);
    if (shard->labels >= 0) H5Dclose(shard->labels);
    if (shard->features >= 0) H5Dclose(shard->features);
    if (shard->file >= 0) H5Fclose(shard->file);
    free(shard->path);
}

dataset_open_params dataset_default_open_params(void) {
    return (dataset_open_params){.allow_external = false, .token_context = 0};
}

ddt_status dataset_open(const char *spec, dataset **out) {
    dataset_open_params params = dataset_default_open_params();
    return dataset_open_with_params(spec, &params, out);
}

ddt_status dataset_open_with_params(const char *spec, const dataset_open_params *params,
                                    dataset **out) {
    *out = NULL;
    if (!spec || !*spec) return ddt_error(DDT_ERR_USAGE, "no dataset path given");
    path_list list = {0};
    ddt_status status = DDT_OK;
    if (params->file_image)
        status = path_list_add(&list, spec, strlen(spec)); /* a name, never a pattern */
    else
        status = expand_spec(spec, &list);
    if (status != DDT_OK) {
        path_list_free(&list);
        return status;
    }
    dataset *ds = calloc(1, sizeof *ds);
    if (ds) ds->shards = calloc((size_t)list.count, sizeof *ds->shards);
    if (!ds || !ds->shards) {
        free(ds);
        path_list_free(&list);
        return ddt_error(DDT_ERR_MEMORY, "%s: out of memory", spec);
    }
    for (int i = 0; i < list.count; i++) {
        dataset_shard *shard = &ds->shards[i];
        shard->path = list.paths[i]; /* ownership moves to the shard */
        shard->file = shard->features = shard->labels = H5I_INVALID_HID;
        shard->features_space = shard->labels_space = H5I_INVALID_HID;
    }
    ds->shard_count = list.count;
    free(list.paths);

    hdf5_lock_acquire();
    shard_facts first = {0}, facts = {0};
    int64_t total_rows = 0, total_tokens = 0;
    for (int i = 0; i < ds->shard_count; i++) {
        facts = (shard_facts){0};
        DDT_CHECK_GOTO(open_shard(&ds->shards[i], params, &facts), status, fail);
        if (i == 0) {
            first = facts;
            facts = (shard_facts){0}; /* the names now belong to `first` */
        } else {
            DDT_CHECK_GOTO(check_shards_agree(&ds->shards[0], &first, &ds->shards[i], &facts),
                           status, fail);
            name_list_free(&facts.class_names);
        }
        ds->shards[i].first_row = total_rows;
        total_rows += ds->shards[i].rows;
        total_tokens += ds->shards[i].tokens;
        if ((uint64_t)total_rows > DATASET_MAX_ROWS || (uint64_t)total_tokens > DATASET_MAX_ROWS) {
            status = ddt_error(DDT_ERR_FORMAT, "%s: the shards declare more than 2^62 rows in all",
                               ds->shards[i].path);
            goto fail;
        }
    }
    dataset_geometry *g = &ds->geometry;
    g->kind = first.kind;
    g->rows = total_rows;
    g->features = first.features;
    g->feature_rank = first.feature_rank;
    memcpy(g->feature_dims, first.feature_dims, sizeof g->feature_dims);
    g->class_labels = first.class_labels;
    g->labels_per_row = !first.class_labels                 ? 0
                        : first.kind == DATASET_KIND_TOKENS ? first.features
                                                            : 1;
    g->target_width = first.target_width;
    g->classes = first.classes;
    g->chunk_rows = ds->shards[0].chunk_rows;
    g->file_count = ds->shard_count;
    g->tokens = total_tokens;
    ds->declared_classes = first.classes;
    ds->class_names = first.class_names;
    hdf5_lock_release();
    *out = ds;
    return DDT_OK;

fail:
    name_list_free(&facts.class_names);
    name_list_free(&first.class_names);
    hdf5_lock_release();
    dataset_close(ds);
    return status;
}

void dataset_close(dataset *ds) {
    if (!ds) return;
    hdf5_lock_acquire();
    for (int i = 0; i < ds->shard_count; i++)
        close_shard(&ds->shards[i]);
    hdf5_lock_release();
    name_list_free(&ds->class_names);
    free(ds->shards);
    free(ds);
}

const dataset_geometry *dataset_get_geometry(const dataset *ds) {
    return &ds->geometry;
}

ddt_status dataset_set_classes(dataset *ds, int classes) {
    const char *path = ds->shards[0].path;
    if (!ds->geometry.class_labels)
        return ddt_error(DDT_ERR_USAGE, "%s: has float targets, not class labels", path);
    if (classes < 1) return ddt_error(DDT_ERR_INTERNAL, "dataset_set_classes: %d classes", classes);
    if (ds->declared_classes && classes != ds->declared_classes) {
        if (ds->geometry.kind == DATASET_KIND_TOKENS)
            return ddt_error(DDT_ERR_FORMAT,
                             "%s: vocab_size is %d, but %d token ids were asked for", path,
                             ds->declared_classes, classes);
        return ddt_error(DDT_ERR_FORMAT, "%s: num_classes is %d, but %d classes were asked for",
                         path, ds->declared_classes, classes);
    }
    if (ds->class_names.count && classes != ds->class_names.count)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: class_names holds %d names, but %d classes were "
                         "asked for",
                         path, ds->class_names.count, classes);
    ds->geometry.classes = classes;
    return DDT_OK;
}

const char *dataset_class_name(const dataset *ds, int index) {
    if (index < 0 || index >= ds->class_names.count) return NULL;
    return ds->class_names.names[index];
}

int dataset_class_name_count(const dataset *ds) {
    return ds->class_names.count;
}

const char *dataset_file_path(const dataset *ds, int file_index) {
    if (file_index < 0 || file_index >= ds->shard_count) return NULL;
    return ds->shards[file_index].path;
}

int dataset_locate_row(const dataset *ds, int64_t row, int64_t *row_in_file) {
    if (row < 0 || row >= ds->geometry.rows) return -1;
    int low = 0, high = ds->shard_count - 1;
    while (low < high) {
        int middle = low + (high - low + 1) / 2;
        if (ds->shards[middle].first_row <= row)
            low = middle;
        else
            high = middle - 1;
    }
    /* The last shard starting at or before `row` is never an empty one: an empty shard
     * shares first_row with the next, which is then chosen. */
    if (row_in_file) *row_in_file = row - ds->shards[low].first_row;
    return low;
}

/* ---------------------------------------------------------------------------------------- */
/* HDF5 chunk cache                                                                         */

static bool is_prime(size_t n) {
    if (n < 2) return false;
    for (size_t d = 2; d * d <= n; d++)
        if (n % d == 0) return false;
    return true;
}

/* Reopens every chunked shard's /features with a `bytes` chunk cache. Call with the lock
 * held. */
static ddt_status apply_chunk_cache(dataset *ds, size_t bytes) {
    for (int i = 0; i < ds->shard_count; i++) {
        dataset_shard *shard = &ds->shards[i];
        if (shard->chunk_bytes == 0) continue; /* contiguous: HDF5 uses no chunk cache */
        hdf5_lock_mark_reading(shard->path);
        /* HDF5 advises a prime slot count ~100x the chunks that fit, to keep hashing sparse. */
        size_t chunks = bytes / shard->chunk_bytes;
        size_t slots = chunks > DATASET_MAX_CHUNK_CACHE_SLOTS / 100 ? DATASET_MAX_CHUNK_CACHE_SLOTS
                                                                    : chunks * 100;
        if (slots < 521) slots = 521; /* HDF5's default */
        while (!is_prime(slots))
            slots++;
        hid_t access_list = H5Pcreate(H5P_DATASET_ACCESS);
        if (access_list < 0 ||
            H5Pset_chunk_cache(access_list, slots, bytes, H5D_CHUNK_CACHE_W0_DEFAULT) < 0) {
            if (access_list >= 0) H5Pclose(access_list);
            char detail[256];
            return ddt_error(DDT_ERR_IO, "%s: cannot set a %zu-byte chunk cache (HDF5: %s)",
                             shard->path, bytes, hdf5_error_detail(detail, sizeof detail));
        }
        /* The cache is fixed when a dataset is first opened, and opening it again while a
         * handle is open shares that open dataset, cache included: close, then reopen. */
        H5Dclose(shard->features);
        const char *name = ds->geometry.kind == DATASET_KIND_TOKENS ? "tokens" : "features";
        shard->features = H5Dopen2(shard->file, name, access_list);
        H5Pclose(access_list);
        if (shard->features < 0) {
            char detail[256];
            hdf5_error_detail(detail, sizeof detail);
            shard->features = H5Dopen2(shard->file, name, H5P_DEFAULT); /* keep it usable */
            return ddt_error(DDT_ERR_IO, "%s: cannot reopen /%s (HDF5: %s)", shard->path, name,
                             detail);
        }
    }
    return DDT_OK;
}

ddt_status dataset_set_chunk_cache(dataset *ds, size_t bytes) {
    hdf5_lock_acquire();
    ddt_status status = apply_chunk_cache(ds, bytes);
    hdf5_lock_release();
    return status;
}

/* ---------------------------------------------------------------------------------------- */
/* Reading                                                                                  */

/* Reads ids [first, first + count) of a shard's /tokens as int32 into `out`. Call with the
 * lock held. */
static herr_t read_token_ids(const dataset_shard *shard, int64_t first, int64_t count,
                             int32_t *out) {
    hsize_t offset = (hsize_t)first, extent = (hsize_t)count;
    hid_t memory_space = H5Screate_simple(1, &extent, NULL);
    herr_t result =
        H5Sselect_hyperslab(shard->features_space, H5S_SELECT_SET, &offset, NULL, &extent, NULL);
    if (result >= 0)
        result = H5Dread(shard->features, H5T_NATIVE_INT32, memory_space, shard->features_space,
                         H5P_DEFAULT, out);
    H5Sclose(memory_space);
    return result;
}

/* Reads windows [first, first + count) of a token shard: the T input ids of each into
 * `inputs` and the T next ids into `labels` (either may be NULL). The windows of a run are
 * consecutive, so their ids are one range: inputs are ids [first*T, (first+count)*T), labels
 * the same shifted by one, so labels are inputs moved by one plus the id after the last.
 * Call with the lock held. */
static ddt_status read_token_run(const dataset *ds, const dataset_shard *shard, int64_t first,
                                 int64_t count, int32_t *inputs, int32_t *labels) {
    int64_t context = ds->geometry.features;
    int64_t start = first * context, n = count * context;
    herr_t result = 0;
    if (inputs) {
        result = read_token_ids(shard, start, n, inputs);
        if (result >= 0 && labels) {
            memcpy(labels, inputs + 1, (size_t)(n - 1) * sizeof(int32_t));
            result = read_token_ids(shard, start + n, 1, labels + n - 1);
        }
    } else if (labels) {
        result = read_token_ids(shard, start + 1, n, labels);
    }
    if (result < 0) {
        char detail[256];
        return ddt_error(DDT_ERR_IO, "%s: reading /tokens ids %lld..%lld failed (HDF5: %s)",
                         shard->path, (long long)start, (long long)(start + n + 1),
                         hdf5_error_detail(detail, sizeof detail));
    }
    return DDT_OK;
}

/* Reads shard rows [first, first + count) with one regular hyperslab per HDF5 dataset (the
 * fast path in HDF5's chunk mapping). inputs or labels may be NULL to skip them. Call with
 * the lock held. */
static ddt_status read_run(const dataset *ds, const dataset_shard *shard, int64_t first,
                           int64_t count, void *inputs, void *labels) {
    const dataset_geometry *g = &ds->geometry;
    hdf5_lock_mark_reading(shard->path);
    if (g->kind == DATASET_KIND_TOKENS)
        return read_token_run(ds, shard, first, count, inputs, labels);
    /* /features is N x D or N x C x H x W: the memory space has the file's shape. */
    hsize_t offset[4] = {(hsize_t)first, 0, 0, 0};
    hsize_t extent[4] = {(hsize_t)count, 0, 0, 0};
    for (int i = 0; i < g->feature_rank; i++)
        extent[i + 1] = (hsize_t)g->feature_dims[i];
    const char *failed = NULL;
    if (inputs) {
        hid_t memory_space = H5Screate_simple(shard->features_rank, extent, NULL);
        if (H5Sselect_hyperslab(shard->features_space, H5S_SELECT_SET, offset, NULL, extent, NULL) <
                0 ||
            H5Dread(shard->features, H5T_NATIVE_FLOAT, memory_space, shard->features_space,
                    H5P_DEFAULT, inputs) < 0)
            failed = "features";
        H5Sclose(memory_space);
    }
    if (labels && !failed) {
        /* A rank-1 /labels space reads only extent[0]. */
        extent[1] = (hsize_t)g->target_width;
        int rank = g->class_labels ? 1 : 2;
        hid_t memory_space = H5Screate_simple(rank, extent, NULL);
        if (H5Sselect_hyperslab(shard->labels_space, H5S_SELECT_SET, offset, NULL, extent, NULL) <
                0 ||
            H5Dread(shard->labels, g->class_labels ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT,
                    memory_space, shard->labels_space, H5P_DEFAULT, labels) < 0)
            failed = "labels";
        H5Sclose(memory_space);
    }
    if (failed) {
        char detail[256];
        return ddt_error(DDT_ERR_IO, "%s: reading /%s rows %lld..%lld failed (HDF5: %s)",
                         shard->path, failed, (long long)first, (long long)(first + count),
                         hdf5_error_detail(detail, sizeof detail));
    }
    return DDT_OK;
}

/* Bytes of one row of each buffer: inputs (float32 features or int32 ids: 4 bytes each),
 * class ids or targets. */
static size_t input_row_bytes(const dataset_geometry *g) {
    return (size_t)g->features * 4;
}

static size_t label_row_bytes(const dataset_geometry *g) {
    return (g->class_labels ? (size_t)g->labels_per_row : (size_t)g->target_width) * 4;
}

/* Reads sorted global rows, one read_run() per run of consecutive rows within a shard. Call
 * with the lock held. */
static ddt_status read_runs(dataset *ds, const int64_t *rows, int count, void *inputs,
                            void *labels) {
    const dataset_geometry *g = &ds->geometry;
    int s = dataset_locate_row(ds, rows[0], NULL);
    int i = 0;
    while (i < count) {
        while (rows[i] >= ds->shards[s].first_row + ds->shards[s].rows)
            s++;
        const dataset_shard *shard = &ds->shards[s];
        int64_t shard_end = shard->first_row + shard->rows;
        int length = 1;
        while (i + length < count && rows[i + length] == rows[i] + length &&
               rows[i + length] < shard_end)
            length++;
        DDT_CHECK(read_run(ds, shard, rows[i] - shard->first_row, length,
                           inputs ? (char *)inputs + (size_t)i * input_row_bytes(g) : NULL,
                           labels ? (char *)labels + (size_t)i * label_row_bytes(g) : NULL));
        i += length;
    }
    return DDT_OK;
}

static const char *non_finite_name(float value) {
    if (isnan(value)) return "NaN";
    return value > 0 ? "+Inf" : "-Inf";
}

static ddt_status row_error(const dataset *ds, int64_t global, const char *problem) {
    int64_t in_file = 0;
    int s = dataset_locate_row(ds, global, &in_file);
    return ddt_error(DDT_ERR_DATA, "%s: row %lld (global row %lld): %s", ds->shards[s].path,
                     (long long)in_file, (long long)global, problem);
}

static ddt_status report_non_finite(const dataset *ds, const int64_t *rows, int64_t first,
                                    int count, const float *values, int width, const char *what) {
    for (int i = 0; i < count; i++)
        for (int j = 0; j < width; j++) {
            float value = values[(size_t)i * (size_t)width + (size_t)j];
            if (isfinite(value)) continue;
            char problem[64];
            snprintf(problem, sizeof problem, "%s %d is %s", what, j, non_finite_name(value));
            return row_error(ds, rows ? rows[i] : first + i, problem);
        }
    return DDT_OK;
}

/* The first bad id of a token read (inputs or labels, `shift` 0 or 1 ids past the window's
 * start), named by its position in /tokens. */
static ddt_status report_bad_tokens(const dataset *ds, const int64_t *rows, int64_t first,
                                    int count, const int32_t *ids, int shift) {
    const dataset_geometry *g = &ds->geometry;
    size_t context = (size_t)g->features;
    for (int i = 0; i < count; i++)
        for (size_t j = 0; j < context; j++) {
            int32_t id = ids[(size_t)i * context + j];
            if (id >= 0 && id < g->classes) continue;
            int64_t global = rows ? rows[i] : first + i, window = 0;
            int s = dataset_locate_row(ds, global, &window);
            return ddt_error(DDT_ERR_DATA,
                             "%s: /tokens id %d at position %lld (window %lld, global row %lld) is "
                             "outside [0, %d): the vocab_size attribute says %d",
                             ds->shards[s].path, id,
                             (long long)(window * (int64_t)context + (int64_t)j + shift),
                             (long long)window, (long long)global, g->classes, g->classes);
        }
    return DDT_OK;
}

/* Checks what was read; rows == NULL means the range first .. first + count. */
static ddt_status validate(const dataset *ds, const int64_t *rows, int64_t first, int count,
                           const void *inputs, const int32_t *labels, const float *targets) {
    const dataset_geometry *g = &ds->geometry;
    if (g->kind == DATASET_KIND_TOKENS) {
        size_t ids = (size_t)count * (size_t)g->features;
        /* Labels first: their last id is the one inputs do not hold. */
        if (labels && !values_all_below(labels, ids, (uint32_t)g->classes))
            DDT_CHECK(report_bad_tokens(ds, rows, first, count, labels, 1));
        if (inputs && !values_all_below(inputs, ids, (uint32_t)g->classes))
            DDT_CHECK(report_bad_tokens(ds, rows, first, count, inputs, 0));
        return DDT_OK;
    }
    if (inputs && !values_all_finite(inputs, (size_t)count * (size_t)g->features))
        DDT_CHECK(report_non_finite(ds, rows, first, count, inputs, g->features, "feature"));
    if (targets && !values_all_finite(targets, (size_t)count * (size_t)g->target_width))
        DDT_CHECK(report_non_finite(ds, rows, first, count, targets, g->target_width, "target"));
    /* Without a class count (a file without num_classes, before dataset_set_classes) only
     * negative ids are wrong. */
    uint32_t bound = g->classes > 0 ? (uint32_t)g->classes : 0x80000000u;
    if (labels && !values_all_below(labels, (size_t)count, bound)) {
        for (int i = 0; i < count; i++) {
            if ((uint32_t)labels[i] < bound) continue;
            char problem[160];
            if (g->classes == 0)
                snprintf(problem, sizeof problem, "label %d is negative", labels[i]);
            else if (ds->declared_classes)
                snprintf(problem, sizeof problem, "label %d outside [0, %d)", labels[i],
                         g->classes);
            else
                snprintf(problem, sizeof problem,
                         "label %d outside [0, %d) (the file has no num_classes; %d is the "
                         "model's output width)",
                         labels[i], g->classes, g->classes);
            return row_error(ds, rows ? rows[i] : first + i, problem);
        }
    }
    return DDT_OK;
}

ddt_status dataset_read_rows(dataset *ds, const int64_t *rows, int count, void *inputs,
                             int32_t *labels, float *targets) {
    const dataset_geometry *g = &ds->geometry;
    if (count < 0) return ddt_error(DDT_ERR_INTERNAL, "dataset_read_rows: negative count");
    for (int i = 0; i < count; i++) {
        if (rows[i] < 0 || rows[i] >= g->rows)
            return ddt_error(DDT_ERR_INTERNAL, "%s: row %lld outside the %lld rows",
                             ds->shards[0].path, (long long)rows[i], (long long)g->rows);
        if (i > 0 && rows[i] <= rows[i - 1])
            return ddt_error(DDT_ERR_INTERNAL,
                             "dataset_read_rows: rows not strictly ascending (%lld after %lld)",
                             (long long)rows[i], (long long)rows[i - 1]);
    }
    if (count == 0) return DDT_OK;
    if (g->class_labels)
        targets = NULL;
    else
        labels = NULL;
    void *label_out = g->class_labels ? (void *)labels : (void *)targets;
    hdf5_lock_acquire();
    ddt_status status = read_runs(ds, rows, count, inputs, label_out);
    hdf5_lock_release();
    DDT_CHECK(status);
    return validate(ds, rows, 0, count, inputs, labels, targets);
}

ddt_status dataset_read_range(dataset *ds, int64_t first, int count, void *inputs, int32_t *labels,
                              float *targets) {
    const dataset_geometry *g = &ds->geometry;
    if (count < 0 || first < 0 || first > g->rows - count)
        return ddt_error(DDT_ERR_INTERNAL, "%s: rows %lld..%lld outside the %lld rows",
                         ds->shards[0].path, (long long)first, (long long)first + count,
                         (long long)g->rows);
    if (count == 0) return DDT_OK;
    if (g->class_labels)
        targets = NULL;
    else
        labels = NULL;
    char *label_out = g->class_labels ? (char *)labels : (char *)targets;
    char *input_out = inputs;
    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    int64_t done = 0;
    while (done < count && status == DDT_OK) {
        int64_t in_file = 0;
        int s = dataset_locate_row(ds, first + done, &in_file);
        const dataset_shard *shard = &ds->shards[s];
        int64_t n = shard->rows - in_file < count - done ? shard->rows - in_file : count - done;
        status = read_run(ds, shard, in_file, n,
                          input_out ? input_out + (size_t)done * input_row_bytes(g) : NULL,
                          label_out ? label_out + (size_t)done * label_row_bytes(g) : NULL);
        done += n;
    }
    hdf5_lock_release();
    DDT_CHECK(status);
    return validate(ds, NULL, first, count, inputs, labels, targets);
}

/* ---------------------------------------------------------------------------------------- */
/* Identity                                                                                 */

ddt_status dataset_identity(const dataset *ds, char *text, size_t size) {
    const dataset_geometry *g = &ds->geometry;
    size_t used = 0;
    text[0] = '\0';
    for (int i = 0; i < ds->shard_count; i++) {
        const char *path = ds->shards[i].path;
        const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        uint64_t hash = 0xcbf29ce484222325ull, bytes = 0; /* FNV-1a of the first 64 KiB */
        /* O_NONBLOCK: the shard was a regular file when opened; if a FIFO took its place
         * since, this must not wait for a writer (the fstat then finds it is not regular). */
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) {
            struct stat info;
            if (fstat(fd, &info) == 0 && S_ISREG(info.st_mode)) bytes = (uint64_t)info.st_size;
            unsigned char head[1 << 16];
            ssize_t got = pread(fd, head, sizeof head, 0);
            for (ssize_t k = 0; k < got; k++)
                hash = (hash ^ head[k]) * 0x100000001b3ull;
            close(fd);
        }
        /* Flat feature datasets keep the text they always had, so checkpoints written
         * before image shapes and tokens existed still match their data. */
        char shape[64] = "";
        if (g->feature_rank == 3)
            snprintf(shape, sizeof shape, " (%dx%dx%d)", g->feature_dims[0], g->feature_dims[1],
                     g->feature_dims[2]);
        int written;
        if (g->kind == DATASET_KIND_TOKENS)
            written = snprintf(text + used, size - used,
                               "%s%s: %" PRId64 " windows of %d tokens (%" PRId64
                               " tokens), vocab %d, %" PRIu64 " bytes, header %016" PRIx64,
                               i ? "; " : "", name, ds->shards[i].rows, g->features,
                               ds->shards[i].tokens, ds->declared_classes, bytes, hash);
        else
            written = snprintf(
                text + used, size - used,
                "%s%s: %" PRId64 " rows x %d%s, %s %d, %" PRIu64 " bytes, header %016" PRIx64,
                i ? "; " : "", name, ds->shards[i].rows, g->features, shape,
                g->class_labels ? "classes" : "targets",
                g->class_labels ? ds->declared_classes : g->target_width, bytes, hash);
        if (written < 0 || (size_t)written >= size - used)
            return ddt_error(DDT_ERR_INTERNAL, "dataset identity of %d shards is too long",
                             ds->shard_count);
        used += (size_t)written;
    }
    return DDT_OK;
}
