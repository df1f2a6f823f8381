/* convert_images.c - `ddtrain convert images DIR`: an image folder in torchvision's
 * ImageFolder layout to an image dataset (N x C x H x W float32, int32 labels, num_classes,
 * class_names), shuffled, split into training shards and a validation file.
 *
 * Two passes over the images. The first decodes every one, to find the unreadable and
 * corrupt ones (all of them, listed by path, before anything is written) and to learn the
 * output's channels (1 only if every image is grey) and size (--size, else the first
 * image's). The second decodes them again in the shuffled order and writes, a block of rows
 * at a time, so memory holds one block and one decoded image, never the folder. Files are
 * published together at the end (convert.h).
 *
 * The layout, as torchvision's ImageFolder: the classes are DIR's subfolders in sorted
 * (byte) order, label i for the i-th; a class's images are the files under its folder,
 * subfolders included (symbolic links followed), whose names end in .png, .jpg or .jpeg in
 * any case, ordered as Python's sorted(os.walk(...)) then sorted file names visit them.
 * Unlike torchvision, names starting with '.' are skipped (no ".ipynb_checkpoints" class).
 * A name like an image's that is not a regular file once links are followed -- a FIFO, a
 * device (a link to /dev/zero), a dangling link, a link loop -- is a bad image like a
 * corrupt one (listed, refused unless --skip-bad), found without opening it.
 * The order does not matter for the output beyond being fixed: rows are shuffled with a
 * keyed permutation of (--seed).
 */
#include "driver/convert.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "engine/model_spec.h"
#include "io/dataset_writer.h"
#include "io/image.h"
#include "util/rng.h"
#include "util/units.h"

/* Deeper folders than this are refused (a symbolic-link loop). */
#define IMAGE_FOLDER_MAX_DEPTH 32

typedef struct image_entry {
    char *directory; /* the folder holding it (for the order) */
    char *path;
    int label;
    bool bad; /* failed to decode in the first pass (with --skip-bad: left out) */
} image_entry;

typedef struct image_folder {
    char **classes;
    int class_count;
    image_entry *images;
    int64_t count, capacity;
    int64_t ignored; /* files without an image extension */
} image_folder;

static void image_folder_free(image_folder *f) {
    for (int c = 0; c < f->class_count; c++)
        free(f->classes[c]);
    free(f->classes);
    for (int64_t i = 0; i < f->count; i++) {
        free(f->images[i].directory);
        free(f->images[i].path);
    }
    free(f->images);
    *f = (image_folder){0};
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Class by class; within a class, folder by folder, then by name. */
static int compare_entries(const void *a, const void *b) {
    const image_entry *x = a, *y = b;
    if (x->label != y->label) return x->label < y->label ? -1 : 1;
    int by_directory = strcmp(x->directory, y->directory);
    return by_directory ? by_directory : strcmp(x->path, y->path);
}

static bool has_image_extension(const char *name) {
    static const char *const extensions[] = {".png", ".jpg", ".jpeg"};
    size_t length = strlen(name);
    for (size_t i = 0; i < sizeof extensions / sizeof *extensions; i++) {
        size_t e = strlen(extensions[i]);
        if (length > e && strcasecmp(name + length - e, extensions[i]) == 0) return true;
    }
    return false;
}

/* The names in `directory` (not . and .., not hidden), sorted; the caller frees them. */
static ddt_status list_directory(const char *directory, char ***out, int *count) {
    *out = NULL;
    *count = 0;
    DIR *d = opendir(directory);
    if (!d)
        return ddt_error(DDT_ERR_IO, "%s: cannot read the folder: %s", directory, strerror(errno));
    char **names = NULL;
    int capacity = 0;
    ddt_status status = DDT_OK;
    for (struct dirent *e; status == DDT_OK && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (*count == capacity) {
            capacity = capacity ? 2 * capacity : 64;
            char **more = realloc(names, (size_t)capacity * sizeof *more);
            if (!more) {
                status = ddt_error(DDT_ERR_MEMORY, "out of host memory listing %s", directory);
                break;
            }
            names = more;
        }
        names[*count] = strdup(e->d_name);
        if (!names[*count])
            status = ddt_error(DDT_ERR_MEMORY, "out of host memory listing %s", directory);
        else
            (*count)++;
    }
    closedir(d);
    if (status != DDT_OK) {
        for (int i = 0; i < *count; i++)
            free(names[i]);
        free(names);
        *count = 0;
        return status;
    }
    if (*count) qsort(names, (size_t)*count, sizeof *names, compare_strings);
    *out = names;
    return DDT_OK;
}

static void free_names(char **names, int count) {
    for (int i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

static ddt_status add_image(image_folder *f, const char *directory, const char *path, int label) {
    if (f->count == f->capacity) {
        int64_t capacity = f->capacity ? 2 * f->capacity : 256;
        image_entry *more = realloc(f->images, (size_t)capacity * sizeof *more);
        if (!more) return ddt_error(DDT_ERR_MEMORY, "out of host memory listing images");
        f->images = more;
        f->capacity = capacity;
    }
    image_entry *e = &f->images[f->count];
    *e = (image_entry){.directory = strdup(directory), .path = strdup(path), .label = label};
    if (!e->directory || !e->path) {
        free(e->directory);
        free(e->path);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory listing images");
    }
    f->count++;
    return DDT_OK;
}

/* Adds the images under `directory` (recursively) with `label`. */
static ddt_status scan_class(image_folder *f, const char *directory, int label, int depth) {
    if (depth > IMAGE_FOLDER_MAX_DEPTH)
        return ddt_error(DDT_ERR_USAGE, "%s: folders nested more than %d deep (a link loop?)",
                         directory, IMAGE_FOLDER_MAX_DEPTH);
    char **names;
    int count;
    DDT_CHECK(list_directory(directory, &names, &count));
    ddt_status status = DDT_OK;
    for (int i = 0; i < count && status == DDT_OK; i++) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", directory, names[i]) >= sizeof path) {
            status = ddt_error(DDT_ERR_USAGE, "%s/%s: path too long", directory, names[i]);
            break;
        }
        /* Whatever is named like an image and is not a folder is listed: a dangling link, a
         * link loop, a FIFO or a device then fails the first pass as a bad image, named (as
         * torchvision's loader fails on it), rather than being passed over in silence. */
        struct stat info;
        bool folder = stat(path, &info) == 0 && S_ISDIR(info.st_mode);
        if (folder)
            status = scan_class(f, path, label, depth + 1);
        else if (has_image_extension(names[i]))
            status = add_image(f, directory, path, label);
        else
            f->ignored++;
    }
    free_names(names, count);
    return status;
}

static ddt_status scan_folder(const char *root, image_folder *f) {
    struct stat info;
    if (stat(root, &info) != 0)
        return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", root, strerror(errno));
    if (!S_ISDIR(info.st_mode))
        return ddt_error(DDT_ERR_USAGE,
                         "%s: not a folder (convert images reads a folder with one "
                         "subfolder per class)",
                         root);
    char **names;
    int count;
    DDT_CHECK(list_directory(root, &names, &count));
    /* The classes: subfolders only; files at the top are ignored, as by ImageFolder. */
    f->classes = calloc((size_t)(count ? count : 1), sizeof *f->classes);
    if (!f->classes) {
        free_names(names, count);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    }
    ddt_status status = DDT_OK;
    for (int i = 0; i < count; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", root, names[i]);
        if (stat(path, &info) == 0 && S_ISDIR(info.st_mode)) {
            f->classes[f->class_count++] = names[i];
            names[i] = NULL;
        } else {
            f->ignored++;
        }
    }
    free_names(names, count);
    if (f->class_count == 0)
        return ddt_error(DDT_ERR_USAGE,
                         "%s: no class subfolders (convert images reads a folder "
                         "with one subfolder per class, as torchvision's "
                         "ImageFolder)",
                         root);
    for (int c = 0; c < f->class_count && status == DDT_OK; c++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", root, f->classes[c]);
        int64_t before = f->count;
        status = scan_class(f, path, c, 1);
        if (status == DDT_OK && f->count == before)
            status = ddt_error(DDT_ERR_USAGE, "%s: class '%s' has no .png, .jpg or .jpeg files",
                               path, f->classes[c]);
    }
    DDT_CHECK(status);
    /* ImageFolder's order: by class, then as sorted(os.walk(class folder)) lists them. */
    qsort(f->images, (size_t)f->count, sizeof *f->images, compare_entries);
    return DDT_OK;
}

static ddt_status parse_size(const char *text, int *height, int *width) {
    char *end;
    long h = strtol(text, &end, 10);
    long w = (*end == 'x' || *end == 'X') ? strtol(end + 1, &end, 10) : 0;
    if (*end || h < 1 || w < 1 || h > 65535 || w > 65535)
        return ddt_error(DDT_ERR_USAGE, "--size: '%s' is not HxW (e.g. 32x32; 1 to 65535 each)",
                         text);
    if ((int64_t)h * w > MODEL_MAX_WIDTH)
        return ddt_error(DDT_ERR_USAGE,
                         "--size %s: %ld values per channel, and a model takes at most %d values "
                         "per sample, so no model could train on these images",
                         text, h * w, MODEL_MAX_WIDTH);
    *height = (int)h;
    *width = (int)w;
    return DDT_OK;
}

/* What the output looks like, and where its rows come from. */
typedef struct image_plan {
    int channels, height, width;
    int64_t good_count;
    int64_t *good;         /* indices into the folder's images of the usable ones */
    rng_permutation order; /* output position -> index into good */
    const char *const *class_names;
    int classes;
    char source[4400];
    uint64_t image_budget;   /* most bytes one image may take decoded (0: no bound) */
    uint64_t largest_decode; /* what the largest image took in the first pass */
    int64_t largest_image;   /* which one (index into the folder's images) */
} image_plan;

/* What `limit` leaves for one decoded image beside `held` (never 0, which means no bound). */
static uint64_t image_budget(uint64_t limit, uint64_t held) {
    return limit > held ? limit - held : 1;
}

/* What writing holds at once for `channels` x the plan's size: a block of rows and labels and
 * the writer's chunks, for parts of at most `rows` rows. */
static void plan_writing(const image_plan *p, int channels, int64_t rows, const options *opts,
                         convert_memory *memory) {
    int64_t features = (int64_t)channels * p->height * p->width;
    int64_t block = dataset_writer_block_rows(features);
    if (block > rows) block = rows;
    char what[96];
    snprintf(what, sizeof what, "a block of %" PRId64 " row%s of %dx%dx%d floats", block,
             block == 1 ? "" : "s", channels, p->height, p->width);
    convert_memory_add(memory, what, (uint64_t)block * (uint64_t)(features + 1) * 4);
    dataset_writer_params params = {.rows = rows,
                                    .features = (int)features,
                                    .class_labels = true,
                                    .compression = (int)opts->compression};
    convert_memory_add(memory, "the writer's chunks", dataset_writer_memory_bytes(&params));
}

/* Writes output positions [first, first + count) to `path` (unpublished). */
static ddt_status write_part(const image_folder *f, const image_plan *p, int64_t first,
                             int64_t count, const char *path, const options *opts,
                             convert_outputs *outputs) {
    int features = p->channels * p->height * p->width;
    dataset_writer_params params = {
        .rows = count,
        .features = features,
        .feature_rank = 3,
        .feature_dims = {p->channels, p->height, p->width},
        .class_labels = true,
        .target_width = 1,
        .classes = p->classes,
        .class_names = p->class_names,
        .compression = (int)opts->compression,
        .source = p->source,
    };
    dataset_writer *w;
    DDT_CHECK(dataset_writer_open(path, &params, &w));
    int64_t block = dataset_writer_block_rows(features);
    if (block > count) block = count;
    float *rows = malloc((size_t)block * (size_t)features * sizeof *rows);
    int32_t *labels = malloc((size_t)block * sizeof *labels);
    ddt_status status = DDT_OK;
    if (!rows || !labels) status = ddt_error(DDT_ERR_MEMORY, "out of host memory writing %s", path);
    for (int64_t done = 0; status == DDT_OK && done < count; done += block) {
        int64_t n = count - done < block ? count - done : block;
        for (int64_t i = 0; status == DDT_OK && i < n; i++) {
            uint64_t position = (uint64_t)(first + done + i);
            const image_entry *e = &f->images[p->good[rng_permutation_apply(&p->order, position)]];
            image img;
            status = image_read_bounded(e->path, p->image_budget, &img);
            if (status != DDT_OK) {
                status =
                    ddt_error(status, "%s (it changed after it was checked)", ddt_error_message());
                break;
            }
            image_to_chw(&img, p->channels, p->height, p->width,
                         rows + (size_t)i * (size_t)features);
            image_free(&img);
            labels[i] = e->label;
        }
        if (status == DDT_OK) status = dataset_writer_append(w, (int)n, rows, labels, NULL);
    }
    free(rows);
    free(labels);
    if (status != DDT_OK) {
        dataset_writer_abort(w);
        return status;
    }
    char temp[4200];
    DDT_CHECK(dataset_writer_close_unpublished(w, temp, sizeof temp));
    return convert_outputs_add(outputs, path, temp);
}

/* The first pass: decodes every image; lists the bad ones; fills the plan's channels and
 * (unless --size) size, and the list of usable images. */
static ddt_status check_images(image_folder *f, const options *opts, image_plan *p) {
    int64_t bad = 0, colour = 0;
    bool size_known = opts->size != NULL;
    for (int64_t i = 0; i < f->count; i++) {
        image img;
        ddt_status status = image_read_bounded(f->images[i].path, p->image_budget, &img);
        if (status == DDT_ERR_MEMORY) return status;
        if (status != DDT_OK) {
            char limit[32];
            units_format_bytes((uint64_t)opts->host_staging_limit, limit, sizeof limit);
            /* image_read_bounded's only usage error: more than the plan leaves for an image */
            if (status == DDT_ERR_USAGE && strstr(ddt_error_message(), "decoded, more than"))
                fprintf(stderr, "ddtrain: bad image: %s for one image by --host-staging-limit %s\n",
                        ddt_error_message(), limit);
            else
                fprintf(stderr, "ddtrain: bad image: %s\n", ddt_error_message());
            ddt_error_clear();
            f->images[i].bad = true;
            bad++;
            continue;
        }
        if (img.channels == 3) colour++;
        if (img.decode_bytes > p->largest_decode) {
            p->largest_decode = img.decode_bytes;
            p->largest_image = i;
        }
        if (!size_known) {
            p->height = img.height;
            p->width = img.width;
            size_known = true;
        }
        image_free(&img);
    }
    fflush(stderr);
    if (bad && !opts->skip_bad)
        return ddt_error(DDT_ERR_DATA,
                         "%" PRId64 " of %" PRId64 " images are unreadable or corrupt (listed "
                         "above); nothing was written: remove or fix them, or pass --skip-bad to "
                         "leave them out",
                         bad, f->count);
    p->good_count = f->count - bad;
    if (p->good_count == 0)
        return ddt_error(DDT_ERR_DATA, "none of the %" PRId64 " images could be read", f->count);
    p->good = malloc((size_t)p->good_count * sizeof *p->good);
    if (!p->good) return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    int64_t k = 0;
    int64_t *per_class = calloc((size_t)f->class_count, sizeof *per_class);
    if (!per_class) return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    for (int64_t i = 0; i < f->count; i++)
        if (!f->images[i].bad) {
            p->good[k++] = i;
            per_class[f->images[i].label]++;
        }
    for (int c = 0; c < f->class_count; c++)
        if (per_class[c] == 0)
            fprintf(stderr, "ddtrain: warning: class %d '%s' has no readable images left\n", c,
                    f->classes[c]);
    free(per_class);
    if (bad)
        printf("left out %" PRId64 " unreadable or corrupt image%s (--skip-bad)\n", bad,
               bad == 1 ? "" : "s");
    p->channels = colour ? 3 : 1;
    return DDT_OK;
}

ddt_status convert_images(const options *opts) {
    if (opts->positional_count != 2)
        return ddt_error(DDT_ERR_USAGE, "usage: ddtrain convert images DIR -o OUT.h5 [--size HxW] "
                                        "[--shards K] [--val-fraction F] [--skip-bad] [--seed S]");
    /* "photos/" names the same folder as "photos"; messages then show "photos/cat/x.png". */
    char root[4096];
    snprintf(root, sizeof root, "%s", opts->positional[1]);
    for (size_t n = strlen(root); n > 1 && root[n - 1] == '/'; n--)
        root[n - 1] = '\0';
    image_folder f = {0};
    image_plan p = {0};
    convert_outputs outputs = {0};
    file_role *inputs = NULL;
    ddt_status status;
    if (opts->size) DDT_CHECK(parse_size(opts->size, &p.height, &p.width));
    DDT_CHECK_GOTO(scan_folder(root, &f), status, done);
    bool validation = opts->val_fraction > 0;
    /* Every image is an input: no output may be one of them (by identity, however spelled). */
    inputs = malloc((size_t)f.count * sizeof *inputs);
    if (!inputs) {
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory listing images");
        goto done;
    }
    for (int64_t i = 0; i < f.count; i++)
        inputs[i] = (file_role){"image", f.images[i].path, false};
    DDT_CHECK_GOTO(convert_check_outputs(opts, validation, inputs, (int)f.count), status, done);
    if (f.class_count > MODEL_MAX_WIDTH) {
        status = ddt_error(DDT_ERR_USAGE,
                           "%s: %d classes; a model has at most %d outputs, so no model could "
                           "train on them",
                           root, f.class_count, MODEL_MAX_WIDTH);
        goto done;
    }
    /* Memory, planned before any image is read: with --size, writing needs at least its
     * one-channel block and chunks; what is left of --host-staging-limit bounds each decoded
     * image (a larger one is a bad image, named). */
    int64_t largest_part = f.count; /* no part has more rows than there are images */
    if (opts->size) {
        convert_memory least = {0};
        plan_writing(&p, 1, largest_part, opts, &least);
        DDT_CHECK_GOTO(convert_memory_check(opts, "convert images", &least, "a smaller --size"),
                       status, done);
        if (opts->host_staging_limit > 0)
            p.image_budget = image_budget((uint64_t)opts->host_staging_limit, least.bytes);
    } else if (opts->host_staging_limit > 0) {
        p.image_budget = (uint64_t)opts->host_staging_limit;
    }
    printf("found %" PRId64 " images in %d classes under %s", f.count, f.class_count, root);
    if (f.ignored)
        printf(" (%" PRId64 " other file%s ignored)", f.ignored, f.ignored == 1 ? "" : "s");
    printf("\n");
    fflush(stdout);
    DDT_CHECK_GOTO(check_images(&f, opts, &p), status, done);
    /* Now that the channels and the size are known: a row no model takes is refused, and
     * writing (a block, the chunks, one decoded image at a time) must fit the limit. */
    int64_t values = (int64_t)p.channels * p.height * p.width;
    if (values > MODEL_MAX_WIDTH) {
        status = ddt_error(DDT_ERR_USAGE,
                           "the images are %dx%dx%d, %" PRId64 " values each, and a model takes "
                           "at most %d values per sample: give a smaller --size",
                           p.channels, p.height, p.width, values, MODEL_MAX_WIDTH);
        goto done;
    }
    convert_memory memory = {0};
    plan_writing(&p, p.channels, largest_part, opts, &memory);
    char largest[4200];
    snprintf(largest, sizeof largest, "the largest image decoded (%.4000s)",
             f.images[p.largest_image].path);
    convert_memory_add(&memory, largest, p.largest_decode);
    DDT_CHECK_GOTO(convert_memory_check(opts, "convert images", &memory,
                                        "a smaller --size, or leave the largest images out"),
                   status, done);
    /* The second pass holds the block and the chunks beside one image: bound the images by
     * what is left, so a file that grew since the first pass cannot exceed the plan. */
    if (opts->host_staging_limit > 0)
        p.image_budget =
            image_budget((uint64_t)opts->host_staging_limit, memory.bytes - p.largest_decode);
    int64_t held = 0;
    DDT_CHECK_GOTO(convert_validation_rows(opts, p.good_count, "images", &held), status, done);
    p.classes = f.class_count;
    p.class_names = (const char *const *)f.classes;
    p.order = rng_permutation_init((uint64_t)p.good_count,
                                   rng_hash4((uint64_t)opts->seed, RNG_PURPOSE_CONVERT, 0, 0));
    snprintf(p.source, sizeof p.source, "ddtrain convert images %s --size %dx%d --seed %" PRId64,
             root, p.height, p.width, opts->seed);

    /* Validation first in the shuffled order, then the training shards. */
    char path[4096];
    if (held) {
        convert_part_path(opts->output, "-val", path, sizeof path);
        DDT_CHECK_GOTO(write_part(&f, &p, 0, held, path, opts, &outputs), status, done);
    }
    int64_t train = p.good_count - held;
    for (int64_t k = 0; k < opts->shards; k++) {
        int64_t first = held + train * k / opts->shards;
        int64_t end = held + train * (k + 1) / opts->shards;
        convert_train_shard_path(opts->output, validation, (int)k, (int)opts->shards, path,
                                 sizeof path);
        DDT_CHECK_GOTO(write_part(&f, &p, first, end - first, path, opts, &outputs), status, done);
    }
    DDT_CHECK_GOTO(convert_outputs_publish(&outputs), status, done);
    for (int64_t k = 0; k < opts->shards; k++) {
        int64_t first = train * k / opts->shards, end = train * (k + 1) / opts->shards;
        convert_train_shard_path(opts->output, validation, (int)k, (int)opts->shards, path,
                                 sizeof path);
        printf("wrote %s: %" PRId64 " image%s %dx%dx%d, %d classes\n", path, end - first,
               end - first == 1 ? "" : "s", p.channels, p.height, p.width, p.classes);
    }
    if (held) {
        convert_part_path(opts->output, "-val", path, sizeof path);
        printf("wrote %s: %" PRId64 " image%s %dx%dx%d, %d classes (validation)\n", path, held,
               held == 1 ? "" : "s", p.channels, p.height, p.width, p.classes);
    }
    status = DDT_OK;
done:
    convert_outputs_discard(&outputs);
    free(inputs);
    free(p.good);
    image_folder_free(&f);
    return status;
}
