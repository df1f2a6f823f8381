/* checkpoint.h - training checkpoints: everything a run needs to continue exactly, in one HDF5
 * file per checkpoint.
 *
 * A checkpoint is DIR/checkpoint-<global step, 12 digits>.h5, laid out as a --save model file
 * (model_file.h) plus the training state, so h5py, PyTorch users and `ddtrain eval
 * --model-file` read its model part exactly like a saved model:
 *   root attribute "model"           the spec text           (as model_file.h)
 *   /dense_<i>/weight, /dense_<i>/bias                        (as model_file.h)
 *   /optimizer/state                 float32, 1-D, optimizer_state_count values
 *   root attributes                  optimizer_kind, configuration (UTF-8 strings);
 *                                    optimizer_steps, global_step, epoch, samples_seen,
 *                                    global_batch, steps_since_overflow (int64); seed (uint64);
 *                                    loss_scale (float64); world_size (int32);
 *                                    checkpoint_version (int32, 1);
 *                                    checkpoint_complete (int32, 1; written last)
 * ddtrain's randomness is keyed by (seed, step, row), so seed plus global_step is the whole RNG
 * state, and samples_seen counts global samples, so a run can resume on another world size.
 *
 * Writes are atomic (temporary file, fsync, rename, fsync the directory; hdf5_lock.h): a crash
 * at any point leaves every earlier checkpoint intact and loadable. One job writes into a
 * directory at a time (rank 0); the newest `keep` checkpoints are kept.
 *
 * Ownership: the caller keeps everything a checkpoint_state points to. checkpoint_read() fills
 * a checkpoint_loaded whose buffers checkpoint_loaded_free() releases.
 *
 * Usage:
 *     DDT_CHECK(checkpoint_check_directory(dir));              // before training
 *     checkpoint_state state = {.spec = &spec, .parameters = host_params, ...};
 *     char written[4096];
 *     DDT_CHECK(checkpoint_write(dir, &state, keep, NULL, written, sizeof written));
 *
 *     char path[4096]; bool found;
 *     DDT_CHECK(checkpoint_find_latest(dir, path, sizeof path, &found));
 *     if (found) {
 *         checkpoint_loaded loaded;
 *         DDT_CHECK(checkpoint_read(path, &loaded));
 *         ...
 *         checkpoint_loaded_free(&loaded);
 *     }
 */
#ifndef DDT_IO_CHECKPOINT_H
#define DDT_IO_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "util/status.h"

/* What checkpoint_write() saves. Counts and steps are non-negative; global_batch and
 * world_size at least 1; loss_scale finite and positive. */
typedef struct checkpoint_state {
    const model_spec *spec;
    const float *parameters;      /* host: the model's state (parameters, then buffers),
                                   * model_spec_state_count floats */
    const float *optimizer_state; /* host, optimizer_state_count floats (may be NULL if 0) */
    size_t optimizer_state_count;
    const char *optimizer_kind; /* "sgd" / "adamw" (under 16 characters) */
    int64_t optimizer_steps;    /* updates applied so far (AdamW bias correction) */
    int64_t global_step;        /* optimizer steps completed */
    int64_t epoch;              /* epoch the next step belongs to */
    int64_t samples_seen;       /* position in the data: global samples consumed */
    int64_t global_batch;
    uint64_t seed;
    double loss_scale; /* fp16 dynamic loss scale (1 otherwise) */
    int64_t steps_since_overflow;
    int world_size;            /* at save time (informational) */
    const char *configuration; /* resolved configuration text, stored for the record (may be
                                  NULL: stored as "") */
    const char *dataset_identity; /* what data the run trains on (dataset_identity(); may be
                                     NULL: stored as ""), checked when resuming */
} checkpoint_state;

/* For tests: before_commit is called after the temporary file is fully written and closed
 * (HDF5's buffers flushed), before it is fsynced and renamed. May be NULL. */
typedef struct checkpoint_write_hooks {
    void (*before_commit)(void *context, const char *temporary_path);
    void *context;
} checkpoint_write_hooks;

/* Writes DIR/checkpoint-<global_step, 12 digits>.h5 atomically (creating DIR and its parents
 * if missing; a checkpoint of the same step is replaced), then deletes every checkpoint older
 * than the newest `keep` complete ones (keep >= 1; the one just written is never deleted).
 * Stale temporary files of earlier, interrupted writes (checkpoint-*.h5.tmp-*) are deleted
 * first. *written gets the path (may be NULL). Should deleting an old checkpoint fail, the new
 * one stands (*written is set) and the error names the file. Holds the HDF5 lock while
 * writing. */
ddt_status checkpoint_write(const char *directory, const checkpoint_state *state, int keep,
                            const checkpoint_write_hooks *hooks, char *written,
                            size_t written_size);

/* A checkpoint read back. Buffers are malloc'ed; checkpoint_loaded_free() frees them. */
typedef struct checkpoint_loaded {
    model_spec spec;
    float *parameters;      /* the model's state: parameters, then buffers */
    size_t parameter_count; /* model_spec_parameter_count (the buffers follow them) */
    float *optimizer_state; /* never NULL after a successful read, even if the count is 0 */
    size_t optimizer_state_count;
    char optimizer_kind[16];
    int64_t optimizer_steps, global_step, epoch, samples_seen, global_batch, steps_since_overflow;
    uint64_t seed;
    double loss_scale;
    int world_size;
    char *configuration;
    char *dataset_identity; /* "" in checkpoints written before it was recorded */
} checkpoint_loaded;

/* The newest complete checkpoint in DIR (highest step among files named
 * checkpoint-<digits>.h5 that open as HDF5 and carry checkpoint_complete = 1) into `path`:
 * *found false (and DDT_OK) if there is none or DIR does not exist. DDT_ERR_IO if DIR exists
 * but cannot be read, or the path does not fit. */
ddt_status checkpoint_find_latest(const char *directory, char *path, size_t path_size, bool *found);

/* The same, saying also what it passed over: complete checkpoints are preferred newest first,
 * and a newer file under a checkpoint's name that is not complete (truncated, damaged) is
 * skipped; the caller warns about it by name. */
typedef struct checkpoint_search {
    bool found;
    char path[4096];              /* the newest complete one, when found */
    int passed_over;              /* newer files that are not complete checkpoints */
    char newest_passed_over[4096]; /* the newest of them */
} checkpoint_search;
ddt_status checkpoint_search_latest(const char *directory, checkpoint_search *out);

/* One job per checkpoint directory: takes DIR/.ddtrain.lock (flock, held until
 * checkpoint_unlock() or the process's end: the kernel releases it when the process dies, so
 * a crash never leaves it taken). `holder` describes this job ("pid 12 on node7 since
 * 2026-12-03 15:04") for the message another job gets. DDT_ERR_USAGE naming the holder when
 * another process has it. */
typedef struct checkpoint_lock checkpoint_lock;
ddt_status checkpoint_lock_directory(const char *directory, const char *holder,
                                     checkpoint_lock **out);
void checkpoint_unlock(checkpoint_lock *lock);

/* Reads a whole checkpoint into *out (zeroed first; left empty on failure). Errors name the
 * file: missing, not HDF5, not a complete checkpoint, a missing or mistyped attribute or
 * dataset, or a model part model_file_read_spec() would refuse. The model's spec and layer
 * shapes are read and checked before its parameters are allocated. */
ddt_status checkpoint_read(const char *path, checkpoint_loaded *out);

/* checkpoint_read() for a run that trains `expected` (may be NULL: any model): a checkpoint
 * of another model is refused (DDT_ERR_USAGE, naming both) and optimizer state larger than
 * any optimizer keeps for it (two values per parameter) is refused, both before anything is
 * allocated for them, so a checkpoint that claims a huge model costs nothing. */
ddt_status checkpoint_read_for(const char *path, const model_spec *expected,
                               checkpoint_loaded *out);

/* Frees the buffers of a checkpoint_read() result and zeroes it; safe on a zeroed struct. */
void checkpoint_loaded_free(checkpoint_loaded *loaded);

/* Checks up front that DIR can hold checkpoints: creates it (and its parents) if missing, and
 * creates and deletes a probe file in it. */
ddt_status checkpoint_check_directory(const char *directory);

#endif
