/* trainer.c - train_run(): the set-up phases, the loop over steps, and the end (see train.h).
 *
 * Phases, each ending at an agreement on the control communicator, so that a failure on any
 * rank ends all of them together, and so that no rank enters a phase's collectives while
 * another has failed before them:
 *   1. settings: what the configuration means for this world (batches, device);
 *   2. data: the datasets and the model spec, checked against each other; outputs against
 *      inputs; the checkpoint directory, metrics and TensorBoard files (rank 0);
 *   3. memory: the device, the data-plane communicator (before any memory of ddtrain's own,
 *      so NCCL's buffers are measured and counted), the limits and the plan, refused before
 *      anything is allocated if it does not fit;
 *   4. engine: the allocator, model, optimizer, buckets, feed, trace; checked against the plan;
 *   5. weights: from a checkpoint, --init or --seed on rank 0, broadcast and checksummed;
 * then the steps (train_loop), then the model file and the summary.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/model_file.h"
#include "train/trainer.h"
#include "util/clock.h"
#include "util/failpoint.h"
#include "util/files.h"

ddt_status train_check_data_against_model(const char *what, const char *path,
                                          const dataset_geometry *g, const model_spec *spec,
                                          loss_kind loss) {
    bool tokens = spec->input_kind == MODEL_INPUT_TOKENS;
    if (tokens && g->kind != DATASET_KIND_TOKENS)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s '%s' holds features, but the model '%s' takes token ids (a token "
                         "dataset holds /tokens: ddtrain convert text or convert tokens)",
                         what, path, spec->text);
    if (tokens && g->classes != spec->vocab)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s '%s' holds tokens of a vocabulary of %d, but the model '%s' has %d",
                         what, path, g->classes, spec->text, spec->vocab);
    if (!tokens && g->feature_rank == 3 && spec->input_shape.rank == 3) {
        bool same = true;
        for (int i = 0; i < 3; i++)
            same = same && g->feature_dims[i] == spec->input_shape.dims[i];
        if (!same)
            return ddt_error(DDT_ERR_FORMAT,
                             "%s '%s' holds %dx%dx%d images, but the model '%s' takes %dx%dx%d",
                             what, path, g->feature_dims[0], g->feature_dims[1],
                             g->feature_dims[2], spec->text, spec->input_shape.dims[0],
                             spec->input_shape.dims[1], spec->input_shape.dims[2]);
    }
    if (g->features != spec->input_width)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s '%s' has %d features per row, but the model '%s' takes %d inputs",
                         what, path, g->features, spec->text, spec->input_width);
    ddt_status status = loss_check_compatible(loss, spec->output_width, g->class_labels,
                                              g->classes, g->target_width);
    if (status != DDT_OK) return ddt_error(status, "%s '%s': %s", what, path, ddt_error_message());
    return DDT_OK;
}

ddt_status train_adopt_class_count(dataset *data, const model_spec *spec, loss_kind loss) {
    const dataset_geometry *g = dataset_get_geometry(data);
    if (!g->class_labels || g->classes > 0) return DDT_OK;
    int classes = spec->output_width;
    if (loss == LOSS_BINARY_CROSS_ENTROPY && classes == 1) classes = 2;
    return dataset_set_classes(data, classes);
}

/* The entry of `identity` ("shard; shard; ...") that holds byte `at`, copied into `out`. */
static void identity_entry(const char *identity, size_t at, char *out, size_t size) {
    size_t begin = at, end = at;
    while (begin > 0 && !(identity[begin - 1] == ' ' && begin >= 2 && identity[begin - 2] == ';'))
        begin--;
    while (identity[end] && identity[end] != ';')
        end++;
    snprintf(out, size, "%.*s", (int)(end - begin), identity + begin);
}

ddt_status train_check_same_data(comm *control, const char *what, const dataset *data) {
    const dataset_geometry *g = dataset_get_geometry(data);
    size_t size = (size_t)g->file_count * 256 + 1;
    char *mine = malloc(size);
    ddt_status status =
        mine ? dataset_identity(data, mine, size) : ddt_error(DDT_ERR_MEMORY, "out of host memory");
    char *root = NULL;
    /* Every rank takes part in the broadcast, whatever its own identity came to. */
    ddt_status shared = comm_broadcast_text(control, status == DDT_OK ? mine : "", &root,
                                            "set-up: the data on every rank");
    if (shared != DDT_OK) status = shared;
    int rank = comm_rank(control);
    if (status == DDT_OK && rank != 0 && strcmp(root, mine) != 0) {
        size_t at = 0;
        while (root[at] && root[at] == mine[at])
            at++;
        char theirs[320], ours[320];
        identity_entry(root, root[at] ? at : (at ? at - 1 : 0), theirs, sizeof theirs);
        identity_entry(mine, mine[at] ? at : (at ? at - 1 : 0), ours, sizeof ours);
        status = ddt_error(DDT_ERR_USAGE,
                           "%s names other data on rank %d than on rank 0: rank 0 reads '%s', "
                           "rank %d reads '%s' (every rank must read the same data; identical "
                           "copies under other paths are fine)",
                           what, rank, theirs, rank, ours);
    }
    free(root);
    free(mine);
    return status;
}

/* ---- phase 1: settings ------------------------------------------------------------------ */

static ddt_status resolve_settings(trainer *t) {
    const train_config *cfg = t->config;
    run_shape *s = &t->shape;
    int world = t->world_size;
    if (!cfg->data) return ddt_error(DDT_ERR_USAGE, "--data is required (see ddtrain train --help)");
    DDT_CHECK(device_choose(cfg->device, comm_local_rank(t->control), &s->device, &s->ordinal));
    DDT_CHECK(comm_backend_choose(cfg->allreduce, s->device, &s->allreduce));
    if (cfg->precision != PRECISION_FP32 && s->device != DEVICE_KIND_CUDA)
        return ddt_error(DDT_ERR_USAGE, "--precision %s needs --device cuda (CPU ranks compute "
                                        "in fp32)",
                         precision_kind_name(cfg->precision));
    if ((cfg->checkpoint_every_steps || cfg->checkpoint_every_seconds > 0 || cfg->resume) &&
        !cfg->checkpoint_dir)
        return ddt_error(DDT_ERR_USAGE, "%s needs --checkpoint-dir",
                         cfg->resume ? "--resume" : "--checkpoint-every");
    DDT_CHECK(optimizer_params_check(&cfg->optimizer));
    t->scaler = loss_scaler_init(cfg->precision == PRECISION_FP16, cfg->loss_scale);
    s->schedule = cfg->schedule;
    s->global_batch = cfg->global_batch;
    if (cfg->micro_batch == TRAIN_MICRO_BATCH_AUTO || cfg->micro_batch == 0) {
        if (s->global_batch % world != 0)
            return ddt_error(DDT_ERR_USAGE,
                             "--global-batch %" PRId64 " cannot be split evenly over %d ranks "
                             "(give a multiple of %d%s)",
                             s->global_batch, world, world,
                             cfg->micro_batch == 0 ? ", or set --micro-batch" : "");
        /* auto: chosen by plan_memory() once the data and the limits are known */
        s->micro_batch = cfg->micro_batch == 0 ? (int)(s->global_batch / world) : 0;
        return DDT_OK;
    }
    s->micro_batch = cfg->micro_batch;
    if (s->global_batch % ((int64_t)world * s->micro_batch) != 0)
        return ddt_error(DDT_ERR_USAGE,
                         "--global-batch %" PRId64 " is not a multiple of %d ranks x "
                         "--micro-batch %d = %" PRId64 " (each rank must run a whole number "
                         "of micro-batches per step)",
                         s->global_batch, world, s->micro_batch,
                         (int64_t)world * s->micro_batch);
    return DDT_OK;
}

/* ---- phase 2: data --------------------------------------------------------------------- */

/* Every file this run writes (or writes into) against every file it reads, by identity, so
 * a run never writes over its own inputs, however their paths are spelled. */
static ddt_status check_outputs_against_inputs(trainer *t) {
    const train_config *cfg = t->config;
    enum { MAX_INPUTS = 1024 };
    file_role *inputs = calloc(MAX_INPUTS, sizeof *inputs);
    if (!inputs) return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    int count = 0;
    const struct {
        const char *option;
        dataset *data;
    } datasets[] = {{"--data", t->data.train}, {"--eval-data", t->data.eval}};
    for (int d = 0; d < 2; d++) {
        const dataset *data = datasets[d].data;
        for (int f = 0; data && f < dataset_get_geometry(data)->file_count && count < MAX_INPUTS;
             f++)
            inputs[count++] = (file_role){datasets[d].option, dataset_file_path(data, f), false};
    }
    if (cfg->init && count < MAX_INPUTS) inputs[count++] = (file_role){"--init", cfg->init, false};
    const file_role outputs[] = {
        {"--save", cfg->save, false},
        {"--metrics", cfg->metrics, false},
        {"--trace", cfg->trace, false},
        {"--checkpoint-dir", cfg->checkpoint_dir, true},
        {"--tensorboard", cfg->tensorboard, true},
    };
    ddt_status status = files_check_outputs(outputs, (int)(sizeof outputs / sizeof outputs[0]),
                                            inputs, count);
    free(inputs);
    return status;
}

/* Rank 0, which writes them: each output that exists and is not a regular file is refused
 * or opened now (a FIFO's reader connected, /dev/full found), before any training. */
static ddt_status prepare_outputs(const train_config *cfg) {
    DDT_CHECK(file_output_prepare("--save", cfg->save, FILE_OUTPUT_WHOLE));
    DDT_CHECK(file_output_prepare("--metrics", cfg->metrics, FILE_OUTPUT_APPENDED));
    DDT_CHECK(file_output_prepare("--trace", cfg->trace, FILE_OUTPUT_WHOLE));
    DDT_CHECK(file_output_prepare("--checkpoint-dir", cfg->checkpoint_dir, FILE_OUTPUT_DIRECTORY));
    return file_output_prepare("--tensorboard", cfg->tensorboard, FILE_OUTPUT_DIRECTORY);
}

static ddt_status open_data(trainer *t) {
    const train_config *cfg = t->config;
    /* The spec only: --init's parameters are read once the model is allocated in a plan. */
    if (cfg->init) {
        DDT_CHECK(model_file_read_spec(cfg->init, &t->shape.spec));
        if (cfg->model_given) {
            model_spec asked;
            DDT_CHECK(model_spec_parse(cfg->model, &asked));
            if (strcmp(asked.text, t->shape.spec.text) != 0)
                return ddt_error(DDT_ERR_USAGE, "--init '%s' holds model '%s', but --model is '%s'",
                                 cfg->init, t->shape.spec.text, asked.text);
        }
    } else {
        DDT_CHECK(model_spec_parse(cfg->model, &t->shape.spec));
    }
    dataset_open_params params = dataset_default_open_params();
    params.allow_external = cfg->allow_external_data;
    if (t->shape.spec.input_kind == MODEL_INPUT_TOKENS) params.token_context = t->shape.spec.context;
    DDT_CHECK(dataset_open_with_params(cfg->data, &params, &t->data.train));
    DDT_CHECK(train_adopt_class_count(t->data.train, &t->shape.spec, cfg->loss));
    const dataset_geometry *g = dataset_get_geometry(t->data.train);
    DDT_CHECK(train_check_data_against_model("--data", cfg->data, g, &t->shape.spec, cfg->loss));
    if (cfg->eval_data) {
        DDT_CHECK(dataset_open_with_params(cfg->eval_data, &params, &t->data.eval));
        DDT_CHECK(train_adopt_class_count(t->data.eval, &t->shape.spec, cfg->loss));
        DDT_CHECK(train_check_data_against_model("--eval-data", cfg->eval_data,
                                                 dataset_get_geometry(t->data.eval),
                                                 &t->shape.spec, cfg->loss));
    }
    if (g->rows < t->shape.global_batch)
        return ddt_error(DDT_ERR_DATA,
                         "--data '%s' has %" PRId64 " rows, fewer than one global batch of %" PRId64,
                         cfg->data, g->rows, t->shape.global_batch);
    size_t identity_size = (size_t)g->file_count * 256 + 1;
    t->data.identity = malloc(identity_size);
    if (!t->data.identity) return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    DDT_CHECK(dataset_identity(t->data.train, t->data.identity, identity_size));
    DDT_CHECK(dataset_set_chunk_cache(t->data.train, 0)); /* the feed's block cache replaces it */
    DDT_CHECK(check_outputs_against_inputs(t));
    if (t->rank == 0) DDT_CHECK(prepare_outputs(cfg));
    if (t->rank == 0 && cfg->save) DDT_CHECK(model_file_check_writable(cfg->save));
    DDT_CHECK(checkpointing_init(t));
    return report_open(t);
}

/* Every rank reads the same data as rank 0 (the options were compared as text by the driver,
 * except --data and --eval-data, which are compared here as the files they name). */
static ddt_status same_data(trainer *t) {
    ddt_status status = train_check_same_data(t->control, "--data", t->data.train);
    /* Every rank has --eval-data or none (the options agreed), and takes part in its
     * broadcast whatever the first check said; the first failure is the answer. */
    if (status == DDT_ERR_COMM || !t->data.eval) return status;
    char first[1024];
    snprintf(first, sizeof first, "%s", ddt_error_message());
    ddt_status eval = train_check_same_data(t->control, "--eval-data", t->data.eval);
    if (eval == DDT_ERR_COMM || status == DDT_OK) return eval;
    return ddt_error(status, "%s", first);
}

/* ---- phase 3: the memory plan ----------------------------------------------------------- */

ddt_status train_check_device_ops(const train_config *cfg, const device *dev) {
    struct {
        device_op op;
        const char *what;
    } needs[] = {
        {loss_device_op(cfg->loss), loss_kind_name(cfg->loss)},
        {optimizer_device_op(cfg->optimizer.kind), optimizer_kind_name(cfg->optimizer.kind)},
        {DEVICE_OP_check_finite, "the step's check for finite gradients"},
        {DEVICE_OP_sum_of_squares, "the gradient norm"},
        {DEVICE_OP_scale, "the loss scale"},
        {DEVICE_OP_count_correct, "evaluation"},
    };
    for (size_t i = 0; i < sizeof needs / sizeof needs[0]; i++)
        if (needs[i].op == DEVICE_OP_COUNT || !device_supports_op(dev, needs[i].op))
            return ddt_error(DDT_ERR_USAGE,
                             "the %s backend cannot train with %s: it lacks the "
                             "operation %s",
                             device_kind_name(dev->kind), needs[i].what,
                             needs[i].op == DEVICE_OP_COUNT ? "(unknown)"
                                                            : device_op_name(needs[i].op));
    return DDT_OK;
}

/* The device and the data-plane communicator: collective (comm_init_like), so entered only
 * after every rank agreed it got this far. */
static ddt_status open_device_and_comm(trainer *t) {
    run_shape *s = &t->shape;
    DDT_CHECK(comm_agree(t->control, device_open(s->device, s->ordinal, &t->engine.dev),
                         "set-up: opening the device"));
    /* A backend may leave operations out: refuse a model it cannot run before anything (NCCL's
     * buffers included) is allocated for it. */
    DDT_CHECK(comm_agree(t->control, model_check_device(&s->spec, t->engine.dev),
                         "set-up: the model's operations on the device"));
    DDT_CHECK(comm_agree(t->control, train_check_device_ops(t->config, t->engine.dev),
                         "set-up: training's operations on the device"));
    /* GPUs all-reduce through NCCL, CPU ranks through shared memory (or as --allreduce says).
     * The communicator comes before any device memory of ddtrain's own, so that NCCL's
     * buffers (which cannot come from the allocator) find room even under a preallocating
     * policy, and what the backend took outside the allocator is counted against the limit. */
    DDT_CHECK(comm_agree(t->control, comm_check_environment(s->allreduce),
                         "set-up: the all-reduce's environment"));
    DDT_CHECK(comm_init_like(t->control, s->allreduce, t->engine.dev, &t->engine.comm));
    comm_set_wait_hook(t->engine.comm, comm_watchdog_poll, t->control);
    return DDT_OK;
}

/* Resolves this rank's limits, plans (choosing the micro-batch for --micro-batch auto, agreed
 * as the smallest any rank can hold), fixes the shard plan's shuffle window from the staging
 * fit, and refuses before anything is allocated if the plan does not fit (unless a dry run). */
static ddt_status plan_memory(trainer *t) {
    const train_config *cfg = t->config;
    run_shape *s = &t->shape;
    const dataset_geometry *g = dataset_get_geometry(t->data.train);
    DDT_CHECK(memory_limits_resolve(&cfg->memory, t->engine.dev, comm_local_rank(t->control),
                                    comm_local_size(t->control), &t->limits));
    t->limits.device_outside_allocator = comm_device_bytes_unrouted(t->engine.comm);
    t->limits.outside_allocator_owner = comm_backend_name(t->engine.comm);
    memory_plan_inputs inputs = {
        .dev = t->engine.dev,
        .precision = cfg->precision,
        .spec = &s->spec,
        .model = cfg->model_options,
        .optimizer = &cfg->optimizer,
        .geometry = g,
        .shard = {.rows = g->rows,
                  .global_batch = s->global_batch,
                  .world_size = t->world_size,
                  .rank = t->rank,
                  .seed = cfg->seed,
                  .shuffle = cfg->shuffle,
                  .block_rows = g->chunk_rows > 0 ? g->chunk_rows : 256},
        .prefetch_depth = cfg->prefetch_depth,
        .window_blocks = cfg->shuffle_window,
        .evaluation = cfg->eval_data != NULL,
    };
    if (cfg->micro_batch == TRAIN_MICRO_BATCH_AUTO) {
        int per_rank = (int)(s->global_batch / t->world_size);
        ddt_status status = memory_plan_choose_micro_batch(&inputs, per_rank, &t->limits,
                                                           &t->plan, &s->micro_batch_binding);
        /* Every rank must use the same micro-batch: the smallest any rank can hold. */
        double agreed = status == DDT_OK ? t->plan.micro_batch : 0;
        DDT_CHECK(comm_allreduce_doubles(t->control, &agreed, 1, COMM_REDUCE_MIN));
        DDT_CHECK(status);
        if (agreed == 0)
            return ddt_error(DDT_ERR_MEMORY, "--micro-batch auto: another rank cannot fit even "
                                             "one row");
        if ((int)agreed != t->plan.micro_batch) {
            memory_plan_compute(&inputs, (int)agreed, &t->limits, &t->plan);
            s->micro_batch_binding = "another rank's limits";
        }
        s->micro_batch = (int)agreed;
    } else {
        memory_plan_compute(&inputs, s->micro_batch, &t->limits, &t->plan);
    }
    s->micro_batches_per_step =
        (int)(s->global_batch / ((int64_t)t->world_size * s->micro_batch));
    if (!t->plan.fits) return cfg->dry_run ? DDT_OK : memory_plan_refuse(&t->plan, &t->limits, t->rank);
    shard_params sp = inputs.shard;
    sp.micro_batch = s->micro_batch;
    sp.window_blocks = t->plan.staging.window_blocks;
    DDT_CHECK(shard_plan_init(&sp, &t->data.rows));
    s->steps_per_epoch = shard_plan_steps_per_epoch(t->data.rows);
    s->total_steps = cfg->steps > 0 ? cfg->steps : cfg->epochs * s->steps_per_epoch;
    s->schedule.total_steps = s->total_steps;
    if (s->schedule.step_size <= 0) s->schedule.step_size = s->steps_per_epoch;
    return lr_schedule_check(&s->schedule);
}

/* ---- phase 4: engine ------------------------------------------------------------------- */

/* Timeline hooks: the reader thread's reads, the uploads, each bucket's all-reduce. The
 * trace exists (or stays NULL: tracing off) before the feed starts. */
static void trace_read(void *context, int64_t global_step, int micro_index, double start,
                       double end) {
    (void)micro_index;
    trace_event(((trainer *)context)->trace, TRACE_THREAD_READER, "read", "input", global_step + 1,
                start, end);
}

static void trace_upload(void *context, int64_t global_step, double start, double end) {
    trace_event(((trainer *)context)->trace, TRACE_THREAD_MAIN, "copy", "input", global_step + 1,
                start, end);
}

static void trace_bucket(void *context, int bucket, size_t floats, double started,
                         double finished) {
    trainer *t = context;
    char name[48];
    snprintf(name, sizeof name, "all-reduce bucket %d (%zu KiB)", bucket, floats * 4 / 1024);
    trace_event(t->trace, TRACE_THREAD_COMMUNICATION, name, "communication", t->current_step,
                started, finished);
}

/* This rank's allocations, all local: agreed before the collectives that follow. */
static ddt_status allocate_engine(trainer *t) {
    const train_config *cfg = t->config;
    run_shape *s = &t->shape;
    run_engine *e = &t->engine;
    allocator_params ap = allocator_default_params();
    ap.policy = t->limits.policy;
    ap.limit_bytes = memory_limits_allocator_bytes(&t->limits);
    ap.rank = t->rank;
    ap.limit_source = t->limits.device_source;
    DDT_CHECK(allocator_open_with_params(e->dev, &ap, &e->alloc));
    DDT_CHECK(device_set_precision(e->dev, cfg->precision, e->alloc,
        model_spec_max_gemm_operand_floats(&s->spec, s->micro_batch)));
    DDT_CHECK(model_init(&s->spec, e->alloc, s->micro_batch, cfg->model_options, &e->model));
    DDT_CHECK(optimizer_init(&cfg->optimizer, e->alloc, model_parameter_count(e->model), &e->opt));
    if (cfg->optimizer.weight_decay > 0 && !cfg->decay_all_parameters) {
        size_t count = model_parameter_count(e->model);
        bool *decays = calloc(count ? count : 1, sizeof *decays);
        if (!decays) return ddt_error(DDT_ERR_MEMORY, "out of host memory for weight-decay flags");
        for (int i = 0; i < s->spec.tensor_count; i++) {
            const model_tensor *tensor = &s->spec.tensors[i];
            if (!tensor->is_buffer && tensor->decay)
                for (size_t k = 0; k < tensor->count; k++)
                    decays[tensor->offset + k] = true;
        }
        ddt_status status = optimizer_set_decay(e->opt, decays, count);
        free(decays);
        DDT_CHECK(status);
    }
    feed_params fp = {
        .dev = e->dev,
        .alloc = e->alloc,
        .geometry = dataset_get_geometry(t->data.train),
        .rows = s->micro_batch,
        .data = t->data.train,
        .plan = t->data.rows,
        .first_step = 0, /* set again once a resume is known, before feed_start() */
        .total_steps = s->total_steps,
        .micro_batches_per_step = s->micro_batches_per_step,
        .prefetch_depth = t->plan.staging.prefetch_depth,
        .cache_blocks = t->plan.staging.cache_blocks,
        .evaluation = cfg->eval_data != NULL,
        .on_read = cfg->trace ? trace_read : NULL,
        .on_upload = cfg->trace ? trace_upload : NULL,
        .hook_context = t,
    };
    DDT_CHECK(feed_init(&fp, &t->data.feed));
    DDT_CHECK(allocator_alloc(e->alloc, MEMORY_COMPONENT_WORKSPACE,
                              TRAIN_SCALAR_COUNT * sizeof(float), (void **)&e->scalars));
    if (memory_plan_samples(&s->spec, cfg->eval_data != NULL)) {
        DDT_CHECK(generator_init(&e->sampler, e->model, e->alloc));
        e->sampling = true;
    }
    size_t ready_points[MODEL_MAX_NODES];
    int ready_count = model_spec_ready_points(&s->spec, ready_points, MODEL_MAX_NODES);
    DDT_CHECK(gradient_buckets_init(e->comm, model_gradients(e->model),
                                    model_parameter_count(e->model), ready_points, ready_count,
                                    cfg->bucket_bytes, &e->buckets));
    gradient_buckets_set_overlap(e->buckets, cfg->overlap);
    step_timer_init(&t->timer, e->dev, e->comm);
    /* The plan is exact: a difference is a bug in the plan, which would make limits lie. */
    allocator_stats stats = allocator_get_stats(e->alloc);
    if (stats.bytes_in_use != t->plan.device_total)
        return ddt_error(DDT_ERR_INTERNAL,
                         "the memory plan said %zu bytes of device memory, the allocator holds %zu",
                         t->plan.device_total, stats.bytes_in_use);
    return DDT_OK;
}

static ddt_status build_engine(trainer *t) {
    const train_config *cfg = t->config;
    DDT_CHECK(comm_agree(t->control, allocate_engine(t), "set-up: allocating"));
    if (!cfg->trace) return DDT_OK;
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    DDT_CHECK(comm_agree(t->control,
                         trace_init(cfg->trace, cfg->trace_first, cfg->trace_last, t->control,
                                    host, &t->trace),
                         "set-up: the trace"));
    gradient_buckets_set_observer(t->engine.buckets, trace_bucket, t);
    return DDT_OK;
}

/* ---- phase 5: identical initial weights ------------------------------------------------ */

static uint64_t checksum_bytes(const void *data, size_t bytes) {
    const unsigned char *p = data;
    uint64_t hash = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < bytes; i++)
        hash = (hash ^ p[i]) * 0x100000001b3ull;
    return hash;
}

/* Rank 0: --init's parameters into the model, or fresh ones from --seed. */
static ddt_status fresh_weights_on_root(trainer *t) {
    run_engine *e = &t->engine;
    if (t->rank != 0) return DDT_OK;
    if (!t->config->init) return model_init_parameters(e->model, t->config->seed);
    size_t bytes = model_spec_state_count(&t->shape.spec) * sizeof(float);
    float *host = malloc(bytes ? bytes : 1);
    if (!host) return ddt_error(DDT_ERR_MEMORY, "out of host memory for --init's parameters");
    ddt_status status = model_file_read_parameters(t->config->init, &t->shape.spec, host);
    if (status == DDT_OK) status = model_set_state(e->model, host);
    free(host);
    return status;
}

/* Rank 0's weights to every rank, then a checksum compared across ranks. */
static ddt_status share_weights(trainer *t) {
    run_engine *e = &t->engine;
    size_t count = model_parameter_count(e->model);
    DDT_CHECK(comm_broadcast_floats(e->comm, model_parameters(e->model), count, 0));
    if (model_buffer_count(e->model)) /* running statistics: rank 0's, as DDP's buffers */
        DDT_CHECK(comm_broadcast_floats(e->comm, model_buffers(e->model),
                                        model_buffer_count(e->model), 0));
    float *host = malloc(count * sizeof(float));
    if (!host) return ddt_error(DDT_ERR_MEMORY, "out of host memory for a weight checksum");
    ddt_status status = device_copy_device_to_host(e->dev, host, model_parameters(e->model),
                                                         count * sizeof(float));
    uint64_t sums[2];
    sums[0] = sums[1] = ~checksum_bytes(host, count * sizeof(float));
    sums[1] = ~sums[1]; /* MIN of sums[0] = ~MAX, so one all-reduce finds both */
    free(host);
    DDT_CHECK(comm_agree(t->control, status, "set-up: the weights' checksum"));
    DDT_CHECK(comm_allreduce_u64(t->control, sums, 2, COMM_REDUCE_MIN));
    uint64_t largest = ~sums[0], smallest = sums[1];
    if (largest != smallest)
        return ddt_error(DDT_ERR_COMM,
                         "initial weights differ between ranks after the broadcast (checksums "
                         "%016" PRIx64 " and %016" PRIx64 "); refusing to train",
                         smallest, largest);
    return DDT_OK;
}

static ddt_status initial_weights(trainer *t) {
    bool resumed = false;
    DDT_CHECK(checkpointing_resume(t, &resumed));
    if (!resumed)
        DDT_CHECK(comm_agree(t->control, fresh_weights_on_root(t), "set-up: initial weights"));
    return comm_agree(t->control, share_weights(t), "set-up: sharing the weights");
}

/* ---- the loop ----------------------------------------------------------------------------- */

/* Rank 0, token models: a short continuation of a newline (or the end-of-text token), as
 * llm.c and nanoGPT show while training. */
static ddt_status print_sample(trainer *t) {
    if (!t->engine.sampling || t->rank != 0) return DDT_OK;
    const model_spec *spec = &t->shape.spec;
    int32_t prompt = spec->vocab == 256 ? '\n' : spec->vocab == 50257 ? 50256 : 0;
    sampling s = {.temperature = 0.8f, .top_k = 40, .seed = t->config->seed + (uint64_t)t->current_step};
    FILE *out = t->config->out;
    fprintf(out, "sample at step %" PRId64 ":%s", t->current_step, spec->vocab == 256 ? "\n" : "");
    ddt_status status = generator_run(&t->engine.sampler, &prompt, 1, 64, &s, out, NULL);
    fprintf(out, "\n");
    fflush(out);
    return status;
}

/* After a step: evaluation at an epoch's end, a checkpoint when due, a stop when asked. */
static ddt_status after_step(trainer *t, const step_outcome *o, bool *stop) {
    const train_config *cfg = t->config;
    int64_t done = o->done;
    bool last = done == t->shape.total_steps;
    if (done == cfg->trace_last) DDT_CHECK(comm_agree(t->control, trace_finish(t->trace), "the trace"));
    bool epoch_end = done % t->shape.steps_per_epoch == 0 || last;
    bool periodic = cfg->eval_every > 0 && (done % cfg->eval_every == 0 || last);
    evaluation result;
    bool evaluated = false;
    if (t->data.eval && (periodic || (epoch_end && cfg->eval_every == 0))) {
        DDT_CHECK(evaluate_model(t->control, t->engine.dev, t->engine.model, t->data.eval,
                                 cfg->loss, t->data.feed,
                                 &t->engine.scalars[TRAIN_SCALAR_EVAL_LOSS], cfg->eval_rows,
                                 &result));
        evaluated = true;
        if (periodic) report_evaluation(t, done, &result);
        double sample_started = clock_now();
        DDT_CHECK(comm_agree(t->control, print_sample(t), "a sample"));
        /* the sample belongs to the evaluation: not training time, in no window's rate */
        t->report.evaluation_seconds += clock_now() - sample_started;
    }
    if (epoch_end)
        report_epoch(t, (done - 1) / t->shape.steps_per_epoch,
                     evaluated && !periodic ? &result : NULL);
    *stop = o->stop_requested ||
            (cfg->stop_after > 0 && done - t->start_step == cfg->stop_after && !last);
    if (checkpointing_due(&t->checkpoints, done, o->checkpoint_by_time, *stop, last)) {
        failpoint_stall("checkpoint", t->rank);
        DDT_CHECK(comm_agree(t->control, checkpointing_write(t, done), "a checkpoint"));
    }
    if (*stop && t->rank == 0) {
        fprintf(cfg->out, "stopping at step %" PRId64 " of %" PRId64 " (%s): %s\n", done,
                t->shape.total_steps, o->stop_requested ? "SIGTERM or SIGUSR1" : "--stop-after",
                cfg->checkpoint_dir ? "checkpoint written; run again with --resume to continue"
                                    : "no --checkpoint-dir, so the progress is not saved");
        fflush(cfg->out);
    }
    return DDT_OK;
}

static ddt_status train_loop(trainer *t) {
    feed *f = t->data.feed;
    DDT_CHECK(comm_agree(t->control, feed_start(f), "set-up: starting the reader"));
    report_loop_start(t);
    t->checkpoints.last_time = clock_now();
    device_fill_zero(t->engine.dev, t->engine.scalars,
                                  TRAIN_SCALAR_COUNT * sizeof(float));
    int64_t step = t->start_step;
    for (bool stop = false; step < t->shape.total_steps && !stop; step++) {
        step_outcome outcome;
        failpoint_stall("step", t->rank);
        DDT_CHECK(train_step(t, step, &outcome));
        report_step(t, &outcome);
        DDT_CHECK(after_step(t, &outcome, &stop));
        t->stopped = stop;
    }
    t->steps_done = step;
    DDT_CHECK(step_timer_flush(&t->timer));
    t->report.train_seconds = clock_now() - t->report.loop_started - t->report.evaluation_seconds;
    /* the trace's window ended early, or not at all */
    return comm_agree(t->control, trace_finish(t->trace), "the trace");
}

/* ---- results and teardown ---------------------------------------------------------------- */

static ddt_status save_model(trainer *t) {
    run_engine *e = &t->engine;
    if (t->rank != 0 || !t->config->save || t->stopped) return DDT_OK;
    size_t count = model_spec_state_count(&t->shape.spec);
    float *host = malloc((count ? count : 1) * sizeof(float));
    if (!host) return ddt_error(DDT_ERR_MEMORY, "out of host memory to save the model");
    ddt_status status = model_get_state(e->model, host);
    model_spec_set_counters(&t->shape.spec, host, t->steps_done * t->shape.micro_batches_per_step);
    if (status == DDT_OK) status = model_file_save(t->config->save, &t->shape.spec, host);
    free(host);
    return status;
}

/* `status`: how the run ended. After a communication failure the data plane is abandoned (a
 * lost peer must not hold up the end); after any other, every rank agreed on it and frees the
 * data plane together. */
static void trainer_free(trainer *t, ddt_status status) {
    feed_free(t->data.feed);
    generator_free(&t->engine.sampler);
    trace_free(t->trace);
    report_close(&t->report);
    gradient_buckets_free(t->engine.buckets);
    optimizer_free(t->engine.opt);
    model_free(t->engine.model);
    if (status == DDT_ERR_COMM)
        comm_abandon(t->engine.comm);
    else
        comm_free(t->engine.comm);
    allocator_close(t->engine.alloc);
    if (t->engine.dev) device_close(t->engine.dev);
    checkpointing_free(&t->checkpoints);
    shard_plan_free(t->data.rows);
    if (t->data.eval) dataset_close(t->data.eval);
    if (t->data.train) dataset_close(t->data.train);
    free(t->data.identity);
}

/* --dry-run: the plan, and whether it fits on every rank. */
static ddt_status dry_run(trainer *t) {
    report_memory_plan(t);
    double all_fit = t->plan.fits;
    DDT_CHECK(comm_allreduce_doubles(t->control, &all_fit, 1, COMM_REDUCE_MIN));
    if (t->rank == 0) {
        fprintf(t->config->out, "dry run: the plan %s\n", all_fit > 0 ? "fits" : "does not fit");
        fflush(t->config->out);
    }
    return comm_agree(t->control,
                      t->plan.fits ? DDT_OK : memory_plan_refuse(&t->plan, &t->limits, t->rank),
                      "the dry run's plan");
}

ddt_status train_run(comm *control, const train_config *config) {
    double started = clock_now();
    trainer t;
    memset(&t, 0, sizeof t);
    t.config = config;
    t.control = control;
    t.rank = comm_rank(control);
    t.world_size = comm_world_size(control);
    failpoint_stall("setup", t.rank);
    ddt_status status = comm_agree(control, resolve_settings(&t), "set-up: settings");
    if (status == DDT_OK) status = comm_agree(control, open_data(&t), "set-up: data");
    if (status == DDT_OK) status = comm_agree(control, same_data(&t), "set-up: the same data");
    if (status == DDT_OK) status = open_device_and_comm(&t);
    if (status == DDT_OK) status = comm_agree(control, plan_memory(&t), "set-up: the memory plan");
    if (status == DDT_OK && config->dry_run) {
        status = dry_run(&t);
        trainer_free(&t, status);
        return status;
    }
    if (status == DDT_OK) report_memory_plan(&t);
    if (status == DDT_OK) status = build_engine(&t);
    if (status == DDT_OK) status = initial_weights(&t);
    if (status == DDT_OK) {
        feed_set_first_step(t.data.feed, t.start_step, t.shape.total_steps);
        report_configuration(&t);
        status = train_loop(&t);
    }
    if (status == DDT_OK) status = comm_agree(control, save_model(&t), "saving the model");
    if (status == DDT_OK) report_summary(&t, clock_now() - started);
    trainer_free(&t, status);
    return status;
}
