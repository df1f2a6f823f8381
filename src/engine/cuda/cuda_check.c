/* cuda_check.c - CUDA runtime failures as statuses (see cuda_check.h). */
#include "engine/cuda/cuda_check.h"

ddt_status cuda_error_status(cudaError_t error) {
    return error == cudaErrorMemoryAllocation ? DDT_ERR_MEMORY : DDT_ERR_INTERNAL;
}

ddt_status cuda_check_result(cudaError_t error, const char *call, const char *file, int line) {
    if (error == cudaSuccess) return DDT_OK;
    (void)cudaGetLastError();
    if (!file)
        return ddt_error(cuda_error_status(error), "%s failed: %s (%s)", call,
                         cudaGetErrorString(error), cudaGetErrorName(error));
    return ddt_error(cuda_error_status(error), "%s failed: %s (%s) at %s:%d", call,
                     cudaGetErrorString(error), cudaGetErrorName(error), file, line);
}
