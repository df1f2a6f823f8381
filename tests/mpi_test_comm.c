/* mpi_test_comm.c - the comm module under mpirun, on both host backends (shm and mpi):
 * bucketed gradient all-reduce equals a plain sum for many bucket sizes and layer layouts,
 * buckets follow layer boundaries, early starts happen when layers finish (and not with
 * overlap off), and the control plane reduces correctly. The shm backend besides: sums in
 * its fixed order bit for bit (one node), the same bits on every rank and run after run,
 * across chunk and slot boundaries; the hierarchical path on emulated nodes (1, 2 and 3
 * ranks per node, so also nodes of different sizes); other slot counts
 * (DDTRAIN_ALLREDUCE_SLOTS), and bad or disagreeing ones refused on every rank; plain and
 * streaming stores and the choice between them (DDTRAIN_ALLREDUCE_STORES); a rank that
 * never takes part ends the others' wait at the timeout with its rank named. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "comm/comm.h"
#include "engine/device.h"

/* Multiples of 1/4 below 2^20: their float sums are exact in any order, so bucketed sums must
 * equal the exact sum. */
static float value_at(int rank, size_t i) {
    return (float)((rank + 1) * 0.5 + (double)(i % 97) * 0.25);
}

/* Values whose float sums depend on the order they are added in. */
static float inexact_at(int rank, size_t i) {
    return (float)(0.1234567 * (rank + 1) + 0.0137 * (double)(i % 1013) + 1e-4 * (double)(i % 7));
}

static void test_buckets(comm *c, const size_t *points, int point_count, size_t count,
                         size_t bucket_bytes) {
    int rank = comm_rank(c), world = comm_world_size(c);
    float *grads = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++)
        grads[i] = value_at(rank, i);
    gradient_buckets *gb;
    CHECK_OK(gradient_buckets_init(c, grads, count, points, point_count, bucket_bytes, &gb));
    gradient_bucket_stats stats = gradient_buckets_get_stats(gb);
    CHECK(stats.bucket_count >= 1 && stats.bucket_count <= point_count);
    gradient_buckets_begin(gb);
    /* Report layers finishing from the last to the first, as backward does. */
    for (int i = point_count - 1; i >= 0; i--)
        CHECK_OK(gradient_buckets_ready(gb, points[i]));
    CHECK_OK(gradient_buckets_finish(gb));
    int wrong = 0;
    for (size_t i = 0; i < count; i++) {
        double expected = 0;
        for (int r = 0; r < world; r++)
            expected += value_at(r, i);
        if (grads[i] != expected) wrong++;
    }
    CHECK(wrong == 0);
    stats = gradient_buckets_get_stats(gb);
    CHECK(stats.started_late == 0); /* every bucket started as its layers finished */
    /* A round where nothing is reported early: finish starts everything. */
    gradient_buckets_begin(gb);
    CHECK_OK(gradient_buckets_finish(gb));
    stats = gradient_buckets_get_stats(gb);
    CHECK(stats.started_late == stats.bucket_count);
    /* Overlap off: layers reported finished start nothing; finish starts (and sums) all. */
    for (size_t i = 0; i < count; i++)
        grads[i] = value_at(rank, i);
    gradient_buckets_set_overlap(gb, false);
    gradient_buckets_begin(gb);
    int64_t early = stats.started_early;
    for (int i = point_count - 1; i >= 0; i--)
        CHECK_OK(gradient_buckets_ready(gb, points[i]));
    CHECK(gradient_buckets_get_stats(gb).started_early == early);
    CHECK_OK(gradient_buckets_finish(gb));
    CHECK(gradient_buckets_get_stats(gb).started_late == 2 * stats.bucket_count);
    wrong = 0;
    for (size_t i = 0; i < count; i++) {
        double expected = 0;
        for (int r = 0; r < world; r++)
            expected += value_at(r, i);
        if (grads[i] != expected) wrong++;
    }
    CHECK(wrong == 0);
    gradient_buckets_free(gb);
    free(grads);
}

static void test_backend(comm_backend_kind kind, device *dev) {
    comm *c = NULL;
    CHECK_OK(comm_init(kind, MPI_COMM_WORLD, dev, &c));
    if (!c) return;
    CHECK(strcmp(comm_backend_name(c), kind == COMM_BACKEND_SHM ? "shm" : "mpi") == 0);
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
    /* More buckets in flight than the shm backend has slots, each several chunks. */
    size_t layers[12];
    for (int i = 0; i < 12; i++)
        layers[i] = (size_t)i * 150000;
    test_buckets(c, layers, 12, 12 * 150000 + 77, 4);

    /* Bucket boundaries: with 256 KiB buckets the MLP's two small layers share one bucket and
     * the large first layer gets its own. */
    float *g = calloc(mlp_count, sizeof(float));
    gradient_buckets *gb;
    CHECK_OK(gradient_buckets_init(c, g, mlp_count, mlp, 3, 256 << 10, &gb));
    CHECK(gradient_buckets_get_stats(gb).bucket_count == 2);
    gradient_buckets_free(gb);
    free(g);

    float broadcast[3] = {0, 0, 0};
    if (comm_rank(c) == 0) broadcast[0] = 1, broadcast[1] = 2, broadcast[2] = 3;
    CHECK_OK(comm_broadcast_floats(c, broadcast, 3, 0));
    CHECK(broadcast[0] == 1 && broadcast[1] == 2 && broadcast[2] == 3);
    comm_free(c);
}

static uint64_t hash_floats(const float *values, size_t count) {
    uint64_t hash = 0xcbf29ce484222325ull;
    const unsigned char *p = (const unsigned char *)values;
    for (size_t i = 0; i < count * sizeof(float); i++)
        hash = (hash ^ p[i]) * 0x100000001b3ull;
    return hash;
}

/* Every rank holds the same bits: the hashes gathered from all ranks agree. */
static bool same_on_every_rank(const float *values, size_t count) {
    uint64_t mine = hash_floats(values, count), low = mine, high = mine;
    MPI_Allreduce(MPI_IN_PLACE, &low, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &high, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    return low == high;
}

/* One all-reduce of the inexact pattern at each size; `fixed_order`: the ranks form one node,
 * so the result must be the sum in rank order, bit for bit. Always: near the exact sum, the
 * same bits on every rank, and the same bits again on a second run. */
static void test_exact(comm *c, bool fixed_order, const char *label) {
    int rank = comm_rank(c), world = comm_world_size(c);
    size_t chunk = 65536; /* the default chunk, in floats */
    size_t counts[] = {
        1, 15, 16, 17, 1000, chunk - 1, chunk, chunk + 1, 3 * chunk + 5, 10 * chunk + 7};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        size_t n = counts[k];
        float *values = malloc(n * sizeof(float)), *again = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            values[i] = again[i] = inexact_at(rank, i);
        CHECK_OK(comm_allreduce_floats(c, values, n));
        CHECK_OK(comm_allreduce_floats(c, again, n));
        size_t not_in_order = 0, far = 0, order_matters = 0;
        /* Any order of adding `world` positive floats is within (world - 1) u / (1 - (world -
         * 1) u) of the exact sum, u = 2^-24 (Higham, Accuracy and Stability of Numerical
         * Algorithms, 2nd ed., ch. 4): the bound for whatever order MPI or the shm path uses. */
        const double u = 0x1p-24, bound = (world - 1) * u / (1.0 - (world - 1) * u);
        for (size_t i = 0; i < n; i++) {
            float in_order = inexact_at(0, i), reversed = inexact_at(world - 1, i);
            double exact = inexact_at(0, i);
            for (int r = 1; r < world; r++) {
                in_order += inexact_at(r, i);
                reversed += inexact_at(world - 1 - r, i);
                exact += inexact_at(r, i);
            }
            if (in_order != reversed) order_matters++;
            if (values[i] != in_order) not_in_order++;
            if (fabs(values[i] - exact) > bound * fabs(exact)) far++;
        }
        if (fixed_order) CHECK(not_in_order == 0);
        /* The check can fail: with 3 ranks or more, another order gives other bits. */
        if (world >= 3 && n >= 1000) CHECK(order_matters > 0);
        CHECK(far == 0);
        CHECK(same_on_every_rank(values, n));
        CHECK(memcmp(values, again, n * sizeof(float)) == 0);
        if (far || (fixed_order && not_in_order) || memcmp(values, again, n * sizeof(float)))
            fprintf(stderr, "rank %d, %s, %zu floats: %zu not in rank order, %zu far\n", rank,
                    label, n, not_in_order, far);
        free(values);
        free(again);
    }
}

/* The hierarchical path on one machine: every `node_ranks` ranks form a node of their own
 * (0: the real node); `chunk` and `slots` set DDTRAIN_ALLREDUCE_CHUNK and
 * DDTRAIN_ALLREDUCE_SLOTS where not NULL. */
static void test_emulated_nodes(device *dev, int node_ranks, const char *chunk, const char *slots) {
    char text[16];
    snprintf(text, sizeof text, "%d", node_ranks);
    if (node_ranks > 0) setenv("DDTRAIN_NODE_RANKS", text, 1);
    if (chunk) setenv("DDTRAIN_ALLREDUCE_CHUNK", chunk, 1);
    if (slots) setenv("DDTRAIN_ALLREDUCE_SLOTS", slots, 1);
    comm *c = NULL;
    CHECK_OK(comm_init(COMM_BACKEND_SHM, MPI_COMM_WORLD, dev, &c));
    unsetenv("DDTRAIN_NODE_RANKS");
    unsetenv("DDTRAIN_ALLREDUCE_CHUNK");
    unsetenv("DDTRAIN_ALLREDUCE_SLOTS");
    if (!c) return;
    char label[96];
    snprintf(label, sizeof label, "nodes of %d ranks, chunk %s, slots %s", node_ranks,
             chunk ? chunk : "-", slots ? slots : "-");
    test_exact(c, node_ranks == 0 || comm_world_size(c) <= node_ranks, label);
    size_t mlp[] = {0, 200960, 233856};
    test_buckets(c, mlp, 3, 235146, 64 << 10);
    /* More buckets in flight than slots, each many chunks. */
    size_t layers[12];
    for (int i = 0; i < 12; i++)
        layers[i] = (size_t)i * 15000;
    test_buckets(c, layers, 12, 12 * 15000 + 77, 4);
    comm_free(c);
}

/* With `name`=`value` on every rank, comm_init fails on every rank with a usage error saying
 * `expected`, and leaves nothing behind. */
static void check_refused(device *dev, const char *name, const char *value, const char *expected) {
    setenv(name, value, 1);
    comm *c = NULL;
    ddt_status status = comm_init(COMM_BACKEND_SHM, MPI_COMM_WORLD, dev, &c);
    unsetenv(name);
    CHECK(status == DDT_ERR_USAGE && c == NULL);
    CHECK(strstr(ddt_error_message(), expected) != NULL);
    comm_free(c);
}

/* Plain stores, streaming stores, and auto switching between them (many 4 KiB chunks: many
 * epochs, each with chunks stored both ways): the same bits, the sum in rank order, on one node
 * and through the ring. A bad value is refused on every rank. */
static void test_stores(device *dev) {
    const char *kinds[] = {"plain", "streaming", "auto"};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        setenv("DDTRAIN_ALLREDUCE_STORES", kinds[k], 1);
        test_emulated_nodes(dev, 0, "4KiB", NULL);
        setenv("DDTRAIN_ALLREDUCE_STORES", kinds[k], 1);
        test_emulated_nodes(dev, 1, "4KiB", "3");
        unsetenv("DDTRAIN_ALLREDUCE_STORES");
    }
    int world = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world < 2) return;
    check_refused(dev, "DDTRAIN_ALLREDUCE_STORES", "fast",
                  "DDTRAIN_ALLREDUCE_STORES=fast: give auto, plain or streaming");
}

/* DDTRAIN_ALLREDUCE_SLOTS out of range, or not the same on every rank: comm_init fails on
 * every rank with a usage error naming the variable, and no rank is left waiting. */
static void test_bad_slots(device *dev) {
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world < 2) return; /* one rank sets nothing up, so reads no knobs */
    const char *bad[] = {"1", "65", "0", "-4", "4x", "many"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        char expected[64];
        snprintf(expected, sizeof expected, "DDTRAIN_ALLREDUCE_SLOTS=%s: give 2 to 64", bad[k]);
        check_refused(dev, "DDTRAIN_ALLREDUCE_SLOTS", bad[k], expected);
    }
    if (rank == world - 1) setenv("DDTRAIN_ALLREDUCE_SLOTS", "8", 1);
    comm *c = NULL;
    ddt_status status = comm_init(COMM_BACKEND_SHM, MPI_COMM_WORLD, dev, &c);
    unsetenv("DDTRAIN_ALLREDUCE_SLOTS");
    CHECK(status == DDT_ERR_USAGE && c == NULL);
    CHECK(strstr(ddt_error_message(),
                 "different DDTRAIN_ALLREDUCE_CHUNK, DDTRAIN_ALLREDUCE_SLOTS") != NULL);
    comm_free(c);
}

/* Rank 1 never takes part: the others fail at the timeout naming it; afterwards operations
 * fail at once, and every rank can still let go of the communicator. */
static void test_timeout(device *dev) {
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world < 2) return;
    comm *c = NULL;
    CHECK_OK(comm_init(COMM_BACKEND_SHM, MPI_COMM_WORLD, dev, &c));
    if (!c) return;
    comm_set_timeout(c, 1.0);
    size_t count = 100000;
    float *values = calloc(count, sizeof(float));
    if (rank != 1) {
        double started = MPI_Wtime();
        ddt_status status = comm_allreduce_floats(c, values, count);
        double waited = MPI_Wtime() - started;
        CHECK(status == DDT_ERR_COMM);
        CHECK(waited >= 1.0 && waited < 3.0);
        const char *message = ddt_error_message();
        CHECK(strstr(message, "rank 1 has not posted its part") != NULL);
        CHECK(strstr(message, "--comm-timeout") != NULL);
        if (rank == 0) printf("a rank that stays out, as reported: %s\n", message);
        CHECK(comm_allreduce_floats(c, values, count) == DDT_ERR_COMM);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    comm_abandon(c);
    free(values);
}

static void test_choose(void) {
    comm_backend_kind kind = COMM_BACKEND_MPI;
    CHECK_OK(comm_backend_choose(COMM_BACKEND_REQUEST_AUTO, DEVICE_KIND_CPU, &kind));
    CHECK(kind == COMM_BACKEND_SHM);
    CHECK_OK(comm_backend_choose(COMM_BACKEND_REQUEST_AUTO, DEVICE_KIND_CUDA, &kind));
    CHECK(kind == COMM_BACKEND_NCCL);
    CHECK_OK(comm_backend_choose(COMM_BACKEND_REQUEST_MPI, DEVICE_KIND_CPU, &kind));
    CHECK(kind == COMM_BACKEND_MPI);
    CHECK(comm_backend_choose(COMM_BACKEND_REQUEST_SHM, DEVICE_KIND_CUDA, &kind) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "--allreduce shm") != NULL);
    CHECK(comm_backend_choose(COMM_BACKEND_REQUEST_NCCL, DEVICE_KIND_CPU, &kind) == DDT_ERR_USAGE);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    device *dev = NULL;
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    test_choose();
    test_backend(COMM_BACKEND_MPI, dev);
    test_backend(COMM_BACKEND_SHM, dev);

    comm *c = NULL;
    CHECK_OK(comm_init(COMM_BACKEND_SHM, MPI_COMM_WORLD, dev, &c));
    if (c) {
        test_exact(c, true, "one node");
        double values[2] = {comm_rank(c), 1};
        CHECK_OK(comm_allreduce_doubles(c, values, 2, COMM_REDUCE_SUM));
        int world = comm_world_size(c);
        CHECK(values[0] == world * (world - 1) / 2.0 && values[1] == world);
        uint64_t big[1] = {(uint64_t)comm_rank(c) << 40};
        CHECK_OK(comm_allreduce_u64(c, big, 1, COMM_REDUCE_MAX));
        CHECK(big[0] == (uint64_t)(world - 1) << 40);
        comm_free(c);
    }
    int world = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    test_emulated_nodes(dev, 1, NULL, NULL);   /* one rank per node: the ring alone */
    test_emulated_nodes(dev, 1, "4KiB", NULL); /* many small chunks through the ring */
    /* Other slot counts (DDTRAIN_ALLREDUCE_SLOTS): the fewest and the most, on one node and
     * through the ring: the same bits across slot boundaries. */
    test_emulated_nodes(dev, 0, "4KiB", "2");
    test_emulated_nodes(dev, 0, "4KiB", "64");
    test_emulated_nodes(dev, 1, "4KiB", "2");
    test_emulated_nodes(dev, 1, "4KiB", "7");
    if (world >= 4) {
        test_emulated_nodes(dev, 2, "4KiB", NULL); /* 2 nodes x 2 ranks: both levels */
        test_emulated_nodes(dev, 2, "4KiB", "3");
        test_emulated_nodes(dev, 3, NULL, NULL); /* nodes of 3 and 1: one slice per chunk */
    }
    test_stores(dev);
    test_bad_slots(dev);
    test_timeout(dev);

    device_close(dev);
    int local_failed = check_finish() != 0;
    int any_failed = 0;
    MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any_failed;
}
