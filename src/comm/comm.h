/* comm.h - communication between ranks: broadcasts, agreements and the bucketed gradient
 * all-reduce that overlaps the backward pass.
 *
 * A communicator wraps an MPI communicator and a backend behind one table of operations, so
 * the trainer never names a backend: "shm" on host buffers (CPU ranks: shared memory within a
 * node, a ring over MPI between nodes, fixed sum order; comm_shm.c says why), "mpi" on host
 * buffers (MPI's own non-blocking all-reduce; the control plane, and for comparison), "nccl"
 * on GPU buffers (with the CUDA backend). Two planes:
 *   - the data plane moves device buffers (parameters, gradients) through the backend; with
 *     NCCL it runs on a communication stream ordered after the compute stream's work issued
 *     so far, and completed operations order the compute stream's later work after them;
 *   - the control plane (agreements on errors, losses, counts, checksums) always uses MPI on
 *     small host values.
 *
 * Gradient buckets: the gradient buffer is cut, at layer boundaries, into buckets of about
 * bucket_bytes, counted from the end (the last layer's gradients are ready first). During the
 * last micro-batch's backward pass the trainer reports how much of the buffer is final
 * (gradient_buckets_ready); every bucket inside it starts its all-reduce at once, and
 * outstanding ones are polled, which advances them as far as they go without waiting (the
 * reduction runs in the gaps between layers). gradient_buckets_finish() starts whatever is
 * left and waits for all. Gradients are summed (the loss is already normalised by the global
 * batch). With overlap off (gradient_buckets_set_overlap) every bucket starts in finish.
 *
 * Failure: every wait polls, on every backend, under one policy (comm_set_timeout,
 * comm_set_wait_hook): a wait that makes no progress for the timeout fails with DDT_ERR_COMM
 * instead of hanging, and the wait hook (the watchdog) runs meanwhile. Time in which the
 * process did not run at all (it was stopped) does not count as waiting. The NCCL backend also
 * checks for asynchronous errors while it polls; on an error or a timeout it aborts the NCCL
 * communicator (so no rank stays blocked in it). After a DDT_ERR_COMM the communicator is
 * dead, and the caller must end the job on every rank (MPI_Abort), never just this one.
 *
 * Ownership: comm_init() returns a comm freed by comm_free() (or, after a failure, by
 * comm_abandon()); it does not own the MPI communicator or the device. gradient_buckets_init() returns buckets freed by
 * gradient_buckets_free(); they borrow the gradient buffer.
 *
 * Usage:
 *     comm *c;
 *     DDT_CHECK(comm_init(COMM_BACKEND_SHM, MPI_COMM_WORLD, dev, &c));
 *     gradient_buckets *gb;
 *     DDT_CHECK(gradient_buckets_init(c, grads, count, ready_points, n, 256 << 10, &gb));
 *     gradient_buckets_begin(gb);
 *     ... model_backward(m, rows, &pass, gradient_buckets_ready_callback, gb) ...
 *     DDT_CHECK(gradient_buckets_finish(gb));
 */
#ifndef DDT_COMM_COMM_H
#define DDT_COMM_COMM_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/device.h"
#include "util/status.h"

typedef enum comm_backend_kind {
    COMM_BACKEND_MPI,  /* host buffers: MPI_Iallreduce */
    COMM_BACKEND_NCCL, /* GPU buffers */
    COMM_BACKEND_SHM,  /* host buffers: shared memory in a node, a ring over MPI across nodes */
} comm_backend_kind;

/* What --allreduce asks for: a backend, or auto (nccl on GPUs, shm on CPU ranks). */
typedef enum comm_backend_request {
    COMM_BACKEND_REQUEST_AUTO,
    COMM_BACKEND_REQUEST_SHM,
    COMM_BACKEND_REQUEST_MPI,
    COMM_BACKEND_REQUEST_NCCL,
} comm_backend_request;

/* --overlap: whether gradient buckets start during backward (gradient_buckets_set_overlap). */
typedef enum comm_overlap {
    COMM_OVERLAP_OFF,
    COMM_OVERLAP_ON,
} comm_overlap;

typedef enum comm_reduce_op {
    COMM_REDUCE_SUM,
    COMM_REDUCE_MIN,
    COMM_REDUCE_MAX,
} comm_reduce_op;

typedef struct comm comm;

/* Collective over `world`. COMM_BACKEND_NCCL needs a CUDA device (one GPU per rank) and a
 * build with CUDA; without it the answer is DDT_ERR_USAGE saying so. `dev` may be NULL for a
 * communicator used for the control plane only. It splits `world` by node, a blocking MPI
 * call with no timeout: create the first communicator right after MPI_Init, while every rank
 * is known to be there, and later ones with comm_init_like(). */
ddt_status comm_init(comm_backend_kind kind, MPI_Comm world, device *dev, comm **out);
/* Collective over `parent`'s ranks, bounded by its timeout and watched by its wait hook: a
 * new communicator of `kind` over the same ranks, with MPI communicators of its own
 * (MPI_Comm_idup, polled). It inherits the parent's timeout and wait hook. */
ddt_status comm_init_like(comm *parent, comm_backend_kind kind, device *dev, comm **out);
/* Checks this rank's environment variables for a `kind` backend (the shm backend's
 * DDTRAIN_ALLREDUCE_CHUNK, _SLOTS, _STORES and DDTRAIN_NODE_RANKS) without meeting the other
 * ranks, so that a driver can agree on the answer (comm_agree) before the collective set-up
 * and a bad value is reported once, by the rank given it. comm_init_like checks them again. */
ddt_status comm_check_environment(comm_backend_kind kind);
/* Collective at a normal end (every rank of a node frees together; a rank that never comes is
 * waited for at most the timeout). */
void comm_free(comm *c);
/* Frees after a failure, without meeting the other ranks (some may be lost): what the backend
 * shares with them (the shm backend's window) stays mapped until the process ends. */
void comm_abandon(comm *c);
/* True if this build contains the backend (MPI and shm always; NCCL with the CUDA backend). */
bool comm_backend_available(comm_backend_kind kind);
/* The backend for a request on ranks computing on `device`: DDT_ERR_USAGE naming the options
 * where they do not fit (shm and mpi reduce host buffers, nccl GPU buffers). */
ddt_status comm_backend_choose(comm_backend_request request, device_kind device,
                               comm_backend_kind *out);

/* How long any wait (data plane or control plane, on every backend) may make no progress
 * before it fails with DDT_ERR_COMM (NCCL: after aborting the communicator). Default 300 s;
 * a value <= 0 (or NaN) means no limit: wait as long as it takes. While rank 0 answers (the
 * watchdog's pings), ranks other than 0 wait a little longer (a tenth more, at most 2 s), so
 * that rank 0, which can name the ranks everybody waits for, is the one that reports; when
 * rank 0 is silent they fail at the timeout, naming rank 0. */
void comm_set_timeout(comm *c, double seconds);
/* Called every half second while a wait is in progress, on every backend (e.g. a watchdog
 * that names the ranks being waited for); NULL removes it. */
void comm_set_wait_hook(comm *c, void (*hook)(void *context), void *context);
/* Device memory the backend took outside ddtrain's allocator (NCCL's buffers, streams and
 * events), as measured by the device's free memory before and after set-up; 0 for MPI.
 * For memory plans. */
size_t comm_device_bytes_unrouted(const comm *c);

/* Device time the gradient all-reduces took so far, measured on the device (NCCL: CUDA
 * events around each bucket's collective, read when it completes); negative where the
 * backend runs on the host (MPI), whose waits the caller times itself. Where this is the
 * all-reduce's whole time, the part the compute stream waited for is what did not overlap. */
double comm_device_busy_seconds(const comm *c);

int comm_rank(const comm *c);
int comm_world_size(const comm *c);
int comm_local_rank(const comm *c); /* rank among the ranks on this node */
int comm_local_size(const comm *c);
const char *comm_backend_name(const comm *c);
/* The backend's name and how it is set up, e.g. "shm (2 nodes x 2 ranks, ring between nodes,
 * 256 KiB chunks)", for the configuration printout; returns `text`. */
const char *comm_describe(const comm *c, char *text, size_t size);
MPI_Comm comm_mpi(const comm *c);

/* Data plane (device buffers). */
ddt_status comm_broadcast_floats(comm *c, float *buffer, size_t count, int root);
ddt_status comm_allreduce_floats(comm *c, float *buffer, size_t count); /* in place, sum */

/* Control plane: host values, always MPI, every call collective over the communicator and
 * bounded like any wait (comm_set_timeout; the wait hook runs while it waits). `what` names
 * the operation in a timeout's message ("the memory plan's micro-batch"). */
ddt_status comm_allreduce_doubles(comm *c, double *values, int count, comm_reduce_op op);
ddt_status comm_allreduce_u64(comm *c, uint64_t *values, int count, comm_reduce_op op);
ddt_status comm_broadcast_bytes(comm *c, void *buffer, size_t bytes, int root, const char *what);
/* `all` (root only; may be NULL elsewhere) receives world_size x bytes, in rank order. */
ddt_status comm_gather_bytes(comm *c, const void *mine, size_t bytes, void *all, int root,
                             const char *what);
/* Variable sizes: counts[r] bytes from rank r land at all + displacements[r] (root only). */
ddt_status comm_gatherv_bytes(comm *c, const void *mine, size_t bytes, void *all,
                              const int *counts, const int *displacements, int root,
                              const char *what);
ddt_status comm_allgather_bytes(comm *c, const void *mine, size_t bytes, void *all,
                                const char *what);
ddt_status comm_barrier(comm *c, const char *what);
/* Rank 0's `mine` (a NUL-terminated text of any length) to every rank, as a malloc'ed copy in
 * *root_text that the caller frees (rank 0 gets a copy of its own); bounded as any wait. For
 * checking that every rank was given the same thing: each compares it with its own. */
ddt_status comm_broadcast_text(comm *c, const char *mine, char **root_text, const char *what);

/* The point where every rank learns whether all succeeded: returns DDT_OK if `local` is OK
 * on every rank, else the status of the lowest failing rank, on every rank, with that rank's
 * message copied into every rank's ddt_error_message(). comm_failure_origin() then names the
 * rank (and host) the failure came from; a failure that already came from an agreement keeps
 * its origin through later ones. `where` names the point for the watchdog and for a timeout
 * ("set-up: the memory plan"). Every rank must call it at the same points. A local
 * DDT_ERR_COMM that did not come from an agreement is returned at once, without
 * communicating: the communicator may be what failed, and the caller must end the job on
 * every rank (MPI_Abort) rather than wait for an agreement that may never come. */
ddt_status comm_agree(comm *c, ddt_status local, const char *where);
/* After comm_agree() returned a failure: the rank it came from, and its host name; false if
 * no agreement has failed on this communicator. */
bool comm_failure_origin(const comm *c, int *rank, const char **host);

/* Marks a meeting point for the watchdog without communicating (the training step's own
 * collectives follow): "step 17". */
void comm_arrive(comm *c, const char *label);
/* Starts the watchdog (watchdog.h) on this communicator: every comm_agree() and comm_arrive()
 * is a meeting point, and rank 0 warns to `log` after `warn_after` seconds naming the ranks
 * everybody waits for. Collective. Installs the watchdog as this communicator's wait hook;
 * other communicators share it with comm_set_wait_hook(other, comm_watchdog_poll, c). */
ddt_status comm_enable_watchdog(comm *c, double warn_after, FILE *log);
void comm_watchdog_poll(void *control_comm);
/* Rank 0: the ranks not at the current meeting point, e.g. "1, 3" ("" if none or unknown). */
const char *comm_lagging_ranks(comm *c, char *text, size_t size);
/* Ranks but 0: whether rank 0 has gone silent (comm_lagging_ranks' counterpart: rank 0 has
 * not reached the point this rank waits at, or stopped inside it). */
bool comm_root_silent(comm *c);
/* Ends the watchdog: drained within the timeout after a normal end (every rank, collective),
 * abandoned after a failure. A drain that gives up (a rank lost at the very end) returns
 * DDT_ERR_COMM naming the rank; the caller ends the job at once (MPI_Abort). */
ddt_status comm_finish_watchdog(comm *c, bool normal_end);

typedef struct gradient_buckets gradient_buckets;

typedef struct gradient_bucket_stats {
    int bucket_count;
    double wait_seconds;    /* time spent blocked in gradient_buckets_finish */
    int64_t started_early;  /* buckets started during backward (overlapped), cumulative */
    int64_t started_late;   /* buckets started by finish, cumulative */
} gradient_bucket_stats;

/* ready_points: ascending offsets (floats) where the buffer may be cut, i.e. the offsets the
 * model reports as ready (each dense layer's first parameter); 0 must be among them. */
ddt_status gradient_buckets_init(comm *c, float *gradients, size_t count,
                                 const size_t *ready_points, int ready_point_count,
                                 size_t bucket_bytes, gradient_buckets **out);
void gradient_buckets_free(gradient_buckets *gb);

/* On (the default): buckets start during backward, as gradient_buckets_ready reports them;
 * off: all start in gradient_buckets_finish (for comparison: --overlap off). */
void gradient_buckets_set_overlap(gradient_buckets *gb, bool overlap);
/* Starts a new reduction round (no bucket in flight). */
void gradient_buckets_begin(gradient_buckets *gb);
/* gradients[ready_from..count) are final: start every bucket inside, and poll the others. */
ddt_status gradient_buckets_ready(gradient_buckets *gb, size_t ready_from);
/* Same, with the signature of model_gradient_ready_fn (context is the gradient_buckets). */
ddt_status gradient_buckets_ready_callback(void *context, size_t ready_from);
/* Starts the buckets not started yet and waits for all of them. */
ddt_status gradient_buckets_finish(gradient_buckets *gb);
gradient_bucket_stats gradient_buckets_get_stats(const gradient_buckets *gb);
/* Calls `observer` each time a bucket's all-reduce is seen complete, with when it was started
 * and when it was seen done (seconds, CLOCK_MONOTONIC); for timelines. NULL removes it. */
void gradient_buckets_set_observer(gradient_buckets *gb,
                                   void (*observer)(void *context, int bucket, size_t floats,
                                                    double started, double finished),
                                   void *context);

#endif
