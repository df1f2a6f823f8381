/* checked.c - see checked.h. The compiler's overflow builtins (GCC, Clang) give the exact
 * answer for any operands, where hand-written "a > MAX / b" tests are easy to get wrong. */
#include "util/checked.h"

bool checked_multiply_int64(int64_t a, int64_t b, int64_t *out) {
    int64_t result;
    if (__builtin_mul_overflow(a, b, &result)) return false;
    *out = result;
    return true;
}

bool checked_add_int64(int64_t a, int64_t b, int64_t *out) {
    int64_t result;
    if (__builtin_add_overflow(a, b, &result)) return false;
    *out = result;
    return true;
}

bool checked_multiply_size(size_t a, size_t b, size_t *out) {
    size_t result;
    if (__builtin_mul_overflow(a, b, &result)) return false;
    *out = result;
    return true;
}

bool checked_add_size(size_t a, size_t b, size_t *out) {
    size_t result;
    if (__builtin_add_overflow(a, b, &result)) return false;
    *out = result;
    return true;
}

bool checked_product_int64(const int *dims, int count, int64_t *out) {
    int64_t product = 1;
    for (int i = 0; i < count; i++)
        if (dims[i] < 0 || !checked_multiply_int64(product, dims[i], &product)) return false;
    *out = product;
    return true;
}

int64_t checked_part_start(int64_t count, int64_t k, int64_t parts) {
    /* count = q * parts + r: count * k / parts = q * k + r * k / parts, and r * k < parts^2. */
    int64_t q = count / parts, r = count % parts;
    return q * k + (int64_t)((__int128)r * k / parts);
}

size_t saturated_multiply_size(size_t a, size_t b) {
    size_t result;
    return checked_multiply_size(a, b, &result) ? result : SIZE_MAX;
}

size_t saturated_add_size(size_t a, size_t b) {
    size_t result;
    return checked_add_size(a, b, &result) ? result : SIZE_MAX;
}
