/* train_checkpoint.c - checkpoints of a training run, resuming from them, and the signals
 * that stop a run at a step boundary (SIGTERM, SIGUSR1). See trainer.h. */
#include "driver/trainer.h"

/* --checkpoint-every: a number of steps ("500"), or a duration ("90s", "10min", "2h"). */
ddt_status train_parse_checkpoint_every(const char *text, int64_t *steps, double *seconds) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    *steps = 0;
    *seconds = 0;
    if (end != text && !errno && value > 0) {
        if (*end == '\0' && value == (double)(int64_t)value) {
            *steps = (int64_t)value;
            return DDT_OK;
        }
        static const struct {
            const char *unit;
            double seconds;
        } units[] = {{"s", 1}, {"sec", 1}, {"min", 60}, {"h", 3600}};
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
            if (strcmp(end, units[i].unit) == 0) {
                *seconds = value * units[i].seconds;
                return DDT_OK;
            }
    }
    return ddt_error(DDT_ERR_USAGE,
                     "--checkpoint-every: '%s' is neither a number of steps (500) nor a "
                     "duration (90s, 10min, 2h)",
                     text);
}

/* Rank 0: the newest complete checkpoint in --checkpoint-dir, checked against this run and
 * loaded onto the device (weights, optimizer state); the position goes into the trainer. */
ddt_status train_resume_on_root(trainer *t, bool *resumed) {
    const options *o = t->opts;
    char path[4096];
    bool found = false;
    *resumed = false;
    DDT_CHECK(checkpoint_find_latest(o->checkpoint_dir, path, sizeof path, &found));
    if (!found) {
        printf("resume: no checkpoint in %s yet; starting from the beginning\n", o->checkpoint_dir);
        return DDT_OK;
    }
    checkpoint_loaded c;
    DDT_CHECK(checkpoint_read_for(path, &t->spec, &c)); /* another model: refused unread */
    ddt_status status = DDT_OK;
    size_t state_count = optimizer_state_count(t->opt);
    if (strcmp(c.spec.text, t->spec.text) != 0)
        status = ddt_error(DDT_ERR_USAGE, "%s holds model '%s', but this run trains '%s'", path,
                           c.spec.text, t->spec.text);
    else if (c.seed != (uint64_t)o->seed)
        status = ddt_error(DDT_ERR_USAGE,
                           "%s was written with --seed %" PRIu64 ", this run has --seed %" PRId64
                           " (the data order and dropout depend on it: pass --seed %" PRIu64 ")",
                           path, c.seed, o->seed, c.seed);
    else if (c.optimizer_state_count != state_count ||
             strcmp(c.optimizer_kind, optimizer_kind_name(t->optimizer_settings.kind)) != 0)
        status = ddt_error(DDT_ERR_USAGE,
                           "%s holds %s optimizer state of %zu floats; this run's %s needs %zu",
                           path, c.optimizer_kind, c.optimizer_state_count,
                           optimizer_kind_name(t->optimizer_settings.kind), state_count);
    else if (c.samples_seen % t->global_batch != 0)
        status = ddt_error(DDT_ERR_USAGE,
                           "%s stopped after %" PRId64 " samples, not a whole number of "
                           "--global-batch %" PRId64 " steps",
                           path, c.samples_seen, t->global_batch);
    if (status == DDT_OK)
        status = t->dev->ops->copy_host_to_device(t->dev, model_parameters(t->model), c.parameters,
                                                  c.parameter_count * sizeof(float));
    if (status == DDT_OK && state_count)
        status = t->dev->ops->copy_host_to_device(t->dev, optimizer_state(t->opt),
                                                  c.optimizer_state, state_count * sizeof(float));
    if (status == DDT_OK) {
        t->start_step = c.samples_seen / t->global_batch;
        optimizer_set_steps_taken(t->opt, c.optimizer_steps);
        t->loss_scale = (float)c.loss_scale;
        t->steps_since_overflow = c.steps_since_overflow;
        snprintf(t->resumed_from, sizeof t->resumed_from, "%s", path);
        *resumed = true;
        printf("resume: %s (step %" PRId64 ", %" PRId64 " samples, written by %d rank%s)\n", path,
               t->start_step, c.samples_seen, c.world_size, c.world_size == 1 ? "" : "s");
    }
    checkpoint_loaded_free(&c);
    return status;
}

/* After a resume on rank 0: every rank takes the optimizer state and the position. */
ddt_status train_share_resume_state(trainer *t, bool resumed_on_root) {
    double values[5] = {resumed_on_root, (double)t->start_step,
                        (double)optimizer_steps_taken(t->opt), t->loss_scale,
                        (double)t->steps_since_overflow};
    MPI_Bcast(values, 5, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (values[0] == 0) return DDT_OK;
    t->start_step = (int64_t)values[1];
    optimizer_set_steps_taken(t->opt, (int64_t)values[2]);
    t->loss_scale = (float)values[3];
    t->steps_since_overflow = (int64_t)values[4];
    size_t state_count = optimizer_state_count(t->opt);
    if (state_count)
        DDT_CHECK(comm_broadcast_floats(t->comm, optimizer_state(t->opt), state_count, 0));
    return DDT_OK;
}

/* SIGTERM (a scheduler ending the job) and SIGUSR1 (Slurm's --signal warning before
 * preemption) ask every rank to stop at the next step boundary, checkpoint, and exit 0. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int signal_number) {
    stop_signal = signal_number;
}

void train_install_stop_handlers(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGUSR1, &action, NULL);
}

/* Rank 0 writes a checkpoint of the state after `steps_done` steps (weights and optimizer
 * state are identical on every rank). */
ddt_status train_write_checkpoint(trainer *t, int64_t steps_done) {
    if (t->job->rank != 0) return DDT_OK;
    size_t count = model_parameter_count(t->model), state = optimizer_state_count(t->opt);
    float *host = malloc((count + state + 1) * sizeof(float));
    char *configuration = NULL;
    size_t configuration_size = 0;
    FILE *text = open_memstream(&configuration, &configuration_size);
    if (!host || !text) {
        free(host);
        if (text) fclose(text);
        free(configuration);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory for a checkpoint");
    }
    options_print_resolved(COMMAND_TRAIN, t->opts, text);
    fclose(text);
    device *dev = t->dev;
    ddt_status status =
        dev->ops->copy_device_to_host(dev, host, model_parameters(t->model), count * sizeof(float));
    if (status == DDT_OK && state)
        status = dev->ops->copy_device_to_host(dev, host + count, optimizer_state(t->opt),
                                               state * sizeof(float));
    checkpoint_state cs = {
        .spec = &t->spec,
        .parameters = host,
        .optimizer_state = state ? host + count : NULL,
        .optimizer_state_count = state,
        .optimizer_kind = optimizer_kind_name(t->optimizer_settings.kind),
        .optimizer_steps = optimizer_steps_taken(t->opt),
        .global_step = steps_done,
        .epoch = steps_done / t->steps_per_epoch,
        .samples_seen = steps_done * t->global_batch,
        .global_batch = t->global_batch,
        .seed = (uint64_t)t->opts->seed,
        .loss_scale = t->loss_scale,
        .steps_since_overflow = t->steps_since_overflow,
        .world_size = t->job->world_size,
        .configuration = configuration,
    };
    char path[4096];
    if (status == DDT_OK)
        status = checkpoint_write(t->opts->checkpoint_dir, &cs, (int)t->opts->checkpoint_keep, NULL,
                                  path, sizeof path);
    if (status == DDT_OK) {
        printf("%scheckpoint: %s (step %" PRId64 ")\n", t->progress_bar ? "\r\033[2K" : "", path,
               steps_done);
        fflush(stdout);
    }
    free(host);
    free(configuration);
    t->last_checkpoint_time = job_now();
    return status;
}

bool train_stop_requested(void) {
    return stop_signal != 0;
}
