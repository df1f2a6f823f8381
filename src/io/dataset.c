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

#define DATASET_FORMAT_VERSION 1
/* More rows than any file holds; keeps sums over shards and row * width products far from
 * overflowing int64. */
#define DATASET_MAX_ROWS ((hsize_t)1 << 62)
/* What to do about refused external data, appended to the messages. */
#define DATASET_EXTERNAL_HINT "pass --allow-external-data if you trust this file"
/* Most hash slots dataset_set_chunk_cache() gives HDF5's chunk cache (8 bytes each). */
#define DATASET_MAX_CHUNK_CACHE_SLOTS ((size_t)1 << 20)

typedef struct dataset_shard {
    char *path;
    int64_t first_row; /* global row of this shard's row 0 */
    int64_t rows;
    hid_t file;
    hid_t features;
    hid_t labels;
    hid_t features_space; /* file dataspaces, reused for every read's selection */
    hid_t labels_space;
    int64_t chunk_rows; /* of /features; 1 if contiguous */
    size_t chunk_bytes; /* of one /features chunk; 0 if contiguous */
} dataset_shard;

struct dataset {
    dataset_geometry geometry;
    int shard_count;
    dataset_shard *shards;
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
        return ddt_error(DDT_ERR_FORMAT, "%s: no /%s dataset (ddtrain needs /features and /labels)",
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

static bool is_int32(hid_t type) {
    return H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 4 &&
           H5Tget_sign(type) == H5T_SGN_2;
}

/* Reads an integer root attribute. *present is false if it does not exist. */
static ddt_status read_int_attribute(dataset_shard *shard, const char *name, bool *present,
                                     long long *value) {
    *present = false;
    if (H5Aexists(shard->file, name) <= 0) return DDT_OK;
    hid_t attribute = H5Aopen(shard->file, name, H5P_DEFAULT);
    if (attribute < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot open attribute %s", shard->path, name);
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
        return ddt_error(DDT_ERR_FORMAT, "%s: attribute %s must be a single integer", shard->path,
                         name);
    *present = true;
    return DDT_OK;
}

/* The per-file facts that all shards must agree on. */
typedef struct shard_facts {
    int features;
    bool class_labels;
    int target_width;
    int classes;
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

static ddt_status open_shard(dataset_shard *shard, const dataset_open_params *params,
                             shard_facts *facts) {
    const char *path = shard->path;
    DDT_CHECK(open_shard_file(shard, params));

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
    if (rank != 2) {
        shape_text(rank, dims, shape, sizeof shape);
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: /features has rank %d (shape %s), expected 2 (rows x features)", path,
                         rank, shape);
    }
    if (dims[1] < 1 || dims[1] > (hsize_t)(1 << 30))
        return ddt_error(DDT_ERR_FORMAT, "%s: /features has %llu columns", path,
                         (unsigned long long)dims[1]);
    if (dims[0] > DATASET_MAX_ROWS)
        return ddt_error(DDT_ERR_FORMAT, "%s: /features declares %llu rows, more than 2^62", path,
                         (unsigned long long)dims[0]);
    shard->rows = (int64_t)dims[0];
    facts->features = (int)dims[1];

    hid_t create = H5Dget_create_plist(shard->features);
    shard->chunk_rows = 1;
    shard->chunk_bytes = 0;
    if (H5Pget_layout(create) == H5D_CHUNKED) {
        hsize_t chunk[2];
        if (H5Pget_chunk(create, 2, chunk) == 2) {
            shard->chunk_rows = (int64_t)chunk[0];
            shard->chunk_bytes = (size_t)(chunk[0] * chunk[1] * 4);
        }
    }
    H5Pclose(create);

    DDT_CHECK(open_member(shard, "labels", params, &shard->labels, &type, &rank, dims));
    bool int_labels = is_int32(type), float_labels = is_float32(type);
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
                         "%s: /labels is %s with shape %s; expected int32 class ids (N) or "
                         "float32 targets (N x K)",
                         path, type_text, shape);
    }
    if ((int64_t)dims[0] != shard->rows)
        return ddt_error(DDT_ERR_FORMAT, "%s: /features has %lld rows but /labels has %llu", path,
                         (long long)shard->rows, (unsigned long long)dims[0]);

    bool present;
    long long value;
    DDT_CHECK(read_int_attribute(shard, "ddtrain_format", &present, &value));
    if (present && value > DATASET_FORMAT_VERSION)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: ddtrain_format %lld is newer than this ddtrain reads (%d)", path,
                         value, DATASET_FORMAT_VERSION);
    DDT_CHECK(read_int_attribute(shard, "num_classes", &present, &value));
    if (present && (value < 1 || value > (1 << 30)))
        return ddt_error(DDT_ERR_FORMAT, "%s: num_classes is %lld, must be > 0", path, value);
    if (!present && facts->class_labels)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: class labels need a num_classes attribute (int > 0) on the root "
                         "group",
                         path);
    facts->classes = present ? (int)value : 0;

    shard->features_space = H5Dget_space(shard->features);
    shard->labels_space = H5Dget_space(shard->labels);
    if (shard->features_space < 0 || shard->labels_space < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot read the dataspaces", path);
    return DDT_OK;
}

static ddt_status check_shards_agree(const dataset_shard *first, const shard_facts *a,
                                     const dataset_shard *other, const shard_facts *b) {
    const char *p = first->path, *q = other->path;
    if (a->features != b->features)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: has %d features but %s has %d (all shards must agree)", q,
                         b->features, p, a->features);
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
    return (dataset_open_params){.allow_external = false};
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
    shard_facts first = {0};
    int64_t total_rows = 0;
    for (int i = 0; i < ds->shard_count; i++) {
        shard_facts facts = {0};
        DDT_CHECK_GOTO(open_shard(&ds->shards[i], params, &facts), status, fail);
        if (i == 0)
            first = facts;
        else
            DDT_CHECK_GOTO(check_shards_agree(&ds->shards[0], &first, &ds->shards[i], &facts),
                           status, fail);
        ds->shards[i].first_row = total_rows;
        total_rows += ds->shards[i].rows;
        if ((uint64_t)total_rows > DATASET_MAX_ROWS) {
            status = ddt_error(DDT_ERR_FORMAT, "%s: the shards declare more than 2^62 rows in all",
                               ds->shards[i].path);
            goto fail;
        }
    }
    ds->geometry.rows = total_rows;
    ds->geometry.features = first.features;
    ds->geometry.class_labels = first.class_labels;
    ds->geometry.target_width = first.target_width;
    ds->geometry.classes = first.classes;
    ds->geometry.chunk_rows = ds->shards[0].chunk_rows;
    ds->geometry.file_count = ds->shard_count;
    hdf5_lock_release();
    *out = ds;
    return DDT_OK;

fail:
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
    free(ds->shards);
    free(ds);
}

const dataset_geometry *dataset_get_geometry(const dataset *ds) {
    return &ds->geometry;
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
        shard->features = H5Dopen2(shard->file, "features", access_list);
        H5Pclose(access_list);
        if (shard->features < 0) {
            char detail[256];
            hdf5_error_detail(detail, sizeof detail);
            shard->features = H5Dopen2(shard->file, "features", H5P_DEFAULT); /* keep it usable */
            return ddt_error(DDT_ERR_IO, "%s: cannot reopen /features (HDF5: %s)", shard->path,
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

/* Reads shard rows [first, first + count) with one regular hyperslab per HDF5 dataset (the
 * fast path in HDF5's chunk mapping). features or labels may be NULL to skip them. Call with
 * the lock held. */
static ddt_status read_run(const dataset *ds, const dataset_shard *shard, int64_t first,
                           int64_t count, float *features, void *labels) {
    const dataset_geometry *g = &ds->geometry;
    hdf5_lock_mark_reading(shard->path);
    hsize_t offset[2] = {(hsize_t)first, 0};
    hsize_t extent[2] = {(hsize_t)count, (hsize_t)g->features};
    const char *failed = NULL;
    if (features) {
        hid_t memory_space = H5Screate_simple(2, extent, NULL);
        if (H5Sselect_hyperslab(shard->features_space, H5S_SELECT_SET, offset, NULL, extent, NULL) <
                0 ||
            H5Dread(shard->features, H5T_NATIVE_FLOAT, memory_space, shard->features_space,
                    H5P_DEFAULT, features) < 0)
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

/* Reads sorted global rows, one read_run() per run of consecutive rows within a shard. Call
 * with the lock held. */
static ddt_status read_runs(dataset *ds, const int64_t *rows, int count, float *features,
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
        DDT_CHECK(
            read_run(ds, shard, rows[i] - shard->first_row, length,
                     features ? features + (size_t)i * (size_t)g->features : NULL,
                     labels ? (char *)labels + (size_t)i * (size_t)g->target_width * 4 : NULL));
        i += length;
    }
    return DDT_OK;
}

static const char *non_finite_name(float value) {
    if (isnan(value)) return "NaN";
    return value > 0 ? "+Inf" : "-Inf";
}

/* True if any of values[0..count) is NaN or Inf. A branch-free reduction over the exponent
 * bits, so the compiler vectorises it: this runs over every value read. */
static bool any_non_finite(const float *values, size_t count) {
    const uint32_t *bits = (const uint32_t *)values;
    uint32_t bad = 0;
    for (size_t i = 0; i < count; i++)
        bad |= (uint32_t)((bits[i] & 0x7f800000u) == 0x7f800000u);
    return bad != 0;
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

/* Checks what was read; rows == NULL means the range first .. first + count. */
static ddt_status validate(const dataset *ds, const int64_t *rows, int64_t first, int count,
                           const float *features, const int32_t *labels, const float *targets) {
    const dataset_geometry *g = &ds->geometry;
    if (features && any_non_finite(features, (size_t)count * (size_t)g->features))
        DDT_CHECK(report_non_finite(ds, rows, first, count, features, g->features, "feature"));
    if (targets && any_non_finite(targets, (size_t)count * (size_t)g->target_width))
        DDT_CHECK(report_non_finite(ds, rows, first, count, targets, g->target_width, "target"));
    if (labels) {
        uint32_t classes = (uint32_t)g->classes, bad = 0;
        /* The unsigned compare catches negative ids too. */
        for (int i = 0; i < count; i++)
            bad |= (uint32_t)((uint32_t)labels[i] >= classes);
        for (int i = 0; bad && i < count; i++) {
            if (labels[i] >= 0 && labels[i] < g->classes) continue;
            char problem[96];
            snprintf(problem, sizeof problem, "label %d outside [0, %d)", labels[i], g->classes);
            return row_error(ds, rows ? rows[i] : first + i, problem);
        }
    }
    return DDT_OK;
}

ddt_status dataset_read_rows(dataset *ds, const int64_t *rows, int count, float *features,
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
    ddt_status status = read_runs(ds, rows, count, features, label_out);
    hdf5_lock_release();
    DDT_CHECK(status);
    return validate(ds, rows, 0, count, features, labels, targets);
}

ddt_status dataset_read_range(dataset *ds, int64_t first, int count, float *features,
                              int32_t *labels, float *targets) {
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
    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    int64_t done = 0;
    while (done < count && status == DDT_OK) {
        int64_t in_file = 0;
        int s = dataset_locate_row(ds, first + done, &in_file);
        const dataset_shard *shard = &ds->shards[s];
        int64_t n = shard->rows - in_file < count - done ? shard->rows - in_file : count - done;
        status = read_run(
            ds, shard, in_file, n, features ? features + (size_t)done * (size_t)g->features : NULL,
            label_out ? label_out + (size_t)done * (size_t)g->target_width * 4 : NULL);
        done += n;
    }
    hdf5_lock_release();
    DDT_CHECK(status);
    return validate(ds, NULL, first, count, features, labels, targets);
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
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            struct stat info;
            if (fstat(fd, &info) == 0) bytes = (uint64_t)info.st_size;
            unsigned char head[1 << 16];
            ssize_t got = pread(fd, head, sizeof head, 0);
            for (ssize_t k = 0; k < got; k++)
                hash = (hash ^ head[k]) * 0x100000001b3ull;
            close(fd);
        }
        int written = snprintf(text + used, size - used,
                               "%s%s: %" PRId64 " rows x %d, %s %d, %" PRIu64
                               " bytes, header %016" PRIx64,
                               i ? "; " : "", name, ds->shards[i].rows, g->features,
                               g->class_labels ? "classes" : "targets",
                               g->class_labels ? g->classes : g->target_width, bytes, hash);
        if (written < 0 || (size_t)written >= size - used)
            return ddt_error(DDT_ERR_INTERNAL, "dataset identity of %d shards is too long",
                             ds->shard_count);
        used += (size_t)written;
    }
    return DDT_OK;
}
