/* test_engine_gradcheck.c - checks the engine's gradients against finite differences.
 *
 * For small random models covering every layer kind (dense, every activation, dropout with a
 * fixed key, conv with stride, padding and no bias, max and average pooling, global average
 * pooling, flatten, batch and layer normalisation, residual blocks with and without a
 * shortcut, repetition, token embeddings, causal attention, the tied LM head, whole gpt(...)
 * decoders) and every loss (softmax-ce with class ids and soft targets, bce with targets and
 * 0/1 ids, mse with targets and ids), the analytic parameter gradients from model_backward()
 * must match central differences of the loss. Each layer sits after a layer with parameters,
 * so its input gradient is checked too. Also checks that gradients accumulate over backward
 * calls, that on_ready reports finished regions from the end of the buffer down to 0, that
 * the loss `scale` normalises both loss and gradients, and that --recompute gives bitwise the
 * same gradients with less activation memory.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/loss.h"
#include "engine/model.h"
#include "util/rng.h"

#define ROWS 6
#define MAX_CALLS MODEL_MAX_NODES

static device *dev;
static allocator *alloc;

typedef struct problem {
    const char *spec;
    loss_kind loss;
    bool class_ids;
} problem;

typedef struct data {
    float *inputs;    /* ROWS x input_width features, or NULL */
    int32_t *tokens;  /* ROWS x context ids, or NULL */
    int32_t *labels;  /* one per prediction */
    float *targets;   /* predictions x output_width */
    int64_t row_ids[ROWS];
    int predictions;  /* ROWS x positions */
} data;

static void free_data(data *d) {
    free(d->inputs);
    free(d->tokens);
    free(d->labels);
    free(d->targets);
}

/* Records each on_ready call and a copy of the gradients at that moment. */
typedef struct ready_log {
    int calls;
    size_t ready_from[MAX_CALLS];
    float *snapshot[MAX_CALLS];
    const float *gradients;
    size_t count;
} ready_log;

static ddt_status record_ready(void *context, size_t ready_from) {
    ready_log *log = context;
    if (log->calls >= MAX_CALLS) return ddt_error(DDT_ERR_INTERNAL, "too many on_ready calls");
    log->ready_from[log->calls] = ready_from;
    log->snapshot[log->calls] = malloc(log->count * sizeof(float));
    memcpy(log->snapshot[log->calls], log->gradients, log->count * sizeof(float));
    log->calls++;
    return DDT_OK;
}

static void make_data(const model_spec *spec, loss_kind loss, bool class_ids, uint64_t seed,
                      data *d) {
    int in = spec->input_width, out = spec->output_width;
    memset(d, 0, sizeof *d);
    d->predictions = ROWS * spec->positions;
    if (spec->input_kind == MODEL_INPUT_TOKENS) {
        d->tokens = malloc((size_t)ROWS * in * sizeof *d->tokens);
        for (int i = 0; i < ROWS * in; i++)
            d->tokens[i] = (int32_t)(rng_hash4(seed, 103, 0, i) % (uint64_t)spec->vocab);
    } else {
        d->inputs = malloc((size_t)ROWS * in * sizeof *d->inputs);
        for (int i = 0; i < ROWS * in; i++)
            d->inputs[i] = 2.0f * rng_uniform(rng_hash4(seed, 100, 0, i)) - 1.0f;
    }
    d->labels = malloc((size_t)d->predictions * sizeof *d->labels);
    d->targets = malloc((size_t)d->predictions * out * sizeof *d->targets);
    for (int r = 0; r < ROWS; r++)
        d->row_ids[r] = 1000 + 37 * r;
    for (int r = 0; r < d->predictions; r++) {
        int classes = out == 1 ? 2 : out;
        d->labels[r] = (int32_t)(rng_hash4(seed, 101, r, 0) % (uint64_t)classes);
        float sum = 0.0f;
        for (int c = 0; c < out; c++) {
            float u = rng_uniform(rng_hash4(seed, 102, r, c));
            /* Soft targets for softmax-ce are distributions; bce targets probabilities. */
            d->targets[r * out + c] = loss == LOSS_MEAN_SQUARED_ERROR ? 2.0f * u - 1.0f : u;
            sum += u;
        }
        if (loss == LOSS_SOFTMAX_CROSS_ENTROPY)
            for (int c = 0; c < out; c++)
                d->targets[r * out + c] /= sum;
    }
    (void)class_ids;
}

static model_pass training_pass(const data *d) {
    model_pass pass = {.training = true, .step = 17, .seed = 4242, .row_ids = d->row_ids};
    return pass;
}

/* Loss of the model on the data, scaled by `scale`; optionally writes dlogits. */
static double loss_of(model *m, const problem *p, const data *d, float scale, bool gradient) {
    model_pass pass = training_pass(d);
    const float *logits = NULL;
    CHECK_OK(model_forward(m, (model_input){.features = d->inputs, .tokens = d->tokens}, ROWS,
                           &pass, &logits));
    float sum = 0.0f;
    loss_apply(dev, p->loss, d->predictions, model_get_spec(m)->output_width, logits,
               p->class_ids ? d->labels : NULL, p->class_ids ? NULL : d->targets, scale, &sum,
               gradient ? model_output_gradient(m) : NULL);
    return sum;
}

static void backward(model *m, const data *d, ready_log *log) {
    model_pass pass = training_pass(d);
    CHECK_OK(model_backward(m, ROWS, &pass, log ? record_ready : NULL, log));
}

/* The central difference's error: truncation, which the relative term covers (h^2/6 times
 * the third derivative, h = 2e-3), and the float32 rounding of the two losses it subtracts,
 * divided by 2h. That rounding depends on the order of every sum of the forward pass, so on
 * the BLAS kernel and the CPU: it is measured in the run (`rounding`), not assumed. */
static bool gradients_match(double analytic, double numeric, double rounding) {
    double magnitude = fmax(fabs(analytic), fabs(numeric));
    return fabs(analytic - numeric) <= 5e-3 * magnitude + rounding;
}

static void check_recompute(const model_spec *spec, const problem *p, const data *d,
                            uint64_t seed, const float *parameters, const float *expected);

static void check_problem(const problem *p, uint64_t seed) {
    static model_spec spec;
    CHECK_OK(model_spec_parse(p->spec, &spec));
    model *m = NULL;
    CHECK_OK(model_init(&spec, alloc, ROWS, (model_options){0}, &m));
    if (!m) return;
    CHECK_OK(model_init_parameters(m, seed));
    data d;
    make_data(&spec, p->loss, p->class_ids, seed, &d);
    size_t count = model_parameter_count(m);
    float *params = model_parameters(m);
    /* GPT's embeddings start at std 0.02, which layer normalisation divides by: a finite
     * difference step would be a large relative change, so token models are checked at
     * parameters of order 1 instead. */
    if (spec.input_kind == MODEL_INPUT_TOKENS)
        for (size_t j = 0; j < count; j++)
            params[j] = rng_uniform(rng_hash4(seed, 104, 0, j)) - 0.5f;
    float *grads = model_gradients(m);
    const float scale = 1.0f / (float)d.predictions;

    /* Analytic gradients, with on_ready logged. */
    model_zero_gradients(m);
    ready_log log = {.gradients = grads, .count = count};
    loss_of(m, p, &d, scale, true);
    backward(m, &d, &log);
    float *analytic = malloc(count * sizeof(float));
    memcpy(analytic, grads, count * sizeof(float));

    /* The rounding noise of the loss, measured here: move each parameter by 1e-5, so little
     * that the first-order change (analytic x 1e-5) predicts the loss to ~1e-10, and see how
     * far the float32 loss lands from that prediction: the difference of two roundings of the
     * loss at nearby points, as in the central difference (whose two points are 2h apart).
     * The numeric derivative's rounding is that over 2h; the bar takes four times the
     * largest (nearby points share part of their rounding, so the largest moved difference
     * is below what two points 2h apart can differ by: measured here up to 0.45 of the bar
     * under OpenBLAS's Zen, Prescott, SandyBridge and Nehalem kernels). */
    const float step = 2e-3f;
    double base = loss_of(m, p, &d, scale, false), noise = 0.0;
    for (size_t j = 0; j < count; j++) {
        float saved = params[j];
        params[j] = saved + 1e-5f;
        double moved = (double)params[j] - saved;
        double nudged = loss_of(m, p, &d, scale, false);
        params[j] = saved;
        noise = fmax(noise, fabs(nudged - base - analytic[j] * moved));
    }
    double rounding = 4.0 * noise / (2.0 * step);

    /* Central differences over every parameter. */
    int mismatches = 0;
    double worst = 0.0;
    for (size_t j = 0; j < count; j++) {
        float saved = params[j];
        params[j] = saved + step;
        double plus = loss_of(m, p, &d, scale, false);
        params[j] = saved - step;
        double minus = loss_of(m, p, &d, scale, false);
        params[j] = saved;
        double numeric = (plus - minus) / (2.0 * step);
        if (!gradients_match(analytic[j], numeric, rounding)) {
            if (mismatches < 5)
                fprintf(stderr, "  %s (%s%s): parameter %zu analytic %.6g numeric %.6g\n", p->spec,
                        loss_kind_name(p->loss), p->class_ids ? ", ids" : ", targets", j,
                        analytic[j], numeric);
            mismatches++;
        }
        worst = fmax(worst, fabs(analytic[j] - numeric));
    }
    CHECK(mismatches == 0);
    /* Something must actually flow: an all-zero gradient would pass trivially. */
    double norm = 0.0;
    for (size_t j = 0; j < count; j++)
        norm += fabs(analytic[j]);
    CHECK(norm > 1e-3);

    /* on_ready: once per node with parameters, at model_spec_ready_points() from the last
     * node down to 0, and the region it announces is already final. */
    size_t points[MODEL_MAX_NODES];
    int point_count = model_spec_ready_points(&spec, points, MODEL_MAX_NODES);
    CHECK(log.calls == point_count);
    for (int k = 0; k < log.calls && k < point_count; k++) {
        CHECK(log.ready_from[k] == points[point_count - 1 - k]);
        if (k > 0) CHECK(log.ready_from[k] < log.ready_from[k - 1]);
        size_t from = log.ready_from[k];
        CHECK(memcmp(log.snapshot[k] + from, analytic + from, (count - from) * sizeof(float)) == 0);
        free(log.snapshot[k]);
    }
    CHECK(log.calls > 0 && log.ready_from[log.calls - 1] == 0);

    /* A second forward/backward without zeroing doubles the gradients. */
    loss_of(m, p, &d, scale, true);
    backward(m, &d, NULL);
    int not_doubled = 0;
    for (size_t j = 0; j < count; j++)
        if (fabsf(grads[j] - 2.0f * analytic[j]) > 1e-5f * fmaxf(1.0f, fabsf(analytic[j])))
            not_doubled++;
    CHECK(not_doubled == 0);

    /* scale: loss and gradients with scale 1 are ROWS times those with scale 1/ROWS. */
    model_zero_gradients(m);
    double loss_sum = loss_of(m, p, &d, 1.0f, true);
    double loss_mean = loss_of(m, p, &d, scale, false);
    CHECK_NEAR(loss_sum, d.predictions * loss_mean, 1e-5);
    loss_of(m, p, &d, 1.0f, true);
    backward(m, &d, NULL);
    int not_scaled = 0;
    for (size_t j = 0; j < count; j++)
        if (fabsf(grads[j] - d.predictions * analytic[j]) > 1e-4f * fmaxf(1.0f, fabsf(grads[j])))
            not_scaled++;
    CHECK(not_scaled == 0);
    if (spec.block_count > 0) check_recompute(&spec, p, &d, seed, params, analytic);

    printf("%-45s %-10s %-7s params %4zu  max |analytic - numeric| %.2e (rounding %.2e)\n", p->spec,
           loss_kind_name(p->loss), p->class_ids ? "ids" : "targets", count, worst, rounding);
    free(analytic);
    free_data(&d);
    model_free(m);
}

/* --recompute: the same gradients, bit for bit, from less activation memory. */
static void check_recompute(const model_spec *spec, const problem *p, const data *d,
                            uint64_t seed, const float *parameters, const float *expected) {
    model_options recompute = {.recompute = true};
    model_plan with = model_plan_for(spec, ROWS, recompute);
    model_plan without = model_plan_for(spec, ROWS, (model_options){0});
    CHECK(with.stored_floats < without.stored_floats);
    model *m = NULL;
    CHECK_OK(model_init(spec, alloc, ROWS, recompute, &m));
    if (!m) return;
    CHECK_OK(model_init_parameters(m, seed));
    memcpy(model_parameters(m), parameters, model_parameter_count(m) * sizeof(float));
    model_zero_gradients(m);
    loss_of(m, p, d, 1.0f / (float)d->predictions, true);
    backward(m, d, NULL);
    CHECK(memcmp(model_gradients(m), expected, model_parameter_count(m) * sizeof(float)) == 0);
    printf("%-45s recompute: bitwise equal, stored activations %zu -> %zu floats\n", p->spec,
           without.stored_floats, with.stored_floats);
    model_free(m);
}

/* Loss values on known inputs, stability on huge logits, and count_correct. */
static void check_loss_values(void) {
    float zeros[2 * 4] = {0};
    int32_t labels[2] = {1, 3};
    float sum = 0.0f;
    loss_apply(dev, LOSS_SOFTMAX_CROSS_ENTROPY, 2, 4, zeros, labels, NULL, 0.5f, &sum, NULL);
    CHECK_NEAR(sum, log(4.0), 1e-6);
    sum = 0.0f;
    loss_apply(dev, LOSS_BINARY_CROSS_ENTROPY, 2, 4, zeros, NULL, zeros, 1.0f, &sum, NULL);
    CHECK_NEAR(sum, 8 * log(2.0), 1e-6);
    float ones[2 * 4] = {1, 1, 1, 1, 1, 1, 1, 1};
    sum = 0.0f;
    loss_apply(dev, LOSS_MEAN_SQUARED_ERROR, 2, 4, ones, NULL, zeros, 1.0f, &sum, NULL);
    CHECK_NEAR(sum, 2.0, 1e-6); /* mean over 4 columns of 1, summed over 2 rows */
    sum = 0.0f;
    loss_apply(dev, LOSS_MEAN_SQUARED_ERROR, 2, 4, ones, labels, NULL, 1.0f, &sum, NULL);
    CHECK_NEAR(sum, 2 * 0.75, 1e-6); /* one-hot: three 1s and one 0 squared error per row */

    /* Huge logits must give finite losses and gradients. */
    float huge[2 * 3] = {1000.0f, -1000.0f, 0.0f, -800.0f, 900.0f, 5.0f};
    int32_t huge_labels[2] = {1, 1};
    float dlogits[6];
    sum = 0.0f;
    loss_apply(dev, LOSS_SOFTMAX_CROSS_ENTROPY, 2, 3, huge, huge_labels, NULL, 1.0f, &sum, dlogits);
    CHECK_NEAR(sum, 2000.0, 1e-4);
    bool finite = false;
    CHECK_OK(device_check_finite(dev, 6, dlogits, &finite));
    CHECK(finite);
    float huge_binary[2] = {1000.0f, -1000.0f};
    int32_t binary_labels[2] = {0, 0};
    sum = 0.0f;
    loss_apply(dev, LOSS_BINARY_CROSS_ENTROPY, 2, 1, huge_binary, binary_labels, NULL, 1.0f, &sum,
               dlogits);
    CHECK_NEAR(sum, 1000.0, 1e-4);
    CHECK_NEAR(dlogits[0], 1.0, 1e-6);
    CHECK_NEAR(dlogits[1], 0.0, 1e-6);

    float logits[3 * 3] = {0.1f, 0.9f, 0.3f, 2.0f, 2.0f, 1.0f, -1.0f, -2.0f, -0.5f};
    int32_t truth[3] = {1, 1, 2};
    float correct = 0.0f;
    device_count_correct(dev, 3, 3, logits, truth, &correct);
    CHECK(correct == 2.0f); /* row 1 ties: argmax picks the first, 0 */
    float single[3] = {0.5f, -0.5f, 0.0f};
    int32_t single_truth[3] = {1, 0, 1};
    correct = 0.0f;
    device_count_correct(dev, 3, 1, single, single_truth, &correct);
    CHECK(correct == 2.0f);

    /* check_finite spots NaN and Inf. */
    float values[5] = {1, 2, 3, 4, 5};
    CHECK_OK(device_check_finite(dev, 5, values, &finite));
    CHECK(finite);
    values[3] = INFINITY;
    CHECK_OK(device_check_finite(dev, 5, values, &finite));
    CHECK(!finite);
    values[3] = NAN;
    CHECK_OK(device_check_finite(dev, 5, values, &finite));
    CHECK(!finite);

    /* sum_of_squares (the gradient norm) adds squares in double: a million squares of 1e-2
     * added to 1e4 squared are kept (a float sum would drop every one), and 1e20 squared does
     * not overflow. */
    double squares = -1;
    float three_four[2] = {3.0f, -4.0f};
    CHECK_OK(device_sum_of_squares(dev, 2, three_four, &squares));
    CHECK(squares == 25.0);
    CHECK_OK(device_sum_of_squares(dev, 0, three_four, &squares));
    CHECK(squares == 0.0);
    size_t many = 1000001;
    float *mixed = malloc(many * sizeof(float));
    for (size_t i = 0; i < many; i++)
        mixed[i] = i == 0 ? 1e4f : 1e-2f;
    CHECK_OK(device_sum_of_squares(dev, many, mixed, &squares));
    CHECK_NEAR(squares, 1e8 + 1e6 * (double)1e-2f * (double)1e-2f, 1e-10);
    mixed[7] = 1e20f;
    CHECK_OK(device_sum_of_squares(dev, many, mixed, &squares));
    CHECK(isfinite(squares) && squares > 9.9e39);
    mixed[7] = NAN;
    CHECK_OK(device_sum_of_squares(dev, many, mixed, &squares));
    CHECK(isnan(squares));
    free(mixed);
}

/* Activation values against known numbers (exact GELU, stable sigmoid). */
static void check_activation_values(void) {
    float x[4] = {1.0f, -1.0f, 100.0f, -100.0f};
    float y[4];
    device_activation_forward(dev, ACTIVATION_GELU, 4, x, y);
    CHECK_NEAR(y[0], 0.8413447460685429, 1e-6);
    CHECK_NEAR(y[1], -0.15865525393145707, 1e-6);
    CHECK_NEAR(y[2], 100.0, 1e-6);
    CHECK_NEAR(y[3], 0.0, 1e-6);
    device_activation_forward(dev, ACTIVATION_SIGMOID, 4, x, y);
    CHECK_NEAR(y[0], 0.7310585786300049, 1e-6);
    CHECK_NEAR(y[3], 0.0, 1e-6);
    CHECK(isfinite(y[2]) && isfinite(y[3]));
    device_activation_forward(dev, ACTIVATION_RELU, 4, x, y);
    CHECK(y[0] == 1.0f && y[1] == 0.0f && y[2] == 100.0f && y[3] == 0.0f);
    /* GPT-2's tanh form: torch.nn.functional.gelu(x, approximate="tanh") */
    device_activation_forward(dev, ACTIVATION_GELU_TANH, 4, x, y);
    CHECK_NEAR(y[0], 0.8411920070648193, 1e-6);
    CHECK_NEAR(y[1], -0.15880800783634186, 1e-6);
    CHECK_NEAR(y[2], 100.0, 1e-6);
    CHECK_NEAR(y[3], 0.0, 1e-6);
}

int main(void) {
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    CHECK_OK(allocator_open(dev, &alloc));

    static const problem layers[] = {
        {"5-7-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-7-relu-4-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-7-gelu-4-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-7-tanh-4-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-7-sigmoid-4-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-8-dropout0.3-6-relu-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-dropout0.25-6-gelu-dropout0.5-4-tanh-3-sigmoid", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-7-gelu_tanh-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"2x6x6-conv(3,k3,p1)-gelu-conv(4,k3,s2,p1)-tanh-flatten-5", LOSS_SOFTMAX_CROSS_ENTROPY,
         true},
        /* max pooling after bn: a step could move a normalised value past its window's
         * maximum, a kink finite differences cannot see through; so bn and max pooling are
         * checked apart */
        {"2x6x6-conv(3,k3,nobias)-bn-tanh-avgpool(2)-flatten-4", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"2x6x6-conv(3,k3)-tanh-conv(3,k1)-maxpool(2)-flatten-4", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"2x7x7-conv(3,k3,p1)-avgpool(3,s2,p1)-conv(4,k2)-sigmoid-gap-3",
         LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"2x5x5-conv(3,k3,p1)-res(conv(3,k3,p1)-bn-tanh-conv(3,k3,p1))-tanh"
         "-res(conv(4,k3,s2,p1)|conv(4,k1,s2))-gap-3",
         LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"6-8-bn-tanh-ln-4-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"6-4-2*(res(ln-5-gelu_tanh-dropout0.2-4))-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"tokens(5,7)-embed(8)-res(ln-attn(2))-res(ln-16-gelu_tanh-8-dropout0.2)-ln-lmhead",
         LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"gpt(layers=2,heads=2,width=8,context=4,vocab=6)", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"gpt(layers=2,heads=4,width=8,context=5,vocab=9,dropout=0.1)",
         LOSS_SOFTMAX_CROSS_ENTROPY, true},
    };
    static const problem losses[] = {
        {"5-6-tanh-3", LOSS_SOFTMAX_CROSS_ENTROPY, true},
        {"5-6-tanh-3", LOSS_SOFTMAX_CROSS_ENTROPY, false},
        {"5-6-tanh-3", LOSS_BINARY_CROSS_ENTROPY, false},
        {"5-6-tanh-1", LOSS_BINARY_CROSS_ENTROPY, true},
        {"5-6-tanh-3", LOSS_MEAN_SQUARED_ERROR, false},
        {"5-6-tanh-3", LOSS_MEAN_SQUARED_ERROR, true},
    };
    for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++)
        check_problem(&layers[i], 11 + i);
    for (size_t i = 0; i < sizeof losses / sizeof losses[0]; i++)
        check_problem(&losses[i], 31 + i);

    check_loss_values();
    check_activation_values();

    allocator_close(alloc);
    device_close(dev);
    return check_finish();
}
