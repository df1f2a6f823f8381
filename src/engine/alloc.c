/* alloc.c - the single place every device buffer is allocated and freed (alloc.h).
 *
 * The allocator takes regions from the backend and carves them up. Bookkeeping lives in host
 * memory (device memory may not be readable from the host): one list of blocks, free or in
 * use, in address order within each region and region after region, so a freed block merges
 * with free neighbours of the same region and first fit is a walk down the list. Buffers are
 * allocated at start-up, not inside the training step, so a linear walk costs nothing that
 * matters and keeps the code obvious. No other file calls device_memory_alloc().
 */
#include "engine/alloc.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ALLOCATION_GRANULE 256
#define DEFAULT_GROWTH_MIN_BYTES ((size_t)2 << 20)

typedef struct block {
    struct block *previous, *next; /* list order: address order within a region */
    unsigned char *pointer;
    size_t bytes; /* a multiple of ALLOCATION_GRANULE */
    size_t region;
    bool in_use;
    memory_component component; /* meaningful while in_use */
} block;

typedef struct region {
    void *base;
    size_t bytes; /* as reserved; the usable part is rounded down to ALLOCATION_GRANULE */
} region;

struct allocator {
    device *dev;
    allocator_params params;
    size_t growth_step; /* the next growth region's size */
    region *regions;
    size_t region_capacity;
    block *first, *last;
    allocator_stats stats;
};

const char *memory_component_name(memory_component component) {
    switch (component) {
    case MEMORY_COMPONENT_PARAMETERS:
        return "parameters";
    case MEMORY_COMPONENT_GRADIENTS:
        return "gradients";
    case MEMORY_COMPONENT_OPTIMIZER:
        return "optimizer state";
    case MEMORY_COMPONENT_ACTIVATIONS:
        return "activations";
    case MEMORY_COMPONENT_WORKSPACE:
        return "workspace";
    case MEMORY_COMPONENT_BUCKETS:
        return "gradient buckets";
    case MEMORY_COMPONENT_STAGING:
        return "input staging";
    case MEMORY_COMPONENT_COUNT:
        break;
    }
    return "unknown";
}

const char *memory_policy_name(memory_policy policy) {
    switch (policy) {
    case MEMORY_POLICY_GROWTH:
        return "growth";
    case MEMORY_POLICY_PREALLOCATE:
        return "preallocate";
    }
    return "unknown";
}

ddt_status memory_policy_parse(const char *text, memory_policy *out) {
    if (text && strcmp(text, "growth") == 0) {
        *out = MEMORY_POLICY_GROWTH;
        return DDT_OK;
    }
    if (text && strcmp(text, "preallocate") == 0) {
        *out = MEMORY_POLICY_PREALLOCATE;
        return DDT_OK;
    }
    return ddt_error(DDT_ERR_USAGE, "unknown device memory policy '%s': use growth or preallocate",
                     text ? text : "");
}

/* --- limits ------------------------------------------------------------------------------ */

ddt_status memory_limit_parse(const char *text, memory_limit *out) {
    *out = (memory_limit){0, 0.0};
    if (!text || !*text) return ddt_error(DDT_ERR_USAGE, "empty device memory limit");
    if (strcasecmp(text, "none") == 0) return DDT_OK;
    const char *accepted = "give a size such as 6GiB or 512MiB, or a fraction of the device "
                           "such as 0.5";
    errno = 0;
    char *end = NULL;
    double value = strtod(text, &end);
    bool starts_like_number = isdigit((unsigned char)text[0]) || text[0] == '.';
    if (!starts_like_number || end == text || errno != 0 || !isfinite(value) || value < 0.0)
        return ddt_error(DDT_ERR_USAGE, "device memory limit '%s' is not a size: %s", text,
                         accepted);
    while (*end == ' ')
        end++;
    if (!*end) {
        if (value <= 0.0 || value > 1.0)
            return ddt_error(DDT_ERR_USAGE,
                             "device memory limit '%s' has no unit: %s (a bare number is a "
                             "fraction of the device, in (0, 1])",
                             text, accepted);
        out->fraction = value;
        return DDT_OK;
    }
    uint64_t bytes = 0;
    if (units_parse_size("device memory limit", text, &bytes) != DDT_OK)
        return ddt_error(DDT_ERR_USAGE, "%s: %s", ddt_error_message(), accepted);
    if (bytes == 0)
        return ddt_error(DDT_ERR_USAGE, "device memory limit '%s' is zero: %s", text, accepted);
    out->bytes = (size_t)bytes;
    return DDT_OK;
}

size_t memory_limit_resolve(memory_limit limit, size_t device_total_bytes) {
    if (limit.bytes) return limit.bytes;
    if (limit.fraction <= 0.0) return 0;
    double bytes = floor(limit.fraction * (double)device_total_bytes);
    size_t resolved = bytes >= 0x1p63 ? (size_t)1 << 63 : (size_t)bytes;
    resolved -= resolved % ALLOCATION_GRANULE;
    return resolved ? resolved : ALLOCATION_GRANULE;
}

/* --- set-up and teardown ------------------------------------------------------------------ */

size_t allocator_rounded_size(size_t bytes) {
    if (bytes > SIZE_MAX - (ALLOCATION_GRANULE - 1)) return SIZE_MAX;
    size_t rounded = (bytes + ALLOCATION_GRANULE - 1) / ALLOCATION_GRANULE * ALLOCATION_GRANULE;
    return rounded ? rounded : ALLOCATION_GRANULE;
}

allocator_params allocator_default_params(void) {
    return (allocator_params){
        .policy = MEMORY_POLICY_GROWTH,
        .limit_bytes = 0,
        .growth_min_bytes = 0,
        .rank = -1,
        .limit_source = NULL,
    };
}

static const char *device_name(const device *dev) {
    return dev->description[0] ? dev->description : device_kind_name(dev->kind);
}

/* "rank 3: " or "" when the allocator has no rank. */
static const char *rank_prefix(const allocator *alloc, char *buffer, size_t size) {
    if (alloc->params.rank < 0)
        buffer[0] = '\0';
    else
        snprintf(buffer, size, "rank %d: ", alloc->params.rank);
    return buffer;
}

/* Takes a region of `bytes` from the device and appends one free block covering it. On
 * failure nothing changes and the backend's message is left for the caller to quote. */
static ddt_status reserve_region(allocator *alloc, size_t bytes) {
    size_t usable = bytes / ALLOCATION_GRANULE * ALLOCATION_GRANULE;
    if (usable == 0)
        return ddt_error(DDT_ERR_INTERNAL, "device memory region of %zu bytes is too small", bytes);
    if (alloc->stats.region_count == alloc->region_capacity) {
        size_t capacity = alloc->region_capacity ? 2 * alloc->region_capacity : 8;
        region *regions = realloc(alloc->regions, capacity * sizeof *regions);
        if (!regions) return ddt_error(DDT_ERR_MEMORY, "out of host memory growing the allocator");
        alloc->regions = regions;
        alloc->region_capacity = capacity;
    }
    block *free_block = calloc(1, sizeof *free_block);
    if (!free_block) return ddt_error(DDT_ERR_MEMORY, "out of host memory growing the allocator");
    void *base = NULL;
    ddt_status status = device_memory_alloc(alloc->dev, bytes, &base);
    if (status != DDT_OK || !base) {
        free(free_block);
        if (status == DDT_OK) /* a backend bug; do not let it pass as success */
            return ddt_error(DDT_ERR_INTERNAL, "%s returned no memory for %zu bytes",
                             device_kind_name(alloc->dev->kind), bytes);
        return status;
    }
    size_t index = alloc->stats.region_count++;
    alloc->regions[index] = (region){base, bytes};
    *free_block = (block){.previous = alloc->last,
                          .next = NULL,
                          .pointer = base,
                          .bytes = usable,
                          .region = index,
                          .in_use = false};
    if (alloc->last)
        alloc->last->next = free_block;
    else
        alloc->first = free_block;
    alloc->last = free_block;
    alloc->stats.reserved_bytes += bytes;
    if (alloc->stats.reserved_bytes > alloc->stats.peak_reserved_bytes)
        alloc->stats.peak_reserved_bytes = alloc->stats.reserved_bytes;
    return DDT_OK;
}

/* Preallocate: the whole limit now, or a clear failure now rather than mid-run. */
static ddt_status preallocate(allocator *alloc) {
    size_t limit = alloc->params.limit_bytes;
    char prefix[32], limit_text[32], total_text[32], free_text[32], source[160] = "";
    rank_prefix(alloc, prefix, sizeof prefix);
    units_format_bytes(limit, limit_text, sizeof limit_text);
    if (alloc->params.limit_source)
        snprintf(source, sizeof source, " (%s)", alloc->params.limit_source);
    const char *advice = "lower the limit, or use --device-memory growth";

    /* Backends may commit memory as they hand it out (the CPU one zero-fills), so asking for
     * more than is free could end in the kernel's OOM killer instead of an error. */
    size_t total = 0, available = 0;
    if (device_memory_info(alloc->dev, &total, &available) == DDT_OK) { /* else: cannot tell */
        if (limit > total)
            return ddt_error(DDT_ERR_MEMORY,
                             "%scannot preallocate %s (%zu bytes) of device memory%s: %s has "
                             "only %s in all: %s",
                             prefix, limit_text, limit, source, device_name(alloc->dev),
                             units_format_bytes(total, total_text, sizeof total_text), advice);
        if (limit > available)
            return ddt_error(DDT_ERR_MEMORY,
                             "%scannot preallocate %s (%zu bytes) of device memory%s: only %s of "
                             "%s on %s is free: %s",
                             prefix, limit_text, limit, source,
                             units_format_bytes(available, free_text, sizeof free_text),
                             units_format_bytes(total, total_text, sizeof total_text),
                             device_name(alloc->dev), advice);
    }
    ddt_status status = reserve_region(alloc, limit);
    if (status != DDT_OK) {
        char reason[256];
        snprintf(reason, sizeof reason, "%s", ddt_error_message());
        return ddt_error(status == DDT_ERR_INTERNAL ? status : DDT_ERR_MEMORY,
                         "%scannot preallocate %s (%zu bytes) of device memory%s on %s: %s: %s",
                         prefix, limit_text, limit, source, device_name(alloc->dev), reason,
                         advice);
    }
    return DDT_OK;
}

ddt_status allocator_open_with_params(device *dev, const allocator_params *params,
                                      allocator **out) {
    *out = NULL;
    allocator_params p = params ? *params : allocator_default_params();
    if (p.policy != MEMORY_POLICY_GROWTH && p.policy != MEMORY_POLICY_PREALLOCATE)
        return ddt_error(DDT_ERR_USAGE, "unknown device memory policy %d", (int)p.policy);
    if (p.policy == MEMORY_POLICY_PREALLOCATE && p.limit_bytes == 0)
        return ddt_error(DDT_ERR_USAGE,
                         "--device-memory preallocate needs a limit: set --device-memory-limit "
                         "(e.g. 6GiB or 0.9), or use --device-memory growth");
    if (p.policy == MEMORY_POLICY_PREALLOCATE && p.limit_bytes < ALLOCATION_GRANULE)
        return ddt_error(DDT_ERR_USAGE, "device memory limit of %zu bytes is below the minimum %d",
                         p.limit_bytes, ALLOCATION_GRANULE);
    if (p.growth_min_bytes == 0) p.growth_min_bytes = DEFAULT_GROWTH_MIN_BYTES;
    p.growth_min_bytes = allocator_rounded_size(p.growth_min_bytes);

    allocator *alloc = calloc(1, sizeof *alloc);
    if (!alloc) return ddt_error(DDT_ERR_MEMORY, "out of host memory creating the allocator");
    alloc->dev = dev;
    alloc->params = p;
    alloc->growth_step = p.growth_min_bytes;
    alloc->stats.limit_bytes = p.limit_bytes;
    if (p.policy == MEMORY_POLICY_PREALLOCATE) {
        ddt_status status = preallocate(alloc);
        if (status != DDT_OK) {
            allocator_close(alloc);
            return status;
        }
    }
    *out = alloc;
    return DDT_OK;
}

ddt_status allocator_open(device *dev, allocator **out) {
    allocator_params params = allocator_default_params();
    return allocator_open_with_params(dev, &params, out);
}

void allocator_close(allocator *alloc) {
    if (!alloc) return;
    for (block *b = alloc->first, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    for (size_t i = alloc->stats.region_count; i-- > 0;)
        device_memory_free(alloc->dev, alloc->regions[i].base);
    free(alloc->regions);
    free(alloc);
}

/* --- allocation --------------------------------------------------------------------------- */

static block *first_fit(const allocator *alloc, size_t bytes) {
    for (block *b = alloc->first; b; b = b->next)
        if (!b->in_use && b->bytes >= bytes) return b;
    return NULL;
}

static size_t largest_free_block(const allocator *alloc) {
    size_t largest = 0;
    for (const block *b = alloc->first; b; b = b->next)
        if (!b->in_use && b->bytes > largest) largest = b->bytes;
    return largest;
}

static const char *component_advice(memory_component component) {
    switch (component) {
    case MEMORY_COMPONENT_ACTIVATIONS:
    case MEMORY_COMPONENT_WORKSPACE:
    case MEMORY_COMPONENT_STAGING:
        return "use a smaller --micro-batch with more accumulation steps";
    case MEMORY_COMPONENT_PARAMETERS:
    case MEMORY_COMPONENT_GRADIENTS:
    case MEMORY_COMPONENT_OPTIMIZER:
        return "use a smaller --model";
    case MEMORY_COMPONENT_BUCKETS:
        return "use a smaller --bucket-size";
    case MEMORY_COMPONENT_COUNT:
        break;
    }
    return "use less memory";
}

/* The request would take the reserved total past the limit (or, under preallocate, nothing
 * free fits in the one region). */
static ddt_status limit_error(const allocator *alloc, memory_component component, size_t bytes) {
    char prefix[32], asked[32], in_use[32], limit[32], largest[32], source[160] = "",
                                                                    fragmented[160] = "";
    size_t limit_bytes = alloc->params.limit_bytes;
    size_t largest_bytes = largest_free_block(alloc);
    if (alloc->params.limit_source)
        snprintf(source, sizeof source, " (%s)", alloc->params.limit_source);
    /* Enough bytes free in total but no single piece big enough: say so, or the numbers in
     * the message would seem to contradict the refusal. */
    if (alloc->stats.bytes_in_use <= limit_bytes &&
        bytes <= limit_bytes - alloc->stats.bytes_in_use)
        snprintf(fragmented, sizeof fragmented,
                 "; the free space is in pieces, the largest %s, and regions cannot be merged",
                 units_format_bytes(largest_bytes, largest, sizeof largest));
    return ddt_error(DDT_ERR_MEMORY,
                     "%s%s asked for %s (%zu bytes) of device memory, but %s (%zu bytes) of the "
                     "%s (%zu bytes) limit is in use%s%s: %s, or raise the limit",
                     rank_prefix(alloc, prefix, sizeof prefix), memory_component_name(component),
                     units_format_bytes(bytes, asked, sizeof asked), bytes,
                     units_format_bytes(alloc->stats.bytes_in_use, in_use, sizeof in_use),
                     alloc->stats.bytes_in_use,
                     units_format_bytes(limit_bytes, limit, sizeof limit), limit_bytes, source,
                     fragmented, component_advice(component));
}

/* Growth: a new region big enough for `bytes`, within the limit. */
static ddt_status grow(allocator *alloc, memory_component component, size_t bytes) {
    size_t limit = alloc->params.limit_bytes;
    size_t reserved = alloc->stats.reserved_bytes;
    size_t headroom = limit == 0 ? SIZE_MAX : limit > reserved ? limit - reserved : 0;
    if (bytes > headroom) return limit_error(alloc, component, bytes);
    size_t step = alloc->growth_step;
    size_t wanted = bytes > step ? bytes : step;
    if (wanted > headroom) wanted = bytes; /* the step would pass the limit: just what is needed */

    ddt_status status = reserve_region(alloc, wanted);
    if (status != DDT_OK && status != DDT_ERR_INTERNAL && wanted > bytes)
        status = reserve_region(alloc, bytes); /* the device may still have room for less */
    if (status != DDT_OK) {
        char prefix[32], asked[32], in_use[32], reserved_text[32], reason[256];
        snprintf(reason, sizeof reason, "%s", ddt_error_message());
        return ddt_error(status == DDT_ERR_INTERNAL ? status : DDT_ERR_MEMORY,
                         "%scannot allocate %s of %s (%zu bytes) on %s (%s in use, %s reserved): "
                         "%s: %s",
                         rank_prefix(alloc, prefix, sizeof prefix),
                         units_format_bytes(bytes, asked, sizeof asked),
                         memory_component_name(component), bytes, device_name(alloc->dev),
                         units_format_bytes(alloc->stats.bytes_in_use, in_use, sizeof in_use),
                         units_format_bytes(reserved, reserved_text, sizeof reserved_text), reason,
                         component_advice(component));
    }
    alloc->growth_step = step <= SIZE_MAX / 2 ? 2 * step : step;
    return DDT_OK;
}

ddt_status allocator_alloc(allocator *alloc, memory_component component, size_t bytes, void **out) {
    *out = NULL;
    if ((unsigned)component >= MEMORY_COMPONENT_COUNT)
        return ddt_error(DDT_ERR_INTERNAL, "allocator_alloc: bad memory component %d",
                         (int)component);
    size_t rounded = allocator_rounded_size(bytes);
    if (rounded == SIZE_MAX)
        return ddt_error(DDT_ERR_MEMORY, "cannot allocate %zu bytes for %s: size too large", bytes,
                         memory_component_name(component));

    /* The split-off remainder's node is allocated first, so a failure changes nothing. */
    block *remainder = malloc(sizeof *remainder);
    if (!remainder) return ddt_error(DDT_ERR_MEMORY, "out of host memory growing the allocator");
    block *b = first_fit(alloc, rounded);
    if (!b) {
        ddt_status status = alloc->params.policy == MEMORY_POLICY_PREALLOCATE
                                ? limit_error(alloc, component, rounded)
                                : grow(alloc, component, rounded);
        if (status != DDT_OK) {
            free(remainder);
            return status;
        }
        b = alloc->last; /* the new region's one free block */
    }
    if (b->bytes > rounded) {
        *remainder = (block){.previous = b,
                             .next = b->next,
                             .pointer = b->pointer + rounded,
                             .bytes = b->bytes - rounded,
                             .region = b->region,
                             .in_use = false};
        if (b->next)
            b->next->previous = remainder;
        else
            alloc->last = remainder;
        b->next = remainder;
        b->bytes = rounded;
    } else {
        free(remainder);
    }
    b->in_use = true;
    b->component = component;
    /* Reused space holds old data, and backends need not zero; the contract says zero-filled. */
    device_fill_zero(alloc->dev, b->pointer, rounded);

    allocator_stats *s = &alloc->stats;
    s->bytes_in_use += rounded;
    s->component_bytes[component] += rounded;
    s->allocation_count++;
    if (s->bytes_in_use > s->peak_bytes) s->peak_bytes = s->bytes_in_use;
    if (s->component_bytes[component] > s->component_peak_bytes[component])
        s->component_peak_bytes[component] = s->component_bytes[component];
    *out = b->pointer;
    return DDT_OK;
}

/* Folds `b->next` into `b`; both free and in the same region. */
static void merge_with_next(allocator *alloc, block *b) {
    block *next = b->next;
    b->bytes += next->bytes;
    b->next = next->next;
    if (next->next)
        next->next->previous = b;
    else
        alloc->last = b;
    free(next);
}

void allocator_free(allocator *alloc, void *pointer) {
    if (!alloc || !pointer) return;
    block *b = alloc->first;
    while (b && !(b->in_use && b->pointer == pointer))
        b = b->next;
    /* A pointer this allocator did not hand out: there is no status to return from a free,
     * and guessing would corrupt the books, so it is left alone. */
    if (!b) return;
    b->in_use = false;
    alloc->stats.bytes_in_use -= b->bytes;
    alloc->stats.component_bytes[b->component] -= b->bytes;
    alloc->stats.allocation_count--;
    if (b->next && !b->next->in_use && b->next->region == b->region) merge_with_next(alloc, b);
    if (b->previous && !b->previous->in_use && b->previous->region == b->region)
        merge_with_next(alloc, b->previous);
}

allocator_stats allocator_get_stats(const allocator *alloc) {
    return alloc->stats;
}

device *allocator_device(const allocator *alloc) {
    return alloc->dev;
}
