/* files.c - file identity, durable publication, space reservation, regular-file inputs and
 * the temporary files removed on a signal (see files.h). */
#include "util/files.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "util/failpoint.h"

file_identity file_identity_of(const char *path) {
    file_identity id = {0};
    struct stat info;
    if (path && stat(path, &info) == 0) {
        id.exists = true;
        id.device = info.st_dev;
        id.inode = info.st_ino;
    }
    return id;
}

bool file_identity_equal(file_identity a, file_identity b) {
    return a.exists && b.exists && a.device == b.device && a.inode == b.inode;
}

/* Whether the file at `path` lies inside `directory` (any depth), by the identity of each
 * directory above it once links are resolved. */
static bool inside_directory(const char *path, file_identity directory) {
    char resolved[PATH_MAX];
    if (!directory.exists || !realpath(path, resolved)) return false;
    for (char *slash = strrchr(resolved, '/'); slash; slash = strrchr(resolved, '/')) {
        if (slash == resolved) { /* the root itself */
            resolved[1] = '\0';
            return file_identity_equal(file_identity_of(resolved), directory);
        }
        *slash = '\0';
        if (file_identity_equal(file_identity_of(resolved), directory)) return true;
    }
    return false;
}

ddt_status files_check_outputs(const file_role *outputs, int output_count,
                               const file_role *inputs, int input_count) {
    for (int o = 0; o < output_count; o++) {
        const file_role *out = &outputs[o];
        if (!out->path) continue;
        file_identity id = file_identity_of(out->path);
        for (int i = 0; i < input_count && id.exists; i++) {
            const file_role *in = &inputs[i];
            if (!in->path) continue;
            if (out->directory && inside_directory(in->path, id))
                return ddt_error(DDT_ERR_USAGE,
                                 "%s %s holds the input %s %s, and ddtrain writes (and prunes) "
                                 "files there: it never risks its own inputs; give %s another "
                                 "directory, or move the input out of it",
                                 out->option, out->path, in->option, in->path, out->option);
            if (!out->directory && file_identity_equal(id, file_identity_of(in->path)))
                return ddt_error(DDT_ERR_USAGE,
                                 "%s %s is the same file as the input %s %s: ddtrain never "
                                 "writes over its own inputs; give %s another path",
                                 out->option, out->path, in->option, in->path, out->option);
        }
        /* Several outputs may go to one character device (/dev/null): nothing is replaced,
         * and a device takes what it is given. One FIFO's reader could not tell two apart. */
        struct stat info;
        bool shared_device = stat(out->path, &info) == 0 && S_ISCHR(info.st_mode);
        for (int p = 0; p < o && id.exists && !shared_device; p++) {
            const file_role *other = &outputs[p];
            if (other->path && file_identity_equal(id, file_identity_of(other->path)))
                return ddt_error(DDT_ERR_USAGE, "%s %s and %s %s are the same file: give each its own",
                                 other->option, other->path, out->option, out->path);
        }
        /* Two outputs named alike but not there yet are still one file. */
        for (int p = 0; p < o && !id.exists; p++) {
            const file_role *other = &outputs[p];
            if (other->path && !other->directory && !out->directory &&
                strcmp(other->path, out->path) == 0)
                return ddt_error(DDT_ERR_USAGE, "%s and %s both name %s: give each its own",
                                 other->option, out->option, out->path);
        }
    }
    return DDT_OK;
}

/* ---- outputs that are not regular files ---- */

const char *file_kind_name(mode_t mode) {
    if (S_ISREG(mode)) return "a regular file";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISLNK(mode)) return "a symbolic link";
    return "a special file";
}

/* FIFOs opened by file_output_prepare(), by path, until their writer takes them. */
enum { HELD_MAX = 16 };
static struct held_stream {
    char *path;
    int fd;
} held[HELD_MAX];
static int held_count;
static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;

static void hold_stream(const char *path, int fd) {
    char *copy = strdup(path);
    pthread_mutex_lock(&held_lock);
    for (int i = 0; i < held_count; i++)
        if (strcmp(held[i].path, path) == 0) { /* prepared again: the newer one counts */
            close(held[i].fd);
            free(held[i].path);
            held[i] = held[--held_count];
            break;
        }
    if (copy && held_count < HELD_MAX) {
        held[held_count].path = copy;
        held[held_count++].fd = fd;
        copy = NULL;
        fd = -1;
    }
    pthread_mutex_unlock(&held_lock);
    /* Not kept (no memory, too many): the writer opens it again. */
    free(copy);
    if (fd >= 0) close(fd);
}

/* The descriptor held for `path` (now the caller's), or -1. */
static int take_held_stream(const char *path) {
    int fd = -1;
    pthread_mutex_lock(&held_lock);
    for (int i = 0; i < held_count; i++)
        if (strcmp(held[i].path, path) == 0) {
            fd = held[i].fd;
            free(held[i].path);
            held[i] = held[--held_count];
            break;
        }
    pthread_mutex_unlock(&held_lock);
    return fd;
}

static bool stream_held(const char *path) {
    bool found = false;
    pthread_mutex_lock(&held_lock);
    for (int i = 0; i < held_count && !found; i++)
        found = strcmp(held[i].path, path) == 0;
    pthread_mutex_unlock(&held_lock);
    return found;
}

bool file_output_is_stream(const char *path) {
    struct stat info;
    if (!path) return false;
    if (stream_held(path)) return true;
    return stat(path, &info) == 0 && (S_ISCHR(info.st_mode) || S_ISFIFO(info.st_mode));
}

/* How a file written whole reaches `path`. */
typedef enum output_route {
    ROUTE_RENAME,  /* renamed over `target`: nothing there yet, or a regular file */
    ROUTE_THROUGH, /* copied into `path` in place: a stream, or a regular file behind a link
                    * that names it no more (/dev/stdout to a deleted file) */
    ROUTE_REFUSE,  /* a directory, a block device, a socket: left alone */
} output_route;

/* `target` gets where a renamed file goes: the file a symbolic link points to, so the link
 * stays (a rename over /dev/stdout would replace the link itself), else `path`. */
static output_route route_of(const char *path, char *target, size_t size) {
    snprintf(target, size, "%s", path);
    if (stream_held(path)) return ROUTE_THROUGH;
    struct stat info, link_info;
    if (stat(path, &info) != 0) return ROUTE_RENAME; /* created (or the writer says why not) */
    if (S_ISCHR(info.st_mode) || S_ISFIFO(info.st_mode)) return ROUTE_THROUGH;
    if (!S_ISREG(info.st_mode)) return ROUTE_REFUSE;
    if (lstat(path, &link_info) != 0 || !S_ISLNK(link_info.st_mode)) return ROUTE_RENAME;
    char resolved[PATH_MAX];
    struct stat again;
    if (realpath(path, resolved) && strlen(resolved) < size && stat(resolved, &again) == 0 &&
        again.st_dev == info.st_dev && again.st_ino == info.st_ino) {
        snprintf(target, size, "%s", resolved);
        return ROUTE_RENAME;
    }
    return ROUTE_THROUGH;
}

void file_temp_path(const char *path, char *out, size_t size) {
    char target[PATH_MAX];
    if (route_of(path, target, sizeof target) != ROUTE_THROUGH) {
        if (snprintf(out, size, "%s.tmp-%ld", target, (long)getpid()) < (int)size) return;
        snprintf(out, size, "%s.tmp-%ld", path, (long)getpid()); /* the old place: it fits */
        return;
    }
    /* Never beside a device (in /dev) or a FIFO: under $TMPDIR, copied in by file_publish. */
    static atomic_uint counter;
    unsigned n = atomic_fetch_add(&counter, 1);
    const char *directory = getenv("TMPDIR");
    if (!directory || !*directory) directory = "/tmp";
    if (snprintf(out, size, "%s/ddtrain-%ld-%u.tmp", directory, (long)getpid(), n) < (int)size)
        return;
    snprintf(out, size, "/tmp/ddtrain-%ld-%u.tmp", (long)getpid(), n);
}

/* write() of all of `data` with SIGPIPE blocked in this thread, so a FIFO whose reader has
 * gone gives EPIPE (a message) rather than ending the process; a SIGPIPE raised here is
 * consumed. Returns 0, or -1 with errno set. */
static int write_all_without_sigpipe(int fd, const void *data, size_t size) {
    sigset_t pipe_only, previous, pending;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &previous);
    const char *next = data;
    int result = 0, saved = 0;
    while (size > 0) {
        ssize_t written = write(fd, next, size);
        if (written < 0 && errno == EINTR) continue;
        if (written <= 0) {
            saved = written < 0 ? errno : ENOSPC;
            result = -1;
            break;
        }
        next += written;
        size -= (size_t)written;
    }
    if (result != 0 && saved == EPIPE && !was_pending) {
        const struct timespec now = {0, 0};
        while (sigtimedwait(&pipe_only, NULL, &now) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    errno = saved;
    return result;
}

/* "OPTION PATH" or "PATH", for messages. */
static const char *output_name(const char *option, const char *path, char *out, size_t size) {
    snprintf(out, size, "%s%s%s", option ? option : "", option ? " " : "", path);
    return out;
}

/* Opens the stream `path` for writing: the descriptor file_output_prepare() holds, else a new
 * one, opened without blocking (a FIFO without a reader is an error, not a wait) and then
 * made blocking. `truncate`: a regular file reached through a link that names it no more. */
static ddt_status open_stream(const char *option, const char *path, bool truncate, int *out) {
    char name[PATH_MAX + 64];
    *out = take_held_stream(path);
    if (*out >= 0) return DDT_OK;
    int fd = open(path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (truncate ? O_TRUNC : 0));
    if (fd < 0) {
        if (errno == ENXIO)
            return ddt_error(DDT_ERR_IO,
                             "%s is a FIFO with no reader: ddtrain does not wait for one; start "
                             "its reader first",
                             output_name(option, path, name, sizeof name));
        return ddt_error(DDT_ERR_IO, "%s: cannot open for writing: %s",
                         output_name(option, path, name, sizeof name), strerror(errno));
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int saved = errno;
        close(fd);
        return ddt_error(DDT_ERR_IO, "%s: cannot open for writing: %s",
                         output_name(option, path, name, sizeof name), strerror(saved));
    }
    *out = fd;
    return DDT_OK;
}

ddt_status file_output_prepare(const char *option, const char *path, file_output_form form) {
    char name[PATH_MAX + 64];
    struct stat info;
    if (!path || stat(path, &info) != 0) return DDT_OK; /* created when written */
    output_name(option, path, name, sizeof name);
    if (form == FILE_OUTPUT_DIRECTORY) {
        if (S_ISDIR(info.st_mode)) return DDT_OK;
        return ddt_error(DDT_ERR_IO,
                         "%s is not a directory but %s: give a directory (it is created if "
                         "missing); ddtrain never replaces %s",
                         name, file_kind_name(info.st_mode), file_kind_name(info.st_mode));
    }
    if (S_ISREG(info.st_mode)) return DDT_OK;
    if (S_ISDIR(info.st_mode))
        return ddt_error(DDT_ERR_IO, "%s is a directory: give a file path", name);
    if (!S_ISCHR(info.st_mode) && !S_ISFIFO(info.st_mode))
        return ddt_error(DDT_ERR_IO,
                         "%s is %s: ddtrain writes into regular files, character devices "
                         "(/dev/null) and FIFOs, and never replaces anything else; give a file "
                         "path",
                         name, file_kind_name(info.st_mode));
    /* Without O_NONBLOCK, opening a FIFO for writing waits for a reader forever. */
    int fd = -1;
    struct timespec pause = {0, 20 * 1000 * 1000};
    for (int tries = (int)(FILE_FIFO_READER_WAIT_SECONDS * 50); fd < 0; tries--) {
        fd = open(path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0 || errno != ENXIO || !S_ISFIFO(info.st_mode) || tries <= 0) break;
        nanosleep(&pause, NULL);
    }
    if (fd < 0) {
        if (errno == ENXIO && S_ISFIFO(info.st_mode))
            return ddt_error(DDT_ERR_IO,
                             "%s is a FIFO with no reader (waited %g s for one): start its "
                             "reader first (for example: cat %s > FILE &); opening it would "
                             "block until one comes",
                             name, FILE_FIFO_READER_WAIT_SECONDS, path);
        return ddt_error(DDT_ERR_IO, "%s (%s): cannot open for writing: %s", name,
                         file_kind_name(info.st_mode), strerror(errno));
    }
    /* A device that refuses every write (/dev/full) refuses this one too: said now, not
     * after hours of training. Zero bytes change nothing on a FIFO or /dev/null. */
    if (write(fd, "", 0) < 0) {
        int saved = errno;
        close(fd);
        return ddt_error(DDT_ERR_IO, "%s (%s): cannot write: %s", name,
                         file_kind_name(info.st_mode), strerror(saved));
    }
    if (!S_ISFIFO(info.st_mode)) {
        close(fd);
        return DDT_OK;
    }
    /* Held until written: closing it now would end the reader's input (it would see the end
     * of the file, and leave). */
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int saved = errno;
        close(fd);
        return ddt_error(DDT_ERR_IO, "%s: cannot open for writing: %s", name, strerror(saved));
    }
    hold_stream(path, fd);
    return DDT_OK;
}

typedef struct append_stream {
    int fd;
} append_stream;

static ssize_t append_stream_write(void *cookie, const char *data, size_t size) {
    append_stream *stream = cookie;
    /* stdio reads 0 as an error (errno kept). */
    return write_all_without_sigpipe(stream->fd, data, size) == 0 ? (ssize_t)size : 0;
}

static int append_stream_close(void *cookie) {
    append_stream *stream = cookie;
    int result = close(stream->fd);
    free(stream);
    return result;
}

ddt_status file_output_append(const char *option, const char *path, FILE **out) {
    char name[PATH_MAX + 64];
    *out = NULL;
    if (!file_output_is_stream(path)) {
        *out = fopen(path, "a"); /* a link is followed: records go into what it points to */
        if (!*out)
            return ddt_error(DDT_ERR_IO, "%s '%s': cannot open for appending: %s", option, path,
                             strerror(errno));
        return DDT_OK;
    }
    append_stream *stream = malloc(sizeof *stream);
    if (!stream) return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    ddt_status status = open_stream(option, path, false, &stream->fd);
    if (status != DDT_OK) {
        free(stream);
        return status;
    }
    cookie_io_functions_t functions = {.write = append_stream_write, .close = append_stream_close};
    *out = fopencookie(stream, "a", functions);
    if (!*out) {
        int saved = errno;
        close(stream->fd);
        free(stream);
        return ddt_error(DDT_ERR_IO, "%s: cannot open for appending: %s",
                         output_name(option, path, name, sizeof name), strerror(saved));
    }
    return DDT_OK;
}

/* file_publish for a stream: temp_path's bytes are written into `path` in place, then
 * temp_path is removed. */
static ddt_status publish_through(const char *temp_path, const char *path) {
    struct stat info;
    bool regular = !stream_held(path) && stat(path, &info) == 0 && S_ISREG(info.st_mode);
    int in = open(temp_path, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        ddt_status status = ddt_error(DDT_ERR_IO, "%s: cannot reopen temporary file %s: %s", path,
                                      temp_path, strerror(errno));
        file_temp_remove(temp_path);
        return status;
    }
    int out;
    ddt_status status = open_stream(NULL, path, regular, &out);
    if (status != DDT_OK) {
        close(in);
        file_temp_remove(temp_path);
        return status;
    }
    enum { BUFFER_SIZE = 1 << 16 };
    char *buffer = malloc(BUFFER_SIZE);
    if (!buffer) status = ddt_error(DDT_ERR_MEMORY, "%s: out of host memory", path);
    while (status == DDT_OK) {
        ssize_t got = read(in, buffer, BUFFER_SIZE);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            status = ddt_error(DDT_ERR_IO, "%s: cannot read back temporary file %s: %s", path,
                               temp_path, strerror(errno));
            break;
        }
        if (got == 0) break;
        if (write_all_without_sigpipe(out, buffer, (size_t)got) != 0) {
            status = ddt_error(DDT_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
            break;
        }
    }
    free(buffer);
    close(in);
    if (close(out) != 0 && status == DDT_OK && errno != EINTR)
        status = ddt_error(DDT_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    file_temp_remove(temp_path);
    return status;
}

ddt_status file_sync_directory_of(const char *path) {
    char directory[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(directory, sizeof directory, ".");
    else if (slash == path)
        snprintf(directory, sizeof directory, "/");
    else
        snprintf(directory, sizeof directory, "%.*s", (int)(slash - path), path);
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

ddt_status file_publish(const char *temp_path, const char *path) {
    char target[PATH_MAX];
    struct stat info;
    switch (route_of(path, target, sizeof target)) {
    case ROUTE_THROUGH:
        return publish_through(temp_path, path);
    case ROUTE_REFUSE:
        file_temp_remove(temp_path);
        if (stat(path, &info) != 0) info.st_mode = 0;
        return ddt_error(DDT_ERR_IO, "%s is %s: not replaced (give a file path)", path,
                         file_kind_name(info.st_mode));
    case ROUTE_RENAME:
        break;
    }
    int fd = open(temp_path, O_RDONLY);
    if (fd < 0) {
        ddt_status status = ddt_error(DDT_ERR_IO, "%s: cannot reopen temporary file %s: %s", path,
                                      temp_path, strerror(errno));
        file_temp_remove(temp_path);
        return status;
    }
    if (fsync(fd) != 0) {
        int saved = errno;
        close(fd);
        file_temp_remove(temp_path);
        return ddt_error(DDT_ERR_IO, "%s: cannot flush to disk: %s", path, strerror(saved));
    }
    close(fd);
    failpoint_stall("publish", 0); /* tests: a signal while a finished temporary file waits */
    if (rename(temp_path, target) != 0) {
        int saved = errno;
        file_temp_remove(temp_path);
        return ddt_error(DDT_ERR_IO, "%s: cannot replace with %s: %s", path, temp_path,
                         strerror(saved));
    }
    file_temp_forget(temp_path);
    /* Without this a crash could forget the rename even though the data reached the disk. */
    return file_sync_directory_of(target);
}

ddt_status file_reserve(int fd, const char *path, uint64_t bytes) {
    if (bytes == 0) return DDT_OK;
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes) == 0) return DDT_OK;
    int saved = errno;
    if (saved == EOPNOTSUPP || saved == ENOSYS) return DDT_OK; /* cannot reserve here */
    if (saved == ENOSPC || saved == EDQUOT) {
        struct statvfs fs;
        char free_text[64] = "less";
        if (fstatvfs(fd, &fs) == 0)
            snprintf(free_text, sizeof free_text, "%llu bytes",
                     (unsigned long long)fs.f_bavail * (unsigned long long)fs.f_frsize);
        return ddt_error(DDT_ERR_IO,
                         "%s: %s: writing it needs %llu bytes, the file system has %s free",
                         path, strerror(saved), (unsigned long long)bytes, free_text);
    }
    return ddt_error(DDT_ERR_IO, "%s: cannot reserve %llu bytes of disk: %s", path,
                     (unsigned long long)bytes, strerror(saved));
}

/* ---- inputs ------------------------------------------------------------------------------ */

/* The error for a `mode` that is not a regular file. */
static ddt_status not_regular(const char *name, mode_t mode) {
    if (S_ISDIR(mode)) return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", name, strerror(EISDIR));
    return ddt_error(DDT_ERR_USAGE,
                     "%s: not a regular file but %s: ddtrain reads its inputs from regular files "
                     "only (a pipe or a device could block or never end)",
                     name, file_kind_name(mode));
}

ddt_status file_check_regular_input(const char *path, const char *name) {
    if (!name) name = path;
    struct stat info;
    if (stat(path, &info) != 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", name, strerror(errno));
    if (!S_ISREG(info.st_mode)) return not_regular(name, info.st_mode);
    return DDT_OK;
}

ddt_status file_open_regular_input(const char *path, const char *name, int *fd) {
    *fd = -1;
    if (!name) name = path;
    DDT_CHECK(file_check_regular_input(path, name));
    /* O_NONBLOCK: if a FIFO took the file's place since the check, open() returns at once. */
    int opened = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (opened < 0) return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", name, strerror(errno));
    struct stat info;
    if (fstat(opened, &info) != 0) {
        int saved = errno;
        close(opened);
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", name, strerror(saved));
    }
    if (!S_ISREG(info.st_mode)) {
        close(opened);
        return not_regular(name, info.st_mode);
    }
    int flags = fcntl(opened, F_GETFL);
    if (flags >= 0) fcntl(opened, F_SETFL, flags & ~O_NONBLOCK);
    *fd = opened;
    return DDT_OK;
}

ddt_status file_fopen_regular_input(const char *path, const char *name, FILE **out) {
    *out = NULL;
    int fd;
    DDT_CHECK(file_open_regular_input(path, name, &fd));
    FILE *file = fdopen(fd, "rb");
    if (!file) {
        int saved = errno;
        close(fd);
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", name ? name : path, strerror(saved));
    }
    *out = file;
    return DDT_OK;
}

/* ---- temporary files removed on a signal --------------------------------------------------
 *
 * Slots live in chunks that are linked, never freed and never moved, so a signal handler can
 * walk them at any moment. A slot is FREE, BUSY (being filled or emptied: the handler skips
 * it) or LIVE (its path is complete and may be removed). The path is kept in the slot itself,
 * so the handler never follows a pointer another thread might free. */

enum { TEMP_FREE, TEMP_BUSY, TEMP_LIVE };
#define TEMP_CHUNK_SLOTS 16

typedef struct temp_slot {
    atomic_int state;
    char path[PATH_MAX];
} temp_slot;

typedef struct temp_chunk {
    temp_slot slots[TEMP_CHUNK_SLOTS];
    struct temp_chunk *_Atomic next;
} temp_chunk;

static temp_chunk temp_first;

ddt_status file_temp_register(const char *temp_path) {
    size_t length = strlen(temp_path);
    /* Longer paths cannot be created (ENAMETOOLONG): nothing to remove later. */
    if (length >= PATH_MAX) return DDT_OK;
    for (temp_chunk *chunk = &temp_first;;) {
        for (int i = 0; i < TEMP_CHUNK_SLOTS; i++) {
            temp_slot *slot = &chunk->slots[i];
            int expected = TEMP_FREE;
            if (!atomic_compare_exchange_strong(&slot->state, &expected, TEMP_BUSY)) continue;
            memcpy(slot->path, temp_path, length + 1);
            atomic_store(&slot->state, TEMP_LIVE);
            return DDT_OK;
        }
        temp_chunk *next = atomic_load(&chunk->next);
        if (!next) {
            temp_chunk *fresh = calloc(1, sizeof *fresh);
            if (!fresh)
                return ddt_error(DDT_ERR_MEMORY, "%s: out of memory registering the temporary file",
                                 temp_path);
            temp_chunk *none = NULL;
            if (atomic_compare_exchange_strong(&chunk->next, &none, fresh))
                next = fresh;
            else {
                free(fresh); /* another thread linked one first */
                next = none;
            }
        }
        chunk = next;
    }
}

void file_temp_forget(const char *temp_path) {
    for (temp_chunk *chunk = &temp_first; chunk; chunk = atomic_load(&chunk->next))
        for (int i = 0; i < TEMP_CHUNK_SLOTS; i++) {
            temp_slot *slot = &chunk->slots[i];
            if (atomic_load(&slot->state) != TEMP_LIVE || strcmp(slot->path, temp_path) != 0)
                continue;
            int expected = TEMP_LIVE;
            if (atomic_compare_exchange_strong(&slot->state, &expected, TEMP_BUSY)) {
                slot->path[0] = '\0';
                atomic_store(&slot->state, TEMP_FREE);
                return;
            }
        }
}

void file_temp_remove(const char *temp_path) {
    unlink(temp_path);
    file_temp_forget(temp_path);
}

void file_temp_remove_all(void) {
    int saved = errno;
    for (temp_chunk *chunk = &temp_first; chunk; chunk = atomic_load(&chunk->next))
        for (int i = 0; i < TEMP_CHUNK_SLOTS; i++)
            if (atomic_load(&chunk->slots[i].state) == TEMP_LIVE) unlink(chunk->slots[i].path);
    errno = saved;
}

/* Set by the first thread that takes a cleanup signal. A process-directed signal can be
 * delivered again, to another thread, while the first handler is still unlinking (`timeout`
 * sends its signal to the child and to the child's process group, so ddtrain gets it twice):
 * with a one-shot handler the second delivery would find the default action and end the
 * process halfway through the list. The later ones wait here for the first to finish. */
static atomic_int cleanup_signal_taken;

static void on_cleanup_signal(int signal_number) {
    if (atomic_exchange(&cleanup_signal_taken, 1)) {
        for (;;) pause(); /* the first handler ends the process */
    }
    file_temp_remove_all();
    /* The default action ends the process as the signal would have; the signal, blocked in
     * this thread while the handler runs, is delivered again when it returns. */
    struct sigaction default_action;
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    sigaction(signal_number, &default_action, NULL);
    raise(signal_number);
}

void file_temp_cleanup_on_signals(void) {
    static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_cleanup_signal;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
        sigaddset(&action.sa_mask, signals[i]); /* one handler at a time in a thread */
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        struct sigaction previous;
        /* A signal ignored at start (nohup's SIGHUP, a shell's background SIGINT) stays so. */
        if (sigaction(signals[i], NULL, &previous) == 0 && previous.sa_handler == SIG_IGN) continue;
        sigaction(signals[i], &action, NULL);
    }
}
