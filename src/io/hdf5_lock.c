/* hdf5_lock.c - the process-wide HDF5 lock, the read marks behind read_guard.h, and the
 * shared HDF5/file helpers of src/io. */
#include "io/hdf5_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io/read_guard.h"

static pthread_once_t hdf5_lock_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t hdf5_mutex;

static void hdf5_lock_init(void) {
    pthread_mutexattr_t attributes;
    pthread_mutexattr_init(&attributes);
    pthread_mutexattr_settype(&attributes, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&hdf5_mutex, &attributes);
    pthread_mutexattr_destroy(&attributes);
    /* Runs once, before any thread can hold the lock, so no other HDF5 call is in flight. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/* The read mark. Written only by the lock's holder; read at any time, from any thread or a
 * signal handler, through read_guard_current(): plain words, the path a fixed buffer. */
static int lock_depth;   /* holder's nesting depth */
static int marked_depth; /* depth the mark was made at; 0: no mark */
static pthread_t reading_thread;
static char reading_path[4096];
static volatile double reading_started;
static volatile sig_atomic_t reading; /* 1 while a mark stands */

static double monotonic_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void hdf5_lock_acquire(void) {
    pthread_once(&hdf5_lock_once, hdf5_lock_init);
    pthread_mutex_lock(&hdf5_mutex);
    lock_depth++;
}

void hdf5_lock_release(void) {
    if (marked_depth == lock_depth) {
        reading = 0;
        marked_depth = 0;
    }
    lock_depth--;
    pthread_mutex_unlock(&hdf5_mutex);
}

void hdf5_lock_mark_reading(const char *path) {
    reading = 0; /* a reader never sees a half-copied path marked as current */
    snprintf(reading_path, sizeof reading_path, "%s", path ? path : "an HDF5 file");
    reading_thread = pthread_self();
    reading_started = monotonic_seconds();
    if (marked_depth == 0) marked_depth = lock_depth;
    reading = 1;
}

read_guard_state read_guard_current(void) {
    read_guard_state state = {0};
    if (!reading) return state;
    state.path = reading_path;
    state.started = reading_started;
    state.this_thread = pthread_equal(reading_thread, pthread_self()) != 0;
    return state;
}

double read_guard_now(void) {
    return monotonic_seconds();
}

typedef struct error_detail {
    char *buffer;
    size_t size;
    int found;
} error_detail;

static herr_t keep_innermost(unsigned n, const H5E_error2_t *error, void *context) {
    error_detail *detail = context;
    (void)n;
    /* Walking upward, the first entry is where the failure started: the most specific. */
    if (!detail->found && error->desc && error->desc[0]) {
        snprintf(detail->buffer, detail->size, "%s", error->desc);
        detail->found = 1;
    }
    return 0;
}

const char *hdf5_error_detail(char *buffer, size_t size) {
    error_detail detail = {buffer, size, 0};
    if (size == 0) return buffer;
    buffer[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, &detail);
    if (!detail.found) snprintf(buffer, size, "unknown HDF5 error");
    return buffer;
}

void hdf5_temp_path(const char *path, char *out, size_t out_size) {
    snprintf(out, out_size, "%s.tmp-%ld", path, (long)getpid());
}

static ddt_status sync_directory_of(const char *path) {
    char directory[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(directory, sizeof directory, ".");
    } else if (slash == path) {
        snprintf(directory, sizeof directory, "/");
    } else {
        snprintf(directory, sizeof directory, "%.*s", (int)(slash - path), path);
    }
    int fd = open(directory, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot sync directory %s: %s", path, directory,
                         strerror(errno));
    /* Some file systems refuse fsync on directories (EINVAL); the rename is still done. */
    if (fsync(fd) != 0 && errno != EINVAL) {
        int saved = errno;
        close(fd);
        return ddt_error(DDT_ERR_IO, "%s: cannot sync directory %s: %s", path, directory,
                         strerror(saved));
    }
    close(fd);
    return DDT_OK;
}

ddt_status hdf5_file_commit(const char *temp_path, const char *path) {
    int fd = open(temp_path, O_RDONLY);
    if (fd < 0) {
        ddt_status status = ddt_error(DDT_ERR_IO, "%s: cannot reopen temporary file %s: %s", path,
                                      temp_path, strerror(errno));
        unlink(temp_path);
        return status;
    }
    if (fsync(fd) != 0) {
        int saved = errno;
        close(fd);
        unlink(temp_path);
        return ddt_error(DDT_ERR_IO, "%s: cannot flush to disk: %s", path, strerror(saved));
    }
    close(fd);
    if (rename(temp_path, path) != 0) {
        int saved = errno;
        unlink(temp_path);
        return ddt_error(DDT_ERR_IO, "%s: cannot replace with %s: %s", path, temp_path,
                         strerror(saved));
    }
    /* Without this a crash could forget the rename even though the data reached the disk. */
    return sync_directory_of(path);
}

ddt_status hdf5_write_temporary(const char *temp_path, const char *path, hdf5_contents_writer write,
                                const void *context) {
    /* open() first so the user gets errno's words rather than HDF5's generic failure. */
    int fd = open(temp_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return ddt_error(DDT_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    close(fd);
    char detail[256];
    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    hid_t file = H5Fcreate(temp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) {
        status = ddt_error(DDT_ERR_IO, "%s: creating the HDF5 file failed (HDF5: %s)", path,
                           hdf5_error_detail(detail, sizeof detail));
    } else {
        status = write(file, path, context);
        if (H5Fclose(file) < 0 && status == DDT_OK)
            status = ddt_error(DDT_ERR_IO, "%s: finishing the file failed (HDF5: %s)", path,
                               hdf5_error_detail(detail, sizeof detail));
    }
    hdf5_lock_release();
    if (status != DDT_OK) unlink(temp_path);
    return status;
}

ddt_status hdf5_check_readable(const char *path) {
    struct stat info;
    if (stat(path, &info) != 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(info.st_mode))
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", path, strerror(EISDIR));
    if (access(path, R_OK) != 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return DDT_OK;
}
