/* mpi_test_comm_nccl.c - the NCCL backend under mpirun, one GPU per rank: bucketed gradient
 * all-reduce on device buffers equals a plain sum (ordered after the compute stream's work
 * before it, and before the compute stream's work after it), buckets start as layers finish,
 * more buckets in flight than the initial request pool, broadcast and blocking all-reduce,
 * the measured unrouted device memory, and the timeout path: when one rank does not join a
 * collective the others fail with DDT_ERR_COMM after aborting, instead of hanging.
 *
 * On one rank an in-place all-reduce changes nothing, so the stream ordering cannot be seen and
 * no peer can stay away: those two checks are reported as "not run: ... (1 rank)" (check.h),
 * not passed. Rank 0 prints the summary, summed over ranks.
 *
 * Asking for NCCL with a CPU device (or in a build without NCCL) must be a clear usage error on
 * every rank; that is checked everywhere. The rest needs NCCL in the build and a CUDA device
 * per rank on each node; without them rank 0 prints one "skipped: no GPU (...)" line and every
 * rank exits with 77, which CTest counts as skipped. */
#include <math.h>
#include <mpi.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "comm/comm.h"
#include "engine/alloc.h"
#include "engine/device.h"

enum { EXIT_SKIPPED = 77 };

static float value_at(int rank, size_t i) {
    return (float)((rank + 1) * 0.5 + (double)(i % 97) * 0.25);
}

static double sum_at(int world, size_t i) {
    double sum = 0;
    for (int r = 0; r < world; r++)
        sum += value_at(r, i);
    return sum;
}

/* A device buffer of `count` floats all equal to `value`; NULL on failure (recorded). */
static float *device_constant(device *dev, allocator *alloc, float value, size_t count) {
    float *host = malloc(count * sizeof(float));
    void *buffer = NULL;
    CHECK(host != NULL);
    if (!host) return NULL;
    for (size_t i = 0; i < count; i++)
        host[i] = value;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_GRADIENTS, count * sizeof(float), &buffer));
    if (buffer) {
        CHECK_OK(device_copy_host_to_device(dev, buffer, host, count * sizeof(float)));
        CHECK_OK(device_synchronize(dev));
    }
    free(host);
    return buffer;
}

/* Elements of host[0..count) that differ from factor * (the sum over ranks). */
static size_t count_wrong(const float *host, size_t count, int world, double factor) {
    size_t wrong = 0;
    for (size_t i = 0; i < count; i++) {
        double expected = factor * sum_at(world, i);
        if (fabs(host[i] - expected) > 1e-5 * fabs(expected)) wrong++;
    }
    return wrong;
}

/* A device buffer of `count` floats holding value_at(rank, i); NULL on failure (recorded). */
static float *device_values(device *dev, allocator *alloc, int rank, size_t count) {
    float *host = malloc(count * sizeof(float));
    void *buffer = NULL;
    CHECK(host != NULL);
    if (!host) return NULL;
    for (size_t i = 0; i < count; i++)
        host[i] = value_at(rank, i);
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_GRADIENTS, count * sizeof(float), &buffer));
    if (buffer) {
        CHECK_OK(device_copy_host_to_device(dev, buffer, host, count * sizeof(float)));
        CHECK_OK(device_synchronize(dev));
    }
    free(host);
    return buffer;
}

/* Copies a device buffer back (after all device work) and counts the elements that are not
 * factor * the sum over ranks. */
static size_t device_wrong(device *dev, const float *buffer, size_t count, int world,
                           double factor) {
    float *host = malloc(count * sizeof(float));
    CHECK(host != NULL);
    if (!host) return count;
    CHECK_OK(device_synchronize(dev));
    CHECK_OK(device_copy_device_to_host(dev, host, buffer, count * sizeof(float)));
    size_t wrong = count_wrong(host, count, world, factor);
    free(host);
    return wrong;
}

static void test_buckets(comm *c, device *dev, allocator *alloc, const size_t *points,
                         int point_count, size_t count, size_t bucket_bytes) {
    int rank = comm_rank(c), world = comm_world_size(c);
    float *grads = device_values(dev, alloc, rank, count);
    if (!grads) return;
    gradient_buckets *gb = NULL;
    CHECK_OK(gradient_buckets_init(c, grads, count, points, point_count, bucket_bytes, &gb));
    if (!gb) {
        allocator_free(alloc, grads);
        return;
    }
    float *plus_one = device_constant(dev, alloc, 1.0f, count);
    float *minus_world = device_constant(dev, alloc, (float)-world, count);
    gradient_bucket_stats stats = gradient_buckets_get_stats(gb);
    CHECK(stats.bucket_count >= 1 && stats.bucket_count <= point_count);

    /* Work queued on the compute stream, not waited for by the host: each rank adds 1 before
     * the reduction and subtracts the world size W after it, so the result is the plain sum
     * only if both orderings hold. A shift, not a scaling: scaling commutes with the sum, so
     * (2a + 2b) / 2 and 2(a + b) / 2 agree and a reduction that ran wholly before the doubling
     * on every rank would pass. Here it gives sum + 1 - W, and one that ran after the
     * subtraction sum + W - W^2: wrong on every rank once W >= 2. On one rank the reduction is
     * an identity, so every order gives the sum: the ordering is not run there (the values
     * and statistics below still are). */
    gradient_buckets_begin(gb);
    if (plus_one) device_add(dev, count, grads, plus_one, grads);
    /* Report layers finishing from the last to the first, as backward does. */
    for (int i = point_count - 1; i >= 0; i--)
        CHECK_OK(gradient_buckets_ready(gb, points[i]));
    CHECK_OK(gradient_buckets_finish(gb));
    if (minus_world) device_add(dev, count, grads, minus_world, grads);
    CHECK(device_wrong(dev, grads, count, world, 1.0) == 0);
    if (world < 2)
        check_not_run("stream ordering: compute work, bucketed all-reduce, compute work", "1 rank");
    stats = gradient_buckets_get_stats(gb);
    CHECK(stats.started_late == 0); /* every bucket started as its layers finished */

    /* A round where nothing is reported early: finish starts everything (and sums again). */
    gradient_buckets_begin(gb);
    CHECK_OK(gradient_buckets_finish(gb));
    CHECK(device_wrong(dev, grads, count, world, (double)world) == 0);
    stats = gradient_buckets_get_stats(gb);
    CHECK(stats.started_late == stats.bucket_count);
    gradient_buckets_free(gb);
    allocator_free(alloc, minus_world);
    allocator_free(alloc, plus_one);
    allocator_free(alloc, grads);
}

static void test_blocking(comm *c, device *dev, allocator *alloc) {
    int rank = comm_rank(c), world = comm_world_size(c);
    size_t count = 10007;
    float *values = device_values(dev, alloc, rank, count);
    if (!values) return;
    CHECK_OK(comm_allreduce_floats(c, values, count));
    CHECK(device_wrong(dev, values, count, world, 1.0) == 0);
    allocator_free(alloc, values);

    for (int root = 0; root<world; root += world - 1> 0 ? world - 1 : 1) {
        float host[3] = {0, 0, 0};
        if (rank == root) host[0] = 1, host[1] = 2, host[2] = (float)root;
        void *buffer = NULL;
        CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_PARAMETERS, sizeof host, &buffer));
        if (!buffer) return;
        CHECK_OK(device_copy_host_to_device(dev, buffer, host, sizeof host));
        CHECK_OK(device_synchronize(dev));
        CHECK_OK(comm_broadcast_floats(c, buffer, 3, root));
        CHECK_OK(device_synchronize(dev));
        CHECK_OK(device_copy_device_to_host(dev, host, buffer, sizeof host));
        CHECK(host[0] == 1 && host[1] == 2 && host[2] == (float)root);
        allocator_free(alloc, buffer);
        if (world == 1) break;
    }
}

/* Rank 0 stays out of an all-reduce the others start: they must give up after the timeout,
 * abort, and report it; later operations fail at once; every rank can still free. */
static void test_timeout(device *dev, allocator *alloc) {
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world < 2) {
        check_not_run("timeout: a rank stays out of an all-reduce, the others abort", "1 rank");
        return;
    }
    comm *c = NULL;
    CHECK_OK(comm_init(COMM_BACKEND_NCCL, MPI_COMM_WORLD, dev, &c));
    if (!c) return;
    comm_set_timeout(c, 2.0);
    size_t count = 1 << 16;
    float *values = device_values(dev, alloc, rank, count);
    if (values && rank != 0) {
        ddt_status status = comm_allreduce_floats(c, values, count);
        CHECK(status == DDT_ERR_COMM);
        const char *message = ddt_error_message();
        CHECK(strstr(message, "ncclAllReduce") != NULL);
        CHECK(strstr(message, "aborted") != NULL);
        if (rank == 1) printf("timeout path, as reported: %s\n", message);
        CHECK(comm_allreduce_floats(c, values, count) == DDT_ERR_COMM);
        CHECK(comm_broadcast_floats(c, values, count, 0) == DDT_ERR_COMM);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    comm_free(c); /* rank 0: if finalizing stalls with its peers gone, aborts after the timeout */
    allocator_free(alloc, values);
}

/* Asking for NCCL without a CUDA device: the same usage error on every rank, nothing left.
 * Returns whether it held (so the skip path can report without printing a check summary). */
static bool test_needs_cuda_device(void) {
    device *cpu = NULL;
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &cpu));
    if (!cpu) return false;
    comm *c = NULL;
    ddt_status status = comm_init(COMM_BACKEND_NCCL, MPI_COMM_WORLD, cpu, &c);
    const char *expected =
        comm_backend_available(COMM_BACKEND_NCCL) ? "cuda device" : "built without CUDA";
    bool ok = status == DDT_ERR_USAGE && c == NULL && strstr(ddt_error_message(), expected) != NULL;
    CHECK(status == DDT_ERR_USAGE);
    CHECK(c == NULL);
    CHECK(strstr(ddt_error_message(), expected) != NULL);
    comm_free(c);
    device_close(cpu);
    return ok;
}

static void test_on_gpus(int local_rank) {
    device *dev = NULL;
    CHECK_OK(device_open(DEVICE_KIND_CUDA, local_rank, &dev));
    allocator *alloc = NULL;
    if (dev) CHECK_OK(allocator_open(dev, &alloc));
    comm *c = NULL;
    /* comm_init agrees across ranks, so either every rank continues or none does. */
    if (alloc) CHECK_OK(comm_init(COMM_BACKEND_NCCL, MPI_COMM_WORLD, dev, &c));
    if (c) {
        CHECK(strcmp(comm_backend_name(c), "nccl") == 0);
        CHECK(comm_local_rank(c) == local_rank);
        size_t unrouted = comm_device_bytes_unrouted(c);
        CHECK(unrouted > 0);
        if (comm_rank(c) == 0)
            printf("NCCL device memory outside the allocator: %zu bytes\n", unrouted);

        /* The MLP 784-256-128-10: dense layers start at these offsets. */
        size_t mlp[] = {0, 200960, 233856};
        size_t mlp_count = 235146;
        size_t sizes[] = {1024, 64 << 10, 256 << 10, 1 << 20, 64 << 20};
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            test_buckets(c, dev, alloc, mlp, 3, mlp_count, sizes[s]);
        size_t one[] = {0};
        test_buckets(c, dev, alloc, one, 1, 5, 4);
        size_t many[] = {0, 1, 2, 3, 100, 1000, 1001};
        test_buckets(c, dev, alloc, many, 7, 5000, 64);
        /* 40 one-layer buckets in flight at once: more than the pool made at set-up. */
        size_t forty[40];
        for (int i = 0; i < 40; i++)
            forty[i] = (size_t)i * 100;
        test_buckets(c, dev, alloc, forty, 40, 4000, 64);

        test_blocking(c, dev, alloc);

        /* Control plane still MPI. */
        int world = comm_world_size(c);
        double values[2] = {comm_rank(c), 1};
        CHECK_OK(comm_allreduce_doubles(c, values, 2, COMM_REDUCE_SUM));
        CHECK(values[0] == world * (world - 1) / 2.0 && values[1] == world);
        comm_free(c);
    }
    if (alloc) test_timeout(dev, alloc);
    allocator_close(alloc);
    device_close(dev);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, local_rank = 0, local_size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);

    bool usage_error_ok = test_needs_cuda_device();

    char reason[160] = "";
    if (!comm_backend_available(COMM_BACKEND_NCCL)) {
        snprintf(reason, sizeof reason, "this build has no NCCL: it was built without CUDA");
    } else {
        int gpus = device_count(DEVICE_KIND_CUDA);
        if (gpus < local_size)
            snprintf(reason, sizeof reason,
                     "%d CUDA device(s) visible for %d ranks on a node; one GPU per rank needed",
                     gpus, local_size);
    }
    int lacking = reason[0] != '\0', any_lacking = 0;
    MPI_Allreduce(&lacking, &any_lacking, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any_lacking) {
        int local_failed = !usage_error_ok, any_failed = 0;
        MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0 && !any_failed)
            printf("skipped: no GPU (%s)\n", lacking ? reason : "another node lacks GPUs");
        MPI_Finalize();
        if (!any_failed) return EXIT_SKIPPED;
        check_finish(); /* the failures were printed; this says how many */
        return 1;
    }

    test_on_gpus(local_rank);

    /* One summary for the job: the counts summed over ranks (each rank printed its own
     * failures), the not-run list the same on every rank. */
    int counts[2], totals[2] = {0, 0};
    check_counts(&counts[0], &counts[1]);
    MPI_Allreduce(counts, totals, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) check_finish_totals(totals[0], totals[1]);
    MPI_Finalize();
    return totals[1] == 0 ? 0 : 1;
}
