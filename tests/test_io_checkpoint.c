/* test_io_checkpoint.c - checkpoints: bitwise round trip, the model part read as a model file
 * (and by h5py), keeping the newest K, finding the newest complete one among junk, and a crash
 * during a write (a forked child dies before the rename) leaving the previous one loadable. */
#include <hdf5.h>
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "engine/model.h"
#include "io/checkpoint.h"
#include "io/model_file.h"

static const char *spec_text = "6-5-relu-4-tanh-3";

static void make_directory_path(const char *name, char *out, size_t size) {
    snprintf(out, size, "%s/%s", check_temp_dir(), name);
}

static bool file_exists(const char *path) {
    struct stat info;
    return stat(path, &info) == 0;
}

/* Names in `directory` (sorted, joined by spaces, dot files left out) for easy comparison. */
static void list_names(const char *directory, char *out, size_t size) {
    char names[64][256];
    int count = 0;
    DIR *listing = opendir(directory);
    struct dirent *entry;
    while (listing && (entry = readdir(listing)) != NULL && count < 64)
        if (entry->d_name[0] != '.') snprintf(names[count++], 256, "%s", entry->d_name);
    if (listing) closedir(listing);
    qsort(names, (size_t)count, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    out[0] = '\0';
    for (int i = 0; i < count; i++)
        snprintf(out + strlen(out), size - strlen(out), "%s%s", i ? " " : "", names[i]);
}

static void expect_message(ddt_status status, ddt_status expected, const char *path,
                           const char *text) {
    CHECK(status == expected);
    const char *message = ddt_error_message();
    int ok = (!path || strstr(message, path)) && strstr(message, text);
    CHECK(ok);
    if (!ok) fprintf(stderr, "  expected '%s' in: %s\n", text, message);
}

/* A state whose every field differs from its neighbours' and from a default, with values a
 * lossy path would change: -0, a subnormal, FLT_MAX, a NaN payload, integers beyond 2^53. */
typedef struct test_state {
    model_spec spec;
    float *parameters;
    float *optimizer;
    checkpoint_state state;
} test_state;

static void test_state_init(test_state *t, int64_t step, float scale) {
    CHECK_OK(model_spec_parse(spec_text, &t->spec));
    size_t count = model_spec_parameter_count(&t->spec);
    t->parameters = malloc(count * sizeof(float));
    t->optimizer = malloc(2 * count * sizeof(float));
    for (size_t i = 0; i < count; i++)
        t->parameters[i] = scale * ((float)i * 0.37f - 3.0f) + (float)step;
    t->parameters[0] = -0.0f;
    t->parameters[1] = 1e-40f;
    t->parameters[2] = 3.4e38f;
    for (size_t i = 0; i < 2 * count; i++)
        t->optimizer[i] = scale * (float)i / 7.0f;
    uint32_t nan_bits = 0x7fc12345u;
    memcpy(&t->optimizer[3], &nan_bits, sizeof nan_bits);
    t->optimizer[4] = -0.0f;
    t->state = (checkpoint_state){
        .spec = &t->spec,
        .parameters = t->parameters,
        .optimizer_state = t->optimizer,
        .optimizer_state_count = 2 * count,
        .optimizer_kind = "adamw",
        .optimizer_steps = step - 1,
        .global_step = step,
        .epoch = 3 + step / 100,
        .samples_seen = (INT64_C(1) << 53) + 1 + step,
        .global_batch = 96,
        .seed = UINT64_MAX - 5,
        .loss_scale = 32768.0 / 3.0,
        .steps_since_overflow = 17,
        .world_size = 3,
        .configuration = "model = 6-5-relu-4-tanh-3\noptimizer = adamw\nnote = grüße \"quoted\"\n",
    };
}

static void test_state_free(test_state *t) {
    free(t->parameters);
    free(t->optimizer);
}

/* The loaded checkpoint equals `t` bit for bit. */
static void expect_same(const checkpoint_loaded *loaded, const test_state *t) {
    const checkpoint_state *s = &t->state;
    size_t count = model_spec_parameter_count(&t->spec);
    CHECK(strcmp(loaded->spec.text, t->spec.text) == 0);
    CHECK(loaded->parameter_count == count);
    CHECK(loaded->parameters &&
          memcmp(loaded->parameters, s->parameters, count * sizeof(float)) == 0);
    CHECK(loaded->optimizer_state_count == s->optimizer_state_count);
    CHECK(loaded->optimizer_state && memcmp(loaded->optimizer_state, s->optimizer_state,
                                            s->optimizer_state_count * sizeof(float)) == 0);
    CHECK(strcmp(loaded->optimizer_kind, s->optimizer_kind) == 0);
    CHECK(loaded->optimizer_steps == s->optimizer_steps);
    CHECK(loaded->global_step == s->global_step);
    CHECK(loaded->epoch == s->epoch);
    CHECK(loaded->samples_seen == s->samples_seen);
    CHECK(loaded->global_batch == s->global_batch);
    CHECK(loaded->steps_since_overflow == s->steps_since_overflow);
    CHECK(loaded->seed == s->seed);
    CHECK(memcmp(&loaded->loss_scale, &s->loss_scale, sizeof(double)) == 0);
    CHECK(loaded->world_size == s->world_size);
    CHECK(loaded->configuration && strcmp(loaded->configuration, s->configuration) == 0);
}

static void expect_loads(const char *path, const test_state *t) {
    checkpoint_loaded loaded;
    CHECK_OK(checkpoint_read(path, &loaded));
    expect_same(&loaded, t);
    checkpoint_loaded_free(&loaded);
}

static void expect_latest(const char *directory, const char *expected) {
    char path[1024];
    bool found = false;
    CHECK_OK(checkpoint_find_latest(directory, path, sizeof path, &found));
    CHECK(found && strcmp(path, expected) == 0);
    if (!found || strcmp(path, expected) != 0)
        fprintf(stderr, "  latest: expected %s, got %s\n", expected, found ? path : "(none)");
}

static void test_round_trip(void) {
    char directory[600];
    make_directory_path("round-trip/nested", directory, sizeof directory); /* made by the write */
    test_state t;
    test_state_init(&t, INT64_C(123456789012), 1.0f);
    char written[1024];
    CHECK_OK(checkpoint_write(directory, &t.state, 3, NULL, written, sizeof written));
    char expected[1024];
    snprintf(expected, sizeof expected, "%s/checkpoint-123456789012.h5", directory);
    CHECK(strcmp(written, expected) == 0);
    expect_loads(written, &t);

    /* No temporary file is left behind. */
    char names[4096];
    list_names(directory, names, sizeof names);
    CHECK(strcmp(names, "checkpoint-123456789012.h5") == 0);

    /* The model part is a model file. */
    model_spec spec;
    float *params = NULL;
    CHECK_OK(model_file_load(written, &spec, &params));
    CHECK(strcmp(spec.text, t.spec.text) == 0);
    CHECK(params &&
          memcmp(params, t.parameters, model_spec_parameter_count(&spec) * sizeof(float)) == 0);
    free(params);

    /* A stateless optimizer and no configuration. */
    t.state.optimizer_state = NULL;
    t.state.optimizer_state_count = 0;
    t.state.optimizer_kind = "sgd";
    t.state.configuration = NULL;
    t.state.global_step = 0;
    t.state.optimizer_steps = 0;
    CHECK_OK(checkpoint_write(directory, &t.state, 3, NULL, written, sizeof written));
    checkpoint_loaded loaded;
    CHECK_OK(checkpoint_read(written, &loaded));
    CHECK(loaded.optimizer_state_count == 0 && loaded.optimizer_state != NULL);
    CHECK(strcmp(loaded.optimizer_kind, "sgd") == 0);
    CHECK(loaded.configuration && strcmp(loaded.configuration, "") == 0);
    CHECK(loaded.global_step == 0);
    checkpoint_loaded_free(&loaded);
    CHECK(loaded.parameters == NULL && loaded.configuration == NULL);
    checkpoint_loaded_free(&loaded); /* twice is harmless */

    /* A state the reader would refuse is not written. */
    t.state.global_batch = 0;
    CHECK(checkpoint_write(directory, &t.state, 3, NULL, written, sizeof written) ==
          DDT_ERR_INTERNAL);
    CHECK(strstr(ddt_error_message(), "global_batch") != NULL);
    test_state_free(&t);
}

static void test_keep(void) {
    char directory[600];
    make_directory_path("keep", directory, sizeof directory);
    test_state t;
    test_state_init(&t, 1, 1.0f);
    for (int64_t step = 10; step <= 50; step += 10) {
        t.state.global_step = step;
        CHECK_OK(checkpoint_write(directory, &t.state, 2, NULL, NULL, 0));
    }
    char names[4096];
    list_names(directory, names, sizeof names);
    CHECK(strcmp(names, "checkpoint-000000000040.h5 checkpoint-000000000050.h5") == 0);
    if (strcmp(names, "checkpoint-000000000040.h5 checkpoint-000000000050.h5") != 0)
        fprintf(stderr, "  have: %s\n", names);
    char expected[1024];
    snprintf(expected, sizeof expected, "%s/checkpoint-000000000050.h5", directory);
    expect_latest(directory, expected);

    /* keep 1 leaves only the newest. */
    t.state.global_step = 60;
    CHECK_OK(checkpoint_write(directory, &t.state, 1, NULL, NULL, 0));
    list_names(directory, names, sizeof names);
    CHECK(strcmp(names, "checkpoint-000000000060.h5") == 0);

    expect_message(checkpoint_write(directory, &t.state, 0, NULL, NULL, 0), DDT_ERR_USAGE,
                   directory, "at least 1");
    test_state_free(&t);
}

/* Copies the first `bytes` bytes of `from` (all if negative) to `to`. */
static void copy_file(const char *from, const char *to, long bytes) {
    FILE *in = fopen(from, "rb");
    FILE *out = fopen(to, "wb");
    CHECK(in && out);
    if (!in || !out) return;
    char buffer[4096];
    size_t got;
    long left = bytes < 0 ? LONG_MAX : bytes;
    while (left > 0 && (got = fread(buffer, 1, left < 4096 ? (size_t)left : 4096, in)) > 0) {
        fwrite(buffer, 1, got, out);
        left -= (long)got;
    }
    fclose(in);
    fclose(out);
}

static long file_size(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 ? (long)info.st_size : -1;
}

static void test_find_latest(void) {
    char directory[600], path[1024];
    bool found = true;

    make_directory_path("absent", directory, sizeof directory);
    CHECK_OK(checkpoint_find_latest(directory, path, sizeof path, &found));
    CHECK(!found);

    make_directory_path("empty", directory, sizeof directory);
    mkdir(directory, 0755);
    found = true;
    CHECK_OK(checkpoint_find_latest(directory, path, sizeof path, &found));
    CHECK(!found);

    make_directory_path("plain-file", directory, sizeof directory);
    fclose(fopen(directory, "w"));
    expect_message(checkpoint_find_latest(directory, path, sizeof path, &found), DDT_ERR_IO,
                   directory, "Not a directory");
    CHECK(!found);

    make_directory_path("find", directory, sizeof directory);
    test_state t;
    test_state_init(&t, 5, 1.0f);
    char five[1024], seven[1024];
    CHECK_OK(checkpoint_write(directory, &t.state, 10, NULL, five, sizeof five));
    t.state.global_step = 7;
    CHECK_OK(checkpoint_write(directory, &t.state, 10, NULL, seven, sizeof seven));
    expect_latest(directory, seven);

    /* Newer files that are not complete checkpoints: a complete file under a temporary name,
     * a file without checkpoint_complete, a truncated copy, junk, and a directory. */
    char temporary[1024], unmarked[1024], truncated[1024], junk[1024], folder[1024];
    snprintf(temporary, sizeof temporary, "%s/checkpoint-000000000013.h5.tmp-99999", directory);
    copy_file(seven, temporary, -1);
    snprintf(unmarked, sizeof unmarked, "%s/checkpoint-000000000010.h5", directory);
    copy_file(seven, unmarked, -1);
    hid_t file = H5Fopen(unmarked, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK(file >= 0 && H5Adelete(file, "checkpoint_complete") >= 0);
    H5Fclose(file);
    snprintf(truncated, sizeof truncated, "%s/checkpoint-000000000011.h5", directory);
    copy_file(seven, truncated, file_size(seven) / 2);
    snprintf(junk, sizeof junk, "%s/checkpoint-000000000012.h5", directory);
    FILE *f = fopen(junk, "w");
    fputs("this is not HDF5\n", f);
    fclose(f);
    snprintf(folder, sizeof folder, "%s/checkpoint-000000000014.h5", directory);
    mkdir(folder, 0755);
    expect_latest(directory, seven);
    expect_loads(seven, &t);

    /* Each reads with an error naming the file. */
    checkpoint_loaded loaded;
    expect_message(checkpoint_read(unmarked, &loaded), DDT_ERR_FORMAT, unmarked,
                   "not a complete ddtrain checkpoint");
    CHECK(loaded.parameters == NULL);
    expect_message(checkpoint_read(truncated, &loaded), DDT_ERR_FORMAT, truncated,
                   "cannot open (truncated or damaged?)");
    expect_message(checkpoint_read(junk, &loaded), DDT_ERR_FORMAT, junk, "not an HDF5 file");
    expect_message(checkpoint_read(folder, &loaded), DDT_ERR_IO, folder, "Is a directory");
    char absent[1024];
    snprintf(absent, sizeof absent, "%s/checkpoint-000000000099.h5", directory);
    expect_message(checkpoint_read(absent, &loaded), DDT_ERR_IO, absent,
                   "No such file or directory");
    /* A plain --save model file is not a checkpoint. */
    char model_path[1024];
    snprintf(model_path, sizeof model_path, "%s/model.h5", directory);
    CHECK_OK(model_file_save(model_path, &t.spec, t.parameters));
    expect_message(checkpoint_read(model_path, &loaded), DDT_ERR_FORMAT, model_path,
                   "not a complete ddtrain checkpoint");

    /* The next write (step 8, keep 1) deletes 5 and 7, being older than the newest complete
     * one, and the stale temporary file; the newer incomplete files stay. */
    t.state.global_step = 8;
    char eight[1024];
    CHECK_OK(checkpoint_write(directory, &t.state, 1, NULL, eight, sizeof eight));
    CHECK(!file_exists(five) && !file_exists(seven) && !file_exists(temporary));
    CHECK(file_exists(unmarked) && file_exists(truncated) && file_exists(junk));
    expect_latest(directory, eight);
    test_state_free(&t);
}

/* ---- crash during a write ---- */

static void crash_before_commit(void *context, const char *temporary_path) {
    (void)context;
    (void)temporary_path;
    _exit(3);
}

static void truncate_then_crash(void *context, const char *temporary_path) {
    (void)context;
    struct stat info;
    if (stat(temporary_path, &info) != 0 || truncate(temporary_path, info.st_size / 3) != 0)
        _exit(5);
    _exit(4);
}

/* A child writes `t` through `hooks`, which end the child before the rename. */
static void crash_while_writing(const char *directory, test_state *t, checkpoint_write_hooks *hooks,
                                int expected_exit) {
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        checkpoint_write(directory, &t->state, 2, hooks, NULL, 0);
        _exit(1); /* the hook did not run */
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == expected_exit);
    /* The child's temporary file is there, its final file is not. */
    char final[1024], temporary[1100];
    snprintf(final, sizeof final, "%s/checkpoint-%012" PRId64 ".h5", directory,
             t->state.global_step);
    snprintf(temporary, sizeof temporary, "%s.tmp-%ld", final, (long)child);
    CHECK(file_exists(temporary));
    CHECK(!file_exists(final));
}

static void test_crash_during_write(void) {
    char directory[600];
    make_directory_path("crash", directory, sizeof directory);
    test_state a, b;
    test_state_init(&a, 100, 1.0f);
    test_state_init(&b, 200, -2.0f);
    char path_a[1024];
    CHECK_OK(checkpoint_write(directory, &a.state, 2, NULL, path_a, sizeof path_a));

    checkpoint_write_hooks crash = {crash_before_commit, NULL};
    crash_while_writing(directory, &b, &crash, 3);
    expect_latest(directory, path_a);
    expect_loads(path_a, &a);

    checkpoint_write_hooks truncate_first = {truncate_then_crash, NULL};
    crash_while_writing(directory, &b, &truncate_first, 4);
    expect_latest(directory, path_a);
    expect_loads(path_a, &a);

    /* The restarted run writes B; the crashed writers' temporary files go. */
    char path_b[1024];
    CHECK_OK(checkpoint_write(directory, &b.state, 2, NULL, path_b, sizeof path_b));
    char names[4096];
    list_names(directory, names, sizeof names);
    CHECK(strcmp(names, "checkpoint-000000000100.h5 checkpoint-000000000200.h5") == 0);
    expect_latest(directory, path_b);
    expect_loads(path_b, &b);
    expect_loads(path_a, &a);
    test_state_free(&a);
    test_state_free(&b);
}

static void test_directory_errors(void) {
    char directory[700];
    make_directory_path("made/by/check", directory, sizeof directory);
    CHECK_OK(checkpoint_check_directory(directory));
    struct stat info;
    CHECK(stat(directory, &info) == 0 && S_ISDIR(info.st_mode));
    char names[4096];
    list_names(directory, names, sizeof names);
    CHECK(names[0] == '\0'); /* the probe file is gone */
    CHECK_OK(checkpoint_check_directory(directory));

    char plain[600];
    make_directory_path("regular-file", plain, sizeof plain);
    fclose(fopen(plain, "w"));
    snprintf(directory, sizeof directory, "%s/checkpoints", plain);
    expect_message(checkpoint_check_directory(directory), DDT_ERR_IO, directory,
                   "cannot create the checkpoint directory");
    CHECK(strstr(ddt_error_message(), "regular-file is not a directory") != NULL);
    expect_message(checkpoint_check_directory(plain), DDT_ERR_IO, plain, "is not a directory");
    test_state t;
    test_state_init(&t, 1, 1.0f);
    expect_message(checkpoint_write(directory, &t.state, 1, NULL, NULL, 0), DDT_ERR_IO, directory,
                   "cannot create the checkpoint directory");
    if (geteuid() != 0) {
        make_directory_path("read-only", directory, sizeof directory);
        mkdir(directory, 0555);
        expect_message(checkpoint_check_directory(directory), DDT_ERR_IO, directory,
                       "Permission denied");
    }
    expect_message(checkpoint_check_directory(""), DDT_ERR_USAGE, NULL, "no checkpoint directory");
    test_state_free(&t);
}

static void test_h5py(void) {
    if (system("/usr/bin/python3 -c 'import h5py' >/dev/null 2>&1") != 0) {
        printf("skipped: no h5py\n");
        return;
    }
    char directory[600], path[1024];
    make_directory_path("h5py", directory, sizeof directory);
    test_state t;
    test_state_init(&t, 42, 1.0f);
    CHECK_OK(checkpoint_write(directory, &t.state, 1, NULL, path, sizeof path));
    char command[8192];
    snprintf(command, sizeof command,
             "/usr/bin/python3 -c '\n"
             "import sys, h5py, numpy\n"
             "f = h5py.File(sys.argv[1], \"r\")\n"
             "m = f.attrs[\"model\"]\n"
             "assert isinstance(m, str) and m == \"%s\", m\n"
             "w = f[\"0.weight\"]\n"
             "assert w.shape == (5, 6) and w.dtype == numpy.float32, (w.shape, w.dtype)\n"
             "assert float(w[0, 4]) == %.17g, w[0, 4]\n"
             "assert f[\"4.bias\"].shape == (3,)\n"
             "assert f[\"optimizer/state\"].shape == (%zu,)\n"
             "assert int(f.attrs[\"global_step\"]) == 42\n"
             "assert int(f.attrs[\"seed\"]) == %" PRIu64 ", f.attrs[\"seed\"]\n"
             "assert int(f.attrs[\"samples_seen\"]) == %" PRId64 "\n"
             "assert f.attrs[\"optimizer_kind\"] == \"adamw\"\n"
             "assert f.attrs[\"configuration\"].startswith(\"model = \")\n"
             "assert int(f.attrs[\"checkpoint_complete\"]) == 1\n"
             "' '%s'",
             t.spec.text, (double)t.parameters[4],
             t.state.optimizer_state_count, t.state.seed, t.state.samples_seen, path);
    CHECK(system(command) == 0);
    test_state_free(&t);
}

/* checkpoint_read_for(): a checkpoint of another model, or with more optimizer state than any
 * optimizer keeps, is refused before anything is allocated for it. */
static void test_read_for(void) {
    char directory[700], written[4096];
    make_directory_path("read-for", directory, sizeof directory);
    test_state t;
    test_state_init(&t, 40, 1.0f);
    CHECK_OK(checkpoint_write(directory, &t.state, 3, NULL, written, sizeof written));
    checkpoint_loaded loaded;
    CHECK_OK(checkpoint_read_for(written, &t.spec, &loaded));
    expect_same(&loaded, &t);
    checkpoint_loaded_free(&loaded);

    model_spec other;
    CHECK_OK(model_spec_parse("6-50-3", &other));
    expect_message(checkpoint_read_for(written, &other, &loaded), DDT_ERR_USAGE, written,
                   "holds model '6-5-relu-4-tanh-3', but this run trains '6-50-3'");
    CHECK(loaded.parameters == NULL && loaded.optimizer_state == NULL);

    size_t count = model_spec_parameter_count(&t.spec);
    float *oversized = calloc(3 * count, sizeof *oversized);
    t.state.optimizer_state = oversized;
    t.state.optimizer_state_count = 3 * count;
    t.state.global_step = 41;
    CHECK_OK(checkpoint_write(directory, &t.state, 3, NULL, written, sizeof written));
    char text[128];
    snprintf(text, sizeof text,
             "/optimizer/state holds %zu values, but no optimizer keeps more "
             "than %zu",
             3 * count, 2 * count);
    expect_message(checkpoint_read_for(written, &t.spec, &loaded), DDT_ERR_FORMAT, written, text);
    CHECK_OK(checkpoint_read(written, &loaded)); /* no expectation: read as it is */
    checkpoint_loaded_free(&loaded);
    free(oversized);
    test_state_free(&t);
}

int main(void) {
    test_round_trip();
    test_keep();
    test_find_latest();
    test_crash_during_write();
    test_directory_errors();
    test_read_for();
    test_h5py();
    return check_finish();
}
