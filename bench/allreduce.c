/* allreduce.c - ddtrain's gradient all-reduce path against the raw collective, over message
 * sizes from 4 B to 256 MiB, in the manner of nccl-tests (run by bench/allreduce).
 *
 * For host buffers always (CPU ranks), and for GPU buffers when every rank of a node has its
 * own GPU, and each size, it times these paths on the same buffer in the same run:
 *   - "ddtrain buckets": what a training step does: gradient_buckets_init() over the buffer,
 *     cut at "layer" boundaries every --layer-bytes into buckets of about --bucket-bytes, then
 *     gradient_buckets_begin(), gradient_buckets_ready(0) (backward finished: every bucket
 *     starts) and gradient_buckets_finish(); on host buffers through the shm backend (shared
 *     memory within the node, comm_shm.c), on GPUs through NCCL;
 *   - host only: "old mpi buckets", the same buckets through the mpi backend (one
 *     MPI_Iallreduce per bucket, polled: ddtrain's path before the shm backend);
 *   - the raw collective: MPI_Allreduce(MPI_IN_PLACE, ..., MPI_SUM) on host buffers; on GPUs
 *     one comm_allreduce_floats() (a single in-place ncclAllReduce on ddtrain's NCCL stream).
 * Each path is described by a bench_path (name, prepare, run, release); the harness below
 * checks it, warms it up, picks an iteration count so a size takes about --target-seconds,
 * and times it in --rounds rounds, the paths taking turns so that the noise of a shared
 * machine hits them alike; the best round counts. Numbers follow nccl-tests: a round's time is
 * the mean over ranks of the mean time per iteration; algbw = bytes / time; busbw = algbw *
 * 2(n-1)/n (the bandwidth each link needs for an all-reduce, comparable across rank counts).
 * GB/s = 1e9 bytes/s.
 *
 * Correctness: before timing, each path reduces a known pattern once and every element is
 * compared with the exact sum; the count of wrong values is printed and the exit status is 1
 * if any. Timing runs on zeros (in-place sums of anything else grow every iteration).
 *
 * Usage: mpirun -np 2 build/bench/ddtrain_bench_allreduce [--max-bytes 256MiB] [--csv FILE]
 *        (--help lists the options) */
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "util/plugin.h"
#include "util/units.h"

/* ---- options ------------------------------------------------------------------------------ */

typedef struct bench_options {
    size_t min_bytes, max_bytes;
    int step_factor;       /* sizes grow by this factor */
    double target_seconds; /* timed iterations of one path at one size take about this long */
    int rounds;            /* ... split into this many rounds, paths alternating; best kept */
    size_t bucket_bytes;   /* ddtrain's --bucket-size */
    size_t layer_bytes;    /* where the buffer may be cut, as layer boundaries */
    const char *backend;   /* auto, mpi, nccl */
    const char *csv;       /* rows appended here (rank 0); NULL: none */
} bench_options;

static const char usage_text[] =
    "usage: ddtrain_bench_allreduce [options]   (under mpirun or srun)\n"
    "  --min-bytes SIZE       smallest message [default: 4B]\n"
    "  --max-bytes SIZE       largest message [default: 256MiB]\n"
    "  --step-factor F        each size is F times the last [default: 2]\n"
    "  --target-seconds S     timed time per path and size [default: 0.1]\n"
    "  --rounds R             rounds, paths taking turns; the best counts [default: 3]\n"
    "  --bucket-bytes SIZE    ddtrain's gradient bucket size [default: 256KiB]\n"
    "  --layer-bytes SIZE     layer boundaries (where buckets may be cut) [default: 1MiB]\n"
    "  --backend auto|mpi|nccl  mpi: host buffers (shm, old mpi, MPI_Allreduce); nccl: GPUs;\n"
    "                         auto: host, then GPUs too when each rank has one [default: auto]\n"
    "  --csv FILE             append one row per backend, path and size (rank 0)\n"
    "SIZE: a number of bytes with an optional unit: B, KiB (K), MiB (M), GiB (G), TiB (T), or\n"
    "      decimal kB, MB, GB, TB.\n";

/* A size by ddtrain's one rule (util/units.h); false if malformed or zero. */
static bool parse_size(const char *text, size_t *out) {
    uint64_t bytes = 0;
    if (units_parse_size("size", text, &bytes) != DDT_OK || bytes == 0 || bytes > SIZE_MAX)
        return false;
    *out = (size_t)bytes;
    return true;
}

/* Fills *o from argv; on a bad option prints why (rank 0) and returns false. */
static bool parse_options(int argc, char **argv, int rank, bench_options *o, bool *help) {
    *o = (bench_options){
        .min_bytes = 4,
        .max_bytes = (size_t)256 << 20,
        .step_factor = 2,
        .target_seconds = 0.1,
        .rounds = 3,
        .bucket_bytes = (size_t)256 << 10,
        .layer_bytes = (size_t)1 << 20,
        .backend = "auto",
        .csv = NULL,
    };
    *help = false;
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i];
        if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
            *help = true;
            return true;
        }
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = value != NULL;
        if (!ok) {
        } else if (strcmp(name, "--min-bytes") == 0) {
            ok = parse_size(value, &o->min_bytes);
        } else if (strcmp(name, "--max-bytes") == 0) {
            ok = parse_size(value, &o->max_bytes);
        } else if (strcmp(name, "--bucket-bytes") == 0) {
            ok = parse_size(value, &o->bucket_bytes);
        } else if (strcmp(name, "--layer-bytes") == 0) {
            ok = parse_size(value, &o->layer_bytes);
        } else if (strcmp(name, "--step-factor") == 0) {
            o->step_factor = atoi(value);
            ok = o->step_factor >= 2;
        } else if (strcmp(name, "--target-seconds") == 0) {
            o->target_seconds = strtod(value, NULL);
            ok = o->target_seconds > 0 && o->target_seconds <= 60;
        } else if (strcmp(name, "--rounds") == 0) {
            o->rounds = atoi(value);
            ok = o->rounds >= 1 && o->rounds <= 100;
        } else if (strcmp(name, "--backend") == 0) {
            o->backend = value;
            ok = strcmp(value, "auto") == 0 || strcmp(value, "mpi") == 0 ||
                 strcmp(value, "nccl") == 0;
        } else if (strcmp(name, "--csv") == 0) {
            o->csv = value;
        } else {
            if (rank == 0)
                fprintf(stderr, "ddtrain_bench_allreduce: unknown option '%s'\n%s", name,
                        usage_text);
            return false;
        }
        if (!ok) {
            if (rank == 0)
                fprintf(stderr, "ddtrain_bench_allreduce: bad or missing value for %s\n%s", name,
                        usage_text);
            return false;
        }
        i++;
    }
    if (o->min_bytes < sizeof(float)) o->min_bytes = sizeof(float);
    if (o->max_bytes < o->min_bytes) {
        if (rank == 0) fprintf(stderr, "ddtrain_bench_allreduce: --max-bytes < --min-bytes\n");
        return false;
    }
    return true;
}

/* ---- the driver's way out ---------------------------------------------------------------- */

/* Library calls return a status; this program is the driver, so a failure ends every rank. */
#define BENCH_CHECK(expr)                                                                          \
    do {                                                                                           \
        ddt_status bench_status_ = (expr);                                                         \
        if (bench_status_ != DDT_OK) bench_fail(__FILE__, __LINE__, #expr, bench_status_);         \
    } while (0)

__attribute__((noreturn)) static void bench_fail(const char *file, int line, const char *what,
                                                 ddt_status status) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "ddtrain_bench_allreduce: rank %d: %s:%d: %s: %s: %s\n", rank, file, line, what,
            ddt_status_name(status), ddt_error_message());
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1); /* MPI_Abort does not return; this tells the compiler so */
}

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- the paths being compared ------------------------------------------------------------ */

/* What a path works on: `count` floats at `data` (device memory of `dev`), reduced over `c`
 * (host buffers: `old` is the mpi backend's communicator, for the old path). */
typedef struct bench_state {
    const bench_options *options;
    comm *c;
    comm *old;
    device *dev;
    float *data;
    size_t count;
    size_t *ready_points; /* layer boundaries (floats), room for max_bytes / layer_bytes + 1 */
    gradient_buckets *buckets;
} bench_state;

/* One way of all-reducing s->data[0..count) in place (sum), nccl-tests' descriptor. */
typedef struct bench_path {
    const char *name;                          /* column heading */
    ddt_status (*prepare)(bench_state *s);     /* before a size is checked and timed; may be NULL */
    ddt_status (*run)(bench_state *s);         /* one all-reduce; returns when it is complete */
    void (*release)(bench_state *s);           /* after the size; may be NULL */
    int (*bucket_count)(const bench_state *s); /* for the table; may be NULL (1) */
} bench_path;

static ddt_status buckets_prepare_on(bench_state *s, comm *c) {
    size_t layer_floats = s->options->layer_bytes / sizeof(float);
    if (layer_floats == 0) layer_floats = 1;
    int points = 0;
    for (size_t offset = 0; offset < s->count; offset += layer_floats)
        s->ready_points[points++] = offset;
    return gradient_buckets_init(c, s->data, s->count, s->ready_points, points,
                                 s->options->bucket_bytes, &s->buckets);
}

static ddt_status buckets_prepare(bench_state *s) {
    return buckets_prepare_on(s, s->c);
}

static ddt_status old_buckets_prepare(bench_state *s) {
    return buckets_prepare_on(s, s->old);
}

/* The end of a training step: backward has finished, so every bucket starts; then wait. */
static ddt_status buckets_run(bench_state *s) {
    gradient_buckets_begin(s->buckets);
    DDT_CHECK(gradient_buckets_ready(s->buckets, 0));
    return gradient_buckets_finish(s->buckets);
}

static void buckets_release(bench_state *s) {
    gradient_buckets_free(s->buckets);
    s->buckets = NULL;
}

static int buckets_count(const bench_state *s) {
    return gradient_buckets_get_stats(s->buckets).bucket_count;
}

static ddt_status mpi_allreduce_run(bench_state *s) {
    int rc =
        MPI_Allreduce(MPI_IN_PLACE, s->data, (int)s->count, MPI_FLOAT, MPI_SUM, comm_mpi(s->c));
    if (rc != MPI_SUCCESS) return ddt_error(DDT_ERR_COMM, "MPI_Allreduce failed (code %d)", rc);
    return DDT_OK;
}

static ddt_status backend_allreduce_run(bench_state *s) {
    return comm_allreduce_floats(s->c, s->data, s->count);
}

/* Each table: ddtrain's path first, the raw collective (the ratio's reference) last. Host
 * buffers: the blocking MPI_Allreduce on the same buffer, and between them the old path (the
 * same buckets through the mpi backend's MPI_Iallreduce). GPUs: MPI cannot read GPU memory
 * (Debian's Open MPI is not CUDA-aware), so the reference is one ncclAllReduce of the whole
 * buffer through ddtrain's NCCL backend. */
static const bench_path ddtrain_path = {
    .name = "ddtrain buckets",
    .prepare = buckets_prepare,
    .run = buckets_run,
    .release = buckets_release,
    .bucket_count = buckets_count,
};
static const bench_path old_path = {
    .name = "old mpi buckets",
    .prepare = old_buckets_prepare,
    .run = buckets_run,
    .release = buckets_release,
    .bucket_count = buckets_count,
};
static const bench_path mpi_allreduce_path = {.name = "MPI_Allreduce", .run = mpi_allreduce_run};
static const bench_path nccl_allreduce_path = {.name = "ncclAllReduce",
                                               .run = backend_allreduce_run};
static const bench_path *const host_paths[] = {&ddtrain_path, &old_path, &mpi_allreduce_path};
static const bench_path *const nccl_paths[] = {&ddtrain_path, &nccl_allreduce_path};
enum { MAX_PATHS = 3 };

/* ---- the harness ------------------------------------------------------------------------- */

typedef struct path_result {
    double seconds;  /* per iteration, mean over ranks, best round */
    long iterations; /* per round */
    uint64_t wrong;  /* elements that differed from the exact sum, over all ranks */
    int buckets;
} path_result;

/* Exact in float for any rank count a node holds: multiples of 0.25 well below 2^20. */
static float pattern_value(int rank, size_t i) {
    return (float)(0.5 * (rank + 1) + 0.25 * (double)(i % 97));
}
static float pattern_sum(int ranks, size_t i) {
    return (float)(0.25 * ranks * (ranks + 1) + 0.25 * ranks * (double)(i % 97));
}

/* Runs `iterations` all-reduces, collectively. Returns this rank's seconds per iteration;
 * *slowest (if not NULL) gets the slowest rank's elapsed seconds for the whole loop. */
static double timed_loop(bench_state *s, const bench_path *p, long iterations, double *slowest) {
    MPI_Comm world = comm_mpi(s->c);
    MPI_Barrier(world);
    double started = now_seconds();
    for (long k = 0; k < iterations; k++)
        BENCH_CHECK(p->run(s));
    double elapsed = now_seconds() - started;
    if (slowest) MPI_Allreduce(&elapsed, slowest, 1, MPI_DOUBLE, MPI_MAX, world);
    return elapsed / (double)iterations;
}

/* Elements that differ from the exact sum after one all-reduce of the pattern, over all ranks.
 * `host` has room for s->count floats. */
static uint64_t check_path(bench_state *s, const bench_path *p, float *host) {
    int rank = comm_rank(s->c), ranks = comm_world_size(s->c);
    size_t bytes = s->count * sizeof(float);
    for (size_t i = 0; i < s->count; i++)
        host[i] = pattern_value(rank, i);
    BENCH_CHECK(device_copy_host_to_device(s->dev, s->data, host, bytes));
    BENCH_CHECK(device_synchronize(s->dev));
    BENCH_CHECK(p->run(s));
    BENCH_CHECK(device_synchronize(s->dev));
    BENCH_CHECK(device_copy_device_to_host(s->dev, host, s->data, bytes));
    uint64_t wrong = 0;
    for (size_t i = 0; i < s->count; i++)
        if (host[i] != pattern_sum(ranks, i)) wrong++;
    MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_UINT64_T, MPI_SUM, comm_mpi(s->c));
    return wrong;
}

/* One warm-up, then doubling runs (the warm-up continued) until one takes a tenth of a
 * round's share of the target; their rate sets the iterations of a timed round. Decisions use
 * the slowest rank's time, so every rank runs the same collectives. */
static long pick_iterations(bench_state *s, const bench_path *p, int rounds) {
    double round_seconds = s->options->target_seconds / rounds, slowest = 0;
    timed_loop(s, p, 1, NULL);
    long probe = 1;
    for (;;) {
        timed_loop(s, p, probe, &slowest);
        if (slowest >= round_seconds / 10 || probe >= (1L << 20)) break;
        probe *= 2;
    }
    double estimate = slowest / (double)probe;
    double wanted = ceil(round_seconds / (estimate > 0 ? estimate : 1e-9));
    return wanted < 1 ? 1 : wanted > (double)(1L << 24) ? (1L << 24) : (long)wanted;
}

/* Checks every path at s->count floats, then times them: `rounds` rounds, the paths taking
 * turns within each so machine noise hits them alike; a path's time is its best round (each
 * round: the mean over ranks of the mean per iteration). `host` has room for s->count floats. */
static void measure_size(bench_state *s, const bench_path *const *paths, int path_count, int rounds,
                         float *host, path_result *results) {
    int ranks = comm_world_size(s->c);
    for (int k = 0; k < path_count; k++) {
        const bench_path *p = paths[k];
        results[k] = (path_result){.buckets = 1, .seconds = INFINITY};
        if (p->prepare) BENCH_CHECK(p->prepare(s));
        if (p->bucket_count) results[k].buckets = p->bucket_count(s);
        results[k].wrong = check_path(s, p, host);
        if (p->release) p->release(s);
    }
    /* Timing runs on zeros: in-place sums of anything else grow every iteration. */
    device_fill_zero(s->dev, s->data, s->count * sizeof(float));
    BENCH_CHECK(device_synchronize(s->dev));
    for (int k = 0; k < path_count; k++) {
        if (paths[k]->prepare) BENCH_CHECK(paths[k]->prepare(s));
        results[k].iterations = pick_iterations(s, paths[k], rounds);
        if (paths[k]->release) paths[k]->release(s);
    }
    for (int round = 0; round < rounds; round++) {
        for (int k = 0; k < path_count; k++) {
            const bench_path *p = paths[k];
            if (p->prepare) BENCH_CHECK(p->prepare(s));
            double mine = timed_loop(s, p, results[k].iterations, NULL), mean = 0;
            MPI_Allreduce(&mine, &mean, 1, MPI_DOUBLE, MPI_SUM, comm_mpi(s->c));
            mean /= ranks;
            if (mean < results[k].seconds) results[k].seconds = mean;
            if (p->release) p->release(s);
        }
    }
}

/* ---- one backend over all sizes ---------------------------------------------------------- */

typedef struct run_info {
    int rank, ranks, local_ranks, cores;
    bool oversubscribed;
} run_info;

static double algbw(size_t bytes, double seconds) {
    return seconds > 0 ? (double)bytes / seconds / 1e9 : 0;
}
static double busbw(size_t bytes, double seconds, int ranks) {
    return algbw(bytes, seconds) * 2.0 * (ranks - 1) / ranks;
}

static void print_header(const char *backend, const char *where, const bench_path *const *paths,
                         int path_count, const bench_options *o, const run_info *info) {
    char bucket[32], layer[32];
    units_format_bytes(o->bucket_bytes, bucket, sizeof bucket);
    units_format_bytes(o->layer_bytes, layer, sizeof layer);
    printf("#\n# backend %s on %s; %d ranks, %d on this node, %d cores here%s\n", backend, where,
           info->ranks, info->local_ranks, info->cores,
           info->oversubscribed ? " -- OVERSUBSCRIBED (more ranks than cores)" : "");
    printf("# ddtrain buckets: gradient_buckets, %s buckets cut at layer boundaries every %s; "
           "begin, ready(0), finish\n",
           bucket, layer);
    if (path_count > 2)
        printf("# %s: the same buckets through the mpi backend (MPI_Iallreduce each, polled): "
               "ddtrain's path before the shm backend\n",
               paths[1]->name);
    printf("# %s: one in-place sum of the whole buffer\n", paths[path_count - 1]->name);
    printf("# ratio = %s time / ddtrain time = ddtrain busbw / its busbw (above 1: ddtrain "
           "faster)%s; wrong = values that differed from the exact sum\n",
           paths[path_count - 1]->name,
           path_count > 2 ? "; vs old = the old path's time / ddtrain's" : "");
    printf("# time: best of %d rounds (paths alternating) of the mean over ranks of the mean per "
           "iteration;\n# algbw = bytes/time, busbw = algbw * 2(n-1)/n, both GB/s (1e9 B/s)\n#\n",
           o->rounds);
    printf("# %10s %11s %7s", "", "", "");
    for (int k = 0; k < path_count; k++)
        printf(" | %-32s", paths[k]->name);
    printf(" |\n# %10s %11s %7s", "size(B)", "count", "buckets");
    for (int k = 0; k < path_count; k++)
        printf(" | %10s %10s %10s", "time(us)", "algbw", "busbw");
    printf(" | %5s%s %5s\n", "ratio", path_count > 2 ? " vs old" : "", "wrong");
}

/* Runs the backend's paths over every size on `dev`; returns the number of wrong values. */
static uint64_t run_backend(comm_backend_kind kind, device *dev, const bench_options *o,
                            const run_info *info, FILE *csv) {
    const bench_path *const *paths = kind == COMM_BACKEND_NCCL ? nccl_paths : host_paths;
    int path_count = kind == COMM_BACKEND_NCCL ? (int)(sizeof nccl_paths / sizeof *nccl_paths)
                                               : (int)(sizeof host_paths / sizeof *host_paths);
    comm *c = NULL, *old = NULL;
    BENCH_CHECK(comm_init(kind, MPI_COMM_WORLD, dev, &c));
    if (kind != COMM_BACKEND_NCCL) BENCH_CHECK(comm_init(COMM_BACKEND_MPI, MPI_COMM_WORLD, dev, &old));
    allocator *alloc = NULL;
    BENCH_CHECK(allocator_open(dev, &alloc));
    void *data = NULL;
    BENCH_CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_BUCKETS, o->max_bytes, &data));
    float *host = malloc(o->max_bytes);
    size_t layer_floats = o->layer_bytes / sizeof(float) ? o->layer_bytes / sizeof(float) : 1;
    size_t *points = malloc((o->max_bytes / sizeof(float) / layer_floats + 2) * sizeof *points);
    if (!host || !points)
        bench_fail(__FILE__, __LINE__, "malloc", ddt_error(DDT_ERR_MEMORY, "out of host memory"));
    bench_state s = {
        .options = o, .c = c, .old = old, .dev = dev, .data = data, .ready_points = points};
    const char *backend = comm_backend_name(c);
    const char *where = dev->kind == DEVICE_KIND_CPU ? "host memory" : dev->description;
    if (info->rank == 0) print_header(backend, where, paths, path_count, o, info);

    uint64_t wrong_total = 0;
    for (size_t bytes = o->min_bytes; bytes <= o->max_bytes; bytes *= (size_t)o->step_factor) {
        s.count = bytes / sizeof(float);
        bytes = s.count * sizeof(float);
        path_result r[MAX_PATHS];
        measure_size(&s, paths, path_count, o->rounds, host, r);
        uint64_t wrong = 0;
        for (int k = 0; k < path_count; k++)
            wrong += r[k].wrong;
        wrong_total += wrong;
        if (info->rank != 0) continue;
        printf("  %10zu %11zu %7d", bytes, s.count, r[0].buckets);
        for (int k = 0; k < path_count; k++)
            printf(" | %10.2f %10.3f %10.3f", r[k].seconds * 1e6, algbw(bytes, r[k].seconds),
                   busbw(bytes, r[k].seconds, info->ranks));
        printf(" | %5.2f", r[path_count - 1].seconds / r[0].seconds);
        if (path_count > 2) printf(" %7.2f", r[1].seconds / r[0].seconds);
        printf(" %5llu\n", (unsigned long long)wrong);
        fflush(stdout);
        for (int k = 0; csv && k < path_count; k++)
            fprintf(csv, "%s,%d,%d,%s,%zu,%zu,%d,%ld,%.4f,%.6f,%.6f,%llu\n", backend, info->ranks,
                    info->oversubscribed, paths[k]->name, bytes, s.count, r[k].buckets,
                    r[k].iterations, r[k].seconds * 1e6, algbw(bytes, r[k].seconds),
                    busbw(bytes, r[k].seconds, info->ranks), (unsigned long long)r[k].wrong);
        if (csv) fflush(csv);
        if (bytes > o->max_bytes / (size_t)o->step_factor) break; /* next would overflow or pass */
    }
    free(points);
    free(host);
    allocator_close(alloc);
    comm_free(old);
    comm_free(c);
    return wrong_total;
}

/* ---- main -------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    run_info info = {0};
    MPI_Comm_rank(MPI_COMM_WORLD, &info.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &info.ranks);
    bench_options o;
    bool help = false;
    if (!parse_options(argc, argv, info.rank, &o, &help)) {
        MPI_Finalize();
        return 2;
    }
    if (help) {
        if (info.rank == 0) fputs(usage_text, stdout);
        MPI_Finalize();
        return 0;
    }
    MPI_Comm node;
    int local_rank = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &info.local_ranks);
    MPI_Comm_free(&node);
    info.cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int over = info.local_ranks > info.cores;
    MPI_Allreduce(MPI_IN_PLACE, &over, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    info.oversubscribed = over;

    FILE *csv = NULL;
    if (info.rank == 0 && o.csv) {
        csv = fopen(o.csv, "a");
        if (!csv) {
            fprintf(stderr, "ddtrain_bench_allreduce: cannot open %s: %s\n", o.csv,
                    strerror(errno));
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (ftell(csv) == 0)
            fprintf(csv, "backend,ranks,oversubscribed,path,bytes,count,buckets,iterations,"
                         "time_us,algbw_gbs,busbw_gbs,wrong\n");
    }
    if (info.rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        int length = 0;
        MPI_Get_library_version(version, &length);
        version[strcspn(version, ",\n")] = '\0';
        char bucket[32];
        printf("# ddtrain all-reduce benchmark: %d ranks, %s, sizes %zu B .. %zu B (x%d), "
               "~%.2f s per path and size, bucket size %s\n",
               info.ranks, version, o.min_bytes, o.max_bytes, o.step_factor, o.target_seconds,
               units_format_bytes(o.bucket_bytes, bucket, sizeof bucket));
    }

    uint64_t wrong = 0;
    if (strcmp(o.backend, "nccl") != 0) {
        device *cpu = NULL;
        BENCH_CHECK(device_open(DEVICE_KIND_CPU, 0, &cpu));
        wrong += run_backend(COMM_BACKEND_SHM, cpu, &o, &info, csv);
        device_close(cpu);
    }
    if (strcmp(o.backend, "mpi") != 0) {
        /* NCCL needs one GPU per rank on every node; every rank must agree before comm_init. */
        int gpus = comm_backend_available(COMM_BACKEND_NCCL) ? device_count(DEVICE_KIND_CUDA) : 0;
        int usable = gpus >= info.local_ranks;
        MPI_Allreduce(MPI_IN_PLACE, &usable, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        if (usable) {
            device *gpu = NULL;
            BENCH_CHECK(device_open(DEVICE_KIND_CUDA, local_rank % gpus, &gpu));
            wrong += run_backend(COMM_BACKEND_NCCL, gpu, &o, &info, csv);
            device_close(gpu);
        } else if (info.rank == 0) {
            const char *problem = plugin_problem();
            printf("#\n# NCCL: skipped, no GPU per rank (%s)\n",
                   problem    ? problem
                   : gpus > 0 ? "fewer GPUs than ranks on a node"
                              : "no CUDA device");
        }
        if (!usable && strcmp(o.backend, "nccl") == 0) {
            if (csv) fclose(csv);
            MPI_Finalize();
            return 77; /* asked for NCCL only, and there is none: skipped */
        }
    }
    if (info.rank == 0) {
        printf("#\n# wrong values: %llu%s\n", (unsigned long long)wrong,
               wrong ? "  -- RESULTS ARE WRONG" : " (every element checked at every size)");
        if (csv) fclose(csv);
    }
    MPI_Finalize();
    return wrong ? 1 : 0;
}
