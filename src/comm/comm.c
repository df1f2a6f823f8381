/* comm.c - communicator set-up, the waiting policy, and gradient buckets (see comm.h).
 * The only file that knows which data-plane backends exist: MPI (comm_mpi.c) and shared
 * memory with MPI between nodes (comm_shm.c) here, NCCL from the CUDA plugin (see
 * engine/device.c). */
#include "comm/comm.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_backend.h"
#include "util/plugin.h"
#include "util/clock.h"

/* The default of comm_set_timeout(): long enough for a slow first collective (connection
 * set-up across nodes), short enough that a lost peer ends the job in minutes. */
static const double comm_default_timeout_seconds = 300.0;

bool comm_backend_available(comm_backend_kind kind) {
    switch (kind) {
    case COMM_BACKEND_MPI:
    case COMM_BACKEND_SHM:
        return true;
    case COMM_BACKEND_NCCL:
        return plugin_built();
    }
    return false;
}

ddt_status comm_backend_choose(comm_backend_request request, device_kind device,
                               comm_backend_kind *out) {
    bool gpu = device == DEVICE_KIND_CUDA;
    switch (request) {
    case COMM_BACKEND_REQUEST_AUTO:
        *out = gpu ? COMM_BACKEND_NCCL : COMM_BACKEND_SHM;
        return DDT_OK;
    case COMM_BACKEND_REQUEST_SHM:
    case COMM_BACKEND_REQUEST_MPI:
        if (gpu)
            return ddt_error(DDT_ERR_USAGE,
                             "--allreduce %s reduces host buffers, and these ranks compute on "
                             "GPUs: use --allreduce nccl (or auto), or --device cpu",
                             request == COMM_BACKEND_REQUEST_SHM ? "shm" : "mpi");
        *out = request == COMM_BACKEND_REQUEST_SHM ? COMM_BACKEND_SHM : COMM_BACKEND_MPI;
        return DDT_OK;
    case COMM_BACKEND_REQUEST_NCCL:
        if (!gpu)
            return ddt_error(DDT_ERR_USAGE,
                             "--allreduce nccl reduces GPU buffers, and these ranks compute on "
                             "the CPU: use --device cuda, or --allreduce shm (or auto)");
        *out = COMM_BACKEND_NCCL;
        return DDT_OK;
    }
    return ddt_error(DDT_ERR_USAGE, "unknown --allreduce choice %d", (int)request);
}

static const comm_backend_ops *backend_ops(comm_backend_kind kind) {
    switch (kind) {
    case COMM_BACKEND_MPI:
        return &comm_mpi_ops;
    case COMM_BACKEND_SHM:
        return &comm_shm_ops;
    case COMM_BACKEND_NCCL:
        /* NCCL comes in the CUDA plugin with the CUDA backend. */
        return plugin_symbol("comm_nccl_ops");
    }
    return NULL;
}

bool comm_find_shared_device(const char *identities, size_t stride, size_t identity_offset,
                             int n, int *first, int *second) {
    for (int i = 0; i < n; i++) {
        const char *a = identities + (size_t)i * stride;
        if (!a[identity_offset]) continue;
        for (int j = i + 1; j < n; j++) {
            const char *b = identities + (size_t)j * stride;
            if (strcmp(a, b) == 0 && strcmp(a + identity_offset, b + identity_offset) == 0) {
                *first = i;
                *second = j;
                return true;
            }
        }
    }
    return false;
}

/* NCCL needs a GPU of its own for each rank: with more ranks on a node than GPUs visible to
 * them, two ranks pick the same GPU and NCCL fails with "duplicate GPU". Every rank learns
 * every rank's (node, GPU) and gives the same clear refusal. Collective over `world`. */
static ddt_status check_one_device_per_rank(comm *c) {
    typedef struct {
        char node[64];
        char identity[sizeof c->dev->identity];
        int visible; /* GPUs this rank sees */
    } rank_device;
    rank_device mine;
    memset(&mine, 0, sizeof mine);
    int leader = c->rank; /* the node's id: the lowest world rank on it */
    MPI_Request request;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, c->node, &request);
    if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "MPI_Iallreduce (the node's ranks)");
    DDT_CHECK(comm_mpi_wait(c, &request, "finding the node's ranks"));
    snprintf(mine.node, sizeof mine.node, "%d", leader);
    snprintf(mine.identity, sizeof mine.identity, "%s", c->dev ? c->dev->identity : "");
    mine.visible = device_count(DEVICE_KIND_CUDA);
    rank_device *all = calloc((size_t)c->world_size, sizeof *all);
    if (!all) return ddt_error(DDT_ERR_MEMORY, "out of host memory checking the ranks' GPUs");
    ddt_status status = comm_allgather_bytes(c, &mine, sizeof mine, all, "the ranks' GPUs");
    if (status != DDT_OK) {
        free(all);
        return status;
    }
    int first = 0, second = 0;
    bool clash = comm_find_shared_device((const char *)all, sizeof *all,
                                         offsetof(rank_device, identity), c->world_size, &first,
                                         &second);
    char gpu[sizeof mine.identity];
    snprintf(gpu, sizeof gpu, "%s", clash ? all[first].identity : "");
    int visible = clash ? all[first].visible : 0;
    free(all);
    if (!clash) return DDT_OK;
    return ddt_error(DDT_ERR_USAGE,
                     "ranks %d and %d run on one node and both use the GPU at PCI %s: NCCL needs "
                     "a GPU of its own for each rank. Start at most as many ranks per node as "
                     "the node has GPUs (rank %d sees %d), or give each rank its own GPU "
                     "(CUDA_VISIBLE_DEVICES, Slurm's --gpus-per-task=1)",
                     first, second, gpu, first, visible);
}

/* The backend's set-up on a communicator whose fields are filled; frees it on failure. */
static ddt_status open_backend(comm *c, comm **out) {
    ddt_status status = c->kind == COMM_BACKEND_NCCL ? check_one_device_per_rank(c) : DDT_OK;
    if (status == DDT_OK) status = c->ops->open(c);
    if (status != DDT_OK) {
        ddt_error_trace(__FILE__, __LINE__);
        MPI_Comm_free(&c->node);
        if (c->owns_world) MPI_Comm_free(&c->world);
        free(c);
        return status;
    }
    *out = c;
    return DDT_OK;
}

ddt_status comm_check_environment(comm_backend_kind kind) {
    const comm_backend_ops *ops = backend_ops(kind); /* none: comm_init_like says why */
    return ops && ops->check_environment ? ops->check_environment() : DDT_OK;
}

ddt_status comm_init(comm_backend_kind kind, MPI_Comm world, device *dev, comm **out) {
    *out = NULL;
    if (kind != COMM_BACKEND_MPI && kind != COMM_BACKEND_SHM && kind != COMM_BACKEND_NCCL)
        return ddt_error(DDT_ERR_USAGE, "unknown communication backend %d", (int)kind);
    const comm_backend_ops *ops = backend_ops(kind);
    if (!ops) {
        const char *problem = plugin_problem();
        return ddt_error(DDT_ERR_USAGE, "the NCCL backend is not available: %s",
                         problem ? problem : "the CUDA plugin lacks it");
    }
    comm *c = calloc(1, sizeof *c);
    if (!c) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the communicator");
    c->ops = ops;
    c->kind = kind;
    c->world = world;
    c->dev = dev;
    c->timeout_seconds = comm_default_timeout_seconds;
    c->failure_origin = -1;
    MPI_Comm_rank(world, &c->rank);
    MPI_Comm_size(world, &c->world_size);
    int rc = MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node);
    if (rc != MPI_SUCCESS) {
        free(c);
        return comm_mpi_error(rc, "MPI_Comm_split_type (finding the ranks of this node)");
    }
    MPI_Comm_rank(c->node, &c->local_rank);
    MPI_Comm_size(c->node, &c->local_size);
    return open_backend(c, out);
}

/* A duplicate of `source`, polled under `parent`'s timeout and wait hook. */
static ddt_status duplicate(comm *parent, MPI_Comm source, MPI_Comm *out, const char *what) {
    MPI_Request request;
    int rc = MPI_Comm_idup(source, out, &request);
    if (rc != MPI_SUCCESS) return comm_mpi_error(rc, what);
    return comm_mpi_wait(parent, &request, what);
}

ddt_status comm_init_like(comm *parent, comm_backend_kind kind, device *dev, comm **out) {
    *out = NULL;
    const comm_backend_ops *ops = backend_ops(kind);
    if (!ops) {
        const char *problem = plugin_problem();
        return ddt_error(DDT_ERR_USAGE, "the NCCL backend is not available: %s",
                         problem ? problem : "the CUDA plugin lacks it");
    }
    comm *c = calloc(1, sizeof *c);
    if (!c) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the communicator");
    *c = (comm){.ops = ops,
                .kind = kind,
                .rank = parent->rank,
                .world_size = parent->world_size,
                .local_rank = parent->local_rank,
                .local_size = parent->local_size,
                .dev = dev,
                .timeout_seconds = parent->timeout_seconds,
                .wait_hook = parent->wait_hook,
                .wait_hook_context = parent->wait_hook_context,
                .failure_origin = -1,
                .world = MPI_COMM_NULL,
                .node = MPI_COMM_NULL};
    ddt_status status = duplicate(parent, parent->world, &c->world, "creating a communicator");
    if (status == DDT_OK)
        status = duplicate(parent, parent->node, &c->node, "creating a node communicator");
    if (status != DDT_OK) {
        if (c->world != MPI_COMM_NULL) MPI_Comm_free(&c->world);
        free(c);
        return status;
    }
    c->owns_world = true;
    return open_backend(c, out);
}

void comm_abandon(comm *c) {
    if (!c) return;
    c->abandoned = true;
    comm_free(c);
}

void comm_free(comm *c) {
    if (!c) return;
    comm_finish_watchdog(c, false);
    c->ops->close(c);
    MPI_Comm_free(&c->node);
    if (c->owns_world) MPI_Comm_free(&c->world);
    free(c);
}

void comm_set_timeout(comm *c, double seconds) {
    c->timeout_seconds = seconds > 0 ? seconds : 0; /* NaN fails the test, so becomes 0 */
}

comm_wait comm_wait_begin(const comm *c) {
    (void)c;
    double now = clock_now();
    return (comm_wait){.started = now, .last_hook = now, .now = now};
}

/* The wait hook every half second; the timeout as documented in comm_backend.h. */
ddt_status comm_wait_tick(comm *c, comm_wait *w, const char *what) {
    return comm_wait_tick_naming(c, w, what, -1, "");
}

ddt_status comm_wait_tick_naming(comm *c, comm_wait *w, const char *what, int rank,
                                 const char *missing) {
    double now = clock_now();
    /* A gap far longer than the polling's: the process did not run (it was stopped, and is
     * continued). That time was not spent waiting for the others: a rank continued after a
     * SIGSTOP must not blame another for its own stop. */
    if (now - w->now > 1.0) w->started += now - w->now - 1.0;
    w->now = now;
    if (c->wait_hook && w->now - w->last_hook >= 0.5) {
        c->wait_hook(c->wait_hook_context);
        w->last_hook = w->now;
    }
    double waited = w->now - w->started;
    if (c->timeout_seconds <= 0 || waited < c->timeout_seconds) return DDT_OK;
    /* Ranks other than 0 wait a little longer while rank 0 answers: rank 0 names the lagging
     * ranks. When rank 0 is silent, it is the one. */
    comm *control = c->wait_hook == comm_watchdog_poll ? c->wait_hook_context : NULL;
    bool root_silent = c->rank != 0 && comm_root_silent(control);
    double grace = c->timeout_seconds / 10 < 2 ? c->timeout_seconds / 10 : 2;
    if (c->rank != 0 && !root_silent && waited < c->timeout_seconds + grace) return DDT_OK;
    if (rank >= 0)
        return ddt_error(DDT_ERR_COMM,
                         "%s made no progress for %g s (--comm-timeout): rank %d %s (stalled or "
                         "lost)",
                         what, c->timeout_seconds, rank, missing);
    /* Rank 0's watchdog knows whom everybody waits for. */
    char lagging[256] = "";
    if (control) comm_lagging_ranks(control, lagging, sizeof lagging);
    if (root_silent) snprintf(lagging, sizeof lagging, "0");
    if (lagging[0])
        return ddt_error(DDT_ERR_COMM,
                         "%s made no progress for %g s (--comm-timeout): rank(s) %s never "
                         "reached it or went silent (stalled or lost)",
                         what, c->timeout_seconds, lagging);
    return ddt_error(DDT_ERR_COMM,
                     "%s made no progress for %g s (--comm-timeout): a rank was lost or "
                     "stalled%s",
                     what, c->timeout_seconds,
                     c->rank != 0                   ? " (rank 0, which answers, names it)"
                     : control && control->watchdog ? " (every rank reached it and answers: the "
                                                      "network, or an MPI failure?)"
                                                    : "");
}

void comm_set_wait_hook(comm *c, void (*hook)(void *context), void *context) {
    c->wait_hook = hook;
    c->wait_hook_context = context;
}

size_t comm_device_bytes_unrouted(const comm *c) {
    return c->device_bytes_unrouted;
}

double comm_device_busy_seconds(const comm *c) {
    return c->ops->device_busy_seconds ? c->ops->device_busy_seconds(c) : -1.0;
}

int comm_rank(const comm *c) {
    return c->rank;
}
int comm_world_size(const comm *c) {
    return c->world_size;
}
int comm_local_rank(const comm *c) {
    return c->local_rank;
}
int comm_local_size(const comm *c) {
    return c->local_size;
}
const char *comm_backend_name(const comm *c) {
    return c->ops->name;
}
const char *comm_describe(const comm *c, char *text, size_t size) {
    char detail[160] = "";
    if (c->ops->describe) c->ops->describe(c, detail, sizeof detail);
    snprintf(text, size, detail[0] ? "%s (%s)" : "%s", c->ops->name, detail);
    return text;
}

MPI_Comm comm_mpi(const comm *c) {
    return c->world;
}

ddt_status comm_broadcast_floats(comm *c, float *buffer, size_t count, int root) {
    return c->ops->broadcast(c, buffer, count, root);
}

ddt_status comm_allreduce_floats(comm *c, float *buffer, size_t count) {
    return c->ops->allreduce(c, buffer, count);
}

/* ---- gradient buckets ------------------------------------------------------------------ */

typedef enum bucket_state {
    BUCKET_IDLE,
    BUCKET_IN_FLIGHT,
    BUCKET_DONE,
} bucket_state;

typedef struct bucket {
    size_t begin, end; /* floats [begin, end) of the gradient buffer */
    double started;    /* when its all-reduce was started (for the observer) */
    bucket_state state;
    comm_request request;
} bucket;

struct gradient_buckets {
    comm *c;
    float *gradients;
    size_t count;
    int bucket_count;
    bucket *buckets; /* ordered from the end of the buffer: buckets[0] is ready first */
    int next_to_start;
    bool overlap; /* buckets start during backward (gradient_buckets_ready) */
    void (*observer)(void *context, int bucket, size_t floats, double started, double finished);
    void *observer_context;
    double wait_seconds;
    int64_t started_early, started_late;
};

ddt_status gradient_buckets_init(comm *c, float *gradients, size_t count,
                                 const size_t *ready_points, int ready_point_count,
                                 size_t bucket_bytes, gradient_buckets **out) {
    *out = NULL;
    if (ready_point_count < 1 || ready_points[0] != 0)
        return ddt_error(DDT_ERR_INTERNAL, "gradient buckets need a ready point at offset 0");
    gradient_buckets *gb = calloc(1, sizeof *gb);
    bucket *buckets = calloc((size_t)ready_point_count, sizeof *buckets);
    if (!gb || !buckets) {
        free(gb);
        free(buckets);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory for gradient buckets");
    }
    size_t bucket_floats = bucket_bytes / sizeof(float);
    if (bucket_floats == 0) bucket_floats = 1;
    /* Walk the layers from the end; close a bucket before adding a layer would take it past
     * bucket_bytes, so a bucket is one layer or several small ones. */
    int n = 0;
    size_t end = count;
    for (int i = ready_point_count - 1; i >= 0; i--) {
        size_t begin = ready_points[i];
        bool last = i == 0;
        size_t next_begin = last ? 0 : ready_points[i - 1];
        bool next_overflows = end - next_begin > bucket_floats;
        if (last || next_overflows) {
            buckets[n].begin = begin;
            buckets[n].end = end;
            n++;
            end = begin;
        }
    }
    if (c->ops->reserve_requests) {
        ddt_status status = c->ops->reserve_requests(c, n);
        if (status != DDT_OK) {
            ddt_error_trace(__FILE__, __LINE__);
            free(buckets);
            free(gb);
            return status;
        }
    }
    gb->c = c;
    gb->gradients = gradients;
    gb->count = count;
    gb->bucket_count = n;
    gb->buckets = buckets;
    gb->overlap = true;
    gradient_buckets_begin(gb);
    *out = gb;
    return DDT_OK;
}

void gradient_buckets_free(gradient_buckets *gb) {
    if (!gb) return;
    free(gb->buckets);
    free(gb);
}

void gradient_buckets_begin(gradient_buckets *gb) {
    for (int i = 0; i < gb->bucket_count; i++)
        gb->buckets[i].state = BUCKET_IDLE;
    gb->next_to_start = 0;
}

static ddt_status start_bucket(gradient_buckets *gb, bucket *b) {
    DDT_CHECK(gb->c->ops->allreduce_start(gb->c, gb->gradients + b->begin, b->end - b->begin,
                                          &b->request));
    b->state = BUCKET_IN_FLIGHT;
    if (gb->observer) b->started = clock_now();
    return DDT_OK;
}

/* A bucket's all-reduce was seen complete. */
static void bucket_done(gradient_buckets *gb, bucket *b) {
    b->state = BUCKET_DONE;
    if (gb->observer)
        gb->observer(gb->observer_context, (int)(b - gb->buckets), b->end - b->begin, b->started,
                     clock_now());
}

void gradient_buckets_set_observer(gradient_buckets *gb,
                                   void (*observer)(void *context, int bucket, size_t floats,
                                                    double started, double finished),
                                   void *context) {
    gb->observer = observer;
    gb->observer_context = context;
}

static ddt_status poll_in_flight(gradient_buckets *gb) {
    for (int i = 0; i < gb->next_to_start; i++) {
        bucket *b = &gb->buckets[i];
        if (b->state != BUCKET_IN_FLIGHT) continue;
        bool done = false;
        DDT_CHECK(gb->c->ops->allreduce_test(gb->c, &b->request, &done));
        if (done) bucket_done(gb, b);
    }
    return DDT_OK;
}

void gradient_buckets_set_overlap(gradient_buckets *gb, bool overlap) {
    gb->overlap = overlap;
}

ddt_status gradient_buckets_ready(gradient_buckets *gb, size_t ready_from) {
    if (!gb->overlap) return DDT_OK;
    while (gb->next_to_start < gb->bucket_count &&
           gb->buckets[gb->next_to_start].begin >= ready_from) {
        DDT_CHECK(start_bucket(gb, &gb->buckets[gb->next_to_start]));
        gb->next_to_start++;
        gb->started_early++;
    }
    return poll_in_flight(gb);
}

ddt_status gradient_buckets_ready_callback(void *context, size_t ready_from) {
    return gradient_buckets_ready((gradient_buckets *)context, ready_from);
}

ddt_status gradient_buckets_finish(gradient_buckets *gb) {
    double start = clock_now();
    while (gb->next_to_start < gb->bucket_count) {
        DDT_CHECK(start_bucket(gb, &gb->buckets[gb->next_to_start]));
        gb->next_to_start++;
        gb->started_late++;
    }
    for (int i = 0; i < gb->bucket_count; i++) {
        bucket *b = &gb->buckets[i];
        if (b->state == BUCKET_IN_FLIGHT) {
            DDT_CHECK(gb->c->ops->allreduce_wait(gb->c, &b->request));
            bucket_done(gb, b);
        }
    }
    gb->wait_seconds += clock_now() - start;
    return DDT_OK;
}

gradient_bucket_stats gradient_buckets_get_stats(const gradient_buckets *gb) {
    gradient_bucket_stats stats = {
        .bucket_count = gb->bucket_count,
        .wait_seconds = gb->wait_seconds,
        .started_early = gb->started_early,
        .started_late = gb->started_late,
    };
    return stats;
}
