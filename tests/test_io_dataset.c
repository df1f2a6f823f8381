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

static char *temp_path(const char *name) {
    static char paths[8][600];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, 600, "%s/%s", check_temp_dir(), name);
    return path;
}

/* Writes rows [first_row, first_row + rows) of the synthetic data set, appending in uneven
 * blocks to exercise the writer's offsets. */
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
    dataset_writer *w;
    DDT_CHECK(dataset_writer_open(path, &params, &w));
    int64_t done = 0;
    int block = 1;
    while (done < rows) {
        int n = (int)(rows - done < block ? rows - done : block);
        float *features = malloc((size_t)n * d * sizeof(float));
        int32_t *labels = malloc((size_t)n * sizeof(int32_t));
        float *targets = malloc((size_t)n * (k > 0 ? k : 1) * sizeof(float));
        for (int i = 0; i < n; i++) {
            int64_t r = first_row + done + i;
            for (int j = 0; j < d; j++)
                features[(size_t)i * d + j] = feature_value(r, j);
            if (class_labels)
                labels[i] = label_value(r, classes);
            else
                for (int c = 0; c < k; c++)
                    targets[(size_t)i * k + c] = target_value(r, c);
        }
        ddt_status status = dataset_writer_append(w, n, features, labels, targets);
        free(features);
        free(labels);
        free(targets);
        if (status != DDT_OK) {
            dataset_writer_abort(w);
            return status;
        }
        done += n;
        block = block * 3 + 1;
    }
    return dataset_writer_close(w);
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
    const char *path = temp_path("single.h5");
    CHECK_OK(write_synthetic(path, 0, 1000, 7, true, 0, 10, 64, 0));
    struct stat info;
    char temp[700];
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)getpid());
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
    const char *path = temp_path("compressed.h5");
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
    path = temp_path("small.h5");
    CHECK_OK(write_synthetic(path, 0, 100, 256, true, 0, 3, 0, 0));
    CHECK_OK(dataset_open(path, &ds));
    if (!ds) return;
    CHECK(dataset_get_geometry(ds)->chunk_rows == 100);
    dataset_close(ds);

    /* One 6 MiB chunk (larger than HDF5's default chunk cache) and a compressed copy of it,
     * also with a cache that holds it. */
    for (int compression = 0; compression <= 1; compression++) {
        path = temp_path(compression ? "big-chunk-z.h5" : "big-chunk.h5");
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
    const char *base = temp_path("sharded.h5");
    const int64_t shard_rows[3] = {100, 50, 77};
    char shard_paths[3][700];
    int64_t first = 0;
    for (int s = 0; s < 3; s++) {
        dataset_shard_path(base, s, 3, shard_paths[s], sizeof shard_paths[s]);
        CHECK_OK(write_synthetic(shard_paths[s], first, shard_rows[s], 5, false, 3, 0, 16, 0));
        first += shard_rows[s];
    }
    char list[2200];
    snprintf(list, sizeof list, "%s,%s,%s", shard_paths[0], shard_paths[1], shard_paths[2]);
    char pattern[700];
    snprintf(pattern, sizeof pattern, "%s/sharded-*-of-00003.h5", check_temp_dir());
    const char *specs[2] = {list, pattern};
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
    char a[700], b[700];
    snprintf(a, sizeof a, "%s", temp_path("class-a.h5"));
    snprintf(b, sizeof b, "%s", temp_path("class-b.h5"));
    CHECK_OK(write_synthetic(a, 0, 30, 4, true, 0, 6, 0, 0));
    CHECK_OK(write_synthetic(b, 30, 40, 4, true, 0, 6, 0, 0));
    snprintf(list, sizeof list, "%s, %s", a, b);
    dataset *ds = NULL;
    CHECK_OK(dataset_open(list, &ds));
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

static void write_raw(const char *path, member_spec features, member_spec labels, int num_classes) {
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    member_spec members[2] = {features, labels};
    const char *names[2] = {"features", "labels"};
    for (int m = 0; m < 2; m++) {
        if (!members[m].type) continue;
        hid_t space = H5Screate_simple(members[m].rank, members[m].dims, NULL);
        hid_t dataset = H5Dcreate2(file, names[m], members[m].type, space, H5P_DEFAULT, H5P_DEFAULT,
                                   H5P_DEFAULT);
        size_t n = 1;
        for (int i = 0; i < members[m].rank; i++)
            n *= members[m].dims[i];
        /* Zeros convert to any numeric type; row 5 gets a bad value for the data tests. */
        double *zeros = calloc(n, sizeof(double));
        H5Dwrite(dataset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros);
        free(zeros);
        H5Dclose(dataset);
        H5Sclose(space);
    }
    if (num_classes) {
        hid_t space = H5Screate(H5S_SCALAR);
        hid_t attribute =
            H5Acreate2(file, "num_classes", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(attribute, H5T_NATIVE_INT, &num_classes);
        H5Aclose(attribute);
        H5Sclose(space);
    }
    H5Fclose(file);
}

static void expect_open_error(const char *spec, ddt_status expected, const char *path,
                              const char *text) {
    dataset *ds = NULL;
    ddt_status status = dataset_open(spec, &ds);
    CHECK(status == expected);
    CHECK(ds == NULL);
    const char *message = ddt_error_message();
    int ok = (!path || strstr(message, path)) && strstr(message, text);
    CHECK(ok);
    if (!ok) fprintf(stderr, "  expected '%s' in: %s\n", text, message);
    dataset_close(ds);
}

static void test_open_errors(void) {
    const member_spec good_features = {H5T_IEEE_F32LE, 2, {10, 4, 0}};
    const member_spec good_labels = {H5T_STD_I32LE, 1, {10, 0, 0}};
    const member_spec none = {0, 0, {0}};
    char message[1600];

    const char *path = temp_path("missing.h5");
    snprintf(message, sizeof message, "%s: cannot open: No such file or directory", path);
    expect_open_error(path, DDT_ERR_IO, NULL, message);

    path = temp_path("text.h5");
    FILE *f = fopen(path, "w");
    fputs("this is not HDF5\n", f);
    fclose(f);
    snprintf(message, sizeof message, "%s: not an HDF5 file", path);
    expect_open_error(path, DDT_ERR_FORMAT, NULL, message);

    path = temp_path("no-features.h5");
    write_raw(path, none, good_labels, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "no /features");

    path = temp_path("no-labels.h5");
    write_raw(path, good_features, none, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "no /labels");

    path = temp_path("float64.h5");
    write_raw(path, (member_spec){H5T_IEEE_F64LE, 2, {10, 4, 0}}, good_labels, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "/features is float64, expected float32");

    path = temp_path("int-features.h5");
    write_raw(path, (member_spec){H5T_STD_I32LE, 2, {10, 4, 0}}, good_labels, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "/features is int32, expected float32");

    path = temp_path("rank3.h5");
    write_raw(path, (member_spec){H5T_IEEE_F32LE, 3, {10, 2, 2}}, good_labels, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "/features has rank 3 (shape 10x2x2)");

    path = temp_path("rank1.h5");
    write_raw(path, (member_spec){H5T_IEEE_F32LE, 1, {10, 0, 0}}, good_labels, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "/features has rank 1");

    path = temp_path("labels-float64.h5");
    write_raw(path, good_features, (member_spec){H5T_IEEE_F64LE, 1, {10, 0, 0}}, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "/labels is float64 with shape 10");

    path = temp_path("labels-rank2-int.h5");
    write_raw(path, good_features, (member_spec){H5T_STD_I32LE, 2, {10, 2, 0}}, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "/labels is int32 with shape 10x2");

    path = temp_path("row-mismatch.h5");
    write_raw(path, good_features, (member_spec){H5T_STD_I32LE, 1, {9, 0, 0}}, 10);
    expect_open_error(path, DDT_ERR_FORMAT, path, "/features has 10 rows but /labels has 9");


    path = temp_path("zero-classes.h5");
    write_raw(path, good_features, good_labels, -3);
    expect_open_error(path, DDT_ERR_FORMAT, path, "num_classes is -3");

    /* Targets need no num_classes. */
    path = temp_path("targets-no-classes.h5");
    write_raw(path, good_features, (member_spec){H5T_IEEE_F32LE, 2, {10, 2, 0}}, 0);
    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    CHECK(ds && dataset_get_geometry(ds)->chunk_rows == 1); /* contiguous */
    if (ds) CHECK_OK(dataset_set_chunk_cache(ds, 1 << 20)); /* no chunks: nothing to size */
    dataset_close(ds);

    /* A directory. */
    path = check_temp_dir();
    expect_open_error(path, DDT_ERR_IO, path, "cannot open: Is a directory");

    /* Shards that disagree. */
    char a[700], b[700], list[1500];
    snprintf(a, sizeof a, "%s", temp_path("agree-a.h5"));
    snprintf(b, sizeof b, "%s", temp_path("agree-b.h5"));
    write_raw(a, good_features, good_labels, 10);
    write_raw(b, (member_spec){H5T_IEEE_F32LE, 2, {10, 8, 0}}, good_labels, 10);
    snprintf(list, sizeof list, "%s,%s", a, b);
    snprintf(message, sizeof message, "%s: has 8 features but %s has 4", b, a);
    expect_open_error(list, DDT_ERR_FORMAT, NULL, message);
    write_raw(b, good_features, good_labels, 12);
    snprintf(message, sizeof message, "%s: has num_classes 12 but %s has 10", b, a);
    expect_open_error(list, DDT_ERR_FORMAT, NULL, message);
    write_raw(b, good_features, (member_spec){H5T_IEEE_F32LE, 2, {10, 2, 0}}, 10);
    snprintf(message, sizeof message, "%s: has float targets but %s has class labels", b, a);
    expect_open_error(list, DDT_ERR_FORMAT, NULL, message);
    /* A missing file in a list is named. */
    snprintf(list, sizeof list, "%s,%s", a, temp_path("absent.h5"));
    expect_open_error(list, DDT_ERR_IO, temp_path("absent.h5"), "cannot open");

    char pattern[700];
    snprintf(pattern, sizeof pattern, "%s/x*.h5", check_temp_dir());
    snprintf(message, sizeof message, "no files match '%s'", pattern);
    expect_open_error(pattern, DDT_ERR_IO, NULL, message);

    expect_open_error("", DDT_ERR_USAGE, NULL, "no dataset path");
}

static void expect_read_error(const char *path, const int64_t *rows, int count, const char *text) {
    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    if (!ds) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    float *features = malloc((size_t)count * g->features * sizeof(float));
    int32_t labels[16];
    float *targets = malloc((size_t)count * g->target_width * sizeof(float));
    ddt_status status = dataset_read_rows(ds, rows, count, features, labels, targets);
    CHECK(status == DDT_ERR_DATA);
    int ok = strstr(ddt_error_message(), path) && strstr(ddt_error_message(), text);
    CHECK(ok);
    if (!ok) fprintf(stderr, "  expected '%s' in: %s\n", text, ddt_error_message());
    free(features);
    free(targets);
    dataset_close(ds);
}

/* Overwrites one value of /features or /labels in an existing file. */
static void poke(const char *path, const char *name, hsize_t row, hsize_t column, hid_t type,
                 const void *value) {
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t dataset = H5Dopen2(file, name, H5P_DEFAULT);
    hid_t space = H5Dget_space(dataset);
    hsize_t start[2] = {row, column}, one[2] = {1, 1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, one, NULL);
    hid_t memory = H5Screate_simple(H5Sget_simple_extent_ndims(space), one, NULL);
    H5Dwrite(dataset, type, memory, space, H5P_DEFAULT, value);
    H5Sclose(memory);
    H5Sclose(space);
    H5Dclose(dataset);
    H5Fclose(file);
}

static void test_read_errors(void) {
    const char *path = temp_path("bad-label.h5");
    CHECK_OK(write_synthetic(path, 0, 40, 4, true, 0, 10, 8, 0));
    int32_t label = 11;
    poke(path, "labels", 5, 0, H5T_NATIVE_INT32, &label);
    int64_t rows[] = {1, 5, 20};
    expect_read_error(path, rows, 3, "row 5 (global row 5): label 11 outside [0, 10)");
    label = -1;
    poke(path, "labels", 5, 0, H5T_NATIVE_INT32, &label);
    expect_read_error(path, rows, 3, "label -1 outside [0, 10)");

    /* In the second shard the message gives the row in the file and the global row. */
    char shards[2][700];
    for (int s = 0; s < 2; s++) {
        dataset_shard_path(temp_path("bad-feature.h5"), s, 2, shards[s], sizeof shards[s]);
        CHECK_OK(write_synthetic(shards[s], s * 30, 30, 16, false, 2, 0, 8, 0));
    }
    float nan = NAN, inf = INFINITY;
    poke(shards[1], "features", 7, 12, H5T_NATIVE_FLOAT, &nan);
    char list[1500];
    snprintf(list, sizeof list, "%s,%s", shards[0], shards[1]);
    int64_t cross[] = {2, 29, 30, 37, 50};
    dataset *ds = NULL;
    CHECK_OK(dataset_open(list, &ds));
    if (ds) {
        float features[20 * 16], targets[20 * 2];
        CHECK(dataset_read_rows(ds, cross, 5, features, NULL, targets) == DDT_ERR_DATA);
        char expected[900];
        snprintf(expected, sizeof expected, "%s: row 7 (global row 37): feature 12 is NaN",
                 shards[1]);
        CHECK(strstr(ddt_error_message(), expected) != NULL);
        if (!strstr(ddt_error_message(), expected))
            fprintf(stderr, "  expected '%s' in: %s\n", expected, ddt_error_message());
        /* Rows that avoid the bad one read fine. */
        int64_t good[] = {2, 29, 30, 50};
        CHECK_OK(dataset_read_rows(ds, good, 4, features, NULL, targets));
        CHECK(dataset_read_range(ds, 20, 20, features, NULL, targets) == DDT_ERR_DATA);
        dataset_close(ds);
    }
    poke(shards[0], "labels", 3, 1, H5T_NATIVE_FLOAT, &inf);
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
    char temp[700];

    /* Aborted with no previous file: nothing remains. */
    const char *path = temp_path("aborted.h5");
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)getpid());
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
    path = temp_path("existing.h5");
    const char *backup = temp_path("existing-backup.h5");
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)getpid());
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
    char bad[700];
    snprintf(bad, sizeof bad, "%s/no-such-dir/out.h5", check_temp_dir());
    w = NULL;
    CHECK(dataset_writer_open(bad, &params, &w) == DDT_ERR_IO);
    CHECK(w == NULL);
    char expected[900];
    snprintf(expected, sizeof expected, "%s: cannot create: No such file or directory", bad);
    CHECK(strstr(ddt_error_message(), expected) != NULL);
    CHECK(dataset_writer_open(check_temp_dir(), &params, &w) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "Is a directory") != NULL);
    if (geteuid() != 0) {
        snprintf(bad, sizeof bad, "%s/read-only", check_temp_dir());
        mkdir(bad, 0555);
        snprintf(bad + strlen(bad), sizeof bad - strlen(bad), "/out.h5");
        CHECK(dataset_writer_open(bad, &params, &w) == DDT_ERR_IO);
        CHECK(strstr(ddt_error_message(), "cannot create: Permission denied") != NULL);
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
    const char *empty = temp_path("empty.h5");
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
