/* data_commands.c - `ddtrain synth` and `ddtrain info` (convert: convert.c).
 *
 * Both stream: rows are generated or checked a block at a time, so their memory does not
 * grow with the dataset. info runs on rank 0; synth spreads its shards over the ranks (rank r
 * writes shards r, r + world, ...), since every row is a pure function of (seed, row).
 */
#include "driver/commands.h"
#include "driver/convert.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/dataset.h"
#include "io/dataset_writer.h"
#include "util/checked.h"
#include "util/files.h"
#include "util/rng.h"

/* ---- synth ----------------------------------------------------------------------------- */

/* The synthetic task: C class centres in D dimensions, drawn from (seed); row r belongs to
 * class hash(seed, r) mod C and is its centre plus Gaussian noise keyed by (seed, r, j).
 * Centres are scaled by 3/sqrt(D), so classes are about 4 noise-sigmas apart at noise 1:
 * learnable, but not perfectly. */
static float synth_centre(uint64_t seed, int64_t cls, int64_t j, int64_t features) {
    double z = rng_normal(rng_hash4(seed, RNG_PURPOSE_SYNTH, 1, (uint64_t)(cls * features + j)),
                          rng_hash4(seed, RNG_PURPOSE_SYNTH, 2, (uint64_t)(cls * features + j)));
    return (float)(z * 3.0 / sqrt((double)features));
}

static ddt_status synth_shard(const options *opts, int64_t first, int64_t count,
                              const float *centres, const char *path) {
    int64_t features = opts->features;
    uint64_t seed = (uint64_t)opts->seed;
    char source[256];
    snprintf(source, sizeof source, "ddtrain synth --rows %" PRId64 " --features %" PRId64
             " --classes %" PRId64 " --seed %" PRId64 " --noise %g",
             opts->rows, features, opts->classes, opts->seed, opts->noise);
    dataset_writer_params params = {
        .rows = count,
        .features = (int)features,
        .class_labels = true,
        .target_width = 1,
        .classes = (int)opts->classes,
        .compression = (int)opts->compression,
        .source = source,
    };
    dataset_writer *w;
    DDT_CHECK(dataset_writer_open(path, &params, &w));
    int64_t block = dataset_writer_block_rows(features);
    float *values = malloc((size_t)(block * features) * sizeof(float));
    int32_t *ids = malloc((size_t)block * sizeof(int32_t));
    ddt_status status = DDT_OK;
    if (!values || !ids) status = ddt_error(DDT_ERR_MEMORY, "out of host memory writing %s", path);
    float noise = (float)opts->noise;
    for (int64_t done = 0; status == DDT_OK && done < count; done += block) {
        int64_t rows = count - done < block ? count - done : block;
        for (int64_t i = 0; i < rows; i++) {
            uint64_t row = (uint64_t)(first + done + i);
            int64_t cls = (int64_t)(rng_hash4(seed, RNG_PURPOSE_SYNTH, 3, row) %
                                    (uint64_t)opts->classes);
            ids[i] = (int32_t)cls;
            const float *centre = centres + cls * features;
            float *out = values + i * features;
            for (int64_t j = 0; j < features; j += 2) {
                uint64_t key = row * (uint64_t)features + (uint64_t)j;
                double u1 = ((double)(rng_hash4(seed, RNG_PURPOSE_SYNTH, 4, key) >> 11) + 1.0) *
                            (1.0 / 9007199254740992.0);
                double u2 = (double)(rng_hash4(seed, RNG_PURPOSE_SYNTH, 5, key) >> 11) *
                            (1.0 / 9007199254740992.0);
                double radius = sqrt(-2.0 * log(u1)), angle = 6.283185307179586 * u2;
                out[j] = centre[j] + noise * (float)(radius * cos(angle));
                if (j + 1 < features) out[j + 1] = centre[j + 1] + noise * (float)(radius * sin(angle));
            }
        }
        status = dataset_writer_append(w, (int)rows, values, ids, NULL);
    }
    free(values);
    free(ids);
    if (status != DDT_OK) {
        dataset_writer_abort(w);
        return status;
    }
    return dataset_writer_close(w);
}

static ddt_status synth_local(const job *j, const options *opts) {
    if (!opts->output) return ddt_error(DDT_ERR_USAGE, "ddtrain synth needs -o OUT.h5");
    if (!opts->rows || !opts->features || !opts->classes)
        return ddt_error(DDT_ERR_USAGE, "ddtrain synth needs --rows, --features and --classes");
    if (opts->positional_count)
        return ddt_error(DDT_ERR_USAGE, "ddtrain synth: unexpected argument '%s'",
                         opts->positional[0]);
    if (opts->shards > opts->rows)
        return ddt_error(DDT_ERR_USAGE, "--shards %" PRId64 " is more than --rows %" PRId64,
                         opts->shards, opts->rows);
    DDT_CHECK(convert_prepare_output(opts, j->rank == 0)); /* rank 0 writes the first shard */
    /* The class centres, a block of rows and the writer's chunks, planned up front. */
    int64_t block = dataset_writer_block_rows(opts->features);
    dataset_writer_params largest = {.rows = (opts->rows + opts->shards - 1) / opts->shards,
                                     .features = (int)opts->features,
                                     .class_labels = true,
                                     .compression = (int)opts->compression};
    convert_memory memory = {0};
    char what[96];
    snprintf(what, sizeof what, "the %" PRId64 " x %" PRId64 " class centres", opts->classes,
             opts->features);
    convert_memory_add(&memory, what,
                       (uint64_t)opts->classes * (uint64_t)opts->features * sizeof(float));
    snprintf(what, sizeof what, "a block of %" PRId64 " row%s", block, block == 1 ? "" : "s");
    convert_memory_add(&memory, what, (uint64_t)block * (uint64_t)(opts->features + 1) * 4);
    convert_memory_add(&memory, "the writer's chunks", dataset_writer_memory_bytes(&largest));
    DDT_CHECK(convert_memory_check(opts, "synth", &memory, "use fewer --classes or --features"));
    size_t centre_count = (size_t)(opts->classes * opts->features);
    float *centres = malloc(centre_count * sizeof(float));
    if (!centres) return ddt_error(DDT_ERR_MEMORY, "out of host memory for class centres");
    for (int64_t c = 0; c < opts->classes; c++)
        for (int64_t f = 0; f < opts->features; f++)
            centres[c * opts->features + f] =
                synth_centre((uint64_t)opts->seed, c, f, opts->features);
    ddt_status status = DDT_OK;
    for (int64_t k = j->rank; status == DDT_OK && k < opts->shards; k += j->world_size) {
        int64_t first = checked_part_start(opts->rows, k, opts->shards),
                end = checked_part_start(opts->rows, k + 1, opts->shards);
        char path[4096];
        dataset_shard_path(opts->output, (int)k, (int)opts->shards, path, sizeof path);
        status = synth_shard(opts, first, end - first, centres, path);
        if (status == DDT_OK)
            printf("wrote %s: %" PRId64 " rows x %" PRId64 " features, %" PRId64 " classes\n",
                   path, end - first, opts->features, opts->classes);
    }
    fflush(stdout);
    free(centres);
    return status;
}

ddt_status synth_command(job *j, const options *opts) {
    return comm_agree(j->control, synth_local(j, opts), "synth");
}

/* ---- info ------------------------------------------------------------------------------ */

/* Token datasets: every id checked against vocab_size, read as windows of one id (the
 * windows of a shard then cover all its ids). */
static ddt_status info_tokens(dataset *ds, const char *spec) {
    const dataset_geometry *g = dataset_get_geometry(ds);
    printf("  kind       tokens: %" PRId64 " ids, vocab_size %d (read in windows of the model's "
           "context T: T + 1 ids each, never across shards)\n",
           g->tokens, g->classes);
    int64_t block = 1 << 20;
    int32_t *inputs = malloc((size_t)block * sizeof(int32_t));
    int32_t *next = malloc((size_t)block * sizeof(int32_t));
    ddt_status status = DDT_OK;
    if (!inputs || !next)
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory checking %s", spec);
    int32_t lowest = INT32_MAX, highest = -1;
    for (int64_t row = 0; status == DDT_OK && row < g->rows; row += block) {
        int rows = (int)(g->rows - row < block ? g->rows - row : block);
        status = dataset_read_range(ds, row, rows, inputs, next, NULL);
        for (int i = 0; status == DDT_OK && i < rows; i++) {
            int32_t a = inputs[i] < next[i] ? inputs[i] : next[i];
            int32_t b = inputs[i] < next[i] ? next[i] : inputs[i];
            if (a < lowest) lowest = a;
            if (b > highest) highest = b;
        }
    }
    if (status == DDT_OK)
        printf("  ids        %d to %d, all below vocab_size\n  ok\n", lowest, highest);
    free(inputs);
    free(next);
    return status;
}

static ddt_status info_one(const char *spec, const options *opts) {
    dataset_open_params params = dataset_default_open_params();
    params.allow_external = opts->allow_external_data;
    params.token_context = 1; /* token datasets: windows of one id, to check every id */
    dataset *ds;
    DDT_CHECK(dataset_open_with_params(spec, &params, &ds));
    const dataset_geometry *g = dataset_get_geometry(ds);
    printf("%s\n  files      %d\n", spec, g->file_count);
    for (int i = 0; i < g->file_count && g->file_count > 1; i++)
        printf("    %s\n", dataset_file_path(ds, i));
    if (g->kind == DATASET_KIND_TOKENS) {
        ddt_status status = info_tokens(ds, spec);
        dataset_close(ds);
        return status;
    }
    char shape[96] = "";
    if (g->feature_rank == 3)
        snprintf(shape, sizeof shape, ", images %dx%dx%d (CxHxW)", g->feature_dims[0],
                 g->feature_dims[1], g->feature_dims[2]);
    printf("  rows       %" PRId64 "\n  features   %d (float32%s, chunks of %" PRId64 " rows)\n",
           g->rows, g->features, shape, g->chunk_rows);
    if (g->class_labels && g->classes > 0)
        printf("  labels     int32 class ids, %d classes\n", g->classes);
    else if (g->class_labels)
        printf("  labels     integer class ids, no num_classes attribute (training checks them "
               "against the model's output width)\n");
    else
        printf("  labels     float32 targets, width %d\n", g->target_width);
    if (dataset_class_name_count(ds) > 0) {
        printf("  names     ");
        for (int c = 0; c < dataset_class_name_count(ds); c++)
            printf("%s %d:%s", c ? "," : "", c, dataset_class_name(ds, c));
        printf("\n");
    }
    /* Check every row (values finite, labels in range) a block at a time. Without a class
     * count, the counts array grows with the largest id seen (up to a bound). */
    enum { MAX_COUNTED_CLASSES = 1 << 20 };
    int64_t block = dataset_writer_block_rows(g->features);
    float *features = malloc((size_t)(block * g->features) * sizeof(float));
    int32_t *labels = g->class_labels ? malloc((size_t)block * sizeof(int32_t)) : NULL;
    float *targets =
        g->class_labels ? NULL : malloc((size_t)(block * g->target_width) * sizeof(float));
    int counted = g->class_labels ? (g->classes > 0 ? g->classes : 16) : 0;
    int highest = -1;
    int64_t *counts = g->class_labels ? calloc((size_t)counted, sizeof(int64_t)) : NULL;
    ddt_status status = DDT_OK;
    if (!features || (!labels && !targets) || (g->class_labels && !counts))
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory checking %s", spec);
    double sum = 0, sum_squares = 0;
    for (int64_t row = 0; status == DDT_OK && row < g->rows; row += block) {
        int rows = (int)(g->rows - row < block ? g->rows - row : block);
        status = dataset_read_range(ds, row, rows, features, labels, targets);
        if (status != DDT_OK) break;
        for (int64_t i = 0; i < (int64_t)rows * g->features; i++) {
            sum += features[i];
            sum_squares += (double)features[i] * features[i];
        }
        for (int i = 0; counts && i < rows; i++) {
            if (labels[i] >= counted && labels[i] < MAX_COUNTED_CLASSES) {
                int grown = counted;
                while (grown <= labels[i])
                    grown *= 2;
                int64_t *more = realloc(counts, (size_t)grown * sizeof(int64_t));
                if (!more) {
                    status = ddt_error(DDT_ERR_MEMORY, "out of host memory checking %s", spec);
                    break;
                }
                memset(more + counted, 0, (size_t)(grown - counted) * sizeof(int64_t));
                counts = more;
                counted = grown;
            }
            if (labels[i] > highest) highest = labels[i];
            if (labels[i] < counted) counts[labels[i]]++;
        }
    }
    if (status == DDT_OK) {
        double n = (double)g->rows * g->features;
        double mean = sum / n;
        printf("  values     mean %.4f, std %.4f, all finite\n", mean,
               sqrt(fmax(0, sum_squares / n - mean * mean)));
        int shown = g->classes > 0 ? g->classes : highest + 1;
        if (counts && shown <= counted) {
            printf("  classes   ");
            for (int c = 0; c < shown; c++)
                printf(" %d:%" PRId64, c, counts[c]);
            printf("\n");
        } else if (counts) {
            printf("  classes    ids up to %d\n", highest);
        }
        printf("  ok\n");
    }
    free(features);
    free(labels);
    free(targets);
    free(counts);
    dataset_close(ds);
    return status;
}

static ddt_status info_local(const options *opts) {
    if (opts->positional_count == 0)
        return ddt_error(DDT_ERR_USAGE, "usage: ddtrain info FILE...");
    for (int i = 0; i < opts->positional_count; i++) DDT_CHECK(info_one(opts->positional[i], opts));
    fflush(stdout);
    return DDT_OK;
}

ddt_status info_command(job *j, const options *opts) {
    return comm_agree(j->control, j->rank == 0 ? info_local(opts) : DDT_OK, "info");
}
