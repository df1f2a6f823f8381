/* mpi_test_comm.c - the comm module under mpirun: bucketed gradient all-reduce equals a plain
 * sum for many bucket sizes and layer layouts, buckets follow layer boundaries, early starts
 * happen when layers finish, and the control plane reduces correctly. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "comm/comm.h"
#include "engine/device.h"

static float value_at(int rank, size_t i) {
    return (float)((rank + 1) * 0.5 + (double)(i % 97) * 0.25);
}

static void test_buckets(comm *c, const size_t *points, int point_count, size_t count,
                         size_t bucket_bytes) {
    int rank = comm_rank(c), world = comm_world_size(c);
    float *grads = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) grads[i] = value_at(rank, i);
    gradient_buckets *gb;
    CHECK_OK(gradient_buckets_init(c, grads, count, points, point_count, bucket_bytes, &gb));
    gradient_bucket_stats stats = gradient_buckets_get_stats(gb);
    CHECK(stats.bucket_count >= 1 && stats.bucket_count <= point_count);
    gradient_buckets_begin(gb);
    /* Report layers finishing from the last to the first, as backward does. */
    for (int i = point_count - 1; i >= 0; i--) CHECK_OK(gradient_buckets_ready(gb, points[i]));
    CHECK_OK(gradient_buckets_finish(gb));
    int wrong = 0;
    for (size_t i = 0; i < count; i++) {
        double expected = 0;
        for (int r = 0; r < world; r++) expected += value_at(r, i);
        if (fabs(grads[i] - expected) > 1e-5 * fabs(expected)) wrong++;
    }
    CHECK(wrong == 0);
    stats = gradient_buckets_get_stats(gb);
    CHECK(stats.started_late == 0); /* every bucket started as its layers finished */
    /* A round where nothing is reported early: finish starts everything. */
    gradient_buckets_begin(gb);
    CHECK_OK(gradient_buckets_finish(gb));
    stats = gradient_buckets_get_stats(gb);
    CHECK(stats.started_late == stats.bucket_count);
    gradient_buckets_free(gb);
    free(grads);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    device *dev = NULL;
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    comm *c = NULL;
    CHECK_OK(comm_init(COMM_BACKEND_MPI, MPI_COMM_WORLD, dev, &c));
    CHECK(comm_world_size(c) >= 1 && comm_local_rank(c) < comm_local_size(c));

    /* The MLP 784-256-128-10: dense layers start at these offsets. */
    size_t mlp[] = {0, 200960, 233856};
    size_t mlp_count = 235146;
    size_t sizes[] = {1024, 64 << 10, 256 << 10, 1 << 20, 64 << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        test_buckets(c, mlp, 3, mlp_count, sizes[s]);
    size_t one[] = {0};
    test_buckets(c, one, 1, 5, 4);
    size_t many[] = {0, 1, 2, 3, 100, 1000, 1001};
    test_buckets(c, many, 7, 5000, 64);

    /* Bucket boundaries: with 256 KiB buckets the MLP's two small layers share one bucket and
     * the large first layer gets its own. */
    float *g = calloc(mlp_count, sizeof(float));
    gradient_buckets *gb;
    CHECK_OK(gradient_buckets_init(c, g, mlp_count, mlp, 3, 256 << 10, &gb));
    CHECK(gradient_buckets_get_stats(gb).bucket_count == 2);
    gradient_buckets_free(gb);
    free(g);

    double values[2] = {comm_rank(c), 1};
    CHECK_OK(comm_allreduce_doubles(c, values, 2, COMM_REDUCE_SUM));
    int world = comm_world_size(c);
    CHECK(values[0] == world * (world - 1) / 2.0 && values[1] == world);
    uint64_t big[1] = {(uint64_t)comm_rank(c) << 40};
    CHECK_OK(comm_allreduce_u64(c, big, 1, COMM_REDUCE_MAX));
    CHECK(big[0] == (uint64_t)(world - 1) << 40);

    float broadcast[3] = {0, 0, 0};
    if (comm_rank(c) == 0) broadcast[0] = 1, broadcast[1] = 2, broadcast[2] = 3;
    CHECK_OK(comm_broadcast_floats(c, broadcast, 3, 0));
    CHECK(broadcast[0] == 1 && broadcast[1] == 2 && broadcast[2] == 3);

    comm_free(c);
    device_close(dev);
    int local_failed = check_finish() != 0;
    int any_failed = 0;
    MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any_failed;
}
