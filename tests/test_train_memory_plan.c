/* test_train_memory_plan.c - each rank's memory budget: limits resolved with where they came
 * from (sizes, fractions, one per local rank, preallocate needing a limit); the plan equal to
 * the byte to what the trainer's set-up takes from the allocator (model, optimizer, feed,
 * scalars, precision workspace); NCCL's buffers, outside the allocator, counted against the
 * limit (the allocator gets the rest, and a plan that fits the allocator but not the limit is
 * refused naming them); --micro-batch auto choosing the largest that fits.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "feed/feed.h"
#include "train/memory_plan.h"

static memory_request request(memory_policy policy, const char *limit) {
    return (memory_request){.policy = policy,
                            .policy_source = "--device-memory",
                            .limit = limit,
                            .limit_source = "--device-memory-limit",
                            .staging_limit = (size_t)64 << 20};
}

int main(void) {
    device *dev = NULL;
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    memory_limits limits;
    memory_request r = request(MEMORY_POLICY_GROWTH, "2GiB");
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    CHECK(limits.device_limit == (size_t)2 << 30 && limits.staging_limit == (size_t)64 << 20);
    CHECK(strcmp(limits.device_source, "--device-memory-limit 2GiB") == 0);
    r = request(MEMORY_POLICY_GROWTH, "8GiB,4GiB");
    r.limit_source = "DDTRAIN_DEVICE_MEMORY_LIMIT";
    CHECK_OK(memory_limits_resolve(&r, dev, 1, 2, &limits));
    CHECK(limits.device_limit == (size_t)4 << 30);
    CHECK(strstr(limits.device_source, "DDTRAIN_DEVICE_MEMORY_LIMIT 8GiB,4GiB, local rank 1: 4GiB"));
    CHECK(memory_limits_resolve(&r, dev, 2, 3, &limits) == DDT_ERR_USAGE); /* 3 ranks, 2 limits */
    /* every entry of a list is checked, not only this rank's (the list is every rank's) */
    const char *bad_lists[] = {"1GiB,", "1GiB,,2GiB", "1GiB,lots", ",1GiB"};
    for (size_t i = 0; i < sizeof bad_lists / sizeof bad_lists[0]; i++) {
        r = request(MEMORY_POLICY_GROWTH, bad_lists[i]);
        CHECK(memory_limits_resolve(&r, dev, 0, 1, &limits) == DDT_ERR_USAGE);
        CHECK(strstr(ddt_error_message(), bad_lists[i]) || strstr(ddt_error_message(), "lots"));
    }
    r = request(MEMORY_POLICY_PREALLOCATE, NULL);
    CHECK(memory_limits_resolve(&r, dev, 0, 1, &limits) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "preallocate needs a limit"));
    r = request(MEMORY_POLICY_GROWTH, "0.25");
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    size_t total = 0, available = 0;
    CHECK_OK(device_memory_info(dev, &total, &available));
    CHECK(limits.device_limit > 0 && limits.device_limit <= total / 4);
    r = request(MEMORY_POLICY_GROWTH, "nana");
    CHECK(memory_limits_resolve(&r, dev, 0, 1, &limits) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "--device-memory-limit: device memory limit 'nana'"));

    /* The plan against what set-up really takes. */
    model_spec spec;
    CHECK_OK(model_spec_parse("32-64-relu-dropout0.1-16-tanh-4", &spec));
    optimizer_params op = optimizer_default_params();
    op.kind = OPTIMIZER_ADAMW;
    dataset_geometry g = {.rows = 100000, .features = 32, .class_labels = true,
                          .labels_per_row = 1, .target_width = 1, .classes = 4,
                          .chunk_rows = 128, .file_count = 1};
    memory_plan_inputs in = {
        .dev = dev, .precision = PRECISION_FP32, .spec = &spec, .optimizer = &op, .geometry = &g,
        .shard = {.rows = g.rows, .global_batch = 256, .world_size = 2, .rank = 0, .seed = 1,
                  .shuffle = true, .block_rows = 128},
        .evaluation = true};
    r = request(MEMORY_POLICY_GROWTH, "1GiB");
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    memory_plan plan;
    memory_plan_compute(&in, 64, &limits, &plan);
    CHECK(plan.fits);
    allocator *alloc = NULL;
    CHECK_OK(allocator_open(dev, &alloc));
    CHECK_OK(device_set_precision(dev, PRECISION_FP32, alloc,
                                     model_spec_max_gemm_operand_floats(&spec, 64)));
    model *m = NULL;
    optimizer *opt = NULL;
    feed *f = NULL;
    float *scalars = NULL;
    CHECK_OK(model_init(&spec, alloc, 64, (model_options){0}, &m));
    CHECK_OK(optimizer_init(&op, alloc, model_parameter_count(m), &opt));
    feed_params fp = {.dev = dev, .alloc = alloc, .geometry = &g, .rows = 64, .evaluation = true};
    CHECK_OK(feed_init(&fp, &f));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, TRAIN_SCALAR_COUNT * sizeof(float),
                             (void **)&scalars));
    CHECK(allocator_get_stats(alloc).bytes_in_use == plan.device_total);
    feed_free(f);
    optimizer_free(opt);
    model_free(m);
    allocator_close(alloc);

    /* NCCL's own buffers count against the limit; the allocator gets the rest. */
    size_t need = plan.device_total;
    r = request(MEMORY_POLICY_GROWTH, NULL);
    char limit_text[32];
    snprintf(limit_text, sizeof limit_text, "%zuB", need + 1000000);
    r.limit = limit_text;
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    memory_plan_compute(&in, 64, &limits, &plan);
    CHECK(plan.fits);
    limits.device_outside_allocator = 1000100; /* limit - outside < what the plan needs */
    limits.outside_allocator_owner = "nccl";
    CHECK(memory_limits_allocator_bytes(&limits) == limits.device_limit - 1000100);
    memory_plan_compute(&in, 64, &limits, &plan);
    CHECK(!plan.fits && !plan.device_fits);
    CHECK(memory_plan_refuse(&plan, &limits, 3) == DDT_ERR_MEMORY);
    CHECK(strstr(ddt_error_message(), "rank 3: the memory plan needs"));
    CHECK(strstr(ddt_error_message(), "of nccl buffers outside the allocator"));
    limits.device_outside_allocator = limits.device_limit + 1; /* nothing left at all */
    CHECK(memory_limits_allocator_bytes(&limits) == 1);

    /* --micro-batch auto: the largest divisor of the per-rank batch that fits. */
    limits.device_outside_allocator = 0;
    const char *binding = NULL;
    CHECK_OK(memory_plan_choose_micro_batch(&in, 128, &limits, &plan, &binding));
    CHECK(plan.fits && plan.micro_batch >= 64 && 128 % plan.micro_batch == 0);
    memory_plan bigger;
    if (plan.micro_batch < 128) {
        memory_plan_compute(&in, plan.micro_batch * 2, &limits, &bigger);
        CHECK(!bigger.fits && strcmp(binding, "device memory") == 0);
    }

    /* No limit given: the device's memory is the limit, on CPU ranks the node's memory
     * (MemTotal or the cgroup's), shared evenly by the node's ranks. */
    r = request(MEMORY_POLICY_GROWTH, NULL);
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    CHECK(limits.device_limit_implicit && limits.device_sharing == 1);
    CHECK(limits.device_limit == total - total % 256);
    CHECK(strstr(limits.device_source, "no --device-memory-limit: the node's memory, "));
    CHECK_OK(memory_limits_resolve(&r, dev, 1, 4, &limits));
    CHECK(limits.device_limit == total / 4 - total / 4 % 256 && limits.device_sharing == 4);
    CHECK(strstr(limits.device_source, ", shared by 4 ranks"));
    /* "none" is still no limit at all, when asked for */
    r = request(MEMORY_POLICY_GROWTH, "none");
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    CHECK(limits.device_limit == 0 && !limits.device_limit_implicit);

    /* 16-1000000-1000000-4 passed --dry-run with no limit set: it needs 11 TiB. */
    model_spec huge;
    CHECK_OK(model_spec_parse("16-1000000-1000000-4", &huge));
    in.spec = &huge;
    r = request(MEMORY_POLICY_GROWTH, NULL);
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 2, &limits));
    memory_plan_compute(&in, 64, &limits, &plan);
    CHECK(!plan.fits && !plan.device_fits);
    CHECK(memory_plan_refuse(&plan, &limits, 1) == DDT_ERR_MEMORY);
    CHECK(strstr(ddt_error_message(), "rank 1: the memory plan needs 14902.44 GiB of device memory "
                                      "(16001376020992 bytes: "));
    CHECK(strstr(ddt_error_message(), "(no --device-memory-limit: the node's memory, "));
    CHECK(strstr(ddt_error_message(), "shared by 2 ranks): the model's parameters, gradients and "
                                      "optimizer state alone exceed it: use a smaller --model, or "
                                      "run fewer ranks per node"));
    char printed[4096] = "";
    FILE *out = fmemopen(printed, sizeof printed - 1, "w");
    memory_plan_print(&plan, &limits, out);
    fclose(out);
    CHECK(strstr(printed, "shared by 2 ranks)  DOES NOT FIT"));

    /* A plan too large to count saturates: it never wraps into a small size that fits. Each
     * conv output is 127 x 4096 x 4096 floats a sample, 2^30 samples. */
    model_spec wide;
    CHECK_OK(model_spec_parse("1x4096x4096-conv(127,k1)-conv(127,k1)-gap-2", &wide));
    in.spec = &wide;
    g.features = 4096 * 4096;
    r = request(MEMORY_POLICY_GROWTH, "none");
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    limits.device_limit = SIZE_MAX - 1; /* the largest limit there can be */
    memory_plan_compute(&in, 1 << 30, &limits, &plan);
    CHECK(plan.device[MEMORY_COMPONENT_ACTIVATIONS] == SIZE_MAX && plan.device_total == SIZE_MAX);
    CHECK(!plan.fits);
    CHECK(memory_plan_refuse(&plan, &limits, 0) == DDT_ERR_MEMORY);
    CHECK(strstr(ddt_error_message(), "needs more than 16 EiB of device memory (more than 2^64 "
                                      "bytes: "));
    g.features = 32;

    /* rows x positions must fit an int: a context of 65536 allows 32767 rows at once. */
    model_spec long_context;
    CHECK_OK(model_spec_parse("tokens(65536,4)-embed(8)-lmhead", &long_context));
    CHECK(model_spec_max_rows(&long_context) == 32767);
    in.spec = &long_context;
    r = request(MEMORY_POLICY_GROWTH, "none");
    CHECK_OK(memory_limits_resolve(&r, dev, 0, 1, &limits));
    memory_plan_compute(&in, 32768, &limits, &plan);
    CHECK(plan.too_many_rows && !plan.fits && plan.device_fits);
    CHECK(memory_plan_refuse(&plan, &limits, 0) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "--micro-batch 32768 is more than the model computes at "
                                      "once (32767 rows"));
    memory_plan_compute(&in, 32767, &limits, &plan);
    CHECK(!plan.too_many_rows);
    CHECK(memory_plan_choose_micro_batch(&in, 65536, &limits, &plan, &binding) == DDT_OK);
    CHECK(plan.micro_batch == 16384 &&
          strcmp(binding, "the most rows the model computes at once") == 0);
    CHECK_OK(allocator_open(dev, &alloc));
    CHECK(model_init(&long_context, alloc, 32768, (model_options){0}, &m) == DDT_ERR_USAGE);
    allocator_close(alloc);

    device_close(dev);
    return check_finish();
}
