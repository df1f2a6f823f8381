/* checkpointing.c - the checkpoint policy, writing, and checked resumes (see checkpointing.h). */
#include "train/checkpointing.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "train/trainer.h"
#include "util/clock.h"

ddt_status checkpointing_init(trainer *t) {
    checkpointing *c = &t->checkpoints;
    const train_config *cfg = t->config;
    c->directory = cfg->checkpoint_dir;
    c->every_steps = cfg->checkpoint_every_steps;
    c->every_seconds = cfg->checkpoint_every_seconds;
    c->keep = cfg->checkpoint_keep;
    if (!c->directory || t->rank != 0) return DDT_OK;
    DDT_CHECK(checkpoint_check_directory(c->directory));
    char host[64] = "", holder[256], when[32];
    gethostname(host, sizeof host - 1);
    time_t now = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&now));
    snprintf(holder, sizeof holder, "pid %ld on %s since %s\n", (long)getpid(), host, when);
    DDT_CHECK(checkpoint_lock_directory(c->directory, holder, &c->lock));
    checkpoint_search search;
    DDT_CHECK(checkpoint_search_latest(c->directory, &search));
    if (search.found && !cfg->resume)
        return ddt_error(DDT_ERR_USAGE,
                         "--checkpoint-dir %s already holds checkpoints of a run (%s): pass "
                         "--resume to continue it, or use another directory",
                         c->directory, search.path);
    return DDT_OK;
}

bool checkpointing_due_by_time(const checkpointing *c, double now) {
    return c->directory && c->every_seconds > 0 && now - c->last_time >= c->every_seconds;
}

bool checkpointing_due(const checkpointing *c, int64_t done, bool agreed_by_time, bool stopping,
                       bool last_step) {
    if (!c->directory) return false;
    return (c->every_steps > 0 && done % c->every_steps == 0) || agreed_by_time || stopping ||
           last_step;
}

void checkpointing_free(checkpointing *c) {
    checkpoint_unlock(c->lock);
    c->lock = NULL;
}

/* The resolved configuration as text, for the record inside the checkpoint. */
static char *configuration_text(const trainer *t) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (!f) return NULL;
    if (t->config->print_configuration) {
        train_resolved resolved = {
            .micro_batch = t->shape.micro_batch,
            .micro_batches_per_step = t->shape.micro_batches_per_step,
            .shuffle_window = t->plan.staging.window_blocks,
            .prefetch_depth = t->plan.staging.prefetch_depth,
            .steps = t->shape.total_steps,
            .steps_per_epoch = t->shape.steps_per_epoch,
            .device = device_kind_name(t->shape.device),
            .model = t->shape.spec.text,
            .allreduce = comm_backend_name(t->engine.comm),
        };
        t->config->print_configuration(t->config->print_configuration_context, &resolved, f);
    }
    fclose(f);
    return text;
}

ddt_status checkpointing_write(trainer *t, int64_t done) {
    checkpointing *c = &t->checkpoints;
    if (t->rank != 0) return DDT_OK;
    device *dev = t->engine.dev;
    size_t count = model_spec_state_count(&t->shape.spec); /* parameters, then buffers */
    size_t state = optimizer_state_count(t->engine.opt);
    float *host = malloc((count + state + 1) * sizeof(float));
    char *configuration = configuration_text(t);
    if (!host || !configuration) {
        free(host);
        free(configuration);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory for a checkpoint");
    }
    ddt_status status = model_get_state(t->engine.model, host);
    model_spec_set_counters(&t->shape.spec, host, done * t->shape.micro_batches_per_step);
    if (status == DDT_OK && state)
        status = device_copy_device_to_host(dev, host + count, optimizer_state(t->engine.opt),
                                               state * sizeof(float));
    checkpoint_state cs = {
        .spec = &t->shape.spec,
        .parameters = host,
        .optimizer_state = state ? host + count : NULL,
        .optimizer_state_count = state,
        .optimizer_kind = optimizer_kind_name(t->config->optimizer.kind),
        .optimizer_steps = optimizer_steps_taken(t->engine.opt),
        .global_step = done,
        .epoch = done / t->shape.steps_per_epoch,
        .samples_seen = done * t->shape.global_batch,
        .global_batch = t->shape.global_batch,
        .seed = t->config->seed,
        .loss_scale = t->scaler.scale,
        .steps_since_overflow = t->scaler.steps_since_overflow,
        .world_size = t->world_size,
        .configuration = configuration,
        .dataset_identity = t->data.identity,
    };
    char path[4096];
    if (status == DDT_OK)
        status = checkpoint_write(c->directory, &cs, c->keep, NULL, path, sizeof path);
    if (status == DDT_OK) {
        fprintf(t->config->out, "%scheckpoint: %s (step %" PRId64 ")\n",
                t->config->progress_bar ? "\r\033[2K" : "", path, done);
        fflush(t->config->out);
    }
    free(host);
    free(configuration);
    c->last_time = clock_now();
    return status;
}

/* ---- resuming ---------------------------------------------------------------------------- */

/* What rank 0 found, for every rank. */
typedef struct resume_point {
    int resumed;
    int64_t start_step;
    int64_t optimizer_steps;
    double loss_scale;
    int64_t steps_since_overflow;
} resume_point;

/* Rank 0: the checkpoint `path` (read) against this run; DDT_OK if it may be resumed. */
static ddt_status check_against_run(const trainer *t, const char *path,
                                    const checkpoint_loaded *c) {
    const train_config *cfg = t->config;
    size_t state_count = optimizer_state_count(t->engine.opt);
    if (c->seed != cfg->seed)
        return ddt_error(DDT_ERR_USAGE,
                         "%s was written with --seed %" PRIu64 ", this run has --seed %" PRIu64
                         " (the data order and dropout depend on it: pass --seed %" PRIu64 ")",
                         path, c->seed, cfg->seed, c->seed);
    if (c->optimizer_state_count != state_count ||
        strcmp(c->optimizer_kind, optimizer_kind_name(cfg->optimizer.kind)) != 0)
        return ddt_error(DDT_ERR_USAGE,
                         "%s holds %s optimizer state of %zu floats; this run's %s needs %zu", path,
                         c->optimizer_kind, c->optimizer_state_count,
                         optimizer_kind_name(cfg->optimizer.kind), state_count);
    if (c->global_batch != t->shape.global_batch && !cfg->resume_new_batch)
        return ddt_error(DDT_ERR_USAGE,
                         "%s was written with --global-batch %" PRId64 ", this run has "
                         "--global-batch %" PRId64 ": its steps (and the learning-rate schedule) "
                         "would mean other samples; pass --global-batch %" PRId64
                         ", or --resume-new-batch if the change is intended",
                         path, c->global_batch, t->shape.global_batch, c->global_batch);
    if (c->dataset_identity[0] && strcmp(c->dataset_identity, t->data.identity) != 0 &&
        !cfg->resume_new_data)
        return ddt_error(DDT_ERR_USAGE,
                         "%s was trained on other data than this run's --data %s (the checkpoint: "
                         "%.300s; this run: %.300s); pass --resume-new-data if the change is "
                         "intended",
                         path, cfg->data, c->dataset_identity, t->data.identity);
    return DDT_OK;
}

/* Rank 0: finds, reads, checks and loads the newest complete checkpoint onto the device. */
static ddt_status resume_on_root(trainer *t, resume_point *point) {
    const train_config *cfg = t->config;
    checkpoint_search search;
    DDT_CHECK(checkpoint_search_latest(cfg->checkpoint_dir, &search));
    if (search.passed_over && search.found)
        fprintf(cfg->log,
                "ddtrain: warning: --resume: %s is not a complete checkpoint (truncated or "
                "damaged)%s; resuming from the newest complete one, %s\n",
                search.newest_passed_over,
                search.passed_over > 1 ? ", nor are newer ones" : "", search.path);
    if (!search.found) {
        if (search.passed_over)
            fprintf(cfg->log,
                    "ddtrain: warning: --resume: no complete checkpoint in %s: the newest, %s, "
                    "%sis truncated or damaged; starting from the beginning\n",
                    cfg->checkpoint_dir, search.newest_passed_over,
                    search.passed_over > 1 ? "and every other one " : "");
        else
            fprintf(cfg->out, "resume: no checkpoint in %s yet; starting from the beginning\n",
                    cfg->checkpoint_dir);
        fflush(cfg->log);
        return DDT_OK;
    }
    checkpoint_loaded c;
    DDT_CHECK(checkpoint_read_for(search.path, &t->shape.spec, &c));
    device *dev = t->engine.dev;
    ddt_status status = check_against_run(t, search.path, &c);
    if (status == DDT_OK)
        status = model_set_state(t->engine.model, c.parameters);
    size_t state_count = optimizer_state_count(t->engine.opt);
    if (status == DDT_OK && state_count)
        status = device_copy_host_to_device(dev, optimizer_state(t->engine.opt),
                                               c.optimizer_state, state_count * sizeof(float));
    if (status == DDT_OK) {
        *point = (resume_point){
            .resumed = 1,
            .start_step = c.samples_seen / t->shape.global_batch,
            .optimizer_steps = c.optimizer_steps,
            .loss_scale = c.loss_scale,
            .steps_since_overflow = c.steps_since_overflow,
        };
        snprintf(t->checkpoints.resumed_from, sizeof t->checkpoints.resumed_from, "%s",
                 search.path);
        if (!c.dataset_identity[0])
            fprintf(cfg->out,
                    "resume: %s does not record its data (an older ddtrain wrote it): not "
                    "checked against --data\n",
                    search.path);
        int64_t partial = c.samples_seen % t->shape.global_batch;
        if (partial)
            fprintf(cfg->log,
                    "ddtrain: warning: --resume-new-batch: %" PRId64 " samples seen are not a "
                    "whole number of steps of %" PRId64 "; resuming at step %" PRId64
                    " skips the last %" PRId64 " of them\n",
                    c.samples_seen, t->shape.global_batch, point->start_step, partial);
        fprintf(cfg->out,
                "resume: %s (step %" PRId64 ", %" PRId64 " samples, written by %d rank%s)\n",
                search.path, point->start_step, c.samples_seen, c.world_size,
                c.world_size == 1 ? "" : "s");
    }
    fflush(cfg->out);
    fflush(cfg->log);
    checkpoint_loaded_free(&c);
    return status;
}

ddt_status checkpointing_resume(trainer *t, bool *resumed) {
    *resumed = false;
    if (!t->config->resume) return DDT_OK;
    resume_point point = {0};
    ddt_status status = t->rank == 0 ? resume_on_root(t, &point) : DDT_OK;
    DDT_CHECK(comm_agree(t->control, status, "set-up: resuming from a checkpoint"));
    DDT_CHECK(comm_broadcast_bytes(t->control, &point, sizeof point, 0, "the resume point"));
    if (!point.resumed) return DDT_OK;
    t->start_step = point.start_step;
    optimizer_set_steps_taken(t->engine.opt, point.optimizer_steps);
    t->scaler.scale = (float)point.loss_scale;
    t->scaler.steps_since_overflow = point.steps_since_overflow;
    size_t state_count = optimizer_state_count(t->engine.opt);
    if (state_count)
        DDT_CHECK(comm_broadcast_floats(t->engine.comm, optimizer_state(t->engine.opt),
                                        state_count, 0));
    *resumed = true;
    return DDT_OK;
}
