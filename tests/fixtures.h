/* fixtures.h - the setup ddtrain's C unit tests share, beside the assertions of check.h.
 *
 * - Temporary paths: fixture_path("name.h5") names a file under check_temp_dir(); the whole
 *   directory is removed when the test exits with every check passed (kept, and named, when
 *   one failed, to look at), or at once with fixture_remove_temp(). fixture_text() formats a
 *   string that lives as long (a comma list of shards, an expected message).
 * - CHECK_FAILS(expr, code, "part"...): expr returns the ddt_status `code` and
 *   ddt_error_message() holds every part given (a NULL part is skipped); a failure prints
 *   the status returned and the message. CHECK_OPEN_FAILS(spec, params, code, "part"...)
 *   does the same for opening a dataset, which must also leave none open.
 * - A scratch arena: fixture_alloc() and fixture_adopt() (anything with a release function,
 *   a GPU buffer say) are all released by one fixture_arena_free(), so a test stops keeping
 *   free lists.
 * - Random floats from a counter-based stream (util/rng.h), the same in every run.
 * - Small HDF5 writers: feature datasets through the dataset writer (flat N x D or image-shaped
 *   N x C x H x W, class labels or targets, values from the test's own functions of the
 *   global row), token datasets, and raw members and attributes written with the HDF5 C API
 *   as h5py would, for the files the writer refuses to make.
 * - A stream fixture: a shard plan, an independent reference plan to check the order against,
 *   and the reader stream over them, stopped and freed in one call.
 *
 * Usage:
 *     const char *path = fixture_path("rows.h5");
 *     dataset_writer_params p = {.rows = 100, .features = 3, .class_labels = true, .classes = 4};
 *     CHECK_OK(fixture_write_features(path, &p, &(fixture_rows){.feature = f, .label = l}));
 *     CHECK_FAILS(dataset_open(fixture_path("absent.h5"), &ds), DDT_ERR_IO, "cannot open");
 *     fixture_arena *scratch = fixture_arena_new();
 *     float *x = fixture_random_floats(scratch, 1000, -1.0f, 1.0f);
 *     fixture_arena_free(scratch);
 */
#ifndef DDT_TESTS_FIXTURES_H
#define DDT_TESTS_FIXTURES_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "io/dataset_writer.h"
#include "io/stream.h"
#include "shard/shard.h"
#include "util/status.h"

/* --- temporary paths --------------------------------------------------------------------- */

/* check_temp_dir()/name; the string lives until the test exits. */
const char *fixture_path(const char *name);
/* A formatted string that lives until the test exits. */
const char *fixture_text(const char *format, ...) __attribute__((format(printf, 1, 2)));
/* Removes check_temp_dir() and all below it now (the fixtures do it at exit otherwise). */
void fixture_remove_temp(void);
/* Seconds on CLOCK_MONOTONIC. */
double fixture_seconds(void);

/* --- expected failures ------------------------------------------------------------------- */

/* Records one check: status == code and the library's message holds each of the PART_COUNT
 * PARTS (NULL entries skipped). Returns whether it held. */
int check_fails(ddt_status status, ddt_status code, const char *file, int line, const char *text,
                const char *const *parts, int part_count);

#define CHECK_FAILS(expr, code, ...)                                                               \
    check_fails((expr), (code), __FILE__, __LINE__, #expr, (const char *const[]){__VA_ARGS__},     \
                (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)))

/* Records that dataset_open_with_params(SPEC, PARAMS) (NULL: the defaults) fails like
 * check_fails and leaves no dataset. */
int check_open_fails(const char *spec, const dataset_open_params *params, ddt_status code,
                     const char *file, int line, const char *const *parts, int part_count);

#define CHECK_OPEN_FAILS(spec, params, code, ...)                                                  \
    check_open_fails((spec), (params), (code), __FILE__, __LINE__,                                 \
                     (const char *const[]){__VA_ARGS__},                                           \
                     (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)))

/* --- scratch arena ----------------------------------------------------------------------- */

typedef struct fixture_arena fixture_arena;

fixture_arena *fixture_arena_new(void);
/* `bytes` zeroed bytes (at least one), released with ARENA (or, with ARENA NULL, the caller's
 * to free()). Out of memory ends the test. */
void *fixture_alloc(fixture_arena *arena, size_t bytes);
/* Hands POINTER to the arena, which calls release(POINTER) when freed; returns POINTER. */
void *fixture_adopt(fixture_arena *arena, void *pointer, void (*release)(void *pointer));
/* Releases everything the arena holds, the last taken first, and the arena. NULL is allowed. */
void fixture_arena_free(fixture_arena *arena);

/* --- random inputs ----------------------------------------------------------------------- */

/* `count` floats uniform in [low, high), the next values of one stream for the whole test;
 * held by ARENA, or, with ARENA NULL, the caller's to free(). */
float *fixture_random_floats(fixture_arena *arena, size_t count, float low, float high);
/* A copy of X's `count` floats, held like fixture_random_floats' arrays. It advances the random
 * stream by `count` as an array drawn in its place would, so taking a copy leaves the values
 * drawn after it as they were. */
float *fixture_copy_floats(fixture_arena *arena, const float *x, size_t count);

/* --- HDF5 writers ------------------------------------------------------------------------ */

/* Values of a feature dataset, as functions of the global row (shards continue the rows of
 * the one before: first_row). A NULL function gives zeros. */
typedef struct fixture_rows {
    int64_t first_row;
    float (*feature)(int64_t row, int j);       /* feature j (C x H x W order for images) */
    int32_t (*label)(int64_t row, int classes); /* params.class_labels */
    float (*target)(int64_t row, int k);        /* otherwise: target k */
} fixture_rows;

/* Writes params->rows rows through the dataset writer (params as given: flat or image-shaped,
 * labels or targets, chunks, compression), appended in uneven blocks (1, 4, 13, 40, ... rows)
 * to exercise the writer's offsets. */
ddt_status fixture_write_features(const char *path, const dataset_writer_params *params,
                                  const fixture_rows *rows);
/* Writes the params->rows token ids IDS (params->kind is set to tokens) in two appends, the
 * first of a third of them. */
ddt_status fixture_write_tokens(const char *path, const dataset_writer_params *params,
                                const int32_t *ids);

/* A new HDF5 file at PATH (replacing one there); close it with H5Fclose. */
hid_t fixture_h5_create(const char *path);
/* /NAME of TYPE and shape DIMS[RANK], holding VALUES (converted from double; NULL: zeros). */
void fixture_h5_member(hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims,
                       const double *values);
/* An int32 scalar attribute NAME = VALUE on LOCATION (a file, group or dataset). */
void fixture_h5_int_attribute(hid_t location, const char *name, int value);
/* Overwrites the value at (ROW, COLUMN) of /NAME in an existing file with *VALUE of TYPE (a
 * native type); COLUMN is ignored for a dataset of rank 1. */
void fixture_h5_poke(const char *path, const char *name, hsize_t row, hsize_t column, hid_t type,
                     const void *value);

/* --- stream fixture ---------------------------------------------------------------------- */

typedef struct fixture_stream {
    shard_plan *plan;      /* the stream's */
    shard_plan *reference; /* the same parameters, untouched by the stream: the expected order */
    stream *stream;
} fixture_stream;

/* (Re)makes both plans from P (any earlier ones freed). */
ddt_status fixture_stream_plan(fixture_stream *f, const shard_params *p);
/* Starts the stream with PARAMS, its plan replaced by f->plan. */
ddt_status fixture_stream_open(fixture_stream *f, stream_params params);
/* The rows micro-batch MICRO_INDEX of GLOBAL_STEP holds by the reference plan. */
ddt_status fixture_stream_expected_rows(const fixture_stream *f, int64_t global_step,
                                        int micro_index, int64_t *rows);
/* Stops the stream and frees both plans; the fixture can be planned again. */
void fixture_stream_close(fixture_stream *f);

#endif
