/* test_io_stream.c - the reader thread, block cache and slot ring: right rows, right data, in
 * plan order, whatever the relative speed of reader and consumer and whatever the cache size;
 * each block read once per epoch; staging bytes exact; prompt stop; errors surface in place.
 * Fitting to a host staging limit: derived values fit and are maximal, given ones respected or
 * refused with the numbers; under a tight limit the staging in use (and what is allocated)
 * stays within it with a fast reader and a slow consumer, and the reverse.
 *
 * The dataset's features encode the global row number (row r has features r, -r, r/2), so
 * each delivered micro-batch can be checked against its row ids, and the row ids against the
 * plan, also when the rows come from several shard files.
 */
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "fixtures.h"
#include "io/dataset.h"
#include "io/dataset_writer.h"
#include "io/hdf5_lock.h"
#include "io/stream.h"
#include "shard/shard.h"

enum { ROWS = 1000, FEATURES = 3, CLASSES = 7, CHUNK_ROWS = 16, WINDOW_BLOCKS = 4 };
enum { GLOBAL_BATCH = 64, MICRO_BATCH = 8, WORLD = 2, RANK = 1 };
/* Shard sizes of the multi-file dataset: 1003 rows, not a multiple of CHUNK_ROWS, and shard
 * boundaries (333, 734) inside blocks. */
enum { SHARDS = 3 };
static const int shard_rows[SHARDS] = {333, 401, 269};

static void sleep_seconds(double seconds) {
    struct timespec t = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&t, NULL);
}

/* Global row r: features r, -r, r/2, then r + j; label r mod CLASSES; targets r + 1, 2r. */
static float row_feature(int64_t r, int j) {
    return j == 0 ? (float)r : j == 1 ? -(float)r : j == 2 ? 0.5f * (float)r : (float)(r + j);
}

static int32_t row_label(int64_t r, int classes) {
    return (int32_t)(r % classes);
}

static float row_target(int64_t r, int k) {
    return k == 0 ? (float)(r + 1) : (float)(2 * r);
}

/* Writes global rows [first, first + count) of `features` features, class labels or two
 * targets, in chunks of CHUNK_ROWS. */
static ddt_status write_rows(const char *path, int64_t first, int count, int features,
                             bool class_labels) {
    dataset_writer_params params = {
        .rows = count,
        .features = features,
        .class_labels = class_labels,
        .target_width = 2,
        .classes = class_labels ? CLASSES : 0,
        .chunk_rows = CHUNK_ROWS,
    };
    fixture_rows values = {
        .first_row = first, .feature = row_feature, .label = row_label, .target = row_target};
    return fixture_write_features(path, &params, &values);
}

static shard_params plan_params(int64_t rows) {
    shard_params p = {
        .rows = rows,
        .global_batch = GLOBAL_BATCH,
        .micro_batch = MICRO_BATCH,
        .world_size = WORLD,
        .rank = RANK,
        .seed = 42,
        .shuffle = true,
        .block_rows = CHUNK_ROWS,
        .window_blocks = WINDOW_BLOCKS,
    };
    return p;
}

/* Checks one delivered micro-batch against an independent plan (row for row, in plan order)
 * and the encoded features (the first three of `features` per row). */
static int batch_matches(const fixture_stream *f, const micro_batch *mb, int64_t global_step,
                         int micro_index, bool class_labels, int features) {
    int64_t steps = shard_plan_steps_per_epoch(f->reference);
    int64_t expected[MICRO_BATCH];
    if (fixture_stream_expected_rows(f, global_step, micro_index, expected) != DDT_OK) return 0;
    int ok = mb->global_step == global_step && mb->epoch == global_step / steps &&
             mb->step == global_step % steps && mb->micro_index == micro_index &&
             mb->rows == MICRO_BATCH;
    ok = ok && memcmp(expected, mb->row_ids, sizeof expected) == 0;
    for (int i = 0; ok && i < mb->rows; i++) {
        float r = (float)mb->row_ids[i];
        const float *f = mb->features + i * features;
        ok = f[0] == r && f[1] == -r && f[2] == 0.5f * r;
        if (class_labels)
            ok = ok && mb->labels[i] == mb->row_ids[i] % CLASSES && mb->targets == NULL;
        else
            ok = ok && mb->labels == NULL && mb->targets[i * 2] == r + 1 &&
                 mb->targets[i * 2 + 1] == 2 * r;
    }
    return ok;
}

/* Holds the HDF5 lock most of the time, as a busy checkpoint writer would: the reader crawls. */
typedef struct lock_hog {
    pthread_t thread;
    atomic_bool stop;
    atomic_int holds; /* times the lock was taken, so the test knows the hog is running */
} lock_hog;

static void *lock_hog_main(void *argument) {
    lock_hog *hog = argument;
    while (!atomic_load(&hog->stop)) {
        hdf5_lock_acquire();
        atomic_fetch_add(&hog->holds, 1);
        sleep_seconds(0.003);
        hdf5_lock_release();
        sleep_seconds(0.0001);
    }
    return NULL;
}

typedef struct run_options {
    int prefetch;
    int64_t first_global_step;
    int64_t total_global_steps;
    double consumer_delay; /* seconds of "compute" per micro-batch */
    bool slow_reader;
    bool class_labels;
    int cache_blocks; /* stream_params.cache_blocks (0 = default) */
    bool no_shuffle;
    int window_blocks; /* the plan's (0 = WINDOW_BLOCKS) */
} run_options;

/* The cache size stream_open should resolve for `p` and a requested `cache_blocks`. */
static int expected_cache_blocks(const shard_params *p, int cache_blocks) {
    int64_t block_count = (p->rows + p->block_rows - 1) / p->block_rows;
    int64_t blocks = cache_blocks ? cache_blocks : p->shuffle ? 2 * p->window_blocks + 1 : 1;
    return (int)(blocks < block_count ? blocks : block_count);
}

/* Streams the whole range and checks every micro-batch, the staging bytes and the block
 * counters against what the reference plan implies; returns the stats. */
static stream_stats run_stream(dataset *data, const run_options *o) {
    stream_stats stats = {0};
    shard_params p = plan_params(dataset_get_geometry(data)->rows);
    p.shuffle = !o->no_shuffle;
    if (o->window_blocks) p.window_blocks = o->window_blocks;
    fixture_stream f = {0};
    CHECK_OK(fixture_stream_plan(&f, &p));
    lock_hog hog = {.stop = false, .holds = 0};
    if (o->slow_reader) {
        CHECK(pthread_create(&hog.thread, NULL, lock_hog_main, &hog) == 0);
        while (atomic_load(&hog.holds) == 0)
            sleep_seconds(0.0001);
    }

    /* Blocks each epoch of the range touches, and block lookups (distinct blocks per
     * micro-batch), from the reference plan. */
    int64_t block_count = (p.rows + p.block_rows - 1) / p.block_rows;
    bool *seen = calloc((size_t)block_count, sizeof *seen);
    bool *in_batch = calloc((size_t)block_count, sizeof *in_batch);
    int64_t distinct_per_epoch_sum = 0, distinct_first_epoch = 0, lookups = 0, epoch = -1;
    int64_t first_epoch = o->first_global_step / shard_plan_steps_per_epoch(f.reference);

    CHECK_OK(fixture_stream_open(&f, (stream_params){
                                         .data = data,
                                         .micro_batch = MICRO_BATCH,
                                         .first_global_step = o->first_global_step,
                                         .total_global_steps = o->total_global_steps,
                                         .prefetch_depth = o->prefetch,
                                         .cache_blocks = o->cache_blocks,
                                     }));
    stream *s = f.stream;
    int all_match = 1;
    int k = shard_plan_micro_batches_per_step(f.plan);
    for (int64_t g = 0; g < o->total_global_steps; g++)
        for (int m = 0; m < k; m++) {
            micro_batch *mb;
            ddt_status status = stream_next(s, &mb);
            CHECK_OK(status);
            if (status != DDT_OK) goto done;
            all_match &= batch_matches(&f, mb, o->first_global_step + g, m, o->class_labels,
                                       dataset_get_geometry(data)->features);
            if (mb->epoch != epoch) {
                if (epoch >= 0) memset(seen, 0, (size_t)block_count * sizeof *seen);
                epoch = mb->epoch;
            }
            for (int i = 0; i < mb->rows; i++) {
                int64_t block = mb->row_ids[i] / p.block_rows;
                if (!seen[block]) {
                    seen[block] = true;
                    distinct_per_epoch_sum++;
                    if (epoch == first_epoch) distinct_first_epoch++;
                }
                if (!in_batch[block]) lookups++;
                in_batch[block] = true;
            }
            for (int i = 0; i < mb->rows; i++)
                in_batch[mb->row_ids[i] / p.block_rows] = false;
            if (o->consumer_delay > 0) sleep_seconds(o->consumer_delay);
            stream_release(s, mb);
        }
    CHECK(all_match);
    micro_batch *past;
    CHECK(stream_next(s, &past) == DDT_ERR_INTERNAL);
    CHECK(past == NULL);
done:
    stats = stream_get_stats(s);
    CHECK(stats.micro_batches == o->total_global_steps * k);
    CHECK(stats.cache_blocks == expected_cache_blocks(&p, o->cache_blocks));
    CHECK(stats.staging_bytes ==
          stream_staging_bytes(dataset_get_geometry(data), &p, o->prefetch, o->cache_blocks));
    /* In use: never more than allocated; at the end no slot is in use (all released, the
     * reader done), so less than the peak whenever a slot ever was. */
    CHECK(stats.peak_staging_bytes_in_use <= stats.staging_bytes);
    CHECK(stats.staging_bytes_in_use > 0);
    CHECK(stats.staging_bytes_in_use <= stats.peak_staging_bytes_in_use);
    if (stats.micro_batches > 0)
        CHECK(stats.staging_bytes_in_use < stats.peak_staging_bytes_in_use);
    fixture_stream_close(&f);
    /* Every distinct block of a micro-batch is looked up once when the slot is filled: a hit
     * (perhaps of a block read ahead) or a read. Read-ahead stays within the range. */
    CHECK(stats.blocks_read - stats.blocks_read_ahead + stats.block_hits == lookups);
    CHECK(stats.blocks_read_ahead >= 0 && stats.blocks_read_ahead <= stats.blocks_read);
    CHECK(stats.blocks_read >= distinct_first_epoch);
    if (o->cache_blocks == 0 || o->cache_blocks >= expected_cache_blocks(&p, 0)) {
        /* The default cache reads each block at most once per epoch. */
        CHECK(stats.blocks_read <= distinct_per_epoch_sum);
    }
    if (o->slow_reader) {
        atomic_store(&hog.stop, true);
        pthread_join(hog.thread, NULL);
    }
    free(in_batch);
    free(seen);
    return stats;
}

static void test_sequences(dataset *data, dataset *data_targets) {
    int64_t steps = ROWS / GLOBAL_BATCH; /* 15 per epoch */
    for (int prefetch = 2; prefetch <= 4; prefetch += 2) {
        /* Start mid-epoch and cross two epoch boundaries. */
        run_options o = {.prefetch = prefetch,
                         .first_global_step = steps - 3,
                         .total_global_steps = steps + 6,
                         .class_labels = true};
        stream_stats stats = run_stream(data, &o);
        CHECK(stats.read_seconds > 0);
    }
    run_options targets = {.prefetch = 3, .total_global_steps = 4, .class_labels = false};
    run_stream(data_targets, &targets);

    /* Slow consumer: the reader spends most of its time blocked on a full ring. */
    run_options slow_consumer = {
        .prefetch = 2, .total_global_steps = 5, .consumer_delay = 0.002, .class_labels = true};
    stream_stats stats = run_stream(data, &slow_consumer);
    CHECK(stats.wait_seconds < 0.25 * 20 * 0.002);
    /* The idle reader read blocks ahead of need. */
    CHECK(stats.blocks_read_ahead > 0);
    printf("slow consumer: waited %.4f s, read %.4f s\n", stats.wait_seconds, stats.read_seconds);

    /* Slow reader: the consumer waits, and sees the same sequence. */
    run_options slow_reader = {
        .prefetch = 2, .total_global_steps = 10, .slow_reader = true, .class_labels = true};
    stats = run_stream(data, &slow_reader);
    /* The stream starts while the hog holds the lock, so the first read waits ~3 ms; after
     * that the consumer waits about as long as the reader works. */
    CHECK(stats.wait_seconds > 0.002);
    CHECK(stats.wait_seconds > 0.5 * stats.read_seconds);
    printf("slow reader: waited %.4f s, read %.4f s\n", stats.wait_seconds, stats.read_seconds);
}

/* One whole epoch from step 0: every block this rank touches is read exactly once, and far
 * fewer times than rows are used. */
static void test_block_reads(dataset *data) {
    int64_t steps = ROWS / GLOBAL_BATCH;
    run_options epoch = {.prefetch = 3, .total_global_steps = steps, .class_labels = true};
    stream_stats stats = run_stream(data, &epoch);
    int64_t block_count = (ROWS + CHUNK_ROWS - 1) / CHUNK_ROWS;
    CHECK(stats.blocks_read <= block_count);
    CHECK(stats.blocks_read > 0);
    CHECK(stats.block_hits > stats.blocks_read);
    printf("one epoch: %lld block reads (%lld blocks), %lld hits, cache of %d blocks\n",
           (long long)stats.blocks_read, (long long)block_count, (long long)stats.block_hits,
           stats.cache_blocks);

    /* The same with a slow consumer, so the reader reads ahead while the ring is full:
     * reading ahead never evicts a block still needed. */
    run_options ahead = {
        .prefetch = 2, .total_global_steps = steps, .consumer_delay = 0.0005, .class_labels = true};
    stats = run_stream(data, &ahead);
    CHECK(stats.blocks_read <= block_count);
    CHECK(stats.blocks_read_ahead > 0);
    printf("one epoch, slow consumer: %lld block reads, %lld of them ahead\n",
           (long long)stats.blocks_read, (long long)stats.blocks_read_ahead);

    /* Two epochs: at most one read per block per epoch (the user-facing bound is 2). */
    run_options two = {.prefetch = 2, .total_global_steps = 2 * steps, .class_labels = true};
    stats = run_stream(data, &two);
    CHECK(stats.blocks_read <= 2 * block_count);

    /* Tiny caches are still correct (a block is read at most once per micro-batch). */
    for (int cache = 1; cache <= 3; cache += 2) {
        run_options tiny = {.prefetch = 2,
                            .first_global_step = 2,
                            .total_global_steps = steps,
                            .class_labels = true,
                            .cache_blocks = cache};
        stats = run_stream(data, &tiny);
        CHECK(stats.cache_blocks == cache);
    }
    /* A cache larger than the dataset is capped at its block count. */
    run_options huge = {
        .prefetch = 2, .total_global_steps = 3, .class_labels = true, .cache_blocks = 100000};
    stats = run_stream(data, &huge);
    CHECK(stats.cache_blocks == block_count);
}

/* Several shards, N not a multiple of block_rows, blocks straddling shard boundaries. */
static void test_multi_shard(dataset *shards, dataset *shards_targets) {
    int64_t rows = dataset_get_geometry(shards)->rows;
    CHECK(rows == 1003 && rows % CHUNK_ROWS != 0);
    CHECK(dataset_get_geometry(shards)->file_count == SHARDS);
    int64_t steps = rows / GLOBAL_BATCH;
    run_options o = {.prefetch = 3,
                     .first_global_step = steps - 2,
                     .total_global_steps = 2 * steps + 1,
                     .class_labels = true};
    stream_stats stats = run_stream(shards, &o);
    printf("shards: %lld block reads, %lld hits over %lld micro-batches\n",
           (long long)stats.blocks_read, (long long)stats.block_hits,
           (long long)stats.micro_batches);
    run_options tiny = {
        .prefetch = 2, .total_global_steps = steps, .class_labels = true, .cache_blocks = 1};
    run_stream(shards, &tiny);
    run_options in_order = {
        .prefetch = 2, .total_global_steps = steps, .class_labels = true, .no_shuffle = true};
    stats = run_stream(shards, &in_order);
    CHECK(stats.cache_blocks == 1);
    /* In file order with one cached block, each block this rank touches is read once. */
    CHECK(stats.blocks_read <= (rows + CHUNK_ROWS - 1) / CHUNK_ROWS);
    run_options targets = {.prefetch = 2, .total_global_steps = steps, .class_labels = false};
    run_stream(shards_targets, &targets);
}

/* stream_staging_bytes() is exactly what stream_open() allocates: measured with glibc's
 * allocation counters around a stream that reads nothing (total_global_steps 0). */
static void test_staging_bytes(dataset *wide) {
    const dataset_geometry *g = dataset_get_geometry(wide);
    shard_params p = plan_params(g->rows);
    shard_plan *plan;
    CHECK_OK(shard_plan_init(&p, &plan));
    int depth = 4;
    stream_params sp = {
        .data = wide, .plan = plan, .micro_batch = MICRO_BATCH, .prefetch_depth = depth};
    size_t expected = stream_staging_bytes(g, &p, depth, 0);
    /* At least the data buffers: slots (row ids, features, labels) and cached blocks. */
    size_t blocks = (size_t)expected_cache_blocks(&p, 0);
    size_t data_bytes =
        (size_t)depth * MICRO_BATCH *
            (sizeof(int64_t) + (size_t)g->features * sizeof(float) + sizeof(int32_t)) +
        blocks * CHUNK_ROWS * ((size_t)g->features * sizeof(float) + sizeof(int32_t));
    CHECK(expected >= data_bytes);
    CHECK(expected < data_bytes + 16384);
    CHECK(stream_staging_bytes(g, &p, depth, 3) < expected);
    CHECK(stream_staging_bytes(g, &p, 0, 0) == 0);
    CHECK(stream_staging_bytes(g, &p, depth, -1) == 0);

    struct mallinfo2 before = mallinfo2();
    stream *s;
    CHECK_OK(stream_open(&sp, &s));
    struct mallinfo2 after = mallinfo2();
    size_t allocated = (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
    stream_stats stats = stream_get_stats(s);
    CHECK(stats.staging_bytes == expected);
    /* The staging block plus the stream handle and malloc/mmap rounding. Sanitizers replace
     * malloc and leave mallinfo2 at zero: then there is nothing to compare. */
    if (after.uordblks + after.hblkhd > 0) {
        CHECK(allocated >= expected);
        CHECK(allocated < expected + 8192);
        printf("staging: %zu bytes computed, %zu allocated\n", expected, allocated);
    }
    stream_close(s);
    shard_plan_free(plan);
}

static void test_stop_early(dataset *data) {
    shard_params p = plan_params(ROWS);
    shard_plan *plan;
    CHECK_OK(shard_plan_init(&p, &plan));
    stream_params sp = {.data = data,
                        .plan = plan,
                        .micro_batch = MICRO_BATCH,
                        .total_global_steps = 1000,
                        .prefetch_depth = 2};

    /* Consumer stops after a few micro-batches, holding one, with the reader on a full ring. */
    stream *s;
    CHECK_OK(stream_open(&sp, &s));
    micro_batch *mb = NULL;
    for (int i = 0; i < 3; i++) {
        if (mb) stream_release(s, mb);
        CHECK_OK(stream_next(s, &mb));
    }
    sleep_seconds(0.05);
    double start = fixture_seconds();
    stream_close(s);
    double stop_seconds = fixture_seconds() - start;
    CHECK(stop_seconds < 0.5);

    /* Stop straight after start, nothing consumed. */
    CHECK_OK(stream_open(&sp, &s));
    start = fixture_seconds();
    stream_close(s);
    CHECK(fixture_seconds() - start < 0.5);
    stream_close(NULL);

    /* Invalid parameters are reported, nothing started. */
    sp.prefetch_depth = 1;
    s = (stream *)&sp;
    CHECK(stream_open(&sp, &s) == DDT_ERR_USAGE);
    CHECK(s == NULL);
    sp.prefetch_depth = 2;
    sp.cache_blocks = -1;
    CHECK(stream_open(&sp, &s) == DDT_ERR_USAGE);
    CHECK(s == NULL);
    sp.cache_blocks = 0;
    sp.micro_batch = MICRO_BATCH * 2;
    CHECK(stream_open(&sp, &s) == DDT_ERR_INTERNAL);
    shard_plan_free(plan);
}

/* A bad value in `bad_path` (part of `data`) at global row `bad_row`: every micro-batch before
 * the one holding the row arrives intact (even those using other rows of the bad block), and
 * that one fails naming the file. */
static void test_data_error(const char *bad_path, dataset *data, int64_t bad_row) {
    shard_params p = plan_params(dataset_get_geometry(data)->rows);
    fixture_stream f = {0};
    int64_t bad_sequence = -1, steps = 0;
    int k = 0;
    /* Where this rank meets the bad row in epoch 0 (every row appears at most once); if the
     * row went to the other rank or the dropped tail, rank 0's view. */
    for (int view = 0; view < 2 && bad_sequence < 0; view++) {
        p.rank = view == 0 ? RANK : 1 - RANK;
        CHECK_OK(fixture_stream_plan(&f, &p));
        steps = shard_plan_steps_per_epoch(f.plan);
        k = shard_plan_micro_batches_per_step(f.plan);
        int64_t rows[MICRO_BATCH];
        for (int64_t sequence = 0; bad_sequence < 0 && sequence < steps * k; sequence++) {
            CHECK_OK(fixture_stream_expected_rows(&f, sequence / k, (int)(sequence % k), rows));
            for (int i = 0; i < MICRO_BATCH; i++)
                if (rows[i] == bad_row) bad_sequence = sequence;
        }
    }
    CHECK(bad_sequence >= 0);

    CHECK_OK(fixture_stream_open(&f, (stream_params){.data = data,
                                                     .micro_batch = MICRO_BATCH,
                                                     .total_global_steps = steps,
                                                     .prefetch_depth = 3}));
    stream *s = f.stream;
    micro_batch *mb;
    int before_ok = 1;
    for (int64_t sequence = 0; sequence < bad_sequence; sequence++) {
        if (stream_next(s, &mb) != DDT_OK) {
            before_ok = 0;
            break;
        }
        before_ok &= batch_matches(&f, mb, sequence / k, (int)(sequence % k), true, FEATURES);
        stream_release(s, mb);
    }
    CHECK(before_ok);
    ddt_status status = stream_next(s, &mb);
    CHECK(status == DDT_ERR_DATA);
    CHECK(mb == NULL);
    const char *file_name = strrchr(bad_path, '/') + 1;
    CHECK(strstr(ddt_error_message(), file_name) != NULL);
    printf("data error: %s\n", ddt_error_message());
    char first_message[1024];
    snprintf(first_message, sizeof first_message, "%s", ddt_error_message());

    /* Later calls report the same error at once instead of hanging. */
    double start = fixture_seconds();
    CHECK(stream_next(s, &mb) == DDT_ERR_DATA);
    CHECK(stream_next(s, &mb) == DDT_ERR_DATA);
    CHECK(strcmp(ddt_error_message(), first_message) == 0);
    CHECK(fixture_seconds() - start < 0.1);
    fixture_stream_close(&f);
}

/* What stream_fit_staging() promises for one result: within the limit, exact, and every
 * derived value maximal (one more would not fit). `useful_window` is the window the derived
 * prefetch depth was fitted with (the given one, else 1). */
static void check_fit_maximal(const dataset_geometry *g, const shard_params *p, size_t limit,
                              const staging_fit *fit, bool depth_derived, bool window_derived,
                              int useful_window) {
    shard_params fitted = *p;
    fitted.window_blocks = fit->window_blocks;
    int64_t block_count = (p->rows + p->block_rows - 1) / p->block_rows;
    int full_cache = expected_cache_blocks(&fitted, 0);
    CHECK(fit->bytes == stream_staging_bytes(g, &fitted, fit->prefetch_depth, fit->cache_blocks));
    CHECK(fit->minimum_bytes == stream_staging_bytes(g, p, 2, 1));
    CHECK(fit->bytes <= limit);
    CHECK(fit->cache_blocks >= 1 && fit->cache_blocks <= block_count);
    CHECK(fit->prefetch_depth >= 2);
    /* The full cache is the stream's default, so cache_blocks 0 gives the same bytes. */
    if (fit->cache_blocks == full_cache)
        CHECK(fit->bytes == stream_staging_bytes(g, &fitted, fit->prefetch_depth, 0));
    if (depth_derived && fit->prefetch_depth < 4) {
        shard_params useful = *p;
        useful.window_blocks = useful_window;
        CHECK(stream_staging_bytes(g, p, fit->prefetch_depth + 1,
                                   expected_cache_blocks(&useful, 0)) > limit);
    }
    if (!p->shuffle) CHECK(fit->cache_blocks == 1);
    if (window_derived && p->shuffle) {
        if (fit->cache_blocks == full_cache) {
            if (fit->window_blocks < 16) {
                fitted.window_blocks = fit->window_blocks + 1;
                CHECK(stream_staging_bytes(g, p, fit->prefetch_depth,
                                           expected_cache_blocks(&fitted, 0)) > limit);
            }
        } else {
            /* Not even a window of one block with its full cache: the largest cache that fits. */
            CHECK(fit->window_blocks == 1);
            CHECK(fit->cache_blocks < full_cache);
            CHECK(stream_staging_bytes(g, p, fit->prefetch_depth, fit->cache_blocks + 1) > limit);
        }
    }
}

/* An MNIST-like geometry (784 features, blocks of 334 rows: 1.0 MiB; micro-batches of 128 rows:
 * 394 KiB) and its plan on rank 0 of 2, with a shuffle window of `window_blocks`. */
static void mnist_like(dataset_geometry *g, shard_params *p, int window_blocks) {
    *g = (dataset_geometry){.rows = 60000,
                            .features = 784,
                            .class_labels = true,
                            .labels_per_row = 1,
                            .target_width = 1,
                            .classes = 10,
                            .chunk_rows = 334,
                            .file_count = 1};
    *p = (shard_params){.rows = g->rows,
                        .global_batch = 512,
                        .micro_batch = 128,
                        .world_size = 2,
                        .rank = 0,
                        .seed = 1,
                        .shuffle = true,
                        .block_rows = 334,
                        .window_blocks = window_blocks};
}

/* The stream's bookkeeping does not grow with the dataset: the same staging bytes for 6 x 10^4
 * rows and for 10^12, and 2^40 blocks of one row are planned, not refused or multiplied. */
static void test_staging_independent_of_rows(void) {
    dataset_geometry g;
    shard_params p;
    mnist_like(&g, &p, 16);
    size_t small = stream_staging_bytes(&g, &p, 4, 0);
    dataset_geometry huge_geometry = g;
    shard_params huge = p;
    huge_geometry.rows = huge.rows = 1000000000000;
    CHECK(small > 0);
    CHECK(stream_staging_bytes(&huge_geometry, &huge, 4, 0) == small);
    staging_fit fit = {0}, huge_fit = {0};
    CHECK_OK(stream_fit_staging(0, &g, &p, &fit));
    CHECK_OK(stream_fit_staging(0, &huge_geometry, &huge, &huge_fit));
    CHECK(huge_fit.bytes == fit.bytes && huge_fit.cache_blocks == fit.cache_blocks);
    fit = (staging_fit){0};
    huge_fit = (staging_fit){0};
    CHECK_OK(stream_fit_staging(64u << 20, &g, &p, &fit));
    CHECK_OK(stream_fit_staging(64u << 20, &huge_geometry, &huge, &huge_fit));
    CHECK(huge_fit.bytes == fit.bytes && huge_fit.window_blocks == fit.window_blocks);

    /* One-row blocks of a 2^40-row file (the lying file of issue 10): a 33-block cache. */
    dataset_geometry narrow = {.rows = (int64_t)1 << 40,
                               .features = 8,
                               .class_labels = true,
                               .labels_per_row = 1,
                               .target_width = 1,
                               .classes = 3,
                               .chunk_rows = 1,
                               .file_count = 1};
    shard_params one_row = {.rows = narrow.rows,
                            .global_batch = 32,
                            .micro_batch = 32,
                            .world_size = 1,
                            .seed = 1,
                            .shuffle = true,
                            .block_rows = 1,
                            .window_blocks = 16};
    fit = (staging_fit){0};
    CHECK_OK(stream_fit_staging(0, &narrow, &one_row, &fit));
    CHECK(fit.cache_blocks == 33);
    CHECK(fit.bytes > 0 && fit.bytes < 16384);
    printf("staging: %zu bytes for 6e4 or 1e12 rows; %zu bytes for 2^40 one-row blocks\n", small,
           fit.bytes);
}

/* The "1.0 MiB" form the messages use (tests here stay in MiB). */
static void mib_text(size_t bytes, char *text, size_t size) {
    snprintf(text, size, "%.1f MiB", (double)bytes / 1048576.0);
}

/* stream_fit_staging() on the MNIST-like geometry, no dataset needed. */
static void test_fit_staging(void) {
    dataset_geometry g;
    shard_params p;
    mnist_like(&g, &p, 99 /* ignored */);
    const size_t mib = 1048576;
    char text[64];

    /* No limit: the defaults, or what is given. */
    staging_fit fit = {0};
    CHECK_OK(stream_fit_staging(0, &g, &p, &fit));
    CHECK(fit.prefetch_depth == 4 && fit.window_blocks == 16 && fit.cache_blocks == 33);
    shard_params defaults = p;
    defaults.window_blocks = 16;
    CHECK(fit.bytes == stream_staging_bytes(&g, &defaults, 4, 0));
    size_t minimum = fit.minimum_bytes;
    CHECK(minimum == stream_staging_bytes(&g, &p, 2, 1));
    fit = (staging_fit){.prefetch_depth = 64, .window_blocks = 40};
    CHECK_OK(stream_fit_staging(0, &g, &p, &fit));
    CHECK(fit.prefetch_depth == 64 && fit.window_blocks == 40 && fit.cache_blocks == 81);

    /* Below two micro-batches and a block: refused with the numbers. */
    fit = (staging_fit){0};
    CHECK(stream_fit_staging(1 * mib, &g, &p, &fit) == DDT_ERR_USAGE);
    const char *message = ddt_error_message();
    printf("fit: %s\n", message);
    CHECK(strstr(message, "--host-staging-limit 1.0 MiB cannot hold two micro-batches of 128 "
                          "rows (2 x 394 KiB), one 1.0 MiB block") != NULL);
    mib_text(minimum, text, sizeof text);
    CHECK(strstr(message, text) != NULL);
    CHECK(strstr(message, "--micro-batch") != NULL);
    CHECK(stream_fit_staging(minimum - 1, &g, &p, &fit) == DDT_ERR_USAGE);
    /* One byte short reads the same in MiB: the message gives exact bytes instead. */
    snprintf(text, sizeof text, "%zu bytes", minimum);
    CHECK(strstr(ddt_error_message(), text) != NULL);
    CHECK_OK(stream_fit_staging(minimum, &g, &p, &fit));
    CHECK(fit.prefetch_depth == 2 && fit.window_blocks == 1 && fit.cache_blocks == 1);
    CHECK(fit.bytes == minimum);

    /* Derived values over a sweep of limits: all fit and are maximal; from ~40 MiB up, the
     * defaults. Deterministic: the same limit gives the same result. */
    int previous_window = 0, previous_depth = 0;
    bool monotone = true;
    for (size_t limit = minimum; limit < 48 * mib; limit += 97 * 1024) {
        fit = (staging_fit){0};
        CHECK_OK(stream_fit_staging(limit, &g, &p, &fit));
        check_fit_maximal(&g, &p, limit, &fit, true, true, 1);
        staging_fit again = {0};
        CHECK_OK(stream_fit_staging(limit, &g, &p, &again));
        CHECK(memcmp(&fit, &again, sizeof fit) == 0);
        monotone &= fit.window_blocks >= previous_window && fit.prefetch_depth >= previous_depth;
        previous_window = fit.window_blocks;
        previous_depth = fit.prefetch_depth;
    }
    CHECK(monotone);
    CHECK(fit.prefetch_depth == 4 && fit.window_blocks == 16 && fit.cache_blocks == 33);
    fit = (staging_fit){0};
    CHECK_OK(stream_fit_staging(16 * mib, &g, &p, &fit));
    printf("fit: 16 MiB -> prefetch %d, window %d, cache %d blocks, %zu bytes\n",
           fit.prefetch_depth, fit.window_blocks, fit.cache_blocks, fit.bytes);
    CHECK(fit.prefetch_depth == 4 && fit.window_blocks == 6 && fit.cache_blocks == 13);

    /* A given prefetch depth is kept if it fits, the window derived around it... */
    fit = (staging_fit){.prefetch_depth = 12};
    CHECK_OK(stream_fit_staging(16 * mib, &g, &p, &fit));
    CHECK(fit.prefetch_depth == 12);
    check_fit_maximal(&g, &p, 16 * mib, &fit, false, true, 1);
    /* ... also when only a smaller cache than a window's full one is left. */
    size_t tight = stream_staging_bytes(&g, &p, 12, 2);
    fit = (staging_fit){.prefetch_depth = 12};
    CHECK_OK(stream_fit_staging(tight, &g, &p, &fit));
    CHECK(fit.prefetch_depth == 12 && fit.window_blocks == 1 && fit.cache_blocks == 2);
    check_fit_maximal(&g, &p, tight, &fit, false, true, 1);
    /* ... and refused, naming the option, if it does not. */
    fit = (staging_fit){.prefetch_depth = 64};
    CHECK(stream_fit_staging(16 * mib, &g, &p, &fit) == DDT_ERR_USAGE);
    message = ddt_error_message();
    printf("fit: %s\n", message);
    mib_text(stream_staging_bytes(&g, &p, 64, 1), text, sizeof text);
    CHECK(strstr(message, "--prefetch-depth 64 needs ") != NULL);
    CHECK(strstr(message, text) != NULL);
    CHECK(strstr(message, "more than --host-staging-limit 16.0 MiB") != NULL);

    /* A given window likewise, with its full cache; the depth derived for it. */
    fit = (staging_fit){.window_blocks = 3};
    CHECK_OK(stream_fit_staging(16 * mib, &g, &p, &fit));
    CHECK(fit.window_blocks == 3 && fit.cache_blocks == 7 && fit.prefetch_depth == 4);
    size_t window_limit = stream_staging_bytes(&g, &p, 3, 7) + 1000;
    fit = (staging_fit){.window_blocks = 3};
    CHECK_OK(stream_fit_staging(window_limit, &g, &p, &fit));
    CHECK(fit.window_blocks == 3 && fit.cache_blocks == 7 && fit.prefetch_depth == 3);
    check_fit_maximal(&g, &p, window_limit, &fit, true, false, 3);
    fit = (staging_fit){.window_blocks = 16};
    CHECK(stream_fit_staging(16 * mib, &g, &p, &fit) == DDT_ERR_USAGE);
    message = ddt_error_message();
    printf("fit: %s\n", message);
    CHECK(strstr(message, "--shuffle-window 16 needs ") != NULL);
    CHECK(strstr(message, "33 blocks") != NULL);
    /* Both given: each fits alone, not together. */
    fit = (staging_fit){.prefetch_depth = 8, .window_blocks = 6};
    CHECK(stream_fit_staging(16 * mib, &g, &p, &fit) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "--shuffle-window 6 with --prefetch-depth 8") != NULL);
    fit = (staging_fit){.prefetch_depth = 2, .window_blocks = 6};
    CHECK_OK(stream_fit_staging(16 * mib, &g, &p, &fit));
    CHECK(fit.prefetch_depth == 2 && fit.window_blocks == 6 && fit.cache_blocks == 13);

    /* Out of range. */
    fit = (staging_fit){.prefetch_depth = 1};
    CHECK(stream_fit_staging(16 * mib, &g, &p, &fit) == DDT_ERR_USAGE);
    fit = (staging_fit){.window_blocks = -1};
    CHECK(stream_fit_staging(16 * mib, &g, &p, &fit) == DDT_ERR_USAGE);

    /* No shuffle: one cached block, the window passed through, the depth from the limit. */
    shard_params in_order = p;
    in_order.shuffle = false;
    fit = (staging_fit){0};
    CHECK_OK(stream_fit_staging(4 * mib, &g, &in_order, &fit));
    CHECK(fit.cache_blocks == 1 && fit.window_blocks == 16 && fit.prefetch_depth == 4);
    check_fit_maximal(&g, &in_order, 4 * mib, &fit, true, true, 1);
    size_t three = stream_staging_bytes(&g, &in_order, 3, 1);
    fit = (staging_fit){.window_blocks = 5};
    CHECK_OK(stream_fit_staging(three, &g, &in_order, &fit));
    CHECK(fit.cache_blocks == 1 && fit.window_blocks == 5 && fit.prefetch_depth == 3);
    fit = (staging_fit){0};
    CHECK_OK(stream_fit_staging(0, &g, &in_order, &fit));
    CHECK(fit.cache_blocks == 1 && fit.prefetch_depth == 4);

    /* A dataset of 3 blocks: every window's cache is capped at 3, so the default window fits
     * as soon as 3 blocks do. */
    shard_params small = p;
    small.rows = 1000;
    dataset_geometry small_geometry = g;
    small_geometry.rows = 1000;
    size_t three_blocks = stream_staging_bytes(&small_geometry, &small, 4, 3);
    fit = (staging_fit){0};
    CHECK_OK(stream_fit_staging(three_blocks, &small_geometry, &small, &fit));
    CHECK(fit.prefetch_depth == 4 && fit.window_blocks == 16 && fit.cache_blocks == 3);
    CHECK(fit.bytes == three_blocks);
}

/* Bytes the allocator hands out for stream_open() with this configuration: a stream with no
 * steps, so the reader thread reads nothing (HDF5's own transient buffers stay out); 0 under
 * sanitizers, which leave mallinfo2 at zero. */
static size_t measured_start_bytes(dataset *data, shard_plan *plan, const staging_fit *fit) {
    stream_params sp = {.data = data,
                        .plan = plan,
                        .micro_batch = MICRO_BATCH,
                        .prefetch_depth = fit->prefetch_depth,
                        .cache_blocks = fit->cache_blocks};
    struct mallinfo2 before = mallinfo2();
    stream *s;
    CHECK_OK(stream_open(&sp, &s));
    struct mallinfo2 after = mallinfo2();
    stream_close(s);
    if (after.uordblks + after.hblkhd == 0) return 0;
    return (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
}

/* A tight limit on the wide dataset (600 rows of 200 features, blocks of 16 rows: 12.6 KiB,
 * micro-batches 6.4 KiB): the fitted stream delivers the right rows and its staging in use
 * never passes the limit with a fast reader and a slow consumer (the ring stays full and the
 * reader reads ahead), and with a slow reader and a fast consumer. */
static void test_staging_limit(dataset *wide) {
    const dataset_geometry *g = dataset_get_geometry(wide);
    shard_params p = plan_params(g->rows);
    staging_fit probe = {0};
    CHECK_OK(stream_fit_staging(0, g, &p, &probe));
    size_t block = stream_staging_bytes(g, &p, 2, 2) - stream_staging_bytes(g, &p, 2, 1);
    /* Roughly 4 and 2 blocks' worth past the minimum of 2 slots and 1 block; the 8 KiB keep
     * the allocator's rounding inside the limit when it is measured. */
    size_t limits[2] = {probe.minimum_bytes + 3 * block + 8192, probe.minimum_bytes + block + 8192};
    int64_t steps = g->rows / GLOBAL_BATCH; /* 9: one epoch */
    for (int i = 0; i < 2; i++) {
        staging_fit fit = {0};
        CHECK_OK(stream_fit_staging(limits[i], g, &p, &fit));
        /* 4 slots and the full cache of a 1-block window; then 2 slots and a 2-block cache. */
        if (i == 0)
            CHECK(fit.prefetch_depth == 4 && fit.window_blocks == 1 && fit.cache_blocks == 3);
        if (i == 1)
            CHECK(fit.prefetch_depth == 2 && fit.window_blocks == 1 && fit.cache_blocks == 2);
        shard_params fitted = p;
        fitted.window_blocks = fit.window_blocks;
        shard_plan *plan;
        CHECK_OK(shard_plan_init(&fitted, &plan));
        size_t allocated = measured_start_bytes(wide, plan, &fit);
        shard_plan_free(plan);
        if (allocated > 0) CHECK(allocated >= fit.bytes && allocated <= limits[i]);

        run_options fast_reader = {.prefetch = fit.prefetch_depth,
                                   .total_global_steps = steps,
                                   .consumer_delay = 0.001,
                                   .class_labels = true,
                                   .cache_blocks = fit.cache_blocks,
                                   .window_blocks = fit.window_blocks};
        stream_stats stats = run_stream(wide, &fast_reader);
        CHECK(stats.staging_bytes == fit.bytes);
        CHECK(stats.peak_staging_bytes_in_use <= limits[i]);
        /* The ring filled up and the cache too: the peak is the whole allocation. */
        CHECK(stats.peak_staging_bytes_in_use == stats.staging_bytes);
        printf("limit %zu: prefetch %d, cache %d; slow consumer: peak %zu in use of %zu "
               "(allocated %zu), %lld reads\n",
               limits[i], fit.prefetch_depth, fit.cache_blocks, stats.peak_staging_bytes_in_use,
               stats.staging_bytes, allocated, (long long)stats.blocks_read);

        run_options slow_reader = fast_reader;
        slow_reader.consumer_delay = 0;
        slow_reader.slow_reader = true;
        stats = run_stream(wide, &slow_reader);
        CHECK(stats.staging_bytes == fit.bytes);
        CHECK(stats.peak_staging_bytes_in_use <= limits[i]);
        CHECK(stats.wait_seconds > 0.002);
        printf("limit %zu: slow reader: peak %zu in use, waited %.4f s, %lld reads\n", limits[i],
               stats.peak_staging_bytes_in_use, stats.wait_seconds, (long long)stats.blocks_read);
    }
}

int main(void) {
    test_fit_staging();
    test_staging_independent_of_rows();
    const char *path = fixture_path("stream.h5"), *targets_path = fixture_path("stream-targets.h5");
    const char *bad_path = fixture_path("stream-nan.h5"),
               *wide_path = fixture_path("stream-wide.h5");
    CHECK_OK(write_rows(path, 0, ROWS, FEATURES, true));
    CHECK_OK(write_rows(targets_path, 0, ROWS, FEATURES, false));
    CHECK_OK(write_rows(bad_path, 0, ROWS, FEATURES, true));
    float nan = NAN;
    fixture_h5_poke(bad_path, "features", 500, 1, H5T_NATIVE_FLOAT, &nan);
    CHECK_OK(write_rows(wide_path, 0, 600, 200, true));

    /* Three multi-shard datasets: class labels, targets, and a bad label in the last shard. */
    const char *kinds[3] = {"labels", "targets", "bad"};
    const char *shard_paths[3][SHARDS], *specs[3];
    const int64_t bad_label_row = 333 + 401 + 100;
    for (int kind = 0; kind < 3; kind++) {
        int64_t first = 0;
        for (int i = 0; i < SHARDS; i++) {
            shard_paths[kind][i] = fixture_path(fixture_text("stream-%s-%d.h5", kinds[kind], i));
            CHECK_OK(write_rows(shard_paths[kind][i], first, shard_rows[i], FEATURES, kind != 1));
            first += shard_rows[i];
        }
        specs[kind] = fixture_text("%s,%s,%s", shard_paths[kind][0], shard_paths[kind][1],
                                   shard_paths[kind][2]);
    }
    int32_t bad_label = CLASSES;
    fixture_h5_poke(shard_paths[2][2], "labels", (hsize_t)(bad_label_row - 333 - 401), 0,
                    H5T_NATIVE_INT32, &bad_label);

    dataset *data = NULL, *data_targets = NULL, *bad = NULL, *wide = NULL;
    dataset *shards = NULL, *shards_targets = NULL, *shards_bad = NULL;
    CHECK_OK(dataset_open(path, &data));
    CHECK_OK(dataset_open(targets_path, &data_targets));
    CHECK_OK(dataset_open(bad_path, &bad));
    CHECK_OK(dataset_open(wide_path, &wide));
    CHECK_OK(dataset_open(specs[0], &shards));
    CHECK_OK(dataset_open(specs[1], &shards_targets));
    CHECK_OK(dataset_open(specs[2], &shards_bad));
    if (data && data_targets && bad && wide && shards && shards_targets && shards_bad) {
        test_sequences(data, data_targets);
        test_block_reads(data);
        test_multi_shard(shards, shards_targets);
        test_staging_bytes(wide);
        test_staging_limit(wide);
        test_stop_early(data);
        test_data_error(bad_path, bad, 500);
        test_data_error(shard_paths[2][2], shards_bad, bad_label_row);
    }
    dataset *opened[] = {shards_bad, shards_targets, shards, wide, bad, data_targets, data};
    for (size_t i = 0; i < sizeof opened / sizeof *opened; i++)
        if (opened[i]) dataset_close(opened[i]);
    return check_finish();
}
