/* dataset.h - reading ddtrain's HDF5 datasets, one file or many shards, as one row space.
 *
 * Format (one file, or each shard):
 *   /features  float32, N x D, chunked
 *   /labels    int32 N (class ids)  or  float32 N x K (targets)
 *   root attribute "num_classes" (int): number of classes for class-id labels (optional for
 *   targets). Written by dataset_writer.h; checked by dataset_open().
 * Several shards (a comma-separated list or a glob, expanded and sorted by name) form one
 * global row space in the order given: rows of shard 0 first, then shard 1, and so on. All
 * shards must agree on D, the label kind, K and num_classes.
 *
 * At open, what each file claims is checked against what it holds, so that nothing is ever
 * read from data that is not there: every chunk of a chunked /features and /labels must have
 * been written (HDF5 would silently return the fill value for the others), a contiguous one
 * must be allocated and lie inside the file, and every source of a virtual dataset must exist
 * and cover the mapped region. HDF5 external storage (raw data kept in another, arbitrary
 * file) and external links are refused unless dataset_open_params.allow_external says
 * otherwise; then the external files must exist and be long enough. These checks cost time
 * in proportion to the chunks the file really holds, and no memory per row or chunk.
 *
 * Only geometry is read at open; rows are read on demand with hyperslab selections, so a
 * dataset is never loaded whole. Nothing is cached here beyond HDF5's own chunk cache (see
 * dataset_set_chunk_cache()): a streaming reader should read whole blocks with
 * dataset_read_range() and cache them itself, as stream.h does. Files are opened read-only.
 * HDF5 calls are serialised with a process-wide lock (serial HDF5 is not thread-safe), so the
 * reader thread and the main thread may both use datasets.
 *
 * Ownership: dataset_open() returns a dataset the caller frees with dataset_close().
 *
 * Usage:
 *     dataset *ds;
 *     DDT_CHECK(dataset_open("data/train-*.h5", &ds));
 *     const dataset_geometry *g = dataset_get_geometry(ds);
 *     DDT_CHECK(dataset_read_rows(ds, rows, count, features, labels, NULL));
 *     dataset_close(ds);
 */
#ifndef DDT_IO_DATASET_H
#define DDT_IO_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

typedef struct dataset_geometry {
    int64_t rows;       /* N, over all shards */
    int features;       /* D */
    bool class_labels;  /* true: int32 class ids; false: float32 targets */
    int target_width;   /* K for float targets; 1 for class ids */
    int classes;        /* num_classes attribute; 0 if absent (allowed for targets only) */
    int64_t chunk_rows; /* rows per chunk of /features in the first shard (1 if contiguous) */
    int file_count;
} dataset_geometry;

typedef struct dataset dataset;

typedef struct dataset_open_params {
    /* Follow external links and read HDF5 external storage (raw data in files outside the
     * HDF5 file). Off by default: such a dataset can read any file the user can (an
     * external-storage /features was seen reading /etc/passwd). */
    bool allow_external;
    /* Read the one file `spec` names from this memory instead of the disk (HDF5's core
     * driver over a copy of the image; the name then only labels messages). NULL: the disk.
     * For tests and fuzzing. */
    const void *file_image;
    size_t file_image_size;
} dataset_open_params;

/* External data refused, files from the disk. */
dataset_open_params dataset_default_open_params(void);

/* Opens `spec`: a path, a comma-separated list of paths, or a glob pattern (any of * ? [).
 * Every error names the file and the problem: missing/unreadable, not HDF5, missing
 * /features or /labels, wrong rank or dtype, row counts of /features and /labels differing,
 * shards disagreeing, a glob matching nothing, chunks never written, storage outside the
 * file, a missing or short virtual source, external storage or links (refused unless
 * allowed; missing or short external files when allowed). dataset_open() uses
 * dataset_default_open_params(). */
ddt_status dataset_open(const char *spec, dataset **out);
ddt_status dataset_open_with_params(const char *spec, const dataset_open_params *params,
                                    dataset **out);
void dataset_close(dataset *ds);

const dataset_geometry *dataset_get_geometry(const dataset *ds);
const char *dataset_file_path(const dataset *ds, int file_index);
/* Shard holding global row `row`, and the row's index inside it. */
int dataset_locate_row(const dataset *ds, int64_t row, int64_t *row_in_file);

/* Reads `count` rows given by global row numbers in ascending order (duplicates not allowed)
 * into host buffers: features (count x D), and labels (count, class ids) or targets
 * (count x K) depending on the label kind (the other may be NULL). Each run of consecutive
 * rows within a shard is one H5Dread (a regular hyperslab), so scattered rows cost one read
 * each; for streaming, read whole blocks with dataset_read_range() instead (see stream.h).
 * Checks every value: a NaN/Inf feature or target, or a class id outside [0, num_classes),
 * is DDT_ERR_DATA naming the file and the row. */
ddt_status dataset_read_rows(dataset *ds, const int64_t *rows, int count, float *features,
                             int32_t *labels, float *targets);

/* Reads `count` consecutive rows starting at global row `first` (may span shards): one
 * H5Dread per shard touched. Values are checked as by dataset_read_rows(). */
ddt_status dataset_read_range(dataset *ds, int64_t first, int count, float *features,
                              int32_t *labels, float *targets);

/* A text that tells this data apart from any other, for checkpoints: per shard its file name
 * (not the directory: a copy elsewhere is the same data), rows, width, label kind, size in
 * bytes and a fingerprint of its first 64 KiB (the HDF5 superblock and object headers).
 * DDT_ERR_INTERNAL if it does not fit in `size`. */
ddt_status dataset_identity(const dataset *ds, char *text, size_t size);

/* Sets the size of HDF5's chunk cache for each chunked shard's /features, in bytes (0: no
 * chunk cache; every read then goes to the file, decompressing whole chunks). Until called,
 * HDF5's default applies (1 MiB per shard). Reopens /features. A chunk larger than the cache
 * is never cached. */
ddt_status dataset_set_chunk_cache(dataset *ds, size_t bytes);

#endif
