/* train.c - `ddtrain train`: data-parallel training on every rank, start to finish.
 *
 * Reading order: train_run() sets up in phases (settings, data, engine, initial weights),
 * each ending at an agreement point so that a failure on any rank ends all ranks together
 * with one message; then train_loop() runs the steps. Each step: k micro-batches with no
 * communication, the last one's backward pass starting gradient-bucket all-reduces as layers
 * finish, then one small control all-reduce (loss, error flag) that doubles as the per-step
 * agreement point, then the optimizer. Rank 0 prints progress and writes the metrics file.
 */
#include "driver/trainer.h"

/* ---- phase 1: settings (the same on every rank) ---------------------------------------- */

static ddt_status resolve_settings(trainer *t) {
    const options *o = t->opts;
    int world = t->job->world_size;
    if (!o->data) return ddt_error(DDT_ERR_USAGE, "--data is required (see ddtrain train --help)");
    if (options_given(o, "epochs") && o->steps > 0)
        return ddt_error(DDT_ERR_USAGE, "give --epochs or --steps, not both");
    DDT_CHECK(device_choose(o->device, t->job->local_rank, &t->device_kind, &t->device_ordinal));
    DDT_CHECK(precision_kind_parse(o->precision, &t->precision));
    if (t->precision != PRECISION_FP32 && t->device_kind != DEVICE_KIND_CUDA)
        return ddt_error(DDT_ERR_USAGE,
                         "--precision %s needs --device cuda (CPU ranks compute "
                         "in fp32)",
                         o->precision);
    t->loss_scale = t->precision == PRECISION_FP16 ? (float)o->loss_scale : 1.0f;
    if ((o->checkpoint_every || o->resume) && !o->checkpoint_dir)
        return ddt_error(DDT_ERR_USAGE, "%s needs --checkpoint-dir",
                         o->resume ? "--resume" : "--checkpoint-every");
    if (o->checkpoint_every)
        DDT_CHECK(train_parse_checkpoint_every(o->checkpoint_every, &t->checkpoint_every_steps,
                                               &t->checkpoint_every_seconds));
    if (o->trace) {
        int64_t first, last;
        DDT_CHECK(trace_parse_steps(o->trace_steps, &first, &last));
    }
    DDT_CHECK(loss_kind_parse(o->loss, &t->loss));
    t->optimizer_settings = optimizer_default_params();
    DDT_CHECK(optimizer_kind_parse(o->optimizer, &t->optimizer_settings.kind));
    /* --momentum's default is SGD's; only an explicit --momentum is an error with AdamW. */
    bool sgd = t->optimizer_settings.kind == OPTIMIZER_SGD;
    t->optimizer_settings.momentum = sgd || options_given(o, "momentum") ? (float)o->momentum : 0;
    t->optimizer_settings.nesterov = o->nesterov;
    t->optimizer_settings.weight_decay = (float)o->weight_decay;
    t->optimizer_settings.beta1 = (float)o->beta1;
    t->optimizer_settings.beta2 = (float)o->beta2;
    t->optimizer_settings.eps = (float)o->eps;
    DDT_CHECK(optimizer_params_check(&t->optimizer_settings));
    DDT_CHECK(lr_schedule_kind_parse(o->lr_schedule, &t->schedule.kind));
    t->global_batch = o->global_batch;
    if (o->micro_batch == OPTIONS_AUTO) {
        if (t->global_batch % world != 0)
            return ddt_error(DDT_ERR_USAGE,
                             "--global-batch %" PRId64 " cannot be split evenly over %d ranks "
                             "(give a multiple of %d)",
                             t->global_batch, world, world);
        return DDT_OK; /* chosen by plan_memory() once the data and limits are known */
    }
    if (o->micro_batch == 0) {
        if (t->global_batch % world != 0)
            return ddt_error(DDT_ERR_USAGE,
                             "--global-batch %" PRId64 " cannot be split evenly over %d ranks "
                             "(give a multiple of %d, or set --micro-batch)",
                             t->global_batch, world, world);
        t->micro_batch = (int)(t->global_batch / world);
    } else {
        t->micro_batch = (int)o->micro_batch;
    }
    if (t->global_batch % ((int64_t)world * t->micro_batch) != 0)
        return ddt_error(DDT_ERR_USAGE,
                         "--global-batch %" PRId64 " is not a multiple of %d ranks x "
                         "--micro-batch %d = %" PRId64 " (each rank must run a whole number "
                         "of micro-batches per step)",
                         t->global_batch, world, t->micro_batch, (int64_t)world * t->micro_batch);
    return DDT_OK;
}

/* ---- phase 2: data and model spec ------------------------------------------------------ */

static ddt_status check_geometry_against_model(const char *what, const char *path,
                                               const dataset_geometry *g, const model_spec *spec,
                                               loss_kind loss) {
    if (g->features != spec->input_width)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s '%s' has %d features per row, but the model '%s' takes %d inputs",
                         what, path, g->features, spec->text, spec->input_width);
    ddt_status status = loss_check_compatible(loss, spec->output_width, g->class_labels, g->classes,
                                              g->target_width);
    if (status != DDT_OK) return ddt_error(status, "%s '%s': %s", what, path, ddt_error_message());
    return DDT_OK;
}

/* Every file this run writes (or writes into) against every file it reads, by identity: a
 * run never writes over its own inputs, however their paths are spelled. Before anything is
 * opened for writing; on every rank (each sees its own file system). */
static ddt_status check_outputs_against_inputs(trainer *t) {
    const options *o = t->opts;
    enum { MAX_INPUTS = 1024 };
    file_role *inputs = calloc(MAX_INPUTS, sizeof *inputs);
    if (!inputs) return ddt_error(DDT_ERR_MEMORY, "out of host memory");
    int count = 0;
    const struct {
        const char *option;
        dataset *data;
    } datasets[] = {{"--data", t->train_data}, {"--eval-data", t->eval_data}};
    for (int d = 0; d < 2; d++) {
        const dataset *data = datasets[d].data;
        for (int f = 0; data && f < dataset_get_geometry(data)->file_count && count < MAX_INPUTS;
             f++)
            inputs[count++] = (file_role){datasets[d].option, dataset_file_path(data, f), false};
    }
    if (o->init && count < MAX_INPUTS) inputs[count++] = (file_role){"--init", o->init, false};
    const file_role outputs[] = {
        {"--save", o->save, false},
        {"--metrics", o->metrics, false},
        {"--trace", o->trace, false},
        {"--checkpoint-dir", o->checkpoint_dir, true},
        {"--tensorboard", o->tensorboard, true},
    };
    ddt_status status = files_check_outputs(outputs, (int)(sizeof outputs / sizeof outputs[0]),
                                            inputs, count);
    free(inputs);
    return status;
}

static ddt_status open_data(trainer *t) {
    const options *o = t->opts;
    if (o->init) {
        /* The saved model fixes the architecture; --model, if given, must agree with it. Only
         * the spec is read here: the parameters once the memory plan has accepted it. */
        DDT_CHECK(model_file_read_spec(o->init, &t->spec));
        if (options_given(o, "model")) {
            model_spec asked;
            DDT_CHECK(model_spec_parse(o->model, &asked));
            if (strcmp(asked.text, t->spec.text) != 0)
                return ddt_error(DDT_ERR_USAGE, "--init '%s' holds model '%s', but --model is '%s'",
                                 o->init, t->spec.text, asked.text);
        }
    } else {
        DDT_CHECK(model_spec_parse(o->model, &t->spec));
    }
    dataset_open_params data_params = dataset_default_open_params();
    data_params.allow_external = o->allow_external_data;
    DDT_CHECK(dataset_open_with_params(o->data, &data_params, &t->train_data));
    const dataset_geometry *g = dataset_get_geometry(t->train_data);
    DDT_CHECK(check_geometry_against_model("--data", o->data, g, &t->spec, t->loss));
    if (o->eval_data) {
        DDT_CHECK(dataset_open_with_params(o->eval_data, &data_params, &t->eval_data));
        DDT_CHECK(check_geometry_against_model(
            "--eval-data", o->eval_data, dataset_get_geometry(t->eval_data), &t->spec, t->loss));
    }
    if (g->rows < t->global_batch)
        return ddt_error(DDT_ERR_DATA,
                         "--data '%s' has %" PRId64
                         " rows, fewer than one global batch of %" PRId64,
                         o->data, g->rows, t->global_batch);
    DDT_CHECK(dataset_set_chunk_cache(t->train_data, 0)); /* see plan_memory() */
    t->schedule.base_lr = (float)o->lr;
    t->schedule.min_lr = (float)o->min_lr;
    t->schedule.warmup_steps = o->warmup_steps;
    t->schedule.gamma = (float)o->lr_gamma;

    DDT_CHECK(check_outputs_against_inputs(t));
    if (t->job->rank == 0) {
        if (o->save) DDT_CHECK(model_file_check_writable(o->save));
        if (o->checkpoint_dir) {
            DDT_CHECK(checkpoint_check_directory(o->checkpoint_dir));
            char latest[4096];
            bool found = false;
            DDT_CHECK(checkpoint_find_latest(o->checkpoint_dir, latest, sizeof latest, &found));
            if (found && !o->resume)
                return ddt_error(DDT_ERR_USAGE,
                                 "--checkpoint-dir %s already holds checkpoints of a run (%s): "
                                 "pass --resume to continue it, or use another directory",
                                 o->checkpoint_dir, latest);
        }
        if (o->metrics) {
            t->metrics = fopen(o->metrics, "a"); /* records are added to what is there */
            if (!t->metrics)
                return ddt_error(DDT_ERR_IO, "--metrics '%s': cannot open for appending: %s",
                                 o->metrics, strerror(errno));
        }
        if (o->tensorboard)
            DDT_CHECK(tensorboard_open(o->tensorboard, t->job->host, &t->tensorboard));
    }
    return DDT_OK;
}

/* ---- phase 3: the memory plan ---------------------------------------------------------- */

/* Resolves this rank's limits, plans (choosing the micro-batch for --micro-batch auto, agreed
 * as the smallest any rank can hold), fixes the shard plan's shuffle window from the staging
 * fit, and refuses before anything is allocated if the plan does not fit. */
static ddt_status plan_memory(trainer *t, bool *fits) {
    const options *o = t->opts;
    const dataset_geometry *g = dataset_get_geometry(t->train_data);
    int world = t->job->world_size;
    DDT_CHECK(device_open(t->device_kind, t->device_ordinal, &t->dev));
    /* GPUs all-reduce through NCCL, CPU ranks through MPI. The communicator comes before any
     * device memory of ddtrain's own, so that NCCL's buffers (which cannot come from the
     * allocator) find room even under a preallocating policy, and what they took is measured
     * and counted against the limit. */
    DDT_CHECK(comm_init(t->device_kind == DEVICE_KIND_CUDA ? COMM_BACKEND_NCCL : COMM_BACKEND_MPI,
                        MPI_COMM_WORLD, t->dev, &t->comm));
    comm_set_timeout(t->comm, o->comm_timeout);
    t->device_timing = t->dev->ops->native_stream(t->dev) != NULL; /* asynchronous: a GPU */
    DDT_CHECK(memory_limits_resolve(o, t->dev, t->job->local_rank, t->job->local_size,
                                    &t->limits));
    t->limits.device_outside_allocator = comm_device_bytes_unrouted(t->comm);
    t->limits.outside_allocator_owner = comm_backend_name(t->comm);

    memory_plan_inputs inputs = {
        .dev = t->dev,
        .precision = t->precision,
        .spec = &t->spec,
        .optimizer = &t->optimizer_settings,
        .geometry = g,
        .shard = {.rows = g->rows,
                  .global_batch = t->global_batch,
                  .world_size = world,
                  .rank = t->job->rank,
                  .seed = (uint64_t)o->seed,
                  .shuffle = !o->no_shuffle,
                  .block_rows = g->chunk_rows > 0 ? g->chunk_rows : 256},
        .prefetch_depth = o->prefetch_depth,
        .window_blocks = o->shuffle_window,
        .evaluation = o->eval_data != NULL,
    };
    if (o->micro_batch == OPTIONS_AUTO) {
        int per_rank = (int)(t->global_batch / world);
        ddt_status status = memory_plan_choose_micro_batch(&inputs, per_rank, &t->limits, &t->plan,
                                                           &t->micro_batch_binding);
        int chosen = status == DDT_OK ? t->plan.micro_batch : 0;
        /* Every rank must use the same micro-batch: the smallest any rank can hold. */
        int agreed = chosen;
        MPI_Allreduce(MPI_IN_PLACE, &agreed, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        if (status != DDT_OK) return status;
        if (agreed == 0)
            return ddt_error(DDT_ERR_MEMORY, "--micro-batch auto: another rank "
                                             "cannot fit even one row");
        if (agreed != chosen) {
            memory_plan_compute(&inputs, agreed, &t->limits, &t->plan);
            t->micro_batch_binding = "another rank's limits";
        }
        t->micro_batch = agreed;
    } else {
        memory_plan_compute(&inputs, t->micro_batch, &t->limits, &t->plan);
    }
    t->micro_batches_per_step = (int)(t->global_batch / ((int64_t)world * t->micro_batch));
    *fits = t->plan.fits;
    if (!t->plan.fits && !o->dry_run) return memory_plan_refuse(&t->plan, &t->limits, t->job->rank);
    if (!t->plan.fits) return DDT_OK;

    shard_params sp = inputs.shard;
    sp.micro_batch = t->micro_batch;
    sp.window_blocks = t->plan.staging.window_blocks;
    DDT_CHECK(shard_plan_init(&sp, &t->plan_rows));
    t->steps_per_epoch = shard_plan_steps_per_epoch(t->plan_rows);
    t->total_steps = o->steps > 0 ? o->steps : o->epochs * t->steps_per_epoch;
    t->schedule.total_steps = t->total_steps;
    t->schedule.step_size = o->lr_step_size > 0 ? o->lr_step_size : t->steps_per_epoch;
    return lr_schedule_check(&t->schedule);
}

/* ---- phase 4: engine ------------------------------------------------------------------- */

static void trace_bucket(void *context, int bucket, size_t floats, double started, double finished);

static ddt_status build_engine(trainer *t) {
    allocator_params ap = allocator_default_params();
    ap.policy = t->limits.policy;
    ap.limit_bytes = memory_limits_allocator_bytes(&t->limits);
    ap.rank = t->job->rank;
    ap.limit_source = t->limits.device_source;
    DDT_CHECK(allocator_init_with_params(t->dev, &ap, &t->alloc));
    DDT_CHECK(
        t->dev->ops->set_precision(t->dev, t->precision, t->alloc,
                                   model_spec_max_gemm_operand_floats(&t->spec, t->micro_batch)));
    DDT_CHECK(model_init(&t->spec, t->alloc, t->micro_batch, &t->model));
    DDT_CHECK(
        optimizer_init(&t->optimizer_settings, t->alloc, model_parameter_count(t->model), &t->opt));
    DDT_CHECK(batch_buffers_init(&t->buffers, t->alloc, t->dev, dataset_get_geometry(t->train_data),
                                 t->micro_batch, t->opts->eval_data != NULL));
    size_t ready_points[MODEL_MAX_LAYERS];
    for (int i = 0; i < t->spec.dense_count; i++)
        ready_points[i] = model_spec_dense_layout(&t->spec, i).weight_offset;
    DDT_CHECK(gradient_buckets_init(
        t->comm, model_gradients(t->model), model_parameter_count(t->model), ready_points,
        t->spec.dense_count, (size_t)t->opts->bucket_size, &t->buckets));
    /* Rank 0 names the ranks the others wait for: warned after a tenth of the timeout. */
    double warn_after = t->opts->comm_timeout / 10 < 30 ? t->opts->comm_timeout / 10 : 30;
    DDT_CHECK(watchdog_init(MPI_COMM_WORLD, warn_after, &t->watchdog));
    comm_set_wait_hook(t->comm, watchdog_poll, t->watchdog);
    if (t->opts->trace) {
        int64_t first, last;
        DDT_CHECK(trace_parse_steps(t->opts->trace_steps, &first, &last));
        DDT_CHECK(trace_init(t->opts->trace, first, last, MPI_COMM_WORLD, t->job->host, &t->trace));
        gradient_buckets_set_observer(t->buckets, trace_bucket, t);
    }
    /* The plan is exact: a difference is a bug in the plan, which would make limits lie. */
    allocator_stats stats = allocator_get_stats(t->alloc);
    if (stats.bytes_in_use != t->plan.device_total)
        return ddt_error(DDT_ERR_INTERNAL,
                         "the memory plan said %zu bytes of device memory, the allocator holds %zu",
                         t->plan.device_total, stats.bytes_in_use);
    return DDT_OK;
}

/* ---- phase 4: identical initial weights ------------------------------------------------ */

static uint64_t checksum_bytes(const void *data, size_t bytes) {
    const unsigned char *p = data;
    uint64_t hash = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < bytes; i++)
        hash = (hash ^ p[i]) * 0x100000001b3ull;
    return hash;
}

/* Reads the parameters of model file `path`, whose spec `spec` was read and planned for, into
 * the model's (allocated) parameters: directly on a CPU device, through a host buffer of the
 * same size on others. */
static ddt_status load_model_parameters(device *dev, model *m, const char *path,
                                        const model_spec *spec) {
    if (dev->kind == DEVICE_KIND_CPU)
        return model_file_read_parameters(path, spec, model_parameters(m));
    size_t bytes = model_parameter_count(m) * sizeof(float);
    float *host = malloc(bytes);
    if (!host) return ddt_error(DDT_ERR_MEMORY, "%s: out of host memory for the parameters", path);
    ddt_status status = model_file_read_parameters(path, spec, host);
    if (status == DDT_OK)
        status = dev->ops->copy_host_to_device(dev, model_parameters(m), host, bytes);
    free(host);
    return status;
}

static ddt_status initial_weights_on_root(trainer *t, bool *resumed) {
    *resumed = false;
    if (t->job->rank != 0) return DDT_OK;
    if (t->opts->resume) {
        DDT_CHECK(train_resume_on_root(t, resumed));
        if (*resumed) return DDT_OK;
    }
    if (!t->opts->init) return model_init_parameters(t->model, (uint64_t)t->opts->seed);
    return load_model_parameters(t->dev, t->model, t->opts->init, &t->spec);
}

/* Broadcasts rank 0's weights, then compares a checksum across ranks. */
static ddt_status share_initial_weights(trainer *t) {
    size_t count = model_parameter_count(t->model);
    DDT_CHECK(comm_broadcast_floats(t->comm, model_parameters(t->model), count, 0));
    float *host = malloc(count * sizeof(float));
    if (!host) return ddt_error(DDT_ERR_MEMORY, "out of host memory for a weight checksum");
    ddt_status status = t->dev->ops->copy_device_to_host(t->dev, host, model_parameters(t->model),
                                                         count * sizeof(float));
    uint64_t sums[2];
    sums[0] = sums[1] = checksum_bytes(host, count * sizeof(float));
    free(host);
    DDT_CHECK(status);
    DDT_CHECK(comm_allreduce_u64(t->comm, &sums[0], 1, COMM_REDUCE_MIN));
    DDT_CHECK(comm_allreduce_u64(t->comm, &sums[1], 1, COMM_REDUCE_MAX));
    if (sums[0] != sums[1])
        return ddt_error(DDT_ERR_COMM,
                         "initial weights differ between ranks after the broadcast "
                         "(checksums %016" PRIx64 " and %016" PRIx64 "); refusing "
                         "to train",
                         sums[0], sums[1]);
    return DDT_OK;
}

/* ---- reporting ------------------------------------------------------------------------- */

/* ---- phase 5: the training loop -------------------------------------------------------- */

/* Takes the next micro-batch from the stream and starts uploading it into `buffer`. */
static ddt_status fetch_micro_batch(trainer *t, int buffer, micro_batch **out) {
    double waited = job_now();
    DDT_CHECK(stream_next(t->stream, out));
    t->times.data_wait += job_now() - waited;
    t->micro_batches_fetched++;
    micro_batch *mb = *out;
    double started = job_now();
    ddt_status status =
        batch_buffers_upload(&t->buffers, dataset_get_geometry(t->train_data), buffer, mb->rows,
                             mb->features, mb->labels, mb->targets, mb->row_ids);
    trace_event(t->trace, TRACE_THREAD_MAIN, "copy", "input", mb->global_step + 1, started,
                job_now());
    return status;
}

/* Gives a micro-batch's host slot back once its upload has read it. */
static ddt_status release_micro_batch(trainer *t, micro_batch *mb, int buffer) {
    ddt_status status = t->dev->ops->upload_host_done(t->dev, buffer);
    stream_release(t->stream, mb);
    return status;
}

/* Forward, loss and backward of one micro-batch from input buffer `buffer`. The last
 * micro-batch of a step reports finished layers to the gradient buckets so their all-reduce
 * overlaps the rest of backward. The loss is scaled by 1/global batch (and the fp16 loss
 * scale), so gradients come out normalised by the global batch. */
static ddt_status compute_micro_batch(trainer *t, const micro_batch *mb, int buffer, bool last) {
    batch_buffers *b = &t->buffers;
    const batch_input *in = &b->device[buffer];
    model_pass pass = {
        .training = true,
        .step = mb->global_step,
        .seed = (uint64_t)t->opts->seed,
        .row_ids = in->row_ids,
    };
    const float *logits;
    double started = job_now();
    DDT_CHECK(model_forward(t->model, in->features, mb->rows, &pass, &logits));
    loss_apply(t->dev, t->loss, mb->rows, t->spec.output_width, logits, in->labels, in->targets,
               t->loss_scale / (float)t->global_batch, &b->device_scalars[SCALAR_TRAIN_LOSS],
               model_output_gradient(t->model));
    double forward_done = job_now();
    ddt_status status =
        model_backward(t->model, mb->rows, &pass, last ? gradient_buckets_ready_callback : NULL,
                       last ? t->buckets : NULL);
    if (t->trace) {
        int64_t step = mb->global_step + 1;
        trace_event(t->trace, TRACE_THREAD_MAIN, "forward", "compute", step, started, forward_done);
        trace_event(t->trace, TRACE_THREAD_MAIN, last ? "backward (buckets start)" : "backward",
                    "compute", step, forward_done, job_now());
    }
    return status;
}

/* Runs this rank's micro-batches of one step; the gradients are left un-reduced. Uploads
 * are double-buffered: while micro-batch m computes from one input buffer, m+1 (possibly the
 * first of the next step) is already copying into the other. */
static ddt_status run_local_step(trainer *t) {
    int64_t total = (t->total_steps - t->start_step) * t->micro_batches_per_step; /* streamed */
    for (int m = 0; m < t->micro_batches_per_step; m++) {
        micro_batch *mb = t->next_micro_batch;
        int buffer = t->next_buffer;
        t->next_micro_batch = NULL;
        if (!mb) DDT_CHECK(fetch_micro_batch(t, buffer, &mb));
        double started = job_now();
        ddt_status status = t->dev->ops->upload_wait(t->dev, buffer);
        /* Issue the next upload after the compute of m-1 and before that of m. */
        if (status == DDT_OK && t->micro_batches_fetched < total) {
            t->next_buffer = buffer ^ 1;
            status = fetch_micro_batch(t, t->next_buffer, &t->next_micro_batch);
            started = job_now();
        }
        if (status == DDT_OK)
            status = compute_micro_batch(t, mb, buffer, m == t->micro_batches_per_step - 1);
        ddt_status released = release_micro_batch(t, mb, buffer);
        DDT_CHECK(status);
        DDT_CHECK(released);
        if (!t->device_timing) t->times.compute += job_now() - started;
    }
    return DDT_OK;
}

/* The stream's memory comes from the device's host allocator: pinned on GPUs. */
static ddt_status stream_host_alloc(void *context, size_t bytes, void **out) {
    device *dev = context;
    return dev->ops->host_alloc(dev, bytes, out);
}

static void stream_host_free(void *context, void *pointer) {
    device *dev = context;
    dev->ops->host_free(dev, pointer);
}

/* Collective: the loss summed over all ranks since the last read (read and reset on the
 * device; the one host synchronisation of a step that reports). */
static ddt_status read_loss(trainer *t, double *sum) {
    device *dev = t->dev;
    float local = 0;
    ddt_status status = dev->ops->copy_device_to_host(
        dev, &local, &t->buffers.device_scalars[SCALAR_TRAIN_LOSS], sizeof local);
    dev->ops->fill_zero(dev, &t->buffers.device_scalars[SCALAR_TRAIN_LOSS], sizeof(float));
    double values[2] = {local, status != DDT_OK ? 1.0 : 0.0};
    if (comm_allreduce_doubles(t->comm, values, 2, COMM_REDUCE_SUM) != DDT_OK)
        job_abort(t->job, DDT_ERR_COMM, ddt_error_message());
    if (values[1] > 0) return job_agree(t->job, status);
    *sum = values[0];
    return DDT_OK;
}

/* Every rank: after a non-finite gradient, which layer and which ranks' own loss. */
static ddt_status report_non_finite(trainer *t, int64_t step) {
    device *dev = t->dev;
    const float *gradients = model_gradients(t->model);
    char layer[64] = "some layer";
    for (int d = 0; d < t->spec.dense_count; d++) {
        dense_layout layout = model_spec_dense_layout(&t->spec, d);
        bool weight_finite = true, bias_finite = true;
        dev->ops->check_finite(dev, (size_t)layout.inputs * (size_t)layout.outputs,
                               gradients + layout.weight_offset, &weight_finite);
        dev->ops->check_finite(dev, (size_t)layout.outputs, gradients + layout.bias_offset,
                               &bias_finite);
        if (!weight_finite || !bias_finite) {
            snprintf(layer, sizeof layer, "dense_%d/%s", d, weight_finite ? "bias" : "weight");
            break;
        }
    }
    float local_loss = 0;
    dev->ops->copy_device_to_host(dev, &local_loss, &t->buffers.device_scalars[SCALAR_TRAIN_LOSS],
                                  sizeof local_loss);
    int mine = !isfinite(local_loss);
    int *all = t->job->rank == 0 ? calloc((size_t)t->job->world_size, sizeof(int)) : NULL;
    MPI_Gather(&mine, 1, MPI_INT, all, 1, MPI_INT, 0, MPI_COMM_WORLD);
    char ranks[256] = "";
    size_t used = 0;
    for (int r = 0; all && r < t->job->world_size && used + 16 < sizeof ranks; r++)
        if (all[r])
            used +=
                (size_t)snprintf(ranks + used, sizeof ranks - used, "%s%d", used ? ", " : "", r);
    free(all);
    return ddt_error(DDT_ERR_DATA,
                     "step %" PRId64 " (epoch %" PRId64 "): the gradient of %s is not finite "
                     "(NaN or Inf) after the all-reduce; ranks whose own loss was not finite: %s; "
                     "try a lower --lr",
                     step, (step - 1) / t->steps_per_epoch + 1, layer, ranks[0] ? ranks : "none");
}

/* Ends every rank after a communication failure; rank 0 names the ranks not at this step. */
static _Noreturn void communication_failed(trainer *t, int64_t step) {
    char message[1024], lagging[256];
    watchdog_lagging(t->watchdog, lagging, sizeof lagging);
    snprintf(message, sizeof message, "step %" PRId64 ": %s%s%s", step, ddt_error_message(),
             lagging[0] ? "; ranks that never reached this step: " : "", lagging);
    job_abort(t->job, DDT_ERR_COMM, message);
}

/* Trace hooks: the reader thread's reads and each gradient bucket's all-reduce. */
static void trace_read(void *context, int64_t global_step, int micro_index, double start,
                       double end) {
    (void)micro_index;
    trace_event(context, TRACE_THREAD_READER, "read", "input", global_step + 1, start, end);
}

static void trace_bucket(void *context, int bucket, size_t floats, double started,
                         double finished) {
    trainer *t = context;
    char name[48];
    snprintf(name, sizeof name, "all-reduce bucket %d (%zu KiB)", bucket, floats * 4 / 1024);
    trace_event(t->trace, TRACE_THREAD_COMMUNICATION, name, "communication", t->current_step,
                started, finished);
}

/* GPU time: host clocks around asynchronous work measure when it was issued, so on a GPU a
 * step's compute, exposed communication and optimizer times come from the device's timer
 * marks instead: four per step, in one of two sets of slots taken in turn, each set read
 * when the step two later begins (long finished then: the read does not wait). */
enum { STEP_MARK_START, STEP_MARK_BACKWARD_DONE, STEP_MARK_REDUCED, STEP_MARK_UPDATED, STEP_MARKS };

static void step_mark(trainer *t, int64_t step, int mark) {
    if (t->device_timing) (void)t->dev->ops->timer_mark(t->dev, (int)(step & 1) * STEP_MARKS + mark);
}

/* Adds the times of the step last marked in `set` (if any) to t->times. */
static ddt_status step_marks_read(trainer *t, int set) {
    if (!t->device_timing || !t->marks_pending[set]) return DDT_OK;
    t->marks_pending[set] = false;
    const device_ops *ops = t->dev->ops;
    int base = set * STEP_MARKS;
    double compute = 0, exposed = 0, optimizer = 0;
    DDT_CHECK(ops->timer_elapsed(t->dev, base + STEP_MARK_START, base + STEP_MARK_BACKWARD_DONE,
                                 &compute));
    DDT_CHECK(ops->timer_elapsed(t->dev, base + STEP_MARK_BACKWARD_DONE, base + STEP_MARK_REDUCED,
                                 &exposed));
    DDT_CHECK(ops->timer_elapsed(t->dev, base + STEP_MARK_REDUCED, base + STEP_MARK_UPDATED,
                                 &optimizer));
    t->times.compute += compute;
    t->times.communication += exposed;
    t->times.optimizer += optimizer;
    double busy = comm_device_busy_seconds(t->comm);
    if (busy >= 0) t->times.allreduce_device = busy;
    return DDT_OK;
}

/* Values every rank contributes to the per-step agreement (summed). */
enum {
    CONTROL_LOCAL_FAILURE, /* a rank failed (bad data, I/O...) */
    CONTROL_OVERFLOW,      /* fp16: non-finite gradients, skip the step */
    CONTROL_NON_FINITE,    /* fp32: non-finite gradients, stop */
    CONTROL_STOP,          /* a rank got SIGTERM/SIGUSR1 */
    CONTROL_CHECKPOINT,    /* rank 0: --checkpoint-every's duration has passed */
    CONTROL_COUNT,
};

static ddt_status train_loop(trainer *t) {
    job *j = t->job;
    const options *o = t->opts;
    const device_ops *ops = t->dev->ops;
    stream_params sp = {
        .data = t->train_data,
        .plan = t->plan_rows,
        .micro_batch = t->micro_batch,
        .first_global_step = t->start_step,
        .total_global_steps = t->total_steps - t->start_step,
        .prefetch_depth = t->plan.staging.prefetch_depth,
        .cache_blocks = t->plan.staging.cache_blocks,
        .host_alloc = stream_host_alloc,
        .host_free = stream_host_free,
        .host_alloc_context = t->dev,
        .on_read = t->trace ? trace_read : NULL,
        .on_read_context = t->trace,
    };
    ddt_status status =
        job_agree(j, t->start_step < t->total_steps ? stream_start(&sp, &t->stream) : DDT_OK);
    if (status != DDT_OK) return status;
    t->progress_bar = j->rank == 0 && job_stdout_is_terminal();

    double loop_started = job_now();
    t->loop_started = loop_started;
    t->last_checkpoint_time = loop_started;
    double log_loss_sum = 0;
    int64_t log_steps = 0;
    double log_started = loop_started;
    metrics_window window = {.started = loop_started};
    epoch_tally tally = {.started = loop_started};
    ops->fill_zero(t->dev, t->buffers.device_scalars, SCALAR_COUNT * sizeof(float));
    size_t parameter_count = model_parameter_count(t->model);
    int64_t steps_since_read = 0;
    int64_t trace_first = 0, trace_last = 0;
    if (t->trace) trace_parse_steps(o->trace_steps, &trace_first, &trace_last);
    int64_t step = t->start_step;
    for (; step < t->total_steps; step++) {
        int64_t done = step + 1;
        t->current_step = done;
        int64_t epoch = step / t->steps_per_epoch;
        bool epoch_ends = done % t->steps_per_epoch == 0 || done == t->total_steps;
        bool log_now = o->log_every > 0 && (done % o->log_every == 0 || done == t->total_steps);
        /* Decided from options only: every rank must take the same collective path. */
        bool metrics_now = (o->metrics || o->tensorboard) && o->metrics_every > 0 &&
                           (done % o->metrics_every == 0 || done == t->total_steps);
        bool reporting = log_now || epoch_ends || metrics_now;

        ddt_status local = step_marks_read(t, (int)(step & 1));
        step_mark(t, step, STEP_MARK_START);
        model_zero_gradients(t->model);
        gradient_buckets_begin(t->buckets);
        float step_scale = t->loss_scale;
        if (local == DDT_OK) local = run_local_step(t);
        step_mark(t, step, STEP_MARK_BACKWARD_DONE);

        /* Every rank takes part in the same all-reduces, even after a local failure, so the
         * failure is seen by all at the agreement below instead of hanging them. */
        double comm_started = job_now();
        watchdog_arrive(t->watchdog, done);
        if (gradient_buckets_finish(t->buckets) != DDT_OK) communication_failed(t, done);
        step_mark(t, step, STEP_MARK_REDUCED);
        /* Gradients are identical on all ranks after the all-reduce. fp16 skips a step whose
         * gradients overflowed; fp32 stops with the layer. CPU ranks check every step (cheap);
         * GPUs when they report, to keep the step free of host synchronisation. */
        bool finite = true;
        bool check =
            t->precision == PRECISION_FP16 || t->device_kind == DEVICE_KIND_CPU || reporting;
        if (local == DDT_OK && check)
            local = ops->check_finite(t->dev, parameter_count, model_gradients(t->model), &finite);
        /* The gradient norm, for the step record: rank 0 alone (the reduced gradients are the
         * same everywhere), on reporting steps only, before the agreement so a failure is
         * agreed with the rest. Under fp16 the gradients still carry this step's loss scale. */
        double gradient_squares = NAN;
        if (local == DDT_OK && metrics_now && j->rank == 0)
            local = ops->sum_of_squares(t->dev, parameter_count, model_gradients(t->model),
                                        &gradient_squares);
        double control[CONTROL_COUNT] = {0};
        control[CONTROL_LOCAL_FAILURE] = local != DDT_OK;
        control[t->precision == PRECISION_FP16 ? CONTROL_OVERFLOW : CONTROL_NON_FINITE] = !finite;
        control[CONTROL_STOP] = train_stop_requested();
        control[CONTROL_CHECKPOINT] =
            j->rank == 0 && t->checkpoint_every_seconds > 0 &&
            job_now() - t->last_checkpoint_time >= t->checkpoint_every_seconds;
        if (comm_allreduce_doubles(t->comm, control, CONTROL_COUNT, COMM_REDUCE_SUM) != DDT_OK)
            communication_failed(t, done);
        if (!t->device_timing) t->times.communication += job_now() - comm_started;
        if (control[CONTROL_LOCAL_FAILURE] > 0) return job_agree(j, local);
        if (control[CONTROL_NON_FINITE] > 0) return job_agree(j, report_non_finite(t, done));

        double optimizer_started = job_now();
        float lr = lr_schedule_at(&t->schedule, step);
        if (control[CONTROL_OVERFLOW] > 0) {
            t->skipped_steps++;
            job_say(j,
                    "step %" PRId64 ": fp16 gradient overflow; step skipped on every rank, "
                    "loss scale %g -> %g\n",
                    done, t->loss_scale, t->loss_scale / 2);
            t->loss_scale /= 2;
            t->steps_since_overflow = 0;
        } else {
            if (t->loss_scale != 1.0f)
                ops->scale(t->dev, parameter_count, 1.0f / t->loss_scale,
                           model_gradients(t->model));
            optimizer_step(t->opt, model_parameters(t->model), model_gradients(t->model), lr);
            if (t->precision == PRECISION_FP16 && ++t->steps_since_overflow % 2000 == 0)
                t->loss_scale *= 2;
        }
        double optimizer_finished = job_now();
        step_mark(t, step, STEP_MARK_UPDATED);
        t->marks_pending[step & 1] = t->device_timing;
        if (!t->device_timing) t->times.optimizer += optimizer_finished - optimizer_started;
        trace_event(t->trace, TRACE_THREAD_MAIN, "optimizer", "compute", done, optimizer_started,
                    optimizer_finished);
        log_steps++;
        tally.steps++;
        window.steps++;
        steps_since_read++;
        /* The loss stays on the device between reports (no host synchronisation per step),
         * except under fp16, where the scale can change from one step to the next. */
        if (reporting || t->precision == PRECISION_FP16) {
            double loss_sum = 0;
            status = read_loss(t, &loss_sum);
            if (status != DDT_OK) return status;
            if (t->precision == PRECISION_FP16) loss_sum /= step_scale;
            if (!isfinite(loss_sum))
                return job_agree(j,
                                 ddt_error(DDT_ERR_DATA,
                                           "the training loss became %s by step %" PRId64
                                           " (epoch %" PRId64 "); try a lower --lr",
                                           isnan(loss_sum) ? "NaN" : "infinite", done, epoch + 1));
            log_loss_sum += loss_sum;
            tally.loss_sum += loss_sum;
            window.loss_sum += loss_sum;
            t->last_train_loss = loss_sum / (double)steps_since_read;
            steps_since_read = 0;
        }
        if (metrics_now)
            train_report_step(t, done, lr, sqrt(gradient_squares) / step_scale, &window);
        if (j->rank == 0 && log_now) {
            double now = job_now();
            double rate = (double)(log_steps * t->global_batch) / (now - log_started);
            double elapsed = now - loop_started - tally.eval_seconds;
            train_print_progress(t, done, epoch, log_loss_sum / (double)log_steps, lr, rate,
                                 elapsed / (double)(done - t->start_step) *
                                     (double)(t->total_steps - done));
            log_loss_sum = 0;
            log_steps = 0;
            log_started = now;
        }
        if (done == trace_last) {
            status = job_agree(j, trace_finish(t->trace));
            if (status != DDT_OK) return status;
        }
        if (epoch_ends) {
            if (j->rank == 0 && t->progress_bar) printf("\n");
            double eval_before = tally.eval_seconds;
            status = train_end_of_epoch(t, epoch, &tally);
            if (status != DDT_OK) return status;
            double eval_spent = tally.eval_seconds - eval_before;
            loop_started += eval_spent; /* throughput excludes evaluation */
            tally = (epoch_tally){.started = job_now()};
            log_started = job_now();
        }
        bool stop =
            control[CONTROL_STOP] > 0 ||
            (o->stop_after > 0 && done - t->start_step == o->stop_after && done < t->total_steps);
        bool checkpoint_due =
            o->checkpoint_dir &&
            ((t->checkpoint_every_steps && done % t->checkpoint_every_steps == 0) ||
             control[CONTROL_CHECKPOINT] > 0 || stop || done == t->total_steps);
        if (checkpoint_due) {
            status = job_agree(j, train_write_checkpoint(t, done));
            if (status != DDT_OK) return status;
        }
        if (stop) {
            t->stopped_by_signal = true;
            job_say(j, "stopping at step %" PRId64 " of %" PRId64 " (%s): %s\n", done,
                    t->total_steps,
                    control[CONTROL_STOP] > 0 ? "SIGTERM or SIGUSR1" : "--stop-after",
                    o->checkpoint_dir ? "checkpoint written; run again with --resume to continue"
                                      : "no --checkpoint-dir, so the progress is not saved");
            step++;
            break;
        }
    }
    t->steps_done = step;
    if (step_marks_read(t, 0) != DDT_OK || step_marks_read(t, 1) != DDT_OK)
        job_print_error(j, DDT_ERR_INTERNAL); /* only the time split is lost */
    t->train_seconds = job_now() - loop_started;
    status = job_agree(j, trace_finish(t->trace)); /* the window ended early or not at all */
    watchdog_free(t->watchdog, step > t->start_step ? step : 0); /* its last arrival */
    t->watchdog = NULL;
    return status;
}

/* ---- phase 6: results ------------------------------------------------------------------ */

static ddt_status save_model(trainer *t) {
    if (t->job->rank != 0 || !t->opts->save || t->stopped_by_signal) return DDT_OK;
    size_t count = model_parameter_count(t->model);
    float *host = malloc(count * sizeof(float));
    if (!host) return ddt_error(DDT_ERR_MEMORY, "out of host memory to save the model");
    ddt_status status = t->dev->ops->copy_device_to_host(t->dev, host, model_parameters(t->model),
                                                         count * sizeof(float));
    if (status == DDT_OK) status = model_file_save(t->opts->save, &t->spec, host);
    free(host);
    return status;
}

static void trainer_free(trainer *t) {
    if (t->dev && t->stream) {
        /* Uploads may still be reading the stream's slots. */
        t->dev->ops->upload_host_done(t->dev, 0);
        t->dev->ops->upload_host_done(t->dev, 1);
        t->dev->ops->synchronize(t->dev);
    }
    stream_stop(t->stream);
    trace_free(t->trace);
    watchdog_abandon(t->watchdog);
    if (t->metrics) fclose(t->metrics);
    tensorboard_close(t->tensorboard);
    batch_buffers_free_host(&t->buffers);
    gradient_buckets_free(t->buckets);
    optimizer_free(t->opt);
    model_free(t->model);
    comm_free(t->comm);
    allocator_destroy(t->alloc);
    if (t->dev) device_close(t->dev);
    shard_plan_free(t->plan_rows);
    if (t->eval_data) dataset_close(t->eval_data);
    if (t->train_data) dataset_close(t->train_data);
}

ddt_status train_run(job *j, const options *opts) {
    double started = job_now();
    trainer t = {.job = j, .opts = opts};
    /* First, so that a stop asked for during set-up is honoured at the first step. */
    train_install_stop_handlers();
    blas_set_threads(opts->threads);
    ddt_status status = job_agree(j, job_check_slurm(j));
    if (status == DDT_OK) status = job_agree(j, resolve_settings(&t));
    if (status == DDT_OK) status = job_agree(j, open_data(&t));
    bool fits = false;
    if (status == DDT_OK) status = job_agree(j, plan_memory(&t, &fits));
    if (status == DDT_OK && opts->dry_run) {
        /* Print the plan and end: 0 if every rank's plan fits, else each rank's reason. */
        train_print_memory_plan(&t);
        int all_fit = fits;
        MPI_Allreduce(MPI_IN_PLACE, &all_fit, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        job_say(j, "dry run: the plan %s\n", all_fit ? "fits" : "does not fit");
        status = job_agree(j, fits ? DDT_OK : memory_plan_refuse(&t.plan, &t.limits, j->rank));
        trainer_free(&t);
        return status;
    }
    if (status == DDT_OK) train_print_memory_plan(&t);
    if (status == DDT_OK) status = job_agree(j, build_engine(&t));
    bool resumed = false;
    if (status == DDT_OK) status = job_agree(j, initial_weights_on_root(&t, &resumed));
    if (status == DDT_OK) status = job_agree(j, share_initial_weights(&t));
    if (status == DDT_OK) status = job_agree(j, train_share_resume_state(&t, resumed));
    if (status == DDT_OK) {
        train_print_configuration(&t);
        status = train_loop(&t);
    }
    if (status == DDT_OK) status = job_agree(j, save_model(&t));
    if (status == DDT_OK) train_report_summary(&t, job_now() - started);
    trainer_free(&t);
    return status;
}

/* ---- ddtrain eval ---------------------------------------------------------------------- */

ddt_status eval_run(job *j, const options *opts) {
    model_spec spec;
    dataset *data = NULL;
    device *dev = NULL;
    allocator *alloc = NULL;
    comm *c = NULL;
    model *m = NULL;
    batch_buffers buffers = {0};
    loss_kind loss = LOSS_SOFTMAX_CROSS_ENTROPY;
    int rows = opts->micro_batch > 0 ? (int)opts->micro_batch : 256;
    blas_set_threads(opts->threads);

    ddt_status local = DDT_OK;
    if (!opts->model_file || !opts->data)
        local = ddt_error(DDT_ERR_USAGE, "ddtrain eval needs --model-file and --data");
    if (local == DDT_OK) local = loss_kind_parse(opts->loss, &loss);
    /* The spec only: parameters are read into the model once it is allocated within the
     * device's memory. */
    if (local == DDT_OK) local = model_file_read_spec(opts->model_file, &spec);
    dataset_open_params data_params = dataset_default_open_params();
    data_params.allow_external = opts->allow_external_data;
    if (local == DDT_OK) local = dataset_open_with_params(opts->data, &data_params, &data);
    if (local == DDT_OK)
        local = check_geometry_against_model("--data", opts->data, dataset_get_geometry(data),
                                             &spec, loss);
    device_kind kind = DEVICE_KIND_CPU;
    int ordinal = 0;
    if (local == DDT_OK) local = device_choose(opts->device, j->local_rank, &kind, &ordinal);
    if (local == DDT_OK) local = device_open(kind, ordinal, &dev);
    /* eval has no memory options: the device's memory is the limit, so a model file whose spec
     * claims more is refused by the allocator before anything is reserved for it. */
    size_t device_total = 0, device_free = 0;
    char limit_source[96] = "";
    if (local == DDT_OK) local = dev->ops->memory_info(dev, &device_total, &device_free);
    if (local == DDT_OK) {
        allocator_params ap = allocator_default_params();
        ap.limit_bytes = device_total;
        ap.rank = j->rank;
        snprintf(limit_source, sizeof limit_source, "the device's memory, %.1f GiB",
                 (double)device_total / (1 << 30));
        ap.limit_source = limit_source;
        local = allocator_init_with_params(dev, &ap, &alloc);
    }
    if (local == DDT_OK)
        local = dev->ops->set_precision(dev, PRECISION_FP32, alloc,
                                        model_spec_max_gemm_operand_floats(&spec, rows));
    if (local == DDT_OK) local = comm_init(COMM_BACKEND_MPI, MPI_COMM_WORLD, dev, &c);
    if (local == DDT_OK) local = model_init(&spec, alloc, rows, &m);
    if (local == DDT_OK) local = load_model_parameters(dev, m, opts->model_file, &spec);
    if (local == DDT_OK)
        local = batch_buffers_init(&buffers, alloc, dev, dataset_get_geometry(data), rows, true);
    ddt_status status = job_agree(j, local);
    evaluation ev;
    if (status == DDT_OK) status = evaluate_model(j, c, dev, m, data, loss, &buffers, 0, &ev);
    if (status == DDT_OK) {
        job_say(j, "model %s on %s: %" PRId64 " rows, loss %.4f", spec.text, opts->data, ev.rows,
                ev.loss);
        if (ev.accuracy >= 0) job_say(j, ", accuracy %.4f", ev.accuracy);
        job_say(j, "\n");
    }
    batch_buffers_free_host(&buffers);
    model_free(m);
    comm_free(c);
    allocator_destroy(alloc);
    if (dev) device_close(dev);
    if (data) dataset_close(data);
    return status;
}
