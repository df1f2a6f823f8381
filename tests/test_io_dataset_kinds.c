/* test_io_dataset_kinds.c - feature datasets beyond N x D with num_classes: image-shaped
 * /features (N x C x H x W) from the writer and from h5py-like files, their geometry, rows
 * and identity; class labels of any integer type without num_classes, checked against the
 * count dataset_set_classes() gives (errors naming file, row and label); the class_names
 * attribute (variable- and fixed-length strings), and shards that disagree on any of these. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fixtures.h"
#include "io/dataset.h"
#include "io/dataset_writer.h"

/* Value of element e (in C x H x W order) of row r: exact in float32. */
static float pixel(int64_t r, int e) {
    return (float)r * 64.0f + (float)e;
}

static int32_t class_of(int64_t r, int classes) {
    return (int32_t)(r % classes);
}

static void write_images(const char *path, int64_t first, int rows, int c, int h, int w,
                         const char *const *names, int classes) {
    dataset_writer_params p = {.rows = rows,
                               .features = c * h * w,
                               .feature_rank = 3,
                               .feature_dims = {c, h, w},
                               .class_labels = true,
                               .classes = classes,
                               .class_names = names,
                               .chunk_rows = 7};
    fixture_rows values = {.first_row = first, .feature = pixel, .label = class_of};
    CHECK_OK(fixture_write_features(path, &p, &values));
}

static void test_images_from_the_writer(void) {
    static const char *const names[] = {"cat", "dog", "ünïcode"};
    const char *a = fixture_path("img-a.h5"), *b = fixture_path("img-b.h5");
    write_images(a, 0, 20, 3, 2, 5, names, 3);
    write_images(b, 20, 13, 3, 2, 5, names, 3);
    const char *list = fixture_text("%s,%s", a, b);
    dataset *ds = NULL;
    CHECK_OK(dataset_open(list, &ds));
    if (!ds) return;
    const dataset_geometry *g = dataset_get_geometry(ds);
    CHECK(g->kind == DATASET_KIND_FEATURES && g->rows == 33 && g->features == 30);
    CHECK(g->feature_rank == 3 && g->feature_dims[0] == 3 && g->feature_dims[1] == 2 &&
          g->feature_dims[2] == 5);
    CHECK(g->class_labels && g->labels_per_row == 1 && g->classes == 3 && g->chunk_rows == 7);
    CHECK(dataset_class_name_count(ds) == 3 && strcmp(dataset_class_name(ds, 2), "ünïcode") == 0);
    CHECK(dataset_class_name(ds, 3) == NULL && dataset_class_name(ds, -1) == NULL);

    /* Rows are C*H*W contiguous floats; a range across the shard boundary. */
    float x[5 * 30];
    int32_t y[5];
    CHECK_OK(dataset_read_range(ds, 18, 5, x, y, NULL));
    int good = 1;
    for (int i = 0; i < 5; i++) {
        for (int e = 0; e < 30; e++)
            good &= x[i * 30 + e] == pixel(18 + i, e);
        good &= y[i] == (18 + i) % 3;
    }
    CHECK(good);
    int64_t rows[3] = {0, 19, 32};
    CHECK_OK(dataset_read_rows(ds, rows, 3, x, y, NULL));
    CHECK(x[0] == pixel(0, 0) && x[30 + 29] == pixel(19, 29) && x[60 + 7] == pixel(32, 7));
    CHECK(y[2] == 32 % 3);

    char identity[1024];
    CHECK_OK(dataset_identity(ds, identity, sizeof identity));
    CHECK(strstr(identity, "img-a.h5: 20 rows x 30 (3x2x5), classes 3") != NULL);
    dataset_close(ds);

    /* A flat dataset's identity is the text it always had (checkpoints compare it). */
    const char *flat = fixture_path("flat.h5");
    dataset_writer_params p = {.rows = 4, .features = 2, .class_labels = true, .classes = 2};
    CHECK_OK(fixture_write_features(flat, &p, &(fixture_rows){.label = class_of}));
    CHECK_OK(dataset_open(flat, &ds));
    if (ds) {
        g = dataset_get_geometry(ds);
        CHECK(g->feature_rank == 1 && g->feature_dims[0] == 2 && g->feature_dims[1] == 0);
        CHECK(dataset_class_name_count(ds) == 0 && dataset_class_name(ds, 0) == NULL);
        CHECK_OK(dataset_identity(ds, identity, sizeof identity));
        CHECK(strstr(identity, "flat.h5: 4 rows x 2, classes 2, ") != NULL);
        dataset_close(ds);
    }

    /* Same width, other shape: shards disagree. */
    write_images(b, 20, 13, 1, 6, 5, NULL, 3);
    CHECK_OPEN_FAILS(list, NULL, DDT_ERR_FORMAT, "has rows of shape 1x6x5 but", "has 3x2x5");
    /* Other class names: shards disagree. */
    static const char *const other[] = {"cat", "dog", "cow"};
    write_images(b, 20, 13, 3, 2, 5, other, 3);
    CHECK_OPEN_FAILS(list, NULL, DDT_ERR_FORMAT, "class_names differ", a);

    /* The writer refuses a shape that does not make the width. */
    dataset_writer_params bad = {.rows = 4,
                                 .features = 30,
                                 .feature_rank = 3,
                                 .feature_dims = {3, 2, 4},
                                 .class_labels = true,
                                 .classes = 2};
    dataset_writer *w;
    CHECK_FAILS(dataset_writer_open(fixture_path("bad-shape.h5"), &bad, &w), DDT_ERR_USAGE,
                "image shape 3x2x4 does not make 30 features");
}

/* h5py-like files: what users write, member by member. */
typedef struct member {
    hid_t type;
    int rank;
    hsize_t dims[5];
} member;

static void write_member(hid_t file, const char *name, member m, const double *values) {
    fixture_h5_member(file, name, m.type, m.rank, m.dims, values);
}

/* /features of shape `features` (values e * 0.25), /labels of `label_type` with the given
 * values, no num_classes unless classes > 0. */
static void write_plain(const char *path, member features, hid_t label_type, const double *labels,
                        int classes) {
    hid_t file = fixture_h5_create(path);
    size_t n = 1;
    for (int i = 0; i < features.rank; i++)
        n *= features.dims[i];
    double *values = malloc(n * sizeof *values);
    for (size_t i = 0; i < n; i++)
        values[i] = (double)i * 0.25;
    write_member(file, "features", features, values);
    free(values);
    write_member(file, "labels", (member){label_type, 1, {features.dims[0]}}, labels);
    if (classes > 0) fixture_h5_int_attribute(file, "num_classes", classes);
    H5Fclose(file);
}

/* Adds fixed-length class names (numpy bytes, as h5py writes np.array([b'..'])) to /labels. */
static void add_fixed_names(const char *path, const char *names, int count, size_t length) {
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t labels = H5Dopen2(file, "labels", H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, length);
    H5Tset_strpad(type, H5T_STR_NULLPAD);
    hsize_t dims = (hsize_t)count;
    hid_t space = H5Screate_simple(1, &dims, NULL);
    hid_t attribute = H5Acreate2(labels, "class_names", type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, type, names);
    H5Aclose(attribute);
    H5Sclose(space);
    H5Tclose(type);
    H5Dclose(labels);
    H5Fclose(file);
}

static void test_plain_files(void) {
    double labels[6] = {0, 1, 2, 1, 0, 2};
    const char *path = fixture_path("plain-int64.h5");
    /* int64 labels (h5py's default), no num_classes, N x C x H x W features without chunks */
    write_plain(path, (member){H5T_IEEE_F32LE, 4, {6, 2, 1, 3}}, H5T_STD_I64LE, labels, 0);
    dataset *ds = NULL;
    CHECK_OK(dataset_open(path, &ds));
    if (ds) {
        const dataset_geometry *g = dataset_get_geometry(ds);
        CHECK(g->classes == 0 && g->class_labels && g->labels_per_row == 1);
        CHECK(g->feature_rank == 3 && g->features == 6 && g->chunk_rows == 1);
        float x[12];
        int32_t y[2];
        CHECK_OK(dataset_read_range(ds, 4, 2, x, y, NULL));
        CHECK(x[0] == 24 * 0.25f && x[11] == 35 * 0.25f && y[0] == 0 && y[1] == 2);
        CHECK(dataset_set_classes(ds, 0) == DDT_ERR_INTERNAL);
        CHECK_OK(dataset_set_classes(ds, 3));
        CHECK(dataset_get_geometry(ds)->classes == 3);
        /* Another count is allowed for an undeclared file: labels are then checked against it. */
        CHECK_OK(dataset_set_classes(ds, 2));
        int32_t all[6];
        float features[36];
        CHECK_FAILS(dataset_read_range(ds, 0, 6, features, all, NULL), DDT_ERR_DATA, path,
                    "row 2 (global row 2): label 2 outside [0, 2) (the file has no "
                    "num_classes; 2 is the model's output width)");
        char identity[512];
        CHECK_OK(dataset_identity(ds, identity, sizeof identity));
        CHECK(strstr(identity, "classes 0,") != NULL); /* what the file says */
        dataset_close(ds);
    }

    /* uint8 labels; a negative int8 id is wrong even without a class count. */
    path = fixture_path("plain-uint8.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 2, {6, 4}}, H5T_STD_U8LE, labels, 0);
    CHECK_OK(dataset_open(path, &ds));
    if (ds) {
        int32_t y[6];
        CHECK_OK(dataset_read_range(ds, 0, 6, NULL, y, NULL));
        CHECK(y[2] == 2 && y[5] == 2);
        dataset_close(ds);
    }
    double negative[6] = {0, 1, -1, 1, 0, 2};
    path = fixture_path("plain-int8.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 2, {6, 4}}, H5T_STD_I8LE, negative, 0);
    CHECK_OK(dataset_open(path, &ds));
    if (ds) {
        int32_t y[6];
        CHECK_FAILS(dataset_read_range(ds, 0, 6, NULL, y, NULL), DDT_ERR_DATA, path,
                    "row 2 (global row 2): label -1 is negative");
        dataset_close(ds);
    }

    /* A declared count: dataset_set_classes must agree with it. */
    path = fixture_path("declared.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 2, {6, 4}}, H5T_STD_I32LE, labels, 3);
    CHECK_OK(dataset_open(path, &ds));
    if (ds) {
        CHECK_OK(dataset_set_classes(ds, 3));
        CHECK_FAILS(dataset_set_classes(ds, 4), DDT_ERR_FORMAT, path,
                    "num_classes is 3, but 4 classes were asked for");
        dataset_close(ds);
    }
    /* Float targets have no classes. */
    path = fixture_path("targets.h5");
    hid_t file = fixture_h5_create(path);
    write_member(file, "features", (member){H5T_IEEE_F32LE, 2, {6, 4}}, NULL);
    write_member(file, "labels", (member){H5T_IEEE_F32LE, 2, {6, 2}}, NULL);
    H5Fclose(file);
    CHECK_OK(dataset_open(path, &ds));
    if (ds) {
        CHECK(dataset_get_geometry(ds)->labels_per_row == 0);
        CHECK_FAILS(dataset_set_classes(ds, 3), DDT_ERR_USAGE, path, "float targets");
        dataset_close(ds);
    }

    /* Fixed-length class names; their count against num_classes and the asked count. */
    path = fixture_path("fixed-names.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 2, {6, 4}}, H5T_STD_I32LE, labels, 0);
    add_fixed_names(path, "zero\0one\0\0two\0\0", 3, 5);
    CHECK_OK(dataset_open(path, &ds));
    if (ds) {
        CHECK(dataset_class_name_count(ds) == 3 && strcmp(dataset_class_name(ds, 0), "zero") == 0 &&
              strcmp(dataset_class_name(ds, 2), "two") == 0);
        CHECK_FAILS(dataset_set_classes(ds, 4), DDT_ERR_FORMAT, path,
                    "class_names holds 3 names, but 4 classes were asked for");
        dataset_close(ds);
    }
    path = fixture_path("names-vs-classes.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 2, {6, 4}}, H5T_STD_I32LE, labels, 4);
    add_fixed_names(path, "zero\0one\0\0two\0\0", 3, 5);
    CHECK_OPEN_FAILS(path, NULL, DDT_ERR_FORMAT, path,
                     "class_names holds 3 names but num_classes is 4");

    /* Ranks other than 2 and 4 are refused, naming both. */
    path = fixture_path("rank3.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 3, {6, 2, 2}}, H5T_STD_I32LE, labels, 3);
    CHECK_OPEN_FAILS(path, NULL, DDT_ERR_FORMAT,
                     "/features has rank 3 (shape 6x2x2), expected 2 (rows x features) or 4",
                     "channels x height x width");
    path = fixture_path("rank5.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 5, {6, 1, 1, 2, 2}}, H5T_STD_I32LE, labels, 3);
    CHECK_OPEN_FAILS(path, NULL, DDT_ERR_FORMAT, "/features has rank 5 (shape 6x1x1x2x2)", NULL);
    /* Labels must be integers or float targets. */
    path = fixture_path("float64-labels.h5");
    write_plain(path, (member){H5T_IEEE_F32LE, 2, {6, 4}}, H5T_IEEE_F64LE, labels, 3);
    CHECK_OPEN_FAILS(path, NULL, DDT_ERR_FORMAT,
                     "/labels is float64 with shape 6; expected integer class ids", NULL);
}

int main(void) {
    test_images_from_the_writer();
    test_plain_files();
    return check_finish();
}
