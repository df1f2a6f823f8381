/* checked.h - arithmetic on sizes that come from a person or a file, with overflow detected
 * instead of wrapped. Signed overflow is undefined behaviour, and an unsigned product that
 * wraps turns a model or a dataset far too large into a small, plausible one; every product
 * or sum of such sizes (shapes, element counts, bytes) goes through these functions.
 *
 * The checked_ functions return false on overflow (and leave *out unchanged), so the caller
 * can say which option or file and which quantity: the message is the caller's. Planners that
 * add up many sizes use the saturated_ ones: a sum that overflows becomes SIZE_MAX, which no
 * limit admits, and is printed as such.
 *
 * Usage:
 *     int64_t values;
 *     if (!checked_product_int64(shape->dims, shape->rank, &values))
 *         return ddt_error(DDT_ERR_USAGE, "--model: the input %s has too many values", text);
 *     size_t bytes = saturated_multiply_size(rows, row_bytes);
 *     total = saturated_add_size(total, bytes);
 */
#ifndef DDT_UTIL_CHECKED_H
#define DDT_UTIL_CHECKED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

bool checked_multiply_int64(int64_t a, int64_t b, int64_t *out);
bool checked_add_int64(int64_t a, int64_t b, int64_t *out);
bool checked_multiply_size(size_t a, size_t b, size_t *out);
bool checked_add_size(size_t a, size_t b, size_t *out);
/* The product of dims[0..count) (1 for none); false if it overflows int64 or a dim is
 * negative. */
bool checked_product_int64(const int *dims, int count, int64_t *out);

/* Where part k of `count` items split into `parts` begins: floor(count * k / parts), for
 * count >= 0, parts >= 1 and 0 <= k <= parts, without forming count * k (which overflows for
 * counts near 2^63). */
int64_t checked_part_start(int64_t count, int64_t k, int64_t parts);

/* a * b and a + b, or SIZE_MAX when the true value does not fit (SIZE_MAX stays SIZE_MAX). */
size_t saturated_multiply_size(size_t a, size_t b);
size_t saturated_add_size(size_t a, size_t b);

#endif
