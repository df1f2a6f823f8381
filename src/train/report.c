/* report.c - the run's plan, configuration, progress, records and summary (see report.h). */
#include "train/report.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "train/trainer.h"
#include "util/clock.h"
#include "util/files.h"
#include "util/units.h"

/* ---- outputs that must not stop training -------------------------------------------------- */

/* Rank 0, after each --metrics record: a record that could not be written (a full disk) is
 * said once, naming the file, and the file is closed. */
static void metrics_record_done(trainer *t) {
    report *r = &t->report;
    if (!r->metrics) return;
    if (fflush(r->metrics) == 0 && !ferror(r->metrics)) return;
    int saved = errno;
    fprintf(t->config->log,
            "ddtrain: warning: --metrics %s: a record could not be written (%s); no more "
            "records are written to it\n",
            t->config->metrics, strerror(saved));
    fflush(t->config->log);
    fclose(r->metrics);
    r->metrics = NULL;
}

/* A failed TensorBoard write is said once; no more events are written. */
static void tensorboard_check(trainer *t, ddt_status status) {
    if (status == DDT_OK) return;
    fprintf(t->config->log, "ddtrain: warning: %s; no more TensorBoard events from this run\n",
            ddt_error_message());
    fflush(t->config->log);
    tensorboard_close(t->report.tensorboard);
    t->report.tensorboard = NULL;
}

static void write_json_number(FILE *f, const char *name, double value) {
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.9g", name, value);
    else
        fprintf(f, ",\"%s\":null", name);
}

ddt_status report_open(trainer *t) {
    report *r = &t->report;
    const train_config *cfg = t->config;
    if (t->rank != 0) return DDT_OK;
    /* Records are added to what is there; a FIFO or /dev/null is written through. */
    if (cfg->metrics) DDT_CHECK(file_output_append("--metrics", cfg->metrics, &r->metrics));
    if (cfg->tensorboard) {
        char host[64] = "";
        gethostname(host, sizeof host - 1);
        DDT_CHECK(tensorboard_open(cfg->tensorboard, host, &r->tensorboard));
    }
    return DDT_OK;
}

void report_close(report *r) {
    if (r->metrics) fclose(r->metrics);
    tensorboard_close(r->tensorboard);
    r->metrics = NULL;
    r->tensorboard = NULL;
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
    FILE *out = t->config->out;
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
    memory_plan_print(&t->plan, &t->limits, out);
    if (t->shape.micro_batch_binding)
        fprintf(out, "  --micro-batch auto chose %d (%d micro-batches per step); bound by %s\n",
                t->shape.micro_batch, t->shape.micro_batches_per_step,
                t->shape.micro_batch_binding);
    for (int r = 1; r < t->world_size; r++) {
        double *theirs = all + 5 * r;
        if (memcmp(theirs, mine, sizeof mine) == 0) continue;
        char limit[32], need[32];
        units_format_bytes((uint64_t)theirs[0], limit, sizeof limit);
        units_format_bytes((uint64_t)theirs[1], need, sizeof need);
        fprintf(out, "  rank %d: device %s of %s%s\n", r, need, theirs[0] > 0 ? limit : "no limit",
                theirs[4] > 0 ? "" : "  DOES NOT FIT");
    }
    fflush(out);
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

/* The charts of TensorBoard's custom-scalars dashboard: each memory next to its limit. */
static void write_tensorboard_layout(trainer *t) {
    static const char *const device[] = {"^memory/rank[0-9]+/device_(bytes|limit_bytes)$", NULL};
    static const char *const staging[] = {"^memory/rank[0-9]+/staging_(bytes|limit_bytes)$", NULL};
    static const char *const resident[] = {"^memory/rank[0-9]+/rss_bytes$", NULL};
    static const char *const loss[] = {"^train/loss$", "^train/epoch_loss$", "^eval/loss$", NULL};
    const tensorboard_chart charts[] = {
        {"memory against the limits, every rank", "device memory in use and its limit", device},
        {"memory against the limits, every rank", "host staging in use and its limit", staging},
        {"memory against the limits, every rank", "resident memory (RSS)", resident},
        {"loss", "training and evaluation loss", loss},
    };
    tensorboard_check(t, tensorboard_write_layout(t->report.tensorboard, 0, charts,
                                                  (int)(sizeof charts / sizeof charts[0])));
}

/* The configuration as TensorBoard text: a preformatted Markdown block (lines indented). */
static void write_tensorboard_configuration(trainer *t, const char *text) {
    size_t lines = 1;
    for (const char *c = text; *c; c++)
        lines += *c == '\n';
    char *markdown = malloc(strlen(text) + 4 * lines + 1);
    if (!markdown) {
        tensorboard_check(t, ddt_error(DDT_ERR_MEMORY, "out of host memory for the TensorBoard "
                                                       "configuration text"));
        return;
    }
    char *out = markdown;
    for (const char *c = text; *c; c++) {
        if (c == text || c[-1] == '\n') {
            memcpy(out, "    ", 4);
            out += 4;
        }
        *out++ = *c;
    }
    *out = '\0';
    tensorboard_check(t, tensorboard_write_text(t->report.tensorboard, 0, t->start_step, "config",
                                                markdown));
    free(markdown);
}

void report_configuration(trainer *t) {
    const train_config *cfg = t->config;
    /* Rank 0 composes the text once, for `out` and for TensorBoard. */
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
    if (out != cfg->out) {
        fclose(out);
        fputs(text, cfg->out);
        if (t->report.tensorboard) {
            write_tensorboard_layout(t);
            if (t->report.tensorboard) write_tensorboard_configuration(t, text);
        }
        free(text);
    }
    fflush(cfg->out);
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

/* What each rank reports on a step record, gathered to rank 0. */
enum {
    STEP_DEVICE,        /* allocator bytes in use */
    STEP_STAGING,       /* host staging bytes in use */
    STEP_RSS,           /* resident set */
    STEP_DEVICE_LIMIT,  /* 0: none */
    STEP_STAGING_LIMIT, /* 0: none */
    STEP_COUNT,
};

static void write_json_array(FILE *f, const char *name, const uint64_t *all, int ranks, int k) {
    fprintf(f, ",\"%s\":[", name);
    for (int r = 0; r < ranks; r++)
        fprintf(f, "%s%" PRIu64, r ? "," : "", all[r * STEP_COUNT + k]);
    fprintf(f, "]");
}

/* A record's scalars, in this order; the last, allreduce_device_s, only where step times
 * come from the device (GPUs). */
static const char *const step_json_keys[] = {
    "loss",      "lr",        "samples_per_s",   "grad_norm",         "data_wait_s",
    "compute_s", "communication_s", "optimizer_s", "allreduce_device_s"};
static const char *const step_tags[] = {
    "train/loss",           "train/learning_rate", "train/samples_per_s",
    "train/grad_norm",      "time/data_wait_s",    "time/compute_s",
    "time/communication_s", "time/optimizer_s",    "time/allreduce_device_s"};
#define STEP_VALUES ((int)(sizeof step_tags / sizeof step_tags[0]))

static int step_value_count(const trainer *t) {
    return t->timer.device_clock ? STEP_VALUES : STEP_VALUES - 1;
}

/* Rank 0: the step's scalars, as in the step record, and every rank's memory. */
static void write_tensorboard_step(trainer *t, int64_t step, const double *values,
                                   const uint64_t *all) {
    static const char *const memory_names[STEP_COUNT] = {
        [STEP_DEVICE] = "device_bytes",
        [STEP_STAGING] = "staging_bytes",
        [STEP_RSS] = "rss_bytes",
        [STEP_DEVICE_LIMIT] = "device_limit_bytes",
        [STEP_STAGING_LIMIT] = "staging_limit_bytes",
    };
    enum { TAG_SIZE = 48 };
    int ranks = t->world_size;
    tensorboard_scalar *scalars =
        calloc((size_t)STEP_VALUES + (size_t)ranks * STEP_COUNT, sizeof *scalars);
    char *tags = calloc((size_t)ranks * STEP_COUNT, TAG_SIZE);
    if (!scalars || !tags) {
        free(scalars);
        free(tags);
        tensorboard_check(t, ddt_error(DDT_ERR_MEMORY, "out of host memory for TensorBoard"));
        return;
    }
    int count = 0;
    for (int i = 0; i < step_value_count(t); i++)
        scalars[count++] = (tensorboard_scalar){step_tags[i], values[i]};
    for (int r = 0; r < ranks; r++)
        for (int k = 0; k < STEP_COUNT; k++) {
            uint64_t value = all[r * STEP_COUNT + k];
            if ((k == STEP_DEVICE_LIMIT || k == STEP_STAGING_LIMIT) && value == 0) continue;
            char *tag = tags + ((size_t)r * STEP_COUNT + (size_t)k) * TAG_SIZE;
            snprintf(tag, TAG_SIZE, "memory/rank%d/%s", r, memory_names[k]);
            scalars[count++] = (tensorboard_scalar){tag, (double)value};
        }
    tensorboard_check(t, tensorboard_write_scalars(t->report.tensorboard, 0, step, scalars, count));
    free(tags);
    free(scalars);
}

/* Collective: a --metrics record and TensorBoard scalars for the window since the last one. */
static void write_record(trainer *t, const step_outcome *o) {
    report *r = &t->report;
    report_window *w = &r->record;
    feed_stats feed = feed_get_stats(t->data.feed);
    uint64_t mine[STEP_COUNT] = {
        [STEP_DEVICE] = allocator_get_stats(t->engine.alloc).bytes_in_use,
        [STEP_STAGING] = feed.stream.staging_bytes_in_use,
        [STEP_RSS] = current_rss_bytes(),
        [STEP_DEVICE_LIMIT] = t->limits.device_limit,
        [STEP_STAGING_LIMIT] = t->limits.staging_limit,
    };
    uint64_t *all = t->rank == 0 ? calloc((size_t)t->world_size * STEP_COUNT, sizeof *all) : NULL;
    ddt_status status =
        comm_gather_bytes(t->control, mine, sizeof mine, all, 0, "the ranks' memory in use");
    double now = clock_now();
    if (status == DDT_OK && t->rank == 0 && w->steps > 0 && all) {
        const step_times *now_times = &t->timer.totals;
        double values[STEP_VALUES] = {
            w->loss_sum / (double)w->steps,
            o->lr,
            (double)(w->steps * t->shape.global_batch) / window_seconds(r, w, now),
            o->grad_norm,
            now_times->data_wait - w->times_at_start.data_wait,
            now_times->compute - w->times_at_start.compute,
            now_times->communication - w->times_at_start.communication,
            now_times->optimizer - w->times_at_start.optimizer,
            now_times->allreduce_device - w->times_at_start.allreduce_device,
        };
        FILE *f = r->metrics;
        if (f) {
            fprintf(f, "{\"event\":\"step\",\"step\":%" PRId64 ",\"epoch\":%" PRId64, o->done,
                    (o->done - 1) / t->shape.steps_per_epoch + 1);
            for (int i = 0; i < step_value_count(t); i++)
                write_json_number(f, step_json_keys[i], values[i]);
            fprintf(f,
                    ",\"device_bytes_in_use\":%" PRIu64 ",\"staging_bytes_in_use\":%" PRIu64
                    ",\"rss_bytes\":%" PRIu64,
                    mine[STEP_DEVICE], mine[STEP_STAGING], mine[STEP_RSS]);
            write_json_array(f, "device_bytes_per_rank", all, t->world_size, STEP_DEVICE);
            write_json_array(f, "staging_bytes_per_rank", all, t->world_size, STEP_STAGING);
            write_json_array(f, "rss_bytes_per_rank", all, t->world_size, STEP_RSS);
            fprintf(f, "}\n");
            metrics_record_done(t);
        }
        if (r->tensorboard) write_tensorboard_step(t, o->done, values, all);
    }
    free(all);
    *w = window_start(r, now, &t->timer.totals);
}

/* Rank 0's progress: a bar redrawn in place on a terminal, plain lines in a log file. */
static void print_progress(trainer *t, const step_outcome *o) {
    report *r = &t->report;
    FILE *out = t->config->out;
    double now = clock_now();
    int64_t done = o->done, total = t->shape.total_steps;
    int64_t epoch = (done - 1) / t->shape.steps_per_epoch;
    double loss = r->progress.steps ? r->progress.loss_sum / (double)r->progress.steps : NAN;
    double rate =
        (double)(r->progress.steps * t->shape.global_batch) / window_seconds(r, &r->progress, now);
    double elapsed = now - r->loop_started - r->evaluation_seconds;
    char eta[32];
    units_format_duration(elapsed / (double)(done - t->start_step) * (double)(total - done), eta,
                          sizeof eta);
    if (t->config->progress_bar) {
        int width = 24, filled = (int)((double)width * (double)done / (double)total);
        char bar[32];
        for (int i = 0; i < width; i++)
            bar[i] = i < filled ? '#' : '-';
        bar[width] = '\0';
        fprintf(out,
                "\r\033[2K[%s] %3.0f%%  epoch %" PRId64 "  step %" PRId64 "/%" PRId64
                "  loss %.4f  lr %.3g  %.0f samples/s  ETA %s",
                bar, 100.0 * (double)done / (double)total, epoch + 1, done, total, loss, o->lr,
                rate, eta);
    } else {
        fprintf(out,
                "epoch %" PRId64 " step %" PRId64 "/%" PRId64 "  loss %.4f  lr %.4g  "
                "%.0f samples/s  ETA %s\n",
                epoch + 1, done, total, loss, o->lr, rate, eta);
    }
    fflush(out);
    r->progress = window_start(r, now, NULL);
}

void report_step(trainer *t, const step_outcome *o) {
    report *r = &t->report;
    report_window *windows[] = {&r->progress, &r->record, &r->epoch};
    r->steps_since_loss_read++;
    for (int i = 0; i < 3; i++) windows[i]->steps++;
    if (o->loss_read) {
        for (int i = 0; i < 3; i++) windows[i]->loss_sum += o->loss_sum;
        r->last_train_loss = o->loss_sum / (double)r->steps_since_loss_read;
        r->steps_since_loss_read = 0;
    }
    if (report_due_record(t, o->done)) write_record(t, o);
    if (t->rank == 0 && report_due_progress(t, o->done)) print_progress(t, o);
}

void report_evaluation(trainer *t, int64_t step, const evaluation *result) {
    report *r = &t->report;
    r->last_evaluation = *result;
    r->evaluated = true;
    r->evaluation_seconds += result->seconds;
    if (t->rank != 0) return;
    const train_config *cfg = t->config;
    FILE *out = cfg->out;
    if (cfg->progress_bar) fprintf(out, "\n");
    fprintf(out, "step %" PRId64 ": eval_loss %.4f", step, result->loss);
    if (result->accuracy >= 0) fprintf(out, "  eval_accuracy %.4f", result->accuracy);
    fprintf(out, "  (%.1f s)\n", result->seconds);
    fflush(out);
    if (r->metrics) {
        fprintf(r->metrics, "{\"event\":\"eval\",\"step\":%" PRId64, step);
        write_json_number(r->metrics, "eval_loss", result->loss);
        write_json_number(r->metrics, "eval_accuracy",
                          result->accuracy >= 0 ? result->accuracy : NAN);
        write_json_number(r->metrics, "elapsed_s", clock_now() - r->loop_started);
        fprintf(r->metrics, "}\n");
        metrics_record_done(t);
    }
    if (r->tensorboard) {
        tensorboard_scalar scalars[2] = {{"eval/loss", result->loss}};
        int count = 1;
        if (result->accuracy >= 0)
            scalars[count++] = (tensorboard_scalar){"eval/accuracy", result->accuracy};
        tensorboard_check(t, tensorboard_write_scalars(r->tensorboard, 0, step, scalars, count));
    }
}

void report_epoch(trainer *t, int64_t epoch, const evaluation *result) {
    report *r = &t->report;
    const train_config *cfg = t->config;
    double now = clock_now();
    report_window *w = &r->epoch;
    double train_loss = w->steps ? w->loss_sum / (double)w->steps : NAN;
    if (result) {
        r->last_evaluation = *result;
        r->evaluated = true;
        r->evaluation_seconds += result->seconds;
    }
    double seconds = window_seconds(r, w, now);
    double samples_per_s = (double)(w->steps * t->shape.global_batch) / (seconds > 0 ? seconds : 1);
    if (t->rank == 0) {
        FILE *out = cfg->out;
        if (cfg->progress_bar) fprintf(out, "\n");
        if (result && result->accuracy >= 0)
            fprintf(out,
                    "epoch %" PRId64 " done: train_loss %.4f  eval_loss %.4f  eval_accuracy %.4f  "
                    "(%.0f samples/s)\n",
                    epoch + 1, train_loss, result->loss, result->accuracy, samples_per_s);
        else if (result)
            fprintf(out, "epoch %" PRId64 " done: train_loss %.4f  eval_loss %.4f  (%.0f samples/s)\n",
                    epoch + 1, train_loss, result->loss, samples_per_s);
        else
            fprintf(out, "epoch %" PRId64 " done: train_loss %.4f  (%.0f samples/s)\n", epoch + 1,
                    train_loss, samples_per_s);
        fflush(out);
        if (r->metrics) {
            fprintf(r->metrics, "{\"event\":\"epoch\",\"epoch\":%" PRId64 ",\"steps\":%" PRId64,
                    epoch + 1, w->steps);
            write_json_number(r->metrics, "train_loss", train_loss);
            write_json_number(r->metrics, "eval_loss", result ? result->loss : NAN);
            write_json_number(r->metrics, "eval_accuracy",
                              result && result->accuracy >= 0 ? result->accuracy : NAN);
            write_json_number(r->metrics, "samples_per_s", samples_per_s);
            /* wall time since training began, evaluation included (for time to accuracy) */
            write_json_number(r->metrics, "elapsed_s", now - r->loop_started);
            fprintf(r->metrics, "}\n");
            metrics_record_done(t);
        }
        if (r->tensorboard) {
            tensorboard_scalar scalars[3] = {{"train/epoch_loss", train_loss}};
            int count = 1;
            if (result) scalars[count++] = (tensorboard_scalar){"eval/loss", result->loss};
            if (result && result->accuracy >= 0)
                scalars[count++] = (tensorboard_scalar){"eval/accuracy", result->accuracy};
            tensorboard_check(t, tensorboard_write_scalars(r->tensorboard, 0, t->current_step,
                                                           scalars, count));
        }
    }
    *w = window_start(r, clock_now(), NULL);
}

/* ---- the summary -------------------------------------------------------------------------- */

/* What each rank measured, gathered to rank 0 for the summary. */
enum {
    PEAK_RSS,
    PEAK_DEVICE,          /* allocator bytes in use */
    PEAK_DEVICE_RESERVED, /* allocator bytes reserved from the device */
    PEAK_STAGING,         /* host staging bytes in use */
    PLANNED_DEVICE,
    PLANNED_STAGING,
    DEVICE_LIMIT,
    STAGING_LIMIT,
    OUTSIDE_ALLOCATOR, /* device bytes the communication backend took itself (NCCL) */
    PEAK_COUNT,
};

static const char *const peak_names[PEAK_COUNT] = {
    "peak_rss_bytes",     "peak_device_bytes",    "peak_device_reserved_bytes",
    "peak_staging_bytes", "planned_device_bytes", "planned_staging_bytes",
    "device_limit_bytes", "staging_limit_bytes",  "device_outside_allocator_bytes",
};

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
    uint64_t mine[PEAK_COUNT] = {
        [PEAK_RSS] = peak_rss_bytes(),
        [PEAK_DEVICE] = device.peak_bytes,
        [PEAK_DEVICE_RESERVED] = device.peak_reserved_bytes,
        [PEAK_STAGING] = feed.stream.peak_staging_bytes_in_use + t->plan.evaluation_bytes,
        [PLANNED_DEVICE] = t->plan.device_total,
        [PLANNED_STAGING] = t->plan.host_staging_total,
        [DEVICE_LIMIT] = t->limits.device_limit,
        [STAGING_LIMIT] = t->limits.staging_limit,
        [OUTSIDE_ALLOCATOR] = t->limits.device_outside_allocator,
    };
    uint64_t *all = t->rank == 0 ? calloc((size_t)t->world_size * PEAK_COUNT, sizeof *all) : NULL;
    const step_times *own = &t->timer.totals;
    double times[5] = {own->data_wait, own->compute, own->communication, own->optimizer,
                       own->allreduce_device};
    if (comm_gather_bytes(t->control, mine, sizeof mine, all, 0, "the ranks' peak memory") !=
            DDT_OK ||
        comm_allreduce_doubles(t->control, times, 5, COMM_REDUCE_MAX) != DDT_OK || t->rank != 0 ||
        !all) {
        free(all);
        return;
    }
    FILE *out = cfg->out;
    double samples = (double)((t->steps_done - t->start_step) * t->shape.global_batch);
    double samples_per_s = r->train_seconds > 0 ? samples / r->train_seconds : 0;
    uint64_t most[PEAK_COUNT] = {0};
    for (int k = 0; k < t->world_size * PEAK_COUNT; k++)
        if (all[k] > most[k % PEAK_COUNT]) most[k % PEAK_COUNT] = all[k];
    fprintf(out, "%s: %" PRId64 " steps in %.1f s, %.0f samples/s; final train_loss %.4f",
            t->stopped ? "stopped" : "done", t->steps_done - t->start_step, r->train_seconds,
            samples_per_s, r->last_train_loss);
    if (t->scaler.skipped_steps)
        fprintf(out, "; %" PRId64 " fp16 steps skipped on overflow", t->scaler.skipped_steps);
    if (t->checkpoints.resumed_from[0])
        fprintf(out, "; resumed from %s", t->checkpoints.resumed_from);
    if (r->evaluated && r->last_evaluation.accuracy >= 0)
        fprintf(out, "; eval_loss %.4f eval_accuracy %.4f", r->last_evaluation.loss,
                r->last_evaluation.accuracy);
    else if (r->evaluated)
        fprintf(out, "; eval_loss %.4f", r->last_evaluation.loss);
    char rss[32], peak_device[32], planned_device[32], peak_staging[32], planned_staging[32];
    units_format_bytes(most[PEAK_RSS], rss, sizeof rss);
    units_format_bytes(most[PEAK_DEVICE], peak_device, sizeof peak_device);
    units_format_bytes(most[PLANNED_DEVICE], planned_device, sizeof planned_device);
    units_format_bytes(most[PEAK_STAGING], peak_staging, sizeof peak_staging);
    units_format_bytes(most[PLANNED_STAGING], planned_staging, sizeof planned_staging);
    bool gpu = t->timer.device_clock;
    fprintf(out,
            "\n  time per rank (max%s): data wait %.2f s, compute %.2f s, communication %.2f s, "
            "optimizer %.2f s\n",
            gpu ? "; compute, communication and optimizer in GPU time" : "", times[0], times[1],
            times[2], times[3]);
    if (gpu && times[4] > 0)
        fprintf(out,
                "  all-reduce on the GPU: %.2f s, of which compute waited %.2f s (%.0f%% "
                "overlapped with backward)\n",
                times[4], times[2], 100.0 * fmax(0.0, 1.0 - times[2] / times[4]));
    fprintf(out,
            "  memory per rank (max): device %s (plan %s), host staging %s (plan %s), peak RSS "
            "%s\n",
            peak_device, planned_device, peak_staging, planned_staging, rss);
    if (cfg->save && !t->stopped) fprintf(out, "  model saved to %s\n", cfg->save);
    fflush(out);
    if (r->metrics) {
        FILE *f = r->metrics;
        fprintf(f,
                "{\"event\":\"summary\",\"ranks\":%d,\"steps\":%" PRId64 ",\"first_step\":%" PRId64
                ",\"stopped_by_signal\":%s,\"skipped_steps\":%" PRId64 ",\"global_batch\":%" PRId64
                ",\"micro_batch\":%d",
                t->world_size, t->steps_done, t->start_step, t->stopped ? "true" : "false",
                t->scaler.skipped_steps, t->shape.global_batch, t->shape.micro_batch);
        write_json_number(f, "wall_s", wall_seconds);
        write_json_number(f, "train_seconds", r->train_seconds);
        write_json_number(f, "samples_per_s", samples_per_s);
        write_json_number(f, "final_train_loss", r->last_train_loss);
        write_json_number(f, "eval_loss", r->evaluated ? r->last_evaluation.loss : NAN);
        write_json_number(f, "eval_accuracy", r->evaluated && r->last_evaluation.accuracy >= 0
                                                  ? r->last_evaluation.accuracy
                                                  : NAN);
        write_json_number(f, "data_wait_s", times[0]);
        write_json_number(f, "compute_s", times[1]);
        write_json_number(f, "communication_s", times[2]);
        write_json_number(f, "optimizer_s", times[3]);
        if (gpu) write_json_number(f, "allreduce_device_s", times[4]);
        for (int k = 0; k < PEAK_COUNT; k++) {
            fprintf(f, ",\"%s\":[", peak_names[k]);
            for (int rank = 0; rank < t->world_size; rank++)
                fprintf(f, "%s%" PRIu64, rank ? "," : "", all[rank * PEAK_COUNT + k]);
            fprintf(f, "]");
        }
        fprintf(f, "}\n");
        metrics_record_done(t);
    }
    free(all);
}
