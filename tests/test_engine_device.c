/* test_engine_device.c - choosing the device a rank computes on (--device, shared by train
 * and eval): names, the CPU fallback of auto, and clear refusals. Unknown names are refused
 * by the option table (tests/e2e/bad_inputs.sh). The GPU ordinal (local rank modulo the
 * visible GPUs) is checked here where GPUs exist.
 */
#include <string.h>

#include "check.h"
#include "engine/device.h"

int main(void) {
    device_kind kind = DEVICE_KIND_CUDA;
    int ordinal = 7;
    CHECK_OK(device_choose(DEVICE_REQUEST_CPU, 3, &kind, &ordinal));
    CHECK(kind == DEVICE_KIND_CPU && ordinal == 0);
    CHECK(device_choose((device_request)7, 0, &kind, &ordinal) == DDT_ERR_USAGE);
    CHECK(strcmp(device_request_name(DEVICE_REQUEST_AUTO), "auto") == 0 &&
          strcmp(device_request_name(DEVICE_REQUEST_CUDA), "cuda") == 0);
    int gpus = device_count(DEVICE_KIND_CUDA);
    CHECK_OK(device_choose(DEVICE_REQUEST_AUTO, 5, &kind, &ordinal));
    CHECK(kind == (gpus > 0 ? DEVICE_KIND_CUDA : DEVICE_KIND_CPU));
    CHECK(ordinal == (gpus > 0 ? 5 % gpus : 0));
    if (gpus == 0) {
        CHECK(device_choose(DEVICE_REQUEST_CUDA, 0, &kind, &ordinal) == DDT_ERR_USAGE);
        CHECK(strstr(ddt_error_message(), device_kind_available(DEVICE_KIND_CUDA)
                                              ? "no GPU is visible"
                                              : "built without CUDA") != NULL);
    } else {
        for (int local_rank = 0; local_rank < 2 * gpus; local_rank++) {
            CHECK_OK(device_choose(DEVICE_REQUEST_CUDA, local_rank, &kind, &ordinal));
            CHECK(kind == DEVICE_KIND_CUDA && ordinal == local_rank % gpus);
        }
    }
    return check_finish();
}
