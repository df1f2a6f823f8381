/* alloc.h - the one allocator through which every buffer on the compute device comes.
 *
 * Parameters, gradients, optimizer state, activations, workspace, communication buckets and
 * device-side staging are all allocated here, each tagged with the component that asked, so
 * ddtrain can report and limit what each part of training uses. One allocator per rank.
 *
 * The allocator reserves large *regions* from the device backend (device_memory_alloc(),
 * called nowhere else) and hands out pieces of them: first fit over a free list, neighbours
 * merged again on free, every size rounded by allocator_rounded_size() (a multiple of 256
 * bytes, at least 256). Offsets inside a region are multiples of 256, so a piece is as aligned
 * as the backend aligns regions (CPU 64 bytes, cudaMalloc 256), up to 256. Regions are kept
 * until allocator_close(). Two policies decide when regions are reserved:
 *   MEMORY_POLICY_PREALLOCATE  one region of exactly limit_bytes, reserved at init; init fails
 *                              at once (DDT_ERR_MEMORY) if the device cannot give it;
 *   MEMORY_POLICY_GROWTH       a region only when nothing free fits: max(request, step), the
 *                              step starting at growth_min_bytes and doubling per region, and
 *                              just the request where the step would pass the limit.
 * Either way the reserved total never exceeds limit_bytes (0 = no limit), and asking for more
 * than fits is DDT_ERR_MEMORY with a message naming the rank, the component, the bytes asked
 * for, the bytes in use, the limit, and what to change; never a crash or a hang.
 *
 * Ownership: whoever calls allocator_alloc() calls allocator_free() on the pointer, or
 * allocator_close() releases everything still allocated (and every region). The allocator
 * does not own `dev`, nor params->limit_source (which must outlive the allocator).
 *
 * Usage:
 *     allocator_params params = allocator_default_params();
 *     params.policy = MEMORY_POLICY_PREALLOCATE;
 *     params.limit_bytes = (size_t)2 << 30;
 *     params.rank = rank;
 *     params.limit_source = "--device-memory-limit 2GiB";
 *     allocator *alloc;
 *     DDT_CHECK(allocator_open_with_params(dev, &params, &alloc));
 *     float *weights;
 *     DDT_CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, n * sizeof(float),
 *                               (void **)&weights));
 *     ...
 *     allocator_close(alloc);
 */
#ifndef DDT_ENGINE_ALLOC_H
#define DDT_ENGINE_ALLOC_H

#include <stddef.h>

#include "engine/device.h"
#include "util/units.h"
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

typedef enum memory_policy {
    MEMORY_POLICY_GROWTH,      /* --device-memory growth */
    MEMORY_POLICY_PREALLOCATE, /* --device-memory preallocate */
} memory_policy;

typedef struct allocator allocator;

typedef struct allocator_params {
    memory_policy policy;
    size_t limit_bytes;      /* most bytes ever reserved from the device; 0 = no limit */
    size_t growth_min_bytes; /* growth: the first region; 0 = default 2 MiB */
    int rank;                /* for messages; -1 = none */
    /* How the user set the limit, quoted in messages, e.g. "--device-memory-limit 2GiB" or
     * "DDTRAIN_DEVICE_MEMORY_LIMIT=0.5"; may be NULL. Not copied: must outlive the allocator. */
    const char *limit_source;
} allocator_params;

/* All sizes in bytes, counted as allocator_rounded_size() counts them. Regions are never
 * returned before allocator_close(), so peak_reserved_bytes == reserved_bytes; both are kept
 * so a summary need not know that. Per-component peaks are each component's own maximum; they
 * need not have happened at the same time, so their sum may exceed peak_bytes. */
typedef struct allocator_stats {
    size_t bytes_in_use;                                 /* handed out and not yet freed */
    size_t peak_bytes;                                   /* maximum of bytes_in_use */
    size_t component_bytes[MEMORY_COMPONENT_COUNT];      /* in use now, per component */
    size_t allocation_count;                             /* live allocations */
    size_t component_peak_bytes[MEMORY_COMPONENT_COUNT]; /* maximum in use, per component */
    size_t reserved_bytes;                               /* regions taken from the device */
    size_t peak_reserved_bytes;                          /* maximum of reserved_bytes */
    size_t limit_bytes;                                  /* 0 = no limit */
    size_t region_count;
} allocator_stats;

/* Growth, no limit, default step, no rank: the same as allocator_open_with_params() with
 * allocator_default_params(). */
ddt_status allocator_open(device *dev, allocator **out);
/* Growth, no limit, growth_min_bytes 0 (2 MiB), rank -1, limit_source NULL. */
allocator_params allocator_default_params(void);
/* DDT_ERR_USAGE for preallocate without a limit or an unknown policy; DDT_ERR_MEMORY if
 * preallocate cannot reserve the limit (more than the device has, or has free, or the device
 * refuses). The caller frees with allocator_close(). */
ddt_status allocator_open_with_params(device *dev, const allocator_params *params, allocator **out);
/* Destroys the allocator, frees every allocation it still holds and returns every region to
 * the device. NULL is allowed. */
void allocator_close(allocator *alloc);

/* Allocates `bytes` for `component` (counted as allocator_rounded_size(bytes)); memory is
 * zero-filled. On failure *out is NULL, nothing changes, and the message says what to do. */
ddt_status allocator_alloc(allocator *alloc, memory_component component, size_t bytes, void **out);
/* Frees a pointer from allocator_alloc(); its space is reused by later allocations (the region
 * stays reserved). NULL is allowed; a pointer this allocator did not hand out is ignored. */
void allocator_free(allocator *alloc, void *pointer);

/* What an allocation of `bytes` counts as, for memory plans: rounded up to a multiple of 256,
 * at least 256 (so even empty buffers get distinct pointers). SIZE_MAX if it cannot be rounded
 * (such an allocation fails). */
size_t allocator_rounded_size(size_t bytes);

allocator_stats allocator_get_stats(const allocator *alloc);
const char *memory_component_name(memory_component component);
device *allocator_device(const allocator *alloc);

/* "growth" / "preallocate". */
const char *memory_policy_name(memory_policy policy);
/* Parses "growth" or "preallocate"; DDT_ERR_USAGE naming the accepted values otherwise. */
ddt_status memory_policy_parse(const char *text, memory_policy *out);

/* A --device-memory-limit as the user wrote it: a size, a fraction of the device, or none. */
typedef struct memory_limit {
    size_t bytes;    /* an absolute size; 0 if given as a fraction or none */
    double fraction; /* of the device's total memory, in (0, 1]; 0 if given in bytes or none */
} memory_limit;

/* Parses a size with a unit, by util/units.h's one rule ("6GiB", "512MiB", "1.5G", "4096B",
 * "2GB"), a bare number in (0, 1] as a fraction of the device ("0.5"), or "none" (no limit).
 * Here a bare number is never bytes: above 1 it is a usage error (so "2" cannot mean two bytes
 * by accident), as is a zero size. */
ddt_status memory_limit_parse(const char *text, memory_limit *out);
/* The limit in bytes for a device with `device_total_bytes` (from device_memory_info());
 * 0 for none. A fraction is rounded down to a multiple of 256. */
size_t memory_limit_resolve(memory_limit limit, size_t device_total_bytes);

#endif
