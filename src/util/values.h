/* values.h - checking many values at once: floats that are all finite, ids that are all in
 * range. Used wherever values enter (dataset reads) or are trusted (the CPU backend's gradient
 * check), so every check tests the same bits the same way.
 *
 * Both loops are branch-free and vectorised (a float is non-finite exactly when its exponent
 * bits are all ones; reading its bits through memcpy keeps strict aliasing), so checking a
 * micro-batch costs a fraction of reading it.
 *
 * Usage:
 *     if (!values_all_finite(features, rows * width)) ... find and name the first bad one ...
 *     if (!values_all_below(labels, rows, (uint32_t)classes)) ... (negatives are "above") ...
 */
#ifndef DDT_UTIL_VALUES_H
#define DDT_UTIL_VALUES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True if none of values[0..count) is NaN or +-Inf. */
bool values_all_finite(const float *values, size_t count);

/* True if every values[i] is in [0, bound) (compared unsigned, so negatives fail). */
bool values_all_below(const int32_t *values, size_t count, uint32_t bound);

#endif
