/* memory_plan.c - resolving memory limits and planning each rank's memory (see
 * memory_plan.h). */
#include "train/memory_plan.h"

#include "train/generate.h"

#include <stdlib.h>
#include <string.h>

#include "feed/feed.h"

/* ---- limits ---------------------------------------------------------------------------- */

static ddt_status parse_limit_entry(const char *source, const char *entry, device *dev,
                                    size_t *bytes) {
    memory_limit limit;
    if (memory_limit_parse(entry, &limit) != DDT_OK)
        return ddt_error(DDT_ERR_USAGE, "%s: %s", source, ddt_error_message());
    size_t total = 0, free_bytes = 0;
    if (limit.fraction > 0) DDT_CHECK(device_memory_info(dev, &total, &free_bytes));
    *bytes = memory_limit_resolve(limit, total);
    return DDT_OK;
}

ddt_status memory_limits_resolve(const memory_request *request, device *dev, int local_rank,
                                 int local_size, memory_limits *out) {
    memset(out, 0, sizeof *out);
    out->staging_limit = request->staging_limit;
    out->policy = request->policy;
    const char *text = request->limit;
    char source[64];
    snprintf(source, sizeof source, "%s",
             request->limit_source ? request->limit_source : "--device-memory-limit");
    if (!text) {
        if (out->policy == MEMORY_POLICY_PREALLOCATE)
            return ddt_error(DDT_ERR_USAGE,
                             "%s preallocate needs a limit to reserve "
                             "(--device-memory-limit SIZE or FRACTION)",
                             request->policy_source ? request->policy_source : "--device-memory");
        snprintf(out->device_source, sizeof out->device_source, "no limit");
        return DDT_OK;
    }
    /* One entry for every rank, or one per local rank (mixed nodes). */
    int count = 1;
    for (const char *p = text; *p; p++)
        count += *p == ',';
    if (count > 1 && local_size > count)
        return ddt_error(DDT_ERR_USAGE,
                         "%s lists %d limits, but this node runs %d ranks (give one limit, or "
                         "one per local rank)",
                         source, count, local_size);
    int index = count == 1 ? 0 : local_rank;
    const char *start = text;
    for (int i = 0; i < index; i++)
        start = strchr(start, ',') + 1;
    size_t length = strcspn(start, ",");
    char entry[64];
    if (length == 0 || length >= sizeof entry)
        return ddt_error(DDT_ERR_USAGE, "%s: entry %d of '%s' is empty or too long", source,
                         index + 1, text);
    memcpy(entry, start, length);
    entry[length] = '\0';
    DDT_CHECK(parse_limit_entry(source, entry, dev, &out->device_limit));
    if (count > 1)
        snprintf(out->device_source, sizeof out->device_source, "%s %s, local rank %d: %s", source,
                 text, local_rank, entry);
    else
        snprintf(out->device_source, sizeof out->device_source, "%s %s", source, text);
    return DDT_OK;
}

size_t memory_limits_allocator_bytes(const memory_limits *limits) {
    if (limits->device_limit == 0) return 0;
    if (limits->device_outside_allocator >= limits->device_limit) return 1; /* nothing fits */
    return limits->device_limit - limits->device_outside_allocator;
}

/* ---- plans ----------------------------------------------------------------------------- */

bool memory_plan_samples(const model_spec *spec, bool evaluation) {
    return evaluation && spec->input_kind == MODEL_INPUT_TOKENS;
}

void memory_plan_compute(const memory_plan_inputs *inputs, int micro_batch,
                         const memory_limits *limits, memory_plan *out) {
    memset(out, 0, sizeof *out);
    out->micro_batch = micro_batch;
    size_t parameters = model_spec_parameter_count(inputs->spec);
    out->device[MEMORY_COMPONENT_PARAMETERS] = allocator_rounded_size(parameters * sizeof(float));
    if (inputs->spec->buffer_count) /* running statistics, a second allocation */
        out->device[MEMORY_COMPONENT_PARAMETERS] +=
            allocator_rounded_size(inputs->spec->buffer_count * sizeof(float));
    out->device[MEMORY_COMPONENT_GRADIENTS] = allocator_rounded_size(parameters * sizeof(float));
    size_t state = optimizer_state_floats(inputs->optimizer, parameters);
    if (state)
        out->device[MEMORY_COMPONENT_OPTIMIZER] = allocator_rounded_size(state * sizeof(float));
    out->device[MEMORY_COMPONENT_ACTIVATIONS] = allocator_rounded_size(
        model_spec_activation_floats(inputs->spec, micro_batch, inputs->model) * sizeof(float));
    feed_plan_device(inputs->geometry, micro_batch, out->device);
    out->device[MEMORY_COMPONENT_WORKSPACE] +=
        allocator_rounded_size(TRAIN_SCALAR_COUNT * sizeof(float));
    if (memory_plan_samples(inputs->spec, inputs->evaluation))
        out->device[MEMORY_COMPONENT_WORKSPACE] += generator_device_bytes(inputs->spec);
    size_t workspace = device_precision_workspace_bytes(inputs->dev, inputs->precision,
        model_spec_max_gemm_operand_floats(inputs->spec, micro_batch));
    if (workspace) out->device[MEMORY_COMPONENT_WORKSPACE] += allocator_rounded_size(workspace);
    /* Gradient buckets are all-reduced in place on CPU ranks: no extra device memory. */
    for (int c = 0; c < MEMORY_COMPONENT_COUNT; c++)
        out->device_total += out->device[c];
    out->device_fits = limits->device_limit == 0 ||
                       out->device_total + limits->device_outside_allocator <= limits->device_limit;

    const dataset_geometry *g = inputs->geometry;
    if (inputs->evaluation) out->evaluation_bytes = feed_evaluation_host_bytes(g, micro_batch);
    shard_params shard = inputs->shard;
    shard.micro_batch = micro_batch;
    out->staging.prefetch_depth = inputs->prefetch_depth;
    out->staging.window_blocks = inputs->window_blocks;
    size_t stream_limit = 0;
    out->staging_fits = true;
    if (limits->staging_limit > 0) {
        if (out->evaluation_bytes >= limits->staging_limit) {
            char need[32], limit[32];
            units_format_bytes(out->evaluation_bytes, need, sizeof need);
            units_format_bytes(limits->staging_limit, limit, sizeof limit);
            snprintf(out->staging_problem, sizeof out->staging_problem,
                     "--host-staging-limit %s cannot hold even the evaluation buffer of %d rows "
                     "(%s); raise --host-staging-limit or lower --micro-batch",
                     limit, micro_batch, need);
            out->staging_fits = false;
        }
        stream_limit = limits->staging_limit - out->evaluation_bytes;
    }
    if (out->staging_fits && stream_fit_staging(stream_limit, g, &shard, &out->staging) != DDT_OK) {
        snprintf(out->staging_problem, sizeof out->staging_problem, "%s", ddt_error_message());
        out->staging_fits = false;
    }
    out->host_staging_total = out->staging.bytes + out->evaluation_bytes;
    out->fits = out->device_fits && out->staging_fits;
}

ddt_status memory_plan_choose_micro_batch(const memory_plan_inputs *inputs, int per_rank_batch,
                                          const memory_limits *limits, memory_plan *out,
                                          const char **binding) {
    const char *ruled_out_by = NULL;
    for (int b = per_rank_batch; b >= 1; b--) {
        if (per_rank_batch % b != 0) continue;
        memory_plan_compute(inputs, b, limits, out);
        if (out->fits) {
            *binding = ruled_out_by ? ruled_out_by : "nothing (the whole per-rank batch fits)";
            return DDT_OK;
        }
        if (!ruled_out_by) ruled_out_by = !out->device_fits ? "device memory" : "host staging";
    }
    return ddt_error(DDT_ERR_MEMORY,
                     "--micro-batch auto: not even one row per micro-batch fits (%s)",
                     !out->device_fits ? "device memory" : out->staging_problem);
}

ddt_status memory_plan_refuse(const memory_plan *plan, const memory_limits *limits, int rank) {
    if (!plan->device_fits) {
        char need[32], limit[32], model[32], activations[32], staging[32], outside[96] = "";
        size_t model_bytes = plan->device[MEMORY_COMPONENT_PARAMETERS] +
                             plan->device[MEMORY_COMPONENT_GRADIENTS] +
                             plan->device[MEMORY_COMPONENT_OPTIMIZER];
        units_format_bytes(plan->device_total, need, sizeof need);
        units_format_bytes(limits->device_limit, limit, sizeof limit);
        units_format_bytes(model_bytes, model, sizeof model);
        units_format_bytes(plan->device[MEMORY_COMPONENT_ACTIVATIONS], activations,
                           sizeof activations);
        units_format_bytes(plan->device[MEMORY_COMPONENT_STAGING], staging, sizeof staging);
        if (limits->device_outside_allocator) {
            char bytes[32];
            units_format_bytes(limits->device_outside_allocator, bytes, sizeof bytes);
            snprintf(outside, sizeof outside, ", plus %s of %s buffers outside the allocator",
                     bytes, limits->outside_allocator_owner ? limits->outside_allocator_owner
                                                            : "communication");
        }
        const char *advice =
            model_bytes >= limits->device_limit
                ? "the model's parameters, gradients and optimizer state alone exceed it: use a "
                  "smaller --model or raise the limit"
                : "use a smaller --micro-batch with more accumulation steps (or --micro-batch "
                  "auto), or raise the limit";
        return ddt_error(DDT_ERR_MEMORY,
                         "rank %d: the memory plan needs %s of device memory (%zu bytes: "
                         "parameters+gradients+optimizer %s, activations %s and input staging %s "
                         "for --micro-batch %d%s), more than the limit of %s (%s): %s",
                         rank, need, plan->device_total, model, activations, staging,
                         plan->micro_batch, outside, limit, limits->device_source, advice);
    }
    if (!plan->staging_fits)
        return ddt_error(DDT_ERR_MEMORY, "rank %d: %s", rank, plan->staging_problem);
    return DDT_OK;
}

void memory_plan_print(const memory_plan *plan, const memory_limits *limits, FILE *out) {
    char text[32], limit[32];
    fprintf(out, "memory plan per rank (micro-batch %d, device memory policy %s):\n",
            plan->micro_batch,
            limits->policy == MEMORY_POLICY_PREALLOCATE ? "preallocate" : "growth");
    for (int c = 0; c < MEMORY_COMPONENT_COUNT; c++) {
        units_format_bytes(plan->device[c], text, sizeof text);
        fprintf(out, "  %-20s %12s%s\n", memory_component_name((memory_component)c), text,
                c == MEMORY_COMPONENT_BUCKETS ? " (all-reduced in place)" : "");
    }
    fprintf(out, "  %-20s %12zu bytes\n", "device bytes", plan->device_total);
    size_t total = plan->device_total + limits->device_outside_allocator;
    if (limits->device_outside_allocator) {
        units_format_bytes(limits->device_outside_allocator, text, sizeof text);
        fprintf(out, "  %-20s %12s  (%s's own, measured at set-up; outside the allocator)\n",
                "communication", text,
                limits->outside_allocator_owner ? limits->outside_allocator_owner : "backend");
    }
    units_format_bytes(total, text, sizeof text);
    if (limits->device_limit) {
        units_format_bytes(limits->device_limit, limit, sizeof limit);
        fprintf(out, "  %-20s %12s  of %s (%.0f%%, %s)%s\n", "device total", text, limit,
                100.0 * (double)total / (double)limits->device_limit,
                limits->device_source, plan->device_fits ? "" : "  DOES NOT FIT");
    } else {
        fprintf(out, "  %-20s %12s  (no device memory limit)\n", "device total", text);
    }
    units_format_bytes(plan->host_staging_total, text, sizeof text);
    if (limits->staging_limit) {
        units_format_bytes(limits->staging_limit, limit, sizeof limit);
        fprintf(out, "  %-20s %12s  of %s (--host-staging-limit)%s\n", "host staging", text, limit,
                plan->staging_fits ? "" : "  DOES NOT FIT");
    } else {
        fprintf(out, "  %-20s %12s  (no host staging limit)\n", "host staging", text);
    }
    if (plan->staging_fits)
        fprintf(out,
                "  %-20s %d micro-batches ready, shuffle window %d blocks, block cache %d "
                "blocks%s\n",
                "", plan->staging.prefetch_depth, plan->staging.window_blocks,
                plan->staging.cache_blocks, plan->evaluation_bytes ? ", evaluation buffer" : "");
}
