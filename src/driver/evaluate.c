/* evaluate.c - distributed evaluation and the batch buffers it shares with training. */
#include "driver/evaluate.h"

#include <stdlib.h>
#include <string.h>

/* The device allocations of a batch buffer set, in one place for init and plan. */
typedef struct batch_allocation {
    memory_component component;
    size_t bytes;
} batch_allocation;

static int batch_allocations(const dataset_geometry *geometry, int rows, batch_allocation out[4]) {
    size_t n = (size_t)rows;
    out[0] = (batch_allocation){MEMORY_COMPONENT_STAGING,
                                n * (size_t)geometry->features * sizeof(float)};
    out[1] = geometry->class_labels
                 ? (batch_allocation){MEMORY_COMPONENT_STAGING, n * sizeof(int32_t)}
                 : (batch_allocation){MEMORY_COMPONENT_STAGING,
                                      n * (size_t)geometry->target_width * sizeof(float)};
    out[2] = (batch_allocation){MEMORY_COMPONENT_STAGING, n * sizeof(int64_t)};
    out[3] = (batch_allocation){MEMORY_COMPONENT_WORKSPACE, 2 * sizeof(float)};
    return 4;
}

void batch_buffers_plan(const dataset_geometry *geometry, int rows,
                        size_t component_bytes[MEMORY_COMPONENT_COUNT]) {
    batch_allocation allocations[4];
    int count = batch_allocations(geometry, rows, allocations);
    for (int i = 0; i < count; i++)
        component_bytes[allocations[i].component] += allocator_rounded_size(allocations[i].bytes);
}

ddt_status batch_buffers_init(batch_buffers *b, allocator *alloc, const dataset_geometry *geometry,
                              int rows, int output_width) {
    (void)output_width;
    memset(b, 0, sizeof *b);
    batch_allocation allocations[4];
    batch_allocations(geometry, rows, allocations);
    b->features = malloc(allocations[0].bytes);
    if (geometry->class_labels)
        b->labels = malloc(allocations[1].bytes);
    else
        b->targets = malloc(allocations[1].bytes);
    if (!b->features || (!b->labels && !b->targets))
        return ddt_error(DDT_ERR_MEMORY, "out of host memory for %d-row batch buffers", rows);
    void **device_pointers[4] = {
        (void **)&b->device_features,
        geometry->class_labels ? (void **)&b->device_labels : (void **)&b->device_targets,
        (void **)&b->device_row_ids,
        (void **)&b->device_scalars,
    };
    for (int i = 0; i < 4; i++)
        DDT_CHECK(allocator_alloc(alloc, allocations[i].component, allocations[i].bytes,
                                  device_pointers[i]));
    return DDT_OK;
}

void batch_buffers_free_host(batch_buffers *b) {
    free(b->features);
    free(b->labels);
    free(b->targets);
    b->features = NULL;
    b->labels = NULL;
    b->targets = NULL;
}

ddt_status batch_buffers_upload(batch_buffers *b, device *dev, const dataset_geometry *geometry,
                                int rows, const float *features, const int32_t *labels,
                                const float *targets, const int64_t *row_ids) {
    const device_ops *ops = dev->ops;
    DDT_CHECK(ops->copy_host_to_device(dev, b->device_features, features,
                                       (size_t)rows * (size_t)geometry->features * sizeof(float)));
    if (geometry->class_labels)
        DDT_CHECK(ops->copy_host_to_device(dev, b->device_labels, labels,
                                           (size_t)rows * sizeof(int32_t)));
    else
        DDT_CHECK(ops->copy_host_to_device(
            dev, b->device_targets, targets,
            (size_t)rows * (size_t)geometry->target_width * sizeof(float)));
    if (row_ids)
        DDT_CHECK(ops->copy_host_to_device(dev, b->device_row_ids, row_ids,
                                           (size_t)rows * sizeof(int64_t)));
    return DDT_OK;
}

/* This rank's rows [first, end): sums of loss and of correct predictions. */
static ddt_status evaluate_local(device *dev, model *m, dataset *data, loss_kind loss,
                                 batch_buffers *b, int64_t first, int64_t end, double sums[2]) {
    const dataset_geometry *g = dataset_get_geometry(data);
    const model_spec *spec = model_get_spec(m);
    int max_rows = model_max_rows(m);
    model_pass pass = {.training = false};
    for (int64_t row = first; row < end; row += max_rows) {
        int rows = (int)(end - row < max_rows ? end - row : max_rows);
        DDT_CHECK(dataset_read_range(data, row, rows, b->features, b->labels, b->targets));
        DDT_CHECK(batch_buffers_upload(b, dev, g, rows, b->features, b->labels, b->targets, NULL));
        const float *logits;
        DDT_CHECK(model_forward(m, b->device_features, rows, &pass, &logits));
        dev->ops->fill_zero(dev, b->device_scalars, 2 * sizeof(float));
        loss_apply(dev, loss, rows, spec->output_width, logits, b->device_labels,
                   b->device_targets, 1.0f, &b->device_scalars[0], NULL);
        if (g->class_labels)
            dev->ops->count_correct(dev, rows, spec->output_width, logits, b->device_labels,
                                    &b->device_scalars[1]);
        float scalars[2];
        DDT_CHECK(dev->ops->copy_device_to_host(dev, scalars, b->device_scalars, sizeof scalars));
        sums[0] += scalars[0];
        sums[1] += scalars[1];
    }
    return DDT_OK;
}

ddt_status evaluate_model(job *j, comm *c, device *dev, model *m, dataset *data,
                          loss_kind loss, batch_buffers *buffers, evaluation *result) {
    const dataset_geometry *g = dataset_get_geometry(data);
    int world = comm_world_size(c), rank = comm_rank(c);
    int64_t first = g->rows * rank / world;
    int64_t end = g->rows * (rank + 1) / world;
    double sums[3] = {0, 0, (double)(end - first)};
    ddt_status status = job_agree(j, evaluate_local(dev, m, data, loss, buffers, first, end, sums));
    if (status != DDT_OK) return status;
    if (comm_allreduce_doubles(c, sums, 3, COMM_REDUCE_SUM) != DDT_OK)
        job_abort(j, DDT_ERR_COMM, ddt_error_message());
    result->rows = (int64_t)sums[2];
    result->loss = sums[2] > 0 ? sums[0] / sums[2] : 0;
    result->accuracy = g->class_labels && sums[2] > 0 ? sums[1] / sums[2] : -1;
    return DDT_OK;
}
