/* options.c - the option table and its parser (see options.h). To add an option: a field in
 * `options`, one row in option_table. Parsing, bounds, --help and the resolved-configuration
 * printout all follow from the row. */
#include "driver/options.h"

#include "engine/model_spec.h"
#include "util/units.h"

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
    OPTION_SIZE,  /* int64_t bytes, with units (util/units.h) */
    OPTION_FLAG,  /* bool, takes no value */
    OPTION_ENUM,  /* int: the index of the value among `choices`, which is a library enum */
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
    const char *const *choices; /* OPTION_ENUM: names indexed by the enum's values, NULL-ended */
} option_def;

#define TRAIN COMMAND_TRAIN
#define EVAL COMMAND_EVAL
#define CONVERT COMMAND_CONVERT
#define SYNTH COMMAND_SYNTH
#define GENERATE COMMAND_GENERATE
#define FIELD(f) offsetof(options, f)
#define BIG 9.0e18

/* The names of the enum options, indexed by the library's own enum values, so the parsed
 * index is the value. */
static const char *const loss_choices[] = {[LOSS_SOFTMAX_CROSS_ENTROPY] = "softmax-ce",
                                           [LOSS_BINARY_CROSS_ENTROPY] = "bce",
                                           [LOSS_MEAN_SQUARED_ERROR] = "mse", NULL};
static const char *const optimizer_choices[] = {[OPTIMIZER_SGD] = "sgd",
                                                [OPTIMIZER_ADAMW] = "adamw", NULL};
static const char *const schedule_choices[] = {[LR_SCHEDULE_CONSTANT] = "constant",
                                               [LR_SCHEDULE_COSINE] = "cosine",
                                               [LR_SCHEDULE_STEP] = "step", NULL};
static const char *const policy_choices[] = {[MEMORY_POLICY_GROWTH] = "growth",
                                             [MEMORY_POLICY_PREALLOCATE] = "preallocate", NULL};
static const char *const device_choices[] = {[DEVICE_REQUEST_AUTO] = "auto",
                                             [DEVICE_REQUEST_CPU] = "cpu",
                                             [DEVICE_REQUEST_CUDA] = "cuda", NULL};
static const char *const precision_choices[] = {[PRECISION_FP32] = "fp32", [PRECISION_TF32] = "tf32",
                                                [PRECISION_BF16] = "bf16", [PRECISION_FP16] = "fp16",
                                                NULL};

static const char *const decay_choices[] = {"matrices", "all", NULL};
static const char *const allreduce_choices[] = {[COMM_BACKEND_REQUEST_AUTO] = "auto",
                                                [COMM_BACKEND_REQUEST_SHM] = "shm",
                                                [COMM_BACKEND_REQUEST_MPI] = "mpi",
                                                [COMM_BACKEND_REQUEST_NCCL] = "nccl", NULL};
static const char *const overlap_choices[] = {[COMM_OVERLAP_OFF] = "off",
                                              [COMM_OVERLAP_ON] = "on", NULL};

/* clang-format off: the rows are laid out by hand, the help text on lines of its own */
static const option_def option_table[] = {
    /* data */
    {"data", 0, OPTION_STRING, TRAIN | EVAL, FIELD(data), NULL, 0, 0, "PATH",
     "dataset: an HDF5 file, a comma-separated list, or a quoted glob of shards", NULL},
    {"eval-data", 0, OPTION_STRING, TRAIN, FIELD(eval_data), NULL, 0, 0, "PATH",
     "dataset evaluated after every epoch, or every --eval-every steps (loss and accuracy)",
     NULL},
    {"eval-every", 0, OPTION_INT64, TRAIN, FIELD(eval_every), "0", 0, BIG, "N",
     "evaluate --eval-data every N steps and at the end (0: at the end of every epoch); token "
     "models also print a short sample", NULL},
    {"eval-rows", 0, OPTION_INT64, TRAIN, FIELD(eval_rows), "0", 0, BIG, "N",
     "evaluate a fixed sample of N rows of --eval-data (blocks spread evenly over it) instead "
     "of every row (0: every row)", NULL},
    {"no-shuffle", 0, OPTION_FLAG, TRAIN, FIELD(no_shuffle), NULL, 0, 0, NULL,
     "keep file order (for exact comparisons)", NULL},
    {"allow-external-data", 0, OPTION_FLAG, TRAIN | EVAL | COMMAND_INFO,
     FIELD(allow_external_data), NULL, 0, 0, NULL,
     "read datasets whose values live outside their HDF5 file (external links, HDF5 external "
     "storage); refused by default, as they can point at any file", NULL},
    {"shuffle-window", 0, OPTION_INT, TRAIN, FIELD(shuffle_window), "0", 0, 65536, "BLOCKS",
     "rows are shuffled within windows of this many chunk-sized blocks (0: the most "
     "--host-staging-limit allows, up to 16)", NULL},
    {"prefetch-depth", 0, OPTION_INT, TRAIN, FIELD(prefetch_depth), "0", 0, 1024, "N",
     "micro-batches the reader thread keeps ready (0: 4, or fewer to fit "
     "--host-staging-limit; at least 2)", NULL},
    /* model */
    {"model", 0, OPTION_STRING, TRAIN, FIELD(model), "784-256-relu-128-relu-10", 0, 0, "SPEC",
     "the model: an MLP (input width, then dense widths and relu|gelu|tanh|sigmoid|dropout[P], "
     "P in [0,1) right after the word: dropout0.3-10, not dropout-10), "
     "a description in the model grammar (README, \"Describing a model\"; e.g. "
     "1x28x28-conv(32,k3,p1)-relu-maxpool(2)-flatten-10), @FILE holding one, or a preset: "
     "cnn-small, resnet-small, gpt-tiny, gpt-small, gpt2-124m", NULL},
    {"recompute", 0, OPTION_FLAG, TRAIN, FIELD(recompute), NULL, 0, 0, NULL,
     "keep only each gpt(...) block's input and recompute the block's activations during "
     "backward: less activation memory (see the memory plan), the same results bit for bit",
     NULL},
    {"loss", 0, OPTION_ENUM, TRAIN | EVAL, FIELD(loss), "softmax-ce", 0, 0, NULL, "training loss",
     loss_choices},
    {"init", 0, OPTION_STRING, TRAIN, FIELD(init), NULL, 0, 0, "FILE.h5",
     "start from a saved model instead of random weights", NULL},
    {"save", 0, OPTION_STRING, TRAIN, FIELD(save), NULL, 0, 0, "FILE.h5",
     "write the trained model (HDF5, one dataset per PyTorch state_dict name)", NULL},
    {"model-file", 0, OPTION_STRING, EVAL | GENERATE, FIELD(model_file), NULL, 0, 0, "FILE.h5",
     "model to evaluate or sample from (written by --save)", NULL},
    {"prompt", 0, OPTION_STRING, GENERATE, FIELD(prompt), NULL, 0, 0, "TEXT",
     "where the text starts: bytes for byte-level models (vocabulary 256), token ids "
     "separated by spaces or commas for others", NULL},
    {"tokens", 0, OPTION_INT64, GENERATE, FIELD(tokens), "200", 1, 1e8, "N",
     "tokens to generate", NULL},
    {"temperature", 0, OPTION_REAL, GENERATE, FIELD(temperature), "0.8", 0, 100, "T",
     "divides the logits before sampling (0: always the most likely token)", NULL},
    {"top-k", 0, OPTION_INT64, GENERATE, FIELD(top_k), "40", 0, 1e9, "K",
     "sample among the K most likely tokens only (0: all)", NULL},
    /* optimisation */
    {"optimizer", 0, OPTION_ENUM, TRAIN, FIELD(optimizer), "sgd", 0, 0, NULL, "optimizer",
     optimizer_choices},
    {"lr", 0, OPTION_REAL, TRAIN, FIELD(lr), "0.05", 1e-12, 1e6, "RATE", "learning rate", NULL},
    {"momentum", 0, OPTION_REAL, TRAIN, FIELD(momentum), "0.9", 0, 0.999999, "M", "SGD momentum", NULL},
    {"nesterov", 0, OPTION_FLAG, TRAIN, FIELD(nesterov), NULL, 0, 0, NULL,
     "Nesterov momentum (SGD)", NULL},
    {"weight-decay", 0, OPTION_REAL, TRAIN, FIELD(weight_decay), "0", 0, 1e3, "W",
     "L2 penalty (SGD) or decoupled decay (AdamW)", NULL},
    {"weight-decay-on", 0, OPTION_ENUM, TRAIN, FIELD(weight_decay_on), "matrices", 0, 0, NULL,
     "which tensors --weight-decay applies to: the weight matrices of dense, conv and attention "
     "layers (not biases, norms or embeddings; as nanoGPT and Hugging Face do), or all",
     decay_choices},
    {"clip-grad-norm", 0, OPTION_REAL, TRAIN, FIELD(clip_grad_norm), "0", 0, 1e9, "MAX",
     "scale the gradients down when their global L2 norm exceeds MAX (as PyTorch's "
     "clip_grad_norm_; 0: off)", NULL},
    {"beta1", 0, OPTION_REAL, TRAIN, FIELD(beta1), "0.9", 0, 0.999999, "B", "AdamW beta1", NULL},
    {"beta2", 0, OPTION_REAL, TRAIN, FIELD(beta2), "0.999", 0, 0.9999999, "B", "AdamW beta2", NULL},
    {"eps", 0, OPTION_REAL, TRAIN, FIELD(eps), "1e-8", 1e-30, 1, "E", "AdamW epsilon", NULL},
    {"lr-schedule", 0, OPTION_ENUM, TRAIN, FIELD(lr_schedule), "constant", 0, 0, NULL,
     "learning-rate schedule after warm-up", schedule_choices},
    {"warmup-steps", 0, OPTION_INT64, TRAIN, FIELD(warmup_steps), "0", 0, BIG, "N",
     "linear warm-up steps", NULL},
    {"lr-step-size", 0, OPTION_INT64, TRAIN, FIELD(lr_step_size), "0", 0, BIG, "N",
     "step schedule: steps between decays (0: one epoch)", NULL},
    {"lr-gamma", 0, OPTION_REAL, TRAIN, FIELD(lr_gamma), "0.1", 0, 1, "G",
     "step schedule: decay factor", NULL},
    {"min-lr", 0, OPTION_REAL, TRAIN, FIELD(min_lr), "0", 0, 1e6, "RATE",
     "cosine schedule: final learning rate", NULL},
    /* length and batching */
    {"epochs", 0, OPTION_INT64, TRAIN, FIELD(epochs), "1", 1, 1e9, "N",
     "epochs to train (or give --steps instead; not both)", NULL},
    {"steps", 0, OPTION_INT64, TRAIN, FIELD(steps), "0", 0, BIG, "N",
     "optimizer steps to train instead of --epochs (0: use --epochs)", NULL},
    {"global-batch", 0, OPTION_INT64, TRAIN, FIELD(global_batch), "128", 1, 1 << 30, "B",
     "samples per optimizer step, over all ranks", NULL},
    {"micro-batch", 0, OPTION_INT64, TRAIN | EVAL, FIELD(micro_batch), "0", 0, 1 << 24, "b|auto",
     "samples per forward/backward on one rank (0: global batch / ranks; auto: the largest "
     "that fits the memory limits); gradients are accumulated over global/(ranks*b) "
     "micro-batches", NULL},
    {"seed", 0, OPTION_INT64, TRAIN | SYNTH | CONVERT | GENERATE, FIELD(seed), "1", 0, BIG, "S",
     "seed for initialisation, shuffling and dropout (synth: for the data; convert images: "
     "for the order of the images; generate: for sampling)", NULL},
    /* memory budgets */
    {"device-memory", 0, OPTION_ENUM, TRAIN, FIELD(device_memory), "growth", 0, 0, NULL,
     "device memory policy: reserve as needed, or the whole limit at start-up "
     "(env DDTRAIN_DEVICE_MEMORY)",
     policy_choices},
    {"device-memory-limit", 0, OPTION_STRING, TRAIN, FIELD(device_memory_limit), NULL, 0, 0,
     "SIZE|FRACTION|LIST",
     "device memory per rank: 2GiB, a fraction of the device like 0.5, or one per local rank "
     "like 8GiB,8GiB,4GiB,4GiB (env DDTRAIN_DEVICE_MEMORY_LIMIT; on CPU the device is the "
     "node's memory); not given: this rank's share of the device's memory (CPU: the node's "
     "MemTotal or cgroup limit / its ranks); none: no limit", NULL},
    {"host-staging-limit", 0, OPTION_SIZE, TRAIN | CONVERT | SYNTH, FIELD(host_staging_limit),
     "256MiB", 0, 9.0e18, "SIZE",
     "host memory for the input path (ready micro-batches, block cache) per rank; convert and "
     "synth: for their buffers (a block of rows, the writer's chunks, one decoded image), "
     "planned before anything is read; 0: no limit", NULL},
    {"dry-run", 0, OPTION_FLAG, TRAIN, FIELD(dry_run), NULL, 0, 0, NULL,
     "print the memory plan and exit (0 if it fits the limits, 1 if not)", NULL},
    /* compute and communication */
    {"device", 0, OPTION_ENUM, TRAIN | EVAL | GENERATE, FIELD(device), "auto", 0, 0, NULL,
     "compute backend (auto: cuda when a GPU is visible and ddtrain was built with CUDA)",
     device_choices},
    {"precision", 0, OPTION_ENUM, TRAIN, FIELD(precision), "fp32", 0, 0, NULL,
     "matrix-product arithmetic (GPU); weights, gradients and updates stay fp32",
     precision_choices},
    {"loss-scale", 0, OPTION_REAL, TRAIN, FIELD(loss_scale), "65536", 1, 1e30, "S",
     "fp16: initial dynamic loss scale (halved on overflow, doubled after 2000 good steps)", NULL},
    {"comm-timeout", 0, OPTION_REAL, TRAIN | EVAL | GENERATE, FIELD(comm_timeout), "300", 0, 1e7,
     "SECONDS",
     "end the job when any wait between ranks makes no progress for this long, naming the "
     "ranks waited for (MPI's start-up and end too, naming the phase), or when one HDF5 read "
     "(of a damaged file) does not return for this long, naming the file; a stalled or lost "
     "rank ends the job within this bound plus at most 2 s that ranks other than 0 give rank "
     "0 to name it, and the launcher's time to end the processes (0: no limit)",
     NULL},
    {"threads", 0, OPTION_INT, TRAIN | EVAL | GENERATE, FIELD(threads), "1", 1, 1024, "T",
     "BLAS threads per rank", NULL},
    {"bucket-size", 0, OPTION_SIZE, TRAIN, FIELD(bucket_size), "256KiB", 1024, 4.0e9, "SIZE",
     "gradient all-reduce bucket size", NULL},
    {"allreduce", 0, OPTION_ENUM, TRAIN, FIELD(allreduce), "auto", 0, 0, NULL,
     "gradient all-reduce: shm (CPU ranks: shared memory within a node, a ring over MPI "
     "between nodes, fixed sum order), mpi (MPI_Iallreduce), nccl (GPUs); auto: nccl on GPUs, "
     "shm on CPU ranks", allreduce_choices},
    {"overlap", 0, OPTION_ENUM, TRAIN, FIELD(overlap), "on", 0, 0, NULL,
     "start each gradient bucket's all-reduce during backward, as its layers finish (off: all "
     "after backward)", overlap_choices},
    /* output */
    {"metrics", 0, OPTION_STRING, TRAIN, FIELD(metrics), NULL, 0, 0, "FILE.jsonl",
     "add JSON records to this file (kept if it exists): a step record every --metrics-every "
     "steps, one per epoch, a final summary", NULL},
    {"log-every", 0, OPTION_INT64, TRAIN, FIELD(log_every), "100", 0, BIG, "STEPS",
     "progress line every this many steps (0: epochs only; a terminal gets a progress bar)", NULL},
    {"metrics-every", 0, OPTION_INT64, TRAIN, FIELD(metrics_every), "100", 0, BIG, "STEPS",
     "--metrics and --tensorboard: a \"step\" record every this many steps (loss, lr, "
     "samples/s, gradient norm, time split, every rank's memory; 0: epochs only)", NULL},
    {"tensorboard", 0, OPTION_STRING, TRAIN, FIELD(tensorboard), NULL, 0, 0, "DIR",
     "write TensorBoard event files into DIR (a new file per run; tensorboard --logdir DIR): "
     "the --metrics-every step records, evaluation per epoch, the configuration", NULL},
    {"trace", 0, OPTION_STRING, TRAIN, FIELD(trace), NULL, 0, 0, "FILE.json",
     "write a Chrome-trace/Perfetto timeline of every rank over --trace-steps", NULL},
    {"trace-steps", 0, OPTION_STRING, TRAIN, FIELD(trace_steps), "1:20", 0, 0, "A:B",
     "the steps --trace covers (counted from 1)", NULL},
    /* checkpoints */
    {"checkpoint-dir", 0, OPTION_STRING, TRAIN, FIELD(checkpoint_dir), NULL, 0, 0, "DIR",
     "write checkpoints (model, optimizer, position in the data) here", NULL},
    {"checkpoint-every", 0, OPTION_STRING, TRAIN, FIELD(checkpoint_every), NULL, 0, 0,
     "STEPS|DURATION",
     "checkpoint every this many steps, or this often (90s, 10min, 2h); always at the end", NULL},
    {"checkpoint-keep", 0, OPTION_INT64, TRAIN, FIELD(checkpoint_keep), "3", 1, 1000000, "K",
     "keep the newest K checkpoints", NULL},
    {"resume", 0, OPTION_FLAG, TRAIN, FIELD(resume), NULL, 0, 0, NULL,
     "continue from the newest complete checkpoint in --checkpoint-dir (start fresh if none); "
     "the model, --seed, the optimizer, --global-batch and the data must match it", NULL},
    {"resume-new-data", 0, OPTION_FLAG, TRAIN, FIELD(resume_new_data), NULL, 0, 0, NULL,
     "--resume on other data than the checkpoint's: the change is intended", NULL},
    {"resume-new-batch", 0, OPTION_FLAG, TRAIN, FIELD(resume_new_batch), NULL, 0, 0, NULL,
     "--resume with another --global-batch than the checkpoint's: the change is intended (the "
     "position is kept in samples)", NULL},
    {"stop-after", 0, OPTION_INT64, TRAIN, FIELD(stop_after), "0", 0, BIG, "STEPS",
     "stop after this many steps of this run, as on a preemption signal: checkpoint, exit 0 "
     "(for jobs in chunks; 0: run to the end)", NULL},
    /* convert / synth */
    {"output", 'o', OPTION_STRING, CONVERT | SYNTH, FIELD(output), NULL, 0, 0, "OUT.h5",
     "output path (with --shards K: OUT-00000-of-0000K.h5 ...; with --val-fraction: "
     "OUT-train.h5 or its shards, and OUT-val.h5)", NULL},
    {"shards", 0, OPTION_INT64, CONVERT | SYNTH, FIELD(shards), "1", 1, 100000, "K",
     "number of shard files to write (of the training part)", NULL},
    {"val-fraction", 0, OPTION_REAL, CONVERT, FIELD(val_fraction), "0", 0, 0.9, "F",
     "convert images, text, tokens: hold out this fraction for validation in OUT-val.h5 "
     "(images: the first of the shuffled order; text and tokens: the tail of the stream)", NULL},
    {"image-shaped", 0, OPTION_FLAG, CONVERT, FIELD(image_shaped), NULL, 0, 0, NULL,
     "convert idx: write /features as N x 1 x H x W images instead of N x H*W", NULL},
    {"class-names", 0, OPTION_STRING, CONVERT, FIELD(class_names), NULL, 0, 0, "A,B,...",
     "convert idx: class names for /labels' class_names attribute (default: Fashion-MNIST's "
     "ten names when the images' path contains 'fashion', else none)", NULL},
    {"size", 0, OPTION_STRING, CONVERT, FIELD(size), NULL, 0, 0, "HxW",
     "convert images: resize every image to H x W pixels, bilinearly (default: the first "
     "image's size)", NULL},
    {"skip-bad", 0, OPTION_FLAG, CONVERT, FIELD(skip_bad), NULL, 0, 0, NULL,
     "convert images: leave out unreadable or corrupt images (listed) instead of refusing the "
     "folder", NULL},
    {"vocab-size", 0, OPTION_INT64, CONVERT, FIELD(vocab_size), "0", 0, MODEL_MAX_VOCAB, "V",
     "convert tokens: the vocabulary size stored with the ids, every id must be below it "
     "(0: 50257, GPT-2's, for uint16 files; 128256 for llm.c's uint32 files; otherwise from 2 "
     "to the largest vocabulary a model takes)", NULL},
    {"compression", 0, OPTION_INT64, CONVERT | SYNTH, FIELD(compression), "0", 0, 9, "LEVEL",
     "deflate level for the written datasets (0: none)", NULL},
    {"rows", 0, OPTION_INT64, SYNTH, FIELD(rows), NULL, 1, BIG, "N", "rows to generate", NULL},
    {"features", 0, OPTION_INT64, SYNTH, FIELD(features), NULL, 1, MODEL_MAX_WIDTH, "D",
     "features per row", NULL},
    {"classes", 0, OPTION_INT64, SYNTH, FIELD(classes), NULL, 2, 1 << 20, "C", "number of classes", NULL},
    {"noise", 0, OPTION_REAL, SYNTH, FIELD(noise), "1.0", 0, 1e6, "SIGMA",
     "noise around the class centres (larger: harder)", NULL},
    {"help", 'h', OPTION_FLAG, TRAIN | EVAL | CONVERT | SYNTH | COMMAND_INFO | GENERATE, FIELD(help), NULL, 0,
     0, NULL, "show this help", NULL},
};
/* clang-format on */

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
    case COMMAND_GENERATE:
        return "generate";
    }
    return "?";
}

static void *field_of(options *opts, const option_def *def) {
    return (char *)opts + def->offset;
}

static ddt_status check_bounds(const option_def *def, const char *text, double value) {
    if (value < def->min || value > def->max) {
        /* Whole numbers in full ("16777216", not "1.67772e+07"). */
        bool whole = def->type == OPTION_INT || def->type == OPTION_INT64;
        int digits = whole ? 0 : 6;
        const char *format = whole ? "%.*f" : "%.*g";
        char low[64], high[64];
        snprintf(low, sizeof low, format, digits, def->min);
        snprintf(high, sizeof high, format, digits, def->max);
        if (def->max >= BIG)
            return ddt_error(DDT_ERR_USAGE, "--%s: %s is out of range (must be at least %s)",
                             def->name, text, low);
        return ddt_error(DDT_ERR_USAGE, "--%s: %s is out of range (must be between %s and %s)",
                         def->name, text, low, high);
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
    case OPTION_ENUM: {
        for (int k = 0; def->choices[k]; k++)
            if (strcmp(text, def->choices[k]) == 0) {
                *(int *)field = k;
                return DDT_OK;
            }
        char accepted[160] = "";
        for (int k = 0; def->choices[k]; k++)
            snprintf(accepted + strlen(accepted), sizeof accepted - strlen(accepted), "%s%s",
                     k ? (def->choices[k + 1] ? ", " : " or ") : "", def->choices[k]);
        return ddt_error(DDT_ERR_USAGE, "--%s: '%s' is not one of %s", def->name, text, accepted);
    }
    case OPTION_SIZE: {
        uint64_t bytes;
        char what[64];
        snprintf(what, sizeof what, "--%s", def->name);
        DDT_CHECK(units_parse_size(what, text, &bytes));
        DDT_CHECK(check_bounds(def, text, (double)bytes));
        *(int64_t *)field = (int64_t)bytes;
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
    case OPTION_ENUM:
        snprintf(text, size, "%s", def->choices[*(const int *)field]);
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

/* ---- the configuration every rank must share -------------------------------------------- */

/* Options that may differ between ranks, and why (README, "Checkpoints, preemption and
 * failures"). */
static bool may_differ_between_ranks(const option_def *def) {
    return def->offset == FIELD(help) ||
           /* a rank's own BLAS threads: a resource of its node. It changes the rounding of the
            * rank's local products only, and every rank applies the same all-reduced gradients
            * (the optimizer's arithmetic is BLAS-free), so the replicas stay identical. */
           def->offset == FIELD(threads) ||
           /* compared as the files they resolve to (train, eval), so node-local copies under
            * other paths are allowed and one path naming other files on another node is not */
           def->offset == FIELD(data) || def->offset == FIELD(eval_data);
}

/* Appends "NAME\tVALUE\n" to text[*used..], tabs, newlines and backslashes in the value
 * escaped; grows text (*size). false when out of memory. */
static bool append_setting(char **text, size_t *used, size_t *size, const char *name,
                           const char *value) {
    size_t needed = *used + strlen(name) + 2 * strlen(value) + 3;
    if (needed > *size) {
        size_t grown = needed * 2;
        char *more = realloc(*text, grown);
        if (!more) return false;
        *text = more;
        *size = grown;
    }
    char *out = *text + *used;
    out += sprintf(out, "%s\t", name);
    for (const char *v = value; *v; v++) {
        if (*v == '\\' || *v == '\t' || *v == '\n') {
            *out++ = '\\';
            *out++ = *v == '\t' ? 't' : *v == '\n' ? 'n' : '\\';
        } else {
            *out++ = *v;
        }
    }
    *out++ = '\n';
    *out = '\0';
    *used = (size_t)(out - *text);
    return true;
}

char *options_canonical(command cmd, const options *opts, const char *const *extra,
                        int extra_count) {
    size_t used = 0, size = 4096;
    char *text = malloc(size);
    if (!text) return NULL;
    text[0] = '\0';
    bool ok = append_setting(&text, &used, &size, "the command", command_name(cmd));
    for (size_t i = 0; ok && i < OPTION_COUNT; i++) {
        const option_def *def = &option_table[i];
        if (!(def->commands & cmd) || may_differ_between_ranks(def)) continue;
        char name[64], value[512];
        snprintf(name, sizeof name, "--%s", def->name);
        format_value(def, opts, value, sizeof value);
        if (def->type == OPTION_REAL) { /* the shortest text that reads back as the same value */
            double number = *(const double *)((const char *)opts + def->offset);
            for (int digits = 1; digits <= 17; digits++) {
                snprintf(value, sizeof value, "%.*g", digits, number);
                if (strtod(value, NULL) == number) break;
            }
        } else if (def->type == OPTION_STRING) { /* a path or a spec may be longer than value */
            const char *given = *(const char *const *)((const char *)opts + def->offset);
            if (given) {
                ok = append_setting(&text, &used, &size, name, given);
                continue;
            }
        }
        ok = append_setting(&text, &used, &size, name, value);
    }
    for (int i = 0; ok && i < opts->positional_count; i++) {
        char name[32];
        snprintf(name, sizeof name, "argument %d", i + 1);
        ok = append_setting(&text, &used, &size, name, opts->positional[i]);
    }
    for (int i = 0; ok && i + 1 < extra_count * 2; i += 2)
        ok = append_setting(&text, &used, &size, extra[i], extra[i + 1]);
    if (!ok) {
        free(text);
        return NULL;
    }
    return text;
}

/* The line at `*cursor` split into name and value (pointers into a copy the caller frees);
 * false at the end of the text. */
static bool next_setting(const char **cursor, char **line, const char **name, const char **value) {
    if (!**cursor) return false;
    const char *end = strchr(*cursor, '\n');
    size_t length = end ? (size_t)(end - *cursor) : strlen(*cursor);
    *line = strndup(*cursor, length);
    *cursor += length + (end ? 1 : 0);
    if (!*line) return false;
    char *tab = strchr(*line, '\t');
    if (tab) *tab = '\0';
    *name = *line;
    *value = tab ? tab + 1 : "";
    return true;
}

ddt_status options_compare_canonical(const char *root, const char *mine, int rank) {
    const char *a = root, *b = mine;
    for (;;) {
        char *line_a = NULL, *line_b = NULL;
        const char *name_a = NULL, *name_b = NULL, *value_a = NULL, *value_b = NULL;
        bool more_a = next_setting(&a, &line_a, &name_a, &value_a);
        bool more_b = next_setting(&b, &line_b, &name_b, &value_b);
        ddt_status status = DDT_OK;
        if (!more_a && !more_b) {
            /* the same */
        } else if (more_a && more_b && strcmp(name_a, name_b) == 0) {
            if (strcmp(value_a, value_b) != 0)
                status = ddt_error(DDT_ERR_USAGE,
                                   "the ranks were started with different settings: %s is '%s' "
                                   "on rank 0 but '%s' on rank %d (every rank must be given the "
                                   "same command and options; only --threads may differ, and "
                                   "--data and --eval-data may name identical copies under "
                                   "other paths)",
                                   name_a, value_a, value_b, rank);
        } else {
            status = ddt_error(
                DDT_ERR_USAGE,
                "the ranks were started with different settings: rank 0 has %s%s%s%s "
                "where rank %d has %s%s%s%s (every rank must be given the same "
                "command and options)",
                more_a ? name_a : "nothing more", more_a ? " '" : "", more_a ? value_a : "",
                more_a ? "'" : "", rank, more_b ? name_b : "nothing more", more_b ? " '" : "",
                more_b ? value_b : "", more_b ? "'" : "");
        }
        free(line_a);
        free(line_b);
        if (status != DDT_OK || (!more_a && !more_b)) return status;
    }
}

static const char *command_synopsis(command cmd) {
    switch (cmd) {
    case COMMAND_TRAIN:
        return "ddtrain train --data PATH [options]";
    case COMMAND_EVAL:
        return "ddtrain eval --model-file MODEL.h5 --data PATH [options]";
    case COMMAND_CONVERT:
        return "ddtrain convert idx IMAGES LABELS -o OUT.h5 [--shards K] [--image-shaped] "
               "[--class-names A,B,...]\n"
               "       ddtrain convert images DIR -o OUT.h5 [--size HxW] [--shards K] "
               "[--val-fraction F] [--skip-bad] [--seed S]\n"
               "       ddtrain convert text FILE... -o OUT.h5 [--val-fraction F] [--shards K]\n"
               "       ddtrain convert tokens FILE.bin... -o OUT.h5 [--vocab-size V] "
               "[--val-fraction F] [--shards K]";
    case COMMAND_SYNTH:
        return "ddtrain synth -o OUT.h5 --rows N --features D --classes C [--seed S] "
               "[--shards K]";
    case COMMAND_INFO:
        return "ddtrain info FILE...";
    case COMMAND_GENERATE:
        return "ddtrain generate --model-file MODEL.h5 --prompt TEXT [--tokens N] "
               "[--temperature T] [--top-k K] [--seed S]";
    }
    return "";
}

/* What a command's forms do, beyond what each option says; NULL for none. */
static const char *command_notes(command cmd) {
    if (cmd != COMMAND_CONVERT) return NULL;
    return "idx     IDX files (MNIST, Fashion-MNIST; gzipped or not) -> /features float32 in [0,1] "
           "(N x H*W,\n"
           "        or N x 1 x H x W with --image-shaped), /labels int32, num_classes, "
           "class_names.\n"
           "images  an image folder as torchvision's ImageFolder reads it: one subfolder per "
           "class (classes\n"
           "        = sorted subfolder names; files sorted, subfolders searched, names ending "
           ".png, .jpg or\n"
           "        .jpeg in any case; other files and names starting with '.' ignored). "
           "Decoded with\n"
           "        libpng and libjpeg: grey (+alpha) is 1 channel, RGB(A) and palette 3 "
           "(alpha dropped,\n"
           "        as PIL's convert(\"RGB\")); the output has 3 channels, or 1 if every image "
           "is grey.\n"
           "        Resized bilinearly to --size (half-pixel centres, no antialiasing: torch's\n"
           "        interpolate(mode=\"bilinear\", align_corners=False)), scaled to [0,1], "
           "shuffled with\n"
           "        --seed: /features float32 N x C x H x W, /labels int32, num_classes, "
           "class_names. Every\n"
           "        image is checked before anything is written; unreadable or corrupt ones "
           "are listed by\n"
           "        path and refused (exit 1, nothing written) unless --skip-bad; so is a name like "
           "an\n"
           "        image's that is not a regular file (a FIFO, a device, a dangling link).\n"
           "text    the bytes of the files, in order, as tokens (vocab 256, uint16): /tokens "
           "and vocab_size.\n"
           "tokens  token files of nanoGPT's prepare.py (raw uint16) or llm.c (a 1024-byte "
           "header: magic\n"
           "        20240520, version 1 with uint16 or 2 with uint32 ids, the count; checked "
           "against the\n"
           "        file's size), concatenated in order, as /tokens with vocab_size.\n"
           "Inputs must be regular files; no output may be one of them. Output files are written "
           "under\n"
           "temporary names and published together once all are complete (SIGTERM, SIGINT and "
           "SIGHUP\n"
           "remove them). What a conversion holds in memory is planned against "
           "--host-staging-limit\n"
           "first, and rows no model takes (more than 16777216 values) are refused.\n";
}

void options_print_help(command cmd, FILE *out) {
    fprintf(out, "usage: %s\n\n", command_synopsis(cmd));
    if (command_notes(cmd)) fprintf(out, "%s\n", command_notes(cmd));
    fprintf(out, "options:\n");
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option_def *def = &option_table[i];
        if (!(def->commands & cmd)) continue;
        char left[64], names[96] = "";
        for (int k = 0; def->type == OPTION_ENUM && def->choices[k]; k++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? "|" : "",
                     def->choices[k]);
        const char *value_name = def->type == OPTION_ENUM ? names : def->value_name;
        if (def->short_name)
            snprintf(left, sizeof left, "-%c, --%s %s", def->short_name, def->name,
                     value_name ? value_name : "");
        else
            snprintf(left, sizeof left, "--%s %s", def->name, value_name ? value_name : "");
        fprintf(out, "  %-34s %s", left, def->help);
        if (def->default_value && def->type != OPTION_FLAG)
            fprintf(out, " [default: %s]", def->default_value);
        fputc('\n', out);
    }
}

void options_print_resolved(command cmd, const options *opts, const options_resolved *resolved,
                            FILE *out) {
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option_def *def = &option_table[i];
        if (!(def->commands & cmd) || def->offset == FIELD(help)) continue;
        char text[512];
        format_value(def, opts, text, sizeof text);
        /* What the run derived where the user left it to ddtrain: the value, and why. */
        for (int k = 0; resolved && k < resolved->count; k++)
            if (strcmp(resolved->names[k], def->name) == 0)
                snprintf(text, sizeof text, "%s", resolved->values[k]);
        if (resolved && resolved->model && strcmp(def->name, "model") == 0) {
            fprintf(out, "  %-20s %s\n", def->name, resolved->model); /* may be long */
            continue;
        }
        fprintf(out, "  %-20s %s\n", def->name, text);
    }
}
