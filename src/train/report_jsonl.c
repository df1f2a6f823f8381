/* report_jsonl.c - the --metrics writer (see report_writers.h): one JSON object per line, a
 * "step" record every --metrics-every steps, "eval", "epoch" and a final "summary". Numbers
 * that are not finite are written as null. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "train/report_writers.h"
#include "util/files.h"

ddt_status report_jsonl_open(report_jsonl *j, const char *path, FILE *log) {
    *j = (report_jsonl){.path = path, .log = log};
    /* Records are added to what is there; a FIFO or /dev/null is written through. */
    return file_output_append("--metrics", path, &j->file);
}

void report_jsonl_close(report_jsonl *j) {
    if (j->file) fclose(j->file);
    j->file = NULL;
}

/* After each record: a record that could not be written (a full disk) is said once, naming
 * the file, and the file is closed. */
static void record_done(report_jsonl *j) {
    if (fflush(j->file) == 0 && !ferror(j->file)) return;
    int saved = errno;
    fprintf(j->log,
            "ddtrain: warning: --metrics %s: a record could not be written (%s); no more "
            "records are written to it\n",
            j->path, strerror(saved));
    fflush(j->log);
    fclose(j->file);
    j->file = NULL;
}

static void write_number(FILE *f, const char *name, double value) {
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.9g", name, value);
    else
        fprintf(f, ",\"%s\":null", name);
}

/* "name":[v0,v1,...]: value k of each rank's `stride` values. */
static void write_per_rank(FILE *f, const char *name, const uint64_t *all, int ranks, int stride,
                           int k) {
    fprintf(f, ",\"%s\":[", name);
    for (int r = 0; r < ranks; r++)
        fprintf(f, "%s%" PRIu64, r ? "," : "", all[r * stride + k]);
    fprintf(f, "]");
}

void report_jsonl_step(report_jsonl *j, const report_step_record *record) {
    static const char *const keys[REPORT_STEP_VALUES] = {
        [REPORT_STEP_LOSS] = "loss",
        [REPORT_STEP_LR] = "lr",
        [REPORT_STEP_SAMPLES_PER_S] = "samples_per_s",
        [REPORT_STEP_GRAD_NORM] = "grad_norm",
        [REPORT_STEP_DATA_WAIT_S] = "data_wait_s",
        [REPORT_STEP_COMPUTE_S] = "compute_s",
        [REPORT_STEP_COMMUNICATION_S] = "communication_s",
        [REPORT_STEP_OPTIMIZER_S] = "optimizer_s",
        [REPORT_STEP_ALLREDUCE_DEVICE_S] = "allreduce_device_s",
    };
    FILE *f = j->file;
    if (!f || !record->record_due) return;
    fprintf(f, "{\"event\":\"step\",\"step\":%" PRId64 ",\"epoch\":%" PRId64, record->step,
            record->epoch);
    for (int i = 0; i < record->value_count; i++)
        write_number(f, keys[i], record->values[i]);
    /* this rank's (rank 0's) own memory, then every rank's */
    const uint64_t *mine = record->memory;
    fprintf(f,
            ",\"device_bytes_in_use\":%" PRIu64 ",\"staging_bytes_in_use\":%" PRIu64
            ",\"rss_bytes\":%" PRIu64,
            mine[REPORT_MEMORY_DEVICE], mine[REPORT_MEMORY_STAGING], mine[REPORT_MEMORY_RSS]);
    write_per_rank(f, "device_bytes_per_rank", record->memory, record->ranks, REPORT_MEMORY_COUNT,
                   REPORT_MEMORY_DEVICE);
    write_per_rank(f, "staging_bytes_per_rank", record->memory, record->ranks, REPORT_MEMORY_COUNT,
                   REPORT_MEMORY_STAGING);
    write_per_rank(f, "rss_bytes_per_rank", record->memory, record->ranks, REPORT_MEMORY_COUNT,
                   REPORT_MEMORY_RSS);
    fprintf(f, "}\n");
    record_done(j);
}

void report_jsonl_evaluation(report_jsonl *j, const report_evaluation_record *record) {
    FILE *f = j->file;
    if (!f) return;
    fprintf(f, "{\"event\":\"eval\",\"step\":%" PRId64, record->step);
    write_number(f, "eval_loss", record->loss);
    write_number(f, "eval_accuracy", record->accuracy >= 0 ? record->accuracy : NAN);
    write_number(f, "elapsed_s", record->elapsed_seconds);
    fprintf(f, "}\n");
    record_done(j);
}

void report_jsonl_epoch(report_jsonl *j, const report_epoch_record *record) {
    FILE *f = j->file;
    if (!f) return;
    fprintf(f, "{\"event\":\"epoch\",\"epoch\":%" PRId64 ",\"steps\":%" PRId64, record->epoch,
            record->steps);
    write_number(f, "train_loss", record->train_loss);
    write_number(f, "eval_loss", record->evaluated ? record->eval_loss : NAN);
    write_number(f, "eval_accuracy",
                 record->evaluated && record->eval_accuracy >= 0 ? record->eval_accuracy : NAN);
    write_number(f, "samples_per_s", record->samples_per_s);
    /* wall time since training began, evaluation included (for time to accuracy) */
    write_number(f, "elapsed_s", record->elapsed_seconds);
    fprintf(f, "}\n");
    record_done(j);
}

void report_jsonl_summary(report_jsonl *j, const report_summary_record *record) {
    static const char *const peak_names[REPORT_PEAK_COUNT] = {
        [REPORT_PEAK_RSS] = "peak_rss_bytes",
        [REPORT_PEAK_DEVICE] = "peak_device_bytes",
        [REPORT_PEAK_DEVICE_RESERVED] = "peak_device_reserved_bytes",
        [REPORT_PEAK_STAGING] = "peak_staging_bytes",
        [REPORT_PLANNED_DEVICE] = "planned_device_bytes",
        [REPORT_PLANNED_STAGING] = "planned_staging_bytes",
        [REPORT_DEVICE_LIMIT] = "device_limit_bytes",
        [REPORT_STAGING_LIMIT] = "staging_limit_bytes",
        [REPORT_OUTSIDE_ALLOCATOR] = "device_outside_allocator_bytes",
    };
    FILE *f = j->file;
    if (!f) return;
    fprintf(f,
            "{\"event\":\"summary\",\"ranks\":%d,\"steps\":%" PRId64 ",\"first_step\":%" PRId64
            ",\"stopped_by_signal\":%s,\"skipped_steps\":%" PRId64 ",\"global_batch\":%" PRId64
            ",\"micro_batch\":%d",
            record->ranks, record->steps_done, record->first_step,
            record->stopped ? "true" : "false", record->skipped_steps, record->global_batch,
            record->micro_batch);
    write_number(f, "wall_s", record->wall_seconds);
    write_number(f, "train_seconds", record->train_seconds);
    write_number(f, "samples_per_s", record->samples_per_s);
    write_number(f, "final_train_loss", record->final_train_loss);
    write_number(f, "eval_loss", record->evaluated ? record->eval_loss : NAN);
    write_number(f, "eval_accuracy",
                 record->evaluated && record->eval_accuracy >= 0 ? record->eval_accuracy : NAN);
    write_number(f, "data_wait_s", record->times[REPORT_TIME_DATA_WAIT]);
    write_number(f, "compute_s", record->times[REPORT_TIME_COMPUTE]);
    write_number(f, "communication_s", record->times[REPORT_TIME_COMMUNICATION]);
    write_number(f, "optimizer_s", record->times[REPORT_TIME_OPTIMIZER]);
    if (record->device_times)
        write_number(f, "allreduce_device_s", record->times[REPORT_TIME_ALLREDUCE_DEVICE]);
    for (int k = 0; k < REPORT_PEAK_COUNT; k++)
        write_per_rank(f, peak_names[k], record->peaks, record->ranks, REPORT_PEAK_COUNT, k);
    fprintf(f, "}\n");
    record_done(j);
}
