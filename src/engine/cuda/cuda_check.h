/* cuda_check.h - the CUDA plugin's one check of a CUDA runtime call, shared by the device
 * backend (device_cuda.c) and the NCCL backend (src/comm/nccl): a failed call becomes a
 * ddt_status whose message names the call, CUDA's words for the error and where it was made.
 *
 * Usage:
 *     CUDA_CHECK(cudaStreamCreate(&stream));                  // returns the failure
 *     CUDA_CHECK_GOTO(cudaMalloc(&p, bytes), status, fail);   // stores it and cleans up
 */
#ifndef DDT_ENGINE_CUDA_CUDA_CHECK_H
#define DDT_ENGINE_CUDA_CUDA_CHECK_H

#include <cuda_runtime_api.h>

#include "util/status.h"

/* DDT_ERR_MEMORY for cudaErrorMemoryAllocation, DDT_ERR_INTERNAL for any other error. */
ddt_status cuda_error_status(cudaError_t error);

/* DDT_OK for cudaSuccess. Otherwise the error's status (cuda_error_status), with the message
 * "CALL failed: DESCRIPTION (NAME) at FILE:LINE" (without " at ..." when `file` is NULL, for
 * callers that add their own location); the runtime's last-error slot is cleared, so that a
 * later launch check (cudaGetLastError) does not report this failure a second time. */
ddt_status cuda_check_result(cudaError_t error, const char *call, const char *file, int line);

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        ddt_status cuda_check_status_ = cuda_check_result((call), #call, __FILE__, __LINE__);      \
        if (cuda_check_status_ != DDT_OK) return cuda_check_status_;                               \
    } while (0)

#define CUDA_CHECK_GOTO(call, status_var, label)                                                   \
    do {                                                                                           \
        ddt_status cuda_check_status_ = cuda_check_result((call), #call, __FILE__, __LINE__);      \
        if (cuda_check_status_ != DDT_OK) {                                                        \
            (status_var) = cuda_check_status_;                                                     \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

#endif
