/* values.c - see values.h. */
#if defined(__GNUC__) && !defined(__clang__) /* GCC at -O2 vectorises only cheap loops */
#pragma GCC optimize("tree-vectorize", "vect-cost-model=dynamic")
#endif

#include "util/values.h"

#include <string.h>

bool values_all_finite(const float *values, size_t count) {
    uint32_t bad = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], sizeof bits);
        bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
}

bool values_all_below(const int32_t *values, size_t count, uint32_t bound) {
    uint32_t bad = 0;
    for (size_t i = 0; i < count; i++)
        bad |= (uint32_t)((uint32_t)values[i] >= bound);
    return bad == 0;
}
