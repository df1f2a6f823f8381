/* dataset_writer.h - writing ddtrain HDF5 datasets (used by `convert` and `synth`).
 *
 * Rows are appended in blocks, so a dataset larger than memory can be written while holding
 * only one block. A dataset is written to "PATH.tmp-<pid>" and renamed over PATH only by
 * dataset_writer_close() after all rows are written and flushed, so an interrupted write never
 * leaves a half-written file under the final name, and an existing file is not damaged by a
 * failed write.
 *
 * Ownership: dataset_writer_open() returns a writer; dataset_writer_close() finishes it (or
 * dataset_writer_abort() deletes the temporary file). Exactly one of the two must be called.
 *
 * Feature datasets get /features (N x D, or N x C x H x W when feature_rank is 3), /labels and
 * the attributes num_classes and (optionally) class_names on /labels; token datasets get
 * /tokens (uint16 when vocab_size <= 65536, else int32) with vocab_size on /tokens. The
 * format is the one dataset.h reads.
 *
 * Usage:
 *     dataset_writer *w;
 *     DDT_CHECK(dataset_writer_open("out.h5", &params, &w));
 *     DDT_CHECK(dataset_writer_append(w, rows, features, labels, NULL));
 *     DDT_CHECK(dataset_writer_close(w));
 *   Tokens: params.kind = DATASET_KIND_TOKENS, .rows = ids, .vocab_size = 256; then
 *     DDT_CHECK(dataset_writer_append_tokens(w, count, ids));
 */
#ifndef DDT_IO_DATASET_WRITER_H
#define DDT_IO_DATASET_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io/dataset.h"
#include "util/status.h"

typedef struct dataset_writer_params {
    dataset_kind kind;   /* DATASET_KIND_FEATURES (the default) or DATASET_KIND_TOKENS */
    int64_t rows;        /* total rows this file will hold (tokens: ids) */
    int features;        /* D */
    int feature_rank;    /* 0 or 1: /features is N x D; 3: N x C x H x W (feature_dims) */
    int feature_dims[3]; /* C, H, W for feature_rank 3; their product must be D */
    bool class_labels;   /* int32 class ids, else float32 targets */
    int target_width;    /* K for targets (ignored for class ids) */
    int classes;         /* written as the num_classes attribute when > 0 */
    const char *const *class_names; /* `classes` names, the class_names attribute on /labels;
                                     * NULL for none */
    int vocab_size;      /* tokens: the vocab_size attribute (> 0); ids must be below it */
    int64_t chunk_rows;  /* rows per chunk; 0 picks ~1 MiB chunks (tokens: 65536 ids) */
    int compression;     /* deflate level 0-9; 0 = none */
    const char *source;  /* free text stored as attribute "source" (may be NULL) */
} dataset_writer_params;

typedef struct dataset_writer dataset_writer;

/* Rows per appended block for rows of `features` floats: about 8 MiB of features, at least one
 * row. What every writer of a dataset holds in memory at once. */
int64_t dataset_writer_block_rows(int64_t features);

/* Host memory a writer for `params` may hold besides its caller's rows: HDF5's chunk caches
 * and type-conversion buffer, and the chunk buffers it writes (and compresses) through. An
 * upper bound, for the converters' memory plans (measured in tests/e2e/convert_data.sh). */
uint64_t dataset_writer_memory_bytes(const dataset_writer_params *params);

ddt_status dataset_writer_open(const char *path, const dataset_writer_params *params,
                               dataset_writer **out);
/* Appends `count` rows; labels or targets according to params.class_labels. */
ddt_status dataset_writer_append(dataset_writer *w, int count, const float *features,
                                 const int32_t *labels, const float *targets);
/* Token datasets: appends `count` ids, each in [0, vocab_size) (else DDT_ERR_DATA naming the
 * id and its position). */
ddt_status dataset_writer_append_tokens(dataset_writer *w, int64_t count, const int32_t *ids);
/* Checks all rows were written, closes, fsyncs and renames into place. Frees w. */
ddt_status dataset_writer_close(dataset_writer *w);
/* Like dataset_writer_close(), but leaves the complete file under its temporary name (copied
 * into temp_path) for the caller to publish with file_publish() (util/files.h) or remove:
 * a command that writes several files publishes them together, once all are complete. On
 * failure the temporary file is removed. Frees w. */
ddt_status dataset_writer_close_unpublished(dataset_writer *w, char *temp_path, size_t size);
/* Closes and deletes the temporary file. Frees w. NULL is allowed. */
void dataset_writer_abort(dataset_writer *w);

/* Path of shard `index` of `count` for output path `path`: "dir/name.h5" becomes
 * "dir/name-00000-of-00004.h5"; with count == 1 the path itself. */
void dataset_shard_path(const char *path, int index, int count, char *out, size_t out_size);

#endif
