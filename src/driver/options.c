/* options.c - the option table and its parser (see options.h). To add an option: a field in
 * `options`, one row in option_table. Parsing, bounds, --help and the resolved-configuration
 * printout all follow from the row. */
#include "driver/options.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum option_type {
    OPTION_STRING,
    OPTION_INT,   /* int */
    OPTION_INT64, /* int64_t */
    OPTION_REAL,  /* double */
    OPTION_SIZE,  /* int64_t bytes, with units */
    OPTION_FLAG,  /* bool, takes no value */
} option_type;

typedef struct option_def {
    const char *name;
    char short_name; /* 0 for none; only -o exists, for output paths */
    option_type type;
    unsigned commands; /* bitmask of command */
    size_t offset;
    const char *default_value; /* as text; NULL = unset */
    double min, max;           /* inclusive bounds for numbers */
    const char *value_name;
    const char *help;
} option_def;

#define TRAIN COMMAND_TRAIN
#define EVAL COMMAND_EVAL
#define CONVERT COMMAND_CONVERT
#define SYNTH COMMAND_SYNTH
#define FIELD(f) offsetof(options, f)
#define BIG 9.0e18

static const option_def option_table[] = {
    /* data */
    {"data", 0, OPTION_STRING, TRAIN | EVAL, FIELD(data), NULL, 0, 0, "PATH",
     "dataset: an HDF5 file, a comma-separated list, or a quoted glob of shards"},
    {"eval-data", 0, OPTION_STRING, TRAIN, FIELD(eval_data), NULL, 0, 0, "PATH",
     "dataset evaluated after every epoch (loss and accuracy)"},
    {"no-shuffle", 0, OPTION_FLAG, TRAIN, FIELD(no_shuffle), NULL, 0, 0, NULL,
     "keep file order (for exact comparisons)"},
    {"allow-external-data", 0, OPTION_FLAG, TRAIN | EVAL | COMMAND_INFO, FIELD(allow_external_data),
     NULL, 0, 0, NULL,
     "read datasets whose values live outside their HDF5 file (external links, HDF5 external "
     "storage); refused by default, as they can point at any file"},
    {"shuffle-window", 0, OPTION_INT, TRAIN, FIELD(shuffle_window), "0", 0, 65536, "BLOCKS",
     "rows are shuffled within windows of this many chunk-sized blocks (0: the most "
     "--host-staging-limit allows, up to 16)"},
    {"prefetch-depth", 0, OPTION_INT, TRAIN, FIELD(prefetch_depth), "0", 0, 1024, "N",
     "micro-batches the reader thread keeps ready (0: 4, or fewer to fit "
     "--host-staging-limit; at least 2)"},
    /* model */
    {"model", 0, OPTION_STRING, TRAIN, FIELD(model), "784-256-relu-128-relu-10", 0, 0, "SPEC",
     "MLP: input width, then dense widths and relu|gelu|tanh|sigmoid|dropout[P]"},
    {"loss", 0, OPTION_STRING, TRAIN | EVAL, FIELD(loss), "softmax-ce", 0, 0, "softmax-ce|bce|mse",
     "training loss"},
    {"init", 0, OPTION_STRING, TRAIN, FIELD(init), NULL, 0, 0, "FILE.h5",
     "start from a saved model instead of random weights"},
    {"save", 0, OPTION_STRING, TRAIN, FIELD(save), NULL, 0, 0, "FILE.h5",
     "write the trained model (dense_<i>/weight, dense_<i>/bias)"},
    {"model-file", 0, OPTION_STRING, EVAL, FIELD(model_file), NULL, 0, 0, "FILE.h5",
     "model to evaluate (written by --save)"},
    /* optimisation */
    {"optimizer", 0, OPTION_STRING, TRAIN, FIELD(optimizer), "sgd", 0, 0, "sgd|adamw", "optimizer"},
    {"lr", 0, OPTION_REAL, TRAIN, FIELD(lr), "0.05", 1e-12, 1e6, "RATE", "learning rate"},
    {"momentum", 0, OPTION_REAL, TRAIN, FIELD(momentum), "0.9", 0, 0.999999, "M", "SGD momentum"},
    {"nesterov", 0, OPTION_FLAG, TRAIN, FIELD(nesterov), NULL, 0, 0, NULL,
     "Nesterov momentum (SGD)"},
    {"weight-decay", 0, OPTION_REAL, TRAIN, FIELD(weight_decay), "0", 0, 1e3, "W",
     "L2 penalty (SGD) or decoupled decay (AdamW)"},
    {"beta1", 0, OPTION_REAL, TRAIN, FIELD(beta1), "0.9", 0, 0.999999, "B", "AdamW beta1"},
    {"beta2", 0, OPTION_REAL, TRAIN, FIELD(beta2), "0.999", 0, 0.9999999, "B", "AdamW beta2"},
    {"eps", 0, OPTION_REAL, TRAIN, FIELD(eps), "1e-8", 1e-30, 1, "E", "AdamW epsilon"},
    {"lr-schedule", 0, OPTION_STRING, TRAIN, FIELD(lr_schedule), "constant", 0, 0,
     "constant|cosine|step", "learning-rate schedule after warm-up"},
    {"warmup-steps", 0, OPTION_INT64, TRAIN, FIELD(warmup_steps), "0", 0, BIG, "N",
     "linear warm-up steps"},
    {"lr-step-size", 0, OPTION_INT64, TRAIN, FIELD(lr_step_size), "0", 0, BIG, "N",
     "step schedule: steps between decays (0: one epoch)"},
    {"lr-gamma", 0, OPTION_REAL, TRAIN, FIELD(lr_gamma), "0.1", 0, 1, "G",
     "step schedule: decay factor"},
    {"min-lr", 0, OPTION_REAL, TRAIN, FIELD(min_lr), "0", 0, 1e6, "RATE",
     "cosine schedule: final learning rate"},
    /* length and batching */
    {"epochs", 0, OPTION_INT64, TRAIN, FIELD(epochs), "1", 1, 1e9, "N",
     "epochs to train (ignored when --steps is given)"},
    {"steps", 0, OPTION_INT64, TRAIN, FIELD(steps), "0", 0, BIG, "N",
     "optimizer steps to train instead of --epochs (0: use --epochs)"},
    {"global-batch", 0, OPTION_INT64, TRAIN, FIELD(global_batch), "128", 1, 1 << 30, "B",
     "samples per optimizer step, over all ranks"},
    {"micro-batch", 0, OPTION_INT64, TRAIN | EVAL, FIELD(micro_batch), "0", 0, 1 << 24, "b|auto",
     "samples per forward/backward on one rank (0: global batch / ranks; auto: the largest "
     "that fits the memory limits); gradients are accumulated over global/(ranks*b) "
     "micro-batches"},
    {"seed", 0, OPTION_INT64, TRAIN | SYNTH, FIELD(seed), "1", 0, BIG, "S",
     "seed for initialisation, shuffling and dropout (synth: for the data)"},
    /* memory budgets */
    {"device-memory", 0, OPTION_STRING, TRAIN, FIELD(device_memory), "growth", 0, 0,
     "growth|preallocate",
     "device memory policy: reserve as needed, or the whole limit at start-up "
     "(env DDTRAIN_DEVICE_MEMORY)"},
    {"device-memory-limit", 0, OPTION_STRING, TRAIN, FIELD(device_memory_limit), NULL, 0, 0,
     "SIZE|FRACTION|LIST",
     "device memory per rank: 2GiB, a fraction of the device like 0.5, or one per local rank "
     "like 8GiB,8GiB,4GiB,4GiB (env DDTRAIN_DEVICE_MEMORY_LIMIT; on CPU the device is the "
     "node's memory)"},
    {"host-staging-limit", 0, OPTION_SIZE, TRAIN, FIELD(host_staging_limit), "256MiB", 0, 9.0e18,
     "SIZE",
     "host memory for the input path (ready micro-batches, block cache) per rank; 0: no limit"},
    {"dry-run", 0, OPTION_FLAG, TRAIN, FIELD(dry_run), NULL, 0, 0, NULL,
     "print the memory plan and exit (0 if it fits the limits)"},
    /* compute and communication */
    {"device", 0, OPTION_STRING, TRAIN | EVAL, FIELD(device), "auto", 0, 0, "auto|cpu|cuda",
     "compute backend (auto: cuda when a GPU is visible and ddtrain was built with CUDA)"},
    {"precision", 0, OPTION_STRING, TRAIN, FIELD(precision), "fp32", 0, 0, "fp32|tf32|bf16|fp16",
     "matrix-product arithmetic (GPU); weights, gradients and updates stay fp32"},
    {"loss-scale", 0, OPTION_REAL, TRAIN, FIELD(loss_scale), "65536", 1, 1e30, "S",
     "fp16: initial dynamic loss scale (halved on overflow, doubled after 2000 good steps)"},
    {"comm-timeout", 0, OPTION_REAL, TRAIN, FIELD(comm_timeout), "300", 0.1, 1e7, "SECONDS",
     "give up on a collective that makes no progress for this long, and end the job"},
    {"threads", 0, OPTION_INT, TRAIN | EVAL, FIELD(threads), "1", 1, 1024, "T",
     "BLAS threads per rank"},
    {"bucket-size", 0, OPTION_SIZE, TRAIN, FIELD(bucket_size), "256KiB", 1024, 4.0e9, "SIZE",
     "gradient all-reduce bucket size"},
    /* output */
    {"metrics", 0, OPTION_STRING, TRAIN, FIELD(metrics), NULL, 0, 0, "FILE.jsonl",
     "append one JSON record per epoch and a final summary"},
    {"log-every", 0, OPTION_INT64, TRAIN, FIELD(log_every), "100", 0, BIG, "STEPS",
     "progress line every this many steps (0: epochs only; a terminal gets a progress bar)"},
    {"metrics-every", 0, OPTION_INT64, TRAIN, FIELD(metrics_every), "100", 0, BIG, "STEPS",
     "--metrics: a \"step\" record every this many steps (loss, lr, samples/s, time split, "
     "memory; 0: epochs only)"},
    {"trace", 0, OPTION_STRING, TRAIN, FIELD(trace), NULL, 0, 0, "FILE.json",
     "write a Chrome-trace/Perfetto timeline of every rank over --trace-steps"},
    {"trace-steps", 0, OPTION_STRING, TRAIN, FIELD(trace_steps), "1:20", 0, 0, "A:B",
     "the steps --trace covers (counted from 1)"},
    /* checkpoints */
    {"checkpoint-dir", 0, OPTION_STRING, TRAIN, FIELD(checkpoint_dir), NULL, 0, 0, "DIR",
     "write checkpoints (model, optimizer, position in the data) here"},
    {"checkpoint-every", 0, OPTION_STRING, TRAIN, FIELD(checkpoint_every), NULL, 0, 0,
     "STEPS|DURATION",
     "checkpoint every this many steps, or this often (90s, 10min, 2h); always at the end"},
    {"checkpoint-keep", 0, OPTION_INT64, TRAIN, FIELD(checkpoint_keep), "3", 1, 1000000, "K",
     "keep the newest K checkpoints"},
    {"resume", 0, OPTION_FLAG, TRAIN, FIELD(resume), NULL, 0, 0, NULL,
     "continue from the newest complete checkpoint in --checkpoint-dir (start fresh if none)"},
    {"stop-after", 0, OPTION_INT64, TRAIN, FIELD(stop_after), "0", 0, BIG, "STEPS",
     "stop after this many steps of this run, as on a preemption signal: checkpoint, exit 0 "
     "(for jobs in chunks; 0: run to the end)"},
    /* convert / synth */
    {"output", 'o', OPTION_STRING, CONVERT | SYNTH, FIELD(output), NULL, 0, 0, "OUT.h5",
     "output path (with --shards K: OUT-00000-of-0000K.h5 ...)"},
    {"shards", 0, OPTION_INT64, CONVERT | SYNTH, FIELD(shards), "1", 1, 100000, "K",
     "number of shard files to write"},
    {"compression", 0, OPTION_INT64, CONVERT | SYNTH, FIELD(compression), "0", 0, 9, "LEVEL",
     "deflate level for the written datasets (0: none)"},
    {"rows", 0, OPTION_INT64, SYNTH, FIELD(rows), NULL, 1, BIG, "N", "rows to generate"},
    {"features", 0, OPTION_INT64, SYNTH, FIELD(features), NULL, 1, 1 << 24, "D",
     "features per row"},
    {"classes", 0, OPTION_INT64, SYNTH, FIELD(classes), NULL, 2, 1 << 20, "C", "number of classes"},
    {"noise", 0, OPTION_REAL, SYNTH, FIELD(noise), "1.0", 0, 1e6, "SIGMA",
     "noise around the class centres (larger: harder)"},
    {"help", 'h', OPTION_FLAG, TRAIN | EVAL | CONVERT | SYNTH | COMMAND_INFO, FIELD(help), NULL, 0,
     0, NULL, "show this help"},
};

#define OPTION_COUNT (sizeof option_table / sizeof option_table[0])

/* Integer options that also take the word "auto" (stored as OPTIONS_AUTO). */
static bool accepts_auto(const option_def *def) {
    return def->offset == FIELD(micro_batch);
}

const char *command_name(command cmd) {
    switch (cmd) {
    case COMMAND_TRAIN:
        return "train";
    case COMMAND_EVAL:
        return "eval";
    case COMMAND_CONVERT:
        return "convert";
    case COMMAND_SYNTH:
        return "synth";
    case COMMAND_INFO:
        return "info";
    }
    return "?";
}

ddt_status options_parse_size(const char *option_name, const char *text, int64_t *bytes) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (end == text || errno || !(value >= 0) || isinf(value))
        return ddt_error(DDT_ERR_USAGE, "--%s: '%s' is not a size (e.g. 512MiB, 2GiB, 1000000)",
                         option_name, text);
    static const struct {
        const char *suffix;
        double factor;
    } units[] = {{"", 1},          {"B", 1},
                 {"K", 1024},      {"KB", 1000},
                 {"KiB", 1024},    {"M", 1048576},
                 {"MB", 1e6},      {"MiB", 1048576},
                 {"G", 1 << 30},   {"GB", 1e9},
                 {"GiB", 1 << 30}, {"T", 1099511627776.0},
                 {"TB", 1e12},     {"TiB", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            double result = value * units[i].factor;
            if (result > 9.0e18)
                return ddt_error(DDT_ERR_USAGE, "--%s: '%s' is too large", option_name, text);
            *bytes = (int64_t)result;
            return DDT_OK;
        }
    }
    return ddt_error(DDT_ERR_USAGE, "--%s: '%s' has an unknown unit (use B, KiB, MiB, GiB, TiB)",
                     option_name, text);
}

static void *field_of(options *opts, const option_def *def) {
    return (char *)opts + def->offset;
}

static ddt_status check_bounds(const option_def *def, const char *text, double value) {
    if (value < def->min || value > def->max) {
        if (def->max >= BIG)
            return ddt_error(DDT_ERR_USAGE, "--%s: %s is out of range (must be at least %g)",
                             def->name, text, def->min);
        return ddt_error(DDT_ERR_USAGE, "--%s: %s is out of range (must be between %g and %g)",
                         def->name, text, def->min, def->max);
    }
    return DDT_OK;
}

static ddt_status set_value(options *opts, const option_def *def, const char *text) {
    void *field = field_of(opts, def);
    char *end;
    switch (def->type) {
    case OPTION_STRING:
        if (!*text) return ddt_error(DDT_ERR_USAGE, "--%s: the value is empty", def->name);
        *(const char **)field = text;
        return DDT_OK;
    case OPTION_FLAG:
        *(bool *)field = true;
        return DDT_OK;
    case OPTION_INT:
    case OPTION_INT64: {
        if (accepts_auto(def) && strcmp(text, "auto") == 0) {
            *(int64_t *)field = OPTIONS_AUTO;
            return DDT_OK;
        }
        errno = 0;
        long long value = strtoll(text, &end, 10);
        if (end == text || *end || errno)
            return ddt_error(DDT_ERR_USAGE, "--%s: '%s' is not a whole number%s", def->name, text,
                             accepts_auto(def) ? " or auto" : "");
        DDT_CHECK(check_bounds(def, text, (double)value));
        if (def->type == OPTION_INT)
            *(int *)field = (int)value;
        else
            *(int64_t *)field = value;
        return DDT_OK;
    }
    case OPTION_REAL: {
        errno = 0;
        double value = strtod(text, &end);
        if (end == text || *end || errno || !isfinite(value))
            return ddt_error(DDT_ERR_USAGE, "--%s: '%s' is not a number", def->name, text);
        DDT_CHECK(check_bounds(def, text, value));
        *(double *)field = value;
        return DDT_OK;
    }
    case OPTION_SIZE: {
        int64_t bytes;
        DDT_CHECK(options_parse_size(def->name, text, &bytes));
        DDT_CHECK(check_bounds(def, text, (double)bytes));
        *(int64_t *)field = bytes;
        return DDT_OK;
    }
    }
    return ddt_error(DDT_ERR_INTERNAL, "option --%s has no type", def->name);
}

static const option_def *find_option(const char *name, size_t name_length, char short_name) {
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option_def *def = &option_table[i];
        if (short_name
                ? def->short_name == short_name
                : strlen(def->name) == name_length && strncmp(def->name, name, name_length) == 0)
            return def;
    }
    return NULL;
}

ddt_status options_parse(command cmd, int argc, char **argv, options *out) {
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option_def *def = &option_table[i];
        if (def->default_value) DDT_CHECK(set_value(out, def, def->default_value));
    }
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const option_def *def = NULL;
        const char *value = NULL;
        if (strncmp(arg, "--", 2) == 0 && arg[2]) {
            const char *name = arg + 2;
            const char *equals = strchr(name, '=');
            size_t length = equals ? (size_t)(equals - name) : strlen(name);
            def = find_option(name, length, 0);
            if (!def || !(def->commands & cmd))
                return ddt_error(DDT_ERR_USAGE,
                                 "unknown option '--%.*s' for 'ddtrain %s' (see ddtrain %s --help)",
                                 (int)length, name, command_name(cmd), command_name(cmd));
            if (equals) value = equals + 1;
        } else if (arg[0] == '-' && arg[1] && !arg[2] && !(arg[1] >= '0' && arg[1] <= '9')) {
            def = find_option(NULL, 0, arg[1]);
            if (!def || !(def->commands & cmd))
                return ddt_error(DDT_ERR_USAGE,
                                 "unknown option '%s' for 'ddtrain %s' (see ddtrain %s --help)",
                                 arg, command_name(cmd), command_name(cmd));
        } else {
            if (out->positional_count == OPTIONS_MAX_POSITIONAL)
                return ddt_error(DDT_ERR_USAGE, "too many arguments (at most %d)",
                                 OPTIONS_MAX_POSITIONAL);
            out->positional[out->positional_count++] = arg;
            continue;
        }
        if (def->type == OPTION_FLAG) {
            if (value)
                return ddt_error(DDT_ERR_USAGE, "--%s takes no value (got '%s')", def->name, value);
        } else if (!value) {
            if (i + 1 >= argc)
                return ddt_error(DDT_ERR_USAGE, "--%s needs a value (%s)", def->name,
                                 def->value_name ? def->value_name : "VALUE");
            value = argv[++i];
        }
        DDT_CHECK(set_value(out, def, value ? value : ""));
        size_t index = (size_t)(def - option_table);
        out->given[index / 64] |= 1ull << (index % 64);
    }
    return DDT_OK;
}

bool options_given(const options *opts, const char *name) {
    const option_def *def = find_option(name, strlen(name), 0);
    if (!def) return false;
    size_t index = (size_t)(def - option_table);
    return (opts->given[index / 64] >> (index % 64)) & 1;
}

static void format_value(const option_def *def, const options *opts, char *text, size_t size) {
    const void *field = (const char *)opts + def->offset;
    switch (def->type) {
    case OPTION_STRING: {
        const char *value = *(const char *const *)field;
        snprintf(text, size, "%s", value ? value : "(none)");
        return;
    }
    case OPTION_FLAG:
        snprintf(text, size, "%s", *(const bool *)field ? "yes" : "no");
        return;
    case OPTION_INT:
        snprintf(text, size, "%d", *(const int *)field);
        return;
    case OPTION_INT64:
        if (accepts_auto(def) && *(const int64_t *)field == OPTIONS_AUTO)
            snprintf(text, size, "auto");
        else
            snprintf(text, size, "%lld", (long long)*(const int64_t *)field);
        return;
    case OPTION_REAL:
        snprintf(text, size, "%g", *(const double *)field);
        return;
    case OPTION_SIZE: {
        int64_t bytes = *(const int64_t *)field;
        if (bytes % (1 << 20) == 0 && bytes >= (1 << 20))
            snprintf(text, size, "%lldMiB", (long long)(bytes >> 20));
        else if (bytes % 1024 == 0 && bytes >= 1024)
            snprintf(text, size, "%lldKiB", (long long)(bytes >> 10));
        else
            snprintf(text, size, "%lldB", (long long)bytes);
        return;
    }
    }
}

static const char *command_synopsis(command cmd) {
    switch (cmd) {
    case COMMAND_TRAIN:
        return "ddtrain train --data PATH [options]";
    case COMMAND_EVAL:
        return "ddtrain eval --model-file MODEL.h5 --data PATH [options]";
    case COMMAND_CONVERT:
        return "ddtrain convert idx IMAGES LABELS -o OUT.h5 [--shards K]";
    case COMMAND_SYNTH:
        return "ddtrain synth -o OUT.h5 --rows N --features D --classes C [--seed S] "
               "[--shards K]";
    case COMMAND_INFO:
        return "ddtrain info FILE...";
    }
    return "";
}

void options_print_help(command cmd, FILE *out) {
    fprintf(out, "usage: %s\n\noptions:\n", command_synopsis(cmd));
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option_def *def = &option_table[i];
        if (!(def->commands & cmd)) continue;
        char left[64];
        if (def->short_name)
            snprintf(left, sizeof left, "-%c, --%s %s", def->short_name, def->name,
                     def->value_name ? def->value_name : "");
        else
            snprintf(left, sizeof left, "--%s %s", def->name,
                     def->value_name ? def->value_name : "");
        fprintf(out, "  %-34s %s", left, def->help);
        if (def->default_value && def->type != OPTION_FLAG)
            fprintf(out, " [default: %s]", def->default_value);
        fputc('\n', out);
    }
}

void options_print_resolved(command cmd, const options *opts, FILE *out) {
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option_def *def = &option_table[i];
        if (!(def->commands & cmd) || def->offset == FIELD(help)) continue;
        char text[512];
        format_value(def, opts, text, sizeof text);
        fprintf(out, "  %-20s %s\n", def->name, text);
    }
}
