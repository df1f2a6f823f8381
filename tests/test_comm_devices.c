/* test_comm_devices.c - finding two ranks of one node on the same GPU, which NCCL refuses
 * ("duplicate GPU") and ddtrain refuses first with its own message (comm_init with the NCCL
 * backend runs comm_find_shared_device over every rank's node and GPU identity).
 */
#include <stddef.h>
#include <string.h>

#include "check.h"
#include "comm/comm_backend.h"

typedef struct {
    char node[16];
    char identity[32];
} entry;

static bool find(const entry *entries, int n, int *first, int *second) {
    return comm_find_shared_device((const char *)entries, sizeof *entries,
                                   offsetof(entry, identity), n, first, second);
}

int main(void) {
    int first = -1, second = -1;
    /* Two nodes with two GPUs each, one rank per GPU: fine. */
    const entry good[] = {{"0", "0000:1b:00.0"}, {"0", "0000:2c:00.0"},
                          {"2", "0000:1b:00.0"}, {"2", "0000:2c:00.0"}};
    CHECK(!find(good, 4, &first, &second));
    /* The same bus id on two nodes is two different GPUs. */
    const entry nodes[] = {{"0", "0000:1b:00.0"}, {"1", "0000:1b:00.0"}};
    CHECK(!find(nodes, 2, &first, &second));
    /* More ranks on node 2 than its GPUs: ranks 2 and 4 share one. */
    const entry crowded[] = {{"0", "0000:1b:00.0"}, {"0", "0000:2c:00.0"}, {"2", "0000:1b:00.0"},
                             {"2", "0000:2c:00.0"}, {"2", "0000:1b:00.0"}};
    CHECK(find(crowded, 5, &first, &second));
    CHECK(first == 2 && second == 4);
    /* CPU ranks (and GPUs whose bus id is unknown) have no identity: never a clash. */
    const entry cpus[] = {{"0", ""}, {"0", ""}, {"0", ""}};
    CHECK(!find(cpus, 3, &first, &second));
    CHECK(!find(crowded, 0, &first, &second));
    return check_finish();
}
