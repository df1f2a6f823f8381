/* test_io_tokens.c - token datasets: /tokens cut into windows of T + 1 ids that never cross
 * shards (geometry, ranges across the shard boundary, scattered rows, inputs or labels
 * alone), every id checked against vocab_size with the position named, every bad file named
 * (empty, fewer ids than a window, no vocab_size, wrong type or rank, shards that disagree,
 * no context given), the writer (uint16 or int32 storage, ids checked), and the reader
 * stream delivering token micro-batches in plan order with exact staging bytes. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fixtures.h"
#include "io/dataset.h"
#include "io/dataset_writer.h"
#include "io/stream.h"
#include "shard/shard.h"

/* The id at position p of shard s. */
static int32_t token_value(int s, int64_t p) {
    return (int32_t)((s * 97 + p * 3) % 251);
}

static void write_tokens(const char *path, int shard, int64_t count, int vocab, int64_t chunk) {
    int32_t *ids = fixture_alloc(NULL, (size_t)count * sizeof *ids);
    for (int64_t p = 0; p < count; p++)
        ids[p] = token_value(shard, p);
    dataset_writer_params params = {.rows = count, .vocab_size = vocab, .chunk_rows = chunk};
    CHECK_OK(fixture_write_tokens(path, &params, ids));
    free(ids);
}

static dataset *open_tokens(const char *spec, int context) {
    dataset_open_params params = dataset_default_open_params();
    params.token_context = context;
    dataset *ds = NULL;
    CHECK_OK(dataset_open_with_params(spec, &params, &ds));
    return ds;
}

static void expect_open_error(const char *spec, int context, ddt_status code, const char *a,
                              const char *b) {
    dataset_open_params params = dataset_default_open_params();
    params.token_context = context;
    CHECK_OPEN_FAILS(spec, &params, code, a, b);
}

/* Checks rows read as windows: global row -> (shard, window) for shards of n0 and n1 ids. */
static int windows_match(const int64_t *rows, int64_t first, int count, int context, int64_t n0,
                         const int32_t *inputs, const int32_t *labels) {
    int64_t windows0 = (n0 - 1) / context;
    int ok = 1;
    for (int i = 0; i < count; i++) {
        int64_t row = rows ? rows[i] : first + i;
        int shard = row < windows0 ? 0 : 1;
        int64_t window = shard ? row - windows0 : row;
        for (int j = 0; j < context; j++) {
            int64_t p = window * context + j;
            if (inputs) ok &= inputs[i * context + j] == token_value(shard, p);
            if (labels) ok &= labels[i * context + j] == token_value(shard, p + 1);
        }
    }
    return ok;
}

static void test_windows(void) {
    const char *a = fixture_path("tok-a.h5"), *b = fixture_path("tok-b.h5");
    write_tokens(a, 0, 23, 256, 8);
    write_tokens(b, 1, 30, 256, 0);
    const char *list = fixture_text("%s,%s", a, b);
    dataset *ds = open_tokens(list, 4);
    if (!ds) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    /* (23-1)/4 = 5 windows, then (30-1)/4 = 7: the last ids of each shard are left over */
    CHECK(g->kind == DATASET_KIND_TOKENS && g->rows == 12 && g->tokens == 53);
    CHECK(g->features == 4 && g->feature_rank == 1 && g->feature_dims[0] == 4);
    CHECK(g->class_labels && g->labels_per_row == 4 && g->target_width == 1);
    CHECK(g->classes == 256 && g->file_count == 2);
    CHECK(g->chunk_rows == 2); /* chunks of 8 ids hold 2 windows of 4 */

    int32_t inputs[8 * 4], labels[8 * 4];
    /* rows 3..10: windows 3, 4 of shard 0, then 0..5 of shard 1 */
    CHECK_OK(dataset_read_range(ds, 3, 8, inputs, labels, NULL));
    CHECK(windows_match(NULL, 3, 8, 4, 23, inputs, labels));
    CHECK(inputs[4] == token_value(0, 16) && labels[7] == token_value(0, 20)); /* window 4 */
    CHECK(inputs[8] == token_value(1, 0));                                     /* window 0 */
    memset(inputs, -1, sizeof inputs);
    CHECK_OK(dataset_read_range(ds, 0, 8, NULL, labels, NULL));
    CHECK(windows_match(NULL, 0, 8, 4, 23, NULL, labels) && inputs[0] == -1);
    CHECK_OK(dataset_read_range(ds, 4, 8, inputs, NULL, NULL));
    CHECK(windows_match(NULL, 4, 8, 4, 23, inputs, NULL));
    int64_t rows[5] = {0, 4, 5, 6, 11};
    CHECK_OK(dataset_read_rows(ds, rows, 5, inputs, labels, NULL));
    CHECK(windows_match(rows, 0, 5, 4, 23, inputs, labels));
    CHECK(labels[4 * 4 + 3] == token_value(1, 28)); /* the last window's last label */

    char identity[1024];
    CHECK_OK(dataset_identity(ds, identity, sizeof identity));
    CHECK(strstr(identity, "tok-a.h5: 5 windows of 4 tokens (23 tokens), vocab 256") != NULL);
    CHECK(strstr(identity, "tok-b.h5: 7 windows of 4 tokens (30 tokens), vocab 256") != NULL);
    CHECK_OK(dataset_set_chunk_cache(ds, 1 << 20));
    CHECK_OK(dataset_read_range(ds, 3, 8, inputs, labels, NULL));
    CHECK(windows_match(NULL, 3, 8, 4, 23, inputs, labels));
    CHECK_OK(dataset_set_classes(ds, 256));
    CHECK_FAILS(dataset_set_classes(ds, 300), DDT_ERR_FORMAT, a,
                "vocab_size is 256, but 300 token ids were asked for");
    dataset_close(ds);

    /* Another context cuts other windows from the same files. */
    ds = open_tokens(list, 7);
    if (ds) {
        CHECK(dataset_get_geometry(ds)->rows == 3 + 4);
        CHECK_OK(dataset_read_range(ds, 2, 2, inputs, labels, NULL));
        CHECK(inputs[0] == token_value(0, 14) && labels[6] == token_value(0, 21));
        CHECK(inputs[7] == token_value(1, 0) && labels[13] == token_value(1, 7));
        dataset_close(ds);
    }
}

/* Row r of a feature file: feature r, label r. */
static float row_value(int64_t row, int j) {
    (void)j;
    return (float)row;
}

static int32_t row_label(int64_t row, int classes) {
    return (int32_t)(row % classes);
}

/* A raw /tokens of `type` with `count` ids (token_value(0, p), or `values`), and vocab_size
 * on `vocab_on` ("tokens", "/" or NULL for none). */
static void write_raw_tokens(const char *path, hid_t type, int rank, hsize_t count,
                             const int64_t *values, int vocab, const char *vocab_on) {
    hid_t file = fixture_h5_create(path);
    hsize_t dims[2] = {count, 2};
    size_t n = (size_t)count * (rank == 2 ? 2 : 1);
    double *ids = fixture_alloc(NULL, n * sizeof *ids);
    for (size_t p = 0; p < n; p++)
        ids[p] = (double)(values ? values[p] : token_value(0, (int64_t)p));
    fixture_h5_member(file, "tokens", type, rank, dims, ids);
    free(ids);
    if (vocab_on) {
        hid_t where = strcmp(vocab_on, "/") == 0 ? file : H5Dopen2(file, "tokens", H5P_DEFAULT);
        fixture_h5_int_attribute(where, "vocab_size", vocab);
        if (where != file) H5Dclose(where);
    }
    H5Fclose(file);
}

static void test_bad_ids_and_files(void) {
    /* int32 ids with one beyond the vocabulary at position 10 and a negative one at 31 */
    int64_t values[40];
    for (int p = 0; p < 40; p++)
        values[p] = token_value(0, p);
    values[10] = 300;
    values[31] = -5;
    const char *path = fixture_path("tok-bad.h5");
    write_raw_tokens(path, H5T_STD_I32LE, 1, 40, values, 256, "tokens");
    dataset *ds = open_tokens(path, 4);
    if (ds) {
        int32_t inputs[40], labels[40];
        /* window 2 = ids 8..12: the bad id is input 2 and label 1 */
        CHECK_FAILS(dataset_read_range(ds, 2, 1, inputs, labels, NULL), DDT_ERR_DATA, path,
                    "/tokens id 300 at position 10 (window 2, global row 2) is outside [0, 256)");
        /* window 1 = ids 4..8, clean; window 0 too */
        CHECK_OK(dataset_read_range(ds, 0, 2, inputs, labels, NULL));
        int64_t rows[2] = {1, 7}; /* window 7 = ids 28..32 holds the negative one */
        CHECK_FAILS(dataset_read_rows(ds, rows, 2, inputs, NULL, NULL), DDT_ERR_DATA, path,
                    "id -5 at position 31 (window 7, global row 7)");
        /* window 6 = ids 24..28 ends one before it; its labels reach 28 only */
        CHECK_OK(dataset_read_range(ds, 6, 1, inputs, labels, NULL));
        dataset_close(ds);
    }

    path = fixture_path("tok-root-vocab.h5"); /* vocab_size on the root group is read too */
    write_raw_tokens(path, H5T_STD_U16LE, 1, 9, NULL, 256, "/");
    ds = open_tokens(path, 2);
    if (ds) {
        CHECK(dataset_get_geometry(ds)->rows == 4 && dataset_get_geometry(ds)->classes == 256);
        dataset_close(ds);
    }

    /* Files refused at open: too few ids, no or a bad vocab_size, the wrong type or rank. */
    const struct {
        const char *name;
        hid_t type;
        int rank;
        hsize_t count;
        int vocab;
        const char *vocab_on, *message;
    } refused[] = {
        {"tok-empty.h5", H5T_STD_U16LE, 1, 0, 256, "tokens", "/tokens is empty"},
        {"tok-short.h5", H5T_STD_U16LE, 1, 4, 256, "tokens",
         "/tokens holds 4 ids, fewer than one window of 5 (the context 4 plus the next token)"},
        {"tok-no-vocab.h5", H5T_STD_U16LE, 1, 20, 0, NULL, "/tokens has no vocab_size attribute"},
        {"tok-zero-vocab.h5", H5T_STD_U16LE, 1, 20, 0, "tokens", "vocab_size is 0"},
        {"tok-float.h5", H5T_IEEE_F32LE, 1, 20, 256, "tokens",
         "/tokens is float32, expected uint16 or int32 token ids"},
        {"tok-int64.h5", H5T_STD_I64LE, 1, 20, 256, "tokens",
         "/tokens is int64, expected uint16 or int32"},
        {"tok-rank2.h5", H5T_STD_U16LE, 2, 20, 256, "tokens",
         "/tokens has rank 2 (shape 20x2), expected 1"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        path = fixture_path(refused[i].name);
        write_raw_tokens(path, refused[i].type, refused[i].rank, refused[i].count, NULL,
                         refused[i].vocab, refused[i].vocab_on);
        expect_open_error(path, 4, DDT_ERR_FORMAT, path, refused[i].message);
    }
    /* Without a context (a model that does not take tokens) a token file is refused. */
    path = fixture_path("tok-good.h5");
    write_raw_tokens(path, H5T_STD_U16LE, 1, 20, NULL, 256, "tokens");
    expect_open_error(path, 0, DDT_ERR_FORMAT, path, "holds /tokens (a token dataset)");

    /* Shards that disagree: vocabularies, and tokens beside features. */
    const char *other = fixture_path("tok-other.h5");
    write_raw_tokens(other, H5T_STD_U16LE, 1, 20, NULL, 300, "tokens");
    expect_open_error(fixture_text("%s,%s", path, other), 4, DDT_ERR_FORMAT, other,
                      "has vocab_size 300 but");
    const char *features = fixture_path("features.h5");
    dataset_writer_params p = {.rows = 2, .features = 1, .class_labels = true, .classes = 2};
    CHECK_OK(fixture_write_features(features, &p,
                                    &(fixture_rows){.feature = row_value, .label = row_label}));
    expect_open_error(fixture_text("%s,%s", path, features), 4, DDT_ERR_FORMAT, features,
                      "holds /features but");

    /* The writer: ids checked, uint16 up to 65536 ids, int32 beyond. */
    dataset_writer_params tp = {.kind = DATASET_KIND_TOKENS, .rows = 4, .vocab_size = 256};
    const char *written = fixture_path("tok-written.h5");
    dataset_writer *w;
    CHECK_OK(dataset_writer_open(written, &tp, &w));
    int32_t ids[4] = {1, 2, 256, 3};
    CHECK_FAILS(dataset_writer_append_tokens(w, 4, ids), DDT_ERR_DATA, written,
                "token 2 is 256, outside [0, 256)");
    dataset_writer_abort(w);
    tp.vocab_size = 70000;
    ids[2] = 69999;
    CHECK_OK(dataset_writer_open(written, &tp, &w));
    CHECK_OK(dataset_writer_append_tokens(w, 4, ids));
    CHECK_OK(dataset_writer_close(w));
    hid_t file = H5Fopen(written, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t tokens = H5Dopen2(file, "tokens", H5P_DEFAULT);
    hid_t type = H5Dget_type(tokens);
    CHECK(H5Tget_size(type) == 4 && H5Tget_sign(type) == H5T_SGN_2);
    H5Tclose(type);
    H5Dclose(tokens);
    H5Fclose(file);
    ds = open_tokens(written, 1);
    if (ds) {
        int32_t in[3], next[3];
        CHECK_OK(dataset_read_range(ds, 0, 3, in, next, NULL));
        CHECK(in[2] == 69999 && next[1] == 69999 && next[2] == 3);
        dataset_close(ds);
    }
}

/* The reader stream over a token dataset of two shards: every micro-batch in plan order,
 * tokens and labels of each window intact, features NULL, staging as planned. */
static void test_stream(void) {
    enum { CONTEXT = 8, MICRO = 4, GLOBAL = 8 };
    const char *a = fixture_path("stream-tok-a.h5"), *b = fixture_path("stream-tok-b.h5");
    write_tokens(a, 0, 1001, 256, 64);
    write_tokens(b, 1, 777, 256, 64);
    dataset *ds = open_tokens(fixture_text("%s,%s", a, b), CONTEXT);
    if (!ds) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    CHECK(g->rows == 125 + 97 && g->chunk_rows == 8);
    shard_params sp = {.rows = g->rows,
                       .global_batch = GLOBAL,
                       .micro_batch = MICRO,
                       .world_size = 2,
                       .rank = 1,
                       .seed = 3,
                       .shuffle = true,
                       .block_rows = g->chunk_rows,
                       .window_blocks = 4};
    fixture_stream f = {0};
    CHECK_OK(fixture_stream_plan(&f, &sp));
    int64_t total = shard_plan_steps_per_epoch(f.plan) + 3;
    CHECK_OK(fixture_stream_open(&f, (stream_params){.data = ds,
                                                     .micro_batch = MICRO,
                                                     .total_global_steps = total,
                                                     .prefetch_depth = 3}));
    stream *s = f.stream;
    int good = 0, count = 0;
    for (int64_t step = 0; s && step < total; step++) {
        micro_batch *mb;
        CHECK_OK(stream_next(s, &mb));
        int64_t expected[MICRO];
        CHECK_OK(fixture_stream_expected_rows(&f, step, 0, expected));
        int ok = mb->features == NULL && mb->tokens && mb->labels && !mb->targets &&
                 memcmp(expected, mb->row_ids, sizeof expected) == 0;
        for (int i = 0; ok && i < MICRO; i++)
            ok = windows_match(&mb->row_ids[i], 0, 1, CONTEXT, 1001, mb->tokens + i * CONTEXT,
                               mb->labels + i * CONTEXT);
        good += ok;
        count++;
        stream_release(s, mb);
    }
    CHECK(good == count && count == total);
    /* A slot: row ids, T ids and T labels a row, each array rounded to 64 bytes (plus the
     * slot's struct in an array rounded to 64 bytes). */
    size_t slot = 64 + 128 + 128; /* 4 x 8, 4 x 8 x 4, 4 x 8 x 4 */
    size_t block = 256 + 256;     /* 8 windows: 8 x 8 x 4 ids, as many labels */
    size_t planned = stream_staging_bytes(g, &sp, 3, 0);
    size_t planned_more = stream_staging_bytes(g, &sp, 4, 0);
    CHECK(planned_more - planned >= slot && planned_more - planned < slot + 128);
    CHECK(stream_staging_bytes(g, &sp, 3, 2) - stream_staging_bytes(g, &sp, 3, 1) >= block);
    stream_stats stats = stream_get_stats(s);
    CHECK(stats.staging_bytes == planned && stats.peak_staging_bytes_in_use <= planned);
    fixture_stream_close(&f);
    dataset_close(ds);
}

int main(void) {
    test_windows();
    test_bad_ids_and_files();
    test_stream();
    return check_finish();
}
