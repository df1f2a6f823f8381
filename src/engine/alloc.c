/* alloc.c - the single place every device buffer is allocated and freed (alloc.h).
 *
 * Each live allocation is a row in a small table (pointer, rounded size, component), which
 * gives per-component usage, the peak, and lets allocator_destroy() release whatever is left.
 * Memory limits and preallocation policies belong here too, so no other file calls
 * device->ops->memory_alloc.
 */
#include "engine/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALLOCATION_GRANULE 256

typedef struct allocation {
    void *pointer;
    size_t bytes; /* rounded up to ALLOCATION_GRANULE */
    memory_component component;
} allocation;

struct allocator {
    device *dev;
    allocation *table; /* live allocations, unordered */
    size_t count;
    size_t capacity;
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
        return "staging";
    case MEMORY_COMPONENT_COUNT:
        break;
    }
    return "unknown";
}

ddt_status allocator_init(device *dev, allocator **out) {
    *out = NULL;
    allocator *alloc = calloc(1, sizeof *alloc);
    if (!alloc) return ddt_error(DDT_ERR_MEMORY, "out of host memory creating the allocator");
    alloc->dev = dev;
    *out = alloc;
    return DDT_OK;
}

void allocator_destroy(allocator *alloc) {
    if (!alloc) return;
    for (size_t i = 0; i < alloc->count; i++)
        alloc->dev->ops->memory_free(alloc->dev, alloc->table[i].pointer);
    free(alloc->table);
    free(alloc);
}

ddt_status allocator_alloc(allocator *alloc, memory_component component, size_t bytes, void **out) {
    *out = NULL;
    if ((unsigned)component >= MEMORY_COMPONENT_COUNT)
        return ddt_error(DDT_ERR_INTERNAL, "allocator_alloc: bad memory component %d",
                         (int)component);
    if (bytes > SIZE_MAX - ALLOCATION_GRANULE)
        return ddt_error(DDT_ERR_MEMORY, "cannot allocate %zu bytes for %s: size too large", bytes,
                         memory_component_name(component));
    size_t rounded = (bytes + ALLOCATION_GRANULE - 1) / ALLOCATION_GRANULE * ALLOCATION_GRANULE;
    if (rounded == 0) rounded = ALLOCATION_GRANULE; /* distinct pointers even for empty buffers */

    if (alloc->count == alloc->capacity) {
        size_t capacity = alloc->capacity ? 2 * alloc->capacity : 16;
        allocation *table = realloc(alloc->table, capacity * sizeof *table);
        if (!table) return ddt_error(DDT_ERR_MEMORY, "out of host memory growing the allocator");
        alloc->table = table;
        alloc->capacity = capacity;
    }

    void *pointer = NULL;
    ddt_status status = alloc->dev->ops->memory_alloc(alloc->dev, rounded, &pointer);
    if (status != DDT_OK) {
        char reason[256];
        snprintf(reason, sizeof reason, "%s", ddt_error_message());
        return ddt_error(status, "cannot allocate %.1f MiB of %s on %s (%.1f MiB in use): %s",
                         rounded / 1048576.0, memory_component_name(component),
                         alloc->dev->description[0] ? alloc->dev->description
                                                    : alloc->dev->ops->name,
                         alloc->stats.bytes_in_use / 1048576.0, reason);
    }
    /* Backends need not zero what they hand out; the contract here says zero-filled. */
    alloc->dev->ops->fill_zero(alloc->dev, pointer, rounded);

    alloc->table[alloc->count++] = (allocation){pointer, rounded, component};
    alloc->stats.bytes_in_use += rounded;
    alloc->stats.component_bytes[component] += rounded;
    alloc->stats.allocation_count = alloc->count;
    if (alloc->stats.bytes_in_use > alloc->stats.peak_bytes)
        alloc->stats.peak_bytes = alloc->stats.bytes_in_use;
    *out = pointer;
    return DDT_OK;
}

void allocator_free(allocator *alloc, void *pointer) {
    if (!alloc || !pointer) return;
    for (size_t i = 0; i < alloc->count; i++) {
        if (alloc->table[i].pointer != pointer) continue;
        allocation entry = alloc->table[i];
        alloc->table[i] = alloc->table[--alloc->count];
        alloc->stats.bytes_in_use -= entry.bytes;
        alloc->stats.component_bytes[entry.component] -= entry.bytes;
        alloc->stats.allocation_count = alloc->count;
        alloc->dev->ops->memory_free(alloc->dev, pointer);
        return;
    }
    /* A pointer this allocator did not hand out: freeing it would corrupt the backend's heap,
     * so it is left alone (there is no status to return from a free). */
}

allocator_stats allocator_get_stats(const allocator *alloc) {
    return alloc->stats;
}

device *allocator_device(const allocator *alloc) {
    return alloc->dev;
}
