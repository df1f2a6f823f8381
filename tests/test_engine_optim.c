/* test_engine_optim.c - optimizers against double-precision references written from the
 * PyTorch formulas (SGD plain / momentum / Nesterov / weight decay, AdamW), their state
 * buffers, parameter checks and names, and learning-rate schedule values at key steps.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/optim.h"
#include "engine/optim_update.h"
#include "util/rng.h"

#define COUNT 37
#define STEPS 6

static device *dev;
static allocator *alloc;

/* Gradient of step s: deterministic, changing sign so momentum matters. */
static double gradient_at(int step, int i) {
    return 2.0 * rng_uniform(rng_hash4(7, 200, step, i)) - 1.0;
}

static double initial_param(int i) {
    return 2.0 * rng_uniform(rng_hash4(7, 201, 0, i)) - 1.0;
}

/* torch.optim.SGD, in double. */
static void sgd_reference(const optimizer_params *p, const double *lrs, double *params) {
    double velocity[COUNT] = {0};
    for (int s = 0; s < STEPS; s++) {
        for (int i = 0; i < COUNT; i++) {
            double g = gradient_at(s, i) + p->weight_decay * params[i];
            if (p->momentum != 0.0f) {
                velocity[i] = s == 0 ? g : p->momentum * velocity[i] + g;
                g = p->nesterov ? g + p->momentum * velocity[i] : velocity[i];
            }
            params[i] -= lrs[s] * g;
        }
    }
}

/* torch.optim.AdamW, in double. */
static void adamw_reference(const optimizer_params *p, const double *lrs, double *params) {
    double m[COUNT] = {0}, v[COUNT] = {0};
    for (int s = 0; s < STEPS; s++) {
        int t = s + 1;
        for (int i = 0; i < COUNT; i++) {
            double g = gradient_at(s, i);
            params[i] *= 1.0 - lrs[s] * p->weight_decay;
            m[i] = p->beta1 * m[i] + (1.0 - p->beta1) * g;
            v[i] = p->beta2 * v[i] + (1.0 - p->beta2) * g * g;
            double m_hat = m[i] / (1.0 - pow(p->beta1, t));
            double v_hat = v[i] / (1.0 - pow(p->beta2, t));
            params[i] -= lrs[s] * m_hat / (sqrt(v_hat) + p->eps);
        }
    }
}

static void check_against_reference(const char *name, const optimizer_params *p,
                                    size_t expected_state) {
    double lrs[STEPS] = {0.1, 0.05, 0.08, 0.02, 0.1, 0.03};
    double reference[COUNT];
    for (int i = 0; i < COUNT; i++)
        reference[i] = initial_param(i);
    if (p->kind == OPTIMIZER_SGD)
        sgd_reference(p, lrs, reference);
    else
        adamw_reference(p, lrs, reference);

    optimizer *opt = NULL;
    CHECK_OK(optimizer_init(p, alloc, COUNT, &opt));
    if (!opt) return;
    CHECK(optimizer_state_count(opt) == expected_state);
    CHECK((optimizer_state(opt) != NULL) == (expected_state != 0));
    allocator_stats stats = allocator_get_stats(alloc);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_OPTIMIZER] >= expected_state * sizeof(float));

    float params[COUNT], grads[COUNT];
    for (int i = 0; i < COUNT; i++)
        params[i] = (float)initial_param(i);
    for (int s = 0; s < STEPS; s++) {
        for (int i = 0; i < COUNT; i++)
            grads[i] = (float)gradient_at(s, i);
        optimizer_step(opt, params, grads, (float)lrs[s]);
    }
    CHECK(optimizer_steps_taken(opt) == STEPS);
    double worst = 0.0;
    for (int i = 0; i < COUNT; i++)
        worst = fmax(worst, fabs(params[i] - reference[i]));
    CHECK(worst < 2e-6);
    printf("%-32s max |float - double reference| after %d steps: %.2e\n", name, STEPS, worst);
    optimizer_free(opt);
    CHECK(allocator_get_stats(alloc).component_bytes[MEMORY_COMPONENT_OPTIMIZER] == 0);
}

static void check_optimizers(void) {
    optimizer_params p = optimizer_default_params();
    CHECK(p.kind == OPTIMIZER_SGD && p.momentum == 0.0f && !p.nesterov && p.weight_decay == 0.0f);
    CHECK(p.beta1 == 0.9f && p.beta2 == 0.999f && p.eps == 1e-8f);
    check_against_reference("sgd", &p, 0);
    p.weight_decay = 0.01f;
    check_against_reference("sgd weight decay", &p, 0);
    p.weight_decay = 0.0f;
    p.momentum = 0.9f;
    check_against_reference("sgd momentum", &p, COUNT);
    p.nesterov = true;
    check_against_reference("sgd nesterov", &p, COUNT);
    p.weight_decay = 5e-4f;
    check_against_reference("sgd nesterov weight decay", &p, COUNT);
    p.nesterov = false;
    check_against_reference("sgd momentum weight decay", &p, COUNT);

    optimizer_params a = optimizer_default_params();
    a.kind = OPTIMIZER_ADAMW;
    check_against_reference("adamw", &a, 2 * COUNT);
    a.weight_decay = 0.01f;
    a.beta1 = 0.8f;
    a.beta2 = 0.99f;
    a.eps = 1e-6f;
    check_against_reference("adamw decay, betas 0.8/0.99", &a, 2 * COUNT);
}

static void check_params_and_names(void) {
    optimizer_params p = optimizer_default_params();
    CHECK_OK(optimizer_params_check(&p));
    p.nesterov = true;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "momentum") != NULL);
    p = optimizer_default_params();
    p.momentum = -0.1f;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    p.momentum = 1.0f;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    p = optimizer_default_params();
    p.weight_decay = -1.0f;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    p.weight_decay = NAN;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    p = optimizer_default_params();
    p.kind = OPTIMIZER_ADAMW;
    CHECK_OK(optimizer_params_check(&p));
    p.beta2 = 1.0f;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    p.beta2 = 0.999f;
    p.eps = 0.0f;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    p.eps = 1e-8f;
    p.momentum = 0.9f;
    CHECK(optimizer_params_check(&p) == DDT_ERR_USAGE);
    optimizer *opt = (optimizer *)&p;
    CHECK(optimizer_init(&p, alloc, 10, &opt) == DDT_ERR_USAGE);
    CHECK(opt == NULL);

    optimizer_kind kind;
    CHECK_OK(optimizer_kind_parse("adamw", &kind));
    CHECK(kind == OPTIMIZER_ADAMW);
    CHECK_OK(optimizer_kind_parse("sgd", &kind));
    CHECK(kind == OPTIMIZER_SGD);
    CHECK(optimizer_kind_parse("adam", &kind) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "'adam'") != NULL);
    CHECK(strcmp(optimizer_kind_name(OPTIMIZER_ADAMW), "adamw") == 0);

    lr_schedule_kind schedule_kind;
    CHECK_OK(lr_schedule_kind_parse("cosine", &schedule_kind));
    CHECK(schedule_kind == LR_SCHEDULE_COSINE);
    CHECK_OK(lr_schedule_kind_parse("step", &schedule_kind));
    CHECK(schedule_kind == LR_SCHEDULE_STEP);
    CHECK_OK(lr_schedule_kind_parse("constant", &schedule_kind));
    CHECK(schedule_kind == LR_SCHEDULE_CONSTANT);
    CHECK(lr_schedule_kind_parse("linear", &schedule_kind) == DDT_ERR_USAGE);
    CHECK(strcmp(lr_schedule_kind_name(LR_SCHEDULE_STEP), "step") == 0);
}

static void check_schedules(void) {
    lr_schedule s = {.kind = LR_SCHEDULE_CONSTANT, .base_lr = 0.1f};
    CHECK_OK(lr_schedule_check(&s));
    CHECK_NEAR(lr_schedule_at(&s, 0), 0.1, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 12345), 0.1, 1e-7);

    s.warmup_steps = 4;
    CHECK_NEAR(lr_schedule_at(&s, 0), 0.025, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 1), 0.05, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 3), 0.1, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 4), 0.1, 1e-7);

    s = (lr_schedule){.kind = LR_SCHEDULE_COSINE,
                      .base_lr = 1.0f,
                      .min_lr = 0.1f,
                      .warmup_steps = 10,
                      .total_steps = 110};
    CHECK_OK(lr_schedule_check(&s));
    CHECK_NEAR(lr_schedule_at(&s, 0), 0.1, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 9), 1.0, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 10), 1.0, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 60), 0.55, 1e-6);
    CHECK_NEAR(lr_schedule_at(&s, 35), 0.1 + 0.9 * 0.5 * (1 + cos(M_PI * 0.25)), 1e-6);
    CHECK_NEAR(lr_schedule_at(&s, 110), 0.1, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 500), 0.1, 1e-7);
    s.total_steps = 10;
    CHECK(lr_schedule_check(&s) == DDT_ERR_USAGE);

    s = (lr_schedule){.kind = LR_SCHEDULE_STEP,
                      .base_lr = 0.8f,
                      .warmup_steps = 2,
                      .step_size = 3,
                      .gamma = 0.5f};
    CHECK_OK(lr_schedule_check(&s));
    CHECK_NEAR(lr_schedule_at(&s, 0), 0.4, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 2), 0.8, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 4), 0.8, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 5), 0.4, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 8), 0.2, 1e-7);
    CHECK_NEAR(lr_schedule_at(&s, 11), 0.1, 1e-7);
    s.step_size = 0;
    CHECK(lr_schedule_check(&s) == DDT_ERR_USAGE);
    s.step_size = 3;
    s.base_lr = 0.0f;
    CHECK(lr_schedule_check(&s) == DDT_ERR_USAGE);
}

/* The CPU backend's vectorised updates compute exactly what engine/optim_update.h's element
 * functions compute (which the CUDA kernels run too), bit for bit. The moments are drawn so
 * that beta1 * m and (1 - beta1) * g nearly cancel, where a fused multiply-add would round
 * differently: the test first shows that these inputs do tell the two apart. */
#define ELEMENTS 1003 /* odd: the SIMD body and the scalar tail both run */
static void check_backend_matches_element_arithmetic(void) {
    static float p_backend[ELEMENTS], m_backend[ELEMENTS], v_backend[ELEMENTS];
    static float p_element[ELEMENTS], m_element[ELEMENTS], v_element[ELEMENTS], g[ELEMENTS];
    int fused_differs = 0;
    for (int i = 0; i < ELEMENTS; i++) {
        g[i] = (float)(2.0 * rng_uniform(rng_hash4(9, 300, 0, i)) - 1.0);
        /* m close to -(1 - beta1) g / beta1: the new first moment nearly cancels. */
        float cancel = -0.1f * g[i] / 0.9f;
        m_backend[i] = m_element[i] = cancel * (1.0f + 1e-4f * (float)(i % 7));
        v_backend[i] = v_element[i] = (float)rng_uniform(rng_hash4(9, 301, 0, i));
        p_backend[i] = p_element[i] = (float)(2.0 * rng_uniform(rng_hash4(9, 302, 0, i)) - 1.0);
        volatile float product = 0.1f * g[i];
        fused_differs += fmaf(0.9f, m_element[i], product) != 0.9f * m_element[i] + product;
    }
    CHECK(fused_differs > ELEMENTS / 10);
    for (int step = 1; step <= 5; step++) {
        device_adamw_update(dev, ELEMENTS, p_backend, g, m_backend, v_backend, 1e-3f, 0.9f,
                               0.999f, 1e-8f, 1e-2f, step);
        adamw_scalars s = adamw_scalars_for(1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, step);
        for (int i = 0; i < ELEMENTS; i++)
            adamw_update_element(&s, g[i], &p_element[i], &m_element[i], &v_element[i]);
    }
    CHECK(memcmp(p_backend, p_element, sizeof p_backend) == 0);
    CHECK(memcmp(m_backend, m_element, sizeof m_backend) == 0);
    CHECK(memcmp(v_backend, v_element, sizeof v_backend) == 0);

    const struct {
        float momentum, weight_decay;
        bool nesterov;
    } cases[] = {{0, 0, false}, {0, 1e-2f, false}, {0.9f, 0, false}, {0.9f, 5e-3f, true}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int i = 0; i < ELEMENTS; i++) {
            p_backend[i] = p_element[i] = (float)rng_uniform(rng_hash4(9, 303, c, i));
            m_backend[i] = m_element[i] = 0.0f; /* velocity */
        }
        float gradient_weight = cases[c].nesterov ? 1.0f : 0.0f;
        float velocity_weight = cases[c].nesterov ? cases[c].momentum : 1.0f;
        for (int step = 1; step <= 3; step++) {
            device_sgd_update(dev, ELEMENTS, p_backend, g, m_backend, 0.05f, cases[c].momentum,
                                 cases[c].nesterov, cases[c].weight_decay, step == 1);
            for (int i = 0; i < ELEMENTS; i++)
                sgd_update_element(g[i], &p_element[i], &m_element[i], 0.05f, cases[c].momentum,
                                   gradient_weight, velocity_weight, cases[c].weight_decay,
                                   step == 1);
        }
        CHECK(memcmp(p_backend, p_element, sizeof p_backend) == 0);
        if (cases[c].momentum != 0) CHECK(memcmp(m_backend, m_element, sizeof m_backend) == 0);
    }
}

int main(void) {
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    check_backend_matches_element_arithmetic();
    CHECK_OK(allocator_open(dev, &alloc));
    check_optimizers();
    check_params_and_names();
    check_schedules();
    allocator_close(alloc);
    device_close(dev);
    return check_finish();
}
