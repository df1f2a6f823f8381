/* test_engine_device_ops.c - the list of device operations (engine/device_ops.def) and what
 * comes from it: every entry's arguments are its parameters' names in order (a swapped pair
 * of the same type would compile and compute nonsense); the CPU backend, the reference,
 * supports every operation; a backend that leaves one out is refused by model_check_device()
 * naming the layer and the operation, and an operation it lacks called anyway fails naming
 * it instead of crashing. Each layer kind's list of operations (layers.c) is checked by
 * running the kind's forward and backward passes on a backend that has nothing else of the
 * layer operations: a list that leaves out an operation its passes call fails here.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/device_backend.h"
#include "engine/layers.h"
#include "engine/loss.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "train/trainer.h"
#include "util/rng.h"

typedef struct op_text {
    const char *name, *parameters, *arguments;
} op_text;

static const op_text op_texts[] = {
#define DEVICE_OP(type, name, parameters, arguments) {#name, #parameters, #arguments},
#include "engine/device_ops.def"
};

/* The identifier each comma-separated item of "(a, b)" ends with, in order; the number found. */
static int last_identifiers(const char *list, char names[][64], int capacity) {
    int count = 0;
    const char *item = list + 1; /* past "(" */
    while (*item && count < capacity) {
        const char *end = item;
        while (*end && *end != ',' && *end != ')')
            end++;
        const char *last = end;
        while (last > item && !(isalnum((unsigned char)last[-1]) || last[-1] == '_'))
            last--;
        const char *first = last;
        while (first > item && (isalnum((unsigned char)first[-1]) || first[-1] == '_'))
            first--;
        snprintf(names[count++], 64, "%.*s", (int)(last - first), first);
        if (*end != ',') break;
        item = end + 1;
    }
    return count;
}

static void check_list(void) {
    CHECK(sizeof op_texts / sizeof op_texts[0] == DEVICE_OP_COUNT);
    for (int op = 0; op < DEVICE_OP_COUNT; op++) {
        const op_text *t = &op_texts[op];
        CHECK(strcmp(device_op_name((device_op)op), t->name) == 0);
        for (int other = 0; other < op; other++)
            CHECK(strcmp(op_texts[other].name, t->name) != 0);
        char parameters[24][64], arguments[24][64];
        int p = last_identifiers(t->parameters, parameters, 24);
        int a = last_identifiers(t->arguments, arguments, 24);
        int same = p == a && p > 0 && strcmp(parameters[0], "dev") == 0;
        for (int i = 0; same && i < p; i++)
            same = strcmp(parameters[i], arguments[i]) == 0;
        CHECK(same);
        if (!same)
            fprintf(stderr, "  %s: parameters %s but arguments %s\n", t->name, t->parameters,
                    t->arguments);
    }
    CHECK(strcmp(device_op_name(DEVICE_OP_COUNT), "unknown") == 0);
    /* The checker itself: a swapped pair is seen. */
    char swapped[4][64];
    CHECK(last_identifiers("(device *dev, int rows, int cols)", swapped, 4) == 3 &&
          strcmp(swapped[1], "rows") == 0 && strcmp(swapped[2], "cols") == 0);
}

/* Clears the table entry of `op` (a copy of a backend's table). */
static void clear_op(device_ops *ops, device_op op) {
    switch (op) {
#define DEVICE_OP(type, name, parameters, arguments)                                               \
    case DEVICE_OP_##name:                                                                         \
        ops->name = NULL;                                                                          \
        break;
#include "engine/device_ops.def"
    case DEVICE_OP_COUNT:
        break;
    }
}

static void check_missing_operations(device *dev) {
    for (int op = 0; op < DEVICE_OP_COUNT; op++) {
        CHECK(device_supports_op(dev, (device_op)op));
        if (!device_supports_op(dev, (device_op)op))
            fprintf(stderr, "  the CPU backend lacks %s\n", device_op_name((device_op)op));
    }
    CHECK(!device_supports_op(dev, DEVICE_OP_COUNT));

    const device_ops *cpu = dev->ops;
    device_ops lacking = *cpu;
    clear_op(&lacking, DEVICE_OP_bias_add);
    clear_op(&lacking, DEVICE_OP_check_finite);
    dev->ops = &lacking;
    CHECK(!device_supports_op(dev, DEVICE_OP_bias_add));
    CHECK(device_supports_op(dev, DEVICE_OP_gemm));

    static model_spec spec;
    CHECK_OK(model_spec_parse("4-relu-3", &spec)); /* layer 1 is the dense with its bias */
    CHECK(model_check_device(&spec, dev) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(),
                 "the cpu backend cannot run layer 1 (dense): it lacks the operation bias_add"));
    CHECK_OK(model_spec_parse("4-ln-relu", &spec));
    CHECK_OK(model_check_device(&spec, dev));

    /* A status operation it lacks fails at once, naming it. */
    float x[3] = {1, 2, 3}, bias[3] = {1, 1, 1};
    bool finite = false;
    CHECK(device_check_finite(dev, 3, x, &finite) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "lacks the operation check_finite"));
    /* A void one does nothing, and the next operation that returns a status fails naming it. */
    CHECK_OK(device_synchronize(dev));
    device_bias_add(dev, 1, 3, x, bias);
    CHECK(x[0] == 1.0f);
    CHECK(device_synchronize(dev) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "lacks the operation bias_add"));
    dev->ops = cpu;
    dev->missing_op = NULL;

    /* Training's own operations: the optimizer (and the loss, the checks) too, before any
     * allocation. */
    train_config cfg = {.loss = LOSS_SOFTMAX_CROSS_ENTROPY};
    cfg.optimizer.kind = OPTIMIZER_ADAMW;
    CHECK_OK(train_check_device_ops(&cfg, dev));
    device_ops no_adamw = *cpu;
    clear_op(&no_adamw, DEVICE_OP_adamw_update);
    dev->ops = &no_adamw;
    CHECK(train_check_device_ops(&cfg, dev) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(),
                 "the cpu backend cannot train with adamw: it lacks the operation adamw_update"));
    cfg.optimizer.kind = OPTIMIZER_SGD;
    CHECK_OK(train_check_device_ops(&cfg, dev));
    clear_op(&no_adamw, DEVICE_OP_mean_squared_error);
    cfg.loss = LOSS_MEAN_SQUARED_ERROR;
    CHECK(train_check_device_ops(&cfg, dev) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "cannot train with mse: it lacks the operation "
                                      "mean_squared_error"));
    dev->ops = cpu;
}

/* The operations outside the layers that a pass of the model, its loss and set-up call. */
static const device_op outside_layers[] = {
    DEVICE_OP_memory_alloc,        DEVICE_OP_memory_free,
    DEVICE_OP_memory_info,         DEVICE_OP_copy_host_to_device,
    DEVICE_OP_copy_device_to_host, DEVICE_OP_copy_device_to_device,
    DEVICE_OP_fill_zero,           DEVICE_OP_add,
    DEVICE_OP_set_precision,       DEVICE_OP_precision_workspace_bytes,
    DEVICE_OP_synchronize,         DEVICE_OP_softmax_cross_entropy,
};

#define ROWS 3

/* Runs a forward pass, the loss and a backward pass of `text` with only the operations its
 * nodes list (and those outside the layers): none may be missing. Then each listed operation
 * of each node, left out, makes model_check_device() refuse. */
static void check_kind_lists(device *dev, const char *text) {
    static model_spec spec;
    CHECK_OK(model_spec_parse(text, &spec));
    bool listed[DEVICE_OP_COUNT] = {false};
    for (size_t i = 0; i < sizeof outside_layers / sizeof outside_layers[0]; i++)
        listed[outside_layers[i]] = true;
    for (int n = 0; n < spec.node_count; n++) {
        const device_op *ops;
        int count = layer_device_ops(&spec.nodes[n], &ops);
        for (int i = 0; i < count; i++)
            listed[ops[i]] = true;
    }
    const device_ops *cpu = dev->ops;
    device_ops only = *cpu;
    for (int op = 0; op < DEVICE_OP_COUNT; op++)
        if (!listed[op]) clear_op(&only, (device_op)op);
    dev->ops = &only;
    CHECK_OK(model_check_device(&spec, dev));

    allocator *alloc = NULL;
    model *m = NULL;
    CHECK_OK(allocator_open(dev, &alloc));
    CHECK_OK(device_set_precision(dev, PRECISION_FP32, alloc,
                                  model_spec_max_gemm_operand_floats(&spec, ROWS)));
    CHECK_OK(model_init(&spec, alloc, ROWS, (model_options){0}, &m));
    if (m) {
        CHECK_OK(model_init_parameters(m, 7));
        size_t inputs = (size_t)ROWS * spec.input_width;
        float *features = calloc(inputs, sizeof *features);
        int32_t *tokens = calloc(inputs, sizeof *tokens);
        for (size_t i = 0; i < inputs; i++) {
            features[i] = (float)rng_uniform(rng_hash4(7, 1, 0, i)) - 0.5f;
            tokens[i] = (int32_t)(i % (size_t)(spec.vocab > 0 ? spec.vocab : 1));
        }
        int predictions = ROWS * spec.positions;
        int32_t *labels = calloc((size_t)predictions, sizeof *labels);
        int64_t row_ids[ROWS] = {5, 9, 11};
        model_pass pass = {.training = true, .step = 3, .seed = 11, .row_ids = row_ids};
        model_input input = spec.input_kind == MODEL_INPUT_TOKENS
                                ? (model_input){.tokens = tokens}
                                : (model_input){.features = features};
        const float *logits = NULL;
        float loss = 0.0f;
        model_zero_gradients(m);
        CHECK_OK(model_forward(m, input, ROWS, &pass, &logits));
        loss_apply(dev, LOSS_SOFTMAX_CROSS_ENTROPY, predictions, spec.output_width, logits, labels,
                   NULL, 1.0f, &loss, model_output_gradient(m));
        CHECK_OK(model_backward(m, ROWS, &pass, NULL, NULL));
        CHECK_OK(device_synchronize(dev));
        if (dev->missing_op)
            fprintf(stderr, "  %s: its passes call %s, which its kinds' lists leave out\n", text,
                    dev->missing_op);
        free(features);
        free(tokens);
        free(labels);
    }
    model_free(m);
    allocator_close(alloc);

    for (int n = 0; n < spec.node_count; n++) {
        const device_op *ops;
        int count = layer_device_ops(&spec.nodes[n], &ops);
        for (int i = 0; i < count; i++) {
            device_ops lacking = *cpu;
            clear_op(&lacking, ops[i]);
            dev->ops = &lacking;
            CHECK(model_check_device(&spec, dev) == DDT_ERR_USAGE);
            CHECK(strstr(ddt_error_message(), device_op_name(ops[i])) != NULL);
        }
    }
    dev->ops = cpu;
    dev->missing_op = NULL;
}

int main(void) {
    device *dev = NULL;
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    check_list();
    check_missing_operations(dev);
    /* Each kind beside as few others as the grammar allows (a model needs a layer with
     * parameters: normalisation, whose operations no other kind shares). */
    static const char *const models[] = {
        "5-4",
        "5-ln-gelu",
        "5-dropout0.5-ln",
        "2x5x5-conv(3,k3,p1)-flatten",
        "2x6x6-bn-maxpool(2)-flatten",
        "2x6x6-bn-avgpool(3,s2,p1)-flatten",
        "2x5x5-bn-gap",
        "2x4x4-bn-flatten",
        "6-bn",
        "6-ln",
        "6-ln-res(tanh)",
        "tokens(4,6)-embed(8)-lmhead",
        "tokens(4,6)-embed(8)-attn(2)-lmhead",
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        check_kind_lists(dev, models[i]);
    device_close(dev);
    return check_finish();
}
