/* fixtures.c - implementation of the tests' shared setup (fixtures.h). */
#include "fixtures.h"

#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "util/rng.h"

/* Ends the test: a fixture that cannot set up has nothing to check. */
static void *fixture_must(void *pointer, size_t bytes) {
    if (!pointer) {
        fprintf(stderr, "fixtures: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return pointer;
}

/* --- scratch arena ----------------------------------------------------------------------- */

typedef struct arena_entry {
    void *pointer;
    void (*release)(void *pointer);
} arena_entry;

struct fixture_arena {
    arena_entry *entries;
    size_t count, capacity;
};

fixture_arena *fixture_arena_new(void) {
    return fixture_must(calloc(1, sizeof(fixture_arena)), sizeof(fixture_arena));
}

void *fixture_adopt(fixture_arena *arena, void *pointer, void (*release)(void *pointer)) {
    if (arena->count == arena->capacity) {
        size_t capacity = arena->capacity ? 2 * arena->capacity : 16;
        arena->entries = fixture_must(realloc(arena->entries, capacity * sizeof *arena->entries),
                                      capacity * sizeof *arena->entries);
        arena->capacity = capacity;
    }
    arena->entries[arena->count++] = (arena_entry){pointer, release};
    return pointer;
}

void *fixture_alloc(fixture_arena *arena, size_t bytes) {
    void *pointer = fixture_must(calloc(1, bytes ? bytes : 1), bytes);
    return arena ? fixture_adopt(arena, pointer, free) : pointer;
}

void fixture_arena_free(fixture_arena *arena) {
    if (!arena) return;
    for (size_t i = arena->count; i > 0; i--)
        arena->entries[i - 1].release(arena->entries[i - 1].pointer);
    free(arena->entries);
    free(arena);
}

/* --- temporary paths --------------------------------------------------------------------- */

/* The strings fixture_path and fixture_text hand out, and whether the exit handler is set. */
static fixture_arena *strings;

static int remove_entry(const char *path, const struct stat *info, int flag, struct FTW *ftw) {
    (void)info;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void fixture_remove_temp(void) {
    nftw(check_temp_dir(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* At exit: the temporary files go when every check passed; a failure keeps them to look at. */
static void remove_temp_at_exit(void) {
    int passed, failed;
    check_counts(&passed, &failed);
    if (failed == 0)
        fixture_remove_temp();
    else
        fprintf(stderr, "fixtures: kept %s for the failed checks\n", check_temp_dir());
    fixture_arena_free(strings);
    strings = NULL;
}

static char *keep_string(size_t size) {
    if (!strings) {
        strings = fixture_arena_new();
        atexit(remove_temp_at_exit);
    }
    return fixture_alloc(strings, size);
}

const char *fixture_text(const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    int length = vsnprintf(NULL, 0, format, arguments);
    va_end(arguments);
    char *text = keep_string((size_t)(length > 0 ? length : 0) + 1);
    va_start(arguments, format);
    vsnprintf(text, (size_t)length + 1, format, arguments);
    va_end(arguments);
    return text;
}

const char *fixture_path(const char *name) {
    return fixture_text("%s/%s", check_temp_dir(), name);
}

double fixture_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* --- expected failures ------------------------------------------------------------------- */

int check_fails(ddt_status status, ddt_status code, const char *file, int line, const char *text,
                const char *const *parts, int part_count) {
    const char *message = ddt_error_message();
    const char *missing = NULL;
    for (int i = 0; i < part_count && !missing; i++)
        if (parts[i] && !strstr(message, parts[i])) missing = parts[i];
    int ok = status == code && !missing;
    check_record(ok, file, line, text);
    if (!ok) {
        fprintf(stderr, "  returned %s, expected %s; message: %s\n", ddt_status_name(status),
                ddt_status_name(code), message);
        if (missing) fprintf(stderr, "  the message lacks '%s'\n", missing);
    }
    return ok;
}

int check_open_fails(const char *spec, const dataset_open_params *params, ddt_status code,
                     const char *file, int line, const char *const *parts, int part_count) {
    dataset_open_params defaults = dataset_default_open_params();
    dataset *ds = NULL;
    ddt_status status = dataset_open_with_params(spec, params ? params : &defaults, &ds);
    char text[600];
    snprintf(text, sizeof text, "opening '%s' fails", spec);
    int ok = check_fails(status, code, file, line, text, parts, part_count);
    int none = ds == NULL;
    check_record(none, file, line, "a refused open leaves no dataset");
    dataset_close(ds);
    return ok && none;
}

/* --- random inputs ----------------------------------------------------------------------- */

static uint64_t random_counter;

float *fixture_random_floats(fixture_arena *arena, size_t count, float low, float high) {
    float *x = fixture_alloc(arena, count * sizeof *x);
    for (size_t i = 0; i < count; i++)
        x[i] = low + (high - low) * rng_uniform(rng_hash4(2024, 77, random_counter++, 0));
    return x;
}

float *fixture_copy_floats(fixture_arena *arena, const float *x, size_t count) {
    float *y = fixture_random_floats(arena, count, 0.0f, 0.0f);
    if (count) memcpy(y, x, count * sizeof *y);
    return y;
}

/* --- HDF5 writers ------------------------------------------------------------------------ */

ddt_status fixture_write_features(const char *path, const dataset_writer_params *params,
                                  const fixture_rows *values) {
    dataset_writer *w;
    DDT_CHECK(dataset_writer_open(path, params, &w));
    int d = params->features, k = params->target_width > 0 ? params->target_width : 1;
    int64_t done = 0, block = 1;
    ddt_status status = DDT_OK;
    while (status == DDT_OK && done < params->rows) {
        int n = (int)(params->rows - done < block ? params->rows - done : block);
        fixture_arena *scratch = fixture_arena_new();
        float *features = fixture_alloc(scratch, (size_t)n * (size_t)d * sizeof(float));
        int32_t *labels = fixture_alloc(scratch, (size_t)n * sizeof(int32_t));
        float *targets = fixture_alloc(scratch, (size_t)n * (size_t)k * sizeof(float));
        for (int i = 0; i < n; i++) {
            int64_t r = values->first_row + done + i;
            for (int j = 0; values->feature && j < d; j++)
                features[(size_t)i * (size_t)d + (size_t)j] = values->feature(r, j);
            if (params->class_labels && values->label)
                labels[i] = values->label(r, params->classes);
            for (int c = 0; !params->class_labels && values->target && c < k; c++)
                targets[(size_t)i * (size_t)k + (size_t)c] = values->target(r, c);
        }
        status = dataset_writer_append(w, n, features, params->class_labels ? labels : NULL,
                                       params->class_labels ? NULL : targets);
        fixture_arena_free(scratch);
        done += n;
        block = block * 3 + 1;
    }
    if (status != DDT_OK) {
        dataset_writer_abort(w);
        return status;
    }
    return dataset_writer_close(w);
}

ddt_status fixture_write_tokens(const char *path, const dataset_writer_params *params,
                                const int32_t *ids) {
    dataset_writer_params p = *params;
    p.kind = DATASET_KIND_TOKENS;
    dataset_writer *w;
    DDT_CHECK(dataset_writer_open(path, &p, &w));
    int64_t first = p.rows / 3;
    ddt_status status = dataset_writer_append_tokens(w, first, ids);
    if (status == DDT_OK) status = dataset_writer_append_tokens(w, p.rows - first, ids + first);
    if (status != DDT_OK) {
        dataset_writer_abort(w);
        return status;
    }
    return dataset_writer_close(w);
}

hid_t fixture_h5_create(const char *path) {
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(file >= 0);
    return file;
}

void fixture_h5_member(hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims,
                       const double *values) {
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t member = H5Dcreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    size_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= dims[i];
    double *zeros = values ? NULL : fixture_alloc(NULL, n * sizeof *zeros);
    if (n)
        H5Dwrite(member, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values ? values : zeros);
    free(zeros);
    H5Dclose(member);
    H5Sclose(space);
}

void fixture_h5_int_attribute(hid_t location, const char *name, int value) {
    hid_t scalar = H5Screate(H5S_SCALAR);
    hid_t attribute = H5Acreate2(location, name, H5T_STD_I32LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_INT, &value);
    H5Aclose(attribute);
    H5Sclose(scalar);
}

void fixture_h5_poke(const char *path, const char *name, hsize_t row, hsize_t column, hid_t type,
                     const void *value) {
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t member = H5Dopen2(file, name, H5P_DEFAULT);
    hid_t space = H5Dget_space(member);
    hsize_t start[2] = {row, column}, one[2] = {1, 1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, one, NULL);
    hid_t memory = H5Screate_simple(H5Sget_simple_extent_ndims(space), one, NULL);
    H5Dwrite(member, type, memory, space, H5P_DEFAULT, value);
    H5Sclose(memory);
    H5Sclose(space);
    H5Dclose(member);
    H5Fclose(file);
}

/* --- stream fixture ---------------------------------------------------------------------- */

ddt_status fixture_stream_plan(fixture_stream *f, const shard_params *p) {
    shard_plan_free(f->reference);
    shard_plan_free(f->plan);
    f->plan = f->reference = NULL;
    DDT_CHECK(shard_plan_init(p, &f->plan));
    return shard_plan_init(p, &f->reference);
}

ddt_status fixture_stream_open(fixture_stream *f, stream_params params) {
    params.plan = f->plan;
    return stream_open(&params, &f->stream);
}

ddt_status fixture_stream_expected_rows(const fixture_stream *f, int64_t global_step,
                                        int micro_index, int64_t *rows) {
    int64_t steps = shard_plan_steps_per_epoch(f->reference);
    return shard_plan_micro_batch_rows(f->reference, global_step / steps, global_step % steps,
                                       micro_index, rows);
}

void fixture_stream_close(fixture_stream *f) {
    stream_close(f->stream);
    shard_plan_free(f->reference);
    shard_plan_free(f->plan);
    *f = (fixture_stream){0};
}
