/* feed.c - the input path: reader stream, host staging, device double buffer and the upload
 * ordering rule (see feed.h). */
#include "feed/feed.h"

#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "util/clock.h"

enum { BUFFERS = 2 };

/* One device input set. */
typedef struct device_input {
    void *inputs; /* float32 features, or int32 token ids */
    int32_t *labels;
    float *targets;
    int64_t *row_ids;
} device_input;

struct feed {
    feed_params params;
    stream *stream;
    device_input inputs[BUFFERS];
    /* the host buffer for evaluation reads (features or token ids, labels or targets) */
    void *eval_inputs;
    int32_t *eval_labels;
    float *eval_targets;
    /* the training pipeline: `current` computes from `current_buffer`; `next` is uploading
     * into the other one */
    micro_batch *current, *next;
    int current_buffer, next_buffer;
    int64_t fetched, total; /* micro-batches taken from the stream, and to take */
    double data_wait_seconds;
    int64_t handed_out;
};

/* ---- sizes (shared by init and the plan) ------------------------------------------------- */

/* Plans ask for micro-batches not yet known to fit (up to --global-batch rows of up to 2^30
 * values): sizes saturate at SIZE_MAX (util/checked.h), which no limit admits. */
static size_t times(size_t a, size_t b) {
    return saturated_multiply_size(a, b);
}

/* float32 features or int32 token ids: 4 bytes a value either way. */
static size_t feature_bytes(const dataset_geometry *g, int rows) {
    return times(times((size_t)rows, (size_t)g->features), sizeof(float));
}

static size_t label_bytes(const dataset_geometry *g, int rows) {
    return g->class_labels ? times(times((size_t)rows, (size_t)g->labels_per_row), sizeof(int32_t))
                           : times(times((size_t)rows, (size_t)g->target_width), sizeof(float));
}

static size_t row_id_bytes(int rows) {
    return times((size_t)rows, sizeof(int64_t));
}

void feed_plan_device(const dataset_geometry *geometry, int rows,
                      size_t component_bytes[MEMORY_COMPONENT_COUNT]) {
    size_t *staging = &component_bytes[MEMORY_COMPONENT_STAGING];
    for (int b = 0; b < BUFFERS; b++) {
        *staging =
            saturated_add_size(*staging, allocator_rounded_size(feature_bytes(geometry, rows)));
        *staging =
            saturated_add_size(*staging, allocator_rounded_size(label_bytes(geometry, rows)));
        *staging = saturated_add_size(*staging, allocator_rounded_size(row_id_bytes(rows)));
    }
}

size_t feed_evaluation_host_bytes(const dataset_geometry *geometry, int rows) {
    return saturated_add_size(feature_bytes(geometry, rows), label_bytes(geometry, rows));
}

/* ---- set-up ------------------------------------------------------------------------------ */

/* The stream's one allocation comes from the device's host allocator: pinned on GPUs. */
static ddt_status stream_host_alloc(void *context, size_t bytes, void **out) {
    device *dev = context;
    return device_host_alloc(dev, bytes, out);
}

static void stream_host_free(void *context, void *pointer) {
    device *dev = context;
    device_host_free(dev, pointer);
}

ddt_status feed_init(const feed_params *params, feed **out) {
    *out = NULL;
    feed *f = calloc(1, sizeof *f);
    if (!f) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the input feed");
    f->params = *params;
    f->next_buffer = 0;
    f->current_buffer = -1;
    f->total = params->data ? params->total_steps * params->micro_batches_per_step : 0;
    const dataset_geometry *g = params->geometry;
    device *dev = params->dev;
    ddt_status status = DDT_OK;
    for (int b = 0; b < BUFFERS && status == DDT_OK; b++) {
        device_input *in = &f->inputs[b];
        void **labels = g->class_labels ? (void **)&in->labels : (void **)&in->targets;
        status = allocator_alloc(params->alloc, MEMORY_COMPONENT_STAGING,
                                 feature_bytes(g, params->rows), &in->inputs);
        if (status == DDT_OK)
            status = allocator_alloc(params->alloc, MEMORY_COMPONENT_STAGING,
                                     label_bytes(g, params->rows), labels);
        if (status == DDT_OK)
            status = allocator_alloc(params->alloc, MEMORY_COMPONENT_STAGING,
                                     row_id_bytes(params->rows), (void **)&in->row_ids);
    }
    if (status == DDT_OK && params->evaluation) {
        status = device_host_alloc(dev, feature_bytes(g, params->rows), &f->eval_inputs);
        void **labels = g->class_labels ? (void **)&f->eval_labels : (void **)&f->eval_targets;
        if (status == DDT_OK)
            status = device_host_alloc(dev, label_bytes(g, params->rows), labels);
    }
    if (status != DDT_OK) {
        feed_free(f);
        return status;
    }
    *out = f;
    return DDT_OK;
}

void feed_set_first_step(feed *f, int64_t first_step, int64_t total_steps) {
    f->params.first_step = first_step;
    f->params.total_steps = total_steps - first_step;
    f->total = f->params.data ? f->params.total_steps * f->params.micro_batches_per_step : 0;
}

ddt_status feed_start(feed *f) {
    const feed_params *p = &f->params;
    if (!p->data || f->total == 0 || f->stream) return DDT_OK;
    stream_params sp = {
        .data = p->data,
        .plan = p->plan,
        .micro_batch = p->rows,
        .first_global_step = p->first_step,
        .total_global_steps = p->total_steps,
        .prefetch_depth = p->prefetch_depth,
        .cache_blocks = p->cache_blocks,
        .host_alloc = stream_host_alloc,
        .host_free = stream_host_free,
        .host_alloc_context = p->dev,
        .on_read = p->on_read,
        .on_read_context = p->hook_context,
    };
    return stream_open(&sp, &f->stream);
}

/* ---- training micro-batches ------------------------------------------------------------- */

/* Points `out`'s input pointers at device buffer `buffer`, typed by the dataset's kind. */
static void point_at_inputs(const feed *f, int buffer, feed_batch *out) {
    const dataset_geometry *g = f->params.geometry;
    const device_input *in = &f->inputs[buffer];
    bool tokens = g->kind == DATASET_KIND_TOKENS;
    out->features = tokens ? NULL : in->inputs;
    out->tokens = tokens ? in->inputs : NULL;
    out->labels = g->class_labels ? in->labels : NULL;
    out->targets = g->class_labels ? NULL : in->targets;
}

static ddt_status upload(feed *f, int buffer, int rows, const void *inputs, const int32_t *labels,
                         const float *targets, const int64_t *row_ids) {
    device *dev = f->params.dev;
    const dataset_geometry *g = f->params.geometry;
    device_input *in = &f->inputs[buffer];
    DDT_CHECK(device_upload_async(dev, in->inputs, inputs, feature_bytes(g, rows), buffer));
    if (g->class_labels)
        DDT_CHECK(device_upload_async(dev, in->labels, labels, label_bytes(g, rows), buffer));
    else
        DDT_CHECK(device_upload_async(dev, in->targets, targets, label_bytes(g, rows), buffer));
    if (row_ids)
        DDT_CHECK(device_upload_async(dev, in->row_ids, row_ids, row_id_bytes(rows), buffer));
    return DDT_OK;
}

/* Takes the next micro-batch from the stream and starts uploading it into `buffer`. */
static ddt_status fetch(feed *f, int buffer) {
    double waited = clock_now();
    DDT_CHECK(stream_next(f->stream, &f->next));
    double started = clock_now();
    f->data_wait_seconds += started - waited;
    f->fetched++;
    f->next_buffer = buffer;
    micro_batch *mb = f->next;
    const void *inputs = mb->features ? (const void *)mb->features : (const void *)mb->tokens;
    ddt_status status = upload(f, buffer, mb->rows, inputs, mb->labels, mb->targets, mb->row_ids);
    if (f->params.on_upload)
        f->params.on_upload(f->params.hook_context, mb->global_step, started, clock_now());
    return status;
}

ddt_status feed_next(feed *f, feed_batch *out) {
    if (!f->stream) return ddt_error(DDT_ERR_INTERNAL, "feed_next: the feed was not started");
    if (f->current)
        return ddt_error(DDT_ERR_INTERNAL, "feed_next: the last micro-batch was not released");
    if (!f->next) DDT_CHECK(fetch(f, f->next_buffer));
    micro_batch *mb = f->next;
    int buffer = f->next_buffer;
    f->next = NULL;
    f->current = mb;
    f->current_buffer = buffer;
    device *dev = f->params.dev;
    DDT_CHECK(device_upload_wait(dev, buffer));
    /* The ordering rule: issued after the compute of the micro-batch before this one (all
     * issued by now) and before this one's, into the buffer that one used. */
    if (f->fetched < f->total) DDT_CHECK(fetch(f, buffer ^ 1));
    *out = (feed_batch){
        .row_ids = f->inputs[buffer].row_ids,
        .rows = mb->rows,
        .global_step = mb->global_step,
        .micro_index = mb->micro_index,
    };
    point_at_inputs(f, buffer, out);
    f->handed_out++;
    return DDT_OK;
}

ddt_status feed_release(feed *f) {
    if (!f->current) return DDT_OK;
    ddt_status status = device_upload_host_done(f->params.dev, f->current_buffer);
    stream_release(f->stream, f->current);
    f->current = NULL;
    return status;
}

/* ---- evaluation ------------------------------------------------------------------------- */

ddt_status feed_read_evaluation(feed *f, dataset *data, int64_t first_row, int rows,
                                feed_batch *out) {
    if (!f->eval_inputs)
        return ddt_error(DDT_ERR_INTERNAL, "feed_read_evaluation: no evaluation buffer");
    if (rows > f->params.rows)
        return ddt_error(DDT_ERR_INTERNAL, "feed_read_evaluation: %d rows, buffers hold %d", rows,
                         f->params.rows);
    device *dev = f->params.dev;
    /* The buffer not holding the prefetched training micro-batch. */
    int buffer = f->next ? f->next_buffer ^ 1 : 0;
    /* The evaluation host buffer is free once its previous upload has been read. */
    DDT_CHECK(device_upload_host_done(dev, buffer));
    DDT_CHECK(
        dataset_read_range(data, first_row, rows, f->eval_inputs, f->eval_labels, f->eval_targets));
    DDT_CHECK(upload(f, buffer, rows, f->eval_inputs, f->eval_labels, f->eval_targets, NULL));
    DDT_CHECK(device_upload_wait(dev, buffer));
    *out = (feed_batch){
        .row_ids = NULL,
        .rows = rows,
        .global_step = -1,
        .micro_index = 0,
    };
    point_at_inputs(f, buffer, out);
    return DDT_OK;
}

feed_stats feed_get_stats(const feed *f) {
    feed_stats s = {0};
    if (!f) return s;
    s.data_wait_seconds = f->data_wait_seconds;
    s.micro_batches = f->handed_out;
    if (f->stream) s.stream = stream_get_stats(f->stream);
    return s;
}

void feed_free(feed *f) {
    if (!f) return;
    device *dev = f->params.dev;
    if (dev) {
        /* Uploads may still be reading host memory. */
        for (int b = 0; b < BUFFERS; b++)
            (void)device_upload_host_done(dev, b);
        (void)device_synchronize(dev);
    }
    stream_close(f->stream);
    if (dev) {
        if (f->eval_inputs) device_host_free(dev, f->eval_inputs);
        if (f->eval_labels) device_host_free(dev, f->eval_labels);
        if (f->eval_targets) device_host_free(dev, f->eval_targets);
    }
    free(f);
}
