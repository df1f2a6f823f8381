/* test_io_model_file.c - model files: bitwise round trip, atomic replacement, load errors, and
 * that h5py (and so PyTorch users) read them as documented. Reading in two steps: the spec is
 * checked (shapes, storage) without reading or allocating parameters, so a few-KB file whose
 * spec claims 1M x 1M layers is refused at once in little memory; the parameters are read into
 * the caller's buffer, and a file replaced in between is refused. */
#include <malloc.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "engine/model.h"
#include "io/model_file.h"

static const char *spec_text = "6-5-relu-4-tanh-3";

static char *temp_path(const char *name) {
    static char paths[8][600];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, 600, "%s/%s", check_temp_dir(), name);
    return path;
}

/* Distinct values for the whole state, including ones a lossy path would change. */
static float *make_params(const model_spec *spec, float scale) {
    size_t count = model_spec_state_count(spec);
    float *params = malloc(count * sizeof *params);
    for (size_t i = 0; i < count; i++)
        params[i] = scale * ((float)i * 0.37f - 3.0f);
    params[0] = -0.0f;
    params[1] = 1e-40f; /* subnormal */
    params[2] = 3.4e38f;
    return params;
}

static void expect_message(ddt_status status, ddt_status expected, const char *path,
                           const char *text) {
    CHECK(status == expected);
    const char *message = ddt_error_message();
    int ok = (!path || strstr(message, path)) && strstr(message, text);
    CHECK(ok);
    if (!ok) fprintf(stderr, "  expected '%s' in: %s\n", text, message);
}

static void test_round_trip(void) {
    static model_spec spec;
    CHECK_OK(model_spec_parse(spec_text, &spec));
    float *params = make_params(&spec, 1.0f);
    const char *path = temp_path("model.h5");
    CHECK_OK(model_file_save(path, &spec, params));

    static model_spec loaded;
    float *loaded_params = NULL;
    CHECK_OK(model_file_load(path, &loaded, &loaded_params));
    if (!loaded_params) return;
    CHECK(strcmp(loaded.text, spec.text) == 0);
    CHECK(loaded.tensor_count == 6 && loaded.input_width == 6 && loaded.output_width == 3);
    size_t count = model_spec_parameter_count(&spec);
    CHECK(model_spec_parameter_count(&loaded) == count);
    CHECK(memcmp(loaded_params, params, count * sizeof(float)) == 0);
    free(loaded_params);

    /* No temporary file is left behind. */
    char temp[700];
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)getpid());
    struct stat info;
    CHECK(stat(temp, &info) != 0);
    free(params);
}

static void test_writable_and_atomic(void) {
    model_spec spec;
    CHECK_OK(model_spec_parse(spec_text, &spec));
    const char *path = temp_path("replace.h5");
    CHECK_OK(model_file_check_writable(path));

    char bad[700];
    snprintf(bad, sizeof bad, "%s/no-such-dir/model.h5", check_temp_dir());
    expect_message(model_file_check_writable(bad), DDT_ERR_IO, bad, "No such file or directory");
    float *params = make_params(&spec, 1.0f);
    expect_message(model_file_save(bad, &spec, params), DDT_ERR_IO, bad,
                   "No such file or directory");
    expect_message(model_file_check_writable(check_temp_dir()), DDT_ERR_IO, check_temp_dir(),
                   "Is a directory");
    /* A regular file where the directory should be. */
    const char *plain = temp_path("plain-file");
    fclose(fopen(plain, "w"));
    snprintf(bad, sizeof bad, "%s/model.h5", plain);
    expect_message(model_file_check_writable(bad), DDT_ERR_IO, bad, "is not a directory");
    if (geteuid() != 0) {
        snprintf(bad, sizeof bad, "%s/read-only-dir", check_temp_dir());
        mkdir(bad, 0555);
        strcat(bad, "/model.h5");
        expect_message(model_file_check_writable(bad), DDT_ERR_IO, bad, "Permission denied");
    }

    /* Save A; a save of B that cannot create its temporary file fails and leaves A. */
    CHECK_OK(model_file_save(path, &spec, params));
    char temp[700];
    snprintf(temp, sizeof temp, "%s.tmp-%ld", path, (long)getpid());
    mkdir(temp, 0755);
    float *other = make_params(&spec, -2.0f);
    CHECK(model_file_save(path, &spec, other) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), path) != NULL);
    model_spec loaded;
    float *loaded_params = NULL;
    CHECK_OK(model_file_load(path, &loaded, &loaded_params));
    size_t count = model_spec_parameter_count(&spec);
    CHECK(loaded_params && memcmp(loaded_params, params, count * sizeof(float)) == 0);
    free(loaded_params);
    rmdir(temp);

    /* Now it can be replaced. */
    CHECK_OK(model_file_save(path, &spec, other));
    loaded_params = NULL;
    CHECK_OK(model_file_load(path, &loaded, &loaded_params));
    CHECK(loaded_params && memcmp(loaded_params, other, count * sizeof(float)) == 0);
    free(loaded_params);
    free(other);
    free(params);
}

/* Replaces the root "model" attribute with `text`, fixed-length if `fixed`. */
static void set_model_attribute(const char *path, const char *text, int fixed) {
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (H5Aexists(file, "model") > 0) H5Adelete(file, "model");
    if (text) {
        hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, fixed ? strlen(text) : H5T_VARIABLE);
        hid_t space = H5Screate(H5S_SCALAR);
        hid_t attribute = H5Acreate2(file, "model", type, space, H5P_DEFAULT, H5P_DEFAULT);
        if (fixed)
            H5Awrite(attribute, type, text);
        else
            H5Awrite(attribute, type, &text);
        H5Aclose(attribute);
        H5Sclose(space);
        H5Tclose(type);
    }
    H5Fclose(file);
}

static void test_load_errors(void) {
    model_spec spec, loaded;
    CHECK_OK(model_spec_parse(spec_text, &spec));
    float *params = make_params(&spec, 1.0f);
    float *loaded_params = NULL;

    const char *path = temp_path("absent.h5");
    expect_message(model_file_load(path, &loaded, &loaded_params), DDT_ERR_IO, path,
                   "cannot open: No such file or directory");
    CHECK(loaded_params == NULL);

    path = temp_path("text.h5");
    FILE *f = fopen(path, "w");
    fputs("784-10\n", f);
    fclose(f);
    expect_message(model_file_load(path, &loaded, &loaded_params), DDT_ERR_FORMAT, path,
                   "not an HDF5 file");

    path = temp_path("no-attribute.h5");
    CHECK_OK(model_file_save(path, &spec, params));
    set_model_attribute(path, NULL, 0);
    expect_message(model_file_load(path, &loaded, &loaded_params), DDT_ERR_FORMAT, path,
                   "no \"model\" attribute");

    /* A fixed-length string (as numpy bytes would store it) is read too. */
    path = temp_path("fixed-string.h5");
    CHECK_OK(model_file_save(path, &spec, params));
    set_model_attribute(path, spec_text, 1);
    CHECK_OK(model_file_load(path, &loaded, &loaded_params));
    CHECK(strcmp(loaded.text, spec.text) == 0);
    free(loaded_params);
    loaded_params = NULL;

    path = temp_path("bad-spec.h5");
    CHECK_OK(model_file_save(path, &spec, params));
    set_model_attribute(path, "6-banana-3", 0);
    model_spec scratch;
    ddt_status parse_status = model_spec_parse("6-banana-3", &scratch);
    CHECK(parse_status != DDT_OK);
    char parse_message[1024];
    snprintf(parse_message, sizeof parse_message, "%s", ddt_error_message());
    expect_message(model_file_load(path, &loaded, &loaded_params), DDT_ERR_FORMAT, path,
                   parse_message);

    path = temp_path("missing-layer.h5");
    CHECK_OK(model_file_save(path, &spec, params));
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(file, "2.weight", H5P_DEFAULT);
    H5Fclose(file);
    expect_message(model_file_load(path, &loaded, &loaded_params), DDT_ERR_FORMAT, path,
                   "no 2.weight");

    path = temp_path("misshapen.h5");
    CHECK_OK(model_file_save(path, &spec, params));
    file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(file, "2.weight", H5P_DEFAULT);
    hsize_t dims[2] = {5, 4}; /* transposed: the model needs 4x5 */
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t dataset = H5Dcreate2(file, "2.weight", H5T_IEEE_F32LE, space, H5P_DEFAULT,
                               H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(dataset);
    H5Sclose(space);
    H5Fclose(file);
    expect_message(model_file_load(path, &loaded, &loaded_params), DDT_ERR_FORMAT, path,
                   "2.weight is 5x4, the model \"6-5-relu-4-tanh-3\" needs 4x5");

    /* Non-finite parameters are data errors. */
    path = temp_path("nan.h5");
    params[7] = NAN;
    CHECK_OK(model_file_save(path, &spec, params));
    expect_message(model_file_load(path, &loaded, &loaded_params), DDT_ERR_DATA, path,
                   "0.weight has a non-finite value at index 7");
    CHECK(loaded_params == NULL);
    free(params);
}

/* A model file claiming `text` with every layer present in the right shape, chunked, but no
 * value written: what a few-KB file can claim. */
static void write_claiming_file(const char *path, const char *text) {
    static model_spec spec;
    CHECK_OK(model_spec_parse(text, &spec));
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(file);
    set_model_attribute(path, text, 0);
    file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    for (int t = 0; t < spec.tensor_count; t++) {
        const model_tensor *tensor = &spec.tensors[t];
        hsize_t dims[4], chunk[4];
        for (int d = 0; d < tensor->rank; d++) {
            dims[d] = (hsize_t)tensor->dims[d];
            chunk[d] = dims[d] < 1024 ? dims[d] : 1024;
        }
        hid_t space = H5Screate_simple(tensor->rank, dims, NULL);
        hid_t create = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_chunk(create, tensor->rank, chunk);
        H5Dclose(H5Dcreate2(file, tensor->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, create,
                            H5P_DEFAULT));
        H5Pclose(create);
        H5Sclose(space);
    }
    H5Fclose(file);
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void test_two_steps(void) {
    /* 1M x 1M: 4 TiB of parameters claimed by a few KB. Refused before anything is allocated
     * for them, by read_spec and by load alike. */
    const char *path = temp_path("claims-4tib.h5");
    write_claiming_file(path, "1000000-1000000-10");
    struct stat info;
    CHECK(stat(path, &info) == 0 && info.st_size < 64 * 1024);
    model_spec spec;
    float *params = NULL;
    struct mallinfo2 before = mallinfo2();
    double start = seconds_now();
    expect_message(model_file_read_spec(path, &spec), DDT_ERR_FORMAT, path,
                   "0.weight: 954529 of its 954529 chunks were never written");
    expect_message(model_file_load(path, &spec, &params), DDT_ERR_FORMAT, path,
                   "were never written");
    CHECK(params == NULL);
    double elapsed = seconds_now() - start;
    struct mallinfo2 after = mallinfo2();
    long long grown =
        (long long)(after.uordblks + after.hblkhd) - (long long)(before.uordblks + before.hblkhd);
    CHECK(elapsed < 5.0);
    CHECK(grown < (16 << 20));
    printf("spec of 1M x 1M in %lld bytes: refused in %.3f s, heap grew %lld bytes\n",
           (long long)info.st_size, elapsed, grown);

    /* A spec claiming layers that are not there at all. */
    path = temp_path("claims-only.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(file);
    set_model_attribute(path, "1000000-1000000-10", 0);
    expect_message(model_file_read_spec(path, &spec), DDT_ERR_FORMAT, path, "no 0.weight");

    /* The two steps on a good file: the spec, then the values into the caller's buffer. */
    model_spec saved;
    CHECK_OK(model_spec_parse(spec_text, &saved));
    float *values = make_params(&saved, 1.0f);
    path = temp_path("two-steps.h5");
    CHECK_OK(model_file_save(path, &saved, values));
    CHECK_OK(model_file_read_spec(path, &spec));
    CHECK(strcmp(spec.text, saved.text) == 0);
    size_t count = model_spec_state_count(&spec);
    float *buffer = calloc(count, sizeof *buffer);
    CHECK_OK(model_file_read_parameters(path, &spec, buffer));
    CHECK(memcmp(buffer, values, count * sizeof *buffer) == 0);

    /* Replaced by another model between the steps: refused, the buffer is not overrun. */
    model_spec other;
    CHECK_OK(model_spec_parse("6-50-3", &other));
    float *other_values = make_params(&other, 1.0f);
    CHECK_OK(model_file_save(path, &other, other_values));
    expect_message(model_file_read_parameters(path, &spec, buffer), DDT_ERR_FORMAT, path,
                   "holds model \"6-50-3\" now, but \"6-5-relu-4-tanh-3\" when it was first read");
    free(other_values);
    free(buffer);
    free(values);
}

static void test_h5py(void) {
    if (system("/usr/bin/python3 -c 'import h5py' >/dev/null 2>&1") != 0) {
        printf("skipped: no h5py\n");
        return;
    }
    model_spec spec;
    CHECK_OK(model_spec_parse(spec_text, &spec));
    float *params = make_params(&spec, 1.0f);
    const char *path = temp_path("for-h5py.h5");
    CHECK_OK(model_file_save(path, &spec, params));
    char command[4096];
    snprintf(command, sizeof command,
             "/usr/bin/python3 -c '\n"
             "import sys, h5py, numpy\n"
             "f = h5py.File(sys.argv[1], \"r\")\n"
             "m = f.attrs[\"model\"]\n"
             "assert isinstance(m, str), type(m)\n"
             "assert m == \"%s\", m\n"
             "w = f[\"0.weight\"]\n"
             "assert w.shape == (5, 6) and w.dtype == numpy.float32, (w.shape, w.dtype)\n"
             "assert f[\"0.bias\"].shape == (5,)\n"
             "assert f[\"4.weight\"].shape == (3, 4)\n"
             "assert float(w[0, 2]) == %.17g, w[0, 2]\n"
             "assert sorted(f.keys()) == [\"0.bias\", \"0.weight\", \"2.bias\", \"2.weight\", "
             "\"4.bias\", \"4.weight\"], list(f.keys())\n"
             "' '%s'",
             spec.text, (double)params[2], path);
    CHECK(system(command) == 0);
    free(params);

    /* Batch normalisation's running statistics and its int64 counter, as PyTorch keeps them. */
    static model_spec bn;
    CHECK_OK(model_spec_parse("2x4x4-conv(3,k3,p1)-bn-relu-flatten-5", &bn));
    float *state = make_params(&bn, 0.5f);
    model_spec_set_counters(&bn, state, 1234);
    path = temp_path("bn-for-h5py.h5");
    CHECK_OK(model_file_save(path, &bn, state));
    snprintf(command, sizeof command,
             "/usr/bin/python3 -c '\n"
             "import sys, h5py, numpy\n"
             "f = h5py.File(sys.argv[1], \"r\")\n"
             "n = f[\"1.num_batches_tracked\"]\n"
             "assert n.shape == () and n.dtype == numpy.int64 and int(n[()]) == 1234, n\n"
             "assert f[\"1.running_var\"].shape == (3,)\n"
             "assert f[\"0.weight\"].shape == (3, 2, 3, 3)\n"
             "' '%s'",
             path);
    CHECK(system(command) == 0);
    free(state);
}

/* Buffers round trip; files from before named tensors (dense_<i> groups) still load. */
static void test_buffers_and_legacy(void) {
    static model_spec bn, loaded;
    CHECK_OK(model_spec_parse("2x4x4-conv(3,k3,p1)-bn-relu-flatten-5", &bn));
    float *state = make_params(&bn, 0.25f);
    model_spec_set_counters(&bn, state, 77);
    const char *path = temp_path("bn.h5");
    CHECK_OK(model_file_save(path, &bn, state));
    float *read = NULL;
    CHECK_OK(model_file_load(path, &loaded, &read));
    CHECK(read && memcmp(read, state, model_spec_state_count(&bn) * sizeof(float)) == 0);
    free(read);
    free(state);

    /* The layout ddtrain wrote before: /dense_<i>/weight and bias. */
    static model_spec mlp;
    CHECK_OK(model_spec_parse(spec_text, &mlp));
    float *params = make_params(&mlp, 1.0f);
    path = temp_path("legacy.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    for (int t = 0; t < mlp.tensor_count; t++) {
        const model_tensor *tensor = &mlp.tensors[t];
        char group[32], name[64];
        snprintf(group, sizeof group, "dense_%d", t / 2);
        if (t % 2 == 0) H5Gclose(H5Gcreate2(file, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        snprintf(name, sizeof name, "%s/%s", group, t % 2 ? "bias" : "weight");
        hsize_t dims[2] = {(hsize_t)tensor->dims[0], (hsize_t)tensor->dims[1]};
        hid_t space = H5Screate_simple(tensor->rank, dims, NULL);
        hid_t dataset = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                                   H5P_DEFAULT);
        H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, params + tensor->offset);
        H5Dclose(dataset);
        H5Sclose(space);
    }
    H5Fclose(file);
    set_model_attribute(path, spec_text, 0);
    read = NULL;
    CHECK_OK(model_file_load(path, &loaded, &read));
    CHECK(read && memcmp(read, params, model_spec_parameter_count(&mlp) * sizeof(float)) == 0);
    free(read);
    /* ... and a legacy file with more layers than its spec is not silently truncated */
    file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(file, "dense_3", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(file);
    read = NULL;
    expect_message(model_file_load(path, &loaded, &read), DDT_ERR_FORMAT, path, "has dense_3");
    CHECK(read == NULL);
    free(params);
}

int main(void) {
    test_round_trip();
    test_writable_and_atomic();
    test_load_errors();
    test_two_steps();
    test_h5py();
    test_buffers_and_legacy();
    return check_finish();
}
