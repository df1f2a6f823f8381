/* memory_plan.c - resolving memory limits and planning each rank's memory (see
 * memory_plan.h). */
#include "train/memory_plan.h"

#include "train/generate.h"

#include <stdlib.h>
#include <string.h>

#include "feed/feed.h"
#include "util/checked.h"

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

/* How many of the node's `local_size` ranks use the device that `local_rank` uses: every one
 * on CPU (the node's memory), those given the same GPU otherwise (device_choose). */
static int ranks_sharing(device *dev, int local_rank, int local_size) {
    if (local_size < 1) return 1;
    if (dev->kind == DEVICE_KIND_CPU) return local_size;
    int gpus = device_count(dev->kind);
    if (gpus < 1 || gpus >= local_size) return 1;
    int mine = (local_rank < 0 ? 0 : local_rank) % gpus;
    return local_size / gpus + (mine < local_size % gpus ? 1 : 0);
}

/* No limit given: the device's own memory is the limit, as much of it as is this rank's share:
 * on CPU ranks the node's memory (MemTotal, or the cgroup's memory.max where lower), divided
 * evenly among the node's ranks. Not MemAvailable: it moves with the page cache and other
 * jobs, so the same plan would fit or not from one minute to the next; the plan is a property
 * of the job and the node (as Slurm's per-node memory is), and a preallocation checks what is
 * free when it happens. */
size_t memory_limits_device_share(device *dev, int local_rank, int local_size, int *sharing,
                                  char *source, size_t source_size) {
    size_t total = 0, free_bytes = 0;
    *sharing = 1;
    if (!dev || device_memory_info(dev, &total, &free_bytes) != DDT_OK || total == 0) {
        ddt_error_clear();
        snprintf(source, source_size, "no limit");
        return 0;
    }
    *sharing = ranks_sharing(dev, local_rank, local_size);
    size_t share = total / (size_t)*sharing;
    share -= share % 256; /* the allocator's granule */
    char total_text[32];
    units_format_bytes(total, total_text, sizeof total_text);
    const char *whose = dev->kind == DEVICE_KIND_CPU ? "the node's memory" : "the GPU's memory";
    if (*sharing > 1)
        snprintf(source, source_size, "%s, %s, shared by %d ranks", whose, total_text, *sharing);
    else
        snprintf(source, source_size, "%s, %s", whose, total_text);
    return share > 0 ? share : 256;
}

/* A backend that cannot tell how much memory it has leaves the run without a limit. */
static ddt_status default_limit(device *dev, int local_rank, int local_size, memory_limits *out) {
    char source[128];
    out->device_limit = memory_limits_device_share(dev, local_rank, local_size,
                                                   &out->device_sharing, source, sizeof source);
    out->device_limit_implicit = out->device_limit > 0;
    snprintf(out->device_source, sizeof out->device_source, "%s%s",
             out->device_limit_implicit ? "no --device-memory-limit: " : "", source);
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
        return default_limit(dev, local_rank, local_size, out);
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
    /* Every entry is checked, not only this rank's: a list is the same text on every rank. */
    int index = count == 1 ? 0 : local_rank;
    char entry[64], mine[64] = "";
    const char *start = text;
    for (int i = 0; i < count; i++) {
        size_t length = strcspn(start, ",");
        if (length == 0 || length >= sizeof entry)
            return ddt_error(DDT_ERR_USAGE, "%s: entry %d of '%s' is empty or too long", source,
                             i + 1, text);
        memcpy(entry, start, length);
        entry[length] = '\0';
        size_t bytes = 0;
        DDT_CHECK(parse_limit_entry(source, entry, dev, &bytes));
        if (i == index) {
            out->device_limit = bytes;
            memcpy(mine, entry, sizeof mine);
        }
        start += length + (start[length] == ',');
    }
    if (count > 1)
        snprintf(out->device_source, sizeof out->device_source, "%s %s, local rank %d: %s", source,
                 text, local_rank, mine);
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

static size_t floats_bytes(size_t floats) {
    return saturated_multiply_size(floats, sizeof(float));
}

bool memory_plan_samples(const model_spec *spec, bool evaluation) {
    return evaluation && spec->input_kind == MODEL_INPUT_TOKENS;
}

void memory_plan_compute(const memory_plan_inputs *inputs, int micro_batch,
                         const memory_limits *limits, memory_plan *out) {
    memset(out, 0, sizeof *out);
    out->micro_batch = micro_batch;
    /* Sizes saturate at SIZE_MAX (util/checked.h): a plan too large to count fits no limit. */
    size_t *device = out->device;
    size_t parameters = model_spec_parameter_count(inputs->spec);
    size_t parameter_bytes = allocator_rounded_size(floats_bytes(parameters));
    device[MEMORY_COMPONENT_PARAMETERS] = parameter_bytes;
    if (inputs->spec->buffer_count) /* running statistics, a second allocation */
        device[MEMORY_COMPONENT_PARAMETERS] = saturated_add_size(
            parameter_bytes, allocator_rounded_size(floats_bytes(inputs->spec->buffer_count)));
    device[MEMORY_COMPONENT_GRADIENTS] = parameter_bytes;
    size_t state = optimizer_state_floats(inputs->optimizer, parameters);
    if (state) device[MEMORY_COMPONENT_OPTIMIZER] = allocator_rounded_size(floats_bytes(state));
    device[MEMORY_COMPONENT_ACTIVATIONS] = allocator_rounded_size(
        floats_bytes(model_spec_activation_floats(inputs->spec, micro_batch, inputs->model)));
    feed_plan_device(inputs->geometry, micro_batch, device);
    size_t workspace = allocator_rounded_size(TRAIN_SCALAR_COUNT * sizeof(float));
    if (memory_plan_samples(inputs->spec, inputs->evaluation))
        workspace = saturated_add_size(workspace, generator_device_bytes(inputs->spec));
    size_t precision = device_precision_workspace_bytes(
        inputs->dev, inputs->precision,
        model_spec_max_gemm_operand_floats(inputs->spec, micro_batch));
    if (precision) workspace = saturated_add_size(workspace, allocator_rounded_size(precision));
    device[MEMORY_COMPONENT_WORKSPACE] =
        saturated_add_size(device[MEMORY_COMPONENT_WORKSPACE], workspace);
    /* Gradient buckets are all-reduced in place on CPU ranks: no extra device memory. */
    for (int c = 0; c < MEMORY_COMPONENT_COUNT; c++)
        out->device_total = saturated_add_size(out->device_total, device[c]);
    out->max_rows = model_spec_max_rows(inputs->spec);
    out->too_many_rows = micro_batch > out->max_rows;
    out->device_fits = limits->device_limit == 0 ||
                       saturated_add_size(out->device_total, limits->device_outside_allocator) <=
                           limits->device_limit;

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
    out->fits = !out->too_many_rows && out->device_fits && out->staging_fits;
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
        if (!ruled_out_by)
            ruled_out_by = out->too_many_rows  ? "the most rows the model computes at once"
                           : !out->device_fits ? "device memory"
                                               : "host staging";
    }
    return ddt_error(DDT_ERR_MEMORY,
                     "--micro-batch auto: not even one row per micro-batch fits (%s)",
                     !out->device_fits ? "device memory" : out->staging_problem);
}

/* "1.50 GiB" and "1610612736 bytes", or for a saturated plan "more than 16 EiB" and "more
 * than 2^64 bytes". */
static void format_need(size_t bytes, char *human, size_t human_size, char *exact,
                        size_t exact_size) {
    if (bytes == SIZE_MAX) {
        snprintf(human, human_size, "more than 16 EiB");
        snprintf(exact, exact_size, "more than 2^64 bytes");
    } else {
        units_format_bytes(bytes, human, human_size);
        snprintf(exact, exact_size, "%zu bytes", bytes);
    }
}

ddt_status memory_plan_refuse(const memory_plan *plan, const memory_limits *limits, int rank) {
    if (plan->too_many_rows)
        return ddt_error(DDT_ERR_USAGE,
                         "rank %d: --micro-batch %d is more than the model computes at once "
                         "(%d rows: rows x positions must fit an int): use a smaller "
                         "--micro-batch with more accumulation steps",
                         rank, plan->micro_batch, plan->max_rows);
    if (!plan->device_fits) {
        char need[32], exact[32], limit[32], model[32], activations[32], staging[32],
            outside[96] = "";
        size_t model_bytes =
            saturated_add_size(saturated_add_size(plan->device[MEMORY_COMPONENT_PARAMETERS],
                                                  plan->device[MEMORY_COMPONENT_GRADIENTS]),
                               plan->device[MEMORY_COMPONENT_OPTIMIZER]);
        format_need(plan->device_total, need, sizeof need, exact, sizeof exact);
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
        /* Without a limit given, the limit is the memory there is: raising it is no advice. */
        const char *raise = !limits->device_limit_implicit ? ", or raise the limit"
                            : limits->device_sharing > 1   ? ", or run fewer ranks per node"
                                                           : "";
        bool model_alone = model_bytes >= limits->device_limit;
        return ddt_error(DDT_ERR_MEMORY,
                         "rank %d: the memory plan needs %s of device memory (%s: "
                         "parameters+gradients+optimizer %s, activations %s and input staging %s "
                         "for --micro-batch %d%s), more than the limit of %s (%s): %s%s",
                         rank, need, exact, model, activations, staging, plan->micro_batch, outside,
                         limit, limits->device_source,
                         model_alone ? "the model's parameters, gradients and optimizer state "
                                       "alone exceed it: use a smaller --model"
                                     : "use a smaller --micro-batch with more accumulation steps "
                                       "(or --micro-batch auto)",
                         raise);
    }
    if (!plan->staging_fits)
        return ddt_error(DDT_ERR_MEMORY, "rank %d: %s", rank, plan->staging_problem);
    return DDT_OK;
}

/* units_format_bytes, or "> 16 EiB" for a size too large to count (saturated). */
static const char *plan_bytes(size_t bytes, char *text, size_t size) {
    if (bytes == SIZE_MAX) {
        snprintf(text, size, "> 16 EiB");
        return text;
    }
    return units_format_bytes(bytes, text, size);
}

void memory_plan_print(const memory_plan *plan, const memory_limits *limits, FILE *out) {
    char text[32], limit[32];
    fprintf(out, "memory plan per rank (micro-batch %d, device memory policy %s):\n",
            plan->micro_batch,
            limits->policy == MEMORY_POLICY_PREALLOCATE ? "preallocate" : "growth");
    for (int c = 0; c < MEMORY_COMPONENT_COUNT; c++) {
        plan_bytes(plan->device[c], text, sizeof text);
        fprintf(out, "  %-20s %12s%s\n", memory_component_name((memory_component)c), text,
                c == MEMORY_COMPONENT_BUCKETS ? " (all-reduced in place)" : "");
    }
    if (plan->device_total == SIZE_MAX)
        fprintf(out, "  %-20s %12s bytes\n", "device bytes", "> 2^64");
    else
        fprintf(out, "  %-20s %12zu bytes\n", "device bytes", plan->device_total);
    size_t total = saturated_add_size(plan->device_total, limits->device_outside_allocator);
    if (limits->device_outside_allocator) {
        units_format_bytes(limits->device_outside_allocator, text, sizeof text);
        fprintf(out, "  %-20s %12s  (%s's own, taken at set-up; outside the allocator)\n",
                "communication", text,
                limits->outside_allocator_owner ? limits->outside_allocator_owner : "backend");
    }
    plan_bytes(total, text, sizeof text);
    if (limits->device_limit) {
        units_format_bytes(limits->device_limit, limit, sizeof limit);
        fprintf(out, "  %-20s %12s  of %s (%.0f%%, %s)%s\n", "device total", text, limit,
                100.0 * (double)total / (double)limits->device_limit,
                limits->device_source, plan->device_fits ? "" : "  DOES NOT FIT");
    } else {
        fprintf(out, "  %-20s %12s  (no device memory limit)\n", "device total", text);
    }
    if (plan->too_many_rows)
        fprintf(out, "  %-20s %d rows is more than the model computes at once (%d)  DOES NOT FIT\n",
                "micro-batch", plan->micro_batch, plan->max_rows);
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
