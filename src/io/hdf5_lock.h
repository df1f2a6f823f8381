/* hdf5_lock.h - private to src/io: the one lock around every HDF5 call, plus the small HDF5
 * and file helpers the io modules share.
 *
 * Serial HDF5 is not thread-safe, and the reader thread and the main thread both use it
 * (reading batches, saving checkpoints), so every io function that calls HDF5 holds this
 * process-wide recursive lock for the duration. Taking the lock the first time also turns off
 * HDF5's automatic error-stack printing: users see ddtrain's messages only, and
 * hdf5_error_detail() can still quote HDF5's reason when it helps.
 *
 * Writers (dataset_writer.c, model_file.c, checkpoint.c) write under a temporary name beside
 * the target (file_temp_path) and publish it with file_publish() (util/files.h): fsync,
 * rename, fsync the directory. A crash at any point leaves either the old file or the complete
 * new one under the final name.
 *
 * Usage:
 *     hdf5_lock_acquire();
 *     hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
 *     ...
 *     hdf5_lock_release();
 */
#ifndef DDT_IO_HDF5_LOCK_H
#define DDT_IO_HDF5_LOCK_H

#include <hdf5.h>
#include <stdbool.h>
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

/* Why the first HDF5 call that failed since this thread took the lock (outermost) failed: a
 * system call's own words where one failed ("No space left on device"), else HDF5's innermost
 * message ("can't open file"), else "unknown HDF5 error". Later calls (closing what was open)
 * do not replace it. Call with the lock held. Writes into `buffer` and returns it. */
const char *hdf5_error_detail(char *buffer, size_t size);

/* H5Fclose, remembering a failure: HDF5 1.10 keeps a file whose close failed (its final flush
 * hit a full disk) in its tables, and its clean-up at exit then crashes on it (a known HDF5
 * bug). Writers reserve their space first (hdf5_reserve) so this should not happen; if it
 * does anyway, hdf5_shut_down_unsafe() says so and the program must end with _exit() after
 * its message (the file is a temporary that has been deleted). */
herr_t hdf5_file_close(hid_t file);
bool hdf5_shut_down_unsafe(void);

/* What to reserve for a file holding `data_bytes` of array data: the data plus room for
 * HDF5's metadata (object headers, attributes, the superblock) and a margin. */
uint64_t hdf5_reserve_estimate(uint64_t data_bytes);

/* Reserves `bytes` of disk for an open HDF5 file (util/files.h file_reserve) before anything
 * is written to it, so a full disk is refused up front with the numbers. */
ddt_status hdf5_reserve(int64_t file, const char *path, uint64_t bytes);

/* Checks that `path` exists, is a regular file (file_check_regular_input: not a directory,
 * FIFO or device, which HDF5 would block on or read forever) and is readable, with errno's
 * words in the message ("PATH: cannot open: No such file or directory"), before HDF5 gives
 * its own vaguer ones. */
ddt_status hdf5_check_readable(const char *path);

/* The first half of an atomic write: creates `temp_path` as a new HDF5 file, reserves
 * `reserve_bytes` of disk for it (what `write` will put there, with room for HDF5's own
 * metadata), lets `write` fill it (the lock is held; `file` is an hid_t), closes it, and
 * deletes it on any failure.
 * Messages name `path`, the final name. The caller then publishes it with file_publish().
 * Shared by the model and checkpoint writers (the dataset writer keeps its file open across
 * appends). */
typedef ddt_status (*hdf5_contents_writer)(int64_t file, const char *path, const void *context);
ddt_status hdf5_write_temporary(const char *temp_path, const char *path, uint64_t reserve_bytes,
                                hdf5_contents_writer write, const void *context);

#endif
