/* convert.c - `ddtrain convert`: picks the form (idx, images, text, tokens), runs it on rank
 * 0 and agrees the result; the outputs' shared rules (convert.h) and the idx form. */
#include "driver/convert.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver/commands.h"
#include "engine/model_spec.h"
#include "io/dataset_writer.h"
#include "io/idx.h"
#include "util/units.h"

/* ---- outputs ----------------------------------------------------------------------------- */

ddt_status convert_outputs_add(convert_outputs *o, const char *path, const char *temp) {
    if (o->count == o->capacity) {
        int capacity = o->capacity ? 2 * o->capacity : 8;
        char **paths = realloc(o->paths, (size_t)capacity * sizeof *paths);
        if (paths) o->paths = paths;
        char **temps = paths ? realloc(o->temps, (size_t)capacity * sizeof *temps) : NULL;
        if (temps) o->temps = temps;
        if (!paths || !temps) {
            file_temp_remove(temp);
            return ddt_error(DDT_ERR_MEMORY, "out of host memory listing outputs");
        }
        o->capacity = capacity;
    }
    o->paths[o->count] = strdup(path);
    o->temps[o->count] = strdup(temp);
    if (!o->paths[o->count] || !o->temps[o->count]) {
        free(o->paths[o->count]);
        free(o->temps[o->count]);
        file_temp_remove(temp);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory listing outputs");
    }
    o->count++;
    return DDT_OK;
}

static void outputs_free(convert_outputs *o) {
    for (int i = 0; i < o->count; i++) {
        free(o->paths[i]);
        free(o->temps[i]);
    }
    free(o->paths);
    free(o->temps);
    *o = (convert_outputs){0};
}

ddt_status convert_outputs_publish(convert_outputs *o) {
    ddt_status status = DDT_OK;
    for (int i = 0; i < o->count; i++) {
        if (status == DDT_OK)
            status = file_publish(o->temps[i], o->paths[i]); /* removes the temp on failure */
        else
            file_temp_remove(o->temps[i]);
    }
    outputs_free(o);
    return status;
}

void convert_outputs_discard(convert_outputs *o) {
    for (int i = 0; i < o->count; i++)
        file_temp_remove(o->temps[i]);
    outputs_free(o);
}

void convert_part_path(const char *output, const char *suffix, char *out, size_t size) {
    const char *slash = strrchr(output, '/');
    const char *base = slash ? slash + 1 : output;
    const char *dot = strrchr(base, '.');
    /* A leading dot names a hidden file, not an extension. */
    if (!dot || dot == base) dot = base + strlen(base);
    snprintf(out, size, "%.*s%s%s", (int)(dot - output), output, suffix, dot);
}

void convert_train_shard_path(const char *output, bool validation, int shard, int shards, char *out,
                              size_t size) {
    char train[4096];
    if (validation)
        convert_part_path(output, "-train", train, sizeof train);
    else
        snprintf(train, sizeof train, "%s", output);
    dataset_shard_path(train, shard, shards, out, size);
}

ddt_status convert_check_outputs(const options *opts, bool validation, const file_role *inputs,
                                 int input_count) {
    for (int64_t k = 0; k < opts->shards; k++) {
        char path[4096];
        convert_train_shard_path(opts->output, validation, (int)k, (int)opts->shards, path,
                                 sizeof path);
        const file_role output = {"-o", path, false};
        DDT_CHECK(files_check_outputs(&output, 1, inputs, input_count));
    }
    if (validation) {
        char path[4096];
        convert_part_path(opts->output, "-val", path, sizeof path);
        const file_role output = {"-o", path, false};
        DDT_CHECK(files_check_outputs(&output, 1, inputs, input_count));
    }
    return DDT_OK;
}

ddt_status convert_prepare_output(const options *opts, bool writes_here) {
    struct stat info;
    if (file_output_is_stream(opts->output) && stat(opts->output, &info) == 0 &&
        (opts->shards > 1 || opts->val_fraction > 0)) {
        char first[4096];
        convert_train_shard_path(opts->output, opts->val_fraction > 0, 0, (int)opts->shards, first,
                                 sizeof first);
        return ddt_error(DDT_ERR_USAGE,
                         "-o %s is %s: it takes one file, written through; %s writes several "
                         "named after it (%s, ...) beside it; give a file name",
                         opts->output, file_kind_name(info.st_mode),
                         opts->shards > 1 ? "--shards" : "--val-fraction", first);
    }
    return writes_here ? file_output_prepare("-o", opts->output, FILE_OUTPUT_WHOLE) : DDT_OK;
}

ddt_status convert_validation_rows(const options *opts, int64_t rows, const char *unit,
                                   int64_t *out) {
    int64_t held = (int64_t)llround(opts->val_fraction * (double)rows);
    if (opts->val_fraction > 0 && held == 0) held = 1;
    if (rows - held < opts->shards)
        return ddt_error(
            DDT_ERR_USAGE,
            "%" PRId64 " %s%s leave %" PRId64 " for training, fewer than --shards %" PRId64, rows,
            unit, held ? " less the validation part" : "", rows - held, opts->shards);
    *out = held;
    return DDT_OK;
}

/* ---- memory ------------------------------------------------------------------------------ */

void convert_memory_add(convert_memory *m, const char *what, uint64_t bytes) {
    m->bytes = bytes > UINT64_MAX - m->bytes ? UINT64_MAX : m->bytes + bytes;
    char size[32];
    units_format_bytes(bytes, size, sizeof size);
    size_t used = strlen(m->parts);
    if (used < sizeof m->parts)
        snprintf(m->parts + used, sizeof m->parts - used, "%s%s %s", used ? ", " : "", what, size);
}

ddt_status convert_memory_check(const options *opts, const char *command, const convert_memory *m,
                                const char *advice) {
    if (opts->host_staging_limit <= 0 || m->bytes <= (uint64_t)opts->host_staging_limit)
        return DDT_OK;
    char need[64], limit[64];
    units_format_bytes(m->bytes, need, sizeof need);
    units_format_bytes((uint64_t)opts->host_staging_limit, limit, sizeof limit);
    if (strcmp(need, limit) == 0) { /* "3.0 MiB, more than 3.0 MiB": say the bytes */
        snprintf(need, sizeof need, "%llu bytes", (unsigned long long)m->bytes);
        snprintf(limit, sizeof limit, "%llu bytes", (unsigned long long)opts->host_staging_limit);
    }
    return ddt_error(DDT_ERR_USAGE,
                     "%s needs %s of host memory at once (%s), more than --host-staging-limit %s: "
                     "raise the limit (0: none)%s%s; nothing was written",
                     command, need, m->parts, limit, advice ? " or " : "", advice ? advice : "");
}

/* ---- idx --------------------------------------------------------------------------------- */

/* Fashion-MNIST's classes, in label order (github.com/zalandoresearch/fashion-mnist). */
static const char *const fashion_mnist_names[10] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

/* What every idx shard shares. */
typedef struct idx_output {
    int64_t features;
    int feature_dims[3]; /* 1 x H x W with --image-shaped, else unused */
    bool image_shaped;
    int classes;
    const char *const *class_names;
    const char *source;
    const char *labels_path;
} idx_output;

/* The writer's parameters for `count` rows of `o`. */
static dataset_writer_params idx_writer_params(const idx_output *o, int64_t count,
                                               const options *opts) {
    return (dataset_writer_params){
        .rows = count,
        .features = (int)o->features,
        .feature_rank = o->image_shaped ? 3 : 1,
        .feature_dims = {o->feature_dims[0], o->feature_dims[1], o->feature_dims[2]},
        .class_labels = true,
        .target_width = 1,
        .classes = o->classes,
        .class_names = o->class_names,
        .compression = (int)opts->compression,
        .source = o->source,
    };
}

/* The zlib streams of the two files: 128 KiB in, 256 KiB out and the 32 KiB window each. */
#define IDX_STREAM_BYTES ((uint64_t)2 * (416 << 10))

/* Writes the next `count` rows of `images` and `labels` to `path` (unpublished). */
static ddt_status convert_idx_shard(idx_file *images, idx_file *labels, int64_t count,
                                    const idx_output *o, const char *path, const options *opts,
                                    convert_outputs *outputs) {
    dataset_writer_params params = idx_writer_params(o, count, opts);
    dataset_writer *w;
    DDT_CHECK(dataset_writer_open(path, &params, &w));
    int64_t features = o->features, block = dataset_writer_block_rows(features);
    uint8_t *pixels = malloc((size_t)(block * features));
    float *values = malloc((size_t)(block * features) * sizeof(float));
    uint8_t *label_bytes = malloc((size_t)block);
    int32_t *ids = malloc((size_t)block * sizeof(int32_t));
    ddt_status status = DDT_OK;
    if (!pixels || !values || !label_bytes || !ids)
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory converting to %s", path);
    for (int64_t done = 0; status == DDT_OK && done < count; done += block) {
        int64_t rows = count - done < block ? count - done : block;
        status = idx_read_items(images, rows, pixels);
        if (status == DDT_OK) status = idx_read_items(labels, rows, label_bytes);
        if (status != DDT_OK) break;
        for (int64_t i = 0; i < rows * features; i++)
            values[i] = (float)pixels[i] / 255.0f;
        for (int64_t i = 0; status == DDT_OK && i < rows; i++) {
            ids[i] = label_bytes[i];
            if (ids[i] >= o->classes) /* the first pass saw every label below it */
                status = ddt_error(DDT_ERR_IO,
                                   "%s: label %d beyond the %d classes seen before (changed "
                                   "while it was read)",
                                   o->labels_path, ids[i], o->classes);
        }
        if (status == DDT_OK) status = dataset_writer_append(w, (int)rows, values, ids, NULL);
    }
    free(pixels);
    free(values);
    free(label_bytes);
    free(ids);
    if (status != DDT_OK) {
        dataset_writer_abort(w);
        return status;
    }
    char temp[4200];
    DDT_CHECK(dataset_writer_close_unpublished(w, temp, sizeof temp));
    return convert_outputs_add(outputs, path, temp);
}

/* --class-names A,B,...: split in place into `names` (at most `capacity`). */
static ddt_status parse_class_names(char *text, const char **names, int capacity, int *count) {
    *count = 0;
    for (char *item = text; item;) {
        char *comma = strchr(item, ',');
        if (comma) *comma = '\0';
        if (!*item) return ddt_error(DDT_ERR_USAGE, "--class-names: an empty name");
        if (*count == capacity)
            return ddt_error(DDT_ERR_USAGE, "--class-names: more than %d names", capacity);
        names[(*count)++] = item;
        item = comma ? comma + 1 : NULL;
    }
    return DDT_OK;
}

static ddt_status convert_idx(const options *opts) {
    if (opts->positional_count != 3)
        return ddt_error(DDT_ERR_USAGE,
                         "usage: ddtrain convert idx IMAGES LABELS -o OUT.h5 [--shards K] "
                         "[--image-shaped] [--class-names A,B,...]");
    if (opts->val_fraction > 0)
        return ddt_error(DDT_ERR_USAGE, "convert idx: --val-fraction is for images, text and "
                                        "tokens (IDX sets come split: convert the test files)");
    const char *images_path = opts->positional[1], *labels_path = opts->positional[2];
    idx_file *images = NULL, *labels = NULL;
    uint8_t *label_values = NULL;
    char *names_text = NULL;
    const char *names[256];
    convert_outputs outputs = {0};
    ddt_status status;
    DDT_CHECK_GOTO(idx_open(images_path, &images), status, done);
    DDT_CHECK_GOTO(idx_open(labels_path, &labels), status, done);
    int64_t rows = idx_item_count(images);
    if (idx_dimension_count(labels) != 1 || idx_item_size(labels) != 1) {
        status =
            ddt_error(DDT_ERR_FORMAT, "%s: a labels file must be one-dimensional", labels_path);
        goto done;
    }
    if (idx_item_count(labels) != rows) {
        status = ddt_error(DDT_ERR_FORMAT, "%s has %" PRId64 " items but %s has %" PRId64,
                           images_path, rows, labels_path, idx_item_count(labels));
        goto done;
    }
    if (opts->shards > rows) {
        status = ddt_error(DDT_ERR_USAGE, "--shards %" PRId64 " is more than the %" PRId64 " rows",
                           opts->shards, rows);
        goto done;
    }
    idx_output o = {.features = (int64_t)idx_item_size(images),
                    .image_shaped = opts->image_shaped,
                    .labels_path = labels_path};
    if (o.features > MODEL_MAX_WIDTH || o.features < 1) {
        status = ddt_error(DDT_ERR_USAGE,
                           "%s: items of %" PRId64 " values; a model takes 1 to %d values per "
                           "sample, so no model could train on them",
                           images_path, o.features, MODEL_MAX_WIDTH);
        goto done;
    }
    if (o.image_shaped) {
        if (idx_dimension_count(images) != 3) {
            status = ddt_error(DDT_ERR_USAGE,
                               "%s: --image-shaped needs N x H x W images, this file has %d "
                               "dimensions",
                               images_path, idx_dimension_count(images));
            goto done;
        }
        o.feature_dims[0] = 1;
        o.feature_dims[1] = (int)idx_dimension(images, 1);
        o.feature_dims[2] = (int)idx_dimension(images, 2);
    }
    /* What is held at once: a block of rows (bytes, floats, labels), the writer's chunks and
     * the files' zlib streams; planned before the labels are read. */
    int64_t block = dataset_writer_block_rows(o.features);
    dataset_writer_params largest =
        idx_writer_params(&o, (rows + opts->shards - 1) / opts->shards, opts);
    convert_memory memory = {0};
    char what[96];
    snprintf(what, sizeof what, "a block of %" PRId64 " row%s of %" PRId64 " values", block,
             block == 1 ? "" : "s", o.features);
    convert_memory_add(&memory, what, (uint64_t)block * (uint64_t)(5 * o.features + 5));
    convert_memory_add(&memory, "the writer's chunks", dataset_writer_memory_bytes(&largest));
    convert_memory_add(&memory, "the files' zlib streams", IDX_STREAM_BYTES);
    DDT_CHECK_GOTO(convert_memory_check(opts, "convert idx", &memory, NULL), status, done);
    /* Labels are one byte a row: a first pass over them, a block at a time, learns the number
     * of classes; the file is then opened again for the rows. */
    label_values = malloc((size_t)block);
    if (!label_values) {
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory for the labels");
        goto done;
    }
    o.classes = 2;
    for (int64_t done_rows = 0; done_rows < rows; done_rows += block) {
        int64_t n = rows - done_rows < block ? rows - done_rows : block;
        DDT_CHECK_GOTO(idx_read_items(labels, n, label_values), status, done);
        for (int64_t i = 0; i < n; i++)
            if (label_values[i] + 1 > o.classes) o.classes = label_values[i] + 1;
    }
    idx_close(labels);
    labels = NULL;
    DDT_CHECK_GOTO(idx_open(labels_path, &labels), status, done);
    if (idx_item_count(labels) != rows || idx_item_size(labels) != 1) {
        status = ddt_error(DDT_ERR_IO, "%s: changed while it was read", labels_path);
        goto done;
    }
    if (opts->class_names) {
        int count = 0;
        names_text = strdup(opts->class_names);
        if (!names_text) {
            status = ddt_error(DDT_ERR_MEMORY, "out of host memory");
            goto done;
        }
        DDT_CHECK_GOTO(parse_class_names(names_text, names, 256, &count), status, done);
        if (count < o.classes) {
            status = ddt_error(DDT_ERR_USAGE,
                               "--class-names gives %d names, but the labels need %d classes",
                               count, o.classes);
            goto done;
        }
        o.classes = count;
        o.class_names = names;
    } else if (strcasestr(images_path, "fashion") && o.classes == 10) {
        o.class_names = fashion_mnist_names;
    }
    const file_role inputs[] = {{"IMAGES", images_path, false}, {"LABELS", labels_path, false}};
    DDT_CHECK_GOTO(convert_check_outputs(opts, false, inputs, 2), status, done);
    char source[1024];
    snprintf(source, sizeof source, "ddtrain convert idx %s %s", images_path, labels_path);
    o.source = source;
    for (int64_t k = 0; k < opts->shards; k++) {
        int64_t first = rows * k / opts->shards, end = rows * (k + 1) / opts->shards;
        char path[4096];
        dataset_shard_path(opts->output, (int)k, (int)opts->shards, path, sizeof path);
        DDT_CHECK_GOTO(convert_idx_shard(images, labels, end - first, &o, path, opts, &outputs),
                       status, done);
    }
    DDT_CHECK_GOTO(convert_outputs_publish(&outputs), status, done);
    char shape[64];
    if (o.image_shaped)
        snprintf(shape, sizeof shape, "1x%dx%d images", o.feature_dims[1], o.feature_dims[2]);
    else
        snprintf(shape, sizeof shape, "%" PRId64 " features", o.features);
    for (int64_t k = 0; k < opts->shards; k++) {
        int64_t first = rows * k / opts->shards, end = rows * (k + 1) / opts->shards;
        char path[4096];
        dataset_shard_path(opts->output, (int)k, (int)opts->shards, path, sizeof path);
        printf("wrote %s: %" PRId64 " rows x %s, %d classes%s\n", path, end - first, shape,
               o.classes, o.class_names == fashion_mnist_names ? " (Fashion-MNIST's names)" : "");
    }
    status = DDT_OK;
done:
    convert_outputs_discard(&outputs);
    free(names_text);
    free(label_values);
    idx_close(labels);
    idx_close(images);
    return status;
}

/* ---- the command ------------------------------------------------------------------------- */

static ddt_status convert_local(const options *opts) {
    const char *form = opts->positional_count ? opts->positional[0] : "";
    if (!opts->output && opts->positional_count)
        return ddt_error(DDT_ERR_USAGE, "ddtrain convert %s needs -o OUT.h5", form);
    ddt_status status;
    bool known = strcmp(form, "idx") == 0 || strcmp(form, "images") == 0 ||
                 strcmp(form, "text") == 0 || strcmp(form, "tokens") == 0;
    if (known) DDT_CHECK(convert_prepare_output(opts, true));
    if (strcmp(form, "idx") == 0)
        status = convert_idx(opts);
    else if (strcmp(form, "images") == 0)
        status = convert_images(opts);
    else if (strcmp(form, "text") == 0)
        status = convert_text(opts);
    else if (strcmp(form, "tokens") == 0)
        status = convert_tokens(opts);
    else
        status = ddt_error(DDT_ERR_USAGE,
                           "ddtrain convert: expected idx, images, text or tokens, got '%s' "
                           "(see ddtrain convert --help)",
                           form);
    fflush(stdout);
    return status;
}

ddt_status convert_command(job *j, const options *opts) {
    return comm_agree(j->control, j->rank == 0 ? convert_local(opts) : DDT_OK, "convert");
}
