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
#include "io/dataset_writer.h"
#include "io/idx.h"

/* ---- outputs ----------------------------------------------------------------------------- */

ddt_status convert_outputs_add(convert_outputs *o, const char *path, const char *temp) {
    if (o->count == o->capacity) {
        int capacity = o->capacity ? 2 * o->capacity : 8;
        char **paths = realloc(o->paths, (size_t)capacity * sizeof *paths);
        if (paths) o->paths = paths;
        char **temps = paths ? realloc(o->temps, (size_t)capacity * sizeof *temps) : NULL;
        if (temps) o->temps = temps;
        if (!paths || !temps) {
            unlink(temp);
            return ddt_error(DDT_ERR_MEMORY, "out of host memory listing outputs");
        }
        o->capacity = capacity;
    }
    o->paths[o->count] = strdup(path);
    o->temps[o->count] = strdup(temp);
    if (!o->paths[o->count] || !o->temps[o->count]) {
        free(o->paths[o->count]);
        free(o->temps[o->count]);
        unlink(temp);
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
            unlink(o->temps[i]);
    }
    outputs_free(o);
    return status;
}

void convert_outputs_discard(convert_outputs *o) {
    for (int i = 0; i < o->count; i++)
        unlink(o->temps[i]);
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
} idx_output;

static ddt_status convert_idx_shard(idx_file *images, const uint8_t *labels, int64_t first,
                                    int64_t count, const idx_output *o, const char *path,
                                    const options *opts, convert_outputs *outputs) {
    dataset_writer_params params = {
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
    dataset_writer *w;
    DDT_CHECK(dataset_writer_open(path, &params, &w));
    int64_t features = o->features, block = dataset_writer_block_rows(features);
    uint8_t *pixels = malloc((size_t)(block * features));
    float *values = malloc((size_t)(block * features) * sizeof(float));
    int32_t *ids = malloc((size_t)block * sizeof(int32_t));
    ddt_status status = DDT_OK;
    if (!pixels || !values || !ids)
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory converting to %s", path);
    for (int64_t done = 0; status == DDT_OK && done < count; done += block) {
        int64_t rows = count - done < block ? count - done : block;
        status = idx_read_items(images, rows, pixels);
        if (status != DDT_OK) break;
        for (int64_t i = 0; i < rows * features; i++)
            values[i] = (float)pixels[i] / 255.0f;
        for (int64_t i = 0; i < rows; i++)
            ids[i] = labels[first + done + i];
        status = dataset_writer_append(w, (int)rows, values, ids, NULL);
    }
    free(pixels);
    free(values);
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
    idx_output o = {.features = (int64_t)idx_item_size(images), .image_shaped = opts->image_shaped};
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
    /* Labels are one byte a row: read them whole to learn the number of classes. */
    label_values = malloc((size_t)rows);
    if (!label_values) {
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory for %" PRId64 " labels", rows);
        goto done;
    }
    DDT_CHECK_GOTO(idx_read_items(labels, rows, label_values), status, done);
    o.classes = 2;
    for (int64_t i = 0; i < rows; i++)
        if (label_values[i] + 1 > o.classes) o.classes = label_values[i] + 1;
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
        DDT_CHECK_GOTO(
            convert_idx_shard(images, label_values, first, end - first, &o, path, opts, &outputs),
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
