/* hdf5_lock.h - private to src/io: the one lock around every HDF5 call, plus the small HDF5
 * and file helpers the io modules share.
 *
 * Serial HDF5 is not thread-safe, and the reader thread and the main thread both use it
 * (reading batches, saving checkpoints), so every io function that calls HDF5 holds this
 * process-wide recursive lock for the duration. Taking the lock the first time also turns off
 * HDF5's automatic error-stack printing: users see ddtrain's messages only, and
 * hdf5_error_detail() can still quote HDF5's reason when it helps.
 *
 * Writers (dataset_writer.c, model_file.c) write under a temporary name beside the target and
 * publish it with hdf5_file_commit(): fsync, rename, fsync the directory. A crash at any point
 * leaves either the old file or the complete new one under the final name.
 *
 * Usage:
 *     hdf5_lock_acquire();
 *     hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
 *     ...
 *     hdf5_lock_release();
 */
#ifndef DDT_IO_HDF5_LOCK_H
#define DDT_IO_HDF5_LOCK_H

#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

/* Recursive: a function holding the lock may call another that takes it. */
void hdf5_lock_acquire(void);
void hdf5_lock_release(void);

/* With the lock held: marks that this thread now reads `path` (copied) through HDF5, for
 * read_guard_current() (read_guard.h), from now until the release that matches the acquire
 * the first mark was made under. Mark again before each read of another file or each new
 * step (every mark restarts the read's clock). Readers of files given by the user mark;
 * writers do not. */
void hdf5_lock_mark_reading(const char *path);

/* The innermost HDF5 error message on the current error stack (e.g. "can't open file"), or
 * "unknown HDF5 error". Call with the lock held, right after the failing call. Writes into
 * `buffer` and returns it. */
const char *hdf5_error_detail(char *buffer, size_t size);

/* The temporary name writers use for `path`: "PATH.tmp-<pid>". */
void hdf5_temp_path(const char *path, char *out, size_t out_size);

/* Publishes a closed file: fsyncs `temp_path`, renames it to `path`, fsyncs the directory.
 * On failure the temporary file is deleted and `path` is unchanged; the message names `path`. */
ddt_status hdf5_file_commit(const char *temp_path, const char *path);

/* Checks that `path` exists, is not a directory and is readable, with errno's words in the
 * message ("PATH: cannot open: No such file or directory"), before HDF5 gives its own vaguer
 * ones. */
ddt_status hdf5_check_readable(const char *path);

/* The first half of an atomic write: creates `temp_path` as a new HDF5 file, lets `write` fill
 * it (the lock is held; `file` is an hid_t), closes it, and deletes it on any failure.
 * Messages name `path`, the final name. The caller then publishes it with hdf5_file_commit().
 * Shared by the model and checkpoint writers (the dataset writer keeps its file open across
 * appends). */
typedef ddt_status (*hdf5_contents_writer)(int64_t file, const char *path, const void *context);
ddt_status hdf5_write_temporary(const char *temp_path, const char *path, hdf5_contents_writer write,
                                const void *context);

#endif
