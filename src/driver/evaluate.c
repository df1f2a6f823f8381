/* evaluate.c - distributed evaluation and the batch buffers it shares with training. */
#include "driver/evaluate.h"

#include <stdlib.h>
#include <string.h>

/* The device allocations of a batch buffer set, in one place for init and plan. */
typedef struct batch_allocation {
    memory_component component;
    size_t bytes;
} batch_allocation;

enum { ALLOCATIONS_PER_INPUT = 3, BATCH_ALLOCATIONS = 2 * ALLOCATIONS_PER_INPUT + 1 };

static size_t feature_bytes(const dataset_geometry *g, int rows) {
    return (size_t)rows * (size_t)g->features * sizeof(float);
}

static size_t label_bytes(const dataset_geometry *g, int rows) {
    return g->class_labels ? (size_t)rows * sizeof(int32_t)
                           : (size_t)rows * (size_t)g->target_width * sizeof(float);
}

static void batch_allocations(const dataset_geometry *g, int rows,
                              batch_allocation out[BATCH_ALLOCATIONS]) {
    for (int set = 0; set < 2; set++) {
        batch_allocation *a = out + set * ALLOCATIONS_PER_INPUT;
        a[0] = (batch_allocation){MEMORY_COMPONENT_STAGING, feature_bytes(g, rows)};
        a[1] = (batch_allocation){MEMORY_COMPONENT_STAGING, label_bytes(g, rows)};
        a[2] = (batch_allocation){MEMORY_COMPONENT_STAGING, (size_t)rows * sizeof(int64_t)};
    }
    out[2 * ALLOCATIONS_PER_INPUT] =
        (batch_allocation){MEMORY_COMPONENT_WORKSPACE, SCALAR_COUNT * sizeof(float)};
}

void batch_buffers_plan(const dataset_geometry *geometry, int rows,
                        size_t component_bytes[MEMORY_COMPONENT_COUNT]) {
    batch_allocation allocations[BATCH_ALLOCATIONS];
    batch_allocations(geometry, rows, allocations);
    for (int i = 0; i < BATCH_ALLOCATIONS; i++)
        component_bytes[allocations[i].component] += allocator_rounded_size(allocations[i].bytes);
}

size_t batch_buffers_host_bytes(const dataset_geometry *geometry, int rows) {
    return feature_bytes(geometry, rows) + label_bytes(geometry, rows);
}

ddt_status batch_buffers_init(batch_buffers *b, allocator *alloc, device *dev,
                              const dataset_geometry *geometry, int rows, bool evaluation) {
    memset(b, 0, sizeof *b);
    b->dev = dev;
    b->rows = rows;
    if (evaluation) {
        DDT_CHECK(
            dev->ops->host_alloc(dev, feature_bytes(geometry, rows), (void **)&b->host.features));
        void **host_labels =
            geometry->class_labels ? (void **)&b->host.labels : (void **)&b->host.targets;
        DDT_CHECK(dev->ops->host_alloc(dev, label_bytes(geometry, rows), host_labels));
    }

    batch_allocation allocations[BATCH_ALLOCATIONS];
    batch_allocations(geometry, rows, allocations);
    for (int set = 0; set < 2; set++) {
        batch_input *in = &b->device[set];
        void **pointers[ALLOCATIONS_PER_INPUT] = {
            (void **)&in->features,
            geometry->class_labels ? (void **)&in->labels : (void **)&in->targets,
            (void **)&in->row_ids,
        };
        for (int i = 0; i < ALLOCATIONS_PER_INPUT; i++) {
            const batch_allocation *a = &allocations[set * ALLOCATIONS_PER_INPUT + i];
            DDT_CHECK(allocator_alloc(alloc, a->component, a->bytes, pointers[i]));
        }
    }
    const batch_allocation *scalars = &allocations[2 * ALLOCATIONS_PER_INPUT];
    return allocator_alloc(alloc, scalars->component, scalars->bytes, (void **)&b->device_scalars);
}

void batch_buffers_free_host(batch_buffers *b) {
    if (!b->dev) return;
    if (b->host.features) b->dev->ops->host_free(b->dev, b->host.features);
    if (b->host.labels) b->dev->ops->host_free(b->dev, b->host.labels);
    if (b->host.targets) b->dev->ops->host_free(b->dev, b->host.targets);
    b->host = (batch_input){0};
}

ddt_status batch_buffers_upload(batch_buffers *b, const dataset_geometry *geometry, int buffer,
                                int rows, const float *features, const int32_t *labels,
                                const float *targets, const int64_t *row_ids) {
    device *dev = b->dev;
    batch_input *in = &b->device[buffer];
    DDT_CHECK(
        dev->ops->upload_async(dev, in->features, features, feature_bytes(geometry, rows), buffer));
    if (geometry->class_labels)
        DDT_CHECK(
            dev->ops->upload_async(dev, in->labels, labels, label_bytes(geometry, rows), buffer));
    else
        DDT_CHECK(
            dev->ops->upload_async(dev, in->targets, targets, label_bytes(geometry, rows), buffer));
    if (row_ids)
        DDT_CHECK(dev->ops->upload_async(dev, in->row_ids, row_ids, (size_t)rows * sizeof(int64_t),
                                         buffer));
    return DDT_OK;
}

/* This rank's rows [first, end): sums of loss and of correct predictions. */
static ddt_status evaluate_local(device *dev, model *m, dataset *data, loss_kind loss,
                                 batch_buffers *b, int buffer, int64_t first, int64_t end,
                                 double sums[2]) {
    const dataset_geometry *g = dataset_get_geometry(data);
    const model_spec *spec = model_get_spec(m);
    int max_rows = model_max_rows(m);
    model_pass pass = {.training = false};
    batch_input *in = &b->device[buffer];
    for (int64_t row = first; row < end; row += max_rows) {
        int rows = (int)(end - row < max_rows ? end - row : max_rows);
        /* The host buffer is free again once the previous upload has been read. */
        DDT_CHECK(dev->ops->upload_host_done(dev, buffer));
        DDT_CHECK(
            dataset_read_range(data, row, rows, b->host.features, b->host.labels, b->host.targets));
        DDT_CHECK(batch_buffers_upload(b, g, buffer, rows, b->host.features, b->host.labels,
                                       b->host.targets, NULL));
        DDT_CHECK(dev->ops->upload_wait(dev, buffer));
        const float *logits;
        DDT_CHECK(model_forward(m, in->features, rows, &pass, &logits));
        /* Only evaluation's own scalars: the training loss sum lives beside them. */
        float *scalars = &b->device_scalars[SCALAR_EVAL_LOSS];
        dev->ops->fill_zero(dev, scalars, 2 * sizeof(float));
        loss_apply(dev, loss, rows, spec->output_width, logits, in->labels, in->targets, 1.0f,
                   &scalars[0], NULL);
        if (g->class_labels)
            dev->ops->count_correct(dev, rows, spec->output_width, logits, in->labels, &scalars[1]);
        float host[2];
        DDT_CHECK(dev->ops->copy_device_to_host(dev, host, scalars, sizeof host));
        sums[0] += host[0];
        sums[1] += host[1];
    }
    return dev->ops->upload_host_done(dev, buffer);
}

ddt_status evaluate_model(job *j, comm *c, device *dev, model *m, dataset *data, loss_kind loss,
                          batch_buffers *buffers, int buffer, evaluation *result) {
    const dataset_geometry *g = dataset_get_geometry(data);
    int world = comm_world_size(c), rank = comm_rank(c);
    int64_t first = g->rows * rank / world;
    int64_t end = g->rows * (rank + 1) / world;
    double sums[3] = {0, 0, (double)(end - first)};
    ddt_status status =
        job_agree(j, evaluate_local(dev, m, data, loss, buffers, buffer, first, end, sums));
    if (status != DDT_OK) return status;
    if (comm_allreduce_doubles(c, sums, 3, COMM_REDUCE_SUM) != DDT_OK)
        job_abort(j, DDT_ERR_COMM, ddt_error_message());
    result->rows = (int64_t)sums[2];
    result->loss = sums[2] > 0 ? sums[0] / sums[2] : 0;
    result->accuracy = g->class_labels && sums[2] > 0 ? sums[1] / sums[2] : -1;
    return DDT_OK;
}
