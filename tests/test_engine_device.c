/* test_engine_device.c - choosing the device a rank computes on (--device, shared by train
 * and eval): names, the CPU fallback of auto, and clear refusals. The GPU ordinal (local rank
 * modulo the visible GPUs) is checked where GPUs exist (tests/gpu/acceptance.sh, e2e/gpu.sh).
 */
#include <string.h>

#include "check.h"
#include "engine/device.h"

int main(void) {
    device_kind kind = DEVICE_KIND_CUDA;
    int ordinal = 7;
    CHECK_OK(device_choose("cpu", 3, &kind, &ordinal));
    CHECK(kind == DEVICE_KIND_CPU && ordinal == 0);
    CHECK(device_choose("banana", 0, &kind, &ordinal) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "--device: 'banana' is not a device") != NULL);
    CHECK(device_choose("", 0, &kind, &ordinal) == DDT_ERR_USAGE);
    int gpus = device_count(DEVICE_KIND_CUDA);
    CHECK_OK(device_choose("auto", 5, &kind, &ordinal));
    CHECK(kind == (gpus > 0 ? DEVICE_KIND_CUDA : DEVICE_KIND_CPU));
    CHECK(ordinal == (gpus > 0 ? 5 % gpus : 0));
    CHECK_OK(device_choose(NULL, 0, &kind, &ordinal)); /* the default is auto */
    if (gpus == 0) {
        CHECK(device_choose("cuda", 0, &kind, &ordinal) == DDT_ERR_USAGE);
        CHECK(strstr(ddt_error_message(), device_kind_available(DEVICE_KIND_CUDA)
                                              ? "no GPU is visible"
                                              : "built without CUDA") != NULL);
    } else {
        for (int local_rank = 0; local_rank < 2 * gpus; local_rank++) {
            CHECK_OK(device_choose("cuda", local_rank, &kind, &ordinal));
            CHECK(kind == DEVICE_KIND_CUDA && ordinal == local_rank % gpus);
        }
    }
    return check_finish();
}
