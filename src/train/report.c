/* report.c - the run's plan, configuration, progress, records and summary (see report.h).
 * Here the trainer's state becomes records (report_writers.h), built once and handed to the
 * console, --metrics and --tensorboard writers; the collectives that gather every rank's
 * measurements are here too. */
#include "train/report.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "train/trainer.h"
#include "util/clock.h"

/* Rank 0's console. */
static report_console console_of(const trainer *t) {
    return (report_console){.out = t->config->out, .progress_bar = t->config->progress_bar};
}

ddt_status report_open(trainer *t) {
    report *r = &t->report;
    const train_config *cfg = t->config;
    if (t->rank != 0) return DDT_OK;
    if (cfg->metrics) DDT_CHECK(report_jsonl_open(&r->jsonl, cfg->metrics, cfg->log));
    if (cfg->tensorboard)
        DDT_CHECK(report_tensorboard_open(&r->tensorboard, cfg->tensorboard, cfg->log));
    return DDT_OK;
}

void report_close(report *r) {
    report_jsonl_close(&r->jsonl);
    report_tensorboard_close(&r->tensorboard);
}

bool report_due_progress(const trainer *t, int64_t done) {
    int64_t every = t->config->log_every;
    return every > 0 && (done % every == 0 || done == t->shape.total_steps);
}

bool report_due_record(const trainer *t, int64_t done) {
    const train_config *cfg = t->config;
    return (cfg->metrics || cfg->tensorboard) && cfg->metrics_every > 0 &&
           (done % cfg->metrics_every == 0 || done == t->shape.total_steps);
}

/* ---- the plan and the configuration ----------------------------------------------------- */

void report_memory_plan(trainer *t) {
    double mine[5] = {(double)t->limits.device_limit, (double)t->plan.device_total,
                      (double)t->limits.staging_limit, (double)t->plan.host_staging_total,
                      t->plan.fits ? 1.0 : 0.0};
    double *all = t->rank == 0 ? calloc((size_t)t->world_size * 5, sizeof(double)) : NULL;
    if (comm_gather_bytes(t->control, mine, sizeof mine, all, 0, "the ranks' memory plans") !=
            DDT_OK ||
        t->rank != 0 || !all) {
        free(all);
        return; /* a lost rank is caught by the next agreement */
    }
    report_plan_record record = {
        .plan = &t->plan,
        .limits = &t->limits,
        .micro_batch_binding = t->shape.micro_batch_binding,
        .micro_batch = t->shape.micro_batch,
        .micro_batches_per_step = t->shape.micro_batches_per_step,
        .ranks = t->world_size,
        .per_rank = all,
    };
    report_console console = console_of(t);
    report_console_plan(&console, &record);
    free(all);
}

/* One line per rank: host, rank, local rank and device (with its PCI bus id on GPUs), so a
 * wrong rank-to-device mapping is visible at a glance. */
static void print_rank_lines(trainer *t, FILE *out) {
    char mine[256], host[64] = "";
    gethostname(host, sizeof host - 1);
    snprintf(mine, sizeof mine, "  rank %d of %d on %s, local rank %d: %s", t->rank,
             t->world_size, host, comm_local_rank(t->control), t->engine.dev->description);
    char *all = t->rank == 0 ? calloc((size_t)t->world_size, sizeof mine) : NULL;
    ddt_status status = comm_gather_bytes(t->control, mine, sizeof mine, all, 0,
                                          "the ranks' device lines");
    if (status == DDT_OK && all)
        for (int r = 0; r < t->world_size; r++)
            fprintf(out, "%s\n", all + (size_t)r * sizeof mine);
    free(all);
}

void report_configuration(trainer *t) {
    const train_config *cfg = t->config;
    /* Rank 0 composes the text once, for the console and for TensorBoard (straight to the
     * console if it cannot). */
    char *text = NULL;
    size_t size = 0;
    FILE *out = t->rank == 0 ? open_memstream(&text, &size) : NULL;
    if (t->rank == 0 && !out) out = cfg->out;
    print_rank_lines(t, out);
    if (t->rank != 0) return;
    const dataset_geometry *g = dataset_get_geometry(t->data.train);
    char communication[192];
    fprintf(out, "ddtrain train: %d rank%s, device %s, communication %s, precision %s\n",
            t->world_size, t->world_size == 1 ? "" : "s", device_kind_name(t->shape.device),
            comm_describe(t->engine.comm, communication, sizeof communication),
            precision_kind_name(cfg->precision));
    if (cfg->blas_description) fprintf(out, "  blas             %s\n", cfg->blas_description);
    if (cfg->print_configuration) {
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
        cfg->print_configuration(cfg->print_configuration_context, &resolved, out);
    }
    fprintf(out,
            "  => model %s (%zu parameters), data %" PRId64 " rows x %d features in %d file%s\n"
            "  => %" PRId64 " steps (%" PRId64 " per epoch), global batch %" PRId64
            " = %d ranks x %d micro-batches x %d rows\n",
            t->shape.spec.text, model_parameter_count(t->engine.model), g->rows, g->features,
            g->file_count, g->file_count == 1 ? "" : "s", t->shape.total_steps,
            t->shape.steps_per_epoch, t->shape.global_batch, t->world_size,
            t->shape.micro_batches_per_step, t->shape.micro_batch);
    if (out == cfg->out) {
        fflush(out);
        return;
    }
    fclose(out);
    report_console console = console_of(t);
    report_console_configuration(&console, text);
    report_tensorboard_configuration(&t->report.tensorboard, t->start_step, text);
    free(text);
}

/* ---- during the loop ---------------------------------------------------------------------- */

/* A window's training time: since it started, less the evaluations since. */
static double window_seconds(const report *r, const report_window *w, double now) {
    return now - w->started - (r->evaluation_seconds - w->evaluation_at_start);
}

/* A new window starting now. */
static report_window window_start(const report *r, double now, const step_times *times) {
    return (report_window){.started = now,
                           .evaluation_at_start = r->evaluation_seconds,
                           .times_at_start = times ? *times : (step_times){0}};
}

void report_loop_start(trainer *t) {
    report *r = &t->report;
    double now = clock_now();
    r->loop_started = now;
    r->progress = r->record = r->epoch = window_start(r, now, NULL);
}

static size_t current_rss_bytes(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Collective: every rank's memory, gathered to rank 0 (NULL elsewhere, or on a failure: a
 * lost rank is caught by the next agreement). malloc'ed. */
static uint64_t *gather_memory(trainer *t) {
    feed_stats feed = feed_get_stats(t->data.feed);
    uint64_t mine[REPORT_MEMORY_COUNT] = {
        [REPORT_MEMORY_DEVICE] = allocator_get_stats(t->engine.alloc).bytes_in_use,
        [REPORT_MEMORY_STAGING] = feed.stream.staging_bytes_in_use,
        [REPORT_MEMORY_RSS] = current_rss_bytes(),
        [REPORT_MEMORY_DEVICE_LIMIT] = t->limits.device_limit,
        [REPORT_MEMORY_STAGING_LIMIT] = t->limits.staging_limit,
    };
    uint64_t *all =
        t->rank == 0 ? calloc((size_t)t->world_size * REPORT_MEMORY_COUNT, sizeof *all) : NULL;
    ddt_status status =
        comm_gather_bytes(t->control, mine, sizeof mine, all, 0, "the ranks' memory in use");
    if (status == DDT_OK) return all;
    free(all);
    return NULL;
}

/* The record part of step `o`'s record, over the window since the last one; `memory` is the
 * gathered memory. */
static void fill_record(trainer *t, const step_outcome *o, const uint64_t *memory, double now,
                        report_step_record *record) {
    const report *r = &t->report;
    const report_window *w = &r->record;
    const step_times *now_times = &t->timer.totals;
    const step_times *then = &w->times_at_start;
    double *v = record->values;
    v[REPORT_STEP_LOSS] = w->loss_sum / (double)w->steps;
    v[REPORT_STEP_LR] = o->lr;
    v[REPORT_STEP_SAMPLES_PER_S] =
        (double)(w->steps * t->shape.global_batch) / window_seconds(r, w, now);
    v[REPORT_STEP_GRAD_NORM] = o->grad_norm;
    v[REPORT_STEP_DATA_WAIT_S] = now_times->data_wait - then->data_wait;
    v[REPORT_STEP_COMPUTE_S] = now_times->compute - then->compute;
    v[REPORT_STEP_COMMUNICATION_S] = now_times->communication - then->communication;
    v[REPORT_STEP_OPTIMIZER_S] = now_times->optimizer - then->optimizer;
    v[REPORT_STEP_ALLREDUCE_DEVICE_S] = now_times->allreduce_device - then->allreduce_device;
    record->value_count = t->timer.device_clock ? REPORT_STEP_VALUES : REPORT_STEP_VALUES - 1;
    record->ranks = t->world_size;
    record->memory = memory;
    record->record_due = true;
}

/* The progress part of step `o`'s record, over the window since the last progress line. */
static void fill_progress(trainer *t, const step_outcome *o, double now,
                          report_step_record *record) {
    const report *r = &t->report;
    const report_window *w = &r->progress;
    int64_t done = o->done;
    record->progress_loss = w->steps ? w->loss_sum / (double)w->steps : NAN;
    record->progress_samples_per_s =
        (double)(w->steps * t->shape.global_batch) / window_seconds(r, w, now);
    double elapsed = now - r->loop_started - r->evaluation_seconds;
    record->eta_seconds =
        elapsed / (double)(done - t->start_step) * (double)(t->shape.total_steps - done);
    record->progress_due = true;
}

void report_step(trainer *t, const step_outcome *o) {
    report *r = &t->report;
    report_window *windows[] = {&r->progress, &r->record, &r->epoch};
    r->steps_since_loss_read++;
    for (int i = 0; i < 3; i++)
        windows[i]->steps++;
    if (o->loss_read) {
        for (int i = 0; i < 3; i++)
            windows[i]->loss_sum += o->loss_sum;
        r->last_train_loss = o->loss_sum / (double)r->steps_since_loss_read;
        r->steps_since_loss_read = 0;
    }
    report_step_record record = {
        .step = o->done,
        .epoch = (o->done - 1) / t->shape.steps_per_epoch + 1,
        .total_steps = t->shape.total_steps,
        .lr = o->lr,
    };
    uint64_t *memory = NULL;
    if (report_due_record(t, o->done)) { /* collective */
        memory = gather_memory(t);
        double now = clock_now();
        if (memory && r->record.steps > 0) fill_record(t, o, memory, now, &record);
        r->record = window_start(r, now, &t->timer.totals);
    }
    if (t->rank == 0) {
        if (report_due_progress(t, o->done)) {
            double now = clock_now();
            fill_progress(t, o, now, &record);
            r->progress = window_start(r, now, NULL);
        }
        report_console console = console_of(t);
        report_jsonl_step(&r->jsonl, &record);
        report_tensorboard_step(&r->tensorboard, &record);
        report_console_step(&console, &record);
    }
    free(memory);
}

void report_evaluation(trainer *t, int64_t step, const evaluation *result) {
    report *r = &t->report;
    r->last_evaluation = *result;
    r->evaluated = true;
    r->evaluation_seconds += result->seconds;
    if (t->rank != 0) return;
    report_evaluation_record record = {
        .step = step,
        .loss = result->loss,
        .accuracy = result->accuracy,
        .seconds = result->seconds,
    };
    report_console console = console_of(t);
    report_console_evaluation(&console, &record);
    record.elapsed_seconds = clock_now() - r->loop_started;
    report_jsonl_evaluation(&r->jsonl, &record);
    report_tensorboard_evaluation(&r->tensorboard, &record);
}

void report_epoch(trainer *t, int64_t epoch, const evaluation *result) {
    report *r = &t->report;
    double now = clock_now();
    report_window *w = &r->epoch;
    if (result) {
        r->last_evaluation = *result;
        r->evaluated = true;
        r->evaluation_seconds += result->seconds;
    }
    double seconds = window_seconds(r, w, now);
    report_epoch_record record = {
        .epoch = epoch + 1,
        .steps = w->steps,
        .step = t->current_step,
        .train_loss = w->steps ? w->loss_sum / (double)w->steps : NAN,
        .evaluated = result != NULL,
        .eval_loss = result ? result->loss : NAN,
        .eval_accuracy = result ? result->accuracy : -1,
        .samples_per_s = (double)(w->steps * t->shape.global_batch) / (seconds > 0 ? seconds : 1),
        .elapsed_seconds = now - r->loop_started,
    };
    if (t->rank == 0) {
        report_console console = console_of(t);
        report_console_epoch(&console, &record);
        report_jsonl_epoch(&r->jsonl, &record);
        report_tensorboard_epoch(&r->tensorboard, &record);
    }
    *w = window_start(r, clock_now(), NULL);
}

/* ---- the summary -------------------------------------------------------------------------- */

static uint64_t peak_rss_bytes(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
    return (uint64_t)usage.ru_maxrss * 1024; /* Linux reports KiB */
}

void report_summary(trainer *t, double wall_seconds) {
    report *r = &t->report;
    const train_config *cfg = t->config;
    allocator_stats device = allocator_get_stats(t->engine.alloc);
    feed_stats feed = feed_get_stats(t->data.feed);
    uint64_t mine[REPORT_PEAK_COUNT] = {
        [REPORT_PEAK_RSS] = peak_rss_bytes(),
        [REPORT_PEAK_DEVICE] = device.peak_bytes,
        [REPORT_PEAK_DEVICE_RESERVED] = device.peak_reserved_bytes,
        [REPORT_PEAK_STAGING] = feed.stream.peak_staging_bytes_in_use + t->plan.evaluation_bytes,
        [REPORT_PLANNED_DEVICE] = t->plan.device_total,
        [REPORT_PLANNED_STAGING] = t->plan.host_staging_total,
        [REPORT_DEVICE_LIMIT] = t->limits.device_limit,
        [REPORT_STAGING_LIMIT] = t->limits.staging_limit,
        [REPORT_OUTSIDE_ALLOCATOR] = t->limits.device_outside_allocator,
    };
    uint64_t *all =
        t->rank == 0 ? calloc((size_t)t->world_size * REPORT_PEAK_COUNT, sizeof *all) : NULL;
    const step_times *own = &t->timer.totals;
    report_summary_record record = {
        .times = {[REPORT_TIME_DATA_WAIT] = own->data_wait,
                  [REPORT_TIME_COMPUTE] = own->compute,
                  [REPORT_TIME_COMMUNICATION] = own->communication,
                  [REPORT_TIME_OPTIMIZER] = own->optimizer,
                  [REPORT_TIME_ALLREDUCE_DEVICE] = own->allreduce_device},
    };
    if (comm_gather_bytes(t->control, mine, sizeof mine, all, 0, "the ranks' peak memory") !=
            DDT_OK ||
        comm_allreduce_doubles(t->control, record.times, REPORT_TIME_COUNT, COMM_REDUCE_MAX) !=
            DDT_OK ||
        t->rank != 0 || !all) {
        free(all);
        return;
    }
    double samples = (double)((t->steps_done - t->start_step) * t->shape.global_batch);
    record.stopped = t->stopped;
    record.first_step = t->start_step;
    record.steps_done = t->steps_done;
    record.skipped_steps = t->scaler.skipped_steps;
    record.resumed_from = t->checkpoints.resumed_from;
    record.ranks = t->world_size;
    record.global_batch = t->shape.global_batch;
    record.micro_batch = t->shape.micro_batch;
    record.wall_seconds = wall_seconds;
    record.train_seconds = r->train_seconds;
    record.samples_per_s = r->train_seconds > 0 ? samples / r->train_seconds : 0;
    record.final_train_loss = r->last_train_loss;
    record.evaluated = r->evaluated;
    record.eval_loss = r->last_evaluation.loss;
    record.eval_accuracy = r->last_evaluation.accuracy;
    record.device_times = t->timer.device_clock;
    record.peaks = all;
    record.saved_to = cfg->save && !t->stopped ? cfg->save : NULL;
    report_console console = console_of(t);
    report_console_summary(&console, &record);
    report_jsonl_summary(&r->jsonl, &record);
    free(all);
}
