/* alloc.h - the one allocator through which every buffer on the compute device comes.
 *
 * Parameters, gradients, optimizer state, activations, workspace and communication buckets
 * are all allocated here, each tagged with the component that asked, so ddtrain can report
 * (and, with the memory-budget work, limit) what each part of training uses. The allocator
 * draws raw memory from the device backend (device->ops->memory_alloc).
 *
 * Ownership: whoever calls allocator_alloc() calls allocator_free() on the pointer, or
 * allocator_destroy() releases everything still allocated. The allocator does not own `dev`.
 *
 * Usage:
 *     allocator *alloc;
 *     DDT_CHECK(allocator_init(dev, &alloc));
 *     float *params;
 *     DDT_CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, n * sizeof(float),
 *                               (void **)&params));
 *     ...
 *     allocator_destroy(alloc);
 */
#ifndef DDT_ENGINE_ALLOC_H
#define DDT_ENGINE_ALLOC_H

#include <stddef.h>

#include "engine/device.h"
#include "util/status.h"

typedef enum memory_component {
    MEMORY_COMPONENT_PARAMETERS,
    MEMORY_COMPONENT_GRADIENTS,
    MEMORY_COMPONENT_OPTIMIZER,
    MEMORY_COMPONENT_ACTIVATIONS,
    MEMORY_COMPONENT_WORKSPACE,
    MEMORY_COMPONENT_BUCKETS,
    MEMORY_COMPONENT_STAGING,
    MEMORY_COMPONENT_COUNT,
} memory_component;

typedef struct allocator allocator;

typedef struct allocator_stats {
    size_t bytes_in_use;
    size_t peak_bytes;
    size_t component_bytes[MEMORY_COMPONENT_COUNT]; /* in use now, per component */
    size_t allocation_count;                        /* live allocations */
} allocator_stats;

ddt_status allocator_init(device *dev, allocator **out);
/* Destroys the allocator and frees every allocation it still holds. NULL is allowed. */
void allocator_destroy(allocator *alloc);

/* Allocates `bytes` (rounded up to 256) for `component`; memory is zero-filled. */
ddt_status allocator_alloc(allocator *alloc, memory_component component, size_t bytes, void **out);
/* Frees a pointer from allocator_alloc(). NULL is allowed. */
void allocator_free(allocator *alloc, void *pointer);

allocator_stats allocator_get_stats(const allocator *alloc);
const char *memory_component_name(memory_component component);
device *allocator_device(const allocator *alloc);

#endif
