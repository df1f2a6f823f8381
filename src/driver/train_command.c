/* train_command.c - `ddtrain train` and `ddtrain eval`: the options, and the environment
 * variables a command line cannot say, turned into the library's configuration. What the
 * options mean is decided here; what they do happens in src/train. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver/blas_setup.h"
#include "driver/commands.h"
#include "train/evaluate.h"
#include "train/generate.h"
#include "train/trace.h"
#include "train/train.h"
#include "util/units.h"

/* --checkpoint-every: a number of steps ("500"), or a duration ("90s", "10min", "2h"). */
static ddt_status parse_checkpoint_every(const char *text, int64_t *steps, double *seconds) {
    *steps = 0;
    *seconds = 0;
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (end != text && !*end && !errno && value > 0) {
        *steps = value;
        return DDT_OK;
    }
    if (units_parse_duration("--checkpoint-every", text, seconds) == DDT_OK && *seconds > 0)
        return DDT_OK;
    return ddt_error(DDT_ERR_USAGE,
                     "--checkpoint-every: '%s' is neither a number of steps (500) nor a duration "
                     "(90s, 10min, 2h)",
                     text);
}

/* The device-memory policy and limit: options win over the environment (as TensorFlow users
 * set TF_FORCE_GPU_ALLOW_GROWTH), and the source of each is kept for messages. */
static ddt_status memory_request_from(const options *o, memory_request *out) {
    *out = (memory_request){.policy = o->device_memory,
                            .policy_source = "--device-memory",
                            .limit = o->device_memory_limit,
                            .limit_source = "--device-memory-limit",
                            .staging_limit = (size_t)o->host_staging_limit};
    const char *policy = getenv("DDTRAIN_DEVICE_MEMORY");
    if (!options_given(o, "device-memory") && policy && *policy) {
        out->policy_source = "DDTRAIN_DEVICE_MEMORY";
        if (memory_policy_parse(policy, &out->policy) != DDT_OK)
            return ddt_error(DDT_ERR_USAGE, "DDTRAIN_DEVICE_MEMORY: '%s' is not a policy "
                                            "(expected growth or preallocate)",
                             policy);
    }
    const char *limit = getenv("DDTRAIN_DEVICE_MEMORY_LIMIT");
    if (!o->device_memory_limit && limit && *limit) {
        out->limit = limit;
        out->limit_source = "DDTRAIN_DEVICE_MEMORY_LIMIT";
    }
    return DDT_OK;
}

/* The configuration printout and the copy in checkpoints: the options as given, with what
 * the run derived where they were left to it. */
static void print_configuration(const void *context, const train_resolved *r, FILE *out) {
    const options *o = context;
    options_resolved resolved = {0};
    resolved.model = r->model;
    int *n = &resolved.count;
    if (o->micro_batch <= 0) {
        resolved.names[*n] = "micro-batch";
        snprintf(resolved.values[(*n)++], 64, "%d (%s)", r->micro_batch,
                 o->micro_batch == OPTIONS_AUTO ? "auto" : "global batch / ranks");
    }
    if (o->shuffle_window == 0) {
        resolved.names[*n] = "shuffle-window";
        snprintf(resolved.values[(*n)++], 64, "%d (from --host-staging-limit)", r->shuffle_window);
    }
    if (o->prefetch_depth == 0) {
        resolved.names[*n] = "prefetch-depth";
        snprintf(resolved.values[(*n)++], 64, "%d (from --host-staging-limit)", r->prefetch_depth);
    }
    resolved.names[*n] = o->steps > 0 ? "steps" : "epochs";
    if (o->steps > 0)
        snprintf(resolved.values[(*n)++], 64, "%" PRId64, r->steps);
    else
        snprintf(resolved.values[(*n)++], 64, "%" PRId64 " (%" PRId64 " steps)", o->epochs,
                 r->steps);
    if (o->device == DEVICE_REQUEST_AUTO) {
        resolved.names[*n] = "device";
        snprintf(resolved.values[(*n)++], 64, "auto: %s", r->device);
    }
    if (o->allreduce == COMM_BACKEND_REQUEST_AUTO && r->allreduce) {
        resolved.names[*n] = "allreduce";
        snprintf(resolved.values[(*n)++], 64, "auto: %s", r->allreduce);
    }
    options_print_resolved(COMMAND_TRAIN, o, &resolved, out);
}

/* Every field of the configuration comes from an option (or the environment): the defaults
 * live in the option table alone. */
static ddt_status train_config_from(const job *j, const options *o, train_config *c) {
    *c = (train_config){0};
    if (options_given(o, "epochs") && o->steps > 0)
        return ddt_error(DDT_ERR_USAGE, "give --epochs or --steps, not both");
    c->data = o->data;
    c->eval_data = o->eval_data;
    c->shuffle = !o->no_shuffle;
    c->allow_external_data = o->allow_external_data;
    c->shuffle_window = o->shuffle_window;
    c->prefetch_depth = o->prefetch_depth;
    c->model = o->model;
    c->model_given = options_given(o, "model");
    c->init = o->init;
    c->save = o->save;
    c->model_options.recompute = o->recompute;
    c->loss = o->loss;
    c->optimizer.kind = o->optimizer;
    /* --momentum's default is SGD's; only an explicit --momentum is an error with AdamW. */
    bool sgd = o->optimizer == OPTIMIZER_SGD;
    c->optimizer.momentum = sgd || options_given(o, "momentum") ? (float)o->momentum : 0;
    c->optimizer.nesterov = o->nesterov;
    c->optimizer.weight_decay = (float)o->weight_decay;
    c->decay_all_parameters = o->weight_decay_on == 1;
    c->clip_grad_norm = (float)o->clip_grad_norm;
    c->eval_every = o->eval_every;
    c->eval_rows = o->eval_rows;
    c->optimizer.beta1 = (float)o->beta1;
    c->optimizer.beta2 = (float)o->beta2;
    c->optimizer.eps = (float)o->eps;
    c->schedule = (lr_schedule){.kind = o->lr_schedule,
                                .base_lr = (float)o->lr,
                                .min_lr = (float)o->min_lr,
                                .warmup_steps = o->warmup_steps,
                                .step_size = o->lr_step_size,
                                .gamma = (float)o->lr_gamma};
    c->epochs = o->epochs;
    c->steps = o->steps;
    c->stop_after = o->stop_after;
    c->global_batch = o->global_batch;
    c->micro_batch = o->micro_batch == OPTIONS_AUTO ? TRAIN_MICRO_BATCH_AUTO : (int)o->micro_batch;
    c->seed = (uint64_t)o->seed;
    DDT_CHECK(memory_request_from(o, &c->memory));
    c->dry_run = o->dry_run;
    c->device = o->device;
    c->precision = o->precision;
    c->loss_scale = (float)o->loss_scale;
    c->comm_timeout = o->comm_timeout;
    c->bucket_bytes = (size_t)o->bucket_size;
    c->allreduce = o->allreduce;
    c->overlap = o->overlap == COMM_OVERLAP_ON;
    c->metrics = o->metrics;
    c->tensorboard = o->tensorboard;
    c->trace = o->trace;
    if (o->trace) DDT_CHECK(trace_parse_steps(o->trace_steps, &c->trace_first, &c->trace_last));
    c->log_every = o->log_every;
    c->metrics_every = o->metrics_every;
    c->checkpoint_dir = o->checkpoint_dir;
    if (o->checkpoint_every)
        DDT_CHECK(parse_checkpoint_every(o->checkpoint_every, &c->checkpoint_every_steps,
                                         &c->checkpoint_every_seconds));
    c->checkpoint_keep = (int)o->checkpoint_keep;
    c->resume = o->resume;
    c->resume_new_data = o->resume_new_data;
    c->resume_new_batch = o->resume_new_batch;
    c->out = stdout;
    c->log = stderr;
    c->progress_bar = j->rank == 0 && job_stdout_is_terminal();
    c->print_configuration = print_configuration;
    c->print_configuration_context = o;
    c->blas_description = blas_describe();
    c->stop_requested = job_stop_requested;
    return DDT_OK;
}

ddt_status train_command(job *j, const options *opts) {
    /* First, so that a stop asked for during set-up is honoured at the first step. */
    job_install_stop_handlers();
    blas_set_threads(opts->threads);
    DDT_CHECK(comm_agree(j->control, job_check_slurm(j), "the Slurm task count"));
    train_config config;
    DDT_CHECK(comm_agree(j->control, train_config_from(j, opts, &config), "the options"));
    return train_run(j->control, &config);
}

ddt_status generate_command(job *j, const options *opts) {
    blas_set_threads(opts->threads);
    generate_config config = {
        .model_file = opts->model_file,
        .prompt = opts->prompt,
        .tokens = (int)opts->tokens,
        .sampling = {.temperature = (float)opts->temperature,
                     .top_k = (int)opts->top_k,
                     .seed = (uint64_t)opts->seed},
        .device = opts->device,
        .out = stdout,
    };
    return generate_run(j->control, &config);
}

ddt_status eval_command(job *j, const options *opts) {
    blas_set_threads(opts->threads);
    eval_config config = {
        .model_file = opts->model_file,
        .data = opts->data,
        .allow_external_data = opts->allow_external_data,
        .loss = opts->loss,
        .device = opts->device,
        .rows = opts->micro_batch > 0 ? (int)opts->micro_batch : 256,
        .out = stdout,
    };
    return eval_run(j->control, &config);
}
