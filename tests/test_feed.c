/* test_feed.c - the input path as one owner: micro-batches come out on the device in the shard
 * plan's order, each row's features, label and global row id intact, through the double
 * buffer (two micro-batches alternate buffers, across step and epoch boundaries); a resumed
 * feed starts at its first step; evaluation reads into the buffer the prefetched training
 * micro-batch does not use, leaving it intact; misuse is refused; the plan's device bytes
 * equal what the feed takes from the allocator. Token datasets: micro-batches arrive as int32
 * input ids (feed_batch.tokens, features NULL) with T labels a row, in training and
 * evaluation, and the plan's bytes still equal the allocator's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "feed/feed.h"
#include "io/dataset_writer.h"

enum { ROWS = 1000, FEATURES = 5, CLASSES = 7, CHUNK = 64, MICRO = 16, PER_STEP = 2 };

/* Row r: features (r, -r, r/2, r+3, r+4), label r mod 7. */
static void write_data(const char *path, int64_t rows, int64_t first) {
    float *f = malloc((size_t)rows * FEATURES * sizeof *f);
    int32_t *l = malloc((size_t)rows * sizeof *l);
    for (int64_t i = 0; i < rows; i++) {
        int64_t r = first + i;
        float *x = f + i * FEATURES;
        x[0] = (float)r;
        x[1] = -(float)r;
        x[2] = 0.5f * (float)r;
        x[3] = (float)(r + 3);
        x[4] = (float)(r + 4);
        l[i] = (int32_t)(r % CLASSES);
    }
    dataset_writer_params p = {.rows = rows, .features = FEATURES, .class_labels = true,
                               .classes = CLASSES, .chunk_rows = CHUNK};
    dataset_writer *w;
    CHECK_OK(dataset_writer_open(path, &p, &w));
    CHECK_OK(dataset_writer_append(w, (int)rows, f, l, NULL));
    CHECK_OK(dataset_writer_close(w));
    free(l);
    free(f);
}

/* Checks a batch (host memory on the CPU device) against the plan's rows. */
static int batch_is(shard_plan *plan, const feed_batch *b, int64_t step, int micro) {
    int64_t rows[MICRO];
    int64_t per_epoch = shard_plan_steps_per_epoch(plan);
    if (shard_plan_micro_batch_rows(plan, step / per_epoch, step % per_epoch, micro, rows) !=
        DDT_OK)
        return 0;
    int ok = b->rows == MICRO && b->global_step == step && b->micro_index == micro;
    for (int i = 0; ok && i < MICRO; i++) {
        const float *x = b->features + i * FEATURES;
        ok = b->row_ids[i] == rows[i] && x[0] == (float)rows[i] && x[1] == -(float)rows[i] &&
             x[4] == (float)(rows[i] + 4) && b->labels[i] == (int32_t)(rows[i] % CLASSES) &&
             !b->targets;
    }
    return ok;
}

/* Token id at position p of the token file. */
static int32_t token_at(int64_t p) {
    return (int32_t)((p * 7 + 1) % 256);
}

static void test_tokens(device *dev, allocator *alloc) {
    enum { CONTEXT = 6, IDS = 4001 };
    char path[512];
    snprintf(path, sizeof path, "%s/feed-tokens.h5", check_temp_dir());
    int32_t *ids = malloc(IDS * sizeof *ids);
    for (int p = 0; p < IDS; p++)
        ids[p] = token_at(p);
    dataset_writer_params wp = {
        .kind = DATASET_KIND_TOKENS, .rows = IDS, .vocab_size = 256, .chunk_rows = 120};
    dataset_writer *w;
    CHECK_OK(dataset_writer_open(path, &wp, &w));
    CHECK_OK(dataset_writer_append_tokens(w, IDS, ids));
    CHECK_OK(dataset_writer_close(w));
    free(ids);
    dataset_open_params op = dataset_default_open_params();
    op.token_context = CONTEXT;
    dataset *data = NULL;
    CHECK_OK(dataset_open_with_params(path, &op, &data));
    if (!data) return;
    const dataset_geometry *g = dataset_get_geometry(data);
    CHECK(g->rows == (IDS - 1) / CONTEXT && g->chunk_rows == 20);
    shard_params sp = {.rows = g->rows,
                       .global_batch = MICRO * PER_STEP,
                       .micro_batch = MICRO,
                       .world_size = 1,
                       .rank = 0,
                       .seed = 5,
                       .shuffle = true,
                       .block_rows = g->chunk_rows,
                       .window_blocks = 4};
    shard_plan *plan = NULL, *reference = NULL;
    CHECK_OK(shard_plan_init(&sp, &plan));
    CHECK_OK(shard_plan_init(&sp, &reference));
    feed_params fp = {.dev = dev,
                      .alloc = alloc,
                      .geometry = g,
                      .rows = MICRO,
                      .data = data,
                      .plan = plan,
                      .total_steps = 5,
                      .micro_batches_per_step = PER_STEP,
                      .prefetch_depth = 2,
                      .evaluation = true};
    size_t planned[MEMORY_COMPONENT_COUNT] = {0};
    feed_plan_device(g, MICRO, planned);
    /* two buffers of MICRO x T ids, MICRO x T labels and MICRO row ids */
    CHECK(
        planned[MEMORY_COMPONENT_STAGING] ==
        2 * (2 * allocator_rounded_size(MICRO * CONTEXT * 4) + allocator_rounded_size(MICRO * 8)));
    CHECK(feed_evaluation_host_bytes(g, MICRO) == 2 * MICRO * CONTEXT * 4);
    size_t before = allocator_get_stats(alloc).bytes_in_use;
    feed *f = NULL;
    CHECK_OK(feed_init(&fp, &f));
    CHECK(allocator_get_stats(alloc).bytes_in_use - before == planned[MEMORY_COMPONENT_STAGING]);
    CHECK_OK(feed_start(f));
    int good = 0;
    for (int64_t step = 0; step < 5; step++)
        for (int m = 0; m < PER_STEP; m++) {
            feed_batch b;
            CHECK_OK(feed_next(f, &b));
            int64_t rows[MICRO];
            CHECK_OK(shard_plan_micro_batch_rows(reference, 0, step, m, rows));
            int ok = !b.features && b.tokens && b.labels && !b.targets && b.rows == MICRO;
            for (int i = 0; ok && i < MICRO; i++)
                for (int j = 0; j < CONTEXT; j++)
                    ok = ok && b.row_ids[i] == rows[i] &&
                         b.tokens[i * CONTEXT + j] == token_at(rows[i] * CONTEXT + j) &&
                         b.labels[i * CONTEXT + j] == token_at(rows[i] * CONTEXT + j + 1);
            good += ok;
            CHECK_OK(feed_release(f));
        }
    CHECK(good == 5 * PER_STEP);
    feed_batch e;
    CHECK_OK(feed_read_evaluation(f, data, 100, 3, &e));
    CHECK(!e.features && e.tokens[0] == token_at(600) &&
          e.labels[3 * CONTEXT - 1] == token_at(618));
    feed_free(f);
    shard_plan_free(reference);
    shard_plan_free(plan);
    dataset_close(data);
}

int main(void) {
    char path[512], eval_path[512];
    snprintf(path, sizeof path, "%s/feed.h5", check_temp_dir());
    snprintf(eval_path, sizeof eval_path, "%s/feed-eval.h5", check_temp_dir());
    write_data(path, ROWS, 0);
    write_data(eval_path, 300, 100000);
    dataset *data = NULL, *eval = NULL;
    CHECK_OK(dataset_open(path, &data));
    CHECK_OK(dataset_open(eval_path, &eval));
    device *dev = NULL;
    allocator *alloc = NULL;
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    CHECK_OK(allocator_open(dev, &alloc));
    shard_params sp = {.rows = ROWS, .global_batch = MICRO * PER_STEP, .micro_batch = MICRO,
                       .world_size = 1, .rank = 0, .seed = 9, .shuffle = true,
                       .block_rows = CHUNK, .window_blocks = 4};
    shard_plan *plan = NULL, *reference = NULL;
    CHECK_OK(shard_plan_init(&sp, &plan));
    CHECK_OK(shard_plan_init(&sp, &reference));
    int64_t per_epoch = shard_plan_steps_per_epoch(plan); /* 31 */
    int64_t total = per_epoch + 5;                          /* across an epoch boundary */

    const dataset_geometry *g = dataset_get_geometry(data);
    feed_params fp = {.dev = dev, .alloc = alloc, .geometry = g, .rows = MICRO, .data = data,
                      .plan = plan, .first_step = 0, .total_steps = total,
                      .micro_batches_per_step = PER_STEP, .prefetch_depth = 3,
                      .cache_blocks = 0, .evaluation = true};
    size_t planned[MEMORY_COMPONENT_COUNT] = {0};
    feed_plan_device(g, MICRO, planned);
    size_t before = allocator_get_stats(alloc).bytes_in_use;
    feed *f = NULL;
    CHECK_OK(feed_init(&fp, &f));
    CHECK(allocator_get_stats(alloc).bytes_in_use - before == planned[MEMORY_COMPONENT_STAGING]);
    feed_batch b;
    CHECK(feed_next(f, &b) == DDT_ERR_INTERNAL); /* not started */
    CHECK_OK(feed_start(f));

    int good = 0, buffers_alternate = 1;
    const float *last_features = NULL;
    for (int64_t step = 0; step < total; step++) {
        for (int m = 0; m < PER_STEP; m++) {
            CHECK_OK(feed_next(f, &b));
            good += batch_is(reference, &b, step, m);
            buffers_alternate = buffers_alternate && b.features != last_features;
            last_features = b.features;
            if (step == 3 && m == 1) {
                /* Evaluation between micro-batches: the prefetched one must survive it. */
                CHECK(feed_next(f, &b) == DDT_ERR_INTERNAL); /* this one not released yet */
                CHECK_OK(feed_release(f));
                feed_batch e;
                CHECK_OK(feed_read_evaluation(f, eval, 10, 7, &e));
                CHECK(e.rows == 7 && e.features[0] == 100010.0f && e.labels[6] == (100016 % 7) &&
                      !e.row_ids);
                CHECK_OK(feed_read_evaluation(f, eval, 290, 10, &e)); /* the last rows */
                CHECK(e.features[9 * FEATURES] == 100299.0f);
                CHECK(feed_read_evaluation(f, eval, 0, MICRO + 1, &e) == DDT_ERR_INTERNAL);
                continue;
            }
            CHECK_OK(feed_release(f));
        }
    }
    CHECK(good == total * PER_STEP);
    CHECK(buffers_alternate);
    feed_stats stats = feed_get_stats(f);
    CHECK(stats.micro_batches == total * PER_STEP && stats.data_wait_seconds >= 0);
    CHECK(stats.stream.micro_batches == total * PER_STEP);
    feed_free(f);

    /* A resumed run: the feed starts at its first step. */
    f = NULL;
    CHECK_OK(feed_init(&fp, &f));
    feed_set_first_step(f, per_epoch - 1, per_epoch + 2);
    CHECK_OK(feed_start(f));
    good = 0;
    for (int64_t step = per_epoch - 1; step < per_epoch + 2; step++)
        for (int m = 0; m < PER_STEP; m++) {
            CHECK_OK(feed_next(f, &b));
            good += batch_is(reference, &b, step, m);
            CHECK_OK(feed_release(f));
        }
    CHECK(good == 3 * PER_STEP);
    feed_free(f);

    /* Evaluation only (ddtrain eval): no training data, no reader. */
    feed_params ep = {.dev = dev, .alloc = alloc, .geometry = g, .rows = 64, .evaluation = true};
    CHECK_OK(feed_init(&ep, &f));
    CHECK_OK(feed_start(f));
    feed_batch e;
    CHECK_OK(feed_read_evaluation(f, eval, 0, 64, &e));
    CHECK(e.features[63 * FEATURES] == 100063.0f);
    CHECK(feed_next(f, &b) == DDT_ERR_INTERNAL);
    feed_free(f);

    test_tokens(dev, alloc);
    shard_plan_free(reference);
    shard_plan_free(plan);
    allocator_close(alloc);
    device_close(dev);
    dataset_close(eval);
    dataset_close(data);
    return check_finish();
}
