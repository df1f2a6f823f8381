/* test_engine_model.c - model specs (parsing, canonical text, every error message), parameter
 * layout, initialisation, the allocator's bookkeeping, and properties of the forward pass that
 * data parallelism relies on: a row's output does not depend on the rest of its batch, and
 * dropout masks depend on the global row id, not the row's position.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/device_backend.h" /* a fake backend wrapping the CPU one */
#include "engine/loss.h"
#include "engine/model.h"
#include "util/rng.h"

static device *dev;

static void check_good_spec(const char *text, const char *canonical, int layers, int dense,
                            int input_width, int output_width) {
    model_spec spec;
    ddt_status status = model_spec_parse(text, &spec);
    CHECK_OK(status);
    if (status != DDT_OK) return;
    if (strcmp(spec.text, canonical) != 0)
        fprintf(stderr, "  '%s' -> '%s', expected '%s'\n", text, spec.text, canonical);
    CHECK(strcmp(spec.text, canonical) == 0);
    CHECK(spec.layer_count == layers);
    CHECK(spec.dense_count == dense);
    CHECK(spec.input_width == input_width);
    CHECK(spec.output_width == output_width);
    /* The canonical text parses to the same spec. */
    model_spec again;
    CHECK_OK(model_spec_parse(spec.text, &again));
    CHECK(strcmp(again.text, spec.text) == 0 && again.layer_count == spec.layer_count);
}

static void check_bad_spec(const char *text, const char *message_part) {
    model_spec spec;
    ddt_status status = model_spec_parse(text, &spec);
    CHECK(status == DDT_ERR_USAGE);
    bool mentions = strstr(ddt_error_message(), message_part) != NULL;
    if (!mentions)
        fprintf(stderr, "  '%s': message '%s' lacks '%s'\n", text, ddt_error_message(),
                message_part);
    CHECK(mentions);
}

static void check_specs(void) {
    check_good_spec("784-256-relu-128-relu-10", "784-256-relu-128-relu-10", 5, 3, 784, 10);
    check_good_spec("4-3", "4-3", 1, 1, 4, 3);
    check_good_spec("10-20-gelu-dropout-5-tanh-1-sigmoid", "10-20-gelu-dropout-5-tanh-1-sigmoid", 7,
                    3, 10, 1);
    check_good_spec("8-dropout0.20-16-relu-dropout0.5-2", "8-dropout0.2-16-relu-dropout-2", 5, 2, 8,
                    2);
    check_good_spec("8-16-dropout0-4", "8-16-dropout0-4", 3, 2, 8, 4);
    check_good_spec("8-16-dropout.25-04", "8-16-dropout0.25-4", 3, 2, 8, 4);

    model_spec spec;
    CHECK_OK(model_spec_parse("6-dropout0.3-5-relu-2", &spec));
    CHECK(spec.layers[0].kind == LAYER_DROPOUT && spec.layers[0].inputs == 6);
    CHECK_NEAR(spec.layers[0].dropout_rate, 0.3, 1e-7);
    CHECK(spec.layers[1].kind == LAYER_DENSE && spec.layers[1].inputs == 6 &&
          spec.layers[1].outputs == 5);
    CHECK(spec.layers[2].kind == LAYER_ACTIVATION && spec.layers[2].activation == ACTIVATION_RELU);
    CHECK(spec.layers[2].inputs == 5 && spec.layers[2].outputs == 5);

    check_bad_spec("784-256-relux-10",
                   "--model: 'relux' is not a layer (expected a width or one of relu, gelu, tanh, "
                   "sigmoid, dropout, dropoutP)");
    check_bad_spec("", "empty");
    check_bad_spec("784--10", "empty layer");
    check_bad_spec("784-10-", "empty layer");
    check_bad_spec("relu-10", "must start with the input width, not 'relu'");
    check_bad_spec("0-10", "'0' must be at least 1");
    check_bad_spec("784-0", "'0' must be at least 1");
    check_bad_spec("784-99999999999999999999", "too large");
    check_bad_spec("784", "no dense layer");
    check_bad_spec("784-relu", "no dense layer");
    check_bad_spec("784-10-dropout", "ends with dropout");
    check_bad_spec("784-100-dropout1-10", "'dropout1': the dropout rate must be in [0, 1)");
    check_bad_spec("784-100-dropout1.5-10", "must be in [0, 1)");
    check_bad_spec("784-100-dropoutx-10", "'dropoutx' is not a layer");
    check_bad_spec("784-100-dropoutnan-10", "'dropoutnan' is not a layer");
    check_bad_spec("784-10.5", "'10.5' is not a layer");
    char many[MODEL_SPEC_MAX_TEXT] = "4";
    for (int i = 0; i < MODEL_MAX_LAYERS + 1; i++)
        strcat(many, "-4");
    check_bad_spec(many, "too many layers (at most 64)");
    char long_text[MODEL_SPEC_MAX_TEXT + 10];
    memset(long_text, '1', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    check_bad_spec(long_text, "too long");
}

static void check_layout(void) {
    model_spec spec;
    CHECK_OK(model_spec_parse("784-256-relu-128-relu-10", &spec));
    CHECK(model_spec_parameter_count(&spec) == 235146);
    dense_layout l0 = model_spec_dense_layout(&spec, 0);
    dense_layout l1 = model_spec_dense_layout(&spec, 1);
    dense_layout l2 = model_spec_dense_layout(&spec, 2);
    CHECK(l0.inputs == 784 && l0.outputs == 256 && l0.weight_offset == 0);
    CHECK(l0.bias_offset == 784 * 256);
    CHECK(l1.inputs == 256 && l1.outputs == 128 && l1.weight_offset == 784 * 256 + 256);
    CHECK(l1.bias_offset == l1.weight_offset + 256 * 128);
    CHECK(l2.weight_offset == l1.bias_offset + 128 && l2.outputs == 10);
    CHECK(l2.bias_offset + 10 == 235146);
}

static ddt_status failing_memory_alloc(device *failing, size_t bytes, void **out) {
    (void)failing;
    *out = NULL;
    return ddt_error(DDT_ERR_MEMORY, "out of device memory: cannot allocate %zu bytes", bytes);
}

/* A backend whose allocations fail: the allocator reports what and how much, tracks nothing. */
static void check_allocation_failure(void) {
    device_ops ops = *dev->ops;
    ops.memory_alloc = failing_memory_alloc;
    device failing = *dev;
    failing.ops = &ops;
    allocator *alloc;
    CHECK_OK(allocator_init(&failing, &alloc));
    void *block = &failing;
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_STAGING, 3 << 20, &block) == DDT_ERR_MEMORY);
    CHECK(block == NULL);
    CHECK(strstr(ddt_error_message(), "3.0 MiB of input staging") != NULL);
    CHECK(strstr(ddt_error_message(), "out of device memory") != NULL);
    CHECK(allocator_get_stats(alloc).bytes_in_use == 0);
    CHECK(allocator_get_stats(alloc).allocation_count == 0);
    model_spec spec;
    CHECK_OK(model_spec_parse("4-3", &spec));
    model *m = (model *)&failing;
    CHECK(model_init(&spec, alloc, 2, &m) == DDT_ERR_MEMORY);
    CHECK(m == NULL);
    allocator_destroy(alloc);
}

static void check_init_and_allocator(void) {
    allocator *alloc;
    CHECK_OK(allocator_init(dev, &alloc));
    CHECK(allocator_device(alloc) == dev);
    model_spec spec;
    CHECK_OK(model_spec_parse("784-256-relu-128-relu-10", &spec));
    const int rows = 128;
    model *a = NULL, *b = NULL;
    CHECK_OK(model_init(&spec, alloc, rows, &a));
    CHECK_OK(model_init(&spec, alloc, rows, &b));
    if (!a || !b) return;
    CHECK(model_parameter_count(a) == 235146);
    CHECK(model_max_rows(a) == rows);
    CHECK(strcmp(model_get_spec(a)->text, spec.text) == 0);

    /* Allocator: per component, rounded to 256 bytes, the activation plan is exact. */
    size_t parameter_bytes = (235146 * 4 + 255) / 256 * 256;
    size_t activation_bytes = (model_spec_activation_floats(&spec, rows) * 4 + 255) / 256 * 256;
    allocator_stats stats = allocator_get_stats(alloc);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_PARAMETERS] == 2 * parameter_bytes);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_GRADIENTS] == 2 * parameter_bytes);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_ACTIVATIONS] == 2 * activation_bytes);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_OPTIMIZER] == 0);
    CHECK(stats.bytes_in_use == 4 * parameter_bytes + 2 * activation_bytes);
    CHECK(stats.peak_bytes == stats.bytes_in_use);
    CHECK(stats.allocation_count == 6);
    /* Activations hold at least every layer's output plus the output gradient. */
    CHECK(model_spec_activation_floats(&spec, rows) >=
          (size_t)rows * (256 + 256 + 128 + 128 + 10 + 10));

    /* Same seed, same parameters; different seed, different parameters; biases zero. */
    size_t count = model_parameter_count(a);
    CHECK_OK(model_init_parameters(a, 1234));
    CHECK_OK(model_init_parameters(b, 1234));
    CHECK(memcmp(model_parameters(a), model_parameters(b), count * sizeof(float)) == 0);
    CHECK_OK(model_init_parameters(b, 1235));
    CHECK(memcmp(model_parameters(a), model_parameters(b), count * sizeof(float)) != 0);
    const float *p = model_parameters(a);
    dense_layout l0 = model_spec_dense_layout(&spec, 0);
    dense_layout l2 = model_spec_dense_layout(&spec, 2);
    bool biases_zero = true;
    for (int i = 0; i < 256; i++)
        biases_zero &= p[l0.bias_offset + i] == 0.0f;
    CHECK(biases_zero);

    /* He-normal on layer 0 (followed by relu): std sqrt(2/784), mean 0. */
    double sum = 0.0, squares = 0.0;
    size_t n = (size_t)l0.inputs * l0.outputs;
    for (size_t i = 0; i < n; i++) {
        sum += p[i];
        squares += (double)p[i] * p[i];
    }
    double mean = sum / n, std = sqrt(squares / n - mean * mean);
    CHECK(fabs(mean) < 0.002);
    CHECK(fabs(std / sqrt(2.0 / 784) - 1.0) < 0.01);
    /* Xavier-uniform on the last layer: values within sqrt(6/(128+10)), std limit/sqrt(3). */
    double limit = sqrt(6.0 / (128 + 10));
    double max_abs = 0.0;
    squares = 0.0;
    n = (size_t)l2.inputs * l2.outputs;
    for (size_t i = 0; i < n; i++) {
        double v = p[l2.weight_offset + i];
        max_abs = fmax(max_abs, fabs(v));
        squares += v * v;
    }
    CHECK(max_abs <= limit);
    CHECK(max_abs > 0.9 * limit);
    CHECK(fabs(sqrt(squares / n) / (limit / sqrt(3.0)) - 1.0) < 0.1);

    /* Init of the same layer does not depend on the rest of the model. */
    model_spec other;
    CHECK_OK(model_spec_parse("784-256-relu-64", &other));
    model *c = NULL;
    CHECK_OK(model_init(&other, alloc, 4, &c));
    if (c) {
        CHECK_OK(model_init_parameters(c, 1234));
        CHECK(memcmp(model_parameters(c), p, 784 * 256 * sizeof(float)) == 0);
        model_free(c);
    }

    /* Freeing returns everything; the peak stays. */
    size_t peak = allocator_get_stats(alloc).peak_bytes;
    model_free(b);
    stats = allocator_get_stats(alloc);
    CHECK(stats.bytes_in_use == 2 * parameter_bytes + activation_bytes);
    CHECK(stats.peak_bytes == peak);
    CHECK(stats.allocation_count == 3);

    /* Zero-filled, rounded, NULL-tolerant; destroy frees what is left (ASan would tell). */
    void *block = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 1000, &block));
    CHECK(allocator_get_stats(alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE] == 1024);
    bool zero = true;
    for (int i = 0; i < 1000; i++)
        zero &= ((unsigned char *)block)[i] == 0;
    CHECK(zero);
    allocator_free(alloc, block);
    allocator_free(alloc, NULL);
    CHECK(allocator_get_stats(alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE] == 0);
    CHECK(strcmp(memory_component_name(MEMORY_COMPONENT_ACTIVATIONS), "activations") == 0);
    check_allocation_failure();
    allocator_destroy(alloc); /* still holds model a's buffers */
    free(a);                  /* model_free would hand them back to a dead allocator */
    allocator_destroy(NULL);
}

static void fill_inputs(float *x, int rows, int width, uint64_t seed) {
    for (int i = 0; i < rows * width; i++)
        x[i] = 2.0f * rng_uniform(rng_hash4(seed, 300, 0, i)) - 1.0f;
}

/* Forward of a batch equals forward of each row alone, evaluation and training. */
static void check_batch_independence(void) {
    allocator *alloc;
    CHECK_OK(allocator_init(dev, &alloc));
    model_spec spec;
    CHECK_OK(model_spec_parse("20-64-relu-dropout0.3-32-gelu-16-tanh-8-sigmoid-5", &spec));
    const int rows = 9;
    model *m = NULL;
    CHECK_OK(model_init(&spec, alloc, rows, &m));
    if (!m) return;
    CHECK_OK(model_init_parameters(m, 99));
    float inputs[9 * 20];
    fill_inputs(inputs, rows, 20, 5);
    int64_t row_ids[9] = {5, 900, 13, 77, 1, 0, 123456789, 42, 8};
    for (int training = 0; training <= 1; training++) {
        model_pass pass = {.training = training, .step = 3, .seed = 8, .row_ids = row_ids};
        const float *outputs;
        CHECK_OK(model_forward(m, inputs, rows, &pass, &outputs));
        float batch[9 * 5];
        memcpy(batch, outputs, sizeof batch);
        double worst = 0.0;
        for (int r = 0; r < rows; r++) {
            model_pass single = pass;
            single.row_ids = &row_ids[r];
            CHECK_OK(model_forward(m, inputs + r * 20, 1, &single, &outputs));
            for (int c = 0; c < 5; c++)
                worst = fmax(worst, fabs(outputs[c] - batch[r * 5 + c]));
        }
        CHECK(worst <= 1e-5);
    }
    /* Rows beyond the capacity are refused; backward must follow a forward of the same rows. */
    const float *outputs;
    model_pass eval = {0};
    CHECK(model_forward(m, inputs, rows + 1, &eval, &outputs) == DDT_ERR_INTERNAL);
    CHECK_OK(model_forward(m, inputs, 2, &eval, &outputs));
    CHECK(model_backward(m, 3, &eval, NULL, NULL) == DDT_ERR_INTERNAL);
    CHECK_OK(model_backward(m, 2, &eval, NULL, NULL));
    /* An empty micro-batch is a no-op. */
    model_zero_gradients(m);
    CHECK_OK(model_forward(m, inputs, 0, &eval, &outputs));
    CHECK_OK(model_backward(m, 0, &eval, NULL, NULL));
    bool zero = true;
    for (size_t i = 0; i < model_parameter_count(m); i++)
        zero &= model_gradients(m)[i] == 0.0f;
    CHECK(zero);
    model_free(m);
    CHECK(allocator_get_stats(alloc).bytes_in_use == 0);
    allocator_destroy(alloc);
}

/* Dropout: the mask of a row follows its global id wherever it sits in the batch. */
static void check_dropout(void) {
    allocator *alloc;
    CHECK_OK(allocator_init(dev, &alloc));
    model_spec spec;
    CHECK_OK(model_spec_parse("6-dropout0.5-6", &spec));
    model *m = NULL;
    CHECK_OK(model_init(&spec, alloc, 4, &m));
    if (!m) return;
    /* Identity weights so the output shows the mask directly. */
    float *w = model_parameters(m);
    for (int i = 0; i < 6; i++)
        w[i * 6 + i] = 1.0f;
    float inputs[4 * 6];
    for (int i = 0; i < 4 * 6; i++)
        inputs[i] = 1.0f;
    int64_t ids_a[4] = {10, 20, 30, 40};
    int64_t ids_b[4] = {30, 99, 10, 20};
    model_pass pass = {.training = true, .step = 5, .seed = 77, .row_ids = ids_a};
    const float *outputs;
    float first[4 * 6], second[4 * 6];
    CHECK_OK(model_forward(m, inputs, 4, &pass, &outputs));
    memcpy(first, outputs, sizeof first);
    pass.row_ids = ids_b;
    CHECK_OK(model_forward(m, inputs, 4, &pass, &outputs));
    memcpy(second, outputs, sizeof second);
    CHECK(memcmp(first + 2 * 6, second + 0 * 6, 6 * sizeof(float)) == 0); /* row 30 */
    CHECK(memcmp(first + 0 * 6, second + 2 * 6, 6 * sizeof(float)) == 0); /* row 10 */
    CHECK(memcmp(first + 1 * 6, second + 3 * 6, 6 * sizeof(float)) == 0); /* row 20 */
    /* Values are 0 or 1/(1-rate); the masks of different rows differ. */
    bool values_ok = true;
    for (int i = 0; i < 4 * 6; i++)
        values_ok &= first[i] == 0.0f || first[i] == 2.0f;
    CHECK(values_ok);
    CHECK(memcmp(first, first + 6, 6 * sizeof(float)) != 0 ||
          memcmp(first + 6, first + 12, 6 * sizeof(float)) != 0);
    /* A different step gives a different mask; evaluation is the identity. */
    pass.row_ids = ids_a;
    pass.step = 6;
    CHECK_OK(model_forward(m, inputs, 4, &pass, &outputs));
    CHECK(memcmp(first, outputs, sizeof first) != 0);
    pass.training = false;
    CHECK_OK(model_forward(m, inputs, 4, &pass, &outputs));
    bool identity = true;
    for (int i = 0; i < 4 * 6; i++)
        identity &= outputs[i] == 1.0f;
    CHECK(identity);

    /* Over many units, the dropped fraction is close to the rate (device op directly). */
    enum { ROWS = 64, COLS = 256 };
    static float x[ROWS * COLS], y[ROWS * COLS];
    int64_t ids[ROWS];
    for (int r = 0; r < ROWS; r++)
        ids[r] = 1000 + r;
    for (int i = 0; i < ROWS * COLS; i++)
        x[i] = 1.0f;
    dropout_key key = {.seed = 1, .step = 2, .layer = 3};
    device_dropout_forward(dev, ROWS, COLS, 0.2f, key, ids, x, y);
    int dropped = 0;
    for (int i = 0; i < ROWS * COLS; i++)
        dropped += y[i] == 0.0f;
    CHECK(fabs((double)dropped / (ROWS * COLS) - 0.2) < 0.01);
    device_dropout_forward(dev, ROWS, COLS, 0.0f, key, ids, x, y);
    CHECK(memcmp(x, y, sizeof x) == 0);
    model_free(m);
    allocator_destroy(alloc);
}

static void check_device_and_losses(void) {
    CHECK(device_kind_available(DEVICE_KIND_CPU));
    CHECK(strcmp(device_kind_name(DEVICE_KIND_CPU), "cpu") == 0);
    CHECK(strcmp(device_kind_name(DEVICE_KIND_CUDA), "cuda") == 0);
    CHECK(strncmp(dev->description, "cpu (OpenBLAS ", 14) == 0);
    printf("device: %s\n", dev->description);
    /* Asking for a GPU that this build or machine lacks is a clear error, never a crash. */
    device *cuda = (device *)dev;
    if (!device_kind_available(DEVICE_KIND_CUDA)) {
        CHECK(device_open(DEVICE_KIND_CUDA, 0, &cuda) == DDT_ERR_USAGE);
        CHECK(cuda == NULL);
        CHECK(strstr(ddt_error_message(), "without CUDA support") != NULL);
    } else if (device_count(DEVICE_KIND_CUDA) == 0) {
        CHECK(device_open(DEVICE_KIND_CUDA, 0, &cuda) != DDT_OK);
        CHECK(cuda == NULL);
        CHECK(*ddt_error_message() != '\0');
        printf("cuda: %s\n", ddt_error_message());
    }

    loss_kind kind;
    CHECK_OK(loss_kind_parse("softmax-ce", &kind));
    CHECK(kind == LOSS_SOFTMAX_CROSS_ENTROPY);
    CHECK_OK(loss_kind_parse("bce", &kind));
    CHECK(kind == LOSS_BINARY_CROSS_ENTROPY);
    CHECK_OK(loss_kind_parse("mse", &kind));
    CHECK(kind == LOSS_MEAN_SQUARED_ERROR);
    CHECK(loss_kind_parse("ce", &kind) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "'ce'") != NULL);
    CHECK(strcmp(loss_kind_name(LOSS_MEAN_SQUARED_ERROR), "mse") == 0);

    CHECK_OK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, true, 10, 0));
    CHECK_OK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, false, 0, 10));
    CHECK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 1, true, 2, 0) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "at least 2 outputs") != NULL);
    CHECK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, true, 7, 0) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "7 classes but the model has 10 outputs") != NULL);
    CHECK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, false, 0, 3) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "3 wide but the model has 10 outputs") != NULL);
    CHECK_OK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 1, true, 2, 0));
    CHECK_OK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 4, false, 0, 4));
    CHECK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 2, true, 2, 0) == DDT_ERR_USAGE);
    CHECK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 1, true, 3, 0) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "3") != NULL);
    CHECK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 4, false, 0, 5) == DDT_ERR_USAGE);
    CHECK_OK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 3, false, 0, 3));
    CHECK_OK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 10, true, 10, 0));
    CHECK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 3, false, 0, 2) == DDT_ERR_USAGE);
    CHECK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 3, true, 10, 0) == DDT_ERR_USAGE);
}

int main(void) {
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    if (!dev) return check_finish();
    check_specs();
    check_layout();
    check_init_and_allocator();
    check_batch_independence();
    check_dropout();
    check_device_and_losses();
    device_close(dev);
    return check_finish();
}
