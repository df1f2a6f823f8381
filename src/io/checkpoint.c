/* checkpoint.c - training checkpoints as HDF5 files: the --save model layout plus optimizer
 * state, position in the data and configuration, written atomically and pruned to the newest K.
 */
#include "io/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/file.h>
#include <unistd.h>

#include "io/hdf5_lock.h"
#include "io/hdf5_storage.h"
#include "util/files.h"
#include "io/model_file.h"

#define CHECKPOINT_VERSION 1
#define CHECKPOINT_PATH_MAX 4096
#define CHECKPOINT_NAME_MAX 256

static const char checkpoint_prefix[] = "checkpoint-";
static const char checkpoint_suffix[] = ".h5";
static const char temporary_infix[] = ".tmp-"; /* file_temp_path(): "PATH.tmp-<pid>" */

/* ---- names ---- */

/* Reads a run of 1 to 18 decimal digits (so it cannot overflow int64) at `text`; returns the
 * first character after it, or NULL. */
static const char *parse_digits(const char *text, int64_t *value) {
    int64_t result = 0;
    int digits = 0;
    for (; *text >= '0' && *text <= '9'; text++, digits++) {
        if (digits == 18) return NULL;
        result = result * 10 + (*text - '0');
    }
    if (digits == 0) return NULL;
    *value = result;
    return text;
}

/* "checkpoint-<digits>.h5" -> true and its step; false for anything else, temporaries too. */
static bool parse_checkpoint_name(const char *name, int64_t *step) {
    if (strncmp(name, checkpoint_prefix, sizeof checkpoint_prefix - 1) != 0) return false;
    const char *rest = parse_digits(name + sizeof checkpoint_prefix - 1, step);
    return rest && strcmp(rest, checkpoint_suffix) == 0;
}

/* "checkpoint-<digits>.h5.tmp-<digits>": a temporary file of this module's writer. */
static bool is_temporary_name(const char *name) {
    int64_t number;
    if (strncmp(name, checkpoint_prefix, sizeof checkpoint_prefix - 1) != 0) return false;
    const char *rest = parse_digits(name + sizeof checkpoint_prefix - 1, &number);
    if (!rest || strncmp(rest, checkpoint_suffix, sizeof checkpoint_suffix - 1) != 0) return false;
    rest += sizeof checkpoint_suffix - 1;
    if (strncmp(rest, temporary_infix, sizeof temporary_infix - 1) != 0) return false;
    rest = parse_digits(rest + sizeof temporary_infix - 1, &number);
    return rest && *rest == '\0';
}

static ddt_status join_path(const char *directory, const char *name, char *out, size_t size) {
    int length = snprintf(out, size, "%s/%s", directory, name);
    if (length < 0 || (size_t)length >= size)
        return ddt_error(DDT_ERR_USAGE, "%.200s/%s: path too long", directory, name);
    return DDT_OK;
}

/* ---- the directory ---- */

/* mkdir -p: creates `directory` and any missing parents. */
static ddt_status make_directories(const char *directory) {
    char path[CHECKPOINT_PATH_MAX];
    size_t length = strlen(directory);
    if (length >= sizeof path)
        return ddt_error(DDT_ERR_USAGE, "%.200s...: checkpoint directory path too long", directory);
    memcpy(path, directory, length + 1);
    while (length > 1 && path[length - 1] == '/')
        path[--length] = '\0';
    for (size_t end = 1; end <= length; end++) {
        if (path[end] != '/' && path[end] != '\0') continue;
        char saved = path[end];
        path[end] = '\0';
        struct stat info;
        if (mkdir(path, 0755) != 0) {
            int error = errno;
            if (error != EEXIST || stat(path, &info) != 0) {
                if (end == length)
                    return ddt_error(DDT_ERR_IO, "%s: cannot create the checkpoint directory: %s",
                                     directory, strerror(error));
                return ddt_error(DDT_ERR_IO, "%s: cannot create the checkpoint directory: %s: %s",
                                 directory, path, strerror(error));
            }
            if (!S_ISDIR(info.st_mode))
                return ddt_error(DDT_ERR_IO,
                                 "%s: cannot create the checkpoint directory: %s is not a "
                                 "directory",
                                 directory, path);
        }
        path[end] = saved;
    }
    return DDT_OK;
}

ddt_status checkpoint_check_directory(const char *directory) {
    if (!directory || !*directory) return ddt_error(DDT_ERR_USAGE, "no checkpoint directory given");
    DDT_CHECK(make_directories(directory));
    /* A real file, not access(): root passes access() on a read-only NFS export, and a job
     * should learn that before hours of training rather than at its first checkpoint. */
    char probe[CHECKPOINT_PATH_MAX];
    char name[64];
    snprintf(name, sizeof name, ".ddtrain-probe-%ld", (long)getpid());
    DDT_CHECK(join_path(directory, name, probe, sizeof probe));
    DDT_CHECK(file_temp_register(probe));
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        ddt_status status = ddt_error(DDT_ERR_IO, "%s: cannot write checkpoints there: %s",
                                      directory, strerror(errno));
        file_temp_forget(probe);
        return status;
    }
    close(fd);
    file_temp_remove(probe);
    return DDT_OK;
}

typedef struct checkpoint_entry {
    int64_t step;
    char name[CHECKPOINT_NAME_MAX];
} checkpoint_entry;

/* Newest first; equal steps (checkpoint-7.h5 beside checkpoint-000000000007.h5) by name, so
 * the order never depends on readdir's. */
static int compare_entries_newest_first(const void *a, const void *b) {
    const checkpoint_entry *x = a, *y = b;
    if (x->step != y->step) return x->step > y->step ? -1 : 1;
    return -strcmp(x->name, y->name);
}

/* The checkpoint files (by name) in `directory`, newest first; *entries is malloc'ed (NULL if
 * none). A missing directory has none. */
static ddt_status list_checkpoints(const char *directory, checkpoint_entry **entries,
                                   size_t *count) {
    *entries = NULL;
    *count = 0;
    DIR *listing = opendir(directory);
    if (!listing) {
        if (errno == ENOENT) return DDT_OK;
        return ddt_error(DDT_ERR_IO, "%s: cannot read the checkpoint directory: %s", directory,
                         strerror(errno));
    }
    checkpoint_entry *list = NULL;
    size_t used = 0, capacity = 0;
    ddt_status status = DDT_OK;
    for (;;) {
        errno = 0;
        struct dirent *entry = readdir(listing);
        if (!entry) {
            if (errno != 0)
                status = ddt_error(DDT_ERR_IO, "%s: cannot read the checkpoint directory: %s",
                                   directory, strerror(errno));
            break;
        }
        int64_t step;
        if (!parse_checkpoint_name(entry->d_name, &step)) continue;
        if (used == capacity) {
            size_t grown = capacity ? 2 * capacity : 16;
            checkpoint_entry *bigger = realloc(list, grown * sizeof *bigger);
            if (!bigger) {
                status =
                    ddt_error(DDT_ERR_MEMORY, "%s: out of memory listing checkpoints", directory);
                break;
            }
            list = bigger;
            capacity = grown;
        }
        list[used].step = step;
        snprintf(list[used].name, sizeof list[used].name, "%s", entry->d_name);
        used++;
    }
    closedir(listing);
    if (status != DDT_OK) {
        free(list);
        return status;
    }
    if (used > 1) qsort(list, used, sizeof *list, compare_entries_newest_first);
    *entries = list;
    *count = used;
    return DDT_OK;
}

/* Deletes temporary files left by interrupted writes. Best effort: one that cannot be deleted
 * only wastes space, and is never mistaken for a checkpoint. */
static ddt_status remove_stale_temporaries(const char *directory) {
    DIR *listing = opendir(directory);
    if (!listing)
        return ddt_error(DDT_ERR_IO, "%s: cannot read the checkpoint directory: %s", directory,
                         strerror(errno));
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL) {
        if (!is_temporary_name(entry->d_name)) continue;
        char path[CHECKPOINT_PATH_MAX];
        struct stat info; /* ours are regular files: a device or FIFO so named is left alone */
        if (join_path(directory, entry->d_name, path, sizeof path) == DDT_OK &&
            lstat(path, &info) == 0 && S_ISREG(info.st_mode))
            unlink(path);
    }
    closedir(listing);
    return DDT_OK;
}

/* ---- HDF5 helpers (callers hold the HDF5 lock) ---- */

static ddt_status hdf5_failure(const char *path, const char *what, const char *name) {
    char detail[256];
    return ddt_error(DDT_ERR_IO, "%s: %s%s%s failed (HDF5: %s)", path, what, name ? " " : "",
                     name ? name : "", hdf5_error_detail(detail, sizeof detail));
}

/* A scalar attribute `name` on `object`, stored as `file_type`, from a `memory_type` value. */
static herr_t write_scalar_attribute(hid_t object, const char *name, hid_t file_type,
                                     hid_t memory_type, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attribute = H5Acreate2(object, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t result = attribute < 0 ? -1 : H5Awrite(attribute, memory_type, value);
    if (attribute >= 0 && H5Aclose(attribute) < 0) result = -1;
    H5Sclose(space);
    return result;
}

/* Variable-length UTF-8, as model_file.c writes "model": h5py returns it as str. */
static herr_t write_string_attribute(hid_t object, const char *name, const char *text) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    herr_t result = write_scalar_attribute(object, name, type, type, &text);
    H5Tclose(type);
    return result;
}

static ddt_status write_optimizer_state(hid_t file, const char *path,
                                        const checkpoint_state *state) {
    hid_t group = H5Gcreate2(file, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (group < 0) return hdf5_failure(path, "creating", "/optimizer");
    hsize_t dims[1] = {(hsize_t)state->optimizer_state_count};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t dataset =
        H5Dcreate2(group, "state", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t result = dataset < 0 ? -1 : 0;
    /* Nothing to write for a stateless optimizer, and H5Dwrite refuses a NULL buffer. */
    if (result >= 0 && state->optimizer_state_count > 0)
        result = H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                          state->optimizer_state);
    if (dataset >= 0 && H5Dclose(dataset) < 0) result = -1;
    H5Sclose(space);
    if (H5Gclose(group) < 0) result = -1;
    if (result < 0) return hdf5_failure(path, "writing", "/optimizer/state");
    return DDT_OK;
}

static ddt_status write_contents(hid_t file, const char *path, const checkpoint_state *state) {
    DDT_CHECK(model_file_write_contents(file, path, state->spec, state->parameters));
    DDT_CHECK(write_optimizer_state(file, path, state));

    const char *configuration = state->configuration ? state->configuration : "";
    if (write_string_attribute(file, "optimizer_kind", state->optimizer_kind) < 0)
        return hdf5_failure(path, "writing the attribute", "optimizer_kind");
    if (write_string_attribute(file, "configuration", configuration) < 0)
        return hdf5_failure(path, "writing the attribute", "configuration");
    if (write_string_attribute(file, "dataset_identity",
                               state->dataset_identity ? state->dataset_identity : "") < 0)
        return hdf5_failure(path, "writing the attribute", "dataset_identity");

    const struct {
        const char *name;
        int64_t value;
    } integers[] = {
        {"optimizer_steps", state->optimizer_steps},
        {"global_step", state->global_step},
        {"epoch", state->epoch},
        {"samples_seen", state->samples_seen},
        {"global_batch", state->global_batch},
        {"steps_since_overflow", state->steps_since_overflow},
    };
    for (size_t i = 0; i < sizeof integers / sizeof integers[0]; i++)
        if (write_scalar_attribute(file, integers[i].name, H5T_STD_I64LE, H5T_NATIVE_INT64,
                                   &integers[i].value) < 0)
            return hdf5_failure(path, "writing the attribute", integers[i].name);
    if (write_scalar_attribute(file, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &state->seed) < 0)
        return hdf5_failure(path, "writing the attribute", "seed");
    if (write_scalar_attribute(file, "loss_scale", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                               &state->loss_scale) < 0)
        return hdf5_failure(path, "writing the attribute", "loss_scale");
    if (write_scalar_attribute(file, "world_size", H5T_STD_I32LE, H5T_NATIVE_INT,
                               &state->world_size) < 0)
        return hdf5_failure(path, "writing the attribute", "world_size");
    int version = CHECKPOINT_VERSION;
    if (write_scalar_attribute(file, "checkpoint_version", H5T_STD_I32LE, H5T_NATIVE_INT,
                               &version) < 0)
        return hdf5_failure(path, "writing the attribute", "checkpoint_version");

    /* Last, beside the atomic rename: a file that somehow reached its final name unfinished
     * (copied by hand, a file system that broke its promises) lacks it and is never resumed
     * from. */
    int complete = 1;
    if (write_scalar_attribute(file, "checkpoint_complete", H5T_STD_I32LE, H5T_NATIVE_INT,
                               &complete) < 0)
        return hdf5_failure(path, "writing the attribute", "checkpoint_complete");
    return DDT_OK;
}

static ddt_status write_checkpoint_contents(int64_t file, const char *path, const void *state) {
    return write_contents(file, path, state);
}

/* Writes the whole checkpoint into `temp_path`; messages name `path`, the final name. */
static ddt_status write_file(const char *temp_path, const char *path,
                             const checkpoint_state *state) {
    uint64_t floats = model_spec_state_count(state->spec) + state->optimizer_state_count;
    uint64_t text = (state->configuration ? strlen(state->configuration) : 0) +
                    (state->dataset_identity ? strlen(state->dataset_identity) : 0);
    return hdf5_write_temporary(temp_path, path,
                                hdf5_reserve_estimate(floats * sizeof(float) + text),
                                write_checkpoint_contents, state);
}

/* Whether `path` holds a complete checkpoint: a regular file that opens as HDF5 and carries
 * checkpoint_complete = 1. HDF5 refuses to open a truncated file (its end-of-file address lies
 * past the real end), and junk fails the signature check. */
static bool is_complete_checkpoint(const char *path) {
    struct stat info;
    if (stat(path, &info) != 0 || !S_ISREG(info.st_mode)) return false;
    bool complete = false;
    hdf5_lock_acquire();
    hdf5_lock_mark_reading(path);
    if (H5Fis_hdf5(path) > 0) {
        hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (file >= 0) {
            if (H5Aexists(file, "checkpoint_complete") > 0) {
                hid_t attribute = H5Aopen(file, "checkpoint_complete", H5P_DEFAULT);
                hid_t type = attribute < 0 ? -1 : H5Aget_type(attribute);
                int64_t value = 0;
                if (type >= 0 && H5Tget_class(type) == H5T_INTEGER &&
                    H5Aread(attribute, H5T_NATIVE_INT64, &value) >= 0)
                    complete = value == 1;
                if (type >= 0) H5Tclose(type);
                if (attribute >= 0) H5Aclose(attribute);
            }
            hdf5_file_close(file);
        }
    }
    hdf5_lock_release();
    return complete;
}

/* ---- validation shared by writing and reading, so whatever is written reads back ---- */

static ddt_status check_scalars(const char *where, ddt_status code, int64_t optimizer_steps,
                                int64_t global_step, int64_t epoch, int64_t samples_seen,
                                int64_t global_batch, int64_t steps_since_overflow,
                                double loss_scale, int world_size) {
    const struct {
        const char *name;
        int64_t value;
        int64_t minimum;
    } integers[] = {
        {"optimizer_steps", optimizer_steps, 0},
        {"global_step", global_step, 0},
        {"epoch", epoch, 0},
        {"samples_seen", samples_seen, 0},
        {"global_batch", global_batch, 1},
        {"steps_since_overflow", steps_since_overflow, 0},
        {"world_size", world_size, 1},
    };
    for (size_t i = 0; i < sizeof integers / sizeof integers[0]; i++)
        if (integers[i].value < integers[i].minimum)
            return ddt_error(code, "%s: %s is %" PRId64 ", must be at least %" PRId64, where,
                             integers[i].name, integers[i].value, integers[i].minimum);
    if (!isfinite(loss_scale) || loss_scale <= 0)
        return ddt_error(code, "%s: loss_scale is %g, must be finite and positive", where,
                         loss_scale);
    return DDT_OK;
}

static ddt_status check_state(const char *directory, const checkpoint_state *state, int keep) {
    if (!directory || !*directory) return ddt_error(DDT_ERR_USAGE, "no checkpoint directory given");
    if (keep < 1)
        return ddt_error(DDT_ERR_USAGE, "%s: must keep at least 1 checkpoint (asked for %d)",
                         directory, keep);
    if (!state || !state->spec || !state->parameters || !state->optimizer_kind ||
        (state->optimizer_state_count > 0 && !state->optimizer_state))
        return ddt_error(DDT_ERR_INTERNAL, "%s: checkpoint_write: incomplete checkpoint_state",
                         directory);
    size_t kind_length = strlen(state->optimizer_kind);
    if (kind_length == 0 || kind_length >= sizeof((checkpoint_loaded *)0)->optimizer_kind)
        return ddt_error(DDT_ERR_INTERNAL, "%s: checkpoint_write: bad optimizer kind \"%s\"",
                         directory, state->optimizer_kind);
    return check_scalars(directory, DDT_ERR_INTERNAL, state->optimizer_steps, state->global_step,
                         state->epoch, state->samples_seen, state->global_batch,
                         state->steps_since_overflow, state->loss_scale, state->world_size);
}

/* ---- writing ---- */

/* Deletes every checkpoint older than the newest `keep` complete ones. Incomplete files newer
 * than those are left alone (they are ignored when resuming and replaced when their step is
 * written again); `written_name`, just committed, is never deleted. */
static ddt_status prune(const char *directory, const char *written_name, int keep) {
    checkpoint_entry *entries;
    size_t count;
    DDT_CHECK(list_checkpoints(directory, &entries, &count));
    ddt_status status = DDT_OK;
    int complete = 0;
    for (size_t i = 0; i < count && status == DDT_OK; i++) {
        char path[CHECKPOINT_PATH_MAX];
        status = join_path(directory, entries[i].name, path, sizeof path);
        if (status != DDT_OK) break;
        if (strcmp(entries[i].name, written_name) == 0) {
            complete++;
        } else if (complete >= keep) {
            struct stat info;
            if (stat(path, &info) != 0 || !S_ISREG(info.st_mode)) continue; /* not ours */
            if (unlink(path) != 0 && errno != ENOENT)
                status = ddt_error(DDT_ERR_IO, "%s: cannot delete this old checkpoint: %s", path,
                                   strerror(errno));
        } else if (is_complete_checkpoint(path)) {
            complete++;
        }
    }
    free(entries);
    return status;
}

ddt_status checkpoint_write(const char *directory, const checkpoint_state *state, int keep,
                            const checkpoint_write_hooks *hooks, char *written,
                            size_t written_size) {
    if (written && written_size) written[0] = '\0';
    DDT_CHECK(check_state(directory, state, keep));
    DDT_CHECK(make_directories(directory));

    char name[CHECKPOINT_NAME_MAX];
    snprintf(name, sizeof name, "%s%012" PRId64 "%s", checkpoint_prefix, state->global_step,
             checkpoint_suffix);
    char path[CHECKPOINT_PATH_MAX];
    DDT_CHECK(join_path(directory, name, path, sizeof path));
    char temp_path[CHECKPOINT_PATH_MAX + 32];
    file_temp_path(path, temp_path, sizeof temp_path);

    /* Before writing, so space held by an interrupted write is free for this one. */
    DDT_CHECK(remove_stale_temporaries(directory));
    DDT_CHECK(write_file(temp_path, path, state));
    if (hooks && hooks->before_commit) hooks->before_commit(hooks->context, temp_path);
    DDT_CHECK(file_publish(temp_path, path));
    if (written && written_size) snprintf(written, written_size, "%s", path);
    DDT_CHECK(prune(directory, name, keep));
    return DDT_OK;
}

/* ---- finding and reading ---- */

ddt_status checkpoint_find_latest(const char *directory, char *path, size_t path_size,
                                  bool *found) {
    checkpoint_search search;
    DDT_CHECK(checkpoint_search_latest(directory, &search));
    *found = search.found;
    if (path_size) path[0] = '\0';
    if (!search.found) return DDT_OK;
    if (strlen(search.path) >= path_size)
        return ddt_error(DDT_ERR_IO, "%s: path too long for the caller's buffer", search.path);
    snprintf(path, path_size, "%s", search.path);
    return DDT_OK;
}

ddt_status checkpoint_search_latest(const char *directory, checkpoint_search *out) {
    memset(out, 0, sizeof *out);
    if (!directory || !*directory) return ddt_error(DDT_ERR_USAGE, "no checkpoint directory given");
    checkpoint_entry *entries;
    size_t count;
    DDT_CHECK(list_checkpoints(directory, &entries, &count));
    /* Skipping is safe: temporaries never match the name pattern, and a file under a final
     * name that is not complete never came from a finished checkpoint_write() (which renames
     * only a closed, fsynced file carrying checkpoint_complete). Every checkpoint holds the
     * whole training state, so resuming from an older one only repeats steps, and they come
     * out the same, since all randomness is keyed by (seed, step, row). */
    for (size_t i = 0; i < count; i++) {
        char candidate[CHECKPOINT_PATH_MAX];
        if (join_path(directory, entries[i].name, candidate, sizeof candidate) != DDT_OK) continue;
        if (!is_complete_checkpoint(candidate)) {
            if (out->passed_over++ == 0)
                snprintf(out->newest_passed_over, sizeof out->newest_passed_over, "%s", candidate);
            continue;
        }
        snprintf(out->path, sizeof out->path, "%s", candidate);
        out->found = true;
        break;
    }
    free(entries);
    return DDT_OK;
}

/* ---- the directory's lock --------------------------------------------------------------- */

struct checkpoint_lock {
    int fd;
};

static const char lock_name[] = ".ddtrain.lock";

ddt_status checkpoint_lock_directory(const char *directory, const char *holder,
                                     checkpoint_lock **out) {
    *out = NULL;
    char path[CHECKPOINT_PATH_MAX];
    DDT_CHECK(join_path(directory, lock_name, path, sizeof path));
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return ddt_error(DDT_ERR_IO, "--checkpoint-dir %s: cannot create its lock file %s: %s",
                         directory, path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int saved = errno;
        char who[512] = "";
        ssize_t length = pread(fd, who, sizeof who - 1, 0);
        who[length > 0 ? length : 0] = '\0';
        who[strcspn(who, "\n")] = '\0';
        close(fd);
        if (saved == EWOULDBLOCK)
            return ddt_error(DDT_ERR_USAGE,
                             "--checkpoint-dir %s is in use by another ddtrain job (%s): two runs "
                             "in one directory would overwrite and prune each other's "
                             "checkpoints; give this run its own directory",
                             directory, who[0] ? who : "holder unknown");
        return ddt_error(DDT_ERR_IO, "--checkpoint-dir %s: cannot lock %s: %s", directory, path,
                         strerror(saved));
    }
    /* Who holds it, for the message another job gets. The kernel drops the lock when this
     * process ends, however it ends, so a crashed run never leaves the directory locked. */
    if (ftruncate(fd, 0) == 0) {
        ssize_t written = pwrite(fd, holder, strlen(holder), 0);
        (void)written; /* the description is a courtesy; the lock is what counts */
    }
    checkpoint_lock *lock = malloc(sizeof *lock);
    if (!lock) {
        close(fd);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    }
    lock->fd = fd;
    *out = lock;
    return DDT_OK;
}

void checkpoint_unlock(checkpoint_lock *lock) {
    if (!lock) return;
    close(lock->fd); /* closing drops the flock */
    free(lock);
}

static ddt_status missing_attribute(const char *path, const char *name) {
    return ddt_error(DDT_ERR_FORMAT, "%s: no \"%s\" attribute (not a ddtrain checkpoint?)", path,
                     name);
}

/* A scalar numeric attribute of class `expected` (H5T_INTEGER / H5T_FLOAT), read exactly into
 * `memory_type`. */
static ddt_status read_number_attribute(hid_t file, const char *path, const char *name,
                                        H5T_class_t expected, hid_t memory_type, void *value) {
    if (H5Aexists(file, name) <= 0) return missing_attribute(path, name);
    hid_t attribute = H5Aopen(file, name, H5P_DEFAULT);
    if (attribute < 0) return hdf5_failure(path, "opening the attribute", name);
    hid_t type = H5Aget_type(attribute);
    hid_t space = H5Aget_space(attribute);
    ddt_status status = DDT_OK;
    if (H5Tget_class(type) != expected || H5Sget_simple_extent_npoints(space) != 1)
        status = ddt_error(DDT_ERR_FORMAT, "%s: the \"%s\" attribute is not a single %s", path,
                           name, expected == H5T_INTEGER ? "integer" : "floating-point number");
    else if (H5Aread(attribute, memory_type, value) < 0)
        status = hdf5_failure(path, "reading the attribute", name);
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(attribute);
    return status;
}

/* A string attribute, variable- or fixed-length, into a malloc'ed *text. */
static ddt_status read_string_attribute(hid_t file, const char *path, const char *name,
                                        char **text) {
    *text = NULL;
    if (H5Aexists(file, name) <= 0) return missing_attribute(path, name);
    hid_t attribute = H5Aopen(file, name, H5P_DEFAULT);
    if (attribute < 0) return hdf5_failure(path, "opening the attribute", name);
    hid_t type = H5Aget_type(attribute);
    hid_t space = H5Aget_space(attribute);
    ddt_status status = DDT_OK;
    if (H5Tget_class(type) != H5T_STRING || H5Sget_simple_extent_npoints(space) != 1) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: the \"%s\" attribute is not a single string", path,
                           name);
    } else if (H5Tis_variable_str(type) > 0) {
        hid_t memory_type = H5Tcopy(H5T_C_S1);
        H5Tset_size(memory_type, H5T_VARIABLE);
        H5Tset_cset(memory_type, H5Tget_cset(type));
        char *value = NULL;
        if (H5Aread(attribute, memory_type, &value) < 0 || !value) {
            status = hdf5_failure(path, "reading the attribute", name);
        } else {
            *text = strdup(value);
            H5free_memory(value);
        }
        H5Tclose(memory_type);
    } else {
        size_t length = H5Tget_size(type);
        *text = calloc(1, length + 1);
        if (*text && H5Aread(attribute, type, *text) < 0) {
            status = hdf5_failure(path, "reading the attribute", name);
            free(*text);
            *text = NULL;
        }
    }
    if (status == DDT_OK && !*text)
        status = ddt_error(DDT_ERR_MEMORY, "%s: out of memory reading \"%s\"", path, name);
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(attribute);
    return status;
}

/* Reads /optimizer/state; with an expected model, refuses more values than any optimizer keeps
 * for it (AdamW: two per parameter) before allocating them. */
static ddt_status read_optimizer_state(hid_t file, const char *path, bool bounded,
                                       checkpoint_loaded *out) {
    if (H5Lexists(file, "optimizer", H5P_DEFAULT) <= 0 ||
        H5Lexists(file, "optimizer/state", H5P_DEFAULT) <= 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: no /optimizer/state (not a ddtrain checkpoint?)",
                         path);
    hid_t dataset = H5Dopen2(file, "optimizer/state", H5P_DEFAULT);
    if (dataset < 0)
        return ddt_error(DDT_ERR_FORMAT, "%s: /optimizer/state is not a dataset", path);
    hid_t type = H5Dget_type(dataset);
    hid_t space = H5Dget_space(dataset);
    hsize_t dims[1] = {0};
    bool shape_ok =
        H5Sget_simple_extent_ndims(space) == 1 && H5Sget_simple_extent_dims(space, dims, NULL) == 1;
    bool is_float = H5Tget_class(type) == H5T_FLOAT;
    H5Sclose(space);
    H5Tclose(type);
    ddt_status status = DDT_OK;
    char where[4200];
    snprintf(where, sizeof where, "%.4000s: /optimizer/state", path);
    storage_rules rules = {.allow_external = false, .external_hint = NULL};
    if (!is_float || !shape_ok) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: /optimizer/state is not a 1-D float dataset", path);
    } else if (bounded && dims[0] > 2 * (hsize_t)out->parameter_count) {
        status =
            ddt_error(DDT_ERR_FORMAT,
                      "%s: /optimizer/state holds %llu values, but no optimizer keeps more "
                      "than %zu for the model \"%s\"",
                      path, (unsigned long long)dims[0], 2 * out->parameter_count, out->spec.text);
    } else if ((status = hdf5_check_storage(dataset, where, &rules)) != DDT_OK) {
        ddt_error_trace(__FILE__, __LINE__);
    } else {
        size_t count = (size_t)dims[0];
        out->optimizer_state = malloc((count ? count : 1) * sizeof(float));
        if (!out->optimizer_state) {
            status = ddt_error(DDT_ERR_MEMORY, "%s: out of memory for %zu optimizer values", path,
                               count);
        } else if (count > 0 && H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                        out->optimizer_state) < 0) {
            status = hdf5_failure(path, "reading", "/optimizer/state");
        } else {
            out->optimizer_state_count = count;
        }
    }
    H5Dclose(dataset);
    return status;
}

static ddt_status read_contents(hid_t file, const char *path, const model_spec *expected,
                                checkpoint_loaded *out) {
    int64_t complete = 0;
    if (H5Aexists(file, "checkpoint_complete") <= 0)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: not a complete ddtrain checkpoint (no \"checkpoint_complete\" "
                         "attribute)",
                         path);
    DDT_CHECK(read_number_attribute(file, path, "checkpoint_complete", H5T_INTEGER,
                                    H5T_NATIVE_INT64, &complete));
    if (complete != 1)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: not a complete ddtrain checkpoint (checkpoint_complete is %" PRId64
                         ")",
                         path, complete);
    int version = 0;
    DDT_CHECK(read_number_attribute(file, path, "checkpoint_version", H5T_INTEGER, H5T_NATIVE_INT,
                                    &version));
    if (version < 1 || version > CHECKPOINT_VERSION)
        return ddt_error(DDT_ERR_FORMAT, "%s: checkpoint version %d; this ddtrain reads version %d",
                         path, version, CHECKPOINT_VERSION);

    /* The spec and layer shapes first, so nothing is allocated for a model this run does not
     * train (or a file that only claims one). */
    DDT_CHECK(model_file_read_spec_contents(file, path, &out->spec));
    if (expected && strcmp(out->spec.text, expected->text) != 0)
        return ddt_error(DDT_ERR_USAGE, "%s holds model '%s', but this run trains '%s'", path,
                         out->spec.text, expected->text);
    out->parameter_count = model_spec_parameter_count(&out->spec);
    size_t state_count = model_spec_state_count(&out->spec);
    out->parameters = malloc((state_count ? state_count : 1) * sizeof(float));
    if (!out->parameters)
        return ddt_error(DDT_ERR_MEMORY, "%s: out of memory for %zu parameters", path,
                         out->parameter_count);
    DDT_CHECK(model_file_read_parameters_contents(file, path, &out->spec, out->parameters));
    DDT_CHECK(read_optimizer_state(file, path, expected != NULL, out));

    char *kind;
    DDT_CHECK(read_string_attribute(file, path, "optimizer_kind", &kind));
    size_t kind_length = strlen(kind);
    if (kind_length == 0 || kind_length >= sizeof out->optimizer_kind) {
        ddt_status status =
            ddt_error(DDT_ERR_FORMAT, "%s: bad optimizer_kind \"%.40s\"", path, kind);
        free(kind);
        return status;
    }
    memcpy(out->optimizer_kind, kind, kind_length + 1);
    free(kind);
    DDT_CHECK(read_string_attribute(file, path, "configuration", &out->configuration));
    /* Written since checkpoints record their data; older ones have none (""). */
    if (H5Aexists(file, "dataset_identity") > 0)
        DDT_CHECK(read_string_attribute(file, path, "dataset_identity", &out->dataset_identity));
    else
        out->dataset_identity = strdup("");
    if (!out->dataset_identity) return ddt_error(DDT_ERR_MEMORY, "%s: out of memory", path);

    const struct {
        const char *name;
        int64_t *value;
    } integers[] = {
        {"optimizer_steps", &out->optimizer_steps},
        {"global_step", &out->global_step},
        {"epoch", &out->epoch},
        {"samples_seen", &out->samples_seen},
        {"global_batch", &out->global_batch},
        {"steps_since_overflow", &out->steps_since_overflow},
    };
    for (size_t i = 0; i < sizeof integers / sizeof integers[0]; i++)
        DDT_CHECK(read_number_attribute(file, path, integers[i].name, H5T_INTEGER, H5T_NATIVE_INT64,
                                        integers[i].value));
    DDT_CHECK(
        read_number_attribute(file, path, "seed", H5T_INTEGER, H5T_NATIVE_UINT64, &out->seed));
    DDT_CHECK(read_number_attribute(file, path, "loss_scale", H5T_FLOAT, H5T_NATIVE_DOUBLE,
                                    &out->loss_scale));
    DDT_CHECK(read_number_attribute(file, path, "world_size", H5T_INTEGER, H5T_NATIVE_INT,
                                    &out->world_size));
    return check_scalars(path, DDT_ERR_FORMAT, out->optimizer_steps, out->global_step, out->epoch,
                         out->samples_seen, out->global_batch, out->steps_since_overflow,
                         out->loss_scale, out->world_size);
}

ddt_status checkpoint_read(const char *path, checkpoint_loaded *out) {
    return checkpoint_read_for(path, NULL, out);
}

ddt_status checkpoint_read_for(const char *path, const model_spec *expected,
                               checkpoint_loaded *out) {
    memset(out, 0, sizeof *out);
    DDT_CHECK(hdf5_check_readable(path));
    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    hdf5_lock_mark_reading(path);
    if (H5Fis_hdf5(path) <= 0) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: not an HDF5 file", path);
    } else {
        hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (file < 0) {
            char detail[256];
            status = ddt_error(DDT_ERR_FORMAT, "%s: cannot open (truncated or damaged?): HDF5: %s",
                               path, hdf5_error_detail(detail, sizeof detail));
        } else {
            status = read_contents(file, path, expected, out);
            hdf5_file_close(file);
        }
    }
    hdf5_lock_release();
    if (status != DDT_OK) checkpoint_loaded_free(out);
    return status;
}

void checkpoint_loaded_free(checkpoint_loaded *loaded) {
    if (!loaded) return;
    free(loaded->configuration);
    free(loaded->dataset_identity);
    free(loaded->optimizer_state);
    free(loaded->parameters);
    memset(loaded, 0, sizeof *loaded);
}
