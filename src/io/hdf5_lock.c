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
#include "util/files.h"
#include "util/clock.h"

static pthread_once_t hdf5_lock_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t hdf5_mutex;
static _Thread_local int lock_depth;
/* The first failure since the current top-level HDF5 operation began (see hdf5_error_detail):
 * later calls (closing what was open) would otherwise replace HDF5's error stack with their
 * own, and the reason ("No space left on device") would be lost. */
static _Thread_local char first_failure[256];
static bool file_left_open; /* an H5Fclose failed: HDF5 cannot shut down cleanly */

typedef struct error_detail {
    char *buffer;
    size_t size;
    int found;
    int system_error; /* found a system call's error message, the most useful detail */
} error_detail;

/* Walking upward, the first entry is where the failure started: the most specific. A system
 * call's failure reads "... errno = 28, error message = 'No space left on device', ...": that
 * message wins over everything else. */
static herr_t keep_innermost(unsigned n, const H5E_error2_t *error, void *context) {
    error_detail *detail = context;
    (void)n;
    if (!error->desc || !error->desc[0] || detail->system_error) return 0;
    const char *quoted = strstr(error->desc, "error message = '");
    if (quoted) {
        quoted += strlen("error message = '");
        snprintf(detail->buffer, detail->size, "%.*s", (int)strcspn(quoted, "'"), quoted);
        detail->found = detail->system_error = 1;
    } else if (!detail->found) {
        snprintf(detail->buffer, detail->size, "%s", error->desc);
        detail->found = 1;
    }
    return 0;
}

/* HDF5's "automatic error reporting", called when an API call fails: instead of printing,
 * remember the first failure's reason. */
static herr_t remember_failure(hid_t stack, void *unused) {
    (void)unused;
    if (first_failure[0]) return 0;
    error_detail detail = {first_failure, sizeof first_failure, 0, 0};
    H5Ewalk2(stack, H5E_WALK_UPWARD, keep_innermost, &detail);
    return 0;
}

static void hdf5_lock_init(void) {
    pthread_mutexattr_t attributes;
    pthread_mutexattr_init(&attributes);
    pthread_mutexattr_settype(&attributes, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&hdf5_mutex, &attributes);
    pthread_mutexattr_destroy(&attributes);
    /* Runs once, before any thread can hold the lock, so no other HDF5 call is in flight. */
    H5Eset_auto2(H5E_DEFAULT, remember_failure, NULL);
}

void hdf5_lock_acquire(void) {
    pthread_once(&hdf5_lock_once, hdf5_lock_init);
    pthread_mutex_lock(&hdf5_mutex);
    if (lock_depth++ == 0) first_failure[0] = '\0'; /* a new top-level operation */
}

/* The read mark. Written only by the lock's holder; read at any time, from any thread or a
 * signal handler, through read_guard_current(): plain words, the path a fixed buffer. */
static int marked_depth; /* the holder's lock_depth when the mark was made; 0: no mark */
static pthread_t reading_thread;
static char reading_path[4096];
static volatile double reading_started;
static volatile sig_atomic_t reading; /* 1 while a mark stands */

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
    reading_started = clock_now();
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
    return clock_now();
}

const char *hdf5_error_detail(char *buffer, size_t size) {
    if (size == 0) return buffer;
    if (first_failure[0]) {
        snprintf(buffer, size, "%s", first_failure);
        return buffer;
    }
    error_detail detail = {buffer, size, 0, 0};
    buffer[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, &detail);
    if (!detail.found) snprintf(buffer, size, "unknown HDF5 error");
    return buffer;
}

herr_t hdf5_file_close(hid_t file) {
    herr_t result = H5Fclose(file);
    if (result < 0) file_left_open = true;
    return result;
}

bool hdf5_shut_down_unsafe(void) {
    return file_left_open;
}

uint64_t hdf5_reserve_estimate(uint64_t data_bytes) {
    /* ddtrain's files hold a few dozen objects: their headers, attributes and the
     * superblock take well under 64 KiB (a model's file is about 7 KiB over its weights). */
    return data_bytes + data_bytes / 100 + ((uint64_t)128 << 10);
}

ddt_status hdf5_reserve(int64_t file, const char *path, uint64_t bytes) {
    int *fd = NULL;
    if (H5Fget_vfd_handle((hid_t)file, H5P_DEFAULT, (void **)&fd) < 0 || !fd)
        return DDT_OK; /* not a POSIX file (another driver): nothing to reserve */
    return file_reserve(*fd, path, bytes);
}

ddt_status hdf5_write_temporary(const char *temp_path, const char *path, uint64_t reserve_bytes,
                                hdf5_contents_writer write, const void *context) {
    /* open() first so the user gets errno's words rather than HDF5's generic failure;
     * registered first, so a signal from here on removes it (util/files.h). */
    DDT_CHECK(file_temp_register(temp_path));
    int fd = open(temp_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        ddt_status status = ddt_error(DDT_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        file_temp_forget(temp_path);
        return status;
    }
    close(fd);
    char detail[256];
    ddt_status status = DDT_OK;
    hdf5_lock_acquire();
    hid_t file = H5Fcreate(temp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) {
        status = ddt_error(DDT_ERR_IO, "%s: creating the HDF5 file failed (HDF5: %s)", path,
                           hdf5_error_detail(detail, sizeof detail));
    } else {
        status = hdf5_reserve(file, path, reserve_bytes);
        if (status == DDT_OK) status = write(file, path, context);
        if (hdf5_file_close(file) < 0 && status == DDT_OK)
            status = ddt_error(DDT_ERR_IO, "%s: finishing the file failed (HDF5: %s)", path,
                               hdf5_error_detail(detail, sizeof detail));
    }
    hdf5_lock_release();
    if (status != DDT_OK) file_temp_remove(temp_path);
    return status;
}

ddt_status hdf5_check_readable(const char *path) {
    /* HDF5 opens by path and would wait in open() for a FIFO's writer: regular files only. */
    DDT_CHECK(file_check_regular_input(path, NULL));
    if (access(path, R_OK) != 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return DDT_OK;
}
