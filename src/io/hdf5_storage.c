/* hdf5_storage.c - checking an HDF5 dataset's storage against its declared shape (see
 * hdf5_storage.h). */
#include "io/hdf5_storage.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/hdf5_lock.h"

/* Product of the first `rank` dims times `element_size`; false if it passes 2^63. */
static bool declared_bytes(int rank, const hsize_t *dims, size_t element_size, uint64_t *bytes) {
    uint64_t total = element_size;
    for (int d = 0; d < rank; d++) {
        if (dims[d] != 0 && total > (UINT64_MAX >> 1) / dims[d]) return false;
        total *= dims[d];
    }
    *bytes = total;
    return true;
}

/* "DIR" of "DIR/NAME" ("." when there is no slash), into out. */
static void directory_part(const char *path, char *out, size_t size) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, size, ".");
    else if (slash == path)
        snprintf(out, size, "/");
    else
        snprintf(out, size, "%.*s", (int)(slash - path), path);
}

/* PREFIX/NAME, with "${ORIGIN}" at the start of PREFIX standing for the directory of
 * `origin_file`, as HDF5 expands it. False if it does not fit in `out`. */
static bool join_prefix(const char *prefix, const char *origin_file, const char *name, char *out,
                        size_t size) {
    static const char origin[] = "${ORIGIN}";
    int length;
    if (strncmp(prefix, origin, sizeof origin - 1) == 0) {
        char directory[4096];
        directory_part(origin_file, directory, sizeof directory);
        length = snprintf(out, size, "%s%s/%s", directory, prefix + sizeof origin - 1, name);
    } else {
        length = snprintf(out, size, "%s/%s", prefix, name);
    }
    return length >= 0 && (size_t)length < size;
}

static bool is_regular_file(const char *path, off_t *size) {
    struct stat info;
    if (stat(path, &info) != 0 || !S_ISREG(info.st_mode)) return false;
    if (size) *size = info.st_size;
    return true;
}

/* Where HDF5 1.10 looks for external raw-data file `name` of a dataset in `file_path`
 * (H5D__build_file_prefix): absolute names as they are; others under the prefix from
 * HDF5_EXTFILE_PREFIX or the access list, else relative to the working directory. */
static void resolve_external_file(hid_t handle, const char *file_path, const char *name, char *out,
                                  size_t size) {
    if (name[0] == '/') {
        snprintf(out, size, "%s", name);
        return;
    }
    char prefix[4096] = "";
    const char *environment = getenv("HDF5_EXTFILE_PREFIX");
    if (environment) {
        snprintf(prefix, sizeof prefix, "%s", environment);
    } else {
        hid_t access_list = H5Dget_access_plist(handle);
        if (access_list >= 0) {
            if (H5Pget_efile_prefix(access_list, prefix, sizeof prefix) < 0) prefix[0] = '\0';
            H5Pclose(access_list);
        }
    }
    if (!prefix[0] || !join_prefix(prefix, file_path, name, out, size))
        snprintf(out, size, "%s", name);
}

/* HDF5 external storage: refused unless allowed; then each file must exist and hold the
 * bytes the dataset's slots claim from it. */
static ddt_status check_external_storage(hid_t handle, hid_t create, int slots,
                                         const char *file_path, const char *where, uint64_t bytes,
                                         const storage_rules *rules) {
    char name[4096], resolved[8192];
    off_t offset = 0;
    hsize_t length = 0;
    if (H5Pget_external(create, 0, sizeof name, name, &offset, &length) < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: unreadable external storage list", where);
    name[sizeof name - 1] = '\0';
    if (!rules->allow_external)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: its values are stored outside the HDF5 file, in '%s'%s (HDF5 "
                         "external storage); " HDF5_EXTERNAL_REFUSED "%s%s",
                         where, name, slots > 1 ? " and other files" : "",
                         rules->external_hint ? "; " : "",
                         rules->external_hint ? rules->external_hint : "");
    uint64_t remaining = bytes;
    for (int i = 0; i < slots && remaining > 0; i++) {
        if (H5Pget_external(create, (unsigned)i, sizeof name, name, &offset, &length) < 0)
            return ddt_error(DDT_ERR_FORMAT, "%s: unreadable external storage list", where);
        name[sizeof name - 1] = '\0';
        uint64_t part = length == H5F_UNLIMITED || length > remaining ? remaining : length;
        resolve_external_file(handle, file_path, name, resolved, sizeof resolved);
        off_t size = 0;
        if (!is_regular_file(resolved, &size))
            return ddt_error(DDT_ERR_IO, "%s: external storage file '%s' is missing or not a file",
                             where, resolved);
        if (offset < 0 || (uint64_t)size < (uint64_t)offset + part)
            return ddt_error(DDT_ERR_FORMAT,
                             "%s: external storage file '%s' has %lld bytes, but the dataset "
                             "needs %llu bytes from offset %lld",
                             where, resolved, (long long)size, (unsigned long long)part,
                             (long long)offset);
        remaining -= part;
    }
    if (remaining > 0)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: its external storage holds %llu bytes fewer than the %llu declared",
                         where, (unsigned long long)remaining, (unsigned long long)bytes);
    return DDT_OK;
}

static ddt_status check_dataset_storage(hid_t handle, const char *where, const storage_rules *rules,
                                        int depth);

/* Opens the file a virtual source names, where HDF5 1.10 would look for it
 * (H5F_prefix_open_file): absolute names as they are (else their last component, as below);
 * relative ones under each HDF5_VDS_PREFIX entry, the access list's prefix, the virtual
 * dataset file's directory, then the working directory. *opened is where it was found. */
static hid_t open_virtual_source_file(hid_t handle, const char *vds_path, const char *name,
                                      char *opened, size_t size) {
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    char candidate[8192];
    if (name[0] == '/' && is_regular_file(name, NULL)) {
        snprintf(opened, size, "%s", name);
        return H5Fopen(name, H5F_ACC_RDONLY, H5P_DEFAULT);
    }
    const char *relative = name[0] == '/' ? base : name;
    const char *environment = getenv("HDF5_VDS_PREFIX");
    if (environment) {
        char prefixes[4096];
        snprintf(prefixes, sizeof prefixes, "%s", environment);
        char *context = NULL;
        for (char *prefix = strtok_r(prefixes, ":", &context); prefix;
             prefix = strtok_r(NULL, ":", &context)) {
            if (join_prefix(prefix, vds_path, relative, candidate, sizeof candidate) &&
                is_regular_file(candidate, NULL)) {
                snprintf(opened, size, "%s", candidate);
                return H5Fopen(candidate, H5F_ACC_RDONLY, H5P_DEFAULT);
            }
        }
    }
    char prefix[4096] = "";
    hid_t access_list = H5Dget_access_plist(handle);
    if (access_list >= 0) {
        if (H5Pget_virtual_prefix(access_list, prefix, sizeof prefix) < 0) prefix[0] = '\0';
        H5Pclose(access_list);
    }
    char directory[4096];
    directory_part(vds_path, directory, sizeof directory);
    for (int attempt = 0; attempt < 3; attempt++) {
        bool fits = true;
        if (attempt == 0)
            fits =
                prefix[0] && join_prefix(prefix, vds_path, relative, candidate, sizeof candidate);
        if (attempt == 1)
            fits = join_prefix(directory, vds_path, relative, candidate, sizeof candidate);
        if (attempt == 2) snprintf(candidate, sizeof candidate, "%s", relative);
        if (fits && is_regular_file(candidate, NULL)) {
            snprintf(opened, size, "%s", candidate);
            return H5Fopen(candidate, H5F_ACC_RDONLY, H5P_DEFAULT);
        }
    }
    snprintf(opened, size, "%s", name);
    return H5I_INVALID_HID;
}

/* One mapping of a virtual dataset: its source file and dataset exist, the source's extent
 * holds the selection mapped from it, and its own storage passes the checks. */
static ddt_status check_virtual_mapping(hid_t file, const char *file_path, hid_t handle,
                                        hid_t create, size_t index, const char *where,
                                        const storage_rules *rules) {
    char file_name[4096], dataset_name[4096], opened[8192], source_where[12288];
    if (H5Pget_virtual_filename(create, index, file_name, sizeof file_name) < 0 ||
        H5Pget_virtual_dsetname(create, index, dataset_name, sizeof dataset_name) < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: unreadable virtual dataset mapping %zu", where,
                         index);
    file_name[sizeof file_name - 1] = dataset_name[sizeof dataset_name - 1] = '\0';
    if (strchr(file_name, '%') || strchr(dataset_name, '%'))
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: virtual mapping %zu names its sources by pattern ('%s', '%s'), "
                         "which ddtrain does not support",
                         where, index, file_name, dataset_name);
    bool same_file = strcmp(file_name, ".") == 0;
    hid_t source_file =
        same_file ? file
                  : open_virtual_source_file(handle, file_path, file_name, opened, sizeof opened);
    if (same_file) snprintf(opened, sizeof opened, "%s", file_path);
    hdf5_lock_mark_reading(opened);
    snprintf(source_where, sizeof source_where, "%.4200s (virtual source %.4000s:%.4000s)", where,
             opened, dataset_name);
    if (source_file < 0)
        return ddt_error(DDT_ERR_IO,
                         "%s: virtual source file '%s' (for %s) is missing or not HDF5; HDF5 "
                         "would read the fill value in its place",
                         where, file_name, dataset_name);
    ddt_status status = DDT_OK;
    hid_t source = H5I_INVALID_HID, source_space = H5I_INVALID_HID, selection = H5I_INVALID_HID;
    if (H5Lexists(source_file, dataset_name, H5P_DEFAULT) <= 0 ||
        (source = H5Dopen2(source_file, dataset_name, H5P_DEFAULT)) < 0) {
        status = ddt_error(DDT_ERR_FORMAT,
                           "%s: virtual source dataset %s is missing from %s; HDF5 would read the "
                           "fill value in its place",
                           where, dataset_name, opened);
        goto done;
    }
    selection = H5Pget_virtual_srcspace(create, index);
    source_space = H5Dget_space(source);
    hsize_t start[H5S_MAX_RANK], end[H5S_MAX_RANK], dims[H5S_MAX_RANK];
    int rank = source_space < 0 ? -1 : H5Sget_simple_extent_ndims(source_space);
    if (selection < 0 || rank < 0 || rank != H5Sget_simple_extent_ndims(selection) ||
        H5Sget_simple_extent_dims(source_space, dims, NULL) < 0) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: the mapping does not fit the source's shape",
                           source_where);
        goto done;
    }
    if (H5Sget_select_npoints(selection) > 0) {
        if (H5Sget_select_bounds(selection, start, end) < 0) {
            status = ddt_error(DDT_ERR_FORMAT,
                               "%s: an unlimited virtual mapping, which ddtrain does not support",
                               source_where);
            goto done;
        }
        for (int d = 0; d < rank; d++)
            if (end[d] >= dims[d]) {
                status = ddt_error(DDT_ERR_FORMAT,
                                   "%s: maps index %llu of dimension %d, but the source has only "
                                   "%llu; HDF5 would read the fill value there",
                                   source_where, (unsigned long long)end[d], d,
                                   (unsigned long long)dims[d]);
                goto done;
            }
    }
    status = check_dataset_storage(source, source_where, rules, 1);
done:
    if (selection >= 0) H5Sclose(selection);
    if (source_space >= 0) H5Sclose(source_space);
    if (source >= 0) H5Dclose(source);
    if (!same_file) H5Fclose(source_file);
    hdf5_lock_mark_reading(file_path);
    return status;
}

/* A virtual dataset: every mapping checked, and together they cover every value. */
static ddt_status check_virtual(hid_t file, const char *file_path, hid_t handle, hid_t create,
                                const char *where, uint64_t values, const storage_rules *rules) {
    size_t count = 0;
    if (H5Pget_virtual_count(create, &count) < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: unreadable virtual dataset layout", where);
    hid_t covered = H5I_INVALID_HID;
    bool all = false;
    ddt_status status = DDT_OK;
    for (size_t i = 0; i < count && status == DDT_OK; i++) {
        status = check_virtual_mapping(file, file_path, handle, create, i, where, rules);
        if (status != DDT_OK || all) continue;
        hid_t mapped = H5Pget_virtual_vspace(create, i);
        if (mapped < 0) {
            status = ddt_error(DDT_ERR_FORMAT, "%s: unreadable virtual mapping %zu", where, i);
            continue;
        }
        H5S_sel_type type = H5Sget_select_type(mapped);
        if (type == H5S_SEL_ALL) {
            all = true;
        } else if (type == H5S_SEL_HYPERSLABS) {
            hid_t merged =
                covered < 0 ? H5Scopy(mapped) : H5Scombine_select(covered, H5S_SELECT_OR, mapped);
            if (covered >= 0) H5Sclose(covered);
            covered = merged;
            if (covered < 0)
                status = ddt_error(DDT_ERR_FORMAT, "%s: cannot combine virtual mappings", where);
        }
        H5Sclose(mapped);
    }
    hssize_t mapped_values = all            ? (hssize_t)values
                             : covered >= 0 ? H5Sget_select_npoints(covered)
                                            : 0;
    if (covered >= 0) H5Sclose(covered);
    DDT_CHECK(status);
    if (mapped_values < 0 || (uint64_t)mapped_values < values)
        return ddt_error(
            DDT_ERR_FORMAT,
            "%s: %llu of its %llu values map to no virtual source; HDF5 would read "
            "the fill value there",
            where, (unsigned long long)(values - (uint64_t)(mapped_values < 0 ? 0 : mapped_values)),
            (unsigned long long)values);
    return DDT_OK;
}

/* The public check at a depth: depth 1 is a virtual source, which may not be virtual itself. */
static ddt_status check_dataset_storage(hid_t handle, const char *where, const storage_rules *rules,
                                        int depth) {
    /* The file that holds the dataset (another one when reached through an external link). */
    hid_t file = H5Iget_file_id(handle);
    char file_path[4096] = "";
    if (file < 0 || H5Fget_name(file, file_path, sizeof file_path) < 0) {
        if (file >= 0) H5Fclose(file);
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot tell which file holds it", where);
    }
    hid_t create = H5Dget_create_plist(handle);
    hid_t space = H5Dget_space(handle);
    hid_t type = H5Dget_type(handle);
    ddt_status status = DDT_OK;
    hsize_t dims[H5S_MAX_RANK] = {0};
    int rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    size_t element_size = type < 0 ? 0 : H5Tget_size(type);
    uint64_t bytes = 0;
    if (create < 0 || rank < 0 || element_size == 0 ||
        (rank > 0 && H5Sget_simple_extent_dims(space, dims, NULL) < 0)) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: unreadable shape or storage layout", where);
        goto done;
    }
    if (!declared_bytes(rank, dims, element_size, &bytes)) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: declares more than 2^63 bytes of values", where);
        goto done;
    }
    int external_slots = H5Pget_external_count(create);
    if (external_slots > 0) {
        status =
            check_external_storage(handle, create, external_slots, file_path, where, bytes, rules);
        goto done;
    }
    switch (H5Pget_layout(create)) {
    case H5D_CHUNKED: {
        hsize_t chunk[H5S_MAX_RANK] = {0}, expected = 1, written = 0;
        if (H5Pget_chunk(create, rank, chunk) != rank) {
            status = ddt_error(DDT_ERR_FORMAT, "%s: unreadable chunk shape", where);
            break;
        }
        for (int d = 0; d < rank; d++)
            expected *= chunk[d] ? (dims[d] + chunk[d] - 1) / chunk[d] : 0;
        if (expected > 0 && H5Dget_num_chunks(handle, space, &written) < 0) {
            char detail[256];
            status = ddt_error(DDT_ERR_FORMAT, "%s: cannot count its chunks (HDF5: %s)", where,
                               hdf5_error_detail(detail, sizeof detail));
        } else if (written < expected) {
            status = ddt_error(DDT_ERR_FORMAT,
                               "%s: %llu of its %llu chunks were never written (the file holds "
                               "no values for them; HDF5 would read the fill value)",
                               where, (unsigned long long)(expected - written),
                               (unsigned long long)expected);
        }
        break;
    }
    case H5D_CONTIGUOUS: {
        if (bytes == 0) break;
        haddr_t offset = H5Dget_offset(handle);
        hsize_t file_size = 0;
        if (offset == HADDR_UNDEF || H5Dget_storage_size(handle) < bytes) {
            status = ddt_error(DDT_ERR_FORMAT,
                               "%s: its %llu bytes of values were never written (the file holds "
                               "no storage for them; HDF5 would read the fill value)",
                               where, (unsigned long long)bytes);
        } else if (H5Fget_filesize(file, &file_size) < 0 || offset > file_size ||
                   file_size - offset < bytes) {
            status = ddt_error(DDT_ERR_FORMAT,
                               "%s: declares %llu bytes of values at offset %llu, but the file "
                               "has only %llu bytes",
                               where, (unsigned long long)bytes, (unsigned long long)offset,
                               (unsigned long long)file_size);
        }
        break;
    }
    case H5D_VIRTUAL:
        if (depth > 0) {
            status =
                ddt_error(DDT_ERR_FORMAT,
                          "%s: is itself a virtual dataset, which ddtrain does not follow", where);
            break;
        }
        status = check_virtual(file, file_path, handle, create, where, bytes / element_size, rules);
        break;
    case H5D_COMPACT: /* the values are in the object header, which HDF5 checked */
        break;
    default:
        status = ddt_error(DDT_ERR_FORMAT, "%s: an unknown storage layout", where);
        break;
    }
done:
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (create >= 0) H5Pclose(create);
    H5Fclose(file);
    return status;
}

ddt_status hdf5_check_storage(hid_t dataset, const char *where, const storage_rules *rules) {
    return check_dataset_storage(dataset, where, rules, 0);
}
