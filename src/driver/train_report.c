/* train_report.c - what a training run tells its user: the memory plan, the configuration
 * and per-rank device lines, progress (a bar on a terminal, lines in a log), epoch lines,
 * --metrics records, --tensorboard events and the final summary. Rank 0 prints and writes;
 * the collectives gather what every rank measured. See trainer.h.
 *
 * TensorBoard tags: train/loss, train/learning_rate, train/samples_per_s, train/grad_norm,
 * time/{data_wait,compute,communication,optimizer}_s and on GPUs time/allreduce_device_s (per
 * --metrics-every window, as the step records), memory/rank<R>/{device,staging,rss}_bytes and
 * {device,staging}_limit_bytes (limits only where set), train/epoch_loss, eval/loss and
 * eval/accuracy (per epoch), and the text "config". Every value is the one the --metrics record of
 * that step carries. */
#include "driver/trainer.h"

/* Rank 0, after each --metrics record: a record that could not be written (a full disk) is
 * said once, naming the file, and the file is closed; training goes on (checkpoints, not the
 * metrics, are what a run cannot lose). */
static void metrics_record_done(trainer *t) {
    if (!t->metrics) return;
    if (fflush(t->metrics) == 0 && !ferror(t->metrics)) return;
    int saved = errno;
    fprintf(stderr,
            "ddtrain: warning: --metrics %s: a record could not be written (%s); no more "
            "records are written to it\n",
            t->opts->metrics, strerror(saved));
    fflush(stderr);
    fclose(t->metrics);
    t->metrics = NULL;
}

/* A failed TensorBoard write (a full disk) does not stop training: rank 0 says so once and
 * writes no more events. */
static void tensorboard_check(trainer *t, ddt_status status) {
    if (status == DDT_OK) return;
    fprintf(stderr, "ddtrain: warning: %s; no more TensorBoard events from this run\n",
            ddt_error_message());
    tensorboard_close(t->tensorboard);
    t->tensorboard = NULL;
}

/* Rank 0 prints its plan, and a line for each rank whose limits or plan differ. */
void train_print_memory_plan(trainer *t) {
    job *j = t->job;
    double mine[5] = {(double)t->limits.device_limit, (double)t->plan.device_total,
                      (double)t->limits.staging_limit, (double)t->plan.host_staging_total,
                      t->plan.fits ? 1.0 : 0.0};
    double *all = j->rank == 0 ? calloc((size_t)j->world_size * 5, sizeof(double)) : NULL;
    MPI_Gather(mine, 5, MPI_DOUBLE, all, 5, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (j->rank != 0) return;
    memory_plan_print(&t->plan, &t->limits, stdout);
    if (t->micro_batch_binding)
        printf("  --micro-batch auto chose %d (%d micro-batches per step); bound by %s\n",
               t->micro_batch, t->micro_batches_per_step, t->micro_batch_binding);
    for (int r = 1; r < j->world_size; r++) {
        double *theirs = all + 5 * r;
        if (memcmp(theirs, mine, sizeof mine) == 0) continue;
        char limit[32], need[32];
        memory_size_format((size_t)theirs[0], limit, sizeof limit);
        memory_size_format((size_t)theirs[1], need, sizeof need);
        printf("  rank %d: device %s of %s%s\n", r, need, theirs[0] > 0 ? limit : "no limit",
               theirs[4] > 0 ? "" : "  DOES NOT FIT");
    }
    fflush(stdout);
    free(all);
}

/* Rank 0 prints one line per rank: host, rank, local rank and device (with its PCI bus id on
 * GPUs), so a wrong rank-to-device mapping is visible at a glance. */
static void print_rank_lines(trainer *t, FILE *out) {
    job *j = t->job;
    char mine[256];
    snprintf(mine, sizeof mine, "  rank %d of %d on %s, local rank %d: %s", j->rank, j->world_size,
             j->host, j->local_rank, t->dev->description);
    char *all = j->rank == 0 ? calloc((size_t)j->world_size, sizeof mine) : NULL;
    MPI_Gather(mine, sizeof mine, MPI_CHAR, all, sizeof mine, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (j->rank != 0) return;
    for (int r = 0; r < j->world_size; r++)
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
    tensorboard_check(t, tensorboard_write_layout(t->tensorboard, 0, charts,
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
    tensorboard_check(t,
                      tensorboard_write_text(t->tensorboard, 0, t->start_step, "config", markdown));
    free(markdown);
}

void train_print_configuration(trainer *t) {
    job *j = t->job;
    /* Rank 0 composes the text once, for stdout and for TensorBoard. */
    char *text = NULL;
    size_t size = 0;
    FILE *out = j->rank == 0 ? open_memstream(&text, &size) : NULL;
    if (j->rank == 0 && !out) out = stdout;
    print_rank_lines(t, out);
    if (j->rank != 0) return;
    const dataset_geometry *g = dataset_get_geometry(t->train_data);
    fprintf(out, "ddtrain train: %d rank%s, device %s, communication %s, precision %s\n",
            j->world_size, j->world_size == 1 ? "" : "s", device_kind_name(t->device_kind),
            comm_backend_name(t->comm), precision_kind_name(t->precision));
    fprintf(out, "  blas             %s\n", blas_describe());
    options_print_resolved(COMMAND_TRAIN, t->opts, out);
    fprintf(out,
            "  => model %s (%zu parameters), data %" PRId64 " rows x %d features in %d file%s\n"
            "  => %" PRId64 " steps (%" PRId64 " per epoch), global batch %" PRId64
            " = %d ranks x %d micro-batches x %d rows\n",
            t->spec.text, model_parameter_count(t->model), g->rows, g->features, g->file_count,
            g->file_count == 1 ? "" : "s", t->total_steps, t->steps_per_epoch, t->global_batch,
            j->world_size, t->micro_batches_per_step, t->micro_batch);
    if (out != stdout) {
        fclose(out);
        fputs(text, stdout);
        if (t->tensorboard) {
            write_tensorboard_layout(t);
            if (t->tensorboard) write_tensorboard_configuration(t, text);
        }
        free(text);
    } else if (t->tensorboard) {
        tensorboard_check(t, ddt_error(DDT_ERR_MEMORY, "out of host memory for the "
                                                       "configuration text"));
    }
    fflush(stdout);
}

void train_format_duration(double seconds, char *text, size_t size) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(text, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(text, size, "%ld:%02ld", s / 60, s % 60);
}

void train_write_json_number(FILE *f, const char *name, double value) {
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.9g", name, value);
    else
        fprintf(f, ",\"%s\":null", name);
}

ddt_status train_end_of_epoch(trainer *t, int64_t epoch, epoch_tally *tally) {
    job *j = t->job;
    double train_loss = tally->steps ? tally->loss_sum / (double)tally->steps : NAN;
    double seconds = job_now() - tally->started - tally->eval_seconds;
    double samples_per_s = (double)(tally->steps * t->global_batch) / (seconds > 0 ? seconds : 1);
    evaluation ev = {.loss = NAN, .accuracy = -1};
    if (t->eval_data) {
        double eval_started = job_now();
        /* The next training micro-batch may already be uploading into next_buffer. */
        ddt_status status = evaluate_model(j, t->comm, t->dev, t->model, t->eval_data, t->loss,
                                           &t->buffers, t->next_buffer ^ 1, &ev);
        if (status != DDT_OK) return status; /* agreed and printed */
        tally->eval_seconds += job_now() - eval_started;
        t->last_eval = ev;
        t->evaluated = true;
    }
    if (j->rank == 0) {
        if (t->eval_data && ev.accuracy >= 0)
            printf("epoch %" PRId64 " done: train_loss %.4f  eval_loss %.4f  eval_accuracy %.4f  "
                   "(%.0f samples/s)\n",
                   epoch + 1, train_loss, ev.loss, ev.accuracy, samples_per_s);
        else if (t->eval_data)
            printf("epoch %" PRId64 " done: train_loss %.4f  eval_loss %.4f  (%.0f samples/s)\n",
                   epoch + 1, train_loss, ev.loss, samples_per_s);
        else
            printf("epoch %" PRId64 " done: train_loss %.4f  (%.0f samples/s)\n", epoch + 1,
                   train_loss, samples_per_s);
        fflush(stdout);
        if (t->metrics) {
            fprintf(t->metrics, "{\"event\":\"epoch\",\"epoch\":%" PRId64 ",\"steps\":%" PRId64,
                    epoch + 1, tally->steps);
            train_write_json_number(t->metrics, "train_loss", train_loss);
            train_write_json_number(t->metrics, "eval_loss", ev.loss);
            train_write_json_number(t->metrics, "eval_accuracy",
                                    ev.accuracy >= 0 ? ev.accuracy : NAN);
            train_write_json_number(t->metrics, "samples_per_s", samples_per_s);
            /* wall time since training began, evaluation included (for time to accuracy) */
            train_write_json_number(t->metrics, "elapsed_s", job_now() - t->loop_started);
            fprintf(t->metrics, "}\n");
            metrics_record_done(t);
        }
        if (t->tensorboard) {
            tensorboard_scalar scalars[3] = {{"train/epoch_loss", train_loss}};
            int count = 1;
            if (t->eval_data) scalars[count++] = (tensorboard_scalar){"eval/loss", ev.loss};
            if (t->eval_data && ev.accuracy >= 0)
                scalars[count++] = (tensorboard_scalar){"eval/accuracy", ev.accuracy};
            tensorboard_check(
                t, tensorboard_write_scalars(t->tensorboard, 0, t->current_step, scalars, count));
        }
    }
    return DDT_OK;
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

/* The step's scalars, in the order train_report_step() computes them; the last one,
 * allreduce_device_s, only where step times come from the device (GPUs). */
static const char *const step_json_keys[] = {"loss",
                                             "lr",
                                             "samples_per_s",
                                             "grad_norm",
                                             "data_wait_s",
                                             "compute_s",
                                             "communication_s",
                                             "optimizer_s",
                                             "allreduce_device_s"};
static const char *const step_tags[] = {
    "train/loss",           "train/learning_rate", "train/samples_per_s",
    "train/grad_norm",      "time/data_wait_s",    "time/compute_s",
    "time/communication_s", "time/optimizer_s",    "time/allreduce_device_s"};
#define STEP_VALUES ((int)(sizeof step_tags / sizeof step_tags[0]))

static int step_value_count(const trainer *t) {
    return t->device_timing ? STEP_VALUES : STEP_VALUES - 1;
}

/* Rank 0: the step's scalars, as in the step record, and every rank's memory. */
static void write_tensorboard_step(trainer *t, int64_t step, const double *values,
                                   const uint64_t *all) {
    int named = step_value_count(t);
    static const char *const memory_names[STEP_COUNT] = {
        [STEP_DEVICE] = "device_bytes",
        [STEP_STAGING] = "staging_bytes",
        [STEP_RSS] = "rss_bytes",
        [STEP_DEVICE_LIMIT] = "device_limit_bytes",
        [STEP_STAGING_LIMIT] = "staging_limit_bytes",
    };
    enum { TAG_SIZE = 48 };
    int ranks = t->job->world_size;
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
    for (int i = 0; i < named; i++)
        scalars[count++] = (tensorboard_scalar){step_tags[i], values[i]};
    for (int r = 0; r < ranks; r++)
        for (int k = 0; k < STEP_COUNT; k++) {
            uint64_t value = all[r * STEP_COUNT + k];
            if ((k == STEP_DEVICE_LIMIT || k == STEP_STAGING_LIMIT) && value == 0) continue;
            char *tag = tags + ((size_t)r * STEP_COUNT + (size_t)k) * TAG_SIZE;
            snprintf(tag, TAG_SIZE, "memory/rank%d/%s", r, memory_names[k]);
            scalars[count++] = (tensorboard_scalar){tag, (double)value};
        }
    tensorboard_check(t, tensorboard_write_scalars(t->tensorboard, 0, step, scalars, count));
    free(tags);
    free(scalars);
}

void train_report_step(trainer *t, int64_t step, float lr, double grad_norm, metrics_window *w) {
    job *j = t->job;
    stream_stats staging = stream_get_stats(t->stream);
    uint64_t mine[STEP_COUNT] = {
        [STEP_DEVICE] = allocator_get_stats(t->alloc).bytes_in_use,
        [STEP_STAGING] = staging.staging_bytes_in_use,
        [STEP_RSS] = current_rss_bytes(),
        [STEP_DEVICE_LIMIT] = t->limits.device_limit,
        [STEP_STAGING_LIMIT] = t->limits.staging_limit,
    };
    uint64_t *all = j->rank == 0 ? calloc((size_t)j->world_size * STEP_COUNT, sizeof *all) : NULL;
    MPI_Gather(mine, STEP_COUNT, MPI_UINT64_T, all, STEP_COUNT, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    if (j->rank != 0) return;
    double now = job_now();
    if (w->steps > 0 && all) {
        double values[STEP_VALUES] = {
            w->loss_sum / (double)w->steps,
            lr,
            (double)(w->steps * t->global_batch) / (now - w->started),
            grad_norm,
            t->times.data_wait - w->times_at_start.data_wait,
            t->times.compute - w->times_at_start.compute,
            t->times.communication - w->times_at_start.communication,
            t->times.optimizer - w->times_at_start.optimizer,
            t->times.allreduce_device - w->times_at_start.allreduce_device,
        };
        FILE *f = t->metrics;
        if (f) {
            fprintf(f, "{\"event\":\"step\",\"step\":%" PRId64 ",\"epoch\":%" PRId64, step,
                    (step - 1) / t->steps_per_epoch + 1);
            for (int i = 0; i < step_value_count(t); i++)
                train_write_json_number(f, step_json_keys[i], values[i]);
            fprintf(f,
                    ",\"device_bytes_in_use\":%" PRIu64 ",\"staging_bytes_in_use\":%" PRIu64
                    ",\"rss_bytes\":%" PRIu64,
                    mine[STEP_DEVICE], mine[STEP_STAGING], mine[STEP_RSS]);
            write_json_array(f, "device_bytes_per_rank", all, j->world_size, STEP_DEVICE);
            write_json_array(f, "staging_bytes_per_rank", all, j->world_size, STEP_STAGING);
            write_json_array(f, "rss_bytes_per_rank", all, j->world_size, STEP_RSS);
            fprintf(f, "}\n");
            metrics_record_done(t);
        }
        if (t->tensorboard) write_tensorboard_step(t, step, values, all);
    }
    free(all);
    *w = (metrics_window){.started = now, .times_at_start = t->times};
}

/* Rank 0's progress: a bar redrawn in place on a terminal, plain lines in a log file. */
void train_print_progress(trainer *t, int64_t done, int64_t epoch, double loss, float lr,
                          double rate, double seconds_left) {
    char eta[32];
    train_format_duration(seconds_left, eta, sizeof eta);
    if (t->progress_bar) {
        int width = 24, filled = (int)((double)width * (double)done / (double)t->total_steps);
        char bar[32];
        for (int i = 0; i < width; i++)
            bar[i] = i < filled ? '#' : '-';
        bar[width] = '\0';
        printf("\r\033[2K[%s] %3.0f%%  epoch %" PRId64 "  step %" PRId64 "/%" PRId64
               "  loss %.4f  lr %.3g  %.0f samples/s  ETA %s",
               bar, 100.0 * (double)done / (double)t->total_steps, epoch + 1, done, t->total_steps,
               loss, lr, rate, eta);
    } else {
        printf("epoch %" PRId64 " step %" PRId64 "/%" PRId64 "  loss %.4f  lr %.4g  "
               "%.0f samples/s  ETA %s\n",
               epoch + 1, done, t->total_steps, loss, lr, rate, eta);
    }
    fflush(stdout);
}

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

void train_report_summary(trainer *t, double wall_seconds) {
    job *j = t->job;
    allocator_stats device = allocator_get_stats(t->alloc);
    stream_stats staging = t->stream ? stream_get_stats(t->stream) : (stream_stats){0};
    uint64_t mine[PEAK_COUNT] = {
        [PEAK_RSS] = job_peak_rss_bytes(),
        [PEAK_DEVICE] = device.peak_bytes,
        [PEAK_DEVICE_RESERVED] = device.peak_reserved_bytes,
        [PEAK_STAGING] = staging.peak_staging_bytes_in_use + t->plan.evaluation_bytes,
        [PLANNED_DEVICE] = t->plan.device_total,
        [PLANNED_STAGING] = t->plan.host_staging_total,
        [DEVICE_LIMIT] = t->limits.device_limit,
        [STAGING_LIMIT] = t->limits.staging_limit,
        [OUTSIDE_ALLOCATOR] = t->limits.device_outside_allocator,
    };
    uint64_t *all = j->rank == 0 ? calloc((size_t)j->world_size * PEAK_COUNT, sizeof *all) : NULL;
    MPI_Gather(mine, PEAK_COUNT, MPI_UINT64_T, all, PEAK_COUNT, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    double times[5] = {t->times.data_wait, t->times.compute, t->times.communication,
                       t->times.optimizer, t->times.allreduce_device};
    MPI_Allreduce(MPI_IN_PLACE, times, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (j->rank != 0) return;
    double samples = (double)((t->steps_done - t->start_step) * t->global_batch);
    double samples_per_s = t->train_seconds > 0 ? samples / t->train_seconds : 0;
    uint64_t most[PEAK_COUNT] = {0};
    for (int r = 0; r < j->world_size; r++)
        for (int k = 0; k < PEAK_COUNT; k++)
            if (all[r * PEAK_COUNT + k] > most[k]) most[k] = all[r * PEAK_COUNT + k];
    printf("%s: %" PRId64 " steps in %.1f s, %.0f samples/s; final train_loss %.4f",
           t->stopped_by_signal ? "stopped" : "done", t->steps_done - t->start_step,
           t->train_seconds, samples_per_s, t->last_train_loss);
    if (t->skipped_steps) printf("; %" PRId64 " fp16 steps skipped on overflow", t->skipped_steps);
    if (t->resumed_from[0]) printf("; resumed from %s", t->resumed_from);
    if (t->evaluated && t->last_eval.accuracy >= 0)
        printf("; eval_loss %.4f eval_accuracy %.4f", t->last_eval.loss, t->last_eval.accuracy);
    else if (t->evaluated)
        printf("; eval_loss %.4f", t->last_eval.loss);
    char rss[32], peak_device[32], planned_device[32], peak_staging[32], planned_staging[32];
    memory_size_format(most[PEAK_RSS], rss, sizeof rss);
    memory_size_format(most[PEAK_DEVICE], peak_device, sizeof peak_device);
    memory_size_format(most[PLANNED_DEVICE], planned_device, sizeof planned_device);
    memory_size_format(most[PEAK_STAGING], peak_staging, sizeof peak_staging);
    memory_size_format(most[PLANNED_STAGING], planned_staging, sizeof planned_staging);
    printf("\n  time per rank (max%s): data wait %.2f s, compute %.2f s, communication %.2f s, "
           "optimizer %.2f s\n",
           t->device_timing ? "; compute, communication and optimizer in GPU time" : "", times[0],
           times[1], times[2], times[3]);
    if (t->device_timing && times[4] > 0)
        printf("  all-reduce on the GPU: %.2f s, of which compute waited %.2f s (%.0f%% "
               "overlapped with backward)\n",
               times[4], times[2], 100.0 * fmax(0.0, 1.0 - times[2] / times[4]));
    printf("  memory per rank (max): device %s (plan %s), host staging %s (plan %s), peak RSS "
           "%s\n",
           peak_device, planned_device, peak_staging, planned_staging, rss);
    if (t->opts->save) printf("  model saved to %s\n", t->opts->save);
    fflush(stdout);
    if (t->metrics) {
        FILE *f = t->metrics;
        fprintf(f,
                "{\"event\":\"summary\",\"ranks\":%d,\"steps\":%" PRId64 ",\"first_step\":%" PRId64
                ",\"stopped_by_signal\":%s,\"skipped_steps\":%" PRId64 ",\"global_batch\":%" PRId64
                ",\"micro_batch\":%d",
                j->world_size, t->steps_done, t->start_step,
                t->stopped_by_signal ? "true" : "false", t->skipped_steps, t->global_batch,
                t->micro_batch);
        train_write_json_number(f, "wall_s", wall_seconds);
        train_write_json_number(f, "train_seconds", t->train_seconds);
        train_write_json_number(f, "samples_per_s", samples_per_s);
        train_write_json_number(f, "final_train_loss", t->last_train_loss);
        train_write_json_number(f, "eval_loss", t->evaluated ? t->last_eval.loss : NAN);
        train_write_json_number(f, "eval_accuracy",
                                t->evaluated && t->last_eval.accuracy >= 0 ? t->last_eval.accuracy
                                                                           : NAN);
        train_write_json_number(f, "data_wait_s", times[0]);
        train_write_json_number(f, "compute_s", times[1]);
        train_write_json_number(f, "communication_s", times[2]);
        train_write_json_number(f, "optimizer_s", times[3]);
        if (t->device_timing) train_write_json_number(f, "allreduce_device_s", times[4]);
        for (int k = 0; k < PEAK_COUNT; k++) {
            fprintf(f, ",\"%s\":[", peak_names[k]);
            for (int r = 0; r < j->world_size; r++)
                fprintf(f, "%s%" PRIu64, r ? "," : "", all[r * PEAK_COUNT + k]);
            fprintf(f, "]");
        }
        fprintf(f, "}\n");
        metrics_record_done(t);
    }
    free(all);
}
