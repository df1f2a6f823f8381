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

size_t saturated_multiply_size(size_t a, size_t b) {
    size_t result;
    return checked_multiply_size(a, b, &result) ? result : SIZE_MAX;
}

size_t saturated_add_size(size_t a, size_t b) {
    size_t result;
    return checked_add_size(a, b, &result) ? result : SIZE_MAX;
}
