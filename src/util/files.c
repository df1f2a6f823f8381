/* files.c - file identity, durable publication and space reservation (see files.h). */
#include "util/files.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

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
