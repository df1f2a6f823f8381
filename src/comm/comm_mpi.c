/* comm_mpi.c - the MPI data-plane backend ("mpi"): in-place MPI_Iallreduce and MPI_Ibcast on
 * float buffers in host memory, polled. The control plane's communicators use it; CPU ranks'
 * gradients go through comm_shm.c unless --allreduce mpi asks for this one. */
#include <limits.h>
#include <sched.h>

#include "comm/comm_backend.h"

ddt_status comm_mpi_error(int mpi_code, const char *what) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(mpi_code, text, &length);
    return ddt_error(DDT_ERR_COMM, "%s failed: %s", what, text);
}

/* Blocking in effect, but polled like every wait (comm_mpi_wait: the timeout, the watchdog).
 * MPI counts are int; larger buffers (above 8 GiB of floats) go in parts. */
ddt_status comm_mpi_broadcast(comm *c, float *buffer, size_t count, int root) {
    while (count > 0) {
        int part = count > INT_MAX ? INT_MAX : (int)count;
        MPI_Request request;
        int rc = MPI_Ibcast(buffer, part, MPI_FLOAT, root, c->world, &request);
        if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "MPI_Ibcast");
        DDT_CHECK(comm_mpi_wait(c, &request, "a broadcast of device buffers"));
        buffer += part;
        count -= (size_t)part;
    }
    return DDT_OK;
}

static ddt_status mpi_allreduce(comm *c, float *buffer, size_t count) {
    while (count > 0) {
        int part = count > INT_MAX ? INT_MAX : (int)count;
        MPI_Request request;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buffer, part, MPI_FLOAT, MPI_SUM, c->world, &request);
        if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "MPI_Iallreduce");
        DDT_CHECK(comm_mpi_wait(c, &request, "an all-reduce"));
        buffer += part;
        count -= (size_t)part;
    }
    return DDT_OK;
}

static ddt_status mpi_allreduce_start(comm *c, float *buffer, size_t count, comm_request *request) {
    if (count > INT_MAX)
        return ddt_error(DDT_ERR_INTERNAL, "gradient bucket of %zu floats is too large", count);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buffer, (int)count, MPI_FLOAT, MPI_SUM, c->world,
                            &request->mpi);
    if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "MPI_Iallreduce");
    return DDT_OK;
}

static ddt_status mpi_allreduce_test(comm *c, comm_request *request, bool *done) {
    (void)c;
    int flag = 0;
    int rc = MPI_Test(&request->mpi, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "MPI_Test on a gradient all-reduce");
    *done = flag != 0;
    return DDT_OK;
}

/* Polls instead of MPI_Wait so that a peer that died or stalled (under a launcher that does
 * not end the job by itself) turns into an error after the timeout instead of a hang, and
 * the wait hook (the watchdog) runs meanwhile. MPI makes progress only inside MPI calls, so
 * it is polled without pause for the first 10 ms, then with a yield between polls so that
 * the reader thread gets the core. */
ddt_status comm_mpi_wait(comm *c, MPI_Request *request, const char *what) {
    comm_wait w = comm_wait_begin(c);
    for (unsigned polls = 0;; polls++) {
        int done = 0;
        int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return comm_mpi_error(rc, what);
        if (done) return DDT_OK;
        if (polls % 256 != 255) continue;
        DDT_CHECK(comm_wait_tick(c, &w, what));
        if (w.now - w.started > 0.01) sched_yield();
    }
}

static ddt_status mpi_allreduce_wait(comm *c, comm_request *request) {
    return comm_mpi_wait(c, &request->mpi, "a gradient all-reduce");
}

static ddt_status mpi_open(comm *c) {
    (void)c;
    return DDT_OK;
}

static void mpi_close(comm *c) {
    (void)c;
}

const comm_backend_ops comm_mpi_ops = {
    .name = "mpi",
    .open = mpi_open,
    .reserve_requests = NULL,
    .broadcast = comm_mpi_broadcast,
    .allreduce = mpi_allreduce,
    .allreduce_start = mpi_allreduce_start,
    .allreduce_test = mpi_allreduce_test,
    .allreduce_wait = mpi_allreduce_wait,
    .close = mpi_close,
};
