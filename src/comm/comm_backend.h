/* comm_backend.h - the table of data-plane operations a communication backend provides.
 * Private to src/comm: the trainer sees only comm.h. Backends register in comm.c.
 *
 * Life cycle: comm_init() fills the common fields of struct comm (MPI communicators, ranks,
 * device, timeout), then calls ops->open(), which sets up the backend and keeps its state in
 * comm->backend. comm_free() calls ops->close(), which must work after any failure, including
 * an aborted backend. */
#ifndef DDT_COMM_COMM_BACKEND_H
#define DDT_COMM_COMM_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

#include "comm/comm.h"

/* An in-flight reduction; backends keep their handle in `handle`. */
typedef struct comm_request {
    void *handle;
    MPI_Request mpi;
} comm_request;

typedef struct comm_backend_ops {
    const char *name;
    /* Sets the backend up; on failure it has released whatever it took (close is not called).
     * Collective over comm->world: every rank returns the same status. */
    ddt_status (*open)(comm *c);
    /* Checks the environment variables open will read, without meeting other ranks
     * (comm_check_environment). May be NULL when the backend reads none. */
    ddt_status (*check_environment)(void);
    /* Makes room for `requests` reductions in flight at once, outside the training step (the
     * step itself allocates nothing). May be NULL when in-flight requests cost nothing. */
    ddt_status (*reserve_requests)(comm *c, int requests);
    ddt_status (*broadcast)(comm *c, float *buffer, size_t count, int root);
    ddt_status (*allreduce)(comm *c, float *buffer, size_t count);
    ddt_status (*allreduce_start)(comm *c, float *buffer, size_t count, comm_request *request);
    /* *done = whether the request completed; polling also drives progress. */
    ddt_status (*allreduce_test)(comm *c, comm_request *request, bool *done);
    ddt_status (*allreduce_wait)(comm *c, comm_request *request);
    /* Device time the completed gradient all-reduces ran (comm_device_busy_seconds); NULL
     * where the backend's work runs on the host. */
    double (*device_busy_seconds)(const comm *c);
    /* Writes how it is set up ("1 node x 2 ranks, 256 KiB chunks") for comm_describe; NULL:
     * the name says it all. */
    void (*describe)(const comm *c, char *text, size_t size);
    void (*close)(comm *c);
} comm_backend_ops;

struct comm {
    const comm_backend_ops *ops;
    comm_backend_kind kind;
    MPI_Comm world;
    MPI_Comm node;   /* ranks sharing this node */
    bool owns_world; /* world is a duplicate made by comm_init_like(), freed with the comm */
    bool abandoned;  /* comm_abandon(): close must not wait for the other ranks */
    int rank, world_size, local_rank, local_size;
    device *dev;
    double timeout_seconds;       /* longest wait without progress (comm_set_timeout); 0: none */
    void (*wait_hook)(void *context); /* called while waiting (comm_set_wait_hook); may be NULL */
    void *wait_hook_context;
    size_t device_bytes_unrouted; /* device memory the backend took outside the allocator */
    void *backend;
    /* the control plane (comm_control.c) */
    struct watchdog *watchdog;  /* comm_enable_watchdog(); NULL: none */
    int64_t meeting_points;     /* agreements and arrivals so far (the watchdog's points) */
    int failure_origin;         /* rank an agreed failure came from; -1: none */
    char failure_host[64];
};

extern const comm_backend_ops comm_mpi_ops;
extern const comm_backend_ops comm_shm_ops;
/* Defined only in builds with CUDA (src/comm/nccl/comm_nccl.c); comm.c names it under #ifdef. */
extern const comm_backend_ops comm_nccl_ops;

/* The one waiting policy every backend follows while it polls for a collective: the wait
 * hook (the watchdog) is called every half second, and a wait that has made no progress for
 * comm->timeout_seconds fails with DDT_ERR_COMM naming `what` and --comm-timeout; a timeout
 * of 0 means no limit. Usage, around a backend's own poll and pause:
 *     comm_wait w = comm_wait_begin(c);
 *     while (!done(...)) DDT_CHECK(comm_wait_tick(c, &w, "a gradient all-reduce")); */
typedef struct comm_wait {
    double started;   /* clock_now() when the wait began */
    double last_hook; /* when the wait hook was last called */
    double now;       /* the time at the last tick */
} comm_wait;

comm_wait comm_wait_begin(const comm *c);
ddt_status comm_wait_tick(comm *c, comm_wait *w, const char *what);
/* The same, for a wait that knows whom it waits for: a timeout's message names world rank
 * `rank` and what it has not done (`missing`: "has not posted its part"); rank < 0: unknown,
 * as comm_wait_tick. */
ddt_status comm_wait_tick_naming(comm *c, comm_wait *w, const char *what, int rank,
                                 const char *missing);

/* Waits for an MPI request by polling, within the communicator's timeout, calling its wait
 * hook (comm_wait_tick); `what` names the operation in errors ("a gradient all-reduce"). */
ddt_status comm_mpi_wait(comm *c, MPI_Request *request, const char *what);

/* Looks for two ranks of one node on the same device: `identities` holds n entries of
 * `stride` bytes, each a node id (any text naming the node) then, at identity_offset, a
 * device identity (device.identity; "" = unknown or shared by design, never a clash). On a
 * clash, *first < *second are the indexes of the first pair found and the answer is true. */
bool comm_find_shared_device(const char *identities, size_t stride, size_t identity_offset,
                             int n, int *first, int *second);

/* The MPI backend's broadcast (MPI_Ibcast, polled): other host backends share it. */
ddt_status comm_mpi_broadcast(comm *c, float *buffer, size_t count, int root);

/* Turns an MPI error code into a ddt_status with a message naming `what`. */
ddt_status comm_mpi_error(int mpi_code, const char *what);

#endif
