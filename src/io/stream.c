/* stream.c - the reader thread, the block cache and the bounded ring of micro-batch slots
 * behind stream.h.
 *
 * Thread ownership:
 *   - The reader thread alone uses `plan` (not thread-safe), the block cache and the sort
 *     scratch, and fills slots. A slot in state SLOT_FREE belongs to the reader: it writes the
 *     slot's buffers without the lock, then publishes it (SLOT_FILLED) under the lock.
 *   - The consumer (the thread calling stream_next/stream_release/stream_close; one thread)
 *     takes a SLOT_FILLED slot (-> SLOT_TAKEN), reads its buffers without the lock, and gives
 *     it back (-> SLOT_FREE).
 *   - Everything else shared (slot states, counters, the error, `stopping`, the timings the
 *     reader adds to) is read and written only under `lock`. Waiting is on two condition
 *     variables, never by polling: the reader waits on `slot_freed`, the consumer on
 *     `batch_ready`. stream_close() sets `stopping` and wakes both, so the reader leaves a wait
 *     on a full ring at once, or after the block read in progress (it looks at `stopping`
 *     before each block read).
 *
 * Filling a slot: the micro-batch's rows (plan order) are grouped by block with a heap sort of
 * keys block * b + i (no allocation, unlike qsort); each block is looked up in the cache
 * (read on a miss, once per micro-batch at most, so any cache size is correct) and its rows
 * are copied to their plan positions. The lookup is a small hash table from block number to
 * cache entry (open addressing, linear probing, at least twice as many slots as entries), so
 * the bookkeeping grows with the cache, never with the dataset's blocks.
 *
 * Eviction: least recently used, where "when" is the plan position of the block's last use
 * (micro-batch sequence * b + index), not the order blocks happen to be processed. Within an
 * epoch this rank's positions only increase and every block lives in one window, so a block
 * of a window the positions have left is older than every block still needed. A miss while
 * reading windows w and w+1 finds at most 2 x window_blocks - 1 needed blocks cached, so a
 * cache of 2 x window_blocks + 1 always holds a dead block (or a free entry) to evict: no
 * block is read twice in an epoch as long as a micro-batch spans at most two windows.
 *
 * Read-ahead: instead of sleeping on a full ring, the reader reads the blocks of the next
 * micro-batches one at a time (stream_read_ahead), stamping them with their planned use, and
 * sleeps on `slot_freed` only when nothing is left to read ahead.
 *
 * All memory, the handle included, is one allocation made by stream_open() (layout in
 * stream_layout_for()); nothing is allocated per micro-batch.
 *
 * Staging in use (stream_stats): counted under `lock` as slots_in_use (a slot from the moment
 * the reader claims it for filling until stream_release) and blocks_in_use (cache entries
 * holding a block or loading one), each bounded by the allocation, so the peak can never pass
 * stream_staging_bytes().
 */
#include "io/stream.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/checked.h"
#include "util/clock.h"
#include "util/rng.h"

/* Each array starts on its own cache line (and SIMD-friendly boundary). */
#define STREAM_ALIGNMENT 64

typedef enum slot_state {
    SLOT_FREE,   /* owned by the reader, may be (re)filled */
    SLOT_FILLED, /* published, waiting for the consumer */
    SLOT_TAKEN,  /* handed to the consumer by stream_next, until stream_release */
} slot_state;

typedef struct stream_slot {
    micro_batch batch;
    int64_t sequence; /* micro-batch number since the stream started */
    slot_state state;
} stream_slot;

/* One cached block; reader-only. */
typedef struct cache_entry {
    int64_t block;     /* block number, -1 if the entry is free */
    uint64_t last_use; /* sequence * b + index + 1 of its latest use (or planned use) */
    bool bad;          /* a value failed validation: rows are read one by one instead */
    void *inputs;      /* block_rows x D features, or x T token ids (4 bytes each) */
    int32_t *labels;   /* block_rows x labels_per_row, for class labels (else NULL) */
    float *targets;    /* block_rows x K, for float targets (else NULL) */
} cache_entry;

struct stream {
    stream_params params;
    int micro_batches_per_step;
    int64_t steps_per_epoch;
    int64_t total_micro_batches;
    int64_t block_rows;  /* the plan's, capped at N */
    int64_t block_count; /* ceil(N / block_rows) */
    int cache_blocks;    /* resolved entries in `entries` */
    uint64_t index_mask; /* index slots - 1 (a power of two) */

    /* The handle itself starts the one allocation; the pointers below point into it. */
    size_t staging_bytes;
    size_t fixed_bytes;   /* handle and bookkeeping: in use from start to stop */
    size_t slot_bytes;    /* one slot's row ids, features, labels/targets */
    size_t block_bytes;   /* one cached block's features, labels/targets */
    stream_slot *slots;   /* prefetch_depth entries */
    cache_entry *entries; /* cache_blocks entries (reader-only) */
    int32_t *block_index; /* index_mask + 1 slots: an entry holding a block, or -1 (reader-only) */
    uint64_t *sort_keys;  /* micro_batch: block * b + i (reader-only scratch) */
    int64_t *ahead_rows;  /* micro_batch: rows of micro-batch ahead_sequence (reader-only) */

    /* Read-ahead, reader-only: see stream_read_ahead(). */
    bool read_ahead;         /* enabled: shuffled plan and a cache of the default size */
    int64_t min_window_rows; /* fewest rows a window of the plan can have */
    int64_t ahead_sequence;  /* micro-batch whose blocks are being read ahead */
    int ahead_index;         /* next row of it to look at; -1: ahead_rows not loaded */

    pthread_t reader;
    pthread_mutex_t lock;
    pthread_cond_t slot_freed;  /* reader waits: a slot became free, or stopping */
    pthread_cond_t batch_ready; /* consumer waits: a slot was filled, an error, reader done */

    /* Shared, under `lock`. */
    bool stopping;
    bool reader_done;
    bool failed;
    int64_t error_sequence;
    ddt_status error_status;
    char error_message[1024];
    double read_seconds;
    int64_t blocks_read;
    int64_t blocks_read_ahead;
    int64_t block_hits;
    int slots_in_use;  /* being filled, filled or taken */
    int blocks_in_use; /* cache entries holding or loading a block */
    size_t peak_bytes_in_use;

    /* Consumer-only, but read by stream_get_stats under `lock` as well. */
    int64_t consumed;
    double wait_seconds;
};

/* Sizes come from a file (its chunk rows) and options: they saturate at SIZE_MAX
 * (util/checked.h), which no staging limit admits and no allocation gets, rather than wrap. */
static size_t round_up(size_t bytes) {
    if (bytes > SIZE_MAX - (STREAM_ALIGNMENT - 1)) return SIZE_MAX;
    return (bytes + STREAM_ALIGNMENT - 1) / STREAM_ALIGNMENT * STREAM_ALIGNMENT;
}

static size_t times(size_t a, size_t b) {
    return saturated_multiply_size(a, b);
}

static size_t plus(size_t a, size_t b) {
    return saturated_add_size(a, b);
}

/* Byte sizes of the arrays of one group of `rows` rows (a slot or a cached block), each
 * rounded to the alignment; row_ids only for slots. */
typedef struct rows_layout {
    size_t row_ids, features, labels, targets, total;
} rows_layout;

static rows_layout rows_layout_for(const dataset_geometry *geometry, int64_t rows_count,
                                   bool with_row_ids) {
    size_t rows = (size_t)rows_count;
    rows_layout layout = {0};
    if (with_row_ids) layout.row_ids = round_up(times(rows, sizeof(int64_t)));
    /* float32 features or int32 token ids: 4 bytes a value either way */
    layout.features = round_up(times(times(rows, (size_t)geometry->features), sizeof(float)));
    if (geometry->class_labels)
        layout.labels =
            round_up(times(times(rows, (size_t)geometry->labels_per_row), sizeof(int32_t)));
    else
        layout.targets =
            round_up(times(times(rows, (size_t)geometry->target_width), sizeof(float)));
    layout.total = plus(plus(layout.row_ids, layout.features), plus(layout.labels, layout.targets));
    return layout;
}

/* The one allocation: the handle, slot structs, entry structs, block index, sort keys,
 * read-ahead rows, slot buffers, block buffers, in that order. */
typedef struct stream_layout {
    int64_t block_rows, block_count;
    int cache_blocks;
    size_t index_slots; /* a power of two >= 2 x cache_blocks */
    rows_layout slot, block;
    size_t handle, slots, entries, block_index, sort_keys, ahead_rows, total;
} stream_layout;

/* Everything but the slot and block buffers. */
static size_t stream_layout_fixed(const stream_layout *layout) {
    return plus(
        plus(plus(layout->handle, layout->slots), plus(layout->entries, layout->block_index)),
        plus(layout->sort_keys, layout->ahead_rows));
}

/* Resolves block geometry and the cache size; false if the parameters are out of range. */
static bool stream_layout_for(const dataset_geometry *geometry, const shard_params *plan,
                              int prefetch_depth, int cache_blocks, stream_layout *out) {
    if (!geometry || !plan || plan->rows <= 0 || plan->micro_batch <= 0 || plan->block_rows <= 0 ||
        plan->window_blocks <= 0 || prefetch_depth <= 0 || cache_blocks < 0)
        return false;
    stream_layout layout = {0};
    layout.block_rows = plan->block_rows < plan->rows ? plan->block_rows : plan->rows;
    layout.block_count = (plan->rows + layout.block_rows - 1) / layout.block_rows;
    /* Sort keys are block * b + i; cache entries are numbered by int32. */
    if ((uint64_t)layout.block_count > UINT64_MAX / (uint64_t)plan->micro_batch) return false;
    int64_t blocks = cache_blocks;
    if (blocks == 0) blocks = plan->shuffle ? 2 * (int64_t)plan->window_blocks + 1 : 1;
    if (blocks > layout.block_count) blocks = layout.block_count;
    if (blocks > INT32_MAX / 4) return false;
    layout.cache_blocks = (int)blocks;
    layout.index_slots = 2;
    while (layout.index_slots < 2 * (size_t)blocks)
        layout.index_slots *= 2;
    layout.slot = rows_layout_for(geometry, plan->micro_batch, true);
    layout.block = rows_layout_for(geometry, layout.block_rows, false);
    layout.handle = round_up(sizeof(stream));
    layout.slots = round_up((size_t)prefetch_depth * sizeof(stream_slot));
    layout.entries = round_up((size_t)layout.cache_blocks * sizeof(cache_entry));
    layout.block_index = round_up(layout.index_slots * sizeof(int32_t));
    layout.sort_keys = round_up((size_t)plan->micro_batch * sizeof(uint64_t));
    layout.ahead_rows = round_up((size_t)plan->micro_batch * sizeof(int64_t));
    layout.total = plus(stream_layout_fixed(&layout),
                        plus(times(layout.slot.total, (size_t)prefetch_depth),
                             times(layout.block.total, (size_t)layout.cache_blocks)));
    *out = layout;
    return true;
}

size_t stream_staging_bytes(const dataset_geometry *geometry, const shard_params *plan,
                            int prefetch_depth, int cache_blocks) {
    stream_layout layout;
    if (!stream_layout_for(geometry, plan, prefetch_depth, cache_blocks, &layout)) return 0;
    return layout.total;
}

/* Staging-limit fitting: see stream_fit_staging() in stream.h for the rule. */
enum { STREAM_DEFAULT_PREFETCH = 4, STREAM_DEFAULT_WINDOW = 16 };

/* "401 KiB", "2.8 MiB", "25.1 MiB": binary units, one decimal below 100 of a unit. */
static void format_bytes(size_t bytes, char *text, size_t size) {
    static const char *units[] = {"KiB", "MiB", "GiB", "TiB"};
    if (bytes < 1024) {
        snprintf(text, size, "%zu B", bytes);
        return;
    }
    double value = (double)bytes / 1024;
    size_t unit = 0;
    while (value >= 1024 && unit + 1 < sizeof units / sizeof *units) {
        value /= 1024;
        unit++;
    }
    snprintf(text, size, value >= 100 ? "%.0f %s" : "%.1f %s", value, units[unit]);
}

/* Formats a need and a limit; exact byte counts when the short forms would read the same. */
static void format_need_and_limit(size_t need, size_t limit, char *need_text, char *limit_text,
                                  size_t size) {
    format_bytes(need, need_text, size);
    format_bytes(limit, limit_text, size);
    if (strcmp(need_text, limit_text) == 0) {
        snprintf(need_text, size, "%zu bytes", need);
        snprintf(limit_text, size, "%zu bytes", limit);
    }
}

/* What the fitting rule looks at: the plan with a fixed window (the cache size is always
 * explicit here, so the window does not change the bytes) and the block count. */
typedef struct fit_context {
    const dataset_geometry *geometry;
    shard_params plan;
    int64_t block_count;
} fit_context;

static size_t fit_bytes(const fit_context *c, int prefetch_depth, int64_t cache_blocks) {
    if (cache_blocks > c->block_count) cache_blocks = c->block_count;
    return stream_staging_bytes(c->geometry, &c->plan, prefetch_depth, (int)cache_blocks);
}

/* The cache that reads each block once per epoch for a window of `window` blocks. */
static int64_t fit_full_cache(const fit_context *c, int64_t window) {
    int64_t blocks = c->plan.shuffle ? 2 * window + 1 : 1;
    return blocks < c->block_count ? blocks : c->block_count;
}

ddt_status stream_fit_staging(size_t limit_bytes, const dataset_geometry *geometry,
                              const shard_params *plan, staging_fit *fit) {
    if (!geometry || !plan || !fit)
        return ddt_error(DDT_ERR_INTERNAL, "stream_fit_staging needs a geometry, a plan and a fit");
    int given_depth = fit->prefetch_depth, given_window = fit->window_blocks;
    if (given_depth < 0 || given_depth == 1)
        return ddt_error(DDT_ERR_USAGE, "--prefetch-depth must be at least 2 (got %d)",
                         given_depth);
    if (given_window < 0)
        return ddt_error(DDT_ERR_USAGE, "--shuffle-window must be at least 1 (got %d)",
                         given_window);
    fit_context c = {.geometry = geometry, .plan = *plan};
    c.plan.window_blocks = 1;
    stream_layout layout;
    if (!stream_layout_for(geometry, &c.plan, 2, 1, &layout))
        return ddt_error(DDT_ERR_USAGE,
                         "cannot size the stream for %" PRId64 " rows in blocks of %" PRId64
                         " rows and micro-batches of %d rows; use larger blocks",
                         plan->rows, plan->block_rows, plan->micro_batch);
    c.block_count = layout.block_count;
    fit->minimum_bytes = layout.total;
    char need_text[48], limit_text[48];

    int depth = given_depth, window = given_window;
    int64_t cache;
    if (limit_bytes == 0) {
        if (!depth) depth = STREAM_DEFAULT_PREFETCH;
        if (!window) window = STREAM_DEFAULT_WINDOW;
        cache = fit_full_cache(&c, window);
        goto done;
    }

    /* 1. Two micro-batches and one block. */
    if (fit->minimum_bytes > limit_bytes) {
        char slot_text[48], block_text[48], bookkeeping_text[48];
        format_need_and_limit(fit->minimum_bytes, limit_bytes, need_text, limit_text,
                              sizeof need_text);
        format_bytes(layout.slot.total, slot_text, sizeof slot_text);
        format_bytes(layout.block.total, block_text, sizeof block_text);
        format_bytes(stream_layout_fixed(&layout), bookkeeping_text, sizeof bookkeeping_text);
        return ddt_error(DDT_ERR_USAGE,
                         "--host-staging-limit %s cannot hold two micro-batches of %d rows "
                         "(2 x %s), one %s block of the block cache (%" PRId64
                         " rows) and %s of bookkeeping: it needs at least %s; raise "
                         "--host-staging-limit, lower --micro-batch, or use a dataset with "
                         "smaller chunks",
                         limit_text, plan->micro_batch, slot_text, block_text, layout.block_rows,
                         bookkeeping_text, need_text);
    }

    /* 2. Given values must fit. */
    if (given_depth && fit_bytes(&c, given_depth, 1) > limit_bytes) {
        size_t need = fit_bytes(&c, given_depth, 1);
        format_need_and_limit(need, limit_bytes, need_text, limit_text, sizeof need_text);
        return ddt_error(DDT_ERR_USAGE,
                         "--prefetch-depth %d needs %s of staging, more than --host-staging-limit "
                         "%s; lower --prefetch-depth or leave it out to derive it from the limit",
                         given_depth, need_text, limit_text);
    }
    if (given_window && plan->shuffle) {
        int64_t given_cache = fit_full_cache(&c, given_window);
        size_t need = fit_bytes(&c, given_depth ? given_depth : 2, given_cache);
        if (need > limit_bytes) {
            format_need_and_limit(need, limit_bytes, need_text, limit_text, sizeof need_text);
            char depth_text[48] = "";
            if (given_depth)
                snprintf(depth_text, sizeof depth_text, " with --prefetch-depth %d", given_depth);
            return ddt_error(DDT_ERR_USAGE,
                             "--shuffle-window %d%s needs %s of staging (a block cache of %" PRId64
                             " blocks of %" PRId64 " rows), more than --host-staging-limit %s; "
                             "lower --shuffle-window or leave it out to derive it from the limit",
                             given_window, depth_text, need_text, given_cache, layout.block_rows,
                             limit_text);
        }
    }

    /* 3. Prefetch depth: the default if it fits with a useful cache, else less. */
    int64_t useful_cache = fit_full_cache(&c, given_window ? given_window : 1);
    if (!depth) {
        for (depth = STREAM_DEFAULT_PREFETCH; depth > 2; depth--)
            if (fit_bytes(&c, depth, useful_cache) <= limit_bytes) break;
    }

    /* 4. and 5. The window and the cache. */
    if (window) {
        cache = fit_full_cache(&c, window);
    } else if (!plan->shuffle) {
        window = STREAM_DEFAULT_WINDOW;
        cache = 1;
    } else {
        for (window = STREAM_DEFAULT_WINDOW; window > 1; window--)
            if (fit_bytes(&c, depth, fit_full_cache(&c, window)) <= limit_bytes) break;
        cache = fit_full_cache(&c, window);
        while (cache > 1 && fit_bytes(&c, depth, cache) > limit_bytes)
            cache--;
    }

done:
    fit->prefetch_depth = depth;
    fit->window_blocks = window;
    fit->cache_blocks = (int)cache;
    fit->bytes = fit_bytes(&c, depth, cache);
    return DDT_OK;
}

static void sift_down(uint64_t *keys, size_t root, size_t count) {
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= count) return;
        if (child + 1 < count && keys[child + 1] > keys[child]) child++;
        if (keys[root] >= keys[child]) return;
        uint64_t swap = keys[root];
        keys[root] = keys[child];
        keys[child] = swap;
        root = child;
    }
}

/* In place, no allocation, O(n log n) worst case. */
static void sort_keys(uint64_t *keys, size_t count) {
    if (count < 2) return;
    for (size_t i = count / 2; i-- > 0;)
        sift_down(keys, i, count);
    for (size_t end = count - 1; end > 0; end--) {
        uint64_t swap = keys[0];
        keys[0] = keys[end];
        keys[end] = swap;
        sift_down(keys, 0, end);
    }
}

/* Under `lock`. */
static size_t stream_bytes_in_use(const stream *s) {
    return s->fixed_bytes + (size_t)s->slots_in_use * s->slot_bytes +
           (size_t)s->blocks_in_use * s->block_bytes;
}

/* Under `lock`, after slots_in_use or blocks_in_use grew. */
static void stream_note_peak(stream *s) {
    size_t in_use = stream_bytes_in_use(s);
    if (in_use > s->peak_bytes_in_use) s->peak_bytes_in_use = in_use;
}

/* Block counters of one fill or read-ahead, added to the shared ones under the lock. */
typedef struct fill_counts {
    int64_t blocks_read, blocks_read_ahead, block_hits;
} fill_counts;

/* The block index: block number -> cache entry, open addressing with linear probing. Reader
 * thread only. */
static uint64_t block_index_home(const stream *s, int64_t block) {
    return rng_splitmix64((uint64_t)block) & s->index_mask;
}

/* The entry holding `block`, or -1. */
static int32_t block_index_find(const stream *s, int64_t block) {
    for (uint64_t i = block_index_home(s, block);; i = (i + 1) & s->index_mask) {
        int32_t entry = s->block_index[i];
        if (entry < 0 || s->entries[entry].block == block) return entry;
    }
}

/* Records that entry `entry` holds `block` (not yet in the index). Never full: there are at
 * least twice as many slots as entries. */
static void block_index_insert(stream *s, int64_t block, int32_t entry) {
    uint64_t i = block_index_home(s, block);
    while (s->block_index[i] >= 0)
        i = (i + 1) & s->index_mask;
    s->block_index[i] = entry;
}

/* Forgets `block` (held by an entry whose .block is still `block`): empties its slot and
 * moves later members of the probe run back, so every lookup still finds its block. */
static void block_index_remove(stream *s, int64_t block) {
    uint64_t hole = block_index_home(s, block);
    while (s->entries[s->block_index[hole]].block != block)
        hole = (hole + 1) & s->index_mask;
    for (uint64_t next = (hole + 1) & s->index_mask; s->block_index[next] >= 0;
         next = (next + 1) & s->index_mask) {
        uint64_t home = block_index_home(s, s->entries[s->block_index[next]].block);
        /* It may fill the hole unless its home lies cyclically in (hole, next]. */
        bool home_after_hole =
            hole <= next ? hole < home && home <= next : hole < home || home <= next;
        if (home_after_hole) continue;
        s->block_index[hole] = s->block_index[next];
        hole = next;
    }
    s->block_index[hole] = -1;
}

/* Reader thread: reads `block` into the least recently used cache entry (a free one first)
 * and returns that entry. */
static ddt_status stream_cache_load(stream *s, int64_t block, cache_entry **out,
                                    fill_counts *counts) {
    int victim = 0;
    for (int i = 0; i < s->cache_blocks; i++) {
        if (s->entries[i].block < 0) {
            victim = i;
            break;
        }
        if (s->entries[i].last_use < s->entries[victim].last_use) victim = i;
    }
    cache_entry *entry = &s->entries[victim];
    bool was_free = entry->block < 0;
    if (!was_free) block_index_remove(s, entry->block);
    entry->block = -1;
    entry->bad = false;
    entry->last_use = 0;
    /* The entry is in use while it loads; it drops out if the load does not happen or fails. */
    pthread_mutex_lock(&s->lock);
    bool stopping = s->stopping;
    if (stopping && !was_free) s->blocks_in_use--;
    if (!stopping && was_free) {
        s->blocks_in_use++;
        stream_note_peak(s);
    }
    pthread_mutex_unlock(&s->lock);
    if (stopping) return ddt_error(DDT_ERR_INTERNAL, "the stream was stopped during a read");

    int64_t first = block * s->block_rows;
    int64_t rows = dataset_get_geometry(s->params.data)->rows - first;
    if (rows > s->block_rows) rows = s->block_rows;
    ddt_status status = dataset_read_range(s->params.data, first, (int)rows, entry->inputs,
                                           entry->labels, entry->targets);
    counts->blocks_read++;
    /* A bad value: keep the block, marked, so the micro-batch holding the bad row is the one
     * that fails (stream_copy_rows reads such a block's rows one by one). */
    if (status == DDT_ERR_DATA) {
        entry->bad = true;
        ddt_error_clear();
    } else if (status != DDT_OK) {
        pthread_mutex_lock(&s->lock);
        s->blocks_in_use--;
        pthread_mutex_unlock(&s->lock);
        ddt_error_trace(__FILE__, __LINE__);
        return status;
    }
    entry->block = block;
    block_index_insert(s, block, victim);
    *out = entry;
    return DDT_OK;
}

/* Stamps `entry` with a use at `use` (sequence * b + index + 1), keeping the latest. */
static void stream_cache_touch(cache_entry *entry, uint64_t use) {
    if (use > entry->last_use) entry->last_use = use;
}

/* Reader thread: copies the rows of `batch` whose keys are keys[0..count) (all in the block of
 * `entry`) from the cache to their places in the batch. */
static ddt_status stream_copy_rows(stream *s, const cache_entry *entry, const uint64_t *keys,
                                   size_t count, micro_batch *batch) {
    const dataset_geometry *geometry = dataset_get_geometry(s->params.data);
    size_t input_bytes = (size_t)geometry->features * 4; /* float32 or int32 */
    size_t labels = (size_t)geometry->labels_per_row, width = (size_t)geometry->target_width;
    char *inputs = batch->features ? (char *)batch->features : (char *)batch->tokens;
    uint64_t b = (uint64_t)batch->rows;
    int64_t first = entry->block * s->block_rows;
    for (size_t k = 0; k < count; k++) {
        size_t i = (size_t)(keys[k] % b);
        char *inputs_out = inputs + i * input_bytes;
        int32_t *label_out = batch->labels ? batch->labels + i * labels : NULL;
        float *targets_out = batch->targets ? batch->targets + i * width : NULL;
        if (entry->bad) {
            DDT_CHECK(dataset_read_range(s->params.data, batch->row_ids[i], 1, inputs_out,
                                         label_out, targets_out));
            continue;
        }
        size_t offset = (size_t)(batch->row_ids[i] - first);
        memcpy(inputs_out, (const char *)entry->inputs + offset * input_bytes, input_bytes);
        if (label_out) memcpy(label_out, entry->labels + offset * labels, labels * sizeof(int32_t));
        if (targets_out)
            memcpy(targets_out, entry->targets + offset * width, width * sizeof(float));
    }
    return DDT_OK;
}

/* Reader thread: fills a free slot with micro-batch `sequence`. */
static ddt_status stream_fill_slot(stream *s, stream_slot *slot, int64_t sequence,
                                   fill_counts *counts) {
    micro_batch *batch = &slot->batch;
    int64_t global_step = s->params.first_global_step + sequence / s->micro_batches_per_step;
    batch->global_step = global_step;
    batch->epoch = global_step / s->steps_per_epoch;
    batch->step = global_step % s->steps_per_epoch;
    batch->micro_index = (int)(sequence % s->micro_batches_per_step);
    batch->rows = s->params.micro_batch;
    DDT_CHECK(shard_plan_micro_batch_rows(s->params.plan, batch->epoch, batch->step,
                                          batch->micro_index, batch->row_ids));
    uint64_t b = (uint64_t)batch->rows;
    uint64_t *keys = s->sort_keys;
    for (int i = 0; i < batch->rows; i++)
        keys[i] = (uint64_t)(batch->row_ids[i] / s->block_rows) * b + (uint64_t)i;
    sort_keys(keys, (size_t)batch->rows);

    size_t count = (size_t)batch->rows;
    for (size_t group = 0; group < count;) {
        uint64_t block = keys[group] / b;
        size_t end = group + 1;
        while (end < count && keys[end] / b == block)
            end++;
        cache_entry *entry = NULL;
        int32_t index = block_index_find(s, (int64_t)block);
        if (index >= 0) {
            counts->block_hits++;
            entry = &s->entries[index];
        } else {
            DDT_CHECK(stream_cache_load(s, (int64_t)block, &entry, counts));
        }
        /* Keys sort by index within a block: the group's last key is its latest use. */
        stream_cache_touch(entry, (uint64_t)sequence * b + keys[end - 1] % b + 1);
        DDT_CHECK(stream_copy_rows(s, entry, keys + group, end - group, batch));
        group = end;
    }
    slot->sequence = sequence;
    return DDT_OK;
}

/* Epoch position of this rank's micro-batch `sequence`; its epoch and step via the pointers. */
static int64_t stream_position(const stream *s, int64_t sequence, int64_t *epoch, int64_t *step) {
    const shard_params *p = shard_plan_get_params(s->params.plan);
    int64_t global_step = s->params.first_global_step + sequence / s->micro_batches_per_step;
    *epoch = global_step / s->steps_per_epoch;
    *step = global_step % s->steps_per_epoch;
    int64_t micro_index = sequence % s->micro_batches_per_step;
    return *step * p->global_batch + p->rank * (p->global_batch / p->world_size) +
           micro_index * p->micro_batch;
}

/* Reader thread, while the ring is full: reads at most one block that micro-batch `next` (the
 * next to fill) or a later one will need, so the burst of reads at the start of each window
 * happens while the consumer computes. Sets *read when it read one; false means nothing is
 * left to read ahead until `next` moves on.
 *
 * Safe because it looks only within `next`'s epoch and at most min_window_rows positions
 * past `next`'s first: those rows come from at most two windows, the case the eviction
 * argument at the top of this file covers, so a block read ahead never pushes out one still
 * needed. A block read ahead is stamped with its future use, the newest stamp in the cache. */
static ddt_status stream_read_ahead(stream *s, int64_t next, bool *read, fill_counts *counts) {
    *read = false;
    if (!s->read_ahead) return DDT_OK;
    if (s->ahead_sequence < next) {
        s->ahead_sequence = next;
        s->ahead_index = -1;
    }
    int64_t b = s->params.micro_batch;
    int64_t next_epoch, next_step;
    int64_t next_position = stream_position(s, next, &next_epoch, &next_step);
    for (; s->ahead_sequence < s->total_micro_batches; s->ahead_sequence++, s->ahead_index = -1) {
        int64_t epoch, step, position = stream_position(s, s->ahead_sequence, &epoch, &step);
        if (epoch != next_epoch || position + b - next_position > s->min_window_rows) return DDT_OK;
        if (s->ahead_index < 0) {
            int micro_index = (int)(s->ahead_sequence % s->micro_batches_per_step);
            DDT_CHECK(shard_plan_micro_batch_rows(s->params.plan, epoch, step, micro_index,
                                                  s->ahead_rows));
            s->ahead_index = 0;
        }
        for (; s->ahead_index < b; s->ahead_index++) {
            int64_t block = s->ahead_rows[s->ahead_index] / s->block_rows;
            uint64_t use = (uint64_t)s->ahead_sequence * (uint64_t)b + (uint64_t)s->ahead_index + 1;
            int32_t index = block_index_find(s, block);
            if (index >= 0) {
                stream_cache_touch(&s->entries[index], use);
                continue;
            }
            cache_entry *entry;
            DDT_CHECK(stream_cache_load(s, block, &entry, counts));
            stream_cache_touch(entry, use);
            counts->blocks_read_ahead++;
            s->ahead_index++;
            *read = true;
            return DDT_OK;
        }
    }
    return DDT_OK;
}

static void *stream_reader_main(void *argument) {
    stream *s = argument;
    for (int64_t sequence = 0; sequence < s->total_micro_batches; sequence++) {
        stream_slot *slot = &s->slots[sequence % s->params.prefetch_depth];
        pthread_mutex_lock(&s->lock);
        /* While the ring is full, read ahead one block at a time (so a freed slot waits at
         * most one block read), then sleep until a slot is freed. */
        bool nothing_ahead = false;
        while (slot->state != SLOT_FREE && !s->stopping) {
            if (nothing_ahead) {
                pthread_cond_wait(&s->slot_freed, &s->lock);
                continue;
            }
            pthread_mutex_unlock(&s->lock);
            bool read = false;
            fill_counts counts = {0};
            double start = clock_now();
            /* A failure here only loses a hint: the fill that needs the block meets it. */
            if (stream_read_ahead(s, sequence, &read, &counts) != DDT_OK) s->read_ahead = false;
            double busy = clock_now() - start;
            pthread_mutex_lock(&s->lock);
            s->read_seconds += busy;
            s->blocks_read += counts.blocks_read;
            s->blocks_read_ahead += counts.blocks_read_ahead;
            nothing_ahead = !read;
        }
        bool stopping = s->stopping;
        if (!stopping) {
            s->slots_in_use++; /* in use from now until stream_release */
            stream_note_peak(s);
        }
        pthread_mutex_unlock(&s->lock);
        if (stopping) break;

        double start = clock_now();
        fill_counts counts = {0};
        ddt_status status = stream_fill_slot(s, slot, sequence, &counts);
        double finished = clock_now(), busy = finished - start;
        if (s->params.on_read && status == DDT_OK)
            s->params.on_read(s->params.on_read_context, slot->batch.global_step,
                              slot->batch.micro_index, start, finished);

        pthread_mutex_lock(&s->lock);
        s->read_seconds += busy;
        s->blocks_read += counts.blocks_read;
        s->block_hits += counts.block_hits;
        if (status == DDT_OK) {
            slot->state = SLOT_FILLED;
        } else {
            s->slots_in_use--; /* never published */
            /* The message is thread-local to this thread; copy it for the consumer. */
            s->failed = true;
            s->error_sequence = sequence;
            s->error_status = status;
            snprintf(s->error_message, sizeof s->error_message, "%s", ddt_error_message());
        }
        pthread_cond_broadcast(&s->batch_ready);
        pthread_mutex_unlock(&s->lock);
        if (status != DDT_OK) break;
    }
    pthread_mutex_lock(&s->lock);
    s->reader_done = true;
    pthread_cond_broadcast(&s->batch_ready);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static ddt_status validate_params(const stream_params *p) {
    if (!p->data || !p->plan)
        return ddt_error(DDT_ERR_INTERNAL, "stream_open needs a dataset and a shard plan");
    if (p->prefetch_depth < 2)
        return ddt_error(DDT_ERR_USAGE, "--prefetch-depth must be at least 2 (got %d)",
                         p->prefetch_depth);
    if (p->cache_blocks < 0)
        return ddt_error(DDT_ERR_USAGE, "the stream's cache blocks must be >= 0 (got %d)",
                         p->cache_blocks);
    const shard_params *plan_params = shard_plan_get_params(p->plan);
    if (p->micro_batch != plan_params->micro_batch)
        return ddt_error(DDT_ERR_INTERNAL, "stream micro-batch %d differs from the shard plan's %d",
                         p->micro_batch, plan_params->micro_batch);
    const dataset_geometry *geometry = dataset_get_geometry(p->data);
    if (geometry->rows != plan_params->rows)
        return ddt_error(DDT_ERR_INTERNAL,
                         "the shard plan covers %" PRId64 " rows but the dataset has %" PRId64,
                         plan_params->rows, geometry->rows);
    if (p->first_global_step < 0 || p->total_global_steps < 0)
        return ddt_error(DDT_ERR_INTERNAL,
                         "stream steps out of range (first %" PRId64 ", total %" PRId64 ")",
                         p->first_global_step, p->total_global_steps);
    stream_layout layout;
    if (!stream_layout_for(geometry, plan_params, p->prefetch_depth, p->cache_blocks, &layout))
        return ddt_error(DDT_ERR_USAGE,
                         "the dataset's %" PRId64 " rows make too many blocks of %" PRId64
                         " rows for the stream; use larger blocks",
                         geometry->rows, plan_params->block_rows);
    return DDT_OK;
}

/* Frees the stream's one allocation with whatever allocated it. */
static void release_memory(stream *s) {
    if (s->params.host_free)
        s->params.host_free(s->params.host_alloc_context, s);
    else
        free(s);
}

ddt_status stream_open(const stream_params *params, stream **out) {
    *out = NULL;
    DDT_CHECK(validate_params(params));
    ddt_status status = DDT_OK;
    int depth = params->prefetch_depth;
    const dataset_geometry *geometry = dataset_get_geometry(params->data);
    stream_layout layout;
    stream_layout_for(geometry, shard_plan_get_params(params->plan), depth, params->cache_blocks,
                      &layout);
    bool lock_made = false, slot_freed_made = false, batch_ready_made = false;

    stream *s = NULL;
    if (params->host_alloc) {
        /* e.g. pinned memory, so the trainer can upload slots asynchronously */
        if (params->host_alloc(params->host_alloc_context, layout.total, (void **)&s) != DDT_OK)
            s = NULL;
    } else {
        s = aligned_alloc(STREAM_ALIGNMENT, layout.total);
    }
    if (!s)
        return ddt_error(DDT_ERR_MEMORY,
                         "out of memory for %d staging slots of %d rows and a cache of %d "
                         "blocks of %" PRId64 " rows (%.1f MB); lower --prefetch-depth, "
                         "--micro-batch or --shuffle-window",
                         depth, params->micro_batch, layout.cache_blocks, layout.block_rows,
                         (double)layout.total / 1e6);
    memset(s, 0, sizeof *s);
    s->params = *params;
    s->micro_batches_per_step = shard_plan_micro_batches_per_step(params->plan);
    s->steps_per_epoch = shard_plan_steps_per_epoch(params->plan);
    s->total_micro_batches = params->total_global_steps * s->micro_batches_per_step;
    s->block_rows = layout.block_rows;
    s->block_count = layout.block_count;
    s->cache_blocks = layout.cache_blocks;
    s->staging_bytes = layout.total;
    s->fixed_bytes = stream_layout_fixed(&layout);
    s->slot_bytes = layout.slot.total;
    s->block_bytes = layout.block.total;
    s->peak_bytes_in_use = s->fixed_bytes;
    const shard_params *plan_params = shard_plan_get_params(params->plan);
    int64_t full_cache = 2 * (int64_t)plan_params->window_blocks + 1;
    if (full_cache > layout.block_count) full_cache = layout.block_count;
    s->read_ahead = plan_params->shuffle && layout.cache_blocks >= full_cache;
    /* Only the short last block can make a window shorter than window_blocks blocks. */
    s->min_window_rows = layout.block_count > plan_params->window_blocks
                             ? (plan_params->window_blocks - 1) * layout.block_rows + 1
                             : plan_params->rows;
    s->ahead_index = -1;

    char *cursor = (char *)s + layout.handle;
    s->slots = (stream_slot *)cursor;
    cursor += layout.slots;
    s->entries = (cache_entry *)cursor;
    cursor += layout.entries;
    s->block_index = (int32_t *)cursor;
    cursor += layout.block_index;
    s->index_mask = layout.index_slots - 1;
    s->sort_keys = (uint64_t *)cursor;
    cursor += layout.sort_keys;
    s->ahead_rows = (int64_t *)cursor;
    cursor += layout.ahead_rows;
    for (int i = 0; i < depth; i++) {
        micro_batch *batch = &s->slots[i].batch;
        *batch = (micro_batch){0};
        batch->row_ids = (int64_t *)cursor;
        cursor += layout.slot.row_ids;
        if (geometry->kind == DATASET_KIND_TOKENS)
            batch->tokens = (int32_t *)cursor;
        else
            batch->features = (float *)cursor;
        cursor += layout.slot.features;
        if (geometry->class_labels) {
            batch->labels = (int32_t *)cursor;
            cursor += layout.slot.labels;
        } else {
            batch->targets = (float *)cursor;
            cursor += layout.slot.targets;
        }
        s->slots[i].state = SLOT_FREE;
        s->slots[i].sequence = -1;
    }
    for (int i = 0; i < layout.cache_blocks; i++) {
        cache_entry *entry = &s->entries[i];
        *entry = (cache_entry){.block = -1};
        entry->inputs = cursor;
        cursor += layout.block.features;
        if (geometry->class_labels) {
            entry->labels = (int32_t *)cursor;
            cursor += layout.block.labels;
        } else {
            entry->targets = (float *)cursor;
            cursor += layout.block.targets;
        }
    }
    for (size_t i = 0; i < layout.index_slots; i++)
        s->block_index[i] = -1;

    int error = pthread_mutex_init(&s->lock, NULL);
    lock_made = error == 0;
    if (!error) error = pthread_cond_init(&s->slot_freed, NULL);
    slot_freed_made = lock_made && error == 0;
    if (!error) error = pthread_cond_init(&s->batch_ready, NULL);
    batch_ready_made = slot_freed_made && error == 0;
    if (!error) error = pthread_create(&s->reader, NULL, stream_reader_main, s);
    if (error) {
        status = ddt_error(DDT_ERR_INTERNAL, "cannot start the reader thread: %s", strerror(error));
        goto fail;
    }
    *out = s;
    return DDT_OK;

fail:
    if (batch_ready_made) pthread_cond_destroy(&s->batch_ready);
    if (slot_freed_made) pthread_cond_destroy(&s->slot_freed);
    if (lock_made) pthread_mutex_destroy(&s->lock);
    release_memory(s);
    return status;
}

ddt_status stream_next(stream *s, micro_batch **out) {
    *out = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->consumed >= s->total_micro_batches) {
        int64_t total = s->total_micro_batches;
        pthread_mutex_unlock(&s->lock);
        return ddt_error(DDT_ERR_INTERNAL,
                         "stream_next called after all %" PRId64 " micro-batches were delivered",
                         total);
    }
    stream_slot *slot = &s->slots[s->consumed % s->params.prefetch_depth];
    double start = clock_now();
    ddt_status status = DDT_OK;
    for (;;) {
        if (slot->state == SLOT_FILLED && slot->sequence == s->consumed) break;
        /* The error stays at its position, so every later call reports it again. */
        if (s->failed && s->error_sequence == s->consumed) {
            status = ddt_error(s->error_status, "%s", s->error_message);
            break;
        }
        if (s->reader_done || s->stopping) {
            status = ddt_error(DDT_ERR_INTERNAL,
                               "the reader thread ended before micro-batch %" PRId64, s->consumed);
            break;
        }
        pthread_cond_wait(&s->batch_ready, &s->lock);
    }
    s->wait_seconds += clock_now() - start;
    if (status == DDT_OK) {
        slot->state = SLOT_TAKEN;
        s->consumed++;
        *out = &slot->batch;
    }
    pthread_mutex_unlock(&s->lock);
    return status;
}

void stream_release(stream *s, micro_batch *mb) {
    if (!s || !mb) return;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->params.prefetch_depth; i++) {
        stream_slot *slot = &s->slots[i];
        if (&slot->batch == mb && slot->state == SLOT_TAKEN) {
            slot->state = SLOT_FREE;
            s->slots_in_use--;
            pthread_cond_signal(&s->slot_freed);
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

stream_stats stream_get_stats(const stream *s) {
    /* The mutex is internal bookkeeping, not part of the observable state. */
    stream *mutable_stream = (stream *)s;
    stream_stats stats;
    pthread_mutex_lock(&mutable_stream->lock);
    stats.wait_seconds = s->wait_seconds;
    stats.read_seconds = s->read_seconds;
    stats.micro_batches = s->consumed;
    stats.blocks_read = s->blocks_read;
    stats.blocks_read_ahead = s->blocks_read_ahead;
    stats.block_hits = s->block_hits;
    stats.cache_blocks = s->cache_blocks;
    stats.staging_bytes = s->staging_bytes;
    stats.staging_bytes_in_use = stream_bytes_in_use(s);
    stats.peak_staging_bytes_in_use = s->peak_bytes_in_use;
    pthread_mutex_unlock(&mutable_stream->lock);
    return stats;
}

void stream_close(stream *s) {
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->slot_freed);
    pthread_cond_broadcast(&s->batch_ready);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->reader, NULL);
    pthread_cond_destroy(&s->batch_ready);
    pthread_cond_destroy(&s->slot_freed);
    pthread_mutex_destroy(&s->lock);
    release_memory(s);
}
