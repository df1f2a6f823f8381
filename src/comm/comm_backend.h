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
    /* Makes room for `requests` reductions in flight at once, outside the training step (the
     * step itself allocates nothing). May be NULL when in-flight requests cost nothing. */
    ddt_status (*reserve_requests)(comm *c, int requests);
    ddt_status (*broadcast)(comm *c, float *buffer, size_t count, int root);
    ddt_status (*allreduce)(comm *c, float *buffer, size_t count);
    ddt_status (*allreduce_start)(comm *c, float *buffer, size_t count, comm_request *request);
    /* *done = whether the request completed; polling also drives progress. */
    ddt_status (*allreduce_test)(comm *c, comm_request *request, bool *done);
    ddt_status (*allreduce_wait)(comm *c, comm_request *request);
    void (*close)(comm *c);
} comm_backend_ops;

struct comm {
    const comm_backend_ops *ops;
    comm_backend_kind kind;
    MPI_Comm world;
    MPI_Comm node; /* ranks sharing this node */
    int rank, world_size, local_rank, local_size;
    device *dev;
    double timeout_seconds;       /* longest wait for a data-plane operation (comm_set_timeout) */
    void (*wait_hook)(void *context); /* called while waiting (comm_set_wait_hook); may be NULL */
    void *wait_hook_context;
    size_t device_bytes_unrouted; /* device memory the backend took outside the allocator */
    void *backend;
};

extern const comm_backend_ops comm_mpi_ops;
/* Defined only in builds with CUDA (src/comm/nccl/comm_nccl.c); comm.c names it under #ifdef. */
extern const comm_backend_ops comm_nccl_ops;

/* Waits for an MPI request by polling, within the communicator's timeout, calling its wait
 * hook; `what` names the operation in errors ("a gradient all-reduce"). */
ddt_status comm_mpi_wait(comm *c, MPI_Request *request, const char *what);

/* Turns an MPI error code into a ddt_status with a message naming `what`. */
ddt_status comm_mpi_error(int mpi_code, const char *what);

#endif
