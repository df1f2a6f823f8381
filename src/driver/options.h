/* options.h - ddtrain's command-line options: one declarative table drives parsing,
 * validation, `--help` and the printout of the resolved configuration.
 *
 * Each option names the subcommands that accept it, its type, default, bounds and help.
 * Values land in one `options` struct shared by all subcommands. Positional arguments
 * (convert's form and input files, info's files) are collected in order.
 *
 * Usage:
 *     options opts;
 *     ddt_status st = options_parse(COMMAND_TRAIN, argc - 2, argv + 2, &opts);
 *     if (opts.help) options_print_help(COMMAND_TRAIN, stdout);
 */
#ifndef DDT_DRIVER_OPTIONS_H
#define DDT_DRIVER_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "comm/comm.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/loss.h"
#include "engine/optim.h"
#include "util/status.h"

typedef enum command {
    COMMAND_TRAIN = 1 << 0,
    COMMAND_EVAL = 1 << 1,
    COMMAND_CONVERT = 1 << 2,
    COMMAND_SYNTH = 1 << 3,
    COMMAND_INFO = 1 << 4,
    COMMAND_GENERATE = 1 << 5,
} command;

#define OPTIONS_MAX_POSITIONAL 1024 /* convert tokens takes a data set's shard files */
/* Value stored for an integer option given as "auto" (only where the table allows it). */
#define OPTIONS_AUTO (-1)

typedef struct options {
    /* data */
    const char *data;
    const char *eval_data;
    bool no_shuffle;
    bool allow_external_data; /* follow external links and external storage */
    int shuffle_window;  /* blocks */
    int prefetch_depth;  /* micro-batches */
    /* model and loss */
    const char *model;
    bool recompute;
    /* generate */
    const char *prompt;
    int64_t tokens;
    double temperature;
    int64_t top_k;
    loss_kind loss;
    const char *init;
    const char *save;
    const char *model_file; /* eval */
    /* optimisation */
    optimizer_kind optimizer;
    double lr;
    double momentum;
    bool nesterov;
    double weight_decay;
    int weight_decay_on; /* 0 matrices, 1 all */
    double clip_grad_norm;
    int64_t eval_every;
    int64_t eval_rows;
    double beta1, beta2, eps;
    lr_schedule_kind lr_schedule;
    int64_t warmup_steps;
    int64_t lr_step_size;
    double lr_gamma;
    double min_lr;
    /* length and batching */
    int64_t epochs;
    int64_t steps;
    int64_t global_batch;
    int64_t micro_batch; /* 0: global_batch / world (no accumulation); OPTIONS_AUTO: fit */
    int64_t seed;
    /* memory budgets */
    memory_policy device_memory;
    const char *device_memory_limit; /* SIZE, FRACTION, or a list per local rank */
    int64_t host_staging_limit;      /* bytes; 0 = none */
    bool dry_run;
    /* compute and communication */
    device_request device;
    precision_kind precision;
    double loss_scale;
    double comm_timeout;
    int threads;
    int64_t bucket_size; /* bytes */
    comm_backend_request allreduce;
    comm_overlap overlap;
    /* output */
    const char *metrics;
    int64_t log_every;
    int64_t metrics_every;
    const char *tensorboard;
    const char *trace;
    const char *trace_steps;
    /* checkpoints */
    const char *checkpoint_dir;
    const char *checkpoint_every; /* STEPS or a duration (90s, 10min, 2h) */
    int64_t checkpoint_keep;
    bool resume;
    bool resume_new_data;
    bool resume_new_batch;
    int64_t stop_after;
    /* convert / synth */
    const char *output;
    int64_t shards;
    int64_t compression;
    int64_t rows;
    int64_t features;
    int64_t classes;
    double noise;
    bool image_shaped;       /* convert idx: /features N x 1 x H x W */
    const char *class_names; /* convert idx: comma-separated names */
    const char *size;        /* convert images: HxW */
    double val_fraction;     /* convert images, text, tokens: held out for validation */
    bool skip_bad;           /* convert images: leave out unreadable images */
    int64_t vocab_size;      /* convert tokens: 0 = the format's default */
    /* general */
    bool help;
    int positional_count;
    const char *positional[OPTIONS_MAX_POSITIONAL];
    /* which options the user gave explicitly: bit i for table entry i */
    uint64_t given[2];
} options;

/* Parses argv (without the program and subcommand names). On DDT_ERR_USAGE the message names
 * the option and the problem. Fills defaults first. */
ddt_status options_parse(command cmd, int argc, char **argv, options *out);
/* True if the user gave option `name` (without leading dashes) on the command line. */
bool options_given(const options *opts, const char *name);
void options_print_help(command cmd, FILE *out);
/* Values the command derived where the user left an option to it, shown instead of the
 * option's raw value: names[k] (an option name) prints values[k]. */
typedef struct options_resolved {
    int count;
    const char *names[8];
    char values[8][64];
    const char *model; /* the model's full description (a preset expanded), or NULL */
} options_resolved;
/* Prints "  name  value" lines for every option of `cmd` (the resolved configuration). */
void options_print_resolved(command cmd, const options *opts, const options_resolved *resolved,
                            FILE *out);
const char *command_name(command cmd);

/* The configuration every rank must share, as text, to compare across ranks at set-up: the
 * command, then a line "--NAME\tVALUE" for every option of `cmd` in table order (given or
 * default, as parsed: 0.10 and 1e-1 read alike), "argument N\tVALUE" for each positional
 * argument, then the `extra_count` pairs of `extra` (name, value: what the command takes from
 * the environment); tabs, newlines and backslashes escaped. Left out on purpose: --help,
 * --threads (a rank's own BLAS threads, a resource of its node: it changes only the rounding
 * of the rank's local products, and every rank applies the same all-reduced gradients), and
 * --data and --eval-data, which train and eval compare as the files they resolve to (so
 * identical node-local copies under other paths are allowed). malloc'ed; NULL when out of
 * memory. */
char *options_canonical(command cmd, const options *opts, const char *const *extra,
                        int extra_count);
/* DDT_OK if `mine` (this rank's, `rank`) equals rank 0's `root`; else DDT_ERR_USAGE naming the
 * first setting that differs and both values: "--lr is '0.1' on rank 0 but '0.2' on rank 1". */
ddt_status options_compare_canonical(const char *root, const char *mine, int rank);

#endif
