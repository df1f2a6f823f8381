/* comm_nccl.c - the NCCL data-plane backend: in-place float-sum ncclAllReduce and
 * ncclBroadcast on GPU buffers, on a communication stream of its own.
 *
 * Set-up is bootstrapped over MPI (rank 0 calls ncclGetUniqueId and broadcasts the id over
 * comm->world). The communicator is created non-blocking (config.blocking = 0), so that no
 * NCCL call can block the host: every call that answers ncclInProgress is polled to
 * completion, and every wait is bounded by comm->timeout_seconds. On an NCCL or CUDA error,
 * an asynchronous error (ncclCommGetAsyncError) or a timeout the communicator is aborted
 * (ncclCommAbort, which also stops this rank's kernels still waiting on peers) and the
 * operation returns DDT_ERR_COMM; the driver then ends the job on every rank.
 *
 * Ordering, without blocking the host: an operation records an event on the compute stream
 * (the device's native_stream: "the work issued so far, e.g. these layers' gradients, is
 * done"), makes the communication stream wait on it, enqueues the collective there and records
 * a "done" event after it. Once done has completed, the compute stream is made to wait on it,
 * so the optimizer only sees reduced gradients. Gradient buckets started during the backward
 * pass thus overlap the rest of it.
 *
 * Memory: NCCL's buffers cannot come from ddtrain's allocator. They are measured instead: the
 * device's free memory before and after set-up (cudaMemGetInfo) gives
 * comm->device_bytes_unrouted. NCCL >= 2.22 connects peers lazily, at the first collective
 * that needs them, so set-up sets NCCL_RUNTIME_CONNECT=0 (unless the user set it) to make
 * NCCL allocate its buffers at creation, where they are measured, not during training.
 *
 * Requests: each reduction in flight holds a slot with its own "done" event, from a pool made
 * at set-up and grown by reserve_requests() (called by gradient_buckets_init), so the training
 * step creates nothing. Blocking operations use one event of their own. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_backend.h"
#include "engine/cuda/cuda_check.h"
#include "util/clock.h"

/* Request slots made at set-up; gradient_buckets_init() reserves more where it needs them. */
enum { NCCL_INITIAL_REQUEST_SLOTS = 16 };

/* Polling: spin this long first (short collectives finish within it), then sleep between
 * checks so that a long wait leaves the core to the input pipeline. */
static const double nccl_spin_seconds = 100e-6;
static const long nccl_poll_sleep_nanoseconds = 50000;

typedef struct nccl_request_slot {
    cudaEvent_t started; /* recorded on the communication stream before the collective */
    cudaEvent_t done;    /* recorded on the communication stream after the collective */
    size_t count;        /* floats being reduced, for messages */
} nccl_request_slot;

typedef struct nccl_backend {
    ncclComm_t comm;     /* NULL before creation and once destroyed or aborted */
    bool dead;           /* aborted after a failure: every later operation fails */
    cudaStream_t stream; /* communication stream (owned) */
    bool stream_created; /* stream may legitimately be 0 only when not created */
    cudaEvent_t ready;   /* recorded on compute, waited on by stream; reusable at once */
    cudaEvent_t blocking_done;
    nccl_request_slot **slots;      /* every slot made, owned */
    nccl_request_slot **free_slots; /* a stack of the slots not in flight */
    int slot_count, free_count;
    double busy_seconds; /* GPU time of the completed bucket all-reduces (started..done) */
} nccl_backend;

/* What an operation is, for messages: "ncclAllReduce of a gradient bucket (1024 floats)". */
typedef struct nccl_operation {
    const char *name;
    size_t count;
} nccl_operation;

/* The device's compute stream (borrowed; asked for each time, in case the backend changes it). */
static cudaStream_t compute_stream(const comm *c) {
    return (cudaStream_t)device_native_stream(c->dev);
}

static const char *file_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Length of a call's function name in its source text ("ncclAllReduce(a, b)" -> 13). */
static int call_name_length(const char *call) {
    return (int)strcspn(call, "( ");
}

/* Aborts the communicator (if there is one) so that no rank stays blocked in a collective
 * with this one, and marks the backend dead. Blocking, but bounded: abort never waits on peers. */
static void nccl_abort(nccl_backend *b) {
    if (b->comm) {
        (void)ncclCommAbort(b->comm);
        b->comm = NULL;
    }
    b->dead = true;
}

/* Records the failure of `op` (the detail formatted from `format`), aborts the communicator,
 * and returns DDT_ERR_COMM. `file`/`line` name the check that failed. */
__attribute__((format(printf, 5, 6))) static ddt_status
nccl_fail(comm *c, nccl_operation op, const char *file, int line, const char *format, ...) {
    char detail[640];
    va_list args;
    va_start(args, format);
    vsnprintf(detail, sizeof detail, format, args);
    va_end(args);
    nccl_backend *b = c->backend;
    bool had_communicator = b->comm != NULL;
    nccl_abort(b);
    char count_text[48] = "";
    if (op.count > 0) snprintf(count_text, sizeof count_text, " (%zu floats)", op.count);
    ddt_error(DDT_ERR_COMM,
              "rank %d: %s%s failed: %s [%s:%d]; %sthe job is being ended on every rank", c->rank,
              op.name, count_text, detail, file_name(file), line,
              had_communicator ? "the NCCL communicator was aborted and " : "");
    ddt_error_trace(file, line);
    return DDT_ERR_COMM;
}

/* Polls until the communicator has no call in progress and, if `event` is not NULL, the event
 * has completed; fails on an asynchronous NCCL error or a CUDA error. Waiting follows the
 * policy every backend shares (comm_wait_tick): the wait hook (the watchdog's pings and its
 * "waited N s for rank(s) ..." warning) runs every half second, and a wait with no progress
 * for comm->timeout_seconds fails (0: no limit), aborting the communicator. */
static ddt_status nccl_poll(comm *c, cudaEvent_t event, nccl_operation op, const char *file,
                            int line) {
    nccl_backend *b = c->backend;
    comm_wait w = comm_wait_begin(c);
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t result = ncclCommGetAsyncError(b->comm, &state);
        if (result != ncclSuccess)
            return nccl_fail(c, op, file, line, "ncclCommGetAsyncError: %s",
                             ncclGetErrorString(result));
        if (state != ncclSuccess && state != ncclInProgress)
            return nccl_fail(c, op, file, line, "asynchronous NCCL error: %s (%s)",
                             ncclGetErrorString(state), ncclGetLastError(b->comm));
        bool done = state == ncclSuccess;
        if (done && event) {
            cudaError_t query = cudaEventQuery(event);
            if (query == cudaErrorNotReady) {
                /* Not an error; keep it out of the device backend's cudaGetLastError(). */
                if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
                done = false;
            } else if (query != cudaSuccess) {
                return nccl_fail(c, op, file, line, "cudaEventQuery: %s (%s)",
                                 cudaGetErrorName(query), cudaGetErrorString(query));
            }
        }
        if (done) return DDT_OK;
        if (comm_wait_tick(c, &w, op.name) != DDT_OK) {
            char why[512];
            snprintf(why, sizeof why, "%s", ddt_error_message()); /* nccl_fail rewrites it */
            return nccl_fail(c, op, file, line, "%s", why);
        }
        if (w.now - w.started >= nccl_spin_seconds) {
            struct timespec pause = {0, nccl_poll_sleep_nanoseconds};
            nanosleep(&pause, NULL);
        }
    }
}

/* The result of an NCCL call: ncclInProgress (a non-blocking communicator still working in
 * the background) is polled to completion; an error aborts. */
static ddt_status nccl_result(comm *c, ncclResult_t result, const char *call, nccl_operation op,
                              const char *file, int line) {
    if (result == ncclSuccess) return DDT_OK;
    nccl_backend *b = c->backend;
    if (result == ncclInProgress && b->comm) return nccl_poll(c, NULL, op, file, line);
    const char *last = ncclGetLastError(b->comm);
    return nccl_fail(c, op, file, line, "%.*s: %s%s%s%s", call_name_length(call), call,
                     ncclGetErrorString(result), last && *last ? " (" : "", last ? last : "",
                     last && *last ? ")" : "");
}

/* A CUDA call made on behalf of `op`, checked as everywhere in the plugin (cuda_check.h); a
 * failure aborts the communicator, as an NCCL one does. */
static ddt_status cuda_result(comm *c, cudaError_t result, const char *call, nccl_operation op,
                              const char *file, int line) {
    char name[64];
    snprintf(name, sizeof name, "%.*s", call_name_length(call), call);
    if (cuda_check_result(result, name, NULL, 0) == DDT_OK) return DDT_OK;
    char why[512];
    snprintf(why, sizeof why, "%s", ddt_error_message()); /* nccl_fail rewrites it */
    return nccl_fail(c, op, file, line, "%s", why);
}

/* Return-style checks for NCCL and CUDA calls made on behalf of `op`. */
#define NCCL_CHECK(c, call, op) DDT_CHECK(nccl_result((c), (call), #call, (op), __FILE__, __LINE__))
#define NCCL_CHECK_CUDA(c, call, op)                                                               \
    DDT_CHECK(cuda_result((c), (call), #call, (op), __FILE__, __LINE__))

/* Fails at once if the communicator was aborted, or NCCL reports an asynchronous error (a peer
 * failed), so that a failure is noticed at the next operation, not at the next wait. */
static ddt_status nccl_check_alive(comm *c, nccl_operation op) {
    nccl_backend *b = c->backend;
    if (b->dead)
        return ddt_error(DDT_ERR_COMM,
                         "rank %d: %s: the NCCL communicator was aborted after an earlier "
                         "failure; the job must end",
                         c->rank, op.name);
    ncclResult_t state = ncclSuccess;
    NCCL_CHECK(c, ncclCommGetAsyncError(b->comm, &state), op);
    if (state != ncclSuccess && state != ncclInProgress)
        return nccl_fail(c, op, __FILE__, __LINE__, "asynchronous NCCL error: %s (%s)",
                         ncclGetErrorString(state), ncclGetLastError(b->comm));
    return DDT_OK;
}

/* ---- request slots --------------------------------------------------------------------- */

static ddt_status nccl_grow_slots(comm *c, int wanted) {
    nccl_backend *b = c->backend;
    if (wanted <= b->slot_count) return DDT_OK;
    nccl_operation op = {"reserving NCCL request events", 0};
    nccl_request_slot **slots = realloc(b->slots, (size_t)wanted * sizeof *slots);
    if (!slots) return ddt_error(DDT_ERR_MEMORY, "out of host memory for NCCL requests");
    b->slots = slots;
    nccl_request_slot **free_slots = realloc(b->free_slots, (size_t)wanted * sizeof *free_slots);
    if (!free_slots) return ddt_error(DDT_ERR_MEMORY, "out of host memory for NCCL requests");
    b->free_slots = free_slots;
    while (b->slot_count < wanted) {
        nccl_request_slot *slot = calloc(1, sizeof *slot);
        if (!slot) return ddt_error(DDT_ERR_MEMORY, "out of host memory for NCCL requests");
        /* Timing events: the bucket's GPU time is measured from them (nccl_account). */
        cudaError_t result = cudaEventCreate(&slot->started);
        if (result == cudaSuccess) {
            result = cudaEventCreate(&slot->done);
            if (result != cudaSuccess) (void)cudaEventDestroy(slot->started);
        }
        if (result != cudaSuccess) {
            free(slot);
            return cuda_result(c, result, "cudaEventCreate", op, __FILE__, __LINE__);
        }
        b->slots[b->slot_count++] = slot;
        b->free_slots[b->free_count++] = slot;
    }
    return DDT_OK;
}

static ddt_status nccl_reserve_requests(comm *c, int requests) {
    nccl_backend *b = c->backend;
    /* The slots in flight now stay in flight; `requests` more may start beside them. */
    int in_flight = b->slot_count - b->free_count;
    return nccl_grow_slots(c, in_flight + requests);
}

/* Adds a completed bucket's GPU time (its events have both completed) to busy_seconds. */
static void nccl_account(nccl_backend *b, const nccl_request_slot *slot) {
    float milliseconds = 0;
    if (cudaEventElapsedTime(&milliseconds, slot->started, slot->done) == cudaSuccess)
        b->busy_seconds += 1e-3 * (double)milliseconds;
    else
        (void)cudaGetLastError(); /* a timing that cannot be read is not a failure */
}

static double nccl_device_busy_seconds(const comm *c) {
    const nccl_backend *b = c->backend;
    return b ? b->busy_seconds : 0.0;
}

static void nccl_release_slot(nccl_backend *b, comm_request *request) {
    b->free_slots[b->free_count++] = request->handle;
    request->handle = NULL;
}

/* ---- set-up and teardown --------------------------------------------------------------- */

/* Waits (bounded by the timeout) for a non-blocking call on a communicator being torn down;
 * records no message, so that an earlier error's message survives comm_free(). */
static ncclResult_t nccl_settle_quietly(nccl_backend *b, double timeout_seconds) {
    double start = clock_now();
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t result = ncclCommGetAsyncError(b->comm, &state);
        if (result != ncclSuccess) return result;
        if (state != ncclInProgress) return state;
        if (timeout_seconds > 0 && clock_now() - start >= timeout_seconds)
            return ncclInProgress; /* 0: no limit, as for every wait */
        struct timespec pause = {0, nccl_poll_sleep_nanoseconds};
        nanosleep(&pause, NULL);
    }
}

/* Frees everything the backend holds, in reverse order of creation. A live communicator is
 * finalized (flushing its work) and destroyed; one that fails to finalize within the timeout
 * is aborted instead. Safe on a partly built backend. Records no error message. */
static void nccl_teardown(comm *c) {
    nccl_backend *b = c->backend;
    if (!b) return;
    if (b->comm) {
        ncclResult_t result = ncclCommFinalize(b->comm);
        if (result == ncclSuccess || result == ncclInProgress)
            result = nccl_settle_quietly(b, c->timeout_seconds);
        if (result == ncclSuccess)
            (void)ncclCommDestroy(b->comm);
        else
            (void)ncclCommAbort(b->comm);
        b->comm = NULL;
    }
    for (int i = 0; i < b->slot_count; i++) {
        (void)cudaEventDestroy(b->slots[i]->done);
        (void)cudaEventDestroy(b->slots[i]->started);
        free(b->slots[i]);
    }
    free(b->slots);
    free(b->free_slots);
    if (b->blocking_done) (void)cudaEventDestroy(b->blocking_done);
    if (b->ready) (void)cudaEventDestroy(b->ready);
    if (b->stream_created) (void)cudaStreamDestroy(b->stream);
    free(b);
    c->backend = NULL;
}

static void nccl_close(comm *c) {
    nccl_teardown(c);
}

/* The local part of set-up that needs no other rank: device, streams, events, slots. */
static ddt_status nccl_open_local(comm *c, size_t *free_before) {
    nccl_backend *b = c->backend;
    nccl_operation op = {"setting up the NCCL backend", 0};
    if (!c->dev || c->dev->kind != DEVICE_KIND_CUDA || !device_native_stream(c->dev))
        return ddt_error(DDT_ERR_USAGE,
                         "rank %d: the NCCL backend needs the cuda device "
                         "(use the MPI backend with the cpu device)",
                         c->rank);
    /* The device backend made the GPU current in this thread already; saying so again keeps
     * this correct if the communicator is created from another thread. */
    NCCL_CHECK_CUDA(c, cudaSetDevice(c->dev->ordinal), op);
    size_t total = 0;
    NCCL_CHECK_CUDA(c, cudaMemGetInfo(free_before, &total), op);
    NCCL_CHECK_CUDA(c, cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking), op);
    b->stream_created = true;
    NCCL_CHECK_CUDA(c, cudaEventCreateWithFlags(&b->ready, cudaEventDisableTiming), op);
    NCCL_CHECK_CUDA(c, cudaEventCreateWithFlags(&b->blocking_done, cudaEventDisableTiming), op);
    DDT_CHECK(nccl_grow_slots(c, NCCL_INITIAL_REQUEST_SLOTS));
    return DDT_OK;
}

/* Collective over comm->world: every rank learns whether all succeeded. On failure,
 * *first_failed is the lowest rank that failed. */
static ddt_status agree(comm *c, bool ok, int *first_failed) {
    double value = ok ? c->world_size : c->rank;
    DDT_CHECK(comm_allreduce_doubles(c, &value, 1, COMM_REDUCE_MIN));
    *first_failed = (int)value;
    return DDT_OK;
}

/* What a rank whose own step succeeded says when another rank's failed. */
static ddt_status peer_failed(comm *c, int failed_rank, const char *step) {
    return ddt_error(DDT_ERR_COMM, "rank %d: NCCL set-up failed on rank %d (%s); see its message",
                     c->rank, failed_rank, step);
}

static ddt_status nccl_open(comm *c) {
    nccl_backend *b = calloc(1, sizeof *b);
    if (!b) return ddt_error(DDT_ERR_MEMORY, "out of host memory for the NCCL backend");
    c->backend = b;
    ddt_status status = DDT_OK, local = DDT_OK;
    int first_failed = 0;
    nccl_operation op = {"creating the NCCL communicator", 0};
    struct {
        int ok;
        ncclUniqueId id;
    } bootstrap;
    memset(&bootstrap, 0, sizeof bootstrap);
    size_t free_before = 0, free_after = 0, total = 0;

    /* Connect eagerly, so that NCCL's buffers exist (and are measured) before training. */
    setenv("NCCL_RUNTIME_CONNECT", "0", 0);

    local = nccl_open_local(c, &free_before);
    DDT_CHECK_GOTO(agree(c, local == DDT_OK, &first_failed), status, fail);
    if (local != DDT_OK) {
        status = local;
        goto fail;
    }
    if (first_failed < c->world_size) {
        status = peer_failed(c, first_failed, "preparing the GPU");
        goto fail;
    }

    /* Rank 0 makes the id; a failure there travels with it, so no rank waits for an id that
     * will never come. */
    if (c->rank == 0) {
        local = nccl_result(c, ncclGetUniqueId(&bootstrap.id), "ncclGetUniqueId", op, __FILE__,
                            __LINE__);
        bootstrap.ok = local == DDT_OK;
    }
    status = comm_broadcast_bytes(c, &bootstrap, sizeof bootstrap, 0, "the NCCL unique id");
    if (status != DDT_OK) goto fail;
    if (!bootstrap.ok) {
        status = c->rank == 0 ? local : peer_failed(c, 0, "ncclGetUniqueId");
        goto fail;
    }

    /* Non-blocking: creation answers ncclInProgress and is polled, bounded by the timeout. */
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    local = nccl_result(
        c, ncclCommInitRankConfig(&b->comm, c->world_size, bootstrap.id, c->rank, &config),
        "ncclCommInitRankConfig", op, __FILE__, __LINE__);
    if (local == DDT_OK)
        local = cuda_result(c, cudaMemGetInfo(&free_after, &total), "cudaMemGetInfo", op, __FILE__,
                            __LINE__);
    DDT_CHECK_GOTO(agree(c, local == DDT_OK, &first_failed), status, fail);
    if (local != DDT_OK) {
        status = local;
        goto fail;
    }
    if (first_failed < c->world_size) {
        status = peer_failed(c, first_failed, "ncclCommInitRankConfig");
        goto fail;
    }
    c->device_bytes_unrouted = free_before > free_after ? free_before - free_after : 0;
    return DDT_OK;

fail:
    ddt_error_trace(__FILE__, __LINE__);
    /* A communicator that exists here while another rank failed must not be finalized (which
     * could wait on peers): abort it. */
    nccl_abort(b);
    nccl_teardown(c);
    return status;
}

/* ---- data plane ------------------------------------------------------------------------ */

typedef enum nccl_collective {
    NCCL_COLLECTIVE_ALLREDUCE,
    NCCL_COLLECTIVE_BROADCAST,
} nccl_collective;

/* Enqueues the collective on the communication stream after the compute stream's work issued
 * so far, then records `done` after it. Never blocks the host, except to poll NCCL through a
 * background enqueue (ncclInProgress), bounded by the timeout. */
static ddt_status nccl_enqueue(comm *c, nccl_collective collective, float *buffer, size_t count,
                               int root, cudaEvent_t started, cudaEvent_t done, nccl_operation op) {
    nccl_backend *b = c->backend;
    NCCL_CHECK_CUDA(c, cudaEventRecord(b->ready, compute_stream(c)), op);
    NCCL_CHECK_CUDA(c, cudaStreamWaitEvent(b->stream, b->ready, 0), op);
    if (started) NCCL_CHECK_CUDA(c, cudaEventRecord(started, b->stream), op);
    switch (collective) {
    case NCCL_COLLECTIVE_ALLREDUCE:
        NCCL_CHECK(c, ncclAllReduce(buffer, buffer, count, ncclFloat, ncclSum, b->comm, b->stream),
                   op);
        break;
    case NCCL_COLLECTIVE_BROADCAST:
        NCCL_CHECK(c, ncclBroadcast(buffer, buffer, count, ncclFloat, root, b->comm, b->stream),
                   op);
        break;
    }
    NCCL_CHECK_CUDA(c, cudaEventRecord(done, b->stream), op);
    return DDT_OK;
}

/* After `done` has completed: later compute-stream work (the optimizer) is ordered after the
 * collective. The host has seen completion, so this costs the device nothing; it keeps the
 * ordering explicit rather than an accident of timing. */
static ddt_status nccl_order_compute_after(comm *c, cudaEvent_t done, nccl_operation op) {
    NCCL_CHECK_CUDA(c, cudaStreamWaitEvent(compute_stream(c), done, 0), op);
    return DDT_OK;
}

/* A blocking collective: enqueue, then poll to completion (bounded by the timeout). */
static ddt_status nccl_blocking(comm *c, nccl_collective collective, float *buffer, size_t count,
                                int root, nccl_operation op) {
    nccl_backend *b = c->backend;
    DDT_CHECK(nccl_check_alive(c, op));
    if (count == 0) return DDT_OK;
    DDT_CHECK(nccl_enqueue(c, collective, buffer, count, root, NULL, b->blocking_done, op));
    DDT_CHECK(nccl_poll(c, b->blocking_done, op, __FILE__, __LINE__));
    return nccl_order_compute_after(c, b->blocking_done, op);
}

static ddt_status nccl_broadcast(comm *c, float *buffer, size_t count, int root) {
    nccl_operation op = {"ncclBroadcast", count};
    return nccl_blocking(c, NCCL_COLLECTIVE_BROADCAST, buffer, count, root, op);
}

static ddt_status nccl_allreduce(comm *c, float *buffer, size_t count) {
    nccl_operation op = {"ncclAllReduce", count};
    return nccl_blocking(c, NCCL_COLLECTIVE_ALLREDUCE, buffer, count, 0, op);
}

static const char *const bucket_operation = "ncclAllReduce of a gradient bucket";

static ddt_status nccl_allreduce_start(comm *c, float *buffer, size_t count,
                                       comm_request *request) {
    nccl_backend *b = c->backend;
    nccl_operation op = {bucket_operation, count};
    request->handle = NULL; /* NULL = complete (nothing to wait for) */
    DDT_CHECK(nccl_check_alive(c, op));
    if (count == 0) return DDT_OK;
    if (b->free_count == 0)
        return ddt_error(DDT_ERR_INTERNAL,
                         "rank %d: more than %d NCCL reductions in flight at once (a bug: "
                         "reserve_requests was not called for them)",
                         c->rank, b->slot_count);
    nccl_request_slot *slot = b->free_slots[--b->free_count];
    slot->count = count;
    request->handle = slot;
    ddt_status status =
        nccl_enqueue(c, NCCL_COLLECTIVE_ALLREDUCE, buffer, count, 0, slot->started, slot->done, op);
    if (status != DDT_OK) {
        ddt_error_trace(__FILE__, __LINE__);
        nccl_release_slot(b, request);
        return status;
    }
    return DDT_OK;
}

static ddt_status nccl_allreduce_test(comm *c, comm_request *request, bool *done) {
    nccl_backend *b = c->backend;
    nccl_request_slot *slot = request->handle;
    *done = slot == NULL;
    if (!slot) return DDT_OK;
    nccl_operation op = {bucket_operation, slot->count};
    DDT_CHECK(nccl_check_alive(c, op));
    cudaError_t query = cudaEventQuery(slot->done);
    if (query == cudaErrorNotReady) {
        if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
        return DDT_OK;
    }
    DDT_CHECK(cuda_result(c, query, "cudaEventQuery", op, __FILE__, __LINE__));
    DDT_CHECK(nccl_order_compute_after(c, slot->done, op));
    nccl_account(b, slot);
    nccl_release_slot(b, request);
    *done = true;
    return DDT_OK;
}

static ddt_status nccl_allreduce_wait(comm *c, comm_request *request) {
    nccl_backend *b = c->backend;
    nccl_request_slot *slot = request->handle;
    if (!slot) return DDT_OK;
    nccl_operation op = {bucket_operation, slot->count};
    ddt_status status = nccl_check_alive(c, op);
    if (status == DDT_OK) status = nccl_poll(c, slot->done, op, __FILE__, __LINE__);
    if (status == DDT_OK) status = nccl_order_compute_after(c, slot->done, op);
    if (status == DDT_OK) nccl_account(b, slot);
    /* Released either way: a failed communicator is dead and its slots are only destroyed. */
    nccl_release_slot(b, request);
    return status;
}

const comm_backend_ops comm_nccl_ops = {
    .name = "nccl",
    .open = nccl_open,
    .reserve_requests = nccl_reserve_requests,
    .broadcast = nccl_broadcast,
    .allreduce = nccl_allreduce,
    .allreduce_start = nccl_allreduce_start,
    .allreduce_test = nccl_allreduce_test,
    .allreduce_wait = nccl_allreduce_wait,
    .device_busy_seconds = nccl_device_busy_seconds,
    .close = nccl_close,
};
