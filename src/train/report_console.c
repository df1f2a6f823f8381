/* report_console.c - the console writer (see report_writers.h): the memory plan, the
 * configuration, progress (a bar on a terminal, lines in a log), evaluation and epoch lines,
 * and the summary, on rank 0's `out`. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "train/report_writers.h"
#include "util/units.h"

void report_console_plan(const report_console *c, const report_plan_record *record) {
    FILE *out = c->out;
    memory_plan_print(record->plan, record->limits, out);
    if (record->micro_batch_binding)
        fprintf(out, "  --micro-batch auto chose %d (%d micro-batches per step); bound by %s\n",
                record->micro_batch, record->micro_batches_per_step, record->micro_batch_binding);
    const double *mine = record->per_rank;
    for (int r = 1; r < record->ranks; r++) {
        const double *theirs = record->per_rank + 5 * r;
        if (memcmp(theirs, mine, 5 * sizeof *mine) == 0) continue;
        char limit[32], need[32];
        units_format_bytes((uint64_t)theirs[0], limit, sizeof limit);
        units_format_bytes((uint64_t)theirs[1], need, sizeof need);
        fprintf(out, "  rank %d: device %s of %s%s\n", r, need, theirs[0] > 0 ? limit : "no limit",
                theirs[4] > 0 ? "" : "  DOES NOT FIT");
    }
    fflush(out);
}

void report_console_configuration(const report_console *c, const char *text) {
    fputs(text, c->out);
    fflush(c->out);
}

void report_console_step(const report_console *c, const report_step_record *record) {
    if (!record->progress_due) return;
    FILE *out = c->out;
    int64_t done = record->step, total = record->total_steps;
    char eta[32];
    units_format_duration(record->eta_seconds, eta, sizeof eta);
    if (c->progress_bar) {
        int width = 24, filled = (int)((double)width * (double)done / (double)total);
        char bar[32];
        for (int i = 0; i < width; i++)
            bar[i] = i < filled ? '#' : '-';
        bar[width] = '\0';
        fprintf(out,
                "\r\033[2K[%s] %3.0f%%  epoch %" PRId64 "  step %" PRId64 "/%" PRId64
                "  loss %.4f  lr %.3g  %.0f samples/s  ETA %s",
                bar, 100.0 * (double)done / (double)total, record->epoch, done, total,
                record->progress_loss, record->lr, record->progress_samples_per_s, eta);
    } else {
        fprintf(out,
                "epoch %" PRId64 " step %" PRId64 "/%" PRId64 "  loss %.4f  lr %.4g  "
                "%.0f samples/s  ETA %s\n",
                record->epoch, done, total, record->progress_loss, record->lr,
                record->progress_samples_per_s, eta);
    }
    fflush(out);
}

void report_console_evaluation(const report_console *c, const report_evaluation_record *record) {
    FILE *out = c->out;
    if (c->progress_bar) fprintf(out, "\n");
    fprintf(out, "step %" PRId64 ": eval_loss %.4f", record->step, record->loss);
    if (record->accuracy >= 0) fprintf(out, "  eval_accuracy %.4f", record->accuracy);
    fprintf(out, "  (%.1f s)\n", record->seconds);
    fflush(out);
}

void report_console_epoch(const report_console *c, const report_epoch_record *record) {
    FILE *out = c->out;
    if (c->progress_bar) fprintf(out, "\n");
    if (record->evaluated && record->eval_accuracy >= 0)
        fprintf(out,
                "epoch %" PRId64 " done: train_loss %.4f  eval_loss %.4f  eval_accuracy %.4f  "
                "(%.0f samples/s)\n",
                record->epoch, record->train_loss, record->eval_loss, record->eval_accuracy,
                record->samples_per_s);
    else if (record->evaluated)
        fprintf(out, "epoch %" PRId64 " done: train_loss %.4f  eval_loss %.4f  (%.0f samples/s)\n",
                record->epoch, record->train_loss, record->eval_loss, record->samples_per_s);
    else
        fprintf(out, "epoch %" PRId64 " done: train_loss %.4f  (%.0f samples/s)\n", record->epoch,
                record->train_loss, record->samples_per_s);
    fflush(out);
}

void report_console_summary(const report_console *c, const report_summary_record *record) {
    FILE *out = c->out;
    uint64_t most[REPORT_PEAK_COUNT] = {0};
    for (int k = 0; k < record->ranks * REPORT_PEAK_COUNT; k++)
        if (record->peaks[k] > most[k % REPORT_PEAK_COUNT])
            most[k % REPORT_PEAK_COUNT] = record->peaks[k];
    fprintf(out, "%s: %" PRId64 " steps in %.1f s, %.0f samples/s; final train_loss %.4f",
            record->stopped ? "stopped" : "done", record->steps_done - record->first_step,
            record->train_seconds, record->samples_per_s, record->final_train_loss);
    if (record->skipped_steps)
        fprintf(out, "; %" PRId64 " fp16 steps skipped on overflow", record->skipped_steps);
    if (record->resumed_from[0]) fprintf(out, "; resumed from %s", record->resumed_from);
    if (record->evaluated && record->eval_accuracy >= 0)
        fprintf(out, "; eval_loss %.4f eval_accuracy %.4f", record->eval_loss,
                record->eval_accuracy);
    else if (record->evaluated)
        fprintf(out, "; eval_loss %.4f", record->eval_loss);
    char rss[32], peak_device[32], planned_device[32], peak_staging[32], planned_staging[32];
    units_format_bytes(most[REPORT_PEAK_RSS], rss, sizeof rss);
    units_format_bytes(most[REPORT_PEAK_DEVICE], peak_device, sizeof peak_device);
    units_format_bytes(most[REPORT_PLANNED_DEVICE], planned_device, sizeof planned_device);
    units_format_bytes(most[REPORT_PEAK_STAGING], peak_staging, sizeof peak_staging);
    units_format_bytes(most[REPORT_PLANNED_STAGING], planned_staging, sizeof planned_staging);
    const double *times = record->times;
    bool gpu = record->device_times;
    fprintf(out,
            "\n  time per rank (max%s): data wait %.2f s, compute %.2f s, communication %.2f s, "
            "optimizer %.2f s\n",
            gpu ? "; compute, communication and optimizer in GPU time" : "",
            times[REPORT_TIME_DATA_WAIT], times[REPORT_TIME_COMPUTE],
            times[REPORT_TIME_COMMUNICATION], times[REPORT_TIME_OPTIMIZER]);
    double device_allreduce = times[REPORT_TIME_ALLREDUCE_DEVICE];
    double waited = times[REPORT_TIME_COMMUNICATION];
    if (gpu && device_allreduce > 0)
        fprintf(out,
                "  all-reduce on the GPU: %.2f s, of which compute waited %.2f s (%.0f%% "
                "overlapped with backward)\n",
                device_allreduce, waited, 100.0 * fmax(0.0, 1.0 - waited / device_allreduce));
    fprintf(out,
            "  memory per rank (max): device %s (plan %s), host staging %s (plan %s), peak RSS "
            "%s\n",
            peak_device, planned_device, peak_staging, planned_staging, rss);
    if (record->saved_to) fprintf(out, "  model saved to %s\n", record->saved_to);
    fflush(out);
}
