/* files.c - file identity, durable publication, space reservation, regular-file inputs and
 * the temporary files removed on a signal (see files.h). */
#include "util/files.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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
        for (int p = 0; p < o && id.exists; p++) {
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

void file_temp_path(const char *path, char *out, size_t size) {
    snprintf(out, size, "%s.tmp-%ld", path, (long)getpid());
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
    if (rename(temp_path, path) != 0) {
        int saved = errno;
        file_temp_remove(temp_path);
        return ddt_error(DDT_ERR_IO, "%s: cannot replace with %s: %s", path, temp_path,
                         strerror(saved));
    }
    file_temp_forget(temp_path);
    /* Without this a crash could forget the rename even though the data reached the disk. */
    return file_sync_directory_of(path);
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

const char *file_type_name(mode_t mode) {
    if (S_ISREG(mode)) return "a regular file";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISLNK(mode)) return "a symbolic link";
    return "not a file";
}

/* The error for a `mode` that is not a regular file. */
static ddt_status not_regular(const char *name, mode_t mode) {
    if (S_ISDIR(mode)) return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", name, strerror(EISDIR));
    return ddt_error(DDT_ERR_USAGE,
                     "%s: not a regular file but %s: ddtrain reads its inputs from regular files "
                     "only (a pipe or a device could block or never end)",
                     name, file_type_name(mode));
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

static void on_cleanup_signal(int signal_number) {
    file_temp_remove_all();
    /* SA_RESETHAND restored the default action; the signal, blocked while this handler runs,
     * is delivered again when it returns and ends the process as it would have. */
    raise(signal_number);
}

void file_temp_cleanup_on_signals(void) {
    static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_cleanup_signal;
    action.sa_flags = SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        struct sigaction previous;
        /* A signal ignored at start (nohup's SIGHUP, a shell's background SIGINT) stays so. */
        if (sigaction(signals[i], NULL, &previous) == 0 && previous.sa_handler == SIG_IGN) continue;
        sigaction(signals[i], &action, NULL);
    }
}
