/* dataset.h - reading ddtrain's HDF5 datasets, one file or many shards, as one row space.
 *
 * Two kinds of dataset (each file, or each shard):
 *
 * Features (DATASET_KIND_FEATURES):
 *   /features  float32, N x D, or N x C x H x W (images, NCHW as PyTorch), chunked or not
 *   /labels    integer N (class ids: any integer type, read as int32)  or  float32 N x K
 *   root attribute "num_classes" (int): number of classes for class-id labels. Optional: a
 *   file without it (what h5py users write) opens with classes = 0, and the caller sets the
 *   count to check labels against with dataset_set_classes() (the trainer: the model's
 *   output width). Optional string-array attribute "class_names" on /labels.
 *   A row is D = C*H*W contiguous floats either way; feature_rank/feature_dims say the shape.
 *
 * Tokens (DATASET_KIND_TOKENS):
 *   /tokens    1-D uint16 or int32 token ids, with attribute "vocab_size" (int) on /tokens
 *              (or on the root group)
 *   Read in windows of the model's context T (dataset_open_params.token_context): row k of a
 *   shard holding n tokens is the window tokens[k*T, k*T + T + 1) for k < (n-1)/T, so
 *   windows never cross shard files. Reading a row gives T int32 input ids (the window's
 *   first T) and T int32 labels (its last T: each position's next token). Ids are checked
 *   against vocab_size as they are read.
 *
 * Several shards (a comma-separated list or a glob, expanded and sorted by name) form one
 * global row space in the order given: rows of shard 0 first, then shard 1, and so on. All
 * shards must agree on the kind, the row shape, the label kind, K, num_classes (vocab_size)
 * and class_names.
 *
 * At open, what each file claims is checked against what it holds, so that nothing is ever
 * read from data that is not there: every chunk of a chunked /features, /labels or /tokens
 * must have been written (HDF5 would silently return the fill value for the others), a
 * contiguous one must be allocated and lie inside the file, and every source of a virtual
 * dataset must exist and cover the mapped region. HDF5 external storage (raw data kept in
 * another, arbitrary file) and external links are refused unless
 * dataset_open_params.allow_external says otherwise; then the external files must exist and
 * be long enough. These checks cost time in proportion to the chunks the file really holds,
 * and no memory per row or chunk.
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
 *     if (g->class_labels && g->classes == 0) DDT_CHECK(dataset_set_classes(ds, outputs));
 *     DDT_CHECK(dataset_read_rows(ds, rows, count, features, labels, NULL));
 *     dataset_close(ds);
 *   A token dataset:
 *     dataset_open_params p = dataset_default_open_params();
 *     p.token_context = 64;
 *     DDT_CHECK(dataset_open_with_params("text-*.h5", &p, &ds));
 *     int32_t ids[count * 64], next[count * 64];
 *     DDT_CHECK(dataset_read_range(ds, first, count, ids, next, NULL));
 */
#ifndef DDT_IO_DATASET_H
#define DDT_IO_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

typedef enum dataset_kind {
    DATASET_KIND_FEATURES, /* /features (float32, flat or image-shaped) and /labels */
    DATASET_KIND_TOKENS,   /* /tokens, read in windows of token_context ids */
} dataset_kind;

typedef struct dataset_geometry {
    dataset_kind kind;
    int64_t rows;        /* N, over all shards (token datasets: windows) */
    int features;        /* values per row: D = C*H*W float32 features, or T int32 token ids */
    int feature_rank;    /* 1: feature_dims = {D} (tokens: {T}); 3: {C, H, W} */
    int feature_dims[3]; /* the per-sample shape; unused entries 0 */
    bool class_labels;   /* int32 class ids (tokens: the next ids), else float32 targets */
    int labels_per_row;  /* class ids per row: 1, or T for tokens; 0 for float targets */
    int target_width;    /* K for float targets; 1 for class ids */
    int classes;         /* num_classes (tokens: vocab_size); 0 if the files do not say and
                          * dataset_set_classes() was not called (or float targets) */
    int64_t chunk_rows;  /* rows per chunk of /features in the first shard (1 if contiguous);
                          * token datasets: windows per chunk of /tokens (at least 1) */
    int file_count;
    int64_t tokens;      /* token datasets: ids in /tokens over all shards; else 0 */
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
    /* T, the model's context: a token dataset is read in windows of T + 1 ids (T inputs and
     * T labels). 0 refuses token datasets (with a message saying the model must take tokens);
     * ignored for feature datasets. */
    int token_context;
} dataset_open_params;

/* External data refused, files from the disk, token datasets refused. */
dataset_open_params dataset_default_open_params(void);

/* Opens `spec`: a path, a comma-separated list of paths, or a glob pattern (any of * ? [).
 * Every error names the file and the problem: missing/unreadable, not HDF5, missing
 * /features or /labels (or /tokens), wrong rank or dtype, row counts of /features and /labels
 * differing, an empty /tokens, fewer tokens than one window, a missing vocab_size,
 * shards disagreeing, a glob matching nothing, chunks never written, storage outside the
 * file, a missing or short virtual source, external storage or links (refused unless
 * allowed; missing or short external files when allowed). dataset_open() uses
 * dataset_default_open_params(). */
ddt_status dataset_open(const char *spec, dataset **out);
ddt_status dataset_open_with_params(const char *spec, const dataset_open_params *params,
                                    dataset **out);
void dataset_close(dataset *ds);

const dataset_geometry *dataset_get_geometry(const dataset *ds);
/* Sets the number of classes that class-id labels are checked against, for files that do not
 * declare num_classes (geometry.classes is 0 after open): the trainer passes the model's
 * output width. Where the files declare a count, `classes` must equal it (DDT_ERR_FORMAT
 * naming the file and both numbers). DDT_ERR_USAGE for float targets. Call before rows are
 * read (not while a stream reads). May be called again with another count for undeclared
 * files. */
ddt_status dataset_set_classes(dataset *ds, int classes);
/* The name of class `index` from the class_names attribute of /labels, or NULL if the files
 * have none (or index is out of range). Valid until dataset_close(). */
const char *dataset_class_name(const dataset *ds, int index);
/* How many names class_names holds (0 if absent). */
int dataset_class_name_count(const dataset *ds);
const char *dataset_file_path(const dataset *ds, int file_index);
/* Shard holding global row `row`, and the row's index inside it. */
int dataset_locate_row(const dataset *ds, int64_t row, int64_t *row_in_file);

/* Reads `count` rows given by global row numbers in ascending order (duplicates not allowed)
 * into host buffers. `inputs` gets count x features values: float32 features for a feature
 * dataset (a float *), int32 input ids for a token dataset (an int32_t *). `labels` gets
 * count x labels_per_row int32 class ids (tokens: the next ids), `targets` count x K floats,
 * depending on the label kind (the other may be NULL; so may inputs or labels, to skip them).
 * Each run of consecutive rows within a shard is one H5Dread (a regular hyperslab; a token
 * run one or two), so scattered rows cost one read each; for streaming, read whole blocks
 * with dataset_read_range() instead (see stream.h). Checks every value: a NaN/Inf feature or
 * target, a class id outside [0, classes) (negative ids when classes is 0), or a token id
 * outside [0, vocab_size) is DDT_ERR_DATA naming the file and the row (tokens: the position
 * in /tokens). */
ddt_status dataset_read_rows(dataset *ds, const int64_t *rows, int count, void *inputs,
                             int32_t *labels, float *targets);

/* Reads `count` consecutive rows starting at global row `first` (may span shards): one
 * H5Dread per shard touched (a token dataset: one or two; the windows of a run share their
 * tokens, read once). Buffers and checks as for dataset_read_rows(). */
ddt_status dataset_read_range(dataset *ds, int64_t first, int count, void *inputs, int32_t *labels,
                              float *targets);

/* A text that tells this data apart from any other, for checkpoints: per shard its file name
 * (not the directory: a copy elsewhere is the same data), rows, width (and image shape),
 * label kind, size in bytes and a fingerprint of its first 64 KiB (the HDF5 superblock and
 * object headers); token datasets: windows, T, tokens and vocab_size instead of rows and
 * width. The classes are those the files declare (not dataset_set_classes()'s).
 * DDT_ERR_INTERNAL if it does not fit in `size`. */
ddt_status dataset_identity(const dataset *ds, char *text, size_t size);

/* Sets the size of HDF5's chunk cache for each chunked shard's /features (or /tokens), in
 * bytes (0: no chunk cache; every read then goes to the file, decompressing whole chunks).
 * Until called, HDF5's default applies (1 MiB per shard). Reopens /features (/tokens). A
 * chunk larger than the cache is never cached. */
ddt_status dataset_set_chunk_cache(dataset *ds, size_t bytes);

#endif
