/* test_engine_alloc.c - the device allocator: the preallocate and growth policies, the limit
 * and its error message, first fit with coalescing, rounding as memory plans count it,
 * per-component peaks, backends that refuse memory, and the CPU backend's memory_info.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/device_backend.h" /* a fake backend wrapping the CPU one */

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

static device *dev;

/* A CPU device whose memory operations are counted and can be made to refuse. */
static device_ops fake_ops;
static device fake;
static int fake_allocs, fake_frees, fake_info_calls;
static size_t fake_refuse_above;     /* memory_alloc fails for more bytes than this; 0 = never */
static size_t fake_total, fake_free; /* memory_info reports these; total 0 = the real values */

static ddt_status fake_memory_alloc(device *d, size_t bytes, void **out) {
    if (fake_refuse_above && bytes > fake_refuse_above) {
        *out = NULL;
        return ddt_error(DDT_ERR_MEMORY, "out of device memory: cannot allocate %zu bytes", bytes);
    }
    fake_allocs++;
    return dev->ops->memory_alloc(d, bytes, out);
}

static void fake_memory_free(device *d, void *pointer) {
    fake_frees++;
    dev->ops->memory_free(d, pointer);
}

static ddt_status fake_memory_info(device *d, size_t *total, size_t *available) {
    fake_info_calls++;
    if (!fake_total) return dev->ops->memory_info(d, total, available);
    *total = fake_total;
    *available = fake_free;
    return DDT_OK;
}

static device *fake_device(void) {
    fake_ops = *dev->ops;
    fake_ops.memory_alloc = fake_memory_alloc;
    fake_ops.memory_free = fake_memory_free;
    fake_ops.memory_info = fake_memory_info;
    fake = *dev;
    fake.ops = &fake_ops;
    fake_allocs = fake_frees = fake_info_calls = 0;
    fake_refuse_above = fake_total = fake_free = 0;
    return &fake;
}

static bool message_has(const char *part) {
    bool found = strstr(ddt_error_message(), part) != NULL;
    if (!found) fprintf(stderr, "  message lacks '%s': %s\n", part, ddt_error_message());
    return found;
}

static bool all_zero(const void *pointer, size_t bytes) {
    const unsigned char *p = pointer;
    for (size_t i = 0; i < bytes; i++)
        if (p[i]) return false;
    return true;
}

static void check_rounding_and_formats(void) {
    CHECK(allocator_rounded_size(0) == 256);
    CHECK(allocator_rounded_size(1) == 256);
    CHECK(allocator_rounded_size(256) == 256);
    CHECK(allocator_rounded_size(257) == 512);
    CHECK(allocator_rounded_size(1000) == 1024);
    CHECK(allocator_rounded_size(SIZE_MAX) == SIZE_MAX);

    char text[32];
    CHECK(strcmp(units_format_bytes(512, text, sizeof text), "512 bytes") == 0);
    CHECK(strcmp(units_format_bytes(12 * KIB, text, sizeof text), "12.0 KiB") == 0);
    CHECK(strcmp(units_format_bytes(12 * MIB, text, sizeof text), "12.0 MiB") == 0);
    CHECK(strcmp(units_format_bytes(2048 * MIB - 50 * MIB, text, sizeof text), "1.95 GiB") == 0);

    memory_policy policy = MEMORY_POLICY_GROWTH;
    CHECK_OK(memory_policy_parse("preallocate", &policy));
    CHECK(policy == MEMORY_POLICY_PREALLOCATE);
    CHECK_OK(memory_policy_parse("growth", &policy));
    CHECK(policy == MEMORY_POLICY_GROWTH);
    CHECK(memory_policy_parse("grow", &policy) == DDT_ERR_USAGE);
    CHECK(message_has("growth or preallocate"));
    CHECK(strcmp(memory_policy_name(MEMORY_POLICY_PREALLOCATE), "preallocate") == 0);

    memory_limit limit;
    CHECK_OK(memory_limit_parse("6GiB", &limit));
    CHECK(limit.bytes == (size_t)6 << 30 && limit.fraction == 0.0);
    CHECK_OK(memory_limit_parse("512MiB", &limit));
    CHECK(limit.bytes == 512 * MIB);
    CHECK_OK(memory_limit_parse("1.5g", &limit));
    CHECK(limit.bytes == 1536 * MIB);
    CHECK_OK(memory_limit_parse("2GB", &limit));
    CHECK(limit.bytes == 2000000000);
    CHECK_OK(memory_limit_parse("4096B", &limit));
    CHECK(limit.bytes == 4096);
    CHECK_OK(memory_limit_parse("0.5", &limit));
    CHECK(limit.bytes == 0 && limit.fraction == 0.5);
    CHECK(memory_limit_resolve(limit, 1000 * MIB) == 500 * MIB);
    CHECK(memory_limit_resolve(limit, 1001) == 256); /* rounded down, never 0 */
    CHECK_OK(memory_limit_parse("none", &limit));
    CHECK(memory_limit_resolve(limit, 1000 * MIB) == 0);
    CHECK(memory_limit_parse("2", &limit) == DDT_ERR_USAGE);
    CHECK(message_has("no unit"));
    CHECK(memory_limit_parse("0", &limit) == DDT_ERR_USAGE);
    CHECK(memory_limit_parse("0GiB", &limit) == DDT_ERR_USAGE);
    CHECK(memory_limit_parse("-1GiB", &limit) == DDT_ERR_USAGE);
    CHECK(memory_limit_parse("6 parsecs", &limit) == DDT_ERR_USAGE);
    CHECK(message_has("unknown unit"));
    CHECK(memory_limit_parse("lots", &limit) == DDT_ERR_USAGE);
    CHECK(memory_limit_parse("", &limit) == DDT_ERR_USAGE);
}

static void check_memory_info(void) {
    CHECK(dev->ops->memory_info != NULL);
    size_t total = 0, available = 0;
    CHECK_OK(device_memory_info(dev, &total, &available));
    printf("cpu memory_info: total %zu bytes, free %zu bytes\n", total, available);
    CHECK(total >= 64 * MIB);
    CHECK(available > 0);
    CHECK(available <= total);
}

static void check_usage_errors(void) {
    allocator_params params = allocator_default_params();
    CHECK(params.policy == MEMORY_POLICY_GROWTH && params.limit_bytes == 0);
    CHECK(params.rank == -1 && params.limit_source == NULL && params.growth_min_bytes == 0);

    allocator *alloc = (allocator *)dev;
    params.policy = MEMORY_POLICY_PREALLOCATE;
    CHECK(allocator_open_with_params(dev, &params, &alloc) == DDT_ERR_USAGE);
    CHECK(alloc == NULL);
    CHECK(message_has("--device-memory-limit"));
    params.policy = (memory_policy)7;
    CHECK(allocator_open_with_params(dev, &params, &alloc) == DDT_ERR_USAGE);

    /* The old entry point is growth without a limit and reserves nothing up front. */
    CHECK_OK(allocator_open(dev, &alloc));
    allocator_stats stats = allocator_get_stats(alloc);
    CHECK(stats.reserved_bytes == 0 && stats.region_count == 0 && stats.limit_bytes == 0);
    void *block = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 1000, &block));
    stats = allocator_get_stats(alloc);
    CHECK(stats.reserved_bytes == 2 * MIB && stats.region_count == 1); /* the default step */
    CHECK(stats.bytes_in_use == allocator_rounded_size(1000));
    allocator_close(alloc);
}

static void check_preallocate(void) {
    device *d = fake_device();
    allocator_params params = allocator_default_params();
    params.policy = MEMORY_POLICY_PREALLOCATE;
    params.limit_bytes = 1 * MIB;
    params.rank = 1;
    params.limit_source = "--device-memory-limit 1MiB";
    allocator *alloc = NULL;
    CHECK_OK(allocator_open_with_params(d, &params, &alloc));
    if (!alloc) return;
    allocator_stats stats = allocator_get_stats(alloc);
    CHECK(stats.reserved_bytes == MIB && stats.peak_reserved_bytes == MIB);
    CHECK(stats.region_count == 1 && stats.limit_bytes == MIB);
    CHECK(stats.bytes_in_use == 0 && stats.allocation_count == 0);
    CHECK(fake_allocs == 1);

    /* Served from the one region, back to back, until full. */
    unsigned char *a = NULL, *b = NULL, *c = NULL, *e = NULL, *rest = NULL;
    size_t piece = allocator_rounded_size(300 * 1000); /* 300032 */
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, 300 * 1000, (void **)&a));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 300 * 1000, (void **)&b));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 300 * 1000, (void **)&c));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 100 * 1000, (void **)&e));
    if (!a || !b || !c || !e) goto done;
    CHECK(b == a + piece && c == b + piece && e == c + piece);
    CHECK((uintptr_t)a % 64 == 0); /* the CPU backend's region alignment */
    size_t used = 3 * piece + allocator_rounded_size(100 * 1000);
    stats = allocator_get_stats(alloc);
    CHECK(stats.bytes_in_use == used && stats.allocation_count == 4);
    CHECK(stats.region_count == 1 && fake_allocs == 1);

    /* Over the limit: a clear error, nothing changes. */
    void *refused = d;
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 50000, &refused) == DDT_ERR_MEMORY);
    CHECK(refused == NULL);
    char expected[256];
    CHECK(message_has("rank 1: activations asked for 49.0 KiB (50176 bytes) of device memory"));
    snprintf(expected, sizeof expected,
             "(%zu bytes) of the 1.0 MiB (1048576 bytes) limit is in use", used);
    CHECK(message_has(expected));
    CHECK(message_has("(--device-memory-limit 1MiB)"));
    CHECK(message_has("smaller --micro-batch with more accumulation steps, or raise the limit"));
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_OPTIMIZER, 50000, &refused) == DDT_ERR_MEMORY);
    CHECK(message_has("optimizer state asked for"));
    CHECK(message_has("smaller --model"));
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_BUCKETS, 50000, &refused) == DDT_ERR_MEMORY);
    CHECK(message_has("smaller --bucket-size"));
    stats = allocator_get_stats(alloc);
    CHECK(stats.bytes_in_use == used && stats.allocation_count == 4 && stats.region_count == 1);

    /* Exactly the rest fits; then not one byte more. */
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_STAGING, MIB - used, (void **)&rest));
    CHECK(rest == e + allocator_rounded_size(100 * 1000));
    CHECK(allocator_get_stats(alloc).bytes_in_use == MIB);
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_STAGING, 1, &refused) == DDT_ERR_MEMORY);
    CHECK(message_has("256 bytes (256 bytes)"));
    CHECK(message_has("1.0 MiB (1048576 bytes) of the 1.0 MiB (1048576 bytes) limit is in use"));

    /* Free two neighbours (the second merges with the first) and take their union: first
     * fit finds it at b, zero-filled although b and c held data. */
    memset(b, 0xab, 2 * piece);
    allocator_free(alloc, b);
    allocator_free(alloc, c);
    unsigned char *union_block = NULL;
    CHECK_OK(
        allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 2 * piece, (void **)&union_block));
    CHECK(union_block == b);
    CHECK(union_block && all_zero(union_block, 2 * piece));
    CHECK(allocator_get_stats(alloc).region_count == 1 && fake_allocs == 1);

    /* Merging with the following free block too: free a, then the union; a + union is one
     * free block again, and a request that spans both lands at a. */
    allocator_free(alloc, a);
    allocator_free(alloc, union_block);
    unsigned char *all_three = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 3 * piece, (void **)&all_three));
    CHECK(all_three == a);
    stats = allocator_get_stats(alloc);
    CHECK(stats.bytes_in_use == MIB && stats.allocation_count == 3 && stats.region_count == 1);

    /* Fragmented: enough bytes free, but not in one piece. */
    allocator_free(alloc, all_three);
    allocator_free(alloc, rest);
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 3 * piece + KIB, &refused) ==
          DDT_ERR_MEMORY);
    CHECK(message_has("in pieces"));

    allocator_free(alloc, e);
    stats = allocator_get_stats(alloc);
    CHECK(stats.bytes_in_use == 0 && stats.allocation_count == 0);
    CHECK(stats.peak_bytes == MIB && stats.reserved_bytes == MIB);
    /* All free again: the whole limit is one block. */
    void *whole = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, MIB, &whole));
    CHECK(whole == a);
done:
    allocator_close(alloc);
    CHECK(fake_frees == fake_allocs);
}

static void check_preallocate_failures(void) {
    device *d = fake_device();
    allocator_params params = allocator_default_params();
    params.policy = MEMORY_POLICY_PREALLOCATE;
    params.limit_bytes = 64 * MIB;
    params.rank = 3;
    params.limit_source = "DDTRAIN_DEVICE_MEMORY_LIMIT=64MiB";

    /* The device refuses: DDT_ERR_MEMORY at init, naming the bytes and the reason. */
    fake_refuse_above = 1 * MIB;
    allocator *alloc = (allocator *)d;
    CHECK(allocator_open_with_params(d, &params, &alloc) == DDT_ERR_MEMORY);
    CHECK(alloc == NULL);
    CHECK(message_has("rank 3: cannot preallocate 64.0 MiB (67108864 bytes)"));
    CHECK(message_has("DDTRAIN_DEVICE_MEMORY_LIMIT=64MiB"));
    CHECK(message_has("out of device memory"));
    CHECK(fake_allocs == 0 && fake_frees == 0);

    /* More than the device has, or has free: refused before asking the device. */
    fake_refuse_above = 0;
    fake_total = 32 * MIB;
    fake_free = 16 * MIB;
    CHECK(allocator_open_with_params(d, &params, &alloc) == DDT_ERR_MEMORY);
    CHECK(message_has("only 32.0 MiB in all"));
    fake_total = 128 * MIB;
    CHECK(allocator_open_with_params(d, &params, &alloc) == DDT_ERR_MEMORY);
    CHECK(message_has("only 16.0 MiB of 128.0 MiB"));
    CHECK(message_has("--device-memory growth"));
    CHECK(fake_allocs == 0 && fake_info_calls == 3);
    fake_free = 100 * MIB;
    CHECK_OK(allocator_open_with_params(d, &params, &alloc));
    CHECK(fake_allocs == 1);
    allocator_close(alloc);
    CHECK(fake_frees == 1);

    /* A backend without memory_info: the checks are skipped, not failed. */
    fake_ops.memory_info = NULL;
    fake_total = 1;
    CHECK_OK(allocator_open_with_params(d, &params, &alloc));
    allocator_close(alloc);
}

static void check_growth(void) {
    device *d = fake_device();
    allocator_params params = allocator_default_params();
    params.limit_bytes = 10 * MIB;
    params.growth_min_bytes = 1 * MIB;
    params.rank = 0;
    params.limit_source = "--device-memory-limit 10MiB";
    allocator *alloc = NULL;
    CHECK_OK(allocator_open_with_params(d, &params, &alloc));
    if (!alloc) return;
    CHECK(allocator_get_stats(alloc).reserved_bytes == 0 && fake_allocs == 0);

    /* Regions of max(request, step), the step doubling: 1, 2, 4 MiB; then the 8 MiB step
     * would pass the limit, so just the request. */
    struct {
        size_t bytes, reserved_after, regions_after;
    } steps[] = {
        {512 * KIB, 1 * MIB, 1}, /* region 0: 1 MiB */
        {768 * KIB, 3 * MIB, 2}, /* 512 KiB left in region 0 is too small: region 1, 2 MiB */
        {3 * MIB, 7 * MIB, 3},   /* region 2: 4 MiB */
        {2 * MIB, 9 * MIB, 4},   /* step 8 MiB > 3 MiB headroom: region 3 of just 2 MiB */
    };
    void *blocks[4] = {NULL};
    size_t in_use = 0;
    for (int i = 0; i < 4; i++) {
        CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, steps[i].bytes, &blocks[i]));
        in_use += steps[i].bytes;
        allocator_stats stats = allocator_get_stats(alloc);
        CHECK(stats.reserved_bytes == steps[i].reserved_after);
        CHECK(stats.region_count == steps[i].regions_after);
        CHECK(stats.peak_reserved_bytes == stats.reserved_bytes);
        CHECK(stats.reserved_bytes <= params.limit_bytes);
        CHECK(stats.bytes_in_use == in_use);
    }
    CHECK(fake_allocs == 4);

    /* 1.5 MiB fits nowhere and 1 MiB of headroom is left: the error, nothing reserved. */
    void *refused = d;
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_STAGING, 3 * MIB / 2, &refused) ==
          DDT_ERR_MEMORY);
    CHECK(refused == NULL);
    CHECK(message_has("rank 0: input staging asked for 1.5 MiB (1572864 bytes) of device memory, but "
                      "6.2 MiB (6553600 bytes) of the 10.0 MiB (10485760 bytes) limit is in use "
                      "(--device-memory-limit 10MiB)"));
    CHECK(message_has("in pieces"));
    CHECK(allocator_get_stats(alloc).reserved_bytes == 9 * MIB && fake_allocs == 4);
    /* 1 MiB fits in what region 1 has left, so nothing new is reserved. */
    unsigned char *last = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_STAGING, 1 * MIB, (void **)&last));
    CHECK(last == (unsigned char *)blocks[1] + 768 * KIB);
    CHECK(allocator_get_stats(alloc).reserved_bytes == 9 * MIB && fake_allocs == 4);
    allocator_free(alloc, last);

    /* Freeing returns nothing to the device; freed space is reused without growing. */
    for (int i = 0; i < 4; i++)
        allocator_free(alloc, blocks[i]);
    allocator_stats stats = allocator_get_stats(alloc);
    CHECK(stats.bytes_in_use == 0 && stats.allocation_count == 0);
    CHECK(stats.reserved_bytes == 9 * MIB && stats.region_count == 4 && fake_frees == 0);
    void *again = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 4 * MIB, &again));
    CHECK(again == blocks[2]); /* region 2, the first that holds 4 MiB */
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 1 * MIB, &again));
    CHECK(again == blocks[0]); /* region 0, whole again */
    CHECK(allocator_get_stats(alloc).region_count == 4 && fake_allocs == 4);
    allocator_close(alloc);
    CHECK(fake_frees == 4);

    /* A request above the limit on its own reserves nothing. */
    CHECK_OK(allocator_open_with_params(d, &params, &alloc));
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, 11 * MIB, &refused) ==
          DDT_ERR_MEMORY);
    CHECK(message_has("parameters asked for 11.0 MiB"));
    CHECK(message_has("0 bytes (0 bytes) of the 10.0 MiB"));
    CHECK(allocator_get_stats(alloc).reserved_bytes == 0);
    allocator_close(alloc);

    /* The device refuses the step but can give the request: growth falls back to it. */
    fake_device();
    fake_refuse_above = 3 * MIB;
    CHECK_OK(allocator_open_with_params(d, &params, &alloc));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 100, &again));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 1 * MIB, &again)); /* 2 MiB */
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 2 * MIB, &again)); /* not 4 */
    stats = allocator_get_stats(alloc);
    CHECK(stats.reserved_bytes == 5 * MIB && stats.region_count == 3);
    /* And refusing the request itself is DDT_ERR_MEMORY with the backend's reason. */
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_GRADIENTS, 4 * MIB, &refused) == DDT_ERR_MEMORY);
    CHECK(message_has("rank 0: cannot allocate 4.0 MiB of gradients (4194304 bytes)"));
    CHECK(message_has("out of device memory"));
    CHECK(allocator_get_stats(alloc).region_count == 3);
    allocator_close(alloc);
    CHECK(fake_frees == fake_allocs);
}

static void check_component_peaks(void) {
    allocator *alloc = NULL;
    CHECK_OK(allocator_open(dev, &alloc));
    void *parameters = NULL, *activations = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, 1000, &parameters));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 5000, &activations));
    allocator_free(alloc, activations);
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_ACTIVATIONS, 3000, &activations));
    allocator_stats stats = allocator_get_stats(alloc);
    /* Stats count exactly allocator_rounded_size() of each request. */
    CHECK(stats.component_bytes[MEMORY_COMPONENT_PARAMETERS] == allocator_rounded_size(1000));
    CHECK(stats.component_bytes[MEMORY_COMPONENT_ACTIVATIONS] == allocator_rounded_size(3000));
    CHECK(stats.component_peak_bytes[MEMORY_COMPONENT_ACTIVATIONS] == allocator_rounded_size(5000));
    CHECK(stats.component_peak_bytes[MEMORY_COMPONENT_PARAMETERS] == allocator_rounded_size(1000));
    CHECK(stats.component_peak_bytes[MEMORY_COMPONENT_GRADIENTS] == 0);
    CHECK(stats.peak_bytes == allocator_rounded_size(1000) + allocator_rounded_size(5000));
    CHECK(stats.bytes_in_use == allocator_rounded_size(1000) + allocator_rounded_size(3000));
    CHECK(stats.allocation_count == 2);
    /* Empty buffers still get distinct pointers. */
    void *empty1 = NULL, *empty2 = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 0, &empty1));
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 0, &empty2));
    CHECK(empty1 && empty2 && empty1 != empty2);
    CHECK(allocator_get_stats(alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE] == 512);
    /* Unknown pointers and NULL are ignored. */
    int unrelated;
    allocator_free(alloc, &unrelated);
    allocator_free(alloc, NULL);
    CHECK(allocator_get_stats(alloc).allocation_count == 4);
    void *bad = NULL;
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_COUNT, 16, &bad) == DDT_ERR_INTERNAL);
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, SIZE_MAX, &bad) == DDT_ERR_MEMORY);
    CHECK(bad == NULL);
    allocator_free(alloc, parameters);
    allocator_free(alloc, activations);
    allocator_free(alloc, empty1);
    allocator_free(alloc, empty2);
    stats = allocator_get_stats(alloc);
    CHECK(stats.allocation_count == 0 && stats.bytes_in_use == 0);
    for (int c = 0; c < MEMORY_COMPONENT_COUNT; c++)
        CHECK(stats.component_bytes[c] == 0);
    CHECK(stats.component_peak_bytes[MEMORY_COMPONENT_ACTIVATIONS] == allocator_rounded_size(5000));
    allocator_close(alloc);
}

/* Destroy releases live allocations and every region, whichever the policy. */
static void check_destroy_releases_everything(void) {
    device *d = fake_device();
    allocator_params params = allocator_default_params();
    params.growth_min_bytes = 4 * KIB;
    allocator *alloc = NULL;
    CHECK_OK(allocator_open_with_params(d, &params, &alloc));
    void *block = NULL;
    for (int i = 0; i < 40; i++)
        CHECK_OK(allocator_alloc(alloc, (memory_component)(i % MEMORY_COMPONENT_COUNT),
                                 (size_t)(i + 1) * 700, &block));
    allocator_stats stats = allocator_get_stats(alloc);
    CHECK(stats.allocation_count == 40);
    CHECK((int)stats.region_count == fake_allocs && fake_allocs > 1);
    size_t sum = 0;
    for (int c = 0; c < MEMORY_COMPONENT_COUNT; c++)
        sum += stats.component_bytes[c];
    CHECK(sum == stats.bytes_in_use);
    CHECK(stats.bytes_in_use <= stats.reserved_bytes);
    allocator_close(alloc);
    CHECK(fake_frees == fake_allocs);
    allocator_close(NULL);
}

int main(void) {
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    if (!dev) return check_finish();
    check_rounding_and_formats();
    check_memory_info();
    check_usage_errors();
    check_preallocate();
    check_preallocate_failures();
    check_growth();
    check_component_peaks();
    check_destroy_releases_everything();
    device_close(dev);
    return check_finish();
}
