/* report_tensorboard.c - the --tensorboard writer (see report_writers.h and, for the tags,
 * report.h): the step records' scalars and every rank's memory, evaluation per epoch, the
 * configuration text and the custom-scalars layout. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/report_writers.h"

ddt_status report_tensorboard_open(report_tensorboard *tb, const char *directory, FILE *log) {
    *tb = (report_tensorboard){.log = log};
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    return tensorboard_open(directory, host, &tb->writer);
}

void report_tensorboard_close(report_tensorboard *tb) {
    tensorboard_close(tb->writer);
    tb->writer = NULL;
}

/* A failed write is said once; no more events are written. */
static void check(report_tensorboard *tb, ddt_status status) {
    if (status == DDT_OK) return;
    fprintf(tb->log, "ddtrain: warning: %s; no more TensorBoard events from this run\n",
            ddt_error_message());
    fflush(tb->log);
    report_tensorboard_close(tb);
}

/* The charts of TensorBoard's custom-scalars dashboard: each memory next to its limit. */
static void write_layout(report_tensorboard *tb) {
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
    check(tb,
          tensorboard_write_layout(tb->writer, 0, charts, (int)(sizeof charts / sizeof charts[0])));
}

/* The configuration as TensorBoard text: a preformatted Markdown block (lines indented). */
static void write_configuration(report_tensorboard *tb, int64_t step, const char *text) {
    size_t lines = 1;
    for (const char *c = text; *c; c++)
        lines += *c == '\n';
    char *markdown = malloc(strlen(text) + 4 * lines + 1);
    if (!markdown) {
        check(tb, ddt_error(DDT_ERR_MEMORY, "out of host memory for the TensorBoard "
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
    check(tb, tensorboard_write_text(tb->writer, 0, step, "config", markdown));
    free(markdown);
}

void report_tensorboard_configuration(report_tensorboard *tb, int64_t step, const char *text) {
    if (tb->writer) write_layout(tb);
    if (tb->writer) write_configuration(tb, step, text);
}

void report_tensorboard_step(report_tensorboard *tb, const report_step_record *record) {
    static const char *const tags[REPORT_STEP_VALUES] = {
        [REPORT_STEP_LOSS] = "train/loss",
        [REPORT_STEP_LR] = "train/learning_rate",
        [REPORT_STEP_SAMPLES_PER_S] = "train/samples_per_s",
        [REPORT_STEP_GRAD_NORM] = "train/grad_norm",
        [REPORT_STEP_DATA_WAIT_S] = "time/data_wait_s",
        [REPORT_STEP_COMPUTE_S] = "time/compute_s",
        [REPORT_STEP_COMMUNICATION_S] = "time/communication_s",
        [REPORT_STEP_OPTIMIZER_S] = "time/optimizer_s",
        [REPORT_STEP_ALLREDUCE_DEVICE_S] = "time/allreduce_device_s",
    };
    static const char *const memory_names[REPORT_MEMORY_COUNT] = {
        [REPORT_MEMORY_DEVICE] = "device_bytes",
        [REPORT_MEMORY_STAGING] = "staging_bytes",
        [REPORT_MEMORY_RSS] = "rss_bytes",
        [REPORT_MEMORY_DEVICE_LIMIT] = "device_limit_bytes",
        [REPORT_MEMORY_STAGING_LIMIT] = "staging_limit_bytes",
    };
    enum { TAG_SIZE = 48 };
    if (!tb->writer || !record->record_due) return;
    int ranks = record->ranks;
    tensorboard_scalar *scalars =
        calloc((size_t)REPORT_STEP_VALUES + (size_t)ranks * REPORT_MEMORY_COUNT, sizeof *scalars);
    char *names = calloc((size_t)ranks * REPORT_MEMORY_COUNT, TAG_SIZE);
    if (!scalars || !names) {
        free(scalars);
        free(names);
        check(tb, ddt_error(DDT_ERR_MEMORY, "out of host memory for TensorBoard"));
        return;
    }
    int count = 0;
    for (int i = 0; i < record->value_count; i++)
        scalars[count++] = (tensorboard_scalar){tags[i], record->values[i]};
    for (int r = 0; r < ranks; r++)
        for (int k = 0; k < REPORT_MEMORY_COUNT; k++) {
            uint64_t value = record->memory[r * REPORT_MEMORY_COUNT + k];
            bool limit = k == REPORT_MEMORY_DEVICE_LIMIT || k == REPORT_MEMORY_STAGING_LIMIT;
            if (limit && value == 0) continue; /* no limit */
            char *tag = names + ((size_t)r * REPORT_MEMORY_COUNT + (size_t)k) * TAG_SIZE;
            snprintf(tag, TAG_SIZE, "memory/rank%d/%s", r, memory_names[k]);
            scalars[count++] = (tensorboard_scalar){tag, (double)value};
        }
    check(tb, tensorboard_write_scalars(tb->writer, 0, record->step, scalars, count));
    free(names);
    free(scalars);
}

void report_tensorboard_evaluation(report_tensorboard *tb, const report_evaluation_record *record) {
    if (!tb->writer) return;
    tensorboard_scalar scalars[2] = {{"eval/loss", record->loss}};
    int count = 1;
    if (record->accuracy >= 0)
        scalars[count++] = (tensorboard_scalar){"eval/accuracy", record->accuracy};
    check(tb, tensorboard_write_scalars(tb->writer, 0, record->step, scalars, count));
}

void report_tensorboard_epoch(report_tensorboard *tb, const report_epoch_record *record) {
    if (!tb->writer) return;
    tensorboard_scalar scalars[3] = {{"train/epoch_loss", record->train_loss}};
    int count = 1;
    if (record->evaluated) scalars[count++] = (tensorboard_scalar){"eval/loss", record->eval_loss};
    if (record->evaluated && record->eval_accuracy >= 0)
        scalars[count++] = (tensorboard_scalar){"eval/accuracy", record->eval_accuracy};
    check(tb, tensorboard_write_scalars(tb->writer, 0, record->step, scalars, count));
}
