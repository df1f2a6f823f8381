/* evaluate.c - distributed evaluation (see evaluate.h). */
#include "train/evaluate.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/alloc.h"
#include "io/model_file.h"
#include "train/memory_plan.h"
#include "train/train.h"
#include "util/clock.h"
#include "util/failpoint.h"

/* This rank's rows [first, end): sums of loss and of correct predictions. */
static ddt_status evaluate_local(device *dev, model *m, dataset *data, loss_kind loss, feed *f,
                                 float *scalars, int64_t first, int64_t end, double sums[2]) {
    const dataset_geometry *g = dataset_get_geometry(data);
    const model_spec *spec = model_get_spec(m);
    int max_rows = model_max_rows(m);
    model_pass pass = {.training = false};
    for (int64_t row = first; row < end; row += max_rows) {
        int rows = (int)(end - row < max_rows ? end - row : max_rows);
        feed_batch batch;
        DDT_CHECK(feed_read_evaluation(f, data, row, rows, &batch));
        const float *logits;
        model_input input = {.features = batch.features, .tokens = batch.tokens};
        DDT_CHECK(model_forward(m, input, rows, &pass, &logits));
        device_fill_zero(dev, scalars, 2 * sizeof(float));
        int predictions = rows * spec->positions; /* a token model predicts every position */
        loss_apply(dev, loss, predictions, spec->output_width, logits, batch.labels, batch.targets,
                   1.0f, &scalars[0], NULL);
        if (g->class_labels)
            device_count_correct(dev, predictions, spec->output_width, logits, batch.labels,
                                 &scalars[1]);
        float host[2];
        DDT_CHECK(device_copy_device_to_host(dev, host, scalars, sizeof host));
        sums[0] += host[0];
        sums[1] += host[1];
    }
    return DDT_OK;
}

/* A sample of `limit` rows: blocks of one micro-batch spread evenly over the data; this
 * rank's share of them. */
static ddt_status evaluate_sample(device *dev, model *m, dataset *data, loss_kind loss, feed *f,
                                  float *scalars, int64_t limit, int rank, int world,
                                  double sums[3]) {
    const dataset_geometry *g = dataset_get_geometry(data);
    int64_t block = model_max_rows(m);
    int64_t blocks = (limit + block - 1) / block;
    int64_t spacing = g->rows / blocks;
    for (int64_t b = blocks * rank / world; b < blocks * (rank + 1) / world; b++) {
        int64_t first = b * spacing;
        int64_t rows = b == blocks - 1 ? limit - b * block : block;
        DDT_CHECK(evaluate_local(dev, m, data, loss, f, scalars, first, first + rows, sums));
        sums[2] += (double)rows * model_get_spec(m)->positions;
    }
    return DDT_OK;
}

ddt_status evaluate_model(comm *control, device *dev, model *m, dataset *data, loss_kind loss,
                          feed *f, float *scalars, int64_t limit_rows, evaluation *result) {
    double started = clock_now();
    const dataset_geometry *g = dataset_get_geometry(data);
    int world = comm_world_size(control), rank = comm_rank(control);
    failpoint_stall("evaluation", rank);
    double sums[3] = {0, 0, 0};
    ddt_status local;
    if (limit_rows > 0 && limit_rows < g->rows) {
        local = evaluate_sample(dev, m, data, loss, f, scalars, limit_rows, rank, world, sums);
    } else {
        int64_t first = g->rows * rank / world;
        int64_t end = g->rows * (rank + 1) / world;
        /* losses and hits are summed per prediction: one per row, or one per token position */
        sums[2] = (double)(end - first) * model_get_spec(m)->positions;
        local = evaluate_local(dev, m, data, loss, f, scalars, first, end, sums);
    }
    DDT_CHECK(comm_agree(control, local, "evaluation"));
    DDT_CHECK(comm_allreduce_doubles(control, sums, 3, COMM_REDUCE_SUM));
    result->rows = (int64_t)sums[2] / model_get_spec(m)->positions;
    result->loss = sums[2] > 0 ? sums[0] / sums[2] : 0;
    result->accuracy = g->class_labels && sums[2] > 0 ? sums[1] / sums[2] : -1;
    result->seconds = clock_now() - started;
    return DDT_OK;
}

/* ---- ddtrain eval ------------------------------------------------------------------------ */

/* Everything `ddtrain eval` sets up, freed in reverse by eval_free(). */
typedef struct eval_state {
    model_spec *spec;
    dataset *data;
    device *dev;
    allocator *alloc;
    model *m;
    feed *f;
    float *scalars;
    char limit_source[128]; /* the allocator's limit, in words */
} eval_state;

static void eval_free(eval_state *s) {
    feed_free(s->f);
    model_free(s->m);
    allocator_close(s->alloc);
    if (s->dev) device_close(s->dev);
    if (s->data) dataset_close(s->data);
    free(s->spec);
}

/* The model's state from `path` into the (allocated) model, through a host buffer. */
static ddt_status load_parameters(model *m, const char *path, const model_spec *spec) {
    size_t bytes = model_spec_state_count(spec) * sizeof(float);
    float *host = malloc(bytes ? bytes : 1);
    if (!host) return ddt_error(DDT_ERR_MEMORY, "%s: out of host memory for the parameters", path);
    ddt_status status = model_file_read_parameters(path, spec, host);
    if (status == DDT_OK) status = model_set_state(m, host);
    free(host);
    return status;
}

/* This rank's set-up: the spec first (nothing allocated for what a file only claims), the
 * data checked against it, then the device and everything else, within the device's memory. */
static ddt_status eval_setup(comm *control, const eval_config *cfg, eval_state *s) {
    if (!cfg->model_file || !cfg->data)
        return ddt_error(DDT_ERR_USAGE, "ddtrain eval needs --model-file and --data");
    s->spec = malloc(sizeof *s->spec);
    if (!s->spec) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the model's spec");
    DDT_CHECK(model_file_read_spec(cfg->model_file, s->spec));
    dataset_open_params data_params = dataset_default_open_params();
    data_params.allow_external = cfg->allow_external_data;
    if (s->spec->input_kind == MODEL_INPUT_TOKENS) data_params.token_context = s->spec->context;
    DDT_CHECK(dataset_open_with_params(cfg->data, &data_params, &s->data));
    DDT_CHECK(train_adopt_class_count(s->data, s->spec, cfg->loss));
    const dataset_geometry *g = dataset_get_geometry(s->data);
    DDT_CHECK(train_check_data_against_model("--data", cfg->data, g, s->spec, cfg->loss));
    device_kind kind;
    int ordinal;
    DDT_CHECK(device_choose(cfg->device, comm_local_rank(control), &kind, &ordinal));
    DDT_CHECK(device_open(kind, ordinal, &s->dev));
    DDT_CHECK(model_check_device(s->spec, s->dev));
    /* eval has no memory options: this rank's share of the device's memory is the limit (the
     * node's, on CPU ranks, shared by its ranks), so a model file whose spec claims more is
     * refused by the allocator before anything is reserved for it. */
    int sharing;
    allocator_params ap = allocator_default_params();
    ap.limit_bytes =
        memory_limits_device_share(s->dev, comm_local_rank(control), comm_local_size(control),
                                   &sharing, s->limit_source, sizeof s->limit_source);
    ap.rank = comm_rank(control);
    ap.limit_source = s->limit_source;
    DDT_CHECK(allocator_open_with_params(s->dev, &ap, &s->alloc));
    DDT_CHECK(device_set_precision(s->dev, PRECISION_FP32, s->alloc,
                                         model_spec_max_gemm_operand_floats(s->spec, cfg->rows)));
    DDT_CHECK(model_init(s->spec, s->alloc, cfg->rows, (model_options){0}, &s->m));
    DDT_CHECK(load_parameters(s->m, cfg->model_file, s->spec));
    feed_params fp = {
        .dev = s->dev, .alloc = s->alloc, .geometry = g, .rows = cfg->rows, .evaluation = true};
    DDT_CHECK(feed_init(&fp, &s->f));
    return allocator_alloc(s->alloc, MEMORY_COMPONENT_WORKSPACE, 2 * sizeof(float),
                           (void **)&s->scalars);
}

ddt_status eval_run(comm *control, const eval_config *cfg) {
    eval_state s;
    memset(&s, 0, sizeof s);
    ddt_status status = comm_agree(control, eval_setup(control, cfg, &s), "set-up");
    if (status == DDT_OK)
        status = comm_agree(control, train_check_same_data(control, "--data", s.data),
                            "set-up: the same data");
    evaluation ev;
    if (status == DDT_OK)
        status = evaluate_model(control, s.dev, s.m, s.data, cfg->loss, s.f, s.scalars, 0, &ev);
    if (status == DDT_OK && comm_rank(control) == 0) {
        fprintf(cfg->out, "model %s on %s: %" PRId64 " rows, loss %.4f", s.spec->text, cfg->data,
                ev.rows, ev.loss);
        if (ev.accuracy >= 0) fprintf(cfg->out, ", accuracy %.4f", ev.accuracy);
        fprintf(cfg->out, "\n");
        fflush(cfg->out);
    }
    eval_free(&s);
    return status;
}
