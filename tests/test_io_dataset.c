/* test_io_dataset.c - dataset writer and reader: round trips over one file and shards, every
 * open/read error message, and the writer's atomicity. */
#include <hdf5.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "fixtures.h"
#include "io/dataset.h"
#include "io/dataset_writer.h"

/* Feature j of global row r, exact in float32 so comparisons can be bitwise. */
static float feature_value(int64_t r, int j) {
    return (float)r * 8.0f + (float)j * 0.5f;
}

static float target_value(int64_t r, int k) {
    return (float)r * -0.25f + (float)k;
}

static int32_t label_value(int64_t r, int classes) {
    return (int32_t)((r * 7 + 3) % classes);
}

/* Writes rows [first_row, first_row + rows) of the synthetic data set (appended in uneven
 * blocks, to exercise the writer's offsets). */
static ddt_status write_synthetic(const char *path, int64_t first_row, int64_t rows, int d,
                                  bool class_labels, int k, int classes, int64_t chunk_rows,
                                  int compression) {
    dataset_writer_params params = {
        .rows = rows,
        .features = d,
        .class_labels = class_labels,
        .target_width = k,
        .classes = classes,
        .chunk_rows = chunk_rows,
        .compression = compression,
        .source = "test_io_dataset synthetic",
    };
    fixture_rows values = {.first_row = first_row,
                           .feature = feature_value,
                           .label = label_value,
                           .target = target_value};
    return fixture_write_features(path, &params, &values);
}

/* Checks `count` rows read into the buffers against the synthetic values. */
static int rows_match(const int64_t *rows, int64_t first, int count, const dataset_geometry *g,
                      const float *features, const int32_t *labels, const float *targets) {
    int ok = 1;
    for (int i = 0; i < count; i++) {
        int64_t r = rows ? rows[i] : first + i;
        for (int j = 0; j < g->features; j++)
            ok &= features[(size_t)i * g->features + j] == feature_value(r, j);
        if (g->class_labels)
            ok &= labels[i] == label_value(r, g->classes);
        else
            for (int c = 0; c < g->target_width; c++)
                ok &= targets[(size_t)i * g->target_width + c] == target_value(r, c);
    }
    return ok;
}

/* Checks the chunk cache HDF5 holds for `path`'s /features while a dataset has it open: an
 * open dataset object is shared, so a second handle reports the first one's cache. */
static void check_chunk_cache(const char *path, size_t bytes) {
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t features = H5Dopen2(file, "features", H5P_DEFAULT);
    hid_t access_list = H5Dget_access_plist(features);
    size_t slots = 0, cache_bytes = 1;
    double w0 = 0;
    CHECK(H5Pget_chunk_cache(access_list, &slots, &cache_bytes, &w0) >= 0);
    CHECK(cache_bytes == bytes);
    if (cache_bytes != bytes)
        fprintf(stderr, "  %s: chunk cache is %zu bytes, expected %zu\n", path, cache_bytes, bytes);
    CHECK(bytes == 0 || slots >= 521); /* HDF5 reports 0 slots for a 0-byte cache */
    H5Pclose(access_list);
    H5Dclose(features);
    H5Fclose(file);
}

static void test_single_file(void) {
    const char *path = fixture_path("single.h5");
    CHECK_OK(write_synthetic(path, 0, 1000, 7, true, 0, 10, 64, 0));
    struct stat info;
    const char *temp = fixture_text("%s.tmp-%ld", path, (long)getpid());
    CHECK(stat(temp, &info) != 0); /* the temporary name is gone after close */

    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    if (!ds) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    CHECK(g->rows == 1000);
    CHECK(g->features == 7);
    CHECK(g->class_labels);
    CHECK(g->target_width == 1);
    CHECK(g->classes == 10);
    CHECK(g->chunk_rows == 64);
    CHECK(g->file_count == 1);
    CHECK(strcmp(dataset_file_path(ds, 0), path) == 0);
    CHECK(dataset_file_path(ds, 1) == NULL);

    float *features = malloc(1000 * 7 * sizeof(float));
    int32_t *labels = malloc(1000 * sizeof(int32_t));
    CHECK_OK(dataset_read_range(ds, 0, 1000, features, labels, NULL));
    CHECK(rows_match(NULL, 0, 1000, g, features, labels, NULL));

    int64_t rows[] = {0, 1, 2, 5, 63, 64, 65, 200, 201, 202, 203, 511, 999};
    int count = (int)(sizeof rows / sizeof rows[0]);
    memset(features, 0, 1000 * 7 * sizeof(float));
    CHECK_OK(dataset_read_rows(ds, rows, count, features, labels, NULL));
    CHECK(rows_match(rows, 0, count, g, features, labels, NULL));

    /* Labels only, features only. */
    CHECK_OK(dataset_read_rows(ds, rows, count, NULL, labels, NULL));
    CHECK(labels[12] == label_value(999, 10));
    CHECK_OK(dataset_read_rows(ds, rows, count, features, NULL, NULL));
    CHECK(features[12 * 7 + 6] == feature_value(999, 6));
    CHECK_OK(dataset_read_rows(ds, rows, 0, features, labels, NULL));

    /* Caller errors. */
    int64_t unsorted[] = {5, 3};
    CHECK(dataset_read_rows(ds, unsorted, 2, features, labels, NULL) == DDT_ERR_INTERNAL);
    int64_t duplicate[] = {5, 5};
    CHECK(dataset_read_rows(ds, duplicate, 2, features, labels, NULL) == DDT_ERR_INTERNAL);
    int64_t outside[] = {1000};
    CHECK(dataset_read_rows(ds, outside, 1, features, labels, NULL) == DDT_ERR_INTERNAL);
    CHECK(dataset_read_range(ds, 990, 11, features, labels, NULL) == DDT_ERR_INTERNAL);

    /* The chunk cache takes effect and does not change what is read. */
    check_chunk_cache(path, 1 << 20); /* HDF5's default until set */
    CHECK_OK(dataset_set_chunk_cache(ds, 0));
    check_chunk_cache(path, 0);
    memset(features, 0, 1000 * 7 * sizeof(float));
    CHECK_OK(dataset_read_rows(ds, rows, count, features, labels, NULL));
    CHECK(rows_match(rows, 0, count, g, features, labels, NULL));
    CHECK_OK(dataset_set_chunk_cache(ds, 4 << 20));
    check_chunk_cache(path, 4 << 20);
    CHECK_OK(dataset_read_range(ds, 100, 500, features, labels, NULL));
    CHECK(rows_match(NULL, 100, 500, g, features, labels, NULL));
    /* Scattered rows: runs of 1 to 3 rows, many per chunk, with a two-chunk cache. */
    CHECK_OK(dataset_set_chunk_cache(ds, 2 * 64 * 7 * sizeof(float)));
    check_chunk_cache(path, 2 * 64 * 7 * sizeof(float));
    int64_t spread[200];
    for (int i = 0; i < 200; i++)
        spread[i] = i * 5 + (i % 3);
    for (int pass = 0; pass < 3; pass++) {
        memset(features, 0, 200 * 7 * sizeof(float));
        CHECK_OK(
            dataset_read_rows(ds, spread + pass * 10, 200 - pass * 10, features, labels, NULL));
        CHECK(rows_match(spread + pass * 10, 0, 200 - pass * 10, g, features, labels, NULL));
    }
    free(features);
    free(labels);
    dataset_close(ds);

    /* The attributes h5py users see. */
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(file >= 0);
    CHECK(H5Aexists(file, "ddtrain_format") > 0);
    CHECK(H5Aexists(file, "source") > 0);
    CHECK(H5Aexists(file, "num_classes") > 0);
    H5Fclose(file);
}

static void test_compressed_and_default_chunks(void) {
    const char *path = fixture_path("compressed.h5");
    CHECK_OK(write_synthetic(path, 0, 5000, 256, false, 2, 0, 0, 4));
    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    if (!ds) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    CHECK(g->chunk_rows == 1024); /* 1 MiB / (256 * 4 bytes) */
    CHECK(!g->class_labels && g->target_width == 2 && g->classes == 0);
    float *features = malloc((size_t)5000 * 256 * sizeof(float));
    float *targets = malloc(5000 * 2 * sizeof(float));
    CHECK_OK(dataset_read_range(ds, 0, 5000, features, NULL, targets));
    CHECK(rows_match(NULL, 0, 5000, g, features, NULL, targets));
    int64_t rows[] = {3, 1023, 1024, 4095, 4999};
    CHECK_OK(dataset_read_rows(ds, rows, 5, features, NULL, targets));
    CHECK(rows_match(rows, 0, 5, g, features, NULL, targets));
    free(features);
    free(targets);
    dataset_close(ds);

    /* Fewer rows than a default chunk: the chunk shrinks to the rows. */
    path = fixture_path("small.h5");
    CHECK_OK(write_synthetic(path, 0, 100, 256, true, 0, 3, 0, 0));
    CHECK_OK(dataset_open(path, &ds));
    if (!ds) return;
    CHECK(dataset_get_geometry(ds)->chunk_rows == 100);
    dataset_close(ds);

    /* One 6 MiB chunk (larger than HDF5's default chunk cache) and a compressed copy of it,
     * also with a cache that holds it. */
    for (int compression = 0; compression <= 1; compression++) {
        path = fixture_path(compression ? "big-chunk-z.h5" : "big-chunk.h5");
        CHECK_OK(write_synthetic(path, 0, 3000, 512, true, 0, 7, 3000, compression));
        CHECK_OK(dataset_open(path, &ds));
        if (!ds) return;
        const dataset_geometry *big = dataset_get_geometry(ds);
        CHECK(big->chunk_rows == 3000);
        int64_t big_rows[] = {0, 1, 2046, 2047, 2048, 2049, 2999};
        features = malloc(7 * 512 * sizeof(float));
        int32_t labels[7];
        CHECK_OK(dataset_read_rows(ds, big_rows, 7, features, labels, NULL));
        CHECK(rows_match(big_rows, 0, 7, big, features, labels, NULL));
        CHECK_OK(dataset_set_chunk_cache(ds, 8 << 20));
        memset(features, 0, 7 * 512 * sizeof(float));
        CHECK_OK(dataset_read_rows(ds, big_rows, 7, features, labels, NULL));
        CHECK(rows_match(big_rows, 0, 7, big, features, labels, NULL));
        free(features);
        dataset_close(ds);
    }
}

static void test_shard_path(void) {
    char out[256];
    dataset_shard_path("dir/name.h5", 0, 4, out, sizeof out);
    CHECK(strcmp(out, "dir/name-00000-of-00004.h5") == 0);
    dataset_shard_path("dir/name.h5", 3, 4, out, sizeof out);
    CHECK(strcmp(out, "dir/name-00003-of-00004.h5") == 0);
    dataset_shard_path("dir/name.h5", 0, 1, out, sizeof out);
    CHECK(strcmp(out, "dir/name.h5") == 0);
    dataset_shard_path("dir.d/name", 1, 2, out, sizeof out);
    CHECK(strcmp(out, "dir.d/name-00001-of-00002") == 0);
}

typedef struct reader_job {
    dataset *ds;
    int ok;
} reader_job;

static void *reader_thread(void *argument) {
    reader_job *job = argument;
    const dataset_geometry *g = dataset_get_geometry(job->ds);
    int64_t rows[] = {1, 2, 99, 100, 149, 150, 151, 226};
    float features[8 * 5];
    float targets[8 * 3];
    job->ok = 1;
    for (int i = 0; i < 200; i++) {
        job->ok &= dataset_read_rows(job->ds, rows, 8, features, NULL, targets) == DDT_OK;
        job->ok &= rows_match(rows, 0, 8, g, features, NULL, targets);
    }
    return NULL;
}

static void test_shards(void) {
    const char *base = fixture_path("sharded.h5");
    const int64_t shard_rows[3] = {100, 50, 77};
    char shard_paths[3][700];
    int64_t first = 0;
    for (int s = 0; s < 3; s++) {
        dataset_shard_path(base, s, 3, shard_paths[s], sizeof shard_paths[s]);
        CHECK_OK(write_synthetic(shard_paths[s], first, shard_rows[s], 5, false, 3, 0, 16, 0));
        first += shard_rows[s];
    }
    const char *specs[2] = {
        fixture_text("%s,%s,%s", shard_paths[0], shard_paths[1], shard_paths[2]),
        fixture_path("sharded-*-of-00003.h5")};
    for (int which = 0; which < 2; which++) {
        dataset *ds = NULL;
        CHECK_OK(dataset_open(specs[which], &ds));
        if (!ds) continue;
        const dataset_geometry *g = dataset_get_geometry(ds);
        CHECK(g->rows == 227);
        CHECK(g->file_count == 3);
        CHECK(g->features == 5 && !g->class_labels && g->target_width == 3);
        CHECK(g->chunk_rows == 16);
        for (int s = 0; s < 3; s++)
            CHECK(strcmp(dataset_file_path(ds, s), shard_paths[s]) == 0);
        int64_t in_file = -1;
        CHECK(dataset_locate_row(ds, 0, &in_file) == 0 && in_file == 0);
        CHECK(dataset_locate_row(ds, 99, &in_file) == 0 && in_file == 99);
        CHECK(dataset_locate_row(ds, 100, &in_file) == 1 && in_file == 0);
        CHECK(dataset_locate_row(ds, 150, &in_file) == 2 && in_file == 0);
        CHECK(dataset_locate_row(ds, 226, &in_file) == 2 && in_file == 76);
        CHECK(dataset_locate_row(ds, 227, &in_file) == -1);

        float features[227 * 5];
        float targets[227 * 3];
        CHECK_OK(dataset_read_range(ds, 0, 227, features, NULL, targets));
        CHECK(rows_match(NULL, 0, 227, g, features, NULL, targets));
        CHECK_OK(dataset_read_range(ds, 90, 70, features, NULL, targets));
        CHECK(rows_match(NULL, 90, 70, g, features, NULL, targets));
        int64_t rows[] = {0, 1, 2, 17, 98, 99, 100, 101, 120, 149, 150, 151, 152, 200, 226};
        int count = (int)(sizeof rows / sizeof rows[0]);
        /* HDF5's default chunk cache, none, and one chunk's worth, set on every shard. */
        size_t caches[3] = {0, 0, 16 * 5 * sizeof(float)};
        for (int c = 0; c < 3; c++) {
            if (c > 0) {
                CHECK_OK(dataset_set_chunk_cache(ds, caches[c]));
                for (int s = 0; s < 3; s++)
                    check_chunk_cache(shard_paths[s], caches[c]);
            }
            memset(features, 0, sizeof features);
            CHECK_OK(dataset_read_rows(ds, rows, count, features, NULL, targets));
            CHECK(rows_match(rows, 0, count, g, features, NULL, targets));
            CHECK_OK(dataset_read_range(ds, 90, 70, features, NULL, targets));
            CHECK(rows_match(NULL, 90, 70, g, features, NULL, targets));
        }

        /* Two threads on the same dataset (the reader thread and the main thread). */
        reader_job jobs[2] = {{ds, 0}, {ds, 0}};
        pthread_t thread;
        pthread_create(&thread, NULL, reader_thread, &jobs[0]);
        reader_thread(&jobs[1]);
        pthread_join(thread, NULL);
        CHECK(jobs[0].ok && jobs[1].ok);
        dataset_close(ds);
    }

    /* Class-label shards, by comma list with spaces. */
    const char *a = fixture_path("class-a.h5"), *b = fixture_path("class-b.h5");
    CHECK_OK(write_synthetic(a, 0, 30, 4, true, 0, 6, 0, 0));
    CHECK_OK(write_synthetic(b, 30, 40, 4, true, 0, 6, 0, 0));
    dataset *ds = NULL;
    CHECK_OK(dataset_open(fixture_text("%s, %s", a, b), &ds));
    if (ds) {
        const dataset_geometry *g = dataset_get_geometry(ds);
        CHECK(g->rows == 70 && g->classes == 6 && g->class_labels);
        int64_t rows[] = {0, 28, 29, 30, 31, 69};
        float features[6 * 4];
        int32_t labels[6];
        CHECK_OK(dataset_read_rows(ds, rows, 6, features, labels, NULL));
        CHECK(rows_match(rows, 0, 6, g, features, labels, NULL));
        dataset_close(ds);
    }
}

/* ---- malformed files, written with HDF5 directly ---- */

typedef struct member_spec {
    hid_t type; /* 0: leave the member out */
    int rank;
    hsize_t dims[3];
} member_spec;

/* Members of zeros (they convert to any numeric type). */
static void write_raw(const char *path, member_spec features, member_spec labels, int num_classes) {
    hid_t file = fixture_h5_create(path);
    member_spec members[2] = {features, labels};
    const char *names[2] = {"features", "labels"};
    for (int m = 0; m < 2; m++)
        if (members[m].type)
            fixture_h5_member(file, names[m], members[m].type, members[m].rank, members[m].dims,
                              NULL);
    if (num_classes) fixture_h5_int_attribute(file, "num_classes", num_classes);
    H5Fclose(file);
}

static void test_open_errors(void) {
    const member_spec good_features = {H5T_IEEE_F32LE, 2, {10, 4, 0}};
    const member_spec good_labels = {H5T_STD_I32LE, 1, {10, 0, 0}};
    const member_spec none = {0, 0, {0}};

    const char *path = fixture_path("missing.h5");
    CHECK_OPEN_FAILS(path, NULL, DDT_ERR_IO, NULL,
                     fixture_text("%s: cannot open: No such file or directory", path));

    path = fixture_path("text.h5");
    FILE *f = fopen(path, "w");
    fputs("this is not HDF5\n", f);
    fclose(f);
    CHECK_OPEN_FAILS(path, NULL, DDT_ERR_FORMAT, NULL, fixture_text("%s: not an HDF5 file", path));

    /* Members missing, of the wrong type or shape, or disagreeing; num_classes not positive. */
    const struct {
        const char *name;
        member_spec features, labels;
        int classes;
        const char *message;
    } malformed[] = {
        {"no-features.h5", none, good_labels, 10, "no /features"},
        {"no-labels.h5", good_features, none, 10, "no /labels"},
        {"float64.h5",
         {H5T_IEEE_F64LE, 2, {10, 4, 0}},
         good_labels,
         10,
         "/features is float64, expected float32"},
        {"int-features.h5",
         {H5T_STD_I32LE, 2, {10, 4, 0}},
         good_labels,
         10,
         "/features is int32, expected float32"},
        {"rank3.h5",
         {H5T_IEEE_F32LE, 3, {10, 2, 2}},
         good_labels,
         10,
         "/features has rank 3 (shape 10x2x2)"},
        {"rank1.h5", {H5T_IEEE_F32LE, 1, {10, 0, 0}}, good_labels, 10, "/features has rank 1"},
        {"labels-float64.h5",
         good_features,
         {H5T_IEEE_F64LE, 1, {10, 0, 0}},
         10,
         "/labels is float64 with shape 10"},
        {"labels-rank2-int.h5",
         good_features,
         {H5T_STD_I32LE, 2, {10, 2, 0}},
         10,
         "/labels is int32 with shape 10x2"},
        {"row-mismatch.h5",
         good_features,
         {H5T_STD_I32LE, 1, {9, 0, 0}},
         10,
         "/features has 10 rows but /labels has 9"},
        {"zero-classes.h5", good_features, good_labels, -3, "num_classes is -3"},
    };
    for (size_t i = 0; i < sizeof malformed / sizeof *malformed; i++) {
        path = fixture_path(malformed[i].name);
        write_raw(path, malformed[i].features, malformed[i].labels, malformed[i].classes);
        CHECK_OPEN_FAILS(path, NULL, DDT_ERR_FORMAT, path, malformed[i].message);
    }

    /* Targets need no num_classes. */
    path = fixture_path("targets-no-classes.h5");
    write_raw(path, good_features, (member_spec){H5T_IEEE_F32LE, 2, {10, 2, 0}}, 0);
    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    CHECK(ds && dataset_get_geometry(ds)->chunk_rows == 1); /* contiguous */
    if (ds) CHECK_OK(dataset_set_chunk_cache(ds, 1 << 20)); /* no chunks: nothing to size */
    dataset_close(ds);

    /* A directory. */
    path = check_temp_dir();
    CHECK_OPEN_FAILS(path, NULL, DDT_ERR_IO, path, "cannot open: Is a directory");

    /* Shards that disagree. */
    const char *a = fixture_path("agree-a.h5"), *b = fixture_path("agree-b.h5");
    write_raw(a, good_features, good_labels, 10);
    write_raw(b, (member_spec){H5T_IEEE_F32LE, 2, {10, 8, 0}}, good_labels, 10);
    const char *list = fixture_text("%s,%s", a, b);
    CHECK_OPEN_FAILS(list, NULL, DDT_ERR_FORMAT, NULL,
                     fixture_text("%s: has 8 features but %s has 4", b, a));
    write_raw(b, good_features, good_labels, 12);
    CHECK_OPEN_FAILS(list, NULL, DDT_ERR_FORMAT, NULL,
                     fixture_text("%s: has num_classes 12 but %s has 10", b, a));
    write_raw(b, good_features, (member_spec){H5T_IEEE_F32LE, 2, {10, 2, 0}}, 10);
    CHECK_OPEN_FAILS(list, NULL, DDT_ERR_FORMAT, NULL,
                     fixture_text("%s: has float targets but %s has class labels", b, a));
    /* A missing file in a list is named. */
    const char *absent = fixture_path("absent.h5");
    CHECK_OPEN_FAILS(fixture_text("%s,%s", a, absent), NULL, DDT_ERR_IO, absent, "cannot open");

    const char *pattern = fixture_path("x*.h5");
    CHECK_OPEN_FAILS(pattern, NULL, DDT_ERR_IO, NULL, fixture_text("no files match '%s'", pattern));

    CHECK_OPEN_FAILS("", NULL, DDT_ERR_USAGE, NULL, "no dataset path");
}

static void expect_read_error(const char *path, const int64_t *rows, int count, const char *text) {
    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    if (!ds) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    float *features = malloc((size_t)count * g->features * sizeof(float));
    int32_t labels[16];
    float *targets = malloc((size_t)count * g->target_width * sizeof(float));
    CHECK_FAILS(dataset_read_rows(ds, rows, count, features, labels, targets), DDT_ERR_DATA, path,
                text);
    free(features);
    free(targets);
    dataset_close(ds);
}

static void test_read_errors(void) {
    const char *path = fixture_path("bad-label.h5");
    CHECK_OK(write_synthetic(path, 0, 40, 4, true, 0, 10, 8, 0));
    int32_t label = 11;
    fixture_h5_poke(path, "labels", 5, 0, H5T_NATIVE_INT32, &label);
    int64_t rows[] = {1, 5, 20};
    expect_read_error(path, rows, 3, "row 5 (global row 5): label 11 outside [0, 10)");
    label = -1;
    fixture_h5_poke(path, "labels", 5, 0, H5T_NATIVE_INT32, &label);
    expect_read_error(path, rows, 3, "label -1 outside [0, 10)");

    /* In the second shard the message gives the row in the file and the global row. */
    char shards[2][700];
    for (int s = 0; s < 2; s++) {
        dataset_shard_path(fixture_path("bad-feature.h5"), s, 2, shards[s], sizeof shards[s]);
        CHECK_OK(write_synthetic(shards[s], s * 30, 30, 16, false, 2, 0, 8, 0));
    }
    float nan = NAN, inf = INFINITY;
    fixture_h5_poke(shards[1], "features", 7, 12, H5T_NATIVE_FLOAT, &nan);
    int64_t cross[] = {2, 29, 30, 37, 50};
    dataset *ds = NULL;
    CHECK_OK(dataset_open(fixture_text("%s,%s", shards[0], shards[1]), &ds));
    if (ds) {
        float features[20 * 16], targets[20 * 2];
        CHECK_FAILS(dataset_read_rows(ds, cross, 5, features, NULL, targets), DDT_ERR_DATA,
                    fixture_text("%s: row 7 (global row 37): feature 12 is NaN", shards[1]));
        /* Rows that avoid the bad one read fine. */
        int64_t good[] = {2, 29, 30, 50};
        CHECK_OK(dataset_read_rows(ds, good, 4, features, NULL, targets));
        CHECK(dataset_read_range(ds, 20, 20, features, NULL, targets) == DDT_ERR_DATA);
        dataset_close(ds);
    }
    fixture_h5_poke(shards[0], "labels", 3, 1, H5T_NATIVE_FLOAT, &inf);
    int64_t first_shard[] = {3};
    expect_read_error(shards[0], first_shard, 1, "row 3 (global row 3): target 1 is +Inf");
}

static int same_file_contents(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    int c;
    while ((c = fgetc(in)) != EOF)
        fputc(c, out);
    fclose(in);
    fclose(out);
}

static void test_writer_atomicity(void) {
    dataset_writer_params params = {.rows = 10, .features = 3, .class_labels = true, .classes = 4};
    float features[30] = {0};
    int32_t labels[10] = {0};
    struct stat info;

    /* Aborted with no previous file: nothing remains. */
    const char *path = fixture_path("aborted.h5");
    const char *temp = fixture_text("%s.tmp-%ld", path, (long)getpid());
    dataset_writer *w = NULL;
    CHECK_OK(dataset_writer_open(path, &params, &w));
    CHECK_OK(dataset_writer_append(w, 4, features, labels, NULL));
    CHECK(stat(path, &info) != 0); /* not under the final name while being written */
    CHECK(stat(temp, &info) == 0);
    dataset_writer_abort(w);
    CHECK(stat(path, &info) != 0);
    CHECK(stat(temp, &info) != 0);
    dataset_writer_abort(NULL);

    /* Aborted, or closed short, over an existing file: the old file is untouched. */
    path = fixture_path("existing.h5");
    const char *backup = fixture_path("existing-backup.h5");
    temp = fixture_text("%s.tmp-%ld", path, (long)getpid());
    CHECK_OK(write_synthetic(path, 0, 20, 2, true, 0, 3, 0, 0));
    copy_file(path, backup);
    CHECK_OK(dataset_writer_open(path, &params, &w));
    CHECK_OK(dataset_writer_append(w, 10, features, labels, NULL));
    dataset_writer_abort(w);
    CHECK(same_file_contents(path, backup));
    CHECK(stat(temp, &info) != 0);

    CHECK_OK(dataset_writer_open(path, &params, &w));
    CHECK_OK(dataset_writer_append(w, 3, features, labels, NULL));
    CHECK(dataset_writer_append(w, 8, features, labels, NULL) != DDT_OK); /* past the end */
    CHECK(strstr(ddt_error_message(), "exceed the declared 10 rows") != NULL);
    ddt_status status = dataset_writer_close(w);
    CHECK(status != DDT_OK);
    CHECK(strstr(ddt_error_message(), path) != NULL);
    CHECK(strstr(ddt_error_message(), "only 3 of the declared 10 rows") != NULL);
    CHECK(same_file_contents(path, backup));
    CHECK(stat(temp, &info) != 0);

    /* A complete write replaces it. */
    CHECK_OK(dataset_writer_open(path, &params, &w));
    CHECK_OK(dataset_writer_append(w, 10, features, labels, NULL));
    CHECK_OK(dataset_writer_close(w));
    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    CHECK(ds && dataset_get_geometry(ds)->rows == 10 && dataset_get_geometry(ds)->features == 3);
    dataset_close(ds);

    /* Unwritable locations. */
    const char *bad = fixture_path("no-such-dir/out.h5");
    w = NULL;
    CHECK_FAILS(dataset_writer_open(bad, &params, &w), DDT_ERR_IO,
                fixture_text("%s: cannot create: No such file or directory", bad));
    CHECK(w == NULL);
    CHECK_FAILS(dataset_writer_open(check_temp_dir(), &params, &w), DDT_ERR_IO, "Is a directory");
    if (geteuid() != 0) {
        mkdir(fixture_path("read-only"), 0555);
        CHECK_FAILS(dataset_writer_open(fixture_path("read-only/out.h5"), &params, &w), DDT_ERR_IO,
                    "cannot create: Permission denied");
    }

    /* Bad parameters. */
    dataset_writer_params wrong = params;
    wrong.features = 0;
    CHECK(dataset_writer_open(path, &wrong, &w) == DDT_ERR_USAGE);
    wrong = params;
    wrong.classes = 0;
    CHECK(dataset_writer_open(path, &wrong, &w) == DDT_ERR_USAGE);
    wrong = params;
    wrong.compression = 10;
    CHECK(dataset_writer_open(path, &wrong, &w) == DDT_ERR_USAGE);

    /* Zero rows is a valid (if useless) file. */
    wrong = params;
    wrong.rows = 0;
    const char *empty = fixture_path("empty.h5");
    CHECK_OK(dataset_writer_open(empty, &wrong, &w));
    CHECK_OK(dataset_writer_close(w));
    CHECK_OK(dataset_open(empty, &ds));
    CHECK(ds && dataset_get_geometry(ds)->rows == 0);
    dataset_close(ds);
}

int main(void) {
    test_shard_path();
    test_single_file();
    test_compressed_and_default_chunks();
    test_shards();
    test_open_errors();
    test_read_errors();
    test_writer_atomicity();
    return check_finish();
}
