/* test_io_dataset_storage.c - files that lie about their size or point elsewhere, refused
 * at dataset_open() with a message naming the file and the dataset: chunks never written (a
 * few-KB file declaring 2^40 rows among them, refused at once in little memory), contiguous
 * storage never written or past the end of the file, a virtual dataset with a missing or
 * short source or unmapped values, HDF5 external storage and external links (refused by
 * default; with allow_external, checked and read). Also: a dataset opened from an in-memory
 * file image reads the same values as from the disk. Files are written with the HDF5 C API. */
#include <hdf5.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "fixtures.h"
#include "io/dataset.h"

enum { ROWS = 256, FEATURES = 8 };

static float value_at(hsize_t row, hsize_t column) {
    return (float)row + (float)column * 0.125f;
}

/* ROWS x FEATURES values in file order. */
static float *make_values(void) {
    float *values = malloc(ROWS * FEATURES * sizeof *values);
    for (hsize_t r = 0; r < ROWS; r++)
        for (hsize_t c = 0; c < FEATURES; c++)
            values[r * FEATURES + c] = value_at(r, c);
    return values;
}

/* A new file with num_classes 3 and, unless rows is 0, a written /labels of `rows` zeros. */
static hid_t create_file(const char *path, hsize_t rows) {
    hid_t file = fixture_h5_create(path);
    fixture_h5_int_attribute(file, "num_classes", 3);
    if (rows) fixture_h5_member(file, "labels", H5T_STD_I32LE, 1, &rows, NULL);
    return file;
}

/* /features of rows x FEATURES float32 in chunks of chunk_rows rows (0: contiguous), with
 * its first `written` rows written (values from make_values). */
static void add_features(hid_t file, const char *name, hsize_t rows, hsize_t chunk_rows,
                         hsize_t written) {
    hsize_t dims[2] = {rows, FEATURES}, chunk[2] = {chunk_rows, FEATURES};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk_rows) H5Pset_chunk(create, 2, chunk);
    hid_t features =
        H5Dcreate2(file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, create, H5P_DEFAULT);
    if (written) {
        float *values = make_values();
        hsize_t start[2] = {0, 0}, count[2] = {written, FEATURES};
        H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
        hid_t memory = H5Screate_simple(2, count, NULL);
        H5Dwrite(features, H5T_NATIVE_FLOAT, memory, space, H5P_DEFAULT, values);
        H5Sclose(memory);
        free(values);
    }
    H5Dclose(features);
    H5Pclose(create);
    H5Sclose(space);
}

/* A good file: ROWS rows, chunked /features written whole. */
static void write_good(const char *path) {
    hid_t file = create_file(path, ROWS);
    add_features(file, "features", ROWS, 32, ROWS);
    H5Fclose(file);
}

static void expect_refused(const char *path, bool allow_external, ddt_status expected,
                           const char *text) {
    dataset_open_params params = dataset_default_open_params();
    params.allow_external = allow_external;
    CHECK_OPEN_FAILS(path, &params, expected, path, text);
}

/* Reads every row of DS and checks the values, then closes it. */
static void expect_rows(dataset *ds) {
    CHECK(dataset_get_geometry(ds)->rows == ROWS);
    fixture_arena *scratch = fixture_arena_new();
    float *features = fixture_alloc(scratch, ROWS * FEATURES * sizeof *features);
    int32_t *labels = fixture_alloc(scratch, ROWS * sizeof *labels);
    CHECK_OK(dataset_read_range(ds, 0, ROWS, features, labels, NULL));
    float *expected = fixture_adopt(scratch, make_values(), free);
    CHECK(memcmp(features, expected, ROWS * FEATURES * sizeof *features) == 0);
    fixture_arena_free(scratch);
    dataset_close(ds);
}

/* Opens `path` (allowing external data if asked) and checks every row's values. */
static void expect_values(const char *path, bool allow_external) {
    dataset_open_params params = dataset_default_open_params();
    params.allow_external = allow_external;
    dataset *ds = NULL;
    CHECK_OK(dataset_open_with_params(path, &params, &ds));
    if (ds) expect_rows(ds);
}

static void test_unwritten_chunks(void) {
    /* A few KB declaring 2^40 rows, no chunk written: refused at once, in little memory. */
    const char *path = fixture_path("huge.h5");
    hid_t file = create_file(path, 0);
    hsize_t huge = (hsize_t)1 << 40, label_chunk = 4096;
    add_features(file, "features", huge, 1024, 0);
    hid_t space = H5Screate_simple(1, &huge, NULL);
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(create, 1, &label_chunk);
    H5Dclose(H5Dcreate2(file, "labels", H5T_STD_I32LE, space, H5P_DEFAULT, create, H5P_DEFAULT));
    H5Pclose(create);
    H5Sclose(space);
    H5Fclose(file);
    struct mallinfo2 before = mallinfo2();
    double start = fixture_seconds();
    expect_refused(path, false, DDT_ERR_FORMAT,
                   "/features: 1073741824 of its 1073741824 chunks were never written");
    double elapsed = fixture_seconds() - start;
    struct mallinfo2 after = mallinfo2();
    size_t grown = (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
    CHECK(elapsed < 2.0);
    CHECK(grown < (16u << 20));
    printf("2^40 declared rows: refused in %.3f s, heap grew %zu bytes\n", elapsed, grown);

    /* Half the chunks written. */
    path = fixture_path("partial.h5");
    file = create_file(path, ROWS);
    add_features(file, "features", ROWS, 32, ROWS / 2);
    H5Fclose(file);
    expect_refused(path, false, DDT_ERR_FORMAT, "/features: 4 of its 8 chunks were never written");

    /* /labels unwritten. */
    path = fixture_path("labels-unwritten.h5");
    file = create_file(path, 0);
    add_features(file, "features", ROWS, 32, ROWS);
    hsize_t rows = ROWS, chunk = 64;
    space = H5Screate_simple(1, &rows, NULL);
    create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(create, 1, &chunk);
    H5Dclose(H5Dcreate2(file, "labels", H5T_STD_I32LE, space, H5P_DEFAULT, create, H5P_DEFAULT));
    H5Pclose(create);
    H5Sclose(space);
    H5Fclose(file);
    expect_refused(path, false, DDT_ERR_FORMAT, "/labels: 4 of its 4 chunks were never written");

    path = fixture_path("good.h5");
    write_good(path);
    expect_values(path, false);
}

/* Overwrites the end-of-file address of a version 0 superblock (8-byte addresses). */
static bool set_end_of_file_address(const char *path, uint64_t address) {
    FILE *f = fopen(path, "r+b");
    unsigned char head[48];
    bool ok = f && fread(head, 1, sizeof head, f) == sizeof head && head[8] == 0 && head[13] == 8;
    if (ok) {
        for (int i = 0; i < 8; i++)
            head[40 + i] = (unsigned char)(address >> (8 * i));
        ok = fseek(f, 40, SEEK_SET) == 0 && fwrite(head + 40, 1, 8, f) == 8;
    }
    if (f) fclose(f);
    return ok;
}

static void test_contiguous(void) {
    const char *path = fixture_path("contiguous-unwritten.h5");
    hid_t file = create_file(path, ROWS);
    add_features(file, "features", ROWS, 0, 0);
    H5Fclose(file);
    expect_refused(path, false, DDT_ERR_FORMAT,
                   "/features: its 8192 bytes of values were never written");

    /* The values cut off the end of the file, the superblock told the new length: HDF5 opens
     * it, and would read past the end. */
    path = fixture_path("contiguous-cut.h5");
    file = create_file(path, 0);
    add_features(file, "features", ROWS, 0, ROWS);
    hid_t features = H5Dopen2(file, "features", H5P_DEFAULT);
    haddr_t offset = H5Dget_offset(features);
    H5Dclose(features);
    hsize_t rows = ROWS;
    hid_t space = H5Screate_simple(1, &rows, NULL);
    hid_t compact = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_layout(compact, H5D_COMPACT); /* in the header, so it survives the cut */
    hid_t labels =
        H5Dcreate2(file, "labels", H5T_STD_I32LE, space, H5P_DEFAULT, compact, H5P_DEFAULT);
    int32_t zeros[ROWS] = {0};
    H5Dwrite(labels, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros);
    H5Dclose(labels);
    H5Pclose(compact);
    H5Sclose(space);
    H5Fclose(file);
    CHECK(offset != HADDR_UNDEF && truncate(path, (off_t)offset) == 0);
    CHECK(set_end_of_file_address(path, offset));
    expect_refused(path, false, DDT_ERR_FORMAT, "but the file has only");
}

static void write_external(const char *path, const char *raw_name, off_t raw_offset,
                           hsize_t raw_size) {
    hid_t file = create_file(path, ROWS);
    hsize_t dims[2] = {ROWS, FEATURES};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_external(create, raw_name, raw_offset, raw_size);
    H5Dclose(H5Dcreate2(file, "features", H5T_IEEE_F32LE, space, H5P_DEFAULT, create, H5P_DEFAULT));
    H5Pclose(create);
    H5Sclose(space);
    H5Fclose(file);
}

static void test_external_storage(void) {
    /* The raw values, little-endian float32 in file order, 16 bytes into a file. */
    const char *raw = fixture_path("raw.bin");
    FILE *f = fopen(raw, "wb");
    float *values = make_values();
    fwrite("sixteen bytes...", 1, 16, f);
    fwrite(values, sizeof *values, ROWS * FEATURES, f);
    fclose(f);
    free(values);
    const hsize_t bytes = ROWS * FEATURES * 4;

    const char *path = fixture_path("external.h5");
    write_external(path, raw, 16, bytes);
    expect_refused(path, false, DDT_ERR_FORMAT, "its values are stored outside the HDF5 file");
    CHECK(strstr(ddt_error_message(), raw) && strstr(ddt_error_message(), "--allow-external-data"));
    expect_values(path, true);

    /* Allowed, but the file is missing, or too short for what the dataset takes from it. */
    path = fixture_path("external-missing.h5");
    const char *missing = fixture_path("no-such-raw.bin");
    write_external(path, missing, 0, bytes);
    expect_refused(path, true, DDT_ERR_IO, "is missing");
    path = fixture_path("external-short.h5");
    write_external(path, raw, 64, bytes);
    expect_refused(path, true, DDT_ERR_FORMAT, "but the dataset needs 8192 bytes from offset 64");
    /* /etc/passwd as features (issue 10): refused by default. */
    path = fixture_path("external-passwd.h5");
    write_external(path, "/etc/passwd", 0, H5F_UNLIMITED);
    expect_refused(path, false, DDT_ERR_FORMAT, "in '/etc/passwd'");
}

static void test_external_links(void) {
    const char *target = fixture_path("link-target.h5");
    write_good(target);

    const char *path = fixture_path("external-link.h5");
    hid_t file = create_file(path, ROWS);
    H5Lcreate_external(target, "/features", file, "features", H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(file);
    expect_refused(path, false, DDT_ERR_FORMAT, "/features is an external link to /features in");
    CHECK(strstr(ddt_error_message(), target) != NULL);
    expect_values(path, true);

    /* A soft link to an external link. */
    path = fixture_path("soft-to-external.h5");
    file = create_file(path, ROWS);
    H5Lcreate_external(target, "/features", file, "elsewhere", H5P_DEFAULT, H5P_DEFAULT);
    H5Lcreate_soft("/elsewhere", file, "features", H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(file);
    expect_refused(path, false, DDT_ERR_FORMAT, "/features lives in another file");
    expect_values(path, true);

    /* A soft link within the file is fine. */
    path = fixture_path("soft.h5");
    file = create_file(path, ROWS);
    add_features(file, "real", ROWS, 32, ROWS);
    H5Lcreate_soft("/real", file, "features", H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(file);
    expect_values(path, false);
}

/* /features as a virtual dataset of ROWS rows: rows [0, mapped) from `source_name` in
 * `source_file`, rows [source_first, source_first + mapped) of it. */
static void write_virtual(const char *path, const char *source_file, const char *source_name,
                          hsize_t mapped, hsize_t source_first, hsize_t source_rows) {
    hid_t file = create_file(path, ROWS);
    hsize_t dims[2] = {ROWS, FEATURES}, source_dims[2] = {source_rows, FEATURES};
    hsize_t start[2] = {0, 0}, source_start[2] = {source_first, 0}, count[2] = {mapped, FEATURES};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t source_space = H5Screate_simple(2, source_dims, NULL);
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    H5Sselect_hyperslab(source_space, H5S_SELECT_SET, source_start, NULL, count, NULL);
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_virtual(create, space, source_file, source_name, source_space);
    H5Sselect_all(space);
    H5Dclose(H5Dcreate2(file, "features", H5T_IEEE_F32LE, space, H5P_DEFAULT, create, H5P_DEFAULT));
    H5Pclose(create);
    H5Sclose(source_space);
    H5Sclose(space);
    H5Fclose(file);
}

static void test_virtual(void) {
    /* Sources are named relative to the virtual file's directory, as HDF5 finds them. */
    write_good(fixture_path("source.h5"));
    const char *path = fixture_path("virtual.h5");
    write_virtual(path, "source.h5", "features", ROWS, 0, ROWS);
    expect_values(path, false);

    path = fixture_path("virtual-missing-file.h5");
    write_virtual(path, "no-such-source.h5", "features", ROWS, 0, ROWS);
    expect_refused(path, false, DDT_ERR_IO, "virtual source file 'no-such-source.h5'");

    path = fixture_path("virtual-missing-dataset.h5");
    write_virtual(path, "source.h5", "no_such_dataset", ROWS, 0, ROWS);
    expect_refused(path, false, DDT_ERR_FORMAT,
                   "virtual source dataset no_such_dataset is missing from");

    /* The mapping reads rows 0..383 of a 256-row source. */
    path = fixture_path("virtual-short-source.h5");
    write_virtual(path, "source.h5", "features", ROWS, 128, ROWS + 128);
    expect_refused(path, false, DDT_ERR_FORMAT,
                   "maps index 383 of dimension 0, but the source has "
                   "only 256");

    /* Only half the rows mapped. */
    path = fixture_path("virtual-half.h5");
    write_virtual(path, "source.h5", "features", ROWS / 2, 0, ROWS);
    expect_refused(path, false, DDT_ERR_FORMAT, "1024 of its 2048 values map to no virtual source");

    /* A source whose own chunks were never written. */
    const char *unwritten = fixture_path("source-unwritten.h5");
    hid_t file = create_file(unwritten, ROWS);
    add_features(file, "features", ROWS, 32, 0);
    H5Fclose(file);
    path = fixture_path("virtual-unwritten-source.h5");
    write_virtual(path, "source-unwritten.h5", "features", ROWS, 0, ROWS);
    expect_refused(path, false, DDT_ERR_FORMAT, "8 of its 8 chunks were never written");

    /* A virtual source that is virtual itself. */
    path = fixture_path("virtual-nested.h5");
    write_virtual(path, "virtual.h5", "features", ROWS, 0, ROWS);
    expect_refused(path, false, DDT_ERR_FORMAT, "is itself a virtual dataset");
}

/* The in-memory path (fuzzing uses it): the same values as from the disk; a damaged image is
 * an error, not a crash. */
static void test_file_image(void) {
    const char *path = fixture_path("image.h5");
    write_good(path);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *image = malloc((size_t)size);
    CHECK(fread(image, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    dataset_open_params params = dataset_default_open_params();
    params.file_image = image;
    params.file_image_size = (size_t)size;
    dataset *ds = NULL;
    CHECK_OK(dataset_open_with_params("in-memory.h5", &params, &ds));
    if (ds) expect_rows(ds);
    params.file_image_size = 100; /* cut short */
    CHECK_FAILS(dataset_open_with_params("in-memory.h5", &params, &ds), DDT_ERR_FORMAT,
                "in-memory.h5: cannot open as HDF5");
    free(image);
}

int main(void) {
    test_unwritten_chunks();
    test_contiguous();
    test_external_storage();
    test_external_links();
    test_virtual();
    test_file_image();
    return check_finish();
}
