/* files.h - the file helpers every module shares: which file a path names, durable
 * publication of a new file, reserving disk space up front, and the rule that a run never
 * writes over its own inputs.
 *
 * Identity: two paths name the same file when stat() gives the same device and inode, however
 * they are spelled ("d.h5", "./d.h5", "x/../d.h5", a symbolic link, a hard link). Outputs are
 * compared with inputs this way, never by spelling.
 *
 * Publication: writers write "PATH.tmp-<pid>" beside the target, then file_publish() fsyncs
 * it, renames it over PATH and fsyncs the directory, so a crash at any point leaves either the
 * old file or the complete new one under PATH. On failure the temporary file is removed.
 *
 * Outputs that are not regular files: a path that names a character device (/dev/null,
 * /dev/full, a terminal) or a FIFO is written through in place, as GNU tools and
 * torch.save() do: opened for writing, never truncated, replaced, renamed over or removed. A
 * file written whole (a model, a checkpoint, a trace, a dataset) is first written to a
 * temporary regular file under $TMPDIR (HDF5 needs a file it can seek in) and then copied in;
 * records (--metrics) are written as they come. A path that is a symbolic link to a regular
 * file is published at the file it points to, so the link stays (/dev/stdout is never
 * replaced). file_output_prepare() checks every output at set-up, before any work: a
 * directory where a file goes, a block device or a socket is refused; a FIFO is opened then
 * (a FIFO with no reader is refused after a short wait instead of blocking) and held open until
 * its writer takes it, so the reader stays connected; a device that refuses every write
 * (/dev/full) is found by a write of zero bytes.
 *
 * Space: file_reserve() asks the file system for the bytes a file will need before anything
 * is written (fallocate, keeping the size), so a full disk is a clear "No space left on
 * device" up front instead of a failure halfway through a library's write.
 *
 * Inputs: every file a command reads is a regular file once links are followed. A FIFO
 * would block the open (or the first read) until some writer came, a device such as
 * /dev/zero never ends, and neither is data: file_check_regular_input() refuses them by
 * name before anything opens them, and file_open_regular_input() also opens without
 * blocking and checks the descriptor, so a FIFO swapped in after the check is refused too.
 *
 * Temporary files and signals: a writer registers "PATH.tmp-<pid>" (file_temp_register)
 * before creating it and forgets it once it is renamed or removed (file_publish and
 * file_temp_remove do both). file_temp_cleanup_on_signals() makes SIGTERM, SIGINT and
 * SIGHUP remove every registered file (with async-signal-safe calls only) and then end the
 * process by the same signal, so `kill` or Ctrl-C leaves no temporary behind and the exit
 * status is the usual one.
 *
 * Usage:
 *     file_role inputs[] = {{"--data", "d.h5", false}}, outputs[] = {{"--save", "m.h5", false}};
 *     DDT_CHECK(files_check_outputs(outputs, 1, inputs, 1));
 *     char temp[4200];
 *     file_temp_path("m.h5", temp, sizeof temp);
 *     ... write temp ...
 *     DDT_CHECK(file_publish(temp, "m.h5"));
 */
#ifndef DDT_UTIL_FILES_H
#define DDT_UTIL_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "util/status.h"

typedef struct file_identity {
    bool exists;
    dev_t device;
    ino_t inode;
} file_identity;

/* stat() of `path` (following links); exists is false when there is nothing there. */
file_identity file_identity_of(const char *path);
/* Both exist and are the same file. */
bool file_identity_equal(file_identity a, file_identity b);

/* A file a command reads or writes, named by the option that gave it. `directory` marks an
 * output directory the command writes files into (and may delete its own old files from):
 * --checkpoint-dir, --tensorboard. */
typedef struct file_role {
    const char *option; /* "--save", "--data", "-o", ... */
    const char *path;
    bool directory;
} file_role;

/* Refuses (DDT_ERR_USAGE, naming both options and paths) an output that is one of the inputs,
 * an input inside an output directory, and two outputs that are the same file. Outputs that
 * do not exist yet cannot be inputs. Call before anything is opened for writing. */
ddt_status files_check_outputs(const file_role *outputs, int output_count,
                               const file_role *inputs, int input_count);

/* "PATH.tmp-<pid>": where a writer writes before file_publish(). Beside the file a symbolic
 * link points to, for a link; "$TMPDIR/ddtrain-<pid>-<n>.tmp" for a stream (a character
 * device or a FIFO: see above), which is copied in rather than renamed over. Give `size` of
 * at least PATH_MAX + 32. */
void file_temp_path(const char *path, char *out, size_t size);
/* fsync `temp_path`, rename it to `path`, fsync the directory; on failure removes temp_path
 * and leaves `path` as it was. Messages name `path` and errno's words. A stream (a character
 * device or a FIFO) is not replaced: temp_path's bytes are written into it and temp_path is
 * removed ("No space left on device" for /dev/full). Anything else that is not a regular file
 * (a directory, a block device, a socket) is refused and left as it is. */
ddt_status file_publish(const char *temp_path, const char *path);
/* fsync of the directory holding `path` (file systems that refuse it for directories are
 * accepted: the rename is still done). */
ddt_status file_sync_directory_of(const char *path);
/* ---- outputs that are not regular files ---- */

/* "a regular file", "a directory", "a FIFO (named pipe)", "a character device", "a block
 * device", "a socket", "a symbolic link": what a stat() mode is, for messages about inputs
 * and outputs alike. */
const char *file_kind_name(mode_t mode);

/* Whether `path` (links followed) is written through in place rather than replaced: a
 * character device or a FIFO, or a stream file_output_prepare() holds open. */
bool file_output_is_stream(const char *path);

/* How an output is written. */
typedef enum file_output_form {
    FILE_OUTPUT_WHOLE,     /* written whole, then published (file_temp_path, file_publish) */
    FILE_OUTPUT_APPENDED,  /* records added as they come (file_output_append) */
    FILE_OUTPUT_DIRECTORY, /* a directory files are written into (created if missing) */
} file_output_form;

/* How long file_output_prepare() waits for a FIFO's reader before refusing it. */
#define FILE_FIFO_READER_WAIT_SECONDS 1.0

/* The set-up check of an output given by `option` (call it where the output will be written,
 * before any work). Nothing there, or a regular file: fine. Refuses (DDT_ERR_IO, naming the
 * option, the path and what it is) a directory where a file goes, anything but a directory
 * where a directory goes, a block device and a socket. A character device or a FIFO is opened
 * for writing without blocking: a FIFO without a reader within FILE_FIFO_READER_WAIT_SECONDS,
 * a device that cannot be opened, or one whose zero-byte write fails (/dev/full: "No space
 * left on device") is DDT_ERR_IO too. A FIFO's descriptor is kept for its writer (file_publish,
 * file_output_append); a device is closed and opened again when written. */
ddt_status file_output_prepare(const char *option, const char *path, file_output_form form);

/* Opens `path` to add records to: fopen(path, "a") for a regular file (created if missing,
 * records added to what is there), the held or a fresh non-blocking descriptor for a stream
 * (writes to a FIFO whose reader has gone fail with "Broken pipe" instead of raising SIGPIPE).
 * Messages name `option` and `path`. */
ddt_status file_output_append(const char *option, const char *path, FILE **out);

/* Reserves `bytes` of disk for the open file `fd` (written later as `path`) without changing
 * its size. DDT_ERR_IO "PATH: No space left on device: needs N, the file system has M free"
 * when there is not room; file systems that cannot reserve (EOPNOTSUPP) are accepted. */
ddt_status file_reserve(int fd, const char *path, uint64_t bytes);

/* ---- inputs ------------------------------------------------------------------------------ */

/* Checks, without opening it, that `path` is a regular file once symbolic links are
 * followed. `name` is how messages name it (NULL: the path itself). Errors:
 *   DDT_ERR_IO "NAME: cannot open: No such file or directory" (also a dangling link, and
 *     "Too many levels of symbolic links" for a loop, "Is a directory", "Permission denied");
 *   DDT_ERR_USAGE "NAME: not a regular file but a FIFO (named pipe): ..." for FIFOs,
 *     devices and sockets.
 * For readers that open the file by path themselves (HDF5, zlib); ddtrain's own reads use
 * file_open_regular_input(). */
ddt_status file_check_regular_input(const char *path, const char *name);

/* Opens `path` read-only if it is a regular file: file_check_regular_input() first (so
 * nothing else is ever opened: opening a device can have effects), then open() with
 * O_NONBLOCK and fstat() of the descriptor, so a FIFO swapped in between is refused rather
 * than waited on. *fd is the descriptor (O_CLOEXEC, blocking reads restored); the caller
 * closes it. */
ddt_status file_open_regular_input(const char *path, const char *name, int *fd);
/* The same as a stdio stream opened "rb"; the caller fcloses it. */
ddt_status file_fopen_regular_input(const char *path, const char *name, FILE **out);

/* ---- temporary files removed on SIGTERM, SIGINT and SIGHUP ------------------------------- */

/* Records `temp_path` (copied) as a temporary file of this process; call before creating it.
 * DDT_ERR_MEMORY if the copy cannot be made. Thread-safe. */
ddt_status file_temp_register(const char *temp_path);
/* Forgets `temp_path` (it was renamed into place, or removed). Unknown paths are ignored. */
void file_temp_forget(const char *temp_path);
/* unlink() and forget. */
void file_temp_remove(const char *temp_path);
/* Removes every registered temporary file, with async-signal-safe calls only: for signal
 * handlers and for paths that end the process at once (_exit, MPI_Abort). */
void file_temp_remove_all(void);
/* Installs handlers for SIGTERM, SIGINT and SIGHUP that remove the registered temporary
 * files and then end the process by the same signal (default action, re-raised), so the
 * exit status is what the signal gives without ddtrain. Handlers installed later (train's
 * SIGTERM: stop at the next step) replace this one for their signal. */
void file_temp_cleanup_on_signals(void);

#endif
